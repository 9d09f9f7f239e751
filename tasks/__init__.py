"""Data sets and task definitions: `make_task(name, seed=…, data_dir=…, **options) -> Task` (tasks/base.py).

    name          kind      T × I             target / loss    n_out  chance         options (defaults)
    copy          sequence  (2L+1+D) × (W+2)  per_step / bce   W      0.5 bit acc.   seq_len L=4, bit_width W=1,
                                                                                     waiting_time D=16, n_train=10000,
                                                                                     n_val=1000, n_test=1000
    adding        sequence  seq_len × 2       final / mse      1      loss 1/12      seq_len=50, n_train=10000,
                                                                                     n_val=1000, n_test=1000
    listops       sequence  max_length × 16   label / ce       10     majority cls.  min_length=500, max_length=2000,
                                                                                     max_depth=10, max_args=10,
                                                                                     p_operator=0.25, pad="right",
                                                                                     n_train=96000, n_val=2000,
                                                                                     n_test=2000
    digits-seq    sequence  64 × 1 or 8 × 8   label / ce       10     0.1            mode="pixel" | "row"
    digits        static    (N, 64)           label / ce       10     0.1            —
    mnist         sequence  784 × 1           label / ce       10     0.1            val_fraction=0.1, n_train,
    mnist98       sequence  98 × 1            label / ce       10     0.1            n_val, n_test (None: all)
    mnist-static  static    (N, 784)          label / ce       10     0.1            (same as mnist)
    copy-stream   stream    T × (W+2)         per_step / bce   W      0.5 bit acc.   T=10**6, seq_len=4, bit_width=1,
                                                                                     waiting_time=16
    adding-stream stream    T × 2             per_step / mse   1      loss 1/12      T=10**6, seq_len=50

Streams (tasks/stream.py) are back-to-back episodes of copy / adding, produced chunk by chunk (never a (T, B, I)
array): `task.stream(split, batch)` has length, batch and chunk(t0, t1) -> (x, y, mask); they need a per-step readout.

Every task also takes dtype="float64" (default) or "float32", the dtype of x and of real targets and masks (labels stay
int64); it must match the model's dtype. The modules say the details: tasks/copy.py (channel layout), tasks/adding.py
(why chance is 1/12), tasks/listops.py (the expressions, MED's rounding, the tokens),
tasks/digits.py (scikit-learn's bundled 8×8 digits, 70/15/15 split), tasks/mnist.py (the IDX
files, --data-dir / REFIMPL_MNIST_DIR, the validation split), tasks/idx.py (read_idx / write_idx).

Seeds. The generated tasks (copy, adding, listops) draw each split from its own stream of np.random.SeedSequence(seed);
the fixed data sets (digits, mnist) are split by base.split_indices(…, seed). Nothing else changes the data:
the same name, seed and options give identical arrays.

Smaller or skewed training sets (tasks/subsets.py): every task but the streams also takes examples_frac (keep that
fraction of the training examples), skew ("long-tailed" or "step" class imbalance of the training split) and
imbalance (ρ, the ratio of the largest to the smallest class, default 10); validation and test stay whole.

`TASKS` maps each name to its builder, called as builder(seed, data_dir, **options) with every option given;
`make_task` checks the name and the options first (UnknownNameError with a did-you-mean for a name, UnsupportedError
saying what is allowed for a value), so builders can trust their arguments. `data_dir` is read by the MNIST tasks
only; the others ignore it.

`PRESETS` maps a preset name to (task name, options); `make_task` accepts a preset name too (options given
explicitly override the preset's):

    copy-small     copy, seq_len 4, bit_width 1, waiting_time 4 (T = 13), 64 / 32 / 32 examples: the test configuration
                   (the FPTT repo's copy_test config)
    copy-fptt      copy with the FPTT repo's default config: seq_len 4, bit_width 1, waiting_time 16 (T = 25)
    copy-lru       the online-LRU paper's copy task: 20 vectors of 7 bits, waiting_time 7 (T = 48), 20000 / 1000 / 1000
    adding-small   adding, T = 10, 256 / 64 / 64 examples
    adding-100     adding, T = 100
    listops-small  listops of 8 … 64 tokens (T = 64), 2000 / 500 / 500 examples: a quick configuration
    listops-512    listops of 100 … 512 tokens (T = 512), 20000 / 1000 / 1000 examples: LRA's task at a quarter length
    digits-pixel   digits-seq, mode "pixel" (T = 64)
    digits-row     digits-seq, mode "row" (T = 8)
    mnist98-small  mnist98 with 1000 / 500 / 1000 examples (train / val / test), for quick runs
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from typing import Callable, NamedTuple

import numpy as np

from refimpl.errors import UnknownNameError, UnsupportedError

from . import adding, copy, digits, listops, mnist, stream
from .subsets import SKEWS, subsample
from .base import TARGET_KINDS, Split, Task, split_indices
from .stream import StreamTask

DTYPES = ("float64", "float32")


class _Rule(NamedTuple):
    """What values an option takes: `allowed` says it in words, `ok` tests a value; `choices` for a named choice."""
    allowed: str
    ok: Callable[[object], bool]
    choices: tuple = ()


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _int_at_least(lo: int) -> _Rule:
    return _Rule(f"an integer ≥ {lo}", lambda v: _is_int(v) and v >= lo)


def _none_or_int_at_least(lo: int) -> _Rule:
    return _Rule(f"None (all) or an integer ≥ {lo}", lambda v: v is None or (_is_int(v) and v >= lo))


def _choice(*names: str) -> _Rule:
    return _Rule("one of " + ", ".join(repr(n) for n in names), lambda v: isinstance(v, str) and v in names, names)


_FRACTION = _Rule("a number strictly between 0 and 1",
                  lambda v: isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                  and 0 < v < 1)
_SIZES = {"n_train": _int_at_least(1), "n_val": _int_at_least(1), "n_test": _int_at_least(1)}
_MNIST = {"val_fraction": _FRACTION, "n_train": _none_or_int_at_least(1), "n_val": _none_or_int_at_least(1),
          "n_test": _none_or_int_at_least(1)}

class _Spec(NamedTuple):
    """A task: its builder, its kind ("sequence" or "static" (tasks/base.py), "stream" (tasks/stream.py), known
    without building it) and the rules
    of its options. The defaults live in the builders' signatures only."""
    builder: Callable[..., Task]
    kind: str
    rules: dict[str, _Rule]


_SPECS: dict[str, _Spec] = {
    "copy": _Spec(copy.build, "sequence", {"seq_len": _int_at_least(1), "bit_width": _int_at_least(1),
                                           "waiting_time": _int_at_least(0), **_SIZES}),
    "adding": _Spec(adding.build, "sequence", {"seq_len": _int_at_least(2), **_SIZES}),
    "listops": _Spec(listops.build, "sequence", {"min_length": _int_at_least(1), "max_length": _int_at_least(1),
                                                 "max_depth": _int_at_least(1), "max_args": _int_at_least(2),
                                                 "p_operator": _FRACTION, "pad": _choice(*listops.PAD_SIDES),
                                                 **_SIZES}),
    "digits-seq": _Spec(digits.build_seq, "sequence", {"mode": _choice(*digits.MODES)}),
    "digits": _Spec(digits.build_static, "static", {}),
    "mnist": _Spec(mnist.build_mnist, "sequence", _MNIST),
    "mnist98": _Spec(mnist.build_mnist98, "sequence", _MNIST),
    "mnist-static": _Spec(mnist.build_mnist_static, "static", _MNIST),
    "copy-stream": _Spec(stream.build_copy_stream, "stream", {"T": _int_at_least(1), "seq_len": _int_at_least(1),
                                                              "bit_width": _int_at_least(1),
                                                              "waiting_time": _int_at_least(0)}),
    "adding-stream": _Spec(stream.build_adding_stream, "stream", {"T": _int_at_least(1), "seq_len": _int_at_least(2)}),
}
_COMMON = {"dtype": ("float64", _choice(*DTYPES))}       # options every task takes: (default, rule)
#: Options every task with a training split takes, applied to it after building (tasks/subsets.py); listed in
#: task.info["options"] only when given.
_SUBSET = {"examples_frac": _Rule("a number in (0, 1]", lambda v: isinstance(v, (int, float, np.integer, np.floating))
                                  and not isinstance(v, bool) and 0 < v <= 1),
           "skew": _choice(*SKEWS),
           "imbalance": _Rule("a number ≥ 1", lambda v: isinstance(v, (int, float, np.integer, np.floating))
                              and not isinstance(v, bool) and v >= 1)}
_SUBSET_DEFAULTS = {"examples_frac": 1.0, "skew": "none", "imbalance": 10.0}

TASKS: dict[str, Callable[..., Task]] = {name: spec.builder for name, spec in _SPECS.items()}

PRESETS: dict[str, tuple[str, dict]] = {
    "copy-small": ("copy", {"seq_len": 4, "bit_width": 1, "waiting_time": 4, "n_train": 64, "n_val": 32,
                            "n_test": 32}),
    "copy-fptt": ("copy", {"seq_len": 4, "bit_width": 1, "waiting_time": 16}),
    "copy-lru": ("copy", {"seq_len": 20, "bit_width": 7, "waiting_time": 7, "n_train": 20000, "n_val": 1000,
                          "n_test": 1000}),
    "adding-small": ("adding", {"seq_len": 10, "n_train": 256, "n_val": 64, "n_test": 64}),
    "adding-100": ("adding", {"seq_len": 100}),
    "listops-small": ("listops", {"min_length": 8, "max_length": 64, "n_train": 2000, "n_val": 500, "n_test": 500}),
    "listops-512": ("listops", {"min_length": 100, "max_length": 512, "n_train": 20000, "n_val": 1000,
                                "n_test": 1000}),
    "digits-pixel": ("digits-seq", {"mode": "pixel"}),
    "digits-row": ("digits-seq", {"mode": "row"}),
    "mnist98-small": ("mnist98", {"n_train": 1000, "n_val": 500, "n_test": 1000}),
}


def task_options(name: str) -> dict:
    """The options of a task (or preset) and their defaults (a preset's values where it sets them), dtype included."""
    base = {}
    if name in PRESETS:
        name, base = PRESETS[name]
    if name not in _SPECS:
        raise UnknownNameError("task", name, [*TASKS, *PRESETS])
    params = inspect.signature(_SPECS[name].builder).parameters.values()
    defaults = {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return {**defaults, **{k: d for k, (d, _) in _COMMON.items()}, **base}


def task_kind(name: str) -> str:
    """The kind of a task (or preset), "sequence", "static" or "stream", without loading its data."""
    if name in PRESETS:
        name = PRESETS[name][0]
    if name not in _SPECS:
        raise UnknownNameError("task", name, [*TASKS, *PRESETS], "tasks.TASKS and tasks.PRESETS list them")
    return _SPECS[name].kind


def _check_option(task: str, option: str, value, rule: _Rule) -> None:
    if rule.ok(value):
        return
    if rule.choices:
        raise UnknownNameError(f"{task} {option}", value, rule.choices,
                               f"e.g. make_task({task!r}, {option}={rule.choices[0]!r})")
    raise UnsupportedError(f"{task}: option {option}={value!r} is not allowed; {option} must be {rule.allowed} "
                           f"(default {({**_SUBSET_DEFAULTS, **task_options(task)})[option]!r})")


def _cast(split: Split, dtype: np.dtype) -> Split:
    y = split.y.astype(dtype) if np.issubdtype(split.y.dtype, np.floating) else split.y
    mask = None if split.mask is None else split.mask.astype(dtype)
    return Split(x=split.x.astype(dtype, copy=False), y=y, mask=mask)


def make_task(name: str, *, seed: int = 0, data_dir=None, **options) -> Task:
    """Build a task (or a preset) with its train / val / test splits.

    Args:
        name: a task name (TASKS) or a preset name (PRESETS).
        seed: a nonnegative integer; it alone (with the name and options) fixes the data and the splits.
        data_dir: the directory of the MNIST IDX files (else $REFIMPL_MNIST_DIR); ignored by the other tasks.
        **options: the task's options (task_options(name) lists them with their defaults), and dtype.
    Returns:
        the Task; task.info["options"] holds every option it was built with (and info["preset"] a preset's name).
    Raises:
        UnknownNameError for an unknown task, option or choice (mode, dtype); UnsupportedError for a bad seed or
        option value, a missing scikit-learn (digits), missing or corrupt MNIST files.
    """
    preset = None
    if name in PRESETS:
        preset, (name, base) = name, PRESETS[name]
        options = {**base, **options}
    if name not in _SPECS:
        raise UnknownNameError("task", name, [*TASKS, *PRESETS], "tasks.TASKS and tasks.PRESETS list them")
    if not _is_int(seed) or seed < 0:
        raise UnsupportedError(f"{name}: seed must be a nonnegative integer, got {seed!r}; e.g. seed=0")
    builder, rules = _SPECS[name].builder, {**_SPECS[name].rules, **{k: rule for k, (_, rule) in _COMMON.items()}}
    if _SPECS[name].kind != "stream":
        rules.update(_SUBSET)
    for option, value in options.items():
        if option not in rules:
            raise UnknownNameError(f"{name} option", option, rules,
                                   f"the defaults are {task_options(name)}")
        _check_option(name, option, value, rules[option])
    resolved = {**task_options(name), **options}
    dtype = np.dtype(resolved.pop("dtype"))
    cut = {k: resolved.pop(k) for k in _SUBSET if k in resolved}
    task = subsample(builder(int(seed), data_dir, **resolved), **cut)
    if _SPECS[name].kind == "stream":                 # produced chunk by chunk, in its dtype
        task = replace(task, dtype=dtype.name)
    elif dtype != np.float64:
        task = replace(task, train=_cast(task.train, dtype), val=_cast(task.val, dtype), test=_cast(task.test, dtype))
    info = {**task.info, "options": {**resolved, **cut, "dtype": dtype.name}}
    if preset is not None:
        info["preset"] = preset
    return replace(task, info=info)


# The rules and the builders' signatures must name the same options (a mismatch is a bug here, not a user error).
for _name, _spec in _SPECS.items():
    _params = {p.name for p in inspect.signature(_spec.builder).parameters.values()
               if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert _params == set(_spec.rules), f"tasks: {_name} builder options {_params} != rules {set(_spec.rules)}"

__all__ = ["TASKS", "PRESETS", "DTYPES", "make_task", "task_kind", "task_options", "Task", "Split", "TARGET_KINDS",
           "split_indices", "StreamTask"]
