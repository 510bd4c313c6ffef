"""The `update` flow: refit the synthetic control arm on the real data cuts received so far.

Thin: the numbers come from :func:`insilico_trials.borrowing.update_control`; the archive
appending and tracking are done by the caller (:func:`insilico_trials.pipeline.execute_update`).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

__all__ = ["update_flow"]


@task(name="refit-synthetic-control", cache_policy=NO_CACHE)
def refit_task(virtual_control: Any, real_control: Any, arguments: dict[str, Any]) -> Any:
    from insilico_trials.infer.borrowing import update_control

    return update_control(virtual_control, [real_control], **arguments)


@flow(name="insilico-synthetic-control-update", persist_result=False)
def update_flow(
    virtual_control: Any, real_control: Any, arguments: dict[str, Any]
) -> tuple[Any, str]:
    from prefect.runtime import flow_run

    result = refit_task(virtual_control, real_control, arguments)
    return result, str(flow_run.id)
