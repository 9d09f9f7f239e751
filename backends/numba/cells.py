r"""The cell kernels (rnn, gru, lstm, lru forward and backward) as Numba loops, and the gate math of every cell, once.

Each kernel has the signature of its NumPy reference in refimpl/cells/<cell>.py and returns exactly the same
structure — forward: (h, <Cell>Cache with every field (T, B, ·)), backward: {param…, "x", "h0"[, "c0"]} — so a
reference forward can feed a Numba backward and vice versa. The equation numbers "(n)" are those of the cell's
module docstring. The loops follow the layout rules (a)–(f) of runtime.py: the input projection and the weight
gradients are GEMMs outside the time loops, each time loop runs one block of batch rows with one GEMM
per step (gemm.step_product, on W_hh packed once per call) and one fused pass over (b, k).

The gate functions (rnn_gate, rnn_slope; gru_gates, gru_adjoint; lstm_gates, lstm_adjoint) are the only place a cell's
step and its adjoint are written in this backend: scalar functions of one unit, inlined into the BPTT loops here, into
the RTRL family's and FPTT's step (online_dense.step_factors, which reads each cell's immediate derivatives off its
adjoint seeded with one state row) and into FPTT's error pass. Their transcendental functions are fastmath.tanh and
fastmath.sigmoid (the one σ of the backend), so the loops around them vectorise.

Inputs are never written to; every output is a fresh array. One exception to "one array per output": a forward
returns its states h (and the lstm's c) and the cache's h_prev (c_prev) as two views of one fresh (T+1, B, H) array
[s0, s_0, …, s_{T-1}] (`states`): h_prev[t+1] is h[t], so each state is stored once and written once (every fresh
megabyte costs its first touch, docs/bench/profile-cpus.md). Like every cache field they are read by the backward
pass: write to neither before it.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from refimpl.cells.gru import GRUCache
from refimpl.cells.lru import LRUCache, lambda_gamma
from refimpl.cells.lstm import LSTMCache
from refimpl.cells.rnn import RNNCache

from ..common import check_nonlinearity, lru_param_grads, lru_w2
from .fastmath import sigmoid, tanh
from .gemm import step_buffer, step_product
from .memory import prefetch_write
from .runtime import LOOP, contiguous, in_blocks, input_projection, plan, row_product, scalars, scratch, step_weights
from .runtime import weight_grads


# ------------------------------------------------------------------------------------------ the gate math, once
# One unit (b, k) of one step. The callers sum the pre-activations (where the biases are added differs by loop).

@njit(inline="always")
def rnn_gate(a, use_tanh):
    """(2) h = φ(a): tanh, or the identity (nonlinearity "linear")."""
    return tanh(a) if use_tanh else a


@njit(inline="always")
def rnn_slope(h, use_tanh, one):
    """(3) φ'(a) from h = φ(a): 1 − h² for tanh, 1 for the identity."""
    return one - h * h if use_tanh else one


@njit(inline="always")
def gru_gates(a_r, a_z, a_in, m, h_prev, one):
    """(1)–(5) from the pre-activations a_r, a_z of (1), (2), the input part a_in = W_in x + b_in of (4) and
    m = W_hn h_{t-1} + b_hn (3) → (r, z, n, h)."""
    r = sigmoid(a_r)                                                     # (1)
    z = sigmoid(a_z)                                                     # (2)
    n = tanh(a_in + r * m)                                               # (4)
    return r, z, n, (one - z) * n + z * h_prev                           # (5)


@njit(inline="always")
def gru_adjoint(g, h_prev, r, z, n, m, one):
    """(6)–(9): h̄_t = g → (ā_r, ā_z, ā_n); then m̄ = ā_n r (8) and h̄_{t-1} = g z + ḡ_hh W_hh (11). With g = 1 these
    are the sensitivities s_r, s_z, s_n of (13)."""
    da_n = g * (one - z) * (one - n * n)                                 # (6), (7)
    da_z = g * (h_prev - n) * z * (one - z)                              # (6), (9)
    da_r = da_n * m * r * (one - r)                                      # (8), (9)
    return da_r, da_z, da_n


@njit(inline="always")
def lstm_gates(a_i, a_f, a_g, a_o, c_prev):
    """(2)–(4) from the pre-activations (1) → (i, f, g, o, c, tanh c, h)."""
    i, f, g, o = sigmoid(a_i), sigmoid(a_f), tanh(a_g), sigmoid(a_o)    # (2)
    c = f * c_prev + i * g                                               # (3)
    tanh_c = tanh(c)                                                     # (4)
    return i, f, g, o, c, tanh_c, o * tanh_c                             # (4)


@njit(inline="always")
def lstm_adjoint(dh, dc, c_prev, i, f, g, o, tanh_c, one):
    """(5)–(8): (h̄_t, c̄_t) → (ā_i, ā_f, ā_g, ā_o, c̄_{t-1}); h̄_{t-1} = ā W_hh (10). Seeded with (1, 0) or (0, 1)
    they are the sensitivities S_h, S_c of (12), and c̄_{t-1} the c_{t-1} column of the Jacobian (13): κ f, f."""
    dc_hat = dc + dh * o * (one - tanh_c * tanh_c)                       # (6) both paths into c_t
    return (dc_hat * g * i * (one - i),                                  # (7)(8) ā_i
            dc_hat * c_prev * f * (one - f),                             # (7)(8) ā_f
            dc_hat * i * (one - g * g),                                  # (7)(8) ā_g
            dh * tanh_c * o * (one - o),                                 # (5)(8) ā_o
            dc_hat * f)                                                  # (7) c̄_{t-1}


# ------------------------------------------------------------------------------------------------------- the states

def states(s0: np.ndarray, T: int, dt):
    """(ss, prev, cur): a fresh (T+1, B, H) array ss with ss[0] = s0, for [s0, s_0, …, s_{T-1}], and its views
    prev = ss[:-1] (the cache's h_prev or c_prev) and cur = ss[1:] (the states): module docstring."""
    ss = np.empty((T + 1,) + s0.shape, dt)
    ss[0] = s0
    return ss, ss[:-1], ss[1:]


# ---------------------------------------------------------------------------------------------------------------- rnn

@njit(**LOOP)
def _rnn_forward_rows(pre, Wp, b_hh, use_tanh, hh, b0, b1):
    """pre (T, B, H) = x W_ihᵀ + b_ih, Wp = step_weights(W_hh, dt), hh (T+1, B, H) = [h0, h_0, …] (`states`,
    h_{t-1} = hh[t]); writes hh[1:] on the rows [b0, b1)."""
    T, _, H = pre.shape
    rec = step_buffer(Wp, b1 - b0)                          # h_{t-1} W_hhᵀ, reused every step
    for t in range(T):
        step_product(Wp, hh[t, b0:b1], rec)                 # (1) W_hh h_{t-1}
        for b in range(b0, b1):
            for k in range(H):
                hh[t + 1, b, k] = rnn_gate(pre[t, b, k] + rec[b - b0, k] + b_hh[k], use_tanh)    # (1), (2)


@njit(**LOOP)
def _rnn_backward_rows(dh, h, Wp, use_tanh, one, da, carry, propagate, b0, b1):
    """Wp = step_weights(W_hhᵀ); writes the pre-activation adjoints da (T, B, H) on the rows [b0, b1); carry
    ends as h̄_{-1}. propagate=False drops the carried adjoint (h_{t-1} held constant: the truncated gradient of
    refimpl/algorithms/rtrl.py)."""
    T, _, H = dh.shape
    rec = step_buffer(Wp, b1 - b0)                                        # h̄_{t-1} from the step after
    for t in range(T - 1, -1, -1):
        for b in range(b0, b1):
            for k in range(H):
                g = dh[t, b, k] + rec[b - b0, k]                                 # (6) h̄_t
                da[t, b, k] = g * rnn_slope(h[t, b, k], use_tanh, one)          # (3)
        if propagate:
            step_product(Wp, da[t, b0:b1], rec)                                  # (5) h̄_{t-1} part ā_t W_hh
    for b in range(b0, b1):
        for k in range(H):
            carry[b, k] = rec[b - b0, k]                                         # h̄_{-1}


def rnn_forward(params: dict, x: np.ndarray, h0: np.ndarray, nonlinearity: str = "tanh"):
    """As refimpl.cells.rnn.forward: x (T, B, I), h0 (B, H) → h (T, B, H), RNNCache (T, ·)."""
    check_nonlinearity(nonlinearity)
    T, B, _ = x.shape
    dt = np.result_type(x, params["weight_ih"], h0)
    W_ih, W_hh = contiguous(params["weight_ih"], dt), contiguous(params["weight_hh"], dt)
    H = W_hh.shape[0]
    run = plan(T, B, H)
    pre = input_projection(x, W_ih, params["bias_ih"], dt, run, "rnn.pre")                       # (1) all t
    hh, h_prev, h = states(h0, T, dt)
    in_blocks(run, B, _rnn_forward_rows, pre, step_weights(W_hh, dt), contiguous(params["bias_hh"], dt),
              nonlinearity == "tanh", hh)
    return h, RNNCache(x=np.array(x), h_prev=h_prev, h=h)


def rnn_backward(params: dict, dh: np.ndarray, cache: RNNCache, nonlinearity: str = "tanh", *,
                 propagate: bool = True) -> dict:
    """As refimpl.cells.rnn.backward: → {param: grad, "x" (T, B, I), "h0" (B, H)}. propagate=False: the truncated
    gradient (no adjoint carried to h_{t-1}; used by the truncated/spatial sweeps)."""
    check_nonlinearity(nonlinearity)
    T, B, H = dh.shape
    dt = dh.dtype
    one, _ = scalars(dt)
    da, carry = scratch("rnn.da", (T, B, H), dt), np.zeros((B, H), dt)
    run = plan(T, B, H)
    in_blocks(run, B, _rnn_backward_rows, contiguous(dh, dt), contiguous(cache.h, dt),
              step_weights(params["weight_hh"].T, dt), nonlinearity == "tanh", one, da, carry,
              propagate)
    grads = weight_grads(params, da, None, cache.x, cache.h_prev, dt, run)                       # (4), (5) x̄
    grads["h0"] = carry
    return grads


# ---------------------------------------------------------------------------------------------------------------- gru

@njit(**LOOP)
def _gru_forward_rows(gi, Wp, b_hh, one, hh, r, z, n, hn, b0, b1):
    """gi (T, B, 3H) = x W_ihᵀ + b_ih (+ b_hr, b_hz on the r, z blocks), Wp = step_weights(W_hh, dt), hh (T+1, B,
    H) = [h0, h_0, …] (`states`); writes hh[1:] and the cache fields r, z, n, hn (T, B, H) on the rows [b0, b1)."""
    T, _, H3 = gi.shape
    H = H3 // 3
    gh = step_buffer(Wp, b1 - b0)                           # h_{t-1} W_hhᵀ, reused every step
    for t in range(T):
        step_product(Wp, hh[t, b0:b1], gh)                  # (1)(2)(3) W_hh h_{t-1}
        for b in range(b0, b1):
            q = b - b0
            for k in range(H):
                m = gh[q, 2 * H + k] + b_hh[2 * H + k]                                                 # (3)
                r[t, b, k], z[t, b, k], n[t, b, k], hh[t + 1, b, k] = gru_gates(
                    gi[t, b, k] + gh[q, k], gi[t, b, H + k] + gh[q, H + k], gi[t, b, 2 * H + k], m,
                    hh[t, b, k], one)                                                                  # (1)–(5)
                hn[t, b, k] = m


@njit(**LOOP)
def _gru_backward_rows(dh, h_prev, r, z, n, hn, Wp, one, zero, dg_ih, dg_hh, carry, propagate, b0, b1):
    """Wp = step_weights(W_hhᵀ); writes ḡ_ih, ḡ_hh (T, B, 3H) of eq. (10) on the rows [b0, b1); carry ends as
    h̄_{-1}. propagate=False drops the carried adjoint. The two parts of (11) are kept apart until they are used:
    `carry` holds the direct path h̄_t ⊙ z, `rec` the gate path ḡ_hh W_hh (step_product's result)."""
    T, B, H = dh.shape
    G_ih, G_hh = dg_ih.reshape(T, B, 3, H), dg_hh.reshape(T, B, 3, H)     # the gate blocks r, z, n as an axis
    rec = step_buffer(Wp, b1 - b0)
    for t in range(T - 1, -1, -1):
        for b in range(b0, b1):
            q = b - b0
            for k in range(H):
                g = dh[t, b, k] + carry[b, k] + rec[q, k]       # (12) h̄_t
                rr, zz = r[t, b, k], z[t, b, k]
                da_r, da_z, da_n = gru_adjoint(g, h_prev[t, b, k], rr, zz, n[t, b, k], hn[t, b, k], one)  # (6)–(9)
                G_ih[t, b, 0, k], G_ih[t, b, 1, k], G_ih[t, b, 2, k] = da_r, da_z, da_n       # (10)
                G_hh[t, b, 0, k], G_hh[t, b, 1, k], G_hh[t, b, 2, k] = da_r, da_z, da_n * rr  # (10), (8) m̄
                carry[b, k] = g * zz if propagate else zero    # (11) direct path of (5)
        if propagate:
            step_product(Wp, dg_hh[t, b0:b1], rec)              # (11) ḡ_hh W_hh
    for b in range(b0, b1):
        for k in range(H):
            carry[b, k] += rec[b - b0, k]                       # (11) h̄_{-1} = both paths


def gru_forward(params: dict, x: np.ndarray, h0: np.ndarray):
    """As refimpl.cells.gru.forward: x (T, B, I), h0 (B, H) → h (T, B, H), GRUCache (T, ·)."""
    T, B, _ = x.shape
    dt = np.result_type(x, params["weight_ih"], h0)
    one, _ = scalars(dt)
    W_ih, W_hh = contiguous(params["weight_ih"], dt), contiguous(params["weight_hh"], dt)
    H = W_hh.shape[1]
    b_hh = contiguous(params["bias_hh"], dt)
    b_in = params["bias_ih"].astype(dt)                    # + b_hr, b_hz: the r, z biases are added once, here
    b_in[:2 * H] += b_hh[:2 * H]
    run = plan(T, B, H)
    gi = input_projection(x, W_ih, b_in, dt, run, "gru.gi")                                      # (1)(2)(4) all t
    hh, h_prev, h = states(h0, T, dt)
    r, z, n, hn = (np.empty((T, B, H), dt) for _ in range(4))
    in_blocks(run, B, _gru_forward_rows, gi, step_weights(W_hh, dt), b_hh, one, hh, r, z, n, hn)
    return h, GRUCache(x=np.array(x), h_prev=h_prev, r=r, z=z, n=n, hn=hn, h=h)


def gru_backward(params: dict, dh: np.ndarray, cache: GRUCache, *, propagate: bool = True) -> dict:
    """As refimpl.cells.gru.backward: → {param: grad, "x" (T, B, I), "h0" (B, H)}. propagate=False: truncated."""
    T, B, H = dh.shape
    dt = dh.dtype
    one, zero = scalars(dt)
    dg_ih, dg_hh = scratch("gru.dg_ih", (T, B, 3 * H), dt), scratch("gru.dg_hh", (T, B, 3 * H), dt)
    carry = np.zeros((B, H), dt)
    c = cache
    run = plan(T, B, H)
    in_blocks(run, B, _gru_backward_rows, contiguous(dh, dt), contiguous(c.h_prev, dt), contiguous(c.r, dt),
              contiguous(c.z, dt), contiguous(c.n, dt), contiguous(c.hn, dt),
              step_weights(params["weight_hh"].T, dt), one, zero, dg_ih, dg_hh, carry, propagate)
    grads = weight_grads(params, dg_ih, dg_hh, c.x, c.h_prev, dt, run)                          # (10), (11) x̄
    grads["h0"] = carry
    return grads


# --------------------------------------------------------------------------------------------------------------- lstm

@njit(**LOOP)
def _lstm_forward_rows(pre, Wp, hh, cc, i, f, g, o, tanh_c, b0, b1):
    """pre (T, B, 4H) = x W_ihᵀ + b_ih + b_hh, Wp = step_weights(W_hh, dt), hh, cc (T+1, B, H) = [h0, h_0, …],
    [c0, c_0, …] (`states`); writes hh[1:], cc[1:] and i, f, g, o, tanh_c (T, B, H) on the rows [b0, b1)."""
    T, _, H4 = pre.shape
    H = H4 // 4
    rec = step_buffer(Wp, b1 - b0)                          # h_{t-1} W_hhᵀ, reused every step
    for t in range(T):
        step_product(Wp, hh[t, b0:b1], rec)                                                   # (1) W_hh h_{t-1}
        for b in range(b0, b1):
            q = b - b0
            for k in range(H):
                ii, ff, gg, oo, c_t, tc, h_t = lstm_gates(
                    pre[t, b, k] + rec[q, k], pre[t, b, H + k] + rec[q, H + k],
                    pre[t, b, 2 * H + k] + rec[q, 2 * H + k], pre[t, b, 3 * H + k] + rec[q, 3 * H + k],
                    cc[t, b, k])                                                                         # (1)–(4)
                i[t, b, k], f[t, b, k], g[t, b, k], o[t, b, k], tanh_c[t, b, k] = ii, ff, gg, oo, tc
                cc[t + 1, b, k], hh[t + 1, b, k] = c_t, h_t


@njit(**LOOP)
def _lstm_backward_rows(dh, c_prev, i, f, g, o, tanh_c, Wp, one, zero, da, carry_h, carry_c, propagate, b0, b1):
    """Wp = step_weights(W_hhᵀ); writes ā (T, B, 4H) of eq. (9) on the rows [b0, b1); carry_h, carry_c end as
    h̄_{-1}, c̄_{-1}. propagate=False drops both carried adjoints (h_{t-1} and c_{t-1} held constant)."""
    T, B, H = dh.shape
    A = da.reshape(T, B, 4, H)                                              # the gate blocks i, f, g, o as an axis
    rec = step_buffer(Wp, b1 - b0)                                        # h̄_{t-1} from the step after
    for t in range(T - 1, -1, -1):
        for b in range(b0, b1):
            for k in range(H):
                A[t, b, 0, k], A[t, b, 1, k], A[t, b, 2, k], A[t, b, 3, k], dc_prev = lstm_adjoint(
                    dh[t, b, k] + rec[b - b0, k], carry_c[b, k], c_prev[t, b, k], i[t, b, k], f[t, b, k],
                    g[t, b, k], o[t, b, k], tanh_c[t, b, k], one)                 # (11) h̄_t; (5)–(8)
                carry_c[b, k] = dc_prev if propagate else zero                    # (7) c̄_{t-1}
        if propagate:
            step_product(Wp, da[t, b0:b1], rec)                                   # (10) h̄_{t-1} part ā W_hh
    for b in range(b0, b1):
        for k in range(H):
            carry_h[b, k] = rec[b - b0, k]                                        # h̄_{-1}


def lstm_forward(params: dict, x: np.ndarray, state0):
    """As refimpl.cells.lstm.forward: x (T, B, I), state0 LSTMState(h0, c0) → h (T, B, H), LSTMCache (T, ·)."""
    h0, c0 = state0
    T, B, _ = x.shape
    dt = np.result_type(x, params["weight_ih"], h0, c0)
    W_ih, W_hh = contiguous(params["weight_ih"], dt), contiguous(params["weight_hh"], dt)
    H = W_hh.shape[1]
    bias = params["bias_ih"].astype(dt) + params["bias_hh"].astype(dt)                             # (1) both biases
    run = plan(T, B, H)
    pre = input_projection(x, W_ih, bias, dt, run, "lstm.pre")                                   # (1) all t
    hh, h_prev, h = states(h0, T, dt)
    cc, c_prev, c = states(c0, T, dt)
    i, f, g, o, tanh_c = (np.empty((T, B, H), dt) for _ in range(5))
    in_blocks(run, B, _lstm_forward_rows, pre, step_weights(W_hh, dt), hh, cc, i, f, g, o, tanh_c)
    return h, LSTMCache(x=np.array(x), h_prev=h_prev, c_prev=c_prev, i=i, f=f, g=g, o=o, c=c, tanh_c=tanh_c, h=h)


def lstm_backward(params: dict, dh: np.ndarray, cache: LSTMCache, *, propagate: bool = True) -> dict:
    """As refimpl.cells.lstm.backward: → {param: grad, "x" (T, B, I), "h0" (B, H), "c0" (B, H)}. propagate=False:
    truncated."""
    T, B, H = dh.shape
    dt = dh.dtype
    one, zero = scalars(dt)
    c = cache
    da = scratch("lstm.da", (T, B, 4 * H), dt)
    carry_h, carry_c = np.zeros((B, H), dt), np.zeros((B, H), dt)
    run = plan(T, B, H)
    in_blocks(run, B, _lstm_backward_rows, contiguous(dh, dt), contiguous(c.c_prev, dt), contiguous(c.i, dt),
              contiguous(c.f, dt), contiguous(c.g, dt), contiguous(c.o, dt), contiguous(c.tanh_c, dt),
              step_weights(params["weight_hh"].T, dt), one, zero, da, carry_h, carry_c, propagate)
    grads = weight_grads(params, da, None, c.x, c.h_prev, dt, run)                               # (9), (10) x̄
    grads["h0"], grads["c0"] = carry_h, carry_c
    return grads


# ---------------------------------------------------------------------------------------------------------------- lru
#
# The complex GEMMs with a real x are real GEMMs on the interleaved (re, im) view of the complex arrays, with
# W2 (2N, I) = the rows γ_k B_re[k], γ_k B_im[k] interleaved (backends.common.lru_w2):
#     u = γ ⊙ (B x)        is   x @ W2ᵀ            viewed as complex                                  (2)
#     x̄ = Re((γ ⊙ ū) conj(B))                      is   ū_real @ W2                                   (6)
#     M = Σ_{t,b} ū_tᵀ x_t  is  ū_realᵀ @ x  (rows re, im interleaved);  B̄ = γ ⊙ M, γ̄ from M          (6)

@njit(**LOOP)
def _lru_scan_rows(lam, hh, b0, b1):
    """(3) h_t = λ ⊙ h_{t-1} + u_t on the rows [b0, b1) of hh (T+1, B, N) = [h0, u_0, …, u_{T-1}] on entry and
    [h0, h_0, …, h_{T-1}] on exit (`states`). The next step's rows are prefetched (memory.py)."""
    T, B, N = hh.shape
    flat = hh.reshape(-1)
    for t in range(1, T):
        prefetch_write(flat, ((t + 1) * B + b0) * N, ((t + 1) * B + b1) * N)
        for b in range(b0, b1):
            for k in range(N):
                hh[t, b, k] = lam[k] * hh[t - 1, b, k] + hh[t, b, k]                  # (3)


def lru_scan(lam, hh) -> None:
    """(3) in place over every row of hh (_lru_scan_rows), in blocks of batch rows on threads (rule (e): the rows do
    not interact)."""
    T1, B, N = hh.shape
    in_blocks(plan(T1 - 1, B, N), B, _lru_scan_rows, lam, hh)


#: Rows (steps × batch rows of a block) of one slab of the LRU's backward pass: ū of a slab (LRU_SLAB_ROWS × 2N real
#: numbers, 512 KiB at N = 256 in float32) is used by the two GEMMs of (6) while it is still in cache.
LRU_SLAB_ROWS = 256


@njit(**LOOP)
def _lru_backward_rows(dh, h_prev, lam, X, W2, carry, dx, slab, slab_real, x_slab, dx_slab, M_part, dlam, M, b0, b1):
    """The LRU's backward pass on the rows [b0, b1), slab by slab of C steps (C · (b1 − b0) ≈ LRU_SLAB_ROWS rows),
    from the last step to the first: (8), (5) write ū_t of the slab's steps into `slab` (complex (C·nb, N); its
    real view `slab_real` is (C·nb, 2N), re/im interleaved), accumulate this block's λ̄ into dlam (complex128) and
    carry h̄_{t-1}; then, while the slab is in cache, (6) adds its ū_realᵀ X to this block's M (float64) and writes
    its rows of x̄ = ū_real W2 (np.dot: single-threaded BLAS inside a block). ū is never written to memory as a
    whole (T, B, N) array: that pass and the two GEMMs' reads of it were a third of the backward's time. carry ends
    as h̄_{-1}."""
    T, B, N = dh.shape
    nb = b1 - b0
    C = max(1, slab.shape[0] // nb)
    for t1 in range(T, 0, -C):
        t0 = max(0, t1 - C)
        for t in range(t1 - 1, t0 - 1, -1):
            for b in range(b0, b1):
                r = (t - t0) * nb + (b - b0)
                for k in range(N):
                    g = dh[t, b, k] + carry[b, k]                                     # (8) h̄_t
                    slab[r, k] = g                                                    # (5) ū_t
                    dlam[k] += h_prev[t, b, k].conjugate() * g                        # (5) λ̄
                    carry[b, k] = lam[k].conjugate() * g                              # (5) h̄_{t-1} contribution
                for i in range(X.shape[2]):
                    x_slab[r, i] = X[t, b, i]
        rows = (t1 - t0) * nb
        np.dot(slab_real[:rows].T, x_slab[:rows], M_part)                             # (6) Σ ū_tᵀ x_t
        for j in range(M.shape[0]):
            for i in range(M.shape[1]):
                M[j, i] += M_part[j, i]
        np.dot(slab_real[:rows], W2, dx_slab[:rows])                                  # (6) x̄ = ū_real W2
        for t in range(t0, t1):
            for b in range(b0, b1):
                for i in range(X.shape[2]):
                    dx[t, b, i] = dx_slab[(t - t0) * nb + (b - b0), i]


def lru_forward(params: dict, x: np.ndarray, h0: np.ndarray):
    """As refimpl.cells.lru.forward: x r(T, B, I), h0 c(B, N) → h c(T, B, N), LRUCache (T, ·)."""
    T, B, I = x.shape
    lam, gamma = lambda_gamma(params)                                                 # (1)
    cdt = np.result_type(lam, h0, np.complex64)
    rdt = np.finfo(cdt).dtype
    N = lam.shape[0]
    W2 = lru_w2(np, params, gamma.astype(rdt), rdt)
    run = plan(T, B, N)
    hh, h_prev, h = states(h0, T, cdt)
    row_product(contiguous(x, rdt).reshape(T * B, I), W2, h.reshape(T * B, N).view(rdt), run)   # (2) u, all t
    lru_scan(contiguous(lam, cdt), hh)                                                             # (3)
    return h, LRUCache(x=np.array(x), h_prev=h_prev, h=h)


def lru_backward(params: dict, dh: np.ndarray, cache: LRUCache) -> dict:
    """As refimpl.cells.lru.backward: dh c(T, B, N) → {param: grad, "x" r(T, B, I), "h0" c(B, N)}."""
    T, B, N = dh.shape
    lam, gamma = lambda_gamma(params)
    cdt = np.result_type(dh, cache.h)
    rdt = np.finfo(cdt).dtype
    run = plan(T, B, N)
    I = cache.x.shape[-1]
    gamma = gamma.astype(rdt)
    nb = -(-B // run.blocks)                                                          # rows of the largest block
    rows = max(1, LRU_SLAB_ROWS // nb) * nb                                           # C steps × those rows
    slabs = scratch("lru.slab", (run.blocks, rows, N), cdt)
    x_slabs = scratch("lru.x_slab", (run.blocks, rows, I), rdt)
    dx_slabs = scratch("lru.dx_slab", (run.blocks, rows, I), rdt)
    M_parts = scratch("lru.M_part", (run.blocks, 2 * N, I), rdt)
    carry, dx = np.zeros((B, N), cdt), np.empty((T, B, I), rdt)
    dlams = np.zeros((run.blocks, N), np.complex128)                                  # λ̄ per block of rows
    Ms = np.zeros((run.blocks, 2 * N, I))                                             # M per block, float64
    in_blocks(run, B, _lru_backward_rows, contiguous(dh, cdt), contiguous(cache.h_prev, cdt), contiguous(lam, cdt),
              contiguous(cache.x, rdt), lru_w2(np, params, gamma, rdt), carry, dx,
              per_block=(slabs, slabs.view(rdt), x_slabs, dx_slabs, M_parts, dlams, Ms))
    dlam = dlams.sum(axis=0)                                                          # the blocks' shares, in order
    M = Ms.sum(axis=0).astype(rdt)                                                    # (6) Σ ū_tᵀ x_t, rows re/im
    q = np.conj(lam).astype(np.complex128) * dlam                                     # (7) conj(λ) λ̄
    grads = lru_param_grads(np, params, q.real, q.imag, M[0::2], M[1::2], gamma)      # (6), (7)
    grads["x"] = dx.astype(cache.x.dtype, copy=False)                                # (6)
    grads["h0"] = carry
    return grads


KERNELS = {
    "rnn.forward": rnn_forward, "rnn.backward": rnn_backward,
    "gru.forward": gru_forward, "gru.backward": gru_backward,
    "lstm.forward": lstm_forward, "lstm.backward": lstm_backward,
    "lru.forward": lru_forward, "lru.backward": lru_backward,
}
