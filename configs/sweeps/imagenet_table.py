r"""ImageNet table (PAPER.md sections 1.3-1.4, 4, 5): ResNet-50-V2 at batch 256, 1024 and 4096.

Methods: BatchNorm, Fixup, SkipInit + biases, and regularized SkipInit (+ dropout before the
classifier). Each (batch size, method) cell tries learning rates 2^k x the linear-scaling rate
0.1 x B/256 of the authors' baseline (PAPER.md section 4), k in lr_exps. The table reports top-1
at the best learning rate. Expected: at batch 1024 the unnormalized nets ~= BatchNorm; at 4096
Fixup and SkipInit fall behind.

Run (full budget: 3 batch sizes x 4 methods x 4 learning rates x 1 seed = 48 ResNet-50 runs of
90 epochs, each several hundred GPU-hours at batch 4096 on one host; use SLURM):
  python scripts/sweep.py --sweep=configs/sweeps/imagenet_table.py --sweep_dir=runs/imagenet \
      --executor=slurm --slurm_params=gpus_per_node=8,timeout_min=2880
  python scripts/make_tables.py --sweep_dir=runs/imagenet --out_dir=results/imagenet

Knobs: epochs=90, seeds=1, lr_exps=-2:1, batch_sizes=256;1024;4096, base_lr=0.1 (per 256 examples),
dropout=0.2, depth=50, methods=batchnorm;fixup;skipinit_bias;skipinit_reg, preset=NAME, full keys.
methods=...;fixup_post;... adds Fixup as its reference code builds it (post-activation), the
network of published Fixup numbers; "fixup" is the pre-activation port all other rows share.
"""

from skipinit.sweep import methods as methods_lib
from skipinit.sweep.spec import make_sweep, sibling_config

CONFIG = sibling_config(__file__, "imagenet_resnet.py")
METHODS = ("batchnorm", "fixup", "skipinit_bias", "skipinit_reg")


def imagenet_table(epochs: float = 90.0, seeds: int = 1, lr_exps: tuple = tuple(range(-2, 2)),
                   batch_sizes: tuple = (256, 1024, 4096), base_lr: float = 0.1,
                   dropout: float = methods_lib.DEFAULT_DROPOUT, depth: int = 50,
                   methods: tuple = METHODS) -> list[dict]:
  """Runs of the ImageNet table: batch sizes x methods x lrs x seeds (PAPER.md section 4)."""
  runs = []
  for batch in batch_sizes:
    for method, overrides in methods_lib.select(methods, dropout).items():
      for k in lr_exps:
        # The grid scales with the batch so that every cell brackets the linear-scaling rate.
        lr = base_lr * batch / 256 * 2.0 ** int(k)
        for seed in range(seeds):
          runs.append({"method": method, **overrides, "model.depth": depth,
                       "train.batch_size": batch, "train.epochs": epochs, "train.lr": lr,
                       "train.seed": seed})
  return runs


def get_sweep(arg=None):
  return make_sweep(name="imagenet_table", table="imagenet", fn=imagenet_table, arg=arg,
                    config=CONFIG)
