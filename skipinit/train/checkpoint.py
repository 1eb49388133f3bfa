"""Orbax checkpoints of the train state, with fallback past a corrupt or half-written checkpoint."""

import glob
import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from skipinit import files
from skipinit.errors import CheckpointError

CORRUPT_PREFIX = "corrupt_"
CHECKSUMS = "checksums.json"  # in checkpoints/: {step: checksum of the state saved there}


@jax.jit
def checksum(tree) -> jax.Array:
  """A uint32 digest of every bit of a pytree of arrays, computed where they live (one pass).

  Orbax checks no checksum on restore, so a checkpoint with flipped bits (bit rot, a bad disk)
  would restore as a wrong state, most likely one that diverges at once: a permanent "diverged"
  result. This digest is sum_i bits_i * (2 h(i) + 1) mod 2^32 per array, chained over arrays:
  the weights are odd, so flipping any single bit changes it.
  """
  total = jnp.uint32(0)
  for leaf in jax.tree.leaves(tree):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    x = jnp.ravel(leaf)
    if x.dtype.itemsize == 4:
      bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    elif x.dtype.itemsize == 2:
      bits = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    else:
      bits = x.astype(jnp.uint32)  # bool, (u)int8
    weights = jnp.arange(x.size, dtype=jnp.uint32) * jnp.uint32(2654435761) * jnp.uint32(2) + 1
    total = total * jnp.uint32(1000003) + jnp.sum(bits * weights, dtype=jnp.uint32)
  return total


class Checkpointer:
  """Saves the train state every few epochs; restores the newest checkpoint that reads back whole.

  Orbax writes each step to a temporary directory and renames it when complete, so a preempted
  save leaves no step behind. A step that exists but cannot be read (damaged files), or that
  reads back with another `checksum` than the state saved, is reported,
  moved aside to `checkpoints/corrupt_<step>` and the next older one is tried: a state is either
  restored whole or not at all, never mixed. When none is left that reads back, restoring fails
  with a CheckpointError rather than starting again from step 0 over the run's metrics.
  """

  def __init__(self, workdir: str, keep: int = 3):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    # One unnamed item, said outright: left to orbax to infer from the newest step directory, an
    # emptied one (no `default/` inside) would switch the manager to multi-item mode for good and
    # make every older, intact step unreadable too.
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_handlers=ocp.StandardCheckpointHandler())

  def save(self, step: int, state) -> None:
    digest = int(jax.device_get(checksum(state)))
    self.manager.save(step, args=ocp.args.StandardSave(state))
    sums = {k: v for k, v in self._checksums().items() if int(k) in self.manager.all_steps()}
    sums[str(step)] = digest
    self._write_checksums(sums)

  def _checksums(self) -> dict:
    try:
      with open(os.path.join(self.directory, CHECKSUMS)) as f:
        sums = json.load(f)
    except (OSError, ValueError):  # none yet (or checkpoints made before checksums)
      return {}
    return sums if isinstance(sums, dict) else {}

  def _write_checksums(self, sums: dict) -> None:
    if jax.process_index() == 0:
      files.atomic_write(os.path.join(self.directory, CHECKSUMS), json.dumps(sums))

  def restore(self, abstract_state):
    """(state, step) of the newest readable checkpoint, or (None, 0) when there is none.

    Multi-host: every process must restore the same step, so each choice is agreed on (one small
    all-gather per attempt): the step tried, and whether it read back on every process.
    """
    steps = sorted(self.manager.all_steps())
    _drop_closed_loop_callbacks()  # before any read: a failed one's callbacks come at any time
    while True:
      step = steps.pop() if steps else -1
      tried = _gather(step)
      if len(set(tried)) > 1:  # e.g. a filesystem that shows a new directory late on some hosts
        raise RuntimeError(f"the processes see different checkpoints in {self.directory} (newest: "
                           f"{tried}): is it on a filesystem that every host shares?")
      if step < 0:
        corrupt = sorted(glob.glob(os.path.join(self.directory, CORRUPT_PREFIX + "*")))
        if any(_gather(bool(corrupt))):  # agreed: a process that started alone would hang
          raise CheckpointError(
              f"no checkpoint in {self.directory} can be restored: "
              f"{', '.join(os.path.basename(c) for c in corrupt) or 'its steps'} did not read "
              "back. Move a good copy back (as checkpoints/<step>) to resume, or start afresh in "
              "a new --workdir")
        return None, 0
      error = None
      try:
        state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
      except Exception as e:  # orbax/tensorstore raise many types for damaged files
        state, error = None, _describe(e)
      # Only once every process has read it back: a process that computed alone could one day
      # wait in a collective (a sharded leaf) for the others.
      saved = self._checksums().get(str(step))
      if all(_gather(error is None)) and saved is not None:
        read = int(jax.device_get(checksum(state)))
        if read != saved:
          state, error = None, f"it reads back with checksum {read}, not the {saved} saved"
      failed = [p for p, ok in enumerate(_gather(error is None)) if not ok]
      if not failed:
        return state, step
      logging.error("checkpoint at step %d in %s is unreadable (%s); trying an older one", step,
                    self.directory, error or f"on process(es) {failed}")
      if jax.process_index() == 0:
        aside, n = os.path.join(self.directory, f"{CORRUPT_PREFIX}{step}"), 1
        while os.path.exists(aside):  # (the same step damaged again after a re-save)
          aside, n = os.path.join(self.directory, f"{CORRUPT_PREFIX}{step}.{n}"), n + 1
        shutil.move(os.path.join(self.directory, str(step)), aside)
        # Its digest goes too: a re-save of this step must not be checked against it.
        self._write_checksums({k: v for k, v in self._checksums().items() if k != str(step)})
      # No process may list the directory again before it has moved (a stale list would make
      # one process skip a later save of this step that the others make: a hang).
      _barrier(f"skipinit_checkpoint_moved_{step}")
      self.manager.reload()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def _describe(error: BaseException) -> str:
  """One line for a failed read: its root cause, which names the damaged file and what is wrong.

  Orbax wraps tensorstore's error ("Error reading <array> in OCDBT database at <dir>: Truncated
  Zstd-compressed stream") in one whose first line is a repr of the whole TensorStore spec.
  """
  seen = {id(error)}
  while error.__cause__ is not None and id(error.__cause__) not in seen:
    error = error.__cause__
    seen.add(id(error))
  lines = str(error).strip().splitlines() or [""]
  return f"{type(error).__name__}: {lines[0][:300]}"


def _drop_closed_loop_callbacks() -> None:
  """Silences the stray callbacks of a failed orbax read, which would bury its one error line.

  When a read fails, orbax's `asyncio.run` closes its event loop while tensorstore still has reads
  in flight; each one then completes into the closed loop and Python prints a "RuntimeError: Event
  loop is closed" traceback for it (25 for a damaged manifest of a WRN-16 state). They are
  harmless: the error was already raised and logged. Only that exact unraisable is dropped.
  """
  previous = sys.unraisablehook
  if getattr(previous, "skipinit_closed_loop_filter", False):
    return

  def hook(unraisable):
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
      previous(unraisable)

  hook.skipinit_closed_loop_filter = True
  sys.unraisablehook = hook


def _gather(value: int) -> list[int]:
  """`value` of every process, in process order (no communication in a one-process run)."""
  if jax.process_count() == 1:
    return [int(value)]
  from jax.experimental import multihost_utils
  return [int(v) for v in multihost_utils.process_allgather(np.int32(value))]


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
