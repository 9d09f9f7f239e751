"""Fast backends of refimpl's kernels: one package per backend (``backends.numba``, ``backends.mlx``, ``backends.cupy``).

Each backend implements kernels of the registry (refimpl/registry.py) by the same names and signatures as the NumPy
reference, taking and returning its own array type, and exports:

    KERNELS: dict[str, callable]     {"gru.forward": …, "gru.backward": …, …}
    available() -> (bool, str)       whether it runs on this machine, and the reason if not (probe the device)
    to_backend(np.ndarray)           conversion at the boundary (never inside a loop)
    to_numpy(array) -> np.ndarray

The NumPy reference is the ``numpy`` backend and lives in refimpl itself. Backends are imported by name through the
registry, never by refimpl at import time. Parity tests (tests/backends/test_parity.py) are generated from the registry, so a
new backend is tested without new test code.

Today no fast backend is written yet (see the README's table); the registry reports each as "not implemented yet".
"""
