r"""Writes the paper's tables and figures from sweep directories (PAPER.md section 5).

  python scripts/make_tables.py --sweep_dir=runs/depth_table[,runs/ablation_table,...] --out_dir=DIR

For every sweep directory (its sweep.json says which table it feeds) writes <table>.md, <table>.csv,
<table>.tex and <table>_runs.csv, plus for the batch-size study fig_batch_size_accuracy.{png,pdf}
and fig_batch_size_lr.{png,pdf}, and for the AGC study fig_agc_batch_size.{png,pdf}. Reads only the
sweep manifests and the run directories' config.json, status.json and metrics.jsonl; unfinished runs
are listed under each table, never averaged in. Can run while a sweep is still training.
"""

import os
import sys

from absl import app, flags

from skipinit.analysis import tables
from skipinit.cli import parse_flags_or_exit
from skipinit.errors import SkipInitError

FLAGS = flags.FLAGS
flags.DEFINE_list("sweep_dir", None, "Sweep directories (made by scripts/sweep.py), comma-separated.")
flags.DEFINE_string("out_dir", None, "Where the tables and figures go.")
flags.DEFINE_bool("figures", True, "Also draw the figures (matplotlib).")
flags.mark_flags_as_required(["sweep_dir", "out_dir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    built = tables.build_tables(FLAGS.sweep_dir)
    for table in built:
      paths = tables.write_table(table, FLAGS.out_dir)
      if FLAGS.figures and table.name in ("batch_size_table", "agc_table"):
        from skipinit.analysis import table_figures
        paths += table_figures.figures_for(table, FLAGS.out_dir)
      todo, needed = tables.unfinished(table.runs), tables.needed_runs(table.runs)
      print(f"{table.name}: {len(needed) - len(todo)}/{len(needed)} runs finished -> "
            + ", ".join(paths))
      if todo:
        print(f"  {len(todo)} runs unfinished (listed in {table.name}.md); they are not in any mean")
  except SkipInitError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except BrokenPipeError:  # `| head`: the reader left; not an error
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags_or_exit)
