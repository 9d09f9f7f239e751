r"""The RTRL family and FPTT on a backend (numba, mlx, cupy): the same gradients, as whole-sequence kernel calls.
Derivations: docs/derivations/rtrl.md §9b (eq. 9b.1) and docs/derivations/fptt.md §8b (eq. 8b.1).

The NumPy reference runs these algorithms truly online (refimpl/algorithms/online.py, refimpl/algorithms/fptt.py: one
step at a time, memory flat in T). A backend implements their hot loops as registry kernels that sweep a whole
sequence, `<cell>.<rule>(params, x, state0, dh)`, so on a backend they run as the chunked design of DESIGN.md §5 with
one chunk of C = T steps:

  one cell (cell_grads)    grads = <cell>.<rule>(params, x, state0, dh)                     one kernel call
  a model  (online_grads,   (1) the stack's forward pass with the backend's <cell>.forward (as BPTT does), then
   fptt_model_grads)       (2) BPTT's walk down the stack (refimpl/nn/model.py (54)–(61)), with the algorithm's
                               rule for each layer as the cell adjoint (59) (refimpl/nn/stack.py) in place of the
                               cell's BPTT adjoint:

    per-layer online rules (rtrl.LAYER_RULE: online → rtrl, snap1, truncated, spatial, cec):
        cell-parameter gradient  = the rule's sweep driven by the layer's instantaneous errors δ^l (T, B, H);
        error sent to the input  = the immediate one, x̄_t = (∂h_t/∂x_t)ᴴ δ_t (the cell's step backward without its
        carry through time, batched over all (t, b) at once: no recurrence, plain array code).
        Since no cell carries an adjoint through time, δ^l_t is exactly the within-step error of
        refimpl/algorithms/online.py (3).
    fptt:  the top `passes` − 1 layers run <cell>.fptt; FPTT is exact, so its x̄ is the total error and the layer below
        receives what BPTT would give it. Layers below the pass budget are `spatial` as in refimpl/algorithms/fptt.py:
        the immediate step backward, with the recurrent term (cell.recurrent_params) given zero.
    fptt1: every layer runs <cell>.fptt1 (its x̄ carries its own, approximate, e_t — as in the reference's one pass).
    rtrl:  the whole-stack sensitivity has no kernel; it runs here only where it equals the per-layer rule (one layer,
        no encoder, no norm), and is refused otherwise.

FPTT's check (refimpl/algorithms/fptt.py (5)) on a backend: the sweep's last error e_{T−1} must equal dh_{T−1}; a
kernel does not return e_{T−1}, but it returns x̄_{T−1} = (∂h_{T−1}/∂x_{T−1})ᴴ e_{T−1}, which must then equal the same
product with dh_{T−1} — one immediate step backward here. The relative residual of that pair is held to the reference's
RESIDUAL_TOL: an error signal lost to the inversion's rounding (a component outside the null space of the input map,
i.e. any generic one) is refused with the reference's message instead of returned.

The functions here have the signatures of the reference functions they stand for, with the backend's cell kernels
first: online_grads (online.py), fptt_model_grads / fptt_cell_grads (fptt.py), cell_grads_online (rtrl.py);
refimpl/algorithms/__init__.py picks one or the other in one place.

What differs from the reference, on purpose: memory grows with T (the sequence's states are kept; the flat-memory,
truly online path is the reference's), and `update_every` is not available. tests/algorithms/test_on_backend.py checks
that every rule gives the reference's gradients on every backend that runs here, and refuses where it refuses.
"""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedError
from ..nn import model as nn_model
from ..registry import call
from . import fptt, rtrl
from .online import check_supported, whole_stack_differs


def _sweep(kernel: str, cell, params, x, dh, state0, backend: str) -> dict:
    """One kernel call `<cell>.<kernel>(params, x, h0 | state0, dh)`: a sweep of one cell (NumPy in and out)."""
    return call(f"{cell.name}.{kernel}", backend, params, x, dh=dh, **{cell.state_arg: state0}, **cell.step_options)


def _flat_cache(cache):
    """A stacked per-step cache (fields (T, B, ·)) seen as one batch of T·B independent steps."""
    return type(cache)(*(f.reshape((-1,) + f.shape[2:]) for f in cache))


def immediate_backward(cell, params, dh, cache) -> tuple[dict, np.ndarray]:
    """The cell's step backward at every t at once, without the carry through time: dh (T, B, H) is the adjoint of
    h_t alone. Returns (parameter gradients summed over (t, b), x̄ (T, B, I))."""
    T, B = dh.shape[:2]
    d = cell.adjoint_from_h(dh.reshape((T * B,) + dh.shape[2:]))
    g, dx, _ = cell.module.step_backward(params, d, _flat_cache(cache), **cell.step_options)
    return g, dx.reshape(T, B, -1)


def check_fptt(cell, params, grads: dict, dh, cache, what: str) -> None:
    """FPTT's check (5) through x̄_{T−1}, fptt.md (8b.1): NumericalError when the sweep lost the error signal."""
    last = type(cache)(*(f[-1] for f in cache))                        # the last step alone, a batch (B, ·)
    _, dx_want, _ = cell.module.step_backward(params, cell.adjoint_from_h(dh[-1]), last, **cell.step_options)
    dx_got = grads["x"][-1]
    with np.errstate(all="ignore"):
        residual = float(np.linalg.norm(dx_got - dx_want) / max(float(np.linalg.norm(dx_want)), 1e-300))
    fptt.check_residual(cell, params, dh.shape[0], np.float64, residual, what,
                        measured="of x̄_T−1 against (∂h_T−1/∂x_T−1)ᴴ dh_T−1")


def _check_carrier(carrier: str) -> None:
    if carrier != "float64":
        raise UnsupportedError(f"carrier={carrier!r}: the backend FPTT kernels carry their errors in float64; use "
                               f"backend 'numpy' for other carriers")


# ----------------------------------------------------------------------------------------------------------------
# The cell adjoints (refimpl/nn/stack.py) of one layer: cell_adjoint(l, cell_params, dh, cell_cache)

def _rule_adjoint(cell, rule: str, backend: str):
    """An online rule's sweep driven by the layer's instantaneous errors; x̄ the immediate one, rtrl.md (9b.1)."""
    def cell_adjoint(l, params, dh, cache):
        _, dx = immediate_backward(cell, params, dh, cache)
        grads = _sweep(rtrl.sweep_rule(rule, cell), cell, params, cache.x, dh, cell.zero_state(dh.shape[1]), backend)
        return {**{k: grads[k] for k in params}, "x": dx}
    return cell_adjoint


def _fptt_adjoint(cell, two_passes: bool, backend: str, check: bool):
    """<cell>.fptt (checked through x̄_T−1) or <cell>.fptt1: the sweep's own x̄ carries its error."""
    def cell_adjoint(l, params, dh, cache):
        grads = _sweep("fptt" if two_passes else "fptt1", cell, params, cache.x, dh, cell.zero_state(dh.shape[1]),
                       backend)
        if two_passes and check:
            check_fptt(cell, params, grads, dh, cache, f"layer {l}")
        return {**{k: grads[k] for k in params}, "x": grads["x"]}
    return cell_adjoint


def _held_adjoint(cell):
    """Below FPTT's pass budget (fptt.py's `spatial` layers): the immediate step backward, the recurrent term zero."""
    def cell_adjoint(l, params, dh, cache):
        g, dx = immediate_backward(cell, params, dh, cache)
        grads = {k: (np.zeros_like(v) if k in cell.recurrent_params else g[k].astype(v.dtype))
                 for k, v in params.items()}
        return {**grads, "x": dx}
    return cell_adjoint


def _walk(kernels, model, params, x, y, loss, mask, adjoints: list):
    """Loss and gradients by BPTT's walk with the backend's cell forward and `adjoints[l]` as layer l's cell adjoint."""
    return nn_model.bptt(model, params, x, y, loss=loss, mask=mask, kernels=kernels,
                         cell_adjoint=lambda l, *args: adjoints[l](l, *args))


# ----------------------------------------------------------------------------------------------------------------
# The algorithms

def online_grads(kernels, model, params, x, y, loss, mask=None, *, algorithm="online"):
    """online.online_grads with the layers' sweeps on `kernels.backend` (no "x": forward-mode rules)."""
    check_supported(model, mask)                    # the same refusals as the reference (pooling 'mean', …)
    rule = rtrl.LAYER_RULE[algorithm]
    cell = model.cells[0]
    rtrl.check_rule(rule, cell)
    if algorithm == "rtrl" and whole_stack_differs(model):
        raise UnsupportedError(
            f"whole-stack rtrl ({model.layers} layer(s), encoder={model.encoder}, norm={model.norm}) has no backend "
            f"kernel: use backend 'numpy' for it, or algorithm 'online' (per-layer RTRL, exact at the top) on "
            f"{kernels.backend!r}")
    value, grads = _walk(kernels, model, params, x, y, loss, mask,
                         [_rule_adjoint(c, rule, kernels.backend) for c in model.cells])
    grads.pop("x")
    return value, grads


def fptt_model_grads(kernels, model, params, x, y, loss, mask=None, *, passes: int | None = None,
                     two_passes: bool = True, carrier: str = "float64", check: bool = True, input_grad: bool = True):
    """fptt.fptt_model_grads with the layers' sweeps on `kernels.backend` (float64 carriers only)."""
    check_supported(model, mask)
    _check_carrier(carrier)
    fptt_layers = fptt.error_layers(model.layers, passes, two_passes)
    adjoints = [_fptt_adjoint(c, two_passes, kernels.backend, check) if l in fptt_layers else _held_adjoint(c)
                for l, c in enumerate(model.cells)]
    value, grads = _walk(kernels, model, params, x, y, loss, mask, adjoints)
    if not input_grad:
        grads.pop("x")
    return value, grads


def cell_grads_online(kernels, rule: str, cell, params, x, dh, state0) -> dict:
    """rtrl.cell_grads_online as one kernel call on `kernels.backend`."""
    rtrl.check_rule(rule, cell)
    grads = _sweep(rtrl.sweep_rule(rule, cell), cell, params, x, dh, state0, kernels.backend)
    return {k: grads[k] for k in params}


def fptt_cell_grads(kernels, cell, params, x, dh, state0, *, two_passes: bool = True, carrier: str = "float64",
                    check: bool = True) -> dict:
    """fptt.fptt_cell_grads as one kernel call on `kernels.backend` (checked through x̄_T−1, fptt.md (8b.1))."""
    _check_carrier(carrier)
    grads = _sweep("fptt" if two_passes else "fptt1", cell, params, x, dh, state0, kernels.backend)
    if not two_passes:                        # the error phase from e_{−1} = 0: the initial state's gradient is 0
        grads = {**{k: grads[k] for k in params}, "x": grads["x"],
                 **dict(zip(cell.grad_state_keys, np.split(np.zeros((x.shape[1], cell.state_size), cell.state_dtype),
                                                             len(cell.grad_state_keys), axis=-1)))}
    if two_passes and check:
        _, cache = kernels.forward(params, x, state0, **cell.step_options)
        check_fptt(cell, params, grads, dh, cache, "one cell")
    return grads
