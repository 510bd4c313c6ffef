"""Warm services: the local Prefect server, Dask cluster and MLflow server kept running between
commands, for people who run many trials.

``insilico-trials services start`` starts one supervisor process in the background (its own
session, so a terminal's Ctrl-C does not reach it). The supervisor starts, on 127.0.0.1 only:

- the Prefect API server (the embedded server's command, database ``.insilico/prefect/``);
- a Dask LocalCluster (scheduler and ``workers`` worker processes, one thread each) whose
  workers import the simulation modules and the model libraries (PyMC, nutpie) once;
- an MLflow tracking server on the embedded store (``.insilico/mlflow.db``, artifacts under
  ``.insilico/mlartifacts``), so runs tracked warm or embedded are in one store.

When all answer it writes ``.insilico/services.json`` (addresses, process ids). Later commands
run from the same folder find that file (:func:`discover`) and use the services when no
service is configured otherwise (``PREFECT_API_URL``, ``--dask-address`` /
``INSILICO_DASK_ADDRESS``, ``MLFLOW_TRACKING_URI`` win); a file whose supervisor is gone is
ignored. ``insilico-trials services stop`` signals the supervisor, which stops the cluster
and both servers and removes the file; the command waits until every process it recorded has
ended. A service that dies takes the others down with it (the file is removed), so a command
never finds half of them.

The numbers do not depend on where the work runs: a run on the warm services gives the same
bytes as one on the embedded defaults (``tests/test_warm_services.py``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from insilico_trials.errors import RunFailure

__all__ = [
    "STATE_FILE",
    "ServicesError",
    "code_changed",
    "discover",
    "driver_socket",
    "group_members",
    "services_status",
    "start_services",
    "stop_services",
]

STATE_FILE = Path(".insilico") / "services.json"
# The warm driver's socket (insilico_trials.app.warm_driver), under the folder
DRIVER_SOCKET = Path(".insilico") / "services" / "driver.sock"
START_TIMEOUT_S = 300.0


class ServicesError(RunFailure):
    """The warm services could not be started or stopped."""


def driver_socket(folder: Path) -> Path:
    """Where the warm driver of the services started from ``folder`` listens."""
    return folder / DRIVER_SOCKET


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (ended, not yet reaped by its parent) counts as ended
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            return False
    return True


def _read_state(folder: Path) -> dict[str, Any] | None:
    path = folder / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def discover(folder: Path | None = None) -> dict[str, Any] | None:
    """The warm services started from ``folder`` (default: the working folder), when their
    supervisor is alive; None otherwise."""
    state = _read_state(folder or Path.cwd())
    if state is None or not _alive(int(state.get("pid", 0) or 0)):
        return None
    return state


def code_changed(state: dict[str, Any]) -> bool:
    """Whether the program or its locked libraries changed since the services started (their
    workers and the warm driver imported them as they were then)."""
    from insilico_trials.io.codehash import code_sha256, environment_sha256

    return (state.get("code_sha256"), state.get("environment_sha256")) != (
        code_sha256(), environment_sha256())  # fmt: skip


STALE = (
    "services: the program or its libraries changed since the warm services started; this "
    "command runs on the "
    "embedded defaults (`insilico-trials services stop`, then `start`, to use the new code warm)"
)


def services_status(folder: Path) -> str:
    state = discover(folder)
    if state is None:
        return f"services: not running (no live {STATE_FILE} in {folder})"
    return _describe(state) + (f"\n{STALE.replace('this command runs', 'commands run')}"
                               if code_changed(state) else "")  # fmt: skip


def _describe(state: dict[str, Any]) -> str:
    return (
        f"services: running since {state['started_utc']} (supervisor pid {state['pid']})\n"
        f"  Prefect API  {state['prefect_api_url']}\n"
        f"  Dask         {state['dask_address']} ({state['workers']} workers)\n"
        f"  MLflow       {state['mlflow_tracking_uri']}\n"
        f"  warm driver  {state.get('driver_socket') or 'not running (commands run on their own)'}"
    )


def start_services(folder: Path, *, workers: int | None, say: Any = print) -> dict[str, Any]:
    """Start the supervisor in the background and wait until every service answers."""
    folder = folder.resolve()
    if (state := discover(folder)) is not None:
        say("services: already running")
        say(_describe(state))
        return state
    home = folder / ".insilico" / "services"
    home.mkdir(parents=True, exist_ok=True)
    (folder / STATE_FILE).unlink(missing_ok=True)  # a stale file of a supervisor that is gone
    log_path = home / "supervisor.log"
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "insilico_trials.adapters.services", "serve", str(folder),
             str(workers or 0)],
            cwd=folder, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    say(f"services: starting (supervisor pid {proc.pid}; log {log_path})")
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        state = _read_state(folder)
        if state is not None and state.get("pid") == proc.pid:
            break
        if proc.poll() is not None:
            raise ServicesError(
                f"the services did not start (supervisor exited with code {proc.returncode}); "
                f"its log: {log_path}\n{_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            _terminate(proc.pid)
            raise ServicesError(
                f"the services did not answer within {START_TIMEOUT_S:.0f} s and were stopped; "
                f"its log: {log_path}\n{_tail(log_path)}"
            )
        time.sleep(0.2)
    say(_describe(state))
    say(
        f"services: started in {time.perf_counter() - t0:.1f} s; commands run from {folder} use them"
    )
    return state


def stop_services(folder: Path, *, say: Any = print, timeout_s: float = 60.0) -> bool:
    """Stop the supervisor started from ``folder`` and wait for every process it recorded.
    Returns False when nothing was running."""
    folder = folder.resolve()
    state = _read_state(folder)
    if state is None:
        say(f"services: not running (no {STATE_FILE} in {folder})")
        return False
    groups = [int(g) for g in state.get("groups", [])]

    def remaining() -> list[int]:
        members = [p for g in groups for p in group_members(g)]
        return sorted({p for p in [*pids, *members] if _alive(p)})

    pids = [int(state["pid"]), *map(int, state.get("children", []))]
    t0 = time.perf_counter()
    _terminate(int(state["pid"]))
    deadline = time.monotonic() + timeout_s
    while remaining() and time.monotonic() < deadline:
        time.sleep(0.1)
    left = remaining()
    for p in left:  # the supervisor did not stop them in time
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    (folder / STATE_FILE).unlink(missing_ok=True)
    say(
        f"services: stopped in {time.perf_counter() - t0:.1f} s ({len(pids)} processes"
        + (f"; {len(left)} killed after {timeout_s:.0f} s" if left else "")
        + ")"
    )
    return True


def group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (Linux ``/proc``)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(stat.parent.name))
    return found


def _wait_group_empty(pgid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in group_members(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _terminate(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


def _tail(path: Path, n: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    return ""


# --------------------------------------------------------------------------- the supervisor
def _mlflow_server(folder: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    store = folder / ".insilico"
    store.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as handle:
        return subprocess.Popen(
            [
                sys.executable, "-m", "mlflow", "server",
                "--backend-store-uri", f"sqlite:///{(store / 'mlflow.db').resolve()}",
                "--default-artifact-root", (store / "mlartifacts").resolve().as_uri(),
                "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            ],
            cwd=folder, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent(),
        )  # fmt: skip


def _warm_driver(folder: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as handle:
        return subprocess.Popen(
            # -P: the folder is not on the import path (a stray yaml.py there shadows nothing)
            [sys.executable, "-P", "-m", "insilico_trials.app.warm_driver", "serve", str(folder)],
            cwd=folder, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent(),
        )  # fmt: skip


def _wait_driver(folder: Path, proc: subprocess.Popen[bytes], log: Path) -> str | None:
    """The warm driver's socket once it listens; None when it did not start (commands then
    run in their own processes, as without it)."""
    path = driver_socket(folder)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(f"services: the warm driver exited ({proc.returncode}):\n{_tail(log)}")
            return None
        if "warm driver ready" in (log.read_text(errors="replace") if log.exists() else ""):
            return str(path)
        time.sleep(0.1)
    print("services: the warm driver did not start in time; commands run on their own")
    return None


def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise ServicesError(f"{what} exited with code {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise ServicesError(f"{what} did not answer within {START_TIMEOUT_S:.0f} s")
        time.sleep(0.2)


def _die_with_parent() -> Any:
    from insilico_trials.adapters.prefect_dask import _die_with_parent as die

    return die()


def serve(folder: Path, workers: int) -> int:
    """The supervisor: start, record, wait for SIGTERM (or a service's death), stop all."""
    from insilico_trials.io.codehash import code_sha256, environment_sha256

    code = code_sha256()  # the program as the workers and the warm driver will import it
    environment = environment_sha256()
    from insilico_trials.adapters.prefect_dask import (
        EmbeddedApi,
        _free_port,
        _import_modules,
        _silence,
        quiet_prefect,
    )
    from insilico_trials.run.executor import MODEL_WARM, WARM

    stopping = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    quiet_prefect()
    home = folder / ".insilico" / "services"
    api = EmbeddedApi(folder / ".insilico" / "prefect")
    mlflow_port = _free_port()
    mlflow_log = home / "mlflow.log"
    procs: dict[str, subprocess.Popen[bytes]] = {}
    driver: subprocess.Popen[bytes] | None = None
    cluster = client = None
    state_path = folder / STATE_FILE
    try:
        api.start()
        procs["Prefect API"] = api.process
        procs["MLflow server"] = _mlflow_server(folder, mlflow_port, mlflow_log)
        os.environ["PREFECT_API_URL"] = api.api_url  # the workers inherit it
        from distributed import Client, LocalCluster

        n = workers or max(1, os.cpu_count() or 1)
        cluster = LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None,
        )  # fmt: skip
        client = Client(cluster)
        client.run(signal.signal, signal.SIGINT, signal.SIG_IGN)
        # once, for every later command: the simulation modules, the model libraries and
        # Prefect's task engine (the API URL is in the environment they were spawned with)
        client.run(_import_modules, (*WARM, *MODEL_WARM, "prefect", "prefect.task_engine"))
        # The warm driver imports the commands' own libraries once (with the API URL in its
        # environment, as the commands would set it): commands run there, forked.
        driver = _warm_driver(folder, home / "driver.log")
        api.wait_ready()
        _wait_http(
            f"http://127.0.0.1:{mlflow_port}/health", procs["MLflow server"], "MLflow server",
            mlflow_log,
        )  # fmt: skip
        driver_socket = _wait_driver(folder, driver, home / "driver.log")
        children = [p.pid for p in (*procs.values(), driver)]
        groups = [p.pid for p in (*procs.values(), driver)]  # each leads its own process group
        children += [int(pid) for pid in client.run(os.getpid).values()]
        state = {
            "pid": os.getpid(),
            "folder": str(folder),
            "started_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "prefect_api_url": api.api_url,
            "dask_address": cluster.scheduler_address,
            "mlflow_tracking_uri": f"http://127.0.0.1:{mlflow_port}",
            "workers": n,
            "children": sorted(set(children)),
            "groups": groups,
            "driver_socket": driver_socket,
            "code_sha256": code,
            "environment_sha256": environment,
        }
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
        os.replace(tmp, state_path)
        print(f"services ready: {json.dumps(state)}", flush=True)
        while not stopping:
            dead = [name for name, p in procs.items() if p.poll() is not None]
            if dead or len(client.scheduler_info()["workers"]) < n:
                print(f"services: {dead or 'a Dask worker'} ended; stopping all", flush=True)
                break
            time.sleep(0.5)
        return 0
    finally:
        state_path.unlink(missing_ok=True)
        _silence("distributed.nanny", "distributed.scheduler", "distributed.worker",
                 "distributed.worker.state_machine", "distributed.core")  # fmt: skip
        with contextlib.suppress(Exception):
            if client is not None:
                client.close()
        with contextlib.suppress(Exception):
            if cluster is not None:
                cluster.close()
        ended = [*procs.values(), *([driver] if driver is not None else [])]
        for proc in ended:  # each server with the processes it started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in ended:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            _wait_group_empty(proc.pid, 10.0)
        print("services: stopped", flush=True)


if __name__ == "__main__":  # the supervisor process (``services start`` runs it)
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        raise SystemExit(serve(Path(sys.argv[2]), int(sys.argv[3])))
    raise SystemExit("usage: python -m insilico_trials.adapters.services serve FOLDER WORKERS")
