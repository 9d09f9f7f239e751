r"""The array namespace of MLX: THE VOCABULARY of refimpl/arrays.py on mlx.core.

MLX's functions are close to the array API standard but not the same (mx.concatenate for concat, mx.transpose for
permute_dims, no astype function, float64 ndarrays becoming float32 in mx.array …). `XP`, the adapter below, gives
the model's batched array code (refimpl/nn, the losses, the optimizer) the names and signatures it is written
against, so that `xp = refimpl.arrays.namespace(x)` works for mx.array exactly as for NumPy and CuPy arrays. The
registry registers it when the MLX backend is loaded (backends/mlx/__init__.py: NAMESPACE = (mx.array, XP)).

    array API                               MLX
    concat(arrays, axis=0)                  mx.concatenate
    permute_dims(x, axes)                   mx.transpose
    matrix_transpose(x)                     mx.swapaxes(x, -1, -2)
    astype(x, dtype)                        x.astype(dtype)
    conj(x)                                 mx.conjugate
    clip(x, min, max)                       mx.clip(x, a_min, a_max)
    argmax(x, axis=, keepdims=)             mx.argmax, as int32 (MLX's is uint32, which wraps under subtraction)
    exp(x)                                  mx.exp, except in float64 (below)
    the rest                                the mx function of the same name and signature

The boundary. asarray of anything that is not an mx.array or a Python scalar (a NumPy array or scalar, a list) is host
data: it crosses to the device through the backend's to_backend — the registry counts it as a crossing
(Backend.crossings["to_backend"]), and the dtype is NumPy's (float64 stays float64: mx.array alone would make it
float32) unless dtype= is given, in which case the conversion to that dtype happens on the host first. Every function
here passes its array arguments through the same rule, so a NumPy array mixed into the array code is a counted
crossing, never a silent one (mx's own operators, `mx_array + ndarray`, would convert it uncounted: the array code
calls asarray first, refimpl/arrays.py).

Dtypes. The dtype objects are MLX's: float32, float64, complex64, and int32, int64, uint32, bool. MLX has no
complex128: `XP.complex128` raises DTypeError with the reason (an lru in float64 is refused earlier, by the backend's
unsupported_dtype). float64 runs on MLX's CPU stream only (on Linux the default device). In float64 mx.exp is only
float32-accurate (docs/backends.md), so exp is computed from mx.expm1, which is accurate:

    exp(x) = expm1(x) + 1            for x ≥ 0
    exp(x) = 1 / (expm1(−x) + 1)     for x < 0      (no cancellation: expm1(−x) > 0)
"""

from __future__ import annotations

import numpy as np

import mlx.core as mx

from refimpl.errors import DTypeError, UnsupportedError

_PYTHON_SCALARS = (bool, int, float, complex)

#: NumPy dtype name → MLX dtype (every dtype MLX has that the array code may name).
_DTYPES = {"float32": mx.float32, "float64": mx.float64, "complex64": mx.complex64, "float16": mx.float16,
           "int32": mx.int32, "int64": mx.int64, "uint32": mx.uint32, "bool": mx.bool_}

_NO_COMPLEX128 = ("MLX has no complex128 (only complex64): use float32 with MLX (complex64 lru states), or the "
                  "numpy/numba/cupy backends for complex128")


def mx_dtype(dtype) -> "mx.Dtype | None":
    """The MLX dtype of `dtype` (an mx.Dtype, a NumPy dtype or its name); None stays None. DTypeError for complex128 and
    for dtypes MLX lacks."""
    if dtype is None or isinstance(dtype, mx.Dtype):
        return dtype
    name = np.dtype(dtype).name
    if name == "complex128":
        raise DTypeError(f"dtype complex128 on MLX: {_NO_COMPLEX128}")
    if name not in _DTYPES:
        raise DTypeError(f"dtype {name} on MLX: the array code uses {', '.join(_DTYPES)}")
    return _DTYPES[name]


def numpy_dtype(dtype) -> np.dtype:
    """The NumPy dtype of an MLX dtype (e.g. for converting host data before it crosses)."""
    return np.dtype(str(dtype).rsplit(".", 1)[-1].rstrip("_"))


def _to_device(a, dtype=None) -> "mx.array":
    """Host data → mx.array through the backend's to_backend (one counted crossing); dtype conversion on the host."""
    from refimpl.registry import load_backend
    host = np.asarray(a) if dtype is None else np.asarray(a, dtype=numpy_dtype(dtype))
    if host.dtype == np.complex128:
        raise DTypeError(f"a complex128 NumPy array given to MLX's asarray: {_NO_COMPLEX128}; or pass "
                         f"dtype=xp.complex64 to convert it")
    return load_backend("mlx").to_backend(host)


def _python_scalar(a) -> bool:
    """A Python bool, int, float or complex — not a NumPy scalar (np.float64 is a float subclass, but host data of a
    fixed dtype: mx.array would make it float32)."""
    return isinstance(a, _PYTHON_SCALARS) and not isinstance(a, np.generic)


def _in(a):
    """An argument of a vocabulary function: mx.array and Python scalars as they are; host data crosses (counted)."""
    if isinstance(a, mx.array) or _python_scalar(a):
        return a
    return _to_device(a)


def _axis(axis):
    """axis= for mx: an int, None, or a list (MLX takes a list where the standard takes a tuple)."""
    return list(axis) if isinstance(axis, tuple) else axis


def _unary(fn):
    """The standard's f(x, /) on an mx function (its argument through _in)."""
    def f(x, /):
        return fn(_in(x))
    f.__name__ = fn.__name__
    return staticmethod(f)


def _binary(fn):
    """The standard's f(x1, x2, /) on an mx function (its arguments through _in)."""
    def f(x1, x2, /):
        return fn(_in(x1), _in(x2))
    f.__name__ = fn.__name__
    return staticmethod(f)


def _reduction(fn):
    """The standard's reduction signature (x, /, *, axis=None, keepdims=False) on an mx reduction."""
    def reduce(x, /, *, axis=None, keepdims: bool = False):
        return fn(_in(x), axis=_axis(axis), keepdims=keepdims)
    reduce.__name__ = fn.__name__
    return staticmethod(reduce)


class MLXNamespace:
    """The array API namespace of mx.array (one instance, `XP`): THE VOCABULARY of refimpl/arrays.py."""

    __name__ = "backends.mlx.xp"

    # ---------------------------------------------------------------------------------------------------- dtypes
    float32, float64, complex64, float16 = mx.float32, mx.float64, mx.complex64, mx.float16
    int32, int64, uint32, bool = mx.int32, mx.int64, mx.uint32, mx.bool_

    @property
    def complex128(self):
        raise DTypeError(f"xp.complex128 on MLX: {_NO_COMPLEX128}")

    @staticmethod
    def astype(x, dtype, /, *, copy: bool = True):
        dtype = mx_dtype(dtype)
        x = _in(x)
        return x if (x.dtype == dtype and not copy) else x.astype(dtype)

    # -------------------------------------------------------------------------------------------------- creation
    @staticmethod
    def asarray(a, /, *, dtype=None, copy=None):
        """mx.array as it is (cast to dtype if given); a Python scalar as an mx.array (MLX's default dtypes: float32
        for a float); anything else is host data, converted through the backend's to_backend (a counted crossing)."""
        dtype = mx_dtype(dtype)
        if isinstance(a, mx.array):
            return a if dtype is None or a.dtype == dtype else a.astype(dtype)
        if _python_scalar(a):
            return mx.array(a) if dtype is None else mx.array(a, dtype=dtype)
        return _to_device(a, dtype)

    @staticmethod
    def zeros(shape, *, dtype=None):
        return mx.zeros(shape, dtype=mx_dtype(dtype) or mx.float32)

    @staticmethod
    def zeros_like(x, /, *, dtype=None):
        return mx.zeros_like(_in(x), dtype=mx_dtype(dtype))

    @staticmethod
    def ones_like(x, /, *, dtype=None):
        return mx.ones_like(_in(x), dtype=mx_dtype(dtype))

    @staticmethod
    def full(shape, fill_value, *, dtype=None):
        return mx.full(shape, fill_value, dtype=mx_dtype(dtype))

    @staticmethod
    def arange(start, /, stop=None, step=1, *, dtype=None):
        if stop is None:
            start, stop = 0, start
        return mx.arange(start, stop, step, dtype=mx_dtype(dtype))

    # ----------------------------------------------------------------------------------------------- elementwise
    abs = _unary(mx.abs)

    @staticmethod
    def exp(x, /):
        """eˣ; in float64 from expm1 (mx.exp is float32-accurate there; module docstring)."""
        x = _in(x)
        if x.dtype != mx.float64:
            return mx.exp(x)
        return mx.where(x >= 0, mx.expm1(x) + 1.0, 1.0 / (mx.expm1(-x) + 1.0))

    log = _unary(mx.log)
    log1p = _unary(mx.log1p)
    sqrt = _unary(mx.sqrt)
    tanh = _unary(mx.tanh)
    sign = _unary(mx.sign)
    square = _unary(mx.square)
    maximum = _binary(mx.maximum)
    minimum = _binary(mx.minimum)

    @staticmethod
    def where(condition, x1, x2, /):
        return mx.where(_in(condition), _in(x1), _in(x2))

    real = _unary(mx.real)
    imag = _unary(mx.imag)
    conj = _unary(mx.conjugate)
    isfinite = _unary(mx.isfinite)

    @staticmethod
    def clip(x, /, min=None, max=None):
        return mx.clip(_in(x), None if min is None else _in(min), None if max is None else _in(max))

    # ------------------------------------------------------------------------------------------------ reductions
    sum = _reduction(mx.sum)
    mean = _reduction(mx.mean)
    max = _reduction(mx.max)
    min = _reduction(mx.min)
    all = _reduction(mx.all)
    any = _reduction(mx.any)

    @staticmethod
    def cumulative_sum(x, /, *, axis=None, dtype=None, include_initial: bool = False):
        if dtype is not None or include_initial:
            raise UnsupportedError("the MLX adapter's cumulative_sum takes x and axis only")
        return mx.cumsum(_in(x), axis=_axis(axis))

    @staticmethod
    def argmax(x, /, *, axis=None, keepdims: bool = False):
        return mx.argmax(_in(x), axis=axis, keepdims=keepdims).astype(mx.int32)

    # -------------------------------------------------------------------------------------------- linear algebra
    matmul = _binary(mx.matmul)

    @staticmethod
    def matrix_transpose(x, /):
        return mx.swapaxes(_in(x), -1, -2)

    @staticmethod
    def tensordot(x1, x2, /, *, axes=2):
        if not isinstance(axes, int):
            axes = [list(axes[0]), list(axes[1])]
        return mx.tensordot(_in(x1), _in(x2), axes=axes)

    # ---------------------------------------------------------------------------------------------- manipulation
    @staticmethod
    def reshape(x, /, shape, *, copy=None):
        return mx.reshape(_in(x), tuple(shape))

    @staticmethod
    def concat(arrays, /, *, axis=0):
        return mx.concatenate([_in(a) for a in arrays], axis=axis)

    @staticmethod
    def stack(arrays, /, *, axis=0):
        return mx.stack([_in(a) for a in arrays], axis=axis)

    @staticmethod
    def expand_dims(x, /, *, axis=0):
        return mx.expand_dims(_in(x), axis)

    @staticmethod
    def broadcast_to(x, /, shape):
        return mx.broadcast_to(_in(x), tuple(shape))

    @staticmethod
    def permute_dims(x, /, axes):
        return mx.transpose(_in(x), list(axes))

    @staticmethod
    def take_along_axis(x, indices, /, *, axis=-1):
        return mx.take_along_axis(_in(x), _in(indices), axis=axis)

    def __repr__(self) -> str:
        return "<the array namespace of MLX (backends.mlx.xp.XP)>"


#: The adapter: refimpl.arrays.namespace(mx_array) returns it once the backend is loaded.
XP = MLXNamespace()
