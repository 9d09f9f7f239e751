"""Peak memory of the online algorithms and FPTT vs BPTT as the sequence grows: `python -m bench.online_memory`.

For each algorithm, the peak of NumPy allocations (tracemalloc, inputs excluded: they exist before the measurement
starts) while computing one gradient of a small model at T = 100 and T = 10 000. The online rules keep states,
sensitivities and gradients only, so their peak is flat in T; BPTT stores the whole forward pass. Prints a Markdown
table (docs/derivations/rtrl.md quotes it).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from refimpl.nn import model as model_mod
from refimpl.nn.model import make_model
from refimpl.algorithms.chunked import fptt_model_grads
from refimpl.algorithms.online import online_grads

ALGORITHMS = ("bptt", "rtrl", "online", "snap1", "truncated", "spatial", "fptt")


def measure(cell: str, T: int, algorithm: str, *, B: int = 4, I: int = 4, H: int = 16, seed: int = 0):
    model, params = make_model(cell, I, H, 2, seed=seed)
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((T, B, I)), rng.standard_normal((T, B, 2))
    tracemalloc.start()
    t0 = time.perf_counter()
    if algorithm == "bptt":
        model_mod.bptt(model, params, x, y, loss="mse")
    elif algorithm == "fptt":
        fptt_model_grads(model, params, x, y, "mse", check=False, input_grad=False)   # x̄ alone would grow with T
    else:
        online_grads(model, params, x, y, "mse", algorithm=algorithm)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, seconds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default="lru,gru")
    ap.add_argument("--lengths", default="100,10000")
    args = ap.parse_args(argv)
    lengths = [int(t) for t in args.lengths.split(",")]
    print("| cell | algorithm | " + " | ".join(f"peak T={T}" for T in lengths) + " | growth | time/step |")
    print("|---|---|" + "---|" * len(lengths) + "---|---|")
    for cell in args.cells.split(","):
        for a in ALGORITHMS:
            peaks, secs = zip(*(measure(cell, T, a) for T in lengths))
            print(f"| {cell} | {a} | " + " | ".join(f"{p / 2**10:,.0f} KiB" for p in peaks)
                  + f" | ×{peaks[-1] / peaks[0]:.2f} | {1e3 * secs[-1] / lengths[-1]:.2f} ms |")


if __name__ == "__main__":
    main()
