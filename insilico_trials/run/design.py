"""A design's operating characteristics, run through an executor: the library's entry point.

:func:`design_trial` submits every (scenario, replicate batch) of a compiled
:class:`~insilico_trials.infer.design.DesignPlan` to the executor (serial by default) and merges
the results in replicate order, so any batch size, worker count or executor gives the same
numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from insilico_trials.infer import design
from insilico_trials.run.executor import Executor, Serial, Session

__all__ = ["DesignResult", "design_trial"]


@dataclass(frozen=True)
class DesignResult:
    """Merged per-replicate results per scenario, the executor's run id and stage timings."""

    results: dict[str, design.BatchResult]
    run_id: str
    timings: dict[str, float] = field(default_factory=dict)


def _bar(done: int, total: int, width: int = 30) -> str:
    k = round(width * done / total)
    return "[" + "#" * k + "." * (width - k) + "]"


def _batches(
    session: Session,
    plan: design.DesignPlan,
    replicates: int,
    batch_size: int,
    say: Callable[[str], None],
) -> DesignResult:
    t0 = time.perf_counter()
    futures = [
        session.submit(
            design.simulate_batch,
            plan,
            s.name,
            a,
            b,
            key=f"design-{s.name}-{a}",
            label="design-batch",
            retries=2,
        )
        for s in plan.scenarios
        for a, b in design.replicate_batches(replicates, batch_size)
    ]
    say(
        f"simulate: {len(plan.scenarios)} scenarios x {replicates} replicates in "
        f"{len(futures)} batches of <= {batch_size}"
    )
    batches = []
    for done, fut in enumerate(session.as_completed(futures), start=1):
        batches.append(fut.result())
        say(
            f"  {_bar(done, len(futures))} {done}/{len(futures)} batches "
            f"({time.perf_counter() - t0:.1f} s)"
        )
    timings = {"simulate batches": time.perf_counter() - t0}
    t1 = time.perf_counter()
    merged = design.merge_batches(batches)
    timings["merge"] = time.perf_counter() - t1
    return DesignResult(results=merged, run_id=session.run_id, timings=timings)


def design_trial(
    plan: design.DesignPlan,
    *,
    replicates: int,
    batch_size: int = 2500,
    executor: Executor | None = None,
    progress: Callable[[str], None] | None = None,
) -> DesignResult:
    """Simulate ``replicates`` trials per scenario of ``plan`` through ``executor``.

    Parameters
    ----------
    plan : DesignPlan
        From :func:`insilico_trials.infer.design.compile_design`.
    replicates : int
        Simulated trials per scenario.
    batch_size : int
        Replicates per task (no effect on any number).
    executor : Executor, optional
        Default :class:`~insilico_trials.run.executor.Serial`.
    progress : callable, optional
        Receives one line per finished batch; default silent.
    """
    say = progress or (lambda _: None)
    return (executor or Serial()).run(
        "insilico-trial-design",
        lambda session: _batches(session, plan, replicates, batch_size, say),
        warm=("insilico_trials.infer.design",),
    )
