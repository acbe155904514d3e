"""float32 ⇄ float16 conversion kernels for the float16 transport of lookups.

numba has no CPU float16 arrays and numpy converts in software (slower than the lookup itself for a
large reply, docs/design-notes.md), so float16 data is handled as its uint16 bits and
converted by LLVM's `fptrunc`/`fpext` (IEEE round-to-nearest-even, as numpy; F16C instructions where
the CPU has them).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

_PARALLEL = dict(nogil=True, cache=True, error_model="numpy", parallel=True)


@intrinsic
def _half_bits(typingctx, x):
    """float32 → the uint16 bits of the nearest float16."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.uint16(types.float32), codegen


@intrinsic
def _from_half_bits(typingctx, bits):
    """uint16 bits of a float16 → float32 (exact)."""
    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


@njit(**_PARALLEL)
def _narrow(src, dst_bits):
    for i in prange(src.shape[0]):
        for j in range(src.shape[1]):
            dst_bits[i, j] = _half_bits(src[i, j])


@njit(**_PARALLEL)
def _widen(src_bits, dst):
    for i in prange(src_bits.shape[0]):
        for j in range(src_bits.shape[1]):
            dst[i, j] = _from_half_bits(src_bits[i, j])


def to_float16(src: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """A 2-D float32 array as float16 (into `out` when given: C-contiguous, same shape)."""
    out = np.empty(src.shape, np.float16) if out is None else out
    if src.size:
        _narrow(np.ascontiguousarray(src, np.float32), out.view(np.uint16))
    return out


def to_float32(src: np.ndarray) -> np.ndarray:
    """A 2-D float16 array (possibly a read-only view of received bytes) as a new float32 array."""
    out = np.empty(src.shape, np.float32)
    if src.size:
        _widen(np.ascontiguousarray(src).view(np.uint16), out)
    return out
