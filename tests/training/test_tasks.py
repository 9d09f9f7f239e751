"""The tasks package: shapes, dtypes and ranges of every task; the copy and adding targets computed twice; digits
modes holding the same pixels; seeded, disjoint splits; the IDX reader/writer and the MNIST loaders on small fake
files (plain and gzip); and the error messages for unknown names, bad options, missing and corrupt files."""

from __future__ import annotations

import gzip
import re

import numpy as np
import pytest

from refimpl.errors import RefimplError, UnknownNameError, UnsupportedError
from refimpl.nn.losses import LOSSES, check_mask, check_target
from tasks import PRESETS, TARGET_KINDS, TASKS, make_task, split_indices, task_kind, task_options
from tasks.idx import DTYPE_CODES, read_idx, write_idx
from tasks.mnist import ENV_VAR, FILES

SMALL = {"copy": {"n_train": 20, "n_val": 7, "n_test": 5},
         "adding": {"seq_len": 9, "n_train": 20, "n_val": 7, "n_test": 5},
         "listops": {"min_length": 6, "max_length": 30, "n_train": 20, "n_val": 7, "n_test": 5}}
N_FAKE_TRAIN, N_FAKE_TEST = 30, 11
SPLIT_TASKS = sorted(n for n in TASKS if task_kind(n) != "stream")     # streams: tests/training/test_online_training.py
STREAM_TASKS = sorted(n for n in TASKS if task_kind(n) == "stream")


def _needs_sklearn(name: str) -> None:
    if name.startswith("digits"):
        pytest.importorskip("sklearn", reason="the digits tasks read scikit-learn's bundled digits (pip install "
                                              "scikit-learn)")


def fake_mnist(directory, gz: bool = False, seed: int = 0, n_train: int = N_FAKE_TRAIN, n_test: int = N_FAKE_TEST,
               skip: tuple = ()) -> dict:
    """Write the four MNIST files with random contents (0 and 255 always present); return the arrays by file name."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[0, 0, 0], images[0, 0, 1] = 0, 255
        arrays[f"{prefix}-images-idx3-ubyte"] = images
        arrays[f"{prefix}-labels-idx1-ubyte"] = rng.integers(0, 10, size=n, dtype=np.uint8)
    for name, array in arrays.items():
        if name not in skip:
            write_idx(directory / (name + (".gz" if gz else "")), array, gzip=gz)
    return arrays


def build(name: str, tmp_path, **options):
    """Any task at a small size (MNIST ones from fake files in tmp_path)."""
    _needs_sklearn(name)
    if name.startswith("mnist"):
        if not (tmp_path / FILES[0]).exists():
            fake_mnist(tmp_path)
        return make_task(name, data_dir=tmp_path, **options)
    return make_task(name, **{**SMALL.get(name, {}), **options})


# ---------------------------------------------------------------------------------------------------- every task

@pytest.mark.parametrize("name", SPLIT_TASKS)
def test_every_task_shapes_dtypes_ranges(name, tmp_path):
    task = build(name, tmp_path)
    assert task.name == name and task.target in TARGET_KINDS and task.loss in LOSSES
    assert task.kind in ("sequence", "static") and 0 < task.chance < 1
    assert task_kind(name) == task.kind                       # the kind, known without building the task
    for split in (task.train, task.val, task.test):
        x, y = np.asarray(split.x), split.y                     # listops keeps its one-hot inputs as token ids
        assert split.x.dtype == x.dtype == np.float64 and np.all(np.isfinite(x))
        N = split.n
        if task.kind == "static":
            assert x.shape == (N, task.n_in) and task.seq_len is None
        else:
            assert x.shape == (task.seq_len, N, task.n_in)
        T = x.shape[0]
        # the targets are what refimpl.nn.losses accepts for an output of the right shape
        if task.target == "label":
            assert y.dtype == np.int64 and y.shape == (N,) and 0 <= y.min() and y.max() < task.n_out
            assert 0.0 <= x.min() and x.max() <= 1.0
            check_target(task.loss, (N, task.n_out), y)
            assert split.mask is None
        elif task.target == "per_step":
            check_target(task.loss, (T, N, task.n_out), y)
            check_mask(split.mask, T, N)
        else:
            check_target(task.loss, (N, task.n_out), y)
            assert split.mask is None


@pytest.mark.parametrize("name", SPLIT_TASKS)
def test_every_task_is_deterministic_and_seeded(name, tmp_path):
    a, b, c = (build(name, tmp_path, seed=s) for s in (3, 3, 4))
    for sa, sb, sc in zip((a.train, a.val, a.test), (b.train, b.val, b.test), (c.train, c.val, c.test)):
        np.testing.assert_array_equal(sa.x, sb.x)
        np.testing.assert_array_equal(sa.y, sb.y)
    assert a.seed == 3 and c.seed == 4
    assert not np.array_equal(a.train.x, c.train.x)          # a different seed: different data or split
    if not name.startswith("mnist"):                          # MNIST's test split is the t10k file, whatever the seed
        assert not np.array_equal(a.test.x, c.test.x)


@pytest.mark.parametrize("name", SPLIT_TASKS)
def test_float32_option(name, tmp_path):
    task = build(name, tmp_path, dtype="float32")
    for split in (task.train, task.val, task.test):
        assert split.x.dtype == np.float32
        assert split.y.dtype == (np.int64 if task.target == "label" else np.float32)
        assert split.mask is None or split.mask.dtype == np.float32
    assert task.info["options"]["dtype"] == "float32"


@pytest.mark.parametrize("name", STREAM_TASKS)
def test_every_stream_task_shapes_dtypes_and_seeds(name):
    for dtype in ("float64", "float32"):
        task = make_task(name, seed=2, T=50, dtype=dtype)
        assert task.kind == task_kind(name) == "stream" and task.name == name and task.loss in LOSSES
        assert task.length == task.seq_len == 50 and task.info["options"]["dtype"] == dtype and 0 < task.chance < 1
        x, y, mask = task.stream("train", 3).chunk(0, 50)
        assert x.shape == (50, 3, task.n_in) and all(v.dtype == np.dtype(dtype) for v in (x, y, mask))
        check_target(task.loss, (50, 3, task.n_out), y)
        check_mask(mask, 50, 3)
        assert np.all(np.isfinite(x)) and mask.min() >= 0 and mask.max() > 0
    other = make_task(name, seed=3, T=50).stream("train", 3).chunk(0, 50)[0]
    assert not np.array_equal(other, make_task(name, seed=2, T=50).stream("train", 3).chunk(0, 50)[0])
    with pytest.raises(UnsupportedError, match="integer ≥ 1"):
        make_task(name, T=0)


def test_split_indices_partition():
    parts = split_indices(101, (0.7, 0.15, 0.15), seed=5)
    assert [len(p) for p in parts] == [71, 15, 15]
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(101))
    for p, q in zip(parts, split_indices(101, (0.7, 0.15, 0.15), seed=5)):
        np.testing.assert_array_equal(p, q)
    assert not np.array_equal(parts[0], split_indices(101, (0.7, 0.15, 0.15), seed=6)[0])


# ---------------------------------------------------------------------------------------------------- copy

@pytest.mark.parametrize("L, W, D", [(4, 1, 4), (3, 5, 2), (1, 2, 0)])
def test_copy_layout_and_targets(L, W, D):
    task = make_task("copy", seed=1, seq_len=L, bit_width=W, waiting_time=D, n_train=40, n_val=3, n_test=3)
    T = 2 * L + 1 + D
    assert (task.seq_len, task.n_in, task.n_out, task.loss, task.target, task.chance) == (T, W + 2, W, "bce",
                                                                                          "per_step", 0.5)
    x, y, mask = task.train.x, task.train.y, task.train.mask
    assert x.shape == (T, 40, W + 2) and y.shape == (T, 40, W) and mask.shape == (T, 40)
    assert set(np.unique(x)) <= {0.0, 1.0} and set(np.unique(y)) <= {0.0, 1.0}
    delimiter = L + D
    recall = np.arange(delimiter + 1, T)
    bits, blank, delim = x[..., :W], x[..., W], x[..., W + 1]
    # the targets are exactly the pattern bits, moved to the recall window; zero elsewhere
    np.testing.assert_array_equal(y[recall], bits[:L])
    assert not y[: delimiter + 1].any()
    # the mask marks exactly the recall steps
    np.testing.assert_array_equal(mask, np.broadcast_to((np.arange(T) > delimiter)[:, None], (T, 40)))
    # channels: bits only in the pattern; the delimiter once; blank on the waiting and recall steps
    assert not bits[L:].any()
    np.testing.assert_array_equal(delim, np.broadcast_to((np.arange(T) == delimiter)[:, None], (T, 40)))
    is_blank = (np.arange(T) >= L) & (np.arange(T) != delimiter)
    np.testing.assert_array_equal(blank, np.broadcast_to(is_blank[:, None], (T, 40)))
    assert task.info["recall_steps"] == (delimiter + 1, T)


def test_copy_splits_differ_and_bits_are_fair():
    task = make_task("copy", seq_len=8, bit_width=4, waiting_time=1, n_train=500, n_val=500, n_test=500)
    xs = [s.x for s in (task.train, task.val, task.test)]
    assert not np.array_equal(xs[0], xs[1]) and not np.array_equal(xs[1], xs[2])
    assert abs(task.train.x[:8, :, :4].mean() - 0.5) < 0.03          # 16000 fair bits


def test_copy_small_preset():
    task = make_task("copy-small")
    assert task.seq_len == 13 and (task.train.n, task.val.n, task.test.n) == (64, 32, 32)
    assert task.info["preset"] == "copy-small" and task.info["options"]["waiting_time"] == 4
    # explicit options override the preset's
    assert make_task("copy-small", n_train=10).train.n == 10


# ---------------------------------------------------------------------------------------------------- adding

@pytest.mark.parametrize("T", [2, 7, 50])
def test_adding_markers_and_target(T):
    task = make_task("adding", seed=2, seq_len=T, n_train=300, n_val=3, n_test=3)
    x, y = task.train.x, task.train.y
    assert x.shape == (T, 300, 2) and y.shape == (300, 1) and task.train.mask is None
    values, markers = x[..., 0], x[..., 1]
    assert 0.0 <= values.min() and values.max() < 1.0
    assert set(np.unique(markers)) <= {0.0, 1.0}
    half = T // 2
    np.testing.assert_array_equal(markers[:half].sum(axis=0), 1.0)     # one marker in the first half
    np.testing.assert_array_equal(markers[half:].sum(axis=0), 1.0)     # one in the second
    expected = (values * markers).sum(axis=0)                          # (N,) the marked values added
    np.testing.assert_allclose(y[:, 0], expected, rtol=0, atol=1e-15)
    assert (task.n_in, task.n_out, task.loss, task.target) == (2, 1, "mse", "final")


def test_adding_chance_is_the_loss_of_predicting_one():
    task = make_task("adding", seq_len=4, n_train=40000, n_val=1, n_test=1)
    assert task.chance == pytest.approx(1 / 12)
    empirical = np.mean(0.5 * (task.train.y - 1.0) ** 2)               # refimpl's mse: ½(ŷ − y)²
    assert empirical == pytest.approx(1 / 12, rel=0.03)


# ---------------------------------------------------------------------------------------------------- digits

def test_digits_modes_hold_the_same_pixels():
    pytest.importorskip("sklearn", reason="needs scikit-learn's bundled digits")
    from sklearn.datasets import load_digits
    pixel, row, static = (make_task("digits-seq", seed=7, mode="pixel"), make_task("digits-seq", seed=7, mode="row"),
                          make_task("digits", seed=7))
    assert (pixel.seq_len, pixel.n_in, row.seq_len, row.n_in, static.n_in) == (64, 1, 8, 8, 64)
    assert (pixel.train.n, pixel.val.n, pixel.test.n) == (1258, 270, 269)
    data = load_digits()
    parts = split_indices(1797, (0.7, 0.15, 0.15), 7)
    for k, name in enumerate(("train", "val", "test")):
        p, r, s = (getattr(t, name) for t in (pixel, row, static))
        N = p.n
        np.testing.assert_array_equal(p.x[:, :, 0].T, r.x.transpose(1, 0, 2).reshape(N, 64))
        np.testing.assert_array_equal(p.x[:, :, 0].T, s.x)
        np.testing.assert_array_equal(p.y, r.y)
        np.testing.assert_array_equal(p.y, s.y)
        # the split is split_indices(seed) of the bundled data, scaled by /16
        np.testing.assert_array_equal(s.x, data.data[parts[k]] / 16.0)
        np.testing.assert_array_equal(s.y, data.target[parts[k]])
    assert pixel.train.x.max() == 1.0
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert not set(parts[a]) & set(parts[b])


# ---------------------------------------------------------------------------------------------------- IDX

@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [d.newbyteorder("=") for d in DTYPE_CODES.values()], ids=str)
def test_idx_round_trip(tmp_path, dtype, gz):
    array = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    path = write_idx(tmp_path / "a.idx", array, gzip=gz)
    back = read_idx(path)
    assert back.dtype == array.dtype and back.shape == array.shape and back.dtype.isnative
    np.testing.assert_array_equal(back, array)


def test_idx_header_bytes(tmp_path):
    raw = write_idx(tmp_path / "l", np.array([1, 2, 3], dtype=np.uint8)).read_bytes()
    assert raw == bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3])


def test_idx_rejects_what_it_cannot_write(tmp_path):
    with pytest.raises(UnsupportedError, match="no IDX code"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64))
    with pytest.raises(UnsupportedError, match="1 to 255 dimensions"):
        write_idx(tmp_path / "x", np.array(5, dtype=np.uint8))


# ---------------------------------------------------------------------------------------------------- MNIST

@pytest.mark.parametrize("gz", [False, True])
def test_mnist98_averages_groups_of_eight(tmp_path, gz):
    arrays = fake_mnist(tmp_path, gz=gz)
    task = make_task("mnist98", seed=3, data_dir=tmp_path)
    assert (task.kind, task.seq_len, task.n_in, task.n_out, task.target) == ("sequence", 98, 1, 10, "label")
    train_idx, val_idx = split_indices(N_FAKE_TRAIN, (0.9, 0.1), 3)
    images, labels = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    for split, idx in ((task.train, train_idx), (task.val, val_idx)):
        direct = np.array([[images[n].reshape(-1)[8 * t: 8 * t + 8].mean() / 255.0 for t in range(98)]
                           for n in idx])                                # (N, 98), one group at a time
        np.testing.assert_allclose(split.x[:, :, 0].T, direct, rtol=1e-14, atol=0)
        np.testing.assert_array_equal(split.y, labels[idx])
    assert (task.train.n, task.val.n, task.test.n) == (27, 3, N_FAKE_TEST)
    test_images = arrays["t10k-images-idx3-ubyte"]                      # test = the t10k file, in file order
    np.testing.assert_allclose(task.test.x[:, :, 0].T, test_images.reshape(-1, 98, 8).mean(axis=2) / 255.0,
                               rtol=1e-14)
    np.testing.assert_array_equal(task.test.y, arrays["t10k-labels-idx1-ubyte"])


def test_mnist_pixel_and_static_are_scaled_row_major(tmp_path):
    arrays = fake_mnist(tmp_path)
    seq = make_task("mnist", seed=0, data_dir=tmp_path, val_fraction=0.2, n_train=10)
    static = make_task("mnist-static", seed=0, data_dir=tmp_path, val_fraction=0.2, n_train=10)
    assert (seq.seq_len, seq.n_in, static.kind, static.n_in) == (784, 1, "static", 784)
    assert (seq.train.n, seq.val.n) == (10, 6)
    images = arrays["t10k-images-idx3-ubyte"]
    t = np.arange(784)
    np.testing.assert_array_equal(seq.test.x[:, 4, 0], images[4, t // 28, t % 28] / 255.0)
    np.testing.assert_array_equal(static.test.x, images.reshape(-1, 784) / 255.0)
    assert static.test.x[0, 0] == 0.0 and static.test.x[0, 1] == 1.0     # 0 → 0, 255 → 1
    np.testing.assert_array_equal(seq.train.x[:, :, 0].T, static.train.x)
    # n_train keeps a prefix of the shuffled train part; n_test a seeded subset of the t10k file
    full = make_task("mnist-static", seed=0, data_dir=tmp_path, val_fraction=0.2)
    np.testing.assert_array_equal(full.train.x[:10], static.train.x)
    sub = make_task("mnist-static", seed=0, data_dir=tmp_path, n_test=4)
    assert sub.test.n == 4 and all(any(np.array_equal(r, s) for s in full.test.x) for r in sub.test.x)


def test_mnist_env_var_and_data_dir_precedence(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    fake_mnist(tmp_path / "a", seed=1)
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "a"))
    from_env = make_task("mnist-static")
    assert from_env.info["files"][FILES[0]] == str(tmp_path / "a" / FILES[0])
    (tmp_path / "b").mkdir()
    fake_mnist(tmp_path / "b", seed=2, gz=True)
    explicit = make_task("mnist-static", data_dir=tmp_path / "b")          # data_dir wins over the env var
    assert not np.array_equal(from_env.test.x, explicit.test.x)
    assert explicit.info["files"][FILES[0]].endswith(".gz")


def test_mnist_missing_files_are_listed(tmp_path, monkeypatch):
    fake_mnist(tmp_path, skip=("t10k-images-idx3-ubyte", "train-labels-idx1-ubyte"))
    with pytest.raises(UnsupportedError) as err:
        make_task("mnist98", data_dir=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path) in msg and "--data-dir DIR" in msg and f"{ENV_VAR}=DIR" in msg
    missing = re.search(r"missing MNIST file\(s\) (.*?) \(plain or \.gz\)", msg).group(1).split(", ")
    assert missing == ["train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"]
    assert all(name in msg for name in FILES)                              # the full list of what is needed
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(UnsupportedError, match=f"no MNIST directory given.*--data-dir DIR or set {ENV_VAR}=DIR"):
        make_task("mnist")
    with pytest.raises(UnsupportedError, match="no such directory"):
        make_task("mnist", data_dir=tmp_path / "nowhere")


def _corrupt_cases():
    def bad_magic(d):
        path = d / "train-images-idx3-ubyte"
        path.write_bytes(b"\x01\x02" + path.read_bytes()[2:])
        return path.name, "bad magic number"

    def truncated(d):
        path = d / "t10k-images-idx3-ubyte"
        path.write_bytes(path.read_bytes()[:-5])
        return path.name, "truncated"

    def truncated_header(d):
        path = d / "t10k-labels-idx1-ubyte"
        path.write_bytes(path.read_bytes()[:6])
        return path.name, "truncated"

    def truncated_gzip(d):
        path = d / "train-labels-idx1-ubyte"
        path.unlink()
        gz = d / "train-labels-idx1-ubyte.gz"
        gz.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, N_FAKE_TRAIN]) + bytes(N_FAKE_TRAIN))[:-12])
        return gz.name, "broken gzip"

    def count_mismatch(d):
        write_idx(d / "train-labels-idx1-ubyte", np.zeros(N_FAKE_TRAIN - 1, dtype=np.uint8))
        return "train-labels-idx1-ubyte", "29 labels but .*30 images"

    def wrong_dims(d):
        write_idx(d / "train-images-idx3-ubyte", np.zeros((N_FAKE_TRAIN, 784), dtype=np.uint8))
        return "train-images-idx3-ubyte", r"shape \(30, 784\).*\(N, 28, 28\)"

    def wrong_dtype(d):
        write_idx(d / "t10k-labels-idx1-ubyte", np.zeros(N_FAKE_TEST, dtype=np.int32))
        return "t10k-labels-idx1-ubyte", "int32"

    def bad_dtype_code(d):
        path = d / "t10k-labels-idx1-ubyte"
        raw = bytearray(path.read_bytes())
        raw[2] = 0x0A
        path.write_bytes(bytes(raw))
        return path.name, "unsupported IDX dtype code 0x0a"

    def label_out_of_range(d):
        write_idx(d / "t10k-labels-idx1-ubyte", np.full(N_FAKE_TEST, 10, dtype=np.uint8))
        return "t10k-labels-idx1-ubyte", "label 10"

    return [bad_magic, truncated, truncated_header, truncated_gzip, count_mismatch, wrong_dims, wrong_dtype,
            bad_dtype_code, label_out_of_range]


@pytest.mark.parametrize("corrupt", _corrupt_cases(), ids=lambda f: f.__name__)
def test_mnist_corrupt_files_raise_clear_errors(tmp_path, corrupt):
    fake_mnist(tmp_path)
    filename, problem = corrupt(tmp_path)
    with pytest.raises(UnsupportedError) as err:
        make_task("mnist98", data_dir=tmp_path)
    assert isinstance(err.value, RefimplError)
    assert filename in str(err.value)
    assert re.search(problem, str(err.value)), str(err.value)


def test_mnist_split_size_errors(tmp_path):
    fake_mnist(tmp_path)
    with pytest.raises(UnsupportedError, match="n_train=1000 but only 27"):
        make_task("mnist", data_dir=tmp_path, n_train=1000)
    with pytest.raises(UnsupportedError, match="leaves 30 for train and 0 for val"):
        make_task("mnist", data_dir=tmp_path, val_fraction=0.01)


# ---------------------------------------------------------------------------------------------------- names, options

def test_unknown_task_suggests_the_name():
    with pytest.raises(UnknownNameError, match="did you mean 'mnist98'"):
        make_task("mnist-98")
    with pytest.raises(UnknownNameError, match="copy-small"):
        make_task("nope")
    with pytest.raises(UnknownNameError, match="did you mean 'mnist98'"):
        task_kind("mnist-98")


@pytest.mark.parametrize("name, options, error, pattern", [
    ("copy", {"seqlen": 3}, UnknownNameError, "unknown copy option 'seqlen'.*did you mean 'seq_len'"),
    ("copy", {"seq_len": 0}, UnsupportedError, r"seq_len must be an integer ≥ 1 \(default 4\)"),
    ("copy", {"waiting_time": -1}, UnsupportedError, "waiting_time must be an integer ≥ 0"),
    ("copy", {"n_train": 2.0}, UnsupportedError, "n_train must be an integer"),
    ("copy", {"bit_width": True}, UnsupportedError, "bit_width must be an integer"),
    ("adding", {"seq_len": 1}, UnsupportedError, "seq_len must be an integer ≥ 2"),
    ("digits-seq", {"mode": "rows"}, UnknownNameError, "did you mean 'row'"),
    ("digits", {"mode": "row"}, UnknownNameError, "unknown digits option 'mode'"),
    ("mnist", {"val_fraction": 1.0}, UnsupportedError, "strictly between 0 and 1"),
    ("mnist98", {"n_train": 0}, UnsupportedError, "None .all. or an integer ≥ 1"),
    ("copy", {"dtype": "float16"}, UnknownNameError, "allowed: float32, float64"),
])
def test_bad_options(name, options, error, pattern):
    with pytest.raises(error, match=pattern):
        make_task(name, **options)


@pytest.mark.parametrize("seed", [-1, 1.5, "0", None])
def test_bad_seed(seed):
    with pytest.raises(UnsupportedError, match="seed must be a nonnegative integer"):
        make_task("copy-small", seed=seed)


def test_presets_and_options_are_consistent():
    for preset, (name, options) in PRESETS.items():
        assert name in TASKS and set(options) <= set(task_options(name)), preset
        assert task_kind(preset) == task_kind(name), preset
        assert task_options(preset) == {**task_options(name), **options}
    assert task_options("copy") == {"seq_len": 4, "bit_width": 1, "waiting_time": 16, "n_train": 10000,
                                    "n_val": 1000, "n_test": 1000, "dtype": "float64"}


def test_smaller_and_skewed_training_sets():
    """tasks/subsets.py: the training split alone is cut; long-tailed counts fall by ρ^(−c/(C−1)), step keeps 1/ρ of
    the first half of the classes; examples_frac keeps ⌈f·n⌉; the same seed keeps the same examples."""
    whole = make_task("digits", seed=1)
    counts = np.bincount(whole.train.y, minlength=10)
    lt = make_task("digits", seed=1, skew="long-tailed", imbalance=10)
    assert np.array_equal(np.bincount(lt.train.y, minlength=10),
                          np.floor(counts * 10.0 ** (-np.arange(10) / 9)).astype(int))
    step = make_task("digits-seq", seed=1, skew="step", imbalance=4)
    assert np.array_equal(np.bincount(step.train.y, minlength=10)[:5], np.floor(counts[:5] / 4).astype(int))
    assert np.array_equal(np.bincount(step.train.y, minlength=10)[5:], counts[5:])
    assert lt.val.n == whole.val.n and np.array_equal(lt.test.x, whole.test.x)
    frac = make_task("copy-small", examples_frac=0.25)
    assert frac.train.n == 16 and frac.train.mask.shape == (13, 16) and frac.info["options"]["examples_frac"] == 0.25
    again = make_task("copy-small", examples_frac=0.25)
    assert np.array_equal(frac.train.x, again.train.x)
    rows = {r.tobytes() for r in make_task("copy-small").train.x.transpose(1, 0, 2)}
    assert all(r.tobytes() in rows for r in frac.train.x.transpose(1, 0, 2))
    with pytest.raises(UnsupportedError, match="needs class labels"):
        make_task("adding-small", skew="step")
    with pytest.raises(UnsupportedError, match=r"examples_frac must be a number in \(0, 1\]"):
        make_task("copy-small", examples_frac=0)
    with pytest.raises(UnknownNameError, match="skew"):
        make_task("digits", skew="zipf")
    with pytest.raises(UnknownNameError, match="copy-stream option"):
        make_task("copy-stream", examples_frac=0.5)
