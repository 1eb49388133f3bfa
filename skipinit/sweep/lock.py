"""A sweep's per-run lock (`.lock` in the run directory, skipinit.rundir).

The lock is an fcntl.flock on `.lock`, held by the worker and inherited by the training process:
the kernel drops it when both exit, so a killed worker never leaves a stale lock behind, and a
trainer that outlives its worker still keeps a second worker off the run. flock needs a file
system with working locks (local disks, NFSv4, Lustre mounted with -o flock).
"""

import fcntl
import os

from skipinit.rundir import LOCK


class RunLock:
  """A non-blocking exclusive lock on one run directory; `fd` can be passed to a child process."""

  def __init__(self, run_dir: str):
    self.path = os.path.join(run_dir, LOCK)
    self.fd = None

  def acquire(self) -> bool:
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      os.close(fd)
      return False
    self.fd = fd
    return True

  def release(self) -> None:
    # Close, never LOCK_UN: unlocking would also free a training process that inherited the fd
    # and is still running; closing leaves its copy of the lock in place.
    if self.fd is not None:
      os.close(self.fd)
      self.fd = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.release()


def is_locked(run_dir: str) -> bool:
  """Whether some worker (or its training process) holds the run's lock right now."""
  if not os.path.exists(os.path.join(run_dir, LOCK)):
    return False
  lock = RunLock(run_dir)
  if lock.acquire():
    lock.release()
    return False
  return True
