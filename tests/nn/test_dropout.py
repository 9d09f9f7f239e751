"""Dropout in the sequence stack (refimpl/nn/model.py dropout_masks / with_dropout; layers.py (DR1)–(DR2), stack.py
(D)): masks of ones change nothing; with a fixed mask BPTT matches finite differences and the exact algorithms match
BPTT (every walk applies the same masks); the masks are inverted-scaled, per example and broadcast over time; the
training step draws them from the run's seed and step (micro-batches get their rows; evaluation none); refusals."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from refimpl.api import model_grads
from refimpl.cli import cli
from refimpl.errors import UnsupportedError
from refimpl.nn.model import dropout_masks, forward, make_model, with_dropout
from refimpl.numerics import rel_error
from refimpl.training.config import TrainConfig
from refimpl.training.loop import train
from refimpl.training.problems import prepare, training_model
from tests.nn.test_model import BLOCKS, T, _check_bptt, _setup

RATE = 0.4


def _masked(model, seed=7, batch=3, rate=RATE):
    return with_dropout(model, dropout_masks(model, rate, batch, np.random.default_rng(seed)))


@pytest.mark.parametrize("block", ["mlp", "glu", "all"])
def test_masks_of_ones_change_nothing(block):
    model, params, x, y = _setup("lru", layers=2, **BLOCKS[block])
    ones = with_dropout(model, dropout_masks(model, 0.0, 3, np.random.default_rng(0)))
    assert all(np.all(m == 1.0) for m in ones.masks.values())
    l0, g0 = model_grads(model, params, x, y, loss="mse")
    l1, g1 = model_grads(ones, params, x, y, loss="mse")
    assert l0 == l1 and all(np.array_equal(g0[k], g1[k]) for k in g0)


@pytest.mark.parametrize("cell,block", [("lru", "all"), ("gru", "mlp"), ("rnn", "glu")])
def test_bptt_with_a_fixed_mask_matches_finite_differences(cell, block):
    model, params, x, y = _setup(cell, layers=2, **BLOCKS[block])
    masked = _masked(model)
    _, g = _check_bptt(masked, params, x, y, "mse", label=f"{cell} {block} dropout")
    _, g_plain = model_grads(model, params, x, y, loss="mse")
    assert rel_error(g["layers.0.cell.B_re" if cell == "lru" else "layers.0.cell.weight_hh"],
                     g_plain["layers.0.cell.B_re" if cell == "lru" else "layers.0.cell.weight_hh"]) > 1e-3


@pytest.mark.parametrize("algorithm,tol", [("rtrl", 1e-10), ("fptt", 1e-8)])
def test_exact_algorithms_see_the_same_masks_as_bptt(algorithm, tol):
    model, params, x, y = _setup("lru", layers=2, options={"r_min": 0.9, "r_max": 0.99}, **BLOCKS["all"])
    masked = _masked(model)
    _, ref = model_grads(masked, params, x, y, loss="mse", algorithm="bptt")
    _, got = model_grads(masked, params, x, y, loss="mse", algorithm=algorithm)
    for k in ref:
        if k != "x":
            assert rel_error(got[k], ref[k]) <= tol, (algorithm, k)


def test_masks_are_inverted_per_example_and_broadcast_over_time():
    model, _ = make_model("lru", 3, 4, 2, layers=2, ffn="mlp", ffn_mult=2)
    masks = dropout_masks(model, 0.25, 4000, np.random.default_rng(0))
    assert {k: m.shape for k, m in masks.items()} == {"layers.0.ffn": (4000, 6), "layers.0.out": (4000, 3),
                                                      "layers.1.ffn": (4000, 6), "layers.1.out": (4000, 3)}
    for m in masks.values():
        assert set(np.unique(m)) == {0.0, 1.0 / 0.75}
        assert abs((m == 0).mean() - 0.25) < 0.02 and abs(m.mean() - 1.0) < 0.03
    # broadcast over time: an example's output at step t depends on its own mask only, the same at every step
    model, params = make_model("rnn", 3, 4, 2, layers=1, ffn="glu")
    masked = _masked(model, batch=2, rate=0.5)
    x = np.random.default_rng(1).standard_normal((T, 2, 3))
    out, _ = forward(masked, params, x)
    one = with_dropout(model, {k: m[1:] for k, m in masked.masks.items()})
    np.testing.assert_allclose(forward(one, params, x[:, 1:])[0], out[:, 1:], rtol=1e-14)


def test_wrong_masks_and_rates_are_refused():
    model, _ = make_model("lru", 3, 4, 2, ffn="glu")
    with pytest.raises(UnsupportedError, match="do not fit the model"):
        with_dropout(model, {"layers.0.out": np.ones((2, 3))})
    for rate in (1.0, -0.1, True):
        with pytest.raises(UnsupportedError, match=r"\[0, 1\)"):
            dropout_masks(model, rate, 2, np.random.default_rng(0))


SEQ = dict(task="copy-small", cell="lru", layers=2, hidden=4, ffn="glu", norm="layer", residual=True, batch_size=8,
           steps=2, log_every=1, dropout=0.3)


def test_the_training_step_draws_masks_from_seed_and_step_and_evaluates_without():
    config = TrainConfig(**SEQ)
    problem = prepare(config).problem
    plain = prepare(TrainConfig(**{**SEQ, "dropout": 0.0})).problem
    idx = np.arange(8)
    state = {"step": np.array(5)}
    a, b = problem.grads(problem.params, idx, state), problem.grads(problem.params, idx, state)
    c = problem.grads(problem.params, idx, {"step": np.array(6)})
    d = plain.grads(plain.params, idx, state)
    g = "layers.0.cell.B_re"
    assert np.array_equal(a[1][g], b[1][g])                      # the same step: the same masks
    assert not np.array_equal(a[1][g], c[1][g]) and not np.array_equal(a[1][g], d[1][g])
    model = training_model(config, _model_of(config), 8, state)
    assert model.masks is not None and len(model.masks) == 4
    for split in ("val", "test"):                                # evaluation: no dropout
        s = getattr(problem.task, split)
        assert problem.evaluate(problem.params, s) == plain.evaluate(plain.params, s)


def _model_of(config):
    from refimpl.training.problems import build_model
    from tasks import make_task
    return build_model(config, make_task(config.task, seed=config.seed))[0]


def test_micro_batches_keep_each_examples_masks():
    whole = prepare(TrainConfig(**SEQ)).problem
    split = prepare(TrainConfig(**{**SEQ, "micro_batch": 3})).problem
    idx = np.array([9, 2, 30, 4, 17, 11, 5, 0])
    state = {"step": np.array(3)}
    lw, gw = whole.grads(whole.params, idx, state)[:2]
    ls, gs = split.grads(split.params, idx, state)[:2]
    assert abs(lw - ls) <= 1e-12 * abs(lw)
    for k in gw:
        assert rel_error(gs[k], gw[k]) <= 1e-12, k


def test_online_training_with_dropout_runs_and_the_cli_takes_it(tmp_path):
    result = train(TrainConfig(**{**SEQ, "algorithm": "online", "update_every": 4}), tmp_path / "a")
    assert np.isfinite(result.test_loss)
    r = CliRunner().invoke(cli, ["train", "--preset", "copy-small", "--cell", "lru", "--hidden", "4", "--ffn", "glu",
                                 "--steps", "2", "--batch-size", "4", "--dropout", "0.1", "--no-progress",
                                 "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("args,phrase", [
    (["--dropout", "1"], "1.0 is not in the range 0<=x<1"),
    (["--task", "copy-stream", "-t", "T=50", "--algorithm", "online", "--update-every", "5", "--dropout", "0.1"],
     "drop --dropout"),
])
def test_cli_refusals(args, phrase, tmp_path):
    base = ["train", "--task", "copy-small", "--cell", "lru", "--hidden", "4", "--steps", "1", "--no-progress",
            "--out", str(tmp_path / "run")]
    r = CliRunner().invoke(cli, base + args)
    assert r.exit_code == 2 and phrase in r.stderr


def test_device_step_refuses_dropout(tmp_path):
    pytest.importorskip("mlx.core", reason="the whole-step device path needs mlx or cupy")
    with pytest.raises(UnsupportedError, match="--backend numpy or numba, or --dropout 0"):
        train(TrainConfig(**{**SEQ, "backend": "mlx", "dtype": "float32"}), tmp_path / "run")
