r"""The LRU's online sweeps (lru.rtrl, .truncated, .spatial, .fptt, .fptt1, .fptt_warmup, .fptt_shooting) with mlx.core.

Same signatures, output names, dtypes and shapes as the references (refimpl/kernels.py → refimpl/algorithms/rtrl.py
`sweep`, refimpl/algorithms/fptt.py fptt_warmup, fptt_shooting, fptt_errors and fptt_cell_grads with check=False).
Every kernel but lru.fptt sweeps one chunk of a stream: it takes the state and the carry before the chunk
(carry=None: the stream's start) and returns {…, "state": h after it, "carry": what the next chunk needs}, in the
reference's layouts, converted once per call at the chunk's boundary. Equation numbers: "(r n)" is
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

The carry of lru.rtrl is the reference's "diag" layout, {param: S c(B, *shape)}: five traces, where the compact form
has three. The kernel does not rebuild Q, Σ, Z from a carry (that would read only a part of it): by linearity the traces
are the carried ones S_in, moved on as λ^{t+1} S_in, plus the compact ones from zero. The carried part adds
Re Σ_b conj(S_in) A to each gradient, A = Σ_t conj(λ)^{t+1} δ_t (the blocks' ε_in, (R2), each times conj(λ)^{t0} of
its start); the carry out is λ^T S_in + (−e^ν Q, i e^θ Q, Σ, γ Z, i γ Z). Both once per call, O(B·N·I); with
carry_out=False (a stream's last chunk) the carry out is not built ("carry" None).

truncated / spatial (r 13, 14): S_t = P_t, so every gradient is a sum over (t, b) of the immediate derivatives
(lru 10): ν̄ = −e^ν Re Σ conj(λ h_{t-1}) δ, θ̄ = e^θ Im Σ conj(λ h_{t-1}) δ, γ̄_log = Re Σ conj(u) δ,
B̄_re + i B̄_im = γ Σ x δ (spatial: ν̄ = θ̄ = 0) — after one forward scan for h_{t-1}.

FPTT (f 1–4), complex128 carriers like the reference's default: MLX has no complex128, so the carriers (Q, e of the
direct warm-up; v = e − dh between steps and P of the shooting one and the error pass; all (B, N)) are float64 pairs
(re, im) — in the carry, runtime.Complex128 — and every complex product is written out on the pairs. J_t = diag(λ),
so per step (λ as the reference's carrier: complex64 widened to complex128)

    fptt_warmup    (direct, f 2, 3)   Q ← Q ⊙ conj(λ), then e ← e + Q ⊙ dh_t (with the new Q)     carry {"Q", "e"}
    fptt_shooting  (f 1, 2s)          e'_t = v'_{t-1} / conj(λ) = v' λ / |λ|², v'_t = e'_t − dh_t,
                                      P ← P ⊙ conj(λ)                                            carry {"v", "P"}
    fptt1          (f 1, 4)           e_t = v_{t-1} / conj(λ), v_t = e_t − dh_t                   carry {"v"}

None starts a stream: Q = P = 1, e = v = 0. The error pass casts each e_t to complex64 — the step adjoints ū_t of
the cell's backward (f 4) — and the gradients are the cells' GEMMs over all steps. lru.fptt is the direct warm-up from
(Q, e) = (1, 0), e_{-1} = e (f 3), then the error pass from v_{-1} = e_{-1}. Memory: the carriers, O(B·N), and the
chunk's states; cost O(B·N) elementwise a step (one compiled step each for the warm-ups), no division in the direct
warm-up.
"""

from __future__ import annotations

import mlx.core as mx

from ..common import lru_param_grads, previous_states
from .cells import lambda_gamma, lru_grads, lru_input, lru_scan
from .runtime import Complex128, checked_carry, complex_from, kernel, rows

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


def _rtrl_block(log_lam, lam, x, u, h_prev, delta, traces):
    """One block of C steps from the compact traces (Q, Σ, Z) → (gQ c(N), gΣ c(N), G c(N, I), traces out, ε_in
    c(B, N)).

    gQ = Σ conj(Q) δ, gΣ = Σ conj(Σ) δ, G = Σ conj(Z) δ over the block's steps and the batch, eqs. (R1)–(R3); ε_in
    is what a trace carried into the block meets, (R2). Z is held as c(N, B, I) (unit-major, so that (R3) is one GEMM).
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
    steps = mx.arange(C - 1, -1, -1, dtype=x.dtype)[:, None]                # C-1-s
    w = mx.exp(steps * log_lam)                                              # (R3) λ^{C-1-s}  c(C, N)
    lam_C = lam * w[0]                                                       # λ^C
    Q_out = lam_C * Q_in + mx.sum(w[:, None] * a_Q, axis=0)                  # (R3)
    S_out = lam_C * S_in + mx.sum(w[:, None] * u, axis=0)                    # (R3)
    xw = x.reshape(C, B * I)
    Z_out = lam_C[:, None, None] * Z_in + complex_from(mx.real(w).T @ xw, mx.imag(w).T @ xw).reshape(-1, B, I)  # (R3)
    return gQ, gS, G, (Q_out, S_out, Z_out), eps_in, lam_C


def _lru_grads(params, gamma, gQ, gS, G, recurrent=True):
    """The parameter gradients from gQ = Σ conj(Q) δ, gΣ = Σ conj(Σ) δ, G = Σ conj(Z) δ (module docstring):
    S_ν = −e^ν Q, S_θ = i e^θ Q, S_γ = Σ, S_B = γ Z (backends.common.lru_param_grads)."""
    return lru_param_grads(mx, params, mx.real(gQ), mx.imag(gQ), mx.real(G), mx.imag(G), gamma,
                           gamma_log=mx.real(gS), recurrent=recurrent, wide=False)


def _traces_of(params, gamma, Q, S, Z):
    """The reference's "diag" traces {param: c(B, *shape)} of the compact Q, Σ c(B, N) and Z c(N, B, I) (module
    docstring): S_ν = −e^ν Q, S_θ = i e^θ Q, S_γ = Σ, S_Bre = γ Z, S_Bim = i γ Z."""
    gZ = gamma[:, None] * Z.transpose(1, 0, 2)                               # γ Z  c(B, N, I)
    return {"nu_log": -mx.exp(params["nu_log"]) * Q, "theta_log": 1j * mx.exp(params["theta_log"]) * Q,
            "gamma_log": S, "B_re": gZ, "B_im": 1j * gZ}


def trace_shapes(params, batch):
    """{param: shape} of lru.rtrl's carry: the reference's "diag" layout c(B, *shape)."""
    return {k: (batch,) + tuple(v.shape) for k, v in params.items()}


@kernel
def lru_rtrl(params: dict, x: mx.array, h0: mx.array, dh: mx.array, carry: dict | None = None, *,
             carry_out: bool = True) -> dict:
    """As kernel lru.rtrl: x r(T,B,I), h0 c(B,N), dh c(T,B,N), carry {param: S c(B, *shape)} or None → {param: grad,
    "state": h_{T-1}, "carry": the traces after the chunk, None with carry_out=False} (exact RTRL = BPTT, r 8), in
    blocks of CHUNK steps.

    By linearity the traces split into the carried ones S_in moved on unchanged, λ^t S_in at step t, and the compact
    ones (Q, Σ, Z) from zero that the blocks carry (R1)–(R3). The carried part's gradient is Re Σ_b conj(S_in) A with
    A = Σ_t conj(λ)^{t+1} δ_t, built from the blocks' ε_in; at the end S_out = λ^T S_in + the compact traces in the
    reference's layout (_traces_of). So the carry is read and written once per call, and any carry is honoured as
    given (nothing is rebuilt from a part of it)."""
    T, B, I = x.shape
    carry = checked_carry(carry, trace_shapes(params, B), "lru.rtrl")
    lam, gamma = lambda_gamma(params)                                        # (1)
    log_lam, N = _log_lambda(params), lam.shape[0]
    zero = mx.zeros((B, N), dtype=h0.dtype)
    traces = (zero, zero, mx.zeros((N, B, I), dtype=h0.dtype))               # the compact part from S = 0
    gQ, gS, G = mx.zeros((N,), h0.dtype), mx.zeros((N,), h0.dtype), mx.zeros((N, I), h0.dtype)
    A, lam_t0 = zero, mx.ones_like(lam)                                      # A; λ^{t0} at the block's start
    h_last = h0
    for t0 in range(0, T, CHUNK):
        blk = slice(t0, min(t0 + CHUNK, T))
        u = lru_input(params, x[blk], gamma)                                 # (2) u_t of the block
        h = lru_scan(lam, h_last, u)                                         # (3) the block's states
        dQ, dS, dG, traces, eps_in, lam_C = _rtrl_block(log_lam, lam, x[blk], u, previous_states(mx, h_last, h),
                                                        dh[blk], traces)
        gQ, gS, G, h_last = gQ + dQ, gS + dS, G + dG, h[-1]
        A = A + mx.conj(lam_t0) * eps_in                                     # Σ_t conj(λ)^{t+1} δ_t, block by block
        lam_t0 = lam_t0 * lam_C
    grads = _lru_grads(params, gamma, gQ, gS, G)
    out = _traces_of(params, gamma, *traces) if carry_out else None
    if carry is not None:                                                    # the carried traces S_in (r 4, 7)
        for k, S_in in carry.items():
            S_in = S_in.astype(h0.dtype)
            A_k = A if S_in.ndim == 2 else A[:, :, None]
            grads[k] = grads[k] + mx.real(mx.sum(mx.conj(S_in) * A_k, axis=0)).astype(grads[k].dtype)
            if out is not None:
                out[k] = out[k] + (lam_t0 if S_in.ndim == 2 else lam_t0[:, None]) * S_in            # λ^T S_in
    return {**grads, "state": h_last, "carry": out}


# ------------------------------------------------------------------------------------- truncated, spatial (r 13, 14)

def _lru_truncated(params, x, h0, dh, recurrent, carry_out):
    lam, gamma = lambda_gamma(params)
    u = lru_input(params, x, gamma)                                          # (2)
    h = lru_scan(lam, h0, u)                                                 # (3)
    h_prev = previous_states(mx, h0, h)                                      # h_{t-1}
    x2 = rows(x)
    gQ = mx.sum(rows(mx.conj(lam * h_prev) * dh), axis=0)                    # (lru 10) P_ν, P_θ ∝ λ h_{t-1}
    gS = mx.sum(rows(mx.conj(u) * dh), axis=0)                               # (lru 10) P_γ = u_t
    G = complex_from(rows(mx.real(dh)).T @ x2, rows(mx.imag(dh)).T @ x2)     # (lru 10) P_B ∝ γ x_t
    return {**_lru_grads(params, gamma, gQ, gS, G, recurrent), "state": h[-1], "carry": {} if carry_out else None}


@kernel
def lru_truncated(params: dict, x: mx.array, h0: mx.array, dh: mx.array, carry: dict | None = None, *,
                  carry_out: bool = True) -> dict:
    """As kernel lru.truncated: S_t = P_t (r 13) → {param: grad, "state", "carry": {} (None with carry_out=False)}
    (nothing is carried; a carry passed in is ignored, as the reference does)."""
    return _lru_truncated(params, x, h0, dh, True, carry_out)


@kernel
def lru_spatial(params: dict, x: mx.array, h0: mx.array, dh: mx.array, carry: dict | None = None, *,
                carry_out: bool = True) -> dict:
    """As kernel lru.spatial: (r 13) with nu_log, theta_log held constant (zero gradient, r 14); carries nothing ({},
    None with carry_out=False)."""
    return _lru_truncated(params, x, h0, dh, False, carry_out)


# --------------------------------------------------------------------------------------------------- fptt (f 1-4)

@mx.compile
def _divide_by_conj_lambda(vr, vi, lr, li):
    """(f 1) v / conj(λ) = v λ / |λ|², on float64 pairs."""
    n2 = lr * lr + li * li
    return (vr * lr - vi * li) / n2, (vi * lr + vr * li) / n2


@mx.compile
def _direct_step(Qr, Qi, er, ei, lr, li, dr, di):
    """The direct warm-up's step on float64 pairs: (f 2) Q ← Q conj(λ), then (f 3) e ← e + Q dh_t (the new Q)."""
    Qr, Qi = Qr * lr + Qi * li, Qi * lr - Qr * li
    return Qr, Qi, er + (Qr * dr - Qi * di), ei + (Qr * di + Qi * dr)


@mx.compile
def _shooting_step(vr, vi, Pr, Pi, lr, li, dr, di):
    """The shooting warm-up's step on float64 pairs: (f 1) e'_t = v'_{t-1} / conj(λ), v'_t = e'_t − dh_t;
    (f 2s) P ← P conj(λ)."""
    er, ei = _divide_by_conj_lambda(vr, vi, lr, li)
    return er - dr, ei - di, Pr * lr + Pi * li, Pi * lr - Pr * li


class _Phase:
    """What both FPTT phases of one chunk need: λ as float64 pairs (the carrier λ: complex64 → pairs, as the
    reference's state_jacobian(…).astype(complex128)), dh_t as float64 pairs, and the chunk's states."""

    def __init__(self, params, x, h0, dh):
        self.lam, self.gamma = lambda_gamma(params)                          # (1), complex64
        self.lr, self.li = mx.real(self.lam).astype(mx.float64), mx.imag(self.lam).astype(mx.float64)
        self.dr, self.di = mx.real(dh).astype(mx.float64), mx.imag(dh).astype(mx.float64)
        self.h = lru_scan(self.lam, h0, lru_input(params, x, self.gamma))   # (2), (3): the states
        self.h0, (self.B, self.N) = h0, h0.shape

    def carrier(self, carry, name):
        """A carrier (B, N) as a float64 pair: carry None → v = e = 0 and P = Q = 1; a Complex128 as it is; a
        complex64 mx.array widened (exact)."""
        if carry is None:
            zero = mx.zeros((self.B, self.N), dtype=mx.float64)
            return (zero + 1.0 if name in ("P", "Q") else zero), zero
        c = carry[name]
        if isinstance(c, Complex128):
            return c.re, c.im
        return mx.real(c).astype(mx.float64), mx.imag(c).astype(mx.float64)


def _check(carry, names, B, N, what):
    return checked_carry(carry, {k: (B, N) for k in names}, what)


def _direct(ph, Qr, Qi, er, ei):
    """Phase 1 over the chunk, the direct warm-up: Q ← Q conj(λ) (f 2), e ← e + Q dh_t (f 3), on float64 pairs."""
    for t in range(ph.dr.shape[0]):
        Qr, Qi, er, ei = _direct_step(Qr, Qi, er, ei, ph.lr, ph.li, ph.dr[t], ph.di[t])
    return Qr, Qi, er, ei


def _shooting(ph, vr, vi, Pr, Pi):
    """Phase 1 over the chunk, the shooting warm-up: v'_t = J_t^{−H} v'_{t-1} − dh_t (f 1) and P ← P conj(λ) (f 2s),
    on float64 pairs."""
    for t in range(ph.dr.shape[0]):
        vr, vi, Pr, Pi = _shooting_step(vr, vi, Pr, Pi, ph.lr, ph.li, ph.dr[t], ph.di[t])
    return vr, vi, Pr, Pi


def _errors(params, x, ph, vr, vi):
    """Phase 2 over the chunk: e_t = J_t^{−H} v_{t-1} (f 1), v_t = e_t − dh_t; the gradients (f 4) from e_t cast to
    complex64 (the step adjoints ū_t of the cell's backward), the cells' GEMMs over all steps → (grads with "x",
    v_{T-1} as a pair)."""
    du = []
    for t in range(ph.dr.shape[0]):
        er, ei = _divide_by_conj_lambda(vr, vi, ph.lr, ph.li)               # (f 1) e_t
        du.append(complex_from(er.astype(mx.float32), ei.astype(mx.float32)))   # e_t in the state dtype: ū_t (f 4)
        vr, vi = er - ph.dr[t], ei - ph.di[t]                                # v_t = e_t − dh_t
    grads = lru_grads(params, ph.lam, ph.gamma, x, previous_states(mx, ph.h0, ph.h), mx.stack(du))   # (5)–(7)
    return grads, vr, vi


@kernel(float64_carriers=True)
def lru_fptt(params: dict, x: mx.array, h0: mx.array, dh: mx.array) -> dict:
    """As kernel lru.fptt: the direct warm-up (f 2, 3) from the stream's start, e_{-1} = e, then the error pass
    (f 1, 4) from v_{-1} = e_{-1}; → {param, "x" r(T,B,I), "h0" c(B,N) = e_{-1}}."""
    ph = _Phase(params, x, h0, dh)
    _, _, er, ei = _direct(ph, *ph.carrier(None, "Q"), *ph.carrier(None, "e"))   # phase 1 from Q = 1, e = 0
    grads, _, _ = _errors(params, x, ph, er, ei)                             # phase 2
    grads["h0"] = complex_from(er.astype(mx.float32), ei.astype(mx.float32)).astype(h0.dtype)   # e_{-1}
    return grads


@kernel(float64_carriers=True)
def lru_fptt1(params: dict, x: mx.array, h0: mx.array, dh: mx.array, carry: dict | None = None) -> dict:
    """As kernel lru.fptt1: the error pass (f 1, 4) over one chunk from the carried v (None: v_{-1} = e_{-1} = 0) →
    {param, "x" r(T,B,I), "state" h_{T-1} c(B,N), "carry": {"v": v_{T-1} complex128 (B,N), a Complex128}}."""
    B, N = h0.shape
    carry = _check(carry, ("v",), B, N, "lru.fptt1")
    ph = _Phase(params, x, h0, dh)
    grads, vr, vi = _errors(params, x, ph, *ph.carrier(carry, "v"))
    return {**grads, "state": ph.h[-1], "carry": {"v": Complex128(vr, vi)}}


@kernel(float64_carriers=True)
def lru_fptt_warmup(params: dict, x: mx.array, h0: mx.array, dh: mx.array, carry: dict | None = None) -> dict:
    """As kernel lru.fptt_warmup: the direct warm-up (f 2, 3) over one chunk from the carried (Q, e) (None: Q = 1,
    e = 0) → {"state" h_{T-1} c(B,N), "carry": {"Q": Q, "e": e, complex128 (B,N) each, as Complex128}}."""
    B, N = h0.shape
    carry = _check(carry, ("Q", "e"), B, N, "lru.fptt_warmup")
    ph = _Phase(params, x, h0, dh)
    Qr, Qi, er, ei = _direct(ph, *ph.carrier(carry, "Q"), *ph.carrier(carry, "e"))
    return {"state": ph.h[-1], "carry": {"Q": Complex128(Qr, Qi), "e": Complex128(er, ei)}}


@kernel(float64_carriers=True)
def lru_fptt_shooting(params: dict, x: mx.array, h0: mx.array, dh: mx.array, carry: dict | None = None) -> dict:
    """As kernel lru.fptt_shooting: the shooting warm-up (f 1, 2s) over one chunk from the carried (v', P) (None:
    v' = 0, P = 1) → {"state" h_{T-1} c(B,N), "carry": {"v": v'_{T-1}, "P": P, complex128 (B,N) each, as
    Complex128}}."""
    B, N = h0.shape
    carry = _check(carry, ("v", "P"), B, N, "lru.fptt_shooting")
    ph = _Phase(params, x, h0, dh)
    vr, vi, Pr, Pi = _shooting(ph, *ph.carrier(carry, "v"), *ph.carrier(carry, "P"))
    return {"state": ph.h[-1], "carry": {"v": Complex128(vr, vi), "P": Complex128(Pr, Pi)}}


KERNELS = {"lru.rtrl": lru_rtrl, "lru.truncated": lru_truncated, "lru.spatial": lru_spatial,
           "lru.fptt": lru_fptt, "lru.fptt1": lru_fptt1, "lru.fptt_warmup": lru_fptt_warmup,
           "lru.fptt_shooting": lru_fptt_shooting}
