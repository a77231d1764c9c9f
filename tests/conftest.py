"""Shared test configuration: hypothesis profiles, kernel warm-up, seeded rng, registry params.

Hypothesis profiles (pick one with ``HYPOTHESIS_PROFILE=<name>``; "default" otherwise):

* ``default`` / ``ci``: ``deadline=None`` (first Numba compilation takes seconds), 40 examples.
* ``thorough``: 500 examples, for a long local run.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile(
    "thorough", deadline=None, max_examples=500, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def _gpu_usable() -> bool:
    """True under the CUDA simulator or with a real GPU (evaluated lazily, only for cuda pairs)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0"):
        return True
    try:
        from numba import cuda  # noqa: PLC0415 - only when a cuda implementation is registered

        return bool(cuda.is_available())
    except Exception:  # noqa: BLE001 - any failure means no usable GPU
        return False


def exact_implementation_params():
    """``pytest.param`` objects for every registered ``(method, device)`` with method "exact"."""
    from tattn_numba._registry import available

    params = []
    for method, device in available():
        if method != "exact":
            continue
        marks = ()
        if device == "cuda" and not _gpu_usable():
            marks = (pytest.mark.skip(reason="no GPU and NUMBA_ENABLE_CUDASIM is not set"),)
        params.append(pytest.param({"method": method, "device": device}, id=f"{method}-{device}", marks=marks))
    return params


@pytest.fixture(scope="session", params=exact_implementation_params())
def impl(request):
    """Keyword arguments ``{"method": ..., "device": ...}`` selecting one registered exact implementation."""
    return request.param


@pytest.fixture(scope="session")
def warm_kernels():
    """Compile the exact CPU kernels once (both dtypes, causal and not, forward and backward).

    Failures are swallowed here on purpose: the tests themselves then report them properly.
    """
    import tattn_numba as ta

    rng = np.random.default_rng(1234)
    for dtype in (np.float32, np.float64):
        Q, K1, K2, V1, V2, dO = (rng.standard_normal((2, 2)).astype(dtype) for _ in range(6))
        for causal in (False, True):
            try:
                ta.attention(Q, K1, K2, V1, V2, causal=causal)
                ta.attention_grad(Q, K1, K2, V1, V2, dO, causal=causal)
            except Exception:  # noqa: BLE001
                pass
    yield


@pytest.fixture
def rng():
    """A freshly seeded generator per test (reproducible, independent of test order)."""
    return np.random.default_rng(20240607)
