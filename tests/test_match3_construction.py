"""The hand-set Match3 head (verification.match3_construction): exact on every row at β >= β_min·1.05,
wrong somewhere at 0.9·β_min; checked with the exact kernel against verification.probes.match3.labels."""

import numpy as np
import pytest

from verification import match3_construction as mc
from verification.execution import InProcessExecutor
from verification.probes.match3 import choose_modulus, labels

#: (N, M): the training's M at N = 6, 8, 16, 64, and moduli with 3 | M and 3 ∤ M, even and odd.
CASES = [(6, 33), (8, 54), (16, 196), (64, choose_modulus(64)), (5, 7), (12, 64), (3, 3)]


@pytest.mark.parametrize("N, M", CASES)
def test_classifies_every_row_of_adversarial_and_random_sequences(N, M):
    con = mc.construction(N, M)
    assert con["beta"] >= mc.beta_min(N, M) and con["logit_radius"] == pytest.approx(con["beta"])
    x = mc.adversarial_sequences(N, M, np.random.default_rng([1, N, M]), random=32)
    y = labels(x, M)
    assert y.any() and (M == 3 or not y.all())  # both classes (at M = 3 every 3x ≡ 0: all positive)
    out, decision = mc.classify(x, M, con["beta"], con["tau"])
    assert np.all(np.isfinite(out)) and np.all((out >= 0) & (out <= 1))
    np.testing.assert_array_equal(decision, y)


@pytest.mark.parametrize("N, M", [(6, 33), (8, 54), (16, 196), (64, choose_modulus(64))])
def test_below_beta_min_fails_somewhere(N, M):
    low = mc.construction(N, M, beta=0.9 * mc.beta_min(N, M))
    x = mc.adversarial_sequences(N, M, np.random.default_rng([2, N]), random=0)
    _, decision = mc.classify(x, M, low["beta"], low["tau"])
    assert np.any(decision != labels(x, M))


def test_hand_picked_sequences():
    N, M = 8, 54
    con = mc.construction(N, M)
    cases = {
        "all zero: every pair matches": np.zeros(N, dtype=np.int64),
        "all equal, 3x ≡ 3: every pair misses by 3": np.full(N, 1),
        "exactly one match for row 0": np.array([5, (-10) % M] + [30] * (N - 2)),
        "near misses ±1 only": np.array([1, 26, 26, 26, 26, 26, 26, 26]),
    }
    for name, x in cases.items():
        _, decision = mc.classify(x, M, con["beta"], con["tau"])
        np.testing.assert_array_equal(decision, labels(x, M), err_msg=name)


def test_logits_are_beta_cos():
    N, M = 4, 11
    x = np.array([0, 3, 7, 10])
    Q, K1, K2, V1, V2 = mc.operands(x, M, 2.0, 0.5)
    logits = np.einsum("il,jl,kl->ijk", Q, K1, K2)
    expected = 2.0 * np.cos(2 * np.pi * (x[:, None, None] + x[None, :, None] + x[None, None, :]) / M)
    np.testing.assert_allclose(logits[:, :N, :N], expected, atol=1e-12)
    np.testing.assert_allclose(logits[:, N, N], 0.5)
    np.testing.assert_allclose(logits[:, :N, N], 0.0, atol=1e-15)
    assert V1[:N].min() == 1 and V1[N, 0] == 0 and V2[N, 0] == 0


def test_probe_run_and_render(tmp_path):
    results = mc.run(mc.PRESETS["tiny"], InProcessExecutor())
    assert results["failures"] == []
    for row in results["rows"]:
        assert row["rows_correct"] == row["rows"]
        cert = row["certificate"]
        assert cert["radius"] > 16 and cert["degree"] is None and cert["refusal"]  # past float64 certification
        assert cert["taylor_degree"] > row["logit_radius"]
    (section,) = mc.render(results, tmp_path)
    assert section["ok"] and "| 8 | 54 |" in section["text"]
