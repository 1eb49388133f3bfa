r"""Regenerates the paper's figures: python scripts/make_figures.py FIGURE [--out_dir=DIR].

  fig3   Figure 3 (PAPER.md section 5): share of the output variance carried by paths through k
         residual branches, normalized vs unnormalized ResNet, d = --num_blocks, with the paper's
         p_i = 1/i (--convention=paper) or 1/(i+1) (unit_input). Seconds; no data.
  fig4   Figure 4: per-block variance of the skip path and residual branch at init, for a
         WRN-(--depth)-(--width) built by skipinit.models on --num_images real CIFAR-10 images
         (--data_path; default .cache/cifar10-jpeg.tar.gz, else the sample in tests/data) and for
         the deep fully connected model. About 2.5 CPU-minutes at the defaults.
  bf16_residual
         Issue 15: a SkipInit WRN-(--depth)-(--width) with every alpha at --alpha, in bfloat16
         with a bfloat16 or a float32 residual stream, against float32: per block, what each
         block adds to the stream, on --residual_images real images. ~2 CPU-minutes at depth 1000.

Each writes <out_dir>/<stem>.{png,pdf,json} and prints its numbers, which also go to <stem>.txt
with the command that made them. --out_dir defaults to runs/figures (git-ignored): the committed
figures in results/ change only when asked for, with --out_dir=results (fig3, fig4) or
--out_dir=results/bf16_residual. To add a figure, add an entry to FIGURES.
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
_CONVENTION = flags.DEFINE_enum("convention", "paper", ["paper", "unit_input"],
                                "fig3: the normalized net's p_i, i = 1..d: paper = 1/i (the skip "
                                "path entering block 1 carries no variance; the paper's 97% within "
                                "<= 15 at d = 10,000), unit_input = 1/(i+1) (it carries the stem's "
                                "unit variance).")
# Figure 4
_DATA_PATH = flags.DEFINE_string("data_path", None, "fig4: CIFAR-10 class-folder tree or .tar.gz "
                                 "of one (default: the full copy in .cache/, else the sample).")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 128, "fig4: batch of training images measured.")
_DEPTH = flags.DEFINE_integer("depth", 1000, "fig4: Wide-ResNet depth (6N+4).")
_WIDTH = flags.DEFINE_integer("width", 1, "fig4: Wide-ResNet width multiplier k.")
_FC_BLOCKS = flags.DEFINE_integer("fc_blocks", 1000, "fig4: blocks of the fully connected model.")
_FC_WIDTH = flags.DEFINE_integer("fc_width", 256, "fig4: width of the fully connected model.")
_SEED = flags.DEFINE_integer("seed", 0, "fig4, bf16_residual: seed of the parameters and of the "
                             "image sample.")
# bf16_residual (--depth, --width, --data_path, --seed as fig4)
_ALPHA = flags.DEFINE_float("alpha", 1e-3, "bf16_residual: SkipInit's alpha in every block.")
_RESIDUAL_IMAGES = flags.DEFINE_integer("residual_images", 8, "bf16_residual: images measured "
                                        "(every block's output is kept: ~40 MB per image per "
                                        "build at depth 1000).")
DEFAULT_OUT_DIR = os.path.join("runs", "figures")
_OUT_DIR = flags.DEFINE_string(
    "out_dir", DEFAULT_OUT_DIR, "Directory the figures and numbers go to. The default is "
    "git-ignored; --out_dir=results (fig3, fig4) or results/bf16_residual replaces the committed "
    "ones.")


def _fig3(out_dir, command):
  from skipinit.analysis import paths
  summary = paths.figure3(out_dir, _NUM_BLOCKS.value, _MAX_LENGTH.value, command=command,
                          convention=_CONVENTION.value)
  return paths.format_summary(summary)


def _fig4(out_dir, command):
  from skipinit.analysis import signal  # imports JAX: only when this figure is asked for
  summary = signal.figure4(
      out_dir, _DATA_PATH.value, _NUM_IMAGES.value, _DEPTH.value, _WIDTH.value, _FC_BLOCKS.value,
      _FC_WIDTH.value, _SEED.value, command=command, log=lambda m: print(m, flush=True))
  return signal.format_summary(summary)


def _bf16_residual(out_dir, command):
  from skipinit import models
  from skipinit.analysis import precision, signal
  # The depth and width are checked before any image is read.
  models.wrn_blocks_per_stage(_DEPTH.value)
  path = _DATA_PATH.value or signal.default_cifar10_path()
  try:
    images = signal.cifar10_images(path, _RESIDUAL_IMAGES.value, seed=_SEED.value)
  except ValueError as e:  # more images than the split holds
    raise ConfigError(f"--residual_images={_RESIDUAL_IMAGES.value}: {e}") from None
  summary = precision.figure(out_dir, images, _DEPTH.value, _WIDTH.value, _ALPHA.value,
                             _SEED.value, command=command)
  return precision.format_summary(summary)


# name -> (file stem under out_dir, function(out_dir, command) -> the text to print)
FIGURES = {
    "fig3": ("fig3_path_contributions", _fig3),
    "fig4": ("fig4_variance_at_init", _fig4),
    "bf16_residual": ("bf16_residual", _bf16_residual),
}


def _check_flags() -> None:
  for flag, lowest in ((_NUM_BLOCKS, 1), (_MAX_LENGTH, 1), (_NUM_IMAGES, 2), (_WIDTH, 1),
                       (_FC_BLOCKS, 1), (_FC_WIDTH, 1), (_RESIDUAL_IMAGES, 1)):
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
