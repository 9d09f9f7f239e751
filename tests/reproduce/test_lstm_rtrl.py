"""lstm-rtrl: every budget's plan expands without refusal; the cost measurement on tiny widths; claims and the page on
fabricated results; the quick budget end to end (slow)."""

import itertools

import pytest

from refimpl.reproduce import Results, Settings, render
from refimpl.reproduce import lstm_rtrl as lr
from refimpl.training.sweep import SweepSummary, _group, check_grid, expand, kind_of, with_values
from tests.reproduce import run_quick


@pytest.mark.parametrize("budget", ["quick", "full"])
def test_every_plan_expands_without_refusal(budget):
    plan = lr.plan(Settings(budget=budget, backend="numpy"))
    (study,) = plan.studies
    check_grid(kind_of(study.base), study.grid)
    trials, refused, _ = expand(study.base, study.grid)
    assert trials and not refused
    assert {t.config.algorithm for t in trials} == set(lr.ALGORITHMS)
    assert {t.config.task_options["waiting_time"] for t in trials} == set(lr.BUDGET[budget]["delays"])
    assert plan.measure is not None


def test_the_cost_measurement_and_its_fit():
    b = dict(widths=[2, 4], rtrl_max=2, T=3, repeats=1)
    m = lr.measure(b, "numpy")
    got = {(r["algorithm"], r["H"]) for r in m["rows"]}
    assert ("rtrl", 4) not in got and ("rtrl", 2) in got and ("bptt", 4) in got     # rtrl capped at rtrl_max
    assert all(r["ms_per_step"] > 0 and r["peak_bytes"] > 0 for r in m["rows"])
    assert m["fits"]["rtrl"]["time"] is None                     # one width only: no exponent
    assert any(line.startswith("| rtrl |") and "capped" in line for line in m["table"])


def test_the_exponent_is_the_log_log_slope():
    rows = [{"algorithm": "a", "H": h, "t": 3.0 * h ** 4} for h in (8, 16, 32)]
    assert lr._exponent(rows, "a", "t") == pytest.approx(4.0)
    rows[0]["t"] = 1.0                                           # only the two largest widths count
    assert lr._exponent(rows, "a", "t") == pytest.approx(4.0)


def _fake(plan, errors: dict, measured=None) -> Results:
    (study,) = plan.studies
    trials, best = [], {}
    for values in itertools.product(*study.grid.values()):
        group = _group(with_values(study.base, dict(zip(study.grid, values))), study.group_by)
        trials.append({"group": group, "status": "ok"})
        if group in errors and group not in best:
            best[group] = {**dict(zip(study.grid, values)), "objective": "val_error", "val_mean": errors[group],
                           "val_std": 0.0, "test_mean": errors[group], "test_std": 0.0, "seeds": 1}
    return Results(plan, {study.name: SweepSummary("nowhere", trials, best, [], [], [])}, measured or {})


def _errors(delays, rtrl_gap=0.0, approx_last=40.0):
    out = {}
    for i, d in enumerate(delays):
        last = i == len(delays) - 1
        out.update({f"bptt/{d}": 1.0, f"rtrl/{d}": 1.0 + rtrl_gap,
                    **{f"{a}/{d}": (approx_last if last else 2.0) for a in lr.APPROXIMATIONS}})
    return out


def _measured(k_rtrl, k_bptt):
    rows = [{"algorithm": a, "H": h, "ms_per_step": h ** (k_rtrl if a == "rtrl" else k_bptt), "peak_bytes": h ** 2}
            for a in lr.ALGORITHMS for h in (16, 32)]
    return {"rows": rows, "fits": {a: {"time": lr._exponent(rows, a, "ms_per_step"),
                                       "memory": lr._exponent(rows, a, "peak_bytes")} for a in lr.ALGORITHMS},
            "table": ["| the cost table |"]}


def test_claims_follow_the_numbers(tmp_path, monkeypatch):
    settings = Settings(budget="quick", backend="numpy")
    plan = lr.plan(settings)
    delays = lr.BUDGET["quick"]["delays"]
    good = lr.claims(_fake(plan, _errors(delays), _measured(4.0, 1.0)))
    assert len(good) == 5 and all(c.holds is True for c in good)
    bad = lr.claims(_fake(plan, _errors(delays, rtrl_gap=30.0, approx_last=2.0), _measured(2.0, 2.0)))
    assert all(c.holds is False for c in bad)
    assert all(c.holds is None for c in lr.claims(_fake(plan, {})))

    import refimpl.reproduce as rp
    monkeypatch.setattr(rp, "machine_line", lambda m: "a test machine")
    results = _fake(plan, _errors(delays), _measured(4.0, 1.0))
    figures = lr.figures(results, tmp_path)
    assert (tmp_path / figures[0][0]).exists()
    page = render(lr.EXPERIMENT, settings, results, figures, wall_s=1.0, trials_run=0)
    assert "| the cost table |" in page and page.count("**holds**") == 5


@pytest.mark.slow
def test_quick_budget_end_to_end(tmp_path):
    text, _ = run_quick("lstm-rtrl", tmp_path)
    assert "Cost of one gradient" in text
