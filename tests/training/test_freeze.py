"""Frozen parameters (optim.OptimConfig.freeze; `--freeze`, `--freeze-recurrence`): the FPTT code's
freeze_recurrence fixes the LRU's λ (ν, θ) only, bit for bit, while γ, B, C and the rest train; a frozen gradient
counts nowhere (the other parameters move exactly as if it were absent); the names are checked against the cell."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from refimpl import optim
from refimpl.api import make_model
from refimpl.cli import cli
from refimpl.errors import UnknownNameError, UnsupportedError
from refimpl.runs import load_checkpoint
from refimpl.training.config import FREEZE_RECURRENCE, TrainConfig
from refimpl.training.loop import train

TINY = dict(task="copy-small", cell="lru", layers=2, hidden=4, batch_size=8, steps=3, log_every=1, lr=1e-2)


@pytest.mark.parametrize("name,momentum", [("adamw", 0.0), ("adam", 0.0), ("sgd", 0.9)])
def test_frozen_parameters_are_left_alone_and_count_nowhere(name, momentum):
    _, params = make_model("lru", 3, 4, 2, layers=2, seed=0)
    rng = np.random.default_rng(1)
    grads = {k: 10 * rng.standard_normal(v.shape) for k, v in params.items()}       # large: clipping is active
    frozen = optim.OptimConfig(name=name, lr=0.1, momentum=momentum, freeze=FREEZE_RECURRENCE, clip_norm=1.0)
    plain = optim.OptimConfig(name=name, lr=0.1, momentum=momentum, clip_norm=1.0)
    state = optim.init_state(params, frozen)
    new, new_state, info = optim.step(params, grads, state, frozen)
    new, new_state, _ = optim.step(new, grads, new_state, frozen)                    # two steps: moments move
    # the same steps on the parameters without the frozen ones (as a stop-gradient would leave them)
    kept = {k: v for k, v in params.items() if not optim.is_frozen(k, frozen)}
    ref, ref_state, ref_info = optim.step(kept, grads, optim.init_state(kept, plain), plain)
    ref, _, _ = optim.step(ref, grads, ref_state, plain)
    assert list(new) == list(params)                                                 # the parameters' order
    assert {k for k in params if k not in kept} == {f"layers.{l}.cell.{n}" for l in (0, 1)
                                                    for n in ("nu_log", "theta_log")}
    for k, v in params.items():
        if k in kept:
            assert not np.array_equal(new[k], v), k
            np.testing.assert_array_equal(new[k], ref[k])                            # bit for bit
        else:
            assert new[k].tobytes() == v.tobytes(), k
            for key in optim._state_keys(k, frozen):
                np.testing.assert_array_equal(new_state[key], state[key])
    assert info["grad_norm"] == ref_info["grad_norm"]


def test_freeze_recurrence_in_training_keeps_lambda_and_trains_the_rest(tmp_path):
    train(TrainConfig(**TINY, freeze=FREEZE_RECURRENCE), tmp_path / "run")
    params = load_checkpoint(tmp_path / "run" / "checkpoint.npz").params
    _, init = make_model("lru", 3, 4, 1, layers=2, seed=0)
    for k in init:
        frozen = k.rsplit(".", 1)[-1] in FREEZE_RECURRENCE
        assert (params[k].tobytes() == init[k].tobytes()) == frozen, k
    assert any(k.endswith("gamma_log") for k in init) and any(k.endswith("B_re") for k in init)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["freeze"] == list(FREEZE_RECURRENCE) and TrainConfig.from_dict(saved).freeze == FREEZE_RECURRENCE


def test_rec_lr_factor_zero_freezes_every_cell_parameter_unlike_freeze(tmp_path):
    train(TrainConfig(**TINY, rec_lr_factor=0.0), tmp_path / "run")
    params = load_checkpoint(tmp_path / "run" / "checkpoint.npz").params
    _, init = make_model("lru", 3, 4, 1, layers=2, seed=0)
    for k in init:
        assert np.array_equal(params[k], init[k]) == optim.is_recurrent(k), k


def test_cli_freeze_options(tmp_path):
    base = ["train", "--preset", "copy-small", "--cell", "lru", "--hidden", "4", "--steps", "2", "--batch-size", "4",
            "--no-progress"]
    r = CliRunner().invoke(cli, base + ["--freeze-recurrence", "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "a" / "config.json").read_text())["freeze"] == ["nu_log", "theta_log"]
    r = CliRunner().invoke(cli, base + ["--freeze", "gamma_log", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    init = make_model("lru", 3, 4, 1, seed=0)[1]
    params = load_checkpoint(tmp_path / "b" / "checkpoint.npz").params
    assert np.array_equal(params["layers.0.cell.gamma_log"], init["layers.0.cell.gamma_log"])
    assert not np.array_equal(params["layers.0.cell.nu_log"], init["layers.0.cell.nu_log"])
    r = CliRunner().invoke(cli, base + ["--freeze", "nu", "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "unknown parameter to freeze of cell 'lru' 'nu'" in r.output


@pytest.mark.parametrize("changes,err,phrase", [
    ({"cell": "gru", "freeze": FREEZE_RECURRENCE}, UnknownNameError, "--freeze-recurrence is the LRU's"),
    ({"freeze": ("readout.weight",)}, UnknownNameError, "allowed: B_im, B_re, gamma_log, nu_log, theta_log"),
    ({"task": "digits", "algorithm": "ep", "freeze": ("W",)}, UnsupportedError, "drop --freeze"),
])
def test_bad_freeze_is_refused(tmp_path, changes, err, phrase):
    with pytest.raises(err, match=phrase):
        train(TrainConfig(**{**TINY, **changes}), tmp_path / "run")


def test_optim_refuses_a_malformed_freeze():
    with pytest.raises(UnsupportedError, match="tuple of parameter leaf names"):
        optim.OptimConfig(freeze="nu_log")
