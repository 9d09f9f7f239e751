"""The online rules' whole training step in a backend's arrays (refimpl/training/device.py, algorithm=<rule>) against
the NumPy reference (refimpl.model_grads by the same rule, then optim.step on NumPy).

Generated over the model options as test_device_step.py is for BPTT: every RTRL-family rule (and tbptt, which runs the
same chunked driver) with every cell, the model options taken in turn (encoder, pre-norm, MLP / GLU, residual, the
poolings none / last / cumulative_mean, each loss), on mlx in float32 and (on its CPU stream; not the lru, MLX has no
complex128) float64, and on cupy through the CPU emulation of its CUDA sources. A stream of T = 7 steps in chunks of 3
(3 + 3 + 1: the carries cross two chunk boundaries, and the last chunk builds none). Then: no host crossing inside a
step (MLX's counter; and on array_api_strict arrays, the standard alone, every host read refused), the training
loop's device path for a rule, and the refusals of what the device path does not run.
"""

import numpy as np
import pytest

from refimpl import optim
from refimpl.api import model_grads
from refimpl.errors import UnknownNameError, UnsupportedError
from refimpl.nn.model import make_model
from refimpl.numerics import rel_error
from refimpl.registry import load_backend
from refimpl.training.device import DeviceStep

from .test_device_step import (MODELS, RUN, _backend_or_skip, _case, _tolerance, _train_metrics,
                               assert_three_steps_stay_on_the_device)

#: The models a rule can train (pooling 'mean' is not memoryless: refused, test below).
RULE_MODELS = [m for m in MODELS if m[1].get("pooling") != "mean"]
CELLS = ["rnn", "gru", "lstm", "lru"]
RULES = ["online", "snap1", "truncated", "spatial"]
CHUNK = 3

#: (rule, cell, model): every rule with every cell, the models in turn (each model option with each rule and several
#: cells), and cec (the lstm's rule).
CASES = [(rule, cell, RULE_MODELS[(i + j) % len(RULE_MODELS)]) for i, rule in enumerate(RULES)
         for j, cell in enumerate(CELLS)] + [("cec", "lstm", RULE_MODELS[2])]

#: tbptt (BPTT inside windows of 3 steps, the state carried across): the same driver with the cell's BPTT kernel.
CASES += [("tbptt", "gru", RULE_MODELS[3]), ("tbptt", "lru", RULE_MODELS[4])]

#: Each case in float32, and in float64 (on MLX's CPU stream) every third one by default (each RTRL-family rule at least
#: once), the rest of float64 under `slow` (each MLX kernel compiles once per shape and dtype: the time is in that).
DTYPE_CASES = [pytest.param(*case, "float32", id=f"{case[0]}-{case[1]}-{case[2][0]}-float32") for case in CASES] + [
    pytest.param(*case, "float64", id=f"{case[0]}-{case[1]}-{case[2][0]}-float64",
                 marks=() if k % 3 == 0 or case[0] == "cec" else pytest.mark.slow)
    for k, case in enumerate(c for c in CASES if c[1] != "lru")]


def _reference_steps(model, params, x, y, loss, rule, opt, n, reference: dict):
    """n reference steps: model_grads by the rule on NumPy (its default chunk: the step loop; options `reference`),
    optim.step. Returns (first grads, last loss, params)."""
    p, s, first = params, optim.init_state(params, opt), None
    for _ in range(n):
        value, g = model_grads(model, p, x, y, loss=loss, algorithm=rule, **reference)
        first = g if first is None else first
        p, s, _ = optim.step(p, g, s, opt)
    return first, value, p


def _assert_step_matches(step, model, params, x, y, loss, rule, tol, reference=None):
    """The device step's gradients, and its loss and parameters after two steps, equal the reference's."""
    opt = step.opt
    want, want_value, want_p = _reference_steps(model, params, x, y, loss, rule, opt, 2, reference or {})
    p, s = step.init(params)
    xd, yd = step.to_device((x, y))
    _, g = step.grads(p, xd, yd)
    got = step.to_host(g)
    assert set(got) == set(want)
    for k in want:
        assert rel_error(np.asarray(got[k]), want[k]) <= tol, (k, rel_error(np.asarray(got[k]), want[k]))
    for _ in range(2):
        p, s, value, finite = step(p, s, xd, yd)
    assert rel_error(step.report(value, finite), want_value) <= tol
    host = step.to_host(p)
    for k in want_p:
        assert rel_error(np.asarray(host[k]), want_p[k]) <= 10 * tol, (k, rel_error(np.asarray(host[k]), want_p[k]))


@pytest.mark.parametrize("rule,cell,model_case,dtype", DTYPE_CASES)
def test_a_rule_step_on_mlx_equals_the_reference(rule, cell, model_case, dtype):
    _backend_or_skip("mlx", cell, dtype)
    _, options, loss = model_case
    model, params, x, y = _case(cell, options, loss, dtype)
    options, reference = ({"window": CHUNK}, {"window": CHUNK}) if rule == "tbptt" else ({"chunk": CHUNK}, {})
    step = DeviceStep(model, optim.OptimConfig(name="adamw", lr=1e-2, total_steps=4, clip_norm=0.5), "mlx", loss,
                      algorithm=rule, **options)
    _assert_step_matches(step, model, params, x, y, loss, rule, _tolerance(dtype), reference)


def test_a_rule_step_on_numpy_is_the_reference():
    """On numpy the device step's gradient line is model_grads itself (the step loop, C = 1): equal bit for bit."""
    model, params, x, y = _case("gru", RULE_MODELS[2][1], "bce", "float64")
    step = DeviceStep(model, optim.OptimConfig(total_steps=3), "numpy", "bce", algorithm="snap1")
    p, s = step.init(params)
    p1, _, value, _ = step(p, s, x, y)
    want_value, g = model_grads(model, params, x, y, loss="bce", algorithm="snap1")
    want, _, _ = optim.step(params, g, optim.init_state(params, step.opt), step.opt)
    assert value == want_value
    assert all(np.array_equal(p1[k], want[k]) for k in want)


@pytest.mark.parametrize("rule", ["online", "tbptt"])
def test_a_rule_step_on_mlx_does_not_cross_to_the_host(rule):
    """Three steps of an online rule (chunks of 3 over T = 7), or of tbptt (windows of 3), cross nothing; the loss,
    the gradients and the parameters are mx.arrays; report crosses twice (loss, flag)."""
    import mlx.core as mx
    b = _backend_or_skip("mlx", "lru", "float32")
    model, params, x, y = _case("lru", RULE_MODELS[2][1], "bce", "float32")
    step = DeviceStep(model, optim.OptimConfig(total_steps=5), "mlx", "bce", algorithm=rule,
                      **({"window": CHUNK} if rule == "tbptt" else {"chunk": CHUNK}))
    p, s = step.init(params)
    xd, yd = step.to_device((x, y))
    b.reset_crossings()
    value, g = step.grads(p, xd, yd)
    assert all(isinstance(v, mx.array) for v in g.values()) and isinstance(value, mx.array)
    assert b.crossings == {"to_backend": 0, "to_numpy": 0}
    assert_three_steps_stay_on_the_device(b, step, p, s, xd, yd)


@pytest.mark.parametrize("cell,rule", [("lru", "online"), pytest.param("gru", "snap1", marks=pytest.mark.slow),
                                       pytest.param("lstm", "cec", marks=pytest.mark.slow)])
def test_a_rule_step_through_the_cupy_emulation(cell, rule, tmp_path, monkeypatch):
    """CuPy's cell and rule kernels (their CUDA thread bodies compiled for the host, backends/cupy/runtime.py
    EmulatedDevice) as the device step's raw kernels, in float64: equal to the reference, the rule's carried sweep
    called once per layer and chunk, and no call of the backend's host↔device conversions inside a step."""
    import backends.cupy as cupy_backend
    from backends.cupy.runtime import EmulatedDevice, find_compiler
    from refimpl.algorithms import chunked
    from refimpl.registry import CellKernels
    if find_compiler() is None:
        pytest.skip("no C++ compiler: the CPU emulation of the CUDA kernels cannot be built")
    emulated = EmulatedDevice(build_dir=str(tmp_path))
    crossings, calls, impl = [], [], cupy_backend.IMPLEMENTATIONS
    monkeypatch.setattr(cupy_backend, "to_numpy", lambda a: crossings.append("to_numpy") or np.asarray(a))
    monkeypatch.setattr(cupy_backend, "to_backend", lambda a: crossings.append("to_backend") or a)

    def emulated_kernel(name, backend="numpy"):
        assert backend == "cupy", backend

        def run(*args, **kwargs):
            calls.append(name)
            return impl[name](emulated, *args, **kwargs)
        return run
    monkeypatch.setattr(chunked, "get_kernel", emulated_kernel)
    model, params, x, y = _case(cell, RULE_MODELS[2][1], "bce", "float64")
    step = DeviceStep(model, optim.OptimConfig(total_steps=3), "numpy", "bce", algorithm=rule, chunk=CHUNK)
    step.kernels = CellKernels(emulated_kernel(f"{cell}.forward", "cupy"), emulated_kernel(f"{cell}.backward", "cupy"),
                               "cupy", True)
    _assert_step_matches(step, model, params, x, y, "bce", rule, _tolerance("float64"))
    assert crossings == []
    sweep = "rtrl" if (rule, cell) == ("online", "lru") else rule
    assert calls.count(f"{cell}.{sweep}") == calls.count(f"{cell}.forward") == 3 * 3 * model.layers  # 3 runs × 3 chunks


def test_the_device_path_refuses_what_it_does_not_run():
    """fptt, the projected rules, whole-stack rtrl, pooling 'mean' and cec on a cell without a cell state are
    refused at construction, naming what to do instead; per-layer rtrl (one layer, no encoder, no norm) is accepted."""
    gru, _ = make_model("gru", 2, 3, 2, layers=2)
    opt = optim.OptimConfig()
    for algorithm in ("fptt", "fptt1", "dfa", "readout"):
        with pytest.raises(UnsupportedError, match=rf"{algorithm!r} has no whole step.*model_grads"):
            DeviceStep(gru, opt, "numpy", "mse", algorithm=algorithm)
    with pytest.raises(UnknownNameError, match="algorithm"):
        DeviceStep(gru, opt, "numpy", "mse", algorithm="rtlr")
    with pytest.raises(UnsupportedError, match="whole-stack rtrl.*'online'"):
        DeviceStep(gru, opt, "numpy", "mse", algorithm="rtrl")
    with pytest.raises(UnsupportedError, match="cec.*snap1 or truncated"):
        DeviceStep(gru, opt, "numpy", "mse", algorithm="cec")
    mean, _ = make_model("gru", 2, 3, 2, pooling="mean")
    for algorithm in ("online", "tbptt"):
        with pytest.raises(UnsupportedError, match="pooling 'mean'.*cumulative_mean"):
            DeviceStep(mean, opt, "numpy", "mse", algorithm=algorithm)
    with pytest.raises(UnknownNameError, match="window"):
        DeviceStep(gru, opt, "numpy", "mse", algorithm="online", window=3)
    one, _ = make_model("gru", 2, 3, 2, layers=1)
    assert DeviceStep(one, opt, "numpy", "mse", algorithm="rtrl").algorithm == "rtrl"


def test_an_online_run_on_mlx_trains_on_the_device_and_matches_numpy(tmp_path, monkeypatch):
    """`train` with algorithm online on mlx takes the device path (DeviceStep every step, --chunk passed on) and logs
    the NumPy reference run's losses (float32, ≤ 1e-4 relative)."""
    from refimpl.training import device as device_mod
    from refimpl.training.config import TrainConfig
    from refimpl.training.loop import train
    _backend_or_skip("mlx", "gru", "float32")
    calls, real = [], device_mod.DeviceStep.__call__
    monkeypatch.setattr(device_mod.DeviceStep, "__call__",
                        lambda self, *a: calls.append(self.options) or real(self, *a))
    run = {**RUN, "algorithm": "online", "steps": 6, "log_every": 3, "checkpoint_every": 3}
    train(TrainConfig(**run), tmp_path / "numpy")
    assert calls == []                                                    # numpy: the reference loop
    train(TrainConfig(**run, backend="mlx", chunk=4), tmp_path / "mlx")
    assert calls == [{"chunk": 4}] * run["steps"]
    ref, got = _train_metrics(tmp_path / "numpy"), _train_metrics(tmp_path / "mlx")
    assert [r[:2] for r in got] == [r[:2] for r in ref]
    assert all(rel_error(g[2], r[2]) <= 1e-4 for g, r in zip(got, ref)), (got, ref)
    assert load_backend("mlx").available


# ------------------------------------------------------------------ the standard's vocabulary alone, no host read

@pytest.mark.parametrize("cell,rule,model_case", [("lstm", "snap1", RULE_MODELS[2]), ("lru", "online", RULE_MODELS[4]),
                                                  ("gru", "tbptt", RULE_MODELS[3])])
def test_the_rule_step_is_array_api_code_that_reads_nothing_back(cell, rule, model_case, monkeypatch):
    """The device step's own array code (the chunked driver, the layers, the head and loss, the cells'
    step_input_backward, the optimizer) on array_api_strict arrays — the standard and nothing more, as CuPy's namespace
    gives it — with every host read of such an array refused inside the step: the reference kernels stand in for a
    device's (unboxed and boxed again behind the refusal), and the step equals the NumPy reference (float64)."""
    xs = pytest.importorskip("array_api_strict")
    from refimpl.algorithms import chunked
    from refimpl.registry import KERNELS, CellKernels, map_arrays
    from tests.nn.test_losses_optim_namespace import no_host_reads

    def on_device(name):
        """The NumPy reference kernel `name` taking and returning strict arrays (their NumPy data, not a host read)."""
        def run(*args, **kwargs):
            unbox = (lambda a: a._array if hasattr(a, "_array") else a)
            out = KERNELS[name].reference(*map_arrays(unbox, args), **map_arrays(unbox, kwargs))
            return map_arrays(xs.asarray, out)
        return run
    monkeypatch.setattr(chunked, "get_kernel", lambda name, backend="numpy": on_device(name))
    _, options, loss = model_case
    model, params, x, y = _case(cell, options, loss, "float64")
    opt = optim.OptimConfig(name="adamw", lr=1e-2, total_steps=4, clip_norm=0.5)
    algo_options = {"window": CHUNK} if rule == "tbptt" else {"chunk": CHUNK}
    step = DeviceStep(model, opt, "numpy", loss, algorithm=rule, **algo_options)
    step.kernels = CellKernels(on_device(f"{cell}.forward"), on_device(f"{cell}.backward"), "numpy", True)
    want, want_value, want_p = _reference_steps(model, params, x, y, loss, rule, opt, 2,
                                                {"window": CHUNK} if rule == "tbptt" else {})
    p, s = {k: xs.asarray(v) for k, v in params.items()}, optim.init_state(params, opt)
    s = {k: v if k == "step" else xs.asarray(v) for k, v in s.items()}
    xd, yd = xs.asarray(x), xs.asarray(y)
    with no_host_reads():
        _, g = step.grads(p, xd, yd)
        for _ in range(2):
            p, s, value, finite = step(p, s, xd, yd)
    tol = _tolerance("float64")
    for k in want:
        assert rel_error(np.from_dlpack(g[k]), want[k]) <= tol, k
    assert bool(finite) and rel_error(float(value), want_value) <= tol
    for k in want_p:
        assert rel_error(np.from_dlpack(p[k]), want_p[k]) <= 10 * tol, k
