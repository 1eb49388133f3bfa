r"""Prepares tfds `imagenet2012` once from the two ILSVRC-2012 tar files (PAPER.md section 4 data).

ImageNet cannot be downloaded automatically: register at https://image-net.org/download-images,
download ILSVRC2012_img_train.tar (~138 GB) and ILSVRC2012_img_val.tar (~6.3 GB) into one folder,
then (needs `pip install -e .[imagenet]`, ~150 GB free in --data_dir and a few hours):
  python scripts/prepare_imagenet.py --manual_dir=/data/imagenet-tars --data_dir=/data/tfds
and train with `--config=configs/imagenet_resnet.py:50,data_dir=/data/tfds`. On several hosts,
prepare once on a shared filesystem (or copy --data_dir to each host); do not run it on every host.
"""

import os
import sys

from absl import app, flags

from skipinit.errors import DataError, SkipInitError

MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "folder holding ILSVRC2012_img_train.tar and "
                            "ILSVRC2012_img_val.tar")
DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data_dir to write imagenet2012/ into "
                               "(default: tfds' ~/tensorflow_datasets)")

REQUIRED = {"ILSVRC2012_img_train.tar": "~138 GB, 1,281,167 training images",
            "ILSVRC2012_img_val.tar": "~6.3 GB, 50,000 validation images"}


def check_manual_dir(manual_dir: str) -> None:
  """Raises a DataError listing the tar files missing from `manual_dir`."""
  manual_dir = os.path.expanduser(manual_dir or "")
  missing = [f"{name} ({what})" for name, what in REQUIRED.items()
             if not os.path.isfile(os.path.join(manual_dir, name))]
  if missing:
    raise DataError(f"--manual_dir={manual_dir!r} lacks {' and '.join(missing)}: download them "
                    "from https://image-net.org/download-images (registration needed) into that "
                    "folder, unextracted")


def prepare(manual_dir: str, data_dir: str | None = None):
  """Runs tfds' manual-download preparation of imagenet2012; returns the prepared builder."""
  check_manual_dir(manual_dir)
  # tensorflow-datasets 4.9.10 uses the `importlib_resources` backport while preparing, but only
  # declares it for Python < 3.9; the standard library's module (3.11+) has what it needs.
  try:
    import importlib_resources  # noqa: F401
  except ImportError:
    import importlib.resources
    import importlib.resources.abc
    sys.modules["importlib_resources"] = importlib.resources
  from skipinit.data.imagenet import import_tfds
  tfds = import_tfds()
  builder = tfds.builder("imagenet2012", data_dir=data_dir or None)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=os.path.expanduser(manual_dir)))
  return builder


def main(argv):
  del argv
  try:
    builder = prepare(MANUAL_DIR.value, DATA_DIR.value)
  except SkipInitError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  splits = ", ".join(f"{name}: {s.num_examples}" for name, s in builder.info.splits.items())
  print(f"prepared imagenet2012 in {builder.data_dir} ({splits})")


if __name__ == "__main__":
  flags.mark_flag_as_required("manual_dir")
  app.run(main)
