"""Training-step benchmark (issue 6): compile time, throughput, achieved TFLOP/s and peak memory.

Measures the real train step of `train_and_evaluate` (the on-device k-step chunk, augmentation
included) on synthetic CIFAR-shaped data, so the figures are what a training run gets.
"""

import dataclasses
import statistics
import time

import jax

from skipinit import config as cfg_lib
from skipinit import models
from skipinit.train import loop, sharding


def forward_macs(model_config, image_size: int = 32) -> int:
  """Multiply-accumulates of one forward pass, counted from the architecture (convs + classifier)."""
  stages = models.stage_specs(model_config)
  imagenet = model_config.name == "resnet_v2"
  size = image_size
  if imagenet:
    stem_c = int(64 * float(model_config.width))
    size = image_size // 2
    macs = size * size * 7 * 7 * 3 * stem_c
    size //= 2  # max-pool
  else:
    stem_c = 16
    macs = size * size * 3 * 3 * 3 * stem_c
  c = stem_c
  for stage in stages:
    for b in range(stage.num_blocks):
      stride = stage.stride if b == 0 else 1
      convs = stage.convs(stride)
      out_c = convs[-1][0]
      cin, s = c, size
      for features, k, st in convs:
        s = s // st
        macs += s * s * k * k * cin * features
        cin = features
      if b == 0 and (stride != 1 or c != out_c):
        macs += s * s * c * out_c  # 1x1 projection
      c, size = out_c, s
  return macs + c * model_config.num_classes


@dataclasses.dataclass
class BenchResult:
  model: str
  normalizer: str
  batch_size: int
  dtype: str
  steps_per_dispatch: int
  compile_s: float
  examples_per_sec: float | None
  tflops: float | None
  train_gflops_per_example: float
  peak_memory_gb: float | None
  device: str


def _peak_memory(compiled) -> float | None:
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2 ** 30
  try:
    m = compiled.memory_analysis()
    return (m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes) / 2 ** 30
  except Exception:  # not every backend reports it
    return None


def bench_one(config_fn, arch: str, normalizer: str, batch_size: int, dtype: str = "float32",
              steps_per_dispatch: int = 8, dispatches: int = 10, compile_only: bool = False,
              extra: str = "") -> BenchResult:
  """Compiles and times the train chunk of the WRN `arch` ("16-4") with one normalizer."""
  k = steps_per_dispatch
  arg = (f"{arch},normalizer={normalizer},batch_size={batch_size},dtype={dtype},source=synthetic,"
         f"synthetic_train_size={batch_size * k},synthetic_test_size={batch_size},"
         f"steps_per_dispatch={k},eval_batch_size={batch_size}" + (f",{extra}" if extra else ""))
  config = config_fn(arg)
  mesh = sharding.make_mesh(config.train.num_devices)
  cfg_lib.validate(config, num_devices=mesh.size)
  exp = loop.build_experiment(config, mesh)
  state = exp.init_state()
  args = exp.data.chunk_args(0, k)
  t0 = time.perf_counter()
  compiled = exp.data._chunk.lower(state, *args).compile()
  compile_s = time.perf_counter() - t0
  gflops = 6 * forward_macs(config.model, config.data.image_size) / 1e9
  rate = tflops = None
  if not compile_only:
    state = compiled(state, *args)  # warm-up
    jax.block_until_ready(state)
    times = []
    for _ in range(dispatches):
      t0 = time.perf_counter()
      state = compiled(state, *args)
      jax.block_until_ready(state.step)
      times.append(time.perf_counter() - t0)
    rate = k * batch_size / statistics.median(times)
    tflops = rate * gflops / 1e3
  return BenchResult(model=f"WRN-{arch}", normalizer=normalizer, batch_size=batch_size, dtype=dtype,
                     steps_per_dispatch=k, compile_s=compile_s, examples_per_sec=rate,
                     tflops=tflops, train_gflops_per_example=gflops,
                     peak_memory_gb=_peak_memory(compiled), device=jax.devices()[0].device_kind)


def format_table(results) -> str:
  rows = ["| model | normalizer | batch | dtype | k | compile s | img/s | TFLOP/s | GFLOP/img | peak GiB |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  f = lambda v, fmt: "-" if v is None else format(v, fmt)
  for r in results:
    rows.append(f"| {r.model} | {r.normalizer} | {r.batch_size} | {r.dtype} | {r.steps_per_dispatch} "
                f"| {r.compile_s:.1f} | {f(r.examples_per_sec, ',.0f')} | {f(r.tflops, '.2f')} "
                f"| {r.train_gflops_per_example:.2f} | {f(r.peak_memory_gb, '.2f')} |")
  return "\n".join(rows)
