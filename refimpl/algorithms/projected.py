r"""DFA and DRTP for recurrent models: the output error (dfa) or the target (drtp), projected by a fixed random matrix
onto each layer's output at every step, carried through time by the layer's own online temporal rule.

The derivation is docs/derivations/bpfree.md §6 (same numbering); the feed-forward rules are refimpl/bpfree/rules.py,
the temporal rules refimpl/algorithms/rtrl.py, the step-by-step stack refimpl/algorithms/online.py.

Shapes: T time, B batch, O = n_out, w_l the output width of layer l (H for rnn/gru/lstm, whose output is h; the
layer width d for the lru, whose output map y = Re(C h) + D ⊙ a belongs to the layer), S the cell state.

Per step t — online: nothing is kept from earlier steps but the states, the traces and the running gradient:

    (1) forward one step of the stack (online.stack_step_forward): cell states s^l_t, layer outputs f^l_t
        (f^l = FFN(y^l) with a feed-forward block, else y^l; with a residual, u^{l+1} = u^l + f^l)
    (2) head: p_t (pooling none; cumulative_mean, straight-through; last: step T−1 only), ŷ_t = p_t W_rᵀ + b_r,
        e_t = ∂L/∂ŷ_t = (m_t/B) ∂l_t/∂ŷ_t (B, O)   (losses.py (39); zero where step t has no loss)
        readout: W̄_r += e_tᵀ p_t, b̄_r += Σ_b e_t — its true gradient
    (3) the signal at the output:   dfa   ε_t = e_t
                                    drtp  ε_t = (m_t/B) y*_t,  y* = onehot(label) (ce) or the target bits (bce)
    (4) projected onto layer l's output:   f̄^l_t = ε_t B_lᵀ,   B_l (w_l, O) fixed (orthogonal or lecun)
    (5) within layer l and step t only (refimpl/nn/stack.py's block_backward from f̄^l_t): FFN backward, LRU
        output-map backward (h̄ = ȳ conj(C), C̄, D̄) → δ^l_t, the instantaneous error of the cell state (of h; complex
        for the lru), and the FFN / output-map gradients
    (6) the cell's parameters, by the layer's temporal rule (refimpl/algorithms/rtrl.py, per layer; the cell adjoint
        online.rule_adjoint, as for the online algorithms of the same names):
            S^l_t = rule(S^l_{t−1}, s^l_{t−1}, a^l_t),   W̄^l += Σ_b Re(conj(S^l_t) δ^l_t)
            temporal = online (exact per-layer RTRL: == BPTT of the cell driven by the instantaneous δ^l),
                       snap1 (SnAp-1), truncated (1-step)
    (7) below the cell (layer norm; the encoder for layer 0): δ^l_t through the cell's immediate input Jacobian
        (its step backward, without the carried part), then the layer-norm / encoder backward
No error crosses from one layer to another: a layer's update depends only on its own inputs, states and ε_t.

Identity (tested): with one layer, temporal = online and the feedback set to the readout's own weights,
B_1 = W_rᵀ, (4) is the exact error e_t W_r that reaches the layer at step t, so dfa returns BPTT's gradient
exactly: dfa is BPTT with the transported weights W_rᵀ replaced by a fixed random B_1.

NOTE (drtp): the target carries the sign of the error only for class or bit targets (e = ŷ − y* has the sign of
−y* up to a constant for one-hot or binary y*); for a real-valued regression target (mse) it does not, and drtp is
refused. Cells whose state is unbounded (cell.bounded_state: the lru; rnn 'linear') get a BpfreeWarning: the projected
target does not shrink as the network learns, and nothing saturates to stop the updates.
"""

from __future__ import annotations

import warnings

import numpy as np

from . import rtrl
from ..cells.common import add_into
from ..errors import BpfreeWarning, ShapeError, UnknownNameError, UnsupportedError
from ..nn import stack
from ..nn.init import init_matrix
from ..nn.layers import linear_backward
from ..nn.stack import block_backward
from .online import add_head, check_supported, head_step, rule_adjoint, stack_step_forward

RULES = ("dfa", "drtp")
#: the temporal rules: the per-layer online algorithms of the same names (their rule: rtrl.LAYER_RULE)
TEMPORAL = ("online", "snap1", "truncated")
#: the keyword options of the algorithms (for their refimpl.algorithms entries)
OPTIONS = ("temporal", "feedback_init", "feedback_seed")


# ----------------------------------------------------------------------------------------------------------------
# Feedback matrices and checks

def layer_output_widths(model) -> list[int]:
    """w_l: the width of each layer's output f^l (H for rnn/gru/lstm, the layer width d for the lru)."""
    return [c.out_width for c in model.cells]


def make_feedback(model, init: str = "orthogonal", seed: int | None = None) -> list[np.ndarray]:
    """The fixed B_l (w_l, O), one per layer, drawn in layer order from default_rng([seed, 1]) (seed None: the
    model's seed). The same seed gives the same matrices at every step and in every call."""
    rng = np.random.default_rng([model.seed if seed is None else int(seed), 1])
    return [init_matrix(init, (w, model.n_out), w, rng, model.dtype, "feedback") for w in layer_output_widths(model)]


def check_rule(model, rule: str, loss: str, temporal: str) -> None:
    """Refuse what cannot work, with the reason; warn (BpfreeWarning) about what is known to learn badly."""
    if rule not in RULES:
        raise UnknownNameError("recurrent projection rule", rule, RULES)
    if temporal not in TEMPORAL:
        raise UnknownNameError("temporal rule", temporal, TEMPORAL,
                               "online is exact per layer; snap1 and truncated approximate it")
    if rule == "drtp" and loss == "mse":
        raise UnsupportedError("drtp projects the *target*, which carries the sign of the error only for class or "
                               "bit targets (loss 'ce' or 'bce'); with a real-valued regression target (loss 'mse') "
                               "it carries no information about the error — use dfa, which projects the error itself")
    if rule == "drtp":
        unbounded = [c.name for c in model.cells if not c.bounded_state]
        if unbounded:
            warnings.warn(f"drtp with the unbounded {unbounded[0]} state: the projected target does not shrink as "
                          f"the network learns and nothing saturates to stop the updates; prefer a gru, lstm or "
                          f"tanh rnn (docs/derivations/bpfree.md §4)", BpfreeWarning, stacklevel=3)


def _check_feedback(model, feedback) -> list:
    widths = layer_output_widths(model)
    if len(feedback) != model.layers:
        raise ShapeError(f"feedback must hold one matrix per layer ({model.layers}), got {len(feedback)}")
    for l, (b, w) in enumerate(zip(feedback, widths)):
        if np.shape(b) != (w, model.n_out):
            raise ShapeError(f"feedback[{l}] has shape {np.shape(b)}; layer {l} needs ({w}, {model.n_out}) "
                             f"= (its output width, n_out)")
    return [np.asarray(b, dtype=model.dtype) for b in feedback]


# ----------------------------------------------------------------------------------------------------------------
# The signal at the output, (2)–(3)

def _target(model, y, t: int, mask, B: int, dtype):
    """(y_t, its weight m_t/B (B,)) at step t: what drtp projects."""
    if model.per_step:
        m_t = None if mask is None else np.asarray(mask)[t:t + 1]
        y_t = y[t]
        weight = (np.ones(B) if m_t is None else np.broadcast_to(m_t.reshape(-1), (B,))) / B
    else:
        y_t, weight = y, np.full(B, 1.0 / B)
    return y_t, weight.astype(dtype)


def _target_signal(loss: str, y_t, weight: np.ndarray, n_out: int, dtype) -> np.ndarray:
    """(3) drtp: (m_t/B) y*_t (B, O)."""
    if loss == "ce":
        ystar = np.zeros((len(y_t), n_out), dtype=dtype)
        ystar[np.arange(len(y_t)), y_t] = 1.0
    else:
        ystar = np.asarray(y_t, dtype=dtype)
    return weight[:, None] * ystar


# ----------------------------------------------------------------------------------------------------------------
# The driver

def projected_grads(model, params, x, y, loss, mask=None, *, rule: str = "dfa", temporal: str = "online",
                    feedback_init: str = "orthogonal", feedback_seed: int | None = None, feedback=None):
    """Loss and updates of every parameter by recurrent dfa / drtp, step by step (module doc, (1)–(7)).

    Args:
        model, params, x (T, B, I), y, loss, mask: as refimpl.model_grads (inputs assumed checked).
        rule: 'dfa' | 'drtp'.  temporal: 'online' | 'snap1' | 'truncated'.
        feedback_init, feedback_seed: how the B_l are drawn (make_feedback); or `feedback`, a list of the B_l
            (w_l, O) to use instead.
    Returns:
        (loss value, {dotted name: update}) for every parameter (no "x": these rules give no input gradient).
    """
    check_supported(model, mask)
    check_rule(model, rule, loss, temporal)
    Bs = _check_feedback(model, feedback) if feedback is not None else make_feedback(model, feedback_init,
                                                                                      feedback_seed)
    layer_rule = rtrl.LAYER_RULE[temporal]
    T, B, _ = x.shape
    cells = model.cells
    states = [c.zero_state(B) for c in cells]
    cell_params = [stack.cell_params(model, l, params) for l in range(model.layers)]
    traces = [rtrl.init_traces(layer_rule, c, cell_params[l], B) for l, c in enumerate(cells)]
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    total, run_sum = 0.0, None
    for t in range(T):
        u, new_states, cache = stack_step_forward(model, params, x[t], states)                      # (1)
        head = head_step(model, params, u, t, T, y, loss, mask, run_sum)                            # (2)
        run_sum, total = head.run_sum, total + head.loss
        traces = [rtrl.update_traces(layer_rule, c, cell_params[l], traces[l], cache.layers[l].a, states[l])
                  for l, c in enumerate(cells)]                                                      # (6)
        states = new_states
        add_head(grads, head)                                                                       # (2)
        if not head.has_loss:
            continue                                                      # no loss at this step: no signal
        eps = head.dout if rule == "dfa" else _target_signal(loss, *_target(model, y, t, mask, B, u.dtype),
                                                             model.n_out, model.dtype)              # (3)
        cell_adjoint = rule_adjoint(model, layer_rule, traces)                                      # (6), (7)
        for l in range(model.layers):
            da, g_layer = block_backward(model, l, params, eps @ Bs[l].T, cache.layers[l], cell_adjoint)   # (4)–(7)
            add_into(grads, g_layer)
            if l == 0 and model.encoder:                                                            # (7)
                g = linear_backward(da, cache.encoder)
                add_into(grads, {"encoder.weight": g["weight"], "encoder.bias": g["bias"]})
    return total, grads


def _reference_only(rule: str, kernels) -> None:
    backend = getattr(kernels, "backend", "numpy")
    if backend != "numpy":
        raise UnsupportedError(f"algorithm {rule!r} runs on the NumPy reference only: its temporal rules' sweeps "
                               f"are not implemented by backend {backend!r}; use backend='numpy'")


def dfa_model_grads(kernels, model, params, x, y, loss, mask, **options):
    """The `dfa` entry of refimpl.algorithms: model_grads(kernels, model, params, x, y, loss, mask, **options) with
    options temporal, feedback_init, feedback_seed."""
    _reference_only("dfa", kernels)
    return projected_grads(model, params, x, y, loss, mask, rule="dfa", **options)


def drtp_model_grads(kernels, model, params, x, y, loss, mask, **options):
    """The `drtp` entry of refimpl.algorithms (options as dfa_model_grads; loss 'ce' or 'bce')."""
    _reference_only("drtp", kernels)
    return projected_grads(model, params, x, y, loss, mask, rule="drtp", **options)
