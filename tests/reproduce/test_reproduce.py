"""The reproduce runner (refimpl/reproduce/__init__.py): a tiny experiment run end to end on the inline executor —
the page's numbers against the trials' own result files, resume, the claims helpers against hand computations — and
the command line's one-line refusals. Each experiment's own plan and page: tests/reproduce/test_<module>.py."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from refimpl import reproduce
from refimpl.cli import cli
from refimpl.reproduce import Claim, Experiment, Plan, Results, Settings, Study
from refimpl.training.config import TrainConfig
from refimpl.training.sweep import SweepSummary

TINY = TrainConfig(task="copy", task_options={"seq_len": 2, "bit_width": 1, "waiting_time": 1, "n_train": 64,
                                              "n_val": 32, "n_test": 32},
                   cell="lru", hidden=4, epochs=1, batch_size=32, log_every=1)


def _tiny_experiment(seen: list) -> Experiment:
    def plan(settings):
        study = Study("small", "a small copy study", TINY, {"algorithm": ["bptt", "readout"], "lr": [1e-3, 1e-2]},
                      seeds=2)
        return Plan((study,), "tiny: a test", measure=lambda echo: {"table": ["| a | b |", "|---|---|", "| 1 | 2 |"]})

    def claims(results):
        seen.append(results)
        t = results.test("small", "bptt")
        return [Claim("bptt finishes", t is not None, "n/a" if t is None else f"{t[0]:.2f}")]

    return Experiment(name="tiny", title="a tiny experiment", source="nobody (a test)", plan=plan,
                      published={("small", "bptt"): "12.3 (paper)"}, published_note="made up for the test",
                      claims=claims, differences="none", options=(("`--seed-option`", "`--refimpl-option`"),),
                      full_hours="no time at all")


def test_a_tiny_experiment_end_to_end_then_resumed(tmp_path, monkeypatch):
    seen = []
    tiny = _tiny_experiment(seen)
    monkeypatch.setattr(reproduce, "get_experiment", lambda name: tiny)
    out, res = tmp_path / "runs", tmp_path / "results"
    page = reproduce.reproduce("tiny", Settings(backend="numpy"), out_dir=out, results_dir=res, scheduler="inline")
    assert page == res / "tiny.md"
    text = page.read_text()
    # the page's test column is the mean ± std (ddof 1) of the chosen lr's seeds, read here from their result files
    summary = json.loads((out / "tiny" / "quick" / "small" / "summary.json").read_text())
    for group in ("bptt", "readout"):
        best = summary["best"][group]
        errors = [100 * (1 - json.loads((out / "tiny" / "quick" / "small" / "trials" / n / "result.json")
                                        .read_text())["test_accuracy"]) for n in best["seed_trials"]]
        assert len(errors) == 2
        row = next(line for line in text.splitlines() if line.startswith(f"| {group} |"))
        assert f"**{np.mean(errors):.2f} ± {np.std(errors, ddof=1):.2f}**" in row
    assert "12.3 (paper)" in next(line for line in text.splitlines() if line.startswith("| bptt |"))
    assert "bptt finishes — **holds**" in text
    assert "| 1 | 2 |" in text                                    # the measurement's table
    assert "| `--seed-option` | `--refimpl-option` |" in text
    assert "vector extensions" in text and "Numba target" in text  # the machine line
    assert "trained 6 trial(s)" in text                            # 4 scan trials + 2 new seeds
    assert "in 1 run(s) of the command" in text
    assert (res / "tiny" / "sweep-small.png").stat().st_size > 0
    # run again: nothing is trained, the measurement is read back, the numbers are the same
    page = reproduce.reproduce("tiny", Settings(backend="numpy"), out_dir=out, results_dir=res, scheduler="inline")
    again = page.read_text()
    assert "trained 0 trial(s)" in again
    assert "in 1 run(s) of the command" in again                  # the first run's wall time is kept
    strip = [line for line in text.splitlines() if line.startswith("| bptt |") or line.startswith("| readout |")]
    assert strip == [line for line in again.splitlines() if line.startswith("| bptt |")
                     or line.startswith("| readout |")]
    assert len(seen) == 2


def _results(values: dict) -> Results:
    """Results whose study 's' has, per group, the test error mean ± std over 3 seeds given in `values`."""
    best = {g: {"test_mean": m, "test_std": s, "seeds": 3} for g, (m, s) in values.items()}
    return Results(Plan((), ""), {"s": SweepSummary("", [], best, [], [], [])})


def test_ordering_and_closeness_against_hand_checks():
    r = _results({"a": (2.0, 0.1), "b": (2.5, 0.1), "c": (10.0, 0.5), "d": (9.2, 0.2)})
    assert reproduce.ordering(r, "s", ("a", "b", "c"))[0] is True           # 2.0 ≤ 2.5 ≤ 10
    assert reproduce.ordering(r, "s", ("c", "a"))[0] is False               # 10 vs 2: far apart
    assert reproduce.ordering(r, "s", ("c", "d"))[0] is True                # 0.8 apart: within the 1-point tie
    assert reproduce.ordering(r, "s", ("c", "d"), tie=0.1)[0] is False      # … not within 0.5 (the larger std)
    assert reproduce.ordering(r, "s", ("a", "x"))[0] is None                # a group without results: undecided
    holds, evidence = reproduce.close(r, "s", "b", "a", within=0.5)
    assert holds is True and "Δ +0.50" in evidence
    assert reproduce.close(r, "s", "c", "a", within=0.5)[0] is False


def test_unknown_names_are_refused_in_one_line(tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["reproduce", "no-such", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "experiment" in r.output and "online-lru-copy" in r.output
    assert "Traceback" not in r.output
    r = runner.invoke(cli, ["reproduce", "online-lru-copy", "--backend", "nope", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "backend" in r.output and "numba" in r.output
    r = runner.invoke(cli, ["reproduce", "online-lru-copy", "--budget", "huge", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "quick" in r.output
    r = runner.invoke(cli, ["reproduce", "online-lru-copy", "--scheduler", "3", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "tcp://HOST:PORT" in r.output
    assert [line for line in r.output.splitlines() if line.strip()] == [r.output.strip()]   # one line, no heading
    assert not any(Path(tmp_path).iterdir())                      # nothing written for a refused command


def test_list_names_every_experiment():
    r = CliRunner().invoke(cli, ["reproduce", "--list"])
    assert r.exit_code == 0
    for name in reproduce.MODULES:
        assert name in r.output


@pytest.mark.parametrize("name", list(reproduce.MODULES))
@pytest.mark.parametrize("budget", reproduce.BUDGETS)
def test_every_plan_expands_into_runnable_trials(name, budget):
    """Every study of every budget: its grid is valid and its trials are not refused before they start (a refusal
    at the trainer's start is an expected, recorded outcome only where the experiment says so)."""
    from refimpl.training.sweep import check_grid, expand, kind_of
    experiment = reproduce.get_experiment(name)
    plan = experiment.plan(Settings(budget=budget, backend="numpy"))
    assert plan.studies and plan.scope
    for study in plan.studies:
        check_grid(kind_of(study.base), study.grid)
        trials, refused, _ = expand(study.base, study.grid, [0])
        assert trials, f"{name}/{study.name}: no runnable trial ({refused})"
        assert study.seeds >= 1
