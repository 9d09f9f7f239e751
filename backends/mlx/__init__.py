"""The MLX backend: every registered kernel written with mlx.core, taking and returning mx.array.

Kernels (same names, signatures and output structure as the NumPy references, refimpl/kernels.py), by module:
    cells        rnn, gru, lstm, lru .forward / .backward
    dense_online rnn, gru, lstm .rtrl / .snap1 / .truncated / .spatial, lstm.cec
    lru_online   lru .rtrl / .truncated / .spatial / .fptt / .fptt1
    dense_fptt   rnn, gru, lstm .fptt / .fptt1
    ep_loops     ep .free_phase / .nudged_phase / .bptt
    metal        custom Metal kernels for the LRU's diagonal scan and its adjoint (mx.fast.metal_kernel); they replace
                 lru.forward / lru.backward only where mx.metal.is_available() (Apple silicon), and never elsewhere

Dtypes. MLX has float32 and complex64 everywhere, float64 on its CPU stream only, and no complex128:
    - float32 (complex64 LRU states): every kernel;
    - float64: every rnn/gru/lstm/ep kernel, when the default device is the CPU (on Linux it always is); on a GPU
      default device the kernels refuse float64 with the reason instead of downcasting. The FPTT kernels keep
      float64 carriers (the reference's default) in every dtype and run on the CPU stream as a whole;
    - the lru kernels in "float64" (complex128 states): not available — `unsupported_dtype` says why.
The conversion at the boundary is explicit: to_backend maps float64 → mx.float64 and refuses complex128 (instead of
MLX's silent cast to complex64); to_numpy evaluates and copies back.

Performance (mlx 0.32 CPU wheel on Linux x86-64). The wheel links the *reference* BLAS (netlib libblas): a GEMM runs
at 1–2.5 GFLOP/s, about 15× slower than the OpenBLAS behind NumPy and Numba on one thread (the input projection of
B=32, T=256, I=64, 3H=768: 142 ms vs 9.4 ms). At B=32, T=256, I=64, H=256 the GEMMs are two thirds of gru.forward and
nine tenths of gru.backward, and every cell kernel runs 11–18× slower than Numba's; the rest is MLX's per-operation
cost (about 1 ms per time step at that size), which a fused Numba loop does not pay. What the kernels do about it:
one GEMM for all input projections and weight gradients; row-contiguous transposed weights (NN GEMMs, 2× faster than
the transposed views); mx.compile'd steps (3× faster than op-by-op at small B·H, even with it at B·H = 32·256);
lru.rtrl as blocked GEMMs instead of a per-step (B, N, I) trace update (about 14× faster). On Apple silicon MLX uses
Accelerate on the CPU and Metal on the GPU instead of the reference BLAS.
"""

from __future__ import annotations

import numpy as np

try:
    import mlx.core as mx
except ImportError as e:                     # mlx missing: the backend exists but cannot run here
    _REASON = f"cannot import {e.name!r}: install it (pip install -e '.[mlx]': mlx[cpu] on Linux, mlx on macOS)"
    KERNELS: dict = {}
else:
    _REASON = ""
    from . import cells, dense_fptt, dense_online, ep_loops, lru_online, metal
    from .common import float64_reason
    # every module of the package contributes its kernels: {name: callable}
    KERNELS = {}
    for _module in (cells, dense_online, lru_online, dense_fptt, ep_loops):
        KERNELS.update(_module.KERNELS)
    if metal.enabled():                      # Apple silicon only: the custom Metal scans replace the lru cells
        KERNELS.update(metal.KERNELS)

#: Kernels whose "float64" case means complex128 states, which MLX does not have.
_COMPLEX_KERNELS = ("lru.",)


def available() -> tuple[bool, str]:
    """(True, "") when mlx imports; else (False, why)."""
    return (not _REASON, _REASON)


def unsupported_dtype(kernel: str, dtype: str) -> str:
    """"" when `kernel` runs in `dtype` here, else the reason (the parity tests skip with it)."""
    if dtype != "float64":
        return ""
    if kernel.startswith(_COMPLEX_KERNELS):
        return ("MLX has no complex128: the lru's float64 kernels carry complex128 states; use float32 "
                "(complex64 states) with MLX, or the numpy/numba backends for float64")
    return float64_reason()


def to_backend(a: np.ndarray) -> "mx.array":
    """np.ndarray → mx.array of the same dtype (float64 stays float64; complex128 is refused, not downcast)."""
    from refimpl.errors import DTypeError
    a = np.asarray(a)
    if a.dtype == np.complex128:
        raise DTypeError("MLX has no complex128 (only complex64); convert explicitly with a.astype(np.complex64) "
                         "if that precision is enough, or use the numpy/numba backends for complex128")
    if a.dtype == np.float64:
        return mx.array(a, dtype=mx.float64)       # mx.array(float64 ndarray) alone would give float32
    return mx.array(a)


def to_numpy(a: "mx.array") -> np.ndarray:
    """mx.array → np.ndarray (evaluates it if it is still lazy; a copy, same dtype)."""
    return np.array(a)


def synchronize(outputs) -> None:
    """Wait until every array of a kernel's output tree is computed (the kernels already evaluate their outputs;
    this makes a benchmark's clock independent of that)."""
    from refimpl.registry import map_arrays
    arrays = []
    map_arrays(arrays.append, outputs)
    mx.eval(arrays)
    mx.synchronize()
