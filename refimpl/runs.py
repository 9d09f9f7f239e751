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
— or a resumed run — never sees a half-written file; a write that fails (read-only or full file system) removes its
temp file and raises an OSError naming the file. A run that becomes non-finite stops with TrainingDiverged.

Reading is defensive: an empty, truncated or damaged config.json (not JSON, not an object, a field of the wrong JSON
type), checkpoint.npz (not a zip, a bad CRC, pickled objects — loaded with allow_pickle=False —, arrays that are not
the run's) or metrics.jsonl (a line before the last that is not a metrics record) is a RunFileError that names the
file, says what is wrong, and says to delete the directory or start a new --out. resume_config decides which options
given with --resume are honoured and which are refused.
"""

from __future__ import annotations

import io
import json
import os
import struct
import sys
import tempfile
import time
import zipfile
import zlib
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import NumericalError, RunFileError, UnsupportedError


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
    """Write to a temporary file in the same directory, fsync, then rename over `path` (never a half-written file).
    A write that fails (a read-only or full file system) removes its temporary file and raises an OSError that names
    `path` itself, not the temporary file."""
    path, tmp = Path(path), None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None:
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


# ----------------------------------------------------------------------------------------------------------------
# config.json

def damaged(path: Path, what: str) -> RunFileError:
    """The error for a run-directory file that cannot be used: the file, what is wrong with it, and the fix."""
    path = Path(path)
    return RunFileError(f"{path} {what}: the run directory is damaged or was not written by refimpl; delete "
                        f"{path.parent} and start again, or start a new run with another --out")


def read_config(path: Path) -> dict:
    """config.json as a dict; an empty, truncated or non-JSON file, or JSON that is not an object, is a RunFileError
    that names the file."""
    try:
        text = Path(path).read_text()
    except UnicodeDecodeError:
        raise damaged(path, "is not text") from None
    if not text.strip():
        raise damaged(path, "is empty")
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise damaged(path, f"is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}; a truncated or "
                            f"damaged file)") from None
    if not isinstance(d, dict):
        raise damaged(path, f"holds a JSON {type(d).__name__} where a config object is expected")
    return d


#: The JSON types a config field may hold, by the names in its annotation ("int | None" → int or null).
_JSON_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "dict": (dict,),
               "None": (type(None),), "tuple": (list, tuple), "list": (list, tuple)}


def _type_ok(value, annotation) -> bool:
    names = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    for name in names.replace(" ", "").split("|"):
        allowed = _JSON_TYPES.get(name)
        if allowed is None:                      # an annotation this check does not know: not checked
            return True
        if isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed):
            return True
    return False


def config_from_dict(cls, d: dict, source: Path | None = None):
    """A config dataclass from its saved dict; unknown fields (another version's run directory) and values of the
    wrong JSON type (a damaged file) are refused — naming `source`, the file it was read from, when given."""
    known = {f.name: f.type for f in fields(cls)}
    unknown = sorted(map(str, set(d) - set(known)))
    if unknown:
        if source is not None:
            raise damaged(source, f"has unknown fields {unknown} (another version of refimpl, or a damaged file)")
        raise UnsupportedError(f"config has unknown fields {unknown}; it was written by another version of "
                               f"refimpl — start a new run directory")
    for name, value in d.items():
        if not _type_ok(value, known[name]):
            what = f"field {name!r} = {value!r} (a JSON {type(value).__name__}) where {known[name]} is expected"
            if source is not None:
                raise damaged(source, f"has {what}")
            raise UnsupportedError(f"config {what}")
    return cls(**d)


def resume_config(saved, config, given: dict, changeable: tuple):
    """The config a resumed run continues with: the saved one, with the options in `changeable` that were given on
    the command line (`given`: {field: its option, e.g. "--epochs"}) taken from `config`. Any other given option whose
    value differs from the saved one is refused, with the list of stored values — an option is never dropped
    silently."""
    mine, theirs = asdict(config), asdict(saved)

    def text(v):
        return v if isinstance(v, str) else repr(v)
    differ = [f"{flag} {text(mine[f])} (stored: {text(theirs[f])})" for f, flag in given.items()
              if f not in changeable and mine[f] != theirs[f]]
    if differ:
        allowed = ", ".join(sorted({flag for f, flag in given.items() if f in changeable} |
                                   {"--" + f.replace("_", "-") for f in changeable}))
        verb = "differs" if len(differ) == 1 else "differ"
        raise UnsupportedError(f"--resume continues the stored configuration, but {', '.join(differ)} {verb} from "
                               f"it; drop those options (on resume only {allowed} may change), or start a new run "
                               f"with another --out")
    return replace(saved, **{f: mine[f] for f in given if f in changeable})


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
        return RunDir(run_dir, cfg_path, ckpt_path, read_config(cfg_path))
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
    """Read what save_checkpoint wrote (never pickled objects: allow_pickle=False). A truncated or damaged file, or
    one that is not a checkpoint, is a RunFileError that names it."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
    except (OSError, ValueError, EOFError, KeyError, RuntimeError, NotImplementedError, OverflowError, struct.error,
            zipfile.BadZipFile, zlib.error) as e:      # zipfile's answers to damaged headers ("encrypted", "version")
        why = " ".join(str(e).split())[:200]
        raise damaged(path, f"cannot be read as a checkpoint ({type(e).__name__}: {why})") from None
    step = arrays.pop("step", None)
    if step is None or step.shape != () or step.dtype.kind not in "iu" or int(step) < 0:
        raise damaged(path, "has no step count (a checkpoint holds 'step', a nonnegative integer)")
    groups = {}
    for key, value in arrays.items():
        if "/" not in key:
            raise damaged(path, f"holds {key!r}, not a '<group>/<name>' entry of a checkpoint")
        group, name = key.split("/", 1)
        groups.setdefault(group, {})[name] = value
    return Checkpoint(int(step), groups.pop("param", {}), groups.pop("opt", {}), groups)


def check_checkpoint(path: Path, **expected: dict) -> None:
    """Refuse a checkpoint whose arrays are not the run's: for each group (params=…, opt_state=…, or a further group),
    the names, shapes and dtypes of the loaded arrays must be those of `expected` ({group: ({name: loaded},
    {name: expected})})."""
    for group, (loaded, want) in expected.items():
        if set(loaded) != set(want):
            missing, extra = sorted(set(want) - set(loaded)), sorted(set(loaded) - set(want))
            raise damaged(path, f"does not hold this run's {group}: missing {missing}, unexpected {extra}")
        for name, a in loaded.items():
            w = want[name]
            if np.shape(a) != np.shape(w) or np.asarray(a).dtype != np.asarray(w).dtype:
                raise damaged(path, f"holds {group} {name!r} of shape {np.shape(a)} and dtype {np.asarray(a).dtype}, "
                                    f"but this run's is {np.shape(w)} {np.asarray(w).dtype}")


# ----------------------------------------------------------------------------------------------------------------
# metrics.jsonl

def read_metrics(path: Path) -> list[dict]:
    """The records of a JSON-lines file (metrics.jsonl, sweep.jsonl); a torn last line (a run killed mid-write) is
    ignored. A line before the last that is not a JSON object (a damaged file) is a RunFileError that names the file
    and line. read_run_metrics also checks the fields of a run's metrics records."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise damaged(path, "is not text") from None
    records = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:              # torn by a kill mid-write: recomputed on resume
                break
            raise damaged(path, f"line {i + 1} is not JSON") from None
        if not isinstance(record, dict):
            raise damaged(path, f"line {i + 1} is a JSON {type(record).__name__}, not a record (an object)")
        records.append(record)
    return records


def read_run_metrics(path: Path) -> list[dict]:
    """A run's metrics.jsonl (read_metrics), each record checked for the fields the trainers write and the plots and
    a resumed run read ("split", "step", numbers or null where numbers go)."""
    records = read_metrics(path)
    for i, record in enumerate(records):
        problem = _record_problem(record)
        if problem:
            raise damaged(Path(path), f"line {i + 1} {problem}")
    return records


def _is_number(v, none: bool = True) -> bool:
    return (v is None and none) or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _record_problem(r) -> str | None:
    """What is wrong with one metrics record (None: nothing): the fields the trainers write and the plots read."""
    if not isinstance(r.get("split"), str):
        return f"has no split name ('split': {r.get('split')!r})"
    if not (isinstance(r.get("step"), int) and not isinstance(r["step"], bool) and r["step"] >= 0):
        return f"has no step count ('step': {r.get('step')!r})"
    for key in ("epoch", "loss", "accuracy", "error", "lr", "grad_norm", "time_s"):
        if key in r and not _is_number(r[key]):
            return f"has {key!r} = {r[key]!r}, not a number"
    if r["split"] == "tracker":
        layers = r.get("layers")
        if not isinstance(layers, list):
            return "has no list of 'layers'"
        for key in ("bp_cosine", "weight_alignment"):
            v = r.get(key)
            if not (isinstance(v, list) and len(v) == len(layers) and all(map(_is_number, v))):
                return f"has {key!r} = {v!r}, not one number (or null) per layer"
    return None


class MetricsLog:
    """Append-only metrics.jsonl, one flushed line per record."""

    def __init__(self, path: Path, keep_until_step: int | None = None):
        if keep_until_step is not None:        # resume: drop what was logged after the checkpoint (it is recomputed)
            kept = [r for r in read_run_metrics(path) if r["step"] <= keep_until_step and r["split"] != "test"]
            atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        self.path, self._f = Path(path), open(path, "a")

    def write(self, record: dict) -> None:
        try:
            self._f.write(json.dumps(record) + "\n")
            self._f.flush()
        except OSError as e:                     # a full disk: the error names the file (a torn line is dropped on
            if e.errno is None:                  # resume)
                raise
            raise OSError(e.errno, e.strerror, str(self.path)) from e

    def close(self) -> None:
        try:
            self._f.close()
        except OSError as e:                     # what a failed write left in the buffer
            if e.errno is None:
                raise
            raise OSError(e.errno, e.strerror, str(self.path)) from e


def begin_run(run: RunDir, config: dict, params: dict, opt_state: dict, resume: bool):
    """Start a run in its directory, or resume it: (first step, params, optimizer state, MetricsLog). Resuming reads
    the last checkpoint (and drops the metrics logged after it: they are recomputed); starting writes config.json."""
    start = 0
    run.path.mkdir(parents=True, exist_ok=True)
    if resume and run.checkpoint.exists():
        ckpt = load_checkpoint(run.checkpoint)
        check_checkpoint(run.checkpoint, parameters=(ckpt.params, params), optimizer_state=(ckpt.opt_state, opt_state))
        start, params, opt_state = ckpt.step, ckpt.params, ckpt.opt_state
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
