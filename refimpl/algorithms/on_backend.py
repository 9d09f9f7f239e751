r"""One cell's RTRL family and FPTT on a backend (numba, mlx, cupy): the same gradients as kernel calls.
Derivations: docs/derivations/rtrl.md §9b and docs/derivations/fptt.md §8b.

A model runs chunk by chunk on every backend (refimpl/algorithms/chunked.py); one cell with its instantaneous
adjoints dh given is one chunk of C = T steps:

    rtrl.cell_grads_online      grads = <cell>.<rule>(params, x, state0, dh)                      one kernel call
    fptt.fptt_cell_grads        carry = <cell>.fptt_warmup(params, x, state0, dh)                 phase 1 (direct;
                                        shooting: <cell>.fptt_shooting)
                                e_{−1} = carry["e"]  (shooting: −P v')  (fptt.start_error, (3))
                                grads = <cell>.fptt1(params, x, state0, dh, carry={"v": e_{−1}})   phase 2
                                (5): ρ = ‖v_{T−1}‖ / ‖dh_{T−1}‖ from phase 2's carry (fptt.residual_of)
                                fptt1: phase 2 alone from e_{−1} = 0

The functions here have the signatures of the reference functions they stand for, with the backend's cell kernels
first; refimpl/algorithms/__init__.py picks one or the other in one place. tests/algorithms/test_on_backend.py checks
them (and the model-level chunked driver) against the reference on every backend that runs here.
"""

from __future__ import annotations

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
                    warmup: str = "direct", check: bool = True) -> dict:
    """fptt.fptt_cell_grads with its two phases as kernel calls on `kernels.backend` (float64 carriers)."""
    sweeps = sweeps_for(kernels, carrier, warmup)
    return fptt.cell_phases(cell, params, dh, lambda carry: sweeps.warm(cell, params, x, dh, state0, carry),
                            lambda carry: sweeps.errors(cell, params, x, dh, state0, carry),
                            two_passes=two_passes, carrier=carrier, check=check, warmup=warmup)
