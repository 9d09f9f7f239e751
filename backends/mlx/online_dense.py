r"""The dense cells' RTRL-family sweeps (rnn, gru, lstm .rtrl / .snap1 / .truncated / .spatial, lstm.cec) with mlx.core.

Same signatures, output names, dtypes and shapes as the references (refimpl/kernels.py → refimpl/algorithms/rtrl.py
`sweep`): each kernel sweeps one chunk of a stream from the state and the carried traces before it (carry=None:
S_{-1} = 0) and returns {param: Σ over the chunk, "state": the state after it, "carry": the traces after it}, so a
stream cut into chunks of any size gives the uncut sweep's gradients. Equation numbers: "(r n)" is
refimpl/algorithms/rtrl.py, "(n)" the cell's module docstring.
S = R·H is the state width (R = 1 rows per unit; 2 for the lstm's (h_k, c_k)), G the gate blocks (rnn 1, gru 3,
lstm 4), X the trailing width of a parameter row (I for weight_ih, H for weight_hh, 1 for a bias).

Every immediate derivative of a step is built from per-unit factors, computed once per step (the cells' eqs. (8),
(13)–(15) of rnn/gru, (12)–(14) of lstm):

    F_ih, F_hh (B, R, G, H):  ∂s_t[rH+k]/∂W_ih[gH+i, j] = δ_ki F_ih[b,r,g,k] x_t[j]      (W_hh: F_hh, h_{t-1}[j];
                                                                                          biases: without the x/h)
    E (B, R, R, H):           the direct terms of J_t:  J_t[rH+k, qH+j] = [q=0] Σ_g F_hh[b,r,g,k] W_hh[gH+k, j]
                                                                          + δ_kj E[b,r,q,k]
    rnn: F = φ'(a), E = 0;  gru: F_ih = [s_r, s_z, s_n], F_hh = [s_r, s_z, s_m], E = z;
    lstm: F_ih = F_hh = [S_h; S_c], E = [[0, κ f], [0, f]].
The factors of gru and lstm are the cells' gate adjoints (cells.py) seeded with one state row: no derivative is
written twice.

Rules, and what each carries (the reference's trace layouts, rtrl.py "Trace layouts"):
    rtrl      S_t = J_t S_{t-1} + P_t (r 3): J_t (B, S, S) and the dense P_t (B, S, G·H·X) from the factors; one
              batched GEMM per parameter per step; g += δᵀ S[:, :H] (r 4). Carry: "dense" S (B, S, *shape) — inside,
              (B, S, G·H·X), the same memory (a reshape at the boundary).
    snap1     T_t[b,r,g,k,·] = Σ_q D_t[b,r,q,k] T_{t-1}[b,q,g,k,·] + F[b,r,g,k] X_t[b,·]  (r 10, 11), with the
              diagonal blocks D_t[b,r,q,k] = J_t[rH+k, qH+k] = [q=0] Σ_g F_hh[b,r,g,k] W_hh[gH+k, k] + E[b,r,q,k]
              taken from the factors (no (B, S, S) Jacobian); g[gH+k, ·] += Σ_b δ[b,k] T_t[b,0,g,k,·] (r 12). Carry:
              "unit" T (B, R, H, G, *X) — inside, (B, R, G, H, X) (one transpose in and one out per call).
    cec       snap1 with the h_{t-1} column of D dropped (r 15): D = [[0, κ f], [0, f]] — exact for its rule (r 16).
              Carry: as snap1.
    truncated S_t = P_t (r 13): the cell's BPTT kernel without its carry (cells.py, propagate=False). Carry: {}.
    spatial   truncated with weight_hh, bias_hh held constant: exact zeros (r 14). Carry: {}.
carry_out=False (a stream's last chunk): "carry" None, and no trace is brought back to the reference's layout.
The state advances with the cells' own compiled steps (cells.py); the input projection of all T steps is one GEMM.
"""

from __future__ import annotations

import mlx.core as mx

from refimpl.cells import CELLS
from refimpl.cells.lstm import LSTMState

from ..common import check_nonlinearity, param_grads
from .cells import (gru_backward_graph, gru_forward_graph, gru_gate_adjoints, gru_step, lstm_backward_graph,
                    lstm_forward_graph, lstm_gate_adjoints, lstm_step, rnn_backward_graph, rnn_forward_graph, rnn_slope,
                    rnn_step)
from .runtime import checked_carry, kernel, project, transposed

# ------------------------------------------------------------------------------------------- per-unit factors

def rnn_factors(h, use_tanh):
    """rnn: F = φ'(a_t) (B, 1, 1, H) for both weights, E = 0 (rnn eqs. (7), (8)), from h_t = φ(a_t)."""
    F = rnn_slope(h, use_tanh)[:, None, None, :]                                  # φ'(a_t)
    return F, F, mx.zeros_like(F)


@mx.compile
def gru_factors(h_prev, r, z, n, m):
    """gru: F_ih = [s_r, s_z, s_n], F_hh = [s_r, s_z, s_m] (B, 1, 3, H) — the gate adjoints (6)–(10) of h̄_t = 1, which
    are the sensitivities (13) — and E = z (B, 1, 1, H), the diag(z) of (14)."""
    B, H = z.shape
    F_ih, F_hh = gru_gate_adjoints(mx.ones_like(z), h_prev, r, z, n, m)          # (13)
    return F_ih.reshape(B, 1, 3, H), F_hh.reshape(B, 1, 3, H), z[:, None, None, :]


@mx.compile
def lstm_factors(c_prev, i, f, g, o, tanh_c):
    """lstm: F = [S_h; S_c] (B, 2, 4, H) for both weights and E = [[0, κ f], [0, f]] (B, 2, 2, H), eqs. (12)–(13):
    the gate adjoints (5)–(8) of (h̄_t, c̄_t) = (1, 0), resp. (0, 1), and the c̄_{t-1} they carry."""
    B, H = f.shape
    one, zero = mx.ones_like(f), mx.zeros_like(f)
    S_h, kappa_f = lstm_gate_adjoints(one, zero, c_prev, i, f, g, o, tanh_c)     # (12) S_h, (13) κ f
    S_c, _ = lstm_gate_adjoints(zero, one, c_prev, i, f, g, o, tanh_c)           # (12) S_c (it carries f)
    F = mx.stack([S_h.reshape(B, 4, H), S_c.reshape(B, 4, H)], axis=1)
    E = mx.stack([mx.stack([zero, kappa_f], axis=1),                             # (13) h rows: [0, diag(κ f)]
                  mx.stack([zero, f], axis=1)], axis=1)                          # (13) c rows: [0, diag(f)]
    return F, F, E


@mx.compile
def _rnn_step_factors(pre_t, h_prev, W_hhT, b_hh, use_tanh):
    h = rnn_step(pre_t, h_prev, W_hhT, b_hh, use_tanh)                           # (1), (2)
    return (h,) + rnn_factors(h, use_tanh)


@mx.compile
def _gru_step_factors(gi_t, h_prev, W_hhT, b_hh):
    h, r, z, n, m = gru_step(gi_t, h_prev, W_hhT, b_hh)                           # (1)–(5)
    return (h,) + gru_factors(h_prev, r, z, n, m)


@mx.compile
def _lstm_step_factors(pre_t, h_prev, c_prev, W_hhT, b_hh):
    h, c, i, f, g, o, tanh_c = lstm_step(pre_t, h_prev, c_prev, W_hhT, b_hh)       # (1)–(4)
    return (h, c) + lstm_factors(c_prev, i, f, g, o, tanh_c)


class _Cell:
    """What a sweep needs of a cell: rows per unit R, its factor step, and its state (as the reference holds it)."""

    def __init__(self, name, params, x, state0, nonlinearity=None):
        self.name, self.params, self.module = name, params, CELLS[name]
        self.pre = project(x, params["weight_ih"], params["bias_ih"])           # input parts of (1), all t
        self.W_hhT = transposed(params["weight_hh"])
        self.R = self.module.STATE_ROWS
        self.state = state0
        self.use_tanh = nonlinearity == "tanh"

    def h_prev(self):
        return self.module.state_h(self.state)

    def step(self, t):
        """Advance the state to s_t; return the factors (F_ih, F_hh, E) of the step t."""
        p = self.params
        if self.name == "rnn":
            self.state, F_ih, F_hh, E = _rnn_step_factors(self.pre[t], self.state, self.W_hhT, p["bias_hh"],
                                                          self.use_tanh)
        elif self.name == "gru":
            self.state, F_ih, F_hh, E = _gru_step_factors(self.pre[t], self.state, self.W_hhT, p["bias_hh"])
        else:
            h, c, F_ih, F_hh, E = _lstm_step_factors(self.pre[t], self.state[0], self.state[1], self.W_hhT,
                                                     p["bias_hh"])
            self.state = LSTMState(h, c)
        return F_ih, F_hh, E


def _immediate(name, F_ih, F_hh, x_t, h_prev):
    """(factor, X) of parameter `name`: its row factors and the vector its rows multiply (ones for a bias)."""
    ones = mx.ones((x_t.shape[0], 1), dtype=x_t.dtype)
    return {"weight_ih": (F_ih, x_t), "bias_ih": (F_ih, ones), "weight_hh": (F_hh, h_prev),
            "bias_hh": (F_hh, ones)}[name]


# --------------------------------------------------------------------------------------------------- rtrl (r 3)

def dense_jacobian(F_hh, E, W_hh):
    """J_t (B, S, S) from the factors: [q=0] Σ_g diag(F_hh[:, r, g]) W_hG + diag(E[:, r, q])  (the cells' J)."""
    B, R, G, H = F_hh.shape
    eye = mx.eye(H, dtype=F_hh.dtype)
    J_h = mx.einsum("brgk,gkj->brkj", F_hh, W_hh.reshape(G, H, H))               # Σ_g diag(F) W_hG  (B, R, H, H)
    cols = [J_h + E[:, :, 0, :, None] * eye] + [E[:, :, q, :, None] * eye for q in range(1, R)]
    return mx.stack(cols, axis=3).reshape(B, R * H, R * H)                       # [b, rH+k, qH+j]


@mx.compile
def _dense_immediate(F, X):
    """P_t (B, S, G·H·X): P[b, rH+k, (gH+i)·X + j] = δ_ki F[b,r,g,k] X[b,j] (the cells' param_jacobian)."""
    B, R, G, H = F.shape
    diag = (F[..., None] * mx.eye(H, dtype=F.dtype)).transpose(0, 1, 3, 2, 4)   # [b, r, k, g, i] = δ_ki F
    P = diag.reshape(B, R * H, G * H)[..., None] * X[:, None, None, :]
    return P.reshape(B, R * H, -1)


@mx.compile
def _rtrl_update(J, S_prev, P, delta):
    """(r 3) S_t = J_t S_{t-1} + P_t, and (r 4) its gradient contribution δᵀ S_t[:, :H] (flattened)."""
    S = J @ S_prev + P
    B, H = delta.shape
    return S, (delta.reshape(1, B * H) @ S[:, :H].reshape(B * H, -1))[0]


def _rtrl(cell: _Cell, x, dh, carry, carry_out=True):
    """(r 3), (r 4) over the chunk from the carried dense traces → (grads, traces after it, None when not
    carry_out); the traces (B, S, P) with the parameter flattened (row-major: the reference's (B, S, *shape)
    reshaped, no copy)."""
    T, B, _ = x.shape
    p, H = cell.params, dh.shape[-1]
    if carry is None:
        traces = {k: mx.zeros((B, cell.R * H, v.size), dtype=v.dtype) for k, v in p.items()}   # S_{-1} = 0
    else:
        traces = {k: carry[k].reshape(B, cell.R * H, v.size).astype(v.dtype) for k, v in p.items()}
    grads = {k: mx.zeros((v.size,), dtype=v.dtype) for k, v in p.items()}
    for t in range(T):
        h_prev = cell.h_prev()
        F_ih, F_hh, E = cell.step(t)                                             # s_t and the factors of step t
        J = dense_jacobian(F_hh, E, p["weight_hh"])                              # (r 2)
        for k in p:
            F, X = _immediate(k, F_ih, F_hh, x[t], h_prev)
            traces[k], g = _rtrl_update(J, traces[k], _dense_immediate(F, X), dh[t])   # (r 3), (r 4)
            grads[k] = grads[k] + g
    return ({k: grads[k].reshape(v.shape) for k, v in p.items()},
            {k: traces[k].reshape((B, cell.R * H) + tuple(v.shape)) for k, v in p.items()}    # (B, S, *shape)
            if carry_out else None)


# -------------------------------------------------------------------------------------------- snap1, cec (r 9-16)

def unit_blocks(F_hh, E, W_hh, drop_h_column=False):
    """D_t[b,r,q,k] = J_t[b, rH+k, qH+k] (B, R, R, H), eq. (r 11), from the factors: the h column gets
    Σ_g F_hh[b,r,g,k] W_hh[gH+k, k]; drop_h_column (cec, r 15) leaves it out."""
    B, R, G, H = F_hh.shape
    if drop_h_column:
        return mx.concatenate([mx.zeros_like(E[:, :, :1]), E[:, :, 1:]], axis=2)                 # (r 15)
    W_kk = mx.diagonal(W_hh.reshape(G, H, H), axis1=1, axis2=2)                  # W_hh[gH+k, k]  (G, H)
    D_h = mx.sum(F_hh * W_kk, axis=2)                                            # (B, R, H)
    return mx.concatenate([E[:, :, :1] + D_h[:, :, None], E[:, :, 1:]], axis=2)  # (r 11)


@mx.compile
def _unit_update(D, T_prev, F, X, delta):
    """(r 11) T_t[b,r,g,k,·] = Σ_q D[b,r,q,k] T_{t-1}[b,q,g,k,·] + F[b,r,g,k] X[b,·]; (r 12) its gradient
    contribution Σ_b δ[b,k] T_t[b,0,g,k,·] (G, H, X)."""
    T = mx.sum(D[:, :, :, None, :, None] * T_prev[:, None], axis=2) + F[..., None] * X[:, None, None, None, :]
    return T, mx.sum(delta[:, None, :, None] * T[:, 0], axis=0)


def _snap1(cell: _Cell, x, dh, carry, drop_h_column=False, carry_out=True):
    """(r 11), (r 12) over the chunk from the carried unit traces → (grads, traces after it, None when not
    carry_out). Inside, a trace is (B, R, G, H, X) (X = 1 for a bias); the carry is the reference's (B, R, H, G, *X):
    one transpose in, one out."""
    T, B, _ = x.shape
    p, H, R = cell.params, dh.shape[-1], cell.R
    widths = {"weight_ih": x.shape[-1], "weight_hh": H, "bias_ih": 1, "bias_hh": 1}
    if carry is None:
        traces = {k: mx.zeros((B, R, v.shape[0] // H, H, widths[k]), dtype=v.dtype) for k, v in p.items()}   # (r 9)
    else:
        traces = {k: carry[k].reshape(B, R, H, v.shape[0] // H, widths[k]).transpose(0, 1, 3, 2, 4).astype(v.dtype)
                  for k, v in p.items()}
    grads = {k: mx.zeros(traces[k].shape[2:], dtype=v.dtype) for k, v in p.items()}
    for t in range(T):
        h_prev = cell.h_prev()
        F_ih, F_hh, E = cell.step(t)
        D = unit_blocks(F_hh, E, p["weight_hh"], drop_h_column)                  # (r 11) / (r 15)
        for k in p:
            F, X = _immediate(k, F_ih, F_hh, x[t], h_prev)
            traces[k], g = _unit_update(D, traces[k], F, X, dh[t])               # (r 11), (r 12)
            grads[k] = grads[k] + g
    return ({k: grads[k].reshape(v.shape) for k, v in p.items()},
            {k: traces[k].transpose(0, 1, 3, 2, 4).reshape((B, R, H, v.shape[0] // H) + tuple(v.shape[1:]))
             for k, v in p.items()}                                              # (B, R, H, G, *X)
            if carry_out else None)


# ---------------------------------------------------------------------------------------- truncated, spatial (r 13-14)

def _truncated(cell, forward_graph, backward_graph, params, x, state0, dh, recurrent, **options):
    """(r 13): the cell's forward, then its backward without the carry; (r 14) zeroes the recurrent term.
    → (grads, the state after the chunk)."""
    _, cache = forward_graph(params, x, state0, **options)
    grads = backward_graph(params, dh, cache, propagate=False, **options)
    out = {k: grads[k] for k in params}
    if not recurrent:
        for k in CELLS[cell].RECURRENT_PARAMS:                                   # (r 14) held constant
            out[k] = mx.zeros_like(params[k])
    return out, (LSTMState(cache.h[-1], cache.c[-1]) if cell == "lstm" else cache.h[-1])


# ------------------------------------------------------------------------------------------------------ kernels

_GRAPHS = {"rnn": (rnn_forward_graph, rnn_backward_graph), "gru": (gru_forward_graph, gru_backward_graph),
           "lstm": (lstm_forward_graph, lstm_backward_graph)}


def carry_shapes(rule, name, params, batch):
    """{param: shape} of the carry of rule `rule` on cell `name` — the reference's trace layouts (refimpl/algorithms/
    rtrl.py): "dense" (B, S, *shape) for rtrl, "unit" (B, R, H, G, *X) for snap1 and cec (truncated and spatial carry
    nothing)."""
    H, R = params["weight_hh"].shape[1], CELLS[name].STATE_ROWS
    if rule == "rtrl":
        return {k: (batch, R * H) + tuple(v.shape) for k, v in params.items()}
    return {k: (batch, R, H, v.shape[0] // H) + tuple(v.shape[1:]) for k, v in params.items()}


def _sweep(rule, name, params, x, state0, dh, carry, carry_out=True, **options):
    """The `rule` sweep of cell `name` over one chunk → {param: grad, "state", "carry"} (module docstring; "carry"
    None with carry_out=False)."""
    if rule in ("truncated", "spatial"):                                         # nothing carried (a carry passed
        fwd, bwd = _GRAPHS[name]                                                 # in is ignored, as the reference does)
        grads, state = _truncated(name, fwd, bwd, params, x, state0, dh, rule == "truncated", **options)
        return {**grads, "state": state, "carry": {} if carry_out else None}     # (r 13), (r 14)
    carry = checked_carry(carry, carry_shapes(rule, name, params, x.shape[1]), f"{name}.{rule}")
    if "nonlinearity" in options:
        check_nonlinearity(options["nonlinearity"])
    cell = _Cell(name, params, x, state0, options.get("nonlinearity"))
    if rule == "rtrl":
        grads, traces = _rtrl(cell, x, dh, carry, carry_out)
    else:
        grads, traces = _snap1(cell, x, dh, carry, drop_h_column=rule == "cec", carry_out=carry_out)
    return {**param_grads(params, grads), "state": cell.state, "carry": traces}


def _kernel(name, rule):
    """The registered kernel `name.rule`, with the reference's signature."""
    if name == "rnn":
        def sweep(params, x, h0, dh, carry=None, nonlinearity="tanh", *, carry_out=True):
            return _sweep(rule, "rnn", params, x, h0, dh, carry, carry_out, nonlinearity=nonlinearity)
    elif name == "gru":
        def sweep(params, x, h0, dh, carry=None, *, carry_out=True):
            return _sweep(rule, "gru", params, x, h0, dh, carry, carry_out)
    else:
        def sweep(params, x, state0, dh, carry=None, *, carry_out=True):
            return _sweep(rule, "lstm", params, x, LSTMState(*state0), dh, carry, carry_out)
    carried = "nothing ({})" if rule in ("truncated", "spatial") else "its traces in the reference's layout"
    sweep.__name__ = f"{name}_{rule}"
    sweep.__doc__ = (f"As kernel {name}.{rule}: (params, x (T,B,I), {CELLS[name].STATE_ARG}, dh (T,B,H), "
                     f"carry=None, *, carry_out=True) → {{param: grad, 'state', 'carry'}}: the {rule} sweep over one "
                     f"chunk from the carried state and traces (None: zero traces); it carries {carried} (module "
                     f"docstring), None with carry_out=False.")
    return kernel(sweep)


KERNELS = {f"{name}.{rule}": _kernel(name, rule)
           for name, rules in (("rnn", ("rtrl", "snap1", "truncated", "spatial")),
                               ("gru", ("rtrl", "snap1", "truncated", "spatial")),
                               ("lstm", ("rtrl", "snap1", "truncated", "spatial", "cec")))
           for rule in rules}
