"""The reference kernels: every cell's sequence forward and BPTT adjoint, registered with their input specs.

    <cell>.forward   (params, x (T,B,I), state0) -> (h (T,B,H), cache)        the recurrence, eq. (1)-(2) of each cell
    <cell>.backward  (params, dh (T,B,H), cache) -> grads                      BPTT from instantaneous adjoints

for cell in rnn, gru, lstm, lru. `state0` is h0 (B,H) — LSTMState(h0, c0) for lstm, complex (B,N) for lru — and `grads`
holds every parameter plus "x" and the initial-state keys ("h0", and "c0" for lstm). Options that change the dynamics
(rnn: nonlinearity) are keyword arguments and are registered as kernel variants.
Later issues register their sweeps (RTRL traces, FPTT passes, EP relaxations) the same way.
"""

from __future__ import annotations

import numpy as np

from .cells import CELLS
from .registry import KernelSpec, register_kernel

_STATE = {"lstm": "state0 LSTMState(h0 (B,H), c0 (B,H))", "lru": "h0 complex (B,N)"}
_STATE_ARG = {"lstm": "state0"}          # the initial-state argument's name: h0, or state0 for the (h, c) pair


def _forward_inputs(name):
    module = CELLS[name]

    def make_inputs(rng, dtype, size, **variant):
        params = module.init_params(size["I"], size["H"], rng, dtype, **{**module.OPTIONS, **variant})
        x = rng.standard_normal((size["T"], size["B"], size["I"])).astype(dtype)
        state0 = module.random_state(rng, size["B"], size["H"], dtype)
        return {"params": params, "x": x, _STATE_ARG.get(name, "h0"): state0, **variant}
    return make_inputs


def _backward_inputs(name):
    module, forward_inputs = CELLS[name], _forward_inputs(name)

    def make_inputs(rng, dtype, size, **variant):
        inputs = forward_inputs(rng, dtype, size, **variant)
        h, cache = module.forward(**inputs)
        dh = rng.standard_normal(h.shape)
        if np.iscomplexobj(h):
            dh = dh + 1j * rng.standard_normal(h.shape)
        return {"params": inputs["params"], "dh": dh.astype(h.dtype), "cache": cache, **variant}
    return make_inputs


#: The code paths selected by step options; each is parity-tested separately.
_VARIANTS = {"rnn": tuple({"nonlinearity": n} for n in CELLS["rnn"].NONLINEARITIES)}

for _name, _module in CELLS.items():
    _variants = _VARIANTS.get(_name, ({},))
    _state = _STATE.get(_name, "h0 (B,H)")
    register_kernel(KernelSpec(
        name=f"{_name}.forward",
        signature=f"(params, x (T,B,I), {_state}) -> (h (T,B,H), {_name.upper()}Cache with leading T)",
        reference=_module.forward, make_inputs=_forward_inputs(_name), variants=_variants))
    register_kernel(KernelSpec(
        name=f"{_name}.backward",
        signature=f"(params, dh (T,B,H), cache) -> {{params…, 'x' (T,B,I), {', '.join(map(repr, _module.GRAD_STATE_KEYS))}}}",
        reference=_module.backward, make_inputs=_backward_inputs(_name), variants=_variants))
