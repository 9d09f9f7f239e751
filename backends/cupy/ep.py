r"""The EP relaxation loops (ep.free_phase, ep.nudged_phase, ep.bptt) on a CUDA device, as CuPy array ops.

Same signatures (after the device), output structure, dtypes and shapes as the NumPy references (refimpl/kernels.py
→ refimpl/ep/networks.py): free/nudged return the list [s_1 … s_L] of (B, n_l) states, bptt the dict
{param: ∂L/∂param} with every parameter. Every variant: kind prototypical (4), energy (2)–(3) with the clamp (6) and
g_L = 1 on its output layer, toy (2) with the Wx skips; activations tanh, sigm, hardsigm. Equation numbers "(n)" are
refimpl/ep/networks.py's.

A relaxation step is a few GEMMs per layer (cuBLAS) and elementwise updates over the whole (B, n_l) layer, so it is
written with the device's array module (dev.xp) and needs no hand-written CUDA kernel: the loop over steps stays on
the host, the arrays stay on the device (no transfer inside the loop). The activations ρ, ρ′, ρ″ are the reference's
own (refimpl.ep.rho, drho, d2rho: NumPy ufunc code, which CuPy arrays dispatch to CuPy). The adjoint (11)/(12) of the
last K free steps keeps their states, drives and pre-clamp values (as the reference's EPStepCache).
"""

from __future__ import annotations

from refimpl.ep import check_beta, check_T, check_truncation, d2rho, drho, net_from_kernel_args, rho
from refimpl.errors import UnsupportedError


# ---------------------------------------------------------------------------------------------------- one step

def _step(xp, net, params, x, s, beta=0.0, y=None):
    """One step (2)–(6): s [s_1 … s_L] → ([s'_1 … s'_L], (s, u, pre)) for the adjoint."""
    L, act, dt = net.n_layers, net.activation, net.dt
    energy = net.kind != "prototypical"
    full = [x] + list(s)
    r = [rho(v, act) for v in full] if energy else full                     # ρ(s_l) (energy) / s_l (proto)
    us, pres, new = [], [], []
    for l in range(1, L + 1):
        u = r[l - 1] @ params[f"W.{l - 1}"].T + params[f"b.{l}"]                # (2)/(4)  (B, n_l)
        if l < L:
            u = u + r[l + 1] @ params[f"W.{l}"]                                  # (2)/(4)
        if net.kind == "toy" and l >= 2:
            u = u + r[0] @ params[f"Wx.{l}"].T                                   # (2)
        if energy:
            g_is_drho = not (net.kind == "energy" and l == L)                    # energy output layer: g_L = 1
            d = -full[l] + (drho(full[l], act) * u if g_is_drho else u)     # (3)
        else:
            d = -full[l] + rho(u, act)                                      # (4)
        if l == L and beta != 0.0:
            d = d + beta * (y - full[l])                                         # (5) nudge
        pre = full[l] + dt * d                                                   # (5)
        us.append(u)
        pres.append(pre)
        new.append(xp.clip(pre, 0.0, 1.0) if net.clamp else pre)                 # (6)
    return new, (list(s), us, pres)


def _step_backward(xp, net, params, x, cache, ds_new):
    """Adjoint of one FREE step (11)/(12): s̄' → (dparams, s̄)."""
    L, act, dt = net.n_layers, net.activation, net.dt
    energy = net.kind != "prototypical"
    s, us, pres = cache
    full = [x] + list(s)
    r = [rho(v, act) for v in full] if energy else full
    dparams = {k: xp.zeros_like(v) for k, v in params.items()}
    dr = [xp.zeros_like(v) for v in full]
    ds = [xp.zeros_like(v) for v in full]
    for l in range(L, 0, -1):
        delta = ds_new[l - 1]
        if net.clamp:
            p = pres[l - 1]
            delta = delta * ((p > 0.0) & (p < 1.0))                              # (6)
        ds[l] += (1.0 - dt) * delta                                              # (11)/(12)
        if energy:
            if not (net.kind == "energy" and l == L):
                du = dt * delta * drho(full[l], act)                        # (11)
                ds[l] += dt * delta * us[l - 1] * d2rho(full[l], act)       # (11) through g_l = ρ'(s_l)
            else:
                du = dt * delta                                                  # (11) energy output: g_L = 1
        else:
            du = dt * delta * drho(us[l - 1], act)                          # (12)
        dparams[f"W.{l - 1}"] += du.T @ r[l - 1]                                 # (11)/(12)
        dparams[f"b.{l}"] += du.sum(0)                                           # (11)/(12)
        dr[l - 1] += du @ params[f"W.{l - 1}"]                                   # (11)/(12)
        if l < L:
            dparams[f"W.{l}"] += r[l + 1].T @ du                                 # (11)/(12)
            dr[l + 1] += du @ params[f"W.{l}"].T                                 # (11)/(12)
        if net.kind == "toy" and l >= 2:
            dparams[f"Wx.{l}"] += du.T @ r[0]                                    # (11)
    for l in range(1, L + 1):
        ds[l] += dr[l] * drho(full[l], act) if energy else dr[l]            # (11)/(12) through ρ(s_l)
    return dparams, ds[1:]


# ---------------------------------------------------------------------------------------------------- the kernels

def _setup(xp, params, x, kind, activation, dt, y=None):
    """The network (validated by refimpl.ep.make_ep_net) and the inputs in its dtype, checked like ep.check_inputs."""
    net = net_from_kernel_args(params, x, kind, activation, dt, y=y)
    x = xp.ascontiguousarray(x, dtype=net.dtype)
    if y is not None:
        y = xp.ascontiguousarray(y, dtype=net.dtype)
    return net, x, y


def _relax(xp, net, params, x, s, steps, beta=0.0, y=None):
    for _ in range(steps):
        s, _ = _step(xp, net, params, x, s, beta, y)                             # (5)–(6)
    return s


def ep_free_phase(dev, params, x, T, kind, activation, dt):
    """ep.free_phase: T free steps from s = 0. Returns [s_1 … s_L], each (B, n_l)."""
    xp = dev.xp
    net, x, _ = _setup(xp, params, x, kind, activation, dt)
    T = check_T(T)
    s = [xp.zeros((x.shape[0], n), dtype=x.dtype) for n in net.sizes[1:]]
    return _relax(xp, net, params, x, s, T)


def ep_nudged_phase(dev, params, x, T, kind, activation, dt, y, K, beta):
    """ep.nudged_phase: K nudged steps from the free fixed point (T free steps). Returns [s^β_1 … s^β_L]."""
    xp = dev.xp
    net, x, y = _setup(xp, params, x, kind, activation, dt, y)
    T, K = check_T(T), check_T(K, "K")
    check_beta(beta)
    if y is None:
        raise UnsupportedError("ep.nudged_phase needs y (B, O), the target the output is nudged towards")
    s = [xp.zeros((x.shape[0], n), dtype=x.dtype) for n in net.sizes[1:]]
    s = _relax(xp, net, params, x, s, T)
    return _relax(xp, net, params, x, s, K, beta, y)


def ep_bptt(dev, params, x, T, kind, activation, dt, y, K):
    """ep.bptt: BPTT of (7) through the last K free steps (13). Returns {param: ∂L/∂param} (params' order, dtypes)."""
    xp = dev.xp
    net, x, y = _setup(xp, params, x, kind, activation, dt, y)
    if y is None:
        raise UnsupportedError("ep.bptt needs y (B, O), the target of the loss (7)")
    T, K = check_truncation(T, K)
    s = [xp.zeros((x.shape[0], n), dtype=x.dtype) for n in net.sizes[1:]]
    caches = []
    for t in range(T):
        s, cache = _step(xp, net, params, x, s)                                  # (5)–(6)
        if t >= T - K:
            caches.append(cache)
    ds = [xp.zeros_like(v) for v in s]
    ds[-1] = (s[-1] - y) / x.shape[0]                                            # (7)
    grads = {k: xp.zeros_like(v) for k, v in params.items()}
    for t in range(K):                                                           # the step s_{T−t−1} → s_{T−t}
        dparams, ds = _step_backward(xp, net, params, x, caches[K - 1 - t], ds)  # (11)/(12)
        for k in grads:
            grads[k] += dparams[k]                                               # (13)
    return {k: grads[k].astype(v.dtype, copy=False) for k, v in params.items()}


IMPLEMENTATIONS = {"ep.free_phase": ep_free_phase, "ep.nudged_phase": ep_nudged_phase, "ep.bptt": ep_bptt}
