"""Shared test configuration: hypothesis profiles, kernel warm-up, seeded rng, registry params.

Hypothesis profiles (pick one with ``HYPOTHESIS_PROFILE=<name>``; "default" otherwise):

* ``default`` / ``ci``: ``deadline=None`` (first Numba compilation takes seconds), 40 examples.
* ``thorough``: 500 examples, for a long local run.

CUDA. On a machine without an NVIDIA device node (``/dev/nvidia0``) and with
``NUMBA_ENABLE_CUDASIM`` unset, the CUDA implementations run under numba-cuda's simulator, so
every CUDA test is part of the normal run (set ``NUMBA_ENABLE_CUDASIM=0`` to skip them instead).
Under the simulator the launch sizes are tiny (8 threads per block, 2 query rows per block, key
tiles of 3 rows) so that multi-block grids, several key tiles and the in-block reductions run
on test-sized inputs, and the interpreter's thread switch interval is shortened: the simulator
polls its GPU threads in a busy loop that otherwise holds the GIL for 5 ms per barrier (6x
slower).
"""

from __future__ import annotations

import glob
import os
import sys

if "NUMBA_ENABLE_CUDASIM" not in os.environ and not glob.glob("/dev/nvidia[0-9]*"):
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from tattn_numba import _cuda, config



def _share_simulated_shared_memory_safely() -> None:
    """Make the simulator's ``cuda.shared.array`` thread-safe.

    numba-cuda 0.30's simulator hands each block one array per source line, created on first
    request with an unlocked check-then-insert: two GPU threads (Python threads) arriving
    together can each create their own array, after which they no longer share memory and a
    correct kernel computes garbage, now and then (found as a flaky property test). The same
    logic under a lock.
    """
    import threading
    import traceback

    from numba.cuda.simulator import kernelapi

    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if alignment is not None or shape == 0:
            raise RuntimeError("aligned or dynamic shared arrays are not used by tattn_numba")
        if isinstance(dtype, kernelapi.types.Type):
            dtype = kernelapi.numpy_support.as_dtype(dtype)
        caller = traceback.extract_stack(sys._getframe())[-2][0:2]
        with lock:
            found = self._allocations.get(caller)
            if found is None:
                found = self._allocations[caller] = np.empty(shape, dtype)
        return found

    kernelapi.FakeCUDAShared.array = array


if _cuda.simulator_enabled():
    config.CUDA_THREADS_PER_BLOCK = 8
    config.CUDA_QUERY_TILE = 2
    config.CUDA_KEY_TILE = 3
    sys.setswitchinterval(5e-5)
    _share_simulated_shared_memory_safely()

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


def pytest_configure(config):
    # Here rather than in pyproject.toml: naming the warning class imports numba, and numba must
    # not be imported before NUMBA_ENABLE_CUDASIM is settled above.
    config.addinivalue_line("filterwarnings", "error::numba.NumbaPerformanceWarning")


def _gpu_usable() -> bool:
    """True under the CUDA simulator or with a real GPU (evaluated lazily, only for cuda pairs)."""
    try:
        _cuda.require()
    except _cuda.CUDAUnavailableError:
        return False
    return True


def exact_implementation_params():
    """``pytest.param`` objects for every registered ``(method, device)`` with method "exact"."""
    from tattn_numba._registry import available

    params = []
    for method, device in available():
        if method != "exact":
            continue
        marks = ()
        if device == "cuda" and not _gpu_usable():
            marks = (pytest.mark.skip(reason="no usable GPU or numba-cuda, and NUMBA_ENABLE_CUDASIM=0"),)
        params.append(pytest.param({"method": method, "device": device}, id=f"{method}-{device}", marks=marks))
    return params


#: Hypothesis examples per property test for CUDA implementations under the simulator, which
#: runs kernels as Python threads (about a second per example); the CPU keeps the profile's count.
SIMULATOR_EXAMPLES = 3


@pytest.fixture(autouse=True)
def _fewer_examples_under_simulator(request):
    """Cap the hypothesis examples of property tests parametrised with a CUDA ``impl`` while the
    simulator runs. Hypothesis keeps a test's settings on the (shared) test function, so they are
    swapped for the duration of this one parametrised item and restored afterwards."""
    callspec = getattr(request.node, "callspec", None)
    test = getattr(request.node, "obj", None)
    current = getattr(test, "_hypothesis_internal_use_settings", None)
    impl = callspec.params.get("impl") if callspec is not None else None
    if current is None or not isinstance(impl, dict) or impl.get("device") != "cuda" or not _cuda.simulator_enabled():
        yield
        return
    test._hypothesis_internal_use_settings = settings(current, max_examples=min(current.max_examples,
                                                                                 SIMULATOR_EXAMPLES))
    try:
        yield
    finally:
        test._hypothesis_internal_use_settings = current


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
