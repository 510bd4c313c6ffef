"""The `run` flow: one in-silico trial as a Prefect flow whose tasks run on Dask.

Thin: every number comes from :mod:`insilico_trials.trial`; this module only decides where the
work runs (Prefect tasks on a ``DaskTaskRunner``), shows progress, and hands the results to the
archive writer. Imported lazily by the CLI, because importing Prefect costs ~7 s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE, CacheKeyFnPolicy
from prefect.futures import as_completed

from insilico_trials.adapters.prefect_dask import api_and_cluster
from insilico_trials.infer import analysis
from insilico_trials.io import spool as spool_mod
from insilico_trials.sim import trial
from insilico_trials.spec.protocol import TrialProtocol

__all__ = ["RunCache", "RunOutcome", "run_trial"]


@dataclass(frozen=True)
class RunCache:
    """Where a run keeps its stage results, and whether it may take them from there.

    Every stage result (a cohort, a chunk, the fit) is persisted under ``root/tag`` with a key
    that names what it computed (``cohort-<arm>``, ``chunk-<arm>-<first>-<last>``, ``fit``);
    ``tag`` hashes the protocol and the code, so a changed protocol or a changed program never
    reuses a result. A normal run refreshes the entries; ``--resume`` takes finished ones.
    """

    root: str
    tag: str
    resume: bool = False

    @property
    def folder(self) -> Path:
        return Path(self.root) / self.tag

    def options(self, key_fn: Any) -> dict[str, Any]:
        return {
            "cache_policy": CacheKeyFnPolicy(cache_key_fn=key_fn),
            "persist_result": True,
            "result_storage": self.folder,
            "refresh_cache": not self.resume,
        }


def _cohort_key(context: Any, params: dict[str, Any]) -> str:
    return f"cohort-{params['arm_name']}"


def _chunk_key(context: Any, params: dict[str, Any]) -> str:
    patient = params["rows"]["patient"]
    return f"chunk-{params['arm_name']}-{int(patient.iloc[0])}-{int(patient.iloc[-1])}"


def _fit_key(context: Any, params: dict[str, Any]) -> str:
    return "fit"


def _from_cache(futures: list[Any]) -> int:
    return sum(1 for f in futures if f.state.name == "Cached")


@dataclass
class RunOutcome:
    """What the flow hands back to the caller (the CLI writes the archive from it)."""

    cohorts: dict[str, Any]
    spooled: spool_mod.Spooled  # chunk tables on disk, analysis columns in memory
    fit: Any
    flow_run_id: str
    timings: dict[str, float] = field(default_factory=dict)


# What the simulation tasks import: the workers load it while the Prefect API starts.
WARM = (
    "insilico_trials.sim.trial", "insilico_trials.sim.cohort", "insilico_trials.sim.pk",
    "insilico_trials.sim.tumour", "insilico_trials.sim.endpoints", "insilico_trials.io.spool",
    "insilico_trials.infer.outcomes", "pymc", "nutpie",
)  # fmt: skip


# Inputs are protocols and DataFrames: hashing them for Prefect's default cache key costs time
# and buys nothing here, so caching is off (resumable runs key their cache explicitly).
@task(name="sample-cohort", cache_policy=NO_CACHE)
def cohort_task(protocol: TrialProtocol, arm_name: str) -> Any:
    arm = next(a for a in protocol.arms if a.name == arm_name)
    return trial.arm_cohort(protocol, arm)


@task(name="simulate-chunk", cache_policy=NO_CACHE, retries=2)
def simulate_task(
    protocol: TrialProtocol, arm_name: str, rows: Any, spool: str
) -> spool_mod.ChunkDigest:
    """Simulate one chunk on a worker, write its tables to the spool, return its digest."""
    chunk = trial.simulate_chunk(protocol, arm_name, rows)
    return spool_mod.spool_chunk(spool, chunk, keep=trial.summary_columns(protocol))


@task(name="fit-outcome", cache_policy=NO_CACHE)
def fit_task(protocol: TrialProtocol, endpoints: Any) -> Any:
    return analysis.analyse(protocol, endpoints)


def _say(msg: str) -> None:
    print(msg, flush=True)


@flow(name="insilico-trial-run", log_prints=False, persist_result=False)
def trial_flow(
    protocol: TrialProtocol,
    chunk_size: int | None = None,
    cache: RunCache | None = None,
    spool: str = "",
) -> RunOutcome:
    """Cohort per arm -> simulation chunks (Dask tasks, streamed to ``spool``) -> outcome fit."""
    from prefect.runtime import flow_run

    cohort_t, simulate_t, fit_t = cohort_task, simulate_task, fit_task
    if cache is not None:
        cohort_t = cohort_task.with_options(**cache.options(_cohort_key))
        simulate_t = simulate_task.with_options(**cache.options(_chunk_key))
        fit_t = fit_task.with_options(**cache.options(_fit_key))

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    size = chunk_size or protocol.execution.chunk_size
    _say(
        f"[1/3] cohort: sampling {sum(a.n for a in protocol.arms)} virtual patients in {len(protocol.arms)} arms"
    )
    cohort_futures = {a.name: cohort_t.submit(protocol, a.name) for a in protocol.arms}
    cohorts = {name: f.result() for name, f in cohort_futures.items()}
    if cached := _from_cache(list(cohort_futures.values())):
        _say(f"      {cached} cohort(s) taken from the task cache")
    for name, table in cohorts.items():
        screened = table.attrs.get("screened", len(table))
        _say(f"      {name}: {len(table)} enrolled of {screened} screened")
    timings["cohort (first tasks also warm the workers)"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    if not spool:
        raise ValueError("trial_flow needs a spool folder for the chunk tables")
    futures = []
    for arm in protocol.arms:
        table = cohorts[arm.name]
        for start, stop in trial.chunk_bounds(len(table), size):
            futures.append(simulate_t.submit(protocol, arm.name, table.iloc[start:stop], spool))
    total = len(futures)
    _say(
        f"[2/3] simulate: {total} chunks of <= {size} patients (PK, tumour, endpoints), "
        f"streamed to {spool}"
    )
    digests, cached = [], 0
    step = max(1, total // 10)
    for done, fut in enumerate(as_completed(futures), start=1):
        digests.append(fut.result())
        cached += fut.state.name == "Cached"
        if done % step == 0 or done == total:
            _say(f"      {done}/{total} chunks done ({time.perf_counter() - t1:.1f} s)")
    del futures  # the digests are all the flow keeps; Dask may drop its copies
    if cached:
        _say(f"      {cached}/{total} chunks taken from the task cache")
    spooled = spool_mod.Spooled.collect(spool, digests)
    timings["simulate"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    a = protocol.analysis
    _say(
        f"[3/3] fit: {a.model} outcome model on {a.endpoint} "
        f"({a.mcmc.chains} chains x {a.mcmc.draws} draws, first compile is slow)"
    )
    fit_future = fit_t.submit(protocol, spooled.summary)
    fit = fit_future.result()
    if _from_cache([fit_future]):
        _say("      fit taken from the task cache")
    timings["fit"] = time.perf_counter() - t2
    return RunOutcome(
        cohorts=cohorts, spooled=spooled, fit=fit, flow_run_id=str(flow_run.id), timings=timings
    )


def run_trial(
    protocol: TrialProtocol,
    *,
    workers: int | None = None,
    dask_address: str | None = None,
    chunk_size: int | None = None,
    cache: RunCache | None = None,
    spool: str | Path | None = None,
) -> RunOutcome:
    """Run :func:`trial_flow` on Dask (LocalCluster of ``workers`` or ``dask_address``).

    With ``cache``, stage results are persisted (and, with ``cache.resume``, reused) and the
    chunk tables are spooled to ``<cache folder>/parts``; otherwise to ``spool``, which is
    then required. Either folder must be reachable from the Dask workers (always true for a
    LocalCluster); the caller removes it once the archive is written.
    """
    if spool is None:
        if cache is None:
            raise ValueError("run_trial needs a cache or a spool folder")
        spool = cache.folder / "parts"
    with api_and_cluster(workers=workers, dask_address=dask_address, warm=WARM) as runner:
        return trial_flow.with_options(task_runner=runner)(
            protocol, chunk_size, cache, str(Path(spool).resolve())
        )
