"""Streaming tasks: one long sequence of back-to-back episodes, produced chunk by chunk (task kind "stream").

    copy-stream     episodes of the copy task (tasks/copy.py: L = seq_len vectors of W = bit_width bits, a delay of
                    D = waiting_time, the delimiter, the recall window): E = 2L + 1 + D steps each, I = W + 2, O = W;
                    loss bce at the recall steps, each weighted 1/L (an episode's loss is its mean recall-bit loss)
    adding-stream   episodes of the adding problem (tasks/adding.py): E = seq_len steps, I = 2, O = 1; loss mse at
                    each episode's last step (the answer step), weight 1

A stream has T steps (option T, default 10**6) for each of B columns (the batch); the episodes follow one another
without a reset (the network must find the episode boundaries itself: the copy delimiter, the adding episode length).
Nothing of size T is ever built: `StreamTask.stream(split, batch)` returns a `Stream` with `length` (T), `batch` (B)
and `chunk(t0, t1) -> (x (t1−t0, B, I), y (t1−t0, B, O), mask (t1−t0, B))`, the source that
refimpl/algorithms/chunked.py reads. The mask holds the loss weights (zero where a step has no loss), and the targets
are per step, so a stream needs a per-step, memoryless readout (pooling none or cumulative_mean).

Random numbers: episode e of split s (0 train, 1 val, 2 test) is drawn — for all B columns at once, by the copy / adding
task's own make_split — from np.random.default_rng([seed, s, e]), so any chunk can be produced on its own, in any order,
and the same seed, options and batch give the same stream. (Changing B changes every episode.)

`StreamTask.weight(t0, t1)`: the loss weight of one column over the steps [t0, t1) — the same for every column, the
recall windows and answer steps being at fixed places — so a trainer can turn Σ l_t into a mean per episode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import adding, copy

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class StreamTask:
    """A streaming task (module doc). episode(rng, B) -> (x (E, B, I), y (E, B, O), mask (E, B)) draws one episode
    of every column; profile (E,) is one episode's loss weights."""
    name: str
    n_in: int
    n_out: int
    loss: str
    length: int                     # T
    episode_len: int                # E
    episode: Callable
    profile: np.ndarray
    seed: int
    chance: float
    dtype: str = "float64"
    info: dict = field(default_factory=dict)
    kind: str = "stream"
    target: str = "per_step"

    @property
    def seq_len(self) -> int:
        return self.length

    def stream(self, split: str = "train", batch: int = 1, length: int | None = None) -> "Stream":
        """The stream of `split` for `batch` columns, `length` steps (default T)."""
        return Stream(self, SPLITS.index(split), int(batch), self.length if length is None else int(length))

    def weight(self, t0: int, t1: int) -> float:
        """Σ of one column's loss weights over the steps [t0, t1)."""
        E, cum = self.episode_len, np.concatenate([[0.0], np.cumsum(self.profile)])

        def upto(t):
            return (t // E) * cum[-1] + cum[t % E]
        return float(upto(t1) - upto(t0))


class Stream:
    """One split's stream: length T, batch B, chunk(t0, t1) (module doc). Keeps the last episode it drew (a chunk
    of one step at a time draws each episode once)."""

    def __init__(self, task: StreamTask, split: int, batch: int, length: int):
        self.task, self.split, self.batch, self.length = task, split, batch, length
        self._cached = (None, None)

    def episode(self, e: int):
        """Episode e of every column: (x (E, B, I), y (E, B, O), mask (E, B)) in the task's dtype."""
        if self._cached[0] != e:
            rng = np.random.default_rng([self.task.seed, self.split, e])
            x, y, mask = self.task.episode(rng, self.batch)
            dt = np.dtype(self.task.dtype)
            self._cached = (e, (x.astype(dt), y.astype(dt), mask.astype(dt)))
        return self._cached[1]

    def chunk(self, t0: int, t1: int):
        """The steps [t0, t1): (x (t1−t0, B, I), y (t1−t0, B, O), mask (t1−t0, B))."""
        if not 0 <= t0 < t1 <= self.length:
            raise ValueError(f"chunk [{t0}, {t1}) is outside the stream [0, {self.length})")
        E = self.task.episode_len
        parts = []
        for e in range(t0 // E, (t1 - 1) // E + 1):
            a, b = max(t0, e * E) - e * E, min(t1, (e + 1) * E) - e * E
            parts.append(tuple(v[a:b] for v in self.episode(e)))
        if len(parts) == 1:
            return parts[0]
        return tuple(np.concatenate(vs, axis=0) for vs in zip(*parts))


def _copy_episode(seq_len, bit_width, waiting_time):
    def draw(rng, B):
        s = copy.make_split(B, seq_len, bit_width, waiting_time, rng)
        return s.x, s.y, s.mask / seq_len
    return draw


def _adding_episode(seq_len):
    def draw(rng, B):
        s = adding.make_split(B, seq_len, rng)
        y = np.zeros((seq_len, B, 1))
        y[-1] = s.y
        mask = np.zeros((seq_len, B))
        mask[-1] = 1.0
        return s.x, y, mask
    return draw


def build_copy_stream(seed: int, data_dir=None, *, T: int = 10**6, seq_len: int = 4, bit_width: int = 1,
                      waiting_time: int = 16) -> StreamTask:
    """copy-stream: T steps of back-to-back copy episodes (module doc). data_dir is ignored."""
    E = 2 * seq_len + 1 + waiting_time
    profile = np.zeros(E)
    profile[E - seq_len:] = 1.0 / seq_len
    return StreamTask(name="copy-stream", n_in=bit_width + 2, n_out=bit_width, loss="bce", length=T, episode_len=E,
                      episode=_copy_episode(seq_len, bit_width, waiting_time), profile=profile, seed=seed,
                      chance=0.5, info={"description": f"a stream of T = {T} steps: copy episodes of {E} steps "
                                                       f"({seq_len} vectors of {bit_width} bits, delay "
                                                       f"{waiting_time}); chance = bit accuracy 0.5"})


def build_adding_stream(seed: int, data_dir=None, *, T: int = 10**6, seq_len: int = 50) -> StreamTask:
    """adding-stream: T steps of back-to-back adding episodes (module doc). data_dir is ignored."""
    profile = np.zeros(seq_len)
    profile[-1] = 1.0
    return StreamTask(name="adding-stream", n_in=2, n_out=1, loss="mse", length=T, episode_len=seq_len,
                      episode=_adding_episode(seq_len), profile=profile, seed=seed, chance=adding.CHANCE_LOSS,
                      info={"description": f"a stream of T = {T} steps: adding episodes of {seq_len} steps; chance "
                                           f"= loss 1/12 at each answer step"})
