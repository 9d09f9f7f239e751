"""What every task provides: three splits of arrays and a description the trainer can act on.

Shapes: N examples, T time, I input width, O output width. Sequence inputs are time-major like the rest of refimpl.

A task's *target kind* tells the trainer how to turn its targets into a loss for a given model:

    "label"     one class per sequence, y (N,) int64 in [0, n_out).  Per-step models (pooling none /
                cumulative_mean) get the label repeated at every step (loss at every step, as the FPTT and
                online-LRU code do) and are scored on their last step; pooled models (last / mean) get y as is.
    "per_step"  targets at every step, y (T, N, O) float, with a (T, N) mask saying which steps count (the copy
                task's recall window).  Needs a per-step model.
    "final"     one real target per sequence, y (N, O) float (the adding task).  Per-step models get it at the last
                step only (the mask selects t = T−1); pooled models get y as is.
Static tasks (kind "static", for EP networks) have x (N, I) and labels y (N,).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TARGET_KINDS = ("label", "per_step", "final")


@dataclass(frozen=True)
class Split:
    """One split. x: (T, N, I) for sequence tasks, (N, I) for static ones (an ndarray, or for listops an array-like
    that np.asarray turns into one: tasks.listops.OneHot); y: see the module doc;
    mask: (T, N) loss weights for "per_step" targets, else None."""
    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray | None = None

    @property
    def n(self) -> int:
        """Number of examples N."""
        return self.y.shape[-1] if self.y.ndim == 1 else (self.x.shape[1] if self.x.ndim == 3 else self.x.shape[0])


@dataclass(frozen=True)
class Task:
    """A task: its splits and what the trainer needs to know to build a model and a loss for it.

    Attributes:
        name: the registry name ('copy', 'digits-seq', …).
        kind: 'sequence' or 'static'.
        n_in: input width I.   n_out: output width O (classes, bits, or regression outputs).
        loss: 'ce' | 'bce' | 'mse' (refimpl.nn.losses names).
        target: one of TARGET_KINDS.
        train, val, test: the splits (hyperparameters are chosen on val, never on test).
        seed: the seed the task was generated / split with.
        chance: the accuracy (or loss, for regression) of a trivial predictor, for judging results.
        info: a short description and the options it was built with.
    """
    name: str
    kind: str
    n_in: int
    n_out: int
    loss: str
    target: str
    train: Split
    val: Split
    test: Split
    seed: int
    chance: float
    info: dict = field(default_factory=dict)

    @property
    def seq_len(self) -> int | None:
        return self.train.x.shape[0] if self.kind == "sequence" else None


def split_indices(n: int, fractions: tuple, seed: int) -> list[np.ndarray]:
    """A seeded random partition of range(n) into len(fractions) parts with those fractions (the last takes the rest)."""
    perm = np.random.default_rng(seed).permutation(n)
    cuts = np.cumsum([int(round(f * n)) for f in fractions[:-1]])
    return np.split(perm, cuts)
