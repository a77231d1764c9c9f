"""Summaries, tables, figures, the verdict and the command line of the set-task probes.

The protocol and the numbers these read are those of :mod:`verification.probes._training`:
``results`` holds ``settings`` and ``runs`` (one record per model and seed, one stage record per
N). A model *learns* N when its mean held-out accuracy over the seeds is at least chance +
``learn_margin``; the tensor layer *separates* at N when it learns N and its mean beats every
one-layer pairwise model's mean by at least 5 points.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time
from collections.abc import Callable

import numpy as np

from . import _training
from ._plot import finish, plt, save
from ._training import describe, model_names

# --------------------------------------------------------------------------------------------
# summaries
# --------------------------------------------------------------------------------------------

def summary(results: dict) -> dict:
    """{(model, N): mean / min / max accuracy over the seeds, chance, margin, step ms, params, ...}."""
    cells: dict = {}
    for r in results["runs"]:
        for st in r["stages"]:
            cells.setdefault((r["model"], st["N"]), []).append((r, st))
    out = {}
    for key, items in cells.items():
        acc = np.array([st["accuracy"] for _, st in items])
        chance = float(np.mean([st["chance"] for _, st in items]))
        steps = [st["step_seconds"] for _, st in items if st["step_seconds"] is not None]
        out[key] = {"mean": float(acc.mean()), "lo": float(acc.min()), "hi": float(acc.max()), "seeds": len(items),
                    "chance": chance, "margin": float(acc.mean()) - chance, "param": items[0][1]["param"],
                    "step_ms": 1e3 * float(np.mean(steps)) if steps else float("nan"),
                    "parameters": items[0][0]["parameters"], "steps": items[0][1]["steps"],
                    "clamps": int(sum(st["clamps"] for _, st in items)),
                    "refusals": int(sum(st["refusals"] for _, st in items))}
    return out


def learned(results: dict) -> dict:
    """{model: the Ns it learns (mean accuracy ≥ chance + learn_margin), largest learned N or None}."""
    margin, summ = results["settings"]["learn_margin"], summary(results)
    out = {}
    for name in model_names(results["settings"]):
        Ns = [N for (m, N), c in sorted(summ.items(), key=lambda kv: kv[0][1]) if m == name and c["margin"] >= margin]
        out[name] = {"learns": Ns, "largest": max(Ns) if Ns else None}
    return out


def separation(results: dict, gap: float = 0.05) -> dict:
    """Per N: whether the exact tensor layer learns N and beats every one-layer pairwise model's mean
    accuracy by ``gap``, and which deeper pairwise models learn N."""
    summ, s = summary(results), results["settings"]
    names = model_names(s)
    one = [n for n in names if n.startswith("pairwise_L1")]
    deep = [n for n in names if n.startswith("pairwise_L") and not n.startswith("pairwise_L1")]
    rows = {}
    for N in s["Ns"]:
        t = summ.get(("tensor", N))
        if t is None:
            continue
        best_one = max((summ[(n, N)]["mean"] for n in one if (n, N) in summ), default=float("nan"))
        rows[N] = {"tensor_learns": t["margin"] >= s["learn_margin"],
                   "separates": t["margin"] >= s["learn_margin"] and t["mean"] >= best_one + gap,
                   "deep_learn": [n for n in deep if (n, N) in summ and summ[(n, N)]["margin"] >= s["learn_margin"]],
                   "tensor_minus_best_one_layer": t["mean"] - best_one}
    return rows


def table(results: dict) -> str:
    """Markdown table: per model, parameters, accuracy mean [min, max] per N, largest N learned, step ms."""
    s, summ, lrn = results["settings"], summary(results), learned(results)
    Ns = s["Ns"]
    head = "| model | params | " + " | ".join(f"N = {N}" for N in Ns) + " | largest N learned | step time (ms) per N |"
    lines = [head, "|" + "---|" * (len(Ns) + 4)]
    chance = [summ.get(("tensor", N), {}).get("chance", float("nan")) for N in Ns]
    lines.append("| chance (majority class) | | " + " | ".join(f"{c:.3f}" for c in chance) + " | | |")
    for name in model_names(s):
        cells = [summ.get((name, N)) for N in Ns]
        acc = [f"{c['mean']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}]" if c else "—" for c in cells]
        ms = ", ".join(f"{c['step_ms']:.1f}" for c in cells if c)
        params = next(r["parameters"] for r in results["runs"] if r["model"] == name) if any(
            r["model"] == name for r in results["runs"]) else "—"
        largest = lrn[name]["largest"]
        lines.append(f"| {name} | {params} | " + " | ".join(acc) + f" | {largest if largest else 'none'} | {ms} |")
    return "\n".join(lines)


def poly_table(results: dict) -> str:
    """Markdown table of the surrogate models: degree, rank, radius cap, accuracy, clamps and refusals."""
    s, summ = results["settings"], summary(results)
    header = (f"| degree g | rank C(d+g, g) | radius cap (ε ≤ {s['cap_epsilon']:g}) | N | accuracy mean [min, max] | "
              "exact tensor at N | steps clamped | refused | step time (ms) |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for g in s["poly_degrees"]:
        runs = [r for r in results["runs"] if r["model"] == f"poly_g{g}"]
        if not runs:
            continue
        for N in s["Ns"][:s["poly_stages"]]:
            c, t = summ.get((f"poly_g{g}", N)), summ.get(("tensor", N))
            if c is None:
                continue
            exact = f"{t['mean']:.3f}" if t else "—"
            lines.append(f"| {g} | {math.comb(s['head_dim'] + g, g)} | {runs[0]['radius_cap']:.2f} | {N} | "
                         f"{c['mean']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}] | {exact} | "
                         f"{c['clamps']}/{c['steps'] * c['seeds']} | {c['refusals']} | {c['step_ms']:.1f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# figures and sections
# --------------------------------------------------------------------------------------------

_STYLE = {"tensor": ("s-", "C0"), "pairwise_L1": ("^-", "C3"), "pairwise_L2": ("v-", "C1"),
          "pairwise_L4": ("D-", "C5")}


def _accuracy_figure(results: dict, out_dir: pathlib.Path, prefix: str, title: str) -> str:
    s, summ = results["settings"], summary(results)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, name in enumerate(model_names(s)):
        pts = [(N, summ[(name, N)]) for N in s["Ns"] if (name, N) in summ]
        if not pts:
            continue
        marker, color = _STYLE.get(name, ("o--" if name.startswith("poly") else "x-.", f"C{(i + 6) % 10}"))
        x = np.array([N for N, _ in pts], dtype=float)
        mean = np.array([c["mean"] for _, c in pts])
        err = np.array([[c["mean"] - c["lo"] for _, c in pts], [c["hi"] - c["mean"] for _, c in pts]])
        ax.errorbar(x, mean, yerr=err, fmt=marker, color=color, capsize=3, label=describe(name))
    chance = [summ[("tensor", N)]["chance"] for N in s["Ns"] if ("tensor", N) in summ]
    ax.plot(s["Ns"][:len(chance)], chance, "k:", label="chance (majority class)")
    ax.plot(s["Ns"][:len(chance)], np.array(chance) + s["learn_margin"], color="0.6", linestyle=":",
            label=f"'learns' threshold (chance + {s['learn_margin']})")
    ax.set_ylim(0.4, 1.02)
    ax.set_xticks(s["Ns"])
    finish(ax, "sequence length N (curriculum stage)", "held-out accuracy per position", grid="major", legend=7)
    how = "per stage" if s.get("curriculum", True) else "per N, no curriculum"
    ax.set_title(f"{title.split(':')[0]}: {s['steps']} steps {how}, {len(s['seeds'])} seed(s)\n"
                 "mean, bars: min–max over seeds", fontsize=10)
    return save(fig, out_dir, f"{prefix}.png")


def _surrogate_figure(results: dict, out_dir: pathlib.Path, prefix: str) -> str:
    s, summ = results["settings"], summary(results)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10.0, 4.0))
    for i, N in enumerate(s["Ns"][:s["poly_stages"]]):
        pts = [(g, summ[(f"poly_g{g}", N)]) for g in s["poly_degrees"] if (f"poly_g{g}", N) in summ]
        if not pts:
            continue
        mean = np.array([c["mean"] for _, c in pts])
        err = np.array([[c["mean"] - c["lo"] for _, c in pts], [c["hi"] - c["mean"] for _, c in pts]])
        ax.errorbar([g for g, _ in pts], mean, yerr=err, fmt="o-", color=f"C{i}", capsize=3,
                    label=f"surrogate, N = {N}")
        if ("tensor", N) in summ:
            ax.axhline(summ[("tensor", N)]["mean"], color=f"C{i}", linestyle="--", label=f"exact, N = {N}")
        ax.axhline(summ[(f"poly_g{pts[0][0]}", N)]["chance"], color=f"C{i}", linestyle=":", linewidth=0.8)
    ax.set_xticks(s["poly_degrees"])
    finish(ax, "surrogate degree g", "held-out accuracy (mean, min–max over seeds)", "accuracy against degree",
           grid="major", legend=7)
    first = {}
    for r in results["runs"]:
        first.setdefault(r["model"], r)
    for i, name in enumerate(n for n in model_names(s) if n == "tensor" or n.startswith("poly_g")):
        if name not in first:
            continue
        tr = first[name]["trace"]
        key = "radius" if name.startswith("poly_g") else "global_radius"
        ax2.semilogy([t["step"] for t in tr], [max(t[key], 1e-3) for t in tr], "-" if name == "tensor" else "--",
                     color=f"C{i}", label=f"{name} ({'certified row' if key == 'radius' else 'one-interval'} radius)")
        if name.startswith("poly_g"):
            ax2.axhline(first[name]["radius_cap"], color=f"C{i}", linestyle=":", linewidth=0.8)
    finish(ax2, f"training step (curriculum, seed {s['seeds'][0]})", "logit radius",
           "logit radius during training (dotted: caps)", grid="both", legend=7)
    return save(fig, out_dir, f"{prefix}_surrogate.png")


def schedule(settings: dict) -> str:
    """How the lengths were trained, in words."""
    s = settings
    if s.get("curriculum", True):
        return (f"after a curriculum over N ({s['steps']} Adam steps of batch {s['batch']} per stage, weights "
                "carried)")
    return f"each N trained from a fresh initialisation ({s['steps']} Adam steps of batch {s['batch']}; no curriculum)"


def verdict_text(results: dict) -> tuple[bool, str]:
    """Whether the separation is observed at some N, and one paragraph saying where and where not."""
    sep, lrn, s = separation(results), learned(results), results["settings"]
    yes = [N for N, r in sep.items() if r["separates"]]
    parts = [f"A model learns N when its mean held-out accuracy over {len(s['seeds'])} seed(s) is at least chance + "
             f"{s['learn_margin']}. Largest N learned within {s['steps']} steps per stage: "
             + "; ".join(f"{name}: {v['largest'] if v['largest'] else 'none'}" for name, v in lrn.items()) + "."]
    if yes:
        parts.append(f"The one-layer tensor layer separates from every one-layer pairwise model (learns, and ≥ 5 "
                     f"points above their best mean) at N ∈ {yes}.")
    else:
        parts.append("The one-layer tensor layer does not separate from the one-layer pairwise models at any N "
                     "trained here.")
    deep = {N: r["deep_learn"] for N, r in sep.items() if r["separates"] and r["deep_learn"]}
    if deep:
        parts.append("Deeper pairwise stacks also learn some of those lengths: "
                     + "; ".join(f"N = {N}: {', '.join(v)}" for N, v in deep.items()) + ".")
    missed = [N for N, r in sep.items() if not r["tensor_learns"]]
    if missed:
        parts.append(f"At N ∈ {missed} the exact tensor layer did not learn within the budget.")
    return bool(yes), " ".join(parts)


def render_task(results: dict, out_dir, prefix: str, title: str, setup: str) -> list[dict]:
    """The accuracy section (figure, verdict, table) and, with surrogate runs, the surrogate section."""
    if "skipped" in results:
        return [{"title": title, "text": f"Skipped: {results['skipped']}.", "figure": None, "ok": True}]
    out_dir = pathlib.Path(out_dir)
    ok, verdict = verdict_text(results)
    sections = [{"title": title, "figure": _accuracy_figure(results, out_dir, prefix, title), "ok": ok,
                 "text": f"{setup} {verdict}\n\n{table(results)}"}]
    s = results["settings"]
    if s["poly_degrees"] and s["poly_stages"]:
        sections.append({
            "title": f"{title}: the surrogate, accuracy against degree",
            "figure": _surrogate_figure(results, out_dir, prefix), "ok": True,
            "text": "The same tensor layer trained through the degree-g polynomial surrogate (Chebyshev), its "
                    "one-interval logit radius clamped after every step to the largest radius certified to relative "
                    f"error {s['cap_epsilon']} at that degree (left: accuracy against g, dashed: the exact layer; "
                    f"right: radius during training). Trained on the first {s['poly_stages']} stage(s), "
                    f"{s['poly_steps']} steps each.\n\n" + poly_table(results)})
    return sections


def cli(task_name: str, presets: dict, run: Callable, render: Callable, argv=None, doc: str = "") -> int:
    """``python -m verification.probes.<task> --config NAME --out DIR``: results.json, figures, <task>.md."""
    from ..execution import InProcessExecutor

    parser = argparse.ArgumentParser(prog=f"python -m verification.probes.{task_name}", description=doc)
    parser.add_argument("--config", choices=tuple(presets), default="quick")
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--rerender", action="store_true",
                        help="only redraw the figures and the .md from DIR/results.json (no training)")
    args = parser.parse_args(argv)
    if args.threads is not None and _training.torch is not None:
        _training.torch.set_num_threads(args.threads)
    if args.rerender:
        results = json.loads((args.out / "results.json").read_text())
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        results = run(presets[args.config], InProcessExecutor())
        results["wall_seconds"] = time.perf_counter() - start
        results["config"] = args.config
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
    md = [f"# {task_name} ({results.get('config', args.config)} configuration, {results['wall_seconds']:.0f} s)\n"]
    for sec in render(results, args.out):
        md.append(f"## {sec['title']}\n")
        if sec["figure"]:
            md.append(f"![{sec['title']}]({sec['figure']})\n")
        md.append(f"{sec['text']}\n")
    if results["failures"]:
        md.append("Failures:\n\n" + "\n".join(f"- {f}" for f in results["failures"]) + "\n")
    (args.out / f"{task_name}.md").write_text("\n".join(md))
    print("\n".join(md))
    return 1 if results["failures"] else 0
