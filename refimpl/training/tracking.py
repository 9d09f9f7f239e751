"""Experiment tracking beside metrics.jsonl: TensorBoard event files and Weights & Biases runs, made from a run
directory.

    check_loggers("tensorboard,wandb") -> ("tensorboard", "wandb")     (refuses unknown or uninstalled loggers)
    export_run(run_dir, loggers) -> {logger: path}

metrics.jsonl stays the record (refimpl/runs.py); a logger is a copy of it in the format a tracker reads, written when
the run has finished (a resumed run is exported whole, once, so a tracker never sees a step twice). Every numeric
field of a record becomes a scalar "<split>/<field>" at its "step" (per-layer tracker lists: "tracker/<field>/<layer>");
config.json becomes the run's hyperparameters.

    tensorboard   <run_dir>/tensorboard/events.out.tfevents.*  (tensorboardX: a pure-Python writer — protobuf and
                  NumPy — so TensorFlow and torch are not needed to write; `tensorboard --logdir runs/` reads them)
    wandb         <run_dir>/wandb/  one W&B run per run directory, project $WANDB_PROJECT (default "refimpl"). Mode:
                  $WANDB_MODE when set; else online when the user has logged in (`wandb login`), offline otherwise.
                  An offline run needs no network; `wandb sync <run_dir>/wandb/offline-run-*` uploads it later.
Both are optional dependencies (`pip install refimpl[tracking]`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..errors import UnknownNameError, UnsupportedError
from ..runs import read_metrics

LOGGERS = {"tensorboard": "tensorboardX", "wandb": "wandb"}


def check_loggers(log) -> tuple:
    """The loggers named by "a,b" (or a sequence), each known and installed; () for none."""
    if not log:
        return ()
    names = [s.strip() for s in log.split(",")] if isinstance(log, str) else list(log)
    out = []
    for name in names:
        if name not in LOGGERS:
            raise UnknownNameError("logger", name, LOGGERS, "e.g. --log tensorboard,wandb")
        try:
            __import__(LOGGERS[name])
        except ImportError:
            raise UnsupportedError(f"--log {name} needs the {LOGGERS[name]} package, which is not installed; "
                                   f"pip install {LOGGERS[name]} (or refimpl[tracking])") from None
        if name not in out:
            out.append(name)
    return tuple(out)


def _scalars(record: dict) -> dict:
    """{tag: float} of one metrics.jsonl record."""
    split, out = record.get("split", "metrics"), {}
    layers = record.get("layers")
    for key, value in record.items():
        if key in ("split", "step", "epoch", "layers"):
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{split}/{key}"] = float(value)
        elif isinstance(value, list) and layers and len(value) == len(layers):
            out.update({f"{split}/{key}/{layer}": float(v) for layer, v in zip(layers, value)
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return out


def _by_step(records: list) -> list[tuple[int, dict]]:
    """[(step, {tag: value})], steps increasing, the records of one step merged."""
    steps = {}
    for r in records:
        steps.setdefault(int(r.get("step", 0)), {}).update(_scalars(r))
    return sorted(steps.items())


def export_run(run_dir, loggers) -> dict:
    """Write the run's metrics for each logger (replacing an earlier export); {logger: where it went}."""
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    steps = _by_step(read_metrics(run_dir / "metrics.jsonl"))
    written = {}
    for name in check_loggers(loggers):
        written[name] = {"tensorboard": _tensorboard, "wandb": _wandb}[name](run_dir, config, steps)
    return written


def _tensorboard(run_dir: Path, config: dict, steps: list) -> Path:
    from tensorboardX import SummaryWriter

    out = run_dir / "tensorboard"
    shutil.rmtree(out, ignore_errors=True)
    writer = SummaryWriter(logdir=str(out))
    try:
        writer.add_text("config", "```\n" + json.dumps(config, indent=2, sort_keys=True) + "\n```", 0)
        for step, scalars in steps:
            for tag, value in scalars.items():
                writer.add_scalar(tag, value, step)
    finally:
        writer.close()
    return out


def _wandb_mode() -> str:
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    try:
        import wandb
        return "online" if wandb.api.api_key else "offline"
    except Exception:                                      # noqa: BLE001 — no key, no settings: stay offline
        return "offline"


def _wandb(run_dir: Path, config: dict, steps: list) -> Path:
    import wandb

    out = run_dir / "wandb"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "refimpl"), name=run_dir.name, dir=str(run_dir),
                     config=config, mode=_wandb_mode(), reinit="finish_previous",
                     settings=wandb.Settings(silent=True, console="off"))
    try:
        for step, scalars in steps:
            run.log(scalars, step=step)
    finally:
        run.finish(quiet=True)
    return out
