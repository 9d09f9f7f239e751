r"""The per-step GEMM of the time loops, rec = a Wᵀ, as a register-tiled kernel on weights packed once per call.

Every step of a dense time loop multiplies a thin operand a (N, K) — h_{t-1} or an adjoint, for the N rows of one
block — by the same weight matrix W (M, K): N is 16–64, K and M are hundreds. A BLAS call per step repacks W (M·K
numbers) into its kernel's layout at every step: OpenBLAS's Haswell kernels (AVX2 CPUs, which have no small-matrix
path) spent about a third of each per-step GEMM doing so, and its AVX-512 small-matrix path, which packs nothing,
reads W in a layout that leaves part of the FMA units idle (docs/bench/profile-cpus.md). Here W is packed ONCE per
call, and each step is a loop of one register tile:

    packed panels   Wp[p, k, j] = W[p·w + j, k]        (P, K, w), w = V·L, P = ⌈M / w⌉, the last panel zero-padded
    one tile        rec[q + r, p·w : (p+1)·w] = Σ_k a[q + r, k] · Wp[p, k, :]         r < R (fewer in the last tile)

A tile keeps its R·V accumulators — vectors of L numbers — in registers through the whole k loop; each k loads V
vectors of the panel (contiguous: the panel is stored k-major) and broadcasts R numbers of a, for R·V fused
multiply-adds. The loop over tiles runs panel by panel, so one panel (K·w numbers) and the block's a stay in cache.

The tile's shape is chosen by the vector registers of the CPU Numba compiles for — a table keyed on the vector
extensions, never on a timing or on one CPU model (TILE):

    AVX-512 (32 registers of 64 bytes)       R = 8, V = 3: 24 accumulators
    AVX, AVX2 (16 registers of 32 bytes)     R = 4, V = 3: 12 accumulators
    NEON (32 of 16 bytes)                    R = 8, V = 3
    SSE only (16 of 16 bytes)                R = 4, V = 3

and L = the register's bytes / the itemsize (float32 or float64). The numbers are summed over k in order, one
multiply-add each (llvm.fmuladd: fused where the CPU has FMA), so a product rounds the same way at every call and in
every block; it differs from a BLAS product in the last bits only. The columns of rec past M (up to P·w) receive
the padded panel's zeros: rec is allocated P·w wide (step_buffer) and the loops read its first M columns.

The tile is written as LLVM IR (a Numba intrinsic) because that is the one way to hold a tile of vectors in
registers: as an array in Numba code it would live in memory, and LLVM's vectoriser does not turn a scalar k loop
into this register blocking.
"""

from __future__ import annotations

import platform

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils, config
from numba.extending import intrinsic


def target_features() -> str:
    """The CPU features Numba compiles for: NUMBA_CPU_FEATURES when set, else the host's (what Numba itself does)."""
    if config.CPU_FEATURES is not None:
        return config.CPU_FEATURES
    import llvmlite.binding as llvm
    return llvm.get_host_cpu_features().flatten()


def tile_shape(features: str, machine: str) -> tuple[int, int, int]:
    """(R, V, vector bytes) of the register tile for a CPU with `features` (LLVM's "+avx2,-avx512f,…") and
    `machine` (platform.machine()): the table of the module docstring."""
    enabled = {f[1:] for f in features.split(",") if f.startswith("+")}
    if machine.lower() in ("arm64", "aarch64"):
        return 8, 3, 16
    if "avx512f" in enabled:
        return 8, 3, 64
    if "avx" in enabled:
        return 4, 3, 32
    return 4, 3, 16


#: (R, V, vector bytes) of the tile on the CPU Numba compiles for.
TILE = tile_shape(target_features(), platform.machine())


def panel_width(dtype) -> int:
    """w = V·L: the columns of one packed panel (L = the vector's bytes / the itemsize of dtype)."""
    R, V, nbytes = TILE
    return V * (nbytes // np.dtype(dtype).itemsize)


def pack(W: np.ndarray) -> np.ndarray:
    """Wp (P, K, w): W (M, K) in panels of w = panel_width columns of Wᵀ, k-major, the last one zero-padded."""
    M, K = W.shape
    w = panel_width(W.dtype)
    P = -(-M // w)
    padded = np.zeros((P * w, K), W.dtype)
    padded[:M] = W
    return np.ascontiguousarray(padded.reshape(P, w, K).transpose(0, 2, 1))


@intrinsic
def _tile(typingctx, a, q, rows, Wp, p, start, out, i, j):
    """out[i + r, j : j + w] = start[p·w : (p+1)·w] + Σ_k a[q + r, k] Wp[p, k, :] for r < rows ≤ R (module docstring;
    start None: 0, else a C-contiguous (P·w,) array: a bias, added where the sum starts). a and out are 2-D with unit
    stride along their rows, Wp is C-contiguous (P, K, w); all of one float dtype."""
    floats = (types.float32, types.float64)
    if not (a.dtype == Wp.dtype == out.dtype and a.dtype in floats and (a.ndim, Wp.ndim, out.ndim) == (2, 3, 2)):
        return None
    if not (start is types.none or (isinstance(start, types.Array) and start.ndim == 1 and start.dtype == a.dtype)):
        return None
    R, V, nbytes = TILE
    L = nbytes // (4 if a.dtype == types.float32 else 8)

    def codegen(context, builder, signature, args):
        a_ty, w_ty, start_ty, out_ty = (signature.args[n] for n in (0, 3, 5, 6))
        a_val, q, rows, w_val, p, start_val, out_val, i, j = args
        a_arr = context.make_array(a_ty)(context, builder, a_val)
        w_arr = context.make_array(w_ty)(context, builder, w_val)
        c_arr = context.make_array(out_ty)(context, builder, out_val)
        intp = context.get_value_type(types.intp)
        size = context.get_abi_sizeof(context.get_value_type(a_ty.dtype))
        num = ir.VectorType(context.get_value_type(a_ty.dtype), L)
        const = lambda n: ir.Constant(intp, n)                                               # noqa: E731

        def row_stride(arr):
            return builder.sdiv(builder.extract_value(arr.strides, 0), const(size))

        def vector_at(ptr, v):
            """The v-th vector of L numbers from the scalar pointer ptr (unaligned)."""
            return builder.bitcast(builder.gep(ptr, [const(v * L)]), num.as_pointer())

        lda, ldc = row_stride(a_arr), row_stride(c_arr)
        K = builder.extract_value(w_arr.shape, 1)
        panel = builder.gep(w_arr.data, [builder.mul(p, row_stride(w_arr))])
        last = builder.sub(rows, const(1))
        # row r of the tile reads a's row q + min(r, rows − 1): a short last tile computes copies of its last row
        # (never stored), so that every load stays inside a
        a_rows = [builder.gep(a_arr.data, [builder.mul(builder.add(q, builder.select(
            builder.icmp_signed("<", const(r), rows), const(r), last)), lda)]) for r in range(R)]
        fmuladd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(num, [num] * 3),
                                             f"llvm.fmuladd.v{L}f{size * 8}")
        zero_vec, undef = ir.Constant(num, [0.0] * L), ir.Constant(num, ir.Undefined)
        splat = ir.Constant(ir.VectorType(ir.IntType(32), L), [0] * L)

        if start_ty is types.none:
            first = [zero_vec] * V
        else:                                                               # start[p·w + v·L : …], every row
            s_arr = context.make_array(start_ty)(context, builder, start_val)
            s_ptr = builder.gep(s_arr.data, [builder.mul(p, const(V * L))])
            first = [builder.load(vector_at(s_ptr, v), align=size) for v in range(V)]
        entry = builder.basic_block
        head = builder.append_basic_block("tile.k")
        body = builder.append_basic_block("tile.fma")
        done = builder.append_basic_block("tile.store")
        builder.branch(head)

        builder.position_at_end(head)                                       # k and the R·V accumulators
        k = builder.phi(intp)
        k.add_incoming(const(0), entry)
        acc = []
        for n in range(R * V):
            phi = builder.phi(num)
            phi.add_incoming(first[n % V], entry)
            acc.append(phi)
        builder.cbranch(builder.icmp_signed("<", k, K), body, done)

        builder.position_at_end(body)                                       # acc[r, v] += a[q+r, k] · Wp[p, k, v]
        w_row = builder.gep(panel, [builder.mul(k, const(V * L))])
        w_vec = [builder.load(vector_at(w_row, v), align=size) for v in range(V)]
        new = []
        for r in range(R):
            a_rk = builder.load(builder.gep(a_rows[r], [k]))
            a_bc = builder.shuffle_vector(builder.insert_element(undef, a_rk, ir.Constant(ir.IntType(32), 0)),
                                          undef, splat)
            new += [builder.call(fmuladd, [a_bc, w_vec[v], acc[r * V + v]]) for v in range(V)]
        k.add_incoming(builder.add(k, const(1)), builder.basic_block)
        for phi, value in zip(acc, new):
            phi.add_incoming(value, builder.basic_block)
        builder.branch(head)

        builder.position_at_end(done)                                       # out's rows i … i + rows − 1
        c0 = builder.gep(c_arr.data, [builder.add(builder.mul(i, ldc), j)])
        for r in range(R):
            with cgutils.if_likely(builder, builder.icmp_signed("<", const(r), rows)):
                c_row = builder.gep(c0, [builder.mul(const(r), ldc)])
                for v in range(V):
                    builder.store(acc[r * V + v], vector_at(c_row, v), align=size)
        return context.get_dummy_value()

    return types.void(a, q, rows, Wp, p, start, out, i, j), codegen


#: R, the rows of one tile (for the loop over tiles).
TILE_ROWS = TILE[0]


@njit(inline="always")
def _operands_fit(a, Wp, out):
    """What _tile assumes of its operands: a (N, K) and Wp (P, K, w) agree on K, Wp is C-contiguous, and the rows of
    a and of out have unit stride (a stride is free along an axis of length 1)."""
    size = a.itemsize
    K = a.shape[1]
    return (Wp.shape[1] == K and Wp.strides[2] == size
            and (K <= 1 or (a.strides[1] == size and Wp.strides[1] == Wp.shape[2] * size))
            and (out.shape[1] <= 1 or out.strides[1] == size))


@njit(cache=True, nogil=True)
def step_product(Wp, a, rec):
    """rec[:, :P·w] = a Wᵀ (a (N, K), Wp = pack(W) (P, K, w), rec (N, ≥ P·w), rows of unit stride): the per-step
    GEMM, tile by tile, panel by panel."""
    N = a.shape[0]
    if not _operands_fit(a, Wp, rec) or rec.shape[0] < N or rec.shape[1] < Wp.shape[0] * Wp.shape[2]:
        raise ValueError("step_product: a (N, K), Wp (P, K, w) packed, rec (N, >= P*w), rows of unit stride")
    for p in range(Wp.shape[0]):
        for q in range(0, N, TILE_ROWS):
            _tile(a, q, min(TILE_ROWS, N - q), Wp, p, None, rec, q, p * Wp.shape[2])


@njit(cache=True, nogil=True)
def step_buffer(Wp, N):
    """rec for step_product over N rows, zero: (N, P·w)."""
    return np.zeros((N, Wp.shape[0] * Wp.shape[2]), Wp.dtype)


#: Rows of a per pass over the panels in `product`: a chunk of a (CHUNK_ROWS·K numbers) stays in cache while every
#: panel is applied to it.
CHUNK_ROWS = 128


@njit(cache=True, nogil=True)
def product(a, Wp, bias, out):
    """out = a Wᵀ + bias (a (N, K), Wp = pack(W) (P, K, w), bias (M,) or None, out (N, M) with M ≤ P·w, rows of unit
    stride): the GEMMs of a long a (the input projection of all T·B rows) with the same tile, in chunks of
    CHUNK_ROWS rows. The bias starts the accumulators, so out is written once (a second pass to add it would read
    and write all of out again: tens of megabytes, from memory). The last, zero-padded panel goes through a
    tile-sized buffer, of which only out's M columns are copied."""
    N = a.shape[0]
    P, w = Wp.shape[0], Wp.shape[2]
    M = out.shape[1]
    if (not _operands_fit(a, Wp, out) or out.shape[0] != N or not (P - 1) * w < M <= P * w
            or (bias is not None and bias.shape[0] != M)):
        raise ValueError("product: a (N, K), Wp (P, K, w) packed from W (M, K), bias (M,) or None, out (N, M), rows "
                         "of unit stride")
    start = np.zeros(P * w, a.dtype)
    if bias is not None:
        start[:M] = bias
    full = M // w                                           # panels that fit in out
    edge = np.empty((TILE_ROWS, w), a.dtype)
    for r0 in range(0, N, CHUNK_ROWS):
        r1 = min(N, r0 + CHUNK_ROWS)
        for p in range(full):
            for q in range(r0, r1, TILE_ROWS):
                _tile(a, q, min(TILE_ROWS, r1 - q), Wp, p, start, out, q, p * w)
        if full < P:
            for q in range(r0, r1, TILE_ROWS):
                rows = min(TILE_ROWS, r1 - q)
                _tile(a, q, rows, Wp, full, start, edge, 0, 0)
                for r in range(rows):
                    for j in range(M - full * w):
                        out[q + r, full * w + j] = edge[r, j]
