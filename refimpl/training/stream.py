"""Training on a stream (a task of kind "stream", tasks/stream.py): one pass, an optimizer update every K steps.

    train_stream(config, run_dir, resume=False, progress=False) -> RunResult          (loop.train calls it)

The stream of T steps (B columns: --batch-size) is read once, chunk by chunk, by the algorithm's model_grads (the
chunked driver, refimpl/algorithms/chunked.py) with update_every = K (--update-every, required) and an on_update that
takes one optimizer step (refimpl.optim, schedule over ⌈T/K⌉ updates) and hands the new parameters back, which the rest
of the stream uses. Memory is constant in T: the driver keeps O(chunk) activations and the carries; nothing here keeps
more than the current update's numbers.

What it needs (refused before any work, with the fix): --update-every K (1 ≤ K ≤ T), an algorithm that updates inside
a sequence (the RTRL family, tbptt: Algorithm.updates_inside), a per-step memoryless readout (pooling none or
cumulative_mean), no --micro-batch. --steps and --epochs mean nothing here (the stream is read once).

The run directory (refimpl/runs.py):
    metrics.jsonl   every --log-every updates: {"split": "train", "step": updates done, "t": time steps done,
                    "loss": the loss since the last update as a mean per episode (Σ l_t / the loss weight of those
                    steps, tasks/stream.py `weight`; null when no step of them has a loss), "running_loss": the same
                    over the updates since the last record, "steps_per_s", "lr", "grad_norm", "time_s"}; at the end
                    "val" and "test": the loss (and the copy task's bit accuracy) of the final weights on a held-out
                    stream of EVAL_EPISODES episodes, forward only
    checkpoint.npz  parameters, optimizer state and the updates done: every --checkpoint-every updates (default
                    CHECKPOINT_EVERY) and at the end
Resume (--resume): from the last checkpointed update, with *fresh carries* — the stream continues at step
t = updates · K from zero states, zero traces (and a fresh cumulative_mean) — so a resumed run is close to, but not
bit-identical with, an uninterrupted one. The metrics logged after the checkpoint are dropped and recomputed.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time

import numpy as np

from tasks import make_task

from .. import optim
from ..algorithms import get_algorithm
from ..errors import NumericalError, UnsupportedError
from ..nn.losses import loss_forward
from ..nn.model import forward
from ..registry import cell_kernels
from ..runs import TrainingDiverged, atomic_write_json, begin_run, open_run_dir, save_checkpoint
from .config import RunResult, TrainConfig, check_config, check_freeze
from .problems import build_model, check_online

#: Default checkpoint interval, in updates.
CHECKPOINT_EVERY = 1000

#: The held-out streams (val, test) of the final evaluation: this many episodes.
EVAL_EPISODES = 20


class _Offset:
    """A stream read from step `start` on (a resumed run): the same chunks, shifted."""

    def __init__(self, stream, start: int):
        self.stream, self.start = stream, start
        self.length, self.batch = stream.length - start, stream.batch

    def chunk(self, t0: int, t1: int):
        return self.stream.chunk(self.start + t0, self.start + t1)


def check_stream_config(config: TrainConfig, task, model) -> dict:
    """Refuse what cannot train on a stream (module doc), before any work; the algorithm's options."""
    if config.update_every is None:
        raise UnsupportedError(f"task {task.name!r} is a stream of T = {task.length} steps with no end to wait for: "
                               f"give --update-every K (one optimizer update every K steps, e.g. --update-every 64)")
    if config.dropout:
        raise UnsupportedError(f"--dropout draws one mask per sequence and example; a stream is one sequence without "
                               f"end, trained without dropout here: drop --dropout (or train on the episodic task, "
                               f"e.g. {task.name.replace('-stream', '')})")
    if not model.per_step:
        raise UnsupportedError(f"a stream has no last step to pool over: pooling {model.pooling!r} needs the whole "
                               f"sequence; use --pooling none or cumulative_mean (memoryless per-step readouts)")
    return check_online(config, model, task.length, None)


def _progress_line(t: int, T: int, rate: float, loss) -> None:
    shown = f"{loss:.4f}" if loss is not None else "-"
    sys.stderr.write(f"\rt {t}/{T} ({100 * t / T:.1f}%)  {rate:,.0f} steps/s  running loss {shown}   ")
    sys.stderr.flush()


def evaluate_stream(task, model, params, kernels, split: str, batch: int) -> tuple[float, float | None]:
    """(mean loss per episode, bit accuracy (copy) or None) of `params` on EVAL_EPISODES episodes of `split`."""
    n = min(task.length, EVAL_EPISODES * task.episode_len)
    x, y, mask = task.stream(split, batch, n).chunk(0, n)
    with np.errstate(all="ignore"):
        out, _ = forward(model, params, x, kernels)
        value, _ = loss_forward(task.loss, out, y, mask)
    loss = float(value) / max(task.weight(0, n), 1e-300)
    if task.loss != "bce":
        return loss, None
    hit = ((out > 0) == (y > 0.5)) * (mask > 0)[..., None]
    return loss, float(hit.sum() / max((mask > 0).sum() * y.shape[-1], 1))


def train_stream(config: TrainConfig, run_dir, *, resume: bool = False, progress: bool = False) -> RunResult:
    """Train `config` (a stream task) into `run_dir`, or continue it with resume=True. See the module doc."""
    run = open_run_dir(run_dir, resume)
    if run.saved_config is not None:
        config = TrainConfig.from_dict(run.saved_config)
    check_config(config)
    task = make_task(config.task, seed=config.seed, data_dir=config.data_dir, **config.task_options)
    model, params = build_model(config, task)
    options = check_stream_config(config, task, model)
    algo = get_algorithm(config.algorithm, "model")
    kernels = cell_kernels(model.cell, config.backend, model.dtype)
    T, K, B = task.length, config.update_every, config.batch_size
    total = math.ceil(T / K)                                          # optimizer updates of the whole stream
    opt = optim.OptimConfig(name=config.optimizer, lr=config.lr, weight_decay=config.weight_decay,
                            rec_lr_factor=config.rec_lr_factor, freeze=check_freeze(config.freeze, params, model.cell),
                            clip_norm=config.clip_norm,
                            schedule=config.schedule, warmup_steps=config.warmup_steps, total_steps=total)
    start, params, opt_state, log = begin_run(run, dataclasses.asdict(config), params,
                                              optim.init_state(params, opt), resume)
    every_ckpt = config.checkpoint_every or CHECKPOINT_EVERY
    t_start = time.perf_counter()
    s = {"params": params, "opt": opt_state, "updates": start, "seen": 0.0, "log_loss": 0.0, "log_w": 0.0,
         "log_t": start * K, "log_time": t_start, "shown": time.perf_counter(), "running": None}

    def update(grads, t, loss_since):
        """One optimizer step after the steps up to (offset) t, with the gradient and loss since the last one."""
        t_abs, t_prev = start * K + t, s["updates"] * K
        bad = [k for k, g in grads.items() if not np.all(np.isfinite(g))]
        if bad or not np.isfinite(loss_since):
            what = f"the gradient of {bad[0]!r}" if bad else "the loss"
            raise TrainingDiverged.at(s["updates"] + 1, f"{what} is not finite", run.checkpoint)
        with np.errstate(all="ignore"):
            new, s["opt"], info = optim.step(s["params"], grads, s["opt"], opt)
        bad = [n for n, v in new.items() if not np.all(np.isfinite(v))]
        if bad:
            raise TrainingDiverged.at(s["updates"] + 1, f"the update made {bad[0]!r} non-finite", run.checkpoint)
        s["params"] = {**s["params"], **new}
        s["updates"] += 1
        s["seen"] += loss_since
        w = task.weight(t_prev, t_abs)
        s["log_loss"], s["log_w"] = s["log_loss"] + loss_since, s["log_w"] + w
        now = time.perf_counter()
        if s["updates"] % config.log_every == 0 or s["updates"] == total:
            rate = (t_abs - s["log_t"]) / max(now - s["log_time"], 1e-9)
            s["running"] = s["log_loss"] / s["log_w"] if s["log_w"] else s["running"]
            log.write({"split": "train", "step": s["updates"], "t": t_abs,
                       "loss": loss_since / w if w else None, "running_loss": s["running"],
                       "steps_per_s": rate, "lr": info["lr"], "grad_norm": info["grad_norm"],
                       "time_s": now - t_start})
            s["log_loss"] = s["log_w"] = 0.0
            s["log_t"], s["log_time"] = t_abs, now
            if progress and (now - s["shown"] > 0.5 or s["updates"] == total):
                _progress_line(t_abs, T, rate, s["running"])
                s["shown"] = now
        if s["updates"] % every_ckpt == 0 or s["updates"] == total:
            save_checkpoint(run.checkpoint, s["updates"], s["params"], s["opt"])
        return s["params"]

    try:
        if start < total:
            source = _Offset(task.stream("train", B), start * K)
            try:
                with np.errstate(all="ignore"):
                    value, grads = algo.model_grads(kernels, model, s["params"], source, None, task.loss, None,
                                                    update_every=K, on_update=update, **algo.check_options(options))
            except NumericalError as e:
                raise TrainingDiverged.at(s["updates"] + 1, str(e), run.checkpoint) from None
            update(grads, source.length, value - s["seen"])                      # the last update, at t = T
        params = s["params"]
        val_loss, val_acc = evaluate_stream(task, model, params, kernels, "val", B)
        test_loss, test_acc = evaluate_stream(task, model, params, kernels, "test", B)
        elapsed = time.perf_counter() - t_start
        done = resume and start == total                   # a finished run resumed: its val record is kept
        for split, loss, acc in (("val", val_loss, val_acc), ("test", test_loss, test_acc))[int(done):]:
            log.write({"split": split, "step": total, "t": T, "loss": loss, "accuracy": acc, "time_s": elapsed})
    finally:
        log.close()
        if progress:
            sys.stderr.write("\n")
    train_loss = s["running"] if s["running"] is not None else float("nan")
    result = RunResult(str(run.path), total, train_loss, val_loss, val_acc, test_loss, test_acc, elapsed)
    atomic_write_json(run.path / "result.json", dataclasses.asdict(result))
    return result
