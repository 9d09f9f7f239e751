r"""The LRU's online sweeps (lru.rtrl, lru.truncated, lru.spatial; lru.fptt, lru.fptt_warmup, lru.fptt_shooting,
lru.fptt1) in Numba.

Same signatures, output names, dtypes and shapes as the references (refimpl/kernels.py → refimpl/algorithms/rtrl.py
sweep, refimpl/algorithms/fptt.py fptt_warmup, fptt_shooting, fptt_errors and fptt_cell_grads with check=False). Every
kernel but lru.fptt sweeps one chunk of a stream and hands on the state after it and its carry (DESIGN.md §5): the
rtrl traces in the reference's "diag" layout (rtrl.py, "Trace layouts"; {} for truncated and spatial), FPTT's carriers
{"v"} (fptt1), {"Q", "e"} (fptt_warmup, the direct warm-up) and {"v", "P"} (fptt_shooting), complex128 (B, N).
Equation numbers: "(r n)" is refimpl/algorithms/rtrl.py, "(f n)" refimpl/algorithms/fptt.py, "(n)" refimpl/cells/lru.py.

Each kernel's time loop is ONE @njit(cache=True) function, t outermost, then batch b, then unit k (then input i); the
input projection u_t = γ ⊙ (B x_t) is one small GEMM per step (x_t @ W2ᵀ, W2 of backends.common.lru_w2), so nothing of
size T is stored except fptt's x̄ output. Complex numbers are carried as real pairs (re, im) in the state's real
dtype, which lets the inner i-loops vectorise. The LRU's traces (r 8) need less than the reference carries, by
linearity:

    Q_t = λ ⊙ Q_{t-1} + λ ⊙ h_{t-1}          S_ν = −e^ν ⊙ Q,  S_θ = i e^θ ⊙ Q            (lru 10)        c(B, N)
    Z_t = λ ⊙ Z_{t-1} + x_t (over k)         S_Bre = γ ⊙ Z,   S_Bim = i γ ⊙ Z            (lru 10)        c(B, N, I)
    S^γ_t = λ ⊙ S^γ_{t-1} + u_t                                                          (lru 10)        c(B, N)

(the reference's carry enters once per call, by linearity (_with_carry), and the compact traces are converted to the
reference's layout on the way out — skipped with carry_out=False, whose "carry" is None), so, with Σ over t and b
and δ_t = dh_t (r 4, 7):
ν̄ = −e^ν Re Σ conj(Q)δ,  θ̄ = e^θ Im Σ conj(Q)δ,  B̄_re + i B̄_im = γ Σ conj(Z)δ,  γ̄_log = Re Σ conj(S^γ)δ. One complex
Z trace serves both B_re and B_im.
FPTT (J_t = diag(λ): every product is elementwise, O(B·N) per step; FPTT's Q is the Jacobian product, not the rtrl
trace Q above):
    direct warm-up (fptt_warmup)       Q ← Q ⊙ conj(λ) (f 2) first, then e ← e + Q ⊙ dh_t (f 3) with the new Q; no
                                       division; from Q = 1, e = 0; e_{-1} = e at the stream's end
    shooting warm-up (fptt_shooting)   e'_t = v'_{t-1} / conj(λ) (f 1), v'_t = e'_t − dh_t, P ← P ⊙ conj(λ) (f 2s);
                                       from v' = 0, P = 1; e_{-1} = −P v' (f 3s)
    error phase (fptt1)                e_t = v_{t-1} / conj(λ) (f 1), v_t = e_t − dh_t, and the gradients (f 4)
lru.fptt is the direct warm-up from the stream's start, e_{-1} = e, then the error phase from v = e_{-1}. Memory: the
carriers (two (B, N) complex128 arrays), independent of T.
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
from .runtime import check_carry, contiguous


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
def _rtrl_rows(x, h, dh, W2T, lam, chunk, b0, b1, gq, gg, Q, Sg, Zre, Zim, Gre, Gim):
    """The rows [b0, b1) of the batch: x r(T,B,I), h = h0 pairs r(B,2N), dh pairs r(T,B,2N), λ pairs r(N,2); the
    traces Q, S^γ pairs r(B,2N) and Z = Zre + i Zim r(B,N,I) ×2 hold the carried ones on entry; h and the traces are
    advanced in place. Accumulates gq r(N,2) = Σ conj(Q)δ, gg r(N) = Re Σ conj(S^γ)δ (float64) and G = Σ conj(Z)δ
    r(N,I) ×2 over these rows. Time runs in chunks of `chunk` steps: units are independent (J = diag(λ)), so each
    trace row Z[b, k] is advanced through the chunk while it sits in L1 (the same per-step updates; only the order of
    the G sums changes)."""
    T, B, I = x.shape
    N = lam.shape[0]
    R = b1 - b0
    u = np.empty((chunk, R, 2 * N), x.dtype)               # u_t pairs of one chunk, these rows
    for t0 in range(0, T, chunk):
        C = min(chunk, T - t0)
        for c in range(C):
            np.dot(x[t0 + c, b0:b1], W2T, u[c])            # (2) u_t = γ ⊙ (B x_t)
        for r in range(R):
            b = b0 + r
            for k in range(N):
                lr, li = lam[k, 0], lam[k, 1]
                hr, hi = h[b, 2 * k], h[b, 2 * k + 1]
                qr, qi = Q[b, 2 * k], Q[b, 2 * k + 1]
                sr, si = Sg[b, 2 * k], Sg[b, 2 * k + 1]
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
                Q[b, 2 * k], Q[b, 2 * k + 1] = qr, qi
                Sg[b, 2 * k], Sg[b, 2 * k + 1] = sr, si


@njit(cache=True, parallel=True)
def _rtrl_loop(x, h, dh, W2T, lam, chunk, n_blocks, gq, gg, Q, Sg, Zre, Zim, Gre, Gim):
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
        _rtrl_rows(x, h, dh, W2T, lam, chunk, b0, b1, pq[j], pg[j], Q, Sg, Zre, Zim, pre[j], pim[j])
    for j in range(n_blocks):                               # fixed order: deterministic for any thread count
        gq += pq[j]
        gg += pg[j]
        Gre += pre[j]
        Gim += pim[j]


#: Blocks of batch rows for the rtrl sweep (a constant, so that results do not depend on the thread count).
RTRL_BLOCKS = 4


def _traces_out(params, Q, Sg, Zre, Zim, cdt):
    """The reference's "diag" carry from the compact traces (lru 10): S_ν = −e^ν Q, S_θ = i e^θ Q, S_Bre = γ Z,
    S_Bim = iγ Z, S_γlog = S^γ, in the state's complex dtype."""
    Qc = Q.view(cdt).astype(np.complex128)
    Z = Zre.astype(np.complex128) + 1j * Zim
    gamma = np.exp(params["gamma_log"].astype(np.float64))[:, None]
    return {"nu_log": (-np.exp(params["nu_log"].astype(np.float64)) * Qc).astype(cdt),
            "theta_log": (1j * np.exp(params["theta_log"].astype(np.float64)) * Qc).astype(cdt),
            "gamma_log": Sg.view(cdt).copy(),
            "B_re": (gamma * Z).astype(cdt), "B_im": (1j * gamma * Z).astype(cdt)}


def lru_rtrl(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, carry=None, *,
             carry_out: bool = True) -> dict:
    """As kernel lru.rtrl: x r(T,B,I), h0 c(B,N), dh c(T,B,N), the carried "diag" traces (None: zero) → {param: grad,
    "state" c(B,N), "carry": the traces after the chunk, or None with carry_out=False (no _traces_out then)} (exact
    RTRL = BPTT, r 8)."""
    T, B, I = x.shape
    lam, gamma, rdt, cdt, W2, lam_p = _setup(params, x)
    N = lam.shape[0]
    gq, gg = np.zeros((N, 2)), np.zeros(N)
    Q, Sg = np.zeros((B, 2 * N), rdt), np.zeros((B, 2 * N), rdt)                   # the chunk's own part, from 0
    Zre, Zim = np.zeros((B, N, I), rdt), np.zeros((B, N, I), rdt)                  # Z: the O(B·N·I) trace
    Gre, Gim = np.zeros((N, I), rdt), np.zeros((N, I), rdt)
    h = _pairs(h0, cdt, rdt).copy()
    _rtrl_loop(contiguous(x, rdt), h, _pairs(dh, cdt, rdt), contiguous(W2.T, rdt), lam_p, CHUNK, min(B, RTRL_BLOCKS),
               gq, gg, Q, Sg, Zre, Zim, Gre, Gim)
    grads = lru_param_grads(np, params, gq[:, 0], gq[:, 1], Gre, Gim, gamma, gamma_log=gg)      # (r 8)
    out = _traces_out(params, Q, Sg, Zre, Zim, cdt) if carry_out else None
    if carry is not None:
        grads, out = _with_carry(params, carry, lam, dh, grads, out, B, N, I)
    return {**grads, "state": h.view(cdt), "carry": out}


def _with_carry(params, carry, lam, dh, grads, out, B, N, I):
    """The carried traces' part, by linearity: (r 8) is linear in S, so a chunk from S_{-1} is the chunk from 0 plus
    λ^{t+1} ⊙ S_{-1} at step t. Its gradient is Re Σ_b conj(S_{-1}) ⊙ w with w = Σ_t conj(λ^{t+1}) δ_t (B, N), and the
    carry out gains λ^T ⊙ S_{-1} (unless it is None: not handed on). Once per call (O(T·B·N) for w), exact for any
    carry — also one made with other parameters (an update inside the stream changes ν, θ, γ between chunks)."""
    check_carry(carry, {"nu_log": (B, N), "theta_log": (B, N), "gamma_log": (B, N), "B_re": (B, N, I),
                        "B_im": (B, N, I)}, "lru.rtrl")
    powers = np.cumprod(np.broadcast_to(lam.astype(np.complex128), (dh.shape[0], N)), axis=0)    # λ^{t+1} (T, N)
    w = np.einsum("tn,tbn->bn", np.conj(powers), dh.astype(np.complex128))                     # (B, N)
    grads, out = dict(grads), (None if out is None else dict(out))
    for name, S0 in carry.items():
        S0 = np.asarray(S0, np.complex128)
        wb = w.reshape(w.shape + (1,) * (S0.ndim - 2))
        grads[name] = (grads[name] + np.real(np.einsum("bn...->n...", np.conj(S0) * wb))).astype(grads[name].dtype)
        if out is None:
            continue
        lamT = powers[-1].reshape((N,) + (1,) * (S0.ndim - 2))
        out[name] = (out[name] + lamT * S0).astype(out[name].dtype)
    return grads, out


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


def _lru_truncated_like(params, x, h0, dh, recurrent, carry_out):
    """(r 13), (r 14) over one chunk → {param: grad, "state" c(B,N), "carry": {} (None with carry_out=False)} (nothing
    is carried; a carry passed in is not read, as in the reference)."""
    T, B, I = x.shape
    lam, gamma, rdt, cdt, W2, lam_p = _setup(params, x)
    N = lam.shape[0]
    gq, gg = np.zeros((N, 2)), np.zeros(N)
    Gre, Gim = np.zeros((N, I), rdt), np.zeros((N, I), rdt)
    h = _pairs(h0, cdt, rdt).copy()
    _truncated_loop(contiguous(x, rdt), h, _pairs(dh, cdt, rdt), contiguous(W2.T, rdt), lam_p, recurrent, gq, gg,
                    Gre, Gim)
    grads = lru_param_grads(np, params, gq[:, 0], gq[:, 1], Gre, Gim, gamma, gamma_log=gg,
                            recurrent=recurrent)                                                # (r 13, 14)
    return {**grads, "state": h.view(cdt), "carry": {} if carry_out else None}


def lru_truncated(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, carry=None, *,
                  carry_out: bool = True) -> dict:
    """As kernel lru.truncated: S_t = P_t (r 13); carry {} (None with carry_out=False)."""
    return _lru_truncated_like(params, x, h0, dh, True, carry_out)


def lru_spatial(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, carry=None, *,
                carry_out: bool = True) -> dict:
    """As kernel lru.spatial: (r 13) with nu_log, theta_log held constant (zero gradient, r 14); carry {} (None with
    carry_out=False)."""
    return _lru_truncated_like(params, x, h0, dh, False, carry_out)


# --------------------------------------------------------------------------------------------------- fptt (f 1-4)
# The direct warm-up carries Q and e; the shooting warm-up and the error phase carry v_t = e_t − dh_t between steps
# (fptt.py): e_t = v_{t-1} / conj(λ) (f 1), v_t = e_t − dh_t. The carriers (Q, e; v, P) are float64 pairs r(B,2N)
# (complex128), λ_c = λ upcast; the states and the step
# adjoints run in x's dtype.

@njit(cache=True)
def _warmup_loop(x, h, dh, W2T, lam, lam_c, direct, M, w, states):
    """Phase 1 over the chunk, the carried product M and vector w (pairs r(B,2N)) advanced in place.
    direct: M = Q, w = e — (f 2) Q ← Q ⊙ conj(λ) first, then (f 3) e ← e + Q ⊙ dh_t with the new Q; no division.
    shooting: M = P, w = v' — (f 1) e'_t = v'_{t-1} / conj(λ), v'_t = e'_t − dh_t, and (f 2s) P ← P ⊙ conj(λ).
    J_t = diag(λ) does not depend on the state, so the states run only when `states` (the chunked kernels hand h on,
    advanced in place; lru.fptt's warm-up over the whole sequence needs none)."""
    T, B, I = x.shape
    N = lam.shape[0]
    u = np.zeros((B, 2 * N), x.dtype)
    for t in range(T):
        if states:
            np.dot(x[t], W2T, u)                                           # (2) u_t
        for b in range(B):
            for k in range(N):
                lr, li = lam_c[k, 0], lam_c[k, 1]
                dr, di = dh[t, b, 2 * k], dh[t, b, 2 * k + 1]
                if not direct:
                    vr, vi = w[b, 2 * k], w[b, 2 * k + 1]
                    n2 = lr * lr + li * li
                    er, ei = (vr * lr - vi * li) / n2, (vi * lr + vr * li) / n2          # (f 1) e'_t = v' / conj(λ)
                    w[b, 2 * k], w[b, 2 * k + 1] = er - dr, ei - di                      # v'_t = e'_t − dh_t
                mr, mi = M[b, 2 * k], M[b, 2 * k + 1]
                mr, mi = mr * lr + mi * li, mi * lr - mr * li                           # (f 2), (f 2s) M ← M conj(λ)
                M[b, 2 * k], M[b, 2 * k + 1] = mr, mi
                if direct:
                    w[b, 2 * k] += mr * dr - mi * di                                    # (f 3) e ← e + Q dh_t
                    w[b, 2 * k + 1] += mr * di + mi * dr
                if not states:
                    continue
                hr, hi = h[b, 2 * k], h[b, 2 * k + 1]
                h[b, 2 * k] = lam[k, 0] * hr - lam[k, 1] * hi + u[b, 2 * k]            # (3) h_t
                h[b, 2 * k + 1] = lam[k, 0] * hi + lam[k, 1] * hr + u[b, 2 * k + 1]


@njit(cache=True)
def _errors_loop(x, h, dh, W2T, W2, lam, lam_c, v, dlam, gg, Mre, Mim, dx):
    """Phase 2 over the chunk: (f 1) from the carried v (in place) and the gradients (f 4); h advanced in place.
    Writes x̄_t into dx[t]; accumulates dlam r(N,2) = Σ conj(h_{t-1}) e, gg = Re Σ conj(u) e, M = Σ e x (N, I) ×2."""
    T, B, I = x.shape
    N = lam.shape[0]
    u = np.empty((B, 2 * N), x.dtype)
    es = np.empty((B, 2 * N), x.dtype)                                     # e_t in the state dtype (step adjoint)
    for t in range(T):
        np.dot(x[t], W2T, u)                                               # (2) u_t
        for b in range(B):
            xb = x[t, b]
            for k in range(N):
                lr, li = lam_c[k, 0], lam_c[k, 1]
                vr, vi = v[b, 2 * k], v[b, 2 * k + 1]
                n2 = lr * lr + li * li
                er, ei = (vr * lr - vi * li) / n2, (vi * lr + vr * li) / n2              # (f 1) e_t = v / conj(λ)
                v[b, 2 * k], v[b, 2 * k + 1] = er - dh[t, b, 2 * k], ei - dh[t, b, 2 * k + 1]   # v_t = e_t − dh_t
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


class _Fptt:
    """What both phases of one call share: x, λ, γ, W2 in the loops' dtypes, dh as complex128 pairs."""

    def __init__(self, params, x, dh):
        lam, self.gamma, self.rdt, self.cdt, self.W2, self.lam_p = _setup(params, x)
        self.N = lam.shape[0]
        self.lam = lam
        self.lam_c = contiguous(lam.astype(self.cdt).astype(np.complex128).view(np.float64).reshape(self.N, 2),
                                np.float64)                                                       # carrier λ
        self.x, self.x_dtype = contiguous(x, self.rdt), x.dtype
        self.dh = _pairs(dh, np.complex128, np.float64)
        self.W2T = contiguous(self.W2.T, self.rdt)

    def state(self, h0):
        """The state as pairs r(B,2N) in the state dtype, a copy (the loops advance it in place)."""
        return _pairs(h0, self.cdt, self.rdt).copy()

    def warmup(self, direct, h, carriers, states=True):
        """A warm-up's loop (direct or shooting) from its carriers (the product, the vector; advanced in place)."""
        _warmup_loop(self.x, h, self.dh, self.W2T, self.lam_p, self.lam_c, direct, *carriers, states)

    def errors(self, params, h, v) -> dict:
        """Phase 2 from v (advanced in place) → {param: grad, "x"}."""
        T, B, I = self.x.shape
        dlam, gg = np.zeros((self.N, 2)), np.zeros(self.N)
        Mre, Mim = np.zeros((self.N, I), self.rdt), np.zeros((self.N, I), self.rdt)
        dx = np.empty((T, B, I), self.rdt)
        _errors_loop(self.x, h, self.dh, self.W2T, self.W2, self.lam_p, self.lam_c, v, dlam, gg, Mre, Mim, dx)
        q = np.conj(self.lam.astype(self.cdt)).astype(np.complex128) * (dlam[:, 0] + 1j * dlam[:, 1])  # (7) conj(λ)λ̄
        grads = lru_param_grads(np, params, q.real, q.imag, Mre, Mim, self.gamma, gamma_log=gg)        # (6), (7)
        grads["x"] = dx.astype(self.x_dtype, copy=False)
        return grads


def _carriers(carry, names, B, N, what):
    """The carriers before a chunk as complex128 pairs r(B,2N) (copies): the carry's, or a stream's start (the
    products Q, P = 1; the vectors e, v = 0)."""
    if carry is None:
        start = [np.zeros((B, 2 * N)) for _ in names]
        for k, c in zip(names, start):
            if k in ("Q", "P"):
                c[:, 0::2] = 1.0                                                           # 1 (re 1, im 0)
        return start
    check_carry(carry, {k: (B, N) for k in names}, what)
    return [_pairs(carry[k], np.complex128, np.float64).copy() for k in names]


#: The warm-ups: kernel → (direct?, the names of its carriers: the product, the vector).
_WARMUPS = {"lru.fptt_warmup": (True, ("Q", "e")), "lru.fptt_shooting": (False, ("P", "v"))}


def lru_fptt(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray) -> dict:
    """As kernel lru.fptt: the direct warm-up from the stream's start (f 2-3), e_{-1} = e, then the error phase from
    v = e_{-1} (f 1, 4) → {param, "x" r(T,B,I), "h0" c(B,N)}."""
    f = _Fptt(params, x, dh)
    Q, e = _carriers(None, ("Q", "e"), x.shape[1], f.N, "lru.fptt")
    f.warmup(True, f.state(h0), (Q, e), states=False)
    grads = f.errors(params, f.state(h0), e.copy())                                      # (f 3) e_{-1} = e
    grads["h0"] = e.view(np.complex128).astype(f.cdt)
    return grads


def lru_fptt1(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, carry=None) -> dict:
    """As kernel lru.fptt1: the error phase over one chunk from the carried v (None: e_{-1} = 0) → {param, "x",
    "state" c(B,N), "carry": {"v" complex128 (B,N)}}."""
    f = _Fptt(params, x, dh)
    (v,) = _carriers(carry, ("v",), x.shape[1], f.N, "lru.fptt1")
    h = f.state(h0)
    grads = f.errors(params, h, v)
    return {**grads, "state": h.view(f.cdt), "carry": {"v": v.view(np.complex128)}}


def _warmup(kernel, params, x, h0, dh, carry):
    """A warm-up over one chunk from its carriers → {"state" c(B,N), "carry": {"Q", "e"} or {"v", "P"} complex128
    (B,N)}."""
    direct, names = _WARMUPS[kernel]
    f = _Fptt(params, x, dh)
    carriers = _carriers(carry, names, x.shape[1], f.N, kernel)
    h = f.state(h0)
    f.warmup(direct, h, carriers)
    return {"state": h.view(f.cdt), "carry": {k: c.view(np.complex128) for k, c in zip(names, carriers)}}


def lru_fptt_warmup(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, carry=None) -> dict:
    """As kernel lru.fptt_warmup: the direct warm-up over one chunk from the carried (Q, e) (None: Q = 1, e = 0)."""
    return _warmup("lru.fptt_warmup", params, x, h0, dh, carry)


def lru_fptt_shooting(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, carry=None) -> dict:
    """As kernel lru.fptt_shooting: the shooting warm-up over one chunk from the carried (v', P) (None: v' = 0,
    P = 1)."""
    return _warmup("lru.fptt_shooting", params, x, h0, dh, carry)


KERNELS = {"lru.rtrl": lru_rtrl, "lru.truncated": lru_truncated, "lru.spatial": lru_spatial,
           "lru.fptt": lru_fptt, "lru.fptt1": lru_fptt1, "lru.fptt_warmup": lru_fptt_warmup,
           "lru.fptt_shooting": lru_fptt_shooting}
