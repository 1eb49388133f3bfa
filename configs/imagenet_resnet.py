r"""ResNet-V2 on ImageNet: the ImageNet table of the SkipInit paper (PAPER.md sections 2, 4, 5).

Prepare the data once (tfds; needs ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar):
  pip install -e .[imagenet]
  python scripts/prepare_imagenet.py --manual_dir=/data/imagenet-tars --data_dir=/data/tfds
Run (ResNet-50-V2 with BatchNorm at batch 1024 on one multi-GPU host):
  python scripts/train.py --config=configs/imagenet_resnet.py:50,data_dir=/data/tfds \
      --workdir=runs/r50_bn_b1024
  python scripts/train.py \
      --config=configs/imagenet_resnet.py:101,normalizer=skipinit,batch_size=4096 \
      --workdir=runs/r101_skipinit_b4096
  python scripts/train.py --config=configs/imagenet_resnet.py:50,source=folder,path=/data/imagenet \
      --workdir=runs/r50_folder          # train/<wnid>/*.JPEG, val/<wnid>/*.JPEG

The argument is a comma-separated list of presets and key=value pairs, applied left to right:
  "50", "101" (also 14, 26, 152, 200)   ResNet-V2 depth
  "smoke"                               tiny ResNet-14-V2 (8 base channels, 10 classes, lr 0.1) on
                                        64x64 synthetic images: seconds on a CPU (tests, CI); add
                                        source=folder,path=... to run it on a small ImageNet-layout
                                        folder of at most 10 classes
  "normalizer=skipinit,alpha_init=0", "batch_size=4096", "source=synthetic" (input-free benchmark)

Defaults follow the authors' public baseline (PAPER.md section 4): 90 epochs, batch 1024, SGD with
Nesterov momentum 0.9, weight decay 1e-4 (none on gains, biases and BN parameters), label smoothing
0.1, 5 warm-up epochs then cosine decay, Inception crop + flip, eval resize 256 / center crop 224.

Learning rate: train.lr defaults to 0.1 * batch_size / 256 and follows the batch size however that
is set (here, by --config.train.batch_size, or by a sweep), until train.lr itself is set: then the
given value wins. (It is an ml_collections FieldReference on train.batch_size.)

Choices not fixed by the paper: BatchNorm statistics over ghost batches of 128 (so they do not
depend on the number of devices; the per-device batch must be a multiple of it, else set
ghost_batch_size), bfloat16 compute in the residual branches (parameters, BN statistics, the
residual stream and the head stay float32: model.residual_dtype), and Fixup's scalars at lr/10
whatever the batch (train.fixup_scalar_lr=relative: 0.16 at batch 4096, where the official Fixup
code gives them a fixed 0.01, train.fixup_scalar_lr=0.01, and DeepMind's the lr itself, =off).
Expected runtime at the defaults: ResNet-50 reads ~1.28M images per epoch; on one H100 in bfloat16
roughly 3,000 images/s, i.e. ~7 min per epoch and ~11 hours for 90 epochs, if the host decodes that
fast: tf.data decodes ~250-300 images/s per CPU core with host normalization, ~450 with
data.normalize_on_host=False, i.e. ~10-12 or ~7 cores per H100 (scripts/benchmark_input.py).
"""

from skipinit import config as cfg_lib

DEPTHS = ("14", "26", "50", "101", "152", "200")


@cfg_lib.preset("model.depth")
def _depth(config, depth):
  config.model.depth = int(depth)


SMOKE = {
    "model.depth": 14, "model.width": 0.125, "model.ghost_batch_size": 8,
    "model.dtype": "float32", "model.num_classes": 10,
    "data.source": "synthetic", "data.image_size": 64, "data.synthetic_train_size": 64,
    "data.synthetic_test_size": 40, "data.num_workers": 2, "data.shuffle_buffer": 64,
    "train.batch_size": 16, "train.eval_batch_size": 16, "train.epochs": 2.0,
    "train.lr": 0.1, "train.warmup_epochs": 0.5, "train.log_every_steps": 2}
# Each preset declares the keys it sets: a sweep makes their values its knobs' defaults.
PRESETS = {"(" + "|".join(DEPTHS) + ")": _depth, "smoke": cfg_lib.preset(overrides=SMOKE)}


def get_config(arg: str | None = None):
  # ResNet-V2 widths are fractions of the standard ones (model.width=0.125: 8 base channels),
  # so the key is a float here (an integer for the Wide-ResNets).
  config = cfg_lib.base_config(width=1.0)
  d, t = config.data, config.train
  cfg_lib.apply_overrides(config, {
      "model.name": "resnet_v2", "model.depth": 50, "model.num_classes": 1000,
      "model.normalizer": "batchnorm", "model.ghost_batch_size": 128, "model.dtype": "bfloat16",
      "data.name": "imagenet2012", "data.source": "tfds", "data.image_size": 224,
      # An epoch of the real length, so schedules and timings of synthetic runs match ImageNet's.
      "data.synthetic_train_size": 1_281_167, "data.synthetic_test_size": 50_000,
      "data.num_workers": 0,            # 0: tf.data AUTOTUNE (PIL: one thread per core)
      "data.shuffle_buffer": 16 * 1024,  # tfds: ~2 GB of encoded JPEGs per process
      "train.batch_size": 1024, "train.epochs": 90.0, "train.momentum": 0.9,
      "train.nesterov": True, "train.weight_decay": 1e-4, "train.weight_decay_all": False,
      "train.schedule": "cosine", "train.warmup_epochs": 5.0, "train.label_smoothing": 0.1,
      "train.eval_batch_size": 1024, "train.eval_every_epochs": 1.0,
      "train.checkpoint_every_epochs": 1.0,
      # Streamed data: one host batch per dispatch (fusing steps would hold several on device).
      "train.steps_per_dispatch": 1, "train.log_every_steps": 100})
  # folder source's decoder: auto (tf.data when TensorFlow is installed, else PIL), tf or pil.
  d.backend = "auto"
  # False: uint8 batches, normalized by the trainer on device: ~35% less host CPU per image and
  # 2-4x fewer host-to-device bytes (skipinit.data.imagenet.ImageNetData.normalized).
  d.normalize_on_host = True
  del t["lr"]
  t.lr = t.get_ref("batch_size").to_float() * (0.1 / 256)  # PAPER.md 4: lr = 0.1 * B / 256
  cfg_lib.apply_arg(config, arg, PRESETS)
  config.lock()
  return config
