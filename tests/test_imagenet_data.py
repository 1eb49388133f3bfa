"""ImageNet input (PAPER.md section 4): config, per-host shards, eval masks, sources, clear errors.

A tiny fake ImageNet folder (3 classes of random JPEGs of varied sizes, one PNG, one grayscale
JPEG) stands in for the real data. The PIL decoder and the synthetic source need no TensorFlow;
the tf.data and tfds tests run when `pip install -e .[imagenet]` is installed and skip otherwise.
"""

import io
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from skipinit import config as cfg_lib
from skipinit.data import imagenet
from skipinit.errors import ConfigError, DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = ((96, 72), (72, 96), (120, 80), (64, 64), (100, 75))
BACKENDS = ["pil", "tf"]


def _load(path):
  return cfg_lib.import_file(os.path.join(REPO, path))


CONFIG = _load("configs/imagenet_resnet.py")


def _needs_tf():
  pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """train: 3 classes x 5 images (15), val: 3 x 3 (9), incl. a PNG and a grayscale JPEG."""
  root = str(tmp_path_factory.mktemp("fake_imagenet"))
  imagenet.write_fake_imagenet(root, num_classes=3, train_per_class=5, val_per_class=3, sizes=SIZES)
  rng = np.random.default_rng(1)
  os.remove(os.path.join(root, "train", "n00000001", "n00000001_4.JPEG"))
  Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(
      os.path.join(root, "train", "n00000001", "n00000001_4.png"))
  Image.fromarray(rng.integers(0, 255, (80, 60), dtype=np.uint8), "L").save(
      os.path.join(root, "val", "n00000002", "n00000002_2.JPEG"))
  return root


def _config(arg):
  return CONFIG.get_config("smoke," + arg)


def _folder_config(folder, backend, extra=""):
  return _config(f"source=folder,path={folder},backend={backend},batch_size=4,eval_batch_size=4,"
                 f"image_size=32{extra}")


def _all(batches):
  return [dict(b) for b in batches]


def _check_backend(backend):
  if backend == "tf":
    _needs_tf()


# --- config -------------------------------------------------------------------------------------

def test_config_protocol_and_lr_follows_batch_size():
  c = CONFIG.get_config("")
  assert (c.model.name, c.model.depth, c.model.width, c.model.num_classes) == ("resnet_v2", 50, 1.0,
                                                                                1000)
  t = c.train
  assert (t.epochs, t.batch_size, t.warmup_epochs, t.schedule) == (90.0, 1024, 5.0, "cosine")
  assert (t.nesterov, t.momentum, t.weight_decay, t.label_smoothing) == (True, 0.9, 1e-4, 0.1)
  assert not t.weight_decay_all and c.data.name == "imagenet2012" and c.data.image_size == 224
  assert t.lr == pytest.approx(0.4)                         # 0.1 * 1024 / 256
  assert CONFIG.get_config("101,batch_size=4096").train.lr == pytest.approx(1.6)
  c.train.batch_size = 256                                  # as --config.train.batch_size does
  assert c.train.lr == pytest.approx(0.1)
  c = CONFIG.get_config("50,lr=0.3,batch_size=4096")        # an explicit lr wins
  assert c.train.lr == pytest.approx(0.3)
  assert cfg_lib.from_json(cfg_lib.to_json(c)).train.lr == pytest.approx(0.3)
  with pytest.raises(ConfigError):
    CONFIG.get_config("50,lr_typo=1")


def test_smoke_config_builds_a_tiny_resnet_v2():
  from skipinit.models import build_model, num_residual_blocks
  c = CONFIG.get_config("smoke,normalizer=skipinit")
  cfg_lib.validate(c, num_devices=1)
  assert (c.model.depth, c.model.width, c.data.source) == (14, 0.125, "synthetic")
  assert num_residual_blocks(c.model) == 4 and build_model(c.model).stem_features == 8


# --- layouts: pure numpy --------------------------------------------------------------------------

def test_train_layout_shards_are_disjoint_and_match_one_process():
  n, batch = 103, 12
  single, single_pos = imagenet.train_layout(n, batch, 0, 1, seed=0, epoch=3)
  parts = [imagenet.train_layout(n, batch, p, 3, seed=0, epoch=3) for p in range(3)]
  seen = np.concatenate([idx for idx, _ in parts])
  assert len(seen) == len(set(seen.tolist())) == (n // batch) * batch
  for step in range(n // batch):                  # the processes' rows make the global batch
    rows = np.concatenate([idx[step * 4:(step + 1) * 4] for idx, _ in parts])
    np.testing.assert_array_equal(rows, single[step * 12:(step + 1) * 12])
    pos = np.concatenate([q[step * 4:(step + 1) * 4] for _, q in parts])
    np.testing.assert_array_equal(pos, single_pos[step * 12:(step + 1) * 12])
  other, _ = imagenet.train_layout(n, batch, 0, 1, seed=0, epoch=4)
  assert not np.array_equal(other, single)


@pytest.mark.parametrize("n,batch,procs", [(9, 4, 2), (50, 8, 4), (8, 8, 1), (3, 8, 2)])
def test_eval_layout_covers_every_example_once(n, batch, procs):
  parts = [imagenet.eval_layout(n, batch, p, procs) for p in range(procs)]
  assert len({len(idx) for idx, _ in parts}) == 1
  kept = np.concatenate([idx[mask] for idx, mask in parts])
  assert sorted(kept.tolist()) == list(range(n))


def test_device_prefetch_yields_global_arrays_in_order():
  import jax
  from jax.sharding import NamedSharding, PartitionSpec
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  n = 2 * jax.device_count()
  batches = [{"images": np.full((n, 2, 2, 3), i, np.float32),
              "labels": np.arange(n, dtype=np.int32)} for i in range(5)]
  out = list(imagenet.device_prefetch(iter(batches), sharding, size=2))
  assert [float(np.asarray(o["images"])[0, 0, 0, 0]) for o in out] == [0.0, 1.0, 2.0, 3.0, 4.0]
  assert isinstance(out[0]["labels"], jax.Array) and out[0]["labels"].sharding == sharding


# --- synthetic: no TensorFlow ---------------------------------------------------------------------

def test_import_and_synthetic_source_need_no_tensorflow(monkeypatch):
  code = ("import sys, skipinit.data.imagenet; "
          "assert 'tensorflow' not in sys.modules and 'tensorflow_datasets' not in sys.modules")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
  monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` now fails
  c = _config("batch_size=8,eval_batch_size=8,image_size=32,synthetic_train_size=40,"
              "synthetic_test_size=13")
  data = [imagenet.make_imagenet(c, p, 2) for p in range(2)]
  d = data[0]
  assert (d.steps_per_epoch, d.per_process_batch_size, d.num_eval_batches) == (5, 4, 2)
  batches = _all(data[0].train_batches(0))
  assert len(batches) == 5 and batches[0]["images"].shape == (4, 32, 32, 3)
  assert batches[0]["images"].dtype == np.float32 and batches[0]["labels"].dtype == np.int32
  x = np.concatenate([b["images"] for b in batches])
  assert abs(x.mean()) < 0.5 and 0.5 < x.std() < 2.0
  assert np.array_equal(_all(data[0].train_batches(0, start_step=3))[0]["labels"],
                        batches[3]["labels"])
  evals = [_all(d.eval_batches()) for d in data]
  assert sum(int(b["mask"].sum()) for e in evals for b in e) == 13


def test_synthetic_bfloat16_and_uint8_outputs():
  import ml_dtypes
  c = _config("image_size=32,dtype=bfloat16")
  images = next(imagenet.make_imagenet(c, 0, 1).train_batches(0))["images"]
  assert images.dtype == ml_dtypes.bfloat16
  c = _config("image_size=32,normalize_on_host=false")
  d = imagenet.make_imagenet(c, 0, 1)
  assert not d.normalized and next(d.train_batches(0))["images"].dtype == np.uint8


# --- folder ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_folder_batches_shapes_and_normalization(folder, backend):
  _check_backend(backend)
  d = imagenet.make_imagenet(_folder_config(folder, backend), 0, 1)
  assert (d.num_train_examples, d.num_eval_examples, d.steps_per_epoch) == (15, 9, 3)
  assert d.backend == backend
  batches = _all(d.train_batches(0))
  assert len(batches) == 3
  for b in batches:
    assert b["images"].shape == (4, 32, 32, 3) and b["images"].dtype == np.float32
    assert b["labels"].dtype == np.int32 and set(b["labels"].tolist()) <= {0, 1, 2}
  x = np.concatenate([b["images"] for b in batches])
  assert abs(x.mean()) < 0.6 and 0.6 < x.std() < 1.6, (x.mean(), x.std())
  c = _folder_config(folder, backend, ",normalize_on_host=false")
  raw = next(imagenet.make_imagenet(c, 0, 1).train_batches(0))["images"]
  assert raw.dtype == np.uint8
  # tf.data normalizes the unrounded resize: at most half a grey level (0.5 / 57) apart.
  np.testing.assert_allclose(imagenet.normalize(raw), batches[0]["images"], atol=0.01)


@pytest.mark.parametrize("backend", BACKENDS)
def test_folder_two_processes_split_each_global_batch(folder, backend):
  """Per-host shards are disjoint, and together they are the one-process batches exactly."""
  _check_backend(backend)
  c = _folder_config(folder, backend)
  single = imagenet.make_imagenet(c, 0, 1)
  procs = [imagenet.make_imagenet(c, p, 2) for p in range(2)]
  assert procs[0].per_process_batch_size == 2 and procs[1].steps_per_epoch == 3
  for epoch in (0, 1):
    want = _all(single.train_batches(epoch))
    got = [_all(p.train_batches(epoch)) for p in procs]
    for step, w in enumerate(want):
      for key in ("images", "labels"):
        np.testing.assert_array_equal(np.concatenate([g[step][key] for g in got]), w[key])
  idx = [imagenet.train_layout(15, 4, p, 2, 0, 0)[0] for p in range(2)]
  assert not set(idx[0].tolist()) & set(idx[1].tolist())
  # Deterministic in (seed, epoch); start_step resumes inside the epoch.
  again = _all(procs[1].train_batches(1))
  resumed = _all(procs[1].train_batches(1, start_step=2))
  np.testing.assert_array_equal(resumed[0]["images"], again[2]["images"])
  first = _all(procs[1].train_batches(0))
  assert not np.array_equal(first[0]["images"], again[0]["images"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_folder_eval_covers_every_example_once(folder, backend):
  _check_backend(backend)
  c = _folder_config(folder, backend)
  listing = imagenet.list_folder(folder)
  want = sorted(listing["eval"][1].tolist())
  procs = [imagenet.make_imagenet(c, p, 2) for p in range(2)]
  evals = [_all(p.eval_batches()) for p in procs]
  assert [len(e) for e in evals] == [3, 3]              # ceil(9 / 4) batches on each process
  for e in evals:
    for b in e:
      assert b["images"].shape == (2, 32, 32, 3) and b["mask"].dtype == bool
  labels = [lab for e in evals for b in e for lab in b["labels"][b["mask"]].tolist()]
  assert sorted(labels) == want
  single = _all(imagenet.make_imagenet(c, 0, 1).eval_batches())
  for k, s in enumerate(single):   # eval is deterministic and independent of the process count
    np.testing.assert_array_equal(np.concatenate([e[k]["images"] for e in evals]), s["images"])
    np.testing.assert_array_equal(np.concatenate([e[k]["mask"] for e in evals]), s["mask"])


def test_pil_and_tf_decoders_agree_on_eval_images(folder):
  _needs_tf()
  pil = _all(imagenet.make_imagenet(_folder_config(folder, "pil"), 0, 1).eval_batches())
  tf_ = _all(imagenet.make_imagenet(_folder_config(folder, "tf"), 0, 1).eval_batches())
  for a, b in zip(pil, tf_):
    np.testing.assert_array_equal(a["labels"], b["labels"])
    # Same center crop; the two libraries' bilinear filters differ (PIL's antialiases).
    assert np.mean(np.abs(a["images"] - b["images"])) < 0.35


# --- clear errors ---------------------------------------------------------------------------------

def test_missing_folder_data_gives_a_clear_error(tmp_path):
  with pytest.raises(DataError, match="train/<wnid>/"):
    imagenet.make_imagenet(_config(f"source=folder,path={tmp_path / 'nope'}"), 0, 1)
  os.makedirs(tmp_path / "train" / "n00000000")
  with pytest.raises(DataError, match="no val/ folder"):
    imagenet.make_imagenet(_config(f"source=folder,path={tmp_path}"), 0, 1)
  os.makedirs(tmp_path / "val" / "n00000000")
  with pytest.raises(DataError, match="no images"):
    imagenet.make_imagenet(_config(f"source=folder,path={tmp_path}"), 0, 1)


def test_batch_not_divisible_by_processes(folder):
  with pytest.raises(ConfigError, match="multiple of the 3 processes"):
    imagenet.make_imagenet(_folder_config(folder, "pil"), 0, 3)


def test_missing_tensorflow_gives_install_hint(monkeypatch, folder):
  monkeypatch.setitem(sys.modules, "tensorflow", None)
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(DataError, match=r"pip install -e \.\[imagenet\]"):
    imagenet.make_imagenet(_config("source=tfds"), 0, 1)
  with pytest.raises(DataError, match=r"pip install -e \.\[imagenet\]"):
    imagenet.make_imagenet(_folder_config(folder, "tf"), 0, 1)
  assert imagenet.make_imagenet(_folder_config(folder, "auto"), 0, 1).backend == "pil"


def test_unprepared_tfds_names_the_tar_files_and_the_script(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(DataError) as e:
    imagenet.make_imagenet(_config(f"source=tfds,data_dir={tmp_path},num_classes=1000"), 0, 1)
  for text in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "scripts/prepare_imagenet.py",
               f"--data_dir={tmp_path}"):
    assert text in str(e.value)


def test_prepare_script_lists_missing_tar_files(tmp_path):
  (tmp_path / "ILSVRC2012_img_val.tar").write_bytes(b"")
  out = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "prepare_imagenet.py"),
                        f"--manual_dir={tmp_path}"], capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 1
  assert "lacks ILSVRC2012_img_train.tar" in out.stderr and "img_val" not in out.stderr
  assert "Traceback" not in out.stderr


# --- tfds: a tiny imagenet2012 prepared by scripts/prepare_imagenet.py from fake tar files ------

def _jpeg(rng, w, h):
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
  return buf.getvalue()


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """imagenet2012 prepared from an ILSVRC-layout manual_dir: 3 synsets x 6 train, 7 val images."""
  pytest.importorskip("tensorflow_datasets")
  manual = tmp_path_factory.mktemp("manual")
  rng = np.random.default_rng(0)
  with tarfile.open(manual / "ILSVRC2012_img_train.tar", "w") as outer:
    for wnid in ("n01440764", "n01443537", "n01484850"):   # labels 0, 1, 2
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode="w") as t:
        for i in range(6):
          _add(t, f"{wnid}_{i}.JPEG", _jpeg(rng, 60 + 10 * i, 50))
      _add(outer, f"{wnid}.tar", inner.getvalue())
  with tarfile.open(manual / "ILSVRC2012_img_val.tar", "w") as t:
    for i in range(1, 8):
      _add(t, f"ILSVRC2012_val_{i:08d}.JPEG", _jpeg(rng, 70, 60))
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  prepare = _load("scripts/prepare_imagenet.py")
  builder = prepare.prepare(str(manual), data_dir)
  assert builder.info.splits["train"].num_examples == 18
  return data_dir


def test_tfds_source_per_process_batches_and_eval(tfds_dir):
  import tensorflow_datasets as tfds
  c = _config(f"source=tfds,data_dir={tfds_dir},num_classes=1000,batch_size=4,eval_batch_size=4,"
              "image_size=32")
  procs = [imagenet.make_imagenet(c, p, 2) for p in range(2)]
  assert (procs[0].num_train_examples, procs[0].num_eval_examples) == (18, 7)
  assert procs[0].steps_per_epoch == 4 and procs[0].num_eval_batches == 2
  for d in procs:
    batches = _all(d.train_batches(0))
    assert len(batches) == 4
    for b in batches:
      assert b["images"].shape == (2, 32, 32, 3) and b["images"].dtype == np.float32
      assert set(b["labels"].tolist()) <= {0, 1, 2}
    x = np.concatenate([b["images"] for b in batches])
    assert abs(x.mean()) < 0.6 and 0.6 < x.std() < 1.6
    again = _all(d.train_batches(0, start_step=1))
    np.testing.assert_array_equal(again[0]["images"], batches[1]["images"])
  ds = tfds.builder("imagenet2012", data_dir=tfds_dir).as_dataset(split="validation")
  want = sorted(int(ex["label"]) for ex in tfds.as_numpy(ds))
  evals = [_all(d.eval_batches()) for d in procs]
  assert [len(e) for e in evals] == [2, 2]
  got = [lab for e in evals for b in e for lab in b["labels"][b["mask"]].tolist()]
  assert sorted(got) == want


# --- end to end: the trainer on the ImageNet smoke config -----------------------------------------

def test_smoke_config_trains_and_evaluates_on_the_fake_folder(folder, tmp_path):
  from skipinit.train import train_and_evaluate
  # image_size stays the smoke's 64: at 32 the last stage's maps are 1x1, and BatchNorm over
  # ghost batches of 2 of them is degenerate.
  c = _config(f"source=folder,path={folder},batch_size=4,eval_batch_size=4,ghost_batch_size=2,"
              "epochs=1,num_devices=2")
  status = train_and_evaluate(c, str(tmp_path / "run"))
  assert status["status"] == "completed" and status["step"] == 3
  assert np.isfinite(status["test_loss"]) and 0.0 <= status["test_acc"] <= 1.0
  lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == 1


def test_uint8_batches_are_normalized_on_device_like_on_the_host(tmp_path):
  """normalize_on_host=false ships uint8 pixels; the model must still see (x - mean) / std.

  Unnormalized (SkipInit has no BN to absorb the input scale), 0-255 pixels would give losses
  far from these (a test loss of 1,100 against 2.3); normalized, the two differ only
  by the uint8 rounding and clipping of the synthetic images.
  """
  from skipinit.train import train_and_evaluate
  common = "normalizer=skipinit,lr=0.01,epochs=0.5,num_devices=1,"
  host = train_and_evaluate(_config(common + "normalize_on_host=true"), str(tmp_path / "host"))
  dev = train_and_evaluate(_config(common + "normalize_on_host=false"), str(tmp_path / "dev"))
  assert host["step"] == dev["step"] == 2
  for key in ("train_loss", "test_loss"):
    assert abs(dev[key] - host[key]) < 0.05 * abs(host[key]), (key, host[key], dev[key])
