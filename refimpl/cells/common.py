"""Small helpers shared by the cell modules: the two loops over time every cell's sequence functions run, stacking
per-step caches, summing per-step gradients, and the state helpers of the cells whose state is the single array h.

A cell's sequence-level cache is the per-step cache NamedTuple with every field stacked along a leading time axis,
so `cache.h[t]` is the field at step t and `cache_at(cache, t)` gives back the per-step cache.

The sequence functions of a cell only loop over time, and the loops are written once, here: `sequence_forward` runs
step_forward for t = 0 … T−1; `sequence_backward` runs step_backward for t = T−1 … 0 on the total adjoint of the
state, which is the adjoint flowing back from step t+1 with the instantaneous dh_t added to its h part (DESIGN.md §4).
The state and its adjoint are whatever the cell's step functions carry: h, or the lstm's pair (h, c).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence, TypeVar

import numpy as np

from ..arrays import namespace

C = TypeVar("C", bound=NamedTuple)


def stack_caches(caches: Sequence[C]) -> C:
    """[cache_0, …, cache_{T-1}] → one cache whose fields have a leading T axis."""
    cls = type(caches[0])
    return cls(*(np.stack(fields) for fields in zip(*caches)))


def cache_at(cache: C, t: int) -> C:
    """The per-step cache at time t of a stacked sequence cache."""
    return type(cache)(*(field[t] for field in cache))


def sequence_forward(step_forward, params: dict, x: np.ndarray, state0, **options):
    """The forward loop of a cell over a sequence:

        state_t, cache_t = step_forward(params, x_t, state_{t−1}, **options)   for t = 0 … T−1,   state_{−1} = state0

    Args:
        step_forward: the cell's step.  params: the cell's parameters.  x: inputs (T, B, I).
        state0: the initial state (h0 (B, H), or the lstm's LSTMState(h0, c0)).  options: the cell's step options.
    Returns:
        the per-step caches stacked along a leading T axis (so cache.h is h (T, B, H)).
    """
    state, caches = state0, []
    for t in range(x.shape[0]):
        state, cache_t = step_forward(params, x[t], state, **options)
        caches.append(cache_t)
    return stack_caches(caches)


def sequence_backward(step_backward, add_to_h, params: dict, dh: np.ndarray, cache, dstate_T, **options):
    """BPTT, the backward loop of a cell over a sequence, from the instantaneous adjoints dh (T, B, H):

        d̄s_t = add_to_h(d̄s from step t+1, dh_t)            the total adjoint of the state after step t
        (dparams_t, x̄_t, d̄s from step t) = step_backward(params, d̄s_t, cache_t, **options)     for t = T−1 … 0

    starting from dstate_T, what flows back into step T−1 from beyond the sequence (a zero state adjoint); the
    parameter gradients are the sums of dparams_t over t.

    Args:
        step_backward, add_to_h: the cell's step backward and its add_to_h (dh into the h part of a state adjoint).
        params: the cell's parameters.  dh: (T, B, H).  cache: the stacked cache of sequence_forward.
        dstate_T: the zero state adjoint (h̄, or the lstm's LSTMState(h̄, c̄)).  options: the cell's step options.
    Returns:
        (grads {param: array of its shape}, x̄ (T, B, I), the adjoint of the initial state).
    """
    grads = zeros_like_params(params)
    dx = np.zeros_like(cache.x)
    dstate = dstate_T
    for t in reversed(range(dh.shape[0])):
        dparams_t, dx[t], dstate = step_backward(params, add_to_h(dstate, dh[t]), cache_at(cache, t), **options)
        add_into(grads, dparams_t)
    return grads, dx, dstate


def sigmoid(a: np.ndarray) -> np.ndarray:
    """σ(a) = 1/(1 + e^{−a}), written as ½(1 + tanh(a/2)): the same function, with no overflow for large |a|. Array-API
    code (refimpl/arrays.py): the model's layers and losses run it on a backend's arrays too."""
    return 0.5 * (1.0 + namespace(a).tanh(0.5 * a))


def uniform_init(shapes: dict, n_hidden: int, rng: np.random.Generator, dtype) -> dict:
    """U(−1/√H, 1/√H) for every entry of every parameter, as PyTorch's RNN/GRU/LSTM (drawn in `shapes` order)."""
    k = 1.0 / np.sqrt(n_hidden)
    return {name: rng.uniform(-k, k, size=shape).astype(dtype) for name, shape in shapes.items()}


def random_real_state(rng: np.random.Generator, batch: int, n_hidden: int, dtype) -> np.ndarray:
    """A random real initial state N(0, 0.25), for tests and kernel input specs."""
    return (0.5 * rng.standard_normal((batch, n_hidden))).astype(dtype)


def zeros_like_params(params: dict) -> dict:
    return {k: np.zeros_like(v) for k, v in params.items()}


def add_into(total: dict, part: dict) -> None:
    """total[k] += part[k] for every key of part (total is a gradient accumulator owned by the caller)."""
    for k, v in part.items():
        total[k] += v


def map_state(fn, state):
    """fn applied to every array of a state (or state adjoint): h itself, or each field of a NamedTuple state."""
    return type(state)(*(fn(s) for s in state)) if isinstance(state, tuple) else fn(state)


# The state contract of the cells whose state is h alone (rnn, gru, lru); the lstm defines its own for (h, c).

def state_h(state: np.ndarray) -> np.ndarray:
    """The part of the state the layer outputs: h."""
    return state


def flatten_state(state: np.ndarray) -> np.ndarray:
    """The state (or its adjoint) as one (…, S) array; S = H here."""
    return state


def unflatten_state(flat: np.ndarray) -> np.ndarray:
    """The inverse of flatten_state."""
    return flat


def add_to_h(dstate: np.ndarray, dh: np.ndarray) -> np.ndarray:
    """A state adjoint with dh added to its h part."""
    return dstate + dh


def state_from_parts(h: np.ndarray) -> np.ndarray:
    """The state from its parts, in the order of GRAD_STATE_KEYS: h alone."""
    return h
