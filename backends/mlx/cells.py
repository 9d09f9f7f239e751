r"""The cell kernels (rnn, gru, lstm, lru forward and backward) written with mlx.core, with the references' outputs.

Each kernel has the signature of its NumPy reference in refimpl/cells/<cell>.py, takes and returns mx.array, and returns
exactly the same structure — forward: (h, <Cell>Cache with every field (T, B, ·)), backward: {param…, "x", "h0"[, "c0"]}
— so a reference forward can feed an MLX backward and vice versa. Equation numbers "(n)" are those of the cell's module
docstring. The layout:

    (a) the input projection of all T steps is ONE GEMM outside the time loop: x (T·B, I) @ W_ihᵀ (+ b_ih);
    (b) the time loop is a Python loop over one mx.compile'd step: per step one GEMM h_{t-1} @ W_hhᵀ and the gate
        arithmetic fused into one compiled kernel. The loop only builds MLX's lazy graph; `@kernel` evaluates it once;
    (c) the backward loop keeps the per-step gate adjoints ḡ_t; the weight gradients are then ONE GEMM each,
        ḡᵀ (G·H, T·B) @ [x | h_prev] (T·B, ·), and x̄ = ḡ @ W_ih is one more.

`*_forward_graph` / `*_backward_graph` build the graph without evaluating it (the RTRL-family and FPTT modules reuse
them); the registered kernels are the `@kernel` wrappers. The compiled steps (rnn_step, gru_step, lstm_step), the rnn's
slope and the gate adjoints (gru_gate_adjoints, lstm_gate_adjoints) are the only place a cell's gate math is written in
this backend: online_dense.py and fptt_dense.py step the cells through them. MLX arrays are immutable, so no input can
be mutated.
NOTE: sums over (t, b) are single GEMMs or reductions instead of the reference's per-step sums: the same values up to
the order of the additions (float32 parity ≤ 1e-4, float64 ≤ 1e-10; tests/backends/test_parity.py).
"""

from __future__ import annotations

import mlx.core as mx

from refimpl.cells.gru import GRUCache
from refimpl.cells.lru import LRUCache
from refimpl.cells.lstm import LSTMCache, LSTMState
from refimpl.cells.rnn import RNNCache
from refimpl.errors import UnsupportedError

from ..common import check_nonlinearity, lru_param_grads, param_grads, previous_states
from .runtime import complex_from, kernel, lru_adjoint_metal, lru_scan_metal, project, rows, sigmoid, transposed


def weight_grads(x, h_prev, g_ih, g_hh=None) -> dict:
    """(c): W̄_ih = ḡ_ihᵀ x, W̄_hh = ḡ_hhᵀ h_prev, b̄ = Σ_{t,b} ḡ — one GEMM or reduction each, over all (t, b).
    g_hh=None: the same adjoints feed both weights (rnn, lstm)."""
    gi2 = rows(g_ih)
    gh2 = gi2 if g_hh is None else rows(g_hh)
    return {"weight_ih": gi2.T @ rows(x).astype(gi2.dtype), "bias_ih": gi2.sum(axis=0),
            "weight_hh": gh2.T @ rows(h_prev), "bias_hh": gh2.sum(axis=0)}


def input_grad(params: dict, x, g_ih):
    """x̄ = ḡ_ih @ W_ih for all (t, b): one GEMM, eq. (5)/(11)/(10) of the cells."""
    return (rows(g_ih) @ params["weight_ih"]).reshape(x.shape).astype(x.dtype)


# ---------------------------------------------------------------------------------------------------------------- rnn

@mx.compile
def rnn_step(pre_t, h_prev, W_hhT, b_hh, use_tanh):
    """One step (1)–(2) from the input part pre_t = W_ih x_t + b_ih (B, H) → h_t."""
    a = pre_t + h_prev @ W_hhT + b_hh                                        # (1)
    return mx.tanh(a) if use_tanh else a                                     # (2)


def rnn_slope(h, use_tanh):
    """φ'(a_t) from h_t = φ(a_t), eq. (3): 1 − h² for tanh, 1 for the identity."""
    return 1.0 - h * h if use_tanh else mx.ones_like(h)


@mx.compile
def _rnn_step_back(g, h_t, W_hh, use_tanh, propagate):
    """h̄_t → (ā_t, h̄_{t-1} contribution)."""
    da = g * rnn_slope(h_t, use_tanh)                                        # (3)
    return da, (da @ W_hh if propagate else mx.zeros_like(g))                 # (5)


def rnn_forward_graph(params, x, h0, nonlinearity="tanh"):
    check_nonlinearity(nonlinearity)
    pre = project(x, params["weight_ih"], params["bias_ih"])                 # (1) input part, all t
    W_hhT = transposed(params["weight_hh"])
    h_t, hs = h0, []
    for t in range(x.shape[0]):
        h_t = rnn_step(pre[t], h_t, W_hhT, params["bias_hh"], nonlinearity == "tanh")
        hs.append(h_t)
    h = mx.stack(hs)
    return h, RNNCache(x=x, h_prev=previous_states(mx, h0, h), h=h)


def rnn_backward_graph(params, dh, cache, nonlinearity="tanh", propagate=True):
    """propagate=False drops the carried adjoint (h_{t-1} held constant: the truncated gradient,
    refimpl/algorithms/rtrl.py)."""
    check_nonlinearity(nonlinearity)
    T = dh.shape[0]
    carry, das = mx.zeros_like(dh[0]), [None] * T
    for t in reversed(range(T)):
        das[t], carry = _rnn_step_back(dh[t] + carry, cache.h[t], params["weight_hh"],
                                       nonlinearity == "tanh", propagate)       # (6) h̄_t = dh_t + carried part
    da = mx.stack(das)
    grads = param_grads(params, weight_grads(cache.x, cache.h_prev, da))    # (4)
    grads["x"], grads["h0"] = input_grad(params, cache.x, da), carry               # (5)
    return grads


@kernel
def rnn_forward(params: dict, x: mx.array, h0: mx.array, nonlinearity: str = "tanh"):
    """As refimpl.cells.rnn.forward: x (T, B, I), h0 (B, H) → h (T, B, H), RNNCache (T, ·)."""
    return rnn_forward_graph(params, x, h0, nonlinearity)


@kernel
def rnn_backward(params: dict, dh: mx.array, cache: RNNCache, nonlinearity: str = "tanh") -> dict:
    """As refimpl.cells.rnn.backward: → {param: grad, "x" (T, B, I), "h0" (B, H)}."""
    return rnn_backward_graph(params, dh, cache, nonlinearity)


# ---------------------------------------------------------------------------------------------------------------- gru

@mx.compile
def gru_step(gi_t, h_prev, W_hhT, b_hh):
    """One step (1)–(5) from the input part gi_t = W_ih x_t + b_ih (B, 3H) → h_t, r, z, n, m."""
    H = h_prev.shape[-1]
    gh = h_prev @ W_hhT + b_hh                                               # recurrent parts of (1), (2), (3)
    r = sigmoid(gi_t[:, :H] + gh[:, :H])                                     # (1)
    z = sigmoid(gi_t[:, H:2 * H] + gh[:, H:2 * H])                           # (2)
    m = gh[:, 2 * H:]                                                        # (3) m = W_hn h_{t-1} + b_hn
    n = mx.tanh(gi_t[:, 2 * H:] + r * m)                                     # (4)
    h = (1.0 - z) * n + z * h_prev                                           # (5)
    return h, r, z, n, m


@mx.compile
def gru_gate_adjoints(g, h_prev, r, z, n, m):
    """h̄_t → ḡ_ih = [ā_r, ā_z, ā_n], ḡ_hh = [ā_r, ā_z, m̄] (B, 3H), eqs. (6)–(10)."""
    dn = g * (1.0 - z)                                                       # (6)
    dz = g * (h_prev - n)                                                    # (6)
    da_n = dn * (1.0 - n * n)                                                # (7)
    dr = da_n * m                                                            # (8)
    dm = da_n * r                                                            # (8)
    da_z = dz * z * (1.0 - z)                                                # (9)
    da_r = dr * r * (1.0 - r)                                                # (9)
    return mx.concatenate([da_r, da_z, da_n], axis=-1), mx.concatenate([da_r, da_z, dm], axis=-1)   # (10)


def gru_forward_graph(params, x, h0):
    gi = project(x, params["weight_ih"], params["bias_ih"])                  # (1)(2)(4) input parts, all t
    W_hhT = transposed(params["weight_hh"])
    h_t, steps = h0, []
    for t in range(x.shape[0]):
        step = gru_step(gi[t], h_t, W_hhT, params["bias_hh"])
        h_t = step[0]
        steps.append(step)
    h, r, z, n, m = (mx.stack(f) for f in zip(*steps))
    return h, GRUCache(x=x, h_prev=previous_states(mx, h0, h), r=r, z=z, n=n, hn=m, h=h)


def gru_backward_graph(params, dh, cache, propagate=True):
    c, T = cache, dh.shape[0]
    carry, g_ih, g_hh = mx.zeros_like(dh[0]), [None] * T, [None] * T
    for t in reversed(range(T)):
        g = dh[t] + carry                                                    # (12) h̄_t
        g_ih[t], g_hh[t] = gru_gate_adjoints(g, c.h_prev[t], c.r[t], c.z[t], c.n[t], c.hn[t])
        carry = g * c.z[t] + g_hh[t] @ params["weight_hh"] if propagate else mx.zeros_like(g)   # (11)
    g_ih, g_hh = mx.stack(g_ih), mx.stack(g_hh)
    grads = param_grads(params, weight_grads(c.x, c.h_prev, g_ih, g_hh))    # (10)
    grads["x"], grads["h0"] = input_grad(params, c.x, g_ih), carry                  # (11)
    return grads


@kernel
def gru_forward(params: dict, x: mx.array, h0: mx.array):
    """As refimpl.cells.gru.forward: x (T, B, I), h0 (B, H) → h (T, B, H), GRUCache (T, ·)."""
    return gru_forward_graph(params, x, h0)


@kernel
def gru_backward(params: dict, dh: mx.array, cache: GRUCache) -> dict:
    """As refimpl.cells.gru.backward: → {param: grad, "x" (T, B, I), "h0" (B, H)}."""
    return gru_backward_graph(params, dh, cache)


# --------------------------------------------------------------------------------------------------------------- lstm

@mx.compile
def lstm_step(pre_t, h_prev, c_prev, W_hhT, b_hh):
    """One step (1)–(4) from the input part pre_t = W_ih x_t + b_ih (B, 4H) → h, c, i, f, g, o, tanh(c)."""
    H = h_prev.shape[-1]
    a = pre_t + h_prev @ W_hhT + b_hh                                        # (1)
    i, f = sigmoid(a[:, :H]), sigmoid(a[:, H:2 * H])                         # (2)
    g, o = mx.tanh(a[:, 2 * H:3 * H]), sigmoid(a[:, 3 * H:])                 # (2)
    c = f * c_prev + i * g                                                   # (3)
    tanh_c = mx.tanh(c)                                                      # (4)
    return o * tanh_c, c, i, f, g, o, tanh_c                                 # (4) h = o ⊙ tanh(c)


@mx.compile
def lstm_gate_adjoints(dh, dc, c_prev, i, f, g, o, tanh_c):
    """(h̄_t, c̄_t) → (ā (B, 4H), c̄_{t-1}), eqs. (5)–(8)."""
    do = dh * tanh_c                                                         # (5)
    dc_hat = dc + dh * o * (1.0 - tanh_c * tanh_c)                           # (6) both paths into c_t
    da = mx.concatenate([dc_hat * g * i * (1.0 - i),                         # (7)(8) ā_i
                         dc_hat * c_prev * f * (1.0 - f),                    # (7)(8) ā_f
                         dc_hat * i * (1.0 - g * g),                         # (7)(8) ā_g
                         do * o * (1.0 - o)], axis=-1)                       # (5)(8) ā_o
    return da, dc_hat * f                                                    # (7) c̄_{t-1}


def lstm_forward_graph(params, x, state0):
    h0, c0 = state0
    pre = project(x, params["weight_ih"], params["bias_ih"])                 # (1) input part, all t
    W_hhT = transposed(params["weight_hh"])
    h_t, c_t, steps = h0, c0, []
    for t in range(x.shape[0]):
        step = lstm_step(pre[t], h_t, c_t, W_hhT, params["bias_hh"])
        h_t, c_t = step[0], step[1]
        steps.append(step)
    h, c, i, f, g, o, tanh_c = (mx.stack(v) for v in zip(*steps))
    return h, LSTMCache(x=x, h_prev=previous_states(mx, h0, h), c_prev=previous_states(mx, c0, c), i=i, f=f, g=g,
                        o=o, c=c, tanh_c=tanh_c, h=h)


def lstm_backward_graph(params, dh, cache, propagate=True):
    """propagate=False drops both carried adjoints (h_{t-1} and c_{t-1} held constant: the truncated gradient)."""
    c, T = cache, dh.shape[0]
    carry_h, carry_c, das = mx.zeros_like(dh[0]), mx.zeros_like(dh[0]), [None] * T
    for t in reversed(range(T)):
        das[t], dc_prev = lstm_gate_adjoints(dh[t] + carry_h, carry_c, c.c_prev[t], c.i[t], c.f[t], c.g[t],
                                             c.o[t], c.tanh_c[t])                   # (11) h̄_t = dh_t + carried
        if propagate:
            carry_h, carry_c = das[t] @ params["weight_hh"], dc_prev                # (10), (7)
    da = mx.stack(das)
    grads = param_grads(params, weight_grads(c.x, c.h_prev, da))           # (9)
    grads["x"] = input_grad(params, c.x, da)                                        # (10)
    grads["h0"], grads["c0"] = carry_h, carry_c
    return grads


@kernel
def lstm_forward(params: dict, x: mx.array, state0: LSTMState):
    """As refimpl.cells.lstm.forward: x (T, B, I), state0 LSTMState(h0, c0) → h (T, B, H), LSTMCache (T, ·)."""
    return lstm_forward_graph(params, x, state0)


@kernel
def lstm_backward(params: dict, dh: mx.array, cache: LSTMCache) -> dict:
    """As refimpl.cells.lstm.backward: → {param: grad, "x" (T, B, I), "h0" (B, H), "c0" (B, H)}."""
    return lstm_backward_graph(params, dh, cache)


# ---------------------------------------------------------------------------------------------------------------- lru
#
# Complex64 throughout (MLX has no complex128; float64 LRU kernels are refused by unsupported_dtype). The real-input
# GEMMs are two real GEMMs each: with W_re = γ ⊙ B_re, W_im = γ ⊙ B_im (rows scaled by γ),
#     u = γ ⊙ (B x) = x W_reᵀ + i x W_imᵀ                                                              (2)
#     x̄ = Re((γ ⊙ ū) conj(B)) = Re ū W_re + Im ū W_im                                                    (6)
#     M = Σ_{t,b} ū_tᵀ x_t = Re ūᵀ x + i Im ūᵀ x;  G = γ ⊙ M;  γ̄ = Σ_i (B_re ⊙ Re M + B_im ⊙ Im M)        (6)

def lambda_gamma(params):
    """λ c(N) = exp(−exp(ν_log) + i exp(θ_log)) and γ r(N) = exp(γ_log), eq. (1). Float32 parameters only: float64
    ones would need complex128 states, which MLX does not have (refused here rather than computed in complex64)."""
    if params["nu_log"].dtype != mx.float32:
        raise UnsupportedError(f"the MLX lru kernels take float32 parameters (complex64 states), got "
                               f"{params['nu_log'].dtype}: MLX has no complex128 for the float64 lru; convert the "
                               f"parameters to float32, or use the numpy/numba backends for float64")
    lam = mx.exp(complex_from(-mx.exp(params["nu_log"]), mx.exp(params["theta_log"])))   # (1)
    return lam, mx.exp(params["gamma_log"])                                               # (1)


def lru_input(params, x, gamma):
    """u_t = γ ⊙ (B x_t) for all T steps, c(T, B, N): two real GEMMs, eq. (2)."""
    g = gamma[:, None]
    return complex_from(project(x, g * params["B_re"]), project(x, g * params["B_im"]))


@mx.compile
def _lru_step(lam, h_prev, u_t):
    return lam * h_prev + u_t                                                # (3)


@mx.compile
def _lru_step_back(lam, g):
    return mx.conj(lam) * g                                                  # (5) h̄_{t-1} contribution


def lru_scan(lam, h0, u):
    """h_t = λ ⊙ h_{t-1} + u_t for t = 0 … T-1, eq. (3) → h c(T, B, N)."""
    h_t, hs = h0, []
    for t in range(u.shape[0]):
        h_t = _lru_step(lam, h_t, u[t])
        hs.append(h_t)
    return mx.stack(hs)


def lru_adjoint_scan(lam, dh):
    """ū_t = h̄_t = dh_t + conj(λ) ⊙ h̄_{t+1}, t = T-1 … 0, eq. (8) → (ū c(T, B, N), h̄_{-1} c(B, N))."""
    T = dh.shape[0]
    carry, du = mx.zeros_like(dh[0]), [None] * T
    for t in reversed(range(T)):
        du[t] = dh[t] + carry                                                # (8) h̄_t
        carry = _lru_step_back(lam, du[t])                                   # (5)
    return mx.stack(du), carry


def lru_grads(params, lam, gamma, x, h_prev, du):
    """Every parameter's gradient and x̄ from the step adjoints ū_t c(T, B, N), eqs. (5)–(7), summed over (t, b)."""
    du_re, du_im = mx.real(du), mx.imag(du)
    x2 = rows(x)
    M_re, M_im = rows(du_re).T @ x2, rows(du_im).T @ x2                       # (6) M = Σ ūᵀ x  (N, I) ×2
    q = mx.conj(lam) * mx.sum(rows(mx.conj(h_prev) * du), axis=0)            # (5), (7) conj(λ) λ̄
    grads = lru_param_grads(mx, params, mx.real(q), mx.imag(q), M_re, M_im, gamma, wide=False)      # (6), (7)
    g = gamma[:, None]
    dx = rows(du_re) @ (g * params["B_re"]) + rows(du_im) @ (g * params["B_im"])   # (6) x̄
    grads["x"] = dx.reshape(x.shape).astype(x.dtype)
    return grads


def lru_forward_graph(params, x, h0):
    lam, gamma = lambda_gamma(params)                                        # (1)
    h = lru_scan(lam, h0, lru_input(params, x, gamma))                       # (2), (3)
    return h, LRUCache(x=x, h_prev=previous_states(mx, h0, h), h=h)


@kernel
def lru_forward(params: dict, x: mx.array, h0: mx.array):
    """As refimpl.cells.lru.forward: x r(T, B, I), h0 c(B, N) → h c(T, B, N), LRUCache (T, ·)."""
    return lru_forward_graph(params, x, h0)


@kernel
def lru_backward(params: dict, dh: mx.array, cache: LRUCache) -> dict:
    """As refimpl.cells.lru.backward: dh c(T, B, N) → {param: grad, "x" r(T, B, I), "h0" c(B, N)}."""
    lam, gamma = lambda_gamma(params)
    du, dh0 = lru_adjoint_scan(lam, dh)                                      # (5), (8)
    grads = lru_grads(params, lam, gamma, cache.x, cache.h_prev, du)         # (5)–(7)
    grads["h0"] = dh0
    return grads


@kernel
def lru_forward_metal(params: dict, x: mx.array, h0: mx.array):
    """As lru_forward, with the scan (3) as one Metal kernel (runtime.LRU_SCAN)."""
    lam, gamma = lambda_gamma(params)                                        # (1)
    h = lru_scan_metal(lam, h0, lru_input(params, x, gamma))                 # (2), (3)
    return h, LRUCache(x=x, h_prev=previous_states(mx, h0, h), h=h)


@kernel
def lru_backward_metal(params: dict, dh: mx.array, cache: LRUCache) -> dict:
    """As lru_backward, with the adjoint scan (8) as one Metal kernel (runtime.LRU_ADJOINT)."""
    lam, gamma = lambda_gamma(params)
    du, dh0 = lru_adjoint_metal(lam, dh)                                     # (5), (8)
    grads = lru_grads(params, lam, gamma, cache.x, cache.h_prev, du)         # (5)–(7)
    grads["h0"] = dh0
    return grads


KERNELS = {
    "rnn.forward": rnn_forward, "rnn.backward": rnn_backward,
    "gru.forward": gru_forward, "gru.backward": gru_backward,
    "lstm.forward": lstm_forward, "lstm.backward": lstm_backward,
    "lru.forward": lru_forward, "lru.backward": lru_backward,
}

#: The lru cells with the Metal scans: registered in place of lru_forward / lru_backward where Metal runs.
METAL_KERNELS = {"lru.forward": lru_forward_metal, "lru.backward": lru_backward_metal}
