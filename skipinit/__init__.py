"""skipinit: reproduce De & Smith 2020 (SkipInit), BatchNorm, Fixup and NF-ResNets in JAX/Flax."""

import importlib.metadata
import logging
import os

from skipinit.errors import CheckpointError, ConfigError, DataError, SkipInitError

__all__ = ["CheckpointError", "ConfigError", "DataError", "SkipInitError"]


def _work_around_xla_cpu_ynn_fusion() -> None:
  """Turns off XLA:CPU's YNNPACK fusions on jaxlib 0.11, unless XLA_FLAGS already sets them.

  jaxlib 0.11.2 on CPU compiles a bfloat16 WRN's evaluation pass (BatchNorm from running
  statistics, convs, mean-pool, classifier) into one `__ynn_fusion` that returns NaN, where eager
  mode, jaxlib 0.10 and this flag all give the same finite logits (tests/test_models.py caught
  it). The flag only affects CPU; it must be set before JAX starts its backends, hence here.
  """
  try:
    version = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return
  flags = os.environ.get("XLA_FLAGS", "")
  if version.startswith("0.11.") and "xla_cpu_experimental_ynn_fusion_type" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_experimental_ynn_fusion_type=").strip()


_work_around_xla_cpu_ynn_fusion()


class _NoLibtpuProbe(logging.Filter):
  """Drops jax's INFO line "Unable to initialize backend 'tpu': ... Failed to open libtpu.so" that
  every run on a machine without libtpu printed: jax probes for a TPU and logs its absence.

  Only that line: a TPU that is installed but fails (busy, wrong driver) is still logged, and a
  platform the user asked for (JAX_PLATFORMS) raises, which no filter touches.
  """

  def filter(self, record):
    if record.levelno > logging.INFO:
      return True
    message = record.getMessage()
    return not (message.startswith("Unable to initialize backend 'tpu'") and "libtpu" in message)


logging.getLogger("jax._src.xla_bridge").addFilter(_NoLibtpuProbe())
