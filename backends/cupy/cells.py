r"""The cell kernels (rnn, gru, lstm, lru forward and backward) on a CUDA device, with the references' outputs.

Each function takes the device first (runtime.py) and then exactly the arguments of its NumPy reference in
refimpl/cells/<cell>.py, and returns the same structure — forward: (h, <Cell>Cache with every field (T, B, ·)),
backward: {param…, "x", "h0"[, "c0"]} — so a reference forward can feed a CuPy backward and vice versa. Equation
numbers "(n)" are those of the cell's module docstring; the CUDA bodies are in sources.py.

    (a) the input projection of all T steps is ONE cuBLAS GEMM outside the time loop: x (T·B, I) @ W_ihᵀ + b_ih;
    (b) per step, one GEMM h_{t-1} @ W_hhᵀ (cuBLAS), then ONE fused kernel for all the gate math of the step, one
        thread per (b, k), writing every cache field of the step;
    (c) backward: per step one fused kernel for the gate adjoints ḡ_t (T, B, nG·H), then one GEMM ḡ_hh,t @ W_hh for
        the carried h̄; after the loop the weight gradients are ONE GEMM each over all (t, b): ḡᵀ @ [x | h_prev], and
        x̄ = ḡ_ih @ W_ih; bias gradients are summed in float64.
    (d) lru: u = γ ⊙ (B x) for all T is one real GEMM x @ W2ᵀ with the rows γ_k B_re[k], γ_k B_im[k] interleaved, so
        its result (T, B, 2N) is already the (re, im) pair layout of a complex array; the recurrence (3) and its
        adjoint (5)(8) are the linear scan of sources.py (forward in t; backward in reverse with conj(λ)); λ̄ of (5)
        is a per-(b, k) reduction kernel; B̄, γ̄ and x̄ are GEMMs on the adjoint's pair layout.

NOTE: cuBLAS float32 GEMMs run in full float32 (CuPy enables TF32 only with CUPY_TF32=1); float32 results differ from
the reference's by float32 rounding (parity tolerance 1e-4), float64 by summation order (1e-10).
Inputs are never written to; every output is a fresh array.
"""

from __future__ import annotations

import numpy as np

from refimpl.cells.gru import GRUCache
from refimpl.cells.lru import LRUCache, lambda_gamma
from refimpl.cells.lstm import LSTMCache
from refimpl.cells.rnn import RNNCache

from ..common import check_nonlinearity, lru_param_grads, lru_w2, param_grads, previous_states
from .runtime import chunk_length, complex_dtype, real_dtype, scan_chunks
from .runtime import contiguous
from .sources import CELLS, LRU


def weight_grads(xp, params, x, h_prev, g_ih, g_hh, dt) -> dict:
    """(c): weight_ih = ḡ_ihᵀ x, weight_hh = ḡ_hhᵀ h_prev, biases Σ ḡ over (t, b), accumulated in float64 (g_hh
    None: the same as g_ih)."""
    T, B, GH = g_ih.shape
    gi2 = g_ih.reshape(T * B, GH)
    gh2 = gi2 if g_hh is None else g_hh.reshape(T * B, GH)
    out = {"weight_ih": gi2.T @ contiguous(xp, x, dt).reshape(T * B, -1), "bias_ih": gi2.sum(axis=0, dtype=np.float64),
           "weight_hh": gh2.T @ contiguous(xp, h_prev, dt).reshape(T * B, -1)}
    out["bias_hh"] = out["bias_ih"] if g_hh is None else gh2.sum(axis=0, dtype=np.float64)
    return param_grads(params, out)


def input_grad(xp, params, g_ih, x, dt):
    """x̄_t = ḡ_ih,t W_ih for all t: one GEMM, in x's dtype."""
    T, B, GH = g_ih.shape
    return (g_ih.reshape(T * B, GH) @ contiguous(xp, params["weight_ih"], dt)).reshape(x.shape).astype(x.dtype)


def projection(xp, params, x, dt):
    """x W_ihᵀ + b_ih for all T steps, (T, B, G·H): one GEMM (a)."""
    T, B, I = x.shape
    W_ih = contiguous(xp, params["weight_ih"], dt)
    out = contiguous(xp, x, dt).reshape(T * B, I) @ W_ih.T + params["bias_ih"].astype(dt)
    return out.reshape(T, B, W_ih.shape[0])


# ---------------------------------------------------------------------------------------------------------------- rnn

def rnn_forward(dev, params: dict, x, h0, nonlinearity: str = "tanh"):
    """As refimpl.cells.rnn.forward: x (T, B, I), h0 (B, H) → h (T, B, H), RNNCache (T, ·)."""
    check_nonlinearity(nonlinearity)
    xp = dev.xp
    T, B, _ = x.shape
    dt = np.result_type(x.dtype, params["weight_ih"].dtype, h0.dtype)
    H = params["weight_hh"].shape[0]
    pre = projection(xp, params, x, dt)                                       # (1) x W_ihᵀ + b_ih, all t
    W_hhT, b_hh = contiguous(xp, params["weight_hh"].T, dt), contiguous(xp, params["bias_hh"], dt)
    h0 = contiguous(xp, h0, dt)
    h = xp.empty((T, B, H), dt)
    for t in range(T):
        h_prev_t = h0 if t == 0 else h[t - 1]
        rec = h_prev_t @ W_hhT                                                # (1) W_hh h_{t-1}
        dev.launch(CELLS, "rnn_fwd_step", dt, B * H, pre[t], rec, b_hh, h[t], H, int(nonlinearity == "tanh"))
    return h, RNNCache(x=x.copy(), h_prev=previous_states(xp, h0, h), h=h)


def rnn_backward(dev, params: dict, dh, cache: RNNCache, nonlinearity: str = "tanh", *, propagate: bool = True):
    """As refimpl.cells.rnn.backward: → {param: grad, "x" (T, B, I), "h0" (B, H)}. propagate=False drops the carried
    adjoint (h_{t-1} held constant: the truncated gradient of refimpl/algorithms/rtrl.py)."""
    check_nonlinearity(nonlinearity)
    xp = dev.xp
    T, B, H = dh.shape
    dt = dh.dtype
    dh, h, W_hh = contiguous(xp, dh, dt), contiguous(xp, cache.h, dt), contiguous(xp, params["weight_hh"], dt)
    da, carry = xp.empty((T, B, H), dt), xp.zeros((B, H), dt)
    for t in range(T - 1, -1, -1):
        dev.launch(CELLS, "rnn_bwd_step", dt, B * H, dh[t], carry, h[t], da[t], int(nonlinearity == "tanh"))  # (3)
        if propagate:
            carry = da[t] @ W_hh                                              # (5) h̄_{t-1} contribution
    grads = weight_grads(xp, params, cache.x, cache.h_prev, da, None, dt)                           # (4)
    grads["x"] = input_grad(xp, params, da, cache.x, dt)                                                  # (5)
    grads["h0"] = carry
    return grads


# ---------------------------------------------------------------------------------------------------------------- gru

def gru_forward(dev, params: dict, x, h0):
    """As refimpl.cells.gru.forward: x (T, B, I), h0 (B, H) → h (T, B, H), GRUCache (T, ·)."""
    xp = dev.xp
    T, B, _ = x.shape
    dt = np.result_type(x.dtype, params["weight_ih"].dtype, h0.dtype)
    H = params["weight_hh"].shape[1]
    gi = projection(xp, params, x, dt)                                        # (1)(2)(4) input parts, all t
    W_hhT, b_hh = contiguous(xp, params["weight_hh"].T, dt), contiguous(xp, params["bias_hh"], dt)
    h0 = contiguous(xp, h0, dt)
    r, z, n, hn, h = (xp.empty((T, B, H), dt) for _ in range(5))
    for t in range(T):
        h_prev_t = h0 if t == 0 else h[t - 1]
        gh = h_prev_t @ W_hhT                                                 # (1)(2)(3) W_hh h_{t-1}
        dev.launch(CELLS, "gru_fwd_step", dt, B * H, gi[t], gh, b_hh, h_prev_t, r[t], z[t], n[t], hn[t], h[t], H)
    return h, GRUCache(x=x.copy(), h_prev=previous_states(xp, h0, h), r=r, z=z, n=n, hn=hn, h=h)


def gru_gate_adjoints(dev, dh, cache: GRUCache, W_hh, propagate: bool):
    """The backward loop (6)-(12): ḡ_ih, ḡ_hh (T, B, 3H) and h̄_{-1} (B, H)."""
    xp = dev.xp
    T, B, H = dh.shape
    dt = dh.dtype
    c = cache
    dh, h_prev, r, z, n, hn = (contiguous(xp, a, dt) for a in (dh, c.h_prev, c.r, c.z, c.n, c.hn))
    dg_ih, dg_hh = xp.empty((T, B, 3 * H), dt), xp.empty((T, B, 3 * H), dt)
    direct, rec = xp.zeros((B, H), dt), xp.zeros((B, H), dt)                  # h̄_{t+1} ⊙ z_{t+1}, ḡ_hh,t+1 W_hh
    for t in range(T - 1, -1, -1):
        dev.launch(CELLS, "gru_bwd_step", dt, B * H, dh[t], direct, rec, h_prev[t], r[t], z[t], n[t], hn[t],
                   dg_ih[t], dg_hh[t], H, int(propagate))                     # (6)-(10)
        if propagate:
            rec = dg_hh[t] @ W_hh                                             # (11) ḡ_hh W_hh
    return dg_ih, dg_hh, direct + rec                                         # (11) h̄_{-1}


def gru_backward(dev, params: dict, dh, cache: GRUCache, *, propagate: bool = True):
    """As refimpl.cells.gru.backward: → {param: grad, "x" (T, B, I), "h0" (B, H)}. propagate=False: truncated."""
    xp = dev.xp
    dt = dh.dtype
    dg_ih, dg_hh, dh0 = gru_gate_adjoints(dev, dh, cache, contiguous(xp, params["weight_hh"], dt), propagate)
    grads = weight_grads(xp, params, cache.x, cache.h_prev, dg_ih, dg_hh, dt)                       # (10)
    grads["x"] = input_grad(xp, params, dg_ih, cache.x, dt)                                               # (11)
    grads["h0"] = dh0
    return grads


# --------------------------------------------------------------------------------------------------------------- lstm

def lstm_forward(dev, params: dict, x, state0):
    """As refimpl.cells.lstm.forward: x (T, B, I), state0 LSTMState(h0, c0) → h (T, B, H), LSTMCache (T, ·)."""
    xp = dev.xp
    h0, c0 = state0
    T, B, _ = x.shape
    dt = np.result_type(x.dtype, params["weight_ih"].dtype, h0.dtype, c0.dtype)
    H = params["weight_hh"].shape[1]
    pre = projection(xp, params, x, dt)                                       # (1) input part, all t
    W_hhT, b_hh = contiguous(xp, params["weight_hh"].T, dt), contiguous(xp, params["bias_hh"], dt)
    h0, c0 = contiguous(xp, h0, dt), contiguous(xp, c0, dt)
    i, f, g, o, c, tanh_c, h = (xp.empty((T, B, H), dt) for _ in range(7))
    for t in range(T):
        h_prev_t, c_prev_t = (h0, c0) if t == 0 else (h[t - 1], c[t - 1])
        rec = h_prev_t @ W_hhT                                                # (1) W_hh h_{t-1}
        dev.launch(CELLS, "lstm_fwd_step", dt, B * H, pre[t], rec, b_hh, c_prev_t, i[t], f[t], g[t], o[t], c[t],
                   tanh_c[t], h[t], H)                                        # (1)-(4)
    return h, LSTMCache(x=x.copy(), h_prev=previous_states(xp, h0, h), c_prev=previous_states(xp, c0, c), i=i, f=f,
                        g=g, o=o, c=c, tanh_c=tanh_c, h=h)


def lstm_gate_adjoints(dev, dh, cache: LSTMCache, W_hh, propagate: bool):
    """The backward loop (5)-(11): ā (T, B, 4H), h̄_{-1}, c̄_{-1} (B, H)."""
    xp = dev.xp
    T, B, H = dh.shape
    dt = dh.dtype
    c = cache
    dh, c_prev, i, f, g, o, tanh_c = (contiguous(xp, a, dt) for a in (dh, c.c_prev, c.i, c.f, c.g, c.o, c.tanh_c))
    da = xp.empty((T, B, 4 * H), dt)
    carry_h, carry_c = xp.zeros((B, H), dt), xp.zeros((B, H), dt)
    for t in range(T - 1, -1, -1):
        dev.launch(CELLS, "lstm_bwd_step", dt, B * H, dh[t], carry_h, carry_c, c_prev[t], i[t], f[t], g[t], o[t],
                   tanh_c[t], da[t], H, int(propagate))                       # (5)-(8); c̄ carried in place (7)
        if propagate:
            carry_h = da[t] @ W_hh                                            # (10) h̄_{t-1}
    return da, carry_h, carry_c


def lstm_backward(dev, params: dict, dh, cache: LSTMCache, *, propagate: bool = True):
    """As refimpl.cells.lstm.backward: → {param: grad, "x" (T, B, I), "h0" (B, H), "c0" (B, H)}. propagate=False:
    truncated (both h_{t-1} and c_{t-1} held constant)."""
    xp = dev.xp
    dt = dh.dtype
    da, dh0, dc0 = lstm_gate_adjoints(dev, dh, cache, contiguous(xp, params["weight_hh"], dt), propagate)
    grads = weight_grads(xp, params, cache.x, cache.h_prev, da, None, dt)                           # (9)
    grads["x"] = input_grad(xp, params, da, cache.x, dt)                                                  # (10)
    grads["h0"], grads["c0"] = dh0, dc0
    return grads


# ---------------------------------------------------------------------------------------------------------------- lru

def lru_setup(xp, params: dict, x, h0):
    """λ (state dtype, contiguous), γ, the real and complex dtypes, W2 and u (T, B, 2N) pairs for all t (d)."""
    T, B, I = x.shape
    cdt = complex_dtype(np.result_type(params["nu_log"].dtype, h0.dtype, np.complex64))
    rdt = real_dtype(cdt)
    lam, gamma = lambda_gamma(params)                                                    # (1)
    lam, gamma = contiguous(xp, lam, cdt), gamma.astype(rdt)
    W2 = lru_w2(xp, params, gamma, rdt)
    u = (contiguous(xp, x, rdt).reshape(T * B, I) @ W2.T).reshape(T, B, 2 * lam.shape[0])        # (2) u_t pairs, all t
    return lam, gamma, rdt, cdt, W2, u


def lru_scan(dev, v, a, y0, y, T: int, B: int, N: int, reverse: bool, chunks: int | None = None) -> None:
    """y_t = a ⊙ y_{t-1} + v_t (reverse: t = T-1 … 0), y_{-1} = y0, written into y (T, B, N) as complex or (re, im)
    pairs; v likewise. chunks: the number of time chunks (default launch.scan_chunks; 1 is the sequential scan)."""
    C = scan_chunks(T, B, N) if chunks is None else int(chunks)
    L = chunk_length(T, C)
    BN = B * N
    dt = a.dtype
    dev.launch(LRU, "lru_scan_chunk", dt, C * BN, v, a, y0, y, T, BN, N, L, int(reverse))
    if C > 1:
        carry = dev.xp.empty((C - 1, BN), dt)
        dev.launch(LRU, "lru_scan_carry", dt, BN, y, a, carry, T, BN, N, L, C, int(reverse))
        dev.launch(LRU, "lru_scan_fix", dt, (C - 1) * BN, a, carry, y, T, BN, N, L, int(reverse))


def lru_forward(dev, params: dict, x, h0, *, chunks: int | None = None):
    """As refimpl.cells.lru.forward: x r(T, B, I), h0 c(B, N) → h c(T, B, N), LRUCache (T, ·)."""
    xp = dev.xp
    T, B, _ = x.shape
    lam, _, _, cdt, _, u = lru_setup(xp, params, x, h0)
    N = lam.shape[0]
    h0 = contiguous(xp, h0, cdt)
    h = xp.empty((T, B, N), cdt)
    lru_scan(dev, u, lam, h0, h, T, B, N, reverse=False, chunks=chunks)                  # (3)
    return h, LRUCache(x=x.copy(), h_prev=previous_states(xp, h0, h), h=h)


def lru_backward(dev, params: dict, dh, cache: LRUCache, *, chunks: int | None = None):
    """As refimpl.cells.lru.backward: dh c(T, B, N) → {param: grad, "x" r(T, B, I), "h0" c(B, N)}."""
    xp = dev.xp
    T, B, N = dh.shape
    x = cache.x
    cdt = complex_dtype(np.result_type(dh.dtype, cache.h.dtype))
    rdt = real_dtype(cdt)
    lam, gamma = lambda_gamma(params)                                        # (1)
    conj_lam, gamma = contiguous(xp, xp.conj(lam), cdt), gamma.astype(rdt)
    hbar = xp.empty((T, B, 2 * N), rdt)                                      # h̄_t = ū_t (5), as (re, im) pairs
    lru_scan(dev, contiguous(xp, dh, cdt), conj_lam, xp.zeros((B, N), cdt), hbar, T, B, N, reverse=True,
             chunks=chunks)                                                  # (8) h̄_t = dh_t + conj(λ) h̄_{t+1}
    part = xp.empty((B, N, 2), np.float64)
    dev.launch(LRU, "lru_dlam", cdt, B * N, contiguous(xp, cache.h_prev, cdt), hbar, part, T, B * N)               # (5)
    dlam = part.sum(axis=0)                                                                                # (N, 2)
    du2 = hbar.reshape(T * B, 2 * N)
    M = du2.T @ contiguous(xp, x, rdt).reshape(T * B, -1)                    # (6) Σ ū_tᵀ x_t, rows re/im (2N, I)
    q = conj_lam.astype(np.complex128) * (dlam[:, 0] + 1j * dlam[:, 1])                                   # (7)
    grads = lru_param_grads(xp, params, q.real, q.imag, M[0::2], M[1::2], gamma)                          # (6), (7)
    grads["x"] = (du2 @ lru_w2(xp, params, gamma, rdt)).reshape(x.shape).astype(x.dtype)                  # (6)
    hbar0 = hbar[0]                                                                                        # (B, 2N)
    grads["h0"] = (conj_lam * (hbar0[:, 0::2] + 1j * hbar0[:, 1::2])).astype(cdt)                        # (5)
    return grads


IMPLEMENTATIONS = {
    "rnn.forward": rnn_forward, "rnn.backward": rnn_backward,
    "gru.forward": gru_forward, "gru.backward": gru_backward,
    "lstm.forward": lstm_forward, "lstm.backward": lstm_backward,
    "lru.forward": lru_forward, "lru.backward": lru_backward,
}
