r"""PyTorch reference for issue 6: a plain pre-activation Wide-ResNet with BatchNorm, trained with
SGD on one GPU, to set beside scripts/benchmark.py's figures measured on the same device.

  python scripts/benchmark_torch.py                          # issue 6's rows, eager + 2 compiled
  python scripts/benchmark_torch.py --rows=16-4:512,100-2:128:compiled

A row is ARCH:BATCH[:compiled] (ARCH a Wide-ResNet N-K). channels_last, bfloat16 autocast (torch
keeps BatchNorm in float32 under it), SGD with Nesterov momentum 0.9 and weight decay 5e-4, random
CIFAR-shaped batches already on the device (no augmentation, unlike the JAX benchmark, which
includes it); BatchNorm over the whole batch (the JAX model's default ghost batches are 64, the
same work at batch 64 and a few more, smaller reductions above); the figure is the median img/s
of timed windows after warm-up. A row that fails (out of memory, say) is reported and skipped. Writes
results/benchmark_torch_<device>.{json,md} after every row. torch is not a dependency of the
package (the GPU image has it): this script is the only place it is used.
"""

import dataclasses
import datetime
import json
import os
import statistics
import sys
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_ROWS = ["16-4:128", "16-4:512", "16-4:1024", "28-10:512", "100-2:128", "1000-2:128",
                "16-4:1024:compiled", "28-10:512:compiled"]

_ROWS = flags.DEFINE_list("rows", DEFAULT_ROWS, "ARCH:BATCH[:compiled] rows.")
_MIN_TIME = flags.DEFINE_float("min_time_s", 3.0, "Time each row for about this long.")
_OUT = flags.DEFINE_string("out_dir", os.path.join(ROOT, "results"), "Where the JSON/Markdown go.")


def build_wrn(depth: int, width: int, num_classes: int = 10):
  """The pre-activation WRN of PAPER.md section 2 with BatchNorm, as plain torch modules."""
  import torch
  from torch import nn
  import torch.nn.functional as F

  class Block(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.bn0, self.bn1 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
      self.conv0 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.conv1 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.proj = (nn.Conv2d(cin, cout, 1, stride, bias=False)
                   if stride != 1 or cin != cout else None)

    def forward(self, x):
      o = F.relu(self.bn0(x))
      skip = x if self.proj is None else self.proj(o)
      return skip + self.conv1(F.relu(self.bn1(self.conv0(o))))

  if (depth - 4) % 6:
    raise ValueError(f"WRN depth must be 6N+4, got {depth}")
  n = (depth - 4) // 6
  layers, c = [nn.Conv2d(3, 16, 3, 1, 1, bias=False)], 16
  for j, features in enumerate((16 * width, 32 * width, 64 * width)):
    for b in range(n):
      layers.append(Block(c, features, 2 if (j and not b) else 1))
      c = features
  layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
             nn.Linear(c, num_classes)]
  return torch.nn.Sequential(*layers)


@dataclasses.dataclass
class TorchResult:
  model: str
  batch_size: int
  mode: str
  examples_per_sec: float
  step_ms: float
  params: int
  device: str
  setup_s: float  # building, first steps and (compiled) compilation


def bench(arch: str, batch: int, compiled: bool, min_time_s: float) -> TorchResult:
  import torch
  import torch.nn.functional as F
  depth, width = (int(v) for v in arch.split("-"))
  dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  torch.manual_seed(0)
  torch.backends.cudnn.benchmark = True
  t_setup = time.perf_counter()
  model = build_wrn(depth, width).to(dev).to(memory_format=torch.channels_last)
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                        weight_decay=5e-4)
  x = torch.randn(batch, 3, 32, 32, device=dev).to(memory_format=torch.channels_last)
  y = torch.randint(0, 10, (batch,), device=dev)

  def step():
    with torch.autocast(dev.type, dtype=torch.bfloat16):
      loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

  if compiled:
    step = torch.compile(step)
  sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
  for _ in range(3):
    step()
  sync()
  setup_s = time.perf_counter() - t_setup
  t0 = time.perf_counter()
  step()
  sync()
  per_step = max(time.perf_counter() - t0, 1e-6)
  steps = max(1, int(0.5 / per_step))  # windows of ~0.5 s
  windows = []
  deadline = time.perf_counter() + min_time_s
  while len(windows) < 3 or time.perf_counter() < deadline:
    t0 = time.perf_counter()
    for _ in range(steps):
      step()
    sync()
    windows.append((time.perf_counter() - t0) / steps)
  seconds = statistics.median(windows)
  name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
  return TorchResult(model=f"WRN-{arch}", batch_size=batch, mode="compiled" if compiled else "eager",
                     examples_per_sec=batch / seconds, step_ms=1e3 * seconds,
                     params=sum(p.numel() for p in model.parameters()), device=name,
                     setup_s=setup_s)


def main(argv):
  del argv
  try:
    import torch
  except ImportError:
    print("error: this reference benchmark needs PyTorch (pip install torch)", file=sys.stderr)
    return 2
  rows = []
  for spec in _ROWS.value:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "compiled"):
      print(f"error: row {spec!r} is not ARCH:BATCH[:compiled], e.g. 16-4:512:compiled",
            file=sys.stderr)
      return 2
    rows.append((parts[0], int(parts[1]), len(parts) == 3))
  command = "python " + " ".join(sys.argv)
  stamp = datetime.date.today().isoformat()
  device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
  base = os.path.join(_OUT.value, "benchmark_torch_" + device.replace(" ", "_").lower())
  os.makedirs(_OUT.value, exist_ok=True)
  table = ["| model | batch | mode | img/s | ms/step | setup s | params |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  results = []
  for arch, batch, compiled in rows:
    try:
      r = bench(arch, batch, compiled, _MIN_TIME.value)
    except Exception as e:  # keep the other rows
      table.append(f"| WRN-{arch} | {batch} | {'compiled' if compiled else 'eager'} "
                   f"| error: {type(e).__name__}: {str(e).splitlines()[0][:100]} |")
      print(table[-1], flush=True)
      if torch.cuda.is_available():
        torch.cuda.empty_cache()
      continue
    results.append(r)
    table.append(f"| {r.model} | {r.batch_size} | {r.mode} | {r.examples_per_sec:,.0f} "
                 f"| {r.step_ms:.2f} | {r.setup_s:.1f} | {r.params:,} |")
    print(table[-1], flush=True)
    with open(base + ".json", "w") as f:
      json.dump({"command": command, "date": stamp, "torch": torch.__version__, "device": device,
                 "results": [dataclasses.asdict(x) for x in results]}, f, indent=2)
    with open(base + ".md", "w") as f:
      f.write(f"# PyTorch reference train step on {device}\n\nCommand: `{command}`  \n"
              f"Date: {stamp}, torch {torch.__version__}.\n\n" + "\n".join(table) + "\n")
  print("\n".join(table))
  return 0


if __name__ == "__main__":
  app.run(main)
