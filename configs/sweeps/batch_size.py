r"""Batch-size study (PAPER.md sections 1.3, 4, 5): WRN-16-4, BatchNorm vs SkipInit, batch 2^4 .. 2^12.

Every (batch size, method) cell gets the same powers-of-2 learning-rate grid and seeds at a fixed
epoch budget (so larger batches take fewer steps). BatchNorm uses ghost batches of 64 (the whole
batch below 64). The table gives, per cell, the optimal learning rate by both definitions (max test
accuracy; min final training loss), the accuracy there and the largest stable learning rate; the
figures plot test accuracy and optimal learning rate against batch size.
Expected: optimal lr ~ batch size up to ~256-512, equal for both methods; beyond, SkipInit's optimal
lr saturates first and BatchNorm keeps higher accuracy.

Run (full budget: 9 batch sizes x 2 methods x 12 learning rates x 2 seeds = 432 runs):
  python scripts/sweep.py --sweep=configs/sweeps/batch_size.py --sweep_dir=runs/batch_size \
      --executor=gpus
  python scripts/make_tables.py --sweep_dir=runs/batch_size --out_dir=results/batch_size

Knobs: epochs=200, seeds=2, lr_exps=-8:3, batch_exps=4:12 (batch 2^4 .. 2^12), ghost=64,
methods=batchnorm;skipinit_a0, depth=16, width=4, preset=NAME, full config keys.
Cheap: ...:epochs=2,seeds=1,lr_exps=-5:-1,batch_exps=6:8
Quick tier (results/quick/batch_size; 42 min measured on 2 CPU cores shared with two other
sweeps): preset=quick trains WRN-16-1
(width 1, not 4) at batch 32 and 256 for 0.25 epoch (390 and 49 steps) on learning rates
2^-5 .. 2^-1, one seed, on real CIFAR-10 (1000-image test subset):
  python scripts/sweep.py --sweep=configs/sweeps/batch_size.py:preset=quick \
      --data=/path/to/cifar10-jpeg.tar.gz --sweep_dir=runs/quick_batch_size
It can show the largest stable learning rate per (method, batch) and whether the best learning
rate moves up with the batch size; at a quarter epoch the large batch takes few steps, so the
accuracy comparison at large batch (BatchNorm's advantage) is beyond it.
"""

from skipinit.sweep import methods as methods_lib
from skipinit.sweep.spec import make_sweep, powers_of_two, sibling_config

CONFIG = sibling_config(__file__, "cifar10_wrn.py")
# preset=quick: the knobs of the quick tier (before the user's own, which win).
QUICK = "epochs=0.25,seeds=1,lr_exps=-5:-1,batch_exps=5;8"


def batch_size(epochs: float = 200.0, seeds: int = 2, lr_exps: tuple = tuple(range(-8, 4)),
               batch_exps: tuple = tuple(range(4, 13)), ghost: int = 64,
               methods: tuple = ("batchnorm", "skipinit_a0"), depth: int = 16,
               width: int = 4) -> list[dict]:
  """Runs of the batch-size study: methods x batch sizes x lrs x seeds (PAPER.md section 4)."""
  runs = []
  for method, overrides in methods_lib.select(methods).items():
    for batch in (2 ** int(e) for e in batch_exps):
      extra = {}
      if overrides.get("model.normalizer") == "batchnorm":
        # The ghost size, not the batch size, sets BN's statistics; it cannot exceed the batch.
        extra["model.ghost_batch_size"] = min(ghost, batch)
      for lr in powers_of_two(lr_exps):
        for seed in range(seeds):
          runs.append({"method": method, **overrides, **extra, "model.depth": depth,
                       "model.width": width, "train.batch_size": batch, "train.epochs": epochs,
                       "train.lr": lr, "train.seed": seed})
  return runs


def get_sweep(arg=None):
  return make_sweep(name="batch_size", table="batch_size", fn=batch_size,
                    arg=methods_lib.with_quick(arg, QUICK), config=CONFIG)
