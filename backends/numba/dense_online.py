r"""The dense cells' truncated and spatial sweeps (rnn, gru, lstm .truncated / .spatial) as Numba loops.

Same signatures, output names, dtypes and shapes as the references (refimpl/kernels.py → refimpl/algorithms/rtrl.py
cell_grads_online). Equation numbers: "(r n)" is refimpl/algorithms/rtrl.py, "(n)" the cell's module in refimpl/cells/.

Truncation (r 13) holds s_{t-1} constant, so S_t = P_t and the gradient Σ_t Σ_b Σ_k S_t[b, k, …] δ_t[b, k] (r 4) is
the cell's step backward driven by the instantaneous adjoint δ_t = dh_t alone — the carried adjoint (h̄ and, for
the lstm, c̄ from step t+1) is dropped. So the sweep IS the BPTT kernel of cells.py without its carry: the cell's
Numba forward, then its backward with propagate=False (input projection and weight gradients as GEMMs outside the
time loops, as there).

Spatial (r 14) is the same sweep with weight_hh and bias_hh held constant: their gradients are exact zeros; the states
still run through the full recurrence. Memory is the chunk's cache — the sweep processes one given chunk.

The helpers _dtype, _projection and _weight_grads are shared with dense_fptt.py.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .cells import (_bias_sum, _c, _param_grads, gru_backward, gru_forward, lstm_backward, lstm_forward,
                    rnn_backward, rnn_forward)


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


# ------------------------------------------------------------------------------------------------------ the sweeps

def _truncated(forward, backward, params, x, state0, dh, recurrent, **options):
    """(r 13): forward, then the backward without its carry; (r 14) zeroes the recurrent term's gradients."""
    _, cache = forward(params, x, state0, **options)
    grads = backward(params, dh, cache, propagate=False, **options)
    out = {k: grads[k] for k in params}
    if not recurrent:
        out["weight_hh"], out["bias_hh"] = np.zeros_like(params["weight_hh"]), np.zeros_like(params["bias_hh"])
    return out


def rnn_truncated(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, nonlinearity: str = "tanh") -> dict:
    """As kernel rnn.truncated: S_t = P_t (r 13)."""
    return _truncated(rnn_forward, rnn_backward, params, x, h0, dh, True, nonlinearity=nonlinearity)


def rnn_spatial(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, nonlinearity: str = "tanh") -> dict:
    """As kernel rnn.spatial: (r 13) with weight_hh, bias_hh held constant (zero gradient, r 14)."""
    return _truncated(rnn_forward, rnn_backward, params, x, h0, dh, False, nonlinearity=nonlinearity)


def gru_truncated(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray) -> dict:
    """As kernel gru.truncated: S_t = P_t (r 13)."""
    return _truncated(gru_forward, gru_backward, params, x, h0, dh, True)


def gru_spatial(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray) -> dict:
    """As kernel gru.spatial: (r 13) with weight_hh, bias_hh held constant (zero gradient, r 14)."""
    return _truncated(gru_forward, gru_backward, params, x, h0, dh, False)


def lstm_truncated(params: dict, x: np.ndarray, state0, dh: np.ndarray) -> dict:
    """As kernel lstm.truncated: S_t = P_t (r 13): both h_{t-1} and c_{t-1} held constant."""
    return _truncated(lstm_forward, lstm_backward, params, x, state0, dh, True)


def lstm_spatial(params: dict, x: np.ndarray, state0, dh: np.ndarray) -> dict:
    """As kernel lstm.spatial: (r 13) with weight_hh, bias_hh held constant (zero gradient, r 14)."""
    return _truncated(lstm_forward, lstm_backward, params, x, state0, dh, False)


@njit(cache=True, inline="always")
def gru_point(gi_t, gh, b_hh, h_prev_bk, b, k, H, one, half):
    """One GRU unit's step (eqs. (1)-(5) of refimpl/cells/gru.py) and its gate sensitivities (13), shared by the dense
    RTRL and FPTT sweeps: returns (r, z, m, n, h_t, s_r, s_z, s_n) for batch row b, unit k."""
    rr = half * (one + np.tanh(half * (gi_t[b, k] + (gh[b, k] + b_hh[k]))))               # (1)
    zz = half * (one + np.tanh(half * (gi_t[b, H + k] + (gh[b, H + k] + b_hh[H + k]))))   # (2)
    mm = gh[b, 2 * H + k] + b_hh[2 * H + k]                                              # (3)
    nn = np.tanh(gi_t[b, 2 * H + k] + rr * mm)                                           # (4)
    h = (one - zz) * nn + zz * h_prev_bk                                                 # (5)
    s_n = (one - zz) * (one - nn * nn)                                                   # (13)
    s_r = s_n * mm * rr * (one - rr)                                                     # (13)
    s_z = (h_prev_bk - nn) * zz * (one - zz)                                             # (13)
    return rr, zz, mm, nn, h, s_r, s_z, s_n

KERNELS = {"rnn.truncated": rnn_truncated, "rnn.spatial": rnn_spatial,
           "gru.truncated": gru_truncated, "gru.spatial": gru_spatial,
           "lstm.truncated": lstm_truncated, "lstm.spatial": lstm_spatial}
