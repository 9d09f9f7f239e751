"""Helpers of the cell tests (tests/cells/): scalar plain-Python math for the hand-worked trajectories, and the
seeded random case and torch layer of the cross-checks against torch.nn, a random target for a model. No refimpl code:
a cell module (or model) is passed in."""

import math

import numpy as np


def sigma(a: float) -> float:
    """The logistic function, written out: 1 / (1 + e^{−a})."""
    return 1.0 / (1.0 + math.exp(-a))


def check_pencil(value: float, pencil: float) -> float:
    """The hand-written 6-decimal value in the comment must be the value the arithmetic gives; returns `value`."""
    assert abs(value - pencil) < 5e-7, f"hand value {value:.8f} != pencil value {pencil}"
    return value


def random_case(cell, seed: int, T: int, B: int, I: int, H: int):
    """(params, x (T, B, I), state0, dh (T, B, H)) of a cell module, float64, drawn in that order from one seeded
    stream: a case with B, H > 1 that exercises the gate layout."""
    rng = np.random.default_rng(seed)
    params = cell.init_params(I, H, rng, np.float64)
    return (params, rng.standard_normal((T, B, I)), cell.random_state(rng, B, H, np.float64),
            rng.standard_normal((T, B, H)))


def torch_layer(torch, layer_class, params: dict, **options):
    """A one-layer float64 torch.nn.RNN / GRU / LSTM (`layer_class`) holding `params`: the layouts are the same
    (DESIGN.md §3), torch names them weight_ih_l0, …"""
    n_hidden, n_in = params["weight_hh"].shape[1], params["weight_ih"].shape[1]
    net = layer_class(input_size=n_in, hidden_size=n_hidden, num_layers=1, bias=True, batch_first=False,
                      dtype=torch.float64, **options)
    with torch.no_grad():
        for name, value in params.items():
            getattr(net, f"{name}_l0").copy_(torch.from_numpy(value))
    return net


def torch_layer_grads(net, params: dict) -> dict:
    """{name: the gradient torch accumulated on its copy of params[name]} after a backward through `net`."""
    return {name: getattr(net, f"{name}_l0").grad.numpy() for name in params}


def random_target(rng, model, T: int, B: int, loss: str):
    """A random target of the model's output shape for `loss`: labels for ce, bits for bce, normals for mse."""
    shape = model.output_shape(T, B)
    if loss == "ce":
        return rng.integers(0, shape[-1], size=shape[:-1])
    if loss == "bce":
        return (rng.random(shape) > 0.5).astype(np.float64)
    return rng.standard_normal(shape)
