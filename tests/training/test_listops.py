"""The ListOps task: the evaluator on hand-written expressions, the generated values against a second evaluator
(Python's statistics module), the lengths, depths, padding and tokens, the distribution of its splits (not
degenerate), seeds (the same seed the same data; another seed held-out data) and a tiny training run from the CLI."""

from __future__ import annotations

import json
import statistics as st

import numpy as np
import pytest
from click.testing import CliRunner

from refimpl.cli import cli
from refimpl.errors import UnsupportedError
from tasks import make_task, task_options
from tasks import listops
from tasks.listops import OneHot, VOCAB, decode, depth, evaluate, tokens

SMALL = {"min_length": 8, "max_length": 40, "n_train": 400, "n_val": 100, "n_test": 100}


def toks(text: str) -> list[str]:
    return text.split()


@pytest.mark.parametrize("text,value", [
    ("7", 7),
    ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
    ("[MIN 5 3 8 ]", 3),
    ("[SM 9 9 2 ]", 0),                                  # 20 mod 10
    ("[SM 3 4 ]", 7),
    ("[MED 1 9 4 ]", 4),                                 # odd count: the middle value
    ("[MED 7 5 2 4 5 1 ]", 4),                           # even count: 1 2 4 5 5 7 → ⌊(4 + 5) / 2⌋ = 4
    ("[MED 2 3 ]", 2),                                   # ⌊2.5⌋
    ("[MED 8 9 0 1 ]", 4),                               # 0 1 8 9 → ⌊(1 + 8) / 2⌋ = 4
    ("[SM [MAX 1 8 ] [MED 3 3 ] [MIN 9 [SM 5 5 ] ] ]", 1),   # 8 + 3 + 0 = 11 → 1
    ("[MAX [MIN [MED [SM 6 7 ] 1 2 ] 9 ] 0 ]", 2),       # SM 13 → 3; MED 1 2 3 → 2; MIN 2 9 → 2; MAX 2 0 → 2
    ("<pad> <pad> [MIN 5 6 ] <pad>", 5),
])
def test_evaluate_hand_written_expressions(text, value):
    assert evaluate(toks(text)) == value


@pytest.mark.parametrize("text,phrase", [
    ("[MAX 1 2", "incomplete"), ("[MAX ]", "without an operator and arguments"), ("1 2", "continues after its end"),
    ("[MAX 1 x ]", "unknown ListOps token"), ("", "incomplete"), ("]", "without an operator"),
])
def test_evaluate_refuses_malformed_expressions(text, phrase):
    with pytest.raises(UnsupportedError, match=phrase):
        evaluate(toks(text))


def second_evaluator(expr: list[str]) -> int:
    """An independent evaluator: the tokens turned into a Python expression, MED by statistics.median (the mean of
    the two middle values for an even count, then int() rounds it down)."""
    ops = {"[MAX": "max((", "[MIN": "min((", "[MED": "int(st.median((", "[SM": "(sum(("}
    ends = {"[MAX": "))", "[MIN": "))", "[MED": ")))", "[SM": ")) % 10)"}
    out, open_ops = [], []
    for tok in expr:
        if tok in ops:
            out.append(ops[tok])
            open_ops.append(tok)
        elif tok == "]":
            out.append(ends[open_ops.pop()] + ",")
        else:
            out.append(tok + ",")
    return eval("".join(out).rstrip(","), {"st": st})                  # noqa: S307 (our own token strings)


def test_generated_values_lengths_and_tokens():
    task = make_task("listops", seed=1, **SMALL)
    assert task.n_in == len(VOCAB) == 16 and task.n_out == 10 and task.loss == "ce" and task.target == "label"
    for split in (task.train, task.val, task.test):
        ids = tokens(split)                                             # (N, T)
        assert split.x.shape == (40, split.n, 16) and ids.shape == (split.n, 40)
        for row, y in zip(ids, split.y):
            expr = decode(row)
            assert 8 <= len(expr) <= 40
            assert list(row[len(expr):]) == [0] * (40 - len(expr))      # right padding (LRA's layout)
            assert evaluate(expr) == second_evaluator(expr) == y
    dense = np.asarray(task.train.x)                                    # the one-hot codes
    np.testing.assert_array_equal(dense.sum(-1), 1.0)
    np.testing.assert_array_equal(np.argmax(dense, -1).T, tokens(task.train))


def test_left_padding_ends_every_expression_at_the_last_step():
    right = make_task("listops", seed=2, **SMALL)
    left = make_task("listops", seed=2, pad="left", **SMALL)
    np.testing.assert_array_equal(left.train.y, right.train.y)          # the same expressions, placed differently
    for r, l in zip(tokens(right.train), tokens(left.train)):
        assert decode(r) == decode(l) and l[-1] == VOCAB.index("]")


def test_max_depth_and_max_args_bound_the_expressions():
    task = make_task("listops", seed=0, min_length=4, max_length=60, max_depth=3, max_args=3, n_train=300,
                     n_val=1, n_test=1)
    for row in tokens(task.train):
        expr = decode(row)
        assert depth(expr) <= 2                                         # operators nest at most max_depth − 1 deep
        args, stack = [], []                                            # each operator's argument count
        for tok in expr:
            if tok == "]":
                args.append(stack.pop())
                continue
            if stack:
                stack[-1] += 1                                          # a digit or an operator: one argument
            if tok in listops.OPERATORS:
                stack.append(0)
        assert all(2 <= a <= 3 for a in args)
    assert {depth(decode(r)) for r in tokens(task.train)} == {1, 2}


def test_statistics_are_not_degenerate():
    task = make_task("listops-small", seed=0, n_train=2000, n_val=1, n_test=1)
    s = listops.statistics(task.train)
    assert s["n"] == 2000 and sum(s["classes"]) == 2000
    assert min(s["classes"]) > 0.05 * 2000                             # every class appears, none rare
    assert len(s["depth"]["counts"]) >= 5 and s["depth"]["min"] == 1 and s["depth"]["max"] >= 6   # depths vary
    assert s["length"]["min"] == 8 and s["length"]["max"] > 50 and 10 < s["length"]["mean"] < 40
    assert task.chance == max(s["classes"]) / 2000 < 0.2                # the majority class's share


def test_seeds_give_the_same_or_held_out_data():
    a, b, c = (make_task("listops", seed=s, **SMALL) for s in (5, 5, 6))
    for sa, sb in zip((a.train, a.val, a.test), (b.train, b.val, b.test)):
        np.testing.assert_array_equal(tokens(sa), tokens(sb))
        np.testing.assert_array_equal(sa.y, sb.y)
    rows = lambda split: {tuple(r) for r in tokens(split)}            # noqa: E731
    # lengths 8 … 40: each expression is one of very many, so independent draws do not repeat one another
    assert not rows(a.train) & rows(c.train)
    assert not rows(a.train) & rows(a.test) and not rows(a.train) & rows(a.val)


def test_held_out_seed_overlaps_no_more_than_chance_at_tiny_lengths():
    """At 4 … 6 tokens few expressions exist and independent draws repeat each other; another seed's data must overlap
    a split no more than a second independent draw of the same seed does (a reused stream would overlap fully)."""
    opts = dict(min_length=4, max_length=6, n_train=600, n_val=600, n_test=1)
    a, c = make_task("listops", seed=0, **opts), make_task("listops", seed=1, **opts)
    rows = lambda split: [tuple(r) for r in tokens(split)]            # noqa: E731
    seen = set(rows(a.train))
    within = sum(r in seen for r in rows(a.val))                       # same seed, independent stream
    across = sum(r in seen for r in rows(c.train))                     # held-out seed
    assert 0 < within < 600 and 0 < across < 600
    assert abs(across - within) < 4 * np.sqrt(within) + 5


def test_one_hot_inputs_select_like_the_dense_array():
    ids = np.random.default_rng(0).integers(0, 16, size=(7, 5)).astype(np.int8)
    x, dense = OneHot(ids, 16), np.eye(16)[ids]
    idx = np.array([4, 0, 2])
    assert isinstance(x[:, idx], OneHot) and isinstance(x[2:5], OneHot) and x.shape == dense.shape
    np.testing.assert_array_equal(np.asarray(x[:, idx]), dense[:, idx])
    np.testing.assert_array_equal(np.asarray(x[1:3, 1:4]), dense[1:3, 1:4])
    np.testing.assert_array_equal(x[3, 1], dense[3, 1])
    assert np.asarray(x.astype(np.float32)).dtype == np.float32 and np.asarray(x, dtype=np.float32).dtype == np.float32


def test_options_and_refusals():
    assert {k: v for k, v in task_options("listops").items() if k in ("min_length", "max_length", "max_depth",
                                                                      "max_args", "n_train")} == \
        {"min_length": 500, "max_length": 2000, "max_depth": 10, "max_args": 10, "n_train": 96000}
    with pytest.raises(UnsupportedError, match="min_length 50 > max_length 40"):
        make_task("listops", min_length=50, max_length=40)
    with pytest.raises(UnsupportedError, match="max_args"):
        make_task("listops", max_args=1)


def test_train_listops_from_the_cli(tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["train", "--task", "listops", "-t", "min_length=6", "-t", "max_length=20",
                                 "-t", "n_train=32", "-t", "n_val=8", "-t", "n_test=8", "-t", "pad=left",
                                 "--cell", "lru", "--hidden", "6", "--steps", "3", "--batch-size", "8",
                                 "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 3 and np.isfinite(result["test_loss"]) and 0 <= result["test_accuracy"] <= 1
