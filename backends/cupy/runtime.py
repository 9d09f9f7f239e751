r"""The CuPy backend's runtime: everything a kernel launch needs around the CUDA sources, and where the kernels run.

Host-side logic, importable and testable WITHOUT CuPy or a GPU:

    dtype dispatch      real_ctype(dtype) → "float" | "double", the template argument of every CUDA kernel;
                        float32/complex64 → float, float64/complex128 → double; anything else is a DTypeError.
    launch config       launch_config(n) → (grid, block): one thread per work item (a (b, k) pair, a (b, k, i)
                        triple, …), BLOCK threads per block, ceil(n / BLOCK) blocks (n = 0 launches nothing).
    scan chunking       scan_chunks(T, B, N) → C: how many time chunks the LRU's linear scan runs in parallel.
    kernel declarations Kernel / Arg: each CUDA kernel's parameter list, declared once in Python. From it come the
                        __global__ wrapper's C signature (sources.py holds only the per-thread bodies), the explicit
                        template instantiations of a standalone nvcc compile, the extern "C" loops of the CPU
                        emulation, and check_args, which refuses a launch whose arrays do not match the declaration
                        (dtype, C-contiguity, number of elements) before anything reaches the device.
    device probe        classify_probe(…) → (ok, reason): "no CUDA device answers" / "driver too old".

The devices. Every kernel implementation of this package (cells.py, online_dense.py, online_lru.py, fptt_dense.py,
ep.py) takes a device first and uses only

    dev.xp                                  the array module: cupy (CudaDevice) or numpy (EmulatedDevice)
    dev.launch(source, kernel, dtype, n, *args)
                                            run n threads of a CUDA kernel of sources.py, instantiated for the real
                                            type of `dtype`, on arrays of dev.xp (arguments checked by check_args
                                            before anything runs)

so one implementation serves both. The registered kernels (__init__.KERNELS) run on CudaDevice. EmulatedDevice exists
for testing without a GPU: it compiles each source's thread bodies as plain C++ (CudaSource.emulation) with the host
C++ compiler and runs the n threads one after the other (order 0: ascending, 1: descending, 2: shuffled — the kernels'
threads are independent, so every order must give the same result; ownership=True also splits the threads by every bit
of idx and runs each half alone, which refuses two threads writing one entry or one reading what another writes);
GEMMs are NumPy's. It checks everything but the device itself: the kernels' arithmetic and indexing, the host
wrappers, argument order and types, and the dtype dispatch. What it cannot check: NVRTC compilation (the nvcc compile
check stands in), the grid/block launch (RecordingDevice records every launch; LaunchRecord.problems checks it against
LAUNCH_LIMITS), real concurrency, CuPy's own array functions, and device arithmetic (FMA contraction, CUDA's tanh/exp,
cuBLAS summation order). A source whose bodies use shared memory, barriers, atomics or warp operations is refused
(thread_model_violations): sequential threads would not compute what the device does.

Launch model (every kernel of this backend): a 1-D grid of n threads; thread idx runs `<name>_thread<R>(idx, …)`,
which owns the output entries it writes (no two threads write one location, no shared memory, no atomics). So the
threads are independent, and the CPU emulation that runs them one after the other, in any order, computes what the
device computes (up to floating-point contraction: nvcc/NVRTC fuse a*b+c into FMAs, g++ on x86-64 does not).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

import numpy as np

from refimpl.errors import DTypeError, ShapeError, UnsupportedError

#: Threads per block. 256 is a multiple of the warp size (32) and keeps 8 blocks per SM resident on sm_80/sm_90.
BLOCK = 256

#: The real types every kernel is instantiated for, and their NumPy dtypes.
CTYPES = {"float": np.dtype(np.float32), "double": np.dtype(np.float64)}
_CTYPE_OF = {np.dtype(np.float32): "float", np.dtype(np.complex64): "float",
             np.dtype(np.float64): "double", np.dtype(np.complex128): "double"}


# ------------------------------------------------------------------------------------------------------ dtype dispatch

def real_ctype(dtype) -> str:
    """The template argument R ("float" or "double") for arrays of `dtype` (real, or complex as (re, im) pairs)."""
    dt = np.dtype(dtype)
    if dt not in _CTYPE_OF:
        raise DTypeError(f"the CuPy backend has no kernels for dtype {dt}; allowed: float32, float64 (complex64, "
                         f"complex128 for the lru state); cast the inputs, e.g. x.astype('float32')")
    return _CTYPE_OF[dt]


def real_dtype(dtype) -> np.dtype:
    """float32 for float32/complex64, float64 for float64/complex128."""
    return CTYPES[real_ctype(dtype)]


def complex_dtype(dtype) -> np.dtype:
    """complex64 for float32/complex64, complex128 for float64/complex128."""
    return np.result_type(real_dtype(dtype), np.complex64)


def contiguous(xp, a, dtype):
    """A C-contiguous array of `dtype` in the array module xp (no copy when `a` already is one; kernels never write
    to it)."""
    return xp.ascontiguousarray(a, dtype=dtype)


def instantiation(kernel: str, dtype) -> str:
    """The name expression of a kernel's instantiation, e.g. instantiation("gru_fwd_step", float32) →
    "gru_fwd_step<float>" (what cupy.RawModule(name_expressions=…).get_function takes)."""
    return f"{kernel}<{real_ctype(dtype)}>"


# ------------------------------------------------------------------------------------------------------ launch config

def launch_config(n: int, block: int = BLOCK) -> tuple[int, int]:
    """(grid, block) for n independent threads: ceil(n / block) blocks of `block` threads; (0, block) when n = 0.

    The kernels guard `idx < n`, so the last block may be partial. n must fit the grid limit (2³¹ − 1 blocks).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ShapeError(f"a kernel launch needs a thread count n ≥ 0, got {n!r}")
    if not isinstance(block, (int, np.integer)) or not 1 <= block <= 1024 or block % 32:
        raise UnsupportedError(f"block size {block!r} is invalid: use a multiple of 32 between 32 and 1024 "
                               f"(default {BLOCK})")
    grid = (int(n) + block - 1) // block
    if grid > 2 ** 31 - 1:
        raise ShapeError(f"{n} threads need {grid} blocks of {block}, more than a CUDA grid holds (2³¹ − 1); "
                         f"split the batch")
    return grid, int(block)


#: The LRU scan runs one thread per (b, k) when B·N alone fills the device (about 2 waves of threads on a 132-SM
#: H100: 132 · 2048 = 270k resident threads; 32k threads already saturate the memory bandwidth of a linear scan).
SCAN_THREADS = 1 << 15
#: A chunk shorter than this does not pay for the scan's second pass over memory.
SCAN_MIN_CHUNK = 16


def scan_chunks(T: int, B: int, N: int, threads: int = SCAN_THREADS, min_chunk: int = SCAN_MIN_CHUNK) -> int:
    """C, the number of time chunks of the LRU's linear scan y_t = a ⊙ y_{t-1} + v_t (sources.py, lru_scan_*).

    C = 1 is the sequential scan: one thread per (b, k) marches over all T steps. With B·N < `threads` the device is
    under-filled, and C > 1 chunks of ≥ `min_chunk` steps run in parallel (C·B·N threads), at the price of a second
    pass over y. Returns the number of NON-EMPTY chunks of length ceil(T / C), so 1 ≤ C ≤ T.
    """
    for name, v in (("T", T), ("B", B), ("N", N)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ShapeError(f"scan size {name}={v!r} must be a positive integer")
    want = max(1, min(-(-threads // (B * N)), T // min_chunk))
    L = -(-T // want)                          # chunk length
    return -(-T // L)                          # chunks that are not empty


def chunk_length(T: int, C: int) -> int:
    """The length L = ceil(T / C) of every chunk but the last (which has T − (C − 1)·L ≥ 1 steps)."""
    L = -(-T // C)
    if C < 1 or (C - 1) * L >= T:
        raise ShapeError(f"{C} chunks of {T} steps leave an empty chunk; use scan_chunks(T, B, N)")
    return L


# ------------------------------------------------------------------------------------------------ kernel declarations

#: Argument kinds. Arrays are passed as raw pointers; their element type in C:
#:   R  real, of the template type R                     (NumPy: float32 for R = float, float64 for R = double)
#:   C  complex as interleaved (re, im) pairs of R      (complex64/complex128, or an R array of 2·size entries)
#:   D  double whatever R is (float64 accumulators)
#:   Z  complex pairs of double (complex128, or float64 of 2·size entries)
#: Scalars: int (C int, np.int32), real (R).
ARRAY_KINDS = ("R", "C", "D", "Z")
SCALAR_KINDS = ("int", "real")


@dataclass(frozen=True)
class Arg:
    """One kernel parameter. kind: ARRAY_KINDS or SCALAR_KINDS; out: written by the kernel (arrays only); reads: an
    output whose old values the kernel reads too (in/out); size: the number of elements (pairs for C, Z) as an
    expression in n and the kernel's int parameters."""
    name: str
    kind: str
    out: bool = False
    size: str = ""
    reads: bool = True

    def __post_init__(self):
        if self.kind not in ARRAY_KINDS + SCALAR_KINDS:
            raise ValueError(f"argument {self.name}: unknown kind {self.kind!r}")
        if self.kind in ARRAY_KINDS and not self.size:
            raise ValueError(f"array argument {self.name} needs a size expression")

    def c_decl(self, R: str) -> str:
        if self.kind == "int":
            return f"int {self.name}"
        if self.kind == "real":
            return f"{R} {self.name}"
        base = R if self.kind in ("R", "C") else "double"
        return f"{'' if self.out else 'const '}{base}* __restrict__ {self.name}"

    def ctypes_kind(self) -> str:
        return {"int": "int", "real": "real"}.get(self.kind, "pointer")


def In(name, kind, size):           # noqa: N802  (reads like the declaration it is)
    return Arg(name, kind, False, size)


def Out(name, kind, size):          # noqa: N802  (written before it is read: old contents are not used)
    return Arg(name, kind, True, size, reads=False)


def InOut(name, kind, size):        # noqa: N802  (read, then overwritten)
    return Arg(name, kind, True, size)


def Int(name):                      # noqa: N802
    return Arg(name, "int")


def Real(name):                     # noqa: N802
    return Arg(name, "real")


@dataclass(frozen=True)
class Kernel:
    """A CUDA kernel of this backend: its per-thread body is `<name>_thread<R>(long long idx, args…)` in the
    source's body; this declaration generates the rest. n: what one thread stands for (documentation)."""
    name: str
    args: tuple
    n: str
    doc: str = ""

    def c_params(self, R: str) -> str:
        return ", ".join(["long long n"] + [a.c_decl(R) for a in self.args])

    def c_call(self) -> str:
        return ", ".join(["idx"] + [a.name for a in self.args])

    def global_wrapper(self) -> str:
        return (f"template <typename R>\n__global__ void {self.name}({self.c_params('R')}) {{\n"
                f"    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;\n"
                f"    if (idx < n) {self.name}_thread<R>({self.c_call()});\n}}\n")

    def explicit_instantiations(self) -> str:
        return "".join(f"template __global__ void {self.name}<{R}>({self.c_params(R)});\n" for R in CTYPES)

    def emulation_loops(self) -> str:
        """extern "C" host loops over the threads: threads[0 .. count) in that order, or 0 .. n − 1 ascending when
        `threads` is NULL (the emulation's thread orders and subsets, EmulatedDevice)."""
        out = []
        for R in CTYPES:
            call = f"{self.name}_thread<{R}>({self.c_call()});"
            out.append(
                f'extern "C" void ri_emulate_{self.name}_{R}(const long long* threads, long long count, '
                f"{self.c_params(R)}) {{\n"
                f"    for (long long j = 0; j < count; ++j) {{\n"
                f"        const long long idx = threads ? threads[j] : j;\n"
                f"        {call}\n"
                f"    }}\n"
                f"}}\n")
        return "".join(out)


#: Code every source starts with: the host/device qualifiers and the few math functions, overloaded for float and
#: double. Device code uses the CUDA built-ins (no header: NVRTC has none); the CPU emulation uses <cmath>.
PRELUDE = r"""
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define RI_FN __host__ __device__ __forceinline__
#else
#include <cmath>
#define RI_FN inline
#endif

RI_FN float ri_tanh(float a) { return tanhf(a); }
RI_FN double ri_tanh(double a) { return tanh(a); }
RI_FN float ri_exp(float a) { return expf(a); }
RI_FN double ri_exp(double a) { return exp(a); }
// sigma(a) = 1/(1 + e^-a) written as (1 + tanh(a/2))/2, as the reference's refimpl/cells/common.py sigmoid
template <typename R> RI_FN R ri_sigmoid(R a) { return R(0.5) * (R(1) + ri_tanh(R(0.5) * a)); }
"""


@dataclass(frozen=True)
class CudaSource:
    """One CUDA translation unit: the per-thread bodies (`body`, plain CUDA C++, no includes) and the declarations
    of its kernels. It compiles standalone with nvcc (standalone()), through NVRTC (nvrtc() + name_expressions()),
    and as plain C++ on the host for the emulation (emulation())."""
    name: str
    body: str
    kernels: tuple = field(default_factory=tuple)

    def kernel(self, name: str) -> Kernel:
        for k in self.kernels:
            if k.name == name:
                return k
        raise KeyError(f"source {self.name!r} has no kernel {name!r}")

    def nvrtc(self) -> str:
        """What cupy.RawModule compiles (instantiated through name_expressions)."""
        return PRELUDE + self.body + "\n" + "\n".join(k.global_wrapper() for k in self.kernels)

    def name_expressions(self) -> list[str]:
        return [f"{k.name}<{R}>" for k in self.kernels for R in CTYPES]

    def standalone(self) -> str:
        """The NVRTC source plus explicit instantiations, for `nvcc -std=c++17 --ptx` (the compile check)."""
        return self.nvrtc() + "\n" + "".join(k.explicit_instantiations() for k in self.kernels)

    def emulation(self) -> str:
        """The bodies as plain C++ with extern "C" loops over the threads (EmulatedDevice builds it with a C++
        compiler)."""
        return PRELUDE + self.body + "\n" + "".join(k.emulation_loops() for k in self.kernels)


# ---------------------------------------------------------------------------------------------------- argument checks

@functools.lru_cache(maxsize=None)
def _compiled(expr: str):
    return compile(expr, f"<size {expr}>", "eval")


def _evaluate(expr: str, env: dict) -> int:
    """Evaluate a size expression such as "3*n" or "B*N*2" over the kernel's int parameters (no builtins)."""
    return int(eval(_compiled(expr), {"__builtins__": {}}, env))    # noqa: S307  expressions from our declarations


def check_args(kernel: Kernel, dtype, n: int, args: tuple) -> list:
    """Validate one launch of `kernel` for real type `dtype` with `n` threads and `args` (in declaration order).

    Arrays (NumPy or CuPy) must have the declared element type, be C-contiguous and hold exactly the declared number
    of elements; ints must fit a C int; an output may not overlap another array argument (the pointers are
    __restrict__). Returns the arguments as (kind, value) pairs with scalars converted to the NumPy scalar types the C
    signature has (np.int32, R) — what a CuPy RawKernel and ctypes both need. Raises ShapeError / DTypeError naming
    the kernel and the argument.
    """
    R = real_dtype(dtype)
    F64 = np.dtype(np.float64)
    element = {"R": (R, None), "C": (R, complex_dtype(dtype)), "D": (F64, None), "Z": (F64, np.dtype(np.complex128))}
    if len(args) != len(kernel.args):
        raise ShapeError(f"kernel {kernel.name} takes {len(kernel.args)} arguments "
                         f"({', '.join(a.name for a in kernel.args)}), got {len(args)}")
    env = {"n": int(n)}
    for a, v in zip(kernel.args, args):
        if a.kind == "int":
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not -2 ** 31 <= int(v) < 2 ** 31:
                raise ShapeError(f"kernel {kernel.name}: int argument {a.name}={v!r} does not fit a C int")
            env[a.name] = int(v)

    def where(a):
        return f"kernel {kernel.name}<{real_ctype(dtype)}>, argument {a.name}"

    out, arrays = [], []
    for a, v in zip(kernel.args, args):
        if a.kind == "int":
            out.append((a.kind, np.int32(v)))
            continue
        if a.kind == "real":
            out.append((a.kind, R.type(v)))
            continue
        if not (hasattr(v, "dtype") and hasattr(v, "flags") and hasattr(v, "size")):
            raise DTypeError(f"{where(a)}: expected an array, got {type(v).__name__}")
        base, paired = element[a.kind]
        if v.dtype == base:
            size = v.size if paired is None else v.size // 2
            if paired is not None and v.size % 2:
                raise ShapeError(f"{where(a)}: a real array standing for complex pairs needs an even size, "
                                 f"got {v.size}")
        elif paired is not None and v.dtype == paired:
            size = v.size
        else:
            allowed = f"{base}" + (f" or {paired}" if paired is not None else "")
            raise DTypeError(f"{where(a)}: dtype {v.dtype}, expected {allowed}")
        if not v.flags.c_contiguous:
            raise ShapeError(f"{where(a)}: the array must be C-contiguous (pass xp.ascontiguousarray(…))")
        want = _evaluate(a.size, env)
        if size != want:
            raise ShapeError(f"{where(a)}: {size} elements, expected {a.size} = {want} (n={n}, "
                             f"{', '.join(f'{k}={v}' for k, v in env.items() if k != 'n')})")
        out.append((a.kind, v))
        arrays.append((a, v))
    _check_aliasing(kernel, arrays)
    return out


def _span(a) -> tuple[int, int]:
    """[first byte, last byte + 1) of a C-contiguous NumPy or CuPy array."""
    ptr = getattr(a.data, "ptr", None)                       # cupy: a.data is a MemoryPointer
    start = int(ptr) if ptr is not None else a.__array_interface__["data"][0]
    return start, start + a.nbytes


def _check_aliasing(kernel: Kernel, arrays: list) -> None:
    """Pointers are __restrict__: an output may not overlap any other array argument."""
    spans = [(a, _span(v)) for a, v in arrays if v.size]
    for a, (s0, e0) in spans:
        if not a.out:
            continue
        for b, (s1, e1) in spans:
            if b is not a and s0 < e1 and s1 < e0:
                raise ShapeError(f"kernel {kernel.name}: arguments {a.name} and {b.name} overlap in memory; the "
                                 f"kernel's pointers are __restrict__ (an output must not alias another argument): "
                                 f"pass a copy")


# ------------------------------------------------------------------------------------------------------ device probe

INSTALL_HINT = "install it (pip install -e '.[cuda12]' or '.[cuda13]')"


def cuda_version(v: int) -> str:
    """CUDA's integer version (1000·major + 10·minor, e.g. 12090) as "12.9"."""
    return f"{v // 1000}.{(v % 1000) // 10}"


def classify_probe(device_count: int | None, error: BaseException | None, driver: int, runtime: int) -> tuple:
    """(available, reason) from the device probe of available().

    device_count: cupy.cuda.runtime.getDeviceCount(), or None when it raised `error`; driver: driverGetVersion()
    (0 when no driver is installed); runtime: runtimeGetVersion() (the CUDA version the CuPy wheel was built for).
    A driver whose CUDA major version is older than the runtime's cannot run the wheel (minor versions are
    compatible: CUDA minor-version compatibility).
    """
    if driver and runtime and driver // 1000 < runtime // 1000:
        return False, (f"driver too old: the NVIDIA driver supports CUDA {cuda_version(driver)}, this CuPy was "
                       f"built for CUDA {cuda_version(runtime)}; update the driver, or install the CuPy wheel of the "
                       f"driver's CUDA major version (extras cuda12 → cupy-cuda12x, cuda13 → cupy-cuda13x)")
    if device_count is None:
        detail = f"{type(error).__name__}: {error}" if error is not None else "the probe failed"
        if not driver:
            detail += " (no NVIDIA driver is installed)"
        return False, f"no CUDA device answers: {detail}"
    if device_count < 1:
        return False, "no CUDA device answers: getDeviceCount() = 0"
    return True, ""


# ------------------------------------------------------------------------------------------------------------ devices

class CudaDevice:
    """Kernels on the current CUDA device: cupy arrays, cupy.RawModule (NVRTC) compiled once per source.

    xp: the cupy module (default: import it); a stand-in with the same RawModule interface lets the launch path be
    tested without a GPU.
    """

    name = "cuda"

    def __init__(self, xp=None):
        if xp is None:
            import cupy as xp                                  # the device is touched only when a kernel runs
        self.xp = xp
        self._modules: dict[str, object] = {}
        self._functions: dict[tuple, object] = {}

    def _function(self, source: CudaSource, kernel: str, dtype):
        key = (source.name, instantiation(kernel, dtype))
        if key not in self._functions:
            if source.name not in self._modules:
                self._modules[source.name] = self.xp.RawModule(code=source.nvrtc(), options=("-std=c++17",),
                                                               name_expressions=source.name_expressions())
            self._functions[key] = self._modules[source.name].get_function(key[1])
        return self._functions[key]

    def launch(self, source: CudaSource, kernel: str, dtype, n: int, *args) -> None:
        checked = check_args(source.kernel(kernel), dtype, n, args)
        grid, block = launch_config(n)
        if grid == 0:
            return
        self._function(source, kernel, dtype)((grid,), (block,), (np.int64(n),) + tuple(v for _, v in checked))


def find_compiler() -> str | None:
    """The host C++ compiler for the emulation: $CXX, else c++, g++ or clang++ on PATH; None if there is none."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


#: What a thread body may not use: the emulation runs threads one after the other, which is what the device computes
#: only when they share nothing (Launch model above). A source using any of these is refused by EmulatedDevice.build
#: (and by the test of the thread model): shared memory, barriers, atomics, warp-level operations and the raw thread
#: coordinates (a body sees only its idx).
SHARED_STATE_CONSTRUCTS = {
    "__shared__": "shared memory", "__syncthreads": "a block barrier", "__syncwarp": "a warp barrier",
    "atomic": "an atomic operation", "__shfl": "a warp shuffle", "__ballot": "a warp vote", "__any_sync": "a warp vote",
    "__all_sync": "a warp vote", "__threadfence": "a memory fence", "cooperative_groups": "cooperative groups",
    "threadIdx": "the thread coordinates", "blockIdx": "the block coordinates", "blockDim": "the block size",
    "gridDim": "the grid size",
}


def _strip_comments(code: str) -> str:
    code = re.sub(r"/\*.*?\*/", " ", code, flags=re.S)
    return re.sub(r"//[^\n]*", " ", code)


def thread_model_violations(source: CudaSource) -> list[str]:
    """What in `source`'s thread bodies breaks the launch model (one independent thread per idx), e.g.
    ["line 12: __syncthreads (a block barrier)"]; [] when nothing does. Comments are not code."""
    found = []
    for number, line in enumerate(_strip_comments(source.body).splitlines(), 1):
        for word, what in SHARED_STATE_CONSTRUCTS.items():
            if re.search(rf"\b{word}", line):
                found.append(f"line {number}: {word} ({what})")
    return found


# --------------------------------------------------------------------------------------------------- launch bounds

#: The limits of one launch on the devices this backend targets (compute capability 8.0-9.0: A100, H100, H200):
#: threads per block, blocks in x of a 1-D grid, static shared memory per block (more needs an opt-in attribute),
#: bytes of kernel parameters (4 KiB before CUDA 12.1), and the largest array a 32-bit offset can index.
LAUNCH_LIMITS = {"threads_per_block": 1024, "grid_x": 2 ** 31 - 1, "static_shared_bytes": 48 * 1024,
                 "param_bytes": 4096, "array_elements_int32": 2 ** 31 - 1}


@dataclass(frozen=True)
class LaunchRecord:
    """One kernel launch as the device would see it. shared_bytes: static shared memory of the kernel (0: the thread
    model has none, thread_model_violations); param_bytes: its parameter block (n, pointers, ints, reals, aligned);
    largest_array: the most real entries of one array argument (a complex entry counts 2)."""
    source: str
    kernel: str
    ctype: str
    n: int
    grid: int
    block: int
    shared_bytes: int
    param_bytes: int
    largest_array: int

    def problems(self, limits: dict = LAUNCH_LIMITS) -> list[str]:
        """What of this launch exceeds `limits` (LAUNCH_LIMITS), one line each; [] when it fits."""
        checks = (("threads per block", self.block, limits["threads_per_block"]),
                  ("blocks in x", self.grid, limits["grid_x"]),
                  ("static shared memory bytes", self.shared_bytes, limits["static_shared_bytes"]),
                  ("parameter bytes", self.param_bytes, limits["param_bytes"]),
                  ("entries of one array (a 32-bit offset)", self.largest_array, limits["array_elements_int32"]))
        out = [f"{self.kernel}<{self.ctype}> n={self.n}: {what} {got} > {most}" for what, got, most in checks
               if got > most]
        if self.block % 32:
            out.append(f"{self.kernel}<{self.ctype}> n={self.n}: block of {self.block} threads is not whole warps")
        return out


def launch_record(source: CudaSource, kernel: str, dtype, n: int, checked: list) -> LaunchRecord:
    """The LaunchRecord of a launch whose arguments check_args accepted (`checked`: its (kind, value) pairs)."""
    grid, block = launch_config(n)
    real = CTYPES[real_ctype(dtype)].itemsize
    offset, largest = 8, 0                                                # long long n
    for kind, v in checked:
        size = {"int": 4, "real": real}.get(kind, 8)                       # arrays are pointers
        offset = -(-offset // size) * size + size
        if kind in ARRAY_KINDS:
            largest = max(largest, int(v.size) * (2 if np.iscomplexobj(v) else 1))
    return LaunchRecord(source.name, kernel, real_ctype(dtype), int(n), grid, block, 0, offset, largest)


class RecordingDevice:
    """A device that hands every launch on to `inner` (a CudaDevice, an EmulatedDevice or a DryDevice) and, while
    `active`, records it (LaunchRecord, in .launches; recording checks the arguments once more: keep it off while
    timing)."""

    def __init__(self, inner, active: bool = True):
        self.inner = inner
        self.xp = inner.xp
        self.name = f"recording {inner.name}"
        self.active = active
        self.launches: list[LaunchRecord] = []

    def launch(self, source: CudaSource, kernel: str, dtype, n: int, *args) -> None:
        if self.active:
            checked = check_args(source.kernel(kernel), dtype, n, args)
            self.launches.append(launch_record(source, kernel, dtype, n, checked))
        self.inner.launch(source, kernel, dtype, n, *args)


class DryDevice:
    """NumPy arrays, launches checked (check_args, launch_config) but no thread run: every write-only output is filled
    with `fill`, in/out arrays keep their values. For recording the launches of a kernel at shapes too large to
    emulate (with RecordingDevice); its outputs mean nothing."""

    name = "dry"
    xp = np

    def __init__(self, fill: float = 0.25):
        self.fill = fill

    def launch(self, source: CudaSource, kernel: str, dtype, n: int, *args) -> None:
        decl = source.kernel(kernel)
        checked = check_args(decl, dtype, n, args)
        launch_config(n)
        for a, (kind, v) in zip(decl.args, checked):
            if a.out and not a.reads:
                v[...] = self.fill


class EmulatedDevice:
    """The CUDA kernels' thread bodies compiled for the CPU and run thread by thread, on NumPy arrays (see the module
    docstring for what this does and does not check).

    order: the order the threads of a launch run in: 0 ascending, 1 descending, 2 shuffled (a fresh permutation per
    launch, from `seed`). Independent threads give bit-identical results in every order.

    guard (default on): every array argument is handed to the kernel inside a copy padded with GUARD NaNs on each
    side; a kernel that writes outside its array changes the padding (→ RuntimeError naming kernel and argument), one
    that reads outside it reads NaN, which surfaces in the parity checks. Write-only outputs (launch.Out) start as NaN,
    as uninitialised device memory would hold garbage: an entry the kernel fails to write stays NaN.

    ownership (default off; costs about 2·log2(n) extra runs of half the threads per launch): after each launch, the
    threads are split in two by every bit of idx (bit b = 0 / 1; any two threads fall apart in at least one split) and
    each half is run alone from the launch's inputs. It refuses (RuntimeError) a launch where
      - two threads write one entry (both halves of a split write it: a write-write race on the device),
      - a thread's writes depend on another thread's (a half alone writes other values, or fails to write an entry
        the whole launch writes: a thread read what another one wrote, whose order the device does not define).
    What it cannot see: a write of the value the entry already held (an in/out entry) or of NaN, and races that only
    a real scheduler produces (there is no concurrency here: see the module docstring).
    """

    name = "emulation"
    xp = np
    GUARD = 64

    def __init__(self, build_dir: str | None = None, order: int = 0, compiler: str | None = None,
                 guard: bool = True, ownership: bool = False, seed: int = 0):
        self.guard = bool(guard)
        self.ownership = bool(ownership)
        if self.ownership and not self.guard:
            raise UnsupportedError("the ownership check runs the threads on guarded copies of the arguments: use "
                                   "guard=True with ownership=True")
        self.compiler = compiler or find_compiler()
        if self.compiler is None:
            raise UnsupportedError("the CPU emulation of the CUDA kernels needs a C++ compiler (c++, g++ or clang++ "
                                   "on PATH, or $CXX); install one, e.g. apt-get install g++")
        if order not in (0, 1, 2):
            raise UnsupportedError(f"thread order {order!r} is unknown; use 0 (ascending), 1 (descending) or 2 "
                                   f"(shuffled)")
        self.build_dir = build_dir or tempfile.mkdtemp(prefix="refimpl-cuda-emulation-")
        self.order = int(order)
        self._rng = np.random.default_rng(seed)
        self._libs: dict[str, ctypes.CDLL] = {}

    def build(self, source: CudaSource) -> str:
        """Compile `source`'s emulation into a shared library (once per source text); returns its path. A source
        whose threads share state (thread_model_violations) is refused: running its threads one after the other
        would not compute what the device computes."""
        violations = thread_model_violations(source)
        if violations:
            raise UnsupportedError(f"source {source.name} uses what threads share ({'; '.join(violations)}); the CPU "
                                   f"emulation runs one independent thread per idx and cannot check it: keep every "
                                   f"thread on its own entries, or test the kernel on a GPU only")
        text = source.emulation()
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        lib = os.path.join(self.build_dir, f"{source.name}-{digest}.so")
        if not os.path.exists(lib):
            src = os.path.join(self.build_dir, f"{source.name}-{digest}.cpp")
            with open(src, "w", encoding="utf-8") as f:
                f.write(text)
            cmd = [self.compiler, "-std=c++17", "-O2", "-shared", "-fPIC", "-Wall", "-Werror", src, "-o", lib + ".tmp"]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"emulation build of {source.name} failed:\n{done.stderr}")
            os.replace(lib + ".tmp", lib)
        return lib

    def _lib(self, source: CudaSource) -> ctypes.CDLL:
        if source.name not in self._libs:
            self._libs[source.name] = ctypes.CDLL(self.build(source))
        return self._libs[source.name]

    def _order(self, n: int):
        """The launch's threads in the order they run: None (ascending), or an int64 array."""
        if self.order == 0:
            return None
        if self.order == 1:
            return np.arange(n - 1, -1, -1, dtype=np.int64)
        return self._rng.permutation(n).astype(np.int64)

    def _run(self, fn, decl: Kernel, checked: list, dtype, n: int, threads, padded: bool) -> list:
        """Run `threads` (None: 0 … n − 1) of one launch. padded: hand every array over in a NaN-guarded copy (write-
        only outputs NaN inside too), checked for writes outside it; else the arrays themselves. Returns
        [(argument, array, what the kernel saw of it)] for the array arguments."""
        real = ctypes.c_float if real_ctype(dtype) == "float" else ctypes.c_double
        count = n if threads is None else len(threads)
        pointer = None if threads is None else ctypes.c_void_p(threads.ctypes.data)
        c_args = [pointer, ctypes.c_longlong(int(count)), ctypes.c_longlong(int(n))]
        arrays, g = [], self.GUARD
        for a, (kind, v) in zip(decl.args, checked):
            if kind == "int":
                c_args.append(ctypes.c_int(int(v)))
            elif kind == "real":
                c_args.append(real(float(v)))
            else:
                if not isinstance(v, np.ndarray):
                    raise UnsupportedError(f"the emulated kernel {decl.name} takes NumPy arrays, got "
                                           f"{type(v).__name__}")
                if padded:
                    buf = np.full(v.size + 2 * g, np.nan, dtype=v.dtype)
                    if a.reads:
                        buf[g:g + v.size] = v.reshape(-1)
                    arrays.append((a, v, buf))
                    c_args.append(ctypes.c_void_p(buf[g:].ctypes.data))
                else:
                    arrays.append((a, v, None))
                    c_args.append(ctypes.c_void_p(v.ctypes.data))
        fn.restype = None
        fn(*c_args)
        out = []
        for a, v, buf in arrays:
            if buf is None:
                out.append((a, v, v.reshape(-1)))
                continue
            if not (np.isnan(buf[:g]).all() and np.isnan(buf[g + v.size:]).all()):
                raise RuntimeError(f"emulated kernel {decl.name}<{real_ctype(dtype)}> wrote outside its argument "
                                   f"{a.name} ({v.size} elements)")
            out.append((a, v, buf[g:g + v.size]))
        return out

    def launch(self, source: CudaSource, kernel: str, dtype, n: int, *args) -> None:
        decl = source.kernel(kernel)
        checked = check_args(decl, dtype, n, args)
        fn = getattr(self._lib(source), f"ri_emulate_{kernel}_{real_ctype(dtype)}")
        seen = self._run(fn, decl, checked, dtype, n, self._order(n), self.guard)
        if self.ownership and n > 1:
            self._check_ownership(fn, decl, checked, dtype, n, seen)
        if self.guard:
            for a, v, got in seen:
                if a.out:
                    v.reshape(-1)[...] = got

    def _check_ownership(self, fn, decl: Kernel, checked: list, dtype, n: int, whole: list) -> None:
        """Every split of the threads by a bit of idx: the two halves write disjoint entries, and what each half
        writes alone is what the whole launch wrote there (EmulatedDevice's docstring)."""
        where = f"emulated kernel {decl.name}<{real_ctype(dtype)}> (n = {n})"
        full = {a.name: (v, got) for a, v, got in whole if a.out}
        for bit in range(int(n - 1).bit_length()):
            idx = np.arange(n, dtype=np.int64)
            halves = [self._run(fn, decl, checked, dtype, n, idx[((idx >> bit) & 1) == side], padded=True)
                      for side in (0, 1)]
            for name, (v, ref) in full.items():
                arg = decl.args[[a.name for a in decl.args].index(name)]
                before = v.reshape(-1) if arg.reads else None
                got = [next(g for a, _, g in half if a.name == name) for half in halves]
                masks = [_written(g, before) for g in got]
                both = np.flatnonzero(masks[0] & masks[1])
                if both.size:
                    raise RuntimeError(f"{where}: entry {int(both[0])} of {name} is written by a thread whose idx has "
                                       f"bit {bit} = 0 and by one with bit {bit} = 1: two threads write one location "
                                       f"(a race on the device); give every output entry one owning thread")
                for side in (0, 1):
                    bad = np.flatnonzero(masks[side] & ~_same(got[side], ref))
                    if bad.size:
                        e = int(bad[0])
                        raise RuntimeError(f"{where}: with only the threads whose idx has bit {bit} = {side}, entry "
                                           f"{e} of {name} is {complex(got[side][e])}, with all threads "
                                           f"{complex(ref[e])}: a thread reads what another thread writes (their "
                                           f"order on the device is undefined); keep each thread on its own entries")
                lost = np.flatnonzero(_written(ref, before) & ~(masks[0] | masks[1]))
                if lost.size:
                    raise RuntimeError(f"{where}: entry {int(lost[0])} of {name} is written when all threads run but "
                                       f"by neither half of the split by bit {bit} alone: a thread's write depends on "
                                       f"another thread's; keep each thread on its own entries")


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Entry-wise a == b, NaN equal to NaN."""
    return (a == b) | (np.isnan(a) & np.isnan(b))


def _written(got: np.ndarray, before) -> np.ndarray:
    """The entries a run wrote: not NaN for a write-only output (it starts as NaN), changed for an in/out one."""
    if before is None:
        return ~np.isnan(got)
    return ~_same(got, before)
