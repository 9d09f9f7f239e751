"""online-lru-copy (refimpl/reproduce/online_lru_copy.py): the quick budget end to end (slow), and the plan's
contents against the paper's protocol."""

import json

import pytest

from refimpl.reproduce import Settings, online_lru_copy
from tests.reproduce import run_quick


def test_the_full_plan_is_the_papers_protocol():
    plan = online_lru_copy.plan(Settings(budget="full", backend="numpy"))
    by_name = {s.name: s for s in plan.studies}
    assert set(by_name) == {"lru", "linear", "gru"}
    for s in plan.studies:
        b = s.base
        assert (b.layers, b.epochs, b.batch_size, b.dropout, b.weight_decay) == (4, 25, 50, 0.1, 0.0)
        assert b.task_options["seq_len"] == 20 and b.task_options["bit_width"] == 7
        assert b.task_options["waiting_time"] == 7 and b.task_options["n_train"] == 20000
        assert s.grid["lr"] == [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2] and s.seeds == 3
        assert (b.norm, b.ffn, b.residual) == ("layer", "glu", True)
    assert by_name["lru"].base.rec_lr_factor == 0.5 and by_name["linear"].base.rec_lr_factor == 1.0
    assert (by_name["lru"].base.d_model, by_name["lru"].base.hidden) == (128, 64)
    assert by_name["linear"].base.cell_options == {"nonlinearity": "linear"}
    assert "online" in by_name["lru"].grid["algorithm"] and "snap1" in by_name["gru"].grid["algorithm"]


@pytest.mark.slow
def test_quick_budget_end_to_end(tmp_path):
    _, root = run_quick("online-lru-copy", tmp_path)
    summary = json.loads((root / "lru" / "summary.json").read_text())
    best = summary["best"]
    # the LRU learns the copy with the exact gradient: far below the readout-only floor and below chance (50 %)
    assert best["bptt"]["test_mean"] < best["readout"]["test_mean"] - 10
    assert best["bptt"]["test_mean"] < 25
    assert (tmp_path / "results" / "online-lru-copy" / "test-error.png").stat().st_size > 0
