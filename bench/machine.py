"""The machine's own limits, measured in the same run as the kernels: copy bandwidth and GEMM throughput.

    copy bandwidth   bytes read + written per second by a plain array copy of `copy_mib` MiB (np.copyto on the host;
                     cupy's device-to-device copy on a GPU; an MLX copy on MLX's default device)
    GEMM rate        FLOPs per second of an n×n matrix product (2 n³ FLOPs) per dtype, on the host BLAS (and the
                     backend's own matmul for MLX / CuPy)
Best of a few repeats (a limit is what the machine *can* do). Versions and thread counts go with them into the JSON.

`describe` records the machine a result comes from, because the kernels' speed depends on it (AVX2 vs AVX-512 vectors,
which GEMM kernels the BLAS picked): the CPU model, its vector extensions (AVX2, FMA, AVX-512 F/BW/VL, NEON/ASIMD), the
cores, the BLAS libraries that are loaded with their thread counts and the kernel architecture they chose
(threadpoolctl: OpenBLAS's `architecture`, e.g. Haswell, SkylakeX, Zen), and the CPU Numba / LLVM compile for.
`machine_line` is that record in one line, printed beside every benchmark table.
"""

from __future__ import annotations

import os
import platform
import time

import numpy as np


def _best(fn, repeats: int = 5, sync=lambda: None) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def host_limits(copy_mib: int = 64, n: int = 1024, dtypes=("float32", "float64")) -> dict:
    src = np.ones(copy_mib * 2**20 // 8, np.float64)
    dst = np.empty_like(src)
    copy = 2 * src.nbytes / _best(lambda: np.copyto(dst, src))
    gemm = {}
    for dt in dtypes:
        a = np.random.default_rng(0).standard_normal((n, n)).astype(dt)
        gemm[dt] = 2 * n ** 3 / _best(lambda: a @ a)
    return {"copy_bytes_per_s": copy, "gemm_flops_per_s": gemm}


def backend_limits(backend: str, copy_mib: int = 64, n: int = 1024) -> dict | None:
    """The device limits of a backend that has its own memory (mlx, cupy); None for host backends."""
    if backend == "cupy":
        import cupy as cp
        sync = cp.cuda.Device().synchronize
        src = cp.ones(copy_mib * 2**20 // 8, cp.float64)
        dst = cp.empty_like(src)
        copy = 2 * src.nbytes / _best(lambda: cp.copyto(dst, src), sync=sync)
        gemm = {}
        for dt in ("float32", "float64"):
            a = cp.random.standard_normal((n, n)).astype(dt)
            gemm[dt] = 2 * n ** 3 / _best(lambda: a @ a, sync=sync)
        return {"copy_bytes_per_s": copy, "gemm_flops_per_s": gemm}
    if backend == "mlx":
        import mlx.core as mx
        src = mx.ones((copy_mib * 2**20 // 4,), dtype=mx.float32)
        copy = 2 * copy_mib * 2**20 / _best(lambda: mx.eval(src + 0))       # a read and a write of every element
        a = mx.random.normal((n, n))
        gemm = {"float32": 2 * n ** 3 / _best(lambda: mx.eval(a @ a))}
        return {"copy_bytes_per_s": copy, "gemm_flops_per_s": gemm}
    return None


#: The vector extensions worth naming, as /proc/cpuinfo spells them (x86) or as Linux/macOS name them on ARM.
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "asimd", "neon",
                "sve")


def cpu_record() -> dict:
    """{"model", "vector_extensions", "cores"}: from /proc/cpuinfo on Linux, sysctl on macOS, else platform's."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                generic = model in ("", platform.machine(), platform.processor())
                if key in ("model name", "Model", "Hardware") and generic:
                    model = value.strip()
                elif key in ("flags", "Features"):
                    flags.update(value.split())
    except OSError:
        if platform.system() == "Darwin":
            import subprocess
            try:
                model = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                       timeout=5).stdout.strip() or model
            except (OSError, subprocess.SubprocessError):
                pass
            if platform.machine() == "arm64":
                flags.update({"neon", "asimd"})
    return {"model": model, "vector_extensions": [f for f in VECTOR_FLAGS if f in flags], "cores": os.cpu_count()}


def blas_record() -> list:
    """The BLAS / OpenMP libraries loaded in this process (threadpoolctl, when installed): [{"library", "version",
    "threads", "architecture"}] — OpenBLAS's architecture is the kernel family it picked for this CPU."""
    try:
        import threadpoolctl
    except ImportError:
        return []
    import scipy.linalg  # noqa: F401  (Numba's BLAS is SciPy's: load it so that it is listed)
    return [{"library": i.get("internal_api"), "version": i.get("version"), "threads": i.get("num_threads"),
             "architecture": i.get("architecture"), "file": os.path.basename(i.get("filepath", ""))}
            for i in threadpoolctl.threadpool_info()]


def numba_target() -> str | None:
    """The CPU LLVM compiles Numba's kernels for (e.g. skylake-avx512, znver3), or None without numba."""
    try:
        import llvmlite.binding as llvm
        import numba
        return numba.config.CPU_NAME or llvm.get_host_cpu_name()
    except Exception:                           # not installed: nothing compiled
        return None


def machine_line(m: dict) -> str:
    """The machine record of `describe` in one line."""
    cpu = m.get("cpu", {})
    blas = "; ".join(f"{b['library']} {b['version']} {b['architecture'] or ''} ({b['file']}, {b['threads']} threads)"
                     .replace("  ", " ") for b in m.get("blas", []) if b.get("library") in ("openblas", "mkl", "blis"))
    return (f"{cpu.get('model', m.get('processor'))}, {cpu.get('cores')} cores, vector extensions "
            f"{', '.join(cpu.get('vector_extensions', [])) or 'unknown'}; BLAS {blas or 'unknown'}; Numba target "
            f"{m.get('numba_target') or '—'}")


def describe(threads: int | None) -> dict:
    versions = {"numpy": np.__version__}
    for mod in ("numba", "scipy", "mlx", "cupy", "torch", "jax"):
        try:
            m = __import__(mod)
            versions[mod] = getattr(m, "__version__", "?")
        except Exception:                       # not installed (or broken): simply not listed
            pass
    try:
        import mlx.core as mx
        versions["mlx"] = getattr(mx, "__version__", versions.get("mlx", "?"))
    except Exception:
        pass
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "threads": threads, "versions": versions,
            "cpu": cpu_record(), "blas": blas_record(), "numba_target": numba_target()}
