"""Training-step benchmark (issue 6): compile time, throughput, achieved TFLOP/s, peak memory and
a device-trace summary that says what bounds a step.

Measures the real train dispatch of `train_and_evaluate`: for the Wide-ResNets the on-device
k-step chunk with augmentation, for ResNet-V2 one step on a device batch (input excluded;
scripts/benchmark_input.py measures the input pipeline), so the figures are what a run gets.
"""

import collections
import dataclasses
import glob
import math
import os
import re
import statistics
import tempfile
import time

import jax

from skipinit import ConfigError, config as cfg_lib
from skipinit import models
from skipinit import sharding
from skipinit.train import loop

# Issue 6's reference figures: plain Flax linen (unrolled), one H100, bfloat16, batchnorm, img/s.
PLAIN_FLAX_H100 = {("WRN-16-4", 128): 60_100, ("WRN-16-4", 512): 94_400,
                   ("WRN-16-4", 1024): 103_200, ("WRN-28-10", 512): 12_100,
                   ("WRN-100-2", 128): 5_130, ("WRN-1000-2", 128): 404}
# ... and the factor over it that the issue asks of each (deep narrow nets: 2x).
TARGET_FACTOR = {("WRN-100-2", 128): 2.0, ("WRN-1000-2", 128): 2.0}
COMPILE_TARGET_S = {"WRN-1000-2": 10.0}


@dataclasses.dataclass(frozen=True)
class Row:
  """One benchmark case: `ARCH:NORMALIZER:BATCH:DTYPE[:key=value+key=value]`.

  ARCH is a Wide-ResNet `N-K` (CIFAR-10, configs/cifar10_wrn.py) or a ResNet-V2 `rD`
  (ImageNet at 224, configs/imagenet_resnet.py). The optional overrides are config keys
  (short keys allowed), e.g. `scan_unroll=4+remat=true`.
  """
  arch: str
  normalizer: str
  batch_size: int
  dtype: str
  overrides: str = ""

  @property
  def imagenet(self) -> bool:
    return self.arch.startswith("r")

  def __str__(self) -> str:
    return ":".join(map(str, dataclasses.astuple(self))).rstrip(":")

  @property
  def model(self) -> str:
    return f"ResNet-{self.arch[1:]}-V2" if self.imagenet else f"WRN-{self.arch}"


def parse_row(text: str) -> Row:
  parts = text.split(":")
  if len(parts) not in (4, 5) or not re.fullmatch(r"\d+-\d+|r\d+", parts[0]) \
      or not parts[2].isdigit():
    raise ConfigError(f"benchmark row {text!r} is not ARCH:NORMALIZER:BATCH:DTYPE[:OVERRIDES] "
                      "(ARCH: N-K for a Wide-ResNet or rD for ResNet-D-V2; OVERRIDES: "
                      "key=value joined by '+'), e.g. 100-2:skipinit:128:bfloat16:scan_unroll=2")
  return Row(parts[0], parts[1], int(parts[2]), parts[3], parts[4] if len(parts) == 5 else "")


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
  overrides: str
  steps_per_dispatch: int
  device: str
  compile_s: float | None = None
  examples_per_sec: float | None = None
  step_ms: float | None = None
  tflops: float | None = None
  train_gflops_per_example: float | None = None
  peak_memory_gb: float | None = None
  timed_dispatches: int = 0
  profile: dict | None = None
  error: str | None = None


def _program_memory_gb(compiled) -> float | None:
  """Device memory the compiled dispatch needs: arguments + outputs - donated + temporaries.

  Per program, unlike the device's peak_bytes_in_use, which keeps the largest row's peak for
  the rest of the process.
  """
  try:
    m = compiled.memory_analysis()
    total = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
             + m.temp_size_in_bytes)
    return total / 2 ** 30
  except Exception:  # not every backend reports it
    return None


def row_config(row: Row, steps_per_dispatch: int):
  """The config a row trains with: its model on synthetic data of just the batches it needs."""
  arch = row.arch[1:] if row.imagenet else row.arch
  arg = (f"{arch},normalizer={row.normalizer},batch_size={row.batch_size},dtype={row.dtype},"
         f"source=synthetic,synthetic_test_size={row.batch_size},eval_batch_size={row.batch_size},"
         f"steps_per_dispatch={1 if row.imagenet else steps_per_dispatch}")
  if row.overrides:  # after the defaults above: a row may set steps_per_dispatch itself
    arg += "," + row.overrides.replace("+", ",")
  config = cfg_lib.load_config_file("imagenet_resnet" if row.imagenet else "cifar10_wrn", arg)
  # Exactly the batches of one dispatch (two for the streamed input's prefetch).
  k = config.train.steps_per_dispatch
  cfg_lib.set_value(config, "data.synthetic_train_size", row.batch_size * max(k, 2))
  return config


def fit_ghost_batch(row: Row, steps_per_dispatch: int = 1) -> Row:
  """A BatchNorm row whose per-device batch the default ghost size (64) does not divide gets
  gcd(64, per-device batch) instead (for the powers of two the batch-size sweep uses, its
  min(64, batch)), said in the row's overrides."""
  config = row_config(row, steps_per_dispatch)
  ghost = models.ghost_batch(config.model)
  per_device, rest = divmod(config.train.batch_size, config.train.num_devices or jax.device_count())
  if not ghost or rest or not per_device % ghost or "ghost_batch_size" in row.overrides:
    return row  # (a batch the devices do not divide is the row's error, reported when it runs)
  return dataclasses.replace(row, overrides="+".join(
      filter(None, [row.overrides, f"ghost_batch_size={math.gcd(ghost, per_device)}"])))


def bench_row(row: Row, steps_per_dispatch: int = 8, max_dispatches: int = 20,
              min_time_s: float = 3.0, compile_only: bool = False, profile: bool = False,
              extra: str = "") -> BenchResult:
  """Compiles the row's train dispatch, then times it for about `min_time_s` (median)."""
  if extra:
    row = dataclasses.replace(row, overrides="+".join(filter(None, [row.overrides,
                                                                    extra.replace(",", "+")])))
  row = fit_ghost_batch(row)
  config = row_config(row, steps_per_dispatch)
  mesh = sharding.make_mesh(config.train.num_devices)
  cfg_lib.validate(config, num_devices=mesh.size)
  exp = loop.build_experiment(config, mesh)
  state = exp.init_state()
  n, batch = exp.steps_per_dispatch, config.train.batch_size  # n: 1 on streamed data
  if n > exp.data.steps_per_epoch:  # (dispatch_args would cut it short at the epoch's end)
    raise ConfigError(f"a {n}-step dispatch needs {n * batch} training examples; the data set "
                      f"has {exp.data.fingerprint['train_examples']}")
  fn, args, examples = exp.chunk, exp.dispatch_args(0, n), n * batch
  t0 = time.perf_counter()
  compiled = fn.lower(state, *args).compile()
  compile_s = time.perf_counter() - t0
  gflops = 6 * forward_macs(config.model, config.data.image_size) / 1e9
  result = BenchResult(model=row.model, normalizer=row.normalizer, batch_size=row.batch_size,
                       dtype=row.dtype, overrides=row.overrides, steps_per_dispatch=n,
                       device=jax.devices()[0].device_kind, compile_s=compile_s,
                       train_gflops_per_example=gflops,
                       peak_memory_gb=_program_memory_gb(compiled))
  if compile_only:
    return result
  t0 = time.perf_counter()
  state = compiled(state, *args)  # warm-up
  jax.block_until_ready(state)
  warm = max(time.perf_counter() - t0, 1e-6)
  # Windows of back-to-back dispatches, waited on once each, as the training loop dispatches
  # them; the median window over at least three, for about min_time_s in all.
  per_window = max(1, min(max_dispatches, math.ceil(0.5 / warm)))
  windows, deadline = [], time.perf_counter() + min_time_s
  while len(windows) < 3 or time.perf_counter() < deadline:
    t0 = time.perf_counter()
    for _ in range(per_window):
      state = compiled(state, *args)
    jax.block_until_ready(state.step)
    windows.append((time.perf_counter() - t0) / per_window)
  seconds = statistics.median(windows)
  result.examples_per_sec = examples / seconds
  result.step_ms = 1e3 * seconds / n
  result.tflops = result.examples_per_sec * gflops / 1e3
  result.timed_dispatches = per_window * len(windows)
  if profile:
    try:
      result.profile = profile_dispatches(compiled, state, args, steps=2 * n)
    except Exception as e:  # no CUPTI, say: the timing above still stands
      result.profile = {"note": f"profiling failed: {type(e).__name__}: {e}"}
  return result


def profile_dispatches(compiled, state, args, steps: int) -> dict | None:
  """Traces two dispatches with jax.profiler and summarizes the device's kernels per step."""
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp):
      for _ in range(2):
        state = compiled(state, *args)
      jax.block_until_ready(state)
    paths = glob.glob(os.path.join(tmp, "**", "*.xplane.pb"), recursive=True)
    if not paths:
      return None
    data = jax.profiler.ProfileData.from_file(paths[0])
    return summarize_trace(data.planes, steps)


_NOT_KERNELS = ("XLA Ops", "XLA Modules", "Steps", "Framework", "Source", "Launch", "TraceMe")


def summarize_trace(planes, steps: int, top: int = 6) -> dict | None:
  """What the device did per train step, from a trace's planes (jax.profiler.ProfileData).

  Kernels and copies are the events on the GPU streams ("Stream #N" lines; XLA's own summary
  lines repeat them and are skipped). device_busy_frac is the union of their intervals over the
  span from the first to the last: well below 1 means the device waited for the host (launches,
  syncs); many short kernels at a high busy fraction mean launch latency inside the device;
  a few kernel names taking most of the time name the kernel that bounds the step. Returns
  None where no device plane was recorded (the CPU backend).
  """
  device_planes = [p for p in planes if p.name.startswith("/device:")]
  events, memcpy = [], []
  for plane in device_planes:
    lines = [l for l in plane.lines if l.name.startswith("Stream")]
    if not lines:  # TPUs and other layouts: the per-op line
      lines = [l for l in plane.lines if l.name == "XLA Ops"]
    for line in lines:
      for e in line.events:
        kind = memcpy if e.name.startswith(("Memcpy", "Memset", "memcpy", "memset")) else events
        kind.append((e.name, float(e.start_ns), float(e.duration_ns)))
  if not device_planes:
    return None
  if not events:
    return {"note": "no kernel events found", "lines": sorted(
        {f"{p.name}/{l.name}" for p in device_planes for l in p.lines})[:40]}
  spans = sorted((s, s + d) for _, s, d in events + memcpy)
  busy, cur_start, cur_end = 0.0, *spans[0]
  for s, e in spans[1:]:
    if s > cur_end:
      busy += cur_end - cur_start
      cur_start, cur_end = s, e
    else:
      cur_end = max(cur_end, e)
  busy += cur_end - cur_start
  span = max(end for _, end in spans) - spans[0][0]
  by_name = collections.defaultdict(lambda: [0, 0.0])
  for name, _, d in events:
    by_name[name][0] += 1
    by_name[name][1] += d
  kernel_ns = sum(d for _, _, d in events)
  ranked = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:top]
  return {
      "device_busy_frac": busy / span if span else None,
      "kernels_per_step": len(events) / steps,
      "memcpys_per_step": len(memcpy) / steps,
      "kernel_ms_per_step": kernel_ns / steps / 1e6,
      "median_kernel_us": statistics.median(d for _, _, d in events) / 1e3,
      "top_kernels": [{"name": name[:80], "share": ns / kernel_ns, "per_step": c / steps,
                       "mean_us": ns / c / 1e3} for name, (c, ns) in ranked],
  }


def _fmt(v, fmt):
  return "-" if v is None else format(v, fmt)


def format_table(results) -> str:
  rows = ["| model | normalizer | batch | dtype | overrides | k | compile s | img/s | ms/step "
          "| TFLOP/s | GFLOP/img | peak GiB | busy | kernels/step |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in results:
    p = r.profile or {}
    head = (f"| {r.model} | {r.normalizer} | {r.batch_size} | {r.dtype} | {r.overrides} "
            f"| {r.steps_per_dispatch} |")
    if r.error:
      rows.append(f"{head} error: {r.error[:300]} |")
      continue
    rows.append(f"{head} {_fmt(r.compile_s, '.1f')} "
                f"| {_fmt(r.examples_per_sec, ',.0f')} | {_fmt(r.step_ms, '.2f')} "
                f"| {_fmt(r.tflops, '.2f')} | {_fmt(r.train_gflops_per_example, '.2f')} "
                f"| {_fmt(r.peak_memory_gb, '.2f')} | {_fmt(p.get('device_busy_frac'), '.0%')} "
                f"| {_fmt(p.get('kernels_per_step'), '.0f')} |")
  return "\n".join(rows)


def format_profiles(results) -> str:
  """The top kernels of every profiled row, as Markdown."""
  out = []
  for r in results:
    p = r.profile
    if not p or "top_kernels" not in p:
      continue
    out.append(f"**{r.model} {r.normalizer} batch {r.batch_size} {r.overrides}**: device busy "
               f"{p['device_busy_frac']:.0%}, {p['kernels_per_step']:.0f} kernels and "
               f"{p['memcpys_per_step']:.1f} copies per step, median kernel "
               f"{p['median_kernel_us']:.1f} us, kernel time {p['kernel_ms_per_step']:.2f} ms/step")
    out += [f"- {k['share']:.0%} `{k['name']}` ({k['per_step']:.1f}/step, {k['mean_us']:.1f} us)"
            for k in p["top_kernels"]]
    out.append("")
  return "\n".join(out)


def override_ratios(results) -> list[str]:
  """Each row with overrides against the row with the fewest of them that it extends (model,
  normalizer, batch and dtype equal; e.g. the default row, or a batchnorm row's own ghost-batch
  override), measured in the same process: img/s, program memory and compile time ratios."""
  def keys(r):
    return frozenset(filter(None, r.overrides.split("+")))

  ok = [r for r in results if not r.error]
  lines = []
  for r in ok:
    bases = [b for b in ok if (b.model, b.normalizer, b.batch_size, b.dtype)
             == (r.model, r.normalizer, r.batch_size, r.dtype) and keys(b) < keys(r)]
    if not bases:
      continue
    base = max(bases, key=lambda b: len(keys(b)))
    parts = []
    for label, a, b in (("img/s", r.examples_per_sec, base.examples_per_sec),
                        ("memory", r.peak_memory_gb, base.peak_memory_gb),
                        ("compile", r.compile_s, base.compile_s)):
      if a is not None and b:
        parts.append(f"{label} x{a / b:.2f}")
    if parts:
      extra = "+".join(o for o in r.overrides.split("+") if o not in keys(base))
      lines.append(f"{r.model} {r.normalizer} b{r.batch_size} {r.dtype} with {extra}: "
                   f"{', '.join(parts)} of the row without it")
  return lines


def check_targets(results) -> list[str]:
  """Issue 6's targets, one line each, for the rows that were measured (default overrides)."""
  ok = [r for r in results if not r.error and not r.overrides and r.examples_per_sec]
  lines = []
  for r in ok:
    key = (r.model, r.batch_size)
    if r.dtype == "bfloat16" and key in PLAIN_FLAX_H100:
      need = PLAIN_FLAX_H100[key] * TARGET_FACTOR.get(key, 1.0)
      lines.append(f"{'met ' if r.examples_per_sec >= need else 'MISS'} {r.model} {r.normalizer} "
                   f"b{r.batch_size}: {r.examples_per_sec:,.0f} img/s vs target {need:,.0f} "
                   f"({r.examples_per_sec / PLAIN_FLAX_H100[key]:.2f}x plain Flax)")
    if r.model in COMPILE_TARGET_S and r.compile_s is not None:
      need = COMPILE_TARGET_S[r.model]
      lines.append(f"{'met ' if r.compile_s < need else 'MISS'} {r.model} {r.normalizer} "
                   f"compile {r.compile_s:.1f} s vs target < {need:.0f} s")
  per_example = {(r.model, r.normalizer, r.dtype, r.batch_size): r.examples_per_sec for r in ok}
  for (model, norm, dtype, batch), rate in sorted(per_example.items()):
    big = per_example.get((model, norm, dtype, 512))
    if batch == 64 and big:
      lines.append(f"{'met ' if rate >= 0.5 * big else 'MISS'} {model} {norm} batch 64 at "
                   f"{rate / big:.0%} of the batch-512 rate (target >= 50%)")
  by_norm = collections.defaultdict(dict)
  for r in ok:
    by_norm[(r.model, r.batch_size, r.dtype)][r.normalizer] = r.examples_per_sec
  for (model, batch, _), rates in sorted(by_norm.items()):
    if "skipinit" in rates and "batchnorm" in rates:
      faster = rates["skipinit"] > rates["batchnorm"]
      lines.append(f"{'met ' if faster else 'MISS'} {model} b{batch}: skipinit "
                   f"{rates['skipinit'] / rates['batchnorm']:.2f}x batchnorm")
  return lines
