r"""The LRU's online sweeps (lru.rtrl, lru.truncated, lru.spatial, lru.fptt, lru.fptt1) with mlx.core.

Same signatures, output names, dtypes and shapes as the references (refimpl/kernels.py → refimpl/algorithms/rtrl.py
cell_grads_online and refimpl/algorithms/fptt.py fptt_cell_grads with check=False). Equation numbers: "(r n)" is
refimpl/algorithms/rtrl.py, "(f n)" refimpl/algorithms/fptt.py, "(n)" refimpl/cells/lru.py. Complex64 states only (MLX
has no complex128).

RTRL (r 8). By linearity the traces the reference carries reduce to three (as in the Numba backend):

    Q_t = λ ⊙ Q_{t-1} + λ ⊙ h_{t-1}      S_ν = −e^ν ⊙ Q,  S_θ = i e^θ ⊙ Q                          c(B, N)
    Σ_t = λ ⊙ Σ_{t-1} + u_t              S_γ = Σ                                                   c(B, N)
    Z_t = λ ⊙ Z_{t-1} + x_t (over k)     S_Bre = γ ⊙ Z,  S_Bim = i γ ⊙ Z                            c(B, N, I)

with ∂L/∂p = Re Σ_t Σ_b conj(S_t) ⊙ δ_t (r 4, 7), δ_t = dh_t. Every trace is Y_t = λ ⊙ Y_{t-1} + a_t. The sweep runs
in blocks of C = CHUNK steps (the chunks of DESIGN.md §5), carrying Q, Σ, Z from block to block — memory O(C) plus the
traces, independent of T. Inside a block starting from Y_in, with c, s = 0 … C-1,

    (R1) Y_c = λ^{c+1} Y_in + Σ_{s≤c} λ^{c-s} a_s                                                 (unrolled (r 8))
    (R2) Σ_c conj(Y_c) δ_c = conj(Y_in) ε_in + Σ_s conj(a_s) ε_s,
         ε_s = Σ_{c≥s} conj(λ)^{c-s} δ_c  (= δ_s + conj(λ) ε_{s+1}, a C-step scan),   ε_in = conj(λ) ε_0
    (R3) Y_out = λ^C Y_in + Σ_s λ^{C-1-s} a_s                                                     (the carried trace)

— the same sums as the step-by-step update, grouped so that the O(B·N·I) work of the Z trace is two GEMMs per block
((R2): Σ_{s,b} x_s ε_s = x (C·B, I)ᵀ @ ε (C·B, N); (R3): λ^{C-1-s} (N, C) @ x (C, B·I)) instead of C passes over Z.
Powers λ^c = exp(c·(−e^ν + i e^θ)) come straight from the parameters.

truncated / spatial (r 13, 14): S_t = P_t, so every gradient is a sum over (t, b) of the immediate derivatives
(lru 10): ν̄ = −e^ν Re Σ conj(λ h_{t-1}) δ, θ̄ = e^θ Im Σ conj(λ h_{t-1}) δ, γ̄_log = Re Σ conj(u) δ,
B̄_re + i B̄_im = γ Σ x δ (spatial: ν̄ = θ̄ = 0) — after one forward scan for h_{t-1}.

FPTT (f 1–4), float64 carriers like the reference's default: MLX has no complex128, so the carriers e, e′ and P are
float64 pairs (re, im) and (f 1)'s division by conj(λ) is written out, e = v λ / |λ|². The error pass casts each e_t to
complex64 — the step adjoints ū_t of the cell's backward (f 4) — and the gradients are the cells' GEMMs over all steps.
"""

from __future__ import annotations

import mlx.core as mx

from ..common import lru_param_grads, previous_states
from .cells import lambda_gamma, lru_grads, lru_input, lru_scan
from .runtime import complex_from, kernel, rows

#: Time steps per block of the RTRL sweep (the traces are carried between blocks). A block's memory is O(C·B·N); the
#: carry (R3) costs as much as a block's (R2) GEMMs, so the blocks are as long as that memory allows comfortably.
CHUNK = 256


# ------------------------------------------------------------------------------------------------------ rtrl (r 8)

def _log_lambda(params):
    """log λ = −exp(ν_log) + i exp(θ_log) c(N), eq. (1): λ^c = exp(c log λ)."""
    return complex_from(-mx.exp(params["nu_log"]), mx.exp(params["theta_log"]))


@mx.compile
def _eps_step(conj_lam, delta_s, eps_next):
    return delta_s + conj_lam * eps_next                                     # (R2) ε_s = δ_s + conj(λ) ε_{s+1}


def _block_errors(lam, delta):
    """ε_s = Σ_{c≥s} conj(λ)^{c-s} δ_c for s = 0 … C-1 (R2): a backward scan over the block only. c(C, B, N)."""
    conj_lam = mx.conj(lam)
    eps = [None] * delta.shape[0]
    eps_next = mx.zeros_like(delta[0])
    for s in reversed(range(delta.shape[0])):
        eps[s] = eps_next = _eps_step(conj_lam, delta[s], eps_next)
    return mx.stack(eps)


def _rtrl_block(log_lam, lam, x, u, h_prev, delta, traces, carry=True):
    """One block of C steps from the carried traces (Q, Σ, Z) → (gQ c(N), gΣ c(N), G c(N, I), traces out).
    carry=False (the last block): the traces out are not formed (None).

    gQ = Σ conj(Q) δ, gΣ = Σ conj(Σ) δ, G = Σ conj(Z) δ over the block's steps and the batch, eqs. (R1)–(R3).
    Z is held as c(N, B, I) (unit-major, so that (R3) is one GEMM).
    """
    Q_in, S_in, Z_in = traces
    C, B, I = x.shape
    eps = _block_errors(lam, delta)                                          # (R2) ε_s    c(C, B, N)
    eps_in = mx.conj(lam) * eps[0]                                           # (R2) ε_in   c(B, N)
    a_Q = lam * h_prev                                                       # (r 8) Q's input λ h_{t-1}
    gQ = mx.sum(mx.conj(Q_in) * eps_in, axis=0) + mx.sum(rows(mx.conj(a_Q) * eps), axis=0)     # (R2)
    gS = mx.sum(mx.conj(S_in) * eps_in, axis=0) + mx.sum(rows(mx.conj(u) * eps), axis=0)       # (R2)
    x2 = rows(x)                                                             # (C·B, I)
    G = (mx.sum(mx.conj(Z_in) * eps_in.T[:, :, None], axis=1)                # (R2) carried part  c(N, I)
         + complex_from(rows(mx.real(eps)).T @ x2, rows(mx.imag(eps)).T @ x2))   # (R2) Σ_{s,b} ε_s x_sᵀ
    if not carry:
        return gQ, gS, G, None
    steps = mx.arange(C - 1, -1, -1, dtype=x.dtype)[:, None]                # C-1-s
    w = mx.exp(steps * log_lam)                                              # (R3) λ^{C-1-s}  c(C, N)
    lam_C = lam * w[0]                                                       # λ^C
    Q_out = lam_C * Q_in + mx.sum(w[:, None] * a_Q, axis=0)                  # (R3)
    S_out = lam_C * S_in + mx.sum(w[:, None] * u, axis=0)                    # (R3)
    xw = x.reshape(C, B * I)
    Z_out = lam_C[:, None, None] * Z_in + complex_from(mx.real(w).T @ xw, mx.imag(w).T @ xw).reshape(-1, B, I)  # (R3)
    return gQ, gS, G, (Q_out, S_out, Z_out)


def _lru_grads(params, gamma, gQ, gS, G, recurrent=True):
    """The parameter gradients from gQ = Σ conj(Q) δ, gΣ = Σ conj(Σ) δ, G = Σ conj(Z) δ (module docstring):
    S_ν = −e^ν Q, S_θ = i e^θ Q, S_γ = Σ, S_B = γ Z (backends.common.lru_param_grads)."""
    return lru_param_grads(mx, params, mx.real(gQ), mx.imag(gQ), mx.real(G), mx.imag(G), gamma,
                           gamma_log=mx.real(gS), recurrent=recurrent, wide=False)


@kernel
def lru_rtrl(params: dict, x: mx.array, h0: mx.array, dh: mx.array) -> dict:
    """As kernel lru.rtrl: x r(T,B,I), h0 c(B,N), dh c(T,B,N) → {param: grad} (exact RTRL = BPTT, r 8), in blocks of
    CHUNK steps with the traces carried between them."""
    T, B, I = x.shape
    lam, gamma = lambda_gamma(params)                                        # (1)
    log_lam, N = _log_lambda(params), lam.shape[0]
    zero = mx.zeros((B, N), dtype=h0.dtype)
    traces = (zero, zero, mx.zeros((N, B, I), dtype=h0.dtype))               # S_{-1} = 0
    gQ, gS, G = mx.zeros((N,), h0.dtype), mx.zeros((N,), h0.dtype), mx.zeros((N, I), h0.dtype)
    h_last = h0
    for t0 in range(0, T, CHUNK):
        blk = slice(t0, min(t0 + CHUNK, T))
        u = lru_input(params, x[blk], gamma)                                 # (2) u_t of the block
        h = lru_scan(lam, h_last, u)                                         # (3) the block's states
        dQ, dS, dG, traces = _rtrl_block(log_lam, lam, x[blk], u, previous_states(mx, h_last, h), dh[blk], traces,
                                         carry=blk.stop < T)
        gQ, gS, G, h_last = gQ + dQ, gS + dS, G + dG, h[-1]
    return _lru_grads(params, gamma, gQ, gS, G)


# ------------------------------------------------------------------------------------- truncated, spatial (r 13, 14)

def _lru_truncated(params, x, h0, dh, recurrent):
    lam, gamma = lambda_gamma(params)
    u = lru_input(params, x, gamma)                                          # (2)
    h_prev = previous_states(mx, h0, lru_scan(lam, h0, u))                               # (3) h_{t-1}
    x2 = rows(x)
    gQ = mx.sum(rows(mx.conj(lam * h_prev) * dh), axis=0)                    # (lru 10) P_ν, P_θ ∝ λ h_{t-1}
    gS = mx.sum(rows(mx.conj(u) * dh), axis=0)                               # (lru 10) P_γ = u_t
    G = complex_from(rows(mx.real(dh)).T @ x2, rows(mx.imag(dh)).T @ x2)     # (lru 10) P_B ∝ γ x_t
    return _lru_grads(params, gamma, gQ, gS, G, recurrent)


@kernel
def lru_truncated(params: dict, x: mx.array, h0: mx.array, dh: mx.array) -> dict:
    """As kernel lru.truncated: S_t = P_t (r 13)."""
    return _lru_truncated(params, x, h0, dh, True)


@kernel
def lru_spatial(params: dict, x: mx.array, h0: mx.array, dh: mx.array) -> dict:
    """As kernel lru.spatial: (r 13) with nu_log, theta_log held constant (zero gradient, r 14)."""
    return _lru_truncated(params, x, h0, dh, False)


# --------------------------------------------------------------------------------------------------- fptt (f 1-4)

@mx.compile
def _divide_by_conj_lambda(vr, vi, lr, li):
    """(f 1) v / conj(λ) = v λ / |λ|², on float64 pairs."""
    n2 = lr * lr + li * li
    return (vr * lr - vi * li) / n2, (vi * lr + vr * li) / n2


def _lru_fptt(params, x, h0, dh, two_passes):
    T, B, _ = x.shape
    lam, gamma = lambda_gamma(params)                                        # (1), complex64
    lr, li = mx.real(lam).astype(mx.float64), mx.imag(lam).astype(mx.float64)   # carrier λ (complex64 → pairs)
    dr, di = mx.real(dh).astype(mx.float64), mx.imag(dh).astype(mx.float64)     # dh_t as carriers
    er = ei = mx.zeros((B, lam.shape[0]), dtype=mx.float64)
    if two_passes:                                                           # phase 1: warm-up from e'_{-1} = 0
        Pr, Pi = mx.ones_like(lr), mx.zeros_like(li)                         # P = 1 (the same for every b)
        for t in range(T):
            vr, vi = (er - dr[t - 1], ei - di[t - 1]) if t > 0 else (er, ei)
            er, ei = _divide_by_conj_lambda(vr, vi, lr, li)                  # (f 1)
            Pr, Pi = Pr * lr + Pi * li, Pi * lr - Pr * li                    # (f 2) P ← P conj(λ)
        rr, ri = er - dr[T - 1], ei - di[T - 1]
        er, ei = -(Pr * rr - Pi * ri), -(Pr * ri + Pi * rr)                  # (f 3) e_{-1} = −P (e'_{T-1} − dh_{T-1})
    e_start = complex_from(er.astype(mx.float32), ei.astype(mx.float32))
    du = []
    for t in range(T):                                                       # phase 2: the exact errors
        vr, vi = (er - dr[t - 1], ei - di[t - 1]) if t > 0 else (er, ei)
        er, ei = _divide_by_conj_lambda(vr, vi, lr, li)                      # (f 1)
        du.append(complex_from(er.astype(mx.float32), ei.astype(mx.float32)))   # e_t in the state dtype: ū_t (f 4)
    h_prev = previous_states(mx, h0, lru_scan(lam, h0, lru_input(params, x, gamma)))   # (2), (3): the states
    grads = lru_grads(params, lam, gamma, x, h_prev, mx.stack(du))           # (f 4): (5)–(7) summed over t
    grads["h0"] = e_start.astype(h0.dtype)                                   # e_{-1}
    return grads


@kernel(float64_carriers=True)
def lru_fptt(params: dict, x: mx.array, h0: mx.array, dh: mx.array) -> dict:
    """As kernel lru.fptt: warm-up (f 1-3) then the error pass (f 1, 4); → {param, "x" r(T,B,I), "h0" c(B,N)}."""
    return _lru_fptt(params, x, h0, dh, True)


@kernel(float64_carriers=True)
def lru_fptt1(params: dict, x: mx.array, h0: mx.array, dh: mx.array) -> dict:
    """As kernel lru.fptt1: the error pass only, from e_{-1} = 0."""
    return _lru_fptt(params, x, h0, dh, False)


KERNELS = {"lru.rtrl": lru_rtrl, "lru.truncated": lru_truncated, "lru.spatial": lru_spatial,
           "lru.fptt": lru_fptt, "lru.fptt1": lru_fptt1}
