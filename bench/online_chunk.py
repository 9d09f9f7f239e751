"""Time per step of the chunked online rules and FPTT against the chunk size C:
`python -m bench.online_chunk [--backend numba] [--chunks 1,8,16,64,256,1024] [--T 1024]`.

For each model (cell × layers) and algorithm, one gradient over a sequence of T steps with the chunked driver
(refimpl/algorithms/chunked.py) for every C; C = T is the whole-sequence sweep (one kernel call per layer and pass).
Each point is the median of --repeats runs after one warm-up (compilation). The ratio column is time(C) / time(C = T):
the chunked path's cost over the whole-sequence sweep (the goal: ≤ 1.2 at C = 64). Prints a Markdown table; --json
writes the rows.

The exact `online` rule on a dense cell keeps a sensitivity of B·S·#params numbers (for the gru at H = 256, B = 32:
~26 GB): where that does not fit, the row says so and `snap1` (compact traces, O(#params)) stands in for it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

MODELS = (("lru", 1), ("lru", 4), ("gru", 1), ("gru", 4))


def time_point(backend, cell, layers, algorithm, T, chunk, *, B, H, repeats, seed=0) -> float:
    """Median seconds of one gradient (after a warm-up)."""
    from refimpl import make_model, model_grads

    dtype = "float32" if backend == "mlx" and cell == "lru" else "float64"
    model, params = make_model(cell, H, H, 2, layers=layers, seed=seed, dtype=dtype,
                               **({"r_min": 0.9} if cell == "lru" else {}))
    rng = np.random.default_rng(seed)
    x = (0.3 * rng.standard_normal((T, B, H))).astype(dtype)
    y = rng.standard_normal((T, B, 2)).astype(dtype)
    options = {"chunk": chunk, **({"check": False, "input_grad": False} if algorithm == "fptt" else {})}
    if algorithm == "fptt":
        from refimpl.algorithms.chunked import fptt_model_grads
        from refimpl.registry import cell_kernels
        kernels = cell_kernels(model.cell, backend, dtype)

        def fn():
            return fptt_model_grads(model, params, x, y, "mse", kernels=kernels, **options)
    else:
        def fn():
            return model_grads(model, params, x, y, loss="mse", algorithm=algorithm, backend=backend, **options)
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="numba")
    ap.add_argument("--chunks", default="1,16,64,256,1024")
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--B", type=int, default=32)
    ap.add_argument("--H", type=int, default=256)
    ap.add_argument("--algorithms", default="online,fptt")
    ap.add_argument("--models", default=",".join(f"{c}x{l}" for c, l in MODELS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    chunks = [min(int(c), args.T) for c in args.chunks.split(",")]
    rows = []
    print(f"backend {args.backend}, T = {args.T}, B = {args.B}, H = {args.H} (ms per step; ratio to C = T)\n")
    print("| model | algorithm | " + " | ".join(f"C={c}" for c in chunks) + " | ratio C=64 |")
    print("|---|---|" + "---|" * len(chunks) + "---|")
    for spec in args.models.split(","):
        cell, layers = spec.split("x")[0], int(spec.split("x")[1])
        for algorithm in args.algorithms.split(","):
            algo = algorithm
            try:
                secs = {c: time_point(args.backend, cell, layers, algo, args.T, c, B=args.B, H=args.H,
                                      repeats=args.repeats) for c in chunks}
            except Exception as e:                        # noqa: BLE001 — a refusal is a row of the table
                if algorithm == "online" and cell != "lru":
                    algo = "snap1"
                    secs = {c: time_point(args.backend, cell, layers, algo, args.T, c, B=args.B, H=args.H,
                                          repeats=args.repeats) for c in chunks}
                else:
                    print(f"| {spec} | {algorithm} | {type(e).__name__}: {str(e)[:100]} |")
                    continue
            whole = secs[args.T] if args.T in secs else float("nan")
            ratio = secs.get(64, float("nan")) / whole
            rows.append({"model": spec, "algorithm": algo, "T": args.T, "B": args.B, "H": args.H,
                         "seconds": {str(c): s for c, s in secs.items()}, "ratio_64": ratio})
            print(f"| {spec} | {algo} | " + " | ".join(f"{1e3 * secs[c] / args.T:.3f}" for c in chunks)
                  + f" | ×{ratio:.2f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
