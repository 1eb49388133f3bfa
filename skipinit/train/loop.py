"""`train_and_evaluate(config, workdir)`: the training loop behind scripts/train.py (DESIGN.md).

Order of work, so that bad input never damages an existing run directory: validate the config,
compare it with the run already in `workdir`, load the data, and only then write anything.
"""

import dataclasses
import hashlib
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from skipinit import config as cfg_lib
from skipinit import models, rundir
from skipinit.data import augment, cifar10
from skipinit.errors import ConfigError
from skipinit.rundir import Status
from skipinit.train import optim, sharding, steps
from skipinit.train.checkpoint import Checkpointer

DIVERGED, COMPLETED, FAILED, RUNNING = Status.DIVERGED, Status.COMPLETED, Status.FAILED, Status.RUNNING


class _Preemption:
  """Turns SIGTERM (what SLURM and cloud schedulers send before killing) and a first Ctrl-C into a
  clean stop at the next boundary, checkpointed. A second Ctrl-C aborts at once, as usual."""

  SIGNALS = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C (SIGINT)"}

  def __init__(self):
    self.requested = False
    self.signum = None  # the signal that asked this process to stop (None: another process did)
    self._previous = {}

  @property
  def reason(self) -> str:
    return self.SIGNALS.get(self.signum, "a stop on another process")

  def __enter__(self):
    try:
      for signum in self.SIGNALS:
        if signum == signal.SIGINT and signal.getsignal(signum) in (signal.SIG_IGN, None):
          continue  # ignored (a shell's background job) or not Python's: left as it is
        self._previous[signum] = signal.signal(signum, self._handle)
    except ValueError:  # not the main thread (the first call raises): signals are left alone
      self._previous = {}
    return self

  def _handle(self, signum, frame):
    self.requested = True
    self.signum = self.signum or signum
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, self._previous[signal.SIGINT])  # the next one interrupts
      logging.warning("Ctrl-C: stopping at the next checkpoint boundary; press Ctrl-C again to "
                      "abort now (the run then resumes from its last saved checkpoint)")

  def __exit__(self, *_):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)


def _stopped_by(preempt) -> dict:
  """status.json's note of a Ctrl-C stop (train.py then exits 130, as an interrupted command)."""
  return {"interrupted": True} if preempt.signum == signal.SIGINT else {}


def _stop_everywhere(preempt) -> bool:
  """Whether SIGTERM asks to stop here (a boundary, or before training): the same on every process.

  SIGTERM may reach only some processes of a multi-host run, or reach them between different
  boundaries. A process that stopped alone would wait forever in orbax's save (a collective) while
  the others wait in the next step's collectives: so all stop as soon as any was asked to.
  """
  requested = bool(preempt.requested)
  if jax.process_count() == 1:
    return requested
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.int32(requested))))


def _data_names(config) -> dict:
  """data.json's names of the data (tables title themselves with them)."""
  return {"name": config.data.name, "source": config.data.source}


# The eval subset's permutation seed: fixed, not train.seed, so that every run of a sweep (every
# seed) evaluates on the same images.
EVAL_SUBSET_SEED = 0


def eval_subset_indices(num_test: int, n: int) -> np.ndarray:
  """data.eval_subset: the first n of a fixed seeded permutation of the test set, in file order.

  A uniform random subset rather than a stratified one: CIFAR-10's test set is balanced, and a
  random subset keeps the classes' shares within sampling noise (~3% of a class at n=1000).
  """
  return np.sort(np.random.default_rng(EVAL_SUBSET_SEED).permutation(num_test)[:n])


class DeviceData:
  """A data set held whole on the devices (CIFAR-10): k train steps per dispatch, augmented there."""

  def __init__(self, config, mesh):
    arrays = cifar10.load(config.data)
    self.train_images, self.train_labels = arrays["train"]
    test_images, test_labels = arrays["test"]
    self.num_train = len(self.train_labels)
    self.batch_size = config.train.batch_size
    self.seed = config.train.seed
    self.k = config.train.steps_per_dispatch
    self.mesh = mesh
    if self.batch_size > self.num_train:
      raise ConfigError(f"train.batch_size={self.batch_size} is larger than the training set "
                        f"({self.num_train} examples)")
    self.steps_per_epoch = self.num_train // self.batch_size
    rep = sharding.replicated(mesh)
    self.images = sharding.put_global(self.train_images, rep)
    self.labels = sharding.put_global(self.train_labels, rep)

    # What the run trains on, so that a resume on other data is refused (rundir.check_data): the
    # data as loaded, before the padding below (it depends on the devices and the eval batch).
    digest = hashlib.sha1()
    for a in (self.train_images, self.train_labels, test_images, test_labels):
      digest.update(np.ascontiguousarray(a).data)
    self.fingerprint = {"train_examples": self.num_train, "test_examples": len(test_labels),
                        "sha1": digest.hexdigest(), **_data_names(config)}
    subset = config.data.eval_subset
    if subset:
      if subset > len(test_labels):
        raise ConfigError(f"data.eval_subset={subset} is larger than the test set "
                          f"({len(test_labels)} examples): use at most {len(test_labels)}, or 0 "
                          "for the whole test set")
      keep = eval_subset_indices(len(test_labels), subset)
      test_images, test_labels = test_images[keep], test_labels[keep]
      self.fingerprint["eval_examples"] = subset

    # Pad the test set to whole eval batches (a multiple of the device count); padding is masked.
    eb = math.ceil(min(config.train.eval_batch_size, len(test_labels)) / mesh.size) * mesh.size
    nb = math.ceil(len(test_labels) / eb)
    pad = nb * eb - len(test_labels)
    mask = np.concatenate([np.ones(len(test_labels), bool), np.zeros(pad, bool)])
    test_images = np.concatenate([test_images, np.zeros((pad,) + test_images.shape[1:], np.uint8)])
    test_labels = np.concatenate([test_labels, np.zeros(pad, np.int32)])
    eval_sharding = sharding.batch_sharded(mesh, batch_axis=1)
    self.test = tuple(sharding.put_global(a.reshape((nb, eb) + a.shape[1:]), eval_sharding)
                      for a in (test_images, test_labels, mask))
    self._idx_sharding = sharding.batch_sharded(mesh, batch_axis=1)
    self._perm_epoch, self._perm = None, None

  def compile(self, config, model, train_step, run):
    """Builds the jitted k-step chunk and the one-dispatch evaluation; `run` holds the run's
    constants (steps.run_constants), passed to the chunk with its data."""
    mesh = self.mesh
    self._run = run
    dtype = models.DTYPES[config.model.dtype]
    preprocess = lambda x: augment.normalize(x, cifar10.MEAN, cifar10.STD, dtype)
    train_aug = lambda rng, x: preprocess(augment.pad_crop_flip(rng, x))
    chunk = steps.make_device_data_chunk(train_step, train_aug, sharding.batch_sharded(mesh))
    self._chunk = jax.jit(chunk, donate_argnums=0)  # benchmarks time this one
    self._chunk_flagged = jax.jit(steps.with_divergence_flag(chunk), donate_argnums=0)
    self._eval = jax.jit(steps.make_device_data_eval(
        steps.make_eval_fn(model, config.model.num_classes, preprocess)))

  def _epoch_order(self, epoch: int) -> np.ndarray:
    """The shuffle of one epoch, a function of (seed, epoch) only, so resumption sees the same data."""
    if self._perm_epoch != epoch:
      perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_train)
      self._perm = perm[: self.steps_per_epoch * self.batch_size].reshape(
          self.steps_per_epoch, self.batch_size).astype(np.int32)
      self._perm_epoch = epoch
    return self._perm

  def chunk_args(self, step: int, n: int) -> tuple:
    """The data arguments of the chunk that runs steps [step, step + n) of one epoch."""
    epoch, pos = divmod(step, self.steps_per_epoch)
    idx = sharding.put_global(self._epoch_order(epoch)[pos:pos + n], self._idx_sharding)
    return self.images, self.labels, idx, self._run

  def benchmark_dispatch(self, k: int):
    """(jitted fn, its data arguments, examples per call) of one k-step dispatch (benchmarks)."""
    if k > self.steps_per_epoch:
      raise ConfigError(f"a {k}-step dispatch needs {k * self.batch_size} training examples; the "
                        f"data set has {self.num_train}")
    return self._chunk, self.chunk_args(0, k), k * self.batch_size

  def train(self, state, start: int, end: int):
    """Dispatches steps [start, end), cut at epoch ends and every k steps; yields (state, the
    step it reaches, its first_bad_step flag) once each dispatch is enqueued (`_dispatch_loop`)."""
    step = start
    while step < end:
      n = min(self.k, end - step, self.steps_per_epoch - step % self.steps_per_epoch)
      state, bad = self._chunk_flagged(state, *self.chunk_args(step, n))
      step += n
      yield state, step, bad

  def evaluate(self, state) -> dict:
    return jax.device_get(self._eval(state.variables(), *self.test))


class StreamedData:
  """A data set streamed from the host (ImageNet): one step per dispatch, per-process slices."""

  def __init__(self, config, mesh):
    from skipinit.data import imagenet  # TensorFlow stays out of CIFAR runs
    self.source = imagenet.make_imagenet(config, jax.process_index(), jax.process_count())
    self.mesh = mesh
    self.batch_size = config.train.batch_size
    self.num_train = self.source.num_train_examples
    if self.batch_size > self.num_train:
      raise ConfigError(f"train.batch_size={self.batch_size} is larger than the training set "
                        f"({self.num_train} examples)")
    self.steps_per_epoch = self.num_train // self.batch_size
    self._iter, self._iter_step = None, None
    self.fingerprint = {"train_examples": self.num_train,
                        "test_examples": self.source.num_eval_examples, **_data_names(config)}
    if config.data.eval_subset:
      raise ConfigError(f"data.eval_subset={config.data.eval_subset} is for data held on the "
                        "device (CIFAR-10); ImageNet evaluates its whole validation split: use 0")

  def compile(self, config, model, train_step, run):
    from skipinit.data import imagenet
    self._run = run
    if self.source.normalized:
      preprocess = lambda x: x
    else:  # data.normalize_on_host=False: uint8 batches, normalized here, on device
      dtype = models.DTYPES[config.model.dtype]
      preprocess = lambda x: augment.normalize(x, imagenet.MEAN_RGB, imagenet.STDDEV_RGB, dtype)

    def one_step(state, images, labels, run):
      base_key, lr = run

      def step(state):
        rng = jax.random.fold_in(base_key, state.step)
        return train_step(state, preprocess(images), labels, rng, lr)
      return steps.skip_if_diverged(step, state)

    self._step = jax.jit(one_step, donate_argnums=0)  # benchmarks time this one
    self._step_flagged = jax.jit(steps.with_divergence_flag(one_step), donate_argnums=0)
    self._eval = jax.jit(steps.make_eval_fn(model, config.model.num_classes, preprocess))

  def benchmark_dispatch(self, k: int):
    """(jitted fn, a device batch, examples per call) of one train step: input excluded."""
    del k  # one step per dispatch
    from skipinit.data import imagenet
    batch = next(imagenet.device_prefetch(self.source.train_batches(0),
                                          sharding.batch_sharded(self.mesh), size=1))
    return self._step, (batch["images"], batch["labels"], self._run), self.batch_size

  def train(self, state, start: int, end: int):
    """Dispatches steps [start, end), one each; yields as DeviceData.train does."""
    from skipinit.data import imagenet
    for step in range(start, end):
      epoch, pos = divmod(step, self.steps_per_epoch)
      if self._iter is None or self._iter_step != step or pos == 0:
        # Two batches in flight: their host-to-device copies overlap the running step.
        self._iter = imagenet.device_prefetch(self.source.train_batches(epoch, start_step=pos),
                                              sharding.batch_sharded(self.mesh), size=2)
      batch = next(self._iter)
      state, bad = self._step_flagged(state, batch["images"], batch["labels"], self._run)
      self._iter_step = step + 1
      yield state, step + 1, bad

  def evaluate(self, state) -> dict:
    from skipinit.data import imagenet
    totals = {"loss": 0.0, "correct": 0.0, "count": 0.0}
    variables = state.variables()
    for b in imagenet.device_prefetch(self.source.eval_batches(), sharding.batch_sharded(self.mesh),
                                      size=2):
      out = jax.device_get(self._eval(variables, b["images"], b["labels"], b["mask"]))
      totals = {k: totals[k] + float(out[k]) for k in totals}
    return totals


def _boundaries(total: int, every_steps: float) -> set[int]:
  every = max(1.0, every_steps)
  return {min(total, int(round(i * every))) for i in range(1, int(math.ceil(total / every)) + 1)}


# Progress lines at least this often (seconds of wall time), between log_every_steps boundaries.
PROGRESS_EVERY_S = 30.0


def _format_eta(seconds: float) -> str:
  seconds = int(max(0, seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclasses.dataclass
class Experiment:
  """What a config builds before training: the model, optimizer, data and initial state."""
  model: Any
  tx: Any
  lr_fn: Any
  data: Any
  init_state: Any  # () -> TrainState, replicated over the mesh


def build_experiment(config, mesh) -> Experiment:
  """Loads the data and builds the model, optimizer and jitted steps (no files written)."""
  t = config.train
  model = models.build_model(config.model)
  init_key, data_key = jax.random.split(jax.random.key(t.seed))
  data = (StreamedData if config.data.name == "imagenet2012" else DeviceData)(config, mesh)
  lr_fn = optim.create_learning_rate_fn(t, data.steps_per_epoch)
  image_shape = (config.data.image_size, config.data.image_size, 3)
  # Parameter shapes decide the optimizer's masks; eval_shape finds them without computing.
  abstract_params = jax.eval_shape(
      lambda: model.init(init_key, jnp.zeros((1,) + image_shape), train=False))["params"]
  recipe = model.recipe
  # The optimizer runs the schedule's shape; the step scales by the lr, an argument, as the seed's
  # keys are: every run of a sweep cell compiles the same programs (shared by XLA's cache).
  shape_fn = optim.create_learning_rate_fn(t, data.steps_per_epoch, base=1.0)
  tx = optim.make_optimizer(t, shape_fn, abstract_params, recipe.name, recipe.gain_name or "")
  train_step = steps.make_train_step(model, tx, config.model.num_classes, t.label_smoothing)
  data.compile(config, model, train_step, steps.run_constants(data_key, t.lr))
  init = jax.jit(lambda key: steps.create_train_state(model, tx, key, image_shape),
                 out_shardings=sharding.replicated(mesh))
  return Experiment(model=model, tx=tx, lr_fn=lr_fn, data=data,
                    init_state=lambda: init(init_key))


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains and evaluates the model a config describes; returns the final status record.

  Resumes from the newest checkpoint in `workdir`; a completed or diverged run is reported, not
  redone. A non-finite loss or gradient norm ends the run with status "diverged" (PAPER.md 4:
  a diverged run is a result, not a number).
  """
  sharding.maybe_initialize_distributed()
  note = cfg_lib.fit_ghost_batch(config)  # the rule of train.py and the sweeps, for library callers
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
  if existing and existing.get("status") in (COMPLETED, DIVERGED):
    logging.info("run in %s already ended (%s); not redone", workdir, existing["status"])
    return existing  # (also from a read-only copy of the run)
  rundir.check_writable(workdir)
  # SIGTERM from here on means "stop at the next boundary (checkpointed), then exit": also while
  # compiling and restoring, so that no process of a multi-host run dies alone while the others
  # wait for it in a collective.
  with _Preemption() as preempt:
    return _train(config, workdir, mesh, preempt)


def _train(config, workdir: str, mesh, preempt) -> dict:
  t = config.train
  exp = build_experiment(config, mesh)
  data, lr_fn, rep = exp.data, exp.lr_fn, sharding.replicated(mesh)
  rundir.check_data(workdir, data.fingerprint)
  try:
    os.makedirs(workdir, exist_ok=True)
    rundir.write_config(workdir, config)
    rundir.write_data(workdir, data.fingerprint)
  except OSError as e:  # what check_writable cannot foresee (quotas, root squash, ...)
    raise ConfigError(f"cannot write the run directory {workdir}: {e}") from None
  state = exp.init_state()
  ckpt = Checkpointer(workdir, keep=t.keep_checkpoints)
  restored, start = ckpt.restore(jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state))
  if restored is not None:
    state = restored
    logging.info("resumed from the checkpoint at step %d", start)
  log = rundir.MetricsLog(workdir, resume_step=start)

  spe = data.steps_per_epoch
  total = max(1, int(round(t.epochs * spe)))
  if t.warmup_epochs >= t.epochs:
    logging.warning("train.warmup_epochs=%g is not shorter than train.epochs=%g: the learning rate "
                    "never reaches train.lr=%g", t.warmup_epochs, t.epochs, t.lr)
  evals = _boundaries(total, t.eval_every_epochs * spe)
  ckpts = _boundaries(total, t.checkpoint_every_epochs * spe) | {total}
  logs = _boundaries(total, t.log_every_steps)
  stops = sorted(s for s in evals | ckpts | logs if s > start)
  if _stop_everywhere(preempt):  # SIGTERM while building or restoring: the checkpoint is the state
    logging.warning("%s before training: stopped at step %d; re-run the command to resume",
                    preempt.reason, start)
    return rundir.write_status(workdir, RUNNING, step=start, epoch=start / spe,
                               total_steps=total, preempted=True, **_stopped_by(preempt))
  rundir.write_status(workdir, RUNNING, step=start, epoch=start / spe, total_steps=total)
  logging.info("training %s-%s %s for %d steps (%d per epoch) on %d device%s, batch %d",
               config.model.name, config.model.depth, config.model.normalizer, total, spe,
               mesh.size, "" if mesh.size == 1 else "s", t.batch_size)

  def final(status, **fields):
    ckpt.wait()
    ckpt.close()
    log.close()
    return rundir.write_status(workdir, status, **fields)

  step, run_start = start, time.time()
  # The throughput window: steps since window_step, timed from window_start. The first dispatch
  # compiles: it is timed apart, so that rates (and ETAs) are training rates; until it has run,
  # a rate includes the compile and no ETA is given.
  window_start, window_step, timed = run_start, start, False
  first_done, last_line = False, time.time()

  def progress(step: int) -> tuple:
    nonlocal last_line
    sums = jax.device_get((state.loss_sum, state.correct_sum, state.count))
    now = last_line = time.time()
    rate = (step - window_step) * t.batch_size / max(now - window_start, 1e-9)
    eta = (f"ETA {_format_eta((total - step) * t.batch_size / rate)}" if timed and rate > 0
           else "(compile included)")
    logging.info("epoch %.2f/%g step %d/%d loss %.4f acc %.2f%% %.0f ex/s %s",
                 step / spe, t.epochs, step, total, sums[0] / max(sums[2], 1),
                 100 * sums[1] / max(sums[2], 1), rate, eta)
    return sums, rate

  record = {}
  try:
    for stop in stops:
      # Each dispatch's divergence flag is read once the next dispatch is enqueued, so that a
      # healthy run never waits on it, and a diverged one stops within a dispatch (the steps
      # after a non-finite one are skipped on the device: steps.skip_if_diverged).
      pending = None
      if not first_done:
        logging.info("compiling the training step (the first dispatch)")
      for state, step, bad in data.train(state, step, stop):
        if not first_done:
          first_done = True
          jax.block_until_ready(bad)
          logging.info("first dispatch (compile included) took %.0f s", time.time() - window_start)
          last_line = time.time()
          if step < stop:  # else the window is this dispatch: its rate includes the compile
            window_start, window_step, timed = last_line, step, True
        if pending is not None and int(pending) >= 0:
          break
        pending = bad
        if window_step < step < stop and time.time() - last_line >= PROGRESS_EVERY_S:
          progress(step)  # a short run is never silent for minutes between log_every_steps
      bad = int(jax.device_get(state.first_bad_step))
      if bad >= 0:
        logging.warning("loss or gradient norm not finite at step %d: run diverged", bad)
        return final(DIVERGED, step=bad, diverged_step=bad, epoch=bad / spe, total_steps=total)
      step = stop
      if step in logs or step in evals:
        sums, rate = progress(step)
      if step in evals:
        ev = data.evaluate(state)
        record = {"step": step, "epoch": step / spe,
                  "train_loss": float(sums[0] / max(sums[2], 1)),
                  "train_acc": float(sums[1] / max(sums[2], 1)),
                  "test_loss": float(ev["loss"] / ev["count"]),
                  "test_acc": float(ev["correct"] / ev["count"]),
                  "lr": float(lr_fn(step - 1)), "examples_per_sec": float(rate),
                  "wall_time": log.resumed_wall_time + time.time() - run_start}
        log.write(record)
        logging.info("eval at epoch %.2f: test loss %.4f, test accuracy %.2f%%",
                     record["epoch"], record["test_loss"], 100 * record["test_acc"])
        # From numpy: in a multi-process run (jax 0.10) `jax.device_put` of a jax.Array onto a
        # sharding that spans other processes makes an array that orbax cannot save.
        state = state.replace(**jax.tree.map(lambda z: sharding.put_global(np.asarray(z), rep),
                                             steps.zero_metric_sums()))
      stop_now = _stop_everywhere(preempt)
      if step in ckpts or stop_now:
        ckpt.save(step, state)
        if step < total:  # status.json: how far the run got (the checkpoint saved or being saved)
          rundir.write_status(workdir, RUNNING, step=step, epoch=step / spe, total_steps=total)
      if step in logs or step in evals:  # the next window: after the eval and the save
        window_start, window_step, timed = time.time(), step, True
      if stop_now and step < total:
        logging.warning("%s: checkpoint saved at step %d; re-run the command to resume",
                        preempt.reason, step)
        ckpt.wait()
        return rundir.write_status(workdir, RUNNING, step=step, epoch=step / spe,
                                   total_steps=total, preempted=True, **_stopped_by(preempt))
  except Exception as e:
    final(FAILED, step=step, epoch=step / spe, error=f"{type(e).__name__}: {e}"[:2000])
    raise
  fields = {k: record[k] for k in ("train_loss", "train_acc", "test_loss", "test_acc")
            if k in record}
  return final(COMPLETED, step=step, epoch=step / spe, total_steps=total, **fields)
