"""The reference kernel TABLE: every kernel of the registry (refimpl/registry.py), its NumPy reference and input spec.

    <cell>.forward   (params, x (T,B,I), state0) -> (h (T,B,H), cache)        the recurrence, eq. (1)-(2) of each cell
    <cell>.backward  (params, dh (T,B,H), cache) -> grads                      BPTT from instantaneous adjoints

    <cell>.<rule>    (params, x (T,B,I), h0 | state0, dh (T,B,H), carry=None, *, carry_out=True) -> {grads, "state",
                     "carry"}
                     an RTRL-family sensitivity sweep over one chunk of a stream (refimpl/algorithms/rtrl.py `sweep`):
                     rule rtrl, snap1 (not lru: there it is rtrl), truncated, spatial, cec (lstm); the carry is the
                     rule's traces (rtrl.py, "Trace layouts"), {} for truncated and spatial; carry_out=False (a
                     stream's last chunk) returns "carry" None and builds nothing for it, the same grads and state
    <cell>.fptt      (params, x, h0 | state0, dh) -> grads (+ "x", "h0"): FPTT's two phases over a whole sequence
    <cell>.fptt_warmup, <cell>.fptt_shooting, <cell>.fptt1  (params, x, h0 | state0, dh, carry=None) -> {…, "state",
                     "carry"}: FPTT's warm-ups (direct; the paper's shooting) and error phase over one chunk
                     (refimpl/algorithms/fptt.py; the raw sweeps: the residual check is the API's); the inputs are
                     well conditioned

A carried kernel takes the state before its chunk (its state argument) and the carry before it, and returns the state
and the carry after it, so a stream cut into chunks of any size gives the results of one uncut sweep (DESIGN.md §5).
Its input spec carries what a reference sweep over a random prefix hands on, so the parity tests check the carry in
and out on every backend.
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

from .algorithms.fptt import WARMUP_PHASES, fptt_cell_grads, fptt_errors, well_conditioned
from .algorithms.rtrl import sweep
from .cells import CELLS, resolve_cell, rnn
from . import ep
from .registry import KernelSpec, register_kernel

# ---------------------------------------------------------------------------------------------------- the sweeps

def _cell(name: str, x: np.ndarray, dh: np.ndarray, **options):
    """The Cell a sweep runs: I from x (T,B,I), H from dh (T,B,H), the dtype of x, the kernel's options."""
    return resolve_cell(name, x.shape[-1], dh.shape[-1], x.dtype.name, **options)


# The RTRL family (refimpl/algorithms/rtrl.py): the sensitivity update and gradient accumulation over one chunk of a
# stream (or a whole sequence) with its carry: rtrl.sweep(rule, cell, params, x, dh, state0, carry, carry_out=…) ->
# {param: grad, "state": the state after the chunk, "carry": the traces after it ({} for truncated, spatial; None
# with carry_out=False)}.

def _rtrl_sweep(rule: str, cell_name: str, params, x, state0, dh, carry, carry_out, **options) -> dict:
    grads, state, carry = sweep(rule, _cell(cell_name, x, dh, **options), params, x, dh, state0, carry,
                                carry_out=carry_out)
    return {**grads, "state": state, "carry": carry}


def rnn_rtrl(params, x, h0, dh, carry=None, nonlinearity="tanh", *, carry_out=True):
    """rnn.rtrl: exact RTRL of the rnn."""
    return _rtrl_sweep("rtrl", "rnn", params, x, h0, dh, carry, carry_out, nonlinearity=nonlinearity)


def rnn_snap1(params, x, h0, dh, carry=None, nonlinearity="tanh", *, carry_out=True):
    """rnn.snap1: SnAp-1 (the influence matrix kept on the immediate Jacobian's pattern) of the rnn."""
    return _rtrl_sweep("snap1", "rnn", params, x, h0, dh, carry, carry_out, nonlinearity=nonlinearity)


def rnn_truncated(params, x, h0, dh, carry=None, nonlinearity="tanh", *, carry_out=True):
    """rnn.truncated: the one-step (truncated) sensitivity of the rnn."""
    return _rtrl_sweep("truncated", "rnn", params, x, h0, dh, carry, carry_out, nonlinearity=nonlinearity)


def rnn_spatial(params, x, h0, dh, carry=None, nonlinearity="tanh", *, carry_out=True):
    """rnn.spatial: the immediate gradient (no recurrent term) of the rnn."""
    return _rtrl_sweep("spatial", "rnn", params, x, h0, dh, carry, carry_out, nonlinearity=nonlinearity)


def gru_rtrl(params, x, h0, dh, carry=None, *, carry_out=True):
    """gru.rtrl: exact RTRL of the gru."""
    return _rtrl_sweep("rtrl", "gru", params, x, h0, dh, carry, carry_out)


def gru_snap1(params, x, h0, dh, carry=None, *, carry_out=True):
    """gru.snap1: SnAp-1 (the influence matrix kept on the immediate Jacobian's pattern) of the gru."""
    return _rtrl_sweep("snap1", "gru", params, x, h0, dh, carry, carry_out)


def gru_truncated(params, x, h0, dh, carry=None, *, carry_out=True):
    """gru.truncated: the one-step (truncated) sensitivity of the gru."""
    return _rtrl_sweep("truncated", "gru", params, x, h0, dh, carry, carry_out)


def gru_spatial(params, x, h0, dh, carry=None, *, carry_out=True):
    """gru.spatial: the immediate gradient (no recurrent term) of the gru."""
    return _rtrl_sweep("spatial", "gru", params, x, h0, dh, carry, carry_out)


def lstm_rtrl(params, x, state0, dh, carry=None, *, carry_out=True):
    """lstm.rtrl: exact RTRL of the lstm."""
    return _rtrl_sweep("rtrl", "lstm", params, x, state0, dh, carry, carry_out)


def lstm_snap1(params, x, state0, dh, carry=None, *, carry_out=True):
    """lstm.snap1: SnAp-1 (the influence matrix kept on the immediate Jacobian's pattern) of the lstm."""
    return _rtrl_sweep("snap1", "lstm", params, x, state0, dh, carry, carry_out)


def lstm_truncated(params, x, state0, dh, carry=None, *, carry_out=True):
    """lstm.truncated: the one-step (truncated) sensitivity of the lstm."""
    return _rtrl_sweep("truncated", "lstm", params, x, state0, dh, carry, carry_out)


def lstm_spatial(params, x, state0, dh, carry=None, *, carry_out=True):
    """lstm.spatial: the immediate gradient (no recurrent term) of the lstm."""
    return _rtrl_sweep("spatial", "lstm", params, x, state0, dh, carry, carry_out)


def lstm_cec(params, x, state0, dh, carry=None, *, carry_out=True):
    """lstm.cec: the constant error carousel's sensitivity through c only (the 1997 lstm's truncated RTRL) of the lstm."""
    return _rtrl_sweep("cec", "lstm", params, x, state0, dh, carry, carry_out)


def lru_rtrl(params, x, h0, dh, carry=None, *, carry_out=True):
    """lru.rtrl: exact RTRL of the lru (diagonal: also its SnAp-1)."""
    return _rtrl_sweep("rtrl", "lru", params, x, h0, dh, carry, carry_out)


def lru_truncated(params, x, h0, dh, carry=None, *, carry_out=True):
    """lru.truncated: the one-step (truncated) sensitivity of the lru."""
    return _rtrl_sweep("truncated", "lru", params, x, h0, dh, carry, carry_out)


def lru_spatial(params, x, h0, dh, carry=None, *, carry_out=True):
    """lru.spatial: the immediate gradient (no recurrent term) of the lru."""
    return _rtrl_sweep("spatial", "lru", params, x, h0, dh, carry, carry_out)


# FPTT (refimpl/algorithms/fptt.py), the raw sweeps (the residual check (5) is the caller's), float64 carriers:
#   <cell>.fptt         both phases over a whole sequence, the direct warm-up -> {param: grad, "x", initial-state keys
#                       (e_{−1})}
#   <cell>.fptt_warmup  phase 1 over one chunk, the direct warm-up, carried -> {"state", "carry": {"Q": Q, "e": e}}
#   <cell>.fptt_shooting  phase 1 over one chunk, the paper's shooting warm-up -> {"state", "carry": {"v": v', "P": P}}
#   <cell>.fptt1        phase 2 over one chunk, carried -> {param: grad, "x", "state", "carry": {"v"}}; carry None is
#                       e_{−1} = 0 (the `fptt1` algorithm), {"v": e_{−1}} starts a stream after the warm-up

def _fptt1(cell_name: str, params, x, state0, dh, carry, **options) -> dict:
    grads, state, carry, _ = fptt_errors(_cell(cell_name, x, dh, **options), params, x, dh, state0, carry)
    return {**grads, "state": state, "carry": carry}


def _fptt_warm(warmup: str, cell_name: str, params, x, state0, dh, carry, **options) -> dict:
    state, carry = WARMUP_PHASES[warmup](_cell(cell_name, x, dh, **options), params, x, dh, state0, carry)
    return {"state": state, "carry": carry}


def rnn_fptt(params, x, h0, dh, nonlinearity="tanh"):
    """rnn.fptt: both phases over a whole sequence."""
    return fptt_cell_grads(_cell("rnn", x, dh, nonlinearity=nonlinearity), params, x, dh, h0, check=False)


def rnn_fptt1(params, x, h0, dh, carry=None, nonlinearity="tanh"):
    """rnn.fptt1: the error phase over one chunk, from the carried v (None: e_{−1} = 0)."""
    return _fptt1("rnn", params, x, h0, dh, carry, nonlinearity=nonlinearity)


def rnn_fptt_warmup(params, x, h0, dh, carry=None, nonlinearity="tanh"):
    """rnn.fptt_warmup: the direct warm-up over one chunk, from the carried (Q, e) (None: Q = I, e = 0)."""
    return _fptt_warm("direct", "rnn", params, x, h0, dh, carry, nonlinearity=nonlinearity)


def rnn_fptt_shooting(params, x, h0, dh, carry=None, nonlinearity="tanh"):
    """rnn.fptt_shooting: the paper's shooting warm-up over one chunk, from the carried (v', P) (None:
    v' = 0, P = I)."""
    return _fptt_warm("shooting", "rnn", params, x, h0, dh, carry, nonlinearity=nonlinearity)


def gru_fptt(params, x, h0, dh):
    """gru.fptt: both phases over a whole sequence."""
    return fptt_cell_grads(_cell("gru", x, dh), params, x, dh, h0, check=False)


def gru_fptt1(params, x, h0, dh, carry=None):
    """gru.fptt1: the error phase over one chunk, from the carried v (None: e_{−1} = 0)."""
    return _fptt1("gru", params, x, h0, dh, carry)


def gru_fptt_warmup(params, x, h0, dh, carry=None):
    """gru.fptt_warmup: the direct warm-up over one chunk, from the carried (Q, e) (None: Q = I, e = 0)."""
    return _fptt_warm("direct", "gru", params, x, h0, dh, carry)


def gru_fptt_shooting(params, x, h0, dh, carry=None):
    """gru.fptt_shooting: the paper's shooting warm-up over one chunk, from the carried (v', P) (None:
    v' = 0, P = I)."""
    return _fptt_warm("shooting", "gru", params, x, h0, dh, carry)


def lstm_fptt(params, x, state0, dh):
    """lstm.fptt: both phases over a whole sequence."""
    return fptt_cell_grads(_cell("lstm", x, dh), params, x, dh, state0, check=False)


def lstm_fptt1(params, x, state0, dh, carry=None):
    """lstm.fptt1: the error phase over one chunk, from the carried v (None: e_{−1} = 0)."""
    return _fptt1("lstm", params, x, state0, dh, carry)


def lstm_fptt_warmup(params, x, state0, dh, carry=None):
    """lstm.fptt_warmup: the direct warm-up over one chunk, from the carried (Q, e) (None: Q = I, e = 0)."""
    return _fptt_warm("direct", "lstm", params, x, state0, dh, carry)


def lstm_fptt_shooting(params, x, state0, dh, carry=None):
    """lstm.fptt_shooting: the paper's shooting warm-up over one chunk, from the carried (v', P) (None:
    v' = 0, P = I)."""
    return _fptt_warm("shooting", "lstm", params, x, state0, dh, carry)


def lru_fptt(params, x, h0, dh):
    """lru.fptt: both phases over a whole sequence."""
    return fptt_cell_grads(_cell("lru", x, dh), params, x, dh, h0, check=False)


def lru_fptt1(params, x, h0, dh, carry=None):
    """lru.fptt1: the error phase over one chunk, from the carried v (None: e_{−1} = 0)."""
    return _fptt1("lru", params, x, h0, dh, carry)


def lru_fptt_warmup(params, x, h0, dh, carry=None):
    """lru.fptt_warmup: the direct warm-up over one chunk, from the carried (Q, e) (None: Q = I, e = 0)."""
    return _fptt_warm("direct", "lru", params, x, h0, dh, carry)


def lru_fptt_shooting(params, x, h0, dh, carry=None):
    """lru.fptt_shooting: the paper's shooting warm-up over one chunk, from the carried (v', P) (None:
    v' = 0, P = I)."""
    return _fptt_warm("shooting", "lru", params, x, h0, dh, carry)


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


#: Steps of the random prefix that gives a carried kernel's input spec its non-trivial carry.
PREFIX = 2


def _prefix(cell_name: str, rng, dtype, size, **variant):
    """A random prefix of PREFIX steps: (the Cell, inputs of size T = PREFIX whose x and dh the prefix runs on)."""
    inputs, _, dh = _with_adjoint(cell_name, rng, dtype, {**size, "T": PREFIX}, **variant)
    return _cell(cell_name, inputs["x"], dh, **variant), inputs, dh


def sweep_inputs(cell_name: str, rule: str, rng, dtype, size, **variant) -> dict:
    """<cell>.<rule>: forward_inputs, a random dh (T,B,H), and the state and carry a reference sweep over a random
    prefix of PREFIX steps hands on (a reachable, non-trivial carry: traces that are not zero)."""
    cell, pre, pre_dh = _prefix(cell_name, rng, dtype, size, **variant)
    inputs, _, dh = _with_adjoint(cell_name, rng, dtype, size, **variant)
    params = pre["params"]
    _, state, carry = sweep(rule, cell, params, pre["x"], pre_dh, pre[cell.state_arg])
    return {**inputs, "params": params, cell.state_arg: state, "dh": dh, "carry": carry}


def fptt_inputs(cell_name: str, rng, dtype, size, **variant) -> dict:
    """<cell>.fptt: forward_inputs and a random dh (T,B,H), with parameters whose state Jacobians FPTT inverts
    accurately — a diagonal Jacobian diag(λ) (the lru) with |λ| on the ring [0.9, 0.99], rebuilt as ν = log(−log r);
    a dense one from refimpl.algorithms.fptt.well_conditioned."""
    inputs, _, dh = _with_adjoint(cell_name, rng, dtype, size, **variant)
    inputs["dh"] = dh
    if CELLS[cell_name].DIAGONAL:
        r = rng.uniform(0.9, 0.99, size["H"])
        inputs["params"] = {**inputs["params"], "nu_log": np.log(-np.log(r)).astype(dtype)}
    else:
        inputs["params"] = {k: v.astype(dtype) for k, v in well_conditioned(cell_name, inputs["params"]).items()}
    return inputs


def fptt_chunk_inputs(cell_name: str, phase: str, base, rng, dtype, size, **variant) -> dict:
    """<cell>.fptt1, <cell>.fptt_warmup, <cell>.fptt_shooting: the cell's FPTT inputs (`base`: fptt_inputs, or the
    cell's own spec of FPTT_OWN_INPUTS) and the state and carry that phase hands on after a random prefix of PREFIX
    steps (phase "direct" or "shooting": that warm-up; "errors": fptt1 started from a random e_{−1}, so the carried v
    is not zero)."""
    inputs = base(rng, dtype, size, **variant)
    cell = _cell(cell_name, inputs["x"], inputs["dh"], **variant)
    pre = base(rng, dtype, {**size, "T": PREFIX}, **variant)
    state0 = inputs[cell.state_arg]
    if phase in WARMUP_PHASES:
        state, carry = WARMUP_PHASES[phase](cell, inputs["params"], pre["x"], pre["dh"], state0)
    else:
        e0 = cell.flatten_state(cell.random_state(rng, size["B"]))
        if cell.complex_state:
            e0 = e0 + 1j * cell.flatten_state(cell.random_state(rng, size["B"]))
        _, state, carry, _ = fptt_errors(cell, inputs["params"], pre["x"], pre["dh"], state0,
                                         {"v": e0.astype(np.result_type(np.float64, cell.state_dtype))})
    return {**inputs, cell.state_arg: state, "carry": carry}


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

FPTT_SWEEPS = {f"{c}.{phase}": globals()[f"{c}_{phase}"] for c in ("rnn", "gru", "lstm", "lru")
               for phase in ("fptt", "fptt1", "fptt_warmup", "fptt_shooting")}

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
#: The cells whose FPTT kernels need their own input spec and grid (make_inputs, sizes of fptt and fptt_warmup): the
#: lstm (c ≥ 1 and T ≤ 7: lstm_fptt_inputs, LSTM_FPTT_SIZES). The others use fptt_inputs and the sweeps' grid.
FPTT_OWN_INPUTS = {"lstm": (lstm_fptt_inputs, LSTM_FPTT_SIZES)}

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
        name, rule = kernel.split(".")
        register_kernel(KernelSpec(
            kernel, f"(params, x (T,B,I), {CELLS[name].STATE_DOC}, dh (T,B,H), carry=None, carry_out=True) -> "
                    f"{{param: grad, 'state', 'carry': {{param: trace}} or None}}", reference,
            partial(sweep_inputs, name, rule), variants=VARIANTS.get(name, ({},)),
            sizes=None if CELLS[name].DIAGONAL else DENSE_SWEEP_SIZES))
    for kernel, reference in FPTT_SWEEPS.items():
        name, phase = kernel.split(".")
        grad_keys = ", ".join(map(repr, CELLS[name].GRAD_STATE_KEYS))
        base, own = FPTT_OWN_INPUTS.get(name, (partial(fptt_inputs, name), None))
        sizes = own if own and phase != "fptt1" else (None if CELLS[name].DIAGONAL else DENSE_SWEEP_SIZES)
        if phase == "fptt":
            make_inputs = base
            signature = f"(params, x (T,B,I), {CELLS[name].STATE_DOC}, dh (T,B,H)) -> {{param: grad, 'x', {grad_keys}}}"
        elif phase == "fptt1":
            make_inputs = partial(fptt_chunk_inputs, name, "errors", base)
            signature = (f"(params, x (T,B,I), {CELLS[name].STATE_DOC}, dh (T,B,H), carry=None {{'v' (B,S)}}) -> "
                         f"{{param: grad, 'x', 'state', 'carry': {{'v'}}}}")
        elif phase == "fptt_warmup":
            make_inputs = partial(fptt_chunk_inputs, name, "direct", base)
            signature = (f"(params, x (T,B,I), {CELLS[name].STATE_DOC}, dh (T,B,H), carry=None {{'Q', 'e'}}) -> "
                         f"{{'state', 'carry': {{'Q' (B,S) or (B,S,S), 'e' (B,S)}}}}")
        else:
            make_inputs = partial(fptt_chunk_inputs, name, "shooting", base)
            signature = (f"(params, x (T,B,I), {CELLS[name].STATE_DOC}, dh (T,B,H), carry=None {{'v', 'P'}}) -> "
                         f"{{'state', 'carry': {{'v' (B,S), 'P' (B,S) or (B,S,S)}}}}")
        register_kernel(KernelSpec(kernel, signature, reference, make_inputs, variants=VARIANTS.get(name, ({},)),
                                   sizes=sizes))
    for kernel, reference in EP_RELAXATIONS.items():
        register_kernel(KernelSpec(kernel, _EP_SIGNATURES[kernel], reference,
                                   partial(ep_inputs, kernel.split(".")[1]), variants=EP_VARIANTS))


_register_table()
