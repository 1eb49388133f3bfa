"""lr_search=ladder end to end (issue 16): waves, relaunches, kill -9, the tables, bad input.

A fake trainer (no JAX) stands in for scripts/train.py, as in tests/test_sweep.py, so that the
searches of whole cells take seconds. Its test accuracy and training loss are unimodal in log lr
around an optimum that follows the batch size (2^-3 at batch 64, x2 per doubling), and a rate 16x
above the optimum diverges: the ladder's picks must equal the full grid's.
tests/test_sweep_e2e.py runs a tiny ladder sweep with the real trainer.
"""

import csv
import inspect
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from skipinit import rundir, sweep as sweep_lib
from skipinit.analysis import tables
from skipinit.sweep import spec
from skipinit.sweep.lock import is_locked

from conftest import install_fake_trainer, launch_sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = os.path.join(REPO, "configs", "sweeps", "batch_size.py")
# 2 cells (batch 64 and 128) x 14 rates x 2 seeds = 56 runs in the grid.
SWEEP = BATCH + ":epochs=1,seeds=2,lr_exps=-10:3,batch_exps=6;7,methods=skipinit_a0"

FAKE_TRAINER = textwrap.dedent("""\
    import json, math, os, sys, time
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
    workdir = args["workdir"]
    get = lambda k: args["config." + k]
    lr, seed, batch = float(get("train.lr")), int(get("train.seed")), int(get("train.batch_size"))
    with open(os.environ["FAKE_CALLS"], "a") as f:
      f.write(json.dumps({"workdir": workdir, "pid": os.getpid()}) + "\\n")
    os.makedirs(workdir, exist_ok=True)
    config = {"model": {"depth": int(get("model.depth")), "width": int(get("model.width"))},
              "train": {"lr": lr, "seed": seed, "batch_size": batch,
                        "epochs": float(get("train.epochs"))}}
    json.dump(config, open(os.path.join(workdir, "config.json"), "w"))
    def status(**kw):
      json.dump(kw, open(os.path.join(workdir, "status.json"), "w"))
    status(status="running", step=0, epoch=0.0)
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
    d = math.log2(lr) - (math.log2(batch) - 9)  # the optimum: 2^-3 at batch 64
    if d >= 4:
      status(status="diverged", step=3, epoch=0.1, diverged_step=3)
    else:
      acc, loss = 0.9 - 0.02 * d * d + 0.001 * seed, 0.1 + 0.02 * d * d + 0.001 * seed
      status(status="completed", step=10, epoch=1.0, train_loss=loss, test_acc=acc)
    """)


@pytest.fixture
def fake(tmp_path, monkeypatch):
  """The fake train script; returns a function listing the workdirs it was called for."""
  return install_fake_trainer(tmp_path, monkeypatch, FAKE_TRAINER)


PICKS = ("status", "best_lr", "best_lr_at_grid_edge", "best_lr_by_train_loss",
         "largest_stable_lr", "largest_stable_lr_is_lower_bound")


def _picks(sweep_dir) -> dict:
  [table] = tables.build_tables([str(sweep_dir)])
  return {(r["batch_size"], r["method"]): {k: r[k] for k in PICKS} for r in table.records}


def _grid_picks(tmp_path):
  rc, _ = launch_sweep(SWEEP, tmp_path / "grid", executor="gpus", gpus=["0", "0"])
  assert rc == 0
  return _picks(tmp_path / "grid")


def test_ladder_sweep_trains_only_what_it_needs_picks_as_the_grid_and_a_relaunch_trains_nothing(
    tmp_path, fake):
  d = tmp_path / "ladder"
  rc, logs = launch_sweep(SWEEP + ",lr_search=ladder", d, executor="gpus", gpus=["0", "0"])
  assert rc == 0, logs
  assert "search ended in 2 of 2 cells" in "\n".join(logs)
  trained = [c["workdir"] for c in fake()]
  assert len(trained) == len(set(trained)) < 56  # no run twice, fewer than the grid
  grid = _grid_picks(tmp_path)
  assert _picks(d) == grid
  assert grid[(64, "skipinit_a0")]["best_lr"] == 2.0 ** -3
  assert grid[(128, "skipinit_a0")]["largest_stable_lr"] == 2.0 ** 1  # climbed to divergence
  assert grid[(128, "skipinit_a0")]["largest_stable_lr_is_lower_bound"] is False
  # One worker: batch 64's search ends first, and batch 128's centre follows its best (2^-3 x
  # 128/64), the optimum; the same picks.
  rc, logs = launch_sweep(SWEEP + ",lr_search=ladder", tmp_path / "local")
  assert rc == 0 and _picks(tmp_path / "local") == grid
  assert "next: skipinit_a0/bs128_lr2^-2_seed0 (centre)" in logs, logs

  # The run directories are the state: a relaunch recomputes the search and trains nothing.
  n = len(fake())
  rc, logs = launch_sweep(SWEEP + ",lr_search=ladder", d, executor="gpus", gpus=["0", "0"])
  assert rc == 0 and len(fake()) == n and "search ended in 2 of 2 cells" in "\n".join(logs)
  rc, logs = launch_sweep(SWEEP + ",lr_search=ladder", d)  # (the local executor: the same)
  assert rc == 0 and len(fake()) == n

  # Tables: the runs the search did not need are "not needed", counted nowhere.
  n = len(trained)
  [table] = tables.build_tables([str(d)])
  states = [r.state for r in table.runs]
  assert states.count("not needed") == 56 - n and not tables.unfinished(table.runs)
  assert all(r["runs_finished"] == r["runs_expected"] for r in table.records)
  assert sum(r["runs_expected"] for r in table.records) == n
  out = tmp_path / "tables"
  tables.write_table(table, str(out))
  md = (out / "batch_size_table.md").read_text()
  assert f"All {n} runs finished" in md and "lr_search=ladder" in md
  assert "- batch 64, method skipinit_a0: ended," in md and "- batch 128, method" in md
  per_run = list(csv.DictReader(open(out / "batch_size_table_runs.csv")))
  assert sum(r["state"] == "not needed" for r in per_run) == 56 - n


def test_dry_run_lists_the_next_runs_and_why_and_writes_nothing(tmp_path, fake):
  d = tmp_path / "sw"
  rc, logs = launch_sweep(SWEEP + ",lr_search=ladder", d, dry_run=True)
  assert rc == 0 and not d.exists()
  text = "\n".join(logs)
  assert "next skipinit_a0/bs64_lr2^-4_seed0  (centre)" in text
  assert "not started; centre 2^-4 (the grid's middle)" in text
  # Train batch 64's centre only (--filter), then ask again: the walks' next rates and reasons.
  rc, logs = launch_sweep(SWEEP + ",lr_search=ladder", d, run_filter=r"bs64_lr2\^-4_")
  assert rc == 0 and len(fake()) == 2
  rc, logs = launch_sweep(SWEEP + ",lr_search=ladder", d, dry_run=True)
  text = "\n".join(logs)
  assert "next skipinit_a0/bs64_lr2^-3_seed0  (above: climbing to the largest stable lr)" in text
  assert "next skipinit_a0/bs64_lr2^-5_seed1  (below best, 0 of 2 worse)" in text
  assert len(fake()) == 2


def test_bad_search_input_is_one_error_and_writes_nothing(tmp_path, fake):
  d = tmp_path / "sw"
  small = BATCH + ":epochs=1,seeds=1,lr_exps=-4:-2,batch_exps=6,methods=skipinit_a0"
  for arg, says in [("lr_search=fast", "lr_search='fast' is unknown: use grid"),
                    ("lr_search=ladder,lr_patience=0", "patience=0 is not allowed"),
                    ("lr_climb=true", "lr_climb applies to lr_search=ladder only")]:
    with pytest.raises(sweep_lib.SweepError, match=says):
      launch_sweep(small + "," + arg, d)
    assert not d.exists()
  with pytest.raises(sweep_lib.SweepError, match="no learning-rate axis|unknown sweep knob"):
    spec.parse_arg("lr_search=ladder", lambda epochs=1.0: [])
  rc, _ = launch_sweep(small + ",lr_search=ladder", d)
  assert rc == 0
  manifest = (d / spec.MANIFEST).read_text()
  assert json.loads(manifest)["search"] == {"lr_search": "ladder", "lr_patience": 2,
                                            "lr_climb": True}
  # A relaunch that changes the search (its mode, patience, climb, or its bounds) is refused.
  wider = small.replace("lr_exps=-4:-2", "lr_exps=-4:-1")
  for arg, says in [(small, "lr_search=ladder,lr_patience=2,lr_climb=true -> lr_search=grid"),
                    (small + ",lr_search=ladder,lr_patience=3", "lr_patience=2.* -> .*patience=3"),
                    (small + ",lr_search=ladder,lr_climb=false", "lr_climb=true -> .*climb=false"),
                    (wider + ",lr_search=ladder", "3 runs -> 4")]:
    with pytest.raises(sweep_lib.SweepError, match=says):
      launch_sweep(arg, d)
    assert (d / spec.MANIFEST).read_text() == manifest
  p = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "sweep.py"),
                      f"--sweep={small},lr_search=ladder,lr_patience=0", f"--sweep_dir={d}x"],
                     capture_output=True, text=True, cwd=REPO, timeout=120)
  assert p.returncode == 2 and p.stderr.count("\n") == 1 and p.stderr.startswith("error: ")
  assert not os.path.exists(f"{d}x")


def test_kill_9_mid_wave_then_a_relaunch_ends_with_the_same_picks(tmp_path, fake):
  """kill -9 of the launcher and of its trainers in flight (a node that died): the relaunch
  resumes the search from the run directories, retrains only the runs cut short, loses none."""
  d = tmp_path / "ladder"
  code = textwrap.dedent(f"""\
      from skipinit import sweep
      from skipinit.sweep import executors
      executors.TRAIN_SCRIPT = {str(tmp_path / "fake_train.py")!r}
      sweep.spec.tfds_installed = lambda: True
      sweep.launch({SWEEP + ",lr_search=ladder"!r}, {str(d)!r}, executor="gpus", gpus=["0", "0"])
      """)
  p = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, FAKE_SLEEP="0.4"),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

  def states():
    return {c["workdir"]: rundir.run_state(c["workdir"]) for c in fake()}
  deadline = time.time() + 60
  while time.time() < deadline:  # mid-wave: some runs finished, two in flight
    s = states()
    if sum(v in rundir.FINISHED for v in s.values()) >= 6 and list(s.values()).count("running") == 2:
      break
    time.sleep(0.05)
  else:
    pytest.fail(f"the sweep did not get going: {states()}")
  os.kill(p.pid, signal.SIGKILL)
  p.wait(timeout=30)
  for _ in range(3):  # (again: a trainer started just before the kill may log itself late)
    for c in fake():
      if rundir.run_state(c["workdir"]) == "running":
        try:
          os.kill(c["pid"], signal.SIGKILL)
        except ProcessLookupError:
          pass
    time.sleep(0.3)
  for c in fake():  # until the kernel has dropped the killed trainers' locks
    while is_locked(c["workdir"]):
      time.sleep(0.05)
  before = states()
  finished = {w for w, v in before.items() if v in rundir.FINISHED}
  cut = {w for w, v in before.items() if v == "running"}
  assert finished and cut

  n = len(fake())
  rc, logs = launch_sweep(SWEEP + ",lr_search=ladder", d, executor="gpus", gpus=["0", "0"])
  assert rc == 0, logs
  again = [c["workdir"] for c in fake()[n:]]
  assert not finished & set(again) and len(again) == len(set(again))  # never a run twice
  assert all(rundir.run_state(w) == before[w] for w in finished)  # none lost
  assert "search ended in 2 of 2 cells" in "\n".join(logs)
  # Each run cut short was trained again, or the search ended without needing it.
  [table] = tables.build_tables([str(d)])
  state = {os.path.join(str(d), r.name): r.state for r in table.runs}
  assert all(w in again or state[w] == "not needed" for w in cut)
  assert _picks(d) == _grid_picks(tmp_path)


def test_slurm_submits_the_current_wave_and_wait_goes_on_until_the_search_ends(tmp_path, fake):
  pytest.importorskip("submitit")
  small = BATCH + ":epochs=1,seeds=1,lr_exps=-8:3,batch_exps=6,methods=skipinit_a0,lr_search=ladder"
  d = tmp_path / "sw"
  # Without --wait: one wave (the centre), then the next launch submits the next wave.
  rc, logs = launch_sweep(small, d, executor="slurm", slurm_cluster="debug")
  assert rc == 0 and [c["workdir"] for c in fake()] == [str(d / "skipinit_a0" / "lr2^-3")]
  assert any("submitted a wave of 1 runs" in line for line in logs)
  rc, logs = launch_sweep(small, d, executor="slurm", slurm_cluster="debug")
  assert rc == 0 and len(fake()) == 3  # 2^-2 (above) and 2^-4 (below), one wave
  # --wait: wave after wave until the search has ended; then nothing is submitted.
  rc, logs = launch_sweep(small, d, executor="slurm", slurm_cluster="debug", wait=True, poll_s=0.1)
  assert rc == 0 and "search ended in 1 of 1 cells" in "\n".join(logs)
  assert sum("submitted a wave" in line for line in logs) >= 2
  n = len(fake())
  assert n < 12 and len({c["workdir"] for c in fake()}) == n
  rc, logs = launch_sweep(small, d, executor="slurm", slurm_cluster="debug", wait=True, poll_s=0.1)
  assert rc == 0 and len(fake()) == n and not any("submitted" in line for line in logs)
  grid = BATCH + ":epochs=1,seeds=1,lr_exps=-8:3,batch_exps=6,methods=skipinit_a0"
  rc, _ = launch_sweep(grid, tmp_path / "grid")
  assert rc == 0 and _picks(d) == _picks(tmp_path / "grid")


def test_every_sweep_with_a_learning_rate_axis_takes_the_ladder():
  """depth_table, ablation_table, batch_size, imagenet_table, agc_batch_size: the knobs are
  generic, and the cells the launcher searches are the tables' (every rate x seed of one cell)."""
  from skipinit.sweep import search
  for name in ("depth_table", "ablation_table", "batch_size", "imagenet_table", "agc_batch_size"):
    path = os.path.join(REPO, "configs", "sweeps", name + ".py")
    sweep = spec.load_sweep(path + ":lr_search=ladder,lr_patience=3")
    assert sweep["search"] == {"lr_search": "ladder", "lr_patience": 3,
                               "lr_climb": name == "batch_size"}, name
    assert spec.load_sweep(path)["search"] is None  # the grid by default: as before
    runs = spec.expand(sweep, validate=False)
    runs = [spec.Run(r.name, r.method, r.overrides, {**r.overrides}) for r in runs]
    plan = search.plan_of_runs(sweep["table"], sweep["search"], runs)
    n_lrs = len(inspect.signature(sweep["fn"]).parameters["lr_exps"].default)
    for key, cell in plan.cells.items():
      assert len(cell.lrs) * len(cell.seeds) == sum(1 for w in plan.where.values() if w[0] == key)
      assert len(cell.lrs) == n_lrs, (name, key)
    assert len(plan.where) == len(runs)
