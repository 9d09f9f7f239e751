"""The recurrent cells: one module each, all with the same contract.

Every cell module (``rnn``, ``gru``, ``lstm``, ``lru``) defines, in this order:

    OPTIONS                                   {option: default} accepted by make_cell
    STEP_OPTIONS                              the options that change the dynamics; the functions below take them
    GRAD_STATE_KEYS                           names of the initial-state gradients: ('h0',), or ('h0', 'c0') for lstm
    <Name>Cache                               NamedTuple of what the backward step needs (no positional tuples)
    param_shapes(n_in, n_hidden)              {name: shape} in the layout of DESIGN.md §3
    init_params(n_in, n_hidden, rng, dtype, **options) -> params
    zero_state(batch, n_hidden, dtype)        the default initial state
    step_forward(params, x_t, state, **options) -> (state_next, cache)
    step_backward(params, dstate_next, cache, **options) -> (dparams, dx_t, dstate)
    state_jacobian(params, x_t, state, **options)   ∂state_next/∂state (dense (B,S,S); diagonal (B,N) for lru)
    param_jacobian(params, x_t, state, **options)   immediate ∂state_next/∂θ with the state held fixed
    forward(params, x, state0, **options) -> (h, cache)          the sequence; cache fields have a leading T axis
    backward(params, dh, cache, **options) -> grads              BPTT from the instantaneous adjoints dh (T,B,H)

``state`` is h (B, H) for rnn/gru/lru and the pair LSTMState(h, c) for lstm. Gradients are returned, never
accumulated into globals, and no function mutates its arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

from . import gru, lru, lstm, rnn

#: name → cell module. The one place a cell name is looked up.
CELLS: dict[str, ModuleType] = {"rnn": rnn, "gru": gru, "lstm": lstm, "lru": lru}


@dataclass(frozen=True)
class Cell:
    """A cell's static description: which cell, its sizes, dtype and options. Parameters live in a separate dict.

    Attributes:
        name: 'rnn' | 'gru' | 'lstm' | 'lru'.
        n_in: input width I.
        n_hidden: hidden units H (for lru: N, the number of complex state units).
        dtype: real dtype of the parameters and inputs (the lru state is the matching complex dtype).
        options: the cell's options with defaults filled in (e.g. {'nonlinearity': 'tanh'} for rnn).
    """
    name: str
    n_in: int
    n_hidden: int
    dtype: np.dtype
    options: dict = field(default_factory=dict)

    @property
    def module(self) -> ModuleType:
        return CELLS[self.name]

    @property
    def state_dtype(self) -> np.dtype:
        """dtype of h: complex for lru, the real dtype otherwise."""
        return np.result_type(self.dtype, np.complex64) if self.name == "lru" else self.dtype

    @property
    def step_options(self) -> dict:
        """The options the step/sequence functions take (e.g. nonlinearity); init-only options are left out."""
        return {k: self.options[k] for k in self.module.STEP_OPTIONS}

    @property
    def param_shapes(self) -> dict:
        return self.module.param_shapes(self.n_in, self.n_hidden)

    @property
    def grad_state_keys(self) -> tuple:
        """Names of the initial-state gradients cell_grads returns: ('h0',) or ('h0', 'c0') for lstm."""
        return self.module.GRAD_STATE_KEYS


def resolve_cell(name: str, n_in: int, n_hidden: int, dtype="float64", **options) -> Cell:
    """Validate a cell description and fill in option defaults. Raises refimpl.errors on bad input."""
    from ..checks import resolve_dtype
    from ..errors import UnknownNameError, UnsupportedError

    if name not in CELLS:
        raise UnknownNameError("cell", name, CELLS)
    module = CELLS[name]
    for key in options:
        if key not in module.OPTIONS:
            raise UnknownNameError(f"option for cell {name!r}", key, module.OPTIONS or ["(none)"],
                                   f"{name} takes {'only ' + ', '.join(module.OPTIONS) if module.OPTIONS else 'no options'}")
    for label, size in (("n_in", n_in), ("n_hidden", n_hidden)):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise UnsupportedError(f"{label} must be a positive integer, got {size!r}")
    opts = {**module.OPTIONS, **options}
    if name == "rnn" and opts["nonlinearity"] not in module.NONLINEARITIES:
        raise UnknownNameError("rnn nonlinearity", opts["nonlinearity"], module.NONLINEARITIES)
    return Cell(name=name, n_in=int(n_in), n_hidden=int(n_hidden), dtype=resolve_dtype(dtype), options=opts)
