"""Small helpers shared by the cell modules: stacking per-step caches, summing per-step gradients, and the state
helpers of the cells whose state is the single array h.

A cell's sequence-level cache is the per-step cache NamedTuple with every field stacked along a leading time axis,
so `cache.h[t]` is the field at step t and `cache_at(cache, t)` gives back the per-step cache.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence, TypeVar

import numpy as np

C = TypeVar("C", bound=NamedTuple)


def stack_caches(caches: Sequence[C]) -> C:
    """[cache_0, …, cache_{T-1}] → one cache whose fields have a leading T axis."""
    cls = type(caches[0])
    return cls(*(np.stack(fields) for fields in zip(*caches)))


def cache_at(cache: C, t: int) -> C:
    """The per-step cache at time t of a stacked sequence cache."""
    return type(cache)(*(field[t] for field in cache))


def sigmoid(a: np.ndarray) -> np.ndarray:
    """σ(a) = 1/(1 + e^{−a}), written as ½(1 + tanh(a/2)): the same function, with no overflow for large |a|."""
    return 0.5 * (1.0 + np.tanh(0.5 * a))


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


def add_into_new(a: dict, b: dict) -> dict:
    """A new dict with a[k] + b[k] over the union of keys (neither argument is changed)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = out[k] + v if k in out else v
    return out


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
