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
