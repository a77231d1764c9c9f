"""Runtime scaling of the exact kernel with n = m1 = m2, fitted on a log-log scale.

Run: ``python -m benchmarks.scaling --out docs/scaling_exact.md`` (default sizes 64–512,
d = dv = 16, float64). Each size is timed ``--repeat`` times after a warm-up and the minimum
is kept; the slope of log(time) against log(n) is fitted by least squares (theory: 3 for the
exact kernel). The table and the slope are written as Markdown with the command that
produced them.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numba
import numpy as np

import tattn_numba as ta


def best_time(fn, args, repeat: int) -> float:
    fn(*args)
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - start)
    return best


def loglog_slope(sizes, seconds) -> float:
    slope, _ = np.polyfit(np.log(sizes), np.log(seconds), 1)
    return float(slope)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--d", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=None, help="Markdown file to write (default: print only)")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    rows = []
    for n in args.sizes:
        Q, K1, K2, V1, V2, dO = (rng.uniform(-1, 1, (n, args.d)) for _ in range(6))
        fwd = best_time(ta.attention, (Q, K1, K2, V1, V2), args.repeat)
        fwd_bwd = best_time(ta.attention_grad, (Q, K1, K2, V1, V2, dO), args.repeat)
        rows.append((n, fwd, fwd_bwd))
        print(f"n={n:6d}  forward {fwd:9.4f} s  forward+backward {fwd_bwd:9.4f} s", flush=True)
    sizes = [r[0] for r in rows]
    slope_f = loglog_slope(sizes, [r[1] for r in rows])
    slope_fb = loglog_slope(sizes, [r[2] for r in rows])
    print(f"log-log slope: forward {slope_f:.2f}, forward+backward {slope_fb:.2f}")

    if args.out:
        command = "python -m benchmarks.scaling " + " ".join(argv if argv is not None else sys.argv[1:])
        lines = [
            "# Exact kernel: runtime against n = m1 = m2",
            "",
            f"Command: `{command}`  ",
            f"Machine: {platform.processor() or platform.machine()}, {numba.get_num_threads()} threads, "
            f"numba {numba.__version__}, numpy {np.__version__}; d = dv = {args.d}, float64, "
            f"minimum of {args.repeat} runs.",
            "",
            "| n | forward (s) | forward GFLOP/s | forward+backward (s) | forward+backward GFLOP/s |",
            "|---:|---:|---:|---:|---:|",
        ]
        for n, fwd, fwd_bwd in rows:
            flops = n**3 * args.d
            lines.append(f"| {n} | {fwd:.4f} | {4 * flops / fwd / 1e9:.1f} | {fwd_bwd:.4f} | {16 * flops / fwd_bwd / 1e9:.1f} |")
        lines += [
            "",
            f"Fitted log-log slope: forward **{slope_f:.2f}**, forward+backward **{slope_fb:.2f}** "
            "(theory: 3).",
            "",
        ]
        with open(args.out, "w") as out:
            out.write("\n".join(lines))


if __name__ == "__main__":
    main()
