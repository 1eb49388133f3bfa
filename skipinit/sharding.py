"""Data parallelism over a `jax.make_mesh` mesh: batch sharded on "data", parameters replicated.

No pmap (in maintenance mode in current JAX): `jax.jit` partitions the step from the shardings of
its inputs. Multi-host: every process calls `jax.distributed.initialize()` first and feeds its slice.
"""

import os

from absl import logging
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from skipinit import models
from skipinit.errors import ConfigError

DATA_AXIS = "data"


def maybe_initialize_distributed() -> None:
  """`jax.distributed.initialize()` when the environment describes several processes.

  It auto-detects SLURM, Open MPI and Cloud TPU; JAX_COORDINATOR_ADDRESS (with
  JAX_NUM_PROCESSES and JAX_PROCESS_ID) covers any other launcher. Set SKIPINIT_DISTRIBUTED=0/1
  to force it off/on.
  """
  forced = os.environ.get("SKIPINIT_DISTRIBUTED")
  if forced == "0":
    return
  several = (int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "JAX_COORDINATOR_ADDRESS" in os.environ
             or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1 or "TPU_WORKER_HOSTNAMES" in os.environ)
  if forced == "1" or several:
    if not jax.distributed.is_initialized():
      # jax reads JAX_COORDINATOR_ADDRESS itself but not the process count and id (jax 0.10):
      # pass those on, and leave them None (auto-detected) when a cluster launcher sets its own.
      env_int = lambda name: int(os.environ[name]) if os.environ.get(name) else None
      jax.distributed.initialize(num_processes=env_int("JAX_NUM_PROCESSES"),
                                 process_id=env_int("JAX_PROCESS_ID"))


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A 1-D data-parallel mesh over `num_devices` devices (0: all of them, across all hosts)."""
  devices = jax.devices()
  n = num_devices or len(devices)
  if n > len(devices):
    have = f"{len(devices)} device is" if len(devices) == 1 else f"{len(devices)} devices are"
    raise ConfigError(f"train.num_devices={n} but only {have} available")
  if jax.process_count() > 1 and n != len(devices):
    raise ConfigError("train.num_devices must be 0 (all devices) in a multi-host run")
  return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices[:n])


def devices_for(config) -> int:
  """How many devices a run with train.num_devices=0 ("every device") trains on.

  Every local device, unless the batch cannot be split over them: a per-device batch must be a
  whole number of ghost batches (the BN statistics must not depend on the device count). Then
  the most devices it can be split over, with a warning, so that the small batches of a
  batch-size sweep run on a many-GPU host instead of failing. An explicit train.num_devices, and
  a multi-host run, are taken as given (and checked by `config.validate`).
  """
  t, m = config.train, config.model
  available = len(jax.devices())
  if t.num_devices or jax.process_count() > 1:
    return t.num_devices
  unit = models.ghost_batch(m) or 1
  n = available
  while n > 1 and t.batch_size % (n * unit):
    n -= 1
  if n < available:
    logging.warning("train.batch_size=%d%s splits over at most %d of the %d devices: training on "
                    "%d (set train.num_devices to choose)", t.batch_size,
                    f" in ghost batches of {unit}" if unit > 1 else "", n, available, n)
  return n


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh, batch_axis: int = 0) -> NamedSharding:
  return NamedSharding(mesh, P(*([None] * batch_axis), DATA_AXIS))


def put_global(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from a host array that every process holds whole (multi-host safe)."""
  array = np.asarray(array)
  return jax.make_array_from_callback(array.shape, sharding, lambda idx: array[idx])
