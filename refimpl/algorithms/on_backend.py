r"""The RTRL family and FPTT on a backend (numba, mlx, cupy): the same gradients, as whole-sequence kernel calls.
Derivations: docs/derivations/rtrl.md §9b (eq. 9b.1) and docs/derivations/fptt.md §8b (eq. 8b.1).

The NumPy reference runs these algorithms truly online (refimpl/algorithms/online.py, refimpl/algorithms/fptt.py: one step at a time, memory
flat in T). A backend implements their hot loops as registry kernels that sweep a whole sequence,
`<cell>.<rule>(params, x, state0, dh)`, so on a backend they run as the chunked design of DESIGN.md §5 with one chunk
of C = T steps:

  one cell (cell_grads)    grads = <cell>.<rule>(params, x, state0, dh)                     one kernel call
  a model  (model_grads)   (1) the stack's forward pass with the backend's <cell>.forward (as BPTT does), then
                           (2) BPTT's walk down the stack (refimpl/nn/model.py (54)–(61)), except that at every layer
                               the cell's BPTT adjoint is replaced by the algorithm's rule for that layer:

    per-layer online rules (online → rtrl, snap1, truncated, spatial, cec):
        cell-parameter gradient  = the rule's sweep driven by the layer's instantaneous errors δ^l (T, B, H);
        error sent to the input  = the immediate one, x̄_t = (∂h_t/∂x_t)ᴴ δ_t (the cell's step backward without its
        carry through time, batched over all (t, b) at once: no recurrence, plain array code).
        Since no cell carries an adjoint through time, δ^l_t is exactly the within-step error of refimpl/algorithms/online.py (3).
    fptt:  the top `passes` − 1 layers run <cell>.fptt; FPTT is exact, so its x̄ is the total error and the layer below
        receives what BPTT would give it. Layers below the pass budget are `spatial` as in refimpl/algorithms/fptt.py: the
        immediate step backward, with the recurrent term (weight_hh, bias_hh; lru: nu_log, theta_log) given zero.
    fptt1: every layer runs <cell>.fptt1 (its x̄ carries its own, approximate, e_t — as in the reference's one pass).
    rtrl:  the whole-stack sensitivity has no kernel; it runs here only where it equals the per-layer rule (one layer,
        no encoder, no norm), and is refused otherwise.

FPTT's check (refimpl/algorithms/fptt.py (5)) on a backend: the sweep's last error e_{T−1} must equal dh_{T−1}; a kernel does not
return e_{T−1}, but it returns x̄_{T−1} = (∂h_{T−1}/∂x_{T−1})ᴴ e_{T−1}, which must then equal the same product with
dh_{T−1} — one immediate step backward here. The relative residual of that pair is held to the reference's
RESIDUAL_TOL: an error signal lost to the inversion's rounding (a component outside the null space of the input map,
i.e. any generic one) is refused with the reference's message instead of returned.

What differs from the reference, on purpose: memory grows with T (the sequence's states are kept; the flat-memory,
truly online path is the reference's), and `update_every` is not available. tests/algorithms/test_on_backend.py checks
that every rule gives the reference's gradients on every backend that runs here, and refuses where it refuses.
"""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedError
from ..kernels import _STATE_ARG
from .online import PER_LAYER_RULE          # the online rule a model-level algorithm applies in each layer
from ..registry import call



def _state_kwarg(cell, state0) -> dict:
    return {_STATE_ARG.get(cell.name, "h0"): state0}


def sweep(kernel_rule: str, cell, params, x, dh, state0, backend: str) -> dict:
    """One kernel call: the rule's sweep of one cell (NumPy in, NumPy out; converted once each way)."""
    if cell.name == "lru" and kernel_rule == "snap1":
        kernel_rule = "rtrl"                # the lru's immediate Jacobian is diagonal: SnAp-1 is exact RTRL there
    return call(f"{cell.name}.{kernel_rule}", backend, params, x, dh=dh, **_state_kwarg(cell, state0),
                **cell.step_options)


def _flat_cache(cache):
    """A stacked per-step cache (fields (T, B, ·)) seen as one batch of T·B independent steps."""
    return type(cache)(*(f.reshape((-1,) + f.shape[2:]) for f in cache))


def immediate_backward(cell, params, dh, cache) -> tuple[dict, np.ndarray]:
    """The cell's step backward at every t at once, without the carry through time: dh (T, B, H) is the adjoint of
    h_t alone. Returns (parameter gradients summed over (t, b), x̄ (T, B, I))."""
    from ..cells.lstm import LSTMState
    T, B = dh.shape[:2]
    flat = _flat_cache(cache)
    d = dh.reshape((T * B,) + dh.shape[2:])
    if cell.name == "lstm":
        d = LSTMState(d, np.zeros_like(d))
    g, dx, _ = cell.module.step_backward(params, d, flat, **cell.step_options)
    return g, dx.reshape(T, B, -1)


def _state0(cell, cache):
    """The initial state the forward pass started from (the first step's h_prev / (h_prev, c_prev))."""
    from ..cells.lstm import LSTMState
    if cell.name == "lstm":
        return LSTMState(cache.h_prev[0], cache.c_prev[0])
    return cache.h_prev[0]


def _last_step(cache):
    """The cache of the last step alone, as a batch (fields (B, ·))."""
    return type(cache)(*(f[-1] for f in cache))


def check_fptt(cell, params, grads: dict, dh, cache, what: str) -> None:
    """FPTT's check (5) through x̄_{T−1}, fptt.md (8b.1): NumericalError when the sweep lost the error signal."""
    from ..cells.lstm import LSTMState
    from ..errors import NumericalError
    from .fptt import RESIDUAL_TOL, _describe
    last = _last_step(cache)
    d = LSTMState(dh[-1], np.zeros_like(dh[-1])) if cell.name == "lstm" else dh[-1]
    _, dx_want, _ = cell.module.step_backward(params, d, last, **cell.step_options)
    dx_got = grads["x"][-1]
    with np.errstate(all="ignore"):
        residual = float(np.linalg.norm(dx_got - dx_want) / max(float(np.linalg.norm(dx_want)), 1e-300))
    if not np.isfinite(residual) or residual > RESIDUAL_TOL:
        raise NumericalError(
            f"FPTT lost the error signal ({what}: relative residual of x̄_T−1 against (∂h_T−1/∂x_T−1)ᴴ dh_T−1 = "
            f"{residual:.3g}, tolerance {RESIDUAL_TOL:g}) with {_describe(cell, params, dh.shape[0], np.float64)}. "
            f"Inverting contractive dynamics amplifies rounding like |λ|^-T: use a shorter sequence, eigenvalues "
            f"closer to 1 (e.g. lru -o r_min=0.95), or algorithm 'bptt' / 'online'")


class LayerRules:
    """Kernels for refimpl.nn.model.forward / backward: the backend's cell forward, and per layer a rule in place of the
    cell's BPTT adjoint (model.backward calls layer_backward(l, …) when it exists)."""

    def __init__(self, cell, backend: str, rules: list[str]):
        self.cell, self.backend, self.rules = cell, backend, rules

    def forward(self, params, x, state0, **step_options):
        return call(f"{self.cell.name}.forward", self.backend, params, x, state0, **step_options)

    def backward(self, params, dh, cache, **step_options):       # never used: model.backward prefers layer_backward
        raise UnsupportedError("LayerRules needs the layer index: call layer_backward")

    def layer_backward(self, l: int, params, dh, cache, **step_options) -> dict:
        rule, cell = self.rules[l], self.cell
        if rule in ("fptt", "fptt1"):
            grads = sweep(rule, cell, params, cache.x, dh, _state0(cell, cache), self.backend)
            if rule == "fptt":
                check_fptt(cell, params, grads, dh, cache, f"layer {l}")
            return grads
        g_imm, dx = immediate_backward(cell, params, dh, cache)                  # rtrl.md (9b.1): x̄ without carry
        if rule == "spatial-fptt":                   # below the pass budget: immediate, recurrent term zero
            from .fptt import RECURRENT_TERM
            grads = {k: (np.zeros_like(v) if k in RECURRENT_TERM[cell.name] else g_imm[k].astype(v.dtype))
                     for k, v in params.items()}
        else:
            grads = sweep(rule, cell, params, cache.x, dh, _state0(cell, cache), self.backend)
        return {**{k: grads[k] for k in params}, "x": dx}


def model_grads(name: str, kernels, model, params, x, y, loss, mask, **options):
    """Loss and gradients of `model` by algorithm `name` with the cell sweeps on `kernels.backend`."""
    from ..nn.model import bptt
    from .online import check_supported
    check_supported(model, mask)                    # the same refusals as the reference (pooling 'mean', …)
    _check_cec(name, model.cell)
    L = model.layers
    if name == "rtrl":
        if not (L == 1 and not model.encoder and model.norm is None):
            raise UnsupportedError(
                f"whole-stack rtrl ({L} layer(s), encoder={model.encoder}, norm={model.norm}) has no backend kernel: "
                f"use backend 'numpy' for it, or algorithm 'online' (per-layer RTRL, exact at the top) on "
                f"{kernels.backend!r}")
        rules = ["rtrl"]
    elif name in PER_LAYER_RULE:
        rules = [PER_LAYER_RULE[name]] * L
    elif name == "fptt":
        _check_carrier(options)
        passes = int(options.get("passes", L + 1))
        if passes < 1:
            raise UnsupportedError(f"passes must be ≥ 1, got {passes} (full FPTT of {L} layer(s) takes {L + 1})")
        n_fptt = min(L, passes - 1)
        rules = ["spatial-fptt"] * (L - n_fptt) + ["fptt"] * n_fptt
    elif name == "fptt1":
        _check_carrier(options)
        rules = ["fptt1"] * L
    else:
        raise UnsupportedError(f"{name!r} has no backend sweep")
    value, grads = bptt(model, params, x, y, loss=loss, mask=mask, kernels=LayerRules(model.cells[0], kernels.backend,
                                                                                       rules))
    if name != "fptt" and name != "fptt1" or not options.get("input_grad", True):
        grads.pop("x", None)                        # forward-mode rules give no input gradient (as the reference)
    return value, grads


def _check_carrier(options: dict) -> None:
    if options.get("carrier", "float64") != "float64":
        raise UnsupportedError(f"carrier={options['carrier']!r}: the backend FPTT kernels carry their errors in "
                               f"float64; use backend 'numpy' for other carriers")


def _check_cec(name, cell_name):
    if name == "cec" and cell_name != "lstm":
        raise UnsupportedError(f"algorithm 'cec' (the constant error carousel's internal RTRL) is for the lstm only, "
                               f"not {cell_name!r}; use 'online', 'snap1', 'truncated' or 'spatial'")


def cell_grads(name: str, kernels, cell, params, x, dh, state0, **options) -> dict:
    """One cell's gradients by `name` from its instantaneous adjoints, as one kernel call on `kernels.backend`."""
    _check_cec(name, cell.name)
    if name in ("fptt", "fptt1"):
        _check_carrier(options)
        grads = sweep(name, cell, params, x, dh, state0, kernels.backend)
        if name == "fptt":
            _, cache = call(f"{cell.name}.forward", kernels.backend, params, x, state0, **cell.step_options)
            check_fptt(cell, params, grads, dh, cache, "one cell")
        return grads
    return sweep(PER_LAYER_RULE.get(name, name), cell, params, x, dh, state0, kernels.backend)
