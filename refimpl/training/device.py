"""The whole training step in a backend's arrays: forward, loss, gradient (BPTT or an online rule) and the optimizer
update, nothing on the host.

Only the recurrent loops are kernels (DESIGN.md §6); the rest of a step — the layers, the loss, the optimizer — is the
array code of refimpl/nn/layers.py, refimpl/nn/losses.py and refimpl/optim.py, written once against the array API
(refimpl/arrays.py). Given a backend's arrays it runs in them: on `numpy` and `numba` in NumPy arrays (numba's cell
kernels are njit loops over NumPy arrays), on `mlx` in mx.arrays (the adapter backends/mlx/xp.py), on `cupy` in
cupy arrays. A step is

    ŷ, cache = model.forward(params, x)          the cells by the backend's raw kernels (cell_kernels(device=True))
    L, ∂L/∂ŷ = loss_forward(loss, ŷ, y, mask)    losses.py (38)–(45)
    g = model.backward(params, ∂L/∂ŷ, cache)     BPTT, model.py (54)–(61)
    params', state' = optim.step(params, g, state, opt)           optim.py (1)–(14)
    finite = isfinite(‖g‖) ∧ isfinite(L)         a 0-d array of the backend: the update is applied only where finite
                                                 (xp.where), so a blow-up never turns into NaN weights

and everything in it — parameters, activations, gradients, the optimizer's moments — stays in the backend's arrays.
The only host values are the optimizer's step counter and learning rate (Python numbers, optim.py). Arrays cross to the
host only when the caller asks: `report` (the loss and the finite flag, once per logged step: it raises NumericalError
for a skipped, non-finite step) and `to_host` (checkpoints). The crossings are counted by the backend
(registry.Backend.crossings; tests/training/test_device_step.py: zero inside a step).

    step = DeviceStep(model, opt, backend, loss)
    params, state = step.init(params_np)          host → device, once
    x, y = step.to_device(x_np), step.to_device(y_np)
    params, state, L, finite = step(params, state, x, y[, mask])
    value = step.report(L, finite)                device → host: a float, or NumericalError
    params_np = step.to_host(params)
    step.load(params_np, state_np) / step.load_back(params, state)      a checkpoint's (params, state) to and fro

On `numpy` this is exactly the reference: the same functions, `optim.step` raising NumericalError on a non-finite
gradient norm before any update.

The online rules. With algorithm = online, snap1, truncated, spatial, cec (the lstm's) or rtrl where it is per-layer
(one layer, no encoder, no norm: refimpl/algorithms/online.py) the gradient line of the step is the chunked driver
(refimpl/algorithms/chunked.py per_layer_grads) in place of BPTT, in the same arrays: chunks of C steps (option chunk;
1 on numpy, min(256, T) on a backend), per chunk the stack forward by the raw cell kernels from the states the chunk
before handed on, the head and the loss, and down the stack per layer the immediate x̄ (the cell's
step_input_backward, array-API code) and the rule's carried sweep (the raw kernel `<cell>.<rule>`, its traces carried
on the device from chunk to chunk). The loss is summed on the device; nothing is read on the host inside a step.
tbptt runs the same driver with the cell's raw BPTT kernel inside each window (option window=k, default min(16, T)).

    step = DeviceStep(model, opt, backend, loss, algorithm="online", chunk=C)

What is not on this path is refused at construction with the fix (UnsupportedError): fptt and fptt1 (their driver
reads its carries on the host for the residual check; train them without the device path, api.model_grads), dfa,
drtp, readout, whole-stack rtrl, and pooling 'mean' for a rule or tbptt (not memoryless).
"""

from __future__ import annotations

import numpy as np

from .. import optim
from ..algorithms import get_algorithm, rtrl
from ..algorithms.chunked import check_supported, per_layer_grads, tbptt_model_grads
from ..algorithms.online import whole_stack_differs
from ..arrays import is_numpy, namespace
from ..errors import NumericalError, UnsupportedError
from ..nn.losses import loss_forward, resolve_loss
from ..nn.model import backward, forward
from ..registry import cell_kernels, to_device, to_host

#: The algorithms whose whole step runs here: bptt, the RTRL family's per-layer rules (rtrl.LAYER_RULE), tbptt.
DEVICE_ALGORITHMS = ("bptt",) + tuple(rtrl.LAYER_RULE) + ("tbptt",)


def check_device_algorithm(model, algorithm: str) -> None:
    """Refuse, with the fix, an algorithm (or model) whose whole step does not run in a backend's arrays here."""
    get_algorithm(algorithm, "model")                        # an unknown name: UnknownNameError with the names
    if algorithm not in DEVICE_ALGORITHMS:
        raise UnsupportedError(f"algorithm {algorithm!r} has no whole step in a backend's arrays (the device path "
                               f"runs {', '.join(DEVICE_ALGORITHMS)}); run it through refimpl.model_grads, whose "
                               f"kernels run on the backend and the rest on the host, or use backend numpy/numba")
    if algorithm == "bptt":
        return
    if algorithm == "rtrl" and whole_stack_differs(model):
        raise UnsupportedError(f"whole-stack rtrl ({model.layers} layer(s), encoder={model.encoder}, "
                               f"norm={model.norm}) has no backend kernel: use algorithm 'online' (per-layer RTRL, "
                               f"exact at the top) on the device, or backend 'numpy' for whole-stack rtrl")
    for c in model.cells if algorithm in rtrl.LAYER_RULE else ():
        rtrl.check_rule(rtrl.LAYER_RULE[algorithm], c)       # cec on a cell without a cell state
    check_supported(model, None)                             # pooling 'mean' is not memoryless


class DeviceStep:
    """One training step of `model` (BPTT, or a per-layer online rule: `algorithm`) with the optimizer `opt` on
    `backend`, in the backend's arrays (module doc). options: the rule's chunk=C, tbptt's window=k."""

    def __init__(self, model, opt: optim.OptimConfig, backend: str = "numpy", loss: str = "mse",
                 algorithm: str = "bptt", **options):
        self.model, self.opt, self.loss, self.backend, self.algorithm = model, opt, loss, backend, algorithm
        resolve_loss(loss)                                   # an unknown loss is refused here, before any work
        check_device_algorithm(model, algorithm)
        self.options = get_algorithm(algorithm).check_options(options)
        self.kernels = cell_kernels(model.cell, backend, model.dtype.name, device=True)   # refuses a backend not here

    # ---------------------------------------------------------------------------------------------- the boundary
    def to_device(self, tree):
        """Host arrays (a tree) → the backend's arrays (counted crossings; NumPy and numba: unchanged)."""
        return to_device(self.backend, tree)

    def to_host(self, tree):
        """The backend's arrays (a tree) → NumPy (counted crossings), for checkpoints and evaluation."""
        return to_host(self.backend, tree)

    def init(self, params: dict):
        """(parameters, optimizer state) on the device from host parameters and a fresh optimizer state."""
        return self.load(params, optim.init_state(params, self.opt))

    def load(self, params: dict, state: dict):
        """Host parameters and optimizer state (a fresh one, or a checkpoint's) → the device, once; the state's step
        counter stays a host integer (the learning-rate schedule is host arithmetic)."""
        moments = {k: v for k, v in state.items() if k != "step"}
        return self.to_device(params), {**self.to_device(moments), "step": state["step"]}

    def load_back(self, params: dict, state: dict):
        """The device's parameters and optimizer state → NumPy (for evaluation and checkpoints)."""
        moments = {k: v for k, v in state.items() if k != "step"}
        return self.to_host(params), {**self.to_host(moments), "step": state["step"]}

    # ---------------------------------------------------------------------------------------------- the step
    def __call__(self, params: dict, state: dict, x, y, mask=None):
        """One step → (new params, new state, the loss (0-d), finite (0-d bool)), all in the backend's arrays."""
        value, grads = self.grads(params, x, y, mask)
        new_params, new_state, info = optim.step(params, grads, state, self.opt)                 # (1)–(14)
        self.last_norm = info["grad_norm"]                   # ‖g‖ before clipping, on the device (for logging)
        xp = namespace(value)
        finite = xp.isfinite(info["grad_norm"]) & xp.isfinite(value)
        if not is_numpy(xp):        # NumPy's optim.step has already refused a non-finite norm, before any update
            new_params = {k: xp.where(finite, new_params[k], params[k]) for k in params}
            new_state = {k: v if k == "step" else xp.where(finite, v, state[k]) for k, v in new_state.items()}
        return new_params, new_state, value, finite

    def grads(self, params: dict, x, y, mask=None):
        """(the loss, {parameter: gradient}) of the batch, in the backend's arrays: BPTT, or the online rule."""
        model = self.model
        if self.algorithm == "tbptt":                        # the chunked driver in these arrays (module doc)
            return tbptt_model_grads(model, params, x, y, self.loss, mask, kernels=self.kernels,
                                     window=self.options.get("window"))
        if self.algorithm != "bptt":
            return per_layer_grads(model, params, x, y, self.loss, mask, rule=rtrl.LAYER_RULE[self.algorithm],
                                   kernels=self.kernels, chunk=self.options.get("chunk"))
        out, cache = forward(model, params, x, self.kernels, mask=mask)
        value, dout = loss_forward(self.loss, out, y, mask if model.per_step else None)          # (38), (39)
        return value, backward(model, params, dout, cache, self.kernels)                         # (54)–(61)

    def report(self, value, finite) -> float:
        """The loss as a Python float (two device → host crossings: call it at logging points only); NumericalError
        when `finite` is False — the flag of this step, or of every step since the last report and-ed together (the
        training loop keeps it so): a non-finite step's update was skipped, its parameters are those before it."""
        value_np, finite_np = self.to_host((value, finite))
        if not bool(np.asarray(finite_np)):
            raise NumericalError(f"a training step on backend {self.backend!r} was not finite (a NaN/inf loss or "
                                 f"gradient; the last step's loss is {float(np.asarray(value_np))}); its update was "
                                 f"skipped — lower the learning rate, clip harder (--clip), check the inputs, or use "
                                 f"float64")
        return float(np.asarray(value_np))
