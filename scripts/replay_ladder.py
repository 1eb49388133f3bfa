r"""Replays the learning-rate ladder (issue 16) over a finished full-grid sweep.

  python scripts/replay_ladder.py --source=runs/batch_size [--patience=2] [--climb] \
      [--workers=N [--speculate]] [--out=results/ladder/replay_NAME]
  python scripts/replay_ladder.py --source=results/sweep_cpu/batch_size_table_runs.csv ...

--source is a sweep directory (sweep.json and its run directories) or a `<table>_runs.csv` written
by make_tables. Per table cell the ladder (skipinit.sweep.ladder) is run as a launcher would run it
from the run directories, using only the runs it would have launched (each reveals its result when
it ends): runs launch when the search asks for them, at most --workers at once (default: as many as
asked), idle workers take speculative runs with --speculate. For every cell it reports the picks of
the full grid and of the ladder, both computed by skipinit.analysis.tables' own definitions (the
best lr by max mean test accuracy, by min mean final training loss, the largest stable lr and the
edge mark; the runs the ladder did not need counted as not finished), whether they are equal, and
the runs and training steps used against the grid's. Steps: status.json's step (a diverged run
stops early) or, from a CSV, epochs x (train examples // batch) for every run, diverged ones in full.
Writes <out>.md and <out>.json (or prints the Markdown without --out).
"""

import os
import statistics
import sys

from absl import app, flags

from skipinit import files
from skipinit.analysis import tables
from skipinit.cli import parse_flags_or_exit
from skipinit.errors import ConfigError, SkipInitError
from skipinit import rundir
from skipinit.sweep import ladder

# The table cells, as make_tables groups them (skipinit.sweep.ladder.CELL_KEYS, shared with the
# tables and the launcher), and their labels.
KEYS = {table: (lambda r, f=f: f(r.method, r.get), labels)
        for table, (f, labels) in ladder.CELL_KEYS.items()}
# Which part of a cell's key names the cells whose optima inform each other's centre (the
# method, or the clipping threshold), for a centre that follows the batch size.
GROUP = ladder.BATCH_GROUP
CIFAR10_TRAIN = 50000


def _num(text, kind):
  return None if text in ("", None) else kind(text)


def _load_csv(path: str, table: str | None):
  """RunResults from a <table>_runs.csv (accuracies in % or, in older files, fractions)."""
  import csv
  if table is None:
    base = os.path.basename(path)
    table = next((t for t in KEYS if base in (f"{t}_table_runs.csv", f"{t}_runs.csv")), None)
    if table is None:
      raise ConfigError(f"{path}: cannot tell its table from the name: give --table (one of "
                        f"{', '.join(KEYS)})")
  try:
    with open(path, newline="") as f:
      rows = list(csv.DictReader(f))
  except OSError as e:
    raise ConfigError(f"cannot read --source={path}: {e.strerror}") from None
  need = {"run", "method", "lr", "seed", "state", "test_acc", "train_loss", "batch_size", "epochs"}
  if not rows or need - set(rows[0]):
    raise ConfigError(f"{path} is not a <table>_runs.csv of make_tables (needs the columns "
                      f"{', '.join(sorted(need))})")
  accs = [float(r["test_acc"]) for r in rows if r["test_acc"] not in ("", None)]
  scale = tables.ACC_SCALE if accs and max(accs) > 1.5 else 1.0  # percent (today) or fraction
  runs = []
  for r in rows:
    params = {"train.lr": float(r["lr"]), "train.seed": _num(r["seed"], int),
              "train.batch_size": _num(r["batch_size"], int), "train.epochs": _num(r["epochs"], float),
              "model.depth": _num(r.get("depth"), int), "model.width": _num(r.get("width"), int),
              "train.agc_clip": _num(r.get("agc_clip"), float)}
    acc = _num(r["test_acc"], float)
    runs.append(tables.RunResult(r["run"], r["method"], "", params, r["state"],
                                 None if acc is None else acc / scale, _num(r["train_loss"], float)))
  return table, runs


def _steps(run: tables.RunResult, train_examples: int) -> int:
  """Training steps the run took: status.json's step when there is one, else its full length."""
  if run.sweep_dir:
    status = rundir.read_status(os.path.join(run.sweep_dir, run.name)) or {}
    if isinstance(status.get("step"), int) and run.state in rundir.FINISHED:
      return status["step"]
    if isinstance(status.get("total_steps"), int):
      return status["total_steps"]
  n = run.get("data.train_examples") or train_examples
  per_epoch = int(n) // int(run.get("train.batch_size"))
  return max(1, int(round(float(run.get("train.epochs")) * per_epoch)))  # as the trainer counts


def load(source: str, table: str | None = None, train_examples: int = CIFAR10_TRAIN):
  """(table kind, RunResults, where the steps come from) of a sweep directory or a runs CSV."""
  if os.path.isdir(source):
    manifest, runs = tables.load_runs(source)
    return manifest["table"], runs, "status.json's step"
  if not os.path.isfile(source):
    raise ConfigError(f"--source={source} is neither a sweep directory nor a <table>_runs.csv")
  kind, runs = _load_csv(source, table)
  return kind, runs, (f"epochs x ({train_examples} // batch) per run; a diverged run counted in "
                      "full (a CSV does not say where it stopped)")


def _picks(group: tables.Group) -> dict:
  best, best_loss, stable = group.best_by_acc, group.best_by_loss, group.largest_stable
  return {"status": group.status, "best_lr": best.lr if best else None,
          "best_lr_at_edge": group.at_edge(best),
          "best_acc": None if best is None else round(best.acc_mean, 4),
          "best_lr_by_train_loss": best_loss.lr if best_loss else None,
          "best_lr_by_train_loss_at_edge": group.at_edge(best_loss),
          "largest_stable_lr": stable.lr if stable else None,
          "largest_stable_is_lower_bound": group.largest_stable_is_lower_bound}


def _masked(run: tables.RunResult) -> tables.RunResult:
  return tables.RunResult(run.name, run.method, run.sweep_dir, run.params, "missing")


def _list_makespan(costs, workers):
  """Greedy list scheduling of the grid's runs, in order, on `workers` (None: all at once)."""
  if workers is None:
    return max(costs, default=0.0)
  free = [0.0] * workers
  for c in costs:
    i = free.index(min(free))
    free[i] += c
  return max(free, default=0.0)


def replay(source: str, patience: int = ladder.PATIENCE, climb: bool = False,
           workers: int | None = None, speculate: bool = False, follow_batch: bool | None = None,
           table: str | None = None, train_examples: int = CIFAR10_TRAIN) -> dict:
  """The replay's report (see the module docstring) as a JSON-able dict."""
  ladder.check_patience(patience)
  if workers is not None and workers < 1:
    raise ConfigError(f"--workers={workers}: use a positive number (0: as many as the search asks)")
  kind, runs, steps_from = load(source, table, train_examples)
  if kind not in KEYS:
    raise ConfigError(f"table {kind!r} is unknown: one of {', '.join(KEYS)}")
  if follow_batch is None:
    follow_batch = kind == "batch_size"
  key_fn, labels = KEYS[kind]
  groups, warnings = tables.group_runs(runs, key_fn)
  cells, by_rate, steps = {}, {}, {}
  for key, g in groups.items():
    seeds = sorted({int(r.get("train.seed") or 0) for r in g.runs})
    oracle, cost = {}, {}
    for c in g.cells:
      for r in c.runs:
        s = int(r.get("train.seed") or 0)
        oracle[(c.lr, s)] = ladder.Outcome(r.state, r.test_acc, r.train_loss)
        steps[(key, c.lr, s)] = _steps(r, train_examples)
        # The simulated duration: examples processed (equal epochs take equal time, whatever the
        # batch; a diverged run, only its share).
        cost[(c.lr, s)] = steps[(key, c.lr, s)] * int(r.get("train.batch_size") or 1)
        by_rate[(key, c.lr, s)] = r
    batch = g.runs[0].get("train.batch_size")
    cells[key] = ladder.CellSpec([c.lr for c in g.cells], seeds, batch=batch,
                                 group=key[GROUP.get(kind)] if kind in GROUP else None,
                                 oracle=oracle, cost=cost)
  sim = ladder.simulate(cells, workers=workers, patience=patience, climb=climb,
                        speculate=speculate, follow_batch=follow_batch)
  out_cells, notes = [], list(warnings)
  for key, g in groups.items():
    d = sim.decisions[key]
    used = {(lr, s) for lr, s, _ in sim.launched[key]}
    needed = set(d.searched)
    # The ladder's table cell: the runs it launched at the rates it needed; every other run of the
    # grid is "not needed", which tables count as not finished (never in a mean).
    lg = tables.Group(key, [tables.Cell(c.lr, [r if (c.lr, int(r.get("train.seed") or 0)) in used
                                               and c.lr in needed else _masked(r) for r in c.runs])
                            for c in g.cells])
    grid, lad = _picks(g), _picks(lg)
    own = d.picks
    if (own.best_lr, own.best_loss_lr, own.largest_stable_lr) != (
        lad["best_lr"], lad["best_lr_by_train_loss"], lad["largest_stable_lr"]):
      notes.append(f"cell {key}: the ladder's own picks differ from the tables' on its runs")
    grid_steps = sum(steps[(key, c.lr, int(r.get("train.seed") or 0))]
                     for c in g.cells for r in c.runs)
    out_cells.append({
        "key": dict(zip(labels, key)), "ended": d.ended, "centre": d.centre,
        "centre_reason": d.centre_reason, "up": d.up, "down": d.down,
        "searched_lrs": list(d.searched), "grid": grid, "ladder": lad,
        "equal": (grid["best_lr"], grid["best_lr_by_train_loss"]) == (
            lad["best_lr"], lad["best_lr_by_train_loss"]),
        "edge_equal": (grid["best_lr_at_edge"], grid["best_lr_by_train_loss_at_edge"]) == (
            lad["best_lr_at_edge"], lad["best_lr_by_train_loss_at_edge"]),
        "stable_equal": (grid["largest_stable_lr"], grid["largest_stable_is_lower_bound"]) == (
            lad["largest_stable_lr"], lad["largest_stable_is_lower_bound"]),
        "runs_used": len(used), "runs_speculative": sum(sp for _, _, sp in sim.launched[key]),
        "runs_grid": len(g.runs), "steps_used": sum(steps[(key, lr, s)] for lr, s in used),
        "steps_grid": grid_steps,
        "unavailable": [list(x) for x in sim.unavailable.get(key, [])]})
  unit = statistics.median([c for cell in cells.values() for (lr, s), c in cell.cost.items()
                            if cell.oracle[(lr, s)].state == "completed"] or [1.0])
  grid_costs = [c for cell in cells.values() for c in cell.cost.values()]
  tot = lambda k: sum(c[k] for c in out_cells)
  return {
      "source": source, "table": kind, "steps_from": steps_from,
      "settings": {"patience": patience, "climb": climb, "workers": workers,
                   "speculate": speculate, "follow_batch": follow_batch},
      "cells": out_cells,
      "totals": {"cells": len(out_cells), "cells_equal": sum(c["equal"] for c in out_cells),
                 "cells_stable_equal": sum(c["stable_equal"] for c in out_cells),
                 "cells_ended": sum(c["ended"] for c in out_cells),
                 "runs_used": tot("runs_used"), "runs_grid": tot("runs_grid"),
                 "steps_used": tot("steps_used"), "steps_grid": tot("steps_grid"),
                 "wall_ladder_runs": round(sim.makespan / unit, 3),
                 "wall_grid_runs": round(_list_makespan(grid_costs, workers) / unit, 3)},
      "notes": notes,
  }


def _lr(x):
  return "—" if x is None else f"{x:g}"


def _frac(a, b):
  return f"{a}/{b} ({100.0 * a / b:.0f}%)" if b else f"{a}/{b}"


def to_markdown(report: dict) -> str:
  s, t = report["settings"], report["totals"]
  mode = (f"patience {s['patience']}" + (", climbing to divergence" if s["climb"] else "") +
          (f", {s['workers']} workers" if s["workers"] else ", unlimited workers") +
          (" + speculation" if s["speculate"] else "") +
          (", centre following the batch size" if s["follow_batch"] else ", centre: the grid's middle"))
  labels = list(report["cells"][0]["key"]) if report["cells"] else []
  head = labels + ["best lr (acc) grid / ladder", "best lr (loss) grid / ladder",
                   "largest stable grid / ladder", "equal", "runs used", "steps used", "searched"]
  lines = [f"# Ladder replay of {report['source']} ({report['table']} table)", "",
           f"Search: {mode}. Steps: {report['steps_from']}.", "",
           "| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]

  def pick(p, k, edge=None):
    return _lr(p[k]) + ("*" if edge and p[edge] else "")

  def stable(p):
    return ("≥ " if p["largest_stable_is_lower_bound"] and p["largest_stable_lr"] else "") + _lr(
        p["largest_stable_lr"])

  for c in report["cells"]:
    g, l = c["grid"], c["ladder"]
    eq = ("yes" if c["equal"] else "**NO**") + ("" if c["stable_equal"] else " (stable lr: no)")
    if not c["ended"]:
      eq += " (search not ended" + (f": {len(c['unavailable'])} needed runs missing in the grid"
                                    if c["unavailable"] else "") + ")"
    searched = ", ".join(_lr(x) for x in c["searched_lrs"])
    lines.append("| " + " | ".join([str(v) for v in c["key"].values()] + [
        f"{pick(g, 'best_lr', 'best_lr_at_edge')} / {pick(l, 'best_lr', 'best_lr_at_edge')}",
        f"{pick(g, 'best_lr_by_train_loss', 'best_lr_by_train_loss_at_edge')} / "
        f"{pick(l, 'best_lr_by_train_loss', 'best_lr_by_train_loss_at_edge')}",
        f"{stable(g)} / {stable(l)}", eq, _frac(c["runs_used"], c["runs_grid"]),
        _frac(c["steps_used"], c["steps_grid"]), searched]) + " |")
  lines += ["", f"**Total:** best learning rates equal (both definitions) in "
            f"{t['cells_equal']}/{t['cells']} cells; largest stable lr equal in "
            f"{t['cells_stable_equal']}/{t['cells']}; runs {_frac(t['runs_used'], t['runs_grid'])}; "
            f"training steps {_frac(t['steps_used'], t['steps_grid'])}; wall time "
            f"{t['wall_ladder_runs']:g} run lengths against the grid's {t['wall_grid_runs']:g} "
            "(simulated: a run takes its examples processed; the same workers).", "",
            "\\* best learning rate at the edge of the grid. ≥: a lower bound (the rate above "
            "it did not diverge or was not needed). The ladder's picks are computed by "
            "skipinit.analysis.tables from the runs it launched, the others counted as not "
            "finished."]
  lines += [f"- note: {n}" for n in report["notes"]]
  return "\n".join(lines) + "\n"


FLAGS = flags.FLAGS


def define_flags():
  """The command line (defined only when run as a script: tests import this file)."""
  flags.DEFINE_string("source", None, "A finished sweep directory or a <table>_runs.csv.")
  flags.DEFINE_string("table", None, "The table of a runs CSV whose name does not say it "
                      f"({', '.join(KEYS)}).")
  flags.DEFINE_integer("patience", ladder.PATIENCE, "Consecutive worse rates that end a walk (>= 1).")
  flags.DEFINE_bool("climb", False, "Walk up until a rate diverges (the grid's largest stable lr).")
  flags.DEFINE_integer("workers", 0, "Runs at once (0: as many as the search asks).")
  flags.DEFINE_bool("speculate", False, "Idle workers train the next candidates on both sides.")
  flags.DEFINE_enum("follow_batch", "auto", ["auto", "true", "false"],
                    "Centre from the nearest finished batch size (auto: for the batch-size table).")
  flags.DEFINE_integer("train_examples", CIFAR10_TRAIN, "Training set size, for a CSV's steps.")
  flags.DEFINE_string("out", None, "Writes <out>.md and <out>.json (default: print the Markdown).")
  flags.mark_flags_as_required(["source"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    report = replay(FLAGS.source, patience=FLAGS.patience, climb=FLAGS.climb,
                    workers=FLAGS.workers or None, speculate=FLAGS.speculate,
                    follow_batch={"auto": None, "true": True, "false": False}[FLAGS.follow_batch],
                    table=FLAGS.table, train_examples=FLAGS.train_examples)
  except SkipInitError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  files.write_report(FLAGS.out, report, to_markdown(report))
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags_or_exit)
