"""Online training on every backend: --update-every, --chunk, --micro-batch (refimpl/training/problems.py)."""

import inspect

import numpy as np
import pytest

from refimpl.errors import UnsupportedError
from refimpl.registry import get_kernel, load_backend
from refimpl.runs import load_checkpoint
from refimpl.training.config import TrainConfig
from refimpl.training.loop import train
from refimpl.training.problems import prepare

from tasks import make_task

#: copy-small: T = 13, 64 training examples; a few steps of a 2-layer model updating every 4 steps.
SMALL = dict(task="copy-small", cell="rnn", hidden=6, layers=2, batch_size=8, steps=3, log_every=1, lr=1e-2,
             algorithm="online", update_every=4)


def _carried(backend: str, cell: str, rule: str | None) -> str | None:
    """Why `backend` cannot run the chunked driver's sweeps for `cell` (None when it can)."""
    b = load_backend(backend)
    if not b.available:
        return f"{backend} is not available: {b.reason}"
    if rule is not None and "carry" not in inspect.signature(get_kernel(f"{cell}.{rule}", backend)).parameters:
        return f"{backend}'s {cell}.{rule} kernel takes no carry yet (the carried kernels are not merged)"
    return None


def _weights(cfg, path):
    train(cfg, path)
    return load_checkpoint(path / "checkpoint.npz").params


@pytest.mark.parametrize("backend,cell,algorithm,options", [
    ("numba", "rnn", "online", {}),
    ("numba", "lru", "snap1", {}),
    ("numba", "gru", "tbptt", {"window": 4}),
    ("mlx", "rnn", "online", {}),
    ("mlx", "lstm", "truncated", {}),
    ("mlx", "gru", "tbptt", {"window": 2}),
])
def test_update_every_on_a_backend_gives_the_reference_weights(tmp_path, backend, cell, algorithm, options):
    """The same seed in float64: the backend's weights after a few truly online steps are the reference's."""
    why = _carried(backend, cell, None if algorithm == "tbptt" else "rtrl")     # tbptt: forward / backward
    if why:
        pytest.skip(why)
    base = {**SMALL, "cell": cell, "algorithm": algorithm, "algorithm_options": options}
    ref = _weights(TrainConfig(**base), tmp_path / "numpy")
    got = _weights(TrainConfig(**base, backend=backend), tmp_path / backend)
    init = prepare(TrainConfig(**base)).problem.params
    assert any(not np.array_equal(ref[k], init[k]) for k in ref)           # the weights did move
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=0, atol=1e-10, err_msg=k)


def test_chunk_does_not_change_the_weights(tmp_path):
    """--chunk is a speed knob: the same run with C = 1 (the step loop), 3 and T gives the same weights."""
    runs = [_weights(TrainConfig(**SMALL, chunk=c), tmp_path / f"c{c}") for c in (1, 3, 13)]
    for other in runs[1:]:
        for k in runs[0]:
            np.testing.assert_allclose(other[k], runs[0][k], rtol=0, atol=1e-10, err_msg=k)


@pytest.mark.parametrize("changes,phrase", [
    (dict(algorithm="bptt"), "use tbptt -a window=k"),
    (dict(algorithm="fptt"), "can update inside a sequence"),
    (dict(update_every=0), "positive integer"),
    (dict(update_every=-2), "positive integer"),
    (dict(update_every=14), r"T = 13"),
    (dict(algorithm="tbptt", algorithm_options={"window": 3}), "not a multiple"),
    (dict(algorithm="rtrl"), "whole-stack rtrl"),
    (dict(chunk=0), "positive integer"),
    (dict(chunk=14), r"T = 13"),
    (dict(chunk=2, algorithm="bptt", update_every=None), "runs the whole sequence at once"),
    (dict(chunk=2, algorithm="tbptt"), "-a window=2"),
    (dict(micro_batch=2), "lockstep"),
    (dict(micro_batch=0, update_every=None), "positive integer"),
    (dict(micro_batch=9, update_every=None), r"more than the batch \(8"),
    (dict(task="digits", task_options={}, algorithm="ep", update_every=None, chunk=2), "static inputs"),
])
def test_bad_online_options_are_refused_before_any_work(tmp_path, monkeypatch, changes, phrase):
    import refimpl.training.loop as loop
    monkeypatch.setattr(loop.optim, "step", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(UnsupportedError, match=phrase):
        train(TrainConfig(**{**SMALL, **changes}), tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("algorithm", ["bptt", "online"])
@pytest.mark.parametrize("M", [2, 3, 8])
def test_micro_batches_combine_to_the_full_batch_gradient(algorithm, M):
    """Σ_m (b_m / B) g_m == the full batch's gradient (copy: a mask with weights), to 1e-12."""
    cfg = TrainConfig(**{**SMALL, "algorithm": algorithm, "update_every": None})
    whole = prepare(cfg).problem
    split = prepare(TrainConfig(**{**SMALL, "algorithm": algorithm, "update_every": None, "micro_batch": M})).problem
    idx = np.arange(3, 11)                                   # B = 8: micro-batches of 3/3/2 for M = 3
    loss, g, _, _ = whole.grads(whole.params, idx, None)
    loss_m, g_m, _, _ = split.grads(whole.params, idx, None)
    assert set(g_m) == set(g)
    assert abs(loss_m - loss) <= 1e-12 * max(1.0, abs(loss))
    for k in g:
        assert np.max(np.abs(g_m[k] - g[k])) <= 1e-12 * max(1.0, np.max(np.abs(g[k]))), k
    mask = make_task("copy-small").train.mask[:, idx]
    assert 0 < mask.sum() < mask.size                         # the loss really is masked


# ----------------------------------------------------------------------------------------------------------------
# Streams (tasks/stream.py, refimpl/training/stream.py)

from refimpl.runs import read_metrics  # noqa: E402
import tasks.stream as task_stream  # noqa: E402

STREAM = dict(task="copy-stream", task_options={"T": 200, "waiting_time": 2}, cell="lru", hidden=6, layers=2,
              batch_size=3, algorithm="online", update_every=8, log_every=1, lr=1e-2)


@pytest.mark.parametrize("name,options", [("copy-stream", {"seq_len": 3, "waiting_time": 2}),
                                          ("adding-stream", {"seq_len": 7})])
def test_a_stream_is_the_same_whichever_way_it_is_cut(name, options):
    task = make_task(name, seed=3, T=60, **options)
    whole = task.stream("train", 4).chunk(0, 60)
    for t0, t1 in [(0, 1), (5, 23), (22, 23), (17, 60)]:
        part = task.stream("train", 4).chunk(t0, t1)                 # a fresh stream: nothing produced before
        for a, b in zip(part, whole):
            assert np.array_equal(a, b[t0:t1])
        assert abs(part[2][:, 0].sum() - task.weight(t0, t1)) < 1e-12
    x, y, mask = whole
    E = task.episode_len
    assert x.shape[:2] == y.shape[:2] == mask.shape == (60, 4)
    assert not np.array_equal(x[:E], x[E:2 * E])                    # episodes differ
    assert not np.array_equal(task.stream("val", 4).chunk(0, E)[0], x[:E])    # splits differ
    assert np.array_equal(make_task(name, seed=3, T=60, **options).stream("train", 4).chunk(0, 60)[0], x)
    if name == "copy-stream":                                           # recall steps: weights 1/L, targets = bits
        L = options["seq_len"]
        np.testing.assert_allclose(mask[E - L:E], 1.0 / L)
        assert np.array_equal(y[E - L:E], x[:L, :, :1]) and mask[:E - L].sum() == 0
    else:                                                               # the answer step: u_i + u_j
        assert np.array_equal(mask[:, 0] > 0, np.arange(60) % E == E - 1)
        np.testing.assert_allclose(y[E - 1, :, 0], (x[:E, :, 0] * x[:E, :, 1]).sum(0))


def test_stream_training_reads_chunks_no_longer_than_an_update(tmp_path, monkeypatch):
    """Constant memory: the stream is produced K steps at most at a time, never whole; the run reads it once."""
    spans, real = [], task_stream.Stream.chunk

    def spy(self, t0, t1):
        if self.split == 0:
            spans.append((t0, t1))
        return real(self, t0, t1)
    monkeypatch.setattr(task_stream.Stream, "chunk", spy)
    r = train(TrainConfig(**STREAM, chunk=5), tmp_path / "run")
    assert max(t1 - t0 for t0, t1 in spans) <= 5
    assert [t for s in spans for t in range(*s)] == list(range(200))     # every step once, in order
    assert r.steps == 25 and np.isfinite(r.val_loss)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == list(range(1, 26)) and [r["t"] for r in train_rows][-1] == 200
    assert all(r["steps_per_s"] > 0 for r in train_rows)
    assert {r["split"] for r in rows} == {"train", "val", "test"}


@pytest.mark.parametrize("backend", ["numpy", "mlx"])
def test_stream_weights_do_not_depend_on_the_chunk(tmp_path, backend):
    if backend != "numpy":
        why = _carried(backend, "rnn", "rtrl")
        if why:
            pytest.skip(why)
    base = {**STREAM, "cell": "rnn", "backend": backend}
    a = _weights(TrainConfig(**base, chunk=1), tmp_path / "c1")
    b = _weights(TrainConfig(**base, chunk=8), tmp_path / "c8")
    ref = _weights(TrainConfig(**{**base, "backend": "numpy"}, chunk=3), tmp_path / "ref")
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-10, err_msg=k)
        np.testing.assert_allclose(a[k], ref[k], rtol=0, atol=1e-10, err_msg=k)


@pytest.mark.parametrize("changes,phrase", [
    (dict(update_every=None), "give --update-every K"),
    (dict(pooling="last"), "no last step to pool over"),
    (dict(pooling="mean"), "no last step to pool over"),
    (dict(algorithm="bptt"), "use tbptt -a window=k"),
    (dict(algorithm="fptt"), "can update inside a sequence"),
    (dict(update_every=201), r"T = 200"),
    (dict(chunk=0), "positive integer"),
    (dict(chunk=201), r"T = 200"),
    (dict(micro_batch=2), "lockstep"),
])
def test_bad_stream_runs_are_refused_before_any_work(tmp_path, monkeypatch, changes, phrase):
    monkeypatch.setattr(task_stream.Stream, "chunk", lambda *a: pytest.fail("work started"))
    with pytest.raises(UnsupportedError, match=phrase):
        train(TrainConfig(**{**STREAM, **changes}), tmp_path / "run")


def test_a_killed_stream_run_resumes_from_its_last_checkpoint(tmp_path, monkeypatch):
    import refimpl.training.stream as stream_mod
    cfg = TrainConfig(**STREAM, checkpoint_every=10)
    real, calls = stream_mod.optim.step, []

    def dies(*a, **k):
        calls.append(1)
        if len(calls) == 14:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(stream_mod.optim, "step", dies)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run")
    monkeypatch.setattr(stream_mod.optim, "step", real)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.npz").step == 10
    spans, chunk = [], task_stream.Stream.chunk
    monkeypatch.setattr(task_stream.Stream, "chunk",
                        lambda self, t0, t1: (spans.append(t0) if self.split == 0 else None) or chunk(self, t0, t1))
    r = train(cfg, tmp_path / "run", resume=True)
    assert min(spans) == 80                                            # 10 updates × K = 8 steps: from there on
    assert r.steps == 25
    steps = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["split"] == "train"]
    assert steps == list(range(1, 26))


@pytest.mark.slow
def test_stream_smoke_copy_learns(tmp_path):
    """A few thousand steps of copy-stream: the running loss falls well below chance (ln 2 per bit)."""
    cfg = TrainConfig(task="copy-stream", task_options={"T": 4000, "waiting_time": 2}, cell="lru", hidden=16,
                      layers=2, batch_size=8, algorithm="online", update_every=32, log_every=5, lr=1e-2)
    r = train(cfg, tmp_path / "run")
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["split"] == "train"]
    assert rows[0]["running_loss"] > 0.5 and r.train_loss < 0.2 and r.val_loss < 0.3
