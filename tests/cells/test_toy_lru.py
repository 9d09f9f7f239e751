"""The LRU cell on a hand-worked toy, its initialisation distribution, and its option checks.

Toy: N = 1 unit, I = 1 input, batch 1, T = 2 steps, h0 = 0, with round parameters
    nu_log = log(log 2)     → exp(nu_log) = log 2,  |λ| = exp(−log 2) = 1/2
    theta_log = log(π/2)    → phase π/2,            λ = ½·(cos π/2 + i sin π/2) = 0.5i
    gamma_log = 0           → γ = 1
    B_re = 2, B_im = 1      → B = 2 + i
    x = [1, −1]
Every value below is worked out by hand in the comments (eq. numbers of refimpl/cells/lru.py) and asserted against the
module. Complex adjoints follow DESIGN.md §4: z̄ = ∂L/∂Re z + i ∂L/∂Im z.
"""

import math

import numpy as np
import pytest

from refimpl.cells import lru
from refimpl.errors import UnknownNameError, UnsupportedError

LOG2 = math.log(2.0)
HALF_PI = math.pi / 2
ATOL = 1e-12   # the only rounding is in exp/log/cos(π/2) ≈ 6e-17: hand values hold to ~1e-15

TOY_PARAMS = {"nu_log": np.array([math.log(LOG2)]), "theta_log": np.array([math.log(HALF_PI)]),
              "gamma_log": np.array([0.0]), "B_re": np.array([[2.0]]), "B_im": np.array([[1.0]])}
TOY_X = np.array([1.0, -1.0]).reshape(2, 1, 1)        # (T, B, I)
TOY_H0 = np.zeros((1, 1), dtype=np.complex128)        # (B, N)
G = 1.0 + 1.0j                                        # L = Re(conj(g)·h_1) = Re h_1 + Im h_1


def _close(got, want):
    np.testing.assert_allclose(np.asarray(got).ravel(), np.ravel(want), rtol=0, atol=ATOL)


def test_toy_lambda_gamma():
    # (1) λ = exp(−log 2 + i·π/2) = ½ · i,  γ = exp(0) = 1
    lam, gamma = lru.lambda_gamma(TOY_PARAMS)
    _close(lam, [0.5j])
    _close(gamma, [1.0])


def test_toy_forward_by_hand():
    # (2)-(3) t = 0: h_0 = λ·0 + γ·B·x_0 = (2 + i)·1 = 2 + i
    #         t = 1: h_1 = λ·h_0 + γ·B·x_1 = 0.5i·(2 + i) + (2 + i)·(−1)
    #                    = (i + 0.5i²) − 2 − i = (−0.5 + i) − 2 − i = −2.5
    h, cache = lru.forward(TOY_PARAMS, TOY_X, TOY_H0)
    assert h.dtype == np.complex128 and h.shape == (2, 1, 1)
    _close(h, [2.0 + 1.0j, -2.5 + 0.0j])
    _close(cache.h_prev, [0.0, 2.0 + 1.0j])


def test_toy_bptt_by_hand():
    # L = Re(conj(g)·h_1) with g = 1 + i, so dh_0 = 0, dh_1 = g; L = −2.5.
    # (8)/(5) h̄_1 = g = 1 + i
    #         h̄_0 = conj(λ)·h̄_1 = −0.5i·(1 + i) = 0.5 − 0.5i
    #         h̄_{−1} = conj(λ)·h̄_0 = −0.5i·(0.5 − 0.5i) = −0.25 − 0.25i                        → dh0
    #         λ̄ = conj(h_0)·h̄_1 + conj(h_{−1})·h̄_0 = (2 − i)(1 + i) + 0 = 2 + 2i − i + 1 = 3 + i
    # (6)     G = Σ_t γ·x_t·h̄_t = 1·(0.5 − 0.5i) + (−1)·(1 + i) = −0.5 − 1.5i
    #         → ∂L/∂B_re = Re G = −0.5,  ∂L/∂B_im = +Im G = −1.5   (JAX's cotangent is conj G = −0.5 + 1.5i, so JAX
    #           code writes the same −1.5 as −Im(conj G); +Im of the JAX cotangent would give the wrong +1.5)
    #         γ̄ = Σ_t Re(conj(B x_t)·h̄_t) = Re((2 − i)(0.5 − 0.5i)) + Re(−(2 − i)(1 + i))
    #           = Re(1 − i − 0.5i − 0.5) + Re(−(3 + i)) = 0.5 − 3 = −2.5
    #         x̄_0 = Re(conj(γB)·h̄_0) = Re((2 − i)(0.5 − 0.5i)) = 0.5
    #         x̄_1 = Re(conj(γB)·h̄_1) = Re((2 − i)(1 + i)) = Re(3 + i) = 3
    # (7)     conj(λ)·λ̄ = −0.5i·(3 + i) = 0.5 − 1.5i
    #         ∂L/∂nu_log    = −exp(nu_log)·Re(conj(λ)λ̄) = −log 2 · 0.5  = −0.5 log 2
    #         ∂L/∂theta_log =  exp(theta_log)·Im(conj(λ)λ̄) = (π/2)·(−1.5) = −3π/4
    #         ∂L/∂gamma_log = γ·γ̄ = −2.5
    # Check of two by direct differentiation: h_1 = γ(λB − B) = −2.5γ ⇒ L = −2.5γ ⇒ ∂L/∂gamma_log = −2.5 ✓;
    # h_1 = λB x_0 + B x_1 ⇒ ∂L/∂x_1 = Re(conj(g)·B) = Re((1 − i)(2 + i)) = Re(3 − i) = 3 ✓.
    h, cache = lru.forward(TOY_PARAMS, TOY_X, TOY_H0)
    _close(np.real(np.conj(G) * h[1]), [-2.5])
    dh = np.zeros_like(h)
    dh[1] = G
    grads = lru.backward(TOY_PARAMS, dh, cache)
    _close(grads["B_re"], [-0.5])
    _close(grads["B_im"], [-1.5])
    _close(grads["gamma_log"], [-2.5])
    _close(grads["nu_log"], [-0.5 * LOG2])
    _close(grads["theta_log"], [-3 * math.pi / 4])
    _close(grads["x"], [0.5, 3.0])
    _close(grads["h0"], [-0.25 - 0.25j])
    assert grads["h0"].dtype == np.complex128 and grads["x"].dtype == np.float64


def test_toy_bptt_adds_instantaneous_adjoints():
    # Add Re h_0 to the loss: dh_0 = 1, dh_1 = g. The extra paths from h_0 (eq. 5-7 at t = 0 with h̄_0 += 1):
    #   ū_0 += 1 ⇒ G += γ·x_0·1 = 1 ⇒ ∂B_re += 1, ∂B_im += 0
    #   γ̄ += Re(conj(B x_0)·1) = Re(2 − i) = 2 ⇒ ∂gamma_log += 2
    #   λ̄ += conj(h_{−1})·1 = 0 ⇒ nu_log, theta_log unchanged
    #   x̄_0 += Re(conj(γB)·1) = 2;  h̄_{−1} += conj(λ)·1 = −0.5i
    # Totals: B_re 0.5, B_im −1.5, gamma_log −0.5, nu_log −0.5 log 2, theta_log −3π/4, x [2.5, 3], h0 −0.25 − 0.75i.
    _, cache = lru.forward(TOY_PARAMS, TOY_X, TOY_H0)
    dh = np.array([1.0 + 0.0j, G]).reshape(2, 1, 1)
    grads = lru.backward(TOY_PARAMS, dh, cache)
    _close(grads["B_re"], [0.5])
    _close(grads["B_im"], [-1.5])
    _close(grads["gamma_log"], [-0.5])
    _close(grads["nu_log"], [-0.5 * LOG2])
    _close(grads["theta_log"], [-3 * math.pi / 4])
    _close(grads["x"], [2.5, 3.0])
    _close(grads["h0"], [-0.25 - 0.75j])


def test_toy_jacobians_and_sensitivities_by_hand():
    # (9) J = λ = 0.5i. (10) at t = 1 (h_prev = h_0 = 2 + i, x_1 = −1):
    #   ∂h_1/∂nu_log    = −exp(nu_log)·λ·h_0 = −log 2 · 0.5i(2 + i) = −log 2 · (−0.5 + i) = log 2 · (0.5 − i)
    #   ∂h_1/∂theta_log = i·exp(theta_log)·λ·h_0 = i(π/2)(−0.5 + i) = −(π/2)(1 + 0.5i)
    #   ∂h_1/∂gamma_log = γ·B·x_1 = −(2 + i);   ∂h_1/∂B_re = γ x_1 = −1;   ∂h_1/∂B_im = i γ x_1 = −i
    h, _ = lru.forward(TOY_PARAMS, TOY_X, TOY_H0)
    _close(lru.state_jacobian(TOY_PARAMS, TOY_X[1], h[0]), [0.5j])
    imm1 = lru.param_jacobian(TOY_PARAMS, TOY_X[1], h[0])
    _close(imm1["nu_log"], [LOG2 * (0.5 - 1.0j)])
    _close(imm1["theta_log"], [-HALF_PI * (1.0 + 0.5j)])
    _close(imm1["gamma_log"], [-2.0 - 1.0j])
    _close(imm1["B_re"], [-1.0])
    _close(imm1["B_im"], [-1.0j])
    # (11) diagonal RTRL. t = 0 (h_{−1} = 0, x_0 = 1): s_0 = immediate = nu 0, theta 0, gamma_log 2 + i, B_re 1, B_im i.
    # s_1 = λ s_0 + imm_1:  gamma_log 0.5i(2 + i) − (2 + i) = −2.5;  B_re 0.5i − 1;  B_im 0.5i·i − i = −0.5 − i;
    #                       nu_log log 2·(0.5 − i);  theta_log −(π/2)(1 + 0.5i).
    # ∂L/∂p = Re(conj(s_1)·g), g = 1 + i:  B_re Re((−1 − 0.5i)(1 + i)) = −0.5;  B_im Re((−0.5 + i)(1 + i)) = −1.5;
    # gamma_log −2.5;  nu_log log 2·Re((0.5 + i)(1 + i)) = −0.5 log 2;  theta_log −(π/2)·Re((1 − 0.5i)(1 + i)) = −3π/4
    # — the BPTT values of test_toy_bptt_by_hand, as eq. (11) promises.
    imm0 = lru.param_jacobian(TOY_PARAMS, TOY_X[0], TOY_H0)
    _close(imm0["gamma_log"], [2.0 + 1.0j])
    _close(imm0["nu_log"], [0.0])
    lam, _ = lru.lambda_gamma(TOY_PARAMS)
    s1 = {k: lam * imm0[k].ravel() + imm1[k].ravel() for k in imm1}
    want = {"B_re": -0.5, "B_im": -1.5, "gamma_log": -2.5, "nu_log": -0.5 * LOG2, "theta_log": -3 * math.pi / 4}
    for k, v in want.items():
        _close(np.real(np.conj(s1[k]) * G), [v])


# ---- initialisation ---------------------------------------------------------------------------------------------

INIT_CASES = [{}, {"r_min": 0.5, "r_max": 0.9, "max_phase": math.pi / 10}, {"r_min": 0.9, "r_max": 0.999}]


@pytest.mark.parametrize("options", INIT_CASES, ids=["default", "ring-0.5-0.9-pi/10", "ring-0.9-0.999"])
def test_init_distribution(options):
    """|λ|² ~ U[r_min², r_max²], phase ~ U[0, max_phase], γ = √(1 − |λ|²), B ~ N(0, 1/(2I)), on N = 20000 units.

    Tolerances are 5 standard errors of each statistic for this sample size (a fixed seed makes the test
    deterministic; 5σ makes it robust to any seed): a mean of n uniforms on [a, b] has s.e. (b − a)/√(12 n); a
    histogram count with bin probability p has s.d. √(n p (1 − p)); the sample variance of M normals with variance σ²
    has relative s.e. √(2/M); their sample mean has s.e. σ/√M.
    """
    N, I = 20000, 4
    opts = {**lru.OPTIONS, **options}
    params = lru.init_params(I, N, np.random.default_rng(2023), np.float64, **options)
    assert {k: v.shape for k, v in params.items()} == lru.param_shapes(I, N)
    assert all(v.dtype == np.float64 and np.all(np.isfinite(v)) for v in params.values())
    lam, gamma = lru.lambda_gamma(params)
    lam_sq = np.abs(lam) ** 2
    a, b = opts["r_min"] ** 2, opts["r_max"] ** 2
    assert lam_sq.min() >= a * (1 - 1e-12) and lam_sq.max() <= b * (1 + 1e-12)
    assert abs(lam_sq.mean() - (a + b) / 2) <= 5 * (b - a) / math.sqrt(12 * N)
    counts, _ = np.histogram(lam_sq, bins=10, range=(a, b))
    assert np.all(np.abs(counts - N / 10) <= 5 * math.sqrt(N * 0.1 * 0.9)), counts
    phase = np.exp(params["theta_log"])           # the phase itself (np.angle would wrap it into (−π, π])
    max_phase = opts["max_phase"]
    assert phase.min() > 0 and phase.max() <= max_phase * (1 + 1e-12)
    assert abs(phase.mean() - max_phase / 2) <= 5 * max_phase / math.sqrt(12 * N)
    counts, _ = np.histogram(phase, bins=10, range=(0, max_phase))
    assert np.all(np.abs(counts - N / 10) <= 5 * math.sqrt(N * 0.1 * 0.9)), counts
    np.testing.assert_allclose(gamma, np.sqrt(1 - lam_sq), rtol=1e-8)
    M, var = N * I, 1 / (2 * I)
    for key in ("B_re", "B_im"):
        B = params[key]
        assert abs(B.mean()) <= 5 * math.sqrt(var / M), key
        assert abs(B.var() / var - 1) <= 5 * math.sqrt(2 / M), key
    corr = np.mean(params["B_re"] * params["B_im"]) / var
    assert abs(corr) <= 5 / math.sqrt(M)


def test_init_is_seeded_and_float32():
    p1 = lru.init_params(3, 7, np.random.default_rng(5), np.float32)
    p2 = lru.init_params(3, 7, np.random.default_rng(5), np.float32)
    for k in p1:
        assert p1[k].dtype == np.float32
        np.testing.assert_array_equal(p1[k], p2[k])
    lam, _ = lru.lambda_gamma(p1)
    assert lam.dtype == np.complex64
    assert lru.zero_state(2, 7, np.float32).dtype == np.complex64
    assert lru.random_state(np.random.default_rng(0), 2, 7, np.float64).dtype == np.complex128


class _ConstantRNG:
    """Stands in for numpy.random.Generator: every uniform draw is `u`, every normal draw 0 (init_params's draws)."""

    def __init__(self, u):
        self.u = u

    def uniform(self, size):
        return np.full(size, self.u)

    def standard_normal(self, size):
        return np.zeros(size)


@pytest.mark.parametrize("u", [0.0, np.nextafter(1.0, 0.0)], ids=["u=0", "u=1-ulp"])
@pytest.mark.parametrize("r_max", [1.0, 1e-200], ids=["r_max=1", "r_max=1e-200"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_init_edge_draws_stay_finite(u, r_max, dtype):
    # u = 0 with r_min = 0 gives |λ|² = 0 and phase 0 (log 0 = −inf without the clip); u → 1 with r_max = 1 gives
    # |λ|² → 1, i.e. nu_log = log 0 and γ = 0. r_max = 1e-200 squares to 0 in float64. All must stay finite.
    params = lru.init_params(2, 3, _ConstantRNG(u), dtype, r_min=0.0, r_max=r_max)
    for k, v in params.items():
        assert np.all(np.isfinite(v)), f"{k} = {v}"
    lam, gamma = lru.lambda_gamma(params)
    assert np.all(np.abs(lam) < 1.0) and np.all(gamma > 0)
    if r_max == 1.0 and u > 0.5:   # the clip |λ|² ≤ 1 − 1e-6: γ = √(1e-6) = 1e-3
        np.testing.assert_allclose(gamma, 1e-3, rtol=1e-3)


@pytest.mark.parametrize("options,words", [
    ({"r_min": 0.5, "r_max": 0.5}, ["r_min", "r_max", "0 ≤ r_min < r_max ≤ 1"]),
    ({"r_min": 0.9, "r_max": 0.5}, ["r_min", "r_max", "0 ≤ r_min < r_max ≤ 1"]),
    ({"r_max": 1.5}, ["r_max", "0 ≤ r_min < r_max ≤ 1"]),
    ({"r_min": -0.1}, ["r_min", "0 ≤ r_min < r_max ≤ 1"]),
    ({"max_phase": -1.0}, ["max_phase", "max_phase > 0"]),
    ({"max_phase": 0.0}, ["max_phase", "max_phase > 0"]),
    ({"r_max": float("nan")}, ["r_max", "finite"]),
    ({"max_phase": "wide"}, ["max_phase", "number"]),
], ids=["r_min=r_max", "r_min>r_max", "r_max>1", "r_min<0", "max_phase<0", "max_phase=0", "nan", "not-a-number"])
def test_bad_options_raise_clear_errors(options, words):
    with pytest.raises(UnsupportedError) as info:
        lru.init_params(2, 3, np.random.default_rng(0), np.float64, **options)
    assert isinstance(info.value, ValueError)
    msg = str(info.value)
    for w in words:
        assert w in msg, f"{w!r} missing from: {msg}"
    assert "pass" in msg   # says how to fix it


def test_unknown_option_is_named():
    with pytest.raises(UnknownNameError, match="r_mx"):
        lru.init_params(2, 3, np.random.default_rng(0), np.float64, r_mx=0.5)


# ---- torch as an independent oracle of the complex convention (skips where torch is not installed) -----------------

def test_bptt_matches_torch_autograd():
    # torch's complex autograd uses the convention of DESIGN.md §4 (grad = ∂L/∂Re z + i ∂L/∂Im z), so its h0.grad is
    # directly comparable; the real parameters are compared as they are.
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(31)
    T, B, I, N = 6, 2, 3, 4
    params = lru.init_params(I, N, rng, np.float64, r_min=0.5, r_max=0.99)
    x = rng.standard_normal((T, B, I))
    h0 = lru.random_state(rng, B, N, np.float64)
    dh = rng.standard_normal((T, B, N)) + 1j * rng.standard_normal((T, B, N))
    p_t = {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in params.items()}
    x_t = torch.from_numpy(x.copy()).requires_grad_(True)
    h0_t = torch.from_numpy(h0.copy()).requires_grad_(True)
    lam = torch.exp(-torch.exp(p_t["nu_log"]) + 1j * torch.exp(p_t["theta_log"]))         # (1)
    gamma = torch.exp(p_t["gamma_log"])
    B_c = torch.complex(p_t["B_re"], p_t["B_im"])
    h_t, loss = h0_t, 0.0
    for t in range(T):
        h_t = lam * h_t + gamma * (x_t[t].to(B_c.dtype) @ B_c.T)                          # (2)-(3)
        loss = loss + torch.real(torch.conj(torch.from_numpy(dh[t])) * h_t).sum()         # ∂loss/∂h_t = dh_t
    loss.backward()
    _, cache = lru.forward(params, x, h0)
    grads = lru.backward(params, dh, cache)
    theirs = {k: v.grad.numpy() for k, v in p_t.items()}
    theirs["x"], theirs["h0"] = x_t.grad.numpy(), h0_t.grad.numpy()
    for k, v in theirs.items():
        err = np.linalg.norm((grads[k] - v).ravel()) / np.linalg.norm(v.ravel())
        assert err <= 1e-10, f"d{k}: refimpl vs torch relative error {err:.2e}"
