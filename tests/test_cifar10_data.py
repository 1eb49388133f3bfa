"""The CIFAR-10 folder source on real images: trees, archives, stray files, bad images, the cache."""

import io
import logging
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from skipinit import DataError
from skipinit.data import cifar10

from conftest import ROOT, SAMPLE_DIR


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
  (cached,) = _npz(cache)
  np.testing.assert_array_equal(first["train"][0], reference["train"][0])
  # The cache, not the archive, serves the second load: break the archive's images in place
  # (same size and mtime keep the cache key) and the arrays still come back whole.
  stat = os.stat(archive)
  archive.write_bytes(b"\0" * stat.st_size)
  os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  second = cifar10.load_folder(str(archive), cache_dir=str(cache))
  np.testing.assert_array_equal(second["test"][0], reference["test"][0])
  assert _npz(cache) == [cached]


def _npz(cache_dir):
  return [n for n in os.listdir(cache_dir) if n.endswith(".npz")]


# ----------------------------------------------------------------------- damaged data (issue 19)

def _sample_archive(tmp_path, name="cifar.tar.gz"):
  archive = tmp_path / name
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(SAMPLE_DIR, arcname="cifar10")
  return archive


@pytest.mark.parametrize("damage", ["not_gzip", "truncated", "no_classes", "bad_image"])
def test_a_damaged_archive_is_one_data_error(tmp_path, damage):
  archive = tmp_path / "cifar.tar.gz"
  if damage == "not_gzip":  # what a failed download often leaves: an HTML page
    archive.write_text("<html><body>404 Not Found</body></html>")
    match = "is not a readable .tar.gz"
  elif damage == "truncated":
    whole = _sample_archive(tmp_path, "whole.tar.gz").read_bytes()
    archive.write_bytes(whole[: len(whole) // 2])
    match = "is not a readable .tar.gz.*download"
  elif damage == "no_classes":
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("nothing here")
    with tarfile.open(archive, "w:gz") as tar:
      tar.add(tmp_path / "notes", arcname="notes")
    match = "no train images found"
  else:
    tree = _copy_with_strays(tmp_path)
    (tree / "test" / "ship" / "0001.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with tarfile.open(archive, "w:gz") as tar:
      tar.add(tree, arcname="cifar10")
    match = r"0001\.png is not a readable image"
  with pytest.raises(DataError, match=match):
    cifar10.load_folder(str(archive), cache_dir=str(tmp_path / "cache"))
  assert not os.path.exists(tmp_path / "cache") or not _npz(tmp_path / "cache")  # nothing cached


def test_an_unreadable_file_in_a_tree_is_one_data_error(tmp_path):
  tree = _copy_with_strays(tmp_path)
  bad = tree / "train" / "bird" / "9999.jpg"
  bad.mkdir()  # what open() cannot read, even as root (a chmod 0 file root still reads)
  with pytest.raises(DataError, match=f"{bad} cannot be read"):
    cifar10.read_folder(str(tree))


@pytest.mark.parametrize("damage", ["flipped_byte", "truncated", "not_npz", "wrong_shape"])
def test_a_damaged_cache_is_rebuilt_not_trusted(tmp_path, reference, damage, caplog):
  archive = _sample_archive(tmp_path)
  cache_dir = tmp_path / "cache"
  cifar10.load_folder(str(archive), cache_dir=str(cache_dir))
  (cache,) = (cache_dir / n for n in _npz(cache_dir))
  raw = bytearray(cache.read_bytes())
  if damage == "flipped_byte":  # inside the train images: the zip's CRC-32 catches it
    raw[len(raw) // 3] ^= 0x40
  elif damage == "truncated":
    raw = raw[: len(raw) // 2]
  elif damage == "not_npz":
    raw = bytearray(b"garbage")
  else:
    buf = io.BytesIO()
    np.savez(buf, train_images=np.zeros((2, 8, 8, 3), np.uint8), train_labels=np.zeros(2, np.int32),
             test_images=np.zeros((1, 32, 32, 3), np.uint8), test_labels=np.zeros(1, np.int32))
    raw = bytearray(buf.getvalue())
  cache.write_bytes(bytes(raw))
  with caplog.at_level(logging.INFO):
    data = cifar10.load_folder(str(archive), cache_dir=str(cache_dir))
  for split in ("train", "test"):
    np.testing.assert_array_equal(data[split][0], reference[split][0])
    np.testing.assert_array_equal(data[split][1], reference[split][1])
  assert "is damaged" in caplog.text and "decoding CIFAR-10 from" in caplog.text
  assert "wrote the decoded-data cache" in caplog.text
  # ... and the rebuilt cache is whole again: the next load reads it.
  caplog.clear()
  with caplog.at_level(logging.INFO):
    cifar10.load_folder(str(archive), cache_dir=str(cache_dir))
  assert "read from the cache" in caplog.text and "decoding" not in caplog.text


_CONCURRENT_LOAD = """
import sys
from absl import logging
logging.set_verbosity(logging.INFO)
from skipinit.data import cifar10
cifar10.load_folder(sys.argv[1], cache_dir=sys.argv[2])
"""


def test_concurrent_loads_decode_once_and_share_the_cache(tmp_path):
  archive = _sample_archive(tmp_path)
  env = dict(os.environ, PYTHONPATH=ROOT)
  procs = [subprocess.Popen([sys.executable, "-c", _CONCURRENT_LOAD, str(archive),
                             str(tmp_path / "cache")], stderr=subprocess.PIPE, text=True, env=env)
           for _ in range(2)]
  logs = [p.communicate(timeout=120)[1] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], logs
  assert sum("decoding CIFAR-10 from" in log for log in logs) == 1, logs
  assert sum("CIFAR-10 read from the cache" in log for log in logs) == 1, logs
  assert len(_npz(tmp_path / "cache")) == 1


def test_train_script_reports_a_damaged_archive_in_one_line(tmp_path):
  archive = tmp_path / "cifar10-jpeg.tar.gz"
  archive.write_text("<html>404</html>")
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", "train.py"),
       f"--config={ROOT}/configs/cifar10_wrn.py:smoke,source=folder,path={archive}",
       f"--workdir={tmp_path / 'run'}", f"--config.data.cache_dir={tmp_path / 'cache'}"],
      capture_output=True, text=True, timeout=300)
  assert out.returncode == 2, out.stderr
  errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "is not a readable .tar.gz" in errors[0], out.stderr
  assert "Traceback" not in out.stderr
  assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- the python archive (issue 18)

class _Py2Pickler(pickle._Pickler):
  """Pickles as Python 2's cPickle wrote the official batches: bytes as str opcodes (BINSTRING),
  numpy arrays through numpy.core.multiarray._reconstruct (rewritten below)."""

  def save_bytes(self, obj):
    if len(obj) < 256:
      self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
    else:
      self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
    self.memoize(obj)

  dispatch = dict(pickle._Pickler.dispatch)
  dispatch[bytes] = save_bytes


def _py2_pickle(obj) -> bytes:
  buf = io.BytesIO()
  _Py2Pickler(buf, protocol=2).dump(obj)
  return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _python_batches(reference):
  """The sample in the official layout: {file name: pickled bytes}, 5 train batches + test."""
  def batch(images, labels, name):
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)  # R plane, G, B, row-major
    return _py2_pickle({b"batch_label": name.encode(), b"labels": [int(l) for l in labels],
                        b"data": rows, b"filenames": [b"img%d.png" % i for i in range(len(labels))]})
  tr_im, tr_lb = reference["train"]
  out = {f"data_batch_{i + 1}": batch(im, lb, f"training batch {i + 1} of 5")
         for i, (im, lb) in enumerate(zip(np.array_split(tr_im, 5), np.array_split(tr_lb, 5)))}
  out["test_batch"] = batch(*reference["test"], "testing batch 1 of 1")
  out["batches.meta"] = _py2_pickle({b"label_names": [c.encode() for c in cifar10.CLASSES],
                                     b"num_cases_per_batch": 80, b"num_vis": 3072})
  out["readme.html"] = b"<meta HTTP-EQUIV='REFRESH' content='0; url=...'>"
  return out


def _write_python(tmp_path, batches, as_archive=True):
  d = tmp_path / "extracted" / cifar10.PYTHON_DIR
  d.mkdir(parents=True)
  for name, blob in batches.items():
    (d / name).write_bytes(blob)
  if not as_archive:
    return d
  archive = tmp_path / "cifar-10-python.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(d, arcname=cifar10.PYTHON_DIR)
  return archive


def test_the_python_archive_and_its_extracted_directory(tmp_path, reference):
  batches = _python_batches(reference)
  assert b"cnumpy.core.multiarray\n_reconstruct" in batches["test_batch"]  # as Python 2 wrote it
  archive = _write_python(tmp_path, batches)
  extracted = tmp_path / "extracted" / cifar10.PYTHON_DIR
  # The archive (cached like any archive), the extracted batches, and the folder holding them.
  for path, cache in ((archive, str(tmp_path / "cache")), (extracted, None),
                      (extracted.parent, None), (archive, str(tmp_path / "cache"))):
    data = cifar10.load_folder(str(path), cache_dir=cache)
    for split in ("train", "test"):
      np.testing.assert_array_equal(data[split][0], reference[split][0])
      np.testing.assert_array_equal(data[split][1], reference[split][1])
      assert data[split][0].dtype == np.uint8 and data[split][1].dtype == np.int32


@pytest.mark.parametrize("damage", ["missing_batch", "truncated", "wrong_shape", "cifar100_labels",
                                    "code_in_pickle", "wrong_classes"])
def test_a_damaged_python_archive_is_one_data_error(tmp_path, reference, damage):
  batches = _python_batches(reference)
  if damage == "missing_batch":
    del batches["data_batch_3"]
    match = "lacks the CIFAR-10 python batches data_batch_3"
  elif damage == "wrong_shape":
    batches["data_batch_2"] = _py2_pickle({b"data": np.zeros((4, 1024), np.uint8),
                                           b"labels": [0] * 4})
    match = "data_batch_2: expected b'data', an N x 3072"
  elif damage == "cifar100_labels":
    batches["test_batch"] = _py2_pickle({b"data": np.zeros((4, 3072), np.uint8),
                                         b"fine_labels": [0] * 4})
    match = "test_batch: expected b'labels'"
  elif damage == "code_in_pickle":
    class Evil:
      def __reduce__(self):
        return (os.system, ("touch pwned",))
    batches["data_batch_1"] = pickle.dumps({b"data": Evil()}, protocol=2)
    match = "data_batch_1 is not a CIFAR-10 python batch.*never does"
  elif damage == "wrong_classes":
    batches["batches.meta"] = _py2_pickle({b"label_names": [b"apple"] * 10})
    match = "batches.meta names the classes apple"
  archive = _write_python(tmp_path, batches)
  if damage == "truncated":
    whole = archive.read_bytes()
    archive.write_bytes(whole[: len(whole) * 2 // 3])
    match = "is not a readable .tar.gz"
  with pytest.raises(DataError, match=match):
    cifar10.load_folder(str(archive), cache_dir=str(tmp_path / "cache"))
  if damage != "truncated":  # the extracted directory says the same
    with pytest.raises(DataError, match=match.split(":")[0].split(" is")[0]):
      cifar10.load_folder(str(tmp_path / "extracted"), cache_dir=None)
  assert not os.path.exists("pwned")
