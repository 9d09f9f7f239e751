r"""Elman RNN cell, tanh or linear — forward, hand-derived backward, state Jacobian, parameter derivatives.

Shapes: B batch, T time, I input width, H hidden units.
Parameters (DESIGN.md §3, the layout of ``torch.nn.RNN``):
    weight_ih (H, I), weight_hh (H, H), bias_ih (H), bias_hh (H).

Forward, one step (docs/derivations/rnn.md):

    (1)  a_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh                        pre-activation    (B, H)
    (2)  h_t = φ(a_t),   φ = tanh  (nonlinearity="tanh")  or  φ = id  ("linear")

Backward, one step. h̄_t is the *total* adjoint of h_t: the instantaneous part dh_t (what a memoryless readout
sends at step t) plus what flows back from h_{t+1}:

    (3)  ā_t   = h̄_t ⊙ φ'(a_t),   φ'(a_t) = 1 − h_t²  (tanh)  or  1  (linear)
    (4)  W̄_ih += ā_tᵀ x_t      b̄_ih += Σ_b ā_t      W̄_hh += ā_tᵀ h_{t-1}      b̄_hh += Σ_b ā_t
    (5)  x̄_t   = ā_t W_ih        h̄_{t-1} = ā_t W_hh

BPTT over a sequence (eq. 6): h̄_{T-1} = dh_{T-1};  h̄_{t-1} = dh_{t-1} + (5), run for t = T-1 … 0; the
parameter gradients are the sums (4) over t, and h̄_{-1} is the gradient of h0.

What the online algorithms need (written once, here):

    (7)  J_t = ∂h_t/∂h_{t-1} = diag(φ'(a_t)) W_hh                                          (B, H, H)
    (8)  ∂h_t[k]/∂W_ih[i, j] = δ_ki φ'(a_t)[k] x_t[j]       ∂h_t[k]/∂b_ih[i] = δ_ki φ'(a_t)[k]
         ∂h_t[k]/∂W_hh[i, j] = δ_ki φ'(a_t)[k] h_{t-1}[j]   ∂h_t[k]/∂b_hh[i] = δ_ki φ'(a_t)[k]
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..arrays import namespace
from .common import random_real_state, sequence_backward, sequence_forward, uniform_init
from .common import add_to_h, flatten_state, state_h, unflatten_state  # noqa: F401 (the state contract: state = h)
from .common import state_from_parts  # noqa: F401 (the state contract: state = h)

OPTIONS = {"nonlinearity": "tanh"}
STEP_OPTIONS = ("nonlinearity",)          # the options the step/sequence functions take (the rest are init-only)
NONLINEARITIES = ("tanh", "linear")
GRAD_STATE_KEYS = ("h0",)

# The state contract (refimpl/cells/__init__.py): h alone (S = H), real, read directly by the model
STATE_ARG, STATE_ROWS = "h0", 1
STATE_DOC = "h0 (B,H)"                                   # the initial state as the kernel signatures write it
RECURRENT_PARAMS = ("weight_hh", "bias_hh")              # the parameters that act on h_(t-1)
DIAGONAL = COMPLEX_STATE = OUTPUT_MAP = False            # dense Jacobian (B, S, S)


class RNNCache(NamedTuple):
    """What the backward step needs from the forward step (fields (B, ·); stacked caches have a leading T)."""
    x: np.ndarray        # x_t       (B, I)
    h_prev: np.ndarray   # h_{t-1}   (B, H)
    h: np.ndarray        # h_t       (B, H)


def param_shapes(n_in: int, n_hidden: int) -> dict:
    H, I = n_hidden, n_in
    return {"weight_ih": (H, I), "weight_hh": (H, H), "bias_ih": (H,), "bias_hh": (H,)}


def init_params(n_in: int, n_hidden: int, rng: np.random.Generator, dtype, **options) -> dict:
    """U(−1/√H, 1/√H) for every entry, as PyTorch."""
    return uniform_init(param_shapes(n_in, n_hidden), n_hidden, rng, dtype)


def zero_state(batch: int, n_hidden: int, dtype) -> np.ndarray:
    return np.zeros((batch, n_hidden), dtype=dtype)


def _dphi(h: np.ndarray, nonlinearity: str) -> np.ndarray:
    """φ'(a) written through h = φ(a) (array-API code: also on a backend's arrays, refimpl/arrays.py)."""
    return 1.0 - h * h if nonlinearity == "tanh" else namespace(h).ones_like(h)


def step_forward(params: dict, x_t: np.ndarray, h_prev: np.ndarray, nonlinearity: str = "tanh"):
    """One step. x_t (B, I), h_prev (B, H) → h_t (B, H), RNNCache."""
    a = x_t @ params["weight_ih"].T + params["bias_ih"] + h_prev @ params["weight_hh"].T + params["bias_hh"]  # (1)
    h = np.tanh(a) if nonlinearity == "tanh" else a                                                          # (2)
    return h, RNNCache(x=x_t, h_prev=h_prev, h=h)


def step_backward(params: dict, dh_total: np.ndarray, cache: RNNCache, nonlinearity: str = "tanh"):
    """One step back. dh_total = h̄_t (B, H) → (dparams, x̄_t (B, I), h̄_{t-1} contribution (B, H))."""
    da = dh_total * _dphi(cache.h, nonlinearity)                                                # (3)  (B, H)
    dparams = {"weight_ih": da.T @ cache.x, "bias_ih": da.sum(0),                               # (4)
               "weight_hh": da.T @ cache.h_prev, "bias_hh": da.sum(0)}
    dx = da @ params["weight_ih"]                                                               # (5)  (B, I)
    dh_prev = da @ params["weight_hh"]                                                          # (5)  (B, H)
    return dparams, dx, dh_prev


def step_input_backward(params: dict, dh_total: np.ndarray, cache: RNNCache, nonlinearity: str = "tanh"):
    """x̄_t (B, I) alone, eqs. (3) and (5): step_backward without the parameter and h_{t-1} adjoints. Array-API code
    (refimpl/arrays.py): the online rules' device step runs it on a backend's arrays (refimpl/training/device.py)."""
    return (dh_total * _dphi(cache.h, nonlinearity)) @ params["weight_ih"]                     # (3), (5)


def state_jacobian(params: dict, x_t: np.ndarray, h_prev: np.ndarray, nonlinearity: str = "tanh") -> np.ndarray:
    """J_t = ∂h_t/∂h_{t-1}, eq. (7). Returns (B, H, H) with J[b, k, j] = ∂h_t[b, k]/∂h_{t-1}[b, j]."""
    h, _ = step_forward(params, x_t, h_prev, nonlinearity)
    return _dphi(h, nonlinearity)[:, :, None] * params["weight_hh"][None]


def param_jacobian(params: dict, x_t: np.ndarray, h_prev: np.ndarray, nonlinearity: str = "tanh") -> dict:
    """Immediate ∂h_t/∂θ with h_{t-1} held fixed, eq. (8): {name: (B, H, *shape)}, entry [b, k, ...]."""
    h, _ = step_forward(params, x_t, h_prev, nonlinearity)
    d = _dphi(h, nonlinearity)                      # (B, H)
    B, H = h.shape
    eye = np.eye(H, dtype=h.dtype)                  # δ_ki
    dbias = d[:, :, None] * eye[None]               # (B, H, H): [b, k, i] = δ_ki φ'_k
    return {"weight_ih": dbias[:, :, :, None] * x_t[:, None, None, :],      # (B, H, H, I)
            "weight_hh": dbias[:, :, :, None] * h_prev[:, None, None, :],   # (B, H, H, H)
            "bias_ih": dbias, "bias_hh": dbias.copy()}


def forward(params: dict, x: np.ndarray, h0: np.ndarray, nonlinearity: str = "tanh"):
    """Run the sequence, (1)–(2) for t = 0 … T−1. x (T, B, I), h0 (B, H) → h (T, B, H), RNNCache with a leading T
    axis."""
    cache = sequence_forward(step_forward, params, x, h0, nonlinearity=nonlinearity)
    return cache.h, cache


def backward(params: dict, dh: np.ndarray, cache: RNNCache, nonlinearity: str = "tanh") -> dict:
    """BPTT, eq. (6). dh (T, B, H) instantaneous adjoints → {param: grad, "x": (T, B, I), "h0": (B, H)}."""
    dh_T = np.zeros_like(dh[0])                     # (6) h̄_{T-1} = dh_{T-1}: nothing flows back from step T
    grads, dx, dh0 = sequence_backward(step_backward, add_to_h, params, dh, cache, dh_T, nonlinearity=nonlinearity)
    return {**grads, "x": dx, "h0": dh0}


random_state = random_real_state      # a random initial state, for tests and kernel input specs


def bounded_state(nonlinearity: str = "tanh") -> bool:
    """Whether something saturates the state: tanh keeps h in (−1, 1); the linear recurrence does not."""
    return nonlinearity == "tanh"
