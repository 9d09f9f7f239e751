"""The backends' performance goals, measured: `python -m bench.goals` prints the table the README quotes.

Shape of the goals: B = 32, T = 256, I = 64, H = 256 (N = 256 for the lru), float32, one thread count for everyone
(--threads, default 2: NUMBA_NUM_THREADS, OMP/OpenBLAS threads and torch.set_num_threads are set before anything is
imported). Each measurement is a median over repeats after a warm-up call (JIT compilation excluded), and the
contenders of one row are timed interleaved (a, b, a, b, …) so that a machine shared with other work slows both alike,
each after SETTLE seconds of busy waiting, so that no thread pool the call before left spinning slows it.

Rows (the goal in brackets):
  gru  fwd+BPTT   backend / torch.nn.GRU forward+backward                      [≤ 0.6]
  lstm fwd+BPTT   backend / torch.nn.LSTM forward+backward                     [≤ 1.0]
  lru  fwd scan   bytes the LRU's time loop must move (read u, write h: the cache's h_prev is a view of h) / its
                  time, over the copy bandwidth of np.copyto measured in the same run, from the scan's h  [≥ 0.8]
  lru  fwd kernel the same for the whole lru.forward kernel, its input-projection GEMM included: shown for
                  information (the GEMM is compute-bound, so no bandwidth goal applies to it)
  lru  fwd+BPTT   backend / JAX lax.scan forward with jax.grad (jit-compiled)  [≤ 0.3: the three GEMMs that both
                  sides must run (u = x W2ᵀ, M = ūᵀ x, x̄ = ū W2) bound the ratio from below]
  lru  rtrl       backend lru.rtrl sweep (forward states + traces + gradient) / backend lru forward+backward  [≤ 2]
Peers that are not installed (torch, jax: optional, never installed by `make test`) are reported as skipped.

--isa avx2 measures the goals as on an x86 CPU without AVX-512, on this one: the command runs itself again with every
contender held to AVX2 + FMA from the start (avx2_env) — OpenBLAS's Haswell kernels (NumPy's and SciPy's), Numba
compiling for haswell with no AVX-512 feature (and its own cache directory, so no AVX-512 code is loaded from the
native cache), MKL and oneDNN at AVX2 and ATen's AVX2 kernels for torch, XLA's AVX2 code for JAX. The machine line
then reads "Haswell" for the BLAS and "haswell (no AVX-512)" for Numba.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from .run import set_threads        # (bench.run imports no numpy at module level)

SHAPE = dict(B=32, T=256, I=64, H=256)
#: The lru fwd+BPTT goal against JAX: both sides run the same three GEMMs, which bound the ratio from below.
LRU_VS_JAX = 0.3
#: LLVM's feature list of a Haswell CPU (AVX2, FMA, BMI; no AVX-512): Numba's NUMBA_CPU_FEATURES under --isa avx2.
HASWELL_FEATURES = ("+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+cx8,+f16c,+fma,+fsgsbase,+fxsr,+invpcid,+lzcnt,+mmx,"
                    "+movbe,+pclmul,+popcnt,+rdrnd,+sahf,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave,+xsaveopt")


def avx2_env(cache_dir: str) -> dict:
    """The environment that holds every contender of this benchmark to AVX2 + FMA (module doc, --isa avx2)."""
    return {"OPENBLAS_CORETYPE": "Haswell",                      # NumPy's and SciPy's OpenBLAS
            "NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": HASWELL_FEATURES, "NUMBA_CACHE_DIR": cache_dir,
            "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",   # torch
            "XLA_FLAGS": "--xla_cpu_max_isa=AVX2",                  # jax
            "REFIMPL_BENCH_ISA": "avx2"}


#: Seconds of busy waiting before each timed call of the goals. A peer's thread pool spins for a while after its call
#: (JAX's: its spin measurably slowed the Numba call after it, by about 3 ms in 16); waiting lets it go idle, so that
#: no contender is charged for the one before it. Busy, not asleep: after a sleep the cores start the next call cold.
SETTLE = 0.01


def interleaved_times(fns: dict, repeats: int, settle: float = 0.0) -> dict:
    """{name: [seconds per call]}: `repeats` rounds calling every fn once per round (a, b, c, a, b, c, …), so that a
    shared machine slows them alike, each call after `settle` seconds of busy waiting (no warm-up: the caller's)."""
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < settle:
                pass
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def _interleaved(fns: dict, repeats: int) -> dict:
    """{name: median seconds}: one warm-up call each, then interleaved_times with SETTLE."""
    import statistics
    for fn in fns.values():
        fn()
    return {k: statistics.median(v) for k, v in interleaved_times(fns, repeats, SETTLE).items()}


def _inputs(kernel: str, seed: int = 0, **size):
    import numpy as np
    from refimpl.registry import KERNELS
    return KERNELS[kernel].make_inputs(np.random.default_rng(seed), np.dtype("float32"), {**SHAPE, **size})


def _backend_fwd_bwd(cell: str, backend: str):
    """A function running the backend's forward then backward kernel on backend-resident inputs (converted once)."""
    from refimpl.registry import get_kernel, load_backend, map_arrays
    import numpy as np
    b = load_backend(backend)
    fwd, bwd = get_kernel(f"{cell}.forward", backend), get_kernel(f"{cell}.backward", backend)
    inputs = map_arrays(b.to_backend, _inputs(f"{cell}.forward"))
    h_np = load_backend("numpy").kernels[f"{cell}.forward"](**_inputs(f"{cell}.forward"))[0]
    rng = np.random.default_rng(1)
    dh = rng.standard_normal(h_np.shape) + (1j * rng.standard_normal(h_np.shape) if np.iscomplexobj(h_np) else 0)
    dh = b.to_backend(dh.astype(h_np.dtype))

    def run():
        h, cache = fwd(**inputs)
        return map_arrays(b.to_numpy, bwd(inputs["params"], dh, cache))   # to_numpy: forces lazy backends (mlx)
    return run


def _scan_only(backend: str):
    """(run, (u, h)): the lru's time loop alone (u → h in place) and the arrays of a copy of the same size, where the
    backend exposes it (numba); else None."""
    if backend != "numba":
        return None
    import numpy as np
    from backends.numba.cells import lru_scan
    T, B, N = SHAPE["T"], SHAPE["B"], SHAPE["H"]
    rng = np.random.default_rng(0)
    lam = (0.5 * np.exp(1j * rng.uniform(0, 0.3, N))).astype(np.complex64)
    hh = np.zeros((T + 1, B, N), np.complex64)             # [h0, u_0, …, u_{T-1}] on entry, [h0, h_0, …] on exit
    hh[1:] = rng.standard_normal((T, B, N)) + 1j * rng.standard_normal((T, B, N))
    other = np.empty_like(hh[1:])

    def run():                              # in place (|λ| = 0.5 keeps repeats bounded)
        lru_scan(lam, hh)
    return run, (hh[1:], other)


def _row(name, goal, value, detail, better):
    """A row of the table; goal None: a measurement shown for information, not a goal."""
    ok = None if value is None or goal is None else (value <= goal if better == "lower" else value >= goal)
    return {"row": name, "goal": goal, "better": better, "value": value, "met": ok, "detail": detail}


def measure(backend: str = "numba", repeats: int = 7) -> list[dict]:
    import numpy as np
    from .peers import jax_lru_fwd_bwd, torch_fwd_bwd
    from refimpl.registry import get_kernel, load_backend, map_arrays
    rows = []
    b = load_backend(backend)
    if not b.available:
        return [{"row": f"backend {backend}", "skipped": b.reason}]
    for cell, goal in (("gru", 0.6), ("lstm", 1.0)):
        mine = _backend_fwd_bwd(cell, backend)
        try:
            theirs = torch_fwd_bwd(cell, SHAPE)
        except ImportError:
            t = _interleaved({backend: mine}, repeats)
            rows.append({**_row(f"{cell} fwd+BPTT / torch", goal, None, f"{backend} {1e3 * t[backend]:.1f} ms; "
                                f"torch not installed", "lower"), "skipped": "torch is not installed"})
            continue
        t = _interleaved({backend: mine, "torch": theirs}, repeats)
        rows.append(_row(f"{cell} fwd+BPTT / torch", goal, t[backend] / t["torch"],
                         f"{backend} {1e3 * t[backend]:.1f} ms, torch {1e3 * t['torch']:.1f} ms", "lower"))

    # lru forward scan vs copy bandwidth
    inputs = _inputs("lru.forward")
    fwd = get_kernel("lru.forward", backend)
    xin = map_arrays(b.to_backend, inputs)
    T, B, I, N = SHAPE["T"], SHAPE["B"], SHAPE["I"], SHAPE["H"]
    # bytes the kernel must move at least: read x (float32) once, write h (complex64; h_prev is a view of it)
    moved = 4 * T * B * I + 8 * T * B * N
    src = np.ones((T, B, N), np.complex64)
    dst = np.empty_like(src)
    t = _interleaved({"scan": lambda: map_arrays(b.to_numpy, fwd(**xin)), "copy": lambda: np.copyto(dst, src)},
                     repeats)
    copy_bw = 2 * src.nbytes / t["copy"]
    scan_bw = moved / t["scan"]
    rows.append(_row("lru fwd kernel / copy bandwidth", None, scan_bw / copy_bw,
                     f"{scan_bw / 1e9:.1f} GB/s ({moved / 1e6:.1f} MB in {1e3 * t['scan']:.2f} ms, the input "
                     f"projection GEMM included) vs np.copyto {copy_bw / 1e9:.1f} GB/s", "higher"))
    scan = _scan_only(backend)
    if scan is not None:                 # the recurrence alone: read u, write h (complex64, in place)
        run, (h, other) = scan           # the copy reads the scan's own array h: its pages, its TLB entries
        t = _interleaved({"scan": run, "copy": lambda: np.copyto(other, h)}, repeats)
        scan_bytes = 2 * 8 * T * B * N
        copy_bw = 2 * h.nbytes / t["copy"]
        rows.append(_row("lru fwd scan / copy bandwidth", 0.8, scan_bytes / t["scan"] / copy_bw,
                         f"{scan_bytes / t['scan'] / 1e9:.1f} GB/s ({scan_bytes / 1e6:.1f} MB in "
                         f"{1e3 * t['scan']:.2f} ms: the time loop alone) vs np.copyto {copy_bw / 1e9:.1f} GB/s",
                         "higher"))

    mine = _backend_fwd_bwd("lru", backend)
    try:
        theirs = jax_lru_fwd_bwd(SHAPE)
    except ImportError:
        rows.append({"row": "lru fwd+BPTT / jax", "goal": LRU_VS_JAX, "skipped": "jax is not installed"})
        theirs = None
    if theirs is not None:
        t = _interleaved({backend: mine, "jax": theirs}, repeats)
        rows.append(_row("lru fwd+BPTT / jax", LRU_VS_JAX, t[backend] / t["jax"],
                         f"{backend} {1e3 * t[backend]:.1f} ms, jax {1e3 * t['jax']:.1f} ms", "lower"))

    rtrl = get_kernel("lru.rtrl", backend)
    rin = map_arrays(b.to_backend, _inputs("lru.rtrl"))
    t = _interleaved({"rtrl": lambda: map_arrays(b.to_numpy, rtrl(**rin)), "bptt": mine}, repeats)
    rows.append(_row("lru rtrl / lru fwd+BPTT", 2.0, t["rtrl"] / t["bptt"],
                     f"rtrl {1e3 * t['rtrl']:.1f} ms, fwd+bwd {1e3 * t['bptt']:.1f} ms", "lower"))
    return rows


def numba_tile(backend: str):
    """The register tile of the Numba backend's GEMMs on this machine, e.g. "8 × 48" (rows × float32 columns;
    backends/numba/gemm.py), or None for another backend."""
    if backend != "numba":
        return None
    from backends.numba import gemm
    import numpy as np
    return f"{gemm.TILE[0]} × {gemm.panel_width(np.float32)}"


def format_rows(rows, backend) -> str:
    lines = [f"{'goal (' + backend + ')':<32} {'target':>8} {'measured':>9}  {'met':<4} detail"]
    for r in rows:
        if r.get("value") is None:
            lines.append(f"{r['row']:<32} {'':>8} {'':>9}  {'—':<4} skipped: {r.get('skipped', '')}")
            continue
        if r["goal"] is None:
            lines.append(f"{r['row']:<32} {'(info)':>8} {r['value']:>9.2f}  {'':<4} {r['detail']}")
            continue
        target = f"{'≤' if r['better'] == 'lower' else '≥'} {r['goal']:g}"
        lines.append(f"{r['row']:<32} {target:>8} {r['value']:>9.2f}  {'yes' if r['met'] else 'NO':<4} {r['detail']}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.goals", description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="numba")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--isa", choices=("native", "avx2"), default="native",
                    help="avx2: every contender held to AVX2 + FMA (an x86 CPU without AVX-512; see the module doc)")
    ap.add_argument("--out", default="runs/bench_goals.json")
    args = ap.parse_args(argv)
    if args.isa == "avx2" and os.environ.get("REFIMPL_BENCH_ISA") != "avx2":
        if platform.machine().lower() not in ("x86_64", "amd64"):
            ap.exit(2, f"--isa avx2 holds an x86-64 CPU to AVX2; this machine is {platform.machine()}: leave it out\n")
        env = {**os.environ, **avx2_env(str(Path(args.out).parent / "numba-cache-avx2"))}
        return subprocess.call([sys.executable, "-m", "bench.goals", *(sys.argv[1:] if argv is None else argv)],
                               env=env)
    if "numpy" in sys.modules and args.threads:
        print("note: numpy was imported before the thread count was set", file=sys.stderr)
    set_threads(args.threads)
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        pass
    rows = measure(args.backend, args.repeats)
    from . import machine
    m = machine.describe(args.threads)
    print(f"machine: {machine.machine_line(m)}")
    tile = numba_tile(args.backend)
    print(f"B={SHAPE['B']} T={SHAPE['T']} I={SHAPE['I']} H=N={SHAPE['H']} float32, {args.threads} threads, "
          f"median of {args.repeats}" + (", every contender held to AVX2 (--isa avx2)" if args.isa == "avx2" else "")
          + (f"; numba GEMM tile {tile} (rows × float32 columns)" if tile else ""))
    print(format_rows(rows, args.backend))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps({"machine": m, "isa": args.isa, "shape": SHAPE, "threads": args.threads,
                               "backend": args.backend, "numba_tile": tile, "rows": rows}, indent=2))
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
