"""The FPTT stability study: where do FPTT's gradients stay exact, per cell, precision and warm-up?

The FPTT paper's gradient-quality experiment (Zucchet, Pourcel & Ernoult 2026; docs/derivations/fptt.md §8),
extended to the dense cells and to both warm-ups (refimpl/algorithms/fptt.py: "direct", the default, and the paper's
"shooting"). One layer with input = state = output width 32, Gaussian inputs N(0, 1), MSE to zero targets on every
step, batch 1. Each cell has ONE conditioning knob (KNOBS), swept on 7 values, against the sequence length T. At each
point FPTT's gradient is computed with the residual check (5) off (the point is to measure how bad the gradient gets;
the whole sequence as one chunk — the same reference sweeps as the step loop, fewer calls), its diagnostics (the
residual ρ of (5), σ_min of the Jacobian product) are kept, and it is compared with BPTT in float64 from the same
(possibly float32-rounded) parameters and inputs.

The knobs and what they do to the state Jacobian J_t = ∂h_t/∂h_{t−1}. FPTT amplifies rounding by up to 1/σ_min of
the product J_0ᴴ⋯J_{T−1}ᴴ (the shooting warm-up by about its condition number on top), so what matters is how fast
that σ_min decays with T (probed at width 32, float64, seed 0):

    lru   r_min: the smallest |λ| at initialisation (|λ|² uniform on [r_min², 1)); J_t = diag(λ) exactly, the
          product's σ_min = r_min^T — the paper's knob. Large r_min (little forgetting): exact; the edge moves from
          r_min 0.68 at T = 30 to 0.96 at T = 300 (float64).
    rnn   ρ: W_hh = ρ·(a random orthogonal matrix), zero biases, input weights × 0.3; J_t = diag(1 − h_t²)·ρQ. Below 1
          the product shrinks like ρ^T; above 1 the state saturates (1 − h_t² → 0) and it shrinks too, so ρ ≈ 0.9–1
          is best; even there the tanh's slopes (< 1 under the N(0, 1) drive) shrink σ_min by ~0.8 per step:
          exact up to T = 100, lost at 300 for every ρ.
    gru   b_hz: the update-gate bias (z = σ(b_hz + …), h' = (1 − z)·n + z·h); J_t = diag(z) + (terms × (1 − z)). As
          b_hz grows z → 1 and J_t → I (a memory that keeps): σ_min of the product → 1 (b_hz 5, T 300: 3e-2); at
          b_hz = 0 (z ≈ 1/2) it loses a factor 0.3–0.5 per step (T 30: 6e-17).
    lstm  b_hf: the forget-gate bias (f = σ(b_hf + …)), on fptt.well_conditioned's lstm (the output gate reads h,
          W_ho = 2·orthogonal; g ≈ 0.8). J_t's c block is diag(f): b_hf sets how fast the c directions decay. But
          h_t = o_t ⊙ tanh(c_t) depends on h_{t−1} beyond c_t only through the output gate, so J_t's smallest singular
          value is about min_i 2·σ'(a_o,i)·tanh(c_t,i) ≲ 0.3 whatever b_hf: the product's σ_min is ~1e-9 at T = 10
          and 1e-26 … 1e-17 at T = 30 (b_hf 0 … 5).
          The lstm is exact only at T ≈ 10 — hence the T = 10 column in every grid (T ∈ {10, 30, 100, 300}, full:
          + 1000), the one where its exact region shows.

Precisions "states/carriers": f32/f32 (everything float32), f32/f64 (the paper's mixed setting: float64 carriers) and
f64/f64. With float32 states even BPTT is only good to 2e-7 … 5e-5 (rel_floor), so the EXACT = 1e-6 region is
mostly out of reach there whatever the warm-up.

Per record (measure): cell, knob (its value), T, seed, precision, warmup, cos_params, cos_inputs (cosine of FPTT's
and BPTT's flattened parameter / input gradients), rel_params, rel_inputs (refimpl.numerics.rel_error of the same; a
gradient that is not finite is "lost": cosine 0, rel None), residual ρ and gain σ_min (None when not finite),
`accepted` — what the check (5) would say (ρ finite and ≤ refimpl.algorithms.fptt.RESIDUAL_TOL) — and rel_floor
(BPTT in the states' precision against float64 BPTT; 0 for float64).

    measure(cell, knob, T, seed, precision, warmup) -> one record;   run_study(…) -> records
    summarize(records) -> per (cell, warmup, precision, T, knob): mean cosines, max rel errors over seeds (rel = the
        larger of parameters' and inputs'), max residual;   regions(summary) -> per (cell, precision) the (knob, T)
        points whose max rel error ≤ EXACT, for each warm-up side by side
    write_study(out_dir, …) -> (summary, regions, stability.json, stability.png)   the `fptt-stability` command
        (format_table: knob × T tables with both warm-ups' max rel error; plot_study: the heat maps)

The quick grid (T ≤ 300, 2 seeds) takes about 40 s on one core; full=True (T up to 1000, 3 seeds) a few minutes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..algorithms.chunked import fptt_model_grads
from ..algorithms.fptt import RESIDUAL_TOL, WARMUPS, well_conditioned
from ..nn.model import bptt, make_model
from ..numerics import cosine, rel_error
from ..plotting import save_figure
from ..runs import atomic_write_json

LENGTHS_FULL = (10, 30, 100, 300, 1000)
LENGTHS_QUICK = (10, 30, 100, 300)
PRECISIONS = {"f32/f32": ("float32", "state"), "f32/f64": ("float32", "float64"), "f64/f64": ("float64", "float64")}
CELLS = ("lru", "rnn", "gru", "lstm")
#: The width (input = state = output) per cell: the paper's 32 for every cell (the lstm's state is then 64 wide).
WIDTHS = {"lru": 32, "rnn": 32, "gru": 32, "lstm": 32}
#: A point is "exact" when FPTT's max relative error over the seeds (the larger of parameters' and inputs') is ≤ this.
EXACT = 1e-6


def _orthogonal(H: int, seed: int) -> np.ndarray:
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((H, H)))[0]


def _set_r_min(params: dict, prefix: str, r_min: float, seed: int) -> dict:
    """lru: the layer's parameters as make_model(…, r_min=r_min, seed=seed) draws them (|λ| on [r_min, 1))."""
    N, I = params[f"{prefix}B_re"].shape
    _, drawn = make_model("lru", I, N, N, seed=seed, r_min=r_min)
    return {**params, **{k: v.astype(params[k].dtype) for k, v in drawn.items() if k.startswith(prefix)}}


def _set_rho(params: dict, prefix: str, rho: float, seed: int) -> dict:
    """rnn: W_hh = ρ·orthogonal, zero biases, input weights × 0.3 (fptt.well_conditioned's rnn, scaled by ρ)."""
    p = well_conditioned("rnn", params, prefix, seed)
    p[f"{prefix}weight_hh"] = (rho * p[f"{prefix}weight_hh"]).astype(params[f"{prefix}weight_hh"].dtype)
    return p


def _set_gate_bias(block: int, base: str | None = None):
    """A gate's bias b_hh[block·H:(block+1)·H]: gru b_hz (block 1 of [r, z, n]) from the default parameters; lstm b_hf
    (block 1 of [i, f, g, o]) from fptt.well_conditioned's parameters of cell `base`."""
    def knob(params: dict, prefix: str, value: float, seed: int) -> dict:
        p = dict(params) if base is None else well_conditioned(base, params, prefix, seed)
        H = p[f"{prefix}weight_hh"].shape[1]
        b = p[f"{prefix}bias_hh"].copy()
        b[block * H:(block + 1) * H] = value
        p[f"{prefix}bias_hh"] = b
        return p
    return knob


#: cell → (the knob's label, its 7 values, function(params, prefix, value, seed) -> params). The grids straddle the
#: edge of the exact region within T ∈ {10, 30, 100, 300(, 1000)} (module docstring: what each knob does to J_t).
KNOBS = {
    "lru": ("r_min", (0.36, 0.68, 0.84, 0.92, 0.96, 0.98, 0.99), _set_r_min),
    "rnn": ("rho", (0.6, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1), _set_rho),
    "gru": ("b_hz", (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0), _set_gate_bias(1)),
    "lstm": ("b_hf", (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0), _set_gate_bias(1, base="lstm")),
}


def _flat(grads, keys):
    return np.concatenate([np.ravel(grads[k]).astype(np.float64) for k in keys])


def _finite_or_none(v):
    return float(v) if v is not None and np.isfinite(v) else None


def _compare(a: np.ndarray, b: np.ndarray) -> tuple[float, float | None]:
    """(cosine, rel_error) of FPTT's a against BPTT's b; a non-finite a is lost: (0, None)."""
    if not np.all(np.isfinite(a)):
        return 0.0, None
    with np.errstate(all="ignore"):                     # a huge (but finite) lost gradient may overflow its norm
        c, r = float(cosine(a, b)), float(rel_error(a, b))
    return (c if np.isfinite(c) else 0.0), _finite_or_none(r)


def setup(cell: str, knob: float, T: int, seed: int, state_dtype, width: int | None = None):
    """(model, params in state_dtype, x (T, 1, w) in state_dtype, y zeros) of one point: make_model(seed) in float64,
    the knob set (KNOBS), then rounded to state_dtype; x ~ N(0, 1) from seed 10_000 + seed."""
    w = width or WIDTHS[cell]
    model, params = make_model(cell, w, w, w, seed=seed, dtype=state_dtype)
    _, p64 = make_model(cell, w, w, w, seed=seed)
    p64 = KNOBS[cell][2](p64, "layers.0.cell.", knob, seed)
    params = {k: v.astype(params[k].dtype) for k, v in p64.items()}
    rng = np.random.default_rng(10_000 + seed)
    x = rng.standard_normal((T, 1, w)).astype(state_dtype)
    return model, params, x, np.zeros_like(x)


def reference(cell: str, knob: float, T: int, seed: int, state_dtype, width: int | None = None) -> dict:
    """BPTT's gradients in float64 from the point's (rounded) parameters and inputs: {name: grad, "x": ∂L/∂x}."""
    _, params, x, y = setup(cell, knob, T, seed, state_dtype, width)
    model64, _ = make_model(cell, x.shape[-1], x.shape[-1], x.shape[-1], seed=seed)
    _, g = bptt(model64, {k: v.astype(np.float64) for k, v in params.items()}, x.astype(np.float64),
                y.astype(np.float64), loss="mse")
    return g


def rounding_floor(cell: str, knob: float, T: int, seed: int, state_dtype, width: int | None = None,
                   ref: dict | None = None) -> float | None:
    """The relative error (the larger of parameters' and inputs') of BPTT itself run in state_dtype against the float64
    reference: what the states' precision costs any algorithm (0 for float64; None when not finite)."""
    if np.dtype(state_dtype) == np.float64:
        return 0.0
    model, params, x, y = setup(cell, knob, T, seed, state_dtype, width)
    ref = reference(cell, knob, T, seed, state_dtype, width) if ref is None else ref
    with np.errstate(all="ignore"):
        _, g = bptt(model, params, x, y, loss="mse")
    keys = list(params)
    rel_p, rel_x = _compare(_flat(g, keys), _flat(ref, keys))[1], _compare(np.ravel(g["x"]), np.ravel(ref["x"]))[1]
    return None if rel_p is None or rel_x is None else max(rel_p, rel_x)


def measure(cell: str, knob: float, T: int, seed: int, precision: str, warmup: str = "direct",
            width: int | None = None, ref: dict | None = None, floor="compute") -> dict:
    """One point of the study (the record of the module docstring, with "rel_floor": rounding_floor). ref: BPTT's
    gradients (reference(); computed when None) and floor: rounding_floor() (computed when not given) — pass them to
    share them among the warm-ups and precisions with the same states."""
    state_dtype, carrier = PRECISIONS[precision]
    model, params, x, y = setup(cell, knob, T, seed, state_dtype, width)
    if ref is None:
        ref = reference(cell, knob, T, seed, state_dtype, width)
    if floor == "compute":
        floor = rounding_floor(cell, knob, T, seed, state_dtype, width, ref)
    diagnostics = {}
    with np.errstate(all="ignore"):
        _, g = fptt_model_grads(model, params, x, y, "mse", chunk=T, carrier=carrier, warmup=warmup, check=False,
                                diagnostics=diagnostics)          # the whole sequence as one chunk: the same sweeps
    keys = list(params)
    cos_p, rel_p = _compare(_flat(g, keys), _flat(ref, keys))
    cos_x, rel_x = _compare(np.ravel(g["x"]).astype(np.float64), np.ravel(ref["x"]))
    residual = _finite_or_none(diagnostics[0]["residual"])
    return {"cell": cell, "knob": knob, "T": T, "seed": seed, "precision": precision, "warmup": warmup,
            "cos_params": cos_p, "cos_inputs": cos_x, "rel_params": rel_p, "rel_inputs": rel_x,
            "residual": residual, "gain": _finite_or_none(diagnostics[0]["gain"]),
            "accepted": residual is not None and residual <= RESIDUAL_TOL, "rel_floor": floor}


def run_study(cells=CELLS, lengths=LENGTHS_QUICK, seeds=(0, 1), precisions=tuple(PRECISIONS), warmups=WARMUPS,
              widths: dict | None = None, knobs: dict | None = None, progress=None) -> list[dict]:
    """Every (cell, knob, T, seed, precision, warm-up) of the grid; BPTT (and its rounding floor) once per (cell, knob,
    T, seed, state dtype). widths: cell → width (default WIDTHS); knobs: cell → the knob values (default KNOBS')."""
    widths = {**WIDTHS, **(widths or {})}
    records = []
    for cell in cells:
        for T in lengths:
            for knob in (knobs or {}).get(cell, KNOBS[cell][1]):
                for seed in seeds:
                    refs = {}
                    for precision in precisions:
                        state_dtype = PRECISIONS[precision][0]
                        if state_dtype not in refs:
                            ref = reference(cell, knob, T, seed, state_dtype, widths[cell])
                            refs[state_dtype] = ref, rounding_floor(cell, knob, T, seed, state_dtype, widths[cell],
                                                                    ref)
                        for warmup in warmups:
                            records.append(measure(cell, knob, T, seed, precision, warmup, widths[cell],
                                                   *refs[state_dtype]))
                            if progress:
                                progress(records[-1])
    return records


def _worst(values) -> float:
    """The max of rel errors over seeds, inf when any is lost (None)."""
    return math.inf if any(v is None for v in values) else max(values)


def summarize(records: list[dict]) -> list[dict]:
    """Per (cell, warmup, precision, T, knob): the mean cosines, the max rel errors (None: lost in some seed) — "rel"
    the larger of the parameters' and the inputs' — the max residual (None: not finite in some seed), the max
    rel_floor (float32 BPTT's own error), the seeds and how many were accepted by (5)."""
    groups = {}
    for r in records:
        groups.setdefault((r["cell"], r["warmup"], r["precision"], r["T"], r["knob"]), []).append(r)
    out = []
    for (cell, warmup, precision, T, knob), rs in groups.items():
        rel_p, rel_x = _worst([r["rel_params"] for r in rs]), _worst([r["rel_inputs"] for r in rs])
        res = _worst([r["residual"] for r in rs])
        out.append({"cell": cell, "warmup": warmup, "precision": precision, "T": T, "knob": knob,
                    "cos_params": float(np.mean([r["cos_params"] for r in rs])),
                    "cos_inputs": float(np.mean([r["cos_inputs"] for r in rs])),
                    "rel_params": _finite_or_none(rel_p), "rel_inputs": _finite_or_none(rel_x),
                    "rel": _finite_or_none(max(rel_p, rel_x)), "residual": _finite_or_none(res),
                    "rel_floor": _finite_or_none(_worst([r["rel_floor"] for r in rs])),
                    "seeds": len(rs), "accepted": sum(r["accepted"] for r in rs)})
    order = {c: i for i, c in enumerate(CELLS)}
    return sorted(out, key=lambda s: (order.get(s["cell"], 99), s["cell"], WARMUPS.index(s["warmup"]), s["precision"],
                                      s["T"], s["knob"]))


def _exact(s: dict) -> bool:
    return s["rel"] is not None and s["rel"] <= EXACT


def regions(summary: list[dict]) -> list[dict]:
    """Per (cell, precision): {"cell", "precision", "knob": its label, <warmup>: [[knob, T], …] (the points whose max
    rel error over seeds ≤ EXACT), …} for each warm-up in the summary, side by side."""
    out = {}
    for s in summary:
        entry = out.setdefault((s["cell"], s["precision"]),
                               {"cell": s["cell"], "precision": s["precision"], "knob": KNOBS[s["cell"]][0]})
        points = entry.setdefault(s["warmup"], [])
        if _exact(s):
            points.append([s["knob"], s["T"]])
    for entry in out.values():
        for w in WARMUPS:
            if w in entry:
                entry[w].sort()
    return list(out.values())


def write_study(out_dir, *, full: bool = False, seeds: int | None = None, width: int | None = None,
                precisions=(), cells=(), warmups=(), lengths=(), knobs: dict | None = None, progress=None):
    """Run the study — the quick grid (LENGTHS_QUICK, 2 seeds) or with full=True the complete one (LENGTHS_FULL, 3
    seeds) — and write out_dir/stability.json ({"config", "records", "summary", "regions"}, strict JSON: None for
    what is not finite) and out_dir/stability.png. width: one width for every cell (default WIDTHS); cells,
    precisions, warmups (default all), lengths and knobs (cell → values) narrow the grid.
    Returns (summary, regions, the JSON's path, the PNG's path)."""
    import time
    n_seeds = seeds or (3 if full else 2)
    cells = list(cells or CELLS)
    knobs = {c: list((knobs or {}).get(c, KNOBS[c][1])) for c in cells}
    config = {"cells": cells, "lengths": list(lengths or (LENGTHS_FULL if full else LENGTHS_QUICK)),
              "seeds": list(range(n_seeds)), "precisions": list(precisions or PRECISIONS),
              "warmups": list(warmups or WARMUPS), "widths": {c: width or WIDTHS[c] for c in cells},
              "knobs": {c: {"label": KNOBS[c][0], "values": knobs[c]} for c in cells},
              "batch": 1, "inputs": "N(0, 1)", "loss": "mse to zero targets on every step", "exact": EXACT,
              "residual_tol": RESIDUAL_TOL, "reference": "BPTT in float64 from the rounded parameters and inputs"}
    start = time.perf_counter()
    records = run_study(cells, config["lengths"], config["seeds"], config["precisions"], config["warmups"],
                        config["widths"], knobs, progress)
    config["seconds"] = round(time.perf_counter() - start, 1)
    summary = summarize(records)
    found = regions(summary)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "stability.json", {"config": config, "records": records, "summary": summary,
                                               "regions": found})
    return summary, found, out / "stability.json", plot_study(summary, out / "stability.png")


def _fmt(rel) -> str:
    return "lost" if rel is None else f"{rel:.0e}"


def format_table(summary: list[dict]) -> str:
    """Per cell and precision a table knob × T; each entry the warm-ups' max rel error over seeds ("direct | shooting"),
    each marked * when ≤ EXACT; under a float32 table, the range of float32 BPTT's own error (rel_floor)."""
    lines = []
    warmups = [w for w in WARMUPS if any(s["warmup"] == w for s in summary)]
    index = {(s["cell"], s["precision"], s["warmup"], s["knob"], s["T"]): s for s in summary}
    width = 7 * len(warmups) + 3 * (len(warmups) - 1)
    for cell in dict.fromkeys(s["cell"] for s in summary):
        label = KNOBS[cell][0]
        for precision in dict.fromkeys(s["precision"] for s in summary if s["cell"] == cell):
            mine = [s for s in summary if s["cell"] == cell and s["precision"] == precision]
            lengths = sorted({s["T"] for s in mine})
            lines.append(f"{cell}, {precision} (states/carriers): FPTT's max rel error vs float64 BPTT over seeds, "
                         f"warm-up {' | '.join(warmups)}; * ≤ {EXACT:g}")
            lines.append(f"{label:>6}  " + "   ".join(f"{'T=' + str(T):^{width}}" for T in lengths))
            for knob in sorted({s["knob"] for s in mine}):
                row = []
                for T in lengths:
                    parts = []
                    for w in warmups:
                        s = index.get((cell, precision, w, knob, T))
                        parts.append(f"{'-':>6} " if s is None else f"{_fmt(s['rel']):>6}{'*' if _exact(s) else ' '}")
                    row.append(" | ".join(parts))
                lines.append(f"{knob:>6g}  " + "   ".join(row))
            floors = [s["rel_floor"] for s in mine]
            if any(f != 0.0 for f in floors):
                known = [f for f in floors if f is not None]
                lines.append(f"(BPTT itself in {PRECISIONS[precision][0]}: rel error "
                             f"{_fmt(min(known) if known else None)} … {_fmt(None if None in floors else max(known))})")
            lines.append("")
    return "\n".join(lines)


def plot_study(summary: list[dict], out_path) -> Path:
    """Heat maps of log10(max rel error over seeds) over knob × T: rows = cells, columns = precision × warm-up, one
    colour scale; the points ≤ EXACT are outlined, lost ones (not finite) marked ×."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    cells = list(dict.fromkeys(s["cell"] for s in summary))
    columns = [(p, w) for p in dict.fromkeys(s["precision"] for s in summary)
               for w in WARMUPS if any(s["warmup"] == w and s["precision"] == p for s in summary)]
    vmin, vmax = -16.0, 0.0
    fig, axes = plt.subplots(len(cells), len(columns), figsize=(2.3 * len(columns) + 1.2, 2.3 * len(cells) + 0.8),
                             squeeze=False)
    image = None
    for i, cell in enumerate(cells):
        label = KNOBS[cell][0]
        for j, (precision, warmup) in enumerate(columns):
            ax = axes[i][j]
            mine = [s for s in summary if s["cell"] == cell and s["precision"] == precision and s["warmup"] == warmup]
            knobs = sorted({s["knob"] for s in summary if s["cell"] == cell})
            lengths = sorted({s["T"] for s in summary if s["cell"] == cell})
            grid = np.full((len(knobs), len(lengths)), np.nan)
            for s in mine:
                a, b = knobs.index(s["knob"]), lengths.index(s["T"])
                grid[a, b] = vmax if s["rel"] is None else np.clip(np.log10(max(s["rel"], 1e-300)), vmin, vmax)
                if s["rel"] is None:
                    ax.text(b, a, "×", ha="center", va="center", color="white", fontsize=8)
                if _exact(s):
                    ax.add_patch(Rectangle((b - 0.5, a - 0.5), 1, 1, fill=False, edgecolor="white", lw=1.6))
            image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax)
            ax.set_xticks(range(len(lengths)), [str(T) for T in lengths], fontsize=7)
            ax.set_yticks(range(len(knobs)), [f"{k:g}" for k in knobs], fontsize=7)
            ax.set_title(f"{cell} {precision} {warmup}", fontsize=8)
            if i == len(cells) - 1:
                ax.set_xlabel("T", fontsize=8)
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle(f"FPTT vs BPTT: log10 max relative error over seeds (white box: ≤ {EXACT:g}; ×: not finite); "
                 f"precision = states/carriers", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.93, 0.97))
    if image is not None:
        fig.colorbar(image, cax=fig.add_axes((0.945, 0.1, 0.012, 0.8)), label="log10 rel error (clipped to [-16, 0])")
    return save_figure(fig, out_path, dpi=100, tight=False)     # laid out above (room for the colorbar)
