r"""The dense cells' FPTT sweeps (rnn, gru, lstm .fptt / .fptt1) on a CUDA device.

Same signatures (after the device), output names, dtypes and shapes as the references (refimpl/kernels.py →
refimpl/algorithms/fptt.py fptt_cell_grads with check=False, float64 carriers). Equation numbers: "(f n)"
refimpl/algorithms/fptt.py, "(n)" the cell's module in refimpl/cells/. S is the state width: H, or 2H for the lstm's
[h; c].

    (a) the fused forward kernels of cells.py run the states of the chunk (their cache holds every gate);
    (b) the carriers run with CuPy array ops: per step A_t = J_tᵀ (B, S, S) from the step's factors (online_dense's
        unit_factors and jacobian: rnn (7), gru (14), lstm (13)), formed in the state dtype and cast to float64 as the
        reference does;
        e_t = A_t⁻¹ (e_{t-1} − dh_{t-1}) by one batched solve (cuSOLVER via cupy.linalg.solve, never an inverse)
        (f 1); the warm-up also keeps P ← P A_t (one batched GEMM, f 2) and ends with e_{-1} = −P (e'_{T-1} − dh_{T-1})
        (f 3); the error pass stores e_t (T, B, S);
    (c) the gate adjoints of ALL steps come from one launch of the fused backward kernel of sources.py over T·B·H
        threads with propagate = 0 (the total adjoint of every step is its e_t, f 4: nothing is carried); the weight
        gradients are then one GEMM each over all (t, b) and x̄ = ḡ_ih W_ih (cells.weight_grads, cells.input_grad).

NOTE (conditioning): the warm-up inverts the Jacobians, so FPTT amplifies last-bit differences of the states (a GPU's
tanh, FMA contraction and cuBLAS sums differ from NumPy's in the last bit). The registry's inputs (well-conditioned
parameters; lstm.fptt with c0 ≥ 1 and T ≤ 7) keep that amplification well inside the 1e-10 parity tolerance (measured
in docs/backends.md); longer or worse-conditioned LSTM sequences lose this (refimpl/cells/lstm.py (15)-(16)).
"""

from __future__ import annotations

import numpy as np

from refimpl.cells import CELLS

from .cells import input_grad, weight_grads
from .online_dense import FORWARD, jacobian, unit_factors
from .runtime import contiguous
from .sources import CELLS as CELL_SOURCES


def _solve(xp, A, v):
    """A⁻¹ v per batch element (f 1): (B, S, S), (B, S) → (B, S)."""
    return xp.linalg.solve(A, v[..., None])[..., 0]


def carriers(dev, cell, params, cache, dh, two_passes, options):
    """(b): e_{-1} (B, S) and the errors e_t (T, B, S) of the error pass, float64."""
    xp = dev.xp
    T, B, H = dh.shape
    S = CELLS[cell].STATE_ROWS * H
    _, F_hh, E_all = unit_factors(dev, cell, cache, **options)
    W = params["weight_hh"].astype(cache.h.dtype, copy=False)

    def adjoint_jacobian(t):
        """A_t = J_tᵀ in float64, (B, S, S) (the reference's _jacobian_adjoint)."""
        return xp.swapaxes(jacobian(xp, F_hh[t], E_all[t], W), -1, -2).astype(np.float64)

    d = xp.zeros((T, B, S), np.float64)
    d[:, :, :H] = dh                                          # dh_t as carriers, zero on the lstm's c part
    zero = xp.zeros((B, S), np.float64)                      # dh_{-1} = 0
    e = xp.zeros((B, S), np.float64)
    if two_passes:                                                                      # phase 1: warm-up
        P = xp.broadcast_to(xp.eye(S, dtype=np.float64), (B, S, S)).copy()
        for t in range(T):
            A = adjoint_jacobian(t)
            e = _solve(xp, A, e - (d[t - 1] if t > 0 else zero))                        # (f 1)
            P = xp.matmul(P, A)                                                         # (f 2)
        e = -xp.matmul(P, (e - d[T - 1])[..., None])[..., 0]                            # (f 3)
    e_start = e
    errors = xp.empty((T, B, S), np.float64)
    for t in range(T):                                                                  # phase 2: the errors
        e = _solve(xp, adjoint_jacobian(t), e - (d[t - 1] if t > 0 else zero))         # (f 1)
        errors[t] = e
    return e_start, errors


def _fptt(dev, cell, params, x, state0, dh, two_passes, **options):
    xp = dev.xp
    T, B, _ = x.shape
    _, cache = FORWARD[cell](dev, params, x, state0, **options)                       # (a)
    dt = cache.h.dtype
    H = cache.h.shape[-1]
    n = T * B * H
    e_start, errors = carriers(dev, cell, params, cache, dh, two_passes, options)       # (b)
    Es = errors.astype(dt)                                                              # e_t in the state dtype
    zeros = xp.zeros((T, B, H), dt)
    c = cache
    if cell == "rnn":                                                                   # (c) ā_t = e_t ⊙ φ', (3)
        g_ih = xp.empty((T, B, H), dt)
        dev.launch(CELL_SOURCES, "rnn_bwd_step", dt, n, Es, zeros, contiguous(xp, c.h, dt), g_ih,
                   int(options["nonlinearity"] == "tanh"))
        g_hh = None
    elif cell == "gru":                                                                 # (c) (6)-(10), h̄_t = e_t
        g_ih, g_hh = xp.empty((T, B, 3 * H), dt), xp.empty((T, B, 3 * H), dt)
        dev.launch(CELL_SOURCES, "gru_bwd_step", dt, n, Es, xp.zeros((T, B, H), dt), zeros,
                   *(contiguous(xp, a, dt) for a in (c.h_prev, c.r, c.z, c.n, c.hn)), g_ih, g_hh, H, 0)
    else:                                                                               # (c) (5)-(8), (h̄, c̄)_t = e_t
        g_ih, g_hh = xp.empty((T, B, 4 * H), dt), None
        dev.launch(CELL_SOURCES, "lstm_bwd_step", dt, n, contiguous(xp, Es[..., :H], dt), zeros,
                   contiguous(xp, Es[..., H:], dt).copy(),
                   *(contiguous(xp, a, dt) for a in (c.c_prev, c.i, c.f, c.g, c.o, c.tanh_c)), g_ih, H, 0)
    grads = weight_grads(xp, params, c.x, c.h_prev, g_ih, g_hh, dt)                    # (f 4)
    grads["x"] = input_grad(xp, params, g_ih, c.x, dt)                                  # (f 4) x̄_t
    for r, key in enumerate(CELLS[cell].GRAD_STATE_KEYS):                               # e_{-1}: h̄_{-1}[, c̄_{-1}]
        grads[key] = e_start[:, r * H:(r + 1) * H].astype(dt)
    return grads


def rnn_fptt(dev, params, x, h0, dh, nonlinearity="tanh"):
    """As kernel rnn.fptt: warm-up (f 1-3) then the error pass (f 1, 4) → {param, "x", "h0"}."""
    return _fptt(dev, "rnn", params, x, h0, dh, True, nonlinearity=nonlinearity)


def rnn_fptt1(dev, params, x, h0, dh, nonlinearity="tanh"):
    """As kernel rnn.fptt1: the error pass only, from e_{-1} = 0."""
    return _fptt(dev, "rnn", params, x, h0, dh, False, nonlinearity=nonlinearity)


def gru_fptt(dev, params, x, h0, dh):
    """As kernel gru.fptt: warm-up (f 1-3) then the error pass (f 1, 4) → {param, "x", "h0"}."""
    return _fptt(dev, "gru", params, x, h0, dh, True)


def gru_fptt1(dev, params, x, h0, dh):
    """As kernel gru.fptt1: the error pass only, from e_{-1} = 0."""
    return _fptt(dev, "gru", params, x, h0, dh, False)


def lstm_fptt(dev, params, x, state0, dh):
    """As kernel lstm.fptt: warm-up (f 1-3) then the error pass (f 1, 4) → {param, "x", "h0", "c0"} (see the NOTE)."""
    return _fptt(dev, "lstm", params, x, state0, dh, True)


def lstm_fptt1(dev, params, x, state0, dh):
    """As kernel lstm.fptt1: the error pass only, from e_{-1} = 0."""
    return _fptt(dev, "lstm", params, x, state0, dh, False)


IMPLEMENTATIONS = {"rnn.fptt": rnn_fptt, "rnn.fptt1": rnn_fptt1, "gru.fptt": gru_fptt, "gru.fptt1": gru_fptt1,
                   "lstm.fptt": lstm_fptt, "lstm.fptt1": lstm_fptt1}
