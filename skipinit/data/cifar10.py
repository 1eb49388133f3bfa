"""CIFAR-10 as uint8 numpy arrays, from tfds, a class-folder tree / .tar.gz of one, or synthetic data.

The whole data set (150 MB as uint8) is put on the accelerator by the trainer, and augmented there
(`skipinit.data.augment`), so nothing here needs TensorFlow except the `tfds` source, which
imports it lazily.
"""

import hashlib
import io
import os
import tarfile

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
  from PIL import Image, UnidentifiedImageError  # imported here: only the folder source decodes
  try:
    with Image.open(io.BytesIO(data)) as im:
      arr = np.asarray(im.convert("RGB"), np.uint8)
  except (UnidentifiedImageError, OSError) as e:
    raise DataError(f"{where} is not a readable image ({type(e).__name__}: {e}): repair or "
                    "remove it") from None
  if arr.shape != IMAGE_SHAPE:
    raise DataError(f"{where}: expected {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]} RGB images, found one of "
                    f"shape {arr.shape}")
  return arr


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
            yield split, cls, full, lambda full=full: open(full, "rb").read()
          elif not name.startswith("."):
            skipped.append(full)
    return
  with tarfile.open(path, "r:*") as tar:
    members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
    for m in members:
      parts = m.name.strip("./").split("/")
      if len(parts) >= 3 and parts[-3] in ("train", "test") and parts[-2] in CLASSES:
        if _is_image(parts[-1]):
          yield parts[-3], parts[-2], f"{path}:{m.name}", lambda m=m: tar.extractfile(m).read()
        elif not parts[-1].startswith("."):
          skipped.append(f"{path}:{m.name}")


def read_folder(path: str) -> dict:
  """Decodes a CIFAR-10 class-folder tree or .tar.gz of one: {split: (images uint8 NHWC, labels)}.

  Layout: {train,test}/<class>/<file>.jpg|png with the tfds class order (CLASSES) as labels.
  """
  path = os.path.expanduser(path)
  if not os.path.exists(path):
    raise DataError(f"data.path={path!r} does not exist: give a CIFAR-10 class-folder tree "
                    "(train/<class>/*.jpg, test/<class>/*.jpg) or a .tar.gz of one")
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
                      f"with classes {', '.join(CLASSES)}")
  return {s: (np.stack(images[s]), np.asarray(labels[s], np.int32)) for s in ("train", "test")}


def _cache_file(path: str, cache_dir: str) -> str:
  st = os.stat(path)
  key = hashlib.sha1(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
  return os.path.join(os.path.expanduser(cache_dir), f"cifar10_{key[:16]}.npz")


def load_folder(path: str, cache_dir: str | None = "~/.cache/skipinit") -> dict:
  """`read_folder`, cached as .npz (decoding 60,000 JPEGs takes a while; loading the cache does not).

  Only archives are cached (keyed by path, size and mtime): a directory's contents can change
  without its own mtime changing, so it is decoded each time.
  """
  path = os.path.expanduser(path)
  if not os.path.exists(path):
    return read_folder(path)  # raises the clear DataError
  cache = _cache_file(path, cache_dir) if cache_dir and not os.path.isdir(path) else None
  if cache and os.path.exists(cache):
    try:
      with np.load(cache) as z:
        return {s: (z[f"{s}_images"], z[f"{s}_labels"]) for s in ("train", "test")}
    except (OSError, ValueError, KeyError):
      pass  # unreadable cache: decode again and rewrite it
  data = read_folder(path)
  if cache:
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    # Atomic: two runs decoding at once never see half a file.
    files.atomic_write(cache, lambda f: np.savez(f, **{
        f"{s}_{k}": v for s, (im, lb) in data.items() for k, v in (("images", im), ("labels", lb))}))
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
    return load_folder(data_config.path, data_config.get("cache_dir") or None)
  if source == "tfds":
    return load_tfds(data_config.get("data_dir") or None)
  if source == "synthetic":
    return synthetic(data_config.synthetic_train_size, data_config.synthetic_test_size)
  raise DataError(f"data.source={source!r} is unknown: use tfds, folder or synthetic")
