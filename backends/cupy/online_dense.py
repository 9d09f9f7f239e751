r"""The dense cells' RTRL-family sweeps (rnn, gru, lstm .rtrl / .snap1 / .truncated / .spatial, lstm.cec) on a
CUDA device, one chunk of a stream per call (DESIGN.md §5).

Same signatures (after the device), output names, dtypes and shapes as the references (refimpl/kernels.py →
refimpl/algorithms/rtrl.py `sweep`): (params, x (C,B,I), h0 | state0, dh (C,B,H), carry=None[, nonlinearity]) →
{param: grad summed over the chunk, "state": the state after the chunk (h, or LSTMState(h, c)), "carry": the traces
after it}. Equation numbers: "(r n)" is refimpl/algorithms/rtrl.py, "(n)" the cell's module in refimpl/cells/. S is
the state width (H; 2H for the lstm's [h; c]), R the state rows per unit (the cell's STATE_ROWS: 1; 2 for the lstm),
G the gate blocks (1, 3, 4), X a weight row's width (I for weight_ih, H for weight_hh, 1 for a bias).

The carry is the reference's trace layout (rtrl.py "Trace layouts"): rtrl carries the dense S (B, S, *shape), snap1
and cec the unit traces T (B, R, H, G, *X); carry None is S_{-1} = 0. The sweep keeps them as (B, S, G·H·X) and
(B, R, H, G·X), the same memory order, so the carry crosses the chunk boundary by one reshape each way, per call.
truncated and spatial carry nothing (their carry is {}). carry_out=False (a stream's last chunk): "carry" None, the
traces are not copied out.

The sweep processes the chunk it is given: the fused forward kernels of cells.py run the states of the chunk first
(their cache holds every gate of every step), then the sensitivities are carried over the chunk with CuPy array ops —
per step a handful of batched cuBLAS GEMMs and elementwise ops, no loop over units:

    per-unit factors  F_ih, F_hh (B, R, H, G): the sensitivities of unit k's state rows to its own pre-activations
                      (rnn φ'(a); gru S_ih, S_hh of (13); lstm S_h, S_c of (12)), and E (B, R, H): the direct term of
                      J_t on s_{t-1}'s last row (rnn 0; gru z, the diag(z) of (14); lstm κ f, f of (13)). They are the
                      cell's step adjoint seeded with one state row — the fused backward kernels of sources.py, run
                      once over C·B·H threads per seed (unit_factors): no derivative is written a second time here
    P̂_t              the immediate ∂s_t/∂θ on its sparsity pattern (r 9): P̂[b, r, k, g, …] = F ⊗ (x_t, h_{t-1} or 1)
    rtrl  (r 3)       S_t = J_t S_{t-1} (one batched GEMM (B, S, S) @ (B, S, P)) + P̂_t scattered onto the pattern,
                      J_t[rH+k, j] = Σ_g F_hh[r, k, g] W_hh[gH+k, j] + δ_{j,(R−1)H+k} E[r, k]  (jacobian)
    snap1 (r 10, 11)  T_t = D_t T_{t-1} + P̂_t with D_t the diagonal (lstm: per-unit 2×2 blocks) of J_t (unit_blocks)
    cec   (r 15, 16)  the same with D_t's h_{t-1} column dropped
    gradient (r 4, 12) g_t = Σ_b Σ_k S_t[b, k, …] δ_t[b, k] (h rows), one GEMM per parameter and step

No dense immediate Jacobian is ever formed (the reference gathers P̂ out of the dense param_jacobian; see its NOTE).
Truncation (r 13) holds s_{t-1} constant, so its sweep IS the BPTT kernel without its carry: the fused backward of
cells.py with propagate = 0 (spatial, r 14: the same with the recurrent parameters held at zero gradient).
"""

from __future__ import annotations

import numpy as np

from refimpl.cells import CELLS
from refimpl.errors import ShapeError

from .cells import gru_backward, gru_forward, lstm_backward, lstm_forward, rnn_backward, rnn_forward
from .runtime import contiguous
from .sources import CELLS as CELL_SOURCES

FORWARD = {"rnn": rnn_forward, "gru": gru_forward, "lstm": lstm_forward}
BACKWARD = {"rnn": rnn_backward, "gru": gru_backward, "lstm": lstm_backward}


# ------------------------------------------------------------------------------------------------- per-step factors

def unit_factors(dev, cell: str, cache, nonlinearity: str = "tanh"):
    """(F_ih, F_hh (T, B, R, H, G), E (T, B, R, H)) of every step of the chunk at once (module docstring): the fused
    backward kernels over T·B·H threads with the unit seeds s̄_t = e_{rH+k} and the direct path kept (propagate = 1,
    nothing carried in) — their gate adjoints are F, the adjoint they carry to s_{t-1}'s last row is E."""
    xp = dev.xp
    T, B, H = cache.h.shape
    dt = cache.h.dtype
    n = T * B * H
    c = cache
    ones, zeros = xp.ones((T, B, H), dt), xp.zeros((T, B, H), dt)

    def by_unit(g, G):                                                     # (T, B, G·H) → (T, B, 1, H, G)
        return xp.transpose(g.reshape(T, B, G, H), (0, 1, 3, 2))[:, :, None]

    if cell == "rnn":                                                      # (3), (8): F = φ'(a_t); E = 0 (7)
        F = xp.empty((T, B, H), dt)
        dev.launch(CELL_SOURCES, "rnn_bwd_step", dt, n, ones, zeros, contiguous(xp, c.h, dt), F,
                   int(nonlinearity == "tanh"))
        return by_unit(F, 1), by_unit(F, 1), zeros[:, :, None]
    if cell == "gru":                                                      # (13) S_ih, S_hh; (14) E = z
        F_ih, F_hh, E = xp.empty((T, B, 3 * H), dt), xp.empty((T, B, 3 * H), dt), xp.zeros((T, B, H), dt)
        dev.launch(CELL_SOURCES, "gru_bwd_step", dt, n, ones, E, zeros,
                   *(contiguous(xp, a, dt) for a in (c.h_prev, c.r, c.z, c.n, c.hn)), F_ih, F_hh, H, 1)
        return by_unit(F_ih, 3), by_unit(F_hh, 3), E[:, :, None]
    F, E = [], []                                                          # lstm: rows h, c
    for seed_h, seed_c in ((ones, zeros), (zeros, ones)):                  # (12) S_h, S_c; (13) κ f, f
        da, carry_c = xp.empty((T, B, 4 * H), dt), seed_c.copy()
        dev.launch(CELL_SOURCES, "lstm_bwd_step", dt, n, seed_h, zeros, carry_c,
                   *(contiguous(xp, a, dt) for a in (c.c_prev, c.i, c.f, c.g, c.o, c.tanh_c)), da, H, 1)
        F.append(by_unit(da, 4))
        E.append(carry_c[:, :, None])
    F = xp.concatenate(F, axis=2)
    return F, F, xp.concatenate(E, axis=2)


def jacobian(xp, F_hh, E, W_hh):
    """J_t (B, S, S) from one step's factors (r 2): Σ_g F_hh[b, r, k, g] W_hh[gH+k, j] on the h_{t-1} columns j,
    + E[b, r, k] on column (R−1)H + k — rnn (7), gru (14), lstm (13)."""
    B, R, H, G = F_hh.shape
    J = xp.zeros((B, R, H, R, H), F_hh.dtype)
    J[:, :, :, 0, :] = xp.einsum("brkg,gkj->brkj", F_hh, W_hh.reshape(G, H, H))
    J[:, :, :, R - 1, :] += E[..., None] * xp.eye(H, dtype=F_hh.dtype)
    return J.reshape(B, R * H, R * H)


def unit_blocks(xp, F_hh, E, W_hh, drop_h_column=False):
    """D_t[b, k, r, q] = J_t[b, rH+k, qH+k] (B, H, R, R), (r 11), from one step's factors; drop_h_column (cec,
    r 15) leaves out the h_{t-1} column q = 0."""
    B, R, H, G = F_hh.shape
    k = xp.arange(H)
    W_kk = W_hh.reshape(G, H, H)[:, k, k]                                  # W_hh[gH+k, k]  (G, H)
    D = xp.zeros((B, H, R, R), F_hh.dtype)
    if not drop_h_column:
        D[..., 0] = xp.transpose((F_hh * W_kk.T).sum(axis=-1), (0, 2, 1))
    D[..., R - 1] += xp.transpose(E, (0, 2, 1))
    return D


def _immediate(F, v):
    """P̂ (r 9): (B, R, H, G, X) = F ⊗ v for a weight (v = x_t or h_{t-1}, (B, X)); F itself (X = 1) for a bias."""
    if v is None:
        return F[..., None]
    return F[..., None] * v[:, None, None, None, :]


def _inputs_of(name, cache, t):
    """What a parameter's row multiplies at step t: x_t for weight_ih, h_{t-1} for weight_hh, nothing for a bias."""
    return {"weight_ih": cache.x, "weight_hh": cache.h_prev}[name][t] if name.startswith("weight") else None


# ------------------------------------------------------------------------------------------------------ the sweeps

def state_after(cell: str, cache):
    """The state after the chunk, a fresh array: h_{C-1} (B, H), or LSTMState(h_{C-1}, c_{C-1}) for the lstm."""
    if cell == "lstm":
        return CELLS[cell].state_from_parts(cache.h[-1].copy(), cache.c[-1].copy())
    return cache.h[-1].copy()


def trace_shapes(rule: str, params: dict, B: int, H: int, R: int) -> dict:
    """{param name: shape} of the carried traces in the reference's layout (r, "Trace layouts"): "dense" (B, S,
    *shape) for rtrl, "unit" (B, R, H, G, *X) for snap1 and cec. The sweep keeps them as (B, S, G·H·X) and
    (B, R, H, G·X): the same memory order, so the carry crosses the chunk boundary by a reshape."""
    if rule == "rtrl":
        return {name: (B, R * H) + tuple(p.shape) for name, p in params.items()}
    return {name: (B, R, H, p.shape[0] // H) + tuple(p.shape[1:]) for name, p in params.items()}


def carried_traces(xp, rule: str, carry, shapes: dict, dt) -> dict:
    """The traces before the chunk in the sweep's layout (trace_shapes): S_{-1} = 0 for carry None (a stream's
    start), else the carried arrays (names and shapes checked), once per call."""
    flat = {name: shape[:2] + (int(np.prod(shape[2:])),) if rule == "rtrl" else shape[:3] + (int(np.prod(shape[3:])),)
            for name, shape in shapes.items()}
    if carry is None:
        return {name: xp.zeros(shape, dt) for name, shape in flat.items()}
    if set(carry) != set(shapes):
        raise ShapeError(f"the carried traces of rule {rule!r} name {sorted(carry)}; expected {sorted(shapes)}: pass "
                         f"the 'carry' the previous chunk's sweep returned")
    for name, shape in shapes.items():
        if tuple(carry[name].shape) != shape:
            raise ShapeError(f"the carried trace {name!r} has shape {tuple(carry[name].shape)}; expected {shape} "
                             f"(rule {rule!r}): pass the previous chunk's 'carry'")
    return {name: contiguous(xp, carry[name], dt).reshape(flat[name]) for name in shapes}


def _sweep(dev, rule, cell, params, x, state0, dh, carry, carry_out=True, **options):
    """rtrl / snap1 / cec over the chunk: forward (fused kernels), then the trace loop (module docstring), from the
    carried traces; → {param: grad, "state", "carry": {param: trace}, None with carry_out=False}."""
    xp = dev.xp
    T, B, _ = x.shape
    _, cache = FORWARD[cell](dev, params, x, state0, **options)
    dt = cache.h.dtype
    H, R = cache.h.shape[-1], CELLS[cell].STATE_ROWS
    G = params["weight_hh"].shape[0] // H
    dh = contiguous(xp, dh, dt)
    W = params["weight_hh"].astype(dt, copy=False)
    F_ih_all, F_hh_all, E_all = unit_factors(dev, cell, cache, **options)
    widths = {name: int(np.prod(p.shape[1:])) for name, p in params.items()}        # X of each parameter
    grads = {name: xp.zeros_like(p) for name, p in params.items()}
    shapes = trace_shapes(rule, params, B, H, R)
    traces = carried_traces(xp, rule, carry, shapes, dt)          # (r 3) (B, S, P) or (r 11) (B, R, H, G·X)
    if rule == "rtrl":
        pattern = {}
        for name, X in widths.items():                                              # (r 9) where P̂ lands in S
            r, k, g, i = np.meshgrid(np.arange(R), np.arange(H), np.arange(G), np.arange(X), indexing="ij")
            pattern[name] = (xp.asarray((r * H + k).ravel()), xp.asarray(((g * H + k) * X + i).ravel()))
    for t in range(T):
        F_ih, F_hh, E = F_ih_all[t], F_hh_all[t], E_all[t]
        if rule == "rtrl":
            Jt = jacobian(xp, F_hh, E, W)                                           # (r 2)
        else:
            D = unit_blocks(xp, F_hh, E, W, drop_h_column=rule == "cec")            # (r 11), (r 15)
        delta = dh[t]                                                               # (B, H)
        for name, X in widths.items():
            F = F_ih if name.endswith("_ih") else F_hh
            P_hat = _immediate(F, _inputs_of(name, cache, t)).reshape(B, R, H, G * X)   # (r 9)
            if rule == "rtrl":
                new = xp.matmul(Jt, traces[name])                                   # (r 3) J_t S_{t-1}
                rows, cols = pattern[name]
                new[:, rows, cols] += P_hat.reshape(B, -1)                          # (r 3) + P_t
                g = delta.reshape(1, B * H) @ new[:, :H].reshape(B * H, -1)         # (r 4) Σ_b Σ_k S[b, k] δ[b, k]
            else:
                new = xp.einsum("bkrq,bqkm->brkm", D, traces[name]) + P_hat         # (r 11), (r 16)
                g = xp.einsum("bkm,bk->km", new[:, 0], delta)                       # (r 12) row gH + k
                g = xp.transpose(g.reshape(H, G, X), (1, 0, 2))
            traces[name] = new
            grads[name] += g.reshape(params[name].shape).astype(params[name].dtype, copy=False)
    out = {name: contiguous(xp, traces[name], dt).reshape(shape) for name, shape in shapes.items()} \
        if carry_out else None
    return {**grads, "state": state_after(cell, cache), "carry": out}


def _truncated(dev, cell, params, x, state0, dh, recurrent, carry_out=True, **options):
    """(r 13): the fused forward, then the fused backward without its carry; (r 14) zeroes the recurrent
    parameters'. Nothing is carried: the carry argument is accepted and ignored, the carry handed on is {} (None
    with carry_out=False)."""
    _, cache = FORWARD[cell](dev, params, x, state0, **options)
    grads = BACKWARD[cell](dev, params, dh, cache, propagate=False, **options)
    out = {k: grads[k] for k in params}
    if not recurrent:
        for k in CELLS[cell].RECURRENT_PARAMS:                                # (r 14) held constant
            out[k] = dev.xp.zeros_like(params[k])
    return {**out, "state": state_after(cell, cache), "carry": {} if carry_out else None}


def rnn_rtrl(dev, params, x, h0, dh, carry=None, nonlinearity="tanh", *, carry_out=True):
    """As kernel rnn.rtrl: exact RTRL (r 3)."""
    return _sweep(dev, "rtrl", "rnn", params, x, h0, dh, carry, carry_out, nonlinearity=nonlinearity)


def rnn_snap1(dev, params, x, h0, dh, carry=None, nonlinearity="tanh", *, carry_out=True):
    """As kernel rnn.snap1 (r 10, 11)."""
    return _sweep(dev, "snap1", "rnn", params, x, h0, dh, carry, carry_out, nonlinearity=nonlinearity)


def rnn_truncated(dev, params, x, h0, dh, carry=None, nonlinearity="tanh", *, carry_out=True):
    """As kernel rnn.truncated: S_t = P_t (r 13)."""
    return _truncated(dev, "rnn", params, x, h0, dh, True, carry_out, nonlinearity=nonlinearity)


def rnn_spatial(dev, params, x, h0, dh, carry=None, nonlinearity="tanh", *, carry_out=True):
    """As kernel rnn.spatial: (r 13) with weight_hh, bias_hh held constant (r 14)."""
    return _truncated(dev, "rnn", params, x, h0, dh, False, carry_out, nonlinearity=nonlinearity)


def gru_rtrl(dev, params, x, h0, dh, carry=None, *, carry_out=True):
    """As kernel gru.rtrl: exact RTRL (r 3)."""
    return _sweep(dev, "rtrl", "gru", params, x, h0, dh, carry, carry_out)


def gru_snap1(dev, params, x, h0, dh, carry=None, *, carry_out=True):
    """As kernel gru.snap1 (r 10, 11)."""
    return _sweep(dev, "snap1", "gru", params, x, h0, dh, carry, carry_out)


def gru_truncated(dev, params, x, h0, dh, carry=None, *, carry_out=True):
    """As kernel gru.truncated: S_t = P_t (r 13)."""
    return _truncated(dev, "gru", params, x, h0, dh, True, carry_out)


def gru_spatial(dev, params, x, h0, dh, carry=None, *, carry_out=True):
    """As kernel gru.spatial (r 13, 14)."""
    return _truncated(dev, "gru", params, x, h0, dh, False, carry_out)


def lstm_rtrl(dev, params, x, state0, dh, carry=None, *, carry_out=True):
    """As kernel lstm.rtrl: exact RTRL on the state [h; c] (r 3)."""
    return _sweep(dev, "rtrl", "lstm", params, x, state0, dh, carry, carry_out)


def lstm_snap1(dev, params, x, state0, dh, carry=None, *, carry_out=True):
    """As kernel lstm.snap1: per-unit 2×2 blocks (r 10, 11)."""
    return _sweep(dev, "snap1", "lstm", params, x, state0, dh, carry, carry_out)


def lstm_cec(dev, params, x, state0, dh, carry=None, *, carry_out=True):
    """As kernel lstm.cec: h_{t-1} held constant where it enters the gates (r 15, 16)."""
    return _sweep(dev, "cec", "lstm", params, x, state0, dh, carry, carry_out)


def lstm_truncated(dev, params, x, state0, dh, carry=None, *, carry_out=True):
    """As kernel lstm.truncated: S_t = P_t (r 13), h_{t-1} and c_{t-1} held constant."""
    return _truncated(dev, "lstm", params, x, state0, dh, True, carry_out)


def lstm_spatial(dev, params, x, state0, dh, carry=None, *, carry_out=True):
    """As kernel lstm.spatial (r 13, 14)."""
    return _truncated(dev, "lstm", params, x, state0, dh, False, carry_out)


IMPLEMENTATIONS = {
    "rnn.rtrl": rnn_rtrl, "rnn.snap1": rnn_snap1, "rnn.truncated": rnn_truncated, "rnn.spatial": rnn_spatial,
    "gru.rtrl": gru_rtrl, "gru.snap1": gru_snap1, "gru.truncated": gru_truncated, "gru.spatial": gru_spatial,
    "lstm.rtrl": lstm_rtrl, "lstm.snap1": lstm_snap1, "lstm.truncated": lstm_truncated,
    "lstm.spatial": lstm_spatial, "lstm.cec": lstm_cec,
}
