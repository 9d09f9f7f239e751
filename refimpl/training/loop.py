"""Training: any cell × algorithm × backend on a task, with a run directory you can trust.

    train(config, run_dir, resume=False) -> RunResult

One step, k = 0 … total_steps − 1:

    (1) batch:     epoch e = k // S, position i = k mod S (S = steps per epoch); the epoch's order is the seeded
                   permutation default_rng([seed, e]).permutation(N_train), batch = its i-th slice of B examples
    (2) gradient:  (L, g) = refimpl.model_grads(model, θ, x, y, loss, mask, algorithm, backend)
    (3) update:    θ ← optimizer step (refimpl.optim: clipping by global norm, the learning-rate schedule, recurrent
                   parameters with lr × rec_lr_factor and no weight decay)
and after the last step of every epoch: the validation loss and accuracy; at the very end also the test split.

How a task's targets become a loss (tasks/base.py, "target kinds"), with the mask used as *weights* so that the
loss is a mean over the steps that count (DESIGN.md §4: L = (1/B) Σ_b Σ_t m_t l_t):
    label     per-step model: the label at every step, m_t = 1/T; scored on the last step's output.
              pooled model (last / mean): one label per sequence.
    per_step  per-step model only: m_t = task mask / (number of recall steps).
    final     per-step model: the target at t = T−1 only (m = 1 there); pooled model: one target per sequence.

The run directory:
    config.json       the TrainConfig (everything needed to rerun or resume)
    metrics.jsonl     one JSON object per line, flushed as it goes: {"split": "train"|"val"|"test", "step", "epoch",
                      "loss", "accuracy", …}; "step" counts completed optimizer steps. Wall-clock fields are in
                      "time_s" (and are the only fields that differ between two runs with the same seed).
    checkpoint.npz    parameters, optimizer state and the step count, written atomically (temp file + rename)
                      after every epoch (and every `checkpoint_every` steps)
    result.json       the final numbers, written atomically at the end (the final training loss is measured on a
                      seeded subset of at most TRAIN_EVAL_SIZE training examples)
`resume=True` continues from checkpoint.npz: the metrics logged after the checkpoint are dropped and recomputed, so a
killed and resumed run ends with exactly the metrics of an uninterrupted one. A non-finite loss, gradient or
parameter stops the run with `TrainingDiverged`, leaving the last good checkpoint in place.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
import tracemalloc
from dataclasses import asdict, dataclass, field, fields
from typing import NamedTuple
from pathlib import Path

import numpy as np

from .. import optim
from ..algorithms import get_algorithm
from ..api import make_model, model_grads
from ..errors import NumericalError, UnsupportedError
from ..nn.losses import loss_forward
from ..nn.model import forward
from ..registry import cell_kernels, ep_kernels


class TrainingDiverged(NumericalError):
    """The loss, a gradient or a parameter became non-finite; the last good checkpoint is kept."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run. Stored as config.json; `TrainConfig(**json.load(...))` restores it."""
    task: str = "digits-seq"
    task_options: dict = field(default_factory=dict)
    data_dir: str | None = None
    cell: str = "lru"
    cell_options: dict = field(default_factory=dict)
    algorithm: str = "bptt"
    algorithm_options: dict = field(default_factory=dict)   # e.g. fptt: {"passes": 2, "carrier": "state"}
    backend: str = "numpy"
    layers: int = 1
    hidden: int = 32
    d_model: int | None = None
    encoder: bool = False
    norm: str | None = None
    ffn: str | None = None
    residual: bool = False
    pooling: str = "none"
    dtype: str = "float64"
    seed: int = 0
    epochs: int = 10
    steps: int | None = None            # total optimizer steps; overrides epochs when given
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.01
    rec_lr_factor: float = 1.0
    clip_norm: float | None = 1.0
    schedule: str = "cosine"
    warmup_steps: int = 0
    log_every: int = 10
    checkpoint_every: int | None = None  # steps; None = at the end of every epoch
    update_every: int | None = None      # RTRL family only: update the weights every k time steps within a sequence
    net: str = "prototypical"            # static tasks only: the EP network: prototypical | energy | toy | conv
    net_options: dict = field(default_factory=dict)   # its options: activation, dt, clamp

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return config_from_dict(cls, d)


def config_from_dict(cls, d: dict):
    """A config dataclass from its saved dict; unknown fields (another version's run directory) are refused."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise UnsupportedError(f"config has unknown fields {unknown}; it was written by another version of "
                               f"refimpl — start a new run directory")
    return cls(**d)


@dataclass
class RunResult:
    run_dir: str
    steps: int
    train_loss: float
    val_loss: float
    val_accuracy: float | None
    test_loss: float
    test_accuracy: float | None
    time_s: float
    peak_memory_bytes: int | None = None


# ----------------------------------------------------------------------------------------------------------------
# Task → batches with targets and mask weights for the model at hand

def check_compatible(task, model, algorithm: str) -> None:
    """Refuse task × model × algorithm combinations that cannot train, with the reason."""
    get_algorithm(algorithm, "model")
    if task.kind != "sequence":
        raise UnsupportedError(f"task {task.name!r} has static inputs (for equilibrium-propagation networks, not "
                               f"implemented yet); recurrent cells need a sequence task, e.g. "
                               f"{task.name + '-seq' if task.name == 'digits' else 'digits-seq'}")
    if task.target == "per_step" and not model.per_step:
        raise UnsupportedError(f"task {task.name!r} has a target at every step, but pooling={model.pooling!r} "
                               f"gives one output per sequence; use --pooling none (or cumulative_mean)")


def batch_targets(task, model, split, idx: np.ndarray):
    """(x (T,b,I), y, mask) for the examples `idx` of `split`, shaped for `model`'s output (see module doc)."""
    x = split.x[:, idx].astype(model.dtype)
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


#: The final training loss is measured on at most this many training examples (a seeded subset), so that the end
#: of a run on a large task does not cost a full pass over the training set.
TRAIN_EVAL_SIZE = 2000


def _subset(split, n: int, seed: int):
    """At most n examples of a split, chosen by a seeded permutation (the whole split when it is small)."""
    if split.n <= n:
        return split
    from tasks.base import Split
    idx = np.sort(np.random.default_rng([seed, 2**31 - 1]).permutation(split.n)[:n])
    x = split.x[:, idx] if split.x.ndim == 3 else split.x[idx]
    y = split.y[:, idx] if (split.mask is not None) else split.y[idx]
    return Split(x, y, None if split.mask is None else split.mask[:, idx])


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


# ----------------------------------------------------------------------------------------------------------------
# Files: atomic writes, metrics, checkpoints

def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over `path` (never a half-written file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_checkpoint(path: Path, step: int, params: dict, opt_state: dict) -> None:
    import io
    buf = io.BytesIO()
    np.savez(buf, step=np.int64(step), **{f"param/{k}": v for k, v in params.items()},
             **{f"opt/{k}": v for k, v in opt_state.items()})
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> tuple[int, dict, dict]:
    with np.load(path) as z:
        params = {k[len("param/"):]: z[k] for k in z.files if k.startswith("param/")}
        opt_state = {k[len("opt/"):]: z[k] for k in z.files if k.startswith("opt/")}
        return int(z["step"]), params, opt_state


def read_metrics(path: Path) -> list[dict]:
    """The metrics of a run; a torn last line (a run killed mid-write) is ignored."""
    records = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


class MetricsLog:
    """Append-only metrics.jsonl, one flushed line per record."""

    def __init__(self, path: Path, keep_until_step: int | None = None):
        if keep_until_step is not None:        # resume: drop what was logged after the checkpoint (it is recomputed)
            kept = [r for r in read_metrics(path) if r["step"] <= keep_until_step and r["split"] != "test"]
            atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        self._f = open(path, "a")

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


# ----------------------------------------------------------------------------------------------------------------
# The loop

class _Problem(NamedTuple):
    """What the loop needs, whatever the network: a sequence model (refimpl.nn.model) or a static EP network.

    grads(params, idx, opt_state) -> (loss, grads, opt_state, params)   the gradient on training examples idx (the
        truly-online path also updates inside the sequence, hence the optimizer state and parameters coming back)
    evaluate(params, split) -> (mean loss per example, accuracy or None)
    """
    task: object
    params: dict
    grads: object
    evaluate: object


def _sequence_problem(config: TrainConfig, task, opt) -> _Problem:
    model, params = make_model(config.cell, task.n_in, config.hidden, task.n_out, layers=config.layers,
                               d_model=config.d_model, encoder=config.encoder, norm=config.norm, ffn=config.ffn,
                               residual=config.residual, pooling=config.pooling, seed=config.seed,
                               dtype=config.dtype, **config.cell_options)
    check_compatible(task, model, config.algorithm)
    if config.update_every is not None and get_algorithm(config.algorithm, "model").input_grads:
        raise UnsupportedError(f"--update-every needs an online algorithm (rtrl, online, snap1, truncated, spatial, "
                               f"cec); {config.algorithm!r} needs the whole sequence before it can update")
    if config.update_every is not None and config.backend != "numpy":
        raise UnsupportedError(f"--update-every runs on the NumPy reference only (the truly online step loop); "
                               f"backend {config.backend!r} runs {config.algorithm!r} as whole-sequence sweeps: drop "
                               f"--update-every or use --backend numpy")
    kernels = cell_kernels(model.cell, config.backend, model.dtype)

    def grads(params, idx, opt_state):
        x, y, mask = batch_targets(task, model, task.train, idx)
        if config.update_every:
            loss, g, opt_state, params = _truly_online(model, params, x, y, task.loss, mask, config, opt(),
                                                       opt_state)
            return loss, g, opt_state, params
        loss, g = model_grads(model, params, x, y, loss=task.loss, mask=mask, algorithm=config.algorithm,
                              backend=config.backend, **config.algorithm_options)
        return loss, g, opt_state, params
    return _Problem(task, params, grads, lambda params, split: evaluate(task, model, params, split, kernels))


#: EP settings for static tasks (algorithm options T, K, beta): free-phase steps, nudged steps, nudge strength.
EP_DEFAULTS = {"T": 30, "K": 10, "beta": 0.5}


def _static_problem(config: TrainConfig, task) -> _Problem:
    """A static task: an EP network (refimpl/ep/networks.py) trained by `ep` or by `bptt` through the same dynamics (truncated
    to the last K steps, the paper's baseline; -a K=0 … or full with -a full=1)."""
    if config.algorithm not in ("ep", "bptt"):
        raise UnsupportedError(f"task {task.name!r} has static inputs: it trains equilibrium-propagation networks "
                               f"with --algorithm ep or bptt, not {config.algorithm!r}")
    allowed = {"T", "K", "beta", "full", "lr_tab"}
    unknown = sorted(set(config.algorithm_options) - allowed)
    if unknown:
        raise UnsupportedError(f"unknown option(s) {unknown} for {config.algorithm} on a static task; allowed: "
                               f"{sorted(allowed)} (e.g. -a T=30 -a K=10 -a beta=0.5)")
    o = {**EP_DEFAULTS, **config.algorithm_options}
    T, K, beta = int(o["T"]), int(o["K"]), float(o["beta"])
    if T < 1 or K < 1:
        raise UnsupportedError(f"T and K must be ≥ 1 (free and nudged steps), got T={T}, K={K}")
    if K > T:
        raise UnsupportedError(f"K = {K} > T = {T}: the nudged phase (and BPTT's truncation) cannot be longer than "
                               f"the free phase; use -a K=… ≤ -a T=…")
    if config.algorithm == "ep" and not beta > 0:
        raise UnsupportedError(f"beta must be > 0 (the nudge strength; EP estimates the gradient as β → 0), got "
                               f"{beta}; e.g. -a beta=0.5")
    if config.net == "conv":                      # the prototypical convolutional network (refimpl/ep/conv.py)
        if config.backend != "numpy":
            raise UnsupportedError(f"--net conv runs on the NumPy reference only (the registry has no convolutional "
                                   f"EP kernels); drop --backend {config.backend} or use --net prototypical|energy")
        from ..ep import conv as ep
        side = int(round(np.sqrt(task.n_in)))
        if side * side != task.n_in:
            raise UnsupportedError(f"--net conv needs square single-channel images; task {task.name!r} has "
                                   f"{task.n_in} inputs")
        shape = {"kernel": 3, "pool": (2, 1)} if side == 8 else {"kernel": 5, "pool": 2}   # digits 8×8 / MNIST 28×28
        net, params = ep.make_conv_net((1, side, side), (config.hidden, config.hidden), task.n_out, seed=config.seed,
                                       dtype=config.dtype, **{"activation": "sigm", **shape, **config.net_options})
        as_input = lambda x: x.reshape(len(x), 1, side, side)                    # noqa: E731
    else:
        from ..ep import networks as ep
        net, params = ep.make_ep_net(config.net, (task.n_in,) + (config.hidden,) * config.layers + (task.n_out,),
                                     seed=config.seed, dtype=config.dtype, **config.net_options)
        as_input = lambda x: x                                                   # noqa: E731

    def onehot(labels):
        y = np.zeros((len(labels), task.n_out), dtype=net.dtype)
        y[np.arange(len(labels)), labels] = 1.0
        return y

    scale = _layer_lr_scale(config, params, o.get("lr_tab"))
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
    return _Problem(task, params, grads, evaluate_static)


def _layer_lr_scale(config: TrainConfig, params: dict, lr_tab) -> dict:
    """Per-layer learning rates (the EP paper's lr_tab) as gradient scales lr_l / lr — the same thing for plain SGD,
    which is why they are refused with other optimizers. lr_tab lists one rate per weight layer, input side first
    ("W.0 W.1 …" of refimpl/ep/networks.py; conv: K1, K0, W), comma-separated; the biases of the layer a weight feeds share
    its rate."""
    if lr_tab is None:
        return {}
    if config.optimizer != "sgd":
        raise UnsupportedError(f"-a lr_tab needs --optimizer sgd (per-layer rates are gradient scales only for plain "
                               f"SGD), got {config.optimizer!r}")
    rates = [float(v) for v in str(lr_tab).split(",") if v.strip()]
    weights = [k for k in params if k.startswith("W.")] or [k for k in ("K1", "K0", "W") if k in params]
    biases = [k for k in params if k.startswith("b.")] or [k for k in ("c1", "c0", "b") if k in params]
    if len(rates) != len(weights):
        raise UnsupportedError(f"-a lr_tab has {len(rates)} rate(s) but the network has {len(weights)} weight layers "
                               f"({', '.join(weights)}), input side first; e.g. -a lr_tab={','.join(['0.1'] * len(weights))}")
    scale = {w: r / config.lr for w, r in zip(weights, rates)}
    scale.update({b: r / config.lr for b, r in zip(biases, rates)})
    # the toy network's input → layer l skips (Wx.l) take the rate of layer l's incoming weights W.{l−1}
    scale.update({k: scale[f"W.{int(k.split('.', 1)[1]) - 1}"] for k in params if k.startswith("Wx.")})
    return scale


def _prepare(config: TrainConfig):
    from tasks import make_task
    task = make_task(config.task, seed=config.seed, data_dir=config.data_dir, **config.task_options)
    steps_per_epoch = math.ceil(task.train.n / config.batch_size)
    total = config.steps if config.steps is not None else config.epochs * steps_per_epoch
    per_sequence = (math.ceil(task.seq_len / config.update_every)
                    if config.update_every and task.kind == "sequence" else 1)
    opt = optim.OptimConfig(name=config.optimizer, lr=config.lr, weight_decay=config.weight_decay,
                            rec_lr_factor=config.rec_lr_factor, clip_norm=config.clip_norm,
                            schedule=config.schedule, warmup_steps=config.warmup_steps,
                            total_steps=max(total * per_sequence, 1))
    if task.kind == "static":
        problem = _static_problem(config, task)
    else:
        problem = _sequence_problem(config, task, lambda: opt)
    return problem, opt, steps_per_epoch, total


def _check_config(config: TrainConfig) -> None:
    for name in ("layers", "hidden", "epochs", "batch_size", "log_every"):
        v = getattr(config, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UnsupportedError(f"{name} must be a positive integer, got {v!r}")
    for name in ("steps", "checkpoint_every", "update_every"):
        v = getattr(config, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise UnsupportedError(f"{name} must be a positive integer or None, got {v!r}")


def open_run_dir(run_dir, resume: bool):
    """(run_dir, config.json path, checkpoint path, the saved config dict when resuming else None). Refuses to resume
    what is not a run directory, and to start a new run over an existing one."""
    run_dir = Path(run_dir)
    cfg_path, ckpt_path = run_dir / "config.json", run_dir / "checkpoint.npz"
    if resume:
        if not cfg_path.exists():
            raise UnsupportedError(f"cannot resume: {run_dir} has no config.json (not a run directory); start a "
                                   f"new run with --out {run_dir}")
        return run_dir, cfg_path, ckpt_path, json.loads(cfg_path.read_text())
    if cfg_path.exists():
        raise UnsupportedError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, or choose "
                               f"another --out directory")
    return run_dir, cfg_path, ckpt_path, None


def train(config: TrainConfig, run_dir, *, resume: bool = False, progress: bool = False,
          track_memory: bool = False) -> RunResult:
    """Train `config` into `run_dir` (created), or continue it with resume=True. See the module doc."""
    run_dir, cfg_path, ckpt_path, saved = open_run_dir(run_dir, resume)
    if saved is not None:
        config = TrainConfig.from_dict(saved)
    _check_config(config)
    problem, opt, steps_per_epoch, total = _prepare(config)
    task, params = problem.task, problem.params
    opt_state = optim.init_state(params, opt)
    start = 0
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume and ckpt_path.exists():
        start, params, opt_state = load_checkpoint(ckpt_path)
    elif not resume:
        atomic_write_json(cfg_path, asdict(config))
    log = MetricsLog(run_dir / "metrics.jsonl", keep_until_step=start if resume else None)

    if track_memory:
        tracemalloc.start()
    t0 = time.perf_counter()
    bar = _progress(progress, total, start)
    last = {}
    try:
        for k in range(start, total):
            epoch, i = divmod(k, steps_per_epoch)
            order = np.random.default_rng([config.seed, epoch]).permutation(task.train.n)
            idx = np.sort(order[i * config.batch_size:(i + 1) * config.batch_size])
            try:
                loss, grads, opt_state, params = problem.grads(params, idx, opt_state)
                trained = {n: params[n] for n in params if n in grads}   # untrained parameters are left alone
                with np.errstate(all="ignore"):         # a blow-up is detected just below and reported
                    new, opt_state, info = optim.step(trained, grads, opt_state, opt)
            except NumericalError as e:
                raise _diverged(k + 1, str(e), ckpt_path) from None
            bad = [n for n, v in new.items() if not np.all(np.isfinite(v))]
            if bad:
                raise _diverged(k + 1, f"the update made {bad[0]!r} non-finite", ckpt_path)
            params = {**params, **new}
            step = k + 1
            last = {"loss": loss}
            if step % config.log_every == 0 or step == total:
                log.write({"split": "train", "step": step, "epoch": epoch, "loss": loss, "lr": info["lr"],
                           "grad_norm": info["grad_norm"], "time_s": time.perf_counter() - t0})
            end_of_epoch = (i == steps_per_epoch - 1) or step == total
            if end_of_epoch:
                val_loss, val_acc = problem.evaluate(params, task.val)
                last.update(val_loss=val_loss, val_acc=val_acc)
                log.write({"split": "val", "step": step, "epoch": epoch, "loss": val_loss, "accuracy": val_acc,
                           "time_s": time.perf_counter() - t0})
            if end_of_epoch or (config.checkpoint_every and step % config.checkpoint_every == 0):
                save_checkpoint(ckpt_path, step, params, opt_state)
            if bar is not None:
                bar.update(1, last)
        test_loss, test_acc = problem.evaluate(params, task.test)
        val_loss, val_acc = problem.evaluate(params, task.val)
        train_loss, _ = problem.evaluate(params, _subset(task.train, TRAIN_EVAL_SIZE, config.seed))
        elapsed = time.perf_counter() - t0
        log.write({"split": "test", "step": total, "epoch": (total - 1) // steps_per_epoch, "loss": test_loss,
                   "accuracy": test_acc, "time_s": elapsed})
    finally:
        log.close()
        if bar is not None:
            bar.close()
        peak = tracemalloc.get_traced_memory()[1] if track_memory else None
        if track_memory:
            tracemalloc.stop()
    result = RunResult(str(run_dir), total, train_loss, val_loss, val_acc, test_loss, test_acc, elapsed, peak)
    atomic_write_json(run_dir / "result.json", asdict(result))
    return result


def _truly_online(model, params, x, y, loss, mask, config, opt, opt_state):
    """One sequence with weight updates every config.update_every steps inside it; the last update is left to the
    caller. Returns (loss, the gradient since the last update, optimizer state, parameters after the updates)."""
    from ..nn import model as model_mod
    from ..algorithms.online import online_grads
    model_mod.check_inputs(model, params, x, y, loss, mask)
    current = {"params": dict(params), "opt": opt_state}

    def on_update(grads):
        bad = [k for k, g in grads.items() if not np.all(np.isfinite(g))]
        if bad:
            raise NumericalError(f"the gradient of {bad[0]!r} is not finite")
        with np.errstate(all="ignore"):
            new, current["opt"], _ = optim.step(current["params"], grads, current["opt"], opt)
        current["params"] = {**current["params"], **new}
        return current["params"]

    with np.errstate(all="ignore"):
        value, grads = online_grads(model, params, x, y, loss, mask, algorithm=config.algorithm,
                                    update_every=config.update_every, on_update=on_update)
    if not np.isfinite(value):
        raise NumericalError(f"the loss became non-finite ({value})")
    return value, grads, current["opt"], current["params"]


def _diverged(step: int, why: str, ckpt_path: Path) -> TrainingDiverged:
    kept = (f"the last good checkpoint is kept in {ckpt_path}" if ckpt_path.exists()
            else "no checkpoint had been written yet")
    return TrainingDiverged(f"training diverged at step {step}: {why}; {kept}. Lower --lr, set --clip, or use "
                            f"float64")


class _Bar:
    """A minimal progress line on stderr: step/total, loss, validation accuracy."""

    def __init__(self, total: int, start: int):
        self.total, self.n, self.t0 = total, start, time.perf_counter()

    def update(self, n: int, last: dict) -> None:
        self.n += n
        if self.n % max(1, self.total // 50) and self.n != self.total:
            return
        width = 30
        done = int(width * self.n / self.total)
        acc = last.get("val_acc")
        msg = (f"\r[{'#' * done}{'.' * (width - done)}] {self.n}/{self.total}  loss {last.get('loss', float('nan')):.4f}"
               + (f"  val acc {acc:.3f}" if acc is not None else "") + f"  {time.perf_counter() - self.t0:.0f}s")
        sys.stderr.write(msg)
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


def _progress(enabled: bool, total: int, start: int):
    return _Bar(total, start) if enabled else None


def gradient_agreement(config: TrainConfig, algorithms) -> dict:
    """How close each algorithm's gradient is to BPTT's at the run's initial weights, on its first training batch:
    {algorithm: {"cosine": …, "rel_error": …}} over all parameters flattened into one vector (a parameter an
    algorithm does not train counts as a zero gradient)."""
    import dataclasses

    from ..numerics import cosine, rel_error
    _check_config(config)
    problem, _, _, _ = _prepare(config)
    params = problem.params
    order = np.random.default_rng([config.seed, 0]).permutation(problem.task.train.n)
    idx = np.sort(order[:config.batch_size])

    def flat(algorithm):
        options = config.algorithm_options
        if problem.task.kind == "sequence":
            options = {k: v for k, v in options.items() if k in get_algorithm(algorithm).options}
        p, _, _, _ = _prepare(dataclasses.replace(config, algorithm=algorithm, algorithm_options=options,
                                                  update_every=None))
        _, g, _, _ = p.grads(params, idx, None)
        return np.concatenate([np.ravel(g.get(k, np.zeros_like(v))) for k, v in params.items()])
    reference = flat("bptt")
    out = {}
    for a in algorithms:
        g = flat(a)
        out[a] = {"cosine": cosine(g, reference), "rel_error": rel_error(g, reference)}
    return out
