"""Warm mode: ``services start`` starts the local Prefect server, Dask cluster and MLflow server
in the background, and the warm driver; a later ``run`` from the same folder finds them without
flags, executes in a child forked by the warm driver (its output, exit code and Ctrl-C passed
through) and gives the embedded default's numbers, bit for bit; ``services stop`` leaves no
process behind.

All commands run as subprocesses of a fresh folder (a copy of the session's reference
protocol), as a user runs them; the embedded reference is the session's reference run
(tests/conftest.py, LocalCluster and SQLite store).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from insilico_trials.adapters.services import STATE_FILE, group_members
from tests.conftest import clean_env

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "insilico_trials.app.cli"]


def _cli(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600):
    return subprocess.run(
        [*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def test_warm_services_found_identical_and_stopped(tmp_path, reference_runs):
    work = tmp_path / "work"
    work.mkdir()
    protocol = work / "protocol.yaml"
    protocol.write_bytes(reference_runs["protocol"].read_bytes())
    env = clean_env(tmp_path / "home")
    started = False
    try:
        out = _cli(["services", "start", "--workers", "1"], work, env)
        started = True
        assert out.returncode == 0, out.stdout + out.stderr
        state = json.loads((work / STATE_FILE).read_text())
        for url in (state["prefect_api_url"], state["mlflow_tracking_uri"]):
            assert url.startswith("http://127.0.0.1:")  # loopback only
        assert state["dask_address"].startswith("tcp://127.0.0.1:")
        status = _cli(["services", "status"], work, env)
        assert "running since" in status.stdout and state["dask_address"] in status.stdout

        assert state["driver_socket"] and Path(state["driver_socket"]).exists()

        run = _cli(["run", str(protocol), "--reports", str(work / "reports")], work, env)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "services: warm Prefect, Dask, MLflow" in run.stdout
        assert "forked by the warm driver" in run.stdout
        assert "timing summary:" in run.stdout and "Traceback" not in run.stderr
        (archive,) = [p.parent for p in (work / "reports").rglob("manifest.json")]
        warm = json.loads((archive / "manifest.json").read_text())
        embedded = json.loads((reference_runs["one"] / "manifest.json").read_text())
        assert warm["outputs"] == embedded["outputs"]  # every numeric output, by SHA-256
        assert warm["execution"]["dask_address"] == state["dask_address"]
        assert warm["mlflow_tracking_uri"] == state["mlflow_tracking_uri"]
        # tracked in the folder's one store, which the embedded mode reads too
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{work / '.insilico' / 'mlflow.db'}")
        assert client.get_run(warm["mlflow_run_id"]).info.status == "FINISHED"

        # bad input through the warm driver: its message on this command's stderr, exit 2;
        # a connection that never sends its request does not hold the driver up
        import socket

        silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        silent.connect(state["driver_socket"])
        try:
            bad = _cli(["run", str(work / "missing.yaml")], work, env, timeout=120)
        finally:
            silent.close()
        assert bad.returncode == 2, bad.stdout + bad.stderr
        assert "missing.yaml" in bad.stderr and "Traceback" not in bad.stderr
        assert "forked by the warm driver" in bad.stdout
        # services that imported other code (the program changed since they started) are
        # not used: the command says so and runs on its own
        state_path = work / STATE_FILE
        recorded = state_path.read_text()
        assert json.loads(recorded)["code_sha256"]
        state_path.write_text(recorded.replace(state["code_sha256"], "0" * 64))
        try:
            stale = _cli(["run", str(work / "missing.yaml")], work, env)
        finally:
            state_path.write_text(recorded)
        assert stale.returncode == 2, stale.stdout + stale.stderr
        assert (
            "the program or its libraries changed since the warm services started" in stale.stderr
        )
        assert "services: warm" not in stale.stdout
        # Ctrl-C reaches the forked command: exit 130, nothing written
        _ctrl_c_during_fit(protocol, work, env)
        # a command killed outright takes its forked child with it: nothing written
        _killed_caller(protocol, work, env)

        stop = _cli(["services", "stop"], work, env)
        started = False
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert "stopped" in stop.stdout and "killed" not in stop.stdout
        assert not (work / STATE_FILE).exists()
        pids = [state["pid"], *state["children"]]
        # the supervisor, the 2 servers, the warm driver and the worker (its nanny lives in the
        # supervisor)
        assert len(pids) == 1 + 2 + 1 + 1
        assert not Path(state["driver_socket"]).exists()
        assert not [p for p in pids if _alive(p)]
        assert not [p for g in state["groups"] for p in group_members(g)]
        gone = _cli(["services", "status"], work, env)
        assert "not running" in gone.stdout
    finally:
        if started:
            _cli(["services", "stop"], work, env)


def _ctrl_c_during_fit(protocol: Path, work: Path, env: dict[str, str]) -> None:
    """SIGINT to the command (what a terminal's Ctrl-C sends) while the forked child fits."""
    import signal
    import time

    reports = work / "interrupted"
    proc = subprocess.Popen(
        [*CLI, "run", str(protocol), "--reports", str(reports)], cwd=work, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "] fit:" in line:
                break
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, rest + err
    assert "interrupted: run stopped; nothing partial was written" in err
    assert "Traceback" not in err, err
    assert not list(reports.rglob("manifest.json"))


def _forked_children(folder: Path) -> list[int]:
    """Live children of the folder's warm driver (the commands it forked: a fork keeps its
    parent's command line)."""
    matching, parents = set(), {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        pid = int(entry.name)
        parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])  # state, ppid, ...
        if b"insilico_trials.app.warm_driver" in cmdline and str(folder).encode() in cmdline:
            matching.add(pid)
    drivers = {p for p in matching if parents.get(p) not in matching}
    return [p for p in matching if parents.get(p) in drivers and _alive(p)]


def _killed_caller(protocol: Path, work: Path, env: dict[str, str]) -> None:
    """SIGKILL to the command (no handler runs) while its forked child simulates."""
    import signal
    import time

    reports = work / "killed"
    proc = subprocess.Popen(
        [*CLI, "run", str(protocol), "--reports", str(reports)], cwd=work, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "] simulate:" in line:
                break
        assert _forked_children(work), "the run was not forked by the warm driver"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    deadline = time.monotonic() + 60
    while _forked_children(work) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _forked_children(work)
    assert not list(reports.rglob("manifest.json"))
