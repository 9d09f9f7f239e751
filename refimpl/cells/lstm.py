r"""LSTM cell (torch.nn.LSTM convention) — forward, hand-derived backward, state Jacobian, parameter derivatives.

Shapes: B batch, T time, I input width, H hidden units. The state is the pair LSTMState(h, c), each (B, H); where a
single array is needed (Jacobians) it is flattened as [h; c] (B, 2H).
Parameters (DESIGN.md §3, the layout of ``torch.nn.LSTM``), gate blocks stacked in the order i, f, g, o:
    weight_ih (4H, I) = [W_ii; W_if; W_ig; W_io],   weight_hh (4H, H) = [W_hi; W_hf; W_hg; W_ho],
    bias_ih (4H), bias_hh (4H) likewise.

Forward, one step (the derivation is docs/derivations/lstm.md, with the same numbering):

    (1)  a = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh = [a_i; a_f; a_g; a_o]                  pre-activations  (B, 4H)
    (2)  i = σ(a_i),  f = σ(a_f),  g = tanh(a_g),  o = σ(a_o)                             gates            (B, H)
    (3)  c_t = f ⊙ c_{t-1} + i ⊙ g
    (4)  h_t = o ⊙ tanh(c_t)

Backward, one step. h̄_t, c̄_t are the *total* adjoints of the state (h̄_t: the instantaneous dh_t plus what flows
back from step t+1; c̄_t: only what flows back from step t+1, since a readout sees h alone). σ' = σ(1 − σ):

    (5)  ō = h̄_t ⊙ tanh(c_t)                                                               from (4)
    (6)  ĉ = c̄_t + h̄_t ⊙ o ⊙ (1 − tanh²(c_t))       the adjoint of c_t through *both* paths: the carried c̄_t
                                                     and the part of h̄_t through tanh(c_t) (the cs231n pitfall)
    (7)  f̄ = ĉ ⊙ c_{t-1}      ī = ĉ ⊙ g      ḡ = ĉ ⊙ i      c̄_{t-1} = ĉ ⊙ f                   from (3)
    (8)  ā_i = ī ⊙ i(1 − i)   ā_f = f̄ ⊙ f(1 − f)   ā_g = ḡ ⊙ (1 − g²)   ā_o = ō ⊙ o(1 − o)     from (2)
    (9)  ā = [ā_i; ā_f; ā_g; ā_o] (B, 4H):
         W̄_ih += āᵀ x_t    b̄_ih += Σ_b ā    W̄_hh += āᵀ h_{t-1}    b̄_hh += Σ_b ā                from (1)
    (10) x̄_t = ā W_ih      h̄_{t-1} = ā W_hh                                                   from (1)

BPTT over a sequence (eq. 11): h̄_{T-1} = dh_{T-1}, c̄_{T-1} = 0; then h̄_{t-1} = dh_{t-1} + (10) and c̄_{t-1} from
(7), run for t = T-1 … 0; the parameter gradients are the sums (9) over t, and (h̄_{-1}, c̄_{-1}) are the gradients
of (h0, c0).

What the online algorithms need. With κ = o ⊙ (1 − tanh²(c_t)) (= ∂h_t/∂c_t, elementwise), the sensitivities of
c_t[k] and h_t[k] to the pre-activations of unit k are

    (12) s_i = g i(1 − i)    s_f = c_{t-1} f(1 − f)    s_g = i (1 − g²)    s_o = tanh(c_t) o(1 − o)
         S_c = [s_i, s_f, s_g, 0]    S_h = [κ s_i, κ s_f, κ s_g, s_o]                                    (B, 4H)
    (13) J_t = ∂[h_t; c_t]/∂[h_{t-1}; c_{t-1}] = [[ Σ_G diag(S_h,G) W_hG ,  diag(κ f) ],
                                                  [ Σ_G diag(S_c,G) W_hG ,  diag(f)   ]]                (B, 2H, 2H)
         (G over the blocks i, f, g, o; W_hG the rows of W_hh for gate G)
    (14) for gate block G with row offset g·H (S = S_h for the rows h_t, S = S_c for the rows c_t):
         ∂h_t[k]/∂W_ih[gH+i, j] = δ_ki S_h[gH+k] x_t[j]        ∂c_t[k]/∂W_ih[gH+i, j] = δ_ki S_c[gH+k] x_t[j]
         W_hh: the same with h_{t-1}[j] in place of x_t[j];  biases: the same without x_t[j]
         (bias_ih and bias_hh have equal derivatives: both enter (1) as a sum).
    (15) det J_t = det(diag f) · det(diag(s_o) W_ho)                      (block elimination; lstm.md)
    (16) ‖J_t⁻¹‖ ≥ 1/σ_min(diag(s_o) W_ho) > 4/σ_min(W_ho)               (|s_o| < 1/4; σ_min: smallest singular value)

NOTE: by (15)–(16), J_t is near-singular whenever s_o = tanh(c_t) o(1 − o) is small or W_ho is ill-conditioned — which
is the case at the default initialisation (small c_t, small W_ho). Algorithms that invert J_t (exact ``fptt``) are
therefore accurate on the LSTM only for short T or a strong output-gate recurrence (DESIGN.md §7).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..arrays import namespace
from .common import random_real_state, sequence_backward, sequence_forward, sigmoid, uniform_init

OPTIONS: dict = {}
STEP_OPTIONS: tuple = ()                  # the LSTM has no options that change the dynamics
GRAD_STATE_KEYS = ("h0", "c0")

# The state contract (refimpl/cells/__init__.py): the pair (h, c), flattened as [h; c] (S = 2H)
STATE_ARG, STATE_ROWS = "state0", 2
STATE_DOC = "state0 LSTMState(h0 (B,H), c0 (B,H))"       # the initial state as the kernel signatures write it
RECURRENT_PARAMS = ("weight_hh", "bias_hh")              # the parameters that act on h_(t-1)
DIAGONAL = COMPLEX_STATE = OUTPUT_MAP = False            # dense Jacobian, real state, h read directly


class LSTMState(NamedTuple):
    """The LSTM state: hidden output h and cell c, each (B, H). Its adjoint uses the same type."""
    h: np.ndarray
    c: np.ndarray


class LSTMCache(NamedTuple):
    """What the backward step needs from the forward step (fields (B, ·); stacked caches have a leading T)."""
    x: np.ndarray        # x_t                      (B, I)
    h_prev: np.ndarray   # h_{t-1}                  (B, H)
    c_prev: np.ndarray   # c_{t-1}                  (B, H)
    i: np.ndarray        # input gate, eq. (2)      (B, H)
    f: np.ndarray        # forget gate, eq. (2)     (B, H)
    g: np.ndarray        # cell candidate, eq. (2)  (B, H)
    o: np.ndarray        # output gate, eq. (2)     (B, H)
    c: np.ndarray        # c_t, eq. (3)             (B, H)
    tanh_c: np.ndarray   # tanh(c_t)                (B, H)
    h: np.ndarray        # h_t, eq. (4)             (B, H)


def param_shapes(n_in: int, n_hidden: int) -> dict:
    H, I = n_hidden, n_in
    return {"weight_ih": (4 * H, I), "weight_hh": (4 * H, H), "bias_ih": (4 * H,), "bias_hh": (4 * H,)}


def init_params(n_in: int, n_hidden: int, rng: np.random.Generator, dtype, **options) -> dict:
    """U(−1/√H, 1/√H) for every entry, as PyTorch."""
    return uniform_init(param_shapes(n_in, n_hidden), n_hidden, rng, dtype)


def zero_state(batch: int, n_hidden: int, dtype) -> LSTMState:
    return LSTMState(h=np.zeros((batch, n_hidden), dtype=dtype), c=np.zeros((batch, n_hidden), dtype=dtype))


def _split4(v: np.ndarray):
    """(…, 4H) → the i, f, g, o blocks, each (…, H)."""
    H = v.shape[-1] // 4
    return v[..., :H], v[..., H:2 * H], v[..., 2 * H:3 * H], v[..., 3 * H:]


def step_forward(params: dict, x_t: np.ndarray, state: LSTMState):
    """One step, eqs. (1)–(4).

    Args:
        params: weight_ih (4H, I), weight_hh (4H, H), bias_ih (4H), bias_hh (4H).
        x_t: input (B, I).
        state: LSTMState(h_{t-1} (B, H), c_{t-1} (B, H)).
    Returns:
        LSTMState(h_t, c_t), LSTMCache.
    """
    h_prev, c_prev = state
    a = x_t @ params["weight_ih"].T + params["bias_ih"] + h_prev @ params["weight_hh"].T + params["bias_hh"]  # (1)
    a_i, a_f, a_g, a_o = _split4(a)
    i, f, g, o = sigmoid(a_i), sigmoid(a_f), np.tanh(a_g), sigmoid(a_o)                                 # (2)
    c = f * c_prev + i * g                                         # (3)  (B, H)
    tanh_c = np.tanh(c)                                            # (4)
    h = o * tanh_c                                                 # (4)  (B, H)
    cache = LSTMCache(x=x_t, h_prev=h_prev, c_prev=c_prev, i=i, f=f, g=g, o=o, c=c, tanh_c=tanh_c, h=h)
    return LSTMState(h=h, c=c), cache


def step_backward(params: dict, dstate_next: LSTMState, cache: LSTMCache):
    """One step back, eqs. (5)–(10), in reverse order of the forward.

    Args:
        params: as in step_forward.
        dstate_next: LSTMState(h̄_t, c̄_t), the total adjoints of the state after this step, each (B, H).
        cache: the LSTMCache of this step.
    Returns:
        (dparams {name: array of the param's shape}, x̄_t (B, I), LSTMState(h̄_{t-1}, c̄_{t-1}) contributions).
    """
    k = cache
    da, dc_prev = _gate_adjoints(dstate_next, k)                   # (5)–(8)
    dparams = {"weight_ih": da.T @ k.x, "bias_ih": da.sum(0),                                  # (9)
               "weight_hh": da.T @ k.h_prev, "bias_hh": da.sum(0)}
    dx = da @ params["weight_ih"]                                  # (10) (B, I)
    dh_prev = da @ params["weight_hh"]                             # (10) (B, H)
    return dparams, dx, LSTMState(h=dh_prev, c=dc_prev)


def _gate_adjoints(dstate_next: LSTMState, k: LSTMCache):
    """(ā (B, 4H), c̄_{t-1} (B, H)) of eqs. (5)–(8) for the total adjoints (h̄_t, c̄_t) (array-API code,
    refimpl/arrays.py)."""
    dh, dc = dstate_next
    xp = namespace(dh)
    do = dh * k.tanh_c                                             # (5)  (B, H)
    dc_hat = dc + dh * k.o * (1.0 - k.tanh_c * k.tanh_c)           # (6)  both paths into c_t  (B, H)
    df = dc_hat * k.c_prev                                         # (7)
    di = dc_hat * k.g                                              # (7)
    dg = dc_hat * k.i                                              # (7)
    dc_prev = dc_hat * k.f                                         # (7)  (B, H)
    da = xp.concat([di * k.i * (1.0 - k.i),                        # (8)  ā_i
                    df * k.f * (1.0 - k.f),                        # (8)  ā_f
                    dg * (1.0 - k.g * k.g),                        # (8)  ā_g
                    do * k.o * (1.0 - k.o)], axis=-1)              # (8)  ā_o   → ā (B, 4H)
    return da, dc_prev


def step_input_backward(params: dict, dstate_next: LSTMState, cache: LSTMCache):
    """x̄_t (B, I) alone, eqs. (5)–(10): step_backward without the parameter and state adjoints. Array-API code
    (refimpl/arrays.py): the online rules' device step runs it on a backend's arrays (refimpl/training/device.py)."""
    return _gate_adjoints(dstate_next, cache)[0] @ params["weight_ih"]                       # (10)


def _sensitivities(cache: LSTMCache):
    """S_h, S_c of eq. (12) and κ = ∂h_t/∂c_t: ∂(h_t[k], c_t[k])/∂(pre-activations of unit k)."""
    k = cache
    kappa = k.o * (1.0 - k.tanh_c * k.tanh_c)                      # (12) κ  (B, H)
    s_i = k.g * k.i * (1.0 - k.i)                                  # (12)
    s_f = k.c_prev * k.f * (1.0 - k.f)                             # (12)
    s_g = k.i * (1.0 - k.g * k.g)                                  # (12)
    s_o = k.tanh_c * k.o * (1.0 - k.o)                             # (12) h only: o does not enter c_t
    S_c = np.concatenate([s_i, s_f, s_g, np.zeros_like(s_o)], axis=-1)                      # (12) (B, 4H)
    S_h = np.concatenate([kappa * s_i, kappa * s_f, kappa * s_g, s_o], axis=-1)             # (12) (B, 4H)
    return S_h, S_c, kappa


def state_jacobian(params: dict, x_t: np.ndarray, state: LSTMState) -> np.ndarray:
    """J_t = ∂[h_t; c_t]/∂[h_{t-1}; c_{t-1}], eq. (13).

    Returns (B, 2H, 2H): rows [h_t; c_t], columns [h_{t-1}; c_{t-1}], J[b, k, j] = ∂s_t[b, k]/∂s_{t-1}[b, j].
    """
    _, cache = step_forward(params, x_t, state)
    S_h, S_c, kappa = _sensitivities(cache)
    B, H = cache.h.shape
    W = params["weight_hh"].reshape(4, H, H)                       # [W_hi, W_hf, W_hg, W_ho]
    dh_dh = np.einsum("bgk,gkj->bkj", S_h.reshape(B, 4, H), W)     # (13) Σ_G diag(S_h,G) W_hG   (B, H, H)
    dc_dh = np.einsum("bgk,gkj->bkj", S_c.reshape(B, 4, H), W)     # (13) Σ_G diag(S_c,G) W_hG   (B, H, H)
    eye = np.eye(H, dtype=cache.h.dtype)
    dh_dc = (kappa * cache.f)[:, :, None] * eye                    # (13) diag(κ f)
    dc_dc = cache.f[:, :, None] * eye                              # (13) diag(f)
    return np.concatenate([np.concatenate([dh_dh, dh_dc], axis=2),
                           np.concatenate([dc_dh, dc_dc], axis=2)], axis=1)                  # (B, 2H, 2H)


def param_jacobian(params: dict, x_t: np.ndarray, state: LSTMState) -> dict:
    """Immediate ∂[h_t; c_t]/∂θ with the state held fixed, eq. (14): {name: (B, 2H, *shape)}, entry [b, k, ...]."""
    h_prev, _ = state
    _, cache = step_forward(params, x_t, state)
    S_h, S_c, _ = _sensitivities(cache)
    B, H = h_prev.shape
    eye = np.eye(H, dtype=h_prev.dtype)                            # δ_ki

    def per_bias(S):                                               # (14): [b, k, gH+i] = δ_ki S[b, gH+k]
        return np.einsum("bgk,ki->bkgi", S.reshape(B, 4, H), eye).reshape(B, H, 4 * H)

    dbias = np.concatenate([per_bias(S_h), per_bias(S_c)], axis=1)   # (14) rows [h_t; c_t]   (B, 2H, 4H)
    return {"weight_ih": dbias[:, :, :, None] * x_t[:, None, None, :],        # (B, 2H, 4H, I)
            "weight_hh": dbias[:, :, :, None] * h_prev[:, None, None, :],     # (B, 2H, 4H, H)
            "bias_ih": dbias, "bias_hh": dbias.copy()}


def forward(params: dict, x: np.ndarray, state0: LSTMState):
    """Run the sequence, (1)–(4) for t = 0 … T−1.

    Args:
        params: as in step_forward.
        x: inputs (T, B, I).
        state0: LSTMState(h0 (B, H), c0 (B, H)).
    Returns:
        h (T, B, H), LSTMCache whose fields have a leading T axis (so cache.c is (T, B, H)).
    """
    cache = sequence_forward(step_forward, params, x, state0)
    return cache.h, cache


def backward(params: dict, dh: np.ndarray, cache: LSTMCache) -> dict:
    """BPTT, eq. (11): (5)–(10) for t = T−1 … 0 on the total adjoints (h̄_t, c̄_t), the gradients (9) summed over t.

    Args:
        params: as in step_forward.
        dh: instantaneous adjoints of h (T, B, H) (the cell c has no instantaneous adjoint).
        cache: the stacked LSTMCache from forward.
    Returns:
        {param: grad (param's shape), "x": (T, B, I), "h0": (B, H), "c0": (B, H)}.
    """
    dstate_T = LSTMState(h=np.zeros_like(dh[0]), c=np.zeros_like(dh[0]))    # (11) h̄_{T-1} = dh_{T-1}, c̄_{T-1} = 0
    grads, dx, dstate0 = sequence_backward(step_backward, add_to_h, params, dh, cache, dstate_T)
    return {**grads, "x": dx, "h0": dstate0.h, "c0": dstate0.c}


def random_state(rng: np.random.Generator, batch: int, n_hidden: int, dtype) -> LSTMState:
    """A random initial state, for tests and kernel input specs."""
    return LSTMState(h=random_real_state(rng, batch, n_hidden, dtype), c=random_real_state(rng, batch, n_hidden, dtype))


# The state contract for the pair (h, c): flattened as [h; c] (B, 2H), the order of the Jacobian (13).

def state_h(state: LSTMState) -> np.ndarray:
    """The part of the state the layer outputs: h."""
    return state.h


def flatten_state(state: LSTMState) -> np.ndarray:
    """The state (or its adjoint) as one (…, 2H) array [h; c]."""
    return np.concatenate([state.h, state.c], axis=-1)


def unflatten_state(flat: np.ndarray) -> LSTMState:
    """The inverse of flatten_state: (…, 2H) → LSTMState(h, c)."""
    H = flat.shape[-1] // 2
    return LSTMState(h=flat[..., :H], c=flat[..., H:])


def add_to_h(dstate: LSTMState, dh: np.ndarray) -> LSTMState:
    """A state adjoint with dh added to its h part (c̄ unchanged)."""
    return LSTMState(h=dstate.h + dh, c=dstate.c)


def state_from_parts(h: np.ndarray, c: np.ndarray) -> LSTMState:
    """The state from its parts, in the order of GRAD_STATE_KEYS: (h, c)."""
    return LSTMState(h=h, c=c)


def bounded_state() -> bool:
    """Whether something saturates the state: yes, the gates (2) saturate and h = o ⊙ tanh(c) (4) stays in (−1, 1)
    (c itself grows by at most 1 per step, (3))."""
    return True
