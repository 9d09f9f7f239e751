r"""FPTT — forward propagation of errors through time (Zucchet, Pourcel & Ernoult 2026), truly online.

Not the "Forward Propagation Through Time" regulariser of Kag & Saligrama. docs/derivations/fptt.md derives it; the
indices here follow refimpl (h_t is the state after input t, t = 0 … T−1, h_{−1} = h0).

BPTT runs the total error e_t = dL/dh_t backward:  e_{T−1} = dh_{T−1},  e_{t−1} = dh_{t−1} + J_tᴴ e_t,  and the
gradient of h0 is e_{−1} = J_0ᴴ e_0 (J_t = ∂h_t/∂h_{t−1}; ᴴ is the transpose, conjugated for the complex lru,
DESIGN.md §4). FPTT runs the same recursion *forward*:

    (1)  e_t = J_t^{−H} (e_{t−1} − dh_{t−1}),        dh_{−1} = 0             (a solve; lru: a division by conj(λ_t))

which needs the right starting value e_{−1} = Σ_t J_0ᴴ⋯J_tᴴ dh_t (BPTT's recursion unrolled). Phase 1 (warm-up) finds it
in one of two ways, both forward in time and with O(S²) memory per sequence (`warmup=`):

  direct (the default): accumulate the Jacobian product and the starting error itself, no inversion at all,

    (2)  Q_{−1} = I,   Q_t = Q_{t−1} J_tᴴ,        (3)  e_{−1} = Σ_t Q_t dh_t      (e ← e + Q_t dh_t each step)

  shooting (the paper's): run (1) from e'_{−1} = 0 and accumulate P = Q_{T−1} = J_0ᴴ ⋯ J_{T−1}ᴴ; since e − e' obeys
  the homogeneous recursion and the true error ends at e_{T−1} = dh_{T−1},

    (2s) P ← P J_tᴴ,                              (3s) e_{−1} = −P (e'_{T−1} − dh_{T−1})   (the minus sign the
                                                                                        published blog formula lacks)

  On a contractive or badly conditioned product the shooting warm-up loses twice: e' grows like the inverse product
  ‖P⁻¹‖, and its rounding is multiplied back by P, so e_{−1} is only accurate to ε·cond(P); the error phase then
  amplifies that by ‖P⁻¹‖ again — ε·cond(P)·‖P⁻¹‖ where the direct warm-up gives ε·‖P⁻¹‖ (docs/derivations/fptt.md
  §7b). For a diagonal J (the lru) the two give the same e_{−1} to rounding.

Phase 2 re-runs the states from the inputs, carries the exact e_t with (1), and accumulates step by step

    (4)  ∂L/∂θ += (∂h_t/∂θ)ᴴ e_t,   x̄_t = (∂h_t/∂x_t)ᴴ e_t         (the cell's step backward with total adjoint e_t)

(5) Check: at the end of phase 2, e_{T−1} must equal dh_{T−1}. The relative residual ρ = ‖e_{T−1} − dh_{T−1}‖ /
‖dh_{T−1}‖ (and the size of e) is tracked; when the inversion loses the information — contractive dynamics |λ| < 1
make e grow like |λ|^{−T}, a dense cell like 1/σ_min(Q_{T−1}) — FPTT stops with NumericalError (naming |λ| or σ_min of
the Jacobian product, T and the precision) instead of returning garbage gradients.

Memory: the states, e and Q (or e′ and P) — O(S²) per sequence for dense cells (O(N) for the lru), independent of T;
phase 2 recomputes the states from the inputs and stores nothing per step.

Multi-layer (`fptt_model_grads`): L+1 passes over the sequence. In pass p = 1 … L the layer L−p warms up while every
layer above it is in its error phase (their exact e_t give the exact instantaneous errors of the layer below within
each step); the last pass runs every layer's error phase and accumulates all gradients. With a pass budget
`passes` < L+1 only the top passes−1 layers get a warm-up; the layers below are `spatial` (their recurrent term held
constant: no temporal credit, weight_hh / bias_hh — lru: nu_log / theta_log — get zero). `fptt1` is a single pass with
e_{−1} = 0 in every layer (the paper's `forward` baseline; not exact).

Precision: the carriers (e, Q, e′, P) may run in float64 (complex128) while the states run in float32 (the paper's mixed
setting): `carrier="float64"` (default) or `carrier="state"` (carrier_dtype gives the dtype either means).
"""

from __future__ import annotations

import numpy as np

from ..cells.common import add_into
from ..errors import NumericalError, ShapeError, UnsupportedError

#: Relative residual ρ (5) above which FPTT refuses to return its gradients. Calibrated on the stability study's full
#: grid (2520 records: every cell with its conditioning knob, T 10 … 1000, three precisions, both warm-ups, three
#: seeds), on CPUs with AVX-512 and with AVX2 only (float32 rounds differently with their BLAS kernels): a threshold at
#: which every gradient it accepts is within 1e-3 (DESIGN.md §7's float32 tolerance) of float64 BPTT's on both — worst
#: 9.6e-4 (AVX-512) and 5.3e-4 (AVX2). 1e-2 sufficed on AVX-512, but on AVX2 it accepted one float32 gradient
#: 1.002e-3 off at ρ = 5.8e-3. Of the 1445 records it refuses on AVX2, 34 are within 1e-3 (docs/derivations/fptt.md §8).
RESIDUAL_TOL = 5e-3

CARRIERS = ("float64", "state")

#: The warm-ups of phase 1 (module docstring): "direct" (2)-(3), the default — measured better on every cell
#: (docs/derivations/fptt.md §7b) — and "shooting" (2s)-(3s), the paper's, kept to reproduce it.
WARMUPS = ("direct", "shooting")


# ----------------------------------------------------------------------------------------------------------------
# One layer's carriers (J_t is diagonal, (B, N), for the lru — cell.diagonal — and dense (B, S, S) otherwise)

def carrier_dtype(cell, carrier: str) -> np.dtype:
    """The dtype of e, e′ and P: float64 (the paper's mixed setting) or the states' precision; complex for a complex
    state."""
    if carrier not in CARRIERS:
        raise UnsupportedError(f"carrier dtype {carrier!r} is unknown; use 'float64' (default, the paper's mixed "
                               f"setting) or 'state' (the same precision as the states)")
    base = np.dtype(np.float64) if carrier == "float64" else cell.dtype
    return np.result_type(base, cell.state_dtype)


def _jacobian_adjoint(cell, params, a_t, state_prev, dtype):
    """J_tᴴ in the carrier dtype: (B, N) (diagonal conj(λ)) for a diagonal cell, (B, S, S) otherwise."""
    J = cell.module.state_jacobian(params, a_t, state_prev, **cell.step_options)
    if cell.diagonal:
        return np.conj(J).astype(dtype)
    return np.conj(np.swapaxes(J, -1, -2)).astype(dtype)


def _invert(cell, JH, v):
    """J^{−H} v, eq. (1): a division for a diagonal J, a batched linear solve otherwise (never an inverse)."""
    if cell.diagonal:
        return v / JH
    return np.linalg.solve(JH, v[..., None])[..., 0]


def _accumulate_P(cell, P, JH):
    """P ← P J_tᴴ, eq. (2)."""
    return P * JH if cell.diagonal else P @ JH


def _identity_P(cell, B, dtype):
    S = cell.state_size
    return np.ones((B, S), dtype) if cell.diagonal else np.broadcast_to(np.eye(S, dtype=dtype), (B, S, S)).copy()


def _flat_error(cell, dh, dtype):
    """An instantaneous error of h (B, H) as a (B, S) carrier: zero on the rest of the state (the lstm's c)."""
    return cell.flatten_state(cell.adjoint_from_h(dh)).astype(dtype)


def _describe(cell, params, T, dtype, gain: float | None) -> str:
    """What FPTT inverted: |λ| (diagonal) or σ_min of the Jacobian product (gain, from the warm-up), T, precision."""
    parts = []
    if cell.diagonal:                       # |λ|: the moduli of the diagonal Jacobian (independent of x and h)
        lam = np.abs(cell.module.state_jacobian(params, np.zeros((1, cell.n_in), cell.dtype), cell.zero_state(1),
                                                **cell.step_options))
        with np.errstate(over="ignore"):
            grow = np.power(np.float64(lam.min()), -T)
        parts.append(f"|λ| in [{lam.min():.3g}, {lam.max():.3g}]")
        tail = f"; |λ|^-T up to {grow:.3g}"
    else:
        tail = ""
    if gain is not None:
        parts.append(f"σ_min(J_0ᴴ⋯J_T−1ᴴ) = {gain:.3g}")
    return ", ".join(parts + [f"T={T}", f"{_precision(dtype)} carriers"]) + tail


def _precision(dtype) -> str:
    """'float32' for float32 and complex64 carriers, 'float64' for float64 and complex128."""
    return np.finfo(np.dtype(dtype)).dtype.name


def check_residual(cell, params, T: int, dtype, residual: float, what: str, *,
                   measured: str = "‖e_T−1 − dh_T−1‖/‖dh_T−1‖", e_max: float | None = None,
                   gain: float | None = None, warmup: str = "direct") -> None:
    """(5): NumericalError, with the reason and the fixes, when the relative residual is not finite or over
    RESIDUAL_TOL: ρ = ‖e_T−1 − dh_T−1‖/‖dh_T−1‖ = ‖v_T−1‖/‖dh_T−1‖ (residual_of). gain: σ_min of the Jacobian product
    (product_gain), named in the message; warmup: the warm-up that ran (the shooting one is told of the direct one)."""
    if not np.isfinite(residual) or (e_max is not None and not np.isfinite(e_max)) or residual > RESIDUAL_TOL:
        size = "" if e_max is None else f"; max |e| = {e_max:.3g}"
        hint = "warm-up 'direct' (-a warmup=direct), " if warmup == "shooting" else ""
        raise NumericalError(
            f"FPTT lost the error signal ({what}: relative residual {measured} = {residual:.3g}, tolerance "
            f"{RESIDUAL_TOL:g}{size}) with {_describe(cell, params, T, dtype, gain)}. Inverting the Jacobians "
            f"amplifies rounding by up to 1/σ_min of their product (|λ|^-T for the lru): use {hint}float64 carriers, "
            f"a shorter sequence, better-conditioned dynamics (e.g. lru -o r_min=0.95), or algorithm 'bptt' / "
            f"'online'")


def error_layers(L: int, passes: int | None = None, two_passes: bool = True) -> list[int]:
    """The layers that carry FPTT errors: with a warm-up, the top min(L, passes − 1) for a pass budget `passes`
    (default L + 1: every layer); for fptt1 (two_passes=False) every layer, from e_{−1} = 0. The others are `spatial`:
    their recurrent term held constant (cell.recurrent_params get zero)."""
    full = L + 1
    try:
        passes = full if passes is None else int(passes)
    except (TypeError, ValueError):
        raise UnsupportedError(f"passes must be an integer ≥ 1, got {passes!r} (full FPTT of {L} layer(s) takes "
                               f"{full})") from None
    if passes < 1:
        raise UnsupportedError(f"passes must be ≥ 1, got {passes} (full FPTT of {L} layer(s) takes {full})")
    if not two_passes:
        return list(range(L))
    return list(range(L - min(L, passes - 1), L))


def _running_max(current: float, e: np.ndarray) -> float:
    """max |e| so far; inf once anything was non-finite (a NaN must not hide behind max())."""
    m = float(np.max(np.abs(e)))
    return np.inf if not (np.isfinite(m) and np.isfinite(current)) else max(current, m)


def _carrier_start(cell, B, ct, carry, names):
    """The carriers before a chunk: `carry` (checked: the names, (B, S) for v, P's shape), or a stream's start."""
    S = cell.state_size
    if carry is None:
        start = {"v": np.zeros((B, S), ct), "e": np.zeros((B, S), ct), "P": _identity_P(cell, B, ct),
                 "Q": _identity_P(cell, B, ct)}
        return {k: start[k] for k in names}
    product = _identity_P(cell, 1, ct).shape[1:]
    shapes = {"v": (B, S), "e": (B, S), "P": product, "Q": product}
    if set(carry) != set(names):
        raise ShapeError(f"an FPTT carry names {sorted(carry)}; expected {sorted(names)}: pass the 'carry' the "
                         f"previous chunk of the same phase returned")
    for k in names:
        if np.shape(carry[k])[-len(shapes[k]):] != shapes[k][-len(shapes[k]):] or np.shape(carry[k])[0] != B:
            raise ShapeError(f"the FPTT carrier {k!r} has shape {np.shape(carry[k])}; expected (B={B}, …) like "
                             f"{(B,) + tuple(shapes[k][1:])}: pass the previous chunk's 'carry'")
    return {k: np.asarray(carry[k]).astype(ct, copy=True) for k in names}


def check_warmup(warmup: str) -> str:
    """The name of a warm-up of WARMUPS, or UnsupportedError naming them."""
    if warmup not in WARMUPS:
        raise UnsupportedError(f"FPTT warm-up {warmup!r} is unknown; use 'direct' (default: the starting error "
                               f"accumulated without inversion) or 'shooting' (the paper's: inverts the Jacobians)")
    return warmup


def fptt_warmup(cell, params, x, dh, state0, carry: dict | None = None, *, carrier: str = "float64"):
    """Phase 1 over one chunk, the direct warm-up: (2) Q_t = Q_{t−1} J_tᴴ and (3) e ← e + Q_t dh_t, from Q = I, e = 0
    at the stream's start. Returns (the state after the chunk, the carry {"Q": Q (B, S) diagonal or (B, S, S),
    "e": Σ Q_t dh_t so far (B, S)}); at the stream's end e_{−1} = start_error(cell, carry) = e."""
    B = x.shape[1]
    ct = carrier_dtype(cell, carrier)
    c = _carrier_start(cell, B, ct, carry, ("Q", "e"))
    Q, e, state = c["Q"], c["e"], state0
    with np.errstate(all="ignore"):                 # a blow-up is detected by (5) and reported, not warned about
        for t in range(x.shape[0]):
            JH = _jacobian_adjoint(cell, params, x[t], state, ct)
            Q = _accumulate_P(cell, Q, JH)                                             # (2)  Q_t = Q_{t−1} J_tᴴ
            e = e + _apply(cell, Q, _flat_error(cell, dh[t], ct))                      # (3)  e += Q_t dh_t
            state, _ = cell.module.step_forward(params, x[t], state, **cell.step_options)
    return state, {"Q": Q, "e": e}


def fptt_shooting(cell, params, x, dh, state0, carry: dict | None = None, *, carrier: str = "float64"):
    """Phase 1 over one chunk, the paper's shooting warm-up: (1) from e'_{−1} = 0 and (2s). Returns (the state after
    the chunk, the carry {"v": v' (B, S), "P": P (B, S) diagonal or (B, S, S)}); at the stream's end
    e_{−1} = start_error(cell, carry) = −P v' (3s)."""
    B = x.shape[1]
    ct = carrier_dtype(cell, carrier)
    c = _carrier_start(cell, B, ct, carry, ("v", "P"))
    v, P, state = c["v"], c["P"], state0
    with np.errstate(all="ignore"):
        for t in range(x.shape[0]):
            JH = _jacobian_adjoint(cell, params, x[t], state, ct)
            v = _invert(cell, JH, v) - _flat_error(cell, dh[t], ct)                    # (1): e'_t, then v'_t
            P = _accumulate_P(cell, P, JH)                                             # (2s)
            state, _ = cell.module.step_forward(params, x[t], state, **cell.step_options)
    return state, {"v": v, "P": P}


#: warm-up name → its phase-1 function (both: (cell, params, x, dh, state0, carry, *, carrier) -> (state, carry)).
WARMUP_PHASES = {"direct": fptt_warmup, "shooting": fptt_shooting}


def _apply(cell, M, v):
    """M v for a product M (B, S) diagonal or (B, S, S)."""
    return M * v if cell.diagonal else np.einsum("bij,bj->bi", M, v)


def start_error(cell, carry: dict) -> np.ndarray:
    """e_{−1} from a warm-up's carry at the stream's end: the direct warm-up's e (3), or −P v'_{T−1} (3s)."""
    if "e" in carry:
        return carry["e"]
    return -_apply(cell, carry["P"], carry["v"])


def product_gain(cell, carry: dict) -> float:
    """σ_min of the Jacobian product Q_{T−1} = P = J_0ᴴ⋯J_{T−1}ᴴ a warm-up's carry holds (min |P| for a diagonal
    one), the smallest over the batch: the error phase amplifies rounding by up to 1/σ_min."""
    M = carry["Q"] if "Q" in carry else carry["P"]
    with np.errstate(all="ignore"):
        if cell.diagonal:
            return float(np.min(np.abs(M)))
        if not np.all(np.isfinite(M)):
            return float("nan")
        return float(np.min(np.linalg.svd(M, compute_uv=False)))


def fptt_errors(cell, params, x, dh, state0, carry: dict | None = None, *, carrier: str = "float64"):
    """Phase 2 over one chunk: the errors (1) from the carried v and the gradients (4).

    Returns (grads {param: Σ over the chunk, "x": x̄ (C, B, I)}, the state after the chunk, the carry {"v"},
    max |e| over the chunk (inf once anything was not finite)). carry None: e_{−1} = 0 (fptt1); {"v": e_{−1}} starts
    a stream from the warm-up's start_error."""
    B = x.shape[1]
    ct = carrier_dtype(cell, carrier)
    v = _carrier_start(cell, B, ct, carry, ("v",))["v"]
    grads = {k: np.zeros_like(p) for k, p in params.items()}
    dx = np.zeros_like(x)
    state, e_max = state0, 0.0
    with np.errstate(all="ignore"):
        for t in range(x.shape[0]):
            JH = _jacobian_adjoint(cell, params, x[t], state, ct)
            e = _invert(cell, JH, v)                                                   # (1) e_t
            e_max = _running_max(e_max, e)
            state, cache = cell.module.step_forward(params, x[t], state, **cell.step_options)
            total = cell.unflatten_state(e.astype(cell.state_dtype))
            g, dx[t], _ = cell.module.step_backward(params, total, cache, **cell.step_options)        # (4)
            add_into(grads, g)
            v = e - _flat_error(cell, dh[t], ct)                                       # v_t = e_t − dh_t
    grads["x"] = dx
    return grads, state, {"v": v}, e_max


def residual_of(cell, carry: dict, dh_last: np.ndarray) -> float:
    """ρ of (5) from the error phase's carry at the stream's end: ‖v_{T−1}‖ / ‖dh_{T−1}‖."""
    d = _flat_error(cell, dh_last, carry["v"].dtype)
    with np.errstate(all="ignore"):
        return float(np.linalg.norm(carry["v"]) / max(float(np.linalg.norm(d)), 1e-300))


def fptt_cell_grads(cell, params, x, dh, state0, *, two_passes: bool = True, carrier: str = "float64",
                    warmup: str = "direct", check: bool = True) -> dict:
    """FPTT for one cell from its instantaneous adjoints dh (T, B, H), the whole sequence as one chunk:
    {params…, "x", "h0" (, "c0")} — the initial-state keys are e_{−1} (zero for fptt1).

    two_passes=False is `fptt1` (e_{−1} = 0); warmup: "direct" (default) or "shooting" (WARMUPS). dh is read one step
    late, as an online learner would receive it.
    """
    phase1 = WARMUP_PHASES[check_warmup(warmup)]

    def warm(carry):
        return phase1(cell, params, x, dh, state0, carry, carrier=carrier)[1]

    def errors(carry):
        grads, _, end, e_max = fptt_errors(cell, params, x, dh, state0, carry, carrier=carrier)
        return grads, end, e_max

    return cell_phases(cell, params, dh, warm, errors, two_passes=two_passes, carrier=carrier, check=check,
                       warmup=warmup)


def cell_phases(cell, params, dh, warm, errors, *, two_passes: bool, carrier: str, check: bool,
                warmup: str = "direct") -> dict:
    """One cell's two phases over a whole sequence as one chunk, whoever runs them (the reference's functions above,
    or a backend's kernels: refimpl/algorithms/on_backend.py):

        warm(carry) -> carry ({"Q", "e"} direct, {"v", "P"} shooting)   phase 1 from the stream's start (carry None)
        errors(carry) -> (grads {params…, "x"}, carry {"v"}, max |e| or None)      phase 2 from {"v": e_{−1}}

    e_{−1} from the warm-up (3) between them (0 for fptt1), the check (5) after; returns fptt_cell_grads' dict."""
    B = dh.shape[1]
    ct = carrier_dtype(cell, carrier)
    e_start = np.zeros((B, cell.state_size), ct)
    if two_passes:
        end_of_warmup = warm(None)                                                             # phase 1
        e_start = start_error(cell, end_of_warmup)                                             # (3)
    grads, end, e_max = errors({"v": e_start})                                                 # phase 2
    if two_passes and check:
        check_residual(cell, params, dh.shape[0], ct, residual_of(cell, end, dh[-1]), "one cell", e_max=e_max,
                       gain=product_gain(cell, end_of_warmup), warmup=warmup)                  # (5)
    # e_{−1}: the gradient of the initial state, h0 (and c0), in the order of the flattened state
    starts = np.split(e_start.astype(cell.state_dtype), len(cell.grad_state_keys), axis=-1)
    return {**grads, **dict(zip(cell.grad_state_keys, starts))}


# ----------------------------------------------------------------------------------------------------------------
# Well-conditioned parameters, per cell (for FPTT's tests, kernel input specs and examples)

def _rnn_well_conditioned(p: dict, key, Q: np.ndarray) -> None:
    """An orthogonal W_hh, no biases and a small input drive (tanh near its linear range)."""
    p[key("weight_hh")] = Q.astype(p[key("weight_hh")].dtype)                    # orthogonal recurrence
    p[key("bias_hh")] = np.zeros_like(p[key("bias_hh")])
    p[key("weight_ih")] = 0.3 * p[key("weight_ih")]                               # small drive: tanh stays near linear
    p[key("bias_ih")] = 0.0 * p[key("bias_ih")]


def _gru_well_conditioned(p: dict, key, Q: np.ndarray) -> None:
    """Update gates near 1 (b_hz = 3): h' ≈ h."""
    H = Q.shape[0]
    b = p[key("bias_hh")].copy()
    b[H:2 * H] = 3.0                                                               # z ≈ 0.95
    p[key("bias_hh")] = b


def _lstm_well_conditioned(p: dict, key, Q: np.ndarray) -> None:
    """Forget gates near 1 (b_hf = 3), g ≈ 0.8 so that c grows and tanh(c') is large, and an output gate that reads h
    (W_ho = 2·orthogonal) — even so the lstm's σ_min(J_t) stays near 0.2 (docs/derivations/fptt.md)."""
    H = Q.shape[0]
    W, b = p[key("weight_hh")].copy(), p[key("bias_hh")].copy()
    b[H:2 * H] = 3.0                                                               # f ≈ 0.95
    b[2 * H:3 * H] = 1.1                                                           # g ≈ 0.8: c grows, tanh(c') is large
    b[3 * H:] = 0.0
    W[3 * H:] = 2.0 * Q                                                            # the output gate reads h
    p[key("weight_hh")], p[key("bias_hh")] = W, b


#: cell name → the builder of its well-conditioned parameters; the lru needs none (pick r_min ≥ 0.9 instead).
WELL_CONDITIONED = {"rnn": _rnn_well_conditioned, "gru": _gru_well_conditioned, "lstm": _lstm_well_conditioned}


def well_conditioned(cell: str, params: dict, prefix: str = "", seed: int = 0) -> dict:
    """A copy of the parameters whose state Jacobians are well conditioned (WELL_CONDITIONED; unchanged for a cell
    without a builder). `prefix` selects a layer's cell in a model's dict (e.g. 'layers.0.cell.'); `seed` draws the
    orthogonal matrix."""
    p = dict(params)
    if cell not in WELL_CONDITIONED:
        return p
    H = p[f"{prefix}weight_hh"].shape[1]
    Q = np.linalg.qr(np.random.default_rng(seed).standard_normal((H, H)))[0]
    WELL_CONDITIONED[cell](p, lambda n: f"{prefix}{n}", Q)
    return p
