r"""Benchmarks the real train step: compile time, img/s, TFLOP/s, peak memory (issue 6).

  python scripts/benchmark.py                      # the default list for this backend
  python scripts/benchmark.py --rows=16-4:batchnorm:512:bfloat16,100-2:skipinit:128:bfloat16
  python scripts/benchmark.py --compile_only --rows=100-2:batchnorm:128:float32,1000-2:batchnorm:128:float32

Each row is ARCH:NORMALIZER:BATCH:DTYPE for a Wide-ResNet. Prints a Markdown table and writes
results/benchmark_<device>.{json,md} with the command and the date.
"""

import dataclasses
import datetime
import json
import os
import sys

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NORMALIZERS = ("batchnorm", "skipinit", "fixup", "nf")
GPU_ROWS = ([f"16-4:{n}:{b}:bfloat16" for b in (64, 128, 512, 1024) for n in NORMALIZERS] +
            [f"28-10:{n}:512:bfloat16" for n in NORMALIZERS] +
            [f"100-2:{n}:128:bfloat16" for n in NORMALIZERS] +
            [f"1000-2:{n}:128:bfloat16" for n in NORMALIZERS])
CPU_ROWS = ["16-1:batchnorm:64:float32", "16-1:skipinit:64:float32"]

_ROWS = flags.DEFINE_list("rows", None, "ARCH:NORMALIZER:BATCH:DTYPE rows (default: per backend).")
_K = flags.DEFINE_integer("steps_per_dispatch", 8, "Train steps fused into one dispatch.")
_DISPATCHES = flags.DEFINE_integer("dispatches", 10, "Timed dispatches per row (median).")
_COMPILE_ONLY = flags.DEFINE_bool("compile_only", False, "Only compile (for very deep nets on CPU).")
_EXTRA = flags.DEFINE_string("extra", "", "Extra config overrides, e.g. scan_unroll=1,remat=true.")
_OUT = flags.DEFINE_string("out_dir", os.path.join(ROOT, "results"), "Where the JSON/Markdown go.")


def main(argv):
  del argv
  import jax
  sys.path.insert(0, os.path.join(ROOT, "configs"))
  import cifar10_wrn
  from skipinit.train import benchmark

  rows = _ROWS.value or (CPU_ROWS if jax.default_backend() == "cpu" else GPU_ROWS)
  results = []
  for row in rows:
    arch, normalizer, batch, dtype = row.split(":")
    r = benchmark.bench_one(cifar10_wrn.get_config, arch, normalizer, int(batch), dtype,
                            steps_per_dispatch=_K.value, dispatches=_DISPATCHES.value,
                            compile_only=_COMPILE_ONLY.value, extra=_EXTRA.value)
    results.append(r)
    print(benchmark.format_table([r]).splitlines()[-1], flush=True)
  table = benchmark.format_table(results)
  device = jax.devices()[0].device_kind.replace(" ", "_").lower()
  command = "python " + " ".join(sys.argv)
  stamp = datetime.date.today().isoformat()
  os.makedirs(_OUT.value, exist_ok=True)
  suffix = "_compile" if _COMPILE_ONLY.value else ""
  with open(os.path.join(_OUT.value, f"benchmark_{device}{suffix}.json"), "w") as f:
    json.dump({"command": command, "date": stamp, "jax": jax.__version__,
               "devices": len(jax.devices()), "results": [dataclasses.asdict(r) for r in results]},
              f, indent=2)
  with open(os.path.join(_OUT.value, f"benchmark_{device}{suffix}.md"), "w") as f:
    f.write(f"# Train-step benchmark on {jax.devices()[0].device_kind}\n\n"
            f"Command: `{command}`  \nDate: {stamp}, jax {jax.__version__}, "
            f"{len(jax.devices())} device(s).\n\n{table}\n")
  print(table)


if __name__ == "__main__":
  app.run(main)
