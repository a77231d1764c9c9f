"""The verification package: bounds, executors, the CLI and a tiny report end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from verification import bounds, configs
from verification.cli import main
from verification.execution import InProcessExecutor, make_executor

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_output_bound_and_its_inverse():
    V1, V2 = np.array([[1.0], [-2.0]]), np.array([[0.5], [3.0]])  # pair values span [-6, 3]
    epsilon = bounds.epsilon_for_output_tolerance(1e-4, V1, V2)
    assert bounds.output_bound(epsilon, 9.0) == pytest.approx(1e-4, rel=1e-12)
    assert bounds.output_bound(1.0, 9.0) == math.inf


def test_theory_degree_shape():
    assert bounds.theory_degree(1e-6, 1.0) < bounds.theory_degree(1e-12, 1.0)
    assert bounds.theory_degree(1e-6, 50.0) == 50.0  # the R term dominates for large radii
    assert bounds.entry_threshold(2980) == pytest.approx(2.0, abs=1e-4)  # ln 2980 = 7.9997


def test_executor_choices():
    assert isinstance(make_executor(), InProcessExecutor)
    with pytest.raises(ValueError, match="not both"):
        make_executor("tcp://localhost:1", 2)
    with pytest.raises(ValueError, match="workers"):
        make_executor(None, 0)
    future = InProcessExecutor().submit(divmod, 7, 2)
    assert future.result() == (3, 1)
    failing = InProcessExecutor().submit(math.sqrt, -1.0)
    with pytest.raises(ValueError):
        failing.result()


def test_unknown_configuration():
    with pytest.raises(ValueError, match="unknown configuration"):
        configs.get("medium")
    with pytest.raises(SystemExit):
        main(["--config", "medium", "--out", "x"])


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "tiny"
    code = main(["--config", "tiny", "--out", str(out), "--no-progress"])
    return code, out


def test_tiny_report_end_to_end(tiny_report):
    code, out = tiny_report
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {"config", "settings", "probes", "environment", "failures", "predictions",
                            "seconds", "total_seconds"}
    assert set(results["probes"]) == {"accuracy", "adversarial", "threshold", "scaling", "per_row", "hardness", "match3",
                                        "match3_construction", "composition"}
    assert all(rec["ratio"] <= 1.0 for rec in results["probes"]["adversarial"]["worst"].values())
    assert results["failures"] == []
    assert not any(row.get("exceeded") for row in results["probes"]["accuracy"]["rows"])
    nway_rows = results["probes"]["accuracy"]["nway_rows"]
    assert {row["t"] for row in nway_rows} == {1, 3}
    assert not any(row.get("exceeded") for row in nway_rows)
    assert all(row["O_error"] <= row["O_bound"] for row in nway_rows if "O_error" in row)
    nway_scaling = results["probes"]["scaling"]["nway"]
    assert nway_scaling["t"] == 3 and {p["method"] for p in nway_scaling["points"]} == {"exact", "poly"}
    assert results["environment"]["numba"]
    report = (out / "report.md").read_text()
    assert report.startswith("# Tensor attention: verification report")
    figures = [line.split("](")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
    assert len(figures) >= 5
    assert {"accuracy_nway.png", "scaling_nway.png"} <= set(figures)
    for name in figures:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name


def test_existing_report_is_not_overwritten_without_force(tiny_report, capsys):
    _, out = tiny_report
    before = (out / "results.json").read_text()
    assert main(["--config", "tiny", "--out", str(out), "--no-progress"]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "results.json").read_text() == before


def test_dask_local_cluster_runs_the_tiny_probes(tiny_report):
    """Scale-out: every probe's tiny sweep through a Dask cluster (local, in-process workers)
    runs without code changes and gives the same accuracy numbers as in-process. Match3 and
    composition are left out (their torch training runs go through the same executor.submit as
    the others)."""
    distributed = pytest.importorskip("distributed", reason="dask.distributed is the [dask] extra")
    _, local_out = tiny_report
    settings = configs.get("tiny")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        executor = make_executor(scheduler=cluster.scheduler_address)
        try:
            remote = {name: module.run(settings[name], executor) for name, module in configs.PROBES
                      if name not in ("match3", "composition")}
        finally:
            executor._client.close()
    local = json.loads((local_out / "results.json").read_text())
    assert all(result["failures"] == [] for result in remote.values())
    assert json.loads(json.dumps(remote["accuracy"])) == local["probes"]["accuracy"]


def test_process_pool_after_numba_has_run():
    """--workers: a spawned pool works even after this process ran Numba parallel kernels
    (a forked one aborts under GNU OpenMP)."""
    import tattn_numba as ta

    ta.attention(*(np.ones((4, 2)),) * 5)
    executor = make_executor(workers=1)
    try:
        assert executor.submit(math.sqrt, 16.0).result() == 4.0
    finally:
        executor.shutdown()
