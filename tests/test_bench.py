"""The measuring tools behind `affseg bench` measure what they claim."""
import math
import sys

import pytest
import torch

from affseg import bench


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS reset needs /proc/self/clear_refs (Linux)")
def test_peak_extra_memory_sees_a_temporary():
    cpu = torch.device("cpu")
    mib = bench.peak_extra_mib(lambda: torch.ones(16 * 2**20).sum(), cpu)  # a 64 MiB temporary
    assert 56 <= mib <= 96, mib
    small = bench.peak_extra_mib(lambda: torch.ones(16).sum(), cpu)
    assert small < 8, small


def test_median_time_is_positive_and_ordered():
    cpu = torch.device("cpu")
    fast = bench.median_ms(lambda: torch.ones(10).sum(), cpu, repeats=3)
    slow = bench.median_ms(lambda: torch.ones(2**22).cumsum(0), cpu, repeats=3)
    assert 0 < fast < slow


def test_every_case_builds_and_runs_on_reference():
    for case in bench.cases(quick=True):
        assert case.name and case.size
        if "fwd+bwd (dense" in case.name or "supcon" in case.name:
            continue  # large reference runs belong to `affseg bench`, not the unit tests
        out = case.make(torch.device("cpu"))("reference")
        leaves = out if isinstance(out, tuple) else (out,)
        assert all(torch.isfinite(t.float()).all() for t in leaves)
    assert math.isfinite(bench.median_ms(lambda: None, torch.device("cpu"), repeats=1))


def test_write_csv_creates_the_folder_and_round_trips(tmp_path):
    import csv

    rows = [{"op": "a", "ms": 1.5}, {"op": "b", "ms": 2.0}]
    path = tmp_path / "results" / "x.csv"
    bench.write_csv(path, rows)
    with open(path, newline="") as f:
        assert list(csv.DictReader(f)) == [{"op": "a", "ms": "1.5"}, {"op": "b", "ms": "2.0"}]
