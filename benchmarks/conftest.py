"""Shared fixtures of the benchmark suites: seeded inputs and a record of timings per group,
so each suite can report the ratio between implementations measured in the same run."""

from __future__ import annotations

import numpy as np
import pytest

#: Minimum times (seconds) of the benchmarks run so far, keyed by (group, implementation).
TIMINGS: dict[tuple[str, str], float] = {}


@pytest.fixture
def rng():
    return np.random.default_rng(20261125)


def record(benchmark, group: str, implementation: str, flops: float | None = None) -> None:
    """Store this benchmark's minimum time and put GFLOP/s and ratios into ``extra_info``
    (nothing under ``--benchmark-disable``, where the function ran once untimed)."""
    if benchmark.stats is None:
        return
    best = benchmark.stats.stats.min
    TIMINGS[(group, implementation)] = best
    benchmark.extra_info["implementation"] = implementation
    if flops is not None:
        benchmark.extra_info["gflops"] = round(flops / best / 1e9, 2)
    for (other_group, other), seconds in TIMINGS.items():
        if other_group == group and other != implementation:
            benchmark.extra_info[f"speedup_vs_{other}"] = round(seconds / best, 2)
