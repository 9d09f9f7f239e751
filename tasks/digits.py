"""The 8×8 handwritten digits bundled with scikit-learn (sklearn.datasets.load_digits: 1797 images, offline).

Pixels are integers 0 … 16, scaled to [0, 1] by /16; labels 0 … 9 (int64). Two tasks:

    digits-seq   kind "sequence", target "label", loss "ce", n_out 10, chance 0.1
                 mode="pixel":  T = 64, I = 1, the pixels in row-major order: x[t, n, 0] = image_n[t // 8, t % 8]
                 mode="row":    T = 8,  I = 8, one row per step:          x[r, n, c] = image_n[r, c]
    digits       kind "static": x (N, 64) the row-major pixels, y (N,) labels (for EP networks)

Splits: one plain (not stratified) seeded random partition of the 1797 images, 70 / 15 / 15 % = 1258 / 270 / 269
(train / val / test), by base.split_indices(1797, (0.7, 0.15, 0.15), seed). It depends on the seed only, so
digits-seq (either mode) and digits with the same seed hold the same images in each split, in the same order.
Needs scikit-learn (the `dev` extra); data_dir is ignored.
"""

from __future__ import annotations

import functools

import numpy as np

from refimpl.errors import UnsupportedError

from .base import Split, Task, split_indices

FRACTIONS = (0.7, 0.15, 0.15)
MODES = ("pixel", "row")


@functools.lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 images, (N, 8, 8) float64 in [0, 1], and their labels (N,) int64 (read-only, cached)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UnsupportedError("the digits tasks read the 8x8 digits bundled with scikit-learn, which is not "
                               "installed; install it with: pip install scikit-learn  (or pip install -e '.[dev]')"
                               ) from None
    data = load_digits()
    images = (np.asarray(data.images, dtype=np.float64) / 16.0)       # (N, 8, 8)
    labels = np.asarray(data.target, dtype=np.int64)                  # (N,)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _splits(seed: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    images, labels = _load()
    return images, labels, split_indices(len(labels), FRACTIONS, seed)


def _info(description: str, parts: list[np.ndarray]) -> dict:
    return {"description": description,
            "split": "seeded plain random 70/15/15 split of the 1797 images: "
                     + " / ".join(str(len(p)) for p in parts) + " (train / val / test)"}


def build_seq(seed: int, data_dir=None, *, mode: str = "pixel") -> Task:
    """Sequential digits: mode "pixel" (T = 64, I = 1) or "row" (T = 8, I = 8). x (T, N, I), y (N,) int64."""
    images, labels, parts = _splits(seed)

    def split(idx):
        imgs = images[idx]                                              # (N, 8, 8)
        if mode == "pixel":
            x = imgs.reshape(len(idx), 64).T[:, :, None]                # (64, N, 1) row-major scan
        else:
            x = imgs.transpose(1, 0, 2)                                 # (8, N, 8) one row per step
        return Split(x=np.ascontiguousarray(x), y=labels[idx].copy())

    train, val, test = (split(p) for p in parts)
    T, I = (64, 1) if mode == "pixel" else (8, 8)
    return Task(name="digits-seq", kind="sequence", n_in=I, n_out=10, loss="ce", target="label",
                train=train, val=val, test=test, seed=seed, chance=0.1,
                info=_info(f"8x8 digits read {'pixel by pixel' if mode == 'pixel' else 'row by row'} "
                           f"(T = {T}, I = {I}), 10 classes", parts))


def build_static(seed: int, data_dir=None) -> Task:
    """Static digits for EP networks: x (N, 64) row-major pixels in [0, 1], y (N,) int64."""
    images, labels, parts = _splits(seed)
    train, val, test = (Split(x=images[p].reshape(len(p), 64), y=labels[p].copy()) for p in parts)
    return Task(name="digits", kind="static", n_in=64, n_out=10, loss="ce", target="label",
                train=train, val=val, test=test, seed=seed, chance=0.1,
                info=_info("8x8 digits as 64-vectors, 10 classes", parts))

