"""The one module that imports ``numba.cuda``.

Everything CUDA in the package goes through here, so that ``import tattn_numba`` never touches
the CUDA machinery, a missing package or GPU becomes one clear :class:`CUDAUnavailableError`,
and moving to another CUDA target (numba-cuda is in maintenance mode; its MLIR successor has no
simulator) is an edit of this file.

Under ``NUMBA_ENABLE_CUDASIM=1`` numba-cuda's simulator runs the same kernels on the CPU, one
Python thread per GPU thread; the test suite uses it on machines without a GPU.
"""

from __future__ import annotations

import os
from types import ModuleType

__all__ = ["CUDAUnavailableError", "simulator_enabled", "cuda", "require", "is_device_array", "as_device_array"]


class CUDAUnavailableError(RuntimeError):
    """``device="cuda"`` was requested but numba-cuda or a usable NVIDIA GPU is missing."""


_module: ModuleType | None = None


def simulator_enabled() -> bool:
    """Whether numba-cuda runs its CPU simulator (``NUMBA_ENABLE_CUDASIM`` set and not 0)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def cuda() -> ModuleType:
    """``numba.cuda`` from the numba-cuda distribution, imported on first use.

    Raises
    ------
    CUDAUnavailableError
        numba-cuda is not installed (numba's own, retired CUDA target does not count).
    """
    global _module
    if _module is None:
        # Small grids are normal for small problems; the warning would only be noise.
        os.environ.setdefault("NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS", "0")
        try:
            from numba import cuda as module  # the only numba.cuda import of the package
        except ImportError as exc:
            raise CUDAUnavailableError(
                "device='cuda' needs the numba-cuda package, which is not installed "
                "(pip install 'tattn-numba[cuda]')"
            ) from exc
        if "numba_cuda" not in (getattr(module, "__file__", "") or ""):
            raise CUDAUnavailableError(
                "device='cuda' needs the numba-cuda package (0.30.x); numba's built-in CUDA target "
                f"was found instead at {module.__file__} (pip install 'tattn-numba[cuda]')"
            )
        _module = module
    return _module


def require() -> ModuleType:
    """``numba.cuda`` when a GPU (or the simulator) is usable, else a clear error.

    Raises
    ------
    CUDAUnavailableError
        numba-cuda is missing, or no NVIDIA GPU with a working driver was found.
    """
    module = cuda()
    if not module.is_available():
        raise CUDAUnavailableError(
            "device='cuda' needs an NVIDIA GPU with a working driver, and numba-cuda found none "
            "(numba.cuda.is_available() is False; `python -m numba -s` says why). To run the CUDA "
            "code paths on the CPU for testing, set NUMBA_ENABLE_CUDASIM=1 before the first CUDA call."
        )
    return module


def is_device_array(x) -> bool:
    """True for GPU arrays: numba device arrays, or anything exposing ``__cuda_array_interface__``
    (CuPy arrays, CUDA PyTorch tensors); under the simulator, its fake device arrays."""
    try:
        if hasattr(x, "__cuda_array_interface__"):
            return True
    except Exception:  # noqa: BLE001 - e.g. a CUDA PyTorch tensor that requires grad refuses the interface
        return True
    if simulator_enabled() and _module is not None:
        return isinstance(x, _module.simulator.cudadrv.devicearray.FakeCUDAArray)
    return False


def as_device_array(x):
    """A numba device array viewing the same GPU memory as ``x`` (no copy)."""
    module = require()
    if simulator_enabled():
        return x
    return module.as_cuda_array(x)
