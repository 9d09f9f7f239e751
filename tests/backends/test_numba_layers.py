"""Numba's fused layer operations (backends/numba/layers.py LAYERS) against the reference's (refimpl/nn/layers.py).

Each operation and its backward, in both dtypes and for leading axes (T, B), (B,) and a single row, must equal the
reference to DESIGN.md §7's backend tolerance; the caches are interchangeable (a Numba backward on the reference's
cache and the reverse give the same gradients), and a non-contiguous input (a transposed view) is accepted. The whole
model with these operations is checked by tests/training/test_device_step.py (every model option, numba).
"""

import numpy as np
import pytest

from refimpl.nn import layers as L
from refimpl.numerics import TOLERANCES, rel_error
from refimpl.registry import load_backend

_numba = load_backend("numba")
pytestmark = pytest.mark.skipif(not _numba.available, reason=f"numba: {_numba.reason}")
REF = L.REFERENCE
LEADS = [(5, 3), (4,), (1,)]
D, N = 8, 5


def _ops():
    from backends.numba.layers import LAYERS
    return LAYERS


def _tol(dtype):
    return TOLERANCES["backend_vs_reference"][dtype]


def _close(got, want, dtype, what):
    if isinstance(want, dict):
        assert set(got) == set(want), what
        for k in want:
            _close(got[k], want[k], dtype, f"{what}.{k}")
        return
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, want.shape, got.dtype, want.dtype)
    assert rel_error(got, want) <= _tol(dtype), (what, rel_error(got, want))


def _both_ways(forward_args, fwd, bwd, dout, dtype, what):
    """Forward by each bundle; every backward on every cache (four gradients, all equal to the reference's)."""
    (y_ref, c_ref), (y_nb, c_nb) = getattr(REF, fwd)(*forward_args), getattr(_ops(), fwd)(*forward_args)
    _close(y_nb, y_ref, dtype, f"{what} forward")
    want = getattr(REF, bwd)(dout, c_ref)
    for name, ops in (("numba", _ops()), ("reference", REF)):
        for cache_name, cache in (("numba", c_nb), ("reference", c_ref)):
            _close(getattr(ops, bwd)(dout, cache), want, dtype, f"{what} {name} backward on the {cache_name} cache")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("lead", LEADS, ids=str)
def test_layer_norm(lead, dtype):
    rng = np.random.default_rng(0)
    x = (3.0 + rng.standard_normal(lead + (D,))).astype(dtype)        # an offset: the mean matters
    w, b = rng.standard_normal(D).astype(dtype), rng.standard_normal(D).astype(dtype)
    _both_ways((x, w, b), "layer_norm_forward", "layer_norm_backward", rng.standard_normal(lead + (D,)).astype(dtype),
               dtype, "layer norm")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("lead", LEADS, ids=str)
@pytest.mark.parametrize("kind", L.FFNS)
@pytest.mark.parametrize("dropout", [False, True])
def test_ffn_blocks(kind, lead, dtype, dropout):
    rng = np.random.default_rng(1)
    params = L.ffn_init(kind, D, 2, rng, dtype)
    y = (2.0 * rng.standard_normal(lead + (D,))).astype(dtype)         # GELU's and σ's curved range, both signs
    width = 2 * D if kind == "mlp" else D
    mask = ((rng.random(lead[-1:] + (width,)) < 0.7) / 0.7).astype(dtype) if dropout else None   # (DR1), per example
    (out, c_ref), (out_nb, c_nb) = REF.ffn_forward[kind](params, y, mask), _ops().ffn_forward[kind](params, y, mask)
    _close(out_nb, out, dtype, f"{kind} forward")
    dout = rng.standard_normal(out.shape).astype(dtype)
    want = REF.ffn_backward[kind](dout, c_ref)
    for cache in (c_nb, c_ref):
        _close(_ops().ffn_backward[kind](dout, cache), want, dtype, f"{kind} backward")
    _close(REF.ffn_backward[kind](dout, c_nb), want, dtype, f"{kind} reference backward on the numba cache")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("lead", LEADS, ids=str)
def test_lru_output_map(lead, dtype):
    rng = np.random.default_rng(2)
    params = L.lru_output_init(D, N, rng, dtype)
    cdtype = np.complex64 if dtype == "float32" else np.complex128
    h = (rng.standard_normal(lead + (N,)) + 1j * rng.standard_normal(lead + (N,))).astype(cdtype)
    a = rng.standard_normal(lead + (D,)).astype(dtype)
    _both_ways((params, h, a), "lru_output_forward", "lru_output_backward",
               rng.standard_normal(lead + (D,)).astype(dtype), dtype, "lru output map")


def test_non_contiguous_inputs():
    """A transposed (B, T, ·) view as (T, B, ·) input: the fused loops copy it once, the results are the reference's."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 5, D)).transpose(1, 0, 2)
    h = (rng.standard_normal((3, 5, N)) + 1j * rng.standard_normal((3, 5, N))).transpose(1, 0, 2)
    w, b = np.ones(D), np.zeros(D)
    _close(_ops().layer_norm_forward(x, w, b)[0], REF.layer_norm_forward(x, w, b)[0], "float64", "layer norm")
    params = L.ffn_init("glu", D, 2, rng, "float64")
    _close(_ops().ffn_forward["glu"](params, x)[0], REF.ffn_forward["glu"](params, x)[0], "float64", "glu")
    p = L.lru_output_init(D, N, rng, "float64")
    _close(_ops().lru_output_forward(p, h, x)[0], REF.lru_output_forward(p, h, x)[0], "float64", "lru output")


def test_the_registry_hands_them_to_the_model():
    from refimpl.nn.stack import ops_of
    from refimpl.registry import cell_kernels
    assert ops_of(cell_kernels("lru", "numba")) is _ops()
    assert ops_of(cell_kernels("lru", "numba", device=True)) is _ops()
    assert ops_of(cell_kernels("lru", "numpy")) is REF
    assert ops_of(None) is REF
