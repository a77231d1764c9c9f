"""The Match3 probe (verification/probes/match3.py) and the shared protocol (_training.py): data
generator, tiny curriculum runs, the summary and verdict logic, and settings validation."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from verification.execution import InProcessExecutor
from verification.probes import _results, _training, match3


def brute_force_labels(x, M):
    N = len(x)
    return [int(any((x[i] + x[j] + x[k]) % M == 0 for j, k in itertools.product(range(N), repeat=2)))
            for i in range(N)]


@pytest.mark.parametrize("N,M", [(1, 3), (3, 5), (5, 7), (6, 33), (8, 11)])
def test_labels_match_brute_force(N, M):
    x, y = match3.generate(N, M, 40, np.random.default_rng(N))
    assert x.shape == y.shape == (40, N)
    assert x.min() >= 0 and x.max() < M
    for row, labels in zip(x, y):
        assert list(labels) == brute_force_labels(list(row), M)


def test_label_definition_allows_repeated_indices():
    # 1 + 1 + 1 ≡ 0 mod 3 uses j = k = i; 2 + 2 + 1 = 5 ≡ 0 mod 5 uses j = k ≠ i
    assert match3.labels(np.array([1]), 3).tolist() == [1]
    assert match3.labels(np.array([1, 2]), 5).tolist() == [1, 1]
    assert match3.labels(np.array([1, 1]), 5).tolist() == [0, 0]


def test_generator_is_seeded():
    a = match3.generate(8, 46, 16, np.random.default_rng(3))
    b = match3.generate(8, 46, 16, np.random.default_rng(3))
    c = match3.generate(8, 46, 16, np.random.default_rng(4))
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("N", [4, 6, 8, 12, 16])
def test_modulus_gives_balanced_labels(N):
    M = match3.choose_modulus(N)
    assert M == match3.choose_modulus(N)  # deterministic
    # fresh data, independent of the sample the modulus was tuned on
    _, y = match3.generate(N, M, 2000, np.random.default_rng([99, N]))
    assert abs(y.mean() - 0.5) < 0.06
    assert 0.4 * N * N < M < 1.1 * N * N


def test_radius_cap_is_certified():
    from tattn_numba.poly.exp_approx import relative_error_bound

    cap = match3.radius_cap(6, 0.05)
    assert cap > 1.0
    assert relative_error_bound("chebyshev", 6, cap) <= 0.05 < relative_error_bound("chebyshev", 6, 1.05 * cap)



def test_radius_cap_is_reexported():
    assert match3.radius_cap is _training.radius_cap


# --------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key,value,match", [
    ("Ns", [8, 6], "strictly increasing"),
    ("Ns", [], "non-empty"),
    ("Ns", [6, 0], "positive ints"),
    ("seeds", [], "seeds"),
    ("seeds", [0, 0], "distinct"),
    ("steps", 0, "steps"),
    ("poly_stages", 2, "poly_stages"),
    ("pairwise_layers", [2, 1], "strictly increasing"),
    ("poly_degrees", [0], "positive ints"),
    ("learn_margin", 0.0, "learn_margin"),
    ("lr", -1.0, "lr"),
])
def test_bad_settings_raise(key, value, match):
    settings = {**match3.PRESETS["tiny"], key: value}
    with pytest.raises(ValueError, match=match):
        _training.check_settings(settings)
    with pytest.raises(ValueError, match=match):
        match3.run(settings, InProcessExecutor())


def test_missing_setting_raises():
    settings = dict(match3.PRESETS["tiny"])
    del settings["seeds"]
    with pytest.raises(ValueError, match="seeds"):
        _training.check_settings(settings)


@pytest.mark.parametrize("name", ["tiny", "quick", "medium", "full"])
def test_presets_are_valid(name):
    _training.check_settings(match3.PRESETS[name])


def test_full_presets_follow_the_protocol():
    for preset in (match3.PRESETS["medium"], match3.PRESETS["full"]):
        assert len(preset["seeds"]) >= 3 and preset["pairwise_layers"] == [1, 2, 4] and preset["param_matched"]
        assert len(preset["poly_degrees"]) >= 3


def test_model_names_and_parameter_matching():
    settings = match3.PRESETS["medium"]
    assert _training.model_names(settings) == ["tensor", "poly_g2", "poly_g4", "poly_g6", "pairwise_L1_h3",
                                               "pairwise_L1", "pairwise_L2", "pairwise_L4"]
    assert all(_training.describe(n) for n in _training.model_names(settings))
    with pytest.raises(ValueError, match="unknown model"):
        _training.describe("mlp")


# --------------------------------------------------------------------------------------------
# summary, "learns", separation and the table, on hand-made results
# --------------------------------------------------------------------------------------------

def _fake(accuracies: dict, Ns=(6, 8), chance=0.5) -> dict:
    """Results with the given accuracies {model: [[acc per N] per seed]}."""
    settings = {**match3.PRESETS["tiny"], "Ns": list(Ns), "seeds": [0, 1], "poly_degrees": [],
                "poly_stages": 0, "param_matched": False, "pairwise_layers": [1, 2]}
    runs = [{"model": model, "seed": seed, "parameters": 100, "trace": [],
             "stages": [{"N": N, "param": 10, "positive_rate": chance, "chance": chance, "accuracy": a,
                         "step_seconds": 1e-3, "final_loss": 0.5, "clamps": 0, "refusals": 0, "steps": 10}
                        for N, a in zip(Ns, accs)]}
            for model, per_seed in accuracies.items() for seed, accs in enumerate(per_seed)]
    return {"settings": settings, "runs": runs, "failures": []}


def test_summary_learned_and_separation():
    results = _fake({"tensor": [[0.9, 0.62], [0.8, 0.56]],          # means 0.85, 0.59
                     "pairwise_L1": [[0.62, 0.5], [0.62, 0.52]],    # means 0.62, 0.51
                     "pairwise_L2": [[0.7, 0.5], [0.64, 0.5]]})     # means 0.67, 0.50
    summ = _results.summary(results)
    assert summ[("tensor", 6)]["mean"] == pytest.approx(0.85)
    assert (summ[("tensor", 6)]["lo"], summ[("tensor", 6)]["hi"]) == (0.8, 0.9)
    assert summ[("tensor", 8)]["margin"] == pytest.approx(0.09)
    learned = _results.learned(results)
    # learns: mean ≥ chance + 0.1 (0.59 at N = 8 is not enough)
    assert learned["tensor"] == {"learns": [6], "largest": 6}
    assert learned["pairwise_L1"] == {"learns": [6], "largest": 6}
    assert learned["pairwise_L2"] == {"learns": [6], "largest": 6}
    sep = _results.separation(results)
    assert sep[6]["separates"] and sep[6]["deep_learn"] == ["pairwise_L2"]
    assert not sep[8]["separates"] and not sep[8]["tensor_learns"]
    ok, text = _results.verdict_text(results)
    assert ok and "N ∈ [6]" in text and "N ∈ [8] the exact tensor layer did not learn" in text
    table = _results.table(results)
    assert "| tensor | 100 | 0.850 [0.800, 0.900] | 0.590 [0.560, 0.620] | 6 |" in table


def test_no_separation_is_reported():
    results = _fake({"tensor": [[0.7, 0.5], [0.7, 0.5]], "pairwise_L1": [[0.68, 0.5], [0.7, 0.5]],
                     "pairwise_L2": [[0.5, 0.5], [0.5, 0.5]]})
    ok, text = _results.verdict_text(results)
    assert not ok and "does not separate" in text
    assert _results.learned(results)["pairwise_L2"]["largest"] is None


# --------------------------------------------------------------------------------------------
# tiny runs (torch)
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_results():
    pytest.importorskip("torch", reason="torch is the [torch] extra (pip install tattn-numba[torch])")
    return match3.run(match3.PRESETS["tiny"], InProcessExecutor())


def test_tiny_run_protocol(tiny_results, tmp_path):
    results = tiny_results
    assert results["failures"] == []
    json.dumps(results)  # JSON-serialisable
    settings = match3.PRESETS["tiny"]
    assert sorted(r["model"] for r in results["runs"]) == sorted(_training.model_names(settings))
    params = {r["model"]: r["parameters"] for r in results["runs"]}
    assert params["pairwise_L1_h3"] == params["tensor"]        # parameter-matched
    assert params["pairwise_L2"] > params["pairwise_L1"]
    poly = next(r for r in results["runs"] if r["model"] == "poly_g4")
    assert poly["degree"] == 4 and poly["radius_cap"] == pytest.approx(match3.radius_cap(4, 0.05))
    assert all(st["refusals"] == 0 for st in poly["stages"])
    assert all(t["epsilon"] < 0.5 for t in poly["trace"])
    sections = match3.render(results, tmp_path)
    assert len(sections) == 2 and all(set(s) == {"title", "text", "figure", "ok"} for s in sections)
    for s in sections:
        assert (tmp_path / s["figure"]).is_file()
    assert "| tensor |" in match3.table(results)


def test_curriculum_learns_and_carries_weights():
    """Fixed seed 1, 400 + 400 steps at N = 6 then 8: the exact tensor layer learns N = 6 (0.675
    against 0.514 chance here) and, with the weights carried, N = 8 after 400 more steps (0.676
    against 0.507); one trace runs through both stages."""
    pytest.importorskip("torch", reason="torch is the [torch] extra (pip install tattn-numba[torch])")
    settings = {**match3.PRESETS["tiny"], "Ns": [6, 8], "steps": 400, "batch": 32, "eval_size": 256,
                "eval_every": 400, "seeds": [1]}
    run = match3.train_run("tensor", 1, settings)
    assert all(stage["accuracy"] >= stage["chance"] + 0.10 for stage in run["stages"])
    assert [t["step"] for t in run["trace"]] == [400, 800]


def test_cli_writes_results(tmp_path):
    pytest.importorskip("torch", reason="torch is the [torch] extra (pip install tattn-numba[torch])")
    tiny = {**match3.PRESETS["tiny"], "poly_degrees": [], "poly_stages": 0, "pairwise_layers": [1],
            "param_matched": False, "steps": 5}
    code = _results.cli("match3", {"tiny": tiny}, match3.run, match3.render, ["--config", "tiny", "--out",
                                                                                str(tmp_path), "--threads", "1"])
    assert code == 0
    assert {"results.json", "match3.md", "match3.png"} <= {p.name for p in tmp_path.iterdir()}
    (tmp_path / "match3.png").unlink()
    rerender = ["--out", str(tmp_path), "--rerender"]
    assert _results.cli("match3", {"tiny": tiny}, match3.run, match3.render, rerender) == 0
    assert (tmp_path / "match3.png").is_file() and "tiny configuration" in (tmp_path / "match3.md").read_text()


def test_skipped_results_render():
    sections = match3.render({"skipped": match3.SKIPPED, "failures": []}, None)
    assert sections == [{"title": sections[0]["title"], "text": f"Skipped: {match3.SKIPPED}.",
                         "figure": None, "ok": True}]


def test_run_without_torch(monkeypatch):
    monkeypatch.setattr(_training, "torch", None)
    assert match3.run(match3.PRESETS["tiny"], InProcessExecutor()) == {"skipped": match3.SKIPPED, "failures": []}
