r"""The LRU's online sweeps (lru.rtrl, lru.truncated, lru.spatial, lru.fptt, lru.fptt1) on a CUDA device.

Same signatures (after the device), output names, dtypes and shapes as the references (refimpl/kernels.py →
refimpl/algorithms/rtrl.py cell_grads_online and refimpl/algorithms/fptt.py fptt_cell_grads with check=False). Equation
numbers: "(r n)" refimpl/algorithms/rtrl.py, "(f n)" refimpl/algorithms/fptt.py, "(n)" refimpl/cells/lru.py. The CUDA
bodies are in sources.py.

The input projection u_t = γ ⊙ (B x_t) of all T steps is one GEMM (cells.lru_setup); then the time loop runs inside
one kernel, one thread per (b, k) pair marching over t. The traces (r 8) are carried in registers, by linearity in
the compact form

    Q_t = λ ⊙ Q_{t-1} + λ ⊙ h_{t-1}          S_ν = −e^ν ⊙ Q,  S_θ = i e^θ ⊙ Q            (lru 10)        c(B, N)
    Z_t = λ ⊙ Z_{t-1} + x_t (over k)         S_Bre = γ ⊙ Z,   S_Bim = i γ ⊙ Z            (lru 10)        c(B, N, I)
    S^γ_t = λ ⊙ S^γ_{t-1} + u_t                                                          (lru 10)        c(B, N)

so with δ_t = dh_t (r 4, 7):  ν̄ = −e^ν Re Σ conj(Q)δ,  θ̄ = e^θ Im Σ conj(Q)δ,  B̄_re + i B̄_im = γ Σ conj(Z)δ,
γ̄_log = Re Σ conj(S^γ)δ (Σ over t and b). The Z trace is independent of the state, so it has its own kernel with one
thread per (b, k, i) (lru_sens_input) — no O(B·N·I) trace in memory. Truncation (r 13) keeps only the immediate
parts (the same state kernel with carry = 0); its B̄ is the GEMM γ Σ_t dh_tᵀ x_t. Per-thread sums are float64 and
are summed over the batch by the host.

FPTT (f 1-4): one kernel, one thread per (b, k), runs the warm-up (float64 carriers e, P; (f 1)-(f 3)) and the error
pass, writing e_t in the state dtype (T, B, 2N); B̄ and x̄ are then GEMMs on it, as in the backward of cells.py.
"""

from __future__ import annotations

import numpy as np

from ..common import lru_param_grads
from .cells import lru_setup
from .runtime import contiguous
from .sources import LRU


def _state_sweep(dev, lam, u, h0, dh, cdt, carry: bool, recurrent: bool):
    """The state kernel: (Σ_b Σ_t conj(Q)δ (N, 2), Re Σ_b Σ_t conj(S^γ)δ (N)), float64."""
    xp = dev.xp
    T, B, N = dh.shape
    gq, gg = xp.empty((B, N, 2), np.float64), xp.empty((B, N), np.float64)
    dev.launch(LRU, "lru_sens_state", cdt, B * N, u, h0, dh, lam, gq, gg, T, B * N, N, int(carry), int(recurrent))
    return gq.sum(axis=0), gg.sum(axis=0)


def lru_rtrl(dev, params: dict, x, h0, dh) -> dict:
    """As kernel lru.rtrl: x r(T,B,I), h0 c(B,N), dh c(T,B,N) → {param: grad} (exact RTRL = BPTT, r 8)."""
    xp = dev.xp
    T, B, I = x.shape
    lam, gamma, rdt, cdt, _, u = lru_setup(xp, params, x, h0)
    N = lam.shape[0]
    h0, dh = contiguous(xp, h0, cdt), contiguous(xp, dh, cdt)
    gq, gg = _state_sweep(dev, lam, u, h0, dh, cdt, carry=True, recurrent=True)                # (r 8) Q, S^γ
    G = xp.empty((B, N, I, 2), np.float64)
    dev.launch(LRU, "lru_sens_input", cdt, B * N * I, contiguous(xp, x, rdt), dh, lam, G, T, B, N, I)  # (r 8) Z
    G = G.sum(axis=0)                                                                         # (N, I, 2)
    return lru_param_grads(xp, params, gq[:, 0], gq[:, 1], G[..., 0], G[..., 1], gamma, gamma_log=gg)   # (r 8)


def _lru_truncated_like(dev, params, x, h0, dh, recurrent):
    xp = dev.xp
    T, B, I = x.shape
    lam, gamma, rdt, cdt, _, u = lru_setup(xp, params, x, h0)
    N = lam.shape[0]
    dh = contiguous(xp, dh, cdt)
    gq, gg = _state_sweep(dev, lam, u, contiguous(xp, h0, cdt), dh, cdt, carry=False, recurrent=recurrent)     # (r 13)
    x2 = contiguous(xp, x, rdt).reshape(T * B, I)
    G_re = contiguous(xp, dh.real, rdt).reshape(T * B, N).T @ x2     # (lru 10) P_Bre = γ x, P_Bim = i γ x: Σ x δ
    G_im = contiguous(xp, dh.imag, rdt).reshape(T * B, N).T @ x2
    return lru_param_grads(xp, params, gq[:, 0], gq[:, 1], G_re, G_im, gamma, gamma_log=gg,
                           recurrent=recurrent)                                                  # (r 13), (r 14)


def lru_truncated(dev, params: dict, x, h0, dh) -> dict:
    """As kernel lru.truncated: S_t = P_t (r 13)."""
    return _lru_truncated_like(dev, params, x, h0, dh, True)


def lru_spatial(dev, params: dict, x, h0, dh) -> dict:
    """As kernel lru.spatial: (r 13) with nu_log, theta_log held constant (zero gradient, r 14)."""
    return _lru_truncated_like(dev, params, x, h0, dh, False)


def _lru_fptt(dev, params, x, h0, dh, two_passes):
    xp = dev.xp
    T, B, I = x.shape
    lam, gamma, rdt, cdt, W2, u = lru_setup(xp, params, x, h0)
    N = lam.shape[0]
    e_start = xp.empty((B, N), np.complex128)
    es = xp.empty((T, B, 2 * N), rdt)                                         # e_t = ū_t in the state dtype (f 4)
    dlam, gg = xp.empty((B, N, 2), np.float64), xp.empty((B, N), np.float64)
    dev.launch(LRU, "lru_fptt", cdt, B * N, u, contiguous(xp, h0, cdt), contiguous(xp, dh, cdt), lam, e_start, es,
               dlam, gg, T, B * N, N, int(two_passes))                                  # (f 1)-(f 4)
    dlam, gg = dlam.sum(axis=0), gg.sum(axis=0)
    es2 = es.reshape(T * B, 2 * N)
    M = es2.T @ contiguous(xp, x, rdt).reshape(T * B, I)                              # (6) Σ ū xᵀ, rows re/im
    q = xp.conj(lam).astype(np.complex128) * (dlam[:, 0] + 1j * dlam[:, 1])                    # (7) conj(λ) λ̄
    grads = lru_param_grads(xp, params, q.real, q.imag, M[0::2], M[1::2], gamma, gamma_log=gg)   # (6), (7)
    grads["x"] = (es2 @ W2).reshape(x.shape).astype(x.dtype)                 # (6) x̄_t = Re((γ ⊙ ū) conj(B))
    grads["h0"] = e_start.astype(cdt)                                         # e_{-1}
    return grads


def lru_fptt(dev, params: dict, x, h0, dh) -> dict:
    """As kernel lru.fptt: warm-up (f 1-3) then the error pass (f 1, 4); → {param, "x" r(T,B,I), "h0" c(B,N)}."""
    return _lru_fptt(dev, params, x, h0, dh, True)


def lru_fptt1(dev, params: dict, x, h0, dh) -> dict:
    """As kernel lru.fptt1: the error pass only, from e_{-1} = 0."""
    return _lru_fptt(dev, params, x, h0, dh, False)


IMPLEMENTATIONS = {"lru.rtrl": lru_rtrl, "lru.truncated": lru_truncated, "lru.spatial": lru_spatial,
                   "lru.fptt": lru_fptt, "lru.fptt1": lru_fptt1}
