"""Peers: the same work done by PyTorch and JAX, when they are installed (optional; never installed by `make test`).

    torch_fwd_bwd(cell, shape)     torch.nn.RNN / GRU / LSTM forward + backward from a given output gradient (on
                                   device="cuda": cuDNN's fused kernels, timed to the device's synchronize)
    jax_lru_fwd_bwd(shape, how)    the LRU h_t = λ ⊙ h_{t−1} + γ ⊙ (B x_t) with jax.grad, by `lax.scan` (how="scan")
                                   or by `lax.associative_scan` (how="associative"), jit-compiled
Each returns a function doing one forward + backward (blocking until done), or raises ImportError when the library is
missing — callers report that as a skipped row.
"""

from __future__ import annotations

import numpy as np


def torch_fwd_bwd(cell: str, shape: dict, dtype: str = "float32", device: str = "cpu"):
    import torch
    cls = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell]
    dt = getattr(torch, dtype)
    m = cls(shape["I"], shape["H"]).to(device=device, dtype=dt)
    x = torch.randn(shape["T"], shape["B"], shape["I"], dtype=dt, device=device, requires_grad=True)
    g = torch.randn(shape["T"], shape["B"], shape["H"], dtype=dt, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def run():
        m.zero_grad(set_to_none=True)
        x.grad = None
        out, _ = m(x)
        out.backward(g)
        sync()
    return run


def jax_lru_fwd_bwd(shape: dict, how: str = "scan", seed: int = 0):
    import jax
    import jax.numpy as jnp
    T, B, I, N = shape["T"], shape["B"], shape["I"], shape["H"]
    rng = np.random.default_rng(seed)
    r = rng.uniform(0.9, 0.99, N)
    p = {"nu_log": jnp.asarray(np.log(-np.log(r)), jnp.float32),
         "theta_log": jnp.asarray(np.log(rng.uniform(0.01, 0.6, N)), jnp.float32),
         "gamma_log": jnp.asarray(np.log(np.sqrt(1 - r ** 2)), jnp.float32),
         "B_re": jnp.asarray(rng.standard_normal((N, I)) / np.sqrt(2 * I), jnp.float32),
         "B_im": jnp.asarray(rng.standard_normal((N, I)) / np.sqrt(2 * I), jnp.float32)}
    x = jnp.asarray(rng.standard_normal((T, B, I)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((T, B, N)) + 1j * rng.standard_normal((T, B, N)), jnp.complex64)

    def loss(p):
        lam = jnp.exp(-jnp.exp(p["nu_log"]) + 1j * jnp.exp(p["theta_log"]))
        u = jnp.exp(p["gamma_log"]) * (x @ (p["B_re"] + 1j * p["B_im"]).T)                # (T, B, N)
        if how == "scan":
            def step(h, u_t):
                h = lam * h + u_t
                return h, h
            _, h = jax.lax.scan(step, jnp.zeros((B, N), jnp.complex64), u)
        else:                                      # (a, b) ∘ (a', b') = (a a', a' b + b'): h_t = Σ_s λ^{t−s} u_s
            def combine(left, right):
                return left[0] * right[0], right[0] * left[1] + right[1]
            lam_t = jnp.broadcast_to(lam, u.shape)
            _, h = jax.lax.associative_scan(combine, (lam_t, u))
        return jnp.sum(jnp.real(jnp.conj(g) * h))
    grad = jax.jit(jax.grad(loss))

    def run():
        jax.block_until_ready(grad(p))
    return run
