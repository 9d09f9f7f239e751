"""The recurrent cells: one module each, all with the same contract.

Every cell module (``rnn``, ``gru``, ``lstm``, ``lru``) defines, in this order:

    OPTIONS                                   {option: default} accepted by make_cell
    STEP_OPTIONS                              the options that change the dynamics; the functions below take them
    GRAD_STATE_KEYS                           names of the initial-state gradients: ('h0',), or ('h0', 'c0') for lstm
                                              (also the names of the state's parts, in state_from_parts order)
    <Name>Cache                               NamedTuple of what the backward step needs (no positional tuples)
    param_shapes(n_in, n_hidden)              {name: shape} in the layout of DESIGN.md §3
    init_params(n_in, n_hidden, rng, dtype, **options) -> params
    zero_state(batch, n_hidden, dtype)        the default initial state
    step_forward(params, x_t, state, **options) -> (state_next, cache)
    step_backward(params, dstate_next, cache, **options) -> (dparams, dx_t, dstate)
    step_input_backward(params, dstate_next, cache, **options) -> dx_t      the same x̄_t alone (no parameter or
                                              state adjoints: what an online rule sends to the layer below)
    state_jacobian(params, x_t, state, **options)   ∂state_next/∂state (dense (B,S,S); diagonal (B,N) for lru)
    param_jacobian(params, x_t, state, **options)   immediate ∂state_next/∂θ with the state held fixed
    forward(params, x, state0, **options) -> (h, cache)          the sequence; cache fields have a leading T axis
    backward(params, dh, cache, **options) -> grads              BPTT from the instantaneous adjoints dh (T,B,H)
    random_state(rng, batch, n_hidden, dtype)  a random valid initial state, for tests and kernel input specs
    bounded_state(**step_options) -> bool      whether something saturates the state (tanh, gates): False for a
                                              linear recurrence (rnn 'linear', the lru)

and the state contract — what an algorithm needs to know about a state without asking which cell it is:

    STATE_ARG          the initial-state argument of forward and of the kernels: 'h0', or 'state0' (lstm)
    STATE_DOC          how that argument reads in the kernel signatures, e.g. 'h0 (B,H)'
    STATE_ROWS         rows per hidden unit of the flattened state: S = STATE_ROWS · H (2 for the lstm's [h; c])
    RECURRENT_PARAMS   the parameters that act on h_{t-1} (what `spatial` holds constant)
    DIAGONAL           state_jacobian is diagonal (B, N) (lru) rather than dense (B, S, S)
    COMPLEX_STATE      the state is complex (lru): the complex partner of the parameters' dtype
    OUTPUT_MAP         the model reads h through the LRU output map y = Re(C h) + D x (refimpl/nn/layers.py)
    state_h(state)             the part of the state the layer outputs: h
    flatten_state(state)       a state or state adjoint as one (…, S) array ([h; c] for the lstm)
    unflatten_state(flat)      its inverse
    add_to_h(dstate, dh)       a state adjoint with dh added to its h part
    state_from_parts(*parts)   the state from its parts, in the order of GRAD_STATE_KEYS: h, or the lstm's (h, c)

``state`` is h (B, H) for rnn/gru/lru and the pair LSTMState(h, c) for lstm; a state adjoint has the state's type.
The sequence functions only loop over time: forward / backward run the step functions through common.sequence_forward
and common.sequence_backward. Gradients are returned, never accumulated into globals, and no function mutates its
arguments. `Cell` below exposes the contract on a resolved cell (cell.state_size, cell.state_rows, cell.diagonal,
cell.complex_state, cell.bounded_state, cell.flatten_state(…), cell.adjoint_from_h(dh) …), so that no algorithm
dispatches on a cell's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

from ..arrays import namespace
from ..checks import positive_int, resolve_dtype
from ..errors import UnknownNameError
from . import gru, lru, lstm, rnn
from .common import map_state

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
        return np.result_type(self.dtype, np.complex64) if self.complex_state else self.dtype

    # --- the state contract (module docstring), on the resolved cell

    @property
    def state_arg(self) -> str:
        """'h0', or 'state0' for the lstm: the initial-state argument of forward and of the kernels."""
        return self.module.STATE_ARG

    @property
    def state_rows(self) -> int:
        """R, the rows per hidden unit of the flattened state: 1, or 2 for the lstm's (h_k, c_k)."""
        return self.module.STATE_ROWS

    @property
    def state_size(self) -> int:
        """S = R·H, the width of the flattened state: H, or 2H for the lstm."""
        return self.state_rows * self.n_hidden

    @property
    def recurrent_params(self) -> tuple:
        """The parameters that act on h_{t-1}."""
        return self.module.RECURRENT_PARAMS

    @property
    def diagonal(self) -> bool:
        """Whether state_jacobian is diagonal (B, N) (the lru) rather than dense (B, S, S)."""
        return self.module.DIAGONAL

    @property
    def complex_state(self) -> bool:
        """Whether the state is complex (the lru), of dtype state_dtype."""
        return self.module.COMPLEX_STATE

    @property
    def bounded_state(self) -> bool:
        """Whether something saturates the state (tanh, gates); False for a linear recurrence (rnn 'linear', lru)."""
        return self.module.bounded_state(**self.step_options)

    @property
    def output_map(self) -> bool:
        """Whether the model reads h through the LRU output map (and the layer outputs the input's width)."""
        return self.module.OUTPUT_MAP

    @property
    def out_width(self) -> int:
        """The width of the layer output: n_in through the LRU output map (eq. 49), n_hidden otherwise."""
        return self.n_in if self.output_map else self.n_hidden

    def zero_state(self, batch: int):
        return self.module.zero_state(batch, self.n_hidden, self.dtype)

    def random_state(self, rng: np.random.Generator, batch: int):
        return self.module.random_state(rng, batch, self.n_hidden, self.dtype)

    def state_h(self, state):
        return self.module.state_h(state)

    def flatten_state(self, state) -> np.ndarray:
        return self.module.flatten_state(state)

    def unflatten_state(self, flat: np.ndarray):
        return self.module.unflatten_state(flat)

    def add_to_h(self, dstate, dh: np.ndarray):
        return self.module.add_to_h(dstate, dh)

    def state_from_parts(self, *parts):
        """The state from its parts, in the order of grad_state_keys: h, or the lstm's (h, c)."""
        return self.module.state_from_parts(*parts)

    def final_state(self, cache):
        """The state after the last step of a sequence forward, from its stacked cache (the cache fields named like
        the state's parts: h, and the lstm's c) — where a chunk of a stream hands its state to the next."""
        return self.state_from_parts(*(getattr(cache, key[:-1])[-1, ...] for key in self.grad_state_keys))

    def zeros_like_state(self, state):
        """A zero state (adjoint) of the same type, shapes and dtypes as `state`."""
        return map_state(np.zeros_like, state)

    def adjoint_from_h(self, dh: np.ndarray):
        """The state adjoint that carries dh (…, H) on h and zero on the rest of the state: dh, or the lstm's (dh, 0)
        (for the algorithms that form an adjoint from h̄ alone), in dh's array namespace (refimpl/arrays.py)."""
        zeros = namespace(dh).zeros(dh.shape[:-1] + (self.state_size,), dtype=dh.dtype)
        return self.add_to_h(self.unflatten_state(zeros), dh)

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
    if name not in CELLS:
        raise UnknownNameError("cell", name, CELLS)
    module = CELLS[name]
    for key in options:
        if key not in module.OPTIONS:
            takes = f"only {', '.join(module.OPTIONS)}" if module.OPTIONS else "no options"
            raise UnknownNameError(f"option for cell {name!r}", key, module.OPTIONS or ["(none)"],
                                   f"{name} takes {takes}")
    n_in, n_hidden = positive_int("n_in", n_in), positive_int("n_hidden", n_hidden)
    opts = {**module.OPTIONS, **options}
    if "nonlinearity" in opts and opts["nonlinearity"] not in module.NONLINEARITIES:
        raise UnknownNameError(f"{name} nonlinearity", opts["nonlinearity"], module.NONLINEARITIES)
    return Cell(name=name, n_in=int(n_in), n_hidden=int(n_hidden), dtype=resolve_dtype(dtype), options=opts)
