"""Numba-specific tests (skipped when numba cannot be imported). The parity of every kernel with the NumPy reference is
tests/backends/test_parity.py's grid; here: the threaded path of the cell loops at a size that cuts the batch into
blocks, the blocks' partition of the rows, the accuracy of the backend's one tanh and σ (fastmath.py) against a
long-double tanh, the carried kernels (RTRL family, FPTT's phases) run as a stream cut into chunks, and FPTT's two
warm-ups (direct, shooting) against each other and BPTT.
"""

from __future__ import annotations

import numpy as np
import pytest

from refimpl.algorithms.fptt import start_error
from refimpl.cells import CELLS, resolve_cell
from refimpl.errors import ShapeError
from refimpl.kernels import FPTT_SWEEPS, RTRL_SWEEPS
from refimpl.numerics import TOLERANCES, rel_error
from refimpl.registry import KERNELS, call, flatten_outputs, load_backend

from ..parity import assert_matches_reference, make_case_inputs

numba = pytest.importorskip("numba")
backend = load_backend("numba")
if not backend.available:
    pytest.skip(f"backend numba: {backend.reason}", allow_module_level=True)

from backends.numba import fastmath, gemm, runtime   # noqa: E402


CELL_KERNELS = [f"{c}.{op}" for c in ("rnn", "gru", "lstm", "lru") for op in ("forward", "backward")]


@pytest.mark.parametrize("kernel", CELL_KERNELS)
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


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("M, K, N", [(15, 5, 3), (60, 20, 5), (900, 300, 70), (1024, 256, 16), (256, 1024, 16),
                                     (96, 40, 33), (1, 1, 1), (49, 1, 9)])
def test_step_product_is_the_product(M, K, N, dtype):
    """gemm.step_product against a Wᵀ in float64, for row counts that leave a short last tile and column counts that
    leave a zero-padded last panel: the padded columns hold zeros, the columns past P·w are left alone, and an a that
    is a strided view (a block of rows of a (T+1, B, H) array) gives the same product."""
    rng = np.random.default_rng(M + K + N)
    W, a = rng.standard_normal((M, K)).astype(dtype), rng.standard_normal((N, K)).astype(dtype)
    Wp = runtime.step_weights(W, dtype)
    P, _, w = Wp.shape
    assert w == gemm.panel_width(dtype) and P * w >= M > (P - 1) * w
    rec = np.full((N, P * w + 5), 7.0, dtype)
    gemm.step_product(Wp, a, rec)
    want = a.astype(np.float64) @ W.T.astype(np.float64)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(rec[:, :M], want, rtol=tol, atol=tol * np.abs(want).max() * np.sqrt(K))
    assert np.all(rec[:, M:P * w] == 0) and np.all(rec[:, P * w:] == 7.0)
    states = np.zeros((3, N + 4, K), dtype)
    states[1, 2:N + 2] = a
    again = np.zeros_like(rec)
    gemm.step_product(Wp, states[1, 2:N + 2], again)
    np.testing.assert_array_equal(again[:, :P * w], rec[:, :P * w])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("M, K, N", [(768, 64, 300), (512, 64, 257), (5, 7, 3), (48, 3, 129), (1, 1, 2)])
def test_product_is_the_product_and_stays_in_its_columns(M, K, N, dtype):
    """gemm.product (the input projections' GEMM, through runtime.row_product with a bias) against a Wᵀ + bias, with
    row counts that leave a short chunk and tile and column counts that leave a partial last panel; out is a view
    into a wider array, whose other columns must be left alone."""
    rng = np.random.default_rng(M * K + N)
    W, a = rng.standard_normal((M, K)).astype(dtype), rng.standard_normal((N, K)).astype(dtype)
    bias = rng.standard_normal(M)
    wide = np.full((N, M + 9), 7.0, dtype)
    runtime.row_product(a, W, wide[:, 2:M + 2], runtime.Plan(2 if N >= 32 else 1, False), bias)
    want = a.astype(np.float64) @ W.T.astype(np.float64) + bias
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(wide[:, 2:M + 2], want, rtol=tol, atol=tol * np.abs(want).max() * np.sqrt(K))
    assert np.all(wide[:, :2] == 7.0) and np.all(wide[:, M + 2:] == 7.0)
    with pytest.raises(ValueError, match="packed"):
        gemm.product(a, gemm.pack(W), None, np.zeros((N, M + gemm.panel_width(dtype)), dtype))


def test_step_product_refuses_mismatched_operands():
    """An a whose K differs from the packed W's, or a rec narrower than the panels, is refused, not read past."""
    Wp = runtime.step_weights(np.ones((20, 8)), np.float64)
    with pytest.raises(ValueError, match="packed"):
        gemm.step_product(Wp, np.ones((4, 9)), np.zeros((4, Wp.shape[0] * Wp.shape[2])))
    with pytest.raises(ValueError, match="packed"):
        gemm.step_product(Wp, np.ones((4, 8)), np.zeros((4, 20)))


def test_tile_shape_follows_the_vector_registers():
    """The tile table: 24 accumulators of 64 bytes with AVX-512, 12 of 32 with AVX/AVX2, NEON's 32 registers of 16
    bytes, SSE's 16 — keyed on the extensions, and on Numba's own features (NUMBA_CPU_FEATURES) where set."""
    assert gemm.tile_shape("+avx,+avx2,+fma,+avx512f,+avx512bw", "x86_64") == (8, 3, 64)
    assert gemm.tile_shape("+avx,+avx2,+fma,-avx512f,-avx512bw", "x86_64") == (4, 3, 32)
    assert gemm.tile_shape("+avx,-avx2", "AMD64") == (4, 3, 32)
    assert gemm.tile_shape("+sse4.2,-avx,-avx2", "x86_64") == (4, 3, 16)
    assert gemm.tile_shape("+neon,+fp-armv8", "arm64") == (8, 3, 16)
    R, V, nbytes = gemm.TILE
    assert gemm.panel_width(np.float32) == V * nbytes // 4 and gemm.panel_width(np.float64) == V * nbytes // 8


def _host_runs(features: str) -> bool:
    import llvmlite.binding as llvm
    host = llvm.get_host_cpu_features()
    return all(host.get(f[1:], False) for f in features.split(",") if f.startswith("+"))


AVX2 = ("+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+cx8,+f16c,+fma,+fxsr,+lzcnt,+mmx,+movbe,+popcnt,+sse,+sse2,+sse3,"
        "+sse4.1,+sse4.2,+ssse3,+xsave,-avx512f,-avx512bw,-avx512cd,-avx512dq,-avx512vl")
SSE = "+64bit,+cmov,+cx16,+cx8,+fxsr,+mmx,+popcnt,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,-avx,-avx2,-fma,-avx512f"


@pytest.mark.parametrize("features, tile", [pytest.param(AVX2, (4, 3, 32), id="avx2"),
                                            pytest.param(SSE, (4, 3, 16), id="sse", marks=pytest.mark.slow)])
def test_other_tiles_compute_the_product(features, tile, tmp_path):
    """The tile of another row of the table, compiled for that CPU (NUMBA_CPU_FEATURES, a fresh process and cache)
    where this host can run it: a GRU forward and backward against the reference, and one product."""
    import os
    import platform
    import subprocess
    import sys
    if platform.machine().lower() not in ("x86_64", "amd64") or not _host_runs(features):
        pytest.skip("this host cannot run code compiled for these features")
    script = f"""
import numpy as np
from backends.numba import gemm, runtime
assert gemm.TILE == {tile!r}, gemm.TILE
rng = np.random.default_rng(0)
for dtype in (np.float32, np.float64):
    W, a = rng.standard_normal((77, 45)).astype(dtype), rng.standard_normal((11, 45)).astype(dtype)
    Wp = runtime.step_weights(W, dtype)
    rec = np.zeros((11, Wp.shape[0] * Wp.shape[2]), dtype)
    gemm.step_product(Wp, a, rec)
    want = a.astype(np.float64) @ W.T.astype(np.float64)
    assert np.abs(rec[:, :77] - want).max() <= (1e-12 if dtype == np.float64 else 1e-5) * np.abs(want).max(), dtype
from tests.parity import assert_matches_reference
for kernel in ("gru.forward", "gru.backward", "lstm.backward"):
    assert_matches_reference(kernel, "numba", "float64", dict(T=5, B=7, I=3, H=29), 1, {{}})
print("ok")
"""
    env = dict(os.environ, NUMBA_CPU_FEATURES=features, NUMBA_CACHE_DIR=str(tmp_path))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0 and done.stdout.split()[-1:] == ["ok"], done.stderr[-3000:]


@pytest.mark.parametrize("kernel", [f"{c}.{op}" for c in ("rnn", "gru", "lstm") for op in ("forward", "backward")])
def test_cell_loops_match_reference_with_short_tiles_and_padded_panels(kernel):
    """The cell loops where the per-step product has a short last tile of rows (B = 5) and a zero-padded last panel
    (H = 21), against the reference."""
    assert_matches_reference(kernel, "numba", "float64", dict(T=6, B=5, I=4, H=21), 3, {})


def test_scratch_is_one_array_per_name_and_thread():
    """scratch: the same array for the same name, shape and dtype in one thread; a new one for another shape, dtype
    or name, in another thread, and after release_scratch."""
    import threading
    a = runtime.scratch("test.a", (3, 4), np.float64)
    assert runtime.scratch("test.a", (3, 4), np.float64) is a
    assert runtime.scratch("test.b", (3, 4), np.float64) is not a
    b = runtime.scratch("test.a", (4, 3), np.float64)
    assert b is not a and b.shape == (4, 3) and b.flags.c_contiguous
    assert runtime.scratch("test.a", (4, 3), np.float32).dtype == np.float32
    other = []
    t = threading.Thread(target=lambda: other.append(runtime.scratch("test.a", (4, 3), np.float32)))
    t.start()
    t.join()
    assert not np.shares_memory(other[0], runtime.scratch("test.a", (4, 3), np.float32))
    c = runtime.scratch("test.a", (4, 3), np.float32)
    runtime.release_scratch()
    assert runtime.scratch("test.a", (4, 3), np.float32) is not c


@pytest.mark.parametrize("kernel", CELL_KERNELS + ["gru.fptt", "lstm.fptt1", "rnn.rtrl"])
def test_outputs_outlive_the_next_call(kernel):
    """A kernel's outputs are its own: none shares memory with an input; a second call (other inputs, same shapes, so
    the workspace is reused) leaves the first call's outputs as they were, and no output shares memory with the
    workspace."""
    size = dict(T=7, B=4, I=3, H=6)
    inputs = make_case_inputs(kernel, "float64", size, 0, {})
    first = flatten_outputs(call(kernel, "numba", **inputs))
    kept = {k: np.array(v, copy=True) for k, v in first.items()}
    for name, out in first.items():                       # h0 is copied into the states, never aliased
        for iname, a in flatten_outputs(inputs).items():
            if isinstance(a, np.ndarray) and isinstance(out, np.ndarray):
                assert not np.shares_memory(out, a), f"{kernel}: output {name} shares memory with input {iname}"
    call(kernel, "numba", **make_case_inputs(kernel, "float64", size, 1, {}))
    pool = runtime.scratch_arrays()
    assert pool, "the kernels of this test use the workspace"
    for name, out in first.items():
        np.testing.assert_array_equal(out, kept[name], err_msg=f"{kernel}: {name} changed by the next call")
        assert not any(np.shares_memory(out, w) for w in pool), f"{kernel}: {name} is a workspace array"


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


# ------------------------------------------------------------------------------------- carried kernels, chunked
# A stream cut into chunks (DESIGN.md §5): each call takes the state and the carry the previous one returned. The
# chunks must give the sums of one whole-sequence call (only the order of the sums changes), from a stream's start
# (carry None) and from a non-trivial carry (the registry's input spec: a reference sweep over a random prefix).

CHUNK_SIZE = dict(T=11, B=3, I=4, H=5)
CHUNKS = (1, 7, CHUNK_SIZE["T"])                              # 11 chunks of 1; 7 + 4; one chunk of T
CARRIED = [k for k in RTRL_SWEEPS] + [k for k in FPTT_SWEEPS if not k.endswith(".fptt")]


def _state_arg(kernel):
    return CELLS[kernel.split(".")[0]].STATE_ARG


def _run_chunked(kernel, inputs, C):
    """The kernel over the sequence of `inputs` in chunks of C steps, the state and carry handed on → (Σ of the
    chunks' gradients, x̄ over the sequence or None, the last state, the last carry)."""
    arg = _state_arg(kernel)
    T = inputs["x"].shape[0]
    state, carry = inputs[arg], inputs["carry"]
    sums, dx = {}, []
    for t0 in range(0, T, C):
        out = call(kernel, "numba", **{**inputs, "x": inputs["x"][t0:t0 + C], "dh": inputs["dh"][t0:t0 + C],
                                       arg: state, "carry": carry})
        state, carry = out.pop("state"), out.pop("carry")
        if "x" in out:
            dx.append(out.pop("x"))
        for k, v in out.items():
            sums[k] = sums[k] + v if k in sums else v
    return sums, (np.concatenate(dx) if dx else None), state, carry


def _named(grads, dx, state, carry) -> dict:
    out = {"grads": grads, "state": state, "carry": carry}
    return out if dx is None else {**out, "x": dx}


def _assert_close(got: dict, want: dict, what: str, tol=1e-10):
    got, want = flatten_outputs(got), flatten_outputs(want)
    assert sorted(got) == sorted(want), what
    for name, w in want.items():
        assert got[name].dtype == w.dtype and got[name].shape == w.shape, (what, name)
        err = rel_error(got[name], w)
        assert err <= tol, f"{what}: {name} relative error {err:.2e} > {tol:.0e}"


@pytest.mark.parametrize("start", ["stream start", "carried"])
@pytest.mark.parametrize("kernel", CARRIED)
def test_chunks_carry_state_and_traces(kernel, start):
    """Chunks of 1, 7 and T steps through a carried kernel (every RTRL-family rule, fptt1, fptt_warmup, fptt_shooting),
    float64: the gradient sums, x̄, the last state and the last carry of one whole-sequence call, to 1e-10
    (relative)."""
    spec = KERNELS[kernel]
    inputs = spec.make_inputs(np.random.default_rng(3), np.dtype("float64"), CHUNK_SIZE, **spec.variants[0])
    if start == "stream start":
        inputs["carry"] = None
    whole = _run_chunked(kernel, inputs, CHUNK_SIZE["T"])
    assert (whole[3] == {}) == (kernel.split(".")[1] in ("truncated", "spatial"))    # they carry nothing
    for C in CHUNKS[:-1]:
        got = _run_chunked(kernel, inputs, C)
        _assert_close(_named(*got), _named(*whole), f"{kernel} in chunks of {C}")


def _fptt_inputs(cell, seed, T=None):
    """<cell>.fptt's registered inputs (well-conditioned Jacobians), float64, of CHUNK_SIZE (T ≤ 7 for the lstm)."""
    spec = KERNELS[f"{cell}.fptt"]
    size = dict(CHUNK_SIZE, T=7) if cell == "lstm" else dict(CHUNK_SIZE, T=T or CHUNK_SIZE["T"])
    return spec.make_inputs(np.random.default_rng(seed), np.dtype("float64"), size, **spec.variants[0])


@pytest.mark.parametrize("warmup", ["fptt_warmup", "fptt_shooting"])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm", "lru"])
def test_chunked_fptt_phases_compose_to_fptt(cell, warmup):
    """FPTT as a stream: a warm-up (the direct one, <cell>.fptt's own; the shooting one) in chunks from the stream's
    start, e_{-1} = fptt.start_error(carry) (e, or −P v'), then the error phase in chunks from v = e_{-1}, gives
    <cell>.fptt's gradients, x̄ and initial-state keys (float64, 1e-10)."""
    inputs = _fptt_inputs(cell, 5)
    T = inputs["x"].shape[0]
    want = call(f"{cell}.fptt", "numba", **inputs)
    keys = CELLS[cell].GRAD_STATE_KEYS
    for C in (1, 3, T):
        _, _, _, warm = _run_chunked(f"{cell}.{warmup}", {**inputs, "carry": None}, C)
        assert set(warm) == ({"Q", "e"} if warmup == "fptt_warmup" else {"v", "P"})
        e0 = start_error(resolve_cell(cell, inputs["x"].shape[-1], inputs["dh"].shape[-1], "float64"), warm)
        sums, dx, _, _ = _run_chunked(f"{cell}.fptt1", {**inputs, "carry": {"v": e0}}, C)
        got = {**sums, "x": dx, **dict(zip(keys, np.split(e0.astype(want[keys[0]].dtype), len(keys), axis=-1)))}
        _assert_close(got, want, f"{cell} fptt ({warmup}) in chunks of {C}")


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm", "lru"])
def test_direct_and_shooting_warmups_agree(cell):
    """On a well-conditioned input (<cell>.fptt's registered inputs, T = 30; the lstm T = 7) the direct warm-up
    (e_{-1} = Σ Q_t dh_t, no inversion) and the shooting one (e_{-1} = −P v', through J_t^{-H}) give the same e_{-1} to
    rounding, and both give BPTT's gradient of the initial state (the reference cell's backward, a third
    computation)."""
    inputs = _fptt_inputs(cell, 7, T=30)
    module = CELLS[cell]
    cell_obj = resolve_cell(cell, inputs["x"].shape[-1], inputs["dh"].shape[-1], "float64")
    args = {k: v for k, v in inputs.items() if k != "dh"}
    e = {w: start_error(cell_obj, call(f"{cell}.{w}", "numba", **inputs, carry=None)["carry"])
         for w in ("fptt_warmup", "fptt_shooting")}
    assert rel_error(e["fptt_shooting"], e["fptt_warmup"]) <= 1e-12
    _, cache = module.forward(**args)
    bptt = module.backward(inputs["params"], inputs["dh"], cache)
    want = np.concatenate([bptt[k] for k in module.GRAD_STATE_KEYS], axis=-1)
    for w, got in e.items():
        assert rel_error(got, want) <= 1e-12, w


@pytest.mark.parametrize("kernel", ["rnn.rtrl", "lstm.snap1", "lru.rtrl", "gru.fptt1", "rnn.fptt_warmup",
                                    "gru.fptt_shooting", "lru.fptt_warmup", "lru.fptt_shooting"])
def test_a_wrong_carry_is_refused(kernel):
    """A carry of another rule or batch size is refused with ShapeError (never silently misread)."""
    spec = KERNELS[kernel]
    inputs = spec.make_inputs(np.random.default_rng(0), np.dtype("float64"), CHUNK_SIZE, **spec.variants[0])
    name = sorted(inputs["carry"])[0]
    with pytest.raises(ShapeError):
        call(kernel, "numba", **{**inputs, "carry": {**inputs["carry"], name: inputs["carry"][name][:1]}})
    with pytest.raises(ShapeError):
        call(kernel, "numba", **{**inputs, "carry": {k: v for k, v in inputs["carry"].items() if k != name}})


def test_lru_rtrl_takes_any_carry_like_the_reference():
    """A carry no sweep with these parameters could reach (an update inside the stream changed ν, θ, γ; here: random
    traces) is taken exactly as the reference takes it (the carried part enters by linearity, not through the
    kernel's compact traces)."""
    spec = KERNELS["lru.rtrl"]
    rng = np.random.default_rng(3)
    inputs = spec.make_inputs(rng, np.dtype("float64"), dict(T=9, B=3, I=4, H=5))
    inputs["carry"] = {k: rng.standard_normal(v.shape) + 1j * rng.standard_normal(v.shape)
                       for k, v in inputs["carry"].items()}
    want = flatten_outputs(call("lru.rtrl", "numpy", **inputs))
    got = flatten_outputs(call("lru.rtrl", "numba", **inputs))
    assert set(got) == set(want)
    for name in want:
        assert rel_error(got[name], want[name]) < 1e-12, name


def _lru_rtrl_inputs(dtype, size, carried, seed=5):
    inputs = KERNELS["lru.rtrl"].make_inputs(np.random.default_rng(seed), np.dtype(dtype), size)
    if not carried:
        inputs["carry"] = None
    return inputs


@pytest.mark.parametrize("chunk, units", [(1, 1), (4, 16), (5, 7), (64, 128), (3, 200)])
@pytest.mark.parametrize("carried", [False, True], ids=["start", "carried"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_lru_rtrl_any_chunk_and_block_matches_reference(chunk, units, carried, dtype, monkeypatch):
    """lru.rtrl's chunks of C steps ((R1)-(R3)) and blocks of units, for choices that cut T = 50 into several chunks
    and a shorter last one (or run it as one) and N = 70 into uneven blocks (or one): the reference's outputs, carry
    included, at the parity tolerance."""
    from backends.numba import online_lru
    monkeypatch.setattr(online_lru, "CHUNK", chunk)
    monkeypatch.setattr(online_lru, "UNITS", units)
    inputs = _lru_rtrl_inputs(dtype, dict(T=50, B=5, I=7, H=70), carried)
    want = flatten_outputs(call("lru.rtrl", "numpy", **inputs))
    got = flatten_outputs(call("lru.rtrl", "numba", **inputs))
    assert set(got) == set(want)
    tol = TOLERANCES["backend_vs_reference"][dtype]
    for name in want:
        assert rel_error(got[name], want[name]) <= tol, name


def test_lru_rtrl_blocking_is_valid():
    """rtrl_blocking: a chunk of at least one step and blocks of 1 … N units, at most UNITS, for any N."""
    from backends.numba.online_lru import UNITS, rtrl_blocking
    for N in (1, 3, 64, 129, 256, 1000):
        chunk, units = rtrl_blocking(32, N, 64)
        assert chunk >= 1 and 1 <= units <= min(N, UNITS), (N, chunk, units)


def test_lru_rtrl_does_not_depend_on_the_thread_count():
    """The blocks of units on one thread or on several: bit-identical outputs (each unit's arithmetic is the same)."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one Numba thread: nothing to compare")
    inputs = _lru_rtrl_inputs("float32", dict(T=40, B=3, I=5, H=300), True)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = flatten_outputs(call("lru.rtrl", "numba", **inputs))
        numba.set_num_threads(2)
        two = flatten_outputs(call("lru.rtrl", "numba", **inputs))
    finally:
        numba.set_num_threads(before)
    for name in one:
        np.testing.assert_array_equal(two[name], one[name], err_msg=name)


def test_lru_rtrl_with_vanishing_powers_matches_reference():
    """Units with |λ| ≈ 1e-3: their powers λ^c underflow (the kernel drops those below ε², _flushed); the outputs are
    still the reference's at the parity tolerance."""
    inputs = _lru_rtrl_inputs("float32", dict(T=70, B=3, I=5, H=20), True)
    nu = inputs["params"]["nu_log"].copy()
    nu[::3] = np.log(-np.log(1e-3))                          # |λ| = exp(−e^ν) = 1e-3
    inputs["params"] = {**inputs["params"], "nu_log": nu}
    want = flatten_outputs(call("lru.rtrl", "numpy", **inputs))
    got = flatten_outputs(call("lru.rtrl", "numba", **inputs))
    for name in want:
        assert rel_error(got[name], want[name]) <= TOLERANCES["backend_vs_reference"]["float32"], name


def test_fptt_that_overflows_is_refused_like_the_reference():
    """A forgetful gru over a long sequence: the inverted recursion overflows (e grows like the inverse of the
    contraction, ~2^T). Numba's solve would refuse the non-finite system with LinAlgError; the kernel hands the NaN on
    instead, so the backend stops with FPTT's own NumericalError, as the reference does."""
    from refimpl import make_model, model_grads
    from refimpl.errors import NumericalError
    model, params = make_model("gru", 2, 4, 1, seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((1200, 2, 2)), rng.standard_normal((1200, 2, 1))
    for backend in ("numpy", "numba"):
        with pytest.raises(NumericalError, match="FPTT lost the error signal"):
            model_grads(model, params, x, y, loss="mse", algorithm="fptt", backend=backend, chunk=64)
