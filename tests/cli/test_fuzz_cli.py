"""Fuzzing the command line: hypothesis-generated command lines and damaged run directories, run in-process through
Click's runner. Whatever is thrown at it, the CLI must answer without a traceback, with exit status 0, 1 or 2, and
with exactly one line ("error: …") on stderr when the status is 2.

1. Command lines. The options of every command are read from Click's own metadata (cli.commands, each command's
   params: type, choices, ranges, flags), so a new option is fuzzed without touching this file:
       valid     a value the option's type accepts (a choice, an integer or float in its range, a flag), small
       invalid   one value the type refuses (not a choice, out of range, nan/inf, not a number); for an untyped
                 (text) option: a word no command knows; for a repeated -x KEY=VALUE option: no "=", an unknown
                 key, or a key its help names (e.g. -a passes=2) with a value of the wrong kind
   Every command line gets fixed tiny sizes (FIXED) so a valid run takes a fraction of a second; the commands that are
   slow even then (SLOW: the default job, fptt-stability, sweep, reproduce) are fuzzed with invalid values only. Paths (--out,
   --resume, --data-dir, plot's run directories) point into a fresh temporary directory.
2. Run directories. A finished tiny `train` run is damaged by hypothesis (a file truncated at a random offset, a
   flipped byte, an empty file, a JSON value replaced by one of another type) and given to `train --resume` and `plot`.

The default profile runs a few dozen examples per test (FUZZ_EXAMPLES; about 20 s in all); the `slow` tests run
LONG_EXAMPLES each.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings, strategies as st

from refimpl.cli import cli

FUZZ_EXAMPLES = 12                # the default profile: 24 valid + 4 drawing + 36 invalid lines, 8 damaged dirs
LONG_EXAMPLES = int(os.environ.get("REFIMPL_FUZZ_EXAMPLES", "300"))   # the slow profile; the variable sets it

#: Tiny sizes for each command (they replace any generated value of the same option on a valid command line).
FIXED = {
    "train": ["--task", "copy", "-t", "n_train=8", "-t", "n_val=4", "-t", "n_test=4", "-t", "waiting_time=1",
              "-t", "seq_len=2", "--steps", "1", "--hidden", "2", "--batch-size", "4", "--no-progress"],
    "compare": ["--task", "copy", "-t", "n_train=8", "-t", "n_val=4", "-t", "n_test=4", "-t", "waiting_time=1",
                "-t", "seq_len=2", "--steps", "1", "--hidden", "2", "--batch-size", "4", "--no-progress"],
    "gradcheck": ["--cell", "rnn", "--seq-len", "2", "--hidden", "2", "--batch", "1", "--n-in", "2", "--layers", "1"],
    "ep-curves": ["--T", "3", "--K", "2", "--batch", "2"],
    "ep-recipe": ["--T", "3", "--K", "2", "--batch", "2", "--batches", "1"],
    "bpfree": ["--arch", "3", "--epochs", "1", "--batch-size", "512", "--no-trackers", "--no-progress"],
    "sweep": ["--algorithms", "bp", "--archs", "2", "--lr-points", "1", "--epochs", "1", "--workers", "1",
              "--no-trackers"],
    "fptt-stability": ["--seeds", "1", "--width", "2", "--precision", "f64/f64", "--cell", "rnn", "--warmup",
                       "direct"],
    "plot": [],
    "backends": [],
    "reproduce": ["online-lru-copy", "--scheduler", "inline", "--budget", "quick"],
}
#: Commands fuzzed with invalid values only (slow even at tiny sizes, or a process pool).
SLOW = {"sweep", "fptt-stability", "reproduce"}
#: Options not fuzzed: where files go (set below), and what would make a tiny run large (their ranges are checked by
#: tests/cli/test_errors_cli.py).
PATHS = {"out_dir", "out_path", "resume_dir", "data_dir", "run_dirs", "results_dir"}
UNBOUNDED = {"full", "benchmark", "preset", "recipe"}


def _opt(param) -> str:
    return max(param.opts, key=len)


def commands():
    return sorted(cli.commands)


def fuzzed_params(name: str) -> list:
    return [p for p in cli.commands[name].params if isinstance(p, click.Option) and p.name not in PATHS
            and p.name not in UNBOUNDED and p.name != "help"]


# ----------------------------------------------------------------------------------------------------------------
# Values from an option's Click type

def _valid_range(t):
    lo = t.min if t.min is not None else -3
    if isinstance(t, click.IntRange):
        lo = lo + (1 if t.min_open else 0)
        hi = min(lo + 3, t.max - (1 if t.max_open else 0)) if t.max is not None else lo + 3
        return st.integers(lo, hi).map(str)
    hi = t.max if t.max is not None else lo + 1.0
    return st.floats(lo, hi, exclude_min=t.min_open, exclude_max=t.max_open, allow_nan=False).map(repr)


def _invalid_range(t):
    bad = [st.just("nan"), st.just("inf"), st.just("abc")] if isinstance(t, click.FloatRange) else [st.just("1.5x")]
    if t.min is not None:
        below = (st.integers(t.min - 100, t.min - (0 if t.min_open else 1)) if isinstance(t, click.IntRange) else
                 st.floats(t.min - 100, t.min, exclude_max=not t.min_open, allow_nan=False))
        bad.append(below.map(str))
    if t.max is not None:
        above = (st.integers(t.max + (0 if t.max_open else 1), t.max + 100) if isinstance(t, click.IntRange) else
                 st.floats(t.max, t.max + 100, exclude_min=not t.max_open, allow_nan=False))
        bad.append(above.map(str))
    return st.one_of(bad)


WORD = st.text(st.sampled_from("abcxyz_-=,.0123456789"), min_size=0, max_size=8)


def valid_value(param):
    """A strategy of argv pieces for one option with an accepted value (None: leave the option out)."""
    t = param.type
    if param.is_flag:
        return st.sampled_from([[], [param.opts[0]]] + ([[param.secondary_opts[0]]] if param.secondary_opts else []))
    if isinstance(t, click.Choice):
        return st.sampled_from(list(t.choices)).map(lambda v: [_opt(param), v])
    if isinstance(t, (click.IntRange, click.FloatRange)):
        return _valid_range(t).map(lambda v: [_opt(param), v])
    return st.just([])                                           # text: the default (fuzzed as invalid below)


def invalid_value(param):
    """A strategy of argv pieces for one option with a refused value, and whether Click itself must refuse it."""
    t = param.type
    if isinstance(t, click.Choice):
        return WORD.filter(lambda w: w not in t.choices).map(lambda v: ([_opt(param), v], True))
    if isinstance(t, (click.IntRange, click.FloatRange)):
        return _invalid_range(t).map(lambda v: ([_opt(param), v], True))
    if isinstance(t, (click.types.IntParamType, click.types.FloatParamType)):
        return st.just(([_opt(param), "x1"], True))
    if param.multiple:                                           # -x KEY=VALUE options
        keys = sorted(set(re.findall(r"(\w+)=", param.help or ""))) or ["nosuchkey"]   # the keys its help names
        known = st.tuples(st.sampled_from(keys), st.sampled_from(["x", "-1", "0", "1e400", "", "a,b"])).map("=".join)
        return st.one_of(WORD.filter(lambda w: "=" not in w), st.just("nosuchkey=1"), known).map(
            lambda v: ([_opt(param), v], False))
    return st.one_of(WORD, st.just("nosuchname")).map(lambda v: ([_opt(param), v], False))


# ----------------------------------------------------------------------------------------------------------------
# Running a command line and checking the answer

def check_answer(r, args, refused=()) -> None:
    """No traceback; status 0, 1 or 2; on 2 exactly one line on stderr, starting with "error:". `refused`: the
    spellings of an option whose value its type refuses, so the status must be 2 and the line must name it."""
    crash = r.exception is not None and not isinstance(r.exception, SystemExit)
    assert not crash, f"{args}: {type(r.exception).__name__}: {r.exception}"
    assert "Traceback" not in r.output, (args, r.output)
    assert r.exit_code in (0, 1, 2), (args, r.exit_code, r.output)
    if refused:
        assert r.exit_code == 2, (args, r.output)
    if r.exit_code == 2:
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), (args, r.stderr)
        assert not refused or any(f"'{o}'" in lines[0] for o in refused), (args, lines[0])


def _paths(name: str, tmp: Path, run_dir: Path | None) -> list:
    if name == "plot":
        return [str(run_dir), "--out", str(tmp / "curves.png")]
    paths = []
    if any(p.name == "out_dir" for p in cli.commands[name].params):
        paths += ["--out", str(tmp / "out")]
    if any(p.name == "results_dir" for p in cli.commands[name].params):
        paths += ["--results", str(tmp / "results")]
    return paths


def invoke_in(tmp: Path, args):
    cwd = os.getcwd()
    os.chdir(tmp)                       # anything written to a default path lands in the temporary directory
    try:
        return CliRunner().invoke(cli, args)
    finally:
        os.chdir(cwd)


@st.composite
def command_line(draw, names, valid: bool):
    name = draw(st.sampled_from(names))
    params = fuzzed_params(name)
    chosen = draw(st.lists(st.sampled_from(params), unique_by=lambda p: p.name, max_size=4)) if params else []
    args = []
    for p in chosen:
        if _opt(p) not in FIXED[name]:
            args += draw(valid_value(p))
    refused = ()
    if not valid and params:
        p = draw(st.sampled_from(params))
        piece, by_click = draw(invalid_value(p))
        args += piece
        refused = tuple(p.opts) if by_click else ()
    return name, args, refused


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz") / "run"
    r = CliRunner().invoke(cli, ["train", *FIXED["train"], "--out", str(d)])
    assert r.exit_code == 0, r.output
    return d


def _fuzz_command_lines(tiny_run, case) -> None:
    name, args, refused = case
    with tempfile.TemporaryDirectory() as tmp:
        full = [name, *FIXED[name], *args, *_paths(name, Path(tmp), tiny_run)]
        check_answer(invoke_in(Path(tmp), full), full, refused)


FAST = [n for n in commands() if n not in SLOW]
#: Valid runs of these draw a PNG with matplotlib (about a second each), so the default profile runs fewer of them.
DRAWING = ["bpfree", "compare", "ep-curves", "plot"]
QUIET = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much]


@settings(max_examples=FUZZ_EXAMPLES * 2, deadline=None, suppress_health_check=QUIET)
@given(case=command_line([n for n in FAST if n not in DRAWING], valid=True))
def test_valid_command_lines_run_or_answer_in_one_line(tiny_run, case):
    _fuzz_command_lines(tiny_run, case)


@settings(max_examples=len(DRAWING), deadline=None, suppress_health_check=QUIET)
@given(case=command_line(DRAWING, valid=True))
def test_valid_command_lines_that_draw(tiny_run, case):
    _fuzz_command_lines(tiny_run, case)


@settings(max_examples=FUZZ_EXAMPLES * 3, deadline=None, suppress_health_check=QUIET)
@given(case=command_line(commands(), valid=False))
def test_invalid_values_are_refused_in_one_line(tiny_run, case):
    _fuzz_command_lines(tiny_run, case)


@pytest.mark.slow
@settings(max_examples=LONG_EXAMPLES, deadline=None, suppress_health_check=QUIET)
@given(case=st.one_of(command_line(FAST, valid=True), command_line(commands(), valid=False)))
def test_command_lines_long(tiny_run, case):
    _fuzz_command_lines(tiny_run, case)


@pytest.mark.parametrize("name", commands())
def test_the_tiny_sizes_are_valid_options(name, tmp_path):
    """Each command's FIXED line parses (so a refusal in the fuzzing comes from the fuzzed value, not from FIXED)."""
    paths = _paths(name, tmp_path, tmp_path)
    ctx = cli.commands[name].make_context(name, [*FIXED[name], *paths])
    assert set(ctx.params) == {p.name for p in cli.commands[name].params}


def test_every_command_is_fuzzed_and_every_numeric_option_has_a_range():
    """A new command needs its tiny sizes here; a new numeric option needs its allowed range (a Click IntRange or
    FloatRange), which the fuzzing then checks from both sides."""
    assert set(FIXED) == set(cli.commands)
    plain = [(name, p.name) for name in cli.commands for p in cli.commands[name].params
             if isinstance(p.type, (click.types.IntParamType, click.types.FloatParamType))
             and not isinstance(p.type, (click.IntRange, click.FloatRange))]
    assert plain == [("sweep", "workers")]            # run_sweep refuses workers < 1 itself, in one line


# ----------------------------------------------------------------------------------------------------------------
# Damaged run directories against --resume and plot

FILES = ["config.json", "checkpoint.npz", "metrics.jsonl"]
OTHER_TYPE = st.sampled_from([None, True, "x", 3, -1, 0.5, [], {}, [1, "a"]])


@st.composite
def damage(draw):
    """(file, how, a function bytes -> bytes) for one damaged file."""
    name = draw(st.sampled_from(FILES))
    how = draw(st.sampled_from(["truncate", "flip", "empty", "retype"]))
    if how == "truncate":
        frac = draw(st.floats(0, 1, exclude_max=True))
        return name, how, lambda b: b[:int(len(b) * frac)]
    if how == "flip":
        frac, mask = draw(st.floats(0, 1, exclude_max=True)), draw(st.integers(1, 255))
        return name, how, lambda b: (lambda i: b[:i] + bytes([b[i] ^ mask]) + b[i + 1:])(int(len(b) * frac))
    if how == "empty":
        return name, how, lambda b: b""
    value, pick = draw(OTHER_TYPE), draw(st.integers(0, 10**6))
    if name == "checkpoint.npz":
        return name, "flip", lambda b: b[:pick % len(b)] + b"\x00" + b[pick % len(b) + 1:]
    return name, how, lambda b: _retype(b, name, pick, value)


def _retype(data: bytes, name: str, pick: int, value) -> bytes:
    """One field of config.json (or of one metrics record) replaced by a value of another type."""
    if name == "config.json":
        d = json.loads(data)
        d[sorted(d)[pick % len(d)]] = value
        return json.dumps(d).encode()
    lines = data.decode().splitlines()
    i = pick % len(lines)
    r = json.loads(lines[i])
    r[sorted(r)[pick % len(r)]] = value
    lines[i] = json.dumps(r)
    return ("\n".join(lines) + "\n").encode()


def _fuzz_run_dir(tiny_run, case) -> None:
    name, how, apply = case
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "run"
        shutil.copytree(tiny_run, d)
        (d / name).write_bytes(apply((d / name).read_bytes()))
        for args in (["train", "--resume", str(d), "--no-progress"], ["plot", str(d), "--out", f"{tmp}/c.png"]):
            r = invoke_in(Path(tmp), args)
            check_answer(r, [name, how, *args])
            if r.exit_code == 2 and "damaged" in r.stderr:
                assert str(d) in r.stderr and "--out" in r.stderr, r.stderr


@settings(max_examples=FUZZ_EXAMPLES * 2 // 3, deadline=None, suppress_health_check=QUIET)
@given(case=damage())
def test_damaged_run_files_are_answered_in_one_line(tiny_run, case):
    _fuzz_run_dir(tiny_run, case)


@pytest.mark.slow
@settings(max_examples=LONG_EXAMPLES, deadline=None, suppress_health_check=QUIET)
@given(case=damage())
def test_damaged_run_files_long(tiny_run, case):
    _fuzz_run_dir(tiny_run, case)
