r"""The chunked driver: the RTRL family, FPTT and truncated BPTT over a stream, C steps at a time (DESIGN.md §5).

One implementation for the NumPy reference and every backend. A stream of T steps (an array (T, B, I), or a task's
stream produced chunk by chunk, never whole in memory) is cut into chunks [t0, t1) of at most C steps. Per chunk:

    (1) forward    the stack (refimpl/nn/stack.py) over the chunk with the backend's cell forward kernels, each layer
                   from the state the previous chunk handed on (cell.final_state of its cache)
    (2) head       the memoryless readout at every step of the chunk: pooling none, or the causal running mean
                   (cumulative_mean; its running sum is carried, and it is straight-through: identity backward), or
                   `last` (a loss at the stream's last step only); ŷ_t = p_t W_rᵀ + b_r, the chunk's losses l_t and
                   ū^L_t (C, B, d_L) — zero where a step has no loss
    (3) the walk   down the stack (stack_backward) with the algorithm's cell adjoint in each layer, driven by the
                   layer's instantaneous errors δ^l (C, B, H) of the chunk:
          per-layer RTRL rules (rtrl.LAYER_RULE)   the rule's sweep kernel from the carried traces (rtrl.sweep);
                   x̄_t = (∂h_t/∂x_t)ᴴ δ_t, the immediate error (the step backward at every t at once, no carry)
          fptt     the error phase fptt1 from the carried v (fptt.fptt_errors); its x̄ carries the exact total error;
                   the warm-up phase (fptt_warmup, direct; or fptt_shooting) in the layer that warms up in this pass
          tbptt    the cell's BPTT inside the chunk (its backward kernel): the graph cut at the chunk's start
    (4) accumulate the gradient; with update_every = K, after every K steps the gradient since the last update goes
                   to on_update(grads, t, loss) -> new params (t: the steps done; loss: Σ l_t since the last update),
                   which the rest of the stream uses (the chunks are also cut at every multiple of K, so each chunk
                   runs with one set of parameters)

Memory: O(C) activations plus the carries (the states, the traces or FPTT's carriers, the running sum), independent of
T. C = 1 is the textbook step loop (the reference's default, NumPy); a larger C amortises a kernel call over C steps.
Every result is independent of C up to the order of floating-point sums (chunked == whole-sequence, ≤ 1e-10 in
float64: tests/algorithms/test_chunked.py).

FPTT streams L+1 times (the pass schedule of refimpl/algorithms/fptt.py): in pass p = 1 … L, layer L−p warms up while
the layers above run their error phase from the start values found by earlier passes (their exact errors give the
exact δ of the layer below within each step); the last pass runs every layer's error phase and accumulates. The
inputs are read chunk by chunk again in every pass. Its check (5): ‖v^l_{T−1}‖ / ‖dh^l_{T−1}‖ from the error phase's
last carry. schedule='stored' (a sequence in memory only) runs the stack forward once, whole, and walks down it once:
each error layer warms up and runs its error phase over the exact δ the layers above sent (the same numbers; memory
O(T) as BPTT; docs/derivations/fptt.md §6).

Who runs the sweeps (`Sweeps`): the reference functions themselves on NumPy (with FPTT's carrier option), the
registered kernels `<cell>.<rule>`, `<cell>.fptt1`, `<cell>.fptt_warmup` (`<cell>.fptt_shooting`) on a backend (float64
carriers).

In whose arrays. Given NumPy arrays and a backend's NumPy-in-NumPy-out kernels (registry.cell_kernels), the driver's
own array code runs on the host and each kernel call converts at its boundary. Given a backend's arrays and its raw
kernels (cell_kernels(..., device=True): CellKernels.device), the RTRL-family rules run as a whole on the device: the
states, the carries, the head, the immediate x̄ (the cells' step_input_backward is array-API code) and the gradient sums
are the backend's arrays, the sweeps are the raw kernels, and the loss is a 0-d array of the backend, never read on
the host per chunk (refimpl/training/device.py keeps a finite flag instead). The driver's array code is written against
the array namespace of refimpl/arrays.py (xp = namespace(x)); on NumPy it is the same code as before, bit for bit.
FPTT and tbptt run on the host arrays only (fptt's residual check (5) reads its carries on the host).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from . import fptt, rtrl
from ..arrays import dtype_of, is_numpy, namespace
from ..cells.common import add_into, map_state
from ..checks import positive_int
from ..errors import UnsupportedError
from ..nn.layers import linear_backward, linear_forward
from ..nn.losses import loss_forward
from ..nn.stack import cell_params, ops_of, stack_backward, stack_forward
from ..registry import call, cell_kernels, get_kernel

#: The chunk size on a backend when none is given (bench/online_chunk.py measured the time per step against C; the
#: README states the measurement). On NumPy the default is 1, the textbook step loop.
DEFAULT_CHUNK = 256

#: tbptt's window k when none is given (capped at T).
TBPTT_WINDOW = 16


# ----------------------------------------------------------------------------------------------------------------
# Sources: where a chunk's inputs and targets come from

class ArraySource(NamedTuple):
    """A whole sequence in memory, read chunk by chunk: x (T, B, I), its target y and mask (the model's loss
    conventions, refimpl/nn/losses.py); a pooled model's per-sequence target is handed whole to every chunk. The
    arrays are NumPy's or a backend's (all the same kind: source_of)."""
    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray | None
    per_step: bool

    @property
    def length(self) -> int:
        return self.x.shape[0]

    @property
    def batch(self) -> int:
        return self.x.shape[1]

    def chunk(self, t0: int, t1: int):
        """(x (t1−t0, B, I), y of those steps (or the whole per-sequence y), mask of those steps or None)."""
        mask = None if self.mask is None else self.mask[t0:t1, ...]
        return self.x[t0:t1, ...], (self.y[t0:t1, ...] if self.per_step else self.y), mask


def check_stream(model, source) -> None:
    """A stream produced chunk by chunk (no whole array) needs a per-step, memoryless readout."""
    if not isinstance(source, ArraySource) and not model.per_step:
        raise UnsupportedError(f"a stream has no last step to pool over: pooling {model.pooling!r} needs the whole "
                               f"sequence; use pooling 'none' or 'cumulative_mean' (memoryless per-step readouts)")


def check_chunk(chunk, T: int, what: str = "chunk") -> int:
    """A chunk size (or window) C with 1 ≤ C ≤ T."""
    C = positive_int(what, chunk)
    if C > T:
        raise UnsupportedError(f"{what} {C} is larger than the sequence (T = {T}); use a {what} between 1 and {T} "
                               f"(C = T is one whole-sequence sweep)")
    return C


def chunk_bounds(T: int, chunk: int, every: int | None = None):
    """[t0, t1) of every chunk, one after another (nothing of size T is built): cut at every multiple of `chunk` and
    of `every` (the update interval), and at T."""
    t0 = 0
    while t0 < T:
        t1 = min((t0 // chunk + 1) * chunk, T)
        if every:
            t1 = min(t1, (t0 // every + 1) * every)
        yield t0, t1
        t0 = t1


# ----------------------------------------------------------------------------------------------------------------
# Who runs a layer's sweep over a chunk

class Sweeps(NamedTuple):
    """A layer's sweeps over one chunk with its carry: the reference functions on NumPy, the kernels on a backend —
    converting NumPy at each call, or with device=True the raw kernels on the backend's arrays (no conversion)."""
    backend: str = "numpy"
    carrier: str = "float64"
    warmup: str = "direct"
    device: bool = False

    def _kernel(self, op: str, cell, params, x, dh, state0, carry, **extra) -> dict:
        name, args = f"{cell.name}.{op}", {cell.state_arg: state0, **cell.step_options, **extra}
        if self.device:
            return get_kernel(name, self.backend)(params, x, dh=dh, carry=carry, **args)
        return call(name, self.backend, params, x, dh=dh, carry=carry, **args)

    def rule(self, rule: str, cell, params, x, dh, state0, carry, carry_out: bool = True):
        """An RTRL-family rule: (grads {param}, carry). carry_out=False at a stream's last chunk: no carry is built
        (None), the grads are the same."""
        if self.backend == "numpy" and not self.device:
            grads, _, carry = rtrl.sweep(rule, cell, params, x, dh, state0, carry, carry_out=carry_out)
            return grads, carry
        out = self._kernel(rule, cell, params, x, dh, state0, carry, carry_out=carry_out)
        return {k: out[k] for k in params}, out["carry"]

    def warm(self, cell, params, x, dh, state0, carry):
        """FPTT's warm-up phase: its carry ({"Q", "e"} direct, {"v", "P"} shooting)."""
        if self.backend == "numpy":
            return fptt.WARMUP_PHASES[self.warmup](cell, params, x, dh, state0, carry, carrier=self.carrier)[1]
        return self._kernel(WARMUP_KERNELS[self.warmup], cell, params, x, dh, state0, carry)["carry"]

    def errors(self, cell, params, x, dh, state0, carry):
        """FPTT's error phase: (grads {param, "x"}, carry {"v"}, max |e| or None where the kernel does not say)."""
        if self.backend == "numpy":
            grads, _, carry, e_max = fptt.fptt_errors(cell, params, x, dh, state0, carry, carrier=self.carrier)
            return grads, carry, e_max
        out = self._kernel("fptt1", cell, params, x, dh, state0, carry)
        return {**{k: out[k] for k in params}, "x": out["x"]}, out["carry"], None


#: FPTT warm-up → the kernel `<cell>.<op>` that runs it on a backend.
WARMUP_KERNELS = {"direct": "fptt_warmup", "shooting": "fptt_shooting"}


def sweeps_for(kernels, carrier: str = "float64", warmup: str = "direct") -> Sweeps:
    """The Sweeps of a backend's CellKernels (raw ones: device); a backend's FPTT kernels carry float64 only."""
    if kernels.backend != "numpy" and carrier != "float64":
        raise UnsupportedError(f"carrier={carrier!r}: the backend FPTT kernels carry their errors in float64; use "
                               f"backend 'numpy' for other carriers")
    return Sweeps(kernels.backend, carrier, fptt.check_warmup(warmup), bool(getattr(kernels, "device", False)))


# ----------------------------------------------------------------------------------------------------------------
# (1) forward and (2) head over one chunk

def forward_chunk(model, params, kernels, x, states):
    """(1): the stack over a chunk x (C, B, I) from the layers' states → (u^L (C, B, d_L), StackCache, new states)."""
    new_states = list(states)

    def run_cell(l, cell_params, a):
        c = model.cells[l]
        h, cache = kernels.forward(cell_params, a, states[l], **c.step_options)
        new_states[l] = map_state(_copy, c.final_state(cache))      # a copy: the chunk's cache is not kept alive
        return h, cache

    u, cache = stack_forward(model, params, x, run_cell, ops_of(kernels))
    return u, cache, new_states


def _copy(a):
    """A copy of an array that owns its memory (NumPy, CuPy); an MLX array as it is (immutable)."""
    return np.copy(a) if isinstance(a, np.ndarray) else namespace(a).asarray(a, copy=True)


def zero_states(model, batch: int, xp=np):
    """Every layer's initial state (zeros), in the namespace xp (NumPy's by default)."""
    states = [c.zero_state(batch) for c in model.cells]
    if is_numpy(xp):
        return states
    return [map_state(lambda a: xp.zeros(a.shape, dtype=dtype_of(xp, a.dtype)), s) for s in states]


class ChunkHead(NamedTuple):
    """(2) over one chunk."""
    run_sum: np.ndarray | None      # Σ_{τ < t1} u^L_τ for cumulative_mean (else None)
    loss: float                     # Σ of the chunk's l_t (a float on NumPy; a 0-d array of a device, not read)
    readout: dict | None            # the readout's gradient over the chunk; None where no step has a loss
    du: np.ndarray                  # ū^L (C, B, d_L): zero where a step has no loss


def head_chunk(model, params, u, t0: int, T: int, y, loss: str, mask, run_sum) -> ChunkHead:
    """(2) for the steps [t0, t0 + C) of a stream of T steps: y and mask are the chunk's (a pooled model's y whole)."""
    C, xp = u.shape[0], namespace(u)
    if model.pooling == "cumulative_mean":
        sums = xp.cumulative_sum(u, axis=0) if run_sum is None else run_sum + xp.cumulative_sum(u, axis=0)
        run_sum = sums[-1, ...]
        p = sums / xp.reshape(xp.arange(t0 + 1, t0 + C + 1, dtype=u.dtype), (C,) + (1,) * (u.ndim - 1))  # float32
    else:
        p = u
    W, b = params["readout.weight"], params["readout.bias"]
    if model.pooling == "last":                                  # one loss, at the stream's last step
        if t0 + C < T:
            return ChunkHead(run_sum, 0.0, None, xp.zeros_like(u))
        out, head = linear_forward(p[-1, ...], W, b)
        value, dout = loss_forward(loss, out, y, None)
        g = linear_backward(dout, head)
        du = xp.concat([xp.zeros_like(u[:-1, ...]), xp.expand_dims(g["x"], axis=0)], axis=0)   # ū only at the last step
    else:
        out, head = linear_forward(p, W, b)
        value, dout = loss_forward(loss, out, y, mask)
        g = linear_backward(dout, head)
        du = g["x"]                                              # straight-through for cumulative_mean
    value = float(value) if is_numpy(xp) else value                  # a device's loss stays there (no host read)
    return ChunkHead(run_sum, value, {"weight": g["weight"], "bias": g["bias"]}, du)


# ----------------------------------------------------------------------------------------------------------------
# The stream loop, (1)–(4), with a cell adjoint per chunk

def run_stream(model, params, source, loss, kernels, make_adjoint: Callable, *, chunk: int, lowest: int = 0,
               update_every: int | None = None, on_update=None, keep_dx: bool = False):
    """One pass over the stream. make_adjoint(states before the chunk, last) -> the walk's cell_adjoint for that
    chunk (it keeps its own carries; last: whether the chunk ends the stream, after which no carry is needed).
    Returns (Σ loss, the gradient since the last update, x̄ (T, B, I) or None)."""
    T, B = source.length, source.batch
    xp = namespace(*params.values())
    states = zero_states(model, B, xp)
    grads = {k: xp.zeros_like(v) for k, v in params.items()}
    run_sum, total, since, dx_all = None, 0.0, 0.0, None
    for t0, t1 in chunk_bounds(T, chunk, update_every):
        x, y, mask = source.chunk(t0, t1)
        u, cache, new_states = forward_chunk(model, params, kernels, x, states)                     # (1)
        head = head_chunk(model, params, u, t0, T, y, loss, mask, run_sum)                         # (2)
        run_sum, total, since = head.run_sum, total + head.loss, since + head.loss
        step_grads, dx = stack_backward(model, params, head.du, cache, make_adjoint(states, t1 == T),
                                        lowest, ops_of(kernels))                                   # (3)
        if head.readout is not None:                                                               # (4)
            grads["readout.weight"] += head.readout["weight"]
            grads["readout.bias"] += head.readout["bias"]
        add_into(grads, step_grads)
        if keep_dx:
            dx_all = np.empty((T,) + dx.shape[1:], dx.dtype) if dx_all is None else dx_all
            dx_all[t0:t1] = dx
        states = new_states
        if update_every is not None and t1 % update_every == 0 and t1 < T:                         # (4) update
            params = on_update(grads, t1, since)
            grads, since = {k: xp.zeros_like(v) for k, v in params.items()}, 0.0
    return total, grads, dx_all


def _as_steps(cell, dh, cache):
    """A chunk's cache and adjoint dh (C, B, H) as C·B independent steps: (the step adjoint, the step cache)."""
    xp = namespace(dh)
    flat = type(cache)(*(xp.reshape(f, (-1,) + tuple(f.shape[2:])) for f in cache))
    return cell.adjoint_from_h(xp.reshape(dh, (-1,) + tuple(dh.shape[2:]))), flat


def immediate_backward(cell, params, dh, cache) -> tuple[dict, np.ndarray]:
    """The cell's step backward at every t of a chunk at once, without the carry through time: dh (C, B, H) is the
    adjoint of h_t alone. Returns (parameter gradients summed over (t, b), x̄ (C, B, I))."""
    g, dx, _ = cell.module.step_backward(params, *_as_steps(cell, dh, cache), **cell.step_options)
    return g, dx.reshape(dh.shape[:2] + (-1,))


def immediate_input_backward(cell, params, dh, cache) -> np.ndarray:
    """x̄ (C, B, I) of immediate_backward alone (the cell's step_input_backward: no parameter adjoints)."""
    dx = cell.module.step_input_backward(params, *_as_steps(cell, dh, cache), **cell.step_options)
    return namespace(dx).reshape(dx, tuple(dh.shape[:2]) + (-1,))


def held_adjoint(model):
    """No temporal credit (FPTT's layers below its pass budget): the immediate step backward, the recurrent term —
    cell.recurrent_params — given zero."""
    def cell_adjoint(l, params, dh, cache):
        c = model.cells[l]
        g, dx = immediate_backward(c, params, dh, cache)
        return {**{k: (np.zeros_like(v) if k in c.recurrent_params else g[k].astype(v.dtype))
                   for k, v in params.items()}, "x": dx}
    return cell_adjoint


# ----------------------------------------------------------------------------------------------------------------
# The algorithms

def online_grads(kernels, model, params, source, loss, *, rule: str, chunk: int, update_every=None, on_update=None,
                 carrier: str = "float64"):
    """A per-layer RTRL rule in every layer (rtrl.LAYER_RULE; refimpl/algorithms/online.py has the step-by-step
    derivation): (Σ loss, gradient of every parameter; no "x")."""
    sweeps, carries = sweeps_for(kernels, carrier), [None] * model.layers

    def make_adjoint(states, last):
        def cell_adjoint(l, params_l, dh, cache):
            c = model.cells[l]
            dx = immediate_input_backward(c, params_l, dh, cache)                                   # x̄: immediate
            grads, carries[l] = sweeps.rule(rtrl.sweep_rule(rule, c), c, params_l, cache.x, dh, states[l],
                                            carries[l], carry_out=not last)
            return {**grads, "x": dx}
        return cell_adjoint

    total, grads, _ = run_stream(model, params, source, loss, kernels, make_adjoint, chunk=chunk,
                                 update_every=update_every, on_update=on_update)
    return total, grads


#: FPTT's pass schedules: how the L+1 passes of a stack are run (fptt_grads).
SCHEDULES = ("passes", "stored")


def check_schedule(schedule: str) -> str:
    if schedule not in SCHEDULES:
        raise UnsupportedError(f"unknown FPTT schedule {schedule!r}: use 'passes' (L+1 forward passes over the inputs, "
                               f"memory independent of T; the default) or 'stored' (one forward pass whose activations "
                               f"are kept, then each layer's two forward sweeps: the FPTT paper's code; faster, memory "
                               f"O(T) as for bptt)")
    return schedule


def fptt_grads(kernels, model, params, source, loss, *, chunk: int, passes: int | None = None,
               two_passes: bool = True, carrier: str = "float64", warmup: str = "direct", check: bool = True,
               input_grad: bool = False, diagnostics: dict | None = None, schedule: str = "passes"):
    """FPTT (two_passes) or fptt1 with the pass schedule of refimpl/algorithms/fptt.py: (Σ loss, gradients (+ "x")).
    schedule 'passes' streams the inputs L+1 times (memory independent of T); 'stored' runs the stack forward once,
    whole, keeping its activations, and gives each error layer, top first, its warm-up and error phase over the exact
    δ the layers above sent down (the same numbers; the FPTT paper's own code does this).
    diagnostics: a dict to fill with {layer: {"residual": ρ (5), "gain": σ_min of the Jacobian product}}."""
    T = source.length
    cells = model.cells
    sweeps = sweeps_for(kernels, carrier, warmup)
    error_layers = fptt.error_layers(model.layers, passes, two_passes)   # with a warm-up: the top ones; fptt1: all
    run = _fptt_stored if check_schedule(schedule) == "stored" else _fptt_passes
    total, grads, dx, ends = run(sweeps, kernels, model, params, source, loss, chunk=chunk, two_passes=two_passes,
                                 error_layers=error_layers, keep_dx=input_grad, gains=check or diagnostics is not None)
    residuals = {l: fptt.residual_of(cells[l], ends.carries[l], ends.dh_last[l]) for l in error_layers} \
        if two_passes else {}
    if diagnostics is not None:
        diagnostics.update({l: {"residual": residuals[l], "gain": ends.gains[l]} for l in residuals})
    if two_passes and check:
        for l in error_layers:                                                                       # (5)
            ct = fptt.carrier_dtype(cells[l], carrier)
            fptt.check_residual(cells[l], cell_params(model, l, params), T, ct, residuals[l], f"layer {l}",
                                e_max=ends.e_max[l] if sweeps.backend == "numpy" else None, gain=ends.gains[l],
                                warmup=warmup)
    if input_grad:
        grads["x"] = dx
    return total, grads


class _LayerEnds(NamedTuple):
    """What FPTT's check (5) needs of each error layer after its error phase."""
    carries: dict        # {l: the error phase's last carry {"v"}}
    dh_last: dict        # {l: dh^l_{T−1}}
    e_max: dict          # {l: max |e| over the error phase (NumPy), or inf when the carry is not finite}
    gains: dict          # {l: σ_min of the warm-up's Jacobian product, or None}


def _error_phase(sweeps, cell, l, params_l, x, dh, state0, carry, ends: _LayerEnds):
    """Layer l's error phase over a chunk from `carry`: its grads {params, "x"}; the carry, dh_{last} and max |e| into
    `ends`."""
    grads, ends.carries[l], m = sweeps.errors(cell, params_l, x, dh, state0, carry)
    ends.dh_last[l] = dh[-1]
    ends.e_max[l] = max(ends.e_max.get(l, 0.0), m if m is not None else (0.0 if _finite(ends.carries[l]) else np.inf))
    return grads


def _fptt_passes(sweeps, kernels, model, params, source, loss, *, chunk, two_passes, error_layers, keep_dx, gains):
    """The L+1 passes over a stream: in pass p = 1 … L layer L−p warms up while the layers above run their error phase
    from the start values earlier passes found; the last pass runs every error phase and accumulates."""
    cells = model.cells
    starts = {l: None for l in error_layers}                          # e^l_{−1} as a carry {"v"}; None: e_{−1} = 0
    ends = _LayerEnds({}, {}, {}, {l: None for l in error_layers})
    warm_order = list(reversed(error_layers)) if two_passes else []   # top first
    held = held_adjoint(model)
    for warm in warm_order + [None]:                                  # one warm-up per pass, then the final pass
        in_error = [l for l in error_layers if warm is None or l > warm]
        carries = {l: starts[l] for l in in_error + ([] if warm is None else [warm])}
        ends.e_max.clear()

        def make_adjoint(states, last):
            def cell_adjoint(l, params_l, dh, cache):
                c = cells[l]
                if l in in_error:                                                               # exact errors (1)
                    grads = _error_phase(sweeps, c, l, params_l, cache.x, dh, states[l], carries[l], ends)
                    carries[l] = ends.carries[l]
                    return grads
                if l == warm:                                                                   # (2), (3)
                    carries[l] = sweeps.warm(c, params_l, cache.x, dh, states[l], carries[l])
                    return {**{k: np.zeros_like(v) for k, v in params_l.items()}, "x": np.zeros_like(cache.x)}
                return held(l, params_l, dh, cache)                                             # spatial
            return cell_adjoint

        final = warm is None
        with np.errstate(all="ignore"):              # a blow-up is detected by (5) and reported, not warned about
            total, grads, dx = run_stream(model, params, source, loss, kernels, make_adjoint, chunk=chunk,
                                          lowest=0 if final else warm, keep_dx=final and keep_dx)
        if not final:
            starts[warm] = {"v": fptt.start_error(cells[warm], carries[warm])}                     # (3)
            if gains:
                ends.gains[warm] = fptt.product_gain(cells[warm], carries[warm])
    return total, grads, dx, ends


def _fptt_stored(sweeps, kernels, model, params, source, loss, *, chunk, two_passes, error_layers, keep_dx, gains):
    """One forward pass over the whole sequence (its activations kept), then down the stack: each error layer's warm-up
    over the exact δ^l the layers above sent, (3), its error phase, and its exact x̄ to the layer below."""
    if not isinstance(source, ArraySource):
        raise UnsupportedError("FPTT's schedule 'stored' keeps the whole sequence's activations, and a stream is never "
                               "whole: use schedule 'passes' for a stream")
    cells = model.cells
    ends = _LayerEnds({}, {}, {}, {l: None for l in error_layers})
    held = held_adjoint(model)

    def make_adjoint(states, last):
        def cell_adjoint(l, params_l, dh, cache):
            if l not in error_layers:                                                           # spatial
                return held(l, params_l, dh, cache)
            c, start = cells[l], None                                                           # None: e_{−1} = 0
            if two_passes:
                end_of_warmup = sweeps.warm(c, params_l, cache.x, dh, states[l], None)          # (2)
                start = {"v": fptt.start_error(c, end_of_warmup)}                               # (3)
                if gains:
                    ends.gains[l] = fptt.product_gain(c, end_of_warmup)
            return _error_phase(sweeps, c, l, params_l, cache.x, dh, states[l], start, ends)    # (1)
        return cell_adjoint

    with np.errstate(all="ignore"):                  # a blow-up is detected by (5) and reported, not warned about
        total, grads, dx = run_stream(model, params, source, loss, kernels, make_adjoint, chunk=source.length,
                                      keep_dx=keep_dx)
    return total, grads, dx, ends


def tbptt_grads(kernels, model, params, source, loss, *, window: int, update_every=None, on_update=None):
    """k-step truncated BPTT: BPTT inside each window of `window` steps, the state carried across windows and the
    graph cut at each window's start (no adjoint flows into the previous window): (Σ loss, gradients; no "x")."""
    def make_adjoint(states, last):
        def cell_adjoint(l, params_l, dh, cache):
            grads = kernels.backward(params_l, dh, cache, **model.cells[l].step_options)
            return {**{k: grads[k] for k in params_l}, "x": grads["x"]}
        return cell_adjoint

    total, grads, _ = run_stream(model, params, source, loss, kernels, make_adjoint, chunk=window,
                                 update_every=update_every, on_update=on_update)
    return total, grads


def _finite(carry: dict) -> bool:
    return all(bool(np.all(np.isfinite(v))) for v in carry.values())


# ----------------------------------------------------------------------------------------------------------------
# The model-level entry points: a sequence in memory or a stream, on the reference or a backend

def check_supported(model, mask) -> None:
    """Refuse the poolings whose loss is not a sum over steps (the online algorithms see one chunk at a time)."""
    if model.pooling == "mean":
        raise UnsupportedError("pooling 'mean' is not memoryless (its gradient at step t depends on the whole "
                               "sequence), so the online algorithms cannot use it; use pooling 'cumulative_mean' "
                               "(causal, straight-through) or 'none', or algorithm 'bptt'")
    if model.pooling == "last" and mask is not None:
        raise UnsupportedError("pooling 'last' with a mask (per-sequence last steps) is not supported by the online "
                               "algorithms; pass mask=None, or use pooling 'none' with the mask, or 'bptt'")


def source_of(model, x, y, mask):
    """An ArraySource for a sequence in memory (NumPy's arrays or a backend's); a stream (anything with length, batch
    and chunk(t0, t1)) as it is."""
    if isinstance(x, np.ndarray) or not hasattr(x, "chunk"):
        check_supported(model, mask)
        mask = np.asarray(mask) if isinstance(x, np.ndarray) and mask is not None else mask
        return ArraySource(x, y, mask, model.per_step)
    check_stream(model, x)
    return x


def resolve(model, kernels, source, chunk):
    """The kernels (NumPy's cell modules when None) and the chunk size: given, or 1 on NumPy (the step loop) and
    min(DEFAULT_CHUNK, T) on a backend; refused unless 1 ≤ C ≤ T."""
    kernels = cell_kernels(model.cell, "numpy") if kernels is None else kernels
    if chunk is None:
        chunk = 1 if kernels.backend == "numpy" else min(DEFAULT_CHUNK, source.length)
    return kernels, check_chunk(chunk, source.length)


def per_layer_grads(model, params, x, y=None, loss="mse", mask=None, *, rule: str, kernels=None, chunk=None,
                    update_every=None, on_update=None):
    """A per-layer RTRL rule (refimpl/algorithms/online.py) over a sequence or a stream: (Σ loss, grads; no "x")."""
    source = source_of(model, x, y, mask)
    kernels, chunk = resolve(model, kernels, source, chunk)
    for c in model.cells:
        rtrl.check_rule(rule, c)
    if update_every is not None:
        positive_int("update_every", update_every)
    return online_grads(kernels, model, params, source, loss, rule=rule, chunk=chunk, update_every=update_every,
                        on_update=on_update)


def fptt_model_grads(model, params, x, y=None, loss="mse", mask=None, *, kernels=None, chunk=None,
                     passes: int | None = None, two_passes: bool = True, carrier: str = "float64",
                     warmup: str = "direct", check: bool = True, input_grad: bool = True,
                     diagnostics: dict | None = None, schedule: str = "passes"):
    """Loss and gradients of a model by FPTT (refimpl/algorithms/fptt.py: the pass schedule, (1)–(5)) over a sequence
    or a stream. passes: the pass budget (default L+1, full FPTT); two_passes=False gives `fptt1`; warmup: 'direct'
    (default) or 'shooting' (the paper's); schedule: 'passes' (default; L+1 passes over the inputs, memory independent
    of T) or 'stored' (one forward pass kept whole, then each layer's two sweeps: fptt_grads). check=False returns the
    gradients even when (5) says they are lost (for the stability study, which measures how bad they are;
    `diagnostics`, a dict, receives each layer's residual and σ_min of its Jacobian product).
    input_grad=False leaves out "x" — the one output that grows with T; without it the memory is flat in T (a stream
    never returns it). Returns (loss_value, {dotted name: grad (, "x")})."""
    source = source_of(model, x, y, mask)
    if check_schedule(schedule) == "stored" and chunk is not None:
        raise UnsupportedError(f"chunk={chunk} with schedule 'stored': that schedule sweeps the whole sequence at once "
                               f"(no chunks); drop the chunk option, or use schedule 'passes'")
    kernels, chunk = resolve(model, kernels, source, chunk)
    for c in model.cells:
        fptt.carrier_dtype(c, carrier)                          # refuse an unknown carrier before any work
    fptt.check_warmup(warmup)
    total, grads = fptt_grads(kernels, model, params, source, loss, chunk=chunk, passes=passes,
                              two_passes=two_passes, carrier=carrier, warmup=warmup, check=check,
                              input_grad=input_grad and isinstance(source, ArraySource), diagnostics=diagnostics,
                              schedule=schedule)
    for l in range(model.layers):
        if l not in fptt.error_layers(model.layers, passes, two_passes):     # spatial layers: no temporal credit
            for name in model.cells[l].recurrent_params:
                grads[f"layers.{l}.cell.{name}"] = np.zeros_like(params[f"layers.{l}.cell.{name}"])
    return total, grads


def tbptt_model_grads(model, params, x, y=None, loss="mse", mask=None, *, kernels=None, window=None,
                      update_every=None, on_update=None):
    """k-step truncated BPTT (tbptt_grads) over a sequence or a stream: window k = min(16, T) by default; an update
    interval must be a multiple of k (each window runs with one set of parameters). (Σ loss, grads; no "x")."""
    source = source_of(model, x, y, mask)
    kernels = cell_kernels(model.cell, "numpy") if kernels is None else kernels
    window = check_chunk(min(TBPTT_WINDOW, source.length) if window is None else window, source.length, "window")
    if update_every is not None and positive_int("update_every", update_every) % window:
        raise UnsupportedError(f"tbptt updates once per window of {window} steps; update_every={update_every} is not "
                               f"a multiple of it: use update_every={window} (or a multiple), or another window")
    return tbptt_grads(kernels, model, params, source, loss, window=window, update_every=update_every,
                       on_update=on_update)
