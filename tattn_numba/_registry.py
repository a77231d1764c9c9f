"""One table mapping ``(method, device)`` to an implementation.

An implementation is a module-like object exposing

``forward(inputs, *, for_backward, **options) -> (O, lse, certificate, saved)``
    ``inputs`` is a validated :class:`~tattn_numba._validation.AttentionInputs`; ``O`` (B, n, dv)
    and ``lse`` (B, n) are float64; ``lse`` is the natural-log row normaliser
    log Σ_{j1,j2} exp(logit[i, j1, j2]) with the scale inside the logit (for an approximate
    method, the log of its normaliser); ``certificate`` is the error certificate exposed as
    ``AttentionState.certificate`` (None for the exact method, the
    :class:`~tattn_numba.poly.plan.PolyPlan` for the surrogate) and ``saved`` whatever else the
    backward can reuse. ``for_backward`` is False when only the output is wanted
    (:func:`tattn_numba.attention`), so nothing needs saving.
For ``device="cuda"`` the arrays in ``inputs``, ``O``, ``lse`` and the gradients are numba device
arrays, and ``O`` and the gradients may already be in the input dtype.

``backward(inputs, O, lse, certificate, saved, dO) -> (dQ, dK1, dK2, dV1, dV2)``
    takes the forward's float64 ``O``, ``lse``, ``certificate`` and ``saved``; returns
    batch-flattened float64 arrays.
    The public layer casts results to the input dtype.
``OPTIONS``
    the frozenset of keyword options the implementation accepts.

Tests are parametrised over :func:`available`, so a newly registered implementation is tested
the moment it is added.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from . import _cuda

_IMPLEMENTATIONS: dict[tuple[str, str], str] = {
    ("exact", "cpu"): "tattn_numba.exact.cpu",
    ("exact", "cuda"): "tattn_numba.exact.cuda",
    ("poly", "cpu"): "tattn_numba.poly.cpu",
    ("poly", "cuda"): "tattn_numba.poly.cuda",
}

# Each device's array operations for the public layer (validate, move, cast, fingerprint, return).
_ARRAY_OPS: dict[str, str] = {
    "cpu": "tattn_numba._host",
    "cuda": "tattn_numba._device",
}

METHODS = frozenset(method for method, _ in _IMPLEMENTATIONS)
DEVICES = frozenset(_ARRAY_OPS)


def available() -> list[tuple[str, str]]:
    """Registered ``(method, device)`` pairs, in a stable order."""
    return sorted(_IMPLEMENTATIONS)


def _check_device(device) -> None:
    if not isinstance(device, str):
        raise TypeError(f"device must be a string, got {type(device).__name__}")
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; expected one of {sorted(DEVICES)}")
    if device == "cuda":
        _cuda.require()


def array_ops(device):
    """The array operations of ``device`` (:class:`tattn_numba._host.HostArrays` or
    :class:`tattn_numba._device.CudaArrays`): what the public layer calls instead of branching
    on the device. CUDA's are imported only after :func:`tattn_numba._cuda.require`."""
    _check_device(device)
    return importlib.import_module(_ARRAY_OPS[device]).OPS


def lookup(method, device) -> ModuleType:
    """Return the implementation for ``(method, device)`` or raise a clear error.

    CUDA implementations are imported only here, after :func:`tattn_numba._cuda.require` has
    checked for numba-cuda and a GPU (raising :class:`~tattn_numba._cuda.CUDAUnavailableError`).
    """
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {type(method).__name__}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)}")
    _check_device(device)
    key = (method, device)
    if key not in _IMPLEMENTATIONS:
        raise ValueError(f"method={method!r} is not implemented for device={device!r}")
    return importlib.import_module(_IMPLEMENTATIONS[key])


def check_options(impl: ModuleType, method: str, options: dict) -> dict:
    """Reject keyword options the implementation does not know."""
    unknown = sorted(set(options) - impl.OPTIONS)
    if unknown:
        known = ", ".join(sorted(impl.OPTIONS)) or "none"
        raise TypeError(f"unknown option(s) {unknown} for method={method!r}; accepted options: {known}")
    return options
