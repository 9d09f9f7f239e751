"""The kernel registry (DESIGN.md §6): one table of hot sequential loops, their NumPy references, and the backends.

A *kernel* is one hot sequential loop (a recurrence, its adjoint, an RTRL-family or FPTT sweep, an EP relaxation)
written as a pure function from arrays to arrays. This module is the mechanism only: it knows no kernel. The table of
reference kernels is refimpl/kernels.py, which registers each one once (imported by `import refimpl`, so the table is
complete for anyone who imports refimpl or any module of it), with:

    name          "<cell>.<op>", e.g. "gru.forward", "gru.backward"
    signature     a documented call signature with shapes and dtypes
    reference     the NumPy implementation (the `numpy` backend is refimpl itself)
    make_inputs   an input spec: make_inputs(rng, dtype, size) -> {argument: value} random but valid
    variants      static keyword arguments that select a code path (e.g. {"nonlinearity": "linear"})

Parity tests (tests/backends/test_parity.py), the `backends` command and the benchmarks iterate over the table, so
registering a kernel adds its tests and its timing rows.

A *backend* is a module ``backends.<name>`` that defines
    KERNELS: {kernel name: callable}     same names and signatures as the references, its own array type
    available() -> (bool, reason)        probe the machine (the device, not only the import)
    to_backend(np.ndarray) -> array      explicit conversion at the boundary
    to_numpy(array) -> np.ndarray
and optionally
    NAMESPACE = (array type, xp)                        the array namespace of its arrays when array_api_compat has
                                                        none (MLX's adapter, backends/mlx/xp.py): registered with
                                                        refimpl.arrays.register_namespace when the backend loads
    ON_HOST = True                                      its arrays are NumPy's (Numba): conversions are no crossings
    LAYERS                                              its own layer operations (refimpl/nn/layers.py LayerOps, same
                                                        signatures and caches), which the model stack then calls with
                                                        its cell kernels (CellKernels.layers; e.g. Numba's fused loops)
    unsupported_dtype(kernel name, dtype name) -> str   "" when the kernel runs in that dtype here, else why not
                                                        (e.g. MLX has no complex128, and float64 only on its CPU stream)
    synchronize(outputs) -> None                        wait until the outputs are computed (mx.eval for MLX's lazy
                                                        arrays, a stream synchronisation for CUDA): benchmarks stop
                                                        their clock after it
Backends are imported only when asked for by name (refimpl never imports one at import time). A backend that lacks a
kernel says so; a kernel is never silently replaced by another.

`call` runs one kernel with NumPy in and out; `cell_kernels` and `ep_kernels` bundle the kernels a model (its cells'
forward/backward) or an EP network (its relaxation loops) takes as an argument, so that the reference code never
reaches for a backend itself. `cell_kernels(..., device=True)` gives the raw kernels instead (the backend's arrays in
and out), for a model that runs in the backend's arrays as a whole.

Crossings. Every host↔device conversion goes through a backend's to_backend / to_numpy, and the loaded Backend counts
them (`Backend.crossings`: {"to_backend": n, "to_numpy": n}, one per array; `reset_crossings()`), so a test can check
that a training step on a device crosses only where it should. `call` converts each input and output array (counted);
`to_device` / `to_host` convert a whole tree (parameters, optimizer state) once; the raw kernels convert nothing. The
numpy and numba backends hold NumPy arrays: nothing of theirs is counted.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from .arrays import register_namespace
from .errors import UnknownNameError, UnsupportedError


@dataclass(frozen=True)
class KernelSpec:
    name: str
    signature: str
    reference: Callable
    make_inputs: Callable[[np.random.Generator, np.dtype, Mapping[str, int]], dict]   # size: T, B, I, H
    variants: tuple = ({},)
    dtypes: tuple = ("float64", "float32")
    sizes: tuple | None = None      # parity-test sizes when the default grid would be too costly (dense RTRL)


@dataclass(frozen=True)
class BackendSpec:
    name: str
    module: str | None          # import path of the backend module; None for the numpy reference
    description: str


KERNELS: dict[str, KernelSpec] = {}

BACKENDS: dict[str, BackendSpec] = {
    "numpy": BackendSpec("numpy", None, "the NumPy reference (refimpl itself)"),
    "numba": BackendSpec("numba", "backends.numba", "Numba CPU JIT"),
    "mlx": BackendSpec("mlx", "backends.mlx", "MLX (Metal on macOS, CPU on Linux)"),
    "cupy": BackendSpec("cupy", "backends.cupy", "CuPy (CUDA)"),
}


def register_kernel(spec: KernelSpec) -> KernelSpec:
    if spec.name in KERNELS:
        raise ValueError(f"kernel {spec.name!r} is registered twice")
    KERNELS[spec.name] = spec
    return spec


def _identity(a):
    return a


def _no_crossings() -> dict:
    return {"to_backend": 0, "to_numpy": 0}


@dataclass
class Backend:
    """A loaded backend: its kernels, whether it runs here (and why not), its array conversions, and how many
    host↔device crossings they have made (`crossings`, counted by load_backend's wrappers of a device backend's
    to_backend / to_numpy; one per array converted)."""
    name: str
    available: bool
    reason: str
    kernels: dict = field(default_factory=dict)
    to_backend: Callable[[np.ndarray], Any] = _identity
    to_numpy: Callable[[Any], np.ndarray] = _identity
    unsupported_dtype: Callable[[str, str], str] = lambda kernel, dtype: ""
    synchronize: Callable[[Any], None] = lambda outputs: None
    crossings: dict = field(default_factory=_no_crossings)
    on_host: bool = True            # its arrays are NumPy's (numpy, numba: the module's ON_HOST); False for a device
    layers: Any = None              # its layer operations (the module's LAYERS, a LayerOps on host arrays), or None

    def reset_crossings(self) -> None:
        """Set both crossing counters back to 0."""
        self.crossings.update(_no_crossings())


def _counted(backend: Backend, direction: str, convert: Callable) -> Callable:
    """`convert` (the module's to_backend or to_numpy), counting each conversion in backend.crossings[direction]."""
    def counted(a):
        out = convert(a)
        backend.crossings[direction] += 1
        return out
    counted.__name__, counted.__doc__, counted.__wrapped__ = convert.__name__, convert.__doc__, convert
    return counted


_LOADED: dict[str, Backend] = {}


def load_backend(name: str) -> Backend:
    """The backend called `name` (loaded once). Unknown names raise UnknownNameError; a backend that cannot run here
    is returned with available=False and the reason."""
    if name not in BACKENDS:
        raise UnknownNameError("backend", name, BACKENDS, "see `python -m refimpl.run backends`")
    if name in _LOADED:
        return _LOADED[name]
    spec = BACKENDS[name]
    if spec.module is None:
        backend = Backend(name, True, "", {k: s.reference for k, s in KERNELS.items()})
    else:
        try:
            module = importlib.import_module(spec.module)
        except ModuleNotFoundError as e:
            if e.name is not None and spec.module.startswith(e.name):
                reason = (f"cannot import {spec.module!r}: the backends/ package of the repository is not on the path "
                          f"(run from the repository root)")
            else:
                reason = f"cannot import {e.name!r}: install it (e.g. pip install -e '.[{name}]')"
            backend = Backend(name, False, reason)
        except ImportError as e:  # a dependency that imports but is broken
            backend = Backend(name, False, f"import failed: {e}")
        else:
            ok, reason = module.available()
            backend = Backend(name, ok, reason, dict(module.KERNELS), module.to_backend, module.to_numpy,
                              getattr(module, "unsupported_dtype", lambda kernel, dtype: ""),
                              getattr(module, "synchronize", lambda outputs: None))
            backend.on_host = bool(getattr(module, "ON_HOST", False))
            backend.layers = getattr(module, "LAYERS", None) if ok else None
            if not backend.on_host:                          # a device: count its crossings
                backend.to_backend = _counted(backend, "to_backend", module.to_backend)
                backend.to_numpy = _counted(backend, "to_numpy", module.to_numpy)
            if ok and getattr(module, "NAMESPACE", None) is not None:
                register_namespace(*module.NAMESPACE)       # e.g. (mx.array, MLX's adapter)
    _LOADED[name] = backend
    return backend


def require_backend(backend: str) -> Backend:
    """The loaded backend; UnsupportedError, with the reason, when it cannot run here."""
    b = load_backend(backend)
    if not b.available:
        raise UnsupportedError(f"backend {backend!r} is not available on this machine: {b.reason}; "
                               f"use backend='numpy' or see `python -m refimpl.run backends`")
    return b


#: The backends in the order of their measured speed on a whole training step on a CPU (docs/bench/step.md: numba
#: 0.6–0.9× the NumPy reference's time or better on every model; MLX's Linux CPU build 8–14× numba). CuPy and MLX on
#: Metal are not picked automatically until a whole step has been measured on their devices.
SPEED_ORDER = ("numba", "numpy")


def fastest_backend() -> str:
    """The first backend of SPEED_ORDER that runs on this machine (numpy always does)."""
    return next(name for name in SPEED_ORDER if load_backend(name).available)


def get_kernel(name: str, backend: str = "numpy") -> Callable:
    """The raw kernel `name` of `backend` (it takes and returns the backend's own arrays)."""
    if name not in KERNELS:
        raise UnknownNameError("kernel", name, KERNELS)
    b = require_backend(backend)
    if name not in b.kernels:
        raise UnsupportedError(f"backend {backend!r} does not implement kernel {name!r}; "
                               f"use backend='numpy' for it, or see `python -m refimpl.run backends` for coverage")
    return b.kernels[name]


def map_arrays(fn: Callable, tree):
    """Apply fn to every array in a tree of dicts / NamedTuples / tuples / lists; other leaves pass through."""
    if isinstance(tree, dict):
        return {k: map_arrays(fn, v) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(map_arrays(fn, v) for v in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(map_arrays(fn, v) for v in tree)
    if isinstance(tree, np.ndarray) or (hasattr(tree, "shape") and hasattr(tree, "dtype")):
        return fn(tree)
    return tree


def call(name: str, backend: str = "numpy", /, *args, **kwargs):
    """Run kernel `name` on `backend` with NumPy inputs and NumPy outputs: convert at the boundary (explicitly, once
    each way), call, convert back. This is how the API and the parity tests reach a backend."""
    kernel = get_kernel(name, backend)
    if backend == "numpy":                       # the reference takes and returns NumPy arrays: nothing to convert
        return kernel(*args, **kwargs)
    b = load_backend(backend)
    args, kwargs = map_arrays(b.to_backend, args), map_arrays(b.to_backend, kwargs)
    return map_arrays(b.to_numpy, kernel(*args, **kwargs))


def to_device(backend: str, tree):
    """Every NumPy array of a tree (parameters, optimizer state, a batch) converted to `backend`'s arrays, once
    each (counted crossings); other leaves, the backend's arrays among them, pass through. The identity for numpy and
    numba."""
    b = require_backend(backend)
    return map_arrays(lambda a: b.to_backend(a) if isinstance(a, np.ndarray) else a, tree)


def to_host(backend: str, tree):
    """Every array of `backend` in a tree converted to a NumPy array, once each (counted crossings); NumPy arrays
    pass through. The identity for numpy and numba."""
    b = require_backend(backend)
    return map_arrays(lambda a: a if isinstance(a, (np.ndarray, np.generic)) else b.to_numpy(a), tree)


class CellKernels(NamedTuple):
    """A cell's sequence forward/backward on one backend, with NumPy in and out (what the model stack calls), or,
    with device=True, the raw kernels: the backend's arrays in and out, no conversion."""
    forward: Callable
    backward: Callable
    backend: str = "numpy"
    device: bool = False
    layers: Any = None       # the backend's layer operations (refimpl/nn/layers.py LayerOps), None: the reference's


def cell_kernels(cell_name: str, backend: str = "numpy", dtype: str | None = None,
                 device: bool = False) -> CellKernels:
    """The forward/backward kernels of a cell on a backend, with the cell modules' signatures. With `dtype`, a backend
    that cannot run the cell in that dtype (MLX: no complex128 for the lru's float64) is refused here, with the fix.

    device=False: NumPy in and out (each call converts its arrays at the boundary, `call`). device=True: the raw
    kernels (get_kernel), taking and returning the backend's arrays, for a model that keeps its parameters and
    activations in them (registry.to_device once, then no crossing per call)."""
    fwd, bwd = f"{cell_name}.forward", f"{cell_name}.backward"
    get_kernel(fwd, backend), get_kernel(bwd, backend)      # fail early, with the reason, if missing
    why = load_backend(backend).unsupported_dtype(fwd, str(dtype)) if dtype is not None else ""
    if why:
        raise UnsupportedError(f"backend {backend!r} cannot run the {cell_name} cell in {dtype}: {why}; use dtype "
                               f"float32 (--dtype float32) or another backend")
    layers = load_backend(backend).layers
    if device:
        return CellKernels(get_kernel(fwd, backend), get_kernel(bwd, backend), backend, True, layers)
    return CellKernels(lambda *a, **k: call(fwd, backend, *a, **k), lambda *a, **k: call(bwd, backend, *a, **k),
                       backend, layers=layers)


class EPKernels(NamedTuple):
    """The relaxation loops of the static EP networks on one backend, with NumPy in and out (what refimpl.ep.networks
    calls when given kernels), each with the signature of its kernel:

        free_phase(params, x, T, kind, activation, dt) -> [s_l]
        nudged_phase(params, x, T, kind, activation, dt, y=, K=, beta=) -> [s^β_l]
        bptt(params, x, T, kind, activation, dt, y=, K=) -> {param: grad}
    """
    free_phase: Callable
    nudged_phase: Callable
    bptt: Callable
    backend: str = "numpy"


#: The kernels of EPKernels, in its field order.
EP_KERNEL_NAMES = ("ep.free_phase", "ep.nudged_phase", "ep.bptt")


def ep_kernels(backend: str = "numpy", dtype: str | None = None) -> EPKernels:
    """The EP relaxation kernels on a backend. With `dtype`, a backend that cannot run them in that dtype (MLX's float64
    away from its CPU stream) is refused here, with the fix."""
    for name in EP_KERNEL_NAMES:
        get_kernel(name, backend)                            # fail early, with the reason, if missing
        why = load_backend(backend).unsupported_dtype(name, str(dtype)) if dtype is not None else ""
        if why:
            raise UnsupportedError(f"backend {backend!r} cannot run the EP relaxation ({name}) in {dtype}: {why}; "
                                   f"use dtype float32 (--dtype float32) or another backend")
    return EPKernels(*(partial(call, name, backend) for name in EP_KERNEL_NAMES), backend)


def flatten_outputs(tree, prefix: str = "") -> dict:
    """Name every array in a kernel's output tree ('h', 'cache.r', 'grads.weight_hh' …) for field-by-field checks."""
    out = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(flatten_outputs(v, f"{prefix}{k}."))
    elif isinstance(tree, tuple) and hasattr(tree, "_fields"):
        for k, v in zip(tree._fields, tree):
            out.update(flatten_outputs(v, f"{prefix}{k}."))
    elif isinstance(tree, (tuple, list)):
        for i, v in enumerate(tree):
            out.update(flatten_outputs(v, f"{prefix}{i}."))
    else:
        out[prefix.rstrip(".")] = tree
    return out


def coverage() -> list[dict]:
    """One row per backend: name, available, reason, implemented kernels, missing kernels, and the kernel × dtype
    cases it cannot run here ({reason: ["lru.forward float64", …]}, e.g. MLX's missing complex128)."""
    rows = []
    for name, spec in BACKENDS.items():
        b = load_backend(name)
        unsupported = {}
        for k, kspec in KERNELS.items():
            if k in b.kernels:
                for d in kspec.dtypes:
                    why = b.unsupported_dtype(k, d)
                    if why:
                        unsupported.setdefault(why, []).append(f"{k} {d}")
        rows.append({"backend": name, "description": spec.description, "available": b.available,
                     "reason": b.reason, "kernels": sorted(k for k in KERNELS if k in b.kernels),
                     "missing": sorted(k for k in KERNELS if k not in b.kernels), "unsupported": unsupported})
    return rows

