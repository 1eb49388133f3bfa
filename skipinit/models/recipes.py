"""Residual "recipes": what each normalizer variant of PAPER.md section 3 changes in a residual block.

One generic pre-activation block (`skipinit.models.resnet.PreActBlock`) reads its variant from a
`Recipe`: its normalization layer (a module factory, as flax's ResNet example injects `norm`),
how the branch is scaled before it joins the skip path, how the convs are initialized, where
biases go, and which parameters train at their own learning rate. A variant is one row of
`RECIPES`, its `Recipe` alias and the config keys it reads, so adding one is a row here, not a
branch in the network or the trainer.
"""

import dataclasses
import functools
import math
from typing import Callable, NamedTuple, Optional, Sequence

import flax.linen as nn

from skipinit import config as config_lib
from skipinit.errors import ConfigError
from skipinit.models import layers
from skipinit.models.layers import CLASSIFIER_INITS, CONV_INITS, GhostBatchNorm

NF_ACTIVATION_GAIN = 1.7139588594436646  # ReLU gain of NF-ResNets: 1/sqrt(E[relu(z)^2] - E[relu(z)]^2)
FIXUP_GAIN = "scale"  # Fixup's branch multiplier, as its official code, whose lr groups go by name
_model_defaults = functools.cache(lambda: config_lib.base_config().model.to_dict())  # built once


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How a residual block of one variant is built. Defaults: the plain unnormalized ResNet."""

  name: str
  # The norm before every activation (pre-activation order) and before the head, or None: a flax
  # module factory called as norm(use_running_average=, dtype=, name=), whose module applies the
  # norm and then the ReLU (GhostBatchNorm fuses them into one op). Not with `scalar_biases`.
  norm: Optional[Callable[..., nn.Module]] = None
  # Biases in the block convs (the stem conv never has one).
  conv_bias: bool = False
  # A learnable scalar gain on the residual branch: out = skip + branch_multiplier * gain * branch.
  gain_name: Optional[str] = None
  gain_init: float = 1.0
  branch_multiplier: float = 1.0
  # out = out_scale * (skip + branch): 1/sqrt(2) for the variance-preserving merge.
  out_scale: float = 1.0
  # Fixup (Zhang et al. 2019): scalar biases before convs/activations/classifier and a branch bias,
  # in the same pre-activation block as every other variant, so that the tables compare
  # initializations and normalizers on one architecture; `post_activation` builds the reference
  # code's network instead (relu after the sum, a biased relu after the stem, none before the pool).
  scalar_biases: bool = False
  post_activation: bool = False
  # Fixup's conv init (`conv_inits`): "full", or one of the SkipInit paper's ablations of it [2nd],
  # "zero_only" and "rescale_only"; "": `conv_init` instead.
  fixup_init: str = ""
  # The parameters (a predicate on their path) trained at train.fixup_scalar_lr's rate.
  scalar_lr_group: Optional[Callable[[tuple], bool]] = None
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

  @property
  def conv_inits(self) -> Optional[Callable[[int, int, int], Callable]]:
    """The block convs' init where the variant has its own: conv_inits(i, m, d) for conv i of a
    branch of m (-1: the projection shortcut) in a network of d blocks. None: `conv_init`."""
    return fixup_conv_inits(self.fixup_init) if self.fixup_init else None


def fixup_conv_inits(half: str):
  """Fixup's convs as its official code (and DeepMind's): a plain normal on the fan-out, the
  branch's last conv zero and the others scaled by L^(-1/(2m-2)) in std, the projection
  N(0, 2/fan_out). The SkipInit paper's ablations of it [2nd] keep one half: "zero_only" (others
  unscaled), or "rescale_only" (of every conv, the last one included)."""
  zero_last, rescale = half in ("full", "zero_only"), half in ("full", "rescale_only")
  fan_out_normal = functools.partial(nn.initializers.variance_scaling, mode="fan_out",
                                     distribution="normal")  # not He's fan-in

  def init(i: int, m: int, num_blocks: int):
    if i < 0:
      return fan_out_normal(2.0)
    if zero_last and i == m - 1:
      return nn.initializers.zeros
    return fan_out_normal(2.0 * num_blocks ** (-1.0 / (m - 1)) if rescale else 2.0)
  return init


def fixup_scalars(path: tuple) -> bool:
  """Fixup's scalar biases (named *_bias), branch multipliers and the classifier's bias: the
  official code's optimizer puts every parameter named *bias* or *scale* in its base_lr/10
  group, the linear layer's bias included."""
  return path[-1].endswith("_bias") or path[-1] == FIXUP_GAIN or path == ("classifier", "bias")


_bn_relu = functools.partial(GhostBatchNorm, relu=True)
BatchNorm = functools.partial(Recipe, name="batchnorm", norm=_bn_relu)
SkipInit = functools.partial(Recipe, name="skipinit", conv_bias=True, gain_name="alpha",
                             gain_init=0.0, classifier_init="zeros")
Fixup = functools.partial(Recipe, name="fixup", gain_name=FIXUP_GAIN, gain_init=1.0,
                          scalar_biases=True, classifier_init="zeros",
                          fixup_init="full", scalar_lr_group=fixup_scalars)
NoNorm = functools.partial(Recipe, name="none", conv_bias=True)
Sqrt2Merge = functools.partial(Recipe, name="sqrt2_merge", conv_bias=True, out_scale=1 / math.sqrt(2))
NFResNet = functools.partial(Recipe, name="nf", conv_bias=True, gain_name="skip_gain",
                             gain_init=0.0, branch_multiplier=0.2, classifier_init="normal_0.01",
                             weight_standardization=True, activation_gain=NF_ACTIVATION_GAIN,
                             track_variance=True)


def GroupNorm(groups: Optional[int] = None, **fields) -> Recipe:
  """GroupNorm (Wu & He 2018) where BatchNorm is, without its batch statistics: does the bias
  towards the identity at depth need them (PAPER.md section 5)? No conv biases, as a BatchNorm
  ResNet. `groups`: model.groupnorm_groups' default unless given."""
  groups = _model_defaults()["groupnorm_groups"] if groups is None else groups
  def norm(*, use_running_average, dtype, name):  # the norm protocol; no running statistics
    layer = nn.GroupNorm(num_groups=groups, dtype=dtype, name=name)
    return lambda x: layers.relu(layer(x))  # (its mask from its output, which the conv saves)
  return Recipe(name="groupnorm", norm=norm, **fields)


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


def _choice(m, key: str, allowed, hint: str = "") -> str:
  value = str(m[key])
  if value not in allowed:
    raise ConfigError(f"model.{key}={value!r} is unknown: use one of {', '.join(allowed)}{hint}")
  return value


class Variant(NamedTuple):
  """A row of `RECIPES`: the variant's `Recipe` alias; fields(model config, d, widths), the alias's
  arguments its config keys set (d: residual blocks; widths: the channel counts the norms see);
  and the model.<key>s only it implements, which the others refuse away from their defaults."""

  recipe: Callable[..., Recipe]
  fields: Callable[[object, int, Sequence[int]], dict] = lambda m, d, widths: {}
  own_keys: tuple[str, ...] = ()


def _groupnorm(groups: int, widths):
  if groups < 1 or any(w % groups for w in widths):
    raise ConfigError(f"model.groupnorm_groups={groups} does not divide the channel counts of this "
                      f"network's norms ({', '.join(map(str, widths))}): use a divisor of them all "
                      f"(their greatest common divisor is {math.gcd(*widths)})")
  return {"groups": groups}


# model.normalizer -> its row; the error for an unknown one lists them in this order.
RECIPES = {
    "batchnorm": Variant(BatchNorm, lambda m, d, widths: {"norm": functools.partial(
        _bn_relu, ghost_batch_size=int(m.ghost_batch_size), fused=bool(m.fused_bn))}),
    "fixup": Variant(Fixup, lambda m, d, widths: {
        "fixup_init": _choice(m, "fixup_init", FIXUP_INITS),
        "post_activation": bool(m.post_activation)}, own_keys=("fixup_init", "post_activation")),
    "nf": Variant(NFResNet, lambda m, d, widths: {"branch_multiplier": float(m.nf_alpha),
                                                  "gain_init": float(m.nf_skip_gain_init)}),
    "none": Variant(NoNorm),
    "skipinit": Variant(SkipInit, lambda m, d, widths: {
        "gain_init": parse_alpha_init(m.alpha_init, d)}),
    "sqrt2_merge": Variant(Sqrt2Merge),
    "groupnorm": Variant(GroupNorm, lambda m, d, widths: _groupnorm(int(m.groupnorm_groups), widths),
                         own_keys=("groupnorm_groups",)),
}


def make_recipe(model_config, num_blocks: int, widths: Sequence[int] = ()) -> Recipe:
  """The recipe a model config selects; `num_blocks` is d, the number of residual blocks, and
  `widths` the channel counts its norms see (for norms that constrain them)."""
  m, name = model_config, model_config.normalizer
  if name not in RECIPES:
    raise ConfigError(f"model.normalizer={name!r} is unknown: use one of {', '.join(RECIPES)}")
  for owner, row in RECIPES.items():
    for key in (k for k in row.own_keys if owner != name and m[k] != _model_defaults()[k]):
      shown = str(m[key]).lower() if isinstance(m[key], bool) else repr(m[key])
      raise ConfigError(f"model.{key}={shown} is implemented for {owner} only, not for "
                        f"model.normalizer={name!r}")
  fields = RECIPES[name].fields(m, num_blocks, widths)
  if m.conv_bias is not None:
    fields["conv_bias"] = bool(m.conv_bias)
  fields["conv_init"] = _choice(m, "conv_init", CONV_INITS, " (he: variance 2/fan_in; fan_in: "
                                "Haiku's default, as DeepMind's code)")
  if m.classifier_init:  # "": the variant's own (Recipe.classifier_init)
    fields["classifier_init"] = _choice(m, "classifier_init", CLASSIFIER_INITS,
                                        ", or '' for the variant's default")
  return RECIPES[name].recipe(**fields)
