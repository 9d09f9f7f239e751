"""The RTRL family on model stacks, run truly online (refimpl/algorithms/online.py), against independent computations.

- `rtrl` == `bptt` (≤ 1e-10) for every cell, one and two layers, with every block, every online-compatible pooling
  and every loss — the whole-stack sensitivity is exact.
- `online` == `bptt` for one-layer models and for the top layer's cell parameters (and everything above them) of
  two-layer models; lower layers are only reported.
- Every per-layer rule in a one-layer model == the cell-level rule (refimpl.algorithms.rtrl) fed with the instantaneous
  errors that BPTT's model backward hands to the cell (captured here): the driver's errors and plumbing are right.
- Memory does not grow with T (tracemalloc), while BPTT's does.
"""

import numpy as np
import pytest

from refimpl.nn import model as model_mod
from refimpl.algorithms import rtrl
from refimpl.errors import UnsupportedError
from refimpl.nn.model import make_model
from refimpl.numerics import cosine, rel_error
from refimpl.algorithms.online import online_grads

from ..memory import peak_bytes
from ..toy import random_target

CELLS = [("rnn", {}), ("rnn", {"nonlinearity": "linear"}), ("gru", {}), ("lstm", {}), ("lru", {}),
         ("lru", {"r_min": 0.9, "r_max": 0.999})]
IDS = [f"{c}-{'-'.join(map(str, o.values())) or 'default'}" for c, o in CELLS]


def _case(cell, opts, seed=0, T=5, B=2, I=3, H=3, O=2, loss="mse", **model_kw):
    model, params = make_model(cell, I, H, O, seed=seed, **opts, **model_kw)
    rng = np.random.default_rng(seed + 100)
    x = rng.standard_normal((T, B, I))
    return model, params, x, random_target(rng, model, T, B, loss)


def _assert_close(got, want, keys, tol, label):
    for k in keys:
        err = rel_error(got[k], want[k])
        assert err <= tol, f"{label}: {k} relative error {err:.2e} > {tol:.0e}"


@pytest.mark.parametrize("cell,opts", CELLS, ids=IDS)
@pytest.mark.parametrize("kw", [dict(layers=1), dict(layers=1, pooling="cumulative_mean", loss="ce"),
                                dict(layers=2, encoder=True, norm="layer", ffn="glu", residual=True),
                                dict(layers=2, ffn="mlp", pooling="last", loss="bce")],
                         ids=["1layer", "1layer-cummean-ce", "2layers-full", "2layers-mlp-last-bce"])
def test_rtrl_equals_bptt(cell, opts, kw):
    kw = dict(kw)
    loss = kw.pop("loss", "mse")
    model, params, x, y = _case(cell, opts, loss=loss, H=2 if kw["layers"] == 2 else 3, T=4, **kw)
    mask = np.array([1.0, 0.5, 0.0, 2.0]) if model.per_step else None
    v_bptt, g_bptt = model_mod.bptt(model, params, x, y, loss=loss, mask=mask)
    v, g = online_grads(model, params, x, y, loss, mask, algorithm="rtrl")
    assert abs(v - v_bptt) <= 1e-12 * max(1.0, abs(v_bptt))
    _assert_close(g, g_bptt, params, 1e-10, f"rtrl {cell} {kw}")


@pytest.mark.parametrize("cell,opts", CELLS, ids=IDS)
def test_online_exact_for_one_layer_and_the_top_layer(cell, opts):
    model, params, x, y = _case(cell, opts, T=6)
    _, g_bptt = model_mod.bptt(model, params, x, y, loss="mse")
    _, g = online_grads(model, params, x, y, "mse", algorithm="online")
    _assert_close(g, g_bptt, params, 1e-10, f"online 1 layer {cell}")

    model, params, x, y = _case(cell, opts, T=6, layers=2, encoder=True, norm="layer", ffn="glu", residual=True,
                                H=2)
    _, g_bptt = model_mod.bptt(model, params, x, y, loss="mse")
    _, g = online_grads(model, params, x, y, "mse", algorithm="online")
    exact = [k for k in params if k.startswith("layers.1.cell.") or k.startswith("readout.")
             or (k.startswith("layers.1.") and not k.startswith("layers.1.norm") and ".cell." not in k)]
    _assert_close(g, g_bptt, exact, 1e-10, f"online top layer {cell}")
    lower = [k for k in params if k.startswith("layers.0.cell.")]
    a = np.concatenate([g[k].ravel() for k in lower])
    b = np.concatenate([g_bptt[k].ravel() for k in lower])
    assert rel_error(a, b) > 1e-8, "the lower layer is approximate: an exact match would mean the test is vacuous"
    assert cosine(a, b) > 0.0


class _Recorder:
    """Cell kernels that record the instantaneous adjoints BPTT hands to the cell."""

    def __init__(self, module):
        self.module, self.dh = module, None

    def forward(self, *args, **kwargs):
        return self.module.forward(*args, **kwargs)

    def backward(self, params, dh, cache, **kwargs):
        self.dh = dh.copy()
        return self.module.backward(params, dh, cache, **kwargs)


@pytest.mark.parametrize("algorithm", ["online", "snap1", "truncated", "spatial", "cec"])
@pytest.mark.parametrize("cell,opts", CELLS, ids=IDS)
def test_per_layer_rules_match_the_cell_rules_fed_with_bptt_errors(cell, opts, algorithm):
    if algorithm == "cec" and cell != "lstm":
        pytest.skip("cec is the lstm's rule")
    model, params, x, y = _case(cell, opts, T=7, ffn="mlp")
    c = model.cells[0]
    rec = _Recorder(c.module)
    model_mod.bptt(model, params, x, y, loss="mse", kernels=rec)      # records δ_t of the cell
    cell_params = {k.split(".", 3)[3]: v for k, v in params.items() if k.startswith("layers.0.cell.")}
    rule = {"online": "rtrl"}.get(algorithm, algorithm)
    want = rtrl.cell_grads_online(rule, c, cell_params, x, rec.dh, c.module.zero_state(2, c.n_hidden,
                                                                                       c.state_dtype))
    _, got = online_grads(model, params, x, y, "mse", algorithm=algorithm)
    _assert_close({k.split(".", 3)[3]: v for k, v in got.items() if ".cell." in k}, want, want, 1e-10,
                  f"{algorithm} {cell}")
    _, g_bptt = model_mod.bptt(model, params, x, y, loss="mse")
    above = [k for k in params if ".cell." not in k]                  # everything above the cell is exact
    _assert_close(got, g_bptt, above, 1e-10, f"{algorithm} {cell} non-cell parameters")


def test_refusals():
    model, params, x, y = _case("gru", {}, pooling="mean")
    with pytest.raises(UnsupportedError, match="not memoryless"):
        online_grads(model, params, x, y, "mse", algorithm="online")
    model, params, x, y = _case("lru", {}, layers=2, encoder=True, H=3)
    with pytest.raises(UnsupportedError, match="MiB"):
        online_grads(model, params, x, y, "mse", algorithm="rtrl", max_bytes=1000)
    model, params, x, y = _case("gru", {})
    with pytest.raises(UnsupportedError, match="lstm"):
        online_grads(model, params, x, y, "mse", algorithm="cec")


# one rule in the default suite (the driver and its carries are shared); every rule under `make test-slow`
@pytest.mark.parametrize("algorithm", ["online"] + [pytest.param(a, marks=pytest.mark.slow)
                                                    for a in ("snap1", "truncated", "spatial", "rtrl")])
def test_memory_does_not_grow_with_T(algorithm):
    model, params, x_long, y_long = _case("gru", {}, T=1200, B=2, H=4)
    x_short, y_short = x_long[:100], y_long[:100]
    short = peak_bytes(lambda: online_grads(model, params, x_short, y_short, "mse", algorithm=algorithm))
    long = peak_bytes(lambda: online_grads(model, params, x_long, y_long, "mse", algorithm=algorithm))
    assert long < 1.2 * short + 20_000, f"{algorithm}: peak {short} B at T=100 but {long} B at T=1200"
    bptt_short = peak_bytes(lambda: model_mod.bptt(model, params, x_short, y_short, loss="mse"))
    bptt_long = peak_bytes(lambda: model_mod.bptt(model, params, x_long, y_long, loss="mse"))
    assert bptt_long > 5 * bptt_short                                  # BPTT stores the sequence
