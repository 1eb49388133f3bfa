r"""Depth table (PAPER.md sections 2, 4, 5): n-2 Wide-ResNets of depth 16, 100, 1000 on CIFAR-10.

Methods: BatchNorm, SkipInit alpha=0, SkipInit alpha=1/sqrt(d), Fixup; each on a powers-of-2
learning-rate grid with several seeds, batch 64, 200 epochs. The table reports mean +- std test
accuracy over seeds at the best learning rate, and "diverged" where no learning rate trained.

Run (full budget: 3 depths x 4 methods x 7 learning rates x 3 seeds = 252 runs):
  python scripts/sweep.py --sweep=configs/sweeps/depth_table.py --sweep_dir=runs/depth_table \
      --executor=gpus
  python scripts/make_tables.py --sweep_dir=runs/depth_table --out_dir=results/depth_table

Knobs (the sweep argument, comma-separated): epochs=200, seeds=3, lr_exps=-6:0 (2^-6 .. 2^0),
depths=16;100;1000, width=2, batch_size=64, methods=batchnorm;skipinit_a0;skipinit_inv_sqrt_d;fixup;
preset=NAME (a configs/cifar10_wrn.py preset, e.g. smoke); any full config key (data.source=folder).
A cheap version of the same table:
  --sweep=configs/sweeps/depth_table.py:epochs=2,seeds=1,lr_exps=-4:-2,depths=16
Quick tier (results/quick/depth_table, README "Check the paper's claims on a laptop"; 33 min
measured on 2 CPU cores shared with other work): preset=quick trains each method once (lr 2^-3,
one seed) at depth 100, width 1, for 0.1 epoch (78 steps of batch 64) on real CIFAR-10,
evaluated on a fixed 1000-image test subset:
  python scripts/sweep.py --sweep=configs/sweeps/depth_table.py:preset=quick \
      --data=/path/to/cifar10-jpeg.tar.gz --sweep_dir=runs/quick_depth_table
It can show that at depth 100 every method of the table starts to train (loss falls, accuracy
above chance, no divergence) at the same learning rate; it cannot show final accuracies, their
ranking, the best learning rate, or depth 1000.
"""

from skipinit.sweep import methods as methods_lib
from skipinit.sweep.spec import depth_grid, make_sweep, sibling_config

CONFIG = sibling_config(__file__, "cifar10_wrn.py")
# preset=quick: the knobs of the quick tier (before the user's own, which win).
QUICK = "epochs=0.1,seeds=1,lr_exps=-3,depths=100"
METHODS = ("batchnorm", "skipinit_a0", "skipinit_inv_sqrt_d", "fixup")


def depth_table(epochs: float = 200.0, seeds: int = 3, lr_exps: tuple = tuple(range(-6, 1)),
                depths: tuple = (16, 100, 1000), width: int = 2, batch_size: int = 64,
                methods: tuple = METHODS) -> list[dict]:
  """Runs of the depth table: depths x methods x learning rates x seeds (PAPER.md section 4)."""
  return depth_grid(methods_lib.select(methods), depths=depths, width=width,
                    batch_size=batch_size, epochs=epochs, lr_exps=lr_exps, seeds=seeds)


def get_sweep(arg=None):
  return make_sweep(name="depth_table", table="depth", fn=depth_table,
                    arg=methods_lib.with_quick(arg, QUICK), config=CONFIG)
