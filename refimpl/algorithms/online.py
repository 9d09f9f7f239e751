r"""The RTRL family on a model stack, truly online: one time step at a time, memory independent of T.

Per step t (nothing of earlier steps is kept but the states, the running-mean sum, the sensitivities and the
accumulated gradients; docs/derivations/rtrl.md has the derivation, refimpl/algorithms/rtrl.py the per-cell rules):

    (1) forward one step:   for l = 0 … L−1:  a^l = LN(u^l);  s^l_t = cell_step(s^l_{t−1}, a^l);
                            u^{l+1} = u^l + FFN(y^l) (residual) or FFN(y^l),  y^l = Re(C h^l) + D ⊙ a^l (lru) or h^l
    (2) head:               p_t = u^L_t (pooling none) or the running mean (cumulative_mean, straight-through);
                            ŷ_t = p_t W_rᵀ + b_r;   l_t and ∂l_t/∂ŷ_t from the loss at step t (its mask weight m_t)
    (3) backward within step t (refimpl/nn/stack.py's walk): the adjoint of ŷ_t goes down the stack *inside step t*;
        at each layer it reaches the cell state h^l_t — that is the instantaneous error δ^l_t.
    (4) sensitivities and gradient: S_t from S_{t−1}, and g += Σ δ_tᵀ S_t.

Two ways to combine (3) and (4):

  per layer — `online`, `snap1`, `truncated`, `spatial`, `cec` (the rules of refimpl/algorithms/rtrl.py, by
      rtrl.LAYER_RULE): (3) runs *through* the cells' immediate dependence on their inputs (spatial backprop), giving
      δ^l_t for every layer and the gradient of every non-cell parameter; at each cell the rule turns δ^l_t into the
      cell's gradient (`rule_adjoint`): each layer keeps the sensitivity of its own state to its own cell parameters
      only. Exact for a one-layer model with nothing trainable below the cell, and for the top layer's
      cell parameters and everything above them; below that the path "h^l_t → upper layers' future states" is missing.
  whole stack — `rtrl`:
      the stack is one recurrent system with state s_t = (s^0_t, …, s^{L−1}_t). (3) stops at the cells: δ^l_t =
      ∂l_t/∂s^l_t along paths that do not enter a cell, plus the direct gradient of every parameter with the states
      held fixed. The sensitivity R_t = ds_t/dθ of the whole state with respect to every parameter that can influence a
      state obeys R_t = J_t R_{t−1} + P_t, where row k of [J_t | P_t] is one backward pass of the step from a unit
      adjoint on state unit k (the walk *through* the cells' step backward, down every layer).
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

from dataclasses import replace
from typing import NamedTuple

import numpy as np

from . import rtrl
from .chunked import check_chunk, check_supported, per_layer_grads
from ..cells.common import add_into
from ..errors import UnsupportedError
from ..nn.layers import linear_backward, linear_forward
from ..nn.losses import loss_forward
from ..nn.stack import stack_backward, stack_forward

#: Refuse a whole-stack RTRL whose sensitivity would take more than this many bytes (override with max_bytes=).
RTRL_MAX_BYTES = 2 * 2**30


def whole_stack_differs(model) -> bool:
    """Whether whole-stack `rtrl` differs from exact RTRL in each layer: a second layer, an encoder or a norm below a
    cell (then h_t of a cell reaches a trainable parameter that its own sensitivity does not cover)."""
    return not (model.layers == 1 and not model.encoder and model.norm is None)


# ----------------------------------------------------------------------------------------------------------------
# One step of the stack: forward (1), head (2), and the cell adjoints of the per-layer rules (3)–(4)

def stack_step_forward(model, params, x_t, states):
    """(1): x_t (B, I), states [s^l_{t−1}] → (u^L_t (B, d_L), new states [s^l_t], the step's nn.stack.StackCache)."""
    new_states = list(states)

    def run_cell(l, cell_params, a):                          # one step of cell l from s^l_{t−1}
        c = model.cells[l]
        new_states[l], cell_cache = c.module.step_forward(cell_params, a, states[l], **c.step_options)
        return c.state_h(new_states[l]), cell_cache

    u, cache = stack_forward(model, params, x_t, run_cell)
    return u, new_states, cache


class Head(NamedTuple):
    """The head at step t, (2)."""
    run_sum: np.ndarray | None       # Σ_{τ ≤ t} u^L_τ for cumulative_mean (else None)
    loss: float                      # l_t (0 where step t has no loss)
    readout: dict | None             # {"weight", "bias"}: the readout's gradient at step t; None where no loss
    dout: np.ndarray | None          # ∂L/∂ŷ_t (B, O); None where no loss
    du: np.ndarray | None            # the adjoint of u^L_t (B, d_L) (pooling: identity backward); None where no loss

    @property
    def has_loss(self) -> bool:
        """Whether step t has a loss (with pooling 'last', only the last step has one)."""
        return self.du is not None


def head_step(model, params, u, t: int, T: int, y, loss: str, mask, run_sum) -> Head:
    """(2) at step t: pooling (the running mean is straight-through), readout, the loss at step t and its adjoints.
    Step t has no loss with pooling 'last' before the last step."""
    if model.pooling == "cumulative_mean":
        run_sum = u if run_sum is None else run_sum + u
        p = run_sum / (t + 1)
    else:
        p = u
    if model.pooling == "last" and t < T - 1:
        return Head(run_sum, 0.0, None, None, None)
    out, head = linear_forward(p, params["readout.weight"], params["readout.bias"])
    if model.per_step:
        m_t = None if mask is None else np.asarray(mask)[t:t + 1]
        value, dout = loss_forward(loss, out[None], y[t:t + 1], m_t)
        dout = dout[0]
    else:
        value, dout = loss_forward(loss, out, y, None)
    g = linear_backward(dout, head)
    return Head(run_sum, float(value), {"weight": g["weight"], "bias": g["bias"]}, dout, g["x"])


def add_head(grads: dict, head: Head) -> None:
    """The readout's gradient at step t, (2), into the driver's accumulator `grads` (nothing where step t has no
    loss)."""
    if head.has_loss:
        grads["readout.weight"] += head.readout["weight"]
        grads["readout.bias"] += head.readout["bias"]


def rule_adjoint(model, rule: str, traces: list):
    """The cell adjoint (refimpl/nn/stack.py) of a per-layer rule at one step: the cell's gradient from its
    instantaneous error δ^l_t = h̄ by the rule's traces S^l_t (rtrl.trace_grads, eq. (4)), and x̄ through the cell's
    immediate dependence on its input (its step backward from δ^l_t alone: nothing is carried through time)."""
    def cell_adjoint(l, cell_params, dh, cell_cache):
        c = model.cells[l]
        grads = rtrl.trace_grads(rule, c, cell_params, traces[l], dh)                                # (4)
        _, dx, _ = c.module.step_backward(cell_params, c.adjoint_from_h(dh), cell_cache, **c.step_options)
        return {**grads, "x": dx}
    return cell_adjoint


# ----------------------------------------------------------------------------------------------------------------
# The driver

def online_grads(model, params, x, y=None, loss="mse", mask=None, *, algorithm="online", kernels=None,
                 chunk: int | None = None, max_bytes: int | None = None, update_every: int | None = None,
                 on_update=None):
    """Loss and gradients of `model` by an RTRL-family algorithm (a key of rtrl.LAYER_RULE) over a sequence x
    (T, B, I) or a stream (see module doc).

    Per-layer rules run in refimpl/algorithms/chunked.py: chunks of `chunk` steps (default 1 on NumPy, the step loop
    (1)–(4) above; a backend's `kernels` run each layer's sweep over a chunk in one call). Whole-stack `rtrl` runs
    here, step by step, on NumPy only.

    Truly online training: with update_every=k, after every k steps (before the sequence ends) the gradient
    accumulated since the last update is handed to on_update(grads, t, loss) -> new params (t: the steps done, loss:
    Σ l_t since the last update), which the rest of the sequence
    then uses; the traces carry on (they are not reset: the usual online-RTRL approximation once weights move).
    Returns (loss_value, grads) with a gradient for every parameter (no "x": forward-mode methods give no input
    gradients) — with update_every, the gradient since the last update.
    """
    if algorithm not in rtrl.LAYER_RULE:
        raise UnsupportedError(f"{algorithm!r} is not an RTRL-family algorithm")
    if not (algorithm == "rtrl" and whole_stack_differs(model)):
        return per_layer_grads(model, params, x, y, loss, mask, rule=rtrl.LAYER_RULE[algorithm], kernels=kernels,
                               chunk=chunk, update_every=update_every, on_update=on_update)
    if kernels is not None and kernels.backend != "numpy":
        raise UnsupportedError(
            f"whole-stack rtrl ({model.layers} layer(s), encoder={model.encoder}, norm={model.norm}) has no backend "
            f"kernel: use backend 'numpy' for it, or algorithm 'online' (per-layer RTRL, exact at the top) on "
            f"{kernels.backend!r}")
    if not isinstance(x, np.ndarray):
        raise UnsupportedError("whole-stack rtrl runs on a sequence in memory, not on a stream; use algorithm "
                               "'online' (per-layer RTRL, exact at the top) for a stream")
    check_supported(model, mask)
    if chunk is not None:
        check_chunk(chunk, x.shape[0])            # validated alike; the whole-stack sensitivity runs step by step
    if update_every is not None:
        raise UnsupportedError("update_every with whole-stack rtrl is not supported (its sequences run one after "
                               "another); use algorithm 'online' (per-layer RTRL) for truly online updates")
    need = _whole_stack_bytes(model, params, 1)
    limit = RTRL_MAX_BYTES if max_bytes is None else max_bytes
    if need > limit:
        raise UnsupportedError(f"whole-stack rtrl would keep a sensitivity of {need / 2**20:.0f} MiB per sequence "
                               f"({sum(_n_real(c) for c in model.cells)} real state units × "
                               f"{sum(params[k].size for k in _state_influencing(model, params))} parameters), over "
                               f"the limit of {limit / 2**20:.0f} MiB; use fewer units or layers, or algorithm "
                               f"'online' (per-layer, exact at the top)")
    # RTRL carries one sensitivity per sequence: the sequences of the batch run one after another, each as a batch
    # of one (whose loss is normalised by 1 instead of B, hence the 1/B).
    B = x.shape[1]
    total, grads = 0.0, {k: np.zeros_like(v) for k, v in params.items()}
    for b in range(B):
        y_b = y[:, b:b + 1] if model.per_step else y[b:b + 1]
        m_b = None if mask is None else (np.asarray(mask)[:, b:b + 1] if np.ndim(mask) == 2 else mask)
        model_b = model if model.masks is None else replace(model, masks={k: m[b:b + 1]      # its dropout masks
                                                                           for k, m in model.masks.items()})
        value, g = _whole_stack(model_b, params, x[:, b:b + 1], y_b, loss, m_b)
        total += value / B
        for k in grads:
            grads[k] += g[k] / B
    return total, grads


# ----------------------------------------------------------------------------------------------------------------
# The whole-stack sensitivity

def _state_influencing(model, params) -> list[str]:
    """Parameters that can change a cell state: all but the readout and what sits above the top cell."""
    top = f"layers.{model.layers - 1}."
    above_top = ("C_re", "C_im", "D", "ffn.")
    return [k for k in params if not k.startswith("readout.")
            and not (k.startswith(top) and k[len(top):].startswith(above_top))]


def _n_real(c) -> int:
    """The real state units of one layer: the S entries of its flattened state, Re and Im of each for a complex one."""
    return c.state_size * (2 if c.complex_state else 1)


def _real(c, dstate) -> np.ndarray:
    """A state adjoint as one real number per real unit (B, S_real): the flattened state, [Re; Im] of it if complex."""
    flat = c.flatten_state(dstate)
    return np.concatenate([np.real(flat), np.imag(flat)], axis=-1) if c.complex_state else flat


def _unit_adjoint(c, k: int):
    """The state adjoint (a batch of one) that selects real unit k: 1 on flattened entry k, i on its imaginary part."""
    S = c.state_size
    flat = np.zeros((1, S), c.state_dtype)
    flat[0, k % S] = 1.0 if k < S else 1j
    return c.unflatten_state(flat)


def _whole_stack_bytes(model, params, B) -> int:
    S = sum(_n_real(c) for c in model.cells)
    P = sum(params[k].size for k in _state_influencing(model, params))
    return int(B * S * P * params["readout.weight"].itemsize)


def _whole_stack(model, params, x, y, loss, mask):
    """The step loop (1)–(4) with the whole-stack sensitivity, for a batch of one."""
    T, B, _ = x.shape
    cells = model.cells
    states = [c.zero_state(B) for c in cells]
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    sens = {k: np.zeros((sum(_n_real(c) for c in cells),) + params[k].shape, dtype=params[k].dtype)
            for k in _state_influencing(model, params)}
    run_sum, total = None, 0.0
    for t in range(T):
        u, new_states, cache = stack_step_forward(model, params, x[t], states)                      # (1)
        head = head_step(model, params, u, t, T, y, loss, mask, run_sum)                            # (2)
        run_sum, total = head.run_sum, total + head.loss
        _update_whole_stack(model, params, u, cache, states, sens)                                  # R_t
        add_head(grads, head)                                                                       # (2)
        if head.has_loss:
            deltas = [None] * model.layers

            def stop_at_cell(l, cell_params, dh, cell_cache):     # (3) stops at the cells: δ^l_t, nothing through
                deltas[l] = cells[l].adjoint_from_h(dh)             # (the cells' gradients come from R_t, (4))
                return {**{k: np.zeros_like(v) for k, v in cell_params.items()}, "x": np.zeros_like(cache.layers[l].a)}

            step_grads, _ = stack_backward(model, params, head.du, cache, stop_at_cell)     # the states held fixed
            add_into(grads, step_grads)
            delta = np.concatenate([_real(c, d) for c, d in zip(cells, deltas)], axis=-1)[0]        # (S_real,)
            for k in sens:
                grads[k] += np.tensordot(delta, sens[k], axes=1)                                    # (4)
        states = new_states
    return total, grads


def _update_whole_stack(model, params, u, cache, states_prev, sens) -> None:
    """R_t = J_t R_{t−1} + P_t for a batch of one, row by row: one step backward per real state unit k gives row k of
    J_t (the adjoints of the previous states) and of P_t (the parameter gradients). Updates `sens` in place (it is the
    driver's own accumulator)."""
    cells = model.cells
    rows_J, rows_P = [], []
    for m, c in enumerate(cells):
        for k in range(_n_real(c)):
            dstates = [cc.zeros_like_state(s) for cc, s in zip(cells, states_prev)]
            dstates[m] = _unit_adjoint(c, k)
            dprev = [None] * model.layers

            def through_cell(l, cell_params, dh, cell_cache):   # the step backward from the unit adjoint (+ h̄)
                cl = cells[l]
                g, dx, dprev[l] = cl.module.step_backward(cell_params, cl.add_to_h(dstates[l], dh), cell_cache,
                                                          **cl.step_options)
                return {**g, "x": dx}

            g, _ = stack_backward(model, params, np.zeros_like(u), cache, through_cell)
            rows_J.append(np.concatenate([_real(cc, d) for cc, d in zip(cells, dprev)], axis=-1)[0])
            rows_P.append(g)
    J = np.stack(rows_J)                                               # (S, S): ∂s_t[k]/∂s_{t−1}[j], real
    for name in sens:
        P = np.stack([g[name] for g in rows_P])
        sens[name][...] = np.tensordot(J, sens[name], axes=1) + P
