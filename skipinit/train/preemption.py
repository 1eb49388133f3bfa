"""SIGTERM and Ctrl-C as a clean, checkpointed stop at the trainer's next boundary."""

import signal

import jax
import numpy as np
from absl import logging


class Preemption:
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


def stopped_by(preempt) -> dict:
  """status.json's note of a Ctrl-C stop (train.py then exits 130, as an interrupted command)."""
  return {"interrupted": True} if preempt.signum == signal.SIGINT else {}


def stop_everywhere(preempt) -> bool:
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
