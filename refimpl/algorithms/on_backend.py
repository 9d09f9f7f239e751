r"""One cell's RTRL family and FPTT on a backend (numba, mlx, cupy): the same gradients as kernel calls.
Derivations: docs/derivations/rtrl.md §9b and docs/derivations/fptt.md §8b.

A model runs chunk by chunk on every backend (refimpl/algorithms/chunked.py); one cell with its instantaneous
adjoints dh given is one chunk of C = T steps:

    rtrl.cell_grads_online      grads = <cell>.<rule>(params, x, state0, dh)                      one kernel call
    fptt.fptt_cell_grads        carry = <cell>.fptt_warmup(params, x, state0, dh)                 phase 1
                                e_{−1} = −P v'  (fptt.start_error, (3))
                                grads = <cell>.fptt1(params, x, state0, dh, carry={"v": e_{−1}})   phase 2
                                (5): ρ = ‖v_{T−1}‖ / ‖dh_{T−1}‖ from phase 2's carry (fptt.residual_of)
                                fptt1: phase 2 alone from e_{−1} = 0

The functions here have the signatures of the reference functions they stand for, with the backend's cell kernels
first; refimpl/algorithms/__init__.py picks one or the other in one place. tests/algorithms/test_on_backend.py checks
them (and the model-level chunked driver) against the reference on every backend that runs here.
"""

from __future__ import annotations

import numpy as np

from ..registry import call
from . import fptt, rtrl
from .chunked import sweeps_for


def cell_grads_online(kernels, rule: str, cell, params, x, dh, state0) -> dict:
    """rtrl.cell_grads_online as one kernel call on `kernels.backend`."""
    rtrl.check_rule(rule, cell)
    out = call(f"{cell.name}.{rtrl.sweep_rule(rule, cell)}", kernels.backend, params, x, dh=dh,
               **{cell.state_arg: state0}, **cell.step_options)
    return {k: out[k] for k in params}


def fptt_cell_grads(kernels, cell, params, x, dh, state0, *, two_passes: bool = True, carrier: str = "float64",
                    check: bool = True) -> dict:
    """fptt.fptt_cell_grads as the two phase kernels on `kernels.backend` (float64 carriers), checked by (5)."""
    sweeps = sweeps_for(kernels, carrier)
    B, T = x.shape[1], x.shape[0]
    ct = fptt.carrier_dtype(cell, carrier)
    e_start = np.zeros((B, cell.state_size), ct)
    if two_passes:
        e_start = fptt.start_error(cell, sweeps.warmup(cell, params, x, dh, state0, None))           # (1)–(3)
    grads, end, _ = sweeps.errors(cell, params, x, dh, state0, {"v": e_start})                       # (1), (4)
    if two_passes and check:
        fptt.check_residual(cell, params, T, ct, fptt.residual_of(cell, end, dh[-1]), "one cell")     # (5)
    starts = np.split(e_start.astype(cell.state_dtype), len(cell.grad_state_keys), axis=-1)
    return {**grads, **dict(zip(cell.grad_state_keys, starts))}
