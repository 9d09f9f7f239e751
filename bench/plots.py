"""The suite's figures: roofline bars (each kernel's share of the machine's GEMM rate and copy bandwidth, per backend)
and scaling curves (time and peak memory vs T, time vs H, per algorithm). Written with refimpl.plotting.save_figure
(atomic, Agg backend); returns the paths written, or nothing when matplotlib is missing."""

from __future__ import annotations

from pathlib import Path


def _plt():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None


def roofline(rows, path: Path):
    plt = _plt()
    timed = [r for r in rows if "frac_gemm" in r]
    if plt is None or not timed:
        return None
    from refimpl.plotting import save_figure
    backends = sorted({r["backend"] for r in timed})
    kernels = sorted({r["kernel"] + ("" if not r["variant"] else "-" + ",".join(map(str, r["variant"].values())))
                      for r in timed})
    fig, axes = plt.subplots(1, 2, figsize=(14, max(4, 0.28 * len(kernels))), sharey=True)
    width = 0.8 / len(backends)
    for j, (key, label) in enumerate((("frac_gemm", "fraction of the machine's GEMM rate (FLOP/s)"),
                                      ("frac_copy", "fraction of the copy bandwidth (bytes/s)"))):
        ax = axes[j]
        for i, b in enumerate(backends):
            vals = {r["kernel"] + ("" if not r["variant"] else "-" + ",".join(map(str, r["variant"].values()))):
                    r[key] for r in timed if r["backend"] == b and r["dtype"] == timed[0]["dtype"]}
            ys = [k for k in range(len(kernels))]
            ax.barh([y + i * width for y in ys], [vals.get(k, 0.0) for k in kernels], height=width, label=b)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.axvline(1.0, color="k", lw=0.8)
    axes[0].set_yticks([k + 0.4 - width / 2 for k in range(len(kernels))])
    axes[0].set_yticklabels(kernels, fontsize=7)
    axes[1].legend()
    fig.suptitle("roofline: achieved / machine limit, per kernel and backend")
    return save_figure(fig, path)


def scaling(study: dict, path: Path):
    plt = _plt()
    if plt is None:
        return []
    from refimpl.plotting import save_figure
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for c in study["curves"]:
        label = f"{c['model']}: {c['algorithm']}"
        ls = "--" if c["model"] == "ep" else "-"
        axes[0].loglog(c["T"], c["time_vs_T"], ls, marker="o", ms=3, label=label)
        axes[1].loglog(c["T"], [p / 2**20 for p in c["peak_vs_T"]], ls, marker="o", ms=3, label=label)
        if "time_vs_H" in c:
            axes[2].loglog(c["H"], c["time_vs_H"], ls, marker="o", ms=3, label=label)
    axes[0].set(xlabel="T (steps; EP: relaxation steps)", ylabel="seconds per gradient", title="time vs T")
    axes[1].set(xlabel="T", ylabel="peak MiB (NumPy allocations)", title="memory vs T")
    axes[2].set(xlabel="H (gru units)", ylabel="seconds per gradient",
                title=f"time vs H (T = {study['grid']['T_for_H']})")
    axes[1].legend(fontsize=7)
    return [save_figure(fig, path)]
