"""The public API: what it returns, and the clear errors it raises on bad input (DESIGN.md §8)."""

import numpy as np
import pytest

import refimpl
from refimpl import (DTypeError, NonFiniteError, NumericalError, ShapeError, UnknownNameError, UnsupportedError,
                     cell_grads, make_cell, run_cell)
from refimpl.cells import CELLS
from refimpl.numerics import rel_error


def _inputs(cell, T=4, B=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, cell.n_in)).astype(cell.dtype)
    dh = rng.standard_normal((T, B, cell.n_hidden)).astype(cell.state_dtype)
    return x, dh


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_make_cell_layouts_and_dtypes(name, dtype):
    cell, params = make_cell(name, 3, 5, seed=1, dtype=dtype)
    assert cell.name == name and cell.n_in == 3 and cell.n_hidden == 5
    gates = {"rnn": 1, "gru": 3, "lstm": 4}
    for k, v in params.items():
        assert v.dtype == np.dtype(dtype), k
    if name in gates:
        g = gates[name]
        assert params["weight_ih"].shape == (g * 5, 3) and params["weight_hh"].shape == (g * 5, 5)
        assert params["bias_ih"].shape == (g * 5,) and params["bias_hh"].shape == (g * 5,)
        bound = 1 / np.sqrt(5)          # U(−1/√H, 1/√H), as PyTorch
        assert all(np.all(np.abs(v) <= bound) for v in params.values())
    else:
        assert set(params) == {"nu_log", "theta_log", "gamma_log", "B_re", "B_im"}
    _, again = make_cell(name, 3, 5, seed=1, dtype=dtype)
    _, other = make_cell(name, 3, 5, seed=2, dtype=dtype)
    assert all(np.array_equal(params[k], again[k]) for k in params), "same seed, same parameters"
    assert any(not np.array_equal(params[k], other[k]) for k in params)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_run_cell_and_cell_grads_shapes(name):
    cell, params = make_cell(name, 3, 4)
    x, dh = _inputs(cell)
    h = run_cell(cell, params, x)
    assert h.shape == (4, 2, 4) and h.dtype == cell.state_dtype
    grads = cell_grads(cell, params, x, dh)
    assert set(grads) == set(params) | {"x"} | set(cell.grad_state_keys)
    for k, v in params.items():
        assert grads[k].shape == v.shape and grads[k].dtype == v.dtype
    assert grads["x"].shape == x.shape and grads["h0"].shape == (2, 4)


def test_lstm_exposes_c_and_accepts_h0_c0():
    cell, params = make_cell("lstm", 2, 3)
    x, dh = _inputs(cell)
    rng = np.random.default_rng(5)
    h0, c0 = rng.standard_normal((2, 2, 3))
    h, cache = run_cell(cell, params, x, h0=(h0, c0), return_cache=True)
    assert cache.c.shape == h.shape
    # the c the cache exposes is the one the recurrence used: c_0 = f ⊙ c0 + i ⊙ g and h = o ⊙ tanh(c)
    np.testing.assert_allclose(cache.c[0], cache.f[0] * c0 + cache.i[0] * cache.g[0], rtol=1e-12)
    np.testing.assert_allclose(h, cache.o * np.tanh(cache.c), rtol=1e-12)
    h_zero_c = run_cell(cell, params, x, h0=h0)              # c0 defaults to zero
    assert not np.allclose(h, h_zero_c)
    grads = cell_grads(cell, params, x, dh, h0=(h0, c0))
    assert grads["c0"].shape == (2, 3)


def test_lru_h0_is_complex_and_x_real():
    cell, params = make_cell("lru", 2, 3)
    x, dh = _inputs(cell)
    h0 = (np.ones((2, 3)) + 1j).astype(np.complex128)
    h = run_cell(cell, params, x, h0=h0)
    assert h.dtype == np.complex128
    with pytest.raises(DTypeError, match="complex128"):
        run_cell(cell, params, x, h0=np.ones((2, 3)))                  # a real h0 for a complex state
    with pytest.raises(DTypeError, match="complex128"):
        cell_grads(cell, params, x, dh.real.copy())                    # a real adjoint for a complex state


@pytest.mark.parametrize("bad,err,phrase", [
    (lambda x: x[0], ShapeError, "3 dimensions"),
    (lambda x: x[..., :2], ShapeError, "I=3"),
    (lambda x: x.astype(np.float32), DTypeError, "float64 is required"),
    (lambda x: x.astype(np.int64), DTypeError, "float64 is required"),
    (lambda x: x.tolist(), DTypeError, "numpy.ndarray"),
    (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x), NonFiniteError, "non-finite"),
    (lambda x: x[:0], ShapeError, "empty"),
])
@pytest.mark.parametrize("name", sorted(CELLS))
def test_bad_x_gives_clear_errors(name, bad, err, phrase):
    cell, params = make_cell(name, 3, 4)
    x, dh = _inputs(cell)
    with pytest.raises(err, match=phrase):
        run_cell(cell, params, bad(x))
    with pytest.raises(err, match=phrase):
        cell_grads(cell, params, bad(x), dh)


def test_bad_dh_h0_params_give_clear_errors():
    cell, params = make_cell("gru", 3, 4)
    x, dh = _inputs(cell)
    with pytest.raises(ShapeError, match="T=4"):
        cell_grads(cell, params, x, dh[:3])
    with pytest.raises(ShapeError, match="H=4"):
        run_cell(cell, params, x, h0=np.zeros((2, 5)))
    with pytest.raises(NonFiniteError, match="dh"):
        cell_grads(cell, params, x, np.full_like(dh, np.inf))
    with pytest.raises(ShapeError, match="missing \\['bias_hh'\\]"):
        run_cell(cell, {k: v for k, v in params.items() if k != "bias_hh"}, x)
    with pytest.raises(ShapeError, match="expected shape"):
        run_cell(cell, {**params, "weight_hh": params["weight_hh"][:4]}, x)
    with pytest.raises(NonFiniteError, match="weight_ih"):
        run_cell(cell, {**params, "weight_ih": params["weight_ih"] * np.nan}, x)
    with pytest.raises(DTypeError, match="make_cell"):
        run_cell("gru", params, x)


def test_unknown_names_and_unsupported_combinations():
    with pytest.raises(UnknownNameError, match="unknown cell 'gruu'.*did you mean 'gru'"):
        make_cell("gruu", 3, 4)
    with pytest.raises(UnknownNameError, match="option for cell 'gru'"):
        make_cell("gru", 3, 4, nonlinearity="relu")
    with pytest.raises(UnknownNameError, match="rnn nonlinearity 'relu'"):
        make_cell("rnn", 3, 4, nonlinearity="relu")
    with pytest.raises(UnknownNameError, match="dtype"):
        make_cell("rnn", 3, 4, dtype="float16")
    with pytest.raises(UnsupportedError, match="positive integer"):
        make_cell("rnn", 0, 4)
    cell, params = make_cell("rnn", 3, 4)
    x, dh = _inputs(cell)
    with pytest.raises(UnknownNameError, match="unknown algorithm 'bpt'"):
        cell_grads(cell, params, x, dh, algorithm="bpt")
    with pytest.raises(UnsupportedError, match="fixed point"):
        cell_grads(cell, params, x, dh, algorithm="ep")          # EP needs a static input (refimpl.ep)
    with pytest.raises(UnknownNameError, match="unknown backend 'torch'"):
        run_cell(cell, params, x, backend="torch")


def test_unwritten_backend_says_why():
    cell, params = make_cell("rnn", 3, 4)
    x, _ = _inputs(cell)
    from refimpl.registry import load_backend
    for name in ("numba", "mlx", "cupy"):
        b = load_backend(name)
        if b.available and "rnn.forward" in b.kernels:       # once written, the parity tests take over
            continue
        with pytest.raises(UnsupportedError, match=name):
            run_cell(cell, params, x, backend=name)


def test_blow_up_is_reported_not_returned():
    cell, params = make_cell("rnn", 3, 4, nonlinearity="linear")
    params = {**params, "weight_hh": 1e3 * np.eye(4)}        # |h_t| ~ 1e3^t overflows float64 by t ≈ 103
    x = np.ones((200, 1, 3))
    with pytest.raises(NumericalError, match="non-finite.*step t="):
        run_cell(cell, params, x)
    with pytest.raises(NumericalError):
        cell_grads(cell, params, x, np.ones((200, 1, 4)))


def test_api_does_not_mutate_inputs():
    cell, params = make_cell("lstm", 3, 4)
    x, dh = _inputs(cell)
    snap = {k: v.copy() for k, v in params.items()}, x.copy(), dh.copy()
    cell_grads(cell, params, x, dh)
    assert all(np.array_equal(params[k], snap[0][k]) for k in params)
    assert np.array_equal(x, snap[1]) and np.array_equal(dh, snap[2])


def test_cell_grads_equal_module_backward():
    """The API path (registry, backend call) gives the module's own BPTT."""
    cell, params = make_cell("gru", 3, 4)
    x, dh = _inputs(cell)
    grads = cell_grads(cell, params, x, dh)
    _, cache = cell.module.forward(params, x, cell.module.zero_state(2, 4, cell.dtype))
    direct = cell.module.backward(params, dh, cache)
    for k in direct:
        assert rel_error(grads[k], direct[k]) == 0.0


def test_public_names():
    for name in ("make_cell", "run_cell", "cell_grads", "make_model", "model_grads"):
        assert callable(getattr(refimpl, name))


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("algorithm", ["rtrl", "online", "snap1", "truncated", "spatial", "cec"])
def test_cell_grads_accepts_every_rtrl_family_name(name, algorithm):
    cell, params = make_cell(name, 3, 4, seed=2)
    x, dh = _inputs(cell, T=6)
    h0 = np.random.default_rng(9).standard_normal((2, 4)).astype(cell.dtype)
    if name == "lru":
        h0 = h0 + 0.5j
    if algorithm == "cec" and name != "lstm":
        with pytest.raises(UnsupportedError, match="lstm"):
            cell_grads(cell, params, x, dh, h0=h0, algorithm=algorithm)
        return
    grads = cell_grads(cell, params, x, dh, h0=h0, algorithm=algorithm)
    assert set(grads) == set(params)
    if algorithm in ("rtrl", "online"):
        bptt = cell_grads(cell, params, x, dh, h0=h0)
        for k in params:
            assert rel_error(grads[k], bptt[k]) <= 1e-10, k


def test_a_backend_is_used_never_ignored():
    """A requested backend really runs the kernels (tests/algorithms/test_on_backend.py checks the results): an
    unavailable or unknown backend is refused with the reason, never silently replaced by the reference."""
    from refimpl.errors import UnknownNameError
    from refimpl.registry import load_backend
    model, params = refimpl.make_model("lru", 3, 4, 2, r_min=0.9)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    y = np.zeros((5, 2, 2))
    with pytest.raises(UnknownNameError, match="backend"):
        refimpl.model_grads(model, params, x, y, loss="mse", algorithm="online", backend="nosuch")
    for name in ("numba", "mlx", "cupy"):
        if not load_backend(name).available:
            with pytest.raises(UnsupportedError, match="not available"):
                refimpl.model_grads(model, params, x, y, loss="mse", algorithm="online", backend=name)
    if load_backend("numba").available:
        _, g = refimpl.model_grads(model, params, x, y, loss="mse", algorithm="bptt", backend="numba")
        _, g_ref = refimpl.model_grads(model, params, x, y, loss="mse", algorithm="bptt")
        assert all(rel_error(g[k], g_ref[k]) <= 1e-10 for k in g_ref)


def test_a_dtype_the_backend_cannot_run_is_refused_with_the_fix():
    from refimpl.registry import load_backend
    if not load_backend("mlx").available:
        pytest.skip("mlx is not available here")
    model, params = refimpl.make_model("lru", 3, 4, 2, r_min=0.9)               # float64: complex128 states
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    with pytest.raises(UnsupportedError, match="--dtype float32"):
        refimpl.model_grads(model, params, x, np.zeros((5, 2, 2)), loss="mse", backend="mlx")
    cell, cparams = refimpl.make_cell("lru", 3, 4, r_min=0.9)
    with pytest.raises(UnsupportedError, match="complex128"):
        refimpl.cell_grads(cell, cparams, x, np.zeros((5, 2, 4), complex), backend="mlx")
