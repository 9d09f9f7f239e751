"""FPTT's two pass schedules over a stack (refimpl/algorithms/chunked.py fptt_grads): 'passes' (L+1 passes over the
inputs, memory independent of T; the default) and 'stored' (one forward pass kept whole, then each error layer's
warm-up and error phase over the exact δ the layers above sent down — the FPTT paper's own code).

They compute the same numbers by different routes: the stored schedule never re-runs a forward pass and walks down the
stack once. Each is checked against BPTT (the stack's hand-derived backward) and against the other, with a pass budget
(spatial layers below) and for fptt1 too, on the reference and on numba (float64).
"""

import numpy as np
import pytest

from refimpl import api
from refimpl.algorithms import fptt
from refimpl.algorithms.chunked import SCHEDULES, fptt_model_grads
from refimpl.errors import UnknownNameError, UnsupportedError
from refimpl.nn.model import bptt, make_model
from refimpl.numerics import rel_error
from refimpl.registry import load_backend


def _stack(cell, layers=3, pooling="cumulative_mean", T=9):
    model, params = make_model(cell, 3, 4, 2, layers=layers, encoder=True, d_model=5, ffn="mlp", pooling=pooling,
                               seed=1)
    for l in range(layers):
        params = fptt.well_conditioned(cell, params, f"layers.{l}.cell.", l)
    rng = np.random.default_rng(3)
    x, y = 0.5 * rng.standard_normal((T, 2, 3)), rng.standard_normal((T, 2, 2))
    return model, params, x, y


def _backends():
    return ["numpy"] + (["numba"] if load_backend("numba").available else [])


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("cell,pooling", [("lru", "cumulative_mean"), ("gru", "none"), ("rnn", "cumulative_mean")])
def test_stored_equals_passes_equals_bptt(cell, pooling, backend):
    model, params, x, y = _stack(cell, pooling=pooling)
    _, want = bptt(model, params, x, y, loss="mse")
    got = {s: api.model_grads(model, params, x, y, loss="mse", algorithm="fptt", backend=backend, schedule=s)[1]
           for s in SCHEDULES}
    for k in want:
        assert rel_error(got["stored"][k], want[k]) <= 1e-8, k
        assert rel_error(got["stored"][k], got["passes"][k]) <= 1e-12, k


@pytest.mark.parametrize("algorithm,options", [("fptt", {"passes": 2}), ("fptt", {"passes": 1}), ("fptt1", {}),
                                               ("fptt", {"warmup": "shooting"})])
def test_schedules_agree_on_budgets_and_variants(algorithm, options):
    """A pass budget (layers below it spatial), fptt1 (every layer from e_{−1} = 0) and the shooting warm-up: the two
    schedules give the same inexact (or exact) gradient, and the same input gradient."""
    model, params, x, y = _stack("lru")
    got = {s: api.model_grads(model, params, x, y, loss="mse", algorithm=algorithm, schedule=s, **options)
           for s in SCHEDULES}
    assert got["stored"][0] == pytest.approx(got["passes"][0], rel=1e-14)
    for k, v in got["passes"][1].items():
        assert rel_error(got["stored"][1][k], v) <= 1e-12, k


def test_stored_diagnostics_match_passes():
    model, params, x, y = _stack("lru", layers=2, T=20)
    diagnostics = {s: {} for s in SCHEDULES}
    for s in SCHEDULES:
        fptt_model_grads(model, params, x, y, "mse", schedule=s, diagnostics=diagnostics[s])
    for l in (0, 1):
        for key in ("residual", "gain"):
            assert diagnostics["stored"][l][key] == pytest.approx(diagnostics["passes"][l][key], rel=1e-8, abs=1e-15)


def test_schedule_refusals():
    model, params, x, y = _stack("lru", layers=1)
    with pytest.raises(UnsupportedError, match="unknown FPTT schedule 'lazy'"):
        api.model_grads(model, params, x, y, loss="mse", algorithm="fptt", schedule="lazy")
    with pytest.raises(UnsupportedError, match="chunk=4 with schedule 'stored'"):
        api.model_grads(model, params, x, y, loss="mse", algorithm="fptt", schedule="stored", chunk=4)
    with pytest.raises(UnknownNameError, match="schedule"):
        api.model_grads(model, params, x, y, loss="mse", algorithm="bptt", schedule="stored")


class _Stream:
    """A stream (length, batch, chunk(t0, t1)) that records what was read."""

    def __init__(self, x, y):
        self.x, self.y, self.calls = x, y, []
        self.length, self.batch = x.shape[:2]

    def chunk(self, t0, t1):
        self.calls.append((t0, t1))
        return self.x[t0:t1], self.y[t0:t1], None


def test_stored_refuses_a_stream_before_reading_it():
    model, params, x, y = _stack("lru", layers=1)
    stream = _Stream(x, y)
    with pytest.raises(UnsupportedError, match="use schedule 'passes' for a stream"):
        fptt_model_grads(model, params, stream, loss="mse", schedule="stored")
    assert stream.calls == []
    fptt_model_grads(model, params, stream, loss="mse", schedule="passes", chunk=4)      # the default schedule streams
    assert stream.calls[:3] == [(0, 4), (4, 8), (8, 9)]
