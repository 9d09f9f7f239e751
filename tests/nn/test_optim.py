"""Tests of refimpl.optim: hand-worked Adam/AdamW, torch.optim parity, clipping, schedule, groups, purity, checkpoints."""

import copy
import math

import numpy as np
import pytest

from refimpl import optim
from refimpl.errors import NumericalError, ShapeError, UnknownNameError, UnsupportedError
from refimpl.optim import OptimConfig


def _params(rng, dtype=np.float64):
    """Two recurrent and two ordinary parameters with model-style dotted names."""
    return {"layers.0.cell.weight_hh": rng.standard_normal((3, 3)).astype(dtype),
            "layers.0.cell.nu_log": rng.standard_normal(3).astype(dtype),
            "layers.0.C_re": rng.standard_normal((2, 3)).astype(dtype),
            "readout.weight": rng.standard_normal((2, 2)).astype(dtype)}


def _grads(rng, params, scale=1.0):
    grads = {k: scale * rng.standard_normal(v.shape) for k, v in params.items()}
    grads["x"] = rng.standard_normal((4, 1, 2))   # not a parameter: must be ignored
    return grads


# (a) two scalar steps worked out by hand -------------------------------------------------------------------------------

def test_adam_two_steps_by_hand():
    # Adam, lr 0.1, β1 0.9, β2 0.999, ε 1e-8, coupled L2 decay λ = 0.1, p0 = 1, loss gradients 0.4 then −0.2.
    config = OptimConfig(name="adam", lr=0.1, weight_decay=0.1, clip_norm=None, schedule="constant")
    p = {"w": np.array(1.0)}
    state = optim.init_state(p, config)

    # step k = 1:  g = 0.4 + 0.1·1 = 0.5           m = 0.1·0.5 = 0.05          v = 0.001·0.25 = 0.00025
    #              m̂ = 0.05/0.1 = 0.5             v̂ = 0.00025/0.001 = 0.25    √v̂ = 0.5
    #              p = 1 − 0.1·0.5/(0.5 + 1e-8) = 1 − 0.099999998 = 0.900000002
    g = 0.4 + 0.1 * 1.0
    m = 0.1 * g
    v = 0.001 * g * g
    p1 = 1.0 - 0.1 * (m / 0.1) / (math.sqrt(v / 0.001) + 1e-8)
    p, state, _ = optim.step(p, {"w": np.array(0.4)}, state, config)
    assert p1 == pytest.approx(0.900000002, rel=1e-15)
    assert float(p["w"]) == pytest.approx(p1, rel=1e-15)
    assert float(state["m/w"]) == pytest.approx(0.05, rel=1e-15)
    assert float(state["v/w"]) == pytest.approx(0.00025, rel=1e-15)

    # step k = 2:  g = −0.2 + 0.1·0.900000002 = −0.1099999998
    #              m = 0.9·0.05 + 0.1·g = 0.03400000002        v = 0.999·0.00025 + 0.001·g² = 0.000261849999956
    #              m̂ = m/(1 − 0.9²) = m/0.19 = 0.178947368526   v̂ = v/(1 − 0.999²) = v/0.001999 = 0.130990495226
    #              √v̂ = 0.361926090833    step = 0.1·m̂/(√v̂ + 1e-8) = 0.0494430681055
    #              p = 0.900000002 − 0.0494430681055 = 0.850556933894
    g = -0.2 + 0.1 * p1
    m = 0.9 * m + 0.1 * g
    v = 0.999 * v + 0.001 * g * g
    p2 = p1 - 0.1 * (m / (1 - 0.9 ** 2)) / (math.sqrt(v / (1 - 0.999 ** 2)) + 1e-8)
    p, state, _ = optim.step(p, {"w": np.array(-0.2)}, state, config)
    assert p2 == pytest.approx(0.850556933894, rel=1e-11)
    assert float(p["w"]) == pytest.approx(p2, rel=1e-14)
    assert float(state["m/w"]) == pytest.approx(0.03400000002, rel=1e-12)
    assert float(state["v/w"]) == pytest.approx(0.000261849999956, rel=1e-12)
    assert int(state["step"]) == 2


def test_adamw_two_steps_by_hand():
    # AdamW, lr 0.1, β1 0.9, β2 0.999, ε 1e-8, decoupled decay λ = 0.5, p0 = 1, gradients 0.4 then −0.2.
    config = OptimConfig(name="adamw", lr=0.1, weight_decay=0.5, clip_norm=None, schedule="constant")
    p = {"w": np.array(1.0)}
    state = optim.init_state(p, config)

    # step k = 1:  decay p = 1·(1 − 0.1·0.5) = 0.95
    #              m = 0.1·0.4 = 0.04   v = 0.001·0.16 = 0.00016   m̂ = 0.4   v̂ = 0.16   √v̂ = 0.4
    #              p = 0.95 − 0.1·0.4/(0.4 + 1e-8) = 0.95 − 0.0999999975 = 0.8500000025
    m, v = 0.1 * 0.4, 0.001 * 0.4 * 0.4
    p1 = 1.0 * (1 - 0.1 * 0.5) - 0.1 * (m / 0.1) / (math.sqrt(v / 0.001) + 1e-8)
    p, state, _ = optim.step(p, {"w": np.array(0.4)}, state, config)
    assert p1 == pytest.approx(0.8500000025, rel=1e-15)
    assert float(p["w"]) == pytest.approx(p1, rel=1e-15)

    # step k = 2:  decay p = 0.8500000025·0.95 = 0.807500002375
    #              m = 0.9·0.04 − 0.1·0.2 = 0.016        v = 0.999·0.00016 + 0.001·0.04 = 0.00019984
    #              m̂ = 0.016/0.19 = 0.0842105263158      v̂ = 0.00019984/0.001999 = 0.0999699849925   √v̂ = 0.316180304561
    #              step = 0.1·m̂/(√v̂ + 1e-8) = 0.0266337031237
    #              p = 0.807500002375 − 0.0266337031237 = 0.780866299251
    m = 0.9 * m + 0.1 * -0.2
    v = 0.999 * v + 0.001 * 0.04
    p2 = p1 * (1 - 0.1 * 0.5) - 0.1 * (m / (1 - 0.9 ** 2)) / (math.sqrt(v / (1 - 0.999 ** 2)) + 1e-8)
    p, state, _ = optim.step(p, {"w": np.array(-0.2)}, state, config)
    assert p2 == pytest.approx(0.780866299251, rel=1e-11)
    assert float(p["w"]) == pytest.approx(p2, rel=1e-14)
    assert float(state["m/w"]) == pytest.approx(0.016, rel=1e-12)
    assert float(state["v/w"]) == pytest.approx(0.00019984, rel=1e-12)


# (b) against torch.optim -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_matches_torch(name):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    config = OptimConfig(name=name, lr=0.05, weight_decay=0.1, momentum=0.9 if name == "sgd" else 0.0,
                         rec_lr_factor=0.5, clip_norm=2.0, schedule="cosine", warmup_steps=2, total_steps=6,
                         min_lr_ratio=0.1)
    params = _params(rng)
    steps = [_grads(rng, params, scale=s) for s in (0.3, 1.5, 0.2, 1.0, 0.5, 0.8, 0.4)]

    tparams = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    rec = [tparams[k] for k in tparams if optim.is_recurrent(k)]
    other = [tparams[k] for k in tparams if not optim.is_recurrent(k)]
    groups = [{"params": other, "weight_decay": config.weight_decay, "factor": 1.0},
              {"params": rec, "weight_decay": 0.0, "factor": config.rec_lr_factor}]
    if name == "sgd":
        topt = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    else:
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        topt = cls(groups, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps)

    state = optim.init_state(params, config)
    n_clipped = 0
    for s, grads in enumerate(steps):
        params, state, info = optim.step(params, grads, state, config)
        n_clipped += info["clipped"]
        # torch side: the same clipping (exact c/‖g‖, see the NOTE in refimpl/optim.py) and the scheduled group rates
        norm = math.sqrt(sum(float(np.sum(grads[k] ** 2)) for k in tparams))
        scale = config.clip_norm / norm if norm > config.clip_norm else 1.0
        for k, t in tparams.items():
            t.grad = torch.tensor(grads[k] * scale, dtype=torch.float64)
        for group in topt.param_groups:
            group["lr"] = optim.lr_at(s, config) * group["factor"]
        topt.step()
        assert info["grad_norm"] == pytest.approx(norm, rel=1e-14)
        for k, t in tparams.items():
            np.testing.assert_allclose(params[k], t.detach().numpy(), rtol=1e-12, atol=1e-14, err_msg=f"{k} step {s}")
    assert 0 < n_clipped < len(steps)   # the run exercised both the clipped and the unclipped path


# (c) clipping ----------------------------------------------------------------------------------------------------------

def test_clip_by_global_norm(rng):
    params = _params(rng)
    grads = _grads(rng, params)
    names = list(params)
    norm = optim.global_norm(grads, names)
    assert norm == pytest.approx(math.sqrt(sum(np.sum(grads[k] ** 2) for k in names)), rel=1e-14)

    clipped, before = optim.clip_by_global_norm(grads, names, norm / 3)
    assert before == norm
    assert set(clipped) == set(names)                                   # extra keys such as "x" are left out
    assert optim.global_norm(clipped, names) == pytest.approx(norm / 3, rel=1e-14)
    for k in names:                                                     # direction preserved: one common factor 1/3
        np.testing.assert_allclose(clipped[k], grads[k] / 3, rtol=1e-14)

    same, before = optim.clip_by_global_norm(grads, names, 2 * norm)    # below the threshold: untouched
    assert before == norm
    for k in names:
        np.testing.assert_array_equal(same[k], grads[k])


def test_step_reports_clipping(rng):
    params = _params(rng)
    grads = _grads(rng, params)
    norm = optim.global_norm(grads, list(params))
    base = dict(name="sgd", lr=1.0, weight_decay=0.0, schedule="constant")
    clipped, _, info = optim.step(params, grads, optim.init_state(params, OptimConfig(**base, clip_norm=norm / 2)),
                                  OptimConfig(**base, clip_norm=norm / 2))
    assert info["clipped"] and info["grad_norm"] == pytest.approx(norm, rel=1e-14)
    moved = {k: params[k] - clipped[k] for k in params if not optim.is_recurrent(k)}
    assert optim.global_norm(moved, list(moved)) == pytest.approx(
        0.5 * optim.global_norm(grads, list(moved)), rel=1e-12)
    for clip_norm in (None, 0, 2 * norm):
        config = OptimConfig(**base, clip_norm=clip_norm)
        new, _, info = optim.step(params, grads, optim.init_state(params, config), config)
        assert not info["clipped"]
        np.testing.assert_allclose(new["readout.weight"], params["readout.weight"] - grads["readout.weight"],
                                   rtol=1e-14)


# (d) schedule ----------------------------------------------------------------------------------------------------------

def test_schedule_warmup_and_cosine():
    config = OptimConfig(lr=1.0, schedule="cosine", warmup_steps=4, total_steps=12, min_lr_ratio=0.1)
    assert [optim.lr_at(s, config) for s in range(5)] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0], abs=1e-15)
    assert optim.lr_at(8, config) == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-14)   # midpoint of the decay: cos(π/2) = 0
    assert optim.lr_at(12, config) == pytest.approx(0.1, rel=1e-14)               # end: min_lr_ratio·lr
    assert optim.lr_at(40, config) == pytest.approx(0.1, rel=1e-14)               # stays there
    lrs = [optim.lr_at(s, config) for s in range(4, 13)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))                              # strictly decreasing

    constant = OptimConfig(lr=0.3, schedule="constant", warmup_steps=3)
    assert [optim.lr_at(s, constant) for s in range(6)] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.3, 0.3], abs=1e-15)
    no_warmup = OptimConfig(lr=0.3, schedule="cosine", total_steps=10)
    assert optim.lr_at(0, no_warmup) == 0.3 and optim.lr_at(10, no_warmup) == pytest.approx(0.0, abs=1e-15)


def test_step_uses_the_scheduled_rate(rng):
    config = OptimConfig(name="sgd", lr=1.0, weight_decay=0.0, clip_norm=None, schedule="constant", warmup_steps=2)
    params = _params(rng)
    grads = _grads(rng, params)
    state = optim.init_state(params, config)
    p1, state, info = optim.step(params, grads, state, config)
    assert info["lr"] == 0.0 and np.array_equal(p1["readout.weight"], params["readout.weight"])
    p2, state, info = optim.step(p1, grads, state, config)
    assert info["lr"] == 0.5
    np.testing.assert_allclose(p2["readout.weight"], params["readout.weight"] - 0.5 * grads["readout.weight"])


# (e) parameter groups --------------------------------------------------------------------------------------------------

def test_is_recurrent():
    for name in ("layers.0.cell.nu_log", "layers.0.cell.theta_log", "layers.0.cell.gamma_log", "layers.0.cell.B_re",
                 "layers.0.cell.B_im", "layers.3.cell.weight_ih", "layers.1.cell.weight_hh", "layers.0.cell.bias_ih",
                 "layers.0.cell.bias_hh", "cell.weight_hh"):
        assert optim.is_recurrent(name), name
    for name in ("layers.0.C_re", "layers.0.C_im", "layers.0.D", "layers.0.norm.weight", "encoder.weight",
                 "readout.weight", "readout.bias", "weight_hh", "layers.0.cellular.weight", "layers.0.cell"):
        assert not optim.is_recurrent(name), name


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_zero_gradients_only_decay_moves_ordinary_params(name, rng):
    config = OptimConfig(name=name, lr=0.1, weight_decay=0.2, rec_lr_factor=0.5, clip_norm=None, schedule="constant")
    params = _params(rng)
    zeros = {k: np.zeros_like(v) for k, v in params.items()}
    new, _, _ = optim.step(params, zeros, optim.init_state(params, config), config)
    for k, p in params.items():
        if optim.is_recurrent(k):
            np.testing.assert_array_equal(new[k], p)                      # no decay on the recurrence
        elif name == "adamw":
            np.testing.assert_allclose(new[k], p * (1 - 0.1 * 0.2), rtol=1e-14)
        else:
            assert np.all(np.abs(new[k]) < np.abs(p))                     # the L2 term shrinks them
            if name == "sgd":
                np.testing.assert_allclose(new[k], p - 0.1 * 0.2 * p, rtol=1e-14)


def test_recurrent_learning_rate_factor(rng):
    config = OptimConfig(name="sgd", lr=0.1, weight_decay=0.0, rec_lr_factor=0.25, clip_norm=None,
                         schedule="constant")
    params = _params(rng)
    grads = _grads(rng, params)
    new, _, _ = optim.step(params, grads, optim.init_state(params, config), config)
    for k, p in params.items():
        lr = 0.1 * 0.25 if optim.is_recurrent(k) else 0.1
        np.testing.assert_allclose(new[k], p - lr * grads[k], rtol=1e-14)
    # Adam's first step moves every entry by lr_i·sign(g) (up to ε): the factor shows up directly
    config = OptimConfig(name="adam", lr=0.1, weight_decay=0.0, rec_lr_factor=0.25, clip_norm=None,
                         schedule="constant")
    new, _, _ = optim.step(params, grads, optim.init_state(params, config), config)
    for k, p in params.items():
        lr = 0.1 * 0.25 if optim.is_recurrent(k) else 0.1
        np.testing.assert_allclose(p - new[k], lr * np.sign(grads[k]), rtol=1e-6)


# (f) purity and dtypes -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_inputs_unchanged(name, rng):
    config = OptimConfig(name=name, momentum=0.9 if name == "sgd" else 0.0, clip_norm=0.5, rec_lr_factor=0.5)
    params = _params(rng)
    grads = _grads(rng, params, scale=3.0)
    state = optim.init_state(params, config)
    _, state, _ = optim.step(params, grads, state, config)             # non-zero moments
    before = copy.deepcopy((params, grads, state))
    new_params, new_state, _ = optim.step(params, grads, state, config)
    optim.clip_by_global_norm(grads, list(params), 0.1)
    for original, now in zip(before, (params, grads, state)):
        assert original.keys() == now.keys()
        for k in original:
            np.testing.assert_array_equal(original[k], now[k])
    assert all(new_params[k] is not params[k] for k in params)
    assert all(new_state[k] is not state[k] for k in state)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_float32_stays_float32(name, rng):
    config = OptimConfig(name=name, momentum=0.9 if name == "sgd" else 0.0)
    params = _params(rng, np.float32)
    state = optim.init_state(params, config)
    for _ in range(2):
        params, state, _ = optim.step(params, _grads(rng, params), state, config)   # float64 gradients
    assert all(p.dtype == np.float32 for p in params.values())
    assert all(v.dtype == np.float32 for k, v in state.items() if k != "step")
    assert state["step"].dtype == np.int64 and state["step"].shape == ()


# (g) checkpoints -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_state_round_trips_through_npz(name, rng, tmp_path):
    config = OptimConfig(name=name, momentum=0.9 if name == "sgd" else 0.0, warmup_steps=1, total_steps=8,
                         rec_lr_factor=0.5)
    params = _params(rng)
    grads = [_grads(rng, params) for _ in range(4)]
    state = optim.init_state(params, config)
    expected_keys = {"step"} | {f"{kind}/{k}" for k in params
                                for kind in (("momentum",) if name == "sgd" else ("m", "v"))}
    assert set(state) == expected_keys
    for g in grads[:2]:
        params, state, _ = optim.step(params, g, state, config)
    np.savez(tmp_path / "opt.npz", **state)
    with np.load(tmp_path / "opt.npz") as f:
        loaded = {k: f[k] for k in f.files}
    assert loaded.keys() == state.keys() and int(loaded["step"]) == 2

    params_a, state_a, params_b, state_b = params, state, params, loaded
    for g in grads[2:]:
        params_a, state_a, _ = optim.step(params_a, g, state_a, config)
        params_b, state_b, _ = optim.step(params_b, g, state_b, config)
    for k in params:
        np.testing.assert_array_equal(params_a[k], params_b[k])
    for k in state:
        np.testing.assert_array_equal(state_a[k], state_b[k])


# (h) errors ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error", [
    (dict(name="adamx"), UnknownNameError),
    (dict(schedule="linear"), UnknownNameError),
    (dict(lr=0.0), UnsupportedError),
    (dict(lr=-1e-3), UnsupportedError),
    (dict(lr=float("nan")), UnsupportedError),
    (dict(weight_decay=-0.1), UnsupportedError),
    (dict(beta1=1.0), UnsupportedError),
    (dict(beta2=-0.1), UnsupportedError),
    (dict(eps=0.0), UnsupportedError),
    (dict(momentum=1.0), UnsupportedError),
    (dict(rec_lr_factor=-0.5), UnsupportedError),
    (dict(clip_norm=-1.0), UnsupportedError),
    (dict(warmup_steps=-1), UnsupportedError),
    (dict(warmup_steps=1.5), UnsupportedError),
    (dict(total_steps=0), UnsupportedError),
    (dict(min_lr_ratio=1.5), UnsupportedError),
    (dict(schedule="cosine", warmup_steps=10, total_steps=10), UnsupportedError),
])
def test_bad_configs_raise(kwargs, error):
    with pytest.raises(error) as info:
        OptimConfig(**kwargs)
    message = str(info.value)
    assert "allowed" in message or "must" in message


def test_unknown_name_lists_the_allowed():
    with pytest.raises(UnknownNameError, match="allowed: adam, adamw, sgd \\(did you mean 'adam'\\?\\)"):
        OptimConfig(name="adamx")


def test_step_errors(rng):
    config = OptimConfig()
    params = _params(rng)
    grads = _grads(rng, params)
    state = optim.init_state(params, config)
    with pytest.raises(UnsupportedError, match="no gradient"):
        optim.step(params, {k: v for k, v in grads.items() if k != "readout.weight"}, state, config)
    with pytest.raises(ShapeError):
        optim.step(params, dict(grads, **{"readout.weight": np.zeros(3)}), state, config)
    with pytest.raises(NumericalError):
        optim.step(params, dict(grads, **{"readout.weight": np.full((2, 2), np.nan)}), state, config)
    with pytest.raises(UnsupportedError, match="init_state"):
        optim.step(params, grads, optim.init_state(params, OptimConfig(name="sgd", momentum=0.9)), config)
