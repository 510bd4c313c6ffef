"""The same commands on real services and on the embedded defaults give the same numbers.

Real, on 127.0.0.1, each in its own process: a Dask scheduler with two `dask worker`
processes, a Prefect server (`prefect server start`, shared with the fault tests) and an MLflow
tracking server (`mlflow server`, SQLite backend, proxied artifact store). `run`, `design` and
`update` go to those services (`--dask-address`, `PREFECT_API_URL`, `MLFLOW_TRACKING_URI`) as
subprocesses. Their twins on the embedded defaults (LocalCluster, SQLite MLflow store in the
working folder) are the session's reference run (tests/conftest.py), `design` in the test
process and `update` as a subprocess. The numeric outputs
must be identical, and the Prefect flow run and the MLflow run named in each archive must exist
on the servers, with the archive as artifacts. (tests/test_faults.py checks that a fresh
process on the ephemeral Prefect API gives the reference run's numbers too.)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, clean_env, free_port
from tests.test_flow_e2e import _cut

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
CLI = [sys.executable, "-m", "insilico_trials.app.cli"]
START_DEADLINE_S = 240  # services on a loaded 2-core machine take 30-60 s
COMMAND_DEADLINE_S = 600


def _start(cmd: list[str], *, env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    handle = open(log, "wb")
    try:
        proc = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        handle.close()  # the child holds its own descriptor
    return proc


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each process group (servers spawn children), wait, SIGKILL what is left."""
    for p in reversed(procs):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)
        # children that outlived their group leader
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _wait_until(check, what: str, procs: list[subprocess.Popen], logs: list[Path]) -> None:
    deadline = time.monotonic() + START_DEADLINE_S
    while not check():
        dead = [(p, log) for p, log in zip(procs, logs, strict=True) if p.poll() is not None]
        if dead:
            p, log = dead[0]
            raise AssertionError(
                f"{what}: {p.args} exited {p.returncode}:\n{log.read_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not up after {START_DEADLINE_S} s")
        time.sleep(1)


class Command:
    """One CLI invocation as a subprocess (stdout and stderr captured to files)."""

    def __init__(self, args: list[str], *, env: dict[str, str], cwd: Path, name: str) -> None:
        self.args, self.cwd, self.name = args, cwd, name
        self.out, self.err = cwd / f"{name}.out", cwd / f"{name}.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [*CLI, *args], env=env, cwd=cwd, stdout=out, stderr=err, start_new_session=True
            )

    def wait(self) -> int:
        try:
            code = self.proc.wait(timeout=COMMAND_DEADLINE_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
            raise
        return code

    def check(self) -> str:
        code = self.wait()
        out = self.out.read_text()
        assert code == 0, (
            f"{self.name}: insilico-trials {' '.join(self.args)} exited {code}\n"
            f"stdout:\n{out[-3000:]}\nstderr:\n{self.err.read_text()[-5000:]}"
        )
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def _only(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, f"{folder}: expected one {pattern}, found {found}"
    return found[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory, prefect_server, reference_runs):
    """Start Dask and MLflow, run run/design/update on the services and their embedded twins;
    yield every result."""
    from insilico_trials.app.cli import main

    tmp = tmp_path_factory.mktemp("services")
    svc_dir, emb_dir, logs_dir = tmp / "service", tmp / "embedded", tmp / "logs"
    for d in (svc_dir, emb_dir, logs_dir):
        d.mkdir()
    protocol = reference_runs["protocol"]
    design_protocol = ROOT / "protocols" / "design_binary_borrowing.yaml"

    p_dask, p_mlflow = free_port(), free_port()
    dask_address = f"tcp://127.0.0.1:{p_dask}"
    mlflow_uri = f"http://127.0.0.1:{p_mlflow}"
    server_env = clean_env(tmp / "server-home")
    svc_env = {
        **clean_env(tmp / "prefect-client-home"),
        "PREFECT_API_URL": prefect_server,
        "MLFLOW_TRACKING_URI": mlflow_uri,
    }

    procs: list[subprocess.Popen] = []
    logs: list[Path] = []
    commands: list[Command] = []

    def start(name: str, cmd: list[str]) -> None:
        log = logs_dir / f"{name}.log"
        procs.append(_start(cmd, env=server_env, cwd=logs_dir, log=log))
        logs.append(log)

    try:
        start(
            "mlflow",
            [
                str(BIN / "mlflow"), "server",
                "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
                "--artifacts-destination", str(tmp / "mlflow-artifacts"),
                "--host", "127.0.0.1", "--port", str(p_mlflow), "--workers", "1",
            ],
        )  # fmt: skip
        start(
            "scheduler",
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(p_dask), "--no-dashboard"],
        )  # fmt: skip

        def port_open() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", p_dask), timeout=1):
                    return True
            except OSError:
                return False

        _wait_until(port_open, "dask scheduler", procs, logs)
        for i in range(2):
            start(
                f"worker{i}",
                [
                    str(BIN / "dask"), "worker", dask_address, "--nthreads", "1",
                    "--nworkers", "1", "--no-dashboard", "--host", "127.0.0.1",
                ],
            )  # fmt: skip
        _wait_until(lambda: _http_ok(f"{mlflow_uri}/health"), "mlflow server", procs, logs)

        from distributed import Client

        with Client(dask_address, timeout=60) as client:
            client.wait_for_workers(2, timeout=START_DEADLINE_S)
            n_workers = len(client.scheduler_info()["workers"])

        def service(args: list[str], name: str) -> str:
            cmd = Command(args, env=svc_env, cwd=svc_dir, name=name)
            commands.append(cmd)
            try:
                return cmd.check()
            finally:
                cmd.kill()

        service(
            ["run", str(protocol), "--dask-address", dask_address, "--reports", "reports"],
            "run-service",
        )
        svc_archive = _only(svc_dir / "reports" / "tiny-orr", "2*Z-*")
        emb_archive = reference_runs["one"]

        replicates = "20"
        service(
            ["design", str(design_protocol), "--replicates", replicates,
             "--dask-address", dask_address, "--reports", "reports"],
            "design-service",
        )  # fmt: skip
        svc_oc = _only(svc_dir / "reports" / "design-binary-borrowing", "design-*")

        # `update` on copies of each archive with the same cut (the originals stay pristine).
        ids = [f"R{i:02d}" for i in range(10)]
        cut = _cut(tmp / "cut", ids, {ids[0], ids[3]})
        svc_copy, emb_copy = svc_dir / "updated", emb_dir / "updated"
        shutil.copytree(svc_archive, svc_copy)
        shutil.copytree(emb_archive, emb_copy)
        # The embedded update in its own process, at the same time: in this test process, where
        # other tests' fits ran before, its MCMC draws came out different (see the closing note
        # of issue 9); a fresh command process matches the service run.
        emb_update = Command(
            ["update", str(emb_copy), "--data", str(cut)],
            env=clean_env(tmp / "prefect-embedded-home"), cwd=emb_dir, name="update-embedded",
        )  # fmt: skip
        commands.append(emb_update)
        service(["update", str(svc_copy), "--data", str(cut)], "update-service")
        emb_update.check()

        # The embedded twins, in this process (the session's Prefect API, a LocalCluster and
        # a SQLite MLflow store in emb_dir).
        cwd = os.getcwd()
        os.chdir(emb_dir)
        try:
            assert main(["design", str(design_protocol), "--replicates", replicates,
                         "--workers", "1", "--reports", "reports"]) == 0  # fmt: skip
        finally:
            os.chdir(cwd)
        emb_oc = _only(emb_dir / "reports" / "design-binary-borrowing", "design-*")

        yield {
            "tmp": tmp,
            "n_workers": n_workers,
            "dask_address": dask_address,
            "prefect_api": prefect_server,
            "mlflow_uri": mlflow_uri,
            "run": (svc_archive, emb_archive),
            "design": (svc_oc, emb_oc),
            "update": (svc_copy, emb_copy),
        }
    finally:
        for c in commands:
            c.kill()
        _stop(procs)


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _flow_name(world: dict, flow_run_id: str) -> tuple[str, str]:
    """(flow name, state type) of a flow run, from the Prefect server's REST API."""
    run = _get_json(f"{world['prefect_api']}/flow_runs/{flow_run_id}")
    assert run["id"] == flow_run_id
    flow = _get_json(f"{world['prefect_api']}/flows/{run['flow_id']}")
    return flow["name"], run["state_type"]


def _mlflow_client(world: dict):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=world["mlflow_uri"])


def _artifact_paths(client, run_id: str, path: str) -> set[str]:
    """Every artifact file under ``path``, subfolders included (an archive made in a checkout
    with recorded test results holds ``verification/junit.xml``)."""
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def _artifact_bytes(client, run_id: str, path: str, dst: Path) -> bytes:
    dst.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, path, str(dst))).read_bytes()


def test_run_on_services_equals_embedded(world):
    svc, emb = world["run"]
    assert world["n_workers"] == 2
    m_svc, m_emb = _manifest(svc), _manifest(emb)
    assert m_svc["execution"]["dask_address"] == world["dask_address"]
    assert m_emb["execution"]["dask_address"] == "LocalCluster"
    assert m_svc["mlflow_tracking_uri"] == world["mlflow_uri"]
    assert m_emb["mlflow_tracking_uri"].startswith("sqlite:///")
    assert m_emb["mlflow_tracking_uri"].endswith("/.insilico/mlflow.db")
    assert set(m_svc["outputs"]) >= {"cohort.parquet", "endpoints.parquet", "summary.json"}
    assert m_svc["outputs"] == m_emb["outputs"]
    assert m_svc["inputs"] == m_emb["inputs"]


def test_run_recorded_on_prefect_server(world):
    svc, emb = world["run"]
    assert _flow_name(world, _manifest(svc)["prefect_flow_run_id"]) == (
        "insilico-trial-run",
        "COMPLETED",
    )
    # The embedded run's flow run lives in its own Prefect API, not on the server.
    emb_id = _manifest(emb)["prefect_flow_run_id"]
    with pytest.raises(urllib.error.HTTPError) as info:
        _get_json(f"{world['prefect_api']}/flow_runs/{emb_id}")
    info.value.close()
    assert info.value.code == 404


def test_run_recorded_on_mlflow_server(world, tmp_path):
    svc, _ = world["run"]
    manifest = _manifest(svc)
    client = _mlflow_client(world)
    run = client.get_run(manifest["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == manifest["run_id"]
    assert run.data.params["trial_id"] == "tiny-orr"
    summary = json.loads((svc / "summary.json").read_text())
    assert run.data.metrics["probability"] == summary["probability"]
    names = _artifact_paths(client, run.info.run_id, "archive")
    archived = {f"archive/{n}" for t in ("inputs", "outputs", "documents") for n in manifest[t]}
    assert archived | {"archive/manifest.json"} <= names
    # The artifacts on the server are the archive's bytes.
    for name in ("manifest.json", "summary.json", "endpoints.parquet"):
        got = _artifact_bytes(client, run.info.run_id, f"archive/{name}", tmp_path / "dl")
        assert got == (svc / name).read_bytes(), name


def test_design_on_services_equals_embedded(world, tmp_path):
    svc, emb = world["design"]
    assert (svc / "oc.csv").read_bytes() == (emb / "oc.csv").read_bytes()
    assert (svc / "calibration.csv").read_bytes() == (emb / "calibration.csv").read_bytes()
    doc = json.loads((svc / "oc.json").read_text())
    assert doc["replicates"] == 20
    assert doc["execution"]["dask_address"] == world["dask_address"]
    assert _flow_name(world, doc["prefect_flow_run_id"]) == ("insilico-trial-design", "COMPLETED")
    client = _mlflow_client(world)
    run = client.get_run(doc["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["insilico.kind"] == "design"
    got = _artifact_bytes(client, run.info.run_id, "design/oc.csv", tmp_path / "dl")
    assert got == (svc / "oc.csv").read_bytes()


def test_update_on_services_equals_embedded(world, tmp_path):
    from insilico_trials.io.archive import verify_archive

    svc, emb = world["update"]
    rec_svc = json.loads((svc / "updates" / "001" / "update.json").read_text())
    rec_emb = json.loads((emb / "updates" / "001" / "update.json").read_text())
    assert rec_svc["n_real"] == 10
    assert rec_svc == rec_emb
    u_svc, u_emb = _manifest(svc / "updates" / "001"), _manifest(emb / "updates" / "001")
    assert u_svc["outputs"] == u_emb["outputs"]
    assert verify_archive(svc) == [] and verify_archive(emb) == []

    # A closed-form refit runs in the command's process: no flow run (an MCMC refit's flow is
    # recorded on the server like the run's).
    assert rec_svc["engine"] == "closed_form" and u_svc["prefect_flow_run_id"] == ""
    # The update's MLflow run is on the server, nested under the run's MLflow run there.
    parent_id = _manifest(svc)["mlflow_run_id"]
    client = _mlflow_client(world)
    parent = client.get_run(parent_id)
    child = client.get_run(u_svc["mlflow_run_id"])
    assert child.data.tags["mlflow.parentRunId"] == parent_id
    assert child.info.experiment_id == parent.info.experiment_id
    assert child.info.status == "FINISHED"
    assert child.info.run_name == f"{_manifest(svc)['run_id']}-update-001"
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    assert [r.info.run_id for r in children] == [u_svc["mlflow_run_id"]]
    got = _artifact_bytes(client, child.info.run_id, "updates/001/update.json", tmp_path / "dl")
    assert got == (svc / "updates" / "001" / "update.json").read_bytes()
    # Summaries and content hashes only: the real patients' records stay in the archive.
    logged = {a.path for a in client.list_artifacts(child.info.run_id, "updates/001")}
    assert "updates/001/manifest.json" in logged, logged
    assert not any(p.startswith("updates/001/cut") for p in logged), logged
    assert (svc / "updates" / "001" / "cut").is_dir()
