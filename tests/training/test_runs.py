"""The run-directory files (refimpl/runs.py): checkpoint keys, torn metrics, the resume cut, refused configs."""

import json
from dataclasses import dataclass

import numpy as np
import pytest

from refimpl.errors import UnsupportedError
from refimpl.runs import (MetricsLog, TrainingDiverged, batch_at, config_from_dict, load_checkpoint, open_run_dir,
                          read_metrics, save_checkpoint)


def test_checkpoint_keys_and_round_trip(tmp_path):
    path = tmp_path / "checkpoint.npz"
    params, opt = {"layers.0.cell.nu_log": np.arange(3.0)}, {"m/layers.0.cell.nu_log": np.ones(3), "t": np.int64(4)}
    save_checkpoint(path, 7, params, opt, buffer={"bn.running_mean": np.zeros(2)})
    with np.load(path) as z:                                  # the keys written are the format's, spelled out
        assert sorted(z.files) == ["buffer/bn.running_mean", "opt/m/layers.0.cell.nu_log", "opt/t",
                                   "param/layers.0.cell.nu_log", "step"]
    ck = load_checkpoint(path)
    assert ck.step == 7 and list(ck.params) == list(params) and set(ck.opt_state) == set(opt)
    assert np.array_equal(ck.params["layers.0.cell.nu_log"], np.arange(3.0)) and int(ck.opt_state["t"]) == 4
    assert list(ck.groups) == ["buffer"] and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_torn_last_line_is_ignored_and_resume_drops_what_came_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"split": "train", "step": s} for s in (1, 2, 3)] + [{"split": "test", "step": 2}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"split": "tra')
    assert read_metrics(path) == records
    MetricsLog(path, keep_until_step=2).close()
    assert read_metrics(path) == records[:2]


def test_run_directories_are_not_overwritten_or_invented(tmp_path):
    run = open_run_dir(tmp_path / "run", resume=False)
    assert run.saved_config is None and run.checkpoint == tmp_path / "run" / "checkpoint.npz"
    with pytest.raises(UnsupportedError, match="no config.json"):
        open_run_dir(tmp_path / "run", resume=True)
    (tmp_path / "run").mkdir()
    run.config.write_text('{"a": 1}')
    assert open_run_dir(tmp_path / "run", resume=True).saved_config == {"a": 1}
    with pytest.raises(UnsupportedError, match="already holds a run"):
        open_run_dir(tmp_path / "run", resume=False)


def test_unknown_config_fields_are_refused_and_divergence_says_what_was_kept(tmp_path):
    @dataclass(frozen=True)
    class Config:
        lr: float = 0.1
    assert config_from_dict(Config, {"lr": 0.5}) == Config(0.5)
    with pytest.raises(UnsupportedError, match=r"unknown fields \['lrr'\]"):
        config_from_dict(Config, {"lrr": 0.5})
    assert "no checkpoint had been written yet" in str(TrainingDiverged.at(3, "why", tmp_path / "checkpoint.npz"))


def test_batch_at_covers_each_epoch_once_and_depends_on_seed_and_step_only():
    """The data order of both trainers: an epoch's batches partition the training set (the last one shorter), each
    batch is sorted, and the same (seed, step) gives the same batch however the run got there (exact resume)."""
    n, batch_size = 23, 5
    S = -(-n // batch_size)
    for epoch in range(3):
        batches = [batch_at(7, epoch * S + i, S, n, batch_size) for i in range(S)]
        assert {e for e, _ in batches} == {epoch}
        seen = np.concatenate([idx for _, idx in batches])
        assert sorted(seen.tolist()) == list(range(n))
        assert all(np.all(np.diff(idx) > 0) for _, idx in batches)
    e1, first = batch_at(7, 4, S, n, batch_size)
    e2, again = batch_at(7, 4, S, n, batch_size)
    assert e1 == e2 and np.array_equal(first, again)
    assert not all(np.array_equal(batch_at(7, k, S, n, batch_size)[1], batch_at(8, k, S, n, batch_size)[1])
                   for k in range(S))
