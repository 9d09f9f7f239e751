r"""The CuPy backend: refimpl's kernels on a CUDA device (cupy.ndarray in and out).

Kernels (same names, signatures and output structure as the NumPy references, refimpl/kernels.py):
    cells.py          rnn, gru, lstm, lru .forward / .backward — cuBLAS GEMMs for the dense parts, one fused CUDA
                      kernel per step for the gate math; the lru's recurrence and adjoint as a linear scan kernel
    online_dense.py   rnn, gru, lstm .rtrl, .snap1, .truncated, .spatial, lstm.cec — the fused forward kernels for the
                      states, the fused backward kernels (seeded with one state row) for every step's immediate
                      derivatives, the sensitivity sweeps as CuPy array ops (batched cuBLAS GEMMs)
    online_lru.py     lru .rtrl, .truncated, .spatial, .fptt, .fptt_warmup, .fptt_shooting, .fptt1 — fused trace /
                      carrier kernels, one thread per (b, k) (and per (b, k, i) for the input trace)
    fptt_dense.py     rnn, gru, lstm .fptt, .fptt_warmup, .fptt_shooting, .fptt1 — batched GEMMs (cuBLAS) for the
                      direct warm-up's Jacobian product, batched solves (cuSOLVER) for the shooting warm-up and the
                      error phase, the fused backward kernel for the gate adjoints of all steps at once
    ep.py             ep.free_phase, ep.nudged_phase, ep.bptt — CuPy array ops (cuBLAS GEMMs per layer and step)
The RTRL-family sweeps and FPTT's phases are carried kernels (DESIGN.md §5): each call sweeps one chunk of a stream,
takes the state and the carry (the rule's traces in the reference's layout; FPTT's float64 carriers: Q, e for the
direct warm-up, v', P for the shooting warm-up, v for the error phase) before it and hands back those after it, so a
stream cut into chunks of any size gives the gradients of one uncut sweep.
The CUDA C++ sources are sources.py (plain strings, no CuPy header; every cell's gate math and adjoint is written
there once); runtime.py holds the host-side logic (launch configuration, dtype dispatch, argument checks, the device
probe), which imports without CuPy, and the devices: the kernels run on a CUDA device or, for tests without a GPU, in a
CPU emulation of the same sources.

Importing this package never touches a device (KERNELS is complete without CuPy, so `backends` lists coverage);
available() probes the device: cupy must import, cupy.cuda.runtime.getDeviceCount() must answer, and the driver must
support the CUDA major version CuPy was built for. Install CuPy with the extra of your driver: cuda12
(cupy-cuda12x) or cuda13 (cupy-cuda13x).

Arrays. cupy.ndarray follows the array API standard through array_api_compat, so refimpl.arrays.namespace finds its
namespace with nothing registered (no NAMESPACE here), and the model's batched array code runs in CuPy arrays as it
is. to_backend / to_numpy are the host↔device copies; the registry counts them (Backend.crossings).
"""

from __future__ import annotations

import functools
import inspect

import numpy as np

from .runtime import INSTALL_HINT, classify_probe

try:
    import cupy as _cupy
    _IMPORT_FAILURE = ""
except ImportError:          # the backend exists but cannot run here; KERNELS still lists what it implements
    _cupy, _IMPORT_FAILURE = None, f"cannot import 'cupy': {INSTALL_HINT}"
except Exception as e:       # installed but broken (e.g. a CUDA library it loads at import is missing)
    _cupy, _IMPORT_FAILURE = None, f"cannot import 'cupy' ({type(e).__name__}: {e}); {INSTALL_HINT}"

from . import cells, ep, fptt_dense, online_dense, online_lru  # noqa: E402  (import no cupy, touch no device)

#: {kernel name: implementation taking the device first}: every module of the package contributes its kernels.
IMPLEMENTATIONS: dict = {}
for _module in (cells, online_lru, online_dense, fptt_dense, ep):
    IMPLEMENTATIONS.update(_module.IMPLEMENTATIONS)

_DEVICE = None


def cuda_device():
    """The CUDA device the registered kernels run on (created on first use: compiling and launching happen there)."""
    global _DEVICE
    if _DEVICE is None:
        from .runtime import CudaDevice
        _DEVICE = CudaDevice()
    return _DEVICE


def _on_cuda(implementation):
    """The registry's kernel: the implementation with the CUDA device bound (its signature without `dev`)."""
    @functools.wraps(implementation)
    def kernel(*args, **kwargs):
        return implementation(cuda_device(), *args, **kwargs)
    signature = inspect.signature(implementation)
    kernel.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])
    return kernel


#: {kernel name: callable on cupy arrays}, the registry's contract.
KERNELS = {name: _on_cuda(fn) for name, fn in IMPLEMENTATIONS.items()}


def available() -> tuple[bool, str]:
    """(True, "") when cupy imports and a CUDA device answers with a recent enough driver; else (False, why)."""
    if _cupy is None:
        return False, _IMPORT_FAILURE or f"cannot import 'cupy': {INSTALL_HINT}"
    runtime = _cupy.cuda.runtime
    try:
        count, error = runtime.getDeviceCount(), None
    except Exception as e:                           # CUDARuntimeError: no driver, driver too old, no device
        count, error = None, e
    try:
        driver = runtime.driverGetVersion()
    except Exception:
        driver = 0
    try:
        built_for = runtime.runtimeGetVersion()
    except Exception:
        built_for = 0
    return classify_probe(count, error, driver, built_for)


def to_backend(a: np.ndarray):
    """NumPy → cupy.ndarray on the current device (one host-to-device copy)."""
    return _cupy.asarray(a)


def to_numpy(a) -> np.ndarray:
    """cupy.ndarray → NumPy (one device-to-host copy)."""
    return _cupy.asnumpy(a)


def synchronize(outputs) -> None:
    """Wait until the device has finished every kernel launched so far (launches are asynchronous: a benchmark stops
    its clock after this)."""
    _cupy.cuda.Device().synchronize()
