"""Deployable entry flows: the CLI commands as Prefect flows with plain parameters.

``prefect.yaml`` deploys these to a work pool: each takes paths and numbers (not Python
objects), so a Prefect worker can start it from the UI, the API or a schedule. Each runs
exactly what the matching ``insilico-trials`` command runs; a failure raises the same typed
error (:class:`insilico_trials.errors.InsilicoError`, with its message), which fails the flow
run. Each returns the folder it wrote.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

__all__ = ["design_protocol", "run_protocol", "update_archive"]


@flow(name="insilico-run-protocol", log_prints=True)
def run_protocol(
    protocol_path: str,
    workers: int | None = None,
    dask_address: str | None = None,
    reports: str = "reports",
    resume: bool = False,
) -> str:
    """``insilico-trials run PROTOCOL``."""
    from insilico_trials.app.commands import execute_run

    return str(
        execute_run(
            Path(protocol_path),
            reports=Path(reports),
            workers=workers,
            dask_address=dask_address,
            resume=resume,
        )
    )


@flow(name="insilico-design-protocol", log_prints=True)
def design_protocol(
    protocol_path: str,
    replicates: int,
    workers: int | None = None,
    dask_address: str | None = None,
    reports: str = "reports",
) -> str:
    """``insilico-trials design PROTOCOL --replicates R``."""
    from insilico_trials.app.design_cmd import execute_design

    return str(
        execute_design(
            Path(protocol_path),
            replicates=replicates,
            workers=workers,
            dask_address=dask_address,
            reports=Path(reports),
        )
    )


@flow(name="insilico-update-archive", log_prints=True)
def update_archive(archive: str, data: str, control_arm: str | None = None) -> str:
    """``insilico-trials update ARCHIVE --data CUT``."""
    from insilico_trials.app.commands import execute_update

    return str(execute_update(Path(archive), Path(data), control_arm=control_arm))
