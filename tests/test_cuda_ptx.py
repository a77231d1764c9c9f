"""Every CUDA kernel of the package compiles for a real GPU (PTX for sm_90, H100), without a GPU.

The rest of the suite runs the CUDA kernels under numba-cuda's simulator, which executes them as
Python and so never types or lowers them for a device: a variable that changes type, an
unsupported function or a shared-array shape that is not a compile-time constant passes there
and fails on the first real launch. Here ``tests/_ptx_compile.py`` compiles each kernel with
NVVM (numba-cuda[cu13]), with the argument types its driver passes, for float32 and float64
inputs, in one subprocess without ``NUMBA_ENABLE_CUDASIM`` (this session runs under the
simulator). The tests skip when NVVM/NVRTC/libdevice cannot be loaded; a kernel that does not
compile fails its test with the compiler's message.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

_HELPER = Path(__file__).with_name("_ptx_compile.py")
_spec = importlib.util.spec_from_file_location("_ptx_compile", _HELPER)
ptx_compile = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ptx_compile)  # plain data: numba is imported only in the subprocess

CASES = {case.id: case for case in ptx_compile.CASES}


@pytest.fixture(scope="module")
def compiled() -> dict:
    """Run the compiler subprocess once; its records by kind (cases by id)."""
    env = {key: value for key, value in os.environ.items()
           if key != "NUMBA_ENABLE_CUDASIM" and not key.startswith("TATTN_NUMBA_CUDA_")}
    try:
        proc = subprocess.run([sys.executable, str(_HELPER)], cwd=_HELPER.parent.parent, env=env,
                              capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"compiling the CUDA kernels to PTX took over {exc.timeout} s")
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    unavailable = [r for r in records if r["record"] == "unavailable" and "id" not in r]
    if unavailable:
        pytest.skip(unavailable[0]["reason"])
    if proc.returncode != 0 or not any(r["record"] == "inventory" for r in records):
        pytest.fail(f"the PTX compiler subprocess failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return {
        "cases": {r["id"]: r for r in records if "id" in r},
        "inventory": next(r for r in records if r["record"] == "inventory"),
    }


def _result(compiled: dict, case_id: str) -> dict:
    record = compiled["cases"].get(case_id)
    if record is None:
        pytest.fail(f"{case_id}: no result from the compiler subprocess")
    if record["record"] == "unavailable":
        pytest.skip(f"{case_id}: CUDA toolchain unavailable: {record['reason']}")
    return record


@pytest.mark.parametrize("case_id", list(CASES))
def test_kernel_compiles_for_sm90(compiled, case_id):
    record = _result(compiled, case_id)
    if not record["ok"]:
        pytest.fail(f"{case_id} ({record['target']}, {record['signature']}) does not compile for sm_90:\n"
                    f"{record['error']}\n{record.get('traceback', '')}", pytrace=False)


@pytest.mark.parametrize("case_id", [case.id for case in ptx_compile.CASES if case.check_local])
def test_register_arrays_stay_in_registers(compiled, case_id):
    """At d = dv = 16 (and the small 3/2) the exact kernels' per-thread arrays (cuda.local.array)
    are promoted to registers: no ``.local`` memory in the PTX. (At d = dv = 64 they are not.)

    Not asserted: ptxas' own spills. With numba-cuda 0.30.4 / CUDA 13 the d = dv = 16 forward
    uses 168 registers and no stack, but the backward hits the 255-register cap and spills a few
    bytes (12 B stores and loads, 16 B stack frame); the records carry these numbers (``ptxas``)."""
    record = _result(compiled, case_id)
    if not record["ok"]:
        pytest.skip("does not compile (reported by test_kernel_compiles_for_sm90)")
    assert not record["local"], (
        f"{case_id}: the PTX uses .local memory (register arrays not promoted); ptxas: {record.get('ptxas')}")


def test_every_kernel_is_covered(compiled):
    """A new kernel, kernel factory or device function in the four kernel modules must get a case
    in tests/_ptx_compile.py (device functions: be called by a compiled kernel)."""
    inventory = compiled["inventory"]
    covered = set(inventory["covered"])
    missing = [name for name in inventory["kernels"] + inventory["factories"] if name not in covered]
    missing += [name for name in inventory["device_functions"] if name not in inventory["reached_device_functions"]]
    assert not missing, f"CUDA kernels without a compile case in tests/_ptx_compile.py: {missing}"
    # and the inventory itself is not empty (a broken enumeration would pass vacuously)
    assert inventory["kernels"] and inventory["factories"] and inventory["device_functions"]
