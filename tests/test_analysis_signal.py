"""Figure 4's variance probes (skipinit.analysis.signal) on the real CIFAR-10 sample, tests/data."""

import json
import math
import os

import numpy as np
import pytest

from skipinit.analysis import signal

SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "cifar10_sample")


@pytest.fixture(scope="module")
def images():
  return signal.cifar10_images(SAMPLE, 256)


def test_images_are_real_normalized_and_shuffled(images):
  assert images.shape == (256, 32, 32, 3) and images.dtype == np.float32
  assert abs(float(images.mean())) < 0.2 and 0.8 < float(images.std()) < 1.2
  # Not the first 256 of a class-sorted list: another seed draws another batch.
  assert not np.array_equal(images, signal.cifar10_images(SAMPLE, 256, seed=1))


def test_block_stats_puts_scanned_blocks_in_network_order():
  def sown(values):
    return {k: (np.asarray(values) + off,) for k, off in
            (("skip_var", 0.0), ("branch_var", 0.1), ("branch_raw_var", 0.2))}
  fake = {"stage1_blocks": sown([5.0, 6.0]), "stage0_block0": sown(1.0),
          "stage1_block0": sown(4.0), "stage0_blocks": sown([2.0, 3.0]),
          "stage2_block0": sown(7.0)}
  stats = signal.block_stats(fake, 3)
  np.testing.assert_array_equal(stats["skip_var"], [1, 2, 3, 4, 5, 6, 7])
  np.testing.assert_allclose(stats["branch_raw_var"], np.arange(1, 8) + 0.2)
  np.testing.assert_array_equal(stats["stage"], [0, 0, 0, 1, 1, 1, 2])
  # Stages of two blocks are not scanned: block0, then block1.
  fake = {"stage0_block1": sown(2.0), "stage0_block0": sown(1.0), "stage1_block0": sown(3.0),
          "stage1_block1": sown(4.0)}
  np.testing.assert_array_equal(signal.block_stats(fake, 2)["skip_var"], [1, 2, 3, 4])


def test_fit_growth_linear_with_a_restart_per_stage():
  stage = np.repeat([0, 1, 2], 10)
  var = 0.7 + 0.5 * np.tile(np.arange(10), 3)  # linear, back to 0.7 at each projection
  fit = signal.fit_growth(var, stage)
  assert fit["slope"] == pytest.approx(0.5)
  assert not fit["explodes"] and fit["first_nonfinite_block"] is None
  # Without the per-stage intercepts the restarts would hide the growth.
  assert signal.fit_growth(var)["slope"] < 0.2


def test_fit_growth_geometric_up_to_overflow():
  var = 1.5 * 2.0 ** np.arange(30)
  var[20], var[21:] = np.inf, np.nan  # float32 overflow, then NaN downstream
  fit = signal.fit_growth(var)
  assert fit["factor"] == pytest.approx(2.0)
  assert fit["explodes"] and fit["first_nonfinite_block"] == 20
  # A zero variance (alpha = 0 branch) is not an overflow.
  assert signal.fit_growth(np.zeros(5))["first_nonfinite_block"] is None


def test_fc_batchnorm_linear_skip_grows_by_one_per_block_branch_stays_one(images):
  s = signal.fc_block_variances(images, 150, width=128, normalizer="batchnorm")
  fit = signal.fit_growth(s["skip_var"], log_var=s["log_skip_var"])
  assert s["skip_var"][0] == pytest.approx(1.0, abs=1e-3)
  assert 0.85 < fit["slope"] < 1.15 and not fit["explodes"]
  assert 0.9 < s["branch_var"].mean() < 1.1
  assert s["branch_var"].max() < 1.5
  # Branch over skip is Figure 3's w_i = 1/(i+1).
  ratio = s["branch_var"] / s["skip_var"] * np.arange(1, 151)
  assert 0.85 < np.median(ratio) < 1.15


def test_fc_batchnorm_relu_grows_by_one_minus_one_over_pi(images):
  s = signal.fc_block_variances(images, 150, width=128, normalizer="batchnorm", activation="relu")
  fit = signal.fit_growth(s["skip_var"], log_var=s["log_skip_var"])
  assert abs(fit["slope"] - signal.RELU_BRANCH_VARIANCE) < 0.1
  assert abs(s["branch_var"].mean() - signal.RELU_BRANCH_VARIANCE) < 0.06


def test_fc_without_normalization_doubles_per_block_past_float32(images):
  s = signal.fc_block_variances(images, 150, width=128, normalizer="none")
  fit = signal.fit_growth(s["skip_var"], log_var=s["log_skip_var"])
  assert 1.85 < fit["factor"] < 2.15 and fit["explodes"]
  # 2^150 is beyond float32: the log-space rescaling measures it instead of overflowing.
  assert np.all(np.isfinite(s["log_skip_var"])) and s["skip_var"][-1] > 1e40


def test_fc_skipinit_alpha0_is_flat(images):
  s = signal.fc_block_variances(images, 150, width=128, normalizer="none", alpha=0.0)
  # Flat up to float32 rounding of the per-block rescaling (150 blocks x ~1e-7 each), where
  # alpha=1 would grow it 2x per block.
  np.testing.assert_allclose(s["skip_var"], s["skip_var"][0], rtol=1e-4)
  assert np.all(s["branch_var"] == 0) and s["branch_raw_var"].min() > 0.5


def test_wrn_skipinit_alpha0_keeps_skip_variance_flat(images):
  s = signal.resnet_block_variances(signal.wrn_config(22, 1, "skipinit", "0"), images[:64])
  np.testing.assert_array_equal(s["stage"], np.repeat([0, 1, 2], 3))
  assert np.all(s["branch_var"] == 0)  # alpha = 0: nothing is added ...
  assert np.all(s["branch_raw_var"] > 0.1)  # ... though the branch computes something
  for j in range(3):  # flat within a stage; only a projection shortcut changes the skip path
    np.testing.assert_allclose(s["skip_var"][s["stage"] == j], s["skip_var"][3 * j], rtol=1e-5)


def test_wrn_batchnorm_skip_grows_within_stages_branch_stays_put(images):
  # WRN-16: two blocks a stage, which the model does not scan (the other block layout).
  s = signal.resnet_block_variances(signal.wrn_config(16, 1, "batchnorm"), images[:64])
  np.testing.assert_array_equal(s["stage"], np.repeat([0, 1, 2], 2))
  assert np.all((s["branch_var"] > 0.4) & (s["branch_var"] < 1.1))
  for j in range(3):
    assert np.all(np.diff(s["skip_var"][s["stage"] == j]) > 0.3)
  assert 0.4 < signal.fit_growth(s["skip_var"], s["stage"])["slope"] < 1.0


def _fake_profiles(n, growth):
  var = np.exp(np.log(growth) * np.arange(n)) if growth > 1 else 1.0 + 0.7 * np.arange(n)
  return {"skip_var": var, "branch_var": np.full(n, 0.7), "branch_raw_var": np.full(n, 0.7)}


def test_figure4_draws_and_summarizes(tmp_path, monkeypatch):
  """The plumbing of figure4 (plots, JSON, printed lines), with the measurements faked."""
  def fake_resnet(model_config, images, seed=0):
    growth = 1.7 if model_config.normalizer == "none" or model_config.alpha_init == "1" else 1.0
    stats = _fake_profiles(9, growth)
    stats["stage"] = np.repeat([0, 1, 2], 3)
    if model_config.normalizer == "none":
      stats["skip_var"][7:] = [np.inf, np.nan]
    return stats

  def fake_fc(inputs, num_blocks, width, normalizer, activation, alpha, seed):
    stats = _fake_profiles(num_blocks, 2.0 if normalizer == "none" and alpha else 1.0)
    return {**stats, **{f"log_{k}": np.log(v) for k, v in stats.items()}}

  monkeypatch.setattr(signal, "resnet_block_variances", fake_resnet)
  monkeypatch.setattr(signal, "fc_block_variances", fake_fc)
  summary = signal.figure4(str(tmp_path), SAMPLE, num_images=16, depth=22, width=1,
                           fc_blocks=20, log=lambda m: None)
  for ext in ("png", "pdf", "json"):
    assert (tmp_path / f"fig4_variance_at_init.{ext}").stat().st_size > 0
  stored = json.loads((tmp_path / "fig4_variance_at_init.json").read_text())  # strict: no NaN
  assert set(stored["wrn"]["variants"]) == set(signal.WRN_VARIANTS)
  assert stored["wrn"]["variants"]["none"]["fit"]["first_nonfinite_block"] == 7
  assert stored["wrn"]["variants"]["none"]["skip_var"][8] is None
  text = signal.format_summary(summary)
  assert "none: skip x1.700 per block (geometric fit), overflows float32 from block 7" in text
  assert "batchnorm: skip +0.700 per block (linear fit)" in text
  assert "none, linear: skip x2.000 per block" in text
  assert math.isclose(summary["fc"]["variants"]["batchnorm, relu"]["mean_branch_var"], 0.7)
