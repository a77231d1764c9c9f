"""Adversarial search: structured hostile inputs against every certified bound.

Runs :func:`verification.adversarial.search` (logits at the edges of their certified intervals,
nearly constant or offset values, single key pairs, constant keys, float32 with tight
tolerances, causal, both families, fixed degrees up to the rank cap, the theory paper's
certificate) for each seed, against an independent extended-precision reference, and reports
the worst entrywise error/bound ratio of the output, of each gradient (a-posteriori and
a-priori bounds) and of the paper's loss, output and gradients. A ratio above 1 (an exceeded
bound, beyond a 1e-12 relative allowance and the reference's own rounding), a bound of 0 with
a nonzero error (ratio inf), a wrong output dtype or a refusal whose message names neither the
tolerance nor the degree is a failure.
"""

from __future__ import annotations

import math


from .. import adversarial
from ._plot import plt, save

PRESETS = {
    "tiny": {"seeds": [0], "cases": 20, "large_n": []},
    "quick": {"seeds": [0, 1], "cases": 90, "large_n": [4096]},
    "full": {"seeds": list(range(8)), "cases": 2500, "large_n": [8192]},
}

ORDER = adversarial.QUANTITIES + adversarial.PAPER_QUANTITIES


def sweep_point(seed: int, cases: int, large_n: list) -> dict:
    """One seed of the search (a top-level, picklable task)."""
    return adversarial.search(seed, n_cases=cases, large_n=tuple(large_n))


def run(settings: dict, executor) -> dict:
    seeds = list(settings["seeds"])
    futures = [executor.submit(sweep_point, seed, int(settings["cases"]),
                               list(settings["large_n"]) if i == 0 else [])
               for i, seed in enumerate(seeds)]
    searches = [f.result() for f in futures]
    worst = {}
    refused = {}
    for result in searches:
        for name, rec in result["worst"].items():
            if name not in worst or rec["ratio"] > worst[name]["ratio"]:
                worst[name] = rec
        for kind, count in result["refused"].items():
            refused[kind] = refused.get(kind, 0) + count
    failures = []
    for result in searches:
        for item in result["exceeded"]:
            parts = ", ".join(f"{name} (ratio {_fmt(ratio)})" for name, ratio in item["quantities"].items())
            failures.append(f"certified bound exceeded for {parts} at {adversarial.describe(item['case'])}")
        failures += [f"{v}" for v in result["violations"]]
        failures += [f"refusal names neither the tolerance nor the degree at "
                     f"{adversarial.describe(u['case'])}: {u['message']}" for u in result["refusals_unnamed"]]
    summary = {"cases": sum(r["cases"] for r in searches), "computed": sum(r["computed"] for r in searches),
               "refused": refused, "seconds": round(sum(r["seconds"] for r in searches), 2)}
    return {"settings": settings, "worst": worst, "summary": summary, "failures": failures}


def _fmt(ratio: float) -> str:
    return "inf" if math.isinf(ratio) else f"{ratio:.3g}"


def table(results: dict) -> str:
    """Markdown table: the worst ratio per certified quantity and the case that reached it."""
    lines = ["| quantity | worst error/bound | error | bound | exceeded entries | case |",
             "|---|---|---|---|---|---|"]
    for name in ORDER:
        rec = results["worst"].get(name)
        if rec is None:
            continue
        mark = f'<span style="color:red">{_fmt(rec["ratio"])}</span>' if rec["exceeded"] else _fmt(rec["ratio"])
        lines.append(f"| {name} | {mark} | {rec['error']:.3g} | {rec['bound']:.3g} | "
                     f"{rec['exceeded']}/{rec['entries']} | {adversarial.describe(rec['case'])} |")
    return "\n".join(lines)


def render(results: dict, out_dir) -> list[dict]:
    worst, summary = results["worst"], results["summary"]
    names = [n for n in ORDER if n in worst]
    ratios = [worst[n]["ratio"] for n in names]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(names) + 2), 3.6))
    shown = [min(max(r, 1e-18), 1e6) if not math.isinf(r) else 1e6 for r in ratios]
    colors = ["tab:red" if worst[n]["exceeded"] else "tab:blue" for n in names]
    ax.bar(range(len(names)), shown, color=colors)
    ax.axhline(1.0, color="k", linestyle="--", label="bound (ratio 1)")
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("worst |error| / certified bound")
    ax.set_title("adversarial search (red: a bound exceeded)")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=7)
    figure = save(fig, out_dir, "adversarial.png")
    failed = bool(results["failures"])
    top = max(ratios, default=0.0)
    refused = sum(summary["refused"].values())
    text = (
        f"Structured hostile inputs (logits at the edges of their certified intervals, nearly constant, constant "
        f"or offset values, single key pairs, constant keys, float32 with tight tolerances, causal masks, both "
        f"families, fixed degrees up to the rank cap, the paper's certificate): {summary['cases']} cases, "
        f"{summary['computed']} computed and {summary['cases'] - summary['computed']} refused by the surrogate "
        f"({refused} refusals in all: a case refused at its tolerance is retried at the highest degree), "
        f"against an independent "
        f"extended-precision reference. The table gives the worst entrywise error/bound ratio of each certified "
        f"quantity ('plan.' = the a-priori bounds of poly_plan(..., dO=dO)). "
        + (f"{len(results['failures'])} check(s) FAILED (see the failures above); the largest ratio is "
           f"{_fmt(top)}. " if failed else
           f"Every bound held: the largest ratio is {_fmt(top)}. ")
        + "\n\n" + table(results)
    )
    return [{"title": "Adversarial search against the certified bounds", "text": text, "figure": figure,
             "ok": not failed}]
