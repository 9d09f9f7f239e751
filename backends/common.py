r"""What every backend needs and none of them owns: checks and gradient assembly, written once for any array module.

Every function here is backend-neutral: it takes the array module `xp` (numpy for Numba and for the CuPy emulation,
cupy, mlx.core) where it creates or transforms arrays, and uses only what those three share. The backend packages
may import this module; they never import each other. Equation numbers: "(lru n)" refimpl/cells/lru.py, "(r n)"
refimpl/algorithms/rtrl.py.

    check_nonlinearity       the rnn's nonlinearity against refimpl.cells.rnn.NONLINEARITIES
    param_grads              {param: gradient} in the parameters' order and dtypes (every kernel returns through it)
    previous_states          h_prev (T, B, ·) = [h0, h_0, …, h_{T-2}] from the initial state and the states
    lru_w2                   the LRU's input matrix as one real (2N, I) matrix of interleaved (re, im) rows
    lru_param_grads          the LRU's complex-parameter tail (lru 6)-(7), shared by its BPTT, RTRL and FPTT kernels

The EP network of a kernel call is refimpl.ep.net_from_kernel_args (it reads only shapes, so it takes any backend's
arrays). The EP activations ρ, ρ′, ρ″ are the reference's own (refimpl.ep.rho, drho, d2rho) where a backend runs them
as array code: they are NumPy ufunc code, which CuPy arrays dispatch to CuPy (NEP 13/18). MLX, whose arrays do not
dispatch, writes them again with mlx.core. Numba writes them again too, as @njit scalar functions (backends/numba/ep.py
_rho, _drho, _d2rho): its relaxation is one compiled loop over the elements, and compiled code cannot call the
reference's NumPy functions (outside that loop, for the parameter gradients, it uses refimpl.ep.rho).
"""

from __future__ import annotations

import numpy as np

from refimpl.cells.rnn import NONLINEARITIES
from refimpl.errors import UnknownNameError


def check_nonlinearity(nonlinearity: str) -> None:
    """The rnn kernels' `nonlinearity` must be one the reference cell has (refimpl.cells.rnn.NONLINEARITIES)."""
    if nonlinearity not in NONLINEARITIES:
        raise UnknownNameError("rnn nonlinearity", nonlinearity, NONLINEARITIES)


def param_grads(params: dict, computed: dict) -> dict:
    """The gradients in the parameters' order, each in its parameter's dtype (as zeros_like_params + add_into in the
    references); an array already in that dtype is returned as it is (no copy)."""
    return {k: computed[k] if computed[k].dtype == v.dtype else computed[k].astype(v.dtype) for k, v in params.items()}


def previous_states(xp, first, seq):
    """[first, seq_0, …, seq_{T-2}] (T, B, ·): the h_prev (or c_prev) cache field from the initial state and the
    states of every step."""
    return xp.concatenate([first[None], seq[:-1]], axis=0)


# ------------------------------------------------------------------------------------------------------------ lru

def lru_w2(xp, params: dict, gamma, rdt):
    """W2 (2N, I) of real dtype `rdt`: the rows γ_k B_re[k] and γ_k B_im[k] interleaved. A complex (…, N) C-array
    viewed as real is (…, 2N) with columns [re_0, im_0, re_1, im_1, …], so with a real x

        u = γ ⊙ (B x)  is  x @ W2ᵀ  viewed as complex                                              (lru 2)
        x̄ = Re((γ ⊙ ū) conj(B))  is  ū_pairs @ W2                                                  (lru 6)"""
    N, I = params["B_re"].shape
    W2 = xp.empty((2 * N, I), rdt)
    W2[0::2] = gamma[:, None] * params["B_re"]
    W2[1::2] = gamma[:, None] * params["B_im"]
    return W2


def lru_param_grads(xp, params: dict, q_re, q_im, M_re, M_im, gamma, gamma_log=None, *, recurrent: bool = True,
                    wide: bool = True) -> dict:
    """{param: gradient} of the LRU from its complex sums (lru 6)-(7):

        ν̄_log = −e^{ν_log} Re q,   θ̄_log = e^{θ_log} Im q,   q = conj(λ) λ̄ (BPTT, FPTT) or Σ conj(Q) δ (RTRL, r 8)
        B̄_re + i B̄_im = γ ⊙ (M_re + i M_im),   M = Σ_{t,b} ū_t x_tᵀ (or Σ conj(Z) δ)
        γ̄_log = γ ⊙ Σ_i (B_re ⊙ M_re + B_im ⊙ M_im)   unless the kernel passes gamma_log (= Re Σ conj(u) ū, its
                                                       own running sum)

    recurrent=False: ν_log, θ_log held constant, zero gradient (r 14). wide: e^{ν_log}, e^{θ_log} in float64, as the
    NumPy and CuPy kernels accumulate q (MLX, which has no float64 on its GPU, keeps the parameters' dtype)."""
    nu, theta = params["nu_log"], params["theta_log"]
    if wide:
        nu, theta = nu.astype(np.float64), theta.astype(np.float64)
    if gamma_log is None:
        gamma_log = gamma * xp.sum(params["B_re"] * M_re + params["B_im"] * M_im, axis=1)        # (lru 6), (lru 7)
    g = gamma[:, None]
    return param_grads(params, {
        "nu_log": -xp.exp(nu) * q_re if recurrent else xp.zeros_like(nu),                         # (lru 7)
        "theta_log": xp.exp(theta) * q_im if recurrent else xp.zeros_like(theta),                 # (lru 7)
        "gamma_log": gamma_log,                                                                   # (lru 7)
        "B_re": g * M_re, "B_im": g * M_im})                                                      # (lru 6)
