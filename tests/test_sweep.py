"""Sweeps: deterministic expansion, relaunch rules, locking and executors (PAPER.md section 4).

A fake trainer (a few lines of Python, no JAX) stands in for scripts/train.py here so that these
tests take seconds; tests/test_sweep_e2e.py runs the real one.
"""

import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest

from skipinit import sweep as sweep_lib
from skipinit import rundir, values
from skipinit.errors import ConfigError
from skipinit.sweep import executors, spec
from skipinit.sweep.lock import RunLock, is_locked

from conftest import install_fake_trainer, launch_sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEPS = os.path.join(REPO, "configs", "sweeps")
CHEAP_DEPTH = os.path.join(SWEEPS, "depth_table.py") + ":epochs=2,seeds=2,lr_exps=-4:-3,depths=16;100"

# Writes the run-directory files of DESIGN.md like the real trainer: diverges for lr >= 8, fails
# when the workdir contains $FAKE_FAIL, sleeps $FAKE_SLEEP s, logs each call to $FAKE_CALLS.
FAKE_TRAINER = textwrap.dedent("""\
    import json, os, sys, time
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
    workdir = args["workdir"]
    overrides = {k[len("config."):]: v for k, v in args.items() if k.startswith("config.")}
    with open(os.environ["FAKE_CALLS"], "a") as f:
      f.write(json.dumps({"workdir": workdir, "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
                          "jax_cache": os.environ.get("JAX_COMPILATION_CACHE_DIR"),
                          "lock_fds": sorted(os.listdir("/proc/self/fd"))}) + "\\n")
    os.makedirs(workdir, exist_ok=True)
    config = {"model": {}, "data": {}, "train": {}}
    for k, v in overrides.items():
      s, n = k.split(".")
      try:
        v = float(v) if "." in v or "e" in v else int(v)
      except ValueError:
        pass
      config[s][n] = v
    json.dump(config, open(os.path.join(workdir, "config.json"), "w"))
    def status(**kw):
      json.dump(kw, open(os.path.join(workdir, "status.json"), "w"))
    status(status="running", step=0, epoch=0.0)
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
    if os.environ.get("FAKE_FAIL") and os.environ["FAKE_FAIL"] in workdir:
      status(status="failed", step=0, epoch=0.0, error="RuntimeError: fake")
      sys.exit(1)
    lr = config["train"]["lr"]
    if lr >= 8:
      status(status="diverged", step=3, epoch=0.1, diverged_step=3)
    else:
      acc = 0.5 + lr + 0.01 * config["train"].get("seed", 0)
      m = {"step": 10, "epoch": 1.0, "train_loss": 1.0 - lr, "train_acc": acc, "test_loss": 1.0,
           "test_acc": acc, "lr": lr, "examples_per_sec": 1.0, "wall_time": 0.1}
      open(os.path.join(workdir, "metrics.jsonl"), "w").write(json.dumps(m) + "\\n")
      status(status="completed", step=10, epoch=1.0, train_loss=1.0 - lr, train_acc=acc,
             test_loss=1.0, test_acc=acc)
    """)


@pytest.fixture
def fake(tmp_path, monkeypatch):
  """A fake train script; returns a function listing the workdirs it was called for."""
  return install_fake_trainer(tmp_path, monkeypatch, FAKE_TRAINER)


# ------------------------------------------------------------------------------------ expansion

def test_expansion_is_deterministic_and_named_by_axes():
  a = spec.expand(spec.load_sweep(CHEAP_DEPTH))
  b = spec.expand(spec.load_sweep(CHEAP_DEPTH))
  assert [(r.name, r.method, r.overrides) for r in a] == [(r.name, r.method, r.overrides) for r in b]
  assert len(a) == 2 * 4 * 2 * 2  # depths x methods x lrs x seeds
  assert len({r.name for r in a}) == len(a)
  assert a[0].name == "batchnorm/depth16_lr2^-4_seed0"
  assert a[0].overrides == {"model.normalizer": "batchnorm", "model.depth": 16, "model.width": 2,
                            "train.batch_size": 64, "train.epochs": 2.0, "train.lr": 0.0625,
                            "train.seed": 0}
  names = {r.name for r in a}
  assert "skipinit_inv_sqrt_d/depth100_lr2^-3_seed1" in names
  assert a[0].resolved["model.name"] == "wrn" and a[0].resolved["train.lr"] == 0.0625


def test_every_sweep_file_expands_at_full_budget():
  sizes = {"depth_table.py": 252, "ablation_table.py": 441, "batch_size.py": 432,
           "agc_batch_size.py": 504, "imagenet_table.py": 48}
  for name, size in sizes.items():
    runs = spec.expand(spec.load_sweep(os.path.join(SWEEPS, name)))
    assert len(runs) == size, name
    assert len({r.name for r in runs}) == size


def test_batch_size_sweep_ghost_batch_follows_batch_but_not_into_names():
  runs = spec.expand(spec.load_sweep(
      os.path.join(SWEEPS, "batch_size.py") + ":batch_exps=4:7,lr_exps=-2,seeds=1"))
  bn = {r.overrides["train.batch_size"]: r for r in runs if r.method == "batchnorm"}
  assert {b: r.overrides["model.ghost_batch_size"] for b, r in bn.items()} == \
      {16: 16, 32: 32, 64: 64, 128: 64}
  assert bn[16].name == "batchnorm/bs16" and "model.ghost_batch_size" not in \
      next(r for r in runs if r.method == "skipinit_a0").overrides


def test_knobs_presets_and_config_overrides():
  s = spec.load_sweep(CHEAP_DEPTH + ",preset=smoke,data.synthetic_train_size=128")
  assert s["config_arg"] == "smoke" and s["knobs"]["lr_exps"] == [-4, -3]
  runs = spec.expand(s)
  assert all(r.overrides["data.synthetic_train_size"] == 128 for r in runs)
  with pytest.raises(spec.SweepError, match="unknown sweep knob 'lrs'"):
    spec.load_sweep(CHEAP_DEPTH + ",lrs=1")
  with pytest.raises(spec.SweepError, match="'two' is not an integer"):
    spec.load_sweep(CHEAP_DEPTH + ",seeds=two")
  with pytest.raises(spec.SweepError, match="a range is lo:hi"):
    spec.load_sweep(CHEAP_DEPTH + ",lr_exps=-3:1:2")


def test_one_parser_and_formatter_for_overrides_knobs_flags_and_names():
  """skipinit.values reads config overrides and sweep knobs, and writes the trainers' flags, run
  names and help, with one error wording."""
  assert values.parse("k", "-2:1", (0,)) == (-2, -1, 0, 1)
  assert values.parse("k", "(0.1;0.2)", (0.5,)) == (0.1, 0.2)
  assert values.parse("k", "yes", False) is True and values.parse("k", "none", None) is None
  assert [values.parse("k", t, None) for t in ("8", "0.5", "gpu")] == [8, 0.5, "gpu"]
  with pytest.raises(ConfigError, match=r"^train.seed: 'two' is not an integer$"):
    values.parse("train.seed", "two", 0)
  assert values.fmt((0.5, 0.75)) == "(0.5,0.75)" and values.fmt(False) == "false"
  assert values.fmt(0.0625, "name", exponent=True) == "2^-4" and values.fmt(2.0, "name") == "2"
  assert values.fmt((-6, -5, -4), "help") == "-6:-4" and values.fmt(200.0, "help") == "200"


def test_a_preset_sets_the_knobs_the_sweep_would_set_over_it():
  """preset=smoke alone gives smoke-sized runs; a knob given explicitly still wins."""
  depth_table = os.path.join(SWEEPS, "depth_table.py")
  runs = spec.expand(spec.load_sweep(depth_table + ":preset=smoke,seeds=1,lr_exps=-1"))
  assert {(r.overrides["model.depth"], r.overrides["model.width"], r.overrides["train.epochs"],
           r.overrides["train.batch_size"]) for r in runs} == {(10, 1, 2.0, 32)}
  runs = spec.expand(spec.load_sweep(depth_table + ":preset=smoke,seeds=1,lr_exps=-1,epochs=1"))
  assert {r.overrides["train.epochs"] for r in runs} == {1.0}
  batch = spec.load_sweep(os.path.join(SWEEPS, "batch_size.py") + ":preset=smoke,batch_exps=5")
  assert batch["knobs"]["ghost"] == 4 and batch["knobs"]["depth"] == 10
  # A preset sets a key even to the base config's value: 16-4 means depth 16, width 4.
  runs = spec.expand(spec.load_sweep(depth_table + ":preset=16-4,seeds=1,lr_exps=-1"))
  assert {(r.overrides["model.depth"], r.overrides["model.width"]) for r in runs} == {(16, 4)}
  # Without a preset the sweep's own defaults hold.
  assert {r.overrides["model.depth"] for r in spec.expand(spec.load_sweep(CHEAP_DEPTH))} == {16, 100}
  with pytest.raises(spec.SweepError, match="unknown config key"):
    spec.expand(spec.load_sweep(CHEAP_DEPTH + ",train.lrr=1"))
  with pytest.raises(spec.SweepError, match="sets model.normalizer, train.lr itself"):
    spec.load_sweep(CHEAP_DEPTH + ",train.lr=0.1,model.normalizer=none")


def test_a_preset_that_does_not_declare_its_keys_is_one_clear_error(tmp_path):
  config = tmp_path / "my_config.py"
  config.write_text("from skipinit import config as cfg_lib\n"
                    "def _tiny(c):\n  c.model.depth = 10\n"
                    "PRESETS = {'tiny': _tiny}\n"
                    "def get_config(arg=None):\n"
                    "  return cfg_lib.apply_arg(cfg_lib.base_config(), arg, PRESETS)\n")
  fn = spec._load_module(os.path.join(SWEEPS, "depth_table.py"), "sweep").depth_table
  with pytest.raises(spec.SweepError, match=r"preset=tiny of .*my_config.py does not declare the keys"):
    spec._knobs_from_presets(fn, {}, ["tiny"], str(config), "")


# -------------------------------------------------------------------------- launch and relaunch

def test_relaunch_skips_finished_and_diverged_reruns_failed_and_interrupted(tmp_path, fake,
                                                                           monkeypatch):
  sweep = os.path.join(SWEEPS, "batch_size.py") + ":epochs=1,seeds=1,lr_exps=-2;3,batch_exps=6"
  d = tmp_path / "sw"
  monkeypatch.setenv("FAKE_FAIL", "skipinit_a0/lr2^-2")
  rc, logs = launch_sweep(sweep, d)
  assert rc == 1 and len(fake()) == 4  # one failed
  classes = executors.classify(str(d), spec.runs_from_manifest(spec.read_manifest(str(d))))
  assert [r.name for r in classes["diverged"]] == ["batchnorm/lr2^3", "skipinit_a0/lr2^3"]
  assert [r.name for r in classes["failed"]] == ["skipinit_a0/lr2^-2"]
  assert rundir.run_state(str(d / "batchnorm" / "lr2^3")) == "diverged"

  # Relaunch: only the failed run trains again.
  monkeypatch.delenv("FAKE_FAIL")
  rc, logs = launch_sweep(sweep, d)
  assert rc == 0 and [c["workdir"] for c in fake()[4:]] == [str(d / "skipinit_a0" / "lr2^-2")]

  # An interrupted run (status "running", nobody holds its lock) is re-run; nothing else is.
  (d / "batchnorm" / "lr2^-2" / "status.json").write_text('{"status": "running", "step": 3}')
  rc, logs = launch_sweep(sweep, d)
  assert rc == 0 and [c["workdir"] for c in fake()[5:]] == [str(d / "batchnorm" / "lr2^-2")]
  rc, logs = launch_sweep(sweep, d)
  assert len(fake()) == 6 and "nothing to do" in logs[-1]
  attempts = (d / executors.ATTEMPTS).read_text().splitlines()
  assert len(attempts) == 6 and json.loads(attempts[0])["state"] in ("completed", "diverged", "failed")


@pytest.mark.parametrize("executor", ["local", "gpus"])
def test_sigterm_to_the_sweep_stops_its_trainers_and_a_relaunch_resumes(tmp_path, fake, executor):
  """SIGTERM to the sweep process alone (`kill PID`, a scheduler) must not orphan its trainer: an
  orphan would train on holding the run's lock, and a relaunch would skip the run as busy."""
  sweep = os.path.join(SWEEPS, "batch_size.py") + ":epochs=1,seeds=1,lr_exps=-2,batch_exps=6"
  d = tmp_path / "sw"
  code = textwrap.dedent(f"""\
      import sys
      from skipinit import sweep
      from skipinit.sweep import executors
      executors.TRAIN_SCRIPT = {str(tmp_path / "fake_train.py")!r}
      sweep.spec.tfds_installed = lambda: True
      try:
        with executors.sigterm_stops_trainers():
          sweep.launch({sweep!r}, {str(d)!r}, executor={executor!r}, gpus=["0"])
      except executors.Terminated:
        sys.exit(143)
      """)
  env = dict(os.environ, FAKE_SLEEP="600")
  p = subprocess.Popen([sys.executable, "-c", code], env=env)
  run_dir = d / "batchnorm"
  for _ in range(300):  # until the trainer is up (it writes its status first)
    if (run_dir / "status.json").exists():
      break
    threading.Event().wait(0.1)
  assert is_locked(str(run_dir))
  p.send_signal(subprocess.signal.SIGTERM)
  assert p.wait(timeout=60) == 143
  assert not is_locked(str(run_dir))  # the trainer is gone with its lock
  attempts = [json.loads(l) for l in (d / executors.ATTEMPTS).read_text().splitlines()]
  assert [(a["run"], a["state"]) for a in attempts] == [("batchnorm", "interrupted")]
  rc, logs = launch_sweep(sweep, d)
  assert rc == 0 and [c["workdir"] for c in fake()][-2:] == [str(run_dir), str(d / "skipinit_a0")]


def test_locked_run_is_left_to_its_worker(tmp_path, fake):
  sweep = os.path.join(SWEEPS, "batch_size.py") + ":epochs=1,seeds=1,lr_exps=-2:-1,batch_exps=6"
  d = tmp_path / "sw"
  with RunLock(str(d / "batchnorm" / "lr2^-2")) as lock:
    assert lock.acquire()
    rc, logs = launch_sweep(sweep, d)
    assert "1 busy" in logs[0]
    assert str(d / "batchnorm" / "lr2^-2") not in [c["workdir"] for c in fake()]
    assert len(fake()) == 3
  # The lock died with its holder: the next launch trains the run.
  rc, logs = launch_sweep(sweep, d)
  assert fake()[-1]["workdir"] == str(d / "batchnorm" / "lr2^-2") and len(fake()) == 4 and rc == 0


def test_two_concurrent_workers_never_train_the_same_run(tmp_path, fake, monkeypatch):
  monkeypatch.setenv("FAKE_SLEEP", "0.3")
  sweep = os.path.join(SWEEPS, "batch_size.py") + ":epochs=1,seeds=2,lr_exps=-2:-1,batch_exps=6"
  d = tmp_path / "sw"
  runs = spec.expand(spec.load_sweep(sweep))
  spec.write_manifest(str(d), spec.manifest(spec.load_sweep(sweep), runs))
  config = spec.load_sweep(sweep)["config"]
  threads = [threading.Thread(target=executors.run_local,
                              args=(str(d), runs, config, "", None, lambda s: None)) for _ in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  workdirs = [c["workdir"] for c in fake()]
  assert sorted(workdirs) == sorted(str(d / r.name) for r in runs)  # each exactly once
  # The training process inherited the lock's file descriptor (it keeps the lock if we die).
  assert all(len(c["lock_fds"]) >= 4 for c in fake())


def test_gpus_executor_pins_one_gpu_per_worker(tmp_path, fake, monkeypatch):
  monkeypatch.setattr(executors, "has_gpu", lambda: True)
  sweep = os.path.join(SWEEPS, "batch_size.py") + ":epochs=1,seeds=2,lr_exps=-2:-1,batch_exps=6"
  rc, logs = launch_sweep(sweep, tmp_path / "sw", executor="gpus", gpus=["0", "1"])
  calls = fake()
  assert rc == 0 and len(calls) == 8 and {c["gpu"] for c in calls} <= {"0", "1"}
  assert any("gpu 1: " in l for l in logs) and not any("no GPU" in l for l in logs)
  with pytest.raises(spec.SweepError, match="found no GPUs"):
    executors.run_gpus(str(tmp_path), [], "", "", [])


def test_slurm_executor_through_submitit_debug_cluster(tmp_path, fake):
  pytest.importorskip("submitit")
  sweep = os.path.join(SWEEPS, "batch_size.py") + ":epochs=1,seeds=1,lr_exps=-2;3,batch_exps=6"
  rc, logs = launch_sweep(sweep, tmp_path / "sw", executor="slurm", slurm_cluster="debug")
  assert rc == 0 and len(fake()) == 4 and "job array" in logs[1]
  rc, logs = launch_sweep(sweep, tmp_path / "sw", executor="slurm", slurm_cluster="debug")
  assert len(fake()) == 4 and "nothing to do" in logs[-1]


def test_dry_run_writes_nothing_and_a_changed_sweep_is_refused(tmp_path, fake):
  d = tmp_path / "sw"
  rc, logs = launch_sweep(CHEAP_DEPTH, d, dry_run=True)
  assert rc == 0 and not d.exists() and len(logs) == 2 + 32 and fake() == []
  assert "scripts/train.py" in logs[-1] or "fake_train.py" in logs[-1]
  os.makedirs(d)
  runs = spec.expand(spec.load_sweep(CHEAP_DEPTH))
  spec.write_manifest(str(d), spec.manifest(spec.load_sweep(CHEAP_DEPTH), runs))
  # No run has started: the directory is not pinned yet (a dry run says a launch replaces it).
  other = CHEAP_DEPTH.replace("seeds=2", "seeds=1")
  rc, logs = launch_sweep(other, d, dry_run=True)
  assert rc == 0 and "none of whose runs started: a launch replaces it" in logs[0]
  (d / runs[3].name).mkdir(parents=True)
  (d / runs[3].name / "config.json").write_text("{}")  # a trainer started this one
  with pytest.raises(spec.SweepError, match=r"holds a different sweep .*1 started.*: 32 runs -> 16"):
    launch_sweep(other, d, dry_run=True)


def test_script_reports_bad_input_in_one_line(tmp_path):
  def run(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "scripts", "sweep.py"), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
  p = run(f"--sweep={CHEAP_DEPTH}", f"--sweep_dir={tmp_path / 'x'}", "--dry_run")
  assert p.returncode == 0 and "32 runs: 32 new" in p.stdout
  p = run(f"--sweep={CHEAP_DEPTH},depths=17", f"--sweep_dir={tmp_path / 'x'}")
  assert p.returncode == 2 and "Traceback" not in p.stderr
  assert p.stderr.strip().splitlines()[-1].startswith("error: run batchnorm/")
  assert "not a valid Wide-ResNet depth" in p.stderr and not (tmp_path / "x").exists()


def test_each_skipinit_method_builds_the_network_its_label_names():
  """The bias ablation is real: only skipinit_nobias drops the block-conv biases."""
  from skipinit import config as cfg_lib, models
  from skipinit.models import make_recipe
  from skipinit.sweep import methods

  def recipe(name):
    cfg = cfg_lib.base_config()
    cfg_lib.apply_overrides(cfg, methods.select([name])[name])
    return make_recipe(cfg.model, models.num_residual_blocks(cfg.model))

  assert not recipe("skipinit_nobias").conv_bias
  for name in ("skipinit_a0", "skipinit_bias", "skipinit_reg", "skipinit_nowd", "skipinit_a1",
               "skipinit_inv_sqrt_d"):
    assert recipe(name).conv_bias, name
  assert recipe("skipinit_reg") != recipe("skipinit_nobias")
  assert [recipe(n).fixup_init for n in ("fixup", "fixup_zero_only", "fixup_rescale_only")] == [
      "full", "zero_only", "rescale_only"]


def test_an_executor_that_cannot_run_leaves_the_sweep_dir_unpinned(tmp_path, monkeypatch):
  monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
  monkeypatch.setattr(executors, "has_gpu", lambda: True)  # (without one: CPU workers, below)
  with pytest.raises(spec.SweepError, match="found no GPUs"):
    launch_sweep(CHEAP_DEPTH, tmp_path / "sw", executor="gpus")
  assert not (tmp_path / "sw").exists()  # a later launch with another grid is not refused


def test_a_refused_run_is_failed_with_its_reason_and_a_fixed_data_path_relaunches(tmp_path):
  """The real trainer refuses data it cannot read (exit 2, nothing written); the sweep records it.
  Where the data lives is not part of the sweep's identity: the corrected launch is accepted."""
  arg = ("preset=smoke,depth=10,width=1,epochs=1,seeds=1,batch_exps=5,lr_exps=-2,"
         "methods=batchnorm,train.num_devices=1,data.source=folder,data.path=")
  sweep = os.path.join(SWEEPS, "batch_size.py") + ":" + arg
  d = tmp_path / "sw"
  # A path that does not exist is refused before anything starts (or pins the directory).
  with pytest.raises(spec.SweepError, match="data.path='/no/such/cifar' does not exist"):
    launch_sweep(sweep + "/no/such/cifar", d)
  assert not d.exists()
  empty, other = tmp_path / "empty", tmp_path / "other"
  empty.mkdir(), other.mkdir()
  rc, logs = launch_sweep(sweep + str(empty), d)
  assert rc == 1 and "REFUSED: error: no train images found" in logs[-3]
  assert "refused by the trainer" in logs[-1] and "resume from their checkpoints" not in logs[-1]
  status = json.loads((d / "batchnorm" / "status.json").read_text())
  assert status["status"] == "failed" and "no train images" in status["error"]
  classes = executors.classify(str(d), spec.runs_from_manifest(spec.read_manifest(str(d))))
  assert [r.name for r in classes["failed"]] == ["batchnorm"]
  # The refused run never started: the directory is not pinned (another grid would replace it).
  rc, logs = launch_sweep(sweep.replace("lr_exps=-2", "lr_exps=-3") + str(empty), d, dry_run=True)
  assert rc == 0 and "none of whose runs started" in logs[0]
  rc, logs = launch_sweep(sweep + str(other), d, dry_run=True)
  assert rc == 0 and "1 failed" in logs[0] and f"--config.data.path={other}" in logs[-1]
  # Relaunched for real: refused again (this attempt's reason), and sweep.json names the new path.
  rc, logs = launch_sweep(sweep + str(other), d)
  assert rc == 1 and str(other) in json.loads((d / "batchnorm" / "status.json").read_text())["error"]
  assert spec.read_manifest(str(d))["arg"].endswith(f"data.path={other}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG): Linux")
def test_a_trainer_gets_sigterm_when_its_sweep_dies_even_by_sigkill(tmp_path):
  """A sweep killed with SIGKILL can stop nothing itself: its trainers must not train on alone."""
  marker = tmp_path / "sigterm"
  child = textwrap.dedent(f"""\
      import importlib.util, signal, sys, time
      spec = importlib.util.spec_from_file_location("train", {os.path.join(REPO, "scripts", "train.py")!r})
      train = importlib.util.module_from_spec(spec); spec.loader.exec_module(train)
      signal.signal(signal.SIGTERM, lambda *_: (open({str(marker)!r}, "w").close(), sys.exit(0)))
      train._stop_with_the_sweep()
      print("ready", flush=True)
      time.sleep(60)
      """)
  parent = textwrap.dedent(f"""\
      import os, subprocess, sys
      env = dict(os.environ, SKIPINIT_SWEEP_PID=str(os.getpid()))
      p = subprocess.Popen([sys.executable, "-c", {child!r}], env=env, stdout=subprocess.PIPE, text=True)
      assert p.stdout.readline().strip() == "ready"
      os.kill(os.getpid(), 9)  # the sweep, SIGKILLed
      """)
  subprocess.run([sys.executable, "-c", parent], timeout=60)
  for _ in range(100):
    if marker.exists():
      break
    threading.Event().wait(0.1)
  assert marker.exists()


# ----------------------------------------------------------------- a new user's first hour (19)

SMALL_BS = os.path.join(SWEEPS, "batch_size.py") + ":epochs=1,seeds=1,lr_exps=-2,batch_exps=6"


def test_run_names_use_the_exponent_and_an_old_directory_keeps_its_names(tmp_path, fake):
  sweep = (os.path.join(SWEEPS, "depth_table.py") +
           ":epochs=1,seeds=1,lr_exps=-3;100,depths=16,methods=batchnorm")
  runs = spec.expand(spec.load_sweep(sweep))
  assert [r.name for r in runs] == ["batchnorm/lr2^-3", "batchnorm/lr2^100"]
  # A directory made when the names were decimals: the same runs under their old names.
  d = tmp_path / "old"
  d.mkdir()
  m = spec.manifest(spec.load_sweep(sweep), runs)
  old_names = ["batchnorm/lr0.125", "batchnorm/lr1.2676506002282294e+30"]
  for r, name in zip(m["runs"], old_names):
    r["name"] = name
  (d / "sweep.json").write_text(json.dumps(m))
  (d / old_names[0]).mkdir(parents=True)
  (d / old_names[0] / "status.json").write_text('{"status": "completed", "test_acc": 0.5}')
  rc, logs = launch_sweep(sweep, d)
  assert rc == 0 and "1 completed, 1 new" in logs[0]
  assert [c["workdir"] for c in fake()] == [str(d / old_names[1])]  # the finished one not redone
  assert sorted(os.listdir(d / "batchnorm")) == ["lr0.125", "lr1.2676506002282294e+30"]
  assert [r["name"] for r in spec.read_manifest(str(d))["runs"]] == old_names


def test_without_tensorflow_the_default_data_is_refused_before_the_directory_is_pinned(
    tmp_path, fake, monkeypatch):
  monkeypatch.setattr(spec, "tfds_installed", lambda: False)
  d = tmp_path / "sw"
  rc, logs = launch_sweep(SMALL_BS, d, dry_run=True)  # the dry run says what would fail
  assert rc == 0 and logs[0].startswith("warning: data.source=tfds (the default) needs TensorFlow")
  assert "--data=PATH" in logs[0] and "a launch here would refuse to start" in logs[0]
  with pytest.raises(spec.SweepError, match="needs TensorFlow"):
    launch_sweep(SMALL_BS, d)
  assert not d.exists() and fake() == []
  # A directory an earlier launch pinned though every run was refused (as before this check):
  # a relaunch with --data replaces its sweep.
  runs = spec.expand(spec.load_sweep(SMALL_BS))
  spec.write_manifest(str(d), spec.manifest(spec.load_sweep(SMALL_BS), runs))
  for r in runs:
    (d / r.name).mkdir(parents=True)
    (d / r.name / "status.json").write_text(json.dumps(
        {"status": "failed", "refused": True, "error": "error: data.source=tfds needs ..."}))
  data = tmp_path / "cifar10-jpeg.tar.gz"
  data.write_bytes(b"")  # (the fake trainer reads nothing)
  rc, logs = launch_sweep(SMALL_BS, d, data=str(data))
  assert rc == 0 and "none of whose runs started: replaced by this one" in logs[0]
  assert len(fake()) == 2
  assert all(r["overrides"]["data.source"] == "folder" and r["overrides"]["data.path"] == str(data)
             for r in spec.read_manifest(str(d))["runs"])
  # --data is the argument's data.source=folder,data.path=...: the same sweep. Both: refused.
  assert spec.load_sweep(sweep_lib.with_data(SMALL_BS, str(data)))["runs"] == spec.load_sweep(
      SMALL_BS + f",data.source=folder,data.path={data}")["runs"]
  with pytest.raises(spec.SweepError, match="both say where the data is"):
    launch_sweep(SMALL_BS + ",data.path=/x", d, data=str(data))
  # Runs have started now: other data is another sweep (its results would differ).
  monkeypatch.setattr(spec, "tfds_installed", lambda: True)
  with pytest.raises(spec.SweepError, match=r"2 started.*data.source 'folder' -> 'tfds'"):
    launch_sweep(SMALL_BS, d)


def test_gpus_executor_without_a_gpu_trains_on_cpu_workers(tmp_path, fake, monkeypatch):
  monkeypatch.setattr(executors, "has_gpu", lambda: False)
  monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
  sweep = os.path.join(SWEEPS, "batch_size.py") + ":epochs=1,seeds=2,lr_exps=-2:-1,batch_exps=6"
  rc, logs = launch_sweep(sweep, tmp_path / "sw", executor="gpus", gpus=["0", "0"])
  assert rc == 0 and len(fake()) == 8
  assert logs[0] == ("no GPU here (nvidia-smi lists none): --executor=gpus trains on the CPU "
                     "with 2 local workers instead")
  assert sum("GPU" in l or "gpu " in l for l in logs) == 1, logs
  assert all(c["gpu"] is None for c in fake()) and any("] worker " in l for l in logs)
  rc, logs = launch_sweep(sweep.replace("seeds=2", "seeds=1"), tmp_path / "sw2", executor="gpus")
  assert rc == 0 and "with 1 local worker instead (--gpus=0,0 gives two)" in logs[0]


def test_trainers_share_a_compilation_cache_and_the_manifest_holds_no_local_path(
    tmp_path, fake, monkeypatch):
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  d = tmp_path / "sw"
  launch_sweep(SMALL_BS, d)
  assert {c["jax_cache"] for c in fake()} == {os.path.join(str(d), ".jax_cache")}
  m = spec.read_manifest(str(d))
  assert (m["config"], m["sweep_file"]) == ("configs/cifar10_wrn.py", "configs/sweeps/batch_size.py")
  # A manifest written with another machine's absolute paths is the same sweep here.
  m["config"] = "/home/someone/skipinit/configs/cifar10_wrn.py"
  (d / "sweep.json").write_text(json.dumps(m))
  rc, logs = launch_sweep(SMALL_BS, d)
  assert rc == 0 and "nothing to do" in logs[-1]
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))  # the user's wins
  launch_sweep(SMALL_BS.replace("lr_exps=-2", "lr_exps=-1"), tmp_path / "sw2")
  assert fake()[-1]["jax_cache"] == str(tmp_path / "mine")


def test_sweep_list_and_help_show_every_knob_with_its_default(tmp_path):
  def run(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "scripts", "sweep.py"), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
  listing = run("--list")
  assert listing.returncode == 0, listing.stderr
  for name in sorted(os.listdir(SWEEPS)):
    if not name.endswith(".py"):
      continue
    path = os.path.join(SWEEPS, name)
    fn = spec.load_sweep(path)["fn"]
    assert f"configs/sweeps/{name}" in listing.stdout
    for knob, default, meaning in spec.knob_help(fn):
      assert meaning, f"{name}: knob {knob} has no meaning (KNOB_HELP or an Args: docstring)"
      assert f"    {knob}={default}" in listing.stdout
  assert "lr_exps=-6:0" in listing.stdout and "preset=NAME" in listing.stdout
  assert "needs: CIFAR-10: --data=PATH" in listing.stdout and "needs: ImageNet" in listing.stdout
  helped = run("--help")
  assert "QUOTE" in helped.stdout and "lr_exps=-8:3" in helped.stdout and "--data" in helped.stdout
  # --data through the script: the trainers' commands read the files.
  p = run("--sweep=" + SMALL_BS, f"--sweep_dir={tmp_path / 'sw'}", "--data=/data/c10.tar.gz",
          "--dry_run")
  assert p.returncode == 0 and "--config.data.path=/data/c10.tar.gz" in p.stdout.splitlines()[-1]
  assert "warning: data.path='/data/c10.tar.gz' does not exist" in p.stdout
  p = run("--sweep=" + SMALL_BS, f"--sweep_dir={tmp_path / 'sw'}", "seeds=2")  # a stray word
  assert p.returncode == 2 and "needs the flag quoted" in p.stderr


def test_the_summary_says_when_runs_were_busy():
  from skipinit import sweep as sweep_lib
  lines = []
  sweep_lib._report({"busy": ["one"]}, {"busy": 4, "completed": 5}, lines.append)
  assert lines[0] == "done: 4 busy, 5 completed"
  assert lines[1].startswith("5 runs were busy and not started (1 at the launch, 4 when their turn came)")
