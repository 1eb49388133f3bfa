"""The paper's tables from sweep directories (PAPER.md sections 4-5), as Markdown, CSV and LaTeX.

Reads only the sweep manifest (sweep.json: which runs are expected) and each run directory's
contract files (config.json, status.json, metrics.jsonl; DESIGN.md). The protocol of PAPER.md
section 4:
  * a (row, column) cell of a table is a group of runs over a learning-rate grid and seeds;
  * a learning rate is *ok* when every expected seed completed; *diverged* when any seed diverged
    (a diverged run is a failure, never a number); otherwise *incomplete*;
  * the best learning rate maximizes the mean test accuracy over seeds among ok learning rates;
    the batch-size study also reports the one that minimizes the mean final training loss;
  * the largest stable learning rate is the largest ok one ("≥" when it is only a lower bound: the
    top of the grid, or the next rate up has not finished);
  * a cell is "diverged" when every learning rate diverged.
Mean +- std is over seeds (sample std, ddof=1). Unfinished runs (missing, failed, running or
interrupted) are listed under every table and counted in its "runs" column, never averaged in.
A sweep made with lr_search=ladder (issue 16) trains only the rates its search needs: the other
runs of its grid are "not needed" (skipinit.sweep.search decides which, as the launcher does),
neither listed as unfinished nor counted; a note under the table says how each cell was searched.
"""

import collections
import csv
import dataclasses
import math
import os
from typing import Callable, Iterable, Sequence

from skipinit import config as cfg_lib
from skipinit import rundir
from skipinit.rundir import Status
from skipinit.sweep import ladder, search
from skipinit.sweep.methods import LABELS
from skipinit.sweep.spec import TABLE_KEYS, SweepError, read_manifest, search_of

# The status.json / metrics.jsonl accuracies are fractions; the tables print percentages.
ACC_SCALE = 100.0
# Depth-table rows shown next to the ablations (full Fixup beside its halves, fixup_*_only).
REFERENCE_METHODS = ("batchnorm", "skipinit_a0", "fixup")
# What the runs of one table cell must share besides the method (every lr and seed of a cell is
# the same experiment): the resolved keys every run has, started or not, less the grid's.
# From the run's data.json, once it has started: a cell never mixes data sets, nor runs evaluated
# on a subset of the test set (data.eval_subset) with runs evaluated on all of it.
PROTOCOL_KEYS = tuple(k for k in TABLE_KEYS if k not in ("train.lr", "train.seed")) + (
    "data.train_examples", "data.test_examples", "data.eval_examples", "data.sha1")
DATA_NAMES = {"cifar10": "CIFAR-10", "imagenet2012": "ImageNet"}


# ------------------------------------------------------------------------------------ run results

@dataclasses.dataclass
class RunResult:
  """One expected run: where the manifest put it, its resolved config values, and how it ended."""

  name: str
  method: str
  sweep_dir: str
  params: dict            # "model.depth", "train.lr", ...: config.json if present, else the manifest
  state: str              # completed | diverged | failed | running | missing | not needed
  test_acc: float | None = None
  train_loss: float | None = None
  search_note: str | None = None  # lr_search=ladder: how the run's cell was searched

  @property
  def usable(self) -> bool:
    """Completed with finite final metrics: the learning-rate search's definition too."""
    return ladder.Outcome(self.state, self.test_acc, self.train_loss).usable

  def get(self, key, default=None):
    return self.params.get(key, default)


def load_runs(sweep_dir: str) -> tuple[dict, list[RunResult]]:
  """The manifest and one RunResult per expected run of a sweep directory."""
  manifest = read_manifest(sweep_dir)
  results = []
  for run in manifest["runs"]:
    run_dir = os.path.join(sweep_dir, run["name"])
    params = dict(run.get("resolved") or {})
    params.update(run.get("overrides") or {})
    flat = rundir.read_config(run_dir)
    if flat is not None:
      params.update(flat)  # the trainer's resolved config is the truth
      # A key its config.json predates: what the run did then, not today's default.
      params.update({k: f(flat) for k, f in cfg_lib.LEGACY_VALUES.items() if k not in flat})
    data = rundir.read_json(os.path.join(run_dir, rundir.DATA))  # what it trained on
    if isinstance(data, dict):
      params.update({f"data.{k}": v for k, v in data.items()})
      # No "eval_examples" (every run before data.eval_subset, and any run without one): it was
      # evaluated on the whole test set.
      params.setdefault("data.eval_examples", data.get("test_examples"))
    state, test_acc, train_loss = rundir.read_outcome(run_dir)
    results.append(RunResult(run["name"], run["method"], sweep_dir, params, state, test_acc,
                             train_loss))
  settings = search_of(manifest)
  if settings is not None:
    _mark_not_needed(manifest["table"], settings, results)
  return manifest, results


NOT_NEEDED = "not needed"


def _mark_not_needed(table: str, settings: dict, results: list[RunResult]) -> None:
  """A ladder sweep's runs that its search does not need (and that have not finished) become
  "not needed"; every run gets its cell's search note."""
  plan = search.plan(table, settings, ((r.name, r.method, r.get) for r in results))
  outcomes = {r.name: ladder.Outcome(r.state, r.test_acc, r.train_loss) for r in results}
  decisions, _ = search.decide(plan, outcomes)
  need = search.needed(plan, decisions, outcomes)
  per_cell = collections.Counter(plan.where[name][0] for name in need)
  for r in results:
    key = plan.where[r.name][0]
    r.search_note = search.cell_text(plan, key, decisions[key], per_cell[key])
    if r.name not in need and r.state not in rundir.FINISHED:
      r.state = NOT_NEEDED


# ---------------------------------------------------------------------------------- aggregation

@dataclasses.dataclass
class Cell:
  """All seeds of one learning rate of one table cell."""

  lr: float
  runs: list[RunResult]

  @property
  def state(self) -> str:
    if any(r.state == Status.DIVERGED for r in self.runs):
      return "diverged"
    if self.runs and all(r.state == NOT_NEEDED for r in self.runs):
      return NOT_NEEDED
    return "ok" if self.runs and all(r.usable for r in self.runs) else "incomplete"

  def _values(self, attr):
    return [getattr(r, attr) for r in self.runs if r.usable]

  @property
  def acc_mean(self):
    v = self._values("test_acc")
    return sum(v) / len(v) * ACC_SCALE if v else None

  @property
  def acc_std(self):
    v = [x * ACC_SCALE for x in self._values("test_acc")]
    if len(v) < 2:
      return None
    m = sum(v) / len(v)
    return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))

  @property
  def loss_mean(self):
    v = self._values("train_loss")
    return sum(v) / len(v) if v else None

  @property
  def n_seeds(self) -> int:
    return len(self._values("test_acc"))


@dataclasses.dataclass
class Group:
  """One table cell: a learning-rate grid x seeds, and what the protocol picks from it."""

  key: tuple
  cells: list[Cell]

  @property
  def runs(self) -> list[RunResult]:
    return [r for c in self.cells for r in c.runs]

  @property
  def ok(self) -> list[Cell]:
    return [c for c in self.cells if c.state == "ok"]

  @property
  def best_by_acc(self) -> Cell | None:
    return max(self.ok, key=lambda c: (c.acc_mean, -c.lr), default=None)

  @property
  def best_by_loss(self) -> Cell | None:
    return min(self.ok, key=lambda c: (c.loss_mean, c.lr), default=None)

  @property
  def largest_stable(self) -> Cell | None:
    return max(self.ok, key=lambda c: c.lr, default=None)

  @property
  def largest_stable_is_lower_bound(self) -> bool:
    """Whether the largest stable rate is only a lower bound: exact only when the next rate up
    diverged, not when it is the top of the grid or the next rate has not finished yet."""
    stable = self.largest_stable
    above = sorted((c for c in self.cells if stable and c.lr > stable.lr), key=lambda c: c.lr)
    return stable is not None and (not above or above[0].state != Status.DIVERGED)

  @property
  def status(self) -> str:
    if self.ok:
      return "ok"
    searched = self.searched
    if searched and all(c.state == Status.DIVERGED for c in searched):
      return "diverged"
    return "incomplete"

  @property
  def searched(self) -> list[Cell]:
    """The learning rates the cell needs (all of them, but with lr_search=ladder)."""
    return [c for c in self.cells if c.state != NOT_NEEDED]

  @property
  def n_expected(self) -> int:
    return sum(r.state != NOT_NEEDED for r in self.runs)

  @property
  def n_finished(self) -> int:
    return sum(r.state in rundir.FINISHED for r in self.runs)

  def at_edge(self, cell: Cell | None) -> bool:
    """Whether `cell` is the smallest or largest learning rate tried: the optimum may lie outside."""
    lrs = [c.lr for c in self.cells]
    return cell is not None and len(lrs) > 1 and cell.lr in (min(lrs), max(lrs))


def _check_protocol(first: dict, r: RunResult) -> None:
  """Refuses a cell whose runs differ in anything but lr and seed (`PROTOCOL_KEYS`), such as two
  sweep directories of different epochs: averaging them would be a number of no experiment."""
  where = os.path.join(r.sweep_dir, r.name)
  for k in PROTOCOL_KEYS:
    v = r.get(k)
    if v is None:  # (a key an older run does not record)
      continue
    if k not in first:
      first[k] = (v, where)
    elif first[k][0] != v:
      raise SweepError(
          f"{where} has {k}={v!r} but {first[k][1]}, of the same table cell, has "
          f"{k}={first[k][0]!r}: a cell averages one experiment over seeds, so give make_tables "
          "sweep directories that differ only in learning rates and seeds")


def _cell_key(table: str) -> Callable[[RunResult], tuple]:
  """A run's table cell (ladder.CELL_KEYS: the launcher's ladder searches the same cells)."""
  return lambda r: ladder.cell_key(table, r.method, r.get)


def group_runs(runs: Iterable[RunResult], key: Callable[[RunResult], tuple]) -> tuple[dict, list[str]]:
  """Groups runs by `key` then learning rate; returns ({key: Group}, duplicate-run warnings).

  Two runs with the same key, learning rate and seed (e.g. the same run in two sweep directories)
  count once: the first one given that has finished. Runs of one key that differ in a protocol
  key (epochs, say) are a SweepError.
  """
  chosen, warnings, protocols = {}, [], {}
  for r in runs:
    k, lr, seed = key(r), float(r.get("train.lr")), r.get("train.seed", 0)
    _check_protocol(protocols.setdefault(k, {}), r)
    ident = (k, lr, seed)
    first = chosen.setdefault(ident, r)
    if first is r:
      continue
    # A finished copy beats one that is still to run; otherwise the first one given stays.
    keep, drop = first, r
    if r.state in rundir.FINISHED and first.state not in rundir.FINISHED:
      keep, drop = r, first
    chosen[ident] = keep
    if drop.state in rundir.FINISHED:  # (an ignored copy that never ran loses nothing)
      warnings.append(f"{os.path.join(drop.sweep_dir, drop.name)} duplicates "
                      f"{os.path.join(keep.sweep_dir, keep.name)}: ignored")
  groups = {}
  for (k, lr, _), r in chosen.items():
    groups.setdefault(k, {}).setdefault(lr, []).append(r)
  return ({k: Group(k, [Cell(lr, rs) for lr, rs in sorted(by_lr.items())])
           for k, by_lr in groups.items()}, warnings)


def _runs_of(groups: dict) -> list[RunResult]:
  """The runs a table counts (a duplicate left out), in the order grouped."""
  return [r for g in groups.values() for c in g.cells for r in c.runs]


# ----------------------------------------------------------------------------------------- tables

@dataclasses.dataclass
class Table:
  """A rendered table: display rows for Markdown/LaTeX, machine-readable records for CSV.

  `about` says what the runs trained on and for how long (`describe_runs`); the title ends with it.
  """

  name: str
  title: str
  header: list[str]
  rows: list[list[str]]
  records: list[dict]
  runs: list[RunResult]
  notes: list[str] = dataclasses.field(default_factory=list)
  groups: dict = dataclasses.field(default_factory=dict)
  about: str = ""

  def __post_init__(self):
    if not self.about and self.runs:
      self.about = describe_runs(self.runs)
      self.title = f"{self.title} — {self.about}"


def _count(n, what: str) -> str:
  return f"{n:,} {what}{'' if n == 1 else 's'}"


def _data_text(r: RunResult) -> tuple[tuple, str]:
  """(what identifies the data set, how the title names it) of one run: from its data.json once
  it has started (the sizes), else from its config (older runs' data.json lack name and source)."""
  name, source = r.get("data.name") or "cifar10", r.get("data.source") or "tfds"
  label = DATA_NAMES.get(name, name)
  path = str(r.get("data.path") or "").rstrip("/")
  train, test = r.get("data.train_examples"), r.get("data.test_examples")
  if source == "synthetic":
    where = f"synthetic {label}-shaped data"
    train = train or r.get("data.synthetic_train_size")
    test = test or r.get("data.synthetic_test_size")
  elif source == "folder":
    where = f"{label} from {os.path.basename(path) or 'a folder'}"
  else:
    where = f"{label} from {source}"
  sizes = f" ({train:,} train / {test:,} test images)" if train and test else ""
  evaluated = r.get("data.eval_examples") or r.get("data.eval_subset") or None
  subset = (f", test accuracy on a fixed subset of {_count(evaluated, 'image')}"
            if evaluated and (not test or evaluated < test) else "")
  return (name, source, os.path.basename(path)), where + sizes + subset


def describe_runs(runs: Sequence[RunResult]) -> str:
  """"CIFAR-10 from cifar10-jpeg.tar.gz (50,000 train / 10,000 test images); 200 epochs, 3 seeds
  per learning rate": the data the runs trained on (from data.json: what a run actually read) and
  the budget, for the table's title."""
  texts: dict[tuple, str] = {}
  for r in runs:
    key, text = _data_text(r)
    if len(text) > len(texts.get(key, "")):  # a started run's text (with sizes) wins
      texts[key] = text
  epochs = sorted({float(e) for e in (r.get("train.epochs") for r in runs) if e is not None})
  seeds = len({r.get("train.seed", 0) for r in runs})
  budget = ", ".join(f"{e:g}" for e in epochs) + (" epoch" if epochs == [1.0] else " epochs")
  return (f"{'; '.join(dict.fromkeys(texts.values()))}; {budget if epochs else 'epochs unknown'}, "
          f"{_count(seeds, 'seed')} per learning rate")


def label(method: str) -> str:
  return LABELS.get(method, method)


def fmt_lr(lr: float | None) -> str:
  return "—" if lr is None else f"{lr:g}"


def fmt_acc(cell: Cell | None) -> str:
  if cell is None or cell.acc_mean is None:
    return "—"
  std = cell.acc_std
  return f"{cell.acc_mean:.2f} ± {std:.2f}" if std is not None else f"{cell.acc_mean:.2f}"


def _progress_mark(group: Group) -> str:
  return "" if group.n_finished == group.n_expected else " †"


def best_cell_text(group: Group | None) -> str:
  """"93.95 ± 0.12 @ lr 0.0625" for the best learning rate, or why there is none."""
  if group is None:
    return "—"
  if group.status == "diverged":
    return "diverged"
  best = group.best_by_acc
  if best is None:
    return f"incomplete ({group.n_finished}/{group.n_expected} runs)"
  edge = "*" if group.at_edge(best) else ""
  return f"{fmt_acc(best)} @ lr {fmt_lr(best.lr)}{edge}{_progress_mark(group)}"


def _order(values: Iterable, first_seen: Sequence = ()) -> list:
  values = list(dict.fromkeys(values))
  rank = {v: i for i, v in enumerate(first_seen)}
  return sorted(values, key=lambda v: (rank.get(v, len(rank)), v if not isinstance(v, str) else 0))


def _record(group: Group, **fields) -> dict:
  best, best_loss, stable = group.best_by_acc, group.best_by_loss, group.largest_stable
  return {
      **fields,
      "status": group.status,
      "best_lr": best.lr if best else None,
      "test_acc_mean": _round(best.acc_mean) if best else None,
      "test_acc_std": _round(best.acc_std) if best else None,
      "n_seeds": best.n_seeds if best else 0,
      "best_lr_at_grid_edge": group.at_edge(best),
      "best_lr_by_train_loss": best_loss.lr if best_loss else None,
      "train_loss_at_best_lr_by_train_loss": _round(best_loss.loss_mean, 6) if best_loss else None,
      "test_acc_at_best_lr_by_train_loss": _round(best_loss.acc_mean) if best_loss else None,
      "largest_stable_lr": stable.lr if stable else None,
      "largest_stable_lr_is_grid_top": bool(stable) and stable.lr == max(c.lr for c in group.cells),
      "largest_stable_lr_is_lower_bound": group.largest_stable_is_lower_bound,
      "lrs_tried": len(group.searched),
      "lrs_not_needed": len(group.cells) - len(group.searched),
      "lrs_diverged": sum(c.state == Status.DIVERGED for c in group.cells),
      "runs_finished": group.n_finished,
      "runs_expected": group.n_expected,
  }


def _round(x, digits=4):
  return None if x is None else round(x, digits)


_NOTE_BEST = ("Cells: mean ± std test accuracy (%) over seeds at the learning rate with the best "
              "mean test accuracy among learning rates where every seed completed; \"diverged\": "
              "every learning rate diverged. * best learning rate at the edge of the grid (widen "
              "lr_exps). † some runs of the cell are unfinished: the best is over finished learning "
              "rates only.")


def method_by_depth_table(name: str, title: str, runs: list[RunResult],
                          method_order: Sequence[str] = ()) -> Table:
  """Depth table / ablation table: rows = methods, columns = depths (PAPER.md section 5)."""
  groups, warnings = group_runs(runs, _cell_key("depth"))
  methods = _order((k[0] for k in groups), method_order)
  columns = _order((k[1], k[2]) for k in groups)
  header = ["Method"] + [f"WRN-{d}-{w}" for d, w in columns]
  rows, records = [], []
  for m in methods:
    row = [label(m)]
    for d, w in columns:
      g = groups.get((m, d, w))
      row.append(best_cell_text(g))
      if g is not None:
        records.append(_record(g, method=m, depth=d, width=w))
    rows.append(row)
  return Table(name, title, header, rows, records, _runs_of(groups), [_NOTE_BEST, *warnings],
               groups)


def _nets(runs: Iterable[RunResult]) -> str:
  """"WRN-16-4" (or "WRN-10-1, WRN-16-4"): the networks the runs trained."""
  return ", ".join(dict.fromkeys(f"WRN-{r.get('model.depth')}-{r.get('model.width')}" for r in runs))


def batch_size_table(runs: list[RunResult], method_order: Sequence[str] = ()) -> Table:
  """Batch-size study (PAPER.md sections 4-5): both optimal learning rates per (batch size, method)."""
  groups, warnings = group_runs(runs, _cell_key("batch_size"))
  header = ["Batch", "Method", "Best lr (test acc)", "Test acc (%)", "Best lr (train loss)",
            "Train loss", "Test acc there (%)", "Largest stable lr", "Runs"]
  rows, records = [], []
  for bs in _order(k[0] for k in groups):
    for m in _order((k[1] for k in groups if k[0] == bs), method_order):
      g = groups[(bs, m)]
      best, best_loss, stable = g.best_by_acc, g.best_by_loss, g.largest_stable
      if g.status == "diverged":
        cells = ["diverged"] * 6
      else:
        cells = [fmt_lr(best.lr if best else None) + ("*" if g.at_edge(best) else ""), fmt_acc(best),
                 fmt_lr(best_loss.lr if best_loss else None) + ("*" if g.at_edge(best_loss) else ""),
                 f"{best_loss.loss_mean:.4f}" if best_loss else "—", fmt_acc(best_loss),
                 ("≥ " if g.largest_stable_is_lower_bound else "")
                 + fmt_lr(stable.lr if stable else None)]
      rows.append([str(bs), label(m), *cells, f"{g.n_finished}/{g.n_expected}{_progress_mark(g)}"])
      records.append(_record(g, batch_size=bs, method=m))
  notes = ["Best lr (test acc): the learning rate with the best mean test accuracy over seeds; "
           "best lr (train loss): the one with the lowest mean final training loss; both among "
           "learning rates where every seed completed. Largest stable lr: the largest learning rate "
           "at which no seed diverged (≥: a lower bound, the top of the grid or below a rate "
           "that has not finished). * at the edge of the grid (widen "
           "lr_exps). † unfinished runs in the cell. Runs: the cell's runs that finished "
           "(completed or diverged) out of all it expects, every learning rate times every seed "
           "(with lr_search=ladder, every rate its search needed).",
           *warnings]
  return Table("batch_size_table", f"Batch size vs optimal learning rate ({_nets(runs)})",
               header, rows, records, _runs_of(groups), notes, groups)


def _best_grid(groups, row_keys, col_keys, row_field: str, col_field: str):
  """best_cell_text of each (row, column) group, and the records of the cells that have runs."""
  cells, records = [], []
  for r in row_keys:
    cells.append([best_cell_text(groups.get((r, c))) for c in col_keys])
    records += [_record(groups[(r, c)], **{row_field: r, col_field: c})
                for c in col_keys if (r, c) in groups]
  return cells, records


def imagenet_table(runs: list[RunResult], method_order: Sequence[str] = ()) -> Table:
  """ImageNet table (PAPER.md section 5): best-lr top-1 per method (rows) and batch size (columns)."""
  groups, warnings = group_runs(runs, _cell_key("imagenet"))
  methods = _order((k[0] for k in groups), method_order)
  sizes = _order(k[1] for k in groups)
  cells, records = _best_grid(groups, methods, sizes, "method", "batch_size")
  rows = [[label(m), *row] for m, row in zip(methods, cells)]
  depth = next((r.get("model.depth") for r in runs), "")
  return Table("imagenet_table", f"Top-1 (%), ResNet-{depth}-V2, at the best learning rate",
               ["Method"] + [f"batch {bs}" for bs in sizes], rows, records, _runs_of(groups),
               [_NOTE_BEST.replace("test accuracy (%)", "top-1 accuracy (%)"), *warnings], groups)


def agc_table(runs: list[RunResult]) -> Table:
  """AGC study: best-lr test accuracy per batch size (rows) and clipping threshold lambda (columns)."""
  groups, warnings = group_runs(runs, _cell_key("agc"))
  sizes = _order(k[0] for k in groups)
  clips = sorted({k[1] for k in groups}, key=lambda c: (c != 0.0, c))  # "off" first
  cells, records = _best_grid(groups, sizes, clips, "batch_size", "agc_clip")
  rows = [[str(bs), *row] for bs, row in zip(sizes, cells)]
  method = label(next((r.method for r in runs), "nf"))
  return Table("agc_table", f"{method} ({_nets(runs)}): adaptive gradient clipping vs batch size "
               "(test accuracy %)",
               ["Batch"] + [("no AGC" if c == 0.0 else f"λ={c:g}") for c in clips], rows, records,
               _runs_of(groups), [_NOTE_BEST, *warnings], groups)


# ---------------------------------------------------------------------------------------- writers

def unfinished(runs: Iterable[RunResult]) -> list[RunResult]:
  """Runs that are in no mean: missing, failed, running/interrupted, or completed without metrics
  (not those the learning-rate search did not need)."""
  return [r for r in runs if r.state != NOT_NEEDED and (
      r.state not in rundir.FINISHED or (r.state == Status.COMPLETED and not r.usable))]


def needed_runs(runs: Iterable[RunResult]) -> list[RunResult]:
  """The runs a table expects: all, less those the learning-rate search did not need."""
  return [r for r in runs if r.state != NOT_NEEDED]


def search_notes(table: "Table") -> list[str]:
  """Which cells a learning-rate search (lr_search=ladder) chose the rates of, and the runs each
  took."""
  notes = list(dict.fromkeys(r.search_note for r in table.runs if r.search_note))
  if not notes:
    return []
  skipped = len(table.runs) - len(needed_runs(table.runs))
  return [f"Learning-rate search (lr_search=ladder): these cells trained only the rates their "
          f"search needed ({_count(skipped, 'run')} of the grid not needed, in no count above):",
          *[f"- {n}" for n in notes]]


def _state_text(r: RunResult) -> str:
  if r.state == Status.COMPLETED:
    return "completed without final metrics"
  return {Status.RUNNING: "running or interrupted"}.get(r.state, r.state)


def to_markdown(table: Table, max_listed: int = 50) -> str:
  lines = [f"# {table.title}", "", "| " + " | ".join(table.header) + " |",
           "|" + "|".join(" --- " for _ in table.header) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in table.rows]
  lines += [""] + [n for n in table.notes] + [""]
  todo, needed = unfinished(table.runs), needed_runs(table.runs)
  if todo:
    counts = collections.Counter(_state_text(r) for r in todo)
    lines.append(f"**{len(todo)} of {len(needed)} runs are not finished** (" +
                 ", ".join(f"{v} {k}" for k, v in counts.items()) + "); they are not in any mean:")
    lines.append("")
    lines += [f"- {_state_text(r)}: {os.path.join(r.sweep_dir, r.name)}" for r in todo[:max_listed]]
    if len(todo) > max_listed:
      lines.append(f"- ... and {len(todo) - max_listed} more (see {table.name}_runs.csv)")
  else:
    lines.append(f"All {len(needed)} runs finished (completed or diverged).")
  return "\n".join(lines) + "\n"


_LATEX = [("\\", "\\textbackslash{}"), ("_", "\\_"), ("%", "\\%"), ("&", "\\&"), ("#", "\\#"),
          ("±", "$\\pm$"), ("α", "$\\alpha$"), ("λ", "$\\lambda$"), ("√d", "$\\sqrt{d}$"),
          ("√2", "$\\sqrt{2}$"), ("√", "$\\sqrt{}$"), ("≥", "$\\geq$"), ("†", "$^\\dagger$"),
          ("—", "--")]


def latex_escape(text: str) -> str:
  for a, b in _LATEX:
    text = text.replace(a, b)
  return text


def to_latex(table: Table) -> str:
  cols = "l" * len(table.header)
  lines = [f"% {table.title} (generated by scripts/make_tables.py)",
           f"\\begin{{tabular}}{{{cols}}}", "\\toprule",
           " & ".join(latex_escape(h) for h in table.header) + " \\\\", "\\midrule"]
  lines += [" & ".join(latex_escape(c) for c in row) + " \\\\" for row in table.rows]
  lines += ["\\bottomrule", "\\end{tabular}"]
  return "\n".join(lines) + "\n"


def write_csv(path: str, records: list[dict]) -> None:
  fields = list(dict.fromkeys(k for r in records for k in r))
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in records)


def runs_records(runs: Iterable[RunResult]) -> list[dict]:
  """One row per run, for <table>_runs.csv: the raw material of every cell (accuracy in %, as
  in the tables; status.json keeps the fraction)."""
  out = []
  for r in runs:
    acc = None if r.test_acc is None else round(r.test_acc * ACC_SCALE, 4)
    out.append({"run": os.path.join(r.sweep_dir, r.name), "method": r.method,
                "depth": r.get("model.depth"), "width": r.get("model.width"),
                "batch_size": r.get("train.batch_size"), "agc_clip": r.get("train.agc_clip"),
                "lr": r.get("train.lr"), "seed": r.get("train.seed"), "epochs": r.get("train.epochs"),
                "state": r.state, "test_acc": acc, "train_loss": r.train_loss})
  return out


def write_table(table: Table, out_dir: str) -> list[str]:
  """Writes <name>.md, <name>.csv, <name>.tex and <name>_runs.csv; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  base = os.path.join(out_dir, table.name)
  with open(base + ".md", "w") as f:
    f.write(to_markdown(table))
  write_csv(base + ".csv", table.records)
  with open(base + ".tex", "w") as f:
    f.write(to_latex(table))
  write_csv(base + "_runs.csv", runs_records(table.runs))
  return [base + ext for ext in (".md", ".csv", ".tex", "_runs.csv")]


# ------------------------------------------------------------------------------------ entry point

def _same_budget(a: list[RunResult], b: list[RunResult]) -> bool:
  keys = ("train.epochs", "train.batch_size")
  return {tuple(r.get(k) for k in keys) for r in a} == {tuple(r.get(k) for k in keys) for r in b}


def build_tables(sweep_dirs: Sequence[str]) -> list[Table]:
  """Every table the given sweep directories feed (their manifests say which)."""
  by_kind: dict[str, list[RunResult]] = {}
  order: dict[str, list[str]] = {}
  seen = set()
  for d in sweep_dirs:
    if os.path.realpath(d) in seen:  # a directory given twice is one
      continue
    seen.add(os.path.realpath(d))
    manifest, runs = load_runs(d)
    by_kind.setdefault(manifest["table"], []).extend(runs)
    order.setdefault(manifest["table"], []).extend(r["method"] for r in manifest["runs"])
  tables = []
  for kind, runs in by_kind.items():
    methods = list(dict.fromkeys(order[kind]))
    if kind == "depth":
      tables.append(method_by_depth_table(
          "depth_table", "Test accuracy (%) of Wide-ResNets by depth", runs, methods))
    elif kind == "ablation":
      notes = []
      refs = [r for r in by_kind.get("depth", []) if r.method in REFERENCE_METHODS]
      if refs and _same_budget(refs, runs):
        runs = runs + refs
        present = [m for m in REFERENCE_METHODS if any(r.method == m for r in refs)]
        methods = methods + present
        notes.append(f"The {', '.join(label(m) for m in present)} rows come from the "
                     "depth-table sweep.")
      elif refs:
        notes.append("Depth-table reference rows left out: their epochs or batch size differ.")
      t = method_by_depth_table(
          "ablation_table", "Ablations: test accuracy (%) of Wide-ResNets by depth", runs,
          methods)
      t.notes = notes + t.notes
      tables.append(t)
    elif kind == "batch_size":
      tables.append(batch_size_table(runs, methods))
    elif kind == "imagenet":
      tables.append(imagenet_table(runs, methods))
    elif kind == "agc":
      tables.append(agc_table(runs))
    else:
      raise SweepError(f"sweep table kind {kind!r} is unknown to make_tables")
    tables[-1].notes += search_notes(tables[-1])
  return tables


def make_tables(sweep_dirs: Sequence[str], out_dir: str, figures: bool = True) -> list[str]:
  """Writes every table (and the batch-size and AGC figures) of the sweeps into `out_dir`."""
  written = []
  for table in build_tables(sweep_dirs):
    written += write_table(table, out_dir)
    if figures and table.name in ("batch_size_table", "agc_table"):
      from skipinit.analysis import table_figures  # matplotlib only when a figure is drawn
      written += table_figures.figures_for(table, out_dir)
  return written
