"""Where a sweep's trials run: in this process, on an embedded Dask LocalCluster, or on an existing Dask cluster.

    open_executor(scheduler=None, workers=None) -> Executor     (a context manager)
    executor.run(fn, jobs, on_done)                              runs fn(*args) for every (key, args) job

The three places (`scheduler`):
    "inline"            the trials one after another in this process (no Dask; debugging, tests)
    None / "local"      an embedded dask.distributed LocalCluster: `workers` processes (default: the cores this
                        process may use), one thread each. Each worker process starts with OMP_NUM_THREADS,
                        OPENBLAS_NUM_THREADS, MKL_NUM_THREADS and NUMBA_NUM_THREADS = 1, set before it imports NumPy
                        (dask's `distributed.nanny.pre-spawn-environ`): the trials are the parallelism, and a
                        one-thread BLAS gives the same numbers on every worker.
    "tcp://HOST:PORT"   an existing cluster's scheduler (`dask scheduler` + `dask worker`, or dask-jobqueue; see
                        docs/sweeps.md). The trials' run directories must be on a filesystem every worker sees.

Faults. A trial is one Dask task named after the trial (its key), so a trial is never run twice at once by one
sweep. When a worker dies mid-trial, the scheduler runs the task again on another worker (up to
`distributed.scheduler.allowed-failures` times); the trial then continues from its last checkpoint, so the sweep
ends with the numbers of an undisturbed one (refimpl/training/sweep.py run_trial). A scheduler that cannot be reached
is refused within CONNECT_TIMEOUT_S seconds, before anything is written.

Dask is imported here only, and only when a cluster is used: the library and the inline executor run without it.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..errors import UnsupportedError

#: Seconds to wait for an existing scheduler to answer before refusing the address.
CONNECT_TIMEOUT_S = 5
#: Seconds without a finished trial after which the progress line is shown again.
TICK_S = 30
#: One thread per worker for every threaded numerical library a trial may load (set before the worker starts).
WORKER_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


def default_workers() -> int:
    """The cores this process may run on (its CPU affinity where the OS says it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                                   # macOS, Windows
        return os.cpu_count() or 1


@dataclass
class Progress:
    """What the progress line shows: trials done / running / failed out of `total`, and an ETA."""
    total: int
    done: int = 0
    failed: int = 0
    running: int = 0
    t0: float = field(default_factory=time.perf_counter)

    def line(self) -> str:
        finished = self.done + self.failed
        left = self.total - finished
        elapsed = time.perf_counter() - self.t0
        eta = "—" if not finished else _clock(elapsed / finished * left)
        return (f"{finished}/{self.total} done ({self.failed} failed), {self.running} running, "
                f"elapsed {_clock(elapsed)}, ETA {eta}")


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Executor:
    """Runs jobs (key, args) as fn(*args); `describe` says where, `dashboard` is the Dask dashboard's address (None
    when none runs)."""

    def __init__(self, client=None, describe: str = "inline (this process)", dashboard: str | None = None,
                 slots: int = 1):
        self.client, self.describe, self.dashboard, self.slots = client, describe, dashboard, slots

    def run(self, fn, jobs: list, on_done, on_tick=None) -> None:
        """Run every job; on_done(key, result, error, progress) is called in this process as each one ends (error:
        the exception a job raised, else None), and on_tick(progress) every TICK_S seconds in which none ended."""
        progress = Progress(len(jobs))
        if self.client is None:
            for key, args in jobs:
                progress.running = 1
                try:
                    result, error = fn(*args), None
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as e:                        # noqa: BLE001 — reported per trial, the sweep goes on
                    result, error = None, e
                progress.running = 0
                progress.done += error is None
                progress.failed += error is not None
                on_done(key, result, error, progress)
            return
        from distributed import TimeoutError as DaskTimeout, wait

        futures = {self.client.submit(fn, *args, key=key, pure=False, retries=0): key for key, args in jobs}
        pending = set(futures)
        while pending:
            try:
                finished, pending = wait(pending, timeout=TICK_S, return_when="FIRST_COMPLETED")
            except (DaskTimeout, TimeoutError):               # nothing ended for a while: say where it stands
                progress.running = self._running(futures)
                if on_tick is not None:
                    on_tick(progress)
                continue
            for future in finished:
                try:
                    result, error = future.result(), None
                except Exception as e:                        # noqa: BLE001 — a task that raised, or a lost one
                    result, error = None, e
                progress.done += error is None
                progress.failed += error is not None
                progress.running = min(len(pending), self.slots)
                on_done(futures[future], result, error, progress)

    def _running(self, futures: dict) -> int:
        """How many of these tasks the scheduler has on a worker now."""
        keys = set(futures.values())
        return sum(k in keys for ks in self.client.processing().values() for k in ks)


def check_address(scheduler: str | None) -> str:
    """"inline", "local" or a scheduler address "tcp://HOST:PORT" (also tls://, or HOST:PORT meaning tcp)."""
    if scheduler in (None, "", "local"):
        return "local"
    if scheduler == "inline":
        return "inline"
    address = scheduler if "://" in scheduler else f"tcp://{scheduler}"
    proto, rest = address.split("://", 1)
    host, _, port = rest.rpartition(":")
    if proto not in ("tcp", "tls") or not host or not port.isdigit():
        raise UnsupportedError(f"--scheduler {scheduler!r} is not a scheduler address; give tcp://HOST:PORT (the "
                               f"address `dask scheduler` prints, e.g. tcp://10.0.0.5:8786), 'local' (an embedded "
                               f"local cluster, the default) or 'inline' (this process, no Dask)")
    return address


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise UnsupportedError("running a sweep on a Dask cluster needs dask.distributed, which is not installed; "
                               "pip install 'dask[distributed]' (or refimpl[sweep]), or run with --scheduler inline"
                               ) from None
    return distributed


def _dashboard_available() -> bool:
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def open_executor(scheduler: str | None = None, workers: int | None = None):
    """The executor for `scheduler` (see the module doc); a local cluster is shut down on exit, an existing
    cluster only disconnected from."""
    where = check_address(scheduler)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise UnsupportedError(f"workers must be a positive integer, got {workers!r}; e.g. --workers 2")
    if where == "inline":
        yield Executor()
        return
    distributed = _import_distributed()
    import dask

    if where == "local":
        n = workers or default_workers()
        env = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **WORKER_ENV}
        dashboard = ":0" if _dashboard_available() else None
        saved = {k: os.environ.get(k) for k in env}     # the nannies set them here before spawning: put them back
        try:
            with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
                cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                                   dashboard_address=dashboard, host="127.0.0.1")
            try:
                with distributed.Client(cluster) as client:
                    link = client.dashboard_link if dashboard else None
                    yield Executor(client, f"a local Dask cluster: {n} worker process(es), 1 thread each", link, n)
            finally:
                cluster.close()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return
    if workers is not None:
        raise UnsupportedError("--workers sizes the local cluster only; an existing cluster has the workers it was "
                               "started with (drop --workers, or drop --scheduler to run locally)")
    try:
        client = distributed.Client(where, timeout=f"{CONNECT_TIMEOUT_S}s")
    except (OSError, TimeoutError) as e:
        raise UnsupportedError(f"cannot reach a Dask scheduler at {where} within {CONNECT_TIMEOUT_S} s "
                               f"({type(e).__name__}); start one there (`dask scheduler`, then `dask worker {where}` "
                               f"on each machine; docs/sweeps.md) or drop --scheduler to run on a local cluster"
                               ) from None
    try:
        info = client.scheduler_info()
        n = sum(w.get("nthreads", 1) for w in info.get("workers", {}).values())
        link = client.dashboard_link if "dashboard" in info.get("services", {}) else None
        yield Executor(client, f"the Dask cluster at {where}: {len(info.get('workers', {}))} worker(s), "
                               f"{n} thread(s)", link, max(n, 1))
    finally:
        client.close()
