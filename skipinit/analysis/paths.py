r"""Figure 3 (PAPER.md section 5): the share of a ResNet's output variance carried per path length.

Unrolling x_{i+1} = x_i + f_i(x_i) over d residual blocks writes the output as a sum over the 2^d
paths that go through some subset of the branches. At initialization, if branch i has variance
w_i relative to the skip path it joins and the two are uncorrelated, block i passes a fraction
1/(1+w_i) of its output variance on through the skip and p_i = w_i/(1+w_i) through the branch,
independently of the other blocks. The share of the output variance carried by the paths through
exactly k branches is then the law of a sum of independent Bernoulli(p_i): a Poisson-binomial
distribution, computed here by the O(d^2) recursion over blocks in log space (no 2^d enumeration,
no overflow, and the tails, which go down to 1e-3000 for d = 10,000, stay accurate).

Branch weights (blocks indexed from 1 to d):
  normalized     BatchNorm: the normalized branch adds ~1 to the skip path's variance per block.
                 Two conventions for the skip path entering block 1:
                 "paper" (the default): it carries no variance, so the skip path entering block i
                   has variance i-1, w_i = 1/(i-1) (w_1 = inf) and p_i = 1/i: the first block's
                   branch is on every path. The shares are c(d, k)/d! (unsigned Stirling numbers
                   of the first kind, the cycle counts of a random permutation), mean length H_d.
                   The paper's "97% of the variance from paths through at most 15 branches" at
                   d = 10,000 comes out with this one.
                 "unit_input": it carries variance 1 (the stem's output), w_i = 1/i, p_i = 1/(i+1):
                   shares c(d+1, k+1)/(d+1)!, mean H_{d+1} - 1, i.e. one branch fewer per path
                   (97.0% within <= 14 at d = 10,000).
  unnormalized   He init, no normalization: the branch preserves the variance of its input, w_i = 1,
                 p_i = 1/2: Binomial(d, 1/2), concentrated on paths through ~d/2 branches.
  skipinit       a branch scaled by alpha: w_i = alpha^2; alpha = 1/sqrt(d): ~1 branch per path.
The convention changes only the normalized variant.
"""

import json
import math
import os

import numpy as np

VARIANTS = ("normalized", "unnormalized", "skipinit")
CONVENTIONS = ("paper", "unit_input")  # see the module doc; "paper" is the default
LABELS = {
    "normalized": "normalized (BatchNorm): $p_i = 1/i$",
    "unnormalized": "unnormalized (He init): $w_i = 1$",
    "skipinit": r"SkipInit $\alpha = 1/\sqrt{d}$: $w_i = 1/d$",
}
NORMALIZED_P = {"paper": "1/i", "unit_input": "1/(i+1)"}
SHORT_LABELS = {"normalized": "normalized (BatchNorm)", "unnormalized": "unnormalized",
                "skipinit": "SkipInit alpha=1/sqrt(d)"}


def branch_weights(num_blocks: int, variant: str = "normalized", alpha: float | None = None,
                   convention: str = "paper"):
  """w_i, the variance of branch i relative to its skip path at init (PAPER.md section 5, Figure 3).

  `alpha` is SkipInit's branch multiplier (variant "skipinit"; default 1/sqrt(num_blocks)).
  `convention` (normalized only, module doc): "paper" gives w_1 = inf (p_1 = 1).
  """
  if num_blocks < 0:
    raise ValueError(f"num_blocks={num_blocks} must be >= 0")
  if convention not in CONVENTIONS:
    raise ValueError(f"unknown convention {convention!r}: use one of {', '.join(CONVENTIONS)}")
  i = np.arange(num_blocks, dtype=np.float64)  # 0-based here: block i + 1 of the module doc
  if variant == "normalized":
    if convention == "paper":
      with np.errstate(divide="ignore"):
        return 1.0 / i  # w = inf for the first block
    return 1.0 / (i + 1.0)
  if variant == "unnormalized":
    return np.ones_like(i)
  if variant == "skipinit":
    a = 1.0 / math.sqrt(max(num_blocks, 1)) if alpha is None else float(alpha)
    return np.full_like(i, a * a)
  raise ValueError(f"unknown variant {variant!r}: use one of {', '.join(VARIANTS)}")


def poisson_binomial_log_pmf(p) -> np.ndarray:
  """log P(K = k), k = 0..d, for K a sum of independent Bernoulli(p_i) (Figure 3's path shares).

  The recursion adds one block at a time: P_i(k) = (1-p_i) P_{i-1}(k) + p_i P_{i-1}(k-1). In
  log space it is a `logaddexp` of two terms, so nothing under- or overflows however small the
  shares get; the error grows like d * machine epsilon.
  """
  p = np.asarray(p, np.float64)
  if p.ndim != 1 or np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
    raise ValueError("p must be a 1-D array of probabilities in [0, 1]")
  d = p.size
  with np.errstate(divide="ignore"):  # p = 0 or 1: log 0 = -inf is exactly what the recursion needs
    log_p, log_q = np.log(p), np.log1p(-p)
  out = np.full(d + 1, -np.inf)
  out[0] = 0.0
  for i in range(d):
    # After i blocks only k <= i can be reached, so each step touches i+2 entries (d^2/2 in all).
    through_skip = out[: i + 2] + log_q[i]
    through_branch = np.concatenate(([-np.inf], out[: i + 1])) + log_p[i]
    out[: i + 2] = np.logaddexp(through_skip, through_branch)
  return out


def branch_probabilities(w) -> np.ndarray:
  """p_i = w_i / (1 + w_i), with p = 1 for w = inf (a skip path that carries nothing)."""
  w = np.asarray(w, np.float64)
  return np.where(np.isinf(w), 1.0, w / (1.0 + np.where(np.isinf(w), 0.0, w)))


def path_log_shares(num_blocks: int, variant: str = "normalized", alpha: float | None = None,
                    convention: str = "paper"):
  """log of the share of the output variance carried by paths through exactly k = 0..d branches."""
  return poisson_binomial_log_pmf(
      branch_probabilities(branch_weights(num_blocks, variant, alpha, convention)))


def path_shares(num_blocks: int, variant: str = "normalized", alpha: float | None = None,
                convention: str = "paper"):
  """Share of the output variance carried by paths through exactly k = 0..d branches (sums to 1)."""
  return np.exp(path_log_shares(num_blocks, variant, alpha, convention))


def log_fraction_within(log_shares, max_length: int) -> float:
  """log of the fraction of the variance carried by paths through <= max_length branches."""
  return float(np.logaddexp.reduce(np.asarray(log_shares)[: max_length + 1]))


def length_covering(log_shares, fraction: float) -> int:
  """The smallest k such that paths through <= k branches carry `fraction` of the variance."""
  cdf = np.exp(np.logaddexp.accumulate(np.asarray(log_shares)))
  return int(np.searchsorted(cdf, fraction - 1e-12))


def summarize(log_shares, max_lengths=(14, 15)) -> dict:
  """The numbers Figure 3 is read for: mean and typical path length, mass of the short paths."""
  log_shares = np.asarray(log_shares)
  shares = np.exp(log_shares)
  k = np.arange(shares.size)
  out = {
      "num_blocks": int(shares.size - 1),
      "mean_path_length": float(np.sum(k * shares)),
      "mode_path_length": int(np.argmax(log_shares)),
      "length_covering_97pct": length_covering(log_shares, 0.97),
      "length_covering_99pct": length_covering(log_shares, 0.99),
  }
  for m in max_lengths:
    lf = log_fraction_within(log_shares, m)
    # Both: the fraction itself (0.0 when it underflows) and its exact order of magnitude.
    out[f"fraction_within_{m}"] = math.exp(lf)
    out[f"log10_fraction_within_{m}"] = lf / math.log(10)
  return out


def figure3(out_dir: str, num_blocks: int = 10_000, max_length: int = 15,
            other_depths=(100, 1000), command: str = "", convention: str = "paper") -> dict:
  """Draws Figure 3 into out_dir (fig3_path_contributions.{png,pdf,json}); returns its numbers.

  For a network of `num_blocks` residual blocks: (a) the share of the output variance carried by
  paths through k branches, for the short paths; (b) the same around k = d/2, where the
  unnormalized network's variance is; (c) the cumulative share of the paths through <= k
  branches. `other_depths` are summarized in the JSON (and drawn dotted in (c)) to show that the
  typical path length of a normalized network grows only like ln d. `convention`: the normalized
  variant's p_i (module doc), recorded in the JSON and the printed lines.
  """
  import matplotlib
  matplotlib.use("Agg")  # files only; no display needed
  import matplotlib.pyplot as plt

  os.makedirs(out_dir, exist_ok=True)
  log_shares = {v: path_log_shares(num_blocks, v, convention=convention) for v in VARIANTS}
  summary = {"command": command, "num_blocks": num_blocks, "max_length": max_length,
             "convention": convention, "normalized_p": NORMALIZED_P[convention],
             "variants": {v: summarize(ls, (max_length - 1, max_length))
                          for v, ls in log_shares.items()},
             "normalized_by_depth": {
                 str(d): summarize(log_shares["normalized"] if d == num_blocks else
                                   path_log_shares(d, convention=convention), (max_length,))
                 for d in sorted(set(other_depths) | {num_blocks})}}

  _draw(plt, log_shares, summary, other_depths, out_dir)
  with open(os.path.join(out_dir, "fig3_path_contributions.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def _draw(plt, log_shares, summary, other_depths, out_dir):
  d, m = summary["num_blocks"], summary["max_length"]
  colors = {"normalized": "C0", "unnormalized": "C3", "skipinit": "C2"}
  fig, (ax_short, ax_long, ax_cdf) = plt.subplots(
      1, 3, figsize=(17, 4.8), gridspec_kw={"width_ratios": [1.1, 0.8, 1.2]})
  k = np.arange(d + 1)
  # Path lengths are integers: markers on the two linear panels, lines only to guide the eye.
  short = k <= min(d, 40)
  labels = {**LABELS, "normalized": f"normalized (BatchNorm): $p_i = {summary['normalized_p']}$"}
  for v in ("normalized", "skipinit"):
    ax_short.plot(k[short], np.exp(log_shares[v][short]), "o-", ms=3, lw=1, color=colors[v],
                  label=labels[v])
  if m <= 40:
    frac = summary["variants"]["normalized"][f"fraction_within_{m}"]
    ax_short.axvline(m + 0.5, color="gray", lw=0.8, ls="--")
    ax_short.text(m + 1, 0.5 * ax_short.get_ylim()[1], f"normalized:\n{100 * frac:.1f}% of the "
                  f"variance\nat k $\\leq$ {m}", fontsize=8, color="C0")
  ax_short.set_xlabel("path length k (residual branches on the path)")
  ax_short.set_ylabel("share of output variance")
  ax_short.set_title(f"(a) short paths, d = {d:,} residual blocks", fontsize=10)
  top = np.max(log_shares["unnormalized"][short]) / math.log(10)
  ax_short.legend(fontsize=8, title=f"unnormalized: $\\leq 10^{{{top:.0f}}}$ here, see (b)",
                  title_fontsize=8)

  unnorm = np.exp(log_shares["unnormalized"])
  mean, sd = d / 2, math.sqrt(d) / 2
  around = (k >= mean - 5 * sd) & (k <= mean + 5 * sd)
  ax_long.plot(k[around], unnorm[around], ".-", ms=2, lw=0.8, color=colors["unnormalized"],
               label=LABELS["unnormalized"])
  ax_long.set_xlabel("path length k")
  ax_long.set_title("(b) unnormalized: paths through ~d/2 branches", fontsize=10)
  top = max(np.max(log_shares[v][around]) for v in ("normalized", "skipinit")) / math.log(10)
  ax_long.legend(fontsize=8, loc="upper left",
                 title=f"normalized, SkipInit: $\\leq 10^{{{top:.0f}}}$ here",
                 title_fontsize=8)

  for v in VARIANTS:
    ax_cdf.plot(k, np.exp(np.logaddexp.accumulate(log_shares[v])), color=colors[v],
                label=labels[v], lw=1.8)
  for depth in other_depths:
    if depth != d:
      shares = path_log_shares(depth, convention=summary["convention"])
      ax_cdf.plot(np.arange(depth + 1), np.exp(np.logaddexp.accumulate(shares)),
                  color="C0", lw=0.8, ls=":", label=f"normalized, d = {depth:,}")
  frac = summary["variants"]["normalized"][f"fraction_within_{m}"]
  ax_cdf.axvline(m, color="gray", lw=0.8, ls="--")
  ax_cdf.axhline(frac, color="gray", lw=0.8, ls="--")
  ax_cdf.annotate(f"{100 * frac:.1f}% within k $\\leq$ {m}", (m, frac), xytext=(30, -45),
                  textcoords="offset points", fontsize=9,
                  arrowprops=dict(arrowstyle="->", color="gray"))
  # symlog: k = 0 (the pure skip path) stays on the axis, the rest is logarithmic up to d.
  ax_cdf.set_xscale("symlog", linthresh=1.0)
  ax_cdf.set_xlim(0, d)
  ax_cdf.set_ylim(0, 1.02)
  ax_cdf.set_xlabel("path length k")
  ax_cdf.set_ylabel("share from paths of length $\\leq$ k")
  ax_cdf.set_title("(c) cumulative share", fontsize=10)
  ax_cdf.legend(fontsize=8, loc="center right")
  for ax in (ax_short, ax_long, ax_cdf):
    ax.grid(alpha=0.3, which="both")
  fig.tight_layout()
  for ext in ("png", "pdf"):
    fig.savefig(os.path.join(out_dir, f"fig3_path_contributions.{ext}"), dpi=150)
  plt.close(fig)


def _percent(fraction, log10_fraction):
  return f"{100 * fraction:.2f}%" if fraction >= 1e-4 else f"10^{log10_fraction:.1f}"


def format_summary(summary: dict) -> str:
  """The lines make_figures.py prints for Figure 3."""
  d, m = summary["num_blocks"], summary["max_length"]
  lines = [f"Figure 3: share of the output variance by path length, d = {d:,} residual blocks; "
           f"normalized: p_i = {summary.get('normalized_p', NORMALIZED_P['unit_input'])}, "
           f"i = 1..d ({summary.get('convention', 'unit_input')} convention)"]
  for v, s in summary["variants"].items():
    within = [f"<= {n}: {_percent(s[f'fraction_within_{n}'], s[f'log10_fraction_within_{n}'])}"
              for n in (m - 1, m)]
    lines.append(f"  {SHORT_LABELS[v]:>24}: share of paths of length {', '.join(within)}; "
                 f"mean length {s['mean_path_length']:.2f}; "
                 f"97% within <= {s['length_covering_97pct']}")
  for depth, s in summary["normalized_by_depth"].items():
    label = f"normalized, d = {int(depth):,}"
    lines.append(f"  {label:>24}: share of paths of length <= {m}: "
                 f"{_percent(s[f'fraction_within_{m}'], s[f'log10_fraction_within_{m}'])}; "
                 f"mean length {s['mean_path_length']:.2f}")
  return "\n".join(lines)
