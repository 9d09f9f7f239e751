"""The microbenchmark suite — `python -m bench`: every registry kernel × backend × dtype × size, timed honestly.

Cases are data (bench/cases below: kernel, variant, backend, dtype, size), generated from the kernel registry — a new
kernel or backend appears here without benchmark code of its own. For each case:
  1. draw the inputs from the kernel's input spec (seeded) and convert them to the backend once (not timed);
  2. parity first: run the backend on exactly these inputs and compare with the NumPy reference (DESIGN.md §7
     tolerances); a kernel that disagrees is refused, not timed;
  3. warm up — JIT compilation, graph building, module loading — reported separately as "first call";
  4. time `repeats` calls, each stopped after the backend's synchronize (mx.eval, CUDA stream sync): median and spread;
  5. roofline: FLOPs and compulsory bytes by formula (bench/cost.py) → GFLOP/s and GB/s, and their ratios to the
     machine's own GEMM rate and copy bandwidth measured in the same run (bench/machine.py).
Then (unless --no-scaling) the scaling study (bench/scaling.py: time and peak memory vs T and vs H per algorithm), the
peers when installed (bench/peers.py: torch nn.RNN/GRU/LSTM, JAX lax.scan / associative_scan for the LRU), and the
outputs: JSON (with the machine, library versions and thread count), a Markdown table, and PNG plots.

    python -m bench                     every kernel × available backend at --size small, scaling, peers, plots
    python -m bench --quick             tiny sizes, short scaling grid — the CI smoke run (no speed assertions)
    python -m bench --size bench --readme    the README's "What it costs" section, regenerated (docs/bench/)
Filters: --kernel (substring), --backend (repeatable), --dtype (repeatable), --threads N.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SIZES = {"quick": dict(T=8, B=2, I=3, H=4), "small": dict(T=64, B=8, I=16, H=32),
         "bench": dict(T=256, B=32, I=64, H=256)}


@dataclass(frozen=True)
class Case:
    kernel: str
    variant: dict = field(hash=False)
    backend: str
    dtype: str
    size: dict = field(hash=False)


def cases(kernel_filter=None, backends=None, dtypes=("float32",), size="small") -> list[Case]:
    """The grid, from the registry. Kernels whose registry entry restricts its sizes (dense RTRL, dense FPTT:
    O(S²P) per step) use the largest of their own sizes at --size small/bench (the smallest at --size quick)."""
    from refimpl.registry import BACKENDS, KERNELS
    out = []
    for name, spec in KERNELS.items():
        if kernel_filter and kernel_filter not in name:
            continue
        shape = dict(SIZES[size]) if spec.sizes is None else dict(spec.sizes[0 if size == "quick" else -1])
        for variant in spec.variants:
            for dtype in dtypes:
                if dtype in spec.dtypes:
                    for backend in (backends or list(BACKENDS)):
                        out.append(Case(name, variant, backend, dtype, shape))
    return out


def _time(fn, repeats: int, sync):
    t0 = time.perf_counter()
    sync(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - t0)
    return first, times


def _parity(kernel, backend, inputs) -> float:
    import numpy as np
    from refimpl.numerics import rel_error
    from refimpl.registry import KERNELS, call, flatten_outputs
    want = flatten_outputs(KERNELS[kernel].reference(**inputs))
    got = flatten_outputs(call(kernel, backend, **inputs))
    worst = 0.0
    for name, ref in want.items():
        if isinstance(ref, np.ndarray):
            if name not in got or got[name].shape != ref.shape:
                return float("inf")
            worst = max(worst, rel_error(got[name], ref))
    return worst


def peak_memory(backend: str, fn, sync) -> tuple[int | None, str]:
    """(peak bytes allocated during one call, how it was measured): tracemalloc for the host backends (NumPy
    allocations, including those of the Numba wrappers; not what compiled code allocates internally), MLX's own
    peak counter, CuPy's memory pool (bytes in use after the call: the pool keeps no peak)."""
    if backend in ("numpy", "numba"):
        import tracemalloc
        tracemalloc.start()
        sync(fn())
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak, "tracemalloc"
    if backend == "mlx":
        import mlx.core as mx
        mx.reset_peak_memory()
        sync(fn())
        return int(mx.get_peak_memory()), "mx.get_peak_memory"
    if backend == "cupy":
        import cupy as cp
        pool = cp.get_default_memory_pool()
        before = pool.used_bytes()
        out = fn()
        sync(out)
        return int(pool.used_bytes() - before), "cupy pool (in use after the call)"
    return None, "not measured"


def time_case(case: Case, repeats: int = 5, limits: dict | None = None, seed: int = 0) -> dict:
    """One row: parity, first call, timings and roofline figures of `case` (or why it was skipped/refused)."""
    import numpy as np
    from refimpl.numerics import TOLERANCES
    from refimpl.registry import KERNELS, load_backend, map_arrays
    from .cost import intensity
    row = {"kernel": case.kernel, "variant": case.variant, "backend": case.backend, "dtype": case.dtype,
           "size": case.size}
    b = load_backend(case.backend)
    if not b.available or case.kernel not in b.kernels:
        return {**row, "skipped": b.reason or "kernel not implemented"}
    why = b.unsupported_dtype(case.kernel, case.dtype)
    if why:
        return {**row, "skipped": why}
    spec = KERNELS[case.kernel]
    inputs = spec.make_inputs(np.random.default_rng(seed), np.dtype(case.dtype), case.size, **case.variant)
    if case.backend != "numpy":
        err = _parity(case.kernel, case.backend, inputs)
        tol = TOLERANCES["backend_vs_reference"][case.dtype]
        row["parity_rel_err"] = err
        if not err <= tol:
            return {**row, "skipped": f"parity FAILED ({err:.1e} > {tol:.0e}): not timed"}
    args = map_arrays(b.to_backend, inputs)
    kernel = b.kernels[case.kernel]
    first, times = _time(lambda: kernel(**args), repeats, b.synchronize)
    median = statistics.median(times)
    row["peak_bytes"], row["peak_measured_by"] = peak_memory(case.backend, lambda: kernel(**args), b.synchronize)
    n_flops, n_bytes = intensity(case.kernel, case.size, inputs, spec.reference(**inputs))
    row.update(first_call_s=first, median_s=median, min_s=min(times), max_s=max(times), repeats=repeats,
               flops=n_flops, bytes=n_bytes, gflops_per_s=n_flops / median / 1e9, gbytes_per_s=n_bytes / median / 1e9)
    if limits:
        gemm = limits["gemm_flops_per_s"].get(case.dtype) or max(limits["gemm_flops_per_s"].values())
        row["frac_gemm"] = n_flops / median / gemm
        row["frac_copy"] = n_bytes / median / limits["copy_bytes_per_s"]
    return row


def run(kernel_filter=None, backends=None, dtypes=("float32",), size="small", repeats=5, seed=0, limits=None):
    """Every case of the grid, timed (see time_case). `limits` per backend: {backend: machine limits}."""
    rows = []
    for case in cases(kernel_filter, backends, dtypes, size):
        rows.append(time_case(case, repeats, (limits or {}).get(case.backend), seed))
    return rows


def torch_peers(dtype="float32", size="bench", repeats=5, cells=("rnn", "gru", "lstm")):
    """PyTorch nn.RNN / GRU / LSTM forward + backward on the same shape, or a line saying why not."""
    from .peers import torch_fwd_bwd
    rows = []
    for cell in cells:
        try:
            fn = torch_fwd_bwd(cell, SIZES[size], dtype)
        except ImportError:
            return [{"peer": "torch", "skipped": "torch is not installed (optional; never installed by make test)"}]
        first, times = _time(fn, repeats, lambda out: None)
        rows.append({"peer": f"torch.nn.{cell.upper()} fwd+bwd", "dtype": dtype, "size": SIZES[size],
                     "first_call_s": first, "median_s": statistics.median(times), "min_s": min(times),
                     "max_s": max(times)})
    return rows


def jax_peers(size="bench", repeats=5):
    """JAX's LRU forward + jax.grad by lax.scan and by lax.associative_scan, or a line saying why not."""
    from .peers import jax_lru_fwd_bwd
    rows = []
    for how in ("scan", "associative"):
        try:
            fn = jax_lru_fwd_bwd(SIZES[size], how)
        except ImportError:
            return [{"peer": "jax", "skipped": "jax is not installed (optional; never installed by make test)"}]
        first, times = _time(fn, repeats, lambda out: None)
        rows.append({"peer": f"jax lru lax.{how}{'_scan' if how == 'associative' else ''} fwd+grad",
                     "dtype": "float32", "size": SIZES[size], "first_call_s": first,
                     "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)})
    return rows


def _ms(s):
    return f"{1e3 * s:.3g}"


def format_rows(rows) -> str:
    """The kernel table as Markdown (one row per case; skipped and refused cases say why)."""
    lines = ["| kernel | variant | backend | dtype | T×B×I×H | median ms | min…max ms | first call ms | GFLOP/s | "
             "% GEMM | GB/s | % copy | peak MiB |", "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        sz = "×".join(str(r["size"][k]) for k in ("T", "B", "I", "H")) if "size" in r else ""
        if "peer" in r:
            head = f"| {r['peer']} | | peer | {r.get('dtype', '')} | {sz} |"
        else:
            v = ",".join(str(x) for x in r["variant"].values())
            head = f"| `{r['kernel']}` | {v} | {r['backend']} | {r['dtype']} | {sz} |"
        if "skipped" in r:
            lines.append(f"{head} skipped: {r['skipped']} | | | | | | | |")
            continue
        roof = (f" {r['gflops_per_s']:.3g} | {100 * r['frac_gemm']:.3g} | {r['gbytes_per_s']:.3g} | "
                f"{100 * r['frac_copy']:.3g} |" if "frac_gemm" in r else " | | | |")
        roof += f" {r['peak_bytes'] / 2**20:.3g} |" if r.get("peak_bytes") is not None else " |"
        lines.append(f"{head} {_ms(r['median_s'])} | {_ms(r['min_s'])}…{_ms(r['max_s'])} | "
                     f"{_ms(r['first_call_s'])} |{roof}")
    return "\n".join(lines)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def set_threads(n: int) -> None:
    """n threads for Numba, OpenMP and the BLAS libraries, through their environment variables: it takes effect only
    for what is imported (numpy, numba, torch …) after the call."""
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


README_BEGIN, README_END = "<!-- bench:begin -->", "<!-- bench:end -->"


def update_readme(readme: Path, section: str) -> None:
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise SystemExit(f"{readme} has no {README_BEGIN} … {README_END} markers")
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    _write_atomic(readme, f"{head}{README_BEGIN}\n{section}\n{README_END}{tail}")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", default=None, help="only kernels whose name contains this")
    ap.add_argument("--backend", action="append", default=None, help="backend(s) to time (default: every one)")
    ap.add_argument("--dtype", action="append", default=None, choices=["float32", "float64"])
    ap.add_argument("--size", default="small", choices=sorted(SIZES))
    ap.add_argument("--quick", action="store_true", help="tiny sizes and a short scaling grid (the CI smoke run)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="threads for BLAS / Numba / torch (recorded)")
    ap.add_argument("--no-scaling", action="store_true", help="skip the scaling study")
    ap.add_argument("--no-peers", action="store_true", help="skip torch / JAX even when installed")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--out", default="runs/bench", help="output directory (bench.json, bench.md, *.png)")
    ap.add_argument("--readme", action="store_true", help="write docs/bench/ and the README's 'What it costs'")
    args = ap.parse_args(argv)
    if args.threads:
        if "numpy" in sys.modules and argv is None:
            print("note: numpy was imported before --threads could take effect", file=sys.stderr)
        set_threads(args.threads)
    from . import machine, scaling
    size = "quick" if args.quick else args.size
    repeats = 2 if args.quick else args.repeats
    out = Path("docs/bench") if args.readme else Path(args.out)
    backends = args.backend
    limits = {"_host": machine.host_limits(copy_mib=8 if args.quick else 64, n=256 if args.quick else 1024)}
    from refimpl.registry import BACKENDS, load_backend
    for name in (backends or list(BACKENDS)):
        b = load_backend(name)
        dev = machine.backend_limits(name, copy_mib=8 if args.quick else 64) if b.available else None
        limits[name] = dev or limits["_host"]
    rows = run(args.kernel, backends, tuple(args.dtype or ["float32"]), size, repeats, limits=limits)
    if not args.no_peers:
        rows += torch_peers(size=size, repeats=repeats) + jax_peers(size=size, repeats=repeats)
    study = None if args.no_scaling else scaling.study(quick=args.quick)
    report = {"machine": machine.describe(args.threads), "limits": {k: v for k, v in limits.items()},
              "size": size, "rows": rows, "scaling": study}
    _write_atomic(out / "bench.json", json.dumps(report, indent=2, default=str))
    md = format_rows(rows)
    if study:
        md += "\n\n" + scaling.format_study(study)
    _write_atomic(out / "bench.md", md + "\n")
    plots = [] if args.no_plots else _plots(rows, study, out)
    print(md)
    print(f"wrote {out / 'bench.json'}, {out / 'bench.md'}" + "".join(f", {p}" for p in plots))
    if args.readme:
        update_readme(Path("README.md"), readme_section(report, plots))
        print("updated README.md (What it costs)")


def _plots(rows, study, out: Path) -> list:
    from . import plots
    made = [plots.roofline(rows, out / "roofline.png")]
    if study:
        made += plots.scaling(study, out / "scaling.png")
    return [p for p in made if p]


def readme_section(report: dict, plots: list) -> str:
    """The README's 'What it costs': machine, limits, the cell kernels' table, the scaling summary and the plots."""
    from . import machine, scaling
    m, host = report["machine"], report["limits"]["_host"]
    keep = [r for r in report["rows"] if "peer" in r or (r.get("kernel", "").split(".")[1] in ("forward", "backward")
                                                         and "skipped" not in r)]
    peers = sorted({r["peer"].split()[0].split(".")[0] for r in report["rows"] if "peer" in r and "skipped" not in r})
    lines = ["Measured by `make bench` (`python -m bench --size bench --threads 2 --readme`"
             + (f"; peers installed separately: {', '.join(peers)}" if peers else "")
             + f") on {machine.machine_line(m) if 'cpu' in m else m['processor']}, {m['cpus']} CPUs, threads "
             f"{m['threads'] or 'default'}; "
             f"copy bandwidth {host['copy_bytes_per_s'] / 1e9:.1f} GB/s, GEMM "
             + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in host["gemm_flops_per_s"].items())
             + f"; size {report['size']}). Every row passed its parity check before it was timed; the full table of "
             f"every kernel is docs/bench/bench.md.", "", format_rows(keep)]
    if report.get("scaling"):
        lines += ["", scaling.format_study(report["scaling"])]
    lines += [""] + [f"![{Path(p).stem}](docs/bench/{Path(p).name})" for p in plots]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
