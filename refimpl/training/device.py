"""The whole training step in a backend's arrays: forward, loss, BPTT and the optimizer update, nothing on the host.

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
"""

from __future__ import annotations

import numpy as np

from .. import optim
from ..arrays import is_numpy, namespace
from ..errors import NumericalError
from ..nn.losses import loss_forward, resolve_loss
from ..nn.model import backward, forward
from ..registry import cell_kernels, to_device, to_host


class DeviceStep:
    """One BPTT training step of `model` with the optimizer `opt` on `backend`, in the backend's arrays (module doc)."""

    def __init__(self, model, opt: optim.OptimConfig, backend: str = "numpy", loss: str = "mse"):
        self.model, self.opt, self.loss, self.backend = model, opt, loss, backend
        resolve_loss(loss)                                   # an unknown loss is refused here, before any work
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
        model = self.model
        out, cache = forward(model, params, x, self.kernels, mask=mask)
        value, dout = loss_forward(self.loss, out, y, mask if model.per_step else None)          # (38), (39)
        grads = backward(model, params, dout, cache, self.kernels)                               # (54)–(61)
        new_params, new_state, info = optim.step(params, grads, state, self.opt)                 # (1)–(14)
        self.last_norm = info["grad_norm"]                   # ‖g‖ before clipping, on the device (for logging)
        xp = namespace(value)
        finite = xp.isfinite(info["grad_norm"]) & xp.isfinite(value)
        if not is_numpy(xp):        # NumPy's optim.step has already refused a non-finite norm, before any update
            new_params = {k: xp.where(finite, new_params[k], params[k]) for k in params}
            new_state = {k: v if k == "step" else xp.where(finite, v, state[k]) for k, v in new_state.items()}
        return new_params, new_state, value, finite

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
