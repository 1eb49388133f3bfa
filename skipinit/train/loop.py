"""`train_and_evaluate(config, workdir)`: the training loop behind scripts/train.py (DESIGN.md).

Order of work, so that bad input never damages an existing run directory: validate the config,
compare it with the run already in `workdir`, load the data, and only then write anything.
The steps are skipinit/train/steps.py's; a skipinit/data/sources.py source supplies their data.
"""

import dataclasses
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from skipinit import config as cfg_lib
from skipinit import models, rundir, sharding
from skipinit.data import augment, sources
from skipinit.errors import ConfigError
from skipinit.rundir import Status
from skipinit.train import optim, steps
from skipinit.train.checkpoint import Checkpointer
from skipinit.train.preemption import Preemption, stop_everywhere, stopped_by

# Progress lines at least this often (seconds of wall time), between log_every_steps boundaries.
PROGRESS_EVERY_S = 30.0


@dataclasses.dataclass
class Experiment:
  """What a config builds before training: the data, the jitted steps, the initial state."""
  lr_fn: Any
  data: sources.Source
  init_state: Callable  # () -> TrainState, replicated over the mesh
  steps_per_dispatch: int  # k on data held on the devices, 1 on streamed data
  run_constants: tuple  # steps.run_constants(seed's key, lr): a dispatch's last argument
  chunk: Callable  # (state, *dispatch_args) -> state: one dispatch (benchmarks time this one)
  chunk_flagged: Callable  # the same, -> (state, its first_bad_step)
  evaluate: Callable  # state -> sums of loss, correct and count over the test set

  def dispatches(self, start: int, end: int):
    """Steps [start, end) as dispatches (first step, steps): at most k, cut at epoch ends (the
    one place this rule is written)."""
    step, spe = start, self.data.steps_per_epoch
    while step < end:
      n = min(self.steps_per_dispatch, end - step, spe - step % spe)
      yield step, n
      step += n

  def dispatch_args(self, step: int, n: int) -> tuple:
    """Every argument but the state of the dispatch that runs steps [step, step + n)."""
    return (*self.data.train_args(step, n), self.run_constants)


def build_experiment(config, mesh) -> Experiment:
  """Loads the data and builds the model, optimizer and jitted steps (no files written)."""
  t = config.train
  model = models.build_model(config.model)
  init_key, data_key = jax.random.split(jax.random.key(t.seed))
  data = (sources.StreamedData if config.data.name == "imagenet2012" else sources.DeviceData)(
      config, mesh)
  lr_fn = optim.create_learning_rate_fn(t, data.steps_per_epoch)
  image_shape = (config.data.image_size, config.data.image_size, 3)
  # Parameter shapes decide the optimizer's masks; eval_shape finds them without computing.
  abstract_params = jax.eval_shape(
      lambda: model.init(init_key, jnp.zeros((1,) + image_shape), train=False))["params"]
  # The optimizer runs the schedule's shape; the step scales by the lr, an argument, as the seed's
  # keys are: every run of a sweep cell compiles the same programs (shared by XLA's cache).
  shape_fn = optim.create_learning_rate_fn(t, data.steps_per_epoch, base=1.0)
  tx = optim.make_optimizer(t, shape_fn, abstract_params, model.recipe)
  train_step = steps.make_train_step(model, tx, config.model.num_classes, t.label_smoothing)
  dtype = models.DTYPES[config.model.dtype]
  preprocess = ((lambda x: augment.normalize(x, *data.normalize_stats, dtype))
                if data.normalize_stats else (lambda x: x))
  eval_batch = steps.make_eval_fn(model, config.model.num_classes, preprocess)
  if data.held_on_device:  # k steps per dispatch; the test set in one dispatch, summed there
    k, chunk = t.steps_per_dispatch, steps.make_device_data_chunk(
        train_step, lambda rng, x: preprocess(data.augment_on_device(rng, x)),
        sharding.batch_sharded(mesh))
    (test_set,), eval_all = data.eval_batches(), jax.jit(steps.make_device_data_eval(eval_batch))
    evaluate = lambda state: jax.device_get(eval_all(state.variables(), *test_set))
  else:  # streamed: one step per dispatch; the eval batches summed on the host
    k, chunk, eval_one = 1, steps.make_streamed_step(train_step, preprocess), jax.jit(eval_batch)
    evaluate = lambda state: _host_sums(eval_one, state.variables(), data.eval_batches())
  init = jax.jit(lambda key: steps.create_train_state(model, tx, key, image_shape),
                 out_shardings=sharding.replicated(mesh))
  return Experiment(
      lr_fn=lr_fn, data=data, init_state=lambda: init(init_key),
      steps_per_dispatch=k, run_constants=steps.run_constants(data_key, t.lr),
      chunk=jax.jit(chunk, donate_argnums=0),
      chunk_flagged=jax.jit(steps.with_divergence_flag(chunk), donate_argnums=0), evaluate=evaluate)


def _host_sums(eval_batch, variables, batches) -> dict:  # in float64
  totals = {"loss": 0.0, "correct": 0.0, "count": 0.0}
  for batch in batches:
    out = jax.device_get(eval_batch(variables, *batch))
    totals = {k: totals[k] + float(out[k]) for k in totals}
  return totals


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains and evaluates the model a config describes; returns the final status record.

  Resumes from the newest checkpoint in `workdir`; a completed or diverged run is reported, not
  redone. A non-finite loss or gradient norm ends the run with status "diverged" (PAPER.md 4:
  a diverged run is a result, not a number).
  """
  sharding.maybe_initialize_distributed()
  note = cfg_lib.fit_ghost_batch(config)  # the sweeps apply it too (their manifests)
  if note:
    logging.warning(note)
  cfg_lib.validate(config)
  mesh = sharding.make_mesh(sharding.devices_for(config))
  cfg_lib.validate(config, num_devices=mesh.size)
  if jax.process_count() > 1 and config.train.batch_size % jax.process_count():
    raise ConfigError(f"train.batch_size={config.train.batch_size} is not divisible by the "
                      f"{jax.process_count()} processes")
  rundir.keep_legacy_values(workdir, config)
  rundir.check_config(workdir, config)
  existing = rundir.read_status(workdir)
  if existing and existing.get("status") in rundir.FINISHED:
    logging.info("run in %s already ended (%s); not redone", workdir, existing["status"])
    return existing  # (also from a read-only copy of the run)
  rundir.check_writable(workdir)
  # SIGTERM from here on means "stop at the next boundary (checkpointed), then exit": also while
  # compiling and restoring, so that no process of a multi-host run dies alone while the others
  # wait for it in a collective.
  with Preemption() as preempt:
    exp = build_experiment(config, mesh)
    state, start, ckpt, log = _open_run(workdir, config, exp)
    t, spe = config.train, exp.data.steps_per_epoch
    total = max(1, int(round(t.epochs * spe)))
    at = lambda step: {"step": step, "epoch": step / spe, "total_steps": total}
    evals = _boundaries(total, t.eval_every_epochs * spe)
    ckpts = _boundaries(total, t.checkpoint_every_epochs * spe) | {total}
    logs = _boundaries(total, t.log_every_steps)
    stops = sorted(s for s in evals | ckpts | logs if s > start)
    if stop_everywhere(preempt):  # SIGTERM while building or restoring: the checkpoint is the state
      logging.warning("%s before training: stopped at step %d; re-run the command to resume",
                      preempt.reason, start)
      return rundir.write_status(workdir, Status.RUNNING, **at(start), preempted=True,
                                 **stopped_by(preempt))
    rundir.write_status(workdir, Status.RUNNING, **at(start))
    logging.info("training %s-%s %s for %d steps (%d per epoch) on %d device%s, batch %d",
                 config.model.name, config.model.depth, config.model.normalizer, total, spe,
                 mesh.size, "" if mesh.size == 1 else "s", t.batch_size)

    def final(status, **fields):
      ckpt.wait()
      ckpt.close()
      log.close()
      return rundir.write_status(workdir, status, **fields)

    step, progress, record = start, _Progress(config, start, total, spe), {}
    if stops:
      logging.info("compiling the training step (the first dispatch)")
    try:
      for stop in stops:
        # Each dispatch's divergence flag is read once the next dispatch is enqueued, so that a
        # healthy run never waits on it, and a diverged one stops within a dispatch (the steps
        # after a non-finite one are skipped on the device: steps.skip_if_diverged).
        pending = None
        for first, n in exp.dispatches(step, stop):
          state, flag = exp.chunk_flagged(state, *exp.dispatch_args(first, n))
          step = first + n
          if pending is not None and int(pending) >= 0:
            break
          pending = flag
          progress.dispatched(state, step, stop, flag)
        bad = int(jax.device_get(state.first_bad_step))
        if bad >= 0:
          logging.warning("loss or gradient norm not finite at step %d: run diverged", bad)
          return final(Status.DIVERGED, step=bad, diverged_step=bad, epoch=bad / spe,
                       total_steps=total)
        step = stop
        if step in logs or step in evals:
          sums, rate = progress.line(state, step)
        if step in evals:
          record = _eval_record(step, spe, sums, exp.evaluate(state), lr=float(exp.lr_fn(step - 1)),
                                examples_per_sec=float(rate),
                                wall_time=log.resumed_wall_time + time.time() - progress.run_start)
          log.write(record)
          # From numpy: in a multi-process run (jax 0.10) `jax.device_put` of a jax.Array onto a
          # sharding that spans other processes makes an array that orbax cannot save.
          state = state.replace(**jax.tree.map(
              lambda z: sharding.put_global(np.asarray(z), sharding.replicated(mesh)),
              steps.zero_metric_sums()))
        stop_now = stop_everywhere(preempt)
        if step in ckpts or stop_now:
          ckpt.save(step, state)
          if step < total:  # status.json: how far the run got (the checkpoint saved or being saved)
            rundir.write_status(workdir, Status.RUNNING, **at(step))
        if step in logs or step in evals:  # the next window: after the eval and the save
          progress.restart(step)
        if stop_now and step < total:
          logging.warning("%s: checkpoint saved at step %d; re-run the command to resume",
                          preempt.reason, step)
          ckpt.wait()
          return rundir.write_status(workdir, Status.RUNNING, **at(step), preempted=True,
                                     **stopped_by(preempt))
    except Exception as e:
      final(Status.FAILED, step=step, epoch=step / spe, error=f"{type(e).__name__}: {e}"[:2000])
      raise
  fields = {k: record[k] for k in ("train_loss", "train_acc", "test_loss", "test_acc")
            if k in record}
  return final(Status.COMPLETED, **at(step), **fields)


def _open_run(workdir: str, config, exp: Experiment) -> tuple:
  """Writes config.json and data.json (once the data match the run's) and restores the newest
  checkpoint: (state, its step, the Checkpointer, the MetricsLog)."""
  rundir.check_data(workdir, exp.data.fingerprint)
  try:
    os.makedirs(workdir, exist_ok=True)
    rundir.write_config(workdir, config)
    rundir.write_data(workdir, exp.data.fingerprint)
  except OSError as e:  # what check_writable cannot foresee (quotas, root squash, ...)
    raise ConfigError(f"cannot write the run directory {workdir}: {e}") from None
  state = exp.init_state()
  ckpt = Checkpointer(workdir, keep=config.train.keep_checkpoints)
  restored, start = ckpt.restore(jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state))
  if restored is not None:
    state = restored
    logging.info("resumed from the checkpoint at step %d", start)
  t = config.train
  if t.warmup_epochs >= t.epochs:
    logging.warning("train.warmup_epochs=%g is not shorter than train.epochs=%g: the learning rate "
                    "never reaches train.lr=%g", t.warmup_epochs, t.epochs, t.lr)
  return state, start, ckpt, rundir.MetricsLog(workdir, resume_step=start)


def _boundaries(total: int, every_steps: float) -> set[int]:
  every = max(1.0, every_steps)
  return {min(total, int(round(i * every))) for i in range(1, int(math.ceil(total / every)) + 1)}


class _Progress:
  """Progress lines: examples/s over the window since the last boundary, and the ETA. The first
  dispatch compiles: it is timed apart, so that rates (and ETAs) are training rates."""

  def __init__(self, config, step: int, total: int, steps_per_epoch: int):
    self.t, self.total, self.spe = config.train, total, steps_per_epoch
    self.run_start = self.window_start = self.last_line = time.time()
    self.window_step, self.timed, self.first_done = step, False, False

  def dispatched(self, state, step: int, stop: int, flag) -> None:
    """Times the first dispatch; a line every PROGRESS_EVERY_S (a short run is never silent for
    minutes between log_every_steps boundaries)."""
    if not self.first_done:
      self.first_done = True
      jax.block_until_ready(flag)
      logging.info("first dispatch (compile included) took %.0f s", time.time() - self.window_start)
      self.last_line = time.time()
      if step < stop:  # else the window is this dispatch: its rate (no ETA) includes the compile
        self.restart(step, self.last_line)
    if self.window_step < step < stop and time.time() - self.last_line >= PROGRESS_EVERY_S:
      self.line(state, step)

  def line(self, state, step: int) -> tuple:
    """Logs the line of `step`; returns the training sums (loss, correct, count) and the rate."""
    t = self.t
    sums = jax.device_get((state.loss_sum, state.correct_sum, state.count))
    now = self.last_line = time.time()
    rate = (step - self.window_step) * t.batch_size / max(now - self.window_start, 1e-9)
    eta = (f"ETA {_format_eta((self.total - step) * t.batch_size / rate)}"
           if self.timed and rate > 0 else "(compile included)")
    logging.info("epoch %.2f/%g step %d/%d loss %.4f acc %.2f%% %.0f ex/s %s",
                 step / self.spe, t.epochs, step, self.total, sums[0] / max(sums[2], 1),
                 100 * sums[1] / max(sums[2], 1), rate, eta)
    return sums, rate

  def restart(self, step: int, now: float | None = None) -> None:
    """The next window starts at `step` (after the eval and the save: they are not timed)."""
    self.window_start, self.window_step, self.timed = now or time.time(), step, True


def _format_eta(seconds: float) -> str:
  seconds = int(max(0, seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _eval_record(step: int, spe: int, sums, ev: dict, **timing) -> dict:
  """metrics.jsonl's record of an eval (logged): the training sums since the last, the test's."""
  record = {"step": step, "epoch": step / spe,
            "train_loss": float(sums[0] / max(sums[2], 1)),
            "train_acc": float(sums[1] / max(sums[2], 1)),
            "test_loss": float(ev["loss"] / ev["count"]),
            "test_acc": float(ev["correct"] / ev["count"]), **timing}
  logging.info("eval at epoch %.2f: test loss %.4f, test accuracy %.2f%%",
               record["epoch"], record["test_loss"], 100 * record["test_acc"])
  return record
