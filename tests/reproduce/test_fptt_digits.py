"""fptt-digits: every budget's plan expands without refusal; claims and the page on fabricated results; the quick
budget end to end (slow)."""

import itertools

import pytest

from refimpl.reproduce import Results, Settings, render
from refimpl.reproduce import fptt_digits as fd
from refimpl.training.sweep import SweepSummary, _group, check_grid, expand, kind_of, with_values
from tests.reproduce import run_quick


@pytest.mark.parametrize("budget", ["quick", "full"])
@pytest.mark.parametrize("data_dir", [None, "mnist-files"])
def test_every_plan_expands_without_refusal(budget, data_dir):
    plan = fd.plan(Settings(budget=budget, backend="numpy", data_dir=data_dir))
    assert [s.name for s in plan.studies] == ["L1", "L1-fptt", "L4", "L4-fptt", "passes"]
    for study in plan.studies:
        check_grid(kind_of(study.base), study.grid)
        trials, refused, _ = expand(study.base, study.grid)
        assert trials and not refused
        assert all(t.config.task == ("mnist98" if data_dir else "digits-seq") for t in trials)
        # bptt and spatial take no FPTT option; fptt / fptt1 run the 'stored' schedule
        for t in trials:
            assert ("schedule" in t.config.algorithm_options) == (t.config.algorithm in ("fptt", "fptt1"))
    passes = plan.studies[-1]
    assert passes.grid["algorithm_options.passes"] == [1, 2, 3, 4, 5]


def _fake(plan, errors: dict) -> Results:
    """Results whose chosen point per group has the test error errors[(study, group)] (0 std, 1 seed)."""
    summaries = {}
    for study in plan.studies:
        trials, best = [], {}
        for values in itertools.product(*study.grid.values()):
            config = with_values(study.base, dict(zip(study.grid, values)))
            group = _group(config, study.group_by)
            trials.append({"group": group, "status": "ok"})
            err = errors.get((study.name, group))
            if err is not None and group not in best:
                best[group] = {**dict(zip(study.grid, values)), "objective": "val_error", "val_mean": err,
                               "val_std": 0.0, "test_mean": err, "test_std": 0.0, "seeds": 1}
        summaries[study.name] = SweepSummary("nowhere", trials, best, [], [], [])
    return Results(plan, summaries)


def _errors(fptt_gap=0.5, fptt1=80.0, passes=(6.0, 4.0, 3.0, 2.5, 2.0)):
    out = {}
    for layers, r in itertools.product(fd.DEPTHS, fd.R_MINS):
        for a, e in (("bptt", 3.0), ("fptt", 3.0 + fptt_gap), ("spatial", 5.0), ("fptt1", fptt1)):
            out[(fd._study(layers, a), f"{a}/{r}")] = e
    out.update({("passes", str(p)): e for p, e in zip(range(1, 6), passes)})
    return out


def test_claims_follow_the_numbers():
    plan = fd.plan(Settings(budget="quick", backend="numpy"))
    good = fd.claims(_fake(plan, _errors()))
    assert len(good) == 9 and all(c.holds is True for c in good)
    bad = fd.claims(_fake(plan, _errors(fptt_gap=10.0, fptt1=6.0, passes=(2.0, 4.0, 3.0, 6.0, 8.0))))
    assert all(c.holds is False for c in bad)
    missing = fd.claims(_fake(plan, {}))
    assert all(c.holds is None for c in missing)


def test_the_page_renders_with_published_values(tmp_path, monkeypatch):
    import refimpl.reproduce as rp
    monkeypatch.setattr(rp, "machine_line", lambda m: "a test machine")
    settings = Settings(budget="quick", backend="numpy")
    results = _fake(fd.plan(settings), _errors())
    figures = fd.figures(results, tmp_path)
    assert (tmp_path / figures[0][0]).exists()
    page = render(fd.EXPERIMENT, settings, results, figures, wall_s=1.0, trials_run=0)
    assert "2.81 (MNIST98 acc 97.19)" in page           # deep fptt at r_min 0.9: the notebook's accuracy, as error
    assert "5.77 (MNIST98 acc 94.23)" in page           # the pass budget P = 1
    assert page.count("**holds**") == 9


@pytest.mark.slow
def test_quick_budget_end_to_end(tmp_path):
    text, _ = run_quick("fptt-digits", tmp_path)
    assert "MNIST98 acc 98.02" in text                                  # the published P = 5 beside ours
