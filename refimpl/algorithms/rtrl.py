r"""The RTRL family, cell by cell: exact RTRL, SnAp-1, 1-step truncation, spatial, and the LSTM's CEC truncation.

Truly online: each rule carries a *sensitivity* (eligibility trace) S_t = ∂s_t/∂θ forward in time, one step at a time,
and turns the instantaneous error δ_t of the cell state into a gradient contribution at once — memory independent of T.
The derivation, the exactness arguments and the memory/time table are docs/derivations/rtrl.md (same numbering).

Shapes: B batch, T time, I input width, H hidden units, S state size (H; 2H for the lstm, rows [h; c]), N complex
state units of the lru, G gate blocks of a weight (rnn 1, gru 3, lstm 4), R state rows per unit (1; 2 for the lstm's
(h_k, c_k)), X the trailing shape of a weight row ((I,) for weight_ih, (H,) for weight_hh, () for a bias).
The cells' own Jacobians come from the cell modules (`state_jacobian`, `param_jacobian`); nothing is re-derived here.

    (1)  s_t = F(s_{t-1}, x_t; θ)                                     the cell step; δ_t = ∂ℓ_t/∂s_t (instantaneous)
    (2)  J_t = ∂s_t/∂s_{t-1}  (B, S, S)        P_t = ∂s_t/∂θ with s_{t-1} held fixed  (B, S, *shape)
    (3)  rtrl        S_t = J_t S_{t-1} + P_t,   S_{-1} = 0                             (exact: equals BPTT, (5)–(6))
    (4)  gradient    ∂L/∂θ = Σ_t g_t,   g_t = Σ_b Σ_k Re(conj(S_t[b, k, …]) δ_t[b, k])   (k over h: the lstm's c
                     has no readout)
    (7)  complex     for a real p and a complex state, ∂ℓ/∂p = Re(conj(∂s/∂p) δ)  (DESIGN.md §4)
    (8)  lru         S_t = λ ⊙ S_{t-1} + P_t  on the compact diagonal traces: c(B, N) for nu_log, theta_log,
                     gamma_log and c(B, N, I) for B_re, B_im  (J = diag(λ): exact, and snap1 = rtrl)
    (9)  snap1 mask  M[r·H + k, g·H + i, …] = [k = i]: unit k keeps only its sensitivity to the rows g·H + k that feed
                     it; compact trace T[b, r, k, g, …] = S[b, r·H + k, g·H + k, …]   (B, R, H, G, *X)
    (10) snap1       S̃_t = M ⊙ (J_t S̃_{t-1} + P_t)
    (11)             ⇔ T_t[b, :, k] = D_t[b, k] T_{t-1}[b, :, k] + P̂_t[b, :, k],   D_t[b, k, r, q] = J_t[b, rH+k, qH+k]
                     (the diagonal of J_t; for the lstm its per-unit 2×2 blocks)
    (12)             g_t[g·H + k, …] = Σ_b δ_t[b, k] T_t[b, 0, k, g, …]                         (row 0 = h)
    (13) truncated   S_t = P_t                                           (s_{t-1} held constant: the detached graph)
    (14) spatial     (13) with the recurrent term held constant: weight_hh, bias_hh (lru: nu_log, theta_log) get 0
    (15) cec (lstm)  h_{t-1} held constant where it enters the gates: J_t^cec = J_t with its h_{t-1} columns zeroed,
                     per unit D_t^cec[k] = [[0, κ_k f_k], [0, f_k]]  (κ = ∂h_t/∂c_t = o ⊙ (1 − tanh² c_t))
    (16)             so (11) is exact for it:  ε_t = f ⊙ ε_{t-1} + P̂^c_t  (c rows),   S^h_t = κ ⊙ f ⊙ ε_{t-1} + P̂^h_t

Trace layouts (opaque to callers; `Traces.layout`):
    "dense"  rtrl on rnn/gru/lstm: {name: (B, S, *shape)} — the full sensitivity, O(S·#params) memory.
    "unit"   snap1, truncated, spatial, cec on rnn/gru/lstm: {name: (B, R', H, G, *X)} — O(#params) memory; R' = R for
             snap1 and cec, R' = 1 (the h rows only: nothing is carried, and δ reads h) for truncated and spatial.
    "diag"   every rule on the lru: {name: (B, *shape)} complex — O(#params) memory.
Spatial keeps no trace for the parameters it holds constant; trace_grads returns exact zeros for them.

NOTE (immediate Jacobian): the "unit" layouts take P̂_t by gathering the pattern (9) out of the cell's *dense*
`param_jacobian` (B, S, *shape). The carried traces are compact, but each step briefly allocates the dense O(S·#params)
immediate Jacobian (and calls step_forward three times: in state_jacobian, param_jacobian and the caller's step). That
is the price of reusing the cells' tested Jacobians; a fast kernel computes P̂_t from the per-unit factors directly
(eqs. (8), (15), (14) of rnn.py, gru.py, lstm.py), in O(#params) per step.

NOTE (snap1 on the lstm): the pattern (9) is the *unit* pattern of DESIGN.md §5 — unit k is the pair (h_k, c_k) and
keeps its sensitivity to every parameter row g·H + k, including the c_k row of the output gate. That entry is
structurally zero in P_t (o does not enter c_t) but becomes non-zero through the block entry ∂c_k/∂h_k; a strictly
entry-wise mask of P_t would drop it. We keep it (the unit is the pair); docs/derivations/rtrl.md §3.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..cells.common import add_into
from ..errors import ShapeError, UnknownNameError, UnsupportedError

RULES = ("rtrl", "snap1", "truncated", "spatial", "cec")

#: The RTRL-family algorithms (refimpl/algorithms/__init__.py) → the rule each layer runs — the one such table. `online`
#: is exact RTRL in every layer; on a model, `rtrl` is the whole-stack sensitivity where that differs (online.py).
LAYER_RULE = {"rtrl": "rtrl", "online": "rtrl", "snap1": "snap1", "truncated": "truncated", "spatial": "spatial",
              "cec": "cec"}


def sweep_rule(rule: str, cell) -> str:
    """The sweep that runs `rule` on `cell`: `rule` itself, but rtrl for snap1 on a diagonal cell (the lru: SnAp-1's
    pattern is the whole diagonal Jacobian there, so it is exact RTRL)."""
    return "rtrl" if rule == "snap1" and cell.diagonal else rule


class Traces(NamedTuple):
    """The carried sensitivities of one cell under one rule. Opaque to callers: build with init_traces, advance with
    update_traces, read with trace_grads."""
    rule: str        # one of RULES
    layout: str      # "dense" | "unit" | "diag" (module docstring)
    sens: dict       # {param name: array}; a parameter held constant (spatial) has no entry


# ---------------------------------------------------------------------------------------------------------------------
# Validation and layouts


def check_rule(rule: str, cell) -> None:
    """Refuse an unknown rule, and cec on a cell whose state is h alone (the one refusal of cec, on every backend)."""
    if rule not in RULES:
        raise UnknownNameError("RTRL-family rule", rule, RULES,
                               "rtrl is exact; snap1, truncated, spatial approximate it; cec is the lstm's truncation")
    if rule == "cec" and cell.state_rows == 1:
        better = "rtrl (exact and cheap for the diagonal lru)" if cell.diagonal else "snap1 or truncated"
        raise UnsupportedError(
            f"rule 'cec' is only defined for the lstm: it truncates the gradient where h_{{t-1}} enters the gates but "
            f"keeps the self-connection c_t = f ⊙ c_{{t-1}} + i ⊙ g of a cell state that the lstm only has; the "
            f"{cell.name} cell has no separate cell state c, so use {better} instead")


def _layout(rule: str, cell) -> str:
    if cell.diagonal:
        return "diag"                          # (8) every rule; snap1 is rtrl here (J is diagonal)
    return "dense" if rule == "rtrl" else "unit"


def _trace_shapes(rule: str, cell, batch: int) -> dict:
    """{param name: (shape, dtype)} of the carried traces (module docstring, 'Trace layouts')."""
    check_rule(rule, cell)
    layout, H = _layout(rule, cell), cell.n_hidden
    held = cell.recurrent_params if rule == "spatial" else ()
    shapes = {}
    for name, shape in cell.param_shapes.items():
        if name in held:
            continue                                                        # (14) no trace: zero gradient
        if layout == "diag":
            shapes[name] = ((batch,) + tuple(shape), cell.state_dtype)      # (8)  c(B, N) or c(B, N, I)
        elif layout == "dense":
            shapes[name] = ((batch, cell.state_size) + tuple(shape), cell.dtype)          # (3)  (B, S, *shape)
        else:
            rows = cell.state_rows if rule in ("snap1", "cec") else 1
            G = shape[0] // H
            shapes[name] = ((batch, rows, H, G) + tuple(shape[1:]), cell.dtype)   # (9)  (B, R', H, G, *X)
    return shapes


def _check_traces(rule: str, cell, traces) -> None:
    if not isinstance(traces, Traces) or traces.rule != rule or traces.layout != _layout(rule, cell):
        got = f"traces of rule {traces.rule!r}" if isinstance(traces, Traces) else f"a {type(traces).__name__}"
        raise UnsupportedError(f"update_traces/trace_grads for rule {rule!r} on a {cell.name} cell got {got}; "
                               f"pass the traces that init_traces({rule!r}, …) returned for this cell")


# ---------------------------------------------------------------------------------------------------------------------
# The public functions


def init_traces(rule: str, cell, params: dict, batch: int) -> Traces:
    """S_{-1} = 0: the initial state is an input, it does not depend on θ (eqs. (3), (8), (11), (13)).

    Args:
        rule: one of RULES ('cec' only for the lstm; 'snap1' on the lru is an alias of 'rtrl', which is exact there).
        cell: a refimpl.cells.Cell.
        params: the cell's parameters (only their names are used).
        batch: B.
    Returns:
        Traces (zeros in the layout of the rule; module docstring).
    """
    shapes = _trace_shapes(rule, cell, batch)
    return Traces(rule=rule, layout=_layout(rule, cell),
                  sens={name: np.zeros(shape, dtype=dtype) for name, (shape, dtype) in shapes.items()})


def _unit_pattern(dense: np.ndarray, R: int, H: int) -> np.ndarray:
    """Gather the SnAp-1 pattern (9) out of a dense (B, R·H, G·H, *X) array: [b, r, k, g, …] = [b, rH+k, gH+k, …]."""
    B, S, GH = dense.shape[:3]
    blocks = dense.reshape((B, R, H, GH // H, H) + dense.shape[3:])        # [b, r, k, g, i, …]
    return np.einsum("brkgk...->brkg...", blocks).copy()                   # (9)  i = k; a copy, not a view of `dense`


def _unit_blocks(J: np.ndarray, R: int, H: int) -> np.ndarray:
    """D_t[b, k, r, q] = J_t[b, rH+k, qH+k], eq. (11): the diagonal of J (R = 1) or its per-unit 2×2 blocks (lstm)."""
    B = J.shape[0]
    return np.einsum("brkqk->bkrq", J.reshape(B, R, H, R, H)).copy()     # (11) (B, H, R, R)


def update_traces(rule: str, cell, params: dict, traces: Traces, x_t: np.ndarray, state_prev) -> Traces:
    """Advance the sensitivities one step: S_t from S_{t-1}. Pure: returns new Traces, mutates nothing.

    Args:
        rule: one of RULES.
        cell: a refimpl.cells.Cell.
        params: the cell's parameters.
        traces: S_{t-1}, from init_traces or the previous update_traces.
        x_t: the cell's input at step t (B, I).
        state_prev: the cell state before the step: h (B, H); LSTMState(h, c) for the lstm; c(B, N) for the lru.
    Returns:
        Traces holding S_t.
    """
    check_rule(rule, cell)
    _check_traces(rule, cell, traces)
    mod, opts, H = cell.module, cell.step_options, cell.n_hidden
    P = mod.param_jacobian(params, x_t, state_prev, **opts)               # (2)  immediate ∂s_t/∂θ
    new = {}

    if traces.layout == "diag":                                            # lru: every rule, compact diagonal
        lam = mod.state_jacobian(params, x_t, state_prev, **opts)          # (2)  J_t = diag(λ), c(B, N)
        for name, S_prev in traces.sens.items():
            if rule in ("truncated", "spatial"):
                new[name] = P[name]                                        # (13), (14)
            else:                                                          # rtrl, snap1 (= rtrl: J is diagonal)
                lam_b = lam.reshape(lam.shape + (1,) * (S_prev.ndim - 2))  # broadcast over B_re/B_im's input axis
                new[name] = lam_b * S_prev + P[name]                       # (8)

    elif traces.layout == "dense":                                         # rtrl on rnn/gru/lstm
        J = mod.state_jacobian(params, x_t, state_prev, **opts)            # (2)  (B, S, S)
        for name, S_prev in traces.sens.items():
            B, S = S_prev.shape[:2]
            JS = (J @ S_prev.reshape(B, S, -1)).reshape(S_prev.shape)      # (3)  J_t S_{t-1}
            new[name] = JS + P[name]                                       # (3)

    else:                                                                  # "unit": snap1, cec, truncated, spatial
        R = cell.state_rows
        if rule in ("snap1", "cec"):
            D = _unit_blocks(mod.state_jacobian(params, x_t, state_prev, **opts), R, H)     # (11) (B, H, R, R)
            if rule == "cec":
                D = D * np.array([0.0, 1.0], dtype=D.dtype)               # (15) drop the h_{t-1} column
        for name, S_prev in traces.sens.items():
            P_unit = _unit_pattern(P[name], R, H)                          # (9)  (B, R, H, G, *X)
            if rule in ("truncated", "spatial"):
                new[name] = P_unit[:, :1].copy()                           # (13), (14) the h rows; nothing carried
            else:
                T_prev = S_prev.reshape(S_prev.shape[:3] + (-1,))          # (B, R, H, G·X)
                DT = np.einsum("bkrq,bqkm->brkm", D, T_prev).reshape(S_prev.shape)   # (11) D_t T_{t-1}; (16) for cec
                new[name] = DT + P_unit                                    # (11), (16)

    dtypes = {name: dtype for name, (_, dtype) in _trace_shapes(rule, cell, x_t.shape[0]).items()}
    return Traces(rule=rule, layout=traces.layout,
                  sens={name: S.astype(dtypes[name], copy=False) for name, S in new.items()})


def trace_grads(rule: str, cell, params: dict, traces: Traces, delta_t: np.ndarray) -> dict:
    """The gradient contribution at step t, g_t = Σ_b Σ_k Re(conj(S_t[b, k, …]) δ_t[b, k]), eqs. (4), (7), (12).

    Args:
        rule: one of RULES.
        cell: a refimpl.cells.Cell.
        params: the cell's parameters.
        traces: S_t (after update_traces for step t).
        delta_t: the instantaneous error of the state at step t: (B, H) real — the lstm's error on h only —
            or c(B, N) for the lru (adjoint convention of DESIGN.md §4).
    Returns:
        {param name: array of the param's shape and dtype}; exact zeros for what `spatial` holds constant.
    """
    check_rule(rule, cell)
    _check_traces(rule, cell, traces)
    H = cell.n_hidden
    if delta_t.ndim != 2 or delta_t.shape[1] != H:
        raise ShapeError(f"delta_t has shape {delta_t.shape}; expected (B, {H}): the instantaneous error of the "
                         f"{cell.name} cell's h (not the rest of its state) at one step")
    grads = {}
    for name, p in params.items():
        if name not in traces.sens:
            grads[name] = np.zeros_like(p)                                                  # (14) held constant
            continue
        S = traces.sens[name]
        if traces.layout == "dense":
            g = np.einsum("bk...,bk->...", S[:, :H], delta_t)                               # (4) rows of h
        elif traces.layout == "unit":
            g = np.einsum("bkg...,bk->gk...", S[:, 0], delta_t).reshape(p.shape)            # (12) row gH+k
        else:
            g = np.real(np.einsum("bk...,bk->k...", np.conj(S), delta_t))                   # (4), (7) lru
        grads[name] = g.astype(p.dtype, copy=False)
    return grads


def carry_of(traces: Traces) -> dict:
    """What a chunk of a stream hands to the next (DESIGN.md §5): the traces' arrays {param name: S_t} in the layout of
    the rule (module docstring) — nothing ({}) for truncated and spatial, which carry no sensitivity (13), (14)."""
    return {} if traces.rule in ("truncated", "spatial") else dict(traces.sens)


def traces_from_carry(rule: str, cell, params: dict, batch: int, carry: dict | None) -> Traces:
    """The Traces a chunk starts from: S_{-1} = 0 for carry None (the start of a stream), else the carried arrays
    (checked against the rule's layout: names, shapes, dtypes)."""
    traces = init_traces(rule, cell, params, batch)
    if carry is None or rule in ("truncated", "spatial"):
        return traces
    if set(carry) != set(traces.sens):
        raise ShapeError(f"the carried traces of rule {rule!r} on a {cell.name} cell name {sorted(carry)}; expected "
                         f"{sorted(traces.sens)}: pass the 'carry' the previous chunk's sweep returned")
    for name, S0 in traces.sens.items():
        if np.shape(carry[name]) != S0.shape:
            raise ShapeError(f"the carried trace {name!r} has shape {np.shape(carry[name])}; expected {S0.shape} "
                             f"(rule {rule!r}, {cell.name} cell, batch {batch}): pass the previous chunk's 'carry'")
    return Traces(rule=rule, layout=traces.layout,
                  sens={name: np.asarray(carry[name]).astype(S0.dtype, copy=False) for name, S0 in traces.sens.items()})


def sweep(rule: str, cell, params: dict, x: np.ndarray, dh: np.ndarray, state0, carry: dict | None = None, *,
          carry_out: bool = True):
    """The online loop over one chunk of a stream (or a whole sequence), memory independent of its length: the
    sensitivities and the state are carried in and handed back, so a stream cut into chunks of any size C gives the
    gradients of one uncut sweep (only the order of the sums changes).

    Args:
        rule: one of RULES.
        cell: a refimpl.cells.Cell.
        params: the cell's parameters.
        x: inputs of the chunk (C, B, I).
        dh: instantaneous adjoints of the chunk (C, B, H) — of h for the lstm; c(C, B, N) for the lru.
        state0: the state before the chunk (h0 (B, H); LSTMState(h0, c0); c(B, N)).
        carry: the traces before the chunk, as the previous chunk returned them (carry_of); None: S_{-1} = 0.
        carry_out: hand the carry after the chunk on (True); False (the last chunk of a stream, whose carry nobody
            reads) gives None in its place and builds nothing for it — the grads and the state are the same.
    Returns:
        (grads {param name: Σ_t g_t over the chunk, eq. (4)}, the state after the chunk, the carry after the chunk
        or None).
    """
    traces = traces_from_carry(rule, cell, params, x.shape[1], carry)
    grads = {name: np.zeros_like(p) for name, p in params.items()}
    state = state0
    for t in range(x.shape[0]):
        traces = update_traces(rule, cell, params, traces, x[t], state)   # S_t from S_{t-1} and s_{t-1}
        state, _ = cell.module.step_forward(params, x[t], state, **cell.step_options)   # s_t; the cache is dropped
        add_into(grads, trace_grads(rule, cell, params, traces, dh[t]))   # (4)  Σ_t g_t
    return grads, state, (carry_of(traces) if carry_out else None)


def cell_grads_online(rule: str, cell, params: dict, x: np.ndarray, dh: np.ndarray, state0) -> dict:
    """Whole-sequence convenience: `sweep` from S_{-1} = 0 over the whole sequence; the gradients alone.

    Args:
        rule: one of RULES.
        cell: a refimpl.cells.Cell.
        params: the cell's parameters.
        x: inputs (T, B, I).
        dh: instantaneous adjoints (T, B, H) — of h for the lstm; c(T, B, N) for the lru.
        state0: the initial state (h0 (B, H); LSTMState(h0, c0); c(B, N)).
    Returns:
        {param name: gradient (param's shape and dtype)} — Σ_t g_t, eq. (4).
    """
    return sweep(rule, cell, params, x, dh, state0)[0]


def trace_nbytes(rule: str, cell, batch: int) -> int:
    """Bytes the carried traces take for a batch of `batch` (independent of T; docs/derivations/rtrl.md §7)."""
    return int(sum(int(np.prod(shape)) * np.dtype(dtype).itemsize
                   for shape, dtype in _trace_shapes(rule, cell, batch).values()))
