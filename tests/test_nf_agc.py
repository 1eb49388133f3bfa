"""NF-ResNets and Adaptive Gradient Clipping (issue 7; Brock et al. 2021a, 2021b)."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from skipinit import config as cfg_lib, models
from skipinit.data import cifar10
from skipinit.models.layers import standardize_weight
from skipinit.train import optim, train_and_evaluate

from conftest import SAMPLE_DIR


def test_weight_standardization_gives_zero_mean_unit_norm_fan_in_rows():
  kernel = jax.random.normal(jax.random.key(0), (3, 3, 8, 5)) * 7 + 3
  w = standardize_weight(kernel, jnp.ones(5))
  rows = w.reshape(-1, 5)  # one column per output unit, its fan-in down the rows
  np.testing.assert_allclose(rows.mean(0), 0, atol=1e-6)
  # Scaled WS: variance 1/fan_in, so sum of squares 1 (unit-variance output for unit-variance input)
  np.testing.assert_allclose((rows ** 2).sum(0), 1, rtol=1e-3)
  np.testing.assert_allclose(standardize_weight(kernel, 2 * jnp.ones(5)), 2 * w, rtol=1e-6)


def _real_images(n=128):
  images, _ = cifar10.load_folder(SAMPLE_DIR, cache_dir=None)["train"]
  return jnp.asarray((images[:n].astype(np.float32) - cifar10.MEAN) / cifar10.STD)


def test_nf_block_variance_follows_the_analytic_expectation():
  """With the branch gains at 1, the skip path's variance grows by alpha^2 per block relative to
  the stem's output and resets at each transition (NF-ResNets section 3), on real images."""
  cfg = cfg_lib.base_config().model
  cfg.update(depth=28, width=1, normalizer="nf", nf_skip_gain_init=1.0)  # 4 blocks per stage
  m, x = models.build_model(cfg), _real_images()
  variables = jax.jit(lambda: m.init(jax.random.key(0), x[:2], train=False))()
  _, state = jax.jit(lambda v, x: m.apply(v, x, train=True, mutable=["intermediates"]))(variables, x)
  flat = flax.traverse_util.flatten_dict(state["intermediates"])
  measured = [np.ravel(flat[(f"stage{j}_block0", "skip_var")]) for j in range(3)]
  measured = [np.concatenate([b0, np.ravel(flat[(f"stage{j}_blocks", "skip_var")])])
              for j, b0 in enumerate(measured)]
  stem_var = measured[0][0]  # the network is homogeneous in the stem's output scale
  a2 = 0.2 ** 2
  expected = [1.0 + a2 * np.arange(4)]  # stage 0 has no projection at width 1: continues from 1
  expected += [np.concatenate([[1.0], 1.0 + a2 * np.arange(1, 4)]) for _ in range(2)]
  for got, want in zip(measured, expected):
    np.testing.assert_allclose(got / stem_var, want, rtol=0.2)
  # And without the beta scaling (a plain unnormalized net) it would not: the test can fail.
  cfg.update(normalizer="none")
  m2 = models.build_model(cfg)
  v2 = jax.jit(lambda: m2.init(jax.random.key(0), x[:2], train=False))()
  _, s2 = jax.jit(lambda v, x: m2.apply(v, x, train=True, mutable=["intermediates"]))(v2, x)
  grow = np.ravel(flax.traverse_util.flatten_dict(s2["intermediates"])[("stage0_blocks", "skip_var")])
  nf_grow = np.ravel(flat[("stage0_blocks", "skip_var")])
  assert nf_grow[-1] / nf_grow[0] < 1.15 < 1.5 < grow[-1] / grow[0]


def _agc(lam=0.01, eps=1e-3):
  return optim.adaptive_grad_clip(lam, eps)


def test_agc_leaves_small_gradients_untouched():
  params = {"conv": {"kernel": jnp.ones((3, 3, 4, 2))}}
  grads = {"conv": {"kernel": jnp.full((3, 3, 4, 2), 1e-5)}}
  out, _ = _agc().update(grads, optax.EmptyState(), params)
  np.testing.assert_array_equal(out["conv"]["kernel"], grads["conv"]["kernel"])


def test_agc_clips_each_unit_to_lambda_times_its_weight_norm():
  w = jax.random.normal(jax.random.key(0), (3, 3, 4, 6))
  g = jax.random.normal(jax.random.key(1), (3, 3, 4, 6)) * 100
  g = g.at[..., 0].set(1e-6)  # one small unit stays as it is
  out, _ = _agc(0.02).update({"k": g}, optax.EmptyState(), {"k": w})
  norms = lambda a: jnp.sqrt(jnp.sum(a ** 2, axis=(0, 1, 2)))  # per output channel
  np.testing.assert_allclose(norms(out["k"])[1:], 0.02 * norms(w)[1:], rtol=1e-5)
  np.testing.assert_array_equal(out["k"][..., 0], g[..., 0])
  # eps: a zero-initialized parameter (SkipInit's alpha) may still move by lambda * eps.
  out, _ = _agc(0.02, 1e-3).update({"a": jnp.array(5.0)}, optax.EmptyState(), {"a": jnp.array(0.0)})
  assert float(out["a"]) == pytest.approx(0.02 * 1e-3)


def test_agc_clips_scan_stacked_blocks_per_block_and_skips_the_classifier():
  w = jax.random.normal(jax.random.key(0), (5, 3, 3, 4, 6))  # 5 stacked blocks
  g = jax.random.normal(jax.random.key(1), (5, 3, 3, 4, 6)) * 100
  params = {"stage0_blocks": {"conv0": {"kernel": w}, "alpha": jnp.ones(5)},
            "classifier": {"kernel": jnp.ones((6, 10))}}
  grads = {"stage0_blocks": {"conv0": {"kernel": g}, "alpha": jnp.full(5, 100.0)},
           "classifier": {"kernel": jnp.full((6, 10), 100.0)}}
  tx = optax.masked(_agc(0.01), optim.agc_mask(params))
  out, _ = tx.update(grads, tx.init(params), params)
  norms = lambda a: jnp.sqrt(jnp.sum(a ** 2, axis=(1, 2, 3)))  # per block and output channel
  np.testing.assert_allclose(norms(out["stage0_blocks"]["conv0"]["kernel"]), 0.01 * norms(w), rtol=1e-5)
  np.testing.assert_allclose(out["stage0_blocks"]["alpha"], 0.01 * np.ones(5), rtol=1e-5)
  np.testing.assert_array_equal(out["classifier"]["kernel"], grads["classifier"]["kernel"])


def test_agc_matches_the_brock_definition_on_a_dense_layer():
  w = jax.random.normal(jax.random.key(0), (7, 3))  # IO: units are output columns
  g = jax.random.normal(jax.random.key(1), (7, 3)) * 10
  out, _ = _agc(0.05).update({"d": g}, optax.EmptyState(), {"d": w})
  wn, gn = np.linalg.norm(w, axis=0), np.linalg.norm(g, axis=0)
  want = np.where(gn > 0.05 * wn, g * (0.05 * wn / gn), g)
  np.testing.assert_allclose(out["d"], want, rtol=1e-5)


def test_agc_lets_an_nf_net_train_where_it_otherwise_diverges(cifar_config, tmp_path):
  base = "smoke,num_devices=1,normalizer=nf,epochs=1,lr=2.0,schedule=constant"
  without = train_and_evaluate(cifar_config(base), str(tmp_path / "no_agc"))
  again = train_and_evaluate(cifar_config(base), str(tmp_path / "no_agc_again"))
  assert without["status"] == "diverged" and again == without  # deterministic
  clipped = train_and_evaluate(cifar_config(base + ",agc_clip=0.01"), str(tmp_path / "agc"))
  assert clipped["status"] == "completed" and np.isfinite(clipped["train_loss"])
