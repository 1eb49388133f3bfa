"""Model zoo: `build_model(model_config)` returns the Wide-ResNet or ResNet-V2 a config describes.

Families (PAPER.md section 2):
  wrn        pre-activation Wide-ResNet for CIFAR, depth 6N+4, widths 16k/32k/64k.
  resnet_v2  pre-activation bottleneck ResNet for ImageNet (50, 101, ...; 14 and 26 for tests).
Variants (PAPER.md section 3): `model.normalizer`, one row of `skipinit.models.recipes.RECIPES` each.
"""

import math

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


def ghost_batch(model_config) -> int:
  """Examples per BatchNorm statistic (model.ghost_batch_size); 0: the whole batch, or no BN."""
  return model_config.ghost_batch_size if model_config.normalizer == "batchnorm" else 0


def check_ghost_batch(model_config, batch: int, per_device: bool = True) -> None:
  """The ghost-batch check: BatchNorm's statistics come from whole ghost batches of every device's
  batch (`per_device`) or of the global batch, so that they do not depend on the device count."""
  ghost = ghost_batch(model_config)
  if ghost < 0:
    raise ConfigError(f"model.ghost_batch_size={ghost} must be >= 0 (0 = the whole batch)")
  if not ghost or not batch % ghost:
    return
  if per_device:
    raise ConfigError(
        f"model.ghost_batch_size={ghost} does not divide the per-device batch of {batch} "
        "examples: choose a ghost size that divides it, or a batch size that is a multiple of "
        "ghost_batch_size x number of devices")
  raise ConfigError(f"train.batch_size={batch} is not a multiple of model.ghost_batch_size={ghost} "
                    f"(BatchNorm's statistics come from ghost batches of that size): use a batch "
                    f"size that is a multiple of {ghost}, or model.ghost_batch_size="
                    f"{math.gcd(batch, ghost)}, which divides it (a ghost batch larger than the "
                    "batch is the whole batch)")


def model_parts(model_config):
  """What build_model builds a ResNet from: (stages, stem features, recipe), or a ConfigError
  with one clear sentence for anything in the config it cannot build."""
  m = model_config
  stages = stage_specs(m)
  stem = int(64 * float(m.width)) if m.name == "resnet_v2" else 16
  widths = sorted({stem} | {f for s in stages for f, _, _ in s.convs(1)})  # what the norms see
  recipe = make_recipe(m, sum(s.num_blocks for s in stages), widths)
  for key in ("dtype", "residual_dtype"):
    if m[key] not in DTYPES:
      raise ConfigError(f"model.{key}={m[key]!r} is unknown: use one of {', '.join(DTYPES)}")
  if jnp.dtype(DTYPES[m.residual_dtype]).itemsize < jnp.dtype(DTYPES[m.dtype]).itemsize:
    raise ConfigError(f"model.residual_dtype={m.residual_dtype} is narrower than "
                      f"model.dtype={m.dtype}: the residual stream must be at least as "
                      "precise as the branches (use residual_dtype=float32)")
  if not 0.0 <= m.dropout_rate < 1.0:
    raise ConfigError(f"model.dropout_rate={m.dropout_rate!r} must be in [0, 1)")
  check_ghost_batch(m, 0)  # (a negative ghost batch; the batch is checked by config.validate)
  return stages, stem, recipe


def build_model(model_config) -> ResNet:
  """The flax module a `model` config describes; `module.apply(v, images_nhwc, train=...)` -> logits."""
  m = model_config
  stages, stem, recipe = model_parts(m)
  return ResNet(stages=stages, recipe=recipe, num_classes=m.num_classes, stem_features=stem,
                imagenet_stem=m.name == "resnet_v2", dropout_rate=float(m.dropout_rate),
                remat=bool(m.remat), scan_unroll=int(m.scan_unroll), dtype=DTYPES[m.dtype],
                residual_dtype=DTYPES[m.residual_dtype])


def num_residual_blocks(model_config) -> int:
  """d in PAPER.md: the number of residual blocks (6 for WRN-16, 498 for WRN-1000)."""
  return sum(s.num_blocks for s in stage_specs(model_config))


__all__ = ["build_model", "model_parts", "check_ghost_batch", "ghost_batch", "num_residual_blocks",
           "stage_specs", "wrn_blocks_per_stage", "Recipe", "RECIPES", "make_recipe", "parse_alpha_init",
           "PreActBlock", "ResNet", "StageSpec", "FAMILIES", "DTYPES"]
