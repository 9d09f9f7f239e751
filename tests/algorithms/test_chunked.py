"""The chunked driver (refimpl/algorithms/chunked.py): chunked == whole sequence, tbptt, updates inside a sequence,
refusals, memory — two independent computations per check, float64.

1. The RTRL family: `model_grads(..., chunk=C)` for C ∈ {1, 7, T} equals the NumPy step loop (chunk=1) ≤ 1e-10, for
   every cell × rule × stack (blocks, poolings, a mask) on NumPy, and for every cell × rule and every block once on
   each other backend that runs here (its sweep kernels against the reference's functions); where a rule is exact
   (rtrl, online on one layer) also == BPTT.
2. FPTT and fptt1 the same way (1 and 2 layers, a pass budget of 2); full FPTT == BPTT (TOLERANCES["fptt_vs_bptt"]);
   its refusal (check (5)) fires with C = 7 as with C = 1.
3. tbptt against its definition: central finite differences of Σ_w L_w(θ), each window w run from the state the
   unperturbed forward reached at its start (held fixed); window = T == bptt; window = 1 == the RTRL `truncated` rule
   (the state held constant across every step: one-step truncation); and a hand-written window loop with SGD updates.
4. update_every with an SGD on_update: the final parameters agree for chunk 1, 7 and every backend.
5. Refusals, each before any work (a spy kernel or stream that fails if touched), with the fix in the message.
6. Memory flat in T (tracemalloc; NumPy chunk=7 and Numba, whose own jitted allocations tracemalloc does not see).
"""

import numpy as np
import pytest

from refimpl import make_model, model_grads
from refimpl.algorithms import chunked
from refimpl.algorithms.fptt import well_conditioned
from refimpl.algorithms.online import online_grads
from refimpl.errors import NumericalError, UnsupportedError
from refimpl.nn import model as model_mod
from refimpl.nn.losses import loss_forward
from refimpl.numerics import TOLERANCES, rel_error
from refimpl.registry import BACKENDS, cell_kernels, load_backend

from ..memory import peak_bytes
from ..toy import random_target

TOL = 1e-10
OTHER_BACKENDS = [b for b in BACKENDS if b != "numpy"]
CELLS = [("rnn", {}), ("rnn", {"nonlinearity": "linear"}), ("gru", {}), ("lstm", {}),
         ("lru", {"r_min": 0.9, "r_max": 0.99})]
IDS = ["rnn-tanh", "rnn-linear", "gru", "lstm", "lru"]
RULES = ["online", "snap1", "truncated", "spatial", "cec", "rtrl"]

#: Every block and pooling (the lru's output map C, D is in every lru stack). A per-step model gets a mask.
STACKS = {
    "1layer": dict(layers=1),
    "1layer-cummean-ce": dict(layers=1, pooling="cumulative_mean", loss="ce"),
    "1layer-enc-norm-last-bce": dict(layers=1, encoder=True, norm="layer", pooling="last", loss="bce"),
    "2layers-enc-norm-glu-res": dict(layers=2, encoder=True, norm="layer", ffn="glu", residual=True),
    "2layers-mlp-cummean": dict(layers=2, ffn="mlp", pooling="cumulative_mean"),
    "2layers-mlp-last-ce": dict(layers=2, ffn="mlp", pooling="last", loss="ce"),
}
#: where `rtrl` is the per-layer rule (one layer, nothing below the cell): elsewhere it is the whole-stack step loop
RTRL_STACKS = ["1layer", "1layer-cummean-ce"]


def _case(cell, opts, stack, T=10, B=2, I=3, H=3, O=2, seed=0, conditioned=False):
    kw = dict(STACKS[stack]) if isinstance(stack, str) else dict(stack)
    loss = kw.pop("loss", "mse")
    model, params = make_model(cell, I, H, O, seed=seed, **opts, **kw)
    if conditioned:
        for l in range(model.layers):
            params = well_conditioned(cell, params, f"layers.{l}.cell.", seed + l)
    rng = np.random.default_rng(seed + 100)
    x = 0.5 * rng.standard_normal((T, B, I))
    y = random_target(rng, model, T, B, loss)
    mask = None
    if model.per_step:
        mask = rng.uniform(0.5, 2.0, (T, B))
        mask[1] = 0.0                               # a step without a loss
    return model, params, x, y, loss, mask


def _assert_same(got, want, tol, what):
    assert sorted(got) == sorted(want), f"{what}: keys {sorted(got)} != {sorted(want)}"
    for k in want:
        err = rel_error(got[k], want[k])
        assert err <= tol, f"{what}: {k} relative error {err:.2e} > {tol:.0e}"


def _value_close(got, want, what, tol=1e-12):
    assert abs(got - want) <= tol * max(1.0, abs(want)), f"{what}: loss {got!r} != {want!r}"


def _backend(backend, dtype="float64", kernel=None):
    """Skip unless `backend` runs here (and runs `kernel` in `dtype`)."""
    b = load_backend(backend)
    if not b.available:
        pytest.skip(f"backend {backend}: {b.reason}")
    if kernel is not None:
        why = b.unsupported_dtype(kernel, dtype)
        if why:
            pytest.skip(f"backend {backend}: {why}")


def _or_skip(fn):
    """fn(), skipping the test where a backend does not implement a kernel yet, or not yet its carried form (a kernel
    without the `carry` argument: a chunk cannot hand its carry on)."""
    try:
        return fn()
    except UnsupportedError as e:
        if "does not implement" in str(e):
            pytest.skip(str(e))
        raise
    except TypeError as e:
        if "unexpected keyword argument 'carry'" in str(e):
            pytest.skip(f"the kernel has no carried form yet: {e}")
        raise


def _applies(cell, rule, stack):
    return not ((rule == "cec" and cell != "lstm") or (rule == "rtrl" and stack not in RTRL_STACKS))


# ----------------------------------------------------------------------------------------------------------------
# 1. The RTRL family: chunked == the step loop

@pytest.mark.parametrize("stack", list(STACKS))
@pytest.mark.parametrize("cell,opts", CELLS, ids=IDS)
def test_rules_chunked_equal_the_step_loop_on_numpy(cell, opts, stack):
    model, params, x, y, loss, mask = _case(cell, opts, stack)
    T = x.shape[0]
    for rule in RULES:
        if not _applies(cell, rule, stack):
            continue
        want = model_grads(model, params, x, y, loss=loss, mask=mask, algorithm=rule, chunk=1)
        for C in (7, T):
            got = model_grads(model, params, x, y, loss=loss, mask=mask, algorithm=rule, chunk=C)
            _value_close(got[0], want[0], f"{rule} C={C}")
            _assert_same(got[1], want[1], TOL, f"{cell} {stack} {rule} C={C}")
        if rule == "rtrl" or (rule == "online" and stack in RTRL_STACKS):      # exact: the step loop == BPTT
            v, g = model_mod.bptt(model, params, x, y, loss=loss, mask=mask)
            _value_close(want[0], v, f"{rule} vs bptt")
            _assert_same(want[1], {k: g[k] for k in params}, TOL, f"{cell} {stack} {rule} vs bptt")


def _backend_grid():
    """Every cell × rule once, the stacks taken in turn so that every block and pooling is used."""
    names, grid, i = list(STACKS), [], 0
    for (cell, opts), cid in zip(CELLS, IDS):
        for rule in RULES:
            if rule == "cec" and cell != "lstm":
                continue
            pool = RTRL_STACKS if rule == "rtrl" else names
            grid.append(pytest.param(cell, opts, rule, pool[i % len(pool)], id=f"{cid}-{rule}-{pool[i % len(pool)]}"))
            i += 1
    return grid


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
@pytest.mark.parametrize("cell,opts,rule,stack", _backend_grid())
def test_rules_chunked_on_a_backend_equal_the_step_loop(backend, cell, opts, rule, stack):
    _backend(backend, kernel=f"{cell}.forward")
    model, params, x, y, loss, mask = _case(cell, opts, stack)
    T = x.shape[0]
    want = model_grads(model, params, x, y, loss=loss, mask=mask, algorithm=rule, chunk=1)
    for C in (1, 7, T, None):                                   # None: the backend's default chunk
        got = _or_skip(lambda: model_grads(model, params, x, y, loss=loss, mask=mask, algorithm=rule,
                                           backend=backend, **({} if C is None else {"chunk": C})))
        _value_close(got[0], want[0], f"{backend} {rule} C={C}")
        _assert_same(got[1], want[1], TOL, f"{backend} {cell} {stack} {rule} C={C}")


def test_the_backend_grid_covers_every_block_and_pooling():
    used = {p.values[3] for p in _backend_grid()}
    assert used == set(STACKS)


def test_a_stream_gives_the_gradients_of_the_array():
    """A stream (length, batch, chunk(t0, t1): never whole in memory) == the same sequence as an array."""
    model, params, x, y, loss, mask = _case("gru", {}, "2layers-mlp-cummean")
    want = chunked.per_layer_grads(model, params, x, y, loss, mask, rule="rtrl", chunk=1)
    stream = _Stream(x, y, mask)
    got = chunked.per_layer_grads(model, params, stream, loss=loss, rule="rtrl", chunk=4)
    _value_close(got[0], want[0], "stream")
    _assert_same(got[1], want[1], TOL, "stream vs array")
    assert stream.calls == [(0, 4), (4, 8), (8, 10)]


# ----------------------------------------------------------------------------------------------------------------
# 2. FPTT and fptt1

FPTT_RUNS = [("fptt", 1, None), ("fptt", 2, None), ("fptt", 2, 2), ("fptt1", 1, None), ("fptt1", 2, None)]
FPTT_IDS = ["fptt-1layer", "fptt-2layers", "fptt-2layers-passes2", "fptt1-1layer", "fptt1-2layers"]


def _fptt_case(cell, opts, layers):
    # exact FPTT through an lstm stack is well conditioned only for short T (tests/algorithms/test_fptt.py)
    T = 4 if (cell == "lstm" and layers > 1) else 9
    stack = dict(layers=layers) if layers == 1 else dict(layers=2, encoder=True, norm="layer", ffn="mlp",
                                                         residual=True, pooling="cumulative_mean")
    return _case(cell, opts, stack, T=T, conditioned=True)


def _chunks(T):
    return sorted({1, min(7, T - 1), T})             # 7 where T allows a partial last chunk (lstm stacks: T = 4)


@pytest.mark.parametrize("algorithm,layers,passes", FPTT_RUNS, ids=FPTT_IDS)
@pytest.mark.parametrize("cell,opts", CELLS, ids=IDS)
def test_fptt_chunked_equals_the_step_loop_on_numpy(cell, opts, algorithm, layers, passes):
    model, params, x, y, loss, mask = _fptt_case(cell, opts, layers)
    o = {} if passes is None else {"passes": passes}
    want = model_grads(model, params, x, y, loss=loss, mask=mask, algorithm=algorithm, chunk=1, **o)
    for C in _chunks(x.shape[0])[1:]:
        got = model_grads(model, params, x, y, loss=loss, mask=mask, algorithm=algorithm, chunk=C, **o)
        _value_close(got[0], want[0], f"{algorithm} C={C}")
        _assert_same(got[1], want[1], TOL, f"{cell} {algorithm} {layers} layers passes={passes} C={C}")
    if algorithm == "fptt" and passes is None:                                      # full FPTT is exact
        v, g = model_mod.bptt(model, params, x, y, loss=loss, mask=mask)
        _value_close(want[0], v, "fptt vs bptt")
        _assert_same(want[1], g, TOLERANCES["fptt_vs_bptt"]["float64"], f"{cell} fptt {layers} layers vs bptt")
    if passes == 2:                                  # the budget makes layer 0 spatial: its recurrence gets nothing
        rec = [k for k in want[1] if k.startswith("layers.0.cell.") and k.split(".")[-1] in model.cells[0].recurrent_params]
        assert rec and all(np.all(want[1][k] == 0) for k in rec)


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
@pytest.mark.parametrize("algorithm,layers,passes", [FPTT_RUNS[2], FPTT_RUNS[1], FPTT_RUNS[4]],
                         ids=["fptt-passes2", "fptt", "fptt1"])
@pytest.mark.parametrize("cell,opts", CELLS, ids=IDS)
def test_fptt_chunked_on_a_backend_equals_the_step_loop(backend, cell, opts, algorithm, layers, passes):
    _backend(backend, kernel=f"{cell}.forward")
    model, params, x, y, loss, mask = _fptt_case(cell, opts, layers)
    o = {} if passes is None else {"passes": passes}
    want = model_grads(model, params, x, y, loss=loss, mask=mask, algorithm=algorithm, chunk=1, **o)
    for C in _chunks(x.shape[0]):
        got = _or_skip(lambda: model_grads(model, params, x, y, loss=loss, mask=mask, algorithm=algorithm,
                                           backend=backend, chunk=C, **o))
        _assert_same(got[1], want[1], TOL, f"{backend} {cell} {algorithm} passes={passes} C={C}")


@pytest.mark.parametrize("backend", ["numpy"] + OTHER_BACKENDS)
def test_fptt_refuses_a_lost_signal_whatever_the_chunk(backend):
    """A forgetful lru (|λ| ≤ 0.5) over T = 60 steps: the inversion loses the error signal; (5) refuses for every
    chunk size, on the reference and on a backend."""
    if backend != "numpy":
        _backend(backend, kernel="lru.forward")
    model, params = make_model("lru", 3, 4, 2, layers=2, seed=0, r_min=0.3, r_max=0.5)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((60, 2, 3)), rng.standard_normal((60, 2, 2))
    for C in (1, 7, 60):
        with pytest.raises(NumericalError, match="FPTT lost the error signal"):
            _or_skip(lambda: model_grads(model, params, x, y, loss="mse", algorithm="fptt", backend=backend,
                                         chunk=C))


def test_fptt_refuses_float32_state_carriers_with_chunks():
    """tests/algorithms/test_fptt.py's blow-up (float32 carriers, |λ| ≤ 0.5, T = 1000), now 7 steps at a time."""
    model, params = make_model("lru", 3, 4, 2, r_min=0.3, r_max=0.5, dtype="float32")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 2, 3)).astype(np.float32)
    y = rng.standard_normal((1000, 2, 2)).astype(np.float32)
    with pytest.raises(NumericalError, match=r"FPTT lost the error signal.*T=1000.*float32"):
        chunked.fptt_model_grads(model, params, x, y, "mse", carrier="state", chunk=7)


@pytest.mark.parametrize("backend", ["numpy", "mlx"])
def test_a_float32_cumulative_mean_model_stays_float32(backend):
    """The cumulative mean's counts take the state's dtype: a float32 lru with cumulative_mean pooling hands its FPTT
    kernels float32 / complex64 adjoints (MLX refuses complex128), and its gradients equal float64 BPTT's to float32
    tolerance (the FPTT paper's model, a small one)."""
    if backend != "numpy" and not load_backend(backend).available:
        pytest.skip(f"{backend}: {load_backend(backend).reason}")
    model, params = make_model("lru", 2, 4, 3, layers=2, encoder=True, d_model=4, ffn="mlp",
                               pooling="cumulative_mean", r_min=0.9, r_max=0.99, dtype="float32", seed=1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((9, 2, 2)).astype(np.float32)
    y = rng.integers(0, 3, (9, 2))
    _, g = model_grads(model, params, x, y, loss="ce", algorithm="fptt", backend=backend)
    assert all(v.dtype == np.float32 for k, v in g.items() if k != "x") and g["x"].dtype == np.float32
    model64, _ = make_model("lru", 2, 4, 3, layers=2, encoder=True, d_model=4, ffn="mlp", pooling="cumulative_mean",
                            r_min=0.9, r_max=0.99, seed=1)
    _, want = model_mod.bptt(model64, {k: v.astype(np.float64) for k, v in params.items()}, x.astype(np.float64), y,
                             loss="ce")
    for k in want:
        assert rel_error(g[k].astype(np.float64), want[k]) <= TOLERANCES["fptt_vs_bptt"]["float32"], k


# ----------------------------------------------------------------------------------------------------------------
# 3. tbptt against its definition

class _FromStates:
    """Cell kernels whose sequence forward starts layer l from states[l] (not from zero) and records each layer's
    final state: a model forward over one window from the states the stream reached at its start."""

    def __init__(self, model, states):
        self.model, self.states, self.final, self.l = model, list(states), [], 0

    def forward(self, params, x, state0, **kw):
        c = self.model.cells[self.l]
        h, cache = c.module.forward(params, x, self.states[self.l], **kw)
        self.final.append(c.final_state(cache))
        self.l += 1
        return h, cache

    def backward(self, params, dh, cache, **kw):
        return self.model.cells[0].module.backward(params, dh, cache, **kw)


def _windows(T, k):
    return [(t0, min(t0 + k, T)) for t0 in range(0, T, k)]


def _window_states(model, params, x, k):
    """The states at the start of every window, from the unperturbed forward."""
    states, starts = [c.zero_state(x.shape[1]) for c in model.cells], []
    for t0, t1 in _windows(x.shape[0], k):
        starts.append(states)
        kern = _FromStates(model, states)
        model_mod.forward(model, params, x[t0:t1], kern)
        states = kern.final
    return starts


def _window_loss(model, params, x, y, loss, mask, k, starts):
    """Σ_w L_w(θ): window w runs from starts[w] (fixed: not a function of θ)."""
    T, total = x.shape[0], 0.0
    for (t0, t1), s in zip(_windows(T, k), starts):
        out, _ = model_mod.forward(model, params, x[t0:t1], _FromStates(model, s))
        if model.per_step:
            total += float(loss_forward(loss, out, y[t0:t1], None if mask is None else mask[t0:t1])[0])
        elif t1 == T:                                      # pooling 'last': the loss of the last window's last step
            total += float(loss_forward(loss, out, y, None)[0])
    return total


def _finite_differences(f, params, eps=1e-5):
    grads = {}
    for k, v in params.items():
        g = np.zeros_like(v)
        for i in np.ndindex(v.shape):
            p_plus, p_minus = dict(params), dict(params)
            p_plus[k], p_minus[k] = v.copy(), v.copy()
            p_plus[k][i] += eps
            p_minus[k][i] -= eps
            g[i] = (f(p_plus) - f(p_minus)) / (2 * eps)
        grads[k] = g
    return grads


@pytest.mark.parametrize("cell,opts,stack", [
    ("gru", {}, dict(layers=2, encoder=True, norm="layer", ffn="mlp", residual=True)),
    ("lru", {"r_min": 0.9, "r_max": 0.99}, dict(layers=2, ffn="glu")),
    ("lstm", {}, dict(layers=1, pooling="last")),
    ("rnn", {}, dict(layers=1)),
], ids=["gru-2layers-enc-norm-mlp-res", "lru-2layers-glu", "lstm-last", "rnn"])
def test_tbptt_equals_finite_differences_of_its_windowed_loss(cell, opts, stack):
    model, params, x, y, loss, mask = _case(cell, opts, stack, T=10, I=2, H=2)
    k = 4                                                   # windows [0,4) [4,8) [8,10)
    starts = _window_states(model, params, x, k)
    value, got = model_grads(model, params, x, y, loss=loss, mask=mask, algorithm="tbptt", window=k)
    _value_close(value, _window_loss(model, params, x, y, loss, mask, k, starts), "tbptt loss")
    want = _finite_differences(lambda p: _window_loss(model, p, x, y, loss, mask, k, starts), params)
    _assert_same(got, want, TOLERANCES["bptt_vs_fd"], f"tbptt {cell} vs finite differences")
    _, g_bptt = model_mod.bptt(model, params, x, y, loss=loss, mask=mask)
    assert max(rel_error(got[k_], g_bptt[k_]) for k_ in params) > 1e-6, "tbptt == bptt here: the check is vacuous"


@pytest.mark.parametrize("backend", ["numpy"] + OTHER_BACKENDS)
@pytest.mark.parametrize("cell,opts", CELLS, ids=IDS)
def test_tbptt_window_T_is_bptt_and_window_1_is_truncated(backend, cell, opts):
    """window = T: one window, BPTT; window = 1: the graph cut at every step, which is the RTRL `truncated` rule (its
    trace keeps only the immediate dependence: an independent computation, forward mode); window 4 on a backend ==
    the reference."""
    if backend != "numpy":
        _backend(backend, kernel=f"{cell}.forward")
    model, params, x, y, loss, mask = _case(cell, opts, "2layers-enc-norm-glu-res")
    T = x.shape[0]
    v, g = model_mod.bptt(model, params, x, y, loss=loss, mask=mask)
    got = _or_skip(lambda: model_grads(model, params, x, y, loss=loss, mask=mask, algorithm="tbptt", window=T,
                                       backend=backend))
    _value_close(got[0], v, "tbptt window=T")
    _assert_same(got[1], {k: g[k] for k in params}, TOL, f"{backend} {cell} tbptt window=T vs bptt")
    want = model_grads(model, params, x, y, loss=loss, mask=mask, algorithm="truncated", chunk=1)
    got = _or_skip(lambda: model_grads(model, params, x, y, loss=loss, mask=mask, algorithm="tbptt", window=1,
                                       backend=backend))
    _assert_same(got[1], want[1], TOL, f"{backend} {cell} tbptt window=1 vs truncated")
    if backend != "numpy":
        want = model_grads(model, params, x, y, loss=loss, mask=mask, algorithm="tbptt", window=4)
        got = _or_skip(lambda: model_grads(model, params, x, y, loss=loss, mask=mask, algorithm="tbptt", window=4,
                                           backend=backend))
        _assert_same(got[1], want[1], TOL, f"{backend} {cell} tbptt window=4 vs the reference")


# ----------------------------------------------------------------------------------------------------------------
# 4. Updates inside a sequence

LR = 0.05


def _sgd(state):
    def on_update(grads, t, loss):
        state["steps"].append(t)
        state["losses"].append(loss)
        state["params"] = {k: v - LR * grads[k] for k, v in state["params"].items()}
        return state["params"]
    return on_update


def _train_online(run, params):
    """run(params, on_update) over one sequence with SGD at every update and after the end: the final params."""
    state = {"params": dict(params), "steps": [], "losses": []}
    _, grads = run(state["params"], _sgd(state))
    final = {k: v - LR * grads[k] for k, v in state["params"].items()}
    return final, state


@pytest.mark.parametrize("cell,opts", [("gru", {}), ("lstm", {}), ("lru", {"r_min": 0.9, "r_max": 0.99})],
                         ids=["gru", "lstm", "lru"])
def test_update_every_gives_the_same_training_for_every_chunk_and_backend(cell, opts):
    model, params, x, y, loss, mask = _case(cell, opts, "2layers-enc-norm-glu-res", T=23)
    K = 5                                                      # chunk 7: boundaries not aligned with K

    def run(backend, chunk, algorithm="online"):
        kernels = cell_kernels(model.cell, backend, model.dtype)
        return _train_online(lambda p, upd: online_grads(model, p, x, y, loss, mask, algorithm=algorithm,
                                                         kernels=kernels, chunk=chunk, update_every=K,
                                                         on_update=upd), params)

    want, state = run("numpy", 1)
    assert state["steps"] == [5, 10, 15, 20]
    assert max(rel_error(want[k], params[k]) for k in params) > 1e-4          # the updates moved the parameters
    checked = []
    for backend, chunk in [("numpy", 7), ("numpy", 23)] + [(b, c) for b in OTHER_BACKENDS for c in (7, None)]:
        if backend != "numpy":
            b = load_backend(backend)
            if not b.available or b.unsupported_dtype(f"{cell}.forward", "float64"):
                continue
        try:
            got, s = _or_skip(lambda: run(backend, chunk))
        except pytest.skip.Exception:           # this backend's carried kernels are still to come: the others run
            continue
        checked.append((backend, chunk))
        assert s["steps"] == state["steps"], (backend, chunk)
        np.testing.assert_allclose(s["losses"], state["losses"], rtol=1e-12)
        _assert_same(got, want, TOL, f"{backend} chunk={chunk} final params")
    assert checked[:2] == [("numpy", 7), ("numpy", 23)]


@pytest.mark.parametrize("backend", ["numpy"] + OTHER_BACKENDS)
def test_tbptt_updates_match_a_hand_written_window_loop(backend):
    """tbptt with update_every = 2 windows against the loop written out: BPTT over each window from the carried
    state (model_mod.forward / backward), an SGD step after every second window."""
    if backend != "numpy":
        _backend(backend, kernel="gru.forward")
    model, params, x, y, loss, mask = _case("gru", {}, "2layers-enc-norm-glu-res", T=23)
    k, K = 3, 6
    kernels = cell_kernels(model.cell, backend, model.dtype)
    got, state = _or_skip(lambda: _train_online(lambda p, upd: chunked.tbptt_model_grads(
        model, p, x, y, loss, mask, kernels=kernels, window=k, update_every=K, on_update=upd), params))
    assert state["steps"] == [6, 12, 18]

    p, acc = dict(params), {n: np.zeros_like(v) for n, v in params.items()}
    states = [c.zero_state(x.shape[1]) for c in model.cells]
    for t0, t1 in _windows(x.shape[0], k):
        kern = _FromStates(model, states)
        out, cache = model_mod.forward(model, p, x[t0:t1], kern)
        _, dout = loss_forward(loss, out, y[t0:t1], mask[t0:t1])
        g = model_mod.backward(model, p, dout, cache, kern)
        acc = {n: acc[n] + g[n] for n in acc}
        states = kern.final
        if t1 % K == 0 or t1 == x.shape[0]:
            p = {n: v - LR * acc[n] for n, v in p.items()}
            acc = {n: np.zeros_like(v) for n, v in p.items()}
    _assert_same(got, p, TOL, f"{backend} tbptt updates vs the window loop")


# ----------------------------------------------------------------------------------------------------------------
# 5. Refusals, before any work

class _Untouchable:
    """Kernels that fail the test if any work starts."""
    backend = "numpy"

    def forward(self, *a, **kw):
        raise AssertionError("work started before the refusal")

    backward = forward


class _Stream:
    """A stream: length, batch and chunk(t0, t1) (it records the chunks read)."""

    def __init__(self, x, y, mask):
        self.x, self.y, self.mask, self.calls = x, y, mask, []

    @property
    def length(self):
        return self.x.shape[0]

    @property
    def batch(self):
        return self.x.shape[1]

    def chunk(self, t0, t1):
        self.calls.append((t0, t1))
        return self.x[t0:t1], self.y[t0:t1], None if self.mask is None else self.mask[t0:t1]


@pytest.mark.parametrize("chunk,match", [(0, "chunk must be a positive integer"), (-3, "positive integer"),
                                         (11, r"chunk 11 is larger than the sequence \(T = 10\); use a chunk between "
                                              r"1 and 10")])
def test_bad_chunks_are_refused(chunk, match):
    model, params, x, y, loss, mask = _case("gru", {}, "1layer")
    spy = _Untouchable()
    with pytest.raises(UnsupportedError, match=match):
        chunked.per_layer_grads(model, params, x, y, loss, mask, rule="rtrl", kernels=spy, chunk=chunk)
    with pytest.raises(UnsupportedError, match=match):
        chunked.fptt_model_grads(model, params, x, y, loss, mask, kernels=spy, chunk=chunk)
    for algorithm in ("online", "fptt", "fptt1"):
        with pytest.raises(UnsupportedError, match=match):
            model_grads(model, params, x, y, loss=loss, mask=mask, algorithm=algorithm, chunk=chunk)


def test_whole_stack_rtrl_refuses_bad_chunks_too():
    model, params, x, y, loss, mask = _case("gru", {}, "2layers-mlp-cummean")
    for chunk in (0, x.shape[0] + 1):
        with pytest.raises(UnsupportedError, match="chunk"):
            model_grads(model, params, x, y, loss=loss, mask=mask, algorithm="rtrl", chunk=chunk)


def test_tbptt_refusals():
    model, params, x, y, loss, mask = _case("gru", {}, "1layer")
    spy = _Untouchable()
    with pytest.raises(UnsupportedError, match=r"window 11 is larger than the sequence \(T = 10\); use a window "
                                               r"between 1 and 10"):
        chunked.tbptt_model_grads(model, params, x, y, loss, mask, kernels=spy, window=11)
    with pytest.raises(UnsupportedError, match="window must be a positive integer"):
        chunked.tbptt_model_grads(model, params, x, y, loss, mask, kernels=spy, window=0)
    with pytest.raises(UnsupportedError, match=r"update_every=6 is not a multiple of it: use update_every=4"):
        chunked.tbptt_model_grads(model, params, x, y, loss, mask, kernels=spy, window=4, update_every=6,
                                  on_update=lambda *a: params)
    with pytest.raises(UnsupportedError, match="window 11 is larger"):
        model_grads(model, params, x, y, loss=loss, mask=mask, algorithm="tbptt", window=11)


def test_mean_pooling_and_a_stream_with_last_pooling_are_refused():
    spy = _Untouchable()
    model, params, x, y, loss, mask = _case("gru", {}, dict(layers=1, pooling="mean"))
    for run in (lambda: chunked.per_layer_grads(model, params, x, y, loss, rule="rtrl", kernels=spy, chunk=2),
                lambda: chunked.fptt_model_grads(model, params, x, y, loss, kernels=spy, chunk=2),
                lambda: chunked.tbptt_model_grads(model, params, x, y, loss, kernels=spy, window=2)):
        with pytest.raises(UnsupportedError, match="not memoryless.*use pooling 'cumulative_mean'"):
            run()
    model, params, x, y, loss, mask = _case("gru", {}, dict(layers=1, pooling="last"))
    stream = _Stream(x, np.zeros((x.shape[0],) + y.shape), None)
    for run in (lambda: chunked.per_layer_grads(model, params, stream, rule="rtrl", kernels=spy, chunk=2),
                lambda: chunked.fptt_model_grads(model, params, stream, kernels=spy, chunk=2),
                lambda: chunked.tbptt_model_grads(model, params, stream, kernels=spy, window=2)):
        with pytest.raises(UnsupportedError, match="a stream has no last step.*use pooling 'none' or "
                                                   "'cumulative_mean'"):
            run()
    assert stream.calls == [], "the stream was read before the refusal"


# ----------------------------------------------------------------------------------------------------------------
# 6. Memory flat in T
#
# The peak (tracemalloc) of a run over T = 1200 against T = 100, after a first long run has filled what NumPy and the
# interpreter keep for reuse (bounded, but it fills more the longer a run is, so a short warm-up is not enough): the
# growth must stay under a quarter of what keeping one state (B, H) per step would add. B·H is large enough (1 KiB a
# step) to make that margin far wider than the caches' noise; BPTT, which stores the sequence, grows far beyond it.

def _long_case(T=1200, B=16, H=8):
    model, params = make_model("gru", 3, H, 2, seed=0)
    rng = np.random.default_rng(0)
    return model, params, rng.standard_normal((T, B, 3)), rng.standard_normal((T, B, 2))


@pytest.mark.parametrize("backend,algorithm", [("numpy", "rtrl"), ("numpy", "tbptt"), ("numpy", "fptt"),
                                               ("numba", "rtrl"), ("numba", "tbptt")])
def test_memory_does_not_grow_with_T(backend, algorithm):
    if backend != "numpy":
        _backend(backend, kernel="gru.forward")
    model, params, x, y = _long_case()
    kernels = cell_kernels(model.cell, backend, model.dtype)

    def run(n):
        if algorithm == "tbptt":
            return chunked.tbptt_model_grads(model, params, x[:n], y[:n], "mse", kernels=kernels, window=7)
        if algorithm == "fptt":
            return chunked.fptt_model_grads(model, params, x[:n], y[:n], "mse", kernels=kernels, chunk=7,
                                            input_grad=False, check=False)
        return chunked.per_layer_grads(model, params, x[:n], y[:n], "mse", rule=algorithm, kernels=kernels, chunk=7)

    _or_skip(lambda: run(1200))
    short = peak_bytes(lambda: run(100))
    long = peak_bytes(lambda: run(1200))
    state_per_step = x.shape[1] * model.cells[0].n_hidden * 8
    margin = 0.25 * 1100 * state_per_step
    assert long - short < margin, f"{backend} {algorithm}: peak {short} B at T=100 but {long} B at T=1200"
    bptt_short = peak_bytes(lambda: model_mod.bptt(model, params, x[:100], y[:100], loss="mse"))
    bptt_long = peak_bytes(lambda: model_mod.bptt(model, params, x, y, loss="mse"))
    assert bptt_long - bptt_short > 4 * margin                      # BPTT stores the sequence: the test can fail
