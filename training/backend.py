"""Where jobs run: a local process pool, or Ray tasks on a cluster (``--ray [ADDRESS]``).

Every grid in the project (evaluation, tuning, the comparisons inside training) is a list of
independent seeded simulations, so it can run anywhere and give the same numbers: results come
back in job order whichever backend ran them.

    with Backend(workers=2) as backend:           # 2 spawned processes on this machine
        rows = backend.map(execute, jobs)
    rows = map_jobs(execute, jobs, ray="auto")    # Ray tasks on the cluster `ray start` made

Which backend runs: an explicit ``ray`` address, else the process default a CLI's ``--ray``
set (:func:`use_ray`), else ``RAY_ADDRESS``, else the pool. Ray is an optional extra, imported
only when asked for; a missing install or an unreachable address is one :class:`BackendError`
line that names the fix. Ray tasks that die (a killed worker, a lost node) are retried
``max_retries`` times; an exception raised by the job itself is not retried, it is the answer.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Any, Callable, Iterator, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

RAY_EXTRA = 'pip install -e ".[ray]"'
#: Ray retries a task whose worker died this many times before the grid fails.
MAX_RETRIES = 3
#: Tries at starting (or joining) Ray when it times out, as a new node can on a loaded host.
START_ATTEMPTS = 3
#: The packages a Ray worker must import from this checkout (shipped with the job, so a
#: cluster runs the driver's code, not whatever version its nodes have installed).
PACKAGES = ("runtime", "controllers", "policy_env", "training")


class BackendError(ValueError):
    """Ray is missing or unreachable; one line that names the fix."""


_default_ray: str | bool | None = None


def use_ray(address: str | bool | None) -> str | bool | None:
    """Set this process's default backend: an address (``""``: Ray's own choice), ``False``
    (always the pool, e.g. inside a Ray trial), or ``None`` (follow ``RAY_ADDRESS``).
    Returns the previous default, to restore."""
    global _default_ray
    previous, _default_ray = _default_ray, address
    return previous


def resolve_ray(ray: str | None = None) -> str | None:
    """The Ray address to run on (``""``: Ray's default), or None for the local pool."""
    if ray is not None:
        return ray
    if _default_ray is False:
        return None
    if isinstance(_default_ray, str):
        return _default_ray
    return os.environ.get("RAY_ADDRESS") or None


def ray_module() -> Any:
    """``import ray``, or a one-line error naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise BackendError(f"Ray is not installed; install the extra: {RAY_EXTRA}") from None
    return ray


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on an address nothing listens at (``ray.init`` would retry for minutes)."""
    if address in ("", "auto", "local"):
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise BackendError(f"Ray address {address!r} is not HOST:PORT, ray://HOST:PORT, 'auto' or 'local' "
                           "(the address `ray start --head` prints)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise BackendError(f"cannot reach a Ray cluster at {address!r} ({e.strerror or e}); start one with "
                           "`ray start --head` and pass the address it prints, or --ray alone for a local instance") from None


def connect(address: str = "", **init_kwargs: Any) -> Any:
    """Join (or start) Ray once per process and return the ``ray`` module.

    ``address`` is what ``ray.init`` takes (``""``: ``RAY_ADDRESS``, else the cluster ``ray
    start`` made on this machine, else a new local instance; ``"auto"``: an existing cluster
    only; ``"local"``: always a new local instance). ``init_kwargs`` go to ``ray.init`` (e.g.
    ``num_cpus`` for a local instance). An already initialised Ray is reused as it is.
    """
    ray = ray_module()
    if ray.is_initialized():
        return ray
    _check_reachable(address)
    import importlib

    modules = [importlib.import_module(p) for p in PACKAGES]
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            ray.init(address=address or None, runtime_env={"py_modules": modules}, include_dashboard=False,
                     logging_level="WARNING", **init_kwargs)
            return ray
        except Exception as e:  # ConnectionError, ValueError, RuntimeError...: one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            ray.shutdown()  # a half-started node leaves processes and a session behind
            if "timed out" in first.lower() and attempt < START_ATTEMPTS:
                # Ray waits a fixed 30 s for its raylet and GCS; a busy 2-core host can exceed that.
                print(f"Ray start-up timed out ({first}); retrying ({attempt + 1}/{START_ATTEMPTS})",
                      file=sys.stderr, flush=True)
                continue
            raise BackendError(f"cannot connect to Ray at {address or 'the default address'!r}: {first} "
                               "(start a cluster with `ray start --head`, or pass --ray alone for a local instance)") from None
    raise AssertionError("unreachable")


class Backend:
    """Maps a function over jobs in a local process pool or as Ray tasks; results in job order.

    ``workers`` spawned processes (1: in this process; spawn, not fork, because forking a
    process that holds torch or Ray threads can deadlock). ``ray``: see :func:`resolve_ray`.
    Use as a context manager so the pool is reused across calls and closed at the end.
    """

    def __init__(self, workers: int = 2, ray: str | None = None, max_retries: int = MAX_RETRIES) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.address = resolve_ray(ray)
        self.max_retries = max_retries
        self._pool: ProcessPoolExecutor | None = None
        if self.address is not None:
            connect(self.address)

    @property
    def name(self) -> str:
        """For logs and MLflow: ``pool:<workers>`` or ``ray:<address>``."""
        return f"pool:{self.workers}" if self.address is None else f"ray:{self.address or 'default'}"

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def terminate(self) -> None:
        """Stop the pool's workers now, jobs in progress included (``close`` waits for them)."""
        if self._pool is not None:
            workers = list((getattr(self._pool, "_processes", None) or {}).values())  # no public handle before 3.14
            self._pool.shutdown(wait=False, cancel_futures=True)
            for w in workers:
                w.terminate()
            for w in workers:
                w.join(timeout=5)
            self._pool = None

    def map(self, fn: Callable[[T], R], jobs: Sequence[T], desc: str = "jobs", unit: str = "job",
            progress: bool = True, leave: bool = True) -> list[R]:
        """``[fn(job) for job in jobs]``, run in parallel, with a progress bar (rate and ETA)."""
        bar = progress_bar(len(jobs), desc, unit, leave, progress)
        try:
            if self.address is not None:
                return self._map_ray(fn, jobs, bar)
            if self.workers == 1 or len(jobs) <= 1:
                out = []
                for job in jobs:
                    out.append(fn(job))
                    bar.update()
                return out
            if self._pool is None:
                self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"))
            futures = {self._pool.submit(fn, job): i for i, job in enumerate(jobs)}
            results: list[Any] = [None] * len(jobs)
            try:
                with _sigterm_exits():
                    for f in as_completed(futures):
                        results[futures[f]] = f.result()
                        bar.update()
            except BaseException as e:
                for f in futures:
                    f.cancel()
                if isinstance(e, SystemExit):  # terminated: stop the workers too
                    self.terminate()
                raise
            return results
        finally:
            bar.close()

    def _map_ray(self, fn: Callable[[T], R], jobs: Sequence[T], bar: Any) -> list[R]:
        ray = ray_module()
        task = ray.remote(max_retries=self.max_retries)(fn)
        refs = [task.remote(job) for job in jobs]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(jobs)
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    try:
                        results[index[ref]] = ray.get(ref)
                    except ray.exceptions.RayTaskError as e:  # the job raised: re-raise its own error
                        cause = getattr(e, "cause", None)
                        raise (cause if isinstance(cause, BaseException) else e) from None
                    except ray.exceptions.RayError as e:  # retries used up (workers kept dying)
                        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                        raise BackendError(f"a Ray task failed after {self.max_retries} retries: {first}") from None
                    bar.update()
        except BaseException:
            for ref in pending:
                ray.cancel(ref)
            raise
        return results


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """While a pool runs: SIGTERM (``kill``, a job scheduler) raises SystemExit in the main
    thread, so the pool shuts down and its workers exit. By default SIGTERM kills this process
    alone, and the spawned workers live on, orphaned. A handler someone else set stays."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def progress_bar(total: int, desc: str, unit: str, leave: bool = False, show: bool = True) -> Any:
    """``training.common.progress`` (an ETA, and a line every 30 s in logs), or a silent bar."""
    from tqdm import tqdm

    from training.common import progress

    return progress(total=total, desc=desc, unit=unit, leave=leave) if show else tqdm(total=total, disable=True)


def map_jobs(fn: Callable[[T], R], jobs: Sequence[T], workers: int = 2, ray: str | None = None,
             desc: str = "jobs", unit: str = "job", progress: bool = True, leave: bool = True) -> list[R]:
    """One-shot :meth:`Backend.map`: ``[fn(job) for job in jobs]`` on the pool or on Ray."""
    with Backend(workers, ray) as backend:
        return backend.map(fn, jobs, desc=desc, unit=unit, progress=progress, leave=leave)


def add_ray_flag(parser: Any) -> None:
    """``--ray [ADDRESS]`` on a CLI: run the jobs as Ray tasks (see :func:`connect`)."""
    parser.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                        help="run the jobs as Ray tasks: on the cluster at ADDRESS (e.g. auto, HOST:6379, ray://HOST:10001, "
                        "local), or with no ADDRESS on RAY_ADDRESS, else the cluster `ray start` made here, else a new "
                        f"local instance (default: RAY_ADDRESS if set, else a local process pool; needs {RAY_EXTRA})")
