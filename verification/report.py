"""Run a configuration's probes and write ``report.md``, PNG figures and ``results.json``.

The report opens with any failure (a certified bound exceeded, a hard instance decided wrongly),
in red, then says which of the theory's predictions held (those that did not, in red), before
the figures; every figure comes with one paragraph computed from the results.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import configs

__all__ = ["environment", "run_report", "write_report"]


def environment() -> dict:
    """Versions, CPU and threads, for the record."""
    import matplotlib
    import numba
    import tensorly

    import tattn_numba

    return {
        "python": platform.python_version(), "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "numba_threads": numba.get_num_threads(), "numba_threading_layer": _threading_layer(numba),
        "tattn_numba": tattn_numba.__version__, "numba": numba.__version__, "numpy": np.__version__,
        "tensorly": tensorly.__version__, "matplotlib": matplotlib.__version__,
    }


def _threading_layer(numba) -> str:
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel function has run yet
        return "not yet initialised"


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def run_report(config: str, out_dir: str | os.PathLike, executor, *, force: bool = False,
               progress: bool = True) -> dict:
    """Run every probe of configuration ``config`` through ``executor`` and write the report.

    Parameters
    ----------
    config : {"tiny", "quick", "full"}
    out_dir : path
        Created; an existing non-empty directory is refused unless ``force``.
    executor : concurrent.futures.Executor
        Where sweep points run (see :mod:`verification.execution`).
    force : bool
        Replace an existing report directory.
    progress : bool
        Show a progress bar (stderr).

    Returns
    -------
    dict
        What ``results.json`` holds.
    """
    settings = configs.get(config)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out} exists and is not empty; pass --force to replace the report there")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = {"config": config, "settings": settings, "probes": {}, "seconds": {}}
    bar = tqdm(configs.PROBES, desc="verification", unit="probe", disable=not progress, file=sys.stderr)
    for name, module in bar:
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        results["probes"][name] = module.run(settings[name], executor)
        results["seconds"][name] = round(time.perf_counter() - t0, 2)
    results["environment"] = environment()
    results["seeds"] = ("fixed: every sweep point seeds its own numpy Generator from its parameters "
                        "(settings list the seeds), so a rerun reproduces every input")
    results["total_seconds"] = round(time.perf_counter() - started, 2)
    sections = {name: module.render(results["probes"][name], out) for name, module in configs.PROBES}
    results["failures"] = [f"{name}: {text}" for name in results["probes"] for text in results["probes"][name]["failures"]]
    results["predictions"] = [{"probe": name, "title": section["title"], "held": bool(section["ok"])}
                              for name, secs in sections.items() for section in secs]
    with open(out / "results.json", "w") as handle:
        json.dump(results, handle, indent=1, default=_json_default)
    write_report(results, sections, out)
    return results


def write_report(results: dict, sections: dict, out: Path) -> None:
    env = results["environment"]
    lines = [
        "# Tensor attention: verification report",
        "",
        f"Configuration **{results['config']}**, {results['total_seconds']:.0f} s on {env['processor']} "
        f"({env['cpu_count']} CPUs, {env['numba_threads']} Numba threads), Python {env['python']}, "
        f"tattn_numba {env['tattn_numba']}, numba {env['numba']}, numpy {env['numpy']}. Every number is in "
        "[results.json](results.json); the settings of each probe are there too.",
        "",
    ]
    if results["failures"]:
        lines += ['<p style="color:red"><b>FAILURES</b> (a certified bound exceeded, or a check that must hold '
                  'did not)</p>', ""]
        lines += [f'- <span style="color:red">{failure}</span>' for failure in results["failures"]]
    else:
        lines.append("**No failure**: every certified bound held and every hard instance was decided by the exact "
                     "kernel.")
    missed = [p["title"] for p in results["predictions"] if not p["held"]]
    lines += ["", "Predictions of the theory checked below: "
              + (f"{len(results['predictions']) - len(missed)} of {len(results['predictions'])} held; "
                 + "; ".join(f'<span style="color:red">{title}: did not hold</span>' for title in missed)
                 if missed else f"all {len(results['predictions'])} held.")]
    lines.append("")
    for name, secs in sections.items():
        for section in secs:
            mark = "" if section["ok"] else ' <span style="color:red">(did not hold)</span>'
            lines += [f"## {section['title']}{mark}", ""]
            if section["figure"]:
                lines += [f"![{section['title']}]({section['figure']})", ""]
            lines += [section["text"], "", f"*Probe `{name}`, {results['seconds'][name]} s.*", ""]
    (out / "report.md").write_text("\n".join(lines))
