"""Smaller and skewed training sets: the training split of any task, cut to a fraction of its examples or to an
imbalanced class distribution (validation and test splits are left whole, so the scores stay comparable).

    subsample(task, examples_frac=1.0, skew="none", imbalance=10) -> Task

    skew "long-tailed"   class c (in label order, c = 0 … C−1) keeps ⌊n_c · ρ^(−c/(C−1))⌋ of its n_c examples:
                         an exponential profile from all of class 0 down to 1/ρ of the last class (Cui et al. 2019,
                         "Class-balanced loss based on effective number of samples", CIFAR-LT)
    skew "step"          the first ⌊C/2⌋ classes keep ⌊n_c / ρ⌋, the others all (Buda et al. 2018, "A systematic
                         study of the class imbalance problem in CNNs", step imbalance with μ = 0.5)
    examples_frac f      then ⌈f · n⌉ of the n examples left, uniformly at random (0 < f ≤ 1)
ρ = imbalance ≥ 1. Every class keeps at least one example. The examples kept are drawn from default_rng([seed, 5])
(the task's seed), so a name, seed and options still fix the data. Skew needs class labels (target "label").
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from refimpl.errors import UnsupportedError

SKEWS = ("none", "long-tailed", "step")


def _keep_per_class(y: np.ndarray, n_classes: int, skew: str, imbalance: float, rng) -> np.ndarray:
    """The indices kept under the skew (sorted)."""
    kept = []
    for c in range(n_classes):
        idx = np.flatnonzero(y == c)
        if skew == "long-tailed":
            factor = imbalance ** (-c / max(n_classes - 1, 1))
        else:
            factor = 1 / imbalance if c < n_classes // 2 else 1.0
        n = max(1, math.floor(len(idx) * factor)) if len(idx) else 0
        kept.append(rng.permutation(idx)[:n])
    return np.sort(np.concatenate(kept))


def _take(split, idx: np.ndarray):
    x = split.x[:, idx] if split.x.ndim == 3 else split.x[idx]
    if split.mask is not None:
        return replace(split, x=x, y=split.y[:, idx], mask=split.mask[:, idx])
    return replace(split, x=x, y=split.y[idx])


def subsample(task, examples_frac: float = 1.0, skew: str = "none", imbalance: float = 10.0):
    """The task with its training split cut as the module doc says."""
    if skew == "none" and examples_frac == 1:
        return task
    rng = np.random.default_rng([task.seed, 5])
    idx = np.arange(task.train.n)
    if skew != "none":
        if task.target != "label":
            raise UnsupportedError(f"{task.name}: skew={skew!r} needs class labels, and this task's target is "
                                   f"{task.target!r}; use skew with a classification task (digits, digits-seq, "
                                   f"mnist…), or examples_frac alone")
        idx = _keep_per_class(task.train.y, task.n_out, skew, imbalance, rng)
    if examples_frac < 1:
        idx = np.sort(rng.permutation(idx)[:max(1, math.ceil(examples_frac * len(idx)))])
    return replace(task, train=_take(task.train, idx))
