"""The Numba backend: every kernel of the registry as JIT-compiled CPU loops (numpy arrays in and out).

Kernels (same names, signatures and output structure as the NumPy references, refimpl/kernels.py), by module:
    cells.py         <cell>.forward, <cell>.backward for rnn (tanh | linear), gru, lstm, lru; the gate functions of
                     every cell (its step and its adjoint, written once and inlined into every loop below)
    online_dense.py  rnn/gru/lstm .rtrl (blocked BLAS sensitivity update), .snap1 (compact traces), lstm.cec,
                     .truncated, .spatial (the cell backward without its carry)
    online_lru.py    lru.rtrl, lru.truncated, lru.spatial (diagonal traces), lru.fptt, lru.fptt_warmup (direct),
                     lru.fptt_shooting, lru.fptt1
    fptt_dense.py    rnn/gru/lstm .fptt, .fptt_warmup (direct: Jacobian products), .fptt_shooting, .fptt1 (Jacobian
                     solves forward in time)
    ep.py            ep.free_phase, ep.nudged_phase, ep.bptt (the EP relaxation loops)
    layers.py        LAYERS: the model's layer norm, MLP / GLU blocks and LRU output map with their elementwise
                     chains fused into loops (not kernels of the registry: the model stack calls them beside the cells)
and the plumbing they share:
    runtime.py       dtypes and scalars, BLAS and thread control, blocks of rows, the input-projection and
                     weight-gradient GEMMs around the loops (the layout rules (a)–(f))
    fastmath.py      tanh and σ as plain arithmetic, so that the loops around them vectorise

The RTRL-family sweeps and FPTT's phases are carried kernels: each sweeps one chunk of a stream from the state and
the carry before it (the reference's layout: rtrl.py "Trace layouts", fptt.py's Q and e, v' and P, v) and returns both
after it, converting the carry to its loops' own layout once per call (DESIGN.md §5).

Design (runtime.py): the input projection of all T steps is one GEMM outside the time loop, the time loop is an
@njit(cache=True) function with the gate arithmetic fused per step, and the weight gradients are one GEMM over all
(t, b) from the per-step gate adjoints stored by the backward loop. Compiled code is cached on disk (__pycache__ next
to the modules, or NUMBA_CACHE_DIR), so only the first call on a machine pays the compile time.

Arrays. Numba's arrays are NumPy's, on the host: the model's batched array code runs in NumPy (no NAMESPACE to
register), and to_backend / to_numpy are the identity, no crossings (ON_HOST: the registry counts none).
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
    from . import cells, ep, fptt_dense, online_dense, online_lru
    from .layers import LAYERS  # noqa: F401  the model's layer operations, fused (registry.CellKernels.layers)
    # every module of the package contributes its kernels: {name: callable}
    KERNELS = {}
    for _module in (cells, online_dense, online_lru, fptt_dense, ep):
        KERNELS.update(_module.KERNELS)


#: The arrays stay on the host (NumPy's): the registry's crossing counters do not count the identity conversions.
ON_HOST = True


def available() -> tuple[bool, str]:
    """(True, "") when numba (and SciPy, for BLAS inside @njit) import; else (False, why)."""
    return (not _REASON, _REASON)


def to_backend(a: np.ndarray) -> np.ndarray:
    """Numba works on NumPy arrays: the identity."""
    return a


def to_numpy(a: np.ndarray) -> np.ndarray:
    """Numba returns NumPy arrays: the identity."""
    return a
