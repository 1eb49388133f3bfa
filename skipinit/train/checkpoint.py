"""Orbax checkpoints of the train state, with fallback past a corrupt or half-written checkpoint."""

import os
import shutil

import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
  """Saves the train state every few epochs; restores the newest checkpoint that reads back whole.

  Orbax writes each step to a temporary directory and renames it when complete, so a preempted
  save leaves no step behind. A step that exists but cannot be read (damaged files) is reported,
  moved aside to `checkpoints/corrupt_<step>` and the next older one is tried: a state is either
  restored whole or not at all, never mixed.
  """

  def __init__(self, workdir: str, keep: int = 3):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def save(self, step: int, state) -> None:
    self.manager.save(step, args=ocp.args.StandardSave(state))

  def restore(self, abstract_state):
    """(state, step) of the newest readable checkpoint, or (None, 0) when there is none."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        return state, step
      except Exception as e:  # orbax/tensorstore raise many types for damaged files
        logging.error("checkpoint at step %d in %s is unreadable (%s: %s); trying an older one",
                      step, self.directory, type(e).__name__, str(e).splitlines()[0][:200])
        if jax.process_index() == 0:
          shutil.move(os.path.join(self.directory, str(step)),
                      os.path.join(self.directory, f"corrupt_{step}"))
        self.manager.reload()
    return None, 0

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
