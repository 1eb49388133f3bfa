"""The run directory (DESIGN.md "Contracts"): its files, its status words, and how both are read and
written, in one place for the trainer, the sweeps and the tables.

  config.json    the resolved config, written before training (a resume with another is refused)
  data.json      what the run trains on (a resume on other data is refused)
  metrics.jsonl  one JSON object per eval
  status.json    {"status": running | completed | diverged | failed, notes, metrics} (`write_status`)
  checkpoints/   orbax; tensorboard/: events
  .lock, train.log  a sweep's: its worker's lock (skipinit.sweep.lock) and the trainer's output

Reading never raises on a run being written: `read_json` is None for a file that is missing or not
whole JSON, and a caller that cannot go on without the file says so. Writing is atomic (a temporary
file, then a rename), and on the chief process only, so that a preempted run never leaves half a
status or config behind.
"""

import enum
import json
import os
import sys

from absl import logging

from skipinit import config as cfg_lib, files
from skipinit.errors import ConfigError, DataError

CONFIG, DATA, METRICS, STATUS, CHECKPOINTS = (
    "config.json", "data.json", "metrics.jsonl", "status.json", "checkpoints")
LOCK, LOG = ".lock", "train.log"


class Status(enum.StrEnum):
  """status.json's "status" (a str: written and compared as the word itself)."""
  RUNNING = "running"
  COMPLETED = "completed"
  DIVERGED = "diverged"  # a result, not a failure (PAPER.md section 4)
  FAILED = "failed"


# Neither is ever re-run: divergence is a result.
FINISHED = (Status.COMPLETED, Status.DIVERGED)
MISSING = "missing"  # run_state of a directory without status.json: never started


def _is_chief() -> bool:
  # A run has several processes only once jax.distributed is initialized (sharding.py). Asking
  # jax.process_index() before would start jax's backends in a process that never computes (the
  # sweep launcher: on a GPU host, it would take GPU memory from the trainers it starts).
  jax = sys.modules.get("jax")
  return jax is None or not jax.distributed.is_initialized() or jax.process_index() == 0


def read_json(path: str):
  """The parsed file, or None if it is missing, unreadable or not whole JSON."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def write_json(path: str, value, indent: int = 2) -> None:
  """Atomically, on the chief process."""
  if _is_chief():
    files.atomic_write(path, json.dumps(value, indent=indent, sort_keys=True))


def read_status(run_dir: str) -> dict | None:
  status = read_json(os.path.join(run_dir, STATUS))
  return status if isinstance(status, dict) else None


def write_status(run_dir: str, status: Status, *, preempted: bool = False,
                 interrupted: bool = False, refused: bool = False, **fields) -> dict:
  """status.json: the status, its notes (written only when true), and `fields` (step, epoch,
  total_steps, diverged_step, error, the final metrics). Notes: preempted, a running run stopped
  at a checkpoint by SIGTERM or Ctrl-C (a relaunch resumes it); interrupted, by Ctrl-C (train.py
  exits 130); refused, a failed run whose trainer refused its input and wrote nothing (the sweep's).
  """
  notes = {"preempted": preempted, "interrupted": interrupted, "refused": refused}
  record = {"status": str(status), **{k: True for k, v in notes.items() if v}, **fields}
  write_json(os.path.join(run_dir, STATUS), record)
  return record


def run_state(run_dir: str) -> str:
  """MISSING (never started) | a Status (an unknown word counts as failed)."""
  status = read_status(run_dir)
  if status is None:
    return MISSING
  word = status.get("status")
  return Status(word) if word in Status.__members__.values() else Status.FAILED


def read_metrics(run_dir: str) -> list[dict]:
  """metrics.jsonl's records; a line cut short by a crash or preemption is skipped."""
  records = []
  try:
    with open(os.path.join(run_dir, METRICS)) as f:
      for line in f:
        try:
          record = json.loads(line)
        except ValueError:
          continue
        if isinstance(record, dict):
          records.append(record)
  except OSError:
    pass
  return records


def read_outcome(run_dir: str) -> tuple[str, float | None, float | None]:
  """(run_state, final test accuracy, final training loss): the metrics of a completed run, from
  status.json over the last metrics.jsonl record (None where absent)."""
  state = run_state(run_dir)
  if state != Status.COMPLETED:
    return state, None, None
  status = read_status(run_dir) or {}
  last = (read_metrics(run_dir) or [{}])[-1]
  final = {**last, **{k: v for k, v in status.items() if v is not None}}
  return state, final.get("test_acc"), final.get("train_loss")


def _flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flat(v, key + "."))
    else:
      out[key] = list(v) if isinstance(v, tuple) else v
  return out


def read_config(run_dir: str) -> dict | None:
  """config.json flattened to dotted keys ("model.depth"), or None."""
  config = read_json(os.path.join(run_dir, CONFIG))
  return _flat(config) if isinstance(config, dict) else None


def write_config(run_dir: str, config) -> None:
  write_json(os.path.join(run_dir, CONFIG), json.loads(cfg_lib.to_json(config)))


def check_data(run_dir: str, fingerprint: dict) -> None:
  """Raises DataError if the run in `run_dir` was trained on other data than `fingerprint` says.

  data.path may change between a run and its resume (the data set moved), but the data must
  not: a resume on, say, a 400-image sample instead of the full set would redefine the epochs
  and the schedule in the middle of a run. (A run made before data.json: not checked.) Only the
  keys both sides have are compared (data.json gained keys over time), except "eval_examples":
  a run evaluated on a subset of the test set is never continued on the whole set, or back.
  """
  old = read_json(os.path.join(run_dir, DATA))
  if not isinstance(old, dict):
    return
  keys = [k for k in fingerprint if k in old] + sorted(
      {"eval_examples"} & (set(old) ^ set(fingerprint)))
  diff = [f"{k} {old.get(k)!r} -> {fingerprint.get(k)!r}" for k in keys
          if old.get(k) != fingerprint.get(k)]
  if diff:
    raise DataError(f"{run_dir} was trained on other data ({'; '.join(diff)}): point data.path "
                    "at the data set it was started on, or use a new --workdir")


def write_data(run_dir: str, fingerprint: dict) -> None:
  write_json(os.path.join(run_dir, DATA), fingerprint)


def keep_legacy_values(run_dir: str, config) -> None:
  """Sets in `config` the LEGACY_VALUES of the keys `run_dir`'s config.json predates (logged).

  A run resumes as it trained: a key added since, whose default is not what the run did, takes
  the run's value rather than the default (which check_config would otherwise accept), so that
  relaunching a sweep or a run made before the key continues it unchanged.
  """
  old = read_config(run_dir)
  if old is None:
    return  # none, or unreadable: check_config reports it
  for key, value_of in cfg_lib.LEGACY_VALUES.items():
    section, name = key.split(".")
    if key in old or section not in config or name not in config[section]:
      continue
    value = value_of(old)
    if config[section][name] != value:
      logging.warning("%s predates %s: it resumes with %s=%s, as it trained (for %s=%s, use a "
                      "new --workdir)", run_dir, key, key, value, key, config[section][name])
      config[section][name] = value


def check_config(run_dir: str, config) -> None:
  """Raises ConfigError if `run_dir` already holds a run made with a different config.

  A different config is an error rather than an overwrite: the checkpoints there belong to the
  old config and must not be mixed with the new one. Keys in RESUMABLE_KEYS may differ, and a key
  the old config.json lacks (one added to the framework since) counts as its default value, or as
  its LEGACY_VALUES value where the default is not what the run did, so that adding a key never
  strands the runs made before it nor changes them.
  """
  path = os.path.join(run_dir, CONFIG)
  if not os.path.exists(path):
    return
  old = read_config(run_dir)
  if old is None:
    raise ConfigError(f"{path} is not valid JSON: repair or remove it, or use a new --workdir")
  new = _flat(json.loads(cfg_lib.to_json(config)))
  defaults = _flat(json.loads(cfg_lib.to_json(cfg_lib.base_config())))
  legacy = cfg_lib.LEGACY_VALUES
  was = lambda k: old[k] if k in old else (legacy[k](old) if k in legacy else defaults.get(k))
  # A key the run predates shows as None, or as its legacy value where that is not the default.
  shown = lambda k: old.get(k, legacy[k](old) if k in legacy else None)
  diff = [f"{k}: {shown(k)!r} -> {v!r}" for k, v in new.items()
          if k not in cfg_lib.RESUMABLE_KEYS and was(k) != v]
  if diff:
    raise ConfigError(f"workdir {run_dir} holds a run with a different config ({'; '.join(diff[:5])}"
                      f"{'; ...' if len(diff) > 5 else ''}): use a new --workdir")


def check_writable(run_dir: str) -> None:
  """Raises ConfigError, before anything is built, if `run_dir` cannot be created or written."""
  path = os.path.abspath(run_dir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f"--workdir={run_dir} exists and is not a directory")
  existing = path
  while not os.path.exists(existing):  # the nearest ancestor that exists is where mkdir writes
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ConfigError(f"--workdir={run_dir} cannot be created: {existing} is not a directory")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise ConfigError(f"--workdir={run_dir} is not writable ({existing}: permission denied or a "
                      "read-only file system): choose another --workdir")


class MetricsLog:
  """metrics.jsonl (one JSON object per eval) plus TensorBoard scalars, on the chief process."""

  def __init__(self, run_dir: str, resume_step: int):
    self.path = os.path.join(run_dir, METRICS)
    # Drop the records written after the checkpoint we resume from, so that none appears twice;
    # wall_time continues from the last one kept.
    keep = [r for r in read_metrics(run_dir) if isinstance(r.get("step"), (int, float))
            and r["step"] <= resume_step]
    self.resumed_wall_time = float(keep[-1].get("wall_time", 0.0)) if keep else 0.0
    if os.path.exists(self.path) and _is_chief():
      files.atomic_write(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))
    self._tb = None
    if _is_chief():
      try:
        from tensorboardX import SummaryWriter  # pure Python: TensorBoard logs without TensorFlow
        self._tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))
      except ImportError:
        logging.warning("tensorboardX is not installed: no TensorBoard events are written")

  def write(self, record: dict) -> None:
    if not _is_chief():
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record, sort_keys=True) + "\n")
    if self._tb is not None:
      for k, v in record.items():
        if k != "step" and isinstance(v, (int, float)):
          self._tb.add_scalar(k, v, record["step"])
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
