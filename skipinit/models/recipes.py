"""Residual "recipes": what each normalizer variant of PAPER.md section 3 changes in a residual block.

One generic pre-activation block (`skipinit.models.resnet.PreActBlock`) reads its variant from a
`Recipe`: whether it normalizes, how the branch is scaled before it joins the skip path, how the
branch convs are initialized, and where biases go. The variants are `functools.partial` aliases of
`Recipe`, so adding one is a line here, not a copy of the network.
"""

import dataclasses
import functools
import math
from typing import Optional

from skipinit.errors import ConfigError
from skipinit.models.layers import CLASSIFIER_INITS, CONV_INITS

NF_ACTIVATION_GAIN = 1.7139588594436646  # ReLU gain of NF-ResNets: 1/sqrt(E[relu(z)^2] - E[relu(z)]^2)


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How a residual block of one variant is built. Defaults: the plain unnormalized ResNet."""

  name: str
  # BatchNorm before every activation (pre-activation order) and before the head.
  batchnorm: bool = False
  ghost_batch_size: int = 0
  # Biases in the block convs (the stem conv never has one).
  conv_bias: bool = False
  # A learnable scalar gain on the residual branch: out = skip + branch_multiplier * gain * branch.
  gain_name: Optional[str] = None
  gain_init: float = 1.0
  branch_multiplier: float = 1.0
  # out = out_scale * (skip + branch): 1/sqrt(2) for the variance-preserving merge.
  out_scale: float = 1.0
  # Fixup (Zhang et al. 2019): scalar biases before convs/activations/classifier and a branch bias;
  # last branch conv zero, the others N(0, 2/fan_out) scaled by L^(-1/(2m-2)) in std, as in the
  # official code. By default it runs in the same pre-activation block as every other variant
  # here, so that the tables compare initializations and normalizers on one architecture;
  # `post_activation` builds the reference code's network instead (relu after the sum, a biased
  # relu after the stem, no activation before the pool).
  # `fixup_init`: "" (He init), "full" (Fixup's), or the SkipInit paper's ablations of it [2nd]:
  # "zero_only" (last conv zero, no rescale) and "rescale_only" (every conv rescaled, none zero).
  scalar_biases: bool = False
  fixup_init: str = ""
  post_activation: bool = False
  # Initializers (layers.CONV_INITS, layers.CLASSIFIER_INITS). Convs: He by default for every
  # variant (README "Numerics and defaults"); "fan_in" is Haiku's default, which DeepMind's code
  # keeps. Classifier: as DeepMind's code for SkipInit, Fixup (zeros) and NF-ResNets (N(0, 0.01^2));
  # flax's lecun_normal for BatchNorm (a random classifier, as the Wide-ResNet reference; DeepMind's
  # ImageNet ResNet has zeros: model.classifier_init=zeros) and the unnormalized ablations.
  conv_init: str = "he"
  classifier_init: str = "lecun_normal"
  # NF-ResNets (Brock et al. 2021): scaled weight standardization, a gained ReLU, and each
  # block's input divided by the analytically tracked std of the skip path (beta).
  weight_standardization: bool = False
  activation_gain: float = 1.0
  track_variance: bool = False


BatchNorm = functools.partial(Recipe, name="batchnorm", batchnorm=True)
SkipInit = functools.partial(Recipe, name="skipinit", conv_bias=True, gain_name="alpha",
                             gain_init=0.0, classifier_init="zeros")
Fixup = functools.partial(Recipe, name="fixup", gain_name="scale", gain_init=1.0,
                          scalar_biases=True, fixup_init="full", classifier_init="zeros")
NoNorm = functools.partial(Recipe, name="none", conv_bias=True)
Sqrt2Merge = functools.partial(Recipe, name="sqrt2_merge", conv_bias=True, out_scale=1 / math.sqrt(2))
NFNet = functools.partial(Recipe, name="nf", conv_bias=True, gain_name="skip_gain", gain_init=0.0,
                          branch_multiplier=0.2, classifier_init="normal_0.01",
                          weight_standardization=True, activation_gain=NF_ACTIVATION_GAIN,
                          track_variance=True)

RECIPES = {
    "batchnorm": BatchNorm,
    "skipinit": SkipInit,
    "fixup": Fixup,
    "none": NoNorm,
    "sqrt2_merge": Sqrt2Merge,
    "nf": NFNet,
}
NAMED_ALPHAS = ("0", "inv_sqrt_d", "1")
FIXUP_INITS = ("full", "zero_only", "rescale_only")


def parse_alpha_init(value, num_blocks: int) -> float:
  """SkipInit's alpha at init (PAPER.md section 3): "0", "inv_sqrt_d" (1/sqrt(d)), "1" or a number."""
  text = str(value).strip()
  if text == "inv_sqrt_d":
    return 1.0 / math.sqrt(num_blocks)
  try:
    return float(text)
  except ValueError:
    raise ConfigError(
        f"model.alpha_init={value!r} is not valid: use one of {', '.join(NAMED_ALPHAS)} "
        "or a number") from None


def make_recipe(model_config, num_blocks: int) -> Recipe:
  """The recipe a model config selects; `num_blocks` is d, the number of residual blocks."""
  name = model_config.normalizer
  if name not in RECIPES:
    raise ConfigError(
        f"model.normalizer={name!r} is unknown: use one of {', '.join(sorted(RECIPES))}")
  overrides = {}
  if name == "batchnorm":
    overrides["ghost_batch_size"] = int(model_config.get("ghost_batch_size", 0) or 0)
  if name == "skipinit":
    overrides["gain_init"] = parse_alpha_init(model_config.get("alpha_init", "0"), num_blocks)
  if name == "nf":
    overrides["branch_multiplier"] = float(model_config.get("nf_alpha", 0.2))
    overrides["gain_init"] = float(model_config.get("nf_skip_gain_init", 0.0))
  fixup_init = str(model_config.get("fixup_init", "full"))
  if fixup_init not in FIXUP_INITS:
    raise ConfigError(f"model.fixup_init={fixup_init!r} is unknown: use one of "
                      f"{', '.join(FIXUP_INITS)}")
  if name == "fixup":
    overrides["fixup_init"] = fixup_init
  elif fixup_init != "full":
    raise ConfigError(f"model.fixup_init={fixup_init!r} applies to model.normalizer='fixup' only, "
                      f"not to {name!r}")
  conv_bias = model_config.get("conv_bias", None)
  if conv_bias is not None:
    overrides["conv_bias"] = bool(conv_bias)
  conv_init = str(model_config.get("conv_init", "he"))
  if conv_init not in CONV_INITS:
    raise ConfigError(f"model.conv_init={conv_init!r} is unknown: use one of {', '.join(CONV_INITS)} "
                      "(he: variance 2/fan_in; fan_in: Haiku's default, as DeepMind's code)")
  overrides["conv_init"] = conv_init
  classifier_init = str(model_config.get("classifier_init", "") or "")
  if classifier_init:  # "": the variant's own (Recipe.classifier_init)
    if classifier_init not in CLASSIFIER_INITS:
      raise ConfigError(f"model.classifier_init={classifier_init!r} is unknown: use one of "
                        f"{', '.join(CLASSIFIER_INITS)}, or '' for the variant's default")
    overrides["classifier_init"] = classifier_init
  if model_config.get("post_activation", False):
    if name != "fixup":
      raise ConfigError(f"model.post_activation=true is implemented for fixup only (its reference "
                        f"code is post-activation), not for model.normalizer={name!r}")
    overrides["post_activation"] = True
  return RECIPES[name](**overrides)
