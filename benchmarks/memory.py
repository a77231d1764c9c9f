"""Peak extra resident memory of one exact forward+backward, measured in a fresh process.

Run: ``python -m benchmarks.memory --n 2048`` (d = dv = 16, float64). Prints the peak RSS
above the level reached after the inputs exist and the kernels are compiled (Linux
``VmHWM``, reset through ``/proc/self/clear_refs``), which is what the call itself needs.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import tattn_numba as ta


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def measure(n: int, d: int = 16) -> dict:
    rng = np.random.default_rng(0)
    Q, K1, K2, V1, V2, dO = (rng.uniform(-1, 1, (n, d)) for _ in range(6))
    ta.attention_grad(Q[:8], K1[:8], K2[:8], V1[:8], V2[:8], dO[:8])
    _reset_peak()
    baseline = _status_kib("VmRSS")
    start = time.perf_counter()
    ta.attention_grad(Q, K1, K2, V1, V2, dO)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    return {"n": n, "d": d, "seconds": round(seconds, 2), "extra_rss_mib": round((peak - baseline) / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048, help="n = m1 = m2 (default 2048)")
    parser.add_argument("--d", type=int, default=16, help="d = dv (default 16)")
    args = parser.parse_args()
    print(json.dumps(measure(args.n, args.d)))


if __name__ == "__main__":
    main()
