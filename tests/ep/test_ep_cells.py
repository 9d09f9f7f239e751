"""Fixed-point learning for the gated cells (refimpl/ep/cells.py, docs/derivations/ep_cells.md).

RBP == BPTT through a long converged free phase (float64, ≤ 1e-8) and == central differences of L(h*(θ));
EP == RBP as β → 0 for symmetric energy-derived dynamics, with an error falling linearly in β; for the gated cells
EP is only REPORTED against RBP (and checked against its own β → 0 limit, eq. 10); bad input gives clear errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from refimpl.cells import resolve_cell
from refimpl.errors import NumericalError, UnsupportedError
from refimpl.ep.cells import (CELLS_EP, alignment, bptt_fixed_point_grads, contractive_problem, ep_cell_grads,
                              fixed_point, rbp_grads, vf_limit_grads)
from refimpl.numerics import central_differences, rel_error

T_LONG = 300          # contractive problems (‖J‖ ≲ 0.9) reach residual ~1e-16 well before this


@pytest.mark.parametrize("name", CELLS_EP)
def test_rbp_equals_bptt_through_converged_free_phase(name):
    cell, params, readout, x, y = contractive_problem(name, seed=3)
    _, residual = fixed_point(cell, params, x, T=T_LONG)
    assert residual < 1e-13
    loss_rbp, g_rbp = rbp_grads(cell, params, readout, x, y, T=T_LONG)
    loss_bptt, g_bptt = bptt_fixed_point_grads(cell, params, readout, x, y, T=T_LONG)
    assert set(g_rbp) == set(g_bptt) == set(params) | {"x", "readout.weight", "readout.bias"}
    assert loss_rbp == pytest.approx(loss_bptt, rel=1e-12)
    for k in g_rbp:
        assert g_rbp[k].shape == g_bptt[k].shape and g_rbp[k].dtype == g_bptt[k].dtype, k
        assert rel_error(g_rbp[k], g_bptt[k]) <= 1e-8, k


@pytest.mark.parametrize("name", CELLS_EP)
def test_rbp_matches_finite_differences_of_fixed_point_loss(name):
    cell, params, readout, x, y = contractive_problem(name, seed=5, H=3, I=2, O=2, B=2)
    T = 200
    _, g = rbp_grads(cell, params, readout, x, y, T=T)

    def loss_of(inputs):
        p = {k: inputs[k] for k in params}
        r = {"weight": inputs["readout.weight"], "bias": inputs["readout.bias"]}
        state, _ = fixed_point(cell, p, inputs["x"], T=T)
        v = np.concatenate([state.h, state.c], -1) if name == "lstm" else state
        phi = np.concatenate([v.real, v.imag], -1) if name == "lru" else v[:, :cell.n_hidden]
        err = phi @ r["weight"].T + r["bias"] - y
        return 0.5 * float(np.sum(err * err)) / x.shape[0]

    inputs = {**params, "x": x, "readout.weight": readout["weight"], "readout.bias": readout["bias"]}
    fd = central_differences(loss_of, inputs, eps=1e-6)
    for k in fd:
        assert rel_error(g[k], fd[k]) <= 1e-6, k


def _ep_error(beta, seed=0, name="rnn", symmetric=True, against=rbp_grads):
    cell, params, readout, x, y = contractive_problem(name, seed, symmetric=symmetric)
    _, ref = against(cell, params, readout, x, y, T=T_LONG)
    _, ep = ep_cell_grads(cell, params, readout, x, y, T=T_LONG, K=T_LONG, beta=beta)
    keys = list(params) + ["x"]
    flat = lambda g: np.concatenate([g[k].ravel() for k in keys])   # noqa: E731
    return rel_error(flat(ep), flat(ref))


def test_ep_equals_rbp_as_beta_to_zero_for_symmetric_energy_dynamics():
    """Linear rnn, symmetric W_hh: f = ∂Φ/∂h, J* = W_hh symmetric → EP → RBP, error O(β)."""
    errs = [_ep_error(b) for b in (1e-2, 1e-3, 1e-4)]
    assert errs[0] < 1e-2
    for e_big, e_small in zip(errs, errs[1:]):
        assert 5.0 < e_big / e_small < 20.0            # ~10× per decade of β: first order in β
    assert errs[-1] < 1e-4


@pytest.mark.parametrize("name", CELLS_EP)
def test_ep_converges_to_its_mirrored_limit_eq10(name):
    """For every cell EP → (∂f/∂θ)ᵀ(I − J*)⁻¹g (eq. 10) linearly in β — the explanation of the misalignment."""
    e2, e3 = (_ep_error(b, seed=1, name=name, symmetric=False, against=vf_limit_grads) for b in (1e-2, 1e-3))
    assert e3 < 1e-3 and 5.0 < e2 / e3 < 20.0


def test_alignment_is_reported_and_symmetric_case_is_tighter():
    sym = alignment("rnn", symmetric=True, seeds=(0,), betas=(1e-3,))
    assert sym[0]["cosine"] > 1 - 1e-6
    for name in CELLS_EP:
        rows = alignment(name, seeds=(0,), betas=(1e-3,))
        assert set(rows[0]) >= {"cell", "beta", "seed", "cosine", "rel_error"}
        assert all(math.isfinite(r["cosine"]) and -1.0 <= r["cosine"] <= 1.0 for r in rows)
        assert sym[0]["rel_error"] < min(r["rel_error"] for r in rows)   # J* not symmetric: EP ≠ RBP


def test_sequence_input_is_refused():
    cell, params, readout, x, y = contractive_problem("gru", 0)
    seq = np.stack([x, x + 1.0])
    for fn in (lambda: fixed_point(cell, params, seq, T=10),
               lambda: rbp_grads(cell, params, readout, seq, y, T=10),
               lambda: ep_cell_grads(cell, params, readout, seq, y, T=10, K=10, beta=1e-2)):
        with pytest.raises(UnsupportedError, match="STATIC input"):
            fn()
    # a time axis whose steps are all equal is the static input
    _, g_seq = rbp_grads(cell, params, readout, np.stack([x, x, x]), y, T=T_LONG)
    _, g = rbp_grads(cell, params, readout, x, y, T=T_LONG)
    assert rel_error(g_seq["weight_hh"], g["weight_hh"]) == 0.0


def test_non_convergence_is_an_error():
    cell = resolve_cell("rnn", 2, 3)
    rng = np.random.default_rng(0)
    params = cell.module.init_params(2, 3, rng, cell.dtype)
    params["weight_hh"] = -3.0 * np.eye(3)                # tanh(−3h + c): a period-2 oscillation, no convergence
    params["bias_ih"] = np.zeros(3)
    params["bias_hh"] = np.zeros(3)
    x = np.zeros((2, 2))
    readout = {"weight": np.ones((1, 3)), "bias": np.zeros(1)}
    y = np.zeros((2, 1))
    h0 = 0.5 * np.ones((2, 3))
    _, residual = fixed_point(cell, params, x, T=50, h0=h0)
    assert residual > 0.1
    params["bias_ih"] = 0.3 * np.ones(3)
    with pytest.raises(NumericalError, match="did not converge"):
        rbp_grads(cell, params, readout, x + 0.0, y, T=50)
    with pytest.raises(NumericalError, match="did not converge"):
        ep_cell_grads(cell, params, readout, x, y, T=50, K=10, beta=1e-2)
    lin = resolve_cell("rnn", 2, 3, nonlinearity="linear")
    params_lin = {**params, "weight_hh": 1.5 * np.eye(3)}   # spectral radius 1.5: the state blows up
    with pytest.raises(NumericalError, match="non-finite"):
        fixed_point(lin, params_lin, np.ones((2, 2)), T=5000)


def test_no_mutation_of_inputs():
    cell, params, readout, x, y = contractive_problem("lstm", 0)
    copies = [{k: v.copy() for k, v in d.items()} for d in (params, readout)] + [x.copy(), y.copy()]
    ep_cell_grads(cell, params, readout, x, y, T=100, K=100, beta=1e-2)
    rbp_grads(cell, params, readout, x, y, T=100)
    for k in params:
        assert np.array_equal(params[k], copies[0][k])
    for k in readout:
        assert np.array_equal(readout[k], copies[1][k])
    assert np.array_equal(x, copies[2]) and np.array_equal(y, copies[3])
