"""Layers the residual recipes are made of: ghost batch norm and weight-standardized convs."""

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# He (Kaiming) normal on the fan-in: the init under which PAPER.md section 5's variance arguments hold.
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")
# Haiku's default conv init, which DeepMind's SkipInit, BatchNorm and Fixup ResNets (nfnets/) keep:
# TruncatedNormal(stddev=1/sqrt(fan_in)) cut at 2 stddevs and not rescaled for the cut, so its
# variance is 0.774/fan_in. flax's variance_scaling does rescale (stddev = sqrt(scale)/0.8796):
# scale = 0.8796^2 gives back exactly Haiku's distribution.
_TRUNCATED_STD = 0.87962566103423978  # std of a unit normal cut at +-2
haiku_fan_in = nn.initializers.variance_scaling(_TRUNCATED_STD ** 2, "fan_in", "truncated_normal")
# model.conv_init -> the initializer of every conv but Fixup's branch and projection convs.
CONV_INITS = {"he": he_normal, "fan_in": haiku_fan_in}
# model.classifier_init -> the final linear layer's kernel init.
CLASSIFIER_INITS = {"zeros": nn.initializers.zeros, "lecun_normal": nn.initializers.lecun_normal(),
                    "normal_0.01": nn.initializers.normal(0.01)}


@jax.custom_vjp
def relu(x):
  """max(x, 0), whose backward pass takes its mask from the output: jax's relu saves a separate
  boolean mask of x > 0 for it, one more byte per activation element in every scanned block
  (WRN-100-2 skipinit, bfloat16, batch 128: 1.67 -> 1.46 GiB of device memory). The output is
  saved anyway, as the next conv's input. Same gradient (0 at x = 0, as jax's)."""
  return jnp.maximum(x, 0)


def _relu_fwd(x):
  y = jnp.maximum(x, 0)
  return y, y


def _relu_bwd(y, g):
  return (jnp.where(y > 0, g, 0),)


relu.defvjp(_relu_fwd, _relu_bwd)


class GhostBatchNorm(nn.Module):
  """BatchNorm whose training statistics come from ghost batches of `ghost_batch_size` examples.

  Flax's `nn.BatchNorm` normalizes over the whole batch (or a named axis); the paper's BN baseline
  (PAPER.md section 3) normalizes each chunk of `ghost_batch_size` examples separately, so that
  the statistics, and hence the result, do not depend on the global batch size or on how many
  devices the batch is split over. That needs the reshape below, which nn.BatchNorm cannot do.

  Statistics are computed in float32 whatever the compute dtype. The running averages (used for
  evaluation) average the ghost-batch means and variances. `relu=True` fuses the ReLU that
  follows. Training uses `ghost_batch_norm`, whose backward pass is written by hand (`fused=False`:
  jax's autodiff of the same formula, kept for comparison).
  """

  use_running_average: bool
  ghost_batch_size: int = 0  # 0: the whole batch
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  scale_init: Callable = nn.initializers.ones
  relu: bool = False
  fused: bool = True

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    scale = self.param("scale", self.scale_init, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)

    if self.use_running_average:
      mul = scale * jax.lax.rsqrt(ra_var.value + self.epsilon)
      y = x * mul.astype(self.dtype) + (bias - ra_mean.value * mul).astype(self.dtype)
      return nn.relu(y) if self.relu else y

    batch = x.shape[0]
    ghost = self.ghost_batch_size or batch
    if ghost < 0 or batch % ghost:  # (config.validate's error, which users see, comes first)
      raise ValueError(f"ghost_batch_size={ghost} must be 0 or divide the batch ({batch} examples)")
    bn = ghost_batch_norm if self.fused else _ghost_batch_norm_forward
    y, mean, var = bn(x.astype(self.dtype), scale, bias, ghost, self.epsilon, self.relu)
    if not self.is_initializing():
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1 - m) * jnp.mean(mean, axis=tuple(range(mean.ndim - 1)))
      ra_var.value = m * ra_var.value + (1 - m) * jnp.mean(var, axis=tuple(range(var.ndim - 1)))
    return y


# A hand-written VJP for ghost BN (+ ReLU), because jax's autodiff of the forward formula saves two
# float32 copies of the activation for the backward pass (the f32 upcast and d(x^2)/dx = 2x) plus
# the ReLU mask and output: inside a scanned stage that is ~22 bytes per activation element per
# block, written and read back every step, against ~8 for an unnormalized block. This VJP saves
# only x in the compute dtype and the per-ghost-batch statistics, and recomputes x_hat in the
# backward pass (WRN-100-2 bf16 batch 128: 3.53 -> 2.02 GiB of device memory; tests/test_models.py
# checks its gradients against autodiff's). The mean and variance outputs feed only the running
# averages: their cotangents are ignored.

def _ghost_groups(x, ghost):
  """x reshaped to (groups, ghost, ...) and the axes each group's statistics reduce over."""
  xg = x.reshape((x.shape[0] // ghost, ghost) + x.shape[1:])
  return xg, tuple(range(1, xg.ndim - 1))


def _ghost_batch_norm_forward(x, scale, bias, ghost, epsilon, relu):
  """(y, mean, var): [relu of] x normalized over each ghost batch, in x.dtype; mean and var f32
  of shape (groups, 1, ..., 1, C). Differentiated by jax's autodiff (model.fused_bn=false)."""
  xg, axes = _ghost_groups(x.astype(jnp.float32), ghost)
  mean = jnp.mean(xg, axes, keepdims=True)
  # One pass over x for both statistics (as flax's BatchNorm by default): the two sums become one
  # multi-output reduction instead of two dependent ones. In float32 the cancellation is harmless
  # unless mean^2 / var reached ~1e5, far beyond what a residual stream reaches.
  var = jnp.maximum(jnp.mean(jnp.square(xg), axes, keepdims=True) - jnp.square(mean), 0.0)
  mul = scale * jax.lax.rsqrt(var + epsilon)
  y = xg * mul + (bias - mean * mul)
  if relu:
    y = jnp.maximum(y, 0.0)
  return y.reshape(x.shape).astype(x.dtype), mean, var


# `_ghost_batch_norm_forward` with the hand-written backward pass described above.
ghost_batch_norm = jax.custom_vjp(_ghost_batch_norm_forward, nondiff_argnums=(3, 4, 5))


def _ghost_batch_norm_vjp_fwd(x, scale, bias, ghost, epsilon, relu):
  y, mean, var = _ghost_batch_norm_forward(x, scale, bias, ghost, epsilon, relu)
  return (y, mean, var), (x, mean, jax.lax.rsqrt(var + epsilon), scale, bias)


def _ghost_batch_norm_vjp_bwd(ghost, epsilon, relu, residuals, cotangents):
  x, mean, rstd, scale, bias = residuals
  xg, axes = _ghost_groups(x.astype(jnp.float32), ghost)
  x_hat = (xg - mean) * rstd
  g = cotangents[0].reshape(xg.shape).astype(jnp.float32)
  if relu:
    g = jnp.where(x_hat * scale + bias > 0, g, 0.0)
  n = math.prod(xg.shape[a] for a in axes)
  # d/dx of (x_hat * scale + bias) over a group: scale * rstd * (g - mean(g) - x_hat * mean(g x_hat)).
  sum_g = jnp.sum(g, axes, keepdims=True)
  sum_g_x_hat = jnp.sum(g * x_hat, axes, keepdims=True)
  dx = (scale * rstd) * (g - (sum_g + x_hat * sum_g_x_hat) / n)
  groups = tuple(range(sum_g.ndim - 1))
  return (dx.reshape(x.shape).astype(x.dtype), jnp.sum(sum_g_x_hat, groups).reshape(scale.shape),
          jnp.sum(sum_g, groups).reshape(bias.shape))


ghost_batch_norm.defvjp(_ghost_batch_norm_vjp_fwd, _ghost_batch_norm_vjp_bwd)


class WSConv(nn.Module):
  """Conv with Scaled Weight Standardization (Brock et al. 2021, NF-ResNets, eq. 2).

  W_hat = gain * (W - mean(W)) / (std(W) * sqrt(fan_in)), statistics over each output unit's
  fan-in. Written here because flax has no weight-standardized conv.
  """

  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  use_bias: bool = True
  kernel_init: Callable = he_normal
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    shape = tuple(self.kernel_size) + (x.shape[-1], self.features)
    kernel = self.param("kernel", self.kernel_init, shape, jnp.float32)
    gain = self.param("gain", nn.initializers.ones, (self.features,), jnp.float32)
    w = standardize_weight(kernel, gain).astype(self.dtype)
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), w, tuple(self.strides), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(self.dtype)
    return y


def standardize_weight(kernel, gain, epsilon=1e-4):
  """The scaled weight standardization of `WSConv`, as a function (used by tests and analysis)."""
  axes = tuple(range(kernel.ndim - 1))
  n = 1
  for d in kernel.shape[:-1]:
    n *= d
  mean = jnp.mean(kernel, axes, keepdims=True)
  var = jnp.var(kernel, axes, keepdims=True)
  return (kernel - mean) * jax.lax.rsqrt(jnp.maximum(var * n, epsilon)) * gain
