"""The first benchmark runner: times every registry kernel on every available backend — `python -m bench`.

For each kernel × variant × backend × dtype × size (from the registry: adding a kernel adds its rows):
  1. draw the inputs from the kernel's input spec (seeded);
  2. check parity with the NumPy reference on exactly these inputs (DESIGN.md §7 tolerances) and refuse to time a
     kernel that disagrees;
  3. warm up (JIT compilation, caches) — reported separately as "first call";
  4. time `repeats` calls and report the median and the spread (min … max).
Optional peers (PyTorch `nn.GRU` / `nn.LSTM` forward + backward) run on the same shapes when torch is installed, and
are skipped — with a line saying so — when it is not (it is never part of `make test`).

Sizes: `--size bench` is the shape of the performance goals (B=32, T=256, I=64, H=256); `--size small` a quick one.
Kernels whose registry entry restricts its sizes (dense RTRL, FPTT on dense cells: O(S²P) per step) use the largest of
their own sizes instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from refimpl.numerics import TOLERANCES, rel_error
from refimpl.registry import BACKENDS, KERNELS, call, flatten_outputs, load_backend

SIZES = {"small": dict(T=64, B=8, I=16, H=32), "bench": dict(T=256, B=32, I=64, H=256)}


def _time(fn, repeats: int):
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, times


def _parity(kernel, backend, inputs, dtype) -> float:
    want = flatten_outputs(KERNELS[kernel].reference(**inputs))
    got = flatten_outputs(call(kernel, backend, **inputs))
    worst = 0.0
    for name, ref in want.items():
        if isinstance(ref, np.ndarray):
            worst = max(worst, rel_error(got[name], ref))
    return worst


def run(kernel_filter=None, backends=None, dtypes=("float32",), size="small", repeats=5, seed=0):
    rows = []
    for name, spec in KERNELS.items():
        if kernel_filter and kernel_filter not in name:
            continue
        for variant in spec.variants:
            for dtype in dtypes:
                if dtype not in spec.dtypes:
                    continue
                shape = dict(SIZES[size]) if spec.sizes is None else dict(spec.sizes[-1])
                inputs = spec.make_inputs(np.random.default_rng(seed), np.dtype(dtype), shape, **variant)
                for backend in (backends or list(BACKENDS)):
                    b = load_backend(backend)
                    row = {"kernel": name, "variant": variant, "backend": backend, "dtype": dtype, "size": shape}
                    if not b.available or name not in b.kernels:
                        row["skipped"] = b.reason or "kernel not implemented"
                        rows.append(row)
                        continue
                    if b.unsupported_dtype(name, dtype):
                        row["skipped"] = b.unsupported_dtype(name, dtype)
                        rows.append(row)
                        continue
                    err = 0.0 if backend == "numpy" else _parity(name, backend, inputs, dtype)
                    tol = TOLERANCES["backend_vs_reference"][dtype]
                    if err > tol:
                        row["skipped"] = f"parity FAILED ({err:.1e} > {tol:.0e}): not timed"
                        rows.append(row)
                        continue
                    first, times = _time(lambda: call(name, backend, **inputs), repeats)
                    row.update(first_call_s=first, median_s=statistics.median(times), min_s=min(times),
                               max_s=max(times), parity_rel_err=err)
                    rows.append(row)
    return rows


def torch_peers(dtype="float32", size="bench", repeats=5):
    """PyTorch nn.GRU / nn.LSTM forward + backward on the same shape, or a line saying why not."""
    try:
        import torch
    except ImportError:
        return [{"peer": "torch", "skipped": "torch is not installed (optional; never installed by make test)"}]
    s = SIZES[size]
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    rows = []
    for cls in (torch.nn.GRU, torch.nn.LSTM):
        m = cls(s["I"], s["H"]).to(getattr(torch, dtype))
        x = torch.randn(s["T"], s["B"], s["I"], dtype=getattr(torch, dtype), requires_grad=True)

        def step():
            out, _ = m(x)
            out.sum().backward()
        first, times = _time(step, repeats)
        rows.append({"peer": f"torch.nn.{cls.__name__}", "dtype": dtype, "size": s, "first_call_s": first,
                     "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)})
    return rows


def format_rows(rows) -> str:
    lines = [f"{'kernel':<18} {'variant':<10} {'backend':<7} {'dtype':<8} {'T×B×I×H':<16} {'median ms':>10} "
             f"{'min…max ms':>18} {'first ms':>9}"]
    for r in rows:
        if "peer" in r:
            what = f"{r['peer']:<36}"
        else:
            v = ",".join(str(x) for x in r["variant"].values())[:10]
            sz = "×".join(str(r["size"][k]) for k in ("T", "B", "I", "H"))
            what = f"{r['kernel']:<18} {v:<10} {r['backend']:<7} {r['dtype']:<8} {sz:<16}"
        if "skipped" in r:
            lines.append(f"{what} skipped: {r['skipped']}")
        else:
            lines.append(f"{what} {1e3 * r['median_s']:>10.2f} {1e3 * r['min_s']:>8.2f} … {1e3 * r['max_s']:<7.2f} "
                         f"{1e3 * r['first_call_s']:>9.1f}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", default=None, help="only kernels whose name contains this")
    ap.add_argument("--backend", action="append", default=None, help="backend(s) to time (default: all)")
    ap.add_argument("--dtype", action="append", default=None, choices=["float32", "float64"])
    ap.add_argument("--size", default="small", choices=sorted(SIZES))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--peers", action="store_true", help="also time PyTorch nn.GRU / nn.LSTM when installed")
    ap.add_argument("--out", default="runs/bench.json", help="JSON results file")
    args = ap.parse_args(argv)
    rows = run(args.kernel, args.backend, tuple(args.dtype or ["float32"]), args.size, args.repeats)
    if args.peers:
        rows += torch_peers(size=args.size, repeats=args.repeats)
    print(format_rows(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps({"machine": {"platform": platform.platform(), "processor": platform.processor(),
                                           "cpus": os.cpu_count(), "numpy": np.__version__},
                               "size": args.size, "rows": rows}, indent=2, default=str))
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
