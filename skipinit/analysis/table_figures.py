"""Figures of the batch-size and AGC studies (PAPER.md section 5), drawn from `tables.Table` groups.

  fig_batch_size_accuracy   best-lr test accuracy vs batch size, one line per method
  fig_batch_size_lr         optimal learning rate vs batch size (log-log), one colour per method:
                            solid = max test accuracy, dashed = min final training loss
  fig_agc_batch_size        best-lr test accuracy vs batch size, one line per AGC threshold
Each is written as PNG and PDF. Cells without a best learning rate (diverged or unfinished) are
left out of the lines, so a line never interpolates over a missing point silently: it breaks.
"""

import math
import os
import textwrap

import matplotlib

matplotlib.use("Agg")  # files only; no display on clusters
import matplotlib.pyplot as plt  # noqa: E402

from skipinit.analysis.tables import Table, label  # noqa: E402


def _series(groups: dict, value):
  """{line: ([batch size], [y], [yerr])} of groups keyed (batch size, line), with a NaN where a
  cell has no value, so the line breaks there."""
  out = {}
  for key in sorted(groups, key=lambda k: (str(k[1]), k[0])):
    y, err = value(groups[key])
    xs, ys, es = out.setdefault(key[1], ([], [], []))
    xs.append(key[0])
    ys.append(float("nan") if y is None else y)
    es.append(0.0 if err is None else err)
  return out


def _finish(fig, ax, table: Table, ylabel: str, out_dir: str, name: str, legend_size=None,
            grid: str = "major") -> list[str]:
  """Batch size on a log2 axis, the labels, and what the runs trained on and for how long (the
  table's `about`) as the title; writes the figure as PNG and PDF."""
  xs = sorted({k[0] for k in table.groups})
  ax.set_xscale("log", base=2)
  ax.set_xticks(xs)
  ax.set_xticklabels([str(int(x)) for x in xs])
  ax.set_xlabel("batch size")
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3, which=grid)
  ax.legend(fontsize=legend_size)
  if table.about:
    ax.set_title("\n".join(textwrap.wrap(table.about, 80)), fontsize=6.5)
  paths = [os.path.join(out_dir, f"{name}.{ext}") for ext in ("png", "pdf")]
  for p in paths:
    fig.savefig(p, dpi=150, bbox_inches="tight")
  plt.close(fig)
  return paths


def _nudge(xs, i, n, step=0.04):
  """Shifts line i of n by a few percent along a log2 axis, so identical points stay visible."""
  return [x * 2 ** (step * (i - (n - 1) / 2)) for x in xs]


def _best_acc(group):
  best = group.best_by_acc
  return (best.acc_mean, best.acc_std) if best else (None, None)


def _say_if_empty(ax, ys) -> bool:
  """Writes "no finished learning rate yet" on an axis without a point (a sweep just launched,
  or one where everything diverged); True when it did."""
  if any(math.isfinite(y) for y in ys):
    return False
  ax.text(0.5, 0.5, "no cell has a finished learning rate yet", transform=ax.transAxes,
          ha="center", va="center", color="0.4")
  return True


def batch_size_figures(table: Table, out_dir: str) -> list[str]:
  groups = table.groups  # key: (batch size, method)
  methods = list(dict.fromkeys(k[1] for k in sorted(groups, key=lambda k: k[0])))

  fig, ax = plt.subplots(figsize=(5, 3.6))
  acc = _series(groups, _best_acc)
  for i, m in enumerate(methods):
    xs, ys, es = acc[m]
    ax.errorbar(_nudge(xs, i, len(methods)), ys, yerr=es, marker="o", capsize=2, label=label(m))
  _say_if_empty(ax, [y for xs, ys, es in acc.values() for y in ys])
  written = _finish(fig, ax, table, "test accuracy at the best lr (%)", out_dir,
                    "fig_batch_size_accuracy")

  fig, ax = plt.subplots(figsize=(5, 3.6))
  by_acc = _series(groups, lambda g: (g.best_by_acc.lr if g.best_by_acc else None, None))
  by_loss = _series(groups, lambda g: (g.best_by_loss.lr if g.best_by_loss else None, None))
  for i, m in enumerate(methods):
    color = f"C{i}"
    n = 2 * len(methods)
    ax.plot(_nudge(by_acc[m][0], 2 * i, n), by_acc[m][1], "o-", color=color,
            label=f"{label(m)}: max test acc")
    ax.plot(_nudge(by_loss[m][0], 2 * i + 1, n), by_loss[m][1], "s--", color=color, alpha=0.8,
            label=f"{label(m)}: min train loss")
  if not _say_if_empty(ax, [y for series in (by_acc, by_loss) for _, ys, _ in series.values()
                            for y in ys]):
    ax.set_yscale("log", base=2)  # (a log axis with no positive value is an error)
  return written + _finish(fig, ax, table, "optimal learning rate", out_dir, "fig_batch_size_lr",
                           legend_size=7, grid="both")


def agc_figure(table: Table, out_dir: str) -> list[str]:
  series = _series(table.groups, _best_acc)  # lines: the clipping thresholds
  fig, ax = plt.subplots(figsize=(5, 3.6))
  clips = sorted(series, key=lambda c: (c != 0.0, c))
  for i, clip in enumerate(clips):
    xs, ys, es = series[clip]
    off = clip == 0.0
    ax.errorbar(_nudge(xs, i, len(clips)), ys, yerr=es, marker="o", capsize=2,
                label="no AGC" if off else f"λ = {clip:g}", linestyle="--" if off else "-")
  _say_if_empty(ax, [y for _, ys, _ in series.values() for y in ys])
  return _finish(fig, ax, table, "test accuracy at the best lr (%)", out_dir,
                 "fig_agc_batch_size", legend_size=7)


def figures_for(table: Table, out_dir: str) -> list[str]:
  """The figures that go with `table` (none for tables without one)."""
  os.makedirs(out_dir, exist_ok=True)
  if not table.groups:
    return []
  if table.name == "batch_size_table":
    return batch_size_figures(table, out_dir)
  if table.name == "agc_table":
    return agc_figure(table, out_dir)
  return []
