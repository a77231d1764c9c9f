"""Regression tests: ``python -m verification`` never deletes what it did not write.

The probes are replaced by a fake one (monkeypatched ``configs.PROBES``) so that each test runs
the real CLI and directory handling in well under a second.
"""

from __future__ import annotations

import json
import os
import types

import pytest

from verification import configs, report
from verification.cli import main
from verification.execution import available_cpus, make_executor


def _fake_probe(label: str = "first", fail_in=None):
    """A probe module: ``run`` and ``render`` write a little, and raise ``fail_in[1]`` in ``fail_in[0]``."""

    def run(settings, executor):
        if fail_in and fail_in[0] == "run":
            raise fail_in[1]
        return {"label": label, "failures": []}

    def render(results, out_dir):
        (out_dir / "fake.png").write_bytes(b"\x89PNG\r\n\x1a\n" + label.encode())
        if fail_in and fail_in[0] == "render":
            raise fail_in[1]
        return [{"title": f"fake {label}", "ok": True, "figure": "fake.png", "text": label}]

    return types.SimpleNamespace(PRESETS={name: {} for name in configs.NAMES}, run=run, render=render)


@pytest.fixture
def probes(monkeypatch):
    """Call with the fake probe's arguments to install it in place of the real probes."""

    def install(*args, **kwargs):
        monkeypatch.setattr(configs, "PROBES", (("fake", _fake_probe(*args, **kwargs)),))

    install()
    return install


def _cli(out, *extra):
    return main(["--config", "tiny", "--out", str(out), "--no-progress", *extra])


def _snapshot(directory):
    return {path.name: path.read_bytes() for path in directory.iterdir()}


def _siblings(out):
    return sorted(path.name for path in out.parent.iterdir() if path.name != out.name)


def test_report_directory_holds_the_marker(probes, tmp_path):
    out = tmp_path / "report"
    assert _cli(out) == 0
    marker = json.loads((out / report.MARKER).read_text())
    assert marker["tool"] == "tattn-verify" and marker["version"] and marker["written"]
    assert set(marker["files"]) == {"report.md", "results.json", "fake.png"}
    assert _siblings(out) == []


def test_force_keeps_a_directory_of_unrelated_files(probes, tmp_path, capsys):
    """Bug 1: --force wiped a directory holding unrelated files."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    (out / "data").mkdir()
    (out / "data" / "x.csv").write_text("1,2")
    assert _cli(out, "--force") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(out) in err and report.MARKER in err and "--force" in err
    assert (out / "thesis.tex").read_text() == "years of work"
    assert (out / "data" / "x.csv").read_text() == "1,2"
    assert _siblings(out) == []


def test_force_keeps_a_report_directory_holding_other_files(probes, tmp_path, capsys):
    out = tmp_path / "report"
    assert _cli(out) == 0
    (out / "notes.txt").write_text("mine")
    before = _snapshot(out)
    assert _cli(out, "--force") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(out) in err and "notes.txt" in err
    assert _snapshot(out) == before


def test_force_keeps_a_directory_with_a_forged_marker(probes, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / report.MARKER).write_text("not json")
    (out / "keep.txt").write_text("mine")
    assert _cli(out, "--force") == 2
    assert str(out) in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_existing_report_needs_force(probes, tmp_path, capsys):
    out = tmp_path / "report"
    assert _cli(out) == 0
    before = _snapshot(out)
    assert _cli(out) == 2
    assert "--force" in capsys.readouterr().err
    assert _snapshot(out) == before


def test_force_replaces_a_report_written_by_the_tool(probes, tmp_path):
    out = tmp_path / "report"
    assert _cli(out) == 0
    probes("second")
    assert _cli(out, "--force") == 0
    assert (out / "fake.png").read_bytes().endswith(b"second")
    assert json.loads((out / "results.json").read_text())["probes"]["fake"]["label"] == "second"
    assert (out / report.MARKER).is_file()
    assert _siblings(out) == []


def test_empty_existing_directory_is_used_in_place(probes, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    inode = out.stat().st_ino
    assert _cli(out) == 0
    assert out.stat().st_ino == inode  # the user's directory itself, not a replacement
    assert (out / "report.md").is_file()
    assert _siblings(out) == []


@pytest.mark.parametrize("where", ["run", "render"])
def test_interrupted_run_keeps_the_old_report(probes, tmp_path, capsys, where):
    """Bug 2: Ctrl-C during a --force run left the old report deleted and no new one."""
    out = tmp_path / "report"
    assert _cli(out) == 0
    before = _snapshot(out)
    probes("second", fail_in=(where, KeyboardInterrupt()))
    assert _cli(out, "--force") == 130
    assert "interrupted" in capsys.readouterr().err
    assert _snapshot(out) == before
    assert _siblings(out) == []
    with pytest.raises(KeyboardInterrupt):  # the library call lets it through, after cleaning up
        report.run_report("tiny", out, make_executor(), force=True, progress=False)
    assert _snapshot(out) == before
    assert _siblings(out) == []


def test_failed_run_keeps_the_old_report(probes, tmp_path, capsys):
    out = tmp_path / "report"
    assert _cli(out) == 0
    before = _snapshot(out)
    probes("second", fail_in=("run", RuntimeError("probe broke")))
    assert _cli(out, "--force") == 2
    assert "probe broke" in capsys.readouterr().err
    assert _snapshot(out) == before
    assert _siblings(out) == []


def test_interrupted_first_run_leaves_nothing(probes, tmp_path):
    out = tmp_path / "report"
    probes(fail_in=("render", KeyboardInterrupt()))
    assert _cli(out) == 130
    assert list(tmp_path.iterdir()) == []


def test_failed_swap_puts_the_old_report_back(probes, tmp_path, monkeypatch):
    out = tmp_path / "report"
    assert _cli(out) == 0
    before = _snapshot(out)
    probes("second")
    real_rename = os.rename

    def rename(src, dst):
        if os.path.basename(str(src)).startswith(".report.tmp-"):  # the new report moving in
            raise KeyboardInterrupt
        real_rename(src, dst)

    monkeypatch.setattr(report.os, "rename", rename)
    assert _cli(out, "--force") == 130
    assert _snapshot(out) == before
    assert _siblings(out) == []


def test_out_naming_a_file_is_an_error_not_a_traceback(probes, tmp_path, capsys):
    """Bug 3: --out an existing regular file crashed with a traceback."""
    path = tmp_path / "results.txt"
    path.write_text("mine")
    for extra in ((), ("--force",)):
        assert _cli(path, *extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(path) in err and "not a directory" in err
        assert "Traceback" not in err
        assert path.read_text() == "mine"
    assert _siblings(path) == []


@pytest.mark.parametrize("workers", [1000, 0, -3])
def test_workers_out_of_range_is_refused(tmp_path, capsys, workers):
    """Bug 4: --workers 1000 spawned dozens of processes and gigabytes."""
    with pytest.raises(SystemExit) as exit_info:
        _cli(tmp_path / "report", "--workers", str(workers))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "--workers" in err and str(workers) in err and str(available_cpus()) in err
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="between 1 and"):
        make_executor(workers=workers)


def test_workers_within_range_is_accepted(probes, tmp_path):
    assert _cli(tmp_path / "report", "--workers", "1") == 0
