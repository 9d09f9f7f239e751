"""The EP commands end to end: ep-curves writes its JSON and PNG with small RMSE on the toy model, ep-recipe prints its
table, and `train --algorithm ep` on a static task learns and resumes like any run."""

import json

from click.testing import CliRunner

from refimpl.cli import cli


def test_ep_curves_writes_json_and_png_and_matches_bptt_on_the_toy_model(tmp_path):
    r = CliRunner().invoke(cli, ["ep-curves", "--T", "1500", "--K", "20", "--batch", "4", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "curves.json").read_text())
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert all(n["rmse"][0] < 0.05 for n in report["neurons"])            # GDU: EP ≈ BPTT step by step (β = 0.01)
    assert all(w["rmse"][0] < 0.05 for w in report["weights"])


def test_ep_recipe_prints_sign_agreement(tmp_path):
    r = CliRunner().invoke(cli, ["ep-recipe", "--net", "prototypical", "--batches", "2", "--T", "20", "--K", "5"])
    assert r.exit_code == 0, r.output
    assert "% same sign" in r.output and "W.0" in r.output


def test_train_ep_on_static_digits(tmp_path):
    args = ["train", "--task", "digits", "--algorithm", "ep", "--hidden", "32", "--steps", "80", "--optimizer", "sgd",
            "--lr", "0.2", "--weight-decay", "0", "--clip", "0", "--no-progress", "-a", "T=30", "-a", "K=10"]
    r = CliRunner().invoke(cli, args + ["--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["test_accuracy"] > 0.3                                  # 80 SGD steps (two epochs): far above chance (0.1)
    r = CliRunner().invoke(cli, ["train", "--resume", str(tmp_path / "run"), "--no-progress"])
    assert r.exit_code == 0, r.output


def test_train_benchmark_trains_ep_and_bptt_from_the_same_weights(tmp_path):
    r = CliRunner().invoke(cli, ["train", "--task", "digits", "--algorithm", "ep", "--benchmark", "--hidden", "16",
                                 "--steps", "5", "--no-progress", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "compare.json").read_text())
    assert [run["algorithm"] for run in report["runs"]] == ["ep", "bptt"]


def test_train_the_convolutional_ep_network_on_digits(tmp_path):
    r = CliRunner().invoke(cli, ["train", "--task", "digits", "--net", "conv", "--hidden", "4", "--algorithm", "ep",
                                 "--steps", "3", "--batch-size", "16", "--no-progress", "-a", "T=8", "-a", "K=3",
                                 "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "run" / "result.json").read_text())["steps"] == 3


def test_per_layer_learning_rates_scale_each_layer(tmp_path):
    """W.0 at rate 0: the first weight layer (and the bias of the layer it feeds) must not move at all."""
    import numpy as np
    base = ["train", "--task", "digits", "--algorithm", "ep", "--hidden", "16", "--steps", "3", "--optimizer", "sgd",
            "--lr", "0.1", "--weight-decay", "0", "--clip", "0", "--no-progress"]
    r = CliRunner().invoke(cli, base + ["-a", "lr_tab=W.0=0,W.1=0.1", "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    from refimpl.ep.networks import make_ep_net
    from refimpl.runs import load_checkpoint
    params = load_checkpoint(tmp_path / "run" / "checkpoint.npz").params
    _, init = make_ep_net("prototypical", (64, 16, 10), seed=0)
    assert np.array_equal(params["W.0"], init["W.0"]) and np.array_equal(params["b.1"], init["b.1"])
    assert not np.array_equal(params["W.1"], init["W.1"])
    r = CliRunner().invoke(cli, base + ["-a", "lr_tab=0.1", "--out", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "2 weight layers" in r.stderr
