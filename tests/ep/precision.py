"""A check both EP test files share: a float32 net against the same net in float64."""

import numpy as np
import pytest

from refimpl.numerics import rel_error


def check_float32_agrees(ep_module, net64, p64, net32, p32, x, y, T=30, K=5, beta=0.1):
    """The float32 net's parameters, loss, EP and BPTT gradients against float64's, in float32 throughout (EP's
    tolerance is looser: it divides an O(β) difference by β)."""
    assert all(p32[k].dtype == np.float32 and np.allclose(p32[k], p64[k], atol=1e-7) for k in p64)
    l64, g64, _ = ep_module.ep_grads(net64, p64, x, y, T=T, K=K, beta=beta)
    l32, g32, _ = ep_module.ep_grads(net32, p32, x, y, T=T, K=K, beta=beta)
    _, b64 = ep_module.bptt_grads(net64, p64, x, y, T=T, K=K)
    _, b32 = ep_module.bptt_grads(net32, p32, x, y, T=T, K=K)
    assert l32 == pytest.approx(l64, rel=1e-5)
    for k in p64:
        assert g32[k].dtype == np.float32 and b32[k].dtype == np.float32
        assert rel_error(b32[k], b64[k]) <= 1e-4, k
        assert rel_error(g32[k], g64[k]) <= 1e-3, k
