"""ListOps (Nangia & Bowman 2018), in the Long Range Arena's version: evaluate a nested list expression.

An expression is a tree. An inner node is an operator applied to 2 … max_args arguments, each a digit or an
expression; the leaves are the digits 0 … 9. The four operators (all map digits to a digit):

    [MAX a b …]   the largest argument
    [MIN a b …]   the smallest argument
    [MED a b …]   the median: for an odd count the middle value of the sorted arguments; for an even count the
                  mean of the two middle values rounded down, ⌊(a_(k) + a_(k+1)) / 2⌋ (the LRA data's int(median))
    [SM a b …]    the sum modulo 10

Written out, an operator and its opening bracket are one token, the closing bracket another, each digit a token:
"[MAX 2 9 [MIN 4 7 ] 0 ]" is 9 tokens and evaluates to 9. The target is the value of the whole expression (10
classes, loss "ce", target kind "label").

The generating process (LRA's, from its description; this code is written from the definition):

    node(depth):  if depth < max_depth, with probability p_operator an operator node, else a digit
                  (depth = max_depth: always a digit); an operator node picks its operator uniformly from the
                  four, its number of arguments k ~ U{2, …, max_args}, and its arguments node(depth + 1) … in turn;
                  a digit is uniform on 0 … 9.
    the root is node(1), so operators nest at most max_depth − 1 deep (LRA's counting); an expression is kept only
    when its token count lies in [min_length, max_length] (so a lone digit at the root, of length 1, is never kept
    when min_length > 1), else drawn again.

LRA's settings are the defaults: max_depth 10, max_args 10, lengths 500 … 2000, p_operator 0.25, 96000 / 2000 / 2000
examples. Generation stops early once an expression passes max_length (it would be refused anyway), so the kept
expressions are exactly those of the rejection process above. It runs in Python: about 1.5 ms per LRA-sized
expression (some 2.5 minutes for the LRA train split), 0.2 ms per expression of listops-small.

Tokens and inputs. LRA's files also write the binary-tree parentheses "(" and ")" around each argument; the usual
loaders (LRA's own input pipeline and the S4-derived ones the online-LRU code uses) delete them, and LRA's length
range counts the tokens without them — so refimpl has no parentheses, and its lengths are LRA's.
VOCAB = ("<pad>", "0", …, "9", "[MAX", "[MIN", "[MED", "[SM", "]"): 16 tokens, token id = index.
Every sequence is padded with "<pad>" to T = max_length — after the expression (pad="right", LRA's layout) or before
it (pad="left": the expression then ends at the last step, where a recurrent model is read out). The inputs are the
one-hot codes x (T, N, 16), kept as their ids (class OneHot: np.asarray(x) gives the codes); `tokens(split)` gives
back the ids (N, T).

Chance: the accuracy of always answering the most frequent value of the train split (the classes are not uniform:
MAX and MED lean to high and middle values); `statistics(split)` reports the lengths, depths and answer classes.

Random numbers: each split comes from np.random.default_rng(s_k), s_0, s_1, s_2 = np.random.SeedSequence(seed)
.spawn(3) (train, val, test: independent streams), so a different seed gives held-out data. The splits are drawn
independently: at tiny lengths, where few expressions exist, the same expression can occur in two splits by chance.
"""

from __future__ import annotations

import numpy as np

from refimpl.errors import UnsupportedError

from .base import Split, Task

OPERATORS = ("[MAX", "[MIN", "[MED", "[SM")
CLOSE = "]"
PAD = "<pad>"
DIGITS = tuple(str(d) for d in range(10))
VOCAB = (PAD,) + DIGITS + OPERATORS + (CLOSE,)
TOKEN_ID = {tok: i for i, tok in enumerate(VOCAB)}
N_CLASSES = 10
PAD_SIDES = ("right", "left")


class OneHot:
    """One-hot inputs (T, N, V) kept as their token ids (T, N): an LRA-sized split would take 25 GB as float64
    one-hot codes, its ids 0.2 GB. Selecting along T and N (`x[:, idx]`, `x[t0:t1]`) gives another OneHot;
    np.asarray(x, dtype) (or any other indexing) gives the dense codes, x[t, n, v] = 1.0 if ids[t, n] == v else 0.0."""

    ndim = 3

    def __init__(self, ids: np.ndarray, depth: int, dtype=np.float64):
        self.ids, self.depth, self.dtype = ids, depth, np.dtype(dtype)       # ids (T, N) integers in [0, depth)

    @property
    def shape(self) -> tuple:
        return self.ids.shape + (self.depth,)

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __array__(self, dtype=None, copy=None):
        return np.eye(self.depth, dtype=dtype or self.dtype)[self.ids]       # (T, N, V)

    def astype(self, dtype, copy=True) -> "OneHot":
        return OneHot(self.ids, self.depth, dtype)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if len(key) <= 2:
            ids = self.ids[key]
            if ids.ndim == 2:
                return OneHot(ids, self.depth, self.dtype)
        return np.asarray(self)[key]


class _TooLong(Exception):
    """Raised inside generation once an expression passes max_length (it would be refused)."""


def apply(op: str, args: list[int]) -> int:
    """The value of one operator on its digit arguments (module doc: MED of an even count rounds down)."""
    if op == "[MAX":
        return max(args)
    if op == "[MIN":
        return min(args)
    if op == "[SM":
        return sum(args) % 10
    if op == "[MED":
        s = sorted(args)
        k = len(s)
        return s[k // 2] if k % 2 else (s[k // 2 - 1] + s[k // 2]) // 2
    raise UnsupportedError(f"unknown ListOps operator {op!r}; the operators are {', '.join(OPERATORS)}")


def evaluate(tokens) -> int:
    """The value of an expression given as a sequence of tokens (strings such as "[MAX", "3", "]"; "<pad>" is
    skipped). Raises UnsupportedError for a malformed expression."""
    stack: list[tuple[str, list[int]]] = []
    value = None
    for tok in tokens:
        if tok == PAD:
            continue
        if value is not None:
            raise UnsupportedError(f"ListOps expression continues after its end (token {tok!r})")
        if tok in OPERATORS:
            stack.append((tok, []))
        elif tok == CLOSE:
            if not stack or not stack[-1][1]:
                raise UnsupportedError("ListOps expression has a ']' without an operator and arguments before it")
            op, args = stack.pop()
            v = apply(op, args)
            if stack:
                stack[-1][1].append(v)
            else:
                value = v
        elif tok in TOKEN_ID and tok not in (PAD,):
            if stack:
                stack[-1][1].append(int(tok))
            else:
                value = int(tok)
        else:
            raise UnsupportedError(f"unknown ListOps token {tok!r}; the vocabulary is {' '.join(VOCAB)}")
    if stack or value is None:
        raise UnsupportedError("ListOps expression is incomplete (an operator is not closed, or it is empty)")
    return value


def depth(tokens) -> int:
    """The nesting depth of an expression: the largest number of operators open at once (a lone digit: 0)."""
    d = best = 0
    for tok in tokens:
        if tok in OPERATORS:
            d += 1
            best = max(best, d)
        elif tok == CLOSE:
            d -= 1
    return best


class _Draws:
    """Uniform numbers on [0, 1) from a Generator, drawn 4096 at a time (a Python float each is ~30× cheaper than a
    call to the Generator per draw); draw(k) is an integer uniform on 0 … k−1."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.buf, self.i = rng, [], 0

    def uniform(self) -> float:
        if self.i == len(self.buf):
            self.buf, self.i = self.rng.random(4096).tolist(), 0
        self.i += 1
        return self.buf[self.i - 1]

    def draw(self, k: int) -> int:
        return int(self.uniform() * k)


def generate(draws: _Draws, *, min_length: int, max_length: int, max_depth: int, max_args: int,
             p_operator: float) -> list[str]:
    """One expression (a list of tokens) from the process of the module doc, length in [min_length, max_length]."""
    while True:
        out: list[str] = []
        try:
            _node(draws, 1, out, max_length, max_depth, max_args, p_operator)
        except _TooLong:
            continue
        if len(out) >= min_length:
            return out


def _node(draws: _Draws, level: int, out: list, max_length: int, max_depth: int, max_args: int,
          p_operator: float) -> None:
    if len(out) >= max_length:                       # one more token would pass max_length
        raise _TooLong
    if level < max_depth and draws.uniform() < p_operator:
        out.append(OPERATORS[draws.draw(len(OPERATORS))])
        for _ in range(2 + draws.draw(max_args - 1)):                    # k ~ U{2, …, max_args}
            _node(draws, level + 1, out, max_length, max_depth, max_args, p_operator)
        if len(out) >= max_length:
            raise _TooLong
        out.append(CLOSE)
    else:
        out.append(DIGITS[draws.draw(10)])


def encode(expressions: list[list[str]], T: int, pad: str) -> np.ndarray:
    """Token ids (N, T) int64, each expression padded with <pad> (id 0) to T on the `pad` side."""
    ids = np.zeros((len(expressions), T), dtype=np.int64)          # (N, T)
    for n, expr in enumerate(expressions):
        row = [TOKEN_ID[t] for t in expr]
        if pad == "right":
            ids[n, :len(row)] = row
        else:
            ids[n, T - len(row):] = row
    return ids


def tokens(split: Split) -> np.ndarray:
    """The token ids (N, T) of a ListOps split."""
    return np.asarray(split.x.ids).T


def decode(ids) -> list[str]:
    """Token strings of one row of ids, padding dropped."""
    return [VOCAB[i] for i in ids if i != TOKEN_ID[PAD]]


def make_split(n: int, rng: np.random.Generator, *, min_length: int, max_length: int, max_depth: int,
               max_args: int, p_operator: float, pad: str) -> Split:
    """One split of n expressions. Returns Split with x (T, n, 16) one-hot float64 (a OneHot of the ids), y (n,)
    int64 values; T = max_length."""
    draws = _Draws(rng)
    exprs = [generate(draws, min_length=min_length, max_length=max_length, max_depth=max_depth, max_args=max_args,
                      p_operator=p_operator) for _ in range(n)]
    ids = encode(exprs, max_length, pad)                            # (n, T)
    x = OneHot(ids.T.astype(np.int8), len(VOCAB))                  # (T, n, 16)
    y = np.array([evaluate(e) for e in exprs], dtype=np.int64)      # (n,)
    return Split(x=x, y=y)


def statistics(split: Split) -> dict:
    """What a split holds: the lengths and depths of its expressions (min, mean, max and a histogram) and the count
    of each answer class 0 … 9."""
    rows = [decode(r) for r in tokens(split)]
    lengths = np.array([len(r) for r in rows])
    depths = np.array([depth(r) for r in rows])
    return {"n": len(rows),
            "length": {"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())},
            "depth": {"min": int(depths.min()), "mean": float(depths.mean()), "max": int(depths.max()),
                      "counts": {int(d): int(c) for d, c in zip(*np.unique(depths, return_counts=True))}},
            "classes": [int(c) for c in np.bincount(split.y, minlength=N_CLASSES)]}


def build(seed: int, data_dir=None, *, min_length: int = 500, max_length: int = 2000, max_depth: int = 10,
          max_args: int = 10, p_operator: float = 0.25, pad: str = "right", n_train: int = 96000,
          n_val: int = 2000, n_test: int = 2000) -> Task:
    """The ListOps task (module doc). Defaults are LRA's (lengths 500 … 2000, depth ≤ 10, ≤ 10 arguments,
    96000 / 2000 / 2000 examples); T = max_length. data_dir is ignored (the data are generated)."""
    if min_length > max_length:
        raise UnsupportedError(f"listops: min_length {min_length} > max_length {max_length}; give min_length ≤ "
                               f"max_length (e.g. min_length=1 for short expressions)")
    if max_length < 4 and min_length > 1:
        raise UnsupportedError(f"listops: the shortest expression with an operator has 4 tokens ('[MAX 1 2 ]'); "
                               f"max_length {max_length} admits none; use max_length ≥ 4")
    settings = dict(min_length=min_length, max_length=max_length, max_depth=max_depth, max_args=max_args,
                    p_operator=p_operator, pad=pad)
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]
    train, val, test = (make_split(n, rng, **settings) for n, rng in zip((n_train, n_val, n_test), rngs))
    chance = float(np.bincount(train.y, minlength=N_CLASSES).max() / train.n)
    return Task(name="listops", kind="sequence", n_in=len(VOCAB), n_out=N_CLASSES, loss="ce", target="label",
                train=train, val=val, test=test, seed=seed, chance=chance,
                info={"description": f"ListOps: evaluate MAX/MIN/MED/SM expressions of {min_length}…{max_length} "
                                     f"tokens (depth ≤ {max_depth}, ≤ {max_args} arguments), padded {pad} to "
                                     f"T = {max_length}; chance = majority class {chance:.3f}",
                      "vocab": list(VOCAB)})
