"""Tables from fixture run directories, checked against hand-computed values (PAPER.md 4-5)."""

import csv
import json
import math
import os
import subprocess
import sys

import pytest

from skipinit.analysis import tables
from skipinit.sweep import spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEPS = os.path.join(REPO, "configs", "sweeps")
BS_SWEEP = os.path.join(SWEEPS, "batch_size.py") + ":epochs=1,seeds=2,lr_exps=-3:-1,batch_exps=6:7"
DEPTH_SWEEP = (os.path.join(SWEEPS, "depth_table.py") +
               ":epochs=1,seeds=2,lr_exps=-2:-1,depths=16;100,methods=batchnorm;skipinit_a0")


def make_sweep_dir(path, sweep_spec, outcomes):
  """A sweep directory as scripts/sweep.py + the trainer leave it.

  outcomes: {run name: ("completed", test_acc, train_loss) | ("diverged",) | ("failed",) |
  ("running",)}; runs not named are missing (never started).
  """
  sweep = spec.load_sweep(sweep_spec)
  runs = spec.expand(sweep)
  spec.write_manifest(str(path), spec.manifest(sweep, runs))
  names = {r.name: r for r in runs}
  for name, outcome in outcomes.items():
    run = names[name]  # a KeyError here is a typo in the test
    d = path / name
    d.mkdir(parents=True)
    config = {"model": {}, "data": {}, "train": {}}
    for key, value in {**run.resolved, **run.overrides}.items():
      section, field = key.split(".")
      config[section][field] = value
    (d / "config.json").write_text(json.dumps(config))
    state = outcome[0]
    status = {"status": state, "step": 10, "epoch": 1.0}
    if state == "completed":
      acc, loss = outcome[1], outcome[2]
      status.update(train_loss=loss, train_acc=acc, test_loss=1.0, test_acc=acc)
      (d / "metrics.jsonl").write_text(json.dumps({"step": 10, "epoch": 1.0, "train_loss": loss,
                                                   "test_acc": acc}) + "\n")
    elif state == "diverged":
      status.update(diverged_step=3)
    elif state == "failed":
      status.update(error="RuntimeError: out of memory")
    (d / "status.json").write_text(json.dumps(status))
  return path


def C(acc, loss=1.0):
  return ("completed", acc, loss)


D, F = ("diverged",), ("failed",)


@pytest.fixture
def bs_dir(tmp_path):
  return make_sweep_dir(tmp_path / "bs", BS_SWEEP, {
      # bs 64, BN: best acc at 0.25 (92.0 +- 1.41), best loss at 0.125 (0.31); 0.5 diverged (1 seed).
      "batchnorm/bs64_lr2^-3_seed0": C(0.90, 0.30), "batchnorm/bs64_lr2^-3_seed1": C(0.92, 0.32),
      "batchnorm/bs64_lr2^-2_seed0": C(0.93, 0.40), "batchnorm/bs64_lr2^-2_seed1": C(0.91, 0.42),
      "batchnorm/bs64_lr2^-1_seed0": D, "batchnorm/bs64_lr2^-1_seed1": C(0.95, 0.10),
      # bs 64, SkipInit: best acc at 0.25 (85.0 +- 0), best loss at 0.5 = top of the grid.
      "skipinit_a0/bs64_lr2^-3_seed0": C(0.80, 0.50), "skipinit_a0/bs64_lr2^-3_seed1": C(0.84, 0.60),
      "skipinit_a0/bs64_lr2^-2_seed0": C(0.85, 0.45), "skipinit_a0/bs64_lr2^-2_seed1": C(0.85, 0.47),
      "skipinit_a0/bs64_lr2^-1_seed0": C(0.86, 0.44), "skipinit_a0/bs64_lr2^-1_seed1": C(0.82, 0.40),
      # bs 128, BN: one run of lr 0.5 never started -> lr 0.5 is incomplete, not averaged.
      "batchnorm/bs128_lr2^-3_seed0": C(0.70, 1.0), "batchnorm/bs128_lr2^-3_seed1": C(0.70, 1.0),
      "batchnorm/bs128_lr2^-2_seed0": C(0.75, 0.9), "batchnorm/bs128_lr2^-2_seed1": C(0.77, 0.8),
      "batchnorm/bs128_lr2^-1_seed0": C(0.99, 0.01),
      # bs 128, SkipInit: every learning rate diverged.
      **{f"skipinit_a0/bs128_lr{lr}_seed{s}": D for lr in ("2^-3", "2^-2", "2^-1") for s in (0, 1)},
  })


def _csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_batch_size_table_both_optimal_lr_definitions(bs_dir, tmp_path):
  out = tmp_path / "out"
  written = tables.make_tables([str(bs_dir)], str(out))
  rows = {(int(r["batch_size"]), r["method"]): r for r in _csv(out / "batch_size_table.csv")}

  bn64 = rows[(64, "batchnorm")]
  assert float(bn64["best_lr"]) == 0.25 and float(bn64["test_acc_mean"]) == pytest.approx(92.0)
  assert float(bn64["test_acc_std"]) == pytest.approx(math.sqrt(2), abs=1e-4)
  assert float(bn64["best_lr_by_train_loss"]) == 0.125
  assert float(bn64["train_loss_at_best_lr_by_train_loss"]) == pytest.approx(0.31)
  assert float(bn64["test_acc_at_best_lr_by_train_loss"]) == pytest.approx(91.0)
  assert float(bn64["largest_stable_lr"]) == 0.25 and bn64["lrs_diverged"] == "1"
  assert bn64["largest_stable_lr_is_grid_top"] == "False"

  si64 = rows[(64, "skipinit_a0")]
  assert float(si64["best_lr"]) == 0.25 and float(si64["test_acc_mean"]) == pytest.approx(85.0)
  assert float(si64["test_acc_std"]) == pytest.approx(0.0)
  assert float(si64["best_lr_by_train_loss"]) == 0.5
  assert float(si64["train_loss_at_best_lr_by_train_loss"]) == pytest.approx(0.42)
  assert float(si64["largest_stable_lr"]) == 0.5 and si64["largest_stable_lr_is_grid_top"] == "True"

  bn128 = rows[(128, "batchnorm")]  # the 0.99 of the lone finished lr-0.5 seed is not used
  assert float(bn128["best_lr"]) == 0.25 and float(bn128["test_acc_mean"]) == pytest.approx(76.0)
  assert float(bn128["best_lr_by_train_loss"]) == 0.25
  assert (bn128["runs_finished"], bn128["runs_expected"]) == ("5", "6")
  # 0.5 has not finished, so 0.25 is only a lower bound; at bs 64 BN's 0.5 diverged: exact.
  assert float(bn128["largest_stable_lr"]) == 0.25 and bn128["largest_stable_lr_is_lower_bound"] == "True"
  assert bn64["largest_stable_lr_is_lower_bound"] == "False"

  si128 = rows[(128, "skipinit_a0")]
  assert si128["status"] == "diverged" and si128["best_lr"] == "" and si128["largest_stable_lr"] == ""

  md = (out / "batch_size_table.md").read_text()
  assert "| 64 | BatchNorm | 0.25 | 92.00 ± 1.41 | 0.125* | 0.3100 | 91.00 ± 1.41 | 0.25 | 6/6 |" in md
  assert "| 64 | SkipInit (α=0) | 0.25 | 85.00 ± 0.00 | 0.5* | 0.4200 | 84.00 ± 2.83 | ≥ 0.5 | 6/6 |" in md
  assert "| 128 | SkipInit (α=0) | diverged | diverged |" in md
  assert "| ≥ 0.25 | 5/6 † |" in md
  assert "1 of 24 runs are not finished" in md
  assert "missing: " + str(bs_dir / "batchnorm/bs128_lr2^-1_seed1") in md
  per_run = _csv(out / "batch_size_table_runs.csv")
  assert len(per_run) == 24 and sum(r["state"] == "diverged" for r in per_run) == 7
  bn64_run = next(r for r in per_run if r["run"].endswith("batchnorm/bs64_lr2^-2_seed0"))
  assert float(bn64_run["test_acc"]) == pytest.approx(93.0)  # percent, as in the tables
  for name in ("fig_batch_size_accuracy", "fig_batch_size_lr"):
    for ext in ("png", "pdf"):
      assert str(out / f"{name}.{ext}") in written and (out / f"{name}.{ext}").stat().st_size > 1000
  assert "\\begin{tabular}" in (out / "batch_size_table.tex").read_text()


@pytest.fixture
def depth_dir(tmp_path):
  return make_sweep_dir(tmp_path / "depth", DEPTH_SWEEP, {
      "batchnorm/depth16_lr2^-2_seed0": C(0.90), "batchnorm/depth16_lr2^-2_seed1": C(0.80),
      "batchnorm/depth16_lr2^-1_seed0": C(0.95), "batchnorm/depth16_lr2^-1_seed1": C(0.93),
      **{f"batchnorm/depth100_lr{lr}_seed{s}": D for lr in ("2^-2", "2^-1") for s in (0, 1)},
      "skipinit_a0/depth16_lr2^-2_seed0": C(0.91), "skipinit_a0/depth16_lr2^-2_seed1": C(0.93),
      "skipinit_a0/depth16_lr2^-1_seed0": F, "skipinit_a0/depth16_lr2^-1_seed1": C(0.99),
      "skipinit_a0/depth100_lr2^-2_seed0": ("running",),
  })


def test_depth_table_mean_std_at_best_lr_diverged_and_unfinished(depth_dir, tmp_path):
  [table] = tables.build_tables([str(depth_dir)])
  assert table.header == ["Method", "WRN-16-2", "WRN-100-2"]
  assert table.rows == [
      ["BatchNorm", "94.00 ± 1.41 @ lr 0.5*", "diverged"],
      ["SkipInit (α=0)", "92.00 ± 1.41 @ lr 0.25* †", "incomplete (0/4 runs)"],
  ]
  md = tables.to_markdown(table)
  assert "5 of 16 runs are not finished** (1 failed, 1 running or interrupted, 3 missing)" in md
  assert "failed: " + str(depth_dir / "skipinit_a0/depth16_lr2^-1_seed0") in md
  rec = {(r["method"], r["depth"]): r for r in table.records}
  assert rec[("batchnorm", 100)]["status"] == "diverged"
  assert rec[("batchnorm", 100)]["lrs_diverged"] == 2 and rec[("skipinit_a0", 16)]["n_seeds"] == 2
  assert rec[("skipinit_a0", 100)]["status"] == "incomplete"
  tex = tables.to_latex(table)
  assert "SkipInit ($\\alpha$=0) & 92.00 $\\pm$ 1.41 @ lr 0.25* $^\\dagger$" in tex


def test_ablation_table_takes_reference_rows_from_the_depth_sweep(depth_dir, tmp_path):
  abl = make_sweep_dir(tmp_path / "abl", os.path.join(SWEEPS, "ablation_table.py") +
                       ":epochs=1,seeds=1,lr_exps=-2,depths=16;100,methods=skipinit_a1;sqrt2_merge", {
                           "skipinit_a1/depth16": C(0.9), "skipinit_a1/depth100": D,
                           "sqrt2_merge/depth16": C(0.88), "sqrt2_merge/depth100": D})
  built = {t.name: t for t in tables.build_tables([str(abl), str(depth_dir)])}
  assert set(built) == {"ablation_table", "depth_table"}
  rows = built["ablation_table"].rows
  assert [r[0] for r in rows] == ["SkipInit (α=1)", "√2 merge", "BatchNorm", "SkipInit (α=0)"]
  assert rows[0] == ["SkipInit (α=1)", "90.00 @ lr 0.25", "diverged"]
  assert rows[2][2] == "diverged"
  # Full Fixup joins too when the depth sweep has it (beside its halves); this one does not.
  assert built["ablation_table"].notes[0] == (
      "The BatchNorm, SkipInit (α=0) rows come from the depth-table sweep.")


def test_agc_and_imagenet_tables(tmp_path):
  agc = make_sweep_dir(tmp_path / "agc", os.path.join(SWEEPS, "agc_batch_size.py") +
                       ":epochs=1,lr_exps=-1:0,batch_exps=6,clips=0.01;0", {
                           "nf/agc0.01_lr2^-1": C(0.6), "nf/agc0.01_lr2^0": C(0.7),
                           "nf/agc0_lr2^-1": C(0.5), "nf/agc0_lr2^0": D})
  [t] = tables.build_tables([str(agc)])
  assert t.header == ["Batch", "no AGC", "λ=0.01"]
  assert t.rows == [["64", "50.00 @ lr 0.5*", "70.00 @ lr 1*"]]
  written = tables.make_tables([str(agc)], str(tmp_path / "out"))
  assert str(tmp_path / "out" / "fig_agc_batch_size.png") in written

  inet = make_sweep_dir(tmp_path / "inet", os.path.join(SWEEPS, "imagenet_table.py") +
                        ":lr_exps=0,batch_sizes=256;1024,methods=batchnorm;skipinit_reg", {
                            "batchnorm/bs256": C(0.761), "batchnorm/bs1024": C(0.765),
                            "skipinit_reg/bs256": C(0.75), "skipinit_reg/bs1024": D})
  [t] = tables.build_tables([str(inet)])
  assert t.header == ["Method", "batch 256", "batch 1024"]
  assert t.rows == [["BatchNorm", "76.10 @ lr 0.1", "76.50 @ lr 0.4"],
                    ["Regularized SkipInit (biases + dropout)", "75.00 @ lr 0.1", "diverged"]]


def test_tables_refuse_a_cell_that_mixes_budgets(tmp_path):
  one = make_sweep_dir(tmp_path / "e1", DEPTH_SWEEP, {"batchnorm/depth16_lr2^-2_seed0": C(0.9)})
  three = make_sweep_dir(tmp_path / "e3", DEPTH_SWEEP.replace("epochs=1", "epochs=3"),
                         {"batchnorm/depth16_lr2^-2_seed1": C(0.6)})
  with pytest.raises(spec.SweepError, match=r"train.epochs=3.0 .* train.epochs=1.0"):
    tables.build_tables([str(one), str(three)])
  # More seeds of the same protocol in another directory do join the cell.
  more = make_sweep_dir(tmp_path / "e1b", DEPTH_SWEEP, {"batchnorm/depth16_lr2^-2_seed1": C(0.8)})
  depth = tables.build_tables([str(one), str(more)])[0]
  assert "85.00 ± 7.07" in tables.to_markdown(depth)
  twice = tables.build_tables([str(one), str(more), str(more)])[0]
  assert tables.to_markdown(twice) == tables.to_markdown(depth)
  # Seeds trained on other data (the runs' data.json) do not join either.
  (one / "batchnorm/depth16_lr2^-2_seed0/data.json").write_text('{"sha1": "aa", "train_examples": 9}')
  (more / "batchnorm/depth16_lr2^-2_seed1/data.json").write_text('{"sha1": "bb", "train_examples": 9}')
  with pytest.raises(spec.SweepError, match="data.sha1='bb'"):
    tables.build_tables([str(one), str(more)])


def test_batch_size_figures_of_a_sweep_with_nothing_finished(tmp_path):
  everything_diverged = {f"{m}/bs{b}_lr{lr}_seed{s}": D for m in ("batchnorm", "skipinit_a0")
                         for b in (64, 128) for lr in ("2^-3", "2^-2", "2^-1") for s in (0, 1)}
  for name, outcomes in (("new", {}), ("diverged", everything_diverged)):
    d = make_sweep_dir(tmp_path / name, BS_SWEEP, outcomes)
    written = tables.make_tables([str(d)], str(tmp_path / f"out_{name}"))
    assert any(p.endswith("fig_batch_size_lr.png") for p in written)


def test_make_tables_script(bs_dir, tmp_path):
  script = os.path.join(REPO, "scripts", "make_tables.py")
  p = subprocess.run([sys.executable, script, f"--sweep_dir={bs_dir}", f"--out_dir={tmp_path / 'o'}"],
                     capture_output=True, text=True, timeout=120)
  assert p.returncode == 0, p.stderr
  assert "batch_size_table: 23/24 runs finished" in p.stdout
  assert {"batch_size_table.md", "batch_size_table.csv", "batch_size_table.tex",
          "fig_batch_size_lr.pdf"} <= set(os.listdir(tmp_path / "o"))
  p = subprocess.run([sys.executable, script, f"--sweep_dir={tmp_path}",
                      f"--out_dir={tmp_path / 'o'}"], capture_output=True, text=True, timeout=120)
  assert p.returncode == 2 and p.stderr.strip() == (
      f"error: {str(tmp_path)!r} is not a sweep directory: it has no sweep.json "
      "(scripts/sweep.py writes one)")


@pytest.mark.parametrize("script,args,message", [
    ("make_tables.py", ["--out_dir=/tmp/unused"], "flag --sweep_dir=None"),
    ("sweep.py", ["--sweep=x.py", "--sweep_dir=/tmp/unused", "--executor=gpu"],
     "value should be one of <local|gpus|slurm>"),
])
def test_a_bad_flag_is_one_error_line_and_exit_2(script, args, message):
  p = subprocess.run([sys.executable, os.path.join(REPO, "scripts", script), *args],
                     capture_output=True, text=True)
  assert p.returncode == 2 and p.stderr.startswith("error: ") and message in p.stderr, p.stderr
  assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------- what the titles say (19)

def _data_json(sweep_dir, run, **fields):
  (sweep_dir / run / "data.json").write_text(json.dumps(fields))


def test_titles_name_the_data_the_runs_read_and_the_budget(tmp_path):
  one = "batchnorm/depth16_lr2^-2_seed0"
  # Synthetic data (the smoke sweeps of the README), the runs' data.json as the trainer writes it.
  synth = make_sweep_dir(tmp_path / "synth", DEPTH_SWEEP + ",preset=smoke", {one: C(0.5)})
  _data_json(synth, one, train_examples=256, test_examples=64, sha1="s", name="cifar10",
             source="synthetic")
  [t] = tables.build_tables([str(synth)])
  assert t.title == ("Test accuracy (%) of Wide-ResNets by depth — synthetic CIFAR-10-shaped "
                     "data (256 train / 64 test images); 1 epoch, 2 seeds per learning rate")
  assert "CIFAR-10 test accuracy" not in tables.to_markdown(t)
  # The real files, with a 1,000-image evaluation subset; a run of data.json before its names
  # existed takes them from its config.
  real = make_sweep_dir(tmp_path / "real", BS_SWEEP + ",data.source=folder,data.path="
                        "/data/cifar10-jpeg.tar.gz", {"batchnorm/bs64_lr2^-3_seed0": C(0.5)})
  _data_json(real, "batchnorm/bs64_lr2^-3_seed0", train_examples=50000, test_examples=10000,
             sha1="r", eval_examples=1000)
  [t] = tables.build_tables([str(real)])
  assert t.title == ("Batch size vs optimal learning rate (WRN-16-4) — CIFAR-10 from "
                     "cifar10-jpeg.tar.gz (50,000 train / 10,000 test images), test accuracy on a "
                     "fixed subset of 1,000 images; 1 epoch, 2 seeds per learning rate")
  assert "Runs: the cell's runs that finished" in tables.to_markdown(t)
  # Nothing started yet: what the config asks for (tfds by default), without sizes.
  [t] = tables.build_tables([str(make_sweep_dir(tmp_path / "new", DEPTH_SWEEP, {}))])
  assert t.about == "CIFAR-10 from tfds; 1 epoch, 2 seeds per learning rate"
  written = tables.make_tables([str(real)], str(tmp_path / "out"))
  assert any(p.endswith("fig_batch_size_accuracy.png") for p in written)


def test_runs_evaluated_on_a_subset_never_share_a_cell_with_full_test_set_runs(tmp_path):
  a, b = "batchnorm/depth16_lr2^-2_seed0", "batchnorm/depth16_lr2^-2_seed1"
  full = make_sweep_dir(tmp_path / "full", DEPTH_SWEEP, {a: C(0.9)})
  sub = make_sweep_dir(tmp_path / "sub", DEPTH_SWEEP, {b: C(0.8)})
  common = dict(train_examples=50000, test_examples=10000, sha1="same")
  _data_json(full, a, **common)  # written before data.eval_subset: the whole test set
  _data_json(sub, b, **common, eval_examples=1000)
  with pytest.raises(spec.SweepError, match=r"data.eval_examples=1000 .* data.eval_examples=10000"):
    tables.build_tables([str(full), str(sub)])
  _data_json(sub, b, **common, eval_examples=10000)  # a "subset" of all of it is the whole set
  assert "85.00 ± 7.07" in tables.to_markdown(tables.build_tables([str(full), str(sub)])[0])


def test_a_cell_never_mixes_the_numerics_issue_15_changed(tmp_path):
  """A bfloat16 run made before model.residual_dtype (its config.json lacks the key) had a
  bfloat16 stream: it never shares a cell with a run of the float32 stream (config.LEGACY_VALUES,
  which also gives old NF runs their zero classifier)."""
  a, b = "batchnorm/depth16_lr2^-2_seed0", "batchnorm/depth16_lr2^-2_seed1"
  old = make_sweep_dir(tmp_path / "old", DEPTH_SWEEP + ",model.dtype=bfloat16", {a: C(0.9)})
  new = make_sweep_dir(tmp_path / "new", DEPTH_SWEEP + ",model.dtype=bfloat16", {b: C(0.8)})
  config = json.loads((old / a / "config.json").read_text())
  assert config["model"]["residual_dtype"] == "float32"  # the manifest resolves today's default
  del config["model"]["residual_dtype"]
  (old / a / "config.json").write_text(json.dumps(config))
  with pytest.raises(spec.SweepError, match=r"model.residual_dtype='(bfloat16|float32)' .* "
                                            r"model.residual_dtype='(float32|bfloat16)'"):
    tables.build_tables([str(old), str(new)])
  config["model"]["residual_dtype"] = "float32"  # one made since, as the other
  (old / a / "config.json").write_text(json.dumps(config))
  assert "85.00 ± 7.07" in tables.to_markdown(tables.build_tables([str(old), str(new)])[0])
  # float32 runs made before the key had a float32 stream: they join today's.
  f32_old = make_sweep_dir(tmp_path / "f32_old", DEPTH_SWEEP, {a: C(0.9)})
  f32_new = make_sweep_dir(tmp_path / "f32_new", DEPTH_SWEEP, {b: C(0.8)})
  config = json.loads((f32_old / a / "config.json").read_text())
  del config["model"]["residual_dtype"], config["model"]["classifier_init"]
  (f32_old / a / "config.json").write_text(json.dumps(config))
  assert "85.00 ± 7.07" in tables.to_markdown(tables.build_tables([str(f32_old), str(f32_new)])[0])
