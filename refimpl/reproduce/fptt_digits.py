"""fptt-digits: Zucchet, Pourcel & Ernoult (2026), "Forward propagation of errors through time": BPTT, FPTT, its
single-pass baseline and spatial backprop on sequential digits (MNIST98 when the MNIST files are given), for 1 and 4
LRU layers at r_min 0.9 and 0.99, and the pass-budget ablation P = 1 … L+1.

The model of the paper (every study): L layers of a complex diagonal LRU (32 units) each followed by an MLP block, no
residuals, the prediction a straight-through cumulative mean over time (the loss at every step, the accuracy at the
last), AdamW (weight decay 0.01 outside the recurrence), the recurrent group at lr × 0.5, gradient clipping at 1,
cosine schedule; the learning rate chosen on validation per algorithm and r_min.

The algorithms (refimpl's names; the paper's `training_mode` in brackets):
    bptt        exact gradient                                                          [normal]
    fptt        a warm-up pass finds δ_0, an error pass runs the inverted recursion forward; L+1 passes for L
                layers; equals BPTT's gradient up to rounding                           [forward_forward]
    fptt1       one forward pass with δ_0 = 0: not the gradient, the paper's baseline    [forward]
    spatial     no credit assignment through the recurrence                             [spatial]
    fptt -a passes=P   the pass budget: the top P − 1 layers learn by FPTT, the others spatially (P = 1: every
                layer spatial; P = L+1: full FPTT)                        [forward_forward, forward_simulation_passes]

fptt and fptt1 run with schedule 'stored' (the stack run forward once and walked down once: the same numbers as the
default L+1 passes over the inputs, about 3× faster here); bptt and spatial take no such option, so at each depth
the FPTT pair is a study of its own, from the same initial weights per seed.
"""

from __future__ import annotations

from ..training.config import TrainConfig
from . import Claim, Experiment, Plan, Results, Settings, Study, test_text

DEPTHS = {1: "1 layer", 4: "4 layers"}
R_MINS = (0.9, 0.99)
PAIRS = {"": ("bptt", "spatial"), "-fptt": ("fptt", "fptt1")}         # study suffix: algorithms
PASSES_LAYERS, PASSES_R_MIN = 4, 0.99

_MODEL = dict(cell="lru", hidden=32, encoder=True, d_model=32, ffn="mlp", pooling="cumulative_mean",
              optimizer="adamw", weight_decay=0.01, rec_lr_factor=0.5, clip_norm=1.0, schedule="cosine",
              dtype="float32", log_every=50)

BUDGET = {
    #          epochs, batch, lrs (a list, or {layers: list}), seeds (sequential digits; the MNIST98 sizes below).
    #          Quick: lr 1e-2 sent every 4-layer model to chance in 8 epochs, and 1e-3 is too slow for one layer.
    "quick": dict(epochs=8, batch_size=8, lrs={1: [3e-3, 1e-2], 4: [1e-3, 3e-3]}, seeds=2),
    "full": dict(epochs=40, batch_size=8, lrs=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2], seeds=3),
}
#: MNIST98 (--data-dir): the paper's batch 64 and about 17 epochs of the 54 000 training images (its 1e6 samples).
MNIST98 = {"quick": dict(epochs=1, batch_size=64, lrs=[3e-3], seeds=1, task_options={"n_train": 5000, "n_val": 1000,
                                                                                    "n_test": 2000}),
           "full": dict(epochs=17, batch_size=64, lrs=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2], seeds=3, task_options={})}


def _base(settings: Settings, b: dict, layers: int, algorithm_options: dict) -> TrainConfig:
    task = dict(task="mnist98", task_options=b["task_options"], data_dir=settings.data_dir) \
        if settings.data_dir else dict(task="digits-seq", task_options={"mode": "pixel"})
    return TrainConfig(**task, layers=layers, cell_options={"r_min": R_MINS[0], "r_max": 0.999},
                       algorithm_options=algorithm_options, epochs=b["epochs"], batch_size=b["batch_size"],
                       backend=settings.run_backend, **_MODEL)


def _lrs(b: dict, layers: int) -> list:
    return b["lrs"][layers] if isinstance(b["lrs"], dict) else b["lrs"]


def plan(settings: Settings) -> Plan:
    b = MNIST98[settings.budget] if settings.data_dir else BUDGET[settings.budget]
    studies = []
    for layers, depth in DEPTHS.items():
        for suffix, algorithms in PAIRS.items():
            options = {"schedule": "stored"} if suffix else {}
            studies.append(Study(f"L{layers}{suffix}", f"{depth}: {' and '.join(algorithms)}",
                                 _base(settings, b, layers, options),
                                 {"algorithm": list(algorithms), "cell_options.r_min": list(R_MINS),
                                  "lr": _lrs(b, layers)},
                                 seeds=b["seeds"], group_by=("algorithm", "cell_options.r_min")))
    studies.append(Study("passes", f"pass budget: fptt on {PASSES_LAYERS} layers at r_min {PASSES_R_MIN}, "
                                   f"P = 1 … {PASSES_LAYERS + 1}",
                         _base(settings, b, PASSES_LAYERS, {"schedule": "stored"}),
                         {"algorithm": ["fptt"], "cell_options.r_min": [PASSES_R_MIN],
                          "algorithm_options.passes": list(range(1, PASSES_LAYERS + 2)),
                          "lr": _lrs(b, PASSES_LAYERS)},
                         seeds=b["seeds"], group_by=("algorithm_options.passes",)))
    data = ("MNIST98 (T = 98)" if settings.data_dir else
            "the 8×8 digits read pixel by pixel (T = 64, 1258 training images)")
    if settings.budget == "quick":
        lrs = ", ".join(f"{DEPTHS[k]} {v}" for k, v in b["lrs"].items()) if isinstance(b["lrs"], dict) else b["lrs"]
        scope = (f"{data}, {b['epochs']} epoch(s) of batch {b['batch_size']}, learning rates {lrs}, "
                 f"{b['seeds']} seed(s) at the chosen point: it "
                 f"shows whether the ranking FPTT ≈ BPTT > spatial ≫ fptt1 and the pass budget's trend appear on a "
                 f"small problem trained for a minute per run; it cannot show the published accuracies (MNIST98, "
                 f"about 16 000 steps of batch 64 per run), and so few seeds give a rough spread at best, so "
                 f"differences of a few points between runs of the same gradient (fptt and bptt drift apart in "
                 f"float32) are within the noise")
    else:
        scope = (f"{data}, {b['epochs']} epochs of batch {b['batch_size']}, the paper's learning-rate grid {b['lrs']}, "
                 f"r_min 0.9 and 0.99, {b['seeds']} seeds at the chosen point")
    return Plan(tuple(studies), scope)


# ----------------------------------------------------------------------------------------------------------------
# Claims

def _study(layers: int, algorithm: str) -> str:
    return f"L{layers}" + next(s for s, algs in PAIRS.items() if algorithm in algs)


def _error(results: Results, layers: int, algorithm: str, r_min: float):
    """(mean, std, seeds) of the test error of an algorithm at a depth and r_min, or None."""
    return results.test(_study(layers, algorithm), f"{algorithm}/{r_min}")


def _fmt(name, t) -> str:
    return f"{name} {test_text(t)}"


def _ranking(results: Results, layers: int, r_min: float, tie: float = 2.0, gap: float = 10.0) -> tuple:
    """FPTT ≈ BPTT > spatial ≫ fptt1 at one depth and r_min: fptt within `tie` points of bptt (or one std), spatial's
    error not below the better of the two by more than `tie`, fptt1's at least `gap` points above spatial's."""
    e = {a: _error(results, layers, a, r_min) for a in ("bptt", "fptt", "spatial", "fptt1")}
    missing = [a for a, t in e.items() if t is None]
    if missing:
        return None, f"{', '.join(missing)} has no finished seed"
    tol = max(tie, *(t[1] for t in e.values()))
    best = min(e["bptt"][0], e["fptt"][0])
    ok = (abs(e["fptt"][0] - e["bptt"][0]) <= tol and e["spatial"][0] + tol >= best
          and e["fptt1"][0] >= e["spatial"][0] + gap)
    return ok, ", ".join(_fmt(a, t) for a, t in e.items())


def _passes(results: Results, tie: float = 1.0) -> tuple:
    """Test error non-increasing in P (neighbours within `tie` points or one std count as equal)."""
    values = []
    for p in range(1, PASSES_LAYERS + 2):
        t = results.test("passes", str(p))
        if t is None:
            return None, f"P = {p} has no finished seed"
        values.append((p, t[0], t[1], t[2]))
    ok = all(b[1] <= a[1] + max(tie, a[2], b[2]) for a, b in zip(values, values[1:]))
    strict = values[-1][1] < values[0][1]
    return ok and strict, ", ".join(f"P = {p}: {test_text((m, s, n))}" for p, m, s, n in values)


def claims(results: Results) -> list:
    out = []
    for layers, depth in DEPTHS.items():
        for r in R_MINS:
            f, b = _error(results, layers, "fptt", r), _error(results, layers, "bptt", r)
            if f is None or b is None:
                holds, ev = None, "fptt or bptt has no finished seed"
            else:
                holds = abs(f[0] - b[0]) <= max(2.0, f[1], b[1])
                ev = f"{_fmt('fptt', f)} vs {_fmt('bptt', b)} (Δ {f[0] - b[0]:+.2f})"
            out.append(Claim(f"{depth}, r_min {r}: FPTT learns as well as BPTT (it computes the same gradient; "
                             f"within 2 points or one std)", holds, ev))
    for layers, depth in DEPTHS.items():
        for r in R_MINS:
            holds, ev = _ranking(results, layers, r)
            out.append(Claim(f"{depth}, r_min {r}: FPTT ≈ BPTT > spatial ≫ fptt1 in accuracy (ties within 2 points "
                             f"or one std; fptt1 at least 10 points worse than spatial)", holds, ev))
    holds, ev = _passes(results)
    out.append(Claim(f"the pass budget: accuracy rises monotonically with P = 1 … {PASSES_LAYERS + 1} (ties within 1 "
                     f"point or one std; P = {PASSES_LAYERS + 1} better than P = 1)", holds, ev))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Figures

def figures(results: Results, fig_dir) -> list:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..plotting import save_figure

    algorithms = ("bptt", "fptt", "spatial", "fptt1")
    clusters = [(layers, r) for layers in DEPTHS for r in R_MINS]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [2, 1]})
    width = 0.8 / len(algorithms)
    for j, a in enumerate(algorithms):
        xs, ms, ss, pub = [], [], [], []
        for i, (layers, r) in enumerate(clusters):
            x = i + (j - (len(algorithms) - 1) / 2) * width
            t = _error(results, layers, a, r)
            if t is not None:
                xs.append(x)
                ms.append(t[0])
                ss.append(t[1])
            p = PUBLISHED_ERROR.get((_study(layers, a), f"{a}/{r}"))
            if p is not None:
                pub.append((x, p))
        ax.bar(xs, ms, width, yerr=ss, capsize=2, label=a)
        for x, p in pub:
            ax.plot([x - width / 2, x + width / 2], [p, p], "k-", lw=2)
    ax.set_xticks(np.arange(len(clusters)), [f"{DEPTHS[layers]}\nr_min {r}" for layers, r in clusters])
    ax.set_ylabel("test error (%)")
    ax.set_title("test error per algorithm (black ticks: the paper's MNIST98 error)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=4)
    ps, ms, ss, pub = [], [], [], []
    for p in range(1, PASSES_LAYERS + 2):
        t = results.test("passes", str(p))
        if t is not None:
            ps.append(p)
            ms.append(t[0])
            ss.append(t[1])
        pub.append(PUBLISHED_ERROR.get(("passes", str(p))))
    bx.errorbar(ps, ms, yerr=ss, marker="o", capsize=2, label="ours")
    bx.plot(range(1, PASSES_LAYERS + 2), pub, "k--", marker="s", label="paper (MNIST98)")
    bx.set_xlabel("pass budget P")
    bx.set_ylabel("test error (%)")
    bx.set_title(f"fptt, {PASSES_LAYERS} layers, r_min {PASSES_R_MIN}", fontsize=9)
    bx.grid(alpha=0.3)
    bx.legend(fontsize=8)
    save_figure(fig, fig_dir / "test-error.png")
    return [("test-error.png", "Left: test error of each algorithm per depth and r_min, mean ± std over the seeds, the "
                               "paper's MNIST98 error (100 − accuracy) as black ticks. Right: the pass budget P, ours "
                               "and the paper's")]


# ----------------------------------------------------------------------------------------------------------------
# The published numbers: the authors' analysis notebook (MNIST98, means over seeds at the best lr), as accuracies;
# the page shows the error 100 − accuracy.

_ACCURACY = {
    # (layers, r_min): {algorithm: accuracy %}  (fptt1 = the paper's `forward`, fptt = `forward_forward`)
    (1, 0.9): {"fptt1": 29.2, "fptt": 95.57, "bptt": 97.06, "spatial": 95.41},
    (1, 0.99): {"fptt1": 57.8, "fptt": 95.40, "bptt": 96.87, "spatial": 95.84},
    (4, 0.9): {"fptt1": 13.8, "fptt": 97.19, "bptt": 98.26, "spatial": 96.55},
    (4, 0.99): {"fptt1": 22.0, "fptt": 97.70, "bptt": 97.93, "spatial": 91.32},
}
_PASSES_ACCURACY = {1: 94.23, 2: 96.95, 3: 97.13, 4: 97.86, 5: 98.02}

PUBLISHED_ERROR = {(_study(layers, a), f"{a}/{r}"): round(100 - acc, 2)
                   for (layers, r), accs in _ACCURACY.items() for a, acc in accs.items()}
PUBLISHED_ERROR.update({("passes", str(p)): round(100 - acc, 2) for p, acc in _PASSES_ACCURACY.items()})


def _published() -> dict:
    """{(study, group): "error (MNIST98 acc accuracy)"}, from the accuracies as the notebook gives them."""
    out = {(_study(layers, a), f"{a}/{r}"): f"{100 - acc:.2f} (MNIST98 acc {acc})"
           for (layers, r), accs in _ACCURACY.items() for a, acc in accs.items()}
    out.update({("passes", str(p)): f"{100 - acc:.2f} (MNIST98 acc {acc})" for p, acc in _PASSES_ACCURACY.items()})
    return out


EXPERIMENT = Experiment(
    name="fptt-digits",
    title="forward propagation of errors through time: BPTT vs FPTT vs spatial vs single-pass, and the pass budget",
    source="Zucchet, Pourcel & Ernoult (2026), *Forward propagation of errors through time* (blog post and code): "
           "the MNIST98 comparison of the training modes for 1 and 4 LRU layers at r_min 0.9 / 0.99, and the "
           "pass-budget ablation (forward_simulation_passes P = 1 … 5).",
    plan=plan,
    published=_published(),
    published_note=(
        "the authors' analysis notebook (W&B sweeps; MNIST98, T = 98, 1 or 4 LRU layers of 32 units; mean over "
        "seeds at the best lr), given there as test accuracy and shown here as error = 100 − accuracy (the "
        "accuracy in brackets). The paper's `forward` mode is refimpl's fptt1, `forward_forward` is fptt, `normal` "
        "is bptt. The notebook's header calls the deep comparison 2 layers while its sweep file says 4: which "
        "depth the deep rows used is not certain. The blog's own table (4 layers, r_min and the recurrent lr "
        "factor also tuned) gives spatial 96.55 %, BPTT 98.30 %, FPTT 98.19 % accuracy (errors 3.45, 1.70, "
        "1.81). The pass-budget row is 4 layers at r_min 0.99. These are numbers on MNIST98, not on the 8×8 "
        "digits: on the digits pages they are the published trend to compare with, not a target value."),
    claims=claims,
    differences=(
        "- **Data.** Without MNIST files the runs use the 8×8 digits bundled with scikit-learn read pixel by pixel "
        "(T = 64, 1258 / 270 / 269 images) instead of MNIST98 (T = 98, 60 000 / 10 000). The task is smaller and "
        "shorter, so errors and their gaps are not comparable one to one; with `--data-dir` the same plan runs on "
        "MNIST98 (quick: a 5000-image subset for one epoch).\n"
        "- **Length of training.** The paper trains about 16 000 steps of batch 64 per run; quick trains 8 "
        "epochs of batch 8 (1260 steps), full 40 epochs (6300 steps). Batch 8 is chosen because at batch 32 the "
        "4-layer stack reached only about 60 % validation accuracy in 10 epochs (measured), at batch 8 about "
        "94 % in 8.\n"
        "- **Selection.** The paper picks the lr on the MNIST test split (its validation set), and also tunes the "
        "recurrent lr factor; here the lr is chosen on a validation split and the factor is fixed at 0.5.\n"
        "- **fptt1 and the cumulative mean.** fptt1's gradient is not the gradient; its runs can end at chance "
        "or diverge (a diverged trial is counted in the table's last column and never chosen).\n"
        "- **Precision.** float32 activations with FPTT's δ and Jacobian products carried in float64 (refimpl's "
        "default carrier), as the paper's base / increased precision f32 / f64."),
    options=(("`model.training_mode: normal / forward_forward / forward / spatial`",
              "`--algorithm bptt / fptt / fptt1 / spatial`"),
             ("`model.forward_simulation_passes: P`", "`-a passes=P` (fptt; default L+1)"),
             ("`model.n_layers`, `model.hidden_dim: 32`", "`--layers`, `--hidden 32 --d-model 32 --encoder`"),
             ("LRU cell + MLP block, no residual", "`--cell lru --ffn mlp`"),
             ("`model.lru_r_min`, `lru_r_max`", "`-o r_min=… -o r_max=0.999`"),
             ("`model.pooling: cumulative_mean` (straight-through)", "`--pooling cumulative_mean`"),
             ("`training.recurrent_lr_factor: 0.5`", "`--rec-lr-factor 0.5`"),
             ("AdamW, `weight_decay: 0.01`, cosine, clip 1.0", "`--optimizer adamw --weight-decay 0.01 "
                                                              "--schedule cosine --clip 1`"),
             ("`base_precision: float32`, `increased_precision: float64`", "`--dtype float32` (-a carrier=float64, "
                                                                           "the default)"),
             ("`freeze_recurrence`", "`--freeze-recurrence` (not used by these studies)"),
             ("`data: mnist98`", "`--task mnist98 --data-dir DIR` (or digits-seq -t mode=pixel without MNIST)"),
             ("(no counterpart: one pass schedule)", "`-a schedule=stored` for fptt / fptt1: the same numbers, "
                                                   "fewer passes over the inputs")),
    full_hours="on the digits: 40 epochs of batch 8 per run, 5 learning rates × 2 r_min × 4 algorithms × 2 depths "
               "plus the 25-run pass ablation, 3 seeds at each chosen point: about 135 runs; from the quick run's "
               "measured cost (about 2 s of one core per epoch at 4 layers, 0.8 s at 1 layer) roughly 1.5 hours "
               "on 2 cores. On MNIST98 (17 epochs of 54 000 images at batch 64, T = 98) each 4-layer run is about "
               "16 000 steps of ≈ 0.07 s: roughly 20 minutes, about 30 hours on 2 cores in all. Not run here.",
    figures=figures,
)
