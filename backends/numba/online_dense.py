r"""The dense cells' RTRL family (rnn, gru, lstm .rtrl / .snap1 / .truncated / .spatial; lstm.cec) as Numba loops.

Same signatures, output names, dtypes and shapes as the references (refimpl/kernels.py → refimpl/algorithms/rtrl.py
sweep): each kernel sweeps one chunk of a stream, (params, x, h0 | state0, dh, carry=None) → {param: gradient over the
chunk, "state": the state after it, "carry": the traces after it}, so that a stream cut into chunks of any size gives
the gradients of one uncut sweep (DESIGN.md §5). The carry is the reference's trace layout exactly (rtrl.py, "Trace
layouts"): "dense" (B, S, *shape) for rtrl, "unit" (B, R, H, G, *X) for snap1 and cec, {} for truncated and spatial;
carry None is S_{-1} = 0. It is converted to the loops' layouts below once per call, on the way in and out (the
kernels section); carry_out=False (a stream's last chunk) skips the way out and hands on "carry" None. Equation
numbers: "(r n)" is refimpl/algorithms/rtrl.py and docs/derivations/rtrl.md (same numbering), "(n)" the cell's module
in refimpl/cells/. Shapes: B batch, T time, I input width, H hidden units, G gate
blocks (rnn 1, gru 3, lstm 4), R state rows per unit (the cell's STATE_ROWS: 1; 2 for the lstm's (h_k, c_k)),
S = R·H the state width (rows [h; c] for the lstm), C = I + H + 2.

truncated, spatial. Truncation (r 13) holds s_{t-1} constant, so S_t = P_t (nothing is carried) and the gradient
Σ_t Σ_b Σ_k S_t[b, k, …] δ_t[b, k] (r 4) is the cell's step backward driven by the instantaneous adjoint δ_t = dh_t
alone: the sweep IS the BPTT kernel of cells.py without its carry (propagate=False). Spatial (r 14) is the same with
the recurrent parameters held constant (exact zeros); the states still run through the full recurrence.

rtrl, snap1, cec. One parameter axis for all four parameters: row gH+i of weight_ih, bias_ih, weight_hh and bias_hh all
feed the same pre-activation a_{gH+i}, so they are read as the columns of ONE augmented row [W_ih | b_ih | W_hh | b_hh]
(G·H, C) acting on z_t = [x_t, 1, h_{t-1}, 1]; parameter column p = (gH+i)·C + c. The immediate derivative (r 2) of
state row rH+k is then an outer product (rnn (8), gru (15), lstm (14)):

    (r 2)  P_t[b, rH+k, (gH+i)·C + c] = [i = k] F_t[b, r, g, k] z_t[b, c]
           F = F_ih on the ih columns c < I+1, F = F_hh on the hh columns: rnn F_ih = F_hh = φ'(a_t) (rnn (8));
           gru F_ih = [s_r, s_z, s_n], F_hh = [s_r, s_z, s_m] (gru (13)); lstm F_ih = F_hh = [S_h; S_c] (lstm (12))
    (r 2)  J_t = [Jh_t | 0] + E_t:   Jh_t[b, rH+k, j] = Σ_g F_hh[b, r, g, k] W_hh[gH+k, j]   the h_{t-1} columns,
           E_t[b, r, k] = ∂s_t[rH+k]/∂s_{t-1}[(R−1)H+k] beyond W_hh: rnn 0 (rnn (7)), gru z (the diag(z) of gru (14)),
           lstm (κ f, f) on the c_{t-1} column (lstm (13))

  F and E are read off the cell's step adjoint (cells.py) seeded with one state row: F[b, r] are the gate adjoints and
  E[b, r] the adjoint carried to s_{t-1}'s last row, for the seed s̄_t = e_{rH+k} (step_factors). FPTT (fptt_dense.py)
  steps the cells through the same step_factors.

rtrl (the full sensitivity S_t (B, S, G·H·C), O(S·P) memory):

    (r 3)  S_t = Jh_t S_{t-1}[:H] + P_t + E_t ⊙ S_{t-1}[(R−1)H:]          BLAS GEMM (S, H) @ (H, ·) per b and step
    (r 4)  ∂L/∂θ = Σ_t Σ_b δ_t[b] S_t[b, :H]                              (h rows only)

  S_{-1} is the carried trace (zero at a stream's start, when the first step's GEMM is skipped).
  The GEMM is the O(S·H·P) hot part: for the lstm, whose c_{t-1} columns of J_t are diagonal, it multiplies only the
  h_{t-1} half of S_{t-1}; P_t is added on its pattern in O(R·P). The parameter axis is cut into column blocks of
  whole augmented rows (about BLOCK entries of S per block, the last one zero-padded), stored contiguously
  (B, n_blocks, S, rows·C): per block the GEMM writes a block-sized buffer, P_t is added to it, and one fused pass adds
  E_t ⊙ S_{t-1}, writes S_t back in place and accumulates (r 4) — all while the block sits in cache, and with one copy
  of S instead of two. NOTE: this only regroups the columns; every entry of S_t is the same sum over H as without
  blocks.

snap1 and cec (the compact trace T_t[b, k, r, g, c] = S_t[b, rH+k, (gH+k)·C + c], (r 9): O(R·P) memory and work):

    (r 11) T_t[b, k] = D_t[b, k] T_{t-1}[b, k] + P̂_t[b, k],   D_t[b, k, r, q] = J_t[b, rH+k, qH+k]:
           D[r, 0] = Σ_g F_hh[r, g, k] W_hh[gH+k, k] (+ E for R = 1),  D[r, R−1] += E[r, k];
           P̂_t[b, k, r, g, c] = F_t[b, r, g, k] z_t[b, c]
    (r 15) cec: the h_{t-1} column of D is dropped, D = [[0, κ f], [0, f]] (then (r 11) is (r 16))
    (r 12) ∂L/∂θ[gH+k, c] = Σ_t Σ_b δ_t[b, k] T_t[b, k, 0, g, c]          (fused into the update loop)
  T_{-1} is the carried trace (the reference's "unit" layout (B, R, H, G, *X) with its units moved first), or zero.

Layout: the input projection of all T steps is ONE GEMM outside the time loop (runtime.input_projection); each sweep is
ONE @njit(cache=True) loop that advances the states per step (one BLAS GEMM h_{t-1} W_hhᵀ into a buffer), forms F,
E in the state dtype, and updates the carried traces in place; every buffer is allocated once, before the loop.
Float32 kernels stay in float32 (the references run in the parameters' dtype too). Everything is sequential and in a
fixed order (no prange reductions): results are bit-reproducible run to run. Inputs are never written to (the carry
included); every output is a fresh array.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from refimpl.cells import CELLS

from ..common import check_nonlinearity, param_grads
from .cells import (gru_adjoint, gru_backward, gru_forward, gru_gates, lstm_adjoint, lstm_backward, lstm_forward,
                    lstm_gates, rnn_backward, rnn_forward, rnn_gate, rnn_slope)
from .runtime import check_carry, contiguous, input_projection, plan, scalars


class DenseCell(NamedTuple):
    """What the sweeps need to know of a dense cell beyond its reference module (refimpl.cells.CELLS)."""
    kind: int        # which step of step_factors
    gates: int       # G, the gate blocks of its pre-activation (rows of weight_ih: G·H)
    tied: bool       # weight_ih and weight_hh see the same gate adjoints (F_ih = F_hh); not the gru (s_m, not s_n)


_RNN, _GRU, _LSTM = 0, 1, 2
DENSE = {"rnn": DenseCell(_RNN, 1, True), "gru": DenseCell(_GRU, 3, False), "lstm": DenseCell(_LSTM, 4, True)}
#: rtrl's column block, in trace entries per batch element: S × (rows·C) ≈ BLOCK (at least one augmented row), so that
#: a block of S_{t-1} and its product with Jh_t stay in cache through the step's passes over it (docs/backends.md).
#: This size also makes the registered parity sizes run several blocks with a zero-padded last one, so the blocking
#: itself is parity-tested.
BLOCK = 4096


# ------------------------------------------------------------------------------- one step and its factors (r 2)
# Common signature: s (B, S) holds s_{t-1} on entry and s_t on exit; hp ← h_{t-1}; rec is the (B, G·H) buffer of
# h_{t-1} W_hhᵀ; F_ih, F_hh (B, R, G, H) and E (B, R, H) as in the module docstring (E starts as zeros).

@njit(cache=True)
def _rnn_step(pre_t, s, W_hhT, b_hh, one, use_tanh, rec, hp, F_ih, F_hh, E):
    """(1)(2) h_t = φ(a_t); F = φ'(a_t) (3)(8); E = 0 (J_t = diag(φ') W_hh, (7))."""
    B, H = hp.shape
    hp[:] = s
    np.dot(hp, W_hhT, rec)                                               # (1) W_hh h_{t-1}
    for b in range(B):
        for k in range(H):
            hk = rnn_gate(pre_t[b, k] + rec[b, k] + b_hh[k], use_tanh)   # (1), (2)
            s[b, k] = hk
            d = rnn_slope(hk, use_tanh, one)                             # (3) φ'(a_t)
            F_ih[b, 0, 0, k] = d                                         # (8)
            F_hh[b, 0, 0, k] = d


@njit(cache=True)
def _gru_step(gi_t, s, W_hhT, b_hh, one, use_tanh, gh, hp, F_ih, F_hh, E):
    """(1)-(5) h_t; F_ih = [s_r, s_z, s_n], F_hh = [s_r, s_z, s_m] (13): the adjoint (6)-(9) of h̄_t = 1, m̄ = ā_n r;
    E = z (the diag(z) of (14))."""
    B, H = hp.shape
    hp[:] = s
    np.dot(hp, W_hhT, gh)
    for b in range(B):
        for k in range(H):
            m = gh[b, 2 * H + k] + b_hh[2 * H + k]                                               # (3)
            rr, zz, nn, s[b, k] = gru_gates(gi_t[b, k] + (gh[b, k] + b_hh[k]),
                                            gi_t[b, H + k] + (gh[b, H + k] + b_hh[H + k]), gi_t[b, 2 * H + k], m,
                                            hp[b, k], one)                                       # (1)-(5)
            s_r, s_z, s_n = gru_adjoint(one, hp[b, k], rr, zz, nn, m, one)                       # (13)
            F_ih[b, 0, 0, k], F_ih[b, 0, 1, k], F_ih[b, 0, 2, k] = s_r, s_z, s_n                 # (13) S_ih
            F_hh[b, 0, 0, k], F_hh[b, 0, 1, k], F_hh[b, 0, 2, k] = s_r, s_z, s_n * rr            # (13) S_hh, s_m
            E[b, 0, k] = zz                                                                      # (14) diag(z)


@njit(cache=True)
def _lstm_step(pre_t, s, W_hhT, b_hh, one, use_tanh, rec, hp, F_ih, F_hh, E):
    """s = [h | c]: (1)-(4) the step; F_ih = F_hh = [S_h; S_c] (12) and E = (κ f, f), the c_{t-1} column of (13): the
    adjoint (5)-(8) of (h̄_t, c̄_t) = (1, 0), resp. (0, 1)."""
    B, H = hp.shape
    zero = one - one
    hp[:] = s[:, :H]
    np.dot(hp, W_hhT, rec)                                               # (1) W_hh h_{t-1}
    for b in range(B):
        for k in range(H):
            cp = s[b, H + k]
            ii, ff, gg, oo, cc, tc, s[b, k] = lstm_gates(
                pre_t[b, k] + rec[b, k] + b_hh[k], pre_t[b, H + k] + rec[b, H + k] + b_hh[H + k],
                pre_t[b, 2 * H + k] + rec[b, 2 * H + k] + b_hh[2 * H + k],
                pre_t[b, 3 * H + k] + rec[b, 3 * H + k] + b_hh[3 * H + k], cp)                   # (1)-(4)
            s[b, H + k] = cc
            for r in range(2):                                                                   # rows h, c
                a_i, a_f, a_g, a_o, e = lstm_adjoint(one if r == 0 else zero, zero if r == 0 else one, cp, ii, ff,
                                                     gg, oo, tc, one)                            # (12), (13)
                F_ih[b, r, 0, k], F_ih[b, r, 1, k], F_ih[b, r, 2, k], F_ih[b, r, 3, k] = a_i, a_f, a_g, a_o
                F_hh[b, r, 0, k], F_hh[b, r, 1, k], F_hh[b, r, 2, k], F_hh[b, r, 3, k] = a_i, a_f, a_g, a_o
                E[b, r, k] = e


@njit(cache=True)
def step_factors(kind, pre_t, s, W_hhT, b_hh, one, use_tanh, rec, hp, F_ih, F_hh, E):
    """Advance s from s_{t-1} to s_t and form the step's factors F_ih, F_hh, E (module docstring) for cell `kind`."""
    if kind == _RNN:
        _rnn_step(pre_t, s, W_hhT, b_hh, one, use_tanh, rec, hp, F_ih, F_hh, E)
    elif kind == _GRU:
        _gru_step(pre_t, s, W_hhT, b_hh, one, use_tanh, rec, hp, F_ih, F_hh, E)
    else:
        _lstm_step(pre_t, s, W_hhT, b_hh, one, use_tanh, rec, hp, F_ih, F_hh, E)


def sweep_inputs(cell: str, params: dict, x: np.ndarray, state0):
    """The arguments every dense sweep starts from: (dtype, s0 = the flattened state (B, S), x W_ihᵀ + b_ih for all
    T steps (T, B, G·H), W_hhᵀ, W_hh, b_hh), in the dtype of x, the parameters and the state."""
    flat = CELLS[cell].flatten_state(state0)                             # [h | c] (B, 2H) for the lstm
    dt = np.result_type(x, params["weight_ih"], flat)
    T, B, _ = x.shape
    W_hh = contiguous(params["weight_hh"], dt)
    pre = input_projection(x, contiguous(params["weight_ih"], dt), params["bias_ih"], dt, plan(T, B, W_hh.shape[1]),
                           "sweep.pre")
    return dt, contiguous(flat, dt), pre, contiguous(W_hh.T, dt), W_hh, contiguous(params["bias_hh"], dt)


@njit(cache=True)
def _fill_z(z, x_tb, hp_b, one):
    """z_t = [x_t, 1, h_{t-1}, 1] (C): the input of the augmented parameter row."""
    I, H = x_tb.shape[0], hp_b.shape[0]
    z[:I] = x_tb
    z[I] = one
    z[I + 1:I + 1 + H] = hp_b
    z[I + 1 + H] = one


# ------------------------------------------------------------------------------------------------- rtrl (r 3, 4)

@njit(cache=True)
def _rtrl_loop(kind, pre, s, x, dh, W_hhT, W_hh, b_hh, one, use_tanh, R, rows, fresh, sens, grad):
    """pre (T, B, G·H) = x W_ihᵀ + b_ih, s (B, S) = s_{-1} on entry and the last state on exit, dh (T, B, H),
    sens (B, n_blocks, S, rows·C) = the carried S_{-1} on entry (zero when `fresh`) and S_{T-1} on exit. The parameter
    axis runs in blocks of `rows` augmented rows (rows·C columns; the last block zero-padded); accumulates grad
    (n_blocks, rows·C) in the state dtype (r 4)."""
    T, B, GH = pre.shape
    I = x.shape[2]
    H = W_hh.shape[1]
    G = GH // H
    S, C = R * H, I + H + 2
    n_blocks, Pc = grad.shape
    dt = pre.dtype
    rec, hp, z = np.empty((B, GH), dt), np.empty((B, H), dt), np.empty(C, dt)
    F_ih, F_hh, E = np.zeros((B, R, G, H), dt), np.zeros((B, R, G, H), dt), np.zeros((B, R, H), dt)
    Jh, new = np.empty((B, S, H), dt), np.empty((S, Pc), dt)
    for t in range(T):
        step_factors(kind, pre[t], s, W_hhT, b_hh, one, use_tanh, rec, hp, F_ih, F_hh, E)
        for b in range(B):
            for r in range(R):                                              # (r 2) Jh: the h_{t-1} columns of J_t
                for k in range(H):
                    row = Jh[b, r * H + k]
                    row[:] = 0.0
                    for g in range(G):
                        f, w = F_hh[b, r, g, k], W_hh[g * H + k]
                        for j in range(H):
                            row[j] += f * w[j]
            _fill_z(z, x[t, b], hp[b], one)
            for blk in range(n_blocks):
                Sb, acc = sens[b, blk], grad[blk]                           # (S, Pc): S_{t-1}, then S_t, in place
                if t > 0 or not fresh:
                    np.dot(Jh[b], Sb[:H], new)                              # (r 3) Jh_t S_{t-1}[:H]
                else:
                    new[:] = 0.0                                            # S_{-1} = 0: a stream's start
                for rho in range(blk * rows, min(blk * rows + rows, GH)):   # (r 3) + P_t on its pattern (r 2)
                    g, k = rho // H, rho % H
                    c0 = (rho - blk * rows) * C
                    for r in range(R):
                        row = new[r * H + k, c0:c0 + C]
                        fi, fh = F_ih[b, r, g, k], F_hh[b, r, g, k]
                        for c in range(I + 1):
                            row[c] += fi * z[c]
                        for c in range(I + 1, C):
                            row[c] += fh * z[c]
                # (r 3) + E_t ⊙ S_{t-1}[(R−1)H:], written back in place: the h rows first (they read the old c rows)
                for r in range(R):
                    for k in range(H):
                        e, src, dst, v = E[b, r, k], Sb[(R - 1) * H + k], Sb[r * H + k], new[r * H + k]
                        if r == 0:
                            d = dh[t, b, k]
                            for p in range(Pc):
                                u = v[p] + e * src[p]
                                dst[p] = u
                                acc[p] += d * u                             # (r 4) δ_t[b, k] S_t[b, k]
                        else:
                            for p in range(Pc):
                                dst[p] = v[p] + e * src[p]


# --------------------------------------------------------------------------------------- snap1, cec (r 9-12, 15-16)

@njit(cache=True)
def _snap1_loop(kind, pre, s, x, dh, W_hhT, W_hh, b_hh, one, use_tanh, R, cec, trace, acc):
    """As _rtrl_loop on the compact trace (B, H, R, G, C) (T_{-1}, the carried one or zero, on entry; T_{T-1} on
    exit); accumulates acc (G, H, C) = the gradient (r 12). cec (lstm only): the h_{t-1} column of D_t dropped
    (r 15)."""
    T, B, GH = pre.shape
    I = x.shape[2]
    H = W_hh.shape[1]
    G = GH // H
    C = I + H + 2
    dt = pre.dtype
    rec, hp, z = np.empty((B, GH), dt), np.empty((B, H), dt), np.empty(C, dt)
    F_ih, F_hh, E = np.zeros((B, R, G, H), dt), np.zeros((B, R, G, H), dt), np.zeros((B, R, H), dt)
    zero = one - one
    for t in range(T):
        step_factors(kind, pre[t], s, W_hhT, b_hh, one, use_tanh, rec, hp, F_ih, F_hh, E)
        for b in range(B):
            _fill_z(z, x[t, b], hp[b], one)
            for k in range(H):
                d0, d1 = zero, zero                                         # (r 11) J_t[rH+k, k], r = 0, 1
                if not cec:                                                 # (r 15) cec drops this column
                    for g in range(G):
                        d0 += F_hh[b, 0, g, k] * W_hh[g * H + k, k]
                        if R == 2:
                            d1 += F_hh[b, 1, g, k] * W_hh[g * H + k, k]
                delta = dh[t, b, k]
                for g in range(G):
                    T0, a = trace[b, k, 0, g], acc[g, k]
                    fi0, fh0 = F_ih[b, 0, g, k], F_hh[b, 0, g, k]
                    if R == 1:
                        d = d0 + E[b, 0, k]                                 # (r 11) the diagonal of J_t
                        for c in range(I + 1):
                            v = d * T0[c] + fi0 * z[c]                      # (r 11)
                            T0[c] = v
                            a[c] += delta * v                               # (r 12)
                        for c in range(I + 1, C):
                            v = d * T0[c] + fh0 * z[c]
                            T0[c] = v
                            a[c] += delta * v
                    else:                                                   # lstm: the 2×2 block [[d0, κf], [d1, f]]
                        T1 = trace[b, k, 1, g]
                        e0, e1 = E[b, 0, k], E[b, 1, k]
                        fi1, fh1 = F_ih[b, 1, g, k], F_hh[b, 1, g, k]
                        for c in range(I + 1):
                            u0, u1 = T0[c], T1[c]
                            v = d0 * u0 + e0 * u1 + fi0 * z[c]              # (r 11), (r 16) for cec
                            T0[c] = v
                            T1[c] = d1 * u0 + e1 * u1 + fi1 * z[c]
                            a[c] += delta * v                               # (r 12)
                        for c in range(I + 1, C):
                            u0, u1 = T0[c], T1[c]
                            v = d0 * u0 + e0 * u1 + fh0 * z[c]
                            T0[c] = v
                            T1[c] = d1 * u0 + e1 * u1 + fh1 * z[c]
                            a[c] += delta * v


# ---------------------------------------------------------------------------------------------------- the kernels
# The carry crosses the kernel boundary in the reference's layout (refimpl/algorithms/rtrl.py, "Trace layouts") and is
# converted to the loops' layout once per call, in and out: the four parameters of one row as the C columns of the
# augmented row, and for rtrl the blocked columns (B, n_blocks, S, rows·C), for snap1/cec units first (B, H, R, G, C).

def _join(parts: dict, out: np.ndarray, I: int, H: int) -> np.ndarray:
    """Write {weight_ih (…, I), bias_ih (…), weight_hh (…, H), bias_hh (…)} into out (…, C) as the augmented row
    [W_ih | b_ih | W_hh | b_hh]; returns out."""
    out[..., :I] = parts["weight_ih"]
    out[..., I] = parts["bias_ih"]
    out[..., I + 1:I + 1 + H] = parts["weight_hh"]
    out[..., I + 1 + H] = parts["bias_hh"]
    return out


def _cut(aug: np.ndarray, I: int, H: int) -> dict:
    """The inverse of _join: an augmented (…, C) array → {weight_ih, bias_ih, weight_hh, bias_hh} (C-contiguous
    copies)."""
    return {"weight_ih": aug[..., :I].copy(), "bias_ih": aug[..., I].copy(),
            "weight_hh": aug[..., I + 1:I + 1 + H].copy(), "bias_hh": aug[..., I + 1 + H].copy()}


def _split(params, g_rows):
    """The augmented (G·H, C) gradient → {weight_ih, bias_ih, weight_hh, bias_hh} in the params' order and dtypes."""
    return param_grads(params, _cut(g_rows, params["weight_ih"].shape[1], params["weight_hh"].shape[1]))


def _trace_shapes(rule: str, params: dict, B: int, R: int) -> dict:
    """{param: shape} of the reference's carried traces: "dense" (B, S, *shape) for rtrl, "unit" (B, R, H, G, *X)
    for snap1 and cec (rtrl.py, "Trace layouts")."""
    H = params["weight_hh"].shape[1]
    if rule == "rtrl":
        return {k: (B, R * H) + p.shape for k, p in params.items()}
    return {k: (B, R, H, p.shape[0] // H) + p.shape[1:] for k, p in params.items()}


def final_state(cell: str, s: np.ndarray):
    """The cell's state from the flattened s (B, S): h, or the lstm's LSTMState(h, c) (contiguous copies)."""
    R = CELLS[cell].STATE_ROWS
    H = s.shape[1] // R
    return CELLS[cell].state_from_parts(*(s[:, r * H:(r + 1) * H].copy() for r in range(R)))


def _sweep(cell, rule, params, x, state0, dh, carry, nonlinearity="tanh", carry_out=True):
    """rtrl, snap1 or cec of a dense cell (module docstring) over one chunk from the carried traces (None: zero)
    → {param: grad, "state", "carry"} ("carry" None, not converted back, with carry_out=False)."""
    kind, G, R = DENSE[cell].kind, DENSE[cell].gates, CELLS[cell].STATE_ROWS
    dt, s0, pre, W_hhT, W_hh, b_hh = sweep_inputs(cell, params, x, state0)
    one, _ = scalars(dt)
    T, B, I = x.shape
    H = W_hh.shape[1]
    S, C = R * H, I + H + 2
    if carry is not None:
        check_carry(carry, _trace_shapes(rule, params, B, R), f"{cell}.{rule}")
    s = s0.copy()                                                            # s_{-1}, advanced in place to s_{T-1}
    args = (kind, pre, s, contiguous(x, dt), contiguous(dh, dt), W_hhT, W_hh, b_hh, one, nonlinearity == "tanh", R)
    if rule == "rtrl":
        n_blocks = -(-G * H // max(1, min(G * H, BLOCK // (R * H * C))))     # column blocks of ≈ BLOCK entries
        rows = -(-G * H // n_blocks)                                         # augmented rows per block (least padding)
        if carry is None:
            sens = np.zeros((B, n_blocks, S, rows * C), dt)                  # S_{-1} = 0 (r 3) at a stream's start
        else:
            aug = np.zeros((B, S, n_blocks * rows, C), dt)                   # S[b, s, gH+i, c]; padded rows stay 0
            _join(carry, aug[:, :, :G * H], I, H)
            sens = np.ascontiguousarray(aug.reshape(B, S, n_blocks, rows * C).transpose(0, 2, 1, 3))   # blocked
        grad = np.zeros((n_blocks, rows * C), dt)
        _rtrl_loop(*args, rows, carry is None, sens, grad)
        grad = grad.reshape(-1)[:G * H * C]
        traces = _cut(sens.transpose(0, 2, 1, 3).reshape(B, S, n_blocks * rows, C)[:, :, :G * H], I, H) \
            if carry_out else None
    else:
        trace = np.zeros((B, H, R, G, C), dt)                                # T_{-1} = 0 (r 9) at a stream's start
        if carry is not None:
            _join(carry, trace.transpose(0, 2, 1, 3, 4), I, H)               # (B, R, H, G, ·) → units first
        grad = np.zeros((G, H, C), dt)
        _snap1_loop(*args, rule == "cec", trace, grad)
        traces = _cut(trace.transpose(0, 2, 1, 3, 4), I, H) if carry_out else None
    return {**_split(params, grad.reshape(G * H, C)), "state": final_state(cell, s),
            "carry": None if traces is None else {k: v.astype(x.dtype, copy=False) for k, v in traces.items()}}


_CELL_KERNELS = {"rnn": (rnn_forward, rnn_backward), "gru": (gru_forward, gru_backward),
                 "lstm": (lstm_forward, lstm_backward)}


def _truncated(cell, params, x, state0, dh, recurrent, carry_out=True, **options):
    """(r 13): the cell's forward, then its backward without the carry; (r 14) zeroes the recurrent parameters'.
    Nothing is carried (S_t = P_t): the carry is {} (None with carry_out=False) and any carry passed in is not read,
    as in the reference."""
    forward, backward = _CELL_KERNELS[cell]
    _, cache = forward(params, x, state0, **options)
    grads = backward(params, dh, cache, propagate=False, **options)
    out = {k: grads[k] for k in params}
    if not recurrent:
        for k in CELLS[cell].RECURRENT_PARAMS:                             # (r 14) held constant
            out[k] = np.zeros_like(params[k])
    parts = (getattr(cache, key[:-1])[-1].copy() for key in CELLS[cell].GRAD_STATE_KEYS)   # h (and c) at T−1
    return {**out, "state": CELLS[cell].state_from_parts(*parts), "carry": {} if carry_out else None}


def rnn_rtrl(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, carry=None,
             nonlinearity: str = "tanh", *, carry_out: bool = True) -> dict:
    """As kernel rnn.rtrl: exact RTRL (r 3, 4) over one chunk → {param: grad, "state", "carry": dense traces}."""
    check_nonlinearity(nonlinearity)
    return _sweep("rnn", "rtrl", params, x, h0, dh, carry, nonlinearity, carry_out=carry_out)


def rnn_snap1(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, carry=None,
              nonlinearity: str = "tanh", *, carry_out: bool = True) -> dict:
    """As kernel rnn.snap1: SnAp-1 on the compact trace (r 9-12) → {param: grad, "state", "carry": unit traces}."""
    check_nonlinearity(nonlinearity)
    return _sweep("rnn", "snap1", params, x, h0, dh, carry, nonlinearity, carry_out=carry_out)


def rnn_truncated(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, carry=None,
                  nonlinearity: str = "tanh", *, carry_out: bool = True) -> dict:
    """As kernel rnn.truncated: S_t = P_t (r 13) → {param: grad, "state", "carry": {}}."""
    return _truncated("rnn", params, x, h0, dh, True, carry_out, nonlinearity=nonlinearity)


def rnn_spatial(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, carry=None,
                nonlinearity: str = "tanh", *, carry_out: bool = True) -> dict:
    """As kernel rnn.spatial: (r 13) with weight_hh, bias_hh held constant (zero gradient, r 14); carry {}."""
    return _truncated("rnn", params, x, h0, dh, False, carry_out, nonlinearity=nonlinearity)


def gru_rtrl(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, carry=None,
             *, carry_out: bool = True) -> dict:
    """As kernel gru.rtrl: exact RTRL (r 3, 4) over one chunk → {param: grad, "state", "carry": dense traces}."""
    return _sweep("gru", "rtrl", params, x, h0, dh, carry, carry_out=carry_out)


def gru_snap1(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, carry=None,
              *, carry_out: bool = True) -> dict:
    """As kernel gru.snap1: SnAp-1 on the compact trace (r 9-12) → {param: grad, "state", "carry": unit traces}."""
    return _sweep("gru", "snap1", params, x, h0, dh, carry, carry_out=carry_out)


def gru_truncated(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, carry=None,
                  *, carry_out: bool = True) -> dict:
    """As kernel gru.truncated: S_t = P_t (r 13) → {param: grad, "state", "carry": {}}."""
    return _truncated("gru", params, x, h0, dh, True, carry_out)


def gru_spatial(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, carry=None,
                *, carry_out: bool = True) -> dict:
    """As kernel gru.spatial: (r 13) with weight_hh, bias_hh held constant (zero gradient, r 14); carry {}."""
    return _truncated("gru", params, x, h0, dh, False, carry_out)


def lstm_rtrl(params: dict, x: np.ndarray, state0, dh: np.ndarray, carry=None, *, carry_out: bool = True) -> dict:
    """As kernel lstm.rtrl: exact RTRL (r 3, 4) on the state [h; c] → {param: grad, "state", "carry": dense
    traces}."""
    return _sweep("lstm", "rtrl", params, x, state0, dh, carry, carry_out=carry_out)


def lstm_snap1(params: dict, x: np.ndarray, state0, dh: np.ndarray, carry=None, *, carry_out: bool = True) -> dict:
    """As kernel lstm.snap1: SnAp-1 with the per-unit 2×2 blocks (r 9-12) → {param: grad, "state", "carry": unit
    traces}."""
    return _sweep("lstm", "snap1", params, x, state0, dh, carry, carry_out=carry_out)


def lstm_cec(params: dict, x: np.ndarray, state0, dh: np.ndarray, carry=None, *, carry_out: bool = True) -> dict:
    """As kernel lstm.cec: the compact recursion with D_t = [[0, κf], [0, f]] (r 15, 16) → {param: grad, "state",
    "carry": unit traces}."""
    return _sweep("lstm", "cec", params, x, state0, dh, carry, carry_out=carry_out)


def lstm_truncated(params: dict, x: np.ndarray, state0, dh: np.ndarray, carry=None, *, carry_out: bool = True) -> dict:
    """As kernel lstm.truncated: S_t = P_t (r 13): both h_{t-1} and c_{t-1} held constant; carry {}."""
    return _truncated("lstm", params, x, state0, dh, True, carry_out)


def lstm_spatial(params: dict, x: np.ndarray, state0, dh: np.ndarray, carry=None, *, carry_out: bool = True) -> dict:
    """As kernel lstm.spatial: (r 13) with weight_hh, bias_hh held constant (zero gradient, r 14); carry {}."""
    return _truncated("lstm", params, x, state0, dh, False, carry_out)


KERNELS = {"rnn.rtrl": rnn_rtrl, "rnn.snap1": rnn_snap1, "rnn.truncated": rnn_truncated, "rnn.spatial": rnn_spatial,
           "gru.rtrl": gru_rtrl, "gru.snap1": gru_snap1, "gru.truncated": gru_truncated, "gru.spatial": gru_spatial,
           "lstm.rtrl": lstm_rtrl, "lstm.snap1": lstm_snap1, "lstm.cec": lstm_cec,
           "lstm.truncated": lstm_truncated, "lstm.spatial": lstm_spatial}
