r"""tanh and the logistic σ from float arithmetic only, so that the cell loops around them vectorise.

Numba lowers np.tanh on a scalar to a call into libm, one element at a time: a loop that calls it cannot be turned
into SIMD code, and the transcendental functions then cost more than the matrix products of a step. The functions
here use only +, ×, ÷, a rounding, a select and an integer bit pattern, which LLVM vectorises like any arithmetic
(with error_model="numpy" in the caller: Numba's default zero-division check also stops vectorisation); they run at
the speed of NumPy's SIMD np.tanh (docs/backends.md). Accuracy: tanh within 2.5 ulp in float32 and 2.7 ulp in float64
over a dense sweep of [−25, 25] and of magnitudes down to 1e−30, against a long-double tanh; NaN, ±inf and ±0 behave
as np.tanh (tests/backends/test_numba.py). σ has an absolute error below one ulp of 1, like
the references' own ½(1 + tanh(a/2)) in the same dtype.

    tanh(x) = sign(x) · (−m) / (2 + m),    m = expm1(−2|x|) ∈ (−1, 0]                                      (F1)
    σ(a)    = ½ + ½ tanh(a/2)                      (the references' formula, refimpl/cells/common.py)      (F2)

(F1) is exact algebra: with e = e^{−2|x|}, tanh|x| = (1 − e)/(1 + e) = −m/(2 + m) for m = e − 1. Writing it with
expm1 rather than exp avoids the cancellation 1 − e for small |x|, so the relative error stays small down to 0.

expm1 by Cody–Waite range reduction. For y ≤ 0 (clamped at −40: tanh(20) rounds to 1 in both precisions),

    k = round(y / ln 2),    r = (y − k·L_hi) − k·L_lo,    |r| ≤ ½ ln 2                                     (F3)
    expm1(y) = 2^k (e^r − 1) + (2^k − 1) = s · p(r) + (s − 1),    s = 2^k                                 (F4)
    p(r) = r + r²/2! + … + r^d/d!   (Taylor; d = 7 for float32, 13 for float64)                           (F5)

L_hi + L_lo = ln 2 with L_hi holding only the leading bits of ln 2 (12 for float32, 32 for float64), so that k·L_hi
is exact for |k| ≤ 58 and (F3) loses nothing to cancellation. The truncation error of (F5) at |r| = ½ ln 2,
relative to p, is about (½ ln 2)^d / (d+1)!: 1.5e-8 (d = 7) against float32's half-ulp 6.0e-8, and 1.2e-17
(d = 13) against float64's 1.1e-16. s = 2^k is built from its bit pattern, (k + bias) shifted into the exponent
field; s − 1 is exact for every k that matters, and for k = 0 (|y| < ½ ln 2) (F4) is p(r) itself.

The functions are overloads: inside @njit code `tanh(x)` / `sigmoid(a)` compile to the arithmetic above, specialised
to x's dtype (the constants are cast to it, so float32 stays float32 and the SIMD width is not halved); called from
plain Python they fall back to NumPy. Only FMA contraction is allowed (fastmath={"contract"}): no reassociation,
which would undo the exact splitting in (F3). These are the backend's only tanh and σ: every cell loop calls them
through the gate functions of cells.py. Numba's on-disk cache of a caller is keyed to the caller's file only: after
editing this module, clear backends/numba/__pycache__ (or touch the callers) to recompile them.
"""

from __future__ import annotations

import math
from decimal import Decimal, getcontext
from math import factorial

import numpy as np
from numba import types
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload

__all__ = ["tanh", "sigmoid"]

_FAST = {"fastmath": {"contract"}, "error_model": "numpy"}


def tanh(x):
    """tanh(x), eq. (F1): a float32 or float64 scalar inside @njit code; np.tanh from plain Python."""
    return np.tanh(x)


def sigmoid(a):
    """σ(a) = ½ + ½ tanh(a/2), eq. (F2): a float32 or float64 scalar inside @njit code."""
    return 0.5 + 0.5 * np.tanh(0.5 * a)


def _constants(dtype, hi_bits: int, degree: int, bias: int, mbits: int) -> dict:
    """The constants of (F3)–(F5) for one dtype, derived here from 50-digit ln 2."""
    getcontext().prec = 50
    ln2 = Decimal(2).ln()
    hi = Decimal(int(ln2 * 2 ** hi_bits)) / 2 ** hi_bits          # leading hi_bits bits of ln 2 (ln 2 < 1)
    f = np.dtype(dtype).type
    itype = np.int32 if f is np.float32 else np.int64
    return dict(f=f, itype=itype, inv_ln2=f(1 / ln2), ln2_hi=f(hi), ln2_lo=f(ln2 - hi), bias=itype(bias),
                mbits=itype(mbits), coef=tuple(f(1.0 / factorial(j)) for j in range(degree, 0, -1)))


_CONSTS = {types.float32: _constants(np.float32, hi_bits=12, degree=7, bias=127, mbits=23),
           types.float64: _constants(np.float64, hi_bits=32, degree=13, bias=1023, mbits=52)}


def _consts_for(t) -> dict:
    if t not in _CONSTS:
        raise TypingError(f"backends.numba.fastmath takes a float32 or float64 scalar, not {t}")
    return _CONSTS[t]


@intrinsic
def _as_float(typingctx, bits):
    """Reinterpret an int32 (int64) bit pattern as a float32 (float64): LLVM's bitcast, free and vectorisable."""
    target = {types.int32: types.float32, types.int64: types.float64}.get(bits)
    if target is None:
        raise TypingError(f"_as_float takes int32 or int64, not {bits}")

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(target))
    return target(bits), codegen


def _horner(r):
    """Dummy: (F5) through the overload below (the coefficient tuple is fixed at typing time)."""
    raise NotImplementedError


@overload(_horner, jit_options=_FAST)
def _horner_impl(r):
    coef = _consts_for(r)["coef"]
    n = len(coef)

    def impl(r):
        q = coef[0]
        for j in range(1, n):                                     # unrolled by LLVM: n is a compile-time constant
            q = q * r + coef[j]
        return q * r                                              # (F5) r + r²/2! + … + r^d/d!
    return impl


def _expm1_neg(y):
    """Dummy: expm1(y) for y ≤ 0, eqs. (F3)–(F4), through the overload below."""
    raise NotImplementedError


@overload(_expm1_neg, jit_options=_FAST)
def _expm1_neg_impl(y):
    c = _consts_for(y)
    f, itype = c["f"], c["itype"]
    inv_ln2, ln2_hi, ln2_lo, bias, mbits = c["inv_ln2"], c["ln2_hi"], c["ln2_lo"], c["bias"], c["mbits"]
    lower, half, one = f(-40.0), f(0.5), f(1.0)

    def impl(y):
        y = lower if y < lower else y                             # (NaN stays NaN: tanh(NaN) is NaN)
        kf = np.floor(y * inv_ln2 + half)                         # (F3) k = round(y / ln 2)
        r = (y - kf * ln2_hi) - kf * ln2_lo                       # (F3)
        s = _as_float(itype((itype(kf) + bias) << mbits))         # s = 2^k from its bit pattern
        return s * _horner(r) + (s - one)                         # (F4)
    return impl


@overload(tanh, jit_options=_FAST)
def _tanh_impl(x):
    f = _consts_for(x)["f"]
    zero, two, minus_two = f(0.0), f(2.0), f(-2.0)

    def impl(x):
        ax = x if x >= zero else -x
        m = _expm1_neg(minus_two * ax)                            # (F1) m = expm1(−2|x|)
        t = (zero - m) / (two + m)                                # (F1) tanh|x| (+0 at x = 0)
        return math.copysign(t, x)                                # sign(x) · tanh|x|, −0 kept
    return impl


@overload(sigmoid, jit_options=_FAST)
def _sigmoid_impl(a):
    half = _consts_for(a)["f"](0.5)

    def impl(a):
        return half + half * tanh(half * a)                       # (F2)
    return impl
