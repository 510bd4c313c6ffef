"""The protocol's analysis of a run's endpoints: the outcome fit and its decision, the
sufficient statistics of the simulated control arm, and the comparison with the published
model's own outputs.
"""

from __future__ import annotations

import functools
from typing import Any

import pandas as pd

from insilico_trials.infer.conjugate import MixturePrior, arm_statistics
from insilico_trials.sim.trial import analysis_frame
from insilico_trials.spec.catalog import OUTCOME_FAMILIES
from insilico_trials.spec.protocol import TrialProtocol
from insilico_trials.units import DAYS_PER_MONTH

__all__ = ["analyse", "analyse_frame", "validation_table", "virtual_control_summary"]


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
    return analyse_frame(protocol, analysis_frame(protocol, endpoints), prior, treatment=treatment)


def analyse_frame(
    protocol: TrialProtocol,
    frame: pd.DataFrame,
    prior: MixturePrior | None = None,
    *,
    treatment: str | None = None,
) -> Any:
    """:func:`analyse` on a frame already in the outcome model's columns (``response``, or
    ``time`` in days and ``event``, and ``arm`` with protocol arm names): the simulated
    endpoints of ``run`` or the real patients of ``update``'s cuts."""
    from insilico_trials.infer.outcomes import fit_outcome

    treat = treatment or protocol.analysis.treatment or protocol.treatment_arms[0].name
    control = protocol.control_arm.name
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


@functools.lru_cache(maxsize=4)
def _product_t90(strategy: str, rule: Any) -> Any:
    """The product's simulation of all 22 matrices: 90%-resistance step as a script index
    (nan beyond the script's 10,000), computed once per process (deterministic)."""
    import numpy as np

    from insilico_trials.sim.tumour import ZHANG2017_PARAMS, simulate_zhang

    mats = np.arange(len(ZHANG2017_PARAMS.alphas))
    res = simulate_zhang(mats, strategy=strategy, rule=rule, horizon_days=10_000)  # type: ignore[arg-type]
    ours = res["pretreatment_days"] + res["resistance_days"] + 1
    ours[ours > 10_000] = np.nan  # the script's run ends at index 10,000
    ours.setflags(write=False)
    return ours


# ADVICE4U (Nimri R et al. Nat Med 2020;26:1380-1384, abstract): 108 youths with type 1
# diabetes (10-21 years) on insulin pumps, six months, settings adjusted every three weeks by an
# AI decision support system (n = 54) or by physicians (n = 54); mean +- SD.
ADVICE4U = {
    "source": "Nimri R et al. Nat Med 2020;26:1380-1384 (ADVICE4U, NCT03003806), abstract",
    "tir_pct": {"physician": 51.6, "ai_dss": 50.2},
    "tbr54_pct": {"physician": 1.0, "ai_dss": 1.3},
}


def _advice4u_rows(protocol: TrialProtocol, endpoints: pd.DataFrame) -> list[dict[str, Any]]:
    """ADVICE4U's published arms beside this trial's: the standard-care arm beside the physician
    arm, the decision-support arm beside the AI-DSS arm, and the difference. A clinical trial,
    not an output of this model: the distance is shown, whatever it is, with what differs."""
    ctrl = protocol.control_arm.controller
    control = protocol.control_arm.name
    dss = next(
        (a.name for a in protocol.treatment_arms
         if a.controller is not None and a.controller.kind == "decision_support"),
        None,
    )  # fmt: skip
    if dss is None or ctrl is None or ctrl.kind != "basal_bolus":
        return []  # ADVICE4U compares decision support (treatment) with standard care (control)
    means = endpoints.groupby("arm")[["tir_pct", "tbr54_pct"]].mean()
    note = "a clinical trial's result, not an output of this model (see above)"
    rows = []
    for col, what in (
        ("tir_pct", "time in range 70-180 mg/dL"),
        ("tbr54_pct", "time below 54 mg/dL"),
    ):
        pub = ADVICE4U[col]
        for arm, key, label in (
            (control, "physician", "physician arm"),
            (dss, "ai_dss", "AI-DSS arm"),
        ):
            rows.append({
                "kind": "clinical", "quantity": f"{what}: {arm} (ADVICE4U {label})",
                "simulated": float(means.loc[arm, col]), "reference": pub[key], "unit": "%",
                "source": ADVICE4U["source"], "note": note,
            })  # fmt: skip
        rows.append({
            "kind": "clinical", "quantity": f"{what}: {dss} minus {control} (AI-DSS minus physician)",
            "simulated": float(means.loc[dss, col] - means.loc[control, col]),
            "reference": round(pub["ai_dss"] - pub["physician"], 10), "unit": "percentage points",
            "source": ADVICE4U["source"], "note": note,
        })  # fmt: skip
    return rows


def validation_table(protocol: TrialProtocol, endpoints: pd.DataFrame) -> list[dict[str, Any]]:
    """This model's outputs beside the published model's own outputs, where it has any.

    For ``zhang2017`` (Zhang et al. 2017), three kinds of row (``kind``):

    * ``reproduction``: the reproduction mode (:mod:`insilico_trials.sim.zhang2017_script`)
      against the authors' script run under Octave (shipped values, not recomputed here): the
      representative patients (matrices 7 and 5) and the largest distance over all 22
      matrices and 4 schedules, in script steps and percentage points;
    * ``model``: the model as this product runs it (treatment from the step PSA reaches the
      start threshold; the protocol's adaptive rule) against the script's per-matrix times;
    * ``product``: quantities this product defines (PSA time to progression, days on drug)
      with no published counterpart: the paper's model has no PSA progression and was never
      fitted to clinical time, so no clinical figure is set beside them.

    Distances are reported whatever they are; nothing here is fitted to the reference.
    """
    if protocol.disease.is_glucose:
        return _advice4u_rows(protocol, endpoints)
    if protocol.disease.model != "zhang2017":
        return []
    import numpy as np

    from insilico_trials.sim.endpoints import km_median
    from insilico_trials.sim.tumour import AdaptiveRule
    from insilico_trials.sim.zhang2017_script import (
        REPRESENTATIVE_PATIENTS,
        SCRIPT_TREATMENTS,
        script_reference,
        script_reproduction,
    )

    src = (
        "Abiraterone_Main.m of Zhang et al. Nat Commun 2017;8:1816 (authors' code, commit "
        "c38b7e4), run under GNU Octave 7.3.0"
    )
    ref = script_reference().set_index(["treatment", "matrix"])
    # this code's 88 runs (22 matrices x 4 schedules) beside the script's outputs
    rep = script_reproduction()
    ours_by = rep.set_index(["treatment", "matrix"])
    out: list[dict[str, Any]] = []
    steps = "script steps (1 = initial state)"
    for who, mtx in REPRESENTATIVE_PATIENTS.items():
        for key, label in (("soc", "standard dosing"), ("adaptive", "adaptive, script rule")):
            theirs = ref.loc[(SCRIPT_TREATMENTS[key], mtx)]
            ours = ours_by.loc[(SCRIPT_TREATMENTS[key], mtx)]
            quantities = [("T- above 90% of cells", "time_to_90_percent", steps)]
            if key == "adaptive":
                quantities.append(("drug given, % of standard", "percentage_of_soc", "%"))
            for what, col, unit in quantities:
                out.append(
                    {
                        "kind": "reproduction",
                        "quantity": f"representative patient {who} (matrix {mtx}), {label}: {what}",
                        "simulated": float(ours[f"ours_{col}"]),
                        "reference": float(theirs[col]),
                        "unit": unit,
                        "source": src,
                        "note": "reproduction mode",
                    }
                )
    for col, what in (
        ("time_to_5_percent", "T- above 5% of cells (steps)"),
        ("time_to_90_percent", "T- above 90% of cells (steps)"),
        ("percentage_of_soc", "drug given, % of standard (points)"),
    ):
        out.append(
            {
                "kind": "reproduction",
                "quantity": f"all 22 matrices x 4 schedules: largest distance, {what}",
                "simulated": float(rep[f"d_{col}"].abs().max()),
                "reference": 0.0,
                "unit": "distance",
                "source": src,
                "note": f"{len(rep)} runs of 10,000 steps; never reached on both sides counts as 0",
            }
        )
    # The model as this product runs it, against the script's per-matrix times.
    rules: list[tuple[str, AdaptiveRule | None, str]] = [("continuous", None, "SOC")]
    for arm in protocol.arms:
        ad = arm.regimen.adaptive if arm.regimen is not None else None
        if ad is not None and ad.rule == "script":
            rules.append(("adaptive", AdaptiveRule.from_spec(ad), "Adaptive"))
            break
    for strategy, rule, name in rules:
        ours = _product_t90(strategy, rule)
        theirs = ref.loc[name].sort_index()["time_to_90_percent"].to_numpy(dtype=float)
        both = ~np.isnan(ours) & ~np.isnan(theirs)
        d = np.abs(ours[both] - theirs[both])
        unmatched = int(np.sum(np.isnan(ours) != np.isnan(theirs)))
        out.append(
            {
                "kind": "model",
                "quantity": (
                    f"this product's model, {strategy}"
                    + (" (script rule)" if rule is not None else "")
                    + f" vs script {name}: largest distance, T- above 90% of cells, 22 matrices"
                ),
                "simulated": float(d.max()) if d.size else float("nan"),
                "reference": 0.0,
                "unit": "distance, steps",
                "source": src,
                "note": (
                    "the script lays standard dosing from its start index, two steps before PSA "
                    "reaches the start threshold; this product starts treatment at that step"
                    if rule is None
                    else "same rule, decided every step"
                )
                + (f"; {unmatched} matrices reach 90% on one side only" if unmatched else ""),
            }
        )
    for arm in protocol.arms:
        rows = endpoints[endpoints["arm"] == arm.name]
        if rows.empty:
            continue
        med = km_median(rows["ttp_days"].to_numpy(dtype=float), rows["ttp_event"].to_numpy())
        out.append(
            {
                "kind": "product",
                "quantity": f"median time to PSA progression, {arm.name} (months)",
                "simulated": float(med) / DAYS_PER_MONTH,
                "reference": None,
                "unit": "months",
                "source": "defined by this product; no published counterpart",
                "note": (
                    f"PSA {protocol.disease.progression} rule at the protocol's visits, one model "
                    "step taken as one day, patients drawn uniformly over the 22 matrices, "
                    f"followed {protocol.disease.horizon_days} days (Kaplan-Meier median). "
                    "Progression is assessed only at visits with drug on since the previous "
                    "one: a patient whose PSA stays near the resume level after resistance "
                    "emerges may never progress by this definition, so the arms' difference "
                    "depends on it"
                ),
            }
        )
        out.append(
            {
                "kind": "product",
                "quantity": f"days on drug / days followed, {arm.name}",
                "simulated": float(rows["drug_fraction"].mean()),
                "reference": None,
                "unit": "fraction",
                "source": "defined by this product; no published counterpart",
                "note": "mean per patient, up to progression or the horizon",
            }
        )
    return out
