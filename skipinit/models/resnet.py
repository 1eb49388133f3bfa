"""One generic pre-activation ResNet; the Wide-ResNet and ResNet-V2 of PAPER.md section 2 are specs of it.

The residual variant (BatchNorm, SkipInit, Fixup, ...) is a `Recipe` injected into `PreActBlock`.
The identical blocks of a stage are stacked with `nn.scan`, so that a 1000-layer network traces
and compiles one block per stage rather than 498 (DESIGN.md, "Depth up to 1000 layers").

Two dtypes: `dtype` is what the residual branches compute in (bfloat16 for speed), and
`residual_dtype` what the residual stream is stored and summed in: the scan carry, the skip path
with its projection conv, the merge, and the head (final norm, pool, classifier). SkipInit starts
alpha at 0 and grows it slowly; in a bfloat16 stream (8-bit mantissa) `alpha * branch` far below
0.4% of the skip path rounds away in the add, block after block. A float32 stream keeps it at the
cost of float32 adds and carries only (tests/test_precision.py, results/bf16_residual/).
"""

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from skipinit.models.layers import CLASSIFIER_INITS, CONV_INITS, WSConv, relu
from skipinit.models.recipes import Recipe

Dtype = Any
ConvSpec = tuple[int, int, int]  # (features, kernel size, stride)


@dataclasses.dataclass(frozen=True)
class StageSpec:
  num_blocks: int
  features: int  # the branch width; bottleneck blocks output 4x this
  stride: int
  bottleneck: bool = False

  def convs(self, stride: int) -> tuple[ConvSpec, ...]:
    if self.bottleneck:  # ResNet-V2 puts the stride on the 3x3 conv
      return ((self.features, 1, 1), (self.features, 3, stride), (4 * self.features, 1, 1))
    return ((self.features, 3, stride), (self.features, 3, 1))


def _channel_mean_batch_var(x):
  """Mean over channels of the batch variance (over examples and positions): PAPER.md section 5."""
  x = x.astype(jnp.float32)
  return jnp.mean(jnp.var(x, axis=tuple(range(x.ndim - 1))))


class _RecipeMixin:
  """Builds the parts a recipe decides: norms, activations, convs and scalar biases."""

  def scalar_bias(self, x, name):
    if not self.recipe.scalar_biases:
      return x
    return x + self.param(name, nn.initializers.zeros, (), jnp.float32).astype(x.dtype)

  def activate(self, x, name, train, scale=None, dtype=None):
    """relu(norm(x) or x + fixup bias) * NF gain [* scale]: every activation of the network,
    computed in `dtype` (default: the compute dtype; x is cast first, so BN saves it in that dtype).

    Each form saves as little as it can for the backward pass. The recipe's norm applies the ReLU
    too: BN and the ReLU are one op with a hand-written VJP (`layers.ghost_batch_norm`). Without a
    norm, `layers.relu` takes its mask from its output, which the next conv saves anyway; the NF
    gain and beta (> 0) are applied before it, the same numbers, so that its output is the conv's
    input. A Fixup bias follows every activation, so the conv's input is another array: jax's
    relu, whose 1-byte mask is cheaper.
    """
    r: Recipe = self.recipe
    x = x.astype(dtype or self.dtype)
    factor = None  # the NF gain times beta, both > 0
    if r.activation_gain != 1.0 or scale is not None:
      factor = jnp.asarray(r.activation_gain, jnp.float32) * (1.0 if scale is None else scale)
    if r.norm:
      y = r.norm(use_running_average=not train, dtype=x.dtype, name=name)(x)
    elif r.scalar_biases:
      y = nn.relu(self.scalar_bias(x, f"{name}_bias"))
    else:
      return relu(x if factor is None else x * factor.astype(x.dtype))
    return y if factor is None else y * factor.astype(y.dtype)

  def conv(self, features, kernel, stride, name, kernel_init=None, use_bias=None, dtype=None):
    r: Recipe = self.recipe
    use_bias = r.conv_bias if use_bias is None else use_bias
    kernel_init = kernel_init or CONV_INITS[r.conv_init]
    cls = WSConv if r.weight_standardization else nn.Conv
    extra = {} if r.weight_standardization else {"param_dtype": jnp.float32, "padding": "SAME"}
    return cls(features=features, kernel_size=(kernel, kernel), strides=(stride, stride),
               use_bias=use_bias, kernel_init=kernel_init, dtype=dtype or self.dtype, name=name,
               **extra)


class PreActBlock(_RecipeMixin, nn.Module):
  """Pre-activation residual block (PAPER.md section 2) for any recipe.

  o = act(norm(x)); skip = proj(o) if the shape changes else x; the branch runs the convs with
  act(norm(.)) between them; out = out_scale * (skip + multiplier * gain * branch). Called as
  `(x, beta) -> (x, None)` so that `nn.scan` can stack it; beta scales the input for NF-ResNets.
  A post-activation recipe (Fixup's reference network) takes o = x and returns relu(out).
  x, skip and out are in `residual_dtype`, the branch computes in `dtype` (see the module doc).
  """

  convs: Sequence[ConvSpec]
  recipe: Recipe
  num_blocks: int  # d, all residual blocks of the network: sets Fixup's init scale
  train: bool
  project: bool = False
  dtype: Dtype = jnp.float32
  residual_dtype: Dtype = jnp.float32
  probe_stream: bool = False  # sow 'probes': stream_out, stream_skip (skipinit.analysis.precision)

  @nn.compact
  def __call__(self, x, beta):
    r = self.recipe
    rd = self.residual_dtype
    # A projecting block's o also feeds the skip path's 1x1 conv: o stays in the stream's dtype
    # there (3 blocks of a network); elsewhere o is the branch's alone, in the compute dtype.
    o_dtype = rd if self.project else self.dtype
    # Post-activation (Fixup's reference block): x is already the previous block's relu output.
    beta = beta if r.track_variance else None
    if r.post_activation:
      o = x.astype(o_dtype)
      o = o if beta is None else o * beta.astype(o.dtype)
    else:
      o = self.activate(x, "norm0", self.train, scale=beta, dtype=o_dtype)
    o = self.scalar_bias(o, "conv0_bias")
    out_features, stride = self.convs[-1][0], max(s for _, _, s in self.convs)
    m = len(self.convs)
    init = lambda i: r.conv_inits(i, m, self.num_blocks) if r.conv_inits else None  # the recipe's
    skip = (self.conv(out_features, 1, stride, "proj", kernel_init=init(-1), dtype=rd)(o)
            if self.project else x)

    y = o
    for i, (features, kernel, s) in enumerate(self.convs):
      if i:
        y = self.scalar_bias(self.activate(y, f"norm{i}", self.train), f"conv{i}_bias")
      y = self.conv(features, kernel, s, f"conv{i}", kernel_init=init(i))(y)

    # Before alpha, which SkipInit starts at 0: Figure 4 (skipinit.analysis.signal) plots it.
    self.sow("intermediates", "branch_raw_var", _channel_mean_batch_var(y))
    multiplier = r.branch_multiplier
    if r.gain_name:
      multiplier = multiplier * self.param(
          r.gain_name, nn.initializers.constant(r.gain_init), (), jnp.float32)
    # The merge in the stream's dtype, the gain included: alpha's gradient, sum(g * branch), is
    # then reduced in float32 too.
    y = self.scalar_bias(y.astype(rd) * jnp.asarray(multiplier, rd), "branch_bias")
    self.sow("intermediates", "skip_var", _channel_mean_batch_var(skip))
    self.sow("intermediates", "branch_var", _channel_mean_batch_var(y))
    out = skip + y
    if r.out_scale != 1.0:
      out = out * r.out_scale
    if r.post_activation:
      out = nn.relu(out)
    out = out.astype(rd)
    if self.probe_stream:
      # The stream as stored, output and skip path apart: XLA drops a bfloat16 round trip inside a
      # fusion, so out - skip computed here could show the sum before its rounding.
      self.sow("probes", "stream_out", out)
      self.sow("probes", "stream_skip", skip.astype(rd))
    return out, None


class ResNet(_RecipeMixin, nn.Module):
  """Pre-activation ResNet: stem, stages of `PreActBlock`s, then act(norm(.)) -> pool -> linear."""

  stages: Sequence[StageSpec]
  recipe: Recipe
  num_classes: int
  stem_features: int = 16
  imagenet_stem: bool = False  # 7x7/2 conv + 3x3/2 max-pool instead of one 3x3 conv
  dropout_rate: float = 0.0
  remat: bool = False
  scan_unroll: int = 0  # blocks unrolled per scan iteration; 0: auto (see _unroll)
  dtype: Dtype = jnp.float32  # the residual branches' compute dtype
  residual_dtype: Dtype = jnp.float32  # the residual stream's and the head's (module doc)
  probe_stream: bool = False  # blocks sow full-size tensors: for skipinit.analysis.precision only

  def _unroll(self, n: int) -> int | bool:
    """How many of a stage's n stacked blocks each scan iteration runs.

    XLA:CPU runs the weight-gradient convolutions inside a while loop about 100x slower than
    outside one (measured: WRN-40-1 gradient 15 s vs 0.1 s), so on CPU short stages are unrolled;
    on GPU/TPU the loop costs nothing and keeps compile time flat in depth.
    """
    if self.scan_unroll:
      return min(self.scan_unroll, n)
    return True if jax.default_backend() == "cpu" and n <= 16 else 1

  @property
  def num_blocks(self) -> int:
    return sum(s.num_blocks for s in self.stages)

  @nn.compact
  def __call__(self, x, train: bool):
    r = self.recipe
    x = x.astype(self.dtype)
    kernel, stride = (7, 2) if self.imagenet_stem else (3, 1)
    x = self.conv(self.stem_features, kernel, stride, "stem", use_bias=False)(x)
    if r.post_activation:  # a post-activation net's blocks take relu'd inputs
      x = nn.relu(self.scalar_bias(x, "stem_bias"))
    if self.imagenet_stem:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    x = x.astype(self.residual_dtype)  # the stream starts here

    block_cls = nn.remat(PreActBlock, prevent_cse=False) if self.remat else PreActBlock
    common = dict(recipe=r, num_blocks=self.num_blocks, train=train, dtype=self.dtype,
                  residual_dtype=self.residual_dtype, probe_stream=self.probe_stream)
    alpha2 = r.branch_multiplier ** 2
    expected_var = 1.0  # NF-ResNets: the analytic variance of the skip path entering each block
    for j, stage in enumerate(self.stages):
      out_features = stage.convs(stage.stride)[-1][0]
      project = stage.stride != 1 or x.shape[-1] != out_features
      x, _ = block_cls(convs=stage.convs(stage.stride), project=project, name=f"stage{j}_block0",
                       **common)(x, jnp.asarray(1.0 / math.sqrt(expected_var), jnp.float32))
      # As DeepMind's nf_resnet.py: the expected variance restarts after the first block of every
      # stage (a projected skip path starts again from act(x) * beta, of variance ~1), whether or
      # not that block projects. Here every stage but the first projects, and the first starts
      # at 1, so this equals restarting after projections only.
      expected_var = 1.0 + alpha2
      n = stage.num_blocks - 1
      if n == 1:  # a length-1 scan buys nothing, and its gradient is slow on XLA:CPU
        x, _ = block_cls(convs=stage.convs(1), name=f"stage{j}_block1", **common)(
            x, jnp.asarray(1.0 / math.sqrt(expected_var), jnp.float32))
        expected_var += alpha2
      elif n:
        betas = 1.0 / jnp.sqrt(expected_var + alpha2 * jnp.arange(n, dtype=jnp.float32))
        stack = nn.scan(block_cls, variable_axes={"params": 0, "batch_stats": 0, "intermediates": 0,
                                                  "probes": 0},
                        split_rngs={"params": True, "dropout": True}, length=n,
                        unroll=self._unroll(n))
        x, _ = stack(convs=stage.convs(1), name=f"stage{j}_blocks", **common)(x, betas)
        expected_var += n * alpha2

    # The head in the stream's dtype: a bfloat16 final norm or classifier would round the small
    # branch contributions away again after the stream kept them.
    if not r.post_activation:  # (post-activation: the last block's output is already relu'd)
      x = self.activate(x, "final_norm", train, dtype=self.residual_dtype)
    x = jnp.mean(x, axis=(1, 2))
    if self.dropout_rate:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = self.scalar_bias(x, "head_bias")
    x = nn.Dense(self.num_classes, kernel_init=CLASSIFIER_INITS[r.classifier_init],
                 dtype=self.residual_dtype, param_dtype=jnp.float32, name="classifier")(x)
    return x.astype(jnp.float32)
