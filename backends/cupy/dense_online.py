r"""The dense cells' RTRL-family sweeps (rnn, gru, lstm .rtrl / .snap1 / .truncated / .spatial, lstm.cec) on a
CUDA device.

Same signatures (after the device), output names, dtypes and shapes as the references (refimpl/kernels.py →
refimpl/algorithms/rtrl.py cell_grads_online). Equation numbers: "(r n)" is refimpl/algorithms/rtrl.py, "(n)" the cell's module in
refimpl/cells/. S is the state width (H; 2H for the lstm's [h; c]), R the state rows per unit (1; 2 for the lstm),
G the gate blocks (1, 3, 4), X a weight row's width (I for weight_ih, H for weight_hh, 1 for a bias).

The sweep processes the chunk it is given (DESIGN.md §5): the fused forward kernels of cells.py run the states of the
chunk first (their cache holds every gate of every step), then the sensitivities are carried over the chunk with CuPy
array ops — per step a handful of batched cuBLAS GEMMs and elementwise ops, no loop over units:

    per-unit factors  the sensitivities of unit k's state rows to its own pre-activations, from the step's gates:
                      rnn  φ'(a);  gru  S_ih, S_hh of (13);  lstm  S_h, S_c and κ of (12)            (B, R, H, G)
    P̂_t              the immediate ∂s_t/∂θ on its sparsity pattern (r 9): P̂[b, r, k, g, …] = factor ⊗ (x_t,
                      h_{t-1} or 1)
    rtrl  (r 3)       S_t = J_t S_{t-1} (one batched GEMM (B, S, S) @ (B, S, P)) + P̂_t scattered onto the pattern,
                      J_t from the factors and W_hh: rnn (7), gru (14), lstm (13)
    snap1 (r 10, 11)  T_t = D_t T_{t-1} + P̂_t with D_t the diagonal (lstm: per-unit 2×2 blocks) of J_t
    cec   (r 15, 16)  the same with D_t's h_{t-1} column dropped
    gradient (r 4, 12) g_t = Σ_b Σ_k S_t[b, k, …] δ_t[b, k] (h rows), one GEMM per parameter and step

No dense immediate Jacobian is ever formed (the reference gathers P̂ out of the dense param_jacobian; see its NOTE).
Truncation (r 13) holds s_{t-1} constant, so its sweep IS the BPTT kernel without its carry: the fused backward of
cells.py with propagate = 0 (spatial, r 14: the same with weight_hh, bias_hh held at zero gradient).
"""

from __future__ import annotations

import numpy as np

from refimpl.cells.common import cache_at

from .cells import (_c, gru_backward, gru_forward, lstm_backward, lstm_forward, rnn_backward, rnn_forward)

#: State rows per unit (R) and gate blocks (G) of each dense cell.
_ROWS = {"rnn": 1, "gru": 1, "lstm": 2}
_GATES = {"rnn": 1, "gru": 3, "lstm": 4}
_FORWARD = {"rnn": rnn_forward, "gru": gru_forward, "lstm": lstm_forward}


# ------------------------------------------------------------------------------------------------- per-step factors

def _diag_blocks(xp, W_hh, G, H):
    """diag(W_hG) for every gate block G: (G, H)."""
    k = xp.arange(H)
    return W_hh.reshape(G, H, H)[:, k, k]


def step_factors(xp, cell: str, params: dict, c, nonlinearity: str = "tanh"):
    """The per-unit factors of one step from its cache fields `c` (each (B, ·)).

    Returns (F_ih, F_hh, J, D): F (B, R, H, G) the sensitivities of unit k's state rows to the pre-activations of
    unit k that weight_ih/bias_ih resp. weight_hh/bias_hh feed; J a function giving the dense J_t (B, S, S); D the
    per-unit blocks D_t[b, k, r, q] = J_t[b, rH + k, qH + k] (B, H, R, R).
    """
    B, H = c.h.shape
    W = params["weight_hh"].astype(c.h.dtype, copy=False)
    if cell == "rnn":
        d = 1.0 - c.h * c.h if nonlinearity == "tanh" else xp.ones_like(c.h)              # φ'(a_t), (3)
        F = d[:, None, :, None]                                                           # (8)
        J = lambda: d[:, :, None] * W[None]                                               # noqa: E731  (7)
        D = (d * _diag_blocks(xp, W, 1, H)[0])[:, :, None, None]                          # (7) diagonal
        return F, F, J, D
    if cell == "gru":
        s_n = (1.0 - c.z) * (1.0 - c.n * c.n)                                             # (13)
        s_r = s_n * c.hn * c.r * (1.0 - c.r)                                              # (13)
        s_z = (c.h_prev - c.n) * c.z * (1.0 - c.z)                                        # (13)
        s_m = s_n * c.r                                                                   # (13)
        S_hh = xp.stack([s_r, s_z, s_m], axis=1)                                          # (B, 3, H)
        F_ih = xp.stack([s_r, s_z, s_n], axis=-1)[:, None]                                # (13) S_ih (B, 1, H, 3)
        F_hh = xp.transpose(S_hh, (0, 2, 1))[:, None]                                     # (13) S_hh (B, 1, H, 3)

        def J():                                                                          # (14)
            rows = xp.einsum("bgk,gkj->bkj", S_hh, W.reshape(3, H, H))
            return rows + c.z[:, :, None] * xp.eye(H, dtype=c.h.dtype)[None]
        D = ((S_hh * _diag_blocks(xp, W, 3, H)[None]).sum(axis=1) + c.z)[:, :, None, None]   # (14) diagonal
        return F_ih, F_hh, J, D
    # lstm
    kappa = c.o * (1.0 - c.tanh_c * c.tanh_c)                                             # (12) κ
    s_i = c.g * c.i * (1.0 - c.i)                                                         # (12)
    s_f = c.c_prev * c.f * (1.0 - c.f)                                                    # (12)
    s_g = c.i * (1.0 - c.g * c.g)                                                         # (12)
    s_o = c.tanh_c * c.o * (1.0 - c.o)                                                    # (12)
    S_h = xp.stack([kappa * s_i, kappa * s_f, kappa * s_g, s_o], axis=1)                  # (12) (B, 4, H)
    S_c = xp.stack([s_i, s_f, s_g, xp.zeros_like(s_o)], axis=1)                           # (12) (B, 4, H)
    F = xp.stack([xp.transpose(S_h, (0, 2, 1)), xp.transpose(S_c, (0, 2, 1))], axis=1)    # (B, 2, H, 4)

    def J():                                                                              # (13)
        W4 = W.reshape(4, H, H)
        eye = xp.eye(H, dtype=c.h.dtype)[None]
        top = xp.concatenate([xp.einsum("bgk,gkj->bkj", S_h, W4), (kappa * c.f)[:, :, None] * eye], axis=2)
        bottom = xp.concatenate([xp.einsum("bgk,gkj->bkj", S_c, W4), c.f[:, :, None] * eye], axis=2)
        return xp.concatenate([top, bottom], axis=1)
    dW = _diag_blocks(xp, W, 4, H)[None]                                                  # (1, 4, H)
    D = xp.stack([xp.stack([(S_h * dW).sum(axis=1), kappa * c.f], axis=-1),               # (13) rows h: [∂h/∂h, κ f]
                  xp.stack([(S_c * dW).sum(axis=1), c.f], axis=-1)], axis=-2)             # (13) rows c: [∂c/∂h, f]
    return F, F, J, D


def _immediate(F, v):
    """P̂ (r 9): (B, R, H, G, X) = F ⊗ v for a weight (v = x_t or h_{t-1}, (B, X)); F itself (X = 1) for a bias."""
    if v is None:
        return F[..., None]
    return F[..., None] * v[:, None, None, None, :]


def _inputs_of(name, c):
    """What a parameter's row multiplies: x_t for weight_ih, h_{t-1} for weight_hh, nothing for a bias."""
    return {"weight_ih": c.x, "weight_hh": c.h_prev}.get(name)


# ------------------------------------------------------------------------------------------------------ the sweeps

def _sweep(dev, rule, cell, params, x, state0, dh, **options):
    """rtrl / snap1 / cec over the chunk: forward (fused kernels), then the trace loop (module docstring)."""
    xp = dev.xp
    T, B, _ = x.shape
    _, cache = _FORWARD[cell](dev, params, x, state0, **options)
    dt = cache.h.dtype
    H, R, G = cache.h.shape[-1], _ROWS[cell], _GATES[cell]
    S = R * H
    dh = _c(xp, dh, dt)
    widths = {name: int(np.prod(p.shape[1:])) for name, p in params.items()}        # X of each parameter
    grads = {name: xp.zeros_like(p) for name, p in params.items()}
    if rule == "rtrl":                                                              # (r 3) dense traces (B, S, P)
        traces = {name: xp.zeros((B, S, G * H * X), dt) for name, X in widths.items()}
        pattern = {}
        for name, X in widths.items():                                              # (r 9) where P̂ lands in S
            r, k, g, i = np.meshgrid(np.arange(R), np.arange(H), np.arange(G), np.arange(X), indexing="ij")
            pattern[name] = (xp.asarray((r * H + k).ravel()), xp.asarray(((g * H + k) * X + i).ravel()))
    else:                                                                           # (r 11) unit traces
        traces = {name: xp.zeros((B, R, H, G * X), dt) for name, X in widths.items()}
    for t in range(T):
        c = cache_at(cache, t)
        F_ih, F_hh, J, D = step_factors(xp, cell, params, c, **options)
        if rule == "cec":
            D = D * xp.asarray([0.0, 1.0], dtype=dt)                                # (r 15) drop the h_{t-1} column
        Jt = J() if rule == "rtrl" else None
        delta = dh[t]                                                               # (B, H)
        for name, X in widths.items():
            F = F_ih if name.endswith("_ih") else F_hh
            P_hat = _immediate(F, _inputs_of(name, c)).reshape(B, R, H, G * X)      # (r 9)
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
    return grads


def _truncated(dev, backward, forward, params, x, state0, dh, recurrent, **options):
    """(r 13): the fused forward, then the fused backward without its carry; (r 14) zeroes the recurrent term."""
    xp = dev.xp
    _, cache = forward(dev, params, x, state0, **options)
    grads = backward(dev, params, dh, cache, propagate=False, **options)
    out = {k: grads[k] for k in params}
    if not recurrent:
        out["weight_hh"], out["bias_hh"] = xp.zeros_like(params["weight_hh"]), xp.zeros_like(params["bias_hh"])
    return out


def rnn_rtrl(dev, params, x, h0, dh, nonlinearity="tanh"):
    """As kernel rnn.rtrl: exact RTRL (r 3)."""
    return _sweep(dev, "rtrl", "rnn", params, x, h0, dh, nonlinearity=nonlinearity)


def rnn_snap1(dev, params, x, h0, dh, nonlinearity="tanh"):
    """As kernel rnn.snap1 (r 10, 11)."""
    return _sweep(dev, "snap1", "rnn", params, x, h0, dh, nonlinearity=nonlinearity)


def rnn_truncated(dev, params, x, h0, dh, nonlinearity="tanh"):
    """As kernel rnn.truncated: S_t = P_t (r 13)."""
    return _truncated(dev, rnn_backward, rnn_forward, params, x, h0, dh, True, nonlinearity=nonlinearity)


def rnn_spatial(dev, params, x, h0, dh, nonlinearity="tanh"):
    """As kernel rnn.spatial: (r 13) with weight_hh, bias_hh held constant (r 14)."""
    return _truncated(dev, rnn_backward, rnn_forward, params, x, h0, dh, False, nonlinearity=nonlinearity)


def gru_rtrl(dev, params, x, h0, dh):
    """As kernel gru.rtrl: exact RTRL (r 3)."""
    return _sweep(dev, "rtrl", "gru", params, x, h0, dh)


def gru_snap1(dev, params, x, h0, dh):
    """As kernel gru.snap1 (r 10, 11)."""
    return _sweep(dev, "snap1", "gru", params, x, h0, dh)


def gru_truncated(dev, params, x, h0, dh):
    """As kernel gru.truncated: S_t = P_t (r 13)."""
    return _truncated(dev, gru_backward, gru_forward, params, x, h0, dh, True)


def gru_spatial(dev, params, x, h0, dh):
    """As kernel gru.spatial (r 13, 14)."""
    return _truncated(dev, gru_backward, gru_forward, params, x, h0, dh, False)


def lstm_rtrl(dev, params, x, state0, dh):
    """As kernel lstm.rtrl: exact RTRL on the state [h; c] (r 3)."""
    return _sweep(dev, "rtrl", "lstm", params, x, state0, dh)


def lstm_snap1(dev, params, x, state0, dh):
    """As kernel lstm.snap1: per-unit 2×2 blocks (r 10, 11)."""
    return _sweep(dev, "snap1", "lstm", params, x, state0, dh)


def lstm_cec(dev, params, x, state0, dh):
    """As kernel lstm.cec: h_{t-1} held constant where it enters the gates (r 15, 16)."""
    return _sweep(dev, "cec", "lstm", params, x, state0, dh)


def lstm_truncated(dev, params, x, state0, dh):
    """As kernel lstm.truncated: S_t = P_t (r 13), h_{t-1} and c_{t-1} held constant."""
    return _truncated(dev, lstm_backward, lstm_forward, params, x, state0, dh, True)


def lstm_spatial(dev, params, x, state0, dh):
    """As kernel lstm.spatial (r 13, 14)."""
    return _truncated(dev, lstm_backward, lstm_forward, params, x, state0, dh, False)


IMPLEMENTATIONS = {
    "rnn.rtrl": rnn_rtrl, "rnn.snap1": rnn_snap1, "rnn.truncated": rnn_truncated, "rnn.spatial": rnn_spatial,
    "gru.rtrl": gru_rtrl, "gru.snap1": gru_snap1, "gru.truncated": gru_truncated, "gru.spatial": gru_spatial,
    "lstm.rtrl": lstm_rtrl, "lstm.snap1": lstm_snap1, "lstm.truncated": lstm_truncated,
    "lstm.spatial": lstm_spatial, "lstm.cec": lstm_cec,
}
