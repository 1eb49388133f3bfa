"""The CIFAR-10 folder source on real images: trees, archives, stray files, bad images, the cache."""

import os
import shutil
import tarfile

import numpy as np
import pytest

from skipinit import DataError
from skipinit.data import cifar10

from conftest import SAMPLE_DIR


@pytest.fixture(scope="module")
def reference():
  return cifar10.read_folder(SAMPLE_DIR)


def _copy_with_strays(tmp_path):
  """The sample tree plus what real folders hold: Finder files, macOS tar twins, notes."""
  tree = tmp_path / "cifar"
  shutil.copytree(SAMPLE_DIR, tree)
  (tree / "train" / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
  (tree / "train" / "cat" / "._0005.jpg").write_bytes(b"\0\5\26\7 AppleDouble")
  (tree / "test" / "dog" / "notes.txt").write_text("checked by hand")
  return tree


def test_stray_files_in_a_tree_or_an_archive_are_skipped(tmp_path, reference):
  tree = _copy_with_strays(tmp_path)
  archive = tmp_path / "cifar.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(tree, arcname="cifar10")
  for path in (tree, archive):
    data = cifar10.read_folder(str(path))
    for split in ("train", "test"):
      np.testing.assert_array_equal(data[split][0], reference[split][0])
      np.testing.assert_array_equal(data[split][1], reference[split][1])
  for split in ("train", "test"):
    files = sum(len(f) for _, _, f in os.walk(os.path.join(SAMPLE_DIR, split)))
    assert len(reference[split][1]) == files


def test_an_unreadable_image_is_named_in_one_error(tmp_path):
  tree = _copy_with_strays(tmp_path)
  bad = tree / "train" / "frog" / "0036.jpg"
  bad.write_bytes(b"not a jpeg")
  with pytest.raises(DataError, match=f"{bad} is not a readable image"):
    cifar10.read_folder(str(tree))


def test_archives_are_decoded_once_then_read_from_the_cache(tmp_path, reference):
  archive = tmp_path / "cifar.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(SAMPLE_DIR, arcname="cifar10")
  cache = tmp_path / "cache"
  first = cifar10.load_folder(str(archive), cache_dir=str(cache))
  (cached,) = os.listdir(cache)
  np.testing.assert_array_equal(first["train"][0], reference["train"][0])
  # The cache, not the archive, serves the second load: break the archive's images in place
  # (same size and mtime keep the cache key) and the arrays still come back whole.
  stat = os.stat(archive)
  archive.write_bytes(b"\0" * stat.st_size)
  os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  second = cifar10.load_folder(str(archive), cache_dir=str(cache))
  np.testing.assert_array_equal(second["test"][0], reference["test"][0])
  assert os.listdir(cache) == [cached]
