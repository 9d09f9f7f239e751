"""The adding problem (Hochreiter & Schmidhuber 1997; the variant of Le, Jaitly & Hinton 2015).

One sequence has T = seq_len steps and I = 2 channels:

    channel 0   values u_t ~ U[0, 1), independent
    channel 1   markers: exactly two 1s, at i ~ U{0, …, ⌊T/2⌋−1} (first half) and j ~ U{⌊T/2⌋, …, T−1} (second
                half); 0 elsewhere

Target (kind "final", loss "mse"): y (N, 1) = u_i + u_j, one real number per sequence, read at the last step.

Chance. The best constant prediction is E[y] = 1. Its loss under refimpl's mse, l = ½(ŷ − y)² (losses eq. 40), is
½ Var(u_i + u_j) = ½ (1/12 + 1/12) = 1/12 ≈ 0.0833; `chance` is that loss (the "MSE 0.167" often quoted is the
same baseline without the ½). A model has learned the task when its loss falls well below 1/12.

Random numbers: each split comes from np.random.default_rng(s_k), s_0, s_1, s_2 = np.random.SeedSequence(seed)
.spawn(3) (train, val, test: independent streams). Within a split the draws are, in order: the values (T, N),
the first marker positions (N), the second marker positions (N).
"""

from __future__ import annotations

import numpy as np

from .base import Split, Task

CHANCE_LOSS = 1.0 / 12.0          # ½ Var(u_i + u_j) with u ~ U[0, 1): the loss of always predicting 1


def make_split(n: int, seq_len: int, rng: np.random.Generator) -> Split:
    """One split of n adding sequences.

    Returns:
        Split with x (T, n, 2) float64 and y (n, 1) float64; mask None.
    """
    T, half = seq_len, seq_len // 2
    values = rng.random((T, n))                                 # (T, n) u_t
    first = rng.integers(0, half, size=n)                       # (n,)  in the first half
    second = rng.integers(half, T, size=n)                      # (n,)  in the second half
    cols = np.arange(n)
    markers = np.zeros((T, n))                                  # (T, n)
    markers[first, cols] = 1.0
    markers[second, cols] = 1.0
    x = np.stack([values, markers], axis=-1)                    # (T, n, 2)
    y = (values[first, cols] + values[second, cols])[:, None]   # (n, 1)
    return Split(x=x, y=y)


def build(seed: int, data_dir=None, *, seq_len: int = 50, n_train: int = 10000, n_val: int = 1000,
          n_test: int = 1000) -> Task:
    """The adding problem with T = seq_len (≥ 2); n_train/n_val/n_test are the split sizes. data_dir is ignored."""
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]
    train, val, test = (make_split(n, seq_len, rng) for n, rng in zip((n_train, n_val, n_test), rngs))
    return Task(name="adding", kind="sequence", n_in=2, n_out=1, loss="mse", target="final",
                train=train, val=val, test=test, seed=seed, chance=CHANCE_LOSS,
                info={"description": f"adding problem, T = {seq_len}: y = sum of the two marked values; "
                                     f"chance = loss of predicting 1 = 1/12 (mse with the ½)"})
