"""The cell-level RTRL family (refimpl/algorithms/rtrl.py; docs/derivations/rtrl.md), each rule against an independent
oracle.

    rtrl       == the cell's BPTT (cell.module.forward + backward), every parameter, ≤ 1e-10 (DESIGN.md §7)
    snap1      == dense RTRL written here, with every state Jacobian masked to its diagonal (lstm: per-unit 2×2 blocks)
                  and the sensitivity masked to the immediate sparsity pattern, ≤ 1e-10; == BPTT on the lru
    truncated  == the gradient of the detached graph (step_backward per step, carried adjoint dropped), ≤ 1e-10
    spatial    == truncated with the recurrent parameters zeroed; exactly zero for those
    cec        == the gradient of the lstm's CEC-truncated graph, a backward written here from the cache fields
Plus structural identities (snap1 exact for diagonal W_hh blocks, cec exact for W_hh = 0), memory (independent of T;
snap1 O(#params), rtrl O(S·#params)), purity, float32 vs float64, and the error messages.
Every case: float64, non-zero initial state, random dh (complex for the lru), sizes with B = 1, T = 1 and prime T.
"""

import copy
import tracemalloc

import numpy as np
import pytest

from refimpl.algorithms import rtrl
from refimpl.cells import CELLS, resolve_cell
from refimpl.cells.common import cache_at
from refimpl.cells.lstm import LSTMState
from refimpl.errors import ShapeError, UnknownNameError, UnsupportedError
from refimpl.numerics import rel_error

EXACT = 1e-10                  # DESIGN.md §7: an exact algorithm vs its oracle, float64
F32 = 1e-4                     # DESIGN.md §7: float32 vs float64

CELL_CASES = [("rnn", {"nonlinearity": "tanh"}), ("rnn", {"nonlinearity": "linear"}), ("gru", {}), ("lstm", {}),
              ("lru", {}), ("lru", {"r_min": 0.9, "r_max": 0.999})]
CELL_IDS = [f"{n}-{'-'.join(map(str, o.values())) or 'default'}" for n, o in CELL_CASES]
DENSE_CASES = [c for c in CELL_CASES if c[0] != "lru"]
DENSE_IDS = [i for i, c in zip(CELL_IDS, CELL_CASES) if c[0] != "lru"]
#: (T, B, I, H): B = 1 and T = 1; prime T with I = 1; prime T; a larger prime T with H = 6.
SIZES = [(1, 1, 2, 3), (5, 1, 1, 2), (7, 2, 3, 4), (11, 3, 2, 6)]
SIZE_IDS = [f"T{t}-B{b}-I{i}-H{h}" for t, b, i, h in SIZES]
SEED = 20240611
RECURRENT = {"rnn": ("weight_hh", "bias_hh"), "gru": ("weight_hh", "bias_hh"), "lstm": ("weight_hh", "bias_hh"),
             "lru": ("nu_log", "theta_log")}


def _case(name, options, size, seed=SEED, dtype=np.float64):
    """cell, params, x (T,B,I), dh (T,B,H) (complex for the lru), state0 (random, non-zero)."""
    T, B, I, H = size
    rng = np.random.default_rng(seed)
    cell = resolve_cell(name, I, H, dtype, **options)
    mod = cell.module
    params = mod.init_params(I, H, rng, dtype, **cell.options)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    state0 = mod.random_state(rng, B, H, dtype)
    dh = rng.standard_normal((T, B, H))
    if name == "lru":
        dh = dh + 1j * rng.standard_normal((T, B, H))
    return cell, params, x, dh.astype(cell.state_dtype), state0


def _bptt(cell, params, x, dh, state0):
    _, cache = cell.module.forward(params, x, state0, **cell.step_options)
    grads = cell.module.backward(params, dh, cache, **cell.step_options)
    return {k: grads[k] for k in params}


def _assert_close(got, want, tol, label):
    assert set(got) == set(want), label
    for k in want:
        assert got[k].shape == want[k].shape and got[k].dtype == want[k].dtype, f"{label} {k}: shape/dtype"
        err = rel_error(got[k], want[k])
        assert err <= tol, f"{label} d{k}: relative error {err:.2e} > {tol:.0e}"


def _worst(got, want):
    return max(rel_error(got[k], want[k]) for k in want)


# ---------------------------------------------------------------------------------------------------------------------
# Independent oracles (written from the cell modules' step functions and Jacobians, not from refimpl.algorithms.rtrl)


def _dense_jacobians(cell, params, x_t, state):
    """J (B, S, S) and P {name: (B, S, *shape)} in dense form for every cell (the lru's compact forms expanded)."""
    mod, opts = cell.module, cell.step_options
    J = mod.state_jacobian(params, x_t, state, **opts)
    P = mod.param_jacobian(params, x_t, state, **opts)
    if cell.name == "lru":
        eye = np.eye(cell.n_hidden)
        J = np.einsum("bk,kj->bkj", J, eye)
        P = {k: np.einsum("bk...,kj->bkj...", v, eye) for k, v in P.items()}
    return J, P


def _snap1_dense_oracle(cell, params, x, dh, state0):
    """Dense RTRL with J masked to its diagonal (lstm: the per-unit 2×2 blocks [h_k, c_k]) and the sensitivity masked
    to the immediate sparsity pattern (state row of unit k × parameter rows g·H + k)."""
    H = cell.n_hidden
    S_size = 2 * H if cell.name == "lstm" else H
    unit_of_row = np.arange(S_size) % H                                   # state row r·H + k belongs to unit k
    J_mask = unit_of_row[:, None] == unit_of_row[None, :]
    masks = {name: (unit_of_row[:, None] == (np.arange(p.shape[0]) % H)[None, :]).reshape(
        (S_size, p.shape[0]) + (1,) * (p.ndim - 1)) for name, p in params.items()}
    S = {name: np.zeros((x.shape[1], S_size) + p.shape, dtype=cell.state_dtype) for name, p in params.items()}
    grads = {name: np.zeros_like(p) for name, p in params.items()}
    state = state0
    for t in range(x.shape[0]):
        J, P = _dense_jacobians(cell, params, x[t], state)
        J = J * J_mask
        for name in params:
            S[name] = masks[name] * (np.einsum("bkj,bj...->bk...", J, S[name]) + P[name])
            grads[name] += np.real(np.einsum("bk...,bk->...", np.conj(S[name][:, :H]), dh[t]))
        state, _ = cell.module.step_forward(params, x[t], state, **cell.step_options)
    return grads


def _detached_oracle(cell, params, x, dh, state0):
    """The gradient of the detached graph: step_backward per step with the adjoint carried to s_{t-1} dropped."""
    mod, opts = cell.module, cell.step_options
    grads = {name: np.zeros_like(p) for name, p in params.items()}
    state = state0
    for t in range(x.shape[0]):
        state_next, cache = mod.step_forward(params, x[t], state, **opts)
        dstate = LSTMState(h=dh[t], c=np.zeros_like(dh[t])) if cell.name == "lstm" else dh[t]
        dparams, _, _ = mod.step_backward(params, dstate, cache, **opts)      # its dstate_prev is dropped
        for name in params:
            grads[name] += dparams[name]
        state = state_next
    return grads


def _cec_oracle(params, x, dh, state0):
    """BPTT of the lstm graph in which h_{t-1} enters the gates as a constant: written from the cache fields, the
    adjoint through c_{t-1} is carried (c̄_{t-1} = ĉ ⊙ f), the one through the gates to h_{t-1} is never formed."""
    from refimpl.cells import lstm
    _, cache = lstm.forward(params, x, state0)
    grads = {name: np.zeros_like(p) for name, p in params.items()}
    dc_carry = np.zeros_like(dh[0])
    for t in reversed(range(x.shape[0])):
        k = cache_at(cache, t)
        dh_t = dh[t]                                                       # no h̄ from step t+1
        dc_hat = dc_carry + dh_t * k.o * (1.0 - k.tanh_c ** 2)             # ∂/∂c_t: carried + through h_t
        da = np.concatenate([dc_hat * k.g * k.i * (1 - k.i), dc_hat * k.c_prev * k.f * (1 - k.f),
                             dc_hat * k.i * (1 - k.g ** 2), dh_t * k.tanh_c * k.o * (1 - k.o)], axis=-1)
        grads["weight_ih"] += da.T @ k.x
        grads["weight_hh"] += da.T @ k.h_prev
        grads["bias_ih"] += da.sum(0)
        grads["bias_hh"] += da.sum(0)
        dc_carry = dc_hat * k.f
    return grads


# ---------------------------------------------------------------------------------------------------------------------
# (1)–(5): each rule against its oracle


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("name,options", CELL_CASES, ids=CELL_IDS)
def test_rtrl_equals_bptt(name, options, size):
    cell, params, x, dh, state0 = _case(name, options, size)
    _assert_close(rtrl.cell_grads_online("rtrl", cell, params, x, dh, state0), _bptt(cell, params, x, dh, state0),
                  EXACT, f"{name} rtrl vs bptt")


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("name,options", CELL_CASES, ids=CELL_IDS)
def test_snap1_equals_masked_dense_rtrl(name, options, size):
    cell, params, x, dh, state0 = _case(name, options, size)
    got = rtrl.cell_grads_online("snap1", cell, params, x, dh, state0)
    _assert_close(got, _snap1_dense_oracle(cell, params, x, dh, state0), EXACT, f"{name} snap1 vs masked dense")
    if name == "lru":      # the diagonal recurrence makes SnAp-1 exact (an alias of rtrl)
        _assert_close(got, _bptt(cell, params, x, dh, state0), EXACT, "lru snap1 vs bptt")


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("name,options", CELL_CASES, ids=CELL_IDS)
def test_truncated_equals_detached_graph(name, options, size):
    cell, params, x, dh, state0 = _case(name, options, size)
    got = rtrl.cell_grads_online("truncated", cell, params, x, dh, state0)
    _assert_close(got, _detached_oracle(cell, params, x, dh, state0), EXACT, f"{name} truncated vs detached")
    if x.shape[0] == 1:
        _assert_close(got, _bptt(cell, params, x, dh, state0), EXACT, f"{name} truncated vs bptt at T=1")


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("name,options", CELL_CASES, ids=CELL_IDS)
def test_spatial_is_truncated_without_the_recurrence(name, options, size):
    cell, params, x, dh, state0 = _case(name, options, size)
    got = rtrl.cell_grads_online("spatial", cell, params, x, dh, state0)
    want = rtrl.cell_grads_online("truncated", cell, params, x, dh, state0)
    for k in RECURRENT[name]:
        assert np.all(got[k] == 0.0), f"{name} spatial must give exactly zero for {k}"
        want[k] = np.zeros_like(want[k])
    _assert_close(got, want, EXACT, f"{name} spatial vs truncated-zeroed")


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_cec_equals_its_truncated_graph(size):
    cell, params, x, dh, state0 = _case("lstm", {}, size)
    got = rtrl.cell_grads_online("cec", cell, params, x, dh, state0)
    oracle = _cec_oracle(params, x, dh, state0)
    _assert_close(got, oracle, EXACT, "lstm cec vs its truncated graph")
    # the same graph through the cell's own step_backward: carry c̄_{t-1}, drop h̄_{t-1}
    _, cache = cell.module.forward(params, x, state0)
    again = {k: np.zeros_like(v) for k, v in params.items()}
    dc = np.zeros_like(dh[0])
    for t in reversed(range(x.shape[0])):
        dp, _, (_, dc) = cell.module.step_backward(params, LSTMState(h=dh[t], c=dc), cache_at(cache, t))
        for k in again:
            again[k] += dp[k]
    _assert_close(again, oracle, EXACT, "lstm cec oracle vs step_backward with h̄ dropped")
    if x.shape[0] == 1:
        _assert_close(got, _bptt(cell, params, x, dh, state0), EXACT, "lstm cec vs bptt at T=1")


# ---------------------------------------------------------------------------------------------------------------------
# Structural identities, and that the approximations are approximations


@pytest.mark.parametrize("name,options", DENSE_CASES, ids=DENSE_IDS)
def test_snap1_is_exact_when_every_recurrent_block_is_diagonal(name, options):
    cell, params, x, dh, state0 = _case(name, options, (7, 2, 3, 4))
    H = cell.n_hidden
    W = params["weight_hh"].reshape(-1, H, H) * np.eye(H)                 # each gate block W_hG diagonal
    params = {**params, "weight_hh": W.reshape(params["weight_hh"].shape)}
    _assert_close(rtrl.cell_grads_online("snap1", cell, params, x, dh, state0), _bptt(cell, params, x, dh, state0),
                  EXACT, f"{name} snap1 with diagonal W_hh vs bptt")


def test_cec_is_exact_when_the_gates_have_no_recurrent_input():
    cell, params, x, dh, state0 = _case("lstm", {}, (7, 2, 3, 4))
    params = {**params, "weight_hh": np.zeros_like(params["weight_hh"])}
    _assert_close(rtrl.cell_grads_online("cec", cell, params, x, dh, state0), _bptt(cell, params, x, dh, state0),
                  EXACT, "lstm cec with W_hh = 0 vs bptt")


@pytest.mark.parametrize("name,options", CELL_CASES, ids=CELL_IDS)
def test_approximate_rules_differ_from_bptt(name, options):
    """The oracles above are not vacuous: on a T = 7, H = 4 case every approximate rule is visibly biased."""
    cell, params, x, dh, state0 = _case(name, options, (7, 2, 3, 4))
    exact = _bptt(cell, params, x, dh, state0)
    rules = ["truncated", "spatial"] + ([] if name == "lru" else ["snap1"]) + (["cec"] if name == "lstm" else [])
    for rule in rules:
        assert _worst(rtrl.cell_grads_online(rule, cell, params, x, dh, state0), exact) > 1e-3, rule


# ---------------------------------------------------------------------------------------------------------------------
# (6) memory


def _run_traces(rule, cell, params, x, state0):
    traces = rtrl.init_traces(rule, cell, params, x.shape[1])
    state = state0
    for t in range(x.shape[0]):
        traces = rtrl.update_traces(rule, cell, params, traces, x[t], state)
        state, _ = cell.module.step_forward(params, x[t], state, **cell.step_options)
    return traces


def _nbytes(traces):
    return sum(a.nbytes for a in traces.sens.values())


@pytest.mark.parametrize("name,options", CELL_CASES, ids=CELL_IDS)
def test_trace_memory_is_independent_of_T_and_snap1_is_compact(name, options):
    B, I, H = 2, 3, 4
    cell, params, x, _, state0 = _case(name, options, (13, B, I, H))
    n_params = sum(p.size for p in params.values())
    item = np.dtype(cell.state_dtype).itemsize
    R = 2 if name == "lstm" else 1
    for rule in rtrl.RULES:
        if rule == "cec" and name != "lstm":
            continue
        sizes = {_nbytes(_run_traces(rule, cell, params, x[:T], state0)) for T in (1, 4, 13)}
        assert sizes == {rtrl.trace_nbytes(rule, cell, B)}, f"{name} {rule}: trace bytes depend on T or disagree"
    snap1, full = rtrl.trace_nbytes("snap1", cell, B), rtrl.trace_nbytes("rtrl", cell, B)
    assert snap1 == R * B * n_params * item, "snap1 traces are O(#params): R·B·P entries"
    assert full == (B * n_params * item if name == "lru" else R * H * B * n_params * item), \
        "rtrl traces: B·S·P dense (S = R·H), B·P on the diagonal lru"


@pytest.mark.parametrize("name,rule", [("lstm", "rtrl"), ("gru", "snap1"), ("lru", "rtrl")])
def test_online_loop_memory_does_not_grow_with_T(name, rule):
    """cell_grads_online stores no states or caches: its peak allocation is the same for T = 4 and T = 64."""
    cell, params, x, dh, state0 = _case(name, {}, (64, 2, 3, 4))
    peaks = []
    for T in (4, 64):
        xs, dhs = x[:T].copy(), dh[:T].copy()
        tracemalloc.start()
        rtrl.cell_grads_online(rule, cell, params, xs, dhs, state0)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] <= 1.1 * peaks[0] + 4096, f"{name} {rule}: peak {peaks[0]} B at T=4 vs {peaks[1]} B at T=64"


# ---------------------------------------------------------------------------------------------------------------------
# (7) purity, dtypes, float32


@pytest.mark.parametrize("name,options", CELL_CASES, ids=CELL_IDS)
def test_no_mutation_and_fresh_traces(name, options):
    cell, params, x, dh, state0 = _case(name, options, (5, 2, 3, 4))
    for rule in rtrl.RULES:
        if rule == "cec" and name != "lstm":
            continue
        traces = _run_traces(rule, cell, params, x[:2], state0)
        snapshot = copy.deepcopy((params, x, dh, state0, traces))
        new = rtrl.update_traces(rule, cell, params, traces, x[2], state0)
        g = rtrl.trace_grads(rule, cell, params, new, dh[2])
        rtrl.cell_grads_online(rule, cell, params, x, dh, state0)
        for before, after in zip(snapshot, (params, x, dh, state0, traces)):
            for a, b in zip(_leaves(before), _leaves(after)):
                assert np.array_equal(a, b), f"{name} {rule}: an input was mutated"
        for k, a in new.sens.items():
            assert not any(np.shares_memory(a, b) for b in _leaves((params, x, state0, traces))), \
                f"{name} {rule}: new trace {k} aliases an input"
        for k, p in params.items():
            assert g[k].shape == p.shape and g[k].dtype == p.dtype, f"{name} {rule} {k}"


def _leaves(obj):
    if isinstance(obj, np.ndarray):
        return [obj]
    if isinstance(obj, dict):
        return [a for k in sorted(obj) for a in _leaves(obj[k])]
    if isinstance(obj, tuple):
        return [a for v in obj for a in _leaves(v)]
    return []


@pytest.mark.parametrize("name,options", CELL_CASES, ids=CELL_IDS)
def test_float32_agrees_with_float64(name, options):
    size = (7, 2, 3, 4)
    cell, params, x, dh, state0 = _case(name, options, size)
    cell32 = resolve_cell(name, size[2], size[3], "float32", **options)
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    s32 = type(state0)(*(s.astype(np.float32) for s in state0)) if name == "lstm" else \
        state0.astype(cell32.state_dtype)
    for rule in rtrl.RULES:
        if rule == "cec" and name != "lstm":
            continue
        want = rtrl.cell_grads_online(rule, cell, params, x, dh, state0)
        got = rtrl.cell_grads_online(rule, cell32, p32, x.astype(np.float32), dh.astype(cell32.state_dtype), s32)
        traces = rtrl.init_traces(rule, cell32, p32, 2)
        traces = rtrl.update_traces(rule, cell32, p32, traces, x[0].astype(np.float32), s32)
        assert all(a.dtype == cell32.state_dtype for a in traces.sens.values()), f"{name} {rule}: trace dtype"
        for k in params:
            assert got[k].dtype == np.float32, f"{name} {rule} {k}: dtype {got[k].dtype}"
            assert rel_error(got[k], want[k]) <= F32, f"{name} {rule} {k}: float32 vs float64 " \
                                                      f"{rel_error(got[k], want[k]):.1e}"


# ---------------------------------------------------------------------------------------------------------------------
# (8) errors and the lru alias


@pytest.mark.parametrize("bad", ["bptt", "online", "snap-1", "RTRL", ""])
def test_unknown_rule_names(bad):
    cell, params, x, dh, state0 = _case("rnn", {}, (3, 2, 3, 4))
    traces = rtrl.init_traces("rtrl", cell, params, 2)
    calls = [lambda: rtrl.init_traces(bad, cell, params, 2), lambda: rtrl.trace_nbytes(bad, cell, 2),
             lambda: rtrl.update_traces(bad, cell, params, traces, x[0], state0),
             lambda: rtrl.trace_grads(bad, cell, params, traces, dh[0]),
             lambda: rtrl.cell_grads_online(bad, cell, params, x, dh, state0)]
    for call in calls:
        with pytest.raises(UnknownNameError, match="rule"):
            call()


@pytest.mark.parametrize("name,options", [c for c in CELL_CASES if c[0] != "lstm"],
                         ids=[i for i, c in zip(CELL_IDS, CELL_CASES) if c[0] != "lstm"])
def test_cec_only_for_lstm(name, options):
    cell, params, x, dh, state0 = _case(name, options, (3, 2, 3, 4))
    for call in (lambda: rtrl.init_traces("cec", cell, params, 2), lambda: rtrl.trace_nbytes("cec", cell, 2),
                 lambda: rtrl.cell_grads_online("cec", cell, params, x, dh, state0)):
        with pytest.raises(UnsupportedError, match="only defined for the lstm"):
            call()


def test_mismatched_traces_and_bad_delta():
    cell, params, x, dh, state0 = _case("lstm", {}, (3, 2, 3, 4))
    traces = rtrl.init_traces("snap1", cell, params, 2)
    with pytest.raises(UnsupportedError, match="init_traces"):
        rtrl.update_traces("rtrl", cell, params, traces, x[0], state0)
    with pytest.raises(ShapeError, match="expected"):
        rtrl.trace_grads("snap1", cell, params, traces, np.zeros((2, 8)))     # the lstm's error is on h only


def test_lru_snap1_is_an_alias_of_rtrl():
    cell, params, x, dh, state0 = _case("lru", {"r_min": 0.9, "r_max": 0.999}, (7, 2, 3, 4))
    a, b = _run_traces("snap1", cell, params, x, state0), _run_traces("rtrl", cell, params, x, state0)
    assert a.sens.keys() == b.sens.keys() and all(np.array_equal(a.sens[k], b.sens[k]) for k in a.sens)


def test_kernel_table_holds_the_sweeps_that_rtrl_runs():
    """kernels.RTRL_SWEEPS (and the registry) hold exactly the `<cell>.<rule>` sweeps that the RTRL family runs: for
    every cell and every rule that rtrl.check_rule accepts, the kernel of rtrl.sweep_rule (snap1 on the lru runs
    lru.rtrl), and no other."""
    from refimpl.kernels import RTRL_SWEEPS
    from refimpl.registry import KERNELS
    runs = set()
    for name in CELLS:
        cell = resolve_cell(name, 2, 3)
        for rule in rtrl.RULES:
            try:
                rtrl.check_rule(rule, cell)
            except UnsupportedError:
                continue
            runs.add(f"{name}.{rtrl.sweep_rule(rule, cell)}")
    assert set(RTRL_SWEEPS) == runs
    assert {k for k in KERNELS if k.split(".")[0] in CELLS and k.split(".")[1] in rtrl.RULES} == runs
    assert "lstm.cec" in runs and not {"rnn.cec", "gru.cec", "lru.cec", "lru.snap1"} & runs
