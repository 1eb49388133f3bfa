"""Figure 3's path shares (skipinit.analysis.paths) and the make_figures.py entry point."""

import itertools
import json
import math
import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from skipinit.analysis import paths

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def brute_force_shares(weights):
  """Enumerates the 2^d paths: a path through the branch set S carries prod_S w_i / prod (1+w_i)."""
  d = len(weights)
  total = np.prod([1.0 + w for w in weights])
  shares = np.zeros(d + 1)
  for through in itertools.product((0, 1), repeat=d):
    shares[sum(through)] += np.prod([w if t else 1.0 for w, t in zip(weights, through)]) / total
  return shares


@pytest.mark.parametrize("variant", paths.VARIANTS)
@pytest.mark.parametrize("d", [0, 1, 7, 1000])
def test_shares_sum_to_one(variant, d):
  shares = paths.path_shares(d, variant)
  assert shares.shape == (d + 1,)
  assert np.all(shares >= 0)
  assert shares.sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("variant", paths.VARIANTS)
def test_matches_brute_force_enumeration(variant):
  d = 11
  np.testing.assert_allclose(
      paths.path_shares(d, variant, convention="unit_input"),
      brute_force_shares(paths.branch_weights(d, variant, convention="unit_input")),
      rtol=1e-12, atol=1e-300)
  # The paper's convention: the skip path entering block 1 carries nothing (w_1 = inf), so every
  # path goes through branch 1, and the rest is the enumeration over blocks 2..d.
  w = paths.branch_weights(d, variant)
  if variant == "normalized":
    assert np.isinf(w[0]) and np.all(np.isfinite(w[1:]))
    expected = np.concatenate([[0.0], brute_force_shares(w[1:])])
  else:  # the convention is the normalized variant's only
    expected = brute_force_shares(w)
  np.testing.assert_allclose(paths.path_shares(d, variant), expected, rtol=1e-12, atol=1e-300)


def test_matches_brute_force_for_arbitrary_weights():
  w = np.random.default_rng(0).uniform(0.0, 3.0, size=10)
  np.testing.assert_allclose(paths.poisson_binomial_log_pmf(w / (1 + w)),
                             np.log(brute_force_shares(w)), rtol=1e-12)


def _stirling_first_kind(n_max):
  """Unsigned c(n, k) for n = n_max: c(n+1, k) = n c(n, k) + c(n, k-1)."""
  stirling = [1]  # n = 0
  for n in range(n_max):
    stirling = [n * (stirling[k] if k < len(stirling) else 0) + (stirling[k - 1] if k else 0)
                for k in range(n + 2)]
  return stirling


def test_normalized_shares_are_stirling_numbers():
  """p_i = 1/(i+1), i = 1..d (unit_input) telescopes: share(k) = c(d+1, k+1) / (d+1)!, exactly."""
  d = 60
  stirling = _stirling_first_kind(d + 1)
  exact = [Fraction(stirling[k + 1], math.factorial(d + 1)) for k in range(d + 1)]
  got = paths.path_shares(d, "normalized", convention="unit_input")
  for k in range(d + 1):
    if exact[k] > 1e-250:
      assert got[k] == pytest.approx(float(exact[k]), rel=1e-11), k


def test_papers_convention_gives_the_cycle_counts_of_a_random_permutation():
  """p_i = 1/i, i = 1..d (the default): share(k) = c(d, k) / d!, exactly."""
  d = 60
  stirling = _stirling_first_kind(d)
  got = paths.path_shares(d, "normalized")
  assert got[0] == 0.0  # branch 1 is on every path
  for k in range(1, d + 1):
    exact = Fraction(stirling[k], math.factorial(d))
    if exact > 1e-250:
      assert got[k] == pytest.approx(float(exact), rel=1e-11), k


def test_papers_97_percent_within_15_at_ten_thousand_blocks():
  """The paper's sentence, exactly: 97% of the variance from paths through at most 15 branches."""
  s = paths.summarize(paths.path_log_shares(10_000, "normalized"), (14, 15))
  assert round(100 * s["fraction_within_15"]) == 97 and s["length_covering_97pct"] == 15
  assert s["fraction_within_14"] < 0.95
  harmonic = sum(1.0 / n for n in range(1, 10_001))  # mean sum_{i<=d} 1/i = H_d
  assert s["mean_path_length"] == pytest.approx(harmonic, rel=1e-9)
  with pytest.raises(ValueError, match="paper, unit_input"):
    paths.branch_weights(3, convention="1/(i+2)")


def test_unnormalized_is_binomial_without_underflow_at_10000_blocks():
  d = 10_000
  log_shares = paths.path_log_shares(d, "unnormalized")
  assert np.all(np.isfinite(log_shares))  # 2^-10000 = 10^-3010 is far below float64, not here
  k = np.arange(d + 1)
  lgamma = np.vectorize(math.lgamma)
  expected = lgamma(d + 1.0) - lgamma(k + 1.0) - lgamma(d - k + 1.0) - d * math.log(2)
  np.testing.assert_allclose(log_shares, expected, rtol=1e-9, atol=1e-7)


def test_ten_thousand_blocks_give_about_97_percent_within_14_to_15():
  d = 10_000
  log_shares = paths.path_log_shares(d, "normalized", convention="unit_input")
  assert np.all(np.isfinite(log_shares))
  s = paths.summarize(log_shares, (14, 15))
  assert 0.96 < s["fraction_within_14"] < 0.975
  assert 0.98 < s["fraction_within_15"] < 0.99
  assert s["length_covering_97pct"] in (14, 15)
  # The mean path length is sum 1/(i+2) = H_{d+1} - 1 ~ ln d: shallow paths, however deep the net.
  harmonic = sum(1.0 / n for n in range(1, d + 2))
  assert s["mean_path_length"] == pytest.approx(harmonic - 1.0, rel=1e-9)
  unnorm = paths.summarize(paths.path_log_shares(d, "unnormalized"), (15,))
  assert unnorm["log10_fraction_within_15"] < -2900
  assert unnorm["mean_path_length"] == pytest.approx(d / 2, rel=1e-9)


def test_skipinit_alpha_sets_the_branch_weight():
  np.testing.assert_allclose(paths.branch_weights(4, "skipinit", alpha=0.5), 0.25)
  np.testing.assert_allclose(paths.branch_weights(100, "skipinit"), 0.01)
  assert paths.path_shares(5, "skipinit", alpha=0.0)[0] == 1.0  # alpha = 0: the identity only


def test_rejects_bad_input():
  with pytest.raises(ValueError):
    paths.poisson_binomial_log_pmf([0.5, 1.5])
  with pytest.raises(ValueError):
    paths.branch_weights(3, "batchnorm-ish")


def test_make_figures_fig3_writes_figure_and_numbers(tmp_path):
  out = subprocess.run(
      [sys.executable, os.path.join(REPO, "scripts", "make_figures.py"), "fig3",
       "--num_blocks=300", f"--out_dir={tmp_path}"], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert "d = 300 residual blocks" in out.stdout
  for ext in ("png", "pdf", "json", "txt"):
    assert (tmp_path / f"fig3_path_contributions.{ext}").stat().st_size > 0
  summary = json.loads((tmp_path / "fig3_path_contributions.json").read_text())
  assert summary["num_blocks"] == 300
  expected = paths.summarize(paths.path_log_shares(300), (15,))["fraction_within_15"]
  assert summary["variants"]["normalized"]["fraction_within_15"] == pytest.approx(expected)
  assert (tmp_path / "fig3_path_contributions.txt").read_text().startswith(
      "$ python scripts/make_figures.py fig3")


def test_make_figures_rejects_unknown_figure(tmp_path):
  out = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "make_figures.py"), "fig9",
                        f"--out_dir={tmp_path}"], capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert "fig3|fig4" in out.stdout + out.stderr


def test_make_figures_writes_outside_version_control_by_default(tmp_path):
  """The committed figures in results/ change only with --out_dir=results (issue 19 item 4)."""
  out = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "make_figures.py"), "fig3",
                        "--num_blocks=20", "--convention=unit_input"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  written = tmp_path / "runs" / "figures"
  assert (written / "fig3_path_contributions.json").exists()
  assert not (tmp_path / "results").exists()
  summary = json.loads((written / "fig3_path_contributions.json").read_text())
  assert summary["convention"] == "unit_input" and "p_i = 1/(i+1)" in out.stdout
  # /runs/ is in .gitignore, so the default lands outside version control from the repo root too.
  with open(os.path.join(REPO, ".gitignore")) as f:
    assert "/runs/" in f.read().split()
  help_text = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "make_figures.py"),
                              "--helpfull"], capture_output=True, text=True, timeout=120).stdout
  assert "default: 'runs/figures'" in help_text and "--out_dir=results" in help_text
