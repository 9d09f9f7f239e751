r"""The model's batched layer operations on Numba: the elementwise chains of layer norm, GELU, the GLU gate and the
LRU output map fused into compiled loops (LAYERS, a refimpl.nn.layers.LayerOps).

The reference (refimpl/nn/layers.py, equations (4)–(31)) writes each block as NumPy array expressions: every operator
makes a temporary of the activations' size and reads its operands again, so a GELU backward (11) walks memory about
ten times, and NumPy's float32 reductions inside layer norm are separate passes. Here each chain is one loop over the
elements (or one loop per row of the last axis for layer norm), with the transcendental functions of fastmath.py
(tanh as arithmetic, so the loops vectorise). The matrix products stay BLAS (NumPy's @).

Same signatures, same caches (the reference's NamedTuples with the same contents): a backward here reads a cache the
reference made and the other way round, so nothing depends on which bundle ran a forward. Equations, as numbered in
refimpl/nn/layers.py:

    layer_norm_forward / _backward   (4)–(6) / (7)–(9), one row of the last axis at a time (sums in float64)
    ffn_forward / ffn_backward       mlp (14)–(19), glu (20)–(27): the linears by BLAS; GELU (10), (11) and the gate
                                     σ, ⊙ of (22)–(25) fused
    lru_output_forward / _backward   (28)–(31) as real GEMMs: with h viewed as interleaved (re, im) pairs h̃ (…, 2N)
                                     and W̃ (2N, d) holding (C_re, −C_im) in the same interleaving,
                                        Re(C h) = h̃ W̃,   h̄ = conj(C)ᵀ-product = (ȳ W̃ᵀ) viewed as complex,
                                        [C̄_re, −C̄_im] interleaved = (h̃ᵀ ȳ)ᵀ
                                     one real product of width 2N in place of a complex one (which costs four) and
                                     no complex copy of ȳ

Arrays must be C-contiguous in their last axis for the views (the stack's are); others are copied once.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from refimpl.nn.layers import (GELU_C, GELU_KAPPA, LAYER_NORM_EPS, GELUCache, GLUCache, LayerNormCache,
                               LayerOps, LRUOutputCache, MLPCache, linear_backward, linear_forward)

from .fastmath import tanh
from .runtime import LOOP


def _rows(a: np.ndarray) -> np.ndarray:
    """a (..., d) as a C-contiguous (rows, d) array (a view when it already is one)."""
    return np.ascontiguousarray(a).reshape(-1, a.shape[-1])


# ----------------------------------------------------------------------------------------------------------------
# Layer norm, (4)–(9)

@njit(**LOOP)
def _layer_norm_rows(x, w, b, eps, out, xhat, rstd):
    n, d = x.shape
    for i in range(n):
        mu = 0.0
        for k in range(d):
            mu += x[i, k]
        mu /= d                                                                     # (4)
        var = 0.0
        for k in range(d):
            c = x[i, k] - mu
            var += c * c
        r = 1.0 / np.sqrt(var / d + eps)                                            # (4)
        rstd[i, 0] = r
        for k in range(d):
            xh = (x[i, k] - mu) * r                                                 # (5)
            xhat[i, k] = xh
            out[i, k] = w[k] * xh + b[k]                                            # (6)


@njit(**LOOP)
def _layer_norm_backward_rows(dout, xhat, rstd, w, dx, dw, db):
    n, d = dout.shape
    for i in range(n):
        m1 = 0.0
        m2 = 0.0
        for k in range(d):
            g = dout[i, k] * w[k]                                                   # (8)
            m1 += g
            m2 += g * xhat[i, k]
            dw[k] += dout[i, k] * xhat[i, k]                                        # (7)
            db[k] += dout[i, k]                                                     # (7)
        m1 /= d
        m2 /= d
        r = rstd[i, 0]
        for k in range(d):
            dx[i, k] = r * (dout[i, k] * w[k] - m1 - xhat[i, k] * m2)               # (9)


def layer_norm_forward(x, weight, bias, eps: float = LAYER_NORM_EPS):
    """(4)–(6): x (..., d) → out (..., d), LayerNormCache (as the reference's)."""
    xr = _rows(x)
    out, xhat = np.empty_like(xr), np.empty_like(xr)
    rstd = np.empty((xr.shape[0], 1), xr.dtype)
    _layer_norm_rows(xr, weight, bias, eps, out, xhat, rstd)
    lead = x.shape[:-1]
    return out.reshape(x.shape), LayerNormCache(xhat=xhat.reshape(x.shape), rstd=rstd.reshape(lead + (1,)),
                                                weight=weight)


def layer_norm_backward(dout, cache: LayerNormCache) -> dict:
    """(7)–(9): dout (..., d) → {"weight", "bias", "x"}."""
    d = dout.shape[-1]
    dr = _rows(dout)
    dx = np.empty_like(dr)
    dw, db = np.zeros(d, np.float64), np.zeros(d, np.float64)
    _layer_norm_backward_rows(dr, _rows(cache.xhat), _rows(cache.rstd), cache.weight, dx, dw, db)
    return {"weight": dw.astype(dout.dtype), "bias": db.astype(dout.dtype), "x": dx.reshape(dout.shape)}


# ----------------------------------------------------------------------------------------------------------------
# GELU (10)–(11) and the GLU gate (22)–(25), elementwise over flat arrays

@njit(**LOOP)
def _gelu_flat(x, g, t):
    c = x.dtype.type(GELU_C)
    ck = x.dtype.type(GELU_C * GELU_KAPPA)
    half = x.dtype.type(0.5)
    for i in range(x.size):
        v = x[i]
        u = tanh(c * v + ck * (v * v * v))                                          # (10)
        t[i] = u
        g[i] = half * v * (1 + u)                                                   # (10)


@njit(**LOOP)
def _gelu_backward_flat(dout, x, t, dx):
    """(11): x̄ = ḡ ⊙ [½ (1 + tanh u) + ½ x (1 − tanh² u) c (1 + 3κ x²)] with ḡ = dout."""
    c = x.dtype.type(GELU_C)
    c3k = x.dtype.type(3.0 * GELU_C * GELU_KAPPA)
    half = x.dtype.type(0.5)
    for i in range(x.size):
        v, u = x[i], t[i]
        dx[i] = dout[i] * (half * (1 + u) + (v * half * (1 - u * u)) * (c + c3k * (v * v)))     # (11)


def _gelu_forward(x):
    xf = np.ascontiguousarray(x)
    g, t = np.empty_like(xf), np.empty_like(xf)
    _gelu_flat(xf.reshape(-1), g.reshape(-1), t.reshape(-1))
    return g, GELUCache(x=xf, tanh_u=t)


def _gelu_backward(dout, cache: GELUCache):
    """(11) of ḡ = dout. The cache may be the reference's (any layout)."""
    d = np.ascontiguousarray(dout)
    x, t = np.ascontiguousarray(cache.x).reshape(-1), np.ascontiguousarray(cache.tanh_u).reshape(-1)
    dx = np.empty_like(d)
    _gelu_backward_flat(d.reshape(-1), x, t, dx.reshape(-1))
    return dx


@njit(**LOOP)
def _gate_flat(v, q, s, out):
    half = v.dtype.type(0.5)
    for i in range(v.size):
        si = half + half * tanh(half * q[i])                                         # (22) σ(q) = ½ + ½ tanh(q/2)
        s[i] = si
        out[i] = v[i] * si                                                           # (23)


@njit(**LOOP)
def _gate_backward_flat(dout, v, s, dv, dq):
    for i in range(dout.size):
        si = s[i]
        dv[i] = dout[i] * si                                                         # (24)
        dq[i] = dout[i] * v[i] * si * (1 - si)                                       # (24), (25)


# ----------------------------------------------------------------------------------------------------------------
# The feed-forward blocks, (14)–(27)

def mlp_forward(params: dict, y, mask=None):
    """(14)–(16), GELU fused; mask: the scaled dropout mask of (DR1) or None."""
    z1, fc1 = linear_forward(y, params["fc1.weight"], params["fc1.bias"])          # (14)
    z, gelu = _gelu_forward(z1)                                                    # (15)
    if mask is not None:
        z = z * mask                                                               # (DR1)
    out, fc2 = linear_forward(z, params["fc2.weight"], params["fc2.bias"])         # (16)
    return out, MLPCache(fc1=fc1, gelu=gelu, fc2=fc2, drop=mask)


def mlp_backward(dout, cache: MLPCache) -> dict:
    """(17)–(19), GELU's backward fused."""
    g2 = linear_backward(dout, cache.fc2)                                          # (17)
    dz = g2["x"] if cache.drop is None else g2["x"] * cache.drop                   # (DR2)
    dz1 = _gelu_backward(dz, cache.gelu)                                           # (18)
    g1 = linear_backward(dz1, cache.fc1)                                           # (19)
    return {"fc1.weight": g1["weight"], "fc1.bias": g1["bias"],
            "fc2.weight": g2["weight"], "fc2.bias": g2["bias"], "x": g1["x"]}


def glu_forward(params: dict, y, mask=None):
    """(20)–(23): GELU fused; σ and ⊙ of the gate in one loop; mask: the scaled dropout mask of (DR1) or None."""
    z, gelu = _gelu_forward(y)                                                     # (20)
    if mask is not None:
        z = z * mask                                                               # (DR1)
    v, value = linear_forward(z, params["value.weight"], params["value.bias"])     # (21)
    q, gate = linear_forward(z, params["gate.weight"], params["gate.bias"])        # (22)
    v, q = np.ascontiguousarray(v), np.ascontiguousarray(q)
    s, out = np.empty_like(v), np.empty_like(v)
    _gate_flat(v.reshape(-1), q.reshape(-1), s.reshape(-1), out.reshape(-1))       # (22), (23)
    return out, GLUCache(gelu=gelu, value=value, gate=gate, v=v, s=s, drop=mask)


def glu_backward(dout, cache: GLUCache) -> dict:
    """(24)–(27): the gate's chain in one loop, GELU's backward in another."""
    dout = np.ascontiguousarray(dout)
    dv, dq = np.empty_like(dout), np.empty_like(dout)
    _gate_backward_flat(dout.reshape(-1), np.ascontiguousarray(cache.v).reshape(-1),
                        np.ascontiguousarray(cache.s).reshape(-1), dv.reshape(-1), dq.reshape(-1))   # (24), (25)
    gv = linear_backward(dv, cache.value)                                          # (26)
    gg = linear_backward(dq, cache.gate)                                           # (26)
    dz = gv["x"]                                                                   # a fresh array: summed in place
    dz += gg["x"]                                                                  # (26)
    if cache.drop is not None:
        dz *= cache.drop                                                           # (DR2)
    dy = _gelu_backward(dz, cache.gelu)                                            # (27)
    return {"value.weight": gv["weight"], "value.bias": gv["bias"],
            "gate.weight": gg["weight"], "gate.bias": gg["bias"], "x": dy}


# ----------------------------------------------------------------------------------------------------------------
# The LRU output map, (28)–(31), as real GEMMs on interleaved (re, im) views

def _interleaved(C_re, C_im) -> np.ndarray:
    """W̃ (2N, d): rows 2n, 2n+1 = C_re[:, n], −C_im[:, n] (so that Re(C h) = h̃ W̃ with h̃ = h viewed as real)."""
    d, N = C_re.shape
    W = np.empty((N, 2, d), C_re.dtype)
    W[:, 0, :] = C_re.T
    W[:, 1, :] = -C_im.T
    return W.reshape(2 * N, d)


def _as_real(h) -> np.ndarray:
    """complex (..., N) → its interleaved real view (rows, 2N) (a copy only if h is not contiguous)."""
    h = np.ascontiguousarray(h)
    return h.reshape(-1, h.shape[-1]).view(h.real.dtype)


def lru_output_forward(params: dict, h, a):
    """(28): y = Re(C h) + D ⊙ a = h̃ W̃ + D ⊙ a; the cache is the reference's (C complex, built once, (d, N))."""
    C_re, C_im, D = params["C_re"], params["C_im"], params["D"]
    y = _as_real(h) @ _interleaved(C_re, C_im)                                     # (28)  (rows, d)
    y = y.reshape(a.shape)
    y += D * a                                                                     # (28)
    C = C_re + 1j * C_im.astype(C_re.dtype)
    return y, LRUOutputCache(h=h, a=a, C=C.astype(h.dtype, copy=False), D=D)


def lru_output_backward(dy, cache: LRUOutputCache) -> dict:
    """(29)–(31): h̄ = (ȳ W̃ᵀ) as complex, [C̄_re, −C̄_im] = (h̃ᵀ ȳ)ᵀ, D̄ = Σ ȳ ⊙ a, ā = D ⊙ ȳ."""
    C, h = cache.C, cache.h
    N = C.shape[1]
    W = _interleaved(np.ascontiguousarray(C.real), np.ascontiguousarray(C.imag))
    dyr = _rows(dy)
    dh = np.ascontiguousarray(dyr @ W.T).view(h.dtype).reshape(h.shape)            # (29)
    dW = (_as_real(h).T @ dyr).reshape(N, 2, -1)                                   # (30)  (N, 2, d)
    return {"C_re": np.ascontiguousarray(dW[:, 0, :].T), "C_im": -np.ascontiguousarray(dW[:, 1, :].T),   # (30)
            "D": (dyr * _rows(cache.a)).sum(axis=0),                               # (31)
            "h": dh, "x": dy * cache.D}                                            # (29), (31)


#: The bundle the registry hands to the model stack with Numba's cell kernels (registry.CellKernels.layers).
LAYERS = LayerOps(layer_norm_forward, layer_norm_backward, lru_output_forward, lru_output_backward,
                  {"mlp": mlp_forward, "glu": glu_forward}, {"mlp": mlp_backward, "glu": glu_backward})
