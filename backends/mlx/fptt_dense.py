r"""The dense cells' FPTT sweeps (rnn, gru, lstm .fptt / .fptt1) with mlx.core.

Same signatures, output names, dtypes and shapes as the references (refimpl/kernels.py → refimpl/algorithms/fptt.py
fptt_cell_grads with check=False, float64 carriers). Equation numbers: "(f n)" is refimpl/algorithms/fptt.py, "(n)" the
cell's module docstring. S is the state width: H, or 2H for the lstm's [h; c].

    (a) the states do not depend on the errors, so the cell's forward (cells.py: one input GEMM, one compiled step per
        t) runs once and its cache serves both phases (the reference re-runs the states in each phase);
    (b) per step, J_t (B, S, S) is assembled from the cell's per-unit factors (online_dense.py) in the state dtype and
        cast to float64, as the reference's state_jacobian(…).astype(float64); (f 1) is a batched linear solve
        J_tᵀ e_t = e_{t-1} − dh_{t-1} (mx.linalg.solve, never an inverse); the warm-up also keeps P ← P J_tᵀ (f 2) and
        ends with e_{-1} = −P (e'_{T-1} − dh_{T-1}) (f 3);
    (c) the error pass casts e_t to the state dtype and forms the step's gate adjoints from it (the cells' step backward
        with total adjoint e_t, f 4); the weight gradients are then ONE GEMM each over all (t, b), as in cells.py.
The carriers are float64 in every dtype, so these kernels run on MLX's CPU stream (as mx.linalg does anyway).
"""

from __future__ import annotations

import mlx.core as mx

from refimpl.cells import CELLS
from refimpl.cells.lstm import LSTMState

from ..common import check_nonlinearity, param_grads
from .cells import (gru_forward_graph, gru_gate_adjoints, input_grad, lstm_forward_graph, lstm_gate_adjoints,
                    rnn_forward_graph, rnn_slope, weight_grads)
from .online_dense import dense_jacobian, gru_factors, lstm_factors, rnn_factors
from .runtime import kernel


def _carriers(name, dh):
    """dh (T, B, H) as float64 carriers (T, B, S), zero on the lstm's c part."""
    d = dh.astype(mx.float64)
    return mx.concatenate([d] + [mx.zeros_like(d)] * (CELLS[name].STATE_ROWS - 1), axis=-1)


def _jacobians_T(name, params, cache, use_tanh):
    """[J_tᵀ] for t = 0 … T-1, float64 (B, S, S), from the forward's cache (the cells' eqs. (7), (14), (13))."""
    c, out = cache, []
    for t in range(c.h.shape[0]):
        if name == "rnn":
            _, F_hh, E = rnn_factors(c.h[t], use_tanh)
        elif name == "gru":
            _, F_hh, E = gru_factors(c.h_prev[t], c.r[t], c.z[t], c.n[t], c.hn[t])
        else:
            _, F_hh, E = lstm_factors(c.c_prev[t], c.i[t], c.f[t], c.g[t], c.o[t], c.tanh_c[t])
        out.append(dense_jacobian(F_hh, E, params["weight_hh"]).astype(mx.float64).transpose(0, 2, 1))
    return out


def _solve(A, v):
    """A⁻¹ v for a batch: (B, S, S), (B, S) → (B, S), by a linear solve (f 1)."""
    return mx.linalg.solve(A, v[..., None], stream=mx.cpu)[..., 0]


def _errors(JT, d, two_passes):
    """The exact errors e_t (f 1) for t = 0 … T-1 and e_{-1}, float64 (B, S): the warm-up (f 1–3) when two_passes,
    else e_{-1} = 0 (fptt1)."""
    T, B, S = d.shape
    e = mx.zeros((B, S), dtype=mx.float64)
    if two_passes:                                                           # phase 1: warm-up from e'_{-1} = 0
        P = mx.broadcast_to(mx.eye(S, dtype=mx.float64), (B, S, S))
        for t in range(T):
            e = _solve(JT[t], e - d[t - 1] if t > 0 else e)                  # (f 1)
            P = P @ JT[t]                                                    # (f 2)
        e = -(P @ (e - d[T - 1])[..., None])[..., 0]                         # (f 3)
    e_start, es = e, []
    for t in range(T):                                                       # phase 2: the exact errors
        e = _solve(JT[t], e - d[t - 1] if t > 0 else e)                      # (f 1)
        es.append(e)
    return e_start, es


def _fptt(name, params, x, state0, dh, two_passes, nonlinearity=None):
    use_tanh = nonlinearity == "tanh"
    if name == "rnn":
        check_nonlinearity(nonlinearity)
        _, cache = rnn_forward_graph(params, x, state0, nonlinearity)
    elif name == "gru":
        _, cache = gru_forward_graph(params, x, state0)
    else:
        _, cache = lstm_forward_graph(params, x, LSTMState(*state0))
    e_start, es = _errors(_jacobians_T(name, params, cache, use_tanh), _carriers(name, dh), two_passes)
    sdt, H, c = dh.dtype, dh.shape[-1], cache
    g_ih, g_hh = [], []
    for t, e in enumerate(es):                                               # (f 4): step backward with h̄_t = e_t
        e = e.astype(sdt)
        if name == "rnn":
            g_ih.append(e * rnn_slope(c.h[t], use_tanh))                      # (3) ā_t
        elif name == "gru":
            gi, gh = gru_gate_adjoints(e, c.h_prev[t], c.r[t], c.z[t], c.n[t], c.hn[t])   # (6)–(10)
            g_ih.append(gi)
            g_hh.append(gh)
        else:
            da, _ = lstm_gate_adjoints(e[:, :H], e[:, H:], c.c_prev[t], c.i[t], c.f[t], c.g[t], c.o[t], c.tanh_c[t])
            g_ih.append(da)                                                  # (5)–(8)
    g_ih = mx.stack(g_ih)
    grads = param_grads(params, weight_grads(x, c.h_prev, g_ih, mx.stack(g_hh) if g_hh else None))
    grads["x"] = input_grad(params, x, g_ih)
    for r, key in enumerate(CELLS[name].GRAD_STATE_KEYS):                    # e_{-1}: h̄_{-1}[, c̄_{-1}]
        grads[key] = e_start[:, r * H:(r + 1) * H].astype(sdt)
    return grads


@kernel(float64_carriers=True)
def rnn_fptt(params: dict, x: mx.array, h0: mx.array, dh: mx.array, nonlinearity: str = "tanh") -> dict:
    """As kernel rnn.fptt: warm-up (f 1-3) then the error pass (f 1, 4) → {param, "x", "h0"}."""
    return _fptt("rnn", params, x, h0, dh, True, nonlinearity)


@kernel(float64_carriers=True)
def rnn_fptt1(params: dict, x: mx.array, h0: mx.array, dh: mx.array, nonlinearity: str = "tanh") -> dict:
    """As kernel rnn.fptt1: the error pass only, from e_{-1} = 0."""
    return _fptt("rnn", params, x, h0, dh, False, nonlinearity)


@kernel(float64_carriers=True)
def gru_fptt(params: dict, x: mx.array, h0: mx.array, dh: mx.array) -> dict:
    """As kernel gru.fptt: warm-up (f 1-3) then the error pass (f 1, 4) → {param, "x", "h0"}."""
    return _fptt("gru", params, x, h0, dh, True)


@kernel(float64_carriers=True)
def gru_fptt1(params: dict, x: mx.array, h0: mx.array, dh: mx.array) -> dict:
    """As kernel gru.fptt1: the error pass only, from e_{-1} = 0."""
    return _fptt("gru", params, x, h0, dh, False)


@kernel(float64_carriers=True)
def lstm_fptt(params: dict, x: mx.array, state0: LSTMState, dh: mx.array) -> dict:
    """As kernel lstm.fptt: warm-up (f 1-3) then the error pass (f 1, 4) → {param, "x", "h0", "c0"}."""
    return _fptt("lstm", params, x, state0, dh, True)


@kernel(float64_carriers=True)
def lstm_fptt1(params: dict, x: mx.array, state0: LSTMState, dh: mx.array) -> dict:
    """As kernel lstm.fptt1: the error pass only, from e_{-1} = 0."""
    return _fptt("lstm", params, x, state0, dh, False)


KERNELS = {"rnn.fptt": rnn_fptt, "rnn.fptt1": rnn_fptt1, "gru.fptt": gru_fptt, "gru.fptt1": gru_fptt1,
           "lstm.fptt": lstm_fptt, "lstm.fptt1": lstm_fptt1}
