r"""The RTRL family on a model stack, truly online: one time step at a time, memory independent of T.

Per step t (nothing of earlier steps is kept but the states, the running-mean sum, the sensitivities and the
accumulated gradients; docs/derivations/rtrl.md has the derivation, refimpl/algorithms/rtrl.py the per-cell rules):

    (1) forward one step:   for l = 0 … L−1:  a^l = LN(u^l);  s^l_t = cell_step(s^l_{t−1}, a^l);
                            u^{l+1} = u^l + FFN(y^l) (residual) or FFN(y^l),  y^l = Re(C h^l) + D ⊙ a^l (lru) or h^l
    (2) head:               p_t = u^L_t (pooling none) or the running mean (cumulative_mean, straight-through);
                            ŷ_t = p_t W_rᵀ + b_r;   l_t and ∂l_t/∂ŷ_t from the loss at step t (its mask weight m_t)
    (3) backward within step t (`stack_step_backward`): the adjoint of ŷ_t goes down the stack *inside step t*;
        at each layer it reaches the cell state h^l_t — that is the instantaneous error δ^l_t.
    (4) sensitivities and gradient: S_t from S_{t−1}, and g += Σ δ_tᵀ S_t.

Two ways to combine (3) and (4):

  per layer — `online`, `snap1`, `truncated`, `spatial`, `cec` (refimpl/algorithms/rtrl.py rules):
      (3) runs *through* the cells' immediate dependence on their inputs (spatial backprop), giving δ^l_t for every
      layer and the gradient of every non-cell parameter; each layer keeps the sensitivity of its own state to its own
      cell parameters only. Exact for a one-layer model with nothing trainable below the cell, and for the top layer's
      cell parameters and everything above them; below that the path "h^l_t → upper layers' future states" is missing.
  whole stack — `rtrl`:
      the stack is one recurrent system with state s_t = (s^0_t, …, s^{L−1}_t). (3) stops at the cells
      (`through_cells=False`): δ^l_t = ∂l_t/∂s^l_t along paths that do not enter a cell, plus the direct gradient of
      every parameter with the states held fixed. The sensitivity R_t = ds_t/dθ of the whole state with respect to every
      parameter that can influence a state obeys R_t = J_t R_{t−1} + P_t, where row k of [J_t | P_t] is one backward pass
      of the step from a unit adjoint on state unit k (`stack_step_backward` *through* the cells, down every layer).
      Exact for everything; O(S_total · P) memory and S_total backward passes per step: refused when too big.
      For a one-layer model with nothing trainable below its cell it is the same as the per-layer rule, and uses the
      cell's cheap form (the diagonal traces of the lru).

Complex (lru) states enter the whole-stack sensitivity as real pairs (Re h, Im h): with the convention of DESIGN.md
§4 a unit adjoint on Re h_k (or Im h_k) returns the real rows ∂Re h_k/∂θ (∂Im h_k/∂θ), and δ = ∂L/∂Re h + i ∂L/∂Im h
pairs with them as Re δ · R_re + Im δ · R_im.

Pooling: `none` and `cumulative_mean` (a causal running mean, straight-through: identity backward) keep the loss
memoryless; `last` (no mask) is a loss at the last step only. `mean` is refused: its gradient at step t depends on the
whole sequence.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import rtrl
from ..cells.common import add_into
from ..errors import UnsupportedError
from ..nn.layers import (FFN_BACKWARD, FFN_FORWARD, ffn_shapes, layer_norm_backward, layer_norm_forward,
                     linear_backward, linear_forward, lru_output_backward, lru_output_forward)
from ..nn.losses import loss_forward

#: Refuse a whole-stack RTRL whose sensitivity would take more than this many bytes (override with max_bytes=).
RTRL_MAX_BYTES = 2 * 2**30

#: Per-layer rules by algorithm name (refimpl/algorithms/rtrl.py); `rtrl` itself is the whole-stack rule.
PER_LAYER_RULE = {"online": "rtrl", "snap1": "snap1", "truncated": "truncated", "spatial": "spatial", "cec": "cec"}


class LayerStep(NamedTuple):
    """What one layer's step backward needs."""
    norm: object            # LayerNormCache or None
    a: np.ndarray           # the cell's input at step t (B, d)
    state_prev: object      # the cell state before the step
    cell: NamedTuple        # the cell's per-step cache
    out_map: object         # LRUOutputCache or None
    ffn: object             # MLPCache / GLUCache or None


def _sub(params: dict, prefix: str, names) -> dict:
    return {k: params[f"{prefix}.{k}"] for k in names}


def _h(state):
    """The part of a cell state that the layer outputs: h (the lstm's h of (h, c))."""
    return state[0] if isinstance(state, tuple) else state


def check_supported(model, mask) -> None:
    if model.pooling == "mean":
        raise UnsupportedError("pooling 'mean' is not memoryless (its gradient at step t depends on the whole "
                               "sequence), so the online algorithms cannot use it; use pooling 'cumulative_mean' "
                               "(causal, straight-through) or 'none', or algorithm 'bptt'")
    if model.pooling == "last" and mask is not None:
        raise UnsupportedError("pooling 'last' with a mask (per-sequence last steps) is not supported by the online "
                               "algorithms; pass mask=None, or use pooling 'none' with the mask, or 'bptt'")


# ----------------------------------------------------------------------------------------------------------------
# One step of the stack, forward and backward

def stack_step_forward(model, params, x_t, states, kernels=None):
    """(1): x_t (B, I), states [s^l_{t−1}] → (u^L_t (B, d_L), new states, caches (encoder, [LayerStep]))."""
    u, enc = x_t, None
    if model.encoder:
        u, enc = linear_forward(x_t, params["encoder.weight"], params["encoder.bias"])
    new_states, layers = [], []
    for l, c in enumerate(model.cells):
        pre = f"layers.{l}"
        a, norm = u, None
        if model.norm == "layer":
            a, norm = layer_norm_forward(u, params[f"{pre}.norm.weight"], params[f"{pre}.norm.bias"])
        cell_params = _sub(params, f"{pre}.cell", c.param_shapes)
        state, cell_cache = c.module.step_forward(cell_params, a, states[l], **c.step_options)
        y, out_map = _h(state), None
        if c.name == "lru":
            y, out_map = lru_output_forward(_sub(params, pre, ("C_re", "C_im", "D")), _h(state), a)
        f, ffn = y, None
        if model.ffn is not None:
            f, ffn = FFN_FORWARD[model.ffn](_sub(params, f"{pre}.ffn", ffn_shapes(model.ffn, y.shape[-1],
                                                                                   model.ffn_mult)), y)
        u = u + f if model.residual else f
        new_states.append(state)
        layers.append(LayerStep(norm, a, states[l], cell_cache, out_map, ffn))
    return u, new_states, (enc, layers)


def _zero_state_adjoint(c, state):
    return type(state)(*(np.zeros_like(s) for s in state)) if isinstance(state, tuple) else np.zeros_like(state)


def _add_h(c, dstate, dh):
    """Add an adjoint of h to a state adjoint (the lstm's (dh, dc) pair, or h̄ itself)."""
    return type(dstate)(dstate[0] + dh, *dstate[1:]) if isinstance(dstate, tuple) else dstate + dh


def stack_step_backward(model, params, caches, du_top, dstates=None, *, through_cells=True, totals=None,
                        stop_at=None):
    """(3): the backward pass of one step.

    Args:
        caches: from stack_step_forward.  du_top: adjoint of u^L_t (B, d_L), or None for zero.
        dstates: per layer, an extra adjoint on the new state s^l_t (None = zeros).
        through_cells: True — the adjoint reaching a cell state goes through the cell's step backward to its input,
            its parameters (the immediate gradient) and its previous state; False — it stops at the state.
        totals: per layer, None or the *total* adjoint of s^l_t to send through the cell instead of what arrived
            within the step (FPTT knows the total; the within-step part is still returned in `deltas`).
        stop_at: a layer index: record its delta and stop there (nothing below it is computed).
    Returns:
        (grads {dotted name: …} of this step, deltas [adjoint reaching s^l_t, per layer],
         dstates_prev [adjoint of s^l_{t−1}, per layer; None when through_cells=False]).
    """
    enc, layers = caches
    grads, deltas, dprev = {}, [None] * model.layers, [None] * model.layers
    du = du_top
    for l in reversed(range(model.layers)):
        c, step, pre = model.cells[l], layers[l], f"layers.{l}"
        dstate = dstates[l] if dstates is not None else _zero_state_adjoint(c, step.state_prev)
        du_below = None
        if du is not None:
            dy = du
            if model.ffn is not None:
                g = FFN_BACKWARD[model.ffn](du, step.ffn)
                dy = g.pop("x")
                add_into_new(grads, f"{pre}.ffn", g)
            dh, da = dy, None
            if c.name == "lru":
                g = lru_output_backward(dy, step.out_map)
                dh, da = g.pop("h"), g.pop("x")
                add_into_new(grads, pre, g)
            dstate = _add_h(c, dstate, dh)
            du_below = du if model.residual else None
        else:
            da = None
        deltas[l] = dstate
        if l == stop_at:
            break
        if through_cells:
            cell_params = _sub(params, f"{pre}.cell", c.param_shapes)
            total = totals[l] if totals is not None and totals[l] is not None else dstate
            g, dx, dprev[l] = c.module.step_backward(cell_params, total, step.cell, **c.step_options)
            add_into_new(grads, f"{pre}.cell", g)
            da = dx if da is None else da + dx
        if da is not None and model.norm == "layer":
            g = layer_norm_backward(da, step.norm)
            da = g.pop("x")
            add_into_new(grads, f"{pre}.norm", g)
        if da is not None:
            du_below = da if du_below is None else du_below + da
        du = du_below
    if model.encoder and du is not None and stop_at is None:
        g = linear_backward(du, enc)
        add_into_new(grads, "encoder", {"weight": g["weight"], "bias": g["bias"]})
        du = g["x"]
    if du is not None and stop_at is None:
        grads["x"] = du                                 # the adjoint of x_t along paths inside the step
    return grads, deltas, (dprev if through_cells else None)


def add_into_new(total: dict, prefix: str, part: dict) -> None:
    """total[prefix.k] += part[k], creating entries as needed."""
    for k, v in part.items():
        key = f"{prefix}.{k}"
        total[key] = total[key] + v if key in total else v


def head_loss(model, params, u, t: int, T: int, y, loss: str, mask, run_sum):
    """(2) at step t: pooling (the running mean is straight-through), readout, the loss at step t and its adjoint.

    Returns (run_sum, loss value at t, readout gradients or None, ∂l_t/∂ŷ_t (B, O) or None, du_top = the adjoint of
    u^L_t or None) — the Nones when step t has no loss (pooling 'last' before the last step)."""
    if model.pooling == "cumulative_mean":
        run_sum = u if run_sum is None else run_sum + u
        p = run_sum / (t + 1)
    else:
        p = u
    if model.pooling == "last" and t < T - 1:
        return run_sum, 0.0, None, None, None
    out, head = linear_forward(p, params["readout.weight"], params["readout.bias"])
    if model.per_step:
        m_t = None if mask is None else np.asarray(mask)[t:t + 1]
        value, dout = loss_forward(loss, out[None], y[t:t + 1], m_t)
        dout = dout[0]
    else:
        value, dout = loss_forward(loss, out, y, None)
    g = linear_backward(dout, head)
    return run_sum, float(value), {"weight": g["weight"], "bias": g["bias"]}, dout, g["x"]   # identity through pooling


def head_step(model, params, u, t: int, T: int, y, loss: str, mask, run_sum):
    """head_loss without the loss adjoint: (run_sum, loss value at t, readout gradients or None, du_top or None)."""
    run_sum, value, g_head, _, du_top = head_loss(model, params, u, t, T, y, loss, mask, run_sum)
    return run_sum, value, g_head, du_top


# ----------------------------------------------------------------------------------------------------------------
# The driver

def _state_influencing(model, params) -> list[str]:
    """Parameters that can change a cell state: all but the readout and what sits above the top cell."""
    top = f"layers.{model.layers - 1}."
    above_top = ("C_re", "C_im", "D", "ffn.")
    return [k for k in params if not k.startswith("readout.")
            and not (k.startswith(top) and k[len(top):].startswith(above_top))]


def _real_units(c, state) -> list:
    """The real state units of one layer as (part, index) pairs: h (and c) of real cells; Re/Im of lru states."""
    H = c.n_hidden
    if c.name == "lstm":
        return [("h", k) for k in range(H)] + [("c", k) for k in range(H)]
    if c.name == "lru":
        return [("re", k) for k in range(H)] + [("im", k) for k in range(H)]
    return [("h", k) for k in range(H)]


def _unit_adjoint(c, state, part, k, B):
    """The state adjoint that selects one real unit (for every batch element)."""
    d = _zero_state_adjoint(c, state)
    if c.name == "lstm":
        arr = (d.h if part == "h" else d.c).copy()
        arr[:, k] = 1.0
        return type(d)(arr, d.c) if part == "h" else type(d)(d.h, arr)
    d = d.copy()
    d[:, k] = 1.0 if part in ("h", "re") else 1j
    return d


def _flat_real(c, dstate):
    """A state adjoint as real numbers per real unit, in _real_units order (B, S_real)."""
    if c.name == "lstm":
        return np.concatenate([dstate.h, dstate.c], axis=-1)
    if c.name == "lru":
        return np.concatenate([np.real(dstate), np.imag(dstate)], axis=-1)
    return dstate


def _whole_stack_bytes(model, params, B) -> int:
    S = sum(len(_real_units(c, None)) for c in model.cells)
    P = sum(params[k].size for k in _state_influencing(model, params))
    return int(B * S * P * params["readout.weight"].itemsize)


def online_grads(model, params, x, y, loss, mask=None, *, algorithm="online", kernels=None,
                 max_bytes: int | None = None, update_every: int | None = None, on_update=None):
    """Loss and gradients of `model` by an RTRL-family algorithm, run step by step (see module doc).

    Truly online training: with update_every=k, after every k steps (before the sequence ends) the gradient
    accumulated since the last update is handed to on_update(grads) -> new params, which the rest of the sequence
    then uses; the traces carry on (they are not reset: the usual online-RTRL approximation once weights move).
    Returns (loss_value, grads) with a gradient for every parameter (no "x": forward-mode methods give no input
    gradients) — with update_every, the gradient since the last update.
    """
    check_supported(model, mask)
    if algorithm != "rtrl" and algorithm not in PER_LAYER_RULE:
        raise UnsupportedError(f"{algorithm!r} is not an RTRL-family algorithm")
    whole = algorithm == "rtrl" and not (model.layers == 1 and not model.encoder and model.norm is None)
    if update_every is not None and whole:
        raise UnsupportedError("update_every with whole-stack rtrl is not supported (its sequences run one after "
                               "another); use algorithm 'online' (per-layer RTRL) for truly online updates")
    if not whole:
        return _run(model, params, x, y, loss, mask, rule="rtrl" if algorithm == "rtrl" else
                    PER_LAYER_RULE[algorithm], whole=False, update_every=update_every, on_update=on_update)
    B = x.shape[1]
    need = _whole_stack_bytes(model, params, 1)
    limit = RTRL_MAX_BYTES if max_bytes is None else max_bytes
    if need > limit:
        raise UnsupportedError(f"whole-stack rtrl would keep a sensitivity of {need / 2**20:.0f} MiB per sequence "
                               f"({sum(len(_real_units(c, None)) for c in model.cells)} real state units × "
                               f"{sum(params[k].size for k in _state_influencing(model, params))} parameters), over "
                               f"the limit of {limit / 2**20:.0f} MiB; use fewer units or layers, or algorithm "
                               f"'online' (per-layer, exact at the top)")
    # RTRL carries one sensitivity per sequence: the sequences of the batch run one after another, each as a batch
    # of one (whose loss is normalised by 1 instead of B, hence the 1/B).
    total, grads = 0.0, {k: np.zeros_like(v) for k, v in params.items()}
    for b in range(B):
        y_b = y[:, b:b + 1] if model.per_step else y[b:b + 1]
        m_b = None if mask is None else (np.asarray(mask)[:, b:b + 1] if np.ndim(mask) == 2 else mask)
        value, g = _run(model, params, x[:, b:b + 1], y_b, loss, m_b, rule="rtrl", whole=True)
        total += value / B
        for k in grads:
            grads[k] += g[k] / B
    return total, grads


def _run(model, params, x, y, loss, mask, *, rule: str, whole: bool, update_every=None, on_update=None):
    """The step loop (1)–(4) over one batch; whole=True for the whole-stack sensitivity (batch of one)."""
    T, B, _ = x.shape
    cells = model.cells
    states = [c.module.zero_state(B, c.n_hidden, c.state_dtype) for c in cells]
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    if whole:
        sens = {k: np.zeros((sum(len(_real_units(c, s)) for c, s in zip(cells, states)),) + params[k].shape,
                            dtype=params[k].dtype) for k in _state_influencing(model, params)}
    else:
        cell_params = [_sub(params, f"layers.{l}.cell", c.param_shapes) for l, c in enumerate(cells)]
        traces = [rtrl.init_traces(rule, c, cell_params[l], B) for l, c in enumerate(cells)]
    run_sum = None
    total = 0.0
    for t in range(T):
        u, new_states, caches = stack_step_forward(model, params, x[t], states)          # (1)
        run_sum, value, g_head, du_top = head_step(model, params, u, t, T, y, loss, mask, run_sum)   # (2)
        total += value
        if g_head is not None:
            grads["readout.weight"] += g_head["weight"]
            grads["readout.bias"] += g_head["bias"]
        if whole:                                                                          # (3), (4)
            step_grads, deltas, _ = stack_step_backward(model, params, caches, du_top, through_cells=False)
            add_into(grads, {k: v for k, v in step_grads.items() if k != "x"})
            _update_whole_stack(model, params, caches, states, sens)
            delta = np.concatenate([_flat_real(c, d) for c, d in zip(cells, deltas)], axis=-1)[0]   # (S_real,)
            for k in sens:
                grads[k] += np.tensordot(delta, sens[k], axes=1)
        else:
            step_grads, deltas, _ = stack_step_backward(model, params, caches, du_top, through_cells=True)
            add_into(grads, {k: v for k, v in step_grads.items() if ".cell." not in k and k != "x"})
            for l, c in enumerate(cells):
                traces[l] = rtrl.update_traces(rule, c, cell_params[l], traces[l], caches[1][l].a, states[l])
                cell_g = rtrl.trace_grads(rule, c, cell_params[l], traces[l], _h(deltas[l]))
                add_into(grads, {f"layers.{l}.cell.{k}": v for k, v in cell_g.items()})
        states = new_states
        if update_every is not None and (t + 1) % update_every == 0 and t + 1 < T:        # truly online update
            params = on_update(grads)
            cell_params = [_sub(params, f"layers.{l}.cell", c.param_shapes) for l, c in enumerate(cells)]
            grads = {k: np.zeros_like(v) for k, v in params.items()}
    return total, grads


def _update_whole_stack(model, params, caches, states_prev, sens) -> None:
    """R_t = J_t R_{t−1} + P_t for a batch of one, row by row: one step backward per real state unit k gives row k of
    J_t (the adjoints of the previous states) and of P_t (the parameter gradients). Updates `sens` in place (it is the
    driver's own accumulator)."""
    cells = model.cells
    rows_J, rows_P = [], []
    for m, c in enumerate(cells):
        for part, k in _real_units(c, states_prev[m]):
            dstates = [_zero_state_adjoint(cc, s) for cc, s in zip(cells, states_prev)]
            dstates[m] = _unit_adjoint(c, states_prev[m], part, k, 1)
            g, _, dprev = stack_step_backward(model, params, caches, None, dstates, through_cells=True)
            rows_J.append(np.concatenate([_flat_real(cc, d) for cc, d in zip(cells, dprev)], axis=-1)[0])
            rows_P.append(g)
    J = np.stack(rows_J)                                               # (S, S): ∂s_t[k]/∂s_{t−1}[j], real
    for name in sens:
        P = np.stack([g.get(name, np.zeros(sens[name].shape[1:], sens[name].dtype)) for g in rows_P])
        sens[name][...] = np.tensordot(J, sens[name], axes=1) + P
