"""The optimizer's parameter groups (PAPER.md sections 3-4): what decays, what trains at lr/10."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from skipinit import ConfigError, config as cfg_lib, models
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
  tx = optim.make_optimizer(t, lambda step: t.lr, params, model.recipe)
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


def test_fixup_scalar_lr_rules():
  """train.fixup_scalar_lr: "relative" (lr x fixup_scalar_lr_mult, the default), a fixed peak
  value (the official code's base_lr/10 = 0.01, not scaled with the batch), or "off" (DeepMind's
  Fixup: one lr for everything)."""
  ones = lambda p: jax.tree.map(jnp.ones_like, p)
  at = lambda **t: _first_update("fixup", ones, weight_decay=0.0, **t)  # lr = 1.0
  assert at()["stage0_blocks/scale"] == np.float32(0.1)
  assert at(fixup_scalar_lr="relative", fixup_scalar_lr_mult=0.5)["stage0_blocks/scale"] == 0.5
  assert at(fixup_scalar_lr="off")["stage0_blocks/scale"] == 1.0
  fixed = at(fixup_scalar_lr="0.01")
  assert fixed["stage0_blocks/scale"] == np.float32(0.01) and fixed["classifier/bias"] == np.float32(0.01)
  assert fixed["stage0_blocks/conv0/kernel"] == 1.0
  # A fixed value does not follow train.lr (a batch-size-scaled lr), but does follow the schedule.
  t = cfg_lib.base_config().train
  t.update(lr=1.6, fixup_scalar_lr="0.01")  # ImageNet at batch 4096: the official code's 0.01
  assert np.isclose(optim.fixup_scalar_lr_scale(t) * 1.6, 0.01)
  t.update(fixup_scalar_lr="relative")
  assert np.isclose(optim.fixup_scalar_lr_scale(t) * 1.6, 0.16)


def test_fixup_scalar_lr_is_validated():
  for bad in ("fast", "-0.1", "nan"):
    c = cfg_lib.load_config_file("cifar10_wrn", f"smoke,fixup_scalar_lr={bad}")
    with pytest.raises(ConfigError, match="train.fixup_scalar_lr='.*' is not valid: it must be "
                                          "'relative'"):
      cfg_lib.validate(c)
  for good in ("relative", "off", "0.01", "0"):
    cfg_lib.validate(cfg_lib.load_config_file("cifar10_wrn", f"smoke,fixup_scalar_lr={good}"))


def test_run_directories_made_before_the_new_keys_resume_unchanged(tmp_path):
  """An existing run's config.json has train.fixup_scalar_lr_mult and none of issue 15's keys:
  its resume is not refused, and the defaults give it the rule it trained with."""
  import json
  from skipinit import rundir
  config = cfg_lib.load_config_file("cifar10_wrn", "smoke,normalizer=fixup")
  old = json.loads(cfg_lib.to_json(config))
  for section, key in (("train", "fixup_scalar_lr"), ("model", "residual_dtype"),
                       ("model", "conv_init"), ("model", "classifier_init")):
    del old[section][key]
  (tmp_path / "config.json").write_text(json.dumps(old))
  rundir.check_config(str(tmp_path), config)
  assert optim.fixup_scalar_lr_scale(config.train) == old["train"]["fixup_scalar_lr_mult"] == 0.1


def test_runs_made_before_residual_dtype_and_classifier_init_resume_as_they_trained(tmp_path):
  """Before issue 15 the stream computed in model.dtype: an old bfloat16 run directory (its
  config.json lacks model.residual_dtype) must not continue with the float32 default."""
  import json
  from skipinit import rundir

  def run_predating(key: str, name: str, arg: str):
    """A run directory whose config.json lacks model.<key>, and today's config of its command."""
    workdir = tmp_path / name
    workdir.mkdir()
    config = cfg_lib.load_config_file("cifar10_wrn", arg)
    old = json.loads(cfg_lib.to_json(config))
    del old["model"][key]
    (workdir / "config.json").write_text(json.dumps(old))
    return workdir, config

  for dtype in ("bfloat16", "float32"):
    workdir, config = run_predating("residual_dtype", dtype,
                                    f"smoke,normalizer=skipinit,dtype={dtype}")
    assert config.model.residual_dtype == "float32"
    rundir.keep_legacy_values(str(workdir), config)
    assert config.model.residual_dtype == dtype  # as it trained
    rundir.check_config(str(workdir), config)
    # Without the adoption the float32 default would differ from what the run did: refused.
    config.model.residual_dtype = "float32"
    if dtype == "bfloat16":
      with pytest.raises(ConfigError, match=r"model.residual_dtype: 'bfloat16' -> 'float32'"):
        rundir.check_config(str(workdir), config)
  # An NF run keeps the zero classifier it started with; other variants' inits did not change.
  for normalizer, init in (("nf", "zeros"), ("skipinit", ""), ("batchnorm", "")):
    workdir, config = run_predating("classifier_init", normalizer, f"smoke,normalizer={normalizer}")
    rundir.keep_legacy_values(str(workdir), config)
    assert config.model.classifier_init == init
    rundir.check_config(str(workdir), config)
  # A run made since records the key: nothing is adopted.
  config = cfg_lib.load_config_file("cifar10_wrn", "smoke,dtype=bfloat16")
  (tmp_path / "new").mkdir()
  (tmp_path / "new" / "config.json").write_text(cfg_lib.to_json(config))
  rundir.keep_legacy_values(str(tmp_path / "new"), config)
  assert config.model.residual_dtype == "float32"
