"""Shared by the reproduce tests: `run_quick` runs an experiment's quick budget end to end (the slow tests)."""

from pathlib import Path

from refimpl.reproduce import Settings, get_experiment, reproduce


def run_quick(name: str, tmp_path: Path, scheduler: str | None = None) -> tuple[str, Path]:
    """Run `reproduce NAME --budget quick` into tmp_path; check what every page must hold — a results section per
    study, the claims, and every figure it names on disk — and return (the page's text, the run directory root)."""
    runs, results = tmp_path / "runs", tmp_path / "results"
    page = reproduce(name, Settings(budget="quick"), out_dir=runs, results_dir=results, scheduler=scheduler)
    text = page.read_text()
    plan = get_experiment(name).plan(Settings(budget="quick"))
    for study in plan.studies:
        assert f"### {study.title}" in text
    assert "## The claims, checked" in text
    for link in [line[line.index("](") + 2:-1] for line in text.splitlines() if line.startswith("![")]:
        assert (results / link).stat().st_size > 0, link
    return text, runs / name / "quick"
