"""The GDU curves of the conv net (refimpl/ep/conv.py gdu_curves) against the net's own EP and BPTT: the cumulative EP
update after K nudged steps is ep_grads' update, the cumulative BPTT gradient after K steps is bptt_grads truncated
to K, and the BPTT neuron gradient of the output at t = 0 is ∂L/∂s_0 = (s_0 − y)/B summed over the batch."""

import numpy as np
import pytest

from refimpl.ep import conv as ec
from refimpl.errors import UnsupportedError

SHAPES = [((1, 8, 8), (2, 3), 3, (2, 1)), ((1, 14, 14), (2, 3), 3, 2)]


@pytest.mark.parametrize("shape,channels,kernel,pool", SHAPES)
@pytest.mark.parametrize("act", ["sigm", "hardsigm"])
def test_gdu_curves_agree_with_ep_grads_and_bptt_grads(shape, channels, kernel, pool, act, rng):
    net, params = ec.make_conv_net(shape, channels, 4, kernel=kernel, pool=pool, activation=act, seed=3)
    x = rng.uniform(0.0, 1.0, (3,) + shape)
    y = np.eye(4)[rng.integers(0, 4, 3)]
    T, K, beta = 12, 4, 0.05
    c = ec.gdu_curves(net, params, x, y, T=T, K=K, beta=beta)
    _, g_ep, s_star = ec.ep_grads(net, params, x, y, T=T, K=K, beta=beta)
    loss, g_bptt = ec.bptt_grads(net, params, x, y, T=T, K=K)
    assert c["loss"] == pytest.approx(loss, rel=1e-12)
    for k in params:
        np.testing.assert_allclose(c["ep_params_cumulative"][k][-1], g_ep[k], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(c["bptt_params_cumulative"][k][-1], g_bptt[k], rtol=1e-10, atol=1e-12)
        assert c["ep_params"][k].shape == c["bptt_params"][k].shape == (K,) + params[k].shape
    np.testing.assert_allclose(c["bptt_neurons"][2][0], (s_star[2] - y).sum(0) / 3, rtol=1e-12)
    sizes = [int(np.prod(s)) for s in net.state_shapes]
    assert [a.shape for a in c["ep_neurons"]] == [a.shape for a in c["bptt_neurons"]] == [(K, n) for n in sizes]


def test_gdu_curves_refuse_more_nudged_steps_than_free_ones(rng):
    net, params = ec.make_conv_net((1, 8, 8), (2, 3), 4, kernel=3, pool=(2, 1))
    x, y = rng.uniform(size=(2, 1, 8, 8)), np.eye(4)[[0, 1]]
    with pytest.raises(UnsupportedError, match="K = 5 > T = 3"):
        ec.gdu_curves(net, params, x, y, T=3, K=5, beta=0.1)


def test_net_options_from_text_are_read_not_truthy():
    """-n clamp=false arrives as the text "false": it must switch the clamp off (bool("false") is True), and a value
    that is neither a flag nor a number is refused with the allowed values."""
    import pytest
    from refimpl.errors import UnsupportedError
    from refimpl.ep.networks import make_ep_net
    assert make_ep_net("energy", (4, 3, 2), clamp="false")[0].clamp is False
    assert make_ep_net("energy", (4, 3, 2), clamp="1")[0].clamp is True
    for bad in ({"clamp": "maybe"}, {"dt": "x"}, {"dt": True}):
        with pytest.raises(UnsupportedError, match="true or false|not a number"):
            make_ep_net("energy", (4, 3, 2), **bad)
