"""ImageNet (ILSVRC-2012) for the ResNet-V2 runs of PAPER.md sections 2 and 4, from the host.

`make_imagenet(config, process_index, process_count)` returns an `ImageNetData` whose
`train_batches(epoch, start_step)` and `eval_batches()` yield this process's part of each global
batch (train.batch_size // process_count examples) as numpy arrays, augmented and normalized:
  {"images": float32 or bfloat16 (model.dtype) NHWC, "labels": int32}   (+ "mask": bool for eval)
With data.normalize_on_host=False the images are uint8 instead and the trainer normalizes them on
device with MEAN_RGB / STDDEV_RGB (`ImageNetData.normalized` says which): it saves ~35% of the
host's CPU per image and 2-4x of the host-to-device bytes. The trainer turns the batches into
global arrays with `jax.make_array_from_process_local_data` (`device_prefetch` below does that a
batch or two ahead, so the copy overlaps the step).

Sources (`data.source`):
  tfds       tensorflow-datasets `imagenet2012`, prepared once by scripts/prepare_imagenet.py; each
             process reads its own `tfds.even_splits` part of the records.
  folder     an ImageNet-layout tree `train/<wnid>/*.JPEG`, `val/<wnid>/*.JPEG` (labels: sorted wnid
             index, which is also tfds' label order). Decoded with tf.data when TensorFlow is
             installed, else (or with `data.backend=pil`) with PIL in a thread pool.
  synthetic  learnable random images of the right shape, for benchmarks and smoke tests; no TF.

Preprocessing (PAPER.md section 4): training takes an Inception-style random-resized crop (area
8%..100% of the image, aspect ratio 3/4..4/3) resized to `data.image_size`, and a random horizontal
flip; evaluation takes the central crop of 224/256 of the shorter side resized to `image_size`
(= "resize 256, center crop 224"). Both then subtract the ImageNet per-channel mean and divide by
its standard deviation. JPEGs are decoded only inside the crop window (`decode_and_crop_jpeg`).

Determinism: the training order and every crop and flip depend only on (train.seed, epoch) and the
example's position in the epoch, so a resumed run sees the same data (`start_step` skips into the
epoch). For the folder and synthetic sources the position is global, so the union of the processes'
batches at a step is the same global batch whatever the number of processes; tfds' record files
only allow a per-process order, so there the data depend on the process count too.

TensorFlow and tensorflow_datasets are imported inside functions only, so importing this module
(and the synthetic or PIL paths) needs neither (`pip install -e .[imagenet]` adds them).
"""

import collections
import concurrent.futures
import math
import os
from typing import Iterator

import numpy as np

from skipinit.errors import ConfigError, DataError

# Per-channel statistics of the ImageNet training set (0..255 scale), as in the flax and
# big_vision ImageNet pipelines.
MEAN_RGB = np.array([0.485, 0.456, 0.406], np.float32) * 255.0
STDDEV_RGB = np.array([0.229, 0.224, 0.225], np.float32) * 255.0
CROP_FRACTION = 224 / 256          # eval: "resize 256, center crop 224", at any image size
AREA_RANGE = (0.08, 1.0)           # Inception crop (Szegedy et al. 2015), as in big_vision
ASPECT_RANGE = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10
TRAIN_DIR, EVAL_DIRS = "train", ("val", "validation")
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
REQUIRED_TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
PREPARE_HINT = ("download {tars} from https://image-net.org/download-images into a folder and run "
                "`python scripts/prepare_imagenet.py --manual_dir=FOLDER --data_dir={data_dir}` "
                "once")
# Salts so that the training order, the augmentation and the synthetic data use separate streams.
_ORDER, _AUGMENT, _SYNTHETIC = 0, 1, 2


# ---------------------------------------------------------------------------------------------
# Which examples each process reads: pure numpy, shared by every source.

def epoch_key(seed: int, epoch: int, salt: int, process_index: int = 0) -> int:
  """A 63-bit integer determined by (seed, epoch, salt, process): seeds one epoch's randomness."""
  state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), salt, process_index])
  return int(state.generate_state(1, np.uint64)[0] >> np.uint64(1))


def train_layout(num_examples: int, global_batch: int, process_index: int, process_count: int,
                 seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
  """(example indices, global positions) this process reads in `epoch`, in order.

  The epoch is one permutation of all examples cut into `num_examples // global_batch` global
  batches (the remainder is dropped); process p takes rows [p*b, (p+1)*b) of each, b = B / P. The
  position (step * B + row) keys the example's augmentation, so it does not depend on P.
  """
  b = global_batch // process_count
  steps = num_examples // global_batch
  perm = np.random.default_rng(epoch_key(seed, epoch, _ORDER)).permutation(num_examples)
  rows = np.arange(steps)[:, None] * global_batch + process_index * b + np.arange(b)
  return perm[rows].reshape(-1), rows.reshape(-1)


def eval_layout(num_examples: int, global_batch: int, process_index: int,
                process_count: int) -> tuple[np.ndarray, np.ndarray]:
  """(example indices, mask) this process evaluates: every example once over all processes.

  Global eval batch k holds examples [k*B, (k+1)*B); the last one is padded (mask False, index 0)
  so every process yields the same number of equally sized batches.
  """
  b = global_batch // process_count
  steps = max(1, math.ceil(num_examples / global_batch))
  rows = (np.arange(steps)[:, None] * global_batch + process_index * b + np.arange(b)).reshape(-1)
  mask = rows < num_examples
  return np.where(mask, rows, 0), mask


def _check_batch(name: str, global_batch: int, process_count: int) -> int:
  if global_batch <= 0 or global_batch % process_count:
    raise ConfigError(f"{name}={global_batch} must be a positive multiple of the {process_count} "
                      "processes (each process reads an equal part of every batch)")
  return global_batch // process_count


def _output_dtype(config):
  """The images' dtype: uint8 when the trainer normalizes on device (data.normalize_on_host=False),
  else bfloat16 for a bfloat16 model (half the host-to-device bytes of float32), else float32."""
  if not config.data.normalize_on_host:
    return np.uint8
  if config.model.dtype == "bfloat16":
    import ml_dtypes  # a jax dependency; numpy's view of bfloat16
    return ml_dtypes.bfloat16
  return np.float32


def normalize(images_uint8: np.ndarray, dtype=np.float32) -> np.ndarray:
  """(x - mean) / std per channel (PAPER.md section 4), on the host; uint8 passes through."""
  if dtype == np.uint8:
    return images_uint8
  return ((images_uint8.astype(np.float32) - MEAN_RGB) / STDDEV_RGB).astype(dtype)


def device_prefetch(batches, sharding, size: int = 2):
  """Turns per-process batches into global jax.Arrays `size` batches ahead of the consumer.

  `jax.make_array_from_process_local_data` starts the host-to-device copy and returns at once, so
  holding a few in flight overlaps the copy of the next batches with the current step.
  """
  import jax
  queue = collections.deque()
  for batch in batches:
    queue.append(jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


# ---------------------------------------------------------------------------------------------
# The object the trainer uses.

class ImageNetData:
  """One process's view of ImageNet: sizes, and iterators over its parts of the global batches.

  Attributes: num_train_examples, num_eval_examples (global), num_classes, image_size,
  per_process_batch_size, per_process_eval_batch_size, steps_per_epoch (= num_train_examples //
  train.batch_size), num_eval_batches (per process, equal on every process), process_index,
  process_count, dtype (of the images), normalized (False: uint8 images that the trainer
  normalizes on device with MEAN_RGB and STDDEV_RGB, e.g. `skipinit.data.augment.normalize`).
  """

  def __init__(self, config, process_index: int, process_count: int, num_train_examples: int,
               num_eval_examples: int, num_classes: int):
    if not 0 <= process_index < process_count:
      raise ConfigError(f"process_index={process_index} must be in [0, {process_count})")
    self.config = config
    self.process_index, self.process_count = process_index, process_count
    self.global_batch_size = int(config.train.batch_size)
    self.global_eval_batch_size = int(config.train.eval_batch_size)
    self.per_process_batch_size = _check_batch("train.batch_size", self.global_batch_size,
                                               process_count)
    self.per_process_eval_batch_size = _check_batch("train.eval_batch_size",
                                                    self.global_eval_batch_size, process_count)
    self.num_train_examples, self.num_eval_examples = num_train_examples, num_eval_examples
    self.num_classes = num_classes
    self.image_size = int(config.data.image_size)
    self.seed = int(config.train.seed)
    self.num_workers = config.data.num_workers  # decoding threads (0: automatic)
    self.dtype = _output_dtype(config)
    self.normalized = self.dtype != np.uint8
    self.steps_per_epoch = num_train_examples // self.global_batch_size
    if self.steps_per_epoch < 1:
      raise ConfigError(f"train.batch_size={self.global_batch_size} is larger than the "
                        f"{num_train_examples} training examples")
    self.num_eval_batches = max(1, math.ceil(num_eval_examples / self.global_eval_batch_size))

  def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[dict]:
    """This process's batches of training step start_step.. of `epoch` (0-based), augmented."""
    raise NotImplementedError

  def eval_batches(self) -> Iterator[dict]:
    """This process's `num_eval_batches` eval batches, with a bool 'mask' (False = padding)."""
    raise NotImplementedError

  def _check_start(self, start_step: int) -> int:
    if not 0 <= start_step <= self.steps_per_epoch:
      raise ValueError(f"start_step={start_step} is outside the epoch's {self.steps_per_epoch} "
                       "steps")
    return start_step


# ---------------------------------------------------------------------------------------------
# synthetic: no files, no TensorFlow.

class SyntheticData(ImageNetData):
  """Learnable fake ImageNet: a per-class low-frequency colour pattern plus noise, normalized.

  A pool of at most `pool_size` distinct images is drawn once (the same on every process); example i
  is pool image i % pool_size, so an epoch of the real length costs one gather per batch.
  """

  def __init__(self, config, process_index, process_count, pool_size: int = 512):
    d = config.data
    num_classes = config.model.num_classes
    super().__init__(config, process_index, process_count, int(d.synthetic_train_size),
                     int(d.synthetic_test_size), num_classes)
    rng = np.random.default_rng(epoch_key(self.seed, 0, _SYNTHETIC))
    n = min(pool_size, max(self.num_train_examples, self.num_eval_examples))
    s = self.image_size
    labels = rng.integers(0, num_classes, size=n).astype(np.int32)
    coarse = rng.normal(size=(num_classes, 4, 4, 3)).astype(np.float32)
    pattern = np.repeat(np.repeat(coarse, -(-s // 4), 1), -(-s // 4), 2)[:, :s, :s]
    images = np.empty((n, s, s, 3), self.dtype)
    for i in range(n):  # one at a time: a 512-image float32 temporary would be 300 MB at 224
      image = pattern[labels[i]] + rng.normal(scale=0.5, size=(s, s, 3)).astype(np.float32)
      if not self.normalized:  # the uint8 image that normalizes to `image`
        image = np.clip(np.round(image * STDDEV_RGB + MEAN_RGB), 0, 255)
      images[i] = image
    self._images, self._labels = images, labels

  def _gather(self, indices):
    pool = indices % len(self._labels)
    return {"images": self._images[pool], "labels": self._labels[pool]}

  def train_batches(self, epoch, start_step=0):
    indices, _ = train_layout(self.num_train_examples, self.global_batch_size, self.process_index,
                              self.process_count, self.seed, epoch)
    b = self.per_process_batch_size
    for step in range(self._check_start(start_step), self.steps_per_epoch):
      yield self._gather(indices[step * b:(step + 1) * b])

  def eval_batches(self):
    indices, mask = eval_layout(self.num_eval_examples, self.global_eval_batch_size,
                                self.process_index, self.process_count)
    b = self.per_process_eval_batch_size
    for k in range(self.num_eval_batches):
      batch = self._gather(indices[k * b:(k + 1) * b])
      batch["mask"] = mask[k * b:(k + 1) * b]
      yield batch


# ---------------------------------------------------------------------------------------------
# TensorFlow (tf.data) preprocessing, shared by the tfds and folder sources.

def import_tf():
  """TensorFlow, hidden from the GPUs (JAX owns them), or a DataError saying how to install it."""
  try:
    import tensorflow as tf
  except ImportError:
    raise DataError("this ImageNet input needs TensorFlow (tf.data): pip install -e .[imagenet] "
                    "(or use data.source=folder with data.backend=pil, or data.source=synthetic)"
                    ) from None
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    pass  # TF already initialized its devices; a CPU-only TF has none to hide anyway
  return tf


def _tf_decode_crop(tf, raw, window_fn):
  """Decodes the window `window_fn(height, width) -> (top, left, h, w)` of an encoded image.

  For JPEGs only the window is decoded (decode_and_crop_jpeg skips the rest: the main cost of the
  pipeline); other formats (a PNG in a folder tree) are decoded whole, then cropped.
  """
  def jpeg():
    shape = tf.image.extract_jpeg_shape(raw)
    window = tf.stack(window_fn(shape[0], shape[1]))
    return tf.image.decode_and_crop_jpeg(raw, window, channels=3)

  def other():
    image = tf.io.decode_image(raw, channels=3, expand_animations=False)
    shape = tf.shape(image)
    top, left, h, w = window_fn(shape[0], shape[1])
    return image[top:top + h, left:left + w]

  return tf.cond(tf.io.is_jpeg(raw), jpeg, other)


def tf_preprocess(tf, raw, key, train: bool, image_size: int, dtype=np.uint8):
  """One encoded image -> [image_size, image_size, 3] of `dtype` (PAPER.md section 4).

  uint8: the resized pixels; float32 or bfloat16: normalized with MEAN_RGB and STDDEV_RGB (here,
  per example, so the work runs in tf.data's parallel map). `key` (int64[2]) seeds this example's
  crop and flip with stateless ops, so a pass is reproducible.
  """
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(key, 2))

  def inception_window(h, w):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.stack([h, w, 3]), bounding_boxes=tf.zeros([1, 0, 4]), seed=crop_seed,
        min_object_covered=0.0, aspect_ratio_range=ASPECT_RANGE, area_range=AREA_RANGE,
        max_attempts=CROP_ATTEMPTS, use_image_if_no_bounding_boxes=True)
    return begin[0], begin[1], size[0], size[1]

  def center_window(h, w):
    side = tf.maximum(1, tf.cast(CROP_FRACTION * tf.cast(tf.minimum(h, w), tf.float32), tf.int32))
    return (h - side + 1) // 2, (w - side + 1) // 2, side, side

  image = _tf_decode_crop(tf, raw, inception_window if train else center_window)
  # Bilinear without antialiasing, as the flax/TF-official ResNet pipelines: antialiasing costs
  # ~0.8 ms per image on a CPU core (+45% on the whole pipeline), for no known accuracy benefit.
  image = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=False)
  if train:
    image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
  if dtype == np.uint8:
    return tf.cast(tf.round(image), tf.uint8)  # bilinear stays within [0, 255]
  image = (image - tf.constant(MEAN_RGB)) / tf.constant(STDDEV_RGB)
  return tf.cast(image, tf.float32 if dtype == np.float32 else tf.bfloat16)


def _tf_options(tf, num_workers: int):
  options = tf.data.Options()
  options.deterministic = True  # parallel map, same order: resumed runs see the same batches
  options.threading.max_intra_op_parallelism = 1  # parallelism across examples, not inside ops
  if num_workers > 0:
    options.threading.private_threadpool_size = num_workers
  return options


def _tf_finish(tf, ds, batch_size: int, num_workers: int):
  """Batches the preprocessed example dicts, prefetches on the host; yields numpy dicts."""
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_tf_options(tf, num_workers)).as_numpy_iterator()


def _parallel(tf, num_workers: int):
  return num_workers if num_workers > 0 else tf.data.AUTOTUNE


# ---------------------------------------------------------------------------------------------
# folder: train/<wnid>/*.JPEG, val/<wnid>/*.JPEG.

def _list_images(folder: str) -> list[str]:
  with os.scandir(folder) as it:
    return sorted(e.name for e in it if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))


def list_folder(path: str) -> dict:
  """An ImageNet tree's {"root", "classes": sorted wnids, "train"|"eval": (paths, int32 labels)}.

  Paths are relative to root and held as bytes: 1.28M of them take ~45 MB so (a numpy unicode
  array of absolute paths would take ~300 MB in every process).
  """
  root = os.path.expanduser(path)
  layout = ("an ImageNet-layout folder: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG, one folder per "
            "class, labels in sorted wnid order (or data.source=tfds: scripts/prepare_imagenet.py)")
  if not path or not os.path.isdir(os.path.join(root, TRAIN_DIR)):
    raise DataError(f"data.path={path!r} is not {layout}")
  eval_dir = next((d for d in EVAL_DIRS if os.path.isdir(os.path.join(root, d))), None)
  if eval_dir is None:
    raise DataError(f"data.path={path!r} has no val/ folder: expected {layout}")
  classes = sorted(e.name for e in os.scandir(os.path.join(root, TRAIN_DIR)) if e.is_dir())
  out = {"root": root, "classes": classes}
  for split, sub in (("train", TRAIN_DIR), ("eval", eval_dir)):
    index = {c: i for i, c in enumerate(classes)}
    files, labels = [], []
    for c in sorted(e.name for e in os.scandir(os.path.join(root, sub)) if e.is_dir()):
      if c not in index:
        raise DataError(f"{os.path.join(root, sub, c)} is a class with no train/{c} folder: the "
                        "train and val folders must name the same classes")
      names = _list_images(os.path.join(root, sub, c))
      files.extend(f"{sub}/{c}/{n}".encode() for n in names)
      labels.extend([index[c]] * len(names))
    if not files:
      raise DataError(f"no images (*.JPEG, *.jpg, *.png) under {os.path.join(root, sub)}: expected "
                      f"{layout}")
    out[split] = (np.asarray(files, dtype=bytes), np.asarray(labels, np.int32))
  return out


def random_resized_box(rng: np.random.Generator, height: int, width: int):
  """(left, top, right, bottom) of an Inception crop; the whole image when 10 tries fail."""
  area = height * width
  for _ in range(CROP_ATTEMPTS):
    target = area * rng.uniform(*AREA_RANGE)
    ratio = math.exp(rng.uniform(math.log(ASPECT_RANGE[0]), math.log(ASPECT_RANGE[1])))
    w = int(round(math.sqrt(target * ratio)))
    h = int(round(math.sqrt(target / ratio)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return left, top, left + w, top + h
  return 0, 0, width, height


def center_box(height: int, width: int):
  side = max(1, int(CROP_FRACTION * min(height, width)))
  top, left = (height - side + 1) // 2, (width - side + 1) // 2
  return left, top, left + side, top + side


def pil_preprocess(path: str, key: tuple, train: bool, image_size: int) -> np.ndarray:
  """The PIL twin of `tf_preprocess`: same crop and flip distributions, not the same draws."""
  from PIL import Image
  rng = np.random.default_rng(key)
  with Image.open(path) as im:
    width, height = im.size
    box = random_resized_box(rng, height, width) if train else center_box(height, width)
    # JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale when the crop is that much larger than
    # the output: most of the decoding cost saved, as decode_and_crop_jpeg does in tf.data.
    crop_w, crop_h = box[2] - box[0], box[3] - box[1]
    im.draft("RGB", (max(1, width * image_size // crop_w), max(1, height * image_size // crop_h)))
    sx, sy = im.size[0] / width, im.size[1] / height
    box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
    im = im.convert("RGB").resize((image_size, image_size), Image.BILINEAR, box=box)
    out = np.asarray(im, np.uint8)
  if train and rng.random() < 0.5:
    out = out[:, ::-1]
  return out


class FolderData(ImageNetData):
  """An ImageNet-layout folder; every process lists it and reads its rows of each global batch."""

  def __init__(self, config, process_index, process_count):
    listing = list_folder(config.data.path)
    num_classes = config.model.num_classes
    if len(listing["classes"]) > num_classes:
      raise DataError(f"data.path={config.data.path!r} has {len(listing['classes'])} classes but "
                      f"model.num_classes={num_classes}")
    self.train_files, self.train_labels = listing["train"]
    self.eval_files, self.eval_labels = listing["eval"]
    super().__init__(config, process_index, process_count, len(self.train_files),
                     len(self.eval_files), num_classes)
    self.root, self.classes = listing["root"], listing["classes"]
    backend = config.data.backend
    if backend not in ("auto", "tf", "pil"):
      raise ConfigError(f"data.backend={backend!r} is unknown: use auto, tf or pil")
    if backend == "auto":
      try:
        import tensorflow  # noqa: F401  (only probing whether tf.data is available)
        backend = "tf"
      except ImportError:
        backend = "pil"
    if backend == "tf":
      import_tf()  # the clear DataError now rather than at the first batch
    self.backend = backend

  def train_batches(self, epoch, start_step=0):
    indices, positions = train_layout(self.num_train_examples, self.global_batch_size,
                                      self.process_index, self.process_count, self.seed, epoch)
    first = self._check_start(start_step) * self.per_process_batch_size
    return self._batches(self.train_files[indices[first:]], self.train_labels[indices[first:]],
                         positions[first:], None, epoch_key(self.seed, epoch, _AUGMENT), True,
                         self.per_process_batch_size)

  def eval_batches(self):
    indices, mask = eval_layout(self.num_eval_examples, self.global_eval_batch_size,
                                self.process_index, self.process_count)
    return self._batches(self.eval_files[indices], self.eval_labels[indices],
                         np.arange(len(indices)), mask, 0, False, self.per_process_eval_batch_size)

  def _batches(self, *args):
    return (self._tf_batches if self.backend == "tf" else self._pil_batches)(*args)

  def _tf_batches(self, files, labels, positions, mask, key, train, batch_size):
    tf = import_tf()
    size, dtype, root = self.image_size, self.dtype, os.path.join(self.root, "")
    slices = {"path": files, "labels": labels, "position": positions.astype(np.int64)}
    if mask is not None:
      slices["mask"] = mask
    ds = tf.data.Dataset.from_tensor_slices(slices)

    def load(ex):
      seed = tf.stack([tf.constant(key, tf.int64), ex.pop("position")])
      raw = tf.io.read_file(tf.strings.join([root, ex.pop("path")]))
      ex["images"] = tf_preprocess(tf, raw, seed, train, size, dtype)
      return ex

    ds = ds.map(load, num_parallel_calls=_parallel(tf, self.num_workers))
    return _tf_finish(tf, ds, batch_size, self.num_workers)

  def _pil_batches(self, files, labels, positions, mask, key, train, batch_size):
    workers = self.num_workers or os.cpu_count() or 1
    size, dtype = self.image_size, self.dtype

    def load(r):  # in a worker thread: normalizing there too keeps the consumer thread free
      path = os.path.join(self.root, files[r].decode())
      return normalize(pil_preprocess(path, (key, int(positions[r])), train, size), dtype)

    def submit(pool, k):
      return [pool.submit(load, r) for r in range(k * batch_size, (k + 1) * batch_size)]

    num = len(files) // batch_size
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # PIL decodes without the GIL
      pending = collections.deque(submit(pool, k) for k in range(min(2, num)))
      for k in range(num):
        images = np.stack([f.result() for f in pending.popleft()])
        if k + 2 < num:
          pending.append(submit(pool, k + 2))  # keep two batches decoding ahead
        rows = slice(k * batch_size, (k + 1) * batch_size)
        batch = {"images": images, "labels": labels[rows].astype(np.int32)}
        if mask is not None:
          batch["mask"] = mask[rows]
        yield batch


IMAGENET_LIKE_SIZES = ((500, 375), (375, 500), (500, 333), (500, 400), (333, 500), (640, 480))


def write_fake_imagenet(root: str, num_classes: int = 3, train_per_class: int = 4,
                        val_per_class: int = 2, sizes=IMAGENET_LIKE_SIZES, seed: int = 0) -> str:
  """Writes an ImageNet-layout tree of random JPEGs (tests, benchmarks); returns `root`.

  Each image is a smooth random colour field plus noise, which JPEG-compresses to about the size of
  a real ImageNet photo (~100 KB at 500x375), so decoding costs about as much. `sizes` are
  (width, height) pairs, used in turn.
  """
  from PIL import Image
  rng = np.random.default_rng(seed)
  count = 0
  for split, per_class in (("train", train_per_class), ("val", val_per_class)):
    for c in range(num_classes):
      folder = os.path.join(root, split, f"n{c:08d}")
      os.makedirs(folder, exist_ok=True)
      for i in range(per_class):
        w, h = sizes[count % len(sizes)]
        count += 1
        coarse = Image.fromarray(rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8))
        base = np.asarray(coarse.resize((w, h), Image.BICUBIC), np.float32)
        pixels = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"n{c:08d}_{i}.JPEG"), quality=90)
  return root


# ---------------------------------------------------------------------------------------------
# tfds: the prepared imagenet2012 records.

def import_tfds():
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise DataError("data.source=tfds needs tensorflow-datasets: pip install -e .[imagenet] (or "
                    "use data.source=folder with an ImageNet-layout folder)") from None
  import_tf()
  return tfds


def tfds_builder(data_dir: str = ""):
  """The prepared `imagenet2012` builder, or a DataError saying how to prepare it."""
  tfds = import_tfds()
  builder = tfds.builder("imagenet2012", data_dir=data_dir or None)
  hint = PREPARE_HINT.format(tars=" and ".join(REQUIRED_TARS), data_dir=data_dir or "DIR")
  if hasattr(builder, "is_prepared"):
    prepared = builder.is_prepared()
  else:  # tensorflow-datasets older than 4.9.3
    prepared = import_tf().io.gfile.exists(os.path.join(builder.data_dir, "dataset_info.json"))
  if not prepared:
    raise DataError(f"tfds imagenet2012 is not prepared in {builder.data_dir!r}: {hint} (or use "
                    "data.source=folder with data.path=<train/<wnid>/*.JPEG, val/<wnid>/*.JPEG>)")
  missing = [s for s in ("train", "validation") if s not in builder.info.splits]
  if missing:
    raise DataError(f"tfds imagenet2012 in {builder.data_dir!r} lacks the {' and '.join(missing)} "
                    f"split: {hint}")
  return builder


class TfdsData(ImageNetData):
  """tfds `imagenet2012`: process p reads `tfds.even_splits(split, P)[p]` of the records."""

  def __init__(self, config, process_index, process_count):
    self._tfds = tfds = import_tfds()
    self.builder = tfds_builder(config.data.data_dir)
    splits = self.builder.info.splits
    self._train_split = tfds.even_splits("train", n=process_count)[process_index]
    eval_splits = tfds.even_splits("validation", n=process_count)
    self._eval_split = eval_splits[process_index]
    self._eval_sizes = [splits[s].num_examples for s in eval_splits]
    num_classes = self.builder.info.features["label"].num_classes
    if config.model.num_classes < num_classes:
      raise ConfigError(f"model.num_classes={config.model.num_classes} is smaller than the "
                        f"{num_classes} classes of tfds imagenet2012")
    super().__init__(config, process_index, process_count, splits["train"].num_examples,
                     splits["validation"].num_examples, num_classes)
    # Every process must yield as many eval batches as the one with the largest part.
    self.num_eval_batches = max(1, math.ceil(max(self._eval_sizes) /
                                             self.per_process_eval_batch_size))
    self.shuffle_buffer = config.data.shuffle_buffer

  def _read(self, split, shuffle_seed=None):
    tfds = self._tfds
    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False,
                                  interleave_cycle_length=16 if shuffle_seed is not None else 1)
    return self.builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None,
                                   read_config=read_config,
                                   decoders={"image": tfds.decode.SkipDecoding()})

  def train_batches(self, epoch, start_step=0):
    tf = import_tf()
    b, size = self.per_process_batch_size, self.image_size
    start = self._check_start(start_step)
    # Per-process seed: each process shuffles its own records; the key fixes this epoch's order.
    key = epoch_key(self.seed, epoch, _ORDER, self.process_index)
    ds = self._read(self._train_split, shuffle_seed=key % (2 ** 31))
    ds = ds.shuffle(self.shuffle_buffer, seed=key, reshuffle_each_iteration=False)
    ds = ds.take(self.steps_per_epoch * b).enumerate().skip(start * b)
    aug = epoch_key(self.seed, epoch, _AUGMENT, self.process_index)

    def load(position, example):
      seed = tf.stack([tf.constant(aug, tf.int64), position])
      return {"images": tf_preprocess(tf, example["image"], seed, True, size, self.dtype),
              "labels": tf.cast(example["label"], tf.int32)}

    ds = ds.map(load, num_parallel_calls=_parallel(tf, self.num_workers))
    return _tf_finish(tf, ds, b, self.num_workers)

  def eval_batches(self):
    tf = import_tf()
    b, size = self.per_process_eval_batch_size, self.image_size
    total = self.num_eval_batches * b
    ds = self._read(self._eval_split).map(
        lambda ex: {"images": tf_preprocess(tf, ex["image"], tf.zeros([2], tf.int64), False, size,
                                            self.dtype),
                    "labels": tf.cast(ex["label"], tf.int32), "mask": True},
        num_parallel_calls=_parallel(tf, self.num_workers))
    # Padding examples (mask False) make every process's part the same number of full batches.
    padding = tf.data.Dataset.from_tensors({
        "images": tf.zeros([size, size, 3], ds.element_spec["images"].dtype),
        "labels": tf.constant(0, tf.int32), "mask": False}).repeat()
    return _tf_finish(tf, ds.concatenate(padding).take(total), b, self.num_workers)


# ---------------------------------------------------------------------------------------------

SOURCES = {"synthetic": SyntheticData, "folder": FolderData, "tfds": TfdsData}


def make_imagenet(config, process_index: int, process_count: int) -> ImageNetData:
  """The `ImageNetData` of `config.data.source` for one process.

  Reads config.data (source, path, data_dir, image_size, num_workers, shuffle_buffer, backend,
  synthetic_*_size), config.train (batch_size, eval_batch_size, seed) and config.model (dtype of
  the images, num_classes).
  """
  source = config.data.source
  if source not in SOURCES:
    raise ConfigError(f"data.source={source!r} is unknown for ImageNet: use one of "
                      f"{', '.join(SOURCES)}")
  return SOURCES[source](config, process_index, process_count)
