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
        Created; an existing empty directory is used. A non-empty one is refused unless ``force``
        and it holds a report this tool wrote (its ``.tattn-verify-report`` marker) and nothing
        else. The report is written into a hidden sibling and moved into place at the end: a
        failed or interrupted run leaves ``out_dir`` as it was.
    executor : concurrent.futures.Executor
        Where sweep points run (see :mod:`verification.execution`).
    force : bool
        Replace an existing report directory written by this tool.
    progress : bool
        Show a progress bar (stderr).

    Returns
    -------
    dict
        What ``results.json`` holds.
    """
    settings = configs.get(config)
    out = _resolve_out(out_dir)
    _check_out(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = _make_temporary_sibling(out)
    try:
        results = _run_into(config, settings, work, executor, progress)
        _write_marker(work, config)
        existed = _check_out(out, force)  # again: the run took a while, the directory may have changed
        _install(work, out, existed)
    except BaseException:  # KeyboardInterrupt included: the old report stays, the new one goes
        shutil.rmtree(work, ignore_errors=True)
        raise
    return results


def _run_into(config: str, settings: dict, out: Path, executor, progress: bool) -> dict:
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


# The report directory. A report is written into a fresh hidden sibling of --out and moved into
# place only once complete, so an interrupted or failed run leaves the previous report as it
# was. Every report directory holds MARKER (JSON: tool, version, time, the files written); only
# a directory with a valid marker and no other files is ever replaced, even with --force.

#: Name of the marker file written into every report directory.
MARKER = ".tattn-verify-report"
_TOOL = "tattn-verify"


def _resolve_out(out_dir) -> Path:
    out = Path(out_dir).resolve()  # a symbolic link: its target is the directory
    if out.parent == out:
        raise FileExistsError(f"{out} cannot be a report directory; choose another --out")
    return out


def _read_marker(out: Path) -> dict | None:
    try:
        marker = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("tool") != _TOOL or not isinstance(marker.get("files"), list) \
            or not all(isinstance(name, str) for name in marker["files"]):
        return None
    return marker


def _check_out(out: Path, force: bool) -> bool:
    """Refuse an ``out`` that must not be written to; return whether it exists (a directory)."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory; choose another --out")
    entries = {entry.name for entry in out.iterdir()}
    if not entries:
        return True
    if not force:
        raise FileExistsError(f"{out} exists and is not empty; pass --force to replace the report there")
    marker = _read_marker(out)
    if marker is None:
        raise FileExistsError(
            f"{out} is not empty and holds no report written by this tool (no valid {MARKER} marker "
            "file); refusing to replace it even with --force: choose another --out, or empty it yourself")
    foreign = sorted(entries - set(marker["files"]) - {MARKER})
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise FileExistsError(
            f"{out} holds a report but also files this tool did not write ({shown}); refusing to replace "
            "it even with --force: move them away, or choose another --out")
    return True


def _sibling(out: Path, tag: str, attempt: int) -> Path:
    suffix = f"-{attempt}" if attempt else ""
    return out.parent / f".{out.name}.{tag}-{os.getpid()}{suffix}"


def _make_temporary_sibling(out: Path) -> Path:
    for attempt in range(1000):
        work = _sibling(out, "tmp", attempt)
        try:
            work.mkdir()
        except FileExistsError:
            continue
        return work
    raise FileExistsError(f"cannot create a temporary directory next to {out}")


def _write_marker(work: Path, config: str) -> None:
    import tattn_numba

    marker = {"tool": _TOOL, "version": tattn_numba.__version__, "config": config,
              "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "files": sorted(entry.name for entry in work.iterdir())}
    (work / MARKER).write_text(json.dumps(marker, indent=1) + "\n")


def _install(work: Path, out: Path, existed: bool) -> None:
    """Move the finished report ``work`` to ``out``: absent, an empty directory (kept; the report's
    files move into it) or a report of this tool (checked by :func:`_check_out`; replaced)."""
    if not existed:
        os.rename(work, out)
        return
    if not any(out.iterdir()):
        moved = []
        try:
            for entry in sorted(work.iterdir()):
                os.rename(entry, out / entry.name)
                moved.append(out / entry.name)
        except BaseException:
            for path in moved:  # only what was just moved in: the directory was empty before
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            raise
        work.rmdir()
        return
    attempt = 0
    while (backup := _sibling(out, "old", attempt)).exists() or backup.is_symlink():
        attempt += 1
    os.rename(out, backup)
    try:
        os.rename(work, out)
    except BaseException:
        os.rename(backup, out)
        raise
    try:
        shutil.rmtree(backup)  # the previous report: only files this tool wrote (checked)
    except OSError as exc:  # the new report is in place; say what is left over
        print(f"warning: could not remove the previous report, moved to {backup}: {exc}", file=sys.stderr)


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
