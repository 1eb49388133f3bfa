"""Optimizer and learning-rate schedules (PAPER.md section 4), all durations in epochs.

SGD with (Nesterov) momentum; L2 weight decay added to the gradient (as in the paper's SGD) on conv
and dense kernels only unless `train.weight_decay_all`; Fixup's scalar biases and multipliers at
their own learning rate (`fixup_scalar_lr_scale`); optional Adaptive Gradient Clipping (Brock et al.
2021) before weight decay and momentum, never on the classifier.
"""

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

SCANNED_SUFFIX = "_blocks"  # parameters of nn.scan-stacked blocks carry a leading per-block axis


def create_learning_rate_fn(train_config, steps_per_epoch: int, base: float | None = None):
  """Schedule over optimizer steps: paper_halving | cosine | step | constant, with linear warm-up.

  Its peak is `base`, train.lr unless given (the trainer's optimizer runs the shape, base=1.0,
  and scales by the lr in the step).

  paper_halving (PAPER.md section 4): constant for the first half of training, then halved at
  50%, 55%, ..., 95% of training (ten halvings, ending at lr / 1024).
  """
  t = train_config
  total = max(1, int(round(t.epochs * steps_per_epoch)))
  warmup = int(round(t.warmup_epochs * steps_per_epoch))
  base = t.lr if base is None else base
  if t.schedule == "constant":
    main = optax.constant_schedule(base)
  elif t.schedule == "cosine":
    main = optax.cosine_decay_schedule(base, max(1, total - warmup))
  elif t.schedule == "paper_halving":
    bounds = {int(round(total * (0.5 + 0.05 * i))) - warmup: 0.5 for i in range(10)}
    main = optax.piecewise_constant_schedule(base, {b: f for b, f in bounds.items() if b > 0})
  elif t.schedule == "step":
    bounds = {int(round(total * f)) - warmup: t.step_factor for f in t.step_boundaries}
    main = optax.piecewise_constant_schedule(base, {b: f for b, f in bounds.items() if b > 0})
  else:
    raise ValueError(f"unknown schedule {t.schedule!r}")
  if warmup <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, base, warmup), main], [warmup])


def _path_mask(params, predicate):
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({k: predicate(k) for k in flat})


def weight_decay_mask(params, decay_all: bool = False):
  """True for conv and dense kernels: no decay on alpha, biases, BN scale/offset or gains."""
  return _path_mask(params, lambda path: decay_all or path[-1] == "kernel")


def agc_mask(params):
  """AGC applies everywhere except the final classifier (Brock et al. 2021, section 4.1)."""
  return _path_mask(params, lambda path: "classifier" not in path)


def adaptive_grad_clip(clipping: float, eps: float = 1e-3) -> optax.GradientTransformation:
  """`optax.adaptive_grad_clip`, applied per block to parameters stacked by nn.scan.

  optax infers the unit-wise norm from a leaf's rank (HWIO conv: per output channel; IO dense: per
  output unit; scalars and vectors: whole). A scan-stacked leaf has one extra leading axis, which
  would change that inference, so those leaves are clipped slice by slice under vmap.
  """
  inner = optax.adaptive_grad_clip(clipping, eps)

  def clip_leaf(g, p):
    return inner.update({"w": g}, optax.EmptyState(), {"w": p})[0]["w"]

  def update_fn(updates, state, params):
    flat_u = traverse_util.flatten_dict(updates)
    flat_p = traverse_util.flatten_dict(params)
    out = {}
    for path, g in flat_u.items():
      stacked = any(str(k).endswith(SCANNED_SUFFIX) for k in path)
      out[path] = (jax.vmap(clip_leaf) if stacked else clip_leaf)(g, flat_p[path])
    return traverse_util.unflatten_dict(out), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def fixup_scalar_lr_scale(train_config) -> float:
  """Fixup's scalars' learning rate over the other parameters' (`train.fixup_scalar_lr`).

  "relative": train.fixup_scalar_lr_mult (0.1), at every lr and batch size. The official Fixup
  code trains them at base_lr/10 with base_lr = 0.1 fixed while the weights' lr is
  base_lr x B/128 (CIFAR) or x B/256 (ImageNet), both following the schedule: a fixed peak value
  (a number here, 0.01 for that code) that equals "relative" at its reference batch and lr only.
  "off": the same lr as everything else, as DeepMind's Fixup (no separate group).
  """
  rule = str(train_config.fixup_scalar_lr).strip()
  if rule == "relative":
    return float(train_config.fixup_scalar_lr_mult)
  if rule == "off":
    return 1.0
  # A fixed peak lr: updates are linear in the lr, so scaling them by value/lr trains the scalars
  # at value x (the schedule's factor), warm-up and decay included, as the official code does.
  return float(rule) / train_config.lr if train_config.lr else 0.0


def make_optimizer(train_config, lr_fn, params, recipe):
  """The optax chain: [AGC] -> [L2 weight decay] -> SGD(momentum, nesterov) -> [scalar lr], the
  last on the model's `recipe.scalar_lr_group` (Fixup's scalars)."""
  t = train_config
  chain = []
  if t.agc_clip:
    chain.append(optax.masked(adaptive_grad_clip(t.agc_clip, t.agc_eps), agc_mask(params)))
  if t.weight_decay:
    chain.append(optax.add_decayed_weights(t.weight_decay,
                                           mask=weight_decay_mask(params, t.weight_decay_all)))
  chain.append(optax.sgd(lr_fn, momentum=t.momentum or None, nesterov=t.nesterov))
  mult = fixup_scalar_lr_scale(t)
  if recipe.scalar_lr_group and mult != 1.0:
    # SGD updates are linear in the learning rate, so scaling them is training at lr * mult.
    chain.append(optax.masked(optax.scale(mult), _path_mask(params, recipe.scalar_lr_group)))
  return optax.chain(*chain)


def cross_entropy(logits, labels, num_classes: int, label_smoothing: float = 0.0):
  """Mean softmax cross-entropy in float32, with optional label smoothing."""
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets))
