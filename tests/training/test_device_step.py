"""The whole training step in a backend's arrays (refimpl/training/device.py) against the NumPy reference.

Generated over the model options as the kernel parity tests are over the kernels: every cell, with and without the
encoder, pre-norm, the MLP / GLU blocks, residuals, each pooling and each loss. On each backend that runs here
(numba; mlx, on its CPU stream for float64 — not the lru, MLX has no complex128; cupy only on a GPU, and through the
CPU emulation of its CUDA sources below) the step's gradients and the parameters after two optimizer steps must equal
the reference's to DESIGN.md §7's backend tolerance. Then: the host↔device crossings of a step are zero between
logging points, and a non-finite step is gated and reported, never written into the weights.
"""

import numpy as np
import pytest

from refimpl import optim
from refimpl.errors import NumericalError
from refimpl.nn.losses import loss_forward
from refimpl.nn.model import backward, bptt, forward, make_model
from refimpl.numerics import TOLERANCES, rel_error
from refimpl.registry import load_backend
from refimpl.training.device import DeviceStep

#: (id, make_model options, loss): each model option and each loss at least once, several together.
MODELS = [
    ("plain-mse", dict(), "mse"),
    ("norm-mlp", dict(norm="layer", ffn="mlp"), "mse"),
    ("copy-like", dict(encoder=True, d_model=6, norm="layer", ffn="glu", residual=True), "bce"),
    ("last-ce", dict(pooling="last", ffn="glu"), "ce"),
    ("mean-ce", dict(pooling="mean", norm="layer", encoder=True, d_model=6, residual=True), "ce"),
    ("cummean-ce", dict(pooling="cumulative_mean", ffn="mlp", residual=True, encoder=True, d_model=6), "ce"),
]
CELLS = ["rnn", "gru", "lstm", "lru"]
BACKENDS = ["numba", "mlx", "cupy"]
T, B, I, H, O = 7, 3, 4, 6, 3


def _backend_or_skip(backend: str, cell: str, dtype: str):
    b = load_backend(backend)
    if not b.available:
        pytest.skip(f"backend {backend}: {b.reason}")
    why = b.unsupported_dtype(f"{cell}.forward", dtype)
    if why:
        pytest.skip(f"backend {backend}, {cell} in {dtype}: {why}")
    return b


def _case(cell, options, loss, dtype, seed=0):
    """A model, its parameters and a batch (x, y) with the loss's targets."""
    model, params = make_model(cell, I, H, O, layers=2, seed=seed, dtype=dtype, **options)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    shape = model.output_shape(T, B)
    if loss == "ce":
        y = rng.integers(0, O, shape[:-1])
    elif loss == "bce":
        y = (rng.random(shape) < 0.5).astype(dtype)
    else:
        y = rng.standard_normal(shape).astype(dtype)
    return model, params, x, y


def _tolerance(dtype):
    return TOLERANCES["backend_vs_reference"][dtype]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("name,options,loss", MODELS, ids=[m[0] for m in MODELS])
def test_whole_step_equals_the_reference(name, options, loss, cell, backend, dtype):
    _backend_or_skip(backend, cell, dtype)
    model, params, x, y = _case(cell, options, loss, dtype)
    _, want = bptt(model, params, x, y, loss=loss)                              # the reference: NumPy end to end
    opt = optim.OptimConfig(name="adamw", lr=1e-2, total_steps=4, clip_norm=0.5)
    step = DeviceStep(model, opt, backend, loss)
    p, s = step.init(params)
    xd, yd = step.to_device((x, y))
    # the gradients, in the backend's arrays
    out, cache = forward(model, p, xd, step.kernels)
    _, dout = loss_forward(loss, out, yd)
    got = step.to_host(backward(model, p, dout, cache, step.kernels))
    tol = _tolerance(dtype)
    for k in want:
        assert rel_error(np.asarray(got[k]), want[k]) <= tol, (k, rel_error(np.asarray(got[k]), want[k]))
    # two whole steps against two reference steps (bptt + optim.step on NumPy)
    ref_p, ref_s = params, optim.init_state(params, opt)
    for _ in range(2):
        p, s, value, finite = step(p, s, xd, yd)
        ref_value, g = bptt(model, ref_p, x, y, loss=loss)
        ref_p, ref_s, _ = optim.step(ref_p, g, ref_s, opt)
    assert rel_error(step.report(value, finite), ref_value) <= tol           # the loss at the second step
    host = step.to_host(p)
    for k in ref_p:
        assert rel_error(np.asarray(host[k]), ref_p[k]) <= 10 * tol, (k, rel_error(np.asarray(host[k]), ref_p[k]))
    assert int(s["step"]) == 2


def test_a_step_on_mlx_does_not_cross_to_the_host():
    """Parameters, data and optimizer state moved once; then steps cross nothing; report crosses twice (loss, flag)."""
    b = _backend_or_skip("mlx", "gru", "float32")
    model, params, x, y = _case("gru", MODELS[2][1], "bce", "float32")
    step = DeviceStep(model, optim.OptimConfig(total_steps=5), "mlx", "bce")
    p, s = step.init(params)
    xd, yd = step.to_device((x, y))
    moved = sum(1 for _ in params) + sum(1 for k in s if k != "step") + 2
    assert b.crossings["to_backend"] >= moved
    assert_three_steps_stay_on_the_device(b, step, p, s, xd, yd)


def assert_three_steps_stay_on_the_device(b, step, p, s, xd, yd):
    """Three steps on mlx cross nothing, report crosses twice (the loss and the flag), the parameters are mx.arrays."""
    import mlx.core as mx
    b.reset_crossings()
    for _ in range(3):
        p, s, value, finite = step(p, s, xd, yd)
    assert b.crossings == {"to_backend": 0, "to_numpy": 0}
    step.report(value, finite)
    assert b.crossings == {"to_backend": 0, "to_numpy": 2}
    assert all(isinstance(v, mx.array) for v in p.values())


def test_a_non_finite_step_is_gated_and_reported():
    """A NaN in the batch on mlx: the update is skipped on the device (the parameters stay as they were) and report
    raises NumericalError naming the fixes."""
    _backend_or_skip("mlx", "gru", "float32")
    model, params, x, y = _case("gru", {}, "mse", "float32")
    x[2, 1, 0] = np.nan
    step = DeviceStep(model, optim.OptimConfig(total_steps=5), "mlx", "mse")
    p0, s0 = step.init(params)
    xd, yd = step.to_device((x, y))
    p, s, value, finite = step(p0, s0, xd, yd)
    host = step.to_host(p)
    assert all(np.array_equal(np.asarray(host[k]), params[k]) for k in params)
    with pytest.raises(NumericalError, match=r"was not finite.*update was\s+skipped"):
        step.report(value, finite)


def test_numpy_step_is_the_reference_and_refuses_a_non_finite_norm():
    model, params, x, y = _case("lru", {}, "mse", "float64")
    step = DeviceStep(model, optim.OptimConfig(total_steps=3), "numpy", "mse")
    p, s = step.init(params)
    p1, s1, value, finite = step(p, s, x, y)
    _, g = bptt(model, params, x, y, loss="mse")
    want, _, _ = optim.step(params, g, optim.init_state(params, step.opt), step.opt)
    assert all(np.array_equal(p1[k], want[k]) for k in want)
    x[0, 0, 0] = np.inf
    with np.errstate(all="ignore"), pytest.raises(NumericalError):
        step(p, s, x, y)


@pytest.mark.parametrize("cell", CELLS)
def test_cupy_step_through_the_cpu_emulation(cell, tmp_path, monkeypatch):
    """CuPy's cell kernels (their CUDA thread bodies compiled for the host, backends/cupy/runtime.py EmulatedDevice)
    inside the whole step, whose array code runs in the emulation's NumPy arrays: equal to the reference, and no call
    of the backend's host↔device conversions inside a step."""
    import backends.cupy as cupy_backend
    from backends.cupy.runtime import EmulatedDevice, find_compiler
    from refimpl.registry import CellKernels
    if find_compiler() is None:
        pytest.skip("no C++ compiler: the CPU emulation of the CUDA kernels cannot be built")
    emulated = EmulatedDevice(build_dir=str(tmp_path))
    crossings = []
    monkeypatch.setattr(cupy_backend, "to_numpy", lambda a: crossings.append("to_numpy") or np.asarray(a))
    monkeypatch.setattr(cupy_backend, "to_backend", lambda a: crossings.append("to_backend") or a)
    model, params, x, y = _case(cell, MODELS[2][1], "bce", "float64")
    opt = optim.OptimConfig(total_steps=3)
    step = DeviceStep(model, opt, "numpy", "bce")
    impl, calls = cupy_backend.IMPLEMENTATIONS, []

    def counted(op):
        def run(*args, **kwargs):
            calls.append(op)
            return impl[f"{cell}.{op}"](emulated, *args, **kwargs)
        return run
    step.kernels = CellKernels(counted("forward"), counted("backward"), "cupy", True)
    p, s = step.init(params)
    ref_p, ref_s = params, optim.init_state(params, opt)
    for _ in range(2):
        p, s, value, finite = step(p, s, x, y)
        _, g = bptt(model, ref_p, x, y, loss="bce")
        ref_p, ref_s, _ = optim.step(ref_p, g, ref_s, opt)
    assert crossings == []
    assert calls.count("forward") == calls.count("backward") == 2 * model.layers        # the emulated kernels ran
    for k in ref_p:
        assert rel_error(p[k], ref_p[k]) <= 10 * _tolerance("float64"), k


# ------------------------------------------------------------------------------------------ the training loop

RUN = dict(task="copy-small", cell="gru", hidden=6, layers=2, norm="layer", ffn="glu", residual=True, encoder=True,
           d_model=6, batch_size=8, steps=12, log_every=4, lr=1e-2, algorithm="bptt", dtype="float32",
           checkpoint_every=4)


def _train_metrics(path):
    from refimpl.runs import read_metrics
    return [(r["split"], r["step"], r["loss"]) for r in read_metrics(path / "metrics.jsonl")]


def test_a_bptt_run_on_mlx_trains_on_the_device_and_matches_numpy(tmp_path, monkeypatch):
    """`train` on mlx takes the device path (DeviceStep every step, the parameters on the device) and logs the
    reference run's losses (float32, ≤ 1e-4 relative)."""
    from refimpl.training import device as device_mod
    from refimpl.training.config import TrainConfig
    from refimpl.training.loop import train
    _backend_or_skip("mlx", "gru", "float32")
    calls, real = [], device_mod.DeviceStep.__call__
    monkeypatch.setattr(device_mod.DeviceStep, "__call__", lambda self, *a: calls.append(1) or real(self, *a))
    train(TrainConfig(**RUN), tmp_path / "numpy")
    assert calls == []                                                    # numpy: the reference loop
    train(TrainConfig(**RUN, backend="mlx"), tmp_path / "mlx")
    assert len(calls) == RUN["steps"]
    ref, got = _train_metrics(tmp_path / "numpy"), _train_metrics(tmp_path / "mlx")
    assert [r[:2] for r in got] == [r[:2] for r in ref]
    assert all(rel_error(g[2], r[2]) <= 1e-4 for g, r in zip(got, ref)), (got, ref)


def test_a_killed_run_on_mlx_resumes_to_the_same_metrics(tmp_path, monkeypatch):
    """Killed after its step-8 checkpoint, resumed from it (parameters and optimizer state back to the device): the
    metrics of an uninterrupted run."""
    from refimpl.training import device as device_mod
    from refimpl.training.config import TrainConfig
    from refimpl.training.loop import train
    _backend_or_skip("mlx", "gru", "float32")
    cfg = TrainConfig(**RUN, backend="mlx")
    train(cfg, tmp_path / "whole")
    calls, real = [], device_mod.DeviceStep.__call__

    def dies(self, *a):
        calls.append(1)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return real(self, *a)
    monkeypatch.setattr(device_mod.DeviceStep, "__call__", dies)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run")
    monkeypatch.setattr(device_mod.DeviceStep, "__call__", real)
    train(cfg, tmp_path / "run", resume=True)
    assert _train_metrics(tmp_path / "run") == _train_metrics(tmp_path / "whole")


def test_a_non_finite_step_between_logged_steps_stops_the_run(tmp_path, monkeypatch):
    """On mlx a NaN batch at step 2 of a run logged every 4 steps: its update is skipped on the device, and the run
    stops with TrainingDiverged at the next report (step 4), although steps 3 and 4 are finite themselves."""
    from refimpl.runs import TrainingDiverged, load_checkpoint
    from refimpl.training import device as device_mod
    from refimpl.training.config import TrainConfig
    from refimpl.training.loop import train
    _backend_or_skip("mlx", "gru", "float32")
    calls, real = [], device_mod.DeviceStep.__call__

    def nan_at_step_2(self, params, state, x, y, mask=None):
        calls.append(1)
        return real(self, params, state, x * float("nan") if len(calls) == 2 else x, y, mask)
    monkeypatch.setattr(device_mod.DeviceStep, "__call__", nan_at_step_2)
    with pytest.raises(TrainingDiverged, match=r"step 4.*was not finite"):
        train(TrainConfig(**{**RUN, "checkpoint_every": None}, backend="mlx"), tmp_path / "run")
    assert len(calls) == 4
    assert not (tmp_path / "run" / "checkpoint.npz").exists() or load_checkpoint(tmp_path / "run" /
                                                                                    "checkpoint.npz").step < 4


def test_a_device_step_refuses_what_it_cannot_run():
    """An unknown loss, and a backend that cannot run the cell in the model's dtype, are refused at construction with
    what is allowed."""
    from refimpl.errors import UnknownNameError, UnsupportedError
    model, _ = make_model("gru", 2, 3, 2)
    with pytest.raises(UnknownNameError, match="huber"):
        DeviceStep(model, optim.OptimConfig(), "numpy", "huber")
    with pytest.raises(UnknownNameError, match="backend"):
        DeviceStep(model, optim.OptimConfig(), "tpu", "mse")
    if load_backend("mlx").available:
        lru, _ = make_model("lru", 2, 3, 2)                                       # float64: complex128 states
        with pytest.raises(UnsupportedError, match="cannot run the lru cell in float64.*float32"):
            DeviceStep(lru, optim.OptimConfig(), "mlx", "mse")
