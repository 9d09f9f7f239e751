r"""GRU cell (torch.nn.GRU convention) — forward, hand-derived backward, state Jacobian, parameter derivatives.

Shapes: B batch, T time, I input width, H hidden units.
Parameters (DESIGN.md §3, the layout of ``torch.nn.GRU``), gate blocks stacked in the order r, z, n:
    weight_ih (3H, I) = [W_ir; W_iz; W_in],   weight_hh (3H, H) = [W_hr; W_hz; W_hn],
    bias_ih (3H) = [b_ir; b_iz; b_in],        bias_hh (3H) = [b_hr; b_hz; b_hn].
Gate convention: h_t = (1 − z) ⊙ n + z ⊙ h_{t-1}, as PyTorch (z = 1 keeps the old state). Some papers write the
mirror image (1 − z) ⊙ h_{t-1} + z ⊙ n; the two are the same model with z ↔ 1 − z. Note also that r multiplies
(W_hn h + b_hn), *after* the matrix product, again as PyTorch (the 2014 paper puts r before W_hn).

Forward, one step (the derivation is docs/derivations/gru.md, with the same numbering):

    (1)  r = σ(a_r),   a_r = W_ir x_t + b_ir + W_hr h_{t-1} + b_hr                reset gate       (B, H)
    (2)  z = σ(a_z),   a_z = W_iz x_t + b_iz + W_hz h_{t-1} + b_hz                update gate      (B, H)
    (3)  m = W_hn h_{t-1} + b_hn                                                  ("hn" in code)   (B, H)
    (4)  n = tanh(a_n),   a_n = W_in x_t + b_in + r ⊙ m                            candidate        (B, H)
    (5)  h_t = (1 − z) ⊙ n + z ⊙ h_{t-1}

Backward, one step. h̄_t is the *total* adjoint of h_t (the instantaneous dh_t plus what flows back from h_{t+1});
σ'(a) = σ(1 − σ), tanh'(a) = 1 − tanh²:

    (6)  n̄ = h̄_t ⊙ (1 − z)          z̄ = h̄_t ⊙ (h_{t-1} − n)                    from (5)
    (7)  ā_n = n̄ ⊙ (1 − n²)                                                        from (4)
    (8)  r̄ = ā_n ⊙ m                 m̄ = ā_n ⊙ r                                  from (4)
    (9)  ā_z = z̄ ⊙ z(1 − z)          ā_r = r̄ ⊙ r(1 − r)                           from (2), (1)
    (10) with ḡ_ih = [ā_r, ā_z, ā_n] and ḡ_hh = [ā_r, ā_z, m̄]  (B, 3H):
         W̄_ih += ḡ_ihᵀ x_t    b̄_ih += Σ_b ḡ_ih    W̄_hh += ḡ_hhᵀ h_{t-1}    b̄_hh += Σ_b ḡ_hh
    (11) x̄_t = ḡ_ih W_ih           h̄_{t-1} = h̄_t ⊙ z + ḡ_hh W_hh                 (direct path of (5) + gates)

BPTT over a sequence (eq. 12): h̄_{T-1} = dh_{T-1};  h̄_{t-1} = dh_{t-1} + (11), run for t = T-1 … 0; the
parameter gradients are the sums (10) over t, and h̄_{-1} is the gradient of h0.

What the online algorithms need. Setting h̄_t = e_k in (6)–(9) gives the sensitivities of h_t[k] to the gate
pre-activations of unit k (every one of them is elementwise):

    (13) s_r = (1 − z)(1 − n²) m r(1 − r)    s_z = (h_{t-1} − n) z(1 − z)    s_n = (1 − z)(1 − n²)    s_m = s_n r
         S_ih = [s_r, s_z, s_n],  S_hh = [s_r, s_z, s_m]                                               (B, 3H)
    (14) J_t = ∂h_t/∂h_{t-1} = diag(z) + diag(s_r) W_hr + diag(s_z) W_hz + diag(s_m) W_hn                (B, H, H)
    (15) for gate block G ∈ {r, z, n} with row offset g·H:
         ∂h_t[k]/∂W_ih[gH+i, j] = δ_ki S_ih[gH+k] x_t[j]        ∂h_t[k]/∂b_ih[gH+i] = δ_ki S_ih[gH+k]
         ∂h_t[k]/∂W_hh[gH+i, j] = δ_ki S_hh[gH+k] h_{t-1}[j]    ∂h_t[k]/∂b_hh[gH+i] = δ_ki S_hh[gH+k]
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..arrays import namespace
from .common import random_real_state, sequence_backward, sequence_forward, sigmoid, uniform_init
from .common import add_to_h, flatten_state, state_h, unflatten_state  # noqa: F401 (the state contract: state = h)
from .common import state_from_parts  # noqa: F401 (the state contract: state = h)

OPTIONS: dict = {}
STEP_OPTIONS: tuple = ()                  # the GRU has no options that change the dynamics
GRAD_STATE_KEYS = ("h0",)

# The state contract (refimpl/cells/__init__.py): h alone (S = H), real, read directly by the model
STATE_ARG, STATE_ROWS = "h0", 1
STATE_DOC = "h0 (B,H)"                                   # the initial state as the kernel signatures write it
RECURRENT_PARAMS = ("weight_hh", "bias_hh")              # the parameters that act on h_(t-1)
DIAGONAL = COMPLEX_STATE = OUTPUT_MAP = False            # dense Jacobian (B, S, S)


class GRUCache(NamedTuple):
    """What the backward step needs from the forward step (fields (B, ·); stacked caches have a leading T)."""
    x: np.ndarray        # x_t                         (B, I)
    h_prev: np.ndarray   # h_{t-1}                     (B, H)
    r: np.ndarray        # reset gate, eq. (1)         (B, H)
    z: np.ndarray        # update gate, eq. (2)        (B, H)
    n: np.ndarray        # candidate, eq. (4)          (B, H)
    hn: np.ndarray       # m = W_hn h_{t-1} + b_hn, (3) (B, H)
    h: np.ndarray        # h_t, eq. (5)                (B, H)


def param_shapes(n_in: int, n_hidden: int) -> dict:
    H, I = n_hidden, n_in
    return {"weight_ih": (3 * H, I), "weight_hh": (3 * H, H), "bias_ih": (3 * H,), "bias_hh": (3 * H,)}


def init_params(n_in: int, n_hidden: int, rng: np.random.Generator, dtype, **options) -> dict:
    """U(−1/√H, 1/√H) for every entry, as PyTorch."""
    return uniform_init(param_shapes(n_in, n_hidden), n_hidden, rng, dtype)


def zero_state(batch: int, n_hidden: int, dtype) -> np.ndarray:
    return np.zeros((batch, n_hidden), dtype=dtype)


def _split3(v: np.ndarray):
    """(…, 3H) → the r, z, n blocks, each (…, H)."""
    H = v.shape[-1] // 3
    return v[..., :H], v[..., H:2 * H], v[..., 2 * H:]


def step_forward(params: dict, x_t: np.ndarray, h_prev: np.ndarray):
    """One step, eqs. (1)–(5).

    Args:
        params: weight_ih (3H, I), weight_hh (3H, H), bias_ih (3H), bias_hh (3H).
        x_t: input (B, I).
        h_prev: h_{t-1} (B, H).
    Returns:
        h_t (B, H), GRUCache.
    """
    gi = x_t @ params["weight_ih"].T + params["bias_ih"]           # (B, 3H): input parts of (1), (2), (4)
    gh = h_prev @ params["weight_hh"].T + params["bias_hh"]        # (B, 3H): recurrent parts of (1), (2), and (3)
    gi_r, gi_z, gi_n = _split3(gi)
    gh_r, gh_z, hn = _split3(gh)                                   # (3)  hn = m = W_hn h_{t-1} + b_hn
    r = sigmoid(gi_r + gh_r)                                      # (1)  (B, H)
    z = sigmoid(gi_z + gh_z)                                      # (2)  (B, H)
    n = np.tanh(gi_n + r * hn)                                     # (4)  (B, H)
    h = (1.0 - z) * n + z * h_prev                                 # (5)  (B, H)
    return h, GRUCache(x=x_t, h_prev=h_prev, r=r, z=z, n=n, hn=hn, h=h)


def step_backward(params: dict, dh_total: np.ndarray, cache: GRUCache):
    """One step back, eqs. (6)–(11), in reverse order of the forward.

    Args:
        params: as in step_forward.
        dh_total: h̄_t (B, H), the total adjoint of h_t.
        cache: the GRUCache of this step.
    Returns:
        (dparams {name: array of the param's shape}, x̄_t (B, I), h̄_{t-1} contribution (B, H)).
    """
    c = cache
    dg_ih, dg_hh = _gate_adjoints(dh_total, c)                     # (6)–(10)
    dparams = {"weight_ih": dg_ih.T @ c.x, "bias_ih": dg_ih.sum(0),                           # (10)
               "weight_hh": dg_hh.T @ c.h_prev, "bias_hh": dg_hh.sum(0)}
    dx = dg_ih @ params["weight_ih"]                               # (11) (B, I)
    dh_prev = dh_total * c.z + dg_hh @ params["weight_hh"]         # (11) (B, H)
    return dparams, dx, dh_prev


def _gate_adjoints(dh_total: np.ndarray, c: GRUCache):
    """(ḡ_ih, ḡ_hh) (B, 3H) of eqs. (6)–(10) for the total adjoint h̄_t (array-API code, refimpl/arrays.py)."""
    xp = namespace(dh_total)
    dn = dh_total * (1.0 - c.z)                                    # (6)  (B, H)
    dz = dh_total * (c.h_prev - c.n)                               # (6)  (B, H)
    da_n = dn * (1.0 - c.n * c.n)                                  # (7)  (B, H)
    dr = da_n * c.hn                                               # (8)  (B, H)
    dhn = da_n * c.r                                               # (8)  (B, H)
    da_z = dz * c.z * (1.0 - c.z)                                  # (9)  (B, H)
    da_r = dr * c.r * (1.0 - c.r)                                  # (9)  (B, H)
    dg_ih = xp.concat([da_r, da_z, da_n], axis=-1)                 # (10) (B, 3H)
    dg_hh = xp.concat([da_r, da_z, dhn], axis=-1)                  # (10) (B, 3H)
    return dg_ih, dg_hh


def step_input_backward(params: dict, dh_total: np.ndarray, cache: GRUCache):
    """x̄_t (B, I) alone, eqs. (6)–(11): step_backward without the parameter and h_{t-1} adjoints. Array-API code
    (refimpl/arrays.py): the online rules' device step runs it on a backend's arrays (refimpl/training/device.py)."""
    return _gate_adjoints(dh_total, cache)[0] @ params["weight_ih"]                          # (11)


def _sensitivities(cache: GRUCache):
    """S_ih, S_hh of eq. (13): ∂h_t[k]/∂(pre-activations of unit k), each (B, 3H)."""
    c = cache
    s_n = (1.0 - c.z) * (1.0 - c.n * c.n)                          # (13)
    s_r = s_n * c.hn * c.r * (1.0 - c.r)                           # (13)
    s_z = (c.h_prev - c.n) * c.z * (1.0 - c.z)                     # (13)
    s_m = s_n * c.r                                                # (13)
    return np.concatenate([s_r, s_z, s_n], axis=-1), np.concatenate([s_r, s_z, s_m], axis=-1)


def state_jacobian(params: dict, x_t: np.ndarray, h_prev: np.ndarray) -> np.ndarray:
    """J_t = ∂h_t/∂h_{t-1}, eq. (14). Returns (B, H, H) with J[b, k, j] = ∂h_t[b, k]/∂h_{t-1}[b, j]."""
    _, cache = step_forward(params, x_t, h_prev)
    _, S_hh = _sensitivities(cache)                                # (B, 3H)
    B, H = h_prev.shape
    W = params["weight_hh"].reshape(3, H, H)                       # [W_hr, W_hz, W_hn]
    rows = np.einsum("bgk,gkj->bkj", S_hh.reshape(B, 3, H), W)     # (14) Σ_G diag(s_G) W_hG   (B, H, H)
    return rows + cache.z[:, :, None] * np.eye(H, dtype=h_prev.dtype)[None]                # (14) + diag(z)


def param_jacobian(params: dict, x_t: np.ndarray, h_prev: np.ndarray) -> dict:
    """Immediate ∂h_t/∂θ with h_{t-1} held fixed, eq. (15): {name: (B, H, *shape)}, entry [b, k, ...]."""
    _, cache = step_forward(params, x_t, h_prev)
    S_ih, S_hh = _sensitivities(cache)                             # (B, 3H) each
    B, H = h_prev.shape
    eye = np.eye(H, dtype=h_prev.dtype)                            # δ_ki

    def per_bias(S):                                               # (15): [b, k, gH+i] = δ_ki S[b, gH+k]
        return np.einsum("bgk,ki->bkgi", S.reshape(B, 3, H), eye).reshape(B, H, 3 * H)

    d_bih, d_bhh = per_bias(S_ih), per_bias(S_hh)                  # (B, H, 3H)
    return {"weight_ih": d_bih[:, :, :, None] * x_t[:, None, None, :],        # (B, H, 3H, I)
            "weight_hh": d_bhh[:, :, :, None] * h_prev[:, None, None, :],     # (B, H, 3H, H)
            "bias_ih": d_bih, "bias_hh": d_bhh}


def forward(params: dict, x: np.ndarray, h0: np.ndarray):
    """Run the sequence, (1)–(5) for t = 0 … T−1.

    Args:
        params: as in step_forward.
        x: inputs (T, B, I).
        h0: initial state (B, H).
    Returns:
        h (T, B, H), GRUCache whose fields have a leading T axis.
    """
    cache = sequence_forward(step_forward, params, x, h0)
    return cache.h, cache


def backward(params: dict, dh: np.ndarray, cache: GRUCache) -> dict:
    """BPTT, eq. (12): (6)–(11) for t = T−1 … 0, the gradients (10) summed over t.

    Args:
        params: as in step_forward.
        dh: instantaneous adjoints (T, B, H).
        cache: the stacked GRUCache from forward.
    Returns:
        {param: grad (param's shape), "x": (T, B, I), "h0": (B, H)}.
    """
    dh_T = np.zeros_like(dh[0])                       # (12) h̄_{T-1} = dh_{T-1}: nothing flows back from step T
    grads, dx, dh0 = sequence_backward(step_backward, add_to_h, params, dh, cache, dh_T)
    return {**grads, "x": dx, "h0": dh0}


random_state = random_real_state      # a random initial state, for tests and kernel input specs


def bounded_state() -> bool:
    """Whether something saturates the state: yes, h_t is a convex combination (5) of h_{t-1} and n ∈ (−1, 1)."""
    return True
