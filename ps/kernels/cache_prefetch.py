"""Software prefetch for numba kernels that touch rows at random.

Random row reads are memory-latency bound. An out-of-order core keeps only a few rows of an optimizer
step in flight (each row is a hundred-odd instructions), so kernels name the row they will need a few
iterations ahead and the memory system fetches it meanwhile (docs/design-notes.md: what it saves).
"""
from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

ROW_AHEAD = 16
"""Row kernels prefetch the row of the item this many iterations ahead."""


def _emit_prefetch(context, builder, aryty, ary_value, indices) -> None:
    """LLVM's prefetch (read, high locality) of the element at `indices`, missing trailing ones being 0."""
    ary = context.make_array(aryty)(context, builder, ary_value)
    indices = list(indices) + [context.get_constant(types.intp, 0)] * (aryty.ndim - len(indices))
    ptr = cgutils.get_item_pointer(context, builder, aryty, ary, indices, wraparound=False)
    i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                        "llvm.prefetch.p0")
    builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])


@intrinsic
def prefetch(typingctx, arr, row):
    """Hint the CPU to load arr[row, 0] (arr[row] of a 1-D array) into cache."""
    def codegen(context, builder, signature, args):
        _emit_prefetch(context, builder, signature.args[0], args[0], [args[1]])
        return context.get_dummy_value()

    return types.void(arr, row), codegen


@intrinsic
def prefetch_at(typingctx, arr, i, j):
    """Hint the CPU to load arr[i, j] of a 2-D array into cache."""
    def codegen(context, builder, signature, args):
        _emit_prefetch(context, builder, signature.args[0], args[0], [args[1], args[2]])
        return context.get_dummy_value()

    return types.void(arr, i, j), codegen


@njit(nogil=True, cache=True, inline="always")
def prefetch_row(a, r):
    """Every cache line of a[r] of a 2-D array (a row need not start on a line)."""
    dim = a.shape[1]
    per_line = max(1, 64 // a.itemsize)
    for j in range(0, dim, per_line):
        prefetch_at(a, r, j)
    if dim % per_line:
        prefetch_at(a, r, dim - 1)


@njit(nogil=True, cache=True, inline="always")
def row_ahead(rows, i):
    """The row ROW_AHEAD items after item i, or -1 (past the end, or a skipped item)."""
    k = i + ROW_AHEAD
    return rows[k] if k < rows.shape[0] else -1


@njit(nogil=True, cache=True, inline="always")
def prefetch_rows_ahead(rows, i, arrays):
    """Prefetch row_ahead(rows, i) of each array in the tuple `arrays` (2-D arrays of one type and layout)."""
    ra = row_ahead(rows, i)
    if ra >= 0:
        for a in arrays:
            prefetch_row(a, ra)
