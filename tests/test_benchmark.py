"""The benchmark script's pieces (issue 6) run on CPU; figures are checked for sanity, not speed."""

import pytest

from skipinit import config as cfg_lib
from skipinit.train import benchmark


@pytest.mark.parametrize("depth,width,gflops", [(16, 4, 2.36), (28, 10, 31.5), (100, 2, 5.36),
                                                (1000, 2, 56.3)])
def test_analytic_flops_match_the_reference_counts(depth, width, gflops):
  m = cfg_lib.base_config().model
  m.depth, m.width = depth, width
  assert 6 * benchmark.forward_macs(m) / 1e9 == pytest.approx(gflops, rel=2e-3)


def test_bench_one_times_the_real_train_chunk(cifar_config):
  r = benchmark.bench_one(cifar_config, "10-1", "skipinit", 16, steps_per_dispatch=2, dispatches=2,
                          extra="num_devices=1")
  assert r.compile_s > 0 and r.examples_per_sec > 0 and r.tflops > 0
  assert "WRN-10-1" in benchmark.format_table([r])
