r"""Wide-ResNet on CIFAR-10: the depth and batch-size studies of the SkipInit paper (PAPER.md 2, 4).

Run (a WRN-16-4 with BatchNorm on the real JPEG copy of CIFAR-10):
  python scripts/train.py --config=configs/cifar10_wrn.py:16-4,source=folder \
      --config.data.path=/path/to/cifar10-jpeg.tar.gz --workdir=runs/wrn16-4_bn

The argument is a comma-separated list of presets and key=value pairs, applied left to right:
  "16-4", "100-2", "1000-2"      depth-width of an n-k Wide-ResNet (depth 6N+4)
  "smoke"                        tiny net on synthetic data, seconds on a CPU (tests, CI)
  "sample"                       tiny net on the 400-image real CIFAR-10 sample in tests/data
  "quick"                        the quick tier of the sweeps (width 1, 1000 test images): see
                                 configs/sweeps/*.py and results/quick/
  "depth=100,width=2,normalizer=skipinit,alpha_init=0,lr=0.05"

Defaults follow PAPER.md section 4: 200 epochs, batch 64, SGD momentum 0.9, weight decay 5e-4,
the paper's halving schedule, pad-crop-flip augmentation, ghost batch 64 for BatchNorm.
Expected runtime at the defaults: WRN-16-4 takes a few GPU-hours (200 epochs of 781 steps: the
loop drops the last partial batch of 50,000 / 64).
"""

import os

from skipinit import config as cfg_lib

SAMPLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "tests", "data", "cifar10_sample")


@cfg_lib.preset("model.depth", "model.width", label="N-K (depth-width, e.g. 16-4)")
def _depth_width(config, depth, width):
  config.model.depth, config.model.width = int(depth), int(width)


SMOKE = {
    "model.depth": 10, "model.width": 1, "model.ghost_batch_size": 4,
    "data.source": "synthetic", "data.synthetic_train_size": 256, "data.synthetic_test_size": 64,
    "train.batch_size": 32, "train.epochs": 2.0, "train.eval_batch_size": 64,
    "train.steps_per_dispatch": 4, "train.log_every_steps": 4}
SAMPLE = {**SMOKE, "data.source": "folder", "data.path": SAMPLE_DIR, "train.epochs": 10.0,
          "train.lr": 0.05, "train.schedule": "cosine", "train.eval_batch_size": 100}
# The quick tier of the paper's tables (README "Check the paper's claims on a laptop"): width
# 1, a fixed 1000-image test subset (evaluating all 10,000 images costs minutes at depth 100
# on a CPU), one step per dispatch (XLA:CPU unrolls a dispatch's steps: k steps of a deep net
# compile ~k times slower) and a progress line every 20 steps.
QUICK = {"model.width": 1, "data.eval_subset": 1000, "train.eval_batch_size": 500,
         "train.steps_per_dispatch": 1, "train.log_every_steps": 20}
# Each preset declares the keys it sets: a sweep makes their values its knobs' defaults.
PRESETS = {r"(\d+)-(\d+)": _depth_width, "smoke": cfg_lib.preset(overrides=SMOKE),
           "sample": cfg_lib.preset(overrides=SAMPLE), "quick": cfg_lib.preset(overrides=QUICK)}


def get_config(arg: str | None = None):
  config = cfg_lib.base_config()
  cfg_lib.apply_arg(config, arg, PRESETS)
  config.lock()
  return config
