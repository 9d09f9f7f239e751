r"""The EP relaxation loops (ep.free_phase, ep.nudged_phase, ep.bptt) as Numba loops, with the references' outputs.

Same signatures, output structure, dtypes and shapes as the NumPy references (refimpl/kernels.py →
refimpl/ep/networks.py): free/nudged return the list [s_1 … s_L] of (B, n_l) states, bptt the dict
{param: ∂L/∂param} with every parameter. Every variant is implemented: kind prototypical (4), energy (2)–(3) with
the clamp (6) and g_L = 1 on its output layer, toy (2) with the Wx skips; activations tanh, sigm, hardsigm. Equation
numbers "(n)" are refimpl/ep/networks.py's.

Layout: the whole relaxation (T steps, all layers updated synchronously from the old state (5)) is ONE
@njit(cache=True) call; per step and layer the drive (2)/(4) is one to three BLAS GEMMs into preallocated buffers
(np.dot(…, out=…): no allocation per step), then one fused pass over (b, k) for (3)–(6). The per-layer arrays travel
as numba.typed.List (any number of layers). The BPTT adjoint (11)/(12) is a second loop that stores the drive
adjoints ū_l of the K steps; the parameter gradients are then one GEMM each over all (t, b) rows, outside the loop.
ρ = sigm is evaluated as 1/(1+e^{−4(s−½)}), one scalar exp, instead of the reference's ½(1+tanh(2(s−½))) (≤ 1 ulp
apart): in a scalar loop a libm call is the cost, and NumPy's SIMD tanh is not available there.
Scalars inside the loops come from a constant array of the states' dtype (`c`), so float32 kernels stay in float32.
Sequential and in a fixed order: bit-reproducible run to run. Inputs are never written to.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.typed import List

from refimpl.ep import check_beta, check_inputs, check_T, check_truncation, net_from_kernel_args, rho
from refimpl.errors import UnsupportedError

from ..common import param_grads
from .runtime import contiguous

_ACT = {"tanh": 0, "sigm": 1, "hardsigm": 2}
_KIND = {"prototypical": 0, "energy": 1, "toy": 2}
# indices into the constant array c
_HALF, _ONE, _TWO, _FOUR, _SIXTEEN, _ZERO, _DT, _BETA = range(8)


# ---------------------------------------------------------------------------------------------------- activations

@njit(cache=True, inline="always")
def _rho(v, act, c):
    if act == 0:
        return np.tanh(v)
    if act == 1:
        return c[_ONE] / (c[_ONE] + np.exp(-c[_FOUR] * (v - c[_HALF])))          # 1/(1+e^{−4(s−½)}) (e^∞ → 0, no NaN)
    return min(max(v, c[_ZERO]), c[_ONE])


@njit(cache=True, inline="always")
def _drho(v, act, c):
    if act == 0:
        r = np.tanh(v)
        return c[_ONE] - r * r
    if act == 1:
        r = _rho(v, act, c)
        return c[_FOUR] * r * (c[_ONE] - r)
    return c[_ONE] if (v >= c[_ZERO] and v <= c[_ONE]) else c[_ZERO]


@njit(cache=True, inline="always")
def _d2rho(v, act, c):
    if act == 0:
        r = np.tanh(v)
        return -c[_TWO] * r * (c[_ONE] - r * r)
    if act == 1:
        r = _rho(v, act, c)
        return c[_SIXTEEN] * r * (c[_ONE] - r) * (c[_ONE] - c[_TWO] * r)
    return c[_ZERO]


# ---------------------------------------------------------------------------------------------------- the loops

@njit(cache=True)
def _relax(x, s, W, WT, b, WxT, act, kind, clamp, c, y, nudge, steps, Sc, Uc, Pc):
    """`steps` synchronous steps (2)–(6) from the states s (a list of (B, n_l), overwritten: pass copies).

    kind 0 prototypical, 1 energy, 2 toy. W[i] = W.i (n_{i+1}, n_i), WT[i] = its transpose, b[i] = b.{i+1},
    WxT[i] = Wx.{i+1}ᵀ (I, n_{i+1}) for i ≥ 1 (toy). nudge: add β(y − s_L) (5). The last
    Sc[0].shape[0] = K steps store s_l before the step, u_l and the pre-clamp s'_l into Sc, Uc, Pc (K, B, n_l).
    Returns the final states (a list of fresh arrays).
    """
    L = len(s)
    B = x.shape[0]
    energy = kind != 0
    dt = c[_DT]
    beta = c[_BETA]
    K = Sc[0].shape[0]
    r0 = np.empty_like(x)                                                     # ρ(x) (energy, toy) or x (proto)
    for bb in range(B):
        for k in range(x.shape[1]):
            r0[bb, k] = _rho(x[bb, k], act, c) if energy else x[bb, k]
    cur = s
    nxt = List()
    r = List()
    u = List()
    tmp = List()
    for i in range(L):
        nxt.append(np.empty_like(s[i]))
        r.append(np.empty_like(s[i]))
        u.append(np.empty_like(s[i]))
        tmp.append(np.empty_like(s[i]))
    for t in range(steps):
        for i in range(L):                                                    # ρ(s_l) (energy) / s_l (proto)
            ri, si = r[i], cur[i]
            for bb in range(B):
                for k in range(si.shape[1]):
                    ri[bb, k] = _rho(si[bb, k], act, c) if energy else si[bb, k]
        k_store = t - (steps - K)
        for i in range(L):                                                    # layer l = i + 1
            ui, ti, si, pi = u[i], tmp[i], cur[i], nxt[i]
            Sci, Uci, Pci = Sc[i], Uc[i], Pc[i]                               # hoisted: list access is not free
            n = si.shape[1]
            np.dot(r0 if i == 0 else r[i - 1], WT[i], ui)                     # (2)/(4) W.{l−1} ρ(s_{l−1})
            bi = b[i]
            for bb in range(B):
                for k in range(n):
                    ui[bb, k] = ui[bb, k] + bi[k]                             # (2)/(4) + b.l
            if i < L - 1:
                np.dot(r[i + 1], W[i + 1], ti)                                # (2)/(4) W.lᵀ ρ(s_{l+1})
                for bb in range(B):
                    for k in range(n):
                        ui[bb, k] = ui[bb, k] + ti[bb, k]
            if kind == 2 and i >= 1:
                np.dot(r0, WxT[i], ti)                                        # (2) Wx.l ρ(x)
                for bb in range(B):
                    for k in range(n):
                        ui[bb, k] = ui[bb, k] + ti[bb, k]
            g_is_drho = not (kind == 1 and i == L - 1)                        # energy output layer: g_L = 1
            out = i == L - 1
            for bb in range(B):
                for k in range(n):
                    sv = si[bb, k]
                    uv = ui[bb, k]
                    if energy:
                        d = -sv + (_drho(sv, act, c) * uv if g_is_drho else uv)      # (3)
                    else:
                        d = -sv + _rho(uv, act, c)                                   # (4)
                    if out and nudge:
                        d = d + beta * (y[bb, k] - sv)                               # (5) nudge
                    pre = sv + dt * d                                                # (5)
                    if k_store >= 0:
                        Sci[k_store, bb, k] = sv
                        Uci[k_store, bb, k] = uv
                        Pci[k_store, bb, k] = pre
                    pi[bb, k] = min(max(pre, c[_ZERO]), c[_ONE]) if clamp else pre   # (6)
        cur, nxt = nxt, cur
    res = List()
    for i in range(L):
        res.append(cur[i].copy())
    return res


@njit(cache=True)
def _adjoint(ds, Sc, Uc, Pc, W, WT, act, kind, clamp, c, dU):
    """The adjoint (11)/(12) through the K stored free steps, last first. ds: the list of ∂L/∂s_T (overwritten),
    ends as ∂L/∂s_{T−K}. Writes the drive adjoints ū_l of every step into dU[i] (K, B, n_l) (chronological)."""
    L = len(ds)
    K = Sc[0].shape[0]
    energy = kind != 0
    dt = c[_DT]
    nds = List()
    dr = List()
    du = List()
    tmp = List()
    for i in range(L):
        nds.append(np.empty_like(ds[i]))
        dr.append(np.empty_like(ds[i]))
        du.append(np.empty_like(ds[i]))
        tmp.append(np.empty_like(ds[i]))
    for t in range(K):
        kk = K - 1 - t                                       # the step s_{T−t−1} → s_{T−t}
        for i in range(L):
            dr[i][:] = c[_ZERO]
        for i in range(L - 1, -1, -1):                       # layer l = i + 1, output first
            dsi, ndsi, dui = ds[i], nds[i], du[i]
            S, U, P, dUi = Sc[i], Uc[i], Pc[i], dU[i]
            B, n = dsi.shape
            g_is_drho = not (kind == 1 and i == L - 1)
            for bb in range(B):
                for k in range(n):
                    delta = dsi[bb, k]
                    if clamp:
                        p = P[kk, bb, k]
                        if not (p > c[_ZERO] and p < c[_ONE]):
                            delta = delta * c[_ZERO]                                 # (6)
                    acc = (c[_ONE] - dt) * delta                                     # (11)/(12)
                    if energy:
                        sv = S[kk, bb, k]
                        if g_is_drho:
                            g = dt * delta * _drho(sv, act, c)                       # (11)
                            acc = acc + dt * delta * U[kk, bb, k] * _d2rho(sv, act, c)   # (11) through g_l
                        else:
                            g = dt * delta                                           # (11) g_L = 1
                    else:
                        g = dt * delta * _drho(U[kk, bb, k], act, c)                 # (12)
                    ndsi[bb, k] = acc
                    dui[bb, k] = g
                    dUi[kk, bb, k] = g
            if i >= 1:
                np.dot(dui, W[i], tmp[i - 1])                                        # (11)/(12) ū_l W.{l−1}
                t_ = tmp[i - 1]
                dri = dr[i - 1]
                for bb in range(B):
                    for k in range(t_.shape[1]):
                        dri[bb, k] = dri[bb, k] + t_[bb, k]
            if i < L - 1:
                np.dot(dui, WT[i + 1], tmp[i + 1])                                   # (11)/(12) ū_l W.lᵀ
                t_ = tmp[i + 1]
                dri = dr[i + 1]
                for bb in range(B):
                    for k in range(t_.shape[1]):
                        dri[bb, k] = dri[bb, k] + t_[bb, k]
        for i in range(L):                                                           # (11)/(12) through ρ(s_l)
            S, ndsi, dri = Sc[i], nds[i], dr[i]
            B, n = ndsi.shape
            for bb in range(B):
                for k in range(n):
                    ndsi[bb, k] = ndsi[bb, k] + (dri[bb, k] * _drho(S[kk, bb, k], act, c) if energy
                                                 else dri[bb, k])
        ds, nds = nds, ds


# ---------------------------------------------------------------------------------------------------- the kernels

def _setup(params, x, kind, activation, dt, y=None, beta=None):
    """The network (validated by refimpl.ep), x and y in its dtype, the weights as typed lists, the constants c."""
    net = net_from_kernel_args(params, x, kind, activation, dt, y=y)
    x, y = check_inputs(net, params, x, y)
    dtype = x.dtype
    L = net.n_layers
    W, WT, b, WxT = List(), List(), List(), List()
    for i in range(L):
        W.append(contiguous(params[f"W.{i}"], dtype))
        WT.append(contiguous(params[f"W.{i}"].T, dtype))
        b.append(contiguous(params[f"b.{i + 1}"], dtype))
        WxT.append(contiguous(params[f"Wx.{i + 1}"].T, dtype) if (kind == "toy" and i >= 1)
                   else np.zeros((1, 1), dtype))
    c = np.array([0.5, 1.0, 2.0, 4.0, 16.0, 0.0, net.dt, 0.0 if beta is None else beta], dtype)
    return net, contiguous(x, dtype), y, (W, WT, b, WxT), c


def _zeros(net, B, dtype):
    s = List()
    for n in net.sizes[1:]:
        s.append(np.zeros((B, n), dtype))
    return s


def _run(net, x, wts, c, s, steps, y=None, K=0):
    """One _relax call; returns (states, (Sc, Uc, Pc) or None)."""
    W, WT, b, WxT = wts
    dtype, B = x.dtype, x.shape[0]
    if K:
        Sc, Uc, Pc = List(), List(), List()
        for n in net.sizes[1:]:
            Sc.append(np.empty((K, B, n), dtype))
            Uc.append(np.empty((K, B, n), dtype))
            Pc.append(np.empty((K, B, n), dtype))
    else:
        Sc = Uc = Pc = List([np.empty((0, 1, 1), dtype) for _ in net.sizes[1:]])   # K = 0: nothing stored
    nudge = y is not None
    y_arr = contiguous(y, dtype) if nudge else np.zeros((1, 1), dtype)
    out = _relax(x, s, W, WT, b, WxT, _ACT[net.activation], _KIND[net.kind], net.clamp, c, y_arr, nudge, steps,
                 Sc, Uc, Pc)
    return out, ((Sc, Uc, Pc) if K else None)


def ep_free_phase(params, x, T, kind, activation, dt):
    """ep.free_phase: T free steps from s = 0. Returns [s_1 … s_L], each (B, n_l)."""
    net, x, _, wts, c = _setup(params, x, kind, activation, dt)
    T = check_T(T)
    s, _ = _run(net, x, wts, c, _zeros(net, x.shape[0], x.dtype), T)
    return list(s)


def ep_nudged_phase(params, x, T, kind, activation, dt, y, K, beta):
    """ep.nudged_phase: K nudged steps from the free fixed point (T free steps). Returns [s^β_1 … s^β_L]."""
    T = check_T(T)
    K = check_T(K, "K")
    check_beta(beta)
    net, x, y, wts, c = _setup(params, x, kind, activation, dt, y, beta)
    s, _ = _run(net, x, wts, c, _zeros(net, x.shape[0], x.dtype), T)
    s, _ = _run(net, x, wts, c, s, K, y=y)
    return list(s)


def ep_bptt(params, x, T, kind, activation, dt, y, K):
    """ep.bptt: BPTT of (7) through the last K free steps (13). Returns {param: ∂L/∂param} (params' order, dtypes)."""
    net, x, y, wts, c = _setup(params, x, kind, activation, dt, y)
    if y is None:
        raise UnsupportedError("ep.bptt needs y (B, O), the target of the loss (7)")
    T, K = check_truncation(T, K)
    dtype, B, L = x.dtype, x.shape[0], net.n_layers
    s, (Sc, Uc, Pc) = _run(net, x, wts, c, _zeros(net, B, dtype), T, K=K)
    ds = List()
    for i in range(L):
        ds.append(np.zeros_like(s[i]))
    ds[L - 1] = (s[L - 1] - y) / B                                                     # (7)
    dU = List()
    for n in net.sizes[1:]:
        dU.append(np.empty((K, B, n), dtype))
    W, WT, _, _ = wts
    _adjoint(ds, Sc, Uc, Pc, W, WT, _ACT[net.activation], _KIND[net.kind], net.clamp, c, dU)

    energy = net.kind != "prototypical"
    r0 = rho(x, net.activation) if energy else x
    R = [None] + [(rho(S, net.activation) if energy else S).reshape(K * B, -1) for S in Sc]      # ρ(s_l) per step
    G = [g.reshape(K * B, -1) for g in dU]
    Gsum = [g.sum(axis=0) for g in dU]                                                 # Σ_t ū_l (B, n_l)
    grads = {}
    for i in range(L):                                  # W.i: layer i ↔ layer i+1
        gW = (Gsum[0].T @ r0) if i == 0 else (G[i].T @ R[i])                           # (11)/(12) ū_{i+1}ᵀ ρ(s_i)
        if i >= 1:
            gW = gW + R[i + 1].T @ G[i - 1]                                            # (11)/(12) ρ(s_{i+1})ᵀ ū_i
        grads[f"W.{i}"] = gW
        grads[f"b.{i + 1}"] = G[i].sum(axis=0, dtype=np.float64)                       # (11)/(12)
        if net.kind == "toy" and i >= 1:
            grads[f"Wx.{i + 1}"] = Gsum[i].T @ r0                                      # (11)
    return param_grads(params, grads)


KERNELS = {"ep.free_phase": ep_free_phase, "ep.nudged_phase": ep_nudged_phase, "ep.bptt": ep_bptt}
