"""The synthetic control's replicate virtual arms, simulated through an executor, and the
prior they imply (:mod:`insilico_trials.infer.synthetic`).

Replicate ``r`` (1..R) of the control arm samples its patients with its own draw of the
population-level parameters (``uncertainty=True``) and simulates them exactly as ``run``
simulates its arms (:func:`insilico_trials.sim.trial.simulate_chunk` with ``replicate=r``);
each chunk returns only the partial sums of the arm's sufficient statistics, so nothing but a
few numbers per chunk leaves a worker. ``run``, ``design`` and ``update`` all take the prior
from :func:`insilico_trials.infer.synthetic.protocol_prior`, so they evaluate the same prior.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from insilico_trials.infer.synthetic import (
    VirtualArms,
    prognostic_covariates,
    protocol_prior,
    replicate_statistics,
    virtual_cap,
)
from insilico_trials.run.executor import Executor, Serial, Session
from insilico_trials.sim import trial
from insilico_trials.sim.trial import analysis_frame
from insilico_trials.spec.catalog import OUTCOME_FAMILIES
from insilico_trials.spec.protocol import TrialProtocol

__all__ = [
    "baseline_frame",
    "protocol_prior",
    "simulate_virtual_arms",
    "submit_virtual_arms",
    "synthetic_prior",
    "virtual_cap",
    "virtual_patients",
]

synthetic_prior = protocol_prior  # the run's name for it


def _kind(protocol: TrialProtocol) -> str:
    return OUTCOME_FAMILIES[protocol.analysis.model].kind


def virtual_patients(protocol: TrialProtocol) -> int:
    """Patients per replicate virtual arm: ``synthetic_control.virtual_patients``, default
    ``max(500, control n)``."""
    return protocol.synthetic_control.virtual_patients or max(500, protocol.control_arm.n)


def _virtual_cohort(protocol: TrialProtocol, replicate: int) -> Any:
    return trial.arm_cohort(
        protocol, protocol.control_arm, replicate=replicate, uncertainty=True,
        n=virtual_patients(protocol),
    )  # fmt: skip


def _virtual_chunk(protocol: TrialProtocol, replicate: int, rows: Any) -> dict[str, Any]:
    """Partial sums of one chunk of replicate ``replicate``'s control arm (and, for PROCOVA,
    its patients' baseline covariates and outcome under ``"patients"``)."""
    arm = protocol.control_arm.name
    res = trial.simulate_chunk(protocol, arm, rows, replicate=replicate)
    frame = analysis_frame(protocol, res.endpoints)
    kind = _kind(protocol)
    out: dict[str, Any] = {"n": float(len(frame))}
    if protocol.synthetic_control.method == "procova":
        out["patients"] = baseline_frame(protocol, rows, res.endpoints)
    if kind == "binary":
        out["responders"] = float(frame["response"].sum())
    elif kind == "continuous":
        v = frame["value"].to_numpy(dtype=float)
        out["sum"], out["sumsq"] = float(v.sum()), float((v**2).sum())
    else:
        out["events"] = float(frame["event"].sum())
        out["exposure_days"] = float(frame["time"].sum())
    return out


def baseline_frame(protocol: TrialProtocol, cohort: Any, endpoints: Any) -> pd.DataFrame:
    """Patients' ``arm``, baseline covariates (:func:`prognostic_covariates`) and ``value``:
    the cohort's covariates joined with the endpoints on (arm, patient)."""
    covs = [c for c in prognostic_covariates(protocol) if c != "baseline"]
    left = cohort[["arm", "patient", *covs]].astype({"arm": str})
    right = endpoints.astype({"arm": str})
    merged = left.merge(right, on=["arm", "patient"], how="inner", validate="one_to_one")
    frame = analysis_frame(protocol, merged)
    for c in covs:
        frame[c] = merged[c].to_numpy(dtype=float)
    return frame


# Replicates per task: a replicate arm of a few hundred patients simulates in well under a
# second, so one task per chunk (or per replicate) would cost more in scheduling than in work.
REPLICATES_PER_TASK = 5


def _virtual_replicates(protocol: TrialProtocol, replicates: list[int]) -> list[dict[str, Any]]:
    """Sample and simulate whole replicate arms; their chunk partial sums, in order."""
    n = virtual_patients(protocol)
    size = min(n, 2_000)  # bounded memory per simulate_chunk call
    out = []
    for r in replicates:
        table = _virtual_cohort(protocol, r)
        parts = [
            _virtual_chunk(protocol, r, table.iloc[a:b])
            for a, b in trial.chunk_bounds(len(table), size)
        ]
        out.append({"replicate": r, "parts": parts})
    return out


def submit_virtual_arms(
    session: Session, protocol: TrialProtocol, chunk_size: int | None = None
) -> Callable[[], VirtualArms]:
    """Submit the replicate arms in tasks of :data:`REPLICATES_PER_TASK` replicates; returns a
    function that waits and merges. Task keys ``virtual-<first>-<last>`` (replicates); a
    replicate's numbers depend on neither the grouping nor the chunking (keyed streams).
    ``chunk_size`` is accepted for symmetry with the run's stages and not used."""
    reps = list(range(1, protocol.synthetic_control.virtual_replicates + 1))
    groups = [reps[i : i + REPLICATES_PER_TASK] for i in range(0, len(reps), REPLICATES_PER_TASK)]
    futures = [
        session.submit(
            _virtual_replicates,
            protocol,
            g,
            key=f"virtual-{g[0]}-{g[-1]}",
            label="virtual-arms",
            retries=2,
        )
        for g in groups
    ]

    def collect() -> VirtualArms:
        kind = _kind(protocol)
        done = {d["replicate"]: d["parts"] for f in futures for d in f.result()}
        patients = [p.pop("patients") for r in reps for p in done[r] if "patients" in p]
        return VirtualArms(
            kind,
            tuple(replicate_statistics(done[r], kind) for r in reps),
            patients=pd.concat(patients, ignore_index=True) if patients else None,
        )

    return collect


def simulate_virtual_arms(
    protocol: TrialProtocol,
    *,
    executor: Executor | None = None,
    chunk_size: int | None = None,
) -> VirtualArms:
    """The protocol's replicate virtual control arms (serial by default)."""
    size = chunk_size or protocol.execution.chunk_size
    return (executor or Serial()).run(
        "insilico-virtual-arms",
        lambda session: submit_virtual_arms(session, protocol, size)(),
    )
