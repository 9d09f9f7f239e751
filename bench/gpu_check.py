r"""The CuPy backend checked on a real GPU in one run: `python -m bench.gpu_check OUTDIR` (bench/gpu_check.sh,
`make gpu-check OUT=…`) writes OUTDIR/gpu_check.json (strict JSON) and OUTDIR/gpu_check.log.

Parts, in this order, each in its own Python process with its own timeout (a part that fails, crashes or runs out of
time is recorded as such in the JSON, and the others still run); the timeouts are cut to what is left of --budget:
    probe     does a CUDA device answer (backends.cupy.available(): a probe of the device, not the import), which
              device (name, compute capability, memory, launch limits), the versions of python, numpy, cupy, CUDA
              (runtime, driver, nvcc), torch and cuDNN, jax and its devices
    compile   every CUDA source through nvcc (tests/backends/test_cupy.py -k nvcc)
    tests     `pytest -m "gpu and not slow"`: every registered kernel × variant × dtype × size on CuPy against the
              NumPy reference (tests/backends/test_parity.py, DESIGN.md §7 tolerances), the device tests of
              tests/backends/test_cupy.py, the algorithms end to end on the backend (the RTRL family, FPTT,
              gradcheck, train/compare, the chunked driver, the device training step): the tests parametrized with
              backend="cupy" (tests/conftest.py marks them gpu)
    goals     the performance goals of the issue, as ratios of timings taken in this one run, interleaved
              (a, b, a, b, …; median): see GOALS
    carried   every carried kernel (the RTRL-family sweeps, FPTT's phases) over T steps in chunks of CHUNK, carrying
              state and carry from call to call, against one whole-sequence call
    kernels   the bench suite's CuPy rows (bench/run.py time_case: parity on the benchmark inputs first, then timed,
              roofline against the device's own copy bandwidth and GEMM rate) for every registered kernel, float32,
              at SHAPE (the dense sweeps at their registered sizes), and every launch of them recorded and checked
              against the launch limits (threads per block, grid, shared memory, parameter bytes)

--rehearse (no GPU needed): the same parts at REHEARSAL_SHAPE, the CuPy kernels on the CPU emulation of their
thread bodies (backends/cupy/runtime.py EmulatedDevice) and the peers on the CPU — every line of the driver runs, the
numbers mean nothing. Without --rehearse and without a device, the parts that need one are recorded as skipped with
the probe's reason.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

#: The GPU goal shapes of the issue: B = 64, T = 1024, I = 128, H = 512 (N = 512 for the lru), float32.
SHAPE = dict(T=1024, B=64, I=128, H=512)
REHEARSAL_SHAPE = dict(T=32, B=2, I=3, H=4)
DTYPE = "float32"
#: Chunk length of the carried kernels' chunked sweep (the rehearsal's: 8).
CHUNK = 64

#: The goals: id, what is measured, target, whether lower or higher is better.
GOALS = (
    ("lru_scan_vs_copy", "lru.forward's scan (read v, write h: 16·T·B·N bytes) per second / the device-to-device copy "
                         "bandwidth of an array of h's size", 0.7, "higher"),
    ("gru_vs_cudnn", "gru.forward + gru.backward / torch nn.GRU forward + backward (cuDNN)", 1.0, "lower"),
    ("lstm_vs_cudnn", "lstm.forward + lstm.backward / torch nn.LSTM forward + backward (cuDNN)", 1.0, "lower"),
    ("lru_vs_jax_scan", "lru.forward + lru.backward / JAX lax.scan forward + jax.grad (jit)", 0.5, "lower"),
    ("lru_vs_jax_associative_scan", "lru.forward + lru.backward / JAX lax.associative_scan forward + jax.grad (jit)",
     1.0, "lower"),
    ("lru_rtrl_vs_bptt", "lru.rtrl (online: states, traces, gradient) / lru.forward + lru.backward", 2.0, "lower"),
    ("carried_chunked_vs_whole", "every carried kernel over T in chunks of CHUNK / one whole-sequence call (the "
                                 "worst kernel; each in the part 'carried')", 1.2, "lower"),
)
PARTS = ("probe", "compile", "tests", "goals", "carried", "kernels")
TIMEOUTS = {"probe": 45, "compile": 60, "tests": 180, "goals": 90, "carried": 60, "kernels": 120}
#: The whole run's budget in seconds (the issue: well under 8 minutes).
BUDGET = 420
#: The carried kernels: their op names (DESIGN.md §5).
CARRIED_OPS = ("rtrl", "snap1", "truncated", "spatial", "cec", "fptt1", "fptt_warmup", "fptt_shooting")


# ------------------------------------------------------------------------------------------------------ the contender

def contender(rehearse: bool):
    """(backend, device) the CuPy kernels run on, or (None, why not): CuPy on the CUDA device, or with `rehearse` and
    no device the CPU emulation of the same kernels (registered as backend "cupy-emulation"). The device is a
    RecordingDevice, recording nothing until its `active` is set (recording costs host time: not while timing)."""
    import backends.cupy as cupy_backend
    from backends.cupy.runtime import CudaDevice, EmulatedDevice, RecordingDevice
    from refimpl import registry
    ok, why = cupy_backend.available()
    if ok:
        dev = RecordingDevice(CudaDevice(), active=False)
        cupy_backend._DEVICE = dev                           # the registered kernels launch through it
        return registry.load_backend("cupy"), dev
    if not rehearse:
        return None, why
    dev = RecordingDevice(EmulatedDevice(), active=False)
    kernels = {name: _bound(fn, dev) for name, fn in cupy_backend.IMPLEMENTATIONS.items()}
    backend = registry.Backend("cupy-emulation", True, "", kernels)
    registry.BACKENDS["cupy-emulation"] = registry.BackendSpec("cupy-emulation", None, "CuPy's kernels, emulated")
    registry._LOADED["cupy-emulation"] = backend
    return backend, dev


def _bound(fn, dev):
    def kernel(*args, **kwargs):
        return fn(dev, *args, **kwargs)
    return kernel


def _shape(rehearse: bool) -> dict:
    return dict(REHEARSAL_SHAPE if rehearse else SHAPE)


def _median_interleaved(fns: dict, repeats: int) -> dict:
    """{name: median seconds}: one warm-up call each, then `repeats` interleaved rounds (bench/goals.py)."""
    import statistics

    from .goals import interleaved_times
    for fn in fns.values():
        fn()
    return {k: statistics.median(v) for k, v in interleaved_times(fns, repeats).items()}


def _inputs(kernel: str, size: dict, seed: int = 0, variant: dict | None = None) -> dict:
    import numpy as np

    from refimpl.registry import KERNELS
    spec = KERNELS[kernel]
    return spec.make_inputs(np.random.default_rng(seed), np.dtype(DTYPE), size,
                            **(spec.variants[0] if variant is None else variant))


def _fwd_bwd(b, cell: str, size: dict):
    """One forward + backward of the backend's <cell> kernels on inputs already on the device."""
    import numpy as np

    from refimpl.registry import map_arrays
    fwd, bwd = b.kernels[f"{cell}.forward"], b.kernels[f"{cell}.backward"]
    inputs = map_arrays(b.to_backend, _inputs(f"{cell}.forward", size))
    h = fwd(**inputs)[0]                                   # its shape and dtype, for the output gradient
    rng = np.random.default_rng(1)
    dh = rng.standard_normal(h.shape)
    if np.issubdtype(h.dtype, np.complexfloating):
        dh = dh + 1j * rng.standard_normal(h.shape)
    dh = b.to_backend(dh.astype(h.dtype))

    def run():
        _, cache = fwd(**inputs)
        out = bwd(inputs["params"], dh, cache)
        b.synchronize(out)
        return out
    return run


def _say(line: str) -> None:
    """A progress line in the log (a part's output goes there)."""
    print(line[:400], flush=True)


# ------------------------------------------------------------------------------------------------------------ parts

def part_probe(rehearse: bool, **_) -> dict:
    """Whether a device answers, which one, and every version that matters."""
    import numpy as np

    import backends.cupy as cupy_backend
    ok, why = cupy_backend.available()
    out = {"available": ok, "reason": why, "host": platform.node(), "platform": platform.platform(),
           "versions": {"python": platform.python_version(), "numpy": np.__version__}}
    versions = out["versions"]
    if ok:
        import cupy
        rt = cupy.cuda.runtime
        props = rt.getDeviceProperties(0)
        name = props["name"]
        out["device"] = {
            "name": name.decode() if isinstance(name, bytes) else str(name),
            "count": rt.getDeviceCount(), "compute_capability": f"{props['major']}.{props['minor']}",
            "memory_bytes": int(props["totalGlobalMem"]), "multiprocessors": int(props["multiProcessorCount"]),
            "max_threads_per_block": int(props["maxThreadsPerBlock"]), "max_grid_x": int(props["maxGridSize"][0]),
            "shared_bytes_per_block": int(props["sharedMemPerBlock"]),
            "shared_bytes_per_block_optin": int(props.get("sharedMemPerBlockOptin", 0))}
        versions.update(cupy=cupy.__version__, cuda_runtime=rt.runtimeGetVersion(), cuda_driver=rt.driverGetVersion())
    else:
        out["device"] = {"name": None}
        try:
            import cupy
            versions["cupy"] = cupy.__version__                # importable, but no device answers
        except Exception:                                      # noqa: BLE001 — not installed, or broken
            versions["cupy"] = None
    try:
        done = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, timeout=30)
        versions["nvcc"] = done.stdout.strip().splitlines()[-1] if done.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        versions["nvcc"] = None
    try:
        import torch
        versions["torch"] = torch.__version__
        versions["torch_cuda"] = torch.cuda.is_available()
        versions["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    except ImportError:
        versions["torch"] = None
    try:
        import jax
        versions["jax"] = jax.__version__
        versions["jax_devices"] = [str(d) for d in jax.devices()]
    except ImportError:
        versions["jax"] = None
    out["rehearsal"] = rehearse
    _say(f"probe: available={ok} {why} device={out['device'].get('name')} versions={versions}")
    return out


def _pytest(args: list, junit: Path, timeout: float) -> dict:
    """Run pytest with `args`, its results from the JUnit XML: counts, failures (name: first line), skip reasons."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    interrupted = False
    try:
        stdout, _ = proc.communicate(timeout=max(timeout - 20, 1))
    except subprocess.TimeoutExpired:                      # Ctrl-C: pytest stops and still writes what ran
        interrupted = True
        proc.send_signal(signal.SIGINT)
        try:
            stdout, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, _ = proc.communicate()
    print(stdout or "", flush=True)                           # the whole pytest output, into the log
    out = {"command": " ".join(cmd[1:]), "exit_code": proc.returncode, "interrupted": interrupted,
           "tail": (stdout or "")[-2000:]}
    if not junit.exists():
        return {**out, "error": "pytest wrote no JUnit XML"}
    counts = dict(passed=0, failed=0, errors=0, skipped=0)
    failures, reasons = [], {}
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skip = case.find("skipped")
        if bad is not None:
            counts["failed" if bad.tag == "failure" else "errors"] += 1
            failures.append(f"{name}: {(bad.get('message') or '').splitlines()[0][:300] if bad.get('message') else ''}")
        elif skip is not None:
            counts["skipped"] += 1
            why = (skip.get("message") or "")[:200]
            reasons[why] = reasons.get(why, 0) + 1
        else:
            counts["passed"] += 1
    return {**out, **counts, "failures": failures[:100], "skip_reasons": reasons}


def part_compile(rehearse: bool, outdir: Path, timeout: float, **_) -> dict:
    return _pytest(["tests/backends/test_cupy.py", "-k", "nvcc"], outdir / "compile.junit.xml", timeout)


def part_tests(rehearse: bool, outdir: Path, timeout: float, tests: str = "tests", **_) -> dict:
    return _pytest(["-m", "gpu and not slow", *tests.split()], outdir / "tests.junit.xml", timeout)


def _copy_bandwidth(b, nbytes: int, repeats: int) -> tuple:
    """(bytes per second read + written by a device-to-device copy of `nbytes`, how)."""
    import numpy as np
    if b.name == "cupy":
        import cupy
        src = cupy.ones(nbytes // 8, cupy.complex64)
        dst = cupy.empty_like(src)
        sync = cupy.cuda.Device().synchronize

        def copy():
            cupy.copyto(dst, src)
            sync()
        how = "cupy.copyto, device to device"
    else:
        src = np.ones(nbytes // 8, np.complex64)
        dst = np.empty_like(src)

        def copy():
            np.copyto(dst, src)
        how = "np.copyto on the host (rehearsal)"
    t = _median_interleaved({"copy": copy}, repeats)["copy"]
    return 2 * src.nbytes / t, t, how


def _scan_alone(b, dev, size: dict):
    """One lru_scan (the recurrence alone: read u, write h) on the contender's device."""
    import numpy as np

    from backends.cupy.cells import lru_scan
    T, B, N = size["T"], size["B"], size["H"]
    xp = dev.xp
    rng = np.random.default_rng(0)
    lam = xp.asarray((0.9 * np.exp(1j * rng.uniform(0, 0.3, N))).astype(np.complex64))
    u = xp.asarray(rng.standard_normal((T, B, 2 * N)).astype(np.float32))
    h0 = xp.zeros((B, N), np.complex64)
    h = xp.empty((T, B, N), np.complex64)

    def run():
        lru_scan(dev, u, lam, h0, h, T, B, N, reverse=False)
        b.synchronize(h)
    return run, 16 * T * B * N


def _peer(rehearse: bool, name: str, make):
    """The peer's run function, or (None, why) when it cannot run on the device here."""
    try:
        return make(), ""
    except ImportError as e:
        return None, f"{name} is not installed ({e})"


def _torch_peer(cell: str, size: dict, rehearse: bool):
    import torch

    from .peers import torch_fwd_bwd
    if not torch.cuda.is_available() and not rehearse:
        raise RuntimeError("torch sees no CUDA device (torch.cuda.is_available() is False)")
    return torch_fwd_bwd(cell, size, DTYPE, device="cuda" if torch.cuda.is_available() else "cpu")


def _jax_peer(how: str, size: dict, rehearse: bool):
    import jax

    from .peers import jax_lru_fwd_bwd
    if jax.default_backend() not in ("gpu", "cuda") and not rehearse:
        raise RuntimeError(f"JAX has no GPU here (its default backend is {jax.default_backend()})")
    return jax_lru_fwd_bwd(size, how)


def part_goals(rehearse: bool, repeats: int = 7, **_) -> dict:
    """Every goal's ratio, each timed against its peer in one interleaved loop."""
    b, dev = contender(rehearse)
    if b is None:
        return {"goals": {g[0]: {"skipped": f"no CUDA device: {dev}"} for g in GOALS if g[0] !=
                          "carried_chunked_vs_whole"}}
    size = _shape(rehearse)
    goals, peers = {}, {}

    def attempt(goal_id, fn):
        try:
            goals[goal_id] = fn()
        except Exception as e:                           # noqa: BLE001 — a failure is a measurement of its own
            goals[goal_id] = {"error": f"{type(e).__name__}: {e}"[:500]}
        _say(f"{goal_id}: {goals[goal_id]}")

    def lru_scan_vs_copy():
        scan, moved = _scan_alone(b, dev, size)
        bw, t_copy, how = _copy_bandwidth(b, moved // 2, repeats)
        fwd = b.kernels["lru.forward"]
        xin = _device_inputs(b, "lru.forward", size)
        t = _median_interleaved({"scan": scan, "forward": lambda: b.synchronize(fwd(**xin))}, repeats)
        peers["copy_bandwidth"] = {"bytes_per_s": bw, "median_s": t_copy, "how": how}
        return {"value": moved / t["scan"] / bw, "scan_s": t["scan"], "forward_s": t["forward"],
                "scan_bytes": moved, "copy_bytes_per_s": bw,
                "forward_vs_copy": (moved + 4 * size["T"] * size["B"] * size["I"]) / t["forward"] / bw,
                "detail": f"scan {moved / t['scan'] / 1e9:.1f} GB/s, copy {bw / 1e9:.1f} GB/s ({how}); the whole "
                          f"lru.forward (input GEMM too) {1e3 * t['forward']:.3f} ms"}

    def vs_peer(mine, name, make):
        theirs, why = _peer(rehearse, name, make)
        if theirs is None:
            return {"skipped": why}
        t = _median_interleaved({"mine": mine, "peer": theirs}, repeats)
        peers[name] = {"median_s": t["peer"]}
        return {"value": t["mine"] / t["peer"], "mine_s": t["mine"], "peer_s": t["peer"],
                "detail": f"cupy {1e3 * t['mine']:.3f} ms, {name} {1e3 * t['peer']:.3f} ms"}

    attempt("lru_scan_vs_copy", lru_scan_vs_copy)
    for cell in ("gru", "lstm"):
        attempt(f"{cell}_vs_cudnn", lambda cell=cell: vs_peer(_fwd_bwd(b, cell, size), f"torch nn.{cell.upper()}",
                                                              lambda: _torch_peer(cell, size, rehearse)))
    lru = None
    try:
        lru = _fwd_bwd(b, "lru", size)
    except Exception as e:                               # noqa: BLE001
        goals["lru_vs_jax_scan"] = goals["lru_vs_jax_associative_scan"] = goals["lru_rtrl_vs_bptt"] = {
            "error": f"lru forward+backward: {type(e).__name__}: {e}"[:500]}
    if lru is not None:
        attempt("lru_vs_jax_scan", lambda: vs_peer(lru, "jax lax.scan", lambda: _jax_peer("scan", size, rehearse)))
        attempt("lru_vs_jax_associative_scan", lambda: vs_peer(lru, "jax lax.associative_scan",
                                                               lambda: _jax_peer("associative", size, rehearse)))

        def rtrl_vs_bptt():
            rtrl = b.kernels["lru.rtrl"]
            rin = _device_inputs(b, "lru.rtrl", size)
            t = _median_interleaved({"rtrl": lambda: b.synchronize(rtrl(**rin)), "bptt": lru}, repeats)
            return {"value": t["rtrl"] / t["bptt"], "rtrl_s": t["rtrl"], "bptt_s": t["bptt"],
                    "detail": f"lru.rtrl {1e3 * t['rtrl']:.3f} ms, lru fwd+bwd {1e3 * t['bptt']:.3f} ms"}
        attempt("lru_rtrl_vs_bptt", rtrl_vs_bptt)
    return {"goals": goals, "peers": peers}


def _device_inputs(b, kernel: str, size: dict, variant: dict | None = None) -> dict:
    from refimpl.registry import map_arrays
    return map_arrays(b.to_backend, _inputs(kernel, size, variant=variant))


def part_carried(rehearse: bool, repeats: int = 5, kernels: str = "", **_) -> dict:
    """time(T steps in chunks of CHUNK, carrying state and carry) / time(one call over T), per carried kernel."""
    from refimpl.cells import CELLS
    from refimpl.registry import KERNELS
    b, dev = contender(rehearse)
    if b is None:
        return {"rows": [], "skipped": f"no CUDA device: {dev}"}
    size, chunk = _shape(rehearse), 8 if rehearse else CHUNK
    wanted, rows = [k for k in kernels.split(",") if k], []
    for kernel, spec in KERNELS.items():
        if kernel.split(".")[1] not in CARRIED_OPS or (wanted and kernel not in wanted):
            continue
        shape = size if spec.sizes is None else {**spec.sizes[-1], "T": size["T"]}
        row = {"kernel": kernel, "size": shape, "chunk": chunk}
        try:
            fn = b.kernels[kernel]
            inputs = _device_inputs(b, kernel, shape)
            state_arg = CELLS[kernel.split(".")[0]].STATE_ARG

            def whole():
                b.synchronize(fn(**inputs))

            def chunked():
                state, carry = inputs[state_arg], inputs["carry"]
                for start in range(0, shape["T"], chunk):
                    piece = {**inputs, "x": inputs["x"][start:start + chunk], "dh": inputs["dh"][start:start + chunk],
                             state_arg: state, "carry": carry}
                    out = fn(**piece)
                    state, carry = out["state"], out["carry"]
                b.synchronize(out)
            t = _median_interleaved({"whole": whole, "chunked": chunked}, repeats)
            row.update(ratio=t["chunked"] / t["whole"], whole_s=t["whole"], chunked_s=t["chunked"])
        except Exception as e:                           # noqa: BLE001 — recorded, the next kernel still runs
            row["error"] = f"{type(e).__name__}: {e}"[:500]
        rows.append(row)
        _say(f"carried {kernel}: {row.get('ratio', row.get('error'))}")
    return {"rows": rows}


def part_kernels(rehearse: bool, outdir: Path, repeats: int = 5, kernels: str = "", **_) -> dict:
    """The bench suite's rows for the contender (bench/run.py time_case), one JSON line each as it is done (so that
    a timeout keeps what was measured)."""
    from refimpl.registry import KERNELS

    from . import machine
    from .run import Case, time_case
    b, dev = contender(rehearse)
    if b is None:
        return {"rows": [], "skipped": f"no CUDA device: {dev}"}
    limits = machine.backend_limits("cupy", copy_mib=256) if b.name == "cupy" else machine.host_limits(8, 256)
    size = _shape(rehearse)
    wanted = [k for k in kernels.split(",") if k]
    lines = outdir / "kernels.rows.jsonl"
    lines.write_text("")
    for name, spec in KERNELS.items():
        if wanted and name not in wanted:
            continue
        shape = size if spec.sizes is None else dict(spec.sizes[-1])
        for variant in spec.variants:
            try:
                row = time_case(Case(name, variant, b.name, DTYPE, shape), repeats, limits)
                if "median_s" in row:                    # timed: one more call, its launches recorded
                    dev.active = True
                    b.synchronize(b.kernels[name](**_device_inputs(b, name, shape, variant)))
            except Exception as e:                       # noqa: BLE001
                row = {"kernel": name, "variant": variant, "size": shape, "error": f"{type(e).__name__}: {e}"[:500]}
            with lines.open("a") as f:
                f.write(json.dumps(_finite(row), default=str) + "\n")
            _say(f"kernel {name} {variant}: " + (f"median {row['median_s'] * 1e3:.3f} ms, parity "
                                                 f"{row['parity_rel_err']:.1e}" if "median_s" in row
                                                 else str(row.get("skipped") or row.get("error"))))
            dev.active = False
    return {"limits": limits, "launches": launch_summary(dev)}


def launch_summary(dev) -> dict:
    """Per kernel: launches, the largest n, grid, parameter block and array, and what exceeds the limits."""
    out = {}
    for r in getattr(dev, "launches", []):
        s = out.setdefault(f"{r.source}.{r.kernel}<{r.ctype}>", {"launches": 0, "max_n": 0, "max_grid": 0,
                                                                 "block": r.block, "shared_bytes": r.shared_bytes,
                                                                 "param_bytes": r.param_bytes, "largest_array": 0,
                                                                 "problems": []})
        s["launches"] += 1
        s["max_n"], s["max_grid"] = max(s["max_n"], r.n), max(s["max_grid"], r.grid)
        s["largest_array"] = max(s["largest_array"], r.largest_array)
        for p in r.problems():
            if p not in s["problems"] and len(s["problems"]) < 5:
                s["problems"].append(p)
    return out


PART_FUNCTIONS = {"probe": part_probe, "compile": part_compile, "tests": part_tests, "goals": part_goals,
                  "carried": part_carried, "kernels": part_kernels}


# ------------------------------------------------------------------------------------------------- the whole run

def _finite(x):
    """x with every NaN/inf float replaced by None (strict JSON)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if hasattr(x, "item") and callable(x.item) and getattr(x, "shape", None) == ():
        return _finite(x.item())
    return x


def run_part(name: str, args, outdir: Path, timeout: float, log) -> dict:
    """Run one part in its own process (timeout: `timeout` s); its result, or why there is none."""
    result = outdir / f"part-{name}.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "bench.gpu_check", str(outdir), "--part", name, "--repeats", str(args.repeats),
           "--tests", args.tests, "--kernels", args.kernels, "--timeout", str(int(timeout))]
    if args.rehearse:
        cmd.append("--rehearse")
    t0 = time.perf_counter()
    status, error = "ok", None
    try:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
        if done.returncode:
            status, error = "failed", f"exit code {done.returncode} (see the log)"
    except subprocess.TimeoutExpired:
        status, error = "timeout", f"ran past its {timeout:.0f} s"
    out = {"status": status, "error": error, "wall_s": time.perf_counter() - t0, "timeout_s": timeout}
    if result.exists():
        out["result"] = json.loads(result.read_text())
        if out["result"].get("interrupted"):                 # pytest stopped at the timeout: what ran is kept
            out.update(status="timeout", error=f"pytest interrupted near the part's {timeout:.0f} s; the results of "
                                               f"the tests that ran are kept")
    elif status == "ok":
        out.update(status="failed", error="the part wrote no result")
    return out


def goal_rows(parts: dict) -> list:
    """The goals of the issue, each with its measured value, whether it is met, or why it was not measured."""
    measured = (parts.get("goals", {}).get("result") or {}).get("goals", {})
    carried = parts.get("carried", {})
    rows = []
    for goal_id, what, target, better in GOALS:
        row = {"id": goal_id, "what": what, "target": target, "better": better, "value": None, "met": None}
        if goal_id == "carried_chunked_vs_whole":
            got = (carried.get("result") or {}).get("rows", [])
            timed = [r for r in got if r.get("ratio") is not None]
            bad = [f"{r['kernel']}: {r['error']}" for r in got if "error" in r]
            if timed:
                worst = max(timed, key=lambda r: r["ratio"])
                row.update(value=worst["ratio"], detail=f"worst: {worst['kernel']} (of {len(timed)} kernels timed)")
            if bad or not timed:
                row["reason"] = ("; ".join(bad)[:500] if bad else (carried.get("result") or {}).get("skipped")
                                 or carried.get("error") or "part 'carried' not run")
        else:
            m = measured.get(goal_id)
            if m is None:
                part = parts.get("goals", {})
                row["reason"] = part.get("error") or "part 'goals' not run"
            elif m.get("value") is None:
                row["reason"] = m.get("skipped") or m.get("error")
            else:
                row.update(value=m["value"], detail=m.get("detail", ""))
        if row["value"] is not None and not row.get("reason"):          # a kernel that failed: not met, not missed
            row["met"] = row["value"] <= target if better == "lower" else row["value"] >= target
        rows.append(row)
    return rows


def summary(report: dict) -> dict:
    tests = (report["parts"].get("tests", {}).get("result") or {})
    goals = report["goals"]
    return {"parts_not_ok": [k for k, v in report["parts"].items() if v["status"] != "ok"],
            "tests_passed": tests.get("passed"), "tests_failed": (tests.get("failed") or 0) + (tests.get("errors")
                                                                                                 or 0),
            "tests_skipped": tests.get("skipped"),
            "goals_met": sum(g["met"] is True for g in goals), "goals_missed": sum(g["met"] is False for g in goals),
            "goals_unmeasured": sum(g["met"] is None for g in goals),
            "launch_problems": sorted({p for part in report["parts"].values()
                                       for s in ((part.get("result") or {}).get("launches") or {}).values()
                                       for p in s["problems"]})}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    ap.add_argument("outdir")
    ap.add_argument("--rehearse", action="store_true", help="no GPU needed: the CPU emulation, tiny shapes")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--budget", type=float, default=BUDGET, help="seconds for the whole run")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--tests", default="tests", help="test paths of the part 'tests'")
    ap.add_argument("--kernels", default="", help="comma-separated kernels of the parts 'kernels' and 'carried' "
                                                  "(default: all)")
    ap.add_argument("--part", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=float, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    if args.part:                                         # one part, in the process run_part started
        result = PART_FUNCTIONS[args.part](rehearse=args.rehearse, outdir=outdir, timeout=args.timeout,
                                           repeats=args.repeats, tests=args.tests, kernels=args.kernels)
        (outdir / f"part-{args.part}.json").write_text(json.dumps(_finite(result), default=str, allow_nan=False))
        return
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"unknown part(s) {', '.join(unknown)}; the parts are {', '.join(PARTS)}")
    os.environ.setdefault("PYTHONPATH", ".")
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")   # JAX would take 75 % of the GPU's memory
    t0, report = time.perf_counter(), {"schema": "refimpl.gpu_check/1", "mode": "rehearsal" if args.rehearse
                                       else "device", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                       "shape": _shape(args.rehearse), "dtype": DTYPE,
                                       "chunk": 8 if args.rehearse else CHUNK, "budget_s": args.budget, "parts": {}}
    with (outdir / "gpu_check.log").open("w") as log:
        for name in parts:
            left = args.budget - (time.perf_counter() - t0)
            if left < 5:
                report["parts"][name] = {"status": "skipped", "error": "no time left of the budget", "wall_s": 0,
                                         "timeout_s": 0}
                continue
            timeout = min(TIMEOUTS[name], left)
            print(f"== part {name} (timeout {timeout:.0f} s)", file=log, flush=True)
            report["parts"][name] = run_part(name, args, outdir, timeout, log)
            status = report["parts"][name]["status"]
            print(f"part {name}: {status} in {report['parts'][name]['wall_s']:.1f} s", flush=True)
    rows = outdir / "kernels.rows.jsonl"
    if "kernels" in report["parts"] and rows.exists():
        result = report["parts"]["kernels"].setdefault("result", {})
        result["rows"] = [json.loads(line) for line in rows.read_text().splitlines() if line.strip()]
    probe = (report["parts"].get("probe", {}).get("result") or {})
    report["device"] = probe.get("device", {"name": None})
    if args.rehearse:
        report["note"] = ("rehearsal: the CuPy kernels ran on the CPU emulation and the peers on the CPU, at tiny "
                          "shapes; the values test the script, not the backend's speed")
    report["versions"] = probe.get("versions", {})
    report["goals"] = goal_rows(report["parts"])
    report["wall_s"] = time.perf_counter() - t0
    report["summary"] = summary(report)
    text = json.dumps(_finite(report), indent=1, default=str, allow_nan=False)
    (outdir / "gpu_check.json").write_text(text)
    if args.rehearse:
        print(report["note"])
    for g in report["goals"]:
        value = "—" if g["value"] is None else f"{g['value']:.3g}"
        verdict = {True: "met", False: "MISSED", None: "not measured"}[g["met"]]
        print(f"{g['id']:<30} {'≤' if g['better'] == 'lower' else '≥'} {g['target']:<4} {value:>8}  {verdict}"
              + (f"  ({g['reason']})" if g.get("reason") else ""))
    print(f"summary: {json.dumps(report['summary'])}")
    print(f"wrote {outdir / 'gpu_check.json'} and {outdir / 'gpu_check.log'}")


if __name__ == "__main__":
    main()
