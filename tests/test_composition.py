"""The relation-composition probe (verification/probes/composition.py): labels against a plain
brute-force definition, the alphabet choice, the hand-set head, tiny runs and bad settings."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from verification.execution import InProcessExecutor
from verification.probes import _training, composition


def brute_force_labels(edges, k):
    """y_i = 1 iff some positions j, l (any, i included) have a_j = a_i, b_j = a_l and b_l = b_i."""
    N = len(edges)
    return [int(any(edges[j][0] == edges[i][0] and edges[j][1] == edges[l][0] and edges[l][1] == edges[i][1]
                    for j, l in itertools.product(range(N), repeat=2)))
            for i in range(N)]


@pytest.mark.parametrize("N,k", [(1, 2), (2, 2), (5, 3), (8, 5), (12, 7)])
def test_labels_match_brute_force(N, k):
    x, y = composition.generate(N, k, 30, np.random.default_rng([N, k]))
    assert x.shape == (30, N, 2) and y.shape == (30, N)
    assert x.min() >= 0 and x.max() < k
    for row, labels in zip(x, y):
        assert list(labels) == brute_force_labels(row.tolist(), k)


def test_hand_picked_labels():
    # (0,1),(1,2): (0,2) is not an edge, so neither edge is composed; adding (0,2) makes it composed
    assert composition.labels(np.array([[0, 1], [1, 2]]), 3).tolist() == [0, 0]
    assert composition.labels(np.array([[0, 1], [1, 2], [0, 2]]), 3).tolist() == [0, 0, 1]
    # a self-loop composes with itself (j = l = i)
    assert composition.labels(np.array([[1, 1]]), 2).tolist() == [1]
    with pytest.raises(ValueError, match=r"\(\.\.\., N, 2\)"):
        composition.labels(np.array([1, 2, 3]), 4)


def test_generator_is_seeded():
    a = composition.generate(8, 5, 4, np.random.default_rng(1))
    b = composition.generate(8, 5, 4, np.random.default_rng(1))
    assert all(np.array_equal(u, v) for u, v in zip(a, b))


@pytest.mark.parametrize("N", [6, 8, 16, 32])
def test_alphabet_gives_balanced_labels(N):
    k = composition.choose_alphabet(N)
    _, y = composition.generate(N, k, 2000, np.random.default_rng([98, N]))
    assert abs(y.mean() - 0.5) < 0.12
    with pytest.raises(ValueError, match="positive"):
        composition.choose_alphabet(0)


@pytest.mark.parametrize("N", [6, 16])
def test_hand_set_head_solves_the_task(N):
    k = composition.choose_alphabet(N)
    row = composition.construction_accuracy(N, k, sequences=32)
    assert row["rows_correct"] == row["rows"] == 32 * N
    assert row["logit_radius"] >= 3 * row["beta_min"]


def test_hand_set_head_needs_its_sharpness():
    """No row is composed, but (N/2)² pairs per row miss by one step (b_j − a_l = 1): correct at
    1.05·β_min, wrong at 0.25·β_min (the near misses then outweigh the threshold)."""
    import tattn_numba as ta

    N, k = 8, 5
    x = np.array([[[0, 2]] * (N // 2) + [[0, 1]] * (N // 2)])
    assert composition.labels(x, k).tolist() == [[0] * N]
    wrong = {}
    for margin in (1.05, 0.25):
        con = composition.construction(N, k, margin)
        out = ta.attention(*composition.operands(x, k, con["beta"], con["tau"]), scale=1.0, method="exact")[..., 0]
        wrong[margin] = int(np.sum(out > 0.5))
    assert wrong[1.05] == 0 and wrong[0.25] > 0


def test_presets_are_valid():
    for preset in composition.PRESETS.values():
        _training.check_settings(preset)
    assert len(composition.PRESETS["medium"]["seeds"]) >= 3


@pytest.mark.parametrize("value", [0, None, 1.5])
def test_bad_construction_sequences_raise(value):
    with pytest.raises(ValueError, match="construction_sequences"):
        composition.run({**composition.PRESETS["tiny"], "construction_sequences": value}, InProcessExecutor())


def test_bad_curriculum_raises():
    with pytest.raises(ValueError, match="strictly increasing"):
        composition.run({**composition.PRESETS["tiny"], "Ns": [8, 8]}, InProcessExecutor())


def test_tiny_run(tmp_path):
    pytest.importorskip("torch", reason="torch is the [torch] extra (pip install tattn-numba[torch])")
    results = composition.run(composition.PRESETS["tiny"], InProcessExecutor())
    assert results["failures"] == []
    json.dumps(results)
    assert {r["model"] for r in results["runs"]} == {"tensor", "pairwise_L1"}
    assert results["construction"][0]["rows_correct"] == results["construction"][0]["rows"]
    sections = composition.render(results, tmp_path)
    assert len(sections) == 1 and (tmp_path / sections[0]["figure"]).is_file()
    assert "Existence" in sections[0]["text"] and "| tensor |" in sections[0]["text"]
