"""The Prefect-on-Dask executor, and one Prefect API for the driver and its Dask workers.

:class:`PrefectDask` runs a body of the run layer (:mod:`insilico_trials.run.executor`) as a
Prefect flow whose submissions are Prefect tasks on a Dask cluster.

With no ``PREFECT_API_URL`` configured, Prefect starts an ephemeral API server in the process
that first needs one. A Dask worker process does not inherit the driver's in-process settings,
so each LocalCluster worker started its own ephemeral server (~10-20 s of CPU each on this
machine, before its first task) and recorded its task runs there. :func:`shared_prefect_api`
starts the ephemeral server once in the driver and exports its URL in the environment, which
worker processes inherit; with a configured API (a server, or the test harness) it only
exports that URL.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "PrefectDask",
    "RunCache",
    "api_and_cluster",
    "quiet_prefect",
    "reach_dask_scheduler",
    "reach_prefect_api",
    "shared_prefect_api",
]

T = TypeVar("T")


@contextlib.contextmanager
def shared_prefect_api() -> Iterator[str]:
    """The API URL the flow and its workers use, for the duration of the block.

    An ephemeral server started here runs in its own session (:func:`_ephemeral_server`): a
    Ctrl-C in the terminal reaches this process, which stops the flow and then the server,
    instead of stopping the server under a flow that still reports to it. Enter the block in
    the main thread (the server is tied to the thread that starts it)."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    url = get_current_settings().api.url
    server = None
    if not url:
        server = _ephemeral_server()
        try:
            server.start()
        except BaseException:  # Ctrl-C while it starts: it is ours to stop
            server.stop()
            raise
        url = server.api_url
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url  # LocalCluster workers are spawned with this
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        if server is not None:
            server.stop()


def _ephemeral_server() -> Any:
    """Prefect's ephemeral API server (a uvicorn subprocess), started in a session of its own.

    In this process's group it received the terminal's SIGINT together with this process and
    could stop before the flow engine had reported its last state (an httpx ConnectError and a
    traceback instead of the interrupted run's one-line message). In its own session only
    :func:`shared_prefect_api` stops it; so that it cannot outlive this process either (a
    SIGKILL, a crash), Linux kills it when the thread that started it ends
    (``PR_SET_PDEATHSIG``).
    """
    import subprocess
    import types

    import prefect.server.api.server as server_module
    from prefect.server.api.server import SubprocessASGIServer

    # Prefect keeps one server per port: a thread of the flow that finds no API in its own
    # settings context asks for SubprocessASGIServer() and is given this one, already running.
    class EphemeralServer(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            # Prefect builds the command and calls subprocess.Popen from its module: give that
            # module, for this call only, a Popen that starts the server in its own session.
            popen = functools.partial(
                subprocess.Popen, start_new_session=True, preexec_fn=_die_with_parent()
            )
            with _POPEN_LOCK:
                original = server_module.subprocess
                server_module.subprocess = types.SimpleNamespace(Popen=popen)  # type: ignore[assignment]
                try:
                    return super()._run_uvicorn_command()
                finally:
                    server_module.subprocess = original

    return EphemeralServer()


_POPEN_LOCK = threading.Lock()


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has Linux SIGKILL the child when the thread that started it ends;
    None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import signal

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent ended before the call took effect
            os._exit(1)

    return preexec


def _import_modules(names: tuple[str, ...]) -> None:
    import importlib

    for name in names:
        importlib.import_module(name)


def _ignore_sigint() -> None:
    """In a LocalCluster worker process: a Ctrl-C in the terminal reaches the worker processes
    too (the terminal signals the whole process group). The driver stops the run and closes
    the cluster; a worker that stopped on its own would print a KeyboardInterrupt traceback
    (and an idle one does). Runs in the worker's event loop, its main thread."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _set_environment(name: str, value: str) -> None:
    os.environ[name] = value


@contextlib.contextmanager
def api_and_cluster(
    *, workers: int | None, dask_address: str | None, warm: tuple[str, ...] = ()
) -> Iterator[Any]:
    """A ``DaskTaskRunner`` for the block, on a shared Prefect API (:func:`shared_prefect_api`).

    With ``dask_address`` the runner connects to that scheduler. Otherwise a LocalCluster of
    ``workers`` processes (default: CPUs) is started in a thread *while* the Prefect API starts,
    and its workers import the ``warm`` modules meanwhile, so neither waits for the other;
    the API URL is then set in the workers' environment before their first task (they have
    not imported Prefect yet; their nanny respawns a lost worker with the driver's
    environment, which carries the URL by then). The cluster is closed after the block.
    """
    from prefect_dask import DaskTaskRunner

    if dask_address:
        with shared_prefect_api():
            yield DaskTaskRunner(address=dask_address)
        return

    from concurrent.futures import ThreadPoolExecutor

    n = workers or max(1, os.cpu_count() or 1)

    def start() -> tuple[Any, Any]:
        from distributed import Client, LocalCluster

        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # a free port: a fixed 8787 clashes between clusters
        )
        client = Client(cluster)
        try:
            client.run(_ignore_sigint)
            if warm:
                client.run(_import_modules, warm)
        except BaseException:
            client.close()
            cluster.close()
            raise
        return cluster, client

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="insilico-cluster") as pool:
        starting = pool.submit(start)
        started: tuple[Any, Any] | None = None
        closed = False

        def close() -> None:
            # Closing a cluster (at the end, or after Ctrl-C) is routine: its workers' last
            # words ("still alive ... killing", cancelled tasks, and on a busy machine a
            # heartbeat to the closed scheduler, logged as an ERROR with its traceback) are
            # not the user's concern.
            nonlocal closed, started
            closed = True
            _silence("distributed.nanny", "distributed.scheduler", "distributed.worker",
                     "distributed.worker.state_machine", "distributed.core")  # fmt: skip
            if started is None:  # the API did not start: close the cluster if it did
                with contextlib.suppress(BaseException):  # a failed start closed its part
                    started = starting.result()
            if started is not None:
                started[1].close()
                started[0].close()

        try:
            with shared_prefect_api() as url:
                try:
                    started = starting.result()
                    started[1].run(_set_environment, "PREFECT_API_URL", url)
                    yield DaskTaskRunner(address=started[0].scheduler_address)
                finally:
                    close()  # while the API is up: no worker reports to a stopped server
        finally:
            if not closed:  # the API did not start
                close()


def _silence(*names: str) -> None:
    import logging

    for name in names:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


@dataclass(frozen=True)
class RunCache:
    """Where a run keeps its stage results, and whether it may take them from there.

    Every stage result is persisted under ``root/tag`` with the key the run layer gives it
    (``cohort-<arm>``, ``chunk-<arm>-<first>-<last>``, ``fit``, ``sobol-<arm>-<start>``);
    ``tag`` hashes the protocol and the code, so a changed protocol or a changed program never
    reuses a result. A normal run refreshes the entries; ``--resume`` takes finished ones.
    """

    root: str
    tag: str
    resume: bool = False

    @property
    def folder(self) -> Path:
        return Path(self.root) / self.tag

    def options(self, key: str) -> dict[str, Any]:
        from prefect.cache_policies import CacheKeyFnPolicy

        return {
            "cache_policy": CacheKeyFnPolicy(cache_key_fn=functools.partial(_fixed_key, key)),
            "persist_result": True,
            "result_storage": self.folder,
            "refresh_cache": not self.resume,
        }


def _fixed_key(key: str, context: Any, parameters: dict[str, Any]) -> str:
    return key


def _call(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    return fn(*args)


class _PrefectFuture:
    def __init__(self, future: Any) -> None:
        self.future = future

    def result(self) -> Any:
        return self.future.result()

    @property
    def cached(self) -> bool:
        return self.future.state.name == "Cached"


class _PrefectSession:
    def __init__(self, run_id: str, cache: RunCache | None) -> None:
        self.run_id = run_id
        self.cache = cache

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, key: str, label: str, retries: int = 0
    ) -> _PrefectFuture:
        from prefect import task
        from prefect.cache_policies import NO_CACHE

        # Inputs are protocols and DataFrames: hashing them for Prefect's default cache key
        # costs time and buys nothing, so caching is off unless the run keys it explicitly.
        options: dict[str, Any] = {"name": label, "retries": retries, "cache_policy": NO_CACHE}
        if self.cache is not None:
            options.update(self.cache.options(key))
        return _PrefectFuture(task(_call, **options).submit(fn, args))

    def as_completed(self, futures: Iterable[_PrefectFuture]) -> Iterator[_PrefectFuture]:
        from prefect.futures import as_completed

        by_future = {id(f.future): f for f in futures}
        for done in as_completed([f.future for f in by_future.values()]):
            yield by_future[id(done)]


@dataclass(frozen=True)
class PrefectDask:
    """The executor of the orchestrated runs: the body is a Prefect flow, each submission a
    Prefect task on Dask (a LocalCluster of ``workers`` processes, or the scheduler at
    ``dask_address``), on one shared Prefect API. With ``cache``, stage results are persisted
    under their keys (and reused with ``cache.resume``). ``in_process`` runs the tasks in this
    process on Prefect's default task runner, without Dask (a single small task)."""

    workers: int | None = None
    dask_address: str | None = None
    cache: RunCache | None = None
    in_process: bool = False

    def run(self, name: str, body: Callable[[Any], T], *, warm: tuple[str, ...] = ()) -> T:
        quiet_prefect()
        from prefect import flow

        cache = self.cache

        def orchestrated() -> T:
            from prefect.runtime import flow_run

            return body(_PrefectSession(str(flow_run.id), cache))

        if self.in_process:
            return _interruptible(
                flow(
                    orchestrated, name=name, log_prints=False, persist_result=False,
                    validate_parameters=False,
                )
            )  # fmt: skip
        with api_and_cluster(
            workers=self.workers, dask_address=self.dask_address, warm=warm
        ) as runner:
            orchestrated_flow = flow(
                orchestrated,
                name=name,
                log_prints=False,
                persist_result=False,
                validate_parameters=False,
                task_runner=runner,
            )
            return _interruptible(orchestrated_flow)


def _interruptible[T](fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread and wait in this one, so that Ctrl-C (KeyboardInterrupt, raised
    in the main thread) reaches the caller at once: the cluster and then the API are closed by
    the ``with`` blocks around the call, instead of the flow engine waiting on work that the
    same Ctrl-C has stopped (which held the process for minutes)."""
    import threading

    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    thread = threading.Thread(target=target, name="insilico-flow", daemon=True)
    thread.start()
    from insilico_trials.adapters import interrupts

    try:
        while thread.is_alive():
            thread.join(0.2)
            # A Ctrl-C whose KeyboardInterrupt was caught on its way (library code in this
            # thread that catches BaseException) still stops the run here.
            if interrupts.seen():
                raise KeyboardInterrupt
        if interrupts.seen():  # the flow ended in the same moment: its result is not used
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        # The flow thread is abandoned (a daemon) and fails as its cluster and API close
        # under it: its engine's reports of that are not the user's concern.
        _silence_prefect()
        raise
    if "error" in box:
        raise box["error"]
    return box["value"]


def _silence_prefect() -> None:
    import logging

    names = [
        name
        for name in list(logging.root.manager.loggerDict)
        if name == "prefect" or name.startswith("prefect.")
    ]
    _silence("prefect", "asyncio", *names)


def quiet_prefect() -> None:
    """Our own progress lines are the user's view; Prefect's and Dask's INFO logs would drown
    them. Set before Prefect is imported (the variables reach the worker processes too)."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The ephemeral API takes ~25 s to start on a loaded 2-core machine; Prefect's default
    # wait is 20 s.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    import logging

    logging.getLogger("distributed").setLevel(logging.WARNING)


def reach_dask_scheduler(address: str, *, timeout_s: float = 10.0) -> str | None:
    """Whether a Dask scheduler answers at ``address`` (``tcp://host:port``); None when it
    does, else why not. A plain connection, so a wrong address fails in seconds, not after
    the client's own minute of retries. Raises ValueError for an address of another form."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme not in ("tcp", "tls") or not parts.hostname or not parts.port:
        raise ValueError(f"--dask-address {address!r}: expected tcp://HOST:PORT")
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout_s):
            return None
    except OSError as exc:
        return (
            f"the Dask scheduler at {address} cannot be reached ({exc.strerror or exc}); nothing "
            "was run. Start it, or leave out --dask-address to use a LocalCluster."
        )


def reach_prefect_api(*, timeout_s: float = 10.0) -> str | None:
    """When ``PREFECT_API_URL`` names a server, check it answers before any work starts.

    Without the variable the embedded ephemeral API is used and there is nothing to check.
    Returns None when fine, else why the server cannot be reached.
    """
    import urllib.error
    import urllib.request

    url = os.environ.get("PREFECT_API_URL", "").rstrip("/")
    if not url:
        return None
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout_s) as response:
            if response.status == 200:
                return None
            reason = f"HTTP {response.status}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = str(getattr(exc, "reason", exc))
    return (
        f"the Prefect API at PREFECT_API_URL={url} cannot be reached ({reason}); nothing "
        "was run. Start that server, or unset PREFECT_API_URL to use the embedded ephemeral API."
    )
