r"""The dense cells' FPTT sweeps (rnn, gru, lstm .fptt / .fptt_warmup / .fptt_shooting / .fptt1) on a CUDA device.

Same signatures (after the device), output names, dtypes and shapes as the references (refimpl/kernels.py →
refimpl/algorithms/fptt.py fptt_warmup, fptt_shooting, fptt_errors and fptt_cell_grads with check=False, float64
carriers). Equation numbers: "(f n)" refimpl/algorithms/fptt.py, "(n)" the cell's module in refimpl/cells/. S is the
state width: H, or 2H for the lstm's [h; c]. d_t is dh_t flattened to (B, S) (zero on the lstm's c rows). The
shooting warm-up and the error phase carry v_t = e_t − dh_t between steps, the value the next step inverts; the
direct warm-up carries the Jacobian product Q and the starting error e it accumulates. That is what a chunk hands to
the next.

    (a) the fused forward kernels of cells.py run the states of the chunk (their cache holds every gate);
    (b) the carriers run in float64 with CuPy array ops: per step A_t = J_tᵀ (B, S, S) from the step's factors
        (online_dense's unit_factors and jacobian: rnn (7), gru (14), lstm (13)), formed in the state dtype and cast
        to float64 as the reference does; then
          direct warm-up    Q ← Q A_t (one batched GEMM, f 2), then e ← e + Q d_t with the new Q (one batched GEMV,
                            f 3): no solve, no inversion;
          shooting warm-up  e'_t = A_t⁻¹ v'_{t-1} by one batched solve (cuSOLVER via cupy.linalg.solve, never an
                            inverse) (f 1), v'_t = e'_t − d_t, and P ← P A_t (one batched GEMM, f 2s);
          error pass        e_t = A_t⁻¹ v_{t-1} by one batched solve (f 1), v_t = e_t − d_t, storing e_t (C, B, S);
    (c) the gate adjoints of ALL steps come from one launch of the fused backward kernel of sources.py over C·B·H
        threads with propagate = 0 (the total adjoint of every step is its e_t, f 4: nothing is carried); the weight
        gradients are then one GEMM each over all (t, b) and x̄ = ḡ_ih W_ih (cells.weight_grads, cells.input_grad).

The kernels:
    <cell>.fptt_warmup    (a), (b) the direct warm-up over one chunk from the carried (Q (B, S, S), e (B, S)); carry
                          None is the stream's start (Q = I, e = 0) → {"state", "carry": {"Q", "e"}}; at the
                          stream's end e_{-1} = e (f 3)
    <cell>.fptt_shooting  (a), (b) the paper's shooting warm-up over one chunk from the carried (v' (B, S),
                          P (B, S, S)); carry None is v' = 0, P = I → {"state", "carry": {"v", "P"}}; at the stream's
                          end e_{-1} = −P v'_{T-1} (f 3s)
    <cell>.fptt1          (a), (b) error pass over one chunk from the carried v (None: e_{-1} = 0), (c) →
                          {param, "x", "state", "carry": {"v"}}
    <cell>.fptt           the whole sequence: the direct warm-up from the stream's start, e_{-1} = e (f 3), the error
                          pass from v = e_{-1}, (c) → {param, "x", "h0"[, "c0"] = e_{-1}}

Cost per step and batch element (flops, leading terms): the direct warm-up 2S³ + 2S² (the GEMM and the GEMV), the
shooting warm-up (2/3)S³ + 2S² for the solve (LU and substitutions) + 2S³ for P ← P A_t, the error pass
(2/3)S³ + 2S². Memory: the carriers and one A_t, O(B·S²), independent of the stream's length, and per chunk its
forward cache and d_t, O(C·B·S) (the error pass also keeps e_t, C·B·S).

NOTE (conditioning): the error phase inverts the Jacobians (and so does the shooting warm-up), so FPTT amplifies
last-bit differences of the states (a GPU's tanh, FMA contraction and cuBLAS sums differ from NumPy's in the last
bit). The registry's inputs (well-conditioned parameters; lstm.fptt with c0 ≥ 1 and T ≤ 7) keep that amplification
well inside the 1e-10 parity tolerance (measured in docs/backends.md); longer or worse-conditioned LSTM sequences lose
this (refimpl/cells/lstm.py (15)-(16)).
"""

from __future__ import annotations

import numpy as np

from refimpl.cells import CELLS
from refimpl.errors import ShapeError

from .cells import input_grad, weight_grads
from .online_dense import FORWARD, jacobian, state_after, unit_factors
from .runtime import contiguous
from .sources import CELLS as CELL_SOURCES


def _solve(xp, A, v):
    """A⁻¹ v per batch element (f 1): (B, S, S), (B, S) → (B, S)."""
    return xp.linalg.solve(A, v[..., None])[..., 0]


class _Chunk:
    """One chunk's forward pass (a) and what the carriers (b) read from it: A_t = J_tᵀ in float64 and the
    instantaneous errors d_t (C, B, S) as carriers (dh_t on the h rows, zero on the lstm's c rows)."""

    def __init__(self, dev, cell, params, x, state0, dh, options):
        xp = self.xp = dev.xp
        self.cell, self.options = cell, options
        _, self.cache = FORWARD[cell](dev, params, x, state0, **options)                # (a)
        T, B, H = dh.shape
        self.T, self.B, self.H, self.S = T, B, H, CELLS[cell].STATE_ROWS * H
        _, self.F_hh, self.E = unit_factors(dev, cell, self.cache, **options)
        self.W = params["weight_hh"].astype(self.cache.h.dtype, copy=False)
        self.d = xp.zeros((T, B, self.S), np.float64)
        self.d[:, :, :H] = dh

    def adjoint_jacobian(self, t):
        """A_t = J_tᵀ in float64, (B, S, S) (the reference's _jacobian_adjoint)."""
        return self.xp.swapaxes(jacobian(self.xp, self.F_hh[t], self.E[t], self.W), -1, -2).astype(np.float64)

    def carrier(self, carry, name):
        """A carrier from the carry (checked: (B, S) for v and e, (B, S, S) for P and Q), in float64; None: its value
        at the stream's start, v = e = 0, P = Q = I."""
        xp, B, S = self.xp, self.B, self.S
        vector = name in ("v", "e")
        shape = (B, S) if vector else (B, S, S)
        if carry is None:
            return xp.zeros(shape, np.float64) if vector else xp.broadcast_to(xp.eye(S), shape).copy()
        if name not in carry or tuple(carry[name].shape) != shape:
            got = tuple(carry[name].shape) if name in carry else "no such entry"
            raise ShapeError(f"the FPTT carrier {name!r} of a {self.cell} cell: {got}; expected shape {shape}: pass "
                             f"the 'carry' the previous chunk of the same phase returned")
        return contiguous(xp, carry[name], np.float64)

    def state(self):
        return state_after(self.cell, self.cache)


def direct(chunk: _Chunk, Q, e):
    """The direct warm-up over the chunk (b): Q ← Q A_t (f 2), then e ← e + Q d_t (f 3) → (Q, e)."""
    xp = chunk.xp
    for t in range(chunk.T):
        Q = xp.matmul(Q, chunk.adjoint_jacobian(t))                                     # (f 2) Q_t = Q_{t-1} A_t
        e = e + xp.matmul(Q, chunk.d[t][..., None])[..., 0]                             # (f 3) e += Q_t d_t
    return Q, e


def shooting(chunk: _Chunk, v, P):
    """The shooting warm-up over the chunk (b): e'_t = A_t⁻¹ v'_{t-1} (f 1), v'_t = e'_t − d_t, P ← P A_t (f 2s)
    → (v', P)."""
    xp = chunk.xp
    for t in range(chunk.T):
        A = chunk.adjoint_jacobian(t)
        v = _solve(xp, A, v) - chunk.d[t]                                               # (f 1)
        P = xp.matmul(P, A)                                                             # (f 2s)
    return v, P


#: warm-up → (its sweep over a chunk, its two carriers in the sweep's order).
WARMUPS = {"direct": (direct, ("Q", "e")), "shooting": (shooting, ("v", "P"))}


def errors(chunk: _Chunk, v):
    """Phase 2 over the chunk (b): e_t = A_t⁻¹ v_{t-1} (f 1), v_t = e_t − d_t → (e_t (C, B, S), v_{C-1}), float64."""
    xp = chunk.xp
    es = xp.empty((chunk.T, chunk.B, chunk.S), np.float64)
    for t in range(chunk.T):
        es[t] = _solve(xp, chunk.adjoint_jacobian(t), v)                                # (f 1)
        v = es[t] - chunk.d[t]
    return es, v


def error_grads(dev, chunk: _Chunk, params, errors_):
    """(c): the gate adjoints of all steps from the errors e_t (C, B, S), then {param: grad, "x"} (f 4)."""
    xp, cell, c = dev.xp, chunk.cell, chunk.cache
    T, B, H = chunk.T, chunk.B, chunk.H
    dt = c.h.dtype
    n = T * B * H
    Es = errors_.astype(dt)                                                             # e_t in the state dtype
    zeros = xp.zeros((T, B, H), dt)
    if cell == "rnn":                                                                   # (c) ā_t = e_t ⊙ φ', (3)
        g_ih = xp.empty((T, B, H), dt)
        dev.launch(CELL_SOURCES, "rnn_bwd_step", dt, n, Es, zeros, contiguous(xp, c.h, dt), g_ih,
                   int(chunk.options["nonlinearity"] == "tanh"))
        g_hh = None
    elif cell == "gru":                                                                 # (c) (6)-(10), h̄_t = e_t
        g_ih, g_hh = xp.empty((T, B, 3 * H), dt), xp.empty((T, B, 3 * H), dt)
        dev.launch(CELL_SOURCES, "gru_bwd_step", dt, n, Es, xp.zeros((T, B, H), dt), zeros,
                   *(contiguous(xp, a, dt) for a in (c.h_prev, c.r, c.z, c.n, c.hn)), g_ih, g_hh, H, 0)
    else:                                                                               # (c) (5)-(8), (h̄, c̄)_t = e_t
        g_ih, g_hh = xp.empty((T, B, 4 * H), dt), None
        dev.launch(CELL_SOURCES, "lstm_bwd_step", dt, n, contiguous(xp, Es[..., :H], dt), zeros,
                   contiguous(xp, Es[..., H:], dt).copy(),
                   *(contiguous(xp, a, dt) for a in (c.c_prev, c.i, c.f, c.g, c.o, c.tanh_c)), g_ih, H, 0)
    grads = weight_grads(xp, params, c.x, c.h_prev, g_ih, g_hh, dt)                    # (f 4)
    grads["x"] = input_grad(xp, params, g_ih, c.x, dt)                                  # (f 4) x̄_t
    return grads


def _fptt(dev, cell, params, x, state0, dh, **options):
    """Both phases over the whole sequence: the direct warm-up from the stream's start, e_{-1} = e (f 3), the error
    pass from v = e_{-1} → {param, "x", "h0"[, "c0"] = e_{-1}}."""
    chunk = _Chunk(dev, cell, params, x, state0, dh, options)
    _, e_start = direct(chunk, chunk.carrier(None, "Q"), chunk.carrier(None, "e"))     # (f 2)-(f 3)
    grads = error_grads(dev, chunk, params, errors(chunk, e_start)[0])
    dt, H = chunk.cache.h.dtype, chunk.H
    for r, key in enumerate(CELLS[cell].GRAD_STATE_KEYS):                               # e_{-1}: h̄_{-1}[, c̄_{-1}]
        grads[key] = e_start[:, r * H:(r + 1) * H].astype(dt)
    return grads


def _fptt1(dev, cell, params, x, state0, dh, carry, **options):
    """The error phase over one chunk from the carried v (None: e_{-1} = 0) → {param, "x", "state", "carry"}."""
    if carry is not None and set(carry) != {"v"}:
        raise ShapeError(f"an FPTT error-phase carry names {sorted(carry)}; expected ['v']: pass the 'carry' the "
                         f"previous fptt1 chunk returned (or {{'v': e_-1}} after the warm-up)")
    chunk = _Chunk(dev, cell, params, x, state0, dh, options)
    es, v = errors(chunk, chunk.carrier(carry, "v"))
    return {**error_grads(dev, chunk, params, es), "state": chunk.state(), "carry": {"v": v}}


def _warmup(dev, warmup, cell, params, x, state0, dh, carry, **options):
    """A warm-up (WARMUPS: "direct" from the carried (Q, e), None: Q = I, e = 0; "shooting" from the carried (v', P),
    None: v' = 0, P = I) over one chunk → {"state", "carry"}."""
    sweep, names = WARMUPS[warmup]
    if carry is not None and set(carry) != set(names):
        raise ShapeError(f"an FPTT {warmup} warm-up carry names {sorted(carry)}; expected {sorted(names)}: pass the "
                         f"'carry' the previous {warmup} warm-up chunk returned")
    chunk = _Chunk(dev, cell, params, x, state0, dh, options)
    out = sweep(chunk, *(chunk.carrier(carry, name) for name in names))
    return {"state": chunk.state(), "carry": dict(zip(names, out))}


def rnn_fptt(dev, params, x, h0, dh, nonlinearity="tanh"):
    """As kernel rnn.fptt: the direct warm-up (f 2-3) then the error pass (f 1, 4) → {param, "x", "h0"}."""
    return _fptt(dev, "rnn", params, x, h0, dh, nonlinearity=nonlinearity)


def rnn_fptt1(dev, params, x, h0, dh, carry=None, nonlinearity="tanh"):
    """As kernel rnn.fptt1: the error pass over one chunk from the carried v → {param, "x", "state", "carry"}."""
    return _fptt1(dev, "rnn", params, x, h0, dh, carry, nonlinearity=nonlinearity)


def rnn_fptt_warmup(dev, params, x, h0, dh, carry=None, nonlinearity="tanh"):
    """As kernel rnn.fptt_warmup: the direct warm-up over one chunk from the carried (Q, e) → {"state", "carry"}."""
    return _warmup(dev, "direct", "rnn", params, x, h0, dh, carry, nonlinearity=nonlinearity)


def rnn_fptt_shooting(dev, params, x, h0, dh, carry=None, nonlinearity="tanh"):
    """As kernel rnn.fptt_shooting: the shooting warm-up over one chunk from the carried (v', P) →
    {"state", "carry"}."""
    return _warmup(dev, "shooting", "rnn", params, x, h0, dh, carry, nonlinearity=nonlinearity)


def gru_fptt(dev, params, x, h0, dh):
    """As kernel gru.fptt: the direct warm-up (f 2-3) then the error pass (f 1, 4) → {param, "x", "h0"}."""
    return _fptt(dev, "gru", params, x, h0, dh)


def gru_fptt1(dev, params, x, h0, dh, carry=None):
    """As kernel gru.fptt1: the error pass over one chunk from the carried v → {param, "x", "state", "carry"}."""
    return _fptt1(dev, "gru", params, x, h0, dh, carry)


def gru_fptt_warmup(dev, params, x, h0, dh, carry=None):
    """As kernel gru.fptt_warmup: the direct warm-up over one chunk from the carried (Q, e) → {"state", "carry"}."""
    return _warmup(dev, "direct", "gru", params, x, h0, dh, carry)


def gru_fptt_shooting(dev, params, x, h0, dh, carry=None):
    """As kernel gru.fptt_shooting: the shooting warm-up over one chunk from the carried (v', P) →
    {"state", "carry"}."""
    return _warmup(dev, "shooting", "gru", params, x, h0, dh, carry)


def lstm_fptt(dev, params, x, state0, dh):
    """As kernel lstm.fptt: the direct warm-up (f 2-3) then the error pass (f 1, 4) → {param, "x", "h0", "c0"} (see
    the NOTE)."""
    return _fptt(dev, "lstm", params, x, state0, dh)


def lstm_fptt1(dev, params, x, state0, dh, carry=None):
    """As kernel lstm.fptt1: the error pass over one chunk from the carried v (B, 2H) → {param, "x", "state",
    "carry"}."""
    return _fptt1(dev, "lstm", params, x, state0, dh, carry)


def lstm_fptt_warmup(dev, params, x, state0, dh, carry=None):
    """As kernel lstm.fptt_warmup: the direct warm-up over one chunk from the carried (Q (B, 2H, 2H), e (B, 2H)) →
    {"state", "carry"}."""
    return _warmup(dev, "direct", "lstm", params, x, state0, dh, carry)


def lstm_fptt_shooting(dev, params, x, state0, dh, carry=None):
    """As kernel lstm.fptt_shooting: the shooting warm-up over one chunk from the carried (v' (B, 2H),
    P (B, 2H, 2H)) → {"state", "carry"}."""
    return _warmup(dev, "shooting", "lstm", params, x, state0, dh, carry)


IMPLEMENTATIONS = {"rnn.fptt": rnn_fptt, "rnn.fptt1": rnn_fptt1, "rnn.fptt_warmup": rnn_fptt_warmup,
                   "rnn.fptt_shooting": rnn_fptt_shooting,
                   "gru.fptt": gru_fptt, "gru.fptt1": gru_fptt1, "gru.fptt_warmup": gru_fptt_warmup,
                   "gru.fptt_shooting": gru_fptt_shooting,
                   "lstm.fptt": lstm_fptt, "lstm.fptt1": lstm_fptt1, "lstm.fptt_warmup": lstm_fptt_warmup,
                   "lstm.fptt_shooting": lstm_fptt_shooting}
