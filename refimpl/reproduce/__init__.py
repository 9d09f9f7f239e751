"""Reproduce the seeds' experiments: one command per published table or figure.

    python -m refimpl.run reproduce NAME [--budget quick|full] [--backend B] [--scheduler S] [--workers W]
                                        [--out runs/reproduce] [--results docs/results] [--data-dir DIR]

An experiment (EXPERIMENTS, one module each) is a list of *studies*. A study is one two-stage sweep of
refimpl/training/sweep.py, the protocol of the papers:
    (1) scan    every learning rate of the study's grid (and any other grid field) on the validation split;
    (2) seeds   per group (by default the algorithm) the best point, rerun with several seeds.
A seed fixes the data, the initial weights and the batch order, and nothing else does: for one seed every algorithm
of a study starts from identical weights and sees identical batches (refimpl/training/loop.py).
Beside the sweeps an experiment may measure something that is not a training run (`Plan.measure`: e.g. the cost of
each algorithm against the width), kept in a JSON file of its own so that a rerun does not measure it again.

Budgets:
    quick   ≤ 10 minutes on 2 cores: small sizes, short training, 1–2 seeds; the page says what it can and cannot show
    full    the published protocol at the sizes that fit one machine; the page states the hours it takes
What runs where: the trials run on the fastest backend available (registry.fastest_backend) unless --backend is
given, through the sweep's executor (an embedded Dask cluster by default; --scheduler inline or tcp://HOST:PORT).

Outputs:
    OUT/NAME/BUDGET/STUDY/     each study's sweep directory (resumable: a rerun skips finished trials and continues
                               a killed one from its checkpoint; refimpl/training/sweep.py)
    OUT/NAME/BUDGET/measure.json   the measurements (when the experiment has any)
    RESULTS/NAME.md            the result page: per study a table of ours (mean ± std over the seeds) beside the
                               published value where one exists, the protocol, the machine, the wall time, the
                               claims checked, why the numbers differ, the seed's options mapped onto refimpl's
    RESULTS/NAME/*.png         its figures
The page and the figures are written atomically, and only after every study finished.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tasks import task_kind

from ..errors import UnknownNameError
from ..machine import describe, machine_line
from ..registry import fastest_backend, require_backend
from ..runs import atomic_write_bytes, atomic_write_json
from ..training.executor import check_address
from ..training.sweep import (SweepSummary, kind_of, mean_std_text, objective_heads, reproduce_command,
                              run_sweep, with_values)

BUDGETS = ("quick", "full")


@dataclass(frozen=True)
class Study:
    """One sweep: `base` (a TrainConfig or BpfreeConfig) over `grid`, `seeds` seeds at the chosen point per group."""
    name: str                           # its directory and its key in the results
    title: str                          # its heading on the page
    base: object
    grid: dict
    seeds: int = 1
    executions: int = 1
    group_by: tuple = ("algorithm",)
    objective: str | None = None        # None: validation error where there is an accuracy, else validation loss


@dataclass(frozen=True)
class Plan:
    """What one budget of an experiment runs."""
    studies: tuple
    scope: str                          # what this budget can show, and what it cannot
    measure: Callable | None = None     # measure(echo) -> JSON-able dict, beside the sweeps


@dataclass(frozen=True)
class Claim:
    text: str                           # the published claim, as the paper makes it
    holds: bool | None                  # None: not decidable from this run (the evidence says why)
    evidence: str


@dataclass(frozen=True)
class Settings:
    """What the command line chooses for every experiment."""
    budget: str = "quick"
    backend: str | None = None          # None: the fastest available
    data_dir: str | None = None         # MNIST IDX files, for the experiments that can use them

    @property
    def run_backend(self) -> str:
        """The backend the trials run on: the one given (checked: it must run here), else the fastest available."""
        if self.backend is None:
            return fastest_backend()
        require_backend(self.backend)
        return self.backend


@dataclass
class Results:
    """What the studies and the measurements gave, for an experiment's claims and figures."""
    plan: Plan
    summaries: dict                     # {study name: SweepSummary}
    measured: dict = field(default_factory=dict)

    def best(self, study: str, group: str) -> dict | None:
        """The chosen point's record of `group` in `study` (sweep.summarize's `best` entry), or None."""
        s = self.summaries.get(study)
        return None if s is None else s.best.get(group)

    def test(self, study: str, group: str):
        """(mean, std, seeds) of the test metric of `group` in `study`; None when the group has no finished seed."""
        b = self.best(study, group)
        if b is None or b.get("test_mean") is None:
            return None
        return b["test_mean"], b["test_std"], b["seeds"]


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    source: str                         # the publication(s) and the table or figure reproduced
    plan: Callable                      # plan(Settings) -> Plan
    published: dict                     # {(study, group): "value as published"}; missing: no published value
    published_note: str                 # where the published values come from, how certain they are
    claims: Callable                    # claims(Results) -> [Claim]
    differences: str                    # why ours and the published numbers differ, as far as measured
    options: tuple                      # ((the seed's option, refimpl's option), …)
    full_hours: str                     # what `--budget full` costs here, stated
    figures: Callable | None = None     # figures(Results, fig_dir: Path) -> [(file name, caption)]


#: The experiments, in the order of the issue that asked for them: {name: the module defining EXPERIMENT}.
MODULES = {"online-lru-copy": "online_lru_copy", "fptt-digits": "fptt_digits", "ep-table1": "ep_table1",
           "bpfree": "bpfree_table", "lstm-rtrl": "lstm_rtrl", "listops": "listops_lru"}


def get_experiment(name: str) -> Experiment:
    """The experiment called `name` (its module is imported on first use)."""
    if name not in MODULES:
        raise UnknownNameError("experiment", name, MODULES, "`python -m refimpl.run reproduce --list` lists them")
    return importlib.import_module(f"{__name__}.{MODULES[name]}").EXPERIMENT


def check_budget(budget: str) -> str:
    if budget not in BUDGETS:
        raise UnknownNameError("budget", budget, BUDGETS)
    return budget


def reproduce(name: str, settings: Settings = Settings(), *, out_dir="runs/reproduce", results_dir="docs/results",
              scheduler: str | None = None, workers: int | None = None, echo=None) -> Path:
    """Run (or resume) experiment `name` at `settings.budget`; write its page and figures; return the page's path."""
    echo = echo or (lambda s: None)
    experiment = get_experiment(name)
    check_budget(settings.budget)
    settings.run_backend                                        # an unknown or absent backend: refused first,
    check_address(scheduler)                                    # and so is a scheduler that is not one
    plan = experiment.plan(settings)
    root = Path(out_dir) / name / settings.budget
    t0 = time.perf_counter()
    summaries, ran = {}, 0
    for study in plan.studies:
        header = [f"== {name} / {study.name}: {study.title}"]

        def study_echo(line, header=header):                   # the heading with the sweep's first line, so that
            if header:                                          # a refusal (an unreachable --scheduler) stays one line
                echo(header.pop())
            echo(line)
        s = run_sweep(study.base, study.grid, root / study.name, scheduler=scheduler, workers=workers,
                      seeds=study.seeds, executions=study.executions, group_by=study.group_by,
                      objective=study.objective, echo=study_echo)
        summaries[study.name] = s
        ran += len(s.ran)
    measured = {}
    if plan.measure is not None:
        path = root / "measure.json"
        if path.exists():
            measured = json.loads(path.read_text())
            echo(f"== {name}: measurements read from {path}")
        else:
            echo(f"== {name}: measurements")
            root.mkdir(parents=True, exist_ok=True)
            measured = plan.measure(echo)
            atomic_write_json(path, measured)
    wall = time.perf_counter() - t0
    history_path = root / "history.json"            # the invocations that trained something: their wall time
    history = json.loads(history_path.read_text()) if history_path.exists() else []
    if ran:
        history.append({"wall_s": wall, "trained": ran, "date": datetime.date.today().isoformat(),
                        "where": scheduler or "an embedded Dask cluster",
                        "load_average": _load_average()})
        atomic_write_json(history_path, history)
    results = Results(plan, summaries, measured)
    page = Path(results_dir) / f"{name}.md"
    fig_dir = Path(results_dir) / name
    figures = _figures(experiment, results, fig_dir)
    text = render(experiment, settings, results, figures, wall_s=wall, trials_run=ran, history=history)
    atomic_write_bytes(page, text.encode())
    echo(f"wrote {page}" + (f" and {len(figures)} figure(s) in {fig_dir}" if figures else ""))
    return page


def _figures(experiment: Experiment, results: Results, fig_dir: Path) -> list:
    """The experiment's own figures, then each study's sweep figure (objective per lr, chosen runs' curves)."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    figures = list(experiment.figures(results, fig_dir)) if experiment.figures else []
    for study in results.plan.studies:
        src = Path(results.summaries[study.name].out_dir) / "summary.png"
        if src.exists():
            target = fig_dir / f"sweep-{study.name}.png"
            atomic_write_bytes(target, src.read_bytes())
            figures.append((target.name, f"{study.title}: the validation metric per learning rate (left) and the "
                                         f"chosen runs' validation curves, mean and min–max over the seeds (right)"))
    return figures


# ----------------------------------------------------------------------------------------------------------------
# The page

def test_text(t, unit: str = " %") -> str:
    """A Results.test triple (mean, std, seeds) as text: 'm ± s %', or 'm % (1 seed)'."""
    return mean_std_text(t[0], t[1], 2, t[2], unit)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"


def study_table(experiment: Experiment, study: Study, summary: SweepSummary) -> list[str]:
    """Markdown rows: per group the chosen values, validation and test mean ± std over the seeds, the published."""
    shown = [f for f in study.grid if f not in study.group_by and len(study.grid[f]) > 1]
    best = summary.best
    _, digits, val_head, test_head = objective_heads(summary)
    group_head = " / ".join(g.split(".")[-1] for g in study.group_by) or "group"
    head = [group_head] + [f.split(".")[-1] for f in shown] + [val_head, f"**{test_head}** (ours)", "seeds",
                                                               "published", "trials (diverged)"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups = list(dict.fromkeys(r["group"] for r in summary.trials))
    for g in groups:
        n = sum(1 for r in summary.trials if r["group"] == g)
        bad = sum(1 for r in summary.trials if r["group"] == g and r["status"] == "diverged")
        refused = [r for r in summary.trials if r["group"] == g and r["status"] == "refused"]
        pub = experiment.published.get((study.name, g), "—")
        b = best.get(g)
        if b is None:
            why = "refused: " + refused[0]["message"] if refused else "every trial diverged"
            rows.append("| " + " | ".join([g] + ["—"] * len(shown) + [why, "—", "0", pub, f"{n} ({bad})"]) + " |")
            continue
        values = [format(b[f], ".3g") if isinstance(b[f], float) else str(b[f]) for f in shown]
        val = mean_std_text(b["val_mean"], b["val_std"], digits, b["seeds"])
        test = mean_std_text(b["test_mean"], b["test_std"], digits, b["seeds"])
        rows.append("| " + " | ".join([g] + values + [val, f"**{test}**", str(b["seeds"]), pub, f"{n} ({bad})"])
                    + " |")
    return rows


def _values(vs) -> str:
    return "{" + ", ".join(format(v, "g") if isinstance(v, float) else str(v) for v in vs) + "}"


def _study_protocol(study: Study) -> str:
    """One sentence: the model, the training length, the grid, the selection."""
    base = study.base
    grid = "; ".join(f"{f.split('.')[-1]} ∈ {_values(vs)}" for f, vs in study.grid.items())
    if kind_of(base) == "bpfree":
        model = f"task `{base.task}` ({base.problem}), hidden layers {base.arch}, {base.activation}"
    elif task_kind(base.task) == "static":
        model = f"task `{base.task}`, EP network `{base.net}` {dict(base.net_options) or ''}"
    else:
        model = (f"task `{base.task}` {dict(base.task_options) or ''}, {base.layers} layer(s) of `{base.cell}`"
                 + (f" {dict(base.cell_options)}" if base.cell_options else "") + f" of width {base.hidden}"
                 + (f", d_model {base.d_model}" if base.d_model else "") + f", backend `{base.backend}`")
    length = f"{base.steps} steps" if getattr(base, "steps", None) else f"{base.epochs} epoch(s)"
    return (f"{model}; {length} of batch {base.batch_size}, {base.optimizer}, {base.dtype}. Grid: {grid}. "
            f"{study.executions} execution(s) per point; chosen per "
            f"{' / '.join(g.split('.')[-1] for g in study.group_by)} on {study.objective or 'the validation error'}; "
            f"the chosen point rerun with {study.seeds} seed(s).")


def _load_average() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _history_text(history) -> str:
    if not history:
        return "no wall time recorded (the trials were trained before the wall times were kept)."
    wall = sum(h["wall_s"] for h in history)
    loads = [h["load_average"] for h in history if h.get("load_average") is not None]
    where = sorted({h.get("where", "an embedded Dask cluster") for h in history})
    return (f"training them took {_duration(wall)} of wall time in {len(history)} run(s) of the command, on "
            f"{' and '.join(where)}"
            + (f" (load average at the end of each: {', '.join(f'{x:.1f}' for x in loads)})" if loads else "")
            + ".")


def render(experiment: Experiment, settings: Settings, results: Results, figures: list, *, wall_s: float,
           trials_run: int, history: list = ()) -> str:
    """The result page (markdown). `history`: the invocations that trained the trials ({"wall_s", "trained",
    "load_average"}), so that a page rendered again from finished runs still states what training them took."""
    plan = results.plan
    machine = describe(None, libraries=("numba",))
    load = _load_average()
    compute = sum((r.get("time_s") or 0.0) for s in results.summaries.values() for r in s.trials)
    n_trials = sum(len(s.trials) for s in results.summaries.values())
    command = f"python -m refimpl.run reproduce {experiment.name} --budget {settings.budget}"
    if settings.backend:
        command += f" --backend {settings.backend}"
    lines = [f"# {experiment.name}: {experiment.title}", "",
             f"Reproduces: {experiment.source}", "",
             f"Regenerated by `{command}` (this page and the figures in `{experiment.name}/`; the run directories "
             f"under `runs/reproduce/{experiment.name}/{settings.budget}/`).", "",
             f"- **Budget: {settings.budget}.** {plan.scope}",
             f"- **`--budget full`:** {experiment.full_hours}",
             f"- **Machine:** {machine_line(machine)}; Python {machine['python']}, NumPy "
             f"{machine['versions'].get('numpy')}, Numba {machine['versions'].get('numba', '—')}.",
             f"- **Time:** {n_trials} trials, {_duration(compute)} of training in all; "
             + _history_text(history)
             + f" This rendering took {_duration(wall_s)} and trained {trials_run} trial(s)"
             + (f" (load average at its end: {load:.1f} on {machine['cpus']} cores)." if load is not None else "."),
             f"- **Written:** {datetime.date.today().isoformat()}.", "",
             "## Protocol", "",
             "For each study: every point of the grid is trained on the training split and scored on the validation "
             "split; per group the best point (lowest validation error, or loss where there is no accuracy) is "
             "rerun with the seeds 0 … S−1 and the test metric is reported as mean ± std (ddof 1) over those seeds. "
             "The test split never chooses anything. A seed fixes the data, the initial weights and the batch "
             "order, so for one seed every algorithm starts from identical weights.", ""]
    for study in plan.studies:
        lines += [f"- *{study.title}*: {_study_protocol(study)}"]
    lines += ["", "## Results", ""]
    for study in plan.studies:
        summary = results.summaries[study.name]
        lines += [f"### {study.title}", ""] + study_table(experiment, study, summary) + [""]
        if summary.best:
            lines += ["<details><summary>The chosen run of each group, alone (seed 0)</summary>", "", "```sh"]
            lines += [reproduce_command(kind_of(study.base), with_values(study.base, {f: b[f] for f in study.grid}))
                      for b in summary.best.values()]
            lines += ["```", "", "</details>", ""]
    if results.measured.get("table"):
        lines += results.measured["table"] + [""]
    lines += ["Published values: " + experiment.published_note, "", "## The claims, checked", ""]
    for c in experiment.claims(results):
        verdict = {True: "**holds**", False: "**does not hold**", None: "**not decided**"}[c.holds]
        lines.append(f"- {c.text} — {verdict} here: {c.evidence}")
    lines += ["", "## Why ours and the published numbers differ", "", experiment.differences, "",
              "## The seed's options in refimpl", "", "| the seed's option | refimpl |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in experiment.options]
    if figures:
        lines += ["", "## Figures", ""]
        for file, caption in figures:
            lines += [f"![{caption}]({experiment.name}/{file})", "", f"*{caption}.*", ""]
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Helpers for the experiments' claims

def ordering(results: Results, study: str, groups, tie: float = 1.0) -> tuple:
    """(holds, evidence) for "groups[0] ≥ groups[1] ≥ …" in accuracy, i.e. test error non-decreasing along `groups`,
    where two neighbours within `tie` percentage points (or one std of either) count as equal ('≈')."""
    values = []
    for g in groups:
        t = results.test(study, g)
        if t is None:
            return None, f"{g} has no finished seed"
        values.append((g, *t))
    ok = all(b[1] + max(tie, a[2], b[2]) >= a[1] for a, b in zip(values, values[1:]))
    return ok, ", ".join(f"{g} {test_text((m, s, n))}" for g, m, s, n in values)


def close(results: Results, study: str, a: str, b: str, within: float) -> tuple:
    """(holds, evidence) for "a is within `within` percentage points of b" in test error."""
    ta, tb = results.test(study, a), results.test(study, b)
    if ta is None or tb is None:
        return None, f"{a if ta is None else b} has no finished seed"
    d = ta[0] - tb[0]
    return abs(d) <= within, f"{a} {test_text(ta)} vs {b} {test_text(tb)} (Δ {d:+.2f})"


def bar_figure(results: Results, studies, groups, path: Path, title: str, published: dict | None = None,
               ylabel: str = "test error (%)") -> Path:
    """Grouped bars: per study (a cluster) the test metric of each group, mean with ± std whiskers over the seeds;
    a published value, where given ({(study, group): number}), as a black tick on its bar."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..plotting import save_figure

    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(studies) * len(groups) / 2), 3.6))
    width = 0.8 / len(groups)
    for j, g in enumerate(groups):
        xs, ms, ss = [], [], []
        for i, (study, _) in enumerate(studies):
            x = i + (j - (len(groups) - 1) / 2) * width
            t = results.test(study, g)
            if t is not None:
                xs.append(x)
                ms.append(t[0])
                ss.append(t[1])
            v = (published or {}).get((study, g))
            if v is not None:
                ax.plot([x - width / 2, x + width / 2], [v, v], "k-", lw=2)
        ax.bar(xs, ms, width, yerr=ss, capsize=2, label=g)
    ax.set_xticks(np.arange(len(studies)), [label for _, label in studies])
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(len(groups), 6))
    return save_figure(fig, path)
