"""Pure step functions: train_step, the dispatches around it (a k-step chunk over data held on
device, one step on a streamed batch) and evaluation (DESIGN.md style 1).

The train state is a flat pytree (checkpointed whole by orbax) that also carries the running sums
of the training metrics and the first non-finite step, so that neither needs a host round-trip
per step and a resumed run continues its metric window exactly.
"""

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from skipinit.train.optim import cross_entropy


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  loss_sum: jax.Array       # sums over the steps since the last eval
  correct_sum: jax.Array
  count: jax.Array
  first_bad_step: jax.Array  # first step whose loss or gradient norm was not finite; -1 if none

  def variables(self):
    return {"params": self.params, **({"batch_stats": self.batch_stats} if self.batch_stats else {})}


def create_train_state(model, tx, rng, image_shape) -> TrainState:
  variables = model.init(rng, jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                    first_bad_step=jnp.full((), -1, jnp.int32), **zero_metric_sums())


def zero_metric_sums() -> dict:
  # Separate buffers: the step donates the state, and one buffer cannot be donated twice.
  return {k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "correct_sum", "count")}


def make_train_step(model, tx, num_classes: int, label_smoothing: float = 0.0) -> Callable:
  """(state, images, labels, rng, lr) -> state: one SGD step on a preprocessed global batch.

  `tx` runs the schedule's shape (peak 1, `optim.create_learning_rate_fn(..., base=1.0)`) and the
  step multiplies its updates by `lr`, an argument: SGD's updates are linear in the learning rate,
  and a learning rate held in the compiled program would give every run of a sweep a program of
  its own, which XLA's persistent cache could not share between the rates and seeds of a cell.
  """

  def train_step(state: TrainState, images, labels, rng, lr) -> TrainState:
    def loss_fn(params):
      variables = {"params": params}
      mutable = []
      if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
        mutable = ["batch_stats"]
      logits, new_vars = model.apply(variables, images, train=True, mutable=mutable,
                                     rngs={"dropout": rng})
      loss = cross_entropy(logits, labels, num_classes, label_smoothing)
      return loss, (logits, new_vars)

    (loss, (logits, new_vars)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u: u * lr.astype(u.dtype), updates)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
    correct = jnp.sum(jnp.argmax(logits, -1) == labels)
    return state.replace(
        step=state.step + 1, params=params, opt_state=opt_state,
        batch_stats=new_vars.get("batch_stats", state.batch_stats),
        loss_sum=state.loss_sum + loss * labels.shape[0],
        correct_sum=state.correct_sum + correct.astype(jnp.float32),
        count=state.count + labels.shape[0],
        first_bad_step=jnp.where((state.first_bad_step < 0) & ~finite, state.step,
                                 state.first_bad_step))

  return train_step


# Whether the steps after a non-finite one are skipped on the device (None: on every backend but
# the CPU). XLA:CPU runs the convolutions inside a conditional ~40x slower (a WRN-28-1 step at
# batch 64 took 13-22 s instead of 0.3 s), so there a diverged run is stopped by the loop's check
# at every dispatch boundary alone, which costs at most two dispatches.
SKIP_ON_DEVICE = None


def skip_if_diverged(step: Callable, state: TrainState) -> TrainState:
  """`step(state)`, or `state` unchanged once a step was not finite: a diverged run's remaining
  steps in a dispatch cost ~nothing (the run ends at the next dispatch boundary the loop reads)."""
  skip = SKIP_ON_DEVICE if SKIP_ON_DEVICE is not None else jax.default_backend() != "cpu"
  if not skip:
    return step(state)
  return jax.lax.cond(state.first_bad_step >= 0, lambda s: s, step, state)


def with_divergence_flag(fn: Callable) -> Callable:
  """`fn` -> (state, first_bad_step): the flag as an output of its own, so that the loop can read
  it after the state (donated) went into the next dispatch."""

  def wrapped(*args):
    state = fn(*args)
    return state, state.first_bad_step

  return wrapped


def run_constants(base_key, lr) -> tuple:
  """What differs between the runs of one sweep cell (the seed's key, the learning rate), passed
  to the compiled steps as arguments rather than held in them (see make_train_step)."""
  return base_key, jnp.asarray(lr, jnp.float32)


def make_device_data_chunk(train_step, augment: Callable, batch_sharding) -> Callable:
  """(state, images, labels, idx[k, B], run) -> state: k train steps over a data set held on
  device; `run` is `run_constants(base_key, lr)`.

  Fusing k steps into one `lax.scan` removes k-1 dispatches, which dominate at small batch sizes.
  The steps after a non-finite one are skipped (`skip_if_diverged`).
  Each step's randomness is `fold_in(base_key, step)`, so it depends on neither k nor the device
  count, and a resumed run draws the same augmentations.
  """

  def chunk(state, images, labels, idx, run):
    base_key, lr = run

    def body(state, idx_t):
      def step(state):
        rng = jax.random.fold_in(base_key, state.step)
        aug_rng, dropout_rng = jax.random.split(rng)
        batch = jax.lax.with_sharding_constraint(images[idx_t], batch_sharding)
        x = augment(aug_rng, batch)
        return train_step(state, x, labels[idx_t], dropout_rng, lr)

      return skip_if_diverged(step, state), None

    # XLA:CPU runs convolution gradients inside a while loop ~100x slower: unroll there. Not
    # `unroll=True`: for a 1-step chunk that means unroll=1, which keeps the while loop.
    unroll = max(2, idx.shape[0]) if jax.default_backend() == "cpu" else 1
    state, _ = jax.lax.scan(body, state, idx, unroll=unroll)
    return state

  return chunk


def make_streamed_step(train_step, preprocess: Callable) -> Callable:
  """(state, images, labels, run) -> state: one train step on a batch streamed from the host."""

  def one_step(state, images, labels, run):
    base_key, lr = run

    def step(state):
      rng = jax.random.fold_in(base_key, state.step)
      return train_step(state, preprocess(images), labels, rng, lr)

    return skip_if_diverged(step, state)

  return one_step


def make_eval_fn(model, num_classes: int, preprocess: Callable) -> Callable:
  """(variables, images, labels, mask) -> sums of loss, correct and count over one batch."""

  def eval_batch(variables, images, labels, mask):
    logits = model.apply(variables, preprocess(images), train=False)
    losses = optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, num_classes))
    mask = mask.astype(jnp.float32)
    return {"loss": jnp.sum(losses * mask),
            "correct": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
            "count": jnp.sum(mask)}

  return eval_batch


def make_device_data_eval(eval_batch: Callable) -> Callable:
  """Evaluates a whole on-device test set [num_batches, batch, ...] in one dispatch."""

  def evaluate(variables, images, labels, mask):
    def body(totals, xs):
      out = eval_batch(variables, *xs)
      return jax.tree.map(jnp.add, totals, out), None

    zero = {k: jnp.zeros((), jnp.float32) for k in ("loss", "correct", "count")}
    totals, _ = jax.lax.scan(body, zero, (images, labels, mask))
    return totals

  return evaluate
