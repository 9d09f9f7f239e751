r"""The whole training step, timed: forward, loss, backward and optimizer update of the seeds' models, per learning
algorithm and backend, beside a jit-compiled JAX peer (and PyTorch for the GRU / LSTM stacks) — `python -m bench.step`.

Models (float32; shapes of the seeds' recipes, refimpl/training/recipes.py):

    copy        the online-LRU copy model (`copy-lru`): lru, I = 9 (7 bits + blank + delimiter), N = 64, O = 7,
                4 layers, encoder d_model = 128, pre-LayerNorm, GLU blocks, residual, pooling none; the copy task's
                batch (tasks/copy.py: 20 vectors of 7 bits, waiting 7: T = 48), B = 50, bce weighted over the recall
                window; AdamW as the recipe (lr 1e-3, no decay, recurrent lr ×0.5, clip 1, cosine)   bptt, online
    fptt        the FPTT paper's model (`fptt-digits`): lru, 4 layers of N = 32, encoder d_model = 32, MLP blocks,
                cumulative-mean pooling, I = 1, 10 classes, T = 64, B = 32, ce at every step (weights 1/T);
                AdamW as the recipe (lr 3e-3, decay 0.01, recurrent lr ×0.5, clip 1, cosine)          bptt, fptt
                (fptt twice: schedule 'passes', the default, L+1 passes; `fptt:stored`, schedule 'stored')
    gru2 lstm2  2-layer GRU / LSTM, H = 128, I = 16, O = 10, B = 32, T = 64, per-step mse; plain Adam (lr 1e-3)  bptt
    gru2-h32 lstm2-h32   the same at H = 32                                                            bptt, snap1
                (snap1 costs O(S·P) per step, so it is timed at the small width, beside bptt at that width)

How a step of ours runs — one function per (model, algorithm, backend), `our_step`:
    bptt, when refimpl.training.device exists: its DeviceStep (layers, loss and optimizer on the backend's arrays;
          the clock stops after the backend's synchronize); the online rules on mlx / cupy also (what `train` runs);
    otherwise (every other algorithm, and the rules on numpy / numba): refimpl.api.model_grads(..., algorithm,
          backend) — the recurrent kernels on the backend, the rest NumPy — then refimpl.optim.step. The row's `path`
          says which.
Peers (bench/peers_step.py): JAX (value_and_grad + the same update, one jitted function) for every model, PyTorch for
the GRU / LSTM stacks; before timing, each peer's loss on refimpl's initial parameters is compared with refimpl's
(≤ 1e-4 relative, float32, or the peer is refused) and the JAX gradient with refimpl's BPTT gradient (reported).

Timing: one thread count for everyone (--threads, default 1: Numba, OpenMP, BLAS, torch and XLA are told before they
are imported); every contender of a model is warmed up once (Numba compilation, MLX graph building, JAX jit: the
"first call" column), then `repeats` rounds call every contender once each, interleaved (a, b, c, a, b, c, …) so that
a machine shared with other work slows them alike; median of the rounds. Each step carries its parameters and
optimizer state forward, as in training.

Outputs: JSON (--out, default runs/bench/step.json: machine record, rows, goals) and a Markdown table (ms per step,
ratio to the JAX peer's step of the same model, ratio to our own bptt step of the same backend for the other
algorithms, mlx / numba), printed and written to docs/bench/step.md (--md; with --quick, beside the JSON).

    python -m bench.step                 every model × algorithm × backend, peers, median of 7
    python -m bench.step --quick         tiny shapes, numpy only, 1 repeat, no peers (the smoke test)
    python -m bench.step --model copy --backend numba --threads 2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .goals import interleaved_times           # bench.goals and bench.run import no numpy at module level
from .run import _write_atomic, set_threads

BACKENDS = ("numpy", "numba", "mlx", "cupy")
REL_TOL = 1e-4          # a peer's loss on the same parameters and inputs, relative to refimpl's (float32)

# name → (make_model options, shape, loss, algorithms, optimizer settings); "quick" shrinks the shapes.
_COPY_OPT = dict(name="adamw", lr=1e-3, weight_decay=0.0, rec_lr_factor=0.5, clip_norm=1.0, schedule="cosine",
                 total_steps=10000)
_FPTT_OPT = dict(name="adamw", lr=3e-3, weight_decay=0.01, rec_lr_factor=0.5, clip_norm=1.0, schedule="cosine",
                 total_steps=10000)
_RNN_OPT = dict(name="adam", lr=1e-3, weight_decay=0.0, rec_lr_factor=1.0, clip_norm=None, schedule="constant")
MODELS = {
    "copy": dict(cell="lru", model=dict(n_hidden=64, layers=4, encoder=True, d_model=128, norm="layer", ffn="glu",
                                        residual=True, pooling="none"),
                 task="copy", shape=dict(seq_len=20, bit_width=7, waiting_time=7, B=50), loss="bce",
                 algorithms=("bptt", "online"), opt=_COPY_OPT,
                 quick=dict(model=dict(n_hidden=4, layers=2, d_model=8), shape=dict(seq_len=2, bit_width=2,
                                                                                    waiting_time=1, B=2))),
    "fptt": dict(cell="lru", model=dict(n_hidden=32, layers=4, encoder=True, d_model=32, ffn="mlp",
                                        pooling="cumulative_mean", r_min=0.9, r_max=0.999),
                 task="labels", shape=dict(T=64, B=32, I=1, O=10), loss="ce",
                 algorithms=("bptt", "fptt", "fptt:stored"), opt=_FPTT_OPT,
                 quick=dict(model=dict(n_hidden=4, layers=2, d_model=4), shape=dict(T=6, B=2))),
}
for _cell in ("gru", "lstm"):
    for _suffix, _H, _algos in (("", 128, ("bptt",)), ("-h32", 32, ("bptt", "snap1"))):
        MODELS[f"{_cell}2{_suffix}"] = dict(
            cell=_cell, model=dict(n_hidden=_H, layers=2), task="regression", shape=dict(T=64, B=32, I=16, O=10),
            loss="mse", algorithms=_algos, opt=_RNN_OPT,
            quick=dict(model=dict(n_hidden=4), shape=dict(T=5, B=2, I=3, O=2)))


@dataclass
class Problem:
    """One model with its batch and optimizer: what every contender of a row group trains on."""
    name: str
    model: object
    params: dict
    x: object
    y: object
    mask: object
    loss: str
    opt: object
    algorithms: tuple
    shape: dict = field(default_factory=dict)


def make_problem(name: str, quick: bool = False, seed: int = 0) -> Problem:
    """The model `name` of MODELS (float32) with its initial parameters, one batch and the optimizer config."""
    import numpy as np
    from refimpl.api import make_model
    from refimpl.optim import OptimConfig
    spec = MODELS[name]
    mopts = {**spec["model"], **(spec["quick"]["model"] if quick else {})}
    shape = {**spec["shape"], **(spec["quick"]["shape"] if quick else {})}
    rng = np.random.default_rng(seed)
    if spec["task"] == "copy":                       # tasks/copy.py's batch; the recall window weighted 1/L
        from tasks.copy import make_split
        s = make_split(shape["B"], shape["seq_len"], shape["bit_width"], shape["waiting_time"], rng)
        x, y = s.x.astype(np.float32), s.y.astype(np.float32)
        mask = (s.mask / np.maximum(s.mask.sum(0, keepdims=True), 1)).astype(np.float32)
        n_in, n_out = shape["bit_width"] + 2, shape["bit_width"]
        shape = dict(T=x.shape[0], B=shape["B"], I=n_in, O=n_out)
    elif spec["task"] == "labels":                   # one label per sequence, scored at every step with weight 1/T
        T, B = shape["T"], shape["B"]
        n_in, n_out = shape["I"], shape["O"]
        x = rng.standard_normal((T, B, n_in)).astype(np.float32)
        y = np.broadcast_to(rng.integers(0, n_out, B), (T, B)).copy()
        mask = np.full((T, B), 1.0 / T, np.float32)
    else:                                            # per-step regression
        T, B, n_in, n_out = shape["T"], shape["B"], shape["I"], shape["O"]
        x = rng.standard_normal((T, B, n_in)).astype(np.float32)
        y = rng.standard_normal((T, B, n_out)).astype(np.float32)
        mask = None
    model, params = make_model(spec["cell"], n_in, mopts.pop("n_hidden"), n_out, seed=seed, dtype="float32", **mopts)
    return Problem(name, model, params, x, y, mask, spec["loss"], OptimConfig(**spec["opt"]), spec["algorithms"],
                   shape=dict(shape, H=model.n_hidden, L=model.layers))


# ----------------------------------------------------------------------------------------------------------------
# Our step: one function per (model, algorithm, backend)

class Skip(Exception):
    """A contender that cannot run here; the message is the reason."""


def device_step_available() -> bool:
    return importlib.util.find_spec("refimpl.training.device") is not None


def _device_step(p: Problem, backend: str, algorithm: str = "bptt"):
    """bptt (or an online rule) through refimpl.training.device.DeviceStep: everything in the backend's arrays; the
    clock stops after the backend's synchronize on the step's outputs. (The loss stays on the device: no report()
    inside the timing.)"""
    from refimpl.registry import load_backend
    from refimpl.training.device import DeviceStep
    b = load_backend(backend)
    step = DeviceStep(p.model, p.opt, backend, p.loss, algorithm)
    params, state = step.init(p.params)
    x, y = step.to_device(p.x), step.to_device(p.y)
    mask = None if p.mask is None else step.to_device(p.mask)
    carry = {"params": params, "state": state}

    def run():
        carry["params"], carry["state"], loss, finite = step(carry["params"], carry["state"], x, y, mask)
        b.synchronize((carry["params"], carry["state"], loss, finite))
        return loss
    return run


def _api_step(p: Problem, algorithm: str, backend: str):
    """refimpl.api.model_grads on `backend` (the kernels there; layers, loss, optimizer in NumPy) + optim.step.
    `algorithm` may name a variant: "fptt:stored" is fptt with schedule='stored'."""
    from refimpl import optim
    from refimpl.api import model_grads
    carry = {"params": dict(p.params), "state": optim.init_state(p.params, p.opt)}
    algorithm, _, schedule = algorithm.partition(":")
    options = {"schedule": schedule} if schedule else {}

    def run():
        loss, grads = model_grads(p.model, carry["params"], p.x, p.y, loss=p.loss, mask=p.mask,
                                  algorithm=algorithm, backend=backend, **options)
        carry["params"], carry["state"], _ = optim.step(carry["params"], grads, carry["state"], p.opt)
        return loss
    return run


def our_step(p: Problem, algorithm: str, backend: str):
    """(a function doing one whole training step of `p` by `algorithm` on `backend`, the path it takes), or Skip."""
    from refimpl.registry import load_backend
    b = load_backend(backend)
    if not b.available:
        raise Skip(b.reason)
    if algorithm == "bptt" and device_step_available():
        return _device_step(p, backend), "DeviceStep"
    if not b.on_host and algorithm in _device_algorithms():     # what `train` runs on a device (problems.on_device)
        return _device_step(p, backend, algorithm), "DeviceStep"
    return _api_step(p, algorithm, backend), "model_grads + optim.step"


def _device_algorithms() -> tuple:
    """The algorithms DeviceStep runs (refimpl.training.device.DEVICE_ALGORITHMS; bptt alone where it has none)."""
    from refimpl.training import device
    return getattr(device, "DEVICE_ALGORITHMS", ("bptt",))


# ----------------------------------------------------------------------------------------------------------------
# Peers: built, then checked against refimpl on the same parameters and inputs

def _reference_loss_and_grads(p: Problem):
    """refimpl's BPTT loss and gradient at the initial parameters (NumPy, float32)."""
    from refimpl.api import model_grads
    return model_grads(p.model, p.params, p.x, p.y, loss=p.loss, mask=p.mask, algorithm="bptt", backend="numpy")


def peer_steps(p: Problem, which=("jax", "torch")) -> dict:
    """{peer: (step fn, check record)} or {peer: Skip reason string}."""
    import numpy as np
    from . import peers_step
    ref_loss, ref_grads = _reference_loss_and_grads(p)
    out = {}
    for name in which:
        builder = {"jax": peers_step.jax_step, "torch": peers_step.torch_step}[name]
        if name == "torch" and p.model.cell not in ("gru", "lstm"):
            continue
        try:
            peer = builder(p.model, p.params, p.x, p.y, p.mask, p.loss, p.opt)
        except ImportError as e:
            out[name] = f"{name} is not installed (optional; never installed by make test): {e}"
            continue
        except NotImplementedError as e:
            out[name] = str(e)
            continue
        loss = peer.loss()
        rel = abs(loss - ref_loss) / max(abs(ref_loss), 1e-30)
        check = {"loss": loss, "refimpl_loss": float(ref_loss), "loss_rel_err": rel}
        if peer.grads is not None:
            g = peer.grads()
            check["grad_rel_err"] = max(float(np.linalg.norm(g[k] - ref_grads[k]) /
                                              max(np.linalg.norm(ref_grads[k]), 1e-30)) for k in p.params)
        if not rel <= REL_TOL:
            out[name] = f"loss check FAILED (relative error {rel:.1e} > {REL_TOL:.0e}): not timed"
            continue
        out[name] = (peer.step, check)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Timing

def _interleaved(fns: dict, repeats: int) -> dict:
    """{label: {first_call_s, times}}: one warm-up call each (timed as the first call), then `repeats` rounds.
    A contender whose warm-up call raises gets {failed: the error} and is left out of the rounds."""
    first, value, failed = {}, {}, {}
    for k, fn in list(fns.items()):
        t0 = time.perf_counter()
        try:
            value[k] = fn()
        except Exception as e:                  # reported in its row, the others still timed
            failed[k] = {"failed": f"{type(e).__name__}: {e}"}
            fns = {j: f for j, f in fns.items() if j != k}
            continue
        first[k] = time.perf_counter() - t0
    times = interleaved_times(fns, repeats)
    return {**failed, **{k: {"first_call_s": first[k], "times": times[k], "first_loss": value[k]} for k in fns}}


def measure_model(name: str, backends=BACKENDS, peers=("jax", "torch"), repeats: int = 7, quick: bool = False,
                  log=print) -> list[dict]:
    """Every contender of model `name`: our (algorithm × backend) steps and the peers, interleaved."""
    p = make_problem(name, quick)
    base = {"model": name, "shape": p.shape, "loss": p.loss, "optimizer": p.opt.name}
    rows, fns = [], {}
    for algorithm in p.algorithms:
        for backend in backends:
            row = {**base, "algorithm": algorithm, "who": backend, "kind": "ours"}
            try:
                fn, path = our_step(p, algorithm, backend)
            except Skip as e:
                rows.append({**row, "skipped": str(e)})
                continue
            except Exception as e:              # e.g. a DeviceStep that refuses this model: reported, not fatal
                rows.append({**row, "skipped": f"failed: {type(e).__name__}: {e}"})
                continue
            rows.append({**row, "path": path})
            fns[(algorithm, backend)] = fn
    found = peer_steps(p, peers) if peers else {}
    for peer, got in found.items():
        row = {**base, "algorithm": "bptt", "who": peer, "kind": "peer"}
        if isinstance(got, str):
            rows.append({**row, "skipped": got})
            continue
        fns[("bptt", peer)] = got[0]
        rows.append({**row, "path": "jit(value_and_grad + update)" if peer == "jax" else "autograd + torch.optim",
                     "check": got[1]})
    log(f"{name}: {len(fns)} contenders, {repeats} interleaved rounds")
    ref_loss = float(_reference_loss_and_grads(p)[0])
    timed = _interleaved(fns, repeats)
    for r in rows:
        t = timed.get((r["algorithm"], r["who"]))
        if t and "failed" in t:
            r["skipped"] = f"failed: {t['failed']}"
        elif t:
            first = _as_float(t["first_loss"])       # the first step's loss: at the initial parameters, as refimpl's
            r.update(first_loss=first, first_loss_rel_err=abs(first - ref_loss) / max(abs(ref_loss), 1e-30))
            r.update(first_call_s=t["first_call_s"], median_s=statistics.median(t["times"]), min_s=min(t["times"]),
                     max_s=max(t["times"]), repeats=repeats)
    _ratios(rows)
    return rows


def _as_float(v) -> float:
    """A loss as a Python float, whatever array it is (NumPy, mx.array, cupy, jax, torch) or a number."""
    if hasattr(v, "get") and not isinstance(v, dict):           # cupy
        v = v.get()
    try:
        return float(v)
    except TypeError:
        return float(v.item())


def _ratios(rows) -> None:
    """× JAX (bptt peer of the same model), × own bptt (same backend), mlx / numba (same algorithm)."""
    t = {(r["algorithm"], r["who"]): r["median_s"] for r in rows if "median_s" in r}
    for r in rows:
        if "median_s" not in r:
            continue
        if ("bptt", "jax") in t and r["who"] != "jax":
            r["x_jax"] = r["median_s"] / t["bptt", "jax"]
        if r["kind"] == "ours" and r["algorithm"] != "bptt" and ("bptt", r["who"]) in t:
            r["x_own_bptt"] = r["median_s"] / t["bptt", r["who"]]
        if r["who"] == "mlx" and (r["algorithm"], "numba") in t:
            r["x_numba"] = r["median_s"] / t[r["algorithm"], "numba"]


def goals(rows) -> list[dict]:
    """The speed goals (ratios), met or not; None where a contender is missing."""
    def get(model, algorithm, who, key):
        for r in rows:
            if (r["model"], r["algorithm"], r["who"]) == (model, algorithm, who):
                return r.get(key)
        return None

    out = [("numba copy bptt / JAX copy bptt", 1.0, get("copy", "bptt", "numba", "x_jax")),
           ("numba copy online / JAX copy bptt", 1.5, get("copy", "online", "numba", "x_jax")),
           ("numba fptt-model fptt, schedule 'stored' / its own bptt", 2.0,
            get("fptt", "fptt:stored", "numba", "x_own_bptt")),
           ("numba fptt-model fptt, schedule 'passes' / its own bptt (L+1 passes, memory flat in T)", None,
            get("fptt", "fptt", "numba", "x_own_bptt"))]
    mlx = [(r["x_numba"], f"{r['model']} {r['algorithm']}") for r in rows if "x_numba" in r]
    worst = max(mlx) if mlx else (None, "")
    out.append((f"mlx / numba, whole step (worst row{': ' + worst[1] if worst[1] else ''})", 2.0, worst[0]))
    return [{"goal": g, "at_most": lim, "value": v, "met": None if v is None or lim is None else v <= lim}
            for g, lim, v in out]


# ----------------------------------------------------------------------------------------------------------------
# Output

def _ms(s):
    return f"{1e3 * s:.3g}"


def _x(v):
    return "" if v is None else f"{v:.2f}×"


def format_table(rows) -> str:
    lines = ["| model | T×B×I×H×L | algorithm | who | ms / step | min…max ms | first call ms | × JAX bptt | "
             "× own bptt | mlx / numba | path / note |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        s = r["shape"]
        sz = "×".join(str(s[k]) for k in ("T", "B", "I", "H", "L"))
        head = f"| {r['model']} | {sz} | {r['algorithm']} | {r['who']} |"
        if "skipped" in r:
            lines.append(f"{head} | | | | | | skipped: {r['skipped']} |")
            continue
        note = r.get("path", "")
        if "first_loss_rel_err" in r and r["kind"] == "ours":
            note += f"; first loss rel. err {r['first_loss_rel_err']:.0e}"
        if "check" in r:
            c = r["check"]
            note += f"; loss rel. err {c['loss_rel_err']:.1e}" + (
                f", grad rel. err {c['grad_rel_err']:.1e}" if "grad_rel_err" in c else "")
        lines.append(f"{head} {_ms(r['median_s'])} | {_ms(r['min_s'])}…{_ms(r['max_s'])} | "
                     f"{_ms(r['first_call_s'])} | {_x(r.get('x_jax'))} | {_x(r.get('x_own_bptt'))} | "
                     f"{_x(r.get('x_numba'))} | {note} |")
    return "\n".join(lines)


def format_goals(gs) -> str:
    lines = ["| goal | target | measured | met |", "|---|---:|---:|---|"]
    for g in gs:
        v = "—" if g["value"] is None else f"{g['value']:.2f}×"
        if g["at_most"] is None:
            lines.append(f"| {g['goal']} | (reported) | {v} | |")
            continue
        met = "not measured" if g["met"] is None else ("yes" if g["met"] else "**no**")
        lines.append(f"| {g['goal']} | ≤ {g['at_most']:g}× | {v} | {met} |")
    return "\n".join(lines)


def format_machine(m: dict, repeats: int) -> str:
    v = ", ".join(f"{k} {val}" for k, val in m["versions"].items())
    from .machine import machine_line
    return (f"Machine: {machine_line(m) if 'cpu' in m else m['processor']}; {m['platform']}, Python {m['python']}; "
            f"threads "
            f"{m['threads']} for everyone; median of {repeats} interleaved rounds after one warm-up call each. "
            f"Versions: {v}. Load average (1 min) {m['load_average_1min']['before']:.1f} before the run, "
            f"{m['load_average_1min']['after']:.1f} after it.")


def _configure_threads(n: int) -> None:
    """n threads for Numba / OpenMP / BLAS (environment, before import), XLA's CPU backend and torch."""
    set_threads(n)
    if n == 1:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    try:
        import torch
        torch.set_num_threads(n)
    except ImportError:
        pass


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.step", description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", default=None, choices=sorted(MODELS), help="model(s) (default all)")
    ap.add_argument("--backend", action="append", default=None, choices=BACKENDS, help="backend(s) (default all)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="threads for Numba / BLAS / XLA / torch (recorded; "
                                                               "default 1, left alone with --quick)")
    ap.add_argument("--no-peers", action="store_true", help="skip JAX / torch even when installed")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, numpy only, 1 repeat, no peers (smoke test)")
    ap.add_argument("--out", default="runs/bench/step.json", help="the JSON report")
    ap.add_argument("--md", default=None, help="the Markdown report (default docs/bench/step.md; with --quick, "
                                               "step.md beside the JSON)")
    args = ap.parse_args(argv)
    threads = args.threads or (None if args.quick else 1)    # --quick runs inside pytest: leave its threads alone
    if threads:
        if "numpy" in sys.modules and argv is None:
            print("note: numpy was imported before --threads could take effect", file=sys.stderr)
        _configure_threads(threads)
    from . import machine
    backends = tuple(args.backend or (("numpy",) if args.quick else BACKENDS))
    repeats = 1 if args.quick else args.repeats
    peers = () if (args.quick or args.no_peers) else ("jax", "torch")
    load_before = os.getloadavg()
    rows = []
    for name in args.model or list(MODELS):
        got = measure_model(name, backends, peers, repeats, args.quick, log=lambda s: print(s, file=sys.stderr))
        if not peers:
            got.append({"model": name, "shape": got[0]["shape"], "algorithm": "bptt", "who": "peers",
                        "kind": "peer", "skipped": "--quick / --no-peers"})
        rows += got
    gs = goals(rows)
    m = {**machine.describe(threads), "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]}}
    report = {"machine": m, "repeats": repeats, "quick": args.quick, "device_step": device_step_available(),
              "rows": rows, "goals": gs}
    out = Path(args.out)
    _write_atomic(out, json.dumps(report, indent=2, default=str))
    md = (f"{format_machine(m, repeats)}\n\n{format_table(rows)}\n\nSpeed goals (ratios of medians):\n\n"
          f"{format_goals(gs)}\n")
    md_path = Path(args.md) if args.md else (out.with_suffix(".md") if args.quick else Path("docs/bench/step.md"))
    if md_path.resolve() == Path("docs/bench/step.md").resolve():
        md = _docs_page(md)
    _write_atomic(md_path, md)
    print(md)
    print(f"wrote {out}, {md_path}")


def _docs_page(body: str) -> str:
    """docs/bench/step.md: what was measured and how (this module's docstring), notes, then the measured tables."""
    how = "\n\n".join(__doc__.split("\n\n")[1:6])
    return ("# The whole training step (`python -m bench.step`)\n\nGenerated by `python -m bench.step` "
            "(bench/step.py, peers in bench/peers_step.py); rerun it rather than editing this page.\n\n"
            f"```\n{how}\n```\n\n{NOTES}\n\n## Measured\n\n{body}")


NOTES = """Notes on reading the table:
- `× JAX bptt` is every row's median over the JAX peer's bptt step of the same model (JAX has no online learning
  rule of its own: its step is autodiff BPTT); `× own bptt` is an algorithm's step over our bptt step on the same
  backend; `mlx / numba` compares the same algorithm on the two backends.
- `path`: bptt runs refimpl.training.device.DeviceStep — on numpy and numba the layers, loss and optimizer run on
  NumPy arrays (numba: its cells and its fused layer loops, backends/numba/layers.py), on mlx everything stays in
  mx.arrays, as for the online rules on mlx; the other rows run `model_grads + optim.step`: their kernels on the
  backend (numba's fused layers too), the rest in NumPy. `fptt:stored` is fptt with `schedule='stored'` (one forward
  pass kept whole; plain `fptt` streams L+1 passes). `first loss rel. err`: the first step's loss (at the initial
  parameters) against refimpl's NumPy BPTT loss.
- MLX runs on the device it finds: on a Linux machine that is MLX's CPU backend (the MLX goal is meant for Apple
  GPUs); its thread count is MLX's own, not --threads. XLA honours --threads 1 (no Eigen thread pool); for more
  threads it uses its default pool.
- The machine may be shared: medians over interleaved rounds; min…max shows the spread, and the load average before
  and after the run is recorded. Other work on the machine does not slow every contender alike: on a 2-CPU machine
  under a load of ~4 the JAX peer's single-threaded step took about twice the CPU time it takes at a load of ~2 (the
  GEMM-heavy XLA code suffers more from a busy neighbour than the scan-bound kernels), so ratios to JAX measured under
  load flatter us; compare runs only at similar load."""


if __name__ == "__main__":
    main()
