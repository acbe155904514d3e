"""Atomic memory operations for numba kernels (numba has none for array elements).

A parallel probe claims each row it finds by swapping a marker into a per-row word: the one thread that
gets the previous value back owns the row, every other occurrence of the id sees the marker and knows it
is a repeat. Plain load + store would let two threads both see the old value and both believe they came
first.
"""
from __future__ import annotations

from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def atomic_exchange(typingctx, arr, i, value):
    """Store `value` into arr[i] of a 1-D integer array and return what was there, as one atomic step."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and isinstance(arr.dtype, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        val = context.cast(builder, args[2], signature.args[2], aryty.dtype)
        return builder.atomic_rmw("xchg", ptr, val, "monotonic")

    return arr.dtype(arr, i, value), codegen
