"""What the CLI's ``run``, ``rerun`` and ``report`` do, end to end.

The edge of the system: it validates input before any work, starts tracking, calls the Prefect
flow (imported lazily), writes the archive atomically and prints progress and a timing summary.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from insilico_trials.archive import (
    atomic_write_text,
    compare_outputs,
    read_manifest,
    sha256_file,
    staged_directory,
    verify_archive,
    write_manifest,
)
from insilico_trials.protocol import ProtocolError, TrialProtocol, load_protocol

__all__ = ["execute_rerun", "execute_run", "rebuild_report", "run_to_archive"]


def _say(msg: str) -> None:
    print(msg, flush=True)


def _quiet_prefect() -> None:
    # Our own progress lines are the user's view; Prefect's INFO logs would drown them.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
    # The ephemeral API takes ~25 s to start on a loaded 2-core machine; Prefect's default
    # wait is 20 s.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # Dask's INFO lines (workers starting and closing) are noise to a trial statistician;
    # the variable reaches the worker processes too.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    import logging

    logging.getLogger("distributed").setLevel(logging.WARNING)


def _timing_table(timings: dict[str, float], total: float) -> str:
    width = max(len(k) for k in timings) if timings else 5
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
) -> dict[str, Any]:
    """Run the flow and write the complete archive at ``final`` (atomically). Returns the manifest."""
    from insilico_trials.report import render_report
    from insilico_trials.runs import environment_provenance, write_run_outputs

    t = time.perf_counter()
    _quiet_prefect()
    from flows.run import run_trial

    timings["import prefect"] = time.perf_counter() - t
    started = dt.datetime.now(dt.UTC)
    t = time.perf_counter()
    outcome = run_trial(protocol, workers=workers, dask_address=dask_address, chunk_size=chunk_size)
    flow_total = time.perf_counter() - t
    timings["flow"] = flow_total
    timings["  start Prefect API and Dask cluster"] = flow_total - sum(outcome.timings.values())
    for k, v in outcome.timings.items():
        timings[f"  {k}"] = v
    t = time.perf_counter()
    with staged_directory(final) as stage:
        groups = write_run_outputs(stage, protocol, protocol_path, outcome)
        meta = {
            "run_id": final.name,
            "trial_id": protocol.trial_id,
            "protocol_sha256": protocol.sha256(),
            "protocol_file_sha256": sha256_file(protocol_path),
            "seeds": {"protocol": protocol.seed},
            "prefect_flow_run_id": outcome.flow_run_id,
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
        atomic_write_text(stage / "report.html", render_report(stage, meta))
        manifest = write_manifest(
            stage,
            inputs=groups["inputs"],
            outputs=groups["outputs"],
            documents=["report.html"],
            meta=meta,
        )
    timings["archive and report"] = time.perf_counter() - t
    return manifest


def execute_run(
    protocol_path: Path,
    *,
    reports: Path,
    workers: int | None = None,
    dask_address: str | None = None,
    chunk_size: int | None = None,
) -> int:
    """``insilico-trials run``: returns the process exit code."""
    from insilico_trials.runs import new_run_id
    from insilico_trials.tracking import MlflowTracker, TrackingError, flatten

    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    try:
        protocol = load_protocol(protocol_path)
    except ProtocolError as exc:
        print(exc, file=sys.stderr)
        return 2
    _say(f"protocol {protocol_path}: {protocol.trial_id} (sha256 {protocol.sha256()[:12]})")
    t = time.perf_counter()
    tracker = MlflowTracker(Path.cwd())
    try:
        tracker.check()
    except TrackingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    run_id = new_run_id(protocol)
    final = reports / protocol.trial_id / run_id
    tracker.start(
        protocol.trial_id,
        run_name=run_id,
        tags={
            "insilico.trial_id": protocol.trial_id,
            "insilico.protocol_sha256": protocol.sha256(),
        },
    )
    timings["tracking (MLflow)"] = time.perf_counter() - t
    status = "FAILED"
    try:
        manifest = run_to_archive(
            protocol, protocol_path, final, workers=workers, dask_address=dask_address,
            chunk_size=chunk_size, tracker=tracker, timings=timings,
        )  # fmt: skip
        t = time.perf_counter()
        tracker.log_params(flatten(protocol.model_dump(mode="json")))
        tracker.log_metrics(_run_metrics(final))
        tracker.log_artifacts(final, artifact_path="archive")
        status = "FINISHED"
        timings["tracking (MLflow)"] += time.perf_counter() - t
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
    return 0


def _read_json(path: Path) -> Any:
    import json

    return json.loads(path.read_text(encoding="utf-8"))


def _run_metrics(archive: Path) -> dict[str, float]:
    summary = _read_json(archive / "summary.json")
    metrics = {"probability": summary["probability"], "converged": float(summary["converged"])}
    for row in summary["posterior"]:
        name = str(row.get("param", "")).replace("[", "_").replace("]", "")
        if name and isinstance(row.get("mean"), int | float):
            metrics[f"posterior_mean.{name}"] = row["mean"]
    return metrics


def _print_problems(archive: Path, problems: list[Any]) -> None:
    print(f"{archive}: archive does not match its manifest:", file=sys.stderr)
    for p in problems:
        print(f"  {p}", file=sys.stderr)


def execute_rerun(
    archive: Path, *, workers: int | None = None, dask_address: str | None = None
) -> int:
    """``insilico-trials rerun``: verify the archive, re-execute it, compare every numeric output."""
    from insilico_trials.runs import write_run_outputs

    t_all = time.perf_counter()
    if not archive.is_dir():
        print(f"error: {archive}: not a folder (expected a run archive)", file=sys.stderr)
        return 2
    try:
        manifest = read_manifest(archive)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    problems = verify_archive(archive)
    if problems:
        _print_problems(archive, problems)
        return 1
    _say(
        f"archive {archive}: intact ({sum(len(manifest[k]) for k in ('inputs', 'outputs', 'documents'))} files verified)"
    )
    try:
        protocol = load_protocol(archive / "protocol.yaml")
    except ProtocolError as exc:
        print(exc, file=sys.stderr)
        return 2
    _quiet_prefect()
    from flows.run import run_trial

    outcome = run_trial(protocol, workers=workers, dask_address=dask_address)
    with tempfile.TemporaryDirectory(prefix="insilico-rerun-") as tmp:
        write_run_outputs(Path(tmp), protocol, archive / "protocol.yaml", outcome)
        rows = compare_outputs(manifest["outputs"], Path(tmp))
    width = max(len(name) for name, _, _ in rows)
    for name, same, detail in rows:
        _say(
            f"  {name:<{width}}  {'identical' if same else 'DIFFERENT'}{'  ' + detail if detail else ''}"
        )
    n_diff = sum(not same for _, same, _ in rows)
    _say(
        f"rerun: {len(rows) - n_diff}/{len(rows)} numeric outputs identical "
        f"({time.perf_counter() - t_all:.1f} s)"
    )
    return 0 if n_diff == 0 else 1


def rebuild_report(archive: Path, output: Path | None = None) -> int:
    """``insilico-trials report``: re-render the report from the archive's files alone.

    The rebuilt report replaces ``report.html`` and its hash in the manifest's ``documents``
    (numeric outputs are never touched; a tampered numeric file stops the rebuild).
    """
    import json

    from insilico_trials.report import render_report

    try:
        manifest = read_manifest(archive)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    problems = [p for p in verify_archive(archive) if p.file != "report.html"]
    if problems:
        _print_problems(archive, problems)
        return 1
    meta = {
        k: v for k, v in manifest.items() if k not in ("inputs", "outputs", "documents", "format")
    }
    html = render_report(archive, meta)
    target = output or archive / "report.html"
    atomic_write_text(target, html)
    if output is None:
        manifest["documents"]["report.html"] = sha256_file(target)
        atomic_write_text(
            archive / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        )
    _say(f"report: {target}")
    return 0
