"""model.normalizer=groupnorm: GroupNorm where BatchNorm is, a variant that is one recipe.

It took one row in skipinit/models/recipes.py, its config key, a sweep method and this test;
neither resnet.py nor the trainer changed (issue 17's proof).
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from skipinit import ConfigError, config as cfg_lib, models, rundir
from skipinit.analysis import signal
from skipinit.sweep import methods
from skipinit.train import train_and_evaluate

from conftest import SAMPLE_DIR


def model_config(**overrides):
  c = cfg_lib.base_config(width=overrides.get("width", 1))  # a float width for ResNet-V2
  cfg_lib.apply_overrides(c, methods.select(["groupnorm"])["groupnorm"])
  c.model.update({"depth": 10, **overrides})
  return c.model


def test_groupnorm_is_where_batchnorm_is_without_batch_statistics_or_conv_biases():
  x = jnp.zeros((2, 32, 32, 3))
  shapes = {n: jax.eval_shape(lambda m=models.build_model(model_config(normalizer=n)):
                              m.init(jax.random.key(0), x, train=False))
            for n in ("batchnorm", "groupnorm")}
  paths = {n: set(flax.traverse_util.flatten_dict(v["params"])) for n, v in shapes.items()}
  # The same norms (scale and bias) at the same places, head included; no conv biases, as BN.
  assert paths["groupnorm"] == paths["batchnorm"]
  assert ("final_norm", "scale") in paths["groupnorm"]
  assert not any(p[-1] == "bias" and p[-2].startswith(("conv", "proj")) for p in paths["groupnorm"])
  assert "batch_stats" in shapes["batchnorm"] and "batch_stats" not in shapes["groupnorm"]


def test_groupnorm_normalizes_each_example_alone():
  """No batch statistics: an example's logits do not depend on the rest of the batch."""
  m = models.build_model(model_config())
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  v = jax.jit(lambda: m.init(jax.random.key(0), x, train=False))()
  apply = jax.jit(lambda x: m.apply(v, x, train=True))
  np.testing.assert_allclose(apply(x)[:1], apply(x[:1]), rtol=1e-5, atol=1e-5)


def test_groups_must_divide_the_channels_of_every_norm():
  with pytest.raises(ConfigError, match=r"groupnorm_groups=12 does not divide .*16, 32, 64"):
    models.build_model(model_config(groupnorm_groups=12))
  with pytest.raises(ConfigError, match="groupnorm_groups=16 does not divide .*8"):
    models.model_parts(model_config(name="resnet_v2", depth=14, width=0.125))
  with pytest.raises(ConfigError, match="implemented for groupnorm only"):
    models.build_model(model_config(normalizer="batchnorm", groupnorm_groups=8))
  models.model_parts(model_config(groupnorm_groups=8))


def test_groupnorm_trains_through_the_trainer(cifar_config, tmp_path):
  config = cifar_config("smoke,num_devices=1,normalizer=groupnorm,epochs=2,lr=0.05")
  assert train_and_evaluate(config, str(tmp_path))["status"] == "completed"
  losses = [r["train_loss"] for r in rundir.read_metrics(str(tmp_path))]
  assert len(losses) == 2 and np.all(np.isfinite(losses)) and losses[1] < losses[0]


def test_groupnorm_keeps_batchnorms_linear_growth_of_the_skip_path_at_init():
  """Figure 4's probe: the skip-path variance grows by about BN's step per block, not by a factor
  (as without normalization): GroupNorm biases the blocks towards the identity too."""
  images = signal.cifar10_images(str(SAMPLE_DIR), 64)
  stats = {n: signal.resnet_block_variances(signal.wrn_config(40, 1, n), images)
           for n in ("batchnorm", "groupnorm", "none")}
  fits = {n: signal.fit_growth(s["skip_var"], s["stage"]) for n, s in stats.items()}
  assert not fits["batchnorm"]["explodes"] and not fits["groupnorm"]["explodes"]
  assert fits["groupnorm"]["r2_linear"] > fits["groupnorm"]["r2_geometric"]  # linear, as BN's
  assert abs(fits["groupnorm"]["slope"] - fits["batchnorm"]["slope"]) < 0.25
  assert fits["groupnorm"]["factor"] < fits["none"]["factor"] - 0.2
