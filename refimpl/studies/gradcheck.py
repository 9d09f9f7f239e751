"""Gradient checks: an algorithm against BPTT, and BPTT against central finite differences (DESIGN.md §7).

    gradcheck(cell, algorithm, …) -> GradcheckReport      one model, one table row per parameter (and x)
    check_every_cell() -> [GradcheckReport]              BPTT of every cell in three model stacks (the default job)

How it works: build a model (seeded), draw inputs and mse targets, and compute
    (a) the algorithm's gradients, in the requested dtype and on the requested backend;
    (b) BPTT's gradients with the NumPy reference in float64 (float32 parameters are upcast exactly);
    (c) central finite differences of the loss at the same float64 point, evaluated in extended precision
        (np.longdouble where it is wider than float64; see numerics.extended). With pooling='cumulative_mean', whose
        gradient is straight-through by design (docs/derivations/model.md), (c) differentiates the surrogate loss
        whose true gradient that is: the running mean p_t replaced by u_t + (p_t − u_t)|_θ₀, the shift held fixed.
The report gives, per parameter, rel. error and cosine of (a) vs (b), and rel. error of (b) vs (c). It fails when BPTT
misses the FD tolerance, or when an *exact* algorithm misses the exact-vs-BPTT tolerance of its dtype; approximate
algorithms are reported, not judged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..nn import losses, model as model_mod
from ..algorithms import get_algorithm
from ..api import make_model, model_grads
from ..algorithms.chunked import check_chunk
from ..checks import positive_int, resolve_dtype
from ..errors import UnsupportedError
from ..numerics import TOLERANCES, central_differences, cosine, extended, rel_error


@dataclass
class GradRow:
    name: str
    shape: tuple
    rel_err_vs_bptt: float
    cosine_vs_bptt: float
    rel_err_bptt_vs_fd: float
    ok: bool


@dataclass
class GradcheckReport:
    cell: str
    algorithm: str
    exact: str
    dtype: str
    backend: str
    config: dict
    tol_vs_bptt: float | None
    tol_bptt_vs_fd: float
    rows: list[GradRow] = field(default_factory=list)
    groups: list[dict] = field(default_factory=list)    # per layer (and encoder / readout): agreement with BPTT

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def gradcheck(cell: str, algorithm: str = "bptt", *, layers: int = 1, hidden: int = 4, seq_len: int = 5,
              batch: int = 2, n_in: int = 3, n_out: int = 2, dtype="float64", seed: int = 0,
              backend: str = "numpy", fd_eps: float = 1e-6, algorithm_options: dict | None = None,
              loss: str = "mse", chunk: int | None = None, **model_options) -> GradcheckReport:
    """Check `algorithm` against BPTT and BPTT against finite differences on a small seeded model (see module doc).
    chunk: the chunk size of a streaming algorithm (options["chunk"]; 1 ≤ chunk ≤ seq_len), refused for others."""
    algo = get_algorithm(algorithm, "model")
    if chunk is not None:
        C = positive_int("--chunk", chunk)
        if "chunk" not in algo.options:
            raise UnsupportedError(f"--chunk cuts the sequence for a streaming algorithm (rtrl, online, snap1, "
                                   f"truncated, spatial, cec, fptt, fptt1); {algorithm!r} takes no chunk"
                                   + (" (its chunk is its window: use -a window=C)" if algo.streams else
                                      ": drop --chunk"))
        check_chunk(C, seq_len, "--chunk")
        algorithm_options = {**(algorithm_options or {}), "chunk": C}
    dtype = resolve_dtype(dtype)
    opts = dict(layers=layers, seed=seed, **model_options)
    model, params = make_model(cell, n_in, hidden, n_out, dtype=dtype.name, **opts)
    model64, _ = make_model(cell, n_in, hidden, n_out, dtype="float64", **opts)
    params64 = {k: v.astype(np.float64) for k, v in params.items()}

    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((seq_len, batch, n_in)).astype(dtype)
    x64 = x.astype(np.float64)
    out64, _ = model_mod.forward(model64, params64, x64)
    y64 = _targets(loss, rng, out64.shape)
    y = y64 if loss == "ce" else y64.astype(dtype)

    _, grads = model_grads(model, params, x, y, loss=loss, algorithm=algorithm, backend=backend,
                           **(algorithm_options or {}))
    _, bptt = model_mod.bptt(model64, params64, x64, y64, loss=loss)

    if model.pooling == "cumulative_mean":
        loss_at = _straight_through_surrogate(cell, n_in, hidden, n_out, opts, params64, x64, y64, loss)
    else:
        def loss_at(values):
            out, _ = model_mod.forward(model64, {k: values[k] for k in params64}, values["x"])
            return losses.loss_forward(loss, out, _ext_target(loss, y64), None)[0]
    # the differences are evaluated in extended precision at the same float64 point (see numerics.extended)
    fd = central_differences(loss_at, {k: extended(v) for k, v in {**params64, "x": x64}.items()}, eps=fd_eps)

    tol_alg = TOLERANCES[algo.tolerance][dtype.name] if algo.exact_for(model, algorithm_options or {}) else None
    tol_fd = TOLERANCES["bptt_vs_fd"]
    report = GradcheckReport(cell, algorithm, algo.exact, dtype.name, backend,
                             dict(layers=layers, hidden=hidden, seq_len=seq_len, batch=batch, n_in=n_in, n_out=n_out,
                                  seed=seed, loss=loss, **model_options), tol_alg, tol_fd)
    for k in [*params64, "x"]:
        if k == "x" and not algo.input_grads:           # forward-mode rules give no input gradient: not compared
            continue
        g = grads.get(k, np.zeros_like(bptt[k]))        # an algorithm that does not train k returns no gradient
        e_alg, e_fd = rel_error(g, bptt[k]), rel_error(bptt[k], fd[k])
        ok = e_fd <= tol_fd and (tol_alg is None or e_alg <= tol_alg)
        report.rows.append(GradRow(k, tuple(bptt[k].shape), e_alg, cosine(g, bptt[k]), e_fd, ok))
    for group in _groups(params64):
        keys = [k for k in params64 if _group_of(k) == group]
        a = np.concatenate([np.ravel(grads.get(k, np.zeros_like(bptt[k]))) for k in keys])
        b = np.concatenate([np.ravel(bptt[k]) for k in keys])
        report.groups.append({"group": group, "rel_err_vs_bptt": rel_error(a, b), "cosine_vs_bptt": cosine(a, b)})
    return report


#: What the default job checks: every cell (both rnn nonlinearities), alone and inside a full 2-layer block stack.
DEMO_CELLS = [("rnn", {"nonlinearity": "tanh"}), ("rnn", {"nonlinearity": "linear"}), ("gru", {}), ("lstm", {}),
              ("lru", {})]
DEMO_MODELS = [dict(layers=1),
               dict(layers=2, encoder=True, norm="layer", ffn="glu", residual=True),
               dict(layers=2, ffn="mlp", pooling="cumulative_mean")]


def check_every_cell() -> list[GradcheckReport]:
    """BPTT against finite differences for every cell of DEMO_CELLS in every stack of DEMO_MODELS."""
    return [gradcheck(cell, "bptt", **cell_options, **model_options)
            for cell, cell_options in DEMO_CELLS for model_options in DEMO_MODELS]


def _group_of(name: str) -> str:
    """'layers.1.cell.nu_log' → 'layers.1'; 'readout.weight' → 'readout'."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "layers" else parts[0]


def _groups(params: dict) -> list[str]:
    return list(dict.fromkeys(_group_of(k) for k in params))


def format_reports(reports: list[GradcheckReport]) -> str:
    """One table for one or more reports: cell, algorithm, parameter, errors, verdict."""
    head = f"{'cell':<11} {'algorithm':<9} {'dtype':<7} {'parameter':<28} {'shape':<10} " \
           f"{'rel.err vs bptt':>15} {'cosine':>9} {'bptt vs FD':>11}  ok"
    lines = [head, "-" * len(head)]
    for r in reports:
        label = r.cell + (f"({r.config['nonlinearity']})" if "nonlinearity" in r.config else "")
        for row in r.rows:
            lines.append(f"{label:<11} {r.algorithm:<9} {r.dtype:<7} {row.name:<28} "
                         f"{'x'.join(map(str, row.shape)):<10} {row.rel_err_vs_bptt:>15.2e} "
                         f"{row.cosine_vs_bptt:>9.6f} {row.rel_err_bptt_vs_fd:>11.2e}  {'yes' if row.ok else 'NO'}")
    for r in reports:
        if r.algorithm != "bptt" and len(r.groups) > 1:
            lines.append(f"{r.cell} {r.algorithm}: agreement with BPTT per layer — " + "; ".join(
                f"{g['group']}: rel.err {g['rel_err_vs_bptt']:.2e}, cosine {g['cosine_vs_bptt']:.6f}"
                for g in r.groups))
    tol = {r.tol_vs_bptt for r in reports if r.tol_vs_bptt is not None}
    lines.append(f"tolerances: BPTT vs FD ≤ {TOLERANCES['bptt_vs_fd']:.0e} (float64); exact algorithm vs BPTT ≤ "
                 f"{', '.join(f'{t:.0e}' for t in sorted(tol)) or 'n/a'}; approximate algorithms are reported only")
    bad = sum(not row.ok for r in reports for row in r.rows)
    lines.append("all checks passed" if bad == 0 else f"{bad} check(s) FAILED")
    return "\n".join(lines)


def _targets(loss: str, rng, shape):
    """Random targets for `loss` on an output of `shape`: mse floats, ce integer labels, bce bits (as floats)."""
    losses.resolve_loss(loss)
    if loss == "ce":
        return rng.integers(shape[-1], size=shape[:-1])
    if loss == "bce":
        return rng.integers(0, 2, size=shape).astype(np.float64)
    return rng.standard_normal(shape)


def _ext_target(loss: str, y):
    """The target as the finite differences see it (labels stay integers)."""
    return y if loss == "ce" else extended(y)


def _straight_through_surrogate(cell, n_in, hidden, n_out, opts, params64, x64, y64, loss="mse"):
    """The loss whose true gradient is the straight-through gradient of pooling='cumulative_mean' (see module doc)."""
    plain, _ = make_model(cell, n_in, hidden, n_out, dtype="float64", **{**opts, "pooling": "none"})
    u0 = model_mod.forward(plain, params64, x64)[1].features                      # stack output u_t at θ₀ (T, B, d)
    shift = np.cumsum(u0, axis=0) / np.arange(1, u0.shape[0] + 1)[:, None, None] - u0   # p_t − u_t, held fixed

    def surrogate(values):
        u = model_mod.forward(plain, {k: values[k] for k in params64}, values["x"])[1].features
        out = (u + shift) @ values["readout.weight"].T + values["readout.bias"]
        return losses.loss_forward(loss, out, _ext_target(loss, y64), None)[0]
    return surrogate


def _model_label(config: dict) -> str:
    parts = [f"{config['layers']} layer" + ("s" if config["layers"] > 1 else "")]
    parts += [k for k in ("encoder", "residual") if config.get(k)]
    parts += [f"{k}={config[k]}" for k in ("norm", "ffn") if config.get(k)]
    if config.get("pooling", "none") != "none":
        parts.append(f"pool={config['pooling']}")
    return ", ".join(parts)


def format_summary(reports: list[GradcheckReport]) -> str:
    """One row per report: cell, model, arrays checked, the worst BPTT-vs-FD error (and where), verdict."""
    head = f"{'cell':<11} {'model':<52} {'arrays':>6} {'worst bptt vs FD':>16}  {'(in)':<24} ok"
    lines = [head, "-" * len(head)]
    for r in reports:
        label = r.cell + (f"({r.config['nonlinearity']})" if "nonlinearity" in r.config else "")
        worst = max(r.rows, key=lambda row: row.rel_err_bptt_vs_fd)
        lines.append(f"{label:<11} {_model_label(r.config):<52} {len(r.rows):>6} {worst.rel_err_bptt_vs_fd:>16.2e}  "
                     f"{worst.name:<24} {'yes' if r.ok else 'NO'}")
    bad = [r for r in reports if not r.ok]
    lines.append(f"tolerance: BPTT vs FD ≤ {TOLERANCES['bptt_vs_fd']:.0e} per array; "
                 + ("all checks passed" if not bad else f"{len(bad)} model(s) FAILED"))
    return "\n".join(lines)
