"""The FPTT stability study: how good are FPTT's gradients as the network forgets and the sequence grows?

The FPTT paper's gradient-quality experiment (Zucchet, Pourcel & Ernoult 2026; docs/derivations/fptt.md §8):
one lru layer with input = state = output width 32, Gaussian inputs, MSE to zero targets on every step, eigenvalue
magnitudes |λ| ≥ r_min, sequence lengths T. For each (r_min, T, seed, precision) it computes FPTT's gradient (with the
residual check off: the point is to measure how bad the gradient gets) and BPTT's in float64, and records the cosine
similarity of the two for the parameters (all of them, flattened) and for the inputs (∂L/∂x). A gradient that is not
finite at all counts as cosine 0 ("lost").

Precisions "states/carriers": f32/f32 (everything float32), f32/f64 (the paper's mixed setting: float64 carriers e, P)
and f64/f64.

    measure(r_min, T, seed, precision) -> one record;  run_study(…) -> records;  summarize(records) -> summary
    write_study(out_dir, …) -> (summary, stability.json, stability.png)   the `fptt-stability` command (format_table
                                                                           prints the summary)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..algorithms.chunked import fptt_model_grads
from ..nn.model import bptt, make_model
from ..numerics import cosine
from ..plotting import save_figure
from ..runs import atomic_write_json

R_MINS = (0.36, 0.68, 0.84, 0.92, 0.96, 0.98, 0.99)
LENGTHS_FULL = (30, 100, 300, 1000)
LENGTHS_QUICK = (30, 100, 300)
PRECISIONS = {"f32/f32": ("float32", "state"), "f32/f64": ("float32", "float64"), "f64/f64": ("float64", "float64")}


def _flat(grads, keys):
    return np.concatenate([np.ravel(grads[k]).astype(np.float64) for k in keys])


def measure(r_min: float, T: int, seed: int, precision: str, width: int = 32, batch: int = 1) -> dict:
    """One point of the study: {"r_min", "T", "seed", "precision", "cos_params", "cos_inputs"}."""
    state_dtype, carrier = PRECISIONS[precision]
    model, params = make_model("lru", width, width, width, seed=seed, r_min=r_min, dtype=state_dtype)
    model64, _ = make_model("lru", width, width, width, seed=seed, r_min=r_min)
    params64 = {k: v.astype(np.float64) for k, v in params.items()}
    rng = np.random.default_rng(10_000 + seed)
    x64 = rng.standard_normal((T, batch, width)).astype(state_dtype).astype(np.float64)
    y64 = np.zeros((T, batch, width))
    _, g_bptt = bptt(model64, params64, x64, y64, loss="mse")
    with np.errstate(all="ignore"):
        _, g = fptt_model_grads(model, params, x64.astype(state_dtype), y64.astype(state_dtype), "mse",
                                carrier=carrier, check=False)
    keys = list(params)

    def cos(a, b):
        if not np.all(np.isfinite(a)):
            return 0.0
        with np.errstate(all="ignore"):                 # a huge (but finite) lost gradient may overflow its norm
            c = float(cosine(a, b))
        return c if np.isfinite(c) else 0.0
    return {"r_min": r_min, "T": T, "seed": seed, "precision": precision,
            "cos_params": cos(_flat(g, keys), _flat(g_bptt, keys)),
            "cos_inputs": cos(np.ravel(g["x"]).astype(np.float64), np.ravel(g_bptt["x"]))}


def run_study(r_mins=R_MINS, lengths=LENGTHS_QUICK, seeds=(0, 1), precisions=tuple(PRECISIONS), width: int = 32,
              progress=None) -> list[dict]:
    records = []
    for precision in precisions:
        for T in lengths:
            for r_min in r_mins:
                for seed in seeds:
                    records.append(measure(r_min, T, seed, precision, width))
                    if progress:
                        progress(records[-1])
    return records


def write_study(out_dir, *, full: bool = False, seeds: int | None = None, width: int = 32,
                precisions=()) -> tuple[list[dict], Path, Path]:
    """Run the study (the quick grid with 2 seeds, or with full=True the paper's: T up to 1000 and 3 seeds) and write
    out_dir/stability.json ({"config", "records", "summary"}) and out_dir/stability.png.
    Returns (summary, the JSON's path, the PNG's path)."""
    n_seeds = seeds or (3 if full else 2)
    config = {"lengths": list(LENGTHS_FULL if full else LENGTHS_QUICK), "seeds": list(range(n_seeds)),
              "precisions": list(precisions or PRECISIONS), "width": width}
    records = run_study(lengths=config["lengths"], seeds=config["seeds"], precisions=config["precisions"],
                        width=width)
    summary = summarize(records)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "stability.json", {"config": config, "records": records, "summary": summary})
    return summary, out / "stability.json", plot_study(summary, out / "stability.png")


def summarize(records: list[dict]) -> list[dict]:
    """Mean cosine over seeds per (precision, T, r_min)."""
    groups = {}
    for r in records:
        groups.setdefault((r["precision"], r["T"], r["r_min"]), []).append(r)
    return [{"precision": p, "T": T, "r_min": rm,
             "cos_params": float(np.mean([r["cos_params"] for r in rs])),
             "cos_inputs": float(np.mean([r["cos_inputs"] for r in rs])), "seeds": len(rs)}
            for (p, T, rm), rs in sorted(groups.items())]


def format_table(summary: list[dict]) -> str:
    lengths = sorted({s["T"] for s in summary})
    lines = []
    for precision in dict.fromkeys(s["precision"] for s in summary):
        lines.append(f"precision {precision} (states/carriers): cosine(FPTT, BPTT) of the parameter gradient "
                     f"[and of the input gradient], mean over seeds")
        lines.append(f"{'r_min':>6} " + " ".join(f"{'T=' + str(T):>17}" for T in lengths))
        for r_min in sorted({s["r_min"] for s in summary}):
            cells = []
            for T in lengths:
                s = next((s for s in summary if s["precision"] == precision and s["T"] == T and s["r_min"] == r_min),
                         None)
                cells.append(f"{s['cos_params']:>8.4f} [{s['cos_inputs']:>6.3f}]" if s else f"{'-':>17}")
            lines.append(f"{r_min:>6.2f} " + " ".join(cells))
        lines.append("")
    return "\n".join(lines)


def plot_study(summary: list[dict], out_path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    precisions = list(dict.fromkeys(s["precision"] for s in summary))
    fig, axes = plt.subplots(2, len(precisions), figsize=(4.2 * len(precisions), 6.4), squeeze=False)
    for j, precision in enumerate(precisions):
        for i, key in enumerate(("cos_params", "cos_inputs")):
            ax = axes[i][j]
            for T in sorted({s["T"] for s in summary}):
                pts = sorted((s["r_min"], s[key]) for s in summary if s["precision"] == precision and s["T"] == T)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"T={T}")
            ax.set_ylim(-0.05, 1.05)
            ax.set_xlabel("r_min (smallest |λ| at initialisation)")
            ax.set_title(f"{precision}: {'parameters' if key == 'cos_params' else 'inputs'}", fontsize=9)
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.set_ylabel("cosine(FPTT, BPTT)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("FPTT gradient quality: one lru layer, width 32, MSE to zero targets", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_path, dpi=110)
