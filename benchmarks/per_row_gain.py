"""What per-row intervals buy: degree and rank for a tolerance, per-row radii against one global radius.

Run: ``python -m benchmarks.per_row_gain --out docs/per_row_gain.md``. For entries uniform in
[−B, B], n = m1 = m2 = 4096, the plan's certified degree (per-row radii, the default) is
compared with the degree a single polynomial on the global interval [−R, R],
R = s·Σ_l max|Q_l|·max|K1_l|·max|K2_l|, would need for the same certified output bound.
Costs only O(n·d) per configuration (no attention is computed).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import tattn_numba as ta
from tattn_numba.poly import exp_approx
from tattn_numba.poly.features import rank
from tattn_numba.poly.plan import value_ranges


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--dims", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--bounds", type=float, nargs="+", default=[1.0, 1.5])
    parser.add_argument("--tols", type=float, nargs="+", default=[1e-3, 1e-6])
    parser.add_argument("--family", default="chebyshev")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    for d in args.dims:
        for bound in args.bounds:
            Q, K1, K2, V1, V2 = (rng.uniform(-bound, bound, (args.n, d)) for _ in range(5))
            probe = ta.poly_plan(Q, K1, K2, V1, V2, degree=0, family=args.family)
            widest = float(value_ranges(V1[None], V2[None]).max())
            for tol in args.tols:
                kappa = 2 * tol / widest
                epsilon = kappa / (2 + kappa)

                def degree_and_rank(radius):
                    try:
                        g = int(exp_approx.min_degree(args.family, radius, epsilon))
                    except ValueError:
                        return "not certifiable"
                    return f"{g} / {rank(d, g):,}"

                per_row = degree_and_rank(float(probe.radius.max()))
                glob = degree_and_rank(probe.global_radius)
                rows.append((d, bound, tol, float(probe.radius.max()), float(np.median(probe.radius)),
                             probe.global_radius, per_row, glob))
                print(rows[-1], flush=True)
    if args.out:
        command = "python -m benchmarks.per_row_gain " + " ".join(argv if argv is not None else sys.argv[1:])
        lines = [
            "# Per-row intervals against one global interval",
            "",
            f"Command: `{command}`. n = m1 = m2 = {args.n}, entries uniform in [−B, B], scale 1/d, "
            f"{args.family} family. Degree / rank needed for a certified max|Õ − O| <= tol (the rank is "
            "what the memory budget then has to hold: a large one is refused by the surrogate).",
            "",
            "| d | B | tol | worst row radius | median row radius | global radius | per-row: degree / rank | "
            "global: degree / rank |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [f"| {d} | {b} | {t:g} | {w:.2f} | {m:.2f} | {g:.2f} | {p} | {q} |"
                  for d, b, t, w, m, g, p, q in rows]
        lines.append("")
        with open(args.out, "w") as out:
            out.write("\n".join(lines))


if __name__ == "__main__":
    main()
