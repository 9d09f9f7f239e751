"""Equilibrium propagation (refimpl/ep/networks.py): BPTT vs finite differences, the GDU property, metrics, errors,
dtypes."""

import dataclasses

import numpy as np
import pytest

from refimpl.ep import networks as ep
from refimpl.errors import UnknownNameError, UnsupportedError
from refimpl.numerics import central_differences, cosine, extended, rel_error

from .precision import check_float32_agrees

# (kind, sizes, options): every network kind, clamped and not, both dt regimes of the prototypical model
FD_CASES = [
    ("energy", (3, 4, 5, 2), {}),                                             # sigm, dt 0.2, clamp (the defaults)
    ("energy", (3, 4, 2), {"clamp": False, "activation": "tanh"}),
    ("prototypical", (3, 4, 5, 2), {}),                                       # dt = 1
    ("prototypical", (3, 4, 2), {"dt": 0.3, "activation": "tanh"}),
    ("toy", (3, 4, 5, 2), {}),
]


def _data(net, rng, B=2):
    x = rng.uniform(0.0, 1.0, (B, net.sizes[0]))
    y = np.eye(net.sizes[-1])[rng.integers(0, net.sizes[-1], B)]
    return x, y


def _loss(s_out, y):
    """L = (1/2B) Σ_b ‖s_out − y‖², eq. (7), written here for the finite-difference oracle (in its precision)."""
    return 0.5 * np.sum((s_out - y) ** 2) / s_out.shape[0]


def _oracle_net(net):
    """The same network evaluated in extended precision (the FD oracle, numerics.extended)."""
    return dataclasses.replace(net, dtype=str(extended(np.zeros(1)).dtype))


@pytest.mark.parametrize("K", [None, 3])
@pytest.mark.parametrize("kind,sizes,opts", FD_CASES)
def test_bptt_matches_finite_differences(kind, sizes, opts, K, rng):
    net, params = ep.make_ep_net(kind, sizes, seed=1, **opts)
    x, y = _data(net, rng)
    T = 7
    before = {k: v.copy() for k, v in params.items()}
    loss, grads = ep.bptt_grads(net, params, x, y, T=T, K=K)
    assert all(np.array_equal(before[k], params[k]) for k in params)             # no mutation
    onet = _oracle_net(net)
    xe, ye = extended(x), extended(y)
    pe = {k: extended(v) for k, v in params.items()}
    if K is None:
        def f(q):                                                                 # L after T free steps from 0
            return _loss(ep.free_phase(onet, q, xe, T)[-1], ye)
    else:
        s0 = ep.free_phase(onet, pe, xe, T - K)                                   # the truncated graph: s_{T−K} fixed
        def f(q):
            return _loss(ep.free_phase(onet, q, xe, K, init=s0)[-1], ye)
    assert loss == pytest.approx(float(f(pe)), rel=1e-12)
    fd = central_differences(f, pe)
    for k in params:
        assert rel_error(grads[k], fd[k].astype(np.float64)) <= 1e-6, k


def _gdu_errors(curves):
    def cat(a):
        return np.concatenate([v.ravel() for v in a])
    neurons = rel_error(cat(curves["ep_neurons"]), cat(curves["bptt_neurons"]))
    params = rel_error(cat(curves["ep_params"].values()), cat(curves["bptt_params"].values()))
    return neurons, params


def _converged(net, params, x, T):
    s = ep.free_phase(net, params, x, T)
    s_next = ep.free_phase(net, params, x, 1, init=s)
    return max(float(np.abs(a - b).max()) for a, b in zip(s, s_next))


BETAS = (1e-2, 1e-3, 1e-4)


def test_gdu_toy_model_error_linear_in_beta(rng):
    """Toy model (true energy gradient, no clamp), converged: per-step EP → per-step BPTT with an O(β) error."""
    net, params = ep.make_ep_net("toy", seed=0)
    assert net.sizes == (5, 50, 10) and net.activation == "tanh" and net.dt == 0.08 and not net.clamp
    assert "Wx.2" in params and len(params) == 5
    x, y = _data(net, rng, B=4)
    T, K = 1500, 20
    assert _converged(net, params, x, T) < 1e-14
    errs = [_gdu_errors(ep.gdu_curves(net, params, x, y, T=T, K=K, beta=b)) for b in BETAS]
    for big, small in zip(errs, errs[1:]):
        assert small[0] * 5 <= big[0] and small[1] * 5 <= big[1]                  # each decade: ≥ 5× smaller
    assert max(errs[-1]) <= 1e-3


def test_gdu_cumulative_equals_ep_update_and_truncated_bptt(rng):
    """Cumulative curves end at the telescoped EP update (10) and at BPTT truncated to K steps (13)."""
    net, params = ep.make_ep_net("toy", seed=0)
    x, y = _data(net, rng, B=3)
    T, K, beta = 300, 6, 1e-3
    curves = ep.gdu_curves(net, params, x, y, T=T, K=K, beta=beta)
    loss, g_ep, _ = ep.ep_grads(net, params, x, y, T=T, K=K, beta=beta)
    loss_b, g_bptt = ep.bptt_grads(net, params, x, y, T=T, K=K)
    assert loss == pytest.approx(loss_b, rel=1e-14) and loss == pytest.approx(curves["loss"], rel=1e-14)
    for k in params:
        assert rel_error(curves["ep_params_cumulative"][k][-1], g_ep[k]) <= 1e-8
        assert rel_error(curves["bptt_params_cumulative"][k][-1], g_bptt[k]) <= 1e-12


def test_gdu_energy_network_no_clamp_output_layer_breaks_gdu(rng):
    """Energy network (EPcont), no clamp, converged: its output layer lacks ρ' (eq. 3), so the dynamics is not an
    energy gradient and the GDU limit does NOT hold: the error stops falling with β and stays O(0.1).
    The first step of the output neurons still matches (it only involves ∂L/∂s_L)."""
    net, params = ep.make_ep_net("energy", (5, 8, 6, 3), activation="tanh", clamp=False, seed=0)
    x, y = _data(net, rng, B=4)
    T, K = 2000, 20
    assert _converged(net, params, x, T) < 1e-12
    errs = [_gdu_errors(ep.gdu_curves(net, params, x, y, T=T, K=K, beta=b)) for b in BETAS]
    assert errs[-1][0] > 1e-2 and errs[-1][1] > 1e-2                              # a plateau, not an O(β) error
    assert errs[-1][1] > 0.5 * errs[0][1]
    c = ep.gdu_curves(net, params, x, y, T=T, K=K, beta=1e-4)
    assert rel_error(c["ep_neurons"][-1][0], c["bptt_neurons"][-1][0]) <= 1e-3


def test_prototypical_ep_update_aligns_with_bptt(rng):
    net, params = ep.make_ep_net("prototypical", (6, 10, 8, 4), seed=2)
    assert net.dt == 1.0 and not net.clamp
    x, y = _data(net, rng, B=5)
    T, K = 60, 10
    _, g_ep, _ = ep.ep_grads(net, params, x, y, T=T, K=K, beta=0.01)
    _, g_bptt = ep.bptt_grads(net, params, x, y, T=T, K=K)
    cat = lambda g: np.concatenate([g[k].ravel() for k in params])                # noqa: E731
    assert cosine(cat(g_ep), cat(g_bptt)) > 0
    for k in params:
        assert cosine(g_ep[k], g_bptt[k]) > 0, k
    assert ep.predict(net, params, x, T).shape == (5, 4)


def test_rmse_hand_values():
    # element 0: n = (1, 0), d = (1, 0) → 0.   element 1: n = (1, 1), d = (−1, −1): Σ(n−d)² = 8, max(Σn², Σd²) = 2
    # → sqrt(4) = 2 (opposite series; the notes' "≈√2" bound holds only for equal norms).
    # element 2: both zero → 0.   element 3: n = (3, 4), d = 0: 25/25 → 1.
    n = np.array([[1.0, 1.0, 0.0, 3.0], [0.0, 1.0, 0.0, 4.0]])
    d = np.array([[1.0, -1.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0]])
    mean, std = ep.rmse(n, d)
    vals = np.array([0.0, 2.0, 0.0, 1.0])
    assert mean == pytest.approx(vals.mean()) and std == pytest.approx(vals.std())
    # element: n = (1, 2), d = (1, 1) → Σ(n−d)² = 1, max(5, 2) = 5 → sqrt(1/5)
    assert ep.rmse(np.array([[1.0], [2.0]]), np.array([[1.0], [1.0]])) == pytest.approx((np.sqrt(0.2), 0.0))


def test_sign_agreement_hand_values():
    nt = np.array([[1.0, -2.0, 0.0, 0.0], [3.0, 0.5, -1.0, 2.0]])
    dt = np.array([[2.0, -1.0, 0.0, 1.0], [-3.0, 0.1, 0.0, 5.0]])
    # same sign & both nonzero: (0,0), (0,1), (1,1), (1,3) → 4/8; both zero: (0,2) → 1/8
    out = ep.sign_agreement(nt, dt)
    assert out == pytest.approx({"same": 50.0, "zero": 12.5, "total": 62.5})


def test_bad_settings_raise_clear_errors(rng):
    net, params = ep.make_ep_net("toy", seed=0)
    x, y = _data(net, rng)
    with pytest.raises(UnsupportedError, match="K = 9 > T = 5"):
        ep.bptt_grads(net, params, x, y, T=5, K=9)
    with pytest.raises(UnsupportedError, match="K = 9 > T = 5"):
        ep.gdu_curves(net, params, x, y, T=5, K=9, beta=0.1)
    for beta in (0.0, -0.1):
        with pytest.raises(UnsupportedError, match="beta"):
            ep.ep_grads(net, params, x, y, T=5, K=2, beta=beta)
    with pytest.raises(UnknownNameError, match="did you mean 'energy'"):
        ep.make_ep_net("enrgy", (3, 2))
    with pytest.raises(UnknownNameError, match="activation"):
        ep.make_ep_net("energy", (3, 2), activation="relu")
    with pytest.raises(UnsupportedError, match="dt"):
        ep.make_ep_net("energy", (3, 2), dt=0.0)
    with pytest.raises(UnsupportedError, match="sizes"):
        ep.make_ep_net("energy", (3,))
    with pytest.raises(UnsupportedError, match="sizes is required"):
        ep.make_ep_net("prototypical")
    for err in (UnsupportedError, UnknownNameError):
        assert issubclass(err, ValueError)


@pytest.mark.parametrize("kind", ep.NETWORKS)
def test_float32_agrees_with_float64(kind, rng):
    sizes = (4, 6, 3)
    net64, p64 = ep.make_ep_net(kind, sizes, seed=3)
    net32, p32 = ep.make_ep_net(kind, sizes, seed=3, dtype="float32")
    x, y = _data(net64, rng, B=3)
    check_float32_agrees(ep, net64, p64, net32, p32, x, y)


# ---------------------------------------------------------------------------------------------------- injected kernels

class _Recording:
    """An EPKernels bundle that runs the registry's NumPy kernels and records which loops were called."""

    def __init__(self):
        from refimpl.registry import ep_kernels
        self.inner, self.calls = ep_kernels("numpy"), []

    def __getattr__(self, name):
        if name not in ("free_phase", "nudged_phase", "bptt"):
            raise AttributeError(name)

        def run(*args, **kwargs):
            self.calls.append(name)
            return getattr(self.inner, name)(*args, **kwargs)
        return run


@pytest.mark.parametrize("kind", ep.NETWORKS)
def test_injected_kernels_run_the_loops_and_match_the_reference(kind, rng):
    """ep_grads / bptt_grads / predict with kernels (registry.ep_kernels) call exactly those loops, and the registry's
    NumPy kernels give this module's own results bit for bit."""
    net, params = ep.make_ep_net(kind, (4, 6, 3), seed=2)
    x, y = _data(net, rng, B=3)
    T, K, beta = 12, 4, 0.2
    rec = _Recording()
    loss_k, g_k, s_k = ep.ep_grads(net, params, x, y, T=T, K=K, beta=beta, kernels=rec)
    loss, g, s = ep.ep_grads(net, params, x, y, T=T, K=K, beta=beta)
    assert rec.calls == ["free_phase", "nudged_phase"]
    assert loss_k == loss and all(np.array_equal(a, b) for a, b in zip(s_k, s))
    assert all(np.array_equal(g_k[k], g[k]) for k in params)
    rec.calls.clear()
    loss_k, b_k = ep.bptt_grads(net, params, x, y, T=T, K=K, kernels=rec)
    loss, b = ep.bptt_grads(net, params, x, y, T=T, K=K)
    assert rec.calls == ["free_phase", "bptt"]
    assert loss_k == loss and list(b_k) == list(b) and all(np.array_equal(b_k[k], b[k]) for k in params)
    rec.calls.clear()
    np.testing.assert_array_equal(ep.predict(net, params, x, T, kernels=rec), ep.predict(net, params, x, T))
    assert rec.calls == ["free_phase"]


def test_injected_kernels_refuse_what_they_cannot_run(rng):
    """The ep.* kernels take no clamp (they run the kind's default): a net with another clamp is refused, not run
    silently with the default; and a kernels object without the three loops is refused by name."""
    from refimpl.registry import ep_kernels
    net, params = ep.make_ep_net("energy", (4, 6, 3), clamp=False, seed=2)
    assert net.clamp != ep.DEFAULTS["energy"]["clamp"]
    x, y = _data(net, rng)
    with pytest.raises(UnsupportedError, match="clamp"):
        ep.ep_grads(net, params, x, y, T=5, K=2, beta=0.1, kernels=ep_kernels("numpy"))
    with pytest.raises(UnsupportedError, match="clamp"):
        ep.predict(net, params, x, 5, kernels=ep_kernels("numpy"))
    net, params = ep.make_ep_net("energy", (4, 6, 3), seed=2)
    with pytest.raises(UnsupportedError, match=r"\.free_phase, \.nudged_phase and \.bptt"):
        ep.bptt_grads(net, params, x, y, T=5, K=2, kernels=object())
    with pytest.raises(UnknownNameError, match="backend"):
        ep_kernels("nosuch")


@pytest.mark.parametrize("kind", ep.NETWORKS)
def test_net_from_kernel_args_reads_the_net_back_from_its_parameters(kind, rng):
    """The ep.* kernels' network (refimpl.kernels and every backend): kind, activation, dt and dtype as given, the sizes
    read off x and the weights, shapes of x and y checked."""
    opts = {"activation": "hardsigm", "dt": 0.3}
    net, params = ep.make_ep_net(kind, (4, 6, 5, 3), seed=1, dtype="float32", **opts)
    x, y = _data(net, rng, B=2)
    x, y = x.astype(np.float32), y.astype(np.float32)
    assert ep.net_from_kernel_args(params, x, kind, y=y, **opts) == net       # dtype from x: float32
    assert ep.net_from_kernel_args(params, x, kind, dtype="float64", **opts).dtype == "float64"
    with pytest.raises(UnsupportedError, match=r"expected \(B, I\)"):
        ep.net_from_kernel_args(params, x[None], kind, **opts)
    with pytest.raises(UnsupportedError, match=r"y has shape \(2, 2\); expected \(2, 3\)"):
        ep.net_from_kernel_args(params, x, kind, y=y[:, :2], **opts)
    with pytest.raises(UnknownNameError, match="activation"):
        ep.net_from_kernel_args(params, x, kind, "relu", 0.3)
