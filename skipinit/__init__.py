"""skipinit: reproduce De & Smith 2020 (SkipInit), BatchNorm, Fixup and NF-ResNets in JAX/Flax."""

from skipinit.errors import ConfigError, DataError

__all__ = ["ConfigError", "DataError"]
