"""The learning-rate ladder (issue 16): an adaptive search for a table cell's best learning rate.

A table cell (PAPER.md section 4) is a method x depth or method x batch size experiment trained
over a learning-rate grid and seeds. The grid search trains every rate; the ladder trains only
those the search needs, walking the grid's rates (sorted; for the powers-of-2 grids, steps of
x2) outward from a centre:
  * upward until a rate diverges, or the `patience` highest rates searched are all worse than the
    cell's best by BOTH criteria (lower mean test accuracy AND higher mean final training loss),
    or the top of the grid: the grid (`lr_exps`) bounds the search;
  * downward the same way; from a centre that diverged it keeps going down until a rate is stable.
A rate counts when all its seeds finished: it is *ok* when every seed completed, *diverged* when
any seed diverged (its other seeds are then not needed), else *pending*; means are over seeds. These
are skipinit.analysis.tables' definitions, and the picks are too: the best rate by max mean test
accuracy (ties: the smaller rate), by min mean final training loss (ties: the smaller rate), the
largest stable rate (a lower bound unless the next rate up diverged) and the edge mark (a best rate
at the smallest or largest rate of the grid: the search hit its bound, widen lr_exps).

The run directories are the search's only state: `search` is a pure function of the runs' outcomes.
The *searched range* is the span from the smallest to the largest rate that has finished (or,
before any has, the centre): every rate inside it is needed, so a relaunch, a kill -9 mid-wave or
a moved centre never drops a finished run. A run started speculatively beyond a walk that then
ended is "not needed" and stays as it is.

What makes the picks equal the grid's (the assumption): over the grid, the mean test accuracy is
unimodal in log lr (non-decreasing, then non-increasing; a plateau of equal rates included), so is
the mean final training loss (non-increasing then non-decreasing), and stability is monotone (every
rate above a diverged one diverges). Then an end stopped by patience lies above (below) every best
rate of the grid, because its rate is strictly worse than a rate inside the searched range, so
every rate beyond it is worse still; an end stopped by divergence has only diverged rates beyond;
and ties (a plateau at the optimum) are never "worse", so the walk crosses them and the same
smallest rate wins. Patience 1 suffices under the assumption; 2 (the default) guards against a
noisy mean that dips once. The largest stable lr means what the grid's means only when the upward
walk goes on to a divergence or the top of the grid (`climb=True`); otherwise it is the largest
rate searched, marked a lower bound ("≥") unless the rate above it diverged: still true, but less.
"""

import dataclasses
import heapq
import math
from typing import Callable, Hashable, Mapping, Sequence

from skipinit.errors import ConfigError
from skipinit.rundir import FINISHED, MISSING, Status

PATIENCE = 2
# As skipinit.analysis.tables: accuracies are compared as percentages, so that two means the
# tables print as equal (and break by the smaller rate) are equal here too.
ACC_SCALE = 100.0

OK, DIVERGED, PENDING = "ok", "diverged", "pending"


@dataclasses.dataclass(frozen=True)
class Outcome:
  """How one run (one rate, one seed) stands: its run directory's state (rundir.run_state:
  completed | diverged | failed | running | missing) and, when completed, its final metrics."""

  state: str = MISSING
  test_acc: float | None = None
  train_loss: float | None = None

  @property
  def usable(self) -> bool:
    return self.state == Status.COMPLETED and _finite(self.test_acc) and _finite(self.train_loss)


def _finite(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x)


@dataclasses.dataclass(frozen=True)
class Rate:
  """All seeds of one learning rate."""

  lr: float
  state: str                 # ok | diverged | pending
  acc: float | None          # mean test accuracy (%) when ok
  loss: float | None         # mean final training loss when ok
  to_train: tuple = ()       # seeds still to train (not finished) when pending
  stuck: tuple = ()          # seeds completed without usable metrics: no relaunch fixes them
  started: bool = False      # some seed has a run directory state


@dataclasses.dataclass(frozen=True)
class Proposal:
  """A run the search wants trained, and why."""

  lr: float
  seed: int
  reason: str
  speculative: bool = False


@dataclasses.dataclass(frozen=True)
class Picks:
  """What the table reports for the cell, with tables.Group's definitions (None: no ok rate)."""

  best_lr: float | None
  best_acc: float | None
  best_loss_lr: float | None
  best_loss: float | None
  largest_stable_lr: float | None
  largest_stable_is_lower_bound: bool
  best_at_edge: bool
  best_loss_at_edge: bool
  status: str                # ok | diverged (ended, every rate searched diverged) | incomplete


@dataclasses.dataclass(frozen=True)
class Decision:
  """The search's state for one cell: what to train next and why, or that it has ended."""

  lrs: tuple
  centre: float
  centre_reason: str
  ended: bool
  up: str                    # how the upward walk stands ("ended: ...", "next: ...", "waiting ...")
  down: str
  searched: tuple            # the rates of the searched range (all needed)
  runs: tuple                # Proposals to train now (needed), in order
  speculative: tuple         # Proposals beyond the walk's ends, nearest first, alternating sides
  stuck: tuple               # (lr, seed) of needed runs that completed without usable metrics
  picks: Picks
  started: bool              # some run of the cell has a run directory state

  @property
  def needed_lrs(self) -> tuple:
    """The rates the search needs: the searched range and the next rate of each open walk."""
    return tuple(sorted(set(self.searched) | {p.lr for p in self.runs}))


# ------------------------------------------------------------------------------------------ centres

def grid_centre(lrs: Sequence[float]) -> float:
  """The grid's middle rate (the lower of the two middles of an even grid)."""
  lrs = sorted(lrs)
  return lrs[(len(lrs) - 1) // 2]


def nearest_rate(lrs: Sequence[float], lr: float) -> float:
  """The grid rate nearest to `lr` in log lr (ties: the smaller)."""
  return min(sorted(lrs), key=lambda r: (abs(math.log2(r) - math.log2(lr)), r))


def batch_centre(lrs: Sequence[float], batch: int, anchors: Mapping[int, float]) -> tuple | None:
  """A centre that follows the batch size (PAPER.md section 5: optimal lr ~ batch size).

  anchors: {batch size: best lr} of cells whose search ended (the same method, preferably). The
  nearest batch size in log scale (ties: the smaller) is scaled by batch / its batch and snapped
  to the grid; returns (lr, reason), or None without anchors.
  """
  if not anchors:
    return None
  b0 = min(anchors, key=lambda b: (abs(math.log2(b) - math.log2(batch)), b))
  lr = nearest_rate(lrs, anchors[b0] * batch / b0)
  return lr, f"follows batch {b0}'s best lr {anchors[b0]:g} x {batch}/{b0}"


# ------------------------------------------------------------------------------------------- search

def check_patience(patience) -> int:
  if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
    raise ConfigError(f"lr search patience={patience!r} is not allowed: use an integer >= 1 (the "
                      f"number of consecutive worse rates that ends a walk; default {PATIENCE})")
  return patience


def aggregate(lrs: Sequence[float], seeds: Sequence[int], results: Mapping) -> list[Rate]:
  """One Rate per grid rate from {(lr, seed): Outcome} (absent: missing)."""
  rates = []
  for lr in lrs:
    outs = [(s, results.get((lr, s), Outcome())) for s in seeds]
    started = any(o.state != MISSING for _, o in outs)
    if any(o.state == Status.DIVERGED for _, o in outs):
      rates.append(Rate(lr, DIVERGED, None, None, started=started))
    elif all(o.usable for _, o in outs):
      accs = [o.test_acc for _, o in outs]
      losses = [o.train_loss for _, o in outs]
      rates.append(Rate(lr, OK, sum(accs) / len(accs) * ACC_SCALE, sum(losses) / len(losses),
                        started=started))
    else:
      rates.append(Rate(lr, PENDING, None, None,
                        to_train=tuple(s for s, o in outs if o.state not in FINISHED),
                        stuck=tuple(s for s, o in outs if o.state == Status.COMPLETED and not o.usable),
                        started=started))
  return rates


def _picks(lrs, rates, lo, hi, ended) -> Picks:
  ok = [r for r in rates[lo:hi + 1] if r.state == OK]
  best = max(ok, key=lambda r: (r.acc, -r.lr), default=None)
  best_loss = min(ok, key=lambda r: (r.loss, r.lr), default=None)
  stable = max(ok, key=lambda r: r.lr, default=None)
  lower_bound = False
  if stable is not None:
    i = lrs.index(stable.lr)
    # Tables' rule: exact only when the next rate up diverged (a rate the search did not need
    # above it is like one not yet finished: the stable rate is a lower bound).
    lower_bound = i + 1 >= len(lrs) or rates[i + 1].state != DIVERGED
  edge = lambda r: r is not None and len(lrs) > 1 and r.lr in (lrs[0], lrs[-1])
  status = "ok" if ok else ("diverged" if ended else "incomplete")
  return Picks(best.lr if best else None, best.acc if best else None,
               best_loss.lr if best_loss else None, best_loss.loss if best_loss else None,
               stable.lr if stable else None, lower_bound, edge(best), edge(best_loss), status)


def search(lrs: Sequence[float], seeds: Sequence[int], results: Mapping, centre: float | None = None,
           patience: int = PATIENCE, climb: bool = False, centre_reason: str = "") -> Decision:
  """What the ladder needs next for one table cell (see the module docstring).

  lrs: the grid (its bounds bound the search); seeds: every seed a rate needs; results:
  {(lr, seed): Outcome} of the runs that exist; centre: where the walk starts (default: the
  grid's middle); climb: walk upward until a rate diverges or the grid's top, so that the
  largest stable lr is the grid's.
  """
  check_patience(patience)
  lrs = sorted(float(x) for x in lrs)
  if not lrs or len(set(lrs)) != len(lrs) or lrs[0] <= 0:
    raise ConfigError(f"lr search: the grid {lrs} must hold distinct positive learning rates")
  seeds = list(seeds)
  if not seeds:
    raise ConfigError("lr search: a cell needs at least one seed")
  outside = sorted({lr for lr, _ in results} - set(lrs))
  if outside:
    raise ConfigError(f"lr search: results at lr {outside} lie outside the grid {lrs}")
  if centre is None:
    centre, centre_reason = grid_centre(lrs), centre_reason or "the grid's middle"
  elif float(centre) not in lrs:
    raise ConfigError(f"lr search: centre {centre!r} is not a rate of the grid {lrs}")
  centre = float(centre)
  rates = aggregate(lrs, seeds, results)
  n = len(lrs)
  resolved = [i for i, r in enumerate(rates) if r.state != PENDING]
  started = [i for i, r in enumerate(rates) if r.started]
  if resolved:
    lo, hi = min(resolved), max(resolved)
  else:
    c = lrs.index(centre)
    if started:  # the first wave was cut short: resume it rather than start a moved centre
      c = min(started, key=lambda i: (abs(i - c), i))
      if lrs[c] != centre:
        centre, centre_reason = lrs[c], "the rate the interrupted first wave started"
    lo = hi = c

  runs, stuck = [], []

  def need(i, reason):
    for s in rates[i].to_train:
      runs.append(Proposal(lrs[i], s, reason))
    stuck.extend((lrs[i], s) for s in rates[i].stuck)

  if not resolved:
    need(lo, "centre")
    up = down = f"waiting for the centre {lrs[lo]:g}"
    ended_up = ended_down = False
    front_up = front_down = lo
  else:
    for i in range(lo, hi + 1):
      if rates[i].state == PENDING:
        need(i, "inside the searched range")
    ok = [r for r in rates[lo:hi + 1] if r.state == OK]
    best_acc = max((r.acc for r in ok), default=None)
    best_loss = min((r.loss for r in ok), default=None)

    def worse(r):
      return r.state == OK and r.acc < best_acc and r.loss > best_loss

    def trailing(order):
      """(consecutive worse rates from the walk's end, whether a pending rate cut the count)."""
      count = 0
      for i in order:
        if count >= patience:
          break
        if rates[i].state == PENDING:
          return count, True
        if not worse(rates[i]):
          break
        count += 1
      return count, False

    # Upward.
    ended_up, front_up = True, hi
    if rates[hi].state == DIVERGED:
      up = f"ended: {lrs[hi]:g} diverged"
    elif hi == n - 1:
      up = f"ended: top of the grid ({lrs[hi]:g})"
    elif climb:
      ended_up, front_up = False, hi + 1
      up = f"next: {lrs[hi + 1]:g} (climbing to the largest stable lr)"
      need(hi + 1, "above: climbing to the largest stable lr")
    else:
      count, cut = trailing(range(hi, lo - 1, -1))
      if count >= patience:
        up = f"ended: {count} of {patience} worse above the best"
      elif cut:
        ended_up = False
        up = f"waiting: {count} of {patience} worse above the best, a rate below is unfinished"
      else:
        ended_up, front_up = False, hi + 1
        up = f"next: {lrs[hi + 1]:g} (above best, {count} of {patience} worse)"
        need(hi + 1, f"above best, {count} of {patience} worse")
    # Downward.
    ended_down, front_down = True, lo
    if rates[lo].state == DIVERGED and ok:
      down = f"ended: {lrs[lo]:g} diverged"
    elif lo == 0:
      down = f"ended: bottom of the grid ({lrs[lo]:g})"
    elif rates[lo].state == DIVERGED:
      ended_down, front_down = False, lo - 1
      down = f"next: {lrs[lo - 1]:g} (below: every rate searched diverged)"
      need(lo - 1, "below: every rate searched diverged")
    else:
      count, cut = trailing(range(lo, hi + 1))
      if count >= patience:
        down = f"ended: {count} of {patience} worse below the best"
      elif cut:
        ended_down = False
        down = f"waiting: {count} of {patience} worse below the best, a rate above is unfinished"
      else:
        ended_down, front_down = False, lo - 1
        down = f"next: {lrs[lo - 1]:g} (below best, {count} of {patience} worse)"
        need(lo - 1, f"below best, {count} of {patience} worse")

  # Speculation: the rates beyond each open walk's next rate, nearest first, alternating sides.
  speculative = []
  ups = [] if ended_up else list(range(front_up + 1, n))
  downs = [] if ended_down else list(range(front_down - 1, -1, -1))
  for k in range(max(len(ups), len(downs))):
    for side, order in (("above", ups), ("below", downs)):
      if k < len(order):
        i = order[k]
        speculative += [Proposal(lrs[i], s, f"speculative: {side}, {k + 1} beyond the walk", True)
                        for s in rates[i].to_train]
  ended = ended_up and ended_down and not runs and not stuck
  return Decision(tuple(lrs), centre, centre_reason, ended, up, down, tuple(lrs[lo:hi + 1]),
                  tuple(runs), tuple(speculative), tuple(stuck), _picks(lrs, rates, lo, hi, ended),
                  bool(started))


# --------------------------------------------------------------------------------- many cells

# A table's cells, as skipinit.analysis.tables groups its runs: table kind -> (the cell key of a
# run from its method and a getter of its config values, the key's labels). One place for the
# tables, the launcher and the replay, so that they search and report the same cells.
CELL_KEYS = {
    "depth": (lambda method, get: (method, get("model.depth"), get("model.width")),
              ("method", "depth", "width")),
    "ablation": (lambda method, get: (method, get("model.depth"), get("model.width")),
                 ("method", "depth", "width")),
    "batch_size": (lambda method, get: (get("train.batch_size"), method), ("batch", "method")),
    "imagenet": (lambda method, get: (method, get("train.batch_size")), ("method", "batch")),
    "agc": (lambda method, get: (get("train.batch_size"), float(get("train.agc_clip") or 0.0)),
            ("batch", "agc_clip")),
}
# Which part of a cell's key names the cells whose optima inform each other's centre (the method,
# or the clipping threshold), for a centre that follows the batch size.
BATCH_GROUP = {"batch_size": 1, "imagenet": 0, "agc": 1}


def cell_key(table: str, method: str, get: Callable) -> tuple:
  return CELL_KEYS[table][0](method, get)


def schedule(decisions: Mapping[Hashable, Decision], idle: int | None = None,
             busy: frozenset = frozenset(), informed: frozenset = frozenset()) -> list:
  """[(cell key, Proposal)] to start now over all cells, in order.

  First the needed runs of cells already started, then the first runs of cells whose centre is
  `informed` (follows a finished cell), then those of the others (cells keep their given order).
  With `idle` workers, at most that many, and when fewer are needed, speculative runs fill the
  rest, one rate per cell in turn (nearest first). `busy`: (key, lr, seed) already training.
  Without `idle`: every needed run, no speculation.
  """
  tiers = ([], [], [])
  for key, d in decisions.items():
    tier = 0 if d.started else (1 if key in informed else 2)
    tiers[tier].extend((key, p) for p in d.runs if (key, p.lr, p.seed) not in busy)
  out = tiers[0] + tiers[1] + tiers[2]
  if idle is None:
    return out
  out = out[:max(idle, 0)]
  pools = [[(key, p) for p in d.speculative if (key, p.lr, p.seed) not in busy]
           for key, d in decisions.items()]
  while len(out) < idle and any(pools):
    for pool in pools:
      if pool and len(out) < idle:
        out.append(pool.pop(0))
  return out


@dataclasses.dataclass
class CellSpec:
  """A table cell for `decide_all`: its grid and seeds; for `simulate`, also a finished grid's
  outcome and cost of every run."""

  lrs: Sequence[float]
  seeds: Sequence[int]
  batch: int | None = None   # for a centre that follows the batch size
  group: Hashable = None     # cells of one group (a method) inform each other's centres
  oracle: Mapping = dataclasses.field(default_factory=dict)  # {(lr, seed): Outcome}
  cost: Mapping = dataclasses.field(default_factory=dict)    # {(lr, seed): duration (any unit)}


@dataclasses.dataclass
class SimResult:
  launched: dict             # key -> [(lr, seed, speculative)] in launch order
  decisions: dict            # key -> final Decision
  unavailable: dict          # key -> [(lr, seed)] needed but not in the grid (unfinished there)
  makespan: float            # when the last run ended (cost units, `workers` at once)


def _centres(cells, decisions, follow_batch):
  """{key: (centre, reason)} for cells not started; informed keys."""
  out, informed = {}, set()
  for key, cell in cells.items():
    if not follow_batch or cell.batch is None:
      continue
    anchors = {c.batch: decisions[k].picks.best_lr for k, c in cells.items()
               if k != key and decisions[k].ended and decisions[k].picks.best_lr is not None
               and c.group == cell.group and c.batch is not None}
    found = batch_centre(cell.lrs, cell.batch, anchors)
    if found:
      out[key] = found
      informed.add(key)
  return out, frozenset(informed)


def decide_all(cells: Mapping[Hashable, "CellSpec"], results: Mapping, patience: int = PATIENCE,
               climb: bool = False, follow_batch: bool = False) -> tuple[dict, frozenset]:
  """Every cell's Decision from {key: {(lr, seed): Outcome}}; the keys whose centre follows the
  batch size of a cell that ended (follow_batch). Cells already started keep their searched range,
  so a centre that moves between launches never drops a run."""
  decisions = {k: search(c.lrs, c.seeds, results[k], patience=patience, climb=climb)
               for k, c in cells.items()}
  centres, informed = _centres(cells, decisions, follow_batch)
  for k, (lr, why) in centres.items():  # (no effect on a cell with a finished rate)
    decisions[k] = search(cells[k].lrs, cells[k].seeds, results[k], centre=lr,
                          patience=patience, climb=climb, centre_reason=why)
  return decisions, frozenset(k for k in informed if not decisions[k].started)


def simulate(cells: Mapping[Hashable, CellSpec], workers: int | None = None,
             patience: int = PATIENCE, climb: bool = False, speculate: bool = False,
             follow_batch: bool = False) -> SimResult:
  """Replays the ladder over finished grids: runs start when the search asks for them (and, with
  `speculate`, on idle workers), end after their cost, and only then reveal their outcome.

  workers=None: as many at once as asked (no speculation). After every run's end the search
  recomputes over all cells, as a launcher would from the run directories.
  """
  check_patience(patience)
  results = {k: {} for k in cells}
  launched = {k: [] for k in cells}
  unavailable = {k: set() for k in cells}
  # Runs the grid did not finish are never launched (a needed one is reported as unavailable).
  absent = {(k, lr, s) for k, c in cells.items() for lr in c.lrs for s in c.seeds
            if c.oracle.get((lr, s), Outcome()).state not in FINISHED}
  running = []  # heap of (end time, launch order, key, lr, seed)
  t, order = 0.0, 0
  while True:
    decisions, informed = decide_all(cells, results, patience, climb, follow_batch)
    for key, d in decisions.items():
      unavailable[key].update((p.lr, p.seed) for p in d.runs if (key, p.lr, p.seed) in absent)
    busy = frozenset((k, lr, s) for _, _, k, lr, s in running) | absent
    idle = None if workers is None else workers - len(running)
    if idle is not None and not speculate:
      todo = schedule(decisions, None, busy, informed)[:idle]
    else:
      todo = schedule(decisions, idle, busy, informed)
    for key, p in todo:
      results[key][(p.lr, p.seed)] = Outcome(Status.RUNNING)
      launched[key].append((p.lr, p.seed, p.speculative))
      heapq.heappush(running, (t + cells[key].cost[(p.lr, p.seed)], order, key, p.lr, p.seed))
      order += 1
    if not running:
      break
    t = running[0][0]
    while running and running[0][0] == t:
      _, _, key, lr, s = heapq.heappop(running)
      results[key][(lr, s)] = cells[key].oracle[(lr, s)]
  decisions, _ = decide_all(cells, results, patience, climb, follow_batch)
  return SimResult(launched, decisions, {k: sorted(v) for k, v in unavailable.items() if v}, t)


def grid_search(lrs: Sequence[float], seeds: Sequence[int], results: Mapping) -> Picks:
  """The full grid's picks with the same definitions (every rate searched)."""
  lrs = sorted(float(x) for x in lrs)
  rates = aggregate(lrs, list(seeds), results)
  ended = all(r.state != PENDING for r in rates)
  return _picks(lrs, rates, 0, len(lrs) - 1, ended)


__all__ = ["ACC_SCALE", "BATCH_GROUP", "CELL_KEYS", "PATIENCE", "cell_key", "Decision", "Outcome", "Picks", "Proposal", "Rate", "CellSpec",
           "SimResult", "aggregate", "batch_centre", "check_patience", "decide_all", "grid_centre",
           "grid_search", "nearest_rate", "schedule", "search", "simulate"]
