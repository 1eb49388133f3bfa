r"""Ablation table (PAPER.md sections 1.2, 1.4, 5): what SkipInit needs, on n-2 Wide-ResNets.

Methods: SkipInit alpha=1 (a plain unnormalized ResNet with a gain), the variance-preserving
sqrt(2) merge, no normalization (He init), SkipInit alpha=0 without weight decay, SkipInit alpha=0
without conv biases, regularized SkipInit (alpha=0 + conv biases + dropout before the
classifier), and GroupNorm where BatchNorm is (a normalizer without batch statistics: does BN's
bias towards the identity, not its batch statistics, make depth trainable?). Expected: alpha=1,
sqrt(2) merge and no normalization fail at depth 1000; removing weight decay or the biases costs
accuracy, dropout gains some; GroupNorm, which down-weights deep branches at init as BN does
(results/fig4_variance_at_init.txt), should train at depth. Same protocol and
table format as the depth table (batch 64, 200 epochs, best learning rate, mean +- std over seeds).

Run (full budget: 3 depths x 7 methods x 7 learning rates x 3 seeds = 441 runs):
  python scripts/sweep.py --sweep=configs/sweeps/ablation_table.py --sweep_dir=runs/ablation_table \
      --executor=gpus
  python scripts/make_tables.py --sweep_dir=runs/ablation_table,runs/depth_table \
      --out_dir=results/depth_table
(giving the depth sweep too adds its BatchNorm and SkipInit alpha=0 rows as references.)

Knobs: epochs=200, seeds=3, lr_exps=-6:0, depths=16;100;1000, width=2, batch_size=64,
dropout=0.2 (regularized SkipInit),
methods=skipinit_a1;sqrt2_merge;none;skipinit_nowd;skipinit_nobias;skipinit_reg;groupnorm,
preset=NAME, full config keys. Cheap: ...:epochs=2,seeds=1,lr_exps=-4:-2,depths=16
(An ablation sweep directory started before GroupNorm joined the default methods relaunches with
its own list: methods=skipinit_a1;sqrt2_merge;none;skipinit_nowd;skipinit_nobias;skipinit_reg.)
Fixup's initialization in halves (either alone suffices, the paper reports):
  methods=fixup;fixup_zero_only;fixup_rescale_only
GroupNorm at the quick tier's budget (not in its default list, so that results/quick/ablation_table
relaunches as it was made): preset=quick,methods=groupnorm
Quick tier (results/quick/ablation_table; 28 min measured on 2 shared CPU cores): preset=quick
trains the ablations that fail (alpha=1, sqrt(2) merge, no normalization) and the two halves
of Fixup's initialization once each (lr 2^-3, one seed) at depth 100, width 1, for 0.1 epoch on
real CIFAR-10 (1000-image test subset); give make_tables the quick depth table's sweep directory
too for its BatchNorm and SkipInit rows (full Fixup is in the depth table):
  python scripts/sweep.py --sweep=configs/sweeps/ablation_table.py:preset=quick \
      --data=/path/to/cifar10-jpeg.tar.gz --sweep_dir=runs/quick_ablation_table
It can show which variants diverge at once at depth 100 and which start to train; it cannot show
the accuracy lost without weight decay or biases (not in the quick grid) or depth 1000.
"""

from skipinit.sweep import methods as methods_lib
from skipinit.sweep.spec import depth_grid, make_sweep, sibling_config

CONFIG = sibling_config(__file__, "cifar10_wrn.py")
# preset=quick: the knobs of the quick tier (before the user's own, which win).
QUICK = ("epochs=0.1,seeds=1,lr_exps=-3,depths=100,"
         "methods=skipinit_a1;sqrt2_merge;none;fixup_zero_only;fixup_rescale_only")
METHODS = ("skipinit_a1", "sqrt2_merge", "none", "skipinit_nowd", "skipinit_nobias",
           "skipinit_reg", "groupnorm")


def ablation_table(epochs: float = 200.0, seeds: int = 3, lr_exps: tuple = tuple(range(-6, 1)),
                   depths: tuple = (16, 100, 1000), width: int = 2, batch_size: int = 64,
                   dropout: float = methods_lib.DEFAULT_DROPOUT,
                   methods: tuple = METHODS) -> list[dict]:
  """Runs of the ablation table: depths x ablations x learning rates x seeds (PAPER.md section 5)."""
  return depth_grid(methods_lib.select(methods, dropout), depths=depths, width=width,
                    batch_size=batch_size, epochs=epochs, lr_exps=lr_exps, seeds=seeds)


def get_sweep(arg=None):
  return make_sweep(name="ablation_table", table="ablation", fn=ablation_table,
                    arg=methods_lib.with_quick(arg, QUICK), config=CONFIG)
