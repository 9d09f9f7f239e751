"""MLX-specific tests (marker `mlx`; skipped when mlx cannot be imported). The parity of every kernel with the NumPy
reference is tests/backends/test_parity.py's grid; here: the boundary (dtype mapping, complex128 as an exact float64
pair, refusals), no mutation of mx.array inputs, the RTRL block carry of lru.rtrl, streams cut into chunks through the
carried kernels, and the custom Metal kernels — built here, their source's arithmetic run through a C compiler on the
CPU, and their parity checked on Apple hardware only.
"""

from __future__ import annotations

import ctypes
import itertools
import shutil
import subprocess

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

from refimpl.cells import lru as lru_ref                      # noqa: E402
from refimpl.errors import DTypeError, UnknownNameError, UnsupportedError   # noqa: E402
from refimpl.registry import KERNELS, call, flatten_outputs, load_backend, map_arrays   # noqa: E402

import backends.mlx as mlx_backend                            # noqa: E402
from backends.mlx import cells, online_lru, runtime           # noqa: E402

from ..parity import assert_matches_reference, make_case_inputs   # noqa: E402

pytestmark = pytest.mark.mlx

TINY = dict(T=3, B=2, I=2, H=3)


# ------------------------------------------------------------------------------------------------- the boundary

@pytest.mark.parametrize("dtype", ["float32", "float64", "complex64", "int32", "bool"])
def test_round_trip_keeps_dtype_and_values(dtype, rng):
    a = rng.standard_normal((3, 4))
    if dtype == "complex64":
        a = a + 1j * rng.standard_normal((3, 4))
    a = a.astype(dtype)
    b = mlx_backend.to_backend(a)
    assert isinstance(b, mx.array)
    back = mlx_backend.to_numpy(b)
    assert back.dtype == a.dtype
    np.testing.assert_array_equal(back, a)


def test_float64_stays_float64(rng):
    """mx.array(float64 ndarray) alone would give float32; the boundary keeps float64."""
    assert mlx_backend.to_backend(rng.standard_normal(5)).dtype == mx.float64


def test_complex128_crosses_as_an_exact_float64_pair_not_downcast(rng):
    """MLX has no complex128: the boundary keeps it as a runtime.Complex128 (float64 re, im), exactly, both ways."""
    a = rng.standard_normal((2, 3)) + 1j * rng.standard_normal((2, 3))
    b = mlx_backend.to_backend(a)
    assert isinstance(b, runtime.Complex128) and b.shape == (2, 3) and b.re.dtype == b.im.dtype == mx.float64
    back = mlx_backend.to_numpy(b)
    assert back.dtype == np.complex128
    np.testing.assert_array_equal(back, a)
    assert flatten_outputs({"v": b}) == {"v": b}                   # one array leaf of an output tree


@pytest.mark.parametrize("kernel,arg", [("lru.forward", "h0"), ("lru.rtrl", "h0"), ("lru.fptt1", "h0"),
                                        ("lru.rtrl", "carry")])
def test_complex128_is_refused_by_the_kernels_outside_the_fptt_carriers(kernel, arg):
    """Only the carry of the lru's FPTT phases is complex128 (the reference's carriers); a complex128 state, or an
    RTRL trace, is refused with the reason — never computed in complex64."""
    inputs = make_case_inputs(kernel, "float32", TINY, 0, {})
    args = map_arrays(mlx_backend.to_backend, inputs)
    if arg == "carry":
        args["carry"] = {k: runtime.Complex128.from_numpy(v.astype(np.complex128)) for k, v in inputs["carry"].items()}
    else:
        args[arg] = runtime.Complex128.from_numpy(inputs[arg].astype(np.complex128))
    with pytest.raises(DTypeError, match="complex128"):
        mlx_backend.KERNELS[kernel](**args)


def test_to_numpy_is_a_copy(rng):
    a = mx.array(rng.standard_normal(4).astype(np.float32))
    out = mlx_backend.to_numpy(a)
    out[:] = 0.0
    assert np.all(np.array(a) != 0.0)


def test_unsupported_dtypes_say_why():
    on_cpu = mx.default_device() == mx.cpu
    for kernel in KERNELS:
        why = mlx_backend.unsupported_dtype(kernel, "float64")
        if kernel.startswith("lru."):
            assert "complex128" in why
        elif on_cpu:
            assert why == ""
        else:
            assert "CPU" in why                      # a GPU default device: float64 is refused, with the way out
        assert mlx_backend.unsupported_dtype(kernel, "float32") == ""


def test_backend_covers_every_kernel():
    b = load_backend("mlx")
    assert b.available, b.reason
    assert sorted(b.kernels) == sorted(KERNELS)


@pytest.fixture
def cpu_default():
    """Run on the CPU (where MLX has float64), whatever the default device was; restore it afterwards."""
    before = mx.default_device()
    mx.set_default_device(mx.cpu)
    yield
    mx.set_default_device(before)


@pytest.fixture
def gpu_default(monkeypatch):
    """Pretend the default device is a GPU (as on Apple silicon), where MLX has no float64."""
    monkeypatch.setattr(runtime.mx, "default_device", lambda: mx.Device(mx.gpu, 0))


def test_float64_refused_on_a_gpu_default_device(gpu_default):
    inputs = make_case_inputs("gru.forward", "float64", TINY, 0, {})
    args = map_arrays(mlx_backend.to_backend, inputs)
    with pytest.raises(UnsupportedError, match="float64.*CPU"):
        mlx_backend.KERNELS["gru.forward"](**args)
    assert "CPU" in mlx_backend.unsupported_dtype("gru.forward", "float64")


@pytest.mark.parametrize("kernel", ["gru.fptt", "lru.fptt", "gru.fptt1", "lstm.fptt_warmup", "lru.fptt_warmup",
                                    "rnn.fptt_shooting", "lru.fptt_shooting"])
def test_fptt_float32_runs_on_a_gpu_default_device(kernel, gpu_default):
    """FPTT keeps float64 carriers in every dtype (the reference's default): its float32 kernels, float64 carry and
    all, run on the CPU stream whatever the default device, and still match the reference."""
    inputs = make_case_inputs(kernel, "float32", TINY, 0, {})
    got = flatten_outputs(mlx_backend.KERNELS[kernel](**map_arrays(mlx_backend.to_backend, inputs)))
    want = flatten_outputs(KERNELS[kernel].reference(**inputs))
    for name, ref in want.items():
        np.testing.assert_allclose(mlx_backend.to_numpy(got[name]), ref, rtol=1e-4, atol=1e-5, err_msg=name)


def test_float32_runs_on_a_gpu_default_device(gpu_default):
    args = map_arrays(mlx_backend.to_backend, make_case_inputs("gru.forward", "float32", TINY, 0, {}))
    h, _ = mlx_backend.KERNELS["gru.forward"](**args)
    assert h.dtype == mx.float32


def test_float64_lru_is_refused_not_computed_in_complex64(cpu_default):
    """Float64 lru parameters would need complex128 states: a clear error, never a silently complex64 result."""
    inputs = make_case_inputs("lru.forward", "float64", TINY, 0, {})
    args = {"params": map_arrays(mlx_backend.to_backend, inputs["params"]),
            "x": mlx_backend.to_backend(inputs["x"]), "h0": mx.array(inputs["h0"].astype(np.complex64))}
    with pytest.raises(UnsupportedError, match="complex128"):
        mlx_backend.KERNELS["lru.forward"](**args)


def test_bad_nonlinearity_is_a_clear_error():
    args = map_arrays(mlx_backend.to_backend, make_case_inputs("rnn.forward", "float32", TINY, 0,
                                                               {"nonlinearity": "tanh"}))
    args["nonlinearity"] = "relu"
    with pytest.raises(UnknownNameError, match="tanh"):
        mlx_backend.KERNELS["rnn.forward"](**args)


# ---------------------------------------------------------------------------------------------- kernels on mx.array

def _variant(kernel):
    return KERNELS[kernel].variants[0]


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_kernel_takes_and_returns_mx_arrays_and_mutates_nothing(kernel):
    """Called directly with mx.array inputs (no conversion in between): the outputs are mx.arrays of the reference's
    names, and every input still holds its values afterwards."""
    inputs = make_case_inputs(kernel, "float32", TINY, 3, _variant(kernel))
    args = map_arrays(mlx_backend.to_backend, inputs)
    arrays = (mx.array, runtime.Complex128)                  # Complex128: the lru's FPTT carriers (complex128)
    before = {k: mlx_backend.to_numpy(v) for k, v in flatten_outputs(args).items() if isinstance(v, arrays)}
    out = mlx_backend.KERNELS[kernel](**args)
    got, want = flatten_outputs(out), flatten_outputs(KERNELS[kernel].reference(**inputs))
    assert sorted(got) == sorted(want)
    for name, value in got.items():
        assert isinstance(value, mx.array if want[name].dtype != np.complex128 else runtime.Complex128), name
    after = flatten_outputs(args)
    for name, value in before.items():
        np.testing.assert_array_equal(mlx_backend.to_numpy(after[name]), value, err_msg=f"{kernel} mutated {name}")


@pytest.mark.parametrize("chunk", [1, 3, 5])
def test_lru_rtrl_carries_its_traces_between_blocks(chunk, monkeypatch):
    """The parity grid's T ≤ 64 fits one block of lru.rtrl; with short blocks the traces Q, Σ, Z are carried from
    block to block (R3) — the result must still be the reference's exact RTRL."""
    monkeypatch.setattr(online_lru, "CHUNK", chunk)
    assert assert_matches_reference("lru.rtrl", "mlx", "float32", dict(T=13, B=3, I=5, H=7), 0, {}) <= 1e-4


def test_lru_rtrl_honours_any_carry_as_given(rng):
    """lru.rtrl keeps compact traces inside but reads the carry's five traces as they are (the carried part moves on
    by linearity, module docstring): a random carry — not one a sweep could reach, where S_θ is no multiple of S_ν —
    still gives the reference's gradients and carry."""
    inputs = make_case_inputs("lru.rtrl", "float32", dict(T=9, B=2, I=3, H=5), 0, {})
    inputs["carry"] = {k: (rng.standard_normal(v.shape) + 1j * rng.standard_normal(v.shape)).astype(np.complex64)
                       for k, v in inputs["carry"].items()}
    got = flatten_outputs(call("lru.rtrl", "mlx", **inputs))
    want = flatten_outputs(KERNELS["lru.rtrl"].reference(**inputs))
    for name, ref in want.items():
        assert np.linalg.norm(got[name] - ref) <= 1e-5 * np.linalg.norm(ref), name


@pytest.mark.parametrize("kernel", ["gru.rtrl", "lstm.snap1", "lru.rtrl", "rnn.fptt1", "lstm.fptt_warmup",
                                    "lru.fptt1", "lru.fptt_warmup", "gru.fptt_shooting", "lru.fptt_shooting"])
def test_a_carry_of_the_wrong_layout_is_refused(kernel):
    """A carry with a missing name or a wrong shape (another batch size) is a ShapeError, as in the reference."""
    from refimpl.errors import ShapeError
    inputs = make_case_inputs(kernel, "float32", TINY, 0, _variant(kernel))
    name = sorted(inputs["carry"])[0]
    for carry in ({k: v for k, v in inputs["carry"].items() if k != name},
                  {**inputs["carry"], name: inputs["carry"][name][:1]}):
        with pytest.raises(ShapeError, match="carr"):
            call(kernel, "mlx", **{**inputs, "carry": carry})


def test_reference_and_mlx_caches_interchange(cpu_default):
    """A reference forward feeds the MLX backward and an MLX forward feeds the reference backward (same cache type)."""
    inputs = make_case_inputs("lstm.forward", "float64", dict(T=5, B=2, I=3, H=4), 1, {})
    h_ref, cache_ref = KERNELS["lstm.forward"].reference(**inputs)
    dh = np.random.default_rng(0).standard_normal(h_ref.shape)
    args = map_arrays(mlx_backend.to_backend, inputs)
    h_mlx, cache_mlx = mlx_backend.KERNELS["lstm.forward"](**args)
    assert type(cache_mlx) is type(cache_ref)
    from_ref = mlx_backend.KERNELS["lstm.backward"](args["params"], mlx_backend.to_backend(dh),
                                                    map_arrays(mlx_backend.to_backend, cache_ref))
    from_mlx = KERNELS["lstm.backward"].reference(inputs["params"], dh, map_arrays(np.array, cache_mlx))
    for k in from_mlx:
        np.testing.assert_allclose(np.array(from_ref[k]), from_mlx[k], rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------- streams in chunks

#: The carried kernels: the RTRL family and FPTT's phases, its two warm-ups included (refimpl/kernels.py).
CARRIED = sorted(k for k in KERNELS if k.split(".")[1] in ("rtrl", "snap1", "truncated", "spatial", "cec", "fptt1",
                                                           "fptt_warmup", "fptt_shooting"))
STREAM = dict(T=13, B=2, I=3, H=4)
#: Chunk sizes, cycled until the stream ends (the last chunk takes what is left); (13,) is the uncut sweep.
CUTS = [(1,), (7,), (1, 7, 2), (13,)]


def _dtype(kernel):
    """float64 where MLX has it (the CPU stream); the lru runs complex64 states (its carriers are still float64)."""
    return "float32" if kernel.startswith("lru.") else "float64"


def _tolerance(kernel):
    return 1e-5 if kernel.startswith("lru.") else 1e-10


def _chunks(T, cut):
    t = 0
    for size in itertools.cycle(cut):
        if t >= T:
            return
        yield slice(t, min(t + size, T))
        t += size


def _run_stream(kernel, inputs, cut, carry=None):
    """Run `kernel` over the stream of `inputs` cut into chunks, handing "state" and "carry" from call to call;
    → (Σ of every gradient over the chunks, x̄ of every step if the kernel returns one, the last state and carry)."""
    state_arg = next(k for k in ("h0", "state0") if k in inputs)
    state, sums, dx = inputs[state_arg], {}, []
    carry = inputs.get("carry") if carry is None else carry
    for chunk in _chunks(inputs["x"].shape[0], cut):
        out = call(kernel, "mlx", **{**inputs, "x": inputs["x"][chunk], "dh": inputs["dh"][chunk],
                                     state_arg: state, "carry": carry})
        for k in inputs["params"]:
            if k in out:                                           # the warm-up has no gradients
                sums[k] = sums.get(k, 0.0) + out[k].astype(np.float64)
        if "x" in out:
            dx.append(out["x"])
        state, carry = out["state"], out["carry"]
    return sums, (np.concatenate(dx) if dx else None), state, carry


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / max(float(np.linalg.norm(b)), 1e-300))


@pytest.mark.parametrize("kernel", CARRIED)
def test_a_stream_in_chunks_gives_the_uncut_sweep(kernel, cpu_default):
    """A stream of T = 13 steps, cut into chunks of 1, of 7 (7 + 6), of 1, 7, 2, 1, 2 or left whole, through the
    kernel with the state and the carry handed on from each call to the next (starting from the input spec's
    non-trivial carry, and from None), gives the same gradient sums, x̄, final state and final carry as one call over
    the whole stream: ≤ 1e-10 relative in float64 (the lru: complex64 states, ≤ 1e-5)."""
    inputs = make_case_inputs(kernel, _dtype(kernel), STREAM, 5, _variant(kernel))
    tol = _tolerance(kernel)
    for start in ("spec", None):
        stream = inputs if start == "spec" else {**inputs, "carry": None}
        want_sums, want_dx, want_state, want_carry = _run_stream(kernel, stream, (STREAM["T"],))
        if start is None and kernel.split(".")[1] not in ("truncated", "spatial"):
            assert want_carry, kernel                              # the rule carries something
        for cut in CUTS[:-1]:
            sums, dx, state, carry = _run_stream(kernel, stream, cut)
            worst = max([_rel(sums[k], want_sums[k]) for k in want_sums]
                        + [_rel(a, b) for a, b in zip(flatten_outputs(state).values(),
                                                       flatten_outputs(want_state).values())]
                        + [_rel(carry[k], want_carry[k]) for k in want_carry] + [0.0])
            if want_dx is not None:
                worst = max(worst, _rel(dx, want_dx))
            assert sorted(carry) == sorted(want_carry)
            assert worst <= tol, f"{kernel} cut {cut} from {start} carry: relative error {worst:.2e} > {tol:.0e}"


def test_a_stream_in_chunks_fails_without_its_carry(cpu_default):
    """The check above can fail: dropping the carry between chunks (each chunk from None) changes the gradients."""
    inputs = make_case_inputs("gru.rtrl", "float64", STREAM, 5, {})
    whole, _, _, _ = _run_stream("gru.rtrl", {**inputs, "carry": None}, (13,))
    state, sums = inputs["h0"], {}
    for chunk in _chunks(13, (7,)):
        out = call("gru.rtrl", "mlx", inputs["params"], inputs["x"][chunk], state, inputs["dh"][chunk])
        sums = {k: sums.get(k, 0.0) + out[k] for k in inputs["params"]}
        state = out["state"]
    assert _rel(sums["weight_hh"], whole["weight_hh"]) > 1e-3


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm", "lru"])
@pytest.mark.parametrize("cut", [(1,), (3,), (7,)])
@pytest.mark.parametrize("warmup", ["fptt_warmup", "fptt_shooting"])
def test_fptt_from_its_phases_in_chunks_is_the_whole_fptt(cell, cut, warmup, cpu_default):
    """A warm-up kernel over the stream in chunks from None — <cell>.fptt_warmup (direct: e_{−1} = e) or
    <cell>.fptt_shooting (e_{−1} = −P v'), both through fptt.start_error — then <cell>.fptt1 in chunks from
    {"v": e_{−1}}: the gradient sums and x̄ of <cell>.fptt in one call (which warms up directly), and its
    initial-state gradients are e_{−1}. The shooting warm-up agrees with the direct one to rounding on these
    well-conditioned inputs (the lstm on T = 7, where its FPTT is well conditioned, docs/derivations/fptt.md §7)."""
    from refimpl.algorithms.fptt import start_error
    from refimpl.cells import CELLS, resolve_cell
    kernel = f"{cell}.fptt"
    T = 7 if cell == "lstm" else STREAM["T"]
    inputs = make_case_inputs(kernel, _dtype(kernel), {**STREAM, "T": T}, 2, _variant(kernel))
    want = call(kernel, "mlx", **inputs)
    _, _, _, warm = _run_stream(f"{cell}.{warmup}", {**inputs, "carry": None}, cut)
    assert sorted(warm) == (["Q", "e"] if warmup == "fptt_warmup" else ["P", "v"])
    e_start = start_error(resolve_cell(cell, STREAM["I"], STREAM["H"], _dtype(kernel)), warm)
    sums, dx, _, _ = _run_stream(f"{cell}.fptt1", inputs, cut, carry={"v": e_start})
    tol = _tolerance(kernel)
    for k in inputs["params"]:
        assert _rel(sums[k], want[k]) <= tol, k
    assert _rel(dx, want["x"]) <= tol
    starts = np.split(e_start, len(CELLS[cell].GRAD_STATE_KEYS), axis=-1)
    for key, e in zip(CELLS[cell].GRAD_STATE_KEYS, starts):
        assert _rel(e, want[key]) <= tol, key


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm", "lru"])
@pytest.mark.parametrize("seed", [0, 1])
def test_direct_and_shooting_warmups_give_the_same_start_error(cell, seed, cpu_default):
    """On a well-conditioned input (the fptt input spec; the lstm on T = 7) the direct warm-up's e_{−1} = Σ Q_t dh_t
    and the shooting warm-up's e_{−1} = −P v' — one without a solve, one by solves — agree to rounding, and both are
    the gradient of the initial state by BPTT (<cell>.forward, <cell>.backward on MLX): ≤ 1e-10 relative (float64
    carriers in every case; the lru's BPTT runs complex64 states, so against it ≤ 1e-5)."""
    from refimpl.algorithms.fptt import start_error
    from refimpl.cells import CELLS, resolve_cell
    kernel = f"{cell}.fptt"
    T = 7 if cell == "lstm" else STREAM["T"]
    variant = _variant(kernel)
    inputs = make_case_inputs(kernel, _dtype(kernel), {**STREAM, "T": T}, seed, variant)
    c = resolve_cell(cell, STREAM["I"], STREAM["H"], _dtype(kernel))
    direct = start_error(c, call(f"{cell}.fptt_warmup", "mlx", **{**inputs, "carry": None})["carry"])
    shooting = start_error(c, call(f"{cell}.fptt_shooting", "mlx", **{**inputs, "carry": None})["carry"])
    assert direct.dtype == shooting.dtype == (np.complex128 if cell == "lru" else np.float64)
    assert _rel(direct, shooting) <= 1e-10
    state_arg = next(k for k in ("h0", "state0") if k in inputs)
    _, cache = call(f"{cell}.forward", "mlx", inputs["params"], inputs["x"], inputs[state_arg], **variant)
    bptt = call(f"{cell}.backward", "mlx", inputs["params"], inputs["dh"], cache, **variant)
    want = np.concatenate([bptt[k] for k in CELLS[cell].GRAD_STATE_KEYS], axis=-1)
    for e in (direct, shooting):
        assert _rel(e, want) <= _tolerance(kernel)


# ---------------------------------------------------------------------------------------------- Metal kernels

def test_metal_kernels_build():
    """Building an mx.fast.metal_kernel object needs no GPU: the source and its names are accepted."""
    assert callable(runtime.scan_kernel())
    assert callable(runtime.adjoint_kernel())


def test_metal_path_is_off_without_metal():
    if mx.metal.is_available():
        assert mlx_backend.KERNELS["lru.forward"] is cells.lru_forward_metal
        assert mlx_backend.KERNELS["lru.backward"] is cells.lru_backward_metal
    else:
        assert mlx_backend.KERNELS["lru.forward"] is cells.lru_forward
        assert mlx_backend.KERNELS["lru.backward"] is cells.lru_backward


def _c_kernel(tmp_path, name, source, inputs, outputs):
    """The Metal body compiled as a C function name(gid, inputs…, input shapes…, outputs…): the same arithmetic,
    one call per GPU thread."""
    args = ([f"const float* {n}" for n in inputs] + [f"const int* {n}_shape" for n in inputs]
            + [f"float* {n}" for n in outputs])
    code = ("typedef unsigned int uint;\n"
            f"void {name}(uint gid, {', '.join(args)}) {{\n"
            "    struct { uint x; uint y; uint z; } thread_position_in_grid = {gid, 0, 0};\n"
            f"{source}\n}}\n")
    src, lib = tmp_path / f"{name}.c", tmp_path / f"{name}.so"
    src.write_text(code)
    subprocess.run([shutil.which("cc") or "cc", "-O1", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True,
                   capture_output=True)
    return getattr(ctypes.CDLL(str(lib)), name)


def _run_threads(fn, threads, inputs, outputs):
    ins = [np.ascontiguousarray(a, dtype=np.float32) for a in inputs]
    shapes = [np.array(a.shape, dtype=np.int32) for a in ins]
    ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)              # noqa: E731
    for gid in range(threads):
        fn(ctypes.c_uint(gid), *map(ptr, ins), *map(ptr, shapes), *map(ptr, outputs))


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler to run the Metal source's arithmetic on the CPU")
def test_metal_source_arithmetic_matches_the_reference(tmp_path):
    """LRU_SCAN and LRU_ADJOINT, compiled as C (the bodies are C-compatible), run one call per thread — including
    threads past the last channel, which must return untouched — against the reference forward and BPTT."""
    rng = np.random.default_rng(0)
    T, B, N, I = 6, 3, 5, 2
    params = lru_ref.init_params(I, N, rng, np.float32, r_min=0.5, r_max=0.95)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = lru_ref.random_state(rng, B, N, np.float32)
    h_ref, cache = lru_ref.forward(params, x, h0)
    lam, gamma = lru_ref.lambda_gamma(params)
    u = (h_ref - lam * cache.h_prev).astype(np.complex64)          # (3): u_t = h_t − λ h_{t-1}

    scan = _c_kernel(tmp_path, "lru_scan", runtime.LRU_SCAN, runtime.SCAN_INPUTS, runtime.SCAN_OUTPUTS)
    h_re, h_im = np.full((T, B, N), np.nan, np.float32), np.full((T, B, N), np.nan, np.float32)
    _run_threads(scan, B * N + 7, [lam.real, lam.imag, h0.real, h0.imag, u.real, u.imag], [h_re, h_im])
    np.testing.assert_allclose(h_re + 1j * h_im, h_ref, rtol=1e-5, atol=1e-6)

    dh = (rng.standard_normal((T, B, N)) + 1j * rng.standard_normal((T, B, N))).astype(np.complex64)
    grads = lru_ref.backward(params, dh, cache)
    du_want = np.zeros_like(dh)                                    # (8), written out independently
    carry = np.zeros_like(dh[0])
    for t in reversed(range(T)):
        du_want[t] = dh[t] + carry
        carry = np.conj(lam) * du_want[t]
    adj = _c_kernel(tmp_path, "lru_adjoint", runtime.LRU_ADJOINT, runtime.ADJOINT_INPUTS, runtime.ADJOINT_OUTPUTS)
    outs = [np.full((T, B, N), np.nan, np.float32) for _ in range(2)] + \
           [np.full((B, N), np.nan, np.float32) for _ in range(2)]
    _run_threads(adj, B * N + 7, [lam.real, lam.imag, dh.real, dh.imag], outs)
    np.testing.assert_allclose(outs[0] + 1j * outs[1], du_want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outs[2] + 1j * outs[3], grads["h0"], rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not mx.metal.is_available(), reason="the Metal kernels run only where MLX has a Metal back-end "
                                                        "(Apple silicon)")
@pytest.mark.parametrize("kernel", ["lru.forward", "lru.backward"])
def test_metal_kernels_match_the_reference(kernel):
    for size in (dict(T=1, B=1, I=1, H=1), dict(T=13, B=1, I=2, H=3), dict(T=64, B=8, I=16, H=64)):
        assert assert_matches_reference(kernel, "mlx", "float32", size, 0, {}) <= 1e-4
