r"""Where the backend's kernels run: a CUDA device through CuPy, or the CPU emulation of the same CUDA sources.

Every kernel implementation of this package (cells.py, lru_online.py, dense_online.py, dense_fptt.py, ep_loops.py)
takes a device first and uses only

    dev.xp                                  the array module: cupy (CudaDevice) or numpy (EmulatedDevice)
    dev.launch(source, kernel, dtype, n, *args)
                                            run n threads of a CUDA kernel of sources.py, instantiated for the real
                                            type of `dtype`, on arrays of dev.xp (arguments checked by
                                            launch.check_args before anything runs)

so one implementation serves both. The registered kernels (__init__.KERNELS) run on CudaDevice. EmulatedDevice exists
for testing without a GPU: it compiles each source's thread bodies as plain C++ (launch.CudaSource.emulation) with the
host C++ compiler and runs the n threads one after the other (order 0: ascending, 1: descending — the kernels'
threads are independent, so both orders must give the same result); GEMMs are NumPy's. It checks everything but the
device itself: the kernels' arithmetic and indexing, the host wrappers, argument order and types, and the dtype
dispatch. What it cannot check: NVRTC compilation (the nvcc compile check stands in), the grid/block launch, CuPy's
own array functions, and device arithmetic (FMA contraction, CUDA's tanh/exp, cuBLAS summation order).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile

import numpy as np

from refimpl.errors import UnsupportedError

from .launch import CudaSource, check_args, instantiation, launch_config, real_ctype


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


class EmulatedDevice:
    """The CUDA kernels' thread bodies compiled for the CPU and run thread by thread, on NumPy arrays (see the module
    docstring for what this does and does not check). order: 0 runs the threads ascending, 1 descending.

    guard (default on): every array argument is handed to the kernel inside a copy padded with GUARD NaNs on each
    side; a kernel that writes outside its array changes the padding (→ RuntimeError naming kernel and argument), one
    that reads outside it reads NaN, which surfaces in the parity checks. Write-only outputs (launch.Out) start as NaN,
    as uninitialised device memory would hold garbage: an entry the kernel fails to write stays NaN.
    """

    name = "emulation"
    xp = np
    GUARD = 64

    def __init__(self, build_dir: str | None = None, order: int = 0, compiler: str | None = None,
                 guard: bool = True):
        self.guard = bool(guard)
        self.compiler = compiler or find_compiler()
        if self.compiler is None:
            raise UnsupportedError("the CPU emulation of the CUDA kernels needs a C++ compiler (c++, g++ or clang++ "
                                   "on PATH, or $CXX); install one, e.g. apt-get install g++")
        self.build_dir = build_dir or tempfile.mkdtemp(prefix="refimpl-cuda-emulation-")
        self.order = int(order)
        self._libs: dict[str, ctypes.CDLL] = {}

    def build(self, source: CudaSource) -> str:
        """Compile `source`'s emulation into a shared library (once per source text); returns its path."""
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

    def launch(self, source: CudaSource, kernel: str, dtype, n: int, *args) -> None:
        decl = source.kernel(kernel)
        checked = check_args(decl, dtype, n, args)
        fn = getattr(self._lib(source), f"ri_emulate_{kernel}_{real_ctype(dtype)}")
        real = ctypes.c_float if real_ctype(dtype) == "float" else ctypes.c_double
        c_args = [ctypes.c_int(self.order), ctypes.c_longlong(int(n))]
        padded = []                                      # (argument, original array, padded copy)
        for a, (kind, v) in zip(decl.args, checked):
            if kind == "int":
                c_args.append(ctypes.c_int(int(v)))
            elif kind == "real":
                c_args.append(real(float(v)))
            else:
                if not isinstance(v, np.ndarray):
                    raise UnsupportedError(f"the emulated kernel {kernel} takes NumPy arrays, got {type(v).__name__}")
                if self.guard:
                    g = self.GUARD
                    buf = np.full(v.size + 2 * g, np.nan, dtype=v.dtype)
                    if a.reads:
                        buf[g:g + v.size] = v.reshape(-1)
                    padded.append((a, v, buf))
                    v = buf[g:]
                c_args.append(ctypes.c_void_p(v.ctypes.data))
        fn.restype = None
        fn(*c_args)
        for a, v, buf in padded:
            g = self.GUARD
            if not (np.isnan(buf[:g]).all() and np.isnan(buf[g + v.size:]).all()):
                raise RuntimeError(f"emulated kernel {kernel}<{real_ctype(dtype)}> wrote outside its argument "
                                   f"{a.name} ({v.size} elements)")
            if a.out:
                v.reshape(-1)[...] = buf[g:g + v.size]
