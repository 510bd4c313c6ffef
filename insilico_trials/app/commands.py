"""What the CLI's ``run``, ``rerun``, ``report`` and ``update`` do, end to end.

The edge of the system: it validates input before any work, probes the services, starts
tracking, runs the library (``run_trial`` on the Prefect-on-Dask executor), writes the archive
atomically and prints progress and a timing summary. Failures are raised as
:class:`~insilico_trials.errors.InsilicoError`; only :mod:`insilico_trials.app.cli` turns them
into messages and exit codes (the deployable flows let them fail the flow run).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from insilico_trials.adapters import interrupts
from insilico_trials.adapters.prefect_dask import embedded_services, services_starting
from insilico_trials.errors import InputError, RunFailure
from insilico_trials.io.archive import (
    MANIFEST,
    atomic_write_text,
    check_writable,
    compare_outputs,
    read_manifest,
    sha256_file,
    staged_directory,
    verify_archive,
    write_manifest,
)
from insilico_trials.run.executor import WARM
from insilico_trials.spec.protocol import ProtocolError, TrialProtocol, load_protocol

if TYPE_CHECKING:
    from insilico_trials.run.trial import RunResult


class ArchiveWriteError(RunFailure):
    """The archive could not be written (disk full, permission denied); nothing was left."""


__all__ = [
    "ArchiveMismatch",
    "ArchiveWriteError",
    "ServiceUnreachable",
    "execute_rerun",
    "execute_run",
    "execute_update",
    "rebuild_report",
    "run_to_archive",
]


# Set by the next line a command prints (armed by execute_run just before its flow starts).
_ON_NEXT_LINE: list[threading.Event] = []


def _say(msg: str) -> None:
    """Print a progress line. (A module function, not a closure: the flow's context, which
    Prefect sends with each task, pickles it by reference.)"""
    while _ON_NEXT_LINE:
        _ON_NEXT_LINE.pop().set()
    print(msg, flush=True)


class ServiceUnreachable(RunFailure):
    """A configured service (Prefect API, MLflow store) does not answer; nothing was run."""


class ArchiveMismatch(RunFailure):
    """An archive's files do not match its manifest (missing, modified or unexpected files)."""


def open_archive(archive: Path) -> dict[str, Any]:
    """The archive's manifest.

    Raises
    ------
    InputError
        When ``archive`` is not a folder or holds no readable run manifest.
    """
    if not archive.is_dir():
        raise InputError(
            f"{archive}: not a folder (expected a run archive)", where=str(archive),
            expected="a run archive folder",
        )  # fmt: skip
    try:
        manifest = read_manifest(archive)
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(str(exc), where=str(archive)) from None
    if "run_id" not in manifest or "trial_id" not in manifest:
        raise InputError(
            f"{archive}: this is not a run archive (its manifest names no run; an update folder "
            "is updates/NNN inside a run archive: give the run archive's folder)",
            where=str(archive), expected="a run archive folder",
        )  # fmt: skip
    return manifest


def require_verified(
    archive: Path, manifest: dict[str, Any], *, verify_key: Path | None = None
) -> TrialProtocol:
    """The archive's protocol, once everything that can be checked has been: every file
    against the manifests (paths confined, no links, the update chain unbroken), the protocol
    against the hash the run id and the manifest record, and, with ``verify_key``, each
    manifest's Ed25519 signature. Provenance that does not verify is refused, never shown.

    Raises
    ------
    ArchiveMismatch
        Naming every problem found.
    """
    problems = [str(p) for p in verify_archive(archive)]
    protocol = None
    if not any(p.startswith("protocol.yaml:") for p in problems):
        try:
            protocol = load_protocol(archive / "protocol.yaml")
        except ProtocolError as exc:
            problems.append(
                f"protocol.yaml: does not load ({exc.issues[0] if exc.issues else exc})"
            )
    if protocol is not None:
        digest = protocol.sha256()
        checks = [
            (manifest.get("protocol_sha256") == digest, "protocol_sha256",
             manifest.get("protocol_sha256"), digest),
            (str(manifest.get("run_id", "")).endswith(f"-{digest[:8]}"), "run_id",
             manifest.get("run_id"), f"...-{digest[:8]}"),
            (manifest.get("trial_id") == protocol.trial_id, "trial_id",
             manifest.get("trial_id"), protocol.trial_id),
            ((manifest.get("seeds") or {}).get("protocol") == protocol.seed, "seeds.protocol",
             (manifest.get("seeds") or {}).get("protocol"), protocol.seed),
        ]  # fmt: skip
        for ok, field, recorded, actual in checks:
            if not ok:
                problems.append(
                    f"protocol.yaml: the protocol is not the one the run recorded (manifest "
                    f"{field} {recorded!r}, the archived protocol gives {actual!r})"
                )
    if verify_key is not None:
        from insilico_trials.io.archive import update_folders
        from insilico_trials.io.signing import signature_problem

        for folder in [archive, *update_folders(archive)]:
            if why := signature_problem(folder, verify_key):
                rel = folder.relative_to(archive).as_posix()
                problems.append(f"{'' if rel == '.' else rel + '/'}manifest.json: {why}")
    if problems or protocol is None:
        raise ArchiveMismatch(
            f"{archive}: the archive does not verify; nothing was shown or re-run:\n"
            + "\n".join(f"  {p}" for p in problems),
            where=str(archive),
        )
    return protocol


def require_tracking_record(archive: Path, manifest: dict[str, Any]) -> None:
    """Compare the archive with the tracking store's record of its run: the run manifest's
    SHA-256 and each update's. Catches what no file check can: an archive and its manifest
    rewritten together, and an update removed from the end of the chain.

    Raises
    ------
    ArchiveMismatch
        When the record differs; ``TrackingError`` when the store has no record of the run.
    """
    from insilico_trials.io.archive import update_folders

    run_id = manifest.get("mlflow_run_id") or ""
    if not run_id:
        raise ArchiveMismatch(f"{archive}: the manifest names no MLflow run to check against")
    record = reach_tracker().recorded(run_id)
    problems = []
    if record["manifest_sha256"] != sha256_file(archive / MANIFEST):
        problems.append(
            f"manifest.json: not the manifest the tracking store recorded for run {run_id} "
            f"(recorded {str(record['manifest_sha256'])[:12]}...)"
        )
    present = {int(f.name): sha256_file(f / MANIFEST) for f in update_folders(archive)}
    for number in sorted(set(record["updates"]) | set(present)):
        rel = f"updates/{number:03d}"
        if number not in present:
            problems.append(f"{rel}: recorded by the tracking store, missing from the archive")
        elif number not in record["updates"]:
            problems.append(f"{rel}: not recorded by the tracking store")
        elif record["updates"][number] != present[number]:
            problems.append(f"{rel}/manifest.json: differs from the tracking store's record")
    if problems:
        raise ArchiveMismatch(
            f"{archive}: the archive does not match the tracking store's record:\n"
            + "\n".join(f"  {p}" for p in problems),
            where=str(archive),
        )


def require_dask(dask_address: str | None) -> None:
    """With ``--dask-address``, check the scheduler answers before any work starts."""
    if dask_address:
        from insilico_trials.adapters.prefect_dask import reach_dask_scheduler

        try:
            problem = reach_dask_scheduler(dask_address)
        except ValueError as exc:
            raise InputError(f"{exc}; nothing was run", actual=dask_address) from None
        if problem:
            raise ServiceUnreachable(problem)


def require_workers(workers: int | None, dask_address: str | None) -> None:
    """A LocalCluster of more worker processes than a few per CPU only thrashes the machine:
    refused before any work (an existing cluster, ``--dask-address``, sizes itself)."""
    import os

    limit = 4 * (os.cpu_count() or 1)
    if workers is not None and dask_address is None and workers > limit:
        raise InputError(
            f"--workers: {workers} worker processes on {os.cpu_count()} CPUs; at most {limit} "
            "(4 per CPU) on this machine, or attach a cluster with --dask-address",
            actual=workers, expected=f"<= {limit}",
        )  # fmt: skip


def require_writable(folder: Path, what: str) -> None:
    """Raise :class:`RunFailure` before any work when ``folder`` takes no new files."""
    if problem := check_writable(folder):
        raise RunFailure(
            f"cannot write the {what} folder ({problem}); nothing was run. "
            "Choose another folder with --reports, or make this one writable.",
            where=str(folder),
        )


def require_prefect_api() -> None:
    """When ``PREFECT_API_URL`` names a server, check it answers before any work starts."""
    from insilico_trials.adapters.prefect_dask import reach_prefect_api as reach

    if problem := reach():
        raise ServiceUnreachable(problem)


def preload_after(event: threading.Event, *modules: str) -> None:
    """Import ``modules`` in a daemon thread once ``event`` is set (a failure is left to the
    import that needs them)."""
    import importlib

    def target() -> None:
        event.wait()
        for name in modules:
            with contextlib.suppress(Exception):
                importlib.import_module(name)

    threading.Thread(target=target, name="insilico-preload", daemon=True).start()


def reach_tracker(*, parent_run_id: str | None = None) -> Any:
    """An MLflow tracker whose store answered (raises ``TrackingError`` otherwise).

    Called before any work starts, so an unreachable tracking server costs nothing.
    """
    from insilico_trials.adapters.mlflow_tracker import MlflowTracker

    tracker = MlflowTracker(Path.cwd(), parent_run_id=parent_run_id)
    tracker.check()
    return tracker


def add_flow_timings(
    timings: dict[str, float], flow_total: float, stages: dict[str, float]
) -> None:
    """The orchestrated part of a command in the timing summary: its stages, and the rest of
    its time as the start of the Prefect API and the Dask cluster."""
    timings["flow"] = flow_total
    timings["  start Prefect API and Dask cluster"] = flow_total - sum(stages.values())
    for k, v in stages.items():
        timings[f"  {k}"] = v


def _timing_table(timings: dict[str, float], total: float) -> str:
    """The summary; ``total`` counts from the start of the process (imports included), the
    time before the command's first stage is shown as "start (imports, checks)"."""
    from insilico_trials.app import STARTED

    before = max(0.0, time.perf_counter() - STARTED - total)
    timings = {"start (imports, checks)": before, **timings}
    total += before
    width = max(len(k) for k in timings)
    lines = ["timing summary:"]
    lines += [f"  {k:<{width}}  {v:7.1f} s" for k, v in timings.items()]
    lines.append(f"  {'total':<{width}}  {total:7.1f} s")
    return "\n".join(lines)


def run_to_archive(
    protocol: TrialProtocol,
    protocol_path: Path,
    final: Path,
    *,
    workers: int | None,
    dask_address: str | None,
    chunk_size: int | None,
    tracker: Any,
    timings: dict[str, float],
    resume: bool = False,
    sign_key: Path | None = None,
    flow_started: threading.Event | None = None,
) -> dict[str, Any]:
    """Run the flow and write the complete archive at ``final`` (atomically). Returns the manifest.

    ``flow_started`` is set when the flow reports its first stage (the next line printed).

    Raises
    ------
    ArchiveWriteError
        When the archive cannot be written (disk full, permission denied).
    """
    t = time.perf_counter()
    from insilico_trials.adapters.prefect_dask import PrefectDask, RunCache, quiet_prefect
    from insilico_trials.io.archive import sha256_bytes
    from insilico_trials.io.outputs import code_sha256
    from insilico_trials.io.spool import ParquetSpool
    from insilico_trials.run.trial import run_trial
    from insilico_trials.sim import trial

    quiet_prefect()
    timings["driver imports (while the services start)"] = time.perf_counter() - t
    started = dt.datetime.now(dt.UTC)
    if flow_started is not None:
        _ON_NEXT_LINE.append(flow_started)
    t = time.perf_counter()
    cache = RunCache(
        root=str((Path.cwd() / ".insilico" / "cache").resolve()),
        tag=sha256_bytes(f"{protocol.sha256()}:{code_sha256()}".encode())[:24],
        resume=resume,
    )
    result = run_trial(
        protocol,
        executor=PrefectDask(workers=workers, dask_address=dask_address, cache=cache),
        sink=ParquetSpool(cache.folder / "parts", keep=tuple(trial.summary_columns(protocol))),
        chunk_size=chunk_size,
        progress=_say,
    )
    add_flow_timings(timings, time.perf_counter() - t, result.timings)
    t = time.perf_counter()
    try:
        manifest = _write_archive(
            protocol,
            protocol_path,
            final,
            result,
            tracker,
            started,
            workers,
            dask_address,
            chunk_size,
            sign_key,
        )
    except OSError as exc:
        raise ArchiveWriteError(
            f"cannot write the archive {final}: {exc.strerror or exc}"
            + (f" ({exc.filename})" if exc.filename else "")
            + "; nothing was written and earlier archives are untouched"
        ) from exc
    timings["archive and report"] = time.perf_counter() - t
    # The run is archived: its stage results are no longer needed for a resume.
    shutil.rmtree(cache.folder, ignore_errors=True)
    return manifest


def _write_archive(
    protocol: TrialProtocol,
    protocol_path: Path,
    final: Path,
    result: RunResult,
    tracker: Any,
    started: dt.datetime,
    workers: int | None,
    dask_address: str | None,
    chunk_size: int | None,
    sign_key: Path | None,
) -> dict[str, Any]:
    from insilico_trials.io.outputs import environment_provenance, write_run_outputs
    from insilico_trials.report import render_report

    tracker.wait()  # the run id goes into the manifest

    with staged_directory(final) as stage:
        groups = write_run_outputs(stage, protocol_path, result)
        design_files = attach_design(stage, protocol, final.parent)
        groups["inputs"] += design_files + attach_test_results(stage)
        meta = {
            "run_id": final.name,
            "trial_id": protocol.trial_id,
            "protocol_sha256": protocol.sha256(),
            "protocol_file_sha256": sha256_file(protocol_path),
            "seeds": {"protocol": protocol.seed},
            "prefect_flow_run_id": result.run_id,
            "mlflow_run_id": tracker.run_id or "",
            "mlflow_tracking_uri": getattr(tracker, "uri", ""),
            "started_utc": started.isoformat(timespec="seconds"),
            "ended_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "execution": {
                "workers": workers,
                "dask_address": dask_address or "LocalCluster",
                "chunk_size": chunk_size or protocol.execution.chunk_size,
            },
            **environment_provenance(),
        }
        # The report shows provenance as the manifest stores it (sorted JSON), so a rebuild
        # from the manifest renders the same text.
        meta = json.loads(json.dumps(meta, sort_keys=True))
        atomic_write_text(stage / "report.html", render_report(stage, meta))
        manifest = write_manifest(
            stage,
            inputs=groups["inputs"],
            outputs=groups["outputs"],
            documents=["report.html"],
            meta=meta,
        )
        if sign_key is not None:
            from insilico_trials.io.signing import sign_manifest

            sign_manifest(stage, sign_key)
    return manifest


def attach_test_results(stage: Path) -> list[str]:
    """Archive the code-verification evidence the report shows: the test suite's JUnit XML
    recorded at build time (``build-artifacts/junit.xml`` or ``$INSILICO_TEST_RESULTS``), so
    a report rebuilt later shows what was true when the run was made, not what the checkout
    holds then. Returns the archived name, or nothing when no results were recorded."""
    from insilico_trials.report.verification import ARCHIVED, recorded_test_results

    source = recorded_test_results()
    if source is None or not source.is_file():
        return []
    (stage / ARCHIVED).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, stage / ARCHIVED)
    return [ARCHIVED]


def attach_design(stage: Path, protocol: TrialProtocol, trial_dir: Path) -> list[str]:
    """Copy the latest ``design`` results of this exact protocol into the archive.

    ``insilico-trials design`` writes ``<trial_dir>/design-<time>Z-<protocol sha8>/``; the run
    takes the newest such folder whose protocol hash matches, so the report (built from the
    archive alone) shows the operating characteristics of the design that was run. Returns
    the archived names (``design/oc.csv`` ...), hashed in the manifest as inputs.
    """
    sha8 = protocol.sha256()[:8]
    found = sorted(p for p in trial_dir.glob(f"design-*Z-{sha8}") if (p / "oc.csv").is_file())
    if not found:
        return []
    source = found[-1]
    (stage / "design").mkdir()
    names = []
    for name in ("oc.csv", "calibration.csv", "oc.json", "oc.md"):
        if (source / name).is_file():
            shutil.copyfile(source / name, stage / "design" / name)
            names.append(f"design/{name}")
    _say(f"design: operating characteristics from {source.name} attached to the archive")
    return names


def execute_run(
    protocol_path: Path,
    *,
    reports: Path,
    workers: int | None = None,
    processes: bool = True,
    dask_address: str | None = None,
    chunk_size: int | None = None,
    resume: bool = False,
    sign_key: Path | None = None,
) -> Path:
    """``insilico-trials run``: returns the new archive's folder.

    ``processes=False`` runs the LocalCluster's workers as threads of this process (the CLI's
    default; same numbers). ``resume`` takes the stages that an interrupted run of the same protocol (and the same
    code) finished from the task cache instead of computing them again.

    Raises
    ------
    InsilicoError
        Bad input (``ProtocolError``), an unwritable folder, an unreachable service, a failed
        archive write; nothing is written in any of these cases.
    """
    from insilico_trials.adapters.mlflow_tracker import flatten
    from insilico_trials.run.preflight import checked_protocol

    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    require_workers(workers, dask_address)
    require_dask(dask_address)
    protocol = checked_protocol(protocol_path)
    _say(f"protocol {protocol_path}: {protocol.trial_id} (sha256 {protocol.sha256()[:12]})")
    require_writable(reports / protocol.trial_id, "archive")
    require_prefect_api()
    from insilico_trials.adapters.mlflow_tracker import MlflowTracker

    MlflowTracker(Path.cwd()).reach_server()  # a tracking server must answer before any work
    # The embedded API and the LocalCluster start now, beside the tracking store and the
    # driver's imports; the flow waits for them.
    with embedded_services(
        cluster=True, workers=workers, dask_address=dask_address, warm=WARM, processes=processes
    ):
        from insilico_trials.io.archive import new_run_id

        tracker = MlflowTracker(Path.cwd())
        run_id = new_run_id(protocol)
        final = reports / protocol.trial_id / run_id
        # What the driver needs only after the flow (the MLflow run, the archive writer's
        # modules) is prepared in threads once the flow has started: before that they would
        # hold the interpreter lock the flow's start needs. The MLflow run starts at once when
        # the driver waits for the embedded API anyway.
        flow_started = threading.Event()
        tracker.start_in_background(
            protocol.trial_id,
            run_name=run_id,
            tags={
                "insilico.trial_id": protocol.trial_id,
                "insilico.protocol_sha256": protocol.sha256(),
            },
            after=None if services_starting() else flow_started,
        )
        preload_after(flow_started, "insilico_trials.io.outputs", "insilico_trials.report")
        status = "FAILED"
        try:
            manifest = run_to_archive(
                protocol, protocol_path, final, workers=workers, dask_address=dask_address,
                chunk_size=chunk_size, tracker=tracker, timings=timings, resume=resume,
                sign_key=sign_key, flow_started=flow_started,
            )  # fmt: skip
            t = time.perf_counter()
            tracker.log_params(flatten(protocol.model_dump(mode="json")))
            # The tracking store's own record of the archive: a rewrite of archive and manifest
            # together no longer matches it (see require_tracking_record).
            tracker.set_tags({"insilico.manifest_sha256": sha256_file(final / MANIFEST)})
            tracker.log_metrics(_run_metrics(final))
            tracker.log_artifacts(final, artifact_path="archive")
            status = "FINISHED"
            timings["tracking (MLflow, after the archive)"] = time.perf_counter() - t
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt) or interrupts.seen():
                status = "KILLED"  # the tracking store says so, not RUNNING forever
            raise
        finally:
            tracker.end(status=status)
        summary = _read_json(final / "summary.json")
        _say(
            f"decision: {summary['decision']}  ({summary['criterion']}: "
            f"{summary['probability']:.3f}; converged: {summary['converged']})"
        )
        _say(_timing_table(timings, time.perf_counter() - t_all))
        _say(f"archive: {final}")
        _say(f"report:  {final / 'report.html'}")
        _say(f"mlflow run: {manifest['mlflow_run_id']} ({tracker.uri})")
        return final


def existing_twin_updates(archive: Path) -> list[Path]:
    """Update folders of the archive that hold twins."""
    from insilico_trials.io.updates import existing_updates

    return [p for p in existing_updates(archive) if (p / "twins").is_dir()]


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _run_metrics(archive: Path) -> dict[str, float]:
    summary = _read_json(archive / "summary.json")
    metrics = {"probability": summary["probability"], "converged": float(summary["converged"])}
    for row in summary["posterior"]:
        name = str(row.get("param", "")).replace("[", "_").replace("]", "")
        if name and isinstance(row.get("mean"), int | float):
            metrics[f"posterior_mean.{name}"] = row["mean"]
    return metrics


def execute_rerun(
    archive: Path,
    *,
    workers: int | None = None,
    processes: bool = True,
    dask_address: str | None = None,
    verify_key: Path | None = None,
    check_tracking: bool = False,
) -> None:
    """``insilico-trials rerun``: verify the archive, re-execute it, compare every numeric output.

    Raises
    ------
    RunFailure
        When the archive does not match its manifest, or any numeric output differs.
    """
    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    require_workers(workers, dask_address)
    require_dask(dask_address)
    manifest = open_archive(archive)
    protocol = require_verified(archive, manifest, verify_key=verify_key)
    if check_tracking:
        require_tracking_record(archive, manifest)
    timings["verify the archive"] = time.perf_counter() - t_all
    _say(
        f"archive {archive}: intact ({sum(len(manifest[k]) for k in ('inputs', 'outputs', 'documents'))} files verified"
        + (", signature valid)" if verify_key else ")")
    )
    require_prefect_api()
    with embedded_services(
        cluster=True, workers=workers, dask_address=dask_address, warm=WARM, processes=processes
    ):
        t = time.perf_counter()
        from insilico_trials.adapters.prefect_dask import PrefectDask
        from insilico_trials.io.outputs import write_run_outputs
        from insilico_trials.io.spool import ParquetSpool
        from insilico_trials.run.trial import run_trial
        from insilico_trials.sim import trial

        timings["driver imports (while the services start)"] = time.perf_counter() - t

        # Chunk tables are spooled where the workers can reach them (beside the task cache),
        # and removed whatever happens.
        spool_root = Path.cwd() / ".insilico" / "spool"
        spool_root.mkdir(parents=True, exist_ok=True)
        spool = Path(tempfile.mkdtemp(prefix="rerun-", dir=spool_root)).resolve()
        try:
            t = time.perf_counter()
            result = run_trial(
                protocol,
                executor=PrefectDask(workers=workers, dask_address=dask_address),
                sink=ParquetSpool(spool, keep=tuple(trial.summary_columns(protocol))),
                progress=_say,
            )
            add_flow_timings(timings, time.perf_counter() - t, result.timings)
            t = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="insilico-rerun-") as tmp:
                write_run_outputs(Path(tmp), archive / "protocol.yaml", result)
                rows = compare_outputs(manifest["outputs"], Path(tmp))
            timings["write and compare the outputs"] = time.perf_counter() - t
            t = time.perf_counter()
            n_run = len(rows)
            rows += replay_control_updates(archive, protocol, progress=_say)
            if protocol.twins is not None and existing_twin_updates(archive):
                from insilico_trials.app.twins_cmd import replay_twin_updates

                _say("rerun: replaying the twin updates from their archived cuts")
                rows += replay_twin_updates(archive, protocol, progress=_say)
            if len(rows) > n_run:
                timings["replay the updates"] = time.perf_counter() - t
        finally:
            shutil.rmtree(spool, ignore_errors=True)
    width = max(len(name) for name, _, _ in rows)
    for name, same, detail in rows:
        _say(
            f"  {name:<{width}}  {'identical' if same else 'DIFFERENT'}{'  ' + detail if detail else ''}"
        )
    n_diff = sum(not same for _, same, _ in rows)
    _say(f"rerun: {len(rows) - n_diff}/{len(rows)} numeric outputs identical")
    _say(_timing_table(timings, time.perf_counter() - t_all))
    if n_diff:
        raise RunFailure(
            f"rerun: {n_diff} of {len(rows)} numeric outputs DIFFERENT from the archive",
            rule="a rerun reproduces every numeric output", actual=n_diff, expected="0",
            where=str(archive),
        )  # fmt: skip


def rebuild_report(
    archive: Path,
    output: Path | None = None,
    *,
    pdf: bool = False,
    verify_key: Path | None = None,
    check_tracking: bool = False,
) -> list[Path]:
    """``insilico-trials report``: re-render the report from the archive's files alone.

    The archive is verified first (files, protocol, update chain, and the signature with
    ``verify_key``); the report, with every update appended so far, is written to ``output``
    (default ``<archive>-report.html`` beside the archive). The archive itself is never
    written: its manifests and the update chain stay as they were.
    """
    from insilico_trials.report import render_report

    manifest = open_archive(archive)
    require_verified(archive, manifest, verify_key=verify_key)
    if check_tracking:
        require_tracking_record(archive, manifest)
    meta = {
        k: v for k, v in manifest.items() if k not in ("inputs", "outputs", "documents", "format")
    }
    html = render_report(archive, meta)
    target = output or archive.parent / f"{archive.name}-report.html"
    if target.resolve().is_relative_to(archive.resolve()):
        raise InputError(
            f"{target}: the rebuilt report cannot be written inside the archive (it would "
            "break the manifest); give --output outside it",
            where=str(target),
        )
    try:
        atomic_write_text(target, html)
    except OSError as exc:
        raise RunFailure(
            f"cannot write {target}: {exc.strerror or exc}", where=str(target)
        ) from None
    written = [target]
    if pdf:
        from insilico_trials.report import render_pdf

        pdf_target = target.with_suffix(".pdf")
        try:
            render_pdf(target, pdf_target)
        except RuntimeError as exc:
            raise RunFailure(str(exc)) from None
        written.append(pdf_target)
    for path in written:
        _say(f"report: {path}")
    return written


def execute_update(
    archive: Path,
    cut_dir: Path,
    *,
    control_arm: str | None = None,
    arms: Mapping[str, str] | None = None,
    verify_key: Path | None = None,
    sign_key: Path | None = None,
    check_tracking: bool = False,
    drop_unknown_columns: bool = False,
) -> Path:
    """``insilico-trials update``: ingest a real data cut and append a synthetic-control update.

    Per cut: the control parameter's posterior (real control patients with the synthetic
    control's prior) and, for every treatment arm with real patients, the protocol's analysis
    against that hybrid control: the effect's posterior, the probability of the decision
    criterion and the decision. ``arms`` maps protocol arm names to the real data's ADSL ARM
    values (default: the same names; the control arm's is ``control_arm``).

    Everything is checked before anything is written: the archive's integrity, the cut's
    schema and content (every problem listed, each naming file, row, column, value and rule:
    the datasets this protocol's update reads, the ADaM allow-list plus the protocol's
    population covariates, identifier screens), and the update lock (another update running:
    a failure at once). With ``drop_unknown_columns`` a column outside the allow-list is
    dropped instead of refused: it is not archived (the archived dataset file lacks it), and
    the (file, column) pairs are printed and recorded in ``update.json``
    (``dropped_columns``). Cuts already ingested are re-read from the archive; a subject
    re-sent with different content is flagged (printed and recorded), and its latest record is
    used. Returns the new ``updates/NNN`` folder.
    """
    from insilico_trials.infer.synthetic import VirtualPrior
    from insilico_trials.io.outputs import environment_provenance
    from insilico_trials.io.realdata import check_append_only, endpoint_frame, load_cut
    from insilico_trials.io.updates import UpdatePlan, archive_lock, existing_updates, write_update
    from insilico_trials.run.update import (
        borrowing_arguments,
        control_composition,
        effect_prior,
        hybrid_decisions,
        look_status,
        refit_control,
        virtual_source,
    )

    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    manifest = open_archive(archive)
    if problem := check_writable(archive):
        raise RunFailure(
            f"cannot write updates into the archive ({problem}); nothing was written "
            "and the archive is unchanged.",
            where=str(archive),
        )
    with archive_lock(archive), contextlib.ExitStack() as services:
        protocol = require_verified(archive, manifest, verify_key=verify_key)
        if check_tracking:
            require_tracking_record(archive, manifest)
        args = borrowing_arguments(protocol)
        twins = protocol.twins is not None
        dataset = endpoint_dataset(protocol)
        try:
            new_cut = load_cut(
                cut_dir, require=("adlb", "adex") if twins else (dataset,),
                extra_allowed=declared_covariates(protocol), drop_unknown=drop_unknown_columns,
            )  # fmt: skip
        except FileNotFoundError as exc:
            raise InputError(str(exc), where=str(cut_dir)) from None
        # cuts already archived were accepted under the policy of their day: no allow-list
        previous = [
            load_cut(p / "cut", cut_id=p.name, allow_list=False) for p in existing_updates(archive)
        ]
        _require_one_study(protocol, [*previous, new_cut], cut_dir)
        flags = [str(i) for i in check_append_only(previous, new_cut)]
        for flag in flags:
            print(f"flagged: {flag}", file=sys.stderr)
        if new_cut.dropped:
            _say(
                f"dropped before archiving (not ADaM variables of the allow-list, not protocol "
                f"covariates): {', '.join(f'{f} {c}' for f, c in new_cut.dropped)}"
            )
        number = len(previous) + 1
        earlier = [_read_json(u / "update.json") for u in existing_updates(archive)]
        archived = next((r["real_arms"] for r in earlier if r.get("real_arms")), None)
        ctrl = protocol.control_arm.name
        if archived is None and control_arm is None and ctrl not in (arms or {}):
            # an archive whose updates predate arm maps recorded the control arm's ADSL ARM
            control_arm = next((r["control_arm"] for r in earlier if r.get("control_arm")), None)
        real_arms = real_arm_map(protocol, control_arm, arms, archived=archived)
        arm_name = real_arms[protocol.control_arm.name]
        # A twin protocol's cut may carry only longitudinal data: the synthetic control is
        # refitted when every cut so far has the analysis endpoint's dataset.
        control_refit = not twins or all(
            getattr(c, dataset, None) is not None for c in [*previous, new_cut]
        )
        real = virtual = real_all = None
        if control_refit:
            frames = [
                endpoint_frame(
                    c, endpoint=args["endpoint"], paramcd=args["paramcd"], control_arm=arm_name
                )
                for c in [*previous, new_cut]
            ]
            real = pd_concat_latest(frames)
            real.attrs["cut_id"] = f"{number:03d}"
            real_all = real_patients(protocol, [*previous, new_cut], real_arms, args)
            if real.empty:
                raise InputError(
                    f"{cut_dir}: no subject of arm {arm_name!r} with endpoint "
                    f"{args['paramcd']} in this cut or earlier ones (use --control-arm)",
                    where=str(cut_dir), actual=arm_name,
                )  # fmt: skip
            # The virtual control arm as the run archived it (its sufficient statistics,
            # hashed in the manifest): the same numbers the run's analysis and report used.
            record = _read_json(archive / "synthetic_control.json")
            virtual = virtual_source(record)
            real = real.assign(arm=protocol.control_arm.name)
            worth = (
                f"prior worth {virtual.prior_ess:.1f} patients ({virtual.ess_method}) from "
                f"{virtual.n_replicates} replicate virtual arms"
                if isinstance(virtual, VirtualPrior) else f"{record['n']} virtual"
            )  # fmt: skip
            _say(
                f"update {number:03d}: {len(real)} real control patients after this cut "
                f"(cut {new_cut.content_hash[:12]}), {worth}; method {args['method']}"
            )
        # The cut is valid. An MCMC refit runs as a Prefect flow: the embedded API starts now
        # and the flow waits for it. A closed-form refit is arithmetic on a few counts: it runs
        # in this process, without a flow (its record's prefect_flow_run_id is empty).
        from insilico_trials.adapters.mlflow_tracker import MlflowTracker
        from insilico_trials.infer.borrowing import resolve_engine

        mcmc_refit = control_refit and (
            resolve_engine("auto", args["method"], args["endpoint"], None) == "mcmc"
        )
        if mcmc_refit:
            require_prefect_api()
            services.enter_context(embedded_services())
        t = time.perf_counter()
        tracker = MlflowTracker(Path.cwd(), parent_run_id=manifest.get("mlflow_run_id") or None)
        tracker.start_in_background(  # beside the refit; the update's record waits for its id
            protocol.trial_id,
            run_name=f"{manifest['run_id']}-update-{number:03d}",
            tags={"insilico.trial_id": protocol.trial_id, "insilico.update": str(number)},
        )
        # An update that fails or is interrupted from here on ends its tracking run so
        # (the successful one has ended it already: a second end does nothing).
        services.callback(lambda: tracker.end(status="KILLED" if interrupts.seen() else "FAILED"))
        timings["tracking (MLflow)"] = time.perf_counter() - t
        twin_data = None
        if twins:
            from insilico_trials.app.twins_cmd import twin_inputs

            twin_data, real_arm = twin_inputs(protocol, new_cut)
            _say(
                f"update {number:03d}: twins of {twin_data.n_patients} patients "
                f"(cut {new_cut.content_hash[:12]})"
                + ("" if control_refit else "; no endpoint data: synthetic control not refitted")
            )
        t = time.perf_counter()
        from insilico_trials.adapters.prefect_dask import PrefectDask

        result, flow_run_id = None, ""
        extra: dict[str, Any] = {}
        if control_refit:
            # engine auto: the exact conjugate posterior wherever one exists, else MCMC
            result, flow_run_id = refit_control(
                virtual,
                real,
                protocol,
                executor=PrefectDask(in_process=True) if mcmc_refit else None,
            )
            label = "Prefect flow, MCMC" if mcmc_refit else "closed form, in process"
            timings[f"refit ({label})"] = time.perf_counter() - t
            extra["control_arm"] = arm_name  # a replay (rerun) reads the same arm
            t = time.perf_counter()
            effects = hybrid_decisions(
                protocol, real_all, effect_prior(virtual, result),
                engine="auto" if result.engine == "closed_form" else "mcmc",
            )  # fmt: skip
            extra["real_arms"] = real_arms
            extra["effects"] = [e.record() for e in effects.values()]
            analysed = protocol.analysis.treatment or protocol.treatment_arms[0].name
            extra["look"] = look_status(
                protocol, real_all, effect_prior(virtual, result), effects[analysed]
            )
            labels = sorted({e.engine for e in effects.values()} - {"none"}) or ["none"]
            timings[f"decision ({', '.join(labels)})"] = time.perf_counter() - t
        extra_files: dict[str, Any] = {}
        if twin_data is not None:
            from insilico_trials.app.twins_cmd import previous_twins, twin_files, twin_record
            from insilico_trials.run.twins import update_twins

            t = time.perf_counter()
            prev = previous_twins(existing_updates(archive))
            upd = update_twins(
                protocol, twin_data, real_arm,
                previous=prev[0] if prev else None, previous_days=prev[1] if prev else None,
                progress=_say,
            )  # fmt: skip
            extra["twins"] = twin_record(upd, twin_data)
            extra_files = twin_files(upd, twin_data)
            timings["twins (fit, forecast, counterfactual arms)"] = time.perf_counter() - t
        t = time.perf_counter()
        tracker.wait()
        meta = {
            "run_id": manifest["run_id"],
            "trial_id": protocol.trial_id,
            "prefect_flow_run_id": flow_run_id,
            "mlflow_run_id": tracker.run_id or "",
            "cut_content_sha256": new_cut.content_hash,
            **environment_provenance(),
        }
        plan = UpdatePlan(
            number=number, cut_dir=cut_dir, cut_sha256=new_cut.content_hash, flags=flags,
            files=tuple(new_cut.files.values()), dropped_columns=new_cut.dropped,
        )  # fmt: skip
        ignored = sorted(
            p.name for p in Path(cut_dir).iterdir() if p not in set(new_cut.files.values())
        )
        if ignored:
            _say(
                f"ignored in {cut_dir} (not a dataset of a cut; not archived): {', '.join(ignored)}"
            )
        try:
            folder, record = write_update(
                archive, plan, result, meta=meta, sign_key=sign_key, extra=extra,
                extra_files=extra_files,
            )  # fmt: skip
        except OSError as exc:
            tracker.end(status="FAILED")
            raise RunFailure(
                f"cannot write update {number:03d} into {archive}: {exc.strerror or exc}; "
                "nothing was written and earlier updates are untouched",
                where=str(archive),
            ) from None
        metrics = {}
        if result is not None:
            extra_metrics = {
                f"effect.{e['treatment']}.probability": e["probability"]
                for e in record.get("effects", [])
                if e["probability"] == e["probability"]
            }
            metrics = {
                **extra_metrics,
                "posterior_mean": record["posterior_mean"],
                "prior_ess": record["prior_ess"],
                "borrowed_virtual": record["borrowed_virtual"],
                "n_real": record["n_real"],
                **{f"conflict.{k}": v for k, v in record["conflict"].items() if v == v},
            }
        if "twins" in record:
            tr = record["twins"]
            metrics["twins.converged"] = float(tr["converged"])
            metrics["twins.max_rhat"] = float(tr["diagnostics"]["max_rhat"])
            for k, v in (tr["forecast"] or {}).items():
                if isinstance(v, int | float) and v == v:
                    metrics[f"twins.forecast.{k}"] = float(v)
        tracker.log_metrics(metrics)
        tracker.set_tags({"insilico.update_manifest_sha256": sha256_file(folder / MANIFEST)})
        # The tracking store gets the update's record and manifest (which holds the SHA-256 of
        # every file); the real patients' records (cut/) and per-patient twin files (twins/)
        # stay in the archive, unless the protocol asks for the cut files explicitly.
        for path in sorted(folder.iterdir()):
            if path.is_file():
                tracker.log_artifact(path, artifact_path=f"updates/{number:03d}")
        if protocol.real_data.track_cut_files:
            for path in sorted((folder / "cut").iterdir()):
                tracker.log_artifact(path, artifact_path=f"updates/{number:03d}/cut")
        tracker.end()
        timings["archive and tracking"] = time.perf_counter() - t
    if result is not None:
        vw = record["vague_weight"]
        _say(
            f"control {record['parameter']}: posterior mean {record['posterior_mean']:.4g} "
            f"(95% CI {record['posterior_ci'][0]:.4g} to {record['posterior_ci'][1]:.4g}); "
            f"prior ESS {record['prior_ess']:.1f}; virtual patients borrowed "
            f"{record['borrowed_virtual']:.1f}"
            + (f"; vague-component weight {vw:.3f}" if vw is not None else "")
            + ("" if record["converged"] else "; CONVERGENCE FAILED (not a result)")
            + ("; exact (closed form)" if record.get("engine") == "closed_form" else "; MCMC")
        )
        comp = control_composition(record)
        share = comp["virtual_share"]
        _say(
            f"hybrid control: {comp['real']:.0f} real {comp['unit']} + "
            f"{comp['virtual_borrowed']:.1f} virtual {comp['unit']} borrowed ("
            + (f"{100 * share:.0f}% virtual)" if share == share else "virtual share unknown)")
        )
        for e in record.get("effects", []):
            _say(effect_line(e))
        if lk := record.get("look"):
            pos = (
                f"; predictive probability of success at the final analysis {lk['pos']:.4f} "
                f"({lk['pos_method']}"
                + (f", Monte Carlo error {lk['pos_mcse']:.4f}" if lk.get("pos_mcse") else "")
                + ")"
                + (
                    f"; {lk['pos_virtual_control']:.4f} with future controls from the virtual "
                    "cohort's model"
                    if lk.get("pos_virtual_control") is not None
                    else ""
                )
                if lk.get("pos") is not None
                else f"; probability of success {lk['pos_method']}"
            )
            _say(
                f"decision: {lk['verdict']} (look {lk['look']} of {lk['of']}, planned "
                f"{lk['planned']}){pos}"
            )
    _say(_timing_table(timings, time.perf_counter() - t_all))
    _say(f"update: {folder}")
    return folder


# The entries of a control-arm update record that a replay must reproduce (those the archived
# record has: one made before engines existed has no ``engine`` or ``posterior_mixture``).
_REPLAYED_KEYS = (
    "parameter", "posterior_mean", "posterior_sd", "posterior_ci", "prior_ess", "posterior_ess",
    "borrowed_virtual", "ess_unit", "conflict", "vague_weight", "n_real", "real_stats",
    "converged", "engine", "posterior_mixture", "effects", "look",
)  # fmt: skip


def _same_json(a: Any, b: Any) -> bool:
    """JSON values equal, NaN equal to NaN (as archived: ``json`` writes NaN)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return a == b and type(a) is type(b)


def replay_control_updates(
    archive: Path, protocol: TrialProtocol, progress: Any = None
) -> list[tuple[str, bool, str]]:
    """Re-execute every synthetic-control refit of an archive from its archived cuts, in order,
    with the engine its ``update.json`` records (``recorded_engine``: ``mcmc`` for a record
    made before engines existed, so an old archive replays as it was made), and compare the
    record's numbers and ``states.csv`` with the archive.

    Returns ``(name, identical, detail)`` rows like
    :func:`insilico_trials.io.archive.compare_outputs`.
    """
    from insilico_trials.io.archive import update_folders
    from insilico_trials.io.realdata import endpoint_frame, load_cut
    from insilico_trials.io.updates import UpdatePlan, state_record
    from insilico_trials.run.update import (
        borrowing_arguments,
        effect_prior,
        hybrid_decisions,
        look_status,
        recorded_engine,
        refit_control,
        virtual_source,
    )

    args = borrowing_arguments(protocol)
    folders = update_folders(archive)
    rows: list[tuple[str, bool, str]] = []
    virtual = None
    for i, folder in enumerate(folders):
        record = _read_json(folder / "update.json")
        if record.get("method") is None:  # a twin-only update: no control refit
            continue
        if virtual is None:
            virtual = virtual_source(_read_json(archive / "synthetic_control.json"))
        engine = recorded_engine(record)
        arm_name = record.get("control_arm") or protocol.control_arm.name
        cuts = [load_cut(f / "cut", cut_id=f.name, allow_list=False) for f in folders[: i + 1]]
        frames = [
            endpoint_frame(c, endpoint=args["endpoint"], paramcd=args["paramcd"],
                           control_arm=arm_name)
            for c in cuts
        ]  # fmt: skip
        real = pd_concat_latest(frames)
        real.attrs["cut_id"] = folder.name
        real = real.assign(arm=protocol.control_arm.name)
        if progress is not None:
            progress(f"rerun: control-arm update {folder.name} ({engine})")
        result, _ = refit_control(virtual, real, protocol, engine=engine)
        plan = UpdatePlan(
            number=int(record["cut"]), cut_dir=folder / "cut",
            cut_sha256=record.get("cut_sha256", ""), flags=list(record.get("flags") or []),
        )  # fmt: skip
        new = state_record(result.final, plan, result.method)
        if "effects" in record:
            real_all = real_patients(protocol, cuts, record.get("real_arms") or {}, args)
            engines = {e["engine"] for e in record["effects"]} - {"none"}
            effects = hybrid_decisions(
                protocol, real_all, effect_prior(virtual, result),
                engine="mcmc" if "mcmc" in engines else "auto",
            )  # fmt: skip
            new["effects"] = json.loads(
                json.dumps([e.record() for e in effects.values()], default=float)
            )
            if "look" in record:
                analysed = protocol.analysis.treatment or protocol.treatment_arms[0].name
                new["look"] = json.loads(json.dumps(look_status(
                    protocol, real_all, effect_prior(virtual, result), effects[analysed]
                ), default=float))  # fmt: skip
        # the entries the archived record has (an older record has fewer, e.g. no engine)
        keys = [k for k in _REPLAYED_KEYS if k in record]
        differ = [k for k in keys if not _same_json(record[k], new.get(k))]
        rows.append((
            f"updates/{folder.name}/update.json (control, {engine})", not differ,
            f"differs: {', '.join(differ)}" if differ else "",
        ))  # fmt: skip
        states = folder / "states.csv"
        if states.is_file():
            text = result.table().to_csv(index=False, float_format="%.12g")
            same = states.read_text(encoding="utf-8") == text
            rows.append((f"updates/{folder.name}/states.csv", same, ""))
    return rows


def endpoint_dataset(protocol: TrialProtocol) -> str:
    """The dataset holding the analysis endpoint of ``protocol``'s real data (``adtte`` for a
    time-to-event model, ``adrs`` for a response model).

    Raises
    ------
    InputError
        The analysis model's endpoint has no ADaM dataset that ``update`` reads (a protocol
        without twins cannot be updated from real data then).
    """
    from insilico_trials.run.update import (
        borrowing_arguments,
    )

    endpoint = borrowing_arguments(protocol)["endpoint"]
    dataset = {"tte": "adtte", "binary": "adrs"}.get(endpoint)
    if dataset is None and protocol.twins is None:
        raise InputError(
            f"analysis.model {protocol.analysis.model!r} ({endpoint} endpoint): `update` reads "
            "real data cuts for time-to-event (ADTTE) and response (ADRS) endpoints only; "
            "nothing was read or written",
            rule="endpoint with an ADaM dataset", actual=endpoint, expected="tte or binary",
            where="analysis.model",
        )  # fmt: skip
    return dataset or ""


def declared_covariates(protocol: TrialProtocol) -> tuple[str, ...]:
    """The covariates ``protocol`` declares (``population.covariates``): ADSL columns a cut may
    carry besides the ADaM allow-list."""
    return tuple(protocol.population.covariates)


def _require_one_study(protocol: TrialProtocol, cuts: list[Any], cut_dir: Path) -> None:
    """Every cut of an archive comes from the one trial it follows: the protocol's
    ``real_data.study_id`` when declared, else the STUDYID of the archive's first cut.

    Raises
    ------
    InputError
        Naming the STUDYIDs found and the one expected.
    """
    found = {str(s) for c in cuts if "STUDYID" in c.adsl for s in c.adsl["STUDYID"].unique()}
    expected = protocol.real_data.study_id
    if expected is not None:
        missing = [c.cut_id for c in cuts if "STUDYID" not in c.adsl]
        if missing or found - {expected}:
            raise InputError(
                f"{cut_dir}: adsl STUDYID {sorted(found) or 'absent'}; this archive's protocol "
                f"takes cuts of study {expected!r} only (real_data.study_id)",
                where=f"{cut_dir}/adsl", actual=sorted(found), expected=expected,
            )  # fmt: skip
    elif len(found) > 1:
        raise InputError(
            f"{cut_dir}: adsl STUDYID {sorted(found)} differ (this cut and the archive's earlier "
            "cuts): every cut of an archive must come from the one trial it follows (declare it "
            "as real_data.study_id in the protocol)",
            where=f"{cut_dir}/adsl", actual=sorted(found),
        )  # fmt: skip


def pd_concat_latest(frames: list[Any]) -> Any:
    """Real control patients over all cuts; a subject re-sent later keeps its latest record."""
    import pandas as pd

    df = pd.concat(frames, ignore_index=True)
    if "usubjid" in df.columns:
        df = df.drop_duplicates("usubjid", keep="last").reset_index(drop=True)
    return df


def real_arm_map(
    protocol: TrialProtocol,
    control_arm: str | None,
    arms: Mapping[str, str] | None,
    *,
    archived: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Protocol arm name -> ADSL ARM of its real patients: ``--arm NAME=ARM`` and
    ``--control-arm ARM`` (the same as ``--arm CONTROL=ARM``), else the mapping the archive's
    earlier updates recorded (``archived``), else the protocol's arm names. Every cut of an
    archive is read with one mapping, so an update cannot silently drop earlier patients.

    Raises
    ------
    InputError
        An ``--arm`` naming no arm of the protocol, ``--control-arm`` and ``--arm`` giving the
        control arm two values, two arms mapped to one ADSL ARM, or a mapping that differs
        from the one the archive's earlier updates used.
    """
    names = [a.name for a in protocol.arms]
    given = dict(arms or {})
    for k in given:
        if k not in names:
            raise InputError(
                f"--arm {k}=...: {k!r} is not an arm of the protocol ({', '.join(names)})",
                where="--arm", actual=k, expected=names,
            )  # fmt: skip
    ctrl = protocol.control_arm.name
    if control_arm is not None:
        if given.get(ctrl, control_arm) != control_arm:
            raise InputError(
                f"--control-arm {control_arm!r} and --arm {ctrl}={given[ctrl]!r} disagree",
                where="--control-arm", actual=control_arm, expected=given[ctrl],
            )  # fmt: skip
        given[ctrl] = control_arm
    base = dict(archived) if archived else {a: a for a in names}
    out = {a: given.get(a, base.get(a, a)) for a in names}
    if archived and out != dict(archived):
        raise InputError(
            f"arm mapping {out} differs from the one this archive's earlier updates used "
            f"({dict(archived)}): every cut is read with one mapping (omit --arm/--control-arm "
            "to keep it)",
            where="--arm", actual=out, expected=dict(archived),
        )  # fmt: skip
    if len(set(out.values())) != len(out):
        raise InputError(
            f"--arm/--control-arm: two protocol arms map to one ADSL ARM: {out}",
            where="--arm", actual=out,
        )  # fmt: skip
    return out


def real_patients(
    protocol: TrialProtocol, cuts: list[Any], real_arms: Mapping[str, str], args: Mapping[str, Any]
) -> Any:
    """Real patients of every protocol arm over all cuts (a subject re-sent later keeps its
    latest record), outcome columns and protocol arm names in ``arm``; patients of other ADSL
    arms are left out (the count is printed)."""
    from insilico_trials.io.realdata import endpoint_frame

    frames = [endpoint_frame(c, endpoint=args["endpoint"], paramcd=args["paramcd"]) for c in cuts]
    df = pd_concat_latest(frames)
    to_protocol = {v: k for k, v in real_arms.items()}
    known = df["arm"].isin(list(to_protocol))
    if (~known).any():
        other = sorted(map(str, df.loc[~known, "arm"].unique()))
        _say(
            f"{int((~known).sum())} real patients of ADSL ARM {other} belong to no protocol arm "
            "(map them with --arm NAME=ARM); left out of the analysis"
        )
    out = df[known].assign(arm=df.loc[known, "arm"].map(to_protocol)).reset_index(drop=True)
    return out


def effect_line(e: Mapping[str, Any]) -> str:
    """One printed line of an update's treatment effect (descriptive: the trial's decision is
    the planned look's verdict, printed after it)."""
    sign = "<" if e["direction"] == "less" else ">"
    head = f"{e['treatment']} vs hybrid control ({e['n_treatment']} real patients): "
    if e["probability"] != e["probability"]:
        return head + e["decision"]
    mcse = "" if not e["probability_mcse"] else f" (MC error {e['probability_mcse']:.3f})"
    met = "met" if e["probability"] > e["threshold"] else "not met"
    return (
        head + f"{e['quantity']} {e['mean']:.3g} (95% CI {e['ci'][0]:.3g} to {e['ci'][1]:.3g}); "
        f"P({e['quantity']} {sign} {e['delta']:g}) = {e['probability']:.4f}{mcse}; "
        f"the analysis criterion (threshold {e['threshold']:g}) is {met} at this cut ("
        + ("exact" if e["engine"] == "closed_form" else e["engine"])
        + ")"
    )
