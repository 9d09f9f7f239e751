r"""Peers of the whole training step (bench/step.py): the same models, losses and optimizer in JAX and in PyTorch.

Written from refimpl's own equations (not from another project's code), so that a peer computes what refimpl does:

    JAX (every model; jit-compiled; jax.value_and_grad + the update, one jitted function per step)
        encoder      u⁰ = x W_eᵀ + b_e                                       refimpl/nn/layers.py (1), model.py (46)
        pre-norm     a = LN(uˡ), ε = 1e-5                                    layers.py (4)–(6), model.py (47)
        lru          λ = exp(−exp ν_log + i exp θ_log), γ = exp γ_log,       refimpl/cells/lru.py (1)–(3)
                     h_t = λ ⊙ h_{t−1} + γ ⊙ (B x_t), by jax.lax.scan
        output map   y = Re(h Cᵀ) + D ⊙ a                                    layers.py (28)
        gru / lstm   torch's gate layout (DESIGN.md §3), by jax.lax.scan     refimpl/cells/gru.py, lstm.py
        GELU         tanh form ½ x (1 + tanh(c (x + κ x³)))                  layers.py (10)
        mlp / glu    fc2(GELU(fc1 y));  (W_v z + b_v) ⊙ σ(W_g z + b_g), z = GELU(y)   layers.py (14)–(16), (20)–(23)
        residual     uˡ⁺¹ = uˡ + f                                           model.py (51)
        pooling      none; cumulative_mean with the straight-through backward  layers.py (35)–(36):
                     p = y + stop_gradient(cummean(y) − y)
        readout      ŷ = p W_rᵀ + b_r                                        model.py (53)
        losses       L = (1/B) Σ m_tb l_tb with l = mse / ce / bce           refimpl/nn/losses.py (38)–(44)
        optimizer    global-norm clipping, the warm-up + cosine schedule, the recurrent group (lr·ρ, no decay),
                     Adam / AdamW                                            refimpl/optim.py (1)–(14)
    PyTorch (gru / lstm stacks only): nn.GRU / nn.LSTM (num_layers = L) + nn.Linear + torch.optim.Adam, loss as (38).

Both start from refimpl's own parameters (the dotted names map one to one), so `check` can compare the peer's loss —
and the JAX gradient — with refimpl's on the same parameters and inputs before anything is timed.

Each builder returns a Peer(step, loss, grads) or raises ImportError when the library is missing (reported as a
skipped row by bench/step.py). `step()` runs one training step and blocks until it is done.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

GELU_C, GELU_KAPPA, LN_EPS = math.sqrt(2.0 / math.pi), 0.044715, 1e-5


class Peer(NamedTuple):
    step: Callable          # () -> loss: one training step (forward, loss, backward, update), blocking
    loss: Callable          # () -> float: the loss at the initial parameters (no update)
    grads: Callable | None  # () -> {dotted name: ndarray}: the gradient at the initial parameters (None: not offered)


# ----------------------------------------------------------------------------------------------------------------
# JAX

def _jax_forward(model, jnp, lax):
    """The model's forward pass as a pure function of (params, x) → ŷ, from refimpl's equations (module doc)."""
    import jax

    def linear(p, pre, x):
        return x @ p[f"{pre}.weight"].T + p[f"{pre}.bias"]                                   # (1)

    def layer_norm(p, pre, x):
        mu = jnp.mean(x, -1, keepdims=True)                                                  # (4)
        var = jnp.mean((x - mu) ** 2, -1, keepdims=True)
        return p[f"{pre}.weight"] * ((x - mu) / jnp.sqrt(var + LN_EPS)) + p[f"{pre}.bias"]   # (5), (6)

    def gelu(x):
        return 0.5 * x * (1.0 + jnp.tanh(GELU_C * (x + GELU_KAPPA * x ** 3)))               # (10)

    def lru(p, pre, a):
        lam = jnp.exp(-jnp.exp(p[f"{pre}.nu_log"]) + 1j * jnp.exp(p[f"{pre}.theta_log"]))   # lru (1)
        Bc = p[f"{pre}.B_re"] + 1j * p[f"{pre}.B_im"]
        u = jnp.exp(p[f"{pre}.gamma_log"]) * (a @ Bc.T)                                      # lru (2)  (T, B, N)

        def step(h, u_t):
            h = lam * h + u_t                                                                # lru (3)
            return h, h
        _, h = lax.scan(step, jnp.zeros(u.shape[1:], u.dtype), u)
        return h

    def gru(p, pre, a):
        H = p[f"{pre}.weight_hh"].shape[1]
        gi = a @ p[f"{pre}.weight_ih"].T + p[f"{pre}.bias_ih"]                               # (T, B, 3H)
        W_hh, b_hh = p[f"{pre}.weight_hh"], p[f"{pre}.bias_hh"]

        def step(h, gi_t):
            gh = h @ W_hh.T + b_hh
            r = jax.nn.sigmoid(gi_t[:, :H] + gh[:, :H])
            z = jax.nn.sigmoid(gi_t[:, H:2 * H] + gh[:, H:2 * H])
            n = jnp.tanh(gi_t[:, 2 * H:] + r * gh[:, 2 * H:])
            h = (1.0 - z) * n + z * h
            return h, h
        _, h = lax.scan(step, jnp.zeros((a.shape[1], H), a.dtype), gi)
        return h

    def lstm(p, pre, a):
        H = p[f"{pre}.weight_hh"].shape[1]
        gi = a @ p[f"{pre}.weight_ih"].T + p[f"{pre}.bias_ih"] + p[f"{pre}.bias_hh"]         # (T, B, 4H)
        W_hh = p[f"{pre}.weight_hh"]

        def step(carry, gi_t):
            h, c = carry
            g = gi_t + h @ W_hh.T
            i, f = jax.nn.sigmoid(g[:, :H]), jax.nn.sigmoid(g[:, H:2 * H])
            gg, o = jnp.tanh(g[:, 2 * H:3 * H]), jax.nn.sigmoid(g[:, 3 * H:])
            c = f * c + i * gg
            h = o * jnp.tanh(c)
            return (h, c), h
        zero = jnp.zeros((a.shape[1], H), a.dtype)
        _, h = lax.scan(step, (zero, zero), gi)
        return h

    cells = {"lru": lru, "gru": gru, "lstm": lstm}

    def forward(p, x):
        u = linear(p, "encoder", x) if model.encoder else x                                  # (46)
        for l in range(model.layers):
            pre = f"layers.{l}"
            a = layer_norm(p, f"{pre}.norm", u) if model.norm == "layer" else u              # (47)
            h = cells[model.cell](p, f"{pre}.cell", a)                                       # (48)
            y = h
            if model.cells[l].output_map:                                                    # the lru
                C = p[f"{pre}.C_re"] + 1j * p[f"{pre}.C_im"]
                y = jnp.real(h @ C.T) + p[f"{pre}.D"] * a                                    # (49), (28)
            f = y
            if model.ffn == "mlp":
                f = linear(p, f"{pre}.ffn.fc2", gelu(linear(p, f"{pre}.ffn.fc1", y)))        # (14)–(16)
            elif model.ffn == "glu":
                z = gelu(y)                                                                  # (20)
                f = linear(p, f"{pre}.ffn.value", z) * jax.nn.sigmoid(linear(p, f"{pre}.ffn.gate", z))   # (21)–(23)
            u = u + f if model.residual else f                                               # (51)
        if model.pooling == "cumulative_mean":                                               # (35), (36)
            counts = jnp.arange(1, u.shape[0] + 1, dtype=u.dtype).reshape(-1, 1, 1)
            u = u + lax.stop_gradient(jnp.cumsum(u, 0) / counts - u)
        elif model.pooling != "none":
            raise NotImplementedError(f"pooling {model.pooling!r} has no JAX peer here")
        return linear(p, "readout", u)                                                       # (53)
    return forward


def _jax_loss(name: str, jnp):
    """(38): L = (1/B) Σ_tb m_tb l_tb for a per-step output (T, B, O)."""
    import jax

    def per_step(out, y):
        if name == "mse":
            return 0.5 * jnp.sum((out - y) ** 2, -1)                                         # (40)
        if name == "ce":
            lse = jax.nn.logsumexp(out, -1)
            return lse - jnp.take_along_axis(out, y[..., None], -1)[..., 0]                  # (42)
        return jnp.sum(jnp.maximum(out, 0.0) - out * y + jnp.log1p(jnp.exp(-jnp.abs(out))), -1)   # (44)

    def loss(out, y, m):
        return jnp.sum(m * per_step(out, y)) / out.shape[1]                                  # (38)
    return loss


def _jax_update(opt, names, jnp):
    """refimpl/optim.py's step (clip (4)–(5), schedule (1)–(2), groups (3), Adam/AdamW (9)–(14)) on dicts of jnp
    arrays; `s` is the number of updates done so far (a jnp scalar)."""
    from refimpl.optim import is_recurrent
    if opt.name == "sgd":
        raise NotImplementedError("the JAX peer implements Adam / AdamW")
    group = {n: (opt.rec_lr_factor, 0.0) if is_recurrent(n) else (1.0, opt.weight_decay) for n in names}   # (3)

    def lr_at(s):
        s = s.astype(jnp.float32)
        if opt.schedule == "constant":
            base = jnp.asarray(opt.lr, jnp.float32)
        else:
            p = jnp.minimum(1.0, (s - opt.warmup_steps) / (opt.total_steps - opt.warmup_steps))
            r = opt.min_lr_ratio
            base = opt.lr * (r + (1.0 - r) * 0.5 * (1.0 + jnp.cos(math.pi * p)))            # (2)
        if opt.warmup_steps:
            base = jnp.where(s < opt.warmup_steps, opt.lr * s / opt.warmup_steps, base)      # (1)
        return base

    def update(p, g, m, v, s):
        if opt.clip_norm:
            norm = jnp.sqrt(sum(jnp.sum(g[n].astype(jnp.float32) ** 2) for n in names))      # (4)
            scale = jnp.where(norm > opt.clip_norm, opt.clip_norm / norm, 1.0)               # (5)
            g = {n: g[n] * scale for n in names}
        k = s + 1
        lr = lr_at(s)
        c1 = 1.0 - opt.beta1 ** k.astype(jnp.float32)
        c2 = 1.0 - opt.beta2 ** k.astype(jnp.float32)
        new_p, new_m, new_v = {}, {}, {}
        for n in names:
            rho, wd = group[n]
            pn, gn = p[n], g[n]
            if opt.name == "adam" and wd:
                gn = gn + wd * pn                                                            # (9)
            if opt.name == "adamw" and wd:
                pn = pn * (1.0 - lr * rho * wd)                                              # (10)
            new_m[n] = opt.beta1 * m[n] + (1.0 - opt.beta1) * gn                             # (11)
            new_v[n] = opt.beta2 * v[n] + (1.0 - opt.beta2) * gn * gn                        # (12)
            new_p[n] = pn - lr * rho * (new_m[n] / c1) / (jnp.sqrt(new_v[n] / c2) + opt.eps)  # (13), (14)
        return new_p, new_m, new_v, k
    return update


def jax_step(model, params: dict, x, y, mask, loss: str, opt) -> Peer:
    """A jit-compiled JAX training step of `model` from refimpl's `params` (float32) on the batch (x, y, mask)."""
    import jax
    import jax.numpy as jnp
    from jax import lax
    forward, loss_fn = _jax_forward(model, jnp, lax), _jax_loss(loss, jnp)
    names = list(params)
    T, B = x.shape[:2]
    xj = jnp.asarray(x)
    yj = jnp.asarray(y)
    mj = jnp.asarray(np.ones((T, B), x.dtype) if mask is None else np.broadcast_to(mask.reshape(T, -1), (T, B)))

    def objective(p, x, y, m):
        return loss_fn(forward(p, x), y, m)
    value_and_grad = jax.value_and_grad(objective)
    update = _jax_update(opt, names, jnp)

    @jax.jit
    def train_step(p, m1, v1, s, x, y, m):
        value, g = value_and_grad(p, x, y, m)
        p, m1, v1, s = update(p, g, m1, v1, s)
        return p, m1, v1, s, value

    state = {"p": {n: jnp.asarray(params[n]) for n in names}, "m": {n: jnp.zeros(params[n].shape, params[n].dtype)
                                                                   for n in names}}
    state["v"], state["s"] = dict(state["m"]), jnp.asarray(0, jnp.int32)
    p0 = dict(state["p"])

    def step():
        p, m1, v1, s, value = train_step(state["p"], state["m"], state["v"], state["s"], xj, yj, mj)
        jax.block_until_ready((p, m1, v1, value))
        state.update(p=p, m=m1, v=v1, s=s)
        return value

    objective_jit = jax.jit(objective)
    grads_jit = jax.jit(jax.grad(objective))
    return Peer(step=step, loss=lambda: float(objective_jit(p0, xj, yj, mj)),
                grads=lambda: {n: np.asarray(g) for n, g in grads_jit(p0, xj, yj, mj).items()})


# ----------------------------------------------------------------------------------------------------------------
# PyTorch

def torch_step(model, params: dict, x, y, mask, loss: str, opt) -> Peer:
    """nn.GRU / nn.LSTM (num_layers = model.layers) + nn.Linear + torch.optim.Adam, from refimpl's `params`.
    Only the plain stacks (no encoder, norm, ffn, residual; pooling none; mse loss; Adam without clipping, decay or
    schedule): anything else raises NotImplementedError."""
    import torch
    if model.cell not in ("gru", "lstm") or model.encoder or model.norm or model.ffn or model.residual \
            or model.pooling != "none" or loss != "mse" or opt.name != "adam" or opt.clip_norm \
            or opt.weight_decay or opt.schedule != "constant" or opt.rec_lr_factor != 1.0:
        raise NotImplementedError("the torch peer covers plain gru / lstm stacks with mse and plain Adam")
    cls = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[model.cell]
    rnn = cls(model.n_in, model.n_hidden, num_layers=model.layers)
    head = torch.nn.Linear(model.n_hidden, model.n_out)
    with torch.no_grad():
        for l in range(model.layers):
            for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(rnn, f"{k}_l{l}").copy_(torch.from_numpy(params[f"layers.{l}.cell.{k}"]))
        head.weight.copy_(torch.from_numpy(params["readout.weight"]))
        head.bias.copy_(torch.from_numpy(params["readout.bias"]))
    rnn, head = rnn.float(), head.float()
    T, B = x.shape[:2]
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    mt = torch.from_numpy(np.ones((T, B), x.dtype) if mask is None
                          else np.ascontiguousarray(np.broadcast_to(mask.reshape(T, -1), (T, B))))
    adam = torch.optim.Adam(list(rnn.parameters()) + list(head.parameters()), lr=opt.lr,
                            betas=(opt.beta1, opt.beta2), eps=opt.eps)

    def objective():
        out = head(rnn(xt)[0])
        return torch.sum(mt * 0.5 * torch.sum((out - yt) ** 2, -1)) / B                    # (38), (40)

    def step():
        adam.zero_grad(set_to_none=True)
        value = objective()
        value.backward()
        adam.step()
        return float(value)

    with torch.no_grad():
        first = float(objective())
    return Peer(step=step, loss=lambda: first, grads=None)
