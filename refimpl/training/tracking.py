"""Experiment tracking beside metrics.jsonl: TensorBoard event files and Weights & Biases runs, made from a run
directory.

    check_loggers("tensorboard,wandb") -> ("tensorboard", "wandb")     (refuses unknown or uninstalled loggers)
    export_run(run_dir, loggers) -> {logger: path}

metrics.jsonl stays the record (refimpl/runs.py); a logger is a copy of it in the format a tracker reads, written when
the run has finished (a resumed run is exported whole, once, so a tracker never sees a step twice). Every numeric
field of a record becomes a scalar "<split>/<field>" at its "step" (per-layer tracker lists: "tracker/<field>/<layer>");
config.json becomes the run's hyperparameters.

    tensorboard   <run_dir>/tensorboard/events.out.tfevents.*, written here (write_events: TFRecord framing, CRC-32C,
                  the two protobuf messages Event and Summary.Value encoded by hand, ~40 lines): no dependency at
                  all. tensorboardX would do the same but imports torch when it is installed (3–4 s per process),
                  and the `tensorboard` package pulls in grpc; `tensorboard --logdir runs/` reads these files
    wandb         <run_dir>/wandb/  one W&B run per run directory, project $WANDB_PROJECT (default "refimpl"). Mode:
                  $WANDB_MODE when set; else online when the user has logged in (`wandb login`), offline otherwise.
                  An offline run needs no network; `wandb sync <run_dir>/wandb/offline-run-*` uploads it later.
wandb is an optional dependency (`pip install refimpl[tracking]`); tensorboard files need nothing (the tests read
them back with tensorboardX's protobuf classes, a dev dependency).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import time
from pathlib import Path

from ..errors import UnknownNameError, UnsupportedError
from ..runs import read_metrics

LOGGERS = {"tensorboard": None, "wandb": "wandb"}


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
            if LOGGERS[name]:
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
    out = run_dir / "tensorboard"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    path = out / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
    write_events(path, [(step, scalars) for step, scalars in steps])
    return out


# TensorBoard's event file: TFRecords (length, masked CRC-32C of the length, the data, its masked CRC-32C), each
# holding one serialized Event {wall_time: 1 double, step: 2 int64, file_version: 3 string, summary: 5 Summary};
# Summary {value: 1 repeated Value}; Value {tag: 1 string, simple_value: 2 float}.

def _crc32c_table() -> list:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def _masked_crc(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC32C[(c ^ b) & 0xFF] ^ (c >> 8)
    c ^= 0xFFFFFFFF
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    key = _varint(number << 3 | wire)
    return key + (_varint(len(payload)) + payload if wire == 2 else payload)


def _event(step: int, wall_time: float, scalars: dict | None = None, file_version: str | None = None) -> bytes:
    body = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
    if file_version is not None:
        body += _field(3, 2, file_version.encode())
    if scalars:
        values = b"".join(_field(1, 2, _field(1, 2, tag.encode()) + _field(2, 5, struct.pack("<f", v)))
                          for tag, v in scalars.items())
        body += _field(5, 2, values)
    return body


def write_events(path: Path, steps: list) -> None:
    """A TensorBoard event file of [(step, {tag: value})]."""
    now = time.time()
    with open(path, "wb") as f:
        for data in [_event(0, now, file_version="brain.Event:2")] + [_event(s, now, v) for s, v in steps]:
            n = struct.pack("<Q", len(data))
            f.write(n + struct.pack("<I", _masked_crc(n)) + data + struct.pack("<I", _masked_crc(data)))


def _wandb_mode() -> str:
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    try:
        import wandb
        return "online" if wandb.login(prompt=False, verify=False) else "offline"
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
        run.finish()
    return out
