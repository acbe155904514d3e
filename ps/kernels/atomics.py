"""Atomic memory operations for numba kernels (numba has none for array elements).

A parallel probe claims each row it finds by writing the id's position into a per-row word, keeping the
smallest position. With a plain load and store two threads could both see the row unclaimed, both
believe they came first, and the repeat would go unnoticed.
"""
from __future__ import annotations

from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def atomic_compare_exchange(typingctx, arr, i, expected, value):
    """If arr[i] (1-D integer array) equals `expected`, store `value`; either way return what arr[i] held,
    as one atomic step (the store happened iff the result equals `expected`)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and isinstance(arr.dtype, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        cmp = context.cast(builder, args[2], signature.args[2], aryty.dtype)
        val = context.cast(builder, args[3], signature.args[3], aryty.dtype)
        pair = builder.cmpxchg(ptr, cmp, val, "monotonic", "monotonic")
        return builder.extract_value(pair, 0)

    return arr.dtype(arr, i, expected, value), codegen
