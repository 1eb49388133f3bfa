r"""Adaptive gradient clipping vs batch size (PAPER.md section 3 "Beyond the paper"; NFNets, 2021).

An NF-ResNet version of the 16-4 Wide-ResNet (model.normalizer=nf) trained at several batch sizes
with AGC clipping thresholds lambda in {0.01, 0.02, 0.04, 0.08, 0.16} and without AGC (0 = off),
each on a powers-of-2 learning-rate grid. The table gives the best test accuracy per (batch size,
lambda); the figure plots it against batch size, one line per lambda. Expected: without AGC the
NF-ResNet falls behind at large batches; small lambdas (0.01-0.02) help most at batch >= 1024.

Run (full budget: 7 batch sizes x 6 lambdas x 12 learning rates x 1 seed = 504 runs):
  python scripts/sweep.py --sweep=configs/sweeps/agc_batch_size.py --sweep_dir=runs/agc \
      --executor=gpus
  python scripts/make_tables.py --sweep_dir=runs/agc --out_dir=results/agc

Knobs: epochs=200, seeds=1, lr_exps=-8:3, batch_exps=6:12, clips=0.01;0.02;0.04;0.08;0.16;0,
depth=16, width=4, preset=NAME, full config keys.
Cheap: ...:epochs=2,lr_exps=-4:-1,batch_exps=6;9,clips=0.01;0
Quick tier (results/quick/agc_batch_size; ~30 min on 2 CPU cores): preset=quick trains the
NF-ResNet-16-1 (width 1, not 4) at batch 64 and 512 for 0.25 epoch, with AGC lambda=0.01 and
without, on learning rates 2^-3 .. 2^1, one seed, on real CIFAR-10 (1000-image test subset):
  python scripts/sweep.py --sweep=configs/sweeps/agc_batch_size.py:preset=quick \
      --data=/path/to/cifar10-jpeg.tar.gz --sweep_dir=runs/quick_agc_batch_size
It can show whether AGC keeps large learning rates stable (runs that diverge without it); it
cannot show the large-batch (>= 1024) accuracy gains of the NFNets paper.
"""

from skipinit.sweep import methods as methods_lib
from skipinit.sweep.spec import make_sweep, powers_of_two, sibling_config

CONFIG = sibling_config(__file__, "cifar10_wrn.py")
# preset=quick: the knobs of the quick tier (before the user's own, which win).
QUICK = "epochs=0.25,lr_exps=-3:1,batch_exps=6;9,clips=0.01;0"


def agc_batch_size(epochs: float = 200.0, seeds: int = 1, lr_exps: tuple = tuple(range(-8, 4)),
                   batch_exps: tuple = tuple(range(6, 13)),
                   clips: tuple = (0.01, 0.02, 0.04, 0.08, 0.16, 0.0), depth: int = 16,
                   width: int = 4) -> list[dict]:
  """Runs of the AGC study: batch sizes x clipping thresholds x learning rates x seeds."""
  overrides = methods_lib.select(["nf"])["nf"]
  runs = []
  for batch in (2 ** int(e) for e in batch_exps):
    for clip in clips:
      for lr in powers_of_two(lr_exps):
        for seed in range(seeds):
          runs.append({"method": "nf", **overrides, "model.depth": depth, "model.width": width,
                       "train.batch_size": batch, "train.agc_clip": float(clip),
                       "train.epochs": epochs, "train.lr": lr, "train.seed": seed})
  return runs


def get_sweep(arg=None):
  return make_sweep(name="agc_batch_size", table="agc", fn=agc_batch_size,
                    arg=methods_lib.with_quick(arg, QUICK), config=CONFIG)
