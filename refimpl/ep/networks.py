r"""Equilibrium propagation (EP) on convergent layered networks, and the BPTT it is compared with.

Ernoult, Grollier, Querlioz, Bengio, Scellier (NeurIPS 2019), "Updates of EP match gradients of BPTT"
(notes: research/ep_dfa_lstm.md part A; derivation: docs/derivations/ep.md, same equation numbers).

Shapes: B batch, I input width, n_l units of layer l, O = n_L output units. Layers are listed INPUT-FIRST:
``sizes = (I, n_1, …, n_L)``; layer 0 is the (static) input x, layer L the output. The paper's code lists
``size_tab`` output-first (``10 512 784``); here that network is ``sizes=(784, 512, 10)``, so that the layer index
grows in the direction of the forward pass like every other model in refimpl.

Parameters (flat dict):
    "W.l"  (n_{l+1}, n_l)   l = 0 … L−1   the symmetric connection between layer l and layer l+1 (W.0: input → layer 1)
    "b.l"  (n_l,)           l = 1 … L     bias of layer l
    "Wx.l" (n_l, I)         l = 2 … L     toy network only: the input → layer l skip connection

States s_l are rows (B, n_l), s_0 = x. Activation ρ ∈ {tanh, sigm: 1/(1+e^{−4(s−½)}), hardsigm: clip(s, 0, 1)}.

Energy ("energy", "toy"; the paper's EPcont and toyEPcont). Energy, per batch element:

    (1)  E(s) = ½ Σ_{l≥1} ‖s_l‖² − Σ_{l=0}^{L−1} ρ(s_{l+1})ᵀ W.l ρ(s_l) − Σ_{l≥1} b.lᵀ ρ(s_l) − [toy] Σ_{l≥2} ρ(s_l)ᵀ Wx.l ρ(x)
    (2)  u_l = W.{l−1} ρ(s_{l−1}) + b.l + [l<L] W.lᵀ ρ(s_{l+1}) + [toy, l≥2] Wx.l ρ(x)              drive (B, n_l)
    (3)  d_l = −s_l + g_l ⊙ u_l,   g_l = ρ'(s_l)  — except the energy network's OUTPUT layer, where g_L = 1
         (so d = −∂E/∂s exactly for "toy" and on the hidden layers of "energy"; not on the energy output layer)

Prototypical ("prototypical"; the paper's EPdisc), raw states, ρ outside:

    (4)  u_l = W.{l−1} s_{l−1} + b.l + [l<L] W.lᵀ s_{l+1},      d_l = −s_l + ρ(u_l)
         as if from the bilinear Φ(s) = Σ_l s_{l+1}ᵀ W.l s_l + Σ_l b.lᵀ s_l (not an exact gradient: ρ is outside)

One step, all layers synchronously from the old state; nudged phase adds a force on the output only:

    (5)  s'_l = s_l + dt · (d_l + [l = L] β (y − s_L))                             (β = 0 in the free phase)
    (6)  s'_l ← clip(s'_l, 0, 1)                                                    (if net.clamp)

β here is the public code's β: the nudge is scaled by dt, so the paper's β is β_paper = dt·β (identical at dt = 1).

Loss at the end of the free phase (batch mean):

    (7)  L = (1/2B) Σ_b ‖s_L − y‖²,   ∂L/∂s_L = (s_L − y)/B

EP (gradient sign, so that an optimiser does θ −= lr·g). With G_θ(s) = (1/B) Σ_b ∂E/∂θ (energy) or −(1/B) Σ_b ∂Φ/∂θ
(prototypical):

    (8)  G_{W.l}(s) = −ρ(s_{l+1})ᵀ ρ(s_l)/B,  G_{b.l} = −Σ_b ρ(s_l)/B,  G_{Wx.l} = −ρ(s_l)ᵀ ρ(x)/B       (energy, toy)
         G_{W.l}(s) = −s_{l+1}ᵀ s_l/B,        G_{b.l} = −Σ_b s_l/B                                      (prototypical)
    (9)  per-step EP updates, t = 0 … K−1 (s^β_0 = s*):
             ΔEP_θ(t) = (G_θ(s^β_{t+1}) − G_θ(s^β_t)) / β           ΔEP_s(t) = −(s^β_{t+1} − s^β_t) / (dt·β)
    (10) telescoped update: g_θ = Σ_{t<K} ΔEP_θ(t) = (G_θ(s^β_K) − G_θ(s*)) / β

(ΔEP_s above already carries the minus sign of the paper's −ΔEP_s and a 1/B is applied to it when batch-summed.)

BPTT through the free phase (hand-derived adjoint of (2)–(6)). s̄ denotes ∂L/∂(·). Going back through step
s → s' (free, β = 0), with δ_l = s̄'_l ⊙ 1[0 < s'_l,pre < 1] (clamp) or s̄'_l:

    (11) energy/toy:  ū_l = dt δ_l ⊙ g_l;   s̄_l += (1 − dt) δ_l + dt δ_l ⊙ u_l ⊙ ρ''(s_l)  (the latter only where g_l = ρ'(s_l))
         W̄.{l−1} += ū_lᵀ ρ(s_{l−1});  W̄.l += ρ(s_{l+1})ᵀ ū_l;  b̄.l += Σ_b ū_l;  W̄x.l += ū_lᵀ ρ(x)
         s̄_{l−1} += (ū_l W.{l−1}) ⊙ ρ'(s_{l−1})   (l−1 ≥ 1);    s̄_{l+1} += (ū_l W.lᵀ) ⊙ ρ'(s_{l+1})
    (12) prototypical: ū_l = dt δ_l ⊙ ρ'(u_l);   s̄_l += (1 − dt) δ_l
         W̄.{l−1} += ū_lᵀ s_{l−1};  W̄.l += s_{l+1}ᵀ ū_l;  b̄.l += Σ_b ū_l;  s̄_{l−1} += ū_l W.{l−1};  s̄_{l+1} += ū_l W.lᵀ
    (13) ∇BPTT_s(t) = ∂L/∂s_{T−t},  ∇BPTT_θ(t) = ∂L/∂θ_{T−t} (the parameter copy used by the step s_{T−t−1} → s_{T−t});
         the truncated gradient with K steps is Σ_{t<K} ∇BPTT_θ(t): the last K steps are in the graph, s_{T−K} is a constant.

GDU theorem: if Φ is a true primitive (toy network, no clamping) and s_t = s* for t ≥ T − K, then ΔEP(t) → ∇BPTT(t)
as β → 0, with an error O(β). NOTE: the public code truncates its BPTT baseline at K+1 steps for EPcont/EPdisc and
K for toy/conv (notes A.7); here it is always K steps, which is what pairs with K nudged steps (13).

Diagnostics (notes A.8–A.10):
    (14) RMSE_k = sqrt( Σ_t (n_k(t) − d_k(t))² / max(Σ_t n_k(t)², Σ_t d_k(t)²) ), 0 when both series are zero;
         reported as mean ± std over the elements k.
    (15) %same = 100·#{sign NT = sign DT ≠ 0}/size,  %zero = 100·#{NT = DT = 0}/size,  total = %same + %zero.

Backends: ep_grads, bptt_grads and predict take `kernels`, as the model takes its cell kernels — None runs the loops
of this module; an EPKernels bundle (refimpl.registry.ep_kernels(backend)) runs the relaxation loops as the kernels
ep.free_phase, ep.nudged_phase and ep.bptt of a backend, whose references are these functions (refimpl/kernels.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..errors import UnknownNameError, UnsupportedError
from .activations import ACTIVATIONS, d2rho, drho, rho
from .relaxation import backward_through_steps, relax_keeping_caches, sum_steps

NETWORKS = ("energy", "prototypical", "toy")
DTYPES = ("float64", "float32")

#: Per-kind defaults of make_ep_net (the one table of them): the activation ρ, the Euler step dt of (5), and whether
#: the states are clamped to [0, 1] (6).
DEFAULTS = {"energy": {"activation": "sigm", "dt": 0.2, "clamp": True},
            "prototypical": {"activation": "sigm", "dt": 1.0, "clamp": False},
            "toy": {"activation": "tanh", "dt": 0.08, "clamp": False}}
#: The toy network's default sizes (input first): 5 inputs, 50 hidden units, 10 outputs.
TOY_SIZES = (5, 50, 10)


@dataclass(frozen=True)
class EPNet:
    """A convergent layered network. sizes is INPUT-FIRST (I, n_1, …, n_L); the output is layer L."""
    kind: str
    sizes: tuple
    activation: str
    dt: float
    clamp: bool
    dtype: str

    @property
    def n_layers(self) -> int:
        """L, the number of state layers (input excluded)."""
        return len(self.sizes) - 1


# ---------------------------------------------------------------------------------------------------- construction

def _flag(name: str, value) -> bool:
    """A yes/no option given as a bool, 0 / 1 or the text true / false (a command line's -n clamp=false must not
    read as True, as bool("false") would)."""
    text = str(value).lower()
    if isinstance(value, (bool, int, np.integer, str)) and text in ("true", "false", "1", "0"):
        return text in ("true", "1")
    raise UnsupportedError(f"{name} = {value!r}: give true or false (or 1 / 0)")


def make_ep_net(kind: str, sizes=None, *, activation: str | None = None, dt: float | None = None,
                clamp: bool | None = None, seed: int = 0, dtype: str = "float64"):
    """Build an EPNet and its parameters, U(±1/√fan_in) for weights and biases (PyTorch Linear default).

    Args:
        kind: "energy" | "prototypical" | "toy".
        sizes: (I, n_1, …, n_L), input first. None only for "toy", which defaults to (5, 50, 10).
        activation, dt, clamp: None → the kind's default (energy: sigm, 0.2, True; prototypical: sigm, 1.0, False —
            the paper's s_{t+1} = σ(·); the public code's 0.2 is an artefact, notes A.4; toy: tanh, 0.08, False).
        seed: seeds an np.random.Generator.  dtype: "float64" | "float32".
    Returns:
        (net, params) with params a flat dict {"W.l", "b.l", ["Wx.l"]}.
    """
    if kind not in NETWORKS:
        raise UnknownNameError("EP network", kind, NETWORKS)
    d_act, d_dt, d_clamp = (DEFAULTS[kind][k] for k in ("activation", "dt", "clamp"))
    activation = d_act if activation is None else activation
    if activation not in ACTIVATIONS:
        raise UnknownNameError("activation", activation, ACTIVATIONS)
    if str(np.dtype(dtype)) not in DTYPES:
        raise UnknownNameError("dtype", dtype, DTYPES)
    dtype = str(np.dtype(dtype))
    if sizes is None:
        if kind != "toy":
            raise UnsupportedError(f"sizes is required for the {kind!r} network; pass e.g. sizes=(784, 512, 10) "
                                   "(input first, output last)")
        sizes = TOY_SIZES
    sizes = tuple(int(n) for n in sizes)
    if len(sizes) < 2 or min(sizes) < 1:
        raise UnsupportedError(f"sizes {sizes} must list at least an input and an output width, all ≥ 1, input "
                               "first: e.g. (784, 512, 10)")
    if dt is not None and (isinstance(dt, bool) or not isinstance(dt, (int, float, np.floating, np.integer))):
        raise UnsupportedError(f"dt = {dt!r} is not a number; it is the Euler step of the dynamics, > 0: e.g. "
                               f"dt={d_dt}")
    dt = d_dt if dt is None else float(dt)
    if not dt > 0:
        raise UnsupportedError(f"dt = {dt} must be > 0 (the Euler step of the dynamics); e.g. dt={d_dt}")
    clamp = d_clamp if clamp is None else _flag("clamp", clamp)
    net = EPNet(kind=kind, sizes=sizes, activation=activation, dt=dt, clamp=clamp, dtype=dtype)

    rng = np.random.default_rng(seed)
    params = {}
    L = len(sizes) - 1
    for l in range(L):                                        # W.l: layer l → layer l+1, fan_in n_l
        k = 1.0 / np.sqrt(sizes[l])
        params[f"W.{l}"] = rng.uniform(-k, k, size=(sizes[l + 1], sizes[l])).astype(dtype)
        params[f"b.{l + 1}"] = rng.uniform(-k, k, size=(sizes[l + 1],)).astype(dtype)
    if kind == "toy":
        k = 1.0 / np.sqrt(sizes[0])
        for l in range(2, L + 1):
            params[f"Wx.{l}"] = rng.uniform(-k, k, size=(sizes[l], sizes[0])).astype(dtype)
    return net, params


def net_from_kernel_args(params: dict, x, kind: str, activation: str, dt: float, dtype: str | None = None,
                         y=None) -> EPNet:
    """The EPNet an ep.* kernel call describes, validated by make_ep_net (kind, activation, dt, dtype): the sizes
    (I, n_1, …, n_L) are read off x (B, I) and the weights W.0 … W.{L−1}, and the shapes of x and y (B, O) are checked
    as check_inputs checks them. Only shapes are read, so x, y and the parameters may be arrays of any backend.

    dtype: the network's dtype name; None → x.dtype's (pass it for arrays whose dtype NumPy does not name, e.g. MLX's).
    """
    if x.ndim != 2:
        raise UnsupportedError(f"x has shape {tuple(x.shape)}; expected (B, I): EP takes one static input")
    L = sum(k.startswith("W.") for k in params)
    sizes = (x.shape[1],) + tuple(params[f"W.{l}"].shape[0] for l in range(L))
    net, _ = make_ep_net(kind, sizes, activation=activation, dt=dt, dtype=x.dtype.name if dtype is None else dtype)
    if y is not None and tuple(y.shape) != (x.shape[0], sizes[-1]):
        raise UnsupportedError(f"y has shape {tuple(y.shape)}; expected ({x.shape[0]}, {sizes[-1]})")
    return net


# ---------------------------------------------------------------------------------------------------- one step

class EPStepCache(NamedTuple):
    """What the backward step needs (lists indexed by state layer l = 1 … L, stored at position l−1)."""
    s: list       # s_l before the step      (B, n_l)
    u: list       # drive u_l, (2) or (4)    (B, n_l)
    pre: list     # s'_l before the clamp    (B, n_l)


def check_inputs(net: EPNet, params: dict, x, y=None):
    """x (B, I) and y (B, O) as arrays of the net's dtype, shapes checked against the net."""
    dtype = np.dtype(net.dtype)
    x = np.asarray(x, dtype=dtype)
    if x.ndim != 2 or x.shape[1] != net.sizes[0]:
        raise UnsupportedError(f"x has shape {x.shape}; expected (B, {net.sizes[0]})")
    if y is not None:
        y = np.asarray(y, dtype=dtype)
        if y.shape != (x.shape[0], net.sizes[-1]):
            raise UnsupportedError(f"y has shape {y.shape}; expected ({x.shape[0]}, {net.sizes[-1]})")
    return x, y


def _g_is_drho(net: EPNet, l: int) -> bool:
    """Whether layer l's drive is multiplied by ρ'(s_l) in (3) (energy output layer: no)."""
    return not (net.kind == "energy" and l == net.n_layers)


def _step(net: EPNet, params: dict, x: np.ndarray, s: list, beta: float = 0.0, y=None):
    """One step (2)–(6). s: [s_1 … s_L] → ([s'_1 … s'_L], EPStepCache). Inputs are not modified."""
    L, act, dt = net.n_layers, net.activation, net.dt
    energy = net.kind != "prototypical"
    full = [x] + list(s)                                                          # full[l] = s_l, full[0] = x
    r = [rho(v, act) for v in full] if energy else full                          # ρ(s_l) (energy) / s_l (proto)
    us, pres, new = [], [], []
    for l in range(1, L + 1):
        u = r[l - 1] @ params[f"W.{l - 1}"].T + params[f"b.{l}"]                  # (2)/(4)  (B, n_l)
        if l < L:
            u = u + r[l + 1] @ params[f"W.{l}"]                                   # (2)/(4)
        if net.kind == "toy" and l >= 2:
            u = u + r[0] @ params[f"Wx.{l}"].T                                    # (2)
        if energy:
            d = -full[l] + (drho(full[l], act) * u if _g_is_drho(net, l) else u)  # (3)
        else:
            d = -full[l] + rho(u, act)                                           # (4)
        if l == L and beta != 0.0:
            d = d + beta * (y - full[l])                                          # (5) nudge
        pre = full[l] + dt * d                                                    # (5)
        us.append(u)
        pres.append(pre)
        new.append(np.clip(pre, 0.0, 1.0) if net.clamp else pre)                  # (6)
    return new, EPStepCache(s=list(s), u=us, pre=pres)


def _step_backward(net: EPNet, params: dict, x: np.ndarray, cache: EPStepCache, ds_new: list):
    """Adjoint of one FREE step (11)/(12): s̄' = [s̄'_1 … s̄'_L] → (dparams, [s̄_1 … s̄_L])."""
    L, act, dt = net.n_layers, net.activation, net.dt
    energy = net.kind != "prototypical"
    full = [x] + list(cache.s)
    r = [rho(v, act) for v in full] if energy else full
    dparams = {k: np.zeros_like(v) for k, v in params.items()}
    dr = [np.zeros_like(v) for v in full]               # adjoint of ρ(s_l) (energy) or of s_l through u (proto)
    ds = [np.zeros_like(v) for v in full]               # direct adjoint of s_l
    for l in range(L, 0, -1):
        delta = ds_new[l - 1]
        if net.clamp:
            p = cache.pre[l - 1]
            delta = delta * ((p > 0.0) & (p < 1.0))                               # (6)
        ds[l] += (1.0 - dt) * delta                                               # (11)/(12) s̄_l from s_l − dt s_l
        if energy:
            if _g_is_drho(net, l):
                du = dt * delta * drho(full[l], act)                             # (11)
                ds[l] += dt * delta * cache.u[l - 1] * d2rho(full[l], act)       # (11) through g_l = ρ'(s_l)
            else:
                du = dt * delta                                                   # (11) energy output: g_L = 1
        else:
            du = dt * delta * drho(cache.u[l - 1], act)                          # (12)
        dparams[f"W.{l - 1}"] += du.T @ r[l - 1]                                  # (11)/(12)  (n_l, n_{l−1})
        dparams[f"b.{l}"] += du.sum(0)                                            # (11)/(12)
        dr[l - 1] += du @ params[f"W.{l - 1}"]                                    # (11)/(12)  (B, n_{l−1})
        if l < L:
            dparams[f"W.{l}"] += r[l + 1].T @ du                                  # (11)/(12)  (n_{l+1}, n_l)
            dr[l + 1] += du @ params[f"W.{l}"].T                                  # (11)/(12)  (B, n_{l+1})
        if net.kind == "toy" and l >= 2:
            dparams[f"Wx.{l}"] += du.T @ r[0]                                     # (11)
    for l in range(1, L + 1):
        ds[l] += dr[l] * drho(full[l], act) if energy else dr[l]                 # (11)/(12) through ρ(s_l)
    return dparams, ds[1:]


# ---------------------------------------------------------------------------------------------------- phases

def check_truncation(T, K):
    """(T, K) for BPTT through the free phase: K=None means all T steps; K > T is refused."""
    T = check_T(T)
    K = T if K is None else check_T(K, "K")
    if K > T:
        raise UnsupportedError(f"K = {K} > T = {T}: BPTT cannot be truncated to more steps than the free phase has; "
                               "use K ≤ T")
    return T, K


def check_T(T, name="T"):
    """A step count (T, K) as an int ≥ 1; refused with the reason otherwise."""
    if int(T) != T or T < 1:
        raise UnsupportedError(f"{name} = {T} must be an integer ≥ 1 (the number of steps)")
    return int(T)


def free_phase(net: EPNet, params: dict, x, T: int, *, init=None) -> list:
    """T free steps (5)–(6) with β = 0 from s = 0 (or from `init`, a list of (B, n_l) states).

    Args: x (B, I).  Returns: [s_1 … s_L], each (B, n_l); the input is not included.
    """
    x, _ = check_inputs(net, params, x)
    T = check_T(T)
    if init is None:
        s = [np.zeros((x.shape[0], n), dtype=x.dtype) for n in net.sizes[1:]]
    else:
        s = [np.asarray(v, dtype=x.dtype) for v in init]
    for t in range(T):
        s, _ = _step(net, params, x, s)                                           # (5)–(6)
    return s


def nudged_phase(net: EPNet, params: dict, x, y, states: list, K: int, beta: float) -> list:
    """K nudged steps (5)–(6) from `states` (usually s*). x (B, I), y (B, O). Returns [s^β_1 … s^β_L] after K steps."""
    x, y = check_inputs(net, params, x, y)
    K = check_T(K, "K")
    check_beta(beta)
    s = [np.asarray(v, dtype=x.dtype) for v in states]
    for t in range(K):
        s, _ = _step(net, params, x, s, beta, y)                                  # (5)–(6)
    return s


def check_beta(beta):
    """The nudging strength β > 0 (the EP update divides by it); refused otherwise."""
    if not beta > 0:
        raise UnsupportedError(f"beta = {beta} must be > 0 (the nudging strength; the EP update divides by it); "
                               "e.g. beta=0.1")


def _G(net: EPNet, params: dict, x: np.ndarray, s: list) -> dict:
    """G_θ(s) of (8): the batch-mean ∂E/∂θ (energy, toy) or −∂Φ/∂θ (prototypical)."""
    B, L = x.shape[0], net.n_layers
    energy = net.kind != "prototypical"
    full = [x] + list(s)
    r = [rho(v, net.activation) for v in full] if energy else full
    G = {}
    for l in range(L):
        G[f"W.{l}"] = -(r[l + 1].T @ r[l]) / B                                    # (8)  (n_{l+1}, n_l)
        G[f"b.{l + 1}"] = -r[l + 1].sum(0) / B                                    # (8)
    if net.kind == "toy":
        for l in range(2, L + 1):
            G[f"Wx.{l}"] = -(r[l].T @ r[0]) / B                                   # (8)
    return G


def ep_update(net: EPNet, params: dict, x, free_states: list, nudged_states: list, beta: float) -> dict:
    """The telescoped EP update (10), gradient sign: ≈ ∂L/∂θ when GDU holds. Returns {param: (same shape)}."""
    x, _ = check_inputs(net, params, x)
    check_beta(beta)
    g_star, g_beta = _G(net, params, x, free_states), _G(net, params, x, nudged_states)
    return {k: (g_beta[k] - g_star[k]) / beta for k in params}                   # (10)


def output_loss(s_out: np.ndarray, y: np.ndarray):
    """(7), in the dtype of the states (a NumPy scalar, so that an extended-precision FD oracle keeps its digits)."""
    return 0.5 * np.sum((s_out - y) ** 2) / s_out.shape[0]                        # (7)


def output_adjoint(s: list, y: np.ndarray) -> list:
    """∂L/∂s of (7) for the states [s_1 … s_L]: (s_L − y)/B on the output layer, zero on the others."""
    ds = [np.zeros_like(v) for v in s]
    ds[-1] = (s[-1] - y) / s[-1].shape[0]                                         # (7)
    return ds


def ep_grads(net: EPNet, params: dict, x, y, *, T: int, K: int, beta: float, kernels=None):
    """Free phase (T steps), nudged phase (K steps), EP update. Returns (loss at s*, grads, free states).

    kernels: None (the relaxation loops of this module) or an EPKernels bundle (refimpl.registry.ep_kernels): its
    free_phase and nudged_phase run the loops (the nudged kernel relaxes its own free phase first, so there the free
    phase runs twice). The update (10) is array code here either way.
    """
    x, y = check_inputs(net, params, x, y)
    T, K = check_T(T), check_T(K, "K")
    check_beta(beta)
    if kernels is None:
        s_star = free_phase(net, params, x, T)
        s_beta = nudged_phase(net, params, x, y, s_star, K, beta)
    else:
        options = _kernel_options(net, kernels)
        s_star = kernels.free_phase(params, x, T, **options)
        s_beta = kernels.nudged_phase(params, x, T, y=y, K=K, beta=beta, **options)
    return float(output_loss(s_star[-1], y)), ep_update(net, params, x, s_star, s_beta, beta), s_star


def _kernel_options(net: EPNet, kernels) -> dict:
    """The network as the ep.* kernels take it (kind, activation, dt), after checking that `kernels` is a bundle of
    them and that they can run this net: they take no clamp, and run the kind's default one."""
    if not all(callable(getattr(kernels, f, None)) for f in ("free_phase", "nudged_phase", "bptt")):
        raise UnsupportedError(f"kernels must have callables .free_phase, .nudged_phase and .bptt with the ep.* "
                               f"kernel signatures (refimpl.registry.ep_kernels), got {type(kernels).__name__}")
    if net.clamp != DEFAULTS[net.kind]["clamp"]:
        raise UnsupportedError(f"the ep.* kernels run the {net.kind} network with its default clamp="
                               f"{DEFAULTS[net.kind]['clamp']}, and this net has clamp={net.clamp}; run it on the "
                               f"NumPy reference (kernels=None, --backend numpy) or keep the default clamp")
    return {"kind": net.kind, "activation": net.activation, "dt": net.dt}


def predict(net: EPNet, params: dict, x, T: int, kernels=None) -> np.ndarray:
    """The output layer after T free steps, (B, O). kernels: as for ep_grads (its free_phase runs the loop)."""
    if kernels is None:
        return free_phase(net, params, x, T)[-1]
    x, _ = check_inputs(net, params, x)
    return kernels.free_phase(params, x, check_T(T), **_kernel_options(net, kernels))[-1]


# ---------------------------------------------------------------------------------------------------- BPTT

def _bptt(net: EPNet, params: dict, x: np.ndarray, y: np.ndarray, T: int, K: int):
    """Free phase with caches, then the adjoint through the last K steps (relaxation.py).

    Returns (loss, per-step param grads [∇BPTT_θ(t)]_{t<K}, per-step state adjoints [∇BPTT_s(t)]_{t<K}) (13).
    """
    s0 = [np.zeros((x.shape[0], n), dtype=x.dtype) for n in net.sizes[1:]]
    s, caches = relax_keeping_caches(lambda s: _step(net, params, x, s), s0, T, K)            # (5)–(6)
    param_steps, state_steps = backward_through_steps(
        lambda cache, ds: _step_backward(net, params, x, cache, ds), caches, output_adjoint(s, y))   # (11)/(12)
    return float(output_loss(s[-1], y)), param_steps, state_steps


def bptt_grads(net: EPNet, params: dict, x, y, *, T: int, K: int | None = None, kernels=None):
    """Hand-derived BPTT of L (7) through the free phase from s = 0. K=None: all T steps; else the last K (13).
    kernels: None (this module) or an EPKernels bundle: its free_phase (for the loss) and bptt run the loops.

    Returns (loss, {param: ∂L/∂param}).
    """
    x, y = check_inputs(net, params, x, y)
    T, K = check_truncation(T, K)
    if kernels is None:
        loss, steps, _ = _bptt(net, params, x, y, T, K)
        return loss, sum_steps(steps)                                             # (13)
    options = _kernel_options(net, kernels)
    s = kernels.free_phase(params, x, T, **options)
    return float(output_loss(s[-1], y)), kernels.bptt(params, x, T, y=y, K=K, **options)


# ---------------------------------------------------------------------------------------------------- GDU diagnostics

def gdu_curves(net: EPNet, params: dict, x, y, *, T: int, K: int, beta: float) -> dict:
    """Per-step EP and BPTT quantities for the GDU check, in the gradient sign (they match when GDU holds).

    Returns a dict:
        "loss": L at s_T;
        "ep_neurons", "bptt_neurons": lists over layers l = 1 … L of (K, n_l) arrays, batch-summed:
            −Σ_b ΔEP_s(t)/B (9) and Σ_b ∂L/∂s_l(T−t) (13), t = 0 … K−1 (no zeroing of t < l, unlike the public code);
        "ep_params", "bptt_params": {param: (K, *shape)} per-step ΔEP_θ(t) (9) and ∇BPTT_θ(t) (13);
        "ep_params_cumulative", "bptt_params_cumulative": their cumulative sums over t (the notes' DT and NT):
            entry t is the EP update after t+1 nudged steps and the BPTT gradient truncated to t+1 steps.
    """
    x, y = check_inputs(net, params, x, y)
    T, K = check_T(T), check_T(K, "K")
    check_beta(beta)
    if K > T:
        raise UnsupportedError(f"K = {K} > T = {T}: the GDU pairing needs K ≤ T")
    loss, p_steps, s_steps = _bptt(net, params, x, y, T, K)
    s = free_phase(net, params, x, T)
    B, L = x.shape[0], net.n_layers
    G_prev = _G(net, params, x, s)
    ep_n = [np.zeros((K, n), dtype=x.dtype) for n in net.sizes[1:]]
    ep_p = {k: np.zeros((K,) + v.shape, dtype=x.dtype) for k, v in params.items()}
    for t in range(K):
        s_next, _ = _step(net, params, x, s, beta, y)                             # (5)–(6)
        for l in range(L):
            ep_n[l][t] = -(s_next[l] - s[l]).sum(0) / (net.dt * beta * B)         # (9)
        G_next = _G(net, params, x, s_next)
        for k in params:
            ep_p[k][t] = (G_next[k] - G_prev[k]) / beta                           # (9)
        s, G_prev = s_next, G_next
    bptt_n = [np.stack([s_steps[t][l].sum(0) for t in range(K)]) for l in range(L)]
    bptt_p = {k: np.stack([p_steps[t][k] for t in range(K)]) for k in params}
    return {"loss": loss, "ep_neurons": ep_n, "bptt_neurons": bptt_n, "ep_params": ep_p, "bptt_params": bptt_p,
            "ep_params_cumulative": {k: np.cumsum(v, axis=0) for k, v in ep_p.items()},
            "bptt_params_cumulative": {k: np.cumsum(v, axis=0) for k, v in bptt_p.items()}}


def rmse(n_series, d_series) -> tuple:
    """(14): per-element normalised RMSE between two time series (time on axis 0); returns (mean, std) over elements."""
    n = np.asarray(n_series, dtype=np.float64)
    d = np.asarray(d_series, dtype=np.float64)
    if n.shape != d.shape:
        raise UnsupportedError(f"rmse: series shapes differ, {n.shape} vs {d.shape}; pass (K, …) arrays of one shape")
    n, d = n.reshape(n.shape[0], -1), d.reshape(d.shape[0], -1)
    num = np.sum((n - d) ** 2, axis=0)                                            # (14)
    den = np.maximum(np.sum(n * n, axis=0), np.sum(d * d, axis=0))                # (14)
    r = np.where(den > 0, np.sqrt(num / np.where(den > 0, den, 1.0)), 0.0)        # (14) 0 when both all-zero
    return float(r.mean()), float(r.std())


def sign_agreement(nt, dt) -> dict:
    """(15): {"same": %, "zero": %, "total": %} between a BPTT gradient nt and an EP update dt (same shape)."""
    nt, dt = np.asarray(nt), np.asarray(dt)
    if nt.shape != dt.shape:
        raise UnsupportedError(f"sign_agreement: shapes differ, {nt.shape} vs {dt.shape}")
    size = nt.size
    same = 100.0 * np.sum((np.sign(nt) == np.sign(dt)) & (nt != 0) & (dt != 0)) / size        # (15)
    zero = 100.0 * np.sum((nt == 0) & (dt == 0)) / size                                       # (15)
    return {"same": float(same), "zero": float(zero), "total": float(same + zero)}
