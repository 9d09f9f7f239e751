r"""The multi-layer model: encoder → [pre-norm → cell → (LRU output map) → feed-forward → residual] × L → pooling →
readout, with its hand-derived backward (BPTT) and input checks.

Shapes: T time, B batch, I = n_in input width, H = n_hidden (for lru: N complex state units), O = n_out, d the
width of the layer at hand. Numbering continues refimpl/nn/layers.py (1)–(37) and refimpl/nn/losses.py (38)–(45); the
derivation is docs/derivations/model.md.

Widths. The first layer's input width is d₀ = n_in, or d_model with the encoder (d_model defaults to n_hidden).
A rnn/gru/lstm layer maps d → H (its output is the cell state h); an lru layer maps d → d (its output map
y = Re(C h) + D ⊙ a brings the N complex states back to the input width). The feed-forward block keeps the width;
a residual connection needs the layer's output width to equal its input width.

Parameters: a flat dict with dotted names (DESIGN.md §3), in the order they are drawn from the one seeded
np.random.default_rng(seed):

    encoder.weight (d₀, I), encoder.bias (d₀)                       only with encoder=True;  Linear init
    layers.{l}.norm.weight (d), layers.{l}.norm.bias (d)            norm="layer";  1 and 0 (no draws)
    layers.{l}.cell.<name>                                          the cell's own init (refimpl/cells)
    layers.{l}.C_re (d, N), layers.{l}.C_im (d, N), layers.{l}.D (d)    lru only;  N(0, 1/N), N(0, 1/N), N(0, 1)
    layers.{l}.ffn.fc1.weight (m·w, w), …fc1.bias, …fc2.weight (w, m·w), …fc2.bias   ffn="mlp", m = ffn_mult
    layers.{l}.ffn.value.weight (w, w), …value.bias, …gate.weight (w, w), …gate.bias  ffn="glu"
    readout.weight (O, d_L), readout.bias (O)                       Linear init
(Linear init: U(±1/√fan_in) for weight and bias.) Initial states are zeros and not trainable.

Forward, for layers l = 0 … L−1:

    (46) u⁰ = x W_eᵀ + b_e (encoder, eq. 1)   or   u⁰ = x                                    (T, B, d₀)
    (47) a = LN(uˡ) (eqs. 4–6)   or   a = uˡ                                                 cell input (T, B, d)
    (48) h = cell(a; h₋₁ = 0)  — the cell's sequence forward (the only time loop)            (T, B, H)
    (49) y = Re(C h) + D ⊙ a (lru, eq. 28)   or   y = h                                      (T, B, w)
    (50) f = FFN(y) (mlp eqs. 14–16, glu eqs. 20–23)   or   f = y
    (51) uˡ⁺¹ = uˡ + f (residual)   or   uˡ⁺¹ = f
    (52) p = pool(u^L) (eqs. 32–35)                                                          (T, B, d_L) or (B, d_L)
    (53) ŷ = p W_rᵀ + b_r (eq. 1)                                                            (T, B, O) or (B, O)

Backward (BPTT), from dout = ∂L/∂ŷ (eq. 39), in reverse:

    (54) W̄_r, b̄_r, p̄ from dout (eqs. 2–3)
    (55) ū^L = pool backward of p̄ (eqs. 32–34; straight-through (36) for cumulative_mean)
    (56) f̄ = ūˡ⁺¹; with a residual, ūˡ also receives ūˡ⁺¹ directly (51)
    (57) ȳ = FFN backward of f̄ (mlp eqs. 17–19, glu eqs. 24–27)   or   ȳ = f̄
    (58) lru: h̄ = ȳ conj(C) (eq. 29, complex), C̄_re = Re C̄, C̄_im = Im C̄ (eq. 30), D̄ and the direct part D ⊙ ȳ
         of ā (eq. 31);   otherwise h̄ = ȳ
    (59) the cell's BPTT from the *instantaneous* adjoints h̄ (T, B, H) (DESIGN.md §4): cell gradients and its x̄
    (60) ā = x̄_cell (+ D ⊙ ȳ for lru);  ūˡ = LN backward of ā (eqs. 7–9) or ā;  (+ ūˡ⁺¹ with the residual)
    (61) W̄_e, b̄_e, x̄ from ū⁰ (eqs. 2–3)   or   x̄ = ū⁰
    (62) bptt: L and dout from the loss (eqs. 38–45), then (54)–(61); the initial-state gradients the cell returns
         (h0, c0) are dropped, since initial states are fixed zeros.

Everything here is batched over (T, B); the layers (46)–(51), (56)–(61) are the one stack walk of refimpl/nn/stack.py,
and the loops over time stay inside the cells. `forward` / `backward` take an optional `kernels` object with attributes
`forward` and `backward` of exactly the cell module's sequence signatures, so that a backend's compiled kernels replace
the reference ones; `backward` also takes a `cell_adjoint` (stack.py) that replaces the cell's BPTT adjoint (59) by
another rule per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np

from ..cells import CELLS, resolve_cell
from ..checks import check_array, check_params, positive_int, resolve_dtype
from ..errors import NumericalError, UnknownNameError, UnsupportedError
from ..arrays import dtype_of, is_numpy, namespace
from ..registry import map_arrays
from .layers import (FFNS, PER_STEP_POOLINGS, POOLINGS, LinearCache, PoolCache, ffn_init, ffn_shapes, layer_norm_init,
                     layer_norm_shapes, linear_backward, linear_forward, linear_init, linear_shapes, lru_output_init,
                     lru_output_shapes, pool_backward, pool_forward)
from .losses import check_mask, check_target, loss_forward, resolve_loss
from .stack import StackCache, ops_of, prefixed, stack_backward, stack_forward

NORMS = ("layer",)


@dataclass(frozen=True)
class Model:
    """A model's static description (the parameters live in a separate flat dict). Build it with make_model.

    Attributes:
        cell: 'rnn' | 'gru' | 'lstm' | 'lru'.
        n_in, n_hidden, n_out: input width I, hidden units H (lru: N complex states), output width O.
        layers: number of layers L.
        d_model: the encoder's output width (None without the encoder).
        encoder, residual: bools.  norm: None | 'layer'.  ffn: None | 'mlp' | 'glu'.  ffn_mult: mlp hidden factor.
        pooling: 'none' | 'last' | 'mean' | 'cumulative_mean'.
        seed: the seed the parameters were drawn with.  dtype: the real dtype of parameters and inputs.
        cells: one resolved Cell per layer (their n_in are the layer input widths).
        cell_options: the cell options with defaults filled in.
        masks: None (no dropout: evaluation, and training without dropout), or the dropout masks of one training
            step, {"layers.{l}.ffn" / "layers.{l}.out": (B, width)} (dropout_masks); a model carrying them is the
            training-mode model of that step (with_dropout), and every walk over it applies them (refimpl/nn/stack.py).
    """
    cell: str
    n_in: int
    n_hidden: int
    n_out: int
    layers: int
    d_model: int | None
    encoder: bool
    norm: str | None
    ffn: str | None
    ffn_mult: int
    residual: bool
    pooling: str
    seed: int
    dtype: np.dtype
    cells: tuple = ()
    cell_options: dict = field(default_factory=dict)
    masks: dict | None = field(default=None, compare=False, repr=False)   # this step's dropout masks (with_dropout)

    @property
    def widths(self) -> tuple:
        """((d_in, d_out) per layer): the input and output width of each layer."""
        return tuple((c.n_in, c.out_width) for c in self.cells)

    @property
    def per_step(self) -> bool:
        """True if the output keeps the time axis (T, B, O) (pooling none / cumulative_mean)."""
        return self.pooling in PER_STEP_POOLINGS

    def output_shape(self, T: int, B: int) -> tuple:
        return (T, B, self.n_out) if self.per_step else (B, self.n_out)

    def param_shapes(self) -> dict:
        """{dotted name: shape}, in the order the parameters are drawn."""
        shapes = {}
        if self.encoder:
            shapes.update(prefixed("encoder", linear_shapes(self.n_in, self.d_model)))
        for l, c in enumerate(self.cells):
            d, w = c.n_in, c.out_width
            if self.norm == "layer":
                shapes.update(prefixed(f"layers.{l}.norm", layer_norm_shapes(d)))
            shapes.update(prefixed(f"layers.{l}.cell", c.param_shapes))
            if c.output_map:
                shapes.update(prefixed(f"layers.{l}", lru_output_shapes(d, c.n_hidden)))
            if self.ffn is not None:
                shapes.update(prefixed(f"layers.{l}.ffn", ffn_shapes(self.ffn, w, self.ffn_mult)))
        shapes.update(prefixed("readout", linear_shapes(self.widths[-1][1], self.n_out)))
        return shapes


def _flag(label: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise UnsupportedError(f"{label} must be True or False, got {value!r}")
    return bool(value)


def _optional_name(kind: str, value, allowed) -> str | None:
    """None (or the string 'none') → None; otherwise one of `allowed`."""
    if value is None or value == "none":
        return None
    if value not in allowed:
        raise UnknownNameError(kind, value, tuple(allowed) + ("None",), f"pass {kind}=None to leave it out")
    return value


def make_model(cell: str, n_in: int, n_hidden: int, n_out: int, *, layers: int = 1, d_model: int | None = None,
               encoder: bool = False, norm: str | None = None, ffn: str | None = None, ffn_mult: int = 2,
               residual: bool = False, pooling: str = "none", seed: int = 0, dtype="float64",
               **cell_options) -> tuple[Model, dict]:
    """Describe a model and draw its parameters.

    Args:
        cell: 'rnn' | 'gru' | 'lstm' | 'lru'; **cell_options go to the cell (e.g. nonlinearity='linear' for rnn).
        n_in, n_hidden, n_out: input width I, hidden units H (lru: complex states N), output width O.
        layers: number of stacked layers L.
        d_model: encoder output width (only with encoder=True; default n_hidden).
        encoder: a Linear n_in → d_model in front of the stack.
        norm: None | 'layer' — pre-LayerNorm on each layer's input.
        ffn: None | 'mlp' (fc1 → GELU → fc2, hidden width ffn_mult·w) | 'glu' (GELU then (W_v z) ⊙ σ(W_g z)).
            (For norm and ffn the string 'none' is accepted as None, for command lines.)
        residual: out = x_layer_in + block(x_layer_in); needs equal input and output widths in every layer.
        pooling: 'none' | 'last' | 'mean' | 'cumulative_mean' (eqs. 32–37).
        seed: seeds the one np.random.default_rng used for every parameter.
        dtype: 'float64' (default) | 'float32'.
    Returns:
        (model: Model, params: {dotted name: ndarray}).
    Raises:
        UnknownNameError for an unknown cell / option / norm / ffn / pooling / dtype name; UnsupportedError for
        non-positive sizes or a residual connection between layers of different widths.
    """
    if cell not in CELLS:
        raise UnknownNameError("cell", cell, CELLS)
    n_in = positive_int("n_in", n_in)
    n_hidden = positive_int("n_hidden", n_hidden)
    n_out = positive_int("n_out", n_out)
    layers = positive_int("layers", layers)
    ffn_mult = positive_int("ffn_mult", ffn_mult)
    encoder = _flag("encoder", encoder)
    residual = _flag("residual", residual)
    norm = _optional_name("norm", norm, NORMS)
    ffn = _optional_name("ffn", ffn, FFNS)
    if pooling not in POOLINGS:
        raise UnknownNameError("pooling", pooling, POOLINGS)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UnsupportedError(f"seed must be a nonnegative integer, got {seed!r}")
    dtype = resolve_dtype(dtype)
    if d_model is not None and not encoder:
        raise UnsupportedError(f"d_model={d_model!r} was given but encoder=False; d_model is the encoder's output "
                               f"width, so pass encoder=True too (or leave d_model out)")
    d_model = (positive_int("d_model", d_model) if d_model is not None else n_hidden) if encoder else None

    cells, d = [], (d_model if encoder else n_in)
    for _ in range(layers):
        c = resolve_cell(cell, d, n_hidden, dtype, **cell_options)
        cells.append(c)
        d = c.out_width
    if residual:
        for l, c in enumerate(cells):
            if c.out_width != c.n_in:
                src = "d_model" if (l == 0 and encoder) else ("n_in" if l == 0 else f"layer {l - 1}'s output")
                fix = (f"pass encoder=True with d_model={n_hidden} (the default d_model is n_hidden), or n_in == "
                       f"n_hidden" if l == 0 and not encoder else f"pass d_model={n_hidden}")
                raise UnsupportedError(
                    f"residual=True needs every layer to keep its width, but layer {l} maps width {c.n_in} "
                    f"({src}) to {c.out_width} (n_hidden, the {cell} cell's output); fix: {fix}, or "
                    f"residual=False (an lru layer always keeps its width)")

    model = Model(cell=cell, n_in=n_in, n_hidden=n_hidden, n_out=n_out, layers=layers, d_model=d_model,
                  encoder=encoder, norm=norm, ffn=ffn, ffn_mult=ffn_mult, residual=residual, pooling=pooling,
                  seed=int(seed), dtype=dtype, cells=tuple(cells), cell_options=dict(cells[0].options))
    return model, init_params(model)


def init_params(model: Model) -> dict:
    """Draw every parameter from np.random.default_rng(model.seed), in the order of Model.param_shapes."""
    rng = np.random.default_rng(model.seed)
    params = {}
    if model.encoder:
        params.update(prefixed("encoder", linear_init(model.n_in, model.d_model, rng, model.dtype)))
    for l, c in enumerate(model.cells):
        d, w = c.n_in, c.out_width
        if model.norm == "layer":
            params.update(prefixed(f"layers.{l}.norm", layer_norm_init(d, model.dtype)))
        params.update(prefixed(f"layers.{l}.cell", c.module.init_params(d, c.n_hidden, rng, model.dtype, **c.options)))
        if c.output_map:
            params.update(prefixed(f"layers.{l}", lru_output_init(d, c.n_hidden, rng, model.dtype)))
        if model.ffn is not None:
            params.update(prefixed(f"layers.{l}.ffn", ffn_init(model.ffn, w, model.ffn_mult, rng, model.dtype)))
    params.update(prefixed("readout", linear_init(model.widths[-1][1], model.n_out, rng, model.dtype)))
    assert list(params) == list(model.param_shapes()), "init_params and param_shapes disagree"
    return params


# ----------------------------------------------------------------------------------------------------------------
# Dropout masks

def dropout_masks(model: Model, rate: float, batch: int, rng: np.random.Generator) -> dict:
    """The dropout masks of one training step (the online-LRU code's places: layers.py (DR1), stack.py (D)):

        "layers.{l}.ffn"  (B, m·w) for mlp, (B, w) for glu — after the FFN's GELU (only with an FFN)
        "layers.{l}.out"  (B, w) — on the block's output f, before the residual

    each keep ~ Bernoulli(1 − rate) / (1 − rate) (inverted dropout), drawn from `rng` in this order, layer by layer,
    in the model's dtype; one mask per example, broadcast over time (the same at every step of a sequence)."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating)) or not 0 <= rate < 1:
        raise UnsupportedError(f"dropout rate {rate!r} is not allowed: it must lie in [0, 1); 0 turns dropout off, "
                               f"the online-LRU paper trains with 0.1")
    batch = positive_int("batch", batch)
    masks = {}
    for l, c in enumerate(model.cells):
        w = c.out_width
        widths = [("out", w)]
        if model.ffn is not None:
            widths.insert(0, ("ffn", model.ffn_mult * w if model.ffn == "mlp" else w))
        for site, width in widths:
            keep = rng.random((batch, width)) >= rate                                        # (B, width)
            masks[f"layers.{l}.{site}"] = (keep / (1.0 - rate)).astype(model.dtype)
    return masks


def with_dropout(model: Model, masks: dict | None) -> Model:
    """The same model carrying one step's dropout masks (None: none — evaluation); parameters are unaffected."""
    if masks is not None:
        expected = set(dropout_masks(model, 0.0, 1, np.random.default_rng(0)))
        if set(masks) != expected:
            raise UnsupportedError(f"dropout masks {sorted(masks)} do not fit the model, which needs "
                                   f"{sorted(expected)}; draw them with dropout_masks(model, rate, batch, rng)")
    return replace(model, masks=masks)


# ----------------------------------------------------------------------------------------------------------------
# Forward and backward

class ModelCache(NamedTuple):
    encoder: LinearCache | None      # eq. (46)
    layers: tuple                    # one stack.LayerCache per layer, eqs. (47)–(51)
    features: np.ndarray             # u^L, the stack's output before pooling (T, B, d_L)
    pool: PoolCache                  # eq. (52)
    readout: LinearCache             # eq. (53)


def _kernels(model: Model, kernels):
    """The object whose .forward / .backward run the cell's sequence: the cell module unless a backend's is given."""
    if kernels is None:
        return model.cells[0].module
    if not (callable(getattr(kernels, "forward", None)) and callable(getattr(kernels, "backward", None))):
        raise UnsupportedError(f"kernels must have callables .forward and .backward with the cell module's "
                               f"sequence signatures, got {type(kernels).__name__}")
    return kernels


def zero_state_like(cell, a):
    """The cell's zero initial state for the batch of its input a (…, B, d), in a's namespace (NumPy: the cell's own
    zero_state; a backend's arrays: the same shapes and dtypes made there, no host copy)."""
    state = cell.zero_state(a.shape[-2])
    xp = namespace(a)
    if is_numpy(xp):
        return state
    return map_arrays(lambda z: xp.zeros(z.shape, dtype=dtype_of(xp, z.dtype)), state)


def forward(model: Model, params: dict, x: np.ndarray, kernels=None, *, mask: np.ndarray | None = None):
    """Run the model. Inputs are assumed valid (see check_inputs; bptt checks them).

    Args:
        model, params: from make_model.
        x: inputs (T, B, I), time-major, model.dtype.
        kernels: None (the cell module) or an object with .forward / .backward of the cell module's signatures.
        mask: (T, B) or (T,) valid steps, used by pooling 'last' / 'mean' (the others ignore it).
    Returns:
        (out: (T, B, O) for pooling none / cumulative_mean, (B, O) for last / mean;  cache: ModelCache).
    """
    kern = _kernels(model, kernels)

    def run_cell(l, cell_params, a):                   # (48): the cell's sequence forward from h₋₁ = 0
        c = model.cells[l]
        return kern.forward(cell_params, a, zero_state_like(c, a), **c.step_options)

    u, stack = stack_forward(model, params, x, run_cell, ops_of(kernels))                            # (46)–(51)
    p, pool = pool_forward(model.pooling, u, mask)                                                   # (52)
    out, readout = linear_forward(p, params["readout.weight"], params["readout.bias"])               # (53)
    return out, ModelCache(encoder=stack.encoder, layers=stack.layers, features=u, pool=pool, readout=readout)


def backward(model: Model, params: dict, dout: np.ndarray, cache: ModelCache, kernels=None,
             cell_adjoint=None) -> dict:
    """BPTT through the whole model — or, with `cell_adjoint`, the same walk with another rule in place of the
    cell's BPTT adjoint (59).

    Args:
        dout: ∂L/∂ŷ, the shape of forward's output.
        cache: forward's ModelCache.
        kernels: see forward; its .backward is the cell's BPTT adjoint.
        cell_adjoint: None (BPTT), or cell_adjoint(l, cell_params, dh, cell_cache) -> {cell parameter: gradient,
            "x": ā} (refimpl/nn/stack.py) — a learning rule per layer; it returns a gradient for every cell parameter.
    Returns:
        {dotted name: gradient} for every parameter (the order of model.param_shapes()), and "x" (T, B, I).
    """
    if cell_adjoint is None:
        kern = _kernels(model, kernels)

        def cell_adjoint(l, cell_params, dh, cell_cache):       # (59): the cell's BPTT from instantaneous adjoints
            return kern.backward(cell_params, dh, cell_cache, **model.cells[l].step_options)

    grads = {}
    g = linear_backward(dout, cache.readout)                                                         # (54)
    grads.update({"readout.weight": g["weight"], "readout.bias": g["bias"]})
    du = pool_backward(g["x"], cache.pool)                                                           # (55)
    stack_grads, dx = stack_backward(model, params, du, StackCache(cache.encoder, cache.layers), cell_adjoint,
                                     ops=ops_of(kernels))                                            # (56)–(61)
    grads.update(stack_grads)
    ordered = {k: grads[k] for k in model.param_shapes()}
    ordered["x"] = dx                                                                                # (61)
    return ordered


# ----------------------------------------------------------------------------------------------------------------
# Checks and the one-call gradient

def check_inputs(model: Model, params: dict, x, y, loss: str, mask=None) -> None:
    """Raise a refimpl.errors exception with the fix if anything about a bptt call is wrong: the loss name, the
    parameter names / shapes / dtypes, x's shape (T, B, I = n_in) / dtype / finiteness, the target (see
    refimpl.nn.losses.check_target) and the mask ((T, B) or (T,), nonnegative)."""
    resolve_loss(loss)
    check_params("model", params, model.param_shapes(), model.dtype)
    check_array("x", x, (("T", None), ("B", None), ("I", model.n_in)), model.dtype,
                hint=f"x is time-major (T, B, I) with I = n_in = {model.n_in}")
    T, B, _ = x.shape
    if mask is not None:
        check_mask(mask, T, B)
    check_target(loss, model.output_shape(T, B), y, model.dtype)


def bptt(model: Model, params: dict, x: np.ndarray, y: np.ndarray, *, loss: str, mask: np.ndarray | None = None,
         kernels=None, cell_adjoint=None) -> tuple[float, dict]:
    """Loss and its exact gradient by backpropagation through time, eq. (62).

    Args:
        x: (T, B, I).  y: the target for `loss` (labels (T, B) / (B,) for ce; floats of the output's shape otherwise).
        loss: 'mse' | 'ce' | 'bce'.
        mask: (T, B) or (T,) step weights — for a per-step output it weights the loss (38), for pooling 'last' /
              'mean' it selects the valid steps (33), (34).
        kernels: see forward.  cell_adjoint: see backward (None: BPTT).
    Returns:
        (loss value, {dotted name: gradient, "x": (T, B, I)}). For pooling 'cumulative_mean' the gradient is that
        of the straight-through surrogate (36), by design.
    Raises:
        refimpl.errors on invalid input; NumericalError if the loss or a gradient is not finite.
    """
    check_inputs(model, params, x, y, loss, mask)
    out, cache = forward(model, params, x, kernels, mask=mask)
    value, dout = loss_forward(loss, out, y, mask if model.per_step else None)                       # (38), (39)
    value = float(value)
    if not np.isfinite(value):
        raise NumericalError(f"the {loss} loss is {value} (the model output has {int(np.sum(~np.isfinite(out)))} "
                             f"non-finite entries): the forward pass blew up; lower the learning rate, check the "
                             f"inputs' scale, or use float64")
    grads = backward(model, params, dout, cache, kernels, cell_adjoint)                              # (54)–(61)
    for k, g in grads.items():
        if not np.all(np.isfinite(g)):
            raise NumericalError(f"the gradient of {k!r} is not finite ({int(np.sum(~np.isfinite(g)))} entries); "
                                 f"the backward pass blew up although the loss {value} is finite")
    return value, grads
