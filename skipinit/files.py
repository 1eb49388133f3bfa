"""Atomic file writes: a reader sees the old file or the new one whole, never half of one."""

import os
import tempfile
from typing import Callable


def _default_mode() -> int:
  """The mode `open()` would give a new file (0666 less the umask): mkstemp's own is 0600, which
  would hide run directories and data caches from the rest of a group sharing them."""
  mask = os.umask(0)
  os.umask(mask)
  return 0o666 & ~mask


def atomic_write(path: str, content: str | bytes | Callable) -> None:
  """Writes `content` (text, bytes, or a function of a binary file) to a temporary file beside
  `path`, then renames it over `path`."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp_")
  try:
    with os.fdopen(fd, "wb") as f:
      if callable(content):
        content(f)
      else:
        f.write(content.encode() if isinstance(content, str) else content)
    os.chmod(tmp, _default_mode())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
