"""A diverged run stops costing compute at once (issue 18): skipped on device, seen by the loop."""

import jax
import jax.numpy as jnp
import numpy as np

from skipinit.data import sources
from skipinit import sharding
from skipinit.train import loop, steps, train_and_evaluate


def _count_dispatches(monkeypatch, source=sources.DeviceData):
  """Counts the dispatches the loop enqueues (each asks its source's train_args once)."""
  count = {"n": 0}
  train_args = source.train_args

  def counting(self, step, n):
    count["n"] += 1
    return train_args(self, step, n)

  monkeypatch.setattr(source, "train_args", counting)
  return count


def test_a_run_that_diverges_at_once_stops_within_a_dispatch(cifar_config, tmp_path, monkeypatch):
  # One boundary only (the end, 64 steps away): before, the loop computed all 64 steps.
  count = _count_dispatches(monkeypatch)
  cfg = cifar_config("smoke,num_devices=1,normalizer=none,lr=1e6,epochs=8,steps_per_dispatch=1,"
                     "log_every_steps=1000,eval_every_epochs=100,checkpoint_every_epochs=100")
  status = train_and_evaluate(cfg, str(tmp_path))
  assert status["status"] == "diverged" and status["total_steps"] == 64
  bad = status["diverged_step"]
  assert 0 <= bad <= 2, status
  # The flag of a dispatch is read once the next is enqueued: at most one dispatch more.
  assert count["n"] <= bad + 2, (count, status)


def test_a_healthy_run_reads_every_flag_and_trains_every_step(cifar_config, tmp_path, monkeypatch):
  count = _count_dispatches(monkeypatch)
  cfg = cifar_config("smoke,num_devices=1,epochs=1,steps_per_dispatch=4,log_every_steps=1000,"
                     "image_size=8")
  status = train_and_evaluate(cfg, str(tmp_path))
  assert status["status"] == "completed" and status["step"] == 8
  assert count["n"] == 2  # 8 steps in dispatches of 4


def test_the_steps_after_a_non_finite_one_are_skipped_on_the_device(cifar_config, monkeypatch):
  # On by default off the CPU (XLA:CPU runs a conditional's convolutions ~40x slower): forced here.
  monkeypatch.setattr(steps, "SKIP_ON_DEVICE", True)
  cfg = cifar_config("smoke,num_devices=1,steps_per_dispatch=2,image_size=8")
  mesh = sharding.make_mesh(1)
  exp = loop.build_experiment(cfg, mesh)
  fresh = lambda: jax.tree.map(jnp.copy, exp.init_state())
  healthy, flag = exp.chunk_flagged(fresh(), *exp.dispatch_args(0, 2))
  assert int(healthy.step) == 2 and int(flag) == -1
  start = fresh().replace(first_bad_step=jnp.zeros((), jnp.int32))
  params = jax.device_get(start.params)
  skipped, flag = exp.chunk_flagged(start, *exp.dispatch_args(0, 2))
  assert int(skipped.step) == 0 and int(flag) == 0 and float(skipped.count) == 0
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(jax.device_get(skipped.params))):
    np.testing.assert_array_equal(a, b)


def test_the_flag_outlives_the_donated_state(cifar_config):
  # The loop reads a dispatch's flag after the state went (donated) into the next dispatch.
  cfg = cifar_config("smoke,num_devices=1,steps_per_dispatch=1,image_size=8")
  exp = loop.build_experiment(cfg, sharding.make_mesh(1))
  state, flag = exp.chunk_flagged(exp.init_state(), *exp.dispatch_args(0, 1))
  state, _ = exp.chunk_flagged(state, *exp.dispatch_args(1, 1))
  assert int(flag) == -1 and int(state.step) == 2


def test_a_streamed_run_that_diverges_stops_within_a_step(tmp_path, monkeypatch):
  # The ImageNet path (one step per dispatch, synthetic data: no TensorFlow needed).
  from conftest import load_config_module
  count = _count_dispatches(monkeypatch, sources.StreamedData)
  cfg = load_config_module("imagenet_resnet").get_config(
      "smoke,num_devices=1,normalizer=none,lr=1e6,warmup_epochs=0,epochs=8,image_size=32,"
      "log_every_steps=1000,eval_every_epochs=100,checkpoint_every_epochs=100")
  status = train_and_evaluate(cfg, str(tmp_path))
  assert status["status"] == "diverged" and status["total_steps"] == 32, status
  assert count["n"] <= status["diverged_step"] + 2, (count, status)
