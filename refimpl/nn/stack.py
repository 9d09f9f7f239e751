r"""The stack of recurrent layers, forward and backward: the one walk every algorithm uses.

A layer is pre-norm → cell → (LRU output map) → feed-forward → residual; the stack is the optional encoder and L such
layers (refimpl/nn/model.py adds the pooling and the readout; its docstring has the widths and the parameter layout).
The numbering is that of model.py (docs/derivations/model.md):

    (46) u⁰ = x W_eᵀ + b_e (encoder)   or   u⁰ = x
    (47) a = LN(uˡ)   or   a = uˡ                                              the cell's input
    (48) h = cell(a)                                                           `run_cell`: how the cell runs
    (49) y = Re(C h) + D ⊙ a (the LRU output map, cell.output_map)   or   y = h
    (50) f = FFN(y)   or   f = y                         (training with dropout: M_ffn inside the FFN, layers.py (DR1))
    (D)  f ← f ⊙ M_out                                     training with dropout only: the block's output dropped
    (51) uˡ⁺¹ = uˡ + f (residual)   or   uˡ⁺¹ = f

Backward, in reverse, from ūˡ⁺¹:

    (56) f̄ = ūˡ⁺¹; with a residual, ūˡ also receives ūˡ⁺¹ directly (51);   with dropout f̄ ← f̄ ⊙ M_out (D)
    (57) ȳ = FFN backward of f̄   or   ȳ = f̄
    (58) with the output map: h̄ = ȳ conj(C), C̄, D̄ and the direct part D ⊙ ȳ of ā;   otherwise h̄ = ȳ
    (59) `cell_adjoint`: the cell's parameter gradients and its x̄ from h̄ — how the learning algorithm forms them
    (60) ā = x̄_cell (+ D ⊙ ȳ);  ūˡ = LN backward of ā   or   ā;  (+ ūˡ⁺¹ with the residual)
    (61) W̄_e, b̄_e, x̄ from ū⁰   or   x̄ = ū⁰

Dropout (the online-LRU code's: after the nonlinearity inside the feed-forward block and on the block's output, before
the residual) is on when the model carries this step's masks, model.masks (refimpl/nn/model.py, dropout_masks and
with_dropout): {"layers.{l}.ffn": M_ffn (B, ·), "layers.{l}.out": M_out (B, w)}, scaled, one per example and
broadcast over time, so every walk — a whole sequence, a chunk, one step, any algorithm — applies the same masks, and
the backward the mask of the forward (from the caches). A model without masks (model.masks None) has no dropout: that
is evaluation.

The two strategies are plain functions of the layer index l:

    run_cell(l, cell_params, a) -> (h, cell_cache)
    cell_adjoint(l, cell_params, dh, cell_cache) -> {cell parameter: gradient (every one), "x": ā_cell}

BPTT runs the cell's sequence forward and passes the cell's BPTT backward (model.py, or a backend's kernels); the online
rules, FPTT and tbptt run a chunk of C steps and pass, per layer, a carried kernel sweep over it
(refimpl/algorithms/chunked.py); whole-stack RTRL and recurrent DFA/DRTP run one step (refimpl/algorithms/online.py,
projected.py) and pass their rule. The layer operations come as one bundle, `ops` (layers.LayerOps: the reference's
functions by default; a backend's cell kernels may carry their own, registry.CellKernels.layers). Every function of
refimpl/nn/layers.py takes any leading axes, so the same walk serves a whole sequence or a chunk (arrays (T, B, ·))
and one step ((B, ·)).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from .layers import (REFERENCE, LayerNormCache, LayerOps, LinearCache, LRUOutputCache, ffn_shapes, linear_backward,
                     linear_forward, lru_output_shapes)


def sub(params: dict, prefix: str, names) -> dict:
    """The local parameters {name: params[prefix.name]} of one block (e.g. prefix 'layers.0.cell')."""
    return {k: params[f"{prefix}.{k}"] for k in names}


def prefixed(prefix: str, d: dict) -> dict:
    """{prefix.name: value}: a block's local names back to dotted model names."""
    return {f"{prefix}.{k}": v for k, v in d.items()}


class LayerCache(NamedTuple):
    """What one layer's backward needs (arrays (…, ·): (T, B, ·) for a sequence, (B, ·) for one step)."""
    norm: LayerNormCache | None      # eq. (47), None without norm
    a: np.ndarray                    # the cell's input, eq. (47)
    cell: NamedTuple                 # what run_cell returned: the cell's sequence or step cache, eq. (48)
    out_map: LRUOutputCache | None   # eq. (49), only with the LRU output map
    ffn: NamedTuple | None           # MLPCache / GLUCache, eq. (50)
    drop: np.ndarray | None = None   # the block-output dropout mask M_out (B, w) of (D); None without dropout


class StackCache(NamedTuple):
    encoder: LinearCache | None      # eq. (46)
    layers: tuple                    # one LayerCache per layer


def ops_of(kernels) -> LayerOps:
    """The layer operations that go with a cell's kernels: theirs (registry.CellKernels.layers) or the reference's."""
    return getattr(kernels, "layers", None) or REFERENCE


def cell_params(model, l: int, params: dict) -> dict:
    """The parameters of layer l's cell by their local names ('weight_hh' for 'layers.{l}.cell.weight_hh')."""
    return sub(params, f"layers.{l}.cell", model.cells[l].param_shapes)


def layer_forward(model, l: int, params: dict, u: np.ndarray, run_cell: Callable, ops: LayerOps = REFERENCE):
    """(47)–(51): uˡ (…, d) → (uˡ⁺¹ (…, w), LayerCache). run_cell(l, cell_params, a) -> (h, cell_cache); ops: the
    layer operations (refimpl/nn/layers.py REFERENCE, or a backend's)."""
    c, pre = model.cells[l], f"layers.{l}"
    a, norm = u, None                                                                                # (47)
    if model.norm == "layer":
        a, norm = ops.layer_norm_forward(u, params[f"{pre}.norm.weight"], params[f"{pre}.norm.bias"])  # (47)
    h, cell_cache = run_cell(l, cell_params(model, l, params), a)                                   # (48)
    y, out_map = h, None                                                                             # (49)
    if c.output_map:
        y, out_map = ops.lru_output_forward(sub(params, pre, lru_output_shapes(c.n_in, c.n_hidden)), h, a)  # (49)
    masks = model.masks or {}                                          # this step's dropout masks (training only)
    f, ffn = y, None                                                                                 # (50)
    if model.ffn is not None:
        local = ffn_shapes(model.ffn, y.shape[-1], model.ffn_mult)
        f, ffn = ops.ffn_forward[model.ffn](sub(params, f"{pre}.ffn", local), y,
                                            mask=masks.get(f"{pre}.ffn"))                            # (50), (DR1)
    drop = masks.get(f"{pre}.out")
    if drop is not None:
        f = f * drop                                                                                 # (D)
    u_next = u + f if model.residual else f                                                          # (51)
    return u_next, LayerCache(norm=norm, a=a, cell=cell_cache, out_map=out_map, ffn=ffn, drop=drop)


def block_backward(model, l: int, params: dict, df: np.ndarray, cache: LayerCache, cell_adjoint: Callable,
                   ops: LayerOps = REFERENCE):
    """(57)–(60) without the residual: f̄ˡ (…, w), the adjoint of the block's output f, → (the part of ūˡ (…, d) that
    goes through the block, {dotted name: gradient} of this layer). Recurrent DFA/DRTP call it with their projected f̄ˡ;
    layer_backward adds the residual."""
    c, pre = model.cells[l], f"layers.{l}"
    grads = {}
    if cache.drop is not None:
        df = df * cache.drop                                                                         # (D)
    dy = df                                                                                          # (57)
    if model.ffn is not None:
        g = ops.ffn_backward[model.ffn](df, cache.ffn)                                               # (57)
        dy = g.pop("x")
        grads.update(prefixed(f"{pre}.ffn", g))
    dh, da_direct = dy, None                                                                         # (58)
    if c.output_map:
        g = ops.lru_output_backward(dy, cache.out_map)                                                 # (58)
        dh, da_direct = g.pop("h"), g.pop("x")                                                       # (58)
        grads.update(prefixed(pre, g))
    g = cell_adjoint(l, cell_params(model, l, params), dh, cache.cell)                              # (59)
    da = g["x"] if da_direct is None else g["x"] + da_direct                                         # (60)
    grads.update(prefixed(f"{pre}.cell", {k: g[k] for k in c.param_shapes}))     # every one (h0 / c0 dropped)
    du = da                                                                                          # (60)
    if model.norm == "layer":
        g = ops.layer_norm_backward(da, cache.norm)                                                    # (60)
        du = g.pop("x")
        grads.update(prefixed(f"{pre}.norm", g))
    return du, grads


def layer_backward(model, l: int, params: dict, du_next: np.ndarray, cache: LayerCache, cell_adjoint: Callable,
                   ops: LayerOps = REFERENCE):
    """(56)–(60): ūˡ⁺¹ (…, w) → (ūˡ (…, d), {dotted name: gradient} of this layer).
    cell_adjoint(l, cell_params, dh, cell_cache) -> {cell parameter: gradient, "x": ā_cell}."""
    du, grads = block_backward(model, l, params, du_next, cache, cell_adjoint, ops)                  # (56)–(60)
    if model.residual:
        du = du + du_next                                                                            # (56), (60)
    return du, grads


def stack_forward(model, params: dict, x: np.ndarray, run_cell: Callable, ops: LayerOps = REFERENCE):
    """(46)–(51) for every layer: x (…, I) → (u^L (…, d_L), StackCache)."""
    u, encoder = x, None                                                                             # (46)
    if model.encoder:
        u, encoder = linear_forward(x, params["encoder.weight"], params["encoder.bias"])              # (46)
    layers = []
    for l in range(model.layers):
        u, layer_cache = layer_forward(model, l, params, u, run_cell, ops)                           # (47)–(51)
        layers.append(layer_cache)
    return u, StackCache(encoder=encoder, layers=tuple(layers))


def stack_backward(model, params: dict, du: np.ndarray, cache: StackCache, cell_adjoint: Callable, lowest: int = 0,
                   ops: LayerOps = REFERENCE):
    """(56)–(61): ū^L (…, d_L) → ({dotted name: gradient}, x̄ (…, I)), down to layer `lowest` (FPTT's warm-up needs
    the errors only down to the layer it warms up: then the encoder is left out and the ū of layer `lowest` is returned
    in place of x̄)."""
    grads = {}
    for l in reversed(range(lowest, model.layers)):
        du, layer_grads = layer_backward(model, l, params, du, cache.layers[l], cell_adjoint, ops)   # (56)–(60)
        grads.update(layer_grads)
    if model.encoder and lowest == 0:
        g = linear_backward(du, cache.encoder)                                                       # (61)
        grads.update({"encoder.weight": g["weight"], "encoder.bias": g["bias"]})
        du = g["x"]                                                                                  # (61)
    return grads, du
