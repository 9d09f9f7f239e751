r"""BPTT through a relaxation, written once for the three EP families: the dense networks (networks.py), the
convolutional one (conv.py) and the recurrent cells run to a fixed point (cells.py).

A relaxation is T applications of one step, s_{t+1} = step(s_t), from s_0. BPTT through its last K steps
(networks.py (13)) keeps the caches of those K steps on the way forward and walks them back from the end:

    (1)  s_{t+1}, cache_t = step(s_t),                 t = 0 … T−1; cache_t kept for t ≥ T − K
    (2)  θ̄(t), s̄_{T−t−1} = step_backward(cache_{T−t−1}, s̄_{T−t}),   t = 0 … K−1, from s̄_T = ∂L/∂s_T

s_{T−K} is a constant of the truncated graph. Each family supplies its own step, its adjoint and its loss at s_T.
"""

from __future__ import annotations

from typing import Callable


def relax_keeping_caches(step: Callable, s, T: int, K: int):
    """(1): T steps s ← step(s) (each returning (s', cache)). Returns (s_T, [cache_{T−K} … cache_{T−1}])."""
    caches = []
    for t in range(T):
        s, cache = step(s)                                                          # (1)
        if t >= T - K:
            caches.append(cache)
    return s, caches


def backward_through_steps(step_backward: Callable, caches: list, ds_T):
    """(2): the adjoint back through the cached steps, newest first; step_backward(cache, s̄') -> (θ̄, s̄).

    Returns ([θ̄(t)]_{t<K}, [s̄_{T−t}]_{t<K}): per step counted back from the end, the parameter gradient of that
    step and the state adjoint it started from (networks.py (13): ∇BPTT_θ(t) and ∇BPTT_s(t)).
    """
    param_steps, state_steps = [], []
    ds = ds_T
    for cache in reversed(caches):            # t counts back from the end: the step s_{T−t−1} → s_{T−t}
        state_steps.append(ds)                                                      # ∂L/∂s_{T−t}
        dparams, ds = step_backward(cache, ds)                                      # (2)
        param_steps.append(dparams)                                                 # ∂L/∂θ_{T−t}
    return param_steps, state_steps


def sum_steps(param_steps: list) -> dict:
    """Σ_t θ̄(t): the gradient of the truncated graph, one entry per parameter (the keys of the first step)."""
    return {k: sum(step[k] for step in param_steps) for k in param_steps[0]}
