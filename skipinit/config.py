"""Config helpers shared by the files in configs/: defaults, the `get_config(arg)` mini-language, checks.

A config file's `get_config(arg)` takes a comma-separated list of presets and `key=value` pairs,
e.g. "16-4", "smoke", "depth=100,width=2,normalizer=skipinit,alpha_init=0". A key may be given
in full ("train.lr") or by its last part when that is unambiguous ("lr"). Values are converted to
the type of the default, and the config is locked so a misspelt key fails loudly.
"""

import difflib
import importlib.util
import json
import math
import os
import re
from typing import Callable, Mapping

import ml_collections
from ml_collections import config_dict

from skipinit import values
from skipinit.errors import ConfigError

# The repository's configs/ folder (configs are files, not part of the installed package).
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
SCHEDULES = ("paper_halving", "cosine", "constant", "step")
OPTIMIZERS = ("sgd",)
DATA_SOURCES = ("tfds", "folder", "synthetic")
DATA_NAMES = ("cifar10", "imagenet2012")
# Keys that may change between a run and its resumption without changing its results (where the
# data lives, how the work is split): a run directory and a sweep directory accept new values.
RESUMABLE_KEYS = frozenset({
    "train.num_devices", "train.steps_per_dispatch", "train.log_every_steps",
    "train.eval_batch_size", "data.cache_dir", "data.num_workers", "data.path", "data.data_dir",
    "model.remat", "model.scan_unroll", "model.fused_bn"})
# Keys whose default is not what a run made before the key existed did: for a config.json that
# lacks the key, the value that run trained with (a function of its flattened config.json).
# train.py resumes such a run with it (rundir.keep_legacy_values) and make_tables reads it.
LEGACY_VALUES = {
    # Before issue 15 the residual stream, the projection shortcut and the head computed in
    # model.dtype: an old bfloat16 run resumed at the float32 default would change mid-way.
    "model.residual_dtype": lambda old: old.get("model.dtype", "float32"),
    # NF-ResNets' classifier started at zero before issue 15 (now N(0, 0.01^2)).
    "model.classifier_init": lambda old: "zeros" if old.get("model.normalizer") == "nf" else "",
}


def base_config(**model_defaults) -> ml_collections.ConfigDict:
  """Defaults of every key (DESIGN.md "Config keys"); the family configs override some of them.

  `model_defaults` replace model defaults before the types are fixed: ResNet-V2 passes
  width=1.0 so that its width is a float (a multiple of 1/64), while a WRN's width is an int.
  """
  c = ml_collections.ConfigDict()
  model = dict(
      name="wrn", depth=16, width=4, normalizer="batchnorm",
      alpha_init="0",            # skipinit: "0", "inv_sqrt_d", "1" or a number
      ghost_batch_size=64,       # batchnorm: examples per BN statistic; 0 = the whole batch
      conv_bias=config_dict.placeholder(bool),  # None: the recipe's default (on without BN)
      dropout_rate=0.0, dtype="float32", remat=False, num_classes=10,
      scan_unroll=0,             # blocks per nn.scan iteration; 0: auto (unrolls short stages on CPU)
      fused_bn=True,             # batchnorm: hand-written BN+ReLU backward (False: autodiff)
      nf_alpha=0.2, nf_skip_gain_init=0.0,
      post_activation=False,     # fixup: its reference code's post-activation network
      fixup_init="full",         # fixup: "full", or one half of its init: "zero_only", "rescale_only"
      residual_dtype="float32",  # the residual stream, skip path and head (dtype: the branches)
      conv_init="he",            # "he" (2/fan_in) or "fan_in" (Haiku's default, DeepMind's code)
      classifier_init="",        # "": the variant's; "zeros", "lecun_normal", "normal_0.01"
      groupnorm_groups=16)       # groupnorm: groups per norm (16 divides every WRN's channels)
  model.update(model_defaults)
  c.model = model
  c.data = dict(
      name="cifar10", source="tfds",
      path="",                   # folder source: class-folder tree or a .tar.gz of one
      data_dir="",               # tfds data_dir; "" = tfds' default
      cache_dir="~/.cache/skipinit",  # decoded folder data sets are cached here
      synthetic_train_size=1024, synthetic_test_size=256,
      image_size=32, num_workers=16, shuffle_buffer=16 * 1024,
      eval_subset=0)             # >0: evaluate on this many test images (a fixed subset); 0 = all
  c.train = dict(
      batch_size=64, epochs=200.0, optimizer="sgd", lr=0.1, momentum=0.9, nesterov=False,
      weight_decay=5e-4,
      weight_decay_all=False,    # False: no decay on alpha, biases, BN scale/offset, gains
      schedule="paper_halving", warmup_epochs=0.0,
      step_boundaries=(0.5, 0.75), step_factor=0.1,
      label_smoothing=0.0, seed=0,
      eval_every_epochs=1.0, checkpoint_every_epochs=1.0, keep_checkpoints=3,
      eval_batch_size=1000,
      steps_per_dispatch=8,      # train steps fused into one jitted call (lax.scan) on device data
      num_devices=0,             # 0: every local device
      fixup_scalar_lr_mult=0.1,  # Fixup's scalar biases, multipliers, classifier bias: lr/10
      fixup_scalar_lr="relative",  # their rule: "relative" (x the mult), a number (fixed), "off"
      agc_clip=0.0, agc_eps=1e-3,  # adaptive gradient clipping lambda; 0 = off
      log_every_steps=100)
  return c


def all_keys(config) -> list[str]:
  keys = []
  for section, sub in config.items():
    if isinstance(sub, ml_collections.ConfigDict):
      keys.extend(f"{section}.{k}" for k in sub.keys())
  return keys


def resolve_key(config, key: str) -> str:
  """Full dotted name of `key` ("lr" -> "train.lr"), or a ConfigError listing the choices."""
  keys = all_keys(config)
  if key in keys:
    return key
  matches = [k for k in keys if k.split(".")[-1] == key]
  if len(matches) == 1:
    return matches[0]
  if matches:
    raise ConfigError(f"config key {key!r} is ambiguous: use one of {', '.join(matches)}")
  close = difflib.get_close_matches(key, keys + [k.split(".")[-1] for k in keys], n=3)
  hint = f" (did you mean {' or '.join(close)}?)" if close else ""
  raise ConfigError(f"unknown config key {key!r}{hint}; valid keys: {', '.join(keys)}")


def set_value(config, key: str, value) -> None:
  """Sets a (possibly short) key, converting strings to the default's type."""
  full = resolve_key(config, key)
  section, name = full.split(".")
  default = config[section][name]
  if isinstance(value, str):
    value = values.parse(full, value, default)
  elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  elif isinstance(default, str) and not isinstance(value, str):
    value = str(value)
  try:
    config[section][name] = value
  except TypeError as e:
    raise ConfigError(f"{full}={value!r}: {e}") from None


def apply_overrides(config, overrides: Mapping[str, object]) -> None:
  for key, value in overrides.items():
    set_value(config, key, value)


def apply_arg(config, arg: str | None, presets: Mapping[str, Callable]) -> ml_collections.ConfigDict:
  """Applies get_config's argument: presets (by name or regex) and key=value pairs, left to right."""
  for item in filter(None, (p.strip() for p in (arg or "").split(","))):
    if "=" in item:
      key, value = item.split("=", 1)
      set_value(config, key.strip(), value.strip())
    else:
      preset_fn, groups = find_preset(item, presets)
      preset_fn(config, *groups)
  return config


def preset(*keys: str, label: str = "", overrides: Mapping | None = None):
  """A preset of a config file's PRESETS that declares the keys it sets (a sweep takes their
  values as its knobs' defaults) and, for a pattern, its name in help: `@preset("model.depth",
  label="DEPTH")` on a function of (config, *the pattern's groups), or `preset(overrides={...})`."""
  def declare(fn):
    fn.keys, fn.label = keys + tuple(overrides or ()), label
    return fn
  return declare if overrides is None else declare(lambda c: apply_overrides(c, overrides))


def preset_names(presets: Mapping[str, Callable]) -> list[str]:
  return [getattr(p, "label", "") or re.sub(r"[()]", "", k).replace("|", ", ")
          for k, p in presets.items()]


def find_preset(item: str, presets: Mapping[str, Callable]) -> tuple[Callable, tuple]:
  """The preset whose pattern (a key of `presets`) matches `item`, and the pattern's groups."""
  for pattern, preset_fn in presets.items():
    match = re.fullmatch(pattern, item)
    if match:
      return preset_fn, match.groups()
  raise ConfigError(f"unknown config argument {item!r}: use key=value or one of the presets "
                    f"{', '.join(preset_names(presets))}")


def fit_ghost_batch(config) -> str | None:
  """The ghost-batch rule of train.py and the sweeps alike: a BatchNorm ghost batch larger than
  the (global) batch is the whole batch. Sets model.ghost_batch_size so (config.json records the
  size used) and returns the warning to log, or None when nothing changed.

  The cap is the global batch, not the per-device one: BN's statistics must not depend on the
  device count (the trainer then uses the devices the batch splits over in whole ghost batches).
  The batch-size sweep has always set min(64, batch) itself, so its runs are unchanged.
  """
  from skipinit import models  # the model zoo owns the ghost-batch rule

  m, batch = config.model, config.train.batch_size
  if not 0 < batch < models.ghost_batch(m):
    return None
  ghost, m.ghost_batch_size = m.ghost_batch_size, batch
  return (f"model.ghost_batch_size={ghost} is larger than train.batch_size={batch}: BatchNorm "
          f"uses ghost batches of {batch} (the whole batch), as the sweeps do")


def validate(config, num_devices: int | None = None) -> None:
  """Checks a whole config before anything is written; raises ConfigError with one clear line."""
  from skipinit import models  # the model zoo owns the model checks

  t = config.train
  if t.batch_size <= 0:
    raise ConfigError(f"train.batch_size={t.batch_size} must be positive")
  per_device = None
  if num_devices:
    if t.batch_size % num_devices:
      raise ConfigError(
          f"train.batch_size={t.batch_size} is not divisible by the {num_devices} devices: use a "
          f"multiple of {num_devices} (or set train.num_devices)")
    per_device = t.batch_size // num_devices
  models.model_parts(config.model)  # raises what build_model would
  models.check_ghost_batch(config.model, per_device or 0)
  models.check_ghost_batch(config.model, t.batch_size, per_device=False)
  if t.schedule not in SCHEDULES:
    raise ConfigError(f"train.schedule={t.schedule!r} is unknown: use one of {', '.join(SCHEDULES)}")
  if t.optimizer not in OPTIMIZERS:
    raise ConfigError(f"train.optimizer={t.optimizer!r} is unknown: use one of {', '.join(OPTIMIZERS)}")
  if config.data.source not in DATA_SOURCES:
    raise ConfigError(f"data.source={config.data.source!r} is unknown: use one of "
                      f"{', '.join(DATA_SOURCES)}")
  if config.data.source == "folder" and not config.data.path:
    raise ConfigError("data.source=folder needs data.path: a class-folder tree (train/<class>/*.jpg, "
                      "test/<class>/*.jpg) or a .tar.gz of one")
  if config.data.name not in DATA_NAMES:
    raise ConfigError(f"data.name={config.data.name!r} is unknown: use one of {', '.join(DATA_NAMES)}")
  for key, ok, allowed in (
      ("synthetic_train_size", config.data.synthetic_train_size >= 1, "an integer >= 1"),
      ("synthetic_test_size", config.data.synthetic_test_size >= 1, "an integer >= 1"),
      ("image_size", config.data.image_size >= 1, "an integer >= 1"),
      ("eval_subset", config.data.eval_subset >= 0, "an integer >= 0 (0 = the whole test set)")):
    if not ok:
      raise ConfigError(f"data.{key}={config.data[key]!r} is not valid: it must be {allowed}")
  if t.schedule == "step" and not all(0 <= b <= 1 for b in t.step_boundaries):
    raise ConfigError(f"train.step_boundaries={tuple(t.step_boundaries)!r} is not valid: they are "
                      "fractions of training, each in [0, 1]")
  for key, ok, allowed in (
      ("seed", t.seed >= 0, "an integer >= 0"),
      ("num_devices", t.num_devices >= 0, "an integer >= 0 (0 = every device)"),
      ("step_factor", 0 < t.step_factor < math.inf, "a positive finite number"),
      ("agc_eps", 0 < t.agc_eps < math.inf, "a positive finite number"),
      ("fixup_scalar_lr_mult", 0 <= t.fixup_scalar_lr_mult < math.inf, "a finite number >= 0"),
      ("fixup_scalar_lr", _fixup_scalar_lr_ok(t.fixup_scalar_lr),
       "'relative' (train.lr x train.fixup_scalar_lr_mult), 'off' (train.lr, as DeepMind's "
       "code), or a number >= 0 (a fixed peak lr, as the official code's base_lr/10 = 0.01)"),
      ("epochs", 0 < t.epochs < math.inf, "a positive finite number"),
      ("eval_every_epochs", 0 < t.eval_every_epochs < math.inf, "a positive finite number"),
      ("checkpoint_every_epochs", 0 < t.checkpoint_every_epochs < math.inf,
       "a positive finite number"),
      ("warmup_epochs", 0 <= t.warmup_epochs < math.inf, "a finite number >= 0"),
      ("lr", 0 <= t.lr < math.inf, "a finite number >= 0"),
      ("momentum", 0 <= t.momentum < 1, "in [0, 1)"),
      ("weight_decay", 0 <= t.weight_decay < math.inf, "a finite number >= 0"),
      ("label_smoothing", 0 <= t.label_smoothing < 1, "in [0, 1)"),
      ("agc_clip", 0 <= t.agc_clip < math.inf, "a finite number >= 0 (0 = off)"),
      ("steps_per_dispatch", t.steps_per_dispatch >= 1, "an integer >= 1"),
      ("eval_batch_size", t.eval_batch_size >= 1, "an integer >= 1"),
      ("log_every_steps", t.log_every_steps >= 1, "an integer >= 1"),
      ("keep_checkpoints", t.keep_checkpoints >= 1,
       "an integer >= 1 (a run resumes from its checkpoints)")):
    if not ok:  # NaN fails every comparison, so it lands here too
      raise ConfigError(f"train.{key}={t[key]!r} is not valid: it must be {allowed}")


def _fixup_scalar_lr_ok(value) -> bool:
  if str(value).strip() in ("relative", "off"):
    return True
  try:
    return 0 <= float(value) < math.inf
  except ValueError:
    return False


def to_json(config) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def from_json(text: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads(text))


def import_file(path: str):
  """Imports a Python file (a config or sweep file) as a module of its own."""
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} does not exist")
  name = "_skipinit_" + re.sub(r"\W", "_", os.path.abspath(path))
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config_file(name_or_path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config file: a path, or a name in configs/ ("cifar10_wrn")."""
  path = name_or_path if name_or_path.endswith(".py") else os.path.join(CONFIG_DIR,
                                                                         f"{name_or_path}.py")
  return import_file(path).get_config(arg)


# ------------------------------------------------------------------------- what each key means

# One line per key, for `train.py --list_keys` (the README's "Config knobs" table says the same at
# more length); tests/test_first_hour.py checks that every key of every config file has one.
KEY_HELP = {
    "model.name": "wrn (CIFAR Wide-ResNet, depth 6N+4) or resnet_v2 (ImageNet, 50/101/...)",
    "model.depth": "network depth (WRN: 6N+4, e.g. 16, 100, 1000; ResNet-V2: 14, 26, 50, 101, ...)",
    "model.width": "WRN widening factor k (int); ResNet-V2: a multiple of 1/64 of the standard widths",
    "model.normalizer": "batchnorm, skipinit, fixup, none, sqrt2_merge, nf (NF-ResNet) or "
                        "groupnorm",
    "model.alpha_init": "skipinit's alpha at init: 0, inv_sqrt_d (1/sqrt(blocks)), 1, or a number",
    "model.ghost_batch_size": "batchnorm: examples per BN statistic (0 = whole batch; larger than "
                              "the batch = the whole batch); independent of the device count",
    "model.conv_bias": "biases in the block convs (unset: on for every variant without BN)",
    "model.dropout_rate": "dropout before the classifier (regularized SkipInit)",
    "model.dtype": "compute dtype of the branches: float32 or bfloat16 (params and BN stats float32)",
    "model.residual_dtype": "dtype of the residual stream, skip path and head (float32 keeps "
                            "SkipInit's small branches under bfloat16)",
    "model.remat": "rematerialize the blocks in the backward pass (less memory, more compute)",
    "model.num_classes": "classes of the classifier (10 for CIFAR-10, 1000 for ImageNet)",
    "model.scan_unroll": "blocks per nn.scan iteration; 0 = auto (unrolls short stages on CPU)",
    "model.fused_bn": "batchnorm: BN+ReLU with a hand-written backward pass (false: autodiff)",
    "model.nf_alpha": "nf: the skip path's variance step per block",
    "model.nf_skip_gain_init": "nf: the branch gain at init (0: each block starts as the identity)",
    "model.post_activation": "fixup: its reference code's post-activation network",
    "model.fixup_init": "fixup: full, or one half of its init: zero_only, rescale_only",
    "model.conv_init": "conv init (but Fixup's own): he (2/fan_in) or fan_in (Haiku's default in "
                       "DeepMind's code, 0.774/fan_in)",
    "model.classifier_init": "classifier init: empty = the variant's; zeros, lecun_normal, normal_0.01",
    "model.groupnorm_groups": "groupnorm: groups per GroupNorm; must divide every norm's channels",
    "data.name": "cifar10 or imagenet2012",
    "data.source": "tfds (needs TensorFlow: pip install -e .[imagenet]), folder (data.path), or "
                   "synthetic",
    "data.path": "folder: a class-folder tree, a .tar.gz of one, or CIFAR-10's python archive "
                 "(cifar-10-python.tar.gz / cifar-10-batches-py)",
    "data.data_dir": "tfds: its data_dir (empty = tfds' default)",
    "data.cache_dir": "where a decoded archive is cached (empty: no cache)",
    "data.synthetic_train_size": "synthetic: training examples",
    "data.synthetic_test_size": "synthetic: test examples",
    "data.image_size": "image side in pixels (32 for CIFAR-10, 224 for ImageNet)",
    "data.num_workers": "ImageNet input: decoding threads (0 = tf.data AUTOTUNE)",
    "data.shuffle_buffer": "ImageNet input: examples in the shuffle buffer",
    "data.backend": "ImageNet folder source's decoder: auto, tf or pil",
    "data.normalize_on_host": "ImageNet: normalize on the host (false: uint8 batches, on device)",
    "data.eval_subset": "evaluate on this many test images (a fixed subset); 0 = the whole test set",
    "train.batch_size": "global batch, split over all devices",
    "train.epochs": "training length in epochs (converted to steps per run)",
    "train.optimizer": "sgd (with momentum)",
    "train.lr": "peak learning rate",
    "train.momentum": "SGD momentum",
    "train.nesterov": "Nesterov momentum",
    "train.weight_decay": "L2 weight decay (on conv/dense kernels only unless weight_decay_all)",
    "train.weight_decay_all": "decay every parameter (alpha, biases, BN scale/offset, gains too)",
    "train.schedule": "paper_halving, cosine, step or constant",
    "train.warmup_epochs": "linear warm-up from 0 to train.lr over these epochs",
    "train.step_boundaries": "step schedule: fractions of training where the lr is multiplied",
    "train.step_factor": "step schedule: the multiplier at each boundary",
    "train.label_smoothing": "label smoothing of the cross-entropy",
    "train.seed": "seed of the init, the shuffle and the augmentation",
    "train.eval_every_epochs": "evaluate (and write a metrics.jsonl record) every this many epochs",
    "train.checkpoint_every_epochs": "checkpoint every this many epochs",
    "train.keep_checkpoints": "checkpoints kept (the newest)",
    "train.eval_batch_size": "evaluation batch",
    "train.steps_per_dispatch": "train steps fused into one jitted lax.scan",
    "train.num_devices": "devices of the data-parallel mesh; 0 = every device the batch splits over",
    "train.fixup_scalar_lr_mult": "fixup: its scalars' lr multiplier (with fixup_scalar_lr=relative)",
    "train.fixup_scalar_lr": "fixup scalars' lr: relative (x the mult), a fixed number, or off",
    "train.agc_clip": "adaptive gradient clipping lambda (0 = off)",
    "train.agc_eps": "adaptive gradient clipping epsilon",
    "train.log_every_steps": "a progress line every this many steps",
}


def describe_keys(config) -> str:
  """The keys of `config`, each with its value and meaning (train.py --list_keys)."""
  rows = []
  for key in all_keys(config):
    section, name = key.split(".")
    value = config[section][name]
    shown = ";".join(map(str, value)) if isinstance(value, (tuple, list)) else value
    rows.append((key, "" if shown is None else str(shown), KEY_HELP.get(key, "")))
  width = max(len(k) for k, _, _ in rows)
  vwidth = min(18, max(len(v) for _, v, _ in rows))
  return "\n".join(f"{k:{width}s}  {v:{vwidth}s}  {h}".rstrip() for k, v, h in rows)
