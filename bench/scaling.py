"""The scaling study: time and peak memory of one gradient vs T and vs H, per algorithm — the complexity tables of
docs/derivations/rtrl.md, fptt.md and ep.md as measured curves.

Sequence algorithms (bptt, rtrl, online, snap1, truncated, spatial, fptt) on a one-layer gru model (dense, so that
the H-dependence separates them: BPTT O(H²T) time, RTRL O(H⁴T), SnAp-1 O(H²T), FPTT O(H³T)), run by the NumPy
reference (the truly online paths); EP on the prototypical network, vs its relaxation steps T (EP keeps the states
only; BPTT through the free phase keeps every step). Peak memory is the peak of NumPy allocations during the call
(tracemalloc; the inputs exist before it starts). Each curve gets a fitted log-log slope: time ∝ T^a, memory ∝ T^b,
time ∝ H^c. Expected: BPTT b ≈ 1; the online rules, FPTT and EP b ≈ 0; a ≈ 1 for all; c ≈ 2 (bptt, snap1, truncated,
spatial), 4 (rtrl), 3 (fptt).
"""

from __future__ import annotations

import time
import tracemalloc

import numpy as np

SEQUENCE_ALGORITHMS = ("bptt", "rtrl", "online", "snap1", "truncated", "spatial", "fptt")
GRID = {"full": dict(T=(100, 300, 1000, 3000, 10000), H=(32, 64, 128, 256), T_for_H=10, H_for_T=8, B=4, I=4,
                    max_H={"rtrl": 128}),
        "quick": dict(T=(10, 30), H=(2, 4), T_for_H=5, H_for_T=3, B=2, I=2, max_H={})}
#: (The H sweep starts at 32 so that arithmetic, not Python's per-step overhead, is what grows; whole-state RTRL stops
#: at H = 128, where one gradient already takes seconds — its O(H⁴) is the point.)


def _sequence_call(algorithm: str, T: int, H: int, B: int, I: int, seed: int = 0):
    from refimpl.nn import model as model_mod
    from refimpl.algorithms.chunked import fptt_model_grads
    from refimpl.algorithms.online import online_grads
    model, params = model_mod.make_model("gru", I, H, 2, seed=seed)
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((T, B, I)), rng.standard_normal((T, B, 2))
    if algorithm == "bptt":
        return lambda: model_mod.bptt(model, params, x, y, loss="mse")
    if algorithm == "fptt":              # no residual check (long T at default init loses the signal: timed anyway)
        return lambda: fptt_model_grads(model, params, x, y, "mse", check=False, input_grad=False)
    return lambda: online_grads(model, params, x, y, "mse", algorithm=algorithm)


def _ep_call(algorithm: str, T: int, H: int, B: int, I: int, seed: int = 0):
    from refimpl import ep
    net, params = ep.make_ep_net("prototypical", (I, H, 4), seed=seed)
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (B, I))
    y = np.eye(4)[rng.integers(4, size=B)]
    if algorithm == "ep":
        return lambda: ep.ep_grads(net, params, x, y, T=T, K=max(1, T // 10), beta=0.1)
    return lambda: ep.bptt_grads(net, params, x, y, T=T)             # BPTT through the whole free phase


def measure(call) -> tuple[float, int]:
    """(seconds, peak bytes of NumPy allocations) of one call, after one untimed, untraced call (nothing is compiled
    while measured). What the interpreter keeps for reuse (free lists of small objects, bounded, filled by the longest
    run so far) would otherwise count as growth in T: study() warms each curve up at 4× its longest T first."""
    with np.errstate(all="ignore"):
        call()
        tracemalloc.start()
        t0 = time.perf_counter()
        call()
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return seconds, peak


def _slope(xs, ys) -> float:
    xs, ys = np.log(np.asarray(xs, float)), np.log(np.maximum(np.asarray(ys, float), 1e-12))
    return float(np.polyfit(xs[-3:], ys[-3:], 1)[0]) if len(xs) >= 2 else float("nan")


def study(quick: bool = False) -> dict:
    g = GRID["quick" if quick else "full"]
    curves = []
    for kind, algos, make in (("gru", SEQUENCE_ALGORITHMS, _sequence_call), ("ep", ("ep", "bptt"), _ep_call)):
        for a in algos:
            H_T = g["H_for_T"] if kind == "gru" else 16
            with np.errstate(all="ignore"):
                make(a, 4 * max(g["T"]), H_T, g["B"], g["I"])()  # warm up beyond the longest T (see measure)
            vs_T = [measure(make(a, T, H_T, g["B"], g["I"])) for T in g["T"]]
            curve = {"model": kind, "algorithm": a, "T": list(g["T"]), "H_for_T": g["H_for_T"] if kind == "gru" else 16,
                     "time_vs_T": [s for s, _ in vs_T], "peak_vs_T": [p for _, p in vs_T],
                     "slope_time_T": _slope(g["T"], [s for s, _ in vs_T]),
                     "slope_peak_T": _slope(g["T"], [p for _, p in vs_T])}
            if kind == "gru":
                Hs = [H for H in g["H"] if H <= g["max_H"].get(a, H)]
                vs_H = [measure(make(a, g["T_for_H"], H, g["B"], g["I"])) for H in Hs]
                curve.update(H=Hs, T_for_H=g["T_for_H"], time_vs_H=[s for s, _ in vs_H],
                             peak_vs_H=[p for _, p in vs_H], slope_time_H=_slope(Hs, [s for s, _ in vs_H]))
            curves.append(curve)
    return {"grid": g, "curves": curves}


def format_study(s: dict) -> str:
    g = s["grid"]
    lines = [f"Scaling (NumPy reference; gru H = {g['H_for_T']} for the T sweep, T = {g['T_for_H']} for the H sweep, "
             f"B = {g['B']}; EP: prototypical net, T = relaxation steps): fitted log-log slopes over the last points.",
             "", "| model | algorithm | " + " | ".join(f"peak T={T}" for T in g["T"])
             + " | memory ∝ T^b | time ∝ T^a | time ∝ H^c |", "|---|---|" + "---:|" * len(g["T"]) + "---:|---:|---:|"]
    for c in s["curves"]:
        peaks = " | ".join(f"{p / 2**10:,.0f} KiB" for p in c["peak_vs_T"])
        h = f"{c['slope_time_H']:.2f}" if "slope_time_H" in c else "—"
        name = "bptt (through the free phase)" if c["model"] == "ep" and c["algorithm"] == "bptt" else c["algorithm"]
        lines.append(f"| {c['model']} | {name} | {peaks} | {c['slope_peak_T']:.2f} | {c['slope_time_T']:.2f} | {h} |")
    return "\n".join(lines)
