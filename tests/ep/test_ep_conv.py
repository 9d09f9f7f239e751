"""Equilibrium propagation on the prototypical conv net (refimpl/ep/conv.py): operators, BPTT vs finite differences,
the EP update as −∂Φ/∂θ, EP vs truncated BPTT, errors, dtypes."""

import dataclasses

import numpy as np
import pytest

from refimpl.ep import conv as ec
from refimpl.errors import ShapeError, UnknownNameError, UnsupportedError
from refimpl.numerics import central_differences, cosine, extended, rel_error

from .precision import check_float32_agrees

# (input_shape, channels, kernel, pool): a 2×2-pooled s_1, a 1×1 s_1, the digits shape with pool (2, 1)
SMALL = [((1, 14, 14), (2, 3), 3, 2), ((2, 10, 10), (2, 2), 3, 2), ((1, 8, 8), (2, 3), 3, (2, 1))]


def _data(net, rng, B=2):
    x = rng.uniform(0.0, 1.0, (B,) + net.input_shape)
    y = np.eye(net.n_out)[rng.integers(0, net.n_out, B)]
    return x, y


def _loss(s_out, y):
    """L = (1/2B) Σ_b ‖s_out − y‖², eq. (7), written here for the finite-difference oracle (in its precision)."""
    return 0.5 * np.sum((s_out - y) ** 2) / s_out.shape[0]


def _oracle_net(net):
    return dataclasses.replace(net, dtype=str(extended(np.zeros(1)).dtype))


# ---------------------------------------------------------------------------------------------------- operators

def _naive_conv(a, K):
    B, C, H, W = a.shape
    O, _, k, _ = K.shape
    out = np.zeros((B, O, H - k + 1, W - k + 1))
    for b in range(B):
        for o in range(O):
            for i in range(H - k + 1):
                for j in range(W - k + 1):
                    out[b, o, i, j] = np.sum(K[o] * a[b, :, i:i + k, j:j + k])
    return out


def test_conv_matches_naive_loops(rng):
    for k, shape in ((3, (2, 3, 7, 6)), (5, (1, 2, 9, 9)), (1, (2, 2, 3, 4))):
        a = rng.standard_normal(shape)
        K = rng.standard_normal((4, shape[1], k, k))
        assert rel_error(ec.conv(a, K), _naive_conv(a, K)) <= 1e-13


def test_conv_transpose_and_kernel_correlation_are_adjoints(rng):
    a = rng.standard_normal((3, 2, 8, 7))
    K = rng.standard_normal((4, 2, 3, 3))
    g = rng.standard_normal((3, 4, 6, 5))
    lhs = np.sum(ec.conv(a, K) * g)
    assert np.sum(a * ec.conv_t(g, K)) == pytest.approx(lhs, rel=1e-12)          # (3) input adjoint
    assert np.sum(K * ec.corr(a, g, 3)) == pytest.approx(lhs, rel=1e-12)         # (3) kernel adjoint


def test_pool_unpool_adjoint_and_values(rng):
    a = rng.standard_normal((2, 3, 6, 4))
    p, idx = ec.max_pool(a, 2)
    naive = a.reshape(2, 3, 3, 2, 2, 2).max(axis=(3, 5))
    assert np.array_equal(p, naive) and idx.shape == (2, 3, 3, 2)
    assert np.array_equal(ec.pool_at(a, idx, 2), p)
    v = rng.standard_normal(p.shape)
    up = ec.unpool(v, idx, 2)
    assert up.shape == a.shape and np.count_nonzero(up) == v.size
    assert np.sum(up * a) == pytest.approx(np.sum(v * ec.pool_at(a, idx, 2)), rel=1e-12)   # (4)
    assert np.array_equal(ec.unpool(p, idx, 2) != 0, a == np.repeat(np.repeat(naive, 2, 2), 2, 3))
    p1, idx1 = ec.max_pool(a, 1)                                                  # pool 1: the identity
    assert np.array_equal(p1, a) and np.array_equal(ec.unpool(a, idx1, 1), a)


def test_shape_arithmetic():
    net, params = ec.make_conv_net()                                              # the paper's P-conv
    assert net.s2_shape == (32, 12, 12) and net.s1_shape == (64, 4, 4) and net.activation == "hardsigm"
    assert params["K1"].shape == (32, 1, 5, 5) and params["K0"].shape == (64, 32, 5, 5)
    assert params["W"].shape == (10, 1024) and params["c0"].shape == (64,) and params["b"].shape == (10,)
    net, _ = ec.make_conv_net((1, 8, 8), (4, 8), kernel=3, pool=(2, 1))            # the digits data
    assert net.state_shapes == [(4, 3, 3), (8, 1, 1), (10,)]


# ---------------------------------------------------------------------------------------------------- BPTT

@pytest.mark.parametrize("K", [None, 3])
@pytest.mark.parametrize("act", ["tanh", "sigm"])
@pytest.mark.parametrize("shape,channels,kernel,pool", SMALL)
def test_bptt_matches_finite_differences(shape, channels, kernel, pool, act, K, rng):
    """Smooth activations and continuous random data: no pooling ties within ±eps (hardsigm kinks avoided)."""
    net, params = ec.make_conv_net(shape, channels, 3, kernel=kernel, pool=pool, activation=act, seed=1)
    x, y = _data(net, rng)
    T = 5
    before = {k: v.copy() for k, v in params.items()}
    loss, grads = ec.bptt_grads(net, params, x, y, T=T, K=K)
    assert all(np.array_equal(before[k], params[k]) for k in params)             # no mutation
    onet = _oracle_net(net)
    xe, ye = extended(x), extended(y)
    pe = {k: extended(v) for k, v in params.items()}
    if K is None:
        def f(q):
            return _loss(ec.free_phase(onet, q, xe, T)[-1], ye)
    else:
        s0 = ec.free_phase(onet, pe, xe, T - K)                                   # the truncated graph: s_{T−K} fixed
        def f(q):
            return _loss(ec.free_phase(onet, q, xe, K, init=s0)[-1], ye)
    assert loss == pytest.approx(float(f(pe)), rel=1e-12)
    fd = central_differences(f, pe)
    for k in params:
        assert np.linalg.norm(fd[k].astype(np.float64)) > 0, k                   # every parameter is in the graph
        assert rel_error(grads[k], fd[k].astype(np.float64)) <= 1e-6, k


# ---------------------------------------------------------------------------------------------------- EP

def _phi(params, x, s, net):
    """The primitive of the module docstring, written independently of ep_conv._G."""
    s2, s1, s0 = s
    B = x.shape[0]
    a2, _ = ec.max_pool(ec.conv(x, params["K1"]) + params["c1"][None, :, None, None], net.pool[0])
    a1, _ = ec.max_pool(ec.conv(s2, params["K0"]) + params["c0"][None, :, None, None], net.pool[1])
    return (np.sum((s0 @ params["W"]) * s1.reshape(B, -1)) + np.sum(s0 @ params["b"])
            + np.sum(s1 * a1) + np.sum(s2 * a2))


def test_drive_and_ep_terms_are_derivatives_of_phi(rng):
    """u_l = ∂Φ/∂s_l (5) and G_θ = −(1/B) ∂Φ/∂θ (8), by central differences at a random state."""
    net, params = ec.make_conv_net((1, 14, 14), (2, 3), 3, kernel=3, pool=2, activation="tanh", seed=4)
    x, _ = _data(net, rng, B=2)
    s = [rng.uniform(0.0, 1.0, (2,) + shape) for shape in net.state_shapes]
    _, cache = ec._step(net, params, x, s)
    xe, se, pe = extended(x), [extended(v) for v in s], {k: extended(v) for k, v in params.items()}
    ds = central_differences(lambda q: _phi(pe, xe, [q["s2"], q["s1"], q["s0"]], net),
                             {"s2": se[0], "s1": se[1], "s0": se[2]})
    for name, u in zip(("s2", "s1", "s0"), cache.u):
        assert rel_error(u, ds[name].astype(np.float64)) <= 1e-8, name
    dtheta = central_differences(lambda q: _phi(q, xe, se, net), pe)
    G = ec._G(net, params, x, s)
    for k in params:
        assert rel_error(G[k], -dtheta[k].astype(np.float64) / 2) <= 1e-8, k


@pytest.mark.parametrize("act", ["sigm", "tanh"])
def test_ep_update_aligns_with_truncated_bptt(act, rng):
    """Positive cosine with BPTT truncated to the K nudged steps, small β, near a fixed point.
    (hardsigm: with this random init most output units sit at u < 0 where ρ' = 0; BPTT then ignores them while the
    prototypical nudge, which has no ρ'(u_0) factor, still moves them, and the cosine can be negative.)"""
    net, params = ec.make_conv_net((1, 8, 8), (4, 8), 5, kernel=3, pool=(2, 1), activation=act, seed=2)
    x, y = _data(net, rng, B=6)
    T, K = 60, 8
    s = ec.free_phase(net, params, x, T)
    assert max(float(np.abs(a - b).max()) for a, b in zip(s, ec.free_phase(net, params, x, 1, init=s))) < 1e-6
    loss, g_ep, s_star = ec.ep_grads(net, params, x, y, T=T, K=K, beta=0.01)
    loss_b, g_bptt = ec.bptt_grads(net, params, x, y, T=T, K=K)
    assert loss == pytest.approx(loss_b, rel=1e-14)
    assert all(np.array_equal(a, b) for a, b in zip(s, s_star))
    cat = lambda g: np.concatenate([g[k].ravel() for k in params])                # noqa: E731
    assert cosine(cat(g_ep), cat(g_bptt)) > 0.5
    for k in params:
        assert cosine(g_ep[k], g_bptt[k]) > 0, k
    assert ec.predict(net, params, x, T).shape == (6, 5)


def test_first_nudged_step_at_fixed_point(rng):
    """K = 1 from a fixed point only moves s_0 by β(y − s_0): the W, b updates are exactly (s_0 − y)ᵀ vec(s_1)/B,
    Σ(s_0 − y)/B, and the conv updates are 0."""
    net, params = ec.make_conv_net((1, 8, 8), (3, 4), 3, kernel=3, pool=(2, 1), activation="sigm", seed=0)
    x, y = _data(net, rng, B=3)
    s = ec.free_phase(net, params, x, 200)
    s_beta = ec.nudged_phase(net, params, x, y, s, 1, 0.5)
    g = ec.ep_update(net, params, x, s, s_beta, 0.5)
    assert rel_error(g["W"], (s[2] - y).T @ s[1].reshape(3, -1) / 3) <= 1e-10
    assert rel_error(g["b"], (s[2] - y).sum(0) / 3) <= 1e-10
    for k in ("K1", "c1", "K0", "c0"):
        assert np.abs(g[k]).max() <= 1e-10, k


# ---------------------------------------------------------------------------------------------------- errors, dtypes

def test_bad_settings_raise_clear_errors(rng):
    with pytest.raises(UnsupportedError, match="does not fit"):
        ec.make_conv_net((1, 12, 12), (4, 8), kernel=5)                           # 12 → 8 → 4, then 5×5 on 4×4
    with pytest.raises(UnsupportedError, match="not divisible by the pool size 2"):
        ec.make_conv_net((1, 8, 8), (4, 8), kernel=3, pool=2)                     # 8 → 6 → 3 → 1, 1 % 2
    with pytest.raises(UnsupportedError, match="kernel"):
        ec.make_conv_net((1, 8, 8), kernel=(3, 3, 3))
    with pytest.raises(UnsupportedError, match="channels"):
        ec.make_conv_net((1, 8, 8), (4,), kernel=3, pool=(2, 1))
    with pytest.raises(UnsupportedError, match="input_shape"):
        ec.make_conv_net((8, 8))
    with pytest.raises(UnknownNameError, match="activation"):
        ec.make_conv_net(activation="relu")
    net, params = ec.make_conv_net((1, 8, 8), (2, 3), 4, kernel=3, pool=(2, 1))
    x, y = _data(net, rng)
    with pytest.raises(ShapeError, match=r"expected \(B, 1, 8, 8\)"):
        ec.free_phase(net, params, x.reshape(2, 64), 3)
    with pytest.raises(ShapeError, match="y has shape"):
        ec.ep_grads(net, params, x, y[:, :3], T=3, K=2, beta=0.1)
    with pytest.raises(ShapeError, match="states"):
        ec.nudged_phase(net, params, x, y, [np.zeros((2, 2, 3, 3))], 2, 0.1)
    with pytest.raises(UnsupportedError, match="K = 9 > T = 5"):
        ec.bptt_grads(net, params, x, y, T=5, K=9)
    with pytest.raises(UnsupportedError, match="beta"):
        ec.ep_grads(net, params, x, y, T=5, K=2, beta=0.0)
    with pytest.raises(UnsupportedError, match="T = 0"):
        ec.free_phase(net, params, x, 0)


def test_float32_agrees_with_float64(rng):
    kw = dict(kernel=3, pool=(2, 1), activation="sigm", seed=3)
    net64, p64 = ec.make_conv_net((1, 8, 8), (3, 4), 4, **kw)
    net32, p32 = ec.make_conv_net((1, 8, 8), (3, 4), 4, dtype="float32", **kw)
    x, y = _data(net64, rng, B=3)
    check_float32_agrees(ec, net64, p64, net32, p32, x, y)
