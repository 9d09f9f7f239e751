r"""The dense cells' truncated and spatial sweeps (rnn, gru, lstm .truncated / .spatial) as Numba loops.

Same signatures, output names, dtypes and shapes as the references (refimpl/kernels.py → refimpl/rtrl.py
cell_grads_online). Equation numbers: "(r n)" is refimpl/rtrl.py, "(n)" the cell's module in refimpl/cells/.

Truncation (r 13) holds s_{t-1} constant, so S_t = P_t and the gradient Σ_t Σ_b Σ_k S_t[b, k, …] δ_t[b, k] (r 4) is
the cell's step backward driven by the instantaneous adjoint δ_t = dh_t alone — the carried adjoint (h̄ and, for
the lstm, c̄ from step t+1) is dropped. So the sweep is the BPTT kernel of cells.py without its carry:

    (a) the input projection of all T steps is ONE GEMM outside the time loop (as cells.py);
    (b) ONE @njit(cache=True) loop runs the states forward (per step one BLAS GEMM h_{t-1} W_hhᵀ) and, in the same
        fused pass over (b, k), forms the step's gate adjoints ḡ_t from dh_t only (no second time loop, no cache);
    (c) the weight gradients are then ONE GEMM each over all (t, b): ḡᵀ (G·H, T·B) @ [x | h_prev] (T·B, ·).

Spatial (r 14) is the same sweep with weight_hh and bias_hh held constant: their gradients are exact zeros and their
GEMM is skipped; the states still run through the full recurrence. Memory is O(T·B·G·H) for the chunk's gate
adjoints and h_prev — the sweep processes one given chunk. Everything is sequential and in a fixed order.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .cells import _bias_sum, _c, _check_nonlinearity, _consts, _param_grads


def _dtype(params, x, h0, *more):
    return np.result_type(x, params["weight_ih"], h0, *more)


def _projection(params, x, dt):
    """x W_ihᵀ + b_ih for all T steps, (T, B, G·H): one GEMM (rule (a))."""
    T, B, I = x.shape
    W_ih = _c(params["weight_ih"], dt)
    return (_c(x, dt).reshape(T * B, I) @ W_ih.T + params["bias_ih"].astype(dt)).reshape(T, B, W_ih.shape[0])


def _weight_grads(params, x, h_prev, g_ih, g_hh, recurrent, dt):
    """(c): weight_ih = ḡ_ihᵀ x, weight_hh = ḡ_hhᵀ h_prev, biases Σ ḡ over (t, b); zeros for the held ones (r 14)."""
    T, B, GH = g_ih.shape
    gi2 = g_ih.reshape(T * B, GH)
    out = {"weight_ih": gi2.T @ _c(x, dt).reshape(T * B, -1), "bias_ih": _bias_sum(gi2)}
    if recurrent:
        gh2 = gi2 if g_hh is None else g_hh.reshape(T * B, GH)
        out["weight_hh"] = gh2.T @ h_prev.reshape(T * B, -1)
        out["bias_hh"] = out["bias_ih"] if g_hh is None else _bias_sum(gh2)
    else:
        out["weight_hh"] = np.zeros_like(params["weight_hh"])                  # (r 14) held constant
        out["bias_hh"] = np.zeros_like(params["bias_hh"])
    return _param_grads(params, out)


# ---------------------------------------------------------------------------------------------------------------- rnn

@njit(cache=True)
def _rnn_loop(pre, h0, W_hhT, b_hh, dh, use_tanh, one, h_prev, da):
    """pre (T, B, H) = x W_ihᵀ + b_ih; writes h_prev (T, B, H) and the truncated adjoints da (T, B, H)."""
    T, B, H = pre.shape
    rec = np.empty((B, H), pre.dtype)
    h = h0.copy()
    for t in range(T):
        h_prev[t] = h
        np.dot(h_prev[t], W_hhT, rec)                                          # (1) W_hh h_{t-1}
        for b in range(B):
            for k in range(H):
                a = pre[t, b, k] + rec[b, k] + b_hh[k]                         # (1)
                if use_tanh:
                    hk = np.tanh(a)                                            # (2)
                    da[t, b, k] = dh[t, b, k] * (one - hk * hk)                # (3) with h̄_t = dh_t (r 13)
                else:
                    hk = a
                    da[t, b, k] = dh[t, b, k]                                  # (3)
                h[b, k] = hk


def _rnn_sweep(params, x, h0, dh, nonlinearity, recurrent):
    _check_nonlinearity(nonlinearity)
    T, B, _ = x.shape
    dt = _dtype(params, x, h0)
    one, _ = _consts(dt)
    H = params["weight_hh"].shape[0]
    h_prev, da = np.empty((T, B, H), dt), np.empty((T, B, H), dt)
    _rnn_loop(_projection(params, x, dt), _c(h0, dt), _c(params["weight_hh"].T, dt), _c(params["bias_hh"], dt),
              _c(dh, dt), nonlinearity == "tanh", one, h_prev, da)
    return _weight_grads(params, x, h_prev, da, None, recurrent, dt)                 # (4), (r 4)


def rnn_truncated(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, nonlinearity: str = "tanh") -> dict:
    """As kernel rnn.truncated: S_t = P_t (r 13)."""
    return _rnn_sweep(params, x, h0, dh, nonlinearity, True)


def rnn_spatial(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, nonlinearity: str = "tanh") -> dict:
    """As kernel rnn.spatial: (r 13) with weight_hh, bias_hh held constant (zero gradient, r 14)."""
    return _rnn_sweep(params, x, h0, dh, nonlinearity, False)


# ---------------------------------------------------------------------------------------------------------------- gru

@njit(cache=True)
def _gru_loop(gi, h0, W_hhT, b_hh, dh, one, half, h_prev, dg_ih, dg_hh):
    """gi (T, B, 3H) = x W_ihᵀ + b_ih; writes h_prev (T, B, H) and ḡ_ih, ḡ_hh (T, B, 3H) of eq. (10) from dh_t."""
    T, B, H3 = gi.shape
    H = H3 // 3
    gh = np.empty((B, H3), gi.dtype)
    h = h0.copy()
    for t in range(T):
        h_prev[t] = h
        np.dot(h_prev[t], W_hhT, gh)
        for b in range(B):
            for k in range(H):
                rr = half * (one + np.tanh(half * (gi[t, b, k] + (gh[b, k] + b_hh[k]))))                # (1)
                zz = half * (one + np.tanh(half * (gi[t, b, H + k] + (gh[b, H + k] + b_hh[H + k]))))    # (2)
                m = gh[b, 2 * H + k] + b_hh[2 * H + k]                                                 # (3)
                nn = np.tanh(gi[t, b, 2 * H + k] + rr * m)                                             # (4)
                hp = h_prev[t, b, k]
                h[b, k] = (one - zz) * nn + zz * hp                                                    # (5)
                g = dh[t, b, k]                                                  # h̄_t = dh_t (r 13)
                da_n = g * (one - zz) * (one - nn * nn)                          # (6), (7)
                da_z = g * (hp - nn) * zz * (one - zz)                           # (6), (9)
                da_r = da_n * m * rr * (one - rr)                                # (8), (9)
                dg_ih[t, b, k], dg_ih[t, b, H + k], dg_ih[t, b, 2 * H + k] = da_r, da_z, da_n           # (10)
                dg_hh[t, b, k], dg_hh[t, b, H + k], dg_hh[t, b, 2 * H + k] = da_r, da_z, da_n * rr      # (10)


def _gru_sweep(params, x, h0, dh, recurrent):
    T, B, _ = x.shape
    dt = _dtype(params, x, h0)
    one, half = _consts(dt)
    H = params["weight_hh"].shape[1]
    h_prev = np.empty((T, B, H), dt)
    dg_ih, dg_hh = np.empty((T, B, 3 * H), dt), np.empty((T, B, 3 * H), dt)
    _gru_loop(_projection(params, x, dt), _c(h0, dt), _c(params["weight_hh"].T, dt), _c(params["bias_hh"], dt),
              _c(dh, dt), one, half, h_prev, dg_ih, dg_hh)
    return _weight_grads(params, x, h_prev, dg_ih, dg_hh, recurrent, dt)             # (10), (r 4)


def gru_truncated(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray) -> dict:
    """As kernel gru.truncated: S_t = P_t (r 13)."""
    return _gru_sweep(params, x, h0, dh, True)


def gru_spatial(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray) -> dict:
    """As kernel gru.spatial: (r 13) with weight_hh, bias_hh held constant (zero gradient, r 14)."""
    return _gru_sweep(params, x, h0, dh, False)


# --------------------------------------------------------------------------------------------------------------- lstm

@njit(cache=True)
def _lstm_loop(pre, h0, c0, W_hhT, b_hh, dh, one, half, h_prev, da):
    """pre (T, B, 4H) = x W_ihᵀ + b_ih; writes h_prev (T, B, H) and ā (T, B, 4H) of eq. (9) from dh_t only
    (h_{t-1} and c_{t-1} held constant: no h̄ nor c̄ carried, r 13)."""
    T, B, H4 = pre.shape
    H = H4 // 4
    rec = np.empty((B, H4), pre.dtype)
    h, c = h0.copy(), c0.copy()
    for t in range(T):
        h_prev[t] = h
        np.dot(h_prev[t], W_hhT, rec)                                                        # (1) W_hh h_{t-1}
        for b in range(B):
            for k in range(H):
                ii = half * (one + np.tanh(half * (pre[t, b, k] + rec[b, k] + b_hh[k])))                   # (1)(2)
                ff = half * (one + np.tanh(half * (pre[t, b, H + k] + rec[b, H + k] + b_hh[H + k])))       # (1)(2)
                gg = np.tanh(pre[t, b, 2 * H + k] + rec[b, 2 * H + k] + b_hh[2 * H + k])                   # (1)(2)
                oo = half * (one + np.tanh(half * (pre[t, b, 3 * H + k] + rec[b, 3 * H + k] + b_hh[3 * H + k])))
                cp = c[b, k]
                cc = ff * cp + ii * gg                                                                   # (3)
                tc = np.tanh(cc)                                                                         # (4)
                h[b, k], c[b, k] = oo * tc, cc                                                           # (4)
                gh = dh[t, b, k]                                                  # h̄_t = dh_t (r 13)
                dc_hat = gh * oo * (one - tc * tc)                                # (6) no c̄ carried
                da[t, b, k] = dc_hat * gg * ii * (one - ii)                       # (7)(8) ā_i
                da[t, b, H + k] = dc_hat * cp * ff * (one - ff)                   # (7)(8) ā_f
                da[t, b, 2 * H + k] = dc_hat * ii * (one - gg * gg)               # (7)(8) ā_g
                da[t, b, 3 * H + k] = gh * tc * oo * (one - oo)                   # (5)(8) ā_o


def _lstm_sweep(params, x, state0, dh, recurrent):
    h0, c0 = state0
    T, B, _ = x.shape
    dt = _dtype(params, x, h0, c0)
    one, half = _consts(dt)
    H = params["weight_hh"].shape[1]
    h_prev, da = np.empty((T, B, H), dt), np.empty((T, B, 4 * H), dt)
    _lstm_loop(_projection(params, x, dt), _c(h0, dt), _c(c0, dt), _c(params["weight_hh"].T, dt),
               _c(params["bias_hh"], dt), _c(dh, dt), one, half, h_prev, da)
    return _weight_grads(params, x, h_prev, da, None, recurrent, dt)                 # (9), (r 4)


def lstm_truncated(params: dict, x: np.ndarray, state0, dh: np.ndarray) -> dict:
    """As kernel lstm.truncated: S_t = P_t (r 13)."""
    return _lstm_sweep(params, x, state0, dh, True)


def lstm_spatial(params: dict, x: np.ndarray, state0, dh: np.ndarray) -> dict:
    """As kernel lstm.spatial: (r 13) with weight_hh, bias_hh held constant (zero gradient, r 14)."""
    return _lstm_sweep(params, x, state0, dh, False)


KERNELS = {"rnn.truncated": rnn_truncated, "rnn.spatial": rnn_spatial,
           "gru.truncated": gru_truncated, "gru.spatial": gru_spatial,
           "lstm.truncated": lstm_truncated, "lstm.spatial": lstm_spatial}
