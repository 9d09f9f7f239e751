r"""The dense cells' FPTT sweeps (rnn, gru, lstm .fptt / .fptt1 / .fptt_warmup / .fptt_shooting) with mlx.core.

Same signatures, output names, dtypes and shapes as the references (refimpl/kernels.py → refimpl/algorithms/fptt.py
fptt_warmup, fptt_shooting, fptt_errors, and fptt_cell_grads with check=False; float64 carriers). Equation numbers:
"(f n)" is refimpl/algorithms/fptt.py, "(n)" the cell's module docstring. S is the state width: H, or 2H for the lstm's
[h; c]; d_t is dh_t flattened to (B, S), zero on the lstm's c rows; A_t = J_tᵀ (the cells are real).

    fptt_warmup    the direct warm-up over one chunk from the carried (Q, e) (None: Q = I, e = 0):
                   Q ← Q A_t (f 2), then e ← e + Q d_t with the new Q (f 3): two batched matmuls a step, no solve
                   → {"state", "carry": {"Q": (B, S, S), "e": (B, S)}}; at the stream's end e_{-1} = e
    fptt_shooting  the paper's shooting warm-up over one chunk from the carried (v', P) (None: v' = 0, P = I):
                   e'_t = J_t^{−T} v'_{t-1} (f 1), v'_t = e'_t − d_t, P ← P A_t (f 2s)
                   → {"state", "carry": {"v": v' (B, S), "P": (B, S, S)}}; at the stream's end e_{-1} = −P v' (f 3s)
    fptt1          the error pass over one chunk from the carried v (None: v_{-1} = 0): e_t = J_t^{−T} v_{t-1} (f 1),
                   v_t = e_t − d_t, the gradients (f 4) → {param, "x", "state", "carry": {"v"}}
    fptt           a whole sequence: fptt_warmup from None, e_{-1} = e (f 3), fptt1 from v_{-1} = e_{-1}
                   → {param, "x", initial-state keys = e_{-1}}

    (a) the states do not depend on the errors, so the cell's forward (cells.py: one input GEMM, one compiled step per
        t) runs once per call and its cache serves both phases (the reference re-runs the states in each phase);
    (b) per step, J_t (B, S, S) is assembled from the cell's per-unit factors (online_dense.py) in the state dtype and
        cast to float64, as the reference's state_jacobian(…).astype(float64); (f 1) is a batched linear solve
        (mx.linalg.solve, never an inverse);
    (c) the error pass casts e_t to the state dtype and forms the step's gate adjoints from it (the cells' step backward
        with total adjoint e_t, f 4); the weight gradients are then ONE GEMM each over all (t, b), as in cells.py.
Memory: besides the chunk's forward cache and its T Jacobians (B, S, S) (the chunk's length is the caller's choice),
the carriers — O(B·S²) for Q or P, independent of the stream's length. Cost per step: the direct warm-up two batched
matmuls, O(B·S³) + O(B·S²); the shooting one a batched solve (O(B·S³)) and a matmul; the error pass a solve.
The carriers are float64 in every dtype, taken and returned in float64 (the reference's default carrier), so these
kernels run on MLX's CPU stream (as mx.linalg does anyway).
"""

from __future__ import annotations

import mlx.core as mx

from refimpl.cells import CELLS
from refimpl.cells.lstm import LSTMState

from ..common import check_nonlinearity, param_grads
from .cells import (gru_forward_graph, gru_gate_adjoints, input_grad, lstm_forward_graph, lstm_gate_adjoints,
                    rnn_forward_graph, rnn_slope, weight_grads)
from .online_dense import dense_jacobian, gru_factors, lstm_factors, rnn_factors
from .runtime import checked_carry, kernel


def _carriers(name, dh):
    """dh (T, B, H) as float64 carriers (T, B, S), zero on the lstm's c part."""
    d = dh.astype(mx.float64)
    return mx.concatenate([d] + [mx.zeros_like(d)] * (CELLS[name].STATE_ROWS - 1), axis=-1)


def _jacobians_T(name, params, cache, use_tanh):
    """[J_tᵀ] for t = 0 … T-1, float64 (B, S, S), from the forward's cache (the cells' eqs. (7), (14), (13))."""
    c, out = cache, []
    for t in range(c.h.shape[0]):
        if name == "rnn":
            _, F_hh, E = rnn_factors(c.h[t], use_tanh)
        elif name == "gru":
            _, F_hh, E = gru_factors(c.h_prev[t], c.r[t], c.z[t], c.n[t], c.hn[t])
        else:
            _, F_hh, E = lstm_factors(c.c_prev[t], c.i[t], c.f[t], c.g[t], c.o[t], c.tanh_c[t])
        out.append(dense_jacobian(F_hh, E, params["weight_hh"]).astype(mx.float64).transpose(0, 2, 1))
    return out


def _solve(A, v):
    """A⁻¹ v for a batch: (B, S, S), (B, S) → (B, S), by a linear solve (f 1)."""
    return mx.linalg.solve(A, v[..., None], stream=mx.cpu)[..., 0]


def _direct(JT, d, Q, e):
    """Phase 1 over the chunk, the direct warm-up (f 2, 3): Q ← Q J_tᵀ, then e ← e + Q d_t, float64 → (Q, e)."""
    for t in range(d.shape[0]):
        Q = Q @ JT[t]                                                        # (f 2) Q_t = Q_{t-1} J_tᵀ
        e = e + (Q @ d[t][..., None])[..., 0]                                # (f 3) e += Q_t d_t
    return Q, e


def _shooting(JT, d, v, P):
    """Phase 1 over the chunk, the shooting warm-up (f 1, 2s): v'_t = J_t^{−T} v'_{t-1} − dh_t and P ← P J_tᵀ,
    float64 → (v', P)."""
    for t in range(d.shape[0]):
        v = _solve(JT[t], v) - d[t]                                          # (f 1) e'_t, then v'_t = e'_t − dh_t
        P = P @ JT[t]                                                        # (f 2s)
    return v, P


def _errors(JT, d, v):
    """Phase 2 over the chunk (f 1): e_t = J_t^{−T} v_{t-1}, v_t = e_t − dh_t, float64 → ([e_t], v_{T-1})."""
    es = []
    for t in range(d.shape[0]):
        e = _solve(JT[t], v)                                                 # (f 1) e_t
        es.append(e)
        v = e - d[t]                                                         # v_t = e_t − dh_t
    return es, v


class _Chunk:
    """One chunk's states (the cell's forward: its cache serves both phases, (a)), J_tᵀ (b) and dh_t as carriers."""

    def __init__(self, name, params, x, state0, dh, nonlinearity=None):
        use_tanh = nonlinearity == "tanh"
        if name == "rnn":
            check_nonlinearity(nonlinearity)
            _, self.cache = rnn_forward_graph(params, x, state0, nonlinearity)
        elif name == "gru":
            _, self.cache = gru_forward_graph(params, x, state0)
        else:
            _, self.cache = lstm_forward_graph(params, x, LSTMState(*state0))
        self.name, self.params, self.x, self.use_tanh, self.sdt = name, params, x, use_tanh, dh.dtype
        self.B, self.H = dh.shape[1], dh.shape[2]
        self.S = CELLS[name].STATE_ROWS * self.H
        self.JT = _jacobians_T(name, params, self.cache, use_tanh)
        self.d = _carriers(name, dh)

    def state(self):
        """The state after the chunk: h_{T-1}, or LSTMState(h_{T-1}, c_{T-1})."""
        c = self.cache
        return LSTMState(c.h[-1], c.c[-1]) if self.name == "lstm" else c.h[-1]

    def carrier(self, carry, name):
        """A float64 carrier from the checked carry; carry None → v = e = 0 (B, S), P = Q = I (B, S, S)."""
        if carry is None:
            if name in ("v", "e"):
                return mx.zeros((self.B, self.S), dtype=mx.float64)
            return mx.broadcast_to(mx.eye(self.S, dtype=mx.float64), (self.B, self.S, self.S))
        return carry[name].astype(mx.float64)

    def check(self, carry, names, what):
        vector, product = (self.B, self.S), (self.B, self.S, self.S)
        shapes = {"v": vector, "e": vector, "P": product, "Q": product}
        return checked_carry(carry, {k: shapes[k] for k in names}, what)

    def grads(self, es):
        """(f 4): the step backward with total adjoint e_t (cast to the state dtype) at every t; the weight gradients
        and x̄ are then one GEMM each over all (t, b) (c) → {param, "x"}."""
        name, params, c, H = self.name, self.params, self.cache, self.H
        g_ih, g_hh = [], []
        for t, e in enumerate(es):
            e = e.astype(self.sdt)
            if name == "rnn":
                g_ih.append(e * rnn_slope(c.h[t], self.use_tanh))             # (3) ā_t
            elif name == "gru":
                gi, gh = gru_gate_adjoints(e, c.h_prev[t], c.r[t], c.z[t], c.n[t], c.hn[t])   # (6)–(10)
                g_ih.append(gi)
                g_hh.append(gh)
            else:
                da, _ = lstm_gate_adjoints(e[:, :H], e[:, H:], c.c_prev[t], c.i[t], c.f[t], c.g[t], c.o[t],
                                           c.tanh_c[t])                      # (5)–(8)
                g_ih.append(da)
        g_ih = mx.stack(g_ih)
        grads = param_grads(params, weight_grads(self.x, c.h_prev, g_ih, mx.stack(g_hh) if g_hh else None))
        grads["x"] = input_grad(params, self.x, g_ih)
        return grads


def _fptt(name, params, x, state0, dh, nonlinearity=None):
    """Both phases over a whole sequence: the direct warm-up from (Q, e) = (I, 0), e_{-1} = e (f 3), the error pass
    from v_{-1} = e_{-1} → {param, "x", initial-state keys = e_{-1}}."""
    ch = _Chunk(name, params, x, state0, dh, nonlinearity)
    _, e_start = _direct(ch.JT, ch.d, ch.carrier(None, "Q"), ch.carrier(None, "e"))   # phase 1, (f 2, 3)
    grads = ch.grads(_errors(ch.JT, ch.d, e_start)[0])                       # phase 2
    for r, key in enumerate(CELLS[name].GRAD_STATE_KEYS):                    # e_{-1}: h̄_{-1}[, c̄_{-1}]
        grads[key] = e_start[:, r * ch.H:(r + 1) * ch.H].astype(ch.sdt)
    return grads


def _fptt1(name, params, x, state0, dh, carry, nonlinearity=None):
    """The error pass over one chunk from the carried v → {param, "x", "state", "carry": {"v"}}."""
    ch = _Chunk(name, params, x, state0, dh, nonlinearity)
    carry = ch.check(carry, ("v",), f"{name}.fptt1")
    es, v = _errors(ch.JT, ch.d, ch.carrier(carry, "v"))
    return {**ch.grads(es), "state": ch.state(), "carry": {"v": v}}


def _fptt_warmup(name, params, x, state0, dh, carry, nonlinearity=None):
    """The direct warm-up over one chunk from the carried (Q, e) → {"state", "carry": {"Q", "e"}}."""
    ch = _Chunk(name, params, x, state0, dh, nonlinearity)
    carry = ch.check(carry, ("Q", "e"), f"{name}.fptt_warmup")
    Q, e = _direct(ch.JT, ch.d, ch.carrier(carry, "Q"), ch.carrier(carry, "e"))
    return {"state": ch.state(), "carry": {"Q": Q, "e": e}}


def _fptt_shooting(name, params, x, state0, dh, carry, nonlinearity=None):
    """The shooting warm-up over one chunk from the carried (v', P) → {"state", "carry": {"v", "P"}}."""
    ch = _Chunk(name, params, x, state0, dh, nonlinearity)
    carry = ch.check(carry, ("v", "P"), f"{name}.fptt_shooting")
    v, P = _shooting(ch.JT, ch.d, ch.carrier(carry, "v"), ch.carrier(carry, "P"))
    return {"state": ch.state(), "carry": {"v": v, "P": P}}


@kernel(float64_carriers=True)
def rnn_fptt(params: dict, x: mx.array, h0: mx.array, dh: mx.array, nonlinearity: str = "tanh") -> dict:
    """As kernel rnn.fptt: the direct warm-up (f 2, 3) then the error pass (f 1, 4) → {param, "x", "h0"}."""
    return _fptt("rnn", params, x, h0, dh, nonlinearity)


@kernel(float64_carriers=True)
def rnn_fptt1(params: dict, x: mx.array, h0: mx.array, dh: mx.array, carry: dict | None = None,
              nonlinearity: str = "tanh") -> dict:
    """As kernel rnn.fptt1: the error pass over one chunk from the carried v (None: e_{-1} = 0)
    → {param, "x", "state", "carry": {"v" (B,H) float64}}."""
    return _fptt1("rnn", params, x, h0, dh, carry, nonlinearity)


@kernel(float64_carriers=True)
def rnn_fptt_warmup(params: dict, x: mx.array, h0: mx.array, dh: mx.array, carry: dict | None = None,
                    nonlinearity: str = "tanh") -> dict:
    """As kernel rnn.fptt_warmup: the direct warm-up over one chunk from the carried (Q, e) (None: (I, 0))
    → {"state", "carry": {"Q" (B,H,H), "e" (B,H), float64}}."""
    return _fptt_warmup("rnn", params, x, h0, dh, carry, nonlinearity)


@kernel(float64_carriers=True)
def rnn_fptt_shooting(params: dict, x: mx.array, h0: mx.array, dh: mx.array, carry: dict | None = None,
                      nonlinearity: str = "tanh") -> dict:
    """As kernel rnn.fptt_shooting: the shooting warm-up over one chunk from the carried (v', P) (None: (0, I))
    → {"state", "carry": {"v" (B,H), "P" (B,H,H), float64}}."""
    return _fptt_shooting("rnn", params, x, h0, dh, carry, nonlinearity)


@kernel(float64_carriers=True)
def gru_fptt(params: dict, x: mx.array, h0: mx.array, dh: mx.array) -> dict:
    """As kernel gru.fptt: the direct warm-up (f 2, 3) then the error pass (f 1, 4) → {param, "x", "h0"}."""
    return _fptt("gru", params, x, h0, dh)


@kernel(float64_carriers=True)
def gru_fptt1(params: dict, x: mx.array, h0: mx.array, dh: mx.array, carry: dict | None = None) -> dict:
    """As kernel gru.fptt1: the error pass over one chunk from the carried v (None: e_{-1} = 0)."""
    return _fptt1("gru", params, x, h0, dh, carry)


@kernel(float64_carriers=True)
def gru_fptt_warmup(params: dict, x: mx.array, h0: mx.array, dh: mx.array, carry: dict | None = None) -> dict:
    """As kernel gru.fptt_warmup: the direct warm-up over one chunk from the carried (Q, e) (None: (I, 0))."""
    return _fptt_warmup("gru", params, x, h0, dh, carry)


@kernel(float64_carriers=True)
def gru_fptt_shooting(params: dict, x: mx.array, h0: mx.array, dh: mx.array, carry: dict | None = None) -> dict:
    """As kernel gru.fptt_shooting: the shooting warm-up over one chunk from the carried (v', P) (None: (0, I))."""
    return _fptt_shooting("gru", params, x, h0, dh, carry)


@kernel(float64_carriers=True)
def lstm_fptt(params: dict, x: mx.array, state0: LSTMState, dh: mx.array) -> dict:
    """As kernel lstm.fptt: the direct warm-up (f 2, 3) then the error pass (f 1, 4) → {param, "x", "h0", "c0"}."""
    return _fptt("lstm", params, x, state0, dh)


@kernel(float64_carriers=True)
def lstm_fptt1(params: dict, x: mx.array, state0: LSTMState, dh: mx.array, carry: dict | None = None) -> dict:
    """As kernel lstm.fptt1: the error pass over one chunk from the carried v (B, 2H) (None: e_{-1} = 0)."""
    return _fptt1("lstm", params, x, state0, dh, carry)


@kernel(float64_carriers=True)
def lstm_fptt_warmup(params: dict, x: mx.array, state0: LSTMState, dh: mx.array, carry: dict | None = None) -> dict:
    """As kernel lstm.fptt_warmup: the direct warm-up over one chunk from the carried (Q (B,2H,2H), e (B,2H))
    (None: (I, 0))."""
    return _fptt_warmup("lstm", params, x, state0, dh, carry)


@kernel(float64_carriers=True)
def lstm_fptt_shooting(params: dict, x: mx.array, state0: LSTMState, dh: mx.array, carry: dict | None = None) -> dict:
    """As kernel lstm.fptt_shooting: the shooting warm-up over one chunk from the carried (v' (B,2H), P (B,2H,2H))
    (None: (0, I))."""
    return _fptt_shooting("lstm", params, x, state0, dh, carry)


KERNELS = {f"{cell}.{phase}": globals()[f"{cell}_{phase}"] for cell in ("rnn", "gru", "lstm")
           for phase in ("fptt", "fptt1", "fptt_warmup", "fptt_shooting")}
