"""Training a feed-forward network by bp, dfa, drtp, ll-ce or ll-mse (refimpl/bpfree/) on a static task.

    train(config, run_dir, resume=False) -> BpfreeResult

One step, k = 0 … total_steps − 1 (as refimpl/training/loop.py):

    (1) batch:     epoch e = k // S, position i = k mod S (S = steps per epoch); the epoch's order is the seeded
                   permutation default_rng([seed, e]).permutation(N_train), batch = its i-th slice of B examples
    (2) update:    (L, Δ) = bpfree.rule_grads(net, θ, feedback, x, y, rule) with dropout masks drawn from
                   default_rng([seed, 2, k]) (so a resumed run draws the same masks)
    (3) optimizer: θ ← optim.step(θ, Δ) (Adam by default, as the projection-rule literature uses)
and after the last step of every epoch: the validation loss and error (evaluation mode), and the trackers (bp-cosine,
weight-alignment, gradient norms; bpfree.trackers) on a fixed seeded subset of the training split; at the very end
also the test split.

Tasks: the static ones (kind "static": `digits`, `mnist-static`); problem "classification" (labels) or
"reconstruction" (the target is the input, outputs σ(z) ∈ (0, 1), the pixels are in [0, 1]).

The run directory (refimpl/runs.py, as for refimpl/training/loop.py):
    config.json       the BpfreeConfig
    metrics.jsonl     one JSON object per line, flushed: {"split": "train"|"val"|"tracker"|"test", "step", "epoch",
                      …}; val/test records carry "loss" and "error" (% misclassified; None for reconstruction);
                      tracker records carry per-layer lists "layers", "bp_cosine", "weight_alignment",
                      "grad_norm_weight", "grad_norm_bias", "local_loss". Wall-clock fields are "time_s".
    checkpoint.npz    parameters, batch-norm running averages, feedback matrices, optimizer state and the step,
                      written atomically after every epoch
    result.json       the final numbers
    trackers.png      learning curves and trackers (written at the end unless plot=False)
`resume=True` continues from checkpoint.npz and drops the metrics logged after it, so a killed and resumed run ends
with exactly the metrics of an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tasks import make_task

from .. import bpfree, optim
from ..checks import check_memory, positive_int
from ..errors import NumericalError, UnsupportedError
from ..plotting import save_figure
from ..runs import (MetricsLog, ProgressBar, TrainingDiverged, atomic_write_json, batch_at, check_checkpoint,
                    config_from_dict, load_checkpoint, open_run_dir, read_config, read_run_metrics, resume_config,
                    save_checkpoint)

#: Trackers are measured on this many training examples (a seeded subset, the same at every epoch).
TRACKER_EXAMPLES = 256


@dataclass(frozen=True)
class BpfreeConfig:
    """Everything that defines a run. Stored as config.json; BpfreeConfig.from_dict(json.load(…)) restores it."""
    task: str = "digits"
    task_options: dict = field(default_factory=dict)
    data_dir: str | None = None
    problem: str = "classification"
    algorithm: str = "bp"
    arch: str = "128-128"                 # hidden widths n_1-n_2-…
    activation: str = "tanh"
    batch_norm: bool = False
    dropout: float = 0.0
    init: str = "orthogonal"              # forward weights
    feedback_init: str = "orthogonal"     # the fixed projections B_l
    dtype: str = "float64"
    seed: int = 0
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    clip_norm: float | None = None
    schedule: str = "constant"
    log_every: int = 10
    trackers: bool = True

    @classmethod
    def from_dict(cls, d: dict, source=None) -> "BpfreeConfig":
        return config_from_dict(cls, d, source)

    @property
    def hidden(self) -> tuple:
        return parse_arch(self.arch)


@dataclass
class BpfreeResult:
    run_dir: str
    steps: int
    train_loss: float
    val_loss: float
    val_error: float | None
    test_loss: float
    test_error: float | None
    time_s: float


def parse_arch(arch) -> tuple:
    """'128-64' (or a sequence of ints) → (128, 64): the hidden widths."""
    try:
        widths = tuple(int(v) for v in (arch.split("-") if isinstance(arch, str) else arch))
    except (TypeError, ValueError):
        widths = ()
    if not widths or min(widths) < 1:
        raise UnsupportedError(f"arch {arch!r} is not allowed: give the hidden widths separated by '-', each ≥ 1, "
                               f"e.g. '128-128' (two hidden layers of 128 units)")
    return widths


def check_config(config: BpfreeConfig) -> None:
    for name in ("epochs", "batch_size", "log_every"):
        positive_int(name, getattr(config, name))
    parse_arch(config.arch)


def build(config: BpfreeConfig, *, warn: bool = True):
    """(task, net, params, buffers, feedback, optimizer config, steps per epoch, total steps) for a config; refuses
    bad combinations with the reason, and warns (BpfreeWarning) about poor ones when warn=True."""
    check_config(config)
    task = make_task(config.task, seed=config.seed, data_dir=config.data_dir,
                     **{**config.task_options, "dtype": config.dtype})
    if task.kind != "static":
        raise UnsupportedError(f"task {task.name!r} is a sequence task; the feed-forward rules train on static "
                               f"inputs (--task digits or mnist-static). Recurrent models learn by dfa/drtp through "
                               f"refimpl/algorithms/projected.py (the `dfa` and `drtp` algorithms of `train`)")
    n_out = task.n_in if config.problem == "reconstruction" else task.n_out
    widths = (task.n_in,) + config.hidden + (n_out,)
    item = np.dtype(config.dtype).itemsize            # before allocating: θ, Δ, two Adam moments and the feedback
    check_memory(f"this network ({task.n_in}-{config.arch}-{n_out})",
                 {"parameters": 5 * sum(a * b for a, b in zip(widths, widths[1:])) * item,
                  "activations": 4 * min(config.batch_size, task.train.n) * sum(widths) * item},
                 "use smaller hidden widths in --arch (or a smaller --batch-size)")
    net, params = bpfree.make_net((task.n_in,) + config.hidden + (n_out,), activation=config.activation,
                                  batch_norm=config.batch_norm, dropout=config.dropout, problem=config.problem,
                                  init=config.init, seed=config.seed, dtype=config.dtype)
    if warn:
        bpfree.warn_rule(net, config.algorithm)
    else:
        bpfree.check_rule(net, config.algorithm)
    feedback = bpfree.make_feedback(net, config.feedback_init, config.seed)
    steps_per_epoch = math.ceil(task.train.n / config.batch_size)
    total = config.epochs * steps_per_epoch
    opt = optim.OptimConfig(name=config.optimizer, lr=config.lr, weight_decay=config.weight_decay,
                            clip_norm=config.clip_norm, schedule=config.schedule, total_steps=total)
    return task, net, params, bpfree.init_buffers(net), feedback, opt, steps_per_epoch, total


def _labels(net, split, idx=None):
    if net.problem == "reconstruction":
        return None
    return split.y if idx is None else split.y[idx]


#: The options that may change when a run is resumed (as training.config.RESUME_CHANGES): more epochs, and where the
#: data lives.
RESUME_CHANGES = ("epochs", "data_dir")


def train(config: BpfreeConfig, run_dir, *, resume: bool = False, progress: bool = False,
          plot: bool = True, given: dict | None = None) -> BpfreeResult:
    """Train `config` into `run_dir` (created), or continue it with resume=True. See the module doc. On resume the
    stored config wins; `given` ({field: option}) names the options the user set: those in RESUME_CHANGES are taken
    from `config`, any other that differs from the stored value is refused (runs.resume_config)."""
    run = open_run_dir(run_dir, resume)
    if run.saved_config is not None:
        saved = BpfreeConfig.from_dict(run.saved_config, run.config)
        config = saved if given is None else resume_config(saved, config, given, RESUME_CHANGES)
    run_dir, ckpt_path = run.path, run.checkpoint
    task, net, params, buffers, feedback, opt, steps_per_epoch, total = build(config, warn=not resume)
    opt_state = optim.init_state(params, opt)
    start = 0
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        groups = {"buffer": {}, "fixed": {}, **ckpt.groups}
        check_checkpoint(ckpt_path, parameters=(ckpt.params, params), optimizer_state=(ckpt.opt_state, opt_state),
                         buffers=(groups.pop("buffer"), buffers), feedback=(groups.pop("fixed"), feedback),
                         **{g: (v, {}) for g, v in groups.items()})
        start, params, opt_state = ckpt.step, ckpt.params, ckpt.opt_state
        buffers, feedback = ckpt.groups.get("buffer", {}), ckpt.groups.get("fixed", {})
        if start > total:
            raise UnsupportedError(f"the run in {run_dir} has done {start} steps, more than the {total} that its "
                                   f"--epochs now give; give at least as many epochs")
    elif not resume:
        atomic_write_json(run.config, asdict(config))
    log = MetricsLog(run_dir / "metrics.jsonl", keep_until_step=start if resume else None)
    tracked = np.sort(np.random.default_rng([config.seed, 3]).permutation(task.train.n)[:TRACKER_EXAMPLES])
    x_track, y_track = task.train.x[tracked], _labels(net, task.train, tracked)

    t0 = time.perf_counter()
    bar = ProgressBar(total, start) if progress else None
    last = {}
    try:
        for k in range(start, total):
            epoch, idx = batch_at(config.seed, k, steps_per_epoch, task.train.n, config.batch_size)   # (1)
            x = task.train.x[idx]
            with np.errstate(all="ignore"):          # a blow-up is detected just below and reported
                st = bpfree.rule_grads(net, params, feedback, x, _labels(net, task.train, idx), config.algorithm,
                                       buffers=buffers, rng=np.random.default_rng([config.seed, 2, k]))   # (2)
                try:
                    new, opt_state, info = optim.step(params, st.grads, opt_state, opt)          # (3)
                except NumericalError as e:
                    raise TrainingDiverged.at(k + 1, str(e), ckpt_path) from None
            if not math.isfinite(st.loss):
                raise TrainingDiverged.at(k + 1, f"the loss is {st.loss}", ckpt_path)
            bad = [n for n, v in new.items() if not np.all(np.isfinite(v))]
            if bad:
                raise TrainingDiverged.at(k + 1, f"the update made {bad[0]!r} non-finite", ckpt_path)
            params, buffers = new, st.buffers
            step = k + 1
            last = {"loss": st.loss}
            if step % config.log_every == 0 or step == total:
                log.write({"split": "train", "step": step, "epoch": epoch, "loss": st.loss, "lr": info["lr"],
                           "grad_norm": info["grad_norm"], "time_s": time.perf_counter() - t0})
            if step % steps_per_epoch == 0 or step == total:                                 # end of an epoch
                val_loss, val_err = bpfree.evaluate(net, params, task.val.x, _labels(net, task.val), buffers)
                last.update(val_loss=val_loss, val_acc=None if val_err is None else 1 - val_err / 100)
                log.write({"split": "val", "step": step, "epoch": epoch, "loss": val_loss, "error": val_err,
                           "time_s": time.perf_counter() - t0})
                if config.trackers:
                    with np.errstate(all="ignore"):
                        tr = bpfree.trackers(net, params, feedback, x_track, y_track, config.algorithm)
                    log.write({"split": "tracker", "step": step, "epoch": epoch, **tr})
                save_checkpoint(ckpt_path, step, params, opt_state, buffer=buffers, fixed=feedback)
            if bar is not None:
                bar.update(1, last)
        test_loss, test_err = bpfree.evaluate(net, params, task.test.x, _labels(net, task.test), buffers)
        val_loss, val_err = bpfree.evaluate(net, params, task.val.x, _labels(net, task.val), buffers)
        train_loss, _ = bpfree.evaluate(net, params, x_track, y_track, buffers)
        elapsed = time.perf_counter() - t0
        log.write({"split": "test", "step": total, "epoch": (total - 1) // steps_per_epoch, "loss": test_loss,
                   "error": test_err, "time_s": elapsed})
    finally:
        log.close()
        if bar is not None:
            bar.close()
    result = BpfreeResult(str(run_dir), total, train_loss, val_loss, val_err, test_loss, test_err, elapsed)
    atomic_write_json(run_dir / "result.json", asdict(result))
    if plot:
        plot_run(run_dir, run_dir / "trackers.png")
    return result


def plot_run(run_dir, out_path, title: str | None = None) -> Path:
    """Four panels from a run's metrics.jsonl: training loss, validation error (or loss), bp-cosine and
    weight-alignment per layer, against the epoch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_run_metrics(run_dir / "metrics.jsonl")
    if not records:
        raise UnsupportedError(f"{run_dir} has no metrics.jsonl with records; give a run directory written by "
                               f"`python -m refimpl.run bpfree`")
    config = read_config(run_dir / "config.json")
    train_r = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    tr = [r for r in records if r["split"] == "tracker"]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    axes[0].plot([r["step"] for r in train_r], [r["loss"] for r in train_r])
    axes[0].set_yscale("log")
    axes[0].set_title("training loss")
    axes[0].set_xlabel("step")
    classify = bool(val) and val[0].get("error") is not None
    axes[1].plot([r["epoch"] + 1 for r in val], [r["error"] if classify else r["loss"] for r in val], "o-")
    axes[1].set_title("validation error (%)" if classify else "validation loss")
    for ax, key, name in ((axes[2], "bp_cosine", "bp-cosine: cos(update, BP gradient)"),
                          (axes[3], "weight_alignment",
                           "weight-alignment: cos(W_l, B_l B_{l-1}ᵀ); out: cos(W_o, B_Lᵀ)")):
        if tr:
            for j, layer in enumerate(tr[0]["layers"]):
                values = [r[key][j] for r in tr]
                if any(v is not None for v in values):
                    ax.plot([r["epoch"] + 1 for r in tr], [np.nan if v is None else v for v in values], "o-",
                            label=layer)
            ax.legend(fontsize=7)
        ax.set_title(name, fontsize=9)
    for ax in axes[1:]:
        ax.set_xlabel("epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title or f"{config['task']} {config['problem']}: {config['algorithm']}, {config['arch']} "
                          f"{config['activation']}, lr {config['lr']:g}", fontsize=10)
    return save_figure(fig, out_path)
