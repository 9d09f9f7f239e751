r"""The feed-forward pieces of a model — linear, layer norm, batch norm, GELU, sigmoid and the other activations, the
MLP and GLU blocks, the LRU layer's output map and pooling over time — each a cs231n-style pair
``X_forward(...) -> (out, cache)`` and ``X_backward(dout, cache) -> grads``, derived by hand.

Shapes: T time, B batch, D / d feature width, N complex LRU state units, "..." any leading axes (the blocks act
on the last axis only, so (T, B, d) and (B, d) inputs both work). The derivation, with the same numbering, is
docs/derivations/model.md; equations (38)–(45) are in refimpl/nn/losses.py and (46)–(62) in refimpl/nn/model.py.
Batch norm and the activations relu, leaky-relu, swish serve the backprop-free networks (refimpl/bpfree/): their
labels (BN1)–(BN6), (ACT1)–(ACT2) are their own, and their derivation is docs/derivations/bpfree.md §1–2.
x̄ denotes ∂L/∂x (same shape as x); Σ_… sums over every leading axis (time and batch).

Linear (weight W (out, in) in torch layout, bias b (out)):

    (1)  out = x Wᵀ + b                                                                        (..., out)
    (2)  W̄ = Σ_… doutᵀ x        b̄ = Σ_… dout
    (3)  x̄ = dout W                                                                            (..., in)

Layer norm over the last axis (weight w, bias b, both (d); ε = 1e-5):

    (4)  μ = (1/d) Σ_k x_k        σ² = (1/d) Σ_k (x_k − μ)²        r = 1/√(σ² + ε)             (..., 1)
    (5)  x̂ = (x − μ) r                                                                          (..., d)
    (6)  out = w ⊙ x̂ + b
    (7)  w̄ = Σ_… dout ⊙ x̂        b̄ = Σ_… dout
    (8)  x̂̄ = dout ⊙ w
    (9)  x̄ = r (x̂̄ − mean_k x̂̄ − x̂ ⊙ mean_k(x̂̄ ⊙ x̂))
         (from ∂x̂_j/∂x_k = r (δ_jk − 1/d − x̂_j x̂_k / d): the mean and the variance each remove one direction)

Batch norm over the batch axis (the backprop-free networks; labelled (BN·) here, derived in
docs/derivations/bpfree.md as its eqs. (2), (3) and (11)). Input a (B, n), weight γ, bias β, both (n); ε = 1e-5,
momentum m = 0.1:

    (BN1) training:    μ = (1/B) Σ_b a_b        σ² = (1/B) Σ_b (a_b − μ)²        r = 1/√(σ² + ε)          (n)
    (BN2) â = (a − μ) r        out = γ ⊙ â + β                                                            (B, n)
    (BN3) evaluation:  out = γ ⊙ (a − μ̄)/√(σ̄² + ε) + β, the running averages μ̄, σ̄² in place of μ, σ²
    (BN4) running averages (training):  μ̄ ← (1 − m) μ̄ + m μ        σ̄² ← (1 − m) σ̄² + m σ² B/(B − 1)
    (BN5) γ̄ = Σ_b dout ⊙ â        β̄ = Σ_b dout        â̄ = dout ⊙ γ
    (BN6) ā = r (â̄ − mean_b â̄ − â ⊙ mean_b(â̄ ⊙ â))        (9) with the mean over the batch instead of the features

GELU, **the tanh approximation** (as torch's ``gelu(approximate="tanh")`` and ``jax.nn.gelu``'s default, which the
online-LRU code uses), not the exact erf form; with c = √(2/π), κ = 0.044715:

    (10) u = c (x + κ x³)        g = ½ x (1 + tanh u)
    (11) x̄ = ḡ ⊙ [½ (1 + tanh u) + ½ x (1 − tanh² u) c (1 + 3κ x²)]

Sigmoid (computed as ½(1 + tanh(x/2)), refimpl/cells/common.py: the same function, and nothing overflows):

    (12) s = σ(x) = 1/(1 + e^{−x})
    (13) x̄ = s̄ ⊙ s (1 − s)

Elementwise activations of the backprop-free networks (labelled (ACT·) here; docs/derivations/bpfree.md (4), (10)),
with α = 0.01 (PyTorch's leaky-relu default):

    (ACT1) g = φ(z):       tanh z;        relu max(z, 0);    leaky-relu max(z, αz);    swish z σ(z)
    (ACT2) z̄ = ḡ ⊙ φ'(z):  1 − g²;        [z > 0];           1 or α;                   σ(z)(1 + z(1 − σ(z)))

MLP feed-forward block, width d → ffn_mult·d → d (params fc1.weight (md, d), fc1.bias, fc2.weight (d, md), fc2.bias):

    (14) z₁ = y W₁ᵀ + b₁          (1)
    (15) z = GELU(z₁)             (10)
    (16) out = z W₂ᵀ + b₂         (1)
    (17) z̄, W̄₂, b̄₂ from dout     (2), (3)
    (18) z̄₁ = GELU'(z₁) ⊙ z̄       (11)
    (19) ȳ, W̄₁, b̄₁ from z̄₁      (2), (3)

GLU block, the online-LRU "full_glu", width d → d (params value.weight (d, d), value.bias, gate.weight (d, d),
gate.bias):

    (20) z = GELU(y)                                  (10)
    (21) v = z W_vᵀ + b_v                             (1)
    (22) q = z W_gᵀ + b_g        s = σ(q)             (1), (12)
    (23) out = v ⊙ s
    (24) v̄ = dout ⊙ s            s̄ = dout ⊙ v
    (25) q̄ = s̄ ⊙ s (1 − s)                           (13)
    (26) z̄ = v̄ W_v + q̄ W_g ;  W̄_v, b̄_v from v̄ and W̄_g, b̄_g from q̄     (2), (3)
    (27) ȳ = GELU'(y) ⊙ z̄                            (11)

Dropout inside the blocks (labelled (DR·); the online-LRU code's full_glu: z = drop(gelu(y)), then the GLU; refimpl's
mlp likewise between GELU and fc2). The mask M (..., md or d) is given, already scaled: M = keep / (1 − p) with
keep ~ Bernoulli(1 − p) (inverted dropout: E[M] = 1, so nothing changes at evaluation, where there is no mask).
It is drawn once per sequence and example and broadcast over time (the online-LRU code's broadcast_dims=[0]):
refimpl/nn/model.py, dropout_masks.

    (DR1) z ← z ⊙ M              after (15) / (20)
    (DR2) z̄ ← z̄ ⊙ M              before (18) / (27): the same mask

LRU layer output map (DESIGN.md §3: it belongs to the layer, not the cell). a is the cell's input (d), h its complex
states (N); C = C_re + i C_im (d, N), D (d). Adjoints follow DESIGN.md §4 (z̄ = ∂L/∂Re z + i ∂L/∂Im z):

    (28) y = Re(h Cᵀ) + D ⊙ a                                                                  (..., d)
    (29) h̄ = ȳ conj(C),   i.e. h̄_n = Σ_k conj(C_kn) ȳ_k   (h̄ = Cᴴ ȳ at each step)            (..., N)
         (w = Re z ⇒ z̄ = w̄ = ȳ, real; z = C h ⇒ h̄ += Cᴴ z̄)
    (30) C̄ = Σ_… ȳ ⊗ conj(h) (d, N);   ∂L/∂C_re = Re C̄,   ∂L/∂C_im = Im C̄
         (C = f(p) with ∂C/∂C_re = 1, ∂C/∂C_im = i:  ∂L/∂p = Re(conj(∂C/∂p) C̄) gives Re C̄ and Re(−i C̄) = Im C̄)
    (31) D̄ = Σ_… ȳ ⊙ a            ā = D ⊙ ȳ

Pooling over time, y (T, B, D); optional mask m (T, B) or (T,) (broadcast over B), nonzero = a valid step:

    (32) none:             p_t = y_t  (T, B, D);                ȳ_t = p̄_t
    (33) last:             τ_b = max{t : m_tb ≠ 0} (T − 1 without a mask);  p_b = y_{τ_b, b}  (B, D);
                           ȳ_tb = [t = τ_b] p̄_b
    (34) mean:             w_tb = m_tb / Σ_s m_sb (1/T without a mask);  p_b = Σ_t w_tb y_tb  (B, D);
                           ȳ_tb = w_tb p̄_b    — the true gradient
    (35) cumulative_mean:  p_t = (1/(t+1)) Σ_{s≤t} y_s   (T, B, D), the causal running mean
    (36)                   ȳ_t = p̄_t   — STRAIGHT-THROUGH, deliberately NOT the true gradient
    (37)                   (the true gradient would be ȳ_s = Σ_{t≥s} p̄_t / (t+1); it is not implemented)

NOTE (cumulative_mean): (36) is the identity, as the online-LRU / FPTT code's ``stop_gradient(cummean(y) − y) + y``.
The forward pass shows the loss a running average, but the backward pass pretends p_t = y_t, so the loss stays
*time-local* — the error at step t reaches only y_t — which the online algorithms (rtrl, online, fptt …) need: their
readout must have no memory. BPTT through a cumulative_mean model therefore computes the gradient of this surrogate,
not of the loss it reports; tests/nn/test_model.py checks exactly that. `none` and `cumulative_mean` ignore the mask (it
weights the per-step loss instead); `last` and `mean` use it (their pooled output has no time axis left to mask).

Nothing here mutates its arguments; float32 inputs give float32 outputs (constants are Python floats).

The array code is written once against the array API standard (refimpl/arrays.py, DESIGN.md §6): each function takes
its namespace from its arguments, ``xp = namespace(x, ...)``, and uses only the vocabulary listed there, so the same
functions run on NumPy arrays (the reference), CuPy arrays and MLX arrays. The init functions (``*_init``, with a NumPy
rng) create the parameters on the host; they are moved to a device once.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

from ..arrays import namespace
from ..cells.common import sigmoid  # σ(x), eq. (12), in the overflow-free form ½(1 + tanh(x/2))
from ..errors import UnknownNameError, UnsupportedError

GELU_C = math.sqrt(2.0 / math.pi)   # c in (10)
GELU_KAPPA = 0.044715               # κ in (10)
LAYER_NORM_EPS = 1e-5
BATCH_NORM_EPS = 1e-5
BATCH_NORM_MOMENTUM = 0.1           # m in (BN4)
ACTIVATIONS = ("tanh", "relu", "leaky-relu", "swish")   # φ of (ACT1)
LEAKY_SLOPE = 0.01                  # α of leaky-relu (PyTorch's default)
POOLINGS = ("none", "last", "mean", "cumulative_mean")
#: the poolings whose output keeps the time axis (T, B, D); the others give (B, D)
PER_STEP_POOLINGS = ("none", "cumulative_mean")
FFNS = ("mlp", "glu")


def _sum_leading(a: np.ndarray) -> np.ndarray:
    """Σ over every axis but the last: (..., k) → (k)."""
    xp = namespace(a)
    return xp.sum(xp.reshape(a, (-1, a.shape[-1])), axis=0)


def _outer_leading(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Σ_… a ⊗ b: (..., m), (..., n) → (m, n), as one matrix product (rows = every leading index)."""
    xp = namespace(a, b)
    return xp.matrix_transpose(xp.reshape(a, (-1, a.shape[-1]))) @ xp.reshape(b, (-1, b.shape[-1]))


# ----------------------------------------------------------------------------------------------------------------
# Linear, (1)–(3)

class LinearCache(NamedTuple):
    x: np.ndarray        # the input            (..., in)
    weight: np.ndarray   # W                    (out, in)


def linear_shapes(n_in: int, n_out: int) -> dict:
    return {"weight": (n_out, n_in), "bias": (n_out,)}


def linear_init(n_in: int, n_out: int, rng: np.random.Generator, dtype) -> dict:
    """U(−1/√fan_in, 1/√fan_in) for the weight, then the bias (PyTorch's nn.Linear default)."""
    k = 1.0 / math.sqrt(n_in)
    return {name: rng.uniform(-k, k, size=shape).astype(dtype) for name, shape in linear_shapes(n_in, n_out).items()}


def linear_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray):
    """x (..., in), weight (out, in), bias (out) → out (..., out), LinearCache."""
    xp = namespace(x, weight, bias)
    out = x @ xp.matrix_transpose(weight) + bias                            # (1)  (..., out)
    return out, LinearCache(x=x, weight=weight)


def linear_backward(dout: np.ndarray, cache: LinearCache) -> dict:
    """dout (..., out) → {"weight": (out, in), "bias": (out), "x": (..., in)}."""
    return {"weight": _outer_leading(dout, cache.x),                        # (2)
            "bias": _sum_leading(dout),                                     # (2)
            "x": dout @ cache.weight}                                       # (3)  (..., in)


# ----------------------------------------------------------------------------------------------------------------
# Layer norm, (4)–(9)

class LayerNormCache(NamedTuple):
    xhat: np.ndarray     # x̂, the normalised input     (..., d)
    rstd: np.ndarray     # r = 1/√(σ² + ε)             (..., 1)
    weight: np.ndarray   # w                            (d)


def layer_norm_shapes(d: int) -> dict:
    return {"weight": (d,), "bias": (d,)}


def layer_norm_init(d: int, dtype) -> dict:
    """weight 1, bias 0 (draws no randomness)."""
    return {"weight": np.ones(d, dtype=dtype), "bias": np.zeros(d, dtype=dtype)}


def layer_norm_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = LAYER_NORM_EPS):
    """x (..., d), weight (d), bias (d) → out (..., d), LayerNormCache."""
    xp = namespace(x, weight, bias)
    mu = xp.mean(x, axis=-1, keepdims=True)                                 # (4)  (..., 1)
    var = xp.mean((x - mu) ** 2, axis=-1, keepdims=True)                    # (4)  (..., 1)
    rstd = 1.0 / xp.sqrt(var + eps)                                         # (4)  (..., 1)
    xhat = (x - mu) * rstd                                                  # (5)  (..., d)
    out = weight * xhat + bias                                              # (6)
    return out, LayerNormCache(xhat=xhat, rstd=rstd, weight=weight)


def layer_norm_backward(dout: np.ndarray, cache: LayerNormCache) -> dict:
    """dout (..., d) → {"weight": (d), "bias": (d), "x": (..., d)}."""
    dweight = _sum_leading(dout * cache.xhat)                               # (7)
    dbias = _sum_leading(dout)                                              # (7)
    xp = namespace(dout, cache.xhat)
    dxhat = dout * cache.weight                                             # (8)  (..., d)
    dx = cache.rstd * (dxhat - xp.mean(dxhat, axis=-1, keepdims=True)       # (9)
                       - cache.xhat * xp.mean(dxhat * cache.xhat, axis=-1, keepdims=True))
    return {"weight": dweight, "bias": dbias, "x": dx}


# ----------------------------------------------------------------------------------------------------------------
# Batch norm, (BN1)–(BN6)

class BatchNormCache(NamedTuple):
    ahat: np.ndarray     # â, the normalised input          (B, n)
    rstd: np.ndarray     # r = 1/√(σ² + ε)                  (n)
    weight: np.ndarray   # γ                                (n)
    mean: np.ndarray     # μ, the batch mean                (n)
    var: np.ndarray      # σ², the (biased) batch variance  (n)


def batch_norm_forward(a: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = BATCH_NORM_EPS):
    """Training mode, batch statistics. a (B, n), weight γ (n), bias β (n) → out (B, n), BatchNormCache (whose
    mean and var are the batch statistics μ, σ² that batch_norm_running folds into the running averages)."""
    xp = namespace(a, weight, bias)
    mu = xp.mean(a, axis=0)                                                 # (BN1)  (n)
    var = xp.mean((a - mu) ** 2, axis=0)                                    # (BN1)  (n)
    rstd = 1.0 / xp.sqrt(var + eps)                                         # (BN1)  (n)
    ahat = (a - mu) * rstd                                                  # (BN2)  (B, n)
    out = weight * ahat + bias                                              # (BN2)
    return out, BatchNormCache(ahat=ahat, rstd=rstd, weight=weight, mean=mu, var=var)


def batch_norm_eval(a: np.ndarray, weight, bias, running_mean, running_var, eps: float = BATCH_NORM_EPS) -> np.ndarray:
    """Evaluation mode: the running averages μ̄, σ̄² (n) in place of the batch statistics. a (B, n) → out (B, n)."""
    xp = namespace(a, weight, bias, running_mean, running_var)
    return weight * (a - running_mean) / xp.sqrt(running_var + eps) + bias   # (BN3)


def batch_norm_running(running_mean: np.ndarray, running_var: np.ndarray, cache: BatchNormCache, batch: int,
                       momentum: float = BATCH_NORM_MOMENTUM) -> tuple[np.ndarray, np.ndarray]:
    """The running averages after one training batch of size `batch` ≥ 2: (new μ̄ (n), new σ̄² (n)); σ² enters
    unbiased, × B/(B − 1)."""
    m = momentum
    new_mean = (1 - m) * running_mean + m * cache.mean                      # (BN4)
    new_var = (1 - m) * running_var + m * cache.var * (batch / (batch - 1))  # (BN4)
    return new_mean, new_var


def batch_norm_backward(dout: np.ndarray, cache: BatchNormCache) -> dict:
    """dout (B, n) → {"weight": γ̄ (n), "bias": β̄ (n), "x": ā (B, n)}."""
    xp = namespace(dout, cache.ahat)
    dweight = xp.sum(dout * cache.ahat, axis=0)                             # (BN5)
    dbias = xp.sum(dout, axis=0)                                            # (BN5)
    dahat = dout * cache.weight                                             # (BN5)  (B, n)
    da = cache.rstd * (dahat - xp.mean(dahat, axis=0)                       # (BN6)
                       - cache.ahat * xp.mean(dahat * cache.ahat, axis=0))
    return {"weight": dweight, "bias": dbias, "x": da}


# ----------------------------------------------------------------------------------------------------------------
# GELU (tanh approximation), (10)–(11); sigmoid, (12)–(13). Parameter-free: backward returns x̄ itself.

class GELUCache(NamedTuple):
    x: np.ndarray        # the input     (...)
    tanh_u: np.ndarray   # tanh u of (10) (...)


def gelu_forward(x: np.ndarray):
    """GELU, tanh approximation. x (...) → g (...), GELUCache."""
    xp = namespace(x)
    tanh_u = xp.tanh(GELU_C * (x + GELU_KAPPA * (x * x * x)))              # (10)  (x·x·x: a float power is 25× slower)
    g = 0.5 * x * (1.0 + tanh_u)                                            # (10)
    return g, GELUCache(x=x, tanh_u=tanh_u)


def gelu_backward(dout: np.ndarray, cache: GELUCache) -> np.ndarray:
    """dout (...) → x̄ (...)."""
    x, t = cache.x, cache.tanh_u
    half_sech2 = 0.5 * (1.0 - t * t)                                        # ½ (1 − tanh² u)
    return dout * (0.5 * (1.0 + t) + (x * half_sech2) * (GELU_C + (3.0 * GELU_C * GELU_KAPPA) * (x * x)))   # (11)


class SigmoidCache(NamedTuple):
    s: np.ndarray        # σ(x)    (...)


def sigmoid_forward(x: np.ndarray):
    """x (...) → σ(x) (...), SigmoidCache."""
    s = sigmoid(x)                                                          # (12)
    return s, SigmoidCache(s=s)


def sigmoid_backward(dout: np.ndarray, cache: SigmoidCache) -> np.ndarray:
    """dout (...) → x̄ (...)."""
    return dout * cache.s * (1.0 - cache.s)                                 # (13)


# ----------------------------------------------------------------------------------------------------------------
# The activations of the backprop-free networks, (ACT1)–(ACT2). Parameter-free: backward returns z̄ itself.

class ActivationCache(NamedTuple):
    z: np.ndarray        # the input    (...)
    g: np.ndarray        # φ(z)         (...)
    name: str            # one of ACTIVATIONS


def activation_forward(z: np.ndarray, name: str):
    """φ(z) for φ one of ACTIVATIONS. z (...) → g (...), ActivationCache."""
    xp = namespace(z)
    if name == "tanh":
        g = xp.tanh(z)                                                      # (ACT1)
    elif name == "relu":
        g = xp.maximum(z, xp.zeros_like(z))                                 # (ACT1)
    elif name == "leaky-relu":
        g = xp.where(z > 0, z, LEAKY_SLOPE * z)                             # (ACT1)
    elif name == "swish":
        g = z * sigmoid(z)                                                  # (ACT1)
    else:
        raise UnknownNameError("activation", name, ACTIVATIONS)
    return g, ActivationCache(z=z, g=g, name=name)


def activation_backward(dg: np.ndarray, cache: ActivationCache) -> np.ndarray:
    """dg = ḡ (...) → z̄ = ḡ ⊙ φ'(z) (...)."""
    z, g = cache.z, cache.g
    xp = namespace(dg, z)
    if cache.name == "tanh":
        d = 1.0 - g * g                                                     # (ACT2)
    elif cache.name == "relu":
        d = xp.astype(z > 0, z.dtype)                                       # (ACT2)
    elif cache.name == "leaky-relu":
        one = xp.ones_like(z)
        d = xp.where(z > 0, one, LEAKY_SLOPE * one)                         # (ACT2)
    else:
        s = sigmoid(z)
        d = s * (1.0 + z * (1.0 - s))                                       # (ACT2) swish
    return dg * d


# ----------------------------------------------------------------------------------------------------------------
# Feed-forward blocks: MLP (14)–(19) and GLU (20)–(27). params use the block's local names ("fc1.weight", …).

class MLPCache(NamedTuple):
    fc1: LinearCache
    gelu: GELUCache
    fc2: LinearCache
    drop: np.ndarray | None = None     # the dropout mask M of (DR1) (…, md), None without dropout


class GLUCache(NamedTuple):
    gelu: GELUCache
    value: LinearCache
    gate: LinearCache
    v: np.ndarray        # v of (21)    (..., d)
    s: np.ndarray        # σ(q) of (22) (..., d)
    drop: np.ndarray | None = None     # the dropout mask M of (DR1) (…, d), None without dropout


def ffn_shapes(kind: str, d: int, ffn_mult: int) -> dict:
    """{local name: shape} of a feed-forward block of width d ('mlp' has hidden width ffn_mult·d)."""
    if kind == "mlp":
        return {**{f"fc1.{k}": s for k, s in linear_shapes(d, ffn_mult * d).items()},
                **{f"fc2.{k}": s for k, s in linear_shapes(ffn_mult * d, d).items()}}
    if kind == "glu":
        return {**{f"value.{k}": s for k, s in linear_shapes(d, d).items()},
                **{f"gate.{k}": s for k, s in linear_shapes(d, d).items()}}
    raise UnknownNameError("ffn", kind, FFNS + ("None",))


def ffn_init(kind: str, d: int, ffn_mult: int, rng: np.random.Generator, dtype) -> dict:
    """Linear init (U(±1/√fan_in)) for each sub-layer, in the order of ffn_shapes."""
    subs = [("fc1", d, ffn_mult * d), ("fc2", ffn_mult * d, d)] if kind == "mlp" else [("value", d, d), ("gate", d, d)]
    params = {}
    for name, n_in, n_out in subs:
        params.update({f"{name}.{k}": v for k, v in linear_init(n_in, n_out, rng, dtype).items()})
    return params


def mlp_forward(params: dict, y: np.ndarray, mask=None):
    """fc1 → GELU → (dropout) → fc2. params {fc1.weight (md, d), fc1.bias, fc2.weight (d, md), fc2.bias}; y (..., d)
    → (..., d); mask: None, or the scaled dropout mask M (…, md) of (DR1), broadcast against z."""
    z1, fc1 = linear_forward(y, params["fc1.weight"], params["fc1.bias"])     # (14)  (..., md)
    z, gelu = gelu_forward(z1)                                                # (15)
    if mask is not None:
        z = z * mask                                                          # (DR1)
    out, fc2 = linear_forward(z, params["fc2.weight"], params["fc2.bias"])    # (16)  (..., d)
    return out, MLPCache(fc1=fc1, gelu=gelu, fc2=fc2, drop=mask)


def mlp_backward(dout: np.ndarray, cache: MLPCache) -> dict:
    """dout (..., d) → {fc1.weight, fc1.bias, fc2.weight, fc2.bias, "x": ȳ (..., d)}."""
    g2 = linear_backward(dout, cache.fc2)                                     # (17)
    dz = g2["x"] if cache.drop is None else g2["x"] * cache.drop              # (DR2)
    dz1 = gelu_backward(dz, cache.gelu)                                       # (18)  (..., md)
    g1 = linear_backward(dz1, cache.fc1)                                      # (19)
    return {"fc1.weight": g1["weight"], "fc1.bias": g1["bias"],
            "fc2.weight": g2["weight"], "fc2.bias": g2["bias"], "x": g1["x"]}


def glu_forward(params: dict, y: np.ndarray, mask=None):
    """z = GELU(y) (⊙ M); out = (W_v z + b_v) ⊙ σ(W_g z + b_g). params {value.weight (d, d), value.bias, gate.weight,
    gate.bias}; y (..., d) → out (..., d), GLUCache; mask: None, or the scaled dropout mask M (…, d) of (DR1)."""
    z, gelu = gelu_forward(y)                                                 # (20)
    if mask is not None:
        z = z * mask                                                          # (DR1)
    v, value = linear_forward(z, params["value.weight"], params["value.bias"])  # (21)
    q, gate = linear_forward(z, params["gate.weight"], params["gate.bias"])     # (22)
    s = sigmoid(q)                                                            # (22)
    out = v * s                                                               # (23)
    return out, GLUCache(gelu=gelu, value=value, gate=gate, v=v, s=s, drop=mask)


def glu_backward(dout: np.ndarray, cache: GLUCache) -> dict:
    """dout (..., d) → {value.weight, value.bias, gate.weight, gate.bias, "x": ȳ (..., d)}."""
    dv = dout * cache.s                                                       # (24)
    ds = dout * cache.v                                                       # (24)
    dq = sigmoid_backward(ds, SigmoidCache(s=cache.s))                        # (25)
    gv = linear_backward(dv, cache.value)                                     # (26)
    gg = linear_backward(dq, cache.gate)                                      # (26)
    dz = gv["x"] + gg["x"]                                                    # (26)
    if cache.drop is not None:
        dz = dz * cache.drop                                                  # (DR2)
    dy = gelu_backward(dz, cache.gelu)                                        # (27)
    return {"value.weight": gv["weight"], "value.bias": gv["bias"],
            "gate.weight": gg["weight"], "gate.bias": gg["bias"], "x": dy}


FFN_FORWARD = {"mlp": mlp_forward, "glu": glu_forward}
FFN_BACKWARD = {"mlp": mlp_backward, "glu": glu_backward}


# ----------------------------------------------------------------------------------------------------------------
# The LRU layer's output map, (28)–(31)

class LRUOutputCache(NamedTuple):
    h: np.ndarray        # complex states          (..., N)
    a: np.ndarray        # the cell's input        (..., d)
    C: np.ndarray        # C_re + i C_im, complex  (d, N)
    D: np.ndarray        # (d)


def lru_output_shapes(d: int, n_state: int) -> dict:
    return {"C_re": (d, n_state), "C_im": (d, n_state), "D": (d,)}


def lru_output_init(d: int, n_state: int, rng: np.random.Generator, dtype) -> dict:
    """C_re, C_im ~ N(0, 1/N) each, then D ~ N(0, 1) (the online-LRU / minimal-LRU initialisation)."""
    std = 1.0 / math.sqrt(n_state)
    return {"C_re": (std * rng.standard_normal((d, n_state))).astype(dtype),
            "C_im": (std * rng.standard_normal((d, n_state))).astype(dtype),
            "D": rng.standard_normal(d).astype(dtype)}


def _complex_dtype(xp, real_dtype):
    """The complex dtype of a real one: float32 → complex64, float64 → complex128."""
    return xp.complex64 if real_dtype == xp.float32 else xp.complex128


def lru_output_forward(params: dict, h: np.ndarray, a: np.ndarray):
    """y = Re(C h) + D ⊙ a. params {C_re (d, N), C_im (d, N), D (d)}; h complex (..., N), a real (..., d)
    → y real (..., d), LRUOutputCache."""
    xp = namespace(h, a, params["C_re"], params["C_im"], params["D"])
    cdtype = _complex_dtype(xp, params["C_re"].dtype)
    C = xp.astype(params["C_re"], cdtype) + 1j * xp.astype(params["C_im"], cdtype)   # (28)  (d, N) complex
    y = xp.real(h @ xp.matrix_transpose(C)) + params["D"] * a                 # (28)  (..., d)
    return y, LRUOutputCache(h=h, a=a, C=C, D=params["D"])


def lru_output_backward(dy: np.ndarray, cache: LRUOutputCache) -> dict:
    """dy (..., d) real → {"C_re", "C_im" (d, N), "D" (d), "h": h̄ complex (..., N), "x": ā (..., d)}."""
    xp = namespace(dy, cache.h, cache.C)
    dyc = xp.astype(dy, cache.C.dtype)                                        # ȳ as complex, for the products
    dh = dyc @ xp.conj(cache.C)                                               # (29)  (..., N) complex
    dC = _outer_leading(dyc, xp.conj(cache.h))                                # (30)  (d, N) complex
    return {"C_re": xp.real(dC), "C_im": xp.imag(dC),                         # (30)
            "D": _sum_leading(dy * cache.a),                                  # (31)
            "h": dh, "x": dy * cache.D}                                       # (29), (31)


# ----------------------------------------------------------------------------------------------------------------
# Pooling over time, (32)–(37)

class PoolCache(NamedTuple):
    pooling: str                 # one of POOLINGS
    shape: tuple                 # (T, B, D) of the pooled input
    index: np.ndarray | None     # last: τ_b (B,) of (33)
    weights: np.ndarray | None   # mean: w_tb (T, B) of (34)


def _mask_2d(xp, mask, T: int, B: int, dtype) -> np.ndarray:
    """mask (T, B) or (T,) (or None = all ones) → (T, B) array of the real dtype, in the namespace xp."""
    if mask is None:
        return xp.full((T, B), 1.0, dtype=dtype)
    m = xp.astype(xp.asarray(mask), dtype)
    return xp.broadcast_to(xp.reshape(m, (T, -1)), (T, B))


def _check_host_mask(pooling: str, mask, T: int, B: int) -> None:
    """'last' and 'mean' need at least one valid step (and, for 'mean', a nonzero total weight) in every sequence.
    Checked when the mask is host data (a NumPy array or a list), where it is free; a mask already on a device is
    taken as given (checking it would copy it back to the host at every step): there an empty sequence gives a zero
    ('last') or a NaN ('mean') row."""
    if mask is None or not isinstance(mask, (np.ndarray, list, tuple)):
        return
    m = np.broadcast_to(np.asarray(mask, dtype=np.float64).reshape(T, -1), (T, B))
    empty = np.flatnonzero(~np.any(m != 0, axis=0))
    if empty.size:
        raise UnsupportedError(f"pooling {pooling!r}: the mask has no nonzero step for sequence(s) "
                               f"{empty.tolist()}; every sequence needs at least one valid step (mask ≠ 0)")
    total = m.sum(0)
    if pooling == "mean" and np.any(total == 0):
        raise UnsupportedError(f"pooling 'mean': the mask sums to zero for sequence(s) "
                               f"{np.flatnonzero(total == 0).tolist()}; use nonnegative mask weights")


def _is_last_step(xp, tau: np.ndarray, T: int) -> np.ndarray:
    """The one-hot selection [t = τ_b] of (33), boolean (T, B, 1)."""
    steps = xp.reshape(xp.arange(T), (T, 1))                                  # t  (T, 1)
    return xp.expand_dims(steps == xp.reshape(tau, (1, -1)), axis=-1)


def _check_pool_name(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise UnknownNameError("pooling", pooling, POOLINGS)


def pool_forward(pooling: str, y: np.ndarray, mask: np.ndarray | None = None):
    """Pool y (T, B, D) over time. mask (T, B) or (T,) or None; used by 'last' and 'mean' only.

    Returns: p ((T, B, D) for none / cumulative_mean, (B, D) for last / mean), PoolCache.
    Raises UnsupportedError if 'last' / 'mean' get a sequence with no valid step (mask all zero) — checked for a
    host mask (NumPy array or list), see _check_host_mask.
    """
    _check_pool_name(pooling)
    xp = namespace(y)
    T, B, D = y.shape
    if pooling == "none":
        return y, PoolCache(pooling, y.shape, None, None)                     # (32)
    if pooling == "cumulative_mean":
        S = xp.cumulative_sum(y, axis=0)                                      # S_t = Σ_{s≤t} y_s
        counts = xp.reshape(xp.arange(1, T + 1, dtype=y.dtype), (T, 1, 1))   # t + 1
        p = S / counts                                                        # (35)  (T, B, D)
        return p, PoolCache(pooling, y.shape, None, None)
    _check_host_mask(pooling, mask, T, B)
    m = _mask_2d(xp, mask, T, B, y.dtype)
    if pooling == "last":
        steps = xp.reshape(xp.arange(T), (T, 1))                              # t  (T, 1)
        tau = xp.max(xp.where(m != 0, steps, -xp.ones_like(steps)), axis=0)   # (33)  (B,) last nonzero step
        p = xp.sum(xp.where(_is_last_step(xp, tau, T), y, xp.zeros_like(y)), axis=0)   # (33)  (B, D) = y_{τ_b, b}
        return p, PoolCache(pooling, y.shape, tau, None)
    total = xp.sum(m, axis=0)                                                 # (B,)
    w = m / total                                                             # (34)  (T, B)
    p = xp.sum(xp.reshape(w, (T, B, 1)) * y, axis=0)                          # (34)  (B, D)
    return p, PoolCache(pooling, y.shape, None, w)


def pool_backward(dout: np.ndarray, cache: PoolCache) -> np.ndarray:
    """dout (shape of p) → ȳ (T, B, D). For cumulative_mean this is the straight-through identity (36), NOT the
    true gradient (37) — see the module NOTE."""
    xp = namespace(dout)
    T, B, D = cache.shape
    if cache.pooling == "none":
        return xp.astype(dout, dout.dtype)                                    # (32)  (a copy)
    if cache.pooling == "cumulative_mean":
        return xp.astype(dout, dout.dtype)                                    # (36) straight-through (a copy)
    if cache.pooling == "last":
        return xp.where(_is_last_step(xp, cache.index, T),                    # (33)  (T, B, D)
                        xp.reshape(dout, (1, B, D)), xp.zeros((T, B, D), dtype=dout.dtype))
    return xp.reshape(cache.weights, (T, B, 1)) * xp.reshape(dout, (1, B, D))   # (34)  (T, B, D)


# ----------------------------------------------------------------------------------------------------------------
# The operations the stack calls, as one bundle per backend

class LayerOps(NamedTuple):
    """The batched operations of a recurrent layer that refimpl/nn/stack.py calls, (47)–(50) and (57)–(60). REFERENCE
    is this module's functions; a backend may give its own bundle with the same signatures (e.g. backends/numba/
    layers.py: the elementwise chains fused into compiled loops), whose caches only its own backwards read. A forward
    and its backward always come from the same bundle."""
    layer_norm_forward: Callable
    layer_norm_backward: Callable
    lru_output_forward: Callable
    lru_output_backward: Callable
    ffn_forward: dict                # {"mlp": …, "glu": …}
    ffn_backward: dict


REFERENCE = LayerOps(layer_norm_forward, layer_norm_backward, lru_output_forward, lru_output_backward, FFN_FORWARD,
                     FFN_BACKWARD)

