"""Trainer (issue 3): learning, resume, device-count independence, divergence, bad input, real data."""

import hashlib
import json
import os
import re
import subprocess
import sys

import pytest

from skipinit import ConfigError, DataError
from skipinit import rundir
from skipinit.data import sources
from skipinit.train import loop, preemption, train_and_evaluate

from conftest import ROOT, SAMPLE_DIR


def smoke(get_config, extra=""):
  return get_config("smoke,num_devices=1" + ("," + extra if extra else ""))


def metrics(workdir):
  return rundir.read_metrics(str(workdir))


def test_smoke_training_learns_and_writes_the_run_directory(cifar_config, tmp_path):
  status = train_and_evaluate(smoke(cifar_config, "epochs=3,lr=0.05,schedule=cosine"), str(tmp_path))
  assert status["status"] == "completed"
  for name in ("config.json", "metrics.jsonl", "status.json", "checkpoints", "tensorboard"):
    assert os.path.exists(tmp_path / name), name
  m = metrics(tmp_path)
  assert [r["epoch"] for r in m] == [1.0, 2.0, 3.0]
  keys = {"step", "epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr",
          "examples_per_sec", "wall_time"}
  assert all(keys <= set(r) for r in m)
  assert m[-1]["train_loss"] < m[0]["train_loss"] - 0.3
  assert m[-1]["test_acc"] > 0.3  # 10 classes: chance is 0.1
  assert json.load(open(tmp_path / "config.json"))["model"]["depth"] == 10
  # A completed run is reported, not redone.
  again = train_and_evaluate(smoke(cifar_config, "epochs=3,lr=0.05,schedule=cosine"), str(tmp_path))
  assert again == status and len(metrics(tmp_path)) == 3


class _StopAfter:
  """Stands in for loop.Preemption: asks for a stop (as SIGTERM would) at the n-th boundary."""

  def __init__(self, n, signum=preemption.signal.SIGTERM):
    self.n, self.signum, self.reason = n, signum, preemption.Preemption.SIGNALS[signum]

  def __call__(self):
    return self

  def __enter__(self):
    return self

  def __exit__(self, *_):
    pass

  @property
  def requested(self):
    self.n -= 1
    return self.n < 0


def test_resume_equals_uninterrupted(cifar_config, tmp_path, monkeypatch):
  # Checkpoints only every 2 epochs, so the interrupted run must resume mid-window from a SIGTERM save.
  cfg = smoke(cifar_config, "epochs=3,checkpoint_every_epochs=2,dropout_rate=0.2")
  statuses = []
  write_status = rundir.write_status
  monkeypatch.setattr(rundir, "write_status",
                      lambda d, s, **kw: statuses.append((s, kw.get("step"))) or write_status(d, s, **kw))
  full = train_and_evaluate(cfg, str(tmp_path / "full"))
  # status.json follows the run: the step of each checkpoint while running, then the end.
  assert statuses == [("running", 0), ("running", 16), ("completed", 24)]
  monkeypatch.setattr(loop, "Preemption", _StopAfter(5))
  first = train_and_evaluate(cfg, str(tmp_path / "resumed"))
  assert first["status"] == "running" and first["preempted"] and 0 < first["step"] < full["step"]
  monkeypatch.undo()
  # Resuming on other data (data.path may change: the data set moved) is refused, and changes nothing.
  data_json = tmp_path / "resumed" / rundir.DATA
  recorded = data_json.read_text()
  assert json.loads(recorded)["train_examples"] == 256
  data_json.write_text(recorded.replace('"train_examples": 256', '"train_examples": 400'))
  with pytest.raises(DataError, match="train_examples 400 -> 256"):
    train_and_evaluate(cfg, str(tmp_path / "resumed"))
  assert rundir.read_status(str(tmp_path / "resumed"))["step"] == first["step"]
  data_json.write_text(recorded)
  resumed = train_and_evaluate(cfg, str(tmp_path / "resumed"))
  assert resumed["status"] == "completed"
  strip = lambda ms: [{k: v for k, v in r.items() if k not in ("wall_time", "examples_per_sec")}
                      for r in ms]
  assert strip(metrics(tmp_path / "resumed")) == strip(metrics(tmp_path / "full"))
  walls = [r["wall_time"] for r in metrics(tmp_path / "resumed")]
  assert walls == sorted(walls) and walls[0] > 0  # wall time goes on across the resume
  assert {k: resumed[k] for k in ("train_loss", "test_acc", "test_loss")} == \
         {k: full[k] for k in ("train_loss", "test_acc", "test_loss")}


def test_a_first_ctrl_c_stops_at_a_checkpoint_and_a_second_aborts():
  import signal
  with preemption.Preemption() as preempt:
    assert not preempt.requested
    os.kill(os.getpid(), signal.SIGINT)
    assert preempt.requested and preempt.reason.startswith("Ctrl-C")
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
  # A background job of a shell ignores SIGINT: it keeps ignoring it.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    with preemption.Preemption():
      assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
  finally:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def test_a_ctrl_c_stop_is_checkpointed_and_marked_interrupted(cifar_config, tmp_path, monkeypatch):
  cfg = smoke(cifar_config, "epochs=2")
  monkeypatch.setattr(loop, "Preemption", _StopAfter(1, signum=preemption.signal.SIGINT))
  first = train_and_evaluate(cfg, str(tmp_path))
  assert first["status"] == "running" and first["preempted"] and first["interrupted"]
  steps = [int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()]
  assert steps == [first["step"]]
  monkeypatch.undo()
  assert train_and_evaluate(cfg, str(tmp_path))["status"] == "completed"


def test_one_and_eight_devices_give_the_same_losses(cifar_config, tmp_path):
  results = []
  for n in (1, 8):
    cfg = cifar_config(f"smoke,epochs=1,num_devices={n},ghost_batch_size=4")
    train_and_evaluate(cfg, str(tmp_path / str(n)))
    results.append(metrics(tmp_path / str(n)))
  for a, b in zip(*results):
    for k in ("train_loss", "train_acc", "test_loss", "test_acc"):
      assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), k


def test_huge_learning_rate_ends_diverged(cifar_config, tmp_path):
  status = train_and_evaluate(smoke(cifar_config, "lr=1e6,normalizer=none"), str(tmp_path))
  assert status["status"] == "diverged"
  assert 0 <= status["diverged_step"] < 16
  assert json.load(open(tmp_path / "status.json"))["status"] == "diverged"
  # A diverged run is a result: not redone.
  assert train_and_evaluate(smoke(cifar_config, "lr=1e6,normalizer=none"), str(tmp_path)) == status


@pytest.mark.parametrize("damage", ["garbage", "emptied"])
def test_corrupt_checkpoint_falls_back_to_the_previous_one(cifar_config, tmp_path, damage):
  cfg = smoke(cifar_config, "epochs=2")
  train_and_evaluate(cfg, str(tmp_path))
  steps = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
  assert steps == [8, 16]
  # Damage the newest checkpoint, then pretend the run was interrupted after it. An emptied step
  # directory once made orbax read every older step as multi-item, so none restored.
  newest = tmp_path / "checkpoints" / "16"
  for root, dirs, files in os.walk(newest, topdown=False):
    for f in files:
      if damage == "garbage":
        open(os.path.join(root, f), "wb").write(b"garbage")
      else:
        os.remove(os.path.join(root, f))
    if damage == "emptied":
      for d in dirs:
        os.rmdir(os.path.join(root, d))
  rundir.write_status(str(tmp_path), "running", step=16)
  status = train_and_evaluate(cfg, str(tmp_path))
  assert status["status"] == "completed"
  assert os.path.exists(tmp_path / "checkpoints" / "corrupt_16")
  # It redid epoch 2 from the step-8 checkpoint: one record per eval, none doubled.
  assert [r["step"] for r in metrics(tmp_path)] == [8, 16]


def test_a_checkpoint_that_reads_back_other_values_is_not_restored(cifar_config, tmp_path):
  """Flipped bits that still decode (bit rot): the checksum saved with each step catches them."""
  from skipinit.train import checkpoint
  cfg = smoke(cifar_config, "epochs=2")
  train_and_evaluate(cfg, str(tmp_path))
  sums_path = tmp_path / "checkpoints" / checkpoint.CHECKSUMS
  sums = json.loads(sums_path.read_text())
  assert set(sums) == {"8", "16"}
  sums["16"] ^= 1 << 7  # as if the step-16 state had read back with one bit flipped
  sums_path.write_text(json.dumps(sums))
  rundir.write_status(str(tmp_path), "running", step=16)
  assert train_and_evaluate(cfg, str(tmp_path))["status"] == "completed"
  assert os.path.exists(tmp_path / "checkpoints" / "corrupt_16")
  assert [r["step"] for r in metrics(tmp_path)] == [8, 16]


def test_only_the_closed_loop_callbacks_of_a_failed_read_are_silenced(monkeypatch):
  """A failed orbax read leaves tensorstore callbacks that print one traceback each."""
  from skipinit.train import checkpoint
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(str(u.exc_value)))
  checkpoint._drop_closed_loop_callbacks()
  checkpoint._drop_closed_loop_callbacks()  # installed once, not stacked

  class Unraisable:
    def __init__(self, message):
      self.message = message

    def __del__(self):
      raise RuntimeError(self.message)

  Unraisable("Event loop is closed")
  Unraisable("something else")
  assert seen == ["something else"]


def test_checksum_sees_every_single_bit_flip():
  import jax.numpy as jnp
  import numpy as np
  from skipinit.train.checkpoint import checksum
  rng = np.random.default_rng(0)
  tree = {"w": jnp.asarray(rng.normal(size=(3, 5)), jnp.float32),
          "h": jnp.asarray(rng.normal(size=7), jnp.bfloat16), "n": jnp.arange(4, dtype=jnp.int32)}
  base = int(checksum(tree))
  raw = np.asarray(tree["w"]).view(np.uint32).copy()
  for i in range(raw.size):
    for bit in (0, 13, 31):
      flipped = raw.copy()
      flipped.flat[i] ^= np.uint32(1 << bit)
      assert int(checksum({**tree, "w": jnp.asarray(flipped.view(np.float32))})) != base
  h = np.asarray(tree["h"]).view(np.uint16).copy()
  h[3] ^= 1
  assert int(checksum({**tree, "h": jnp.asarray(h.view(jnp.bfloat16))})) != base
  swapped = {**tree, "n": tree["n"][::-1]}  # the same values elsewhere: another digest
  assert int(checksum(swapped)) != base


def test_no_readable_checkpoint_is_an_error_not_a_restart(cifar_config, tmp_path):
  """Every checkpoint damaged: starting again from step 0 would silently wipe the run's metrics."""
  from skipinit import CheckpointError
  cfg = smoke(cifar_config, "epochs=2")
  train_and_evaluate(cfg, str(tmp_path))
  for root, _, files in os.walk(tmp_path / "checkpoints"):
    for f in files:
      open(os.path.join(root, f), "wb").write(b"garbage")
  rundir.write_status(str(tmp_path), "running", step=16)
  before = (tmp_path / "metrics.jsonl").read_bytes()
  for _ in range(2):  # and still on the next attempt, once the steps have been moved aside
    with pytest.raises(CheckpointError, match="corrupt_16, corrupt_8 did not read back"):
      train_and_evaluate(cfg, str(tmp_path))
  assert (tmp_path / "metrics.jsonl").read_bytes() == before
  assert json.load(open(tmp_path / "status.json"))["status"] == "running"


def test_real_images_from_the_folder_source(cifar_config, tmp_path):
  cfg = cifar_config(f"smoke,num_devices=1,source=folder,path={SAMPLE_DIR},epochs=4,lr=0.05,"
                     "schedule=cosine,cache_dir=")
  status = train_and_evaluate(cfg, str(tmp_path))
  m = metrics(tmp_path)
  assert status["status"] == "completed" and len(m) == 4
  assert m[-1]["train_loss"] < 2.2 < m[0]["train_loss"] + 0.2
  assert m[-1]["test_acc"] > 0.15  # 100 real test images, 10 classes


@pytest.mark.parametrize("arg,message", [
    ("smoke,depth=17", "6N+4"),
    ("smoke,normalizer=layernorm", "unknown: use one of batchnorm"),
    ("smoke,batch_size=36,num_devices=8", "not divisible by the 8 devices"),
    ("smoke,seed=-1", "train.seed=-1 is not valid"),
    ("smoke,num_devices=2,ghost_batch_size=32", "does not divide the per-device batch"),
    ("smoke,lrr=0.1", "unknown config key 'lrr'"),
    ("smoke,source=folder,path=/nonexistent/cifar", "does not exist"),
    ("smoke,keep_checkpoints=0", "train.keep_checkpoints=0 is not valid"),
    ("smoke --config.train.lrr=1", "--config.train.lrr=1 names no config key (lrr Did you mean lr"),
    ("smoke lr=0.1", "unexpected arguments 'lr=0.1'"),
    ("smoke --config=", "--config needs a config file: --config=FILE.py[:ARG]"),  # (the last counts)
    ("smoke --config", "--config needs a config file: --config=FILE.py[:ARG]"),
    ("smoke --config.a.b.c=1", "--config.a.b.c=1 names no config key (a.b.c)"),
    ("smoke --config.train.lr.x=1", "--config.train.lr.x=1 names no config key (train.lr.x)"),
])
def test_bad_input_gives_one_line_and_keeps_the_run_directory(tmp_path, arg, message):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "status.json").write_text('{"status": "running", "step": 8}')
  (workdir / "metrics.jsonl").write_text('{"step": 8, "test_acc": 0.5}\n')
  before = {p: hashlib.sha1(open(workdir / p, "rb").read()).hexdigest() for p in os.listdir(workdir)}
  arg, *extra = arg.split(" ")
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", "train.py"),
       f"--config={os.path.join(ROOT, 'configs', 'cifar10_wrn.py')}:{arg}", f"--workdir={workdir}",
       *extra],
      capture_output=True, text=True, timeout=300,
      env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert proc.returncode == 2, proc.stderr[-2000:]
  err_lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(err_lines) == 1 and message in err_lines[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  after = {p: hashlib.sha1(open(workdir / p, "rb").read()).hexdigest() for p in os.listdir(workdir)}
  assert after == before


@pytest.mark.parametrize("arg,message", [
    ("num_devices=-1", "train.num_devices=-1 is not valid"),
    ("schedule=step,step_factor=-1", "train.step_factor=-1.0 is not valid"),
    ("schedule=step,step_boundaries=0.5;2", "each in [0, 1]"),
    ("synthetic_test_size=0", "data.synthetic_test_size=0 is not valid"),
    ("agc_eps=-1", "train.agc_eps=-1.0 is not valid"),
    ("data.name=imagenet", "data.name='imagenet' is unknown"),
])
def test_config_values_out_of_range_are_refused(cifar_config, arg, message):
  from skipinit import config as cfg_lib
  with pytest.raises(ConfigError, match=re.escape(message)):
    cfg_lib.validate(cifar_config("smoke," + arg))


def test_every_device_means_as_many_as_the_batch_splits_over(cifar_config):
  from skipinit import sharding
  assert sharding.devices_for(cifar_config("smoke,batch_size=64,ghost_batch_size=4")) == 8
  assert sharding.devices_for(cifar_config("smoke,batch_size=16,ghost_batch_size=16")) == 1
  assert sharding.devices_for(cifar_config("smoke,batch_size=48,ghost_batch_size=8")) == 6
  assert sharding.devices_for(cifar_config("smoke,batch_size=12,normalizer=skipinit")) == 6
  assert sharding.devices_for(cifar_config("smoke,batch_size=16,num_devices=8")) == 8  # as given


def test_a_small_batch_trains_on_the_devices_it_splits_over(cifar_config, tmp_path):
  cfg = cifar_config("smoke,epochs=0.1,batch_size=8,ghost_batch_size=8")  # 8 fake devices
  assert train_and_evaluate(cfg, str(tmp_path))["status"] == "completed"


def test_a_run_directory_that_cannot_be_written_is_refused_before_any_work(cifar_config, tmp_path):
  (tmp_path / "a_file").write_text("")
  with pytest.raises(ConfigError, match="is not a directory"):
    train_and_evaluate(smoke(cifar_config), str(tmp_path / "a_file" / "run"))
  with pytest.raises(ConfigError, match="exists and is not a directory"):
    train_and_evaluate(smoke(cifar_config), str(tmp_path / "a_file"))


def test_other_config_on_existing_run_is_refused(cifar_config, tmp_path):
  train_and_evaluate(smoke(cifar_config, "epochs=1"), str(tmp_path))
  before = open(tmp_path / "config.json").read()
  with pytest.raises(ConfigError, match=r"train.lr: 0.1 -> 0.2"):
    train_and_evaluate(smoke(cifar_config, "epochs=1,lr=0.2"), str(tmp_path))
  assert open(tmp_path / "config.json").read() == before


def test_a_key_added_since_a_run_was_made_counts_as_its_default(cifar_config, tmp_path):
  """A run directory from before a config key existed resumes while the key is at its default."""
  old = json.loads(rundir.cfg_lib.to_json(smoke(cifar_config)))
  del old["model"]["dropout_rate"]  # as if the run predated model.dropout_rate
  (tmp_path / "config.json").write_text(json.dumps(old))
  rundir.check_config(str(tmp_path), smoke(cifar_config))
  with pytest.raises(ConfigError, match=r"model.dropout_rate: None -> 0.2"):
    rundir.check_config(str(tmp_path), smoke(cifar_config, "dropout_rate=0.2"))


def test_offline_tfds_says_how_to_use_the_folder_source(cifar_config, tmp_path):
  cfg = smoke(cifar_config, f"source=tfds,data_dir={tmp_path / 'tfds'}")
  with pytest.raises(DataError, match="data.source=folder"):
    train_and_evaluate(cfg, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def test_paper_halving_schedule(cifar_config):
  from skipinit.train.optim import create_learning_rate_fn
  cfg = cifar_config("smoke,epochs=100,lr=0.8")
  lr = create_learning_rate_fn(cfg.train, steps_per_epoch=10)  # 1000 steps
  assert float(lr(0)) == pytest.approx(0.8) and float(lr(499)) == pytest.approx(0.8)
  assert float(lr(500)) == pytest.approx(0.4) and float(lr(549)) == pytest.approx(0.4)
  assert float(lr(550)) == pytest.approx(0.2) and float(lr(999)) == pytest.approx(0.8 / 1024)


def test_an_eval_subset_is_fixed_recorded_and_never_mixed_with_the_whole_set(cifar_config, tmp_path):
  subset = sources.eval_subset_indices(64, 16)
  assert len(set(subset)) == 16 and list(subset) == sorted(subset) and subset.max() < 64
  assert list(subset) == list(sources.eval_subset_indices(64, 16))  # the same for every run and seed
  status = train_and_evaluate(smoke(cifar_config, "epochs=1,eval_subset=16,seed=3"), str(tmp_path))
  data = json.load(open(tmp_path / rundir.DATA))
  assert data["eval_examples"] == 16 and data["test_examples"] == 64
  assert data["name"] == "cifar10" and data["source"] == "synthetic"
  assert round(status["test_acc"] * 16, 4) == round(status["test_acc"] * 16)  # a multiple of 1/16
  whole = dict(data)
  del whole["eval_examples"]
  with pytest.raises(DataError, match="eval_examples 16 -> None"):
    rundir.check_data(str(tmp_path), whole)
  # data.json written before a key existed (say "source") is compared on the keys both have.
  old = {k: v for k, v in data.items() if k not in ("name", "source")}
  (tmp_path / rundir.DATA).write_text(json.dumps(old))
  rundir.check_data(str(tmp_path), data)
  with pytest.raises(DataError, match="eval_examples None -> 16"):
    (tmp_path / rundir.DATA).write_text(json.dumps(whole))
    rundir.check_data(str(tmp_path), data)


def test_an_eval_subset_larger_than_the_test_set_is_refused(cifar_config, tmp_path):
  with pytest.raises(ConfigError, match=r"data.eval_subset=65 is larger than the test set \(64"):
    train_and_evaluate(smoke(cifar_config, "eval_subset=65"), str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")
  with pytest.raises(ConfigError, match="data.eval_subset=-1"):
    loop.cfg_lib.validate(smoke(cifar_config, "eval_subset=-1"))


def test_progress_lines_come_in_time_and_give_an_eta_only_without_the_compile(
    cifar_config, tmp_path, monkeypatch, caplog):
  import logging
  monkeypatch.setattr(loop, "PROGRESS_EVERY_S", 0.0)  # a line at every dispatch boundary
  cfg = smoke(cifar_config, "epochs=1,steps_per_dispatch=2,log_every_steps=1000,"
              "eval_every_epochs=100,image_size=8")
  with caplog.at_level(logging.INFO):
    train_and_evaluate(cfg, str(tmp_path))
  lines = [r.getMessage() for r in caplog.records if " ex/s" in r.getMessage()]
  # No log_every_steps boundary before the end, yet a line after every dispatch but the first.
  assert [line.split(" step ")[1].split()[0] for line in lines] == ["4/8", "6/8", "8/8"], lines
  assert all("ETA" in line and "compile" not in line for line in lines), lines
  assert "on 1 device," in caplog.text and "first dispatch (compile included) took" in caplog.text
