"""The Prefect-on-Dask executor, and one Prefect API for the driver and its Dask workers.

:class:`PrefectDask` runs a body of the run layer (:mod:`insilico_trials.run.executor`) as a
Prefect flow whose submissions are Prefect tasks on a Dask cluster.

With no ``PREFECT_API_URL`` configured, a command that runs flows starts the embedded API
server (:class:`EmbeddedApi`, the command of Prefect's ephemeral server) as its first step and
exports its URL in the environment, which the LocalCluster worker processes inherit (without
it each worker would start an ephemeral server of its own, ~10-20 s of CPU each); the flow
waits for the server only when it starts (:func:`shared_prefect_api`). With a configured API
(a server, the warm services, or the test harness) it only exports that URL.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from insilico_trials.run.executor import MODEL_WARM

__all__ = [
    "EmbeddedApi",
    "PrefectDask",
    "RunCache",
    "api_and_cluster",
    "embedded_services",
    "quiet_prefect",
    "reach_dask_scheduler",
    "reach_prefect_api",
    "services_starting",
    "shared_prefect_api",
]

T = TypeVar("T")


@contextlib.contextmanager
def shared_prefect_api() -> Iterator[str]:
    """The API URL the flow and its workers use, for the duration of the block.

    Inside :func:`embedded_services` the server it started is waited for here (it has been
    starting meanwhile); with no API configured at all one is started here for the block.
    Enter the block in the main thread."""
    url = os.environ.get("PREFECT_API_URL", "")
    server = None
    early = _EMBEDDED.api if _EMBEDDED is not None else None
    if early is not None and url == early.api_url:
        early.wait_ready()
    elif not url:
        from prefect.settings import get_current_settings

        url = get_current_settings().api.url or ""
        if not url:
            server = EmbeddedApi(_default_prefect_home())
            try:
                server.start()
                server.wait_ready()
            except BaseException:  # Ctrl-C while it starts: it is ours to stop
                server.stop()
                raise
            url = server.api_url
    from prefect.settings import PREFECT_API_URL, temporary_settings

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


def _configured_api_url() -> str:
    """``PREFECT_API_URL`` from the environment, from Prefect's settings when Prefect is
    already loaded (a test harness, a library caller), else from the active Prefect profile;
    empty when none is configured.

    Prefect itself is not imported here: its settings would then be read before the embedded
    server's URL is exported, and a flow thread would not see that URL."""
    url = os.environ.get("PREFECT_API_URL", "")
    if url:
        return url
    if "prefect.settings" in sys.modules:
        from prefect.settings import get_current_settings

        return get_current_settings().api.url or ""
    import tomllib

    home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH", home / "profiles.toml")).expanduser()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    active = os.environ.get("PREFECT_PROFILE") or data.get("active") or ""
    profile = data.get("profiles", {}).get(active, {})
    return str(profile.get("PREFECT_API_URL", "") or "")


def _default_prefect_home() -> Path:
    return Path.cwd() / ".insilico" / "prefect"


class EmbeddedApi:
    """Prefect's API server (uvicorn on 127.0.0.1, a free port) started as a child process,
    with its database under ``home`` (``.insilico/prefect/prefect.db``: kept between runs, so
    only the first run of a checkout creates and migrates it).

    This is the command Prefect's own ephemeral server runs, started without importing
    ``prefect.server`` here (5-6 s of imports the driver does not need) and *before* the
    driver's own imports, so the two start side by side. The server runs in a session of its
    own: the terminal's Ctrl-C reaches this process, which stops the flow, then the cluster,
    then the server (instead of the server stopping under a flow that still reports to it);
    so that it cannot outlive this process either (a SIGKILL, a crash), Linux kills it when
    the thread that started it ends (``PR_SET_PDEATHSIG``).
    """

    def __init__(self, home: Path) -> None:
        self.home = home
        self.log = home / "server.log"
        self.port = 0
        self.process: Any = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> None:
        import subprocess

        self.home.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        env = {
            **os.environ,
            "PREFECT_HOME": str(self.home),
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "WARNING",
        }
        env.pop("PREFECT_API_URL", None)
        if self._stamp() is not None and self._read_stamp() == self._stamp():
            # This Prefect version has brought this very database to its schema before: skip
            # the migration check (about 0.8 s of the server's start).
            env["PREFECT_API_DATABASE_MIGRATE_ON_START"] = "false"
        # Its messages go to a file (a pipe nobody reads could fill and stall it).
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "uvicorn", "--factory",
                    "prefect.server.api.server:create_app", "--host", "127.0.0.1",
                    "--port", str(self.port), "--log-level", "error", "--lifespan", "on",
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )  # fmt: skip

    def _stamp(self) -> str | None:
        """The installed Prefect version and the identity of the database file (device,
        inode: a replaced or restored file is another one); None without a database."""
        from importlib.metadata import version

        try:
            info = (self.home / "prefect.db").stat()
        except OSError:
            return None
        return f"prefect {version('prefect')}; database {info.st_dev}:{info.st_ino}"

    def _read_stamp(self) -> str | None:
        with contextlib.suppress(OSError):
            return (self.home / "migrated").read_text(encoding="utf-8")
        return None

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Wait until ``/health`` answers; a server that exits or does not answer in time is
        a :class:`ServiceFailure` naming its last error output."""
        import time
        import urllib.error
        import urllib.request

        timeout_s = timeout_s or float(
            os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
        )
        deadline = time.monotonic() + timeout_s
        while True:
            code = self.process.poll()
            if code is not None:
                raise _service_failure(
                    f"the embedded Prefect API exited with code {code} before answering",
                    self.log,
                )
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        # it has migrated the database on its start (or found it current)
                        stamp = self._stamp()
                        if stamp is not None:
                            with contextlib.suppress(OSError):
                                (self.home / "migrated").write_text(stamp, encoding="utf-8")
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise _service_failure(
                    f"the embedded Prefect API did not answer within {timeout_s:.0f} s", self.log
                )
            time.sleep(0.05)

    def stop(self) -> None:
        import subprocess

        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _service_failure(message: str, log: Path) -> Exception:
    from insilico_trials.errors import RunFailure

    tail = ""
    with contextlib.suppress(OSError, IndexError):
        tail = log.read_text(errors="replace").strip().splitlines()[-1]
    return RunFailure(
        message + (f" (its last message: {tail})" if tail else "") + f"; see {log}; "
        "nothing was written"
    )


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class _Embedded:
    api: EmbeddedApi | None
    cluster: _LocalCluster | None


_EMBEDDED: _Embedded | None = None


def services_starting() -> bool:
    """Whether an embedded Prefect API is starting for this command (its flows will wait)."""
    return _EMBEDDED is not None and _EMBEDDED.api is not None


@contextlib.contextmanager
def embedded_services(
    *,
    cluster: bool = False,
    workers: int | None = None,
    dask_address: str | None = None,
    warm: tuple[str, ...] = (),
    processes: bool = True,
) -> Iterator[None]:
    """For a command that will run flows: start what it needs and is not configured, now,
    while the command does its own preparation, and stop it at the end of the block.

    - the embedded Prefect API, when no ``PREFECT_API_URL`` is set (its URL is exported to
      this process and the workers it spawns);
    - with ``cluster``, unless ``dask_address`` names one, a LocalCluster of ``workers``
      importing the ``warm`` modules: worker processes, or with ``processes=False`` worker
      threads in this process (no second import of the libraries per worker: about 8 s of CPU
      each on the 2-core machine; the kernels release the interpreter lock).

    The flows wait for them only when they start (:func:`shared_prefect_api`,
    :func:`api_and_cluster`). At the end the cluster is closed first, then the API.
    """
    global _EMBEDDED
    if _EMBEDDED is not None:  # nested: the outer block owns the services
        yield
        return
    quiet_prefect()  # before the server and the workers are spawned: they inherit it
    api = None
    url = _configured_api_url()
    if not url:
        api = EmbeddedApi(_default_prefect_home())
        api.start()
        url = api.api_url
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url  # for the workers spawned below, before their imports
    local = None
    try:
        if cluster and not dask_address:
            local = _LocalCluster(workers, warm, processes=processes)
        _EMBEDDED = _Embedded(api, local)
        yield
    finally:
        _EMBEDDED = None
        try:
            if local is not None:
                local.close()
        finally:
            if previous is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = previous
            if api is not None:
                api.stop()


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


# The LocalCluster worker that loads the model libraries (MODEL_WARM) while the run starts,
# where ``model=True`` submissions go; None on a cluster we did not start.
_MODEL_WORKER: str | None = None


class _LocalCluster:
    """A LocalCluster being started in a thread (its workers import the ``warm`` modules as
    they come up), and closed quietly."""

    def __init__(
        self, workers: int | None, warm: tuple[str, ...], *, processes: bool = True
    ) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.n = workers or max(1, os.cpu_count() or 1)
        self.warm = warm
        self.processes = processes
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="insilico-cluster")
        self._starting = self._pool.submit(self._start)
        self._started: tuple[Any, Any] | None = None
        self.model_worker: str | None = None
        self._model_warm: Any = None

    def _start(self) -> tuple[Any, Any]:
        from distributed import Client, LocalCluster

        cluster = LocalCluster(
            n_workers=self.n,
            threads_per_worker=1,
            processes=self.processes,
            dashboard_address=":0",  # a free port: a fixed 8787 clashes between clusters
            # Threads share this process's memory: a per-worker share of it would pause them.
            **({} if self.processes else {"memory_limit": 0}),
        )
        client = Client(cluster)
        try:
            # LocalCluster returns once its workers have registered, but a worker can be lost
            # right after (its nanny starts a new one): wait for one rather than assume it.
            client.wait_for_workers(1, timeout=120)
            if self.processes:  # threads: the signal reaches only this process's main thread
                client.run(_ignore_sigint)
            if self.warm:
                client.run(_import_modules, self.warm)
            # One worker loads the model libraries meanwhile, as a task of its own (its other
            # work goes to the rest of the cluster until it is done); fits run there. Only a
            # preference: with no worker to name (all lost at this instant) fits go anywhere.
            live = sorted(client.scheduler_info()["workers"])
            if live:
                self.model_worker = live[0]
                self._model_warm = client.submit(
                    _import_modules, MODEL_WARM, workers=live[:1], allow_other_workers=True,
                    pure=False,
                )  # fmt: skip
        except BaseException:
            client.close()
            cluster.close()
            raise
        return cluster, client

    def ready(self, api_url: str) -> str:
        """Wait for the cluster; set the API URL in its workers' environment (they have not
        imported Prefect yet; their nanny respawns a lost worker with the driver's environment,
        which carries the URL by then). Returns the scheduler address."""
        global _MODEL_WORKER
        self._started = self._starting.result()
        self._started[1].run(_set_environment, "PREFECT_API_URL", api_url)
        _MODEL_WORKER = self.model_worker
        return str(self._started[0].scheduler_address)

    def close(self) -> None:
        # Closing a cluster (at the end, or after Ctrl-C) is routine: its workers' last words
        # ("still alive ... killing", cancelled tasks, and on a busy machine a heartbeat to the
        # closed scheduler, logged as an ERROR with its traceback) are not the user's concern.
        _silence("distributed.nanny", "distributed.scheduler", "distributed.worker",
                 "distributed.worker.state_machine", "distributed.core")  # fmt: skip
        global _MODEL_WORKER
        _MODEL_WORKER = None
        from insilico_trials.adapters import interrupts

        if not self.processes and interrupts.seen():
            # After Ctrl-C: a worker thread cannot be stopped, and closing the cluster would
            # wait for the task it runs; the command ends its process at once instead.
            self._pool.shutdown(wait=False)
            return
        started = self._started
        if started is None:  # not waited for: close it if it started
            with contextlib.suppress(BaseException):  # a failed start closed its part
                started = self._starting.result()
        if started is not None:
            started[1].close()
            started[0].close()
        self._pool.shutdown(wait=False)


@contextlib.contextmanager
def api_and_cluster(
    *, workers: int | None, dask_address: str | None, warm: tuple[str, ...] = ()
) -> Iterator[Any]:
    """A ``DaskTaskRunner`` for the block, on a shared Prefect API (:func:`shared_prefect_api`).

    With ``dask_address`` the runner connects to that scheduler. Inside
    :func:`embedded_services` with a cluster, the runner uses the LocalCluster started there
    (closed by that block). Otherwise a LocalCluster of ``workers`` processes (default: CPUs)
    is started in a thread *while* the Prefect API starts, its workers importing the ``warm``
    modules meanwhile, and is closed after the block, while the API is still up (no worker
    reports to a stopped server).
    """
    from prefect_dask import DaskTaskRunner

    if dask_address:
        with shared_prefect_api():
            yield DaskTaskRunner(address=dask_address)
        return
    early = _EMBEDDED.cluster if _EMBEDDED is not None else None
    if early is not None and early.n == (workers or max(1, os.cpu_count() or 1)):
        with shared_prefect_api() as url:
            yield DaskTaskRunner(address=early.ready(url))
        return
    cluster = _LocalCluster(workers, warm)
    try:
        with shared_prefect_api() as url:
            try:
                yield DaskTaskRunner(address=cluster.ready(url))
            finally:
                cluster.close()
    finally:
        cluster.close()  # the API did not start (a second close does nothing)


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
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        key: str,
        label: str,
        retries: int = 0,
        model: bool = False,
    ) -> _PrefectFuture:
        from prefect import task
        from prefect.cache_policies import NO_CACHE

        # Inputs are protocols and DataFrames: hashing them for Prefect's default cache key
        # costs time and buys nothing, so caching is off unless the run keys it explicitly.
        options: dict[str, Any] = {"name": label, "retries": retries, "cache_policy": NO_CACHE}
        if self.cache is not None:
            options.update(self.cache.options(key))
        submitted = task(_call, **options)
        if model and _MODEL_WORKER is not None:
            import dask

            # Where PyMC is already loaded; another worker may take it if that one is lost.
            with dask.annotate(workers=[_MODEL_WORKER], allow_other_workers=True):
                return _PrefectFuture(submitted.submit(fn, args))
        return _PrefectFuture(submitted.submit(fn, args))

    def as_completed(self, futures: Iterable[_PrefectFuture]) -> Iterator[_PrefectFuture]:
        from prefect.futures import as_completed

        by_future = {id(f.future): f for f in futures}
        for done in as_completed([f.future for f in by_future.values()]):
            yield by_future[id(done)]


@dataclass(frozen=True)
class PrefectDask:
    """The executor of the orchestrated runs: the body is a Prefect flow, each submission a
    Prefect task on Dask (a LocalCluster of ``workers`` workers, or the scheduler at
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
            with shared_prefect_api():
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

    import contextvars

    # The flow thread runs in this thread's context: Prefect's settings context (the API URL
    # set by shared_prefect_api) is a context variable, which a new thread does not inherit.
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(target,), name="insilico-flow", daemon=True)
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


def quiet_prefect(env: MutableMapping[str, str] | None = None) -> None:
    """Our own progress lines are the user's view; Prefect's and Dask's INFO logs would drown
    them. Set before Prefect is imported (the variables reach the worker processes too).
    With ``env``, only the variables' defaults are set there (what this process would have)."""
    target = os.environ if env is None else env
    target.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    target.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
    target.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The ephemeral API takes ~25 s to start on a loaded 2-core machine; Prefect's default
    # wait is 20 s.
    target.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    target.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    if env is not None:
        return
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
