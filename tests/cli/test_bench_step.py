"""The whole-step benchmark's smoke run: `python -m bench.step --quick` writes its JSON with every expected row
(no speed assertions)."""

import json

from bench.step import MODELS, device_step_available, goals, main


def test_quick_run_writes_every_row(tmp_path):
    out = tmp_path / "step.json"
    main(["--quick", "--out", str(out)])
    report = json.loads(out.read_text())
    rows = report["rows"]
    ours = {(r["model"], r["algorithm"]) for r in rows if r["kind"] == "ours"}
    assert ours == {(m, a) for m, spec in MODELS.items() for a in spec["algorithms"]}
    for r in rows:
        if r["kind"] == "ours":
            assert r["who"] == "numpy" and "skipped" not in r, r
            assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"] and r["first_call_s"] > 0, r
            assert r["first_loss_rel_err"] <= 1e-4, r                 # every step starts from refimpl's loss
            if r["algorithm"] == "bptt":
                assert r["path"] == ("DeviceStep" if device_step_available() else "model_grads + optim.step"), r
            if r["algorithm"] != "bptt":
                assert r["x_own_bptt"] > 0, r
        else:
            assert "skipped" in r, r                                  # --quick runs no peer
    assert {g["goal"].split(" (")[0] for g in report["goals"]} >= {"numba copy bptt / JAX copy bptt"}
    assert all(g["met"] is None for g in report["goals"])             # nothing to compare against in --quick
    md = (tmp_path / "step.md").read_text()
    assert "| copy |" in md and "| lstm2-h32 |" in md and "Speed goals" in md


def test_goals_are_judged_from_the_ratios():
    shape = {"T": 1, "B": 1, "I": 1, "H": 1, "L": 1}
    rows = [{"model": "copy", "algorithm": "bptt", "who": "numba", "kind": "ours", "shape": shape, "x_jax": 0.8},
            {"model": "copy", "algorithm": "online", "who": "numba", "kind": "ours", "shape": shape, "x_jax": 1.6},
            {"model": "fptt", "algorithm": "fptt", "who": "mlx", "kind": "ours", "shape": shape, "x_numba": 3.0},
            {"model": "fptt", "algorithm": "fptt:stored", "who": "numba", "kind": "ours", "shape": shape,
             "x_own_bptt": 1.9},
            {"model": "fptt", "algorithm": "fptt", "who": "numba", "kind": "ours", "shape": shape, "x_own_bptt": 4.0}]
    got = {g["goal"].split(" (")[0]: g["met"] for g in goals(rows)}
    assert got == {"numba copy bptt / JAX copy bptt": True, "numba copy online / JAX copy bptt": False,
                   "numba fptt-model fptt, schedule 'stored' / its own bptt": True,
                   "numba fptt-model fptt, schedule 'passes' / its own bptt": None,     # reported, no target
                   "mlx / numba, whole step": False}


def test_a_failing_contender_is_reported_and_the_others_still_timed():
    from bench.step import _interleaved

    def broken():
        raise ValueError("refused")
    got = _interleaved({"fine": lambda: None, "broken": broken}, repeats=2)
    assert got["broken"] == {"failed": "ValueError: refused"}
    assert len(got["fine"]["times"]) == 2 and got["fine"]["first_call_s"] >= 0
