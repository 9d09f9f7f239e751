"""Learning algorithms by name — the one place an algorithm name is looked up (DESIGN.md §5).

Every name of DESIGN.md §5 is listed here, with whether it is exact and whether it is implemented yet, plus the
baseline `readout` (train the linear head only), which gives the "no learning in the recurrence" floor. The API
(`cell_grads`, `model_grads`), the CLI and (later) training and comparison all resolve names through `get_algorithm`,
so a new algorithm plugs in by filling in its entry.

Each implemented algorithm provides
    cell_grads(kernels, cell, params, x, dh, state0) -> grads       one cell, instantaneous adjoints dh (T,B,H)
    model_grads(kernels, model, params, x, y, loss, mask) -> (loss_value, grads)
where `kernels` is the cell's `registry.CellKernels` on the chosen backend. An algorithm that does not train a
parameter leaves it out of `grads` (the optimizer then leaves it alone: no update, no weight decay).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import UnknownNameError, UnsupportedError


@dataclass(frozen=True)
class Algorithm:
    name: str
    exact: str                    # "yes" | "no" | "top layer" | "as β→0"
    description: str
    cell_grads: Callable | None = None
    model_grads: Callable | None = None
    planned_in: str = ""          # for names not implemented yet
    input_grads: bool = True      # False for forward-mode (online) rules: they give no gradient for the input x
    options: tuple = ()           # names of the keyword options the algorithm takes (e.g. fptt: passes, carrier)
    tolerance: str = "exact_vs_bptt"   # its row of numerics.TOLERANCES when exact
    exact_when: Callable | None = None  # (model, options) -> bool, for algorithms exact only with some options

    def exact_for(self, model, options: dict) -> bool:
        """Whether the gradients must equal BPTT's for this model with these options."""
        return self.is_exact and (self.exact_when is None or self.exact_when(model, options))

    def check_options(self, options: dict) -> dict:
        for k in options:
            if k not in self.options:
                raise UnknownNameError(f"option of algorithm {self.name!r}", k, self.options or ["(none)"],
                                       f"{self.name} takes {'only ' + ', '.join(self.options) if self.options else 'no options'}")
        return options

    @property
    def implemented(self) -> bool:
        return self.cell_grads is not None or self.model_grads is not None

    @property
    def is_exact(self) -> bool:
        """Whether its gradients must equal BPTT's (to DESIGN.md §7 tolerance) for every model."""
        return self.exact == "yes"


def _bptt_cell_grads(kernels, cell, params, x, dh, state0):
    _, cache = kernels.forward(params, x, state0, **cell.step_options)
    return kernels.backward(params, dh, cache, **cell.step_options)


def _bptt_model_grads(kernels, model, params, x, y, loss, mask):
    from ..nn import model as model_mod
    return model_mod.bptt(model, params, x, y, loss=loss, mask=mask, kernels=kernels)


def _readout_model_grads(kernels, model, params, x, y, loss, mask):
    """Train the linear head only (the recurrent stack is a fixed random feature map, a 'reservoir'): the loss and
    its gradient for readout.weight / readout.bias; no backward pass through the stack. The other parameters are
    absent from the result (they are not trained: no update, no weight decay)."""
    from ..nn.layers import linear_backward
    from ..nn.losses import loss_forward
    from ..nn.model import forward
    out, cache = forward(model, params, x, kernels, mask=mask)
    value, dout = loss_forward(loss, out, y, mask if model.per_step else None)
    g = linear_backward(dout, cache.readout)
    return float(value), {"readout.weight": g["weight"], "readout.bias": g["bias"]}


def _on_backend(kernels) -> bool:
    """Whether the cell kernels run on a backend other than the NumPy reference: then the RTRL-family and FPTT
    sweeps run as whole-sequence kernel calls (refimpl/algorithms/on_backend.py), not the reference's online step loop."""
    return kernels.backend != "numpy"


def _online(name: str):
    """The RTRL-family entry points for `name` (refimpl/algorithms/online.py for models, refimpl/algorithms/rtrl.py for one cell)."""
    def model_grads(kernels, model, params, x, y, loss, mask):
        if _on_backend(kernels):
            from . import on_backend as backend_algorithms
            return backend_algorithms.model_grads(name, kernels, model, params, x, y, loss, mask)
        from .online import online_grads
        return online_grads(model, params, x, y, loss, mask, algorithm=name)

    def cell_grads(kernels, cell, params, x, dh, state0):
        if _on_backend(kernels):
            from . import on_backend as backend_algorithms
            return backend_algorithms.cell_grads(name, kernels, cell, params, x, dh, state0)
        from .online import PER_LAYER_RULE
        from .rtrl import cell_grads_online
        return cell_grads_online(PER_LAYER_RULE.get(name, name), cell, params, x, dh, state0)
    return dict(cell_grads=cell_grads, model_grads=model_grads, input_grads=False)


def _fptt(two_passes: bool):
    """FPTT entry points (refimpl/algorithms/fptt.py); options: passes (model only), carrier ('float64' | 'state')."""
    name = "fptt" if two_passes else "fptt1"

    def model_grads(kernels, model, params, x, y, loss, mask, **options):
        if _on_backend(kernels):
            from . import on_backend as backend_algorithms
            return backend_algorithms.model_grads(name, kernels, model, params, x, y, loss, mask, **options)
        from .fptt import fptt_model_grads
        return fptt_model_grads(model, params, x, y, loss, mask, two_passes=two_passes, **options)

    def cell_grads(kernels, cell, params, x, dh, state0, **options):
        options.pop("passes", None)                     # one cell is one layer: the budget does not apply
        options.pop("input_grad", None)
        if _on_backend(kernels):
            from . import on_backend as backend_algorithms
            return backend_algorithms.cell_grads(name, kernels, cell, params, x, dh, state0, **options)
        from .fptt import fptt_cell_grads
        return fptt_cell_grads(cell, params, x, dh, state0, two_passes=two_passes, **options)
    return dict(cell_grads=cell_grads, model_grads=model_grads, options=("passes", "carrier", "input_grad"),
                tolerance="fptt_vs_bptt",
                exact_when=lambda model, options: int(options.get("passes", model.layers + 1)) > model.layers)


def _bpfree(name: str):
    """Recurrent DFA / DRTP (refimpl/algorithms/projected.py); options temporal (online | snap1 | truncated),
    feedback_init (orthogonal | lecun), feedback_seed."""
    def model_grads(kernels, model, params, x, y, loss, mask, **options):
        from .projected import dfa_model_grads, drtp_model_grads
        return (dfa_model_grads if name == "dfa" else drtp_model_grads)(kernels, model, params, x, y, loss, mask,
                                                                         **options)
    return dict(model_grads=model_grads, input_grads=False, options=("temporal", "feedback_init", "feedback_seed"))


ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in [
    Algorithm("bptt", "yes", "backpropagation through time, hand-derived", _bptt_cell_grads, _bptt_model_grads),
    Algorithm("rtrl", "yes", "real-time recurrent learning; a stack is one recurrent system (whole-state "
              "sensitivity)", **_online("rtrl")),
    Algorithm("online", "top layer", "per-layer exact RTRL + spatial backprop of instantaneous errors (Zucchet et al. "
              "2023 online_full); == rtrl for one layer", **_online("online")),
    Algorithm("snap1", "no", "SnAp-1: sensitivities kept on the immediate Jacobian's sparsity pattern (== rtrl for "
              "lru)", **_online("snap1")),
    Algorithm("truncated", "no", "1-step truncation: h_{t-1} held constant", **_online("truncated")),
    Algorithm("spatial", "no", "no temporal credit: the recurrent term held constant", **_online("spatial")),
    Algorithm("cec", "no", "lstm only: internal RTRL, truncated where h_{t-1} enters the gates, exact through the "
              "cell state (the constant error carousel)", **_online("cec")),
    Algorithm("fptt", "yes", "forward propagation of errors through time (warm-up pass, then error pass; L+1 passes "
              "for L layers)", **_fptt(True)),
    Algorithm("fptt1", "no", "one forward pass with δ0 = 0 (the FPTT paper's `forward` baseline)", **_fptt(False)),
    Algorithm("dfa", "no", "direct feedback alignment: the output error projected onto each layer's output by a "
              "fixed random matrix at every step, carried through time by the layer's temporal rule "
              "(-a temporal=online|snap1|truncated)", **_bpfree("dfa")),
    Algorithm("drtp", "no", "direct random target projection: the target (ce/bce) projected like dfa's error; no "
              "output error needed", **_bpfree("drtp")),
    Algorithm("readout", "no", "baseline: only the linear head learns; the recurrent stack stays at its random "
              "initialisation (the online-LRU code's 'online_reservoir')", model_grads=_readout_model_grads),
    Algorithm("ep", "as β→0", "equilibrium propagation (static input, fixed-point networks)",
              planned_in="refimpl.ep / refimpl.ep.cells: it trains networks with a static input that settle to a "
                         "fixed point (train --task digits --algorithm ep), not sequence models"),
]}


def get_algorithm(name: str, level: str = "model") -> Algorithm:
    """The algorithm called `name`, usable at `level` ('cell' or 'model'); clear errors otherwise."""
    if name not in ALGORITHMS:
        raise UnknownNameError("algorithm", name, ALGORITHMS)
    algo = ALGORITHMS[name]
    if not algo.implemented:
        done = sorted(n for n, a in ALGORITHMS.items() if a.implemented)
        if name == "ep":
            raise UnsupportedError(f"algorithm 'ep' is not available here: it lives in {algo.planned_in}")
        raise UnsupportedError(f"algorithm {name!r} is not implemented yet (planned in {algo.planned_in}); "
                               f"implemented today: {', '.join(done)}")
    if getattr(algo, f"{level}_grads") is None:
        raise UnsupportedError(f"algorithm {name!r} has no {level}-level gradient; "
                               f"use it through {'model_grads' if level == 'cell' else 'cell_grads'}")
    return algo
