"""The optimizer's parameter groups (PAPER.md sections 3-4): what decays, what trains at lr/10."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from skipinit import config as cfg_lib, models
from skipinit.train import optim


def _params(normalizer):
  cfg = cfg_lib.base_config().model
  cfg.update(depth=22, width=1, normalizer=normalizer)  # 3 blocks a stage: 2 scanned
  model = models.build_model(cfg)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                             train=False))["params"]
  return model, jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), params)


def _first_update(normalizer, grads_fn, **train):
  model, params = _params(normalizer)
  t = cfg_lib.base_config().train
  t.update(lr=1.0, momentum=0.0, **train)
  tx = optim.make_optimizer(t, lambda step: t.lr, params, model.recipe.name,
                            model.recipe.gain_name or "")
  updates, _ = tx.update(grads_fn(params), tx.init(params), params)
  return {"/".join(k): float(np.max(np.abs(v)))
          for k, v in traverse_util.flatten_dict(updates).items()}


def test_weight_decay_reaches_kernels_only():
  # Zero gradients: the whole update is the L2 term, lr * wd * param on the decayed leaves.
  zeros = lambda p: jax.tree.map(jnp.zeros_like, p)
  updates = _first_update("skipinit", zeros, weight_decay=0.5)
  assert updates["stage0_blocks/conv0/kernel"] == 0.5
  assert updates["classifier/kernel"] == 0.5
  for name in ("stage0_blocks/alpha", "stage0_blocks/conv0/bias", "classifier/bias"):
    assert updates[name] == 0.0, name
  bn = _first_update("batchnorm", zeros, weight_decay=0.5)
  assert bn["stage0_blocks/norm0/scale"] == 0.0 and bn["stem/kernel"] == 0.5
  everything = _first_update("skipinit", zeros, weight_decay=0.5, weight_decay_all=True)
  assert everything["stage0_blocks/alpha"] == 0.5


def test_fixup_scalars_and_classifier_bias_train_at_a_tenth_of_the_lr():
  ones = lambda p: jax.tree.map(jnp.ones_like, p)
  updates = _first_update("fixup", ones, weight_decay=0.0)
  slow = [k for k, v in updates.items() if np.isclose(v, 0.1)]
  assert set(slow) == {k for k in updates if k.endswith("_bias") or k.endswith("/scale")
                       or k == "classifier/bias"}
  assert "stage0_blocks/conv0_bias" in slow and "stage0_blocks/scale" in slow
  assert updates["stage0_blocks/conv0/kernel"] == 1.0 and updates["classifier/kernel"] == 1.0
  assert _first_update("fixup", ones, weight_decay=0.0, fixup_scalar_lr_mult=1.0)[
      "classifier/bias"] == 1.0
