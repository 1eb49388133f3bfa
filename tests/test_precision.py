"""Issue 15: a bfloat16 net keeps SkipInit's small branches when its residual stream is float32."""

import jax
import jax.numpy as jnp
import pytest

from skipinit import ConfigError, config as cfg_lib, models
from skipinit.analysis import precision


@pytest.fixture(scope="module")
def wrn16_1():
  """WRN-16-1, alpha = 1e-3, random classifier (the issue's measurement): ~20 s on 2 CPU cores,
  three builds compiled once each; every test below reads it."""
  images = jax.random.normal(jax.random.PRNGKey(0), (8, 32, 32, 3))
  return precision.compare(16, 1, 1e-3, images)


def test_float32_stream_keeps_small_branches_to_bfloat16_precision(wrn16_1):
  s = wrn16_1["settings"]["float32 stream"]
  assert wrn16_1["num_blocks"] == 6
  # Every block adds something (nothing rounded away) and agrees with the float32 net to the
  # precision of a bfloat16 branch (8-bit mantissa: ~0.4% per rounding, a few roundings deep).
  assert max(s["block_zero_fraction"]) < 0.01
  assert max(s["block_rel_error"]) < 0.05
  assert s["logit_response_rel_error"] < 0.05
  assert min(wrn16_1["reference_contribution_rms"]) > 0


def test_bfloat16_stream_rounds_them_away(wrn16_1):
  """The same check on the old layout fails: it shows the test above can fail."""
  s = wrn16_1["settings"]["bfloat16 stream"]
  assert s["mean_block_zero_fraction"] > 0.3
  assert s["median_block_rel_error"] > 0.3
  assert s["logit_response_rel_error"] > 0.3


def _op_dtypes(fn, *args, primitive):
  """dtypes of the first operand of every `primitive` equation in fn's jaxpr (nested ones too)."""
  found = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == primitive:
        found.append(str(eqn.invars[0].aval.dtype))
      for p in eqn.params.values():
        for sub in (p if isinstance(p, (tuple, list)) else [p]):
          if hasattr(sub, "jaxpr"):  # ClosedJaxpr
            walk(sub.jaxpr)
          elif hasattr(sub, "eqns"):
            walk(sub)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return found


def test_branches_compute_in_bfloat16_and_the_stream_in_float32():
  cfg = precision.skipinit_config(10, 1, 1e-3, "bfloat16", "float32")  # one block per stage
  m = models.build_model(cfg)
  x = jnp.zeros((2, 32, 32, 3))
  variables = jax.jit(lambda: m.init(jax.random.PRNGKey(0), x, train=False))()
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  convs = _op_dtypes(lambda v: m.apply(v, x, train=False), variables,
                     primitive="conv_general_dilated")
  # The stem and the six branch convs in bfloat16; the two projection shortcuts in float32.
  assert sorted(convs) == ["bfloat16"] * 7 + ["float32"] * 2
  assert _op_dtypes(lambda v: m.apply(v, x, train=False), variables,
                    primitive="dot_general") == ["float32"]  # the classifier
  block = models.PreActBlock(convs=((16, 3, 1), (16, 3, 1)), recipe=m.recipe, num_blocks=3,
                             train=False, dtype=jnp.bfloat16, residual_dtype=jnp.float32)
  h = jnp.ones((2, 8, 8, 16), jnp.float32)
  bv = block.init(jax.random.PRNGKey(0), h, jnp.float32(1.0))
  assert block.apply(bv, h, jnp.float32(1.0))[0].dtype == jnp.float32  # the scan carry
  # model.residual_dtype=bfloat16 is the old layout: every conv and the classifier in bfloat16.
  cfg.update(residual_dtype="bfloat16")
  old = models.build_model(cfg)
  assert set(_op_dtypes(lambda v: old.apply(v, x, train=False), variables,
                        primitive="conv_general_dilated")) == {"bfloat16"}


def test_old_layout_is_still_selectable_and_bad_values_are_refused():
  cfg = precision.skipinit_config(10, 1, 0.0, "bfloat16", "bfloat16")
  models.model_parts(cfg)
  cfg.update(residual_dtype="float16")
  with pytest.raises(ConfigError, match="residual_dtype='float16' is unknown"):
    models.model_parts(cfg)
  cfg.update(dtype="float32", residual_dtype="bfloat16")
  with pytest.raises(ConfigError, match="narrower than model.dtype=float32"):
    models.model_parts(cfg)
  assert cfg_lib.base_config().model.residual_dtype == "float32"


def test_make_figures_bf16_residual(tmp_path):
  """The script behind results/bf16_residual/, at toy size (WRN-10-1, 2 images of the sample)."""
  import json
  import os
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  script = os.path.join(repo, "scripts", "make_figures.py")
  sample = os.path.join(repo, "tests", "data", "cifar10_sample")
  out = subprocess.run([sys.executable, script, "bf16_residual", "--depth=10", "--width=1",
                        "--residual_images=2", f"--data_path={sample}", f"--out_dir={tmp_path}"],
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  for ext in ("png", "pdf", "json", "txt"):
    assert (tmp_path / f"bf16_residual.{ext}").stat().st_size > 0
  summary = json.loads((tmp_path / "bf16_residual.json").read_text())
  assert summary["num_blocks"] == 3 and summary["depth"] == 10
  assert summary["settings"]["float32 stream"]["logit_response_rel_error"] < 0.05
  assert "float32 stream" in out.stdout
  bad = subprocess.run([sys.executable, script, "bf16_residual", "--depth=11",
                        f"--out_dir={tmp_path / 'bad'}"], capture_output=True, text=True,
                       timeout=120)
  assert bad.returncode == 2 and bad.stderr.startswith("error: model.depth=11")
  assert not (tmp_path / "bad" / "bf16_residual.json").exists()
