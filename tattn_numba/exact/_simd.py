"""Explicit SIMD vectors for the jitted CPU kernels (jitted code only).

LLVM's loop vectoriser vectorises innermost loops only, so a loop-written matrix product loads
and stores its output block once per pass of the inner dimension; a BLAS micro-kernel keeps that
block in registers for the whole inner loop. Numba has no vector type, so this module gives one:
:class:`Vector` is an LLVM ``<lanes x float>`` value, and six intrinsics load, store, zero and
fuse-multiply-add such values. Local variables of this type stay in registers (they are SSA
values, never memory), which is what the register-blocked product
:func:`tattn_numba.exact.cpu._mm_block` is written with.

The width is :data:`VECTOR_BYTES`, chosen so that that micro-kernel's eight accumulators take
half the vector register file: 128 bytes (two 512-bit registers per value, 16 float64 or 32
float32 lanes) where the compile target has AVX-512 and its 32 registers, 32 bytes (one register)
on other x86-64 CPUs (AVX2, 16 registers), 16 bytes elsewhere. It is a property of the compile
target, which Numba's on-disk cache is keyed on, so cached kernels never mix widths.

Loads and stores are unaligned and index without Numba's negative-index wraparound: callers pass
non-negative offsets that lie inside the array (there is no bounds check). A cached kernel does
not notice a change to this module (Numba's cache tracks the kernel's own file); CI starts with
an empty cache.
"""

from __future__ import annotations

import platform

from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba.core import cgutils, types
from numba.core import config as numba_config
from numba.core.datamodel import models, register_default
from numba.extending import intrinsic


def _target_vector_bytes() -> int:
    """Bytes of one :class:`Vector` for the CPU Numba compiles for (see the module docstring)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return 16
    features = numba_config.CPU_FEATURES  # what Numba compiles for: NUMBA_CPU_FEATURES, else the host's
    if features is None:
        features = llvm_binding.get_host_cpu_features().flatten()
    return 128 if "+avx512f" in features.split(",") else 32


#: Bytes per :class:`Vector`: 128 with AVX-512 (two registers), 32 with AVX2, 16 on other CPUs.
VECTOR_BYTES = _target_vector_bytes()


class Vector(types.Type):
    """``lanes`` elements of ``dtype`` held as one LLVM vector value."""

    def __init__(self, dtype: types.Float):
        self.dtype = dtype
        self.lanes = VECTOR_BYTES // (dtype.bitwidth // 8)
        super().__init__(name=f"Vector({dtype}, {self.lanes})")


@register_default(Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.lanes))


def _element_pointer(context, builder, array_type, array, index):
    """Pointer to ``array[index]`` (a C-contiguous one-dimensional array), no wraparound."""
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [index])


def _check_float_array(array):
    return isinstance(array, types.Array) and array.ndim == 1 and isinstance(array.dtype, types.Float)


@intrinsic
def lanes(typingctx, like):
    """Lanes of a :class:`Vector` of ``like``'s element type (a compile-time constant)."""
    if not _check_float_array(like):
        return None
    count = Vector(like.dtype).lanes

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, count)

    return types.intp(like), codegen


@intrinsic
def load(typingctx, array, start):
    """The :class:`Vector` ``array[start : start + lanes]`` (unaligned, no bounds check)."""
    if not _check_float_array(array):
        return None
    vector_type = Vector(array.dtype)

    def codegen(context, builder, sig, args):
        pointer = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        vector = context.get_value_type(vector_type)
        return builder.load(builder.bitcast(pointer, vector.as_pointer()), align=array.dtype.bitwidth // 8)

    return vector_type(array, start), codegen


@intrinsic
def store(typingctx, array, start, vector):
    """``array[start : start + lanes] = vector`` (unaligned, no bounds check)."""
    if not (_check_float_array(array) and isinstance(vector, Vector) and vector.dtype == array.dtype):
        return None

    def codegen(context, builder, sig, args):
        pointer = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        value_type = context.get_value_type(sig.args[2])
        builder.store(args[2], builder.bitcast(pointer, value_type.as_pointer()), align=array.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.void(array, start, vector), codegen


@intrinsic
def element(typingctx, array, index):
    """``array[index]`` without the negative-index wraparound test (no bounds check)."""
    if not _check_float_array(array):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_element_pointer(context, builder, sig.args[0], args[0], args[1]))

    return array.dtype(array, index), codegen


@intrinsic
def zeros(typingctx, like):
    """A :class:`Vector` of zeros of ``like``'s element type."""
    if not _check_float_array(like):
        return None
    vector_type = Vector(like.dtype)

    def codegen(context, builder, sig, args):
        return ir.Constant(context.get_value_type(vector_type), None)

    return vector_type(like), codegen


@intrinsic
def fma(typingctx, acc, weight, x):
    """``acc + weight · x`` lane by lane, one rounding (LLVM ``llvm.fma``), ``weight`` a scalar
    broadcast to every lane (converted to the vector's element type)."""
    if not (isinstance(acc, Vector) and acc == x and isinstance(weight, (types.Float, types.Integer))):
        return None

    def codegen(context, builder, sig, args):
        vector = context.get_value_type(sig.args[0])
        scalar = context.cast(builder, args[1], sig.args[1], sig.args[0].dtype)
        broadcast = builder.insert_element(ir.Constant(vector, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
        broadcast = builder.shuffle_vector(broadcast, ir.Constant(vector, ir.Undefined),
                                           ir.Constant(ir.VectorType(ir.IntType(32), vector.count), None))
        suffix = "f64" if sig.args[0].dtype.bitwidth == 64 else "f32"
        function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector, [vector] * 3),
                                                  f"llvm.fma.v{vector.count}{suffix}")
        return builder.call(function, [broadcast, args[2], args[0]])

    return acc(acc, weight, x), codegen
