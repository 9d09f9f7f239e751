"""The losses (refimpl/nn/losses.py) and the optimizer (refimpl/optim.py) in another array namespace.

array_api_strict is the array API standard and nothing more: a function that ran here with a NumPy-only call, an
in-place write or a hidden conversion to NumPy would fail. Each result is compared with the same call on NumPy arrays
(the reference, itself tested against finite differences and torch in test_model.py / test_optim.py), to 1e-12 in
float64. The hot path must not read a value back to the host: inside `no_host_reads()` every such read raises.
"""

import contextlib

import numpy as np
import pytest

from refimpl import optim
from refimpl.errors import DTypeError, NumericalError, ShapeError
from refimpl.nn.losses import LOSSES, check_target, loss_forward
from refimpl.optim import OptimConfig

xs = pytest.importorskip("array_api_strict")

T, B, O = 5, 3, 4
TOL = 1e-12
ARRAY = type(xs.asarray(0.0))


@contextlib.contextmanager
def no_host_reads():
    """Every way of reading an array_api_strict array's values on the host (bool, float, int, NumPy conversion,
    DLPack) raises inside the block."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("a value was read back to the host")
    with pytest.MonkeyPatch.context() as mp:
        for method in ("__bool__", "__float__", "__int__", "__index__", "__complex__", "__array__", "__dlpack__"):
            mp.setattr(ARRAY, method, refuse)
        yield


def host(a):
    """A strict array's values as NumPy, for the comparisons (outside no_host_reads)."""
    return np.from_dlpack(a)


def strict(tree: dict) -> dict:
    return {k: xs.asarray(v) for k, v in tree.items()}


def assert_close(strict_tree: dict, numpy_tree: dict):
    assert strict_tree.keys() == numpy_tree.keys()
    for k, v in numpy_tree.items():
        if k == "step":                                       # the host counter, the same in every namespace
            assert isinstance(strict_tree[k], np.ndarray) and int(strict_tree[k]) == int(v)
            continue
        assert isinstance(strict_tree[k], ARRAY), k
        np.testing.assert_allclose(host(strict_tree[k]), v, rtol=0, atol=TOL, err_msg=k)


# losses ----------------------------------------------------------------------------------------------------------------

def _target(rng, name, shape):
    if name == "ce":
        return rng.integers(0, shape[-1], shape[:-1])
    if name == "bce":
        return rng.random(shape)
    return rng.standard_normal(shape)


MASKS = {"none": None,
         "TB bool": lambda rng: rng.random((T, B)) > 0.4,
         "TB int": lambda rng: rng.integers(0, 3, (T, B)),
         "T float": lambda rng: rng.random(T)}

# per-step output (T, B, O) — pooling none, cumulative_mean — with and without a mask; pooled (B, O) — last, mean —
# without one (the pooling used it)
CASES = [(name, (T, B, O), mask) for name in LOSSES for mask in MASKS] + [(name, (B, O), "none") for name in LOSSES]


@pytest.mark.parametrize("name,shape,mask", CASES)
def test_loss_matches_numpy(name, shape, mask, rng):
    out = 3.0 * rng.standard_normal(shape)
    y = _target(rng, name, shape)
    m = None if MASKS[mask] is None else MASKS[mask](rng)
    value, dout = loss_forward(name, out, y, m)                                             # NumPy: the reference
    with no_host_reads():
        value_s, dout_s = loss_forward(name, xs.asarray(out), xs.asarray(y), None if m is None else xs.asarray(m))
    assert isinstance(value_s, ARRAY) and value_s.shape == () and value_s.dtype == xs.float64
    assert isinstance(dout_s, ARRAY) and dout_s.shape == shape and dout_s.dtype == xs.float64
    assert abs(float(value_s) - value) <= TOL * max(1.0, abs(value))
    np.testing.assert_allclose(host(dout_s), dout, rtol=0, atol=TOL)
    assert abs(value) > 0.1 and np.max(np.abs(dout)) > 1e-3              # a nontrivial case: the comparison can fail


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_float32_stays_float32(name, rng):
    out = rng.standard_normal((T, B, O)).astype(np.float32)
    y = _target(rng, name, out.shape)
    y = y if name == "ce" else y.astype(np.float32)
    value, dout = loss_forward(name, out, y, None)
    value_s, dout_s = loss_forward(name, xs.asarray(out), xs.asarray(y), None)
    assert value_s.dtype == xs.float32 and dout_s.dtype == xs.float32
    np.testing.assert_allclose(host(dout_s), dout, rtol=1e-6, atol=1e-7)


def test_loss_checks_in_the_namespace(rng):
    out = xs.asarray(rng.standard_normal((T, B, O)))
    with pytest.raises(DTypeError, match="integer class indices"):
        loss_forward("ce", out, xs.asarray(rng.random((T, B))))
    with pytest.raises(ShapeError, match=r"labels y for loss 'ce' have shape \(5,\)"):
        loss_forward("ce", out, xs.asarray(rng.integers(0, O, T)))
    with pytest.raises(ShapeError, match=r"mask has shape \(3, 5\)"):
        loss_forward("mse", out, xs.asarray(rng.standard_normal((T, B, O))), xs.asarray(np.ones((B, T))))
    with pytest.raises(DTypeError, match="float32 is required"):
        check_target("mse", (T, B, O), xs.asarray(rng.standard_normal((T, B, O))), np.float32)
    with pytest.raises(DTypeError, match="one library"):                  # a NumPy target with a strict output
        loss_forward("mse", out, rng.standard_normal((T, B, O)))


# optimizer -------------------------------------------------------------------------------------------------------------

def _params(rng, dtype=np.float64):
    """Two recurrent and two ordinary parameters (eq. 3's groups)."""
    return {"layers.0.cell.weight_hh": rng.standard_normal((3, 3)).astype(dtype),
            "layers.0.cell.nu_log": rng.standard_normal(3).astype(dtype),
            "layers.0.C_re": rng.standard_normal((2, 3)).astype(dtype),
            "readout.weight": rng.standard_normal((2, 2)).astype(dtype)}


def _grads(rng, params, scale):
    return {k: scale * rng.standard_normal(v.shape) for k, v in params.items()}


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
@pytest.mark.parametrize("clip_norm", [None, 1.0])
def test_steps_match_numpy(name, clip_norm, rng):
    config = OptimConfig(name=name, lr=0.05, weight_decay=0.1, momentum=0.9 if name == "sgd" else 0.0,
                         rec_lr_factor=0.25, clip_norm=clip_norm, schedule="cosine", warmup_steps=1, total_steps=6)
    params = _params(rng)
    state = optim.init_state(params, config)
    params_s = strict(params)
    with no_host_reads():
        state_s = optim.init_state(params_s, config)
    assert_close(state_s, state)
    clipped = []
    for scale in (3.0, 0.01, 2.0, 0.05):                 # above and below the clipping norm
        grads = _grads(rng, params, scale)
        params, state, info = optim.step(params, grads, state, config)
        with no_host_reads():
            params_s, state_s, info_s = optim.step(params_s, strict(grads), state_s, config)
        assert_close(params_s, params)
        assert_close(state_s, state)
        assert info_s["lr"] == info["lr"] and isinstance(info_s["lr"], float)
        assert isinstance(info_s["grad_norm"], ARRAY) and info_s["grad_norm"].dtype == xs.float64
        assert abs(float(info_s["grad_norm"]) - info["grad_norm"]) <= TOL * info["grad_norm"]
        assert bool(info_s["clipped"]) == bool(info["clipped"])
        clipped.append(bool(info["clipped"]))
    assert clipped == ([False] * 4 if clip_norm is None else [True, False, True, False])


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_float32_stays_float32_and_norm_in_float64(name, rng):
    config = OptimConfig(name=name, momentum=0.9 if name == "sgd" else 0.0, clip_norm=0.5)
    params = _params(rng, np.float32)
    grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
    new, state, info = optim.step(params, grads, optim.init_state(params, config), config)
    params_s = strict(params)
    new_s, state_s, info_s = optim.step(params_s, strict(grads), optim.init_state(params_s, config), config)
    assert all(v.dtype == xs.float32 for v in new_s.values())
    assert all(v.dtype == xs.float32 for k, v in state_s.items() if k != "step")
    assert info_s["grad_norm"].dtype == xs.float64                        # (4) accumulated in float64
    assert abs(float(info_s["grad_norm"]) - info["grad_norm"]) <= TOL * info["grad_norm"]
    for k in params:
        np.testing.assert_allclose(host(new_s[k]), new[k], rtol=1e-6, atol=1e-7)


def test_clip_and_norm_in_the_namespace(rng):
    params = _params(rng)
    grads = _grads(rng, params, 1.0)
    names = list(params)
    norm = optim.global_norm(grads, names)
    with no_host_reads():
        norm_s = optim.global_norm(strict(grads), names)
        clipped_s, before_s = optim.clip_by_global_norm(strict(grads), names, norm / 3)
        same_s, _ = optim.clip_by_global_norm(strict(grads), names, 2 * norm)
    assert abs(float(norm_s) - norm) <= TOL * norm and abs(float(before_s) - norm) <= TOL * norm
    for k in names:
        np.testing.assert_allclose(host(clipped_s[k]), grads[k] / 3, rtol=1e-14)   # (5) one common factor
        np.testing.assert_array_equal(host(same_s[k]), grads[k])                   # below the threshold: factor 1


def test_non_finite_gradient(rng):
    """NumPy raises before updating; another namespace reads no value, and the update comes out non-finite."""
    config = OptimConfig(name="adamw", clip_norm=1.0)
    params = _params(rng)
    grads = _grads(rng, params, 1.0)
    grads["readout.weight"] = grads["readout.weight"] * np.nan
    with pytest.raises(NumericalError, match="gradient norm is nan"):
        optim.step(params, grads, optim.init_state(params, config), config)
    params_s = strict(params)
    with no_host_reads():
        new_s, _, info_s = optim.step(params_s, strict(grads), optim.init_state(params_s, config), config)
    assert not np.isfinite(float(info_s["grad_norm"]))
    assert not np.all(np.isfinite(host(new_s["readout.weight"])))
