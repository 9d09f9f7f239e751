"""The tuning workflow (refimpl/training/sweep.py) on the feed-forward rules: the grid, refused combinations,
selection on validation, and resume — a sweep that dies mid-trial, and one SIGKILLed from the CLI (on a local Dask
cluster), completes without rerunning its finished trials. tests/training/test_sweep_general.py: recurrent sweeps,
seeds, the executors, faults."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from refimpl import optim
from refimpl.training import sweep
from refimpl.training.feedforward import BpfreeConfig
from refimpl.errors import UnknownNameError, UnsupportedError
from refimpl.cli import cli
from refimpl.runs import read_metrics

BASE = BpfreeConfig(arch="16", epochs=1, batch_size=256, log_every=1)
GRID = {"algorithm": ["bp", "dfa"], "lr": [3e-3, 1e-2]}


def _numbers(summary_dir):
    """Each trial's results and metrics, without wall-clock fields."""
    out = {}
    for d in sorted((Path(summary_dir) / "trials").iterdir()):
        result = json.loads((d / "result.json").read_text())
        out[d.name] = ({k: v for k, v in result.items() if k not in ("time_s", "run_dir")},
                       [{k: v for k, v in r.items() if k != "time_s"} for r in read_metrics(d / "metrics.jsonl")])
    return out


def test_lr_grid_is_log_spaced():
    lrs = sweep.lr_grid(1e-4, 1e-2, 5)
    assert lrs[0] == 1e-4 and lrs[-1] == 1e-2 and len(lrs) == 5
    assert np.allclose(np.diff(np.log10(lrs)), 0.5, atol=1e-3)
    assert sweep.lr_grid(3e-3, 3e-3, 4) == [3e-3]
    with pytest.raises(UnsupportedError, match="0 < lr_min ≤ lr_max"):
        sweep.lr_grid(1e-2, 1e-4, 3)


def test_expand_refuses_and_warns_with_reasons():
    base = BpfreeConfig(problem="reconstruction")
    trials, refused, warned = sweep.expand(base, {"algorithm": ["dfa", "drtp", "ll-ce", "ll-mse"],
                                                  "activation": ["tanh", "relu"], "lr": [1e-3, 1e-2]})
    assert len(trials) == 2 * 2 * 2 and len(refused) == 2 * 2 * 2
    assert {r["config"]["algorithm"] for r in refused} == {"drtp", "ll-ce"}
    assert any("target is the input" in r["reason"] for r in refused) and not warned
    names = [t.name for t in trials]
    assert len(set(names)) == len(names) and all(n.split("_")[0] in ("dfa", "ll-mse") for n in names)
    _, _, warned = sweep.expand(BASE, {"algorithm": ["drtp"], "activation": ["relu", "swish"]})
    assert len(warned) == 2 and all("unbounded activation" in w for w in warned)
    with pytest.raises(UnknownNameError, match="grid field"):
        sweep.expand(BASE, {"momentum": [0.9]})
    with pytest.raises(UnknownNameError, match="feedback init"):
        sweep.expand(BASE, {"feedback_init": ["orthogonal", "xavier"]})


def test_selection_is_on_validation(tmp_path):
    summary = sweep.run_sweep(BASE, {"algorithm": ["bp", "dfa"], "lr": [1e-3, 1e-2],
                                     "activation": ["tanh", "relu"]}, tmp_path / "s", scheduler="inline")
    results = {d.name: json.loads((d / "result.json").read_text()) for d in (tmp_path / "s" / "trials").iterdir()}
    for algorithm in ("bp", "dfa"):
        mine = {n: r for n, r in results.items() if n.startswith(algorithm + "_")}
        best = min(mine, key=lambda n: (mine[n]["val_error"], mine[n]["val_loss"]))
        assert summary.best[algorithm]["name"] == best
        assert summary.best[algorithm]["test_error"] == mine[best]["test_error"]
    assert "val err %" in summary.table and "best dfa: python -m refimpl.run bpfree" in summary.table
    assert (tmp_path / "s" / "summary.png").stat().st_size > 0
    saved = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert set(saved["best"]) == {"bp", "dfa"} and len(saved["trials"]) == 8


def test_a_sweep_that_dies_mid_trial_resumes_without_rerunning_finished_trials(tmp_path, monkeypatch):
    sweep.run_sweep(BASE, GRID, tmp_path / "whole", scheduler="inline")
    real_step, calls = optim.step, []

    def dying_step(*args, **kwargs):             # 5 steps per trial: dies in the 3rd step of the 3rd trial
        calls.append(1)
        if len(calls) == 13:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)
    monkeypatch.setattr(optim, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(BASE, GRID, tmp_path / "killed", scheduler="inline")
    monkeypatch.setattr(optim, "step", real_step)
    done = {d.name for d in (tmp_path / "killed" / "trials").iterdir() if (d / "result.json").exists()}
    assert len(done) == 2
    stamps = {n: (tmp_path / "killed" / "trials" / n / "metrics.jsonl").stat().st_mtime_ns for n in done}
    summary = sweep.run_sweep(BASE, GRID, tmp_path / "killed", scheduler="inline")
    assert set(summary.skipped) == done and len(summary.ran) == 2
    events = sweep.read_events(tmp_path / "killed")
    second = events[[e["event"] for e in events].index("skip"):]
    assert {e["trial"] for e in second if e["event"] == "skip"} == done
    assert [e["event"] for e in second if e["event"] in ("start", "resume")] == ["resume", "start"]
    assert all((tmp_path / "killed" / "trials" / n / "metrics.jsonl").stat().st_mtime_ns == stamps[n] for n in done)
    assert _numbers(tmp_path / "killed") == _numbers(tmp_path / "whole")       # the resumed trial is exact


@pytest.mark.parametrize("where", [["--scheduler", "inline"],
                                   pytest.param(["--workers", "1"], marks=pytest.mark.slow, id="local-cluster")])
def test_sigkilled_cli_sweep_resumes(tmp_path, where):
    """The real thing: SIGKILL a `sweep` process once two trials have finished, then rerun the same command (in the
    sweep process; on a local Dask cluster, whose worker goes with it)."""
    args = ["sweep", "--algorithms", "bp,dfa", "--lrs", "0.003,0.01", "--archs", "16", "--epochs", "2",
            "--batch-size", "256", *where, "--out", str(tmp_path / "s")]
    p = subprocess.Popen([sys.executable, "-m", "refimpl.run", *args], cwd=Path(__file__).resolve().parents[2],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    trials = tmp_path / "s" / "trials"
    while time.time() < deadline and p.poll() is None:
        if trials.exists() and sum((d / "result.json").exists() for d in trials.iterdir()) >= 2:
            break
        time.sleep(0.02)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    done = {d.name: (d / "result.json").read_bytes() for d in trials.iterdir() if (d / "result.json").exists()}
    assert 2 <= len(done) < 4, "the sweep finished before it could be killed"
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert f"{len(done)} finished (skipped)" in r.stderr + r.output
    assert all((trials / n / "result.json").read_bytes() == b for n, b in done.items())
    assert sum((d / "result.json").exists() for d in trials.iterdir()) == 4
    assert "bp " in r.output and "dfa " in r.output


def test_a_directory_holds_one_sweep(tmp_path):
    inline = {"scheduler": "inline"}
    sweep.run_sweep(BASE, {"algorithm": ["bp"], "lr": [1e-2]}, tmp_path / "s", **inline)
    before = sorted(p.name for p in (tmp_path / "s").iterdir())
    with pytest.raises(UnsupportedError, match="holds another sweep"):
        sweep.run_sweep(BASE, {"algorithm": ["bp"], "lr": [3e-2]}, tmp_path / "s", **inline)
    with pytest.raises(UnsupportedError, match="holds another sweep"):
        sweep.run_sweep(BASE.__class__(epochs=2), {"algorithm": ["bp"], "lr": [1e-2]}, tmp_path / "s", **inline)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == before
    more = sweep.run_sweep(BASE, {"algorithm": ["bp"], "lr": [1e-2]}, tmp_path / "s", seeds=2, **inline)
    assert len(more.skipped) == 1 and len(more.ran) == 1           # more seeds: only the new one runs
    pytest.importorskip("fcntl")
    held = sweep._lock(tmp_path / "s")                     # as if a live sweep process held the directory
    try:
        with pytest.raises(UnsupportedError, match="another sweep process is running"):
            sweep.run_sweep(BASE, {"algorithm": ["bp"], "lr": [1e-2]}, tmp_path / "s", **inline)
    finally:
        held.close()
    assert sweep.run_sweep(BASE, {"algorithm": ["bp"], "lr": [1e-2]}, tmp_path / "s", **inline).skipped


@pytest.mark.parametrize("args,phrase", [
    (["--algorithms", "bp,fa"], "unknown learning rule 'fa'"),
    (["--problem", "reconstruction", "--algorithms", "drtp,ll-ce"], "no runnable combination"),
    (["--inits", "orthogonal,glorot"], "unknown feedback init 'glorot'"),
    (["--lrs", "0.1,fast"], "comma-separated list of numbers"),
    (["--workers", "0"], "workers must be a positive integer"),
    (["--scheduler", "tcp://10.0.0.1:8786", "--workers", "2"], "--workers sizes the local cluster only"),
    (["--scheduler", "http://x"], "is not a scheduler address"),
    (["--seeds", "0"], "0 is not in the range x>=1"),
    (["--objective", "accuracy"], "'accuracy' is not one of"),
    (["--cell", "gru", "--activations", "relu"], "--activations does not apply to a train sweep"),
    (["-g", "momentum=0.9"], "unknown grid field 'momentum'"),
    (["--kind", "bpfree", "-g", "hidden=8,16"], "field 'hidden' does not apply to a bpfree sweep"),
    (["--kind", "train", "-g", "activation=tanh,relu"], "field 'activation' does not apply to a train sweep"),
    (["-g", "seed=1,2"], "the grid cannot vary 'seed'"),
    (["-g", "lr"], "is not FIELD=VALUE"),
    (["--log", "mlflow"], "unknown logger 'mlflow'"),
    (["--lrs", "0.01,0"], "learning rate lr=0.0 is not allowed"),
])
def test_cli_bad_sweeps_exit_2_with_one_line(tmp_path, args, phrase):
    r = CliRunner().invoke(cli, ["sweep", *args, "--epochs", "1", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and phrase in lines[0], r.stderr
