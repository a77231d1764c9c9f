"""n-way attention of order t = 3: the exact kernel against the certified surrogate (issue #16).

Run: ``python -m benchmarks.nway --out docs/nway_benchmarks.md`` (about ten minutes on 2 cores)
or ``python -m benchmarks.nway --quick`` (under a minute). Two tables, both at n = m_a for every
key set, d = dv = 4, float64, entries of Q, the keys, the values and dO uniform in [−1, 1], the
surrogate at the fixed degree 4 (Chebyshev; rank C(d + 4, 4) = 70) with the certificate of
``nway_poly_plan`` reported at every size:

* exact against surrogate in the same run, forward and forward+backward, with their ratios; the
  exact kernel's log-log slope (theory: t + 1 = 4) is fitted from n = ``--fit-from`` up, where
  fixed costs no longer dominate;
* the surrogate alone, forward+backward, at doubling n (theory: slope 1 + o(1)), stopping after a
  run that takes more than ``--limit`` seconds.

The crossover (the n from which the surrogate is faster) is where the two fitted lines meet,
checked against which method was faster at each measured n. Every time is the minimum of
``--repeat`` runs after a warm-up on a small slice (compilation). The machine, the thread counts
and the load average are written next to the table: on a shared machine, set
``OPENBLAS_NUM_THREADS=1`` (the surrogate's small BLAS products gain nothing from a second
thread, and waiting for a descheduled one made them 3–35 times slower here).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Callable

import numba
import numpy as np

import tattn_numba as ta
from verification.timing import best_time, loglog_slope

T = 3
D = 4
DEGREE = 4
FULL = {"same_sizes": [16, 32, 64, 128, 256], "poly_sizes": [2**k for k in range(10, 19)]}
QUICK = {"same_sizes": [16, 32, 64, 128], "poly_sizes": [2**k for k in range(10, 15)]}


def operands(n: int, t: int = T, d: int = D, seed: int = 0) -> tuple:
    """(Q, keys, values, dO) at n = m_a, entries uniform in [−1, 1]."""
    rng = np.random.default_rng([seed, n, t, d])
    Q = rng.uniform(-1.0, 1.0, (n, d))
    keys = tuple(rng.uniform(-1.0, 1.0, (n, d)) for _ in range(t))
    values = tuple(rng.uniform(-1.0, 1.0, (n, d)) for _ in range(t))
    return Q, keys, values, rng.uniform(-1.0, 1.0, (n, d))


def _calls(args: tuple, method: str) -> tuple[Callable, Callable]:
    """(forward, forward+backward) of ``method`` on ``args`` = (Q, keys, values, dO)."""
    Q, keys, values, dO = args
    options = {"method": method} if method == "exact" else {"method": method, "degree": DEGREE}
    return (lambda: ta.nway_attention(Q, keys, values, **options),
            lambda: ta.nway_attention_grad(Q, keys, values, dO, **options))


def _warm_up(args: tuple, method: str) -> None:
    """Compile outside the timing: forward and forward+backward on an 8-row slice of every operand."""
    Q, keys, values, dO = args
    small = (Q[:8], tuple(k[:8] for k in keys), tuple(v[:8] for v in values), dO[:8])
    for call in _calls(small, method):
        call()


def timed(fn: Callable, repeat: int, limit: float) -> tuple[float, bool]:
    """(best of up to ``repeat`` runs, whether a run exceeded ``limit`` seconds: then no more runs)."""
    best = np.inf
    for _ in range(repeat):
        seconds = best_time(fn, 1, warmup=False)
        best = min(best, seconds)
        if seconds > limit:
            return best, True
    return best, False


def bound(args: tuple) -> float:
    """The certified max |Õ − O| of the degree-4 surrogate on ``args``."""
    Q, keys, values, _ = args
    return ta.nway_poly_plan(Q, keys, values, degree=DEGREE).max_output_bound


def same_run(sizes: list[int], repeat: int) -> list[dict]:
    """Exact and surrogate, forward and forward+backward, at each n."""
    rows = []
    for n in sizes:
        args = operands(n)
        row = {"n": n, "bound": bound(args)}
        for method in ("exact", "poly"):
            _warm_up(args, method)
            forward, both = _calls(args, method)
            row[f"{method}_forward"] = best_time(forward, repeat, warmup=False)
            row[f"{method}_both"] = best_time(both, repeat, warmup=False)
        rows.append(row)
        print(f"n={n:5d}  exact {row['exact_forward']:.4g} / {row['exact_both']:.4g} s  "
              f"surrogate {row['poly_forward']:.4g} / {row['poly_both']:.4g} s", flush=True)
    return rows


def surrogate_alone(sizes: list[int], repeat: int, limit: float) -> tuple[list[dict], int | None]:
    """Surrogate forward+backward at each n; (rows, the n whose run exceeded ``limit`` or None)."""
    rows = []
    _warm_up(operands(8), "poly")
    for n in sizes:
        args = operands(n)
        seconds, over = timed(_calls(args, "poly")[1], repeat, limit)
        rows.append({"n": n, "poly_both": seconds, "bound": bound(args)})
        print(f"n={n:7d}  surrogate forward+backward {seconds:.4g} s", flush=True)
        if over:
            return rows, n
    return rows, None


def fit(rows: list[dict], key: str) -> tuple[float, float]:
    """(slope, intercept) of log(seconds) against log(n)."""
    n = [float(r["n"]) for r in rows]
    slope = loglog_slope(n, [r[key] for r in rows])
    intercept = float(np.mean(np.log([r[key] for r in rows])) - slope * np.mean(np.log(n)))
    return slope, intercept


def crossover(exact: tuple[float, float], poly: tuple[float, float]) -> float:
    """The n where the fitted lines log t = slope·log n + intercept meet."""
    return float(np.exp((poly[1] - exact[1]) / (exact[0] - poly[0])))


def measured_crossover(rows: list[dict], stage: str) -> str:
    """Which method was faster at each measured n, as the bracket that contains the crossover."""
    slower = [r["n"] for r in rows if r[f"poly_{stage}"] >= r[f"exact_{stage}"]]
    faster = [r["n"] for r in rows if r[f"poly_{stage}"] < r[f"exact_{stage}"]]
    if not faster:
        return f"exact faster at every measured n (up to {rows[-1]['n']})"
    if not slower:
        return f"surrogate faster at every measured n (from {rows[0]['n']})"
    consistent = max(slower) < min(faster)
    return (f"exact faster at n ≤ {max(slower)}, surrogate faster at n ≥ {min(faster)}"
            + ("" if consistent else " (not monotone: the two cross more than once at these sizes)"))


def machine() -> str:
    """One line naming the machine, the thread settings and the load."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            model = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"{model}, {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}, "
            f"numba {numba.__version__} ({numba.get_num_threads()} threads), numpy {np.__version__}, "
            f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, load average {load}")


def _fits(same: list[dict], alone: list[dict], fit_from: int) -> dict:
    exact_rows = [r for r in same if r["n"] >= fit_from]
    top = [r for r in alone if r["n"] >= alone[len(alone) // 2]["n"]]
    out = {"exact_forward": fit(exact_rows, "exact_forward"), "exact_both": fit(exact_rows, "exact_both"),
           "poly_forward": fit(same, "poly_forward"), "poly_both": fit(same, "poly_both"),
           "alone": fit(alone, "poly_both"), "alone_top": fit(top, "poly_both")}
    out["top_from"] = top[0]["n"]
    return out


def render(same: list[dict], alone: list[dict], stopped: int | None, fits: dict, args, command: str,
           before: str) -> str:
    """The Markdown page."""
    cross = {stage: crossover(fits[f"exact_{stage}"], fits[f"poly_{stage}"]) for stage in ("forward", "both")}
    lines = [
        f"# n-way attention, t = {T}: exact against the surrogate", "",
        f"Command: `{command}`  ",
        f"Machine: {before}  ",
        f"Load average after the run: {', '.join(f'{x:.1f}' for x in os.getloadavg())}.", "",
        f"t = {T} key sets, n = m1 = m2 = m3, d = dv = {D}, float64, not causal; Q, keys, values and dO "
        f"uniform in [−1, 1]; surrogate at the fixed degree {DEGREE} (Chebyshev, rank 70), certified at "
        "every size below (`nway_poly_plan(..., degree=4).max_output_bound`, the certified max |Õ − O|, "
        "column *bound*). Times in seconds, minimum of "
        f"{args.repeat} runs after a warm-up, all in the same process.", "",
        "## Same run: exact kernel and surrogate", "",
        "| n | exact forward | surrogate forward | ratio | exact fwd+bwd | surrogate fwd+bwd | ratio | bound |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['n']} | {r['exact_forward']:.4g} | {r['poly_forward']:.4g} | "
              f"{r['exact_forward'] / r['poly_forward']:.3g} | {r['exact_both']:.4g} | {r['poly_both']:.4g} | "
              f"{r['exact_both'] / r['poly_both']:.3g} | {r['bound']:.2g} |" for r in same]
    lines += [
        "", "Ratio = exact time / surrogate time (above 1: the surrogate is faster).", "",
        f"Fitted log-log slopes of the exact kernel (n ≥ {args.fit_from}): forward "
        f"**{fits['exact_forward'][0]:.2f}**, forward+backward **{fits['exact_both'][0]:.2f}** (theory "
        f"t + 1 = {T + 1}). The surrogate's slopes over the same sizes, {fits['poly_forward'][0]:.2f} and "
        f"{fits['poly_both'][0]:.2f}, are those of its fixed per-call costs.", "",
        f"Crossover (where the fitted lines meet): forward n ≈ **{cross['forward']:.0f}**, forward+backward "
        f"n ≈ **{cross['both']:.0f}**"
        + (f" (the exact line extrapolated below n = {args.fit_from})" if min(cross.values()) < args.fit_from else "")
        + f". Measured: forward {measured_crossover(same, 'forward')}; "
        f"forward+backward {measured_crossover(same, 'both')}.", "",
        "## The surrogate alone, forward+backward", "",
        "| n | seconds | seconds / n (µs) | exact fwd+bwd a·n^slope, extrapolated (s) | bound |",
        "|---:|---:|---:|---:|---:|",
    ]
    slope, intercept = fits["exact_both"]
    lines += [f"| {r['n']:,} | {r['poly_both']:.4g} | {r['poly_both'] / r['n'] * 1e6:.3g} | "
              f"{np.exp(intercept) * r['n'] ** slope:.3g} | {r['bound']:.2g} |" for r in alone]
    lines += [
        "",
        f"Fitted log-log slope: **{fits['alone'][0]:.2f}** over n = {alone[0]['n']:,}–{alone[-1]['n']:,}, "
        f"**{fits['alone_top'][0]:.2f}** from n = {fits['top_from']:,} (theory 1 + o(1); fixed per-call costs "
        "flatten the small sizes). "
        + (f"Stopped after n = {stopped:,}: a run took more than {args.limit:g} s." if stopped else
           f"Every size ran (no run over {args.limit:g} s)."),
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (under a minute)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per point; the minimum is kept")
    parser.add_argument("--fit-from", type=int, default=64, help="smallest n of the exact kernel's fitted slope")
    parser.add_argument("--limit", type=float, default=60.0, help="stop the surrogate's doubling after a slower run")
    parser.add_argument("--out", default=None, help="Markdown file to write (default: print only)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    before = machine()
    print(before, flush=True)
    same = same_run(sizes["same_sizes"], args.repeat)
    alone, stopped = surrogate_alone(sizes["poly_sizes"], args.repeat, args.limit)
    fits = _fits(same, alone, args.fit_from)
    command = "python -m benchmarks.nway " + " ".join(argv if argv is not None else sys.argv[1:])
    page = render(same, alone, stopped, fits, args, command.strip(), before)
    print(page)
    if args.out:
        with open(args.out, "w") as out:
            out.write(page)


if __name__ == "__main__":
    main()
