"""The one parity helper: a backend's kernel against the NumPy reference, field by field, by name.

`assert_matches_reference(kernel, backend, dtype, size, seed, variant)` draws one seeded input set from the kernel's
registered input spec (refimpl/kernels.py), runs the reference and the backend (through registry.call: explicit
conversion at the boundary), and compares every output, every cache field and every gradient by name: same names,
dtype, shape, and relative error within TOLERANCES["backend_vs_reference"][dtype] (DESIGN.md §7). Before asserting it
prints the worst error, with the field name and index. It also asserts that neither call mutated its inputs.
"""

from __future__ import annotations

import copy

import numpy as np

from refimpl.numerics import TOLERANCES, rel_error
from refimpl.registry import KERNELS, call, flatten_outputs


def skip_unless_runs(backend: str, kernel: str, dtype: str):
    """The loaded backend, or pytest.skip with the reason it cannot run `kernel` in `dtype` here."""
    import pytest

    from refimpl.registry import load_backend
    b = load_backend(backend)
    if not b.available:
        pytest.skip(f"backend {backend}: {b.reason}")
    if kernel not in b.kernels:
        pytest.skip(f"backend {backend} does not implement {kernel}")
    why = b.unsupported_dtype(kernel, dtype)
    if why:
        pytest.skip(f"backend {backend}, {kernel} in {dtype}: {why}")
    return b


def make_case_inputs(kernel: str, dtype: str, size: dict, seed: int, variant: dict) -> dict:
    return KERNELS[kernel].make_inputs(np.random.default_rng(seed), np.dtype(dtype), size, **variant)


def assert_matches_reference(kernel: str, backend: str, dtype: str, size: dict, seed: int, variant: dict) -> float:
    """Returns the worst relative error seen (for reporting)."""
    spec = KERNELS[kernel]
    inputs = make_case_inputs(kernel, dtype, size, seed, variant)
    snapshot = copy.deepcopy(inputs)
    want = flatten_outputs(spec.reference(**copy.deepcopy(inputs)))
    got = flatten_outputs(call(kernel, backend, **inputs))
    for name, a in flatten_outputs(inputs).items():
        b = flatten_outputs(snapshot)[name]
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b, err_msg=f"{backend} {kernel} mutated its input {name}")
    assert sorted(got) == sorted(want), f"{backend} {kernel}: outputs {sorted(got)} != reference {sorted(want)}"
    tol = TOLERANCES["backend_vs_reference"][dtype]
    worst, worst_name = 0.0, None
    for name, ref in want.items():
        out = got[name]
        assert isinstance(out, np.ndarray), f"{name}: backend returned {type(out).__name__}, not numpy"
        assert out.dtype == ref.dtype, f"{backend} {kernel} {name}: dtype {out.dtype} != reference {ref.dtype}"
        assert out.shape == ref.shape, f"{backend} {kernel} {name}: shape {out.shape} != reference {ref.shape}"
        err = rel_error(out, ref)
        if err >= worst:
            worst, worst_name = err, name
    if worst_name is not None:
        ref, out = want[worst_name], got[worst_name]
        idx = np.unravel_index(np.argmax(np.abs(out - ref)), ref.shape) if ref.size else ()
        print(f"{backend} {kernel} {dtype} {size}: worst rel.err {worst:.2e} in {worst_name!r} "
              f"(max abs diff {np.max(np.abs(out - ref)) if ref.size else 0:.2e} at {tuple(map(int, idx))})")
    assert worst <= tol, f"{backend} {kernel} {dtype}: {worst_name} relative error {worst:.2e} > {tol:.0e}"
    return worst
