"""One in-silico trial, run through an executor: the library's entry point.

:func:`run_trial` takes a validated protocol and returns a :class:`RunResult`. Its stages, each
submitted to the executor (serial by default) under a key that names what it computes:

1. ``cohort-<arm>``: the virtual patients of each arm (keyed random streams);
2. ``chunk-<arm>-<first>-<last>``: PK, disease and endpoints for a chunk of patients, its
   tables handed to the sink (memory, or Parquet parts on a shared folder);
3. ``virtual-<first>-<last>`` (replicates; a borrowing or PROCOVA synthetic control
   only): the replicate virtual control arms whose spread bounds the synthetic control's prior
   (:mod:`insilico_trials.run.virtual`);
4. ``fit``: the outcome model with the synthetic control's prior, and the decision rule;
5. ``sobol-<arm>-<start>``: the declared sensitivity stage (``protocol.sensitivity``), on the
   cohorts of stage 1.

No printing here: progress goes to the ``progress`` callable given by the caller.

Examples
--------
>>> from insilico_trials.spec.protocol import load_protocol
>>> result = run_trial(load_protocol("protocols/onc_phase2_orr.yaml"))  # doctest: +SKIP
>>> result.fit.decision  # doctest: +SKIP
'go'
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from insilico_trials.infer import analysis, sensitivity
from insilico_trials.infer.synthetic import VirtualArms, VirtualPrior
from insilico_trials.run.executor import WARM, Executor, Serial, Session
from insilico_trials.run.sinks import ChunkDigest, ChunkSink, ChunkTables, MemorySink
from insilico_trials.run.virtual import (
    baseline_frame,
    submit_virtual_arms,
    synthetic_prior,
    virtual_patients,
)
from insilico_trials.sim import trial
from insilico_trials.spec.protocol import TrialProtocol

__all__ = ["WARM", "RunResult", "run_trial"]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class RunResult:
    """Everything a run computed: what the archive writer, the report and the tracker read.

    Attributes
    ----------
    cohorts
        Virtual patients per arm (covariates and individual parameters); ``attrs["screened"]``.
    tables
        Every chunk's tables (:class:`~insilico_trials.run.sinks.ChunkTables`): the analysis
        columns in memory (``tables.summary``), the per-patient tables in the sink.
    fit
        The outcome fit and its decision (:class:`~insilico_trials.infer.outcomes.OutcomeFit`).
    sensitivity
        Sobol indices of the decision quantity (``None`` when off or nothing to vary).
    run_id
        The executor's id of the run (a Prefect flow-run id; empty when serial).
    timings
        Seconds per stage.
    virtual_arms, virtual_prior
        The synthetic control's replicate virtual arms and the prior the analysis used
        (``None`` when the protocol does not borrow).
    procova
        ``synthetic_control.method: procova``: the qualified PROCOVA analysis (prognostic
        model trained on the virtual arms, ANCOVA of the trial's randomised contrast).
    """

    protocol: TrialProtocol
    cohorts: dict[str, pd.DataFrame]
    tables: ChunkTables
    fit: Any
    sensitivity: dict[str, Any] | None
    run_id: str
    timings: dict[str, float] = field(default_factory=dict)
    virtual_arms: VirtualArms | None = None
    virtual_prior: VirtualPrior | None = None
    procova: dict[str, Any] | None = None


def _cohort(protocol: TrialProtocol, arm_name: str) -> pd.DataFrame:
    arm = next(a for a in protocol.arms if a.name == arm_name)
    return trial.arm_cohort(protocol, arm)


def _simulate(
    protocol: TrialProtocol, arm_name: str, rows: pd.DataFrame, sink: ChunkSink
) -> ChunkDigest:
    """Simulate one chunk (on a worker), hand its tables to the sink, return its digest."""
    return sink.write(trial.simulate_chunk(protocol, arm_name, rows))


def _quiet(_: str) -> None:
    pass


def _stages(
    session: Session,
    protocol: TrialProtocol,
    sink: ChunkSink,
    size: int,
    say: Progress,
    fitter: Callable[[TrialProtocol, pd.DataFrame], Any],
) -> RunResult:
    timings: dict[str, float] = {}
    sc = protocol.synthetic_control
    n_stages = 3 + int(protocol.sensitivity.sobol) + int(sc.uses_virtual_arms)
    stage = iter(range(1, n_stages + 1))

    t0 = time.perf_counter()
    say(
        f"[{next(stage)}/{n_stages}] cohort: sampling {sum(a.n for a in protocol.arms)} virtual patients "
        f"in {len(protocol.arms)} arms"
    )
    futures = {
        a.name: session.submit(
            _cohort, protocol, a.name, key=f"cohort-{a.name}", label="sample-cohort"
        )
        for a in protocol.arms
    }
    cohorts = {name: f.result() for name, f in futures.items()}
    if cached := sum(f.cached for f in futures.values()):
        say(f"      {cached} cohort(s) taken from the task cache")
    for name, table in cohorts.items():
        say(
            f"      {name}: {len(table)} enrolled of {table.attrs.get('screened', len(table))} screened"
        )
    timings["cohort (first tasks also warm the workers)"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    chunks = []
    for arm in protocol.arms:
        table = cohorts[arm.name]
        for start, stop in trial.chunk_bounds(len(table), size):
            rows = table.iloc[start:stop]
            key = f"chunk-{arm.name}-{int(rows['patient'].iloc[0])}-{int(rows['patient'].iloc[-1])}"
            chunks.append(
                session.submit(
                    _simulate,
                    protocol,
                    arm.name,
                    rows,
                    sink,
                    key=key,
                    label="simulate-chunk",
                    retries=2,
                )
            )
    total = len(chunks)
    say(
        f"[{next(stage)}/{n_stages}] simulate: {total} chunks of <= {size} patients "
        + (
            "(glucose-insulin model minute by minute, CGM endpoints)"
            if protocol.disease.is_glucose
            else "(PK, tumour, endpoints)"
        )
    )
    digests, cached = [], 0
    step = max(1, total // 10)
    for done, fut in enumerate(session.as_completed(chunks), start=1):
        digests.append(fut.result())
        cached += fut.cached
        if done % step == 0 or done == total:
            say(f"      {done}/{total} chunks done ({time.perf_counter() - t1:.1f} s)")
    del chunks  # the digests are all the run keeps; the cluster may drop its copies
    if cached:
        say(f"      {cached}/{total} chunks taken from the task cache")
    tables = sink.collect(digests)
    timings["simulate"] = time.perf_counter() - t1

    arms, vprior, procova = None, None, None
    if sc.uses_virtual_arms:
        tv = time.perf_counter()
        say(
            f"[{next(stage)}/{n_stages}] synthetic control: {sc.virtual_replicates} replicate "
            f"virtual control arms of {virtual_patients(protocol)} patients, each with its own "
            f"draw of the model's parameters"
            + (f"; prior rule {sc.prior}" if sc.borrows else "; PROCOVA prognostic model")
        )
        arms = submit_virtual_arms(session, protocol, size)()
        if sc.borrows:
            vprior = synthetic_prior(protocol, arms)
            say(
                f"      prior: {sc.method}, ESS {vprior.prior_ess:.1f} ({vprior.ess_method}); "
                f"informative part capped at {vprior.cap:g}"
                + (f" (scaled by {vprior.cap_factor:.3g} from ESS {vprior.uncapped_ess:.1f})"
                   if vprior.cap_factor < 1 else "")
            )  # fmt: skip
        else:
            procova = procova_analysis(protocol, arms, cohorts, tables.summary)
            say(
                f"      PROCOVA: prognostic model on {procova['model']['n_train']} virtual "
                f"patients (R^2 {procova['model']['r_squared']:.2f}); ANCOVA effect "
                f"{procova['estimate']:.3g} (se {procova['se']:.3g}, unadjusted "
                f"{procova['unadjusted_se']:.3g})"
            )
        timings["synthetic control (replicate virtual arms)"] = time.perf_counter() - tv

    t2 = time.perf_counter()
    a = protocol.analysis
    say(
        f"[{next(stage)}/{n_stages}] fit: {a.model} outcome model on {a.endpoint} "
        f"({a.mcmc.chains} chains x {a.mcmc.draws} draws, first compile is slow)"
    )
    prior = vprior.prior if vprior is not None else None
    fit_future = session.submit(
        fitter, protocol, tables.summary, prior, key="fit", label="fit-outcome", model=True
    )
    # The sensitivity evaluations run while the fit samples.
    sens_futures, plan = [], None
    if protocol.sensitivity.sobol:
        s = protocol.sensitivity
        plan = sensitivity.sobol_plan(protocol, n_base=s.n_base, max_patients=s.max_patients)
    if plan is not None:
        for arm in protocol.arms:
            for start, stop in sensitivity.sobol_batches(plan, len(cohorts[arm.name])):
                sens_futures.append(
                    session.submit(
                        sensitivity.sobol_evaluate,
                        protocol,
                        plan,
                        arm.name,
                        cohorts[arm.name],
                        start,
                        stop,
                        key=f"sobol-{arm.name}-{start}",
                        label="sensitivity",
                    )
                )
    fit = fit_future.result()
    if fit_future.cached:
        say("      fit taken from the task cache")
    timings["fit"] = time.perf_counter() - t2

    result_sensitivity = None
    if protocol.sensitivity.sobol:
        t3 = time.perf_counter()
        n = next(stage)
        if plan is None:
            say(f"[{n}/{n_stages}] sensitivity: no uncertain typical value to vary")
        else:
            say(
                f"[{n}/{n_stages}] sensitivity: Sobol indices of {', '.join(plan.names)} "
                f"({len(plan.factors)} evaluations in {len(sens_futures)} tasks)"
            )
            parts = [f.result() for f in sens_futures]  # submission order: arm, then batch
            result_sensitivity = sensitivity.sobol_indices(protocol, plan, parts)
        timings["sensitivity"] = time.perf_counter() - t3
    return RunResult(
        protocol=protocol,
        cohorts=cohorts,
        tables=tables,
        fit=fit,
        sensitivity=result_sensitivity,
        run_id=session.run_id,
        timings=timings,
        virtual_arms=arms,
        virtual_prior=vprior,
        procova=procova,
    )


def procova_analysis(
    protocol: TrialProtocol,
    arms: VirtualArms,
    cohorts: dict[str, pd.DataFrame],
    summary: pd.DataFrame,
) -> dict[str, Any]:
    """The EMA-qualified PROCOVA analysis of the trial: a linear prognostic model of the
    outcome on baseline covariates, trained on the virtual control patients, scores each trial
    patient; the randomised contrast is an ANCOVA on that score
    (:func:`insilico_trials.infer.procova.procova_ancova`, model-based se). The one-sided p is
    for the protocol's criterion (effect beyond ``delta`` in its direction)."""
    from scipy import stats

    from insilico_trials.infer.procova import fit_prognostic_model, procova_ancova
    from insilico_trials.infer.synthetic import prognostic_covariates

    covs = prognostic_covariates(protocol)
    model = fit_prognostic_model(arms.patients, covariates=covs)
    control = protocol.control_arm.name
    treat = protocol.analysis.treatment or protocol.treatment_arms[0].name
    cohort = pd.concat([cohorts[control], cohorts[treat]], ignore_index=True)
    frame = baseline_frame(protocol, cohort, summary)
    frame = model.with_score(frame)
    d = protocol.analysis.decision
    res = procova_ancova(frame, control=control, treatment=treat, delta=d.delta)
    t = (res.estimate - d.delta) / res.se
    p_one = float(stats.t.sf(t, res.df) if d.side == "greater" else stats.t.cdf(t, res.df))
    return {
        "method": "PROCOVA (ANCOVA of the randomised contrast on a prognostic score; EMA "
        "qualification opinion 2022, Schuler et al. 2021)",
        "model": {"covariates": list(model.covariates), "intercept": model.intercept,
                  "coefficients": list(model.coefficients), "n_train": model.n_train,
                  "residual_sd": model.residual_sd, "r_squared": model.r_squared},
        "estimate": res.estimate, "se": res.se, "ci95": list(res.ci), "df": res.df,
        "p_one_sided": p_one, "criterion": d.text, "rho": res.rho,
        "unadjusted_estimate": res.unadjusted_estimate, "unadjusted_se": res.unadjusted_se,
        "n_control": res.n_control, "n_treatment": res.n_treatment,
    }  # fmt: skip


def run_trial(
    protocol: TrialProtocol,
    *,
    executor: Executor | None = None,
    sink: ChunkSink | None = None,
    chunk_size: int | None = None,
    progress: Progress | None = None,
    fit: Callable[[TrialProtocol, pd.DataFrame], Any] = analysis.analyse,
) -> RunResult:
    """Run one in-silico trial: cohorts, simulation in chunks, outcome fit, sensitivity.

    Parameters
    ----------
    protocol : TrialProtocol
        A validated protocol (:func:`insilico_trials.spec.protocol.load_protocol`).
    executor : Executor, optional
        Where the stages run; default :class:`~insilico_trials.run.executor.Serial` (this
        process). The Prefect-on-Dask executor is
        :class:`insilico_trials.adapters.prefect_dask.PrefectDask`.
    sink : ChunkSink, optional
        Where each chunk's tables go; default in memory
        (:class:`~insilico_trials.run.sinks.MemorySink`). With a cluster, use
        :class:`insilico_trials.io.spool.ParquetSpool` on a folder the workers reach.
    chunk_size : int, optional
        Patients per task; default ``protocol.execution.chunk_size``. No effect on any number.
    progress : callable, optional
        Receives one line of text per step (the CLI prints them); default silent.
    fit : callable
        ``fit(protocol, summary, prior) -> OutcomeFit`` (``prior``: the synthetic control's
        prior on the control parameter, None for a vague one): the outcome fit and decision; default
        :func:`insilico_trials.infer.analysis.analyse` (MCMC where needed). Tests pass
        :func:`insilico_trials.testing.mock_fit`.

    Returns
    -------
    RunResult
    """
    executor = executor or Serial()
    sink = sink or MemorySink(keep=tuple(trial.summary_columns(protocol)))
    size = chunk_size or protocol.execution.chunk_size
    say = progress or _quiet
    return executor.run(
        "insilico-trial-run",
        lambda session: _stages(session, protocol, sink, size, say, fit),
        warm=WARM,
    )
