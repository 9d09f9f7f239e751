r"""Linear recurrent unit (LRU, Orvieto et al. 2023): forward, hand-derived backward, state and parameter Jacobians.

Shapes: B batch, T time, I input width, N complex state units. The prefix r(…) marks a real array, c(…) a complex one.
Parameters (DESIGN.md §3), all real, in the cell's real dtype:
    nu_log r(N), theta_log r(N), gamma_log r(N), B_re r(N, I), B_im r(N, I).
The state h is complex: complex128 for float64 params, complex64 for float32. The input x is real.
The layer's output map y = Re(C h) + D ⊙ x belongs to the model layer, not to the cell.

Forward, one step (docs/derivations/lru.md):

    (1)  λ = exp(−exp(ν_log) + i·exp(θ_log))      γ = exp(γ_log)                          c(N), r(N)
    (2)  u_t = γ ⊙ (B x_t),   B = B_re + i·B_im                                            c(B, N)
    (3)  h_t = λ ⊙ h_{t-1} + u_t                                                           c(B, N)

Complex adjoints (DESIGN.md §4). For a real loss L and z = a + i b the adjoint is

    (4)  z̄ = ∂L/∂a + i ∂L/∂b;   w = u·z ⇒ z̄ += conj(u)·w̄, ū += conj(z)·w̄;
         real p, z = f(p) ⇒ ∂L/∂p = Re(conj(∂z/∂p)·z̄)

(PyTorch's convention; JAX returns the conjugate, which is why JAX code writes ∂L/∂B_im = −Im(·) where we write +Im(·)).

Backward, one step. h̄_t is the *total* adjoint of h_t: the instantaneous part dh_t plus what flows back from h_{t+1}.
Sums Σ_b run over the batch.

    (5)  ū_t = h̄_t        λ̄_t = Σ_b conj(h_{t-1}) ⊙ h̄_t        h̄_{t-1} = conj(λ) ⊙ h̄_t              adjoint of (3)
    (6)  B̄_re += Re G_t,  B̄_im += Im G_t,  G_t = (γ ⊙ ū_t)ᵀ x_t                                      adjoint of (2)
         γ̄_t = Σ_b Re(conj(B x_t) ⊙ ū_t)        x̄_t = Re((γ ⊙ ū_t) conj(B))
    (7)  ν̄_log += −exp(ν_log) ⊙ Re(conj(λ) ⊙ λ̄_t)     θ̄_log += exp(θ_log) ⊙ Im(conj(λ) ⊙ λ̄_t)         adjoint of (1)
         γ̄_log += γ ⊙ γ̄_t

BPTT over a sequence (eq. 8): h̄_{T-1} = dh_{T-1};  h̄_{t-1} = dh_{t-1} + conj(λ) ⊙ h̄_t (the (5) term), run for
t = T-1 … 0; the parameter gradients are the sums of (6)-(7) over t, and h̄_{-1} is the gradient of h0 (complex).

What the online algorithms need (written once, here). The map h_{t-1} ↦ h_t is holomorphic, so its Jacobian is the
complex diagonal matrix

    (9)  J_t = ∂h_t/∂h_{t-1} = diag(λ)                        returned compactly as c(B, N) (λ broadcast over batch)

and the immediate derivatives with h_{t-1} held fixed (only the parameter's own row k feeds unit k):

    (10) ∂h_t[k]/∂ν_log[k] = −exp(ν_log[k]) λ_k h_{t-1}[k]       ∂h_t[k]/∂θ_log[k] = i exp(θ_log[k]) λ_k h_{t-1}[k]
         ∂h_t[k]/∂γ_log[k] = γ_k (B x_t)[k]                     ∂h_t[k]/∂B_re[k, i] = γ_k x_t[i]
         ∂h_t[k]/∂B_im[k, i] = i γ_k x_t[i]                      every other entry (row ≠ k) is zero.

With them the exact sensitivities s_t = ∂h_t/∂p of a real parameter p obey, unit by unit,

    (11) s_t = λ ⊙ s_{t-1} + (10),   s_{-1} = 0,      ∂L/∂p = Σ_t Σ_b Re(conj(s_t) ⊙ dh_t)

(diagonal RTRL: equal to the BPTT gradient of (8); not implemented in this module).

Initialisation (`init_params`, options r_min, r_max, max_phase): |λ|² ~ U[r_min², r_max²] (λ uniform on the ring),
phase exp(θ_log) ~ U[0, max_phase], γ = √(1 − |λ|²), every entry of B_re and B_im ~ N(0, 1/(2I)).
NOTE: |λ|² is clipped to [tiny, 1 − LAMBDA_SQ_MARGIN] and the phase to ≥ tiny (tiny = smallest normal float64), so
u = 0, r_min = 0 or r_max = 1 never give log(0) = −inf: ν_log, θ_log, γ_log are always finite. The upper clip only
touches draws with |λ| > 1 − 5e-7 (it keeps |λ| < 1 representable in float32 and γ ≥ 1e-3).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..arrays import namespace
from ..errors import ShapeError, UnknownNameError, UnsupportedError
from .common import sequence_backward, sequence_forward
from .common import add_to_h, flatten_state, state_h, unflatten_state  # noqa: F401 (the state contract: state = h)
from .common import state_from_parts  # noqa: F401 (the state contract: state = h)

OPTIONS = {"r_min": 0.0, "r_max": 1.0, "max_phase": 2 * math.pi}   # all init-only
STEP_OPTIONS = ()                   # no option changes the dynamics
GRAD_STATE_KEYS = ("h0",)

# The state contract (refimpl/cells/__init__.py): a complex h (S = N) with a diagonal Jacobian, read by the model
# through the LRU output map y = Re(C h) + D x (refimpl/nn/layers.py)
STATE_ARG, STATE_ROWS = "h0", 1
STATE_DOC = "h0 complex (B,N)"                           # the initial state as the kernel signatures write it
RECURRENT_PARAMS = ("nu_log", "theta_log")               # the parameters that act on h_(t-1): λ
DIAGONAL = COMPLEX_STATE = OUTPUT_MAP = True


#: |λ|² ≤ 1 − LAMBDA_SQ_MARGIN at initialisation: keeps |λ| < 1 in float32 and γ = √(1 − |λ|²) ≥ 1e-3.
LAMBDA_SQ_MARGIN = 1e-6
_TINY = np.finfo(np.float64).tiny   # floor of |λ|² and of the phase, so that no log sees 0


class LRUCache(NamedTuple):
    """What the backward step needs from the forward step (fields (B, ·); stacked caches have a leading T)."""
    x: np.ndarray        # x_t       r(B, I)
    h_prev: np.ndarray   # h_{t-1}   c(B, N)
    h: np.ndarray        # h_t       c(B, N)


def param_shapes(n_in: int, n_hidden: int) -> dict:
    N, I = n_hidden, n_in
    return {"nu_log": (N,), "theta_log": (N,), "gamma_log": (N,), "B_re": (N, I), "B_im": (N, I)}


def complex_dtype(dtype) -> np.dtype:
    """The state dtype that goes with a real dtype: float64 → complex128, float32 → complex64."""
    return np.result_type(np.dtype(dtype), np.complex64)


def _init_options(options: dict) -> tuple[float, float, float]:
    """Fill in defaults and validate r_min, r_max, max_phase; raise a clear error on anything else."""
    for key in options:
        if key not in OPTIONS:
            raise UnknownNameError("lru option", key, OPTIONS, "the lru cell takes r_min, r_max and max_phase")
    values = {}
    for key, default in OPTIONS.items():
        raw = options.get(key, default)
        try:
            values[key] = float(raw)
        except (TypeError, ValueError):
            raise UnsupportedError(f"lru option {key}={raw!r} is not a number; pass a float "
                                   f"(default {key}={default:g})") from None
        if not math.isfinite(values[key]):
            raise UnsupportedError(f"lru option {key}={raw!r} is not finite; pass a finite float "
                                   f"(default {key}={default:g})")
    r_min, r_max, max_phase = values["r_min"], values["r_max"], values["max_phase"]
    if not 0.0 <= r_min < r_max <= 1.0:
        raise UnsupportedError(
            f"lru ring radii r_min={r_min:g}, r_max={r_max:g} are invalid: the eigenvalue moduli |λ| are drawn on "
            f"the ring r_min ≤ |λ| ≤ r_max, which needs 0 ≤ r_min < r_max ≤ 1 (|λ| > 1 makes the recurrence blow "
            f"up); pass e.g. the defaults r_min=0.0, r_max=1.0, or r_min=0.9, r_max=0.999 for long memory")
    if not max_phase > 0.0:
        raise UnsupportedError(
            f"lru max_phase={max_phase:g} is invalid: phases are drawn from U[0, max_phase] and kept as "
            f"theta_log = log(phase), which needs max_phase > 0; pass e.g. the default max_phase=2π "
            f"(6.2832) or max_phase=π/10 (0.3142) for long-range tasks")
    return r_min, r_max, max_phase


def init_params(n_in: int, n_hidden: int, rng: np.random.Generator, dtype, **options) -> dict:
    """The LRU initialisation of Orvieto et al. (2023), see the module docstring.

    Args:
        n_in: I ≥ 1.  n_hidden: N ≥ 1.  rng: the Generator every draw comes from.  dtype: the real dtype.
        options: r_min (0.0), r_max (1.0), max_phase (2π); 0 ≤ r_min < r_max ≤ 1 and max_phase > 0.
    Returns:
        {nu_log r(N), theta_log r(N), gamma_log r(N), B_re r(N, I), B_im r(N, I)} in `dtype`.
    Draw order: U[0,1) for |λ|² (N), U[0,1) for the phase (N), N(0,1) for B_re (N, I), then for B_im (N, I).
    """
    r_min, r_max, max_phase = _init_options(options)
    if n_in < 1 or n_hidden < 1:
        raise ShapeError(f"lru sizes n_in={n_in}, n_hidden={n_hidden} are invalid: both must be ≥ 1")
    N, I = n_hidden, n_in
    dtype = np.dtype(dtype)
    lam_sq = rng.uniform(size=N) * (r_max ** 2 - r_min ** 2) + r_min ** 2           # |λ|² ~ U[r_min², r_max²]
    lam_sq = np.clip(lam_sq, _TINY, 1.0 - LAMBDA_SQ_MARGIN)                          # no log(0) (NOTE above)
    nu_log = np.log(-0.5 * np.log(lam_sq)).astype(dtype)                              # exp(−exp(ν_log)) = |λ|
    phase = np.maximum(max_phase * rng.uniform(size=N), _TINY)                        # ~ U[0, max_phase]
    theta_log = np.log(phase).astype(dtype)
    # γ = √(1 − |λ|²) from the stored (rounded) ν_log, as 1 − |λ|² = −expm1(−2 exp(ν_log)) without cancellation
    gamma_log = (0.5 * np.log(-np.expm1(-2.0 * np.exp(nu_log.astype(np.float64))))).astype(dtype)
    scale = 1.0 / math.sqrt(2 * I)                                                    # Var = 1/(2I) per part
    B_re = (scale * rng.standard_normal((N, I))).astype(dtype)
    B_im = (scale * rng.standard_normal((N, I))).astype(dtype)
    return {"nu_log": nu_log, "theta_log": theta_log, "gamma_log": gamma_log, "B_re": B_re, "B_im": B_im}


def zero_state(batch: int, n_hidden: int, dtype) -> np.ndarray:
    """h0 = 0, complex (dtype may be the real dtype or the complex one)."""
    return np.zeros((batch, n_hidden), dtype=complex_dtype(dtype))


def lambda_gamma(params: dict) -> tuple[np.ndarray, np.ndarray]:
    """λ c(N) and γ r(N) of eq. (1) (array-API code, refimpl/arrays.py)."""
    xp = namespace(params["nu_log"])
    lam = xp.exp(-xp.exp(params["nu_log"]) + 1j * xp.exp(params["theta_log"]))     # (1)  c(N)
    gamma = xp.exp(params["gamma_log"])                                              # (1)  r(N)
    return lam, gamma


def _b_matrix(params: dict) -> np.ndarray:
    return params["B_re"] + 1j * params["B_im"]                                      # (2)  c(N, I)


def step_forward(params: dict, x_t: np.ndarray, h_prev: np.ndarray):
    """One step. x_t r(B, I), h_prev c(B, N) → h_t c(B, N), LRUCache."""
    lam, gamma = lambda_gamma(params)                                                # (1)
    u = gamma * (x_t @ _b_matrix(params).T)                                          # (2)  c(B, N)
    h = lam * h_prev + u                                                             # (3)  c(B, N)
    return h, LRUCache(x=x_t, h_prev=h_prev, h=h)


def step_backward(params: dict, dh_total: np.ndarray, cache: LRUCache):
    """One step back. dh_total = h̄_t c(B, N) → (dparams, x̄_t r(B, I), h̄_{t-1} contribution c(B, N))."""
    lam, gamma = lambda_gamma(params)
    B = _b_matrix(params)                                                            # c(N, I)
    du = dh_total                                                                    # (5)  c(B, N)
    dlam = np.sum(np.conj(cache.h_prev) * dh_total, axis=0)                          # (5)  c(N)
    dh_prev = np.conj(lam) * dh_total                                                # (5)  c(B, N)
    G = (gamma * du).T @ cache.x                                                     # (6)  c(N, I)
    dgamma = np.sum(np.real(np.conj(cache.x @ B.T) * du), axis=0)                    # (6)  r(N)
    dx = np.real((gamma * du) @ np.conj(B))                                          # (6)  r(B, I)
    conj_lam_dlam = np.conj(lam) * dlam                                              # (7)  c(N)
    dparams = {"nu_log": -np.exp(params["nu_log"]) * np.real(conj_lam_dlam),         # (7)  r(N)
               "theta_log": np.exp(params["theta_log"]) * np.imag(conj_lam_dlam),    # (7)  r(N)
               "gamma_log": gamma * dgamma,                                          # (7)  r(N)
               "B_re": np.real(G), "B_im": np.imag(G)}                               # (6)  r(N, I)
    return dparams, dx, dh_prev


def step_input_backward(params: dict, dh_total: np.ndarray, cache: LRUCache):
    """x̄_t r(B, I) alone, eqs. (5)–(6): step_backward without the parameter and h_{t-1} adjoints. Array-API code
    (refimpl/arrays.py): the online rules' device step runs it on a backend's arrays (refimpl/training/device.py)."""
    xp = namespace(dh_total)
    _, gamma = lambda_gamma(params)
    return xp.real((gamma * dh_total) @ xp.conj(_b_matrix(params)))                  # (6)  r(B, I)


def state_jacobian(params: dict, x_t: np.ndarray, h_prev: np.ndarray) -> np.ndarray:
    """J_t = ∂h_t/∂h_{t-1} = diag(λ), eq. (9), in compact form: c(B, N) with entry [b, k] = J[b, k, k].

    The map is holomorphic: ∂h_t/∂Re h_{t-1} = diag(λ), ∂h_t/∂Im h_{t-1} = i·diag(λ). The dense (B, N, N) Jacobian is
    np.einsum("bk,kj->bkj", J, np.eye(N)).
    """
    lam, _ = lambda_gamma(params)
    return np.broadcast_to(lam, h_prev.shape).astype(np.result_type(lam, h_prev))   # (9)  c(B, N)


def param_jacobian(params: dict, x_t: np.ndarray, h_prev: np.ndarray) -> dict:
    """Immediate ∂h_t/∂θ with h_{t-1} held fixed, eq. (10), in COMPACT diagonal form (all complex, state dtype):

        nu_log, theta_log, gamma_log: c(B, N),     entry [b, k]    = ∂h_t[b, k]/∂p[k]
        B_re, B_im:                   c(B, N, I),  entry [b, k, i] = ∂h_t[b, k]/∂B[k, i]

    Every entry ∂h_t[b, k]/∂p[j, …] with j ≠ k is zero. The dense form {name: (B, N, *shape)} is
    np.einsum("bk...,kj->bkj...", compact, np.eye(N)).
    """
    lam, gamma = lambda_gamma(params)
    cdtype = np.result_type(lam, h_prev)
    Bx = x_t @ _b_matrix(params).T                                                   # c(B, N)
    dB_re = (gamma[None, :, None] * x_t[:, None, :]).astype(cdtype)                  # (10) c(B, N, I)
    return {"nu_log": (-np.exp(params["nu_log"]) * lam * h_prev).astype(cdtype),     # (10) c(B, N)
            "theta_log": (1j * np.exp(params["theta_log"]) * lam * h_prev).astype(cdtype),
            "gamma_log": (gamma * Bx).astype(cdtype),
            "B_re": dB_re, "B_im": 1j * dB_re}


def forward(params: dict, x: np.ndarray, h0: np.ndarray):
    """Run the sequence, (1)–(3) for t = 0 … T−1. x r(T, B, I), h0 c(B, N) → h c(T, B, N), LRUCache with a leading T
    axis."""
    cache = sequence_forward(step_forward, params, x, h0)
    return cache.h, cache


def backward(params: dict, dh: np.ndarray, cache: LRUCache) -> dict:
    """BPTT, eq. (8). dh c(T, B, N) instantaneous adjoints (convention (4))
    → {param: grad, "x": r(T, B, I), "h0": c(B, N)}."""
    dh_T = np.zeros(dh.shape[1:], dtype=cache.h.dtype)      # (8) h̄_{T-1} = dh_{T-1}: nothing from step T  c(B, N)
    grads, dx, dh0 = sequence_backward(step_backward, add_to_h, params, dh, cache, dh_T)
    return {**grads, "x": dx, "h0": dh0}


def random_state(rng: np.random.Generator, batch: int, n_hidden: int, dtype) -> np.ndarray:
    """A random complex initial state (E|h|² = 0.25 per unit, like the rnn's), for tests and kernel input specs."""
    scale = 0.5 / math.sqrt(2.0)
    re = rng.standard_normal((batch, n_hidden))
    im = rng.standard_normal((batch, n_hidden))
    return (scale * (re + 1j * im)).astype(complex_dtype(dtype))


def bounded_state() -> bool:
    """Whether something saturates the state: no, the recurrence (3) is linear."""
    return False
