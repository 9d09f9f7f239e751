"""listops: Zucchet, Meier, Schug, Mujika & Sacramento (NeurIPS 2023), "Online learning of long-range
dependencies", Table 2's ListOps column: an LRU stack trained by BPTT and by the online rules on Long Range Arena's
ListOps (tasks/listops.py generates it from its definition), at a length that fits the budget.

The model of the paper: an encoder, 4 layers of [pre-norm (layer norm) → LRU (d_model 256, d_hidden 128) → GLU block
→ residual], no dropout, the running mean of the top layer's outputs read out at every step ("pool_st": forward the
causal running mean, backward the identity) with the label as the target at every step; AdamW (weight decay 0.05) with
the recurrent group at lr × 0.5, 4 epochs of linear warm-up then cosine, batch 32, 40 epochs, lr ∈ {1e-3, 3e-3},
r_min ∈ {0, 0.9}, T = 2048.

refimpl's pooling `cumulative_mean` is that pool_st (refimpl/nn/layers.py (35)–(36)): its loss is a sum over steps
(each step's error reaches that step's output only), so every rule runs with it; plain `mean` pooling (the true mean,
whose gradient at one step depends on the whole sequence) is refused by the online rules.

The rules (refimpl's names; the paper's in brackets):
    bptt        exact gradient (of the pool_st surrogate, as the paper's)                [bptt]
    online      exact diagonal RTRL traces per layer, errors from the layer above by backprop through the stack at
                each step                                                                [online_full]
    truncated   the immediate Jacobian only (1-step truncation)                          [online_1truncated]
    spatial     no trace through time: each step's error on that step's parameters      [online_spatial]
    readout     only the readout learns: the floor                                       [online_reservoir]

Beside the sweeps, `measure` describes the data the studies train on (lengths, depths and answer classes of each
split; how many expressions a held-out seed shares with the training split; the majority-class error on the test
split), and `figures` draws it.
"""

from __future__ import annotations

import numpy as np

from tasks import PRESETS, listops, make_task

from ..training.config import TrainConfig
from . import Claim, Experiment, Plan, Results, Settings, Study, close, ordering

ALGORITHMS = ("bptt", "online", "truncated", "spatial", "readout")

_MODEL = dict(cell="lru", encoder=True, norm="layer", ffn="glu", residual=True, dropout=0.0,
              pooling="cumulative_mean", optimizer="adamw", weight_decay=0.05, rec_lr_factor=0.5, schedule="cosine",
              batch_size=32, dtype="float32")

BUDGET = {
    #   task (preset, options), layers, d_model, hidden (d_hidden), epochs, warm-up epochs, lrs, r_min, seeds,
    #   executions per scan point
    "quick": dict(task="listops-small", task_options={"pad": "left", "n_train": 5000, "n_val": 500, "n_test": 500},
                  layers=2, d_model=32, hidden=32, epochs=8, warmup_epochs=1, lrs=[3e-3, 1e-2], r_min=[0.0],
                  seeds=2, executions=1),
    "full": dict(task="listops-512", task_options={"pad": "left"},
                 layers=4, d_model=256, hidden=128, epochs=40, warmup_epochs=4, lrs=[1e-3, 3e-3], r_min=[0.0, 0.9],
                 seeds=3, executions=2),
}

#: the held-out seed of `measure` (the studies train on seed 0 … seeds − 1; their data never mix with this seed's)
HELD_OUT_SEED = 1000


def _task_options(b: dict) -> dict:
    """The task options in full: the preset's, then the budget's."""
    return {**PRESETS[b["task"]][1], **b["task_options"]}


def plan(settings: Settings) -> Plan:
    b = BUDGET[settings.budget]
    n_train = _task_options(b)["n_train"]
    warmup = b["warmup_epochs"] * -(-n_train // _MODEL["batch_size"])          # epochs × ⌈N / batch⌉ steps
    base = TrainConfig(task=b["task"], task_options=b["task_options"], cell_options={"r_min": b["r_min"][0]},
                       layers=b["layers"], d_model=b["d_model"], hidden=b["hidden"], epochs=b["epochs"],
                       warmup_steps=warmup, backend=settings.run_backend, **_MODEL)
    grid = {"algorithm": list(ALGORITHMS), "lr": b["lrs"]}
    if len(b["r_min"]) > 1:
        grid["cell_options.r_min"] = b["r_min"]
    study = Study("lru", "LRU stack on ListOps", base, grid, seeds=b["seeds"], executions=b["executions"])
    opts = _task_options(b)
    scope = (f"ListOps of {opts['min_length']} … {opts['max_length']} tokens (T = {opts['max_length']}, "
             f"{opts['n_train']} training expressions), {b['layers']} layers of d_model {b['d_model']} and "
             f"d_hidden {b['hidden']}, {b['epochs']} epochs, lr ∈ {{{', '.join(format(v, 'g') for v in b['lrs'])}}}, "
             f"{b['seeds']} seeds: it shows whether each rule learns more than the majority class on short "
             f"expressions (most are 1–3 operators deep), and their ranking there; it cannot show the published "
             f"accuracies (T = 2048, 4 layers of 256, 40 epochs of 96 000 expressions), nor separate rules that "
             f"differ by a point or two (two seeds, 500 test expressions: a point is 5 expressions). At these "
             f"lengths the running mean of the "
             f"readout already pools over the whole expression, so a rule that sends no error back in time "
             f"(spatial) can still learn much of what the short expressions need"
             if settings.budget == "quick" else
             f"the paper's model and protocol (4 layers, d_model 256, d_hidden 128, 40 epochs with 4 of warm-up, "
             f"lr ∈ {{1e-3, 3e-3}}, r_min ∈ {{0, 0.9}}, 2 seeds per scan point, 3 at the best) on ListOps at a "
             f"quarter of LRA's length: {opts['min_length']} … {opts['max_length']} tokens, {opts['n_train']} "
             f"training expressions")
    return Plan((study,), scope, measure=lambda echo: measure_data(settings.budget, echo))


# ----------------------------------------------------------------------------------------------------------------
# The data: what the studies train on

def overlap(a, b) -> int:
    """How many expressions (rows of token ids, padding included) of split `b` occur in split `a`."""
    seen = {r.tobytes() for r in listops.tokens(a)}
    return sum(r.tobytes() in seen for r in listops.tokens(b))


def majority_error(task) -> tuple:
    """(class, error %): the most frequent answer of the training split, and the test error of always giving it."""
    c = int(np.argmax(np.bincount(task.train.y, minlength=listops.N_CLASSES)))
    return c, 100.0 * float(np.mean(task.test.y != c))


def _histogram(values, edges) -> list:
    return np.histogram(values, bins=edges)[0].astype(int).tolist()


def measure_data(budget: str, echo=lambda s: None) -> dict:
    """The data of seed 0 (every split) and of HELD_OUT_SEED: lengths, depths, classes, overlaps, majority error."""
    b = BUDGET[budget]
    opts = _task_options(b)
    echo(f"   generating the data of seeds 0 and {HELD_OUT_SEED} ({opts})")
    task = make_task("listops", seed=0, **opts)
    held = make_task("listops", seed=HELD_OUT_SEED, **opts)
    width = -(-(opts["max_length"] + 1 - opts["min_length"]) // 24)          # ≤ 24 bins of equal integer width
    edges = list(range(opts["min_length"], opts["max_length"] + width + 1, width))
    splits = {}
    for name, split in (("train", task.train), ("val", task.val), ("test", task.test),
                        (f"held-out seed {HELD_OUT_SEED} (train)", held.train)):
        rows = [listops.decode(r) for r in listops.tokens(split)]
        lengths = [len(r) for r in rows]
        depths = [listops.depth(r) for r in rows]
        splits[name] = {"n": split.n, "length_edges": edges, "length_hist": _histogram(lengths, edges),
                        "length": [int(min(lengths)), float(np.mean(lengths)), int(max(lengths))],
                        "depth_counts": np.bincount(depths, minlength=opts.get("max_depth", 10)).astype(int).tolist(),
                        "classes": np.bincount(split.y, minlength=listops.N_CLASSES).astype(int).tolist()}
    c, err = majority_error(task)
    shared = {"val": overlap(task.train, task.val), "test": overlap(task.train, task.test),
              "held": overlap(task.train, held.train)}
    table = ["| split | n | lengths (min / mean / max) | nesting depth: counts | answer classes 0 … 9 |",
             "|---|---|---|---|---|"]
    for name, s in splits.items():
        depths = ", ".join(f"{d}: {k}" for d, k in enumerate(s["depth_counts"]) if k)
        lo, mean, hi = s["length"]
        table.append(f"| {name} | {s['n']} | {lo} / {mean:.1f} / {hi} | {depths} | "
                     f"{' '.join(str(k) for k in s['classes'])} |")
    table += ["", f"Data of seed 0 (every study's seed-0 trials; seed s draws its own). The majority answer of the "
                  f"training split is {c}; always answering it gives a test error of **{err:.1f} %** (the floor a "
                  f"model must beat). Expressions of the training split that recur: {shared['val']} of "
                  f"{task.val.n} validation, {shared['test']} of {task.test.n} test, {shared['held']} of "
                  f"{held.train.n} in the training split of the held-out seed {HELD_OUT_SEED} (repeats happen only "
                  f"by chance, among the shortest expressions)."]
    return {"splits": splits, "majority_class": c, "majority_error": err, "shared": shared, "table": table}


# ----------------------------------------------------------------------------------------------------------------
# Claims and figures

def claims(results: Results) -> list:
    out = []
    floor = results.measured.get("majority_error")
    best = {g: results.test("lru", g) for g in ALGORITHMS}
    if floor is None:
        out.append(Claim("bptt learns more than the majority class", None, "the data were not measured"))
    else:
        for g in ("bptt", "online"):
            t = best[g]
            holds = None if t is None else bool(t[0] + max(1.0, t[1]) < floor)
            ev = (f"{g} has no finished seed" if t is None else
                  f"{g} {t[0]:.2f} ± {t[1]:.2f} % test error vs {floor:.2f} % for the majority class")
            out.append(Claim(f"{g} learns more than the majority class (test error below it by more than 1 point "
                             f"or one std)", holds, ev))
    holds, ev = close(results, "lru", "online", "bptt", within=2.0)
    out.append(Claim("the online rule (exact diagonal traces) is as accurate as BPTT (within 2 percentage points)",
                     holds, ev))
    holds, ev = ordering(results, "lru", ("bptt", "online", "truncated", "spatial", "readout"))
    out.append(Claim("online ≈ bptt ≥ truncated ≥ spatial ≥ readout in accuracy (ties within 1 point or one std)",
                     holds, ev))
    on, tr = results.test("lru", "online"), results.test("lru", "truncated")
    if on is None or tr is None:
        holds, ev = None, f"{'online' if on is None else 'truncated'} has no finished seed"
    else:
        holds = bool(tr[0] - on[0] > max(1.0, on[1], tr[1]))
        ev = (f"online {on[0]:.2f} ± {on[1]:.2f} % vs truncated {tr[0]:.2f} ± {tr[1]:.2f} % "
              f"(Δ {tr[0] - on[0]:+.2f})")
    out.append(Claim("online > truncated: the traces through time make the online rule more accurate than the "
                     "1-step truncation (by more than 1 point or one std)", holds, ev))
    return out


def _data_figure(measured: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..plotting import save_figure

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    names = list(measured["splits"])
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        s = measured["splits"][name]
        edges = np.asarray(s["length_edges"], dtype=float)
        frac = np.asarray(s["length_hist"]) / s["n"]
        axes[0].step(edges[:-1], frac, where="post", label=name)
        depth = np.asarray(s["depth_counts"]) / s["n"]
        axes[1].bar(np.arange(len(depth)) + (j - (len(names) - 1) / 2) * width, depth, width, label=name)
        cls = np.asarray(s["classes"]) / s["n"]
        axes[2].bar(np.arange(listops.N_CLASSES) + (j - (len(names) - 1) / 2) * width, cls, width, label=name)
    axes[0].set(xlabel="length (tokens)", ylabel="fraction of the split", title="lengths")
    axes[1].set(xlabel="nesting depth (operators open at once)", title="depths")
    axes[2].set(xlabel="answer", title=f"answer classes (majority {measured['majority_class']})",
                xticks=range(listops.N_CLASSES))
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
    axes[2].legend(fontsize=7)
    save_figure(fig, path)


def figures(results: Results, fig_dir) -> list:
    out = []
    if results.measured.get("splits"):
        _data_figure(results.measured, fig_dir / "data.png")
        out.append(("data.png", "The data of the studies (seed 0) and of a held-out seed: the distribution of "
                                "lengths, of nesting depths and of the answers per split"))
    _error_figure(results, fig_dir / "test-error.png")
    out.append(("test-error.png", "Test error (%) of each rule, mean ± std over the seeds; the dashed line is the "
                                  "majority class's test error"))
    return out


def _error_figure(results: Results, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..plotting import save_figure

    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    for i, g in enumerate(ALGORITHMS):
        t = results.test("lru", g)
        if t is not None:
            ax.bar(i, t[0], 0.7, yerr=t[1], capsize=3, color=f"C{i}")
    floor = results.measured.get("majority_error")
    if floor is not None:
        ax.axhline(floor, color="k", ls="--", lw=1, label=f"majority class {floor:.1f} %")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xticks(range(len(ALGORITHMS)), ALGORITHMS)
    ax.set_ylabel("test error (%)")
    ax.set_title("ListOps, LRU stack: test error per rule", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)


EXPERIMENT = Experiment(
    name="listops",
    title="online learning of ListOps: BPTT vs the online rules, LRU stack",
    source="Zucchet, Meier, Schug, Mujika & Sacramento (NeurIPS 2023), *Online learning of long-range "
           "dependencies*, Table 2 (Long Range Arena), the ListOps column; ListOps as in Nangia & Bowman (2018) and "
           "the Long Range Arena (Tay et al. 2021), generated from its definition (tasks/listops.py).",
    plan=plan,
    published={},
    published_note="none is quoted: the paper's Table 2 accuracies were not available offline when this page was "
                   "written, and no unverified number is quoted as a target. The paper's qualitative claim (the "
                   "online rule performs competitively with BPTT, the cheaper approximations less so) is checked "
                   "below instead, together with the floor every model must beat: the majority class.",
    claims=claims,
    differences=(
        "- **Length and size.** The paper trains on LRA's ListOps (500 … 2000 tokens, T = 2048, 96 000 training "
        "expressions) with 4 layers of d_model 256; the quick budget trains 2 layers of width 32 on expressions of "
        "8 … 64 tokens (T = 64, 5000 training expressions) for 8 epochs, and `full` on 100 … 512 tokens (T = 512, "
        "20 000 expressions), a quarter of LRA's length. Accuracies at these lengths are not LRA's.\n"
        "- **Data.** The paper reads LRA's released files; refimpl generates ListOps from its definition "
        "(tasks/listops.py: the same operators, the same MED rule, LRA's length range and depth bound); the token "
        "ids differ (16 tokens, no '(' ')'), which the one-hot encoder makes irrelevant.\n"
        "- **Padding and the loss's steps.** The expressions are padded on the left (they end at the last step, "
        "where the model is read out); the label is the target at every one of the T steps, padding included, "
        "each weighted 1/T. The paper pads on the right and masks the padding: its loss and its running mean cover "
        "the valid steps only. Here the padding steps' outputs (the same for every expression: the same input from "
        "the same zero state) enter the running mean as a constant offset.\n"
        "- **Pooling.** `cumulative_mean` is the paper's pool_st exactly (forward the causal running mean, backward "
        "the identity), so BPTT, as in the paper, follows the gradient of that surrogate. Plain `mean` pooling "
        "(the true gradient of the mean) would be refused by every online rule: its error at one step depends on "
        "the whole sequence.\n"
        "- **Optimiser groups.** The paper's `Bfast_and_decay` puts B with the ordinary weights (lr, weight decay "
        "0.05) and only ν, θ, γ at lr × 0.5 without decay; refimpl's recurrent group is every cell parameter "
        "(ν, θ, γ and B) at lr × 0.5 without decay.\n"
        "- **online's cost.** The paper's ListOps sweep leaves online_full out (commented: it needs gradient "
        "accumulation on their GPUs); refimpl runs it at the quick size on the CPU, and its exact traces cost "
        "d_hidden × d_model numbers per layer and example.\n"
        "- **Accuracy reported.** The paper's code logs several accuracies (dense labels, last token, the running "
        "mean at the last valid step …) and which one Table 2 reports is not stated; refimpl scores the running "
        "mean at the last step (the full-mean readout)."),
    options=(("mode `bptt / online_full / online_1truncated / online_spatial / online_reservoir`",
              "`--algorithm bptt / online / truncated / spatial / readout`"),
             ("`n_layers: 4`, `d_model: 256`, `d_hidden: 128`", "`--layers 4 --d-model 256 --hidden 128`"),
             ("`activation: full_glu`, `prenorm: true`", "`--encoder --ffn glu --norm layer --residual`"),
             ("mode `pool_st` (pooling: running mean, straight-through)", "`--pooling cumulative_mean`"),
             ("`p_dropout: 0`", "`--dropout 0`"),
             ("`opt_config: Bfast_and_decay`, `lr_factor: 0.5`",
              "`--optimizer adamw --rec-lr-factor 0.5` (B stays in the recurrent group: see above)"),
             ("`weight_decay: 0.05`", "`--weight-decay 0.05`"),
             ("`r_min: {0, 0.9}`", "`-o r_min=0` / `-o r_min=0.9`"),
             ("`bsz: 32`, `epochs: 40`, `warmup_end: 4`",
              "`--batch-size 32 --epochs 40 --warmup-steps 2500` (4 epochs of 625 steps at listops-512)"),
             ("LRA's ListOps files (T = 2048, 20 input tokens)",
              "`--task listops` (generated; LRA's lengths by default) or the presets `listops-512`, "
              "`listops-small`; `-t pad=left`"),
             ("the lr × r_min grid of the sweep yaml, 2 seeds per point, 3 at the best",
              "`reproduce`'s grid, 2 executions per point, 3 seeds")),
    full_hours="not run here. Measured on this machine, idle, each a 4-step run of the full model alone (4 layers, "
               "d_model 256, d_hidden 128, batch 32, T = 512): about 1.3 s per step for bptt, 2.3 s for online, "
               "2–3 s for spatial. A trial is 40 epochs of 625 steps = 25 000 steps: 9 hours (bptt) to 16–19 hours "
               "(online, spatial); the grid (5 rules × 2 lr × 2 r_min × 2 executions = 40 trials, plus a third seed "
               "per rule: 45) comes to about 550 hours, some 3 weeks on 2 cores. LRA's own length (T = 2048, "
               "96 000 expressions) costs about 20 × more.",
    figures=figures,
)
