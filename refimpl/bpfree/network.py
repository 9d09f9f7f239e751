r"""The feed-forward network of the backprop-free rules: construction, forward pass and the local backward of one
hidden layer, hand-derived. The rules that choose what each hidden layer's backward starts from are in rules.py, the
trackers in trackers.py.

The derivation, with the same numbering, is docs/derivations/bpfree.md (§1–2 here; (13)–(17) are in rules.py and
(18)–(20) in trackers.py). Batch norm and the activations are refimpl/nn/layers.py's (BN1)–(BN6) and (ACT1)–(ACT2).

Shapes: B batch, I input width, n_l units of hidden layer l (l = 1 … L), O output width, K the width of the target
space the projections map to (K = O: the classes, or the I pixels for reconstruction, where O = I).

Network `Net(sizes=(I, n_1, …, n_L, O), activation, batch_norm, dropout, problem)`; parameters (a flat dict):

    layers.{l-1}.weight (n_l, n_{l-1}), layers.{l-1}.bias (n_l)         hidden layer l (0-based in the names)
    layers.{l-1}.norm.weight (n_l), layers.{l-1}.norm.bias (n_l)        with batch_norm: γ_l, β_l (1 and 0 at init)
    readout.weight (O, n_L), readout.bias (O)                           the output layer
buffers (not trained): layers.{l-1}.norm.running_mean / running_var (n_l); feedback (fixed, never trained):
feedback.{l-1} = B_l (n_l, K).

Forward, hidden layer l = 1 … L (h_0 = x):

    (1)  a_l = h_{l−1} W_lᵀ + b_l                                                    (B, n_l)   layers.py (1)
    (2)  batch norm, training: μ = (1/B) Σ_b a,  σ² = (1/B) Σ_b (a − μ)²,  r = 1/√(σ² + ε),  â = (a − μ) r,
         z_l = γ ⊙ â + β;   evaluation: μ, σ² replaced by the running averages;   without batch norm: z_l = a_l
                                                                                           layers.py (BN1)–(BN3)
    (3)  running averages (training, momentum m = 0.1):  μ̄ ← (1 − m) μ̄ + m μ,  σ̄² ← (1 − m) σ̄² + m σ² B/(B − 1)
                                                                                           layers.py (BN4)
    (4)  g_l = φ(z_l),   φ ∈ {tanh, relu: max(z, 0), leaky-relu: max(z, αz) with α = 0.01, swish: z σ(z)}
                                                                                           layers.py (ACT1)
    (5)  dropout (training only): h_l = g_l ⊙ M_l,  M_l = Bernoulli(1 − p) / (1 − p);  evaluation: h_l = g_l
    (6)  output: z_o = h_L W_oᵀ + b_o                                                  (B, O)
    (7)  classification: L = (1/B) Σ_b −log softmax(z_o,b)_{c_b};   y* = onehot(c)          (losses.py (42))
         reconstruction: ŷ = σ(z_o),  L = (1/B) Σ_b ½ ‖ŷ_b − x_b‖²;   y* = x
    (8)  the output error, at the logits:  e = ∂L/∂z_o = (softmax(z_o) − y*)/B   or   (ŷ − x) ⊙ ŷ (1 − ŷ)/B

The local backward of hidden layer l, from an adjoint h̄_l of its output (x̄ = ∂(loss)/∂x):

    (9)  ḡ_l = h̄_l ⊙ M_l                                       (dropout; ḡ_l = h̄_l without it)
    (10) z̄_l = ḡ_l ⊙ φ'(z_l):  tanh 1 − φ²;  relu [z > 0];  leaky-relu 1 or α;  swish σ(z)(1 + z(1 − σ(z)))
                                                                                           layers.py (ACT2)
    (11) batch norm: γ̄ = Σ_b z̄ ⊙ â,  β̄ = Σ_b z̄,  â̄ = z̄ ⊙ γ,  ā = r (â̄ − mean_b â̄ − â ⊙ mean_b(â̄ ⊙ â))
         (layers.py (9) with the mean over the batch instead of the features);  without batch norm ā_l = z̄_l
                                                                                           layers.py (BN5)–(BN6)
    (12) W̄_l = ā_lᵀ h_{l−1},  b̄_l = Σ_b ā_l,  and (bp only) h̄_{l−1} = ā_l W_l                  layers.py (2)–(3)

Initialisation (`init` for the forward weights, `feedback_init` for B_l; biases start at 0; refimpl/nn/init.py):
    orthogonal    Q of the QR decomposition of a standard normal matrix, signs fixed by diag(R) (gain 1): orthonormal
                  rows or columns, whichever are fewer
    lecun         normal with variance 1/fan_in, truncated at two standard deviations (and rescaled so that the
                  variance is exactly 1/fan_in); fan_in = n_{l−1} for W_l (n_l, n_{l−1}), n_l for B_l (n_l, K)
                  (p_l = h_l B_l reads n_l inputs)

Nothing here mutates its arguments; float32 inputs give float32 outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..cells.common import sigmoid
from ..checks import resolve_dtype
from ..errors import DTypeError, ShapeError, UnknownNameError, UnsupportedError
from ..nn.init import INITS, init_matrix
from ..nn.layers import (ACTIVATIONS, ActivationCache, BatchNormCache, LinearCache, activation_backward,
                         activation_forward, batch_norm_backward, batch_norm_eval, batch_norm_forward,
                         batch_norm_running, linear_backward, linear_forward)
from ..nn.losses import loss_forward

PROBLEMS = ("classification", "reconstruction")


@dataclass(frozen=True)
class Net:
    """A multi-layer perceptron. sizes = (I, n_1, …, n_L, O), input first; O = I for reconstruction."""
    sizes: tuple
    activation: str = "tanh"
    batch_norm: bool = False
    dropout: float = 0.0
    problem: str = "classification"
    dtype: str = "float64"

    @property
    def n_hidden_layers(self) -> int:
        """L, the number of hidden layers."""
        return len(self.sizes) - 2

    @property
    def target_width(self) -> int:
        """K, the width of the target space the projections map to (= O)."""
        return self.sizes[-1]


# ----------------------------------------------------------------------------------------------------------------
# Construction: the network, its parameters, buffers and feedback matrices

def _check_net_options(sizes, activation, batch_norm, dropout, problem, dtype) -> tuple:
    if activation not in ACTIVATIONS:
        raise UnknownNameError("activation", activation, ACTIVATIONS)
    if problem not in PROBLEMS:
        raise UnknownNameError("problem", problem, PROBLEMS)
    try:
        sizes = tuple(int(n) for n in sizes)
    except (TypeError, ValueError):
        raise ShapeError(f"sizes must be a sequence of integers (I, n_1, …, n_L, O), got {sizes!r}") from None
    if len(sizes) < 3 or min(sizes) < 1:
        raise ShapeError(f"sizes {sizes} must list the input width, at least one hidden width and the output width, "
                         f"all ≥ 1, input first: e.g. (64, 128, 10)")
    if problem == "reconstruction" and sizes[-1] != sizes[0]:
        raise ShapeError(f"a reconstruction network outputs its input: sizes {sizes} must end with the input width "
                         f"{sizes[0]}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise UnsupportedError(f"dropout={dropout!r} is not allowed: it is the probability of dropping a unit and "
                               f"must lie in [0, 1); pass 0 for no dropout")
    return sizes, resolve_dtype(dtype).name


def make_net(sizes, *, activation: str = "tanh", batch_norm: bool = False, dropout: float = 0.0,
             problem: str = "classification", init: str = "orthogonal", seed: int = 0, dtype="float64"):
    """Build a Net and its parameters.

    Args:
        sizes: (I, n_1, …, n_L, O), input first; O = I for reconstruction.
        activation: one of ACTIVATIONS.  batch_norm: a batch-norm layer between each dense layer and its activation.
        dropout: drop probability p of the hidden units in training (0 = off).
        problem: 'classification' (softmax + cross-entropy) or 'reconstruction' (sigmoid + squared error to x).
        init: the forward weights' scheme, one of INITS; biases start at 0, γ at 1, β at 0.
        seed: seeds the np.random.Generator of the forward weights.  dtype: 'float64' | 'float32'.
    Returns:
        (net, params).
    """
    sizes, dtype = _check_net_options(sizes, activation, batch_norm, dropout, problem, dtype)
    net = Net(sizes=sizes, activation=activation, batch_norm=bool(batch_norm), dropout=float(dropout),
              problem=problem, dtype=dtype)
    if init not in INITS:
        raise UnknownNameError("forward init scheme", init, INITS)
    rng = np.random.default_rng([seed, 0])
    params = {}
    for l in range(net.n_hidden_layers):
        n_in, n_out = sizes[l], sizes[l + 1]
        params[f"layers.{l}.weight"] = init_matrix(init, (n_out, n_in), n_in, rng, dtype, "forward")
        params[f"layers.{l}.bias"] = np.zeros(n_out, dtype=dtype)
        if net.batch_norm:
            params[f"layers.{l}.norm.weight"] = np.ones(n_out, dtype=dtype)
            params[f"layers.{l}.norm.bias"] = np.zeros(n_out, dtype=dtype)
    params["readout.weight"] = init_matrix(init, (sizes[-1], sizes[-2]), sizes[-2], rng, dtype, "forward")
    params["readout.bias"] = np.zeros(sizes[-1], dtype=dtype)
    return net, params


def init_buffers(net: Net) -> dict:
    """The batch-norm running averages (3): mean 0, variance 1 ({} without batch norm)."""
    if not net.batch_norm:
        return {}
    buffers = {}
    for l in range(net.n_hidden_layers):
        n = net.sizes[l + 1]
        buffers[f"layers.{l}.norm.running_mean"] = np.zeros(n, dtype=net.dtype)
        buffers[f"layers.{l}.norm.running_var"] = np.ones(n, dtype=net.dtype)
    return buffers


def make_feedback(net: Net, init: str = "orthogonal", seed: int = 0) -> dict:
    """The fixed projections B_l (n_l, K), one per hidden layer: {"feedback.{l-1}": B_l}. Drawn from their own
    seeded stream, so the same seed gives the same B_l whatever the forward init."""
    if init not in INITS:
        raise UnknownNameError("feedback init scheme", init, INITS)
    rng = np.random.default_rng([seed, 1])
    K = net.target_width
    return {f"feedback.{l}": init_matrix(init, (net.sizes[l + 1], K), net.sizes[l + 1], rng, net.dtype, "feedback")
            for l in range(net.n_hidden_layers)}


# ----------------------------------------------------------------------------------------------------------------
# Forward (1)–(8), the local backward (9)–(12)

def dropout_mask(shape: tuple, p: float, rng: np.random.Generator, dtype) -> np.ndarray:
    """M = Bernoulli(1 − p)/(1 − p), eq. (5) (inverted dropout: E[M] = 1)."""
    return ((rng.random(shape) >= p) / (1.0 - p)).astype(dtype)


class HiddenCache(NamedTuple):
    dense: LinearCache                  # (1)
    norm: BatchNormCache | None         # (2), training mode; None without batch norm (or in evaluation)
    act: ActivationCache                # (4)
    mask: np.ndarray | None             # M_l of (5); None without dropout (or in evaluation)
    h: np.ndarray                       # h_l, the layer's output (B, n_l)


class NetCache(NamedTuple):
    x: np.ndarray                       # the input (B, I)
    hidden: list                        # [HiddenCache], one per hidden layer
    readout: LinearCache                # (6)
    z: np.ndarray                       # the output logits z_o (B, O)


def check_input(net: Net, x, y=None) -> None:
    """x (B, I) of the net's dtype; classification labels y (B,) integers in [0, O)."""
    if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != net.sizes[0]:
        raise ShapeError(f"x must be an array of shape (B, {net.sizes[0]}), got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    if x.dtype != np.dtype(net.dtype):
        raise DTypeError(f"x has dtype {x.dtype} but the network is {net.dtype}; convert it with "
                         f".astype(numpy.{net.dtype})")
    if net.problem == "classification":
        if y is None or not isinstance(y, np.ndarray) or y.shape != (x.shape[0],) \
                or not np.issubdtype(y.dtype, np.integer):
            raise ShapeError(f"classification needs integer labels y of shape ({x.shape[0]},), got "
                             f"{getattr(y, 'shape', y)!r}")
        if np.any(y < 0) or np.any(y >= net.sizes[-1]):
            raise UnsupportedError(f"labels must lie in [0, {net.sizes[-1]}), got values in [{y.min()}, {y.max()}]")


def forward(net: Net, params: dict, x: np.ndarray, *, train: bool = True, buffers: dict | None = None,
            rng: np.random.Generator | None = None, masks: list | None = None):
    """Eqs. (1)–(6). x (B, I) → (z_o (B, O), NetCache, new buffers).

    train=True: batch norm with batch statistics (and new running averages (3) returned), dropout with masks drawn
    from `rng` — or the given `masks` (one (B, n_l) array or None per hidden layer; all None = no dropout).
    train=False: running averages from `buffers`, no dropout. Inputs are never modified.
    """
    h, hidden, new_buffers = x, [], dict(buffers or {})
    for l in range(net.n_hidden_layers):
        pre = f"layers.{l}"
        a, dense = linear_forward(h, params[f"{pre}.weight"], params[f"{pre}.bias"])           # (1)
        norm = None
        if net.batch_norm and train:
            a, norm = batch_norm_forward(a, params[f"{pre}.norm.weight"], params[f"{pre}.norm.bias"])   # (2)
            if buffers is not None and len(x) > 1:                                              # (3)
                (new_buffers[f"{pre}.norm.running_mean"],
                 new_buffers[f"{pre}.norm.running_var"]) = batch_norm_running(
                    buffers[f"{pre}.norm.running_mean"], buffers[f"{pre}.norm.running_var"], norm, len(x))
        elif net.batch_norm:
            a = batch_norm_eval(a, params[f"{pre}.norm.weight"], params[f"{pre}.norm.bias"],
                                buffers[f"{pre}.norm.running_mean"], buffers[f"{pre}.norm.running_var"])   # (2)
        g, act = activation_forward(a, net.activation)                                          # (4)
        mask = None
        if train and masks is not None:
            mask = masks[l]
        elif train and net.dropout > 0:
            if rng is None:
                raise UnsupportedError("dropout in training needs a random generator: pass rng= (or masks=)")
            mask = dropout_mask(g.shape, net.dropout, rng, g.dtype)
        h = g * mask if mask is not None else g                                                 # (5)
        hidden.append(HiddenCache(dense=dense, norm=norm, act=act, mask=mask, h=h))
    z, readout = linear_forward(h, params["readout.weight"], params["readout.bias"])           # (6)
    return z, NetCache(x=x, hidden=hidden, readout=readout, z=z), new_buffers


def target(net: Net, x: np.ndarray, y) -> np.ndarray:
    """y* of (7): onehot(c) (B, O) for classification, x for reconstruction."""
    if net.problem == "reconstruction":
        return x
    onehot = np.zeros((len(y), net.sizes[-1]), dtype=net.dtype)
    onehot[np.arange(len(y)), y] = 1.0
    return onehot


def output_loss(net: Net, z: np.ndarray, x: np.ndarray, y):
    """(L, e = ∂L/∂z_o (B, O)), eqs. (7)–(8)."""
    if net.problem == "classification":
        value, e = loss_forward("ce", z, y)                                     # (7), (8) (softmax − y*)/B
        return value, e
    yhat = sigmoid(z)                                                           # (7)
    value, dyhat = loss_forward("mse", yhat, x)                                 # (7)  (ŷ − x)/B
    return value, dyhat * yhat * (1.0 - yhat)                                   # (8)


def hidden_backward(net: Net, l: int, dh: np.ndarray, cache: HiddenCache) -> dict:
    """The local backward (9)–(12) of hidden layer l from h̄_l: {dotted name: grad} of its parameters, and
    "x": h̄_{l−1}."""
    pre = f"layers.{l}"
    dg = dh * cache.mask if cache.mask is not None else dh                      # (9)
    dz = activation_backward(dg, cache.act)                                     # (10)
    grads = {}
    if cache.norm is not None:
        gn = batch_norm_backward(dz, cache.norm)                                # (11)
        grads[f"{pre}.norm.weight"], grads[f"{pre}.norm.bias"] = gn["weight"], gn["bias"]
        dz = gn["x"]
    gd = linear_backward(dz, cache.dense)                                       # (12)
    grads[f"{pre}.weight"], grads[f"{pre}.bias"], grads["x"] = gd["weight"], gd["bias"], gd["x"]
    return grads


def evaluate(net: Net, params: dict, x: np.ndarray, y, buffers: dict | None = None,
             batch_size: int = 512) -> tuple[float, float | None]:
    """(mean loss (7) per example, error rate in % (classification) or None), evaluation mode, over all of x."""
    total, wrong = 0.0, 0
    for start in range(0, len(x), batch_size):
        sl = slice(start, start + batch_size)
        z, _, _ = forward(net, params, x[sl], train=False, buffers=buffers)
        value, _ = output_loss(net, z, x[sl], None if y is None else y[sl])
        total += float(value) * len(x[sl])
        if net.problem == "classification":
            wrong += int(np.sum(np.argmax(z, -1) != y[sl]))
    return total / len(x), (100.0 * wrong / len(x) if net.problem == "classification" else None)
