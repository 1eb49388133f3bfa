"""The learning-rate ladder (issue 16): its decisions on hand-made results, its picks against the
full grid's (and against skipinit.analysis.tables' definitions), and the replay script."""

import csv
import importlib.util
import json
import math
import os
import random
import subprocess
import sys

import pytest

from skipinit.analysis import tables
from skipinit.errors import ConfigError
from skipinit.sweep import ladder
from skipinit.sweep.ladder import Outcome

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LRS = [2.0 ** e for e in range(-6, 2)]  # 2^-6 .. 2^1: 8 rates, middle 2^-3
SEEDS = (0, 1)
D = "D"  # a diverged seed


def results(cell: dict, seeds=SEEDS) -> dict:
  """{lr: value or [value per seed]} -> {(lr, seed): Outcome}; a value is (acc, loss) or D."""
  out = {}
  for lr, per_seed in cell.items():
    if not isinstance(per_seed, list):
      per_seed = [per_seed] * len(seeds)
    for s, v in zip(seeds, per_seed):
      if v is None:
        continue
      out[(lr, s)] = Outcome("diverged") if v == D else Outcome("completed", v[0], v[1])
  return out


def walk(surface: dict, seeds=SEEDS, **kw):
  """Runs the ladder to its end on a complete grid, one launch (wave) at a time: returns
  (final decision, rates trained, number of launches)."""
  got, waves = {}, 0
  while True:
    d = ladder.search(LRS, seeds, results(got, seeds), **kw)
    if d.ended:
      return d, sorted(got), waves
    assert d.runs, d
    waves += 1
    for p in d.runs:
      got.setdefault(p.lr, [None] * len(seeds))
      v = surface[p.lr]
      got[p.lr][seeds.index(p.seed)] = v[seeds.index(p.seed)] if isinstance(v, list) else v


def unimodal(peak_exp: float, loss_peak_exp: float | None = None, top_stable: float = 99):
  loss_peak_exp = peak_exp if loss_peak_exp is None else loss_peak_exp
  return {lr: (D if math.log2(lr) > top_stable else
               (0.9 - 0.01 * (math.log2(lr) - peak_exp) ** 2,
                0.1 + 0.05 * (math.log2(lr) - loss_peak_exp) ** 2)) for lr in LRS}


def grid_picks(surface, seeds=SEEDS):
  return ladder.grid_search(LRS, seeds, results(surface, seeds))


def same_picks(a: ladder.Picks, b: ladder.Picks, stable=True) -> bool:
  keys = ["best_lr", "best_loss_lr", "best_at_edge", "best_loss_at_edge", "status"]
  if stable:
    keys += ["largest_stable_lr", "largest_stable_is_lower_bound"]
  return all(getattr(a, k) == getattr(b, k) for k in keys)


# ------------------------------------------------------------------------------------ decisions

def test_fresh_cell_trains_the_centre_and_speculates_on_both_sides():
  d = ladder.search(LRS, SEEDS, {})
  assert d.centre == 2.0 ** -3 and d.centre_reason == "the grid's middle"
  assert [(p.lr, p.seed, p.reason) for p in d.runs] == [(0.125, 0, "centre"), (0.125, 1, "centre")]
  assert not d.ended and d.picks.status == "incomplete"
  spec = [(math.log2(p.lr), p.speculative) for p in d.speculative[:6]]
  assert spec == [(-2, True), (-2, True), (-4, True), (-4, True), (-1, True), (-1, True)]


def test_unimodal_walk_reasons_and_end():
  surface = unimodal(-4)
  d = ladder.search(LRS, SEEDS, results({0.125: surface[0.125]}))
  assert {p.reason for p in d.runs} == {"above best, 0 of 2 worse", "below best, 0 of 2 worse"}
  d = ladder.search(LRS, SEEDS, results({lr: surface[lr] for lr in LRS[1:4]}))  # 2^-5 .. 2^-3
  # 2^-3 is worse than the best (2^-4), 2^-4 is the best: upward 1 of 2 worse -> 2^-2.
  assert [(math.log2(p.lr), p.reason) for p in d.runs] == [
      (-2, "above best, 1 of 2 worse"), (-2, "above best, 1 of 2 worse"),
      (-6, "below best, 1 of 2 worse"), (-6, "below best, 1 of 2 worse")]
  d, trained, _ = walk(surface)
  assert d.ended and d.up.startswith("ended: 2 of 2 worse") and d.down.startswith("ended: bottom")
  assert [math.log2(lr) for lr in trained] == [-6, -5, -4, -3, -2]  # 2^-1, 2^0, 2^1 not needed
  assert d.picks.best_lr == 2.0 ** -4 and d.picks.best_loss_lr == 2.0 ** -4
  assert same_picks(d.picks, grid_picks(surface), stable=False)
  # Without climbing, the largest stable lr is the largest searched, a lower bound ("≥").
  assert d.picks.largest_stable_lr == 0.25 and d.picks.largest_stable_is_lower_bound


def test_patience_1_stops_one_rate_earlier_than_2():
  surface = unimodal(-3)
  d1, t1, _ = walk(surface, patience=1)
  d2, t2, _ = walk(surface, patience=2)
  assert [math.log2(x) for x in t1] == [-4, -3, -2]
  assert [math.log2(x) for x in t2] == [-5, -4, -3, -2, -1]
  assert d1.picks.best_lr == d2.picks.best_lr == grid_picks(surface).best_lr == 0.125


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, None])
def test_invalid_patience_is_a_config_error(bad):
  with pytest.raises(ConfigError, match="patience"):
    ladder.search(LRS, SEEDS, {}, patience=bad)
  with pytest.raises(ConfigError, match="patience"):
    ladder.simulate({}, patience=bad)


def test_bad_grid_centre_or_results_are_config_errors():
  with pytest.raises(ConfigError, match="centre"):
    ladder.search(LRS, SEEDS, {}, centre=0.3)
  with pytest.raises(ConfigError, match="outside the grid"):
    ladder.search(LRS, SEEDS, {(0.3, 0): Outcome("completed", 0.5, 1.0)})
  with pytest.raises(ConfigError, match="distinct positive"):
    ladder.search([0.1, 0.1], SEEDS, {})


def test_diverged_top_ends_the_upward_walk_and_the_stable_lr_is_exact():
  # Best at the largest stable rate 2^-2; 2^-1 and above diverge.
  surface = unimodal(-1, top_stable=-2)
  d, trained, _ = walk(surface)
  assert d.up == "ended: 0.5 diverged"
  assert [math.log2(x) for x in trained] == [-4, -3, -2, -1]  # 2^-3, 2^-4: 2 of 2 worse below
  assert d.picks.best_lr == 0.25 and not d.picks.best_at_edge
  assert d.picks.largest_stable_lr == 0.25 and not d.picks.largest_stable_is_lower_bound
  assert same_picks(d.picks, grid_picks(surface))


def test_one_diverged_seed_makes_the_rate_diverged_and_its_other_seed_not_needed():
  surface = unimodal(-1)
  got = results({lr: surface[lr] for lr in LRS[:4]})
  got[(0.25, 0)] = Outcome("diverged")  # seed 1 of 2^-2 never started
  d = ladder.search(LRS, SEEDS, got)
  assert d.up == "ended: 0.25 diverged"
  assert all(p.lr != 0.25 for p in d.runs + d.speculative)


def test_a_missing_seed_is_trained_and_holds_the_search():
  surface = unimodal(-4)
  got = results({lr: surface[lr] for lr in LRS[:5]})
  del got[(0.25, 1)]  # 2^-2 has one seed finished: the rate is pending, not ok
  d = ladder.search(LRS, SEEDS, got)
  assert [(p.lr, p.seed, p.reason) for p in d.runs] == [(0.25, 1, "above best, 1 of 2 worse")]
  assert not d.ended and d.up == "next: 0.25 (above best, 1 of 2 worse)"
  got[(0.25, 1)] = Outcome("running")  # (an interrupted run: trained again, resuming)
  assert [(p.lr, p.seed) for p in ladder.search(LRS, SEEDS, got).runs] == [(0.25, 1)]
  got[(0.25, 1)] = Outcome("completed", *surface[0.25])
  assert ladder.search(LRS, SEEDS, got).ended
  # A seed missing inside the searched range holds the walk that counts through it.
  got = results({lr: surface[lr] for lr in LRS[1:5]})  # 2^-5 .. 2^-2
  del got[(0.125, 1)]
  d = ladder.search(LRS, SEEDS, got)
  assert d.up.startswith("waiting: 1 of 2 worse") and not d.ended
  assert [(math.log2(p.lr), p.seed, p.reason) for p in d.runs] == [
      (-3, 1, "inside the searched range"), (-6, 0, "below best, 1 of 2 worse"),
      (-6, 1, "below best, 1 of 2 worse")]


def test_a_run_completed_without_metrics_is_reported_stuck():
  got = results({0.125: (0.9, 0.1)})
  got[(0.125, 1)] = Outcome("completed", None, None)
  d = ladder.search(LRS, SEEDS, got)
  assert d.stuck == ((0.125, 1),) and not d.runs and not d.ended


def test_plateau_is_crossed_and_its_smallest_rate_wins_as_in_the_grid():
  # Equal accuracy and loss from 2^-4 to 2^-1: never "worse", so the walk crosses the plateau.
  surface = {lr: ((0.9, 0.1) if -4 <= math.log2(lr) <= -1 else (0.8, 0.3)) for lr in LRS}
  d, trained, _ = walk(surface)
  assert [math.log2(x) for x in trained] == [-6, -5, -4, -3, -2, -1, 0, 1]
  assert d.picks.best_lr == d.picks.best_loss_lr == 2.0 ** -4
  assert same_picks(d.picks, grid_picks(surface))


@pytest.mark.parametrize("peak,edge_lr", [(-8, 2.0 ** -6), (5, 2.0)])
def test_optimum_at_each_bound_is_marked_at_the_edge(peak, edge_lr):
  d, trained, _ = walk(unimodal(peak))
  assert d.picks.best_lr == d.picks.best_loss_lr == edge_lr
  assert d.picks.best_at_edge and d.picks.best_loss_at_edge
  assert edge_lr in trained
  assert (d.down if peak < 0 else d.up).startswith("ended: " + ("bottom" if peak < 0 else "top"))
  assert same_picks(d.picks, grid_picks(unimodal(peak)), stable=False)


def test_both_criteria_must_be_worse_to_stop():
  # Accuracy peaks at 2^-4, the loss keeps falling up to 2^0: the walk goes on up to 2^1 for it.
  surface = unimodal(-4, loss_peak_exp=0)
  d, trained, _ = walk(surface)
  assert d.picks.best_lr == 2.0 ** -4 and d.picks.best_loss_lr == 1.0
  assert max(trained) == 2.0
  assert same_picks(d.picks, grid_picks(surface), stable=False)


def test_climb_goes_up_to_divergence_for_the_largest_stable_lr():
  surface = unimodal(-5, top_stable=0)
  plain, t_plain, _ = walk(surface)
  climbed, t_climb, _ = walk(surface, climb=True)
  assert plain.picks.largest_stable_is_lower_bound and max(t_plain) == 0.25
  assert max(t_climb) == 2.0 and climbed.up == "ended: 2 diverged"
  assert climbed.picks.largest_stable_lr == 1.0 and not climbed.picks.largest_stable_is_lower_bound
  assert same_picks(climbed.picks, grid_picks(surface))


def test_diverged_centre_walks_down_to_a_stable_rate():
  surface = unimodal(-6, top_stable=-5)
  d, trained, _ = walk(surface)
  assert d.up == "ended: 0.125 diverged" and d.picks.best_lr == 2.0 ** -6
  assert [math.log2(x) for x in trained] == [-6, -5, -4, -3]
  assert same_picks(d.picks, grid_picks(surface))
  every = walk({lr: D for lr in LRS})[0]
  assert every.ended and every.picks.status == "diverged" == grid_picks({lr: D for lr in LRS}).status


def test_finished_runs_are_never_dropped_and_unneeded_speculation_is_left():
  surface = unimodal(-3)
  # A finished rate far from the centre (a moved centre, or a speculative run): the searched range
  # reaches it, so the rates between are needed.
  got = results({0.125: surface[0.125], 1.0: surface[1.0]})
  d = ladder.search(LRS, SEEDS, got)
  assert {math.log2(p.lr) for p in d.runs} >= {-2, -1}
  # A speculative run started above a walk that then ended is not needed and not trained.
  done = results({lr: surface[lr] for lr in LRS[:6]})  # 2^-6 .. 2^-1: ended (2 of 2 worse above)
  done[(2.0, 0)] = Outcome("running")
  d = ladder.search(LRS, SEEDS, done)
  assert d.ended and 2.0 not in d.needed_lrs


def test_interrupted_first_wave_resumes_where_it_started():
  got = {(0.25, 0): Outcome("running"), (0.25, 1): Outcome("missing")}
  d = ladder.search(LRS, SEEDS, got)  # the grid's middle is 2^-3, but 2^-2 was started
  assert d.centre == 0.25 and [(p.lr, p.seed) for p in d.runs] == [(0.25, 0), (0.25, 1)]


def test_batch_centre_follows_the_nearest_finished_batch():
  assert ladder.batch_centre(LRS, 256, {}) is None
  lr, why = ladder.batch_centre(LRS, 256, {64: 2.0 ** -4, 1024: 2.0 ** 1})
  assert lr == 2.0 ** -2 and "batch 64" in why  # 64 and 1024 are equally far: the smaller
  assert ladder.batch_centre(LRS, 4096, {64: 2.0 ** -4})[0] == 2.0  # snapped to the grid's top


def test_schedule_orders_needed_then_speculative():
  fresh = ladder.search(LRS, SEEDS, {})
  started = ladder.search(LRS, SEEDS, results({0.125: (0.9, 0.1)}))
  plan = ladder.schedule({"a": fresh, "b": started}, idle=6)
  assert [k for k, _ in plan[:6]] == ["b"] * 4 + ["a"] * 2
  plan = ladder.schedule({"a": fresh}, idle=5)
  assert [p.speculative for _, p in plan] == [False, False, True, True, True]
  assert ladder.schedule({"a": fresh}, busy=frozenset({("a", 0.125, 0)})) == [("a", fresh.runs[1])]


# ------------------------------------------------------------------- against the grid, at random

def _random_surface(rng, seeds):
  peak, lpeak = rng.uniform(-8, 3), rng.uniform(-8, 3)
  top = rng.choice([99, rng.uniform(-7, 1)])
  return {lr: [D if math.log2(lr) > top else
               (0.9 - 0.02 * (math.log2(lr) - peak) ** 2 + rng.gauss(0, 0.002),
                0.1 + 0.05 * (math.log2(lr) - lpeak) ** 2 * (1 + rng.gauss(0, 0.02)))
               for _ in seeds] for lr in LRS}


def _unimodal_means(surface, seeds):
  rates = ladder.aggregate(LRS, seeds, results(surface, seeds))
  ok = [r for r in rates if r.state == "ok"]
  def single_peak(v):
    i = v.index(max(v)) if v else 0
    return all(a <= b for a, b in zip(v[:i], v[1:i + 1])) and all(
        a >= b for a, b in zip(v[i:], v[i + 1:]))
  return single_peak([r.acc for r in ok]) and single_peak([-r.loss for r in ok])


@pytest.mark.parametrize("patience", [1, 2, 3])
def test_random_unimodal_cells_give_the_grids_picks(patience):
  rng = random.Random(patience)
  checked = 0
  for _ in range(150):
    surface = _random_surface(rng, SEEDS)
    if not _unimodal_means(surface, SEEDS):
      continue
    checked += 1
    for climb in (False, True):
      d, trained, _ = walk(surface, patience=patience, climb=climb)
      assert same_picks(d.picks, grid_picks(surface), stable=climb), (surface, patience, climb)
  assert checked > 100


def test_grid_picks_are_the_tables_picks():
  """ladder's definitions = skipinit.analysis.tables' (Group/Cell) on the same runs."""
  rng = random.Random(7)
  for _ in range(60):
    surface = _random_surface(rng, SEEDS)
    if rng.random() < 0.3:  # a seed or two unfinished
      surface[rng.choice(LRS)][rng.randrange(2)] = None
    res = results(surface)
    runs = []
    for lr in LRS:
      for s in SEEDS:
        o = res.get((lr, s), Outcome())
        runs.append(tables.RunResult(f"m/lr{lr}_seed{s}", "m", "sweep", {"train.lr": lr, "train.seed": s},
                                     o.state, o.test_acc, o.train_loss))
    groups, _ = tables.group_runs(runs, lambda r: ("m",))
    g = groups[("m",)]
    p = ladder.grid_search(LRS, SEEDS, res)
    lr = lambda c: c.lr if c else None
    assert (p.best_lr, p.best_loss_lr, p.largest_stable_lr) == (
        lr(g.best_by_acc), lr(g.best_by_loss), lr(g.largest_stable))
    assert p.largest_stable_is_lower_bound == g.largest_stable_is_lower_bound
    assert (p.best_at_edge, p.best_loss_at_edge) == (g.at_edge(g.best_by_acc), g.at_edge(g.best_by_loss))
    assert p.status == g.status


# ------------------------------------------------------------------------------- simulate, replay

def _cells(rng, n=4):
  cells = {}
  for i in range(n):
    surface = _random_surface(rng, SEEDS)
    oracle = results(surface)
    cells[("m", 2 ** (5 + i))] = ladder.CellSpec(LRS, SEEDS, batch=2 ** (5 + i), group="m",
                                                 oracle=oracle, cost={k: 1.0 for k in oracle})
  return cells


@pytest.mark.parametrize("workers,speculate,follow", [(None, False, False), (3, True, True),
                                                      (2, False, True)])
def test_simulate_trains_each_run_once_and_ends(workers, speculate, follow):
  cells = _cells(random.Random(3))
  sim = ladder.simulate(cells, workers=workers, speculate=speculate, follow_batch=follow)
  for key, runs in sim.launched.items():
    assert len({(lr, s) for lr, s, _ in runs}) == len(runs)
    assert sim.decisions[key].ended
  assert not sim.unavailable and sim.makespan > 0


def test_simulate_reports_a_needed_run_the_grid_lacks():
  cells = _cells(random.Random(4), n=1)
  (key, cell), = cells.items()
  del cell.oracle[(0.125, 1)]  # the centre's second seed never finished in the grid
  sim = ladder.simulate(cells)
  assert sim.unavailable == {key: [(0.125, 1)]} and not sim.decisions[key].ended


def _replay_module():
  spec = importlib.util.spec_from_file_location("replay_ladder",
                                                os.path.join(REPO, "scripts", "replay_ladder.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_replay_of_a_hand_made_runs_csv(tmp_path):
  path = tmp_path / "batch_size_table_runs.csv"
  fields = ["run", "method", "depth", "width", "batch_size", "agc_clip", "lr", "seed", "epochs",
            "state", "test_acc", "train_loss"]
  rows = []
  for bs, peak in ((64, -4), (256, -2)):
    for e in range(-6, 2):
      for s in (0, 1):
        diverged = e >= 1
        acc = 90 - (e - peak) ** 2 + 0.1 * s  # percent, as make_tables writes now
        rows.append([f"runs/x/bn/bs{bs}_lr{2.0 ** e}_seed{s}", "batchnorm", 16, 4, bs, 0.0, 2.0 ** e,
                     s, 1, "diverged" if diverged else "completed", "" if diverged else acc,
                     "" if diverged else 0.1 + 0.01 * (e - peak) ** 2])
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(fields)
    w.writerows(rows)
  mod = _replay_module()
  report = mod.replay(str(path), patience=2)
  assert [c["equal"] for c in report["cells"]] == [True, True]
  c64 = report["cells"][0]
  assert c64["grid"]["best_lr"] == c64["ladder"]["best_lr"] == 2.0 ** -4
  assert c64["runs_used"] == 10 and c64["runs_grid"] == 16  # 2^-6 .. 2^-2, both seeds
  # Steps: epochs x 50000 // batch per run; a diverged run counts in full (no step in a CSV).
  assert c64["steps_grid"] == 16 * (50000 // 64) and c64["steps_used"] == 10 * (50000 // 64)
  c256 = report["cells"][1]
  assert c256["grid"]["largest_stable_lr"] == 1.0 and c256["ladder"]["best_lr"] == 0.25
  text = mod.to_markdown(report)
  assert "| 64 | batchnorm |" in text and "runs used" in text
  out = tmp_path / "out"
  script = os.path.join(REPO, "scripts", "replay_ladder.py")
  p = subprocess.run([sys.executable, script, f"--source={path}", f"--out={out}"],
                     capture_output=True, text=True)
  assert p.returncode == 0, p.stderr
  assert json.loads((tmp_path / "out.json").read_text())["totals"]["cells_equal"] == 2
  before = (tmp_path / "out.md").read_text()
  p = subprocess.run([sys.executable, script, f"--source={path}", f"--out={out}", "--patience=0"],
                     capture_output=True, text=True)
  assert p.returncode == 2 and p.stderr.startswith("error: lr search patience=0")
  assert len(p.stderr.strip().splitlines()) == 1
  assert (tmp_path / "out.md").read_text() == before  # a refused replay overwrites nothing


def test_replay_of_a_sweep_directory_counts_status_steps(tmp_path):
  from skipinit.sweep import spec
  sweep = spec.load_sweep(os.path.join(REPO, "configs", "sweeps", "batch_size.py") +
                          ":epochs=1,seeds=1,lr_exps=-4:1,batch_exps=6,methods=batchnorm")
  runs = spec.expand(sweep)
  spec.write_manifest(str(tmp_path), spec.manifest(sweep, runs))
  for run in runs:
    e = int(math.log2(run.overrides["train.lr"]))
    d = tmp_path / run.name
    d.mkdir(parents=True)
    if e == 1:
      status = {"status": "diverged", "step": 7, "diverged_step": 7, "total_steps": 100}
    else:
      status = {"status": "completed", "step": 100, "total_steps": 100,
                "test_acc": 0.9 - 0.01 * (e + 3) ** 2, "train_loss": 0.1 + 0.01 * (e + 3) ** 2}
    (d / "status.json").write_text(json.dumps(status))
  report = _replay_module().replay(str(tmp_path))
  (cell,) = report["cells"]
  assert cell["key"] == {"batch": 64, "method": "batchnorm"} and cell["equal"] and cell["ended"]
  assert cell["ladder"]["best_lr"] == 0.125 and cell["searched_lrs"] == [2.0 ** e for e in range(-4, 0)]
  assert (cell["runs_used"], cell["runs_grid"]) == (4, 6)
  assert (cell["steps_used"], cell["steps_grid"]) == (400, 5 * 100 + 7)  # a diverged run: its steps
  assert not cell["stable_equal"] and cell["ladder"]["largest_stable_is_lower_bound"]
  climbed = _replay_module().replay(str(tmp_path), climb=True)["cells"][0]
  assert climbed["stable_equal"] and climbed["runs_used"] == 6
