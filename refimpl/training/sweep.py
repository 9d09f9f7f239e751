"""The tuning workflow: a grid over the feed-forward rules' options, one run directory per trial, a local process
pool, resumable, selected on the validation split.

    run_sweep(base, grid, out_dir, workers=1) -> SweepSummary

Grid. `grid` maps BpfreeConfig fields (GRID_FIELDS: algorithm, activation, init, feedback_init, lr, arch,
batch_norm, dropout) to lists of values; the trials are their product, on top of the `base` config (lr_grid gives a
log-spaced learning-rate list). A combination the rules refuse (drtp or ll-ce for reconstruction) is not run: it is
listed with its reason. The ones that run with a warning (drtp with an unbounded activation) are run, and the
warning is printed once.

The sweep directory:
    sweep.json          the base config and the grid (a rerun must give the same; another grid needs another --out)
    .lock               held by the running sweep process (a second sweep on the same directory is refused)
    sweep.jsonl         one event per line, flushed: {"event": "start" | "resume" | "done" | "diverged" | "skip",
                        "trial": name}
    trials/<name>/      one run directory per trial (refimpl/training/feedforward.py: config.json,
                        metrics.jsonl, checkpoint, result.json); a diverged trial's result.json says
                        {"status": "diverged", "message": …}
    summary.json        every trial's numbers and the best trial per algorithm
    summary.png         validation error against the learning rate per algorithm, and the best trials' curves

Resume. Running the same sweep again (after a crash, a kill, or on purpose) skips every trial whose result.json
exists, continues a trial that has a run directory but no result from its last checkpoint (the feed-forward trainer's
exact resume), and starts the others. Trial names are derived from the config (a readable part and a hash of the
whole config), so a trial is recognised whatever order the pool ran it in. Pool workers end themselves when the sweep
process dies, so a killed sweep leaves no orphan finishing its queued trials behind the resumed one.

Selection is on the validation split only: per algorithm, the trial with the lowest validation error
(classification; ties by validation loss) or validation loss (reconstruction). The test error of the chosen trial is
reported, never used to choose.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import multiprocessing
import os
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import bpfree, optim
from ..errors import BpfreeWarning, NumericalError, UnknownNameError, UnsupportedError
from ..plotting import save_figure
from ..runs import atomic_write_json, read_metrics
from .feedforward import BpfreeConfig, check_config, parse_arch, train

GRID_FIELDS = ("algorithm", "activation", "init", "feedback_init", "lr", "arch", "batch_norm", "dropout")
#: The readable part of a trial's name: these fields, in this order, when the grid varies them (or always: algorithm).
_NAME_FIELDS = {"algorithm": "", "activation": "", "init": "fw-", "feedback_init": "fb-", "lr": "lr", "arch": "",
                "batch_norm": "bn", "dropout": "drop"}


@dataclass(frozen=True)
class Trial:
    name: str
    config: BpfreeConfig


@dataclass
class SweepSummary:
    out_dir: str
    trials: list            # one record per trial: name, grid values, status, val/test numbers
    best: dict              # {algorithm: record of the chosen trial}
    refused: list           # [{"config": grid values, "reason": …}]
    ran: list               # names of the trials this call trained (started or resumed)
    skipped: list           # names of the trials found finished
    table: str = ""


def lr_grid(lr_min: float, lr_max: float, points: int) -> list:
    """`points` learning rates spaced evenly on a log scale from lr_min to lr_max (3 significant digits)."""
    if not (lr_min > 0 and lr_max >= lr_min):
        raise UnsupportedError(f"the learning-rate grid needs 0 < lr_min ≤ lr_max, got {lr_min}, {lr_max}; e.g. "
                               f"--lr-min 1e-4 --lr-max 1e-2")
    if isinstance(points, bool) or not isinstance(points, int) or points < 1:
        raise UnsupportedError(f"the learning-rate grid needs points ≥ 1, got {points!r}")
    if points == 1 or lr_min == lr_max:
        return [float(f"{lr_min:.3g}")]
    return [float(f"{v:.3g}") for v in np.geomspace(lr_min, lr_max, points)]


def _check_grid(grid: dict) -> dict:
    unknown = sorted(set(grid) - set(GRID_FIELDS))
    if unknown:
        raise UnknownNameError("grid field", unknown[0], GRID_FIELDS, "a sweep varies these config fields")
    out = {}
    for k, values in grid.items():
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if not values:
            raise UnsupportedError(f"the grid lists no values for {k!r}; give at least one")
        if len(set(map(repr, values))) != len(values):
            raise UnsupportedError(f"the grid lists a value of {k!r} twice: {values}")
        out[k] = values
    for a in out.get("algorithm", []):
        if a not in bpfree.RULES:
            raise UnknownNameError("learning rule", a, bpfree.RULES)
    for name, allowed in (("activation", bpfree.ACTIVATIONS), ("init", bpfree.INITS),
                          ("feedback_init", bpfree.INITS)):
        for v in out.get(name, []):
            if v not in allowed:
                raise UnknownNameError(name.replace("_", " "), v, allowed)
    for v in out.get("arch", []):
        parse_arch(v)
    return out


def _fmt(field: str, value) -> str:
    if field == "lr":
        return f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e")
    if field == "batch_norm":
        return "on" if value else "off"
    return str(value)


def trial_name(config: BpfreeConfig, varied) -> str:
    """'<algorithm>_<varied values>_<hash>': readable, and unique for the whole config."""
    digest = hashlib.sha1(json.dumps(asdict(config), sort_keys=True).encode()).hexdigest()[:8]
    parts = [_NAME_FIELDS[f] + _fmt(f, getattr(config, f)) for f in _NAME_FIELDS
             if f == "algorithm" or f in varied]
    return "_".join(parts + [digest])


def expand(base: BpfreeConfig, grid: dict) -> tuple[list[Trial], list[dict], list[str]]:
    """(trials to run, refused combinations with their reasons, warnings) of the grid on top of base."""
    grid = _check_grid(grid)
    varied = [k for k, v in grid.items() if len(v) > 1]
    keys = list(grid)
    trials, refused, warned = [], [], []
    for values in itertools.product(*(grid[k] for k in keys)):
        config = dataclasses.replace(base, **dict(zip(keys, values)))
        check_config(config)                                      # every trial's settings, before any runs
        optim.OptimConfig(name=config.optimizer, lr=config.lr, weight_decay=config.weight_decay,
                          clip_norm=config.clip_norm, schedule=config.schedule)
        net = bpfree.Net(sizes=(2,) + config.hidden + (2,), activation=config.activation, problem=config.problem)
        try:
            bpfree.check_rule(net, config.algorithm)
        except UnsupportedError as e:
            refused.append({"config": dict(zip(keys, values)), "reason": str(e)})
            continue
        for w in bpfree.rule_warnings(net, config.algorithm):
            if w not in warned:
                warned.append(w)
        trials.append(Trial(trial_name(config, varied), config))
    return trials, refused, warned


def trial_status(trial_dir: Path) -> str:
    """'done' (result.json written), 'partial' (a run directory without a result) or 'new'."""
    if (trial_dir / "result.json").exists():
        return "done"
    return "partial" if (trial_dir / "config.json").exists() else "new"


def run_trial(config: dict, trial_dir: str) -> dict:
    """Train one trial (resuming it if it has a run directory). Runs in a worker process; returns its record."""
    trial_dir = Path(trial_dir)
    resume = trial_status(trial_dir) == "partial"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BpfreeWarning)      # the sweep prints each warning once
        try:
            r = train(BpfreeConfig.from_dict(config), trial_dir, resume=resume, plot=False)
        except NumericalError as e:
            record = {"status": "diverged", "message": str(e)}
            atomic_write_json(trial_dir / "result.json", record)
            return {**record, "resumed": resume}
    return {"status": "ok", **asdict(r), "resumed": resume}


class _Events:
    """Append-only sweep.jsonl."""

    def __init__(self, path: Path):
        self._f = open(path, "a")

    def write(self, event: str, trial: str, **extra) -> None:
        self._f.write(json.dumps({"event": event, "trial": trial, "time": time.time(), **extra}) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _lock(out: Path):
    """An exclusive lock on out/.lock for this process's lifetime (released by the OS when it dies): two live sweeps
    must not write the same trials. POSIX only; elsewhere the lock is not taken."""
    f = open(out / ".lock", "w")
    try:
        import fcntl
    except ImportError:
        return f
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise UnsupportedError(f"another sweep process is running in {out}; wait for it to finish (or stop it) "
                               f"before resuming this sweep") from None
    return f


def read_events(out_dir) -> list[dict]:
    return read_metrics(Path(out_dir) / "sweep.jsonl")


def run_sweep(base: BpfreeConfig, grid: dict, out_dir, *, workers: int = 1, echo=None) -> SweepSummary:
    """Run (or continue) the sweep into out_dir; see the module doc. echo(str) receives progress lines.

    workers > 1 runs the trials on spawned worker processes: a script that calls this must guard its entry point
    with ``if __name__ == "__main__":`` (the CLI does), as for any spawned multiprocessing pool.
    """
    echo = echo or (lambda s: None)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UnsupportedError(f"workers must be a positive integer, got {workers!r}")
    trials, refused, warned = expand(base, grid)
    if not trials:
        raise UnsupportedError("the grid has no runnable combination: "
                               + "; ".join(sorted({r["reason"] for r in refused})))
    out = Path(out_dir)
    spec = {"base": asdict(base), "grid": _check_grid(grid)}
    spec_path = out / "sweep.json"
    if spec_path.exists():
        if json.loads(spec_path.read_text()) != json.loads(json.dumps(spec)):
            raise UnsupportedError(f"{out} holds another sweep (a different base config or grid, see its sweep.json); "
                                   f"rerun that sweep's command to continue it, or choose another --out")
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(spec_path, spec)
    for w in warned:
        echo(f"warning: {w}")
    for r in refused:
        echo(f"refused {r['config']}: {r['reason']}")
    lock = _lock(out)
    events = _Events(out / "sweep.jsonl")
    dirs = {t.name: out / "trials" / t.name for t in trials}
    skipped = [t.name for t in trials if trial_status(dirs[t.name]) == "done"]
    pending = [t for t in trials if t.name not in skipped]
    for name in skipped:
        events.write("skip", name)
    echo(f"{len(trials)} trials: {len(skipped)} finished (skipped), {len(pending)} to run, {workers} worker(s)")

    def finished(t: Trial, record: dict, k: int) -> None:
        events.write("diverged" if record["status"] == "diverged" else "done", t.name)
        what = (f"val error {record['val_error']:.2f}%" if record.get("val_error") is not None else
                f"val loss {record['val_loss']:.4f}") if record["status"] == "ok" else "diverged"
        echo(f"[{k}/{len(pending)}] {t.name}: {what}")

    try:
        for t in pending:
            events.write("resume" if trial_status(dirs[t.name]) == "partial" else "start", t.name)
        if workers == 1:
            for k, t in enumerate(pending, 1):
                finished(t, run_trial(asdict(t.config), str(dirs[t.name])), k)
        else:
            _run_pool(pending, dirs, workers, finished)
    finally:
        events.close()
        lock.close()
    summary = summarize(out, trials, refused)
    summary.ran, summary.skipped = [t.name for t in pending], skipped
    return summary


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: end this worker as soon as the sweep process is gone (killed, crashed), instead of
    finishing the trials already queued to it as an orphan, racing the sweep that resumes them."""
    def watch():
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def _run_pool(pending: list, dirs: dict, workers: int, finished) -> None:
    """The trials on a local process pool (spawned workers, one BLAS thread each: the trials are the parallelism)."""
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update({k: "1" for k in saved})            # inherited by the spawned workers
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_exit_with_parent, initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(run_trial, asdict(t.config), str(dirs[t.name])): t for t in pending}
            for k, f in enumerate(as_completed(futures), 1):
                finished(futures[f], f.result(), k)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ----------------------------------------------------------------------------------------------------------------
# Selection, table, plot

def _score(record: dict) -> tuple:
    """Lower is better: validation error (classification) then validation loss."""
    err = record.get("val_error")
    return (err if err is not None else record["val_loss"], record["val_loss"])


def summarize(out_dir, trials: list, refused: list = ()) -> SweepSummary:
    """Read every trial's result, choose the best per algorithm on validation, write summary.json and summary.png."""
    out = Path(out_dir)
    records = []
    for t in trials:
        path = out / "trials" / t.name / "result.json"
        res = json.loads(path.read_text()) if path.exists() else {"status": "missing"}
        records.append({"name": t.name, **{f: getattr(t.config, f) for f in GRID_FIELDS},
                        "status": res.get("status", "ok"),
                        **{k: res.get(k) for k in ("val_loss", "val_error", "test_loss", "test_error", "time_s")}})
    best = {}
    for r in records:
        if r["status"] == "ok" and (r["algorithm"] not in best or _score(r) < _score(best[r["algorithm"]])):
            best[r["algorithm"]] = r
    best = {a: best[a] for a in bpfree.RULES if a in best}
    summary = SweepSummary(str(out), records, best, list(refused), [], [])
    summary.table = format_table(summary, trials)
    atomic_write_json(out / "summary.json", {"trials": records, "best": best, "refused": list(refused)})
    plot_summary(summary, out / "summary.png")
    return summary


def _varied(records: list) -> list[str]:
    return [f for f in GRID_FIELDS if f != "algorithm" and len({repr(r[f]) for r in records}) > 1]


def format_table(summary: SweepSummary, trials: list) -> str:
    """The best configuration per algorithm (chosen on validation), with its validation and test numbers."""
    records = summary.trials
    shown = [f for f in ("activation", "init", "feedback_init", "lr", "arch", "batch_norm", "dropout")
             if f in _varied(records) or f in ("activation", "lr", "arch", "feedback_init")]
    classify = any(r.get("val_error") is not None for r in records)
    metric = ("val err %", "test err %") if classify else ("val loss", "test loss")
    head = (f"{'algorithm':<9} " + " ".join(f"{f.replace('_', '-'):<13}" for f in shown)
            + f" {metric[0]:>10} {metric[1]:>10} {'trials':>7} {'diverged':>8}")
    lines = [head, "-" * len(head)]
    for a, r in summary.best.items():
        n = sum(1 for x in records if x["algorithm"] == a)
        bad = sum(1 for x in records if x["algorithm"] == a and x["status"] == "diverged")
        vals = (r["val_error"], r["test_error"]) if classify else (r["val_loss"], r["test_loss"])
        lines.append(f"{a:<9} " + " ".join(f"{format(r[f], '.3g') if f == 'lr' else str(r[f]):<13}" for f in shown)
                     + f" {vals[0]:>10.2f} {vals[1]:>10.2f} {n:>7} {bad:>8}")
    for a in bpfree.RULES:
        if a not in summary.best and any(x["algorithm"] == a for x in records):
            lines.append(f"{a:<9} no trial finished without diverging")
    lines.append("chosen on the validation split; the test column is reported, never used to choose")
    by_name = {t.name: t.config for t in trials}
    for a, r in summary.best.items():
        lines.append(f"best {a}: " + reproduce_command(by_name[r["name"]]))
    lines.append(f"trials in {summary.out_dir}/trials/<name>; summary.json, summary.png")
    return "\n".join(lines)


def reproduce_command(config: BpfreeConfig) -> str:
    """The `bpfree` command line that trains this config alone."""
    d = BpfreeConfig()
    flags = {"task": "--task", "problem": "--problem", "algorithm": "--algorithm", "arch": "--arch",
             "activation": "--activation", "dropout": "--dropout", "init": "--init",
             "feedback_init": "--feedback-init", "dtype": "--dtype", "seed": "--seed", "epochs": "--epochs",
             "batch_size": "--batch-size", "optimizer": "--optimizer", "lr": "--lr", "weight_decay": "--weight-decay",
             "schedule": "--schedule"}
    parts = ["python -m refimpl.run bpfree"]
    for f, flag in flags.items():
        v = getattr(config, f)
        if v != getattr(d, f) or f in ("algorithm", "lr", "arch", "epochs"):
            parts.append(f"{flag} {v}")
    if config.batch_norm:
        parts.append("--batch-norm")
    parts += [f"-t {k}={v}" for k, v in config.task_options.items()]
    return " ".join(parts)


def plot_summary(summary: SweepSummary, out_path) -> Path:
    """Left: the best validation error (or loss) at each learning rate, per algorithm. Right: the best trials'
    validation curves."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in summary.trials if r["status"] == "ok"]
    classify = any(r.get("val_error") is not None for r in records)
    key = "val_error" if classify else "val_loss"
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for a in bpfree.RULES:
        rs = [r for r in records if r["algorithm"] == a]
        if not rs:
            continue
        lrs = sorted({r["lr"] for r in rs})
        line, = axes[0].plot(lrs, [min(r[key] for r in rs if r["lr"] == lr) for lr in lrs], "o-", label=a)
        if a in summary.best:
            metrics = read_metrics(Path(summary.out_dir) / "trials" / summary.best[a]["name"] / "metrics.jsonl")
            val = [m for m in metrics if m["split"] == "val"]
            axes[1].plot([m["epoch"] + 1 for m in val], [m["error"] if classify else m["loss"] for m in val],
                         "o-", color=line.get_color(), label=f"{a} (lr {summary.best[a]['lr']:g})")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("learning rate")
    axes[0].set_title(f"best validation {'error (%)' if classify else 'loss'} per learning rate")
    axes[1].set_xlabel("epoch")
    axes[1].set_title("the chosen trials: validation " + ("error (%)" if classify else "loss"))
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out_path)

