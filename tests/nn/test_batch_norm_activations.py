"""Batch norm (BN1)–(BN6) and the activations (ACT1)–(ACT2) of refimpl/nn/layers.py: each backward against central
finite differences, evaluation mode and the running averages against their definitions written out here."""

import numpy as np
import pytest

from refimpl.nn import layers
from refimpl.numerics import central_differences, extended, rel_error

FD_TOL = 1e-6          # DESIGN.md §7: a hand-derived backward vs central differences, float64


def _vjp_fd(f, x, dout):
    """Central differences of ⟨f(x), dout⟩ with respect to x, in extended precision."""
    xe, de = extended(x), extended(dout)
    return central_differences(lambda q: np.sum(f(q["x"]) * de), {"x": xe})["x"].astype(np.float64)


@pytest.mark.parametrize("name", layers.ACTIVATIONS)
def test_activation_backward_matches_finite_differences(name, rng):
    z = rng.standard_normal((4, 5))
    z[np.abs(z) < 1e-3] = 0.5                                # keep relu's kink out of the differences
    dout = rng.standard_normal(z.shape)
    g, cache = layers.activation_forward(z, name)
    fd = _vjp_fd(lambda q: layers.activation_forward(q, name)[0], z, dout)
    assert rel_error(layers.activation_backward(dout, cache), fd) <= FD_TOL


def test_batch_norm_backward_matches_finite_differences(rng):
    a, w, b = rng.standard_normal((6, 4)), rng.standard_normal(4), rng.standard_normal(4)
    dout = rng.standard_normal(a.shape)
    _, cache = layers.batch_norm_forward(a, w, b)
    g = layers.batch_norm_backward(dout, cache)
    inputs = {"a": extended(a), "w": extended(w), "b": extended(b)}
    fd = central_differences(lambda q: np.sum(layers.batch_norm_forward(q["a"], q["w"], q["b"])[0] * extended(dout)),
                             inputs)
    for ours, key in (("x", "a"), ("weight", "w"), ("bias", "b")):
        assert rel_error(g[ours], fd[key].astype(np.float64)) <= FD_TOL, ours


def test_batch_norm_statistics_evaluation_and_running_averages(rng):
    B = 7
    a, w, b = 3.0 + 2.0 * rng.standard_normal((B, 4)), rng.standard_normal(4), rng.standard_normal(4)
    out, cache = layers.batch_norm_forward(a, w, b)
    # training mode normalises each unit over the batch: mean 0 and variance 1 before the affine map (up to ε)
    ahat = (out - b) / w
    np.testing.assert_allclose(ahat.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(ahat.var(0), 1.0, rtol=1e-4)
    np.testing.assert_allclose(cache.mean, np.mean(a, axis=0), rtol=1e-13)
    np.testing.assert_allclose(cache.var, np.var(a, axis=0), rtol=1e-13)
    # evaluation with the batch's own statistics as the running averages gives the training output
    np.testing.assert_allclose(layers.batch_norm_eval(a, w, b, np.mean(a, 0), np.var(a, 0)), out, rtol=1e-12)
    # the running averages move by the momentum towards the batch mean and the unbiased batch variance
    mean0, var0 = rng.standard_normal(4), 1.0 + rng.random(4)
    m = layers.BATCH_NORM_MOMENTUM
    new_mean, new_var = layers.batch_norm_running(mean0, var0, cache, B)
    np.testing.assert_allclose(new_mean, (1 - m) * mean0 + m * np.mean(a, 0), rtol=1e-13)
    np.testing.assert_allclose(new_var, (1 - m) * var0 + m * np.var(a, 0, ddof=1), rtol=1e-13)
