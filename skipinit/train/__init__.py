"""Training: `train_and_evaluate(config, workdir)` and the pieces it is made of."""

from skipinit.train.loop import train_and_evaluate

__all__ = ["train_and_evaluate"]
