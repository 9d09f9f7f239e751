"""MNIST from the four standard IDX files: sequential (mnist, mnist98) and static (mnist-static).

Files, each plain or gzip-compressed with a ".gz" suffix (the plain one is used when both are there), in the directory
given by `data_dir` (the CLI's --data-dir) or else the environment variable REFIMPL_MNIST_DIR:

    train-images-idx3-ubyte   (60000, 28, 28) uint8      train-labels-idx1-ubyte   (60000,) uint8, values 0 … 9
    t10k-images-idx3-ubyte    (10000, 28, 28) uint8      t10k-labels-idx1-ubyte    (10000,) uint8

(Any set in this format works, e.g. Fashion-MNIST; the counts are not fixed, the 28×28 size is.) Nothing is ever
downloaded. Pixels are scaled to [0, 1] by /255; labels are int64.

    mnist          kind "sequence", T = 784, I = 1: the pixels in row-major order, x[t, n, 0] = image_n[t // 28, t % 28]
    mnist98        kind "sequence", T = 98,  I = 1: the 784 row-major pixels averaged in consecutive groups of 8,
                   x[t, n, 0] = mean(p_n[8t], …, p_n[8t+7])   (the FPTT blog's "MNIST98")
    mnist-static   kind "static", x (N, 784) the row-major pixels
All three: target "label", loss "ce", n_out 10, chance 0.1.

Splits. val = a seeded fraction `val_fraction` (default 0.1) of the TRAIN files and train = the rest, by
base.split_indices(n, (1 − val_fraction, val_fraction), seed); test = the t10k files, in file order, which are
never used to select anything. For quick runs, n_train / n_val keep the first n of the (already shuffled) train /
val parts, and n_test keeps a seeded random subset of the test files (sorted, so in file order).

Missing files raise refimpl.errors.UnsupportedError naming the missing files, the directory searched and the fix;
a corrupt file (see tasks/idx.py; also the wrong dtype or shape, labels out of range, or label and image counts that
differ) raises UnsupportedError naming the file and the problem.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from refimpl.errors import UnsupportedError

from .base import Split, Task, split_indices
from .idx import read_idx

ENV_VAR = "REFIMPL_MNIST_DIR"
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IMAGE_SHAPE = (28, 28)
GROUP_98 = 8                       # 784 / 8 = 98 steps


def find_files(task: str, data_dir=None) -> dict[str, Path]:
    """The path of each file in FILES (plain preferred over .gz) in data_dir, else $REFIMPL_MNIST_DIR.

    Raises:
        UnsupportedError (one line) listing the missing files, the directory searched, and how to provide them.
    """
    how = f"pass --data-dir DIR or set {ENV_VAR}=DIR to the directory that holds them"
    needed = ", ".join(FILES)
    if data_dir is None:
        data_dir = os.environ.get(ENV_VAR) or None
    if data_dir is None:
        raise UnsupportedError(f"{task}: no MNIST directory given; the task needs the IDX files {needed} "
                               f"(each plain or .gz): {how}")
    directory = Path(data_dir).expanduser()
    found, missing = {}, []
    for name in FILES:
        for candidate in (directory / name, directory / (name + ".gz")):
            if candidate.is_file():
                found[name] = candidate
                break
        else:
            missing.append(name)
    if missing:
        where = f"{directory}" + ("" if directory.is_dir() else " (no such directory)")
        raise UnsupportedError(f"{task}: missing MNIST file(s) {', '.join(missing)} (plain or .gz) in {where}; "
                               f"the task needs {needed}: put them there, or {how}")
    return found


def _read_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) uint8 read from two IDX files, with their shapes checked."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise UnsupportedError(f"{images_path}: holds {images.dtype} data of shape {images.shape}; MNIST images are "
                               f"unsigned bytes of shape (N, 28, 28)")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise UnsupportedError(f"{labels_path}: holds {labels.dtype} data of shape {labels.shape}; MNIST labels are "
                               f"unsigned bytes of shape (N,)")
    if len(labels) != len(images):
        raise UnsupportedError(f"{labels_path}: holds {len(labels)} labels but {images_path} holds {len(images)} "
                               f"images; the two files must come from the same set")
    if len(labels) and labels.max() > 9:
        raise UnsupportedError(f"{labels_path}: holds label {int(labels.max())}; MNIST labels are 0 … 9")
    return images, labels


def _split(images: np.ndarray, labels: np.ndarray, idx: np.ndarray, layout: str) -> Split:
    """The examples idx as a Split: x scaled to [0, 1] in the task's layout, y int64."""
    n = len(idx)
    pixels = images[idx].reshape(n, -1).astype(np.float64) / 255.0                  # (n, 784) row-major
    if layout == "static":
        x = pixels                                                                  # (n, 784)
    elif layout == "pixel":
        x = np.ascontiguousarray(pixels.T)[:, :, None]                              # (784, n, 1)
    else:   # "group8"
        x = np.ascontiguousarray(pixels.reshape(n, -1, GROUP_98).mean(axis=2).T)[:, :, None]   # (98, n, 1)
    return Split(x=x, y=labels[idx].astype(np.int64))


def _build(task: str, layout: str, seed: int, data_dir, val_fraction: float, n_train, n_val, n_test) -> Task:
    paths = find_files(task, data_dir)
    train_images, train_labels = _read_pair(paths[FILES[0]], paths[FILES[1]])
    test_images, test_labels = _read_pair(paths[FILES[2]], paths[FILES[3]])
    train_idx, val_idx = split_indices(len(train_labels), (1.0 - val_fraction, val_fraction), seed)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise UnsupportedError(f"{task}: val_fraction={val_fraction} of {len(train_labels)} training images leaves "
                               f"{len(train_idx)} for train and {len(val_idx)} for val; both need at least one: "
                               f"choose a val_fraction nearer 0.1")
    test_idx = np.arange(len(test_labels))
    for option, value, available in (("n_train", n_train, len(train_idx)), ("n_val", n_val, len(val_idx)),
                                     ("n_test", n_test, len(test_idx))):
        if value is not None and value > available:
            raise UnsupportedError(f"{task}: {option}={value} but only {available} examples are available for that "
                                   f"split; use {option} ≤ {available} or leave it out (None: all)")
    if n_train is not None:
        train_idx = train_idx[:n_train]
    if n_val is not None:
        val_idx = val_idx[:n_val]
    if n_test is not None:
        test_idx = np.sort(np.random.default_rng(seed).permutation(len(test_labels))[:n_test])
    train = _split(train_images, train_labels, train_idx, layout)
    val = _split(train_images, train_labels, val_idx, layout)
    test = _split(test_images, test_labels, test_idx, layout)
    n_in = {"static": 784, "pixel": 1, "group8": 1}[layout]
    T = {"static": None, "pixel": 784, "group8": 784 // GROUP_98}[layout]
    return Task(name=task, kind="static" if layout == "static" else "sequence", n_in=n_in, n_out=10, loss="ce",
                target="label", train=train, val=val, test=test, seed=seed, chance=0.1,
                info={"description": f"MNIST, {'784-vectors' if T is None else f'T = {T}, I = 1'}, 10 classes",
                      "files": {name: str(p) for name, p in paths.items()},
                      "split": f"train {len(train_idx)} / val {len(val_idx)} (seeded {val_fraction} of the train "
                               f"files) / test {len(test_idx)} (t10k files)"})


def build_mnist(seed: int, data_dir=None, *, val_fraction: float = 0.1, n_train: int | None = None,
                n_val: int | None = None, n_test: int | None = None) -> Task:
    """Sequential MNIST, T = 784, I = 1 (row-major pixels)."""
    return _build("mnist", "pixel", seed, data_dir, val_fraction, n_train, n_val, n_test)


def build_mnist98(seed: int, data_dir=None, *, val_fraction: float = 0.1, n_train: int | None = None,
                  n_val: int | None = None, n_test: int | None = None) -> Task:
    """MNIST98, T = 98, I = 1 (row-major pixels averaged in consecutive groups of 8)."""
    return _build("mnist98", "group8", seed, data_dir, val_fraction, n_train, n_val, n_test)


def build_mnist_static(seed: int, data_dir=None, *, val_fraction: float = 0.1, n_train: int | None = None,
                       n_val: int | None = None, n_test: int | None = None) -> Task:
    """Static MNIST for EP networks: x (N, 784)."""
    return _build("mnist-static", "static", seed, data_dir, val_fraction, n_train, n_val, n_test)
