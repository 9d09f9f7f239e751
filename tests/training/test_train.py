"""Training runs you can trust: determinism, exact resume, divergence handling, refused combinations, the CLI."""

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
from refimpl.api import make_model
from refimpl.errors import UnknownNameError, UnsupportedError
from refimpl.cli import cli
from refimpl.runs import TrainingDiverged, load_checkpoint, read_metrics
from refimpl.training.config import TrainConfig
from refimpl.training.loop import TRAIN_EVAL_SIZE, _subset, train

TINY = dict(task="digits-seq", task_options={"mode": "row"}, cell="lru", hidden=8, batch_size=64, steps=12,
            log_every=1, lr=1e-2)


def _numbers(run_dir):
    """The metrics of a run without its wall-clock fields."""
    return [{k: v for k, v in r.items() if k != "time_s"} for r in read_metrics(Path(run_dir) / "metrics.jsonl")]


def test_same_seed_gives_identical_metrics(tmp_path):
    cfg = TrainConfig(**TINY)
    a, b = train(cfg, tmp_path / "a"), train(cfg, tmp_path / "b")
    assert _numbers(tmp_path / "a") == _numbers(tmp_path / "b")
    assert a.test_loss == b.test_loss and len(_numbers(tmp_path / "a")) >= 12
    c = train(TrainConfig(**{**TINY, "seed": 1}), tmp_path / "c")
    assert c.test_loss != a.test_loss


def test_run_directory_contents(tmp_path):
    train(TrainConfig(**TINY), tmp_path / "run")
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "metrics.jsonl", "checkpoint.npz", "result.json"} <= files
    assert not any(name.endswith(".tmp") for name in files)
    assert TrainConfig.from_dict(json.loads((tmp_path / "run" / "config.json").read_text())) == TrainConfig(**TINY)
    _, params = make_model("lru", 8, 8, 10, seed=0)           # the checkpoint keys are part of the format
    with np.load(tmp_path / "run" / "checkpoint.npz") as z:
        assert {k for k in z.files if k.startswith("param/")} == {f"param/{k}" for k in params}
        assert "step" in z.files and all(k == "step" or k.startswith(("param/", "opt/")) for k in z.files)
    splits = {r["split"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")}
    assert splits == {"train", "val", "test"}
    with pytest.raises(UnsupportedError, match="already holds a run"):
        train(TrainConfig(**TINY), tmp_path / "run")


def test_killed_run_resumes_to_identical_metrics(tmp_path, monkeypatch):
    cfg = TrainConfig(**{**TINY, "checkpoint_every": 4})
    train(cfg, tmp_path / "whole")
    real_step, calls = optim.step, []

    def dying_step(*args, **kwargs):            # the process "dies" during step 7, after the checkpoint at step 4
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)
    monkeypatch.setattr(optim, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "killed")
    monkeypatch.setattr(optim, "step", real_step)
    logged = _numbers(tmp_path / "killed")
    assert max(r["step"] for r in logged) == 6            # steps 5 and 6 were logged after the last checkpoint
    train(cfg, tmp_path / "killed", resume=True)
    assert _numbers(tmp_path / "killed") == _numbers(tmp_path / "whole")


def test_sigkilled_cli_run_resumes_to_identical_metrics(tmp_path):
    """The real thing: SIGKILL a `train` process after its first checkpoint, resume it from the CLI."""
    args = ["train", "--task", "digits-seq", "-t", "mode=row", "--cell", "gru", "--hidden", "8", "--batch-size",
            "32", "--epochs", "3", "--log-every", "1", "--no-progress", "--lr", "0.01"]
    whole = tmp_path / "whole"
    r = subprocess.run([sys.executable, "-m", "refimpl.run", *args, "--out", str(whole)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    killed = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, "-m", "refimpl.run", *args, "--out", str(killed)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoint.npz").exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.02)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    r = subprocess.run([sys.executable, "-m", "refimpl.run", "train", "--resume", str(killed), "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert _numbers(killed) == _numbers(whole)


def test_divergence_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path):
    cfg = TrainConfig(**{**TINY, "task_options": {"mode": "row"}, "cell": "rnn", "cell_options":
                         {"nonlinearity": "linear"}, "optimizer": "sgd", "lr": 1e4, "clip_norm": None,
                         "steps": 40, "checkpoint_every": 1, "weight_decay": 0.0})
    with pytest.raises(TrainingDiverged, match="diverged at step") as e:
        train(cfg, tmp_path / "run")
    assert "last good checkpoint" in str(e.value)
    with np.load(tmp_path / "run" / "checkpoint.npz") as z:
        assert all(np.all(np.isfinite(z[k])) for k in z.files)


@pytest.mark.parametrize("changes,err,phrase", [
    (dict(task="copy", task_options={}, pooling="last"), UnsupportedError, "target at every step"),
    (dict(task="digits", task_options={}, algorithm="online"), UnsupportedError, "static inputs"),
    (dict(algorithm="ep"), UnsupportedError, "fixed point"),           # EP on a sequence task
    (dict(task="digitz"), UnknownNameError, "did you mean"),
    (dict(hidden=-3), UnsupportedError, "positive integer"),
    (dict(algorithm="bptt", update_every=2), UnsupportedError, "use tbptt -a window=k"),
    (dict(backend="nosuch"), UnknownNameError, "backend"),
])
def test_incompatible_or_bad_configs_are_refused(tmp_path, changes, err, phrase):
    with pytest.raises(err, match=phrase):
        train(TrainConfig(**{**TINY, **changes}), tmp_path / "run")


def test_readout_baseline_trains_only_the_head(tmp_path):
    train(TrainConfig(**{**TINY, "algorithm": "readout"}), tmp_path / "run")
    params = load_checkpoint(tmp_path / "run" / "checkpoint.npz").params
    _, init = make_model("lru", 8, 8, 10, seed=0)
    for k in init:
        assert np.array_equal(params[k], init[k]) == (not k.startswith("readout.")), k


@pytest.mark.parametrize("args,phrase", [
    (["train", "--task", "nope"], "unknown task 'nope'"),
    (["train", "--task", "copy", "--pooling", "mean"], "target at every step"),
    (["train", "--hidden", "-2"], "x>=1"),
    (["train", "--preset", "nope"], "unknown preset"),
    (["train", "--algorithm", "ep"], "fixed point"),
    (["train", "--task", "digits", "--algorithm", "ep", "-a", "K=50", "-a", "T=10"], "K = 50 > T = 10"),
    (["train", "--task", "digits", "--algorithm", "ep", "-a", "beta=0"], "beta"),
    (["train", "--task", "digits", "--algorithm", "online"], "static inputs"),
    (["ep-curves", "--K", "100", "--T", "10"], "K = 100 > T = 10"),
    (["ep-recipe", "--beta", "-1"], "beta"),
    (["train", "-t", "mode"], "KEY=VALUE"),
    (["compare", "--algorithms", "bptt,magic"], "unknown algorithm 'magic'"),
    (["plot", "does-not-exist"], "does-not-exist"),
])
def test_cli_bad_options_exit_2_with_one_line(tmp_path, args, phrase):
    r = CliRunner().invoke(cli, args + (["--out", str(tmp_path / "x")] if args[0] not in ("plot", "ep-recipe")
                                        else []))
    assert r.exit_code == 2, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()] if hasattr(r, "stderr") else []
    assert len(lines) == 1 and phrase in lines[0], r.output


def test_cli_train_compare_plot(tmp_path):
    base = ["--task", "digits-seq", "-t", "mode=row", "--hidden", "8", "--steps", "6", "--batch-size", "64",
            "--no-progress"]
    r = CliRunner().invoke(cli, ["train", *base, "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert "val accuracy" in r.output
    r = CliRunner().invoke(cli, ["compare", *base, "--algorithms", "bptt,readout", "--out", str(tmp_path / "cmp")])
    assert r.exit_code == 0, r.output
    assert "bptt" in r.output and "readout" in r.output and (tmp_path / "cmp" / "compare.png").stat().st_size > 0
    report = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [run["algorithm"] for run in report["runs"]] == ["bptt", "readout"]
    assert all(run["peak_memory_bytes"] > 0 for run in report["runs"])
    r = CliRunner().invoke(cli, ["plot", str(tmp_path / "run"), "--out", str(tmp_path / "c.png")])
    assert r.exit_code == 0 and (tmp_path / "c.png").stat().st_size > 0


def test_recipe_runs_its_comparison_and_explicit_options_override_it(tmp_path):
    r = CliRunner().invoke(cli, ["compare", "--recipe", "fptt-digits", "--steps", "1", "--no-progress",
                                 "--out", str(tmp_path / "cmp")])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("recipe fptt-digits: FPTT paper comparison")
    report = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [run["algorithm"] for run in report["runs"]] == ["bptt", "fptt", "spatial"]
    fptt = next(run for run in report["runs"] if run["algorithm"] == "fptt")
    assert fptt["grad_vs_bptt"]["cosine"] > 1 - 1e-9                        # exact at the initial weights
    cfg = report["config"]
    assert (cfg["layers"], cfg["hidden"], cfg["pooling"], cfg["cell"]) == (4, 32, "cumulative_mean", "lru")
    assert cfg["steps"] == 1                                       # the explicit option overrides the recipe
    r = CliRunner().invoke(cli, ["compare", "--recipe", "ep-digits", "--epochs", "1", "--no-progress",
                                 "--out", str(tmp_path / "ep")])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "ep" / "compare.json").read_text())
    assert [run["algorithm"] for run in report["runs"]] == ["ep", "bptt"]
    assert all(run["test_accuracy"] > 0.3 for run in report["runs"])     # one epoch: both far above chance (0.1)


def test_final_train_loss_uses_a_seeded_subset_of_large_training_sets():
    from tasks import make_task
    task = make_task("copy", seq_len=2, waiting_time=1, n_train=TRAIN_EVAL_SIZE + 50, n_val=4, n_test=4)
    a, b = _subset(task.train, TRAIN_EVAL_SIZE, 0), _subset(task.train, TRAIN_EVAL_SIZE, 0)
    assert a.x.shape[1] == a.y.shape[1] == a.mask.shape[1] == TRAIN_EVAL_SIZE
    assert np.array_equal(a.x, b.x) and _subset(task.val, TRAIN_EVAL_SIZE, 0) is task.val


def test_truly_online_updates(tmp_path):
    """--update-every T (one update per sequence) is ordinary online training; smaller K updates inside the
    sequence, and is refused for algorithms that need the whole sequence."""
    T = 8                                                   # digits-seq in row mode
    base = {**TINY, "algorithm": "online", "steps": 4}
    train(TrainConfig(**base), tmp_path / "plain")
    train(TrainConfig(**base, update_every=T), tmp_path / "every-T")
    assert _numbers(tmp_path / "plain") == _numbers(tmp_path / "every-T")
    r = train(TrainConfig(**base, update_every=2), tmp_path / "every-2")
    assert np.isfinite(r.test_loss) and _numbers(tmp_path / "every-2") != _numbers(tmp_path / "plain")
    with pytest.raises(UnsupportedError, match="can update inside a sequence"):
        train(TrainConfig(**{**TINY, "update_every": 2}), tmp_path / "bptt")
