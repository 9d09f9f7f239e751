"""A GRU trajectory and its BPTT gradients worked out by hand (H = I = B = 1, T = 2), asserted against refimpl.

Everything below `_hand_forward` / `_hand_bptt` is scalar Python (math.exp, math.tanh) that follows the equations of
refimpl/cells/gru.py (numbers in brackets) and docs/derivations/gru.md; it never calls the module. Each intermediate
value is written next to its line, rounded to 6 decimals, and `_check` asserts it, so the comments cannot drift from
the arithmetic. A pencil, the table of e^x and these comments are enough to verify the test.

Notation: h0 is the initial state ("h0"), h1 = h[0] and h2 = h[1] the states after x1 = x[0] and x2 = x[1].
The loss is L = h1 + h2, i.e. the instantaneous adjoints are dh = [1, 1].
"""

import math

import numpy as np
import pytest

from refimpl.cells import gru
from refimpl.numerics import rel_error

from ..toy import check_pencil, random_case, sigma, torch_layer, torch_layer_grads

# Round parameters. Gate blocks in the order r, z, n (torch.nn.GRU layout).
W_ir, W_iz, W_in = 0.5, -1.0, 1.0          # weight_ih (3, 1)
W_hr, W_hz, W_hn = 1.0, 0.5, -0.5          # weight_hh (3, 1)
b_ir, b_iz, b_in = 0.0, 0.0, 0.0           # bias_ih (3,)
b_hr, b_hz, b_hn = 0.0, 0.0, 0.5           # bias_hh (3,): b_hn ≠ 0 checks that r multiplies (W_hn h + b_hn)
H0 = 0.0                                   # initial state
X1, X2 = 1.0, -1.0                         # the input sequence
DH1, DH2 = 1.0, 1.0                        # L = h1 + h2


def _params():
    return {"weight_ih": np.array([[W_ir], [W_iz], [W_in]]), "weight_hh": np.array([[W_hr], [W_hz], [W_hn]]),
            "bias_ih": np.array([b_ir, b_iz, b_in]), "bias_hh": np.array([b_hr, b_hz, b_hn])}


def _hand_step(x, h, pencil):
    """Eqs. (1)–(5) for one scalar step; `pencil` holds the 6-decimal values written in the comments below."""
    r = check_pencil(sigma(W_ir * x + b_ir + W_hr * h + b_hr), pencil["r"])      # (1)
    z = check_pencil(sigma(W_iz * x + b_iz + W_hz * h + b_hz), pencil["z"])      # (2)
    m = check_pencil(W_hn * h + b_hn, pencil["m"])                               # (3)
    n = check_pencil(math.tanh(W_in * x + b_in + r * m), pencil["n"])            # (4)
    h_new = check_pencil((1.0 - z) * n + z * h, pencil["h"])                     # (5)
    return {"r": r, "z": z, "m": m, "n": n, "h": h_new}


def _hand_forward():
    # Step 1 (x1 = 1, h0 = 0):
    #   r1 = σ(0.5·1 + 1·0)         = σ(0.5)                          ≈ 0.622459
    #   z1 = σ(−1·1 + 0.5·0)        = σ(−1)                           ≈ 0.268941
    #   m1 = −0.5·0 + 0.5           = 0.5
    #   n1 = tanh(1·1 + r1·m1)      = tanh(1.311230)                  ≈ 0.864586
    #   h1 = (1 − z1)·n1 + z1·h0    = 0.731059·0.864586 + 0           ≈ 0.632063
    s1 = _hand_step(X1, H0, {"r": 0.622459, "z": 0.268941, "m": 0.5, "n": 0.864586, "h": 0.632063})
    # Step 2 (x2 = −1, h1 ≈ 0.632063):
    #   r2 = σ(0.5·(−1) + 1·h1)     = σ(0.132063)                     ≈ 0.532968
    #   z2 = σ(−1·(−1) + 0.5·h1)    = σ(1.316032)                     ≈ 0.788521
    #   m2 = −0.5·h1 + 0.5          = 0.183968
    #   n2 = tanh(1·(−1) + r2·m2)   = tanh(−0.901951)                 ≈ −0.717246
    #   h2 = (1 − z2)·n2 + z2·h1    = 0.211479·(−0.717246) + 0.498395 ≈ 0.346712
    s2 = _hand_step(X2, s1["h"], {"r": 0.532968, "z": 0.788521, "m": 0.183968, "n": -0.717246, "h": 0.346712})
    return s1, s2


def _hand_step_back(s, h_prev, hbar, pencil):
    """Eqs. (6)–(9), (11) for one scalar step: the chain rule through (5), (4), (3), (2), (1) in reverse."""
    nbar = check_pencil(hbar * (1.0 - s["z"]), pencil["nbar"])                 # (6) ∂h/∂n = 1 − z
    zbar = check_pencil(hbar * (h_prev - s["n"]), pencil["zbar"])              # (6) ∂h/∂z = h_prev − n
    da_n = check_pencil(nbar * (1.0 - s["n"] ** 2), pencil["da_n"])            # (7) tanh' = 1 − n²
    rbar = check_pencil(da_n * s["m"], pencil["rbar"])                         # (8) ∂a_n/∂r = m
    mbar = check_pencil(da_n * s["r"], pencil["mbar"])                         # (8) ∂a_n/∂m = r
    da_z = check_pencil(zbar * s["z"] * (1.0 - s["z"]), pencil["da_z"])        # (9) σ' = z(1 − z)
    da_r = check_pencil(rbar * s["r"] * (1.0 - s["r"]), pencil["da_r"])        # (9) σ' = r(1 − r)
    # (11) h_prev reaches h through z·h_prev directly and through a_r, a_z (W_hr, W_hz) and m (W_hn):
    hbar_prev = check_pencil(hbar * s["z"] + da_r * W_hr + da_z * W_hz + mbar * W_hn, pencil["hbar_prev"])
    return {"da_r": da_r, "da_z": da_z, "da_n": da_n, "mbar": mbar, "hbar_prev": hbar_prev}


def _hand_bptt(s1, s2):
    h1 = s1["h"]
    # Step 2 back, with h̄2 = dh2 = 1 (nothing flows from later):
    #   n̄2 = 1·(1 − z2) ≈ 0.211479        z̄2 = 1·(h1 − n2) = 0.632063 + 0.717246 ≈ 1.349310
    #   ā_n2 = n̄2·(1 − n2²) ≈ 0.211479·0.485558 ≈ 0.102685
    #   r̄2 = ā_n2·m2 ≈ 0.018891           m̄2 = ā_n2·r2 ≈ 0.054728
    #   ā_z2 = z̄2·z2(1 − z2) ≈ 1.349310·0.166756 ≈ 0.225005      ā_r2 = r̄2·r2(1 − r2) ≈ 0.004702
    #   h̄1 from step 2 = h̄2·z2 + ā_r2·W_hr + ā_z2·W_hz + m̄2·W_hn
    #                  ≈ 0.788521 + 0.004702 + 0.112503 − 0.027364 ≈ 0.878361
    b2 = _hand_step_back(s2, h1, DH2, {"nbar": 0.211479, "zbar": 1.349310, "da_n": 0.102685, "rbar": 0.018891,
                                       "mbar": 0.054728, "da_z": 0.225005, "da_r": 0.004702,
                                       "hbar_prev": 0.878361})
    # Total adjoint of h1 (eq. 12): h̄1 = dh1 + 0.878361 = 1.878361
    hbar1 = check_pencil(DH1 + b2["hbar_prev"], 1.878361)
    # Step 1 back, with h̄1 ≈ 1.878361 and h0 = 0:
    #   n̄1 = h̄1·(1 − z1) ≈ 1.373192       z̄1 = h̄1·(h0 − n1) ≈ −1.624005
    #   ā_n1 ≈ 1.373192·(1 − 0.747509) ≈ 0.346718
    #   r̄1 = ā_n1·m1 ≈ 0.173359           m̄1 = ā_n1·r1 ≈ 0.215818
    #   ā_z1 = z̄1·z1(1 − z1) ≈ −0.319299  ā_r1 = r̄1·r1(1 − r1) ≈ 0.040740
    #   h̄0 = h̄1·z1 + ā_r1·W_hr + ā_z1·W_hz + m̄1·W_hn ≈ 0.505169 + 0.040740 − 0.159650 − 0.107909 ≈ 0.278351
    b1 = _hand_step_back(s1, H0, hbar1, {"nbar": 1.373192, "zbar": -1.624005, "da_n": 0.346718, "rbar": 0.173359,
                                         "mbar": 0.215818, "da_z": -0.319299, "da_r": 0.040740,
                                         "hbar_prev": 0.278351})
    # (10) summed over the two steps. The x-side of a gate G sees x_t; the h-side sees h_{t-1}
    # (h0 = 0, so step 1 adds nothing to weight_hh). The n block of the h-side gets m̄, not ā_n (eq. 10).
    grads = {
        "weight_ih": [[b1["da_r"] * X1 + b2["da_r"] * X2],           # ∂L/∂W_ir = ā_r1·x1 + ā_r2·x2
                      [b1["da_z"] * X1 + b2["da_z"] * X2],           # ∂L/∂W_iz
                      [b1["da_n"] * X1 + b2["da_n"] * X2]],          # ∂L/∂W_in
        "weight_hh": [[b1["da_r"] * H0 + b2["da_r"] * h1],           # ∂L/∂W_hr = ā_r1·h0 + ā_r2·h1
                      [b1["da_z"] * H0 + b2["da_z"] * h1],           # ∂L/∂W_hz
                      [b1["mbar"] * H0 + b2["mbar"] * h1]],          # ∂L/∂W_hn = m̄1·h0 + m̄2·h1
        "bias_ih": [b1["da_r"] + b2["da_r"], b1["da_z"] + b2["da_z"], b1["da_n"] + b2["da_n"]],
        "bias_hh": [b1["da_r"] + b2["da_r"], b1["da_z"] + b2["da_z"], b1["mbar"] + b2["mbar"]],
        # (11) x̄_t = ā_r·W_ir + ā_z·W_iz + ā_n·W_in
        "x": [[[b["da_r"] * W_ir + b["da_z"] * W_iz + b["da_n"] * W_in]] for b in (b1, b2)],
        "h0": [[b1["hbar_prev"]]],
    }
    # Two totals by pencil: ∂L/∂W_in = 0.346718·1 + 0.102685·(−1) ≈ 0.244033;
    #                       ∂L/∂b_hn = m̄1 + m̄2 ≈ 0.215818 + 0.054728 ≈ 0.270546
    check_pencil(grads["weight_ih"][2][0], 0.244033)
    check_pencil(grads["bias_hh"][2], 0.270546)
    return {k: np.array(v, dtype=np.float64) for k, v in grads.items()}


def _module_run():
    params = _params()
    x = np.array([X1, X2]).reshape(2, 1, 1)            # (T, B, I)
    h0 = np.array([[H0]])                              # (B, H)
    h, cache = gru.forward(params, x, h0)
    grads = gru.backward(params, np.array([DH1, DH2]).reshape(2, 1, 1), cache)
    return h, cache, grads


def test_forward_matches_hand_trajectory():
    s1, s2 = _hand_forward()
    h, cache, _ = _module_run()
    assert h.shape == (2, 1, 1)
    for t, s in enumerate((s1, s2)):
        assert h[t, 0, 0] == pytest.approx(s["h"], abs=1e-14)
        for field in ("r", "z", "n"):
            assert getattr(cache, field)[t, 0, 0] == pytest.approx(s[field], abs=1e-14), field
        assert cache.hn[t, 0, 0] == pytest.approx(s["m"], abs=1e-14)


def test_backward_matches_hand_bptt():
    hand = _hand_bptt(*_hand_forward())
    _, _, grads = _module_run()
    assert set(grads) == set(hand)
    for k in hand:
        assert grads[k].shape == hand[k].shape, k
        np.testing.assert_allclose(grads[k], hand[k], rtol=0, atol=1e-13, err_msg=k)


def test_b_hn_gradient_by_forward_chain_rule():
    """∂L/∂b_hn once more, organised the other way round (forward mode), and by finite differences of the hand map.

    b_hn enters only through m1 and m2 (eq. 3), and ∂h_t/∂m_t = (1 − z_t)(1 − n_t²) r_t =: q_t, so
        ∂h1/∂b_hn = q1,   ∂h2/∂b_hn = q2 + (∂h2/∂h1)·q1,
        ∂h2/∂h1  = z2 + (h1 − n2)·z2(1 − z2)·W_hz + (1 − z2)(1 − n2²)·[m2·r2(1 − r2)·W_hr + r2·W_hn]   (eq. 14)
        ∂L/∂b_hn = ∂h1/∂b_hn + ∂h2/∂b_hn = q1·(1 + ∂h2/∂h1) + q2.
    By pencil: q1 ≈ 0.731059·0.252491·0.622459 ≈ 0.114897; ∂h2/∂h1 ≈ 0.878361 (as h̄1 − 1 in the BPTT above);
    q2 ≈ 0.211479·0.485558·0.532968 ≈ 0.054728; so ∂L/∂b_hn ≈ 0.114897·1.878361 + 0.054728 ≈ 0.270546.
    """
    s1, s2 = _hand_forward()
    q1 = check_pencil((1 - s1["z"]) * (1 - s1["n"] ** 2) * s1["r"], 0.114897)
    q2 = check_pencil((1 - s2["z"]) * (1 - s2["n"] ** 2) * s2["r"], 0.054728)
    dh2_dh1 = check_pencil(s2["z"] + (s1["h"] - s2["n"]) * s2["z"] * (1 - s2["z"]) * W_hz
                     + (1 - s2["z"]) * (1 - s2["n"] ** 2) * (s2["m"] * s2["r"] * (1 - s2["r"]) * W_hr
                                                             + s2["r"] * W_hn), 0.878361)
    by_chain_rule = check_pencil(q1 * (1 + dh2_dh1) + q2, 0.270546)

    def hand_loss(bhn):        # the two scalar steps again with b_hn replaced, L = h1 + h2
        h = H0
        total = 0.0
        for x in (X1, X2):
            r, z = sigma(W_ir * x + W_hr * h), sigma(W_iz * x + W_hz * h)
            n = math.tanh(W_in * x + r * (W_hn * h + bhn))
            h = (1 - z) * n + z * h
            total += h
        return total

    eps = 1e-6
    by_fd = (hand_loss(b_hn + eps) - hand_loss(b_hn - eps)) / (2 * eps)
    _, _, grads = _module_run()
    assert grads["bias_hh"][2] == pytest.approx(by_chain_rule, abs=1e-13)
    assert by_fd == pytest.approx(by_chain_rule, abs=1e-8)
    # the state Jacobian of the module at step 2 is the same ∂h2/∂h1
    s1h = np.array([[s1["h"]]])
    J = gru.state_jacobian(_params(), np.array([[X2]]), s1h)
    assert J[0, 0, 0] == pytest.approx(dh2_dh1, abs=1e-14)


def _torch_case(name):
    """(params, x, h0, dh): the toy case, or a random one with B, H > 1 that exercises the gate layout."""
    if name == "toy":
        return _params(), np.array([X1, X2]).reshape(2, 1, 1), np.array([[H0]]), np.ones((2, 1, 1))
    return random_case(gru, seed=5, T=5, B=2, I=3, H=4)


@pytest.mark.parametrize("case", ["toy", "random"])
def test_matches_torch_gru(case):
    """Cross-check against torch.nn.GRU in float64 (skipped where torch is not installed)."""
    torch = pytest.importorskip("torch")
    params, x, h0, dh = _torch_case(case)
    h, cache = gru.forward(params, x, h0)
    grads = gru.backward(params, dh, cache)

    net = torch_layer(torch, torch.nn.GRU, params)
    x_t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    h0_t = torch.tensor(h0[None], dtype=torch.float64, requires_grad=True)   # (num_layers=1, B, H)
    out, _ = net(x_t, h0_t)                                                   # (T, B, H)
    (out * torch.from_numpy(dh)).sum().backward()        # ∂loss/∂h_t = dh_t

    assert rel_error(h, out.detach().numpy()) <= 1e-12
    for name, theirs in torch_layer_grads(net, params).items():
        assert rel_error(grads[name], theirs) <= 1e-10, name
    assert rel_error(grads["x"], x_t.grad.numpy()) <= 1e-10
    assert rel_error(grads["h0"], h0_t.grad.numpy()[0]) <= 1e-10
