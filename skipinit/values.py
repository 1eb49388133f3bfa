"""Config values as text and back, in one place: `parse` reads config overrides (key=value in a
config argument), and sweep knobs ("lo:hi" ranges, "a;b;c" lists); `fmt` writes the
trainers' --config.key=value flags, run directory names and the defaults in help texts."""

import math

from skipinit.errors import ConfigError

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def parse(key: str, text: str, default, *, where: str = "", error=ConfigError, whole=None):
  """`text` as the type of `default`: bool, int, float, a tuple of its first element's type (a;b;c,
  or lo:hi for integers), or a str; a None default (an unset key) reads true, false, none and
  numbers, else keeps the text. A bad value raises `error`, naming `where + key`."""
  if isinstance(default, (tuple, list)):
    return _parse_list(key, text.strip("()[] "), default, where, error)
  low = text.strip().lower()
  try:
    if isinstance(default, bool) or (default is None and low in ("true", "false", "none")):
      if low not in _TRUE + _FALSE + ("none",):
        raise ValueError
      return None if low == "none" else low in _TRUE
    if default is None:
      for convert in (int, float):
        try:
          return convert(text)
        except ValueError:
          pass
    elif isinstance(default, int):
      return int(text)
    elif isinstance(default, float):
      return float(text)
  except ValueError:
    kind = ("true or false" if isinstance(default, bool) else "an integer"
            if isinstance(default, int) else "a number")
    inside = f" (in {key}={whole!r})" if whole not in (None, text) else ""
    raise error(f"{where}{key}: {text!r} is not {kind}{inside}") from None
  return text


def _parse_list(key: str, text: str, default, where: str, error) -> tuple:
  element = default[0] if len(default) else ""
  # "lo:hi" is an inclusive integer range (exponents of a powers-of-2 grid); "a;b;c" a list.
  if ":" in text and isinstance(element, int) and not isinstance(element, bool):
    lo, _, hi = text.partition(":")
    if ":" in hi:
      raise error(f"{where}{key}={text!r}: a range is lo:hi (inclusive, step 1); list other "
                  "values as a;b;c")
    lo, hi = (parse(key, t, 0, where=where, error=error, whole=text) for t in (lo, hi))
    if hi < lo:
      raise error(f"{where}{key}={text!r}: empty range (use lo:hi with lo <= hi)")
    return tuple(range(lo, hi + 1))
  return tuple(parse(key, item.strip(), element, where=where, error=error, whole=text)
               for item in text.split(";") if item.strip())


def fmt(value, style: str = "flag", exponent: bool = False) -> str:
  """`value` as text for a trainer's flag ("flag": --config.key=VALUE, which ml_collections reads
  back; a tuple is "(a,b)"), a run directory's name ("name": whole floats without ".0"; with
  `exponent`, powers of two as 2^k) or help ("help": %g, a;b;c, lo:hi for a run of integers)."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (tuple, list)) and style == "flag":
    return "(" + ",".join(map(str, value)) + ")"
  if isinstance(value, (tuple, list)) and style == "help":
    if (len(value) > 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        and list(value) == list(range(value[0], value[-1] + 1))):
      return f"{value[0]}:{value[-1]}"
    return ";".join(fmt(v, style) for v in value)
  if isinstance(value, float) and style == "help":
    return f"{value:g}"
  if isinstance(value, float) and style == "name":
    mantissa, power = math.frexp(value)
    if exponent and mantissa == 0.5:
      return f"2^{power - 1}"
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
  return str(value)
