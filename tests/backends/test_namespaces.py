"""The backends' array namespaces, their host↔device crossing counters, and the device kernels (refimpl/arrays.py,
refimpl/registry.py, backends/mlx/xp.py).

    - MLX's adapter (backends/mlx/xp.py): every function of THE VOCABULARY (refimpl/arrays.py) on mx.arrays equals
      array_api_compat's NumPy namespace on the same data, in float32 and (on MLX's CPU stream) float64, complex64
      for the complex functions; skipped, with the reason, when mlx is absent;
    - registration: a backend module's NAMESPACE is registered when the registry loads it (a fake backend; MLX's);
    - crossings: a device backend's to_backend / to_numpy count one per array (a fake backend, MLX), registry.call
      counts its conversions, to_device / to_host convert a tree once, numba's identity conversions count nothing,
      and MLX's asarray of host data counts as a to_backend crossing;
    - device kernels: cell_kernels(..., device=True) runs a cell's forward and backward in mx.arrays with no crossing,
      and agrees with the NumPy reference.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

import array_api_compat.numpy as npx

from refimpl import arrays, registry
from refimpl.arrays import dtype_of, namespace
from refimpl.errors import DTypeError, UnsupportedError
from refimpl.numerics import TOLERANCES, rel_error
from refimpl.registry import KERNELS, call, cell_kernels, flatten_outputs, load_backend, map_arrays, to_device, to_host

TINY = dict(T=4, B=2, I=3, H=5)


def _leaves(tree) -> int:
    """How many arrays a tree holds (what a conversion of the whole tree converts)."""
    found = []
    map_arrays(found.append, tree)
    return len(found)


# ------------------------------------------------------------------------------ a fake device backend (no mlx needed)

class FakeDeviceArray:
    """An array 'on a device': a NumPy array in a box, so that conversions are visible."""

    def __init__(self, a):
        self.a = np.array(a)
        self.shape, self.dtype = self.a.shape, self.a.dtype


@pytest.fixture
def fake_backend(monkeypatch):
    """A backend module 'fake_device' with a NAMESPACE, loaded through the registry (restored afterwards)."""
    module = types.ModuleType("fake_device_backend")
    fake_xp = types.SimpleNamespace(name="the fake namespace")
    module.KERNELS = {"gru.forward": lambda params, x, h0: (FakeDeviceArray(x.a * 2), None)}
    module.available = lambda: (True, "")
    module.to_backend = FakeDeviceArray
    module.to_numpy = lambda a: a.a.copy()
    module.NAMESPACE = (FakeDeviceArray, fake_xp)
    monkeypatch.setitem(sys.modules, "fake_device_backend", module)
    monkeypatch.setitem(registry.BACKENDS, "fake_device",
                        registry.BackendSpec("fake_device", "fake_device_backend", "a test double"))
    monkeypatch.setattr(arrays, "_ADAPTERS", list(arrays._ADAPTERS))
    monkeypatch.setattr(registry, "_LOADED", dict(registry._LOADED))
    return load_backend("fake_device"), fake_xp


def test_a_backends_namespace_is_registered_when_it_loads(fake_backend):
    _, fake_xp = fake_backend
    assert namespace(FakeDeviceArray(np.ones(2))) is fake_xp
    assert arrays.is_numpy(namespace(np.ones(2)))                 # NumPy's is untouched


def test_each_conversion_counts_one_crossing_and_reset_clears(fake_backend):
    b, _ = fake_backend
    assert b.crossings == {"to_backend": 0, "to_numpy": 0}
    d = b.to_backend(np.arange(3.0))
    b.to_backend(np.arange(2.0))
    np.testing.assert_array_equal(b.to_numpy(d), np.arange(3.0))
    assert b.crossings == {"to_backend": 2, "to_numpy": 1}
    b.reset_crossings()
    assert b.crossings == {"to_backend": 0, "to_numpy": 0}


def test_call_counts_its_conversions(fake_backend):
    b, _ = fake_backend
    params = {"w": np.ones((2, 2)), "b": np.zeros(2)}
    h, cache = call("gru.forward", "fake_device", params, np.ones((3, 1, 2)), np.zeros((1, 2)))
    np.testing.assert_array_equal(h, 2 * np.ones((3, 1, 2)))
    assert b.crossings == {"to_backend": 4, "to_numpy": 1}          # params (2), x, h0 in; h out


def test_to_device_and_to_host_convert_a_tree_once(fake_backend):
    b, _ = fake_backend
    tree = {"params": {"w": np.ones((2, 3)), "b": np.zeros(3)}, "state": [np.full(2, 7.0), 3], "step": 5}
    on_device = to_device("fake_device", tree)
    assert isinstance(on_device["params"]["w"], FakeDeviceArray) and on_device["state"][1] == 3
    assert b.crossings == {"to_backend": 3, "to_numpy": 0}
    assert to_device("fake_device", on_device)["params"]["w"] is on_device["params"]["w"]   # already there: no crossing
    back = to_host("fake_device", on_device)
    assert b.crossings == {"to_backend": 3, "to_numpy": 3}
    for name, a in flatten_outputs(tree).items():
        np.testing.assert_array_equal(flatten_outputs(back)[name], a)
    assert to_host("fake_device", back)["params"]["w"] is back["params"]["w"]             # already there: none
    assert b.crossings == {"to_backend": 3, "to_numpy": 3}


def test_host_backends_count_no_crossings():
    """numba's arrays are NumPy's (its conversions are the identity) and the reference has none: nothing counted."""
    for name in ("numpy", "numba"):
        b = load_backend(name)
        b.reset_crossings()
        a = np.ones(3)
        assert b.to_backend(a) is a and b.to_numpy(a) is a
        assert b.crossings == {"to_backend": 0, "to_numpy": 0}


def test_numpy_device_kernels_are_the_references():
    k = cell_kernels("gru", "numpy", "float64", device=True)
    assert k.device
    assert k.forward is KERNELS["gru.forward"].reference and k.backward is KERNELS["gru.backward"].reference


# ------------------------------------------------------------------------------------------------- MLX's adapter

@pytest.fixture(scope="module")
def mlx():
    """(mlx.core, the loaded MLX backend, its adapter); skipped with the reason when MLX cannot run here."""
    mx = pytest.importorskip("mlx.core", reason="mlx is not installed (pip install -e '.[mlx]')")
    b = load_backend("mlx")
    if not b.available:
        pytest.skip(f"backend mlx: {b.reason}")
    from backends.mlx.xp import XP
    return mx, b, XP


def _data(rng, dtype: str) -> dict:
    """The arrays the vocabulary cases use (NumPy, `dtype`)."""
    d = {"a": rng.standard_normal((3, 4, 5)), "c": rng.standard_normal((3, 4, 5)),
         "b": rng.standard_normal((3, 5, 2)), "v": rng.standard_normal(5), "m": rng.standard_normal((4, 5)),
         "pos": np.abs(rng.standard_normal((3, 4, 5))) + 0.1, "big": 10 * rng.standard_normal((3, 4, 5)),
         "odd": np.array([1.0, -np.inf, np.nan, 0.0, np.inf])}
    return {k: v.astype(dtype) for k, v in d.items()}


def _complex_data(rng) -> dict:
    z = lambda *s: (rng.standard_normal(s) + 1j * rng.standard_normal(s)).astype(np.complex64)   # noqa: E731
    return {"z": z(3, 4), "w": z(4, 2), "lam": z(4)}


#: name → f(xp, d, dt): one use of the vocabulary (d: the arrays in xp's arrays; dt: the float dtype object of xp).
CASES = {
    # creation
    "asarray(python scalar, dtype)": lambda xp, d, dt: xp.asarray(1.5, dtype=dt),
    "asarray(own array)": lambda xp, d, dt: xp.asarray(d["a"]),
    "asarray(own array, dtype)": lambda xp, d, dt: xp.asarray(d["a"], dtype=xp.float32),
    "zeros": lambda xp, d, dt: xp.zeros((2, 3), dtype=dt),
    "zeros_like": lambda xp, d, dt: xp.zeros_like(d["a"]),
    "ones_like": lambda xp, d, dt: xp.ones_like(d["a"]),
    "full": lambda xp, d, dt: xp.full((2, 3), 1.5, dtype=dt),
    "arange(stop)": lambda xp, d, dt: xp.arange(5),
    "arange(start, stop, step)": lambda xp, d, dt: xp.arange(1, 8, 2),
    "arange(float, dtype)": lambda xp, d, dt: xp.arange(0.0, 1.0, 0.25, dtype=dt),
    # elementwise, operators
    "+ − * /": lambda xp, d, dt: (d["a"] + d["c"]) * d["c"] - d["a"] / d["pos"],
    "scalars": lambda xp, d, dt: 2.0 * d["a"] - 1 + d["c"] / 3.0,
    "** array": lambda xp, d, dt: d["pos"] ** d["c"],
    "** scalar": lambda xp, d, dt: d["pos"] ** 0.5 + d["a"] ** 2,
    "unary −": lambda xp, d, dt: -d["a"],
    "@": lambda xp, d, dt: d["a"] @ d["b"],
    "comparisons": lambda xp, d, dt: xp.stack([d["a"] < d["c"], d["a"] >= 0.0, d["a"] == d["a"]]),
    "abs": lambda xp, d, dt: xp.abs(d["a"]),
    "exp": lambda xp, d, dt: xp.exp(d["a"]),
    "exp (large |x|)": lambda xp, d, dt: xp.exp(d["big"]),
    "log": lambda xp, d, dt: xp.log(d["pos"]),
    "log1p": lambda xp, d, dt: xp.log1p(d["pos"] - 0.1),
    "sqrt": lambda xp, d, dt: xp.sqrt(d["pos"]),
    "tanh": lambda xp, d, dt: xp.tanh(d["a"]),
    "sign": lambda xp, d, dt: xp.sign(d["a"]),
    "square": lambda xp, d, dt: xp.square(d["a"]),
    "maximum": lambda xp, d, dt: xp.maximum(d["a"], d["c"]),
    "minimum": lambda xp, d, dt: xp.minimum(d["a"], d["c"]),
    "maximum(x, scalar)": lambda xp, d, dt: xp.maximum(d["a"], 0.0),
    "where": lambda xp, d, dt: xp.where(d["a"] > 0, d["a"], d["c"]),
    "isfinite": lambda xp, d, dt: xp.isfinite(d["odd"]),
    "clip": lambda xp, d, dt: xp.clip(d["a"], -0.5, 0.5),
    # reductions
    "sum": lambda xp, d, dt: xp.sum(d["a"]),
    "sum(axis)": lambda xp, d, dt: xp.sum(d["a"], axis=1),
    "cumulative_sum": lambda xp, d, dt: xp.cumulative_sum(d["a"], axis=0),
    "sum(axis tuple, keepdims)": lambda xp, d, dt: xp.sum(d["a"], axis=(0, 2), keepdims=True),
    "mean": lambda xp, d, dt: xp.mean(d["a"], axis=-1),
    "mean(axis tuple)": lambda xp, d, dt: xp.mean(d["a"], axis=(0, 1)),
    "max": lambda xp, d, dt: xp.max(d["a"], axis=0, keepdims=True),
    "min": lambda xp, d, dt: xp.min(d["a"], axis=2),
    "max(all)": lambda xp, d, dt: xp.max(d["a"]),
    "all": lambda xp, d, dt: xp.all(d["a"] > -1.0, axis=1),
    "any": lambda xp, d, dt: xp.any(d["a"] > 1.0, axis=(1, 2), keepdims=True),
    "argmax": lambda xp, d, dt: xp.argmax(d["a"], axis=1),
    "argmax(keepdims)": lambda xp, d, dt: xp.argmax(d["a"], axis=-1, keepdims=True),
    # linear algebra
    "matmul": lambda xp, d, dt: xp.matmul(d["a"], d["b"]),
    "matmul(batched, matrix)": lambda xp, d, dt: xp.matmul(d["a"], xp.matrix_transpose(d["m"])),
    "matrix_transpose": lambda xp, d, dt: xp.matrix_transpose(d["a"]),
    "tensordot(int)": lambda xp, d, dt: xp.tensordot(d["a"], d["m"], axes=2),
    "tensordot(pairs)": lambda xp, d, dt: xp.tensordot(d["a"], d["b"], axes=((0, 2), (0, 1))),
    # manipulation
    "reshape": lambda xp, d, dt: xp.reshape(d["a"], (12, 5)),
    "reshape(-1)": lambda xp, d, dt: xp.reshape(d["a"], (3, -1)),
    "concat": lambda xp, d, dt: xp.concat([d["a"], d["c"]], axis=0),
    "concat(axis −1)": lambda xp, d, dt: xp.concat([d["a"], d["c"], d["a"]], axis=-1),
    "stack": lambda xp, d, dt: xp.stack([d["a"], d["c"]], axis=1),
    "expand_dims": lambda xp, d, dt: xp.expand_dims(d["m"], axis=1),
    "broadcast_to": lambda xp, d, dt: xp.broadcast_to(d["v"], (3, 4, 5)),
    "permute_dims": lambda xp, d, dt: xp.permute_dims(d["a"], (2, 0, 1)),
    "take_along_axis": lambda xp, d, dt: xp.take_along_axis(d["a"], xp.argmax(d["a"], axis=1, keepdims=True), axis=1),
    "slicing": lambda xp, d, dt: d["a"][1:, ::2, -1],
    # dtypes
    "astype(float32)": lambda xp, d, dt: xp.astype(d["a"], xp.float32),
    "astype(dtype_of)": lambda xp, d, dt: xp.astype(d["a"], dtype_of(xp, "float32")),
    "astype(bool)": lambda xp, d, dt: xp.astype(d["a"] > 0, dt),
}

COMPLEX_CASES = {
    "real": lambda xp, d: xp.real(d["z"]),
    "imag": lambda xp, d: xp.imag(d["z"]),
    "conj": lambda xp, d: xp.conj(d["z"]),
    "abs": lambda xp, d: xp.abs(d["z"]),
    "exp": lambda xp, d: xp.exp(d["z"]),
    "* and @": lambda xp, d: (d["lam"] * d["z"]) @ d["w"],
    "real @ complex": lambda xp, d: xp.real(d["z"]) @ d["w"],
    "astype(complex64)": lambda xp, d: xp.astype(xp.real(d["z"]), xp.complex64),
}


def _compare(got, want, dtype: str, what: str) -> None:
    """got (an mx.array) against want (NumPy): same shape, same kind (and float precision), values within the
    backend tolerance of the dtype (integers and booleans exactly)."""
    got_np = np.array(got)
    want = np.asarray(want)
    assert got_np.shape == want.shape, f"{what}: shape {got_np.shape} != NumPy's {want.shape}"
    assert got_np.dtype.kind == want.dtype.kind, f"{what}: dtype {got_np.dtype} != NumPy's {want.dtype}"
    if want.dtype.kind in "fc":
        assert got_np.dtype == want.dtype, f"{what}: dtype {got_np.dtype} != NumPy's {want.dtype}"
        np.testing.assert_array_equal(np.isfinite(got_np), np.isfinite(want), err_msg=what)
        finite = np.isfinite(want)
        err = rel_error(got_np[finite], want[finite]) if finite.any() else 0.0
        assert err <= TOLERANCES["backend_vs_reference"][dtype], f"{what}: relative error {err:.2e}"
    else:
        np.testing.assert_array_equal(got_np, want, err_msg=what)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", list(CASES))
def test_mlx_vocabulary_equals_numpy(mlx, case, dtype):
    mx, backend, XP = mlx
    host = _data(np.random.default_rng(7), dtype)
    want = CASES[case](npx, host, dtype_of(npx, dtype))
    with mx.stream(mx.cpu):                                   # float64 is MLX's CPU stream's only
        device = {k: backend.to_backend(v) for k, v in host.items()}
        assert namespace(*device.values()) is XP
        got = CASES[case](XP, device, dtype_of(XP, dtype))
        assert isinstance(got, mx.array), f"{case}: {type(got).__name__}, not an mx.array"
        mx.eval(got)
    _compare(got, want, dtype, case)


@pytest.mark.parametrize("case", list(COMPLEX_CASES))
def test_mlx_vocabulary_equals_numpy_in_complex64(mlx, case):
    mx, backend, XP = mlx
    host = _complex_data(np.random.default_rng(3))
    want = COMPLEX_CASES[case](npx, host)
    got = COMPLEX_CASES[case](XP, {k: backend.to_backend(v) for k, v in host.items()})
    _compare(got, want, "float32", case)


def test_mlx_dtype_objects(mlx):
    mx, _, XP = mlx
    for name in ("float32", "float64", "complex64"):
        assert dtype_of(XP, name) == getattr(mx, name)
        assert XP.zeros((1,), dtype=dtype_of(XP, name)).dtype == dtype_of(XP, name)
    assert XP.asarray(np.ones(2)).dtype == XP.float64            # mx.array alone would make it float32
    with pytest.raises(DTypeError, match="no complex128"):
        XP.complex128
    with pytest.raises(DTypeError, match="no complex128"):
        XP.asarray(np.ones(2, np.complex128))
    z = XP.asarray(np.array([1 + 2j]), dtype=XP.complex64)       # explicit downcast: allowed
    assert z.dtype == mx.complex64 and complex(np.array(z)[0]) == 1 + 2j
    assert not arrays.is_numpy(XP)


def test_mlx_asarray_of_host_data_is_a_counted_crossing(mlx):
    mx, b, XP = mlx
    b.reset_crossings()
    x = XP.asarray(np.arange(3.0))
    assert b.crossings == {"to_backend": 1, "to_numpy": 0}
    XP.asarray(x), XP.asarray(2.0), XP.asarray(x, dtype=XP.float32), XP.exp(x), x * 2.0
    assert b.crossings == {"to_backend": 1, "to_numpy": 0}        # device data and Python scalars do not cross
    XP.maximum(x, np.zeros(3))                                   # a NumPy array mixed in crosses, counted
    XP.asarray(np.float64(2.0))
    assert b.crossings == {"to_backend": 3, "to_numpy": 0}


@pytest.mark.parametrize("cell", ["gru", "lru"])
def test_mlx_call_counts_its_conversions(mlx, cell):
    _, b, _ = mlx
    inputs = KERNELS[f"{cell}.forward"].make_inputs(np.random.default_rng(0), np.dtype("float32"), TINY)
    b.reset_crossings()
    out = call(f"{cell}.forward", "mlx", **inputs)
    assert b.crossings == {"to_backend": _leaves(inputs), "to_numpy": _leaves(out)}
    assert _leaves(inputs) >= 3 and _leaves(out) >= 2


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm", "lru"])
def test_mlx_device_kernels_run_in_mx_arrays_without_crossing(mlx, cell):
    """A cell's forward and backward through cell_kernels(device=True): mx.arrays in and out, no crossing, and the
    NumPy reference's values once brought back."""
    mx, b, _ = mlx
    rng = np.random.default_rng(5)
    inputs = KERNELS[f"{cell}.forward"].make_inputs(rng, np.dtype("float32"), TINY)
    kernels = cell_kernels(cell, "mlx", "float32", device=True)
    assert kernels.device and kernels.backend == "mlx"

    b.reset_crossings()
    on_device = to_device("mlx", inputs)
    assert b.crossings == {"to_backend": _leaves(inputs), "to_numpy": 0}
    dh = rng.standard_normal((TINY["T"], TINY["B"], TINY["H"])).astype(np.float32)
    dh_device = to_device("mlx", dh)
    b.reset_crossings()
    h, cache = kernels.forward(**on_device)
    grads = kernels.backward(on_device["params"], dh_device, cache)
    assert b.crossings == {"to_backend": 0, "to_numpy": 0}
    for name, a in flatten_outputs((h, cache, grads)).items():
        if hasattr(a, "shape"):
            assert isinstance(a, mx.array), f"{cell} {name}: {type(a).__name__}, not an mx.array"

    h_ref, cache_ref = KERNELS[f"{cell}.forward"].reference(**inputs)
    grads_ref = KERNELS[f"{cell}.backward"].reference(inputs["params"], dh, cache_ref)
    got = flatten_outputs(to_host("mlx", {"h": h, "grads": grads}))
    assert b.crossings["to_numpy"] == _leaves({"h": h, "grads": grads})
    want = flatten_outputs({"h": h_ref, "grads": grads_ref})
    assert sorted(got) == sorted(want)
    for name, ref in want.items():
        assert rel_error(got[name], ref) <= TOLERANCES["backend_vs_reference"]["float32"], f"{cell} {name}"


def test_device_kernels_of_an_unavailable_backend_are_refused(monkeypatch):
    monkeypatch.setattr(registry, "_LOADED", dict(registry._LOADED))
    monkeypatch.setitem(registry._LOADED, "cupy", registry.Backend("cupy", False, "no CUDA device here"))
    with pytest.raises(UnsupportedError, match="no CUDA device here"):
        cell_kernels("gru", "cupy", "float32", device=True)
    with pytest.raises(UnsupportedError, match="no CUDA device here"):
        to_device("cupy", {"w": np.ones(2)})
