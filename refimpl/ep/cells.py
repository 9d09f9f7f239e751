r"""Fixed-point learning for the gated cells: recurrent backpropagation (RBP), BPTT through the free phase, and
vector-field equilibrium propagation (EP) — for rnn, gru, lstm and lru run with a STATIC input to a fixed point.

The derivation, with the same equation numbers, is docs/derivations/ep_cells.md. Shapes: B batch, I input width,
H hidden units, S the real width the readout sees (H for rnn/gru/lstm, 2N for the lru), O outputs.
The state s is h (B, H) for rnn/gru, the pair (h, c) for lstm (flattened [h; c] (B, 2H) where one array is needed) and
the complex h c(B, N) for the lru. f(s, x; θ) is the cell's step_forward with the same input x at every step.

    (1)  s_{t+1} = f(s_t, x; θ),   s_0 = h0 (default 0),  t = 0 … T−1          free phase;  s* ≈ s_T
    (2)  residual r = ‖s_T − s_{T−1}‖  (Frobenius norm over the batch; lstm: over h and c; lru: complex modulus)
    (3)  φ(s) = h (rnn, gru, lstm: the readout sees h, not c);  φ(s) = [Re h, Im h] (lru)              (B, S)
         ŷ = φ(s*) W_oᵀ + b_o        L = (1/B) Σ_b ½‖ŷ_b − y_b‖²
    (4)  g = ∂L/∂s*: ∂L/∂φ = (ŷ − y) W_o / B, placed on h (lstm: c-part 0); lru: g = ∂L/∂Re h + i ∂L/∂Im h
         (the complex adjoint convention of DESIGN.md §4).
    (5)  RBP (Almeida–Pineda; implicit function theorem): with J* = ∂f/∂s at (s*, x),
             (I − J*ᵀ) λ = g            (lru: J* = diag(λ_lru), so λ = g / (1 − conj(λ_lru)), i.e. J*ᴴ)
    (6)  ∂L/∂θ = (∂f/∂θ|*)ᵀ λ,   ∂L/∂x = (∂f/∂x|*)ᵀ λ      = step_backward(params, λ, cache at s*)
         W̄_o = (ŷ − y)ᵀ φ(s*) / B,   b̄_o = Σ_b (ŷ − y) / B
    (7)  BPTT through (1): adjoint g at s_T, s̄_{t} = J_{t+1}ᵀ s̄_{t+1}, θ̄ = Σ_t (∂f/∂θ|_t)ᵀ s̄_t, x̄ = Σ_t x̄_t
         (the cells' own step_forward/step_backward, T times).  As T → ∞, (7) → (5)–(6).
    (8)  nudged phase (vector-field EP, Scellier et al. 2018): from s^β_0 = s*,
             s^β_{k+1} = f(s^β_k, x) − β ∂L/∂s(s^β_k),   k = 0 … K−1,         s^β ≈ s^β_K
    (9)  g_VF(θ) = −(∂f/∂θ|*)ᵀ (s^β − s*)/β,   g_VF(x) likewise   = step_backward(params, −(s^β − s*)/β, cache at s*)
         readout gradients as (6) (the readout is not part of the dynamics).
    (10) as β → 0:  (s^β − s*)/β → −(I − J*)⁻¹ g,  so  g_VF → (∂f/∂θ|*)ᵀ (I − J*)⁻¹ g
         — (5)–(6) with J* in place of J*ᵀ: g_VF equals RBP iff J* acts symmetrically on g's Krylov space, in
         particular whenever J* is symmetric (energy-derived dynamics f = ∂Φ/∂s).  `vf_limit_grads` computes (10).

NOTE: EP needs a static input and a fixed point; a sequence input (a time axis with differing steps) raises
UnsupportedError, and RBP/EP refuse a free phase whose residual (2) is above `tol` (NumericalError).
"""

from __future__ import annotations

import math

import numpy as np

from ..cells import CELLS, Cell, resolve_cell
from ..checks import check_array, check_params
from ..errors import NumericalError, ShapeError, UnsupportedError
from ..numerics import cosine, rel_error
from .relaxation import backward_through_steps, relax_keeping_caches, sum_steps

#: The cells with fixed-point learning: every cell, since it needs only the cell contract (refimpl/cells/__init__.py).
CELLS_EP = tuple(CELLS)

#: the default convergence tolerance on the residual (2), by real dtype
DEFAULT_TOL = {np.dtype(np.float64): 1e-9, np.dtype(np.float32): 1e-4}


# ----------------------------------------------------------------------------------------------------------------
# state ↔ one array, readout, input checks
# ----------------------------------------------------------------------------------------------------------------

# The state s travels as one array v = cell.flatten_state(s): h (B, H), [h; c] (B, 2H) for lstm, complex h c(B, N)
# for lru; cell.unflatten_state(v) gives it back.

def readout_width(cell: Cell) -> int:
    """S, the real width of φ(s) in eq. (3): 2N for a complex state (the lru), H otherwise."""
    return 2 * cell.n_hidden if cell.complex_state else cell.n_hidden


def _features(cell: Cell, v: np.ndarray) -> np.ndarray:
    """φ(s) of eq. (3), (B, S)."""
    h = cell.state_h(cell.unflatten_state(v))                                  # (3)  the readout sees h, not c
    return np.concatenate([h.real, h.imag], axis=-1) if cell.complex_state else h  # (3)  r(B, 2N) | h (B, H)


def _loss_and_adjoint(cell: Cell, readout: dict, v: np.ndarray, y: np.ndarray):
    """L, the state adjoint g = ∂L/∂s (same layout as v) and the readout gradients, eqs. (3), (4), (6)."""
    B = v.shape[0]
    phi = _features(cell, v)                                                   # (3)  (B, S)
    err = phi @ readout["weight"].T + readout["bias"] - y                      # (3)  ŷ − y  (B, O)
    loss = 0.5 * float(np.sum(err * err)) / B                                  # (3)
    dphi = err @ readout["weight"] / B                                         # (4)  ∂L/∂φ  (B, S)
    if cell.complex_state:
        N = cell.n_hidden
        dphi = dphi[:, :N] + 1j * dphi[:, N:]                                  # (4)  ∂L/∂Re h + i ∂L/∂Im h
    g = cell.flatten_state(cell.adjoint_from_h(dphi))                          # (4)  on h (lstm: c-part 0)
    dreadout = {"readout.weight": err.T @ phi / B, "readout.bias": err.sum(0) / B}   # (6)
    return loss, g, dreadout


def static_input(x: np.ndarray) -> np.ndarray:
    """Return the static input (B, I). A (T, B, I) array is accepted only if every step is the same x.

    Raises UnsupportedError for a sequence with differing steps: EP and RBP are defined for a static input that
    drives the cell to a fixed point, not for a sequence model.
    """
    if isinstance(x, np.ndarray) and x.ndim == 3:
        if not np.array_equal(x, np.broadcast_to(x[0], x.shape)):
            raise UnsupportedError(
                f"x has a time axis (shape {x.shape}) whose steps differ; equilibrium propagation (and recurrent "
                f"backpropagation) need a STATIC input x (B, I), fed at every step, so that the cell settles to a "
                f"fixed point h* = f(h*, x). Pass one input x of shape (B, I), or use bptt/rtrl for sequences")
        x = x[0]
    return x


def _check(cell: Cell, params: dict, x, readout=None, y=None) -> np.ndarray:
    check_params(cell.name, params, cell.param_shapes, cell.dtype)
    x = static_input(x)
    check_array("x", x, (("B", None), ("I", cell.n_in)), cell.dtype,
                hint="the static input is (B, I); EP feeds the same x at every step")
    if readout is not None:
        S = readout_width(cell)
        if not isinstance(readout, dict) or set(readout) != {"weight", "bias"}:
            raise ShapeError("readout must be {'weight': (O, S), 'bias': (O,)}")
        W = check_array("readout['weight']", readout["weight"], (("O", None), ("S", S)), cell.dtype,
                        hint=f"S = {S} ({'[Re h; Im h]' if cell.complex_state else 'h'})")
        check_array("readout['bias']", readout["bias"], (("O", W.shape[0]),), cell.dtype)
        check_array("y", y, (("B", x.shape[0]), ("O", W.shape[0])), cell.dtype)
    return x


# ----------------------------------------------------------------------------------------------------------------
# free phase, eqs. (1)–(2)
# ----------------------------------------------------------------------------------------------------------------

def _relax(cell: Cell, params: dict, x: np.ndarray, v0: np.ndarray, steps: int, nudge=None):
    """Run s ← f(s, x) (− β ∂L/∂s if nudge=(β, readout, y)) for `steps` steps. Returns (v_T, residual)."""
    opts = cell.step_options
    v, v_prev = v0, v0
    for t in range(steps):
        v_prev = v
        with np.errstate(over="ignore", invalid="ignore"):       # a blow-up is reported just below, by name
            nxt, _ = cell.module.step_forward(params, x, cell.unflatten_state(v), **opts)  # (1)
            v = cell.flatten_state(nxt)
            if nudge is not None:
                beta, readout, y = nudge
                _, g, _ = _loss_and_adjoint(cell, readout, v_prev, y)
                v = v - beta * g                                                       # (8)
        if not np.all(np.isfinite(v)):
            raise NumericalError(f"the {cell.name} state became non-finite at relaxation step {t}: the dynamics "
                                 f"diverge; scale the recurrent weights down (lru: |λ| < 1) so a fixed point exists")
    residual = float(np.linalg.norm(v - v_prev)) if steps > 0 else float("nan")       # (2)
    return v, residual


def fixed_point(cell: Cell, params: dict, x: np.ndarray, *, T: int, h0=None):
    """The free phase, eqs. (1)–(2): T steps of the cell with the static input x.

    Args:
        cell: from resolve_cell.  params: the cell's parameters.  x: static input (B, I).
        T: number of steps (≥ 1).  h0: initial state (cell's state type), zeros if None.
    Returns:
        (state after T steps — cell's state type, residual ‖s_T − s_{T−1}‖ as a float).
    """
    x = _check(cell, params, x)
    if not isinstance(T, (int, np.integer)) or T < 1:
        raise UnsupportedError(f"T must be a positive integer (number of free-phase steps), got {T!r}")
    s0 = cell.zero_state(x.shape[0]) if h0 is None else h0
    v, residual = _relax(cell, params, x, cell.flatten_state(s0), int(T))
    return cell.unflatten_state(v), residual


def _converged(cell: Cell, params, x, T, tol, what):
    state, residual = fixed_point(cell, params, x, T=T)
    tol = DEFAULT_TOL[np.dtype(cell.dtype)] if tol is None else tol
    v = cell.flatten_state(state)
    if not residual <= tol * max(1.0, float(np.linalg.norm(v))):
        raise NumericalError(
            f"{what}: the free phase of the {cell.name} cell did not converge — residual ‖s_T − s_(T−1)‖ = "
            f"{residual:.3e} > tol {tol:.1e} after T={T} steps. {what} needs a fixed point h* = f(h*, x): run "
            f"more steps (larger T) or make the dynamics contractive (smaller recurrent weights; lru |λ| < 1)")
    return v


# ----------------------------------------------------------------------------------------------------------------
# RBP, eqs. (5)–(6), and the mirrored system of eq. (10)
# ----------------------------------------------------------------------------------------------------------------

def _solve_adjoint(cell: Cell, params: dict, x: np.ndarray, v: np.ndarray, g: np.ndarray, transpose: bool):
    """Solve (I − J*ᵀ) λ = g (transpose=True, eq. 5) or (I − J*) μ = g (eq. 10), batch element by batch element."""
    J = cell.module.state_jacobian(params, x, cell.unflatten_state(v), **cell.step_options)
    if cell.diagonal:                                          # J = diag(λ_lru), compact c(B, N); ᵀ → ᴴ (§4)
        return g / (1.0 - (np.conj(J) if transpose else J))                          # (5) / (10)
    A = np.eye(J.shape[-1], dtype=J.dtype) - (np.swapaxes(J, 1, 2) if transpose else J)   # (B, S, S)
    return np.linalg.solve(A, g[:, :, None])[:, :, 0]                                # (5) / (10)  (B, S)


def _pull_back(cell: Cell, params: dict, x: np.ndarray, v: np.ndarray, adjoint: np.ndarray) -> dict:
    """(∂f/∂θ|*)ᵀ adjoint and (∂f/∂x|*)ᵀ adjoint, eq. (6)/(9): one step_backward at the fixed point."""
    _, cache = cell.module.step_forward(params, x, cell.unflatten_state(v), **cell.step_options)
    dparams, dx, _ = cell.module.step_backward(params, cell.unflatten_state(adjoint), cache, **cell.step_options)
    return {**dparams, "x": dx}


def rbp_grads(cell: Cell, params: dict, readout: dict, x: np.ndarray, y: np.ndarray, *, T: int, tol=None):
    """The exact fixed-point gradient by recurrent backpropagation, eqs. (1)–(6).

    Args:
        cell, params: the cell.  readout: {"weight": (O, S), "bias": (O,)}.  x: static input (B, I).  y: target (B, O).
        T: free-phase steps.  tol: residual tolerance (default DEFAULT_TOL[dtype]); above it → NumericalError.
    Returns:
        (L, grads): grads has every cell parameter, "readout.weight", "readout.bias" and "x" (B, I).
    """
    x = _check(cell, params, x, readout, y)
    v = _converged(cell, params, x, T, tol, "recurrent backpropagation")              # (1)–(2)
    loss, g, dreadout = _loss_and_adjoint(cell, readout, v, y)                         # (3)–(4)
    lam = _solve_adjoint(cell, params, x, v, g, transpose=True)                       # (5)
    return loss, {**_pull_back(cell, params, x, v, lam), **dreadout}                  # (6)


def vf_limit_grads(cell: Cell, params: dict, readout: dict, x: np.ndarray, y: np.ndarray, *, T: int, tol=None):
    """The β → 0 limit of vector-field EP, eq. (10): (∂f/∂θ|*)ᵀ (I − J*)⁻¹ g — RBP with J* in place of J*ᵀ."""
    x = _check(cell, params, x, readout, y)
    v = _converged(cell, params, x, T, tol, "the vector-field EP limit")
    loss, g, dreadout = _loss_and_adjoint(cell, readout, v, y)
    mu = _solve_adjoint(cell, params, x, v, g, transpose=False)                       # (10)
    return loss, {**_pull_back(cell, params, x, v, mu), **dreadout}


# ----------------------------------------------------------------------------------------------------------------
# BPTT through the free phase, eq. (7)
# ----------------------------------------------------------------------------------------------------------------

def bptt_fixed_point_grads(cell: Cell, params: dict, readout: dict, x: np.ndarray, y: np.ndarray, *, T: int):
    """BPTT through T free-phase steps from zero with the loss on s_T, eq. (7) — the reference for RBP.

    The cell's own step and step adjoint, through the loop shared with the other EP networks (relaxation.py).
    Returns (L(s_T), grads) with the same keys as rbp_grads; the input gradient is summed over the T steps.
    """
    x = _check(cell, params, x, readout, y)
    if not isinstance(T, (int, np.integer)) or T < 1:
        raise UnsupportedError(f"T must be a positive integer, got {T!r}")
    mod, opts = cell.module, cell.step_options

    def step_backward(cache, dstate_next):                  # (7) one step back: θ̄_t and x̄_t, s̄_t = J_{t+1}ᵀ s̄_{t+1}
        dparams, dx, dstate = mod.step_backward(params, dstate_next, cache, **opts)
        return {**dparams, "x": dx}, dstate

    s, caches = relax_keeping_caches(lambda s: mod.step_forward(params, x, s, **opts), cell.zero_state(x.shape[0]),
                                     int(T), int(T))                                  # (1), every step kept
    v = cell.flatten_state(s)
    if not np.all(np.isfinite(v)):
        raise NumericalError(f"the {cell.name} state became non-finite in the free phase: the dynamics diverge")
    loss, g, dreadout = _loss_and_adjoint(cell, readout, v, y)                        # (3)–(4) on s_T
    steps, _ = backward_through_steps(step_backward, caches, cell.unflatten_state(g))  # (7)
    grads = sum_steps(steps)                                                          # (7) Σ_t, x̄ = Σ_t x̄_t
    return loss, {**{k: grads[k] for k in params}, "x": grads["x"], **dreadout}


# ----------------------------------------------------------------------------------------------------------------
# vector-field EP, eqs. (8)–(9)
# ----------------------------------------------------------------------------------------------------------------

def ep_cell_grads(cell: Cell, params: dict, readout: dict, x: np.ndarray, y: np.ndarray, *, T: int, K: int,
                  beta: float, tol=None):
    """Vector-field EP, eqs. (8)–(9): free phase (T steps), nudged phase (K steps from s*), and
    g_VF = −(∂f/∂θ|*)ᵀ (s^β − s*)/β (the same for x); readout gradients as RBP (6).

    It estimates (10), not the gradient (5)–(6): the two agree only where J* is symmetric
    (docs/derivations/ep_cells.md).
    Returns (L(s*), grads) with the keys of rbp_grads.
    """
    x = _check(cell, params, x, readout, y)
    if not (isinstance(beta, (float, int)) and math.isfinite(beta) and beta != 0):
        raise UnsupportedError(f"beta must be a finite non-zero number (the nudging strength), got {beta!r}")
    if not isinstance(K, (int, np.integer)) or K < 1:
        raise UnsupportedError(f"K must be a positive integer (nudged-phase steps), got {K!r}")
    v_free = _converged(cell, params, x, T, tol, "equilibrium propagation")           # (1)–(2)
    loss, _, dreadout = _loss_and_adjoint(cell, readout, v_free, y)
    v_beta, _ = _relax(cell, params, x, v_free, int(K), nudge=(float(beta), readout, y))   # (8)
    return loss, {**_pull_back(cell, params, x, v_free, -(v_beta - v_free) / beta), **dreadout}   # (9)


# ----------------------------------------------------------------------------------------------------------------
# contractive test problems and the alignment table
# ----------------------------------------------------------------------------------------------------------------

def _contractive_rnn(cell: Cell, rng: np.random.Generator, symmetric) -> dict:
    """W_hh (its symmetric part ½(W + Wᵀ) if `symmetric`) scaled to spectral norm 0.5, so ‖J‖ ≤ 0.5."""
    params = cell.module.init_params(cell.n_in, cell.n_hidden, rng, cell.dtype)
    W = params["weight_hh"]
    W = 0.5 * (W + W.T) if symmetric else W                 # symmetric part (True or "tanh")
    params["weight_hh"] = 0.5 * W / np.linalg.norm(W, 2)
    return params


def _contractive_gated(cell: Cell, rng: np.random.Generator, symmetric) -> dict:
    """The PyTorch init with W_hh halved."""
    params = cell.module.init_params(cell.n_in, cell.n_hidden, rng, cell.dtype)
    params["weight_hh"] = 0.5 * params["weight_hh"]
    return params


def _contractive_lru(cell: Cell, rng: np.random.Generator, symmetric) -> dict:
    """|λ| ∈ [0.5, 0.9], any phase."""
    return cell.module.init_params(cell.n_in, cell.n_hidden, rng, cell.dtype, r_min=0.5, r_max=0.9)


#: cell name → (cell, rng, symmetric) -> parameters whose free phase contracts (contractive_problem).
CONTRACTIVE_PARAMS = {"rnn": _contractive_rnn, "gru": _contractive_gated, "lstm": _contractive_gated,
                      "lru": _contractive_lru}


def contractive_problem(cell_name: str, seed: int, *, H: int = 8, I: int = 4, O: int = 3, B: int = 4,
                        symmetric=False, dtype="float64"):
    """A seeded problem whose free phase converges: (cell, params, readout, x, y).

    rnn: W_hh scaled to spectral norm 0.5 (‖J‖ ≤ 0.5).  symmetric=True (rnn only): the LINEAR rnn with a symmetric
    W_hh of spectral norm 0.5 — energy-derived, f = ∂Φ/∂h with Φ = ½hᵀW_hh h + hᵀ(W_ih x + b) (doc eq. 11).
    symmetric="tanh" (rnn only): the tanh rnn with that symmetric W_hh — NOT energy-derived in h
    (J* = diag(1 − h*²) W_hh is not symmetric; doc eq. 12).
    gru, lstm: PyTorch init with W_hh halved.  lru: |λ| ∈ [0.5, 0.9], any phase.  (CONTRACTIVE_PARAMS)
    """
    rng = np.random.default_rng(seed)
    if symmetric and cell_name != "rnn":
        raise UnsupportedError("symmetric=True is defined for the rnn only (linear, symmetric W_hh)")
    if symmetric not in (False, True, "tanh"):
        raise UnsupportedError(f"symmetric must be False, True (linear rnn) or 'tanh', got {symmetric!r}")
    linear = symmetric is True
    cell = resolve_cell(cell_name, I, H, dtype, **({"nonlinearity": "linear"} if linear else {}))
    params = CONTRACTIVE_PARAMS[cell_name](cell, rng, symmetric)
    S = readout_width(cell)
    readout = {"weight": rng.uniform(-1, 1, (O, S)).astype(cell.dtype) / math.sqrt(S),
               "bias": rng.uniform(-0.1, 0.1, O).astype(cell.dtype)}
    x = rng.standard_normal((B, I)).astype(cell.dtype)
    y = rng.standard_normal((B, O)).astype(cell.dtype)
    return cell, params, readout, x, y


def _flat(grads: dict, keys) -> np.ndarray:
    return np.concatenate([np.ravel(grads[k]) for k in keys])


def alignment(cell_name: str, *, betas=(1e-2, 1e-3), seeds=(0, 1, 2), H: int = 8, I: int = 4, O: int = 3,
              T: int = 400, symmetric=False) -> list:
    """EP (9) against RBP (6) on contractive problems: one row per (seed, β).

    The comparison is over the cell parameters and x (the readout gradients are identical by construction).
    Returns a list of dicts: cell, beta, seed, cosine, rel_error (EP vs RBP), rel_error_limit (EP vs eq. 10),
    residual (free phase).
    """
    rows = []
    for seed in seeds:
        cell, params, readout, x, y = contractive_problem(cell_name, seed, H=H, I=I, O=O, symmetric=symmetric)
        keys = list(params) + ["x"]
        _, g_rbp = rbp_grads(cell, params, readout, x, y, T=T)
        _, g_lim = vf_limit_grads(cell, params, readout, x, y, T=T)
        _, residual = fixed_point(cell, params, x, T=T)
        for beta in betas:
            _, g_ep = ep_cell_grads(cell, params, readout, x, y, T=T, K=T, beta=beta)
            a, b = _flat(g_ep, keys), _flat(g_rbp, keys)
            label = {False: "", True: "-linear-sym", "tanh": "-tanh-sym"}[symmetric]
            rows.append({"cell": cell_name + label, "beta": beta, "seed": seed,
                         "cosine": cosine(a, b), "rel_error": rel_error(a, b),
                         "rel_error_limit": rel_error(a, _flat(g_lim, keys)), "residual": residual})
    return rows


def alignment_table(betas=(1e-2, 1e-3), seeds=(0, 1, 2)) -> str:
    """The markdown table of docs/derivations/ep_cells.md.

    Regenerate it with: python3 -c 'from refimpl.ep.cells import alignment_table; print(alignment_table())'
    """
    lines = ["| cell | β | seed | cosine(EP, RBP) | rel. error vs RBP | rel. error vs eq. (10) |",
             "|---|---|---|---|---|---|"]
    cases = [("rnn", True), ("rnn", "tanh")] + [(c, False) for c in CELLS_EP]
    for name, sym in cases:
        for r in alignment(name, betas=betas, seeds=seeds, symmetric=sym):
            lines.append(f"| {r['cell']} | {r['beta']:g} | {r['seed']} | {r['cosine']:.6f} | {r['rel_error']:.2e} "
                         f"| {r['rel_error_limit']:.2e} |")
    return "\n".join(lines)
