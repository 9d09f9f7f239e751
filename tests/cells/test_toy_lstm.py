"""An LSTM trajectory and its BPTT gradients worked out by hand (H = I = B = 1, T = 2), asserted against refimpl.

Everything below `_hand_forward` / `_hand_bptt` is scalar Python (math.exp, math.tanh) that follows the equations of
refimpl/cells/lstm.py (numbers in brackets) and docs/derivations/lstm.md; it never calls the module. Each intermediate
value is written next to its line, rounded to 6 decimals, and `_check` asserts it, so the comments cannot drift from
the arithmetic. A pencil, the table of e^x and these comments are enough to verify the test.

Notation: (h0, c0) is the initial state, (h1, c1) = (h[0], cache.c[0]) and (h2, c2) the states after x1 = x[0] and
x2 = x[1]. The loss is L = h1 + h2 (dh = [1, 1]); c has no instantaneous adjoint. c0 ≠ 0 and the forget bias 1
make the cell path c0 → c1 → c2 carry gradient, so the test fails if the backward drops the carried c̄ (the
cs231n pitfall, eq. 6).
"""

import math

import numpy as np
import pytest

from refimpl.cells import lstm
from refimpl.numerics import rel_error

from ..toy import check_pencil, random_case, sigma, torch_layer, torch_layer_grads

# Round parameters. Gate blocks in the order i, f, g, o (torch.nn.LSTM layout).
W_ii, W_if, W_ig, W_io = 1.0, 0.5, 1.0, -0.5        # weight_ih (4, 1)
W_hi, W_hf, W_hg, W_ho = 0.5, -1.0, 1.0, 0.5        # weight_hh (4, 1)
b_ii, b_if, b_ig, b_io = 0.0, 1.0, 0.0, 0.0         # bias_ih (4,): forget bias 1
b_hi, b_hf, b_hg, b_ho = 0.0, 0.0, 0.0, 0.0         # bias_hh (4,)
H0, C0 = 0.0, 0.5                                   # initial state
X1, X2 = 1.0, -1.0                                  # the input sequence
DH1, DH2 = 1.0, 1.0                                 # L = h1 + h2


def _params():
    return {"weight_ih": np.array([[W_ii], [W_if], [W_ig], [W_io]]),
            "weight_hh": np.array([[W_hi], [W_hf], [W_hg], [W_ho]]),
            "bias_ih": np.array([b_ii, b_if, b_ig, b_io]), "bias_hh": np.array([b_hi, b_hf, b_hg, b_ho])}


def _hand_step(x, h, c, pencil):
    """Eqs. (1)–(4) for one scalar step; `pencil` holds the 6-decimal values written in the comments below."""
    i = check_pencil(sigma(W_ii * x + b_ii + W_hi * h + b_hi), pencil["i"])       # (1), (2)
    f = check_pencil(sigma(W_if * x + b_if + W_hf * h + b_hf), pencil["f"])       # (1), (2)
    g = check_pencil(math.tanh(W_ig * x + b_ig + W_hg * h + b_hg), pencil["g"])   # (1), (2)
    o = check_pencil(sigma(W_io * x + b_io + W_ho * h + b_ho), pencil["o"])       # (1), (2)
    c_new = check_pencil(f * c + i * g, pencil["c"])                              # (3)
    tanh_c = check_pencil(math.tanh(c_new), pencil["tanh_c"])                     # (4)
    h_new = check_pencil(o * tanh_c, pencil["h"])                                 # (4)
    return {"i": i, "f": f, "g": g, "o": o, "c": c_new, "tanh_c": tanh_c, "h": h_new}


def _hand_forward():
    # Step 1 (x1 = 1, h0 = 0, c0 = 0.5):
    #   i1 = σ(1·1 + 0.5·0)          = σ(1)                         ≈ 0.731059
    #   f1 = σ(0.5·1 − 1·0 + 1)      = σ(1.5)                       ≈ 0.817574
    #   g1 = tanh(1·1 + 1·0)         = tanh(1)                      ≈ 0.761594
    #   o1 = σ(−0.5·1 + 0.5·0)       = σ(−0.5)                      ≈ 0.377541
    #   c1 = f1·c0 + i1·g1           = 0.408787 + 0.556770          ≈ 0.965557
    #   tanh(c1)                                                    ≈ 0.746745
    #   h1 = o1·tanh(c1)                                            ≈ 0.281927
    s1 = _hand_step(X1, H0, C0, {"i": 0.731059, "f": 0.817574, "g": 0.761594, "o": 0.377541, "c": 0.965557,
                                 "tanh_c": 0.746745, "h": 0.281927})
    # Step 2 (x2 = −1, h1 ≈ 0.281927, c1 ≈ 0.965557):
    #   i2 = σ(−1 + 0.5·h1)          = σ(−0.859037)                 ≈ 0.297541
    #   f2 = σ(−0.5 − h1 + 1)        = σ(0.218073)                  ≈ 0.554303
    #   g2 = tanh(−1 + h1)           = tanh(−0.718073)              ≈ −0.615714
    #   o2 = σ(0.5 + 0.5·h1)         = σ(0.640963)                  ≈ 0.654971
    #   c2 = f2·c1 + i2·g2           = 0.535211 − 0.183200          ≈ 0.352011
    #   tanh(c2)                                                    ≈ 0.338158
    #   h2 = o2·tanh(c2)                                            ≈ 0.221484
    s2 = _hand_step(X2, s1["h"], s1["c"], {"i": 0.297541, "f": 0.554303, "g": -0.615714, "o": 0.654971,
                                           "c": 0.352011, "tanh_c": 0.338158, "h": 0.221484})
    return s1, s2


def _hand_step_back(s, h_prev, c_prev, hbar, cbar, pencil):
    """Eqs. (5)–(8), (10) for one scalar step: the chain rule through (4), (3), (2), (1) in reverse."""
    obar = check_pencil(hbar * s["tanh_c"], pencil["obar"])                                   # (5) ∂h/∂o = tanh(c)
    # (6) c_t reaches L along two paths: carried from step t+1 (c̄) and through h_t = o·tanh(c_t)
    chat = check_pencil(cbar + hbar * s["o"] * (1.0 - s["tanh_c"] ** 2), pencil["chat"])
    fbar = check_pencil(chat * c_prev, pencil["fbar"])                                        # (7) ∂c/∂f = c_prev
    ibar = check_pencil(chat * s["g"], pencil["ibar"])                                        # (7) ∂c/∂i = g
    gbar = check_pencil(chat * s["i"], pencil["gbar"])                                        # (7) ∂c/∂g = i
    cbar_prev = check_pencil(chat * s["f"], pencil["cbar_prev"])                              # (7) ∂c/∂c_prev = f
    da_i = check_pencil(ibar * s["i"] * (1.0 - s["i"]), pencil["da_i"])                       # (8) σ'
    da_f = check_pencil(fbar * s["f"] * (1.0 - s["f"]), pencil["da_f"])                       # (8) σ'
    da_g = check_pencil(gbar * (1.0 - s["g"] ** 2), pencil["da_g"])                           # (8) tanh'
    da_o = check_pencil(obar * s["o"] * (1.0 - s["o"]), pencil["da_o"])                       # (8) σ'
    hbar_prev = check_pencil(da_i * W_hi + da_f * W_hf + da_g * W_hg + da_o * W_ho, pencil["hbar_prev"])   # (10)
    return {"da_i": da_i, "da_f": da_f, "da_g": da_g, "da_o": da_o, "hbar_prev": hbar_prev,
            "cbar_prev": cbar_prev}


def _hand_bptt(s1, s2):
    h1, c1 = s1["h"], s1["c"]
    # Step 2 back, with h̄2 = dh2 = 1 and c̄2 = 0 (nothing flows from later):
    #   ō2 = tanh(c2) ≈ 0.338158
    #   ĉ2 = 0 + 1·o2·(1 − tanh²c2) ≈ 0.654971·0.885649 ≈ 0.580075
    #   f̄2 = ĉ2·c1 ≈ 0.560095     ī2 = ĉ2·g2 ≈ −0.357160     ḡ2 = ĉ2·i2 ≈ 0.172596     c̄1 = ĉ2·f2 ≈ 0.321537
    #   ā_i2 = ī2·i2(1 − i2) ≈ −0.074650     ā_f2 = f̄2·f2(1 − f2) ≈ 0.138372
    #   ā_g2 = ḡ2·(1 − g2²)  ≈ 0.107164      ā_o2 = ō2·o2(1 − o2) ≈ 0.076418
    #   h̄1 from step 2 = 0.5·ā_i2 − 1·ā_f2 + 1·ā_g2 + 0.5·ā_o2 ≈ −0.037325 − 0.138372 + 0.107164 + 0.038209
    #                  ≈ −0.030324
    b2 = _hand_step_back(s2, h1, c1, DH2, 0.0,
                         {"obar": 0.338158, "chat": 0.580075, "fbar": 0.560095, "ibar": -0.357160,
                          "gbar": 0.172596, "cbar_prev": 0.321537, "da_i": -0.074650, "da_f": 0.138372,
                          "da_g": 0.107164, "da_o": 0.076418, "hbar_prev": -0.030324})
    # Total adjoints at step 1 (eq. 11): h̄1 = dh1 + (−0.030324) = 0.969676;  c̄1 = 0.321537 (carried)
    hbar1 = check_pencil(DH1 + b2["hbar_prev"], 0.969676)
    cbar1 = b2["cbar_prev"]
    # Step 1 back, with h̄1 ≈ 0.969676, c̄1 ≈ 0.321537, h0 = 0, c0 = 0.5:
    #   ō1 = h̄1·tanh(c1) ≈ 0.724101
    #   ĉ1 = c̄1 + h̄1·o1·(1 − tanh²c1) ≈ 0.321537 + 0.969676·0.377541·0.442371 ≈ 0.483486
    #        (dropping c̄1 here, as in the cs231n bug, would give 0.161949 and wrong gradients below)
    #   f̄1 = ĉ1·c0 ≈ 0.241743     ī1 = ĉ1·g1 ≈ 0.368220      ḡ1 = ĉ1·i1 ≈ 0.353457      c̄0 = ĉ1·f1 ≈ 0.395286
    #   ā_i1 ≈ 0.072396     ā_f1 ≈ 0.036055     ā_g1 ≈ 0.148443     ā_o1 ≈ 0.170166
    #   h̄0 = 0.5·ā_i1 − 1·ā_f1 + 1·ā_g1 + 0.5·ā_o1 ≈ 0.233669
    b1 = _hand_step_back(s1, H0, C0, hbar1, cbar1,
                         {"obar": 0.724101, "chat": 0.483486, "fbar": 0.241743, "ibar": 0.368220,
                          "gbar": 0.353457, "cbar_prev": 0.395286, "da_i": 0.072396, "da_f": 0.036055,
                          "da_g": 0.148443, "da_o": 0.170166, "hbar_prev": 0.233669})
    # (9) summed over the two steps. All four gates see x_t on the input side and h_{t-1} on the recurrent side
    # (h0 = 0, so step 1 adds nothing to weight_hh); bias_ih and bias_hh get the same gradient.
    gates = ("da_i", "da_f", "da_g", "da_o")
    grads = {
        "weight_ih": [[b1[a] * X1 + b2[a] * X2] for a in gates],      # ∂L/∂W_iG = ā_G1·x1 + ā_G2·x2
        "weight_hh": [[b1[a] * H0 + b2[a] * h1] for a in gates],      # ∂L/∂W_hG = ā_G1·h0 + ā_G2·h1
        "bias_ih": [b1[a] + b2[a] for a in gates],
        "bias_hh": [b1[a] + b2[a] for a in gates],
        # (10) x̄_t = ā_i·W_ii + ā_f·W_if + ā_g·W_ig + ā_o·W_io
        "x": [[[b["da_i"] * W_ii + b["da_f"] * W_if + b["da_g"] * W_ig + b["da_o"] * W_io]] for b in (b1, b2)],
        "h0": [[b1["hbar_prev"]]],
        "c0": [[b1["cbar_prev"]]],
    }
    # Two totals by pencil: ∂L/∂W_if = ā_f1·1 + ā_f2·(−1) ≈ 0.036055 − 0.138372 ≈ −0.102317;
    #                       ∂L/∂c0 ≈ 0.395286 (above; re-derived in forward mode in the test below)
    check_pencil(grads["weight_ih"][1][0], -0.102317)
    check_pencil(grads["c0"][0][0], 0.395286)
    return {k: np.array(v, dtype=np.float64) for k, v in grads.items()}


def _module_run():
    params = _params()
    x = np.array([X1, X2]).reshape(2, 1, 1)                        # (T, B, I)
    state0 = lstm.LSTMState(h=np.array([[H0]]), c=np.array([[C0]]))
    h, cache = lstm.forward(params, x, state0)
    grads = lstm.backward(params, np.array([DH1, DH2]).reshape(2, 1, 1), cache)
    return h, cache, grads


def test_forward_matches_hand_trajectory():
    s1, s2 = _hand_forward()
    h, cache, _ = _module_run()
    assert h.shape == (2, 1, 1) and cache.c.shape == (2, 1, 1)
    for t, s in enumerate((s1, s2)):
        assert h[t, 0, 0] == pytest.approx(s["h"], abs=1e-14)
        for field in ("i", "f", "g", "o", "c", "tanh_c"):
            assert getattr(cache, field)[t, 0, 0] == pytest.approx(s[field], abs=1e-14), field


def test_backward_matches_hand_bptt():
    hand = _hand_bptt(*_hand_forward())
    _, _, grads = _module_run()
    assert set(grads) == set(hand)
    for k in hand:
        assert grads[k].shape == hand[k].shape, k
        np.testing.assert_allclose(grads[k], hand[k], rtol=0, atol=1e-13, err_msg=k)


def test_c0_gradient_by_forward_chain_rule():
    """∂L/∂c0 once more, organised the other way round (forward mode), and by finite differences of the hand map.

    With κ_t = o_t(1 − tanh²c_t) = ∂h_t/∂c_t:
        ∂h1/∂c0 = κ1·f1,   ∂c1/∂c0 = f1,
        ∂h2/∂c0 = (∂h2/∂h1)·∂h1/∂c0 + (∂h2/∂c1)·∂c1/∂c0,     ∂h2/∂c1 = κ2·f2,
        ∂h2/∂h1 = tanh(c2)·o2(1 − o2)·W_ho
                  + κ2·[g2·i2(1 − i2)·W_hi + c1·f2(1 − f2)·W_hf + i2(1 − g2²)·W_hg]                  (eq. 13)
        ∂L/∂c0 = ∂h1/∂c0 + ∂h2/∂c0 = κ1·f1·(1 + ∂h2/∂h1) + κ2·f2·f1.
    By pencil: κ1 ≈ 0.377541·0.442371 ≈ 0.167013; κ2 ≈ 0.654971·0.885649 ≈ 0.580075;
    ∂h2/∂h1 ≈ −0.030324 (as h̄1 − 1 in the BPTT above);
    ∂L/∂c0 ≈ 0.167013·0.817574·0.969676 + 0.580075·0.554303·0.817574 ≈ 0.132405 + 0.262881 ≈ 0.395286.
    The second term is the path through the cell state; a backward that forgets to carry c̄ loses it.
    """
    s1, s2 = _hand_forward()
    kappa1 = check_pencil(s1["o"] * (1 - s1["tanh_c"] ** 2), 0.167013)
    kappa2 = check_pencil(s2["o"] * (1 - s2["tanh_c"] ** 2), 0.580075)
    dh2_dh1 = check_pencil(s2["tanh_c"] * s2["o"] * (1 - s2["o"]) * W_ho
                     + kappa2 * (s2["g"] * s2["i"] * (1 - s2["i"]) * W_hi
                                 + s1["c"] * s2["f"] * (1 - s2["f"]) * W_hf
                                 + s2["i"] * (1 - s2["g"] ** 2) * W_hg), -0.030324)
    through_h = check_pencil(kappa1 * s1["f"] * (1 + dh2_dh1), 0.132405)
    through_c = check_pencil(kappa2 * s2["f"] * s1["f"], 0.262881)
    by_chain_rule = check_pencil(through_h + through_c, 0.395286)

    def hand_loss(c0):         # the two scalar steps again from (h0, c0), L = h1 + h2
        h, c, total = H0, c0, 0.0
        for x in (X1, X2):
            i, f = sigma(W_ii * x + W_hi * h), sigma(W_if * x + W_hf * h + b_if)
            g, o = math.tanh(W_ig * x + W_hg * h), sigma(W_io * x + W_ho * h)
            c = f * c + i * g
            h = o * math.tanh(c)
            total += h
        return total

    eps = 1e-6
    by_fd = (hand_loss(C0 + eps) - hand_loss(C0 - eps)) / (2 * eps)
    _, _, grads = _module_run()
    assert grads["c0"][0, 0] == pytest.approx(by_chain_rule, abs=1e-13)
    assert by_fd == pytest.approx(by_chain_rule, abs=1e-8)
    # the module's state Jacobian at step 2, rows [h2; c2], columns [h1; c1]
    J = lstm.state_jacobian(_params(), np.array([[X2]]), lstm.LSTMState(np.array([[s1["h"]]]), np.array([[s1["c"]]])))
    assert J.shape == (1, 2, 2)
    assert J[0, 0, 0] == pytest.approx(dh2_dh1, abs=1e-14)          # ∂h2/∂h1
    assert J[0, 0, 1] == pytest.approx(kappa2 * s2["f"], abs=1e-14)  # ∂h2/∂c1
    assert J[0, 1, 1] == pytest.approx(s2["f"], abs=1e-14)           # ∂c2/∂c1
    # eq. (15) for H = 1: det J = f2 · tanh(c2)·o2(1 − o2)·W_ho ≈ 0.554303·0.338158·0.225984·0.5 ≈ 0.021179
    det = check_pencil(s2["f"] * s2["tanh_c"] * s2["o"] * (1 - s2["o"]) * W_ho, 0.021179)
    assert np.linalg.det(J[0]) == pytest.approx(det, abs=1e-14)


def test_state_jacobian_determinant_factorises():
    """Eqs. (15), (16): det J = det(diag f) · det(diag(s_o) W_ho) and ‖J⁻¹‖ > 4/σ_min(W_ho), on a random H = 3 case."""
    rng = np.random.default_rng(11)
    B, I, H = 2, 3, 3
    params = lstm.init_params(I, H, rng, np.float64)
    x_t = rng.standard_normal((B, I))
    state = lstm.random_state(rng, B, H, np.float64)
    J = lstm.state_jacobian(params, x_t, state)
    _, cache = lstm.step_forward(params, x_t, state)
    W_ho_ = params["weight_hh"][3 * H:]                                            # (H, H)
    for b in range(B):
        expected = np.prod(cache.f[b]) * np.linalg.det(
            (cache.tanh_c[b] * cache.o[b] * (1 - cache.o[b]))[:, None] * W_ho_)
        assert np.linalg.det(J[b]) == pytest.approx(expected, rel=1e-10)
        # eq. (16): the inverse is at least as large as the inverse of its h-h block diag(s_o) W_ho, and |s_o| < 1/4
        inv_norm = np.linalg.norm(np.linalg.inv(J[b]), 2)
        s_o = cache.tanh_c[b] * cache.o[b] * (1 - cache.o[b])
        assert inv_norm >= (1 - 1e-10) / np.linalg.svd(s_o[:, None] * W_ho_, compute_uv=False)[-1]
        assert inv_norm > 4.0 / np.linalg.svd(W_ho_, compute_uv=False)[-1]


def _torch_case(name):
    """(params, x, state0, dh): the toy case, or a random one with B, H > 1 that exercises the gate layout."""
    if name == "toy":
        return (_params(), np.array([X1, X2]).reshape(2, 1, 1),
                lstm.LSTMState(np.array([[H0]]), np.array([[C0]])), np.ones((2, 1, 1)))
    return random_case(lstm, seed=5, T=5, B=2, I=3, H=4)


@pytest.mark.parametrize("case", ["toy", "random"])
def test_matches_torch_lstm(case):
    """Cross-check against torch.nn.LSTM in float64 (skipped where torch is not installed)."""
    torch = pytest.importorskip("torch")
    params, x, state0, dh = _torch_case(case)
    h, cache = lstm.forward(params, x, state0)
    grads = lstm.backward(params, dh, cache)

    net = torch_layer(torch, torch.nn.LSTM, params)
    x_t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    h0_t = torch.tensor(state0.h[None], dtype=torch.float64, requires_grad=True)   # (num_layers=1, B, H)
    c0_t = torch.tensor(state0.c[None], dtype=torch.float64, requires_grad=True)
    out, (_, c_last) = net(x_t, (h0_t, c0_t))                                       # out (T, B, H)
    (out * torch.from_numpy(dh)).sum().backward()        # ∂loss/∂h_t = dh_t; c has no instantaneous adjoint

    assert rel_error(h, out.detach().numpy()) <= 1e-12
    assert rel_error(cache.c[-1], c_last.detach().numpy()[0]) <= 1e-12
    for name, theirs in torch_layer_grads(net, params).items():
        assert rel_error(grads[name], theirs) <= 1e-10, name
    assert rel_error(grads["x"], x_t.grad.numpy()) <= 1e-10
    assert rel_error(grads["h0"], h0_t.grad.numpy()[0]) <= 1e-10
    assert rel_error(grads["c0"], c0_t.grad.numpy()[0]) <= 1e-10
