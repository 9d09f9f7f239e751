"""What a kernel must do, counted by formula: FLOPs and bytes moved, for the roofline columns of the suite.

Bytes moved: the compulsory traffic — every input array read once and every output array written once, summed over
the actual arrays of the call (so a kernel that also returns a cache is charged for writing it). A kernel can only
move more; time × the machine's copy bandwidth says how close it comes to this floor.

FLOPs: the arithmetic of the algorithm, with sizes T (steps), B (batch), I (input width), H (hidden units; N for the
lru), G gate blocks (rnn 1, gru 3, lstm 4), P = G·H·(I + H + 2) parameters of a dense cell, S = H state units (2H for
the lstm). A multiply-add is 2 FLOPs, a complex multiply-add 8, and a transcendental function (exp, tanh, σ) counts as
one — so the elementwise terms are small next to the GEMMs they accompany, and their constants (E below, per state
unit and step) are approximate by design:

    <cell>.forward     2·T·B·(I + H)·G·H  + E_f·T·B·H          (input projection + recurrent GEMM + gates)
    <cell>.backward    2 × the forward GEMMs (weight gradients, x̄ and the carried h̄) + E_b·T·B·H
    lru.forward        2·T·B·I·2N (u = B x as two real GEMMs)  + 8·T·B·N (h = λ h + u)
    lru.backward       2 × 2·T·B·I·2N (B̄ and x̄)                + 16·T·B·N (carry and λ̄)
    <dense>.rtrl       forward + 2·T·B·S²·P (the sensitivity product J_t S_{t−1}) + 2·T·B·S·P (gradient contraction)
    <dense>.snap1      forward + 6·T·B·P (compact traces: one row per unit, a diagonal update) 
    <dense>.cec        forward + 8·T·B·P
    <cell>.truncated / .spatial   forward + backward-like immediate terms: ≈ the cell's backward
    lru.rtrl           forward + 16·T·B·N·I (the B-traces: e ← λ e + x, then ē·e) + 16·T·B·N
    <dense>.fptt       2 passes: forward + 2·T·B·S³ (the direct warm-up's Q ← Q Jᴴ), forward + (2/3)·T·B·S³ (the error
                       phase's Jacobian solve) + backward
    <dense>.fptt1      forward + (2/3)·T·B·S³ + backward                 (the error phase)
    <dense>.fptt_warmup  forward + 2·T·B·S³                             (the direct warm-up: Q ← Q Jᴴ, e += Q dh)
    <dense>.fptt_shooting  forward + (8/3)·T·B·S³                       (the paper's warm-up: the solve and P ← P Jᴴ)
    lru.fptt / fptt1   3 (2) forward passes + the backward
    lru.fptt_warmup, lru.fptt_shooting  a forward pass + 16·T·B·N (Q ← Q conj λ and e += Q dh; the division by conj λ
                       and P ← P conj λ)
    ep.free_phase      T steps × 2·B·Σ_l (n_{l−1}·n_l) (× 2 for the energy net's feedback)
    ep.nudged_phase    (T + K) steps of the free phase's cost
    ep.bptt            the free phase + 2·K steps (adjoint and weight gradients)
"""

from __future__ import annotations

import numpy as np

GATES = {"rnn": 1, "gru": 3, "lstm": 4}
#: Elementwise FLOPs per state unit and step (approximate by design: see the module doc).
E_FORWARD = {"rnn": 3, "gru": 15, "lstm": 15}
E_BACKWARD = {"rnn": 4, "gru": 25, "lstm": 25}


def array_bytes(tree) -> int:
    """Σ nbytes of every array in a tree of dicts / tuples / lists (other leaves: 0)."""
    if isinstance(tree, dict):
        return sum(array_bytes(v) for v in tree.values())
    if isinstance(tree, (tuple, list)):
        return sum(array_bytes(v) for v in tree)
    if hasattr(tree, "nbytes") and hasattr(tree, "shape"):
        return int(tree.nbytes)
    return 0


def _dense_forward(cell, T, B, I, H):
    G = GATES[cell]
    return 2 * T * B * (I + H) * G * H + E_FORWARD[cell] * T * B * H


def _dense_backward(cell, T, B, I, H):
    G = GATES[cell]
    return 2 * (2 * T * B * (I + H) * G * H) + E_BACKWARD[cell] * T * B * H


def _lru_forward(T, B, I, N):
    return 2 * T * B * I * 2 * N + 8 * T * B * N


def _lru_backward(T, B, I, N):
    return 2 * (2 * T * B * I * 2 * N) + 16 * T * B * N


def _ep_step(inputs) -> float:
    """FLOPs of one relaxation step of an EP network from its weights (W.0 … W.{L−1})."""
    params, kind = inputs["params"], inputs.get("kind", "prototypical")
    B = inputs["x"].shape[0]
    macs = sum(v.size for k, v in params.items() if k.startswith("W."))
    return 2 * B * macs * (2 if kind == "energy" else 1)


def flops(kernel: str, size: dict, inputs: dict | None = None) -> float:
    """The FLOPs of one call of `kernel` at `size` (see the module doc); `inputs` is needed for the EP loops."""
    T, B, I, H = (size[k] for k in ("T", "B", "I", "H"))
    cell, op = kernel.split(".", 1)
    if cell == "ep":
        step = _ep_step(inputs)
        K = inputs.get("K") or 0
        T = inputs["T"]
        return {"free_phase": T * step, "nudged_phase": (T + K) * step, "bptt": (T + 2 * K) * step}[op]
    if cell == "lru":
        fwd, bwd = _lru_forward(T, B, I, H), _lru_backward(T, B, I, H)
        return {"forward": fwd, "backward": bwd, "rtrl": fwd + 16 * T * B * H * I + 16 * T * B * H,
                "truncated": fwd + bwd, "spatial": fwd + bwd, "fptt": 3 * fwd + bwd, "fptt1": 2 * fwd + bwd,
                "fptt_warmup": fwd + 16 * T * B * H, "fptt_shooting": fwd + 16 * T * B * H}[op]
    G = GATES[cell]
    P = G * H * (I + H + 2)
    S = 2 * H if cell == "lstm" else H
    fwd, bwd = _dense_forward(cell, T, B, I, H), _dense_backward(cell, T, B, I, H)
    return {"forward": fwd, "backward": bwd,
            "rtrl": fwd + 2 * T * B * S * S * P + 2 * T * B * S * P,
            "snap1": fwd + 6 * T * B * P, "cec": fwd + 8 * T * B * P,
            "truncated": fwd + bwd, "spatial": fwd + bwd,
            "fptt": 2 * fwd + (8 / 3) * T * B * S ** 3 + bwd,
            "fptt1": fwd + (2 / 3) * T * B * S ** 3 + bwd,
            "fptt_warmup": fwd + 2 * T * B * S ** 3,
            "fptt_shooting": fwd + (8 / 3) * T * B * S ** 3}[op]


def intensity(kernel: str, size: dict, inputs: dict, outputs) -> tuple[float, int]:
    """(FLOPs, compulsory bytes) of one call."""
    return float(flops(kernel, size, inputs)), array_bytes(inputs) + array_bytes(outputs)


__all__ = ["flops", "array_bytes", "intensity", "np"]
