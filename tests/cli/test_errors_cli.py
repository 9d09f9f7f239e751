"""Every user and environment error of issue 19 answered in one line with the right exit status, in-process through
the CLI's boundary (refimpl/cli.py _OneLineErrors): damaged run files, unwritable and full output locations, runs too
big for memory, --resume with other options, numeric options at their edges, and --debug / real bugs (tracebacks)."""

import errno
import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from refimpl import checks, runs
from refimpl.cli import cli
from refimpl.errors import RunFileError

#: A train run of about 0.1 s: copy task, 16 training sequences of T = 7, hidden 2, one epoch (one step).
TINY = ["--task", "copy", "-t", "n_train=16", "-t", "n_val=8", "-t", "n_test=8", "-t", "waiting_time=2",
        "--hidden", "2", "--epochs", "1", "--batch-size", "16", "--no-progress"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line(r, status: int, *phrases) -> str:
    """The result exits with `status` and says one line on stderr that starts with "error:" and holds `phrases`."""
    assert r.exit_code == status, (r.exit_code, r.output, r.exception)
    assert "Traceback" not in r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs") / "run"
    r = invoke("train", *TINY, "--out", d)
    assert r.exit_code == 0, r.output
    return d


@pytest.fixture
def run_dir(pristine, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(pristine, d)
    return d


# ----------------------------------------------------------------------------------------------------------------
# Damaged run files: name the file, what is wrong, and the fix (delete the directory or another --out)

CONFIG_DAMAGE = {
    "empty": lambda text: "",
    "garbage": lambda text: "garbage\n",
    "truncated": lambda text: text[:len(text) // 2],
    "a list": lambda text: "[1, 2]",
    "hidden is text": lambda text: json.dumps({**json.loads(text), "hidden": "x"}),
    "lr is a list": lambda text: json.dumps({**json.loads(text), "lr": [0.1]}),
    "epochs is a bool": lambda text: json.dumps({**json.loads(text), "epochs": True}),
    "cell_options is a number": lambda text: json.dumps({**json.loads(text), "cell_options": 3}),
    "an unknown field": lambda text: json.dumps({**json.loads(text), "hiden": 3}),
}


@pytest.mark.parametrize("damage", list(CONFIG_DAMAGE))
def test_a_damaged_config_is_named_with_the_fix(run_dir, damage):
    cfg = run_dir / "config.json"
    cfg.write_text(CONFIG_DAMAGE[damage](cfg.read_text()))
    one_line(invoke("train", "--resume", run_dir, "--no-progress"), 2, str(cfg), "delete", "--out")


def _pickled(path):
    np.savez(path, step=np.int64(1), **{"param/x": np.array([{"a": 1}], dtype=object)})


CHECKPOINT_DAMAGE = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:100]), "not a zip file"),
    "not a zip": (lambda p: p.write_text("not a checkpoint"), "pickled"),
    "pickled objects": (_pickled, "allow_pickle=False"),
    "a flipped data byte": (lambda p: p.write_bytes(_flip(p.read_bytes(), p.read_bytes().index(b"PK\x01\x02") - 1)),
                            "Bad CRC-32"),
    "another run's arrays": (lambda p: np.savez(p, step=np.int64(1), **{"param/readout.weight": np.zeros(3)}),
                             "missing"),
}


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


@pytest.mark.parametrize("damage", list(CHECKPOINT_DAMAGE))
def test_a_damaged_checkpoint_is_named_and_never_unpickled(run_dir, damage):
    ckpt = run_dir / "checkpoint.npz"
    write, phrase = CHECKPOINT_DAMAGE[damage]
    write(ckpt)
    one_line(invoke("train", "--resume", run_dir, "--no-progress"), 2, str(ckpt), phrase, "delete")


def test_load_checkpoint_refuses_pickles_without_running_them(tmp_path):
    _pickled(tmp_path / "c.npz")
    with pytest.raises(RunFileError, match="allow_pickle"):
        runs.load_checkpoint(tmp_path / "c.npz")


@pytest.mark.parametrize("damage,phrase", [
    (lambda lines: ["garbage"] + lines, "line 1 is not JSON"),
    (lambda lines: lines[:1] + ["[1, 2]"] + lines[1:], "line 2 is a JSON list"),
    (lambda lines: [lines[0].replace('"split"', '"spl1t"')] + lines[1:], "line 1 has no split"),
    (lambda lines: [json.dumps({**json.loads(lines[0]), "loss": "low"})] + lines[1:], "'loss' = 'low'"),
])
def test_plot_names_a_damaged_metrics_file(run_dir, tmp_path, damage, phrase):
    metrics = run_dir / "metrics.jsonl"
    metrics.write_text("\n".join(damage(metrics.read_text().splitlines())) + "\n")
    one_line(invoke("plot", run_dir, "--out", tmp_path / "c.png"), 2, str(metrics), phrase)
    one_line(invoke("train", "--resume", run_dir, "--no-progress"), 2, str(metrics), phrase)


def test_a_torn_last_metrics_line_is_still_plotted(run_dir, tmp_path):
    metrics = run_dir / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"split": "tra')
    r = invoke("plot", run_dir, "--out", tmp_path / "c.png")
    assert r.exit_code == 0 and (tmp_path / "c.png").stat().st_size > 0, r.output


# ----------------------------------------------------------------------------------------------------------------
# Unwritable and full output locations: the path and the error; no temp file left behind

def _raise(code):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return fail


def _no_temp_files(d):
    return not [p for p in d.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]


def test_a_full_disk_during_an_atomic_write_fails_the_run_in_one_line_and_leaves_no_temp_file(tmp_path,
                                                                                                monkeypatch):
    monkeypatch.setattr(runs.os, "fsync", _raise(errno.ENOSPC))        # the temp file exists when this raises
    out = tmp_path / "run"
    one_line(invoke("train", *TINY, "--out", out), 1, str(out / "config.json"), "No space left on device",
             "free some space")
    assert out.is_dir() and _no_temp_files(out) and not (out / "config.json").exists()


def test_an_atomic_write_that_fails_removes_its_temp_file(tmp_path, monkeypatch):
    monkeypatch.setattr(runs.os, "replace", _raise(errno.ENOSPC))
    with pytest.raises(OSError) as e:
        runs.atomic_write_json(tmp_path / "x.json", {"a": 1})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "x.json")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_logging_metrics_names_metrics_jsonl(tmp_path):
    class Full:
        def write(self, text=""):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        flush = close = write
    log = runs.MetricsLog(tmp_path / "metrics.jsonl")
    log._f.close()
    log._f = Full()
    for step in (lambda: log.write({"split": "train", "step": 1}), log.close):
        with pytest.raises(OSError) as e:
            step()
        assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "metrics.jsonl")


def test_a_read_only_output_location_is_named_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(runs.tempfile, "mkstemp", _raise(errno.EROFS))
    out = tmp_path / "run"
    one_line(invoke("train", *TINY, "--out", out), 2, str(out / "config.json"), "Read-only file system",
             "another --out")


def test_plot_to_a_full_disk_leaves_no_temp_file(run_dir, tmp_path, monkeypatch):
    import matplotlib.figure

    def partial_then_full(self, path, **kwargs):
        open(path, "wb").write(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", partial_then_full)
    out = tmp_path / "plots" / "c.png"
    one_line(invoke("plot", run_dir, "--out", out), 1, str(out), "No space left on device")
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("command", ["train", "plot", "ep-curves"])
def test_an_output_location_under_a_file_is_named_in_one_line(run_dir, tmp_path, command):
    (tmp_path / "afile").write_text("x")                     # works as root too, unlike a read-only directory
    out = tmp_path / "afile" / "sub"
    args = {"train": ["train", *TINY, "--out", out], "plot": ["plot", run_dir, "--out", out / "c.png"],
            "ep-curves": ["ep-curves", "--T", "3", "--K", "2", "--batch", "2", "--out", out]}[command]
    one_line(invoke(*args), 2, str(tmp_path / "afile"), "choose another --out")


def _chmod_works(d) -> bool:
    """Whether a read-only directory refuses writes here (not as root, not on every file system)."""
    d.chmod(0o500)
    try:
        (d / "probe").write_text("x")
    except PermissionError:
        return True
    (d / "probe").unlink()
    return False


@pytest.mark.parametrize("command", ["train", "plot"])
def test_a_read_only_directory_is_named_in_one_line(run_dir, tmp_path, command):
    locked = tmp_path / "locked"
    locked.mkdir()
    try:
        if not _chmod_works(locked):
            pytest.skip("chmod does not make a directory read-only here (running as root?)")
        args = (["train", *TINY, "--out", locked / "run"] if command == "train"
                else ["plot", run_dir, "--out", locked / "c.png"])
        one_line(invoke(*args), 2, str(locked), "Permission denied")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


# ----------------------------------------------------------------------------------------------------------------
# Memory that will not fit: refused before allocating, with the estimate and the knob

@pytest.mark.parametrize("args,knob", [
    (["train", "--task", "copy", "--cell", "gru", "--hidden", "100000"], "--hidden"),
    (["train", "--task", "copy", "--cell", "lstm", "--hidden", "300", "--algorithm", "rtrl"], "algorithm"),
    (["bpfree", "--arch", "100000-100000"], "--arch"),
])
def test_a_run_too_big_for_memory_is_refused_with_the_estimate(tmp_path, monkeypatch, args, knob):
    monkeypatch.setattr(checks, "available_memory", lambda: 16 * 2**30)     # the same answer on a bigger machine
    line = one_line(invoke(*args, "--no-progress", "--out", tmp_path / "run"), 2, "GiB", knob)
    assert "would need about" in line
    assert not (tmp_path / "run").exists()                   # refused before the run directory was made


def test_memory_that_runs_out_past_the_estimate_fails_the_run_in_one_line(tmp_path, monkeypatch):
    import refimpl.cli

    def allocate(*args, **kwargs):
        raise MemoryError("Unable to allocate 224. GiB for an array with shape (100000, 300000)")
    monkeypatch.setattr(refimpl.cli, "train_run", allocate)
    one_line(invoke("train", *TINY, "--out", tmp_path / "x"), 1, "out of memory", "224. GiB", "--hidden")


def test_the_memory_estimate_names_the_largest_part(tmp_path, monkeypatch):
    monkeypatch.setattr(checks, "available_memory", lambda: 2**10)
    one_line(invoke("train", *TINY, "--batch-size", "16", "--out", tmp_path / "run"), 2, "states", "GiB",
             "--batch-size")


# ----------------------------------------------------------------------------------------------------------------
# --resume with other options: honoured when safe (--epochs, --steps, --data-dir), refused with the stored values

@pytest.mark.parametrize("args,phrases", [
    (["--cell", "lstm"], ["--cell lstm (stored: lru)"]),
    (["--lr", "0.1"], ["--lr 0.1 (stored: 0.003)"]),
    (["--cell", "gru", "--hidden", "5"], ["--cell gru", "--hidden 5 (stored: 2)"]),
    (["-o", "r_min=0.5"], ["--cell-option {'r_min': 0.5} (stored: {})"]),
    (["--preset", "copy-small"], ["--preset"]),
])
def test_resume_refuses_changed_options_with_their_stored_values(run_dir, args, phrases):
    one_line(invoke("train", "--resume", run_dir, "--no-progress", *args), 2, *phrases, "may change")


def test_resume_honours_more_epochs_and_options_equal_to_the_stored_ones(run_dir):
    r = invoke("train", "--resume", run_dir, "--no-progress", "--epochs", "3", "--cell", "lru", "--hidden", "2")
    assert r.exit_code == 0 and ": 3 steps" in r.output, r.output
    assert json.loads((run_dir / "config.json").read_text())["epochs"] == 1      # config.json stays the stored one
    steps = [rec["step"] for rec in runs.read_metrics(run_dir / "metrics.jsonl") if rec["split"] == "val"]
    assert steps == [1, 2, 3]


def test_resume_refuses_fewer_steps_than_done_and_another_out(run_dir, tmp_path):
    assert invoke("train", "--resume", run_dir, "--no-progress", "--epochs", "3").exit_code == 0
    one_line(invoke("train", "--resume", run_dir, "--no-progress", "--epochs", "2"), 2, "done 3 steps")
    one_line(invoke("train", "--resume", run_dir, "--out", tmp_path / "other"), 2, "drop --out")


def test_resume_of_a_run_counted_in_steps_refuses_epochs_and_takes_steps(tmp_path):
    out = tmp_path / "run"
    assert invoke("train", *TINY, "--steps", "1", "--out", out).exit_code == 0
    one_line(invoke("train", "--resume", out, "--epochs", "5", "--no-progress"), 2, "--steps instead")
    r = invoke("train", "--resume", out, "--steps", "2", "--no-progress")
    assert r.exit_code == 0 and ": 2 steps" in r.output, r.output


def test_bpfree_resume_refuses_a_changed_rule(tmp_path):
    out = tmp_path / "ff"
    base = ["--arch", "3", "--epochs", "1", "--batch-size", "512", "--no-trackers", "--no-progress"]
    assert invoke("bpfree", *base, "--out", out).exit_code == 0
    one_line(invoke("bpfree", "--resume", out, "--algorithm", "dfa", "--no-progress"), 2,
             "--algorithm dfa (stored: bp)")


# ----------------------------------------------------------------------------------------------------------------
# Numeric options at their edges: Click's one line with the allowed range

@pytest.mark.parametrize("args,phrase", [
    (["train", "--hidden", "0"], "x>=1"), (["train", "--layers", "0"], "x>=1"),
    (["train", "--epochs", "0"], "x>=1"), (["train", "--steps", "0"], "x>=1"),
    (["train", "--batch-size", "0"], "x>=1"), (["train", "--d-model", "0"], "x>=1"),
    (["train", "--lr", "0"], "x>0"), (["train", "--lr", "nan"], "not a finite number"),
    (["train", "--lr", "inf"], "not a finite number"), (["train", "--weight-decay", "-1"], "x>=0"),
    (["train", "--clip", "-1"], "x>=0"), (["train", "--rec-lr-factor", "-0.5"], "x>=0"),
    (["train", "--seed", "-1"], "x>=0"), (["train", "--warmup-steps", "-1"], "x>=0"),
    (["train", "--log-every", "0"], "x>=1"), (["train", "--update-every", "0"], "x>=1"),
    (["train", "--chunk", "0"], "x>=1"), (["train", "--micro-batch", "0"], "x>=1"),
    (["compare", "--hidden", "0"], "x>=1"), (["gradcheck", "--cell", "gru", "--seed", "-1"], "x>=0"),
    (["gradcheck", "--cell", "gru", "--chunk", "0"], "x>=1"),
    (["ep-curves", "--T", "0"], "x>=1"), (["ep-curves", "--K", "0"], "x>=1"),
    (["ep-curves", "--beta", "0"], "x>=2.22"), (["ep-recipe", "--beta", "-0.1"], "x>=2.22"),
    (["ep-curves", "--beta", "5e-324"], "x>=2.22"),
    (["train", "--task", "digits", "--algorithm", "ep", "-a", "beta=1e-300"], "machine epsilon"),
    (["ep-curves", "--sizes", "5"], "two or more"), (["ep-curves", "--sizes", "5,0,2"], "two or more"),
    (["ep-recipe", "-n", "dt=0"], "dt"),
    (["bpfree", "--dropout", "1"], "0<=x<1"), (["bpfree", "--dropout", "-0.1"], "0<=x<1"),
    (["bpfree", "--lr", "0"], "x>0"), (["bpfree", "--epochs", "0"], "x>=1"),
    (["sweep", "--workers", "0"], "workers must be a positive integer"), (["sweep", "--lr-points", "0"], "x>=1"),
    (["sweep", "--lr-min", "0"], "x>0"),
])
def test_numeric_options_are_refused_at_their_edges(tmp_path, args, phrase):
    out = [] if args[0] in ("gradcheck", "ep-recipe") else ["--out", tmp_path / "x"]
    one_line(invoke(*args, *out), 2, phrase)


def test_the_allowed_ranges_show_in_help():
    r = invoke("train", "--help")
    assert "--hidden INTEGER RANGE" in r.output and "x>0" in r.output


# ----------------------------------------------------------------------------------------------------------------
# Options that were silently ignored, and the two tracebacks of the issue

@pytest.mark.parametrize("args,phrase", [
    (["train", *TINY, "--net", "conv"], "sequence task"),
    (["train", *TINY, "-n", "activation=tanh"], "sequence task"),
    (["compare", *TINY, "--algorithms", ""], "names no algorithm"),
    (["compare", *TINY, "--algorithms", " , "], "names no algorithm"),
    (["train", "--task", "digits", "--net", "conv", "-n", "channels=3,4,5", "--steps", "1"], "channels=3,4,5"),
])
def test_ignored_or_crashing_options_are_refused_in_one_line(tmp_path, args, phrase):
    one_line(invoke(*args, "--out", tmp_path / "x"), 2, phrase)


def test_conv_net_takes_a_channel_pair(tmp_path):
    r = invoke("train", "--task", "digits", "--net", "conv", "-n", "channels=2,3", "--steps", "1", "--batch-size",
               "8", "--no-progress", "--out", tmp_path / "x")
    assert r.exit_code == 0, r.output
    ckpt = runs.load_checkpoint(tmp_path / "x" / "checkpoint.npz")
    assert sorted(ckpt.params[k].shape[0] for k in ("K0", "K1")) == [2, 3]


# ----------------------------------------------------------------------------------------------------------------
# --debug, and real bugs: tracebacks

def test_debug_shows_the_traceback_of_a_user_error(run_dir):
    (run_dir / "config.json").write_text("")
    r = invoke("--debug", "train", "--resume", run_dir, "--no-progress")
    assert r.exit_code == 1 and isinstance(r.exception, RunFileError)
    r = invoke("--debug", "train", "--hidden", "0")
    assert r.exit_code == 1 and r.exception is not None and not isinstance(r.exception, SystemExit)


def test_a_real_bug_still_raises(monkeypatch, tmp_path):
    import refimpl.cli

    def bug(*args, **kwargs):
        raise KeyError("a bug")
    monkeypatch.setattr(refimpl.cli, "train_run", bug)
    r = invoke("train", *TINY, "--out", tmp_path / "x")
    assert isinstance(r.exception, KeyError)
    monkeypatch.setattr(refimpl.cli, "train_run", lambda *a, **k: open(None))          # an OSError-free TypeError
    assert isinstance(invoke("train", *TINY, "--out", tmp_path / "y").exception, TypeError)


@pytest.mark.parametrize("cell,algorithm,layers", [("gru", "bptt", 2), ("lru", "snap1", 1), ("lstm", "rtrl", 2)])
def test_the_memory_estimate_counts_the_parameters_and_traces_that_are_allocated(cell, algorithm, layers):
    from tasks import make_task
    from refimpl.algorithms import rtrl
    from refimpl.training.config import TrainConfig
    from refimpl.training.problems import build_model, estimate_bytes
    config = TrainConfig(task="copy", task_options={"n_train": 8}, cell=cell, algorithm=algorithm, hidden=3,
                         layers=layers, batch_size=4, encoder=True, d_model=5, ffn="glu")
    task = make_task("copy", seed=0, n_train=8)
    model, params = build_model(config, task)
    parts = estimate_bytes(config, task)
    assert parts["parameters"] == 4 * sum(p.nbytes for p in params.values())
    if algorithm == "bptt":
        assert set(parts) == {"parameters", "states"}
    elif algorithm == "rtrl":                                 # whole-stack: S_total × P sensitivity
        S = sum(c.state_size for c in model.cells)
        assert parts["Jacobians"] == S * sum(p.size for p in params.values()) * 8
    else:                                                     # the traces init_traces allocates, layer by layer
        traces = [rtrl.init_traces(rtrl.LAYER_RULE[algorithm], c, {}, 4) for c in model.cells]
        assert parts["traces"] == sum(a.nbytes for t in traces for a in t.sens.values())
