r"""Figure 4 (PAPER.md section 5): per-block variance of the skip path and residual branch at init.

The quantity is the one of the paper: per residual block, the mean over channels of the batch
variance (over examples and positions) of the skip path x_i as it enters the merge, and of the
residual branch f_i(x_i) as it is added. Two models:

* A Wide-ResNet built by `skipinit.models` on a batch of real CIFAR-10 images, run in training
  mode as in the first step of training (BatchNorm normalizes with the batch's statistics). Each
  `PreActBlock` sows 'skip_var', 'branch_var' (after SkipInit's alpha, as added) and
  'branch_raw_var' (before alpha, so that alpha = 0 still shows what the branch computes).
* The deep fully connected model of section 5: x_{i+1} = x_i + alpha W_i phi(norm(x_i)) with
  W_i ~ N(0, gain/width), phi the identity (gain 1) or a ReLU (He gain 2), norm BatchNorm or none.
  With BatchNorm the branch has batch variance 1 (linear) or 2 Var(relu(z)) = 1 - 1/pi ~ 0.68
  (ReLU) whatever i, so the skip path gains ~1 or ~0.68 per block: relative to the skip path,
  branch i is down-weighted by ~1/sqrt(i) (Figure 3's w_i = 1/(i+1)). Without normalization the
  branch is as large as the skip path and every block doubles the variance (2^i); SkipInit's
  alpha = 0 keeps it flat.

In a Wide-ResNet the first block of each stage has a projection shortcut on the normalized input,
which restarts the skip path, so with BatchNorm the linear growth restarts at each stage; the
growth rates below are fitted with one intercept per stage for that reason.
"""

import functools
import json
import math
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from skipinit import config as config_lib
from skipinit.data import cifar10
from skipinit.models import build_model, model_parts, stage_specs

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FULL_CIFAR10 = os.path.join(_REPO, ".cache", "cifar10-jpeg.tar.gz")
SAMPLE_CIFAR10 = os.path.join(_REPO, "tests", "data", "cifar10_sample")

# The variants of Figure 4 (PAPER.md section 3 names) as model-config overrides.
WRN_VARIANTS = {
    "batchnorm": {"normalizer": "batchnorm"},
    # Normalized without batch statistics: is BatchNorm's bias towards the identity kept?
    "groupnorm": {"normalizer": "groupnorm"},
    "skipinit alpha=0": {"normalizer": "skipinit", "alpha_init": "0"},
    "skipinit alpha=1": {"normalizer": "skipinit", "alpha_init": "1"},
    "none": {"normalizer": "none"},
}
# The fully connected model's variants: (normalizer, activation, alpha); alpha None = 1/sqrt(d).
FC_VARIANTS = {
    "batchnorm, linear": ("batchnorm", "linear", 1.0),
    "batchnorm, relu": ("batchnorm", "relu", 1.0),
    "none, linear": ("none", "linear", 1.0),
    "none, relu": ("none", "relu", 1.0),
    "skipinit alpha=0, linear": ("none", "linear", 0.0),
    "skipinit alpha=1/sqrt(d), linear": ("none", "linear", None),
}
RELU_BRANCH_VARIANCE = 1.0 - 1.0 / math.pi  # 2 Var(relu(z)), z ~ N(0, 1): the ~0.68 of section 5
# A profile "explodes" (is drawn as log10, its growth reported as a factor) past this ratio.
EXPLODES_RATIO = 100.0


def default_cifar10_path() -> str:
  """The full JPEG copy of CIFAR-10 if it is in .cache/, else the 400-image sample in tests/data."""
  return FULL_CIFAR10 if os.path.exists(FULL_CIFAR10) else SAMPLE_CIFAR10


def cifar10_images(path: str | None = None, num_images: int = 256, split: str = "train",
                   seed: int = 0) -> np.ndarray:
  """`num_images` random real CIFAR-10 images, normalized per channel: float32 NHWC.

  Random rather than the first ones: the folder source lists the images class by class, and a
  batch of airplanes alone would have smaller variances than the data set.
  """
  images, _ = cifar10.load_folder(path or default_cifar10_path())[split]
  if num_images > len(images):
    raise ValueError(f"asked for {num_images} images, the {split} split has {len(images)}")
  pick = np.sort(np.random.default_rng(seed).permutation(len(images))[:num_images])
  return (images[pick].astype(np.float32) - cifar10.MEAN) / cifar10.STD


def wrn_config(depth: int, width: int, normalizer: str = "batchnorm", alpha_init: str = "0",
               ghost_batch_size: int = 0):
  """The `model` config section of an n-k Wide-ResNet (PAPER.md section 2) for `build_model`."""
  model = config_lib.base_config().model
  model.update(dict(name="wrn", depth=depth, width=width, normalizer=normalizer,
                    alpha_init=str(alpha_init), ghost_batch_size=ghost_batch_size))
  return model


def block_stats(intermediates, num_stages: int) -> dict:
  """Per-block arrays, in network order, from the 'intermediates' the residual blocks sow.

  A stage is `stage{j}_block0` (scalars), then either `stage{j}_block1` (a stage of two blocks
  is not scanned) or the `nn.scan`-stacked `stage{j}_blocks` (arrays of length N-1). Returns
  skip_var, branch_var, branch_raw_var (float64) and stage (int), each of length d.
  """
  keys = ("skip_var", "branch_var", "branch_raw_var")
  out = {k: [] for k in keys + ("stage",)}
  for j in range(num_stages):
    single = sorted((name for name in intermediates
                     if re.fullmatch(rf"stage{j}_block\d+", name)),
                    key=lambda name: int(name.rsplit("block", 1)[1]))
    for name in single + [f"stage{j}_blocks"] * (f"stage{j}_blocks" in intermediates):
      for key in keys:  # sow appends to a tuple: [0] is the value of this forward pass
        out[key].append(np.atleast_1d(np.asarray(intermediates[name][key][0], np.float64)))
      out["stage"].append(np.full(out["skip_var"][-1].size, j))
  return {k: np.concatenate(v) for k, v in out.items()}


def resnet_block_variances(model_config, images, seed: int = 0) -> dict:
  """Figure 4 on a network of `skipinit.models` at init: per-block variances (see `block_stats`).

  The network runs in training mode (BatchNorm uses the batch's statistics) on `images`
  (normalized NHWC). Parameters are drawn with PRNGKey(seed).
  """
  module = build_model(model_config)
  # One compiled call: `init` runs the forward pass it draws the parameters for, and in training
  # mode with every collection mutable that pass is the measurement (flax keeps the sown
  # intermediates; BatchNorm normalizes with the batch's statistics). On a CPU, compiling the
  # random initializers costs more than the pass, so a separate `apply` would double the time.
  init = jax.jit(lambda rng, x: module.init(rng, x, train=True, mutable=True)["intermediates"])
  intermediates = init(jax.random.PRNGKey(seed), jnp.asarray(images, jnp.float32))
  specs = stage_specs(model_config)
  stats = block_stats(jax.device_get(intermediates), len(specs))
  d = sum(spec.num_blocks for spec in specs)
  if stats["stage"].size != d:
    raise RuntimeError(f"found the intermediates of {stats['stage'].size} residual blocks, "
                       f"expected {d}: did the block names in skipinit.models.resnet change?")
  return stats


def _standardize(x, epsilon=1e-5):
  mean = jnp.mean(x, axis=0)
  return (x - mean) * jax.lax.rsqrt(jnp.var(x, axis=0) + epsilon)


def _log_var(x):
  """log of the mean over features of the batch variance (the Figure 4 quantity)."""
  return jnp.log(jnp.mean(jnp.var(x, axis=0)))


def fc_block_variances(inputs, num_blocks: int, width: int = 256, normalizer: str = "batchnorm",
                       activation: str = "linear", alpha: float | None = 1.0,
                       seed: int = 0) -> dict:
  """Figure 4 on the deep fully connected model of PAPER.md section 5.

  x_0 = standardize(flatten(inputs) @ E), E ~ N(0, 1/input_dim), so the skip path starts at
  variance 1; then x_{i+1} = x_i + alpha W_i phi(norm(x_i)), W_i ~ N(0, gain/width) with
  gain 1 (linear) or 2 (ReLU, He init), norm = BatchNorm over the batch (no affine: its init)
  or none. alpha=None means 1/sqrt(num_blocks). Returns float64 arrays of length num_blocks:
  skip_var, branch_var (after alpha), branch_raw_var (before alpha) and their natural logs
  (log_*). Without normalization the block is positively homogeneous, so x is rescaled to unit
  scale after each block and the scale carried in log space: 2^1000 is measured, not overflowed.
  """
  if normalizer not in ("batchnorm", "none") or activation not in ("linear", "relu"):
    raise ValueError("normalizer must be batchnorm|none and activation linear|relu")
  alpha = 1.0 / math.sqrt(num_blocks) if alpha is None else float(alpha)
  x = jnp.asarray(inputs, jnp.float32).reshape(len(inputs), -1)
  key_embed, key_blocks = jax.random.split(jax.random.PRNGKey(seed))
  embed = jax.random.normal(key_embed, (x.shape[1], width)) / math.sqrt(x.shape[1])
  log_alpha2 = 2.0 * math.log(abs(alpha)) if alpha else -math.inf
  logs = _fc_scan(_standardize(x @ embed), jax.random.split(key_blocks, num_blocks),
                  jnp.float32(alpha), jnp.float32(log_alpha2),
                  bn=normalizer == "batchnorm", relu=activation == "relu")
  log_skip, log_branch, log_raw = (np.asarray(v, np.float64) for v in logs)
  with np.errstate(over="ignore"):
    return {"skip_var": np.exp(log_skip), "branch_var": np.exp(log_branch),
            "branch_raw_var": np.exp(log_raw), "log_skip_var": log_skip,
            "log_branch_var": log_branch, "log_branch_raw_var": log_raw}


@functools.partial(jax.jit, static_argnames=("bn", "relu"))
def _fc_scan(x0, keys, alpha, log_alpha2, *, bn: bool, relu: bool):
  """The blocks of `fc_block_variances` as one scan: log variances of skip, branch, raw branch."""
  width = x0.shape[1]
  gain = 2.0 if relu else 1.0

  def block(carry, key):
    x, log_scale = carry  # the true skip path is exp(log_scale) * x
    log_skip = _log_var(x) + 2.0 * log_scale
    h = _standardize(x) if bn else x
    h = jax.nn.relu(h) if relu else h
    raw = h @ (jax.random.normal(key, (width, width)) * math.sqrt(gain / width))
    # BatchNorm's output does not depend on the scale of x; an unnormalized branch scales with it.
    log_raw = _log_var(raw) + (0.0 if bn else 2.0 * log_scale)
    x = x + alpha * raw
    if not bn:
      s = jnp.sqrt(jnp.mean(jnp.square(x)))
      x, log_scale = x / s, log_scale + jnp.log(s)
    return (x, log_scale), (log_skip, log_raw + log_alpha2, log_raw)

  return jax.lax.scan(block, (x0, jnp.zeros((), jnp.float32)), keys)[1]


def fit_growth(var, stage=None, log_var=None) -> dict:
  """Growth per block of a variance profile: additive `slope` and multiplicative `factor`.

  Both are least-squares slopes against the block index (of var, and of log var) with one
  intercept per stage, because a projection shortcut restarts the skip path at each stage.
  Non-finite values (float32 overflow in an exploding network) are left out and the first one
  is reported. `explodes`: the profile overflows, or spans more than EXPLODES_RATIO and a line
  fits log var better than var (geometric, not linear, growth): read it as a factor on a log
  axis; otherwise as a slope.
  """
  var = np.asarray(var, np.float64)
  stage = np.zeros(var.size, int) if stage is None else np.asarray(stage)
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    log_var = np.log(var) if log_var is None else np.asarray(log_var, np.float64)
  index = np.arange(var.size, dtype=np.float64)

  def fit(y, ok):
    """(slope, R^2) of y ~ block index with one intercept per stage."""
    scale = float(np.max(np.abs(y[ok]))) if ok.any() else 0.0
    if not scale:
      return 0.0, math.nan
    y = y / scale  # var reaches 1e300 unnormalized: its squares would overflow
    num = den = total = 0.0
    for s in np.unique(stage[ok]):
      sel = ok & (stage == s)
      if sel.sum() >= 2:
        di, dy = index[sel] - index[sel].mean(), y[sel] - y[sel].mean()
        num, den, total = num + float(di @ dy), den + float(di @ di), total + float(dy @ dy)
    if not den:
      return math.nan, math.nan
    b = num / den
    return b * scale, (b * num / total if total else math.nan)  # explained / total sum of squares

  finite, positive = np.isfinite(var), np.isfinite(log_var)
  bad = np.flatnonzero(~positive & (var != 0))  # var = 0 (alpha = 0) is no overflow
  slope, r2_lin = fit(var, finite)
  log_slope, r2_log = fit(log_var, positive)
  span = np.ptp(log_var[positive]) if positive.any() else 0.0
  return {
      "slope": slope,
      "factor": math.exp(log_slope) if math.isfinite(log_slope) else math.nan,
      "r2_linear": r2_lin, "r2_geometric": r2_log,
      "explodes": bool(bad.size or (span > math.log(EXPLODES_RATIO) and r2_log > r2_lin)),
      "first_nonfinite_block": int(bad[0]) if bad.size else None,
  }


def _json_safe(tree):
  """NaN and inf are not JSON: write them as null."""
  if isinstance(tree, dict):
    return {k: _json_safe(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_json_safe(v) for v in tree]
  if isinstance(tree, float) and not math.isfinite(tree):
    return None
  return tree


def _round(values, digits=4):
  return [None if not math.isfinite(v) else float(f"{v:.{digits}g}") for v in map(float, values)]


def _describe(fit: dict, short: bool = False) -> str:
  if fit["explodes"]:
    text = f"x{fit['factor']:.3f} per block" + ("" if short else " (geometric fit)")
  else:
    slope = fit["slope"] if abs(fit["slope"]) >= 5e-4 else 0.0  # not "-0.000"
    text = f"{slope:+.3f} per block" + ("" if short else " (linear fit)")
  if fit["first_nonfinite_block"] is not None and not short:
    text += f", overflows float32 from block {fit['first_nonfinite_block']}"
  return text


def variant_summary(stats: dict) -> dict:
  """The numbers of one variant's profile: growth fit, mean branch variance, branch/skip ratio."""
  def log_of(key):
    if f"log_{key}" in stats:
      return np.asarray(stats[f"log_{key}"])
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
      return np.log(np.asarray(stats[key], np.float64))

  def finite_mean(key):
    y = np.asarray(stats[key], np.float64)
    return float(np.mean(y[np.isfinite(y)])) if np.isfinite(y).any() else math.nan

  log_skip, log_branch = log_of("skip_var"), log_of("branch_raw_var")
  with np.errstate(invalid="ignore"):  # inf - inf past a float32 overflow: left out below
    ratio = log_branch - log_skip
  ratio = ratio[np.isfinite(ratio)]
  return {
      "fit": stats["fit"],
      "mean_branch_var": finite_mean("branch_var"),
      "mean_branch_raw_var": finite_mean("branch_raw_var"),
      # Branch (before alpha) over skip variance: Figure 3's w_i, ~1/(i+1) with BatchNorm.
      "median_branch_to_skip": float(np.exp(np.median(ratio))) if ratio.size else math.nan,
      "log10_final_skip_var": float(log_skip[-1] / math.log(10)),
  }


def figure4(out_dir: str, data_path: str | None = None, num_images: int = 128, depth: int = 1000,
            width: int = 1, fc_blocks: int = 1000, fc_width: int = 256, seed: int = 0,
            command: str = "", log=print) -> dict:
  """Measures and draws Figure 4 into out_dir (fig4_variance_at_init.{png,pdf,json}).

  Top row: an n-k Wide-ResNet (`depth`, `width`) at init on `num_images` real CIFAR-10 training
  images, for the WRN_VARIANTS. Bottom row: the deep fully connected model (`fc_blocks` blocks
  of `fc_width` units) on the same images, for the FC_VARIANTS. Returns the numbers it writes.
  """
  import matplotlib
  matplotlib.use("Agg")  # files only; no display needed
  import matplotlib.pyplot as plt

  for overrides in WRN_VARIANTS.values():  # a bad depth or width: one error before any work
    model_parts(wrn_config(depth, width, **overrides))
  os.makedirs(out_dir, exist_ok=True)
  data_path = data_path or default_cifar10_path()
  if data_path == SAMPLE_CIFAR10:
    log(f"warning: {os.path.relpath(FULL_CIFAR10, _REPO)} is not there: measuring the 400-image "
        "sample in tests/data instead (give --data_path=<CIFAR-10 folder or .tar.gz> for the "
        f"real data set); this overwrites {out_dir}/fig4_variance_at_init.*")
  images = cifar10_images(data_path, num_images, seed=seed)
  start = time.time()
  wrn = {}
  for name, overrides in WRN_VARIANTS.items():
    log(f"  [{time.time() - start:5.0f} s] measuring WRN-{depth}-{width}, {name}")
    stats = resnet_block_variances(wrn_config(depth, width, **overrides), images, seed)
    stats["fit"] = fit_growth(stats["skip_var"], stats["stage"])
    wrn[name] = stats
  fc = {}
  for name, (normalizer, activation, alpha) in FC_VARIANTS.items():
    log(f"  [{time.time() - start:5.0f} s] measuring the fully connected model, {name}")
    stats = fc_block_variances(images, fc_blocks, fc_width, normalizer, activation, alpha, seed)
    stats["fit"] = fit_growth(stats["skip_var"], log_var=stats["log_skip_var"])
    fc[name] = stats

  summary = {
      "command": command,
      "data": {"path": os.path.relpath(data_path, _REPO) if data_path.startswith(_REPO)
               else data_path, "split": "train", "num_images": num_images, "seed": seed},
      "wrn": {"depth": depth, "width": width, "num_blocks": int(wrn["batchnorm"]["stage"].size),
              "stage": wrn["batchnorm"]["stage"].tolist(), "variants": {}},
      "fc": {"num_blocks": fc_blocks, "width": fc_width, "variants": {}},
  }
  for name, s in wrn.items():
    summary["wrn"]["variants"][name] = {
        **variant_summary(s), **{k: _round(s[k]) for k in ("skip_var", "branch_var",
                                                            "branch_raw_var")}}
  for name, s in fc.items():
    summary["fc"]["variants"][name] = variant_summary(s)

  log(f"  [{time.time() - start:5.0f} s] drawing")
  _draw(plt, wrn, fc, depth, width, fc_blocks, fc_width, num_images, out_dir)
  with open(os.path.join(out_dir, "fig4_variance_at_init.json"), "w") as f:
    json.dump(_json_safe(summary), f, indent=1)
  return summary


def _draw(plt, wrn, fc, depth, width, fc_blocks, fc_width, num_images, out_dir):
  fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
  stage = wrn["batchnorm"]["stage"]
  boundaries = np.flatnonzero(np.diff(stage)) + 1

  def panel(ax, title, curves, fits, refs=()):
    """curves: (label, variance, log variance or None, style); refs: (label, log variance)."""
    # An exploding panel shows log10 of the variance on a linear axis: matplotlib's log axis
    # cannot draw 1e300 (the unnormalized fully connected model at block 1000).
    explode = any(f["explodes"] for f in fits)
    last = 0
    for label, y, log_y, style in curves:
      if explode:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
          log_y = np.log(y) if log_y is None else np.asarray(log_y)
        y = log_y / math.log(10)
      finite = np.isfinite(y)
      last = max(last, int(np.flatnonzero(finite)[-1]) + 1 if finite.any() else 0)
      ax.plot(np.arange(len(y)), np.where(finite, y, np.nan), label=label, **style)
    for (label, log_y), ls in zip(refs, ("--", ":")):
      # Only as far as the measurements go: past an overflow a reference would set the scale.
      y = (log_y / math.log(10) if explode else np.exp(log_y))[:last]
      ax.plot(np.arange(len(y)), y, color="k", ls=ls, lw=0.9, label=label)
    for f in fits:
      if f["first_nonfinite_block"] is not None:
        ax.axvline(f["first_nonfinite_block"], color="C3", lw=0.8, ls="-.")
        ax.text(f["first_nonfinite_block"] + 4, ax.get_ylim()[0] + 0.55 * np.ptp(ax.get_ylim()),
                "float32 overflow:\nvariance inf,\nthen NaN", fontsize=8, color="C3")
    if explode:
      ax.set_ylabel("log10 of the variance")
    else:
      ax.set_ylim(bottom=0)
    ax.set_xlim(0, len(curves[0][1]))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("residual block i")
    ax.grid(alpha=0.3)
    overflow = any(f["first_nonfinite_block"] is not None for f in fits)
    ax.legend(fontsize=7.5, loc="lower right" if overflow else "upper left")

  def mean_text(y):
    y = np.asarray(y)[np.isfinite(y)]
    return f"mean {np.mean(y):.2f}" if y.size else "all inf/NaN"

  def wrn_panel(ax, title, names, raw=False, refs=()):
    curves = []
    for n, name in enumerate(names):
      s, ls = wrn[name], "-" if n == 0 else "--"
      curves.append((f"{name}: skip path, {_describe(s['fit'], short=True)}", s["skip_var"],
                     None, dict(color="C0", ls=ls, lw=1.6)))
      if raw:
        curves.append((f"{name}: branch before alpha, {mean_text(s['branch_raw_var'])}",
                       s["branch_raw_var"], None, dict(color="C2", ls=ls, lw=0.8)))
      explode = s["fit"]["explodes"]
      curves.append((f"{name}: branch (as added)" + ("" if explode else
                                                      f", {mean_text(s['branch_var'])}"),
                     s["branch_var"], None, dict(color="C1", ls=ls, lw=1.0)))
    panel(ax, title, curves, [wrn[n]["fit"] for n in names], refs)
    for b in boundaries:
      ax.axvline(b, color="gray", lw=0.6, ls=":")

  net = f"WRN-{depth}-{width} at init, {num_images} CIFAR-10 images"
  d = stage.size
  wrn_panel(axes[0, 0], f"(a) {net}: BatchNorm, GroupNorm", ["batchnorm", "groupnorm"])
  wrn_panel(axes[0, 1], f"(b) {net}: SkipInit alpha=0", ["skipinit alpha=0"], raw=True)
  wrn_panel(axes[0, 2], f"(c) {net}: no normalization", ["none", "skipinit alpha=1"],
            refs=[("2^i", np.arange(d) * math.log(2.0)),
                  (f"(1 + {RELU_BRANCH_VARIANCE:.2f})^i",
                   np.arange(d) * math.log1p(RELU_BRANCH_VARIANCE))])
  axes[0, 0].set_ylabel("mean over channels of the batch variance")
  axes[0, 1].text(0.5, 0.03, "dotted: stage boundaries (projection shortcuts)",
                  transform=axes[0, 1].transAxes, ha="center", fontsize=8, color="gray")

  def fc_panel(ax, title, names, refs=()):
    curves = []
    for n, name in enumerate(names):
      s = fc[name]
      curves.append((f"{name}: skip path, {_describe(s['fit'], short=True)}", s["skip_var"],
                     s["log_skip_var"], dict(color=f"C{2 * n}", lw=1.6)))
      curves.append((f"{name}: branch (as added)" + ("" if s["fit"]["explodes"] else
                                                      f", {mean_text(s['branch_var'])}"),
                     s["branch_var"], s["log_branch_var"], dict(color=f"C{2 * n + 1}", lw=1.0)))
    panel(ax, title, curves, [fc[n]["fit"] for n in names], refs)

  i = np.arange(fc_blocks)
  fcnet = f"fully connected, {fc_blocks} blocks of width {fc_width}"
  fc_panel(axes[1, 0], f"(d) {fcnet}: BatchNorm", ["batchnorm, linear", "batchnorm, relu"],
           refs=[("1 + i", np.log1p(i)),
                 (f"1 + {RELU_BRANCH_VARIANCE:.2f} i", np.log1p(RELU_BRANCH_VARIANCE * i))])
  fc_panel(axes[1, 1], f"(e) {fcnet}: no normalization", ["none, linear", "none, relu"],
           refs=[("2^i", i * math.log(2.0))])
  fc_panel(axes[1, 2], f"(f) {fcnet}: SkipInit",
           ["skipinit alpha=0, linear", "skipinit alpha=1/sqrt(d), linear"])
  axes[1, 0].set_ylabel("mean over features of the batch variance")
  fig.tight_layout()
  for ext in ("png", "pdf"):
    fig.savefig(os.path.join(out_dir, f"fig4_variance_at_init.{ext}"), dpi=130)
  plt.close(fig)


def _branch_text(v: dict) -> str:
  if v["fit"]["explodes"]:  # the mean of an exploding profile says nothing; the ratio does
    return f"branch/skip variance ratio: median {v['median_branch_to_skip']:.3g}"
  text = f"mean branch variance {v['mean_branch_var']:.3g}"
  if v["mean_branch_raw_var"] != v["mean_branch_var"]:
    text += f" (before alpha {v['mean_branch_raw_var']:.3g})"
  return text


def format_summary(summary: dict) -> str:
  """The lines make_figures.py prints for Figure 4: the fitted growth of the skip path per block."""
  w, f = summary["wrn"], summary["fc"]
  lines = [f"Figure 4: growth of the skip-path variance per block at init "
           f"({summary['data']['num_images']} CIFAR-10 images from {summary['data']['path']})",
           f"  WRN-{w['depth']}-{w['width']} ({w['num_blocks']} residual blocks; "
           "fits with one intercept per stage):"]
  for name, v in w["variants"].items():
    lines.append(f"    {name:>34}: skip {_describe(v['fit'])}; {_branch_text(v)}")
  lines.append(f"  fully connected model ({f['num_blocks']} blocks, width {f['width']}):")
  for name, v in f["variants"].items():
    lines.append(f"    {name:>34}: skip {_describe(v['fit'])}; {_branch_text(v)}; final skip "
                 f"variance 10^{round(v['log10_final_skip_var'], 1) + 0.0:.1f}")  # not -0.0
  return "\n".join(lines)
