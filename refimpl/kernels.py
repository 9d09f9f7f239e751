"""The reference kernels: every cell's sequence forward and BPTT adjoint, registered with their input specs.

    <cell>.forward   (params, x (T,B,I), state0) -> (h (T,B,H), cache)        the recurrence, eq. (1)-(2) of each cell
    <cell>.backward  (params, dh (T,B,H), cache) -> grads                      BPTT from instantaneous adjoints

    <cell>.<rule>    (params, x (T,B,I), h0 | state0, dh (T,B,H)) -> grads      an RTRL-family sensitivity sweep
                     (refimpl/algorithms/rtrl.py): rule rtrl, snap1 (not lru: there it is rtrl), truncated, spatial, cec (lstm)
    <cell>.fptt, <cell>.fptt1  (params, x, h0 | state0, dh) -> grads (+ "x", "h0"): FPTT's warm-up and error passes
                     (refimpl/algorithms/fptt.py; the raw sweep: the residual check is the API's); the inputs are well conditioned
    ep.free_phase, ep.nudged_phase, ep.bptt   the relaxation loops of the static EP networks (refimpl/ep/networks.py)

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


# The RTRL-family sweeps: the sensitivity update and gradient accumulation over a sequence (or a chunk of a stream),
# from zero traces. On dense cells each step forms an O(S·P) immediate Jacobian (and exact RTRL costs O(S²·P)), so
# their parity grid uses smaller sizes.
_RTRL_SIZES = (dict(T=1, B=1, I=1, H=1), dict(T=13, B=1, I=2, H=3), dict(T=7, B=3, I=5, H=11))


def _sweep(name, rule):
    from .cells import resolve_cell
    from .algorithms.rtrl import cell_grads_online
    state_arg = _STATE_ARG.get(name, "h0")

    def sweep(params, x, dh, **kwargs):
        state0 = kwargs.pop(state_arg)
        cell = resolve_cell(name, x.shape[-1], dh.shape[-1], x.dtype.name, **kwargs)
        return cell_grads_online(rule, cell, params, x, dh, state0)
    sweep.__name__ = f"{name}_{rule}_sweep"
    sweep.__doc__ = f"The {rule} sensitivity sweep of the {name} cell (refimpl.algorithms.rtrl.cell_grads_online)."
    return sweep


def _sweep_inputs(name):
    module, forward_inputs = CELLS[name], _forward_inputs(name)

    def make_inputs(rng, dtype, size, **variant):
        inputs = forward_inputs(rng, dtype, size, **variant)
        h, _ = module.forward(**inputs)
        dh = rng.standard_normal(h.shape)
        if np.iscomplexobj(h):
            dh = dh + 1j * rng.standard_normal(h.shape)
        return {**inputs, "dh": dh.astype(h.dtype)}
    return make_inputs


_RULES = {"rnn": ("rtrl", "snap1", "truncated", "spatial"), "gru": ("rtrl", "snap1", "truncated", "spatial"),
          "lstm": ("rtrl", "snap1", "truncated", "spatial", "cec"), "lru": ("rtrl", "truncated", "spatial")}

for _name, _rules in _RULES.items():
    for _rule in _rules:
        _dense = _name != "lru"          # dense cells form the immediate Jacobian densely (see refimpl/algorithms/rtrl.py)
        register_kernel(KernelSpec(
            name=f"{_name}.{_rule}",
            signature=f"(params, x (T,B,I), {_STATE.get(_name, 'h0 (B,H)')}, dh (T,B,H)) -> {{param: grad}}",
            reference=_sweep(_name, _rule), make_inputs=_sweep_inputs(_name),
            variants=_VARIANTS.get(_name, ({},)), sizes=_RTRL_SIZES if _dense else None))


# FPTT: the warm-up and error sweeps of one cell (diagonal for the lru, linear solves for the dense cells).
def _fptt_sweep(name, two_passes):
    from .cells import resolve_cell
    from .algorithms.fptt import fptt_cell_grads
    state_arg = _STATE_ARG.get(name, "h0")

    def sweep(params, x, dh, **kwargs):
        state0 = kwargs.pop(state_arg)
        cell = resolve_cell(name, x.shape[-1], dh.shape[-1], x.dtype.name, **kwargs)
        return fptt_cell_grads(cell, params, x, dh, state0, two_passes=two_passes, check=False)
    sweep.__name__ = f"{name}_{'fptt' if two_passes else 'fptt1'}_sweep"
    return sweep


def _fptt_inputs(name):
    base = _sweep_inputs(name)

    def make_inputs(rng, dtype, size, **variant):
        from .algorithms.fptt import well_conditioned
        inputs = base(rng, dtype, size, **variant)
        if name == "lru":           # |λ| ≥ 0.9: rebuild the eigenvalues from the ring r ∈ [0.9, 0.99]
            N = size["H"]
            r = rng.uniform(0.9, 0.99, N)
            inputs["params"] = {**inputs["params"], "nu_log": np.log(-np.log(r)).astype(dtype)}
        else:
            inputs["params"] = {k: v.astype(dtype) for k, v in well_conditioned(name, inputs["params"]).items()}
        return inputs
    return make_inputs


# lstm.fptt inverts J_t, whose h block is diag(tanh(c_t) ⊙ σ'(a_o)) W_ho (lstm.md (15)-(16)): a unit whose c_t passes
# near 0 makes J_t near-singular, and the sweep amplifies rounding by about Π_t 1/σ_min(J_t). From the random c0 of the
# other specs that product reaches 1e13 on the (T=13, H=3) case and 2e9 on (T=7, H=11) (σ_min(J_t) down to 1e-3), and
# two correct float64 implementations of the sweep differ there by up to 2e-3. Exact FPTT on the lstm holds only for
# short T with c_t away from 0 (DESIGN.md §7), so its inputs start from c0 = 1 + |c0| (with f ≈ 0.95 and g ≈ 0.8, c_t
# stays positive) and its grid keeps T ≤ 7 (still T = 1, a prime T, B = 1 and B > 1). Measured on 50 seeds per size:
# c_t ≥ 0.6, σ_min(J_t) ≥ 0.05, Π 1/σ_min ≤ 1e6, the reference within 3e-12 of BPTT. The reference is unchanged.
_LSTM_FPTT_SIZES = (dict(T=1, B=1, I=1, H=1), dict(T=5, B=1, I=2, H=3), dict(T=7, B=3, I=5, H=11))


def _lstm_fptt_inputs():
    base = _fptt_inputs("lstm")

    def make_inputs(rng, dtype, size, **variant):
        inputs = base(rng, dtype, size, **variant)
        h0, c0 = inputs["state0"]
        inputs["state0"] = type(inputs["state0"])(h0, (1.0 + np.abs(c0)).astype(dtype))   # c0 ≥ 1
        return inputs
    return make_inputs


for _name in CELLS:
    for _two in (True, False):
        _lstm_fptt = _name == "lstm" and _two
        register_kernel(KernelSpec(
            name=f"{_name}.{'fptt' if _two else 'fptt1'}",
            signature=f"(params, x (T,B,I), {_STATE.get(_name, 'h0 (B,H)')}, dh (T,B,H)) -> {{param: grad, 'x', "
                      f"{', '.join(map(repr, CELLS[_name].GRAD_STATE_KEYS))}}}",
            reference=_fptt_sweep(_name, _two),
            make_inputs=_lstm_fptt_inputs() if _lstm_fptt else _fptt_inputs(_name),
            variants=_VARIANTS.get(_name, ({},)),
            sizes=None if _name == "lru" else _LSTM_FPTT_SIZES if _lstm_fptt else _RTRL_SIZES))


# Equilibrium propagation (refimpl/ep/networks.py): the relaxation loops of the static-input networks — the free phase, the
# nudged phase, and BPTT's adjoint through the free phase. The network is selected by keyword options (kind, …).
def _ep_kernel(which):
    from .ep import networks as ep

    def kernel(params, x, T, kind, activation, dt, y=None, K=None, beta=None):
        sizes = (x.shape[1],) + tuple(params[f"W.{l}"].shape[0] for l in range(sum(k.startswith("W.") for k in params)))
        net, _ = ep.make_ep_net(kind, sizes, activation=activation, dt=dt, dtype=x.dtype.name)
        if which == "free":
            return ep.free_phase(net, params, x, T)
        if which == "nudged":
            return ep.nudged_phase(net, params, x, y, ep.free_phase(net, params, x, T), K, beta)
        return ep.bptt_grads(net, params, x, y, T=T, K=K)[1]
    kernel.__name__ = f"ep_{which}_phase" if which != "bptt" else "ep_bptt"
    return kernel


def _ep_inputs(which):
    def make_inputs(rng, dtype, size, kind, activation, dt):
        from .ep import networks as ep
        sizes = (size["I"], size["H"], 4)
        _, params = ep.make_ep_net(kind, sizes, activation=activation, dt=dt, seed=int(rng.integers(1 << 30)),
                                   dtype=np.dtype(dtype).name)
        x = rng.uniform(0.0, 1.0, (size["B"], size["I"])).astype(dtype)
        inputs = {"params": params, "x": x, "T": size["T"], "kind": kind, "activation": activation, "dt": dt}
        if which != "free":
            y = np.zeros((size["B"], 4), dtype)
            y[np.arange(size["B"]), rng.integers(4, size=size["B"])] = 1.0
            inputs.update(y=y, K=max(1, size["T"] // 2))
            if which == "nudged":
                inputs["beta"] = 0.1
        return inputs
    return make_inputs


_EP_VARIANTS = ({"kind": "prototypical", "activation": "sigm", "dt": 1.0},
                {"kind": "energy", "activation": "sigm", "dt": 0.2},
                {"kind": "toy", "activation": "tanh", "dt": 0.08})
for _which, _doc in (("free", "(params, x (B,I), T) -> [s_l (B, n_l)]"),
                     ("nudged", "(params, x, T, y (B,O), K, beta) -> [s_l] after K nudged steps from the free fixed point"),
                     ("bptt", "(params, x, T, y, K) -> {param: grad}  BPTT through the last K free steps")):
    register_kernel(KernelSpec(name=f"ep.{_which}" + ("_phase" if _which != "bptt" else ""), signature=_doc,
                               reference=_ep_kernel(_which), make_inputs=_ep_inputs(_which), variants=_EP_VARIANTS))
