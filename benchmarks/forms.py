"""The attention forms in one run: sliding windows, grouped heads, determinant logits (exact CPU).

Usage::

    python -m benchmarks.forms [--quick] [--out docs/forms_benchmarks.md]

Prints (and with ``--out`` writes) three Markdown tables, every number measured in the same run:

* windowed forward and forward+backward at n = 16384, (w1, w2) = (512, 32), d = dv = 64, float32
  and float64, in GFLOP/s counting only the pairs inside the window, next to the full kernel's
  GFLOP/s at the same d (n = 256), and the cost of a windowed pair relative to a full one;
* H = 8 query heads over Hk = 1 key/value head against the same problem with K and V repeated
  to 8 heads: time and peak traced memory (``tracemalloc``, which sees NumPy's allocations);
* the determinant form against the trilinear form at the same d: time ratio;
* the windowed surrogate against the windowed exact kernel over w1·w2, d and degree: when the
  surrogate pays.

The implementations compared in a table are timed in interleaved rounds (the best of 5;
:func:`verification.timing.best_times`), so a change of load on a shared machine hits them alike.

Flop convention (as FBGEMM's attention utilities count only the unmasked work): a forward pair
(i, j1, j2) costs 2·(d + dv) flops (the logit's d multiply-adds and the value contraction's dv);
the backward recomputes the logit and performs five more contractions, 6·(d + dv), so
forward+backward counts 8·(d + dv) per pair. ``--quick`` shrinks every size (for a smoke run).
"""

from __future__ import annotations

import argparse
import platform
import tracemalloc
from pathlib import Path

import numba
import numpy as np

import tattn_numba as ta
from verification.timing import best_time, best_times


def _operands(rng, lead_q, lead_k, n, d, dv, dtype):
    Q = rng.standard_normal(lead_q + (n, d)).astype(dtype)
    K1, K2 = (rng.standard_normal(lead_k + (n, d)).astype(dtype) for _ in range(2))
    V1, V2 = (rng.standard_normal(lead_k + (n, dv)).astype(dtype) for _ in range(2))
    dO = rng.standard_normal(np.broadcast_shapes(lead_q, lead_k) + (n, dv)).astype(dtype)
    return (Q, K1, K2, V1, V2), dO


def _pairs(n: int, window) -> float:
    if window is None:
        return float(n) ** 3
    counts1, counts2 = ta.Mask(window=window).pair_counts(n, n, n)
    return float(counts1 @ counts2)


def _calls(n, d, dv, dtype, window, rng) -> tuple:
    """The forward and the forward+backward of one problem, as argument-less callables."""
    X, dO = _operands(rng, (1,), (1,), n, d, dv, dtype)
    kw = dict(window=window, scale=1.0 / np.sqrt(d))
    return (lambda: ta.attention(*X, **kw)), (lambda: ta.attention_grad(*X, dO, **kw))


def window_table(quick: bool, rng) -> list[str]:
    n, window, d = (2048, (128, 16), 64) if quick else (16384, (512, 32), 64)
    n_full = 128 if quick else 256
    rows = ["| dtype | windowed fwd GFLOP/s | full fwd GFLOP/s | fwd pair cost ratio | windowed fwd+bwd GFLOP/s "
            "| full fwd+bwd GFLOP/s | fwd+bwd pair cost ratio |", "|---|---|---|---|---|---|---|"]
    pairs = {"windowed": _pairs(n, window), "full": _pairs(n_full, None)}
    for dtype in (np.float32, np.float64):
        calls = {}
        for name, size, mask in (("windowed", n, window), ("full", n_full, None)):
            calls[name, "fwd"], calls[name, "both"] = _calls(size, d, d, dtype, mask, rng)
        seconds = best_times(calls, 3 if quick else 5)
        per_pair = {key: t / pairs[key[0]] for key, t in seconds.items()}
        rate = {key: (2 if key[1] == "fwd" else 8) * 2 * d / t / 1e9 for key, t in per_pair.items()}
        rows.append(f"| {np.dtype(dtype).name} | {rate['windowed', 'fwd']:.1f} | {rate['full', 'fwd']:.1f} "
                    f"| {per_pair['windowed', 'fwd'] / per_pair['full', 'fwd']:.2f} | {rate['windowed', 'both']:.1f} "
                    f"| {rate['full', 'both']:.1f} | {per_pair['windowed', 'both'] / per_pair['full', 'both']:.2f} |")
    head = (f"Windowed exact kernel, n = {n}, window = {window}, d = dv = {d} (pairs inside the window only), "
            f"against the full kernel at n = {n_full}, same d; ratio = seconds per windowed pair / seconds per "
            "full pair (target <= 1.25).")
    return [head, ""] + rows


def _peak_traced(fn) -> int:
    """Peak bytes ``tracemalloc`` sees during one call of ``fn`` (untimed: tracing slows it)."""
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def grouped_table(quick: bool, rng) -> list[str]:
    n, d, H = (96, 16, 8) if quick else (256, 16, 8)
    rows = ["| layout | fwd s | fwd+bwd s | peak traced MiB (fwd+bwd) |", "|---|---|---|---|"]
    X, dO = _operands(rng, (H,), (1,), n, d, d, np.float64)
    repeated = (X[0],) + tuple(np.repeat(x, H, axis=0) for x in X[1:])
    layouts = ((f"H={H} over Hk=1 (grouped)", X), (f"K/V repeated to {H} heads", repeated))
    times = {name: [np.inf, np.inf] for name, _ in layouts}
    for _ in range(3):  # interleaved, the minimum of each: the two layouts see the same machine state
        for name, args in layouts:
            times[name][0] = min(times[name][0], best_time(lambda: ta.attention(*args), 1))
            times[name][1] = min(times[name][1], best_time(lambda: ta.attention_grad(*args, dO), 1))
    for name, args in layouts:
        peak = _peak_traced(lambda: ta.attention_grad(*args, dO))
        rows.append(f"| {name} | {times[name][0]:.3f} | {times[name][1]:.3f} | {peak / 2**20:.2f} |")
    head = (f"Grouped heads, n = m = {n}, d = dv = {d}, float64 (the repeated layout's inputs are allocated "
            "before tracing; its key gradients are per head, not summed).")
    return [head, ""] + rows


def determinant_table(quick: bool, rng) -> list[str]:
    n, repeat = (64, 2) if quick else (256, 5)
    rows = ["| d | trilinear fwd s | determinant fwd s | ratio | trilinear fwd+bwd s | determinant fwd+bwd s | ratio |",
            "|---|---|---|---|---|---|---|"]
    for d in (16, 64):
        X, dO = _operands(rng, (1,), (1,), n, d, d, np.float64)
        calls = {}
        for logits in ("trilinear", "determinant"):
            calls[logits, "fwd"] = lambda logits=logits: ta.attention(*X, logits=logits)
            calls[logits, "both"] = lambda logits=logits: ta.attention_grad(*X, dO, logits=logits)
        times = best_times(calls, repeat)
        tf, tb, df, db = (times[key] for key in calls)
        rows.append(f"| {d} | {tf:.3f} | {df:.3f} | {df / tf:.2f} | {tb:.3f} | {db:.3f} | {db / tb:.2f} |")
    head = f"Determinant against trilinear logits, n = m1 = m2 = {n}, dv = d, float64 (target ratio <= 2.2)."
    return [head, ""] + rows


def window_surrogate_table(quick: bool, rng) -> list[str]:
    """Windowed surrogate against the windowed exact kernel, forward+backward, same inputs."""
    n = 1024 if quick else 4096
    rows = ["| window | w1·w2 | d = dv | degree | rank r | exact s | poly s | exact / poly |", "|---|---|---|---|---|---|---|---|"]
    rng = np.random.default_rng(1)  # its own inputs: the table does not depend on the tables before it
    for d in (4, 8):
        X, dO = _operands(rng, (1,), (1,), n, d, d, np.float64)
        X = tuple(0.4 * x for x in X)
        for degree in (2, 4):
            for window in ((16, 16), (64, 32), (256, 64)) if not quick else ((16, 16), (64, 32)):
                exact = best_time(lambda: ta.attention_grad(*X, dO, window=window), 1)
                try:
                    plan = ta.poly_plan(*X, window=window, degree=degree)
                    poly = best_time(lambda: ta.attention_grad(*X, dO, window=window, method="poly", degree=degree), 1)
                except ValueError:  # the degree is too low to certify these inputs
                    rows.append(f"| {window} | {window[0] * window[1]} | {d} | {degree} | – | {exact:.3f} "
                                "| not certified | – |")
                    continue
                rows.append(f"| {window} | {window[0] * window[1]} | {d} | {degree} | {plan.rank} | {exact:.3f} "
                            f"| {poly:.3f} | {exact / poly:.2f} |")
    head = (f"Windowed surrogate (method='poly', fixed degree) against the windowed exact kernel, forward+backward, "
            f"n = {n}, float64, entries 0.4·N(0, 1) (ratio > 1: the surrogate is faster).")
    return [head, ""] + rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--out", help="also write the tables to this Markdown file")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    machine = f"{platform.processor() or platform.machine()}, {numba.get_num_threads()} threads"
    lines = [f"Machine: {machine}; command: python -m benchmarks.forms{' --quick' if args.quick else ''}", ""]
    for table in (window_table, grouped_table, determinant_table, window_surrogate_table):
        lines += table(args.quick, rng) + [""]
    text = "\n".join(lines)
    print(text)
    if args.out:  # the file the caller named is (over)written
        Path(args.out).write_text("# Attention forms: measured\n\n" + text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
