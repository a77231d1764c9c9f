"""Compile every CUDA kernel of tattn_numba to PTX for a real GPU, without a GPU.

Used by ``tests/test_cuda_ptx.py``, which runs ``python tests/_ptx_compile.py`` in a subprocess
with ``NUMBA_ENABLE_CUDASIM`` removed: the simulator runs kernels as Python and never types or
lowers them for a device, so typing errors (a variable that changes type, an unsupported call, a
shared-array shape that is not a compile-time constant) only show up here. NVVM and NVRTC (the
``numba-cuda[cu13]`` wheels) are enough; no driver or device is needed.

This module is plain data at import time (the test reads :data:`CASES` for its test ids); only
:func:`main` imports numba. Each case is one kernel with the exact argument types its driver
passes (every device array the drivers hand over, slices included, is C-contiguous, so typed
``[..., ::1]``; see the comments). Output: one JSON object per line, ``record`` being

* ``"unavailable"``: NVVM/NVRTC/libdevice could not be loaded (the test skips);
* ``"inventory"``: the module-level CUDA dispatchers and kernel factories of the four kernel
  modules, and which of them the cases cover (the test fails on an uncovered one);
* ``"case"``: ``id``, ``ok``, ``error``, ``local`` (whether the PTX uses ``.local`` memory),
  ``ptx_bytes``, ``seconds``, and for the exact kernels ``ptxas`` (registers, stack frame and
  spill bytes from linking the PTX for sm_90 with nvJitLink, or an ``error``).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import NamedTuple

#: Compute capability compiled for (H100).
CC = (9, 0)

KERNEL_MODULES = (
    "tattn_numba._device",
    "tattn_numba.exact.cuda",
    "tattn_numba.poly._cuda_gemm",
    "tattn_numba.poly._cuda_kernels",
)


class Case(NamedTuple):
    id: str
    target: str  # "module:attribute", a dispatcher or a kernel factory
    factory_args: tuple | None  # arguments of the factory, None for a module-level kernel
    signature: str
    check_local: bool = False  # assert that the PTX has no .local memory


def _cases() -> list[Case]:
    cases: list[Case] = []
    dev, exact = "tattn_numba._device", "tattn_numba.exact.cuda"
    gemm, poly = "tattn_numba.poly._cuda_gemm", "tattn_numba.poly._cuda_kernels"
    f1, f2, f3 = "float64[::1]", "float64[:, ::1]", "float64[:, :, ::1]"
    i1 = "int64[::1]"

    # --- _device: the public layer (_validation, attention) on the inputs' dtype, and the poly
    # driver on its float64 operands.
    for dt in ("float32", "float64"):
        x1, x2, x3 = f"{dt}[::1]", f"{dt}[:, ::1]", f"{dt}[:, :, ::1]"
        # all_finite(x): x.reshape(x.size) of a validated (C-contiguous) input, dO or cast result.
        cases.append(Case(f"_device._count_non_finite[{dt}]", f"{dev}:_count_non_finite", None,
                          f"void({x1}, {i1})"))
        # column_extrema(X): exact on the inputs (B, n, d), poly on float64 casts; lo, hi X.dtype.
        cases.append(Case(f"_device._column_extrema_kernel[{dt}]", f"{dev}:_column_extrema_kernel", None,
                          f"void({x3}, {x2}, {x2})"))
    # cast(x, dtype): float32 inputs/dO to float64 (poly operands), float64 results to float32
    # (cast_result); float64 -> float64 returns x without a launch.
    cases.append(Case("_device._cast_kernel[float32->float64]", f"{dev}:_cast_kernel", None,
                      "void(float32[::1], float64[::1])"))
    cases.append(Case("_device._cast_kernel[float64->float32]", f"{dev}:_cast_kernel", None,
                      "void(float64[::1], float32[::1])"))
    # device_zeros(shape) (float64 only), filled with the Python int 0.
    cases.append(Case("_device._fill_kernel[float64]", f"{dev}:_fill_kernel", None, f"void({f1}, float64)"))
    for dt in ("float32", "float64"):
        # row_dots(dO (input dtype), O (float64)) -> delta; the surrogate passes float64 for both.
        cases.append(Case(f"_device._row_dots_kernel[{dt}]", f"{dev}:_row_dots_kernel", None,
                          f"void({dt}[:, :, ::1], {f3}, {f2})"))
    for dt in ("float32", "float64"):
        x3 = f"{dt}[:, :, ::1]"
        # take_batches(Q, index) of a broadcast Q; right_multiply(x, lift matrix) of the logit
        # forms (Q, K1, K2 in the input dtype and the float64 gradients).
        cases.append(Case(f"_device._take_batches_kernel[{dt}]", f"{dev}:_take_batches_kernel", None,
                          f"void({x3}, {i1}, {x3})"))
        cases.append(Case(f"_device._right_multiply_kernel[{dt}]", f"{dev}:_right_multiply_kernel", None,
                          f"void({x3}, {f2}, {x3})"))
    # sum_batches(dQ, index, count): the float64 gradient of a broadcast Q.
    cases.append(Case("_device._sum_batches_kernel", f"{dev}:_sum_batches_kernel", None, f"void({f3}, {i1}, {f3})"))
    # fingerprint(x): the input's words, x.reshape(x.size).view(uint32).
    cases.append(Case("_device._fingerprint_kernel", f"{dev}:_fingerprint_kernel", None,
                      "void(uint32[::1], uint64[::1])"))

    # --- exact.cuda: inputs and dO in the input dtype (B, n, ·) C-contiguous; O, lse, delta and
    # the gradients float64; scale a Python float, causal and write_dq Python bools, the mask
    # widths Python ints (Mask.kernel_args), key_batch a device copy of HeadLayout.key_batch. Launch shape
    # from _launch_shape(d, dv) with the default config (128 threads, 4 query rows, key tile 64),
    # so e.g. (d, dv) = (16, 16) -> (128, 4, 32, 64) and (64, 64) -> (128, 4, 32, 32) in float64, (128, 4, 32, 64) in float32.
    # The factories take (d, dv, compute, threads, query_tile, lanes, key_tile), compute the working
    # precision: float32 inputs run the float32 kernels (or the float64 ones when their products
    # could overflow float32), float64 inputs the float64 ones; main() checks that the launch shape
    # equals _launch_shape(d, dv, itemsize of compute).
    for d, dv in ((16, 16), (64, 64), (3, 2)):
        for dt, compute in (("float32", "float32"), ("float32", "float64"), ("float64", "float64")):
            itemsize = 4 if compute == "float32" else 8
            args = (d, dv, compute, 128, 4, 32, min(64, 32 * 1024 // (itemsize * (d + dv))))
            x3 = f"{dt}[:, :, ::1]"
            tag = f"d={d},dv={dv},{dt},compute={compute}"
            small = (d, dv) == (16, 16)
            cases.append(Case(f"exact.cuda._forward_kernel[{tag}]", f"{exact}:_forward_kernel", args,
                              f"void({x3}, {x3}, {x3}, {x3}, {x3}, {i1}, float64, boolean, int64, int64, {f3}, {f2})", small))
            cases.append(Case(f"exact.cuda._backward_kernel[{tag}]", f"{exact}:_backward_kernel", args,
                              f"void({x3}, {x3}, {x3}, {x3}, {x3}, {i1}, {x3}, {f2}, {f2}, float64, boolean, int64, int64, boolean, "
                              f"{f3}, {f3}, {f3})", small))

    # --- poly._cuda_gemm: the driver passes whole C-contiguous float64 arrays (U^T, summaries,
    # [c | X | c·Y | X⊙Y] blocks, fresh outputs); gemm() documents any strides, so 'A' too.
    for tile in (16, 32):
        cases.append(Case(f"poly._cuda_gemm._tiled_product[tile={tile}]", f"{gemm}:_tiled_product", (tile,),
                          f"void({f2}, {f2}, {f2}, boolean, boolean, boolean)"))
    cases.append(Case("poly._cuda_gemm._tiled_product[tile=16,any-layout]", f"{gemm}:_tiled_product", (16,),
                      "void(float64[:, :], float64[:, :], float64[:, :], boolean, boolean, boolean)"))

    # --- poly._cuda_kernels: everything float64 (operands cast first). Slices the driver passes
    # (O[b, rows], v.Qt[b, rows], v.coefficients[b, rows], v.ones[rows], delta[b, rows], P2[index],
    # g[b, rows]) take whole trailing rows of C-contiguous arrays, so they are C-contiguous too
    # (numba-cuda types a device array 'C' from its actual strides).
    poly_sigs = {
        "_query_row_sums": f"void({f3}, {f2}, {f2}, {f2})",
        "_max_row_fourth_powers": f"void({f3}, {f1})",
        "_scale_rows_and_columns": f"void({f3}, {f2}, {f2}, {f3})",
        # X, coefficients, parent, var, degree (int64), multinomial (float64), weighted, outT
        "_monomials": f"void({f2}, {f2}, {i1}, {i1}, {i1}, {f1}, boolean, {f2})",
        "_fill_columns": f"void({f1}, {f2}, {f2}, {f2})",
        "_hadamard_columns": f"void({f2}, {f2}, {i1}, {f2})",
        "_normalise": f"void({f2}, {f2}, {f1}, {i1})",
        "_query_gradient_rows": f"void({f2}, {f2}, {f1}, float64, {f1}, {f2}, {i1})",
        "_divide_columns": f"void({f2}, {f1})",
        "_key_gradient_rows": f"void({f2}, {f2}, float64, {f2}, {f2})",
        "_causal_forward_scan": f"void({', '.join([f2] * 9)}, boolean)",
        # U1T, U2T, c2, U3T, c3, Q, dO, delta, V1, V2, scale, P2, P3, GS2, GS3, Y1, Y2, Z1, Z2,
        # partial, dQ, dK1, dK2, dV1, dV2
        "_causal_backward_scan": f"void({', '.join([f2] * 7)}, {f1}, {f2}, {f2}, float64, {', '.join([f2] * 14)})",
        # c0, w1, w2 (int64), carry1, carry2, base (int64), U1T, U2T, c2, U3T, c3, P2, P3, partial, out
        "_window_forward_scan": f"void(int64, int64, int64, boolean, boolean, int64, {', '.join([f2] * 9)})",
        # c0, e, top, w1, w2, base (int64), U1T, U2T, c2, U3T, c3, Q[b], dO[b], delta[b], V1[kb], V2[kb],
        # scale, states (6, width, r), GS2, GS3, Y1, Y2, Z1, Z2, partial, dQ[b], dK1, dK2, dV1, dV2
        "_window_backward_chunk": (f"void({', '.join(['int64'] * 6)}, {', '.join([f2] * 7)}, {f1}, {f2}, {f2}, "
                                   f"float64, {f3}, {', '.join([f2] * 12)})"),
    }
    for name, sig in poly_sigs.items():
        cases.append(Case(f"poly._cuda_kernels.{name}", f"{poly}:{name}", None, sig))
    return cases


CASES = _cases()


# ------------------------------------------------------------------------------------------------
# Everything below runs in the subprocess only.


def _emit(**record) -> None:
    print(json.dumps(record), flush=True)


def _toolchain_missing(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says NVVM, NVRTC or libdevice could not be loaded."""
    from numba.cuda.cudadrv.error import NvrtcSupportError, NvvmSupportError

    missing: tuple = (NvvmSupportError, NvrtcSupportError)
    try:
        import cuda.pathfinder as pathfinder

        missing += tuple(getattr(pathfinder, name) for name in (
            "DynamicLibNotFoundError", "DynamicLibNotAvailableError", "DynamicLibUnknownError",
            "BitcodeLibNotFoundError") if hasattr(pathfinder, name))
    except ImportError:
        pass
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, missing):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _describe(exc: BaseException, limit: int = 4000) -> str:
    text = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"
    return text if len(text) <= limit else text[:limit] + " [...]"


def _ptxas_info(ptx: str) -> dict:
    """Registers, stack frame and spills of the PTX's kernel as ptxas reports them (through
    nvJitLink, also part of numba-cuda[cu13]); ``{"error": ...}`` when that is unavailable."""
    import re

    try:
        from cuda.bindings import nvjitlink

        handle = nvjitlink.create(2, [f"-arch=sm_{CC[0]}{CC[1]}", "-verbose"])
        try:
            data = ptx.encode()
            nvjitlink.add_data(handle, nvjitlink.InputType.PTX, data, len(data), "kernel.ptx")
            nvjitlink.complete(handle)
            log = bytearray(nvjitlink.get_info_log_size(handle))
            nvjitlink.get_info_log(handle, log)
        finally:
            nvjitlink.destroy(handle)
    except Exception as exc:  # noqa: BLE001 - optional: the PTX check stands without it
        return {"error": _describe(exc, 600)}
    text = log.decode(errors="replace")
    frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", text)
    registers = re.search(r"Used (\d+) registers", text)
    if frame is None or registers is None:
        return {"error": f"unexpected ptxas log: {text[:600]}"}
    stack, stores, loads = map(int, frame.groups())
    return {"registers": int(registers.group(1)), "stack": stack, "spill_stores": stores, "spill_loads": loads}


def main() -> int:
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        raise SystemExit("run without NUMBA_ENABLE_CUDASIM: the simulator compiles nothing")
    for key in [key for key in os.environ if key.startswith("TATTN_NUMBA_CUDA_")]:
        del os.environ[key]  # the default launch configuration, which the cases spell out
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)

    try:
        import numba.cuda.dispatcher as dispatcher_module
        from numba import cuda
    except ImportError as exc:
        _emit(record="unavailable", reason=f"numba-cuda cannot be imported: {_describe(exc)}")
        return 0

    # Compile only, no device: typing a kernel that calls @cuda.jit(device=True) functions asks
    # for the current device's compute capability, and the modules' require() wants a GPU.
    import types

    dispatcher_module.get_current_device = lambda: types.SimpleNamespace(compute_capability=CC)
    import tattn_numba._cuda as shim

    shim.require = shim.cuda

    # The toolchain itself: a trivial kernel must compile, or nothing can be checked here.
    def _probe(x):
        x[0] = 1.0

    try:
        cuda.compile_ptx(_probe, "void(float64[::1])", cc=CC)
    except Exception as exc:  # noqa: BLE001 - classified below
        if _toolchain_missing(exc):
            _emit(record="unavailable", reason=f"NVVM/NVRTC/libdevice not found: {_describe(exc, 600)}")
            return 0
        raise

    import importlib
    import inspect

    modules = {name: importlib.import_module(name) for name in KERNEL_MODULES}
    Dispatcher = dispatcher_module.CUDADispatcher

    # Inventory: dispatchers (kernels and device functions) and kernel factories, i.e. module
    # functions whose source contains a nested @cuda.jit.
    kernels, device_functions, factories = [], [], []
    for modname, module in modules.items():
        for attr, obj in vars(module).items():
            target = f"{modname}:{attr}"
            if isinstance(obj, Dispatcher):
                if getattr(obj.py_func, "__module__", None) != modname:
                    continue
                (device_functions if obj.targetoptions.get("device") else kernels).append(target)
            elif callable(obj) and getattr(inspect.unwrap(obj), "__module__", None) == modname:
                func = inspect.unwrap(obj)
                if inspect.isfunction(func):
                    try:
                        source = inspect.getsource(func)
                    except (OSError, TypeError):
                        continue
                    if "cuda.jit" in source:
                        factories.append(target)

    covered_names: set[str] = set()  # global names the compiled kernels refer to
    covered_targets: set[str] = set()
    for case in CASES:
        start = time.perf_counter()
        record = dict(record="case", id=case.id, target=case.target, signature=case.signature,
                      check_local=case.check_local, ok=False, error=None, local=None, ptx_bytes=None)
        try:
            modname, attr = case.target.split(":")
            obj = getattr(modules[modname], attr)
            if case.target.startswith("tattn_numba.exact.cuda:_") and case.factory_args is not None:
                d, dv, compute = case.factory_args[:3]
                itemsize = 4 if compute == "float32" else 8
                expected = tuple(modules[modname]._launch_shape(d, dv, itemsize))
                if tuple(case.factory_args[3:]) != expected:
                    raise AssertionError(f"the case's launch shape {case.factory_args[3:]} is not "
                                         f"_launch_shape({d}, {dv}, {itemsize}) = {expected}: update tests/_ptx_compile.py")
            kernel = obj(*case.factory_args) if case.factory_args is not None else obj
            covered_targets.add(case.target)
            covered_names.update(f"{modname}:{name}" for name in kernel.py_func.__code__.co_names)
            ptx, _ = cuda.compile_ptx(kernel.py_func, case.signature, cc=CC,
                                      fastmath=kernel.targetoptions.get("fastmath", False),
                                      lineinfo=kernel.targetoptions.get("lineinfo", False))
            record.update(ok=True, local=".local" in ptx, ptx_bytes=len(ptx))
            if case.factory_args is not None and case.target.startswith("tattn_numba.exact.cuda:"):
                record["ptxas"] = _ptxas_info(ptx)  # the register-array kernels
        except Exception as exc:  # noqa: BLE001 - every failure is reported, per kernel
            if _toolchain_missing(exc):
                record.update(record="unavailable", reason=_describe(exc, 600))
            else:
                record.update(error=_describe(exc), traceback=traceback.format_exc(limit=-3)[-2000:])
        record["seconds"] = round(time.perf_counter() - start, 3)
        _emit(**record)

    # Device functions count as covered when a compiled kernel calls them (transitively).
    reached, frontier = set(), covered_names & set(device_functions)
    while frontier:
        reached |= frontier
        calls = set()
        for target in frontier:
            modname, attr = target.split(":")
            calls.update(f"{modname}:{name}" for name in getattr(modules[modname], attr).py_func.__code__.co_names)
        frontier = (calls & set(device_functions)) - reached
    _emit(record="inventory", kernels=sorted(kernels), factories=sorted(factories),
          device_functions=sorted(device_functions), covered=sorted(covered_targets),
          reached_device_functions=sorted(reached))
    return 0


if __name__ == "__main__":
    sys.exit(main())
