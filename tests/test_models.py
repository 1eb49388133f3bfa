"""Model zoo (issue 2): parameter counts, the variants' properties at init, ghost BN, errors."""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from skipinit import ConfigError, config as cfg_lib, models
from skipinit.models.layers import GhostBatchNorm


def model_config(**overrides):
  width = overrides.pop("width", None)
  c = cfg_lib.base_config(**({} if width is None else {"width": width})).model
  c.update(overrides)
  return c


def count_params(cfg, size=32):
  m = models.build_model(cfg)
  shapes = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))


@pytest.mark.parametrize("depth,width,expected", [
    (16, 4, 2_748_890), (28, 10, 36_479_194), (100, 2, 6_123_226), (1000, 2, 64_318_426)])
def test_batchnorm_wrn_parameter_counts_match_paper(depth, width, expected):
  assert count_params(model_config(depth=depth, width=width)) == expected


def test_resnet50_v2_parameter_count():
  # timm's resnetv2_50 (the same pre-activation bottleneck net) lists 25.55 M parameters.
  cfg = model_config(name="resnet_v2", depth=50, width=1.0, num_classes=1000)
  assert abs(count_params(cfg, size=64) - 25.55e6) < 0.01e6


def init(cfg, x, seed=0):
  m = models.build_model(cfg)
  return jax.jit(lambda: m.init(jax.random.key(seed), x, train=False))()


def jit_apply(m, **kwargs):
  """m.apply under jit: eager flax applies dispatch op by op and are slow on CPU."""
  return jax.jit(lambda v, x: m.apply(v, x, **kwargs))


def images(n=8, seed=0):
  return jax.random.normal(jax.random.key(seed), (n, 32, 32, 3))


def test_skipinit_alpha0_ignores_residual_branch_weights():
  cfg = model_config(depth=22, width=1, normalizer="skipinit", alpha_init="0")
  m, x = models.build_model(cfg), images()
  variables = init(cfg, x)
  flat = flax.traverse_util.flatten_dict(variables["params"])
  keys = jax.random.split(jax.random.key(1), len(flat))
  # A random classifier, so the output is not trivially zero...
  base = {k: (jax.random.normal(r, v.shape) if "classifier" in k else v)
          for r, (k, v) in zip(keys, flat.items())}
  # ...and random weights in every residual-branch conv (not the stem or the projections).
  perturbed = {k: (jax.random.normal(r, v.shape) if k[-2].startswith("conv") else v)
               for r, (k, v) in zip(keys, base.items())}
  assert any(k[-2].startswith("conv") for k in flat)
  apply = jit_apply(m, train=True)
  out = lambda p: apply({"params": flax.traverse_util.unflatten_dict(p)}, x)
  a, b = out(base), out(perturbed)
  assert float(jnp.abs(a).max()) > 1e-3
  np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  # With alpha = 1 the same perturbation changes the function: the test can fail.
  base_alpha1 = {k: (jnp.ones_like(v) if k[-1] == "alpha" else v) for k, v in base.items()}
  pert_alpha1 = {k: (jnp.ones_like(v) if k[-1] == "alpha" else v) for k, v in perturbed.items()}
  assert not np.allclose(out(base_alpha1), out(pert_alpha1), atol=1e-3)


def branch_vars(cfg, x):
  m = models.build_model(cfg)
  variables = init(cfg, x)
  _, state = jit_apply(m, train=True, mutable=["batch_stats", "intermediates"])(variables, x)
  inter = state["intermediates"]
  return np.concatenate([np.ravel(v) for k, v in flax.traverse_util.flatten_dict(inter).items()
                         if k[-1] == "branch_var"])


@pytest.mark.parametrize("name,depth,post", [("wrn", 22, False), ("resnet_v2", 14, False),
                                             ("wrn", 22, True), ("resnet_v2", 14, True)])
def test_fixup_residual_branches_output_zero_at_init(name, depth, post):
  cfg = model_config(name=name, depth=depth, width=1 if name == "wrn" else 0.125, normalizer="fixup",
                     post_activation=post)
  v = branch_vars(cfg, images())
  assert v.size >= 3 and np.all(v == 0.0)
  # The unnormalized baseline's branches are not zero: the probe measures something.
  assert np.all(branch_vars(model_config(depth=16, width=1, normalizer="none"), images()) > 0)


def test_fixup_init_scales_branch_convs_by_depth():
  cfg = model_config(depth=22, width=1, normalizer="fixup")  # L = 9 basic blocks, m = 2
  params = init(cfg, images(2))["params"]
  # N(0, 2 / fan_out) * L^-1/2 as in Fixup's official code: in a stage's first block (16 -> 32
  # channels) fan-out and fan-in differ, so this also tells the two apart.
  for block in ("stage1_blocks", "stage1_block0"):
    conv0 = params[block]["conv0"]["kernel"]
    expected_std = np.sqrt(2.0 / (3 * 3 * conv0.shape[-1])) * 9 ** -0.5
    assert abs(float(jnp.std(conv0)) / expected_std - 1) < 0.1, block
  proj = params["stage1_block0"]["proj"]["kernel"]  # 1x1 shortcut: N(0, 2 / out channels)
  assert abs(float(jnp.std(proj)) / np.sqrt(2.0 / proj.shape[-1]) - 1) < 0.1
  assert float(jnp.abs(params["stage1_blocks"]["conv1"]["kernel"]).max()) == 0.0
  assert float(jnp.abs(params["classifier"]["kernel"]).max()) == 0.0


@pytest.mark.parametrize("half", ["zero_only", "rescale_only"])
def test_fixup_ablations_keep_one_half_of_its_init(half):
  """The SkipInit paper's Fixup ablations [2nd]: only the zero init, or only the rescale."""
  params = init(model_config(depth=22, width=1, normalizer="fixup", fixup_init=half),
                images(2))["params"]
  conv0, conv1 = (params["stage1_blocks"][c]["kernel"] for c in ("conv0", "conv1"))
  he_fan_out = np.sqrt(2.0 / (3 * 3 * conv0.shape[-1]))
  rescale = 9 ** -0.5 if half == "rescale_only" else 1.0  # L = 9 blocks, m = 2
  assert abs(float(jnp.std(conv0)) / (he_fan_out * rescale) - 1) < 0.1
  if half == "zero_only":
    assert float(jnp.abs(conv1).max()) == 0.0
  else:
    assert abs(float(jnp.std(conv1)) / (he_fan_out * rescale) - 1) < 0.1
  assert float(jnp.abs(params["classifier"]["kernel"]).max()) == 0.0


def test_post_activation_fixup_is_the_reference_network():
  """Fixup's reference block (official code, DeepMind's fixup_resnet.py), written out by hand and
  compared with the model on random weights, every scalar bias and multiplier included:
  o = x + b1a; skip = proj(o) or x; y = conv0(o); y = relu(y + b1b) + b2a; y = conv1(y);
  out = relu(skip + y * scale + b2b). Stem: relu(conv(x) + b); head: pool, + b, linear."""
  cfg = model_config(depth=10, width=1, normalizer="fixup", post_activation=True)  # 1 block/stage
  m, x = models.build_model(cfg), images()
  flat = flax.traverse_util.flatten_dict(init(cfg, x)["params"])
  keys = jax.random.split(jax.random.key(3), len(flat))
  p = flax.traverse_util.unflatten_dict(
      {k: 0.5 * jax.random.normal(r, v.shape) for r, (k, v) in zip(keys, flat.items())})
  conv = lambda h, k, s=1: jax.lax.conv_general_dilated(h, k, (s, s), "SAME",
                                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  h = jax.nn.relu(conv(x, p["stem"]["kernel"]) + p["stem_bias"])
  for stage, stride in ((0, 1), (1, 2), (2, 2)):
    b = p[f"stage{stage}_block0"]
    o = h + b["conv0_bias"]
    skip = conv(o, b["proj"]["kernel"], stride) if "proj" in b else h
    y = jax.nn.relu(conv(o, b["conv0"]["kernel"], stride) + b["norm1_bias"]) + b["conv1_bias"]
    y = conv(y, b["conv1"]["kernel"])
    h = jax.nn.relu(skip + y * b["scale"] + b["branch_bias"])
  expected = ((jnp.mean(h, axis=(1, 2)) + p["head_bias"]) @ p["classifier"]["kernel"]
              + p["classifier"]["bias"])
  got = jit_apply(m, train=True)({"params": p}, x)
  assert float(jnp.abs(expected).max()) > 1e-2
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
  # The pre-activation port has one scalar bias more per block (before its input activation),
  # one before the final activation, and none after the stem.
  pre = init(model_config(depth=10, width=1, normalizer="fixup"), x)["params"]
  n = lambda params: sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
  assert n(pre) - n(p) == models.num_residual_blocks(cfg)
  assert "stem_bias" not in pre and "final_norm_bias" in pre and "final_norm_bias" not in p


def test_post_activation_is_refused_where_it_is_not_implemented():
  with pytest.raises(ConfigError, match="post_activation=true is implemented for fixup only"):
    models.build_model(model_config(normalizer="batchnorm", post_activation=True))


@pytest.mark.parametrize("normalizer", ["skipinit", "batchnorm", "none"])
def test_conv_init_he_or_haikus_fan_in(normalizer):
  """model.conv_init: He (variance 2/fan_in, the default) or Haiku's default that DeepMind's
  SkipInit and BatchNorm ResNets keep: TruncatedNormal(stddev=1/sqrt(fan_in)) cut at +-2 and not
  rescaled, variance 0.774/fan_in. Every conv follows it: stem, branches, projections."""
  variances = {}
  for conv_init in ("he", "fan_in"):
    params = init(model_config(depth=22, width=2, normalizer=normalizer, conv_init=conv_init),
                  images(2))["params"]
    w = np.asarray(params["stage1_blocks"]["conv1"]["kernel"])  # (2, 3, 3, 64, 64): fan_in 576
    variances[conv_init] = float(np.var(w)) * 576
    if conv_init == "fan_in":
      assert float(np.max(np.abs(w))) <= 2 / np.sqrt(576) + 1e-7  # cut at 2 stddevs
      proj = np.asarray(params["stage2_block0"]["proj"]["kernel"])  # 1x1, fan_in 64
      assert np.var(proj) * 64 == pytest.approx(0.774, rel=0.05)
      stem = np.asarray(params["stem"]["kernel"])  # 3x3x3: fan_in 27, 32 outputs: few samples
      assert np.var(stem) * 27 == pytest.approx(0.774, rel=0.25)
  assert variances["he"] == pytest.approx(2.0, rel=0.03)
  assert variances["fan_in"] == pytest.approx(0.7737, rel=0.03)


def test_fixup_convs_keep_fixups_init_whatever_conv_init():
  he, fan_in = (init(model_config(depth=22, width=1, normalizer="fixup", conv_init=c),
                     images(2))["params"] for c in ("he", "fan_in"))
  np.testing.assert_array_equal(he["stage1_blocks"]["conv0"]["kernel"],
                                fan_in["stage1_blocks"]["conv0"]["kernel"])
  assert not np.allclose(he["stem"]["kernel"], fan_in["stem"]["kernel"])


@pytest.mark.parametrize("normalizer,expected_std", [
    ("batchnorm", np.sqrt(1 / 64)), ("skipinit", 0.0), ("fixup", 0.0), ("nf", 0.01),
    ("none", np.sqrt(1 / 64))])
def test_classifier_init_per_variant(normalizer, expected_std):
  """Zeros for SkipInit and Fixup, N(0, 0.01^2) for NF-ResNets (DeepMind's skipinit_resnet.py,
  fixup_resnet.py, nf_resnet.py); lecun_normal for BatchNorm (README "Numerics and defaults" says
  why) and the unnormalized ablations. model.classifier_init overrides it."""
  cfg = model_config(depth=10, width=1, normalizer=normalizer, num_classes=1000)
  kernel = np.asarray(init(cfg, images(2))["params"]["classifier"]["kernel"])  # (64, 1000)
  assert float(np.std(kernel)) == pytest.approx(expected_std, rel=0.05, abs=1e-12)
  cfg.update(classifier_init="zeros" if expected_std else "lecun_normal")
  kernel = np.asarray(init(cfg, images(2))["params"]["classifier"]["kernel"])
  assert float(np.std(kernel)) == pytest.approx(0.0 if expected_std else np.sqrt(1 / 64),
                                                rel=0.05, abs=1e-12)


def test_ghost_batchnorm_equals_batchnorm_of_each_chunk():
  x = jax.random.normal(jax.random.key(0), (12, 4, 4, 5)) * 3 + 1
  ghost = GhostBatchNorm(use_running_average=False, ghost_batch_size=4)
  variables = ghost.init(jax.random.key(1), x)
  y, _ = ghost.apply(variables, x, mutable=["batch_stats"])
  whole = GhostBatchNorm(use_running_average=False, ghost_batch_size=0)
  flax_bn = flax.linen.BatchNorm(use_running_average=False, epsilon=1e-5)
  for i in range(3):
    chunk = x[4 * i:4 * (i + 1)]
    ref, _ = whole.apply(variables, chunk, mutable=["batch_stats"])
    np.testing.assert_allclose(y[4 * i:4 * (i + 1)], ref, rtol=1e-5, atol=1e-5)
    ref_flax, _ = flax_bn.apply(flax_bn.init(jax.random.key(0), chunk), chunk, mutable=["batch_stats"])
    np.testing.assert_allclose(y[4 * i:4 * (i + 1)], ref_flax, rtol=1e-4, atol=1e-4)
  # Normalizing the whole batch at once is different: the ghost size matters.
  full, _ = whole.apply(variables, x, mutable=["batch_stats"])
  assert not np.allclose(full, y, atol=1e-3)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("ghost", [4, 0])
def test_ghost_batchnorm_hand_written_vjp_equals_autodiff(relu, ghost):
  x = jax.random.normal(jax.random.key(0), (12, 3, 3, 5)) * 2 + 0.5
  cotangent = jax.random.normal(jax.random.key(1), x.shape)
  outputs, grads, stats = {}, {}, {}
  for fused in (True, False):
    bn = GhostBatchNorm(use_running_average=False, ghost_batch_size=ghost, relu=relu, fused=fused)
    variables = bn.init(jax.random.key(2), x)
    params = {"scale": variables["params"]["scale"] * 1.5,
              "bias": variables["params"]["bias"] + jnp.arange(5.0) * 0.1 - 0.2}

    def loss(params, x, bn=bn, variables=variables):
      y, updated = bn.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                            mutable=["batch_stats"])
      return jnp.sum(y * cotangent), (y, updated["batch_stats"])

    (_, (outputs[fused], stats[fused])), grads[fused] = jax.value_and_grad(
        loss, argnums=(0, 1), has_aux=True)(params, x)
  np.testing.assert_allclose(outputs[True], outputs[False], rtol=1e-6, atol=1e-6)
  for g_fused, g_auto in zip(jax.tree.leaves(grads[True]), jax.tree.leaves(grads[False])):
    np.testing.assert_allclose(g_fused, g_auto, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(stats[True]), jax.tree.leaves(stats[False])):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  if relu:  # the mask is applied: a zeroed output passes no gradient
    assert float(jnp.mean(outputs[True] == 0)) > 0.2


def test_ghost_batchnorm_refuses_a_batch_its_ghost_size_does_not_divide():
  with pytest.raises(ValueError, match=r"ghost_batch_size=3 must be 0 or divide the batch \(8 "):
    GhostBatchNorm(use_running_average=False, ghost_batch_size=3).init(jax.random.key(0),
                                                                       jnp.zeros((8, 5)))


@pytest.mark.parametrize("normalizer", ["fixup", "groupnorm"])
def test_recipe_aliases_build_their_variant_as_the_config_defaults_do(normalizer):
  from skipinit.models import recipes
  cfg = model_config(depth=10, width=1, normalizer=normalizer)
  alias = {"fixup": recipes.Fixup, "groupnorm": recipes.GroupNorm}[normalizer]()
  stages, stem, _ = models.model_parts(cfg)
  m = models.ResNet(stages=stages, recipe=alias, num_classes=10, stem_features=stem)
  x = images(2)
  ours = jax.jit(lambda: m.init(jax.random.key(0), x, train=False))()
  jax.tree.map(np.testing.assert_array_equal, ours, init(cfg, x))


def test_validating_a_config_starts_no_jax_backend():
  """The sweep launcher validates configs: on a GPU host a started backend would take the GPU's
  memory in the launcher."""
  import subprocess
  import sys
  code = ("from skipinit import config; from jax._src import xla_bridge; "
          "config.validate(config.base_config()); assert not xla_bridge._backends, 'started'")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_relu_with_output_mask_has_jax_relu_gradient():
  from skipinit.models.layers import relu
  x = jnp.concatenate([jax.random.normal(jax.random.key(0), (50,)), jnp.zeros(3)])
  for dtype in (jnp.float32, jnp.bfloat16):
    g_ours = jax.grad(lambda x: jnp.sum(jnp.sin(relu(x))))(x.astype(dtype))
    g_jax = jax.grad(lambda x: jnp.sum(jnp.sin(jax.nn.relu(x))))(x.astype(dtype))
    np.testing.assert_array_equal(g_ours, g_jax)
    assert g_ours.dtype == dtype


def test_batchnorm_wrn_gradients_do_not_depend_on_the_bn_vjp():
  # depth 22: stages of 3 blocks, so two of each go through nn.scan (remat too).
  cfg = model_config(depth=22, width=1, normalizer="batchnorm", ghost_batch_size=4, scan_unroll=1,
                     remat=True)
  x, labels = images(8), jnp.arange(8) % 10
  variables = init(cfg, x)
  grads = {}
  for fused in (True, False):
    cfg.fused_bn = fused
    m = models.build_model(cfg)

    def loss(params, m=m):
      logits, _ = m.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
      return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(8), labels])

    grads[fused] = jax.jit(jax.grad(loss))(variables["params"])
  flat = flax.traverse_util.flatten_dict(grads[True])
  for k, g_auto in flax.traverse_util.flatten_dict(grads[False]).items():
    scale = float(jnp.max(jnp.abs(g_auto))) + 1e-12
    np.testing.assert_allclose(flat[k] / scale, g_auto / scale, atol=1e-4, err_msg=str(k))


@pytest.mark.parametrize("normalizer,dtype", [(n, "float32") for n in sorted(models.RECIPES)] +
                         [("batchnorm", "bfloat16"), ("skipinit", "bfloat16")])
def test_every_normalizer_gives_finite_logits(normalizer, dtype):
  cfg = model_config(depth=16, width=1, normalizer=normalizer, dtype=dtype, ghost_batch_size=4,
                     dropout_rate=0.1)
  m, x = models.build_model(cfg), images()
  variables = init(cfg, x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  logits, _ = jit_apply(m, train=True, mutable=["batch_stats"],
                        rngs={"dropout": jax.random.key(2)})(variables, x)
  assert logits.shape == (8, 10) and logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  assert bool(jnp.all(jnp.isfinite(jit_apply(m, train=False)(variables, x))))


def test_alpha_init_values():
  for alpha, expected in (("0", 0.0), ("1", 1.0), ("inv_sqrt_d", 1 / np.sqrt(498)), ("0.25", 0.25)):
    assert models.parse_alpha_init(alpha, 498) == pytest.approx(expected)
  cfg = model_config(depth=22, width=1, normalizer="skipinit", alpha_init="inv_sqrt_d")  # d = 9
  params = init(cfg, images(2))["params"]
  alphas = np.concatenate([np.ravel(v) for k, v in flax.traverse_util.flatten_dict(params).items()
                           if k[-1] == "alpha"])
  assert alphas.size == 9 and np.allclose(alphas, 1 / 3)


def test_ghost_bn_train_output_does_not_depend_on_device_count():
  from jax.sharding import NamedSharding, PartitionSpec as P
  assert len(jax.devices()) == 8, "conftest.py sets 8 fake CPU devices"
  cfg = model_config(depth=16, width=1, normalizer="batchnorm", ghost_batch_size=4)
  m, x = models.build_model(cfg), images(32)
  variables = init(cfg, x)
  outs = []
  for n in (1, 8):
    mesh = jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=jax.devices()[:n])
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    vs = jax.device_put(variables, NamedSharding(mesh, P()))
    f = jax.jit(lambda v, x: m.apply(v, x, train=True, mutable=["batch_stats"]))
    logits, new_stats = f(vs, xs)
    assert len(logits.sharding.device_set) == n
    outs.append((np.asarray(logits), jax.tree.map(np.asarray, new_stats)))
  for logits, stats in outs[1:]:
    np.testing.assert_allclose(logits, outs[0][0], rtol=1e-5, atol=1e-5)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6), stats, outs[0][1])


@pytest.mark.parametrize("overrides,message", [
    (dict(depth=17), "6N+4"),
    (dict(normalizer="layernorm"), "batchnorm, fixup, nf, none, skipinit, sqrt2_merge"),
    (dict(normalizer="skipinit", alpha_init="half"), "inv_sqrt_d"),
    (dict(name="vgg"), "wrn, resnet_v2"),
    (dict(name="resnet_v2", depth=34), "50, 101"),
    (dict(dtype="float16"), "float32, bfloat16"),
    (dict(normalizer="fixup", fixup_init="zero"), "full, zero_only, rescale_only"),
    (dict(normalizer="skipinit", fixup_init="zero_only"),
     "fixup_init='zero_only' is implemented for fixup only, not for model.normalizer='skipinit'"),
    (dict(conv_init="glorot"), "he, fan_in"),
    (dict(classifier_init="ones"), "zeros, lecun_normal, normal_0.01"),
    (dict(residual_dtype="float64"), "residual_dtype='float64' is unknown"),
])
def test_bad_model_configs_raise_clear_errors(overrides, message):
  with pytest.raises(ConfigError, match=message.replace("+", r"\+")):
    models.build_model(model_config(**overrides))


def test_ghost_batch_must_divide_per_device_batch():
  with pytest.raises(ConfigError, match="does not divide the per-device batch of 8"):
    models.check_ghost_batch(model_config(ghost_batch_size=64), 8)
  models.check_ghost_batch(model_config(ghost_batch_size=4), 8)


def test_deep_wrn_stacks_blocks_with_scan():
  """WRN-1000-2's parameters come as three stacked arrays per stage, not 498 modules."""
  cfg = model_config(depth=1000, width=2)
  m = models.build_model(cfg)
  shapes = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  assert sorted(shapes["params"]) == sorted(
      ["stem", "stage0_block0", "stage0_blocks", "stage1_block0", "stage1_blocks", "stage2_block0",
       "stage2_blocks", "final_norm", "classifier"])
  assert shapes["params"]["stage2_blocks"]["conv0"]["kernel"].shape == (165, 3, 3, 128, 128)
