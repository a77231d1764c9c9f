"""What per-row intervals buy: certified degree and rank, per-row radii against one global radius.

Each query row gets its own polynomial on its own certified logit interval (SPEC §5), so the
degree is set by the worst row's radius instead of the global bound s·Σ_l max|Q_l|·max|K1_l|·
max|K2_l|. Plan-only: O(n·d) per point.
"""

from __future__ import annotations

import numpy as np

import tattn_numba as ta

from .. import bounds
from ._plot import plt, save

PRESETS = {
    "tiny": {"n": 256, "dims": [4], "bounds": [1.0], "tols": [1e-3], "family": "chebyshev"},
    "quick": {"n": 65536, "dims": [4, 8, 16], "bounds": [0.5, 1.0, 1.5], "tols": [1e-3, 1e-6],
              "family": "chebyshev"},
    "full": {"n": 65536, "dims": [4, 8, 16, 32], "bounds": [0.5, 1.0, 1.5], "tols": [1e-3, 1e-6, 1e-9],
             "family": "chebyshev"},
}


def _degree_and_rank(family, radius, epsilon, d):
    try:
        degree = int(bounds.min_degree(family, radius, epsilon))
    except ValueError:
        return None, None
    return degree, bounds.rank(d, degree)


def sweep_point(n: int, d: int, bound: float, tols: list, family: str, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng([seed, n, d, int(bound * 1000)])
    Q, K1, K2, V1, V2 = (rng.uniform(-bound, bound, (n, d)) for _ in range(5))
    plan = ta.poly_plan(Q, K1, K2, V1, V2, degree=0, family=family)
    worst, median = float(plan.radius.max()), float(np.median(plan.radius))
    rows = []
    for tol in tols:
        epsilon = bounds.epsilon_for_output_tolerance(tol, V1, V2)
        per_row = _degree_and_rank(family, worst, epsilon, d)
        glob = _degree_and_rank(family, plan.global_radius, epsilon, d)
        rows.append({"n": n, "d": d, "B": bound, "tol": tol, "worst_radius": worst, "median_radius": median,
                     "global_radius": plan.global_radius, "per_row_degree": per_row[0], "per_row_rank": per_row[1],
                     "global_degree": glob[0], "global_rank": glob[1]})
    return rows


def run(settings: dict, executor) -> dict:
    futures = [executor.submit(sweep_point, settings["n"], d, bound, list(settings["tols"]), settings["family"])
               for d in settings["dims"] for bound in settings["bounds"]]
    rows = [row for f in futures for row in f.result()]
    failures = [f"per-row rank above the global one at d={r['d']}, B={r['B']}, tol={r['tol']}" for r in rows
                if r["per_row_rank"] and r["global_rank"] and r["per_row_rank"] > r["global_rank"]]
    return {"settings": settings, "rows": rows, "failures": failures}


def render(results: dict, out_dir) -> list[dict]:
    rows = results["rows"]
    labels = [f"d={r['d']}\nB={r['B']}\ntol={r['tol']:g}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(rows)), 4.0))
    ax.bar(x - 0.2, [r["per_row_rank"] or np.nan for r in rows], 0.4, label="per-row intervals")
    ax.bar(x + 0.2, [r["global_rank"] or np.nan for r in rows], 0.4, label="one global interval")
    ax.set_yscale("log")
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("rank r = C(d + g, g) (feature columns)")
    ax.set_title(f"rank for a certified max|Õ − O| ≤ tol, n = {results['settings']['n']}")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    figure = save(fig, out_dir, "per_row_gain.png")
    both = [r for r in rows if r["per_row_rank"] and r["global_rank"]]
    gains = [r["global_rank"] / r["per_row_rank"] for r in both]
    ok = not results["failures"]
    text = (
        "Rank needed for the same certified output tolerance with a polynomial per query row on its own "
        "interval (the default) against one polynomial on the global interval. "
        + (f"Per-row intervals lower the rank by a factor {min(gains):.3g} to {max(gains):.3g} (median "
           f"{np.median(gains):.3g}) across {len(both)} configurations; the worst row's radius is "
           f"{min(r['worst_radius'] / r['global_radius'] for r in both):.0%}–"
           f"{max(r['worst_radius'] / r['global_radius'] for r in both):.0%} of the global one."
           if both else "No configuration was certifiable with both choices.")
    )
    return [{"title": "Gain from per-row intervals", "text": text, "figure": figure, "ok": ok}]
