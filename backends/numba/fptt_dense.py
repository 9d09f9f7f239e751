r"""The dense cells' FPTT sweeps (rnn, gru, lstm .fptt / .fptt_warmup / .fptt_shooting / .fptt1) as Numba loops.

Same signatures, output names, dtypes and shapes as the references (refimpl/kernels.py → refimpl/algorithms/fptt.py
fptt_warmup, fptt_shooting, fptt_errors and fptt_cell_grads with check=False, float64 carriers). Equation numbers:
"(f n)" is refimpl/algorithms/fptt.py, "(r n)" refimpl/algorithms/rtrl.py, "(n)" the cell's module in refimpl/cells/.
S = R·H is the state width: H, or 2H for the lstm's [h; c]. d_t is dh_t flattened to (B, S) float64, zero on the
lstm's c rows. The kernels:

    <cell>.fptt_warmup    phase 1 over one chunk, the direct warm-up, from the carried (Q, e) (None: Q = I, e = 0):
                          Q ← Q J_tᴴ (f 2) first, then e ← e + Q d_t with the new Q (f 3); no solve
                          → {"state", "carry": {"Q" (B, S, S), "e" (B, S)}}
    <cell>.fptt_shooting  phase 1 over one chunk, the paper's shooting warm-up, from the carried (v', P) (None: v' = 0,
                          P = I): e'_t = J_t^{−H} v'_{t-1} (f 1), v'_t = e'_t − d_t, P ← P J_tᴴ (f 2s)
                          → {"state", "carry": {"v" (B, S), "P" (B, S, S)}}
    <cell>.fptt1          phase 2 over one chunk from the carried v (None: e_{-1} = 0): e_t = J_t^{−H} v_{t-1} (f 1),
                          v_t = e_t − d_t, and the gradients (f 4) → {param: grad, "x", "state", "carry": {"v" (B, S)}}
    <cell>.fptt           both over the whole sequence: the direct warm-up from None, e_{-1} = e (f 3,
                          fptt.start_error), the error phase from v = e_{-1} → {param: grad, "x", "h0"[, "c0"] = e_{-1}}

    (a) the input projection of all T steps is ONE GEMM outside the time loop (runtime.input_projection);
    (b) each phase is ONE @njit(cache=True) loop for every cell (_warmup_loop for both warm-ups, _errors_loop). Each
        step
        advances the states and forms the step's factors F_ih, F_hh, E (online_dense.step_factors: one BLAS GEMM
        h_{t-1} W_hhᵀ, the cell's gate and adjoint functions of cells.py), assembles A_t = J_tᵀ (B, S, S) from them —
        J_t[rH+k, j] = Σ_g F_hh[r, g, k] W_hh[gH+k, j] on the h_{t-1} columns, + E[r, k] on column (R−1)H+k (r 2) —
        in the state dtype, stored in float64 (as the reference's state_jacobian(…).astype(float64)), then per batch
        element: the direct warm-up Q ← Q A_t (one S×S GEMM into a buffer) and e ← e + Q d_t (one GEMV); the shooting
        warm-up and the error phase solve A_t e_t = v_{t-1} (f 1, never an inverse), the shooting one also keeps
        P ← P A_t. The error phase casts e_t to the state dtype and forms the step's gate adjoints from it,
        ḡ[gH+k] = Σ_r e_t[rH+k] F[r, g, k] (the step backward with total adjoint e_t, f 4: F is that adjoint for the
        unit seeds, and the adjoint is linear in its seed);
    (c) the weight gradients are then ONE GEMM each over all (t, b): ḡᵀ (G·H, T·B) @ [x | h_prev], and x̄ = ḡ W_ih
        (runtime.weight_grads, as the BPTT kernels).

Cost per step and batch element: the direct warm-up one S×S by S×S GEMM and a GEMV (2S³ + 2S² flops), the shooting
warm-up an LU solve and the same GEMM (≈ 2S³ + ⅔S³), the error phase an LU solve (⅔S³) and the gate adjoints.
Memory: the carriers Q, e (direct) or v, P (shooting) or v (errors) and A (B, S, S), plus the error phase's ḡ and
h_prev (C, B, ·) of its chunk for the GEMMs of (c) — independent of T for the warm-ups.
Everything is sequential and in a fixed order: results are bit-reproducible run to run. Inputs (the carry included)
are never written to; every output is a fresh array.

lstm.fptt: the error phase multiplies the step Jacobians' inverses (the shooting warm-up too; the direct warm-up
inverts nothing), so the difference between two correct float64 sweeps (last-bit differences in J_t, a different LU)
grows like Π_t 1/σ_min(J_t). The registered lstm.fptt inputs keep that product small (refimpl/kernels.py: c0 ≥ 1,
T ≤ 7); on longer or worse-conditioned inputs two correct sweeps, this one and the reference, can differ far beyond the
parity tolerance (docs/backends.md).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from refimpl.cells import CELLS

from ..common import check_nonlinearity
from .online_dense import DENSE, final_state, step_factors, sweep_inputs
from .runtime import check_carry, plan, scalars, scratch, weight_grads


# ------------------------------------------------------------------------------------------------------- the loops

@njit(cache=True)
def _adjoint_jacobian(F_hh, E, W_hh, A, col):
    """A[b] = J_tᵀ (S, S) in float64 from the step's factors (r 2), each entry of J_t formed in the state dtype;
    col (S,) is a state-dtype buffer for one row of J_t."""
    B, R, G, H = F_hh.shape
    for b in range(B):
        for r in range(R):
            for k in range(H):
                col[:] = 0.0
                for j in range(H):                                       # the h_{t-1} columns
                    acc = F_hh[b, r, 0, k] * W_hh[k, j]
                    for g in range(1, G):
                        acc += F_hh[b, r, g, k] * W_hh[g * H + k, j]
                    col[j] = acc
                col[(R - 1) * H + k] += E[b, r, k]                       # the direct term on s_{t-1}'s last row
                for j in range(R * H):
                    A[b, j, r * H + k] = col[j]                          # Jᵀ


@njit(cache=True)
def _gate_adjoints(es, F, out):
    """out[gH+k] = Σ_r es[rH+k] F[r, g, k] per batch row: the step's gate adjoints for the total adjoint es (f 4)."""
    B, R, G, H = F.shape
    for b in range(B):
        for g in range(G):
            for k in range(H):
                acc = es[b, k] * F[b, 0, g, k]
                for r in range(1, R):
                    acc += es[b, r * H + k] * F[b, r, g, k]
                out[b, g * H + k] = acc


@njit(cache=True)
def _solve(A, v):
    """A⁻¹ v by a linear solve (f 1). Numba's solve refuses a non-finite system with LinAlgError where NumPy's returns
    non-finite values; a lost error signal must reach the residual check (f 5) as NaN, as in the reference."""
    if np.all(np.isfinite(v)) and np.all(np.isfinite(A)):
        return np.linalg.solve(A, v)
    return np.full(v.shape, np.nan)


@njit(cache=True)
def _warmup_loop(kind, pre, s, W_hhT, W_hh, b_hh, dh, one, use_tanh, R, direct, M, w):
    """Phase 1 over the chunk: pre (T, B, G·H) = x W_ihᵀ + b_ih, s (B, S) the state (advanced in place), dh (T, B, S)
    float64 carriers; the carried product M (B, S, S) and vector w (B, S), float64, advanced in place.
    direct: M = Q, w = e — (f 2) Q ← Q J_tᴴ first, then (f 3) e ← e + Q d_t with the new Q; no solve.
    shooting: M = P, w = v' — (f 1) e'_t = J_t^{-H} v'_{t-1}, v'_t = e'_t − d_t, and (f 2s) P ← P J_tᴴ."""
    T, B, GH = pre.shape
    H = W_hh.shape[1]
    G, S = GH // H, R * H
    dt = pre.dtype
    rec, hp, col = np.empty((B, GH), dt), np.empty((B, H), dt), np.empty(S, dt)
    F_ih, F_hh, E = np.zeros((B, R, G, H), dt), np.zeros((B, R, G, H), dt), np.zeros((B, R, H), dt)
    A, tmp, qd = np.empty((B, S, S)), np.empty((S, S)), np.empty(S)
    for t in range(T):
        step_factors(kind, pre[t], s, W_hhT, b_hh, one, use_tanh, rec, hp, F_ih, F_hh, E)
        _adjoint_jacobian(F_hh, E, W_hh, A, col)
        for b in range(B):
            if not direct:
                w[b] = _solve(A[b], w[b]) - dh[t, b]                     # (f 1) e'_t = J_t^{-H} v'_{t-1}; v'_t
            np.dot(M[b], A[b], tmp)                                      # (f 2) Q ← Q J_tᴴ, (f 2s) P ← P J_tᴴ
            M[b] = tmp
            if direct:
                np.dot(M[b], dh[t, b], qd)                               # (f 3) e ← e + Q_t d_t
                w[b] += qd


@njit(cache=True)
def _errors_loop(kind, pre, s, W_hhT, W_hh, b_hh, dh, one, use_tanh, R, tied, v, h_prev, g_ih, g_hh):
    """Phase 2 over the chunk: as _warmup_loop, v the carried one (advanced in place); writes h_prev (T, B, H) and the
    gate adjoints ḡ_ih (T, B, G·H) of (f 4), and ḡ_hh unless `tied`."""
    T, B, GH = pre.shape
    H = W_hh.shape[1]
    G, S = GH // H, R * H
    dt = pre.dtype
    rec, hp, es, col = np.empty((B, GH), dt), np.empty((B, H), dt), np.empty((B, S), dt), np.empty(S, dt)
    F_ih, F_hh, E = np.zeros((B, R, G, H), dt), np.zeros((B, R, G, H), dt), np.zeros((B, R, H), dt)
    A = np.empty((B, S, S))
    for t in range(T):
        step_factors(kind, pre[t], s, W_hhT, b_hh, one, use_tanh, rec, hp, F_ih, F_hh, E)
        h_prev[t] = hp
        _adjoint_jacobian(F_hh, E, W_hh, A, col)
        for b in range(B):
            e = _solve(A[b], v[b])                                       # (f 1) e_t = J_t^{-H} v_{t-1}
            es[b] = e                                                    # e_t in the state dtype
            v[b] = e - dh[t, b]                                          # v_t = e_t − dh_t
        _gate_adjoints(es, F_ih, g_ih[t])                                # (f 4)
        if not tied:
            _gate_adjoints(es, F_hh, g_hh[t])


# ----------------------------------------------------------------------------------------------------- the kernels

class _Chunk(NamedTuple):
    """What both phases of one call share: the loops' arguments but the state and the carriers; x; s_{-1} (B, S)."""
    kind: int
    pre: np.ndarray          # (T, B, G·H) = x W_ihᵀ + b_ih, rule (a)
    W_hhT: np.ndarray
    W_hh: np.ndarray
    b_hh: np.ndarray
    dh: np.ndarray           # (T, B, S) float64 carriers, zero on the lstm's c part
    one: object              # 1 in the state dtype
    use_tanh: bool
    R: int
    x: np.ndarray
    s0: np.ndarray           # the flattened state before the chunk (not to be written: it may be the caller's)
    dt: np.dtype             # the state dtype

    def run(self, loop, s, *carriers):
        """loop (_warmup_loop or _errors_loop) over the chunk from the state s (advanced in place)."""
        loop(self.kind, self.pre, s, self.W_hhT, self.W_hh, self.b_hh, self.dh, self.one, self.use_tanh, self.R,
             *carriers)


def _chunk(cell, params, x, state0, dh, nonlinearity) -> _Chunk:
    check_nonlinearity(nonlinearity)
    R = CELLS[cell].STATE_ROWS
    dt, s0, pre, W_hhT, W_hh, b_hh = sweep_inputs(cell, params, x, state0)
    one, _ = scalars(dt)
    T, B, _ = x.shape
    H = W_hh.shape[1]
    carriers = scratch("fptt.carriers", (T, B, R * H), np.float64)       # rule (f): fully written here
    carriers[:, :, H:] = 0
    carriers[:, :, :H] = dh                                              # dh_t as carriers, zero on the lstm's c part
    return _Chunk(DENSE[cell].kind, pre, W_hhT, W_hh, b_hh, carriers, one, nonlinearity == "tanh", R, x, s0, dt)


def _errors(cell, params, c: _Chunk, s, v) -> dict:
    """The error phase from v (advanced in place), s advanced in place → {param: grad, "x"} (f 4), (c)."""
    tied = DENSE[cell].tied
    T, B, _ = c.x.shape
    GH, H = c.W_hh.shape
    h_prev, g_ih = scratch("fptt.h_prev", (T, B, H), c.dt), scratch("fptt.g_ih", (T, B, GH), c.dt)    # rule (f)
    g_hh = g_ih if tied else scratch("fptt.g_hh", (T, B, GH), c.dt)
    c.run(_errors_loop, s, tied, v, h_prev, g_ih, g_hh)
    return weight_grads(params, g_ih, None if tied else g_hh, c.x, h_prev, c.dt, plan(T, B, H))     # (f 4), (c)


#: The warm-ups: kernel phase → (direct?, the names of its carriers: the product, the vector).
_WARMUPS = {"fptt_warmup": (True, ("Q", "e")), "fptt_shooting": (False, ("P", "v"))}


def _carriers(carry, names, B, S, what):
    """The carriers before a chunk in float64 (copies): the carry's, or a stream's start (the products Q, P = I; the
    vectors e, v = 0)."""
    shapes = {k: (B, S, S) if k in ("Q", "P") else (B, S) for k in names}
    if carry is None:
        return [np.broadcast_to(np.eye(S), shapes[k]).copy() if len(shapes[k]) == 3 else np.zeros(shapes[k])
                for k in names]
    check_carry(carry, shapes, what)
    return [np.array(carry[k], dtype=np.float64, order="C") for k in names]


def _fptt(cell, params, x, state0, dh, nonlinearity="tanh"):
    """Both phases over the whole sequence → {param, "x", "h0"[, "c0"]}."""
    c = _chunk(cell, params, x, state0, dh, nonlinearity)
    B, S = c.s0.shape
    Q, e0 = _carriers(None, ("Q", "e"), B, S, f"{cell}.fptt")
    c.run(_warmup_loop, c.s0.copy(), True, Q, e0)                       # phase 1 from the stream's start
    grads = _errors(cell, params, c, c.s0.copy(), e0.copy())             # (f 3) e_{-1} = e; phase 2 from v = e_{-1}
    keys = CELLS[cell].GRAD_STATE_KEYS                                   # ("h0",) or ("h0", "c0"): one per state row
    H = S // len(keys)
    for r, key in enumerate(keys):
        grads[key] = e0[:, r * H:(r + 1) * H].astype(c.dt)              # e_{-1}
    return grads


def _fptt1(cell, params, x, state0, dh, carry, nonlinearity="tanh"):
    """The error phase over one chunk from the carried v → {param, "x", "state", "carry": {"v"}}."""
    c = _chunk(cell, params, x, state0, dh, nonlinearity)
    (v,) = _carriers(carry, ("v",), *c.s0.shape, f"{cell}.fptt1")
    s = c.s0.copy()
    grads = _errors(cell, params, c, s, v)
    return {**grads, "state": final_state(cell, s), "carry": {"v": v}}


def _warmup(phase, cell, params, x, state0, dh, carry, nonlinearity="tanh"):
    """A warm-up (phase: "fptt_warmup", the direct one, or "fptt_shooting") over one chunk from its carriers →
    {"state", "carry": {"Q", "e"} or {"v", "P"}}."""
    direct, names = _WARMUPS[phase]
    c = _chunk(cell, params, x, state0, dh, nonlinearity)
    carriers = _carriers(carry, names, *c.s0.shape, f"{cell}.{phase}")
    s = c.s0.copy()
    c.run(_warmup_loop, s, direct, *carriers)
    return {"state": final_state(cell, s), "carry": dict(zip(names, carriers))}


def rnn_fptt(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, nonlinearity: str = "tanh") -> dict:
    """As kernel rnn.fptt: the direct warm-up (f 2-3) then the error phase (f 1, 4) → {param, "x", "h0"}."""
    return _fptt("rnn", params, x, h0, dh, nonlinearity)


def rnn_fptt1(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, carry=None,
              nonlinearity: str = "tanh") -> dict:
    """As kernel rnn.fptt1: the error phase over one chunk from the carried v (None: e_{-1} = 0)."""
    return _fptt1("rnn", params, x, h0, dh, carry, nonlinearity)


def rnn_fptt_warmup(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, carry=None,
                    nonlinearity: str = "tanh") -> dict:
    """As kernel rnn.fptt_warmup: the direct warm-up over one chunk from the carried (Q, e) (None: Q = I, e = 0)."""
    return _warmup("fptt_warmup", "rnn", params, x, h0, dh, carry, nonlinearity)


def rnn_fptt_shooting(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, carry=None,
                      nonlinearity: str = "tanh") -> dict:
    """As kernel rnn.fptt_shooting: the shooting warm-up over one chunk from the carried (v', P) (None: v' = 0,
    P = I)."""
    return _warmup("fptt_shooting", "rnn", params, x, h0, dh, carry, nonlinearity)


def gru_fptt(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray) -> dict:
    """As kernel gru.fptt: the direct warm-up (f 2-3) then the error phase (f 1, 4) → {param, "x", "h0"}."""
    return _fptt("gru", params, x, h0, dh)


def gru_fptt1(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, carry=None) -> dict:
    """As kernel gru.fptt1: the error phase over one chunk from the carried v (None: e_{-1} = 0)."""
    return _fptt1("gru", params, x, h0, dh, carry)


def gru_fptt_warmup(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, carry=None) -> dict:
    """As kernel gru.fptt_warmup: the direct warm-up over one chunk from the carried (Q, e) (None: Q = I, e = 0)."""
    return _warmup("fptt_warmup", "gru", params, x, h0, dh, carry)


def gru_fptt_shooting(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, carry=None) -> dict:
    """As kernel gru.fptt_shooting: the shooting warm-up over one chunk from the carried (v', P) (None: v' = 0,
    P = I)."""
    return _warmup("fptt_shooting", "gru", params, x, h0, dh, carry)


def lstm_fptt(params: dict, x: np.ndarray, state0, dh: np.ndarray) -> dict:
    """As kernel lstm.fptt: the direct warm-up (f 2-3) then the error phase (f 1, 4) → {param, "x", "h0", "c0"}."""
    return _fptt("lstm", params, x, state0, dh)


def lstm_fptt1(params: dict, x: np.ndarray, state0, dh: np.ndarray, carry=None) -> dict:
    """As kernel lstm.fptt1: the error phase over one chunk from the carried v (None: e_{-1} = 0)."""
    return _fptt1("lstm", params, x, state0, dh, carry)


def lstm_fptt_warmup(params: dict, x: np.ndarray, state0, dh: np.ndarray, carry=None) -> dict:
    """As kernel lstm.fptt_warmup: the direct warm-up over one chunk from the carried (Q, e) (None: Q = I, e = 0)."""
    return _warmup("fptt_warmup", "lstm", params, x, state0, dh, carry)


def lstm_fptt_shooting(params: dict, x: np.ndarray, state0, dh: np.ndarray, carry=None) -> dict:
    """As kernel lstm.fptt_shooting: the shooting warm-up over one chunk from the carried (v', P) (None: v' = 0,
    P = I)."""
    return _warmup("fptt_shooting", "lstm", params, x, state0, dh, carry)


KERNELS = {f"{c}.{phase}": globals()[f"{c}_{phase}"] for c in ("rnn", "gru", "lstm")
           for phase in ("fptt", "fptt1", "fptt_warmup", "fptt_shooting")}
