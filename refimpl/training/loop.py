"""Training: any cell × algorithm × backend on a task, with a run directory you can trust.

    train(config, run_dir, resume=False) -> RunResult

One step, k = 0 … total_steps − 1:

    (1) batch:     epoch e = k // S, position i = k mod S (S = steps per epoch); the epoch's order is the seeded
                   permutation default_rng([seed, e]).permutation(N_train), batch = its i-th slice of B examples
    (2) gradient:  (L, g) = the problem's gradient on the batch (refimpl/training/problems.py: for a sequence task
                   refimpl.model_grads(model, θ, x, y, loss, mask, algorithm, backend); for a static one EP's)
    (3) update:    θ ← optimizer step (refimpl.optim: clipping by global norm, the learning-rate schedule, recurrent
                   parameters with lr × rec_lr_factor and no weight decay)
and after the last step of every epoch: the validation loss and accuracy; at the very end also the test split.

The run directory (refimpl/runs.py):
    config.json       the TrainConfig (everything needed to rerun or resume)
    metrics.jsonl     one JSON object per line, flushed as it goes: {"split": "train"|"val"|"test", "step", "epoch",
                      "loss", "accuracy", …}; "step" counts completed optimizer steps. Wall-clock fields are in
                      "time_s" (and are the only fields that differ between two runs with the same seed).
    checkpoint.npz    parameters, optimizer state and the step count, written atomically (temp file + rename)
                      after every epoch (and every `checkpoint_every` steps)
    result.json       the final numbers, written atomically at the end (the final training loss is measured on a
                      seeded subset of at most TRAIN_EVAL_SIZE training examples)
`resume=True` continues from checkpoint.npz: the metrics logged after the checkpoint are dropped and recomputed, so a
killed and resumed run ends with exactly the metrics of an uninterrupted one. A non-finite loss, gradient or
parameter stops the run with `TrainingDiverged`, leaving the last good checkpoint in place.

A stream task (tasks/stream.py: one long sequence, no batches of examples) trains by refimpl/training/stream.py: one
pass, an update every --update-every steps.
"""

from __future__ import annotations

import dataclasses
import time
import tracemalloc
from typing import NamedTuple

import numpy as np

from tasks import task_kind

from .. import optim
from ..errors import NumericalError, UnsupportedError
from ..runs import (ProgressBar, TrainingDiverged, atomic_write_json, batch_at, begin_run, open_run_dir,
                    resume_config, save_checkpoint)
from .config import RESUME_CHANGES, RunResult, TrainConfig, check_config
from .problems import prepare
from .stream import train_stream

#: The final training loss is measured on at most this many training examples (a seeded subset), so that the end
#: of a run on a large task does not cost a full pass over the training set.
TRAIN_EVAL_SIZE = 2000


def train(config: TrainConfig, run_dir, *, resume: bool = False, progress: bool = False,
          track_memory: bool = False, given: dict | None = None) -> RunResult:
    """Train `config` into `run_dir` (created), or continue it with resume=True. See the module doc; a stream task
    trains by refimpl/training/stream.py.

    On resume the stored config.json wins; `given` ({config field: its command-line option}) names the options the
    user set: those in RESUME_CHANGES are taken from `config` (e.g. more --epochs), any other that differs from the
    stored value is refused (runs.resume_config)."""
    run = open_run_dir(run_dir, resume)
    if run.saved_config is not None:
        saved = TrainConfig.from_dict(run.saved_config, run.config)
        config = saved if given is None else resume_config(saved, config, given, RESUME_CHANGES)
        if given and "epochs" in given and "steps" not in given and config.steps is not None:
            raise UnsupportedError(f"the run in {run.path} is {config.steps} steps long (--steps, which overrides "
                                   f"--epochs): extend it with --steps instead of --epochs")
    if task_kind(config.task) == "stream":
        return train_stream(config, run_dir, resume=resume, progress=progress)
    check_config(config)
    problem, opt, steps_per_epoch, total = prepare(config)
    task, params = problem.task, problem.params
    start, params, opt_state, log = begin_run(run, dataclasses.asdict(config), params,
                                              optim.init_state(params, opt), resume)
    if start > total:
        log.close()
        raise UnsupportedError(f"the run in {run.path} has done {start} steps, more than the {total} that its "
                               f"--epochs/--steps now give; give at least as many (--steps {start} or more)")

    on_device = None
    if problem.device is not None:                  # parameters and optimizer state moved once, kept on the device
        on_device = OnDevice(*problem.device.load(params, opt_state))
    if track_memory:
        tracemalloc.start()
    t0 = time.perf_counter()
    bar = ProgressBar(total, start) if progress else None
    last = {}
    try:
        for k in range(start, total):
            epoch, idx = batch_at(config.seed, k, steps_per_epoch, task.train.n, config.batch_size)   # (1)
            step = k + 1
            logged = step % config.log_every == 0 or step == total
            end_of_epoch = step % steps_per_epoch == 0 or step == total
            saved = end_of_epoch or (config.checkpoint_every and step % config.checkpoint_every == 0)
            if on_device is not None:                    # (2)–(3) in the backend's arrays (refimpl/training/device.py)
                on_device = device_step(problem, on_device, idx, k, run, logged=logged, host=saved)
                if on_device.host is not None:
                    params, opt_state = on_device.host
                loss, info = on_device.loss, on_device.info
            else:
                try:
                    loss, grads, opt_state, params = problem.grads(params, idx, opt_state)      # (2)
                    trained = {n: params[n] for n in params if n in grads}   # untrained parameters are left alone
                    with np.errstate(all="ignore"):         # a blow-up is detected just below and reported
                        new, opt_state, info = optim.step(trained, grads, opt_state, opt)        # (3)
                except NumericalError as e:
                    raise TrainingDiverged.at(k + 1, str(e), run.checkpoint) from None
                bad = [n for n, v in new.items() if not np.all(np.isfinite(v))]
                if bad:
                    raise TrainingDiverged.at(k + 1, f"the update made {bad[0]!r} non-finite", run.checkpoint)
                params = {**params, **new}
            last = {"loss": loss} if loss is not None else last
            if logged:
                log.write({"split": "train", "step": step, "epoch": epoch, "loss": loss, "lr": info["lr"],
                           "grad_norm": info["grad_norm"], "time_s": time.perf_counter() - t0})
            if end_of_epoch:
                val_loss, val_acc = problem.evaluate(params, task.val)
                last.update(val_loss=val_loss, val_acc=val_acc)
                log.write({"split": "val", "step": step, "epoch": epoch, "loss": val_loss, "accuracy": val_acc,
                           "time_s": time.perf_counter() - t0})
            if saved:
                save_checkpoint(run.checkpoint, step, params, opt_state)
            if bar is not None:
                bar.update(1, last)
        test_loss, test_acc = problem.evaluate(params, task.test)
        val_loss, val_acc = problem.evaluate(params, task.val)
        train_loss, _ = problem.evaluate(params, _subset(task.train, TRAIN_EVAL_SIZE, config.seed))
        elapsed = time.perf_counter() - t0
        log.write({"split": "test", "step": total, "epoch": (total - 1) // steps_per_epoch, "loss": test_loss,
                   "accuracy": test_acc, "time_s": elapsed})
    finally:
        log.close()
        if bar is not None:
            bar.close()
        peak = tracemalloc.get_traced_memory()[1] if track_memory else None
        if track_memory:
            tracemalloc.stop()
    result = RunResult(str(run.path), total, train_loss, val_loss, val_acc, test_loss, test_acc, elapsed, peak)
    atomic_write_json(run.path / "result.json", dataclasses.asdict(result))
    return result


class OnDevice(NamedTuple):
    """A run's training state in a backend's arrays, and what the last step handed the host (None when nothing)."""
    params: dict
    state: dict
    finite: object = None               # on the device: every step since the last report was finite (None: none ran)
    loss: float | None = None
    info: dict | None = None
    host: tuple | None = None           # (params, opt_state) as NumPy, when the step was asked for them


def device_step(problem, on: OnDevice, idx, k: int, run, *, logged: bool, host: bool) -> OnDevice:
    """(2)–(3) as one DeviceStep on the device: the batch crosses to the device; the loss, the gradient norm (for
    logging) and the parameters (for evaluation and checkpoints) cross back only when asked. A non-finite step is
    skipped on the device, and its flag is kept (and-ed with the later steps') until the next report, which raises
    TrainingDiverged: nothing non-finite goes unreported, whichever step it was."""
    step = problem.device
    x, y, mask = step.to_device(problem.batch(idx))
    params, state, value, finite = step(on.params, on.state, x, y, mask)
    finite = finite if on.finite is None else on.finite & finite
    if not (logged or host):
        return OnDevice(params, state, finite)
    try:
        loss = step.report(value, finite)
    except NumericalError as e:
        raise TrainingDiverged.at(k + 1, str(e), run.checkpoint) from None
    info = {"lr": optim.lr_at(k, step.opt), "grad_norm": float(np.asarray(step.to_host(step.last_norm)))}
    return OnDevice(params, state, None, loss, info, step.load_back(params, state) if host else None)


def _subset(split, n: int, seed: int):
    """At most n examples of a split, chosen by a seeded permutation (the whole split when it is small)."""
    if split.n <= n:
        return split
    idx = np.sort(np.random.default_rng([seed, 2**31 - 1]).permutation(split.n)[:n])
    x = split.x[:, idx] if split.x.ndim == 3 else split.x[idx]
    y = split.y[:, idx] if (split.mask is not None) else split.y[idx]
    return dataclasses.replace(split, x=x, y=y, mask=None if split.mask is None else split.mask[:, idx])
