"""Every cell against finite differences, generically over refimpl.cells.CELLS (DESIGN.md §7: BPTT vs FD ≤ 1e-6).

For each cell: the BPTT gradients of every parameter, x and the initial state; the state Jacobian (7-style
equations of each module); the immediate parameter derivatives; step/sequence consistency; float32 vs float64;
that nothing mutates its inputs; and the state contract of refimpl/cells/__init__.py.
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refimpl.cells import CELLS, resolve_cell
from refimpl.numerics import central_differences, extended, rel_error

CELL_CASES = [("rnn", {"nonlinearity": "tanh"}), ("rnn", {"nonlinearity": "linear"}),
              ("gru", {}), ("lstm", {}), ("lru", {}), ("lru", {"r_min": 0.9, "r_max": 0.999})]
IDS = [f"{n}-{'-'.join(map(str, o.values())) or 'default'}" for n, o in CELL_CASES]


def _options(mod, options):
    return {k: v for k, v in {**mod.OPTIONS, **options}.items() if k in mod.STEP_OPTIONS}


def _setup(name, options, rng, T=4, B=2, I=3, H=3, dtype=np.float64):
    mod = CELLS[name]
    params = mod.init_params(I, H, rng, dtype, **{**mod.OPTIONS, **options})
    x = rng.standard_normal((T, B, I)).astype(dtype)
    state0 = mod.random_state(rng, B, H, dtype)
    return mod, params, x, state0, _options(mod, options)


def _flat(state):
    """The state as one (B, S) array: h, or [h, c] for the lstm."""
    return np.concatenate(list(state), axis=-1) if isinstance(state, tuple) else state


def _state_inputs(state0):
    return dict(zip(("h0", "c0"), state0)) if isinstance(state0, tuple) else {"h0": state0}


def _rebuild_state(state0, values):
    return type(state0)(values["h0"], values["c0"]) if isinstance(state0, tuple) else values["h0"]


@pytest.mark.parametrize("name,options", CELL_CASES, ids=IDS)
def test_bptt_matches_finite_differences(name, options, rng):
    mod, params, x, state0, opts = _setup(name, options, rng)
    h, cache = mod.forward(params, x, state0, **opts)
    dh = rng.standard_normal(h.shape) + (1j * rng.standard_normal(h.shape) if np.iscomplexobj(h) else 0)

    def loss(values):
        p = {k: values[k] for k in params}
        h_, _ = mod.forward(p, values["x"], _rebuild_state(state0, values), **opts)
        return float(np.sum(np.real(np.conj(dh) * h_)))      # ∂loss/∂h_t = dh_t (complex convention, DESIGN §4)

    inputs = {**params, "x": x, **_state_inputs(state0)}
    numeric = central_differences(loss, inputs)
    grads = mod.backward(params, dh, cache, **opts)
    assert set(grads) == set(inputs), f"backward must return every parameter, x and {mod.GRAD_STATE_KEYS}"
    for k in inputs:
        assert grads[k].shape == inputs[k].shape and grads[k].dtype == inputs[k].dtype, k
        err = rel_error(grads[k], numeric[k])
        assert err <= 1e-6, f"{name} d{k}: BPTT vs FD relative error {err:.2e}"


@pytest.mark.parametrize("name,options", CELL_CASES, ids=IDS)
def test_state_jacobian_matches_finite_differences(name, options, rng):
    mod, params, x, state0, opts = _setup(name, options, rng)
    J = mod.state_jacobian(params, x[0], state0, **opts)
    inputs = _state_inputs(state0)
    S = _flat(state0).shape[-1]
    B = x.shape[1]
    # FD of every output unit of the next state with respect to every input unit of the state
    dense = np.zeros((B, S, S), dtype=np.result_type(_flat(state0), J))
    dense_im = np.zeros_like(dense)
    for k in range(S):
        def out_k(values, k=k):
            nxt, _ = mod.step_forward(params, x[0], _rebuild_state(state0, values), **opts)
            return _flat(nxt)[:, k]
        for b in range(B):
            g = central_differences(lambda v: float(np.real(out_k(v)[b])), inputs)
            gi = central_differences(lambda v: float(np.imag(out_k(v)[b])), inputs) if np.iscomplexobj(dense) else None
            row = np.concatenate([g[key][b] for key in inputs])               # ∂Re out_k / ∂(Re s + i Im s)
            dense[b, k] = np.real(row) if gi is None else np.real(row) + 1j * np.real(
                np.concatenate([gi[key][b] for key in inputs]))
            if gi is not None:
                dense_im[b, k] = np.imag(row) + 1j * np.imag(np.concatenate([gi[key][b] for key in inputs]))
    if name == "lru":
        # J is diagonal and holomorphic: ∂h'/∂Re h = diag(λ), ∂h'/∂Im h = i·diag(λ)
        assert J.shape == (B, S)
        assert rel_error(np.einsum("bk,kj->bkj", J, np.eye(S)), dense) <= 1e-8
        assert rel_error(np.einsum("bk,kj->bkj", 1j * J, np.eye(S)), dense_im) <= 1e-8
    else:
        assert J.shape == (B, S, S)
        assert rel_error(J, dense) <= 1e-8, f"{name}: state Jacobian vs FD"


@pytest.mark.parametrize("name,options", CELL_CASES, ids=IDS)
def test_param_jacobian_matches_finite_differences(name, options, rng):
    mod, params, x, state0, opts = _setup(name, options, rng)
    jac = mod.param_jacobian(params, x[0], state0, **opts)
    assert set(jac) == set(params)
    S = _flat(state0).shape[-1]
    B = x.shape[1]
    for pname, p in params.items():
        numeric = np.zeros((B, S) + p.shape, dtype=_flat(state0).dtype)
        for k in range(S):
            for b in range(B):
                def f(values, part):
                    nxt, _ = mod.step_forward({**params, pname: values[pname]}, x[0], state0, **opts)
                    return float(part(_flat(nxt)[b, k]))
                g = central_differences(lambda v: f(v, np.real), {pname: p})[pname]
                if np.iscomplexobj(numeric):
                    g = g + 1j * central_differences(lambda v: f(v, np.imag), {pname: p})[pname]
                numeric[b, k] = g
        got = jac[pname]
        if name == "lru":   # compact diagonal form: entry [b, k, ...] is ∂h'_k/∂p[k, ...]
            got = np.einsum("bk...,kj->bkj...", got, np.eye(S))
        assert got.shape == numeric.shape, pname
        assert rel_error(got, numeric) <= 1e-7, f"{name}: ∂state/∂{pname} vs FD"


@pytest.mark.parametrize("name,options", CELL_CASES, ids=IDS)
def test_sequence_equals_steps_and_inputs_untouched(name, options, rng):
    mod, params, x, state0, opts = _setup(name, options, rng, T=5)
    before = {k: v.copy() for k, v in {**params, "x": x, **_state_inputs(state0)}.items()}
    h, cache = mod.forward(params, x, state0, **opts)
    state = state0
    for t in range(x.shape[0]):
        state, _ = mod.step_forward(params, x[t], state, **opts)
        h_t = state[0] if isinstance(state, tuple) else state
        np.testing.assert_array_equal(h[t], h_t)
    dh = np.ones_like(h)
    dh_before = dh.copy()
    cache_before = [f.copy() for f in cache]
    mod.backward(params, dh, cache, **opts)
    for k, v in {**params, "x": x, **_state_inputs(state0)}.items():
        np.testing.assert_array_equal(v, before[k], err_msg=f"{k} was mutated")
    np.testing.assert_array_equal(dh, dh_before)
    for a, b in zip(cache, cache_before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name,options", CELL_CASES, ids=IDS)
def test_float32_agrees_with_float64(name, options):
    rng64, rng32 = np.random.default_rng(7), np.random.default_rng(7)
    mod, p64, x64, s64, opts = _setup(name, options, rng64, T=20, B=3, I=4, H=5)
    _, p32, x32, s32, _ = _setup(name, options, rng32, T=20, B=3, I=4, H=5, dtype=np.float32)
    h64, c64 = mod.forward(p64, x64, s64, **opts)
    h32, c32 = mod.forward(p32, x32, s32, **opts)
    assert h32.dtype == (np.complex64 if name == "lru" else np.float32)
    dh64 = np.random.default_rng(3).standard_normal(h64.shape).astype(h64.dtype)
    g64 = mod.backward(p64, dh64, c64, **opts)
    g32 = mod.backward(p32, dh64.astype(h32.dtype), c32, **opts)
    # float32 inputs are rounded copies of the float64 ones: agreement to float32 precision (~1e-7 · growth over T)
    assert rel_error(h32, h64) <= 1e-5
    for k in g64:
        assert g32[k].dtype in (np.float32, np.complex64), f"{name} d{k} came back as {g32[k].dtype}"
        assert rel_error(g32[k], g64[k]) <= 1e-4, f"{name} d{k}: float32 vs float64"


@pytest.mark.parametrize("name,options", CELL_CASES, ids=IDS)
def test_jacobians_rebuild_bptt(name, options, rng):
    """Structural identity: the adjoint recursion written with the cell's own Jacobians,
    s̄_{t-1} = J_tᴴ s̄_t + ds_{t-1},  ∂L/∂θ = Σ_t Re Σ_k conj(∂s_t[k]/∂θ) s̄_t[k],
    rebuilds the BPTT gradients of `backward` to float64 precision (an independent path through eqs. (7)-(8)-style
    derivatives instead of the step_backward adjoints)."""
    mod, params, x, state0, opts = _setup(name, options, rng, T=6)
    h, cache = mod.forward(params, x, state0, **opts)
    dh = rng.standard_normal(h.shape) + (1j * rng.standard_normal(h.shape) if np.iscomplexobj(h) else 0)
    want = mod.backward(params, dh, cache, **opts)

    T, B = x.shape[:2]
    states = [state0]
    for t in range(T):
        states.append(mod.step_forward(params, x[t], states[-1], **opts)[0])
    S = _flat(state0).shape[-1]
    ds = np.zeros((T, B, S), dtype=dh.dtype)
    ds[:, :, :dh.shape[-1]] = dh                     # the instantaneous adjoint reaches h only (not the lstm's c)
    got = {k: np.zeros_like(v) for k, v in params.items()}
    s_bar = np.zeros((B, S), dtype=dh.dtype)
    for t in reversed(range(T)):
        s_bar = s_bar + ds[t]
        P = mod.param_jacobian(params, x[t], states[t], **opts)
        for k, p in P.items():
            if name == "lru":                       # compact diagonal form: unit k only feeds row k
                contrib = np.real(np.conj(p) * s_bar.reshape(s_bar.shape + (1,) * (p.ndim - 2)))
            else:
                contrib = np.einsum("bk...,bk->b...", p, s_bar)
            got[k] += contrib.sum(0)
        J = mod.state_jacobian(params, x[t], states[t], **opts)
        s_bar = np.conj(J) * s_bar if name == "lru" else np.einsum("bks,bk->bs", J, s_bar)
    for k in params:
        assert rel_error(got[k], want[k]) <= 1e-12, f"{name} d{k}: Jacobian recursion vs backward"
    assert rel_error(s_bar[:, :dh.shape[-1]], want["h0"]) <= 1e-12


@pytest.mark.parametrize("name,options", CELL_CASES, ids=IDS)
def test_state_contract(name, options, rng):
    """The state contract on a resolved Cell: a state from its parts and back, the flattened state [h; c] with
    S = R·H columns, its dtype (complex for a complex state), and h as the part the layer outputs."""
    cell = resolve_cell(name, 3, 4, **options)
    state = cell.random_state(rng, 2)
    parts = tuple(state) if isinstance(state, tuple) else (state,)
    assert len(parts) == len(cell.grad_state_keys) == cell.state_rows
    rebuilt = cell.state_from_parts(*parts)
    assert type(rebuilt) is type(state)
    assert all(a is b for a, b in zip(tuple(rebuilt) if isinstance(rebuilt, tuple) else (rebuilt,), parts))
    flat = cell.flatten_state(state)
    assert flat.shape == (2, cell.state_size) and cell.state_size == cell.state_rows * 4
    assert np.array_equal(flat, np.concatenate(parts, axis=-1))                  # [h; c] in the order of the parts
    assert np.array_equal(_flat(cell.unflatten_state(flat)), flat)
    assert flat.dtype == cell.state_dtype and np.iscomplexobj(flat) == cell.complex_state
    assert cell.state_h(state) is parts[0]


@pytest.mark.parametrize("name,options", CELL_CASES, ids=IDS)
def test_bounded_state_says_whether_a_driven_state_saturates(name, options, rng):
    """bounded_state: under a huge input drive the state stays in [−1, 1] where something saturates it (tanh, the
    gates), and leaves it where the recurrence is linear (rnn 'linear', the lru)."""
    cell = resolve_cell(name, 3, 4, **options)
    params = cell.module.init_params(3, 4, rng, cell.dtype, **cell.options)
    x = 1e3 * rng.standard_normal((20, 2, 3))
    h, _ = cell.module.forward(params, x, cell.zero_state(2), **cell.step_options)
    assert bool(np.max(np.abs(h)) <= 1.0) == cell.bounded_state


@settings(max_examples=25, deadline=None)
@given(case=st.sampled_from(CELL_CASES), T=st.integers(1, 4), B=st.integers(1, 3), I=st.integers(1, 3),
       H=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_bptt_matches_finite_differences_at_random_sizes(case, T, B, I, H, seed):
    """Property test: any small (T, B, I, H) — including the size-1 axes that break broadcasting — and any seed."""
    name, options = case
    rng = np.random.default_rng(seed)
    mod, params, x, state0, opts = _setup(name, options, rng, T=T, B=B, I=I, H=H)
    h, cache = mod.forward(params, x, state0, **opts)
    assert h.shape == (T, B, H)
    dh = rng.standard_normal(h.shape) + (1j * rng.standard_normal(h.shape) if np.iscomplexobj(h) else 0)
    grads = mod.backward(params, dh, cache, **opts)

    def loss(values):
        h_, _ = mod.forward({k: values[k] for k in params}, values["x"], _rebuild_state(state0, values), **opts)
        return np.sum(np.real(np.conj(dh) * h_))

    inputs = {**params, "x": x, **_state_inputs(state0)}
    numeric = central_differences(loss, {k: extended(v) for k, v in inputs.items()})
    for k in inputs:
        assert rel_error(grads[k], numeric[k]) <= 1e-6, f"{name} T={T} B={B} I={I} H={H} d{k}"


@pytest.mark.parametrize("name,options", CELL_CASES, ids=IDS)
def test_step_input_backward_matches_finite_differences(name, options, rng):
    """x̄_t = (∂s_t/∂x_t)ᴴ s̄_t alone (what an online rule sends to the layer below) against central differences of
    ⟨s̄_t, s_t(x_t)⟩ (the real part: DESIGN.md §4), and equal to step_backward's x̄."""
    mod, params, x, state0, opts = _setup(name, options, rng)
    nxt, cache = mod.step_forward(params, x[0], state0, **opts)
    dnext = mod.random_state(rng, x.shape[1], 3, x.dtype)             # a state-shaped adjoint (H = 3, _setup's)
    assert np.iscomplexobj(_flat(dnext)) == np.iscomplexobj(_flat(nxt))
    got = mod.step_input_backward(params, dnext, cache, **opts)

    def pairing(values):
        s, _ = mod.step_forward(params, values["x"], state0, **opts)
        return float(np.real(np.sum(np.conj(_flat(dnext)) * _flat(s))))
    numeric = central_differences(pairing, {"x": x[0]})["x"]
    assert rel_error(got, numeric) <= 1e-7
    assert np.array_equal(got, mod.step_backward(params, dnext, cache, **opts)[1])
