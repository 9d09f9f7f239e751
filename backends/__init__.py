"""Fast backends of refimpl's kernels: one package per backend (``backends.numba``, ``backends.mlx``,
``backends.cupy``), and ``backends.common``, what they share.

Each backend implements kernels of the registry (refimpl/registry.py) by the same names and signatures as the NumPy
reference, taking and returning its own array type, and exports:

    KERNELS: dict[str, callable]     {"gru.forward": …, "gru.backward": …, …}
    available() -> (bool, str)       whether it runs on this machine, and the reason if not (probe the device)
    to_backend(np.ndarray)           conversion at the boundary (never inside a loop)
    to_numpy(array) -> np.ndarray
and optionally unsupported_dtype(kernel, dtype) and synchronize(outputs) (refimpl/registry.py).

Every backend has the same module plan:

    cells.py          <cell>.forward / .backward, and the one place the backend writes each cell's gate math
    online_dense.py   the RTRL family of the dense cells (rtrl, snap1, truncated, spatial, lstm.cec)
    online_lru.py     the LRU's online sweeps (rtrl, truncated, spatial) and its FPTT
    fptt_dense.py     FPTT of the dense cells (fptt, fptt_warmup, fptt_shooting, fptt1)
    ep.py             the EP relaxation loops (free_phase, nudged_phase, bptt)
    runtime.py        how the kernels run: threads and BLAS (numba), lazy evaluation, float64 policy and Metal (mlx),
                      launch logic and devices (cupy; its CUDA sources are sources.py)

``backends.common`` holds what is not backend-specific, written once for any array module (checks, gradient ordering,
the LRU's complex-parameter tail, EP validation); the backends import it and never each other. They use only public
names of refimpl.

The NumPy reference is the ``numpy`` backend and lives in refimpl itself. Backends are imported by name through the
registry, never by refimpl at import time. Parity tests (tests/backends/test_parity.py) are generated from the
registry, so a new backend is tested without new test code; the backend-specific tests are
tests/backends/test_<name>.py.
The README's table lists what each backend implements and what it costs.
"""
