r"""Backprop-free learning in feed-forward networks: BP, DFA, DRTP and local losses, hand-derived, with trackers.

The derivation, with the same numbering, is docs/derivations/bpfree.md. Every rule here is one *projection* rule:
hidden layer l owns a fixed random matrix B_l, projects its output h_l to the target space, p_l = h_l B_l, and takes
the gradient of a local loss J_l(p_l) with respect to its own parameters only. The rules differ only in the error
ε_l = ∂J_l/∂p_l they put at p_l (eqs. 13–16). Nothing propagates from one hidden layer to the one below, except in `bp`.

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
    (3)  running averages (training, momentum m = 0.1):  μ̄ ← (1 − m) μ̄ + m μ,  σ̄² ← (1 − m) σ̄² + m σ² B/(B − 1)
    (4)  g_l = φ(z_l),   φ ∈ {tanh, relu: max(z, 0), leaky-relu: max(z, αz) with α = 0.01, swish: z σ(z)}
    (5)  dropout (training only): h_l = g_l ⊙ M_l,  M_l = Bernoulli(1 − p) / (1 − p);  evaluation: h_l = g_l
    (6)  output: z_o = h_L W_oᵀ + b_o                                                  (B, O)
    (7)  classification: L = (1/B) Σ_b −log softmax(z_o,b)_{c_b};   y* = onehot(c)          (losses.py (42))
         reconstruction: ŷ = σ(z_o),  L = (1/B) Σ_b ½ ‖ŷ_b − x_b‖²;   y* = x
    (8)  the output error, at the logits:  e = ∂L/∂z_o = (softmax(z_o) − y*)/B   or   (ŷ − x) ⊙ ŷ (1 − ŷ)/B

The local backward of hidden layer l, from an adjoint h̄_l of its output (x̄ = ∂(loss)/∂x):

    (9)  ḡ_l = h̄_l ⊙ M_l                                       (dropout; ḡ_l = h̄_l without it)
    (10) z̄_l = ḡ_l ⊙ φ'(z_l):  tanh 1 − φ²;  relu [z > 0];  leaky-relu 1 or α;  swish σ(z)(1 + z(1 − σ(z)))
    (11) batch norm: γ̄ = Σ_b z̄ ⊙ â,  β̄ = Σ_b z̄,  â̄ = z̄ ⊙ γ,  ā = r (â̄ − mean_b â̄ − â ⊙ mean_b(â̄ ⊙ â))
         (layers.py (9) with the mean over the batch instead of the features);  without batch norm ā_l = z̄_l
    (12) W̄_l = ā_lᵀ h_{l−1},  b̄_l = Σ_b ā_l,  and (bp only) h̄_{l−1} = ā_l W_l                  layers.py (2)–(3)

The injected adjoint h̄_l of each rule (p_l = h_l B_l; J_l is the layer's local loss; ε_l = ∂J_l/∂p_l (B, K)):

    (13) bp       h̄_l from (12) of the layer above (h̄_L = e W_o): the true gradient
    (14) dfa      J_l = Σ_b ⟨e_b, p_l,b⟩ with e held fixed:         ε_l = e,                   h̄_l = e B_lᵀ
    (15) drtp     J_l = (1/B) Σ_b ⟨y*_b, p_l,b⟩:                     ε_l = y*/B,                h̄_l = (y*/B) B_lᵀ
    (16) ll-ce    J_l = (1/B) Σ_b −log softmax(p_l,b)_{c_b}:          ε_l = (softmax(p_l) − y*)/B
         ll-mse   J_l = (1/B) Σ_b ½ ‖σ(p_l,b) − y*_b‖²:               ε_l = (σ(p_l) − y*) ⊙ σ(p_l)(1 − σ(p_l))/B
                  and h̄_l = ε_l B_lᵀ for both
    (17) every rule trains the output layer with its true gradient: W̄_o = eᵀ h_L, b̄_o = Σ_b e

Trackers (per layer; docs/derivations/bpfree.md §5):

    (18) bp-cosine          cos(vec ΔW_l, vec ∇^bp W_l): the rule's update against the true gradient, same batch
    (19) weight-alignment   hidden l ≥ 2:  cos(vec W_l, vec(B_l B_{l−1}ᵀ)),  both (n_l, n_{l−1});
                            output:        cos(vec W_o, vec B_Lᵀ),          both (O, n_L)
                            (layer 1 has no feedback path below it: None)
    (20) gradient norms     ‖ΔW_l‖, ‖Δb_l‖

Initialisation (`init` for the forward weights, `feedback_init` for B_l; biases start at 0):
    orthogonal    Q of the QR decomposition of a standard normal matrix, signs fixed by diag(R) (gain 1): orthonormal
                  rows or columns, whichever are fewer
    lecun         normal with variance 1/fan_in, truncated at two standard deviations (and rescaled so that the
                  variance is exactly 1/fan_in); fan_in = n_{l−1} for W_l (n_l, n_{l−1}), n_l for B_l (n_l, K)
                  (p_l = h_l B_l reads n_l inputs)

NOTE (scales): the global loss and every local loss are batch means, so that ε_l carries the same 1/B in every rule.
(A Keras version of these rules sums the local losses over the batch while averaging the global one; with Adam the
difference vanishes, with SGD it is a factor B.) DRTP's sign: Frenkel et al. inject +y* B_lᵀ; the error it stands
in for, e = ŷ − y*, has the sign of −y* (plus a constant), but B_l and −B_l are equally likely under both init
schemes, so the sign convention does not change the distribution of the rule.

Nothing here mutates its arguments; float32 inputs give float32 outputs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..cells.common import sigmoid
from ..checks import resolve_dtype
from ..errors import BpfreeWarning, DTypeError, ShapeError, UnknownNameError, UnsupportedError
from ..nn.init import INITS, init_matrix
from ..nn.layers import LinearCache, linear_backward, linear_forward
from ..nn.losses import loss_forward
from ..numerics import cosine

RULES = ("bp", "dfa", "drtp", "ll-ce", "ll-mse")
ACTIVATIONS = ("tanh", "relu", "leaky-relu", "swish")
BOUNDED_ACTIVATIONS = ("tanh",)
PROBLEMS = ("classification", "reconstruction")
BN_EPS = 1e-5
BN_MOMENTUM = 0.1
LEAKY_SLOPE = 0.01          # α of leaky-relu (PyTorch's default)


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
# Blocks: batch norm (2), (11); activations (4), (10); dropout (5), (9)

class BatchNormCache(NamedTuple):
    ahat: np.ndarray     # â, the normalised input       (B, n)
    rstd: np.ndarray     # r = 1/√(σ² + ε)               (n)
    weight: np.ndarray   # γ                             (n)


def batch_norm_forward(a: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = BN_EPS):
    """Training mode, batch statistics. a (B, n) → (z (B, n), BatchNormCache, (μ (n), σ² (n)))."""
    mu = a.mean(0)                                                                  # (2)  (n)
    var = ((a - mu) ** 2).mean(0)                                                   # (2)  (n)
    rstd = 1.0 / np.sqrt(var + eps)                                                 # (2)  (n)
    ahat = (a - mu) * rstd                                                          # (2)  (B, n)
    return weight * ahat + bias, BatchNormCache(ahat=ahat, rstd=rstd, weight=weight), (mu, var)   # (2)


def batch_norm_backward(dz: np.ndarray, cache: BatchNormCache) -> dict:
    """dz (B, n) → {"weight": γ̄ (n), "bias": β̄ (n), "x": ā (B, n)}, eq. (11)."""
    dweight = (dz * cache.ahat).sum(0)                                              # (11)
    dbias = dz.sum(0)                                                               # (11)
    dahat = dz * cache.weight                                                       # (11)  (B, n)
    da = cache.rstd * (dahat - dahat.mean(0) - cache.ahat * (dahat * cache.ahat).mean(0))   # (11)
    return {"weight": dweight, "bias": dbias, "x": da}


def batch_norm_eval(a: np.ndarray, weight, bias, running_mean, running_var, eps: float = BN_EPS) -> np.ndarray:
    """Evaluation mode (2): the running averages in place of the batch statistics."""
    return weight * (a - running_mean) / np.sqrt(running_var + eps) + bias


class ActivationCache(NamedTuple):
    z: np.ndarray        # the input             (B, n)
    g: np.ndarray        # φ(z)                   (B, n)
    name: str


def activation_forward(z: np.ndarray, name: str):
    """φ(z), eq. (4). z (B, n) → (g (B, n), ActivationCache)."""
    if name == "tanh":
        g = np.tanh(z)
    elif name == "relu":
        g = np.maximum(z, 0.0)
    elif name == "leaky-relu":
        g = np.where(z > 0, z, LEAKY_SLOPE * z)
    elif name == "swish":
        g = z * sigmoid(z)
    else:
        raise UnknownNameError("activation", name, ACTIVATIONS)
    return g.astype(z.dtype, copy=False), ActivationCache(z=z, g=g, name=name)


def activation_backward(dg: np.ndarray, cache: ActivationCache) -> np.ndarray:
    """z̄ = ḡ ⊙ φ'(z), eq. (10)."""
    z, g = cache.z, cache.g
    if cache.name == "tanh":
        d = 1.0 - g * g                                                             # (10)
    elif cache.name == "relu":
        d = (z > 0).astype(z.dtype)                                                 # (10)
    elif cache.name == "leaky-relu":
        d = np.where(z > 0, 1.0, LEAKY_SLOPE).astype(z.dtype)                       # (10)
    else:
        s = sigmoid(z)
        d = s * (1.0 + z * (1.0 - s))                                               # (10) swish
    return dg * d


def dropout_mask(shape: tuple, p: float, rng: np.random.Generator, dtype) -> np.ndarray:
    """M = Bernoulli(1 − p)/(1 − p), eq. (5) (inverted dropout: E[M] = 1)."""
    return ((rng.random(shape) >= p) / (1.0 - p)).astype(dtype)


# ----------------------------------------------------------------------------------------------------------------
# The network: forward (1)–(8), the rules (9)–(17)

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
            a, norm, (mu, var) = batch_norm_forward(a, params[f"{pre}.norm.weight"], params[f"{pre}.norm.bias"])
            if buffers is not None and len(x) > 1:                                              # (3)
                m, B = BN_MOMENTUM, len(x)
                new_buffers[f"{pre}.norm.running_mean"] = (1 - m) * buffers[f"{pre}.norm.running_mean"] + m * mu
                new_buffers[f"{pre}.norm.running_var"] = ((1 - m) * buffers[f"{pre}.norm.running_var"]
                                                          + m * var * (B / (B - 1)))
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


def predict(net: Net, params: dict, x: np.ndarray, buffers: dict | None = None) -> np.ndarray:
    """Evaluation-mode output: class scores z_o (classification) or ŷ = σ(z_o) (reconstruction), (B, O)."""
    z, _, _ = forward(net, params, x, train=False, buffers=buffers)
    return z if net.problem == "classification" else sigmoid(z)


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


# ----------------------------------------------------------------------------------------------------------------
# Trackers (18)–(20)

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
