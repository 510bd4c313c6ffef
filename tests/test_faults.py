"""Faults: a run killed by SIGKILL and resumed, a Dask worker killed mid-run, two updates at once.

Real processes on 127.0.0.1: `insilico-trials` commands as subprocesses, a `dask scheduler` and
two `dask worker` processes (each in its own process group, so one can be killed whole), and
the session's `prefect server`. The killed and the resumed run use the embedded defaults
(ephemeral Prefect API, LocalCluster, SQLite MLflow in the working folder): the resumed run is
the suite's fully embedded `run` from a fresh process. Every numeric output is compared with
the session's uninterrupted reference run (tests/conftest.py), which has the same protocol.
Every process started here carries a marker in its environment; whatever is left of them
(LocalCluster workers, ephemeral Prefect servers of a killed command) is killed by pid at the
end.
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import clean_env, free_port, reference_protocol
from tests.test_flow_e2e import _cut

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
CLI = [sys.executable, "-m", "insilico_trials.app.cli"]
MARKER = "INSILICO_FAULT_TEST"
DEADLINE_S = 600
CHUNKS_DONE = re.compile(r"^\s*(\d+)/(\d+) chunks done")


def _env(home: Path, marker: str) -> dict[str, str]:
    return {**clean_env(home), MARKER: marker}


def _kill_marked(marker: str) -> None:
    """SIGKILL, by pid, every process whose environment carries this module's marker."""
    needle = f"{MARKER}={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _killpg(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Streamed:
    """A CLI command whose stdout is read line by line as it runs."""

    def __init__(self, args: list[str], *, env: dict[str, str], cwd: Path) -> None:
        self.args = args
        self.err_path = cwd / f"stderr-{uuid.uuid4().hex[:8]}.txt"
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [*CLI, *args],
                env=env,
                cwd=cwd,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                start_new_session=True,
                # As from a terminal: SIGINT at its default. A shell's background job (CI
                # scripts started with '&') has SIGINT ignored, the child inherits that, and
                # a program started so rightly ignores Ctrl-C.
                preexec_fn=_default_sigint,
            )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def next_line(self, deadline: float) -> str | None:
        """The next stdout line; None at end of output."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no output line before the deadline; so far: {self.lines}")
            try:
                line = self._queue.get(timeout=min(left, 5))
            except queue.Empty:
                continue
            if line is not None:
                self.lines.append(line)
            return line

    def wait_for(self, pattern: re.Pattern[str], deadline: float) -> re.Match[str]:
        while (line := self.next_line(deadline)) is not None:
            if m := pattern.search(line):
                return m
        raise AssertionError(
            f"output ended without {pattern.pattern!r}: exit {self.proc.wait(timeout=60)}\n"
            + "\n".join(self.lines)
            + f"\nstderr:\n{self.stderr()[-4000:]}"
        )

    def drain(self, deadline: float) -> None:
        while self.next_line(deadline) is not None:
            pass

    def finish(self) -> int:
        deadline = time.monotonic() + DEADLINE_S
        self.drain(deadline)
        code = self.proc.wait(timeout=max(1, deadline - time.monotonic()))
        self._reader.join(timeout=30)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code

    def kill(self) -> None:
        _killpg(self.proc)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=30)
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    def stderr(self) -> str:
        return self.err_path.read_text()


def _run_ok(args: list[str], *, env: dict[str, str], cwd: Path) -> str:
    cmd = Streamed(args, env=env, cwd=cwd)
    try:
        code = cmd.finish()
    finally:
        cmd.kill()
    out = "\n".join(cmd.lines)
    assert code == 0, f"{args} exited {code}\n{out}\nstderr:\n{cmd.stderr()[-5000:]}"
    return out


def _archive_from(out: str, cwd: Path) -> Path:
    (path,) = re.findall(r"^archive: (.+)$", out, flags=re.M)
    return cwd / path


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


@pytest.fixture(scope="module")
def marker():
    value = uuid.uuid4().hex
    try:
        yield value
    finally:
        _kill_marked(value)


@pytest.fixture(scope="module")
def work(tmp_path_factory, marker, prefect_server):
    tmp = tmp_path_factory.mktemp("faults")
    env = _env(tmp / "prefect-home", marker)
    return {
        "tmp": tmp,
        "protocol": reference_protocol(tmp),
        "env": env,  # embedded defaults
        "server_env": {**env, "PREFECT_API_URL": prefect_server},
    }


@pytest.fixture(scope="module")
def killed_then_resumed(work, marker):
    """A run (chunks of one patient) SIGKILLed as a whole process group at a random moment
    after its first chunks finished, then `run --resume` in the same folder."""
    tmp, env = work["tmp"], work["env"]
    args = ["run", str(work["protocol"]), "--workers", "1", "--chunk-size", "1", "--reports", "reports"]  # fmt: skip
    seed = random.randrange(1 << 30)
    # The chunks take a few seconds and the fit ~10 s more: most kills land in one of them.
    delay = random.Random(seed).uniform(0.0, 8.0)
    cmd = Streamed(args, env=env, cwd=tmp)
    try:
        deadline = time.monotonic() + DEADLINE_S
        first = cmd.wait_for(CHUNKS_DONE, deadline)
        # Keep reading (the pipe must not fill) until the random moment, then kill.
        stop = time.monotonic() + delay
        while time.monotonic() < stop and cmd.proc.poll() is None:
            try:
                line = cmd._queue.get(timeout=max(0.01, stop - time.monotonic()))
            except queue.Empty:
                continue
            if line is None:
                break
            cmd.lines.append(line)
        exited_before_kill = cmd.proc.poll()
    finally:
        cmd.kill()
        _kill_marked(marker)  # its LocalCluster workers and ephemeral Prefect server
    trial_dir = tmp / "reports" / "tiny-orr"
    left = sorted(p.name for p in trial_dir.iterdir()) if trial_dir.exists() else []
    cached = sorted(p for p in (tmp / ".insilico" / "cache").rglob("*") if p.is_file())
    killed = {
        "seed": seed,
        "delay": delay,
        "first": first.group(0),
        "lines": list(cmd.lines),
        "exited_before_kill": exited_before_kill,
        "left": left,
        "cached_files": len(cached),
        "trial_dir": trial_dir,
    }
    time.sleep(1.1)  # run ids carry the second
    out = _run_ok([*args, "--resume"], env=env, cwd=tmp)
    return {"killed": killed, "resumed": _archive_from(out, tmp), "resumed_out": out}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, work):
    """A `dask scheduler` and two `dask worker --nworkers 1` processes, each its own group."""
    tmp = tmp_path_factory.mktemp("cluster")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []

    def start(cmd: list[str], log: str) -> subprocess.Popen:
        with open(tmp / log, "wb") as handle:
            p = subprocess.Popen(
                cmd,
                env=work["env"],
                cwd=tmp,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        procs.append(p)
        return p

    try:
        start(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            "scheduler.log",
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "dask scheduler not listening after 120 s"
                assert procs[0].poll() is None, (tmp / "scheduler.log").read_text()
                time.sleep(0.5)
        worker_cmd = [str(BIN / "dask"), "worker", address, "--nthreads", "1", "--nworkers", "1"]
        worker_cmd += ["--no-dashboard", "--host", "127.0.0.1"]
        workers = [start(worker_cmd, f"worker{i}.log") for i in range(2)]
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=180)
            # Worker address -> the `dask worker` process (group leader) it runs under.
            by_pid = {p.pid: p for p in workers}
            groups = {addr: by_pid[os.getpgid(pid)] for addr, pid in client.run(os.getpid).items()}
            assert len(groups) == 2 and len(set(groups.values())) == 2, groups
            yield {"address": address, "groups": groups, "client": client, "tmp": tmp}
    finally:
        for p in reversed(procs):
            _killpg(p, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _killpg(p)
                p.wait(timeout=30)
            _killpg(p)


def test_sigkilled_run_leaves_no_archive_and_resumes_identically(
    killed_then_resumed, reference_runs, work
):
    from insilico_trials.io.archive import verify_archive

    k = killed_then_resumed["killed"]
    out = killed_then_resumed["resumed_out"]
    context = (
        f"killed {k['delay']:.1f} s after {k['first']!r} (seed {k['seed']}); "
        f"exit before kill: {k['exited_before_kill']}; left: {k['left']}; "
        f"cache files: {k['cached_files']}; output:\n" + "\n".join(k["lines"])
        + "\nresumed run:\n" + out
    )  # fmt: skip
    done = [CHUNKS_DONE.search(line) for line in k["lines"]]
    first = next(m for m in done if m)
    assert int(first.group(1)) < int(first.group(2)), context
    # What the kill left: only hidden staging folders, or archives complete and verified.
    complete = []
    for name in k["left"]:
        if name.startswith("."):
            assert name.endswith(".partial"), context
            continue
        folder = k["trial_dir"] / name
        assert (folder / "manifest.json").is_file(), context
        assert verify_archive(folder) == [], context
        complete.append(name)
    if k["exited_before_kill"] is None:  # really killed: the run never printed its archive
        assert not any(line.startswith("archive: ") for line in k["lines"]), context
    if not complete:
        # Killed before its archive: the finished stages were on disk and were reused.
        assert k["cached_files"] > 0, context
        assert re.search(r"\d+/40 chunks taken from the task cache", out), context

    resumed = killed_then_resumed["resumed"]
    assert resumed.parent == k["trial_dir"] and resumed.name not in k["left"]
    assert verify_archive(resumed) == []
    assert "decision: " in out
    reference = _manifest(reference_runs["one"])
    assert _manifest(resumed)["protocol_sha256"] == reference["protocol_sha256"]
    assert _manifest(resumed)["outputs"] == reference["outputs"], context
    # The archive is written: the stage results (and chunk parts) are gone.
    assert not [p for p in (work["tmp"] / ".insilico" / "cache").rglob("*") if p.is_file()]


def test_worker_killed_mid_simulation(killed_then_resumed, cluster, reference_runs, work):
    """SIGKILL one of two `dask worker` process groups while chunks are running.

    (After the killed run: its clean-up kills every marked process, the cluster's included.)"""
    client = cluster["client"]
    reports = work["tmp"] / "reports-cluster"
    cmd = Streamed(
        ["run", str(work["protocol"]), "--dask-address", cluster["address"],
         "--chunk-size", "1", "--reports", str(reports)],
        env=work["server_env"], cwd=work["tmp"],
    )  # fmt: skip
    try:
        deadline = time.monotonic() + DEADLINE_S
        m = cmd.wait_for(CHUNKS_DONE, deadline)
        done_at_kill, total = int(m.group(1)), int(m.group(2))
        assert total == 40 and done_at_kill < total, m.group(0)
        # The worker with the most chunks in flight; its whole `dask worker` group dies.
        processing = client.processing()
        victim_addr = max(cluster["groups"], key=lambda a: len(processing.get(a, ())))
        in_flight = len(processing.get(victim_addr, ()))
        victim = cluster["groups"][victim_addr]
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
        lost_deadline = time.monotonic() + 120
        while victim_addr in client.scheduler_info()["workers"]:
            assert time.monotonic() < lost_deadline, "scheduler still lists the killed worker"
            time.sleep(0.2)
        code = cmd.finish()
    finally:
        cmd.kill()
    out = "\n".join(cmd.lines)
    assert code == 0, f"exit {code}\n{out}\nstderr:\n{cmd.stderr()[-5000:]}"
    assert in_flight >= 1, f"killed {victim_addr} with no task in flight, at {m.group(0)!r}"
    assert f"{total}/{total} chunks done" in out
    assert len(client.scheduler_info()["workers"]) == 1
    m_run = _manifest(_archive_from(out, work["tmp"]))
    m_ref = _manifest(reference_runs["one"])
    assert m_run["execution"]["dask_address"] == cluster["address"]
    assert m_run["execution"]["chunk_size"] == 1
    assert m_run["outputs"] == m_ref["outputs"]


def test_two_updates_at_once(reference_runs, work):
    from insilico_trials.io.archive import verify_archive

    tmp = work["tmp"]
    archive = tmp / "concurrent" / "archive"
    shutil.copytree(reference_runs["one"], archive)
    ids = [f"C{i:02d}" for i in range(8)]
    cuts = [_cut(tmp / "concurrent" / f"cut{j}", ids, {ids[1]}) for j in (1, 2)]
    cmds = [
        Streamed(["update", str(archive), "--data", str(cut)], env=work["server_env"], cwd=tmp)
        for cut in cuts
    ]
    try:
        codes = [c.finish() for c in cmds]
    finally:
        for c in cmds:
            c.kill()
    report = "\n".join(
        f"exit {code}: {' '.join(c.args)}\n" + "\n".join(c.lines) + "\nstderr:\n" + c.stderr()
        for code, c in zip(codes, cmds, strict=True)
    )
    updates = sorted(p.name for p in (archive / "updates").iterdir())
    if sorted(codes) == [0, 1]:
        loser = cmds[codes.index(1)]
        assert (
            f"error: {archive}: another update is running on this archive; nothing was "
            "written. Run the command again when it has finished."
        ) in loser.stderr(), report
        assert updates == ["001"], report
    else:
        assert codes == [0, 0], report
        assert updates == ["001", "002"], report
    assert verify_archive(archive) == [], report
    assert list(archive.rglob("*.partial")) == [], report
    assert json.loads((archive / "updates" / "001" / "update.json").read_text())["n_real"] == 8


def _marked_processes(marker: str) -> list[int]:
    needle = f"{MARKER}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_ctrl_c_stops_the_run_within_seconds_and_leaves_nothing(work, marker):
    """Ctrl-C in a terminal (SIGINT to the whole process group) while the outcome model
    samples: exit 130 within seconds with a one-line message, no archive, no orphan process,
    and the MLflow run marked KILLED."""
    import mlflow

    folder = work["tmp"] / "ctrl-c"
    folder.mkdir()
    env = {**work["env"], MARKER: marker + "-ctrl-c"}
    args = ["run", str(work["protocol"]), "--workers", "1", "--reports", "reports"]
    cmd = Streamed(args, env=env, cwd=folder)
    try:
        cmd.wait_for(re.compile(r"^\[\d/\d\] fit"), time.monotonic() + DEADLINE_S)
        time.sleep(1.0)
        os.killpg(cmd.proc.pid, signal.SIGINT)
        t = time.monotonic()
        code = cmd.finish()
        stopped_after = time.monotonic() - t
    finally:
        cmd.kill()
    err = cmd.stderr()
    assert code == 130, err[-3000:] + "\nstdout:\n" + "\n".join(cmd.lines[-40:])
    assert stopped_after < 30, stopped_after
    assert "interrupted: run stopped; nothing partial was written" in err
    assert "Traceback" not in err, err[-3000:]
    trial_dir = folder / "reports" / "tiny-orr"
    assert not trial_dir.exists() or list(trial_dir.iterdir()) == []
    time.sleep(2)
    assert _marked_processes(marker + "-ctrl-c") == []
    client = mlflow.tracking.MlflowClient(
        tracking_uri=f"sqlite:///{folder / '.insilico' / 'mlflow.db'}"
    )
    (exp,) = [e for e in client.search_experiments() if e.name == "tiny-orr"]
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "KILLED"
