"""Layers the residual recipes are made of: ghost batch norm and weight-standardized convs."""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# He (Kaiming) normal on the fan-in: the init under which PAPER.md section 5's variance arguments hold.
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")


class GhostBatchNorm(nn.Module):
  """BatchNorm whose training statistics come from ghost batches of `ghost_batch_size` examples.

  Flax's `nn.BatchNorm` normalizes over the whole batch (or a named axis); the paper's BN baseline
  (PAPER.md section 3) normalizes each chunk of `ghost_batch_size` examples separately, so that
  the statistics, and hence the result, do not depend on the global batch size or on how many
  devices the batch is split over. That needs the reshape below, which nn.BatchNorm cannot do.

  Statistics are computed in float32 whatever the compute dtype. The running averages (used for
  evaluation) average the ghost-batch means and variances.
  """

  use_running_average: bool
  ghost_batch_size: int = 0  # 0: the whole batch
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  scale_init: Callable = nn.initializers.ones

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    scale = self.param("scale", self.scale_init, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)

    if self.use_running_average:
      mul = scale * jax.lax.rsqrt(ra_var.value + self.epsilon)
      return (x * mul.astype(self.dtype) + (bias - ra_mean.value * mul).astype(self.dtype))

    batch = x.shape[0]
    ghost = self.ghost_batch_size or batch
    if batch % ghost:
      raise ValueError(f"ghost batch size {ghost} does not divide the batch of {batch} examples")
    xg = x.astype(jnp.float32).reshape((batch // ghost, ghost) + x.shape[1:])
    axes = tuple(range(1, xg.ndim - 1))
    mean = jnp.mean(xg, axes, keepdims=True)
    # One pass over x for both statistics (as flax's BatchNorm by default): the two sums become one
    # multi-output reduction instead of two dependent ones (fwd+bwd of a 128x32x32x64 bf16 ghost
    # BN: 118 -> 113 ms on CPU, same outputs). In float32 the cancellation is harmless unless
    # mean^2 / var reached ~1e5, far beyond what a residual stream reaches.
    var = jnp.maximum(jnp.mean(jnp.square(xg), axes, keepdims=True) - jnp.square(mean), 0.0)
    mul = scale * jax.lax.rsqrt(var + self.epsilon)
    y = xg * mul + (bias - mean * mul)
    if not self.is_initializing():
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1 - m) * jnp.mean(mean, axis=tuple(range(mean.ndim - 1)))
      ra_var.value = m * ra_var.value + (1 - m) * jnp.mean(var, axis=tuple(range(var.ndim - 1)))
    return y.reshape(x.shape).astype(self.dtype)


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
