"""Sweep definitions -> deterministic run directories, and the sweep manifest (PAPER.md sections 4-5).

A sweep file (configs/sweeps/*.py) defines `get_sweep(arg)`, which returns `make_sweep(...)`: the
base config (a config file and its `get_config` argument), the table it feeds, and the runs. Each
run is a flat dict: "method" (the table row, see `skipinit.sweep.methods`) plus full config keys
("train.lr": 0.0625, ...). The sweep argument is the sweep's budget knobs and, optionally, config
overrides for every run and presets for the base config:
  "epochs=1,seeds=1,lr_exps=-4:-2,depths=16"   knobs (keyword arguments of the sweep function)
  "preset=smoke"                                presets appended to the base config argument;
                                                they also set the knobs named in PRESET_KNOBS
  "data.source=folder,data.path=/x.tar.gz"      full config keys: set in every run

`expand` names every run `<method>/<axis values>` from the values that vary within a method
(e.g. "skipinit_a0/depth100_lr0.0625_seed1"), so the same sweep and argument always give the same
directories. The sweep directory's manifest (sweep.json) pins the sweep: re-launching into it with
a different run list is refused rather than silently mixing budgets.
"""

import dataclasses
import importlib.util
import inspect
import json
import os
import re
from typing import Callable, Sequence

from skipinit import config as cfg_lib, values
from skipinit.errors import ConfigError, SkipInitError
from skipinit import rundir
from skipinit.sweep import ladder, methods as methods_lib

MANIFEST = "sweep.json"
MANIFEST_VERSION = 1
TABLES = ("depth", "ablation", "batch_size", "imagenet", "agc")
# The order of the axes in a run name: the table axes first, so `ls` groups related runs.
NAME_KEY_ORDER = ("model.depth", "model.width", "train.batch_size", "train.agc_clip", "train.lr",
                  "train.seed")
ABBREV = {"batch_size": "bs", "agc_clip": "agc", "weight_decay": "wd", "dropout_rate": "drop",
          "ghost_batch_size": "ghost", "alpha_init": "alpha", "epochs": "ep"}
# Resolved values stored in the manifest, so that tables can place a run that never started.
TABLE_KEYS = ("model.name", "model.depth", "model.width", "model.normalizer", "model.alpha_init",
              "model.conv_bias", "model.dropout_rate", "model.ghost_batch_size", "data.name",
              "data.source", "train.batch_size", "train.lr", "train.seed", "train.epochs",
              "train.weight_decay", "train.agc_clip",
              # numerics that change results (issue 15): a table cell never mixes them
              "model.dtype", "model.residual_dtype", "model.conv_init", "model.classifier_init",
              "train.fixup_scalar_lr", "train.fixup_scalar_lr_mult")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class SweepError(SkipInitError, ValueError):
  """A sweep definition, argument or sweep directory is invalid; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a sweep: its directory name (relative to the sweep dir), row and config overrides."""

  name: str
  method: str
  overrides: dict
  resolved: dict = dataclasses.field(default_factory=dict, compare=False)
  # The folder data set it reads (data.source=folder), as given, and its data.source; not part of
  # the manifest: what a launch checks before it starts trainers (`unmet_needs`).
  data_path: str | None = dataclasses.field(default=None, compare=False)
  data_source: str | None = dataclasses.field(default=None, compare=False)

  def to_json(self) -> dict:
    return {"name": self.name, "method": self.method, "overrides": self.overrides,
            "resolved": self.resolved}


def powers_of_two(exponents: Sequence[int]) -> list[float]:
  """The learning-rate grid of PAPER.md section 4: 2^e for each exponent."""
  return [2.0 ** int(e) for e in exponents]


def depth_grid(methods: dict, *, depths, width: int, batch_size: int, epochs: float, lr_exps,
               seeds: int) -> list[dict]:
  """WRN runs: depths x methods x powers-of-2 learning rates x seeds (the depth and ablation tables)."""
  runs = []
  for depth in depths:
    for method, overrides in methods.items():
      for lr in powers_of_two(lr_exps):
        for seed in range(seeds):
          runs.append({"method": method, **overrides, "model.depth": depth, "model.width": width,
                       "train.batch_size": batch_size, "train.epochs": epochs, "train.lr": lr,
                       "train.seed": seed})
  return runs


def sibling_config(sweep_file: str, name: str) -> str:
  """Absolute path of configs/<name> seen from a file in configs/sweeps/."""
  return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(sweep_file))), name)


# ---------------------------------------------------------------------------------------- knobs

# The learning-rate search (issue 16), a knob of every sweep with a learning-rate axis (a function
# with `lr_exps`), handled here rather than by each sweep: grid trains every rate of lr_exps
# (exactly as before); ladder walks out from a centre and trains only the rates the search needs
# (skipinit.sweep.ladder), lr_exps bounding it. lr_climb: the upward walk goes on to a divergence
# (or the grid's top), so that the largest stable lr is the grid's; by default only for the
# batch-size study, whose table prints that column (CLIMB_TABLES).
LR_SEARCHES = ("grid", "ladder")
SEARCH_KNOBS = {"lr_search": "grid", "lr_patience": 2, "lr_climb": False}
CLIMB_TABLES = ("batch_size",)


def has_lr_axis(fn: Callable) -> bool:
  return "lr_exps" in inspect.signature(fn).parameters


def parse_arg(arg: str | None, fn: Callable) -> tuple[dict, list[str], dict]:
  """Splits a sweep argument into (knobs for `fn`, base-config presets, config overrides); the
  knobs include SEARCH_KNOBS given for a sweep with a learning-rate axis (`search_settings`)."""
  params = {n: p.default for n, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}
  if has_lr_axis(fn):
    params.update(SEARCH_KNOBS)
  knobs, presets, extra = {}, [], {}
  for item in filter(None, (p.strip() for p in (arg or "").split(","))):
    if "=" not in item:
      raise SweepError(f"sweep argument {item!r} is not key=value; knobs of {fn.__name__}: "
                       f"{', '.join(params)} (plus preset=NAME and full config keys like "
                       "train.lr=0.1)")
    key, value = (s.strip() for s in item.split("=", 1))
    if key == "preset":
      presets.extend(p for p in value.split(";") if p)
    elif "." in key:
      extra[key] = value
    elif key in params:
      knobs[key] = values.parse(key, value, params[key], where="sweep argument ",
                                error=SweepError)
    else:
      raise SweepError(f"unknown sweep knob {key!r}; knobs of {fn.__name__}: {', '.join(params)} "
                       "(plus preset=NAME and full config keys like train.lr=0.1)")
  return knobs, presets, extra


# A sweep sets these config keys in every run from its knobs, so a preset's value of one would never
# reach a run: instead it becomes the knob's default ("preset=smoke" alone gives smoke-sized runs).
PRESET_KNOBS = {"depths": "model.depth", "depth": "model.depth", "width": "model.width",
                "epochs": "train.epochs", "batch_size": "train.batch_size",
                "batch_sizes": "train.batch_size", "ghost": "model.ghost_batch_size"}


def _knobs_from_presets(fn: Callable, knobs: dict, presets: list[str], config: str,
                        config_arg: str) -> dict:
  """The PRESET_KNOBS values `presets` set (each declares its keys: cfg_lib.preset), for the knobs
  of `fn` the argument does not give."""
  params = inspect.signature(fn).parameters
  wanted = [k for k in PRESET_KNOBS if k in params and k not in knobs]
  if not presets or not wanted:
    return {}
  try:
    module = cfg_lib.import_file(config)
    preset = module.get_config(",".join(filter(None, [config_arg, *presets])))
    declared = [(name, cfg_lib.find_preset(name, module.PRESETS)[0]) for name in presets]
  except (ConfigError, AttributeError, KeyError) as e:
    raise SweepError(f"preset={';'.join(presets)}: {e}") from None
  undeclared = [name for name, p in declared if not hasattr(p, "keys")]
  if undeclared:
    raise SweepError(f"preset={';'.join(undeclared)} of {config} does not declare the keys it sets: "
                     "decorate it with @skipinit.config.preset(\"section.key\", ...) or build it "
                     "with skipinit.config.preset(overrides={...})")
  keys = {k for _, p in declared for k in p.keys}
  derived = {}
  for knob in (k for k in wanted if PRESET_KNOBS[k] in keys):
    section, field = PRESET_KNOBS[knob].split(".")
    default = params[knob].default
    element = default[0] if isinstance(default, (tuple, list)) and default else default
    value = type(element)(preset[section][field])
    derived[knob] = (value,) if isinstance(default, (tuple, list)) else value
  return derived


def search_settings(table: str, knobs: dict) -> dict | None:
  """Pops the SEARCH_KNOBS from `knobs`: None for the grid, else the ladder's settings (the
  manifest's "search"). ConfigError for an unknown lr_search or a patience < 1."""
  given = {k: knobs.pop(k) for k in list(knobs) if k in SEARCH_KNOBS}
  mode = given.get("lr_search", SEARCH_KNOBS["lr_search"])
  if mode not in LR_SEARCHES:
    raise ConfigError(f"lr_search={mode!r} is unknown: use grid (every learning rate of lr_exps, "
                      "the default) or ladder (only the rates the search for the best one needs)")
  patience = ladder.check_patience(given.get("lr_patience", SEARCH_KNOBS["lr_patience"]))
  if mode == "grid":
    extra = sorted(set(given) - {"lr_search"})
    if extra:
      raise ConfigError(f"{' and '.join(extra)} {'apply' if len(extra) > 1 else 'applies'} to "
                        "lr_search=ladder only: add lr_search=ladder, or drop "
                        f"{'them' if len(extra) > 1 else 'it'}")
    return None
  return {"lr_search": mode, "lr_patience": patience,
          "lr_climb": bool(given.get("lr_climb", table in CLIMB_TABLES))}


def make_sweep(*, name: str, table: str, fn: Callable[..., list[dict]], arg: str | None,
               config: str, config_arg: str = "") -> dict:
  """What a sweep file's `get_sweep(arg)` returns: the runs of `fn` and what to train them with."""
  if table not in TABLES:
    raise SweepError(f"sweep {name}: table={table!r} is unknown: use one of {', '.join(TABLES)}")
  knobs, presets, extra = parse_arg(arg, fn)
  search = search_settings(table, knobs)
  knobs = {**_knobs_from_presets(fn, knobs, presets, config, config_arg), **knobs}
  runs = fn(**knobs)
  if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
    raise SweepError(f"sweep function {fn.__name__} must return a list of dicts")
  # A key the sweep sets itself (a method's normalizer, the swept lr) must not be overridden
  # behind the method labels' back: it is changed through the sweep's knobs.
  clash = sorted(set(extra) & {k for r in runs for k in r})
  if clash:
    raise SweepError(f"sweep {name} sets {', '.join(clash)} itself: change it through the knobs "
                     f"({', '.join(inspect.signature(fn).parameters)}), not as a config override")
  return {
      "name": name, "table": table, "config": os.path.abspath(config),
      "config_arg": ",".join(filter(None, [config_arg, *presets])),
      "arg": arg or "", "knobs": {k: list(v) if isinstance(v, tuple) else v for k, v in knobs.items()},
      "runs": [{**r, **extra} for r in runs], "search": search,
      "fn": fn,  # (for `describe_sweep`; the manifest records the knobs, not the function)
  }


# ---------------------------------------------------------------------------------- load + expand

def _load_module(path: str, what: str):
  if not os.path.isfile(path):
    raise SweepError(f"{what} {path!r} does not exist")
  return cfg_lib.import_file(path)


def load_sweep(spec: str) -> dict:
  """Loads `path.py[:arg]` (as ml_collections' config files) and returns its `get_sweep(arg)`."""
  path, _, arg = spec.partition(":")
  module = _load_module(path, "sweep file")
  if not hasattr(module, "get_sweep"):
    raise SweepError(f"sweep file {path!r} defines no get_sweep(arg)")
  try:
    sweep = module.get_sweep(arg)
  except ConfigError as e:
    raise SweepError(f"{path}: {e}") from None
  sweep["sweep_file"] = path
  return sweep


# Keys whose powers of two are named by the exponent: the learning-rate grids are 2^k, and
# "lr1.2676506002282294e+30" or "lr0.00390625" read worse than "lr2^100" and "lr2^-8".
EXPONENT_KEYS = ("train.lr",)


def _abbrev(key: str) -> str:
  last = key.split(".")[-1]
  return ABBREV.get(last, last)


def _run_names(runs: list[tuple[str, dict]]) -> list[str]:
  """Short unique names: the method, then the values that vary within it (PAPER.md 4 axes)."""
  rank = {k: i for i, k in enumerate(NAME_KEY_ORDER)}
  keys = sorted({k for _, o in runs for k in o}, key=lambda k: (rank.get(k, len(rank)), k))
  by_method: dict[str, list[dict]] = {}
  for method, o in runs:
    by_method.setdefault(method, []).append(o)
  missing = object()
  varying = [k for k in keys
             if any(len({repr(o.get(k, missing)) for o in group}) > 1 for group in by_method.values())]

  def names(axes):
    out = []
    for method, o in runs:
      parts = [_abbrev(k) + values.fmt(o[k], "name", k in EXPONENT_KEYS)
               for k in axes if k in o]
      suffix = re.sub(r"[^A-Za-z0-9_.+^-]", "-", "_".join(parts))
      out.append(f"{method}/{suffix}" if suffix else method)
    return out

  # Drop axes that others already determine (e.g. a ghost batch size set from the batch size),
  # least important first, as long as the names stay unique.
  axes = list(varying)
  for key in reversed(varying):
    trial = [k for k in axes if k != key]
    if len(set(names(trial))) == len(runs):
      axes = trial
  return names(axes)


def expand(sweep: dict, validate: bool = True) -> list[Run]:
  """The sweep's runs with their directory names; with `validate`, every config is built and checked.

  Raises SweepError (one line) for a bad method name, an unknown config key, an invalid config, or
  two runs with the same config.
  """
  raw = []
  for i, r in enumerate(sweep["runs"]):
    method = r.get("method")
    if not isinstance(method, str) or not _SAFE_NAME.match(method):
      raise SweepError(f"run {i} of sweep {sweep['name']}: 'method' must be a name of letters, "
                       f"digits and _.+- (got {method!r})")
    overrides = {k: v for k, v in r.items() if k != "method"}
    bad = [k for k in overrides if "." not in k]
    if bad:
      raise SweepError(f"run {i} of sweep {sweep['name']}: {', '.join(bad)} are not full config "
                       "keys (section.name, e.g. train.lr)")
    raw.append((method, overrides))
  names = _run_names(raw)
  seen: dict[str, int] = {}
  for i, n in enumerate(names):
    if n in seen:
      raise SweepError(f"runs {seen[n]} and {i} of sweep {sweep['name']} have the same method "
                       f"and config ({n})")
    seen[n] = i

  module = _load_module(sweep["config"], "config file") if validate else None
  runs = []
  for name, (method, overrides) in zip(names, raw):
    resolved, data_path, data_source = {}, None, None
    if module is not None:
      try:
        config = module.get_config(sweep["config_arg"] or None)
        cfg_lib.apply_overrides(config, overrides)
        cfg_lib.fit_ghost_batch(config)  # what train.py does with the same command
        cfg_lib.validate(config)
      except ConfigError as e:
        raise SweepError(f"run {name}: {e}") from None
      data_source = config.data.source
      data_path = config.data.path if data_source == "folder" else None
      # Typed values (a "0.1" from the sweep argument becomes 0.1) keep names and the manifest exact.
      overrides = {k: _jsonable(config[k.split(".")[0]][k.split(".")[1]]) for k in overrides}
      for key in TABLE_KEYS:
        section, field = key.split(".")
        if section in config and field in config[section]:
          resolved[key] = _jsonable(config[section][field])
    runs.append(Run(name, method, overrides, resolved, data_path,
                    data_source if module is not None else None))
  return runs


def tfds_installed() -> bool:
  return importlib.util.find_spec("tensorflow_datasets") is not None


def unmet_needs(runs: Sequence[Run]) -> str:
  """One line naming what some of `runs` need and this machine lacks, or "": their folder data
  set, or TensorFlow for data.source=tfds (each trainer would refuse its run for it).

  Relative paths mean what they mean here: the trainers run in the launcher's directory.
  """
  for path in sorted({r.data_path for r in runs if r.data_path is not None}):
    if not os.path.exists(os.path.expanduser(path)):
      return (f"data.path={path!r} does not exist (data.source=folder): give the data set's "
              "folder or .tar.gz, e.g. data.path=/data/cifar10-jpeg.tar.gz")
  if any(r.data_source == "tfds" for r in runs) and not tfds_installed():
    return ("data.source=tfds (the default) needs TensorFlow and tensorflow-datasets, which are not "
            "installed (pip install -e .[imagenet]): with the data set's files, pass --data=PATH "
            "(a CIFAR-10 folder or .tar.gz, or cifar-10-python.tar.gz), or data.source=folder,"
            "data.path=PATH in the sweep argument")
  return ""


def _jsonable(value):
  return list(value) if isinstance(value, tuple) else value


# -------------------------------------------------------------------------------------- manifest

REPO_ROOT = os.path.dirname(cfg_lib.CONFIG_DIR)


def portable_path(path: str) -> str:
  """`path` relative to the repository when it lies inside it (configs/cifar10_wrn.py), else
  absolute: a manifest then holds no path of the machine that made it, and a sweep directory
  can move between machines (the launcher resolves the config file itself)."""
  if not path:
    return path
  full = os.path.abspath(path)
  rel = os.path.relpath(full, REPO_ROOT)
  return full if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel


def manifest(sweep: dict, runs: list[Run]) -> dict:
  """The sweep directory's sweep.json: how the sweep was made and every run it expects."""
  m = {
      "version": MANIFEST_VERSION, "name": sweep["name"], "table": sweep["table"],
      "sweep_file": portable_path(sweep.get("sweep_file", "")), "arg": sweep.get("arg", ""),
      "config": portable_path(sweep["config"]), "config_arg": sweep["config_arg"],
      "knobs": sweep.get("knobs", {}), "runs": [r.to_json() for r in runs],
  }
  if sweep.get("search"):  # (a grid sweep's manifest is as before)
    m["search"] = sweep["search"]
  return m


def search_of(m: dict) -> dict | None:
  """A manifest's learning-rate search settings (None: the grid)."""
  search = m.get("search")
  return search if isinstance(search, dict) and search.get("lr_search") == "ladder" else None


def _search_text(m: dict) -> str:
  s = search_of(m)
  return ("lr_search=grid" if s is None else
          f"lr_search=ladder,lr_patience={s['lr_patience']},lr_climb={values.fmt(s['lr_climb'])}")


def read_manifest(sweep_dir: str) -> dict:
  path = os.path.join(sweep_dir, MANIFEST)
  if not os.path.isfile(path):
    raise SweepError(f"{sweep_dir!r} is not a sweep directory: it has no {MANIFEST} "
                     "(scripts/sweep.py writes one)")
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise SweepError(f"cannot read {path}: {e}") from None


def runs_from_manifest(m: dict) -> list[Run]:
  return [Run(r["name"], r["method"], r["overrides"], r.get("resolved", {})) for r in m["runs"]]


def _results_keys(overrides: dict) -> str:
  return json.dumps({k: v for k, v in overrides.items() if k not in cfg_lib.RESUMABLE_KEYS},
                    sort_keys=True)


def _run_key(run: dict) -> tuple:
  return run["method"], _results_keys(run["overrides"])


def _identity(m: dict) -> tuple:
  """What makes two manifests the same sweep: the runs and what they train, not where the data
  lives or how the work is split (cfg_lib.RESUMABLE_KEYS), so that a relaunch can fix a data path;
  nor the runs' names, which follow from the rest (`adopt_names` keeps a directory's own)."""
  return (m["table"], m["config_arg"], os.path.basename(m["config"]),
          [_run_key(r) for r in m["runs"]], _search_text(m))


def adopt_names(sweep_dir: str, sweep: dict, runs: list[Run]) -> list[Run]:
  """`runs` named as the sweep directory's manifest names the same runs, if it holds this sweep.

  Run names have changed form (lr0.0625 became lr2^-4): a directory made before keeps its
  names, so that a relaunch finds its runs (trained, or to resume) instead of starting new ones.
  """
  if not os.path.isfile(os.path.join(sweep_dir, MANIFEST)):
    return runs
  try:
    old = read_manifest(sweep_dir)
    if _identity(old) != _identity(manifest(sweep, runs)):
      return runs
    names = [r["name"] for r in old["runs"]]
  except (SweepError, KeyError, TypeError):
    return runs  # (check_manifest reports an unreadable one)
  if len(set(names)) != len(runs):
    return runs
  return [dataclasses.replace(run, name=name) for run, name in zip(runs, names)]


def _started(sweep_dir: str, m: dict) -> list[str]:
  """The runs of manifest `m` that a trainer has started in `sweep_dir` (it wrote their config or
  a checkpoint); a run the trainer refused (bad input: it writes nothing) has not started."""
  started = []
  for r in m.get("runs", []):
    run_dir = os.path.join(sweep_dir, str(r.get("name", "")))
    status = rundir.read_status(run_dir)
    if (any(os.path.exists(os.path.join(run_dir, f))
            for f in (rundir.CONFIG, rundir.DATA, rundir.METRICS, rundir.CHECKPOINTS))
        or (status is not None and not status.get("refused"))):
      started.append(r["name"])
  return started


def _difference(old: dict, new: dict) -> str:
  """What tells two sweeps apart, in a few words."""
  if (old["table"], old["config_arg"]) != (new["table"], new["config_arg"]):
    return f"table/presets {old['table']}:{old['config_arg']!r} -> {new['table']}:{new['config_arg']!r}"
  if _search_text(old) != _search_text(new):
    return (f"the learning-rate search {_search_text(old)} -> {_search_text(new)} (a search's "
            "picks are made by its own settings)")
  if len(old["runs"]) != len(new["runs"]):
    return f"{len(old['runs'])} runs -> {len(new['runs'])}"
  for a, b in zip(old["runs"], new["runs"]):
    if _run_key(a) != _run_key(b):
      oa, ob = (json.loads(_results_keys({**r.get("resolved", {}), **r["overrides"]}))
                for r in (a, b))
      keys = sorted(k for k in set(oa) | set(ob) if oa.get(k) != ob.get(k))
      return "; ".join(f"{k} {oa.get(k)!r} -> {ob.get(k)!r}" for k in keys[:3]) + (
          f" (run {a['name']})" if keys else f"method {a['method']} -> {b['method']}")
  return "the config file"


def check_manifest(sweep_dir: str, m: dict) -> bool:
  """True if `sweep_dir` already has this sweep's manifest; False if it has none, or one of another
  sweep none of whose runs started (a launch that trained nothing does not pin the directory: it
  is replaced); else SweepError."""
  if not os.path.isfile(os.path.join(sweep_dir, MANIFEST)):
    return False
  old = read_manifest(sweep_dir)
  if _identity(old) == _identity(m):
    return True
  started = _started(sweep_dir, old)
  if not started:
    return False
  raise SweepError(
      f"{sweep_dir} holds a different sweep ({old.get('sweep_file')}:{old.get('arg')}, "
      f"{len(old['runs'])} runs, {len(started)} started) than this launch's "
      f"({m['sweep_file']}:{m['arg']}, {len(m['runs'])} runs): {_difference(old, m)}; use a new "
      "--sweep_dir, or the original --sweep argument")


def write_manifest(sweep_dir: str, m: dict) -> None:
  """Writes sweep.json, after checking that an existing one describes the same runs.

  The same runs with a new data path (say) are rewritten, so that the manifest, and the
  command a refusal quotes, name the launch that now trains them; so is the manifest of another
  sweep none of whose runs started.
  """
  path = os.path.join(sweep_dir, MANIFEST)
  if check_manifest(sweep_dir, m) and read_manifest(sweep_dir) == json.loads(json.dumps(m)):
    return
  os.makedirs(sweep_dir, exist_ok=True)
  rundir.write_json(path, m, indent=1)  # atomic: a concurrent launcher never reads half a manifest


# ------------------------------------------------------------------------------- help (--list)

# What the knobs of the sweeps in configs/sweeps mean (their defaults come from the functions'
# signatures). A sweep function may document a knob of its own in an "Args:" docstring section.
KNOB_HELP = {
    "epochs": "training epochs of every run (larger batches take fewer steps)",
    "seeds": "seeds per learning rate (0, 1, ...): the tables give mean ± std over them",
    "lr_exps": "the learning-rate grid 2^e for each e (lo:hi inclusive, or a;b;c)",
    "depths": "Wide-ResNet depths (6N+4), a;b;c",
    "depth": "network depth",
    "width": "Wide-ResNet widening factor",
    "batch_size": "global batch of every run",
    "batch_exps": "batch sizes 2^e for each e (lo:hi inclusive, or a;b;c)",
    "batch_sizes": "batch sizes, a;b;c",
    "ghost": "BatchNorm ghost batch (capped at the batch size)",
    "methods": "table rows, a;b;c, out of skipinit/sweep/methods.py's",
    "dropout": "regularized SkipInit's dropout rate before the classifier",
    "clips": "AGC thresholds lambda, a;b;c (0 = without AGC)",
    "base_lr": "learning rate per 256 examples: the grid is base_lr x B/256 x 2^k",
    "lr_search": "grid: train every learning rate of lr_exps; ladder: per table cell, walk x2 "
                 "from a centre and train only the rates the search for the best needs (lr_exps "
                 "bounds it)",
    "lr_patience": "ladder: a walk ends after this many consecutive rates worse than the best by "
                   "both test accuracy and training loss (or a divergence, or the grid's end)",
    "lr_climb": "ladder: the upward walk goes on to a divergence, for an exact largest stable lr "
                "(default: true for the batch-size study, false elsewhere)",
}
SWEEPS_DIR = os.path.join(cfg_lib.CONFIG_DIR, "sweeps")


def _docstring_args(fn) -> dict:
  """{name: text} of a Google-style "Args:" section of `fn`'s docstring."""
  doc = inspect.getdoc(fn) or ""
  out, current, inside = {}, None, False
  for line in doc.splitlines():
    if line.strip() in ("Args:", "Arguments:"):
      inside = True
      continue
    if inside:
      match = re.match(r"\s{2,}(\w+)(?: \([^)]*\))?: (.*)", line)
      if match:
        current = match.group(1)
        out[current] = match.group(2).strip()
      elif line.startswith("    ") and current:
        out[current] += " " + line.strip()
      elif line.strip() and not line.startswith(" "):
        inside = False
  return out


def knob_help(fn) -> list[tuple[str, str, str]]:
  """(knob, default, meaning) of each knob of a sweep function, from its signature and docstring."""
  args = _docstring_args(fn)
  out = [(name, values.fmt(p.default, "help"), args.get(name) or KNOB_HELP.get(name, ""))
         for name, p in inspect.signature(fn).parameters.items()
         if p.default is not inspect.Parameter.empty]
  if has_lr_axis(fn):
    out += [(k, "table" if k == "lr_climb" else values.fmt(v, "help"), KNOB_HELP[k])
            for k, v in SEARCH_KNOBS.items()]
  return out


def _needs(config) -> str:
  tf = ("TensorFlow (pip install -e .[imagenet]; "
        f"{'installed' if tfds_installed() else 'not installed'} here)")
  if config.data.source == "synthetic":
    return "nothing: synthetic data"
  if config.data.name == "imagenet2012":
    return (f"ImageNet: prepared for tfds with scripts/prepare_imagenet.py and {tf}, or "
            "--data=FOLDER (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG)")
  return ("CIFAR-10: --data=PATH, a class-folder tree or .tar.gz of one (cifar10-jpeg.tar.gz) or "
          f"the python archive cifar-10-python.tar.gz; without --data, data.source=tfds needs {tf}")


def describe_sweep(path: str) -> str:
  """A sweep file's knobs with defaults and meanings, its presets and what it needs (--list)."""
  sweep = load_sweep(path)
  fn, module = sweep["fn"], cfg_lib.import_file(sweep["config"])
  title = (inspect.getdoc(cfg_lib.import_file(path)) or "").split("\n")[0]
  lines = [f"{portable_path(path)}  (table: {sweep['table']}; {len(sweep['runs'])} runs at the "
           "defaults)", f"  {title}", "  knobs (default, meaning):"]
  presets = getattr(module, "PRESETS", {})
  names = cfg_lib.preset_names(presets)
  knobs = knob_help(fn)
  if names:
    knobs.append(("preset", "NAME", f"a preset of {os.path.basename(sweep['config'])}, its depth, "
                  f"width, epochs, batch and ghost batch the knobs' defaults: {'; '.join(names)}"))
  for k, d, h in knobs:
    if k == "methods":
      h += f" ({', '.join(methods_lib.method_overrides())})"
    text = f"{k}={d}"
    lines.append(f"    {text:22s}  {h}" if len(text) <= 22 else f"    {text}\n    {'':22s}  {h}")
  lines.append(f"  needs: {_needs(module.get_config(None))}")
  return "\n".join(lines)


def describe_sweeps(sweeps_dir: str = SWEEPS_DIR) -> str:
  """Every sweep file in `sweeps_dir`, described (scripts/sweep.py --list and --help)."""
  out = []
  for name in sorted(os.listdir(sweeps_dir)):
    if name.endswith(".py") and not name.startswith("_"):
      try:
        out.append(describe_sweep(os.path.join(sweeps_dir, name)))
      except SkipInitError as e:  # one broken file must not hide the others
        out.append(f"{portable_path(os.path.join(sweeps_dir, name))}: cannot be described: {e}")
  return "\n\n".join(out)
