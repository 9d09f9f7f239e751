"""Numerical comparison tools: central finite differences, relative error, cosine, the tolerance table.

These are the oracles of promise 2 ("exactness you can check"); tests and the `gradcheck` command both use them.
Complex arrays follow the adjoint convention of DESIGN.md §4: for z = a + i b the gradient is ∂L/∂a + i ∂L/∂b.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

TINY = 1e-30


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """‖a − b‖ / max(‖b‖, tiny) (DESIGN.md §7): b is the reference."""
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm((a - b).ravel()) / max(float(np.linalg.norm(b.ravel())), TINY))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Re⟨a, b⟩ / (‖a‖‖b‖); 1.0 when both are zero, 0.0 when exactly one is."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.real(np.vdot(b, a)) / (na * nb))


#: Whether np.longdouble is wider than float64 here (80-bit x87 on x86-64 Linux; plain float64 on macOS arm64/MSVC).
EXTENDED = bool(np.finfo(np.longdouble).eps < 1e-18)


def extended(a: np.ndarray) -> np.ndarray:
    """The same values in extended precision (np.longdouble / np.clongdouble), for finite-difference oracles.

    A float64 loss carries a roundoff of about ε·|L|, so a float64 central difference with eps = 1e-6 errs by about
    ε/eps ≈ 2e-10 per entry: for a parameter whose gradient is tiny (norm 1e-5) that is already 1e-5 relative. The
    differences are therefore evaluated in extended precision, at the same (cast, not redrawn) test point.
    Where longdouble is plain float64 this returns `a` unchanged.
    """
    if not EXTENDED:
        return a
    return a.astype(np.clongdouble if np.iscomplexobj(a) else np.longdouble)


def central_differences(loss: Callable[[Mapping[str, np.ndarray]], float], inputs: Mapping[str, np.ndarray],
                        eps: float = 1e-6, keys=None) -> dict:
    """∂loss/∂inputs[k] for every k (or only `keys`) by central differences, one entry at a time.

    `loss` receives a dict with the same keys as `inputs`, one entry perturbed by ±eps (and ±i·eps for complex
    arrays), and returns a real scalar. Inputs are never modified: each evaluation gets copies.
    Cost: 2 loss calls per real entry, 4 per complex entry. Use float64 and tiny shapes.
    """
    keys = list(inputs) if keys is None else list(keys)
    grads = {}
    for k in keys:
        base = inputs[k]
        g = np.zeros(base.shape, dtype=base.dtype)
        directions = (1.0, 1j) if np.iscomplexobj(base) else (1.0,)
        for idx in np.ndindex(base.shape):
            for direction in directions:
                vals = []
                for sign in (+1.0, -1.0):
                    perturbed = base.copy()
                    perturbed[idx] += sign * eps * direction
                    vals.append(loss({**inputs, k: perturbed}))
                g[idx] += direction * (vals[0] - vals[1]) / (2 * eps)
        grads[k] = g
    return grads


#: The tolerances of DESIGN.md §7, in one table (relative error per array).
TOLERANCES = {
    "exact_vs_bptt": {"float64": 1e-10, "float32": 1e-4},   # an exact algorithm vs BPTT (float32: vs a float64 BPTT)
    # FPTT inverts the Jacobians: 1e-8 where their product is well conditioned (|λ| ≥ 0.9 for the lru); float32 states
    # with float64 carriers lose more than float32 rounding once T grows (docs/derivations/fptt.md)
    "fptt_vs_bptt": {"float64": 1e-8, "float32": 1e-3},
    "bptt_vs_fd": 1e-6,                                      # BPTT vs central differences, float64
    "backend_vs_reference": {"float64": 1e-10, "float32": 1e-4},
}
