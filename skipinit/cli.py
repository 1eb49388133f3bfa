"""What the scripts share on the command line: a bad flag is one `error:` line and exit status 2.

absl reports a missing required flag or a bad enum value as "FATAL Flags parsing error" and exit
1, the status of a failed run; scripts/train.py has its own parser (config-file errors too).
"""

import os
import sys

from absl import flags


def parse_flags_or_exit(argv):
  """`app.run(main, flags_parser=parse_flags_or_exit)`: absl's parsing, its errors as one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e} (--help lists the flags)", file=sys.stderr)
    sys.exit(2)
  except BrokenPipeError:  # `--help | head`: the reader left; not an error
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)
