"""The benchmark's pieces (issue 6) run on CPU; figures are checked for sanity, not speed."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace as NS

import pytest

from skipinit import ConfigError, config as cfg_lib
from skipinit.train import benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("depth,width,gflops", [(16, 4, 2.36), (28, 10, 31.5), (100, 2, 5.36),
                                                (1000, 2, 56.3)])
def test_analytic_flops_match_the_reference_counts(depth, width, gflops):
  m = cfg_lib.base_config().model
  m.depth, m.width = depth, width
  assert 6 * benchmark.forward_macs(m) / 1e9 == pytest.approx(gflops, rel=2e-3)


def test_resnet50_flops_match_the_usual_count():
  m = cfg_lib.load_config_file("imagenet_resnet", "50").model
  # ResNet-50: ~4.1 G multiply-accumulates per 224x224 image (torchvision/timm count).
  assert benchmark.forward_macs(m, 224) / 1e9 == pytest.approx(4.1, rel=0.03)


def test_parse_row():
  r = benchmark.parse_row("100-2:skipinit:128:bfloat16:scan_unroll=2+remat=true")
  assert (r.model, r.normalizer, r.batch_size, r.dtype, r.overrides) == (
      "WRN-100-2", "skipinit", 128, "bfloat16", "scan_unroll=2+remat=true")
  assert benchmark.parse_row("r50:batchnorm:256:bfloat16").model == "ResNet-50-V2"
  for bad in ("100-2:skipinit:128", "wrn:bn:1:float32", "16-4:bn:big:float32"):
    with pytest.raises(ConfigError, match="ARCH:NORMALIZER:BATCH:DTYPE"):
      benchmark.parse_row(bad)


def test_bench_row_times_the_real_train_chunk():
  r = benchmark.bench_row(benchmark.parse_row("10-1:skipinit:16:float32:num_devices=1"),
                          steps_per_dispatch=2, max_dispatches=1, min_time_s=0.0, profile=True)
  assert r.compile_s > 0 and r.examples_per_sec > 0 and r.tflops > 0 and r.timed_dispatches == 3
  assert r.step_ms == pytest.approx(1e3 * 16 / r.examples_per_sec)
  assert r.profile is None  # XLA:CPU records no device plane
  assert "WRN-10-1" in benchmark.format_table([r])


def test_a_row_may_set_its_own_steps_per_dispatch():
  row = benchmark.parse_row("10-1:skipinit:8:float32:num_devices=1+steps_per_dispatch=3")
  config = benchmark.row_config(row, steps_per_dispatch=2)
  assert config.train.steps_per_dispatch == 3 and config.data.synthetic_train_size == 24
  r = benchmark.bench_row(row, steps_per_dispatch=2, max_dispatches=1, min_time_s=0.0)
  assert r.steps_per_dispatch == 3 and r.timed_dispatches == 3
  assert r.step_ms == pytest.approx(1e3 * 8 / r.examples_per_sec)


def test_a_dispatch_longer_than_the_data_set_is_one_clear_error(tmp_path):
  from conftest import SAMPLE_DIR  # 400 training images: fewer than one 8-step dispatch of 64
  row = benchmark.parse_row(f"10-1:skipinit:64:float32:num_devices=1+source=folder"
                            f"+path={SAMPLE_DIR}+cache_dir={tmp_path}")
  with pytest.raises(ConfigError, match="8-step dispatch needs 512 training examples; the data "
                     "set has 400"):
    benchmark.bench_row(row, steps_per_dispatch=8, compile_only=True)


def test_bench_row_times_an_imagenet_step_on_a_device_batch():
  row = benchmark.parse_row("r14:batchnorm:8:float32:width=0.125+image_size=64+ghost_batch_size=8"
                            "+num_devices=1")
  r = benchmark.bench_row(row, max_dispatches=3, min_time_s=0.0)
  assert r.model == "ResNet-14-V2" and r.steps_per_dispatch == 1 and r.examples_per_sec > 0


def _event(name, start, dur):
  return NS(name=name, start_ns=start, duration_ns=dur)


def test_summarize_trace_reads_kernels_off_the_gpu_streams():
  stream = NS(name="Stream #7(Compute)", events=[
      _event("conv_fwd", 0, 100), _event("loop_fusion", 50, 100),  # overlap: busy 0-150
      _event("conv_fwd", 300, 100), _event("MemcpyD2H", 450, 10)])
  summary_line = NS(name="XLA Ops", events=[_event("conv_fwd", 0, 1000)])  # repeats: skipped
  planes = [NS(name="/host:CPU", lines=[]), NS(name="/device:GPU:0", lines=[stream, summary_line])]
  s = benchmark.summarize_trace(planes, steps=2)
  assert s["device_busy_frac"] == pytest.approx((150 + 100 + 10) / 460)
  # A second stream: the event that starts last need not end last; busy stays a fraction.
  copy = NS(name="Stream #9(MemcpyD2D)", events=[_event("long_kernel", 0, 1000)])
  planes[1].lines.append(copy)
  assert benchmark.summarize_trace(planes, steps=2)["device_busy_frac"] == pytest.approx(1.0)
  assert s["kernels_per_step"] == 1.5 and s["memcpys_per_step"] == 0.5
  assert s["kernel_ms_per_step"] == pytest.approx(300 / 2 / 1e6)
  top = s["top_kernels"][0]
  assert top["name"] == "conv_fwd" and top["share"] == pytest.approx(2 / 3)
  assert benchmark.summarize_trace([NS(name="/host:CPU", lines=[])], steps=2) is None


def _result(model, norm, batch, rate, compile_s=1.0):
  return benchmark.BenchResult(model=model, normalizer=norm, batch_size=batch, dtype="bfloat16",
                               overrides="", steps_per_dispatch=8, device="x",
                               compile_s=compile_s, examples_per_sec=rate)


def test_check_targets_reports_met_and_missed():
  lines = benchmark.check_targets([
      _result("WRN-100-2", "batchnorm", 128, 9000.0), _result("WRN-100-2", "skipinit", 128, 11000.0),
      _result("WRN-1000-2", "batchnorm", 128, 900.0, compile_s=12.0),
      _result("WRN-16-4", "batchnorm", 64, 50_000.0), _result("WRN-16-4", "batchnorm", 512, 95_000.0)])
  text = "\n".join(lines)
  assert "MISS WRN-100-2 batchnorm b128: 9,000 img/s vs target 10,260" in text
  assert "met  WRN-100-2 skipinit b128" in text
  assert "met  WRN-1000-2 batchnorm b128" in text and "MISS WRN-1000-2 batchnorm compile 12.0" in text
  assert "met  WRN-16-4 batchnorm batch 64 at 53%" in text
  assert "met  WRN-100-2 b128: skipinit 1.22x batchnorm" in text


def test_script_writes_every_row_and_keeps_going_after_a_bad_one(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"),
       "--rows=10-1:skipinit:12:float32,10-1:skipinit:8:float32", "--steps_per_dispatch=1",
       "--min_time_s=0", "--dispatches=3", f"--out_dir={tmp_path}", "--tag=t"],
      capture_output=True, text=True, env=env, timeout=600)
  assert proc.returncode == 1 and "1 of 2 rows failed" in proc.stderr, proc.stderr[-3000:]
  [js] = [p for p in os.listdir(tmp_path) if p.endswith("_t.json")]
  data = json.load(open(tmp_path / js))
  bad, good = data["results"]
  assert "batch_size=12 is not divisible by the 8 devices" in bad["error"]  # conftest: 8 fake CPUs
  assert good["error"] is None and good["examples_per_sec"] > 0
  assert "10-1:skipinit:8:float32" in data["command"]
  assert "WRN-10-1" in open(tmp_path / js.replace(".json", ".md")).read()


def test_a_batchnorm_row_below_the_ghost_size_gets_a_ghost_that_divides_it():
  row = benchmark.fit_ghost_batch(benchmark.parse_row("10-1:batchnorm:16:float32:num_devices=1"))
  assert row.overrides == "num_devices=1+ghost_batch_size=16"
  for text in ("10-1:batchnorm:128:float32:num_devices=1", "10-1:skipinit:16:float32",
               "10-1:batchnorm:16:float32:ghost_batch_size=4"):
    assert benchmark.fit_ghost_batch(benchmark.parse_row(text)) == benchmark.parse_row(text)


def test_script_refuses_a_bad_row_before_compiling_anything(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"),
       "--rows=10-1:skipinit:8:float32,17-1:batchnorm:16:float32", f"--out_dir={tmp_path}"],
      capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)
  assert proc.returncode == 2 and os.listdir(tmp_path) == []
  assert "error: row 17-1:batchnorm:16:float32: model.depth=17" in proc.stderr


def test_override_ratios_compare_each_variant_with_its_default_row():
  plain = _result("WRN-100-2", "skipinit", 16, 10.0)
  plain.peak_memory_gb, plain.compile_s = 2.0, 4.0
  old = _result("WRN-100-2", "skipinit", 16, 11.0)
  old.overrides, old.peak_memory_gb, old.compile_s = "residual_dtype=bfloat16", 1.5, 4.0
  lonely = _result("WRN-16-4", "batchnorm", 64, 5.0)
  lonely.overrides = "remat=true"  # no default row to compare with: no line
  ghost = _result("WRN-100-2", "batchnorm", 16, 8.0)
  ghost.overrides = "ghost_batch_size=16"  # what fit_ghost_batch adds to a small batchnorm row
  ghost_old = _result("WRN-100-2", "batchnorm", 16, 4.0)
  ghost_old.overrides = "residual_dtype=bfloat16+ghost_batch_size=16"
  lines = benchmark.override_ratios([plain, old, lonely, ghost, ghost_old])
  assert lines == ["WRN-100-2 skipinit b16 bfloat16 with residual_dtype=bfloat16: img/s x1.10, "
                   "memory x0.75, compile x1.00 of the row without it",
                   "WRN-100-2 batchnorm b16 bfloat16 with residual_dtype=bfloat16: img/s x0.50, "
                   "compile x1.00 of the row without it"]
  for name in ("residual_cpu", "variants", "priority"):
    assert any("residual_dtype=bfloat16" in r for r in benchmark_rows(name))


def benchmark_rows(name):
  """A row set of scripts/benchmark.py, read in a fresh process (its absl flags are global)."""
  code = ("import importlib.util, json, sys; spec = importlib.util.spec_from_file_location('b', "
          f"{os.path.join(ROOT, 'scripts', 'benchmark.py')!r}); m = importlib.util.module_from_spec("
          f"spec); spec.loader.exec_module(m); print(json.dumps(m.ROW_SETS[{name!r}]))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  return json.loads(out.stdout.strip().splitlines()[-1])
