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
    """The copy task, lru, bptt vs truncated, 2 learning rates, 2 seeds: identical numbers on an embedded
    LocalCluster (two worker processes) and in this process."""
    pytest.importorskip("distributed")
    inline = sweep.run_sweep(RNN, RNN_GRID, tmp_path / "inline", scheduler="inline", seeds=2)
    local = sweep.run_sweep(RNN, RNN_GRID, tmp_path / "local", workers=2, seeds=2)
    assert set(local.best) == {"bptt", "truncated"} and len(local.ran) == 6
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

def _tfevents(path: Path) -> dict:
    """{tag: [(step, value)]} of the scalars in a TensorBoard event file (TFRecord framing, tensorboardX's protos)."""
    from tensorboardX.proto import event_pb2

    data, out, i = path.read_bytes(), {}, 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
        i += 12 + n + 4
        for v in event.summary.value:
            if v.HasField("simple_value"):
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_trials_export_tensorboard_and_offline_wandb(tmp_path, monkeypatch):
    pytest.importorskip("tensorboardX")
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    summary = sweep.run_sweep(FF, {"algorithm": ["bp"], "lr": [1e-2]}, tmp_path / "s", scheduler="inline",
                              log="tensorboard,wandb")
    run = tmp_path / "s" / "trials" / summary.best["bp"]["name"]
    metrics = read_metrics(run / "metrics.jsonl")
    events = _tfevents(next((run / "tensorboard").glob("events.out.tfevents.*")))
    val = [(m["step"], m["loss"]) for m in metrics if m["split"] == "val"]
    assert [s for s, _ in events["val/loss"]] == [s for s, _ in val]
    assert np.allclose([v for _, v in events["val/loss"]], [v for _, v in val], rtol=1e-6)     # float32 scalars
    assert len(events["train/loss"]) == sum(m["split"] == "train" for m in metrics)
    offline = list((run / "wandb").glob("wandb/offline-run-*")) or list((run / "wandb").rglob("offline-run-*"))
    assert offline and any(p.suffix == ".wandb" for p in offline[0].iterdir()), wandb.__version__
