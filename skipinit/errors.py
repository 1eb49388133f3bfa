"""User-facing errors: the entry points print these as one line, without a traceback."""


class SkipInitError(Exception):
  """Base class of the errors a user can fix by changing the command line or the files."""


class ConfigError(SkipInitError, ValueError):
  """A config value is invalid; the message says which value and what is allowed."""


class DataError(SkipInitError, FileNotFoundError):
  """A data set is missing or unreadable; the message says how to get it."""


class CheckpointError(SkipInitError, RuntimeError):
  """No usable checkpoint could be restored."""
