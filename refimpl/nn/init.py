"""Weight initialisers shared by the feed-forward (refimpl/bpfree/) and recurrent (refimpl/algorithms/projected.py)
backprop-free networks: orthogonal (Haar-distributed, gain 1) and LeCun normal (truncated at ±2σ, variance exactly
1/fan_in).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import UnknownNameError

INITS = ("orthogonal", "lecun")
_LECUN_TRUNC_STD = 0.87962566103423978   # std of a standard normal truncated to [−2, 2]


def orthogonal(shape: tuple, rng: np.random.Generator, dtype) -> np.ndarray:
    """An (m, n) matrix with orthonormal columns (m ≥ n) or rows (m < n), gain 1."""
    m, n = shape
    a = rng.standard_normal((max(m, n), min(m, n)))
    q, r = np.linalg.qr(a)                                            # q (max, min), orthonormal columns
    q = q * np.where(np.diag(r) < 0, -1.0, 1.0)                       # unique: diag(R) > 0 (Haar-distributed Q)
    return (q if m >= n else q.T).astype(dtype)


def lecun_normal(shape: tuple, fan_in: int, rng: np.random.Generator, dtype) -> np.ndarray:
    """N(0, 1/fan_in) truncated at ±2 standard deviations, rescaled to variance exactly 1/fan_in."""
    z = rng.standard_normal(shape)
    bad = np.abs(z) > 2.0
    while np.any(bad):                                                # redraw the tails
        z[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(z) > 2.0
    return (z * (math.sqrt(1.0 / fan_in) / _LECUN_TRUNC_STD)).astype(dtype)


def init_matrix(scheme: str, shape: tuple, fan_in: int, rng: np.random.Generator, dtype, what: str) -> np.ndarray:
    """A weight matrix drawn by `scheme` (orthogonal | lecun); `what` names it in the error for an unknown scheme."""
    if scheme not in INITS:
        raise UnknownNameError(f"{what} init scheme", scheme, INITS)
    return orthogonal(shape, rng, dtype) if scheme == "orthogonal" else lecun_normal(shape, fan_in, rng, dtype)
