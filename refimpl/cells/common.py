"""Small helpers shared by the cell modules: stacking per-step caches and summing per-step gradients.

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


def zeros_like_params(params: dict) -> dict:
    return {k: np.zeros_like(v) for k, v in params.items()}


def add_into(total: dict, part: dict) -> None:
    """total[k] += part[k] for every key of part (total is a gradient accumulator owned by the caller)."""
    for k, v in part.items():
        total[k] += v
