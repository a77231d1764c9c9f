"""``python -m verification`` / ``tattn-verify``: run a named configuration and write the report."""

from __future__ import annotations

import argparse
import sys

from . import configs
from .execution import available_cpus, check_workers, make_executor
from .report import run_report


def _workers(text: str) -> int:
    """``--workers``: a whole number from 1 to the CPUs available (more only thrash and eat memory)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    try:
        return check_workers(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m verification",
        description="Empirical verification of tensor attention's almost-linear theory: surrogate errors "
                    "against certified bounds, degree/rank across the entry-bound threshold, runtime "
                    "scaling, per-row intervals, and hard Gap-3-MaxIP instances. Writes report.md, PNG "
                    "figures and results.json.",
    )
    parser.add_argument("--config", choices=configs.NAMES, default="quick",
                        help="named configuration: tiny (seconds, for tests), quick (under 2 min on 2 cores, "
                             "3 with PyTorch; default), full (a big machine or a Dask cluster)")
    parser.add_argument("--out", required=True, help="directory for report.md, the figures and results.json")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing --out directory holding a report written by this tool "
                             "(any other non-empty directory is refused)")
    parser.add_argument("--scheduler", metavar="ADDRESS", default=None,
                        help="run the sweep points on a Dask cluster (e.g. tcp://host:8786); needs "
                             "pip install 'tattn-numba[dask]'")
    parser.add_argument("--workers", type=_workers, default=None, metavar="N",
                        help=f"run the sweep points in a local pool of N processes, 1 to {available_cpus()} "
                             "(the CPUs available here; default: in-process)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        executor = make_executor(args.scheduler, args.workers)
        results = run_report(args.config, args.out, executor, force=args.force, progress=not args.no_progress)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; {args.out} was left as it was", file=sys.stderr)
        return 130
    held = sum(p["held"] for p in results["predictions"])
    status = f"{len(results['failures'])} FAILURES" if results["failures"] else "no failure"
    print(f"wrote {args.out}/report.md and results.json in {results['total_seconds']:.0f} s "
          f"({status}; {held} of {len(results['predictions'])} predictions held)")
    return 1 if results["failures"] else 0
