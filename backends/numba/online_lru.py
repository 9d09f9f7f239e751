r"""The LRU's online sweeps (lru.rtrl, lru.truncated, lru.spatial; lru.fptt, lru.fptt_warmup, lru.fptt_shooting,
lru.fptt1) in Numba.

Same signatures, output names, dtypes and shapes as the references (refimpl/kernels.py → refimpl/algorithms/rtrl.py
sweep, refimpl/algorithms/fptt.py fptt_warmup, fptt_shooting, fptt_errors and fptt_cell_grads with check=False). Every
kernel but lru.fptt sweeps one chunk of a stream and hands on the state after it and its carry (DESIGN.md §5): the
rtrl traces in the reference's "diag" layout (rtrl.py, "Trace layouts"; {} for truncated and spatial), FPTT's carriers
{"v"} (fptt1), {"Q", "e"} (fptt_warmup, the direct warm-up) and {"v", "P"} (fptt_shooting), complex128 (B, N).
Equation numbers: "(r n)" is refimpl/algorithms/rtrl.py, "(f n)" refimpl/algorithms/fptt.py, "(n)" refimpl/cells/lru.py.

Each kernel's time loop is ONE @njit(cache=True) function, t outermost, then batch b, then unit k (then input i); the
input projection u_t = γ ⊙ (B x_t) is a GEMM (x_t @ W2ᵀ, W2 of backends.common.lru_w2), so nothing of size T is stored
except fptt's x̄ output. Complex numbers are carried as real pairs (re, im) in the state's real dtype, which lets the
inner loops vectorise. The LRU's traces (r 8) need less than the reference carries, by linearity:

    Q_t = λ ⊙ Q_{t-1} + λ ⊙ h_{t-1}          S_ν = −e^ν ⊙ Q,  S_θ = i e^θ ⊙ Q            (lru 10)        c(B, N)
    Z_t = λ ⊙ Z_{t-1} + x_t (over k)         S_Bre = γ ⊙ Z,   S_Bim = i γ ⊙ Z            (lru 10)        c(B, N, I)
    S^γ_t = λ ⊙ S^γ_{t-1} + u_t                                                          (lru 10)        c(B, N)

(the reference's carry enters once per call, by linearity (_with_carry), and the compact traces are converted to the
reference's layout on the way out — skipped with carry_out=False, whose "carry" is None), so, with Σ over t and b
and δ_t = dh_t (r 4, 7):
ν̄ = −e^ν Re Σ conj(Q)δ,  θ̄ = e^θ Im Σ conj(Q)δ,  B̄_re + i B̄_im = γ Σ conj(Z)δ,  γ̄_log = Re Σ conj(S^γ)δ. One complex
Z trace serves both B_re and B_im.
lru.rtrl advances Q and S^γ step by step (O(B·N) a step), and the O(B·N·I) trace Z in chunks of C steps (the chunks
of DESIGN.md §5 inside one call; memory O(C·B·N) plus the traces, independent of T). Every trace is
Y_t = λ ⊙ Y_{t-1} + a_t; inside a chunk starting from Y_in, with c, s = 0 … C-1:

    (R1) Y_c = λ^{c+1} Y_in + Σ_{s≤c} λ^{c-s} a_s                                                 (unrolled (r 8))
    (R2) Σ_c conj(Y_c) δ_c = conj(Y_in) ε_in + Σ_s conj(a_s) ε_s,
         ε_s = Σ_{c≥s} conj(λ)^{c-s} δ_c  (= δ_s + conj(λ) ε_{s+1}, a C-step scan),   ε_in = conj(λ) ε_0
    (R3) Y_out = λ^C Y_in + Σ_s λ^{C-1-s} a_s                                                     (the carried trace)

— the same sums as the step-by-step update, grouped (as in the MLX backend) so that Z's O(B·N·I) work per step is two
GEMMs per chunk, (R2) Σ_{s,b} ε_s x_sᵀ = ε (C·B, 2N)ᵀ @ x (C·B, I) and (R3) λ^{C-1-s} (2N, C) @ x (C, B·I), plus one
pass over Z per chunk (conj(Z_in) ε_in and λ^C Z_in) instead of C passes. The units do not interact (J = diag(λ)):
the sweep runs in blocks of units, each block the whole sweep on one thread (runtime rule (e)); chunk and block size:
rtrl_blocking.
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
Everything else is sequential. lru.rtrl's blocks of units each write only their own units, and a unit's arithmetic is
the same in whichever block and thread it runs, so every result is bit-reproducible run to run and independent of the
thread count.
"""

from __future__ import annotations

import numpy as np
import numba
from numba import njit

from refimpl.cells.lru import lambda_gamma

from ..common import lru_param_grads, lru_w2
from .runtime import LOOP, Plan, check_carry, contiguous, controls_blas_threads, in_blocks, scratch


#: lru.rtrl: time steps per chunk, and the most units per block (docs/bench/profile-cpus.md).
CHUNK, UNITS = 64, 128


def rtrl_blocking(B: int, N: int, I: int) -> tuple[int, int]:
    """(chunk C, units per block) of lru.rtrl. Neither depends on the thread count (a unit's arithmetic, its GEMMs'
    included, must not change with it) nor on the CPU: at B = 32, I = 64, N = 256, chunks of 32–128 steps and blocks of
    64–128 units ran within the noise of each other both with AVX-512 and with the AVX2 path forced (OpenBLAS's
    Haswell kernels, Numba compiling for haswell); 256-step chunks were slower on both (their (C·B, 2n) buffers leave
    the L2 cache). Blocks of at most UNITS units, as even as N allows."""
    blocks = -(-N // UNITS)
    return CHUNK, -(-N // blocks)


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

@njit(**LOOP)
def _rtrl_units(x, dh, h, k0, W2T, lam, lam_c, lam_cr, P, P_tail, chunk, Z_out, Q, Sg, G, gq, gg, A, u, eps, zt, Z):
    """The sweep of one block of n units [k0, k0 + n), every step and every row.

    In: x r(T,B,I), dh pairs r(T,B,2N), h = h0 pairs r(B,2N) (the block's columns advanced in place); W2ᵀ r(I,2n) and
    every (·, 2n) array of the block split [re of the n units | im of the n units]; λ r(2,n) split; λ^C and λ^C'
    (the last chunk's C' steps) c(2,n) complex128, and lam_cr the same as r(2,2,n) (re, im; small powers flushed);
    P, P_tail r(2n,C), r(2n,C') = λ^{C-1-s} split (R3). Writes the block's units of Q, S^γ pairs r(B,2N), G r(2,N,I)
    = Σ conj(Z)δ, gq r(2,N) = Σ conj(Q)δ, gg r(N) = Re Σ conj(S^γ)δ (float64) and A c(B,N) = Σ_t conj(λ)^{t+1} δ_t
    (what a carried trace meets, _with_carry); returns Z r(2n,B·I) (its rows: the traces Z[b, k, :] of every b, re
    then im), left as it was before the last chunk unless Z_out. Work arrays (any content on entry): u, eps
    r(chunk·B,2n), zt and Z r(2n,B·I).
    Per chunk of C steps (module docstring, (R1)–(R3)): u = x_c W2ᵀ (one GEMM); h, Q, S^γ and their sums step by
    step; ε by a backward scan over the chunk; G += εᵀ x_c (one GEMM) + conj(Z_in) ε_in; Z_out = λ^C Z_in + P x_c
    (one GEMM)."""
    T, B, I = x.shape
    n = lam.shape[1]
    X = x.reshape(T * B, I)                                 # rows (t, b)
    XT = x.reshape(T, B * I)                                # rows t
    gt = np.empty((2 * n, I), x.dtype)
    Z[:] = 0
    hr_, hi_ = np.empty((B, n), x.dtype), np.empty((B, n), x.dtype)      # h, Q, S^γ of the block (one array per
    qr_, qi_ = np.zeros((B, n), x.dtype), np.zeros((B, n), x.dtype)      # part: LLVM vectorises the k-loop over
    sr_, si_ = np.zeros((B, n), x.dtype), np.zeros((B, n), x.dtype)      # them, not over one interleaved array)
    acc = np.zeros((3, n))                                  # Σ conj(Q)δ (re, im), Re Σ conj(S^γ)δ
    gs = np.zeros((2 * n, I), x.dtype)                      # G of the block, split
    for b in range(B):
        for k in range(n):
            hr_[b, k], hi_[b, k] = h[b, 2 * (k0 + k)], h[b, 2 * (k0 + k) + 1]
    lt = np.ones(n, np.complex128)                          # λ^{t0}
    lr_, li_ = lam[0], lam[1]
    for t0 in range(0, T, chunk):
        C = min(chunk, T - t0)
        Pc = P if C == chunk else P_tail
        Xc = X[t0 * B:(t0 + C) * B]
        uc, ec = u[:C * B], eps[:C * B]
        np.dot(Xc, W2T, uc)                                 # (2) u_t = γ ⊙ (B x_t), the chunk's steps
        for c in range(C):                                  # δ_t of the block, split (ε starts as δ)
            for b in range(B):
                d, e = dh[t0 + c, b], ec[c * B + b]
                for k in range(n):
                    e[k], e[n + k] = d[2 * (k0 + k)], d[2 * (k0 + k) + 1]
        for c in range(C):                                  # h, Q, S^γ step by step: O(B·n) a step
            for b in range(B):
                u_, d_ = uc[c * B + b], ec[c * B + b]
                Hr, Hi, Qr, Qi, Sr, Si = hr_[b], hi_[b], qr_[b], qi_[b], sr_[b], si_[b]
                for k in range(n):
                    lr, li = lr_[k], li_[k]
                    hr, hi = Hr[k], Hi[k]
                    ar, ai = lr * hr - li * hi, lr * hi + li * hr                      # λ h_{t-1}
                    qr, qi = lr * Qr[k] - li * Qi[k] + ar, lr * Qi[k] + li * Qr[k] + ai  # (r 8) Q_t
                    ur, ui = u_[k], u_[n + k]
                    sr, si = lr * Sr[k] - li * Si[k] + ur, lr * Si[k] + li * Sr[k] + ui  # (r 8) S^γ_t
                    Hr[k], Hi[k] = ar + ur, ai + ui                                    # (3) h_t
                    Qr[k], Qi[k], Sr[k], Si[k] = qr, qi, sr, si
                    dr, di = d_[k], d_[n + k]
                    acc[0, k] += qr * dr + qi * di                                     # (r 4, 7) Re conj(Q)δ
                    acc[1, k] += qr * di - qi * dr                                     #          Im conj(Q)δ
                    acc[2, k] += sr * dr + si * di                                     # (r 4, 7) Re conj(S^γ)δ
        for r in range((C - 1) * B - 1, -1, -1):            # (R2) ε_s = δ_s + conj(λ) ε_{s+1}, ε_C = δ_C
            e, p = ec[r], ec[r + B]
            for k in range(n):
                pr, pi = p[k], p[n + k]
                e[k] += lr_[k] * pr + li_[k] * pi
                e[n + k] += lr_[k] * pi - li_[k] * pr
        for b in range(B):                                  # A += conj(λ^{t0}) ε_in, ε_in = conj(λ) ε_0
            for k in range(n):
                A[b, k0 + k] += np.conj(lt[k] * (lam[0, k] + 1j * lam[1, k])) * (ec[b, k] + 1j * ec[b, n + k])
        lt *= lam_c[0] if C == chunk else lam_c[1]
        np.dot(ec.T, Xc, gt)                                # (R2) Σ_{s,b} ε_s x_sᵀ
        gs += gt
        more = t0 + C < T or Z_out
        if t0 == 0:                                         # Z_in = 0
            if more:
                np.dot(Pc, XT[t0:t0 + C], Z)                # (R3) Z_out = Σ_s λ^{C-1-s} x_s
            continue
        if more:
            np.dot(Pc, XT[t0:t0 + C], zt)                   # (R3) Σ_s λ^{C-1-s} x_s
        for k in range(n):                                  # (R2) G += conj(Z_in) ε_in; (R3) Z_out = λ^C Z_in + zt
            lr, li = lam[0, k], lam[1, k]
            j = 0 if C == chunk else 1
            cr, ci = lam_cr[j, 0, k], lam_cr[j, 1, k]
            zr, zi, gr, gi, tr, ti = Z[k], Z[n + k], gs[k], gs[n + k], zt[k], zt[n + k]
            for b in range(B):
                er, ei = ec[b, k], ec[b, n + k]
                wr, wi = lr * er + li * ei, lr * ei - li * er                          # ε_in = conj(λ) ε_0
                o = b * I
                for i in range(I):
                    p, q = zr[o + i], zi[o + i]
                    gr[i] += p * wr + q * wi                                           # Re conj(Z_in) ε_in
                    gi[i] += p * wi - q * wr                                           # Im
                    if more:
                        zr[o + i] = cr * p - ci * q + tr[o + i]
                        zi[o + i] = cr * q + ci * p + ti[o + i]
    for b in range(B):
        for k in range(n):
            j = 2 * (k0 + k)
            h[b, j], h[b, j + 1] = hr_[b, k], hi_[b, k]
            Q[b, j], Q[b, j + 1] = qr_[b, k], qi_[b, k]
            Sg[b, j], Sg[b, j + 1] = sr_[b, k], si_[b, k]
        gq[0, k0:k0 + n] = acc[0]
        gq[1, k0:k0 + n] = acc[1]
        gg[k0:k0 + n] = acc[2]
    G[0, k0:k0 + n] = gs[:n]
    G[1, k0:k0 + n] = gs[n:]
    return Z


@njit(**LOOP)
def _b_traces(Z, k0, gamma, lam_T, A, S_re, S_im, carried, out_re, out_im, c_re, c_im):
    """The units [k0, k0 + n) of the B traces handed on, out_re = γ Z + λ^T S_re, out_im = iγ Z + λ^T S_im c(B,N,I)
    (Z r(2n, B·I) split re/im as _rtrl_units leaves it; γ r(N), λ^T c(N)), and, when `carried`, the carried traces'
    gradient parts c_re = Re Σ_b conj(S_re) A, c_im = Re Σ_b conj(S_im) A (float64 (N, I)): _with_carry's sums for
    the two (B, N, I) traces, in one pass. An out_re of size 0: nothing handed on."""
    n = Z.shape[0] // 2
    B = A.shape[0]
    I = Z.shape[1] // B
    write = out_re.size > 0
    for k in range(n):
        g, pw = gamma[k0 + k], lam_T[k0 + k]
        for b in range(B):
            w = A[b, k0 + k]
            for i in range(I):
                z = g * (Z[k, b * I + i] + 1j * Z[n + k, b * I + i])                 # γ Z
                if carried:
                    sre, sim = S_re[b, k0 + k, i], S_im[b, k0 + k, i]
                    c_re[k0 + k, i] += (np.conj(sre) * w).real
                    c_im[k0 + k, i] += (np.conj(sim) * w).real
                    if write:
                        out_re[b, k0 + k, i] = z + pw * sre
                        out_im[b, k0 + k, i] = 1j * z + pw * sim
                elif write:
                    out_re[b, k0 + k, i] = z
                    out_im[b, k0 + k, i] = 1j * z


def _split_rows(a, k0, k1):
    """Rows [2k0, 2k1) of an interleaved (re, im) array r(2N, …) as r(2n, …) split [re | im], C-contiguous."""
    return np.ascontiguousarray(np.concatenate([a[2 * k0:2 * k1:2], a[2 * k0 + 1:2 * k1:2]]))


def _powers(lam, C, rdt):
    """P r(2N, C), rows interleaved (re, im) per unit: λ_k^{C-1-s} for s = 0 … C-1 (R3), from complex128 powers."""
    powers = lam.astype(np.complex128)[:, None] ** np.arange(C - 1, -1, -1)              # (N, C)
    P = np.empty((2 * lam.shape[0], C), rdt)
    P[0::2], P[1::2] = powers.real, powers.imag
    return _flushed(P)


def _flushed(a):
    """`a` (powers λ^c) with the entries below ε² of its dtype set to 0. A power of a small |λ| underflows towards
    the subnormal floats, and x86 CPUs compute with subnormal operands or products many times slower (one of these
    GEMMs took 2–4× longer with them); in a sum beside the newest step's coefficient 1, such a term is below the
    sum's last bit by a factor ε unless the inputs it multiplies are 1/ε times larger than the others."""
    a[np.abs(a) < np.finfo(a.dtype).eps ** 2] = 0
    return a


def _complex(a, cdt):
    """A carried trace as a C-contiguous complex array (its own complex dtype; a real one as `cdt`)."""
    a = np.asarray(a)
    return np.ascontiguousarray(a if np.iscomplexobj(a) else a.astype(cdt))


def _traces_out(params, Q, Sg, B_re, B_im, cdt):
    """The reference's "diag" carry from the compact traces (lru 10): S_ν = −e^ν Q, S_θ = i e^θ Q, S_γlog = S^γ (Q,
    S^γ pairs r(B, 2N)), and S_Bre = γ Z, S_Bim = iγ Z as _b_traces built them, in the state's complex dtype."""
    Qc = Q.view(cdt).astype(np.complex128)
    return {"nu_log": (-np.exp(params["nu_log"].astype(np.float64)) * Qc).astype(cdt),
            "theta_log": (1j * np.exp(params["theta_log"].astype(np.float64)) * Qc).astype(cdt),
            "gamma_log": Sg.view(cdt).copy(), "B_re": B_re, "B_im": B_im}


def lru_rtrl(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, carry=None, *,
             carry_out: bool = True) -> dict:
    """As kernel lru.rtrl: x r(T,B,I), h0 c(B,N), dh c(T,B,N), the carried "diag" traces (None: zero) → {param: grad,
    "state" c(B,N), "carry": the traces after the chunk, or None with carry_out=False} (exact RTRL = BPTT, r 8).

    The units run in blocks of `units` (rtrl_blocking), each block the whole sweep (_rtrl_units, then _b_traces), on
    min(Numba's threads, blocks) threads with a single-threaded BLAS each (runtime rule (e)); a unit's arithmetic is
    the same whichever block holds it and whichever thread runs it, so results do not depend on the thread count."""
    T, B, I = x.shape
    lam, gamma, rdt, cdt, W2, _ = _setup(params, x)
    N = lam.shape[0]
    if carry is not None:
        check_carry(carry, {"nu_log": (B, N), "theta_log": (B, N), "gamma_log": (B, N), "B_re": (B, N, I),
                            "B_im": (B, N, I)}, "lru.rtrl")
    chunk, units = rtrl_blocking(B, N, I)
    C = max(1, min(chunk, T))
    x, h, dh = contiguous(x, rdt), _pairs(h0, cdt, rdt).copy(), _pairs(dh, cdt, rdt)
    lam128 = lam.astype(np.complex128)
    lam_r = np.stack([lam.real, lam.imag]).astype(rdt)                                 # λ split r(2, N)
    lam_c = np.stack([lam128 ** C, lam128 ** (T % C or C)])                             # λ^C, λ^C' c(2, N)
    lam_cr = _flushed(np.stack([lam_c.real, lam_c.imag], axis=1).astype(rdt))           # r(2, 2, N)
    P, P_tail = _powers(lam, C, rdt), _powers(lam, T % C or C, rdt)
    lam_T = lam128 ** T
    A = np.zeros((B, N), np.complex128)                                                 # Σ_t conj(λ)^{t+1} δ_t
    out_re = np.empty((B, N, I) if carry_out else (0, 0, 0), cdt)                       # the B traces handed on
    out_im = np.empty_like(out_re)
    carried = carry is not None
    S_re, S_im = (_complex(carry["B_re"], cdt), _complex(carry["B_im"], cdt)) if carried else (out_re, out_im)
    c_re, c_im = np.zeros((N, I)), np.zeros((N, I))
    Q, Sg, G = np.empty((B, 2 * N), rdt), np.empty((B, 2 * N), rdt), np.empty((2, N, I), rdt)
    gq, gg = np.zeros((2, N)), np.zeros(N)
    bounds = [(k0, min(k0 + units, N)) for k0 in range(0, N, units)]

    def blocks(j0, j1):
        for k0, k1 in bounds[j0:j1]:
            n = k1 - k0                                     # the work arrays of this thread (runtime rule (f))
            work = [scratch(f"lru.rtrl.{name}", shape, rdt) for name, shape in
                    (("u", (C * B, 2 * n)), ("eps", (C * B, 2 * n)), ("zt", (2 * n, B * I)), ("Z", (2 * n, B * I)))]
            Z = _rtrl_units(x, dh, h, k0, _split_rows(W2, k0, k1).T.copy(), np.ascontiguousarray(lam_r[:, k0:k1]),
                            np.ascontiguousarray(lam_c[:, k0:k1]), np.ascontiguousarray(lam_cr[:, :, k0:k1]),
                            _split_rows(P, k0, k1),
                            _split_rows(P_tail, k0, k1), C, carry_out, Q, Sg, G, gq, gg, A, *work)
            _b_traces(Z, k0, gamma, lam_T, A, S_re, S_im, carried, out_re, out_im, c_re, c_im)

    threads = min(numba.get_num_threads(), len(bounds)) if controls_blas_threads() else 1
    in_blocks(Plan(threads, threads > 1 or controls_blas_threads()), len(bounds), blocks)
    grads = lru_param_grads(np, params, gq[0], gq[1], G[0], G[1], gamma, gamma_log=gg)      # (r 8)
    out = _traces_out(params, Q, Sg, out_re, out_im, cdt) if carry_out else None
    if carried:
        grads, out = _with_carry(carry, A, lam_T, grads, out, c_re, c_im)
    return {**grads, "state": h.view(cdt), "carry": out}


def _with_carry(carry, A, lam_T, grads, out, c_re, c_im):
    """The carried traces' part, by linearity: (r 8) is linear in S, so a chunk from S_{-1} is the chunk from 0 plus
    λ^{t+1} ⊙ S_{-1} at step t. Its gradient is Re Σ_b conj(S_{-1}) ⊙ A with A = Σ_t conj(λ^{t+1}) δ_t (B, N), and
    the carry out gains λ^T ⊙ S_{-1} (unless it is None: not handed on) — for the (B, N, I) traces B_re, B_im both
    are done in _b_traces' pass (c_re, c_im), here for the (B, N) ones. Exact for any carry — also one made with
    other parameters (an update inside the stream changes ν, θ, γ between chunks)."""
    grads, out = dict(grads), (None if out is None else dict(out))
    grads["B_re"] = (grads["B_re"] + c_re).astype(grads["B_re"].dtype)
    grads["B_im"] = (grads["B_im"] + c_im).astype(grads["B_im"].dtype)
    for name in ("nu_log", "theta_log", "gamma_log"):
        S0 = np.asarray(carry[name], np.complex128)
        grads[name] = (grads[name] + np.real(np.sum(np.conj(S0) * A, axis=0))).astype(grads[name].dtype)
        if out is not None:
            out[name] = (out[name] + lam_T * S0).astype(out[name].dtype)
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
