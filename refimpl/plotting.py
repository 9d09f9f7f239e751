"""Learning-curve plots of run directories (matplotlib, drawn off-screen with the Agg backend; the run files are read
through refimpl/runs.py)."""

from __future__ import annotations

from pathlib import Path

from .errors import UnsupportedError
from .runs import read_run_metrics


def plot_runs(run_dirs, out_path, labels=None, title: str | None = None) -> Path:
    """Draw training loss and validation loss/accuracy against steps for each run; write a PNG; return its path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = []
    for i, d in enumerate(run_dirs):
        d = Path(d)
        records = read_run_metrics(d / "metrics.jsonl")
        if not records:
            raise UnsupportedError(f"{d} has no metrics.jsonl with records; give run directories written by "
                                   f"`python -m refimpl.run train` or `compare`")
        runs.append((labels[i] if labels else d.name, records))
    has_acc = any(r.get("accuracy") is not None for _, rec in runs for r in rec if r["split"] == "val")
    nan = float("nan")
    fig, axes = plt.subplots(1, 3 if has_acc else 2, figsize=(13 if has_acc else 9, 3.6))
    for label, records in runs:
        train = [r for r in records if r["split"] == "train"]
        val = [r for r in records if r["split"] == "val"]
        line, = axes[0].plot([r["step"] for r in train], [r.get("loss", nan) for r in train], label=label,
                             alpha=0.8)
        axes[1].plot([r["step"] for r in val], [r.get("loss", nan) for r in val], "o-", color=line.get_color(),
                     label=label)
        if has_acc:
            axes[2].plot([r["step"] for r in val], [r.get("accuracy", nan) for r in val], "o-", color=line.get_color(),
                         label=label)
    for ax, name in zip(axes, ["training loss", "validation loss", "validation accuracy"]):
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[-1].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, out_path)


def save_figure(fig, out_path, dpi: int = 110, tight: bool = True) -> Path:
    """Write a matplotlib figure as PNG atomically (temp file + rename: a reader never sees a half-written file),
    after fig.tight_layout() unless `tight` is False (a caller that laid the figure out itself)."""
    import matplotlib.pyplot as plt
    out_path = Path(out_path)
    if tight:
        fig.tight_layout()
    tmp = out_path.with_name(f".{out_path.stem}.tmp.png")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(tmp, dpi=dpi)
        tmp.replace(out_path)
    except OSError as e:                   # a read-only or full file system: no temp file left, the PNG's path named
        tmp.unlink(missing_ok=True)
        if e.errno is None:
            raise
        raise OSError(e.errno, e.strerror, str(out_path)) from e
    finally:
        plt.close(fig)
    return out_path
