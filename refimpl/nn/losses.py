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

The arrays may be NumPy's or a backend's (CuPy, MLX through its adapter): the functions take the namespace from their
arguments, xp = namespace(out, y, mask) (refimpl/arrays.py), and use only the vocabulary listed there, so a training
step on a device computes its loss there. The value is a 0-d array of that namespace (for NumPy a NumPy scalar, which
np.float64 turns into a Python float); a caller that needs a Python number calls float() itself — on a device that
is the one crossing to the host, so do it only where the value is logged. The checks read shapes and dtypes of any
array, but the values (label range, finiteness, bce's [0, 1], the mask's signs) only of NumPy arrays: reading a
device array's values would copy it to the host on every step. Check them on the host before moving the data (the
training entry points do, through refimpl.nn.model.check_inputs).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from ..arrays import dtype_of, is_numpy, namespace
from ..checks import check_finite
from ..errors import DTypeError, ShapeError, UnknownNameError, UnsupportedError
from .layers import sigmoid


def _mse(out, y):
    xp = namespace(out, y)
    d = out - y
    return 0.5 * xp.sum(d * d, axis=-1), d                                      # (40), (41)


def _ce(out, labels):
    xp = namespace(out, labels)
    shifted = out - xp.max(out, axis=-1, keepdims=True)                         # ŷ − M
    lse = xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))               # (42) logsumexp − M
    logp = shifted - lse                                                        # log softmax(ŷ)
    c = xp.expand_dims(labels, axis=-1)                                         # (..., 1)
    picked = xp.take_along_axis(logp, c, axis=-1)[..., 0]                       # log softmax(ŷ)_c
    classes = xp.arange(out.shape[-1])                                          # 0 … O − 1
    onehot = xp.astype(xp.astype(c, classes.dtype) == classes, out.dtype)       # onehot(c), built without assignment
    return -picked, xp.exp(logp) - onehot                                       # (42), (43)


def _bce(out, y):
    xp = namespace(out, y)
    l = xp.maximum(out, xp.zeros_like(out)) - out * y + xp.log1p(xp.exp(-xp.abs(out)))   # (44)
    return xp.sum(l, axis=-1), sigmoid(out) - y                                 # (44), (45)


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


#: dtype kind → the dtype names of that kind, looked up in a namespace that is not NumPy's (for _dtype_kind).
_KIND_NAMES = (("bool", ("bool",)),
               ("integer", ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")),
               ("floating", ("float16", "bfloat16", "float32", "float64")))


def _dtype_kind(a) -> str:
    """'bool' | 'integer' | 'floating' | 'other': the kind of a's dtype, read from the dtype, never from the values."""
    if isinstance(a.dtype, np.dtype):                    # NumPy and CuPy (whose dtypes are NumPy's)
        return {"b": "bool", "i": "integer", "u": "integer", "f": "floating"}.get(a.dtype.kind, "other")
    xp = namespace(a)
    for kind, names in _KIND_NAMES:
        if any(a.dtype == getattr(xp, n) for n in names if hasattr(xp, n)):
            return kind
    return "other"


def _is_array(a) -> bool:
    return hasattr(a, "shape") and hasattr(a, "dtype") and not isinstance(a, np.generic)


def _on_host(a) -> bool:
    """Whether a's values may be read here: a NumPy array (a device array's values are not read: no host copy)."""
    return is_numpy(namespace(a))


def check_mask(mask, T: int, B: int) -> None:
    """A per-step mask: an array of shape (T, B) or (T,), bool/integer/float, finite, every entry ≥ 0.

    The values (finite, ≥ 0) are checked for a NumPy mask only; a backend's array is checked for shape and dtype."""
    if not _is_array(mask):
        raise DTypeError(f"mask must be a numpy.ndarray (or the backend's array) of shape (T, B) or (T,), got "
                         f"{type(mask).__name__}; convert it with numpy.asarray(...)")
    shape = tuple(mask.shape)
    if shape not in ((T, B), (T,)):
        raise ShapeError(f"mask has shape {shape} but (T, B) = {(T, B)} or (T,) = {(T,)} is required "
                         f"(one weight per time step and sequence; a (T,) mask is shared by the batch)")
    kind = _dtype_kind(mask)
    if kind == "other":
        raise DTypeError(f"mask has dtype {mask.dtype}; use bool, integer or float weights")
    if not _on_host(mask):
        return
    if kind == "floating":
        check_finite("mask", mask)
    if np.any(mask < 0):
        raise UnsupportedError(f"mask has negative entries (min {mask.min()}); mask entries are nonnegative "
                               f"weights, 0 = step ignored, 1 = step counted")


def check_target(name: str, out_shape: tuple, y, dtype=None) -> None:
    """Check the target y of loss `name` for an output of shape out_shape ((T, B, O) or (B, O)).

    mse / bce: a floating array with the output's shape (and dtype `dtype` if given), finite; bce also in [0, 1].
    ce: an integer array of shape out_shape[:-1] with values in [0, O).
    The values (finite, the label range, bce's [0, 1]) are checked for a NumPy y only; a backend's array is checked
    for shape and dtype (its values stay on the device).
    """
    loss = resolve_loss(name)
    letters = "(T, B, O)" if len(out_shape) == 3 else "(B, O)"
    if not _is_array(y):
        raise DTypeError(f"y must be a numpy.ndarray (or the backend's array), got {type(y).__name__}; convert it "
                         f"with numpy.asarray(...)")
    shape, kind, host = tuple(y.shape), _dtype_kind(y), _on_host(y)
    if loss.target == "labels":
        want = tuple(out_shape[:-1])
        if kind != "integer":
            raise DTypeError(f"labels y for loss 'ce' have dtype {y.dtype}; integer class indices are required "
                             f"(convert with y.astype(numpy.int64)); for real-valued targets use loss 'mse' or 'bce'")
        if shape != want:
            raise ShapeError(f"labels y for loss 'ce' have shape {shape} but {want} is required (one label per "
                             f"output row: the output {letters} = {tuple(out_shape)} without its last axis)")
        n = out_shape[-1]
        if not host:
            return
        bad = (y < 0) | (y >= n)
        if np.any(bad):
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise UnsupportedError(f"labels y for loss 'ce' must lie in [0, {n}) (n_out = {n} classes), but "
                                   f"y{list(idx)} = {y[idx]}; relabel the classes as 0 … {n - 1} or raise n_out")
        return
    if kind != "floating":
        raise DTypeError(f"targets y for loss {name!r} have dtype {y.dtype}; a floating array is required "
                         f"(convert with y.astype(numpy.float64)); for class labels use loss 'ce'")
    if dtype is not None and y.dtype != (np.dtype(dtype) if host else dtype_of(namespace(y), dtype)):
        raise DTypeError(f"targets y have dtype {y.dtype} but {np.dtype(dtype)} is required (the model dtype); "
                         f"convert with y.astype(numpy.{np.dtype(dtype).name})")
    if shape != tuple(out_shape):
        raise ShapeError(f"targets y for loss {name!r} have shape {shape} but the output's shape {letters} = "
                         f"{tuple(out_shape)} is required")
    if not host:
        return
    check_finite("y", y)
    if name == "bce" and (np.any(y < 0) or np.any(y > 1)):
        raise UnsupportedError(f"targets y for loss 'bce' must lie in [0, 1] (bits or probabilities), got values "
                               f"in [{y.min()}, {y.max()}]")


def loss_forward(name: str, out, y, mask=None):
    """The loss (38) and its gradient (39) with respect to the output, in the namespace of out, y and mask.

    Args:
        name: 'mse' | 'ce' | 'bce'.
        out: the model output ŷ, per-step (T, B, O) or pooled (B, O).
        y: the target: labels of shape out.shape[:-1] (ce) or an array of out's shape (mse, bce).
        mask: (T, B) or (T,) step weights for a per-step output (default all ones); must be None for a pooled one.
    Returns:
        (value: a 0-d array of out's namespace and dtype — for NumPy a NumPy scalar (np.float64 is a Python float);
        float(value) where a Python number is needed —, dout: ∂L/∂ŷ with out's shape and dtype). The value keeps
        out's precision, so a finite-difference oracle may run in extended precision.
    """
    loss = resolve_loss(name)
    if not _is_array(out) or out.ndim not in (2, 3) or _dtype_kind(out) != "floating":
        raise ShapeError(f"the output must be a real array of shape (T, B, O) or (B, O), got "
                         f"{getattr(out, 'shape', type(out).__name__)}")
    check_target(name, tuple(out.shape), y)
    if mask is not None and out.ndim == 2:
        raise ShapeError(f"a mask was given for a pooled output of shape (B, O) = {tuple(out.shape)}; masks weight "
                         f"time steps of per-step outputs (T, B, O). For pooled outputs the pooling uses the mask "
                         f"(model.forward(..., mask=mask) does this); pass mask=None here")
    try:
        xp = namespace(out, y, mask)
    except TypeError:
        raise DTypeError(f"the output ({type(out).__name__}), y ({type(y).__name__}) and the mask "
                         f"({type(mask).__name__}) must be arrays of one library; move them together with the "
                         f"backend's to_backend(...)") from None
    B = out.shape[-2]
    if mask is None:
        m = xp.full(tuple(out.shape[:-1]), 1.0, dtype=out.dtype)
    else:
        T = out.shape[0]
        check_mask(mask, T, B)
        m = xp.broadcast_to(xp.reshape(xp.astype(mask, out.dtype), (T, -1)), (T, B))
    l, dl = loss.per_step(out, y)                                               # l (T, B) or (B,)
    value = xp.sum(m * l) / B                                                   # (38)
    dout = xp.expand_dims(m / B, axis=-1) * dl                                  # (39)
    return value, (dout if dout.dtype == out.dtype else xp.astype(dout, out.dtype))
