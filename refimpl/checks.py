"""Input validation shared by the public API: shapes, dtypes and finiteness (DESIGN.md §2, §8).

The checks run once at the API boundary (`refimpl.api`), never inside the hot loops, so the cell modules stay
readable and the kernels stay fast.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .errors import DTypeError, NonFiniteError, ShapeError, TooBigError, UnknownNameError, UnsupportedError

#: The real dtypes refimpl supports, by name. float64 is the default everywhere (DESIGN.md §2).
REAL_DTYPES = {"float64": np.dtype(np.float64), "float32": np.dtype(np.float32)}
#: The complex dtype that goes with each real dtype (LRU states).
COMPLEX_OF = {np.dtype(np.float64): np.dtype(np.complex128), np.dtype(np.float32): np.dtype(np.complex64)}


def resolve_dtype(dtype) -> np.dtype:
    """'float64' | 'float32' | np.float64 | np.dtype → np.dtype; anything else is an UnknownNameError."""
    try:
        d = np.dtype(dtype)
    except TypeError:
        d = None
    if d is None or d not in COMPLEX_OF:
        raise UnknownNameError("dtype", dtype, REAL_DTYPES, "pass dtype='float64' (default) or dtype='float32'")
    return d


def positive_int(label: str, value) -> int:
    """A size or count as an int ≥ 1 (bools and non-integers refused, with the label in the message)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UnsupportedError(f"{label} must be a positive integer, got {value!r}")
    return int(value)


def complex_dtype(real: np.dtype) -> np.dtype:
    return COMPLEX_OF[np.dtype(real)]


def check_array(name: str, a, shape: Sequence[tuple[str, int | None]], dtype=None, *, hint: str = "") -> np.ndarray:
    """Check that `a` is an ndarray of the given symbolic shape and dtype, with finite entries.

    Args:
        name: the argument's name, used in messages ("x", "dh", "params['weight_hh']").
        a: the value to check.
        shape: one (letter, size) pair per axis, e.g. (("T", None), ("B", None), ("I", 4)); size None = any.
        dtype: required dtype (np.dtype) or None for any floating/complex dtype.
        hint: how to fix it, appended to shape errors.
    Returns:
        `a` unchanged (no copy, no cast: silent casts hide bugs).
    """
    letters = "(" + ", ".join(ltr for ltr, _ in shape) + ")"
    if not isinstance(a, np.ndarray):
        raise DTypeError(f"{name} must be a numpy.ndarray of shape {letters}, got {type(a).__name__}; "
                         f"convert it with numpy.asarray(...)")
    if a.ndim != len(shape):
        raise ShapeError(f"{name} must have {len(shape)} dimensions {letters}, got shape {a.shape}"
                         + (f"; {hint}" if hint else ""))
    for axis, ((letter, size), got) in enumerate(zip(shape, a.shape)):
        if size is not None and got != size:
            want = letters.replace(letter, f"{letter}={size}", 1) if len(letter) == 1 else letters
            raise ShapeError(f"{name} has shape {a.shape} but {want} is required (axis {axis}, {letter}, "
                             f"must be {size})" + (f"; {hint}" if hint else ""))
        if got == 0:
            raise ShapeError(f"{name} has shape {a.shape}: axis {axis} ({letter}) is empty; every axis needs size ≥ 1")
    if dtype is not None and a.dtype != np.dtype(dtype):
        raise DTypeError(f"{name} has dtype {a.dtype} but {np.dtype(dtype)} is required (it must match the "
                         f"cell/model dtype); convert it with .astype(numpy.{np.dtype(dtype).name}) or make the "
                         f"cell/model with the other dtype")
    if dtype is None and not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.complexfloating)):
        raise DTypeError(f"{name} has dtype {a.dtype}; a floating-point array is required")
    check_finite(name, a)
    return a


#: Entries checked at a time by check_finite: its temporary stays this small whatever the size of the array (a long
#: sequence's x is checked without a second array of its size, so the online algorithms' memory stays flat in T).
FINITE_BLOCK = 2**16


def check_finite(name: str, a: np.ndarray) -> None:
    """Raise NonFiniteError naming the first bad entry if `a` holds NaN or inf (checked FINITE_BLOCK entries at a
    time)."""
    a = np.asarray(a)
    flat = a.reshape(-1)                                      # a view of a contiguous array
    for start in range(0, flat.size, FINITE_BLOCK):
        block = flat[start:start + FINITE_BLOCK]
        if not np.all(np.isfinite(block)):
            bad = np.unravel_index(start + int(np.argmax(~np.isfinite(block))), a.shape)
            raise NonFiniteError(f"{name} contains non-finite values (first at index {tuple(int(i) for i in bad)}: "
                                 f"{a[bad]}); remove NaN/inf from the input before calling")


def check_params(kind: str, params: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]],
                 dtype: np.dtype) -> None:
    """Check a flat parameter dict: exactly the expected names, each with its shape and dtype, all finite."""
    if not isinstance(params, Mapping):
        raise DTypeError(f"{kind} params must be a dict {{name: ndarray}}, got {type(params).__name__}")
    missing = sorted(set(expected) - set(params))
    extra = sorted(set(params) - set(expected))
    if missing or extra:
        raise ShapeError(f"{kind} params do not match: missing {missing}, unexpected {extra}; expected exactly "
                         f"{sorted(expected)} (use the params returned by make_cell/make_model)")
    for k, shape in expected.items():
        check_array(f"params[{k!r}]", params[k], [(f"d{i}", s) for i, s in enumerate(shape)], dtype,
                    hint=f"expected shape {tuple(shape)}")


# ----------------------------------------------------------------------------------------------------------------
# Memory: refuse a run whose largest arrays cannot fit, before allocating them

def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux: MemAvailable of /proc/meminfo; elsewhere the physical
    memory), or None when the system does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import os
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def check_memory(what: str, parts: dict, knob: str) -> None:
    """Refuse (TooBigError) when the estimated bytes of `parts` ({"parameters": bytes, "states": …}) exceed the
    memory available, with the estimate per part and `knob`, the option(s) to turn."""
    need, have = sum(parts.values()), available_memory()
    if have is not None and need > have:
        detail = ", ".join(f"{name} {gib(n)}" for name, n in parts.items() if n)
        raise TooBigError(f"{what} would need about {gib(need)} of memory ({detail}), more than the {gib(have)} "
                          f"available here; {knob}")
