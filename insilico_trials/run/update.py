"""A real data cut's refit of the synthetic control and the trial's decision, run through an
executor.

:func:`borrowing_arguments` compiles the protocol's analysis and synthetic-control sections
into the arguments of :func:`insilico_trials.infer.borrowing.update_control`;
:func:`refit_control` runs that refit as one task of the executor (serial by default);
:func:`hybrid_decisions` applies the protocol's analysis to the real patients of every
treatment arm against the hybrid control (the real control patients with the synthetic
control's prior), with :func:`insilico_trials.infer.decision.hybrid_effect`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from insilico_trials.infer.borrowing import UpdateResult, update_control
from insilico_trials.infer.synthetic import VirtualPrior
from insilico_trials.run.executor import Executor, Serial
from insilico_trials.spec.catalog import ENDPOINTS
from insilico_trials.spec.design import ENDPOINT_OF_MODEL
from insilico_trials.spec.protocol import TrialProtocol
from insilico_trials.units import DAYS_PER_MONTH

__all__ = ["ARCHIVE_DEFAULT_ENGINE", "borrowing_arguments", "control_composition",
           "hybrid_decisions", "look_status", "recorded_engine", "refit_control",
           "virtual_source"]  # fmt: skip

# An archived update without an ``engine`` entry was made before engines existed: by MCMC.
ARCHIVE_DEFAULT_ENGINE = "mcmc"

_METHOD = {"robust_mixture": "robust"}  # protocol name -> borrowing.py name


def borrowing_arguments(protocol: TrialProtocol) -> dict[str, Any]:
    """Map the protocol's analysis and synthetic-control sections to ``update_control`` arguments."""
    sc = protocol.synthetic_control
    params: dict[str, Any] = {}
    if sc.a0 is not None:
        params["a0"] = sc.a0
    if sc.vague_weight is not None:
        params["weight"] = sc.vague_weight
    if sc.sd_scale is not None:
        params["sd_scale"] = sc.sd_scale
    a = protocol.analysis
    return {
        "method": _METHOD.get(sc.method, sc.method),
        "params": params,
        "endpoint": ENDPOINT_OF_MODEL[a.model],
        "paramcd": ENDPOINTS[a.endpoint].paramcd,
        "draws": a.mcmc.draws,
        "tune": a.mcmc.tune,
        "chains": a.mcmc.chains,
        "seed": protocol.seed,
    }


def virtual_source(record: Mapping[str, Any]) -> VirtualPrior | Mapping[str, Any]:
    """What ``update`` borrows from, read from an archive's ``synthetic_control.json``: the
    prior the run's analysis used (:class:`~insilico_trials.infer.synthetic.VirtualPrior`)
    when the run borrowed, else the run's control-arm statistics (no borrowing, or an archive
    made before replicate virtual arms existed)."""
    if record.get("prior"):
        return VirtualPrior.from_json(record["prior"])
    return record


def recorded_engine(record: Mapping[str, Any]) -> str:
    """The engine an archived update (its ``update.json``) was made with, to replay it with the
    same one: ``"closed_form"`` or ``"mcmc"``; ``"mcmc"`` for a record without the entry (an
    archive made before engines existed), so such an archive replays as it was made."""
    return str(record.get("engine") or ARCHIVE_DEFAULT_ENGINE)


def refit_control(
    virtual_control: VirtualPrior | pd.DataFrame | Mapping[str, Any],
    real_control: pd.DataFrame,
    protocol: TrialProtocol,
    *,
    executor: Executor | None = None,
    engine: str = "auto",
) -> tuple[UpdateResult, str]:
    """Refit the control parameter on the real control patients of all cuts so far.

    ``virtual_control`` is the synthetic control's prior as the run made it (``update`` reads
    it from the archive with :func:`virtual_source`), or the simulated control arm's patients
    or statistics (pooled power prior).

    ``engine``: ``auto`` (default; the closed form wherever one exists, else MCMC),
    ``closed_form`` or ``mcmc`` (see :func:`insilico_trials.infer.borrowing.resolve_engine`);
    a replay of an archived update passes :func:`recorded_engine` of its record.

    Returns the :class:`~insilico_trials.infer.borrowing.UpdateResult` and the executor's run
    id (a Prefect flow-run id; empty when serial).
    """
    args = {k: v for k, v in borrowing_arguments(protocol).items() if k != "paramcd"}
    args["engine"] = engine

    def body(session: Any) -> tuple[UpdateResult, str]:
        future = session.submit(
            _refit, virtual_control, real_control, args, key="refit",
            label="refit-synthetic-control",
        )  # fmt: skip
        return future.result(), session.run_id

    return (executor or Serial()).run("insilico-synthetic-control-update", body)


def _refit(
    virtual_control: VirtualPrior | pd.DataFrame | Mapping[str, Any],
    real_control: pd.DataFrame,
    args: dict[str, Any],
) -> UpdateResult:
    return update_control(virtual_control, [real_control], **args)


def effect_prior(
    virtual_control: VirtualPrior | pd.DataFrame | Mapping[str, Any], result: UpdateResult
) -> Any:
    """The control prior of the trial's analysis at a cut: the synthetic control's prior as
    the run's analysis used it (a :class:`VirtualPrior`'s ``prior``), else the refit's prior
    (power prior from the virtual arm's statistics); None for a commensurate prior."""
    if isinstance(virtual_control, VirtualPrior):
        return virtual_control.prior
    return result.prior


def hybrid_decisions(
    protocol: TrialProtocol,
    frame: pd.DataFrame,
    prior: Any,
    *,
    engine: str = "auto",
) -> dict[str, Any]:
    """The protocol's analysis of every treatment arm's real patients against the hybrid
    control (``frame``: real patients of all cuts so far, outcome columns and protocol arm
    names in ``arm``). Returns ``{arm: Effect}`` in protocol order; an arm without real
    patients yet gets an Effect that says so."""
    from insilico_trials.infer.decision import hybrid_effect

    return {
        arm.name: hybrid_effect(protocol, frame, prior, treatment=arm.name, engine=engine)
        for arm in protocol.treatment_arms
    }


def control_composition(record: Mapping[str, Any]) -> dict[str, float]:
    """How much of the hybrid control arm is real and how much virtual, from an update's
    record, in the unit its borrowing is counted in (patients; events for time to event):
    the real ones, the effective number of virtual ones borrowed, and the virtual share of
    their sum (NaN when either is unknown)."""
    unit = record.get("ess_unit") or "patients"
    if unit == "events":  # borrowed information is counted in events for time to event
        real = float((record.get("real_stats") or {}).get("d", float("nan")))
    else:
        real = float(record.get("n_real") or 0.0)
    virtual = float(record.get("borrowed_virtual") or 0.0)
    known = real == real and virtual == virtual
    total = real + virtual if known else float("nan")
    return {
        "unit": unit,
        "real": real,
        "virtual_borrowed": virtual,
        "virtual_share": virtual / total if known and total > 0 else float("nan"),
    }


def look_status(
    protocol: TrialProtocol, frame: pd.DataFrame, prior: Any, effect: Any
) -> dict[str, Any]:
    """Which planned look a cut corresponds to, the protocol's rule there (the trial's
    decision at this cut), and the predictive probability of success at the planned final
    analysis (for the analysed treatment arm).

    Looks are :func:`insilico_trials.infer.design.planned_looks`, the ones ``design``
    evaluates. Binary and continuous endpoints: the last look whose per-arm sizes the real
    patients of both arms have reached. Time-to-event endpoints: the last look whose calendar
    month the cut has reached; the cut's month is estimated from the data (cut dates are not
    in an archive: full dates are screened out) as the larger of the months needed to enrol
    the real patients at the planned accrual and the longest follow-up of a patient still
    without an event. Before the first look no rule applies.

    The probability of success is exact for a binary endpoint with a closed-form posterior
    (:func:`insilico_trials.infer.decision.binary_predictive_success`), simulated for a
    constant-hazard analysis (:func:`~insilico_trials.infer.decision.tte_predictive_success`),
    and otherwise not computed (the record says why). Final sizes are the planned ones, or the
    real ones where a cut already has more patients.
    """
    from insilico_trials.infer.decision import binary_predictive_success, tte_predictive_success
    from insilico_trials.infer.design import planned_looks

    looks, rule = planned_looks(protocol)
    a = protocol.analysis
    nc, nt = int(effect.n_control), int(effect.n_treatment)
    ctrl = frame[frame["arm"] == protocol.control_arm.name]
    trt = frame[frame["arm"] == effect.treatment]
    final = looks[-1]
    fc, ft = max(final.n_control, nc), max(final.n_treatment, nt)
    out: dict[str, Any] = {
        "treatment": effect.treatment,
        "planned": [[lk.n_control, lk.n_treatment] for lk in looks],
        "of": len(looks),
    }
    tte = ENDPOINT_OF_MODEL[a.model] == "tte"
    cut_month = None
    if tte:
        ep = protocol.endpoints
        both = pd.concat([ctrl, trt])
        censored = both.loc[both["event"] == 0, "time"] / DAYS_PER_MONTH
        cut_month = max(
            (nc + nt) / float(ep.accrual_per_month),
            float(censored.max()) if len(censored) else 0.0,
        )
        months = [lk.month for lk in looks]
        reached = [j for j, m in enumerate(months) if cut_month >= m - 1e-9]
        out["planned_months"] = months
        out["cut_month_estimate"] = cut_month
    else:
        reached = [j for j, lk in enumerate(looks) if nc >= lk.n_control and nt >= lk.n_treatment]
    j = reached[-1] if reached else None
    out["look"] = j + 1 if j is not None else 0
    if j is not None:
        if j == len(looks) - 1:
            out["thresholds"] = {"success": rule.success}
        else:
            out["thresholds"] = {"efficacy": rule.efficacy[j], "futility": rule.futility[j]}
            if rule.futility_pos and rule.futility_pos[j] > 0:
                out["thresholds"]["futility_pos"] = rule.futility_pos[j]
    pos = None
    at_final = j == len(looks) - 1
    if at_final:
        out.update(pos=None, pos_method="the cut is at the planned final analysis")
    elif a.model == "binary" and effect.engine == "closed_form" and prior is not None:
        kw = {"delta": float(a.decision.delta), "success_threshold": rule.success,
              "direction": a.decision.side}  # fmt: skip
        xc, xt = int(ctrl["response"].sum()), int(trt["response"].sum())
        pos = float(binary_predictive_success(prior, nc, nt, fc, ft, **kw)[xc, xt])
        out.update(pos=pos, pos_mcse=0.0, pos_method="exact (beta-binomial predictive)")
        # the option: control patients still to come from the virtual cohort's model
        virtual = binary_predictive_success(prior, nc, nt, fc, ft, control_source="virtual", **kw)
        out["pos_virtual_control"] = float(virtual[xc, xt])
    elif a.model == "tte_exponential" and effect.engine == "closed_form" and prior is not None:
        ep = protocol.endpoints
        draws = 4000
        pos, mcse = tte_predictive_success(
            prior, ctrl, trt, fc, ft,
            accrual_per_month=float(ep.accrual_per_month),
            follow_up_months=ep.follow_up_weeks * 7.0 / DAYS_PER_MONTH,
            dropout_per_month=ep.dropout_per_year / 12.0,
            delta=float(a.decision.delta), success_threshold=rule.success,
            direction=a.decision.side, draws=draws, seed=protocol.seed, cut_month=cut_month,
        )  # fmt: skip
        out.update(
            pos=pos, pos_mcse=mcse,
            pos_method=f"simulation of the remaining trial, {draws} posterior draws (the "
            "design's accrual and follow-up; every patient without an event taken as still at "
            "risk, none as lost to follow-up)",
        )  # fmt: skip
    else:
        why = (
            "no real patients of the treatment arm yet"
            if not nt
            else f"model {a.model} with engine {effect.engine}: computed for binary and "
            "constant-hazard analyses with a closed-form posterior only"
        )
        out.update(pos=None, pos_method=f"not computed ({why})")
    if j is None:
        out["verdict"] = "before the first planned look: no rule applies"
    elif effect.probability != effect.probability:
        out["verdict"] = "no decision (no effect estimate)"
    else:
        out["verdict"] = rule.verdict(j, len(looks), float(effect.probability), pos)
        if not at_final and pos is None and rule.futility_pos and rule.futility_pos[j] > 0:
            out["note"] = "the futility rule on the probability of success was not evaluated"
    return out
