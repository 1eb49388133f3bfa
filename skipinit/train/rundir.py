"""The run directory of DESIGN.md: config.json, metrics.jsonl, status.json, TensorBoard events.

Tables and sweeps read only these files. Writes are atomic (write to a temporary file, then
rename) so a preempted run never leaves half a status or config behind.
"""

import json
import os

import jax
from absl import logging

from skipinit import config as cfg_lib, files
from skipinit.errors import ConfigError, DataError

RESUMABLE_KEYS = cfg_lib.RESUMABLE_KEYS
LEGACY_VALUES = cfg_lib.LEGACY_VALUES


def _is_chief() -> bool:
  return jax.process_index() == 0


def atomic_write(path: str, text: str) -> None:
  if not _is_chief():
    return
  files.atomic_write(path, text)


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


def read_status(workdir: str) -> dict | None:
  path = os.path.join(workdir, "status.json")
  try:
    return read_json(path)
  except (OSError, json.JSONDecodeError):  # missing, or the workdir is no directory
    return None


def write_status(workdir: str, status: str, **fields) -> dict:
  record = {"status": status, **fields}
  atomic_write(os.path.join(workdir, "status.json"), json.dumps(record, indent=2, sort_keys=True))
  return record


def _flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flat(v, key + "."))
    else:
      out[key] = list(v) if isinstance(v, tuple) else v
  return out


DATA = "data.json"


def check_data(workdir: str, fingerprint: dict) -> None:
  """Raises DataError if the run in `workdir` was trained on other data than `fingerprint` says.

  data.path may change between a run and its resume (the data set moved), but the data must
  not: a resume on, say, a 400-image sample instead of the full set would redefine the epochs
  and the schedule in the middle of a run. (A run made before data.json: not checked.) Only the
  keys both sides have are compared (data.json gained keys over time), except "eval_examples":
  a run evaluated on a subset of the test set is never continued on the whole set, or back.
  """
  try:
    old = read_json(os.path.join(workdir, DATA))
  except (OSError, json.JSONDecodeError):
    return
  if not isinstance(old, dict):
    return
  keys = [k for k in fingerprint if k in old] + sorted(
      {"eval_examples"} & (set(old) ^ set(fingerprint)))
  diff = [f"{k} {old.get(k)!r} -> {fingerprint.get(k)!r}" for k in keys
          if old.get(k) != fingerprint.get(k)]
  if diff:
    raise DataError(f"{workdir} was trained on other data ({'; '.join(diff)}): point data.path "
                    "at the data set it was started on, or use a new --workdir")


def write_data(workdir: str, fingerprint: dict) -> None:
  atomic_write(os.path.join(workdir, DATA), json.dumps(fingerprint, indent=2, sort_keys=True))


def keep_legacy_values(workdir: str, config) -> None:
  """Sets in `config` the LEGACY_VALUES of the keys `workdir`'s config.json predates (logged).

  A run resumes as it trained: a key added since, whose default is not what the run did, takes
  the run's value rather than the default (which check_config would otherwise accept), so that
  relaunching a sweep or a run made before the key continues it unchanged.
  """
  try:
    old = _flat(read_json(os.path.join(workdir, "config.json")))
  except (OSError, ValueError, AttributeError):
    return  # none, or unreadable: check_config reports it
  for key, value_of in LEGACY_VALUES.items():
    section, name = key.split(".")
    if key in old or section not in config or name not in config[section]:
      continue
    value = value_of(old)
    if config[section][name] != value:
      logging.warning("%s predates %s: it resumes with %s=%s, as it trained (for %s=%s, use a "
                      "new --workdir)", workdir, key, key, value, key, config[section][name])
      config[section][name] = value


def check_config(workdir: str, config) -> None:
  """Raises ConfigError if `workdir` already holds a run made with a different config.

  A different config is an error rather than an overwrite: the checkpoints there belong to the
  old config and must not be mixed with the new one. Keys in RESUMABLE_KEYS may differ, and a key
  the old config.json lacks (one added to the framework since) counts as its default value, or as
  its LEGACY_VALUES value where the default is not what the run did, so that adding a key never
  strands the runs made before it nor changes them.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  new = _flat(json.loads(cfg_lib.to_json(config)))
  try:
    old = _flat(read_json(path))
  except json.JSONDecodeError:
    raise ConfigError(f"{path} is not valid JSON: repair or remove it, or use a new --workdir") from None
  defaults = _flat(json.loads(cfg_lib.to_json(cfg_lib.base_config())))
  was = lambda k: old[k] if k in old else (
      LEGACY_VALUES[k](old) if k in LEGACY_VALUES else defaults.get(k))
  # A key the run predates shows as None, or as its legacy value where that is not the default.
  shown = lambda k: old.get(k, LEGACY_VALUES[k](old) if k in LEGACY_VALUES else None)
  diff = [f"{k}: {shown(k)!r} -> {v!r}" for k, v in new.items()
          if k not in RESUMABLE_KEYS and was(k) != v]
  if diff:
    raise ConfigError(f"workdir {workdir} holds a run with a different config ({'; '.join(diff[:5])}"
                      f"{'; ...' if len(diff) > 5 else ''}): use a new --workdir")


def check_writable(workdir: str) -> None:
  """Raises ConfigError, before anything is built, if `workdir` cannot be created or written."""
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f"--workdir={workdir} exists and is not a directory")
  existing = path
  while not os.path.exists(existing):  # the nearest ancestor that exists is where mkdir writes
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ConfigError(f"--workdir={workdir} cannot be created: {existing} is not a directory")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise ConfigError(f"--workdir={workdir} is not writable ({existing}: permission denied or a "
                      "read-only file system): choose another --workdir")


def write_config(workdir: str, config) -> None:
  atomic_write(os.path.join(workdir, "config.json"), cfg_lib.to_json(config))


class MetricsLog:
  """metrics.jsonl (one JSON object per eval) plus TensorBoard scalars, on the chief process."""

  def __init__(self, workdir: str, resume_step: int):
    self.path = os.path.join(workdir, "metrics.jsonl")
    # wall_time of the last record kept: a resumed run's wall_time continues from it.
    self.resumed_wall_time = 0.0
    self._truncate_after(resume_step)
    self._tb = None
    if _is_chief():
      try:
        from tensorboardX import SummaryWriter  # pure Python: TensorBoard logs without TensorFlow
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:
        logging.warning("tensorboardX is not installed: no TensorBoard events are written")

  def _truncate_after(self, step: int) -> None:
    """Drops records written after the checkpoint we resume from, so none appears twice."""
    if not os.path.exists(self.path):
      return
    keep = []
    with open(self.path) as f:
      for line in f:
        try:
          record = json.loads(line)
          if record["step"] <= step:
            keep.append(line if line.endswith("\n") else line + "\n")
            self.resumed_wall_time = float(record.get("wall_time", self.resumed_wall_time))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
          pass  # a line cut by preemption
    atomic_write(self.path, "".join(keep))

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


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
