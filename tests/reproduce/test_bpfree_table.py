"""reproduce bpfree: every budget's plan expands (drtp and ll-ce refused for reconstruction only), a tiny real run
writes the page with the trackers' table, the refusals and the claims, and the quick budget end to end (slow)."""

import numpy as np
import pytest

from refimpl.reproduce import Results, Settings, reproduce
from refimpl.reproduce import bpfree_table as bt
from refimpl.training import sweep
from tests.reproduce import run_quick


@pytest.mark.parametrize("budget", ["quick", "full"])
@pytest.mark.parametrize("data_dir", [None, "mnist-files"])
def test_every_budget_plan_expands_refusing_only_the_rules_without_reconstruction(budget, data_dir):
    plan = bt.plan(Settings(budget=budget, backend="numpy", data_dir=data_dir))
    assert [s.name for s in plan.studies] == ["classification", "reconstruction"]
    for study in plan.studies:
        assert study.base.task == ("mnist-static" if data_dir else "digits")
        trials, refused, _ = sweep.expand(study.base, study.grid)
        n_lr = len(study.grid["lr"])
        refused_rules = sorted({r["config"]["algorithm"] for r in refused})
        if study.name == "classification":
            assert refused_rules == [] and len(trials) == 5 * n_lr
        else:
            assert refused_rules == ["drtp", "ll-ce"] and len(trials) == 3 * n_lr


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One tiny real run (2 hidden layers of 8, 2 epochs, one lr, one seed) shared by the tests below."""
    root = tmp_path_factory.mktemp("bpfree")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(bt.BUDGET, "quick", dict(arch="8-8", epochs=2, batch_size=256, lrs=[1e-2], seeds=1))
        settings = Settings(budget="quick", backend="numpy")
        page = reproduce("bpfree", settings, out_dir=root / "runs", results_dir=root / "res", scheduler="inline")
        plan = bt.plan(settings)
        summaries = {s.name: sweep.run_sweep(s.base, s.grid, root / "runs" / "bpfree" / "quick" / s.name,
                                             scheduler="inline", seeds=s.seeds) for s in plan.studies}
    return root, page, Results(plan, summaries)


def test_a_tiny_run_writes_the_page_with_trackers_refusals_and_claims(tiny):
    root, page, _ = tiny
    text = page.read_text()
    assert "training error and the trackers" in text and "Refused by the sweep" in text
    assert "reconstruction / drtp" in text and "reconstruction / ll-ce" in text
    assert "## The claims, checked" in text and "bp_cosine > 0" in text
    assert (root / "res" / "bpfree" / "bp-cosine.png").exists()


def test_final_values_meet_what_each_rule_must_give(tiny):
    """Facts independent of the code under test: BP's update is the BP gradient (bp_cosine 1 in every layer); every
    rule trains the readout by its true gradient (bp_cosine 1 there); the first hidden layer has no feedback path
    below it (no weight alignment); and the training error is a count over the 1258 training digits."""
    final = bt.final_values(tiny[2])
    assert sorted(final) == sorted([f"classification/{r}" for r in bt.RULES] +
                                   [f"reconstruction/{r}" for r in ("bp", "dfa", "ll-mse")])
    np.testing.assert_allclose(final["classification/bp"]["bp_cosine"], 1.0, atol=1e-9)
    for key, v in final.items():
        assert v["layers"][-1] == "readout"
        assert abs(v["bp_cosine"][-1] - 1.0) < 1e-9, key
        assert v["weight_alignment"][0] is None
        if key.startswith("classification"):
            wrong = v["train_error"][0] * 1258 / 100
            assert abs(wrong - round(wrong)) < 1e-6 and 0 <= wrong <= 1258
        else:
            assert v["train_error"] is None


def test_the_claims_read_the_numbers_they_quote():
    """Fabricated final values: LL ≤ BP ≤ DFA holds for 0.1, 0.5, 0.9 (ties: BP < DFA strictly does not), DRTP far
    above at 30 but not at 2; the alignment claim fails on a negative hidden-layer cosine."""
    def row(err, cos):
        return {"train_error": (err, 0.1), "layers": ["layers.0", "layers.1", "readout"], "bp_cosine": cos,
                "bp_cosine_first": cos, "weight_alignment": [None, 0.1, 0.2]}
    plan = bt.plan(Settings(budget="quick", backend="numpy"))
    final = {"classification/ll-ce": row(0.1, [0.2, 0.3, 1.0]), "classification/bp": row(0.5, [1.0, 1.0, 1.0]),
             "classification/dfa": row(0.9, [0.4, 0.5, 1.0]), "classification/drtp": row(30.0, [0.1, -0.2, 1.0])}
    verdicts = [c.holds for c in bt.claims(Results(plan, {}, {"final": final}))]
    assert verdicts[:5] == [True, False, True, True, False]
    final["classification/drtp"] = row(2.0, [0.1, 0.2, 1.0])
    verdicts = [c.holds for c in bt.claims(Results(plan, {}, {"final": final}))]
    assert verdicts[:5] == [True, False, False, True, True]


@pytest.mark.slow
def test_the_quick_budget_end_to_end(tmp_path):
    text, _ = run_quick("bpfree", tmp_path, scheduler="inline")
    assert "bp_cosine per layer" in text
