"""Run directories: the files a training run leaves behind, written so that a killed run can be trusted and resumed.

Both trainers (refimpl/training/loop.py for sequence models and EP networks, refimpl/training/feedforward.py for the
feed-forward rules) and the sweep write the same kind of directory:

    config.json       the run's config dataclass as JSON (everything needed to rerun or resume it); read back with
                      config_from_dict, which refuses fields another version of refimpl wrote
    metrics.jsonl     one JSON object per line, flushed as it goes (MetricsLog): {"split", "step", "epoch", …};
                      "step" counts completed optimizer steps; wall-clock fields are "time_s"
    checkpoint.npz    "step" and one array per parameter and optimizer-state entry, keyed "param/<name>" and
                      "opt/<name>" (plus any further groups a trainer keeps: the feed-forward trainer's batch-norm
                      averages "buffer/<name>" and fixed feedback matrices "fixed/<name>"); written atomically
    result.json       the final numbers, written atomically at the end

The data order is a function of (seed, step) alone (batch_at), so a resumed run draws exactly the batches the killed
run would have drawn.

Writes that replace a file go through atomic_write_bytes (temp file in the same directory, fsync, rename), so a reader
— or a resumed run — never sees a half-written file. A run that becomes non-finite stops with TrainingDiverged.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import NumericalError, UnsupportedError


class TrainingDiverged(NumericalError):
    """The loss, a gradient or a parameter became non-finite; the last good checkpoint is kept."""

    @classmethod
    def at(cls, step: int, why: str, checkpoint: Path) -> "TrainingDiverged":
        """The error for a run that diverged at `step` (1-based) because of `why`, saying what was kept."""
        kept = (f"the last good checkpoint is kept in {checkpoint}" if checkpoint.exists()
                else "no checkpoint had been written yet")
        return cls(f"training diverged at step {step}: {why}; {kept}. Lower --lr, set --clip, or use float64")


# ----------------------------------------------------------------------------------------------------------------
# Atomic files

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


# ----------------------------------------------------------------------------------------------------------------
# config.json

def config_from_dict(cls, d: dict):
    """A config dataclass from its saved dict; unknown fields (another version's run directory) are refused."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise UnsupportedError(f"config has unknown fields {unknown}; it was written by another version of "
                               f"refimpl — start a new run directory")
    return cls(**d)


def batch_at(seed: int, step: int, steps_per_epoch: int, n: int, batch_size: int) -> tuple[int, np.ndarray]:
    """(epoch, sorted example indices) of optimizer step `step`: epoch e = step // S, position i = step mod S; the
    epoch's order is the permutation seeded by [seed, e], and the batch its i-th slice of batch_size examples."""
    epoch, i = divmod(step, steps_per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return epoch, np.sort(order[i * batch_size:(i + 1) * batch_size])


class RunDir(NamedTuple):
    """A run directory's paths, and the config saved in it when the run is resumed (else None)."""
    path: Path
    config: Path
    checkpoint: Path
    saved_config: dict | None


def open_run_dir(run_dir, resume: bool) -> RunDir:
    """The paths of `run_dir` (not created here). Refuses to resume what is not a run directory, and to start a new
    run over an existing one."""
    run_dir = Path(run_dir)
    cfg_path, ckpt_path = run_dir / "config.json", run_dir / "checkpoint.npz"
    if resume:
        if not cfg_path.exists():
            raise UnsupportedError(f"cannot resume: {run_dir} has no config.json (not a run directory); start a "
                                   f"new run with --out {run_dir}")
        return RunDir(run_dir, cfg_path, ckpt_path, json.loads(cfg_path.read_text()))
    if cfg_path.exists():
        raise UnsupportedError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, or choose "
                               f"another --out directory")
    return RunDir(run_dir, cfg_path, ckpt_path, None)


# ----------------------------------------------------------------------------------------------------------------
# checkpoint.npz

class Checkpoint(NamedTuple):
    step: int                 # completed optimizer steps
    params: dict              # "param/<name>"
    opt_state: dict           # "opt/<name>"
    groups: dict              # any further group: {group: {name: array}} ("buffer", "fixed")


def save_checkpoint(path: Path, step: int, params: dict, opt_state: dict, **groups: dict) -> None:
    """Write checkpoint.npz atomically: "step", "param/<name>", "opt/<name>" and "<group>/<name>" for each group."""
    arrays = {"param": params, "opt": opt_state, **groups}
    buf = io.BytesIO()
    np.savez(buf, step=np.int64(step), **{f"{g}/{k}": v for g, part in arrays.items() for k, v in part.items()})
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> Checkpoint:
    """Read what save_checkpoint wrote."""
    with np.load(path) as z:
        groups = {}
        for key in z.files:
            if key != "step":
                group, name = key.split("/", 1)
                groups.setdefault(group, {})[name] = z[key]
        return Checkpoint(int(z["step"]), groups.pop("param", {}), groups.pop("opt", {}), groups)


# ----------------------------------------------------------------------------------------------------------------
# metrics.jsonl

def read_metrics(path: Path) -> list[dict]:
    """The records of a JSON-lines file (metrics.jsonl); a torn last line (a run killed mid-write) is ignored."""
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


def begin_run(run: RunDir, config: dict, params: dict, opt_state: dict, resume: bool):
    """Start a run in its directory, or resume it: (first step, params, optimizer state, MetricsLog). Resuming reads
    the last checkpoint (and drops the metrics logged after it: they are recomputed); starting writes config.json."""
    start = 0
    run.path.mkdir(parents=True, exist_ok=True)
    if resume and run.checkpoint.exists():
        start, params, opt_state, _ = load_checkpoint(run.checkpoint)
    elif not resume:
        atomic_write_json(run.config, config)
    return start, params, opt_state, MetricsLog(run.path / "metrics.jsonl", keep_until_step=start if resume else None)


# ----------------------------------------------------------------------------------------------------------------
# Progress

class ProgressBar:
    """A minimal progress line on stderr: step/total, loss, validation accuracy."""

    def __init__(self, total: int, start: int):
        self.total, self.n, self.t0 = total, start, time.perf_counter()

    def update(self, n: int, last: dict) -> None:
        """Advance by n steps; `last` may hold "loss" and "val_acc" to show."""
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
