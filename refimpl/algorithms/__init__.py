"""Learning algorithms by name — the table of DESIGN.md §5, and the one place an algorithm name is looked up.

Every name of DESIGN.md §5 is listed here with whether it is exact, plus the baseline `readout` (train the linear head
only), which gives the "no learning in the recurrence" floor. The API (`cell_grads`, `model_grads`), the CLI, training
and comparison all resolve names through `get_algorithm`, so a new algorithm plugs in by adding its entry.

Each entry provides
    cell_grads(kernels, cell, params, x, dh, state0, **options) -> grads     one cell, instantaneous adjoints dh (T,B,H)
    model_grads(kernels, model, params, x, y, loss, mask, **options) -> (loss_value, grads)
where `kernels` is the cell's `registry.CellKernels` on the chosen backend. An algorithm that does not train a
parameter leaves it out of `grads` (the optimizer then leaves it alone: no update, no weight decay).

Where the members run:
    bptt                      refimpl/nn/model.py (the cell's BPTT through the backend's kernels)
    rtrl online snap1         a model: refimpl/algorithms/chunked.py — truly online on every backend, chunk by chunk
    truncated spatial cec       (-a chunk=C; 1 on NumPy, the step loop), updates inside a sequence (update_every);
    fptt fptt1                  whole-stack rtrl steps in refimpl/algorithms/online.py (NumPy). One cell:
    tbptt                       refimpl/algorithms/rtrl.py, fptt.py on NumPy, one kernel call on a backend
                                (refimpl/algorithms/on_backend.py, the same signatures): chosen once, in `_on`
    dfa drtp                  refimpl/algorithms/projected.py (NumPy only; their temporal rule: the online names above)
    readout                   here
    ep                        not a sequence-model algorithm: refimpl.ep (static input, fixed-point networks)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from . import chunked, fptt, on_backend, online, projected, rtrl
from ..errors import UnknownNameError, UnsupportedError
from ..nn import model as nn_model
from ..nn.layers import linear_backward
from ..nn.losses import loss_forward


@dataclass(frozen=True)
class Algorithm:
    name: str
    exact: str                    # "yes" | "no" | "top layer" | "as β→0"
    description: str
    cell_grads: Callable | None = None
    model_grads: Callable | None = None
    lives_in: str = ""            # for a name with no sequence-model gradient here: where it lives instead
    input_grads: bool = True      # False for forward-mode (online) rules: they give no gradient for the input x
    options: tuple = ()           # names of the keyword options the algorithm takes (e.g. fptt: passes, carrier)
    cell_options: tuple | None = None   # the options its cell_grads takes, where fewer (None: all of `options`)
    streams: bool = False         # runs chunk by chunk over a stream (option chunk), memory flat in T
    updates_inside: bool = False  # can update the weights inside a sequence (update_every / on_update)
    tolerance: str = "exact_vs_bptt"   # its row of numerics.TOLERANCES when exact
    exact_when: Callable | None = None  # (model, options) -> bool, for algorithms exact only with some options

    def exact_for(self, model, options: dict) -> bool:
        """Whether the gradients must equal BPTT's for this model with these options."""
        return self.is_exact and (self.exact_when is None or self.exact_when(model, options))

    def check_options(self, options: dict, level: str = "model") -> dict:
        """`options` unchanged if the algorithm takes every one of them at `level` ('cell' or 'model')."""
        allowed = self.options if level == "model" or self.cell_options is None else self.cell_options
        for k in options:
            if k not in allowed:
                takes = f"only {', '.join(allowed)}" if allowed else "no options"
                hint = (f"{self.name} takes {takes} on one cell; {k} is an option of a model" if k in self.options
                        else f"{self.name} takes {takes}")
                raise UnknownNameError(f"option of algorithm {self.name!r}", k, allowed or ["(none)"], hint)
        return options

    @property
    def implemented(self) -> bool:
        return self.cell_grads is not None or self.model_grads is not None

    @property
    def is_exact(self) -> bool:
        """Whether its gradients must equal BPTT's (to DESIGN.md §7 tolerance) for every model."""
        return self.exact == "yes"


def _on(kernels, reference: Callable, composed: Callable) -> Callable:
    """The function to run: the NumPy reference, or on another backend its whole-sequence composition
    (on_backend.py, the same signature after the kernels)."""
    return reference if kernels.backend == "numpy" else partial(composed, kernels)


def _bptt_cell_grads(kernels, cell, params, x, dh, state0):
    _, cache = kernels.forward(params, x, state0, **cell.step_options)
    return kernels.backward(params, dh, cache, **cell.step_options)


def _bptt_model_grads(kernels, model, params, x, y, loss, mask):
    return nn_model.bptt(model, params, x, y, loss=loss, mask=mask, kernels=kernels)


def _readout_model_grads(kernels, model, params, x, y, loss, mask):
    """Train the linear head only (the recurrent stack is a fixed random feature map, a 'reservoir'): the loss and
    its gradient for readout.weight / readout.bias; no backward pass through the stack. The other parameters are
    absent from the result (they are not trained: no update, no weight decay)."""
    out, cache = nn_model.forward(model, params, x, kernels, mask=mask)
    value, dout = loss_forward(loss, out, y, mask if model.per_step else None)
    g = linear_backward(dout, cache.readout)
    return float(value), {"readout.weight": g["weight"], "readout.bias": g["bias"]}


def _rtrl_family(name: str) -> dict:
    """The RTRL family (online.py, chunked.py, rtrl.py): forward-mode, so no input gradient."""
    def cell_grads(kernels, cell, params, x, dh, state0):
        run = _on(kernels, rtrl.cell_grads_online, on_backend.cell_grads_online)
        return run(rtrl.LAYER_RULE[name], cell, params, x, dh, state0)

    def model_grads(kernels, model, params, x, y, loss, mask, chunk=None, update_every=None, on_update=None):
        return online.online_grads(model, params, x, y, loss, mask, algorithm=name, kernels=kernels, chunk=chunk,
                                   update_every=update_every, on_update=on_update)
    return dict(cell_grads=cell_grads, model_grads=model_grads, input_grads=False, options=("chunk",),
                cell_options=(), streams=True, updates_inside=True)


def _fptt(two_passes: bool) -> dict:
    """FPTT (fptt.py, chunked.py); options carrier ('float64' | 'state'), warmup ('direct' | 'shooting'; fptt only:
    fptt1 has no warm-up), and for a model chunk, passes (the pass budget), input_grad and schedule ('passes' |
    'stored': chunked.fptt_grads). One cell is one layer with
    its input given: it has no pass budget, and always returns x̄."""
    warm = ("warmup",) if two_passes else ()

    def cell_grads(kernels, cell, params, x, dh, state0, carrier="float64", **options):
        run = _on(kernels, fptt.fptt_cell_grads, on_backend.fptt_cell_grads)
        return run(cell, params, x, dh, state0, two_passes=two_passes, carrier=carrier, **options)

    def model_grads(kernels, model, params, x, y, loss, mask, **options):
        return chunked.fptt_model_grads(model, params, x, y, loss, mask, kernels=kernels, two_passes=two_passes,
                                        **options)
    return dict(cell_grads=cell_grads, model_grads=model_grads,
                options=("chunk", "passes", "carrier", *warm, "input_grad", "schedule"),
                cell_options=("carrier", *warm), tolerance="fptt_vs_bptt", streams=True,
                exact_when=lambda model, options: int(options.get("passes", model.layers + 1)) > model.layers)


def _tbptt_model_grads(kernels, model, params, x, y, loss, mask, window=None, update_every=None, on_update=None):
    return chunked.tbptt_model_grads(model, params, x, y, loss, mask, kernels=kernels, window=window,
                                     update_every=update_every, on_update=on_update)


ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in [
    Algorithm("bptt", "yes", "backpropagation through time, hand-derived", _bptt_cell_grads, _bptt_model_grads),
    Algorithm("rtrl", "yes", "real-time recurrent learning; a stack is one recurrent system (whole-state "
              "sensitivity)", **_rtrl_family("rtrl")),
    Algorithm("online", "top layer", "per-layer exact RTRL + spatial backprop of instantaneous errors (Zucchet et al. "
              "2023 online_full); == rtrl for one layer", **_rtrl_family("online")),
    Algorithm("snap1", "no", "SnAp-1: sensitivities kept on the immediate Jacobian's sparsity pattern (== rtrl for "
              "lru)", **_rtrl_family("snap1")),
    Algorithm("truncated", "no", "1-step truncation: h_{t-1} held constant", **_rtrl_family("truncated")),
    Algorithm("spatial", "no", "no temporal credit: the recurrent term held constant", **_rtrl_family("spatial")),
    Algorithm("cec", "no", "lstm only: internal RTRL, truncated where h_{t-1} enters the gates, exact through the "
              "cell state (the constant error carousel)", **_rtrl_family("cec")),
    Algorithm("fptt", "yes", "forward propagation of errors through time (warm-up pass, then error pass; L+1 passes "
              "for L layers)", **_fptt(True)),
    Algorithm("fptt1", "no", "one forward pass with δ0 = 0 (the FPTT paper's `forward` baseline)", **_fptt(False)),
    Algorithm("tbptt", "no", "k-step truncated BPTT: BPTT inside each window of k steps (-a window=k, default "
              "min(16, T)), the state carried across windows, the graph cut at each window's start; exact for its "
              "own definition, == bptt for window = T", model_grads=_tbptt_model_grads, input_grads=False,
              options=("window",), streams=True, updates_inside=True),
    Algorithm("dfa", "no", "direct feedback alignment: the output error projected onto each layer's output by a "
              "fixed random matrix at every step, carried through time by the layer's temporal rule "
              "(-a temporal=online|snap1|truncated)", model_grads=projected.dfa_model_grads, input_grads=False,
              options=projected.OPTIONS),
    Algorithm("drtp", "no", "direct random target projection: the target (ce/bce) projected like dfa's error; no "
              "output error needed", model_grads=projected.drtp_model_grads, input_grads=False,
              options=projected.OPTIONS),
    Algorithm("readout", "no", "baseline: only the linear head learns; the recurrent stack stays at its random "
              "initialisation (the online-LRU code's 'online_reservoir')", model_grads=_readout_model_grads),
    Algorithm("ep", "as β→0", "equilibrium propagation (static input, fixed-point networks)",
              lives_in="refimpl.ep / refimpl.ep.cells: it trains networks with a static input that settle to a "
                       "fixed point (train --task digits --algorithm ep), not sequence models"),
]}


def get_algorithm(name: str, level: str = "model") -> Algorithm:
    """The algorithm called `name`, usable at `level` ('cell' or 'model'); clear errors otherwise."""
    if name not in ALGORITHMS:
        raise UnknownNameError("algorithm", name, ALGORITHMS)
    algo = ALGORITHMS[name]
    if not algo.implemented:
        raise UnsupportedError(f"algorithm {name!r} has no cell or model gradient here: it lives in {algo.lives_in}")
    if getattr(algo, f"{level}_grads") is None:
        raise UnsupportedError(f"algorithm {name!r} has no {level}-level gradient; "
                               f"use it through {'model_grads' if level == 'cell' else 'cell_grads'}")
    return algo
