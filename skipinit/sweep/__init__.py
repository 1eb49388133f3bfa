"""Sweeps: expand a sweep definition into run directories and train them (PAPER.md sections 4-5).

  spec        sweep files -> runs with deterministic names; the sweep directory's manifest
  rundir      a run directory's state (status.json) and its per-run lock
  executors   local sequential, local parallel (one run per GPU); `run_one` does the skip rules
  slurm       SLURM job arrays through submitit (optional dependency)
  methods     the variants the tables compare, as config overrides

`launch` is what scripts/sweep.py calls.
"""

import os
import re
from typing import Callable, Sequence

from skipinit.sweep import executors, rundir, spec
from skipinit.sweep.spec import (Run, SweepError, expand, load_sweep, make_sweep,
                                 powers_of_two)

EXECUTORS = ("local", "gpus", "slurm")


def _summary(classes: dict) -> str:
  return ", ".join(f"{len(v)} {k}" for k, v in classes.items() if v) or "no runs"


def launch(sweep: str, sweep_dir: str, executor: str = "local", dry_run: bool = False,
           gpus: Sequence[str] | None = None, run_filter: str = "", slurm_params: dict | None = None,
           slurm_cluster: str | None = None, train_script: str | None = None,
           log: Callable[[str], None] = print) -> int:
  """Expands `sweep` ("path.py[:arg]") into `sweep_dir` and trains what is not finished.

  Returns a process exit status: 0 when every selected run is completed or diverged (or the runs
  were submitted to SLURM), 1 when some failed. Raises SweepError for bad input.
  """
  if executor not in EXECUTORS:
    raise SweepError(f"--executor={executor!r} is unknown: use one of {', '.join(EXECUTORS)}")
  definition = load_sweep(sweep)
  runs = expand(definition)
  m = spec.manifest(definition, runs)
  # The executor's needs are checked before the manifest pins the sweep directory.
  gpu_list = None
  if executor == "gpus" and not dry_run:
    gpu_list = list(gpus) if gpus else executors.detect_gpus()
    executors.check_gpus(gpu_list)
  if executor == "slurm" and not dry_run:
    from skipinit.sweep import slurm  # lazily: submitit is an optional dependency
    slurm.check_available(slurm_cluster)
  if run_filter:
    try:
      pattern = re.compile(run_filter)
    except re.error as e:
      raise SweepError(f"--filter={run_filter!r} is not a regular expression: {e}") from None
    runs = [r for r in runs if pattern.search(r.name)]
  classes = executors.classify(sweep_dir, runs)
  todo = executors.pending(classes)
  # Each trainer would refuse missing data, one process per run: say it once, for the runs still
  # to train. Only a warning where they will not train here: a SLURM submit host or a dry run's
  # machine may not see the cluster's disks.
  missing = spec.missing_data(todo)
  if missing and (dry_run or executor == "slurm"):
    log(f"warning: {missing} here")
  elif missing:
    raise SweepError(missing)
  if dry_run:
    spec.check_manifest(sweep_dir, m)  # a dry run never writes, but still says if the dir differs
  else:
    spec.write_manifest(sweep_dir, m)
  log(f"sweep {definition['name']} (table: {definition['table']}) in {sweep_dir}: {len(runs)} "
      f"runs: {_summary(classes)}")
  if dry_run:
    state_of = {r.name: state for state, rs in classes.items() for r in rs}
    for run in runs:
      log(f"  {state_of[run.name]:11s} {run.name}  " +
          " ".join(f"{k}={v}" for k, v in run.overrides.items()))
    if todo:
      cmd = executors.train_command(definition["config"], definition["config_arg"],
                                    os.path.abspath(os.path.join(sweep_dir, todo[0].name)),
                                    todo[0].overrides, train_script)
      log("first command: " + " ".join(cmd))
    return 0
  if not todo:
    log("nothing to do")
    return 0
  config, config_arg = definition["config"], definition["config_arg"]
  if executor == "slurm":
    from skipinit.sweep import slurm  # lazily: submitit is an optional dependency
    jobs = slurm.submit(sweep_dir, todo, config, config_arg, slurm_params or {},
                        cluster=slurm_cluster, train_script=train_script,
                        job_name=definition["name"])
    log(f"submitted {len(todo)} runs as a job array ({jobs[0].job_id if jobs else '-'}); logs in "
        f"{os.path.join(sweep_dir, 'slurm')}; launch the same command again to resubmit failed "
        "runs")
    outcomes = {}
    if slurm_cluster in ("local", "debug"):
      for job in jobs:
        state = job.result()
        outcomes[state] = outcomes.get(state, 0) + 1
  elif executor == "gpus":
    outcomes = executors.run_gpus(sweep_dir, todo, config, config_arg, gpu_list, train_script, log)
  else:
    outcomes = executors.run_local(sweep_dir, todo, config, config_arg, train_script, log)
  if outcomes:
    log("done: " + ", ".join(f"{v} {k}" for k, v in sorted(outcomes.items())))
  busy = len(classes["busy"]) + outcomes.get("busy", 0)
  if busy:
    log(f"{busy} runs were busy and not started: another process holds their lock (a trainer of "
        "an earlier launch still running?); launch again once it has ended")
  refused = outcomes.get("refused", 0)
  if refused:
    log(f"{refused} runs were refused by the trainer (their REFUSED lines above): correct "
        "what the error names, then launch again")
  failed = outcomes.get("failed", 0) + outcomes.get("running", 0)
  if failed:
    log(f"{failed} runs failed or were interrupted: see train.log in their run directories; "
        "launch the same command again to retry them (they resume from their checkpoints)")
  return 1 if failed or refused else 0


__all__ = ["EXECUTORS", "Run", "SweepError", "expand", "launch", "load_sweep", "make_sweep",
           "powers_of_two", "rundir", "executors", "spec"]
