"""The Elman RNN cell on hand-worked toys (tanh and linear), and against torch.nn.RNN where torch is installed.

Toy: H = 1 unit, I = 1 input, batch 1, T = 2 steps, with round parameters
    W_ih = 1,  W_hh = 2,  b_ih = 0.5,  b_hh = −1   (so b_ih + b_hh = −0.5),   h_{−1} = h0 = 0.25
Every value below is worked out by hand in the comments (eq. numbers of refimpl/cells/rnn.py) and asserted.
"""

import math

import numpy as np
import pytest

from refimpl.cells import rnn

from ..toy import random_case, torch_layer, torch_layer_grads

ATOL = 1e-12

TOY_PARAMS = {"weight_ih": np.array([[1.0]]), "weight_hh": np.array([[2.0]]),
              "bias_ih": np.array([0.5]), "bias_hh": np.array([-1.0])}
TOY_H0 = np.array([[0.25]])
ATANH_HALF = 0.5 * math.log(3.0)    # atanh(0.5) = ½ ln((1 + ½)/(1 − ½)) = ½ ln 3 ≈ 0.5493


def _close(got, want):
    np.testing.assert_allclose(np.asarray(got).ravel(), np.ravel(want), rtol=0, atol=ATOL)


def _toy_x(x0, x1):
    return np.array([x0, x1], dtype=np.float64).reshape(2, 1, 1)


def test_toy_tanh_by_hand():
    # x = [½ ln 3, −0.5], chosen so that both tanh values are round.
    # (1) a_0 = W_ih x_0 + b_ih + W_hh h_{−1} + b_hh = ½ ln 3 + 0.5 + 2·0.25 − 1 = ½ ln 3
    # (2) h_0 = tanh(½ ln 3) = 0.5,                φ'(a_0) = 1 − 0.5² = 0.75
    # (1) a_1 = −0.5 + 0.5 + 2·0.5 − 1 = 0
    # (2) h_1 = tanh 0 = 0,                         φ'(a_1) = 1
    # Loss L = h_1 (dh_0 = 0, dh_1 = 1).
    # (3) ā_1 = 1·1 = 1
    # (4) W̄_ih += ā_1 x_1 = −0.5,   W̄_hh += ā_1 h_0 = 0.5,   b̄_ih = b̄_hh += 1
    # (5) x̄_1 = ā_1 W_ih = 1,       h̄_0 = ā_1 W_hh = 2
    # (3) ā_0 = 2·0.75 = 1.5
    # (4) W̄_ih += 1.5·½ ln 3 = 0.75 ln 3,   W̄_hh += 1.5·0.25 = 0.375,   b̄ += 1.5
    # (5) x̄_0 = 1.5·1 = 1.5,       h̄_{−1} = 1.5·2 = 3
    # Totals: W_ih 0.75 ln 3 − 0.5 ≈ 0.3240, W_hh 0.875, b_ih = b_hh 2.5, x [1.5, 1], h0 3.
    x = _toy_x(ATANH_HALF, -0.5)
    h, cache = rnn.forward(TOY_PARAMS, x, TOY_H0, nonlinearity="tanh")
    _close(h, [0.5, 0.0])
    dh = np.array([0.0, 1.0]).reshape(2, 1, 1)
    grads = rnn.backward(TOY_PARAMS, dh, cache, nonlinearity="tanh")
    _close(grads["weight_ih"], [0.75 * math.log(3.0) - 0.5])
    _close(grads["weight_hh"], [0.875])
    _close(grads["bias_ih"], [2.5])
    _close(grads["bias_hh"], [2.5])
    _close(grads["x"], [1.5, 1.0])
    _close(grads["h0"], [3.0])


def test_toy_tanh_jacobians_and_rtrl_by_hand():
    # (7) J_0 = φ'(a_0) W_hh = 0.75·2 = 1.5;   J_1 = φ'(a_1) W_hh = 1·2 = 2
    # (8) t = 0 (x_0 = ½ ln 3, h_{−1} = 0.25): ∂h_0/∂W_ih = 0.75·½ ln 3 = 0.375 ln 3, ∂h_0/∂W_hh = 0.75·0.25 = 0.1875,
    #     ∂h_0/∂b = 0.75.   t = 1 (x_1 = −0.5, h_0 = 0.5): ∂h_1/∂W_ih = −0.5, ∂h_1/∂W_hh = 0.5, ∂h_1/∂b = 1.
    # RTRL: s_1 = J_1 s_0 + imm_1:  W_ih 2·0.375 ln 3 − 0.5 = 0.75 ln 3 − 0.5;  W_hh 2·0.1875 + 0.5 = 0.875;
    #       b 2·0.75 + 1 = 2.5 — the BPTT gradients of L = h_1 above.
    x = _toy_x(ATANH_HALF, -0.5)
    h, _ = rnn.forward(TOY_PARAMS, x, TOY_H0)
    J0 = rnn.state_jacobian(TOY_PARAMS, x[0], TOY_H0)
    J1 = rnn.state_jacobian(TOY_PARAMS, x[1], h[0])
    _close(J0, [1.5])
    _close(J1, [2.0])
    imm0 = rnn.param_jacobian(TOY_PARAMS, x[0], TOY_H0)
    imm1 = rnn.param_jacobian(TOY_PARAMS, x[1], h[0])
    _close(imm0["weight_ih"], [0.375 * math.log(3.0)])
    _close(imm0["weight_hh"], [0.1875])
    _close(imm0["bias_ih"], [0.75])
    _close(imm1["weight_ih"], [-0.5])
    _close(imm1["weight_hh"], [0.5])
    _close(imm1["bias_hh"], [1.0])
    s1 = {k: J1.ravel() * imm0[k].ravel() + imm1[k].ravel() for k in imm1}
    want = {"weight_ih": 0.75 * math.log(3.0) - 0.5, "weight_hh": 0.875, "bias_ih": 2.5, "bias_hh": 2.5}
    for k, v in want.items():
        _close(s1[k], [v])


def test_toy_linear_by_hand():
    # x = [1, −1], φ = id.
    # (1-2) h_0 = 1·1 + 0.5 + 2·0.25 − 1 = 1;   h_1 = 1·(−1) + 0.5 + 2·1 − 1 = 0.5
    # Loss L = h_1.  (3) ā_1 = 1;  (4) W̄_ih += x_1 = −1, W̄_hh += h_0 = 1, b̄ += 1;  (5) x̄_1 = 1, h̄_0 = 2
    #                (3) ā_0 = 2;  (4) W̄_ih += 2·1 = 2, W̄_hh += 2·0.25 = 0.5, b̄ += 2;  (5) x̄_0 = 2, h̄_{−1} = 4
    # Totals: W_ih 1, W_hh 1.5, b 3, x [2, 1], h0 4.
    # Direct check: h_1 = W_ih x_1 + b + W_hh (W_ih x_0 + b + W_hh h_{−1}) ⇒ ∂h_1/∂h_{−1} = W_hh² = 4 ✓,
    # ∂h_1/∂W_ih = x_1 + W_hh x_0 = 1 ✓, ∂h_1/∂b = 1 + W_hh = 3 ✓.
    x = _toy_x(1.0, -1.0)
    h, cache = rnn.forward(TOY_PARAMS, x, TOY_H0, nonlinearity="linear")
    _close(h, [1.0, 0.5])
    _close(rnn.state_jacobian(TOY_PARAMS, x[1], h[0], nonlinearity="linear"), [2.0])
    dh = np.array([0.0, 1.0]).reshape(2, 1, 1)
    grads = rnn.backward(TOY_PARAMS, dh, cache, nonlinearity="linear")
    _close(grads["weight_ih"], [1.0])
    _close(grads["weight_hh"], [1.5])
    _close(grads["bias_ih"], [3.0])
    _close(grads["bias_hh"], [3.0])
    _close(grads["x"], [2.0, 1.0])
    _close(grads["h0"], [4.0])


def test_toy_linear_adds_instantaneous_adjoints():
    # L = h_0 + h_1 (dh = [1, 1]): h̄_0 = 1 + 2 = 3, so ā_0 = 3 and the t = 0 terms triple:
    # W_ih −1 + 3 = 2, W_hh 1 + 0.75 = 1.75, b 1 + 3 = 4, x [3, 1], h0 3·2 = 6.
    x = _toy_x(1.0, -1.0)
    _, cache = rnn.forward(TOY_PARAMS, x, TOY_H0, nonlinearity="linear")
    grads = rnn.backward(TOY_PARAMS, np.ones((2, 1, 1)), cache, nonlinearity="linear")
    _close(grads["weight_ih"], [2.0])
    _close(grads["weight_hh"], [1.75])
    _close(grads["bias_ih"], [4.0])
    _close(grads["x"], [3.0, 1.0])
    _close(grads["h0"], [6.0])


# ---- torch as an independent oracle (skips where torch is not installed) ----------------------------------------

def _torch_case(seed=11):
    return random_case(rnn, seed, T=5, B=3, I=4, H=6)


def _assert_grads_match(ours, theirs, tol=1e-10):
    for k, v in theirs.items():
        a, b = ours[k], v
        err = np.linalg.norm((a - b).ravel()) / max(np.linalg.norm(b.ravel()), 1e-30)
        assert err <= tol, f"d{k}: refimpl vs torch relative error {err:.2e}"


def test_tanh_matches_torch_rnn():
    torch = pytest.importorskip("torch")
    params, x, h0, dh = _torch_case()
    net = torch_layer(torch, torch.nn.RNN, params, nonlinearity="tanh")
    x_t = torch.from_numpy(x.copy()).requires_grad_(True)
    h0_t = torch.from_numpy(h0.copy()[None]).requires_grad_(True)          # (num_layers=1, B, H)
    out, _ = net(x_t, h0_t)
    (out * torch.from_numpy(dh)).sum().backward()                          # ∂loss/∂h_t = dh_t
    h, cache = rnn.forward(params, x, h0, nonlinearity="tanh")
    grads = rnn.backward(params, dh, cache, nonlinearity="tanh")
    np.testing.assert_allclose(h, out.detach().numpy(), rtol=0, atol=1e-12)
    theirs = torch_layer_grads(net, params)
    theirs["x"], theirs["h0"] = x_t.grad.numpy(), h0_t.grad.numpy()[0]
    _assert_grads_match(grads, theirs)


def test_linear_matches_torch_autograd():
    # torch.nn.RNN has no identity nonlinearity: the oracle is torch autograd through the same recurrence, eq. (1).
    torch = pytest.importorskip("torch")
    params, x, h0, dh = _torch_case(seed=12)
    p_t = {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in params.items()}
    x_t = torch.from_numpy(x.copy()).requires_grad_(True)
    h0_t = torch.from_numpy(h0.copy()).requires_grad_(True)
    h_t, outs = h0_t, []
    for t in range(x.shape[0]):
        h_t = (torch.nn.functional.linear(x_t[t], p_t["weight_ih"], p_t["bias_ih"])
               + torch.nn.functional.linear(h_t, p_t["weight_hh"], p_t["bias_hh"]))
        outs.append(h_t)
    out = torch.stack(outs)
    (out * torch.from_numpy(dh)).sum().backward()
    h, cache = rnn.forward(params, x, h0, nonlinearity="linear")
    grads = rnn.backward(params, dh, cache, nonlinearity="linear")
    np.testing.assert_allclose(h, out.detach().numpy(), rtol=0, atol=1e-12)
    theirs = {k: v.grad.numpy() for k, v in p_t.items()}
    theirs["x"], theirs["h0"] = x_t.grad.numpy(), h0_t.grad.numpy()
    _assert_grads_match(grads, theirs)
