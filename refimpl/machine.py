"""The machine a result comes from, recorded beside every benchmark table and every reproduced result.

`describe` records the machine, because the kernels' speed depends on it (AVX2 vs AVX-512 vectors, which GEMM kernels
the BLAS picked): the CPU model, its vector extensions (AVX2, FMA, AVX-512 F/BW/VL, NEON/ASIMD), the cores, the BLAS
libraries that are loaded with their thread counts and the kernel architecture they chose (threadpoolctl: OpenBLAS's
`architecture`, e.g. Haswell, SkylakeX, Zen), the CPU Numba / LLVM compile for, and the versions of the array
libraries. `machine_line` is that record in one line.
"""

from __future__ import annotations

import os
import platform

import numpy as np


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
    """The CPU LLVM compiles Numba's kernels for (e.g. skylake-avx512, znver3), with "(no AVX-512)" when its
    features (NUMBA_CPU_FEATURES, else the host's) leave AVX-512 out on a CPU that has it; None without numba."""
    try:
        import llvmlite.binding as llvm
        import numba
        name = numba.config.CPU_NAME or llvm.get_host_cpu_name()
        features = numba.config.CPU_FEATURES
    except Exception:                           # not installed: nothing compiled
        return None
    host_has = "avx512f" in cpu_record()["vector_extensions"]
    return f"{name} (no AVX-512)" if host_has and features is not None and "+avx512f" not in features else name


def machine_line(m: dict) -> str:
    """The machine record of `describe` in one line."""
    cpu = m.get("cpu", {})
    blas = "; ".join(f"{b['library']} {b['version']} {b['architecture'] or ''} ({b['file']}, {b['threads']} threads)"
                     .replace("  ", " ") for b in m.get("blas", []) if b.get("library") in ("openblas", "mkl", "blis"))
    return (f"{cpu.get('model', m.get('processor'))}, {cpu.get('cores')} cores, vector extensions "
            f"{', '.join(cpu.get('vector_extensions', [])) or 'unknown'}; BLAS {blas or 'unknown'}; Numba target "
            f"{m.get('numba_target') or '—'}")


#: The libraries whose versions a record lists (the peers torch and jax take seconds to import: a record that does
#: not compare with them leaves them out).
LIBRARIES = ("numba", "scipy", "mlx", "cupy", "torch", "jax")


def describe(threads: int | None, libraries=LIBRARIES) -> dict:
    """The machine record (module doc), with the versions of NumPy and of those of `libraries` that are installed."""
    versions = {"numpy": np.__version__}
    for mod in libraries:
        try:
            m = __import__(mod)
            versions[mod] = getattr(m, "__version__", "?")
        except Exception:                       # not installed (or broken): simply not listed
            pass
    if "mlx" in libraries:
        try:
            import mlx.core as mx
            versions["mlx"] = getattr(mx, "__version__", versions.get("mlx", "?"))
        except Exception:
            pass
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "threads": threads, "versions": versions,
            "cpu": cpu_record(), "blas": blas_record(), "numba_target": numba_target()}
