"""FPTT's two warm-ups (refimpl/algorithms/fptt.py): the direct one (the default) against the paper's shooting one.

The direct warm-up accumulates e_{−1} = Σ_t J_0ᴴ⋯J_tᴴ dh_t without inverting anything, so on a dense cell FPTT's error
is ε·‖P⁻¹‖ (the error phase's amplification) where the shooting warm-up gives ε·cond(P)·‖P⁻¹‖
(docs/derivations/fptt.md §9). Each case below is checked against BPTT (the cell's hand-derived backward), and the
shooting warm-up's error on the same case must be far larger — or refused by the residual check (5) — which is what
the direct warm-up removes. On the lru (diagonal J) the two warm-ups agree to rounding.
"""

import numpy as np
import pytest

from refimpl import api
from refimpl.algorithms import fptt
from refimpl.algorithms.chunked import fptt_model_grads
from refimpl.errors import NumericalError, UnknownNameError, UnsupportedError
from refimpl.nn.model import bptt, make_model
from refimpl.numerics import rel_error

EXACT = 1e-7                      # the bound for the direct warm-up on these dense cases, float64


def _orthogonal(H, seed=0):
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((H, H)))[0]


def _rnn_orthogonal(p):
    """A tanh rnn whose W_hh is orthogonal (default biases and input weights): a reader's first try."""
    return {**p, "weight_hh": _orthogonal(p["weight_hh"].shape[1])}


def _lstm_output_gate(p, gain=3.0, forget_bias=3.0):
    """An lstm whose output gate reads h strongly (W_ho = gain·orthogonal) with forget gates near 1."""
    H = p["weight_hh"].shape[1]
    W, b = p["weight_hh"].copy(), p["bias_hh"].copy()
    W[3 * H:] = gain * _orthogonal(H)
    b[H:2 * H] = forget_bias
    return {**p, "weight_hh": W, "bias_hh": b}


def _case(cell, T, adjust=lambda p: p, seed=0, I=5, H=7, B=2):
    """One cell with adjusted parameters, x ~ 0.5·N(0, 1), a random dh, a zero initial state, and BPTT's gradients."""
    c, params = api.make_cell(cell, I, H, seed=seed)
    params = adjust(dict(params))
    rng = np.random.default_rng(seed + 1)
    x, dh = 0.5 * rng.standard_normal((T, B, I)), rng.standard_normal((T, B, H))
    state0 = c.zero_state(B)
    _, cache = c.module.forward(params, x, state0, **c.step_options)
    return c, params, x, dh, state0, c.module.backward(params, dh, cache, **c.step_options)


def _error(got, want):
    keys = sorted(want)
    return rel_error(np.concatenate([np.ravel(got[k]) for k in keys]),
                     np.concatenate([np.ravel(want[k]) for k in keys]))


# (cell, T, parameters): the rnn (T = 23); a gru at its default initialisation; an lstm whose output gate reads
# h strongly. The shooting warm-up is ≥ 1e-5 off (or refused) on each; the direct one within EXACT.
DENSE_CASES = [("rnn", 23, _rnn_orthogonal), ("gru", 18, lambda p: p), ("lstm", 10, _lstm_output_gate)]


@pytest.mark.parametrize("cell,T,adjust", DENSE_CASES, ids=[c[0] for c in DENSE_CASES])
def test_direct_warmup_is_exact_where_shooting_is_not(cell, T, adjust):
    c, params, x, dh, state0, want = _case(cell, T, adjust)
    direct = fptt.fptt_cell_grads(c, params, x, dh, state0)                        # the default, checked by (5)
    shooting = fptt.fptt_cell_grads(c, params, x, dh, state0, warmup="shooting", check=False)
    assert set(direct) == set(want)
    assert _error(direct, want) <= EXACT, _error(direct, want)
    assert _error(shooting, want) >= 100 * max(_error(direct, want), 1e-12), (_error(shooting, want),
                                                                                _error(direct, want))


def test_no_longer_refused_where_the_direct_residual_is_small():
    """The gru at T = 18: the shooting warm-up's residual fails (5), the direct one's passes and is exact."""
    c, params, x, dh, state0, want = _case("gru", 18)
    with pytest.raises(NumericalError, match=r"FPTT lost the error signal.*σ_min\(J_0ᴴ⋯J_T−1ᴴ\) = .*T=18, "
                                             r"float64 carriers.*use warm-up 'direct'"):
        fptt.fptt_cell_grads(c, params, x, dh, state0, warmup="shooting")
    got = api.cell_grads(c, params, x, dh, algorithm="fptt")                        # the API's default: direct
    assert _error(got, want) <= EXACT


def test_refusal_names_the_conditioning_of_a_dense_cell():
    """Past what the direct warm-up can do (the rnn case at T = 60), (5) refuses, naming σ_min of the product, T and
    the precision, and does not suggest the warm-up already in use."""
    c, params, x, dh, state0, _ = _case("rnn", 60, _rnn_orthogonal)
    with pytest.raises(NumericalError) as info:
        fptt.fptt_cell_grads(c, params, x, dh, state0)
    message = str(info.value)
    assert "σ_min(J_0ᴴ⋯J_T−1ᴴ) = " in message and "T=60" in message and "float64 carriers" in message
    assert "warm-up 'direct'" not in message
    gain = float(message.split("σ_min(J_0ᴴ⋯J_T−1ᴴ) = ")[1].split(",")[0])
    J = [c.module.state_jacobian(params, x[t], s, **c.step_options)
         for t, s in enumerate(_states(c, params, x, state0))]
    product = np.eye(7)
    for t in range(60):                                                             # J_0ᴴ⋯J_59ᴴ, batch row 0…1
        product = product @ np.swapaxes(J[t], -1, -2)
    assert gain == pytest.approx(np.linalg.svd(product, compute_uv=False).min(), rel=1e-2)


def _states(c, params, x, state0):
    """h_{−1}, …, h_{T−2}: the state before each step."""
    states, s = [], state0
    for t in range(x.shape[0]):
        states.append(s)
        s, _ = c.module.step_forward(params, x[t], s, **c.step_options)
    return states


@pytest.mark.parametrize("r_min", [0.5, 0.9])
def test_the_warmups_agree_on_the_lru(r_min):
    """A diagonal Jacobian: both warm-ups sum the same products term by term (the shooting one only divides and
    multiplies back by the same |λ|^t), so e_{−1} agrees to rounding even where |λ|^-T = 1e12 (r_min 0.5); the error
    phase then amplifies that rounding by up to |λ|^-T, so the gradients agree to rounding where it is small."""
    c, params = api.make_cell("lru", 3, 6, seed=4, r_min=r_min, r_max=0.99)
    rng = np.random.default_rng(5)
    T, B = 40, 2
    x = rng.standard_normal((T, B, 3))
    dh = rng.standard_normal((T, B, 6)) + 1j * rng.standard_normal((T, B, 6))
    h0 = c.zero_state(B)
    _, direct = fptt.fptt_warmup(c, params, x, dh, h0)
    _, shooting = fptt.fptt_shooting(c, params, x, dh, h0)
    assert rel_error(fptt.start_error(c, direct), fptt.start_error(c, shooting)) <= 1e-12
    assert rel_error(direct["Q"], shooting["P"]) <= 1e-14                       # the same product, formed alike
    a = fptt.fptt_cell_grads(c, params, x, dh, h0, check=False)
    b = fptt.fptt_cell_grads(c, params, x, dh, h0, warmup="shooting", check=False)
    amplification = float(np.abs(direct["Q"]).min()) ** -1
    assert all(rel_error(a[k], b[k]) <= 1e-14 * amplification for k in a), amplification


@pytest.mark.parametrize("cell,opts", [("rnn", {}), ("lstm", {}), ("lru", {"r_min": 0.9, "r_max": 0.99})])
def test_direct_warmup_in_chunks_equals_one_sweep(cell, opts):
    """The direct warm-up's carry {Q, e} hands a stream on exactly: any cut gives the uncut sweep's carry."""
    c, params = api.make_cell(cell, 3, 4, seed=1, **opts)
    params = fptt.well_conditioned(cell, params)
    rng = np.random.default_rng(2)
    T, B = 11, 2
    x = 0.5 * rng.standard_normal((T, B, 3))
    dh = rng.standard_normal((T, B, 4)).astype(c.state_dtype)
    state0 = c.zero_state(B)
    _, whole = fptt.fptt_warmup(c, params, x, dh, state0)
    state, carry = state0, None
    for t0, t1 in [(0, 1), (1, 5), (5, 11)]:
        state, carry = fptt.fptt_warmup(c, params, x[t0:t1], dh[t0:t1], state, carry)
    for k in ("Q", "e"):
        assert rel_error(carry[k], whole[k]) <= 1e-13


@pytest.mark.parametrize("layers", [1, 2])
def test_model_warmups_through_the_api(layers):
    """A stack (L+1 passes, each layer's dh from the error phase above it within each step): both warm-ups equal BPTT
    where the product is well conditioned; the option is the API's `warmup`."""
    model, params = make_model("gru", 3, 4, 2, layers=layers, seed=1)
    for l in range(layers):
        params = fptt.well_conditioned("gru", params, f"layers.{l}.cell.", l)
    rng = np.random.default_rng(3)
    x, y = 0.5 * rng.standard_normal((9, 2, 3)), rng.standard_normal((9, 2, 2))
    _, want = bptt(model, params, x, y, loss="mse")
    for warmup in fptt.WARMUPS:
        _, got = api.model_grads(model, params, x, y, loss="mse", algorithm="fptt", warmup=warmup)
        assert all(rel_error(got[k], want[k]) <= 1e-8 for k in want), warmup


def test_model_diagnostics_report_the_residual_and_gain():
    """diagnostics: per layer, the residual (5) and σ_min of the layer's Jacobian product (from its warm-up)."""
    model, params = make_model("lru", 3, 4, 2, layers=2, r_min=0.8, r_max=0.9, seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 2, 3)), rng.standard_normal((20, 2, 2))
    diagnostics = {}
    fptt_model_grads(model, params, x, y, "mse", diagnostics=diagnostics)
    assert set(diagnostics) == {0, 1}
    for l in (0, 1):
        lam = np.abs(np.exp(-np.exp(params[f"layers.{l}.cell.nu_log"])))           # |λ| = exp(−exp(ν))
        assert diagnostics[l]["gain"] == pytest.approx(lam.min() ** 20, rel=1e-10)
        assert 0 <= diagnostics[l]["residual"] < 1e-8


def test_unknown_warmup_and_fptt1_refuse_it():
    c, params = api.make_cell("rnn", 3, 4)
    rng = np.random.default_rng(0)
    x, dh = rng.standard_normal((4, 1, 3)), rng.standard_normal((4, 1, 4))
    with pytest.raises(UnsupportedError, match="warm-up 'newton' is unknown; use 'direct'"):
        api.cell_grads(c, params, x, dh, algorithm="fptt", warmup="newton")
    with pytest.raises(UnknownNameError, match="warmup"):
        api.cell_grads(c, params, x, dh, algorithm="fptt1", warmup="direct")    # fptt1 has no warm-up
