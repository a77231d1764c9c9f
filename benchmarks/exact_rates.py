"""Exact CPU kernels against the machine's matrix-product rate, in one run (issue #14).

For each dtype, NumPy's matrix-product rate (a 1024 × 1024 product, best of 5) is measured in the
same process, and the exact forward and forward+backward are timed (best of ``--repeat``) at
n = m1 = m2 and d = dv. Flop convention (as benchmarks/test_exact.py): forward 4·n³·d (logits
2·n³·d, value contraction 2·n³·dv), forward+backward 16·n³·d (the backward recomputes the logits
and performs five more contractions of the same size); exponentials are not counted.

Run: ``python -m benchmarks.exact_rates`` (n = 512, a minute) or
``python -m benchmarks.exact_rates --sizes 512 2048 --out docs/exact_rates.md`` (n = 2048 takes
about ten minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import platform
import time

import numba
import numpy as np

import tattn_numba as ta


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_rate(dtype, size: int = 1024, repeat: int = 5) -> float:
    """NumPy's matrix-product rate for ``dtype`` in GFLOP/s (best of ``repeat``)."""
    rng = np.random.default_rng(0)
    A, B = (rng.standard_normal((size, size)).astype(dtype) for _ in range(2))
    A @ B
    return 2.0 * size**3 / _best(lambda: A @ B, repeat) / 1e9


def exact_rates(dtype, n: int, d: int, repeat: int) -> tuple[float, float]:
    """(forward, forward+backward) GFLOP/s of the exact CPU kernels at n = m1 = m2, d = dv."""
    rng = np.random.default_rng(1)
    X = [rng.uniform(-1.0, 1.0, (n, d)).astype(dtype) for _ in range(6)]
    ta.attention_grad(*(x[:32] for x in X))  # compile outside the timing
    forward = _best(lambda: ta.attention(*X[:5]), repeat)
    both = _best(lambda: ta.attention_grad(*X), max(1, repeat - 1))
    return 4.0 * n**3 * d / forward / 1e9, 16.0 * n**3 * d / both / 1e9


def _per_pair(fn, pairs: int, reps: int = 2000) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps / pairs * 1e9


def profile(d: int, n: int = 256) -> str:
    """Where a forward's time goes, per (i, j1, j2) pair in ns on one thread: the building blocks
    of one tile (KEY_TILE_2 × KEY_TILE_1 pairs) timed alone, their sum, the whole forward on one
    thread, and the speed-up of all threads over one."""
    from tattn_numba import config
    from tattn_numba.exact import cpu

    t1, t2, dv = config.KEY_TILE_1, config.KEY_TILE_2, d
    threads = numba.get_num_threads()
    rows = [f"| dtype | logit tile S = K2·A | tile max | exp + sum | T += V2ᵀ·P | sum of parts | forward, 1 thread "
            f"| forward, {threads} threads (speed-up) |", "|---|---|---|---|---|---|---|---|"]
    rng = np.random.default_rng(2)
    for dtype in (np.float64, np.float32):
        k2, a, v2t = (rng.standard_normal(size).astype(dtype) for size in (t2 * d, d * t1, dv * t2))
        s, t = np.empty(t2 * t1, dtype), np.zeros(dv * t1, dtype)
        pairs = t1 * t2
        logits = _per_pair(lambda: cpu._mm(k2, d, a, t1, s, t1, t2, d, t1, False), pairs)
        s[:] = -rng.uniform(0.0, 20.0, s.size)
        peak = _per_pair(lambda: cpu._tile_max(s, s.size), pairs)
        exp = _per_pair(lambda: cpu._exp_shifted(s, s.size, 1.0, 1e-30), pairs)
        values = _per_pair(lambda: cpu._mm(v2t, t2, s, t1, t, t1, dv, t2, t1, True), pairs)
        X = [rng.uniform(-1.0, 1.0, (n, d)).astype(dtype) for _ in range(5)]
        ta.attention(*X)
        numba.set_num_threads(1)
        try:
            one = _best(lambda: ta.attention(*X), 3) / n**3 * 1e9
        finally:
            numba.set_num_threads(threads)
        many = _best(lambda: ta.attention(*X), 3) / n**3 * 1e9
        parts = logits + peak + exp + values
        rows.append(f"| {np.dtype(dtype).name} | {logits:.2f} | {peak:.2f} | {exp:.2f} | {values:.2f} | {parts:.2f} "
                    f"| {one:.2f} | {many:.2f} ({one / many:.2f}×) |")
    return (f"Forward profile, d = dv = {d}, n = m1 = m2 = {n}, ns per pair (one thread unless said):\n\n"
            + "\n".join(rows) + "\n")


def table(sizes, dims, repeat: int) -> str:
    rates = {dtype: matmul_rate(dtype) for dtype in (np.float64, np.float32)}
    rows = [f"Machine: {platform.processor() or platform.machine()}, {numba.get_num_threads()} threads; "
            f"NumPy matrix product {rates[np.float64]:.1f} GFLOP/s (float64), {rates[np.float32]:.1f} GFLOP/s "
            "(float32), same run.", "",
            "| n | d | dtype | forward GFLOP/s | % of matmul | forward+backward GFLOP/s | % of matmul |",
            "|---|---|---|---|---|---|---|"]
    speedups = []
    for n in sizes:
        for d in dims:
            measured = {}
            for dtype in (np.float64, np.float32):
                fwd, both = exact_rates(dtype, n, d, repeat)
                measured[dtype] = (fwd, both)
                mm = rates[dtype]
                rows.append(f"| {n} | {d} | {np.dtype(dtype).name} | {fwd:.1f} | {100 * fwd / mm:.0f} % | {both:.1f} "
                            f"| {100 * both / mm:.0f} % |")
            speedups.append(f"| {n} | {d} | {measured[np.float32][0] / measured[np.float64][0]:.2f} "
                            f"| {measured[np.float32][1] / measured[np.float64][1]:.2f} |")
    rows += ["", "float32 against float64, same run (time ratio):", "",
             "| n | d | forward | forward+backward |", "|---|---|---|---|"] + speedups
    return "\n".join(rows) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512])
    parser.add_argument("--dims", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", help="also write the table to this file (never overwritten without it)")
    args = parser.parse_args(argv)
    text = table(args.sizes, args.dims, args.repeat) + "\n" + "\n".join(profile(d) for d in args.dims)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("# Exact CPU kernels against the matrix-product rate\n\n"
                    f"`python -m benchmarks.exact_rates --sizes {' '.join(map(str, args.sizes))} "
                    f"--dims {' '.join(map(str, args.dims))}`\n\n" + text)


if __name__ == "__main__":
    main()
