"""Time and peak extra resident memory of the surrogate's forward+backward in a fresh process.

Run: ``python -m benchmarks.poly_memory --n 1000000 --degree 4`` (d = dv = 8, float64, entries
uniform in [−1, 1]). Prints JSON with the forward and backward seconds and the peak RSS above
the level after the inputs exist and the kernels are compiled.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import tattn_numba as ta

from .memory import _reset_peak, _status_kib


def measure(n: int, d: int, degree: int, family: str) -> dict:
    rng = np.random.default_rng(0)
    Q, K1, K2, V1, V2, dO = (rng.uniform(-1, 1, (n, d)) for _ in range(6))
    small = [x[:256] for x in (Q, K1, K2, V1, V2, dO)]
    ta.attention_grad(*small, method="poly", degree=degree, family=family)
    _reset_peak()
    baseline = _status_kib("VmRSS")
    start = time.perf_counter()
    _, state = ta.attention_forward(Q, K1, K2, V1, V2, method="poly", degree=degree, family=family)
    forward = time.perf_counter() - start
    ta.attention_backward(state, dO)
    total = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    return {
        "n": n, "d": d, "degree": degree, "family": family, "rank": state.certificate.rank,
        "forward_s": round(forward, 2), "forward_backward_s": round(total, 2),
        "extra_rss_mib": round((peak - baseline) / 1024, 1),
        "certified_output_bound": state.certificate.max_output_bound,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=8)
    parser.add_argument("--degree", type=int, default=4)
    parser.add_argument("--family", default="chebyshev")
    args = parser.parse_args()
    print(json.dumps(measure(args.n, args.d, args.degree, args.family)))


if __name__ == "__main__":
    main()
