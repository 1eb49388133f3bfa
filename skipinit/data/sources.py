"""The two kinds of data a run trains on, behind one protocol (`Source`): they supply data only;
`skipinit.train.loop.build_experiment` builds the jitted steps around them."""

import hashlib
import math
from typing import Callable, Iterable, Protocol

import jax
import numpy as np

from skipinit import sharding
from skipinit.data import augment, cifar10, imagenet  # (imagenet imports TensorFlow lazily)
from skipinit.errors import ConfigError


class Source(Protocol):
  """What the trainer asks of a data set. `held_on_device`: True, the set lives whole on the
  devices, and a dispatch gathers and augments up to train.steps_per_dispatch batches there;
  False, it is streamed from the host, one step per dispatch."""
  held_on_device: bool
  steps_per_epoch: int
  fingerprint: dict  # data.json: what a run trains on, so that a resume on other data is refused
  normalize_stats: tuple | None  # (mean, std) the devices apply to uint8 batches; None: host did
  augment_on_device: Callable | None  # (rng, batch) -> batch in the step (held_on_device only)

  def train_args(self, step: int, n: int) -> tuple:
    """The data arguments of the dispatch that runs steps [step, step + n) (n == 1 if streamed)."""

  def eval_batches(self) -> Iterable[tuple]:
    """(images, labels, mask) global arrays, mask False = padding: held on device, one item, the
    whole test set as [batches, batch, ...] (one dispatch); streamed, one item per eval batch."""


def _data_names(config) -> dict:
  """data.json's names of the data (tables title themselves with them)."""
  return {"name": config.data.name, "source": config.data.source}


# The eval subset's permutation seed: fixed, not train.seed, so that every run of a sweep (every
# seed) evaluates on the same images.
EVAL_SUBSET_SEED = 0


def eval_subset_indices(num_test: int, n: int) -> np.ndarray:
  """data.eval_subset: the first n of a fixed seeded permutation of the test set, in file order.

  A uniform random subset rather than a stratified one: CIFAR-10's test set is balanced, and a
  random subset keeps the classes' shares within sampling noise (~3% of a class at n=1000).
  """
  return np.sort(np.random.default_rng(EVAL_SUBSET_SEED).permutation(num_test)[:n])


class DeviceData:
  """A data set held whole on the devices (CIFAR-10): batches gathered by index, augmented there."""

  held_on_device = True
  normalize_stats = (cifar10.MEAN, cifar10.STD)
  augment_on_device = staticmethod(augment.pad_crop_flip)

  def __init__(self, config, mesh):
    arrays = cifar10.load(config.data)
    train_images, train_labels = arrays["train"]
    test_images, test_labels = arrays["test"]
    self.num_train = len(train_labels)
    self.batch_size = config.train.batch_size
    self.seed = config.train.seed
    if self.batch_size > self.num_train:
      raise ConfigError(f"train.batch_size={self.batch_size} is larger than the training set "
                        f"({self.num_train} examples)")
    self.steps_per_epoch = self.num_train // self.batch_size
    rep = sharding.replicated(mesh)
    self.images = sharding.put_global(train_images, rep)
    self.labels = sharding.put_global(train_labels, rep)

    # What the run trains on, so that a resume on other data is refused (rundir.check_data): the
    # data as loaded, before the padding below (it depends on the devices and the eval batch).
    digest = hashlib.sha1()
    for a in (train_images, train_labels, test_images, test_labels):
      digest.update(np.ascontiguousarray(a).data)
    self.fingerprint = {"train_examples": self.num_train, "test_examples": len(test_labels),
                        "sha1": digest.hexdigest(), **_data_names(config)}
    subset = config.data.eval_subset
    if subset:
      if subset > len(test_labels):
        raise ConfigError(f"data.eval_subset={subset} is larger than the test set "
                          f"({len(test_labels)} examples): use at most {len(test_labels)}, or 0 "
                          "for the whole test set")
      keep = eval_subset_indices(len(test_labels), subset)
      test_images, test_labels = test_images[keep], test_labels[keep]
      self.fingerprint["eval_examples"] = subset

    # Pad the test set to whole eval batches (a multiple of the device count); padding is masked.
    eb = math.ceil(min(config.train.eval_batch_size, len(test_labels)) / mesh.size) * mesh.size
    nb = math.ceil(len(test_labels) / eb)
    pad = nb * eb - len(test_labels)
    mask = np.concatenate([np.ones(len(test_labels), bool), np.zeros(pad, bool)])
    test_images = np.concatenate([test_images, np.zeros((pad,) + test_images.shape[1:], np.uint8)])
    test_labels = np.concatenate([test_labels, np.zeros(pad, np.int32)])
    # Index and test arrays are [steps or batches, batch, ...]: their batch is axis 1.
    self._axis1_sharded = sharding.batch_sharded(mesh, batch_axis=1)
    self.test = tuple(sharding.put_global(a.reshape((nb, eb) + a.shape[1:]), self._axis1_sharded)
                      for a in (test_images, test_labels, mask))
    self._perm_epoch, self._perm = None, None

  def _epoch_order(self, epoch: int) -> np.ndarray:
    """The shuffle of one epoch, a function of (seed, epoch) only, so resumption sees the same data."""
    if self._perm_epoch != epoch:
      perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_train)
      self._perm = perm[: self.steps_per_epoch * self.batch_size].reshape(
          self.steps_per_epoch, self.batch_size).astype(np.int32)
      self._perm_epoch = epoch
    return self._perm

  def train_args(self, step: int, n: int) -> tuple:
    """The whole set and the indices [n, batch] of steps [step, step + n) of one epoch."""
    epoch, pos = divmod(step, self.steps_per_epoch)
    idx = sharding.put_global(self._epoch_order(epoch)[pos:pos + n], self._axis1_sharded)
    return self.images, self.labels, idx

  def eval_batches(self) -> Iterable[tuple]:
    return (self.test,)


class StreamedData:
  """A data set streamed from the host (ImageNet): per-process slices of each global batch."""

  held_on_device, augment_on_device = False, None

  def __init__(self, config, mesh):
    src = self.source = imagenet.make_imagenet(config, jax.process_index(), jax.process_count())
    self.normalize_stats = None if src.normalized else (imagenet.MEAN_RGB, imagenet.STDDEV_RGB)
    self.steps_per_epoch = src.steps_per_epoch  # (make_imagenet checks the batch size)
    self._batch_sharding = sharding.batch_sharded(mesh)
    self._iter, self._iter_step = None, None
    self.fingerprint = {"train_examples": src.num_train_examples,
                        "test_examples": src.num_eval_examples, **_data_names(config)}
    if config.data.eval_subset:
      raise ConfigError(f"data.eval_subset={config.data.eval_subset} is for data held on the "
                        "device (CIFAR-10); ImageNet evaluates its whole validation split: use 0")

  def train_args(self, step: int, n: int) -> tuple:
    """The images and labels of step `step`, from an iterator two batches ahead."""
    assert n == 1, n  # one step per dispatch
    epoch, pos = divmod(step, self.steps_per_epoch)
    if self._iter is None or self._iter_step != step or pos == 0:
      # Two batches in flight: their host-to-device copies overlap the running step.
      self._iter = imagenet.device_prefetch(self.source.train_batches(epoch, start_step=pos),
                                            self._batch_sharding, size=2)
    batch = next(self._iter)
    self._iter_step = step + 1
    return batch["images"], batch["labels"]

  def eval_batches(self) -> Iterable[tuple]:
    for b in imagenet.device_prefetch(self.source.eval_batches(), self._batch_sharding, size=2):
      yield b["images"], b["labels"], b["mask"]
