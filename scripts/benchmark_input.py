r"""Measures the ImageNet input pipeline's images/s on this host (PAPER.md section 4 preprocessing).

Reads ImageNet-like JPEGs (default: a generated folder of ~100 KB, ~500x375 images, the size and
decoding cost of real ImageNet photos) through `skipinit.data.imagenet` exactly as training does,
and prints one JSON line per measurement:
  python scripts/benchmark_input.py                          # tf.data and PIL, train and eval
  python scripts/benchmark_input.py --backends=tf --workers=8 --batch_size=256
  python scripts/benchmark_input.py --source=tfds --data_dir=/data/tfds   # the prepared records
A GPU stays fed when the train figure exceeds the trainer's images/s (ResNet-50-V2 in bfloat16:
~3,000/s on one H100); tf.data scales about linearly with cores, so the per-core figure tells how
many cores a host needs per accelerator.
"""

import json
import os
import time

import numpy as np
from absl import app, flags

from skipinit.data import imagenet
from skipinit.errors import SkipInitError

FOLDER = flags.DEFINE_string("folder", "/tmp/skipinit_fake_imagenet", "ImageNet-layout folder; "
                             "generated there when it does not exist")
NUM_IMAGES = flags.DEFINE_integer("num_images", 2048, "training images to generate")
SOURCE = flags.DEFINE_string("source", "folder", "folder | tfds | synthetic")
DATA_DIR = flags.DEFINE_string("data_dir", "", "tfds data_dir (source=tfds)")
BACKENDS = flags.DEFINE_list("backends", ["tf", "pil"], "folder decoders to measure")
BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "per-process batch size")
IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "output image size")
WORKERS = flags.DEFINE_integer("workers", 0, "parallel decoders (0: AUTOTUNE / one per core)")
STEPS = flags.DEFINE_integer("steps", 40, "train batches to time (after one warm-up batch)")
DTYPE = flags.DEFINE_string("dtype", "bfloat16", "image dtype: float32 | bfloat16")
HOST_NORMALIZE = flags.DEFINE_bool("normalize_on_host", True, "False: uint8 batches (the trainer "
                                   "normalizes on device)")


def _config(backend: str):
  from skipinit import config as cfg_lib
  return cfg_lib.load_config_file(
      "imagenet_resnet",
      f"source={SOURCE.value},path={FOLDER.value},data_dir={DATA_DIR.value},backend={backend},"
      f"batch_size={BATCH_SIZE.value},eval_batch_size={BATCH_SIZE.value},"
      f"image_size={IMAGE_SIZE.value},num_workers={WORKERS.value},dtype={DTYPE.value},"
      f"normalize_on_host={HOST_NORMALIZE.value}")


def _time(batches, steps: int) -> tuple[float, float, int]:
  """(images/s, images per CPU-second, images) over `steps` batches after the first.

  The first batch (pipeline start-up) is not timed. CPU time counts every thread of this process
  (tf.data's and PIL's decoders included), so images per CPU-second is the per-core capacity,
  which, unlike images/s, holds on a busy machine too.
  """
  next(batches)
  start, cpu, count = time.perf_counter(), time.process_time(), 0
  for _ in range(steps):
    try:
      count += len(next(batches)["labels"])
    except StopIteration:
      break
  wall, cpu = time.perf_counter() - start, time.process_time() - cpu
  return count / wall, count / max(cpu, 1e-9), count


def _train_stream(data):
  epoch = 0
  while True:
    yield from data.train_batches(epoch)
    epoch += 1


def main(argv):
  del argv
  if SOURCE.value == "folder" and not os.path.isdir(FOLDER.value):
    classes = 16
    per_class = -(-NUM_IMAGES.value // classes)
    print(f"writing {classes * per_class} fake ImageNet JPEGs to {FOLDER.value} ...", flush=True)
    imagenet.write_fake_imagenet(FOLDER.value, classes, per_class, max(1, per_class // 4))
  backends = BACKENDS.value if SOURCE.value == "folder" else ["auto"]
  for backend in backends:
    try:
      data = imagenet.make_imagenet(_config(backend), 0, 1)
    except SkipInitError as e:
      print(f"skipping backend {backend}: {e}")
      continue
    train_rate, train_cpu, n = _time(_train_stream(data), STEPS.value)
    eval_rate, eval_cpu, m = _time(data.eval_batches(), STEPS.value)
    print(json.dumps({
        "source": SOURCE.value, "backend": getattr(data, "backend", backend),
        "image_size": IMAGE_SIZE.value, "batch_size": BATCH_SIZE.value,
        "images": str(np.dtype(data.dtype)), "workers": WORKERS.value,
        "cpu_count": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2),
        "train_images_per_s": round(train_rate, 1), "train_images_per_cpu_s": round(train_cpu, 1),
        "train_images_timed": n, "eval_images_per_s": round(eval_rate, 1),
        "eval_images_per_cpu_s": round(eval_cpu, 1), "eval_images_timed": m}), flush=True)


if __name__ == "__main__":
  app.run(main)
