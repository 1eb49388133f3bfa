"""The variants the paper's tables compare, as config overrides (PAPER.md section 3).

A sweep row is a *method*: a short, filesystem-safe name (it becomes the first part of every run
directory name) and the overrides that select it. The sweep files in configs/sweeps/ pick methods
from here so that the same name always means the same thing in every table, and the tables use
`LABELS` to print them.
"""

from skipinit.errors import ConfigError

# Regularized SkipInit's dropout before the classifier: the paper used ~0.2-0.3 [rec].
DEFAULT_DROPOUT = 0.2


def method_overrides(dropout_rate: float = DEFAULT_DROPOUT) -> dict[str, dict]:
  """Name -> config overrides of every method a sweep may use (PAPER.md section 3)."""
  # SkipInit as the authors' code builds it: biases in every block conv (the recipe's default;
  # not spelt out here, so that sweep directories made before skipinit_nobias existed relaunch).
  skipinit0 = {"model.normalizer": "skipinit", "model.alpha_init": "0"}
  return {
      "batchnorm": {"model.normalizer": "batchnorm"},
      "skipinit_a0": dict(skipinit0),
      "skipinit_inv_sqrt_d": {**skipinit0, "model.alpha_init": "inv_sqrt_d"},
      "fixup": {"model.normalizer": "fixup"},
      # Fixup as its reference code builds it (post-activation), for comparison with its numbers.
      "fixup_post": {"model.normalizer": "fixup", "model.post_activation": True},
      # Fixup's initialization in halves: either alone suffices, the SkipInit paper reports [2nd].
      "fixup_zero_only": {"model.normalizer": "fixup", "model.fixup_init": "zero_only"},
      "fixup_rescale_only": {"model.normalizer": "fixup", "model.fixup_init": "rescale_only"},
      # Ablations (PAPER.md sections 1.2 and 5): expected to fail at depth 1000, or to lose accuracy.
      "skipinit_a1": {**skipinit0, "model.alpha_init": "1"},
      "sqrt2_merge": {"model.normalizer": "sqrt2_merge"},
      "none": {"model.normalizer": "none"},
      "skipinit_nowd": {**skipinit0, "train.weight_decay": 0.0},
      # BN also regularizes; SkipInit needs biases and dropout to match it (PAPER.md section 1.4):
      # without conv biases, with them (the same network as skipinit_a0: the name the ImageNet
      # table uses), and with dropout before the classifier too.
      "skipinit_nobias": {**skipinit0, "model.conv_bias": False},
      "skipinit_bias": dict(skipinit0),
      "skipinit_reg": {**skipinit0, "model.conv_bias": True, "model.dropout_rate": dropout_rate},
      # NF-ResNet, the network adaptive gradient clipping was made for (PAPER.md section 3, "Beyond").
      "nf": {"model.normalizer": "nf"},
      # GroupNorm where BN is: a normalizer without batch statistics (is BN's bias towards the
      # identity at depth kept?).
      "groupnorm": {"model.normalizer": "groupnorm"},
  }


LABELS = {
    "batchnorm": "BatchNorm",
    "skipinit_a0": "SkipInit (α=0)",
    "skipinit_inv_sqrt_d": "SkipInit (α=1/√d)",
    "fixup": "Fixup",
    "fixup_post": "Fixup (post-activation)",
    "fixup_zero_only": "Fixup, zero init only",
    "fixup_rescale_only": "Fixup, rescale only",
    "skipinit_a1": "SkipInit (α=1)",
    "sqrt2_merge": "√2 merge",
    "none": "No normalization",
    "skipinit_nowd": "SkipInit (α=0), no weight decay",
    "skipinit_nobias": "SkipInit (α=0), no conv biases",
    "skipinit_bias": "SkipInit + biases",
    "skipinit_reg": "Regularized SkipInit (biases + dropout)",
    "nf": "NF-ResNet",
    "groupnorm": "GroupNorm",
}


def select(names, dropout_rate: float = DEFAULT_DROPOUT) -> dict[str, dict]:
  """The overrides of the named methods, in the given order; a ConfigError names unknown ones."""
  known = method_overrides(dropout_rate)
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ConfigError(f"unknown method(s) {', '.join(unknown)}: use some of {', '.join(known)}")
  return {n: known[n] for n in names}


def with_quick(arg: str | None, quick_knobs: str) -> str:
  """The sweep argument with its quick tier's knobs put first when it asks for `preset=quick`.

  The quick tier (results/quick/) is a preset of the base config (width 1, an eval subset) plus
  sweep-specific knobs (depths, epochs, grids) that a config preset cannot set; knobs the user
  gives after them win, as later knobs do.
  """
  items = [p.strip() for p in (arg or "").split(",") if p.strip()]
  presets = [p for item in items if item.startswith("preset=")
             for p in item.split("=", 1)[1].split(";")]
  return ",".join([quick_knobs] + items) if "quick" in presets else (arg or "")

