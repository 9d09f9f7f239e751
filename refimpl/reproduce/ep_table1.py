"""ep-table1: Ernoult, Grollier, Querlioz, Bengio & Scellier (NeurIPS 2019), "Updates of equilibrium prop match
gradients of backprop through time in an RNN with static input", Table 1: EP against BPTT on six networks, from
identical initial weights, test error mean ± std over the seeds.

The networks (refimpl's `--net`; sizes input first; the seed's `--size_tab` runs output first):
    EB-1h    energy-based, one hidden layer        (the seed's EPcont)      sigm, dt 0.2, states clamped to [0, 1]
    EB-2h    energy-based, two hidden layers
    P-1h     prototypical, one hidden layer        (EPdisc)                 sigm, s ← σ(…) (dt 1)
    P-2h     prototypical, two hidden layers
    P-3h     prototypical, three hidden layers
    P-conv   prototypical convolutional            (convEP)                 hardsigm, two conv + max-pool layers
Each is trained by `ep` (free phase of T steps, nudged phase of K steps at strength β, the telescoped update) and by
`bptt` through the same dynamics, truncated to the last K steps (the paper's baseline), with plain SGD and the seed's
per-layer learning rates `lr_tab` (given in the seed's order, output layer first: -a lr_order=output_first). A seed
fixes the data split, the initial weights and the batch order, so for one seed EP and BPTT start from the same
network and see the same batches.

The protocol here: per network and algorithm, lr_tab is chosen on the validation split among the seed's rates times
a few factors (the rates were tuned for 784 inputs and 512 units), and the chosen lr_tab is rerun with the seeds.
"""

from __future__ import annotations

from ..training.config import TrainConfig
from . import Claim, Experiment, Plan, Results, Settings, Study, bar_figure, close, test_text

#: The networks of Table 1: (title, net, hidden layers, net options, the seed's lr_tab (output first), and the
#: paper's T, K, β, epochs (the seed's README commands).
NETS = {
    "eb1h": ("EB-1h", "energy", 1, {}, (0.05, 0.1), (100, 12, 0.5, 30)),
    "eb2h": ("EB-2h", "energy", 2, {}, (0.01, 0.1, 0.4), (400, 40, 0.5, 50)),
    "p1h": ("P-1h", "prototypical", 1, {}, (0.04, 0.08), (40, 15, 0.1, 30)),
    "p2h": ("P-2h", "prototypical", 2, {}, (0.005, 0.05, 0.2), (100, 20, 0.5, 50)),
    "p3h": ("P-3h", "prototypical", 3, {}, (0.002, 0.01, 0.05, 0.2), (180, 20, 0.5, 100)),
    "pconv": ("P-conv", "conv", 1, {"activation": "hardsigm"}, (0.015, 0.035, 0.15), (200, 10, 0.4, 40)),
}

BUDGET = {
    #  hidden width of the layered nets, the conv net's channels (input side first), per net (T, K, β) and epochs
    #  (None: the paper's, NETS), the factors on the seed's lr_tab, seeds
    #  Quick: the deeper networks need free phases long enough to settle, or EP's update is not their gradient (at
    #  T = 30 P-3h trained by EP stayed at 36 % while its BPTT reached 6 %): the paper's T and K where they fit.
    "quick": dict(hidden=64, channels="16,32",
                  steps={"eb1h": (100, 12, 0.5), "eb2h": (150, 30, 0.5), "p1h": (40, 15, 0.1), "p2h": (100, 20, 0.5),
                         "p3h": (100, 20, 0.5), "pconv": (40, 8, 0.4)},
                  epochs=12, factors=(1, 3), seeds=2),
    "full": dict(hidden=512, channels="32,64", steps=None, epochs=None, factors=(0.5, 1, 2), seeds=5),
}


def lr_tab(rates, factor: float) -> str:
    """The seed's rates times `factor`, as -a lr_tab takes them (output layer first, 3 significant digits)."""
    return ",".join(format(float(f"{r * factor:.3g}"), "g") for r in rates)


def plan(settings: Settings) -> Plan:
    b = BUDGET[settings.budget]
    task = "mnist-static" if settings.data_dir else "digits"
    studies = []
    for name, (title, net, layers, options, rates, (T, K, beta, epochs)) in NETS.items():
        if b["steps"] is not None:
            T, K, beta = b["steps"][name]
        if b["epochs"] is not None:
            epochs = b["epochs"]
        net_options = dict(options)
        if net == "conv":
            net_options["channels"] = b["channels"]
        base = TrainConfig(task=task, data_dir=settings.data_dir, net=net, layers=layers, hidden=b["hidden"],
                           net_options=net_options, algorithm="ep",
                           algorithm_options={"T": T, "K": K, "beta": beta, "lr_order": "output_first"},
                           optimizer="sgd", lr=0.1, weight_decay=0.0, clip_norm=None, schedule="constant",
                           epochs=epochs, batch_size=20,
                           backend="numpy" if net == "conv" else settings.run_backend)
        grid = {"algorithm": ["ep", "bptt"],
                "algorithm_options.lr_tab": [lr_tab(rates, f) for f in b["factors"]]}
        studies.append(Study(name, title, base, grid, seeds=b["seeds"]))
    data = "MNIST (the IDX files given)" if settings.data_dir else "the 8×8 digits (1258 training images)"
    scope = (f"every network of Table 1 on {data} at a small size — 64 units per hidden layer, the conv net with "
             f"16 and 32 channels — with the relaxations (T / K / β: "
             + ", ".join(f"{NETS[n][0]} {T}/{K}/{beta:g}" for n, (T, K, beta) in (b["steps"] or {}).items())
             + f"), {b['epochs']} epochs, the seed's lr_tab × 1 "
             "or × 3 chosen on validation, two seeds: it shows whether EP tracks BPTT from identical weights on "
             "each network; it cannot show the published ≈ 2 % (FC) and ≈ 1 % (conv) MNIST errors, nor decide a "
             "0.5-point gap (one test image of 269 is 0.37 point, and two seeds give a rough spread)"
             if settings.budget == "quick" else
             f"the paper's settings on {data}: 512 units per hidden layer, the conv net with 32 and 64 channels, "
             f"the published T, K, β and epochs, the seed's lr_tab × {{0.5, 1, 2}} chosen on validation, five seeds")
    return Plan(tuple(studies), scope)


def claims(results: Results) -> list:
    out = []
    for name, (title, *_rest) in NETS.items():
        holds, ev = close(results, name, "ep", "bptt", within=0.5)
        ta, tb = results.test(name, "ep"), results.test(name, "bptt")
        if holds is False and ta is not None and tb is not None:
            spread = max(ta[1], tb[1])
            if abs(ta[0] - tb[0]) <= spread:
                holds, ev = None, ev + f"; the gap is within the seeds' spread ({spread:.2f}): not decided"
        out.append(Claim(f"{title}: EP's test error is within 0.5 point of BPTT's", holds, ev))
    fc = [results.test(n, g) for n in NETS if n != "pconv" for g in ("ep", "bptt")]
    fc = [t for t in fc if t is not None]
    out.append(Claim("every fully connected network reaches ≈ 2 % test error on MNIST (EP and BPTT)", None,
                     "not decidable on the 8×8 digits (another data set, another network size): ours range "
                     + (f"{min(t[0] for t in fc):.2f}–{max(t[0] for t in fc):.2f} %" if fc else "—")))
    conv = results.test("pconv", "ep")
    others = [(NETS[n][0], results.test(n, "ep")) for n in NETS if n != "pconv"]
    others = [(t, v) for t, v in others if v is not None]
    if conv is None or not others:
        out.append(Claim("P-conv trained by EP has the lowest test error of the EP networks", None,
                         "a network has no finished seed"))
    else:
        best_fc = min(others, key=lambda tv: tv[1][0])
        out.append(Claim("P-conv trained by EP has the lowest test error of the EP networks", conv[0] < best_fc[1][0],
                         f"P-conv {test_text(conv)} vs the best FC network {best_fc[0]} {test_text(best_fc[1])}"))
    return out


#: Table 1 as transcribed (MNIST test error %, mean ± std over 5 runs): {network: (EP, BPTT)}.
TABLE1 = {"eb1h": ("2.06 ± 0.17", "2.11 ± 0.09"), "eb2h": ("2.01 ± 0.21", "2.02 ± 0.15"),
          "p1h": ("2.00 ± 0.13", "2.00 ± 0.12"), "p2h": ("1.95 ± 0.10", "2.09 ± 0.12"),
          "p3h": ("2.01 ± 0.18", "2.30 ± 0.17"), "pconv": ("1.02 ± 0.04", "0.88 ± 0.06")}


def figures(results: Results, fig_dir) -> list:
    studies = [(n, NETS[n][0]) for n in NETS]
    published = {(n, g): float(TABLE1[n][i].split(" ")[0]) for n in NETS for i, g in enumerate(("ep", "bptt"))}
    bar_figure(results, studies, ("ep", "bptt"), fig_dir / "test-error.png",
               "EP vs BPTT from identical weights: test error (mean ± std over seeds); black: Table 1 (MNIST)",
               published=published)
    return [("test-error.png", "Test error (%) of EP and BPTT on each network, mean ± std over the seeds; the black "
                               "ticks are the paper's MNIST values as transcribed (another data set)")]


EXPERIMENT = Experiment(
    name="ep-table1",
    title="equilibrium propagation vs BPTT from identical weights (Table 1)",
    source="Ernoult, Grollier, Querlioz, Bengio & Scellier (NeurIPS 2019), *Updates of equilibrium prop match "
           "gradients of backprop through time in an RNN with static input*, Table 1 (MNIST test error of EP and "
           "BPTT for EB-1h, EB-2h, P-1h, P-2h, P-3h and P-conv).",
    plan=plan,
    published={(n, g): f"{TABLE1[n][i]} (MNIST)" for n in NETS for i, g in enumerate(("ep", "bptt"))},
    published_note="Table 1's MNIST test errors (mean ± std over 5 runs) as transcribed from the paper, **not "
                   "checked against the paper**: treat them as indicative. The parts held with more confidence "
                   "are that every fully connected network, EP and BPTT alike, lands at ≈ 2 % and that P-conv "
                   "reaches ≈ 1.0 % by EP and ≈ 0.9 % by BPTT. For P-1h the seed's README command uses T = 40, "
                   "K = 15, which the transcription's T = 30, K = 10 contradicts; the full budget uses the "
                   "README's.",
    claims=claims,
    differences=(
        "- **Data set.** The paper trains on MNIST (784 inputs, 60 000 images); the quick budget (and `full` "
        "without `--data-dir`) uses the 8×8 digits (64 inputs, 1258 training, 269 test images), whose test error "
        "moves in steps of 0.37 point and whose split changes with the seed. Numbers are not comparable to the "
        "paper's, only the EP–BPTT gap is.\n"
        "- **Size and relaxation (quick).** 64 units per hidden layer instead of 512, the conv net with 16/32 "
        "channels instead of 32/64 and 3×3 kernels with pools (2, 1) to fit 8×8 inputs (the paper: 5×5, pools "
        "2); the paper's T and K for EB-1h, P-1h and P-2h, shorter ones for EB-2h (150 / 30 instead of 400 / 40), "
        "P-3h (100 / 20 instead of 180 / 20) and P-conv (40 / 8 instead of 200 / 10), and 12 epochs instead of "
        "30–100. Shorter free phases leave a network less settled, which weakens both the learning and EP's "
        "match with BPTT.\n"
        "- **Relaxation length (quick).** With free phases of a third to a sixth of the paper's, an earlier quick "
        "run left EP on the deeper networks far behind BPTT (P-3h 36 % against 6 %) and 10–30 points apart "
        "between seeds: EP's update is BPTT's gradient only once the free phase has settled. At the lengths above "
        "every network learns by EP (4–7 % test error).\n"
        "- **Two seeds on 269 test images.** One image is 0.37 point and a spread of a point or two between seeds "
        "is normal, so a 0.5-point gap is mostly not decidable here (the claims say 'not decided' where the gap "
        "is inside the seeds' spread). Where EP is clearly ahead (EB-1h, and P-conv, whose truncated BPTT runs "
        "differ by several points between seeds) BPTT is the one that falls short; why for P-conv was not "
        "measured.\n"
        "- **Learning rates.** The seed's lr_tab was tuned for 784 inputs and 512 units; here it is scaled by a "
        "factor chosen on validation per network and algorithm, so EP and BPTT may end at different rates (the "
        "paper uses one lr_tab for both).\n"
        "- **BPTT on the clamped energy-based networks.** Measured here: BPTT through EB-1h plateaus near 30 % "
        "validation error on digits at either lr_tab, against ≈ 5 % for EP from the same weights. The cause, "
        "checked on the quick run's checkpoints: the BPTT-trained network never predicts three of the ten digits — "
        "their output units sit at the clamp's lower bound 0, where the clamp passes no gradient, so BPTT never "
        "moves them; EP's nudge β (y − s_0) pushes such a unit off the bound, and all ten classes are predicted. "
        "Neither the untruncated BPTT (-a full=1) nor the backend (numba or NumPy, identical) changes this. The "
        "paper (784 inputs, 512 units) reports BPTT ≈ EP there; why its network escapes the bound is not checked "
        "here. (P-conv's hard sigmoid has flat regions too: where BPTT trails EP there, the same mechanism is a "
        "candidate, not checked.)\n"
        "- **Prototypical dt.** refimpl's prototypical networks step s ← σ(…) (dt = 1, the paper's definition); "
        "the seed's code runs them with its default dt = 0.2 (a leak it probably did not intend).\n"
        "- **Seeds.** The seed trains the BPTT clone first with the same initial weights (`--benchmark`); refimpl "
        "trains the two as separate runs of one seed, which fixes the same weights, data and batch order."),
    options=(("`--training-method EP / BPTT`, `--benchmark`", "`--algorithm ep / bptt`, same `--seed`"),
             ("EPcont / EPdisc / convEP", "`--net energy / prototypical / conv`"),
             ("`--size_tab 10 512 784` (output first)", "`--hidden 512 --layers 1` (input and output from the task)"),
             ("`--C_tab 64 32 1`, `--Fconv 5`, `--Fpool 2`",
              "`--net conv -n channels=32,64` (input side first); kernel 5 and pool 2 for 28×28 inputs"),
             ("`--lr_tab 0.05 0.1` (output layer first)",
              "`-a lr_tab=0.05,0.1 -a lr_order=output_first --optimizer sgd` (or named: `-a lr_tab=W.1=0.05,W.0=0.1`)"),
             ("`--T 100 --Kmax 12 --beta 0.5`", "`-a T=100 -a K=12 -a beta=0.5`"),
             ("`--dt 0.2`, `--activation-function sigm`, clamp on", "`-n dt=0.2 -n activation=sigm -n clamp=1` "
                                                                    "(the energy network's defaults)"),
             ("`hardsigm` for convEP", "`-n activation=hardsigm`"),
             ("`--batch-size 20`, `--epochs 30`", "`--batch-size 20 --epochs 30`"),
             ("MNIST via torchvision", "`--task mnist-static --data-dir DIR` (offline: `--task digits`)")),
    full_hours="measured per batch of 20 at the paper's sizes on 784 inputs (one core, CPU time, EP ≈ BPTT): EB-1h "
               "0.15 s, EB-2h 1.2 s, P-1h 0.06 s, P-2h 0.32 s, P-3h 0.88 s (numba), P-conv 5 s (NumPy: the conv "
               "net has no backend kernels). One trial of each network for its published epochs on MNIST (2700 "
               "batches per epoch) is then 3.4, 45, 1.4, 12, 66 and 150 hours; the full plan runs 14 trials per "
               "network (3 lr_tab factors × 2 algorithms, then 4 more seeds each): ≈ 1950 CPU hours, about 40 days "
               "on 2 cores. On the digits at the paper's sizes (63 batches per epoch) the same plan is ≈ 44 CPU "
               "hours, about a day on 2 cores. Not run here.",
    figures=figures,
)
