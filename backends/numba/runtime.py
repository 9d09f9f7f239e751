r"""The Numba backend's runtime: dtypes and scalars, BLAS and threads, blocks of rows, and the GEMMs around the loops.

The kernels (cells.py, online_dense.py, online_lru.py, fptt_dense.py, ep.py) hold the arithmetic; this module holds
how it is run. The dense cell kernels follow five layout rules (research/landscape.md §2.4) and one rule of memory,
(f); the helpers for each:

    (a) the input projection of all T steps is one GEMM outside the time loop, x (T·B, I) @ W_ihᵀ with every bias
        that is added before a nonlinearity folded into it                                      input_projection
    (b) the time loop is an @njit(cache=True) function (options LOOP): per step one GEMM into a preallocated
        buffer and one fused pass over (b, k) for the gates, t outermost and k innermost. The per-step GEMM is not
        a BLAS call: W is packed once per call into panels and each step runs a register-tiled kernel over them
        (gemm.py; a BLAS call would repack W at every step), writing the product in the (b, k) order of the fused
        passes                                                     step_weights, gemm.step_buffer, gemm.step_product
    (c) the backward loop stores the gate adjoints ḡ_t (T, B, nG·H); the weight gradients are GEMMs over all (t, b)
        at once, ḡᵀ (nG·H, T·B) @ [x | h_prev], and x̄ is one GEMM ḡ @ W_ih                        weight_grads
    (d) the transcendental functions inside the loops are fastmath.tanh / fastmath.sigmoid (arithmetic that LLVM
        vectorises); the loops are compiled with error_model="numpy" and fastmath={"contract"} (FMA contraction
        only, no reassociation); the gate blocks of a (T, B, nG·H) array are written through a (T, B, nG, H) view
        (stores at k and H + k of one row stop LLVM's vectoriser)                                  LOOP
    (e) threads: the rows of the batch do not interact, so with several Numba threads (numba.get_num_threads())
        every phase of a call is cut into one block of rows per thread — the batch rows for the time loops, the
        T·B rows for the GEMMs of (a) and (c) — and each thread runs the WHOLE phase for its rows (nogil functions
        of the rows [r0, r1), on a small thread pool). The threads meet once per phase, not once per step (a
        per-step multi-threaded GEMM has a barrier every step, and on shared cores one descheduled thread stalls
        the others at every one of them). Every BLAS call inside a block is single-threaded, so no BLAS thread pool
        runs, or spins, beside the blocks. Without the BLAS libraries' thread counts (controls_blas_threads() is
        False) every call runs as one block                plan, Plan, in_blocks, row_product, controls_blas_threads
    (f) memory: the large temporaries of a call that are not returned — the input projection of (a), the gate
        adjoints of (c), the [x | h_prev] operand of the weight gradients — come from a per-thread workspace, reused
        by the next call of the same shape. A fresh array of tens of megabytes is paid for at its first touch, page
        by page (the kernel zeroes and maps it); on a virtual machine that rivalled the GEMMs (docs/bench/
        profile-cpus.md). Returned arrays are always fresh; the workspace holds at most one array per name and
        thread                                                                         scratch, release_scratch

Reproducibility: each output row of the loops is written by exactly one block; the weight gradients are sums of the
blocks' shares, added in block order (no atomics, no prange reductions). Results are therefore identical run to run
for a given number of threads; a different number of blocks rounds differently, at the level of the last bit.
Scalars inside the loops are passed in the arrays' dtype (`scalars`) so float32 kernels stay in float32. The carried
kernels check the carry they are given against the shapes they expect (`check_carry`) before converting it.

The thresholds below (MIN_BLOCK_ROWS, MIN_BLOCK_WORK, MIN_SERIAL_WORK) and the measurements behind
them are in docs/backends.md (Numba). Numba's on-disk cache of an @njit function is keyed to its own file only: after
editing a function that others inline or call (fastmath.py, gemm.py, memory.py, the gate functions of cells.py), clear
backends/numba/__pycache__.
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

from refimpl.errors import ShapeError

from ..common import param_grads
from .gemm import pack, product

#: The options of every dense loop over the rows of one block: rules (d) and (e).
LOOP = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
#: The fewest rows per block: below this a per-step GEMM is too thin to be worth a thread of its own.
MIN_BLOCK_ROWS = 16
#: The least T·H² for which a call is cut into blocks at all (a block then has ≥ 32·T·H² flops, about a millisecond):
#: below it the threads' start and join would cost more than they save, and so would BLAS threads.
MIN_BLOCK_WORK = 2 ** 20
#: Below this T·B·H², every GEMM of a call is under OpenBLAS's own threshold for threading (M·N·K < 2¹⁸), so the
#: BLAS thread counts are not touched at all.
MIN_SERIAL_WORK = 2 ** 16


def contiguous(a, dtype) -> np.ndarray:
    """A C-contiguous array of `dtype` (no copy when `a` already is one; the kernels never write to it)."""
    return np.ascontiguousarray(a, dtype=dtype)


def check_carry(carry: dict, shapes: dict, what: str) -> None:
    """A carried kernel's carry must name exactly the arrays of `shapes` {name: shape}, each of its shape: else
    ShapeError, with what was expected (the carry of a chunk is what the previous chunk's call returned)."""
    if set(carry) != set(shapes):
        raise ShapeError(f"the carry of {what} names {sorted(carry)}; expected {sorted(shapes)}: pass the 'carry' the "
                         f"previous chunk's call returned (or None at the start of a stream)")
    for name, shape in shapes.items():
        if tuple(np.shape(carry[name])) != tuple(shape):
            raise ShapeError(f"the carried {name!r} of {what} has shape {tuple(np.shape(carry[name]))}; expected "
                             f"{tuple(shape)}: pass the 'carry' the previous chunk's call returned")


def scalars(dtype):
    """(1, 0) in `dtype`: the constants the loops take as arguments, so that float32 arithmetic stays float32."""
    t = np.dtype(dtype).type
    return t(1.0), t(0.0)


# --------------------------------------------------------------------------------------------- BLAS: which, how many
#
# Rule (e). A call too small to be cut (T·H² < MIN_BLOCK_WORK) runs as one block with a single-threaded BLAS (a tiny
# one, T·B·H² < MIN_SERIAL_WORK, leaves the BLAS alone); a large call that still runs as one block (one Numba thread,
# or fewer than 2·MIN_BLOCK_ROWS rows) leaves the BLAS threads as they are.

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


_BLAS_THREADS = _find_blas_threads()
_BLAS_LOCK = threading.Lock()
_BLAS_USERS = [0, []]             # [phases inside blas_single_threaded, the thread counts to restore]
_POOL: list = []                  # one single-worker executor per extra block, created on first use
_POOL_PID = [os.getpid()]         # a forked child inherits the executors but not their threads: it makes its own


def controls_blas_threads() -> bool:
    """Whether the thread counts of both BLAS libraries were found, so that calls may be cut into blocks of rows (rule
    (e)); False: plan() gives every call one block, with the BLAS threads as they are."""
    return bool(_BLAS_THREADS)


@contextlib.contextmanager
def blas_single_threaded():
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


# ------------------------------------------------------------------------------------------------- scratch (f)

_SCRATCH = threading.local()


def scratch(name: str, shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array for a call's temporary `name` (each call site its own name, so that no two
    live temporaries share one): this thread's array of that name when its shape and dtype match, else a fresh one
    that replaces it. Never return it, nor a view of it: the next call of the same name in this thread overwrites it."""
    pool = getattr(_SCRATCH, "pool", None)
    if pool is None:
        pool = _SCRATCH.pool = {}
    shape, dtype = tuple(int(n) for n in shape), np.dtype(dtype)
    a = pool.get(name)
    if a is None or a.shape != shape or a.dtype != dtype:
        pool[name] = a = np.empty(shape, dtype)
    return a


def scratch_arrays() -> list:
    """This thread's workspace arrays (for checks that no returned array is one of them)."""
    return list(getattr(_SCRATCH, "pool", {}).values())


def release_scratch() -> None:
    """Drop this thread's workspace (its arrays are freed once no call is using them)."""
    _SCRATCH.pool = {}


# ---------------------------------------------------------------------------------------------- blocks of rows (e)

class Plan(NamedTuple):
    blocks: int            # blocks of rows, one thread each
    serial_blas: bool      # BLAS single-threaded during the call


def plan(T: int, B: int, H: int) -> Plan:
    """How to run a call on (T, B, ·) arrays with H units: one block per Numba thread (numba.get_num_threads()), at
    least MIN_BLOCK_ROWS rows each, when T·H² ≥ MIN_BLOCK_WORK; else one block, with a single-threaded BLAS unless
    T·B·H² < MIN_SERIAL_WORK. One block, BLAS as it is, when the BLAS libraries' thread counts cannot be found."""
    if not _BLAS_THREADS or T * B * H * H < MIN_SERIAL_WORK:
        return Plan(1, False)
    if T * H * H < MIN_BLOCK_WORK:
        return Plan(1, True)
    blocks = max(1, min(numba.get_num_threads(), B // MIN_BLOCK_ROWS))
    return Plan(blocks, blocks > 1)


def in_blocks(plan: Plan, n: int, fn, *args, per_block=()) -> None:
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
    with blas_single_threaded() if plan.serial_blas else contextlib.nullcontext():
        futures = [_POOL[c - 1].submit(fn, *args, *(a[c] for a in per_block), *bounds[c]) for c in range(1, blocks)]
        fn(*args, *(a[0] for a in per_block), *bounds[0])
        for f in futures:
            f.result()


# ------------------------------------------------------------------------------------------------ per-step GEMM (b)

def step_weights(W: np.ndarray, dt) -> np.ndarray:
    """W (M, K) in `dt`, packed once per call for the per-step products rec = a Wᵀ of gemm.step_product."""
    return pack(contiguous(W, dt))


# ------------------------------------------------------------------------------------ the GEMMs of rules (a) and (c)

@njit(**LOOP)
def _product_rows(A, Wp, bias, out, r0, r1):
    """out[r0:r1] = A[r0:r1] Wᵀ + bias (None: none): one block's rows of row_product."""
    product(A[r0:r1], Wp, bias, out[r0:r1])


def row_product(A: np.ndarray, W: np.ndarray, out: np.ndarray, plan: Plan, bias=None) -> np.ndarray:
    """out = A Wᵀ (+ bias) (A (R, K), W (M, K), out (R, M), rows of unit stride) in plan.blocks blocks of A's rows,
    each with the tiled kernel of the per-step GEMM on W packed once (gemm.product): no BLAS thread pool is woken,
    so none spins beside the next phase's blocks (rule (e)), and no BLAS call repacks W block by block."""
    bias = None if bias is None else np.asarray(bias).astype(out.dtype)
    in_blocks(plan, A.shape[0], _product_rows, A, pack(contiguous(W, out.dtype)), bias, out)
    return out


def input_projection(x: np.ndarray, W_ih: np.ndarray, bias: np.ndarray, dt, plan: Plan, name: str) -> np.ndarray:
    """x W_ihᵀ + bias for all T steps, (T, B, G·H): rule (a), a row_product over the T·B rows, into the scratch
    array `name` (rule (f): the caller uses it and does not return it)."""
    T, B, I = x.shape
    out = scratch(name, (T, B, W_ih.shape[0]), dt)
    row_product(contiguous(x, dt).reshape(T * B, I), W_ih, out.reshape(T * B, -1), plan, bias)
    return out


@njit(**LOOP)
def _column_sums(g, r0, r1, out):
    """out (float64) += Σ_{r0 ≤ r < r1} g[r]: running sums over 32 rows in g's dtype, added into out in float64 (a
    float32 running sum over all T·B rows would lose digits)."""
    part = np.zeros(g.shape[1], g.dtype)
    for r in range(r0, r1):
        for j in range(g.shape[1]):
            part[j] += g[r, j]
        if (r - r0) % 32 == 31 or r == r1 - 1:
            for j in range(g.shape[1]):
                out[j] += part[j]
                part[j] = 0


def _grads_rows(g_ih, g_hh, X, Hp, W_ih, same, XH, dX, dW, db_ih, db_hh, r0, r1):
    """Rule (c) on the rows [r0, r1) of the T·B rows: this block's share of [W̄_ih | W̄_hh] = [ḡ_ihᵀ X | ḡ_hhᵀ h_prev]
    (into its own dW, (G·H, I + H)) and of b̄ = Σ ḡ (db_ih, db_hh), and its rows of x̄ = ḡ_ih W_ih. same: ḡ_hh is
    ḡ_ih (rnn, lstm), and then the two weight gradients are one GEMM ḡᵀ [X | h_prev], a wider and faster one than
    the thin ḡᵀ X. The GEMMs are NumPy's (np.matmul releases the GIL; NumPy's BLAS runs these transposed shapes
    faster than SciPy's), the column sums a nogil Numba loop. XH (T·B, I + H): scratch for [X | h_prev] (when same)."""
    I = X.shape[1]
    if same:
        np.concatenate((X[r0:r1], Hp[r0:r1]), axis=1, out=XH[r0:r1])
        np.matmul(g_ih[r0:r1].T, XH[r0:r1], out=dW)
    else:
        np.matmul(g_ih[r0:r1].T, X[r0:r1], out=dW[:, :I])
        np.matmul(g_hh[r0:r1].T, Hp[r0:r1], out=dW[:, I:])
    np.matmul(g_ih[r0:r1], W_ih, out=dX[r0:r1])
    _column_sums(g_ih, r0, r1, db_ih)
    if not same:
        _column_sums(g_hh, r0, r1, db_hh)


def weight_grads(params: dict, g_ih: np.ndarray, g_hh, x: np.ndarray, h_prev: np.ndarray, dt, plan: Plan) -> dict:
    """{weight_ih, weight_hh, bias_ih, bias_hh, "x"} from the gate adjoints ḡ_ih (T, B, G·H) and ḡ_hh (None: the
    same array), rule (c): each block of T·B rows sums its share, and the shares are added in block order. The
    parameter gradients come in the parameters' order and dtypes, x̄ in x's dtype."""
    T, B, GH = g_ih.shape
    I, H = x.shape[-1], h_prev.shape[-1]
    g_hh = g_ih if g_hh is None else g_hh
    same = g_hh is g_ih
    dW = np.empty((plan.blocks, GH, I + H), dt)
    db_ih, db_hh = np.zeros((plan.blocks, GH)), np.zeros((plan.blocks, GH))
    dX = np.empty((T * B, I), dt)
    XH = scratch("weight_grads.xh", (T * B, I + H) if same else (0, I + H), dt)
    in_blocks(plan, T * B, _grads_rows, g_ih.reshape(T * B, GH), g_hh.reshape(T * B, GH),
              contiguous(x, dt).reshape(T * B, I), contiguous(h_prev, dt).reshape(T * B, H),
              contiguous(params["weight_ih"], dt), same, XH, dX, per_block=(dW, db_ih, db_hh))
    total = (lambda a: a[0]) if plan.blocks == 1 else (lambda a: a.sum(axis=0))     # the shares, in block order
    W = total(dW)
    grads = param_grads(params, {"weight_ih": np.ascontiguousarray(W[:, :I]),
                                 "weight_hh": np.ascontiguousarray(W[:, I:]),
                                 "bias_ih": total(db_ih), "bias_hh": total(db_ih if same else db_hh)})
    grads["x"] = dX.reshape(x.shape).astype(x.dtype, copy=False)
    return grads
