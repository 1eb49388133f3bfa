"""SLURM executor: one job-array task per run, submitted with submitit (`pip install -e .[slurm]`).

Each task calls `run_one`, so the per-run lock and the skip rules are the same as on a workstation:
a task whose run another task already finished exits at once. Tasks are checkpointable: when SLURM
pre-empts or times one out, submitit requeues it and the trainer resumes from its last checkpoint.
This module imports submitit at the top; `submit` imports it lazily for the error message.
"""

import os
import shutil
from typing import Sequence

from skipinit.sweep.executors import run_one
from skipinit.sweep.spec import Run, SweepError

try:
  import submitit
except ImportError:  # reported by `submit`, not at import: the rest of the package works without it
  submitit = None

DEFAULTS = {"timeout_min": 24 * 60, "gpus_per_node": 1, "cpus_per_task": 8, "tasks_per_node": 1,
            "slurm_array_parallelism": 64}


class RunTask(submitit.helpers.Checkpointable if submitit else object):
  """A picklable callable that trains one run of a sweep on the node it lands on."""

  def __init__(self, sweep_dir: str, config: str, config_arg: str, train_script: str | None = None):
    self.sweep_dir, self.config, self.config_arg = sweep_dir, config, config_arg
    self.train_script = train_script

  def __call__(self, name: str, method: str, overrides: dict) -> str:
    job = os.environ.get("SLURM_ARRAY_JOB_ID", "") + "_" + os.environ.get("SLURM_ARRAY_TASK_ID", "")
    return run_one(self.sweep_dir, Run(name, method, overrides), self.config, self.config_arg,
                   train_script=self.train_script, worker=f"slurm{job}")


def check_available(cluster: str | None = None) -> None:
  """Raises SweepError unless submitit, and (for the real cluster) SLURM's sbatch, are here."""
  if submitit is None:
    raise SweepError("--executor=slurm needs submitit: pip install -e .[slurm]")
  if cluster is None and shutil.which("sbatch") is None:
    raise SweepError("--executor=slurm: no SLURM here (sbatch is not on PATH); use "
                     "--executor=local or --executor=gpus")


def submit(sweep_dir: str, runs: Sequence[Run], config: str, config_arg: str, params: dict,
           cluster: str | None = None, train_script: str | None = None, job_name: str = "sweep"):
  """Submits the runs as one job array; returns the submitit jobs.

  `params` go to `AutoExecutor.update_parameters` on top of `DEFAULTS` (e.g. slurm_partition,
  slurm_account, timeout_min, gpus_per_node). `cluster="local"` or `"debug"` runs the array on this
  machine through submitit, for testing; then this call waits for the jobs.
  """
  check_available(cluster)
  folder = os.path.join(os.path.abspath(sweep_dir), "slurm", "%j")
  executor = submitit.AutoExecutor(folder=folder, cluster=cluster or "slurm")
  merged = {**DEFAULTS, **params}
  if cluster in ("local", "debug"):
    merged = {k: v for k, v in merged.items() if not k.startswith("slurm_")}
  try:
    executor.update_parameters(name=job_name, **merged)
  except (TypeError, ValueError) as e:
    raise SweepError(f"--slurm_params: {e}") from None
  task = RunTask(os.path.abspath(sweep_dir), config, config_arg, train_script)
  jobs = executor.map_array(task, [r.name for r in runs], [r.method for r in runs],
                            [r.overrides for r in runs])
  if cluster in ("local", "debug"):
    for job in jobs:
      job.result()
  return jobs
