"""Deployable entry flows: the CLI commands as Prefect flows with plain parameters.

``prefect.yaml`` deploys these to a work pool: each takes paths and numbers (not Python
objects), so a Prefect worker can start it from the UI, the API or a schedule. Each runs
exactly what the matching ``insilico-trials`` command runs and fails the flow run when the
command would exit non-zero.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

__all__ = ["design_protocol", "run_protocol", "update_archive"]


def _check(code: int, what: str) -> None:
    if code != 0:
        raise RuntimeError(f"insilico-trials {what} exited {code} (see the flow run's output)")


@flow(name="insilico-run-protocol", log_prints=True)
def run_protocol(
    protocol_path: str,
    workers: int | None = None,
    dask_address: str | None = None,
    reports: str = "reports",
    resume: bool = False,
) -> None:
    """``insilico-trials run PROTOCOL``."""
    from insilico_trials.app.commands import execute_run

    code = execute_run(
        Path(protocol_path),
        reports=Path(reports),
        workers=workers,
        dask_address=dask_address,
        resume=resume,
    )
    _check(code, "run")


@flow(name="insilico-design-protocol", log_prints=True)
def design_protocol(
    protocol_path: str,
    replicates: int,
    workers: int | None = None,
    dask_address: str | None = None,
    reports: str = "reports",
) -> None:
    """``insilico-trials design PROTOCOL --replicates R``."""
    from insilico_trials.app.design_cmd import execute_design

    code = execute_design(
        Path(protocol_path),
        replicates=replicates,
        workers=workers,
        dask_address=dask_address,
        reports=Path(reports),
    )
    _check(code, "design")


@flow(name="insilico-update-archive", log_prints=True)
def update_archive(archive: str, data: str, control_arm: str | None = None) -> None:
    """``insilico-trials update ARCHIVE --data CUT``."""
    from insilico_trials.app.commands import execute_update

    _check(execute_update(Path(archive), Path(data), control_arm=control_arm), "update")
