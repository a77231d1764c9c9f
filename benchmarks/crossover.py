"""Where the surrogate overtakes the exact kernel, as a function of (d, degree).

Run: ``python -m benchmarks.crossover --out docs/crossover.md``. For each d the exact
forward+backward is timed at ``--exact-n`` and modelled as a·n³ (its measured log-log slope is
2.9); the surrogate (Taylor, fixed degree) is timed directly at n = 32, 64, 128, … until it
beats a·n³, and the crossover is interpolated log-linearly between the last two sizes. The
surrogate's fixed per-call costs are therefore included. Entries uniform in [−1, 1], d = dv,
float64, minimum of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import tattn_numba as ta
from verification.timing import best_time


def grad_time(n, d, repeat, **options):
    rng = np.random.default_rng(0)
    args = [rng.uniform(-1, 1, (n, d)) for _ in range(6)]
    return best_time(lambda: ta.attention_grad(*args, **options), repeat)


def crossover(a, d, degree, repeat, largest):
    """(crossover n, surrogate seconds there) by doubling n from 32 up to ``largest``."""
    previous = None
    n = 32
    while n <= largest:
        poly = grad_time(n, d, repeat, method="poly", degree=degree, family="taylor")
        exact = a * n**3
        if poly < exact:
            if previous is None:
                return float(n), poly
            n0, gap0 = previous
            gap1 = np.log(poly / exact)
            t = gap0 / (gap0 - gap1)
            return float(np.exp(np.log(n0) + t * (np.log(n) - np.log(n0)))), poly
        previous = (n, np.log(poly / exact))
        n *= 2
    return float("inf"), float("nan")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--degrees", type=int, nargs="+", default=[2, 4, 6])
    parser.add_argument("--exact-n", type=int, default=256)
    parser.add_argument("--largest", type=int, default=2**15)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    rows = []
    for d in args.dims:
        a = grad_time(args.exact_n, d, args.repeat) / args.exact_n**3
        for g in args.degrees:
            rank = ta.poly_plan(*(np.zeros((2, d)),) * 5, degree=g).rank
            n_star, seconds = crossover(a, d, g, args.repeat, args.largest)
            rows.append((d, g, rank, a * 1e9, n_star, seconds))
            print(f"d={d:3d} g={g} r={rank:6d}  exact {a * 1e9:.3f} ns·n³  crossover n ≈ {n_star:.0f}", flush=True)
    if args.out:
        command = "python -m benchmarks.crossover " + " ".join(argv if argv is not None else sys.argv[1:])
        lines = [
            "# Crossover: surrogate against exact, forward+backward",
            "",
            f"Command: `{command}`. Exact modelled as a·n³ from n = {args.exact_n}; surrogate (Taylor, "
            "fixed degree) timed directly at doubling n until it is faster, crossover interpolated "
            "log-linearly; d = dv, entries uniform in [−1, 1], float64, 2 cores.",
            "",
            "| d | degree | rank r | exact a (ns·n³) | crossover n | surrogate time there (s) |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [f"| {d} | {g} | {r:,} | {a:.3f} | {x:,.0f} | {t:.3g} |" for d, g, r, a, x, t in rows]
        lines += ["", "Above the crossover length the surrogate is faster; below it the exact kernel is. "
                  "The crossover grows roughly like √r (the surrogate costs ~r·d·dv per row, the exact "
                  "kernel n²·(d + dv)).", ""]
        with open(args.out, "w") as out:
            out.write("\n".join(lines))


if __name__ == "__main__":
    main()
