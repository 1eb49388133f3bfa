r"""Expands a sweep into run directories and trains the unfinished ones (PAPER.md sections 4-5).

  python scripts/sweep.py --sweep=configs/sweeps/depth_table.py[:knobs] --sweep_dir=DIR \
      [--executor=local|gpus|slurm] [--dry_run]

Re-running the same command skips completed and diverged runs, re-runs failed or interrupted ones
(they resume from their checkpoints) and never trains a run another worker holds. Executors:
  local   one run after another on this machine (all its devices)
  gpus    one worker per GPU (--gpus=0,1,2,3; default: all visible); "0,0" packs two runs per GPU
  slurm   one SLURM job-array task per run, through submitit (pip install -e .[slurm]);
          --slurm_params=slurm_partition=gpu,timeout_min=1440,gpus_per_node=1
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
flags.DEFINE_enum("executor", "local", sweep_lib.EXECUTORS, "Where the runs train.")
flags.DEFINE_bool("dry_run", False, "List the runs and what a launch would do; train nothing.")
flags.DEFINE_list("gpus", None, "--executor=gpus: GPU ids, one worker each (repeat an id to share).")
flags.DEFINE_string("filter", "", "Only runs whose name matches this regular expression.")
flags.DEFINE_list("slurm_params", [], "--executor=slurm: key=value parameters of submitit's "
                  "AutoExecutor.update_parameters (slurm_partition, slurm_account, timeout_min, "
                  "gpus_per_node, cpus_per_task, slurm_array_parallelism, ...).")
flags.DEFINE_string("slurm_cluster", None, "submitit cluster; 'local' or 'debug' runs the job array "
                    "here (for testing). Default: slurm.")
flags.mark_flags_as_required(["sweep", "sweep_dir"])


def _slurm_params(items):
  params = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep:
      raise sweep_lib.SweepError(f"--slurm_params item {item!r} is not key=value")
    for convert in (int, float):
      try:
        value = convert(value)
        break
      except ValueError:
        pass
    params[key.strip()] = value
  return params


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    with sweep_lib.executors.sigterm_stops_trainers():
      return sweep_lib.launch(
          FLAGS.sweep, FLAGS.sweep_dir, executor=FLAGS.executor, dry_run=FLAGS.dry_run,
          gpus=FLAGS.gpus, run_filter=FLAGS.filter,
          slurm_params=_slurm_params(FLAGS.slurm_params), slurm_cluster=FLAGS.slurm_cluster)
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
