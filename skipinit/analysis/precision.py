r"""Mixed precision and SkipInit's small branches (issue 15): does a bfloat16 net keep alpha * branch?

SkipInit starts alpha at 0 and grows it slowly, so early in training alpha * branch is far below
the bfloat16 spacing of the skip path it joins (2^-8 of its magnitude). One SkipInit Wide-ResNet,
every alpha at a small value (1e-3) and a random classifier, the same parameters, three builds:

  float32           model.dtype=float32: the reference
  bfloat16 stream   model.dtype=bfloat16, model.residual_dtype=bfloat16 (the code before issue 15)
  float32 stream    model.dtype=bfloat16, model.residual_dtype=float32 (the default): branches in
                    bfloat16; the stream, the projection shortcut and the head in float32

Per residual block: what the block added to the stream as stored (its output minus its skip path,
both sown by `PreActBlock` with probe_stream=True) against the float32 net's, as a relative error and
as the fraction of elements rounded to exactly zero. At the output: logits(alpha) - logits(0)
against the float32 net's (the model's first-order response to the branches).
"""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from skipinit import config as config_lib
from skipinit.models import build_model, stage_specs

SETTINGS = {  # name -> (model.dtype, model.residual_dtype)
    "float32": ("float32", "float32"),
    "bfloat16 stream": ("bfloat16", "bfloat16"),
    "float32 stream": ("bfloat16", "float32"),
}
STEM = "bf16_residual"


def skipinit_config(depth: int, width: int, alpha: float, dtype: str = "float32",
                    residual_dtype: str = "float32"):
  """The model config of an n-k SkipInit Wide-ResNet whose alphas start at `alpha`."""
  model = config_lib.base_config().model
  model.update(dict(name="wrn", depth=depth, width=width, normalizer="skipinit",
                    alpha_init=repr(float(alpha)), dtype=dtype, residual_dtype=residual_dtype))
  return model


def _set_leaves(tree, name, fn):
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: fn(leaf) if getattr(path[-1], "key", None) == name else leaf, tree)


def random_classifier(variables, seed: int = 1, std: float = 0.3):
  """SkipInit's classifier starts at zero, which would hide every branch: a random one instead."""
  key = jax.random.PRNGKey(seed)
  return {**variables, "params": {**variables["params"], "classifier": {
      **variables["params"]["classifier"],
      "kernel": std * jax.random.normal(key, variables["params"]["classifier"]["kernel"].shape)}}}


def with_alpha(variables, value: float):
  return _set_leaves(variables, "alpha", lambda a: jnp.full_like(a, value))


def _ordered_blocks(probes, num_stages: int) -> list[np.ndarray]:
  """Per-block arrays in network order from the sown probes (stage{j}_block0, _block1 or the
  nn.scan-stacked stage{j}_blocks)."""
  out = []
  for j in range(num_stages):
    single = sorted((n for n in probes if re.fullmatch(rf"stage{j}_block\d+", n)),
                    key=lambda n: int(n.rsplit("block", 1)[1]))
    for name in single:
      out.append(_contribution(probes[name]))
    if f"stage{j}_blocks" in probes:
      out.extend(_contribution(probes[f"stage{j}_blocks"]))
  return out


def _contribution(probe):
  """Block output minus skip path, both as the stream stored them, in float64 (exact)."""
  return (np.asarray(probe["stream_out"][0]).astype(np.float64)
          - np.asarray(probe["stream_skip"][0]).astype(np.float64))


def run(model_config, variables, images):
  """(logits, [per-block stream contributions], logits with every alpha at 0) of one build."""
  module = build_model(model_config).clone(probe_stream=True)
  apply = jax.jit(lambda v, x: module.apply(v, x, train=False, mutable=["probes"]))
  logits, state = apply(variables, images)
  logits0, _ = apply(with_alpha(variables, 0.0), images)
  blocks = _ordered_blocks(jax.device_get(state["probes"]), len(stage_specs(model_config)))
  return np.asarray(logits), blocks, np.asarray(logits0)


def _rel(err, ref):
  return float(np.linalg.norm(err) / max(np.linalg.norm(ref), 1e-30))


def compare(depth: int, width: int, alpha: float, images, seed: int = 0) -> dict:
  """Per-block and output errors of each setting against the float32 net (module doc)."""
  images = jnp.asarray(images, jnp.float32)
  module = build_model(skipinit_config(depth, width, alpha))
  variables = jax.jit(lambda: module.init(jax.random.PRNGKey(seed), images[:2], train=False))()
  variables = random_classifier({"params": variables["params"]}, seed + 1)
  runs = {name: run(skipinit_config(depth, width, alpha, *dtypes), variables, images)
          for name, dtypes in SETTINGS.items()}
  ref_logits, ref_blocks, ref_logits0 = runs["float32"]
  ref_delta = ref_logits - ref_logits0
  out = {"depth": depth, "width": width, "alpha": alpha, "num_images": int(images.shape[0]),
         "seed": seed, "num_blocks": len(ref_blocks),
         "reference_contribution_rms": [float(np.sqrt(np.mean(b ** 2))) for b in ref_blocks],
         "settings": {}}
  for name, (logits, blocks, logits0) in runs.items():
    if name == "float32":
      continue
    out["settings"][name] = {
        "dtype": SETTINGS[name][0], "residual_dtype": SETTINGS[name][1],
        "logit_response_rel_error": _rel((logits - logits0) - ref_delta, ref_delta),
        "block_rel_error": [_rel(b - r, r) for b, r in zip(blocks, ref_blocks)],
        "block_zero_fraction": [float(np.mean((b == 0) & (r != 0))) for b, r in
                                zip(blocks, ref_blocks)],
    }
  for s in out["settings"].values():
    s["median_block_rel_error"] = float(np.median(s["block_rel_error"]))
    s["max_block_rel_error"] = float(np.max(s["block_rel_error"]))
    s["mean_block_zero_fraction"] = float(np.mean(s["block_zero_fraction"]))
  return out


def figure(out_dir: str, images, depth: int = 1000, width: int = 1, alpha: float = 1e-3,
           seed: int = 0, command: str = "") -> dict:
  """Draws <out_dir>/bf16_residual.{png,pdf} and writes its JSON; returns the numbers."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  summary = compare(depth, width, alpha, images, seed)
  summary["command"] = command
  os.makedirs(out_dir, exist_ok=True)
  colors = {"bfloat16 stream": "C3", "float32 stream": "C0"}
  fig, (ax_err, ax_zero) = plt.subplots(1, 2, figsize=(13, 4.4))
  blocks = np.arange(1, summary["num_blocks"] + 1)
  for name, s in summary["settings"].items():
    label = (f"{name} (dtype={s['dtype']}, residual_dtype={s['residual_dtype']}): logit response "
             f"error {100 * s['logit_response_rel_error']:.1f}%")
    ax_err.plot(blocks, np.maximum(s["block_rel_error"], 1e-4), ".", ms=2.5, color=colors[name],
                label=label)
    ax_zero.plot(blocks, s["block_zero_fraction"], ".", ms=2.5, color=colors[name], label=name)
  ax_err.set_yscale("log")
  ax_err.set_xlabel("residual block")
  ax_err.set_ylabel("relative error of the block's contribution")
  ax_err.set_title(f"(a) what each block adds to the stream vs float32, alpha = {alpha:g}",
                   fontsize=10)
  ax_err.legend(fontsize=7, loc="center right")
  ax_zero.set_xlabel("residual block")
  ax_zero.set_ylabel("fraction rounded to exactly 0")
  ax_zero.set_ylim(-0.02, 1.02)
  ax_zero.set_title("(b) branch contributions erased by the add", fontsize=10)
  ax_zero.legend(fontsize=8)
  for ax in (ax_err, ax_zero):
    ax.grid(alpha=0.3, which="both")
  fig.suptitle(f"SkipInit WRN-{depth}-{width}, {summary['num_images']} real CIFAR-10 images, "
               "random classifier: bfloat16 branches with a bfloat16 or float32 residual stream",
               fontsize=10)
  fig.tight_layout()
  for ext in ("png", "pdf"):
    fig.savefig(os.path.join(out_dir, f"{STEM}.{ext}"), dpi=150)
  plt.close(fig)
  with open(os.path.join(out_dir, f"{STEM}.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def format_summary(summary: dict) -> str:
  lines = [f"SkipInit WRN-{summary['depth']}-{summary['width']} ({summary['num_blocks']} blocks), "
           f"alpha = {summary['alpha']:g}, {summary['num_images']} images, against float32:"]
  for name, s in summary["settings"].items():
    lines.append(f"  {name:>16} (dtype={s['dtype']}, residual_dtype={s['residual_dtype']}): "
                 f"logits(alpha) - logits(0) off by {100 * s['logit_response_rel_error']:.1f}%; "
                 f"per block: median error {100 * s['median_block_rel_error']:.1f}%, max "
                 f"{100 * s['max_block_rel_error']:.1f}%, {100 * s['mean_block_zero_fraction']:.1f}% "
                 "of the contribution rounded to 0")
  return "\n".join(lines)
