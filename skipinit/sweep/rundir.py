"""What a sweep knows about one run directory: its state from status.json, and a per-run lock.

The run-directory files are the trainer's contract (DESIGN.md): config.json, metrics.jsonl,
status.json ({"status": "running|completed|diverged|failed", ...}), checkpoints/. The sweep adds
two files of its own that nothing else reads: `.lock` and `train.log` (the trainer's output), and
writes status.json itself only for a run the trainer refused (bad input: it writes nothing).

The lock is an fcntl.flock on `.lock`, held by the worker and inherited by the training process:
the kernel drops it when both exit, so a killed worker never leaves a stale lock behind, and a
trainer that outlives its worker still keeps a second worker off the run. flock needs a file
system with working locks (local disks, NFSv4, Lustre mounted with -o flock).
"""

import fcntl
import json
import os

from skipinit import files

STATUS = "status.json"
CONFIG = "config.json"
DATA = "data.json"  # the trainer's record of the data a run trains on
METRICS = "metrics.jsonl"
LOCK = ".lock"
LOG = "train.log"

# Divergence is a result (PAPER.md section 4): neither state is ever re-run.
FINISHED = ("completed", "diverged")


def read_json(path: str):
  """The parsed file, or None if it is missing or half-written."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def write_json_atomic(path: str, value) -> None:
  """Writes JSON through a temporary file and a rename: a reader never sees half of it."""
  files.atomic_write(path, json.dumps(value, indent=1))


def read_status(run_dir: str) -> dict | None:
  status = read_json(os.path.join(run_dir, STATUS))
  return status if isinstance(status, dict) else None


def run_state(run_dir: str) -> str:
  """missing (never started) | running (or interrupted: see `is_locked`) | completed | diverged |
  failed."""
  status = read_status(run_dir)
  if status is None:
    return "missing"
  state = status.get("status")
  return state if state in ("running", "completed", "diverged", "failed") else "failed"


def last_metrics(run_dir: str) -> dict:
  """The last whole line of metrics.jsonl ({} if none)."""
  last = {}
  try:
    with open(os.path.join(run_dir, METRICS)) as f:
      for line in f:
        line = line.strip()
        if line:
          try:
            last = json.loads(line)
          except ValueError:
            pass  # a line cut short by a crash
  except OSError:
    pass
  return last


def read_outcome(run_dir: str) -> tuple[str, float | None, float | None]:
  """(run_state, final test accuracy, final training loss): the metrics of a completed run, from
  status.json over the last metrics.jsonl line (None where absent)."""
  state = run_state(run_dir)
  if state != "completed":
    return state, None, None
  status = read_status(run_dir) or {}
  final = {**last_metrics(run_dir), **{k: v for k, v in status.items() if v is not None}}
  return state, final.get("test_acc"), final.get("train_loss")


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
