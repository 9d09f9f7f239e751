r"""The EP relaxation loops (ep.free_phase, ep.nudged_phase, ep.bptt) with mlx.core.

Same signatures and outputs as the references (refimpl/kernels.py → refimpl/ep/networks.py): the phases return the list
[s_1 … s_L] of (B, n_l) states, bptt the dict {param: ∂L/∂param} with every parameter. Every variant is implemented:
kind prototypical (4), energy (2)–(3) with the clamp (6) and g_L = 1 on its output layer, toy (2) with the Wx skips;
activations tanh, sigm, hardsigm. Equation numbers "(n)" are refimpl/ep/networks.py's.

Layout: one synchronous step of all layers (5) is one mx.compile'd function per network configuration (kind,
activation, dt, clamp); per layer the drive (2)/(4) is one to three GEMMs. The relaxation is a Python loop over that
step. BPTT (11)/(12) keeps the last K steps' (s, u, s'_pre), runs the compiled adjoint step back through them, and
forms the parameter gradients afterwards as one GEMM each over all (t, b) rows, as the Numba backend does.
ρ = sigm is ½(1 + tanh(2(s − ½))) as in the reference (MLX's float64 exp is only float32-accurate).
"""

from __future__ import annotations

import functools

import mlx.core as mx

from refimpl.ep import check_beta, check_T, check_truncation, net_from_kernel_args
from refimpl.errors import UnsupportedError

from ..common import param_grads
from .runtime import kernel, transposed


# ---------------------------------------------------------------------------------------------------- activations

def _rho(s, act):
    if act == "tanh":
        return mx.tanh(s)
    if act == "sigm":
        return 0.5 * (1.0 + mx.tanh(2.0 * (s - 0.5)))                    # 1/(1+e^{−4(s−½)})
    return mx.clip(s, 0.0, 1.0)


def _drho(s, act):
    if act == "tanh":
        r = mx.tanh(s)
        return 1.0 - r * r
    if act == "sigm":
        r = _rho(s, act)
        return 4.0 * r * (1.0 - r)
    return ((s >= 0.0) & (s <= 1.0)).astype(s.dtype)


def _d2rho(s, act):
    if act == "tanh":
        r = mx.tanh(s)
        return -2.0 * r * (1.0 - r * r)
    if act == "sigm":
        r = _rho(s, act)
        return 16.0 * r * (1.0 - r) * (1.0 - 2.0 * r)
    return mx.zeros_like(s)                                              # hardsigm: ρ'' = 0 almost everywhere


# ---------------------------------------------------------------------------------------------------- one step

@functools.lru_cache(maxsize=None)
def _step_fn(kind: str, act: str, dt: float, clamp: bool, nudge: bool):
    """The compiled synchronous step (2)–(6) of one network configuration:
    (W [W.0 …], WT [their transposes], b [b.1 …], WxT [Wx.2ᵀ …] (toy), r0 = ρ(x) or x, s [s_1 … s_L], y, beta)
    → (s', u, s'_pre)."""
    energy = kind != "prototypical"

    def step(W, WT, b, WxT, r0, s, y, beta):
        L = len(s)
        r = [r0] + ([_rho(v, act) for v in s] if energy else list(s))    # ρ(s_l) (energy) / s_l (proto)
        new, us, pres = [], [], []
        for l in range(1, L + 1):
            s_l = s[l - 1]
            u = r[l - 1] @ WT[l - 1] + b[l - 1]                           # (2)/(4)
            if l < L:
                u = u + r[l + 1] @ W[l]                                   # (2)/(4)
            if kind == "toy" and l >= 2:
                u = u + r0 @ WxT[l - 2]                                   # (2) Wx.l ρ(x)
            if energy:
                g_is_drho = not (kind == "energy" and l == L)             # energy output layer: g_L = 1
                d = -s_l + (_drho(s_l, act) * u if g_is_drho else u)     # (3)
            else:
                d = -s_l + _rho(u, act)                                   # (4)
            if nudge and l == L:
                d = d + beta * (y - s_l)                                  # (5) nudge
            pre = s_l + dt * d                                            # (5)
            new.append(mx.clip(pre, 0.0, 1.0) if clamp else pre)          # (6)
            us.append(u)
            pres.append(pre)
        return new, us, pres
    return mx.compile(step)


@functools.lru_cache(maxsize=None)
def _step_back_fn(kind: str, act: str, dt: float, clamp: bool):
    """The compiled adjoint of one FREE step (11)/(12): (W, WT, s̄', s, u, s'_pre) → (ū [per layer], s̄ [per layer])."""
    energy = kind != "prototypical"

    def step_back(W, WT, ds_new, s, u, pre):
        L = len(s)
        ds = [None] * L
        dr = [mx.zeros_like(v) for v in s]                               # adjoint of ρ(s_l) / of s_l through u
        dus = [None] * L
        for l in range(L, 0, -1):
            i = l - 1
            delta = ds_new[i]
            if clamp:
                delta = delta * ((pre[i] > 0.0) & (pre[i] < 1.0))         # (6)
            acc = (1.0 - dt) * delta                                      # (11)/(12) from s_l − dt s_l
            if energy:
                if not (kind == "energy" and l == L):
                    du = dt * delta * _drho(s[i], act)                    # (11)
                    acc = acc + dt * delta * u[i] * _d2rho(s[i], act)     # (11) through g_l = ρ'(s_l)
                else:
                    du = dt * delta                                       # (11) energy output: g_L = 1
            else:
                du = dt * delta * _drho(u[i], act)                        # (12)
            ds[i] = acc
            dus[i] = du
            if l >= 2:
                dr[i - 1] = dr[i - 1] + du @ W[l - 1]                     # (11)/(12) ū_l W.{l−1}
            if l < L:
                dr[i + 1] = dr[i + 1] + du @ WT[l]                        # (11)/(12) ū_l W.lᵀ
        ds = [ds[i] + (dr[i] * _drho(s[i], act) if energy else dr[i]) for i in range(L)]   # through ρ(s_l)
        return dus, ds
    return mx.compile(step_back)


# ---------------------------------------------------------------------------------------------------- set-up

_DTYPE_NAMES = {mx.float32: "float32", mx.float64: "float64"}


def _setup(params, x, kind, activation, dt, y=None):
    """Validate like refimpl.ep (kind, activation, dt, shapes) → (net, (W, WT, b, WxT), r0)."""
    if x.dtype not in _DTYPE_NAMES:
        raise UnsupportedError(f"x has dtype {x.dtype}; EP runs in float32 or float64")
    net = net_from_kernel_args(params, x, kind, activation, dt, _DTYPE_NAMES[x.dtype], y)  # checks options, shapes
    L = net.n_layers
    W = [params[f"W.{l}"] for l in range(L)]
    b = [params[f"b.{l + 1}"] for l in range(L)]
    WxT = [transposed(params[f"Wx.{l}"]) for l in range(2, L + 1)] if net.kind == "toy" else []
    r0 = _rho(x, net.activation) if net.kind != "prototypical" else x
    return net, (W, [transposed(w) for w in W], b, WxT), r0


def _relax(net, weights, r0, s, steps, y=None, beta=None, keep=0):
    """`steps` steps from the states s; nudged (5) when y is given. keep: how many of the last steps' (s, u, s'_pre)
    to return (for BPTT)."""
    step = _step_fn(net.kind, net.activation, net.dt, net.clamp, y is not None)
    beta = mx.array(0.0 if beta is None else beta, dtype=r0.dtype)
    y = mx.zeros_like(s[-1]) if y is None else y
    kept = []
    for t in range(steps):
        new, u, pre = step(*weights, r0, s, y, beta)
        if t >= steps - keep:
            kept.append((s, u, pre))
        s = new
    return s, kept


def _zeros(net, B, dtype):
    return [mx.zeros((B, n), dtype=dtype) for n in net.sizes[1:]]


# ---------------------------------------------------------------------------------------------------- kernels

@kernel
def ep_free_phase(params, x, T, kind, activation, dt):
    """ep.free_phase: T free steps from s = 0. Returns [s_1 … s_L], each (B, n_l)."""
    T = check_T(T)
    net, weights, r0 = _setup(params, x, kind, activation, dt)
    s, _ = _relax(net, weights, r0, _zeros(net, x.shape[0], x.dtype), T)
    return list(s)


@kernel
def ep_nudged_phase(params, x, T, kind, activation, dt, y, K, beta):
    """ep.nudged_phase: K nudged steps from the free fixed point (T free steps). Returns [s^β_1 … s^β_L]."""
    T, K = check_T(T), check_T(K, "K")
    check_beta(beta)
    if y is None:
        raise UnsupportedError("ep.nudged_phase needs y (B, O), the target the output is nudged towards")
    net, weights, r0 = _setup(params, x, kind, activation, dt, y)
    s, _ = _relax(net, weights, r0, _zeros(net, x.shape[0], x.dtype), T)
    s, _ = _relax(net, weights, r0, s, K, y=y, beta=beta)
    return list(s)


@kernel
def ep_bptt(params, x, T, kind, activation, dt, y, K):
    """ep.bptt: BPTT of (7) through the last K free steps (13). Returns {param: ∂L/∂param} (params' order, dtypes)."""
    if y is None:
        raise UnsupportedError("ep.bptt needs y (B, O), the target of the loss (7)")
    T, K = check_truncation(T, K)
    net, weights, r0 = _setup(params, x, kind, activation, dt, y)
    B, L = x.shape[0], net.n_layers
    s, kept = _relax(net, weights, r0, _zeros(net, B, x.dtype), T, keep=K)
    ds = [mx.zeros_like(v) for v in s[:-1]] + [(s[-1] - y) / B]           # (7)
    step_back = _step_back_fn(net.kind, net.activation, net.dt, net.clamp)
    dU = [None] * K
    for t in reversed(range(K)):                                          # the step s_{T−K+t} → s_{T−K+t+1}, last first
        s_t, u_t, pre_t = kept[t]
        dU[t], ds = step_back(weights[0], weights[1], ds, s_t, u_t, pre_t)                     # (11)/(12)

    energy = net.kind != "prototypical"
    G = [mx.concatenate([dU[t][i] for t in range(K)], axis=0) for i in range(L)]          # ū_l, all (t, b) rows
    R = [None] + [mx.concatenate([(_rho(kept[t][0][i], net.activation) if energy else kept[t][0][i])
                                  for t in range(K)], axis=0) for i in range(L)]        # ρ(s_l) per step
    grads = {}
    for i in range(L):                                                    # W.i: layer i ↔ layer i+1
        G_sum = G[i].reshape(K, B, -1).sum(axis=0)                        # Σ_t ū_{i+1}
        gW = G_sum.T @ r0 if i == 0 else G[i].T @ R[i]                    # (11)/(12) ū_{i+1}ᵀ ρ(s_i)
        if i >= 1:
            gW = gW + R[i + 1].T @ G[i - 1]                               # (11)/(12) ρ(s_{i+1})ᵀ ū_i
        grads[f"W.{i}"] = gW
        grads[f"b.{i + 1}"] = G[i].sum(axis=0)                            # (11)/(12)
        if net.kind == "toy" and i >= 1:
            grads[f"Wx.{i + 1}"] = G_sum.T @ r0                           # (11)
    return param_grads(params, grads)


KERNELS = {"ep.free_phase": ep_free_phase, "ep.nudged_phase": ep_nudged_phase, "ep.bptt": ep_bptt}
