"""The general sweep (refimpl/training/sweep.py, executor.py): fields of either kind as grid dimensions, the two
stages (scan, then seeds), the same summary inline, on a local Dask cluster and on a scheduler with two worker
processes, a worker SIGKILLed mid-trial, an unreachable scheduler, and the TensorBoard / W&B exports."""

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from refimpl.cli import cli
from refimpl.errors import UnknownNameError, UnsupportedError
from refimpl.runs import read_metrics
from refimpl.training import executor, sweep
from refimpl.training.config import TrainConfig
from refimpl.training.feedforward import BpfreeConfig

ROOT = Path(__file__).resolve().parents[2]
FF = BpfreeConfig(arch="16", epochs=1, batch_size=256, log_every=1, trackers=False)
RNN = TrainConfig(task="copy-small", cell="lru", hidden=4, epochs=2, batch_size=16, log_every=2)
RNN_GRID = {"algorithm": ["bptt", "truncated"], "lr": [3e-3, 3e-2]}


def _numbers(out_dir):
    """Each trial's results and metrics, without wall-clock fields."""
    out = {}
    for d in sorted((Path(out_dir) / "trials").iterdir()):
        result = json.loads((d / "result.json").read_text())
        out[d.name] = ({k: v for k, v in result.items() if k not in ("time_s", "run_dir")},
                       [{k: v for k, v in r.items() if k != "time_s"} for r in read_metrics(d / "metrics.jsonl")])
    return out


def _summary(out_dir):
    """summary.json without wall-clock fields."""
    s = json.loads((Path(out_dir) / "summary.json").read_text())
    for r in s["trials"] + list(s["best"].values()):
        r.pop("time_s", None)
    return s


def test_fields_of_each_kind_and_their_refusals():
    assert sweep.resolve_field("train", "r_min") == "cell_options.r_min"
    assert sweep.resolve_field("train", "K") == "algorithm_options.K"
    assert sweep.resolve_field("train", "task_options.seq_len") == "task_options.seq_len"
    assert sweep.resolve_field("bpfree", "batch_norm") == "batch_norm"
    assert sweep.resolve_field("bpfree", "skew") == "task_options.skew"
    ff = sweep.with_values(FF, {"task_options.examples_frac": 0.5, "task_options.skew": "step"})
    assert ff.task_options == {"examples_frac": 0.5, "skew": "step"}
    config = sweep.with_values(RNN, {"cell_options.r_min": 0.5, "hidden": 8})
    assert config.cell_options == {"r_min": 0.5} and config.hidden == 8 and RNN.cell_options == {}
    with pytest.raises(UnsupportedError, match="does not apply to a bpfree sweep"):
        sweep.expand(FF, {"cell": ["gru"]})
    with pytest.raises(UnsupportedError, match="does not apply to a train sweep"):
        sweep.expand(RNN, {"activation": ["relu"]})
    with pytest.raises(UnknownNameError, match="unknown grid field 'momentum'"):
        sweep.expand(RNN, {"momentum": [0.9]})
    with pytest.raises(UnsupportedError, match="the grid is empty"):
        sweep.expand(RNN, {})
    with pytest.raises(UnsupportedError, match="lists no values for 'lr'"):
        sweep.expand(RNN, {"lr": []})
    with pytest.raises(UnsupportedError, match="cannot vary 'seed'"):
        sweep.expand(RNN, {"seed": [0, 1]})
    with pytest.raises(UnknownNameError, match="unknown algorithm 'bpt'"):
        sweep.expand(RNN, {"algorithm": ["bpt"]})
    trials, refused, _ = sweep.expand(RNN, {"r_min": [0.5, 0.9], "lr": [1e-3]}, seeds=[0, 1])
    assert len(trials) == 4 and not refused
    assert {t.config.cell_options["r_min"] for t in trials} == {0.5, 0.9} and {t.seed for t in trials} == {0, 1}
    assert len({t.name for t in trials}) == 4 and all("_rmin" in t.name for t in trials)


def test_two_stages_choose_on_the_scan_and_report_the_seeds(tmp_path):
    """executions=2: a point's score is the mean of two seeds; seeds=3 adds the third seed of each chosen point only
    (the first two are the scan's trials, not run again)."""
    grid = {"algorithm": ["bp", "dfa"], "lr": [3e-3, 3e-2]}
    summary = sweep.run_sweep(FF, grid, tmp_path / "s", scheduler="inline", executions=2, seeds=3)
    results = {d.name: json.loads((d / "result.json").read_text()) for d in (tmp_path / "s" / "trials").iterdir()}
    assert len(results) == 2 * 2 * 2 + 2 and len(summary.ran) == 10
    for algorithm in ("bp", "dfa"):
        def score(lr):
            rs = [r for n, r in results.items() if n.startswith(f"{algorithm}_lr{sweep._fmt('lr', lr)[2:]}_s")
                  and n.split("_s")[-1][0] in "01"]
            assert len(rs) == 2
            return np.mean([r["val_error"] for r in rs]), np.mean([r["val_loss"] for r in rs])
        lr = min(grid["lr"], key=score)
        best = summary.best[algorithm]
        assert best["lr"] == lr and best["seeds"] == 3
        mine = [results[n] for n in best["seed_trials"]]
        assert [n.split("_")[-2] for n in best["seed_trials"]] == ["s0", "s1", "s2"]
        assert best["val_mean"] == pytest.approx(np.mean([r["val_error"] for r in mine]), rel=1e-12)
        assert best["test_mean"] == pytest.approx(np.mean([r["test_error"] for r in mine]), rel=1e-12)
        assert best["test_std"] == pytest.approx(np.std([r["test_error"] for r in mine], ddof=1), rel=1e-12)
    again = sweep.run_sweep(FF, grid, tmp_path / "s", scheduler="inline", executions=2, seeds=3)
    assert not again.ran and len(again.skipped) == 10 and again.best == summary.best
    assert " ± " in summary.table and (tmp_path / "s" / "summary.png").stat().st_size > 0


def test_a_recurrent_sweep_gives_the_same_summary_inline_and_on_a_local_cluster(tmp_path):
    """The copy task, lru, bptt vs truncated, 2 seeds: identical numbers on an embedded
    LocalCluster (two worker processes) and in this process."""
    pytest.importorskip("distributed")
    grid = {**RNN_GRID, "lr": [3e-2]}
    inline = sweep.run_sweep(RNN, grid, tmp_path / "inline", scheduler="inline", seeds=2)
    local = sweep.run_sweep(RNN, grid, tmp_path / "local", workers=2, seeds=2)
    assert set(local.best) == {"bptt", "truncated"} and len(local.ran) == 4
    assert _summary(tmp_path / "local") == _summary(tmp_path / "inline")
    assert _numbers(tmp_path / "local") == _numbers(tmp_path / "inline")
    assert local.table == inline.table.replace("inline", "local")
    config = json.loads(next((tmp_path / "local" / "trials").glob("truncated*/config.json")).read_text())
    assert config["task"] == "copy-small" and config["cell"] == "lru" and config["algorithm"] == "truncated"


def test_the_cli_sweeps_a_recurrent_field_with_seeds(tmp_path):
    r = CliRunner().invoke(cli, ["sweep", "--task", "copy-small", "--cell", "lru", "--hidden", "4", "--epochs", "1",
                                 "--batch-size", "16", "--algorithms", "bptt", "--lrs", "0.01", "-g",
                                 "r_min=0.3,0.9", "--group-by", "algorithm", "--seeds", "2", "--objective",
                                 "val_loss", "--scheduler", "inline", "--out", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    assert "val loss" in r.output and "best bptt: python -m refimpl.run train --task copy-small" in r.output
    s = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert s["kind"] == "train" and s["objective"] == "val_loss" and len(s["trials"]) == 3
    chosen = s["best"]["bptt"]["cell_options.r_min"]
    scan = {t["cell_options.r_min"]: t["val_loss"] for t in s["trials"] if t["stage"] == "scan"}
    assert chosen == min(scan, key=scan.get)
    assert "-o r_min=" in r.output
    assert "scan: 2 trials" in r.stderr and "[2/2 done (0 failed)" in r.stderr


def test_an_unreachable_scheduler_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setattr(executor, "CONNECT_TIMEOUT_S", 1)
    with socket.socket() as s:                                  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = CliRunner().invoke(cli, ["sweep", "--algorithms", "bp", "--lrs", "0.01", "--epochs", "1", "--scheduler",
                                 f"tcp://127.0.0.1:{port}", "--out", str(tmp_path / "s")])
    assert r.exit_code == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"cannot reach a Dask scheduler at tcp://127.0.0.1:{port}" in lines[0]
    assert not (tmp_path / "s").exists()


# ----------------------------------------------------------------------------------------------------------------
# A scheduler and two workers as separate processes on 127.0.0.1

@pytest.fixture
def cluster(tmp_path):
    """`dask scheduler` and two `dask worker` processes (one thread each), started and stopped here; the address."""
    pytest.importorskip("distributed")
    env = {**os.environ, "PYTHONPATH": str(ROOT), **executor.WORKER_ENV}
    info = tmp_path / "scheduler.json"
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", "0", "--no-dashboard", "--scheduler-file", str(info)],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.time() + 60
        while not info.exists() and time.time() < deadline:
            time.sleep(0.1)
        address = json.loads(info.read_text())["address"]
        for _ in range(2):
            procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address,
                                           "--nthreads", "1", "--nworkers", "1", "--no-dashboard", "--host",
                                           "127.0.0.1"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        from distributed import Client
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.mark.slow
def test_a_scheduler_and_two_workers_give_the_same_summary_even_when_a_worker_is_killed(tmp_path, cluster):
    """The same sweep inline and on the cluster: the same summary. Then again on the cluster with the worker that runs
    a trial SIGKILLed after that trial's first checkpoint: the scheduler reruns it on the other worker (or the
    restarted one) from the checkpoint, and every trial ends with the numbers of the undisturbed sweep."""
    from distributed import Client

    base = BpfreeConfig(epochs=4, batch_size=16, log_every=20, trackers=False)
    grid = {"algorithm": ["bp", "dfa"], "arch": ["64"], "lr": [1e-3, 1e-2]}      # as the command below says it
    sweep.run_sweep(base, grid, tmp_path / "inline", scheduler="inline")
    sweep.run_sweep(base, grid, tmp_path / "cluster", scheduler=cluster)
    assert _summary(tmp_path / "cluster") == _summary(tmp_path / "inline")

    args = ["sweep", "--algorithms", "bp,dfa", "--lrs", "0.001,0.01", "--archs", "64", "--epochs", "4",
            "--batch-size", "16", "--log-every", "20", "--no-trackers", "--scheduler", cluster, "--out",
            str(tmp_path / "killed")]
    p = subprocess.Popen([sys.executable, "-m", "refimpl.run", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    trials, killed = tmp_path / "killed" / "trials", None
    with Client(cluster, timeout="30s") as client:
        deadline = time.time() + 300
        while killed is None and time.time() < deadline and p.poll() is None:
            running = {key: addr for addr, keys in client.processing().items() for key in keys}
            for d in trials.iterdir() if trials.exists() else ():
                if (d / "checkpoint.npz").exists() and not (d / "result.json").exists() and d.name in running:
                    pid = client.run(os.getpid, workers=[running[d.name]])[running[d.name]]
                    os.kill(pid, signal.SIGKILL)
                    killed = d.name
                    break
            time.sleep(0.05)
    _, err = p.communicate(timeout=300)
    assert killed is not None, "no trial was caught mid-run"
    assert p.returncode == 0, err
    assert _numbers(tmp_path / "killed") == _numbers(tmp_path / "inline")
    assert _summary(tmp_path / "killed") == _summary(tmp_path / "inline")


# ----------------------------------------------------------------------------------------------------------------
# Experiment tracking

def _crc32c(data: bytes) -> int:
    """CRC-32C bit by bit (the writer uses a table), masked as TFRecord does."""
    c = 0xFFFFFFFF
    for b in data:
        c ^= b
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 & -(c & 1))
    c ^= 0xFFFFFFFF
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _records(path: Path) -> list[bytes]:
    """The TFRecords of a file, each CRC checked."""
    data, out, i = path.read_bytes(), [], 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        assert struct.unpack("<I", data[i + 8:i + 12])[0] == _crc32c(data[i:i + 8])
        out.append(data[i + 12:i + 12 + n])
        assert struct.unpack("<I", data[i + 12 + n:i + 16 + n])[0] == _crc32c(out[-1])
        i += 16 + n
    return out


def _fields(msg: bytes) -> list:
    """[(field number, value)] of a protobuf message: varints as int, 64/32-bit as bytes, length-delimited as bytes."""
    out, i = [], 0
    while i < len(msg):
        key, i = _uvarint(msg, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _uvarint(msg, i)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, i = msg[i:i + size], i + size
        else:
            n, i = _uvarint(msg, i)
            value, i = msg[i:i + n], i + n
        out.append((number, value))
    return out


def _uvarint(b: bytes, i: int):
    shift = n = 0
    while True:
        n |= (b[i] & 0x7F) << shift
        shift += 7
        i += 1
        if not b[i - 1] & 0x80:
            return n, i


def _scalars(path: Path) -> dict:
    """{tag: [(step, value)]} of an event file, decoded from the bytes (Event.step = 2, Event.summary = 5,
    Summary.value = 1, Value.tag = 1, Value.simple_value = 2)."""
    out = {}
    for record in _records(path):
        event = dict(_fields(record))
        for number, value in _fields(event.get(5, b"")):
            v = dict(_fields(value))
            out.setdefault(v[1].decode(), []).append((event.get(2, 0), struct.unpack("<f", v[2])[0]))
    return out


def test_trials_export_tensorboard_event_files(tmp_path):
    """The scalars read back from the event file are metrics.jsonl's (as float32); with tensorboardX installed, its
    protobuf classes read the same file."""
    summary = sweep.run_sweep(FF, {"algorithm": ["bp"], "lr": [1e-2]}, tmp_path / "s", scheduler="inline",
                              log="tensorboard")
    run = tmp_path / "s" / "trials" / summary.best["bp"]["name"]
    metrics = read_metrics(run / "metrics.jsonl")
    path = next((run / "tensorboard").glob("events.out.tfevents.*"))
    events = _scalars(path)
    val = [(m["step"], m["loss"]) for m in metrics if m["split"] == "val"]
    assert [s for s, _ in events["val/loss"]] == [s for s, _ in val]
    assert np.allclose([v for _, v in events["val/loss"]], [v for _, v in val], rtol=1e-6)
    assert np.allclose([v for _, v in events["val/error"]], [m["error"] for m in metrics if m["split"] == "val"],
                       rtol=1e-6)
    assert len(events["train/loss"]) == sum(m["split"] == "train" for m in metrics)
    assert dict(_fields(_records(path)[0]))[3] == b"brain.Event:2"


@pytest.mark.slow
def test_tensorboardx_reads_the_event_files(tmp_path):
    pytest.importorskip("tensorboardX")
    from tensorboardX.proto import event_pb2

    from refimpl.training.tracking import write_events
    write_events(tmp_path / "events.out.tfevents.1.x", [(1, {"a/b": 0.5, "c": -2.0}), (7, {"a/b": 0.25})])
    read = [event_pb2.Event.FromString(r) for r in _records(tmp_path / "events.out.tfevents.1.x")]
    assert read[0].file_version == "brain.Event:2"
    assert [(e.step, v.tag, v.simple_value) for e in read[1:] for v in e.summary.value] == [
        (1, "a/b", 0.5), (1, "c", -2.0), (7, "a/b", 0.25)]


@pytest.mark.slow
def test_train_exports_an_offline_wandb_run(tmp_path, monkeypatch):
    """`train --log wandb` without a network: an offline W&B run in the run directory (about 10 s: W&B starts its
    service)."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    r = CliRunner().invoke(cli, ["train", "--task", "copy-small", "--hidden", "4", "--epochs", "1", "--no-progress",
                                 "--log", "wandb", "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    offline = list((tmp_path / "r" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and any(p.suffix == ".wandb" and p.stat().st_size > 0 for p in offline[0].iterdir())
