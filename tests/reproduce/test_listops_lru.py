"""The listops experiment: its plans expand without refusal, its data measurement agrees with an independent count,
a held-out seed shares no expression with the training seed at the quick size, and a minuscule real run renders the
page with every rule (the quick budget end to end is in the slow set)."""

import numpy as np
import pytest

from refimpl.reproduce import BUDGETS, Settings, get_experiment, reproduce
from refimpl.reproduce import listops_lru
from refimpl.training.sweep import expand, kind_of
from tasks import listops, make_task
from tests.reproduce import run_quick


@pytest.mark.parametrize("budget", BUDGETS)
def test_each_budget_plans_a_grid_that_expands_without_refusal(budget):
    plan = listops_lru.plan(Settings(budget=budget, backend="numpy"))
    for study in plan.studies:
        trials, refused, _ = expand(study.base, study.grid)
        assert refused == [] and len(trials) == np.prod([len(v) for v in study.grid.values()])
        assert kind_of(study.base) == "train"
        assert set(study.grid["algorithm"]) == set(listops_lru.ALGORITHMS)
        assert study.base.pooling == "cumulative_mean"          # the one pooling every rule runs with
    assert plan.measure is not None


def test_majority_error_and_overlap_agree_with_a_count_from_the_strings():
    task = make_task("listops", seed=3, min_length=4, max_length=6, n_train=300, n_val=100, n_test=100)
    other = make_task("listops", seed=4, min_length=4, max_length=6, n_train=300, n_val=100, n_test=100)
    labels = [listops.evaluate(listops.decode(r)) for r in listops.tokens(task.train)]
    counts = {c: labels.count(c) for c in set(labels)}
    top = max(sorted(counts), key=lambda c: counts[c])           # ties: the smallest class, as argmax
    test_labels = [listops.evaluate(listops.decode(r)) for r in listops.tokens(task.test)]
    c, err = listops_lru.majority_error(task)
    assert c == top and err == pytest.approx(100.0 * sum(v != top for v in test_labels) / len(test_labels))
    train_text = {" ".join(listops.decode(r)) for r in listops.tokens(task.train)}
    shared = sum(" ".join(listops.decode(r)) in train_text for r in listops.tokens(other.train))
    assert listops_lru.overlap(task.train, other.train) == shared > 0    # at 4 … 6 tokens repeats do happen


@pytest.mark.slow
def test_the_quick_data_of_a_held_out_seed_shares_no_expression_with_the_training_split():
    measured = listops_lru.measure_data("quick")
    assert measured["shared"] == {"val": 0, "test": 0, "held": 0}
    for s in measured["splits"].values():
        assert sum(s["length_hist"]) == sum(s["depth_counts"]) == sum(s["classes"]) == s["n"]
    assert 0 < measured["majority_error"] < 90


def test_a_minuscule_run_renders_the_page_with_every_rule(tmp_path, monkeypatch):
    tiny = dict(task="listops-small", task_options={"pad": "left", "min_length": 4, "max_length": 12, "n_train": 32,
                                                    "n_val": 16, "n_test": 16},
                layers=1, d_model=4, hidden=4, epochs=1, warmup_epochs=0, lrs=[1e-2], r_min=[0.0], seeds=1,
                executions=1)
    monkeypatch.setitem(listops_lru.BUDGET, "quick", tiny)
    page = reproduce("listops", Settings(budget="quick", backend="numpy"), out_dir=tmp_path / "runs",
                     results_dir=tmp_path / "results", scheduler="inline")
    text = page.read_text()
    for g in listops_lru.ALGORITHMS:
        assert f"| {g} |" in text
    assert "refused:" not in text and "majority" in text
    assert (tmp_path / "results" / "listops" / "data.png").exists()
    assert (tmp_path / "results" / "listops" / "test-error.png").exists()
    claims = listops_lru.claims(listops_lru.Results(listops_lru.plan(Settings("quick", "numpy")), {}, {}))
    assert all(c.holds is None for c in claims)                # nothing ran: nothing decided
    assert get_experiment("listops") is listops_lru.EXPERIMENT


@pytest.mark.slow
def test_quick_budget_end_to_end(tmp_path):
    text, _ = run_quick("listops", tmp_path, scheduler="inline")
    for g in listops_lru.ALGORITHMS:
        assert f"| {g} |" in text
