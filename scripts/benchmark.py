r"""Benchmarks the real train step: compile time, img/s, TFLOP/s, peak memory (issue 6).

  python scripts/benchmark.py                      # the default list for this backend
  python scripts/benchmark.py --rows=@variants --profile --tag=variants
  python scripts/benchmark.py --rows=16-4:batchnorm:512:bfloat16,100-2:skipinit:128:bfloat16
  python scripts/benchmark.py --compile_only --rows=100-2:batchnorm:128:float32,1000-2:batchnorm:128:float32

Each row is ARCH:NORMALIZER:BATCH:DTYPE[:OVERRIDES]: ARCH is a Wide-ResNet N-K (CIFAR-10) or rD
(ResNet-D-V2, ImageNet at 224); OVERRIDES are config keys joined by '+' (scan_unroll=4+remat=true).
`@name` expands a named list (ROW_SETS below). Prints a Markdown table, the top kernels of each
profiled row and issue 6's targets, and writes results/benchmark_<device>[_<tag>].{json,md} with
the command and the date after every row, so an interrupted run keeps what it measured.
"""

import dataclasses
import datetime
import json
import os
import sys
import traceback

from absl import app, flags

from skipinit import ConfigError, config as cfg_lib
from skipinit.cli import parse_flags_or_exit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NORMALIZERS = ("batchnorm", "skipinit", "fixup", "nf")
ROW_SETS = {
    # Issue 6's table, every normalizer, bfloat16, in three parts; the rows with targets first.
    # The first row of a process pays XLA's convolution autotuning in its compile time, later rows
    # with the same shapes reuse it: WRN-1000-2 batchnorm leads, so its compile is a cold one.
    "deep": [f"{a}:{n}:128:bfloat16" for a in ("1000-2", "100-2") for n in NORMALIZERS],
    "wrn16": [f"16-4:{n}:{b}:bfloat16" for b in (64, 512, 128, 1024) for n in NORMALIZERS],
    "wide": [f"28-10:{n}:512:bfloat16" for n in NORMALIZERS],
    # What the scan costs and buys on a GPU: blocks per loop iteration (16 = the stage unrolled,
    # the plain-Flax layout), steps per dispatch, and remat.
    "variants": ([f"100-2:{n}:128:bfloat16:scan_unroll={u}" for n in ("batchnorm", "skipinit")
                  for u in (2, 4, 16)] +
                 [f"1000-2:batchnorm:128:bfloat16:scan_unroll={u}" for u in (2, 8)] +
                 ["16-4:batchnorm:64:bfloat16:steps_per_dispatch=1",
                  "16-4:batchnorm:64:bfloat16:steps_per_dispatch=32",
                  "100-2:batchnorm:128:bfloat16:remat=true",
                  "100-2:batchnorm:128:bfloat16:fused_bn=false",
                  "1000-2:batchnorm:128:bfloat16:fused_bn=false"] +
                 # Issue 15: the bfloat16 residual stream the default replaced (its cost in time
                 # and memory; model.residual_dtype).
                 [f"{a}:{n}:128:bfloat16:residual_dtype=bfloat16" for a in ("100-2", "1000-2")
                  for n in ("batchnorm", "skipinit")]),
    # Issue 5: the ImageNet models' train step on a device batch.
    "imagenet": [f"r50:{n}:256:bfloat16" for n in ("batchnorm", "skipinit")] +
                ["r101:batchnorm:256:bfloat16"],
    "cpu": ["16-1:batchnorm:64:float32", "16-1:skipinit:64:float32"],
    # Issue 15: what the float32 residual stream (the default) costs against a bfloat16 one, on a
    # CPU in minutes (WRN-1000-2: add --compile_only for its memory).
    "residual_cpu": [f"100-2:{n}:16:bfloat16{o}" for n in ("skipinit", "batchnorm")
                     for o in ("", ":residual_dtype=bfloat16")],
}
ROW_SETS["gpu"] = ROW_SETS["deep"] + ROW_SETS["wrn16"] + ROW_SETS["wide"]
# The same rows by what issue 6 checks first, for a lease too short for @gpu (rows are written as
# they finish, so a cut-off run keeps the most important): the cold WRN-1000-2 compile, the 2x rows
# and batch 64 vs 512 for batchnorm and skipinit, the plain-Flax reference rows, then the rest.
_FIRST = ["1000-2:batchnorm:128", "1000-2:skipinit:128", "100-2:batchnorm:128", "100-2:skipinit:128",
          "16-4:batchnorm:64", "16-4:batchnorm:512", "16-4:skipinit:64", "16-4:skipinit:512",
          "16-4:batchnorm:128", "16-4:batchnorm:1024", "28-10:batchnorm:512",
          "100-2:fixup:128", "100-2:nf:128", "1000-2:fixup:128", "1000-2:nf:128"]
ROW_SETS["priority"] = [r + ":bfloat16" for r in _FIRST] + [
    r for r in ROW_SETS["gpu"] if r.rsplit(":", 1)[0] not in _FIRST]
# What the hand-written BN backward (layers.ghost_batch_norm) buys, next to the 2x rows,
# and what two blocks per scan iteration would (the loop's own cost per block).
ROW_SETS["priority"][4:4] = ["100-2:batchnorm:128:bfloat16:fused_bn=false",
                             "100-2:batchnorm:128:bfloat16:scan_unroll=2",
                             # and what the float32 residual stream (the default, issue 15) costs
                             "100-2:skipinit:128:bfloat16:residual_dtype=bfloat16"]

_ROWS = flags.DEFINE_list("rows", None, "Rows or @sets (default: @gpu, or @cpu on a CPU).")
_K = flags.DEFINE_integer("steps_per_dispatch", 8, "Train steps fused into one dispatch (WRN).")
_DISPATCHES = flags.DEFINE_integer("dispatches", 20, "At most this many dispatches per timed window.")
_MIN_TIME = flags.DEFINE_float("min_time_s", 3.0, "Time each row for about this long (median).")
_COMPILE_ONLY = flags.DEFINE_bool("compile_only", False, "Only compile (for very deep nets on CPU).")
_PROFILE = flags.DEFINE_bool("profile", False, "Trace two dispatches per row and summarize kernels.")
_EXTRA = flags.DEFINE_string("extra", "", "Config overrides for every row, e.g. scan_unroll=1.")
_TAG = flags.DEFINE_string("tag", "", "Suffix of the output files (benchmark_<device>_<tag>).")
_OUT = flags.DEFINE_string("out_dir", os.path.join(ROOT, "results"), "Where the JSON/Markdown go.")


def expand_rows(specs) -> list[str]:
  rows = []
  for spec in specs:
    if spec.startswith("@"):
      if spec[1:] not in ROW_SETS:
        raise ConfigError(f"unknown row set {spec}; choose from "
                          f"{', '.join('@' + k for k in ROW_SETS)}")
      rows += ROW_SETS[spec[1:]]
    else:
      rows.append(spec)
  return rows


def main(argv):
  del argv
  import jax
  from skipinit.train import benchmark

  specs = _ROWS.value or (["@cpu"] if jax.default_backend() == "cpu" else ["@gpu"])
  try:
    rows = [benchmark.parse_row(r) for r in expand_rows(specs)]
    for row in rows:  # every row's config, checked before the first compile
      try:
        cfg_lib.validate(benchmark.row_config(benchmark.fit_ghost_batch(row), _K.value))
      except ConfigError as e:
        raise ConfigError(f"row {row}: {e}") from None
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  device = jax.devices()[0].device_kind
  name = "benchmark_" + device.replace(" ", "_").lower() + (f"_{_TAG.value}" if _TAG.value else "")
  name += "_compile" if _COMPILE_ONLY.value else ""
  command = "python " + " ".join(sys.argv)
  stamp = datetime.date.today().isoformat()
  os.makedirs(_OUT.value, exist_ok=True)
  print(f"{len(rows)} rows on {len(jax.devices())} x {device}, jax {jax.__version__}", flush=True)

  results = []
  for row in rows:
    try:
      r = benchmark.bench_row(row, steps_per_dispatch=_K.value, max_dispatches=_DISPATCHES.value,
                              min_time_s=_MIN_TIME.value, compile_only=_COMPILE_ONLY.value,
                              profile=_PROFILE.value, extra=_EXTRA.value)
    except Exception as e:  # one row's failure (out of memory, say) must not lose the others
      if not isinstance(e, ConfigError):
        traceback.print_exc()
      r = benchmark.BenchResult(
          model=row.model, normalizer=row.normalizer, batch_size=row.batch_size, dtype=row.dtype,
          overrides=row.overrides, steps_per_dispatch=_K.value, device=device,
          error=f"{type(e).__name__}: {e}".splitlines()[0])
    results.append(r)
    print(benchmark.format_table([r]).splitlines()[-1], flush=True)
    jax.clear_caches()  # compiled programs of earlier rows hold device memory
    _write(os.path.join(_OUT.value, name), results, command, stamp, device, jax)

  print("\n" + benchmark.format_table(results))
  profiles = benchmark.format_profiles(results)
  if profiles:
    print("\n" + profiles)
  ratios = benchmark.override_ratios(results)
  if ratios:
    print("\nAgainst the same row without the override:\n" + "\n".join(ratios))
  targets = benchmark.check_targets(results)
  if targets:
    print(f"\nPerformance targets ({_reference_note(device)}):\n" + "\n".join(targets))
  failed = [r for r in results if r.error]
  if failed:
    print(f"\n{len(failed)} of {len(results)} rows failed (their errors are in the table)",
          file=sys.stderr)
    return 1
  return 0


def _reference_note(device: str) -> str:
  note = "reference: plain Flax on one H100"
  return note if "H100" in device else note + f"; this is a {device}: compare with care"


def _write(base: str, results, command: str, stamp: str, device: str, jax) -> None:
  from skipinit.train import benchmark
  meta = {"command": command, "date": stamp, "jax": jax.__version__, "device": device,
          "devices": len(jax.devices()), "xla_flags": os.environ.get("XLA_FLAGS", "")}
  with open(base + ".json.tmp", "w") as f:
    json.dump({**meta, "results": [dataclasses.asdict(r) for r in results]}, f, indent=2)
  os.replace(base + ".json.tmp", base + ".json")
  text = (f"# Train-step benchmark on {device}\n\nCommand: `{command}`  \n"
          f"Date: {stamp}, jax {jax.__version__}, {len(jax.devices())} device(s)"
          + (f", XLA_FLAGS=`{meta['xla_flags']}`" if meta["xla_flags"] else "") + ".\n\n"
          + benchmark.format_table(results) + "\n")
  profiles = benchmark.format_profiles(results)
  if profiles:
    text += "\n## Device trace per step (jax.profiler)\n\n" + profiles + "\n"
  ratios = benchmark.override_ratios(results)
  if ratios:
    text += ("\n## Against the same row without the override (same process)\n\n"
             + "\n".join(f"- {l}" for l in ratios) + "\n")
  targets = benchmark.check_targets(results)
  if targets:
    text += (f"\n## Performance targets ({_reference_note(device)})\n\n"
             + "\n".join(f"- {t}" for t in targets) + "\n")
  with open(base + ".md.tmp", "w") as f:
    f.write(text)
  os.replace(base + ".md.tmp", base + ".md")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags_or_exit)
