"""What the training loop trains: a task with a network, as a gradient on a batch and an evaluation of a split.

    prepare(config) -> Prepared(problem, opt, steps_per_epoch, total)
    Problem(task, params, grads, evaluate)
        grads(params, idx, opt_state) -> (loss, grads, opt_state, params)   on the training examples idx
        evaluate(params, split) -> (mean loss per example, accuracy or None)

Two kinds of problem, by the task's kind (tasks/base.py):
    sequence   a recurrent model (refimpl.nn.model) trained by any algorithm of refimpl.algorithms
               (refimpl.model_grads on the config's backend), or truly online (--update-every: weight updates inside
               the sequence, so the optimizer state and parameters come back from `grads`) on any backend, by the
               algorithms that can (Algorithm.updates_inside: the RTRL family, tbptt)
    stream     (tasks/stream.py) no batches: one pass over a stream, trained by refimpl/training/stream.py

The run options that reach the algorithm (`check_online`, before any work):
    --chunk C          options["chunk"] of a streaming algorithm (Algorithm.streams; tbptt's chunk is its window,
                       -a window=k); 1 ≤ C ≤ T. Results do not depend on C (refimpl/algorithms/chunked.py).
    --update-every K   1 ≤ K ≤ T; an algorithm that updates inside a sequence only (bptt: use tbptt -a window=k)
    --micro-batch M    the batch split into M micro-batches (np.array_split: sizes differ by at most one), each one's
                       gradient weighted by its share b_m / B: since L = (1/B) Σ_b L_b, Σ_m (b_m/B) L_m is exactly the
                       full batch's loss and gradient. 1 ≤ M ≤ B; not with --update-every (the micro-batches would
                       have to run in lockstep, each keeping its traces: no memory saved; use a smaller batch).
    --dropout p        training_model: the step's model carries its dropout masks (refimpl/nn/model.py), drawn from
                       np.random.default_rng([seed, DROPOUT_STREAM, step]) for the whole batch (micro-batches take
                       their examples' rows), so every algorithm sees the same ones; evaluation uses the model without
                       masks. Refused where the whole step runs on mlx/cupy (on_device), on streams, static tasks.
    static     an equilibrium-propagation network (refimpl/ep/networks.py, or the convolutional one of
               refimpl/ep/conv.py) trained by `ep` or by `bptt` through the same dynamics

Memory (`estimate_bytes`, checked before anything of the model is allocated; checks.check_memory refuses a run that
would not fit, with the estimate and the option to turn). A sequence run, with P parameters, L layers of S real
state units (a complex unit counts twice), T steps and b = B / M examples per gradient (M micro-batches):
    parameters   4 P values: θ, the gradient and the optimizer's two moments
    states       T b (4 S + widths) values per layer: the states, gates and layer outputs that BPTT keeps
    traces       the RTRL family: rtrl.trace_nbytes per layer (O(S·P) for dense rtrl, O(P) for the others)
    Jacobians    whole-stack rtrl: the sensitivity, S_total × P values per sequence
A static run (an EP network of widths n_0 … n_L): parameters 4 Σ n_l n_(l+1), states T b Σ n_l (bptt keeps T).

How a sequence task's targets become a loss (tasks/base.py, "target kinds"), with the mask used as *weights* so that
the loss is a mean over the steps that count (DESIGN.md §4: L = (1/B) Σ_b Σ_t m_t l_t):
    label     per-step model: the label at every step, m_t = 1/T; scored on the last step's output.
              pooled model (last / mean): one label per sequence.
    per_step  per-step model only: m_t = task mask / (number of recall steps).
    final     per-step model: the target at t = T−1 only (m = 1 there); pooled model: one target per sequence.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

from tasks import make_task

from .. import optim
from ..algorithms import ALGORITHMS, get_algorithm
from ..algorithms.chunked import TBPTT_WINDOW, check_chunk
from ..algorithms import rtrl
from ..algorithms.online import whole_stack_differs
from ..cells import resolve_cell
from ..checks import check_memory, positive_int
from ..api import make_model, model_grads
from ..ep import conv as ep_conv, networks as ep_networks
from ..errors import NumericalError, RefimplError, UnknownNameError, UnsupportedError
from ..nn.losses import loss_forward
from ..nn.model import Model, check_inputs, dropout_masks, forward, with_dropout
from ..registry import cell_kernels, ep_kernels, load_backend
from .config import EP_SETTINGS, TrainConfig, check_freeze
from .device import DEVICE_ALGORITHMS, DeviceStep

#: The -n/--net-option keys of the layered EP networks (refimpl/ep/networks.py make_ep_net) and of the convolutional
#: one (refimpl/ep/conv.py make_conv_net; channels, kernel and pool as "a,b" pairs on the command line).
EP_NET_OPTIONS = ("activation", "dt", "clamp")
CONV_NET_OPTIONS = ("activation", "channels", "kernel", "pool")
#: The algorithms that train a static task's EP network.
STATIC_ALGORITHMS = ("ep", "bptt")


class Problem(NamedTuple):
    """What the loop needs, whatever the network (see module doc). `device`: a DeviceStep when the whole step runs in
    a backend's arrays (bptt or an online rule on mlx or cupy: refimpl/training/device.py, on_device), with
    `batch(idx) -> (x, y, mask)` on the host; the loop then uses those instead of `grads`."""
    task: object
    params: dict
    grads: Callable
    evaluate: Callable
    device: DeviceStep | None = None
    batch: Callable | None = None


class Prepared(NamedTuple):
    problem: Problem
    opt: optim.OptimConfig
    steps_per_epoch: int
    total: int                          # optimizer steps of the whole run


def prepare(config: TrainConfig) -> Prepared:
    """The task (built from the config), its problem, the optimizer settings and the run's length in steps."""
    task = make_task(config.task, seed=config.seed, data_dir=config.data_dir, **config.task_options)
    steps_per_epoch = math.ceil(task.train.n / config.batch_size)
    total = config.steps if config.steps is not None else config.epochs * steps_per_epoch
    per_sequence = (math.ceil(task.seq_len / config.update_every)
                    if config.update_every and task.kind == "sequence" else 1)
    opt = optim.OptimConfig(name=config.optimizer, lr=config.lr, weight_decay=config.weight_decay,
                            rec_lr_factor=config.rec_lr_factor, freeze=tuple(config.freeze),
                            clip_norm=config.clip_norm, schedule=config.schedule, warmup_steps=config.warmup_steps,
                            total_steps=max(total * per_sequence, 1))
    if task.kind != "static" and (config.net != TrainConfig.net or config.net_options):
        raise UnsupportedError(f"--net and --net-option choose the equilibrium-propagation network of a static task; "
                               f"task {task.name!r} is a sequence task (its model is --cell, --hidden, --layers …): "
                               f"drop --net/--net-option, or use a static task (--task digits)")
    parts = estimate_bytes(config, task)
    if parts:
        top = max(parts, key=parts.get)
        check_memory(f"this run ({config.cell if task.kind != 'static' else config.net}, hidden {config.hidden}, "
                     f"batch {config.batch_size})", parts, KNOBS[top])
    if task.kind == "static":
        if config.freeze:
            raise UnsupportedError(f"--freeze fixes parameters of a recurrent cell; task {task.name!r} trains an "
                                   f"equilibrium-propagation network, which has none: drop --freeze")
        problem = static_problem(config, task)
    else:
        problem = sequence_problem(config, task, opt)
        check_freeze(config.freeze, problem.params, config.cell)
    return Prepared(problem, opt, steps_per_epoch, total)


#: What to turn when a part of the memory estimate is too big.
KNOBS = {"parameters": "use a smaller --hidden (or fewer --layers)",
         "states": "use a smaller --batch-size (or --micro-batch M), a smaller --hidden, or a shorter sequence",
         "traces": "use a smaller --hidden or --batch-size, or an algorithm with smaller traces (snap1, truncated: "
                   "O(#params); bptt: none)",
         "Jacobians": "use fewer units or layers, or --algorithm online (per-layer RTRL, exact at the top)"}


def estimate_bytes(config: TrainConfig, task) -> dict:
    """{part: bytes} of the run's largest arrays, before any is allocated (module doc, "Memory"); {} when the model
    cannot be described (its own checks then say why)."""
    try:
        return _static_bytes(config, task) if task.kind == "static" else _sequence_bytes(config, task)
    except (RefimplError, TypeError, ValueError):      # e.g. -a T=abc: refused with the reason by the problem
        return {}


def _sequence_bytes(config: TrainConfig, task) -> dict:
    d_model = (config.d_model or config.hidden) if config.encoder else None
    cells, d = [], (d_model if config.encoder else task.n_in)
    for _ in range(config.layers):
        c = resolve_cell(config.cell, d, config.hidden, config.dtype, **config.cell_options)
        cells.append(c)
        d = c.out_width
    model = Model(cell=config.cell, n_in=task.n_in, n_hidden=config.hidden, n_out=task.n_out, layers=config.layers,
                  d_model=d_model, encoder=config.encoder, norm=config.norm, ffn=config.ffn, ffn_mult=2,
                  residual=config.residual, pooling=config.pooling, seed=config.seed, dtype=cells[0].dtype,
                  cells=tuple(cells), cell_options=dict(cells[0].options))
    item = cells[0].dtype.itemsize
    P = sum(math.prod(shape) for shape in model.param_shapes().values())
    b = math.ceil(min(config.batch_size, task.train.n) / (config.micro_batch or 1))
    S = [c.state_size * (2 if c.complex_state else 1) for c in cells]
    parts = {"parameters": 4 * P * item,
             "states": task.seq_len * b * sum(4 * s + c.n_in + c.out_width for s, c in zip(S, cells)) * item}
    if config.algorithm == "rtrl" and whole_stack_differs(model):
        parts["Jacobians"] = sum(S) * P * item
    elif config.algorithm in rtrl.LAYER_RULE:
        parts["traces"] = sum(rtrl.trace_nbytes(rtrl.LAYER_RULE[config.algorithm], c, b) for c in cells)
    return parts


def _static_bytes(config: TrainConfig, task) -> dict:
    if config.net == "conv":
        return {}
    n = [task.n_in] + [config.hidden] * config.layers + [task.n_out]
    T = int({**EP_SETTINGS["train"], **config.algorithm_options}["T"])
    b = min(config.batch_size, task.train.n)
    item = np.dtype(config.dtype).itemsize
    return {"parameters": 4 * sum(a * c for a, c in zip(n, n[1:])) * item, "states": T * b * sum(n) * item}


# ----------------------------------------------------------------------------------------------------------------
# Sequence tasks: batches with targets and mask weights for the model at hand

def check_compatible(task, model, algorithm: str) -> None:
    """Refuse task × model × algorithm combinations that cannot train, with the reason."""
    get_algorithm(algorithm, "model")
    if task.kind != "sequence":
        raise UnsupportedError(f"task {task.name!r} has static inputs (it trains equilibrium-propagation networks, "
                               f"--algorithm {' or '.join(STATIC_ALGORITHMS)}); recurrent cells need a sequence task, "
                               f"e.g. {task.name + '-seq' if task.name == 'digits' else 'digits-seq'}")
    if task.target == "per_step" and not model.per_step:
        raise UnsupportedError(f"task {task.name!r} has a target at every step, but pooling={model.pooling!r} "
                               f"gives one output per sequence; use --pooling none (or cumulative_mean)")


def batch_targets(task, model, split, idx: np.ndarray):
    """(x (T,b,I), y, mask) for the examples `idx` of `split`, shaped for `model`'s output (see module doc)."""
    x = np.asarray(split.x[:, idx], dtype=model.dtype)                 # a copy; dense codes of tasks.listops.OneHot
    T, b = x.shape[0], len(idx)
    if task.target == "per_step":
        m = split.mask[:, idx].astype(model.dtype)
        return x, split.y[:, idx].astype(model.dtype), m / np.maximum(m.sum(0, keepdims=True), 1)
    y = split.y[idx]
    if not model.per_step:
        return x, (y if task.target == "label" else y.astype(model.dtype)), None
    if task.target == "label":
        return x, np.broadcast_to(y, (T, b)).copy(), np.full((T, b), 1.0 / T, dtype=model.dtype)
    y_t = np.zeros((T, b) + y.shape[1:], dtype=model.dtype)          # "final": the target at the last step only
    y_t[-1] = y
    mask = np.zeros((T, b), dtype=model.dtype)
    mask[-1] = 1.0
    return x, y_t, mask


def _accuracy_counts(task, model, out: np.ndarray, y: np.ndarray, mask) -> tuple[float, float]:
    """(correct, total) for one batch; regression tasks count nothing."""
    if task.target == "label":
        pred = out[-1] if model.per_step else out                    # a per-step model is scored on its last step
        label = y[-1] if model.per_step else y
        return float(np.sum(np.argmax(pred, -1) == label)), float(len(label))
    if task.target == "per_step":                                     # bits, over the steps that count
        hit = ((out > 0) == (y > 0.5)) * (mask > 0)[..., None]
        return float(hit.sum()), float((mask > 0).sum() * y.shape[-1])
    return 0.0, 0.0


def evaluate(task, model, params, split, kernels, batch_size: int = 256) -> tuple[float, float | None]:
    """(mean loss per example, accuracy or None) over a whole split, forward only."""
    total_loss, correct, count = 0.0, 0.0, 0.0
    for start in range(0, split.n, batch_size):
        idx = np.arange(start, min(start + batch_size, split.n))
        x, y, mask = batch_targets(task, model, split, idx)
        with np.errstate(all="ignore"):
            out, _ = forward(model, params, x, kernels, mask=None if model.per_step else mask)
            value, _ = loss_forward(task.loss, out, y, mask if model.per_step else None)
        total_loss += float(value) * len(idx)
        c, n = _accuracy_counts(task, model, out, y, mask)
        correct, count = correct + c, count + n
    return total_loss / split.n, (correct / count if count else None)


def sequence_problem(config: TrainConfig, task, opt: optim.OptimConfig) -> Problem:
    """A sequence task: a recurrent model trained by config.algorithm on config.backend (see module doc)."""
    model, params = build_model(config, task)
    check_compatible(task, model, config.algorithm)
    options = check_online(config, model, task.seq_len, min(config.batch_size, task.train.n))
    kernels = cell_kernels(model.cell, config.backend, model.dtype)
    algo = get_algorithm(config.algorithm, "model")
    if config.dropout and on_device(config):
        raise UnsupportedError(f"--dropout on backend {config.backend!r}: {config.algorithm} there runs the whole step "
                               f"in the backend's arrays, which has no dropout; use --backend numpy or numba, or "
                               f"--dropout 0")

    def one_batch(params, idx, step_model=model):
        x, y, mask = batch_targets(task, model, task.train, idx)
        return model_grads(step_model, params, x, y, loss=task.loss, mask=mask, algorithm=config.algorithm,
                           backend=config.backend, **options)

    def grads(params, idx, opt_state):
        step_model = training_model(config, model, len(idx), opt_state)              # this step's dropout masks
        if config.update_every:
            x, y, mask = batch_targets(task, model, task.train, idx)
            return truly_online(step_model, params, x, y, task.loss, mask, config, opt, opt_state, algo=algo,
                                kernels=kernels, options=options)
        if config.micro_batch:
            row = {int(i): r for r, i in enumerate(idx)}                     # each example keeps its own masks

            def part_batch(params, part):
                rows = [row[int(i)] for i in part]
                masks = None if step_model.masks is None else {k: m[rows] for k, m in step_model.masks.items()}
                return one_batch(params, part, with_dropout(model, masks))
            loss, g = micro_batched(part_batch, params, idx, config.micro_batch)
        else:
            loss, g = one_batch(params, idx, step_model)
        return loss, g, opt_state, params

    device = batch = None
    if on_device(config):
        device = DeviceStep(model, opt, config.backend, task.loss, config.algorithm, **options)

        def batch(idx):
            return batch_targets(task, model, task.train, idx)
    return Problem(task, params, grads, lambda params, split: evaluate(task, model, params, split, kernels), device,
                   batch)


#: The dropout masks of optimizer step k come from np.random.default_rng([seed, DROPOUT_STREAM, k]): the run's seed
#: and the step alone fix them (a resumed run draws the same masks; the batches use [seed, epoch], runs.batch_at).
DROPOUT_STREAM = 0xD0


def training_model(config: TrainConfig, model, batch: int, opt_state):
    """The model of one training step: with --dropout, carrying the step's masks (refimpl/nn/model.py
    dropout_masks), drawn once for the step, so that every algorithm and every chunk or pass of it sees the same
    ones; without, the model itself. The step is the optimizer state's count of updates (0 without a state)."""
    if not config.dropout:
        return model
    k = 0 if opt_state is None else int(opt_state["step"])
    rng = np.random.default_rng([config.seed, DROPOUT_STREAM, k])
    return with_dropout(model, dropout_masks(model, config.dropout, batch, rng))


def on_device(config: TrainConfig) -> bool:
    """Whether the run's whole step runs in the backend's arrays: bptt, an RTRL-family rule or tbptt (DEVICE_ALGORITHMS;
    no micro-batches, no update inside the sequence) on a backend whose arrays are not NumPy's
    (registry.Backend.on_host False: mlx, cupy); DeviceStep refuses, with the fix, a model the rule cannot train
    (whole-stack rtrl, pooling 'mean'). The other algorithms (fptt, fptt1, dfa, drtp, readout) run their cells on the
    backend and the rest on the host (refimpl/algorithms/chunked.py)."""
    return (config.algorithm in DEVICE_ALGORITHMS and not config.micro_batch and not config.update_every
            and not load_backend(config.backend).on_host)


def build_model(config: TrainConfig, task):
    """The config's recurrent model for a task's widths: (model, params)."""
    return make_model(config.cell, task.n_in, config.hidden, task.n_out, layers=config.layers,
                      d_model=config.d_model, encoder=config.encoder, norm=config.norm, ffn=config.ffn,
                      residual=config.residual, pooling=config.pooling, seed=config.seed, dtype=config.dtype,
                      **config.cell_options)


def check_online(config: TrainConfig, model, T: int, B: int | None) -> dict:
    """Refuse --chunk, --update-every and --micro-batch where they cannot work (T: the sequence length, B: the batch),
    before any work; the algorithm's options with --chunk added (see module doc)."""
    algo = get_algorithm(config.algorithm, "model")
    options = dict(config.algorithm_options)
    if config.chunk is not None:
        C = positive_int("--chunk", config.chunk)
        if not algo.streams:
            raise UnsupportedError(f"--chunk cuts a stream into chunks for the streaming algorithms "
                                   f"({', '.join(a.name for a in ALGORITHMS.values() if a.streams)}); "
                                   f"{algo.name!r} runs the whole sequence at once: drop --chunk")
        if "chunk" not in algo.options:
            raise UnsupportedError(f"{algo.name}'s chunk is its window (BPTT inside each window): use -a window={C} "
                                   f"instead of --chunk")
        check_chunk(C, T, "--chunk")
        options["chunk"] = C
    if config.update_every is not None:
        K = positive_int("--update-every", config.update_every)
        if not algo.updates_inside:
            hint = ("use tbptt -a window=k (truncated BPTT, one update per window), or an online rule (online, "
                    "snap1, truncated, spatial, cec, rtrl)" if algo.name == "bptt" else
                    "use an online rule (online, snap1, truncated, spatial, cec, rtrl) or tbptt -a window=k")
            raise UnsupportedError(f"--update-every needs an algorithm that can update inside a sequence; "
                                   f"{algo.name!r} needs the whole sequence before it can update: {hint}")
        if K > T:
            raise UnsupportedError(f"--update-every {K} is longer than the sequence (T = {T}); use 1 ≤ K ≤ {T} (K = T "
                                   f"is one update per sequence)")
        if algo.name == "rtrl" and whole_stack_differs(model):
            raise UnsupportedError("--update-every with whole-stack rtrl is not supported (its sequences run one "
                                   "after another); use --algorithm online (per-layer RTRL) for truly online updates")
        if algo.name == "tbptt":
            window = int(options.get("window", min(TBPTT_WINDOW, T)))
            check_chunk(window, T, "window")
            if K % window:
                raise UnsupportedError(f"tbptt updates once per window of {window} steps; --update-every {K} is not a "
                                       f"multiple of it: use --update-every {window} (or a multiple), or -a window=k "
                                       f"dividing {K}")
    if config.micro_batch is not None:
        M = positive_int("--micro-batch", config.micro_batch)
        if config.update_every is not None:
            raise UnsupportedError("--micro-batch with --update-every: the micro-batches would have to run in "
                                   "lockstep (an update inside the sequence needs every micro-batch's gradient up to "
                                   "that step), keeping every micro-batch's traces, so nothing is saved; use a "
                                   "smaller --batch-size instead")
        if B is not None and M > B:
            raise UnsupportedError(f"--micro-batch {M} is more than the batch ({B} examples); use 1 ≤ M ≤ {B}")
    return options


def micro_batched(one_batch: Callable, params, idx: np.ndarray, M: int):
    """(loss, grads) of the batch idx from M micro-batches: Σ_m (b_m / B) · one_batch(params, idx_m) (module doc)."""
    B = len(idx)
    total, out, dx = 0.0, {}, []
    for part in np.array_split(idx, min(M, B)):
        loss, g = one_batch(params, part)
        w = len(part) / B
        total += w * loss
        for k, v in g.items():
            if k == "x":                            # the input gradient is per example: (T, b_m, I) side by side
                dx.append(w * v)
            else:
                out[k] = out[k] + w * v if k in out else w * v
    if dx:
        out["x"] = np.concatenate(dx, axis=1)
    return total, out


def truly_online(model, params, x, y, loss, mask, config: TrainConfig, opt: optim.OptimConfig, opt_state, *,
                 algo=None, kernels=None, options=None):
    """One sequence with weight updates every config.update_every steps inside it, on the config's backend (the
    algorithm's model_grads with update_every / on_update); the last update is left to the caller. Returns (loss,
    the gradient since the last update, optimizer state, parameters after the updates)."""
    check_inputs(model, params, x, y, loss, mask)
    algo = get_algorithm(config.algorithm, "model") if algo is None else algo
    kernels = cell_kernels(model.cell, config.backend, model.dtype) if kernels is None else kernels
    options = dict(config.algorithm_options) if options is None else options
    current = {"params": dict(params), "opt": opt_state}

    def on_update(grads, t=None, loss=None):
        bad = [k for k, g in grads.items() if not np.all(np.isfinite(g))]
        if bad:
            raise NumericalError(f"the gradient of {bad[0]!r} is not finite")
        with np.errstate(all="ignore"):
            new, current["opt"], _ = optim.step(current["params"], grads, current["opt"], opt)
        current["params"] = {**current["params"], **new}
        return current["params"]

    with np.errstate(all="ignore"):
        value, grads = algo.model_grads(kernels, model, params, x, y, loss, mask, update_every=config.update_every,
                                        on_update=on_update, **algo.check_options(options))
    if not np.isfinite(value):
        raise NumericalError(f"the loss became non-finite ({value})")
    return value, grads, current["opt"], current["params"]


# ----------------------------------------------------------------------------------------------------------------
# Static tasks: an equilibrium-propagation network

def static_problem(config: TrainConfig, task) -> Problem:
    """A static task: an EP network (refimpl/ep/networks.py) trained by `ep` or by `bptt` through the same dynamics
    (truncated to the last K steps, the paper's baseline; -a K=0 … or full with -a full=1)."""
    given = [f for f, v in (("--update-every", config.update_every), ("--chunk", config.chunk),
                            ("--micro-batch", config.micro_batch), ("--dropout", config.dropout or None))
             if v is not None]
    if given:
        raise UnsupportedError(f"{', '.join(given)}: for sequence tasks (time steps, batches of sequences); task "
                               f"{task.name!r} has static inputs: drop {' and '.join(given)}")
    if config.algorithm not in STATIC_ALGORITHMS:
        raise UnsupportedError(f"task {task.name!r} has static inputs: it trains equilibrium-propagation networks "
                               f"with --algorithm ep or bptt, not {config.algorithm!r}")
    allowed = {"T", "K", "beta", "full", "lr_tab", "lr_order"}
    unknown = sorted(set(config.algorithm_options) - allowed)
    if unknown:
        raise UnsupportedError(f"unknown option(s) {unknown} for {config.algorithm} on a static task; allowed: "
                               f"{sorted(allowed)} (e.g. -a T=30 -a K=10 -a beta=0.5)")
    o = {**EP_SETTINGS["train"], **config.algorithm_options}
    try:
        T, K, beta = int(o["T"]), int(o["K"]), float(o["beta"])
    except (TypeError, ValueError):
        raise UnsupportedError(f"-a T={o['T']} -a K={o['K']} -a beta={o['beta']}: T and K must be integers and beta "
                               f"a number, e.g. -a T=30 -a K=10 -a beta=0.5") from None
    if T < 1 or K < 1:
        raise UnsupportedError(f"T and K must be ≥ 1 (free and nudged steps), got T={T}, K={K}")
    if K > T:
        raise UnsupportedError(f"K = {K} > T = {T}: the nudged phase (and BPTT's truncation) cannot be longer than "
                               f"the free phase; use -a K=… ≤ -a T=…")
    if config.algorithm == "ep" and not beta >= np.finfo(config.dtype).eps:
        raise UnsupportedError(f"beta must be > 0 (the nudge strength; EP estimates the gradient as β → 0) and at "
                               f"least {config.dtype}'s machine epsilon {np.finfo(config.dtype).eps:.3g} (a smaller "
                               f"nudge cannot move the state), got {beta}; e.g. -a beta=0.5")
    net_options = check_net_options(config.net, config.net_options)
    if config.net == "conv":                      # the prototypical convolutional network (refimpl/ep/conv.py)
        if config.backend != "numpy":
            raise UnsupportedError(f"--net conv runs on the NumPy reference only (the registry has no convolutional "
                                   f"EP kernels); drop --backend {config.backend} or use --net prototypical|energy")
        ep = ep_conv
        side = int(round(np.sqrt(task.n_in)))
        if side * side != task.n_in:
            raise UnsupportedError(f"--net conv needs square single-channel images; task {task.name!r} has "
                                   f"{task.n_in} inputs")
        shape = {"kernel": 3, "pool": (2, 1)} if side == 8 else {"kernel": 5, "pool": 2}   # digits 8×8 / MNIST 28×28
        opts = {"channels": (config.hidden, config.hidden), "activation": "sigm", **shape, **net_options}
        net, params = ep.make_conv_net((1, side, side), n_out=task.n_out, seed=config.seed, dtype=config.dtype,
                                       **opts)
        as_input = lambda x: x.reshape(len(x), 1, side, side)                    # noqa: E731
    else:
        ep = ep_networks
        net, params = ep.make_ep_net(config.net, (task.n_in,) + (config.hidden,) * config.layers + (task.n_out,),
                                     seed=config.seed, dtype=config.dtype, **net_options)
        as_input = lambda x: x                                                   # noqa: E731

    def onehot(labels):
        y = np.zeros((len(labels), task.n_out), dtype=net.dtype)
        y[np.arange(len(labels)), labels] = 1.0
        return y

    scale = _layer_lr_scale(config, params, o.get("lr_tab"), o.get("lr_order"))
    # the relaxation loops on the backend's ep.* kernels (the conv net, refused on a backend above, takes none)
    on_backend = {} if config.backend == "numpy" else {"kernels": ep_kernels(config.backend, config.dtype)}

    def grads(params, idx, opt_state):
        x, y = as_input(task.train.x[idx].astype(net.dtype)), onehot(task.train.y[idx])
        if config.algorithm == "ep":
            loss, g, _ = ep.ep_grads(net, params, x, y, T=T, K=K, beta=beta, **on_backend)
        else:
            loss, g = ep.bptt_grads(net, params, x, y, T=T, K=None if o.get("full") else K, **on_backend)
        return float(loss), {k: v * scale.get(k, 1.0) for k, v in g.items()}, opt_state, params

    def evaluate_static(params, split, batch_size=512):
        total, correct = 0.0, 0
        for start in range(0, split.n, batch_size):
            sl = slice(start, min(start + batch_size, split.n))
            out = ep.predict(net, params, as_input(split.x[sl].astype(net.dtype)), T, **on_backend)
            y = onehot(split.y[sl])
            total += 0.5 * float(np.sum((out - y) ** 2))
            correct += int(np.sum(np.argmax(out, -1) == split.y[sl]))
        return total / split.n, correct / split.n
    return Problem(task, params, grads, evaluate_static)


#: The orders a positional `-a lr_tab` may be given in (`-a lr_order=…`): the EP seed's lr_tab runs from the output
#: layer to the input (conv: fc, K0, K1), refimpl's weight names from the input up.
LR_ORDERS = ("output_first", "input_first")


def check_net_options(net: str, options: dict) -> dict:
    """An EP network's options (`-n KEY=VALUE`) as the network takes them: a key the network does not have is
    refused with the allowed ones; the conv net's channels, kernel and pool, given as the text "a,b" or one integer,
    become what refimpl.ep.conv takes (int_pair)."""
    allowed = CONV_NET_OPTIONS if net == "conv" else EP_NET_OPTIONS
    for key in options:
        if key not in allowed:
            raise UnknownNameError(f"--net-option of the {net} network", key, allowed,
                                   "e.g. -n channels=32,64" if net == "conv" else "e.g. -n activation=tanh -n dt=0.08")
    return {k: int_pair(k, v) if k in ("channels", "kernel", "pool") else v for k, v in options.items()}


def int_pair(key: str, value):
    """A conv option as the network takes it: an int, or a pair from the command line's text "a,b" (one number of
    channels stands for both layers)."""
    if key == "channels" and isinstance(value, int):
        return (value, value)
    if not isinstance(value, str):
        return value
    try:
        pair = tuple(int(v) for v in value.split(","))
    except ValueError:
        pair = ()
    if len(pair) != 2:
        raise UnsupportedError(f"-n {key}={value} is not allowed: give one integer or two separated by a comma, "
                               f"e.g. -n {key}=32,64")
    return pair


def _layer_lr_scale(config: TrainConfig, params: dict, lr_tab, lr_order=None) -> dict:
    """Per-layer learning rates (the EP paper's lr_tab) as gradient scales lr_l / lr — the same thing for plain SGD,
    which is why they are refused with other optimizers.

    lr_tab gives one rate per weight layer, comma-separated, either named — "W.0=0.1,W.1=0.05" (refimpl's names:
    W.0 … W.{L−1} from the input up, refimpl/ep/networks.py; conv: K1, K0, W) — or as a bare list with its order
    stated by lr_order: "output_first" is the seed's (its lr_tab[k] drives the weights between layers k and k+1
    counted from the output, the last entry the input weights; conv: fc, K0, K1), "input_first" refimpl's. A bare
    list of two or more different rates without lr_order is refused: read in the wrong order it would silently swap
    the layers' rates. The biases of the layer a weight feeds (the layer on its output side) share its rate."""
    if lr_tab is None:
        if lr_order is not None:
            raise UnsupportedError("-a lr_order says the order of -a lr_tab, which is not given; add -a lr_tab=… or "
                                   "drop -a lr_order")
        return {}
    if config.optimizer != "sgd":
        raise UnsupportedError(f"-a lr_tab needs --optimizer sgd (per-layer rates are gradient scales only for plain "
                               f"SGD), got {config.optimizer!r}")
    weights = [k for k in params if k.startswith("W.")] or [k for k in ("K1", "K0", "W") if k in params]
    biases = [k for k in params if k.startswith("b.")] or [k for k in ("c1", "c0", "b") if k in params]
    rates = layer_rates(str(lr_tab), lr_order, weights)
    scale = {w: rates[w] / config.lr for w in weights}
    scale.update({b: rates[w] / config.lr for w, b in zip(weights, biases)})
    # the toy network's input → layer l skips (Wx.l) take the rate of layer l's incoming weights W.{l−1}
    scale.update({k: scale[f"W.{int(k.split('.', 1)[1]) - 1}"] for k in params if k.startswith("Wx.")})
    return scale


def layer_rates(lr_tab: str, lr_order, weights: list[str]) -> dict:
    """{weight name: rate} from -a lr_tab (named or a bare list) and -a lr_order (see _layer_lr_scale)."""
    entries = [e.strip() for e in lr_tab.split(",") if e.strip()]
    seed_order = ",".join(reversed(weights))
    example = ",".join(f"{w}=0.1" for w in weights)
    if any("=" in e for e in entries):                                   # named: W.0=0.1,W.1=0.05
        if lr_order is not None:
            raise UnsupportedError("-a lr_tab names its layers, so it has no order: drop -a lr_order")
        pairs = [e.split("=", 1) for e in entries]
        named = {name.strip(): value for name, value in pairs}
        for name in named:
            if name not in weights:
                raise UnknownNameError("weight layer in -a lr_tab", name, weights, f"e.g. -a lr_tab={example}")
        missing = [w for w in weights if w not in named]
        if missing or len(named) != len(pairs):
            raise UnsupportedError(f"-a lr_tab must name every weight layer once ({', '.join(weights)}); "
                                   f"{'missing ' + ', '.join(missing) if missing else 'a layer is named twice'}; "
                                   f"e.g. -a lr_tab={example}")
        return {w: _rate(named[w]) for w in weights}
    rates = [_rate(e) for e in entries]
    if len(rates) != len(weights):
        raise UnsupportedError(f"-a lr_tab has {len(rates)} rate(s) but the network has {len(weights)} weight layers "
                               f"({', '.join(weights)}); e.g. -a lr_tab={','.join(['0.1'] * len(weights))}")
    if lr_order is None:
        if rates != rates[::-1]:                                          # the order matters: it must be stated
            raise UnsupportedError(f"-a lr_tab={lr_tab} does not say its order: add -a lr_order=output_first (the "
                                   f"EP seed's lr_tab: {seed_order}) or -a lr_order=input_first ({','.join(weights)}), "
                                   f"or name the layers, e.g. -a lr_tab={example}")
        lr_order = "input_first"
    if lr_order not in LR_ORDERS:
        raise UnknownNameError("-a lr_order", lr_order, LR_ORDERS,
                               f"output_first is the EP seed's order ({seed_order})")
    ordered = weights[::-1] if lr_order == "output_first" else weights
    return dict(zip(ordered, rates))


def _rate(value: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        raise UnsupportedError(f"-a lr_tab: {value!r} is not a learning rate; give numbers ≥ 0, e.g. 0.1") from None
    if not rate >= 0 or rate == float("inf"):
        raise UnsupportedError(f"-a lr_tab: learning rate {value} is not allowed; give finite numbers ≥ 0")
    return rate
