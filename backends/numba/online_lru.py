r"""The LRU's online sweeps (lru.rtrl, lru.truncated, lru.spatial, lru.fptt, lru.fptt1) as Numba loops.

Same signatures, output names, dtypes and shapes as the references (refimpl/kernels.py → refimpl/algorithms/rtrl.py
cell_grads_online and refimpl/algorithms/fptt.py fptt_cell_grads with check=False). Equation numbers: "(r n)" is
refimpl/algorithms/rtrl.py, "(f n)" refimpl/algorithms/fptt.py, "(n)" refimpl/cells/lru.py.

Each kernel's time loop is ONE @njit(cache=True) function, t outermost, then batch b, then unit k (then input i); the
input projection u_t = γ ⊙ (B x_t) is one small GEMM per step (x_t @ W2ᵀ, W2 of backends.common.lru_w2), so nothing of
size T is stored except fptt's x̄ output. Complex numbers are carried as real pairs (re, im) in the state's real
dtype, which lets the inner i-loops vectorise. The LRU's traces (r 8) need less than the reference carries, by
linearity:

    Q_t = λ ⊙ Q_{t-1} + λ ⊙ h_{t-1}          S_ν = −e^ν ⊙ Q,  S_θ = i e^θ ⊙ Q            (lru 10)        c(B, N)
    Z_t = λ ⊙ Z_{t-1} + x_t (over k)         S_Bre = γ ⊙ Z,   S_Bim = i γ ⊙ Z            (lru 10)        c(B, N, I)
    S^γ_t = λ ⊙ S^γ_{t-1} + u_t                                                          (lru 10)        c(B, N)

so, with Σ over t and b and δ_t = dh_t (r 4, 7):  ν̄ = −e^ν Re Σ conj(Q)δ,  θ̄ = e^θ Im Σ conj(Q)δ,
B̄_re + i B̄_im = γ Σ conj(Z)δ,  γ̄_log = Re Σ conj(S^γ)δ. One complex Z trace serves both B_re and B_im.
Sums of scalars per unit are kept in float64; the (N, I) sums in the state's real dtype (as the reference's).
Everything else is sequential; lru.rtrl runs its batch in RTRL_BLOCKS blocks of rows on Numba's threads (prange),
each with its own partial sums added in block order, so every result is bit-reproducible run to run and independent of
the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from refimpl.cells.lru import lambda_gamma

from ..common import lru_param_grads, lru_w2
from .runtime import contiguous


#: Time steps per chunk: each trace row is advanced through a chunk while it is in L1 cache.
CHUNK = 32


def _setup(params, x):
    """λ c(N), γ r(N), real dtype, W2ᵀ r(I, 2N) (u_t = x_t @ W2ᵀ, re/im interleaved), λ as pairs r(N, 2)."""
    lam, gamma = lambda_gamma(params)                                                 # (1)
    rdt = np.dtype(x.dtype) if x.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    cdt = np.result_type(rdt, np.complex64)
    W2 = lru_w2(np, params, gamma.astype(rdt), rdt)                                  # (2) (2N, I)
    lam_pairs = contiguous(lam.astype(cdt).view(rdt).reshape(-1, 2), rdt)            # (N, 2)
    return lam, gamma.astype(rdt), rdt, cdt, W2, lam_pairs


def _pairs(z, cdt, rdt):
    """A complex (…, N) array as C-contiguous real pairs (…, 2N) (a view when it already is one)."""
    return contiguous(z, cdt).view(rdt)


# ------------------------------------------------------------------------------------------------------ rtrl (r 8)

@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def _rtrl_rows(x, h, dh, W2T, lam, chunk, b0, b1, gq, gg, Zre, Zim, Gre, Gim):
    """The rows [b0, b1) of the batch: x r(T,B,I), h = h0 pairs r(B,2N) (advanced in place), dh pairs r(T,B,2N),
    λ pairs r(N,2). Accumulates gq r(N,2) = Σ conj(Q)δ, gg r(N) = Re Σ conj(S^γ)δ (float64) and G = Σ conj(Z)δ r(N,I)
    ×2 over these rows. Time runs in chunks of `chunk` steps: units are independent (J = diag(λ)), so each trace row
    Z[b, k] is advanced through the chunk while it sits in L1 (the same per-step updates; only the order of the G sums
    changes)."""
    T, B, I = x.shape
    N = lam.shape[0]
    R = b1 - b0
    u = np.empty((chunk, R, 2 * N), x.dtype)               # u_t pairs of one chunk, these rows
    Q = np.zeros((R, 2 * N), x.dtype)                      # S_{-1} = 0 (r 3)
    Sg = np.zeros((R, 2 * N), x.dtype)
    for t0 in range(0, T, chunk):
        C = min(chunk, T - t0)
        for c in range(C):
            np.dot(x[t0 + c, b0:b1], W2T, u[c])            # (2) u_t = γ ⊙ (B x_t)
        for r in range(R):
            b = b0 + r
            for k in range(N):
                lr, li = lam[k, 0], lam[k, 1]
                hr, hi = h[b, 2 * k], h[b, 2 * k + 1]
                qr, qi = Q[r, 2 * k], Q[r, 2 * k + 1]
                sr, si = Sg[r, 2 * k], Sg[r, 2 * k + 1]
                zr, zi, gr, gi = Zre[b, k], Zim[b, k], Gre[k], Gim[k]
                for c in range(C):
                    t = t0 + c
                    ar, ai = lr * hr - li * hi, lr * hi + li * hr              # λ h_{t-1}
                    qr, qi = lr * qr - li * qi + ar, lr * qi + li * qr + ai    # (r 8) Q_t
                    ur, ui = u[c, r, 2 * k], u[c, r, 2 * k + 1]
                    sr, si = lr * sr - li * si + ur, lr * si + li * sr + ui    # (r 8) S^γ_t
                    hr, hi = ar + ur, ai + ui                                  # (3) h_t
                    dr, di = dh[t, b, 2 * k], dh[t, b, 2 * k + 1]
                    gq[k, 0] += qr * dr + qi * di                              # (r 4, 7) Re conj(Q)δ
                    gq[k, 1] += qr * di - qi * dr                              #          Im conj(Q)δ
                    gg[k] += sr * dr + si * di                                 # (r 4, 7) Re conj(S^γ)δ
                    xb = x[t, b]
                    for i in range(I):
                        p, q = zr[i], zi[i]
                        p, q = lr * p - li * q + xb[i], lr * q + li * p        # (r 8) Z_t
                        zr[i], zi[i] = p, q
                        gr[i] += p * dr + q * di                               # (r 4, 7) conj(Z)δ
                        gi[i] += p * di - q * dr
                h[b, 2 * k], h[b, 2 * k + 1] = hr, hi
                Q[r, 2 * k], Q[r, 2 * k + 1] = qr, qi
                Sg[r, 2 * k], Sg[r, 2 * k + 1] = sr, si


@njit(cache=True, parallel=True)
def _rtrl_loop(x, h, dh, W2T, lam, chunk, n_blocks, gq, gg, Zre, Zim, Gre, Gim):
    """The batch in `n_blocks` blocks of rows, one per task (prange): each block has its own partial sums, added in
    block order at the end, so the result does not depend on how many threads run the blocks."""
    T, B, I = x.shape
    N = lam.shape[0]
    pq = np.zeros((n_blocks, N, 2))
    pg = np.zeros((n_blocks, N))
    pre = np.zeros((n_blocks, N, I), Gre.dtype)
    pim = np.zeros((n_blocks, N, I), Gim.dtype)
    for j in prange(n_blocks):
        b0, b1 = (j * B) // n_blocks, ((j + 1) * B) // n_blocks
        _rtrl_rows(x, h, dh, W2T, lam, chunk, b0, b1, pq[j], pg[j], Zre, Zim, pre[j], pim[j])
    for j in range(n_blocks):                               # fixed order: deterministic for any thread count
        gq += pq[j]
        gg += pg[j]
        Gre += pre[j]
        Gim += pim[j]


#: Blocks of batch rows for the rtrl sweep (a constant, so that results do not depend on the thread count).
RTRL_BLOCKS = 4


def lru_rtrl(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray) -> dict:
    """As kernel lru.rtrl: x r(T,B,I), h0 c(B,N), dh c(T,B,N) → {param: grad} (exact RTRL = BPTT, r 8)."""
    T, B, I = x.shape
    lam, gamma, rdt, cdt, W2, lam_p = _setup(params, x)
    N = lam.shape[0]
    gq, gg = np.zeros((N, 2)), np.zeros(N)
    Zre, Zim = np.zeros((B, N, I), rdt), np.zeros((B, N, I), rdt)                 # the O(B·N·I) trace
    Gre, Gim = np.zeros((N, I), rdt), np.zeros((N, I), rdt)
    _rtrl_loop(contiguous(x, rdt), _pairs(h0, cdt, rdt).copy(), _pairs(dh, cdt, rdt), contiguous(W2.T, rdt), lam_p,
               CHUNK, min(B, RTRL_BLOCKS), gq, gg, Zre, Zim, Gre, Gim)
    return lru_param_grads(np, params, gq[:, 0], gq[:, 1], Gre, Gim, gamma, gamma_log=gg)      # (r 8)


# ------------------------------------------------------------------------------------- truncated, spatial (r 13, 14)

@njit(cache=True)
def _truncated_loop(x, h, dh, W2T, lam, recurrent, gq, gg, Gre, Gim):
    """S_t = P_t (r 13): accumulates gq = Σ conj(λ h_{t-1})δ (skipped when not `recurrent`, r 14), gg = Re Σ conj(u)δ,
    G = Σ x δ (N, I) ×2."""
    T, B, I = x.shape
    N = lam.shape[0]
    u = np.empty((B, 2 * N), x.dtype)
    for t in range(T):
        np.dot(x[t], W2T, u)                                               # (2) u_t
        for b in range(B):
            xb = x[t, b]
            for k in range(N):
                lr, li = lam[k, 0], lam[k, 1]
                hr, hi = h[b, 2 * k], h[b, 2 * k + 1]
                ar, ai = lr * hr - li * hi, lr * hi + li * hr              # λ h_{t-1}
                ur, ui = u[b, 2 * k], u[b, 2 * k + 1]
                h[b, 2 * k], h[b, 2 * k + 1] = ar + ur, ai + ui            # (3)
                dr, di = dh[t, b, 2 * k], dh[t, b, 2 * k + 1]
                if recurrent:
                    gq[k, 0] += ar * dr + ai * di                          # (lru 10), (r 4) P_ν, P_θ
                    gq[k, 1] += ar * di - ai * dr
                gg[k] += ur * dr + ui * di                                 # (lru 10) P_γ = u_t
                gr, gi = Gre[k], Gim[k]
                for i in range(I):
                    gr[i] += xb[i] * dr                                    # (lru 10) P_Bre = γ x, P_Bim = iγ x
                    gi[i] += xb[i] * di


def _lru_truncated_like(params, x, h0, dh, recurrent):
    T, B, I = x.shape
    lam, gamma, rdt, cdt, W2, lam_p = _setup(params, x)
    N = lam.shape[0]
    gq, gg = np.zeros((N, 2)), np.zeros(N)
    Gre, Gim = np.zeros((N, I), rdt), np.zeros((N, I), rdt)
    _truncated_loop(contiguous(x, rdt), _pairs(h0, cdt, rdt).copy(), _pairs(dh, cdt, rdt), contiguous(W2.T, rdt),
                    lam_p, recurrent, gq, gg, Gre, Gim)
    return lru_param_grads(np, params, gq[:, 0], gq[:, 1], Gre, Gim, gamma, gamma_log=gg,
                           recurrent=recurrent)                                                 # (r 13, 14)


def lru_truncated(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray) -> dict:
    """As kernel lru.truncated: S_t = P_t (r 13)."""
    return _lru_truncated_like(params, x, h0, dh, True)


def lru_spatial(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray) -> dict:
    """As kernel lru.spatial: (r 13) with nu_log, theta_log held constant (zero gradient, r 14)."""
    return _lru_truncated_like(params, x, h0, dh, False)


# --------------------------------------------------------------------------------------------------- fptt (f 1-4)

@njit(cache=True)
def _fptt_loop(x, h, dh, W2T, W2, lam, lam_c, two_passes, e_start, dlam, gg, Mre, Mim, dx):
    """Carriers e in float64 pairs r(B,2N) (λ_c = λ upcast), states and step adjoints in x's dtype. Writes e_{-1} into
    e_start, x̄_t into dx[t]; accumulates dlam r(N,2) = Σ conj(h_{t-1}) e, gg = Re Σ conj(u) e, M = Σ e x (N, I) ×2."""
    T, B, I = x.shape
    N = lam.shape[0]
    e = np.zeros((B, 2 * N))
    if two_passes:                                                         # phase 1: warm-up from e'_{-1} = 0
        P = np.zeros((N, 2))
        P[:, 0] = 1.0                                                      # P = 1 (pairs: re 1, im 0)
        for t in range(T):
            for b in range(B):
                for k in range(N):
                    lr, li = lam_c[k, 0], lam_c[k, 1]
                    vr, vi = e[b, 2 * k], e[b, 2 * k + 1]
                    if t > 0:
                        vr, vi = vr - dh[t - 1, b, 2 * k], vi - dh[t - 1, b, 2 * k + 1]
                    n2 = lr * lr + li * li
                    e[b, 2 * k], e[b, 2 * k + 1] = (vr * lr - vi * li) / n2, (vi * lr + vr * li) / n2   # (f 1) /conj(λ)
            for k in range(N):
                pr, pi, lr, li = P[k, 0], P[k, 1], lam_c[k, 0], lam_c[k, 1]
                P[k, 0], P[k, 1] = pr * lr + pi * li, pi * lr - pr * li    # (f 2) P ← P conj(λ)
        for b in range(B):
            for k in range(N):
                rr, ri = e[b, 2 * k] - dh[T - 1, b, 2 * k], e[b, 2 * k + 1] - dh[T - 1, b, 2 * k + 1]
                pr, pi = P[k, 0], P[k, 1]
                e[b, 2 * k], e[b, 2 * k + 1] = -(pr * rr - pi * ri), -(pr * ri + pi * rr)   # (f 3)
    e_start[:] = e
    u = np.empty((B, 2 * N), x.dtype)
    es = np.empty((B, 2 * N), x.dtype)                                     # e_t in the state dtype (step adjoint)
    for t in range(T):                                                     # phase 2: errors and gradients
        np.dot(x[t], W2T, u)                                               # (2) u_t
        for b in range(B):
            xb = x[t, b]
            for k in range(N):
                lr, li = lam_c[k, 0], lam_c[k, 1]
                vr, vi = e[b, 2 * k], e[b, 2 * k + 1]
                if t > 0:
                    vr, vi = vr - dh[t - 1, b, 2 * k], vi - dh[t - 1, b, 2 * k + 1]
                n2 = lr * lr + li * li
                er, ei = (vr * lr - vi * li) / n2, (vi * lr + vr * li) / n2              # (f 1)
                e[b, 2 * k], e[b, 2 * k + 1] = er, ei
                es[b, 2 * k], es[b, 2 * k + 1] = er, ei                                  # cast to the state dtype
                sr, si = es[b, 2 * k], es[b, 2 * k + 1]
                hr, hi = h[b, 2 * k], h[b, 2 * k + 1]
                ur, ui = u[b, 2 * k], u[b, 2 * k + 1]
                dlam[k, 0] += hr * sr + hi * si                            # (5) λ̄ = Σ conj(h_{t-1}) ū
                dlam[k, 1] += hr * si - hi * sr
                gg[k] += ur * sr + ui * si                                 # (6)(7) γ γ̄ = Re Σ conj(u) ū
                h[b, 2 * k] = lam[k, 0] * hr - lam[k, 1] * hi + ur         # (3) h_t
                h[b, 2 * k + 1] = lam[k, 0] * hi + lam[k, 1] * hr + ui
                mr, mi = Mre[k], Mim[k]
                for i in range(I):
                    mr[i] += sr * xb[i]                                    # (6) Σ ū xᵀ (γ applied after)
                    mi[i] += si * xb[i]
        np.dot(es, W2, dx[t])                                              # (6) x̄_t = Re((γ ⊙ ū) conj(B))


def _lru_fptt(params, x, h0, dh, two_passes):
    T, B, I = x.shape
    lam, gamma, rdt, cdt, W2, lam_p = _setup(params, x)
    N = lam.shape[0]
    lam_c = contiguous(lam.astype(cdt).astype(np.complex128).view(np.float64).reshape(N, 2), np.float64)  # carrier λ
    e_start = np.empty((B, 2 * N))
    dlam, gg = np.zeros((N, 2)), np.zeros(N)
    Mre, Mim = np.zeros((N, I), rdt), np.zeros((N, I), rdt)
    dx = np.empty((T, B, I), rdt)
    _fptt_loop(contiguous(x, rdt), _pairs(h0, cdt, rdt).copy(), _pairs(dh, np.complex128, np.float64),
               contiguous(W2.T, rdt), W2, lam_p, lam_c, two_passes, e_start, dlam, gg, Mre, Mim, dx)
    q = np.conj(lam.astype(cdt)).astype(np.complex128) * (dlam[:, 0] + 1j * dlam[:, 1])    # (7) conj(λ) λ̄
    grads = lru_param_grads(np, params, q.real, q.imag, Mre, Mim, gamma, gamma_log=gg)     # (6), (7)
    grads["x"] = dx.astype(x.dtype, copy=False)
    grads["h0"] = e_start.view(np.complex128).astype(cdt)                                   # e_{-1}
    return grads


def lru_fptt(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray) -> dict:
    """As kernel lru.fptt: warm-up (f 1-3) then the error pass (f 1, 4); → {param, "x" r(T,B,I), "h0" c(B,N)}."""
    return _lru_fptt(params, x, h0, dh, True)


def lru_fptt1(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray) -> dict:
    """As kernel lru.fptt1: the error pass only, from e_{-1} = 0."""
    return _lru_fptt(params, x, h0, dh, False)


KERNELS = {"lru.rtrl": lru_rtrl, "lru.truncated": lru_truncated, "lru.spatial": lru_spatial,
           "lru.fptt": lru_fptt, "lru.fptt1": lru_fptt1}
