"""The array namespace: one array code for the model's batched parts, whatever holds the arrays (DESIGN.md §6).

The kernels are the sequential loops, and each backend writes its own. Everything else — the layers of
refimpl/nn/layers.py, the losses, the poolings, the optimizer — is batched array code, written ONCE against the Python
array API standard (https://data-apis.org/array-api/) and run in the arrays it is given: NumPy for the reference (the
readable, cited version: the same functions with xp = NumPy), CuPy on a GPU, MLX through the adapter of
backends/mlx/xp.py. A function finds its namespace from its arguments:

    xp = namespace(x, w)          array_api_compat's for NumPy and CuPy arrays; a registered adapter for others

The vocabulary the array code may use (what every namespace here provides; nothing outside it):

    creation        asarray(a, dtype=), zeros(shape, dtype=), zeros_like, ones_like, full(shape, v, dtype=), arange
    elementwise     + − * / ** @ and comparisons; abs, exp, log, log1p, sqrt, tanh, sign, maximum, minimum, where,
                    real, imag, conj, isfinite, square, clip(x, lo, hi)
    reductions      sum, mean, max, min, all, any, argmax   (axis=, keepdims=); cumulative_sum(x, axis=)
    linear algebra  matmul, matrix_transpose, tensordot(a, b, axes=)
    manipulation    reshape, concat, stack, expand_dims, broadcast_to, permute_dims, take_along_axis(x, i, axis=)
    dtypes          astype(x, dtype), x.dtype, x.shape, x.ndim; the dtype objects xp.float32, float64, complex64,
                    complex128 (namespace dtype of a NumPy dtype: dtype_of)
    indexing        basic slicing only, never assignment into an array (MLX and JAX arrays are immutable): build new
                    arrays with where / concat / stack

No NumPy-only function (einsum, add.at, in-place ops) appears in that code; a NumPy scalar or array mixed in is
converted by the namespace's asarray first. Crossings between the host and a device are explicit: the backend's
to_backend / to_numpy (refimpl/registry.py), which count them (tests/backends: a training step on a device crosses
only for logging).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

#: array type → its namespace, registered by a backend when it is loaded (MLX's adapter); checked before
#: array_api_compat, in registration order.
_ADAPTERS: list[tuple[type, Any]] = []


def register_namespace(array_type: type, xp) -> None:
    """Make `xp` the namespace of arrays of `array_type` (a backend's adapter of a non-conforming array library)."""
    if not any(t is array_type for t, _ in _ADAPTERS):
        _ADAPTERS.append((array_type, xp))


def namespace(*arrays):
    """The array namespace of the arrays (they must share one): a registered adapter, or array_api_compat's (NumPy,
    CuPy). Python scalars and None are ignored; no array at all means NumPy's."""
    arrays = [a for a in arrays if a is not None and not isinstance(a, (int, float, complex, bool))]
    if arrays and all(type(a) is np.ndarray for a in arrays):      # the reference's case, asked per time step
        return _numpy_namespace()
    for array_type, xp in _ADAPTERS:
        if arrays and isinstance(arrays[0], array_type):
            return xp
    import array_api_compat
    if not arrays:
        return array_api_compat.numpy
    return array_api_compat.array_namespace(*arrays)


@functools.cache
def _numpy_namespace():
    """array_api_compat's namespace of NumPy arrays (what array_namespace returns for them), looked up once."""
    import array_api_compat
    return array_api_compat.array_namespace(np.zeros(0))


def dtype_of(xp, dtype) -> Any:
    """The namespace's dtype object for a NumPy dtype (or its name): float32, float64, complex64, complex128."""
    return getattr(xp, np.dtype(dtype).name)


def is_numpy(xp) -> bool:
    """Whether xp is NumPy's namespace (plain NumPy or array_api_compat's wrapper of it)."""
    return xp is np or getattr(xp, "__name__", "") in ("numpy", "array_api_compat.numpy")

