r"""Expands a sweep into run directories and trains the unfinished ones (PAPER.md sections 4-5).

  python scripts/sweep.py --sweep='configs/sweeps/depth_table.py[:knob=value,...]' --sweep_dir=DIR \
      [--data=/data/cifar10-jpeg.tar.gz] [--executor=local|gpus|slurm] [--dry_run]

The sweep argument (after ':'): knob=value pairs, comma-separated; a list value is a;b;c (QUOTE
the flag: in a shell ';' ends the command) and lo:hi an inclusive range of exponents; preset=NAME
takes a preset of the base config (preset=smoke: tiny runs on synthetic data); a full config key
(train.eval_every_epochs=2) is set in every run. --data=PATH: the data set's files for every run
(data.source=folder,data.path=PATH); without it the runs use data.source=tfds, which needs
TensorFlow. --list prints every sweep's knobs with their defaults (also below).

Re-running the same command skips completed and diverged runs, re-runs failed or interrupted ones
(they resume from their checkpoints) and never trains a run another worker holds. A launch in
which no run started does not pin the directory to its sweep. Executors:
  local   one run after another on this machine (all its devices)
  gpus    one worker per GPU (--gpus=0,1,2,3; default: all visible); "0,0" packs two runs per GPU;
          on a machine without a GPU, as many workers on the CPU (one without --gpus)
  slurm   one SLURM job-array task per run, through submitit (pip install -e .[slurm]);
          --slurm_params=slurm_partition=gpu,timeout_min=1440,gpus_per_node=1
lr_search=ladder in the sweep argument (any sweep with lr_exps; lr_patience=2, lr_climb) trains
only the learning rates the search for each table cell's best needs, in waves; a relaunch
recomputes the search from the run directories, and --dry_run lists the runs it would train
next and why. With --executor=slurm each launch submits the current wave (--wait: wave after wave).
The trainers of a sweep share XLA's compilation cache in DIR/.jax_cache (JAX_COMPILATION_CACHE_DIR
set in the environment wins).
"""

import os
import sys

from absl import app, flags

from skipinit import sweep as sweep_lib
from skipinit.cli import parse_flags_or_exit
from skipinit.errors import SkipInitError

FLAGS = flags.FLAGS
flags.DEFINE_string("sweep", None, "Sweep file and its knobs: configs/sweeps/NAME.py[:k=v,...].")
flags.DEFINE_string("sweep_dir", None, "Directory of the sweep: sweep.json and one directory per run.")
flags.DEFINE_string("data", "", "The data set's files for every run: a CIFAR-10 class-folder tree "
                    "or .tar.gz (cifar10-jpeg.tar.gz), cifar-10-python.tar.gz or "
                    "cifar-10-batches-py, an ImageNet folder. Default: the config's data.source "
                    "(tfds: needs TensorFlow).")
flags.DEFINE_bool("list", False, "Print every sweep in configs/sweeps with its knobs, their "
                  "defaults and meanings, and what it needs; then exit.")
flags.DEFINE_enum("executor", "local", sweep_lib.EXECUTORS, "Where the runs train.")
flags.DEFINE_bool("dry_run", False, "List the runs and what a launch would do; train nothing.")
flags.DEFINE_list("gpus", None, "--executor=gpus: GPU ids, one worker each (repeat an id to share).")
flags.DEFINE_string("filter", "", "Only runs whose name matches this regular expression.")
flags.DEFINE_list("slurm_params", [], "--executor=slurm: key=value parameters of submitit's "
                  "AutoExecutor.update_parameters (slurm_partition, slurm_account, timeout_min, "
                  "gpus_per_node, cpus_per_task, slurm_array_parallelism, ...).")
flags.DEFINE_bool("wait", False, "--executor=slurm: wait for the submitted jobs; with "
                  "lr_search=ladder, submit wave after wave until the search has ended (the local "
                  "executors always do).")
flags.DEFINE_string("slurm_cluster", None, "submitit cluster; 'local' or 'debug' runs the job array "
                    "here (for testing). Default: slurm.")

# --help shows the sweeps too (generated from the sweep files, so it cannot go stale).
if any(a in ("--help", "-h", "--helpshort", "-?") for a in sys.argv[1:]):
  __doc__ += "\nThe sweeps (--list prints this alone):\n\n" + (
      sweep_lib.spec.describe_sweeps().replace("%", "%%") + "\n")


def _slurm_params(items):
  params = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep:
      raise sweep_lib.SweepError(f"--slurm_params item {item!r} is not key=value")
    # submitit's parameters: numbers as numbers, anything else as given (mail_type=NONE is a word,
    # which values.parse would read as None).
    for kind in (int, float):
      try:
        value = kind(value)
        break
      except ValueError:
        pass
    params[key.strip()] = value
  return params


def main(argv):
  if len(argv) > 1:
    print(f"error: unexpected arguments {' '.join(argv[1:])!r}: a list value in the sweep "
          "argument (a;b;c) needs the flag quoted, --sweep='FILE.py:lr_exps=-4;-2'",
          file=sys.stderr)
    return 2
  if FLAGS.list:
    print(sweep_lib.spec.describe_sweeps())
    return 0
  if not FLAGS.sweep or not FLAGS.sweep_dir:
    print("error: --sweep and --sweep_dir are required, e.g. "
          "--sweep=configs/sweeps/depth_table.py:preset=smoke --sweep_dir=runs/smoke (--list "
          "shows the sweeps and their knobs)", file=sys.stderr)
    return 2
  try:
    with sweep_lib.executors.sigterm_stops_trainers():
      return sweep_lib.launch(
          FLAGS.sweep, FLAGS.sweep_dir, executor=FLAGS.executor, dry_run=FLAGS.dry_run,
          gpus=FLAGS.gpus, run_filter=FLAGS.filter, data=FLAGS.data,
          slurm_params=_slurm_params(FLAGS.slurm_params), slurm_cluster=FLAGS.slurm_cluster,
          wait=FLAGS.wait)
  except SkipInitError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except sweep_lib.executors.Terminated:
    print("terminated (SIGTERM): the trainers were stopped (each checkpoints at its next "
          "boundary; one not done within 30 s was killed and resumes from its last checkpoint); "
          "launch the same command again to resume", file=sys.stderr)
    return 143
  except KeyboardInterrupt:
    print("interrupted: launch the same command again to resume", file=sys.stderr)
    return 130
  except BrokenPipeError:  # `--dry_run | head`: the reader left; not an error
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags_or_exit)
