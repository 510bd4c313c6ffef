"""One Prefect API for the driver and its Dask workers.

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
import os
from collections.abc import Iterator
from typing import Any

__all__ = ["api_and_cluster", "shared_prefect_api"]


@contextlib.contextmanager
def shared_prefect_api() -> Iterator[str]:
    """The API URL the flow and its workers use, for the duration of the block."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    url = get_current_settings().api.url
    server = None
    if not url:
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        server.start()
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


def _import_modules(names: tuple[str, ...]) -> None:
    import importlib

    for name in names:
        importlib.import_module(name)


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
        try:
            with shared_prefect_api() as url:
                started = starting.result()
                started[1].run(_set_environment, "PREFECT_API_URL", url)
                yield DaskTaskRunner(address=started[0].scheduler_address)
        finally:
            if started is None:  # the API did not start: close the cluster if it did
                with contextlib.suppress(BaseException):
                    started = starting.result()
            if started is not None:
                started[1].close()
                started[0].close()
