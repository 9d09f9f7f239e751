r"""The backprop-free rules bp, dfa, drtp, ll-ce and ll-mse on the feed-forward network of network.py, hand-derived.

The derivation, with the same numbering, is docs/derivations/bpfree.md §3–4; eqs. (1)–(12) (the forward pass, the
output error e and the local backward of one hidden layer) are in network.py. Every rule here but bp is one
*projection* rule: hidden layer l owns a fixed random matrix B_l, projects its output h_l to the target space,
p_l = h_l B_l, and takes the gradient of a local loss J_l(p_l) with respect to its own parameters only. The rules differ
only in the error ε_l = ∂J_l/∂p_l they put at p_l (eqs. 14–16). Nothing propagates from one hidden layer to the one
below, except in `bp`.

Shapes: B batch, n_l units of hidden layer l, O output width, K = O the width of the target space.

The injected adjoint h̄_l of each rule (p_l = h_l B_l; J_l is the layer's local loss; ε_l = ∂J_l/∂p_l (B, K)):

    (13) bp       h̄_l from (12) of the layer above (h̄_L = e W_o): the true gradient
    (14) dfa      J_l = Σ_b ⟨e_b, p_l,b⟩ with e held fixed:         ε_l = e,                   h̄_l = e B_lᵀ
    (15) drtp     J_l = (1/B) Σ_b ⟨y*_b, p_l,b⟩:                     ε_l = y*/B,                h̄_l = (y*/B) B_lᵀ
    (16) ll-ce    J_l = (1/B) Σ_b −log softmax(p_l,b)_{c_b}:          ε_l = (softmax(p_l) − y*)/B
         ll-mse   J_l = (1/B) Σ_b ½ ‖σ(p_l,b) − y*_b‖²:               ε_l = (σ(p_l) − y*) ⊙ σ(p_l)(1 − σ(p_l))/B
                  and h̄_l = ε_l B_lᵀ for both
    (17) every rule trains the output layer with its true gradient: W̄_o = eᵀ h_L, b̄_o = Σ_b e

Refused: drtp and ll-ce for reconstruction (check_rule says why). Warned (BpfreeWarning): drtp with an unbounded
activation (bpfree.md §4).

NOTE (scales): the global loss and every local loss are batch means, so that ε_l carries the same 1/B in every rule.
(A Keras version of these rules sums the local losses over the batch while averaging the global one; with Adam the
difference vanishes, with SGD it is a factor B.) DRTP's sign: Frenkel et al. inject +y* B_lᵀ; the error it stands
in for, e = ŷ − y*, has the sign of −y* (plus a constant), but B_l and −B_l are equally likely under both init
schemes, so the sign convention does not change the distribution of the rule.

Nothing here mutates its arguments; float32 inputs give float32 outputs.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from ..cells.common import sigmoid
from ..errors import BpfreeWarning, UnknownNameError, UnsupportedError
from ..nn.layers import linear_backward
from .network import Net, check_input, forward, hidden_backward, output_loss, target

RULES = ("bp", "dfa", "drtp", "ll-ce", "ll-mse")
BOUNDED_ACTIVATIONS = ("tanh",)


# ----------------------------------------------------------------------------------------------------------------
# Which rule may train which network

def check_rule(net: Net, rule: str) -> None:
    """Refuse a rule that cannot work for this network, with the reason (the warnings are in rule_warnings)."""
    if rule not in RULES:
        raise UnknownNameError("learning rule", rule, RULES)
    if net.problem == "reconstruction" and rule == "drtp":
        raise UnsupportedError(
            "drtp cannot train a reconstruction network: its hidden layers receive the *target* through fixed random "
            "feedback (15), and for reconstruction the target is the input x itself, so every layer would be pushed "
            "along a fixed random function of its input that carries no information about the error; use dfa "
            "(the output error through the same feedback) or ll-mse")
    if net.problem == "reconstruction" and rule == "ll-ce":
        raise UnsupportedError("ll-ce needs class labels (a softmax cross-entropy on each layer's projection); a "
                               "reconstruction target is a real vector — use ll-mse for reconstruction")


def rule_warnings(net: Net, rule: str) -> list[str]:
    """Combinations that run but are known to learn badly; each message says why and what to use instead."""
    out = []
    if rule == "drtp" and net.activation not in BOUNDED_ACTIVATIONS:
        out.append(f"drtp with the unbounded activation {net.activation!r}: the projected target (15) does not shrink "
                   f"as the network learns, and only a saturating activation (φ' → 0) stops the updates; with "
                   f"{net.activation!r} the hidden weights keep growing along y* B_lᵀ. Use activation 'tanh' "
                   f"(docs/derivations/bpfree.md §4)")
    return out


def warn_rule(net: Net, rule: str) -> None:
    """check_rule, then issue each of rule_warnings as a BpfreeWarning."""
    check_rule(net, rule)
    for message in rule_warnings(net, rule):
        warnings.warn(message, BpfreeWarning, stacklevel=2)


# ----------------------------------------------------------------------------------------------------------------
# The injected errors (14)–(16) and the rules (13)–(17)

def projection_error(rule: str, e: np.ndarray, ystar: np.ndarray, p: np.ndarray) -> np.ndarray:
    """ε_l = ∂J_l/∂p_l (B, K) of rule (14)–(16); p = p_l = h_l B_l (unused by dfa and drtp)."""
    B = ystar.shape[0]
    if rule == "dfa":
        return e                                                                # (14)
    if rule == "drtp":
        return ystar / B                                                        # (15)
    if rule == "ll-ce":
        q = np.exp(p - p.max(-1, keepdims=True))
        return (q / q.sum(-1, keepdims=True) - ystar) / B                       # (16)
    if rule == "ll-mse":
        s = sigmoid(p)
        return (s - ystar) * s * (1.0 - s) / B                                  # (16)
    raise UnknownNameError("projection rule", rule, RULES[1:])


def local_loss(rule: str, e: np.ndarray, ystar: np.ndarray, p: np.ndarray) -> float:
    """J_l of (14)–(16) (its value; e is held fixed for dfa)."""
    B = ystar.shape[0]
    if rule == "dfa":
        return float(np.sum(e * p))
    if rule == "drtp":
        return float(np.sum(ystar * p) / B)
    if rule == "ll-ce":
        shifted = p - p.max(-1, keepdims=True)
        logq = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        return float(-np.sum(ystar * logq) / B)
    s = sigmoid(p)
    return float(0.5 * np.sum((s - ystar) ** 2) / B)


class RuleStep(NamedTuple):
    """What one gradient evaluation gives."""
    loss: float              # L of (7)
    grads: dict              # {param name: update direction (gradient sign: θ ← θ − η·grad)}
    injected: list           # h̄_l per hidden layer, (B, n_l)
    local_losses: list       # J_l per hidden layer (None for bp)
    buffers: dict            # the batch-norm running averages after this batch (unchanged without batch norm)


def rule_grads(net: Net, params: dict, feedback: dict, x: np.ndarray, y, rule: str, *, train: bool = True,
               buffers: dict | None = None, rng: np.random.Generator | None = None,
               masks: list | None = None) -> RuleStep:
    """The loss and each parameter's update under `rule`, eqs. (1)–(17).

    Args:
        net, params: from make_net.  feedback: from make_feedback (unused by bp).
        x: (B, I).  y: labels (B,) int for classification; ignored for reconstruction (the target is x).
        rule: one of RULES.  train, buffers, rng, masks: as in forward (train=True: batch statistics and dropout).
    Returns:
        RuleStep.
    """
    check_rule(net, rule)
    check_input(net, x, y)
    z, cache, new_buffers = forward(net, params, x, train=train, buffers=buffers, rng=rng, masks=masks)
    value, e = output_loss(net, z, x, y)                                        # (7), (8)
    g_out = linear_backward(e, cache.readout)                                   # (17)
    grads = {"readout.weight": g_out["weight"], "readout.bias": g_out["bias"]}
    L = net.n_hidden_layers
    injected, local = [None] * L, [None] * L
    if rule == "bp":
        dh = g_out["x"]                                                         # (13) h̄_L = e W_o
        for l in reversed(range(L)):
            injected[l] = dh
            g = hidden_backward(net, l, dh, cache.hidden[l])                    # (9)–(12)
            dh = g.pop("x")                                                     # (12) h̄_{l−1}
            grads.update(g)
    else:
        ystar = target(net, x, y)
        for l in range(L):
            Bl = feedback[f"feedback.{l}"]                                      # (n_l, K)
            p = cache.hidden[l].h @ Bl                                          # p_l = h_l B_l  (B, K)
            eps = projection_error(rule, e, ystar, p)                           # (14)–(16)
            injected[l] = eps @ Bl.T                                            # h̄_l = ε_l B_lᵀ  (B, n_l)
            local[l] = local_loss(rule, e, ystar, p)
            g = hidden_backward(net, l, injected[l], cache.hidden[l])           # (9)–(12), no further
            g.pop("x")
            grads.update(g)
    grads = {k: grads[k] for k in params}                                       # the parameters' order
    return RuleStep(float(value), grads, injected, local, new_buffers)
