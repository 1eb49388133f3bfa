"""Atomic file writes: a reader sees the old file or the new one whole, never half of one."""

import os
import secrets
from typing import Callable


def atomic_write(path: str, content: str | bytes | Callable) -> None:
  """Writes `content` (text, bytes, or a function of a binary file) to a temporary file beside
  `path`, then renames it over `path`.

  The temporary file is created as open() would create it (0666 less the umask), not as
  tempfile.mkstemp does (0600, which would hide run directories and data caches from the rest of
  a group sharing them), and without touching the process's umask (other threads, orbax's
  among them, create files meanwhile).
  """
  tmp = os.path.join(os.path.dirname(path) or ".", f".tmp_{secrets.token_hex(8)}")
  fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
  try:
    with os.fdopen(fd, "wb") as f:
      if callable(content):
        content(f)
      else:
        f.write(content.encode() if isinstance(content, str) else content)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
