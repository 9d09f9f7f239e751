"""The public API (README "API"): make a cell or model, run it, and get its gradients by any algorithm and backend.

    make_cell(name, n_in, n_hidden, *, seed=0, dtype="float64", **options) -> (cell, params)
    run_cell(cell, params, x, h0=None, backend="numpy", return_cache=False) -> h          (or (h, cache))
    cell_grads(cell, params, x, dh, h0=None, algorithm="bptt", backend="numpy") -> grads
    make_model(cell, n_in, n_hidden, n_out, **options) -> (model, params)
    model_grads(model, params, x, y, *, loss, mask=None, algorithm="bptt", backend="numpy") -> (loss_value, grads)

All inputs are checked here, once, at the boundary (shapes, dtypes, finiteness, names); the cells and kernels below
trust their inputs. Outputs are checked for blow-ups: a non-finite state or gradient raises NumericalError instead of
being returned.
"""

from __future__ import annotations

import numpy as np

from .algorithms import get_algorithm
from .cells import CELLS, Cell, resolve_cell
from .checks import check_array, check_params
from .errors import DTypeError, NumericalError, ShapeError
from .nn import model as nn_model
from .registry import call, cell_kernels


def make_cell(name: str, n_in: int, n_hidden: int, *, seed: int = 0, dtype="float64", **options):
    """Create a cell and its parameters.

    Args:
        name: 'rnn' | 'gru' | 'lstm' | 'lru'.
        n_in: input width I.  n_hidden: hidden units H (for lru: N complex state units).
        seed: seeds the numpy Generator used for the initialisation (DESIGN.md §3).
        dtype: 'float64' (default) or 'float32'; the lru state uses the matching complex dtype.
        **options: rnn: nonlinearity='tanh'|'linear'; lru: r_min=0.0, r_max=1.0, max_phase=2π.
    Returns:
        (cell, params): a frozen `Cell` description and a dict {name: ndarray} in the layout of DESIGN.md §3.
    """
    cell = resolve_cell(name, n_in, n_hidden, dtype, **options)
    params = cell.module.init_params(cell.n_in, cell.n_hidden, np.random.default_rng(seed), cell.dtype,
                                     **cell.options)
    return cell, params


def _check_cell(cell, params) -> None:
    if not isinstance(cell, Cell):
        raise DTypeError(f"cell must be the Cell returned by make_cell, got {type(cell).__name__}; "
                         f"create one with refimpl.make_cell(name, n_in, n_hidden)")
    check_params(f"{cell.name} cell", params, cell.param_shapes, cell.dtype)


def _initial_state(cell: Cell, h0, batch: int):
    """Check h0 (B,H) — or (h0, c0) for lstm, whose state has a part beside h — and return the cell's state object
    (zeros when None)."""
    if h0 is None:
        return cell.zero_state(batch)
    spec = [("B", batch), ("H", cell.n_hidden)]
    parts = cell.grad_state_keys                    # the names of the state's parts: ('h0',), or ('h0', 'c0')
    if len(parts) == 1:
        return cell.state_from_parts(check_array("h0", h0, spec, cell.state_dtype))
    if isinstance(h0, np.ndarray):
        h0 = (h0,) + tuple(np.zeros_like(h0) for _ in parts[1:])        # c0 = 0 when only h0 is given
    if not (isinstance(h0, tuple) and len(h0) == len(parts)):
        raise ShapeError(f"{cell.name} h0 must be an array h0 (B,H) or a pair ({', '.join(parts)}) of (B,H) arrays")
    return cell.state_from_parts(*(check_array(name, a, spec, cell.state_dtype) for name, a in zip(parts, h0)))


def _check_x(cell: Cell, x) -> np.ndarray:
    return check_array("x", x, [("T", None), ("B", None), ("I", cell.n_in)], cell.dtype,
                       hint=f"x is time-major (T, B, I) with I = n_in = {cell.n_in}")


def _check_finite_output(what: str, arrays: dict) -> None:
    for k, a in arrays.items():
        if not np.all(np.isfinite(a)):
            bad = np.argwhere(~np.isfinite(a))[0]
            where = f"first at step t={bad[0]}" if a.ndim == 3 else f"first at index {tuple(bad)}"
            raise NumericalError(f"{what} {k!r} became non-finite ({where}): the recurrence blew up; use smaller "
                                 f"weights or inputs, a shorter sequence, or float64")


def run_cell(cell: Cell, params: dict, x: np.ndarray, h0=None, backend: str = "numpy", return_cache: bool = False):
    """Run a cell over a sequence.

    Args:
        x: (T, B, I) with the cell's dtype.  h0: (B, H) initial state (zeros if None); for lstm also (h0, c0);
        for lru complex (B, N).  backend: a name from `python -m refimpl.run backends`.
        return_cache: also return the cell's cache (a NamedTuple with a leading T axis; for lstm `cache.c` holds c).
    Returns:
        h (T, B, H) — complex for lru — or (h, cache) when return_cache.
    """
    _check_cell(cell, params)
    x = _check_x(cell, x)
    state0 = _initial_state(cell, h0, x.shape[1])
    with np.errstate(all="ignore"):         # a blow-up is detected below and reported, not warned about
        h, cache = call(f"{cell.name}.forward", backend, params, x, state0, **cell.step_options)
    _check_finite_output("hidden state", {"h": h})
    return (h, cache) if return_cache else h


def cell_grads(cell: Cell, params: dict, x: np.ndarray, dh: np.ndarray, h0=None, algorithm: str = "bptt",
               backend: str = "numpy", **options) -> dict:
    """Gradients of a cell from its instantaneous adjoints (DESIGN.md §4).

    Args:
        dh: (T, B, H) the part of ∂L/∂h_t that does not go through later states; complex for lru, with the
            convention z̄ = ∂L/∂Re z + i ∂L/∂Im z.
        **options: the algorithm's options for one cell (fptt / fptt1: carrier='float64' | 'state'; fptt:
            warmup='direct' (default) | 'shooting' (the paper's warm-up)).
        algorithm: a name of DESIGN.md §5: `bptt`, `fptt`, `fptt1`, or an RTRL-family rule (`rtrl`, `online` (= `rtrl`
            for one cell), `snap1`, `truncated`, `spatial`, and `cec` for the lstm), run online with memory
            independent of T.
    Returns:
        {param: grad, "x": (T,B,I), "h0": (B,H)} (plus "c0" for lstm); every gradient has its array's shape and dtype.
        The RTRL-family rules are forward-mode: they return the parameter gradients only (no "x", "h0").
    """
    algo = get_algorithm(algorithm, "cell")
    _check_cell(cell, params)
    x = _check_x(cell, x)
    T, B, _ = x.shape
    state0 = _initial_state(cell, h0, B)
    dh = check_array("dh", dh, [("T", T), ("B", B), ("H", cell.n_hidden)], cell.state_dtype,
                     hint="dh is the instantaneous adjoint of h, shaped like h")
    with np.errstate(all="ignore"):         # a blow-up is detected below and reported, not warned about
        grads = algo.cell_grads(cell_kernels(cell.name, backend, cell.dtype), cell, params, x, dh, state0,
                                **algo.check_options(options, "cell"))
    _check_finite_output("gradient", grads)
    return grads


def make_model(cell: str, n_in: int, n_hidden: int, n_out: int, **options):
    """A stack of recurrent layers with a linear head; see refimpl.nn.model.make_model for every option."""
    return nn_model.make_model(cell, n_in, n_hidden, n_out, **options)


def model_grads(model, params: dict, x: np.ndarray, y, *, loss: str, mask=None, algorithm: str = "bptt",
                backend: str = "numpy", **options):
    """Loss and gradients of a model (DESIGN.md §4: L = (1/B) Σ_b Σ_t m_t l_t).

    Args:
        x: (T, B, n_in).  y: targets (mse/bce: shaped like the output; ce: integer labels).
        loss: 'mse' | 'ce' | 'bce'.  mask: (T, B) or (T,) per-step weights, or None.
        algorithm: a name of DESIGN.md §5 (or the `readout` baseline, or `tbptt`).  backend: where the cell kernels
            run (the RTRL family, FPTT and tbptt run chunk by chunk on every backend: refimpl/algorithms/chunked.py).
        **options: the algorithm's options (RTRL family, fptt, fptt1: chunk=C, the steps per kernel call — 1 on NumPy,
            min(256, T) on a backend by default; fptt / fptt1: passes=L+1 (the pass budget), carrier='float64' |
            'state'; fptt: warmup='direct' | 'shooting'; tbptt: window=k).
    Returns:
        (loss_value, grads) with grads keyed by the dotted parameter names, plus "x" for `bptt` (forward-mode rules
        give no input gradient; `readout` leaves out the parameters it does not train).
    """
    algo = get_algorithm(algorithm, "model")
    nn_model.check_inputs(model, params, x, y, loss, mask)
    with np.errstate(all="ignore"):         # a blow-up is detected below and reported, not warned about
        kernels = cell_kernels(model.cell, backend, model.dtype)
        loss_value, grads = algo.model_grads(kernels, model, params, x, y, loss, mask,
                                             **algo.check_options(options))
    _check_finite_output("gradient", grads)
    if not np.isfinite(loss_value):
        raise NumericalError(f"the loss became non-finite ({loss_value}); the forward pass blew up")
    return loss_value, grads


__all__ = ["make_cell", "run_cell", "cell_grads", "make_model", "model_grads", "CELLS"]
