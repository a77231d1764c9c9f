"""Explicit SIMD vectors for the jitted CPU kernels (jitted code only).

LLVM's loop vectoriser vectorises innermost loops only, so a loop-written matrix product loads
and stores its output block once per pass of the inner dimension; a BLAS micro-kernel keeps that
block in registers for the whole inner loop. Numba has no vector type, so this module gives one:
:class:`Vector` is an LLVM ``<lanes x float>`` value, and intrinsics load and store such values
(every lane, or the first lanes under a mask), zero them and fuse-multiply-add them. Local
variables of this type stay in registers (they are SSA values, never memory), which is what the
register-blocked product :func:`tattn_numba.exact.cpu._mm_block` is written with.

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


def _load(context, builder, sig, args):
    """Codegen of an unaligned vector load of ``args[0][args[1]:]`` (``sig.return_type`` wide)."""
    pointer = _element_pointer(context, builder, sig.args[0], args[0], args[1])
    vector = context.get_value_type(sig.return_type)
    return builder.load(builder.bitcast(pointer, vector.as_pointer()), align=sig.args[0].dtype.bitwidth // 8)


def _store(context, builder, sig, args):
    """Codegen of an unaligned vector store of ``args[2]`` at ``args[0][args[1]:]``."""
    pointer = _element_pointer(context, builder, sig.args[0], args[0], args[1])
    value_type = context.get_value_type(sig.args[2])
    builder.store(args[2], builder.bitcast(pointer, value_type.as_pointer()), align=sig.args[0].dtype.bitwidth // 8)
    return context.get_dummy_value()


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
        function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector, [vector] * 3),
                                                  f"llvm.fma.v{vector.count}{_suffix(sig.args[0])}")
        return builder.call(function, [broadcast, args[2], args[0]])

    return acc(acc, weight, x), codegen


def _lane_mask(builder, lane_count, count):
    """``<lane_count x i1>``: lane k is on when k < count (an intp)."""
    lanes_vector = ir.Constant(ir.VectorType(count.type, lane_count), [ir.Constant(count.type, k) for k in range(lane_count)])
    broadcast = builder.insert_element(ir.Constant(lanes_vector.type, ir.Undefined), count, ir.Constant(ir.IntType(32), 0))
    broadcast = builder.shuffle_vector(broadcast, ir.Constant(lanes_vector.type, ir.Undefined),
                                       ir.Constant(ir.VectorType(ir.IntType(32), lane_count), None))
    return builder.icmp_signed("<", lanes_vector, broadcast)


@intrinsic
def load_first(typingctx, array, start, count):
    """The :class:`Vector` whose first ``count`` lanes are ``array[start : start + count]`` and
    whose other lanes are 0; memory past ``count`` is not read (an LLVM masked load). ``count``
    None (a type, so decided at compile time) is every lane, a plain unaligned load."""
    if not (_check_float_array(array) and isinstance(count, (types.Integer, types.NoneType))):
        return None
    vector_type = Vector(array.dtype)
    if isinstance(count, types.NoneType):
        return vector_type(array, start, count), _load

    def codegen(context, builder, sig, args):
        vector = context.get_value_type(vector_type)
        pointer = builder.bitcast(_element_pointer(context, builder, sig.args[0], args[0], args[1]), vector.as_pointer())
        mask = _lane_mask(builder, vector.count, context.cast(builder, args[2], sig.args[2], types.intp))
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vector, [vector.as_pointer(), ir.IntType(32), mask.type, vector]),
            f"llvm.masked.load.v{vector.count}{_suffix(vector_type)}.p0")
        return builder.call(function, [pointer, ir.Constant(ir.IntType(32), array.dtype.bitwidth // 8), mask,
                                       ir.Constant(vector, None)])

    return vector_type(array, start, count), codegen


@intrinsic
def store_first(typingctx, array, start, vector, count):
    """``array[start : start + count] = vector[:count]``; memory past ``count`` is not written
    (an LLVM masked store). ``count`` None is every lane, a plain unaligned store."""
    if not (_check_float_array(array) and isinstance(vector, Vector) and vector.dtype == array.dtype
            and isinstance(count, (types.Integer, types.NoneType))):
        return None
    if isinstance(count, types.NoneType):
        return types.void(array, start, vector, count), _store

    def codegen(context, builder, sig, args):
        value_type = context.get_value_type(sig.args[2])
        pointer = builder.bitcast(_element_pointer(context, builder, sig.args[0], args[0], args[1]),
                                  value_type.as_pointer())
        mask = _lane_mask(builder, value_type.count, context.cast(builder, args[3], sig.args[3], types.intp))
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [value_type, value_type.as_pointer(), ir.IntType(32), mask.type]),
            f"llvm.masked.store.v{value_type.count}{_suffix(sig.args[2])}.p0")
        builder.call(function, [args[2], pointer, ir.Constant(ir.IntType(32), array.dtype.bitwidth // 8), mask])
        return context.get_dummy_value()

    return types.void(array, start, vector, count), codegen


def _suffix(vector_type: Vector) -> str:
    return "f64" if vector_type.dtype.bitwidth == 64 else "f32"
