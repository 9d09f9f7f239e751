"""The CuPy backend, tested where there is no GPU and where there is one.

(a) Compile check: every CUDA source of backends/cupy/sources.py compiles standalone with nvcc (-std=c++17
    -arch=sm_80 --ptx, with its explicit instantiations) — skipped with the reason when nvcc is absent; deliberately
    broken sources fail the same check (so it can fail).
(b) Host-side logic on the CPU: dtype dispatch, launch configuration, scan chunking, argument checks, the device
    probe's reasons, the generated wrappers against the thread bodies, the CUDA launch path with a stand-in for CuPy.
(c) The CPU emulation (backends/cupy/runtime.py EmulatedDevice): the CUDA thread bodies compiled for the host and run
    thread by thread, inside NaN-guarded copies of their arrays (write-only outputs start as NaN), behind every kernel
    implementation of the backend — compared with the NumPy reference over the registry's parity grid, and with
    itself in the reverse thread order (threads must be independent); the carried kernels (RTRL-family sweeps, FPTT's
    phases) over a stream cut into chunks of several sizes, carrying "state" and "carry" from call to call, against
    one uncut call (and <cell>.fptt against its two phases in chunks; the direct and the shooting warm-up's e_{-1}
    against each other and against BPTT's recursion), with any carry, refusing a carry of another shape. Skipped with
    the reason when there is no C++ compiler.
(d) gpu: only where a CUDA device answers (backends.cupy.available()): NVRTC compiles every instantiation, kernels
    take and return cupy arrays, the chunked scans on the device, parity at a larger size. The registry's parity grid
    on the device is tests/backends/test_parity.py (it picks the backend up by itself).
"""

from __future__ import annotations

import copy
import inspect
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import backends.cupy as cupy_backend
from backends.cupy import runtime
from backends.cupy.runtime import (CudaDevice, CudaSource, EmulatedDevice, In, InOut, Int, Kernel, Out, Real,
                                   find_compiler)
from backends.cupy.sources import SOURCES
from refimpl.cells import CELLS
from refimpl.errors import DTypeError, ShapeError, UnsupportedError
from refimpl.numerics import TOLERANCES, rel_error
from refimpl.registry import KERNELS, flatten_outputs

from .test_parity import SEEDS, SIZES

NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed: the CUDA compile check needs the CUDA "
                                                     "toolkit on PATH")
CXX = find_compiler()
needs_cxx = pytest.mark.skipif(CXX is None, reason="no C++ compiler (c++, g++, clang++ or $CXX): the CPU emulation of "
                                                   "the CUDA kernels cannot be built")
GPU_OK, GPU_WHY = cupy_backend.available()


# ------------------------------------------------------------------------------------------ (a) the compile check

_COPY = Kernel("copy", (In("x", "R", "n"), Out("y", "R", "n")), n="n")

#: Sources that must NOT compile: a type error, a declaration that disagrees with its thread body, a write to an input.
BROKEN = (
    CudaSource("broken_type", r"""
template <typename R>
RI_FN void copy_thread(long long idx, const R* x, R* y) { y[idx] = x; }
""", (_COPY,)),
    CudaSource("broken_declaration", r"""
template <typename R>
RI_FN void copy_thread(long long idx, const R* x, R* y) { y[idx] = x[idx]; }
""", (Kernel("copy", (In("x", "R", "n"), Out("y", "R", "n"), Int("H")), n="n"),)),
    CudaSource("broken_const", r"""
template <typename R>
RI_FN void copy_thread(long long idx, const R* x, R* y) { x[idx] = R(0); y[idx] = R(1); }
""", (_COPY,)),
)


def _nvcc(source: CudaSource, tmp_path):
    src, ptx = tmp_path / f"{source.name}.cu", tmp_path / f"{source.name}.ptx"
    src.write_text(source.standalone(), encoding="utf-8")
    done = subprocess.run([NVCC, "-std=c++17", "-arch=sm_80", "--ptx", str(src), "-o", str(ptx)],
                          capture_output=True, text=True, timeout=600)
    return done, ptx


def test_the_compile_check_sees_every_cuda_source():
    """Every CudaSource of the package is in sources.SOURCES (what the checks below walk), and there is no CUDA file
    beside them."""
    import pathlib

    import backends.cupy.sources as sources_module
    package = pathlib.Path(sources_module.__file__).parent
    defined = [v for v in vars(sources_module).values() if isinstance(v, CudaSource)]
    assert defined and all(any(v is s for s in SOURCES) for v in defined)
    assert not [p.name for p in package.iterdir() if p.suffix in (".cu", ".cuh")]
    for module in package.glob("*.py"):
        assert "CudaSource(" not in module.read_text(encoding="utf-8") or module.name in ("sources.py", "runtime.py")


@needs_nvcc
@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.name)
def test_every_cuda_source_compiles_with_nvcc(source, tmp_path):
    done, ptx = _nvcc(source, tmp_path)
    assert done.returncode == 0, f"nvcc failed on {source.name}:\n{done.stderr}"
    entries = re.findall(r"^\.visible \.entry", ptx.read_text(), re.M)
    assert len(entries) == len(source.name_expressions())        # every kernel, for float and for double


@needs_nvcc
@pytest.mark.parametrize("source", BROKEN, ids=lambda s: s.name)
def test_a_broken_source_fails_the_nvcc_check(source, tmp_path):
    done, _ = _nvcc(source, tmp_path)
    assert done.returncode != 0, f"nvcc accepted the broken source {source.name}"


@needs_cxx
@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.name)
def test_every_cuda_source_builds_for_the_emulation(source, tmp_path):
    EmulatedDevice(build_dir=str(tmp_path)).build(source)      # -Wall -Werror


@needs_cxx
@pytest.mark.parametrize("source", BROKEN, ids=lambda s: s.name)
def test_a_broken_source_fails_the_emulation_build(source, tmp_path):
    with pytest.raises(RuntimeError, match="emulation build"):
        EmulatedDevice(build_dir=str(tmp_path)).build(source)


# ------------------------------------------------------------------------------------------ (b) host-side logic

def test_dtype_dispatch():
    assert runtime.real_ctype(np.float32) == runtime.real_ctype(np.complex64) == "float"
    assert runtime.real_ctype("float64") == runtime.real_ctype(np.complex128) == "double"
    assert runtime.complex_dtype(np.float32) == np.complex64 and runtime.real_dtype(np.complex128) == np.float64
    assert runtime.instantiation("gru_fwd_step", np.float32) == "gru_fwd_step<float>"
    for bad in (np.int32, np.float16, np.bool_):
        with pytest.raises(DTypeError, match="allowed: float32, float64"):
            runtime.real_ctype(bad)


@pytest.mark.parametrize("n", [0, 1, 31, 255, 256, 257, 1000, 10 ** 7 + 3])
def test_launch_config_covers_every_thread_once(n):
    grid, block = runtime.launch_config(n)
    assert block == runtime.BLOCK
    assert grid * block >= n and (grid == 0 or (grid - 1) * block < n)
    assert (grid == 0) == (n == 0)


def test_launch_config_rejects_bad_input():
    with pytest.raises(ShapeError):
        runtime.launch_config(-1)
    with pytest.raises(UnsupportedError, match="multiple of 32"):
        runtime.launch_config(10, block=100)
    assert runtime.launch_config(300, block=128) == (3, 128)


@pytest.mark.parametrize("T", [1, 2, 13, 16, 31, 32, 64, 1000, 4097])
@pytest.mark.parametrize("BN", [1, 3, 8 * 64, 32 * 1024, 1 << 16])
def test_scan_chunks_partition_time(T, BN):
    C = runtime.scan_chunks(T, 1, BN)
    L = runtime.chunk_length(T, C)
    assert 1 <= C <= T
    assert (C - 1) * L < T <= C * L                           # every chunk non-empty, every step in one chunk
    if C > 1:
        assert L >= runtime.SCAN_MIN_CHUNK                      # chunks long enough to pay for the second pass
        assert BN < runtime.SCAN_THREADS                        # only where B·N under-fills the device
    if BN >= runtime.SCAN_THREADS or T < 2 * runtime.SCAN_MIN_CHUNK:
        assert C == 1                                          # the sequential scan


def test_chunk_length_rejects_an_empty_chunk():
    with pytest.raises(ShapeError, match="empty chunk"):
        runtime.chunk_length(10, 4)                             # L = 3: chunks of 3, 3, 3, 1 — fine
        runtime.chunk_length(9, 4)                              # L = 3: the 4th chunk would be empty


_DEMO = Kernel("demo", (In("x", "R", "n"), In("z", "C", "2*H"), Out("y", "D", "n"), Int("H"), Real("s")), n="n")


def test_check_args_converts_scalars_and_accepts_arrays():
    x, z, y = np.zeros(6, np.float32), np.zeros(4, np.complex64), np.zeros(6)
    out = runtime.check_args(_DEMO, np.float32, 6, (x, z, y, 2, 0.5))
    kinds = [k for k, _ in out]
    assert kinds == ["R", "C", "D", "int", "real"]
    assert out[0][1] is x and out[2][1] is y
    assert type(out[3][1]) is np.int32 and type(out[4][1]) is np.float32
    pairs = np.zeros(8, np.float32)                            # complex as an R array of (re, im) pairs
    runtime.check_args(_DEMO, np.float32, 6, (x, pairs, y, 2, 0.5))


@pytest.mark.parametrize("case, error, match", [
    (lambda x, z, y: (x.astype(np.float64), z, y, 2, 0.5), DTypeError, "argument x: dtype float64"),
    (lambda x, z, y: (x, z.astype(np.complex128), y, 2, 0.5), DTypeError, "argument z"),
    (lambda x, z, y: (x, z, y.astype(np.float32), 2, 0.5), DTypeError, "argument y"),
    (lambda x, z, y: (np.zeros(12, np.float32)[::2], z, y, 2, 0.5), ShapeError, "C-contiguous"),
    (lambda x, z, y: (np.zeros(5, np.float32), z, y, 2, 0.5), ShapeError, "5 elements, expected n = 6"),
    (lambda x, z, y: (x, np.zeros(7, np.float32), y, 2, 0.5), ShapeError, "even size"),
    (lambda x, z, y: (x, z, y, 3, 0.5), ShapeError, "expected 2\\*H = 6"),
    (lambda x, z, y: (x, z, y, 2 ** 31, 0.5), ShapeError, "does not fit a C int"),
    (lambda x, z, y: (x, z, y, 2), ShapeError, "takes 5 arguments"),
    (lambda x, z, y: ([0.0] * 6, z, y, 2, 0.5), DTypeError, "expected an array"),
])
def test_check_args_refuses_mismatches(case, error, match):
    x, z, y = np.zeros(6, np.float32), np.zeros(4, np.complex64), np.zeros(6)
    with pytest.raises(error, match=match):
        runtime.check_args(_DEMO, np.float32, 6, case(x, z, y))


def test_check_args_refuses_an_output_that_aliases_an_input():
    k = Kernel("k", (In("a", "R", "n"), In("b", "R", "n"), Out("c", "R", "n")), n="n")
    buf = np.zeros(8)
    runtime.check_args(k, np.float64, 4, (buf[:4], buf[:4], buf[4:]))        # two inputs may share memory
    with pytest.raises(ShapeError, match="overlap"):
        runtime.check_args(k, np.float64, 4, (buf[:4], buf[2:6], buf[3:7]))


_THREAD = re.compile(r"RI_FN void (\w+)_thread\((.*?)\)\s*\{", re.S)


def _thread_signatures(body: str) -> dict:
    sigs = {}
    for name, params in _THREAD.findall(body):
        sigs[name] = [" ".join(p.split()) for p in params.split(",")]
    return sigs


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.name)
def test_declarations_match_the_thread_bodies(source):
    """The generated wrapper passes the declared arguments by position: same names, order, types and constness as
    the thread body's parameters (the compiler cannot see two swapped arguments of one type)."""
    sigs = _thread_signatures(source.body)
    assert sorted(sigs) == sorted(k.name for k in source.kernels)
    for k in source.kernels:
        params = sigs[k.name]
        assert params[0] == "long long idx"
        want = [a.c_decl("R").replace(" __restrict__", "").replace("double", "double") for a in k.args]
        assert params[1:] == want, f"{k.name}: body {params[1:]} vs declaration {want}"


def test_probe_reasons():
    assert runtime.classify_probe(1, None, 12080, 12090) == (True, "")
    ok, why = runtime.classify_probe(None, RuntimeError("cudaErrorInsufficientDriver"), 0, 12090)
    assert not ok and why.startswith("no CUDA device answers: RuntimeError: cudaErrorInsufficientDriver")
    assert "no NVIDIA driver" in why
    ok, why = runtime.classify_probe(None, RuntimeError("cudaErrorInsufficientDriver"), 11040, 12090)
    assert not ok and why.startswith("driver too old: the NVIDIA driver supports CUDA 11.4") and "12.9" in why
    ok, why = runtime.classify_probe(0, None, 12090, 12090)
    assert not ok and why.startswith("no CUDA device answers")


def test_available_says_why(monkeypatch):
    ok, why = cupy_backend.available()
    assert ok or why.startswith(("cannot import 'cupy'", "no CUDA device answers", "driver too old"))
    monkeypatch.setattr(cupy_backend, "_cupy", None)
    assert cupy_backend.available() == (False, "cannot import 'cupy': install it (pip install -e '.[cuda12]' or "
                                               "'.[cuda13]')")


def test_kernels_cover_the_registry_and_take_its_arguments():
    assert set(cupy_backend.KERNELS) == set(KERNELS) == set(cupy_backend.IMPLEMENTATIONS)
    rng = np.random.default_rng(0)
    for name, spec in KERNELS.items():
        for variant in spec.variants:
            inputs = spec.make_inputs(rng, np.dtype("float64"), (spec.sizes or SIZES)[0], **variant)
            inspect.signature(cupy_backend.IMPLEMENTATIONS[name]).bind("device", **inputs)
            inspect.signature(cupy_backend.KERNELS[name]).bind(**inputs)


def test_importing_the_backend_touches_no_device():
    code = ("import backends.cupy as b; from refimpl.registry import coverage; "
            "rows = {r['backend']: r for r in coverage()}; assert b._DEVICE is None; "
            "print(len(rows['cupy']['kernels']), rows['cupy']['available'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == str(len(KERNELS))


class _FakeCupy:
    """Stands in for the cupy module on the launch path: records what CudaDevice compiles and launches."""

    def __init__(self):
        self.modules, self.calls = [], []
        fake = self

        class RawModule:
            def __init__(self, code, options, name_expressions):
                self.code, self.options, self.names = code, options, list(name_expressions)
                fake.modules.append(self)

            def get_function(self, name):
                assert name in self.names
                return lambda grid, block, args: fake.calls.append((name, grid, block, args))
        self.RawModule = RawModule


def test_cuda_launch_path_with_a_stand_in_for_cupy():
    fake = _FakeCupy()
    dev = CudaDevice(xp=fake)
    cells = next(s for s in SOURCES if s.name == "cells")
    B, H = 3, 100
    args = (np.zeros((B, H), np.float32), np.zeros((B, H), np.float32), np.zeros(H, np.float32),
            np.zeros((B, H), np.float32))
    dev.launch(cells, "rnn_fwd_step", np.float32, B * H, *args, H, 1)
    dev.launch(cells, "rnn_fwd_step", np.float32, B * H, *args, H, 0)
    assert len(fake.modules) == 1                                     # compiled once per source
    mod = fake.modules[0]
    assert mod.options == ("-std=c++17",) and mod.code == cells.nvrtc()
    assert set(mod.names) == set(cells.name_expressions())
    name, grid, block, passed = fake.calls[0]
    assert name == "rnn_fwd_step<float>" and grid == (2,) and block == (256,)
    assert type(passed[0]) is np.int64 and passed[0] == B * H          # long long n
    assert all(p is a for p, a in zip(passed[1:5], args))              # arrays as pointers, in order
    assert type(passed[5]) is np.int32 and passed[5] == H and passed[6] == 1
    with pytest.raises(DTypeError):
        dev.launch(cells, "rnn_fwd_step", np.float64, B * H, *args, H, 1)   # float32 arrays, double instantiation
    dev.launch(cells, "rnn_fwd_step", np.float32, 0, *(np.zeros(0, np.float32),) * 3, np.zeros(0, np.float32), 0, 1)
    assert len(fake.calls) == 2                                        # n = 0 launches nothing


# ------------------------------------------------------------------------------------------ (c) the CPU emulation

@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    if CXX is None:
        pytest.skip("no C++ compiler: the CPU emulation of the CUDA kernels cannot be built")
    return EmulatedDevice(build_dir=str(tmp_path_factory.mktemp("emulation")))


def _grid(seeds):
    for kernel, spec in KERNELS.items():
        for variant in spec.variants:
            for dtype in spec.dtypes:
                for size in spec.sizes or SIZES:
                    for seed in seeds:
                        tag = "-".join(f"{v}" for v in variant.values())
                        yield pytest.param(kernel, variant, dtype, size, seed,
                                           id=f"{kernel}{'-' + tag if tag else ''}-{dtype}-"
                                              f"T{size['T']}B{size['B']}I{size['I']}H{size['H']}-s{seed}")


def _assert_matches(kernel, got, want, dtype):
    got, want = flatten_outputs(got), flatten_outputs(want)
    assert sorted(got) == sorted(want)
    tol = TOLERANCES["backend_vs_reference"][dtype]
    for name, ref in want.items():
        out = got[name]
        assert isinstance(out, np.ndarray), f"{kernel} {name}: {type(out).__name__}"
        assert out.dtype == ref.dtype and out.shape == ref.shape, f"{kernel} {name}: {out.dtype}{out.shape}"
        err = rel_error(out, ref)
        assert err <= tol, f"{kernel} {dtype} {name}: relative error {err:.2e} > {tol:.0e}"


@needs_cxx
@pytest.mark.parametrize("kernel,variant,dtype,size,seed", list(_grid(SEEDS)))
def test_emulated_kernel_matches_reference(emulated, kernel, variant, dtype, size, seed):
    spec = KERNELS[kernel]
    inputs = spec.make_inputs(np.random.default_rng(seed), np.dtype(dtype), size, **variant)
    snapshot = copy.deepcopy(inputs)
    want = spec.reference(**copy.deepcopy(inputs))
    got = cupy_backend.IMPLEMENTATIONS[kernel](emulated, **inputs)
    for name, a in flatten_outputs(inputs).items():
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, flatten_outputs(snapshot)[name], err_msg=f"{kernel} mutated {name}")
    _assert_matches(kernel, got, want, dtype)


@needs_cxx
@pytest.mark.parametrize("kernel,variant,dtype,size,seed",
                         [p for p in _grid(SEEDS[:1]) if not p.values[0].startswith("ep.")])   # ep launches none
def test_emulated_threads_are_independent(emulated, kernel, variant, dtype, size, seed):
    """The same launches with the threads run in the reverse order give bit-identical results."""
    spec = KERNELS[kernel]
    inputs = spec.make_inputs(np.random.default_rng(seed), np.dtype(dtype), size, **variant)
    reverse = EmulatedDevice(build_dir=emulated.build_dir, order=1)
    a = flatten_outputs(cupy_backend.IMPLEMENTATIONS[kernel](emulated, **copy.deepcopy(inputs)))
    b = flatten_outputs(cupy_backend.IMPLEMENTATIONS[kernel](reverse, **copy.deepcopy(inputs)))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=f"{kernel} {name} depends on the thread order")


@needs_cxx
@pytest.mark.parametrize("T", [1, 13, 17, 64])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_emulated_chunked_scan_matches_reference(emulated, T, dtype):
    """lru.forward / lru.backward with every chunking of the scan, including one step per chunk."""
    from backends.cupy.cells import lru_backward, lru_forward
    size = dict(T=T, B=2, I=3, H=5)
    fwd, bwd = KERNELS["lru.forward"], KERNELS["lru.backward"]
    inputs = fwd.make_inputs(np.random.default_rng(T), np.dtype(dtype), size)
    h_ref, cache_ref = fwd.reference(**inputs)
    dh = bwd.make_inputs(np.random.default_rng(T), np.dtype(dtype), size)["dh"]
    g_ref = bwd.reference(inputs["params"], dh, cache_ref)
    for C in sorted({1, 2, 3, 5, T} & set(range(1, T + 1))):
        if (C - 1) * -(-T // C) >= T:
            continue                                                   # that many chunks would leave one empty
        _assert_matches("lru.forward", lru_forward(emulated, **inputs, chunks=C), (h_ref, cache_ref), dtype)
        _assert_matches("lru.backward", lru_backward(emulated, inputs["params"], dh, cache_ref, chunks=C), g_ref,
                        dtype)


_FAULTY = CudaSource("faulty", r"""
template <typename R>
RI_FN void shift_thread(long long idx, const R* x, R* y, int mode) {
    if (mode == 0) y[idx + 1] = x[idx];                 // writes past the end
    else if (mode == 1) y[idx] = x[idx + 1];            // reads past the end
    else if (idx % 2 == 0) y[idx] = x[idx];             // leaves every other output unwritten
}
""", (Kernel("shift", (In("x", "R", "n"), Out("y", "R", "n"), Int("mode")), n="n"),))


@needs_cxx
def test_emulation_catches_faulty_memory_access(tmp_path):
    dev = EmulatedDevice(build_dir=str(tmp_path))
    x, y = np.arange(5.0), np.zeros(5)
    with pytest.raises(RuntimeError, match="wrote outside its argument y"):
        dev.launch(_FAULTY, "shift", np.float64, 5, x, y, 0)
    dev.launch(_FAULTY, "shift", np.float64, 5, x, y, 1)
    assert np.isnan(y[-1]) and np.array_equal(y[:-1], x[1:])          # the read past the end saw the guard
    dev.launch(_FAULTY, "shift", np.float64, 5, x, y, 2)
    assert np.array_equal(np.isnan(y), [False, True, False, True, False])   # unwritten outputs stay NaN


@needs_cxx
def test_kernels_refuse_an_unsupported_dtype(emulated):
    spec = KERNELS["rnn.forward"]
    inputs = spec.make_inputs(np.random.default_rng(0), np.dtype("float32"), SIZES[1])
    inputs["params"] = {k: v.astype(np.float16) for k, v in inputs["params"].items()}
    inputs["x"], inputs["h0"] = inputs["x"].astype(np.float16), inputs["h0"].astype(np.float16)
    with pytest.raises(DTypeError, match="float16"):
        cupy_backend.IMPLEMENTATIONS["rnn.forward"](emulated, **inputs)


#: The carried kernels (DESIGN.md §5): the RTRL-family sweeps and FPTT's two phases.
CARRIED = [k for k in KERNELS if k.split(".")[1] in ("rtrl", "snap1", "truncated", "spatial", "cec", "fptt1",
                                                       "fptt_warmup", "fptt_shooting")]
#: A stream of T = 9 steps and the ways it is cut: one step per call, uneven chunks around a chunk of 7, one call.
STREAM = dict(T=9, B=2, I=3, H=4)
SCHEDULES = ((1,) * 9, (7, 2), (1, 7, 1), (9,))


def _carried_cases():
    for kernel in CARRIED:
        for variant in KERNELS[kernel].variants:
            for schedule in SCHEDULES:
                tag = "-".join(f"{v}" for v in variant.values())
                yield pytest.param(kernel, variant, schedule,
                                   id=f"{kernel}{'-' + tag if tag else ''}-{'+'.join(map(str, schedule))}")


def _run_chunks(dev, kernel, inputs, schedule):
    """The kernel over the stream cut as `schedule`, each call starting from the "state" and "carry" the previous one
    handed on: (Σ of the per-chunk gradients in float64, x̄ of all the chunks, the last state, the last carry)."""
    state_arg = CELLS[kernel.split(".")[0]].STATE_ARG
    state, carry = inputs[state_arg], inputs["carry"]
    sums, dx, start = {}, [], 0
    for C in schedule:
        chunk = {**inputs, "x": inputs["x"][start:start + C], "dh": inputs["dh"][start:start + C],
                 state_arg: state, "carry": carry}
        out = cupy_backend.IMPLEMENTATIONS[kernel](dev, **chunk)
        state, carry = out["state"], out["carry"]
        for name in inputs["params"]:
            if name in out:
                sums[name] = sums.get(name, 0.0) + out[name].astype(np.float64)
        if "x" in out:
            dx.append(out["x"])
        start += C
    assert start == inputs["x"].shape[0]
    return sums, dx, state, carry


@needs_cxx
@pytest.mark.parametrize("kernel,variant,schedule", list(_carried_cases()))
def test_emulated_chunks_give_the_uncut_sweep(emulated, kernel, variant, schedule):
    """A stream cut into chunks, each call carrying "state" and "carry" on to the next, gives the gradient sums, x̄,
    state and carry of one whole-stream call (float64, ≤ 1e-10), from the registry's non-trivial starting carry."""
    spec = KERNELS[kernel]
    inputs = spec.make_inputs(np.random.default_rng(3), np.dtype("float64"), STREAM, **variant)
    want = cupy_backend.IMPLEMENTATIONS[kernel](emulated, **copy.deepcopy(inputs))
    sums, dx, state, carry = _run_chunks(emulated, kernel, inputs, schedule)
    got = {**sums, "state": state, "carry": carry}
    if dx:
        got["x"] = np.concatenate(dx, axis=0)
    want = flatten_outputs(want)
    got = flatten_outputs(got)
    assert sorted(got) == sorted(want)
    assert any(k.startswith("carry.") for k in want) == (kernel.split(".")[1] not in ("truncated", "spatial"))
    for name, ref in want.items():
        err = rel_error(np.asarray(got[name]), ref)
        assert err <= 1e-10, f"{kernel} cut as {schedule}: {name} relative error {err:.2e}"


@needs_cxx
@pytest.mark.parametrize("kernel", [k for k in CARRIED if k.split(".")[1] in ("rtrl", "snap1", "cec", "fptt1",
                                                                             "fptt_warmup", "fptt_shooting")])
def test_emulated_sweeps_take_any_carry(emulated, kernel):
    """The traces carried in are used as they are, not only where they are reachable from fixed parameters (e.g. the
    lru's S_θ/S_ν ratio changes when an optimizer updates ν, θ between chunks; FPTT's Q, e, v', P need not come from
    one warm-up): a random carry, as the reference."""
    spec = KERNELS[kernel]
    inputs = spec.make_inputs(np.random.default_rng(5), np.dtype("float64"), STREAM, **spec.variants[0])
    rng = np.random.default_rng(6)
    carry = {}
    for name, S in inputs["carry"].items():
        carry[name] = rng.standard_normal(S.shape)
        if np.iscomplexobj(S):
            carry[name] = carry[name] + 1j * rng.standard_normal(S.shape)
    inputs["carry"] = carry
    _assert_matches(kernel, cupy_backend.IMPLEMENTATIONS[kernel](emulated, **copy.deepcopy(inputs)),
                    spec.reference(**copy.deepcopy(inputs)), "float64")


@needs_cxx
@pytest.mark.parametrize("kernel", ["rnn.rtrl", "lstm.snap1", "lru.rtrl", "gru.fptt1", "lstm.fptt_warmup",
                                    "rnn.fptt_shooting", "lru.fptt1", "lru.fptt_warmup", "lru.fptt_shooting"])
def test_emulated_kernels_refuse_a_carry_of_another_shape(emulated, kernel):
    """A carry from another batch size, or with a carrier missing, is refused with ShapeError (as the reference)."""
    spec = KERNELS[kernel]
    inputs = spec.make_inputs(np.random.default_rng(7), np.dtype("float64"), STREAM, **spec.variants[0])
    name = sorted(inputs["carry"])[0]
    wrong = {**inputs["carry"], name: inputs["carry"][name][:1]}               # batch 1 instead of 2
    with pytest.raises(ShapeError):
        cupy_backend.IMPLEMENTATIONS[kernel](emulated, **{**inputs, "carry": wrong})
    with pytest.raises(ShapeError):
        cupy_backend.IMPLEMENTATIONS[kernel](emulated, **{**inputs, "carry": {}})


#: FPTT's phases over a stream of T = 7 steps (lstm.fptt's registered T ≤ 7: docs/derivations/fptt.md §7).
FPTT_STREAM = dict(T=7, B=2, I=3, H=4)
FPTT_SCHEDULES = ((1,) * 7, (3, 4), (1, 5, 1))


def _warm_start(dev, cell, inputs, warmup, schedule):
    """e_{-1} from a warm-up kernel run over the stream cut as `schedule` from the stream's start (fptt.start_error:
    the direct warm-up's e, or −P v' from the shooting one's carry)."""
    from refimpl.algorithms.fptt import start_error
    kernel = f"{cell}.fptt_warmup" if warmup == "direct" else f"{cell}.fptt_shooting"
    _, _, _, warm = _run_chunks(dev, kernel, {**inputs, "carry": None}, schedule)
    assert set(warm) == ({"Q", "e"} if warmup == "direct" else {"v", "P"})
    return start_error(_fptt_cell(cell, inputs), warm)


def _fptt_cell(cell, inputs):
    """The reference's Cell of an FPTT kernel's inputs (I from x, H from dh, the dtype of x, the rnn's option)."""
    from refimpl.cells import resolve_cell
    options = {"nonlinearity": inputs["nonlinearity"]} if "nonlinearity" in inputs else {}
    return resolve_cell(cell, inputs["x"].shape[-1], inputs["dh"].shape[-1], inputs["x"].dtype.name, **options)


@needs_cxx
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm", "lru"])
@pytest.mark.parametrize("schedule", FPTT_SCHEDULES, ids=lambda s: "+".join(map(str, s)))
def test_emulated_fptt_phases_in_chunks_give_fptt(emulated, cell, schedule):
    """<cell>.fptt == the direct warm-up in chunks from the stream's start, e_{-1} = its e (fptt.start_error), then
    the error phase in chunks from {"v": e_{-1}}: the same gradients, x̄ and initial-state gradient (float64)."""
    spec = KERNELS[f"{cell}.fptt"]
    inputs = spec.make_inputs(np.random.default_rng(4), np.dtype("float64"), FPTT_STREAM)
    want = cupy_backend.IMPLEMENTATIONS[f"{cell}.fptt"](emulated, **copy.deepcopy(inputs))
    e_start = _warm_start(emulated, cell, inputs, "direct", schedule)
    sums, dx, _, _ = _run_chunks(emulated, f"{cell}.fptt1", {**inputs, "carry": {"v": e_start}}, schedule)
    keys = CELLS[cell].GRAD_STATE_KEYS
    got = {**sums, "x": np.concatenate(dx, axis=0),
           **dict(zip(keys, np.split(e_start, len(keys), axis=-1)))}
    assert sorted(got) == sorted(want)
    for name, ref in want.items():
        err = rel_error(np.asarray(got[name]), ref)
        assert err <= 1e-10, f"{cell} fptt in chunks {schedule}: {name} relative error {err:.2e}"


#: Largest relative difference of e_{-1} between the direct and the shooting warm-up on the registry's
#: well-conditioned FPTT inputs (float64 carriers): rounding, amplified by at most cond(P) for the shooting one
#: (observed ≤ 1.3e-14, the lstm; ≤ 7e-16 for rnn, gru, lru).
WARMUPS_AGREE = 1e-12


@needs_cxx
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm", "lru"])
@pytest.mark.parametrize("schedule", FPTT_SCHEDULES[:2], ids=lambda s: "+".join(map(str, s)))
def test_emulated_direct_and_shooting_warmups_agree(emulated, cell, schedule):
    """The direct warm-up (Q ← Q A_t, e ← e + Q d_t) and the shooting one (e' by inversion, e_{-1} = −P v') are two
    independent computations of e_{-1} = Σ_t J_0ᴴ⋯J_tᴴ dh_t: on a well-conditioned input they agree to rounding, and
    both agree with e_{-1} summed directly from BPTT's recursion (e_{T-1} = dh_{T-1}, e_{t-1} = dh_{t-1} + J_tᴴ e_t,
    e_{-1} = J_0ᴴ e_0) by the reference's Jacobians."""
    inputs = KERNELS[f"{cell}.fptt"].make_inputs(np.random.default_rng(8), np.dtype("float64"), FPTT_STREAM)
    direct = _warm_start(emulated, cell, inputs, "direct", schedule)
    shooting = _warm_start(emulated, cell, inputs, "shooting", schedule)
    assert np.all(np.isfinite(direct)) and np.linalg.norm(direct) > 0
    err = rel_error(shooting, direct)
    assert err <= WARMUPS_AGREE, f"{cell}: the warm-ups' e_-1 differ by {err:.2e}"
    c = _fptt_cell(cell, inputs)                                      # BPTT's recursion, backward in time
    params, state = inputs["params"], inputs[c.state_arg]
    JH, d = [], []
    for t in range(inputs["x"].shape[0]):
        J = c.module.state_jacobian(params, inputs["x"][t], state, **c.step_options)
        JH.append(np.conj(J) if c.diagonal else np.conj(np.swapaxes(J, -1, -2)))
        d.append(c.flatten_state(c.adjoint_from_h(inputs["dh"][t])))
        state, _ = c.module.step_forward(params, inputs["x"][t], state, **c.step_options)
    e = np.zeros_like(d[0])
    for t in reversed(range(len(d))):
        e = e + d[t]                                                  # e_t = dh_t + J_{t+1}ᴴ e_{t+1}
        e = JH[t] * e if c.diagonal else np.einsum("bij,bj->bi", JH[t], e)   # J_tᴴ e_t
    err = rel_error(direct, e)
    assert err <= WARMUPS_AGREE, f"{cell}: the direct warm-up's e_-1 is {err:.2e} off BPTT's"


# ------------------------------------------------------------------------------------------ (d) on the device

@pytest.mark.gpu
@pytest.mark.skipif(not GPU_OK, reason=f"backend cupy: {GPU_WHY}")
@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.name)
def test_nvrtc_compiles_every_instantiation(source):
    import cupy
    module = cupy.RawModule(code=source.nvrtc(), options=("-std=c++17",), name_expressions=source.name_expressions())
    for name in source.name_expressions():
        assert module.get_function(name) is not None


@pytest.mark.gpu
@pytest.mark.skipif(not GPU_OK, reason=f"backend cupy: {GPU_WHY}")
@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_kernels_take_and_return_cupy_arrays(kernel):
    import cupy
    spec = KERNELS[kernel]
    inputs = spec.make_inputs(np.random.default_rng(0), np.dtype("float32"), (spec.sizes or SIZES)[-1],
                              **spec.variants[0])
    outputs = flatten_outputs(cupy_backend.KERNELS[kernel](**_to_device(inputs)))
    assert all(isinstance(v, cupy.ndarray) for v in outputs.values())


def _to_device(inputs):
    from refimpl.registry import map_arrays
    return map_arrays(cupy_backend.to_backend, inputs)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU_OK, reason=f"backend cupy: {GPU_WHY}")
@pytest.mark.parametrize("chunks", [1, 2, 7, 64])
def test_device_chunked_scan_matches_reference(chunks):
    from backends.cupy.cells import lru_backward, lru_forward
    size = dict(T=64, B=3, I=4, H=37)
    fwd, bwd = KERNELS["lru.forward"], KERNELS["lru.backward"]
    inputs = fwd.make_inputs(np.random.default_rng(0), np.dtype("float64"), size)
    h_ref, cache_ref = fwd.reference(**inputs)
    dh = bwd.make_inputs(np.random.default_rng(1), np.dtype("float64"), size)["dh"]
    dev = cupy_backend.cuda_device()
    got = lru_forward(dev, **_to_device(inputs), chunks=chunks)
    _assert_matches("lru.forward", _to_numpy(got), (h_ref, cache_ref), "float64")
    got = lru_backward(dev, *_to_device((inputs["params"], dh, cache_ref)), chunks=chunks)
    _assert_matches("lru.backward", _to_numpy(got), bwd.reference(inputs["params"], dh, cache_ref), "float64")


def _to_numpy(outputs):
    from refimpl.registry import map_arrays
    return map_arrays(cupy_backend.to_numpy, outputs)


#: A size with many blocks per launch and H not a multiple of the warp (the registry grid's sizes fit in 2 blocks).
LARGE = dict(T=100, B=32, I=24, H=130)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU_OK, reason=f"backend cupy: {GPU_WHY}")
@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_device_parity_at_a_larger_size(kernel, dtype):
    from ..parity import assert_matches_reference
    spec = KERNELS[kernel]
    size = spec.sizes[-1] if spec.sizes else LARGE               # dense RTRL and FPTT keep their registered sizes
    for variant in spec.variants:
        assert_matches_reference(kernel, "cupy", dtype, size, 0, variant)


# ------------------------------------------------------------------------- (c') where the emulation is no longer blind

_RACY = CudaSource("racy", r"""
template <typename R>
RI_FN void racy_thread(long long idx, const R* x, R* y, R* z, int mode) {
    if (mode == 0) {                                    // well-behaved: each thread its own entries
        y[idx] = x[idx];
        z[idx] = R(2) * x[idx];
    } else if (mode == 1) {                             // two threads write one entry of y
        y[idx / 2] = x[idx];
        z[idx] = x[idx];
    } else {                                            // z reads the y that the previous thread writes
        y[idx] = x[idx];
        z[idx] = idx > 0 ? y[idx - 1] : R(0);
    }
}

template <typename R>
RI_FN void prefix_thread(long long idx, R* y) {         // y[idx] += y[idx - 1]: reads what another thread wrote
    if (idx > 0) y[idx] = y[idx] + y[idx - 1];
}
""", (Kernel("racy", (In("x", "R", "n"), Out("y", "R", "n"), Out("z", "R", "n"), Int("mode")), n="n"),
      Kernel("prefix", (InOut("y", "R", "n"),), n="n")))


@needs_cxx
def test_ownership_check_passes_independent_threads_and_catches_races(tmp_path):
    """Two threads writing one entry, a thread reading another's write-only output, and one reading another's in/out
    entry are refused by the ownership check, in any thread order; independent threads pass it."""
    dev = EmulatedDevice(build_dir=str(tmp_path), ownership=True)
    x = np.arange(1.0, 10.0)
    y, z = np.zeros(9), np.zeros(9)
    dev.launch(_RACY, "racy", np.float64, 9, x, y, z, 0)
    assert np.array_equal(y, x) and np.array_equal(z, 2 * x)
    with pytest.raises(RuntimeError, match="two threads write one location"):
        dev.launch(_RACY, "racy", np.float64, 9, x, y, z, 1)
    with pytest.raises(RuntimeError, match="depends on another thread's|reads what another thread writes"):
        dev.launch(_RACY, "racy", np.float64, 9, x, y, z, 2)
    with pytest.raises(RuntimeError, match="reads what another thread writes"):
        dev.launch(_RACY, "prefix", np.float64, 9, np.arange(9.0))
    for order in (0, 1, 2):                                           # without the check the race goes unseen …
        dev = EmulatedDevice(build_dir=str(tmp_path), order=order, seed=order)
        y = np.ones(9)
        dev.launch(_RACY, "prefix", np.float64, 9, y)
        ascending = order == 0
        assert np.array_equal(y, np.arange(1.0, 10.0)) == ascending   # … but the orders disagree on it


@needs_cxx
def test_shuffled_order_runs_every_thread_once(tmp_path):
    a = EmulatedDevice(build_dir=str(tmp_path), order=2, seed=1)
    orders = [a._order(50) for _ in range(2)]
    assert all(sorted(o) == list(range(50)) for o in orders) and not np.array_equal(*orders)
    with pytest.raises(UnsupportedError, match="thread order 3"):
        EmulatedDevice(build_dir=str(tmp_path), order=3)
    with pytest.raises(UnsupportedError, match="guard=True"):
        EmulatedDevice(build_dir=str(tmp_path), guard=False, ownership=True)


#: One size for the ownership check: B·H and B·N·I are not multiples of the warp, T is prime.
OWNERSHIP_SIZE = dict(T=5, B=3, I=4, H=7)


@needs_cxx
@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_emulated_launches_own_their_outputs(emulated, kernel):
    """Every launch of every kernel (shuffled thread order, float64): no two threads write one entry and no thread
    reads what another writes (the ownership check of EmulatedDevice), and the results still match the reference."""
    spec = KERNELS[kernel]
    dev = EmulatedDevice(build_dir=emulated.build_dir, order=2, seed=7, ownership=True)
    size = spec.sizes[-1] if spec.sizes else OWNERSHIP_SIZE
    for variant in spec.variants:
        inputs = spec.make_inputs(np.random.default_rng(2), np.dtype("float64"), size, **variant)
        want = spec.reference(**copy.deepcopy(inputs))
        _assert_matches(kernel, cupy_backend.IMPLEMENTATIONS[kernel](dev, **inputs), want, "float64")


_SHARING = CudaSource("sharing", r"""
template <typename R>
RI_FN void sum_thread(long long idx, const R* x, R* y) {
    __shared__ R partial[256];                           // not the thread model: threads share a block's memory
    partial[threadIdx.x] = x[idx];
    __syncthreads();
    y[idx] = partial[0];
}
""", (Kernel("sum", (In("x", "R", "n"), Out("y", "R", "n")), n="n"),))


def test_every_source_keeps_to_the_thread_model():
    """No source uses what threads share (shared memory, barriers, atomics, warp operations, thread coordinates):
    the emulation's one-thread-after-another is then what the device computes. A source that does is named."""
    from backends.cupy.runtime import thread_model_violations
    assert {s.name: thread_model_violations(s) for s in SOURCES} == {s.name: [] for s in SOURCES}
    found = thread_model_violations(_SHARING)
    assert [f.split(": ")[1].split(" ")[0] for f in found] == ["__shared__", "threadIdx", "__syncthreads"]
    assert found[0].startswith("line 4: __shared__ (shared memory)")


@needs_cxx
def test_the_emulation_refuses_a_source_that_shares_state(tmp_path):
    with pytest.raises(UnsupportedError, match="uses what threads share.*__syncthreads"):
        EmulatedDevice(build_dir=str(tmp_path)).build(_SHARING)


#: The GPU check's shapes (docs/backends.md): B = 64, I = 128, H = N = 512. T = 1 here: a launch's thread count does
#: not depend on T (the lru's scan runs C = 1 chunk whenever B·N ≥ SCAN_THREADS), its arrays do (the slow test below).
GOAL_SHAPE = dict(T=1024, B=64, I=128, H=512)


def _record_launches(kernel, size, emulated_dir):
    from backends.cupy.runtime import DryDevice, RecordingDevice
    import warnings
    spec = KERNELS[kernel]
    inner = DryDevice() if spec.sizes is None else EmulatedDevice(build_dir=emulated_dir, guard=False)
    dev = RecordingDevice(inner)
    for variant in spec.variants:
        inputs = spec.make_inputs(np.random.default_rng(0), np.dtype("float32"), size if spec.sizes is None
                                  else spec.sizes[-1], **variant)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")                            # a dry run's outputs are a constant
            cupy_backend.IMPLEMENTATIONS[kernel](dev, **inputs)
    return dev.launches


def _assert_launches_fit(T, emulated_dir):
    from backends.cupy.runtime import LAUNCH_LIMITS
    seen = 0
    for kernel in sorted(k for k in KERNELS if not k.startswith("ep.")):           # ep's kernels launch none
        records = _record_launches(kernel, {**GOAL_SHAPE, "T": T}, emulated_dir)
        assert all(r.problems() == [] for r in records), [p for r in records for p in r.problems()]
        assert all(r.block == runtime.BLOCK and r.grid * r.block >= r.n and r.shared_bytes == 0 for r in records)
        seen += len(records)
        if kernel == "lru.rtrl":                                       # the largest launch: one thread per (b, k, i)
            assert max(r.n for r in records) == 64 * 512 * 128
    assert seen > 0 and LAUNCH_LIMITS["threads_per_block"] == 1024


@needs_cxx
def test_launches_fit_the_device_at_the_goal_shapes(emulated):
    """Every launch of every kernel at the GPU check's shapes (the dense sweeps at their registered sizes): at most
    1024 threads per block in whole warps, a 1-D grid within 2³¹ − 1 blocks, no shared memory, a parameter block
    within 4 KiB, every array indexable by a 32-bit offset. (Recorded on a DryDevice: no thread runs.)"""
    _assert_launches_fit(1, emulated.build_dir)
    too_big = runtime.LaunchRecord("s", "k", "float", 1, 1, 2048, 64 * 1024, 8, 2 ** 31)
    assert len(too_big.problems()) == 3


@pytest.mark.slow
@needs_cxx
def test_launches_fit_the_device_at_the_goal_shapes_whole_length(emulated):
    _assert_launches_fit(GOAL_SHAPE["T"], emulated.build_dir)
