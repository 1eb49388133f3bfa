"""The learning-rate ladder over a sweep's runs (issue 16): which runs a launch trains next, and
which runs a table counts.

skipinit.sweep.ladder decides one table cell from its runs' outcomes; this module groups a sweep's
runs into the tables' cells (ladder.CELL_KEYS), reads the outcomes from the run directories (the
search's only state) and maps the ladder's proposals back to runs. The launcher
(skipinit.sweep.launch) and the tables (skipinit.analysis.tables) both decide through `decide`, so
a table's "not needed" runs are exactly those no launch would train.
"""

import dataclasses
import math
import os
from typing import Callable, Iterable

from skipinit import rundir
from skipinit.rundir import Status
from skipinit.sweep import ladder, lock


@dataclasses.dataclass
class Plan:
  """A ladder sweep's cells and where each (cell, lr, seed) run lives."""

  table: str
  settings: dict                     # the manifest's "search": lr_patience, lr_climb
  cells: dict                        # cell key -> ladder.CellSpec
  names: dict                        # (cell key, lr, seed) -> run name
  where: dict                        # run name -> (cell key, lr, seed)

  @property
  def follow_batch(self) -> bool:
    # As scripts/replay_ladder.py: only the batch-size study's centres follow the batch size
    # (imagenet's grid already scales with it: base_lr x B/256 x 2^k).
    return self.table == "batch_size"


def plan(table: str, settings: dict, entries: Iterable[tuple[str, str, Callable]]) -> Plan:
  """entries: (run name, method, getter of its config values) of every run of the sweep."""
  specs, names, where = {}, {}, {}
  for name, method, get in entries:
    key = ladder.cell_key(table, method, get)
    lr, seed = float(get("train.lr")), int(get("train.seed") or 0)
    names[(key, lr, seed)] = name
    where[name] = (key, lr, seed)
    lrs, seeds, batch = specs.setdefault(key, (set(), set(), get("train.batch_size")))
    lrs.add(lr)
    seeds.add(seed)
  group = ladder.BATCH_GROUP.get(table)
  cells = {k: ladder.CellSpec(sorted(lrs), sorted(seeds), batch=batch,
                              group=None if group is None else k[group])
           for k, (lrs, seeds, batch) in specs.items()}
  return Plan(table, settings, cells, names, where)


def plan_of_runs(table: str, settings: dict, runs) -> Plan:
  """A Plan of skipinit.sweep.spec.Runs (their resolved config values and overrides)."""
  def getter(run):
    values = {**run.resolved, **run.overrides}
    return values.get
  return plan(table, settings, ((r.name, r.method, getter(r)) for r in runs))


def decide(p: Plan, outcomes: dict) -> tuple[dict, frozenset]:
  """Every cell's ladder.Decision from {run name: ladder.Outcome} (absent: missing); the cells
  whose centre follows a finished cell."""
  results = {k: {} for k in p.cells}
  for name, (key, lr, seed) in p.where.items():
    if name in outcomes:
      results[key][(lr, seed)] = outcomes[name]
  return ladder.decide_all(p.cells, results, patience=p.settings["lr_patience"],
                           climb=p.settings["lr_climb"], follow_batch=p.follow_batch)


def needed(p: Plan, decisions: dict, outcomes: dict) -> set:
  """The run names the search needs: every seed of a rate it needs (the searched range and each
  open walk's next rate), except the unfinished seeds of a rate that diverged (its other seeds
  decide nothing more). A finished run always lies in the searched range."""
  out = set()
  for (key, lr, seed), name in p.names.items():
    d = decisions[key]
    if lr not in d.needed_lrs:
      continue
    finished = outcomes.get(name, ladder.Outcome()).state in rundir.FINISHED
    diverged = any(outcomes.get(p.names.get((key, lr, s)), ladder.Outcome()).state == Status.DIVERGED
                   for s in p.cells[key].seeds)
    if finished or not diverged:
      out.add(name)
  return out


def read_outcomes(sweep_dir: str, p: Plan) -> dict:
  """{run name: ladder.Outcome} from the run directories."""
  return {name: ladder.Outcome(*rundir.read_outcome(os.path.join(sweep_dir, name)))
          for name in p.where}


def next_runs(sweep_dir: str, p: Plan, idle: int | None, exclude=frozenset(),
              allowed=None) -> tuple[list, dict]:
  """([(run name, ladder.Proposal)] to start now, decisions), recomputed from the run directories.

  idle: free workers (at most that many; speculative runs fill the ones the search leaves idle);
  None: every run the search needs now, no speculation. exclude: run names not to propose (this
  launch's runs in flight or already tried); allowed: the names a --filter leaves (None: all).
  Runs another process holds (their lock) are left out too.
  """
  outcomes = read_outcomes(sweep_dir, p)
  decisions, informed = decide(p, outcomes)
  busy = set()
  for name, (key, lr, seed) in p.where.items():
    if name in exclude or (allowed is not None and name not in allowed):
      busy.add((key, lr, seed))
    elif (outcomes[name].state not in rundir.FINISHED
          and lock.is_locked(os.path.join(sweep_dir, name))):
      busy.add((key, lr, seed))
  todo = ladder.schedule(decisions, idle, frozenset(busy), informed)
  return [(p.names[(key, prop.lr, prop.seed)], prop) for key, prop in todo], decisions


def fmt_lr(lr: float | None) -> str:
  """2^-4 for a power of two (as run names give it), else %g."""
  if lr is None:
    return "—"
  mantissa, exponent = math.frexp(lr)
  return f"2^{exponent - 1}" if mantissa == 0.5 else f"{lr:g}"


def cell_text(p: Plan, key, d: ladder.Decision, needed_runs: int | None = None) -> str:
  """"batch 128, method batchnorm: ended, 6 runs (lr 2^-5 … 2^-1); best 2^-3 ..." for a log or a
  table note."""
  labels = ladder.CELL_KEYS[p.table][1]
  where = ", ".join(f"{a} {b}" for a, b in zip(labels, key))
  rng = (f"lr {fmt_lr(d.searched[0])} … {fmt_lr(d.searched[-1])}" if len(d.searched) > 1
         else f"lr {fmt_lr(d.searched[0])}")
  runs = "" if needed_runs is None else f"{needed_runs} runs, "
  if not d.started:
    return f"{where}: not started; centre {fmt_lr(d.centre)} ({d.centre_reason})"
  if d.ended:
    pk = d.picks
    if pk.status == "diverged":
      picks = "every rate diverged"
    else:
      picks = (f"best {fmt_lr(pk.best_lr)}{'*' if pk.best_at_edge else ''} (test acc), "
               f"{fmt_lr(pk.best_loss_lr)}{'*' if pk.best_loss_at_edge else ''} (train loss), "
               f"largest stable {'≥ ' if pk.largest_stable_is_lower_bound else ''}"
               f"{fmt_lr(pk.largest_stable_lr)}")
    return f"{where}: ended, {runs}{rng}; {picks}"
  stuck = (f"; {len(d.stuck)} completed without final metrics (retrain them by hand)"
           if d.stuck else "")
  return f"{where}: searching, {runs}{rng} so far; up {d.up}; down {d.down}{stuck}"


__all__ = ["Plan", "cell_text", "decide", "fmt_lr", "needed", "next_runs", "plan", "plan_of_runs",
           "read_outcomes"]
