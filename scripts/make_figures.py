r"""Regenerates the paper's figures: python scripts/make_figures.py FIGURE [--out_dir=results].

  fig3   Figure 3 (PAPER.md section 5): share of the output variance carried by paths through k
         residual branches, normalized vs unnormalized ResNet, d = --num_blocks. Seconds; no data.
  fig4   Figure 4: per-block variance of the skip path and residual branch at init, for a
         WRN-(--depth)-(--width) built by skipinit.models on --num_images real CIFAR-10 images
         (--data_path; default .cache/cifar10-jpeg.tar.gz, else the sample in tests/data) and for
         the deep fully connected model. About 2.5 CPU-minutes at the defaults.

Each writes <out_dir>/<stem>.{png,pdf,json} and prints its numbers, which also go to <stem>.txt
with the command that made them. To add a figure, add an entry to FIGURES.
"""

import os
import sys

from absl import app, flags

from skipinit.cli import parse_flags_or_exit
from skipinit.errors import ConfigError, SkipInitError

# Figure 3
_NUM_BLOCKS = flags.DEFINE_integer("num_blocks", 10_000, "fig3: number of residual blocks d.")
_MAX_LENGTH = flags.DEFINE_integer("max_length", 15, "fig3: report the share of paths of length "
                                   "<= this (and <= this - 1).")
# Figure 4
_DATA_PATH = flags.DEFINE_string("data_path", None, "fig4: CIFAR-10 class-folder tree or .tar.gz "
                                 "of one (default: the full copy in .cache/, else the sample).")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 128, "fig4: batch of training images measured.")
_DEPTH = flags.DEFINE_integer("depth", 1000, "fig4: Wide-ResNet depth (6N+4).")
_WIDTH = flags.DEFINE_integer("width", 1, "fig4: Wide-ResNet width multiplier k.")
_FC_BLOCKS = flags.DEFINE_integer("fc_blocks", 1000, "fig4: blocks of the fully connected model.")
_FC_WIDTH = flags.DEFINE_integer("fc_width", 256, "fig4: width of the fully connected model.")
_SEED = flags.DEFINE_integer("seed", 0, "fig4: seed of the parameters and of the image sample.")
_OUT_DIR = flags.DEFINE_string("out_dir", "results", "Directory the figures and numbers go to.")


def _fig3(out_dir, command):
  from skipinit.analysis import paths
  summary = paths.figure3(out_dir, _NUM_BLOCKS.value, _MAX_LENGTH.value, command=command)
  return paths.format_summary(summary)


def _fig4(out_dir, command):
  from skipinit.analysis import signal  # imports JAX: only when this figure is asked for
  summary = signal.figure4(
      out_dir, _DATA_PATH.value, _NUM_IMAGES.value, _DEPTH.value, _WIDTH.value, _FC_BLOCKS.value,
      _FC_WIDTH.value, _SEED.value, command=command, log=lambda m: print(m, flush=True))
  return signal.format_summary(summary)


# name -> (file stem under out_dir, function(out_dir, command) -> the text to print)
FIGURES = {
    "fig3": ("fig3_path_contributions", _fig3),
    "fig4": ("fig4_variance_at_init", _fig4),
}


def _check_flags() -> None:
  for flag, lowest in ((_NUM_BLOCKS, 1), (_MAX_LENGTH, 1), (_NUM_IMAGES, 2), (_WIDTH, 1),
                       (_FC_BLOCKS, 1), (_FC_WIDTH, 1)):
    if flag.value < lowest:
      raise ConfigError(f"--{flag.name}={flag.value} must be >= {lowest}")


def main(argv):
  if len(argv) != 2 or argv[1] not in FIGURES:
    given = f"unknown figure {argv[1]!r}" if len(argv) == 2 else "name one figure"
    print(f"error: {given}: use make_figures.py {'|'.join(FIGURES)} [--out_dir=DIR] [flags] "
          "(--help lists the flags)", file=sys.stderr)
    return 2
  stem, make = FIGURES[argv[1]]
  command = " ".join(["python", "scripts/make_figures.py"] + sys.argv[1:])
  try:
    _check_flags()
    os.makedirs(_OUT_DIR.value, exist_ok=True)
    text = make(_OUT_DIR.value, command)
  except SkipInitError as e:  # bad depth, missing data, ...
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(text)
  with open(os.path.join(_OUT_DIR.value, f"{stem}.txt"), "w") as f:
    f.write(f"$ {command}\n{text}\n")
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags_or_exit)
