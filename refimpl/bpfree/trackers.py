r"""What the backprop-free rules do to a network, measured per layer: the trackers (18)–(20) of
docs/derivations/bpfree.md §5 (same numbering; the network is network.py, the rules rules.py).

    (18) bp-cosine          cos(vec ΔW_l, vec ∇^bp W_l): the rule's update against the true gradient, same batch
    (19) weight-alignment   hidden l ≥ 2:  cos(vec W_l, vec(B_l B_{l−1}ᵀ)),  both (n_l, n_{l−1});
                            output:        cos(vec W_o, vec B_Lᵀ),          both (O, n_L)
                            (layer 1 has no feedback path below it: None)
    (20) gradient norms     ‖ΔW_l‖, ‖Δb_l‖

NOTE (the transposed-shape trap, bpfree.md §5): `alignment` compares two matrices entry by entry and refuses two of
different shapes, rather than flattening a matrix against its transpose.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..numerics import cosine
from .network import Net
from .rules import rule_grads


def alignment(w: np.ndarray, m: np.ndarray) -> float:
    """cos(vec w, vec m) for two matrices OF THE SAME SHAPE (entry [i, j] of one must meet entry [i, j] of the other).

    A transposed pair is refused rather than silently flattened: vec(Wᵀ) lists the entries in another order, so
    the cosine of the flattened arrays would compare unrelated weights (docs/derivations/bpfree.md §5)."""
    if w.shape != m.shape:
        raise ShapeError(f"alignment compares matrices entry by entry and needs equal shapes, got {w.shape} and "
                         f"{m.shape}; if one is the other's transpose, transpose it (flattening both would pair "
                         f"unrelated entries)")
    return cosine(w, m)


def weight_alignment(net: Net, params: dict, feedback: dict) -> list:
    """(19) per layer, input side first: [None, cos(W_2, B_2 B_1ᵀ), …, cos(W_L, B_L B_{L−1}ᵀ), cos(W_o, B_Lᵀ)]."""
    L = net.n_hidden_layers
    out = [None]
    for l in range(1, L):
        out.append(alignment(params[f"layers.{l}.weight"], feedback[f"feedback.{l}"] @ feedback[f"feedback.{l - 1}"].T))
    out.append(alignment(params["readout.weight"], feedback[f"feedback.{L - 1}"].T))
    return out


def tracker_layers(net: Net) -> list[str]:
    """The layers the trackers report on, input side first."""
    return [f"layers.{l}" for l in range(net.n_hidden_layers)] + ["readout"]


def trackers(net: Net, params: dict, feedback: dict, x: np.ndarray, y, rule: str) -> dict:
    """bp-cosine (18), weight-alignment (19) and gradient norms (20) on one batch, per layer (tracker_layers order).

    Both the rule's update and the BP gradient are taken in training mode without dropout (the same deterministic
    forward pass for both; batch norm with batch statistics, no running-average update).
    """
    masks = [None] * net.n_hidden_layers
    step = rule_grads(net, params, feedback, x, y, rule, masks=masks)
    bp = step if rule == "bp" else rule_grads(net, params, feedback, x, y, "bp", masks=masks)
    names = tracker_layers(net)
    return {"layers": names,
            "bp_cosine": [cosine(step.grads[f"{n}.weight"], bp.grads[f"{n}.weight"]) for n in names],     # (18)
            "weight_alignment": weight_alignment(net, params, feedback),                                  # (19)
            "grad_norm_weight": [float(np.linalg.norm(step.grads[f"{n}.weight"])) for n in names],        # (20)
            "grad_norm_bias": [float(np.linalg.norm(step.grads[f"{n}.bias"])) for n in names],            # (20)
            "local_loss": step.local_losses}
