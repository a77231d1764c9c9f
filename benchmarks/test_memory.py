"""Peak extra resident memory of the exact forward+backward (measured in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _extra_rss_mib(n: int) -> float:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", "--n", str(n)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])["extra_rss_mib"]


@pytest.mark.slow
def test_forward_backward_2048_under_100_mib():
    """The issue's target: n = m1 = m2 = 2048, d = 16 in under 100 MB extra (takes ~45 s)."""
    assert _extra_rss_mib(2048) < 100


def test_forward_backward_512_streams():
    """At n = 512 a stored n×m1×m2 float64 tensor would take 1 GiB; the kernels need ~1 MiB."""
    assert _extra_rss_mib(512) < 32
