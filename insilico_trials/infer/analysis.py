"""The protocol's analysis of a run's endpoints: the outcome fit and its decision, the
sufficient statistics of the simulated control arm, and the comparison with published values.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from insilico_trials.infer.conjugate import MixturePrior, arm_statistics
from insilico_trials.sim.trial import analysis_frame
from insilico_trials.spec.catalog import OUTCOME_FAMILIES
from insilico_trials.spec.protocol import TrialProtocol
from insilico_trials.units import DAYS_PER_MONTH

__all__ = ["analyse", "validation_table", "virtual_control_summary"]


def analyse(
    protocol: TrialProtocol,
    endpoints: pd.DataFrame,
    prior: MixturePrior | None = None,
    *,
    treatment: str | None = None,
) -> Any:
    """Fit the protocol's outcome model (control vs one treatment arm) and apply its decision
    rule, with ``prior`` on the control parameter (the synthetic control's prior,
    :func:`insilico_trials.run.virtual.synthetic_prior`; None: vague)."""
    from insilico_trials.infer.outcomes import fit_outcome

    treat = treatment or protocol.analysis.treatment or protocol.treatment_arms[0].name
    control = protocol.control_arm.name
    frame = analysis_frame(protocol, endpoints)
    frame = frame[frame["arm"].isin([control, treat])].reset_index(drop=True)
    a = protocol.analysis
    return fit_outcome(
        frame,
        model=a.model,
        control=control,
        treatment=treat,
        decision={**a.decision.model_dump(exclude={"direction"}), "direction": a.decision.side},
        covariates=tuple(a.covariates),
        prior=prior,
        draws=a.mcmc.draws,
        tune=a.mcmc.tune,
        chains=a.mcmc.chains,
        seed=protocol.seed,
    )


def virtual_control_summary(protocol: TrialProtocol, endpoints: pd.DataFrame) -> dict[str, Any]:
    """Sufficient statistics of the simulated control arm: the synthetic control's prior source,
    archived as ``synthetic_control.json`` and read back by ``update``
    (:func:`insilico_trials.infer.conjugate.arm_statistics`)."""
    frame = analysis_frame(protocol, endpoints)
    ctrl = frame[frame["arm"] == protocol.control_arm.name]
    model = protocol.analysis.model
    return {
        "endpoint": protocol.analysis.endpoint,
        "model": model,
        **arm_statistics(ctrl, OUTCOME_FAMILIES[model].kind),
    }


def validation_table(protocol: TrialProtocol, endpoints: pd.DataFrame) -> list[dict[str, Any]]:
    """This run's simulated values beside published ones, where the model has any.

    For ``zhang2017``: Kaplan-Meier median PSA time to progression per strategy and the
    cumulative drug exposure of adaptive relative to continuous dosing (Zhang et al. 2017).
    The distance is reported whatever it is; nothing here is fitted to the published values.
    """
    if protocol.disease.model != "zhang2017":
        return []
    from insilico_trials.sim.endpoints import km_median
    from insilico_trials.sim.tumour import ZHANG2017_PUBLISHED

    src = "Zhang et al. Nat Commun 2017;8:1816, Abstract and Results (clinical trial)"
    by = {}
    for arm in protocol.arms:
        rows = endpoints[endpoints["arm"] == arm.name]
        strategy = "adaptive" if arm.regimen and arm.regimen.adaptive else "continuous"
        by[strategy] = rows
    out: list[dict[str, Any]] = []
    for strategy, key, note in (
        ("continuous", "median_ttp_months_continuous", "about 16.5 months with standard dosing"),
        (
            "adaptive",
            "median_ttp_months_adaptive_at_least",
            "at least 27 months (median not reached)",
        ),
    ):
        if strategy not in by:
            continue
        rows = by[strategy]
        med = km_median(rows["ttp_days"].to_numpy(dtype=float), rows["ttp_event"].to_numpy())
        out.append(
            {
                "quantity": f"median time to PSA progression, {strategy} (months)",
                "simulated": float(med) / DAYS_PER_MONTH,
                "published": float(ZHANG2017_PUBLISHED[key]),
                "source": f"{src}: {note}",
                "note": f"Kaplan-Meier median; patients followed {protocol.disease.horizon_days} days",
            }
        )
    if {"continuous", "adaptive"} <= set(by):
        out.append(
            {
                "quantity": "cumulative drug exposure, adaptive / continuous",
                "simulated": float(by["adaptive"]["drug_fraction"].mean()),
                "published": float(
                    ZHANG2017_PUBLISHED["adaptive_cumulative_dose_fraction_of_standard"]
                ),
                "source": f"{src}: 47% of standard dosing",
                "note": "mean per-patient fraction of followed days on drug (continuous = 1)",
            }
        )
    for row in out:
        pub, sim = row["published"], row["simulated"]
        row["relative_distance"] = (sim - pub) / pub if pub and sim == sim else float("nan")
    return out
