r"""Losses: value and gradient with respect to the model output, hand-derived (DESIGN.md §4).

Shapes: T time, B batch, O output width (n_out). The output ŷ is per-step (T, B, O) — pooling `none` or
`cumulative_mean` — or pooled (B, O) — pooling `last` or `mean`. Numbering continues refimpl/nn/layers.py; the
derivation is docs/derivations/model.md.

    (38) L = (1/B) Σ_b Σ_t m_tb l(ŷ_tb, y_tb)        per-step ŷ (T, B, O); mask m (T, B) or (T,), default all ones
         L = (1/B) Σ_b l(ŷ_b, y_b)                   pooled ŷ (B, O): no time sum, no mask (the pooling used it)
    (39) ∂L/∂ŷ_tb = (m_tb / B) ∂l/∂ŷ_tb              (pooled: (1/B) ∂l/∂ŷ_b)

The per-step losses l, each with its derivative right below it:

    mse  — y real, same shape as ŷ:
    (40) l = ½ Σ_o (ŷ_o − y_o)²
    (41) ∂l/∂ŷ = ŷ − y
    ce   — y integer labels c of shape ŷ.shape[:-1], values in [0, O):
    (42) l = −log softmax(ŷ)_c = logsumexp(ŷ) − ŷ_c,  logsumexp(ŷ) = M + log Σ_o e^{ŷ_o − M},  M = max_o ŷ_o
    (43) ∂l/∂ŷ = softmax(ŷ) − onehot(c)
    bce  — the multi-bit copy task: y ∈ [0, 1] per bit, same shape as ŷ (ŷ are logits, one per bit):
    (44) l = Σ_o −y_o log σ(ŷ_o) − (1 − y_o) log(1 − σ(ŷ_o)) = Σ_o max(ŷ_o, 0) − ŷ_o y_o + log(1 + e^{−|ŷ_o|})
         (the right-hand form never overflows and never takes log 0)
    (45) ∂l/∂ŷ = σ(ŷ) − y

`loss_forward(name, out, y, mask)` validates everything (the names, the label range and dtype, the target and mask
shapes) and raises refimpl.errors with the fix in the message.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from ..checks import check_finite
from ..errors import DTypeError, ShapeError, UnknownNameError, UnsupportedError
from .layers import sigmoid


def _mse(out: np.ndarray, y: np.ndarray):
    d = out - y
    return 0.5 * np.sum(d * d, axis=-1), d                                      # (40), (41)


def _ce(out: np.ndarray, labels: np.ndarray):
    shifted = out - out.max(-1, keepdims=True)                                  # ŷ − M
    lse = np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))               # (42) logsumexp − M
    logp = shifted - lse                                                        # log softmax(ŷ)
    picked = np.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]       # log softmax(ŷ)_c
    onehot = np.zeros_like(out)
    np.put_along_axis(onehot, labels[..., None], 1.0, axis=-1)
    return -picked, np.exp(logp) - onehot                                       # (42), (43)


def _bce(out: np.ndarray, y: np.ndarray):
    l = np.maximum(out, 0.0) - out * y + np.log1p(np.exp(-np.abs(out)))         # (44)
    return np.sum(l, axis=-1), sigmoid(out) - y                                 # (44), (45)


class Loss(NamedTuple):
    """A per-step loss: `per_step(ŷ (..., O), y) -> (l (...), ∂l/∂ŷ (..., O))` and the kind of target it takes."""
    name: str
    target: str                       # "labels" (integer class indices) or "real" (same shape as ŷ)
    per_step: Callable
    about: str


#: name → Loss. The one place a loss name is looked up.
LOSSES: dict[str, Loss] = {
    "mse": Loss("mse", "real", _mse, "½‖ŷ − y‖², y real with the shape of the output"),
    "ce": Loss("ce", "labels", _ce, "cross-entropy −log softmax(ŷ)[y], y integer labels in [0, n_out)"),
    "bce": Loss("bce", "real", _bce, "sum over bits of logistic losses, y in [0, 1] with the shape of the output"),
}


def resolve_loss(name: str) -> Loss:
    if name not in LOSSES:
        raise UnknownNameError("loss", name, LOSSES,
                               "mse (real targets), ce (integer class labels) or bce (bits in [0, 1])")
    return LOSSES[name]


def check_mask(mask, T: int, B: int) -> None:
    """A per-step mask: an ndarray of shape (T, B) or (T,), bool/integer/float, finite, every entry ≥ 0."""
    if not isinstance(mask, np.ndarray):
        raise DTypeError(f"mask must be a numpy.ndarray of shape (T, B) or (T,), got {type(mask).__name__}; "
                         f"convert it with numpy.asarray(...)")
    if mask.shape not in ((T, B), (T,)):
        raise ShapeError(f"mask has shape {mask.shape} but (T, B) = {(T, B)} or (T,) = {(T,)} is required "
                         f"(one weight per time step and sequence; a (T,) mask is shared by the batch)")
    if not (mask.dtype == np.bool_ or np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)):
        raise DTypeError(f"mask has dtype {mask.dtype}; use bool, integer or float weights")
    if np.issubdtype(mask.dtype, np.floating):
        check_finite("mask", mask)
    if np.any(mask < 0):
        raise UnsupportedError(f"mask has negative entries (min {mask.min()}); mask entries are nonnegative "
                               f"weights, 0 = step ignored, 1 = step counted")


def check_target(name: str, out_shape: tuple, y, dtype=None) -> None:
    """Check the target y of loss `name` for an output of shape out_shape ((T, B, O) or (B, O)).

    mse / bce: a floating array with the output's shape (and dtype `dtype` if given), finite; bce also in [0, 1].
    ce: an integer array of shape out_shape[:-1] with values in [0, O).
    """
    loss = resolve_loss(name)
    letters = "(T, B, O)" if len(out_shape) == 3 else "(B, O)"
    if not isinstance(y, np.ndarray):
        raise DTypeError(f"y must be a numpy.ndarray, got {type(y).__name__}; convert it with numpy.asarray(...)")
    if loss.target == "labels":
        want = tuple(out_shape[:-1])
        if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
            raise DTypeError(f"labels y for loss 'ce' have dtype {y.dtype}; integer class indices are required "
                             f"(convert with y.astype(numpy.int64)); for real-valued targets use loss 'mse' or 'bce'")
        if y.shape != want:
            raise ShapeError(f"labels y for loss 'ce' have shape {y.shape} but {want} is required (one label per "
                             f"output row: the output {letters} = {tuple(out_shape)} without its last axis)")
        n = out_shape[-1]
        bad = (y < 0) | (y >= n)
        if np.any(bad):
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise UnsupportedError(f"labels y for loss 'ce' must lie in [0, {n}) (n_out = {n} classes), but "
                                   f"y{list(idx)} = {y[idx]}; relabel the classes as 0 … {n - 1} or raise n_out")
        return
    if not np.issubdtype(y.dtype, np.floating):
        raise DTypeError(f"targets y for loss {name!r} have dtype {y.dtype}; a floating array is required "
                         f"(convert with y.astype(numpy.float64)); for class labels use loss 'ce'")
    if dtype is not None and y.dtype != np.dtype(dtype):
        raise DTypeError(f"targets y have dtype {y.dtype} but {np.dtype(dtype)} is required (the model dtype); "
                         f"convert with y.astype(numpy.{np.dtype(dtype).name})")
    if y.shape != tuple(out_shape):
        raise ShapeError(f"targets y for loss {name!r} have shape {y.shape} but the output's shape {letters} = "
                         f"{tuple(out_shape)} is required")
    check_finite("y", y)
    if name == "bce" and (np.any(y < 0) or np.any(y > 1)):
        raise UnsupportedError(f"targets y for loss 'bce' must lie in [0, 1] (bits or probabilities), got values "
                               f"in [{y.min()}, {y.max()}]")


def loss_forward(name: str, out: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None):
    """The loss (38) and its gradient (39) with respect to the output.

    Args:
        name: 'mse' | 'ce' | 'bce'.
        out: the model output ŷ, per-step (T, B, O) or pooled (B, O).
        y: the target: labels of shape out.shape[:-1] (ce) or an array of out's shape (mse, bce).
        mask: (T, B) or (T,) step weights for a per-step output (default all ones); must be None for a pooled one.
    Returns:
        (value: a NumPy scalar of out's dtype (np.float64 is a Python float), dout: ∂L/∂ŷ with out's shape and
        dtype). The value keeps out's precision, so a finite-difference oracle may run in extended precision.
    """
    loss = resolve_loss(name)
    if not isinstance(out, np.ndarray) or out.ndim not in (2, 3) or not np.issubdtype(out.dtype, np.floating):
        raise ShapeError(f"the output must be a real array of shape (T, B, O) or (B, O), got "
                         f"{getattr(out, 'shape', type(out).__name__)}")
    check_target(name, out.shape, y)
    B = out.shape[-2]
    if mask is None:
        m = np.ones(out.shape[:-1], dtype=out.dtype)
    elif out.ndim == 2:
        raise ShapeError(f"a mask was given for a pooled output of shape (B, O) = {out.shape}; masks weight time "
                         f"steps of per-step outputs (T, B, O). For pooled outputs the pooling uses the mask "
                         f"(model.forward(..., mask=mask) does this); pass mask=None here")
    else:
        T = out.shape[0]
        check_mask(mask, T, B)
        m = np.broadcast_to(mask.astype(out.dtype).reshape(T, -1), (T, B))
    l, dl = loss.per_step(out, y)                                               # l (T, B) or (B,)
    value = np.sum(m * l) / B                                                   # (38)
    dout = (m / B)[..., None] * dl                                              # (39)
    return value, dout.astype(out.dtype, copy=False)
