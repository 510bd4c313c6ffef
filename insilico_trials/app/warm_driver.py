"""The warm driver: with the warm services running, commands execute in a process that has
imported the driver's libraries once, instead of importing them again in every command.

``insilico-trials services start`` starts this server beside the services (its own process,
its own session). It imports what a ``run``, ``rerun``, ``update`` or ``design`` driver needs
(Prefect's client, Dask's client, PyMC, MLflow, the report), then listens on a Unix socket in
the services folder (``.insilico/services/driver.sock``, mode 0600). A command started from the
same folder (:func:`dispatch`, called by the console script before it imports anything heavy)
sends its arguments, working folder and environment, and its standard input, output and error
as file descriptors (``SCM_RIGHTS``); the server forks, and the child runs the command exactly
as the console script would (:func:`insilico_trials.app.cli.main`), writing to the caller's
terminal or pipes, and sends back its exit code. The caller forwards Ctrl-C and SIGTERM to the
child and exits with the child's code.

Same program, same arguments, same services: the same bytes as a command that imported
everything itself (``tests/test_warm_services.py`` compares them). A command is executed here
only when it would use the warm services for everything (no ``PREFECT_API_URL``,
``MLFLOW_TRACKING_URI`` or Dask address of its own) and the server answers; otherwise the
command runs in its own process as before. Prefect reads its settings when imported: a child
has the settings the services were started with (their environment is recorded in
``services.json`` only as the addresses).

Forking is safe here because the server runs no Python thread when it forks: it checks that after
its imports and refuses to serve otherwise (the commands then run in their own processes). Native
threads of OpenBLAS and of pyarrow's jemalloc do run; both libraries register fork handlers.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["COMMANDS", "DRIVER_IMPORTS", "dispatch", "serve"]

# Commands the warm driver executes: those that use the warm services.
COMMANDS = ("run", "rerun", "update", "design")
# What those commands' drivers import (measured with ``-X importtime`` on a run, a rerun and an
# update): about 6 s of CPU per command on the 2-core machine.
DRIVER_IMPORTS = (
    "insilico_trials.app.cli",
    "insilico_trials.app.commands",
    "insilico_trials.app.design_cmd",
    "insilico_trials.run.preflight",
    "insilico_trials.run.trial",
    "insilico_trials.run.update",
    "insilico_trials.adapters.prefect_dask",
    "insilico_trials.adapters.mlflow_tracker",
    "insilico_trials.io.archive",
    "insilico_trials.io.outputs",
    "insilico_trials.io.spool",
    "insilico_trials.report",
    "insilico_trials.infer.analysis",
    "insilico_trials.infer.outcomes",
    "prefect",
    "prefect.flows",
    "prefect.task_engine",
    "prefect_dask",
    "distributed",
    "mlflow",
    "mlflow.tracking",
    "pymc",
    "arviz",
)
_CHILD_FLAG = "INSILICO_WARM_CHILD"
ACCEPT_TIMEOUT_S = 60.0  # for the driver to fork the command's child
_REQUEST_TIMEOUT_S = 5.0  # for a connected caller to send its request
_HEADER = struct.Struct("!Q")


# --------------------------------------------------------------------------- the caller's side
def dispatch(argv: list[str], started: float) -> int | None:
    """Run ``argv`` in the warm driver of the working folder's services; its exit code, or None
    when the command should run in this process (not a services command, no warm driver, a
    service configured otherwise, or already inside the warm driver)."""
    if not argv or argv[0] not in COMMANDS or os.environ.get(_CHILD_FLAG):
        return None
    if any(
        a in ("-h", "--help", "--dask-address") or a.startswith("--dask-address=") for a in argv
    ):
        return None
    if any(os.environ.get(v) for v in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI",
                                       "INSILICO_DASK_ADDRESS")):  # fmt: skip
        return None
    from insilico_trials.adapters.services import code_changed, discover, driver_socket

    state = discover()
    if state is None or not state.get("driver_socket") or code_changed(state):
        return None  # (a changed program: the command itself says so, and runs embedded)
    # Only this folder's own socket, made by this user, private: the caller hands over its
    # environment and its terminal.
    path = driver_socket(Path.cwd())
    try:
        info = os.stat(path)
    except OSError:
        return None
    if (str(path) != state["driver_socket"] or info.st_uid != os.getuid()
            or info.st_mode & 0o077 or not _is_socket(info.st_mode)):  # fmt: skip
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(state["driver_socket"])
    except OSError:
        sock.close()
        return None
    request = json.dumps(
        {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "started": started}
    ).encode()
    # Ctrl-C, SIGTERM and SIGHUP go to the child; one that comes before its pid is known is
    # passed on as soon as it is.
    child = 0
    pending: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        if not child:
            pending.append(signum)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    with sock:
        try:
            socket.send_fds(sock, [_HEADER.pack(len(request)) + request], [0, 1, 2])
        except OSError:
            _default_signals()
            return None  # the server went away before taking the command: run it here
        reader = sock.makefile("r", encoding="utf-8")
        sock.settimeout(ACCEPT_TIMEOUT_S)
        try:
            first = reader.readline()
        except TimeoutError:
            # It has the command and may still run it: running it here too could run it twice.
            print(
                f"the warm driver did not take the command within {ACCEPT_TIMEOUT_S:.0f} s; "
                "`insilico-trials services stop` stops the services (commands then run on "
                "their own)",
                file=sys.stderr,
            )
            return 1
        except OSError:
            first = ""
        if not first.startswith("pid "):
            _default_signals()
            if pending:  # interrupted before anything ran
                return 130
            return None  # refused before it forked (other settings): nothing ran
        sock.settimeout(None)
        child = int(first.split()[1])
        for signum in pending:
            forward(signum, None)
        last = reader.readline()
    if last.startswith("exit "):
        return int(last.split()[1])
    print(
        f"the warm driver's process for this command (pid {child}) ended without an exit "
        "code; `insilico-trials services status` shows the services",
        file=sys.stderr,
    )
    return 1


def _is_socket(mode: int) -> bool:
    import stat

    return stat.S_ISSOCK(mode)


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def _settings(env: dict[str, str]) -> dict[str, str]:
    """What Prefect and Dask read when imported (once, in the warm driver): the caller's must be
    the driver's for its command to run there. The API URL is the services' own."""
    return {
        k: v
        for k, v in env.items()
        if k.startswith(("PREFECT_", "DASK_")) and k != "PREFECT_API_URL"
    }


# --------------------------------------------------------------------------- the server
def serve(folder: Path) -> int:
    """Import the driver's libraries, then fork one child per command until SIGTERM."""
    from insilico_trials.adapters.prefect_dask import quiet_prefect

    quiet_prefect()  # as the console script does before Prefect is imported
    settings = _settings(dict(os.environ))
    t0 = time.perf_counter()
    for name in DRIVER_IMPORTS:
        importlib.import_module(name)
    # Forking a process with threads copies their locks in whatever state they are. No Python
    # thread may run here. Native threads do (OpenBLAS's workers, jemalloc's background thread
    # in pyarrow): both libraries register fork handlers for exactly this.
    others = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if others:
        print(f"warm driver: not serving, threads after the imports: {others}", flush=True)
        return 1
    from insilico_trials.adapters.services import driver_socket

    path = driver_socket(folder)
    path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        server.bind(str(path))
    finally:
        os.umask(old_umask)
    server.listen(16)
    server.settimeout(0.5)
    stopping = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print(f"warm driver ready in {time.perf_counter() - t0:.1f} s: {path}", flush=True)
    children: set[int] = set()
    try:
        while not stopping:
            _reap(children)
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                if stopping:
                    break
                raise
            with conn:
                conn.settimeout(_REQUEST_TIMEOUT_S)  # a silent caller must not hold the loop
                try:
                    request, fds = _receive(conn)
                    conn.settimeout(None)
                except (OSError, ValueError) as exc:
                    print(f"warm driver: a bad request ({exc})", flush=True)
                    continue
                theirs = dict(request.get("env", {}))
                quiet_prefect(theirs)  # the defaults the command would set itself
                if _settings(theirs) != settings:
                    for fd in fds:
                        os.close(fd)
                    with contextlib.suppress(OSError):
                        conn.sendall(b"refused: other Prefect or Dask settings\n")
                    continue
                pid = os.fork()
                if pid == 0:  # the child: never returns
                    code = 1
                    try:
                        server.close()
                        code = _child(conn, fds, request)
                    finally:
                        os._exit(code)
                for fd in fds:
                    os.close(fd)
                children.add(pid)
    finally:
        server.close()
        path.unlink(missing_ok=True)
        for pid in children:  # commands still running end with the services
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while children and time.monotonic() < deadline:
            _reap(children)
            time.sleep(0.1)
    return 0


def _reap(children: set[int]) -> None:
    for pid in list(children):
        with contextlib.suppress(ChildProcessError):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if not done:
                continue
        children.discard(pid)


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    try:
        if len(fds) != 3 or len(data) < _HEADER.size:
            raise ValueError("expected a request with three file descriptors")
        (size,) = _HEADER.unpack_from(data)
        body = data[_HEADER.size :]
        while len(body) < size:
            more = conn.recv(size - len(body))
            if not more:
                break
            body += more
        request = json.loads(body.decode())
        if not isinstance(request, dict) or not isinstance(request.get("argv"), list):
            raise ValueError("expected a JSON object with argv")
    except BaseException:
        for fd in fds:  # nothing keeps the caller's descriptors open
            os.close(fd)
        raise
    return request, fds


def _child(conn: socket.socket, fds: list[int], request: dict[str, Any]) -> int:
    """In the forked child: become the caller's command (its descriptors, folder,
    environment) and run it as the console script does."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False), encoding="utf-8", line_buffering=True
    )
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), encoding="utf-8", line_buffering=True
    )
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ[_CHILD_FLAG] = "1"
    conn.sendall(f"pid {os.getpid()}\n".encode())
    import insilico_trials.app as app
    from insilico_trials.app import cli

    app.STARTED = float(request.get("started", app.STARTED))  # the caller's start
    _stop_when_caller_ends(conn)
    code = 1
    try:
        code = cli.main(list(request["argv"]))
    except SystemExit as exc:  # argparse's usage errors and --help, as the console script
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # as the console script would: the traceback, exit 1
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        with contextlib.suppress(OSError):
            conn.sendall(f"exit {code}\n".encode())
    return code


def _stop_when_caller_ends(conn: socket.socket) -> None:
    """The caller sends nothing after its request: the end of its connection means it has
    ended (killed, its terminal closed). The command then stops as after Ctrl-C (nothing
    partial written), instead of finishing without anybody to report to."""

    def watch() -> None:
        with contextlib.suppress(OSError):
            while conn.recv(1):
                pass
        with contextlib.suppress(ProcessLookupError):
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, name="insilico-caller-watch", daemon=True).start()


if __name__ == "__main__":  # started by the services supervisor
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        raise SystemExit(serve(Path(sys.argv[2])))
    raise SystemExit("usage: python -m insilico_trials.app.warm_driver serve FOLDER")
