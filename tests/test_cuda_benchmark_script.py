"""The GPU benchmark script (benchmarks/cuda.py) runs end to end, so it is ready on a GPU machine.

Under the simulator (no GPU) it runs with tiny sizes; its numbers are meaningless, but every
code path of the script (GEMM rate, exact and surrogate timings, slopes, Markdown and JSON) runs.
"""

from __future__ import annotations

import json

import pytest

from tattn_numba import _cuda

pytest.importorskip("numba_cuda")


def test_benchmark_script_writes_markdown_and_json(tmp_path):
    try:
        _cuda.require()
    except _cuda.CUDAUnavailableError as exc:  # pragma: no cover
        pytest.skip(str(exc))
    if not _cuda.simulator_enabled():
        pytest.skip("on a real GPU run `python -m benchmarks.cuda` itself")
    from benchmarks import cuda as bench

    out = tmp_path / "cuda.md"
    result = bench.main(["--exact-sizes", "3", "5", "--poly-sizes", "6", "12", "--poly-d", "2", "--degree", "2",
                         "--d", "2", "--gemm-size", "6", "--repeat", "1", "--out", str(out)])
    text = out.read_text()
    assert "# CUDA benchmarks" in text and "simulator" in text
    assert [row["n"] for row in result["exact"]] == [3, 5, 3, 5]
    assert {row["dtype"] for row in result["exact"]} == {"float32", "float64"}
    assert all(row["forward_s"] > 0 and row["forward_backward_s"] > 0 for row in result["exact"] + result["poly"])
    assert json.loads(out.with_suffix(".json").read_text())["poly_slope_forward_backward"] == pytest.approx(
        result["poly_slope_forward_backward"])
