"""The GDU property made visible (Ernoult et al. 2019): EP's per-step updates next to BPTT's gradients.

    ep_curves(...)   one batch: per-step neuron updates ΔEP_s(t) vs BPTT neuron gradients ∇BPTT_s(t), and cumulative
                     EP weight updates vs cumulative (truncated) BPTT gradients, with the RMSE metric per layer and
                     per weight matrix (refimpl.ep, eqs. (9), (13), (14)); JSON and a PNG
    ep_recipe(...)   the sign-agreement "recipe" over several random mini-batches (eq. (15)): per weight matrix the
                     percentage of entries where the EP update and the BPTT gradient have the same sign, mean ± std —
                     for tuning T, K and β

The networks: the layered ones of refimpl/ep/networks.py (toy, energy, prototypical; `sizes` input first) and the
convolutional one of refimpl/ep/conv.py (`conv`: no sizes — its shape comes from the images, its options are
channels, kernel, pool and activation; kernel 3 and pools (2, 1) on 8×8 images, kernel 5 and pools 2 on 28×28, as
refimpl/training/problems.py trains it).
Data: the toy model (5 inputs) gets the paper's toy data (x ~ U[0,1]^5, one random class for the whole batch); the
other networks get batches of scikit-learn's 8×8 digits (tasks/digits.py, 64 inputs), or of MNIST (mnist-static, 784
inputs) when `data_dir` names the IDX files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks import make_task

from .. import ep
from ..ep import conv as ep_conv
from ..errors import UnsupportedError
from ..plotting import save_figure


#: The convolutional network's shape by image side (as refimpl/training/problems.py trains it).
CONV_SHAPES = {8: {"kernel": 3, "pool": (2, 1)}, 28: {"kernel": 5, "pool": 2}}


def data_name(kind: str, data_dir=None) -> str:
    """The data a network is fed: "toy", "digits" or "mnist-static" (when data_dir is given)."""
    return "toy" if kind == "toy" else ("mnist-static" if data_dir is not None else "digits")


def _task(kind: str, data_dir=None):
    return make_task(data_name(kind, data_dir), seed=0, data_dir=data_dir)


def make_net(kind: str, sizes=None, *, seed: int = 0, data_dir=None, **net_options):
    """(family module, net, params): a layered network of `sizes`, or the convolutional one shaped by the data."""
    if kind != "conv":
        net, params = ep.make_ep_net(kind, sizes, seed=seed, **net_options)
        return ep, net, params
    if sizes is not None:
        raise UnsupportedError("--sizes sets the layer widths of the layered networks; the conv network's shape comes "
                               "from the images: give -n channels=C2,C1 (input side first) instead")
    task = _task(kind, data_dir)
    side = int(round(np.sqrt(task.n_in)))
    options = {**CONV_SHAPES.get(side, CONV_SHAPES[28]), **net_options}
    net, params = ep_conv.make_conv_net((1, side, side), n_out=task.n_out, seed=seed, **options)
    return ep_conv, net, params


def _batch(kind: str, net, batch: int, rng: np.random.Generator, data_dir=None):
    if kind == "toy":
        n_out = net.sizes[-1]
        x = rng.uniform(0.0, 1.0, (batch, net.sizes[0]))
        y = np.zeros((batch, n_out))
        y[:, rng.integers(n_out)] = 1.0                      # one class for the whole batch, as the paper's toy runs
        return x.astype(net.dtype), y.astype(net.dtype)
    task = _task(kind, data_dir)
    if kind != "conv" and (task.n_in != net.sizes[0] or task.n_out != net.sizes[-1]):
        raise UnsupportedError(f"the {net.kind} network needs sizes starting with {task.n_in} inputs and ending with "
                               f"{task.n_out} outputs for the {task.name} data, got {net.sizes}; e.g. --sizes "
                               f"{task.n_in},64,{task.n_out}")
    if batch > task.train.n:
        raise UnsupportedError(f"--batch {batch} is more than the {task.train.n} training examples of {task.name}; "
                               f"use --batch ≤ {task.train.n}")
    idx = rng.choice(task.train.n, size=batch, replace=False)
    y = np.zeros((batch, task.n_out))
    y[np.arange(batch), task.train.y[idx]] = 1.0
    x = task.train.x[idx]
    if kind == "conv":
        x = x.reshape((batch,) + net.input_shape)
    return x.astype(net.dtype), y.astype(net.dtype)


def _config(kind, net, T, K, beta, seed, data_dir) -> dict:
    shape = ({"sizes": list(net.sizes), "dt": net.dt} if kind != "conv" else
             {"input_shape": list(net.input_shape), "channels": list(net.channels), "kernel": list(net.kernel),
              "pool": list(net.pool)})
    return {"kind": kind, **shape, "T": T, "K": K, "beta": beta, "seed": seed, "activation": net.activation,
            "data": data_name(kind, data_dir)}


def ep_curves(kind: str, sizes=None, *, T: int, K: int, beta: float, batch: int = 20, seed: int = 0, data_dir=None,
              **net_options):
    """GDU curves and RMSE on one batch; returns a JSON-ready dict."""
    family, net, params = make_net(kind, sizes, seed=seed, data_dir=data_dir, **net_options)
    x, y = _batch(kind, net, batch, np.random.default_rng(seed + 1), data_dir)
    c = family.gdu_curves(net, params, x, y, T=T, K=K, beta=beta)
    layers = [{"layer": l + 1, "rmse": ep.rmse(n, d)}
              for l, (n, d) in enumerate(zip(c["bptt_neurons"], c["ep_neurons"]))]
    weights = [{"param": k, "rmse": ep.rmse(c["bptt_params_cumulative"][k], c["ep_params_cumulative"][k])}
               for k in params]
    return {"config": {**_config(kind, net, T, K, beta, seed, data_dir), "batch": batch},
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
    shape = cfg["sizes"] if "sizes" in cfg else f"channels {cfg['channels']}"
    fig.suptitle(f"GDU: BPTT (solid) vs EP (dashed) — {cfg['kind']} {shape} on {cfg['data']}, T={cfg['T']}, "
                 f"K={cfg['K']}, β={cfg['beta']}", fontsize=10)
    return save_figure(fig, out_path, dpi=100)


def ep_recipe(kind: str, sizes=None, *, T: int, K: int, beta: float, batches: int = 20, batch: int = 20,
              seed: int = 0, data_dir=None, **net_options) -> dict:
    """Sign agreement between the full EP update (K nudged steps) and the BPTT gradient truncated to K steps, per
    weight matrix, mean ± std over `batches` random mini-batches."""
    family, net, params = make_net(kind, sizes, seed=seed, data_dir=data_dir, **net_options)
    rng = np.random.default_rng(seed + 2)
    rows = {k: [] for k in params}
    for _ in range(batches):
        x, y = _batch(kind, net, batch, rng, data_dir)
        _, g_ep, _ = family.ep_grads(net, params, x, y, T=T, K=K, beta=beta)
        _, g_bptt = family.bptt_grads(net, params, x, y, T=T, K=K)
        for k in params:
            rows[k].append(ep.sign_agreement(g_bptt[k], g_ep[k]))
    table = [{"param": k, **{f"{m}_mean": float(np.mean([r[m] for r in rs])) for m in ("same", "zero", "total")},
              **{f"{m}_std": float(np.std([r[m] for r in rs])) for m in ("same", "zero", "total")}}
             for k, rs in rows.items()]
    return {"config": {**_config(kind, net, T, K, beta, seed, data_dir), "batches": batches, "batch": batch},
            "table": table}


def format_recipe(report: dict) -> str:
    cfg = report["config"]
    shape = cfg["sizes"] if "sizes" in cfg else f"channels {cfg['channels']}"
    lines = [f"sign agreement of EP (K={cfg['K']} nudged steps, β={cfg['beta']}) with BPTT truncated to K steps, "
             f"{cfg['kind']} {shape} on {cfg['data']}, T={cfg['T']}, {cfg['batches']} batches of {cfg['batch']}",
             f"{'param':<8} {'% same sign':>16} {'% both zero':>14} {'% total':>16}"]
    for r in report["table"]:
        lines.append(f"{r['param']:<8} {r['same_mean']:>9.1f} ± {r['same_std']:<4.1f} {r['zero_mean']:>8.1f} ± "
                     f"{r['zero_std']:<3.1f} {r['total_mean']:>9.1f} ± {r['total_std']:<4.1f}")
    return "\n".join(lines)
