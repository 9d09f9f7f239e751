"""The GDU property made visible (Ernoult et al. 2019): EP's per-step updates next to BPTT's gradients.

    ep_curves(...)   one batch: per-step neuron updates ΔEP_s(t) vs BPTT neuron gradients ∇BPTT_s(t), and cumulative
                     EP weight updates vs cumulative (truncated) BPTT gradients, with the RMSE metric per layer and
                     per weight matrix (refimpl.ep, eqs. (9), (13), (14)); JSON and a PNG
    ep_recipe(...)   the sign-agreement "recipe" over several random mini-batches (eq. (15)): per weight matrix the
                     percentage of entries where the EP update and the BPTT gradient have the same sign, mean ± std —
                     for tuning T, K and β

Data: the toy model (5 inputs) gets the paper's toy data (x ~ U[0,1]^5, one random class for the whole batch); the
other networks get batches of scikit-learn's 8×8 digits (tasks/digits.py), so their sizes start with 64 inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks import make_task

from .. import ep
from ..errors import UnsupportedError
from ..plotting import save_figure


def _batch(net, n_out: int, batch: int, rng: np.random.Generator):
    if net.kind == "toy":
        x = rng.uniform(0.0, 1.0, (batch, net.sizes[0]))
        y = np.zeros((batch, n_out))
        y[:, rng.integers(n_out)] = 1.0                      # one class for the whole batch, as the paper's toy runs
        return x.astype(net.dtype), y.astype(net.dtype)
    task = make_task("digits", seed=0)
    if task.n_in != net.sizes[0] or task.n_out != n_out:
        raise UnsupportedError(f"the {net.kind} network needs sizes starting with {task.n_in} inputs and ending with "
                               f"{task.n_out} outputs for the digits data, got {net.sizes}")
    idx = rng.choice(task.train.n, size=batch, replace=False)
    y = np.zeros((batch, n_out))
    y[np.arange(batch), task.train.y[idx]] = 1.0
    return task.train.x[idx].astype(net.dtype), y.astype(net.dtype)


def ep_curves(kind: str, sizes, *, T: int, K: int, beta: float, batch: int = 20, seed: int = 0, **net_options):
    """GDU curves and RMSE on one batch; returns a JSON-ready dict."""
    net, params = ep.make_ep_net(kind, sizes, seed=seed, **net_options)
    x, y = _batch(net, net.sizes[-1], batch, np.random.default_rng(seed + 1))
    c = ep.gdu_curves(net, params, x, y, T=T, K=K, beta=beta)
    layers = [{"layer": l + 1, "rmse": ep.rmse(n, d)}
              for l, (n, d) in enumerate(zip(c["bptt_neurons"], c["ep_neurons"]))]
    weights = [{"param": k, "rmse": ep.rmse(c["bptt_params_cumulative"][k], c["ep_params_cumulative"][k])}
               for k in params]
    return {"config": {"kind": kind, "sizes": list(net.sizes), "T": T, "K": K, "beta": beta, "batch": batch,
                       "seed": seed, "activation": net.activation, "dt": net.dt},
            "loss": float(c["loss"]), "neurons": layers, "weights": weights,
            "curves": {"ep_neurons": [a.tolist() for a in c["ep_neurons"]],
                       "bptt_neurons": [a.tolist() for a in c["bptt_neurons"]],
                       "ep_params_cumulative": {k: v.reshape(K, -1)[:, :5].tolist()
                                                for k, v in c["ep_params_cumulative"].items()},
                       "bptt_params_cumulative": {k: v.reshape(K, -1)[:, :5].tolist()
                                                  for k, v in c["bptt_params_cumulative"].items()}}}


def plot_curves(report: dict, out_path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cur = report["curves"]
    L = len(cur["ep_neurons"])
    names = list(cur["ep_params_cumulative"])
    fig, axes = plt.subplots(2, max(L, len(names)), figsize=(3.6 * max(L, len(names)), 6.2), squeeze=False)
    for l in range(L):
        ax = axes[0][l]
        ep_n, bp_n = np.array(cur["ep_neurons"][l]), np.array(cur["bptt_neurons"][l])
        for j in range(min(4, ep_n.shape[1])):
            line, = ax.plot(bp_n[:, j], "-", alpha=0.8)
            ax.plot(ep_n[:, j], "--", color=line.get_color())
        ax.set_title(f"layer {l + 1} neurons (RMSE {report['neurons'][l]['rmse'][0]:.2g})", fontsize=9)
        ax.set_xlabel("t (BPTT: from the end; EP: nudged step)")
    for j, k in enumerate(names):
        ax = axes[1][j]
        ep_p, bp_p = np.array(cur["ep_params_cumulative"][k]), np.array(cur["bptt_params_cumulative"][k])
        for i in range(ep_p.shape[1]):
            line, = ax.plot(bp_p[:, i], "-", alpha=0.8)
            ax.plot(ep_p[:, i], "--", color=line.get_color())
        r = next(w["rmse"][0] for w in report["weights"] if w["param"] == k)
        ax.set_title(f"{k} cumulative (RMSE {r:.2g})", fontsize=9)
        ax.set_xlabel("t")
    for row in axes:
        for ax in row:
            if not ax.lines:
                ax.axis("off")
            ax.grid(alpha=0.3)
    cfg = report["config"]
    fig.suptitle(f"GDU: BPTT (solid) vs EP (dashed) — {cfg['kind']} {cfg['sizes']}, T={cfg['T']}, K={cfg['K']}, "
                 f"β={cfg['beta']}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_path, dpi=100)


def ep_recipe(kind: str, sizes, *, T: int, K: int, beta: float, batches: int = 20, batch: int = 20, seed: int = 0,
              **net_options) -> dict:
    """Sign agreement between the full EP update (K nudged steps) and the BPTT gradient truncated to K steps, per
    weight matrix, mean ± std over `batches` random mini-batches."""
    net, params = ep.make_ep_net(kind, sizes, seed=seed, **net_options)
    rng = np.random.default_rng(seed + 2)
    rows = {k: [] for k in params}
    for _ in range(batches):
        x, y = _batch(net, net.sizes[-1], batch, rng)
        _, g_ep, _ = ep.ep_grads(net, params, x, y, T=T, K=K, beta=beta)
        _, g_bptt = ep.bptt_grads(net, params, x, y, T=T, K=K)
        for k in params:
            rows[k].append(ep.sign_agreement(g_bptt[k], g_ep[k]))
    table = [{"param": k, **{f"{m}_mean": float(np.mean([r[m] for r in rs])) for m in ("same", "zero", "total")},
              **{f"{m}_std": float(np.std([r[m] for r in rs])) for m in ("same", "zero", "total")}}
             for k, rs in rows.items()]
    return {"config": {"kind": kind, "sizes": list(net.sizes), "T": T, "K": K, "beta": beta, "batches": batches,
                       "batch": batch, "seed": seed}, "table": table}


def format_recipe(report: dict) -> str:
    cfg = report["config"]
    lines = [f"sign agreement of EP (K={cfg['K']} nudged steps, β={cfg['beta']}) with BPTT truncated to K steps, "
             f"{cfg['kind']} {cfg['sizes']}, T={cfg['T']}, {cfg['batches']} batches of {cfg['batch']}",
             f"{'param':<8} {'% same sign':>16} {'% both zero':>14} {'% total':>16}"]
    for r in report["table"]:
        lines.append(f"{r['param']:<8} {r['same_mean']:>9.1f} ± {r['same_std']:<4.1f} {r['zero_mean']:>8.1f} ± "
                     f"{r['zero_std']:<3.1f} {r['total_mean']:>9.1f} ± {r['total_std']:<4.1f}")
    return "\n".join(lines)
