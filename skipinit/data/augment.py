"""On-device augmentation for data sets held on the accelerator (CIFAR-10): runs inside the jitted step.

PAPER.md section 4: 4-pixel zero pad, random 32x32 crop, random horizontal flip, per-channel
normalization. Every example draws its own crop and flip from `rng`.
"""

import jax
import jax.numpy as jnp


def normalize(images_uint8, mean, std, dtype=jnp.float32):
  """uint8 NHWC -> (x - mean) / std in `dtype`."""
  x = images_uint8.astype(jnp.float32)
  return ((x - jnp.asarray(mean)) / jnp.asarray(std)).astype(dtype)


def pad_crop_flip(rng, images, pad: int = 4):
  """Random crop of the zero-padded image back to its size, and a random horizontal flip.

  Written as one gather per example (dynamic_slice under vmap) rather than with a library: the
  augmentation libraries (tf.image, dm_pix) run per example on the host or need TensorFlow.
  """
  n, h, w, _ = images.shape
  crop_rng, flip_rng = jax.random.split(rng)
  offsets = jax.random.randint(crop_rng, (n, 2), 0, 2 * pad + 1)
  flips = jax.random.bernoulli(flip_rng, 0.5, (n,))
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

  def one(img, off, flip):
    out = jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))
    return jnp.where(flip, out[:, ::-1], out)

  return jax.vmap(one)(padded, offsets, flips)
