r"""Software prefetch for the memory-bound time loops.

A time loop over a (T, B, ·) array, cut into blocks of batch rows (runtime rule (e)), reads and writes at step t one
contiguous stretch per array — the block's rows of step t, e.g. 16 rows × 256 complex64 = 32 KiB — and then jumps
past the other blocks' rows to step t + 1. The CPU's own prefetcher follows a stream within one 4 KiB page only, so
each of those pages starts cold. prefetch_write asks for the NEXT step's stretch while this step is computed
(llvm.prefetch: a hint, never a fault, nothing when the CPU lacks the instruction): the LRU's scan with two blocks ran
at 2.3–2.5 ms without it and 1.8 ms with it, against 2.2–2.3 ms for np.copyto of the same bytes
(docs/bench/profile-cpus.md). The same hint before the LRU's adjoint pass and the LSTM's forward pass (each
reading and writing several such stretches per step) measured no faster, so only the scan uses it.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

#: Bytes of one cache line (64 on every x86-64 and most ARM cores; 128 on Apple's, where every other line is a
#: second hint to the same line — harmless).
LINE = 64


@intrinsic
def _write_hint(typingctx, flat, offset):
    """Hint that element `offset` of the 1-D array `flat` will soon be written (llvm.prefetch, rw = 1, kept in every
    cache level)."""
    if not (isinstance(flat, types.Array) and flat.ndim == 1 and isinstance(offset, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0i8")
        ptr = builder.bitcast(builder.gep(arr.data, [args[1]]), i8p)
        builder.call(fn, [ptr, ir.Constant(i32, 1), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(flat, offset), codegen


@njit(inline="always")
def prefetch_write(flat, start, stop):
    """Prefetch the elements [start, stop) of the 1-D array `flat` (clipped to it), about to be read and written, one
    hint per cache line."""
    step = max(1, LINE // flat.itemsize)
    for e in range(max(start, 0), min(stop, flat.shape[0]), step):
        _write_hint(flat, e)
