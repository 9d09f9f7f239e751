r"""The dense cells' sensitivity sweeps (rnn, gru .rtrl / .snap1; lstm .rtrl / .snap1 / .cec) as Numba loops.

Same signatures, output names, dtypes and shapes as the references (refimpl/kernels.py → refimpl/algorithms/rtrl.py
cell_grads_online): {param: gradient} from zero traces. Equation numbers: "(r n)" is refimpl/algorithms/rtrl.py and
docs/derivations/rtrl.md (same numbering), "(n)" the cell's module in refimpl/cells/. Shapes: B batch, T time, I input
width, H hidden units, G gate blocks (rnn 1, gru 3, lstm 4), R state rows per unit (1; 2 for the lstm's (h_k, c_k)),
S = R·H the state width (rows [h; c] for the lstm), C = I + H + 2.

One parameter axis for all four parameters. Row gH+i of weight_ih, bias_ih, weight_hh and bias_hh all feed the same
pre-activation a_{gH+i}, so they are read as the columns of ONE augmented row [W_ih | b_ih | W_hh | b_hh] (G·H, C)
acting on z_t = [x_t, 1, h_{t-1}, 1]; parameter column p = (gH+i)·C + c. The immediate derivative (r 2) of state row
rH+k is then an outer product (rnn (8), gru (15), lstm (14)):

    (r 2)  P_t[b, rH+k, (gH+i)·C + c] = [i = k] F_t[b, r, g, k] z_t[b, c]
           F = F_ih on the ih columns c < I+1, F = F_hh on the hh columns: rnn F_ih = F_hh = φ'(a_t) (rnn (8));
           gru F_ih = [s_r, s_z, s_n], F_hh = [s_r, s_z, s_m] (gru (13)); lstm F_ih = F_hh = [S_h; S_c] (lstm (12))
    (r 2)  J_t = [Jh_t | 0] + E_t:   Jh_t[b, rH+k, j] = Σ_g F_hh[b, r, g, k] W_hh[gH+k, j]   the h_{t-1} columns,
           E_t[b, r, k] = ∂s_t[rH+k]/∂s_{t-1}[(R−1)H+k] beyond W_hh: rnn 0 (rnn (7)), gru z (the diag(z) of gru (14)),
           lstm (κ f, f) on the c_{t-1} column (lstm (13))

rtrl (the full sensitivity S_t (B, S, G·H·C), O(S·P) memory):

    (r 3)  S_t = Jh_t S_{t-1}[:H] + P_t + E_t ⊙ S_{t-1}[(R−1)H:]          BLAS GEMM (S, H) @ (H, ·) per b and step
    (r 4)  ∂L/∂θ = Σ_t Σ_b δ_t[b] S_t[b, :H]                              (h rows only)

  The GEMM is the O(S·H·P) hot part: for the lstm, whose c_{t-1} columns of J_t are diagonal, it multiplies only the
  h_{t-1} half of S_{t-1} (half the flops of the dense (2H, 2H) product); P_t is added on its pattern in O(R·P).
  The parameter axis is cut into column blocks of whole augmented rows (about BLOCK entries of S per block, the
  last one zero-padded), stored contiguously (B, n_blocks, S, rows·C): per block the GEMM writes a block-sized buffer,
  P_t is added to it, and one fused pass adds E_t ⊙ S_{t-1}, writes S_t back in place and accumulates (r 4) — all
  while the block sits in cache, and with one copy of S instead of two. NOTE: this only regroups the columns; every
  entry of S_t is the same sum over H as without blocks.

snap1 and cec (the compact trace T_t[b, k, r, g, c] = S_t[b, rH+k, (gH+k)·C + c], (r 9): O(R·P) memory and work):

    (r 11) T_t[b, k] = D_t[b, k] T_{t-1}[b, k] + P̂_t[b, k],   D_t[b, k, r, q] = J_t[b, rH+k, qH+k]:
           D[r, 0] = Σ_g F_hh[r, g, k] W_hh[gH+k, k] (+ E for R = 1),  D[r, R−1] += E[r, k];
           P̂_t[b, k, r, g, c] = F_t[b, r, g, k] z_t[b, c]
    (r 15) cec: the h_{t-1} column of D is dropped, D = [[0, κ f], [0, f]] (then (r 11) is (r 16))
    (r 12) ∂L/∂θ[gH+k, c] = Σ_t Σ_b δ_t[b, k] T_t[b, k, 0, g, c]          (fused into the update loop)

Layout: the input projection of all T steps is ONE GEMM outside the time loop (as cells.py); each sweep is ONE
@njit(cache=True) loop that advances the states per step (one BLAS GEMM h_{t-1} W_hhᵀ into a buffer), forms F, E
(and Jh) in the state dtype, and updates the traces in place; every buffer is allocated once, before the loop.
The three cells share the loops through one gate step per cell with a common signature, chosen by `kind`. Float32
kernels stay in float32 (the references run in the parameters' dtype too). Everything is sequential and in a fixed
order (no prange reductions): results are bit-reproducible run to run. Inputs are never written to; every output is
a fresh array.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .cells import _c, _check_nonlinearity, _consts, _param_grads
from .dense_online import _dtype, _projection, gru_point

_RNN, _GRU, _LSTM = 0, 1, 2
#: (kind, G gate blocks, R state rows per unit) of each cell
_CELL = {"rnn": (_RNN, 1, 1), "gru": (_GRU, 3, 1), "lstm": (_LSTM, 4, 2)}
#: rtrl's column block, in trace entries per batch element: S × (rows·C) ≈ BLOCK (at least one augmented row), so that
#: a block of S_{t-1} and its product with Jh_t (2 × 32 KiB in float64) stay in cache through the step's passes over
#: it. Blocks of 2k … 32k entries timed alike (H = 32 … 128); this size also makes the registered parity sizes run
#: several blocks with a zero-padded last one, so the blocking itself is parity-tested.
BLOCK = 4096


# ------------------------------------------------------------------------------- one gate step per cell (r 2)
# Common signature: s (B, S) holds s_{t-1} on entry and s_t on exit; hp ← h_{t-1}; rec is the (B, G·H) buffer of
# h_{t-1} W_hhᵀ; F_ih, F_hh (B, R, G, H) and E (B, R, H) as in the module docstring.

@njit(cache=True)
def _rnn_gates(pre_t, s, W_hhT, b_hh, one, half, use_tanh, rec, hp, F_ih, F_hh, E):
    """(1)(2) h_t = φ(a_t); F = φ'(a_t) (3)(8); E = 0 (J_t = diag(φ') W_hh, (7))."""
    B, H = hp.shape
    hp[:] = s
    np.dot(hp, W_hhT, rec)                                               # (1) W_hh h_{t-1}
    for b in range(B):
        for k in range(H):
            a = pre_t[b, k] + rec[b, k] + b_hh[k]                        # (1)
            hk = np.tanh(a) if use_tanh else a                           # (2)
            s[b, k] = hk
            d = one - hk * hk if use_tanh else one                       # (3) φ'(a_t)
            F_ih[b, 0, 0, k] = d                                         # (8)
            F_hh[b, 0, 0, k] = d


@njit(cache=True)
def _gru_gates(gi_t, s, W_hhT, b_hh, one, half, use_tanh, gh, hp, F_ih, F_hh, E):
    """(1)-(5) h_t; F_ih = [s_r, s_z, s_n], F_hh = [s_r, s_z, s_m] (13); E = z (the diag(z) of (14))."""
    B, H = hp.shape
    hp[:] = s
    np.dot(hp, W_hhT, gh)
    for b in range(B):
        for k in range(H):
            rr, zz, mm, nn, s[b, k], s_r, s_z, s_n = gru_point(gi_t, gh, b_hh, hp[b, k], b, k, H, one, half)
            F_ih[b, 0, 0, k], F_ih[b, 0, 1, k], F_ih[b, 0, 2, k] = s_r, s_z, s_n                 # (13) S_ih
            F_hh[b, 0, 0, k], F_hh[b, 0, 1, k], F_hh[b, 0, 2, k] = s_r, s_z, s_n * rr            # (13) S_hh, s_m
            E[b, 0, k] = zz                                                                      # (14) diag(z)


@njit(cache=True)
def _lstm_gates(pre_t, s, W_hhT, b_hh, one, half, use_tanh, rec, hp, F_ih, F_hh, E):
    """s = [h | c]: (1)-(4) the step; F_ih = F_hh = [S_h; S_c] (12); E = (κ f, f), the c_{t-1} column of (13)."""
    B, H = hp.shape
    hp[:] = s[:, :H]
    np.dot(hp, W_hhT, rec)                                               # (1) W_hh h_{t-1}
    for b in range(B):
        for k in range(H):
            ii = half * (one + np.tanh(half * (pre_t[b, k] + rec[b, k] + b_hh[k])))                       # (1)(2)
            ff = half * (one + np.tanh(half * (pre_t[b, H + k] + rec[b, H + k] + b_hh[H + k])))           # (1)(2)
            gg = np.tanh(pre_t[b, 2 * H + k] + rec[b, 2 * H + k] + b_hh[2 * H + k])                       # (1)(2)
            oo = half * (one + np.tanh(half * (pre_t[b, 3 * H + k] + rec[b, 3 * H + k] + b_hh[3 * H + k])))
            cp = s[b, H + k]
            cc = ff * cp + ii * gg                                                                        # (3)
            tt = np.tanh(cc)                                                                              # (4)
            s[b, k], s[b, H + k] = oo * tt, cc                                                            # (4)
            kappa = oo * (one - tt * tt)                                                                  # (12) κ
            s_i = gg * ii * (one - ii)                                                                    # (12)
            s_f = cp * ff * (one - ff)                                                                    # (12)
            s_g = ii * (one - gg * gg)                                                                    # (12)
            s_o = tt * oo * (one - oo)                                                                    # (12)
            for F in (F_ih, F_hh):
                F[b, 0, 0, k], F[b, 0, 1, k], F[b, 0, 2, k], F[b, 0, 3, k] = kappa * s_i, kappa * s_f, kappa * s_g, s_o
                F[b, 1, 0, k], F[b, 1, 1, k], F[b, 1, 2, k], F[b, 1, 3, k] = s_i, s_f, s_g, 0.0     # (12) S_c
            E[b, 0, k], E[b, 1, k] = kappa * ff, ff                                                       # (13)


@njit(cache=True)
def _gates(kind, pre_t, s, W_hhT, b_hh, one, half, use_tanh, rec, hp, F_ih, F_hh, E):
    if kind == _RNN:
        _rnn_gates(pre_t, s, W_hhT, b_hh, one, half, use_tanh, rec, hp, F_ih, F_hh, E)
    elif kind == _GRU:
        _gru_gates(pre_t, s, W_hhT, b_hh, one, half, use_tanh, rec, hp, F_ih, F_hh, E)
    else:
        _lstm_gates(pre_t, s, W_hhT, b_hh, one, half, use_tanh, rec, hp, F_ih, F_hh, E)


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
def _rtrl_loop(kind, pre, s0, x, dh, W_hhT, W_hh, b_hh, one, half, use_tanh, R, rows, grad):
    """pre (T, B, G·H) = x W_ihᵀ + b_ih, s0 (B, S), dh (T, B, H). The parameter axis runs in blocks of `rows`
    augmented rows (rows·C columns; the last block zero-padded); accumulates grad (n_blocks, rows·C) in the state
    dtype (r 4)."""
    T, B, GH = pre.shape
    I = x.shape[2]
    H = W_hh.shape[1]
    G = GH // H
    S, C = R * H, I + H + 2
    n_blocks, Pc = grad.shape
    dt = pre.dtype
    s = s0.copy()
    rec, hp, z = np.empty((B, GH), dt), np.empty((B, H), dt), np.empty(C, dt)
    F_ih, F_hh, E = np.zeros((B, R, G, H), dt), np.zeros((B, R, G, H), dt), np.zeros((B, R, H), dt)
    Jh, new = np.empty((B, S, H), dt), np.empty((S, Pc), dt)
    sens = np.zeros((B, n_blocks, S, Pc), dt)                                # S_{-1} = 0 (r 3), blocked columns
    for t in range(T):
        _gates(kind, pre[t], s, W_hhT, b_hh, one, half, use_tanh, rec, hp, F_ih, F_hh, E)
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
                if t > 0:
                    np.dot(Jh[b], Sb[:H], new)                              # (r 3) Jh_t S_{t-1}[:H]
                else:
                    new[:] = 0.0                                            # S_{-1} = 0
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
def _snap1_loop(kind, pre, s0, x, dh, W_hhT, W_hh, b_hh, one, half, use_tanh, R, cec, acc):
    """As _rtrl_loop on the compact trace (B, H, R, G, C); accumulates acc (G, H, C) = the gradient (r 12).
    cec (lstm only): the h_{t-1} column of D_t dropped (r 15)."""
    T, B, GH = pre.shape
    I = x.shape[2]
    H = W_hh.shape[1]
    G = GH // H
    C = I + H + 2
    dt = pre.dtype
    s = s0.copy()
    rec, hp, z = np.empty((B, GH), dt), np.empty((B, H), dt), np.empty(C, dt)
    F_ih, F_hh, E = np.zeros((B, R, G, H), dt), np.zeros((B, R, G, H), dt), np.zeros((B, R, H), dt)
    trace = np.zeros((B, H, R, G, C), dt)                                    # T_{-1} = 0 (r 9)
    zero = one - one
    for t in range(T):
        _gates(kind, pre[t], s, W_hhT, b_hh, one, half, use_tanh, rec, hp, F_ih, F_hh, E)
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

def _split(params, g_rows):
    """The augmented (G·H, C) gradient → {weight_ih, bias_ih, weight_hh, bias_hh} in the params' order and dtypes."""
    I = params["weight_ih"].shape[1]
    H = params["weight_hh"].shape[1]
    return _param_grads(params, {"weight_ih": g_rows[:, :I].copy(), "bias_ih": g_rows[:, I].copy(),
                                 "weight_hh": g_rows[:, I + 1:I + 1 + H].copy(),
                                 "bias_hh": g_rows[:, I + 1 + H].copy()})


def _sweep(cell, rule, params, x, state0, dh, nonlinearity="tanh"):
    kind, G, R = _CELL[cell]
    if cell == "lstm":
        h0, c0 = state0
        dt = _dtype(params, x, h0, c0)
        s0 = np.concatenate([_c(h0, dt), _c(c0, dt)], axis=1)                # [h | c] (B, 2H)
    else:
        dt = _dtype(params, x, state0)
        s0 = _c(state0, dt)
    one, half = _consts(dt)
    T, B, I = x.shape
    H = params["weight_hh"].shape[1]
    C = I + H + 2
    args = (kind, _projection(params, x, dt), s0, _c(x, dt), _c(dh, dt), _c(params["weight_hh"].T, dt),
            _c(params["weight_hh"], dt), _c(params["bias_hh"], dt), one, half, nonlinearity == "tanh", R)
    if rule == "rtrl":
        n_blocks = -(-G * H // max(1, min(G * H, BLOCK // (R * H * C))))     # column blocks of ≈ BLOCK entries
        rows = -(-G * H // n_blocks)                                         # augmented rows per block (least padding)
        grad = np.zeros((n_blocks, rows * C), dt)
        _rtrl_loop(*args, rows, grad)
        grad = grad.reshape(-1)[:G * H * C]
    else:
        grad = np.zeros((G, H, C), dt)
        _snap1_loop(*args, rule == "cec", grad)
    return _split(params, grad.reshape(G * H, C))


def rnn_rtrl(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, nonlinearity: str = "tanh") -> dict:
    """As kernel rnn.rtrl: exact RTRL (r 3, 4) → {param: grad}."""
    _check_nonlinearity(nonlinearity)
    return _sweep("rnn", "rtrl", params, x, h0, dh, nonlinearity)


def rnn_snap1(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, nonlinearity: str = "tanh") -> dict:
    """As kernel rnn.snap1: SnAp-1 on the compact trace (r 9-12) → {param: grad}."""
    _check_nonlinearity(nonlinearity)
    return _sweep("rnn", "snap1", params, x, h0, dh, nonlinearity)


def gru_rtrl(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray) -> dict:
    """As kernel gru.rtrl: exact RTRL (r 3, 4) → {param: grad}."""
    return _sweep("gru", "rtrl", params, x, h0, dh)


def gru_snap1(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray) -> dict:
    """As kernel gru.snap1: SnAp-1 on the compact trace (r 9-12) → {param: grad}."""
    return _sweep("gru", "snap1", params, x, h0, dh)


def lstm_rtrl(params: dict, x: np.ndarray, state0, dh: np.ndarray) -> dict:
    """As kernel lstm.rtrl: exact RTRL (r 3, 4) on the state [h; c] → {param: grad}."""
    return _sweep("lstm", "rtrl", params, x, state0, dh)


def lstm_snap1(params: dict, x: np.ndarray, state0, dh: np.ndarray) -> dict:
    """As kernel lstm.snap1: SnAp-1 with the per-unit 2×2 blocks (r 9-12) → {param: grad}."""
    return _sweep("lstm", "snap1", params, x, state0, dh)


def lstm_cec(params: dict, x: np.ndarray, state0, dh: np.ndarray) -> dict:
    """As kernel lstm.cec: the compact recursion with D_t = [[0, κf], [0, f]] (r 15, 16) → {param: grad}."""
    return _sweep("lstm", "cec", params, x, state0, dh)


KERNELS = {"rnn.rtrl": rnn_rtrl, "rnn.snap1": rnn_snap1, "gru.rtrl": gru_rtrl, "gru.snap1": gru_snap1,
           "lstm.rtrl": lstm_rtrl, "lstm.snap1": lstm_snap1, "lstm.cec": lstm_cec}
