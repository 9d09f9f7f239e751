"""The copy task: remember a few bit vectors through a delay, then play them back after a delimiter.

The FPTT repo's copy task (research/fptt.md §5.1; the online-LRU repo's is the same idea, §5.1 of online_lru.md).
With L = seq_len, W = bit_width, D = waiting_time, one sequence has T = 2L + 1 + D steps and I = W + 2 channels:

    channel            0 … W−1 (bits)     W (blank / padding)     W+1 (delimiter)
    t = 0 … L−1        b_t  (random bits)        0                      0          the pattern
    t = L … L+D−1      0                         1                      0          waiting
    t = L+D            0                         0                      1          the delimiter: "play back now"
    t = L+D+1 … T−1    0                         1                      0          the recall window

Targets (kind "per_step", loss "bce"): y (T, N, W) with y[L+D+1+k] = b_k for k = 0 … L−1 and 0 elsewhere, and
the mask (T, N) is 1 exactly on the recall window. Chance is 0.5 bit accuracy (a recall bit is a fair coin).

The blank channel is what tells a pattern step whose bits are all 0 from a waiting step. (The online-LRU repo has
no blank channel: its inputs are W bits plus a stop channel.)

Random numbers: the bits b ~ Bernoulli(½) come from np.random.default_rng(s_k), where s_0, s_1, s_2 =
np.random.SeedSequence(seed).spawn(3) are independent streams for train, val and test. The splits are drawn
independently, so with few possible patterns (2^{L·W}: 16 for the defaults) the same pattern can occur in several.
"""

from __future__ import annotations

import numpy as np

from .base import Split, Task


def make_split(n: int, seq_len: int, bit_width: int, waiting_time: int, rng: np.random.Generator) -> Split:
    """One split of n copy sequences (layout in the module docstring).

    Returns:
        Split with x (T, n, W+2) float64, y (T, n, W) float64, mask (T, n) float64; T = 2·seq_len + 1 + waiting_time.
    """
    L, W, D = seq_len, bit_width, waiting_time
    T = 2 * L + 1 + D
    bits = rng.integers(0, 2, size=(L, n, W)).astype(np.float64)          # (L, n, W)
    delimiter = L + D
    recall = slice(delimiter + 1, T)                                       # the last L steps
    x = np.zeros((T, n, W + 2))                                            # (T, n, I)
    x[:L, :, :W] = bits                                                    # the pattern
    x[L:delimiter, :, W] = 1.0                                             # waiting: blank
    x[delimiter, :, W + 1] = 1.0                                           # the delimiter
    x[recall, :, W] = 1.0                                                  # recall window: blank
    y = np.zeros((T, n, W))                                                # (T, n, W)
    y[recall] = bits
    mask = np.zeros((T, n))                                                # (T, n)
    mask[recall] = 1.0
    return Split(x=x, y=y, mask=mask)


def build(seed: int, data_dir=None, *, seq_len: int = 4, bit_width: int = 1, waiting_time: int = 16,
          n_train: int = 10000, n_val: int = 1000, n_test: int = 1000) -> Task:
    """The copy task. Defaults are the FPTT repo's `copy` config (seq_len 4, bit_width 1, waiting_time 16: T = 25,
    I = 3); n_train/n_val/n_test are the split sizes. data_dir is ignored (the data are generated)."""
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]
    train, val, test = (make_split(n, seq_len, bit_width, waiting_time, rng)
                        for n, rng in zip((n_train, n_val, n_test), rngs))
    T = 2 * seq_len + 1 + waiting_time
    return Task(name="copy", kind="sequence", n_in=bit_width + 2, n_out=bit_width, loss="bce", target="per_step",
                train=train, val=val, test=test, seed=seed, chance=0.5,
                info={"description": f"copy {seq_len} vectors of {bit_width} bits after a {waiting_time}-step delay "
                                     f"(T = {T}); chance = bit accuracy 0.5",
                      "channels": f"0..{bit_width - 1} bits, {bit_width} blank, {bit_width + 1} delimiter",
                      "recall_steps": (T - seq_len, T)})
