"""The layers of refimpl/nn/layers.py use only the array API standard: every forward and backward, run on the arrays
of array_api_strict (a strict implementation of the standard, which has none of NumPy's extras: no einsum, no in-place
index assignment, no mixing with NumPy arrays, no data-dependent shapes), gives the NumPy results to 1e-12 in float64,
keeps float32 in float32, and returns arrays of the namespace it was given.

The NumPy run is the library's reference path (plain NumPy arrays); the strict run is the same code on another array
type, so a function that slips outside the standard fails here with a TypeError / AttributeError / IndexError.
"""

from __future__ import annotations

import numpy as np
import pytest

xps = pytest.importorskip("array_api_strict")

from refimpl.nn import layers as L  # noqa: E402

#: the standard version the vocabulary of refimpl/arrays.py sits in (no Python scalars in where / maximum …),
#: without the optional data-dependent features
STRICT_FLAGS = dict(api_version="2023.12", boolean_indexing=False, data_dependent_shapes=False)

LEADING = [(5,), (4, 3), (3, 2, 4)]        # the "..." axes of the last-axis blocks: (B,), (T, B), (T, B, extra)
D, N = 6, 4                                # feature width, LRU state units


@pytest.fixture(autouse=True)
def strict_flags():
    with xps.ArrayAPIStrictFlags(**STRICT_FLAGS):
        yield


# ----------------------------------------------------------------------------------------------------------------
# helpers: move a tree (arrays, dicts, tuples, NamedTuples) into the strict namespace and back

def _is_array(a) -> bool:
    return isinstance(a, np.ndarray) or type(a).__module__.startswith("array_api_strict")


def to_strict(tree):
    if isinstance(tree, np.ndarray):
        return xps.asarray(tree)
    if isinstance(tree, dict):
        return {k: to_strict(v) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(to_strict(v) for v in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(to_strict(v) for v in tree)
    return tree


def assert_same(ref, got, path="out", rtol=1e-12, atol=1e-12, dtype_of=None):
    """got (strict arrays) equals ref (NumPy arrays) leaf by leaf: same structure, strict arrays where ref has arrays,
    the same dtype, values to rtol / atol."""
    if isinstance(ref, np.ndarray):
        assert type(got).__module__.startswith("array_api_strict"), f"{path}: {type(got)} is not a strict array"
        g = np.asarray(got)
        assert g.dtype == ref.dtype, f"{path}: dtype {g.dtype} != NumPy's {ref.dtype}"
        assert g.shape == ref.shape, f"{path}: shape {g.shape} != NumPy's {ref.shape}"
        np.testing.assert_allclose(g, ref, rtol=rtol, atol=atol, err_msg=path)
    elif isinstance(ref, dict):
        assert set(got) == set(ref), path
        for k in ref:
            assert_same(ref[k], got[k], f"{path}[{k!r}]", rtol, atol)
    elif isinstance(ref, tuple):
        assert type(got) is type(ref) and len(got) == len(ref), path
        names = getattr(ref, "_fields", range(len(ref)))
        for name, r, g in zip(names, ref, got):
            assert_same(r, g, f"{path}.{name}", rtol, atol)
    else:
        assert got == ref, f"{path}: {got!r} != {ref!r}"


def run_both(fn, *args, rtol=1e-12, atol=1e-12):
    """fn on the NumPy arguments and on their strict copies; compares every output (caches included)."""
    ref = fn(*args)
    got = fn(*to_strict(list(args)))
    assert_same(ref, got, fn.__name__, rtol, atol)
    return ref, got


def _rng(*key):
    return np.random.default_rng([20_18, *[hash(str(k)) % 10_000 for k in key]])


def _normal(rng, shape, dtype=np.float64, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


# ----------------------------------------------------------------------------------------------------------------
# the strict namespace is strict (else the tests below prove nothing)

def test_the_strict_namespace_rejects_numpy_extras():
    a = xps.asarray(np.ones((2, 3)))
    assert not hasattr(xps, "einsum") and not hasattr(xps, "cumsum")
    with pytest.raises((TypeError, AttributeError)):
        xps.where(a > 0, 1.0, 0.0)                 # scalars in where: not in 2023.12
    with pytest.raises(TypeError):
        a + np.ones((2, 3))                        # no NumPy arrays mixed in


# ----------------------------------------------------------------------------------------------------------------
# the last-axis blocks, several leading shapes

@pytest.mark.parametrize("lead", LEADING)
def test_linear(lead):
    rng = _rng("linear", lead)
    x, w, b = _normal(rng, (*lead, D)), _normal(rng, (3, D)), _normal(rng, (3,))
    (out, cache), _ = run_both(L.linear_forward, x, w, b)
    run_both(L.linear_backward, _normal(rng, out.shape), cache)


@pytest.mark.parametrize("lead", LEADING)
def test_layer_norm(lead):
    rng = _rng("layer_norm", lead)
    x, w, b = _normal(rng, (*lead, D), scale=3.0), _normal(rng, (D,)), _normal(rng, (D,))
    (out, cache), _ = run_both(L.layer_norm_forward, x, w, b)
    run_both(L.layer_norm_backward, _normal(rng, out.shape), cache)


@pytest.mark.parametrize("lead", LEADING)
def test_gelu_and_sigmoid(lead):
    rng = _rng("gelu", lead)
    x = _normal(rng, (*lead, D), scale=3.0)
    (g, cache), _ = run_both(L.gelu_forward, x)
    run_both(L.gelu_backward, _normal(rng, g.shape), cache)
    x = np.concatenate([x, np.array([-800.0, -40.0, 0.0, 40.0, 800.0])[(None,) * len(lead)]
                        * np.ones((*lead, 5))], axis=-1)          # exp overflows nowhere (12)
    (s, scache), _ = run_both(L.sigmoid_forward, x)
    assert np.all(np.isfinite(s)) and np.all((s >= 0) & (s <= 1))
    run_both(L.sigmoid_backward, _normal(rng, s.shape), scache)
    run_both(L.sigmoid, x)


@pytest.mark.parametrize("name", L.ACTIVATIONS)
@pytest.mark.parametrize("lead", LEADING)
def test_activations(name, lead):
    rng = _rng("act", name, lead)
    z = _normal(rng, (*lead, D), scale=2.0)
    (g, cache), _ = run_both(lambda z: L.activation_forward(z, name), z)
    run_both(L.activation_backward, _normal(rng, g.shape), cache)


@pytest.mark.parametrize("kind", L.FFNS)
@pytest.mark.parametrize("lead", LEADING)
def test_ffn_blocks(kind, lead):
    rng = _rng("ffn", kind, lead)
    params = L.ffn_init(kind, D, 2, rng, np.float64)
    y = _normal(rng, (*lead, D))
    (out, cache), _ = run_both(L.FFN_FORWARD[kind], params, y)
    run_both(L.FFN_BACKWARD[kind], _normal(rng, out.shape), cache)


@pytest.mark.parametrize("lead", LEADING)
def test_lru_output_map(lead):
    rng = _rng("lru_out", lead)
    params = L.lru_output_init(D, N, rng, np.float64)
    h = _normal(rng, (*lead, N)) + 1j * _normal(rng, (*lead, N))
    a = _normal(rng, (*lead, D))
    (y, cache), _ = run_both(L.lru_output_forward, params, h, a)
    run_both(L.lru_output_backward, _normal(rng, y.shape), cache)


# ----------------------------------------------------------------------------------------------------------------
# batch norm (B, n): training forward / backward, evaluation, running averages

@pytest.mark.parametrize("B", [2, 7])
def test_batch_norm(B):
    rng = _rng("bn", B)
    a, w, b = _normal(rng, (B, D), scale=2.0), _normal(rng, (D,)), _normal(rng, (D,))
    (out, cache), _ = run_both(L.batch_norm_forward, a, w, b)
    run_both(L.batch_norm_backward, _normal(rng, out.shape), cache)
    rmean, rvar = _normal(rng, (D,)), 1.0 + rng.random(D)
    run_both(L.batch_norm_eval, a, w, b, rmean, rvar)
    run_both(lambda m, v, c: L.batch_norm_running(m, v, c, B), rmean, rvar, cache)


# ----------------------------------------------------------------------------------------------------------------
# pooling over time, every pooling × no mask / (T, B) mask / (T,) mask

T, B_POOL = 5, 3
MASKS = {
    "nomask": None,
    "mask_TB": np.array([[1, 1, 1], [1, 1, 0], [0, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=np.float64),
    "mask_T": np.array([0.0, 1.0, 0.5, 1.0, 0.0]),
}


@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("pooling", L.POOLINGS)
def test_pooling(pooling, mask):
    rng = _rng("pool", pooling, mask)
    y = _normal(rng, (T, B_POOL, D))
    m = MASKS[mask]
    (p, cache), _ = run_both(lambda y, m: L.pool_forward(pooling, y, m), y, m)
    run_both(L.pool_backward, _normal(rng, p.shape), cache)


@pytest.mark.parametrize("T_", [1, 2, 3, 8, 13])
def test_cumulative_mean_is_the_running_mean(T_):
    """(35) against an explicit running mean, on strict arrays (the doubling scan for T not a power of two)."""
    y = _normal(_rng("cummean", T_), (T_, 2, 3))
    p, _ = L.pool_forward("cumulative_mean", xps.asarray(y))
    np.testing.assert_allclose(np.asarray(p), np.stack([y[:t + 1].mean(0) for t in range(T_)]), rtol=1e-13, atol=1e-14)


# ----------------------------------------------------------------------------------------------------------------
# float32 stays float32 in the strict namespace (Python-float constants never upcast)

def test_float32_stays_float32():
    rng = _rng("f32")
    f32 = np.float32
    x = _normal(rng, (4, 3, D), f32)
    checks = []
    out, c = L.linear_forward(*to_strict([x, _normal(rng, (3, D), f32), _normal(rng, (3,), f32)]))
    checks += [out, *L.linear_backward(out, c).values()]
    out, c = L.layer_norm_forward(*to_strict([x, _normal(rng, (D,), f32), _normal(rng, (D,), f32)]))
    checks += [out, *L.layer_norm_backward(out, c).values()]
    for kind in L.FFNS:
        out, c = L.FFN_FORWARD[kind](to_strict(L.ffn_init(kind, D, 2, rng, f32)), xps.asarray(x))
        checks += [out, *L.FFN_BACKWARD[kind](out, c).values()]
    for name in L.ACTIVATIONS:
        g, c = L.activation_forward(xps.asarray(x), name)
        checks += [g, L.activation_backward(g, c)]
    out, c = L.batch_norm_forward(*to_strict([x[0], _normal(rng, (D,), f32), _normal(rng, (D,), f32)]))
    checks += [out, *L.batch_norm_backward(out, c).values()]
    for pooling in L.POOLINGS:
        p, c = L.pool_forward(pooling, xps.asarray(x), xps.asarray(MASKS["mask_T"][:4].astype(f32)))
        checks += [p, L.pool_backward(p, c)]
    for a in checks:
        assert a.dtype == xps.float32, a.dtype
    params = to_strict(L.lru_output_init(D, N, rng, f32))
    h = xps.asarray((_normal(rng, (4, 3, N)) + 1j * _normal(rng, (4, 3, N))).astype(np.complex64))
    y, c = L.lru_output_forward(params, h, xps.asarray(x))
    g = L.lru_output_backward(y, c)
    assert y.dtype == xps.float32 and g["h"].dtype == xps.complex64 and g["C_re"].dtype == xps.float32
