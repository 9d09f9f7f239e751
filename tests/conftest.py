"""Shared test fixtures and markers (slow, gpu, mlx; see setup.cfg)."""

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """A test parametrized with backend="cupy" needs a GPU as much as one marked @pytest.mark.gpu: it gets the mark,
    so that `pytest -m gpu` (bench/gpu_check.py) selects every check of the CuPy backend — the registry's parity
    grid, the algorithms on the backend — and nothing else."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("backend") == "cupy":
            item.add_marker(pytest.mark.gpu)
