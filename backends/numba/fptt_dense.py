r"""The dense cells' FPTT sweeps (rnn, gru, lstm .fptt / .fptt1) as Numba loops.

Same signatures, output names, dtypes and shapes as the references (refimpl/kernels.py → refimpl/algorithms/fptt.py
fptt_cell_grads with check=False, float64 carriers). Equation numbers: "(f n)" is refimpl/algorithms/fptt.py, "(r n)"
refimpl/algorithms/rtrl.py, "(n)" the cell's module in refimpl/cells/. S = R·H is the state width: H, or 2H for the
lstm's [h; c].

    (a) the input projection of all T steps is ONE GEMM outside the time loop (runtime.input_projection);
    (b) ONE @njit(cache=True) loop runs both phases for every cell. Each step advances the states and forms the step's
        factors F_ih, F_hh, E (online_dense.step_factors: one BLAS GEMM h_{t-1} W_hhᵀ, the cell's gate and adjoint
        functions of cells.py), assembles A_t = J_tᵀ (B, S, S) from them — J_t[rH+k, j] = Σ_g F_hh[r, g, k]
        W_hh[gH+k, j] on the h_{t-1} columns, + E[r, k] on column (R−1)H+k (r 2) — in the state dtype, stored in
        float64 (as the reference's state_jacobian(…).astype(float64)), and per batch element solves
        A_t e_t = e_{t-1} − dh_{t-1} (f 1, never an inverse). The warm-up (two_passes) also keeps P ← P A_t (f 2)
        and ends with e_{-1} = −P (e'_{T-1} − dh_{T-1}) (f 3). The error pass casts e_t to the state dtype and
        forms the step's gate adjoints from it, ḡ[gH+k] = Σ_r e_t[rH+k] F[r, g, k] (the step backward with total
        adjoint e_t, f 4: F is that adjoint for the unit seeds, and the adjoint is linear in its seed);
    (c) the weight gradients are then ONE GEMM each over all (t, b): ḡᵀ (G·H, T·B) @ [x | h_prev], and x̄ = ḡ W_ih
        (runtime.weight_grads, as the BPTT kernels).

Memory: e, P, A (B, S, S) plus the error pass's ḡ and h_prev (T, B, ·) for the GEMMs of (c).
Everything is sequential and in a fixed order: results are bit-reproducible run to run.

lstm.fptt: the warm-up multiplies the step Jacobians' inverses, so the difference between two correct float64 sweeps
(last-bit differences in J_t, a different LU) grows like Π_t 1/σ_min(J_t). The registered lstm.fptt inputs keep that
product small (refimpl/kernels.py: c0 ≥ 1, T ≤ 7); on longer or worse-conditioned inputs two correct sweeps, this one
and the reference, can differ far beyond the parity tolerance (docs/backends.md).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from refimpl.cells import CELLS

from ..common import check_nonlinearity
from .online_dense import DENSE, step_factors, sweep_inputs
from .runtime import plan, scalars, weight_grads


# ------------------------------------------------------------------------------------------------ carriers (f 1-3)

@njit(cache=True)
def _advance(A, e, d_prev, P, warm, tmp):
    """(f 1) e[b] ← A[b]⁻¹ (e[b] − d_prev[b]) by a linear solve; (f 2) P[b] ← P[b] A[b] when `warm`."""
    B = e.shape[0]
    for b in range(B):
        e[b] = np.linalg.solve(A[b], e[b] - d_prev[b])                  # (f 1)
        if warm:
            np.dot(P[b], A[b], tmp)                                      # (f 2)
            P[b] = tmp


@njit(cache=True)
def _start(P, e, d_last):
    """(f 3) e_{-1} = −P (e'_{T-1} − dh_{T-1}), in place."""
    for b in range(e.shape[0]):
        e[b] = -np.dot(P[b], e[b] - d_last[b])


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
def _fptt_loop(kind, pre, s0, W_hhT, W_hh, b_hh, dh, one, use_tanh, R, two_passes, tied, e_start, h_prev, g_ih,
               g_hh):
    """pre (T, B, G·H) = x W_ihᵀ + b_ih, s0 (B, S), dh (T, B, S) float64 carriers (zero on the lstm's c part); writes
    e_{-1} (B, S) float64, h_prev (T, B, H) and ḡ_ih (T, B, G·H) of the error pass, and ḡ_hh unless `tied`."""
    T, B, GH = pre.shape
    H = W_hh.shape[1]
    G, S = GH // H, R * H
    dt = pre.dtype
    rec, hp, es, col = np.empty((B, GH), dt), np.empty((B, H), dt), np.empty((B, S), dt), np.empty(S, dt)
    F_ih, F_hh, E = np.zeros((B, R, G, H), dt), np.zeros((B, R, G, H), dt), np.zeros((B, R, H), dt)
    A, P, tmp = np.empty((B, S, S)), np.zeros((B, S, S)), np.empty((S, S))
    e, zero = np.zeros((B, S)), np.zeros((B, S))
    s = s0.copy()
    if two_passes:                                                       # phase 1: warm-up from e'_{-1} = 0
        for b in range(B):
            for k in range(S):
                P[b, k, k] = 1.0
        for t in range(T):
            step_factors(kind, pre[t], s, W_hhT, b_hh, one, use_tanh, rec, hp, F_ih, F_hh, E)
            _adjoint_jacobian(F_hh, E, W_hh, A, col)
            _advance(A, e, dh[t - 1] if t > 0 else zero, P, True, tmp)   # (f 1), (f 2)
        _start(P, e, dh[T - 1])                                          # (f 3)
    e_start[:] = e
    s[:] = s0
    for t in range(T):                                                   # phase 2: errors and gate adjoints
        step_factors(kind, pre[t], s, W_hhT, b_hh, one, use_tanh, rec, hp, F_ih, F_hh, E)
        h_prev[t] = hp
        _adjoint_jacobian(F_hh, E, W_hh, A, col)
        _advance(A, e, dh[t - 1] if t > 0 else zero, P, False, tmp)      # (f 1)
        es[:] = e                                                        # e_t in the state dtype
        _gate_adjoints(es, F_ih, g_ih[t])                                # (f 4)
        if not tied:
            _gate_adjoints(es, F_hh, g_hh[t])


def _fptt(cell, params, x, state0, dh, two_passes, nonlinearity="tanh"):
    """warm-up (when two_passes) and error pass of a dense cell → {param, "x", "h0"[, "c0"]}."""
    check_nonlinearity(nonlinearity)
    kind, G, tied = DENSE[cell]
    keys = CELLS[cell].GRAD_STATE_KEYS                                   # ("h0",) or ("h0", "c0"): one per state row
    R = len(keys)
    dt, s0, pre, W_hhT, W_hh, b_hh = sweep_inputs(cell, params, x, state0)
    one, _ = scalars(dt)
    T, B, _ = x.shape
    H = W_hh.shape[1]
    carriers = np.zeros((T, B, R * H))
    carriers[:, :, :H] = dh                                              # dh_t as carriers, zero on the lstm's c part
    e_start, h_prev, g_ih = np.empty((B, R * H)), np.empty((T, B, H), dt), np.empty((T, B, G * H), dt)
    g_hh = g_ih if tied else np.empty((T, B, G * H), dt)
    _fptt_loop(kind, pre, s0, W_hhT, W_hh, b_hh, carriers, one, nonlinearity == "tanh", R, two_passes, tied,
               e_start, h_prev, g_ih, g_hh)
    grads = weight_grads(params, g_ih, None if tied else g_hh, x, h_prev, dt, plan(T, B, H))    # (f 4), (c)
    for r, key in enumerate(keys):
        grads[key] = e_start[:, r * H:(r + 1) * H].astype(dt)                                   # e_{-1}
    return grads


def rnn_fptt(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, nonlinearity: str = "tanh") -> dict:
    """As kernel rnn.fptt: warm-up (f 1-3) then the error pass (f 1, 4) → {param, "x", "h0"}."""
    return _fptt("rnn", params, x, h0, dh, True, nonlinearity)


def rnn_fptt1(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, nonlinearity: str = "tanh") -> dict:
    """As kernel rnn.fptt1: the error pass only, from e_{-1} = 0."""
    return _fptt("rnn", params, x, h0, dh, False, nonlinearity)


def gru_fptt(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray) -> dict:
    """As kernel gru.fptt: warm-up (f 1-3) then the error pass (f 1, 4) → {param, "x", "h0"}."""
    return _fptt("gru", params, x, h0, dh, True)


def gru_fptt1(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray) -> dict:
    """As kernel gru.fptt1: the error pass only, from e_{-1} = 0."""
    return _fptt("gru", params, x, h0, dh, False)


def lstm_fptt(params: dict, x: np.ndarray, state0, dh: np.ndarray) -> dict:
    """As kernel lstm.fptt: warm-up (f 1-3) then the error pass (f 1, 4) → {param, "x", "h0", "c0"}."""
    return _fptt("lstm", params, x, state0, dh, True)


def lstm_fptt1(params: dict, x: np.ndarray, state0, dh: np.ndarray) -> dict:
    """As kernel lstm.fptt1: the error pass only, from e_{-1} = 0."""
    return _fptt("lstm", params, x, state0, dh, False)


KERNELS = {"rnn.fptt": rnn_fptt, "rnn.fptt1": rnn_fptt1, "gru.fptt": gru_fptt, "gru.fptt1": gru_fptt1,
           "lstm.fptt": lstm_fptt, "lstm.fptt1": lstm_fptt1}
