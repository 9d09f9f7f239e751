"""Recurrent DFA and DRTP (refimpl/algorithms/projected.py): each temporal rule against its defining formula computed
here independently (BPTT of the cell driven by the projected signal; the sum of immediate step gradients; the SnAp-1
trace written out for the rnn), the exact special case dfa(B = W_rᵀ) == BPTT, the absence of cross-layer credit,
refused and warned combinations, and the algorithm entries plugging into model_grads / gradcheck / train."""

import warnings

import numpy as np
import pytest

from refimpl.algorithms import projected
from refimpl.api import make_model, model_grads
from refimpl.cells.common import cache_at
from refimpl.errors import BpfreeWarning, ShapeError, UnknownNameError, UnsupportedError
from refimpl.nn.layers import lru_output_backward
from refimpl.nn.losses import loss_forward
from refimpl.nn.model import bptt, forward
from refimpl.numerics import rel_error
from refimpl.registry import cell_kernels

TOL = 1e-10      # DESIGN.md §7, exact float64 identities

CELLS = ["rnn", "gru", "lstm", "lru"]


def _data(model, rng, T=5, B=3, loss="ce"):
    x = rng.standard_normal((T, B, model.n_in))
    shape = (T, B) if model.per_step else (B,)
    if loss == "ce":
        y = rng.integers(0, model.n_out, shape)
    elif loss == "bce":
        y = rng.integers(0, 2, shape + (model.n_out,)).astype(float)
    else:
        y = rng.standard_normal(shape + (model.n_out,))
    return x, y


def _quiet(f, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BpfreeWarning)
        return f(*args, **kwargs)


@pytest.mark.parametrize("opts", [dict(), dict(ffn="mlp", residual=True), dict(pooling="cumulative_mean"),
                                  dict(pooling="last"), dict(ffn="glu")])
@pytest.mark.parametrize("cell", CELLS)
def test_dfa_with_transported_feedback_is_bptt(cell, opts, rng):
    """One layer, temporal=online, B_1 = W_rᵀ: the projected error is the exact error reaching the layer."""
    if opts.get("residual") and cell != "lru":
        opts = {**opts, "residual": False}                   # rnn/gru/lstm change the width (d → H)
    model, params = make_model(cell, 3, 4, 3, seed=1, **opts)
    for loss in ("ce", "mse", "bce"):
        x, y = _data(model, rng, loss=loss)
        mask = rng.uniform(0.2, 1.0, (5, 3)) if model.per_step else None
        value, g = projected.projected_grads(model, params, x, y, loss, mask, rule="dfa",
                                      feedback=[params["readout.weight"].T.copy()])
        ref_value, ref = bptt(model, params, x, y, loss=loss, mask=mask)
        assert value == pytest.approx(ref_value, rel=1e-12)
        for k in params:
            assert rel_error(g[k], ref[k]) <= TOL, (loss, k)


def _signal(rule, model, out, y, loss, mask):
    """e_t (dfa) or (m_t/B) y*_t (drtp), (T, B, O), written out from the definitions."""
    _, e = loss_forward(loss, out, y, mask)
    if rule == "dfa":
        return e
    T, B, O = out.shape
    m = np.ones((T, B)) if mask is None else mask
    ystar = np.eye(O)[y] if loss == "ce" else y
    return (m / B)[..., None] * ystar


@pytest.mark.parametrize("rule", projected.RULES)
@pytest.mark.parametrize("cell", CELLS)
def test_online_is_the_cells_bptt_driven_by_the_projected_signal(cell, rule, rng):
    """temporal=online (exact per-layer RTRL): the cell's update is the cell's own BPTT with instantaneous adjoints
    dh_t = ε_t Bᵀ (through the lru's output map); the readout gets its true gradient."""
    model, params = make_model(cell, 3, 4, 2, seed=2)
    x, y = _data(model, rng, loss="ce")
    mask = rng.uniform(0.2, 1.0, (5, 3))
    fb = projected.make_feedback(model, "lecun", seed=7)
    _, g = _quiet(projected.projected_grads, model, params, x, y, "ce", mask, rule=rule, feedback=fb)
    out, cache = forward(model, params, x)
    df = _signal(rule, model, out, y, "ce", mask) @ fb[0].T                   # (T, B, w)
    layer = cache.layers[0]
    dh = df
    if cell == "lru":
        go = lru_output_backward(df, layer.out_map)
        dh = go["h"]
        for k in ("C_re", "C_im", "D"):
            assert rel_error(g[f"layers.0.{k}"], go[k]) <= TOL, k
    c = model.cells[0]
    ref = c.module.backward({k: params[f"layers.0.cell.{k}"] for k in c.param_shapes}, dh, layer.cell,
                            **c.step_options)
    for k in c.param_shapes:
        assert rel_error(g[f"layers.0.cell.{k}"], ref[k]) <= TOL, k
    _, true = bptt(model, params, x, y, loss="ce", mask=mask)
    for k in ("readout.weight", "readout.bias"):
        assert rel_error(g[k], true[k]) <= TOL, k


@pytest.mark.parametrize("rule", projected.RULES)
@pytest.mark.parametrize("cell", ["gru", "lstm", "lru"])
def test_truncated_is_the_sum_of_immediate_step_gradients(cell, rule, rng):
    """temporal=truncated, two layers: each layer's cell update is Σ_t of its step backward from δ^l_t alone."""
    model, params = make_model(cell, 3, 4, 2, layers=2, seed=3)
    x, y = _data(model, rng, loss="ce")
    fb = projected.make_feedback(model, "orthogonal", seed=1)
    _, g = _quiet(projected.projected_grads, model, params, x, y, "ce", None, rule=rule, temporal="truncated",
                  feedback=fb)
    out, cache = forward(model, params, x)
    eps = _signal(rule, model, out, y, "ce", None)
    for l, c in enumerate(model.cells):
        p = {k: params[f"layers.{l}.cell.{k}"] for k in c.param_shapes}
        dh = eps @ fb[l].T
        if cell == "lru":
            dh = lru_output_backward(dh, cache.layers[l].out_map)["h"]
        total = {k: np.zeros_like(v) for k, v in p.items()}
        for t in range(x.shape[0]):
            step = cache_at(cache.layers[l].cell, t)
            if cell == "lstm":
                dstate = c.module.LSTMState(dh[t], np.zeros_like(dh[t]))
            else:
                dstate = dh[t]
            dp, _, _ = c.module.step_backward(p, dstate, step, **c.step_options)
            for k in total:
                total[k] += dp[k]
        for k in p:
            assert rel_error(g[f"layers.{l}.cell.{k}"], total[k]) <= TOL, (l, k)


def test_snap1_rnn_is_the_written_out_trace(rng):
    """SnAp-1 on a tanh rnn: T_t[b, k, j] = d_k (W_hh[k, k] T_{t−1}[b, k, j] + v_t[b, j]), d = 1 − h_t², with v = x
    (weight_ih), h_{t−1} (weight_hh), 1 (biases); update Σ_t Σ_b δ_t[b, k] T_t[b, k, j]."""
    model, params = make_model("rnn", 3, 4, 2, seed=4)
    x, y = _data(model, rng, loss="ce")
    fb = projected.make_feedback(model, seed=5)
    _, g = projected.projected_grads(model, params, x, y, "ce", None, rule="dfa", temporal="snap1", feedback=fb)
    out, cache = forward(model, params, x)
    delta = _signal("dfa", model, out, y, "ce", None) @ fb[0].T               # (T, B, H)
    h = cache.layers[0].cell.h                                                # (T, B, H)
    w_kk = np.diag(params["layers.0.cell.weight_hh"])
    T, B, H = h.shape
    inputs = {"weight_ih": x, "weight_hh": np.concatenate([np.zeros((1, B, H)), h[:-1]]),
              "bias_ih": np.ones((T, B, 1)), "bias_hh": np.ones((T, B, 1))}
    for name, v in inputs.items():
        trace, grad = np.zeros((B, H, v.shape[-1])), np.zeros((H, v.shape[-1]))
        for t in range(T):
            d = 1.0 - h[t] ** 2
            trace = d[:, :, None] * (w_kk[None, :, None] * trace + v[t][:, None, :])
            grad += np.einsum("bk,bkj->kj", delta[t], trace)
        ours = g[f"layers.0.cell.{name}"]
        assert rel_error(ours, grad.reshape(ours.shape)) <= TOL, name


def test_no_credit_crosses_between_layers(rng):
    """drtp needs no output error: layer 0's update does not depend on layer 1 at all."""
    model, params = make_model("gru", 3, 4, 2, layers=2, seed=6)
    x, y = _data(model, rng, loss="ce")
    changed = {**params, "layers.1.cell.weight_hh": 2.0 * params["layers.1.cell.weight_hh"],
               "readout.weight": -params["readout.weight"]}
    _, a = projected.projected_grads(model, params, x, y, "ce", rule="drtp", temporal="snap1")
    _, b = projected.projected_grads(model, changed, x, y, "ce", rule="drtp", temporal="snap1")
    for k in params:
        if k.startswith("layers.0."):
            assert np.array_equal(a[k], b[k]), k
    assert not np.allclose(a["layers.1.cell.weight_ih"], b["layers.1.cell.weight_ih"])


def test_encoder_and_norm_get_the_layers_local_update(rng):
    """Below the cell, the update is δ^l_t through the cell's immediate input Jacobian: with truncated (no carried
    sensitivity) the layer-norm and encoder updates are the BPTT ones of a model whose cell has no memory."""
    model, params = make_model("rnn", 3, 4, 2, encoder=True, d_model=5, norm="layer", seed=7)
    x, y = _data(model, rng, loss="ce")
    fb = [params["readout.weight"].T.copy()]
    memoryless = {**params, "layers.0.cell.weight_hh": np.zeros_like(params["layers.0.cell.weight_hh"])}
    _, g = projected.projected_grads(model, memoryless, x, y, "ce", rule="dfa", temporal="truncated", feedback=fb)
    _, ref = bptt(model, memoryless, x, y, loss="ce")
    for k in ("encoder.weight", "encoder.bias", "layers.0.norm.weight", "layers.0.norm.bias",
              "layers.0.cell.weight_ih", "layers.0.cell.bias_ih"):
        assert rel_error(g[k], ref[k]) <= TOL, k


def test_bad_combinations(rng):
    model, params = make_model("gru", 3, 4, 2, seed=0)
    x, y = _data(model, rng, loss="mse")
    with pytest.raises(UnsupportedError, match="drtp projects the \\*target\\*.*regression"):
        projected.projected_grads(model, params, x, y, "mse", rule="drtp")
    with pytest.raises(UnknownNameError, match="temporal rule 'rtrl'"):
        projected.projected_grads(model, params, x, y, "mse", rule="dfa", temporal="rtrl")
    with pytest.raises(UnknownNameError, match="feedback init scheme"):
        projected.projected_grads(model, params, x, y, "mse", rule="dfa", feedback_init="uniform")
    with pytest.raises(ShapeError, match="feedback\\[0\\] has shape"):
        projected.projected_grads(model, params, x, y, "mse", rule="dfa", feedback=[np.zeros((2, 4))])
    with pytest.raises(UnsupportedError, match="NumPy reference only"):
        projected.dfa_model_grads(cell_kernels("gru")._replace(backend="numba"), model, params, x, y, "mse", None)
    pooled, pparams = make_model("gru", 3, 4, 2, seed=0, pooling="mean")
    with pytest.raises(UnsupportedError, match="not memoryless"):
        projected.projected_grads(pooled, pparams, x, y[-1], "mse", rule="dfa")
    lru, lparams = make_model("lru", 3, 4, 2, seed=0)
    x, y = _data(lru, rng, loss="ce")
    with pytest.warns(BpfreeWarning, match="unbounded lru state"):
        projected.projected_grads(lru, lparams, x, y, "ce", rule="drtp")


@pytest.mark.parametrize("cell,options,warns", [("rnn", {"nonlinearity": "linear"}, True), ("lru", {}, True),
                                                ("rnn", {}, False), ("gru", {}, False), ("lstm", {}, False)])
def test_drtp_warns_about_a_state_that_nothing_saturates(cell, options, warns):
    """drtp warns (BpfreeWarning) for a linear recurrence (rnn 'linear', the lru), not where tanh or gates saturate."""
    model, _ = make_model(cell, 3, 4, 2, seed=0, **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        projected.check_rule(model, "drtp", "ce", "online")
    assert any(issubclass(w.category, BpfreeWarning) for w in caught) == warns


# ---------------------------------------------------------------------------------------------- as algorithms

def test_algorithm_entries_plug_into_model_grads_gradcheck_and_train(tmp_path, rng):
    from refimpl.studies.gradcheck import gradcheck
    from refimpl.training.config import TrainConfig
    from refimpl.training.loop import train
    model, params = make_model("lstm", 3, 4, 2, seed=0)
    x, y = _data(model, rng, loss="ce")
    value, g = model_grads(model, params, x, y, loss="ce", algorithm="drtp", temporal="snap1", feedback_seed=3)
    ref_value, ref = projected.projected_grads(model, params, x, y, "ce", rule="drtp", temporal="snap1",
                                               feedback_seed=3)
    assert value == ref_value and all(np.array_equal(g[k], ref[k]) for k in ref)
    with pytest.raises(UnknownNameError, match="option of algorithm 'dfa'"):
        model_grads(model, params, x, y, loss="ce", algorithm="dfa", passes=2)
    report = gradcheck("gru", "dfa", algorithm_options={"temporal": "truncated"})
    assert report.ok and report.tol_vs_bptt is None                    # approximate: reported, not judged
    assert {r.name for r in report.rows} >= {"layers.0.cell.weight_hh", "readout.weight"}
    readout = [r for r in report.rows if r.name == "readout.weight"][0]
    assert readout.cosine_vs_bptt == pytest.approx(1.0)               # the readout gets its true gradient
    r = train(TrainConfig(task="digits-seq", task_options={"mode": "row"}, cell="gru", hidden=8, batch_size=128,
                          steps=4, algorithm="dfa", algorithm_options={"temporal": "snap1"}, log_every=1),
              tmp_path / "run")
    assert np.isfinite(r.test_loss)
