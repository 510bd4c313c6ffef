"""The `design` flow: replicate trials per scenario as Dask tasks in batches.

Thin: every number comes from :mod:`insilico_trials.design`. The plan (decision tables,
priors) is built once in the driver; each task simulates one (scenario, replicate range)
batch. Replicate ``r`` only draws from keys at index ``r``, so the merged results are identical
for any worker count and batch size. Imported lazily by the CLI (Prefect import costs ~7 s).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from insilico_trials.adapters.prefect_dask import api_and_cluster
from insilico_trials.infer import design

__all__ = ["DesignOutcome", "design_flow", "run_design"]


@dataclass
class DesignOutcome:
    """Merged per-replicate results per scenario, the Prefect flow-run id and stage timings."""

    results: dict[str, design.BatchResult]
    flow_run_id: str
    timings: dict[str, float] = field(default_factory=dict)


@task(name="design-batch", cache_policy=NO_CACHE, retries=2)
def batch_task(plan: design.DesignPlan, scenario: str, start: int, stop: int) -> design.BatchResult:
    return design.simulate_batch(plan, scenario, start, stop)


def _say(msg: str) -> None:
    print(msg, flush=True)


def _bar(done: int, total: int, width: int = 30) -> str:
    k = round(width * done / total)
    return "[" + "#" * k + "." * (width - k) + "]"


@flow(
    name="insilico-trial-design", log_prints=False, persist_result=False, validate_parameters=False
)
def design_flow(
    plan: design.DesignPlan,
    replicates: int,
    batch_size: int,
) -> DesignOutcome:
    """Submit every (scenario, batch) as a task; merge in replicate order."""
    from prefect.runtime import flow_run

    say = _say
    t0 = time.perf_counter()
    futures = [
        batch_task.submit(plan, s.name, a, b)
        for s in plan.scenarios
        for a, b in design.replicate_batches(replicates, batch_size)
    ]
    say(
        f"simulate: {len(plan.scenarios)} scenarios x {replicates} replicates in "
        f"{len(futures)} batches of <= {batch_size}"
    )
    batches = []
    for done, fut in enumerate(as_completed(futures), start=1):
        batches.append(fut.result())
        say(
            f"  {_bar(done, len(futures))} {done}/{len(futures)} batches "
            f"({time.perf_counter() - t0:.1f} s)"
        )
    timings = {"simulate batches": time.perf_counter() - t0}
    t1 = time.perf_counter()
    merged = design.merge_batches(batches)
    timings["merge"] = time.perf_counter() - t1
    return DesignOutcome(results=merged, flow_run_id=str(flow_run.id), timings=timings)


def run_design(
    plan: design.DesignPlan,
    *,
    replicates: int,
    batch_size: int,
    workers: int | None = None,
    dask_address: str | None = None,
) -> DesignOutcome:
    """Run :func:`design_flow` on Dask (LocalCluster of ``workers``, or ``dask_address``)."""
    with api_and_cluster(
        workers=workers, dask_address=dask_address, warm=("insilico_trials.infer.design",)
    ) as runner:
        return design_flow.with_options(task_runner=runner)(plan, replicates, batch_size)
