"""The model stack — refimpl/nn/layers.py, losses.py, model.py — against finite differences and independent
computations.

The oracle is central differences (refimpl.numerics.central_differences, eps = 1e-6) of the loss at a float64 test
point, with the DESIGN.md §7 bound: relative error ≤ 1e-6 for every parameter array and for x.

Why the differences are *evaluated* in extended precision (np.longdouble, 64-bit mantissa on x86-64): a float64 loss
carries a roundoff of about ε·|L|, so a float64 central difference with eps = 1e-6 has an absolute error of about
ε/eps ≈ 2e-10 per entry. Some arrays of a 2-layer stack at its initialisation have tiny gradients (the first layer's
W_hh under a feed-forward block: norms of 1e-5 … 1e-4), and for them that roundoff alone is 1e-6 … 1e-5 relative —
the bound would then measure float64 noise, not the derivation. The test points are the same float64 values either
way (they are cast, not redrawn). Where np.longdouble is plain float64 (macOS arm64, MSVC) the oracle falls back to
float64 and the bound gains exactly that roundoff floor, computed in `_assert_grads_close`.

Shapes are tiny (T = 4, B = 3, widths ≤ 4, with I = 3 ≠ H = 4 and d_model = 2 so that a width mix-up cannot hide).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from refimpl.nn import layers as nn
from refimpl.cells import CELLS
from refimpl.errors import (DTypeError, NonFiniteError, NumericalError, ShapeError, UnknownNameError,
                            UnsupportedError)
from refimpl.nn.losses import LOSSES, loss_forward
from refimpl.nn.model import backward, bptt, forward, make_model
from refimpl.numerics import EXTENDED, central_differences, extended, rel_error

EPS = 1e-6                     # the finite-difference step
TOL = 1e-6                     # DESIGN.md §7: bptt vs central differences, float64
T, B, I, H, O = 4, 3, 3, 4, 3  # time, batch, input width, hidden units, outputs

CELL_CASES = [("rnn", {}), ("rnn", {"nonlinearity": "linear"}), ("gru", {}), ("lstm", {}), ("lru", {}),
              ("lru", {"r_min": 0.9, "r_max": 0.999})]
CELL_IDS = [f"{n}-{'-'.join(map(str, o.values())) or 'default'}" for n, o in CELL_CASES]

#: a 0/1 mask with zeros at the end and in the middle: the last valid steps are t = 3, 2, 1 for b = 0, 1, 2
MASK_TB = np.array([[1, 1, 0],
                    [1, 0, 1],
                    [1, 1, 0],
                    [1, 0, 0]], dtype=np.float64)
LAST_VALID = np.array([3, 2, 1])
MASK_T = np.array([0.0, 1.0, 1.0, 0.5])        # a (T,) mask shared by the batch, with a fractional weight
MASKS = {"nomask": None, "mask_TB": MASK_TB, "mask_T": MASK_T}


# ----------------------------------------------------------------------------------------------------------------
# helpers

def _randomise_norms(params: dict, rng) -> dict:
    """LayerNorm weight 1 / bias 0 at init would hide a missing ⊙w in eq. (8): move them to a generic point."""
    out = dict(params)
    for k, v in params.items():
        if k.endswith("norm.weight"):
            out[k] = 1.0 + 0.5 * rng.standard_normal(v.shape)
        elif k.endswith("norm.bias"):
            out[k] = 0.5 * rng.standard_normal(v.shape)
    return out


def _setup(cell, *, options=None, loss="mse", n_in=I, seed=0, **kw):
    """A model, a generic test point of its params, x (T, B, n_in) and a target for `loss`."""
    rng = np.random.default_rng(100 + seed)
    model, params = make_model(cell, n_in, H, O, seed=seed, **(options or {}), **kw)
    params = _randomise_norms(params, rng)
    x = rng.standard_normal((T, B, n_in))
    y = _target(loss, model.output_shape(T, B), rng)
    return model, params, x, y


def _target(loss, out_shape, rng):
    if loss == "ce":
        return rng.integers(0, out_shape[-1], size=out_shape[:-1])
    if loss == "bce":
        return (rng.random(out_shape) < 0.5).astype(np.float64)
    return rng.standard_normal(out_shape)


def _fd(params: dict, x: np.ndarray, value_fn):
    """Central differences of value_fn(params, x) over every parameter and x, evaluated in extended precision.

    Returns ({name: gradient}, |value| at the test point). The base value is subtracted inside the extended
    precision before the result becomes a Python float, so no float64 rounding of L enters the difference."""
    inputs = {k: extended(v) for k, v in {**params, "x": x}.items()}

    def f(vals):
        return value_fn({k: vals[k] for k in params}, vals["x"])

    base = f(inputs)
    return central_differences(lambda vals: float(f(vals) - base), inputs, eps=EPS), abs(float(base))


def _model_loss(model, loss, y, mask):
    """The model's own loss as a function of (params, x): what bptt differentiates."""
    def value(params, x):
        out, _ = forward(model, params, x, mask=mask)
        return loss_forward(loss, out, y, mask if model.per_step else None)[0]
    return value


def _assert_grads_close(grads: dict, numeric: dict, scale: float, label: str) -> None:
    assert set(grads) == set(numeric), f"{label}: gradient keys {sorted(grads)} != {sorted(numeric)}"
    for k, fd in numeric.items():
        fd = fd.astype(np.complex128 if np.iscomplexobj(fd) else np.float64)
        assert grads[k].shape == fd.shape, f"{label}: d{k} has shape {grads[k].shape}, expected {fd.shape}"
        err = rel_error(grads[k], fd)
        floor = 0.0
        if not EXTENDED:   # the float64 roundoff of the oracle itself, ≈ 10·ε·|L|/eps per entry (see module doc)
            floor = 10 * np.finfo(np.float64).eps * max(1.0, scale) / EPS * math.sqrt(fd.size) / max(
                float(np.linalg.norm(fd)), 1e-30)
        assert err <= TOL + floor, f"{label}: d{k} BPTT vs FD relative error {err:.2e} (bound {TOL + floor:.1e})"


def _check_bptt(model, params, x, y, loss, mask=None, label=""):
    before = {k: v.copy() for k, v in {**params, "x": x, "y": y}.items()}
    value, grads = bptt(model, params, x, y, loss=loss, mask=mask)
    for k, v in {**params, "x": x, "y": y}.items():
        np.testing.assert_array_equal(v, before[k], err_msg=f"bptt mutated {k}")
    assert set(grads) == set(params) | {"x"}
    for k, g in grads.items():
        assert g.dtype == np.float64, f"d{k} has dtype {g.dtype}"
    numeric, scale = _fd(params, x, _model_loss(model, loss, y, mask))
    _assert_grads_close(grads, numeric, scale, label or f"{model.cell} {loss}")
    return value, grads


# ----------------------------------------------------------------------------------------------------------------
# BPTT vs finite differences: cells × depth, block options, poolings × losses × masks

@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell,options", CELL_CASES, ids=CELL_IDS)
def test_bptt_matches_fd_for_every_cell(cell, options, layers):
    model, params, x, y = _setup(cell, options=options, layers=layers)
    _check_bptt(model, params, x, y, "mse", label=f"{cell} {options} layers={layers}")


BLOCKS = {
    "norm": dict(norm="layer"),
    "mlp": dict(ffn="mlp"),                                 # hidden width ffn_mult·w = 8: a non-square fc1/fc2
    "glu": dict(ffn="glu"),
    "residual": dict(residual=True, n_in=H),                # needs n_in == n_hidden without an encoder
    "encoder": dict(encoder=True, d_model=2),               # I = 3 → d_model = 2 → H = 4: three distinct widths
    "all": dict(encoder=True, norm="layer", ffn="glu", residual=True),   # the online-LRU layer (d_model = H)
}


@pytest.mark.parametrize("block", list(BLOCKS))
@pytest.mark.parametrize("cell", list(CELLS))
def test_bptt_matches_fd_for_every_block_option(cell, block):
    model, params, x, y = _setup(cell, layers=2, **BLOCKS[block])
    _check_bptt(model, params, x, y, "mse", label=f"{cell} {block}")


@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("pooling", ["none", "last", "mean"])
def test_bptt_matches_fd_for_every_pooling_loss_and_mask(pooling, loss, mask):
    # (T,) masks for last/mean: a shared mask with a trailing zero (every sequence keeps a valid step)
    m = MASKS[mask]
    if pooling != "none" and mask == "mask_T":
        m = np.array([1.0, 1.0, 0.5, 0.0])
    model, params, x, y = _setup("gru", loss=loss, pooling=pooling, norm="layer")
    _check_bptt(model, params, x, y, loss, m, label=f"{pooling} {loss} {mask}")


# ----------------------------------------------------------------------------------------------------------------
# pooling: forward against explicit loops, last = last valid step per sequence, cumulative_mean straight-through

def test_pooled_outputs_match_explicit_computations():
    model, params, x, _ = _setup("lru", layers=2, ffn="glu", pooling="none")
    out_none, cache = forward(model, params, x)
    feats = cache.features                                             # (T, B, d)
    W, b = params["readout.weight"], params["readout.bias"]
    np.testing.assert_allclose(out_none, feats @ W.T + b, rtol=1e-13, atol=1e-13)
    for pooling, mask, expect in [
        ("last", None, feats[-1]),
        ("last", MASK_TB, np.stack([feats[LAST_VALID[j], j] for j in range(B)])),
        ("mean", None, feats.mean(0)),
        ("mean", MASK_TB, np.stack([feats[MASK_TB[:, j] != 0, j].mean(0) for j in range(B)])),
        ("mean", MASK_T, np.einsum("t,tbd->bd", MASK_T, feats) / MASK_T.sum()),
        ("cumulative_mean", None, np.stack([feats[:t + 1].mean(0) for t in range(T)])),
    ]:
        pooled, _ = make_model("lru", I, H, O, layers=2, ffn="glu", pooling=pooling)   # same params
        out, _ = forward(pooled, params, x, mask=mask)
        np.testing.assert_allclose(out, expect @ W.T + b, rtol=1e-12, atol=1e-13, err_msg=f"{pooling} {mask}")


def test_last_pooling_uses_each_sequences_last_valid_step():
    """With a mask, the output depends on x only up to τ_b: x̄ is exactly zero after each sequence's last valid step."""
    model, params, x, y = _setup("lstm", loss="ce", pooling="last", layers=2)
    _, grads = bptt(model, params, x, y, loss="ce", mask=MASK_TB)
    for j, tau in enumerate(LAST_VALID):
        assert np.all(grads["x"][tau + 1:, j] == 0), f"sequence {j}: gradient after its last valid step {tau}"
        assert np.linalg.norm(grads["x"][tau, j]) > 0
    # without a mask it is the last step for everyone
    _, g = bptt(model, params, x, y, loss="ce")
    assert np.linalg.norm(g["x"][-1]) > 0


CUMULATIVE_CASES = [("lru", "ce", "mask_TB"), ("lru", "bce", "nomask"), ("lru", "mse", "mask_T"),
                    ("rnn", "mse", "mask_TB"), ("gru", "ce", "mask_T"), ("lstm", "bce", "mask_TB")]


@pytest.mark.parametrize("cell,loss,mask", CUMULATIVE_CASES)
def test_cumulative_mean_gradient_is_the_straight_through_surrogate(cell, loss, mask):
    """bptt through pooling='cumulative_mean' must equal the gradient of the surrogate in which the running mean
    p_t is replaced by y_t + stop_gradient(p_t − y_t), eq. (36). The surrogate is built here independently: the
    shift p_t − y_t is computed once at the test point with an explicit loop and then held constant, and the
    readout is applied by hand; its finite differences are the oracle."""
    kw = dict(layers=2, encoder=True, norm="layer", ffn="glu", residual=True) if cell == "lru" else dict(layers=2)
    m = MASKS[mask]
    model, params, x, y = _setup(cell, loss=loss, pooling="cumulative_mean", **kw)
    plain, _ = make_model(cell, I, H, O, pooling="none", **kw)          # same params, no pooling
    _, cache0 = forward(plain, params, x)
    feats0 = cache0.features                                            # y(θ₀) (T, B, d)
    running0 = np.stack([feats0[:t + 1].sum(0) / (t + 1) for t in range(T)])
    shift = running0 - feats0                                           # held constant: the stop-gradient

    def surrogate(p, xx):
        _, c = forward(plain, p, xx)
        pooled = c.features + shift                                     # forward value = the running mean at θ₀
        out = pooled @ p["readout.weight"].T + p["readout.bias"]
        return loss_forward(loss, out, y, m)[0]

    value, grads = bptt(model, params, x, y, loss=loss, mask=m)
    assert abs(value - float(surrogate(params, x))) <= 1e-12 * max(1.0, abs(value))
    numeric, scale = _fd(params, x, surrogate)
    _assert_grads_close(grads, numeric, scale, f"cumulative_mean {cell} {loss} {mask}")


def test_cumulative_mean_gradient_is_deliberately_not_the_true_gradient():
    model, params, x, y = _setup("gru", pooling="cumulative_mean")
    _, grads = bptt(model, params, x, y, loss="mse")
    true, _ = _fd(params, x, _model_loss(model, "mse", y, None))
    assert rel_error(grads["x"], true["x"].astype(np.float64)) > 1e-2   # a real difference, not roundoff


# ----------------------------------------------------------------------------------------------------------------
# the layer pairs one by one (VJP style: a random upstream gradient, cs231n)

def _vjp_check(forward_fn, backward_fn, inputs: dict, rng, label):
    """forward_fn(**inputs) -> (out, cache); backward_fn(dout, cache) -> {name: grad}; checks every input."""
    out, cache = forward_fn(**inputs)
    dout = rng.standard_normal(out.shape)
    grads = backward_fn(dout, cache)
    ld = {k: extended(v) for k, v in inputs.items()}
    base = np.sum(dout * forward_fn(**ld)[0])
    numeric = central_differences(lambda v: float(np.sum(dout * forward_fn(**v)[0]) - base), ld, eps=EPS)
    _assert_grads_close(grads, numeric, abs(float(base)), label)


def test_linear_pair(rng):
    for lead in [(T, B), (B,)]:
        inputs = {"x": rng.standard_normal(lead + (3,)), "weight": rng.standard_normal((4, 3)),
                  "bias": rng.standard_normal(4)}
        _vjp_check(nn.linear_forward, nn.linear_backward, inputs, rng, f"linear {lead}")


def test_layer_norm_pair(rng):
    inputs = {"x": rng.standard_normal((T, B, 4)), "weight": rng.standard_normal(4), "bias": rng.standard_normal(4)}
    _vjp_check(nn.layer_norm_forward, nn.layer_norm_backward, inputs, rng, "layer norm")
    out, _ = nn.layer_norm_forward(inputs["x"], np.ones(4), np.zeros(4))
    np.testing.assert_allclose(out.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose((out ** 2).mean(-1), 1, rtol=1e-3)     # 1 up to ε/σ²


def test_gelu_and_sigmoid_pairs(rng):
    x = 3 * rng.standard_normal((T, B, 4))
    _vjp_check(nn.gelu_forward, lambda d, c: {"x": nn.gelu_backward(d, c)}, {"x": x}, rng, "gelu")
    _vjp_check(nn.sigmoid_forward, lambda d, c: {"x": nn.sigmoid_backward(d, c)}, {"x": x}, rng, "sigmoid")
    # the tanh approximation: close to the exact x Φ(x) but not equal to it
    g, _ = nn.gelu_forward(x)
    exact = np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))(x)
    assert 0 < np.max(np.abs(g - exact)) < 1e-3
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # no overflow at extreme inputs
        s, _ = nn.sigmoid_forward(np.array([-1000.0, 0.0, 1000.0]))
    np.testing.assert_array_equal(s, [0.0, 0.5, 1.0])


@pytest.mark.parametrize("kind", ["mlp", "glu"])
def test_feed_forward_pairs(kind, rng):
    params = nn.ffn_init(kind, 3, 2, rng, np.float64)
    params = {k: 2 * v for k, v in params.items()}                     # a generic point, not just the init
    names = list(params)
    fwd = nn.FFN_FORWARD[kind]

    def f(**kw):
        return fwd({k: kw[k.replace(".", "_")] for k in names}, kw["x"])

    def b(dout, cache):
        return {k.replace(".", "_"): v for k, v in nn.FFN_BACKWARD[kind](dout, cache).items()}

    inputs = {k.replace(".", "_"): v for k, v in params.items()} | {"x": rng.standard_normal((T, B, 3))}
    _vjp_check(f, b, inputs, rng, kind)


def test_lru_output_map_complex_adjoint(rng):
    """y = Re(C h) + D ⊙ a: h̄ = Cᴴ ȳ under the convention h̄ = ∂L/∂Re h + i ∂L/∂Im h (central_differences perturbs
    Re and Im), ∂L/∂C_re = Re C̄, ∂L/∂C_im = Im C̄, eqs. (28)–(31)."""
    inputs = {"C_re": rng.standard_normal((3, 4)), "C_im": rng.standard_normal((3, 4)), "D": rng.standard_normal(3),
              "h": rng.standard_normal((T, B, 4)) + 1j * rng.standard_normal((T, B, 4)),
              "a": rng.standard_normal((T, B, 3))}

    def f(C_re, C_im, D, h, a):
        return nn.lru_output_forward({"C_re": C_re, "C_im": C_im, "D": D}, h, a)

    def b(dy, cache):
        g = nn.lru_output_backward(dy, cache)
        return {"C_re": g["C_re"], "C_im": g["C_im"], "D": g["D"], "h": g["h"], "a": g["x"]}

    _vjp_check(f, b, inputs, rng, "lru output map")


@pytest.mark.parametrize("pooling", nn.POOLINGS)
def test_pool_pairs(pooling, rng):
    y = rng.standard_normal((T, B, 2))
    for mask in (None, MASK_TB):
        out, cache = nn.pool_forward(pooling, y, mask)
        dout = rng.standard_normal(out.shape)
        dy = nn.pool_backward(dout, cache)
        if pooling == "cumulative_mean":                               # (36): the identity, by design
            np.testing.assert_array_equal(dy, dout)
            continue
        numeric = central_differences(lambda v: float(np.sum(dout * nn.pool_forward(pooling, v["y"], mask)[0])),
                                      {"y": y}, eps=EPS)["y"]
        assert rel_error(dy, numeric) <= TOL, f"{pooling} {mask is not None}"


# ----------------------------------------------------------------------------------------------------------------
# losses: values against plain formulas, gradients against finite differences

def _plain_loss(name, out, y):
    """Per-row losses written the naive way (loops, no stabilisation) for moderate logits."""
    rows = out.reshape(-1, out.shape[-1])
    if name == "ce":
        labels = y.reshape(-1)
        l = [-math.log(math.exp(r[c]) / sum(math.exp(v) for v in r)) for r, c in zip(rows, labels)]
    else:
        ys = y.reshape(-1, y.shape[-1])
        if name == "mse":
            l = [0.5 * sum((a - t) ** 2 for a, t in zip(r, yy)) for r, yy in zip(rows, ys)]
        else:
            sig = lambda v: 1 / (1 + math.exp(-v))   # noqa: E731
            l = [sum(-t * math.log(sig(a)) - (1 - t) * math.log(1 - sig(a)) for a, t in zip(r, yy))
                 for r, yy in zip(rows, ys)]
    return np.array(l).reshape(out.shape[:-1])


@pytest.mark.parametrize("mask", list(MASKS) + ["pooled"])
@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_value_and_gradient(name, mask, rng):
    shape = (B, O) if mask == "pooled" else (T, B, O)
    out = 2 * rng.standard_normal(shape)
    y = _target(name, shape, rng)
    if name == "bce":
        y = rng.random(shape)                                           # soft targets in [0, 1] too
    m = None if mask == "pooled" else MASKS[mask]
    value, dout = loss_forward(name, out, y, m)
    weights = np.ones(shape[:-1]) if m is None else np.broadcast_to(m.reshape(T, -1), (T, B))
    expect = np.sum(weights * _plain_loss(name, out, y)) / B           # (38)
    assert abs(value - expect) <= 1e-12 * max(1.0, abs(expect))
    ld = extended(out)
    base = loss_forward(name, ld, y, m)[0]
    numeric = central_differences(lambda v: float(loss_forward(name, v["out"], y, m)[0] - base),
                                  {"out": ld}, eps=EPS)["out"]
    _assert_grads_close({"out": dout}, {"out": numeric}, abs(float(value)), f"{name} {mask}")


@pytest.mark.parametrize("name", list(LOSSES))
def test_losses_are_stable_for_huge_logits(name):
    out = np.array([[[1000.0, -1000.0, 0.0]], [[-800.0, 700.0, 3.0]]])   # (T=2, B=1, O=3)
    y = np.array([[0], [2]]) if name == "ce" else np.array([[[1.0, 0.0, 0.5]], [[0.0, 1.0, 1.0]]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):   # underflow to 0 is fine
        value, dout = loss_forward(name, out, y)
    assert np.isfinite(value) and np.all(np.isfinite(dout))


def test_bool_and_integer_masks_equal_float_masks():
    out = np.random.default_rng(0).standard_normal((T, B, O))
    y = np.zeros((T, B, O))
    ref = loss_forward("mse", out, y, MASK_TB)
    for m in (MASK_TB.astype(bool), MASK_TB.astype(np.int64)):
        v, d = loss_forward("mse", out, y, m)
        assert v == ref[0]
        np.testing.assert_array_equal(d, ref[1])


# ----------------------------------------------------------------------------------------------------------------
# the model's structure: parameter names and init, kernels, dtypes

def test_parameter_names_shapes_and_init():
    model, params = make_model("lru", I, H, O, layers=2, encoder=True, d_model=2, norm="layer", ffn="mlp",
                               residual=True, pooling="mean", seed=3)
    cell = [f"layers.{{l}}.cell.{k}" for k in CELLS["lru"].param_shapes(2, H)]
    expected = (["encoder.weight", "encoder.bias"]
                + [n.format(l=l) for l in range(2) for n in
                   ["layers.{l}.norm.weight", "layers.{l}.norm.bias", *cell, "layers.{l}.C_re", "layers.{l}.C_im",
                    "layers.{l}.D", "layers.{l}.ffn.fc1.weight", "layers.{l}.ffn.fc1.bias",
                    "layers.{l}.ffn.fc2.weight", "layers.{l}.ffn.fc2.bias"]]
                + ["readout.weight", "readout.bias"])
    assert list(params) == expected
    assert params["encoder.weight"].shape == (2, I)
    assert params["layers.1.C_re"].shape == (2, H) and params["layers.1.D"].shape == (2,)
    assert params["layers.0.ffn.fc1.weight"].shape == (4, 2) and params["layers.0.ffn.fc2.weight"].shape == (2, 4)
    assert params["readout.weight"].shape == (O, 2)
    np.testing.assert_array_equal(params["layers.0.norm.weight"], 1)
    np.testing.assert_array_equal(params["layers.0.norm.bias"], 0)
    assert np.all(np.abs(params["encoder.weight"]) <= 1 / math.sqrt(I))
    assert np.all(np.abs(params["layers.0.ffn.fc2.weight"]) <= 1 / math.sqrt(4))
    # one seeded generator: the same seed gives the same params, another seed different ones
    _, again = make_model("lru", I, H, O, layers=2, encoder=True, d_model=2, norm="layer", ffn="mlp",
                          residual=True, pooling="mean", seed=3)
    _, other = make_model("lru", I, H, O, layers=2, encoder=True, d_model=2, norm="layer", ffn="mlp",
                          residual=True, pooling="mean", seed=4)
    assert all(np.array_equal(params[k], again[k]) for k in params)
    assert not np.array_equal(params["layers.0.C_re"], other["layers.0.C_re"])
    # rnn widths: d_in → n_hidden; no C/D
    m2, p2 = make_model("gru", I, H, O, layers=2)
    assert m2.widths == ((I, H), (H, H)) and not any(k.endswith(".D") for k in p2)
    assert p2["layers.0.cell.weight_ih"].shape == (3 * H, I) and p2["layers.1.cell.weight_ih"].shape == (3 * H, H)


def test_kernels_can_be_swapped_in():
    model, params, x, y = _setup("lstm", layers=2, ffn="glu")
    mod = CELLS["lstm"]
    calls = []

    class Kernels:
        @staticmethod
        def forward(p, xx, state0, **options):
            calls.append("forward")
            return mod.forward(p, xx, state0, **options)

        @staticmethod
        def backward(p, dh, cache, **options):
            calls.append("backward")
            return mod.backward(p, dh, cache, **options)

    ref_value, ref = bptt(model, params, x, y, loss="mse")
    value, grads = bptt(model, params, x, y, loss="mse", kernels=Kernels())
    assert calls == ["forward", "forward", "backward", "backward"]
    assert value == ref_value and all(np.array_equal(grads[k], ref[k]) for k in ref)
    with pytest.raises(UnsupportedError, match="forward and .backward"):
        forward(model, params, x, kernels=object())



def test_a_cell_adjoint_replaces_the_cells_bptt_layer_by_layer():
    model, params, x, y = _setup("lstm", layers=2, ffn="glu")
    mod, calls = CELLS["lstm"], []

    def cell_adjoint(l, cell_params, dh, cell_cache):           # BPTT's own adjoint, recording the layer order
        calls.append(l)
        g = mod.backward(cell_params, dh, cell_cache)
        return {k: (np.zeros_like(v) if l == 0 and k != "x" else v) for k, v in g.items()}   # layer 0: no training

    ref_value, ref = bptt(model, params, x, y, loss="mse")
    value, grads = bptt(model, params, x, y, loss="mse", cell_adjoint=cell_adjoint)
    assert calls == [1, 0] and value == ref_value
    assert all(np.array_equal(grads[k], ref[k]) for k in ref if not k.startswith("layers.0."))
    assert all(not np.any(grads[k]) for k in ref if k.startswith("layers.0.cell."))
    assert any(np.any(ref[k]) for k in ref if k.startswith("layers.0.cell."))


def test_a_cell_adjoint_that_leaves_out_a_parameter_raises():
    """A cell adjoint (a backend's kernel, a rule) that omits a cell parameter is an error, not a frozen parameter."""
    model, params, x, y = _setup("gru", layers=2)
    mod = CELLS["gru"]

    def cell_adjoint(l, cell_params, dh, cell_cache):
        g = mod.backward(cell_params, dh, cell_cache)
        return {k: v for k, v in g.items() if not (l == 0 and k == "bias_hh")}

    with pytest.raises(KeyError, match="bias_hh"):
        bptt(model, params, x, y, loss="mse", cell_adjoint=cell_adjoint)


@pytest.mark.parametrize("cell", list(CELLS))
def test_float32_agrees_with_float64(cell):
    kw = dict(layers=2, encoder=True, norm="layer", ffn="glu", residual=True, pooling="cumulative_mean")
    m64, p64 = make_model(cell, I, H, O, **kw)
    m32, p32 = make_model(cell, I, H, O, dtype="float32", **kw)
    x = np.random.default_rng(1).standard_normal((T, B, I))
    y = np.random.default_rng(2).integers(0, O, size=(T, B))
    v64, g64 = bptt(m64, p64, x, y, loss="ce")
    v32, g32 = bptt(m32, p32, x.astype(np.float32), y, loss="ce")
    assert abs(v32 - v64) <= 1e-5 * abs(v64)
    for k in g64:
        assert g32[k].dtype == np.float32, f"{cell} d{k} came back as {g32[k].dtype}"
        assert rel_error(g32[k], g64[k]) <= 1e-4, f"{cell} d{k}: float32 vs float64"


def test_backward_accepts_forward_cache_directly():
    model, params, x, y = _setup("rnn", layers=2, pooling="mean")
    out, cache = forward(model, params, x, mask=MASK_TB)
    value, dout = loss_forward("mse", out, y)
    g = backward(model, params, dout, cache)
    v2, g2 = bptt(model, params, x, y, loss="mse", mask=MASK_TB)
    assert float(value) == v2 and all(np.array_equal(g[k], g2[k]) for k in g2)


# ----------------------------------------------------------------------------------------------------------------
# bad input: each error type with a key phrase of its message

def test_unknown_names():
    with pytest.raises(UnknownNameError, match=r"unknown cell 'lstn'.*did you mean 'lstm'"):
        make_model("lstn", I, H, O)
    with pytest.raises(UnknownNameError, match="unknown pooling 'max'"):
        make_model("rnn", I, H, O, pooling="max")
    with pytest.raises(UnknownNameError, match="unknown norm 'batch'"):
        make_model("rnn", I, H, O, norm="batch")
    with pytest.raises(UnknownNameError, match="unknown ffn 'swiglu'"):
        make_model("rnn", I, H, O, ffn="swiglu")
    with pytest.raises(UnknownNameError, match="option for cell 'gru'"):
        make_model("gru", I, H, O, nonlinearity="tanh")
    with pytest.raises(UnknownNameError, match="unknown dtype"):
        make_model("rnn", I, H, O, dtype="float16")
    model, params, x, y = _setup("rnn")
    with pytest.raises(UnknownNameError, match="unknown loss 'nll'"):
        bptt(model, params, x, y, loss="nll")
    with pytest.raises(UnknownNameError, match="unknown pooling"):
        nn.pool_forward("max", x)


def test_bad_model_configurations():
    with pytest.raises(UnsupportedError, match=r"residual=True.*maps width 3 \(n_in\) to 4.*encoder=True"):
        make_model("rnn", I, H, O, residual=True)
    with pytest.raises(UnsupportedError, match=r"maps width 2 \(d_model\) to 4.*d_model=4"):
        make_model("lstm", I, H, O, residual=True, encoder=True, d_model=2)
    make_model("lru", I, H, O, residual=True, layers=2)                  # lru layers keep their width
    make_model("rnn", I, H, O, residual=True, encoder=True)              # d_model defaults to n_hidden
    with pytest.raises(UnsupportedError, match="encoder=True"):
        make_model("rnn", I, H, O, d_model=4)
    with pytest.raises(UnsupportedError, match="layers must be a positive integer"):
        make_model("rnn", I, H, O, layers=0)
    with pytest.raises(UnsupportedError, match="n_out must be a positive integer"):
        make_model("rnn", I, H, 2.5)


def test_bad_inputs():
    model, params, x, y = _setup("gru", loss="ce")
    with pytest.raises(ShapeError, match=r"x has shape \(4, 3, 5\).*n_in = 3"):
        bptt(model, params, np.zeros((T, B, 5)), y, loss="ce")
    with pytest.raises(ShapeError, match="3 dimensions"):
        bptt(model, params, x[:, 0], y, loss="ce")
    with pytest.raises(DTypeError, match="float64 is required"):
        bptt(model, params, x.astype(np.float32), y, loss="ce")
    bad = x.copy()
    bad[2, 1, 0] = np.nan
    with pytest.raises(NonFiniteError, match=r"x contains non-finite values \(first at index \(2, 1, 0\)"):
        bptt(model, params, bad, y, loss="ce")
    with pytest.raises(UnsupportedError, match=r"must lie in \[0, 3\)"):
        bptt(model, params, x, np.full((T, B), 3), loss="ce")
    with pytest.raises(UnsupportedError, match=r"must lie in \[0, 3\)"):
        bptt(model, params, x, np.full((T, B), -1), loss="ce")
    with pytest.raises(DTypeError, match="integer class indices"):
        bptt(model, params, x, y.astype(np.float64), loss="ce")
    with pytest.raises(ShapeError, match=r"labels y for loss 'ce' have shape \(3,\)"):
        bptt(model, params, x, y[0], loss="ce")
    with pytest.raises(ShapeError, match=r"targets y for loss 'mse' have shape"):
        bptt(model, params, x, np.zeros((T, B, O + 1)), loss="mse")
    with pytest.raises(UnsupportedError, match=r"'bce' must lie in \[0, 1\]"):
        bptt(model, params, x, np.full((T, B, O), 2.0), loss="bce")
    with pytest.raises(ShapeError, match=r"mask has shape \(3, 4\) but \(T, B\)"):
        bptt(model, params, x, y, loss="ce", mask=MASK_TB.T)
    with pytest.raises(UnsupportedError, match="negative"):
        bptt(model, params, x, y, loss="ce", mask=-MASK_TB)
    with pytest.raises(ShapeError, match="missing"):
        bptt(model, {k: v for k, v in params.items() if k != "readout.bias"}, x, y, loss="ce")
    pooled, pp, xx, yy = _setup("gru", loss="ce", pooling="last")
    with pytest.raises(UnsupportedError, match=r"no nonzero step for sequence\(s\) \[1\]"):
        bptt(pooled, pp, xx, yy, loss="ce", mask=np.array([[1, 0, 1]] * T))
    with pytest.raises(ShapeError, match="pooled output"):
        loss_forward("ce", np.zeros((B, O)), yy, MASK_TB)


def test_blow_up_raises_numerical_error():
    model, params, x, y = _setup("rnn", options={"nonlinearity": "linear"})
    params = dict(params, **{"layers.0.cell.weight_hh": 1e90 * np.eye(H)})
    with np.errstate(all="ignore"), pytest.raises(NumericalError, match="blew up"):
        bptt(model, params, x, y, loss="mse")
