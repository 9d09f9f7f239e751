"""Parity of every backend's kernels with the NumPy reference, generated from the kernel registry (DESIGN.md §6).

Nothing here is maintained by hand: the grid is kernels × variants × backends × dtypes × sizes × seeds, read from the
registry's table (refimpl/kernels.py). A backend that cannot run here, lacks a kernel, or cannot run it in a dtype is
skipped with its reason — never silently dropped. Each case also checks the backend path itself (lookup, conversion at
the boundary, no mutation, named outputs). Backend-specific checks are in test_numba.py, test_mlx.py and test_cupy.py.
"""

import pytest

from refimpl.registry import BACKENDS, KERNELS, load_backend

from ..parity import assert_matches_reference, skip_unless_runs

# Sizes chosen to break kernels (STYLE.md §9): all-ones, B=1 with a prime T, H not a multiple of 32, one realistic size.
SIZES = [dict(T=1, B=1, I=1, H=1), dict(T=13, B=1, I=2, H=3), dict(T=7, B=3, I=5, H=51), dict(T=64, B=8, I=16, H=64)]
SEEDS = [0, 1]


def _cases():
    for kernel, spec in KERNELS.items():
        for variant in spec.variants:
            for backend in BACKENDS:
                for dtype in spec.dtypes:
                    for size in spec.sizes or SIZES:
                        for seed in SEEDS:
                            tag = "-".join(f"{v}" for v in variant.values())
                            yield pytest.param(kernel, variant, backend, dtype, size, seed,
                                               id=f"{backend}-{kernel}{'-' + tag if tag else ''}-{dtype}-"
                                                  f"T{size['T']}B{size['B']}I{size['I']}H{size['H']}-s{seed}")


@pytest.mark.parametrize("kernel,variant,backend,dtype,size,seed", list(_cases()))
def test_backend_matches_reference(kernel, variant, backend, dtype, size, seed):
    skip_unless_runs(backend, kernel, dtype)
    assert_matches_reference(kernel, backend, dtype, size, seed, variant)


def test_every_cell_has_forward_and_backward_kernels():
    from refimpl.cells import CELLS
    for cell in CELLS:
        assert f"{cell}.forward" in KERNELS and f"{cell}.backward" in KERNELS


def test_every_reference_is_a_named_function():
    """Kernel <cell>.<op> has the reference <cell>_<op> in refimpl/kernels.py (the backends' name for it), or the cell
    module's own forward/backward: one name to grep and diff."""
    import refimpl.kernels as table
    from refimpl.cells import CELLS
    for name, spec in KERNELS.items():
        cell, op = name.split(".")
        if op in ("forward", "backward"):
            assert spec.reference is getattr(CELLS[cell], op), name
        else:
            assert spec.reference is getattr(table, f"{cell}_{op}", None), name
            assert spec.reference.__name__ == f"{cell}_{op}", name


def test_the_table_is_complete_for_whoever_imports_the_registry():
    """A fresh interpreter that imports only refimpl.registry (mechanism, no content) sees every kernel of the table
    (43: refimpl/kernels.py), and the numpy backend implements them all: refimpl/__init__.py imports the table."""
    import subprocess
    import sys
    code = ("from refimpl.registry import KERNELS, load_backend; "
            "print(len(KERNELS), len(load_backend('numpy').kernels))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    import refimpl.kernels as table
    expected = 8 + len(table.RTRL_SWEEPS) + len(table.FPTT_SWEEPS) + len(table.EP_RELAXATIONS)    # + forward/backward
    assert expected == 43
    assert out.stdout.split() == [str(expected), str(expected)]


def _signature_arguments(signature: str) -> list:
    """The required argument names of a registered signature string, '(params, x (T,B,I), h0 (B,H), carry=None) -> …'
    → [params, x, h0]: the first word of each argument at the top level of the outer parentheses, without those
    written with a default."""
    args, depth, current = [], 0, ""
    for ch in signature[1:]:
        if depth == 0 and ch in ",)":
            if "=" not in current.split()[0]:
                args.append(current.split()[0])
            current = ""
            if ch == ")":
                return args
            continue
        depth += (ch in "([{") - (ch in ")]}")
        current += ch
    raise AssertionError(f"unbalanced signature {signature!r}")


def test_the_signatures_name_the_references_arguments():
    """Each kernel's registered signature lists its reference's required arguments, in order (the keyword options
    with a default are its variants)."""
    import inspect
    for name, spec in KERNELS.items():
        required = [p.name for p in inspect.signature(spec.reference).parameters.values() if p.default is p.empty]
        assert _signature_arguments(spec.signature) == required, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_kernels_take_the_references_arguments(backend):
    """Each backend kernel takes its reference's arguments, by the same names in the same order; what it takes beyond
    them has a default (a backend's own tuning option, never an argument the caller must pass)."""
    import inspect
    b = load_backend(backend)
    for name, spec in KERNELS.items():
        if name not in b.kernels:
            continue
        want = list(inspect.signature(spec.reference).parameters.values())
        got = list(inspect.signature(b.kernels[name]).parameters.values())
        assert [p.name for p in got[:len(want)]] == [p.name for p in want], (backend, name)
        assert all(p.default is not p.empty for p in got[len(want):]), (backend, name)
