"""Comparing algorithms: the same model trained from the same initial weights by each of several algorithms.

    compare(config, algorithms, out_dir) -> Comparison     (format_comparison gives the table)
    gradient_agreement(config, algorithms) -> {algorithm: {"cosine", "rel_error"}} vs BPTT at the initial weights

The comparison directory:
    <algorithm>/      one run directory per algorithm (refimpl/training/loop.py), rerun from scratch each time
    compare.json      {"config": the TrainConfig, "runs": [{"algorithm", the RunResult fields, "grad_vs_bptt"}]}
    compare.png       the learning curves of all the runs (refimpl.plotting.plot_runs)

For a sequence task each run keeps only the algorithm options (-a) that its algorithm takes (fptt's passes mean
nothing to bptt), and --chunk only where its algorithm streams (bptt runs whole sequences); a static task's options
(T, K, β) are shared by ep and bptt. A stream task (tasks/stream.py) cannot be compared (no bptt on a stream).
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks import task_kind

from ..algorithms import get_algorithm
from ..errors import UnsupportedError
from ..numerics import cosine, rel_error
from ..plotting import plot_runs
from ..runs import atomic_write_json, batch_at
from .config import TrainConfig, check_config
from .loop import train
from .problems import prepare


@dataclass
class Comparison:
    out_dir: Path
    rows: list          # per algorithm: {"algorithm", the RunResult fields, "grad_vs_bptt": {"cosine", "rel_error"}}
    plot: Path          # compare.png


def options_for(config: TrainConfig, algorithm: str) -> dict:
    """The algorithm options of `config` that `algorithm` takes (all of them on a static task)."""
    if task_kind(config.task) == "static":
        return config.algorithm_options
    return {k: v for k, v in config.algorithm_options.items() if k in get_algorithm(algorithm).options}


def config_for(config: TrainConfig, algorithm: str) -> TrainConfig:
    """`config` for one run of the comparison: the algorithm options it takes, and --chunk only for an algorithm that
    takes a chunk (the others run their sequences whole, as they always do)."""
    if task_kind(config.task) != "sequence":
        return dataclasses.replace(config, algorithm=algorithm, algorithm_options=options_for(config, algorithm))
    chunk = config.chunk if "chunk" in get_algorithm(algorithm).options else None
    return dataclasses.replace(config, algorithm=algorithm, algorithm_options=options_for(config, algorithm),
                               chunk=chunk)


def check_comparison(config: TrainConfig, algorithms) -> None:
    """Refuse, before any work, a comparison that cannot run: unknown names, a stream task, a --chunk that no
    algorithm of the list takes."""
    kind = task_kind(config.task)
    if kind == "stream":
        raise UnsupportedError(f"task {config.task!r} is a stream: compare measures each gradient against bptt's on "
                               f"whole sequences; train each algorithm on the stream with `train --update-every K`")
    if kind == "sequence":
        for a in algorithms:
            get_algorithm(a, "model")                 # refuse unknown / unimplemented names before any work
        if config.chunk is not None and not any("chunk" in get_algorithm(a).options for a in algorithms):
            raise UnsupportedError(f"--chunk applies to the streaming algorithms (rtrl, online, snap1, truncated, "
                                   f"spatial, cec, fptt, fptt1); none of {', '.join(algorithms)} takes it: drop --chunk")


def gradient_agreement(config: TrainConfig, algorithms) -> dict:
    """How close each algorithm's gradient is to BPTT's at the run's initial weights, on its first training batch:
    {algorithm: {"cosine": …, "rel_error": …}} over all parameters flattened into one vector (a parameter an
    algorithm does not train counts as a zero gradient)."""
    check_config(config)
    problem = prepare(config).problem
    params = problem.params
    _, idx = batch_at(config.seed, 0, 1, problem.task.train.n, config.batch_size)     # the run's first batch

    def flat(algorithm):
        p = prepare(dataclasses.replace(config_for(config, algorithm), update_every=None, micro_batch=None)).problem
        _, g, _, _ = p.grads(params, idx, None)
        return np.concatenate([np.ravel(g.get(k, np.zeros_like(v))) for k, v in params.items()])
    reference = flat("bptt")
    out = {}
    for a in algorithms:
        g = flat(a)
        out[a] = {"cosine": cosine(g, reference), "rel_error": rel_error(g, reference)}
    return out


def compare(config: TrainConfig, algorithms, out_dir, *, progress: bool = False) -> Comparison:
    """Train `config` once per algorithm from the same initial weights into out_dir/<algorithm>; write compare.json
    and compare.png (see module doc)."""
    check_comparison(config, algorithms)
    agreement = gradient_agreement(config, algorithms)
    out = Path(out_dir)
    rows = []
    for a in algorithms:
        sub = out / a
        if sub.exists():
            shutil.rmtree(sub)                      # compare reruns its runs from scratch
        r = train(config_for(config, a), sub,
                  progress=progress, track_memory=True)
        rows.append({"algorithm": a, **dataclasses.asdict(r), "grad_vs_bptt": agreement[a]})
    atomic_write_json(out / "compare.json", {"config": dataclasses.asdict(config), "runs": rows})
    png = plot_runs([out / a for a in algorithms], out / "compare.png", labels=list(algorithms),
                    title=f"{config.task}: {config.layers}-layer {config.cell}, hidden {config.hidden}")
    return Comparison(out, rows, png)


def format_comparison(c: Comparison) -> str:
    """The table: per algorithm its gradient's cosine with BPTT's, final losses and accuracies, time, peak memory."""
    head = (f"{'algorithm':<10} {'cos vs bptt':>11} {'train loss':>10} {'val loss':>9} {'val acc':>8} "
            f"{'test loss':>9} {'test acc':>8} {'time s':>7} {'peak MB':>8}")
    lines = [head, "-" * len(head)]
    for r in c.rows:
        acc = lambda v: f"{v:>8.4f}" if v is not None else f"{'-':>8}"      # noqa: E731
        lines.append(f"{r['algorithm']:<10} {r['grad_vs_bptt']['cosine']:>11.6f} {r['train_loss']:>10.4f} "
                     f"{r['val_loss']:>9.4f} {acc(r['val_accuracy'])} {r['test_loss']:>9.4f} "
                     f"{acc(r['test_accuracy'])} {r['time_s']:>7.1f} {r['peak_memory_bytes'] / 2**20:>8.1f}")
    lines.append("cos vs bptt: cosine between the algorithm's gradient and BPTT's at the initial weights (first "
                 "batch);")
    lines.append(f"runs in {c.out_dir}/<algorithm>; learning curves: {c.plot}")
    return "\n".join(lines)
