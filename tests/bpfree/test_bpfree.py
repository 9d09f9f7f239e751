"""Backprop-free rules in feed-forward networks (refimpl/bpfree/, refimpl/training/feedforward.py): bp against finite
differences through every block (each block alone: tests/nn/test_batch_norm_activations.py), each rule's update
against its defining formula computed here independently and against finite differences of its local loss, the
trackers (the output-layer alignment compares same-shaped matrices), refused and warned combinations, training that
learns, exact resume and the CLI."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from refimpl import bpfree as bf
from refimpl import optim
from refimpl.errors import BpfreeWarning
from refimpl.nn import init as nn_init
from refimpl.training.feedforward import BpfreeConfig, build, train
from refimpl.errors import ShapeError, UnknownNameError, UnsupportedError
from refimpl.numerics import central_differences, cosine, extended, rel_error
from refimpl.cli import cli
from refimpl.runs import load_checkpoint, read_metrics

FD_TOL = 1e-6          # DESIGN.md §7: bp vs central differences, float64


def _close(a, b, tol=FD_TOL):
    """rel_error ≤ tol, or both zero to rounding (the pre-batch-norm bias has an exactly zero gradient)."""
    return rel_error(a, b) <= tol or (np.abs(a).max() < 1e-12 and np.abs(b).max() < 1e-12)


# ------------------------------------------------------------------------------------------------ blocks vs FD

@pytest.mark.parametrize("problem", bf.PROBLEMS)
def test_output_error_is_the_gradient_of_the_loss_at_the_logits(problem, rng):
    net, _ = bf.make_net((5, 3, 5 if problem == "reconstruction" else 4), problem=problem)
    x, y = rng.uniform(0, 1, (3, 5)), rng.integers(0, 4, 3)
    z = rng.standard_normal((3, net.sizes[-1]))
    _, e = bf.output_loss(net, z, x, y)
    fd = central_differences(lambda q: bf.output_loss(net, q["z"], extended(x), y)[0], {"z": extended(z)})["z"]
    assert rel_error(e, fd.astype(np.float64)) <= FD_TOL


NET_CASES = [(act, bn, drop) for act in bf.ACTIVATIONS for bn, drop in ((False, 0.0), (True, 0.3))]


@pytest.mark.parametrize("problem", bf.PROBLEMS)
@pytest.mark.parametrize("activation,batch_norm,dropout", NET_CASES)
def test_bp_matches_finite_differences(activation, batch_norm, dropout, problem, rng):
    sizes = (5, 4, 3, 5 if problem == "reconstruction" else 3)
    net, params = bf.make_net(sizes, activation=activation, batch_norm=batch_norm, dropout=dropout,
                              problem=problem, init="lecun", seed=1)
    params = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in params.items()}   # non-trivial γ, β, biases
    x, y = rng.uniform(0, 1, (6, 5)), rng.integers(0, 3, 6)
    masks = [bf.dropout_mask((6, n), dropout, rng, np.float64) if dropout else None for n in sizes[1:-1]]
    before = {k: v.copy() for k, v in params.items()}
    step = bf.rule_grads(net, params, {}, x, y, "bp", masks=masks)
    assert all(np.array_equal(before[k], params[k]) for k in params)                 # no mutation

    def loss(q):
        z, _, _ = bf.forward(net, {k: q[k] for k in params}, q["x"],
                             masks=[None if m is None else extended(m) for m in masks])
        return bf.output_loss(net, z, q["x"] if problem == "reconstruction" else extended(x), y)[0]
    assert step.loss == pytest.approx(float(loss({k: extended(v) for k, v in {**params, "x": x}.items()})),
                                      rel=1e-12)
    fd = central_differences(loss, {k: extended(v) for k, v in params.items()} | {"x": extended(x)},
                             keys=list(params))
    for k in params:
        assert _close(step.grads[k], fd[k].astype(np.float64)), k


# ------------------------------------------------------------------------------------------------ the rules

def _softmax(p):
    q = np.exp(p - p.max(-1, keepdims=True))
    return q / q.sum(-1, keepdims=True)


def _sigmoid(p):
    return 1.0 / (1.0 + np.exp(-p))


@pytest.mark.parametrize("problem", bf.PROBLEMS)
@pytest.mark.parametrize("rule", ["dfa", "drtp", "ll-ce", "ll-mse"])
def test_each_rule_is_its_defining_formula(rule, problem, rng):
    """A plain tanh network without batch norm or dropout, the rule written out from the papers' formulas."""
    if problem == "reconstruction" and rule in ("drtp", "ll-ce"):
        pytest.skip("refused for reconstruction (tested below)")
    I, K = 6, (6 if problem == "reconstruction" else 4)
    net, params = bf.make_net((I, 5, 4, K), problem=problem, seed=2)
    params = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in params.items()}
    fb = bf.make_feedback(net, "lecun", seed=3)
    x, y = rng.uniform(0, 1, (7, I)), rng.integers(0, K, 7)
    B = len(x)
    W = [params["layers.0.weight"], params["layers.1.weight"]]
    b = [params["layers.0.bias"], params["layers.1.bias"]]
    h = [x]
    for l in range(2):
        h.append(np.tanh(h[-1] @ W[l].T + b[l]))
    z = h[-1] @ params["readout.weight"].T + params["readout.bias"]
    if problem == "classification":
        Y = np.eye(K)[y]
        e = (_softmax(z) - Y) / B
    else:
        Y, yhat = x, _sigmoid(z)
        e = (yhat - x) * yhat * (1 - yhat) / B
    step = bf.rule_grads(net, params, fb, x, y, rule)
    assert np.allclose(step.grads["readout.weight"], e.T @ h[-1], rtol=1e-12, atol=1e-15)      # true gradient
    for l in range(2):
        Bl = fb[f"feedback.{l}"]
        p = h[l + 1] @ Bl
        eps = {"dfa": e, "drtp": Y / B, "ll-ce": (_softmax(p) - Y) / B,
               "ll-mse": (_sigmoid(p) - Y) * _sigmoid(p) * (1 - _sigmoid(p)) / B}[rule]
        delta = (eps @ Bl.T) * (1 - h[l + 1] ** 2)
        assert np.allclose(step.grads[f"layers.{l}.weight"], delta.T @ h[l], rtol=1e-12, atol=1e-15), l
        assert np.allclose(step.grads[f"layers.{l}.bias"], delta.sum(0), rtol=1e-12, atol=1e-15), l


@pytest.mark.parametrize("rule", ["dfa", "drtp", "ll-ce", "ll-mse"])
def test_each_hidden_update_is_the_gradient_of_its_local_loss(rule, rng):
    """The projection view (docs eqs. 14–16): with batch norm and dropout, layer l's update of its own parameters is
    ∂J_l/∂θ_l with everything below layer l held fixed (and e held fixed for dfa)."""
    net, params = bf.make_net((5, 4, 3, 3), activation="swish", batch_norm=True, dropout=0.2, seed=4)
    params = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in params.items()}
    fb = bf.make_feedback(net, "orthogonal", seed=5)
    x, y = rng.uniform(0, 1, (6, 5)), rng.integers(0, 3, 6)
    masks = [bf.dropout_mask((6, n), 0.2, rng, np.float64) for n in (4, 3)]
    step = bf.rule_grads(net, params, fb, x, y, rule, masks=masks)
    z, cache, _ = bf.forward(net, params, x, masks=masks)
    _, e = bf.output_loss(net, z, x, y)
    ystar = bf.target(net, x, y)
    for l in range(2):
        h_below = x if l == 0 else cache.hidden[l - 1].h
        names = [k for k in params if k.startswith(f"layers.{l}.")]

        def J(q):
            sub = bf.Net(sizes=(h_below.shape[1], net.sizes[l + 1], 1), activation=net.activation,
                         batch_norm=True)
            local = {k.replace(f"layers.{l}.", "layers.0."): v for k, v in q.items()}
            local |= {"readout.weight": np.zeros((1, net.sizes[l + 1])), "readout.bias": np.zeros(1)}
            _, c, _ = bf.forward(sub, local, extended(h_below), masks=[extended(masks[l])])
            p = c.hidden[0].h @ extended(fb[f"feedback.{l}"])
            B = len(x)
            if rule == "dfa":
                return np.sum(extended(e) * p)
            if rule == "drtp":
                return np.sum(extended(ystar) * p) / B
            if rule == "ll-ce":
                s = p - p.max(-1, keepdims=True)
                return -np.sum(extended(ystar) * (s - np.log(np.exp(s).sum(-1, keepdims=True)))) / B
            return 0.5 * np.sum((1 / (1 + np.exp(-p)) - extended(ystar)) ** 2) / B
        fd = central_differences(J, {k: extended(params[k]) for k in names})
        assert step.local_losses[l] == pytest.approx(float(J({k: extended(params[k]) for k in names})), rel=1e-10)
        for k in names:
            assert _close(step.grads[k], fd[k].astype(np.float64)), k


def test_only_bp_sends_errors_down():
    """A projection rule's update of layer l does not depend on the layers above it (beyond the output error)."""
    net, params = bf.make_net((6, 5, 4, 3), seed=0)
    fb = bf.make_feedback(net, seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 1, (8, 6)), rng.integers(0, 3, 8)
    changed = {**params, "layers.1.weight": params["layers.1.weight"] * 2.0}
    a, b = bf.rule_grads(net, params, fb, x, y, "drtp"), bf.rule_grads(net, changed, fb, x, y, "drtp")
    assert np.array_equal(a.grads["layers.0.weight"], b.grads["layers.0.weight"])
    a, b = bf.rule_grads(net, params, fb, x, y, "bp"), bf.rule_grads(net, changed, fb, x, y, "bp")
    assert not np.allclose(a.grads["layers.0.weight"], b.grads["layers.0.weight"])


# ------------------------------------------------------------------------------------------------ trackers

def test_output_alignment_compares_same_shaped_matrices():
    """W_o (O, n_L) is compared with B_Lᵀ (O, n_L) entry by entry: a readout equal to B_Lᵀ aligns perfectly. The
    flattened transposed comparison (vec W_o against vec B_L) does not see it, and `alignment` refuses it."""
    net, params = bf.make_net((8, 7, 5, 3), seed=0)
    fb = bf.make_feedback(net, "lecun", seed=1)
    BL = fb["feedback.1"]                                                     # (5, 3)
    aligned = {**params, "readout.weight": BL.T.copy(),
               "layers.1.weight": fb["feedback.1"] @ fb["feedback.0"].T}      # W_2 = B_2 B_1ᵀ
    wa = bf.weight_alignment(net, aligned, fb)
    assert wa[0] is None
    assert wa[1] == pytest.approx(1.0, abs=1e-12) and wa[2] == pytest.approx(1.0, abs=1e-12)
    transposed_flat = cosine(aligned["readout.weight"].ravel(), BL.ravel())  # the transposed-shape comparison
    assert abs(transposed_flat) < 0.9
    with pytest.raises(ShapeError, match="transpose"):
        bf.alignment(aligned["readout.weight"], BL)


def test_trackers(rng):
    net, params = bf.make_net((6, 5, 4, 3), seed=0)
    fb = bf.make_feedback(net, seed=0)
    x, y = rng.uniform(0, 1, (8, 6)), rng.integers(0, 3, 8)
    bp = bf.trackers(net, params, fb, x, y, "bp")
    assert bp["layers"] == ["layers.0", "layers.1", "readout"]
    assert bp["bp_cosine"] == pytest.approx([1.0, 1.0, 1.0])
    for rule in ("dfa", "drtp", "ll-ce", "ll-mse"):
        tr = bf.trackers(net, params, fb, x, y, rule)
        assert tr["bp_cosine"][-1] == pytest.approx(1.0)                    # the output layer: its true gradient
        step = bf.rule_grads(net, params, fb, x, y, rule)
        assert tr["grad_norm_weight"][0] == pytest.approx(np.linalg.norm(step.grads["layers.0.weight"]))
        assert tr["bp_cosine"][0] == pytest.approx(
            cosine(step.grads["layers.0.weight"], bf.rule_grads(net, params, fb, x, y, "bp").grads["layers.0.weight"]))


# ------------------------------------------------------------------------------------------------ init, dtypes

def test_init_schemes():
    rng = np.random.default_rng(0)
    for shape in ((7, 3), (3, 7)):
        q = nn_init.orthogonal(shape, rng, np.float64)
        small = min(shape)
        gram = q.T @ q if shape[0] >= shape[1] else q @ q.T
        assert np.allclose(gram, np.eye(small), atol=1e-12)
    w = nn_init.lecun_normal((400, 300), 300, rng, np.float64)
    assert np.abs(w).max() <= 2.0 * np.sqrt(1 / 300) / 0.87962566103423978 + 1e-15       # truncated at 2σ
    assert w.var() == pytest.approx(1 / 300, rel=0.03)
    net, _ = bf.make_net((6, 5, 4, 3))
    a, b = bf.make_feedback(net, "orthogonal", seed=0), bf.make_feedback(net, "orthogonal", seed=0)
    assert all(np.array_equal(a[k], b[k]) for k in a) and a["feedback.0"].shape == (5, 3)


def test_float32_stays_float32(rng):
    net, params = bf.make_net((6, 5, 3), batch_norm=True, dtype="float32")
    fb = bf.make_feedback(net)
    x = rng.uniform(0, 1, (4, 6)).astype(np.float32)
    for rule in bf.RULES:
        step = bf.rule_grads(net, params, fb, x, rng.integers(0, 3, 4), rule, buffers=bf.init_buffers(net))
        assert all(g.dtype == np.float32 for g in step.grads.values()), rule
        assert all(v.dtype == np.float32 for v in step.buffers.values())


# ------------------------------------------------------------------------------------------------ errors

@pytest.mark.parametrize("kwargs,err,phrase", [
    (dict(init="xavier"), UnknownNameError, "allowed: lecun, orthogonal"),
    (dict(activation="gelu"), UnknownNameError, "activation"),
    (dict(problem="regression"), UnknownNameError, "problem"),
    (dict(dropout=1.0), UnsupportedError, "dropout"),
    (dict(sizes=(6, 3)), ShapeError, "at least one hidden"),
    (dict(sizes=(6, 4, 5), problem="reconstruction"), ShapeError, "outputs its input"),
])
def test_bad_networks_are_refused(kwargs, err, phrase):
    kwargs = {"sizes": (6, 4, 3), **kwargs}
    with pytest.raises(err, match=phrase):
        bf.make_net(kwargs.pop("sizes"), **kwargs)


def test_bad_rule_combinations_are_refused_or_warned():
    net, _ = bf.make_net((6, 4, 6), problem="reconstruction")
    with pytest.raises(UnsupportedError, match="drtp cannot train a reconstruction network.*target is the input"):
        bf.check_rule(net, "drtp")
    with pytest.raises(UnsupportedError, match="ll-ce needs class labels"):
        bf.check_rule(net, "ll-ce")
    with pytest.raises(UnknownNameError, match="learning rule"):
        bf.check_rule(net, "fa")
    with pytest.raises(UnknownNameError, match="feedback init scheme 'xavier'"):
        bf.make_feedback(net, "xavier")
    relu, _ = bf.make_net((6, 4, 3), activation="relu")
    with pytest.warns(BpfreeWarning, match="unbounded activation 'relu'"):
        bf.warn_rule(relu, "drtp")
    tanh, _ = bf.make_net((6, 4, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bf.warn_rule(tanh, "drtp")                                            # bounded: no warning


# ------------------------------------------------------------------------------------------------ training

TINY = dict(arch="32", epochs=3, batch_size=64, lr=1e-2, log_every=5)


def test_every_rule_learns_static_digits_and_logs_trackers(tmp_path):
    for rule in bf.RULES:
        r = train(BpfreeConfig(algorithm=rule, **TINY), tmp_path / rule, plot=(rule == "dfa"))
        assert r.test_error < 50.0, (rule, r.test_error)                       # chance: 90 %
        tr = [m for m in read_metrics(tmp_path / rule / "metrics.jsonl") if m["split"] == "tracker"]
        assert [m["epoch"] for m in tr] == [0, 1, 2]
        assert set(tr[0]) >= {"bp_cosine", "weight_alignment", "grad_norm_weight", "grad_norm_bias"}
    assert (tmp_path / "dfa" / "trackers.png").stat().st_size > 0


def test_reconstruction_and_batch_norm_train(tmp_path):
    cfg = BpfreeConfig(problem="reconstruction", algorithm="dfa", batch_norm=True, dropout=0.1, **TINY)
    task, net, params, buffers, _, _, _, _ = build(cfg)
    untrained, _ = bf.evaluate(net, params, task.test.x, None, buffers)
    r = train(cfg, tmp_path / "rec", plot=False)
    assert r.val_error is None and r.test_loss < 0.8 * untrained
    buffers = load_checkpoint(tmp_path / "rec" / "checkpoint.npz").groups["buffer"]
    assert not np.allclose(buffers["layers.0.norm.running_mean"], 0.0)     # running averages were updated


def _numbers(run_dir):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in read_metrics(Path(run_dir) / "metrics.jsonl")]


def test_killed_run_resumes_to_identical_metrics(tmp_path, monkeypatch):
    cfg = BpfreeConfig(algorithm="ll-ce", dropout=0.2, batch_norm=True, **{**TINY, "batch_size": 256})
    train(cfg, tmp_path / "whole", plot=False)
    real_step, calls = optim.step, []

    def dying_step(*args, **kwargs):             # dies in epoch 2, after the checkpoint at the end of epoch 1
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)
    monkeypatch.setattr(optim, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "killed", plot=False)
    monkeypatch.setattr(optim, "step", real_step)
    train(cfg, tmp_path / "killed", resume=True, plot=False)
    assert _numbers(tmp_path / "killed") == _numbers(tmp_path / "whole")
    with pytest.raises(UnsupportedError, match="already holds a run"):
        train(cfg, tmp_path / "whole")


def test_cli_bpfree(tmp_path):
    r = CliRunner().invoke(cli, ["bpfree", "--algorithm", "drtp", "--activation", "relu", "--arch", "16",
                                 "--epochs", "1", "--no-progress", "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert "test error" in r.output and "warning: drtp with the unbounded activation" in r.stderr
    assert json.loads((tmp_path / "run" / "config.json").read_text())["algorithm"] == "drtp"


@pytest.mark.parametrize("args,phrase", [
    (["--problem", "reconstruction", "--algorithm", "drtp"], "drtp cannot train a reconstruction network"),
    (["--feedback-init", "xavier"], "unknown feedback init scheme 'xavier'"),
    (["--init", "glorot"], "unknown forward init scheme 'glorot'"),
    (["--algorithm", "fa"], "unknown learning rule 'fa'"),
    (["--task", "digits-seq"], "sequence task"),
    (["--arch", "64-x"], "arch"),
])
def test_cli_bad_combinations_exit_2_with_one_line(tmp_path, args, phrase):
    r = CliRunner().invoke(cli, ["bpfree", *args, "--epochs", "1", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and phrase in lines[0], r.stderr
