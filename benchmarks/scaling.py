"""Runtime scaling with n = m1 = m2, fitted on a log-log scale, for either method.

Run: ``python -m benchmarks.scaling --out docs/scaling_exact.md`` (exact kernel, default sizes
64–512, d = dv = 16) or ``python -m benchmarks.scaling --method poly --degree 4 --d 8
--sizes 1024 4096 16384 65536 262144 1048576 --repeat 1 --out docs/scaling_poly.md``
(the surrogate). Entries uniform in [−1, 1], float64. Each size is timed ``--repeat`` times
after a warm-up and the minimum is kept; the slope of log(time) against log(n) is fitted by
least squares (theory: 3 for the exact kernel, 1 + o(1) for the surrogate). The table and the
slope are written as Markdown with the command that produced them.
"""

from __future__ import annotations

import argparse
import platform
import sys

import numba
import numpy as np

import tattn_numba as ta
from verification.timing import best_time, loglog_slope


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--d", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--method", choices=["exact", "poly"], default="exact")
    parser.add_argument("--degree", type=int, default=4, help="surrogate degree (method poly)")
    parser.add_argument("--family", default="chebyshev", help="surrogate family (method poly)")
    parser.add_argument("--out", default=None, help="Markdown file to write (default: print only)")
    args = parser.parse_args(argv)

    options = {"method": args.method}
    if args.method == "poly":
        options.update(degree=args.degree, family=args.family)

    rng = np.random.default_rng(0)
    rows = []
    for n in args.sizes:
        Q, K1, K2, V1, V2, dO = (rng.uniform(-1, 1, (n, args.d)) for _ in range(6))
        fwd = best_time(lambda: ta.attention(Q, K1, K2, V1, V2, **options), args.repeat)
        fwd_bwd = best_time(lambda: ta.attention_grad(Q, K1, K2, V1, V2, dO, **options), args.repeat)
        rows.append((n, fwd, fwd_bwd))
        print(f"n={n:6d}  forward {fwd:9.4f} s  forward+backward {fwd_bwd:9.4f} s", flush=True)
    sizes = [r[0] for r in rows]
    slope_f = loglog_slope(sizes, [r[1] for r in rows])
    slope_fb = loglog_slope(sizes, [r[2] for r in rows])
    print(f"log-log slope: forward {slope_f:.2f}, forward+backward {slope_fb:.2f}")

    if args.out:
        command = "python -m benchmarks.scaling " + " ".join(argv if argv is not None else sys.argv[1:])
        title = "Exact kernel" if args.method == "exact" else (
            f"Polynomial surrogate ({args.family}, degree {args.degree})")
        lines = [
            f"# {title}: runtime against n = m1 = m2",
            "",
            f"Command: `{command}`  ",
            f"Machine: {platform.processor() or platform.machine()}, {numba.get_num_threads()} threads, "
            f"numba {numba.__version__}, numpy {np.__version__}; d = dv = {args.d}, float64, "
            f"minimum of {args.repeat} runs.",
            "",
            "| n | forward (s) | exact-equivalent forward GFLOP/s | forward+backward (s) |"
            " exact-equivalent forward+backward GFLOP/s |",
            "|---:|---:|---:|---:|---:|",
        ]
        for n, fwd, fwd_bwd in rows:
            flops = n**3 * args.d
            lines.append(f"| {n} | {fwd:.4f} | {4 * flops / fwd / 1e9:.3g} | {fwd_bwd:.4f} | {16 * flops / fwd_bwd / 1e9:.3g} |")
        theory = "3" if args.method == "exact" else "1 + o(1)"
        lines += [
            "",
            f"Fitted log-log slope: forward **{slope_f:.2f}**, forward+backward **{slope_fb:.2f}** "
            f"(theory: {theory}). GFLOP/s counts the exact method's 4·n³·d (forward) and "
            "16·n³·d (forward+backward) flops, so for the surrogate it is an equivalent rate.",
            "",
        ]
        with open(args.out, "w") as out:
            out.write("\n".join(lines))


if __name__ == "__main__":
    main()
