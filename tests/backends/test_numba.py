"""Numba-specific tests (skipped when numba cannot be imported). The parity of every kernel with the NumPy reference is
tests/backends/test_parity.py's grid; here: the threaded path of the cell loops at a size that cuts the batch into
blocks, the blocks' partition of the rows, and the accuracy of the backend's one tanh and σ (fastmath.py) against a
long-double tanh.
"""

from __future__ import annotations

import numpy as np
import pytest

from refimpl.registry import load_backend

from ..parity import assert_matches_reference

numba = pytest.importorskip("numba")
backend = load_backend("numba")
if not backend.available:
    pytest.skip(f"backend numba: {backend.reason}", allow_module_level=True)

from backends.numba import fastmath, runtime   # noqa: E402


@pytest.mark.parametrize("kernel", [f"{c}.{op}" for c in ("rnn", "gru", "lstm") for op in ("forward", "backward")])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_numba_threaded_blocks_match_reference(kernel, dtype):
    """A size large enough for the Numba cell loops to cut the batch into blocks of rows on several threads
    (T·H² ≥ 2^20, ≥ 16 rows per block): the threaded path against the reference."""
    size = dict(T=16, B=32, I=16, H=256)
    if runtime.plan(size["T"], size["B"], size["H"]).blocks == 1:
        pytest.skip(f"the call runs as one block here ({numba.get_num_threads()} Numba thread(s); BLAS thread counts "
                    f"{'found' if runtime.controls_blas_threads() else 'not found'}): no threaded path to check")
    assert_matches_reference(kernel, "numba", dtype, size, 0, {})


@pytest.mark.parametrize("blocks, serial", [(1, False), (1, True), (3, True), (4, True)])
@pytest.mark.parametrize("n", [1, 7, 64, 101])
def test_blocks_cover_every_row_once(blocks, serial, n):
    """in_blocks hands out [r0, r1) ranges that partition [0, n), block c with its own per_block[c]."""
    seen = np.zeros(n, int)
    owner = np.full(n, -1)
    per_block = np.arange(blocks)

    def mark(tag, c, r0, r1):
        assert tag == "args"
        seen[r0:r1] += 1
        owner[r0:r1] = c
    runtime.in_blocks(runtime.Plan(blocks, serial), n, mark, "args", per_block=(per_block,))
    assert np.all(seen == 1)
    assert np.all(np.diff(owner) >= 0)                      # blocks in order, each a contiguous range


def test_plan_thresholds():
    """Tiny calls leave the BLAS alone, mid-sized ones run as one block with a serial BLAS, large ones are cut into
    blocks of at least MIN_BLOCK_ROWS rows."""
    if not runtime.controls_blas_threads():
        assert runtime.plan(64, 64, 1024) == runtime.Plan(1, False)
        return
    assert runtime.plan(1, 1, 8) == runtime.Plan(1, False)
    assert runtime.plan(4, 8, 128) == runtime.Plan(1, True)                 # T·B·H² ≥ 2^16 but T·H² < 2^20
    big = runtime.plan(64, 8 * runtime.MIN_BLOCK_ROWS, 256)
    assert big.blocks == min(numba.get_num_threads(), 8) and big.serial_blas == (big.blocks > 1)
    assert runtime.plan(64, runtime.MIN_BLOCK_ROWS, 256).blocks == 1        # too few rows for two blocks


@numba.njit
def _apply(fn_id, a, out):
    for i in range(a.shape[0]):
        out[i] = fastmath.tanh(a[i]) if fn_id == 0 else fastmath.sigmoid(a[i])


def _ulps(got, want, dtype):
    """|got − want| in units of the last place of `dtype` at want (long-double want)."""
    spacing = np.spacing(np.abs(want).astype(dtype)).astype(np.longdouble)
    return np.abs(got.astype(np.longdouble) - want) / spacing


@pytest.mark.parametrize("dtype, bound", [(np.float32, 2.5), (np.float64, 2.7)])
def test_fastmath_tanh_is_accurate(dtype, bound):
    """tanh within the ulp bound its docstring states, over [−25, 25] and down to tiny magnitudes, against a
    long-double tanh; NaN, ±inf and ±0 as np.tanh."""
    if np.finfo(np.longdouble).precision <= np.finfo(np.float64).precision:
        pytest.skip("no extended-precision long double here to measure float64 ulps against")
    a = np.concatenate([np.linspace(-25, 25, 200_001), np.geomspace(1e-30, 1, 20_001),
                        -np.geomspace(1e-30, 1, 20_001)]).astype(dtype)
    out = np.empty_like(a)
    _apply(0, a, out)
    assert _ulps(out, np.tanh(a.astype(np.longdouble)), dtype).max() <= bound
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], dtype)
    got = np.empty_like(special)
    _apply(0, special, got)
    np.testing.assert_array_equal(got, np.tanh(special))
    assert np.signbit(got[4]) and not np.signbit(got[3])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fastmath_sigmoid_is_accurate(dtype):
    """σ within one ulp of 1 (absolute) of the long-double logistic function, as the references' ½(1 + tanh(a/2))."""
    a = np.linspace(-40, 40, 100_001).astype(dtype)
    out = np.empty_like(a)
    _apply(1, a, out)
    want = 1 / (1 + np.exp(-a.astype(np.longdouble)))
    assert np.max(np.abs(out.astype(np.longdouble) - want)) <= np.finfo(dtype).eps
