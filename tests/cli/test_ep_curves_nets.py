"""ep-curves and ep-recipe beyond the toy model: the conv network (its channel pair from -n channels=C2,C1) and the
layered networks on 784-input MNIST data (--data-dir; a tiny synthetic IDX set here), with one-line errors for the
options that do not apply."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from refimpl.cli import cli
from tasks.idx import write_idx


@pytest.fixture
def mnist_dir(tmp_path):
    """The four MNIST IDX files with random contents: 40 training and 10 test images of 28×28."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 10)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8))
    return tmp_path


def _curves(tmp_path, *args):
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["ep-curves", "--T", "6", "--K", "3", "--batch", "2", *args, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "curves.png").stat().st_size > 0
    return json.loads((out / "curves.json").read_text())


def test_ep_curves_on_the_conv_net_takes_its_channel_pair(tmp_path):
    report = _curves(tmp_path, "--net", "conv", "-n", "channels=2,3")
    cfg = report["config"]
    assert cfg["data"] == "digits" and cfg["channels"] == [2, 3] and cfg["input_shape"] == [1, 8, 8]
    assert [w["param"] for w in report["weights"]] == ["K1", "c1", "K0", "c0", "W", "b"]
    assert len(report["neurons"]) == 3 and len(report["curves"]["ep_neurons"][0][0]) == 2 * 3 * 3   # s_2 (2, 3, 3)


def test_ep_curves_on_mnist_conv_uses_the_papers_shape(tmp_path, mnist_dir):
    report = _curves(tmp_path, "--net", "conv", "-n", "channels=2,3", "--data-dir", str(mnist_dir))
    cfg = report["config"]
    assert cfg["data"] == "mnist-static" and cfg["kernel"] == [5, 5] and cfg["pool"] == [2, 2]
    assert len(report["curves"]["ep_neurons"][1][0]) == 3 * 4 * 4                       # s_1 (3, 4, 4), as the paper's


@pytest.mark.parametrize("net,sizes,layers", [("prototypical", None, 2), ("energy", "784,8,8,10", 3)])
def test_ep_curves_on_mnist_layered_nets_take_784_inputs(tmp_path, mnist_dir, net, sizes, layers):
    report = _curves(tmp_path, "--net", net, "--data-dir", str(mnist_dir), *(["--sizes", sizes] if sizes else []))
    assert report["config"]["sizes"][0] == 784 and report["config"]["data"] == "mnist-static"
    assert len(report["neurons"]) == layers
    assert len(report["curves"]["ep_neurons"][0][0]) == report["config"]["sizes"][1]


def test_ep_recipe_on_the_conv_net_and_on_mnist(mnist_dir):
    for args in (["--net", "conv", "-n", "channels=2,3"], ["--net", "prototypical", "--data-dir", str(mnist_dir)]):
        r = CliRunner().invoke(cli, ["ep-recipe", "--T", "4", "--K", "2", "--batch", "2", "--batches", "1", *args])
        assert r.exit_code == 0, r.output
        assert "% same sign" in r.output


@pytest.mark.parametrize("args,phrase", [
    (["--net", "conv", "--sizes", "64,8,10"], "-n channels=C2,C1"),
    (["--net", "conv", "-n", "channels=3,4,5"], "channels=3,4,5"),
    (["--net", "conv", "-n", "channels=a,b"], "two separated by a comma"),
    (["--net", "conv", "-n", "dt=0.1"], "allowed: activation, channels, kernel, pool"),
    (["--net", "prototypical", "-n", "channels=2,3"], "allowed: activation, clamp, dt"),
    (["--net", "prototypical", "--sizes", "64,8,10", "--data-dir", "MNIST"], "784 inputs"),
    (["--data-dir", "MNIST"], "toy network"),
])
def test_options_that_do_not_apply_are_refused_in_one_line(tmp_path, mnist_dir, args, phrase):
    args = [str(mnist_dir) if a == "MNIST" else a for a in args]
    r = CliRunner().invoke(cli, ["ep-curves", "--T", "4", "--K", "2", "--batch", "2", *args,
                                 "--out", str(tmp_path / "x")])
    assert r.exit_code == 2, r.output
    assert phrase in r.output and "Traceback" not in r.output
