"""carry_out=False on the RTRL-family sweeps: the same grads and state, no carry.

Every RTRL-family kernel of the registry (<cell>.rtrl / .snap1 / .truncated / .spatial / .cec) takes the keyword
carry_out (default True). A stream's last chunk passes carry_out=False: its carry is thrown away, so the kernel hands
on None and skips the work that only builds it (the conversion of its traces to the reference's layout). For every
such kernel, on every backend that runs here — numpy (the reference), numba, mlx, cupy on a CUDA device, and cupy's
CPU emulation (backends/cupy/runtime.py EmulatedDevice) — on the registry's inputs (spec.make_inputs: a non-trivial
carried trace) and from a stream's start (carry None), the call with carry_out=False must give exactly (bit for bit,
same backend) the grads and state of the call with carry_out=True, and "carry" None, while the default call still
hands a carry on. Where the carry's conversion is one function (rtrl.carry_of, numba's _traces_out, mlx's
_traces_of), that function is made to fail, so a call with carry_out=False that still built the carry fails too.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from refimpl.registry import KERNELS, call, flatten_outputs

from ..parity import skip_unless_runs
from .test_parity import SIZES

RULES = ("rtrl", "snap1", "truncated", "spatial", "cec")
SWEEPS = [name for name in KERNELS if name.split(".")[1] in RULES]
#: numpy, numba, mlx and cupy through the registry (skipped with the reason where they cannot run); cupy's CPU
#: emulation called directly (skipped without a C++ compiler).
TARGETS = ("numpy", "numba", "mlx", "cupy", "cupy-emulated")


def test_the_family_is_all_there():
    """The 16 sweeps of the brief: rnn/gru/lstm rtrl snap1 truncated spatial, lstm cec, lru rtrl truncated spatial."""
    assert len(SWEEPS) == 16, SWEEPS


def _size(spec) -> dict:
    """One size per kernel: the largest of its own parity grid (the dense sweeps'), else a mid-size of the default grid
    (B > 1, H not a multiple of 32)."""
    return (spec.sizes or SIZES[:3])[-1]


def _cases():
    for kernel in SWEEPS:
        spec = KERNELS[kernel]
        for variant in spec.variants:
            for target in TARGETS:
                for dtype in spec.dtypes:
                    for start in (False, True):
                        tag = "-".join(f"{v}" for v in variant.values())
                        yield pytest.param(kernel, variant, target, dtype, start,
                                           id=f"{target}-{kernel}{'-' + tag if tag else ''}-{dtype}"
                                              f"{'-start' if start else '-carried'}")


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    from backends.cupy.runtime import EmulatedDevice, find_compiler
    if find_compiler() is None:
        pytest.skip("no C++ compiler (c++, g++, clang++ or $CXX): the CPU emulation of the CUDA kernels cannot be "
                    "built")
    return EmulatedDevice(build_dir=str(tmp_path_factory.mktemp("carry_out_emulation")))


def _runner(target: str, kernel: str, dtype: str, request):
    """A function inputs → NumPy outputs running `kernel` on `target` (or pytest.skip with the reason)."""
    if target == "cupy-emulated":
        import backends.cupy as cupy_backend
        device = request.getfixturevalue("emulated")
        implementation = cupy_backend.IMPLEMENTATIONS[kernel]
        return lambda **inputs: implementation(device, **inputs)
    skip_unless_runs(target, kernel, dtype)
    return lambda **inputs: call(kernel, target, **inputs)


@pytest.mark.parametrize("kernel,variant,target,dtype,start", list(_cases()))
def test_carry_out_false_gives_the_same_grads_and_state(kernel, variant, target, dtype, start, request):
    spec = KERNELS[kernel]
    run = _runner(target, kernel, dtype, request)
    inputs = spec.make_inputs(np.random.default_rng(7), np.dtype(dtype), _size(spec), **variant)
    if start:
        inputs["carry"] = None                                             # a stream's first chunk
    kept = run(**copy.deepcopy(inputs))
    dropped = run(**copy.deepcopy(inputs), carry_out=False)
    assert dropped["carry"] is None, f"{target} {kernel}: carry_out=False handed on a carry"
    assert isinstance(kept["carry"], dict), f"{target} {kernel}: the default call handed on no carry"
    if kernel.split(".")[1] in ("truncated", "spatial"):
        assert kept["carry"] == {}
    else:
        assert kept["carry"], f"{target} {kernel}: the default call's carry is empty"
    want = flatten_outputs({k: v for k, v in kept.items() if k != "carry"})
    got = flatten_outputs({k: v for k, v in dropped.items() if k != "carry"})
    assert sorted(got) == sorted(want)
    for name, a in want.items():
        b = got[name]
        assert isinstance(b, np.ndarray) and b.dtype == a.dtype and b.shape == a.shape, f"{target} {kernel} {name}"
        np.testing.assert_array_equal(b, a, err_msg=f"{target} {kernel} {name} changed with carry_out=False")


def _fail(*args, **kwargs):
    raise AssertionError("the carry was built although carry_out=False")


def _conversions():
    """(kernel, target, module, name of the function that only builds the carry)."""
    yield "gru.snap1", "numpy", "refimpl.algorithms.rtrl", "carry_of"
    yield "lstm.rtrl", "numpy", "refimpl.algorithms.rtrl", "carry_of"
    yield "lru.rtrl", "numpy", "refimpl.algorithms.rtrl", "carry_of"
    yield "lru.rtrl", "numba", "backends.numba.online_lru", "_traces_out"
    yield "lru.rtrl", "mlx", "backends.mlx.online_lru", "_traces_of"


@pytest.mark.parametrize("kernel,target,module,function", list(_conversions()))
@pytest.mark.parametrize("start", [False, True], ids=["carried", "start"])
def test_carry_out_false_skips_the_conversion(kernel, target, module, function, start, monkeypatch, request):
    """With the carry's conversion made to fail, carry_out=False still runs (it never calls it) and the default call
    fails (so the patch does reach the kernel)."""
    import importlib
    spec = KERNELS[kernel]
    run = _runner(target, kernel, "float32", request)
    inputs = spec.make_inputs(np.random.default_rng(3), np.dtype("float32"), SIZES[1])
    if start:
        inputs["carry"] = None
    monkeypatch.setattr(importlib.import_module(module), function, _fail)
    assert run(**copy.deepcopy(inputs), carry_out=False)["carry"] is None
    with pytest.raises(AssertionError, match="carry_out=False"):
        run(**copy.deepcopy(inputs))
