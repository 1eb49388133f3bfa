"""CIFAR-10 as uint8 numpy arrays, from tfds, local files, or synthetic data.

Local files (`data.source=folder`, `data.path`), the format detected from the contents:
  * a class-folder tree {train,test}/<class>/*.jpg|png, or a .tar.gz / .tar of one;
  * the official python archive cifar-10-python.tar.gz, or its extracted cifar-10-batches-py/
    (torchvision's copy): pickled batches data_batch_1..5 and test_batch.
An archive is decoded once and cached as .npz (`load_folder`). Anything damaged (not an archive, a
truncated download, a missing batch, an unreadable image) is a DataError naming the file.

The whole data set (150 MB as uint8) is put on the accelerator by the trainer, and augmented there
(`skipinit.data.augment`), so nothing here needs TensorFlow except the `tfds` source, which
imports it lazily.
"""

import contextlib
import fcntl
import hashlib
import io
import os
import pickle
import tarfile
import time
import zlib

import numpy as np
from absl import logging

from skipinit import files
from skipinit.errors import DataError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Per-channel statistics of the CIFAR-10 training set (0..255 scale), used for normalization.
MEAN = np.array([125.3, 123.0, 113.9], np.float32)
STD = np.array([63.0, 62.1, 66.7], np.float32)
IMAGE_SHAPE = (32, 32, 3)


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm")


def _is_image(name: str) -> bool:
  """Image files by extension; hidden files (.DS_Store, macOS tar's ._* twins) are never images."""
  return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _decode(data: bytes, where: str) -> np.ndarray:
  from PIL import Image  # imported here: only the folder source decodes
  try:
    with Image.open(io.BytesIO(data)) as im:
      arr = np.asarray(im.convert("RGB"), np.uint8)
  # PIL raises UnidentifiedImageError/OSError for most damage, but ValueError, SyntaxError
  # (broken PNG chunks) or EOFError for some truncations, and DecompressionBombError.
  except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
    raise DataError(f"{where} is not a readable image ({type(e).__name__}: {e}): repair or "
                    "remove it") from None
  if arr.shape != IMAGE_SHAPE:
    raise DataError(f"{where}: expected {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]} RGB images, found one of "
                    f"shape {arr.shape}")
  return arr


def _read_file(full: str) -> bytes:
  try:
    with open(full, "rb") as f:
      return f.read()
  except OSError as e:
    raise DataError(f"{full} cannot be read ({e.strerror or e}): check its permissions") from None


def _walk_members(path: str, skipped: list):
  """Yields (split, class_name, where, read_bytes) for every image under train/ and test/;
  appends to `skipped` the other visible files found in the class folders."""
  if os.path.isdir(path):
    for split in ("train", "test"):
      for cls in CLASSES:
        folder = os.path.join(path, split, cls)
        if not os.path.isdir(folder):
          continue
        for name in sorted(os.listdir(folder)):
          full = os.path.join(folder, name)
          if _is_image(name):
            yield split, cls, full, lambda full=full: _read_file(full)
          elif not name.startswith("."):
            skipped.append(full)
    return
  with _open_archive(path) as tar:
    members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
    for m in members:
      parts = m.name.strip("./").split("/")
      if len(parts) >= 3 and parts[-3] in ("train", "test") and parts[-2] in CLASSES:
        if _is_image(parts[-1]):
          yield parts[-3], parts[-2], f"{path}:{m.name}", lambda m=m: _extract(tar, m, path)
        elif not parts[-1].startswith("."):
          skipped.append(f"{path}:{m.name}")


# What a damaged archive raises from tarfile, gzip, bz2 or lzma while it is read: a file that is not
# an archive (ReadError), a truncated download (EOFError "Compressed file ended before the
# end-of-stream marker", ReadError "unexpected end of data"), flipped bits (zlib.error, BadGzipFile,
# an OSError).
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


def _damaged_archive(path: str, e: Exception) -> DataError:
  return DataError(f"{path} is not a readable .tar.gz or .tar archive ({type(e).__name__}: {e}): "
                   "a download cut short or damaged? Download it again, or give data.path a "
                   "CIFAR-10 folder")


@contextlib.contextmanager
def _open_archive(path: str):
  try:
    tar = tarfile.open(path, "r:*")
  except _ARCHIVE_ERRORS as e:
    raise _damaged_archive(path, e) from None
  try:
    with tar:
      yield tar
  except DataError:  # (a FileNotFoundError, hence an OSError: already says what is wrong)
    raise
  except _ARCHIVE_ERRORS as e:
    raise _damaged_archive(path, e) from None


def _extract(tar, member, path: str) -> bytes:
  """A member's bytes; called by the reader, outside `_open_archive`'s error translation."""
  try:
    return tar.extractfile(member).read()
  except _ARCHIVE_ERRORS as e:
    raise _damaged_archive(path, e) from None


# ------------------------------------------------------------------------- the python archive

PYTHON_DIR = "cifar-10-batches-py"
PYTHON_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}


class _ArraysOnly(pickle.Unpickler):
  """Unpickles the official batches, a dict of bytes, lists and one numpy array, and nothing else.

  A pickle can name any callable and run it on load: a downloaded file is not trusted with that.
  The batches were written by Python 2's cPickle against numpy.core, now numpy._core.
  """

  ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
             ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}

  def find_class(self, module, name):
    if (module, name) not in self.ALLOWED:
      raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR-10 batch never does")
    if module == "numpy.core.multiarray" and hasattr(np, "_core"):
      module = "numpy._core.multiarray"  # numpy 2's name: the old one warns on import
    return super().find_class(module, name)


def _python_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
  """(images NHWC uint8, labels int32) of one pickled batch: b"data" is N x 3072, each row the
  32x32 red, then green, then blue plane, row-major; b"labels" N ints in 0..9."""
  try:
    batch = _ArraysOnly(io.BytesIO(data), encoding="bytes").load()
  except Exception as e:  # a damaged pickle raises nearly anything (EOFError, KeyError, ...)
    raise DataError(f"{where} is not a CIFAR-10 python batch ({type(e).__name__}: {e}): the "
                    "archive is damaged; download it again") from None
  images = batch.get(b"data") if isinstance(batch, dict) else None
  labels = batch.get(b"labels") if isinstance(batch, dict) else None
  if not isinstance(images, np.ndarray) or images.ndim != 2 or images.shape[1] != 3 * 32 * 32:
    raise DataError(f"{where}: expected b'data', an N x 3072 uint8 array, found "
                    f"{getattr(images, 'shape', type(images).__name__)}: is this CIFAR-10 (not "
                    "CIFAR-100)?")
  labels = np.asarray(labels if labels is not None else [], np.int64)
  if labels.shape != (len(images),) or labels.min(initial=0) < 0 or labels.max(initial=0) >= 10:
    raise DataError(f"{where}: expected b'labels', {len(images)} integers in 0..9, found "
                    f"{labels.shape[0] if labels.ndim else 0} (CIFAR-100's batches say b'fine_labels')")
  images = np.asarray(images, np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels.astype(np.int32)


def _python_layout_dir(path: str) -> str | None:
  """The directory holding the python batches, if `path` is cifar-10-batches-py or its parent."""
  for d in (path, os.path.join(path, PYTHON_DIR)):
    if os.path.isfile(os.path.join(d, "data_batch_1")) or os.path.isfile(os.path.join(d, "test_batch")):
      return d
  return None


def _check_label_names(meta: bytes | None, where: str) -> None:
  if meta is None:
    return  # batches.meta only names the classes; the labels are what count
  try:
    names = _ArraysOnly(io.BytesIO(meta), encoding="bytes").load().get(b"label_names")
    names = tuple(n.decode() for n in names)
  except Exception as e:
    raise DataError(f"{where} is not CIFAR-10's class list ({type(e).__name__}: {e})") from None
  if names != CLASSES:
    raise DataError(f"{where} names the classes {', '.join(names)}; CIFAR-10's are "
                    f"{', '.join(CLASSES)}")


def read_python(path: str) -> dict:
  """The official python version: cifar-10-python.tar.gz or an extracted cifar-10-batches-py/."""
  blobs, meta = {}, None
  if os.path.isdir(path):
    d = _python_layout_dir(path) or path
    for name in (*PYTHON_BATCHES["train"], *PYTHON_BATCHES["test"]):
      full = os.path.join(d, name)
      if os.path.isfile(full):
        blobs[name] = (full, _read_file(full))
    if os.path.isfile(os.path.join(d, "batches.meta")):
      meta = _read_file(os.path.join(d, "batches.meta"))
    where_meta = os.path.join(d, "batches.meta")
  else:
    wanted = set(PYTHON_BATCHES["train"] + PYTHON_BATCHES["test"] + ("batches.meta",))
    with _open_archive(path) as tar:
      for m in tar:  # in archive order: a backwards seek in a .gz decompresses it again
        name = m.name.rsplit("/", 1)[-1]
        if m.isfile() and name in wanted:
          data = tar.extractfile(m).read()
          if name == "batches.meta":
            meta = data
          else:
            blobs[name] = (f"{path}:{m.name}", data)
    where_meta = f"{path}:{PYTHON_DIR}/batches.meta"
  missing = [n for n in (*PYTHON_BATCHES["train"], *PYTHON_BATCHES["test"]) if n not in blobs]
  if missing:
    raise DataError(f"{path} lacks the CIFAR-10 python batches {', '.join(missing)}: expected "
                    f"{PYTHON_DIR}/data_batch_1..5 and test_batch (an incomplete download or "
                    "extraction?)")
  _check_label_names(meta, where_meta)
  out = {}
  for split, names in PYTHON_BATCHES.items():
    parts = [_python_batch(blobs[n][1], blobs[n][0]) for n in names]
    out[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
  return out


def _is_python_archive(path: str) -> bool:
  """Whether a tar archive holds the python batches (rather than a class-folder tree)."""
  with _open_archive(path) as tar:
    for m in tar:  # stops at the first batch: the official archive starts with them
      name = m.name.rsplit("/", 1)[-1]
      if m.isfile() and name in PYTHON_BATCHES["train"] + PYTHON_BATCHES["test"]:
        return True
      if m.isfile() and _is_image(name):
        return False
  return False


# --------------------------------------------------------------------------------- any format

def read_folder(path: str) -> dict:
  """Decodes CIFAR-10 from local files: {split: (images uint8 NHWC, labels int32)}.

  A class-folder tree {train,test}/<class>/<file>.jpg|png (labels in the tfds class order, CLASSES)
  or a .tar.gz of one; or the official python archive / its extracted cifar-10-batches-py.
  """
  path = os.path.expanduser(path)
  if not os.path.exists(path):
    raise DataError(f"data.path={path!r} does not exist: give a CIFAR-10 class-folder tree "
                    "(train/<class>/*.jpg, test/<class>/*.jpg), a .tar.gz of one, or the python "
                    "archive cifar-10-python.tar.gz (or its extracted cifar-10-batches-py)")
  if os.path.isdir(path) and _python_layout_dir(path):
    return read_python(path)
  if not os.path.isdir(path) and _is_python_archive(path):
    return read_python(path)
  images = {"train": [], "test": []}
  labels = {"train": [], "test": []}
  skipped = []
  for split, cls, where, read in _walk_members(path, skipped):
    images[split].append(_decode(read(), where))
    labels[split].append(CLASSES.index(cls))
  if skipped:
    logging.warning("skipped %d files that are not images (by extension: %s), e.g. %s",
                    len(skipped), " ".join(IMAGE_EXTENSIONS), skipped[0])
  for split in ("train", "test"):
    if not images[split]:
      raise DataError(f"no {split} images found under {path!r}: expected {split}/<class>/<image> "
                      f"with classes {', '.join(CLASSES)}, or the python archive's "
                      f"{PYTHON_DIR}/data_batch_1..5 and test_batch")
  return {s: (np.stack(images[s]), np.asarray(labels[s], np.int32)) for s in ("train", "test")}


# ------------------------------------------------------------------------------------ the cache

def _cache_file(path: str, cache_dir: str) -> str:
  st = os.stat(path)
  key = hashlib.sha1(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
  return os.path.join(os.path.expanduser(cache_dir), f"cifar10_{key[:16]}.npz")


def _read_cache(cache: str) -> dict | None:
  """The cached arrays, or None (logged) when the file is damaged: it is then rebuilt, not trusted.

  np.load checks the CRC-32 of every array it reads (an .npz is a zip), so flipped bits fail here
  as well as a truncated file; the shapes are checked too.
  """
  if not os.path.exists(cache):
    return None
  start = time.time()
  try:
    with np.load(cache, allow_pickle=False) as z:
      data = {s: (z[f"{s}_images"], z[f"{s}_labels"]) for s in ("train", "test")}
    for split, (im, lb) in data.items():
      if (im.dtype != np.uint8 or im.ndim != 4 or im.shape[1:] != IMAGE_SHAPE
          or lb.shape != (len(im),) or len(im) == 0):
        raise ValueError(f"{split} arrays of shapes {im.shape} {im.dtype}, {lb.shape}")
  except Exception as e:  # whatever a damaged file raises (BadZipFile, ValueError, EOFError, ...)
    logging.warning("the decoded-data cache %s is damaged (%s: %s): decoding the data again",
                    cache, type(e).__name__, e)
    return None
  logging.info("CIFAR-10 read from the cache %s (%d train, %d test images) in %.1f s", cache,
               len(data["train"][1]), len(data["test"][1]), time.time() - start)
  return data


@contextlib.contextmanager
def _exclusive(lock_path: str):
  """An flock beside the cache while one process decodes: the sweep's other workers wait for
  the cache instead of decoding the same archive at the same time (a minute of CPU each)."""
  fd = None
  try:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      logging.info("another process is decoding this data set into the cache: waiting for it")
      fcntl.flock(fd, fcntl.LOCK_EX)
  except OSError:
    pass  # no lock (read-only cache dir, a file system without flock): decode without one
  try:
    yield
  finally:
    if fd is not None:
      os.close(fd)


def _write_cache(cache: str, data: dict) -> None:
  start = time.time()
  try:
    # Atomic: a reader (another worker) sees no file or the whole file, never half of one.
    files.atomic_write(cache, lambda f: np.savez(f, **{
        f"{s}_{k}": v for s, (im, lb) in data.items() for k, v in (("images", im), ("labels", lb))}))
  except OSError as e:
    logging.warning("could not write the decoded-data cache %s (%s): the next run decodes the "
                    "archive again (set data.cache_dir to a writable directory)", cache, e)
    return
  logging.info("wrote the decoded-data cache %s (%.0f MB) in %.1f s", cache,
               os.path.getsize(cache) / 2**20, time.time() - start)


def load_folder(path: str, cache_dir: str | None = "~/.cache/skipinit") -> dict:
  """`read_folder`, cached as .npz (decoding 60,000 JPEGs takes a while; loading the cache does not).

  Only archives are cached (keyed by path, size and mtime): a directory's contents can change
  without its own mtime changing, so it is decoded each time. Concurrent processes (a sweep's
  workers) share one cache: the first decodes, the others wait for its file.
  """
  path = os.path.expanduser(path)
  if not os.path.exists(path):
    return read_folder(path)  # raises the clear DataError
  cache = _cache_file(path, cache_dir) if cache_dir and not os.path.isdir(path) else None
  if not cache:
    return _timed_read(path, None)
  data = _read_cache(cache)
  if data is not None:
    return data
  try:
    os.makedirs(os.path.dirname(cache), exist_ok=True)
  except OSError:
    pass  # reported by _write_cache
  lock = os.path.join(os.path.dirname(cache), "." + os.path.basename(cache) + ".lock")
  with _exclusive(lock):
    data = _read_cache(cache)  # another process may have written it while this one waited
    if data is None:
      data = _timed_read(path, cache)
      _write_cache(cache, data)
  return data


def _timed_read(path: str, cache: str | None) -> dict:
  start = time.time()
  logging.info("decoding CIFAR-10 from %s%s", path,
               f" (once: then read from the cache {cache})" if cache else "")
  data = read_folder(path)
  logging.info("decoded %d train and %d test images in %.1f s", len(data["train"][1]),
               len(data["test"][1]), time.time() - start)
  return data


def load_tfds(data_dir: str | None = None) -> dict:
  """CIFAR-10 from tensorflow-datasets (needs TensorFlow and, the first time, the internet)."""
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise DataError("data.source=tfds needs tensorflow-datasets (pip install -e .[imagenet]); "
                    "without it use data.source=folder with data.path=<cifar10 class folders or "
                    ".tar.gz>") from None
  try:
    ds = tfds.as_numpy(tfds.load("cifar10", data_dir=data_dir or None, batch_size=-1))
  except Exception as e:  # tfds raises many types when offline (DownloadError, ConnectionError...)
    raise DataError(
        f"tfds could not load cifar10 ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
        "Offline? Use data.source=folder with data.path=<a CIFAR-10 class-folder tree or .tar.gz "
        "of one>, e.g. the JPEG copy cifar10-jpeg.tar.gz") from None
  return {s: (ds[s]["image"].astype(np.uint8), ds[s]["label"].astype(np.int32))
          for s in ("train", "test")}


def synthetic(train_size: int, test_size: int, seed: int = 0) -> dict:
  """Learnable fake CIFAR: each class has its own colour and smooth pattern, plus pixel noise."""
  rng = np.random.default_rng(seed)
  colours = rng.uniform(60, 195, size=(len(CLASSES), 1, 1, 3))
  ramp = np.linspace(-1, 1, IMAGE_SHAPE[0])
  angles = rng.uniform(0, np.pi, size=len(CLASSES))
  waves = np.sin(4 * (np.cos(angles)[:, None, None] * ramp[None, :, None]
                      + np.sin(angles)[:, None, None] * ramp[None, None, :]))
  prototypes = colours + 40 * waves[..., None]
  out = {}
  for split, n in (("train", train_size), ("test", test_size)):
    labels = rng.integers(0, len(CLASSES), size=n).astype(np.int32)
    noise = rng.normal(0, 50, size=(n,) + IMAGE_SHAPE)
    out[split] = (np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8), labels)
  return out


def load(data_config) -> dict:
  """The CIFAR-10 arrays a `data` config selects: {"train"|"test": (uint8 NHWC, int32 labels)}."""
  source = data_config.source
  if source == "folder":
    return load_folder(data_config.path, data_config.cache_dir or None)
  if source == "tfds":
    return load_tfds(data_config.data_dir or None)
  if source == "synthetic":
    return synthetic(data_config.synthetic_train_size, data_config.synthetic_test_size)
  raise DataError(f"data.source={source!r} is unknown: use tfds, folder or synthetic")
