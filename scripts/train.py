r"""Trains one model: python scripts/train.py --config=configs/cifar10_wrn.py:16-4 --workdir=DIR.

Re-running the same command resumes from the last checkpoint; a finished run is not redone.
Exit status: 0 for a completed or diverged run (divergence is a result), 1 for a failed run,
2 for bad input (config, data), reported as one line.
"""

import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from skipinit.errors import SkipInitError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file and argument: FILE.py:ARG.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (created; resumed if it exists).")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries:
  """Drops INFO chatter of orbax (dozens of lines per checkpoint) from absl's log."""

  def filter(self, record):
    return record.levelno > 20 or "orbax" not in record.pathname


def main(argv):
  del argv
  logging.get_absl_handler().addFilter(_QuietLibraries())
  from skipinit.train import train_and_evaluate  # after flag parsing: imports JAX
  try:
    config = _CONFIG.value
    config.train  # the file is loaded lazily: a missing or broken one fails on first access
  except (OSError, SkipInitError, ValueError, TypeError) as e:
    print(f"error: {_config_error_line(e)}", file=sys.stderr)
    return 2
  try:
    status = train_and_evaluate(config, _WORKDIR.value)
  except SkipInitError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  logging.info("final status: %s", status)
  print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                 for k, v in status.items()))
  return 0


def _config_error_line(e: Exception) -> str:
  # ml_collections re-raises a get_config error as text (traceback included), not as a cause.
  ours = re.findall(r"^skipinit\.errors\.\w+: (.*)$", str(e), flags=re.MULTILINE)
  if ours:
    return ours[-1]
  lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()]
  return " ".join(lines[:1] + lines[-1:]) if len(lines) > 1 else (lines or [repr(e)])[0]


def parse_flags_or_exit(argv):
  """absl's flag parsing, with a bad config (raised inside the --config flag) as one line, exit 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {_config_error_line(e)}", file=sys.stderr)
    sys.exit(2)


def run():
  app.run(main, flags_parser=parse_flags_or_exit)


if __name__ == "__main__":
  run()
