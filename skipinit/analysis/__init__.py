"""Analyses that regenerate the paper's tables and figures, from stored runs or networks at init.

  tables          the tables of the sweeps (PAPER.md sections 4-5), from run directories
  table_figures   the figures of the batch-size and AGC studies, drawn from those tables
  paths           Figure 3: share of the output variance carried by paths through k branches
  signal          Figure 4: per-block variance of the skip path and residual branch at init

Modules are imported explicitly (nothing is re-exported here), so that importing one analysis
never pulls in the dependencies of another (signal imports JAX and the model zoo).
"""
