"""The reference kernel TABLE: every kernel of the registry (refimpl/registry.py), its NumPy reference and input spec.

    <cell>.forward   (params, x (T,B,I), state0) -> (h (T,B,H), cache)        the recurrence, eq. (1)-(2) of each cell
    <cell>.backward  (params, dh (T,B,H), cache) -> grads                      BPTT from instantaneous adjoints

    <cell>.<rule>    (params, x (T,B,I), h0 | state0, dh (T,B,H)) -> grads      an RTRL-family sensitivity sweep
                     (refimpl/algorithms/rtrl.py): rule rtrl, snap1 (not lru: there it is rtrl), truncated, spatial,
                     cec (lstm)
    <cell>.fptt, <cell>.fptt1  (params, x, h0 | state0, dh) -> grads (+ "x", "h0"): FPTT's warm-up and error passes
                     (refimpl/algorithms/fptt.py; the raw sweep: the residual check is the API's); the inputs are well
                     conditioned
    ep.free_phase, ep.nudged_phase, ep.bptt   the relaxation loops of the static EP networks (refimpl/ep/networks.py)

for cell in rnn, gru, lstm, lru. `state0` is the cell's STATE_ARG: h0 (B,H) — LSTMState(h0, c0) for lstm, complex (B,N)
for lru — and `grads` holds every parameter plus "x" and the initial-state keys ("h0", and "c0" for lstm). Options
that change the dynamics (rnn: nonlinearity) are keyword arguments and are registered as kernel variants.

Kernel `<cell>.<op>` has the reference function `<cell>_<op>` (the cells' forward and backward are the cell modules'
own), with the signature of the backends' function of the same name (backends/<backend>/*.py): grep one name to find
and diff both. The tables at the end map the kernel names to them, as each backend's KERNELS does, and register them
with their input specs. refimpl/__init__.py imports this module once, so the registry's table is always complete.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from .algorithms.fptt import fptt_cell_grads, well_conditioned
from .algorithms.rtrl import cell_grads_online
from .cells import CELLS, resolve_cell, rnn
from . import ep
from .registry import KernelSpec, register_kernel

# ---------------------------------------------------------------------------------------------------- the sweeps

def _cell(name: str, x: np.ndarray, dh: np.ndarray, **options):
    """The Cell a sweep runs: I from x (T,B,I), H from dh (T,B,H), the dtype of x, the kernel's options."""
    return resolve_cell(name, x.shape[-1], dh.shape[-1], x.dtype.name, **options)


# The RTRL family (refimpl/algorithms/rtrl.py): the sensitivity update and gradient accumulation over a sequence (or a
# chunk of a stream) from zero traces, cell_grads_online(rule, cell, params, x, dh, state0) -> {param: grad}.

def rnn_rtrl(params, x, h0, dh, nonlinearity="tanh"):
    """rnn.rtrl: exact RTRL of the rnn."""
    return cell_grads_online("rtrl", _cell("rnn", x, dh, nonlinearity=nonlinearity), params, x, dh, h0)


def rnn_snap1(params, x, h0, dh, nonlinearity="tanh"):
    """rnn.snap1: SnAp-1 (the diagonal of the influence matrix) of the rnn."""
    return cell_grads_online("snap1", _cell("rnn", x, dh, nonlinearity=nonlinearity), params, x, dh, h0)


def rnn_truncated(params, x, h0, dh, nonlinearity="tanh"):
    """rnn.truncated: the one-step (truncated) sensitivity of the rnn."""
    return cell_grads_online("truncated", _cell("rnn", x, dh, nonlinearity=nonlinearity), params, x, dh, h0)


def rnn_spatial(params, x, h0, dh, nonlinearity="tanh"):
    """rnn.spatial: the immediate gradient of the rnn (no recurrent term)."""
    return cell_grads_online("spatial", _cell("rnn", x, dh, nonlinearity=nonlinearity), params, x, dh, h0)


def gru_rtrl(params, x, h0, dh):
    """gru.rtrl: exact RTRL of the gru."""
    return cell_grads_online("rtrl", _cell("gru", x, dh), params, x, dh, h0)


def gru_snap1(params, x, h0, dh):
    """gru.snap1: SnAp-1 of the gru."""
    return cell_grads_online("snap1", _cell("gru", x, dh), params, x, dh, h0)


def gru_truncated(params, x, h0, dh):
    """gru.truncated: the one-step sensitivity of the gru."""
    return cell_grads_online("truncated", _cell("gru", x, dh), params, x, dh, h0)


def gru_spatial(params, x, h0, dh):
    """gru.spatial: the immediate gradient of the gru."""
    return cell_grads_online("spatial", _cell("gru", x, dh), params, x, dh, h0)


def lstm_rtrl(params, x, state0, dh):
    """lstm.rtrl: exact RTRL of the lstm, over the state (h, c)."""
    return cell_grads_online("rtrl", _cell("lstm", x, dh), params, x, dh, state0)


def lstm_snap1(params, x, state0, dh):
    """lstm.snap1: SnAp-1 of the lstm."""
    return cell_grads_online("snap1", _cell("lstm", x, dh), params, x, dh, state0)


def lstm_truncated(params, x, state0, dh):
    """lstm.truncated: the one-step sensitivity of the lstm."""
    return cell_grads_online("truncated", _cell("lstm", x, dh), params, x, dh, state0)


def lstm_spatial(params, x, state0, dh):
    """lstm.spatial: the immediate gradient of the lstm."""
    return cell_grads_online("spatial", _cell("lstm", x, dh), params, x, dh, state0)


def lstm_cec(params, x, state0, dh):
    """lstm.cec: the constant error carousel's sensitivity through c only (the 1997 lstm's truncated RTRL)."""
    return cell_grads_online("cec", _cell("lstm", x, dh), params, x, dh, state0)


def lru_rtrl(params, x, h0, dh):
    """lru.rtrl: exact RTRL of the lru (diagonal: also its SnAp-1)."""
    return cell_grads_online("rtrl", _cell("lru", x, dh), params, x, dh, h0)


def lru_truncated(params, x, h0, dh):
    """lru.truncated: the one-step sensitivity of the lru."""
    return cell_grads_online("truncated", _cell("lru", x, dh), params, x, dh, h0)


def lru_spatial(params, x, h0, dh):
    """lru.spatial: the immediate gradient of the lru."""
    return cell_grads_online("spatial", _cell("lru", x, dh), params, x, dh, h0)


# FPTT (refimpl/algorithms/fptt.py): the warm-up and error passes of one cell (diagonal for the lru, linear solves for
# the dense cells), fptt_cell_grads(cell, params, x, dh, state0) -> {param: grad, "x", initial-state keys}; fptt1 is
# the error pass alone. The raw sweep: the residual check is the API's.

def rnn_fptt(params, x, h0, dh, nonlinearity="tanh"):
    """rnn.fptt: both passes."""
    return fptt_cell_grads(_cell("rnn", x, dh, nonlinearity=nonlinearity), params, x, dh, h0, check=False)


def rnn_fptt1(params, x, h0, dh, nonlinearity="tanh"):
    """rnn.fptt1: the error pass only."""
    return fptt_cell_grads(_cell("rnn", x, dh, nonlinearity=nonlinearity), params, x, dh, h0, two_passes=False,
                           check=False)


def gru_fptt(params, x, h0, dh):
    """gru.fptt: both passes."""
    return fptt_cell_grads(_cell("gru", x, dh), params, x, dh, h0, check=False)


def gru_fptt1(params, x, h0, dh):
    """gru.fptt1: the error pass only."""
    return fptt_cell_grads(_cell("gru", x, dh), params, x, dh, h0, two_passes=False, check=False)


def lstm_fptt(params, x, state0, dh):
    """lstm.fptt: both passes."""
    return fptt_cell_grads(_cell("lstm", x, dh), params, x, dh, state0, check=False)


def lstm_fptt1(params, x, state0, dh):
    """lstm.fptt1: the error pass only."""
    return fptt_cell_grads(_cell("lstm", x, dh), params, x, dh, state0, two_passes=False, check=False)


def lru_fptt(params, x, h0, dh):
    """lru.fptt: both passes."""
    return fptt_cell_grads(_cell("lru", x, dh), params, x, dh, h0, check=False)


def lru_fptt1(params, x, h0, dh):
    """lru.fptt1: the error pass only."""
    return fptt_cell_grads(_cell("lru", x, dh), params, x, dh, h0, two_passes=False, check=False)


# Equilibrium propagation (refimpl/ep/networks.py): the relaxation loops of the static-input networks. The network is
# given by its parameters and the keyword options kind, activation, dt (its clamp is the kind's default), read back by
# ep.net_from_kernel_args as the backends read it.

def ep_free_phase(params, x, T, kind, activation, dt):
    """ep.free_phase: T free steps from s = 0 → [s_1 … s_L]."""
    return ep.free_phase(ep.net_from_kernel_args(params, x, kind, activation, dt), params, x, T)


def ep_nudged_phase(params, x, T, kind, activation, dt, y, K, beta):
    """ep.nudged_phase: K nudged steps from the free phase's state after T steps → [s^β_1 … s^β_L]."""
    net = ep.net_from_kernel_args(params, x, kind, activation, dt, y=y)
    return ep.nudged_phase(net, params, x, y, ep.free_phase(net, params, x, T), K, beta)


def ep_bptt(params, x, T, kind, activation, dt, y, K):
    """ep.bptt: BPTT of the loss through the last K of T free steps → {param: grad}."""
    return ep.bptt_grads(ep.net_from_kernel_args(params, x, kind, activation, dt, y=y), params, x, y, T=T, K=K)[1]


# ---------------------------------------------------------------------------------------------------- input specs
# make_inputs(rng, dtype, size, **variant) -> {argument: value}: random but valid inputs of the sizes T, B, I, H.

def forward_inputs(cell_name: str, rng, dtype, size, **variant) -> dict:
    """<cell>.forward: the cell's parameters, x (T,B,I) ~ N(0, 1) and a random initial state (its STATE_ARG)."""
    module = CELLS[cell_name]
    params = module.init_params(size["I"], size["H"], rng, dtype, **{**module.OPTIONS, **variant})
    x = rng.standard_normal((size["T"], size["B"], size["I"])).astype(dtype)
    state0 = module.random_state(rng, size["B"], size["H"], dtype)
    return {"params": params, "x": x, module.STATE_ARG: state0, **variant}


def _with_adjoint(cell_name: str, rng, dtype, size, **variant):
    """forward_inputs, the cache of the forward pass on them, and a random adjoint dh of its h (complex for a complex
    h): (inputs, cache, dh)."""
    inputs = forward_inputs(cell_name, rng, dtype, size, **variant)
    h, cache = CELLS[cell_name].forward(**inputs)
    dh = rng.standard_normal(h.shape)
    if np.iscomplexobj(h):
        dh = dh + 1j * rng.standard_normal(h.shape)
    return inputs, cache, dh.astype(h.dtype)


def backward_inputs(cell_name: str, rng, dtype, size, **variant) -> dict:
    """<cell>.backward: the cache of a forward pass and a random dh (T,B,H)."""
    inputs, cache, dh = _with_adjoint(cell_name, rng, dtype, size, **variant)
    return {"params": inputs["params"], "dh": dh, "cache": cache, **variant}


def sweep_inputs(cell_name: str, rng, dtype, size, **variant) -> dict:
    """<cell>.<rule>: forward_inputs and a random dh (T,B,H)."""
    inputs, _, dh = _with_adjoint(cell_name, rng, dtype, size, **variant)
    return {**inputs, "dh": dh}


def fptt_inputs(cell_name: str, rng, dtype, size, **variant) -> dict:
    """<cell>.fptt, <cell>.fptt1: sweep_inputs with parameters whose state Jacobians FPTT inverts accurately — a
    diagonal Jacobian diag(λ) (the lru) with |λ| on the ring [0.9, 0.99], rebuilt as ν = log(−log r); a dense one
    from refimpl.algorithms.fptt.well_conditioned."""
    inputs = sweep_inputs(cell_name, rng, dtype, size, **variant)
    if CELLS[cell_name].DIAGONAL:
        r = rng.uniform(0.9, 0.99, size["H"])
        inputs["params"] = {**inputs["params"], "nu_log": np.log(-np.log(r)).astype(dtype)}
    else:
        inputs["params"] = {k: v.astype(dtype) for k, v in well_conditioned(cell_name, inputs["params"]).items()}
    return inputs


def lstm_fptt_inputs(rng, dtype, size, **variant) -> dict:
    """lstm.fptt: fptt_inputs from c0 = 1 + |c0|, so that c_t stays away from 0 where J_t is near-singular, on a grid
    with T ≤ 7 (LSTM_FPTT_SIZES; why and what was measured: docs/derivations/fptt.md §7, "The lstm.fptt kernel")."""
    inputs = fptt_inputs("lstm", rng, dtype, size, **variant)
    h0, c0 = inputs["state0"]
    inputs["state0"] = type(inputs["state0"])(h0, (1.0 + np.abs(c0)).astype(dtype))   # c0 ≥ 1
    return inputs


def ep_inputs(phase: str, rng, dtype, size, kind, activation, dt) -> dict:
    """ep.<phase>: a (I, H, 4) network of `kind`, x (B, I) ~ U[0, 1], T = size T; and for the nudged phase and BPTT
    one-hot targets y (B, 4) and K = T // 2 (≥ 1), with β = 0.1 for the nudged phase."""
    _, params = ep.make_ep_net(kind, (size["I"], size["H"], 4), activation=activation, dt=dt,
                               seed=int(rng.integers(1 << 30)), dtype=np.dtype(dtype).name)
    x = rng.uniform(0.0, 1.0, (size["B"], size["I"])).astype(dtype)
    inputs = {"params": params, "x": x, "T": size["T"], "kind": kind, "activation": activation, "dt": dt}
    if phase != "free_phase":
        y = np.zeros((size["B"], 4), dtype)
        y[np.arange(size["B"]), rng.integers(4, size=size["B"])] = 1.0
        inputs.update(y=y, K=max(1, size["T"] // 2))
        if phase == "nudged_phase":
            inputs["beta"] = 0.1
    return inputs


# ---------------------------------------------------------------------------------------------------- the table

RTRL_SWEEPS = {"rnn.rtrl": rnn_rtrl, "rnn.snap1": rnn_snap1, "rnn.truncated": rnn_truncated, "rnn.spatial": rnn_spatial,
               "gru.rtrl": gru_rtrl, "gru.snap1": gru_snap1, "gru.truncated": gru_truncated, "gru.spatial": gru_spatial,
               "lstm.rtrl": lstm_rtrl, "lstm.snap1": lstm_snap1, "lstm.truncated": lstm_truncated,
               "lstm.spatial": lstm_spatial, "lstm.cec": lstm_cec,
               "lru.rtrl": lru_rtrl, "lru.truncated": lru_truncated, "lru.spatial": lru_spatial}

FPTT_SWEEPS = {"rnn.fptt": rnn_fptt, "rnn.fptt1": rnn_fptt1, "gru.fptt": gru_fptt, "gru.fptt1": gru_fptt1,
               "lstm.fptt": lstm_fptt, "lstm.fptt1": lstm_fptt1, "lru.fptt": lru_fptt, "lru.fptt1": lru_fptt1}

EP_RELAXATIONS = {"ep.free_phase": ep_free_phase, "ep.nudged_phase": ep_nudged_phase, "ep.bptt": ep_bptt}

#: The code paths selected by step options; each is parity-tested separately.
VARIANTS = {"rnn": tuple({"nonlinearity": n} for n in rnn.NONLINEARITIES)}
EP_VARIANTS = ({"kind": "prototypical", "activation": "sigm", "dt": 1.0},
               {"kind": "energy", "activation": "sigm", "dt": 0.2},
               {"kind": "toy", "activation": "tanh", "dt": 0.08})

#: Parity-test sizes of the sweeps over a dense Jacobian, which is O(S·P) per step (exact RTRL O(S²·P)): smaller than
#: the default grid. The diagonal lru's sweeps use the default grid.
DENSE_SWEEP_SIZES = (dict(T=1, B=1, I=1, H=1), dict(T=13, B=1, I=2, H=3), dict(T=7, B=3, I=5, H=11))
#: lstm.fptt keeps T ≤ 7 (still T = 1, a prime T, B = 1 and B > 1): docs/derivations/fptt.md §7.
LSTM_FPTT_SIZES = (dict(T=1, B=1, I=1, H=1), dict(T=5, B=1, I=2, H=3), dict(T=7, B=3, I=5, H=11))

_EP_SIGNATURES = {
    "ep.free_phase": "(params, x (B,I), T, kind, activation, dt) -> [s_l (B, n_l)]",
    "ep.nudged_phase": "(params, x, T, kind, activation, dt, y (B,O), K, beta) -> [s_l] after K nudged steps from the "
                       "free fixed point",
    "ep.bptt": "(params, x, T, kind, activation, dt, y, K) -> {param: grad}  BPTT through the last K free steps"}


def _register_table() -> None:
    """Register every kernel, in the order of the tables above — first each cell's forward and backward, the cell
    module's own sequence functions — with its signature (the cell's initial state as its STATE_DOC writes it), input
    spec, variants and parity sizes."""
    for name, module in CELLS.items():
        grad_keys = ", ".join(map(repr, module.GRAD_STATE_KEYS))
        register_kernel(KernelSpec(
            f"{name}.forward",
            f"(params, x (T,B,I), {module.STATE_DOC}) -> (h (T,B,H), {name.upper()}Cache with leading T)",
            module.forward, partial(forward_inputs, name), variants=VARIANTS.get(name, ({},))))
        register_kernel(KernelSpec(
            f"{name}.backward", f"(params, dh (T,B,H), cache) -> {{params…, 'x' (T,B,I), {grad_keys}}}",
            module.backward, partial(backward_inputs, name), variants=VARIANTS.get(name, ({},))))
    for kernel, reference in RTRL_SWEEPS.items():
        name = kernel.split(".")[0]
        register_kernel(KernelSpec(
            kernel, f"(params, x (T,B,I), {CELLS[name].STATE_DOC}, dh (T,B,H)) -> {{param: grad}}", reference,
            partial(sweep_inputs, name), variants=VARIANTS.get(name, ({},)),
            sizes=None if CELLS[name].DIAGONAL else DENSE_SWEEP_SIZES))
    for kernel, reference in FPTT_SWEEPS.items():
        name = kernel.split(".")[0]
        grad_keys = ", ".join(map(repr, CELLS[name].GRAD_STATE_KEYS))
        make_inputs, sizes = ((lstm_fptt_inputs, LSTM_FPTT_SIZES) if kernel == "lstm.fptt" else
                              (partial(fptt_inputs, name), None if CELLS[name].DIAGONAL else DENSE_SWEEP_SIZES))
        register_kernel(KernelSpec(
            kernel, f"(params, x (T,B,I), {CELLS[name].STATE_DOC}, dh (T,B,H)) -> {{param: grad, 'x', {grad_keys}}}",
            reference, make_inputs, variants=VARIANTS.get(name, ({},)), sizes=sizes))
    for kernel, reference in EP_RELAXATIONS.items():
        register_kernel(KernelSpec(kernel, _EP_SIGNATURES[kernel], reference,
                                   partial(ep_inputs, kernel.split(".")[1]), variants=EP_VARIANTS))


_register_table()
