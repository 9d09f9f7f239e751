"""Peak memory of the online algorithms and FPTT vs BPTT as the sequence grows, on every backend:
`python -m bench.online_memory [--backends numpy,numba,mlx] [--lengths 100,1000,10000,100000]`.

Each point (backend × cell × algorithm × T) computes one gradient of a small model once to warm up (compilation,
caches), then once measured by the suite's counter (bench/run.py peak_memory): tracemalloc for numpy and numba (it
sees NumPy's allocations and those of Numba's runtime), mx.get_peak_memory for mlx. The inputs exist before the
measurement (a stream would produce them chunk by chunk; here x is (T, B, I) in memory on purpose, so that what is
measured is the driver's own memory). The online rules and FPTT run chunked (C = 1 on numpy, the step loop; C = 64 on
a backend) and keep states, carries and gradients only, so their peak is flat in T; BPTT stores the whole forward
pass. Prints a Markdown table; --json writes the rows (docs/bench/online_memory.md quotes them).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ALGORITHMS = ("bptt", "online", "snap1", "truncated", "spatial", "fptt")


def measure_here(backend: str, cell: str, T: int, algorithm: str, *, B: int = 4, I: int = 4, H: int = 16,
                 layers: int = 1, seed: int = 0) -> dict:
    """One point, in this process (call it in a fresh one: ru_maxrss is the process's peak so far)."""
    import numpy as np

    from bench.run import peak_memory
    from refimpl import make_model, model_grads
    from refimpl.registry import load_backend

    dtype = "float32" if backend == "mlx" and cell == "lru" else "float64"
    model, params = make_model(cell, I, H, 2, layers=layers, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    x = (0.5 * rng.standard_normal((T, B, I))).astype(dtype)
    y = rng.standard_normal((T, B, 2)).astype(dtype)
    options = {"check": False, "input_grad": False} if algorithm == "fptt" else {}
    if algorithm == "fptt":
        from refimpl.algorithms.chunked import fptt_model_grads
        from refimpl.registry import cell_kernels

        def fn():
            return fptt_model_grads(model, params, x, y, "mse", kernels=cell_kernels(model.cell, backend, dtype),
                                    **options)
    else:
        def fn():
            return model_grads(model, params, x, y, loss="mse", algorithm=algorithm, backend=backend)
    fn()                                                              # warm up: compile
    t0 = time.perf_counter()
    peak, how = peak_memory(backend, fn, load_backend(backend).synchronize)
    seconds = time.perf_counter() - t0
    return {"backend": backend, "cell": cell, "algorithm": algorithm, "T": T, "B": B, "H": H, "dtype": dtype,
            "peak_bytes": peak, "counter": how, "seconds": seconds, "ms_per_step": 1e3 * seconds / T}


def measure(backend: str, cell: str, T: int, algorithm: str, **kw) -> dict:
    """One point; a refusal or a missing kernel is a row with its reason."""
    try:
        return measure_here(backend, cell, T, algorithm, **kw)
    except Exception as e:                                  # noqa: BLE001 — reported in the table, not hidden
        return {"backend": backend, "cell": cell, "algorithm": algorithm, "T": T, "error": f"{type(e).__name__}: {e}"}


def _kib(b) -> str:
    return "–" if b is None else f"{b / 2**10:,.0f} KiB"


def table(rows: list[dict], lengths: list[int]) -> str:
    lines = ["| backend | cell | algorithm | " + " | ".join(f"peak T={T:,}" for T in lengths)
             + f" | growth T={lengths[0]:,}→{lengths[-1]:,} | ms/step at T={lengths[-1]:,} |",
             "|---|---|---|" + "---|" * len(lengths) + "---|---|"]
    keys = sorted({(r["backend"], r["cell"], r["algorithm"]) for r in rows},
                  key=lambda k: (k[0], k[1], ALGORITHMS.index(k[2])))
    for key in keys:
        pts = {r["T"]: r for r in rows if (r["backend"], r["cell"], r["algorithm"]) == key}
        if any("error" in p for p in pts.values()):
            err = next(p["error"] for p in pts.values() if "error" in p)
            lines.append(f"| {' | '.join(key)} | " + " | ".join("–" for _ in lengths) + f" | {err[:90]} | |")
            continue
        first, last = pts[lengths[0]], pts[lengths[-1]]
        lines.append(f"| {' | '.join(key)} | " + " | ".join(_kib(pts[T]["peak_bytes"]) for T in lengths)
                     + f" | ×{last['peak_bytes'] / max(first['peak_bytes'], 1):.2f} | {last['ms_per_step']:.3f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="numpy,numba")
    ap.add_argument("--cells", default="lru,gru")
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS))
    ap.add_argument("--lengths", default="100,1000,10000")
    ap.add_argument("--B", type=int, default=4)
    ap.add_argument("--H", type=int, default=16)
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args(argv)
    lengths = [int(t) for t in args.lengths.split(",")]
    rows = []
    for b in args.backends.split(","):
        for c in args.cells.split(","):
            for a in args.algorithms.split(","):
                # longest first: the interpreter's free lists (bounded) are then filled before the shorter points
                points = {T: measure(b, c, T, a, B=args.B, H=args.H) for T in sorted(lengths, reverse=True)}
                rows += [points[T] for T in lengths]
    print(table(rows, lengths))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
