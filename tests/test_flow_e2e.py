"""End to end: the `run` flow on Prefect (test harness) and Dask, archived, re-run, tampered.

Real components: Prefect's API (harness started once per session), a Dask LocalCluster, a
real Dask scheduler with two worker processes on 127.0.0.1, MLflow on a SQLite store, PyMC/nutpie.
The reference runs are session fixtures (tests/conftest.py); a run killed and resumed is in
tests/test_faults.py.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from insilico_trials.app.cli import main
from tests.conftest import free_port, run_in_process

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(reference_runs):
    """The session's reference runs (tests/conftest.py): 1 worker, and 2 workers with chunks of 3."""
    return reference_runs


def test_archive_layout_and_manifest(runs):
    archive = runs["one"]
    assert archive.parent.parent == runs["tmp"] / "reports"
    manifest = json.loads((archive / "manifest.json").read_text())
    for name in ("cohort.parquet", "endpoints.parquet", "summary.json", "posterior.parquet"):
        assert name in manifest["outputs"]
    # the build-time test results are archived when this checkout has recorded them
    # (build-artifacts/junit.xml from an earlier pytest); a fresh clone has none yet
    assert manifest["inputs"].keys() - {"verification/junit.xml"} == {"protocol.yaml"}
    assert re.fullmatch(r"[0-9a-f]{64}", manifest["uv_lock_sha256"])
    assert manifest["prefect_flow_run_id"] and manifest["mlflow_run_id"]
    assert manifest["seeds"] == {"protocol": 20261124}
    summary = json.loads((archive / "summary.json").read_text())
    assert 0.0 <= summary["probability"] <= 1.0
    assert summary["decision"] in {"go", "no-go", "not reported (convergence failed)"}
    assert (archive / "report.html").stat().st_size > 10_000


def test_worker_count_and_chunking_do_not_change_numbers(runs):
    m1 = json.loads((runs["one"] / "manifest.json").read_text())
    m2 = json.loads((runs["two"] / "manifest.json").read_text())
    assert m1["outputs"] == m2["outputs"]
    assert m1["execution"]["chunk_size"] != m2["execution"]["chunk_size"]


def test_mlflow_run_recorded(runs):
    import mlflow

    manifest = json.loads((runs["one"] / "manifest.json").read_text())
    client = mlflow.tracking.MlflowClient(
        tracking_uri=f"sqlite:///{runs['tmp'] / '.insilico' / 'mlflow.db'}"
    )
    run = client.get_run(manifest["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["trial_id"] == "tiny-orr"
    assert run.data.metrics["probability"] == pytest.approx(
        json.loads((runs["one"] / "summary.json").read_text())["probability"]
    )
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "archive")}
    assert "archive/manifest.json" in artifacts


def test_rerun_identical_then_tampered(runs, capsys, tmp_path):
    copy = tmp_path / "archive"
    shutil.copytree(runs["one"], copy)
    assert main(["rerun", str(copy), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "DIFFERENT" not in out and "numeric outputs identical" in out
    (copy / "endpoints.parquet").write_bytes((copy / "endpoints.parquet").read_bytes() + b"\0")
    assert main(["rerun", str(copy)]) == 1
    assert "endpoints.parquet: modified" in capsys.readouterr().err
    (copy / "summary.json").unlink()
    assert main(["rerun", str(copy)]) == 1
    assert "summary.json: missing" in capsys.readouterr().err


def test_report_rebuilt_from_copied_archive(runs, tmp_path):
    """The rebuilt report (beside the archive) equals the archived one but for its time, and
    the archive is not written: its manifest keeps its bytes."""
    from insilico_trials.io.archive import sha256_file, verify_archive

    copy = tmp_path / "elsewhere" / "archive"
    shutil.copytree(runs["one"], copy)
    original = (copy / "report.html").read_text()
    manifest = sha256_file(copy / "manifest.json")
    assert main(["report", str(copy)]) == 0
    rebuilt = (copy.parent / "archive-report.html").read_text()

    def strip(html: str) -> str:
        return re.sub(r"generated \S+", "generated X", html)

    assert strip(rebuilt) == strip(original)
    assert sha256_file(copy / "manifest.json") == manifest
    assert verify_archive(copy) == []
    assert main(["report", str(copy), "--output", str(copy / "inside.html")]) == 2


def test_real_dask_cluster_matches_localcluster(runs, monkeypatch):
    """A `dask scheduler` and two `dask worker` processes on 127.0.0.1, bit-for-bit equal."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    bindir = Path(sys.executable).parent
    procs = [
        subprocess.Popen(
            [
                str(bindir / "dask"),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-dashboard",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        from distributed import Client

        deadline = time.time() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [
                        str(bindir / "dask"),
                        "worker",
                        address,
                        "--nthreads",
                        "1",
                        "--no-dashboard",
                        "--host",
                        "127.0.0.1",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            assert len(client.scheduler_info()["workers"]) == 2
        monkeypatch.chdir(runs["tmp"])
        remote = run_in_process(runs["tmp"], runs["protocol"], "--dask-address", address)
        m_local = json.loads((runs["one"] / "manifest.json").read_text())
        m_remote = json.loads((remote / "manifest.json").read_text())
        assert m_remote["execution"]["dask_address"] == address
        assert m_remote["outputs"] == m_local["outputs"]
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


def _cut(folder: Path, ids: list[str], responders: set[str], arm: str = "control") -> Path:
    """A real data cut in ADaM shape: control subjects with a best overall response."""
    import pandas as pd

    folder.mkdir(parents=True)
    pd.DataFrame({"USUBJID": ids, "ARM": arm, "AGE": [60] * len(ids)}).to_csv(
        folder / "adsl.csv", index=False
    )
    pd.DataFrame(
        {"USUBJID": ids, "PARAMCD": "PFS", "AVAL": [90.0] * len(ids), "CNSR": [1] * len(ids)}
    ).to_csv(folder / "adtte.csv", index=False)
    pd.DataFrame(
        {
            "USUBJID": ids,
            "PARAMCD": "BOR",
            "AVALC": ["PR" if i in responders else "SD" for i in ids],
        }
    ).to_csv(folder / "adrs.csv", index=False)
    return folder


def test_update_appends_cuts_and_rejects_bad_data(runs, tmp_path, capsys, monkeypatch):
    from insilico_trials.io.archive import verify_archive

    monkeypatch.chdir(runs["tmp"])
    archive = tmp_path / "archive"
    shutil.copytree(runs["one"], archive)
    # A bad cut: a negative AVAL. Exit 2 naming the row; nothing appended.
    bad = _cut(tmp_path / "bad", ["R1", "R2"], set())
    (bad / "adtte.csv").write_text("USUBJID,PARAMCD,AVAL,CNSR\nR1,PFS,-3,1\nR2,PFS,4,0\n")
    assert main(["update", str(archive), "--data", str(bad)]) == 2
    assert "AVAL" in capsys.readouterr().err
    assert not (archive / "updates").exists()

    # Three cuts of 10 real control patients, 1 responder each (10%). The first carries a
    # file that is not a dataset (with identifying text): it is neither read nor archived.
    for k in range(3):
        ids = [f"R{k}{i}" for i in range(10)]
        cut = _cut(tmp_path / f"cut{k}", ids, {ids[0]})
        if k == 0:
            (cut / "notes.txt").write_text("Jane Doe, born 1961-02-03, 1 High Street\n")
        assert main(["update", str(archive), "--data", str(cut)]) == 0
    out = capsys.readouterr().out
    assert "update 003: 30 real control patients" in out
    assert "ignored in" in out and "notes.txt" in out
    kept = sorted(p.name for p in (archive / "updates" / "001" / "cut").iterdir())
    assert kept == ["adrs.csv", "adsl.csv", "adtte.csv"]
    records = [
        json.loads((archive / "updates" / f"{k:03d}" / "update.json").read_text())
        for k in (1, 2, 3)
    ]
    assert [r["n_real"] for r in records] == [10, 20, 30]
    assert all(0.0 < r["posterior_mean"] < 1.0 for r in records)
    # robust beta mixture: exact, no MCMC; each record states its engine
    assert all(r["engine"] == "closed_form" and r["converged"] for r in records)
    assert "exact (closed form)" in out and "refit (closed form, in process)" in out
    # arithmetic on a few counts: no flow to orchestrate, and the updates' manifests say so
    for k in (1, 2, 3):
        meta = json.loads((archive / "updates" / f"{k:03d}" / "manifest.json").read_text())
        assert meta["prefect_flow_run_id"] == "" and meta["mlflow_run_id"]
    assert verify_archive(archive) == []
    # Chained manifests: update 2 records the hash of update 1's manifest.
    from insilico_trials.io.archive import sha256_file

    m2 = json.loads((archive / "updates" / "002" / "manifest.json").read_text())
    assert m2["previous_update_manifest_sha256"] == sha256_file(
        archive / "updates" / "001" / "manifest.json"
    )

    # rerun replays each control-arm update with the engine its record states
    assert main(["rerun", str(archive), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    for k in (1, 2, 3):
        assert re.search(rf"updates/00{k}/update\.json \(control, closed_form\) +identical", out)
        assert re.search(rf"updates/00{k}/states\.csv +identical", out)
    assert "DIFFERENT" not in out

    # A re-sent subject with different content is flagged, and recorded.
    changed = _cut(tmp_path / "changed", ["R00", "R40"], {"R40"})
    assert main(["update", str(archive), "--data", str(changed)]) == 0
    assert "flagged: subject R00" in capsys.readouterr().err
    assert json.loads((archive / "updates" / "004" / "update.json").read_text())["flags"]

    # Nested MLflow runs under the run's MLflow run.
    import mlflow

    manifest = json.loads((archive / "manifest.json").read_text())
    client = mlflow.tracking.MlflowClient(
        tracking_uri=f"sqlite:///{runs['tmp'] / '.insilico' / 'mlflow.db'}"
    )
    exp = client.get_experiment_by_name("tiny-orr")
    children = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{manifest['mlflow_run_id']}'",
    )
    assert len(children) == 4

    # The tracking store's record matches the archive; an update removed from the end of the
    # chain (which no file check can see) is caught against it.
    assert main(["report", str(archive), "--check-tracking"]) == 0
    shutil.rmtree(archive / "updates" / "004")
    assert verify_archive(archive) == []
    assert main(["report", str(archive), "--check-tracking"]) == 1
    err = capsys.readouterr().err
    assert "updates/004: recorded by the tracking store, missing from the archive" in err


def _two_arm_cut(folder: Path, k: int, responders: dict[str, int]) -> Path:
    """A cut of 8 control ("Placebo" in ADSL) and 8 treatment ("TKI 200 mg") patients, with
    the given number of responders per ADSL arm, and 2 patients of an arm the protocol has not."""
    import pandas as pd

    rows = []
    for arm, n in (("Placebo", 8), ("TKI 200 mg", 8), ("Open-label extension", 2)):
        for i in range(n):
            rows.append((f"S{k}-{arm[:3]}-{i}", arm, i < responders.get(arm, 0)))
    folder.mkdir(parents=True)
    ids = [r[0] for r in rows]
    pd.DataFrame({"USUBJID": ids, "ARM": [r[1] for r in rows]}).to_csv(
        folder / "adsl.csv", index=False
    )
    pd.DataFrame(
        {"USUBJID": ids, "PARAMCD": "BOR", "AVALC": ["PR" if r[2] else "SD" for r in rows]}
    ).to_csv(folder / "adrs.csv", index=False)
    pd.DataFrame(
        {"USUBJID": ids, "PARAMCD": "PFS", "AVAL": [90.0] * len(ids), "CNSR": [1] * len(ids)}
    ).to_csv(folder / "adtte.csv", index=False)
    return folder


def final_probability_above(records: list[dict]) -> bool:
    e = records[-1]["effects"][0]
    return e["probability"] > e["threshold"]


def test_update_decides_on_both_arms_against_the_hybrid_control(
    runs, tmp_path, capsys, monkeypatch
):
    """Each cut's update applies the protocol's analysis to the real treatment-arm patients
    against the hybrid control (real controls with the synthetic control's prior): exact
    (closed form) for this binary protocol. After the last of three cuts the decision equals a
    direct analysis of all real data with the same prior: the design's lattice table and the
    run's own MCMC analysis (within Monte Carlo error); the intermediate states are archived,
    and rerun replays them identically."""
    from insilico_trials.infer.analysis import analyse_frame
    from insilico_trials.infer.design import binary_decision_table
    from insilico_trials.run.update import virtual_source
    from insilico_trials.spec.protocol import load_protocol

    monkeypatch.chdir(runs["tmp"])
    archive = tmp_path / "archive"
    shutil.copytree(runs["one"], archive)
    arms = ["--control-arm", "Placebo", "--arm", "tki200=TKI 200 mg"]
    responders = [{"Placebo": 1, "TKI 200 mg": 3}, {"Placebo": 2, "TKI 200 mg": 4},
                  {"Placebo": 1, "TKI 200 mg": 5}]  # fmt: skip
    for k, resp in enumerate(responders):
        cut = _two_arm_cut(tmp_path / f"cut{k}", k, resp)
        assert main(["update", str(archive), "--data", str(cut), *arms]) == 0
    out = capsys.readouterr().out
    assert "2 real patients of ADSL ARM ['Open-label extension'] belong to no protocol arm" in out
    assert "tki200 vs hybrid control (24 real patients)" in out and "% virtual)" in out
    records = [
        json.loads((archive / "updates" / f"{k:03d}" / "update.json").read_text())
        for k in (1, 2, 3)
    ]
    effects = [r["effects"][0] for r in records]
    assert [e["n_treatment"] for e in effects] == [8, 16, 24]
    assert [e["n_control"] for e in effects] == [8, 16, 24]
    assert all(e["engine"] == "closed_form" and e["probability_mcse"] == 0.0 for e in effects)
    assert records[-1]["real_arms"] == {"control": "Placebo", "tki200": "TKI 200 mg"}
    # The plan (no design section): one final analysis of the arms' planned sizes. Cuts 1 and
    # 2 (8 + 8, 16 + 16) come before it, each with the exact predictive probability of
    # success; cut 3 (24 + 24) has more real patients than planned: the final verdict.
    protocol = load_protocol(archive / "protocol.yaml")
    n = protocol.control_arm.n
    assert 16 <= n < 24 and protocol.treatment_arms[0].n == n
    looks = [r["look"] for r in records]
    assert [lk["look"] for lk in looks] == [0, 0, 1] and looks[0]["planned"] == [[n, n]]
    assert all(0.0 <= lk["pos"] <= 1.0 and lk["pos_method"].startswith("exact") for lk in looks[:2])
    assert looks[-1]["pos"] is None
    assert looks[-1]["verdict"] == (
        "success (final analysis)"
        if final_probability_above(records)
        else "failure (final analysis)"
    )

    # A direct analysis of all real data (4 of 24 control, 12 of 24 treatment responders)
    prior = virtual_source(json.loads((archive / "synthetic_control.json").read_text())).prior
    dec = protocol.analysis.decision
    table, means = binary_decision_table(prior, 24, 24, delta=dec.delta, nodes=4000)
    final = effects[-1]
    assert final["probability"] == pytest.approx(table[4, 12], abs=1e-7)
    assert final["mean"] == pytest.approx(means[4, 12], abs=1e-12)
    assert final["decision"] == ("go" if table[4, 12] > dec.threshold else "no-go")
    frame = pd.DataFrame(
        {"arm": ["control"] * 24 + ["tki200"] * 24,
         "response": [1] * 4 + [0] * 20 + [1] * 12 + [0] * 12}
    )  # fmt: skip
    fit = analyse_frame(protocol, frame, prior)
    ess = float(fit.summary.set_index("param").loc["rate_difference", "ess_bulk"])
    mcse = (fit.probability * (1 - fit.probability) / ess) ** 0.5
    assert abs(final["probability"] - fit.probability) < 5 * mcse + 1e-3

    # rerun's replay of the updates (the run's own replay is tested above): effects and looks
    # included, every record identical
    from insilico_trials.app.commands import replay_control_updates

    rows = replay_control_updates(archive, protocol)
    assert [(name, same) for name, same, _ in rows if "update.json" in name] == [
        (f"updates/00{k}/update.json (control, closed_form)", True) for k in (1, 2, 3)
    ]
    assert all(same for _, same, _ in rows), rows
    # a record whose decision was edited is caught by the replay
    path = archive / "updates" / "003" / "update.json"
    edited = json.loads(path.read_text())
    edited["effects"][0]["probability"] = 0.5
    path.write_text(json.dumps(edited))
    rows = replay_control_updates(archive, protocol)
    assert ("updates/003/update.json (control, closed_form)", False, "differs: effects") in rows


def test_cut_files_reach_the_tracking_store_only_when_the_protocol_asks(
    runs, tmp_path, monkeypatch
):
    """``real_data.track_cut_files``: the cut's files are copied to the MLflow run of the
    update only when the protocol says so (default: the update's record and manifest only)."""
    import mlflow

    from insilico_trials.app import commands
    from insilico_trials.testing import with_fields

    monkeypatch.chdir(runs["tmp"])
    archive = tmp_path / "archive"
    shutil.copytree(runs["one"], archive)
    verified = commands.require_verified

    def asks(*args, **kwargs):
        return with_fields(verified(*args, **kwargs), {"real_data.track_cut_files": True})

    monkeypatch.setattr(commands, "require_verified", asks)
    cut = _cut(tmp_path / "cut", ["T1", "T2", "T3"], {"T1"})
    assert main(["update", str(archive), "--data", str(cut)]) == 0
    run_id = json.loads((archive / "updates" / "001" / "manifest.json").read_text())[
        "mlflow_run_id"
    ]
    client = mlflow.tracking.MlflowClient(
        tracking_uri=f"sqlite:///{runs['tmp'] / '.insilico' / 'mlflow.db'}"
    )
    logged = {a.path for a in client.list_artifacts(run_id, "updates/001/cut")}
    assert logged == {f"updates/001/cut/{n}" for n in ("adrs.csv", "adsl.csv", "adtte.csv")}


def test_update_lock_refuses_a_concurrent_update(runs, tmp_path, capsys):
    from insilico_trials.io.updates import archive_lock

    archive = tmp_path / "archive"
    shutil.copytree(runs["one"], archive)
    cut = _cut(tmp_path / "cut", ["Q1"], set())
    with archive_lock(archive):  # another update holds the archive
        assert main(["update", str(archive), "--data", str(cut)]) == 1
    assert "another update is running on this archive" in capsys.readouterr().err
    assert not (archive / "updates").exists()


def test_disk_full_while_writing_leaves_previous_state_intact(runs, tmp_path, capsys, monkeypatch):
    """ENOSPC in the middle of writing: a clear error, exit 1, nothing partial, nothing lost."""
    import errno

    from insilico_trials.io import spool as spool_module
    from insilico_trials.io import updates as updates_module
    from insilico_trials.io.archive import verify_archive

    monkeypatch.chdir(runs["tmp"])
    real_write = spool_module.write_parts
    calls = []

    def full_disk(parts, dest, **kwargs):
        calls.append(dest)
        if len(calls) == 3:  # cohort and endpoints are in the staging folder; exposure fails
            raise OSError(errno.ENOSPC, "No space left on device", str(dest))
        return real_write(parts, dest, **kwargs)

    monkeypatch.setattr(spool_module, "write_parts", full_disk)
    reports = runs["tmp"] / "reports"
    before = sorted(p.name for p in (reports / "tiny-orr").iterdir())
    assert main(["run", str(runs["protocol"]), "--reports", str(reports), "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert "cannot write the archive" in err and "No space left on device" in err
    assert "nothing was written and earlier archives are untouched" in err
    assert len(calls) == 3 and calls[2].name == "exposure.parquet"
    assert sorted(p.name for p in (reports / "tiny-orr").iterdir()) == before
    assert verify_archive(runs["one"]) == []

    archive = tmp_path / "archive"
    shutil.copytree(runs["one"], archive)
    assert (
        main(["update", str(archive), "--data", str(_cut(tmp_path / "c1", ["U1", "U2"], {"U1"}))])
        == 0
    )

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(updates_module, "write_manifest", no_space)
    assert main(["update", str(archive), "--data", str(_cut(tmp_path / "c2", ["U3"], set()))]) == 1
    assert "cannot write update 002" in capsys.readouterr().err
    assert [p.name for p in (archive / "updates").iterdir()] == ["001"]
    assert verify_archive(archive) == []


def test_deployable_entry_flow_gives_the_cli_numbers(runs, monkeypatch):
    """flows/entry.py:run_protocol (what prefect.yaml deploys) runs the same trial."""
    from insilico_trials.adapters.deploy import run_protocol

    monkeypatch.chdir(runs["tmp"])
    reports = runs["tmp"] / "entry-reports"
    run_protocol(str(runs["protocol"]), workers=1, reports=str(reports))
    (manifest,) = reports.rglob("manifest.json")
    reference = json.loads((runs["one"] / "manifest.json").read_text())
    assert json.loads(manifest.read_text())["outputs"] == reference["outputs"]
