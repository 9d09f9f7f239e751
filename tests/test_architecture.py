"""The architecture of the house (.importlinter): the contracts hold on this tree, and breaking one is caught.

`make test` runs the contracts itself before pytest; these tests also show that the check can fail: a copy of the
tree where a cell imports the trainer (an arrow up the layers), or where one backend imports another, is refused with
the contract's name and the offending import.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("refimpl", "backends", "tasks", "bench")
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LINT, "--no-cache", "--no-logo"], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def _copy_tree(dest: Path) -> Path:
    for name in PACKAGES:
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.o"))
    shutil.copy(ROOT / ".importlinter", dest / ".importlinter")
    return dest


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}\n", encoding="utf-8")


def test_contracts_hold():
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "broken" not in r.stdout.lower().replace("0 broken", ""), r.stdout


@pytest.mark.parametrize("file, line, contract, arrow", [
    ("refimpl/cells/common.py", "from ..training import loop", "refimpl is layered by the flow of data",
     "refimpl.cells.common -> refimpl.training.loop"),
    ("refimpl/nn/layers.py", "from ..algorithms import rtrl", "refimpl is layered by the flow of data",
     "refimpl.nn.layers -> refimpl.algorithms.rtrl"),
    ("refimpl/api.py", "import backends.numba", "refimpl imports no backend", "refimpl.api -> backends.numba"),
    ("backends/mlx/__init__.py", "from backends.numba import KERNELS", "the backends are independent of each other",
     "backends.mlx -> backends.numba"),
])
def test_a_broken_contract_is_refused(tmp_path, file, line, contract, arrow):
    """One import added against the architecture: the linter fails, naming the contract and the import."""
    tree = _copy_tree(tmp_path)
    _append(tree / file, line + "  # noqa: the import that breaks the contract")
    r = _lint(tree)
    assert r.returncode != 0, r.stdout
    assert contract in r.stdout and "BROKEN" in r.stdout, r.stdout
    assert arrow in r.stdout, r.stdout
