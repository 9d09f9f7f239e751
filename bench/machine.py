"""The machine's own limits, measured in the same run as the kernels: copy bandwidth and GEMM throughput.

    copy bandwidth   bytes read + written per second by a plain array copy of `copy_mib` MiB (np.copyto on the host;
                     cupy's device-to-device copy on a GPU; an MLX copy on MLX's default device)
    GEMM rate        FLOPs per second of an n×n matrix product (2 n³ FLOPs) per dtype, on the host BLAS (and the
                     backend's own matmul for MLX / CuPy)
Best of a few repeats (a limit is what the machine *can* do). Versions and thread counts go with them into the JSON.

`describe` and `machine_line` (refimpl/machine.py) record the machine a result comes from; every benchmark table is
printed with its machine line.
"""

from __future__ import annotations

import time

import numpy as np

from refimpl.machine import (VECTOR_FLAGS, blas_record, cpu_record, describe,  # noqa: F401
                             machine_line, numba_target)


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
