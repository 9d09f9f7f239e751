r"""Equilibrium propagation on the prototypical convolutional network ("P-conv", the paper's convEP), and its BPTT.

Ernoult, Grollier, Querlioz, Bengio, Scellier (NeurIPS 2019), "Updates of EP match gradients of BPTT"
(notes: research/ep_dfa_lstm.md A.6; the fully connected networks: refimpl/ep/networks.py, same conventions).

Layers keep the paper's OUTPUT-FIRST names (this network has exactly three state layers): s_2 next to the input,
s_1, and the output s_0. Shapes: B batch, input x (B, C, H, W) static; channels (C_2, C_1) input first.

Parameters (flat dict; PyTorch Conv2d / Linear default init U(±1/√fan_in) for weights and biases):
    "K1" (C_2, C, k_2, k_2)   conv x → s_2        "c1" (C_2,)     its bias
    "K0" (C_1, C_2, k_1, k_1) conv s_2 → s_1      "c0" (C_1,)     its bias
    "W"  (O, D), D = C_1·h_1·w_1                  "b"  (O,)       fully connected s_1 → s_0

kernel = (k_2, k_1) and pool = (p_2, p_1) are given input first (an int means the same for both convolutions).

    (1)  shapes (no padding, stride 1; pooling p×p with stride p; every pre-pool size must be divisible by its p):
             conv x:   H − k_2 + 1 = p_2 h_2          s_2: (C_2, h_2, w_2)
             conv s_2: h_2 − k_1 + 1 = p_1 h_1        s_1: (C_1, h_1, w_1)          s_0: (O,)
         e.g. (1, 28, 28), k 5, p 2 → s_2 (32, 12, 12), s_1 (64, 4, 4) (the paper); (1, 8, 8), k 3, p (2, 1) →
         s_2 (C_2, 3, 3), s_1 (C_1, 1, 1); (1, 14, 14), k 3, p 2 → s_2 (C_2, 6, 6), s_1 (C_1, 2, 2). p = 1: no pooling.

Operators (cross-correlation as in PyTorch's conv2d, written with a hand-made im2col):

    (2)  conv(a; K)[b, o, i, j]  = Σ_{c,p,q} K[o, c, p, q] a[b, c, i+p, j+q]
    (3)  convT(g; K)             = the input adjoint of (2):  ⟨conv(a; K), g⟩ = ⟨a, convT(g; K)⟩
         corr(a, g)[o, c, p, q]  = Σ_{b,i,j} g[b, o, i, j] a[b, c, i+p, j+q],
                                   the kernel adjoint: ⟨conv(a; K), g⟩ = ⟨K, corr(a, g)⟩
    (4)  P(a) = max over each p×p window, with idx its argmax (first maximum on ties); U(v; idx) = max-unpool: v
         placed at idx, zeros elsewhere; Pᵢ(a; idx) = a read at idx.
         ⟨U(v; idx), a⟩ = ⟨v, Pᵢ(a; idx)⟩, and P(a) = Pᵢ(a; idx(a)).

One step (dt = 1 always; all layers synchronously from the OLD state; idx_1 from this step's pooling of conv(s_2)):

    (5)  a_2 = conv(x; K1) + c1,   (P(a_2), idx_2)        a_1 = conv(s_2; K0) + c0,   (P(a_1), idx_1)
         u_2 = P(a_2) + convT(U(s_1; idx_1); K0)
         u_1 = P(a_1) + reshape(s_0 W)
         u_0 = vec(s_1) Wᵀ + b
    (6)  s'_l = ρ(u_l),   and in the nudged phase  s'_0 = ρ(u_0) + β (y − s_0)

As for the prototypical FC network, u is ∂Φ/∂s of the (piecewise) bilinear primitive
    Φ(s) = s_0ᵀ W vec(s_1) + bᵀ s_0 + ⟨s_1, P(conv(s_2; K0) + c0)⟩ + ⟨s_2, P(conv(x; K1) + c1)⟩
with the argmax indices held fixed, and ρ sits outside (so GDU holds only approximately).
Activations ρ ∈ {hardsigm (default, the paper's P-conv), sigm, tanh}, as in refimpl/ep/networks.py.

    (7)  L = (1/2B) Σ_b ‖s_0 − y‖²,   ∂L/∂s_0 = (s_0 − y)/B

EP (gradient sign, so that θ −= lr·g). G_θ(s) = −(1/B) ∂Φ/∂θ at s, with the indices of the state s itself
(idx_1 = idx(conv(s_2; K0) + c0); idx_2 depends on x only):

    (8)  G_K1 = −corr(x, U(s_2; idx_2))/B          G_c1 = −Σ_{b,i,j} U(s_2; idx_2)/B
         G_K0 = −corr(s_2, U(s_1; idx_1))/B        G_c0 = −Σ_{b,i,j} U(s_1; idx_1)/B
         G_W  = −s_0ᵀ vec(s_1)/B                   G_b  = −Σ_b s_0/B
    (9)  g_θ = (G_θ(s^β_K) − G_θ(s*)) / β          (telescoped; s^β_0 = s*)

NOTE: here the indices are recomputed from the state passed to G (for s^β_K: from s^β_K itself), which keeps G a
function of the state. Code that instead reuses the indices returned by the last nudged step uses those of s^β_{K−1}
(notes A.6 only say "nudged indices for the nudged state"; not checked against the public code); at a fixed point the
two coincide. Ties (e.g. hardsigm zeros giving equal pre-pool values) go to the first maximum in both phases.

BPTT through the free phase (hand-derived adjoint of (5)–(6) with β = 0). The argmax indices are piecewise
constant, so the step is piecewise "linear-in-u then ρ" and their derivative is zero almost everywhere.
With ū_l = s̄'_l ⊙ ρ'(u_l):

    (10) layer 0:  W̄ += ū_0ᵀ vec(s_1);   b̄ += Σ_b ū_0;   s̄_1 += reshape(ū_0 W)
    (11) layer 1:  ā_1 = U(ū_1; idx_1);   K̄0 += corr(s_2, ā_1);   c̄0 += Σ_{b,i,j} ā_1;   s̄_2 += convT(ā_1; K0)
                   W̄ += s_0ᵀ vec(ū_1);   s̄_0 += vec(ū_1) Wᵀ
    (12) layer 2:  ā_2 = U(ū_2; idx_2);   K̄1 += corr(x, ā_2);   c̄1 += Σ_{b,i,j} ā_2
                   v_1 = U(s_1; idx_1):   K̄0 += corr(ū_2, v_1);   s̄_1 += Pᵢ(conv(ū_2; K0); idx_1)
    (13) truncation: the gradient with K steps keeps the last K steps in the graph, s_{T−K} a constant
         (refimpl/ep/networks.py (13); the public code truncates its P-conv baseline at K steps too, notes A.7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..errors import ShapeError, UnknownNameError, UnsupportedError
from .activations import ACTIVATIONS, drho, rho
from .networks import DTYPES, check_beta, check_T, check_truncation, output_adjoint, output_loss
from .relaxation import backward_through_steps, relax_keeping_caches, sum_steps


@dataclass(frozen=True)
class ConvEPNet:
    """The P-conv network. input_shape (C, H, W); channels (C_2, C_1), kernel (k_2, k_1), pool (p_2, p_1), input
    first."""
    input_shape: tuple
    channels: tuple
    n_out: int
    kernel: tuple
    pool: tuple
    activation: str
    dtype: str

    @property
    def conv2_hw(self) -> tuple:
        """Spatial size of a_2 = conv(x; K1) (1)."""
        return tuple(n - self.kernel[0] + 1 for n in self.input_shape[1:])

    @property
    def s2_shape(self) -> tuple:
        """(C_2, h_2, w_2) (1)."""
        return (self.channels[0],) + tuple(n // self.pool[0] for n in self.conv2_hw)

    @property
    def conv1_hw(self) -> tuple:
        """Spatial size of a_1 = conv(s_2; K0) (1)."""
        return tuple(n - self.kernel[1] + 1 for n in self.s2_shape[1:])

    @property
    def s1_shape(self) -> tuple:
        """(C_1, h_1, w_1) (1)."""
        return (self.channels[1],) + tuple(n // self.pool[1] for n in self.conv1_hw)

    @property
    def state_shapes(self) -> list:
        """Per-example shapes of [s_2, s_1, s_0]."""
        return [self.s2_shape, self.s1_shape, (self.n_out,)]


def _pair(v, name):
    v = (v, v) if np.ndim(v) == 0 else tuple(v)
    if len(v) != 2 or any(int(a) != a or a < 1 for a in v):
        raise UnsupportedError(f"{name} = {v} must be an integer ≥ 1 or a pair of them (input-side convolution first)")
    return tuple(int(a) for a in v)


def _check_shapes(input_shape, kernel, pool):
    """(1): every convolution must fit and every pre-pool size must be divisible by its pool size."""
    C, H, W = input_shape
    sizes = [("x", (H, W))]
    for layer, k, p in (("s_2", kernel[0], pool[0]), ("s_1", kernel[1], pool[1])):
        name, hw = sizes[-1]
        if min(hw) < k:
            raise UnsupportedError(f"the {k}×{k} convolution that feeds {layer} does not fit its {hw[0]}×{hw[1]} input "
                                   f"({name}); use a smaller kernel or a larger input (shape arithmetic: "
                                   "n → n − k + 1 → (n − k + 1)/p)")
        conv = tuple(n - k + 1 for n in hw)
        if any(n % p for n in conv):
            raise UnsupportedError(f"the convolution that feeds {layer} gives {conv[0]}×{conv[1]}, not divisible by "
                                   f"the pool size {p}; choose kernel/pool/input so that n − k + 1 is a multiple of p "
                                   "(e.g. (1, 8, 8) with kernel=3, pool=(2, 1))")
        sizes.append((layer, tuple(n // p for n in conv)))


def make_conv_net(input_shape=(1, 28, 28), channels=(32, 64), n_out=10, *, kernel=5, pool=2,
                  activation: str = "hardsigm", seed: int = 0, dtype: str = "float64"):
    """Build a ConvEPNet and its parameters, U(±1/√fan_in) for weights and biases (PyTorch Conv2d/Linear default).

    Args:
        input_shape: (C, H, W) of one example.   channels: (C_2, C_1), the channels of s_2 and s_1 (input first).
        n_out: O, the output width.   kernel, pool: int or (input-side, output-side) pair; see (1).
        activation: "hardsigm" (the paper's P-conv) | "sigm" | "tanh".   seed: np.random.Generator seed.
        dtype: "float64" | "float32".
    Returns:
        (net, params) with params {"K1", "c1", "K0", "c0", "W", "b"}.
    """
    if activation not in ACTIVATIONS:
        raise UnknownNameError("activation", activation, ACTIVATIONS)
    if str(np.dtype(dtype)) not in DTYPES:
        raise UnknownNameError("dtype", dtype, DTYPES)
    dtype = str(np.dtype(dtype))
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or any(int(n) != n or n < 1 for n in input_shape):
        raise UnsupportedError(f"input_shape = {input_shape} must be (C, H, W), all ≥ 1; e.g. (1, 28, 28)")
    channels = tuple(channels)
    if len(channels) != 2 or any(int(n) != n or n < 1 for n in channels):
        raise UnsupportedError(f"channels = {channels} must be (C_2, C_1): the channels of s_2 and s_1, input first; "
                               "e.g. (32, 64)")
    if int(n_out) != n_out or n_out < 1:
        raise UnsupportedError(f"n_out = {n_out} must be an integer ≥ 1")
    input_shape, channels = tuple(int(n) for n in input_shape), tuple(int(n) for n in channels)
    kernel, pool = _pair(kernel, "kernel"), _pair(pool, "pool")
    _check_shapes(input_shape, kernel, pool)
    net = ConvEPNet(input_shape=input_shape, channels=channels, n_out=int(n_out), kernel=kernel, pool=pool,
                    activation=activation, dtype=dtype)

    rng = np.random.default_rng(seed)

    def uniform(fan_in, shape):
        k = 1.0 / np.sqrt(fan_in)
        return rng.uniform(-k, k, size=shape).astype(dtype)

    C, (C2, C1), (k2, k1) = input_shape[0], channels, kernel
    D = int(np.prod(net.s1_shape))
    params = {"K1": uniform(C * k2 * k2, (C2, C, k2, k2)), "c1": uniform(C * k2 * k2, (C2,)),
              "K0": uniform(C2 * k1 * k1, (C1, C2, k1, k1)), "c0": uniform(C2 * k1 * k1, (C1,)),
              "W": uniform(D, (net.n_out, D)), "b": uniform(D, (net.n_out,))}
    return net, params


# ---------------------------------------------------------------------------------------------------- operators

def _im2col(a: np.ndarray, k: int) -> np.ndarray:
    """(B, C, H, W) → (B, C·k·k, Ho·Wo): column (c, p, q) at output pixel (i, j) holds a[b, c, i+p, j+q]."""
    B, C, H, W = a.shape
    Ho, Wo = H - k + 1, W - k + 1
    cols = np.empty((B, C, k, k, Ho, Wo), dtype=a.dtype)
    for p in range(k):
        for q in range(k):
            cols[:, :, p, q] = a[:, :, p:p + Ho, q:q + Wo]
    return cols.reshape(B, C * k * k, Ho * Wo)


def _col2im(cols: np.ndarray, C: int, k: int, Ho: int, Wo: int) -> np.ndarray:
    """The adjoint of _im2col: (B, C·k·k, Ho·Wo) → (B, C, Ho+k−1, Wo+k−1), overlapping entries summed."""
    B = cols.shape[0]
    cols = cols.reshape(B, C, k, k, Ho, Wo)
    a = np.zeros((B, C, Ho + k - 1, Wo + k - 1), dtype=cols.dtype)
    for p in range(k):
        for q in range(k):
            a[:, :, p:p + Ho, q:q + Wo] += cols[:, :, p, q]
    return a


def conv(a: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(2): a (B, C, H, W), K (O, C, k, k) → (B, O, H−k+1, W−k+1). No bias, no padding, stride 1."""
    O, C, k, _ = K.shape
    B, _, H, W = a.shape
    out = K.reshape(O, C * k * k) @ _im2col(a, k)                                  # (2)  (B, O, Ho·Wo)
    return out.reshape(B, O, H - k + 1, W - k + 1)


def conv_t(g: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(3) convT: g (B, O, Ho, Wo), K (O, C, k, k) → (B, C, Ho+k−1, Wo+k−1), the exact adjoint of conv in a."""
    O, C, k, _ = K.shape
    B, _, Ho, Wo = g.shape
    cols = K.reshape(O, C * k * k).T @ g.reshape(B, O, Ho * Wo)                   # (3)  (B, C·k·k, Ho·Wo)
    return _col2im(cols, C, k, Ho, Wo)                                            # (3)


def corr(a: np.ndarray, g: np.ndarray, k: int) -> np.ndarray:
    """(3) corr: a (B, C, H, W), g (B, O, H−k+1, W−k+1) → (O, C, k, k), the adjoint of conv in K (batch-summed)."""
    B, C = a.shape[:2]
    O = g.shape[1]
    dK = (g.reshape(B, O, -1) @ _im2col(a, k).transpose(0, 2, 1)).sum(0)          # (3)  (O, C·k·k)
    return dK.reshape(O, C, k, k)


def _windows(a: np.ndarray, p: int) -> np.ndarray:
    """(B, C, H, W) → (B, C, H/p, W/p, p·p): the pooling windows, row-major within each window."""
    B, C, H, W = a.shape
    return a.reshape(B, C, H // p, p, W // p, p).transpose(0, 1, 2, 4, 3, 5).reshape(B, C, H // p, W // p, p * p)


def max_pool(a: np.ndarray, p: int):
    """(4): P(a) (B, C, H/p, W/p) and idx, the argmax within each window (int, same shape; first max on ties)."""
    w = _windows(a, p)
    idx = w.argmax(-1)                                                            # (4)
    return np.take_along_axis(w, idx[..., None], -1)[..., 0], idx                 # (4)


def pool_at(a: np.ndarray, idx: np.ndarray, p: int) -> np.ndarray:
    """(4) Pᵢ(a; idx): a (B, C, H, W) read at the window positions idx → (B, C, H/p, W/p). The adjoint of unpool."""
    return np.take_along_axis(_windows(a, p), idx[..., None], -1)[..., 0]         # (4)


def unpool(v: np.ndarray, idx: np.ndarray, p: int) -> np.ndarray:
    """(4) U(v; idx): v (B, C, h, w) → (B, C, h·p, w·p) with v at the argmax positions and 0 elsewhere."""
    B, C, h, w = v.shape
    out = np.zeros((B, C, h, w, p * p), dtype=v.dtype)
    np.put_along_axis(out, idx[..., None], v[..., None], -1)                      # (4)
    return out.reshape(B, C, h, w, p, p).transpose(0, 1, 2, 4, 3, 5).reshape(B, C, h * p, w * p)


# ---------------------------------------------------------------------------------------------------- one step

class ConvStepCache(NamedTuple):
    """What the backward step needs."""
    s: list            # [s_2, s_1, s_0] before the step
    u: list            # [u_2, u_1, u_0] of (5)
    idx2: np.ndarray   # argmax of the pooling of a_2 = conv(x; K1) + c1
    idx1: np.ndarray   # argmax of the pooling of a_1 = conv(s_2; K0) + c0
    v1: np.ndarray     # U(s_1; idx_1)


def _inputs(net: ConvEPNet, x, y=None):
    dtype = np.dtype(net.dtype)
    x = np.asarray(x, dtype=dtype)
    if x.ndim != 4 or x.shape[1:] != net.input_shape:
        raise ShapeError(f"x has shape {x.shape}; expected (B, {', '.join(map(str, net.input_shape))}) = "
                         "(batch, channels, height, width)")
    if y is not None:
        y = np.asarray(y, dtype=dtype)
        if y.shape != (x.shape[0], net.n_out):
            raise ShapeError(f"y has shape {y.shape}; expected ({x.shape[0]}, {net.n_out})")
    return x, y


def _bias(c: np.ndarray) -> np.ndarray:
    return c[None, :, None, None]


def _step(net: ConvEPNet, params: dict, x: np.ndarray, s: list, beta: float = 0.0, y=None):
    """One step (5)–(6). s = [s_2, s_1, s_0] → (new states, ConvStepCache). Inputs are not modified."""
    act, (p2, p1) = net.activation, net.pool
    s2, s1, s0 = s
    B = x.shape[0]
    pa2, idx2 = max_pool(conv(x, params["K1"]) + _bias(params["c1"]), p2)        # (5)
    pa1, idx1 = max_pool(conv(s2, params["K0"]) + _bias(params["c0"]), p1)       # (5)
    v1 = unpool(s1, idx1, p1)                                                     # (5) U(s_1; idx_1)
    u2 = pa2 + conv_t(v1, params["K0"])                                           # (5)
    u1 = pa1 + (s0 @ params["W"]).reshape(s1.shape)                               # (5)
    u0 = s1.reshape(B, -1) @ params["W"].T + params["b"]                          # (5)
    new0 = rho(u0, act)                                                          # (6)
    if beta != 0.0:
        new0 = new0 + beta * (y - s0)                                             # (6) nudge
    new = [rho(u2, act), rho(u1, act), new0]                                    # (6)
    return new, ConvStepCache(s=list(s), u=[u2, u1, u0], idx2=idx2, idx1=idx1, v1=v1)


def _step_backward(net: ConvEPNet, params: dict, x: np.ndarray, cache: ConvStepCache, ds_new: list):
    """Adjoint of one FREE step (10)–(12): [s̄'_2, s̄'_1, s̄'_0] → (dparams, [s̄_2, s̄_1, s̄_0])."""
    act, (k2, k1), (p2, p1) = net.activation, net.kernel, net.pool
    s2, s1, s0 = cache.s
    u2, u1, u0 = cache.u
    B = x.shape[0]
    du2, du1, du0 = (g * drho(u, act) for g, u in zip(ds_new, (u2, u1, u0)))   # ū_l = s̄'_l ⊙ ρ'(u_l)
    d = {k: np.zeros_like(v) for k, v in params.items()}
    # layer 0
    d["W"] += du0.T @ s1.reshape(B, -1)                                           # (10)
    d["b"] += du0.sum(0)                                                          # (10)
    ds1 = (du0 @ params["W"]).reshape(s1.shape)                                   # (10)
    # layer 1
    da1 = unpool(du1, cache.idx1, p1)                                             # (11)
    d["K0"] += corr(s2, da1, k1)                                                  # (11)
    d["c0"] += da1.sum((0, 2, 3))                                                 # (11)
    ds2 = conv_t(da1, params["K0"])                                               # (11)
    d["W"] += s0.T @ du1.reshape(B, -1)                                           # (11)
    ds0 = du1.reshape(B, -1) @ params["W"].T                                      # (11)
    # layer 2
    da2 = unpool(du2, cache.idx2, p2)                                             # (12)
    d["K1"] += corr(x, da2, k2)                                                   # (12)
    d["c1"] += da2.sum((0, 2, 3))                                                 # (12)
    d["K0"] += corr(du2, cache.v1, k1)                                            # (12)
    ds1 = ds1 + pool_at(conv(du2, params["K0"]), cache.idx1, p1)                  # (12)
    return d, [ds2, ds1, ds0]


# ---------------------------------------------------------------------------------------------------- phases

def _zeros(net: ConvEPNet, B: int, dtype) -> list:
    return [np.zeros((B,) + shape, dtype=dtype) for shape in net.state_shapes]


def _states(net: ConvEPNet, states, B: int, dtype) -> list:
    states = [np.asarray(v, dtype=dtype) for v in states]
    want = [(B,) + shape for shape in net.state_shapes]
    if len(states) != 3 or any(v.shape != w for v, w in zip(states, want)):
        raise ShapeError(f"states have shapes {[v.shape for v in states]}; expected [s_2, s_1, s_0] = {want}")
    return states


def free_phase(net: ConvEPNet, params: dict, x, T: int, *, init=None) -> list:
    """T free steps (5)–(6) from s = 0 (or from `init`). x (B, C, H, W). Returns [s_2, s_1, s_0].

    The pooling indices are not returned: they are a function of the state (and x), recomputed where needed.
    """
    x, _ = _inputs(net, x)
    T = check_T(T)
    s = _zeros(net, x.shape[0], x.dtype) if init is None else _states(net, init, x.shape[0], x.dtype)
    for t in range(T):
        s, _ = _step(net, params, x, s)                                           # (5)–(6)
    return s


def nudged_phase(net: ConvEPNet, params: dict, x, y, states: list, K: int, beta: float) -> list:
    """K nudged steps (5)–(6) from `states` (usually s*). y (B, O). Returns [s^β_2, s^β_1, s^β_0] after K steps."""
    x, y = _inputs(net, x, y)
    K = check_T(K, "K")
    check_beta(beta)
    s = _states(net, states, x.shape[0], x.dtype)
    for t in range(K):
        s, _ = _step(net, params, x, s, beta, y)                                  # (5)–(6)
    return s


def _G(net: ConvEPNet, params: dict, x: np.ndarray, s: list) -> dict:
    """G_θ(s) of (8), with the pooling indices of the state s."""
    (k2, k1), (p2, p1) = net.kernel, net.pool
    s2, s1, s0 = s
    B = x.shape[0]
    _, idx2 = max_pool(conv(x, params["K1"]) + _bias(params["c1"]), p2)          # (5)
    _, idx1 = max_pool(conv(s2, params["K0"]) + _bias(params["c0"]), p1)         # (5)
    v2, v1 = unpool(s2, idx2, p2), unpool(s1, idx1, p1)                           # (8) U(s_2; idx_2), U(s_1; idx_1)
    return {"K1": -corr(x, v2, k2) / B, "c1": -v2.sum((0, 2, 3)) / B,            # (8)
            "K0": -corr(s2, v1, k1) / B, "c0": -v1.sum((0, 2, 3)) / B,           # (8)
            "W": -(s0.T @ s1.reshape(B, -1)) / B, "b": -s0.sum(0) / B}           # (8)


def ep_update(net: ConvEPNet, params: dict, x, free_states: list, nudged_states: list, beta: float) -> dict:
    """The telescoped EP update (9), gradient sign (≈ ∂L/∂θ). Returns {param: (same shape)}."""
    x, _ = _inputs(net, x)
    check_beta(beta)
    B = x.shape[0]
    g_star = _G(net, params, x, _states(net, free_states, B, x.dtype))
    g_beta = _G(net, params, x, _states(net, nudged_states, B, x.dtype))
    return {k: (g_beta[k] - g_star[k]) / beta for k in params}                   # (9)


def ep_grads(net: ConvEPNet, params: dict, x, y, *, T: int, K: int, beta: float):
    """Free phase (T steps), nudged phase (K steps), EP update (9). Returns (loss at s*, grads, free states)."""
    x, y = _inputs(net, x, y)
    T, K = check_T(T), check_T(K, "K")
    check_beta(beta)
    s_star = free_phase(net, params, x, T)
    s_beta = nudged_phase(net, params, x, y, s_star, K, beta)
    return float(output_loss(s_star[-1], y)), ep_update(net, params, x, s_star, s_beta, beta), s_star   # (7)


def predict(net: ConvEPNet, params: dict, x, T: int) -> np.ndarray:
    """The output layer s_0 after T free steps, (B, O)."""
    return free_phase(net, params, x, T)[-1]


# ---------------------------------------------------------------------------------------------------- BPTT

def bptt_grads(net: ConvEPNet, params: dict, x, y, *, T: int, K: int | None = None):
    """Hand-derived BPTT of L (7) through the free phase from s = 0. K=None: all T steps; else the last K (13).

    Returns (loss, {param: ∂L/∂param}).
    """
    x, y = _inputs(net, x, y)
    T, K = check_truncation(T, K)
    s0 = _zeros(net, x.shape[0], x.dtype)
    s, caches = relax_keeping_caches(lambda s: _step(net, params, x, s), s0, T, K)                # (5)–(6)
    steps, _ = backward_through_steps(lambda cache, ds: _step_backward(net, params, x, cache, ds), caches,
                                      output_adjoint(s, y))                       # (7), (10)–(12)
    return float(output_loss(s[-1], y)), sum_steps(steps)                         # (13)


# ---------------------------------------------------------------------------------------------------- GDU diagnostics

def gdu_curves(net: ConvEPNet, params: dict, x, y, *, T: int, K: int, beta: float) -> dict:
    """Per-step EP and BPTT quantities for the GDU check, as networks.gdu_curves (same keys, the gradient sign), for
    the convolutional network: "ep_neurons", "bptt_neurons" list the layers s_2, s_1, s_0 (input side first), each
    (K, size of one example's state) batch-summed: −Σ_b (s^β_{t+1} − s^β_t)/(βB) (dt = 1) and Σ_b ∂L/∂s(T−t) (13);
    "ep_params", "bptt_params" per-step ΔEP_θ(t) (9) and ∇BPTT_θ(t) (13), and their cumulative sums."""
    x, y = _inputs(net, x, y)
    T, K = check_truncation(T, K)
    check_beta(beta)
    B = x.shape[0]
    s, caches = relax_keeping_caches(lambda s: _step(net, params, x, s), _zeros(net, B, x.dtype), T, K)   # (5)–(6)
    p_steps, s_steps = backward_through_steps(lambda cache, ds: _step_backward(net, params, x, cache, ds), caches,
                                              output_adjoint(s, y))                # (7), (10)–(12)
    loss = float(output_loss(s[-1], y))
    ep_n = [np.zeros((K, int(np.prod(shape))), dtype=x.dtype) for shape in net.state_shapes]
    ep_p = {k: np.zeros((K,) + v.shape, dtype=x.dtype) for k, v in params.items()}
    G_prev = _G(net, params, x, s)
    for t in range(K):
        s_next, _ = _step(net, params, x, s, beta, y)                            # (5)–(6), nudged
        for l in range(3):
            ep_n[l][t] = -(s_next[l] - s[l]).reshape(B, -1).sum(0) / (beta * B)  # ΔEP_s (dt = 1)
        G_next = _G(net, params, x, s_next)
        for k in params:
            ep_p[k][t] = (G_next[k] - G_prev[k]) / beta                           # (9), one step
        s, G_prev = s_next, G_next
    bptt_n = [np.stack([s_steps[t][l].reshape(B, -1).sum(0) for t in range(K)]) for l in range(3)]
    bptt_p = {k: np.stack([p_steps[t][k] for t in range(K)]) for k in params}
    return {"loss": loss, "ep_neurons": ep_n, "bptt_neurons": bptt_n, "ep_params": ep_p, "bptt_params": bptt_p,
            "ep_params_cumulative": {k: np.cumsum(v, axis=0) for k, v in ep_p.items()},
            "bptt_params_cumulative": {k: np.cumsum(v, axis=0) for k, v in bptt_p.items()}}
