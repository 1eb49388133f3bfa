"""Sweeps: expand a sweep definition into run directories and train them (PAPER.md sections 4-5).

  spec        sweep files -> runs with deterministic names; the sweep directory's manifest
  lock        a run directory's per-run lock (the run directory itself: skipinit.rundir)
  executors   local sequential, local parallel (one run per GPU); `run_one` does the skip rules
  ladder      the learning-rate ladder of one table cell (lr_search=ladder; issue 16)
  search      the ladder over a sweep's runs: what a launch trains next, what a table counts
  slurm       SLURM job arrays through submitit (optional dependency)
  methods     the variants the tables compare, as config overrides

`launch` is what scripts/sweep.py calls.
"""

import collections
import os
import re
import time
from typing import Callable, Sequence

from skipinit.rundir import Status
from skipinit.sweep import executors, search, spec
from skipinit.sweep.spec import (Run, SweepError, expand, load_sweep, make_sweep,
                                 powers_of_two)

EXECUTORS = ("local", "gpus", "slurm")


def with_data(sweep: str, data: str) -> str:
  """`sweep` ("path.py[:arg]") with its runs reading the data set at `data` (sweep.py --data):
  data.source=folder,data.path=DATA appended to the argument, the same runs as when written there."""
  if not data:
    return sweep
  path, _, arg = sweep.partition(":")
  given = [k for k in ("data.source", "data.path") if re.search(rf"(^|,)\s*{re.escape(k)}\s*=", arg)]
  if given:
    raise SweepError(f"--data and {' and '.join(given)} in the sweep argument both say where the "
                     "data is: give one of them")
  if "," in data:
    raise SweepError(f"--data={data!r}: a path with a comma cannot be passed to the trainers' "
                     "config argument; rename or link it")
  return f"{path}:{','.join(filter(None, [arg, f'data.source=folder,data.path={data}']))}"


def launch(sweep: str, sweep_dir: str, executor: str = "local", dry_run: bool = False,
           gpus: Sequence[str] | None = None, run_filter: str = "", slurm_params: dict | None = None,
           slurm_cluster: str | None = None, train_script: str | None = None,
           log: Callable[[str], None] = print, data: str = "", wait: bool = False,
           poll_s: float = 30.0) -> int:
  """Expands `sweep` ("path.py[:arg]") into `sweep_dir` and trains what is not finished.

  `data`: the data set's files for every run (sweep.py --data; see `with_data`). With
  lr_search=ladder (manifest "search"), the runs are those the search needs, in waves
  (`_launch_ladder`). `wait` (SLURM): wait for the submitted jobs; with the ladder, submit wave
  after wave until the search has ended (jobs polled every `poll_s` seconds).
  Returns a process exit status: 0 when every selected run is completed or diverged (or the runs
  were submitted to SLURM), 1 when some failed. Raises SweepError for bad input.
  """
  if executor not in EXECUTORS:
    raise SweepError(f"--executor={executor!r} is unknown: use one of {', '.join(EXECUTORS)}")
  definition = load_sweep(with_data(sweep, data))
  runs = spec.adopt_names(sweep_dir, definition, expand(definition))
  m = spec.manifest(definition, runs)
  # The executor's needs are checked before the manifest pins the sweep directory.
  gpu_list, cpu_workers = None, False
  if executor == "gpus" and not dry_run:
    gpu_list = list(gpus) if gpus else executors.detect_gpus()
    if not executors.has_gpu():
      # CUDA_VISIBLE_DEVICES would pin nothing: run as many workers on the CPU, and say so once.
      gpu_list, cpu_workers = [str(i) for i in range(len(gpus) if gpus else 1)], True
      log(f"no GPU here (nvidia-smi lists none): --executor=gpus trains on the CPU with "
          f"{len(gpu_list)} local worker{'s' if len(gpu_list) > 1 else ''} instead"
          + ("" if gpus else " (--gpus=0,0 gives two)"))
    executors.check_gpus(gpu_list)
  if executor == "slurm" and not dry_run:
    from skipinit.sweep import slurm  # lazily: submitit is an optional dependency
    slurm.check_available(slurm_cluster)
  if run_filter:
    try:
      pattern = re.compile(run_filter)
    except re.error as e:
      raise SweepError(f"--filter={run_filter!r} is not a regular expression: {e}") from None
    all_runs, runs = runs, [r for r in runs if pattern.search(r.name)]
  else:
    all_runs = runs
  classes = executors.classify(sweep_dir, runs)
  todo = classes["failed"] + classes["interrupted"] + classes["new"]
  # Each trainer would refuse missing data (or tfds without TensorFlow), one process per run: say
  # it once, for the runs still to train, before the directory is pinned. Only a warning where
  # they will not train here: a SLURM submit host or a dry run's machine may differ.
  missing = spec.unmet_needs(todo)
  if missing and (dry_run or executor == "slurm"):
    log(f"warning: {missing}" + (" (on this machine)" if executor == "slurm" else
                                  ": a launch here would refuse to start"))
  elif missing:
    raise SweepError(missing)
  replaced = os.path.isfile(os.path.join(sweep_dir, spec.MANIFEST)) and not spec.check_manifest(
      sweep_dir, m)  # a dry run never writes, but still says if the dir differs
  if replaced:
    log(f"{sweep_dir} held another sweep none of whose runs started: "
        + ("a launch replaces it" if dry_run else "replaced by this one"))
  if not dry_run:
    spec.write_manifest(sweep_dir, m)
  summary = ", ".join(f"{len(v)} {k}" for k, v in classes.items() if v) or "no runs"
  log(f"sweep {definition['name']} (table: {definition['table']}) in {sweep_dir}: {len(runs)} "
      f"runs: {summary}")
  settings = spec.search_of(m)
  if settings is not None:
    return _launch_ladder(definition, sweep_dir, all_runs, runs, settings, classes, executor,
                          dry_run, gpu_list, cpu_workers, slurm_params, slurm_cluster,
                          train_script, log, wait, poll_s)
  if dry_run:
    state_of = {r.name: state for state, rs in classes.items() for r in rs}
    for run in runs:
      log(f"  {state_of[run.name]:11s} {run.name}  " +
          " ".join(f"{k}={v}" for k, v in run.overrides.items()))
    if todo:
      log("first command: " + " ".join(executors.train_command(
          sweep_dir, todo[0], definition["config"], definition["config_arg"], train_script)))
    return 0
  if not todo:
    log("nothing to do")
    return 0
  config, config_arg = definition["config"], definition["config_arg"]
  if executor == "slurm":  # (slurm imported above)
    jobs = slurm.submit(sweep_dir, todo, config, config_arg, slurm_params or {},
                        cluster=slurm_cluster, train_script=train_script,
                        job_name=definition["name"])
    log(f"submitted {len(todo)} runs as a job array ({jobs[0].job_id if jobs else '-'}); logs in "
        f"{os.path.join(sweep_dir, 'slurm')}; launch the same command again to resubmit failed "
        "runs")
    outcomes = {}
    if slurm_cluster in ("local", "debug") or wait:
      outcomes = _wait_jobs(jobs, log, poll_s)
  elif executor == "gpus":
    outcomes = executors.run_gpus(sweep_dir, todo, config, config_arg, gpu_list, train_script, log,
                                  cpu=cpu_workers)
  else:
    outcomes = executors.run_local(sweep_dir, todo, config, config_arg, train_script, log)
  return _report(classes, outcomes, log)


def _wait_jobs(jobs, log, poll_s: float) -> dict:
  """Waits for submitit jobs (polling: a job array of a real cluster may queue for hours);
  returns {run state: count}."""
  pending = list(jobs)
  if pending and not all(j.done() for j in pending):
    log(f"waiting for {len(pending)} jobs (polled every {poll_s:g} s)")
  while not all(j.done() for j in pending):
    time.sleep(poll_s)
  outcomes = collections.Counter()
  for job in pending:
    try:
      outcomes[job.result()] += 1
    except Exception:  # a task that died (node failure, timeout): its run is retried next launch
      outcomes[Status.FAILED] += 1
  return outcomes


def _report(classes: dict, outcomes: dict, log, extra_failed: int = 0) -> int:
  """Logs what a launch's trainers did; the launch's exit status."""
  if outcomes:
    log("done: " + ", ".join(f"{v} {k}" for k, v in sorted(outcomes.items())))
  at_start, later = len(classes["busy"]), outcomes.get("busy", 0)
  if at_start + later:
    # Two counts, said apart: "done: N busy" above counts only the runs found busy when their turn came.
    when = (f" ({at_start} at the launch, {later} when their turn came)" if at_start and later
            else "")
    log(f"{at_start + later} runs were busy and not started{when}: another process holds their "
        "lock (a trainer of an earlier launch still running?); launch again once it has ended")
  refused = outcomes.get("refused", 0)
  if refused:
    log(f"{refused} runs were refused by the trainer (their REFUSED lines above): correct "
        "what the error names, then launch again")
  failed = outcomes.get(Status.FAILED, 0) + outcomes.get(Status.RUNNING, 0)
  if failed:
    log(f"{failed} runs failed or were interrupted: see train.log in their run directories; "
        "launch the same command again to retry them (they resume from their checkpoints)")
  return 1 if failed or refused or extra_failed else 0


def _launch_ladder(definition, sweep_dir, all_runs, runs, settings, classes, executor, dry_run,
                   gpu_list, cpu_workers, slurm_params, slurm_cluster, train_script, log, wait,
                   poll_s) -> int:
  """lr_search=ladder: trains, in waves, the runs the search needs (skipinit.sweep.search).

  Local executors ask the search for the next runs whenever a worker is free (speculative ones
  when the search needs fewer than the free workers) until it needs nothing more; SLURM submits
  the runs needed now (with `wait`, wave after wave until the search has ended). The run
  directories are the only state: a relaunch recomputes the same search from them.
  """
  p = search.plan_of_runs(definition["table"], settings, all_runs)
  by_name = {r.name: r for r in all_runs}
  allowed = None if len(runs) == len(all_runs) else frozenset(r.name for r in runs)
  log(f"lr_search=ladder over {len(p.cells)} table cells: patience {settings['lr_patience']}, "
      + ("the upward walk climbs to a divergence" if settings["lr_climb"] else
         "each walk ends after that many worse rates or a divergence"))

  def state(dry=False):
    outcomes = search.read_outcomes(sweep_dir, p)
    decisions, _ = search.decide(p, outcomes)
    need = search.needed(p, decisions, outcomes)
    for key, d in decisions.items():
      n = sum(1 for name in need if p.where[name][0] == key)
      log(("  " if dry else "") + search.cell_text(p, key, d, n))
    return decisions, need

  if dry_run:
    decisions, need = state(dry=True)
    todo, _ = search.next_runs(sweep_dir, p, None, allowed=allowed)
    for name, prop in todo:
      log(f"  next {name}  ({prop.reason})")
    ended = sum(d.ended for d in decisions.values())
    log(f"{len(todo)} runs to train next; search ended in {ended} of {len(decisions)} cells; "
        f"{len(all_runs) - len(need)} runs of the grid not needed so far")
    if todo:
      log("first command: " + " ".join(executors.train_command(
          sweep_dir, by_name[todo[0][0]], definition["config"], definition["config_arg"],
          train_script)))
    return 0

  def refill(exclude, idle):
    todo, _ = search.next_runs(sweep_dir, p, idle, exclude, allowed)
    for name, prop in todo:
      log(f"next: {name} ({prop.reason})")
    return [by_name[name] for name, _ in todo]

  config, config_arg = definition["config"], definition["config_arg"]
  outcomes = collections.Counter()
  if executor == "slurm":
    from skipinit.sweep import slurm  # lazily: submitit is an optional dependency
    submitted: set = set()
    while True:
      wave = refill(frozenset(submitted), None)
      if not wave:
        break
      jobs = slurm.submit(sweep_dir, wave, config, config_arg, slurm_params or {},
                          cluster=slurm_cluster, train_script=train_script,
                          job_name=definition["name"])
      submitted.update(r.name for r in wave)
      log(f"submitted a wave of {len(wave)} runs as a job array "
          f"({jobs[0].job_id if jobs else '-'}); logs in {os.path.join(sweep_dir, 'slurm')}")
      if not wait:
        if slurm_cluster in ("local", "debug"):
          outcomes = _wait_jobs(jobs, log, poll_s)
        log("launch the same command again once this wave has ended for the next one (or "
            "--wait: wave after wave until the search ends)")
        break
      outcomes.update(_wait_jobs(jobs, log, poll_s))
  elif executor == "gpus":
    outcomes = executors.run_gpus(sweep_dir, [], config, config_arg, gpu_list, train_script, log,
                                  cpu=cpu_workers, refill=refill)
  else:
    outcomes = executors.run_local(sweep_dir, [], config, config_arg, train_script, log,
                                   refill=refill)
  decisions, need = state()
  ended = sum(d.ended for d in decisions.values())
  stuck = sum(len(d.stuck) for d in decisions.values())
  log(f"search ended in {ended} of {len(decisions)} cells; {len(need)} runs needed, "
      f"{len(all_runs) - len(need)} of the grid's {len(all_runs)} not needed")
  if stuck:
    log(f"{stuck} needed runs completed without final metrics (status.json and metrics.jsonl "
        "lack test_acc or train_loss): the search cannot pass them; delete their run "
        "directories and launch again")
  if not outcomes and ended < len(decisions) and not stuck:
    log("nothing to do now: the runs the search waits for are held by another process or "
        "excluded by --filter; launch again once they have ended")
  # (runs busy at the start that the search does not need are no concern of this launch)
  busy = [r for r in classes["busy"] if r.name in need]
  return _report({**classes, "busy": busy}, outcomes, log, stuck)


__all__ = ["EXECUTORS", "Run", "SweepError", "expand", "launch", "load_sweep", "make_sweep",
           "powers_of_two", "executors", "search", "spec", "with_data"]
