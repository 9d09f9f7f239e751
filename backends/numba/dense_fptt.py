r"""The dense cells' FPTT sweeps (rnn, gru, lstm .fptt / .fptt1) as Numba loops.

Same signatures, output names, dtypes and shapes as the references (refimpl/kernels.py → refimpl/algorithms/fptt.py
fptt_cell_grads with check=False, float64 carriers). Equation numbers: "(f n)" is refimpl/algorithms/fptt.py, "(n)" the cell's
module in refimpl/cells/. S is the state width: H, or 2H for the lstm's [h; c].

    (a) the input projection of all T steps is ONE GEMM outside the time loop (as cells.py);
    (b) ONE @njit(cache=True) loop runs both phases. Each step advances the states (one BLAS GEMM h_{t-1} W_hhᵀ in
        the state dtype), forms A_t = J_tᵀ (B, S, S) in float64 from the state-dtype Jacobian entries (as the
        reference's state_jacobian(…).astype(float64)), and per batch element solves A_t e_t = e_{t-1} − dh_{t-1}
        (f 1, never an inverse). The warm-up (two_passes) also keeps P ← P A_t (f 2) and ends with
        e_{-1} = −P (e'_{T-1} − dh_{T-1}) (f 3). The error pass casts e_t to the state dtype and forms the step's
        gate adjoints ḡ_t from it (the cell's step backward with total adjoint e_t, f 4);
    (c) the weight gradients are then ONE GEMM each over all (t, b): ḡᵀ (G·H, T·B) @ [x | h_prev], and x̄ = ḡ W_ih.

Memory: e, P (B, S, S), A (B, S, S) plus the error pass's ḡ and h_prev (T, B, ·) for the GEMMs of (c).
Everything is sequential and in a fixed order: results are bit-reproducible run to run.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .cells import _c, _check_nonlinearity, _consts
from .dense_online import _dtype, _projection, _weight_grads, gru_point


# ------------------------------------------------------------------------------------------------ carriers (f 1-3)

@njit(cache=True)
def _advance(A, e, d_prev, P, warm, tmp):
    """(f 1) e[b] ← A[b]⁻¹ (e[b] − d_prev[b]) by a linear solve; (f 2) P[b] ← P[b] A[b] when `warm`."""
    B = e.shape[0]
    for b in range(B):
        e[b] = np.linalg.solve(A[b], e[b] - d_prev[b])                  # (f 1)
        if warm:
            np.dot(P[b], A[b], tmp)                                      # (f 2)
            P[b] = tmp


@njit(cache=True)
def _start(P, e, d_last):
    """(f 3) e_{-1} = −P (e'_{T-1} − dh_{T-1}), in place."""
    for b in range(e.shape[0]):
        e[b] = -np.dot(P[b], e[b] - d_last[b])


def _identity(B, S):
    return np.broadcast_to(np.eye(S), (B, S, S)).copy()


def _dh_carrier(dh, S):
    """dh (T, B, H) as float64 carriers (T, B, S), zero on the lstm's c part."""
    T, B, H = dh.shape
    out = np.zeros((T, B, S))
    out[:, :, :H] = dh
    return out


def _outputs(params, x, h_prev, g_ih, g_hh, dt):
    """(c): {param…, "x"} from the stored gate adjoints."""
    T, B, GH = g_ih.shape
    grads = _weight_grads(params, x, h_prev, g_ih, g_hh, True, dt)
    grads["x"] = (g_ih.reshape(T * B, GH) @ _c(params["weight_ih"], dt)).reshape(x.shape).astype(x.dtype)   # x̄_t
    return grads


# ---------------------------------------------------------------------------------------------------------------- rnn

@njit(cache=True)
def _rnn_step(pre_t, h, W_hhT, W_hh, b_hh, use_tanh, one, rec, d, A):
    """h ← h_t (1)(2); d = φ'(a_t); A[b, j, k] = J_t[b, k, j] = φ'(a_t)[k] W_hh[k, j] (7), in float64."""
    B, H = h.shape
    np.dot(h, W_hhT, rec)                                                # (1) W_hh h_{t-1}
    for b in range(B):
        for k in range(H):
            a = pre_t[b, k] + rec[b, k] + b_hh[k]                        # (1)
            hk = np.tanh(a) if use_tanh else a                           # (2)
            h[b, k] = hk
            d[b, k] = one - hk * hk if use_tanh else one                 # (3) φ'(a_t)
            for j in range(H):
                A[b, j, k] = d[b, k] * W_hh[k, j]                        # (7) Jᵀ


@njit(cache=True)
def _rnn_fptt_loop(pre, h0, W_hhT, W_hh, b_hh, dh, use_tanh, one, two_passes, e_start, h_prev, da):
    """dh (T, B, H) float64; writes e_{-1} (B, H) float64, h_prev and ā (T, B, H) of the error pass."""
    T, B, H = pre.shape
    rec, d, es = np.empty((B, H), pre.dtype), np.empty((B, H), pre.dtype), np.empty((B, H), pre.dtype)
    A, P, tmp = np.empty((B, H, H)), np.zeros((B, H, H)), np.empty((H, H))
    e, zero = np.zeros((B, H)), np.zeros((B, H))
    h = h0.copy()
    if two_passes:                                                       # phase 1: warm-up from e'_{-1} = 0
        for b in range(B):
            for k in range(H):
                P[b, k, k] = 1.0
        for t in range(T):
            _rnn_step(pre[t], h, W_hhT, W_hh, b_hh, use_tanh, one, rec, d, A)
            _advance(A, e, dh[t - 1] if t > 0 else zero, P, True, tmp)   # (f 1), (f 2)
        _start(P, e, dh[T - 1])                                          # (f 3)
    e_start[:] = e
    h[:] = h0
    for t in range(T):                                                   # phase 2: errors and gate adjoints
        h_prev[t] = h
        _rnn_step(pre[t], h, W_hhT, W_hh, b_hh, use_tanh, one, rec, d, A)
        _advance(A, e, dh[t - 1] if t > 0 else zero, P, False, tmp)      # (f 1)
        es[:] = e                                                        # e_t in the state dtype
        for b in range(B):
            for k in range(H):
                da[t, b, k] = es[b, k] * d[b, k]                         # (3) ā_t, (f 4)


def _rnn_fptt(params, x, h0, dh, nonlinearity, two_passes):
    _check_nonlinearity(nonlinearity)
    T, B, _ = x.shape
    dt = _dtype(params, x, h0)
    one, _ = _consts(dt)
    H = params["weight_hh"].shape[0]
    e_start, h_prev, da = np.empty((B, H)), np.empty((T, B, H), dt), np.empty((T, B, H), dt)
    _rnn_fptt_loop(_projection(params, x, dt), _c(h0, dt), _c(params["weight_hh"].T, dt),
                   _c(params["weight_hh"], dt), _c(params["bias_hh"], dt), _dh_carrier(dh, H),
                   nonlinearity == "tanh", one, two_passes, e_start, h_prev, da)
    grads = _outputs(params, x, h_prev, da, None, dt)                    # (4), (5)
    grads["h0"] = e_start.astype(dt)
    return grads


def rnn_fptt(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, nonlinearity: str = "tanh") -> dict:
    """As kernel rnn.fptt: warm-up (f 1-3) then the error pass (f 1, 4) → {param, "x", "h0"}."""
    return _rnn_fptt(params, x, h0, dh, nonlinearity, True)


def rnn_fptt1(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray, nonlinearity: str = "tanh") -> dict:
    """As kernel rnn.fptt1: the error pass only, from e_{-1} = 0."""
    return _rnn_fptt(params, x, h0, dh, nonlinearity, False)


# ---------------------------------------------------------------------------------------------------------------- gru

@njit(cache=True)
def _gru_step(gi_t, h, W_hhT, W_hh, b_hh, one, half, gh, hp, r, z, n, m, A):
    """h ← h_t (1)-(5), keeping hp = h_{t-1}, r, z, n, m = W_hn h_{t-1} + b_hn;
    A[b, j, k] = J_t[b, k, j] = Σ_G s_G[k] W_hG[k, j] + δ_kj z[k] (13)(14), in float64."""
    B, H = h.shape
    hp[:] = h
    np.dot(hp, W_hhT, gh)
    for b in range(B):
        for k in range(H):
            rr, zz, mm, nn, h[b, k], s_r, s_z, s_n = gru_point(gi_t, gh, b_hh, hp[b, k], b, k, H, one, half)
            r[b, k], z[b, k], n[b, k], m[b, k] = rr, zz, nn, mm
            s_m = s_n * rr                                                                       # (13)
            for j in range(H):
                A[b, j, k] = s_r * W_hh[k, j] + s_z * W_hh[H + k, j] + s_m * W_hh[2 * H + k, j]  # (14) Jᵀ
            A[b, k, k] += zz                                                                     # (14) + diag(z)


@njit(cache=True)
def _gru_fptt_loop(gi, h0, W_hhT, W_hh, b_hh, dh, one, half, two_passes, e_start, h_prev, dg_ih, dg_hh):
    """dh (T, B, H) float64; writes e_{-1} (B, H), h_prev (T, B, H) and ḡ_ih, ḡ_hh (T, B, 3H) of eq. (10)."""
    T, B, H3 = gi.shape
    H = H3 // 3
    dt = gi.dtype
    gh = np.empty((B, H3), dt)
    hp, r, z, n, m, es = (np.empty((B, H), dt), np.empty((B, H), dt), np.empty((B, H), dt), np.empty((B, H), dt),
                          np.empty((B, H), dt), np.empty((B, H), dt))
    A, P, tmp = np.empty((B, H, H)), np.zeros((B, H, H)), np.empty((H, H))
    e, zero = np.zeros((B, H)), np.zeros((B, H))
    h = h0.copy()
    if two_passes:                                                       # phase 1: warm-up from e'_{-1} = 0
        for b in range(B):
            for k in range(H):
                P[b, k, k] = 1.0
        for t in range(T):
            _gru_step(gi[t], h, W_hhT, W_hh, b_hh, one, half, gh, hp, r, z, n, m, A)
            _advance(A, e, dh[t - 1] if t > 0 else zero, P, True, tmp)   # (f 1), (f 2)
        _start(P, e, dh[T - 1])                                          # (f 3)
    e_start[:] = e
    h[:] = h0
    for t in range(T):                                                   # phase 2: errors and gate adjoints
        _gru_step(gi[t], h, W_hhT, W_hh, b_hh, one, half, gh, hp, r, z, n, m, A)
        h_prev[t] = hp
        _advance(A, e, dh[t - 1] if t > 0 else zero, P, False, tmp)      # (f 1)
        es[:] = e                                                        # e_t in the state dtype
        for b in range(B):
            for k in range(H):
                g = es[b, k]                                             # h̄_t = e_t (f 4)
                rr, zz, nn = r[b, k], z[b, k], n[b, k]
                da_n = g * (one - zz) * (one - nn * nn)                  # (6), (7)
                da_z = g * (hp[b, k] - nn) * zz * (one - zz)             # (6), (9)
                da_r = da_n * m[b, k] * rr * (one - rr)                  # (8), (9)
                dg_ih[t, b, k], dg_ih[t, b, H + k], dg_ih[t, b, 2 * H + k] = da_r, da_z, da_n       # (10)
                dg_hh[t, b, k], dg_hh[t, b, H + k], dg_hh[t, b, 2 * H + k] = da_r, da_z, da_n * rr  # (10), (8)


def _gru_fptt(params, x, h0, dh, two_passes):
    T, B, _ = x.shape
    dt = _dtype(params, x, h0)
    one, half = _consts(dt)
    H = params["weight_hh"].shape[1]
    e_start, h_prev = np.empty((B, H)), np.empty((T, B, H), dt)
    dg_ih, dg_hh = np.empty((T, B, 3 * H), dt), np.empty((T, B, 3 * H), dt)
    _gru_fptt_loop(_projection(params, x, dt), _c(h0, dt), _c(params["weight_hh"].T, dt),
                   _c(params["weight_hh"], dt), _c(params["bias_hh"], dt), _dh_carrier(dh, H), one, half,
                   two_passes, e_start, h_prev, dg_ih, dg_hh)
    grads = _outputs(params, x, h_prev, dg_ih, dg_hh, dt)                # (10), (11)
    grads["h0"] = e_start.astype(dt)
    return grads


def gru_fptt(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray) -> dict:
    """As kernel gru.fptt: warm-up (f 1-3) then the error pass (f 1, 4) → {param, "x", "h0"}."""
    return _gru_fptt(params, x, h0, dh, True)


def gru_fptt1(params: dict, x: np.ndarray, h0: np.ndarray, dh: np.ndarray) -> dict:
    """As kernel gru.fptt1: the error pass only, from e_{-1} = 0."""
    return _gru_fptt(params, x, h0, dh, False)


# --------------------------------------------------------------------------------------------------------------- lstm

@njit(cache=True)
def _lstm_step(pre_t, h, c, W_hhT, W_hh, b_hh, one, half, rec, hp, cp, i, f, g, o, tc, A):
    """[h; c] ← [h_t; c_t] (1)-(4), keeping hp, cp = the previous state and the gates; A = J_tᵀ (B, 2H, 2H) (13):
    J = [[Σ_G diag(S_h,G) W_hG, diag(κ f)], [Σ_G diag(S_c,G) W_hG, diag(f)]] with S, κ of (12), in float64."""
    B, H = h.shape
    hp[:] = h
    cp[:] = c
    np.dot(hp, W_hhT, rec)                                                                        # (1) W_hh h_{t-1}
    A[:] = 0.0
    for b in range(B):
        for k in range(H):
            ii = half * (one + np.tanh(half * (pre_t[b, k] + rec[b, k] + b_hh[k])))                       # (1)(2)
            ff = half * (one + np.tanh(half * (pre_t[b, H + k] + rec[b, H + k] + b_hh[H + k])))           # (1)(2)
            gg = np.tanh(pre_t[b, 2 * H + k] + rec[b, 2 * H + k] + b_hh[2 * H + k])                       # (1)(2)
            oo = half * (one + np.tanh(half * (pre_t[b, 3 * H + k] + rec[b, 3 * H + k] + b_hh[3 * H + k])))
            cc = ff * cp[b, k] + ii * gg                                                                  # (3)
            tt = np.tanh(cc)                                                                              # (4)
            h[b, k], c[b, k] = oo * tt, cc                                                                # (4)
            i[b, k], f[b, k], g[b, k], o[b, k], tc[b, k] = ii, ff, gg, oo, tt
            kappa = oo * (one - tt * tt)                                                                  # (12) κ
            s_i = gg * ii * (one - ii)                                                                    # (12)
            s_f = cp[b, k] * ff * (one - ff)                                                              # (12)
            s_g = ii * (one - gg * gg)                                                                    # (12)
            s_o = tt * oo * (one - oo)                                                                    # (12)
            h_i, h_f, h_g = kappa * s_i, kappa * s_f, kappa * s_g                                         # (12) S_h
            for j in range(H):
                wi, wf, wg, wo = W_hh[k, j], W_hh[H + k, j], W_hh[2 * H + k, j], W_hh[3 * H + k, j]
                A[b, j, k] = h_i * wi + h_f * wf + h_g * wg + s_o * wo        # (13) ∂h_t[k]/∂h_{t-1}[j]
                A[b, j, H + k] = s_i * wi + s_f * wf + s_g * wg               # (13) ∂c_t[k]/∂h_{t-1}[j]
            A[b, H + k, k] = kappa * ff                                       # (13) ∂h_t[k]/∂c_{t-1}[k] = κ f
            A[b, H + k, H + k] = ff                                           # (13) ∂c_t[k]/∂c_{t-1}[k] = f


@njit(cache=True)
def _lstm_fptt_loop(pre, h0, c0, W_hhT, W_hh, b_hh, dh, one, half, two_passes, e_start, h_prev, da):
    """dh (T, B, 2H) float64 (zero c part); writes e_{-1} (B, 2H), h_prev (T, B, H) and ā (T, B, 4H) of eq. (9)."""
    T, B, H4 = pre.shape
    H = H4 // 4
    S = 2 * H
    dt = pre.dtype
    rec = np.empty((B, H4), dt)
    hp, cp, i, f, g, o, tc = (np.empty((B, H), dt), np.empty((B, H), dt), np.empty((B, H), dt),
                              np.empty((B, H), dt), np.empty((B, H), dt), np.empty((B, H), dt), np.empty((B, H), dt))
    es = np.empty((B, S), dt)
    A, P, tmp = np.empty((B, S, S)), np.zeros((B, S, S)), np.empty((S, S))
    e, zero = np.zeros((B, S)), np.zeros((B, S))
    h, c = h0.copy(), c0.copy()
    if two_passes:                                                       # phase 1: warm-up from e'_{-1} = 0
        for b in range(B):
            for k in range(S):
                P[b, k, k] = 1.0
        for t in range(T):
            _lstm_step(pre[t], h, c, W_hhT, W_hh, b_hh, one, half, rec, hp, cp, i, f, g, o, tc, A)
            _advance(A, e, dh[t - 1] if t > 0 else zero, P, True, tmp)   # (f 1), (f 2)
        _start(P, e, dh[T - 1])                                          # (f 3)
    e_start[:] = e
    h[:] = h0
    c[:] = c0
    for t in range(T):                                                   # phase 2: errors and gate adjoints
        _lstm_step(pre[t], h, c, W_hhT, W_hh, b_hh, one, half, rec, hp, cp, i, f, g, o, tc, A)
        h_prev[t] = hp
        _advance(A, e, dh[t - 1] if t > 0 else zero, P, False, tmp)      # (f 1)
        es[:] = e                                                        # e_t in the state dtype
        for b in range(B):
            for k in range(H):
                eh, ec = es[b, k], es[b, H + k]                          # (h̄_t, c̄_t) = e_t (f 4)
                ii, ff, gg, oo, tt = i[b, k], f[b, k], g[b, k], o[b, k], tc[b, k]
                dc_hat = ec + eh * oo * (one - tt * tt)                  # (6)
                da[t, b, k] = dc_hat * gg * ii * (one - ii)              # (7)(8) ā_i
                da[t, b, H + k] = dc_hat * cp[b, k] * ff * (one - ff)    # (7)(8) ā_f
                da[t, b, 2 * H + k] = dc_hat * ii * (one - gg * gg)      # (7)(8) ā_g
                da[t, b, 3 * H + k] = eh * tt * oo * (one - oo)          # (5)(8) ā_o


def _lstm_fptt(params, x, state0, dh, two_passes):
    h0, c0 = state0
    T, B, _ = x.shape
    dt = _dtype(params, x, h0, c0)
    one, half = _consts(dt)
    H = params["weight_hh"].shape[1]
    e_start, h_prev, da = np.empty((B, 2 * H)), np.empty((T, B, H), dt), np.empty((T, B, 4 * H), dt)
    _lstm_fptt_loop(_projection(params, x, dt), _c(h0, dt), _c(c0, dt), _c(params["weight_hh"].T, dt),
                    _c(params["weight_hh"], dt), _c(params["bias_hh"], dt), _dh_carrier(dh, 2 * H), one, half,
                    two_passes, e_start, h_prev, da)
    grads = _outputs(params, x, h_prev, da, None, dt)                    # (9), (10)
    grads["h0"], grads["c0"] = e_start[:, :H].astype(dt), e_start[:, H:].astype(dt)
    return grads


def lstm_fptt(params: dict, x: np.ndarray, state0, dh: np.ndarray) -> dict:
    """As kernel lstm.fptt: warm-up (f 1-3) then the error pass (f 1, 4) → {param, "x", "h0", "c0"}."""
    return _lstm_fptt(params, x, state0, dh, True)


def lstm_fptt1(params: dict, x: np.ndarray, state0, dh: np.ndarray) -> dict:
    """As kernel lstm.fptt1: the error pass only, from e_{-1} = 0."""
    return _lstm_fptt(params, x, state0, dh, False)


#: lstm.fptt: the warm-up multiplies the step Jacobians' inverses, so the difference between two correct float64
#: sweeps (last-bit differences in J_t, a different LU) grows like Π_t 1/σ_min(J_t). The registered lstm.fptt inputs
#: keep that product below about 1e6 (refimpl/kernels.py: c0 ≥ 1, T ≤ 7); on the shared FPTT inputs at T = 13 it
#: reaches 1e13, and there this loop and the reference, each as close to BPTT as the other, differ by up to 2e-3.
KERNELS = {"rnn.fptt": rnn_fptt, "rnn.fptt1": rnn_fptt1, "gru.fptt": gru_fptt, "gru.fptt1": gru_fptt1,
           "lstm.fptt": lstm_fptt, "lstm.fptt1": lstm_fptt1}
