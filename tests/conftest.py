"""Session fixtures, each started once because each costs tens of seconds on this machine.

- ``prefect_api``: a Prefect test harness (temporary database, in-process API) for runs in
  the test process;
- ``reference_runs``: the tiny ORR protocol run twice in the test process on a LocalCluster
  and the SQLite MLflow store (1 worker, chunks of 5; 2 workers, chunks of 3). Every
  end-to-end, service and fault test compares its numeric outputs with these;
- ``prefect_server``: a real ``prefect server start`` on 127.0.0.1, shared by the service and
  fault tests.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = {"n": 20, "chunk": 5, "draws": 300}  # the reference runs' tiny protocol


@pytest.fixture(scope="session")
def prefect_api():
    """A Prefect test harness (temporary database and API) for the whole session."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(home: Path) -> dict[str, str]:
    """This process's environment without any service setting, and a private Prefect home."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "MLFLOW_", "INSILICO_", "DASK_"))
    }
    home.mkdir(parents=True, exist_ok=True)
    env["PREFECT_HOME"] = str(home)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_in_process(folder: Path, protocol: Path, *extra: str) -> Path:
    """``insilico-trials run`` in this process (reports under ``folder``); the new archive."""
    from insilico_trials.app.cli import main

    reports = folder / "reports"
    before = set(reports.rglob("manifest.json")) if reports.exists() else set()
    assert main(["run", str(protocol), "--reports", str(reports), *extra]) == 0
    (new,) = set(reports.rglob("manifest.json")) - before
    return new.parent


def reference_protocol(folder: Path) -> Path:
    """The reference runs' protocol text, written to ``folder`` (same protocol hash)."""
    return tiny_protocol(folder, **REFERENCE)


@pytest.fixture(scope="session")
def reference_runs(tmp_path_factory, prefect_api):
    """The reference protocol run with 1 worker (chunks of 5) and 2 workers (chunks of 3)."""
    tmp = tmp_path_factory.mktemp("reference")
    cwd = os.getcwd()
    os.chdir(tmp)  # the embedded MLflow store lands in tmp/.insilico
    try:
        protocol = reference_protocol(tmp)
        one = run_in_process(tmp, protocol, "--workers", "1")
        time.sleep(1.1)  # run ids carry the second
        two = run_in_process(tmp, protocol, "--workers", "2", "--chunk-size", "3")
    finally:
        os.chdir(cwd)
    return {"tmp": tmp, "protocol": protocol, "one": one, "two": two}


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """``prefect server start`` on a free loopback port; yields its API URL."""
    tmp = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = tmp / "server.log"
    with open(log, "wb") as handle:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "prefect"), "server", "start",
             "--host", "127.0.0.1", "--port", str(port)],
            env=clean_env(tmp / "home"), cwd=tmp, stdout=handle, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert proc.poll() is None, f"prefect server exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "prefect server not up after 240 s"
            time.sleep(1)
        yield url
    finally:
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 30)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # children that outlived the leader
        except ProcessLookupError:
            pass


def tiny_protocol(tmp_path: Path, *, n: int = 12, chunk: int = 5, draws: int = 600) -> Path:
    """The ORR example shrunk to a few patients per arm, with short chains and follow-up."""
    from insilico_trials.spec.protocol import load_protocol
    from insilico_trials.testing import with_arm_sizes, with_fields, with_mcmc, write_protocol

    protocol = load_protocol(ROOT / "protocols" / "onc_phase2_orr.yaml")
    protocol = with_mcmc(with_arm_sizes(protocol, n), draws=draws, tune=500, chains=2)
    protocol = with_fields(
        protocol,
        {
            "trial_id": "tiny-orr",
            "execution.chunk_size": chunk,
            "endpoints.follow_up_weeks": 24,
            "arms[1].regimen.n_doses": 84,
            # the synthetic control's replicate virtual arms, small: 4 arms of 20 patients
            "synthetic_control.virtual_replicates": 4,
            "synthetic_control.virtual_patients": 20,
        },
    )
    return write_protocol(protocol, tmp_path / "tiny.yaml")
