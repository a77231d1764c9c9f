"""The hard-instance probe of the report (verification.probes.hardness) on its TINY preset."""

from __future__ import annotations

import concurrent.futures
import copy
import json
import pickle

import pytest

from verification.probes import hardness

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def results():
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
        return hardness.run(copy.deepcopy(hardness.TINY), executor)


def test_results_are_json_serialisable(results):
    text = json.dumps(results, allow_nan=False)
    assert json.loads(text)["summary"]["instances"] == len(results["instances"])


def test_one_yes_and_one_no_instance_per_size_and_seed(results):
    expected = {(n, label, seed) for n in hardness.TINY["sizes"] for seed in hardness.TINY["seeds"]
                for label in ("YES", "NO")}
    assert {(i["n"], i["label"], i["seed"]) for i in results["instances"]} == expected


def test_exact_kernel_decides_every_instance_within_its_bounds(results):
    for inst in results["instances"]:
        exact = inst["exact"]
        assert exact["correct"] and exact["within_bound"], inst
        if inst["label"] == "YES":
            assert exact["planted_output"] >= 4 / 7
            assert exact["argmax_row"] == inst["planted"][0]
        else:
            assert exact["max_output"] <= 1 / (4 * inst["n"] ** 2)


def test_instances_report_the_entry_bound_against_the_threshold(results):
    for inst in results["instances"]:
        assert inst["B"] == pytest.approx((inst["beta"] * inst["d_tilde"]) ** (1 / 3), rel=1e-12)
        assert inst["B_over_threshold"] == pytest.approx(inst["B"] / inst["log_n_cbrt"], rel=1e-12)
        assert inst["max_logit"] > hardness.FLOAT64_RADIUS_LIMIT


def test_surrogate_outcome_is_reported(results):
    for inst in results["instances"]:
        surrogate = inst["surrogate"]
        assert surrogate["tol_refusal"] is not None  # logit radius far beyond float64 certification
        assert surrogate["affordable_degree"] is not None and surrogate["affordable_rank"] >= 1
        assert surrogate["needed_rank"] > surrogate["affordable_rank"]
        assert not surrogate["certified_decision"]
        assert "refusal" in surrogate["run"]


def test_gradient_identity_holds_to_quadrature_accuracy(results):
    """Loss(1) − Loss(0) against Gauss–Legendre with 32 nodes: relative error <= 1e-6 (TINY's identity_rtol)."""
    assert hardness.TINY["identity_rtol"] == 1e-6
    for inst in results["instances"]:
        grad = inst["gradient"]
        assert grad is not None and grad["half_max_fraction"] >= 0.5
        errors = [row["rel_error"] for row in grad["quadrature"]]
        assert errors[-1] <= 1e-6
        assert errors[-1] < errors[0]


def test_no_failures(results):
    assert results["failures"] == []


def test_render_writes_png_figures_and_complete_sections(results, tmp_path):
    sections = hardness.render(results, tmp_path)
    assert len(sections) == 4
    for section in sections:
        assert set(section) == {"title", "text", "figure", "ok"}
        assert section["ok"] is True and section["text"]
        assert section["figure"] is not None
        assert (tmp_path / section["figure"]).read_bytes()[:8] == PNG_MAGIC


def test_render_reports_a_wrong_decision(results, tmp_path):
    broken = copy.deepcopy(results)
    broken["instances"][0]["exact"]["correct"] = False
    sections = {s["title"]: s for s in hardness.render(broken, tmp_path)}
    assert not sections["The exact kernel decides the planted instances"]["ok"]


def test_presets_share_keys_and_run_accepts_the_nested_form():
    assert hardness.PRESETS == {"tiny": hardness.TINY, "quick": hardness.QUICK, "full": hardness.FULL}
    assert set(hardness.TINY) == set(hardness.QUICK) == set(hardness.FULL)
    small = {**hardness.TINY, "sizes": [4], "identity_max_n": 0}
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
        out = hardness.run({"hardness": small}, executor)
    assert out["failures"] == [] and all(i["gradient"] is None for i in out["instances"])


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="missing keys"):
        hardness.run({"sizes": [8]}, concurrent.futures.ThreadPoolExecutor(max_workers=1))
    with pytest.raises(ValueError, match="unknown keys"):
        hardness.run({**hardness.TINY, "size": [8]}, concurrent.futures.ThreadPoolExecutor(max_workers=1))


def test_task_function_is_picklable():
    assert pickle.loads(pickle.dumps(hardness.probe_instance)) is hardness.probe_instance
