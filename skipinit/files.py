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


def write_report(out: str, record, markdown: str) -> None:
  """The scripts' report files: `<out>.json` (the record) and `<out>.md`, or the Markdown on stdout
  when `out` is empty."""
  if not out:
    print(markdown, end="")
    return
  import json  # (kept local: this module is imported by everything, json by few of them)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  atomic_write(out + ".json", json.dumps(record, indent=1))
  atomic_write(out + ".md", markdown)
  print(f"wrote {out}.md, {out}.json")
