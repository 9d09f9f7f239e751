"""Sweeps and seeds for every experiment: a grid over any configuration field, times seeds, in two stages, on Dask.

    run_sweep(base, grid, out_dir, scheduler=None, workers=None, seeds=None, executions=1,
              group_by=("algorithm",), objective=None) -> SweepSummary

Kinds. `base` says what is trained: a TrainConfig (refimpl/training/loop.py: any task × cell × algorithm × backend,
EP networks on static tasks) or a BpfreeConfig (refimpl/training/feedforward.py: the feed-forward rules).
`grid` maps fields of that config to lists of values; a dict field's entries are fields too, dotted
("cell_options.r_min", "algorithm_options.K", "task_options.seq_len"), with short names for the common ones
(ALIASES: r_min, T, K, beta; examples_frac, skew, imbalance — tasks/subsets.py). lr_grid gives a log-spaced
learning-rate list. An unknown field, a field of the other kind, an empty list or a repeated value is refused before
anything runs.

Two stages, as the papers do:
    (1) scan    every grid point × `executions` seeds (base.seed, base.seed + 1, …); a point's score is the mean of
                its executions' `objective` ("val_error" — the default where there is an accuracy —, "val_loss",
                or "loss": the final training loss)
    (2) seeds   per group (`group_by` fields, default the algorithm), the point with the lowest score (ties: the
                lower mean validation loss) is rerun with `seeds` seeds (base.seed … base.seed + seeds − 1;
                default: the executions). A trial is named by its whole config (trial_name), so a seed that the
                scan already ran is not run again.
The table reports, per group, the chosen point and the mean ± std (ddof 1) over its seeds of the validation and
test metrics. The choice is made on `objective` only; the test column is reported, never used to choose.

A combination that cannot run is not run: the feed-forward rules refuse some (drtp, ll-ce for reconstruction) when
the grid is expanded; a recurrent combination refused at its start (an UnsupportedError) is recorded as "refused"
with its reason. A trial that diverges is recorded as "diverged" (its score is +∞).

The sweep directory:
    sweep.json          kind, base config and grid — a rerun must give the same (another grid needs another
                        --out) — and the last run's seeds, executions, group_by, objective (these may change: e.g.
                        rerun with more --seeds, and only the new seeds' trials run)
    .lock               held by the running sweep process (a second live sweep on the same directory is refused)
    sweep.jsonl         one event per line, flushed: {"event": "start" | "resume" | "done" | "diverged" | "refused"
                        | "failed" | "skip", "trial": name, "stage": "scan" | "seeds"}
    trials/<name>/      one run directory per trial (config.json, metrics.jsonl, checkpoint.npz, result.json);
                        result.json of a diverged or refused trial says {"status": …, "message": …}
    summary.json        every trial's numbers, the chosen point per group and its seeds' mean ± std
    summary.png         the objective against the learning rate per group; the chosen runs' validation curves, mean
                        and spread over the seeds

Where trials run: refimpl/training/executor.py (inline, an embedded Dask LocalCluster — the default —, or an existing
Dask cluster by address). Resume: running the same sweep again (after a crash, a kill, or on purpose) skips every
trial with a result.json, continues a trial that has a run directory but no result from its last checkpoint (the
trainers' exact resume), and starts the others. A trial is one Dask task keyed by its name; a worker that dies
mid-trial makes the scheduler run it again elsewhere, from the last checkpoint. Each trial holds trials/<name>/.lock
while it trains, so a straggler of a killed sweep (on an existing cluster, a running task is not interrupted) and
its resumed twin never write one directory at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from tasks import task_kind

from .. import bpfree, optim
from ..algorithms import ALGORITHMS
from ..cells import CELLS
from ..errors import BpfreeWarning, NumericalError, RefimplError, UnknownNameError, UnsupportedError
from ..plotting import save_figure
from ..runs import atomic_write_json, read_metrics
from . import feedforward, loop, tracking
from .config import TrainConfig, check_config as check_train_config
from .executor import check_address, open_executor
from .feedforward import BpfreeConfig, parse_arch

KINDS = {"train": TrainConfig, "bpfree": BpfreeConfig}
#: Short names of dotted fields.
ALIASES = {"train": {"r_min": "cell_options.r_min", "T": "algorithm_options.T", "K": "algorithm_options.K",
                     "beta": "algorithm_options.beta", "examples_frac": "task_options.examples_frac",
                     "skew": "task_options.skew", "imbalance": "task_options.imbalance"},
           "bpfree": {"examples_frac": "task_options.examples_frac", "skew": "task_options.skew",
                      "imbalance": "task_options.imbalance"}}
OBJECTIVES = ("val_error", "val_loss", "loss")
#: What makes a sweep directory's trials: another value of these needs another directory. The seeds, executions,
#: objective and groups may change between runs of one sweep (the trials are reused by name, more are added).
_IDENTITY = ("kind", "base", "grid")
#: Fields a grid never varies: the seeds are the sweep's own dimension; data_dir is where the data lies.
_NOT_GRID = ("seed", "data_dir")
#: Kept for the feed-forward sweep's callers: the fields its CLI varies.
GRID_FIELDS = ("algorithm", "activation", "init", "feedback_init", "lr", "arch", "batch_norm", "dropout")
_SHORT = {"init": "fw-", "feedback_init": "fb-", "lr": "lr", "batch_norm": "bn", "dropout": "drop",
          "hidden": "h", "layers": "L", "r_min": "rmin", "seq_len": "T", "examples_frac": "frac"}


@dataclass(frozen=True)
class Trial:
    name: str
    config: object          # TrainConfig | BpfreeConfig
    point: tuple            # the grid values, in the grid's order
    seed: int


@dataclass
class SweepSummary:
    out_dir: str
    trials: list            # one record per trial: name, stage, seed, grid values, status, numbers
    best: dict              # {group: the chosen scan trial's record + its seeds' mean ± std}
    refused: list           # [{"config": grid values, "reason": …}]
    ran: list               # names of the trials this call trained (started or resumed)
    skipped: list           # names of the trials found finished
    table: str = ""


def kind_of(base) -> str:
    for name, cls in KINDS.items():
        if isinstance(base, cls):
            return name
    raise UnsupportedError(f"a sweep's base config is a TrainConfig or a BpfreeConfig, got {type(base).__name__}")


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


# ----------------------------------------------------------------------------------------------------------------
# Fields and the grid

def _dict_fields(cls) -> list[str]:
    return [f.name for f in fields(cls) if f.name.endswith("_options")]


def sweep_fields(kind: str) -> list[str]:
    """The fields a grid of this kind may vary (dict fields as '<field>.KEY', and the short names)."""
    cls = KINDS[kind]
    plain = [f.name for f in fields(cls) if f.name not in _NOT_GRID and f.name not in _dict_fields(cls)]
    return plain + [f"{d}.KEY" for d in _dict_fields(cls)] + list(ALIASES[kind])


def resolve_field(kind: str, name: str) -> str:
    """The config field (or 'dict.key') a grid name stands for; refuses unknown names and the other kind's."""
    name = ALIASES[kind].get(name, name)
    cls = KINDS[kind]
    if name in _NOT_GRID:
        raise UnsupportedError(f"the grid cannot vary {name!r}: " + (
            "the seeds are the sweep's own dimension; use seeds / executions (--seeds, --executions)"
            if name == "seed" else "it says where the data lies, give it in the base config"))
    if "." in name:
        head, key = name.split(".", 1)
        if head in _dict_fields(cls) and key:
            return name
    elif name in {f.name for f in fields(cls)} and name not in _dict_fields(cls):
        return name
    for other, other_cls in KINDS.items():
        if other != kind and (name in {f.name for f in fields(other_cls)} or name in ALIASES[other]):
            raise UnsupportedError(f"field {name!r} does not apply to a {kind} sweep (it is a field of {other} "
                                   f"sweeps); a {kind} sweep varies: {', '.join(sweep_fields(kind))}")
    raise UnknownNameError("grid field", name, sweep_fields(kind), f"a {kind} sweep varies these config fields")


def check_grid(kind: str, grid: dict) -> dict:
    """{resolved field: [values]}: every field known to the kind, each with at least one value, none twice."""
    if not grid:
        raise UnsupportedError("the grid is empty; give at least one field with values, e.g. "
                               "{'lr': [1e-3, 1e-2]} (--lrs 1e-3,1e-2)")
    out = {}
    for name, values in grid.items():
        field = resolve_field(kind, name)
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if not values:
            raise UnsupportedError(f"the grid lists no values for {name!r}; give at least one")
        if len(set(map(repr, values))) != len(values):
            raise UnsupportedError(f"the grid lists a value of {name!r} twice: {values}")
        if field in out:
            raise UnsupportedError(f"the grid names {field!r} twice (as {name!r} too); name it once")
        out[field] = values
    return out


def with_values(config, assignment: dict):
    """config with the fields (and 'dict.key' entries) of `assignment` replaced."""
    changes = {}
    for field, value in assignment.items():
        if "." in field:
            head, key = field.split(".", 1)
            changes[head] = {**changes.get(head, getattr(config, head)), key: value}
        else:
            changes[field] = value
    return dataclasses.replace(config, **changes)


def _check_names(kind: str, grid: dict) -> None:
    """The named choices of the grid, before any trial runs."""
    tables = ({"algorithm": ("learning rule", bpfree.RULES), "activation": ("activation", bpfree.ACTIVATIONS),
               "init": ("init", bpfree.INITS), "feedback_init": ("feedback init", bpfree.INITS)}
              if kind == "bpfree" else
              {"algorithm": ("algorithm", ALGORITHMS), "cell": ("cell", CELLS)})
    for field, (what, allowed) in tables.items():
        for v in grid.get(field, []):
            if v not in allowed:
                raise UnknownNameError(what, v, allowed)
    for v in grid.get("task", []):
        task_kind(v)
    for v in grid.get("arch", []):
        parse_arch(v)


def _check_trial(kind: str, config) -> str | None:
    """Refuse bad settings (raises); return the reason a valid combination is refused, or None when it runs."""
    optim.OptimConfig(name=config.optimizer, lr=config.lr, weight_decay=config.weight_decay,
                      clip_norm=config.clip_norm, schedule=config.schedule)
    if kind == "train":
        check_train_config(config)
        task_kind(config.task)
        return None
    feedforward.check_config(config)
    net = bpfree.Net(sizes=(2,) + config.hidden + (2,), activation=config.activation, problem=config.problem)
    try:
        bpfree.check_rule(net, config.algorithm)
    except UnsupportedError as e:
        return str(e)
    return None


def _fmt(field: str, value) -> str:
    key = field.split(".")[-1]
    if key == "lr":
        text = f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e")
    elif isinstance(value, bool):
        text = "on" if value else "off"
    else:
        text = str(value)
    text = _SHORT.get(key, "" if key in ("algorithm", "activation", "cell", "task", "arch") else key) + text
    return "".join(c if c.isalnum() or c in "-.+" else "-" for c in text)


def trial_name(config, varied) -> str:
    """'<algorithm>_<varied values>_s<seed>_<hash>': readable, and unique for the whole config (the same name
    whatever the number of seeds of the sweep, so adding seeds reuses the trials that ran)."""
    digest = hashlib.sha1(json.dumps(asdict(config), sort_keys=True, default=str).encode()).hexdigest()[:8]
    parts = [_fmt("algorithm", config.algorithm)] + [
        _fmt(f, _value(config, f)) for f in varied if f != "algorithm"]
    parts.append(f"s{config.seed}")
    return "_".join(parts + [digest])


def _value(config, field: str):
    if "." in field:
        head, key = field.split(".", 1)
        return getattr(config, head).get(key)
    return getattr(config, field)


def expand(base, grid: dict, seeds=None) -> tuple[list[Trial], list[dict], list[str]]:
    """(trials to run, refused combinations with their reasons, warnings) of the grid on top of base, each grid point
    once per seed in `seeds` (default: base.seed alone)."""
    kind = kind_of(base)
    grid = check_grid(kind, grid)
    _check_names(kind, grid)
    seeds = [base.seed] if seeds is None else list(seeds)
    varied = [k for k, v in grid.items() if len(v) > 1]
    keys = list(grid)
    trials, refused, warned = [], [], []
    for values in itertools.product(*(grid[k] for k in keys)):
        config = with_values(base, dict(zip(keys, values)))
        reason = _check_trial(kind, config)
        if reason is not None:
            refused.append({"config": dict(zip(keys, values)), "reason": reason})
            continue
        if kind == "bpfree":
            net = bpfree.Net(sizes=(2,) + config.hidden + (2,), activation=config.activation, problem=config.problem)
            warned += [w for w in bpfree.rule_warnings(net, config.algorithm) if w not in warned]
        for seed in seeds:
            c = dataclasses.replace(config, seed=seed)
            trials.append(Trial(trial_name(c, varied), c, tuple(values), seed))
    return trials, refused, warned


# ----------------------------------------------------------------------------------------------------------------
# One trial (runs on a worker)

def trial_status(trial_dir: Path) -> str:
    """'done' (result.json written), 'partial' (a run directory without a result) or 'new'."""
    if (trial_dir / "result.json").exists():
        return "done"
    return "partial" if (trial_dir / "config.json").exists() else "new"


def _numbers(kind: str, result: dict) -> dict:
    """The trainers' results in one vocabulary: losses, and errors in % (None where there is no accuracy)."""
    if kind == "train":
        def err(acc):
            return None if acc is None else 100.0 * (1.0 - acc)
        return {"train_loss": result["train_loss"], "val_loss": result["val_loss"],
                "val_error": err(result["val_accuracy"]), "test_loss": result["test_loss"],
                "test_error": err(result["test_accuracy"]), "time_s": result["time_s"]}
    return {k: result[k] for k in ("train_loss", "val_loss", "val_error", "test_loss", "test_error", "time_s")}


def run_trial(kind: str, config: dict, trial_dir: str, log: tuple = ()) -> dict:
    """Train one trial (resuming it if it has a run directory; reading its result if it has one). Runs on a worker;
    returns its record. Holds trials/<name>/.lock while it trains."""
    trial_dir = Path(trial_dir)
    trial_dir.mkdir(parents=True, exist_ok=True)
    with _trial_lock(trial_dir):
        status = trial_status(trial_dir)
        if status == "done":
            record = json.loads((trial_dir / "result.json").read_text())
            return {**_record(kind, record), "resumed": False}
        resume = status == "partial"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BpfreeWarning)      # the sweep prints each warning once
            try:
                if kind == "train":
                    r = loop.train(TrainConfig.from_dict(config), trial_dir, resume=resume)
                else:
                    r = feedforward.train(BpfreeConfig.from_dict(config), trial_dir, resume=resume, plot=False)
            except NumericalError as e:
                record = {"status": "diverged", "message": str(e)}
            except RefimplError as e:                          # a combination the trainer refuses at its start
                record = {"status": "refused", "message": str(e)}
            else:
                record = None
        if record is not None:
            atomic_write_json(trial_dir / "result.json", record)
            return {**record, "resumed": resume}
    if log:
        tracking.export_run(trial_dir, log)
    return {"status": "ok", **_numbers(kind, asdict(r)), "resumed": resume}


def _record(kind: str, result: dict) -> dict:
    status = result.get("status", "ok")
    return {"status": "ok", **_numbers(kind, result)} if status == "ok" else dict(result)


class _trial_lock:
    """flock on trials/<name>/.lock, blocking: one writer per trial directory (POSIX; elsewhere no lock)."""

    def __init__(self, trial_dir: Path):
        self.path = trial_dir / ".lock"

    def __enter__(self):
        self.f = open(self.path, "w")
        try:
            import fcntl
            fcntl.flock(self.f, fcntl.LOCK_EX)
        except ImportError:
            pass
        return self

    def __exit__(self, *exc):
        self.f.close()


# ----------------------------------------------------------------------------------------------------------------
# The sweep

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


def _positive(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UnsupportedError(f"{name} must be a positive integer, got {value!r}; e.g. --{name} 3")


def _check_objective(objective, group_by, kind) -> None:
    if objective is not None and objective not in OBJECTIVES:
        raise UnknownNameError("objective", objective, OBJECTIVES,
                               "val_error: validation error %; val_loss; loss: the final training loss")
    for g in group_by:
        resolve_field(kind, g)


def run_sweep(base, grid: dict, out_dir, *, scheduler: str | None = None, workers: int | None = None,
              seeds: int | None = None, executions: int = 1, group_by=("algorithm",), objective: str | None = None,
              log: tuple = (), echo=None) -> SweepSummary:
    """Run (or continue) the two-stage sweep into out_dir; see the module doc. echo(str) receives progress lines."""
    echo = echo or (lambda s: None)
    kind = kind_of(base)
    _positive("executions", executions)
    _positive("seeds", seeds, allow_none=True)
    group_by = tuple(resolve_field(kind, g) for g in group_by)
    _check_objective(objective, group_by, kind)
    log = tracking.check_loggers(log)
    n_seeds = executions if seeds is None else seeds
    scan, refused, warned = expand(base, grid, [base.seed + e for e in range(executions)])
    if not scan:
        raise UnsupportedError("the grid has no runnable combination: "
                               + "; ".join(sorted({r["reason"] for r in refused})))
    grid = check_grid(kind, grid)
    out = Path(out_dir)
    spec = {"kind": kind, "base": asdict(base), "grid": grid, "executions": executions, "seeds": seeds,
            "group_by": list(group_by), "objective": objective}
    spec = json.loads(json.dumps(spec, default=str))
    spec_path = out / "sweep.json"
    if spec_path.exists():
        saved = json.loads(spec_path.read_text())
        if any(saved.get(k) != spec[k] for k in _IDENTITY):
            raise UnsupportedError(f"{out} holds another sweep (a different kind, base config or grid, see its "
                                   f"sweep.json); rerun that sweep's command to continue it, or choose another --out")
    check_address(scheduler)
    for w in warned:
        echo(f"warning: {w}")
    for r in refused:
        echo(f"refused {r['config']}: {r['reason']}")
    with open_executor(scheduler, workers) as executor:            # connects (or refuses) before anything is written
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(spec_path, spec)
        lock = _lock(out)
        events = _Events(out / "sweep.jsonl")
        echo(f"running on {executor.describe}" + (f"; dashboard: {executor.dashboard}" if executor.dashboard
                                                   else "; no dashboard (pip install bokeh to get one)"
                                                   if executor.client is not None else ""))
        ran, skipped = [], []
        try:
            records = _run_stage("scan", kind, scan, out, executor, events, log, echo, ran, skipped)
            chosen = choose(scan, records, group_by, objective)
            final = _seed_trials(kind, base, scan, chosen, grid, n_seeds, executions)
            records.update(_run_stage("seeds", kind, [t for t in final if t.name not in records], out, executor,
                                      events, log, echo, ran, skipped))
        finally:
            events.close()
            lock.close()
    summary = summarize(out, kind, grid, scan, final, records, chosen, refused, objective, group_by)
    summary.ran, summary.skipped = ran, skipped
    return summary


def _run_stage(stage, kind, trials, out, executor, events, log, echo, ran, skipped) -> dict:
    """Run the trials of one stage (skipping the finished ones); {name: record}."""
    dirs = {t.name: out / "trials" / t.name for t in trials}
    records = {}
    pending = []
    for t in trials:
        if trial_status(dirs[t.name]) == "done":
            records[t.name] = _record(kind, json.loads((dirs[t.name] / "result.json").read_text()))
            skipped.append(t.name)
            events.write("skip", t.name, stage=stage)
        else:
            pending.append(t)
    if not trials:
        return records
    echo(f"{stage}: {len(trials)} trials: {len(trials) - len(pending)} finished (skipped), {len(pending)} to run")
    by_name = {t.name: t for t in pending}

    def done(name, record, error, progress):
        if error is not None:
            record = {"status": "failed", "message": f"{type(error).__name__}: {error}"}
        records[name] = record
        events.write(record["status"] if record["status"] != "ok" else "done", name, stage=stage,
                     **({"message": record["message"]} if "message" in record else {}))
        what = {"ok": lambda: _describe(record), "diverged": lambda: "diverged",
                "refused": lambda: "refused: " + record["message"],
                "failed": lambda: "failed: " + record["message"]}[record["status"]]()
        echo(f"[{progress.line()}] {name}: {what}")

    for t in pending:
        events.write("resume" if trial_status(dirs[t.name]) == "partial" else "start", t.name, stage=stage)
        ran.append(t.name)
    executor.run(run_trial, [(t.name, (kind, asdict(t.config), str(dirs[t.name]), tuple(log))) for t in pending],
                 done, on_tick=lambda progress: echo(f"[{progress.line()}]"))
    assert set(by_name) <= set(records)
    return records


def _describe(record: dict) -> str:
    if record.get("val_error") is not None:
        return f"val error {record['val_error']:.2f}%, val loss {record['val_loss']:.4f}"
    return f"val loss {record['val_loss']:.4f}"


# ----------------------------------------------------------------------------------------------------------------
# Selection

def _objective(records, objective) -> str:
    if objective is not None:
        return objective
    ok = [r for r in records if r.get("status") == "ok"]
    return "val_error" if ok and all(r.get("val_error") is not None for r in ok) else "val_loss"


def _metric(record: dict, objective: str) -> float:
    if record.get("status") != "ok":
        return math.inf
    key = "train_loss" if objective == "loss" else objective
    v = record.get(key)
    if v is None:
        raise UnsupportedError(f"the objective {objective!r} needs an accuracy, and this task has none; choose "
                               f"--objective val_loss")
    return v


def _group(config, group_by) -> str:
    return "/".join(str(_value(config, g)) for g in group_by) if group_by else "all"


def choose(scan: list, records: dict, group_by, objective) -> dict:
    """{group: (point, score)}: per group, the grid point with the lowest mean objective over its executions (ties
    by the mean validation loss). Groups where every point diverged are left out."""
    obj = _objective(records.values(), objective)
    points = {}
    for t in scan:
        points.setdefault((_group(t.config, group_by), t.point), []).append(records[t.name])
    best = {}
    for (group, point), rs in points.items():
        score = (float(np.mean([_metric(r, obj) for r in rs])),
                 float(np.mean([_metric(r, "val_loss") for r in rs])))
        if math.isfinite(score[0]) and (group not in best or score < best[group][1]):
            best[group] = (point, score)
    return best


def _seed_trials(kind, base, scan, chosen, grid, n_seeds, executions) -> list:
    """The chosen points with seeds base.seed … base.seed + n_seeds − 1 (the scan's trials where they coincide)."""
    seeds = [base.seed + s for s in range(n_seeds)]
    varied = [k for k, v in grid.items() if len(v) > 1]
    out = []
    for group, (point, _) in chosen.items():
        config = with_values(base, dict(zip(grid, point)))
        for seed in seeds:
            c = dataclasses.replace(config, seed=seed)
            out.append(Trial(trial_name(c, varied), c, point, seed))
    return out


def _mean_std(values) -> tuple:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)


def summarize(out_dir, kind, grid, scan, final, records, chosen, refused=(), objective=None,
              group_by=("algorithm",)) -> SweepSummary:
    """Write summary.json and summary.png; the SweepSummary with its table. `grid`: the checked grid, in the order
    of the trials' points."""
    out = Path(out_dir)
    obj = _objective(records.values(), objective)
    rows, seen = [], set()
    for stage, trials in (("scan", scan), ("seeds", final)):
        for t in trials:
            if t.name in seen:
                continue
            seen.add(t.name)
            r = records.get(t.name, {"status": "missing"})
            rows.append({"name": t.name, "stage": stage, "group": _group(t.config, group_by), "seed": t.seed,
                         **dict(zip(grid, t.point)), "status": r["status"],
                         **{k: r.get(k) for k in ("train_loss", "val_loss", "val_error", "test_loss", "test_error",
                                                  "time_s")},
                         **({"message": r["message"]} if "message" in r else {})})
    by_name = {r["name"]: r for r in rows}
    test_key = "test_error" if obj == "val_error" else "test_loss"
    val_key = "train_loss" if obj == "loss" else obj
    best = {}
    for group, (point, score) in chosen.items():
        mine = [t for t in final if _group(t.config, group_by) == group and t.point == point]
        first = by_name[min((t for t in scan if t.point == point and _group(t.config, group_by) == group),
                            key=lambda t: t.seed).name]
        ok = [by_name[t.name] for t in mine if by_name[t.name]["status"] == "ok"]
        val_mean, val_std = _mean_std([r[val_key] for r in ok])
        test_mean, test_std = _mean_std([r[test_key] for r in ok])
        best[group] = {**first, "objective": obj, "score": score[0], "seeds": len(ok), "seed_trials":
                       [t.name for t in mine], "val_mean": val_mean, "val_std": val_std, "test_metric": test_key,
                       "test_mean": test_mean, "test_std": test_std}
    summary = SweepSummary(str(out), rows, best, list(refused), [], [])
    summary.table = format_table(summary, kind, grid, group_by, {t.name: t.config for t in scan + final})
    atomic_write_json(out / "summary.json", {"kind": kind, "objective": obj, "group_by": list(group_by),
                                             "trials": rows, "best": best, "refused": list(refused)})
    plot_summary(summary, grid, out / "summary.png")
    return summary


# ----------------------------------------------------------------------------------------------------------------
# Table and plot

def mean_std_text(mean, std, digits: int = 2, seeds: int = 2, unit: str = "") -> str:
    """"m ± s" over the seeds; one seed has no spread, so its value is shown alone, marked (1 seed); "—" for none."""
    if mean is None or not math.isfinite(mean):
        return "—"
    return f"{mean:.{digits}f} ± {std:.{digits}f}{unit}" if seeds > 1 else f"{mean:.{digits}f}{unit} (1 seed)"


def objective_heads(summary: SweepSummary) -> tuple:
    """(objective, digits, validation heading, test heading) of a summary's table."""
    obj = next(iter(summary.best.values()))["objective"] if summary.best else "val_error"
    return (obj, 2 if obj == "val_error" else 4, {"val_error": "val err %", "val_loss": "val loss",
                                                  "loss": "train loss"}[obj],
            "test err %" if obj == "val_error" else "test loss")


def format_table(summary: SweepSummary, kind: str, grid: dict, group_by, configs: dict) -> str:
    """Per group: the chosen configuration (on the objective) and its seeds' validation and test mean ± std."""
    records = summary.trials
    shown = [f for f in grid if f not in group_by and (len(grid[f]) > 1 or f == "lr")]
    obj, digits, val_head, test_head = objective_heads(summary)
    gname = "/".join(group_by) if group_by else "group"
    width = max([len(gname)] + [len(g) for g in summary.best] + [9]) + 1
    cell = 11 + 2 * digits
    head = (f"{gname:<{width}}" + "".join(f"{f.split('.')[-1].replace('_', '-'):<13}" for f in shown)
            + f"{val_head:>{cell}} {test_head:>{cell}} {'seeds':>5} {'trials':>6} {'diverged':>8}")
    lines = [head, "-" * len(head)]
    for g, b in summary.best.items():
        n = sum(1 for x in records if x["group"] == g)
        bad = sum(1 for x in records if x["group"] == g and x["status"] == "diverged")
        lines.append(f"{g:<{width}}" + "".join(f"{format(b[f], '.3g') if f == 'lr' else str(b[f]):<13}"
                                                for f in shown)
                     + f"{mean_std_text(b['val_mean'], b['val_std'], digits, b['seeds']):>{cell}} "
                       f"{mean_std_text(b['test_mean'], b['test_std'], digits, b['seeds']):>{cell}} "
                       f"{b['seeds']:>5} {n:>6} {bad:>8}")
    for g in dict.fromkeys(x["group"] for x in records):
        if g not in summary.best:
            lines.append(f"{g:<{width}}no trial finished without diverging")
    lines.append(f"chosen on {val_head} (mean over the executions); mean ± std over the seeds; the test column is "
                 f"reported, never used to choose")
    for g, b in summary.best.items():
        lines.append(f"best {g}: " + reproduce_command(kind, configs[b["name"]]))
    lines.append(f"trials in {summary.out_dir}/trials/<name>; summary.json, summary.png")
    return "\n".join(lines)


def reproduce_command(kind: str, config) -> str:
    """The `train` / `bpfree` command line that trains this config alone."""
    default = KINDS[kind]()
    flags = {"clip_norm": "--clip", "task_options": "-t", "cell_options": "-o", "algorithm_options": "-a",
             "net_options": "-n"}
    parts = [f"python -m refimpl.run {kind}"]
    for f in fields(config):
        v = getattr(config, f.name)
        if f.name in ("data_dir", "checkpoint_every") or (v == getattr(default, f.name)
                                                          and f.name not in ("algorithm", "lr", "arch", "epochs")):
            continue
        if isinstance(v, dict):
            parts += [f"{flags[f.name]} {k}={x}" for k, x in v.items()]
        elif isinstance(v, bool):
            parts.append(("--" if v else "--no-") + f.name.replace("_", "-"))
        elif v is None:
            parts.append("--clip 0" if f.name == "clip_norm" else "")
        else:
            parts.append(f"{flags.get(f.name, '--' + f.name.replace('_', '-'))} {v}")
    return " ".join(p for p in parts if p)


def _curve(records: list, objective: str):
    """(epochs, values) of a run's validation curve in the objective's units."""
    val = [m for m in records if m["split"] == "val"]
    if objective == "val_error":
        ys = [m["error"] if "error" in m else (None if m.get("accuracy") is None else 100 * (1 - m["accuracy"]))
              for m in val]
    else:
        ys = [m["loss"] for m in val]
    return [m["epoch"] + 1 for m in val], ys


def plot_summary(summary: SweepSummary, grid: dict, out_path) -> Path:
    """Left: the objective (mean over the executions) of each grid point, against the learning rate (or the point's
    index), per group. Right: the chosen points' validation curves, mean over the seeds, shaded min–max."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    obj = next(iter(summary.best.values()))["objective"] if summary.best else "val_loss"
    key = "train_loss" if obj == "loss" else obj
    scan = [r for r in summary.trials if r["stage"] == "scan" and r["status"] == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    x_lr = "lr" in grid
    for g in dict.fromkeys(r["group"] for r in scan):
        rs = [r for r in scan if r["group"] == g]
        points = {}
        for r in rs:
            points.setdefault(tuple(repr(r[f]) for f in grid), []).append(r)
        means = [(ps[0], float(np.mean([p[key] for p in ps]))) for ps in points.values()]
        if x_lr:
            xs = sorted({r["lr"] for r, _ in means})
            ys = [min(m for r, m in means if r["lr"] == lr) for lr in xs]
        else:
            xs, ys = list(range(len(means))), [m for _, m in means]
        line, = axes[0].plot(xs, ys, "o-", label=g)
        if g in summary.best:
            curves = [_curve(read_metrics(Path(summary.out_dir) / "trials" / n / "metrics.jsonl"), obj)
                      for n in summary.best[g]["seed_trials"]
                      if (Path(summary.out_dir) / "trials" / n / "metrics.jsonl").exists()]
            curves = [c for c in curves if c[0] and None not in c[1]]
            if curves:
                n = min(len(c[0]) for c in curves)
                ys_ = np.array([c[1][:n] for c in curves], dtype=float)
                ep = curves[0][0][:n]
                label = f"{g}" + (f" (lr {summary.best[g]['lr']:g})" if x_lr else "") + f", {len(curves)} seed(s)"
                axes[1].plot(ep, ys_.mean(0), "o-", color=line.get_color(), label=label)
                axes[1].fill_between(ep, ys_.min(0), ys_.max(0), color=line.get_color(), alpha=0.2)
    what = {"val_error": "validation error (%)", "val_loss": "validation loss", "loss": "training loss"}[obj]
    if x_lr:
        axes[0].set_xscale("log")
    axes[0].set_xlabel("learning rate" if x_lr else "grid point")
    axes[0].set_title(f"{what} per learning rate (best other settings)" if x_lr else what)
    axes[1].set_xlabel("epoch")
    axes[1].set_title("the chosen runs: " + ("validation error (%)" if obj == "val_error" else "validation loss")
                      + ", mean and min–max over seeds", fontsize=9)
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return save_figure(fig, out_path)
