"""Keep the README true: its API example runs, and its cells × algorithms table matches the code."""

import re
from pathlib import Path

from refimpl.algorithms import ALGORITHMS
from refimpl.cells import CELLS
from refimpl.registry import KERNELS, load_backend

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def test_api_example_runs():
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert set(namespace["grads"]) >= {"weight_ih", "x", "h0"}
    assert "layers.0.cell.nu_log" in namespace["mgrads"]


def test_algorithm_table_matches_the_registry():
    header = next(line for line in README.splitlines() if line.startswith("| cell |"))
    columns = [c.strip().strip("`") for c in header.strip("|").split("|")][1:]
    rows = [line for line in README.splitlines() if re.match(r"\| `(rnn|gru|lstm|lru)`", line)]
    assert {re.match(r"\| `(\w+)`", r).group(1) for r in rows} == set(CELLS)
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        for column, text in zip(columns, cells):
            names = [n.strip().strip("`") for n in column.split("/")]
            implemented = all(ALGORITHMS[n].implemented for n in names)
            if "lstm only" in text:                       # a rule that exists for one cell only
                continue
            assert ("✅" in text) == implemented, f"README says {text!r} for {column} in {row!r}"


def test_backend_table_matches_the_registry():
    for name in ("numba", "mlx", "cupy"):
        row = next(line for line in README.splitlines() if line.startswith(f"| `{name}`"))
        written = load_backend(name).kernels
        assert ("planned" in row) == (not written), f"README row for {name} is out of date: {row}"
        if written:
            assert f"{len(written)} of {len(KERNELS)}" in row or f"all {len(KERNELS)}" in row, row
    numpy_row = next(line for line in README.splitlines() if line.startswith("| `numpy`"))
    assert f"all {len(KERNELS)}" in numpy_row
