r"""The learning-rate ladder at paper scale (issue 16), simulated: runs and GPU-hours saved.

  python scripts/simulate_ladder.py [--replicates=20] [--workers=8] [--out=results/ladder/simulate_batch_size]

The full batch-size study (configs/sweeps/batch_size.py: WRN-16-4, batch 2^4..2^12, BatchNorm and
SkipInit, learning rates 2^-8..2^3, 2 seeds, 200 epochs: 432 runs) cannot run here, so its
outcomes are drawn from a model shaped like the paper's findings (PAPER.md sections 1.3 and 5), and
the ladder (skipinit.sweep.ladder.simulate) is replayed over each drawn grid, exactly as
scripts/replay_ladder.py replays a real one. The model, per (batch B = 2^b, method) cell:
  * optimal log2 lr (test accuracy): b - 9 (lr ~ batch: 2^-5 at batch 16, 2^-1 at 256), saturating
    at 2^-1 for SkipInit (batch >= 256) and 2^1 for BatchNorm (batch >= 1024), plus a uniform
    jitter of +-0.5 so the optimum falls anywhere between two grid rates; the training loss's
    optimum half a step lower (+-0.25);
  * mean test accuracy: a parabola in log2 lr, 0.6 points lower per squared step from the optimum
    (peak 95.5% BN / 95.6% SkipInit, lower at large batch, BN less so), floor 10%; the final
    training loss: 0.01 x 2^(0.7 (log2 lr - its optimum)^2); seed noise 0.15 points of accuracy
    and 3% of the loss, both times --noise;
  * divergence above a maximum stable log2 lr of min(b - 6, cap) +- 0.5 with cap 0 for SkipInit
    and 2 for BatchNorm (BN's maximum is higher at large batch: PAPER.md claim 3); a seed at the
    last stable rate diverges with probability 0.3 when that rate is within 0.3 of the maximum.
Cost model: a completed 200-epoch WRN-16-4 run costs --hours_per_run H100-hours at every batch size
(0.35: the README's full-budget estimate of 100-200 H100-hours for the 432 runs, at its midpoint);
a diverged run stops at its first non-finite loss: --diverged_fraction of a run (0.05; 1.0 bounds
it). The saving rests on the assumption that the means are unimodal in log lr (what makes the
ladder's picks the grid's) and on where the optima sit: a grid much wider than the optima's range
saves more, and a cell whose optimum is far from its centre costs more.
"""

import random
import statistics
import sys

from absl import app, flags

from skipinit import files
from skipinit.cli import parse_flags_or_exit
from skipinit.errors import ConfigError, SkipInitError
from skipinit.sweep import ladder

LR_EXPS = tuple(range(-8, 4))
BATCH_EXPS = tuple(range(4, 13))
METHODS = ("batchnorm", "skipinit_a0")
SEEDS = (0, 1)
SATURATE = {"batchnorm": 1, "skipinit_a0": -1}  # optimal log2 lr stops following the batch
MAX_CAP = {"batchnorm": 2, "skipinit_a0": 0}     # maximum stable log2 lr at large batch


def draw_grid(rng: random.Random, noise: float = 1.0, diverged_fraction: float = 0.05) -> dict:
  """{(batch, method): CellSpec} of one drawn full grid (the model of the module docstring);
  cost in units of one completed run."""
  cells = {}
  lrs = [2.0 ** e for e in LR_EXPS]
  for method in METHODS:
    for b in BATCH_EXPS:
      e_acc = min(b - 9, SATURATE[method]) + rng.uniform(-0.5, 0.5)
      e_loss = e_acc - 0.5 + rng.uniform(-0.25, 0.25)
      e_max = min(b - 6, MAX_CAP[method]) + rng.uniform(-0.5, 0.5)
      over = max(0, b - 8)
      peak = 95.5 - 0.6 * over if method == "batchnorm" else 95.6 - 1.5 * over
      oracle, cost = {}, {}
      for e, lr in zip(LR_EXPS, lrs):
        for s in SEEDS:
          boundary = e_max - 0.3 < e <= e_max and rng.random() < 0.3
          if e > e_max or boundary:
            oracle[(lr, s)] = ladder.Outcome("diverged")
            cost[(lr, s)] = diverged_fraction
            continue
          acc = max(10.0, peak - 0.6 * (e - e_acc) ** 2 + rng.gauss(0, 0.15 * noise))
          loss = 0.01 * 2 ** (0.7 * (e - e_loss) ** 2) * (1 + rng.gauss(0, 0.03 * noise))
          oracle[(lr, s)] = ladder.Outcome("completed", acc / 100.0, loss)
          cost[(lr, s)] = 1.0
      cells[(2 ** b, method)] = ladder.CellSpec(lrs, SEEDS, batch=2 ** b, group=method,
                                                oracle=oracle, cost=cost)
  return cells


def _unimodal(cell: ladder.CellSpec) -> bool:
  rates = [r for r in ladder.aggregate(cell.lrs, cell.seeds, cell.oracle) if r.state == "ok"]

  def single_peak(v):
    i = v.index(max(v)) if v else 0
    return all(a <= b for a, b in zip(v[:i], v[1:i + 1])) and all(
        a >= b for a, b in zip(v[i:], v[i + 1:]))
  return single_peak([r.acc for r in rates]) and single_peak([-r.loss for r in rates])


def _grid_makespan(cells, workers):
  costs = [c for cell in cells.values() for c in cell.cost.values()]
  if workers is None:
    return max(costs)
  free = [0.0] * workers
  for c in costs:
    i = free.index(min(free))
    free[i] += c
  return max(free)


VARIANTS = [  # name, patience, climb, workers (None: as many as asked), speculate, follow_batch
    ("patience 2", 2, False, None, False, False),
    ("patience 1", 1, False, None, False, False),
    ("patience 2, climb to divergence", 2, True, None, False, False),
    ("patience 2, W workers, centre follows batch", 2, False, "W", False, True),
    ("patience 2, W workers, centre follows batch, speculation", 2, False, "W", True, True),
    ("patience 2, climb, W workers, centre follows batch, speculation", 2, True, "W", True, True),
    ("patience 2, 4W workers, centre follows batch", 2, False, "4W", False, True),
    ("patience 2, 4W workers, centre follows batch, speculation", 2, False, "4W", True, True),
]


def run(replicates: int, workers: int, hours: float, diverged_fraction: float, seed: int,
        noise: float) -> dict:
  """Mean (and spread) over `replicates` drawn grids of every variant's runs, hours and picks."""
  if replicates < 1 or workers < 1 or hours <= 0 or not 0 < diverged_fraction <= 1 or noise < 0:
    raise ConfigError("--replicates and --workers must be >= 1, --hours_per_run > 0, "
                      "--diverged_fraction in (0, 1], --noise >= 0")
  rng = random.Random(seed)
  grids = [draw_grid(rng, noise, diverged_fraction) for _ in range(replicates)]
  n_cells = sum(len(g) for g in grids)
  grid_runs = [sum(len(c.oracle) for c in g.values()) for g in grids]
  grid_hours = [hours * sum(sum(c.cost.values()) for c in g.values()) for g in grids]
  unimodal = sum(_unimodal(c) for g in grids for c in g.values())
  out = {"replicates": replicates, "workers": workers, "hours_per_run": hours,
         "diverged_fraction": diverged_fraction, "noise": noise, "seed": seed,
         "cells": n_cells, "cells_unimodal": unimodal,
         "grid": {"runs": statistics.mean(grid_runs), "hours": statistics.mean(grid_hours),
                  "wall_runs_W": statistics.mean(_grid_makespan(g, workers) for g in grids),
                  "wall_runs_4W": statistics.mean(_grid_makespan(g, 4 * workers) for g in grids)},
         "variants": []}
  for name, patience, climb, w, speculate, follow in VARIANTS:
    w = {"W": workers, "4W": 4 * workers}.get(w)
    runs, hrs, wall, eq, eq_stable, eq_uni, n_uni = [], [], [], 0, 0, 0, 0
    for g in grids:
      sim = ladder.simulate(g, workers=w, patience=patience, climb=climb, speculate=speculate,
                            follow_batch=follow)
      runs.append(sum(len(v) for v in sim.launched.values()))
      hrs.append(hours * sum(g[k].cost[(lr, s)] for k, v in sim.launched.items() for lr, s, _ in v))
      wall.append(sim.makespan)
      for k, cell in g.items():
        grid = ladder.grid_search(cell.lrs, cell.seeds, cell.oracle)
        got = sim.decisions[k].picks
        same = (got.best_lr, got.best_loss_lr) == (grid.best_lr, grid.best_loss_lr)
        eq += same
        eq_stable += (got.largest_stable_lr, got.largest_stable_is_lower_bound) == (
            grid.largest_stable_lr, grid.largest_stable_is_lower_bound)
        if _unimodal(cell):
          n_uni += 1
          eq_uni += same
    mean_h = statistics.mean(hrs)
    out["variants"].append({
        "name": name.replace("4W workers", f"{4 * workers} workers").replace(
            "W workers", f"{workers} workers"), "patience": patience,
        "climb": climb, "workers": w, "speculate": speculate, "follow_batch": follow,
        "runs": statistics.mean(runs), "runs_sd": statistics.pstdev(runs),
        "hours": mean_h, "hours_sd": statistics.pstdev(hrs),
        "hours_saved": out["grid"]["hours"] - mean_h,
        "saved_fraction": 1 - mean_h / out["grid"]["hours"],
        "wall_runs": statistics.mean(wall),
        "cells_equal": eq, "cells_stable_equal": eq_stable,
        "unimodal_cells_equal": eq_uni, "unimodal_cells": n_uni})
  return out


def to_markdown(r: dict) -> str:
  g = r["grid"]
  lines = [
      "# The learning-rate ladder on the full batch-size study, simulated", "",
      f"{r['replicates']} drawn grids of 9 batch sizes x 2 methods x 12 learning rates x 2 seeds "
      f"(432 runs, 200 epochs each); seed {r['seed']}, noise x{r['noise']:g}. Cost: "
      f"{r['hours_per_run']:g} H100-hours per completed run, a diverged run "
      f"{r['diverged_fraction']:g} of that. Wall time in run lengths: the grid takes "
      f"{g['wall_runs_W']:.1f} on {r['workers']} GPUs, {g['wall_runs_4W']:.1f} on "
      f"{4 * r['workers']}, 1 with a GPU per run. "
      f"{r['cells_unimodal']}/{r['cells']} drawn cells have unimodal means.", "",
      f"Full grid: {g['runs']:.0f} runs, {g['hours']:.1f} H100-hours.", "",
      "| variant | runs (of 432) | H100-hours | saved | wall time (run lengths) | "
      "best lr equal (both definitions) | largest stable lr equal |",
      "| --- | --- | --- | --- | --- | --- | --- |"]
  for v in r["variants"]:
    lines.append(
        f"| {v['name']} | {v['runs']:.1f} ± {v['runs_sd']:.1f} | {v['hours']:.1f} ± "
        f"{v['hours_sd']:.1f} | {v['hours_saved']:.1f} h ({100 * v['saved_fraction']:.0f}%) | "
        f"{v['wall_runs']:.1f} | {v['cells_equal']}/{r['cells']} (unimodal cells: "
        f"{v['unimodal_cells_equal']}/{v['unimodal_cells']}) | {v['cells_stable_equal']}/{r['cells']} |")
  lines += ["", "Wall time: with a GPU per run (no worker count) the grid takes 1 run length and "
            "the ladder one per step of its longest walk; with a fixed number of GPUs both are "
            "simulated with runs starting as GPUs free up. \"largest stable lr equal\": the value "
            "and whether it is a lower bound (≥); without climbing, the ladder stops below the "
            "divergence and reports a lower bound."]
  return "\n".join(lines) + "\n"


FLAGS = flags.FLAGS


def define_flags():
  """The command line (defined only when run as a script: tests import this file)."""
  flags.DEFINE_integer("replicates", 20, "Drawn grids to average over.")
  flags.DEFINE_integer("workers", 8, "GPUs of the fixed-worker variants.")
  flags.DEFINE_float("hours_per_run", 0.35, "H100-hours of one completed 200-epoch WRN-16-4 run.")
  flags.DEFINE_float("diverged_fraction", 0.05, "A diverged run's cost, as a fraction of a run.")
  flags.DEFINE_float("noise", 1.0, "Seed noise, as a multiple of the model's (0.15 points, 3%).")
  flags.DEFINE_integer("seed", 0, "Random seed of the drawn grids.")
  flags.DEFINE_string("out", None, "Writes <out>.md and <out>.json (default: print the Markdown).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    report = run(FLAGS.replicates, FLAGS.workers, FLAGS.hours_per_run, FLAGS.diverged_fraction,
                 FLAGS.seed, FLAGS.noise)
  except SkipInitError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  files.write_report(FLAGS.out, report, to_markdown(report))
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags_or_exit)
