"""Model zoo: `build_model(model_config)` returns the Wide-ResNet or ResNet-V2 a config describes.

Families (PAPER.md section 2):
  wrn        pre-activation Wide-ResNet for CIFAR, depth 6N+4, widths 16k/32k/64k.
  resnet_v2  pre-activation bottleneck ResNet for ImageNet (50, 101, ...; 14 and 26 for tests).
Variants (PAPER.md section 3): `model.normalizer` in batchnorm | skipinit | fixup | none |
sqrt2_merge | nf; see `skipinit.models.recipes`.
"""

import jax.numpy as jnp

from skipinit.errors import ConfigError
from skipinit.models.recipes import RECIPES, Recipe, make_recipe, parse_alpha_init
from skipinit.models.resnet import PreActBlock, ResNet, StageSpec

FAMILIES = ("wrn", "resnet_v2")
RESNET_V2_STAGES = {14: (1, 1, 1, 1), 26: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
                    152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def wrn_blocks_per_stage(depth: int) -> int:
  """N for a Wide-ResNet of depth 6N+4, or a ConfigError naming the valid depths."""
  if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
    raise ConfigError(
        f"model.depth={depth!r} is not a valid Wide-ResNet depth: it must be 6N+4 with N >= 1 "
        "(10, 16, 22, 28, 34, 40, ..., 100, ..., 1000, ...)")
  return (depth - 4) // 6


def stage_specs(model_config) -> tuple[StageSpec, ...]:
  name, depth = model_config.name, model_config.depth
  if name == "wrn":
    n, k = wrn_blocks_per_stage(depth), model_config.width
    if not (isinstance(k, int) and k >= 1):
      raise ConfigError(f"model.width={k!r} is not valid for a Wide-ResNet: use an integer >= 1")
    return tuple(StageSpec(n, 16 * k * 2 ** j, 1 if j == 0 else 2) for j in range(3))
  if name == "resnet_v2":
    if depth not in RESNET_V2_STAGES:
      raise ConfigError(f"model.depth={depth!r} is not a ResNet-V2 depth: use one of "
                        f"{', '.join(map(str, RESNET_V2_STAGES))}")
    width = float(model_config.width)
    if width <= 0 or int(64 * width) != 64 * width:
      raise ConfigError(f"model.width={model_config.width!r} is not valid for ResNet-V2: use a "
                        "positive multiple of 1/64 of the standard widths (1 = ResNet-50 widths)")
    return tuple(StageSpec(b, int(64 * width) * 2 ** j, 1 if j == 0 else 2, bottleneck=True)
                 for j, b in enumerate(RESNET_V2_STAGES[depth]))
  raise ConfigError(f"model.name={name!r} is unknown: use one of {', '.join(FAMILIES)}")


def validate_model_config(model_config, per_device_batch: int | None = None) -> None:
  """Raises ConfigError with one clear sentence for anything build_model would reject."""
  stages = stage_specs(model_config)
  make_recipe(model_config, sum(s.num_blocks for s in stages))
  if model_config.get("dtype", "float32") not in DTYPES:
    raise ConfigError(f"model.dtype={model_config.dtype!r} is unknown: use one of "
                      f"{', '.join(DTYPES)}")
  residual = model_config.get("residual_dtype", "float32")
  if residual not in DTYPES:
    raise ConfigError(f"model.residual_dtype={residual!r} is unknown: use one of "
                      f"{', '.join(DTYPES)}")
  if DTYPES[residual](0).itemsize < DTYPES[model_config.get("dtype", "float32")](0).itemsize:
    raise ConfigError(f"model.residual_dtype={residual} is narrower than "
                      f"model.dtype={model_config.dtype}: the residual stream must be at least as "
                      "precise as the branches (use residual_dtype=float32)")
  rate = model_config.get("dropout_rate", 0.0)
  if not 0.0 <= rate < 1.0:
    raise ConfigError(f"model.dropout_rate={rate!r} must be in [0, 1)")
  ghost = model_config.get("ghost_batch_size", 0) or 0
  if model_config.normalizer == "batchnorm":
    if ghost < 0:
      raise ConfigError(f"model.ghost_batch_size={ghost} must be >= 0 (0 = the whole batch)")
    if per_device_batch is not None and ghost and per_device_batch % ghost:
      raise ConfigError(
          f"model.ghost_batch_size={ghost} does not divide the per-device batch of "
          f"{per_device_batch} examples: choose a ghost size that divides it, or a batch size that "
          "is a multiple of ghost_batch_size x number of devices")


def build_model(model_config) -> ResNet:
  """The flax module a `model` config describes; `module.apply(v, images_nhwc, train=...)` -> logits."""
  validate_model_config(model_config)
  stages = stage_specs(model_config)
  recipe = make_recipe(model_config, sum(s.num_blocks for s in stages))
  imagenet = model_config.name == "resnet_v2"
  return ResNet(
      stages=stages,
      recipe=recipe,
      num_classes=model_config.get("num_classes", 1000 if imagenet else 10),
      stem_features=int(64 * float(model_config.width)) if imagenet else 16,
      imagenet_stem=imagenet,
      dropout_rate=float(model_config.get("dropout_rate", 0.0)),
      remat=bool(model_config.get("remat", False)),
      scan_unroll=int(model_config.get("scan_unroll", 0)),
      fused_bn=bool(model_config.get("fused_bn", True)),
      dtype=DTYPES[model_config.get("dtype", "float32")],
      residual_dtype=DTYPES[model_config.get("residual_dtype", "float32")],
  )


def num_residual_blocks(model_config) -> int:
  """d in PAPER.md: the number of residual blocks (6 for WRN-16, 498 for WRN-1000)."""
  return sum(s.num_blocks for s in stage_specs(model_config))


__all__ = ["build_model", "validate_model_config", "num_residual_blocks", "stage_specs",
           "wrn_blocks_per_stage", "Recipe", "RECIPES", "make_recipe", "parse_alpha_init",
           "PreActBlock", "ResNet", "StageSpec", "FAMILIES", "DTYPES"]
