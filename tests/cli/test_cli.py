"""The command line: help everywhere, exit 2 and one line on user errors, non-zero on failed checks, JSON output."""

import json
import subprocess
import sys

import pytest


def run(*args):
    return subprocess.run([sys.executable, "-m", "refimpl.run", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args", [["--help"], ["gradcheck", "--help"], ["backends", "--help"]])
def test_help(args):
    r = run(*args)
    assert r.returncode == 0 and "Usage" in r.stdout


@pytest.mark.parametrize("args,phrase", [
    (["gradcheck", "--cell", "gruu"], "gruu"),
    (["gradcheck", "--cell", "gru", "--algorithm", "magic"], "magic"),
    (["gradcheck", "--cell", "gru", "--algorithm", "ep"], "fixed point"),
    (["gradcheck", "--cell", "gru", "--backend", "torch"], "unknown backend 'torch'"),
    (["gradcheck", "--cell", "gru", "--hidden", "0"], "hidden"),
    (["gradcheck", "--cell", "gru", "-o", "nonlinearity=linear"], "option for cell 'gru'"),
    (["gradcheck", "--cell", "rnn", "-o", "nonlinearity"], "KEY=VALUE"),
    (["gradcheck"], "--cell"),
    (["nosuchcommand"], "nosuchcommand"),
])
def test_user_errors_exit_2_with_one_line(args, phrase):
    r = run(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert phrase in lines[0]


@pytest.mark.parametrize("backend", ["numba", "mlx", "cupy"])
def test_gradcheck_on_a_backend_runs_or_says_why_not(backend):
    from refimpl.registry import load_backend
    b = load_backend(backend)
    r = run("gradcheck", "--cell", "gru", "--seq-len", "3", "--hidden", "3", "--backend", backend, "--dtype", "float32")
    if b.available and "gru.forward" in b.kernels:
        assert r.returncode == 0 and "all checks passed" in r.stdout, (r.stdout, r.stderr)
    else:
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and backend in r.stderr, r.stderr


def test_gradcheck_table_and_json():
    r = run("gradcheck", "--cell", "gru", "--seq-len", "3", "--hidden", "3")
    assert r.returncode == 0, r.stderr
    assert "layers.0.cell.weight_hh" in r.stdout and "all checks passed" in r.stdout
    r = run("gradcheck", "--cell", "lru", "--layers", "2", "--seq-len", "3", "--hidden", "2", "--json",
            "--norm", "layer", "--ffn", "glu", "--residual", "--encoder", "--dtype", "float32")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] and report["dtype"] == "float32"
    names = {row["name"] for row in report["rows"]}
    assert {"layers.1.cell.nu_log", "layers.0.C_re", "encoder.weight", "x"} <= names
    assert all(row["rel_err_bptt_vs_fd"] <= 1e-6 for row in report["rows"])


def test_backends_lists_numpy_with_every_kernel():
    r = run("backends", "--json")
    assert r.returncode == 0
    rows = {row["backend"]: row for row in json.loads(r.stdout)}
    assert rows["numpy"]["available"] and not rows["numpy"]["missing"]
    assert set(rows) == {"numpy", "numba", "mlx", "cupy"}
    for name in ("numba", "mlx", "cupy"):
        assert rows[name]["available"] or rows[name]["reason"]
    assert "numpy" in run("backends").stdout


@pytest.mark.slow
def test_default_job_checks_every_cell_and_learns(tmp_path):
    """The default job (what `make run` runs), in a scratch directory: exactness table, then the learning demo."""
    import os
    from pathlib import Path
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    r = subprocess.run([sys.executable, "-m", "refimpl.run"], capture_output=True, text=True, timeout=600,
                       cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    for cell in ("rnn(tanh)", "rnn(linear)", "gru", "lstm", "lru"):
        assert cell in r.stdout
    assert "all checks passed" in r.stdout
    for cell in ("lru", "gru"):
        report = json.loads((tmp_path / "runs" / "demo" / cell / "compare.json").read_text())
        bptt = next(run for run in report["runs"] if run["algorithm"] == "bptt")
        assert bptt["test_accuracy"] > 0.5, f"{cell} with BPTT should be far above chance (0.1) on digits-seq"
        assert (tmp_path / "runs" / "demo" / cell / "compare.png").stat().st_size > 0


def test_gradcheck_fails_when_an_exact_algorithm_is_wrong(monkeypatch):
    """A deliberately wrong 'exact' algorithm (BPTT with one gradient off by 1e-6 relative) must fail the check
    with exit status 1; the same wrong gradients under an approximate label are reported, not judged."""
    from click.testing import CliRunner

    from refimpl import algorithms
    from refimpl.cli import cli

    def slightly_wrong(kernels, model, params, x, y, loss, mask):
        value, grads = algorithms.ALGORITHMS["bptt"].model_grads(kernels, model, params, x, y, loss, mask)
        return value, {**grads, "readout.bias": grads["readout.bias"] * (1 + 1e-6)}

    for exact, code in (("yes", 1), ("no", 0)):
        fake = algorithms.Algorithm("rtrl", exact, "a wrong stand-in", model_grads=slightly_wrong)
        monkeypatch.setitem(algorithms.ALGORITHMS, "rtrl", fake)
        r = CliRunner().invoke(cli, ["gradcheck", "--cell", "rnn", "--algorithm", "rtrl"])
        assert r.exit_code == code, r.output
        assert ("FAILED" in r.output) == (code == 1)


def test_backends_says_which_dtypes_a_backend_cannot_run():
    from refimpl.registry import load_backend
    b = load_backend("mlx")
    if not b.available:
        pytest.skip(f"mlx: {b.reason}")
    rows = {row["backend"]: row for row in json.loads(run("backends", "--json").stdout)}
    cases = [c for v in rows["mlx"]["unsupported"].values() for c in v]
    assert "lru.forward float64" in cases and not any(c.startswith("gru.") for c in cases)
    assert "not run here: " in run("backends").stdout


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_gradcheck_with_other_losses_checks_bptt_against_fd(loss):
    r = run("gradcheck", "--cell", "lstm", "--loss", loss, "--pooling", "cumulative_mean", "--seq-len", "4", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["config"]["loss"] == loss and report["ok"]
    assert all(row["rel_err_bptt_vs_fd"] <= 1e-6 for row in report["rows"])


def test_gradcheck_reports_drtp_alignment_with_a_classification_loss():
    r = run("gradcheck", "--cell", "gru", "--algorithm", "drtp", "--loss", "ce", "--layers", "2", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["algorithm"] == "drtp" and report["tol_vs_bptt"] is None and report["groups"]


def test_recipes_and_the_default_job_pick_the_fastest_backend_available(monkeypatch):
    """registry.SPEED_ORDER (measured: docs/bench/step.md): numba where it runs, else the NumPy reference; a backend
    given on the command line wins."""
    import dataclasses

    from refimpl import registry
    from refimpl.training.config import TrainConfig
    from refimpl.training.recipes import apply_recipe
    want = "numba" if registry.load_backend("numba").available else "numpy"
    assert registry.fastest_backend() == want
    config, _ = apply_recipe("copy-lru", TrainConfig())
    assert config.backend == want
    config, _ = apply_recipe("copy-lru", dataclasses.replace(TrainConfig(), backend="mlx"), explicit={"backend"})
    assert config.backend == "mlx"
    real = registry.load_backend
    monkeypatch.setattr(registry, "load_backend",
                        lambda name: registry.Backend(name, False, "absent") if name == "numba" else real(name))
    assert registry.fastest_backend() == "numpy"
