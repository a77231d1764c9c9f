"""Exact CPU kernels against the machine's matrix-product rate, in one run (issue #14).

For each size and dtype, the exact forward and forward+backward at n = m1 = m2, d = dv are timed
interleaved with NumPy's matrix product (1024 × 1024) of the same dtype, round by round (best of
``--repeat`` rounds), so each "% of matmul" compares two rates measured under the same load.
Flop convention (as benchmarks/test_exact.py): forward 4·n³·d (logits 2·n³·d, value contraction
2·n³·dv), forward+backward 16·n³·d (the backward recomputes the logits and performs five more
contractions of the same size); exponentials are not counted.

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
from verification.timing import best_time, best_times


def _matmul(dtype, size: int = 1024):
    """A ``size`` × ``size`` matrix product of ``dtype`` and its flop count 2·size³."""
    rng = np.random.default_rng(0)
    A, B = (rng.standard_normal((size, size)).astype(dtype) for _ in range(2))
    return (lambda: A @ B), 2.0 * size**3


def rates(n: int, d: int, repeat: int) -> dict:
    """GFLOP/s of NumPy's matrix product and of the exact forward and forward+backward at
    n = m1 = m2, d = dv, for float64 and float32, keyed ``(kind, dtype)`` with kind "forward",
    "both" (forward+backward), "matmul forward" and "matmul both" (the product's rate in the rounds
    of each).

    The forwards are timed interleaved with the matrix products (:func:`verification.timing.best_times`,
    best of ``repeat`` rounds), the forward+backwards likewise (best of ``repeat - 1``), so every
    ratio of the tables compares rates measured under the same machine load; a pause before each
    timed call lets the BLAS threads of the previous product go idle."""
    rng = np.random.default_rng(1)
    ops, flops = {}, {}
    for dtype in (np.float64, np.float32):
        X = [rng.uniform(-1.0, 1.0, (n, d)).astype(dtype) for _ in range(6)]
        ta.attention_grad(*(x[:32] for x in X))  # compile outside the timing
        ops[("matmul", dtype)], flops[("matmul", dtype)] = _matmul(dtype)
        ops[("forward", dtype)], flops[("forward", dtype)] = (lambda X=X: ta.attention(*X[:5])), 4.0 * n**3 * d
        ops[("both", dtype)], flops[("both", dtype)] = (lambda X=X: ta.attention_grad(*X)), 16.0 * n**3 * d
    out = {}
    for kind, rounds in (("forward", repeat), ("both", max(1, repeat - 1))):
        keys = [(k, dtype) for dtype in (np.float64, np.float32) for k in ("matmul", kind)]
        seconds = best_times({key: ops[key] for key in keys}, rounds, pause=0.5)
        for op, dtype in keys:
            name = kind if op == kind else f"matmul {kind}"
            out[(name, dtype)] = flops[(op, dtype)] / seconds[(op, dtype)] / 1e9
    return out


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
    from tattn_numba.exact import cpu

    dv = d
    threads = numba.get_num_threads()
    rows = [f"| dtype | logit tile S = K2·A | tile max | exp + sum | T += V2ᵀ·P | sum of parts | forward, 1 thread "
            f"| forward, {threads} threads (speed-up) |", "|---|---|---|---|---|---|---|---|"]
    rng = np.random.default_rng(2)
    for dtype in (np.float64, np.float32):
        t1, t2 = cpu._tiles(np.dtype(dtype).itemsize)
        k2, a, v2t = (rng.standard_normal(size).astype(dtype) for size in (t2 * d, d * t1, dv * t2))
        s, t = np.empty(t2 * t1, dtype), np.zeros(dv * t1, dtype)
        pairs = t1 * t2
        logits = _per_pair(lambda: cpu._mm(k2, d, a, t1, s, t1, t2, d, t1, False), pairs)
        s[:] = -rng.uniform(0.0, 20.0, s.size)
        peak = _per_pair(lambda: cpu._tile_max(s, s.size), pairs)
        forward_exp = cpu._exp_running32 if dtype == np.float32 else cpu._exp_shifted
        exp = _per_pair(lambda: forward_exp(s, s.size, 1.0, 0.0), pairs)
        values = _per_pair(lambda: cpu._mm(v2t, t2, s, t1, t, t1, dv, t2, t1, True), pairs)
        X = [rng.uniform(-1.0, 1.0, (n, d)).astype(dtype) for _ in range(5)]
        ta.attention(*X)
        numba.set_num_threads(1)
        try:
            one = best_time(lambda: ta.attention(*X), 3) / n**3 * 1e9
        finally:
            numba.set_num_threads(threads)
        many = best_time(lambda: ta.attention(*X), 3) / n**3 * 1e9
        parts = logits + peak + exp + values
        rows.append(f"| {np.dtype(dtype).name} | {logits:.2f} | {peak:.2f} | {exp:.2f} | {values:.2f} | {parts:.2f} "
                    f"| {one:.2f} | {many:.2f} ({one / many:.2f}×) |")
    return (f"Forward profile, d = dv = {d}, n = m1 = m2 = {n}, ns per pair (one thread unless said):\n\n"
            + "\n".join(rows) + "\n")


def table(sizes, dims, repeat: int) -> str:
    rows = [f"Machine: {platform.processor() or platform.machine()}, {numba.get_num_threads()} threads. "
            "NumPy's matrix product (1024 × 1024) is timed interleaved with every row's kernels, and each "
            "% is against that same-round rate.", "",
            "| n | d | dtype | matmul GFLOP/s | forward GFLOP/s | % of matmul | forward+backward GFLOP/s "
            "| % of matmul |", "|---|---|---|---|---|---|---|---|"]
    speedups = []
    for n in sizes:
        for d in dims:
            r = rates(n, d, repeat)
            for dtype in (np.float64, np.float32):
                mm, fwd = r[("matmul forward", dtype)], r[("forward", dtype)]
                both = r[("both", dtype)]
                rows.append(f"| {n} | {d} | {np.dtype(dtype).name} | {mm:.1f} | {fwd:.1f} | {100 * fwd / mm:.0f} % "
                            f"| {both:.1f} | {100 * both / r[('matmul both', dtype)]:.0f} % |")
            speedups.append(f"| {n} | {d} | {r[('forward', np.float32)] / r[('forward', np.float64)]:.2f} "
                            f"| {r[('both', np.float32)] / r[('both', np.float64)]:.2f} |")
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
