"""A tiny real sweep: scripts/sweep.py trains with scripts/train.py, then scripts/make_tables.py.

Two smoke runs of one epoch on synthetic data (the trainer's "smoke" preset), one of them at a
learning rate that diverges (2^100: non-finite after one step), trained in parallel by the `gpus`
executor (two workers; on a CPU the GPU ids are ignored). Checks the contract end to end: run
directories, the diverged run reported as diverged, the batch-size table, the figures, and that a
relaunch trains nothing.
"""

import csv
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = (os.path.join(REPO, "configs", "sweeps", "batch_size.py") +
         ":preset=smoke,depth=10,width=1,epochs=1,seeds=1,batch_exps=5,lr_exps=-3;100,"
         "methods=skipinit_a0,"
         "data.synthetic_train_size=64,data.synthetic_test_size=32,train.steps_per_dispatch=2")

BIG = "lr2^100"  # the diverging run's directory (not lr1.2676506002282294e+30)


def _run(script, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, os.path.join(REPO, "scripts", script), *args],
                        capture_output=True, text=True, cwd=REPO, env=env, timeout=600)


@pytest.mark.skipif(not os.path.isfile(os.path.join(REPO, "scripts", "train.py")),
                    reason="the trainer (scripts/train.py) is not in this checkout")
def test_tiny_sweep_end_to_end(tmp_path):
  sweep_dir, out = tmp_path / "sweep", tmp_path / "tables"
  p = _run("sweep.py", f"--sweep={SWEEP}", f"--sweep_dir={sweep_dir}", "--executor=gpus", "--gpus=0,0")
  assert p.returncode == 0, p.stdout + p.stderr
  assert "2 runs: 2 new" in p.stdout and "1 completed" in p.stdout and "1 diverged" in p.stdout
  for name in ("skipinit_a0/lr2^-3", "skipinit_a0/" + BIG):
    assert {"config.json", "status.json", "train.log"} <= set(os.listdir(sweep_dir / name))

  p = _run("make_tables.py", f"--sweep_dir={sweep_dir}", f"--out_dir={out}")
  assert p.returncode == 0, p.stdout + p.stderr
  [row] = list(csv.DictReader(open(out / "batch_size_table.csv")))
  assert (row["batch_size"], row["method"], row["status"]) == ("32", "skipinit_a0", "ok")
  assert float(row["best_lr"]) == 0.125 == float(row["best_lr_by_train_loss"])
  assert float(row["largest_stable_lr"]) == 0.125 and row["lrs_diverged"] == "1"
  assert 0.0 <= float(row["test_acc_mean"]) <= 100.0
  per_run = csv.DictReader(open(out / "batch_size_table_runs.csv"))
  runs = {r["run"].split(os.sep)[-1]: r for r in per_run}
  assert runs[BIG]["state"] == "diverged" and runs["lr2^-3"]["state"] == "completed"
  assert (out / "fig_batch_size_lr.png").exists() and (out / "fig_batch_size_accuracy.pdf").exists()

  p = _run("sweep.py", f"--sweep={SWEEP}", f"--sweep_dir={sweep_dir}")
  assert p.returncode == 0 and "1 completed, 1 diverged" in p.stdout and "nothing to do" in p.stdout


LADDER = (os.path.join(REPO, "configs", "sweeps", "batch_size.py") +
          ":preset=smoke,depth=10,width=1,epochs=1,seeds=1,batch_exps=5,lr_exps=-3;99;100,"
          "methods=skipinit_a0,lr_search=ladder,"
          "data.synthetic_train_size=64,data.synthetic_test_size=32,train.steps_per_dispatch=2")


@pytest.mark.skipif(not os.path.isfile(os.path.join(REPO, "scripts", "train.py")),
                    reason="the trainer (scripts/train.py) is not in this checkout")
def test_tiny_ladder_sweep_end_to_end(tmp_path):
  """lr_search=ladder with the real trainer (the local executor): the centre (2^99, the grid's middle) diverges, the
  walk goes down to 2^-3, which trains; 2^100, above a divergence, is not needed. Two runs, one
  of them stopped at its first step; a relaunch trains nothing."""
  sweep_dir, out = tmp_path / "sweep", tmp_path / "tables"
  p = _run("sweep.py", f"--sweep={LADDER}", f"--sweep_dir={sweep_dir}", "--dry_run")
  assert p.returncode == 0 and "next skipinit_a0/lr2^99  (centre)" in p.stdout, p.stdout
  # One worker (with two, the idle one would take 2^100 speculatively).
  p = _run("sweep.py", f"--sweep={LADDER}", f"--sweep_dir={sweep_dir}")
  assert p.returncode == 0, p.stdout + p.stderr
  assert "next: skipinit_a0/lr2^-3 (below: every rate searched diverged)" in p.stdout
  assert "search ended in 1 of 1 cells; 2 runs needed, 1 of the grid's 3 not needed" in p.stdout
  assert not (sweep_dir / "skipinit_a0" / "lr2^100").exists()

  p = _run("make_tables.py", f"--sweep_dir={sweep_dir}", f"--out_dir={out}", "--nofigures")
  assert p.returncode == 0 and "2/2 runs finished" in p.stdout, p.stdout + p.stderr
  [row] = list(csv.DictReader(open(out / "batch_size_table.csv")))
  assert float(row["best_lr"]) == 0.125 and row["best_lr_at_grid_edge"] == "True"
  assert float(row["largest_stable_lr"]) == 0.125
  assert row["largest_stable_lr_is_lower_bound"] == "False"  # the next rate up diverged
  assert (row["lrs_tried"], row["lrs_not_needed"], row["runs_expected"]) == ("2", "1", "2")
  md = (out / "batch_size_table.md").read_text()
  assert "All 2 runs finished" in md and "| 1/1 |" not in md and "| 2/2 |" in md
  assert "- batch 32, method skipinit_a0: ended, 2 runs, lr 2^-3 … 2^99" in md
  runs = {r["run"].split(os.sep)[-1]: r["state"]
          for r in csv.DictReader(open(out / "batch_size_table_runs.csv"))}
  assert runs == {"lr2^-3": "completed", "lr2^99": "diverged", "lr2^100": "not needed"}

  p = _run("sweep.py", f"--sweep={LADDER}", f"--sweep_dir={sweep_dir}")
  assert p.returncode == 0 and "next:" not in p.stdout and "search ended in 1 of 1" in p.stdout
  assert len((sweep_dir / "attempts.jsonl").read_text().splitlines()) == 2
