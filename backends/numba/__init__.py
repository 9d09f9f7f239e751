"""The Numba backend: refimpl's cell kernels as JIT-compiled CPU loops (numpy arrays in and out).

Kernels (same names, signatures and output structure as the NumPy references, refimpl/kernels.py):
    rnn.forward, rnn.backward (nonlinearity tanh | linear), gru.forward, gru.backward,
    lstm.forward, lstm.backward, lru.forward, lru.backward.
Every other registered kernel is not implemented here (the registry says so; nothing falls back silently).

Design (backends/numba/cells.py): the input projection of all T steps is one GEMM outside the time loop, the time
loop is an @njit(cache=True) function with the gate arithmetic fused per step, and the weight gradients are one GEMM
over all (t, b) from the per-step gate adjoints stored by the backward loop. Compiled code is cached on disk
(__pycache__ next to cells.py, or NUMBA_CACHE_DIR), so only the first call on a machine pays the compile time.
"""

from __future__ import annotations

import numpy as np

try:
    import numba  # noqa: F401
    import scipy.linalg.cython_blas  # noqa: F401  np.dot inside @njit calls BLAS through SciPy
except ImportError as e:                 # numba or scipy missing: the backend exists but cannot run here
    _REASON = f"cannot import {e.name!r}: install it (e.g. pip install -e '.[numba]')"
    KERNELS: dict = {}
else:
    _REASON = ""
    from . import cells, dense_fptt, dense_online, dense_rtrl, ep_loops, lru_online
    # every module of the package contributes its kernels: {name: callable}
    KERNELS = {}
    for _module in (cells, lru_online, ep_loops, dense_online, dense_fptt, dense_rtrl):
        KERNELS.update(_module.KERNELS)


def available() -> tuple[bool, str]:
    """(True, "") when numba (and SciPy, for BLAS inside @njit) import; else (False, why)."""
    return (not _REASON, _REASON)


def to_backend(a: np.ndarray) -> np.ndarray:
    """Numba works on NumPy arrays: the identity."""
    return a


def to_numpy(a: np.ndarray) -> np.ndarray:
    """Numba returns NumPy arrays: the identity."""
    return a
