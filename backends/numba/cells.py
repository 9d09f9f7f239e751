r"""The cell kernels (rnn, gru, lstm, lru forward and backward) as Numba loops, with the references' outputs.

Each kernel has the signature of its NumPy reference in refimpl/cells/<cell>.py and returns exactly the same
structure — forward: (h, <Cell>Cache with every field (T, B, ·)), backward: {param…, "x", "h0"[, "c0"]} — so a
reference forward can feed a Numba backward and vice versa. The equation numbers "(n)" are those of the cell's
module docstring. The layout follows five rules (research/landscape.md §2.4):

    (a) the input projection of all T steps is one GEMM outside the time loop: x (T·B, I) @ W_ihᵀ (with every bias
        that is added before a nonlinearity folded into it);
    (b) the time loop is an @njit(cache=True) function: per step one BLAS GEMM into a preallocated buffer (no
        allocation per step) and one fused pass over (b, k) for the gates, t outermost and k innermost so that every
        array is walked contiguously. The GEMM is computed transposed, (W_hh h_{t-1}ᵀ) = W_hh (nG·H, H) @ h_{t-1}ᵀ,
        (and W_hhᵀ ḡᵀ backwards): with the batch as BLAS's short N side it runs 25–35% faster than h_{t-1} W_hhᵀ
        for a thin batch; with OpenBLAS's AVX-512 kernels it is issued in chunks of W's rows small enough for
        OpenBLAS's small-matrix path (_chunk_rows: another 20–35%). _untranspose turns the small (nG·H, rows) result
        back in one pass (into a buffer whose rows are padded by _PAD entries, so that its row stride is never a
        multiple of 4 KiB);
    (c) the backward loop stores the gate adjoints ḡ_t (T, B, nG·H); the weight gradients are then GEMMs over all
        (t, b) at once, ḡᵀ (nG·H, T·B) @ [x | h_prev] (T·B, ·), and x̄ is one GEMM ḡ @ W_ih;
    (d) the transcendental functions inside the loops are fastmath.tanh / fastmath.sigmoid: plain arithmetic that
        LLVM vectorises (np.tanh on a scalar is a libm call per element and stops the loop from vectorising). The
        loops are compiled with error_model="numpy" (no zero-division check, which would also stop vectorisation)
        and fastmath={"contract"} (FMA contraction only, no reassociation); the gate blocks of a (T, B, nG·H) array
        are written through a (T, B, nG, H) view, because stores at k and H + k of one row stop LLVM's vectoriser;
    (e) threads: the rows of the batch do not interact, so with several Numba threads (numba.get_num_threads())
        the batch is cut into one block of rows per thread and each thread runs the WHOLE time loop for its rows
        (nogil functions of the rows [b0, b1), run by _in_blocks on a small thread pool). The threads meet once per
        phase, not once per step: a per-step multi-threaded GEMM has a barrier every step, and on a machine whose
        cores are shared one descheduled thread stalls the other at every one of them. The GEMMs of (a) and (c) are
        cut the same way, into blocks of the T·B rows. Every BLAS call inside a block is single-threaded
        (_blas_single_threaded), so no BLAS thread pool runs, or spins, beside the blocks.

Reproducibility: each output row of the loops is written by exactly one block; the weight gradients are sums of the
blocks' shares, added in block order (no atomics, no prange reductions). Results are therefore identical run to run
for a given number of threads; a different number of blocks rounds differently, at the level of the last bit.
Scalars inside the loops are passed in the arrays' dtype (`one`, `zero`) so float32 kernels stay in float32. Inputs
are never written to; every output is a fresh array.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numba
import numpy as np
from numba import njit

from refimpl.cells.gru import GRUCache
from refimpl.cells.lru import LRUCache, lambda_gamma
from refimpl.cells.lstm import LSTMCache
from refimpl.cells.rnn import RNNCache

from .fastmath import sigmoid, tanh


def _c(a, dtype) -> np.ndarray:
    """A C-contiguous array of `dtype` (no copy when `a` already is one; the kernels never write to it)."""
    return np.ascontiguousarray(a, dtype=dtype)


def _consts(dtype):
    t = np.dtype(dtype).type
    return t(1.0), t(0.5)


#: The options of every dense cell loop over the rows of one block: rules (d) and (e) of the module docstring.
_LOOP = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
#: The fewest rows per block: below this a per-step GEMM is too thin to be worth a thread of its own (8-row GEMMs
#: run at about half the rate of 32-row ones, 16-row ones at 90%).
MIN_BLOCK_ROWS = 16
#: The least T·H² for which a call is cut into blocks at all (a block then has ≥ 32·T·H² flops, about a millisecond):
#: below it the threads' start and join would cost more than they save, and so would BLAS threads.
MIN_BLOCK_WORK = 2 ** 20
#: Below this T·B·H², every GEMM of a call is under OpenBLAS's own threshold for threading (M·N·K < 2¹⁸), so the
#: BLAS thread counts are not touched at all (that costs a few microseconds per phase).
MIN_SERIAL_WORK = 2 ** 16


def _param_grads(params: dict, computed: dict) -> dict:
    """The gradients in the parameters' order and dtypes (as zeros_like_params + add_into in the references)."""
    return {k: np.asarray(computed[k]).astype(v.dtype, copy=False) for k, v in params.items()}


def _bias_sum(g2: np.ndarray, chunk: int = 32) -> np.ndarray:
    """Σ over the T·B rows in float64: running sums over chunks of 32 rows in the arrays' dtype, then the chunk sums
    accumulated in float64 (a float32 running sum over all T·B rows would lose digits; converting every row to
    float64 first costs three times as long)."""
    n = g2.shape[0] - g2.shape[0] % chunk
    partial = g2[:n].reshape(-1, chunk, g2.shape[1]).sum(axis=1)
    return partial.sum(axis=0, dtype=np.float64) + g2[n:].sum(axis=0, dtype=np.float64)


# ------------------------------------------------------------------------------------------ blocks of rows, threads
#
# Rule (e). Every phase of a kernel call is cut into `blocks` blocks of rows — the batch rows for the time loops, the
# T·B rows for the GEMMs of rules (a) and (c) — and each block runs, as a nogil function, on its own thread, calling
# a single-threaded BLAS. So no BLAS thread pool is involved while a kernel runs (an idle OpenBLAS pool spins for a
# while after each call, and on two cores that spinning thread takes the time of one of the blocks). A call too small
# to be cut (T·H² < MIN_BLOCK_WORK) runs as one block with a single-threaded BLAS too (a tiny one leaves the BLAS alone,
# MIN_SERIAL_WORK); a large call that still runs as one block (one Numba thread, or fewer than 2·MIN_BLOCK_ROWS rows)
# leaves the BLAS threads as they are.

def _openblas(package):
    """(library, symbol prefix, symbol suffix) of the OpenBLAS bundled with `package` (in its wheel's .libs or
    .dylibs folder), or None."""
    root = os.path.dirname(package.__file__)
    for path in sorted(glob.glob(os.path.join(root + ".libs", "*openblas*"))
                       + glob.glob(os.path.join(root, ".dylibs", "*openblas*"))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas", ""), ("scipy_openblas", "64_"), ("openblas", "")):
            if all(hasattr(lib, f"{prefix}_{what}_num_threads{suffix}") for what in ("get", "set")):
                return lib, prefix, suffix
    return None


def _find_blas_threads() -> list:
    """[(get, set)] of the thread counts of the two BLAS libraries a kernel calls: SciPy's (np.dot inside @njit code
    goes through scipy.linalg.cython_blas) and NumPy's (np.matmul). Empty when either cannot be found (then every
    call runs as one block, with the BLAS threads as they are)."""
    try:
        import scipy
    except ImportError:
        return []
    found = []
    for package in (scipy, np):
        blas = _openblas(package)
        if blas is None:
            return []
        lib, prefix, suffix = blas
        get, set_ = (getattr(lib, f"{prefix}_{what}_num_threads{suffix}") for what in ("get", "set"))
        get.restype, set_.argtypes = ctypes.c_int, [ctypes.c_int]
        found.append((get, set_))
    return found


def _has_small_gemm() -> bool:
    """Whether the loop BLAS (SciPy's OpenBLAS) runs its AVX-512 kernels, which have a path for small GEMMs that
    skips packing the operands: see _chunk_rows."""
    try:
        import scipy
    except ImportError:
        return False
    blas = _openblas(scipy)
    if blas is None or not hasattr(blas[0], f"{blas[1]}_get_corename{blas[2]}"):
        return False
    corename = getattr(blas[0], f"{blas[1]}_get_corename{blas[2]}")
    corename.restype = ctypes.c_char_p
    return corename().decode().lower() in ("skylakex", "cooperlake", "sapphirerapids")


_SMALL_GEMM = _has_small_gemm()


def _chunk_rows(N: int, K: int) -> int:
    """How many rows of W to take per BLAS call in a per-step product W (M, K) @ aᵀ (K, N), N the rows of a block.
    OpenBLAS's AVX-512 kernels compute a GEMM with m·N ≤ 1024 and m·N·K ≤ 10⁶ without packing its operands, and
    the per-step products are small enough for that to matter: in chunks of m = 64 rows (N = 16, K = 256) they run
    20–25% faster in float32 and 35% faster in float64 than as one call. Elsewhere: one call (all M rows)."""
    if not _SMALL_GEMM or 16 * N > 1024:
        return 1 << 30
    m = min(1024 // N, 10 ** 6 // (N * K)) // 16 * 16
    return m if m >= 16 else 1 << 30


def _chunk(plan: _Plan, B: int, K: int) -> int:
    """_chunk_rows for the blocks of a batch of B rows."""
    return _chunk_rows(-(-B // plan.blocks), K)


@njit(**_LOOP)
def _gemm_t(W, a, out, chunk):
    """out = W aᵀ for W (M, K), a (N, K), out (M, N), as BLAS calls on chunks of `chunk` rows of W (_chunk_rows)."""
    for j0 in range(0, W.shape[0], chunk):
        j1 = min(j0 + chunk, W.shape[0])
        np.dot(W[j0:j1], a.T, out[j0:j1])


_BLAS_THREADS = _find_blas_threads()
_BLAS_LOCK = threading.Lock()
_BLAS_USERS = [0, []]             # [phases inside _blas_single_threaded, the thread counts to restore]
_POOL: list = []                  # one single-worker executor per extra block, created on first use
_POOL_PID = [os.getpid()]         # a forked child inherits the executors but not their threads: it makes its own


class _Plan(NamedTuple):
    blocks: int            # blocks of rows, one thread each
    serial_blas: bool      # BLAS single-threaded during the call


def _plan(T: int, B: int, H: int) -> _Plan:
    """How to run a call on (T, B, ·) arrays with H units: one block per Numba thread (numba.get_num_threads()), at
    least MIN_BLOCK_ROWS rows each, when T·H² ≥ MIN_BLOCK_WORK; else one block, with a single-threaded BLAS unless
    T·B·H² < MIN_SERIAL_WORK. One block, BLAS as it is, when the BLAS libraries' thread counts cannot be found."""
    if not _BLAS_THREADS or T * B * H * H < MIN_SERIAL_WORK:
        return _Plan(1, False)
    if T * H * H < MIN_BLOCK_WORK:
        return _Plan(1, True)
    blocks = max(1, min(numba.get_num_threads(), B // MIN_BLOCK_ROWS))
    return _Plan(blocks, blocks > 1)


@contextlib.contextmanager
def _blas_single_threaded():
    """The BLAS libraries single-threaded while blocks run at once (each thread calls them for its own rows); the
    first of overlapping phases saves the thread counts and the last one restores them."""
    with _BLAS_LOCK:
        if _BLAS_USERS[0] == 0:
            _BLAS_USERS[1] = [get() for get, _ in _BLAS_THREADS]
            for _, set_ in _BLAS_THREADS:
                set_(1)
        _BLAS_USERS[0] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_USERS[0] -= 1
            if _BLAS_USERS[0] == 0:
                for (_, set_), n in zip(_BLAS_THREADS, _BLAS_USERS[1]):
                    set_(n)


def _in_blocks(plan: _Plan, n: int, fn, *args, per_block=()) -> None:
    """fn(*args, *(a[c] for a in per_block), r0, r1) for the blocks c = 0 … plan.blocks−1 of the rows [0, n): block 0
    in the calling thread, the others on the pool. Each block writes only its own rows (or its own per_block[c])."""
    blocks = plan.blocks
    if blocks == 1 and not plan.serial_blas:
        fn(*args, *(a[0] for a in per_block), 0, n)
        return
    bounds = [(c * n // blocks, (c + 1) * n // blocks) for c in range(blocks)]
    if len(_POOL) < blocks - 1 or _POOL_PID[0] != os.getpid():
        with _BLAS_LOCK:
            if _POOL_PID[0] != os.getpid():
                _POOL.clear()
                _POOL_PID[0] = os.getpid()
            while len(_POOL) < blocks - 1:
                _POOL.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="refimpl-numba"))
    with _blas_single_threaded() if plan.serial_blas else contextlib.nullcontext():
        futures = [_POOL[c - 1].submit(fn, *args, *(a[c] for a in per_block), *bounds[c]) for c in range(1, blocks)]
        fn(*args, *(a[0] for a in per_block), *bounds[0])
        for f in futures:
            f.result()


@njit(**_LOOP)
def _projection_rows(X, W_ihT, bias, out, r0, r1):
    """Rule (a) on the rows [r0, r1) of the T·B rows: out = X W_ihᵀ + bias."""
    np.dot(X[r0:r1], W_ihT, out[r0:r1])
    for r in range(r0, r1):
        for j in range(out.shape[1]):
            out[r, j] += bias[j]


def _input_projection(x: np.ndarray, W_ih: np.ndarray, bias: np.ndarray, dt, plan: _Plan) -> np.ndarray:
    """x W_ihᵀ + bias for all T steps, (T, B, G·H): rule (a), in plan.blocks blocks of the T·B rows."""
    T, B, I = x.shape
    out = np.empty((T, B, W_ih.shape[0]), dt)
    _in_blocks(plan, T * B, _projection_rows, _c(x, dt).reshape(T * B, I), W_ih.T, bias.astype(dt),
               out.reshape(T * B, -1))
    return out


@njit(**_LOOP)
def _column_sums(g, r0, r1, out):
    """out (float64) += Σ_{r0 ≤ r < r1} g[r]: running sums over 32 rows in g's dtype, added into out in float64."""
    part = np.zeros(g.shape[1], g.dtype)
    for r in range(r0, r1):
        for j in range(g.shape[1]):
            part[j] += g[r, j]
        if (r - r0) % 32 == 31 or r == r1 - 1:
            for j in range(g.shape[1]):
                out[j] += part[j]
                part[j] = 0


def _grads_rows(g_ih, g_hh, X, Hp, W_ih, same, dX, dW, db_ih, db_hh, r0, r1):
    """Rule (c) on the rows [r0, r1) of the T·B rows: this block's share of [W̄_ih | W̄_hh] = [ḡ_ihᵀ X | ḡ_hhᵀ h_prev]
    (into its own dW, (G·H, I + H)) and of b̄ = Σ ḡ (db_ih, db_hh), and its rows of x̄ = ḡ_ih W_ih. same: ḡ_hh is
    ḡ_ih (rnn, lstm), and then the two weight gradients are one GEMM ḡᵀ [X | h_prev], a wider and faster one than
    the thin ḡᵀ X. The GEMMs are NumPy's (np.matmul releases the GIL; NumPy's BLAS runs these transposed shapes
    faster than SciPy's), the column sums a nogil Numba loop."""
    I = X.shape[1]
    if same:
        np.matmul(g_ih[r0:r1].T, np.concatenate((X[r0:r1], Hp[r0:r1]), axis=1), out=dW)
    else:
        np.matmul(g_ih[r0:r1].T, X[r0:r1], out=dW[:, :I])
        np.matmul(g_hh[r0:r1].T, Hp[r0:r1], out=dW[:, I:])
    np.matmul(g_ih[r0:r1], W_ih, out=dX[r0:r1])
    _column_sums(g_ih, r0, r1, db_ih)
    if not same:
        _column_sums(g_hh, r0, r1, db_hh)


def _weight_grads(params: dict, g_ih: np.ndarray, g_hh, x: np.ndarray, h_prev: np.ndarray, dt, plan: _Plan) -> dict:
    """{param: grad, "x"} from the gate adjoints ḡ_ih (T, B, G·H) and ḡ_hh (None: the same array), rule (c): each
    block of T·B rows sums its share, and the shares are added in block order."""
    T, B, GH = g_ih.shape
    I, H = x.shape[-1], h_prev.shape[-1]
    g_hh = g_ih if g_hh is None else g_hh
    same = g_hh is g_ih
    dW = np.empty((plan.blocks, GH, I + H), dt)
    db_ih, db_hh = np.zeros((plan.blocks, GH)), np.zeros((plan.blocks, GH))
    dX = np.empty((T * B, I), dt)
    _in_blocks(plan, T * B, _grads_rows, g_ih.reshape(T * B, GH), g_hh.reshape(T * B, GH),
               _c(x, dt).reshape(T * B, I), _c(h_prev, dt).reshape(T * B, H), _c(params["weight_ih"], dt), same, dX,
               per_block=(dW, db_ih, db_hh))
    total = (lambda a: a[0]) if plan.blocks == 1 else (lambda a: a.sum(axis=0))     # the shares, in block order
    W = total(dW)
    grads = _param_grads(params, {"weight_ih": np.ascontiguousarray(W[:, :I]),
                                  "weight_hh": np.ascontiguousarray(W[:, I:]),
                                  "bias_ih": total(db_ih), "bias_hh": total(db_ih if same else db_hh)})
    grads["x"] = dX.reshape(x.shape).astype(x.dtype, copy=False)
    return grads


#: Extra entries per row of the untransposed GEMM buffers (see _untranspose).
_PAD = 16


@njit(**_LOOP)
def _untranspose(src, dst):
    """dst[:, :n] = srcᵀ for src (n, rows): the per-step GEMM's result in the (b, k) order of the fused passes. Each
    row of src (one unit, every row of the block) is read contiguously and scattered down a column of dst; dst's
    rows are _PAD entries longer than n, because with a row stride that is a multiple of 4 KiB (n = 1024 float32)
    the scattered stores alias in the cache and the pass runs ten times slower."""
    for j in range(src.shape[0]):
        for q in range(src.shape[1]):
            dst[q, j] = src[j, q]


# ---------------------------------------------------------------------------------------------------------------- rnn

@njit(**_LOOP)
def _rnn_forward_rows(pre, h0, W_hh, b_hh, use_tanh, h_prev, h, chunk, b0, b1):
    """pre (T, B, H) = x W_ihᵀ + b_ih; writes h_prev, h (T, B, H) on the rows [b0, b1)."""
    T, _, H = pre.shape
    recT = np.empty((H, b1 - b0), pre.dtype)                # (W_hh h_{t-1}ᵀ), reused every step
    rec = np.empty((b1 - b0, H + _PAD), pre.dtype)
    for t in range(T):
        if t == 0:
            h_prev[0, b0:b1] = h0[b0:b1]
        else:
            h_prev[t, b0:b1] = h[t - 1, b0:b1]
        _gemm_t(W_hh, h_prev[t, b0:b1], recT, chunk)        # (1) W_hh h_{t-1}
        _untranspose(recT, rec)
        for b in range(b0, b1):
            for k in range(H):
                a = pre[t, b, k] + rec[b - b0, k] + b_hh[k]     # (1)
                h[t, b, k] = tanh(a) if use_tanh else a         # (2)


@njit(**_LOOP)
def _rnn_backward_rows(dh, h, W_hhT, use_tanh, one, da, carry, propagate, chunk, b0, b1):
    """Writes the pre-activation adjoints da (T, B, H) on the rows [b0, b1); carry ends as h̄_{-1}. propagate=False
    drops the carried adjoint (h_{t-1} held constant: the truncated gradient of refimpl/algorithms/rtrl.py)."""
    T, _, H = dh.shape
    recT = np.empty((H, b1 - b0), dh.dtype)
    rec = np.zeros((b1 - b0, H + _PAD), dh.dtype)                            # h̄_{t-1} from the step after
    for t in range(T - 1, -1, -1):
        for b in range(b0, b1):
            for k in range(H):
                g = dh[t, b, k] + rec[b - b0, k]                                 # (6) h̄_t
                da[t, b, k] = g * (one - h[t, b, k] * h[t, b, k]) if use_tanh else g   # (3)
        if propagate:
            _gemm_t(W_hhT, da[t, b0:b1], recT, chunk)                            # (5) (ā_t W_hh)ᵀ
            _untranspose(recT, rec)                                              # h̄_{t-1} contribution
    for b in range(b0, b1):
        for k in range(H):
            carry[b, k] = rec[b - b0, k]                                         # h̄_{-1}


def rnn_forward(params: dict, x: np.ndarray, h0: np.ndarray, nonlinearity: str = "tanh"):
    """As refimpl.cells.rnn.forward: x (T, B, I), h0 (B, H) → h (T, B, H), RNNCache (T, ·)."""
    _check_nonlinearity(nonlinearity)
    T, B, _ = x.shape
    dt = np.result_type(x, params["weight_ih"], h0)
    W_ih, W_hh = _c(params["weight_ih"], dt), _c(params["weight_hh"], dt)
    H = W_hh.shape[0]
    plan = _plan(T, B, H)
    pre = _input_projection(x, W_ih, params["bias_ih"], dt, plan)                                # (1) all t
    h_prev, h = np.empty((T, B, H), dt), np.empty((T, B, H), dt)
    _in_blocks(plan, B, _rnn_forward_rows, pre, _c(h0, dt), W_hh, _c(params["bias_hh"], dt), nonlinearity == "tanh",
               h_prev, h, _chunk(plan, B, H))
    return h, RNNCache(x=np.array(x), h_prev=h_prev, h=h)


def rnn_backward(params: dict, dh: np.ndarray, cache: RNNCache, nonlinearity: str = "tanh", *,
                 propagate: bool = True) -> dict:
    """As refimpl.cells.rnn.backward: → {param: grad, "x" (T, B, I), "h0" (B, H)}. propagate=False: the truncated
    gradient (no adjoint carried to h_{t-1}; used by the truncated/spatial sweeps)."""
    _check_nonlinearity(nonlinearity)
    T, B, H = dh.shape
    dt = dh.dtype
    one, _ = _consts(dt)
    da, carry = np.empty((T, B, H), dt), np.zeros((B, H), dt)
    plan = _plan(T, B, H)
    _in_blocks(plan, B, _rnn_backward_rows, _c(dh, dt), _c(cache.h, dt), _c(params["weight_hh"].T, dt),
               nonlinearity == "tanh", one, da, carry, propagate, _chunk(plan, B, H))
    grads = _weight_grads(params, da, None, cache.x, cache.h_prev, dt, plan)                     # (4), (5) x̄
    grads["h0"] = carry
    return grads


def _check_nonlinearity(nonlinearity: str) -> None:
    if nonlinearity not in ("tanh", "linear"):
        from refimpl.errors import UnknownNameError
        raise UnknownNameError("rnn nonlinearity", nonlinearity, ("tanh", "linear"))


# ---------------------------------------------------------------------------------------------------------------- gru

@njit(**_LOOP)
def _gru_forward_rows(gi, h0, W_hh, b_hh, one, h_prev, r, z, n, hn, h, chunk, b0, b1):
    """gi (T, B, 3H) = x W_ihᵀ + b_ih (+ b_hr, b_hz on the r, z blocks); writes the cache fields h_prev, r, z, n, hn,
    h (T, B, H) on the rows [b0, b1)."""
    T, _, H3 = gi.shape
    H = H3 // 3
    ghT = np.empty((H3, b1 - b0), gi.dtype)                 # (W_hh h_{t-1}ᵀ), reused every step
    gh = np.empty((b1 - b0, H3 + _PAD), gi.dtype)
    for t in range(T):
        if t == 0:
            h_prev[0, b0:b1] = h0[b0:b1]
        else:
            h_prev[t, b0:b1] = h[t - 1, b0:b1]
        _gemm_t(W_hh, h_prev[t, b0:b1], ghT, chunk)        # (1)(2)(3) W_hh h_{t-1}
        _untranspose(ghT, gh)
        for b in range(b0, b1):
            q = b - b0
            for k in range(H):
                rr = sigmoid(gi[t, b, k] + gh[q, k])                                                   # (1)
                zz = sigmoid(gi[t, b, H + k] + gh[q, H + k])                                           # (2)
                m = gh[q, 2 * H + k] + b_hh[2 * H + k]                                                 # (3)
                nn = tanh(gi[t, b, 2 * H + k] + rr * m)                                                # (4)
                h[t, b, k] = (one - zz) * nn + zz * h_prev[t, b, k]                                    # (5)
                r[t, b, k], z[t, b, k], n[t, b, k], hn[t, b, k] = rr, zz, nn, m


@njit(**_LOOP)
def _gru_backward_rows(dh, h_prev, r, z, n, hn, W_hhT, one, zero, dg_ih, dg_hh, carry, propagate, chunk, b0, b1):
    """Writes ḡ_ih, ḡ_hh (T, B, 3H) of eq. (10) on the rows [b0, b1); carry ends as h̄_{-1}. propagate=False drops
    the carried adjoint. The two parts of (11) are kept apart until they are used: `carry` holds the direct path
    h̄_t ⊙ z, `rec` the gate path ḡ_hh W_hh (written by the GEMM straight into its buffer, no extra pass)."""
    T, B, H = dh.shape
    G_ih, G_hh = dg_ih.reshape(T, B, 3, H), dg_hh.reshape(T, B, 3, H)     # the gate blocks r, z, n as an axis
    recT = np.empty((H, b1 - b0), dh.dtype)
    rec = np.zeros((b1 - b0, H + _PAD), dh.dtype)
    for t in range(T - 1, -1, -1):
        for b in range(b0, b1):
            q = b - b0
            for k in range(H):
                g = dh[t, b, k] + carry[b, k] + rec[q, k]       # (12) h̄_t
                rr, zz, nn = r[t, b, k], z[t, b, k], n[t, b, k]
                da_n = g * (one - zz) * (one - nn * nn)         # (6), (7)
                da_z = g * (h_prev[t, b, k] - nn) * zz * (one - zz)   # (6), (9)
                da_r = da_n * hn[t, b, k] * rr * (one - rr)     # (8), (9)
                G_ih[t, b, 0, k], G_ih[t, b, 1, k], G_ih[t, b, 2, k] = da_r, da_z, da_n       # (10)
                G_hh[t, b, 0, k], G_hh[t, b, 1, k], G_hh[t, b, 2, k] = da_r, da_z, da_n * rr  # (10), (8) m̄
                carry[b, k] = g * zz if propagate else zero    # (11) direct path of (5)
        if propagate:
            _gemm_t(W_hhT, dg_hh[t, b0:b1], recT, chunk)        # (11) (ḡ_hh W_hh)ᵀ
            _untranspose(recT, rec)
    for b in range(b0, b1):
        for k in range(H):
            carry[b, k] += rec[b - b0, k]                       # (11) h̄_{-1} = both paths


def gru_forward(params: dict, x: np.ndarray, h0: np.ndarray):
    """As refimpl.cells.gru.forward: x (T, B, I), h0 (B, H) → h (T, B, H), GRUCache (T, ·)."""
    T, B, _ = x.shape
    dt = np.result_type(x, params["weight_ih"], h0)
    one, _ = _consts(dt)
    W_ih, W_hh = _c(params["weight_ih"], dt), _c(params["weight_hh"], dt)
    H = W_hh.shape[1]
    b_hh = _c(params["bias_hh"], dt)
    b_in = params["bias_ih"].astype(dt)                    # + b_hr, b_hz: the r, z biases are added once, here
    b_in[:2 * H] += b_hh[:2 * H]
    plan = _plan(T, B, H)
    gi = _input_projection(x, W_ih, b_in, dt, plan)                                              # (1)(2)(4) all t
    h_prev, r, z, n, hn, h = (np.empty((T, B, H), dt) for _ in range(6))
    _in_blocks(plan, B, _gru_forward_rows, gi, _c(h0, dt), W_hh, b_hh, one, h_prev, r, z, n, hn, h,
               _chunk(plan, B, H))
    return h, GRUCache(x=np.array(x), h_prev=h_prev, r=r, z=z, n=n, hn=hn, h=h)


def gru_backward(params: dict, dh: np.ndarray, cache: GRUCache, *, propagate: bool = True) -> dict:
    """As refimpl.cells.gru.backward: → {param: grad, "x" (T, B, I), "h0" (B, H)}. propagate=False: truncated."""
    T, B, H = dh.shape
    dt = dh.dtype
    one, _ = _consts(dt)
    dg_ih, dg_hh = np.empty((T, B, 3 * H), dt), np.empty((T, B, 3 * H), dt)
    carry = np.zeros((B, H), dt)
    c = cache
    plan = _plan(T, B, H)
    _in_blocks(plan, B, _gru_backward_rows, _c(dh, dt), _c(c.h_prev, dt), _c(c.r, dt), _c(c.z, dt), _c(c.n, dt),
               _c(c.hn, dt), _c(params["weight_hh"].T, dt), one, dt.type(0.0), dg_ih, dg_hh, carry, propagate,
               _chunk(plan, B, 3 * H))
    grads = _weight_grads(params, dg_ih, dg_hh, c.x, c.h_prev, dt, plan)                        # (10), (11) x̄
    grads["h0"] = carry
    return grads


# --------------------------------------------------------------------------------------------------------------- lstm

@njit(**_LOOP)
def _lstm_forward_rows(pre, h0, c0, W_hh, h_prev, c_prev, i, f, g, o, c, tanh_c, h, chunk, b0, b1):
    """pre (T, B, 4H) = x W_ihᵀ + b_ih + b_hh; writes every LSTMCache field but x (T, B, H) on the rows [b0, b1)."""
    T, _, H4 = pre.shape
    H = H4 // 4
    recT = np.empty((H4, b1 - b0), pre.dtype)               # (W_hh h_{t-1}ᵀ), reused every step
    rec = np.empty((b1 - b0, H4 + _PAD), pre.dtype)
    for t in range(T):
        if t == 0:
            h_prev[0, b0:b1], c_prev[0, b0:b1] = h0[b0:b1], c0[b0:b1]
        else:
            h_prev[t, b0:b1], c_prev[t, b0:b1] = h[t - 1, b0:b1], c[t - 1, b0:b1]
        _gemm_t(W_hh, h_prev[t, b0:b1], recT, chunk)                                          # (1) W_hh h_{t-1}
        _untranspose(recT, rec)
        for b in range(b0, b1):
            q = b - b0
            for k in range(H):
                ii = sigmoid(pre[t, b, k] + rec[q, k])                                                   # (1)(2)
                ff = sigmoid(pre[t, b, H + k] + rec[q, H + k])                                           # (1)(2)
                gg = tanh(pre[t, b, 2 * H + k] + rec[q, 2 * H + k])                                      # (1)(2)
                oo = sigmoid(pre[t, b, 3 * H + k] + rec[q, 3 * H + k])                                   # (1)(2)
                cc = ff * c_prev[t, b, k] + ii * gg                                                       # (3)
                tc = tanh(cc)                                                                            # (4)
                h[t, b, k] = oo * tc                                                                     # (4)
                i[t, b, k], f[t, b, k], g[t, b, k], o[t, b, k], c[t, b, k], tanh_c[t, b, k] = ii, ff, gg, oo, cc, tc


@njit(**_LOOP)
def _lstm_backward_rows(dh, c_prev, i, f, g, o, tanh_c, W_hhT, one, zero, da, carry_h, carry_c, propagate, chunk,
                        b0, b1):
    """Writes ā (T, B, 4H) of eq. (9) on the rows [b0, b1); carry_h, carry_c end as h̄_{-1}, c̄_{-1}. propagate=False
    drops both carried adjoints (h_{t-1} and c_{t-1} held constant)."""
    T, B, H = dh.shape
    A = da.reshape(T, B, 4, H)                                              # the gate blocks i, f, g, o as an axis
    recT = np.empty((H, b1 - b0), dh.dtype)
    rec = np.zeros((b1 - b0, H + _PAD), dh.dtype)                         # h̄_{t-1} from the step after
    for t in range(T - 1, -1, -1):
        for b in range(b0, b1):
            for k in range(H):
                gh = dh[t, b, k] + rec[b - b0, k]                                 # (11) h̄_t
                ii, ff, gg, oo, tc = i[t, b, k], f[t, b, k], g[t, b, k], o[t, b, k], tanh_c[t, b, k]
                dc_hat = carry_c[b, k] + gh * oo * (one - tc * tc)                # (6) both paths into c_t
                A[t, b, 0, k] = dc_hat * gg * ii * (one - ii)                     # (7)(8) ā_i
                A[t, b, 1, k] = dc_hat * c_prev[t, b, k] * ff * (one - ff)        # (7)(8) ā_f
                A[t, b, 2, k] = dc_hat * ii * (one - gg * gg)                     # (7)(8) ā_g
                A[t, b, 3, k] = gh * tc * oo * (one - oo)                         # (5)(8) ā_o
                carry_c[b, k] = dc_hat * ff if propagate else zero                # (7) c̄_{t-1}
        if propagate:
            _gemm_t(W_hhT, da[t, b0:b1], recT, chunk)                             # (10) (ā W_hh)ᵀ
            _untranspose(recT, rec)                                               # h̄_{t-1} contribution
    for b in range(b0, b1):
        for k in range(H):
            carry_h[b, k] = rec[b - b0, k]                                        # h̄_{-1}


def lstm_forward(params: dict, x: np.ndarray, state0):
    """As refimpl.cells.lstm.forward: x (T, B, I), state0 LSTMState(h0, c0) → h (T, B, H), LSTMCache (T, ·)."""
    h0, c0 = state0
    T, B, _ = x.shape
    dt = np.result_type(x, params["weight_ih"], h0, c0)
    W_ih, W_hh = _c(params["weight_ih"], dt), _c(params["weight_hh"], dt)
    H = W_hh.shape[1]
    bias = params["bias_ih"].astype(dt) + params["bias_hh"].astype(dt)                             # (1) both biases
    plan = _plan(T, B, H)
    pre = _input_projection(x, W_ih, bias, dt, plan)                                             # (1) all t
    h_prev, c_prev, i, f, g, o, c, tanh_c, h = (np.empty((T, B, H), dt) for _ in range(9))
    _in_blocks(plan, B, _lstm_forward_rows, pre, _c(h0, dt), _c(c0, dt), W_hh, h_prev, c_prev, i, f, g, o, c,
               tanh_c, h, _chunk(plan, B, H))
    return h, LSTMCache(x=np.array(x), h_prev=h_prev, c_prev=c_prev, i=i, f=f, g=g, o=o, c=c, tanh_c=tanh_c, h=h)


def lstm_backward(params: dict, dh: np.ndarray, cache: LSTMCache, *, propagate: bool = True) -> dict:
    """As refimpl.cells.lstm.backward: → {param: grad, "x" (T, B, I), "h0" (B, H), "c0" (B, H)}. propagate=False:
    truncated."""
    T, B, H = dh.shape
    dt = dh.dtype
    one, _ = _consts(dt)
    k = cache
    da = np.empty((T, B, 4 * H), dt)
    carry_h, carry_c = np.zeros((B, H), dt), np.zeros((B, H), dt)
    plan = _plan(T, B, H)
    _in_blocks(plan, B, _lstm_backward_rows, _c(dh, dt), _c(k.c_prev, dt), _c(k.i, dt), _c(k.f, dt), _c(k.g, dt),
               _c(k.o, dt), _c(k.tanh_c, dt), _c(params["weight_hh"].T, dt), one, dt.type(0.0), da, carry_h, carry_c,
               propagate, _chunk(plan, B, 4 * H))
    grads = _weight_grads(params, da, None, k.x, k.h_prev, dt, plan)                             # (9), (10) x̄
    grads["h0"], grads["c0"] = carry_h, carry_c
    return grads


# ---------------------------------------------------------------------------------------------------------------- lru
#
# The complex GEMMs with a real x are done as real GEMMs on the interleaved (re, im) view of the complex arrays:
# a complex (…, N) C-array viewed as real is (…, 2N) with columns [re_0, im_0, re_1, im_1, …]. With
# W2 (2N, I) = the rows γ_k B_re[k], γ_k B_im[k] interleaved,
#     u = γ ⊙ (B x)        is   x @ W2ᵀ            viewed as complex                                  (2)
#     x̄ = Re((γ ⊙ ū) conj(B)) = Σ_k γ_k (Re ū_k B_re[k] + Im ū_k B_im[k])   is   ū_real @ W2            (6)
#     M = Σ_{t,b} ū_tᵀ x_t  is  ū_realᵀ @ x  (rows re, im interleaved);  G = γ ⊙ M;
#     γ̄ = Σ_{t,b} Re(conj(B x_t) ⊙ ū_t) = Σ_i (B_re ⊙ Re M + B_im ⊙ Im M)[:, i]                       (6)

@njit(cache=True)
def _lru_forward_loop(lam, h0, h_prev, h):
    """h holds u (T, B, N) on entry and h_t on exit; writes h_prev."""
    T, B, N = h.shape
    h_prev[0] = h0
    for t in range(T):
        if t > 0:
            h_prev[t] = h[t - 1]
        for b in range(B):
            for k in range(N):
                h[t, b, k] = lam[k] * h_prev[t, b, k] + h[t, b, k]                    # (3)


@njit(cache=True)
def _lru_backward_loop(dh, h_prev, lam, du, carry, dlam):
    """Writes ū_t = h̄_t (T, B, N); accumulates λ̄ = Σ_{t,b} conj(h_{t-1}) h̄_t into dlam (complex128); carry ends as
    h̄_{-1}."""
    T, B, N = dh.shape
    for t in range(T - 1, -1, -1):
        for b in range(B):
            for k in range(N):
                g = dh[t, b, k] + carry[b, k]                                         # (8) h̄_t
                du[t, b, k] = g                                                       # (5) ū_t
                dlam[k] += h_prev[t, b, k].conjugate() * g                            # (5) λ̄
                carry[b, k] = lam[k].conjugate() * g                                  # (5) h̄_{t-1} contribution


def _lru_w2(params: dict, gamma: np.ndarray, rdt) -> np.ndarray:
    N, I = params["B_re"].shape
    W2 = np.empty((2 * N, I), rdt)
    W2[0::2] = gamma[:, None] * params["B_re"]
    W2[1::2] = gamma[:, None] * params["B_im"]
    return W2


def lru_forward(params: dict, x: np.ndarray, h0: np.ndarray):
    """As refimpl.cells.lru.forward: x r(T, B, I), h0 c(B, N) → h c(T, B, N), LRUCache (T, ·)."""
    T, B, I = x.shape
    lam, gamma = lambda_gamma(params)                                                 # (1)
    cdt = np.result_type(lam, h0, np.complex64)
    rdt = np.finfo(cdt).dtype
    N = lam.shape[0]
    W2 = _lru_w2(params, gamma.astype(rdt), rdt)
    h = (_c(x, rdt).reshape(T * B, I) @ W2.T).reshape(T, B, 2 * N).view(cdt)         # (2) u for all t, c(T, B, N)
    h_prev = np.empty((T, B, N), cdt)
    _lru_forward_loop(_c(lam, cdt), _c(h0, cdt), h_prev, h)
    return h, LRUCache(x=np.array(x), h_prev=h_prev, h=h)


def lru_backward(params: dict, dh: np.ndarray, cache: LRUCache) -> dict:
    """As refimpl.cells.lru.backward: dh c(T, B, N) → {param: grad, "x" r(T, B, I), "h0" c(B, N)}."""
    T, B, N = dh.shape
    lam, gamma = lambda_gamma(params)
    cdt = np.result_type(dh, cache.h)
    rdt = np.finfo(cdt).dtype
    du, carry, dlam = np.empty((T, B, N), cdt), np.zeros((B, N), cdt), np.zeros(N, np.complex128)
    _lru_backward_loop(_c(dh, cdt), _c(cache.h_prev, cdt), _c(lam, cdt), du, carry, dlam)
    du_real = du.reshape(T * B, N).view(rdt)                  # (T·B, 2N), re/im interleaved
    x2 = _c(cache.x, rdt).reshape(T * B, -1)
    M = du_real.T @ x2                                                                # (6) Σ ū_tᵀ x_t, rows re/im
    M_re, M_im = M[0::2], M[1::2]
    gamma = gamma.astype(rdt)
    dgamma = np.sum(params["B_re"] * M_re + params["B_im"] * M_im, axis=1)           # (6) γ̄
    conj_lam_dlam = np.conj(lam).astype(np.complex128) * dlam                         # (7)
    grads = _param_grads(params, {
        "nu_log": -np.exp(params["nu_log"].astype(np.float64)) * conj_lam_dlam.real,  # (7)
        "theta_log": np.exp(params["theta_log"].astype(np.float64)) * conj_lam_dlam.imag,   # (7)
        "gamma_log": gamma * dgamma,                                                  # (7)
        "B_re": gamma[:, None] * M_re, "B_im": gamma[:, None] * M_im})                # (6) Re G, Im G
    grads["x"] = (du_real @ _lru_w2(params, gamma, rdt)).reshape(cache.x.shape).astype(cache.x.dtype)   # (6)
    grads["h0"] = carry
    return grads


KERNELS = {
    "rnn.forward": rnn_forward, "rnn.backward": rnn_backward,
    "gru.forward": gru_forward, "gru.backward": gru_backward,
    "lstm.forward": lstm_forward, "lstm.backward": lstm_backward,
    "lru.forward": lru_forward, "lru.backward": lru_backward,
}
