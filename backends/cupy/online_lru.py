r"""The LRU's online sweeps (lru.rtrl, lru.truncated, lru.spatial; lru.fptt, lru.fptt_warmup, lru.fptt_shooting,
lru.fptt1) on a CUDA device, one chunk of a stream per call (DESIGN.md §5).

Same signatures (after the device), output names, dtypes and shapes as the references (refimpl/kernels.py →
refimpl/algorithms/rtrl.py `sweep`; refimpl/algorithms/fptt.py fptt_warmup, fptt_shooting, fptt_errors and
fptt_cell_grads with check=False). Equation numbers: "(r n)" refimpl/algorithms/rtrl.py, "(f n)"
refimpl/algorithms/fptt.py, "(n)" refimpl/cells/lru.py. The CUDA bodies are in sources.py.

The input projection u_t = γ ⊙ (B x_t) of all C steps of the chunk is one GEMM (cells.lru_setup); then the time loop
runs inside one kernel, one thread per (b, k) pair marching over t, which also runs the state and hands on h_{C-1}.

RTRL (r 8). The carry is the reference's "diag" layout: {param: S} complex, (B, N) for nu_log, theta_log, gamma_log
and (B, N, I) for B_re, B_im; carry None is S_{-1} = 0. Within the chunk the kernels run the traces from zero, in
registers, by linearity in the compact form

    Q_t = λ ⊙ Q_{t-1} + λ ⊙ h_{t-1}          S_ν = −e^ν ⊙ Q,  S_θ = i e^θ ⊙ Q            (lru 10)        c(B, N)
    Z_t = λ ⊙ Z_{t-1} + x_t (over k)         S_Bre = γ ⊙ Z,   S_Bim = i γ ⊙ Z            (lru 10)        c(B, N, I)
    S^γ_t = λ ⊙ S^γ_{t-1} + u_t                                                          (lru 10)        c(B, N)

so with δ_t = dh_t (r 4, 7):  ν̄ = −e^ν Re Σ conj(Q)δ,  θ̄ = e^θ Im Σ conj(Q)δ,  B̄_re + i B̄_im = γ Σ conj(Z)δ,
γ̄_log = Re Σ conj(S^γ)δ (Σ over t and b). The Z trace is independent of the state, so it has its own kernel with one
thread per (b, k, i) (lru_sens_input). Per-thread sums are float64 and are summed over the batch by the host.

A carried trace S_{-1} adds λ^{t+1} ⊙ S_{-1} to every S_t of the chunk (r 8 is linear, and J = diag(λ)), so the
carry enters once per call, at the chunk boundary, in and out, alike for every parameter:

    g += Re Σ_b conj(S_{-1}) ⊙ w,     w = Σ_t conj(λ^{t+1}) ⊙ δ_t  c(B, N)          the carried part of (r 4)
    S_{C-1} = λ^C ⊙ S_{-1} + S⁰_{C-1}                                             S⁰: the compact traces above, mapped

(w and λ^C come from the state kernel, in float64; with carry_out=False — a stream's last chunk — the traces are not
mapped out at all and "carry" is None.) No carried trace is divided back into Q or Z, so any carry is
taken exactly as the reference takes it — also one whose S_θ is not −i e^{θ−ν} S_ν (traces carried across a
parameter update). Truncation (r 13) keeps only the immediate parts (the same state kernel with carry = 0); its B̄ is
the GEMM γ Σ_t dh_tᵀ x_t; truncated and spatial carry nothing ({}).

FPTT (f 1-4), float64 carriers (complex128) as the reference's default; J_t = diag(λ), so J_tᴴ = conj(λ) and every
carrier is (B, N). The direct warm-up inverts nothing; the shooting warm-up and the error phase carry
v_t = e_t − dh_t between steps and invert it at each, e_t = v_{t-1} / conj(λ) (f 1):
    lru.fptt_warmup    the direct warm-up, one kernel, one thread per (b, k): Q ← Q ⊙ conj(λ) (f 2), then
                       e ← e + Q ⊙ dh_t with the new Q (f 3) → {"state", "carry": {"Q": Q (B, N), "e": e (B, N)}};
                       carry None is Q = 1, e = 0; at the stream's end e_{-1} = e
    lru.fptt_shooting  the paper's shooting warm-up, one kernel, one thread per (b, k): (f 1) from the carried v' and
                       P ← P ⊙ conj(λ) (f 2s) → {"state", "carry": {"v": v' (B, N), "P": P (B, N)}}; carry None is
                       v' = 0, P = 1; at the stream's end e_{-1} = −P ⊙ v' (f 3s)
    lru.fptt1          one kernel, one thread per (b, k): (f 1) from the carried v (None: 0), writing e_t in the state
                       dtype (C, B, 2N) and accumulating λ̄, γ̄; B̄ and x̄ are then GEMMs on e_t, as in the backward
                       of cells.py (f 4) → {param, "x", "state", "carry": {"v"}}
    lru.fptt           both over the whole sequence: the direct warm-up from the stream's start, e_{-1} = e (f 3),
                       the error pass from v = e_{-1} → {param, "x", "h0": e_{-1}}
Cost and memory: either warm-up is one pass over the chunk with O(1) work per (b, k, t) and two (B, N) complex128
carriers (the direct one: 2 complex multiply-adds per step, no division); fptt1 stores e_t (C, B, 2N) for the GEMMs.
"""

from __future__ import annotations

import numpy as np

from refimpl.errors import ShapeError

from ..common import lru_param_grads
from .cells import lru_setup
from .runtime import contiguous
from .sources import LRU


def _state_sweep(dev, lam, u, h0, dh, cdt, carry: bool, recurrent: bool):
    """The state kernel over the chunk: (Σ_b Σ_t conj(Q)δ (N, 2), Re Σ_b Σ_t conj(S^γ)δ (N)) in float64, and per
    (b, k) h, Q, S^γ after the chunk (cdt), w = Σ_t conj(λ^{t+1}) δ_t and λ^C (complex128)."""
    xp = dev.xp
    T, B, N = dh.shape
    gq, gg = xp.empty((B, N, 2), np.float64), xp.empty((B, N), np.float64)
    hT, qT, sT = (xp.empty((B, N), cdt) for _ in range(3))
    w, lamT = xp.empty((B, N), np.complex128), xp.empty((B, N), np.complex128)
    dev.launch(LRU, "lru_sens_state", cdt, B * N, u, h0, dh, lam, gq, gg, hT, qT, sT, w, lamT, T, B * N, N,
               int(carry), int(recurrent))
    return gq.sum(axis=0), gg.sum(axis=0), hT, qT, sT, w, lamT


def _carried(xp, params: dict, carry, B: int) -> dict:
    """The carried traces S_{-1} as complex128 (checked: the parameters' names, shapes (B, *shape))."""
    shapes = {name: (B,) + tuple(p.shape) for name, p in params.items()}
    if set(carry) != set(shapes):
        raise ShapeError(f"the carried traces of rule 'rtrl' on an lru cell name {sorted(carry)}; expected "
                         f"{sorted(shapes)}: pass the 'carry' the previous chunk's sweep returned")
    for name, shape in shapes.items():
        if tuple(carry[name].shape) != shape:
            raise ShapeError(f"the carried trace {name!r} has shape {tuple(carry[name].shape)}; expected {shape} "
                             f"(rule 'rtrl', lru cell, batch {B}): pass the previous chunk's 'carry'")
    return {name: contiguous(xp, carry[name], np.complex128) for name in shapes}


def lru_rtrl(dev, params: dict, x, h0, dh, carry=None, *, carry_out: bool = True) -> dict:
    """As kernel lru.rtrl: x r(C,B,I), h0 c(B,N), dh c(C,B,N), carry {param: S c(B, *shape)} or None →
    {param: grad, "state": h c(B,N), "carry": {param: S}, None with carry_out=False} (exact RTRL = BPTT, r 8; module
    docstring)."""
    xp = dev.xp
    T, B, I = x.shape
    lam, gamma, rdt, cdt, _, u = lru_setup(xp, params, x, h0)
    N = lam.shape[0]
    h0, dh = contiguous(xp, h0, cdt), contiguous(xp, dh, cdt)
    gq, gg, hT, Q, Sg, w, lamT = _state_sweep(dev, lam, u, h0, dh, cdt, carry=True, recurrent=True)  # (r 8) Q, S^γ
    G, Z = xp.empty((B, N, I, 2), np.float64), xp.empty((B, N, I), cdt)
    dev.launch(LRU, "lru_sens_input", cdt, B * N * I, contiguous(xp, x, rdt), dh, lam, G, Z, T, B, N, I)  # (r 8) Z
    G = G.sum(axis=0)                                                                         # (N, I, 2)
    grads = lru_param_grads(xp, params, gq[:, 0], gq[:, 1], G[..., 0], G[..., 1], gamma, gamma_log=gg)   # (r 8)
    traces = None
    if carry_out:
        e_nu, e_theta = xp.exp(params["nu_log"].astype(np.float64)), xp.exp(params["theta_log"].astype(np.float64))
        g64 = gamma.astype(np.float64)
        Q, Sg, Z = Q.astype(np.complex128), Sg.astype(np.complex128), Z.astype(np.complex128)
        traces = {"nu_log": -e_nu * Q, "theta_log": 1j * e_theta * Q, "gamma_log": Sg,      # (lru 10) from zero
                  "B_re": g64[:, None] * Z, "B_im": 1j * g64[:, None] * Z}
    if carry is not None:                                                   # the carried part, once per call
        for name, S0 in _carried(xp, params, carry, B).items():
            wide = w if S0.ndim == 2 else w[..., None]                      # broadcast over B_re/B_im's input axis
            g = xp.real(xp.conj(S0) * wide).sum(axis=0)                     # Re Σ_b conj(S_{-1}) w
            grads[name] = (grads[name].astype(np.float64) + g).astype(params[name].dtype)
            if traces is not None:
                traces[name] = traces[name] + (lamT if S0.ndim == 2 else lamT[..., None]) * S0   # λ^C S_{-1}
    out = None if traces is None else {name: traces[name].astype(cdt) for name in params}
    return {**grads, "state": hT, "carry": out}


def _lru_truncated_like(dev, params, x, h0, dh, recurrent, carry_out=True):
    xp = dev.xp
    T, B, I = x.shape
    lam, gamma, rdt, cdt, _, u = lru_setup(xp, params, x, h0)
    N = lam.shape[0]
    dh = contiguous(xp, dh, cdt)
    gq, gg, hT, *_ = _state_sweep(dev, lam, u, contiguous(xp, h0, cdt), dh, cdt, carry=False,
                                  recurrent=recurrent)                                          # (r 13)
    x2 = contiguous(xp, x, rdt).reshape(T * B, I)
    G_re = contiguous(xp, dh.real, rdt).reshape(T * B, N).T @ x2     # (lru 10) P_Bre = γ x, P_Bim = i γ x: Σ x δ
    G_im = contiguous(xp, dh.imag, rdt).reshape(T * B, N).T @ x2
    grads = lru_param_grads(xp, params, gq[:, 0], gq[:, 1], G_re, G_im, gamma, gamma_log=gg,
                            recurrent=recurrent)                                                 # (r 13), (r 14)
    return {**grads, "state": hT, "carry": {} if carry_out else None}


def lru_truncated(dev, params: dict, x, h0, dh, carry=None, *, carry_out: bool = True) -> dict:
    """As kernel lru.truncated: S_t = P_t (r 13); nothing carried (the carry argument is ignored, {} handed on; None
    with carry_out=False)."""
    return _lru_truncated_like(dev, params, x, h0, dh, True, carry_out)


def lru_spatial(dev, params: dict, x, h0, dh, carry=None, *, carry_out: bool = True) -> dict:
    """As kernel lru.spatial: (r 13) with nu_log, theta_log held constant (zero gradient, r 14); nothing carried ({},
    None with carry_out=False)."""
    return _lru_truncated_like(dev, params, x, h0, dh, False, carry_out)


# ---------------------------------------------------------------------------------------------------------- FPTT

def _fptt_carrier(xp, carry, name: str, B: int, N: int, start: complex):
    """One carrier (B, N) complex128 from the carry (checked), or its stream-start value."""
    if carry is None:
        return xp.full((B, N), start, np.complex128)
    if name not in carry or tuple(carry[name].shape) != (B, N):
        got = tuple(carry[name].shape) if name in carry else "no such entry"
        raise ShapeError(f"the FPTT carrier {name!r} of an lru cell: {got}; expected shape {(B, N)}: pass the "
                         f"'carry' the previous chunk of the same phase returned")
    return contiguous(xp, carry[name], np.complex128)


#: warm-up → (the `direct` flag of the CUDA kernel lru_fptt_warmup in sources.py, its two carriers in launch order —
#: the product, the vector — and their values at the stream's start).
_WARMUPS = {"direct": (1, ("Q", "e"), (1.0, 0.0)),
            "shooting": (0, ("P", "v"), (1.0, 0.0))}


def _warmup(dev, setup, h0, dh, warmup: str, carry, B: int, N: int):
    """A warm-up over the chunk from the carry (None: the stream's start): direct, (f 2)-(f 3) → {"Q", "e"}, or
    shooting, (f 1), (f 2s) → {"v": v', "P"}; returns (the state after the chunk, the carry out, complex128 (B, N)).
    setup: cells.lru_setup's tuple for the chunk; h0, dh: contiguous, in the state dtype."""
    xp = dev.xp
    direct, names, starts = _WARMUPS[warmup]
    _check_names(carry, names, "warm-up")
    ins = [_fptt_carrier(xp, carry, name, B, N, start) for name, start in zip(names, starts)]
    lam, _, _, cdt, _, u = setup
    T = dh.shape[0]
    outs, hT = [xp.empty((B, N), np.complex128) for _ in names], xp.empty((B, N), cdt)
    dev.launch(LRU, "lru_fptt_warmup", cdt, B * N, u, h0, dh, lam, *ins, *outs, hT, T, B * N, N, direct)
    return hT, dict(zip(names, outs))


def _errors(dev, setup, params, x, h0, dh, v0):
    """(f 1), (f 4) over the chunk from the carried v0 (B, N) complex128: (grads {param, "x"}, the state after the
    chunk, {"v": v})."""
    xp = dev.xp
    lam, gamma, rdt, cdt, W2, u = setup
    T, B, N = dh.shape
    I = x.shape[-1]
    es = xp.empty((T, B, 2 * N), rdt)                                         # e_t = ū_t in the state dtype (f 4)
    dlam, gg = xp.empty((B, N, 2), np.float64), xp.empty((B, N), np.float64)
    v, hT = xp.empty((B, N), np.complex128), xp.empty((B, N), cdt)
    dev.launch(LRU, "lru_fptt_errors", cdt, B * N, u, h0, dh, lam, v0, es, dlam, gg, v, hT, T, B * N, N)  # (f 1), (f 4)
    dlam, gg = dlam.sum(axis=0), gg.sum(axis=0)
    es2 = es.reshape(T * B, 2 * N)
    M = es2.T @ contiguous(xp, x, rdt).reshape(T * B, I)                              # (6) Σ ū xᵀ, rows re/im
    q = xp.conj(lam).astype(np.complex128) * (dlam[:, 0] + 1j * dlam[:, 1])                    # (7) conj(λ) λ̄
    grads = lru_param_grads(xp, params, q.real, q.imag, M[0::2], M[1::2], gamma, gamma_log=gg)   # (6), (7)
    grads["x"] = (es2 @ W2).reshape(x.shape).astype(x.dtype)                 # (6) x̄_t = Re((γ ⊙ ū) conj(B))
    return grads, hT, {"v": v}


def _chunk(dev, params, x, h0, dh):
    """The chunk's setup (cells.lru_setup: λ, γ, dtypes, W2, u for all steps: one GEMM) and h0, dh contiguous in the
    state dtype."""
    xp = dev.xp
    setup = lru_setup(xp, params, x, h0)
    cdt = setup[3]
    return setup, contiguous(xp, h0, cdt), contiguous(xp, dh, cdt)


def _check_names(carry, names, phase):
    if carry is not None and set(carry) != set(names):
        raise ShapeError(f"an FPTT {phase} carry names {sorted(carry)}; expected {sorted(names)}: pass the 'carry' "
                         f"the previous chunk of the same phase returned (fptt1 after the warm-up: {{'v': e_-1}})")


def lru_fptt(dev, params: dict, x, h0, dh) -> dict:
    """As kernel lru.fptt: the direct warm-up (f 2-3) from the stream's start, e_{-1} = e, then the error pass
    (f 1, 4) from it → {param, "x" r(T,B,I), "h0" c(B,N) = e_{-1}}."""
    B, N = x.shape[1], params["nu_log"].shape[0]
    setup, h0, dh = _chunk(dev, params, x, h0, dh)
    _, warm = _warmup(dev, setup, h0, dh, "direct", None, B, N)
    e_start = warm["e"]                                                       # (f 3) complex128
    grads, _, _ = _errors(dev, setup, params, x, h0, dh, e_start)
    grads["h0"] = e_start.astype(setup[3])                                    # e_{-1} in the state dtype
    return grads


def lru_fptt_warmup(dev, params: dict, x, h0, dh, carry=None) -> dict:
    """As kernel lru.fptt_warmup: the direct warm-up (f 2-3) over one chunk from the carried (Q, e) (None: Q = 1,
    e = 0) → {"state": h c(B,N), "carry": {"Q": Q, "e": e, complex128 (B,N)}}."""
    B, N = x.shape[1], params["nu_log"].shape[0]
    setup, h0, dh = _chunk(dev, params, x, h0, dh)
    state, carry_out = _warmup(dev, setup, h0, dh, "direct", carry, B, N)
    return {"state": state, "carry": carry_out}


def lru_fptt_shooting(dev, params: dict, x, h0, dh, carry=None) -> dict:
    """As kernel lru.fptt_shooting: the shooting warm-up (f 1, 2s) over one chunk from the carried (v', P) (None:
    v' = 0, P = 1) → {"state": h c(B,N), "carry": {"v": v', "P": P, complex128 (B,N)}}."""
    B, N = x.shape[1], params["nu_log"].shape[0]
    setup, h0, dh = _chunk(dev, params, x, h0, dh)
    state, carry_out = _warmup(dev, setup, h0, dh, "shooting", carry, B, N)
    return {"state": state, "carry": carry_out}


def lru_fptt1(dev, params: dict, x, h0, dh, carry=None) -> dict:
    """As kernel lru.fptt1: the error pass (f 1, 4) over one chunk from the carried v (None: e_{-1} = 0) →
    {param, "x" r(T,B,I), "state" c(B,N), "carry": {"v" complex128 (B,N)}}."""
    xp = dev.xp
    B, N = x.shape[1], params["nu_log"].shape[0]
    _check_names(carry, ("v",), "error-phase")
    setup, h0, dh = _chunk(dev, params, x, h0, dh)
    grads, state, carry_out = _errors(dev, setup, params, x, h0, dh, _fptt_carrier(xp, carry, "v", B, N, 0.0))
    return {**grads, "state": state, "carry": carry_out}


IMPLEMENTATIONS = {"lru.rtrl": lru_rtrl, "lru.truncated": lru_truncated, "lru.spatial": lru_spatial,
                   "lru.fptt": lru_fptt, "lru.fptt_warmup": lru_fptt_warmup, "lru.fptt_shooting": lru_fptt_shooting,
                   "lru.fptt1": lru_fptt1}
