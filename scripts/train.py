r"""Trains one model: python scripts/train.py --config=configs/cifar10_wrn.py:16-4 --workdir=DIR.

  --config=FILE.py[:ARG]   a config file and its argument: comma-separated presets and key=value
                           pairs, e.g. configs/cifar10_wrn.py:100-2,normalizer=skipinit,lr=0.05
                           (presets of cifar10_wrn.py: N-K, smoke, sample; of imagenet_resnet.py:
                           50, 101, ..., smoke); a key may be short (lr) when unambiguous
  --config.SECTION.KEY=V   overrides after the argument, e.g. --config.train.lr=0.05
                           (sections: model, data, train)
  --workdir=DIR            the run directory: created, or resumed if it holds this run
  --list_keys              print every config key with its value and meaning, and exit
                           (with --config: that config's values; without: the defaults)

Data (CIFAR-10): data.source=folder with data.path at a class-folder tree or .tar.gz of one (the
project's cifar10-jpeg.tar.gz) or at the official python archive cifar-10-python.tar.gz /
cifar-10-batches-py; data.source=tfds (the default) needs TensorFlow (pip install -e .[imagenet]).
A BatchNorm ghost batch larger than train.batch_size is the whole batch (with a warning).

Re-running the same command resumes from the last checkpoint; a finished run is not redone.
Exit status: 0 for a completed or diverged run (divergence is a result) and for a run stopped by
SIGTERM at a checkpoint (status.json says "running", "preempted": re-run to resume), 130 for one
that Ctrl-C stopped there the same way (a second Ctrl-C aborts at once), 1 for a failed run, 2 for
bad input (config, data, run directory), reported as one line.
"""

import difflib
import os
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from skipinit import config as cfg_lib
from skipinit.errors import ConfigError, SkipInitError

_CONFIG = None  # --config's holder: defined by parse_flags_or_exit, with the config file loaded
_CONFIG_GIVEN = False
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (created; resumed if it exists).")
_LIST_KEYS = flags.DEFINE_bool("list_keys", False, "Print every config key with its value and "
                               "meaning (of --config if given, else the defaults), and exit.")


class _QuietLibraries:
  """Drops INFO chatter of orbax (dozens of lines per checkpoint) from absl's log."""

  def filter(self, record):
    return record.levelno > 20 or "orbax" not in record.pathname


def _stop_with_the_sweep() -> None:
  """A sweep's trainer gets SIGTERM when the sweep process dies, even by SIGKILL (Linux).

  It then checkpoints and exits, as when the sweep stops it, instead of training on alone and
  holding its run's lock, so that a relaunch would skip the run as busy. The sweep names itself
  in SKIPINIT_SWEEP_PID (for this process only: it is not passed on); a trainer whose parent is
  not that process (the sweep already gone) exits at once, saying so.
  """
  parent = os.environ.pop("SKIPINIT_SWEEP_PID", "")
  if not parent.isdigit() or not sys.platform.startswith("linux"):
    return
  import ctypes  # prctl has no binding in the standard library
  pr_set_pdeathsig = 1
  ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
  if os.getppid() != int(parent):
    print(f"error: started by sweep process {parent}, which is no longer its parent: not training "
          "without it (unset SKIPINIT_SWEEP_PID to train by hand)", file=sys.stderr)
    sys.exit(2)


def main(argv):
  _stop_with_the_sweep()
  if len(argv) > 1:
    print(f"error: unexpected arguments {' '.join(argv[1:])!r}: config values go after the "
          "config file's ':' joined by commas (--config=configs/cifar10_wrn.py:smoke,lr=0.1) or "
          "as --config.train.lr=0.1", file=sys.stderr)
    return 2
  if not _LIST_KEYS.value and not (_CONFIG_GIVEN and _WORKDIR.value):
    print("error: --config and --workdir are required, e.g. --config=configs/cifar10_wrn.py:sample "
          "--workdir=runs/quickstart (--help explains them; --list_keys lists the config keys)",
          file=sys.stderr)
    return 2
  logging.get_absl_handler().addFilter(_QuietLibraries())
  config = _CONFIG.value
  if _LIST_KEYS.value:
    print(cfg_lib.describe_keys(config))
    return 0
  from skipinit.train import train_and_evaluate  # after flag parsing: imports JAX
  try:
    status = train_and_evaluate(config, _WORKDIR.value)  # (it applies cfg_lib.fit_ghost_batch)
  except SkipInitError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  logging.info("final status: %s", status)
  print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                 for k, v in status.items()))
  return 130 if status.get("interrupted") else 0  # Ctrl-C: checkpointed, but not done


def load_config(spec: str | None):
  """The config of --config=FILE[:ARG] (none: the defaults). A config file is user input: whatever
  it raises is bad input, a ConfigError."""
  path, colon, arg = (spec or "cifar10_wrn").partition(":")
  try:
    return cfg_lib.load_config_file(path, arg if colon else None)
  except SkipInitError:
    raise
  except Exception as e:
    raise ConfigError(f"{type(e).__name__} in the config: {e}") from None


def _check_overrides(config, argv) -> None:
  """Each --config.SECTION.KEY=V names a key (ml_collections would raise a traceback's text).

  Not cfg_lib.resolve_key: that accepts short keys (lr), which these flags do not.
  """
  for a in argv[1:]:
    path = a[len("--config."):].split("=", 1)[0].split(".") if a.startswith("--config.") else []
    if path and (len(path) != 2 or path[0] not in config):
      name = ".".join(path)
    elif path and path[1] not in config[path[0]]:
      close = difflib.get_close_matches(path[1], list(config[path[0]].keys()), n=1)
      name = path[1] + (f" Did you mean {close[0]} instead of {path[1]} ?" if close else "")
    else:
      continue
    raise ConfigError(f"{a} names no config key ({name}): overrides are "
                      "--config.SECTION.KEY=VALUE with SECTION one of model, data, train")


def parse_flags_or_exit(argv):
  """Loads --config=FILE[:ARG] (the flag then holds its config, to which ml_collections applies
  the --config.SECTION.KEY=V flags), then parses the flags; bad input is one line, exit 2."""
  global _CONFIG, _CONFIG_GIVEN
  spec, rest, args = None, [], iter(argv)
  for a in args:  # (the last --config counts, as for any flag)
    if a == "--config" or a.startswith("--config="):
      spec = a.partition("=")[2] if "=" in a else next(args, "")
    else:
      rest.append(a)
  _CONFIG_GIVEN = spec is not None
  try:
    if spec is not None and (not spec or spec.startswith("-")):
      raise ConfigError("--config needs a config file: --config=FILE.py[:ARG], e.g. "
                        "--config=configs/cifar10_wrn.py:sample")
    config = load_config(spec)
    _check_overrides(config, rest)
    _CONFIG = config_flags.DEFINE_config_dict("config", config, "Config file and argument: "
                                              "FILE.py:ARG.", lock_config=True, sys_argv=rest)
    flags.FLAGS["config"].default_as_str = None  # --help showed the whole default config
    return flags.FLAGS(rest)
  except (SkipInitError, flags.Error) as e:
    print(f"error: {e}", file=sys.stderr)
  except (AttributeError, KeyError) as e:  # what ml_collections raises for an override it cannot set
    print(f"error: a --config.SECTION.KEY=VALUE override failed: {e.args[0] if e.args else e}",
          file=sys.stderr)
  sys.exit(2)


def run():
  app.run(main, flags_parser=parse_flags_or_exit)


if __name__ == "__main__":
  run()
