"""The FPTT stability study (refimpl/studies/fptt_stability.py): its files, and the measurements it rests on."""

import json
import math

import numpy as np
import pytest

from refimpl.algorithms.chunked import fptt_model_grads
from refimpl.errors import NumericalError
from refimpl.numerics import rel_error
from refimpl.studies import fptt_stability as fs


def _strict(text: str):
    """json.loads refusing NaN / Infinity (the study's JSON must be strict)."""
    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def test_tiny_grid_writes_strict_json_and_png_for_every_cell_and_both_warmups(tmp_path):
    knobs = {"lru": (0.36, 0.99), "rnn": (0.6, 1.0), "gru": (0.0, 5.0), "lstm": (0.0, 5.0)}
    summary, regions, json_path, png = fs.write_study(tmp_path, seeds=1, width=4, lengths=(10, 300),
                                                      precisions=("f32/f64", "f64/f64"), knobs=knobs)
    report = _strict(json_path.read_text())
    assert set(report) == {"config", "records", "summary", "regions"}
    assert report["config"]["widths"] == {c: 4 for c in fs.CELLS}
    records = report["records"]
    assert len(records) == 4 * 2 * 2 * 2 * 2                  # cells × knobs × T × precisions × warm-ups, one seed
    assert {(r["cell"], r["warmup"]) for r in records} == {(c, w) for c in fs.CELLS for w in fs.WARMUPS}
    for r in records:
        assert r["accepted"] == (r["residual"] is not None and r["residual"] <= fs.RESIDUAL_TOL)
    lost = [r for r in records if r["rel_params"] is None]
    assert all(r["cos_params"] == 0.0 for r in lost)
    # the lru at r_min 0.36, T 300 is lost (0.36^300 = 1e-133: beyond any precision); at 0.99, T 10 exact
    by = {(s["cell"], s["precision"], s["warmup"], s["knob"], s["T"]): s for s in report["summary"]}
    assert by[("lru", "f64/f64", "direct", 0.99, 10)]["rel"] <= 1e-12
    for precision in ("f32/f64", "f64/f64"):
        lost_point = by[("lru", precision, "direct", 0.36, 300)]
        assert lost_point["rel"] is None or lost_point["rel"] > 1.0
        assert lost_point["accepted"] == 0
    assert len(report["regions"]) == 4 * 2
    for entry in report["regions"]:
        assert set(fs.WARMUPS) <= set(entry) and entry["knob"] == fs.KNOBS[entry["cell"]][0]
        exact = {tuple(p) for p in entry["direct"]}
        mine = [s for s in report["summary"] if (s["cell"], s["precision"], s["warmup"]) ==
                (entry["cell"], entry["precision"], "direct")]
        assert exact == {(s["knob"], s["T"]) for s in mine if s["rel"] is not None and s["rel"] <= fs.EXACT}
    lru64 = next(e for e in report["regions"] if e["cell"] == "lru" and e["precision"] == "f64/f64")
    assert [0.99, 10] in lru64["direct"] and [0.36, 300] not in lru64["direct"]
    assert png.stat().st_size > 0
    table = fs.format_table(summary)
    assert "lstm, f32/f64" in table and " | " in table and "*" in table


def test_rel_error_agrees_with_an_independent_comparison():
    """measure's rel_params / cosine from its own FPTT and BPTT runs, recomputed here."""
    r = fs.measure("gru", 3.0, 30, 0, "f64/f64", "direct", width=6)
    model, params, x, y = fs.setup("gru", 3.0, 30, 0, "float64", width=6)
    _, g = fptt_model_grads(model, params, x, y, "mse", check=False)             # the step loop (chunk 1)
    ref = fs.reference("gru", 3.0, 30, 0, "float64", width=6)
    keys = list(params)
    flat = lambda d: np.concatenate([np.ravel(d[k]) for k in keys])             # noqa: E731
    assert r["rel_params"] == pytest.approx(rel_error(flat(g), flat(ref)), rel=1e-3, abs=1e-14)
    assert r["rel_params"] < 1e-10 and r["cos_params"] > 1 - 1e-12 and r["rel_floor"] == 0.0


def test_direct_warmup_is_far_better_than_shooting_on_a_dense_cell():
    """rnn tanh, W_hh orthogonal (ρ = 1), T = 100, float64: σ_min of the Jacobian product ~1e-11; the shooting warm-up
    loses about cond(P) more than the direct one (measured: 2e-7 vs 4e-3 on seed 0)."""
    direct, shooting = (fs.measure("rnn", 1.0, 100, 0, "f64/f64", w) for w in ("direct", "shooting"))
    for key in ("rel_params", "rel_inputs"):
        assert direct[key] is not None and shooting[key] is not None
        assert 100 * direct[key] <= shooting[key], (key, direct[key], shooting[key])
    assert direct["rel_params"] <= fs.EXACT < shooting["rel_params"]
    assert direct["gain"] == pytest.approx(shooting["gain"], rel=1e-6)          # the same Jacobian product


def test_warmups_agree_on_the_lru():
    """A diagonal Jacobian: both warm-ups give the same gradient to rounding (r_min 0.9, T 100, float64)."""
    model, params, x, y = fs.setup("lru", 0.9, 100, 0, "float64")
    grads = [fptt_model_grads(model, params, x, y, "mse", warmup=w)[1] for w in fs.WARMUPS]
    keys = sorted(grads[0])
    flat = [np.concatenate([np.ravel(g[k]) for k in keys]) for g in grads]
    assert rel_error(flat[0], flat[1]) <= 1e-9


@pytest.mark.parametrize("warmup", fs.WARMUPS)
def test_accepted_is_what_the_check_says(warmup):
    """rnn ρ = 1, T = 100, float64: the direct warm-up's residual is ~1e-6 (accepted), the shooting one's ~2e-2
    (refused); fptt_model_grads with check=True must agree."""
    r = fs.measure("rnn", 1.0, 100, 0, "f64/f64", warmup)
    assert r["accepted"] == (warmup == "direct")                   # one accepted, one refused point
    model, params, x, y = fs.setup("rnn", 1.0, 100, 0, "float64")
    refused = False
    try:
        fptt_model_grads(model, params, x, y, "mse", chunk=100, warmup=warmup, check=True)
    except NumericalError:
        refused = True
    assert refused == (not r["accepted"])
    assert math.isfinite(r["residual"])


def test_every_accepted_gradient_is_within_the_calibrated_bound():
    """RESIDUAL_TOL's calibration (docs/derivations/fptt.md §8), re-measured live on a part of the study's grid (its
    width 32) across the accept/refuse boundary: every gradient the check (5) accepts is within 1e-3 of float64 BPTT,
    and the grid has both outcomes. (An empirical bound: at width 8 a float32 input gradient reaches 1.9e-3.)"""
    records = fs.run_study(cells=("gru", "rnn"), knobs={"gru": (0.0, 0.5, 1.0), "rnn": (0.8, 1.05)}, lengths=(10, 30),
                           seeds=(0, 1), precisions=("f32/f32", "f64/f64"))
    accepted = [r for r in records if r["accepted"]]
    assert accepted and len(accepted) < len(records)
    for r in accepted:
        worst = max(r["rel_params"], r["rel_inputs"])
        assert worst <= 1e-3, (r["cell"], r["knob"], r["T"], r["precision"], r["warmup"], worst)
