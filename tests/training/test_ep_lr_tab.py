"""EP's per-layer learning rates (-a lr_tab, -a lr_order): named, or the seed's list (output layer first) with its
order stated, give the rates the seed's code gives each layer; a bare list whose order matters is refused."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from refimpl.cli import cli
from refimpl.ep.networks import make_ep_net
from refimpl.errors import UnknownNameError, UnsupportedError
from refimpl.training.config import TrainConfig
from refimpl.training.problems import _layer_lr_scale

SGD = TrainConfig(optimizer="sgd", lr=0.1)
SIZES = (64, 7, 5, 10)                          # input first; distinct sizes, so a layer is known by its shape


def seed_rates(params: dict, lr_tab: list[float]) -> dict:
    """The rate of each parameter as the seed's code gives it: its size_tab runs
    from the output, size_tab = (10, 5, 7, 64); w[2k] = Linear(size_tab[k+1] → size_tab[k]) (weight (n_k, n_{k+1}),
    bias (n_k,): the receiving layer's) learns at lr_tab[⌊2k / 2⌋]. Our parameters are found by their shapes."""
    size_tab = SIZES[::-1]
    rates = {}
    for k in range(len(size_tab) - 1):
        weight_shape, bias_shape = (size_tab[k], size_tab[k + 1]), (size_tab[k],)
        for name, p in params.items():
            if p.shape in (weight_shape, bias_shape):
                rates[name] = lr_tab[(2 * k) // 2]
    return rates


@pytest.mark.parametrize("kind", ["prototypical", "energy"])
def test_seed_order_list_gives_the_seeds_rates(kind):
    _, params = make_ep_net(kind, SIZES, seed=0)
    lr_tab = [0.005, 0.05, 0.2]                                          # the seed's P-2h list: output layer first
    expected = seed_rates(params, lr_tab)
    assert set(expected) == set(params)
    scale = _layer_lr_scale(SGD, params, ",".join(map(str, lr_tab)), "output_first")
    assert {k: v * SGD.lr for k, v in scale.items()} == pytest.approx(expected, rel=1e-15)
    named = _layer_lr_scale(SGD, params, "W.2=0.005,W.1=0.05,W.0=0.2", None)
    reversed_ = _layer_lr_scale(SGD, params, "0.2,0.05,0.005", "input_first")
    assert named == scale == reversed_


def test_conv_seed_order_is_fc_k0_k1():
    params = dict.fromkeys(["K1", "c1", "K0", "c0", "W", "b"])
    scale = _layer_lr_scale(SGD, params, "0.015,0.035,0.15", "output_first")          # P-conv: fc, K0, K1
    rates = {k: round(v * SGD.lr, 12) for k, v in scale.items()}
    assert rates == {"W": 0.015, "b": 0.015, "K0": 0.035, "c0": 0.035, "K1": 0.15, "c1": 0.15}


def test_toy_skips_take_their_layers_rate():
    _, params = make_ep_net("toy", (3, 4, 5, 2), seed=0)
    scale = _layer_lr_scale(SGD, params, "W.0=0.1,W.1=0.2,W.2=0.3", None)
    assert scale["Wx.2"] == scale["W.1"] == pytest.approx(2.0)


@pytest.mark.parametrize("lr_tab,lr_order,err,phrase", [
    ("0.05,0.1,0.4", None, UnsupportedError, "does not say its order: add -a lr_order=output_first"),
    ("0.05,0.1", "output_first", UnsupportedError, "has 2 rate"),
    ("0.05,0.1,0.4", "backwards", UnknownNameError, "unknown -a lr_order 'backwards'"),
    ("W.0=0.1,W.1=0.2", None, UnsupportedError, "missing W.2"),
    ("W.0=0.1,W.1=0.2,W.2=0.1,W.0=0.3", None, UnsupportedError, "named twice"),
    ("W.0=0.1,W.1=0.2,W.3=0.1", None, UnknownNameError, "weight layer in -a lr_tab 'W.3'"),
    ("W.0=0.1,W.1=0.2,W.2=0.1", "output_first", UnsupportedError, "drop -a lr_order"),
    ("0.1,x,0.1", "output_first", UnsupportedError, "'x' is not a learning rate"),
    ("0.1,-1,0.1", "output_first", UnsupportedError, "not allowed"),
    (None, "output_first", UnsupportedError, "drop -a lr_order"),
])
def test_ambiguous_or_bad_lists_are_refused(lr_tab, lr_order, err, phrase):
    _, params = make_ep_net("prototypical", SIZES, seed=0)
    with pytest.raises(err, match=phrase):
        _layer_lr_scale(SGD, params, lr_tab, lr_order)


def test_a_list_whose_order_cannot_matter_needs_no_order():
    _, params = make_ep_net("prototypical", SIZES, seed=0)
    scale = _layer_lr_scale(SGD, params, "0.1,0.3,0.1", None)                  # the same read either way
    assert scale["W.0"] == scale["W.2"] == pytest.approx(1.0) and scale["W.1"] == pytest.approx(3.0)


def test_cli_refuses_an_unordered_list_in_one_line(tmp_path):
    r = CliRunner().invoke(cli, ["train", "--task", "digits", "--algorithm", "ep", "--hidden", "16", "--steps", "1",
                                 "--optimizer", "sgd", "--no-progress", "-a", "lr_tab=0.05,0.1",
                                 "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and "-a lr_order=output_first (the EP seed's lr_tab: W.1,W.0)" in r.stderr
