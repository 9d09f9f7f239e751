"""refimpl — a readable NumPy reference for how recurrent networks learn.

Readable first, float64 first, not fast: every forward and backward equation is written out by hand, numbered in the
module docstrings and derived in docs/derivations/. Fast backends (Numba, MLX, CuPy) implement the same kernels and are
parity-tested against this reference.

Glossary of shape letters (used in every docstring and shape comment):
    T   time steps (arrays are time-major: x[t] is the input at step t)
    B   batch
    I   input width of a cell (n_in); D also names a feature width in the model stack
    H   hidden units of a cell (n_hidden); the lstm state is the pair (h, c), each (B, H)
    N   complex state units of the lru (its n_hidden); r(·) real, c(·) complex where it matters
    O   output width of the model head (n_out)
    S   size of the full recurrent state: H, or 2H for the lstm ([h; c])
    L   layers of the model stack

Public API (see README): make_cell, run_cell, cell_grads, make_model, model_grads.
Names: cells `rnn` (tanh/linear), `gru`, `lstm`, `lru`; algorithms of DESIGN.md §5 (`bptt` …); backends `numpy` (this
reference), `numba`, `mlx`, `cupy` — `python -m refimpl.run backends` lists what runs here.
"""

from .api import cell_grads, make_cell, make_model, model_grads, run_cell
from .errors import (DTypeError, NonFiniteError, NumericalError, RefimplError, ShapeError, UnknownNameError,
                     UnsupportedError)

# The reference kernel table (refimpl/kernels.py) registers every kernel in the registry, once, here: whoever imports
# refimpl or any of its modules (refimpl.registry included) sees the complete table.
from . import kernels as _kernel_table  # noqa: F401

__version__ = "0.1.0"

__all__ = ["make_cell", "run_cell", "cell_grads", "make_model", "model_grads", "RefimplError", "UnknownNameError",
           "ShapeError", "DTypeError", "NonFiniteError", "UnsupportedError", "NumericalError"]
