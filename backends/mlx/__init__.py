"""The MLX backend: every registered kernel written with mlx.core, taking and returning mx.array (complex128 carriers
as runtime.Complex128).

Kernels (same names, signatures and output structure as the NumPy references, refimpl/kernels.py), by module:
    cells         rnn, gru, lstm, lru .forward / .backward; the compiled step and the gate adjoints of every cell
    online_dense  rnn, gru, lstm .rtrl / .snap1 / .truncated / .spatial, lstm.cec
    online_lru    lru .rtrl / .truncated / .spatial / .fptt / .fptt1 / .fptt_warmup (direct) / .fptt_shooting
    fptt_dense    rnn, gru, lstm .fptt / .fptt1 / .fptt_warmup (direct) / .fptt_shooting
    ep            ep .free_phase / .nudged_phase / .bptt
and the plumbing they share:
    runtime       the float64 policy and `@kernel` (evaluation at the boundary), the GEMM helpers, and the custom Metal
                  kernels for the LRU's diagonal scan and its adjoint (mx.fast.metal_kernel): cells.METAL_KERNELS
                  replace lru.forward / lru.backward only where mx.metal.is_available() (Apple silicon), never elsewhere
    xp            the array namespace of mx.array (XP: the vocabulary of refimpl/arrays.py on mlx.core), which the
                  registry registers when it loads this backend (NAMESPACE = (mx.array, XP)), so that the model's
                  batched array code runs in mx.arrays too

The RTRL-family and FPTT-phase kernels are carried (refimpl/kernels.py): each sweeps one chunk of a stream, takes the
state and the carry before it (carry=None: the stream's start) and returns {…, "state", "carry"} after it, the carry in
the reference's layout whatever layout the kernel keeps inside (converted once per call, at the chunk's boundary).

Dtypes. MLX has float32 and complex64 everywhere, float64 on its CPU stream only, and no complex128:
    - float32 (complex64 LRU states): every kernel;
    - float64: every rnn/gru/lstm/ep kernel, when the default device is the CPU (on Linux it always is); on a GPU
      default device the kernels refuse float64 with the reason instead of downcasting. The FPTT kernels keep
      float64 carriers (the reference's default; complex128 for the lru) in every dtype, take and return their
      carry in that dtype, and run on the CPU stream as a whole;
    - the lru kernels in "float64" (complex128 states): not available — `unsupported_dtype` says why.
The conversion at the boundary is explicit: to_backend maps float64 → mx.float64 and complex128 → runtime.Complex128
(a pair of float64 mx.arrays: exact, never MLX's silent cast to complex64 — only the lru's FPTT carriers take one,
every other kernel refuses it); to_numpy evaluates and copies back (a Complex128 as a complex128 ndarray). Both are
host↔device crossings, which the registry counts (Backend.crossings), as is XP.asarray of host data.

Performance. The Linux CPU wheel links the reference BLAS, so every GEMM is slow there and MLX's per-operation cost
adds to each time step (the measurements are in docs/backends.md). What the kernels do about it: one GEMM for all
input projections and weight gradients; row-contiguous transposed weights (plain NN GEMMs); mx.compile'd steps;
lru.rtrl as blocked GEMMs instead of a per-step (B, N, I) trace update. On Apple silicon MLX uses Accelerate on the
CPU and Metal on the GPU instead.
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
    from . import cells, ep, fptt_dense, online_dense, online_lru
    from .runtime import Complex128, array_leaves, float64_reason, metal_enabled
    from .xp import XP
    #: (array type, its namespace): registered with refimpl.arrays.register_namespace when the registry loads us
    NAMESPACE = (mx.array, XP)
    # every module of the package contributes its kernels: {name: callable}
    KERNELS = {}
    for _module in (cells, online_dense, online_lru, fptt_dense, ep):
        KERNELS.update(_module.KERNELS)
    if metal_enabled():                      # Apple silicon only: the custom Metal scans replace the lru cells
        KERNELS.update(cells.METAL_KERNELS)

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
    """np.ndarray → mx.array of the same dtype (float64 stays float64); complex128, which MLX lacks, → an exact
    runtime.Complex128 pair (re, im) of float64 arrays — never downcast; the kernels refuse it except as the lru's
    FPTT carriers."""
    a = np.asarray(a)
    if a.dtype == np.complex128:
        return Complex128.from_numpy(a)
    if a.dtype == np.float64:
        return mx.array(a, dtype=mx.float64)       # mx.array(float64 ndarray) alone would give float32
    return mx.array(a)


def to_numpy(a: "mx.array") -> np.ndarray:
    """mx.array → np.ndarray (evaluates it if it is still lazy; a copy, same dtype); a Complex128 → complex128."""
    if isinstance(a, Complex128):
        return a.numpy()
    return np.array(a)


def synchronize(outputs) -> None:
    """Wait until every array of a kernel's output tree is computed (the kernels already evaluate their outputs;
    this makes a benchmark's clock independent of that)."""
    mx.eval(array_leaves(outputs))
    mx.synchronize()
