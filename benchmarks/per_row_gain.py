"""What per-row intervals buy: degree and rank for a tolerance, per-row radii against one global radius.

Run: ``python -m benchmarks.per_row_gain --out docs/per_row_gain.md``. The computation is the
verification report's ``per_row`` probe (:mod:`verification.probes.per_row`); this script runs it
at n = m1 = m2 = 4096 and writes the table. Costs O(n·d) per configuration (no attention).
"""

from __future__ import annotations

import argparse
import sys

from verification.probes.per_row import sweep_point


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--dims", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--bounds", type=float, nargs="+", default=[1.0, 1.5])
    parser.add_argument("--tols", type=float, nargs="+", default=[1e-3, 1e-6])
    parser.add_argument("--family", default="chebyshev")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    rows = [row for d in args.dims for bound in args.bounds
            for row in sweep_point(args.n, d, bound, args.tols, args.family)]

    def cell(degree, rank):
        return "not certifiable" if degree is None else f"{degree} / {rank:,}"

    lines = [
        "# Per-row intervals against one global interval",
        "",
        "Command: `python -m benchmarks.per_row_gain " + " ".join(argv if argv is not None else sys.argv[1:])
        + f"`. n = m1 = m2 = {args.n}, entries uniform in [−B, B], scale 1/d, {args.family} family. Degree / "
        "rank needed for a certified max|Õ − O| <= tol (the rank is what the memory budget then has to "
        "hold: a large one is refused by the surrogate).",
        "",
        "| d | B | tol | worst row radius | median row radius | global radius | per-row: degree / rank | "
        "global: degree / rank |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['d']} | {r['B']} | {r['tol']:g} | {r['worst_radius']:.2f} | {r['median_radius']:.2f} | "
              f"{r['global_radius']:.2f} | {cell(r['per_row_degree'], r['per_row_rank'])} | "
              f"{cell(r['global_degree'], r['global_rank'])} |" for r in rows]
    lines.append("")
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as out:
            out.write("\n".join(lines))


if __name__ == "__main__":
    main()
