"""The runs of one sweep cell compile the same programs (issue 19 item 9), so that XLA's persistent
compilation cache, which a sweep shares between its trainers, compiles a cell once: the learning
rate and the seed's keys are arguments of the train step, not constants in it."""

import jax
import numpy as np

from skipinit import sharding
from skipinit.train import loop


def _programs(cifar_config, arg):
  cfg = cifar_config("smoke,num_devices=1,steps_per_dispatch=2,image_size=8," + arg)
  exp = loop.build_experiment(cfg, sharding.make_mesh(1))
  state = exp.init_state()
  return exp, state, exp.chunk.lower(state, *exp.dispatch_args(0, 2)).as_text()


def test_learning_rate_and_seed_are_arguments_not_constants(cifar_config):
  exp_a, state_a, chunk_a = _programs(cifar_config, "lr=0.1,seed=0")
  exp_b, state_b, chunk_b = _programs(cifar_config, "lr=0.025,seed=3")
  assert chunk_a == chunk_b  # one program for both runs
  # ... which still trains each with its own rate and seed: other initial weights, other steps.
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state_a.params),
                                                     jax.tree.leaves(state_b.params)))
  assert float(exp_a.lr_fn(0)) == np.float32(0.1) and float(exp_b.lr_fn(0)) == np.float32(0.025)


def test_the_step_scales_its_update_by_the_learning_rate(cifar_config):
  # Twice the lr from the same state: twice the (SGD, first-step) update of every parameter.
  moves = []
  for lr in (0.05, 0.1):
    exp, state, _ = _programs(cifar_config, f"lr={lr},weight_decay=0,momentum=0,seed=0")
    before = jax.tree.map(np.asarray, state.params)
    after, _ = exp.chunk_flagged(state, *exp.dispatch_args(0, 1))
    moves.append(jax.tree.map(lambda a, b: np.asarray(a) - b, after.params, before))
  for small, large in zip(jax.tree.leaves(moves[0]), jax.tree.leaves(moves[1])):
    # atol: the moves are differences of weights of magnitude ~1, exact to ~1e-7.
    np.testing.assert_allclose(large, 2 * small, rtol=1e-4, atol=5e-7)
