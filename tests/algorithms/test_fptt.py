"""FPTT (refimpl/algorithms/fptt.py) against BPTT, truly online, with its failure detection.

DESIGN.md §7: exact FPTT agrees with BPTT to ≤ 1e-8 in float64 where the Jacobian product is well conditioned —
|λ| ≥ 0.9 for the lru; for the dense cells the test parameters are set so that J_t is well conditioned (an orthogonal
W_hh for the rnn; update gates near 1 for the gru; forget gates near 1 and a strong output-gate recurrence for the
lstm, whose det J = det(diag f)·det(diag(tanh(c')σ'(a_o)) W_ho) is otherwise near zero). Even then the lstm's
smallest singular value per step stays around 0.2 (σ' ≤ 1/4 caps the h-block), so its sequences are kept short
(T = 10 for one cell, 4 in the stacks, whose normalised inputs drive the gates harder): the inversion amplifies
rounding like 0.2^-T. The other cells run T = 23 (one cell) and 8 (stacks).
"""

import numpy as np
import pytest

from refimpl import api
from refimpl.nn import model as model_mod
from refimpl.errors import NumericalError, UnknownNameError, UnsupportedError
from refimpl.algorithms.chunked import fptt_model_grads
from refimpl.algorithms.fptt import fptt_cell_grads, well_conditioned
from refimpl.nn.model import make_model
from refimpl.numerics import cosine, rel_error

from ..memory import peak_bytes

TOL = 1e-8
CELLS = [("lru", {"r_min": 0.9, "r_max": 0.99}), ("rnn", {"nonlinearity": "linear"}), ("rnn", {}), ("gru", {}),
         ("lstm", {})]
IDS = ["lru", "rnn-linear", "rnn-tanh", "gru", "lstm"]


def _model_case(cell, opts, T=8, B=2, I=3, H=3, O=2, seed=0, **kw):
    model, params = make_model(cell, I, H, O, seed=seed, **opts, **kw)
    for l in range(model.layers):
        params = well_conditioned(cell, params, f"layers.{l}.cell.", seed + l)
    rng = np.random.default_rng(seed + 7)
    x = 0.5 * rng.standard_normal((T, B, I))
    y = rng.standard_normal(model.output_shape(T, B))
    return model, params, x, y


@pytest.mark.parametrize("cell,opts", CELLS, ids=IDS)
def test_cell_fptt_equals_bptt_with_nonzero_h0(cell, opts):
    c, params = api.make_cell(cell, 3, 4, seed=3, **opts)
    params = well_conditioned(cell, params)
    rng = np.random.default_rng(1)
    T, B = (10 if cell == "lstm" else 23), 2                  # the lstm's J has σ_min ≈ 0.2: short T (module doc)
    x = 0.5 * rng.standard_normal((T, B, 3))
    h0 = 0.3 * rng.standard_normal((B, 4))
    if cell == "lru":
        h0 = h0 + 0.2j
        dh = rng.standard_normal((T, B, 4)) + 1j * rng.standard_normal((T, B, 4))
    else:
        dh = rng.standard_normal((T, B, 4))
    state0 = c.module.LSTMState(h0, -h0) if cell == "lstm" else h0
    _, cache = c.module.forward(params, x, state0, **c.step_options)
    want = c.module.backward(params, dh, cache, **c.step_options)
    got = fptt_cell_grads(c, params, x, dh, state0)
    assert set(got) == set(want)
    for k in want:
        assert rel_error(got[k], want[k]) <= TOL, f"{cell} d{k}: {rel_error(got[k], want[k]):.2e}"
    # through the public API too
    api_grads = api.cell_grads(c, params, x, dh, h0=(h0, -h0) if cell == "lstm" else h0, algorithm="fptt")
    assert all(rel_error(api_grads[k], want[k]) <= TOL for k in want)


@pytest.mark.parametrize("option", [{"passes": 1}, {"input_grad": False}])
def test_cell_fptt_refuses_the_model_options(option):
    """One cell has no pass budget and always returns x̄: the model's options are refused, not ignored."""
    c, params = api.make_cell("rnn", 3, 4, seed=3)
    params = well_conditioned("rnn", params)
    rng = np.random.default_rng(2)
    x, dh = 0.5 * rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 2, 4))
    with pytest.raises(UnknownNameError,
                       match=f"fptt takes only carrier, warmup on one cell; {next(iter(option))} is an"):
        api.cell_grads(c, params, x, dh, algorithm="fptt", **option)
    assert "x" in api.cell_grads(c, params, x, dh, algorithm="fptt", carrier="state")


@pytest.mark.parametrize("cell,opts", CELLS, ids=IDS)
@pytest.mark.parametrize("kw", [dict(layers=1), dict(layers=2, encoder=True, norm="layer", ffn="glu", residual=True,
                                                     pooling="cumulative_mean"),
                                dict(layers=3, ffn="mlp", H=2)], ids=["1layer", "2layers-full", "3layers"])
def test_model_fptt_equals_bptt(cell, opts, kw):
    model, params, x, y = _model_case(cell, opts, T=4 if cell == "lstm" and kw["layers"] > 1 else 8, **kw)
    v0, g0 = model_mod.bptt(model, params, x, y, loss="mse")
    v1, g1 = fptt_model_grads(model, params, x, y, "mse")
    assert abs(v1 - v0) <= 1e-12 * max(1, abs(v0))
    assert set(g1) == set(g0)
    for k in g0:
        assert rel_error(g1[k], g0[k]) <= TOL, f"{cell} {kw} d{k}: {rel_error(g1[k], g0[k]):.2e}"


def test_fptt1_is_not_exact_when_the_start_error_matters():
    model, params, x, y = _model_case("lru", {"r_min": 0.9, "r_max": 0.99})
    _, g0 = model_mod.bptt(model, params, x, y, loss="mse")
    _, g1 = fptt_model_grads(model, params, x, y, "mse", two_passes=False)
    errs = {k: rel_error(g1[k], g0[k]) for k in g0}
    assert max(errs.values()) > 1e-2, errs               # e_{−1} = 0 is wrong: the errors are off from the start
    assert errs["readout.weight"] <= TOL                  # the head does not depend on the recurrence's errors


def test_pass_budget_makes_the_lowest_layers_spatial():
    model, params, x, y = _model_case("lru", {"r_min": 0.9, "r_max": 0.99}, layers=3, H=2)
    _, g0 = model_mod.bptt(model, params, x, y, loss="mse")
    _, g2 = fptt_model_grads(model, params, x, y, "mse", passes=2)           # only the top layer is FPTT
    for k in g0:
        if k.startswith("layers.2.") or k.startswith("readout."):
            assert rel_error(g2[k], g0[k]) <= TOL, k
    for name in ("nu_log", "theta_log"):                                      # spatial below: λ gets no gradient
        assert np.all(g2[f"layers.0.cell.{name}"] == 0) and np.all(g2[f"layers.1.cell.{name}"] == 0)
    _, g3 = fptt_model_grads(model, params, x, y, "mse", passes=3)
    assert all(rel_error(g3[k], g0[k]) <= TOL for k in g0 if not k.startswith("layers.0.") and k != "x")
    assert rel_error(g3["x"], g0["x"]) > 1e-3              # x's error passes through the spatial layer 0
    with pytest.raises(UnsupportedError, match="passes"):
        fptt_model_grads(model, params, x, y, "mse", passes=0)


def test_blow_up_is_detected_with_a_clear_message():
    """A contractive lru (|λ| ≤ 0.5) over T = 1000 steps in float32: |λ|^-T overflows; FPTT must refuse."""
    model, params = make_model("lru", 3, 4, 2, r_min=0.3, r_max=0.5, dtype="float32")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 2, 3)).astype(np.float32)
    y = rng.standard_normal((1000, 2, 2)).astype(np.float32)
    with pytest.raises(NumericalError, match=r"FPTT lost the error signal.*\|λ\| in \[.*T=1000.*float32"):
        fptt_model_grads(model, params, x, y, "mse", carrier="state")
    with pytest.raises(NumericalError, match="FPTT lost the error signal"):
        api.model_grads(model, params, x, y, loss="mse", algorithm="fptt")   # float64 carriers do not save T=1000


def test_mixed_precision_carriers_help():
    """float32 states with float64 carriers are much closer to BPTT than float32 carriers (the paper's setting)."""
    model, params = make_model("lru", 3, 8, 2, r_min=0.9, r_max=0.99, dtype="float32", seed=2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 2, 3)).astype(np.float32)
    y = rng.standard_normal((60, 2, 2)).astype(np.float32)
    m64, p64 = make_model("lru", 3, 8, 2, r_min=0.9, r_max=0.99, seed=2)
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    _, g0 = model_mod.bptt(m64, p64, x.astype(np.float64), y.astype(np.float64), loss="mse")
    flat = lambda g: np.concatenate([g[k].ravel() for k in g0 if k != "x"])      # noqa: E731
    _, g_mixed = fptt_model_grads(model, params, x, y, "mse", carrier="float64")
    assert rel_error(flat(g_mixed), flat(g0)) < 1e-3


def test_refusals():
    model, params, x, y = _model_case("gru", {}, pooling="mean")
    with pytest.raises(UnsupportedError, match="not memoryless"):
        fptt_model_grads(model, params, x, y, "mse")
    model, params, x, y = _model_case("gru", {})
    with pytest.raises(UnsupportedError, match="carrier"):
        fptt_model_grads(model, params, x, y, "mse", carrier="float16")


@pytest.mark.slow        # T = 1500 on the NumPy step loop; the default suite has tests/algorithms/test_chunked.py's
def test_memory_does_not_grow_with_T():      # FPTT memory test (numpy, fptt) at a smaller T
    model, params = make_model("lru", 3, 8, 2, r_min=0.99, r_max=0.999)
    rng = np.random.default_rng(0)
    x, y = 0.1 * rng.standard_normal((1500, 2, 3)), rng.standard_normal((1500, 2, 2))
    short = peak_bytes(lambda: fptt_model_grads(model, params, x[:100], y[:100], "mse"))
    long = peak_bytes(lambda: fptt_model_grads(model, params, x, y, "mse"))
    # the input gradient "x" (T, B, I) is an output the size of x; everything else is flat in T
    assert long - short < 1.2 * x[100:].nbytes + 20_000, (short, long)
    short = peak_bytes(lambda: fptt_model_grads(model, params, x[:100], y[:100], "mse", input_grad=False))
    long = peak_bytes(lambda: fptt_model_grads(model, params, x, y, "mse", input_grad=False))
    assert long < 1.2 * short + 20_000, (short, long)


def test_gradient_quality_falls_with_forgetting():
    """The paper's observation: cosine ≈ 1 near |λ| → 1, lower for small |λ| and long T (float32 carriers)."""
    def quality(r_min):
        model, params = make_model("lru", 4, 4, 4, r_min=r_min, r_max=min(r_min + 0.01, 0.999), dtype="float32")
        rng = np.random.default_rng(0)
        x = rng.standard_normal((100, 1, 4)).astype(np.float32)
        y = np.zeros((100, 1, 4), np.float32)
        m64, _ = make_model("lru", 4, 4, 4, r_min=r_min, r_max=min(r_min + 0.01, 0.999))
        _, g0 = model_mod.bptt(m64, {k: v.astype(np.float64) for k, v in params.items()}, x.astype(np.float64),
                               y.astype(np.float64), loss="mse")
        _, g = fptt_model_grads(model, params, x, y, "mse", carrier="state", check=False)   # measure, not refuse
        if not np.all(np.isfinite(g["x"])):
            return 0.0                                         # the error signal is gone entirely
        return cosine(g["x"].astype(np.float64), g0["x"])
    assert quality(0.99) > 0.99
    assert quality(0.5) < 0.9


def test_stability_command_writes_json_and_png(tmp_path):
    from click.testing import CliRunner

    from refimpl.cli import cli
    r = CliRunner().invoke(cli, ["fptt-stability", "--width", "4", "--seeds", "1", "--precision", "f64/f64",
                                 "--cell", "lru", "--warmup", "direct", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    import json
    report = json.loads((tmp_path / "stability.json").read_text())
    by = {(s["T"], s["knob"]): s["cos_params"] for s in report["summary"]}      # knob: the lru's r_min
    assert by[(30, 0.99)] > 0.999 and by[(300, 0.36)] < 0.5      # near |λ| → 1 exact; forgetting + long T: lost
    assert (tmp_path / "stability.png").stat().st_size > 0
