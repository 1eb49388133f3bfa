"""The paper's mechanism, as a regression test (issue 18; PAPER.md sections 1.1-1.2).

A deep unnormalized residual network whose branches start at full weight (SkipInit alpha=1, or no
normalization at all) multiplies the variance of the skip path at every block and diverges within
a couple of steps at a learning rate where the same network trains once its branches start at
zero (SkipInit alpha=0) or are normalized (BatchNorm, which biases each block towards the
identity). A change that breaks that bias (alpha_init ignored, a normalizer that does not
normalize, a wrong initializer) turns one of these outcomes around and fails here.

Tiny on purpose: WRN-28-1 (12 residual blocks, deep enough for the variance to blow up) on 8x8
synthetic images, 16 steps at lr 0.1, evaluated once. Diverged runs stop within a dispatch.
"""

import pytest

from skipinit.train import train_and_evaluate

BASE = ("smoke,num_devices=1,depth=28,width=1,image_size=8,lr=0.1,schedule=constant,epochs=2,"
        "steps_per_dispatch=1,ghost_batch_size=0,log_every_steps=1000,eval_every_epochs=100,"
        "checkpoint_every_epochs=100")


@pytest.mark.parametrize("variant,expected", [
    ("normalizer=skipinit,alpha_init=1", "diverged"),
    ("normalizer=none", "diverged"),
    ("normalizer=skipinit,alpha_init=0", "completed"),
    ("normalizer=batchnorm", "completed"),
])
def test_identity_biased_blocks_train_where_full_weight_blocks_diverge(cifar_config, tmp_path,
                                                                       variant, expected):
  status = train_and_evaluate(cifar_config(f"{BASE},{variant}"), str(tmp_path))
  assert status["status"] == expected, status
  if expected == "diverged":
    assert status["diverged_step"] <= 4, status  # at once, not after a slow drift
  else:  # trained, not merely finite: the loss fell below chance level's ln(10) = 2.30
    assert status["train_loss"] < 2.2, status
