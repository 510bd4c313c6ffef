"""One in-silico trial, as plain functions: cohort -> simulation per patient chunk -> endpoints
-> outcome fit -> decision.

No Prefect, Dask or MLflow here: ``run.trial.run_trial`` submits these functions to its executor, and the
tests call them directly. Every random draw is keyed by (replicate, arm, patient), so the
numbers do not depend on how patients are chunked or where a chunk runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from insilico_trials.errors import PKInputError
from insilico_trials.spec.catalog import ENDPOINTS, OUTCOME_FAMILIES
from insilico_trials.spec.protocol import Arm, TrialProtocol
from insilico_trials.units import DAYS_PER_YEAR, MONTHS_PER_YEAR

__all__ = [
    "ChunkResult",
    "arm_cohort",
    "chunk_bounds",
    "concat_chunks",
    "dose_amounts_mg",
    "simulate_chunk",
    "summary_columns",
]

PROFILE_PATIENTS = 1000  # patients per arm whose concentration profile goes to the report


def chunk_bounds(n: int, chunk_size: int) -> list[tuple[int, int]]:
    """Half-open patient index ranges ``[start, stop)`` of at most ``chunk_size`` patients."""
    return [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]


def arm_cohort(
    protocol: TrialProtocol,
    arm: Arm,
    *,
    replicate: int = 0,
    uncertainty: bool = False,
    n: int | None = None,
) -> pd.DataFrame:
    """The virtual patients of one arm (covariates and individual parameters).

    ``uncertainty=True`` draws the population-level parameters once for the replicate (the
    synthetic control's replicate arms); ``n`` overrides the arm's size.
    """
    from insilico_trials.sim.cohort import sample_cohort

    if protocol.disease.is_glucose:
        from insilico_trials.sim.glucose import glucose_cohort

        table = glucose_cohort(protocol, arm.name, arm.n if n is None else n)
        table.insert(1, "arm", arm.name)
        table.attrs = {"screened": len(table)}
        return table
    cohort = sample_cohort(
        protocol.population,
        n=arm.n if n is None else n,
        seed=protocol.seed,
        arm=arm.name,
        replicate=replicate,
        uncertainty=uncertainty,
    )
    table = cohort.table.copy()
    table.attrs = {"screened": int(cohort.screened)}
    return table


def dose_amounts_mg(arm: Arm, cohort: pd.DataFrame) -> np.ndarray:
    """Per-patient dose in mg: fixed, or scaled by body weight (kg) or BSA (m2)."""
    reg = arm.regimen
    n = len(cohort)
    if reg is None:
        return np.zeros(n)
    if reg.unit == "mg":
        return np.full(n, reg.dose)
    column = "WT" if reg.unit == "mg/kg" else "BSA"
    return reg.dose * cohort[column].to_numpy(dtype=float)


def _time_grids(protocol: TrialProtocol) -> tuple[np.ndarray, np.ndarray]:
    """PK grid (hours) covering follow-up, and the visit days (0 = baseline)."""
    ep = protocol.endpoints
    follow_days = ep.follow_up_weeks * 7.0
    step_h = protocol.pk.output_interval_h if protocol.pk else 24.0
    times_h = np.arange(0.0, follow_days * 24.0 + 1e-9, step_h)
    visits = np.arange(0.0, follow_days + 1e-9, ep.visit_every_weeks * 7.0)
    return times_h, visits


def _daily_auc(times_h: np.ndarray, conc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Trapezoidal AUC per day (mg*h/L), on day boundaries; returns (day starts, (n, days))."""
    days = int(np.floor(times_h[-1] / 24.0))
    cum = np.concatenate(
        [
            np.zeros((conc.shape[0], 1)),
            np.cumsum(np.diff(times_h) * 0.5 * (conc[:, 1:] + conc[:, :-1]), axis=1),
        ],
        axis=1,
    )
    idx = np.searchsorted(times_h, np.arange(days + 1) * 24.0)
    at_day = cum[:, idx]
    return np.arange(days, dtype=float), np.diff(at_day, axis=1)


@dataclass(frozen=True)
class ChunkResult:
    """What one chunk of patients of one arm produced."""

    arm: str
    start: int
    endpoints: pd.DataFrame
    exposure: pd.DataFrame
    profile_times_h: np.ndarray
    profiles: np.ndarray = field(repr=False)  # (m, T) mg/L, patients < PROFILE_PATIENTS
    visit_days: np.ndarray | None = field(default=None, repr=False)  # (K,) days, 0 = baseline
    sld: np.ndarray | None = field(default=None, repr=False)  # (n, K) true SLD mm at visits


def simulate_chunk(
    protocol: TrialProtocol, arm_name: str, cohort: pd.DataFrame, *, replicate: int = 0
) -> ChunkResult:
    """Simulate PK, tumour and endpoints for a chunk of one arm's patients.

    ``cohort`` holds the chunk's rows of :func:`arm_cohort` (its ``patient`` column keys all
    randomness, so any split of the arm gives the same per-patient results).
    """
    from insilico_trials.sim.endpoints import FollowUp, RecistRules, derive_endpoints

    arm = next(a for a in protocol.arms if a.name == arm_name)
    if protocol.disease.model == "zhang2017":
        return _simulate_zhang_chunk(protocol, arm, cohort, replicate=replicate)
    if protocol.disease.is_glucose:
        from insilico_trials.sim.glucose import simulate_arm

        endpoints, exposure, times_h, profiles = simulate_arm(protocol, arm.name, cohort)
        patient = endpoints["patient"].to_numpy(dtype=np.int64)
        return ChunkResult(
            arm=arm.name,
            start=int(patient[0]) if len(patient) else 0,
            endpoints=endpoints,
            exposure=exposure,
            profile_times_h=times_h,
            profiles=profiles[patient < PROFILE_PATIENTS].astype(np.float32),
        )
    times_h, visits = _time_grids(protocol)
    n = len(cohort)
    patient = cohort["patient"].to_numpy(dtype=np.int64)
    pk_params = {p: cohort[p].to_numpy(dtype=float) for p in _pk_parameter_names(protocol)}
    if protocol.disease.is_file:
        conc, sld = _model_file_pkpd(protocol, arm, cohort, pk_params, times_h, visits)
    else:
        conc, sld = _pk_then_tumour(protocol, arm, cohort, pk_params, times_h, visits)
    ep = protocol.endpoints
    endpoints = derive_endpoints(
        sld,
        visits,
        seed=protocol.seed,
        keys=(replicate, arm.name),
        patient=patient,
        recist=RecistRules(
            measurement_cv=ep.measurement_cv,
            new_lesion_hazard_per_day=ep.new_lesion_hazard_per_day,
        ),
        follow_up=FollowUp(
            dropout_per_day=ep.dropout_per_year / DAYS_PER_YEAR,
            # follow_up_weeks is each patient's follow-up from enrolment, not a calendar cut-off.
            max_follow_up_days=ep.follow_up_weeks * 7.0,
            accrual_per_day=ep.accrual_per_month * MONTHS_PER_YEAR / DAYS_PER_YEAR,
        ),
        os_model=ep.os.model_dump() if ep.os is not None else None,
    )
    endpoints.insert(1, "arm", arm.name)
    if "SLD0" in cohort:
        endpoints["SLD0"] = cohort["SLD0"].to_numpy(dtype=float)
    exposure = _exposure_table(times_h, conc, arm)
    exposure.insert(0, "patient", patient)
    exposure.insert(1, "arm", arm.name)
    # Profiles for the report: the first two weeks at the PK grid, enough to show the
    # approach to steady state; the full grid stays out of the archive (it can be huge).
    # Only the first PROFILE_PATIENTS patients of an arm (a random sample: patient order is
    # random) carry them, so memory does not grow with the arm and chunking changes nothing.
    keep = times_h <= 14 * 24.0
    sampled = patient < PROFILE_PATIENTS
    return ChunkResult(
        arm=arm.name,
        start=int(patient[0]) if n else 0,
        endpoints=endpoints.reset_index(drop=True),
        exposure=exposure.reset_index(drop=True),
        profile_times_h=times_h[keep],
        profiles=conc[np.ix_(sampled, keep)].astype(np.float32),
        visit_days=visits,
        sld=np.asarray(sld, dtype=float),
    )


def _exposure_table(times_h: np.ndarray, conc: np.ndarray, arm: Arm) -> pd.DataFrame:
    """Per-patient exposure: first and last dosing interval (AUC mg*h/L, Cmax mg/L, Tmax h)."""
    from insilico_trials.sim.pk import exposure as ex

    reg = arm.regimen
    n = conc.shape[0]
    if reg is None:
        # Every arm's table has the same columns (the archive's table holds all arms); an
        # untreated patient has no concentration, so no time of its maximum.
        zeros = np.zeros(n)
        return pd.DataFrame({"auc_first_mg_h_l": zeros, "cmax_first_mg_l": zeros,
                             "tmax_first_h": np.full(n, np.nan), "auc_last_mg_h_l": zeros,
                             "cmax_last_mg_l": zeros, "ctrough_last_mg_l": zeros})  # fmt: skip
    tau = reg.interval_h
    last = min((reg.n_doses - 1) * tau, max(0.0, times_h[-1] - tau))
    return pd.DataFrame(
        {
            "auc_first_mg_h_l": ex.auc(times_h, conc, start_h=0.0, end_h=tau),
            "cmax_first_mg_l": ex.cmax(times_h, conc, start_h=0.0, end_h=tau),
            "tmax_first_h": ex.tmax(times_h, conc, start_h=0.0, end_h=tau),
            "auc_last_mg_h_l": ex.auc(times_h, conc, start_h=last, end_h=last + tau),
            "cmax_last_mg_l": ex.cmax(times_h, conc, start_h=last, end_h=last + tau),
            "ctrough_last_mg_l": ex.ctrough(times_h, conc, at_h=last),
        }
    )


def _simulate_zhang_chunk(
    protocol: TrialProtocol, arm: Arm, cohort: pd.DataFrame, *, replicate: int
) -> ChunkResult:
    """Zhang et al. 2017 prostate-cancer model: PSA time to progression and days on drug.

    Each patient is one of the 22 published competition matrices, drawn by a stream keyed by
    (replicate, patient) but not by arm, so both strategies see the same patients (paired).
    """
    from insilico_trials.sim.tumour import AdaptiveRule, simulate_zhang_trial

    reg = arm.regimen
    assert reg is not None  # the schema requires a regimen in every zhang2017 arm
    patient = cohort["patient"].to_numpy(dtype=np.int64)
    rule = AdaptiveRule.from_spec(reg.adaptive) if reg.adaptive is not None else None
    res = simulate_zhang_trial(
        len(cohort),
        seed=protocol.seed,
        strategy="adaptive" if rule is not None else "continuous",
        keys=(replicate,),
        rule=rule,
        horizon_days=protocol.disease.horizon_days,
        progression=protocol.disease.progression,
        patient=patient,
        # Progression is assessed at the protocol's visits (the same in both arms).
        visit_every_days=max(1, round(protocol.endpoints.visit_every_weeks * 7)),
    )
    endpoints = res.rename(columns={"matrix_row": "zhang_matrix_row"})
    endpoints.insert(1, "arm", arm.name)
    daily_mg = reg.dose * 24.0 / reg.interval_h
    exposure = pd.DataFrame(
        {
            "patient": patient,
            "arm": arm.name,
            "drug_days": res["drug_days"].to_numpy(dtype=float),
            "cumulative_dose_mg": res["drug_days"].to_numpy(dtype=float) * daily_mg,
        }
    )
    return ChunkResult(
        arm=arm.name,
        start=int(patient[0]) if len(patient) else 0,
        endpoints=endpoints.reset_index(drop=True),
        exposure=exposure,
        profile_times_h=np.zeros(0),
        profiles=np.zeros((len(patient), 0), dtype=np.float32),
    )


def _distinct_rows(columns: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``first`` (the first row of each distinct row of ``columns``, in row order) and ``back``
    (each row's position in ``first``): ``x[first][back] == x`` row by row."""
    n = len(columns[0]) if columns else 0
    everything = np.arange(n)
    if n < 2:
        return everything, everything
    table = np.column_stack([np.asarray(c, dtype=float) for c in columns])
    if not np.isfinite(table).all():  # NaN never equals itself: leave such chunks alone
        return everything, everything
    _, first, back = np.unique(table, axis=0, return_index=True, return_inverse=True)
    if first.size == n:
        return everything, everything
    order = np.argsort(first)  # keep the distinct rows in their original order
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return first[order], rank[back.reshape(-1)]


def _pk_then_tumour(
    protocol: TrialProtocol,
    arm: Arm,
    cohort: pd.DataFrame,
    pk_params: dict[str, np.ndarray],
    times_h: np.ndarray,
    visits: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The PK model's concentration, then a built-in tumour model driven by its exposure."""
    from insilico_trials.sim.pk import simulate_regimen
    from insilico_trials.sim.tumour import simulate_tumour

    n = len(cohort)
    reg = arm.regimen
    if reg is None or protocol.pk is None:
        conc = np.zeros((n, times_h.size))
    else:
        dose = dose_amounts_mg(arm, cohort)
        # Rows with the same PK inputs have the same concentrations (the sensitivity stage's
        # evaluations share each patient's clearance in most of its rows): each distinct row
        # is solved once. Every row's arithmetic is its own, so the values are the same bytes.
        first, back = _distinct_rows([*pk_params.values(), dose])
        repeated = first.size < n
        conc = simulate_regimen(
            protocol.pk_model(),
            {k: v[first] for k, v in pk_params.items()} if repeated else pk_params,
            dose_mg=dose[first] if repeated else dose,
            interval_h=reg.interval_h,
            n_doses=reg.n_doses,
            route=reg.route,
            infusion_h=reg.infusion_h,
            times_h=times_h,
        )
        if repeated:
            conc = conc[back]
        if protocol.pk.is_file:
            conc = _model_file_concentration(protocol, conc, times_h)
    disease = protocol.disease
    tumour_names = _tumour_parameter_names(protocol)
    tumour_params = {p: cohort[p].to_numpy(dtype=float) for p in tumour_names}
    if disease.exposure == "none" or reg is None:
        expo_t, expo = None, None
    elif disease.exposure == "daily_auc":
        expo_t, expo = _daily_auc(times_h, conc)
    else:
        expo_t, expo = times_h / 24.0, conc
    sld = simulate_tumour(
        disease.model,
        tumour_params,
        exposure_times_days=expo_t,
        exposure=expo,
        times_days=visits,
    )
    return conc, sld


def _model_file_pkpd(
    protocol: TrialProtocol,
    arm: Arm,
    cohort: pd.DataFrame,
    pk_params: dict[str, np.ndarray],
    times_h: np.ndarray,
    visits: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """A PK-PD model file's concentration (first output) and tumour size (output SLD, mm).

    One solve per patient over the PK grid and the visits together; an untreated arm is the
    model without doses (its tumour grows from its initial amounts).
    """
    from insilico_trials.sim.pk.regimen import simulate_regimen_outputs

    model = protocol.pk_model()
    reg = arm.regimen
    visit_h = visits * 24.0
    grid = np.union1d(times_h, visit_h)
    dosing = (
        {"dose_mg": dose_amounts_mg(arm, cohort), "interval_h": reg.interval_h,
         "n_doses": reg.n_doses, "route": reg.route, "infusion_h": reg.infusion_h}
        if reg is not None
        else {"dose_mg": 0.0, "interval_h": 24.0, "n_doses": 0}
    )  # fmt: skip
    out = simulate_regimen_outputs(model, pk_params, times_h=grid, **dosing)  # type: ignore[arg-type]
    first = model.outputs[0][0]  # type: ignore[union-attr]
    conc = _model_file_concentration(protocol, out[first][:, np.searchsorted(grid, times_h)],
                                     times_h)  # fmt: skip
    sld = out["SLD"][:, np.searchsorted(grid, visit_h)]
    bad = ~np.isfinite(sld) | (sld < -1e-6 * max(float(np.nanmax(np.abs(sld), initial=0)), 1e-9))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise PKInputError(
            f"disease.model {protocol.disease.model}: output SLD is {sld[i, j]:.3g} mm for a "
            f"patient at day {visits[j]:g}; a tumour size must be finite and >= 0"
        )
    return conc, np.maximum(sld, 0.0)


def _model_file_concentration(
    protocol: TrialProtocol, conc: np.ndarray, times_h: np.ndarray
) -> np.ndarray:
    """A model file's first output as the concentration that drives exposure.

    An integrated solution may dip below zero by solver noise (within the model's atol) where
    the true amount decays to zero; that noise is set to 0. A negative value beyond it, or a
    value that is not finite, is the model's error and is named.
    """
    model = protocol.pk_model()
    name = model.outputs[0][0]  # type: ignore[union-attr]
    bad = ~np.isfinite(conc)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise PKInputError(
            f"pk.model {protocol.pk.model}: output {name} is {conc[i, j]} for a patient at "
            f"{times_h[j]:g} h; a concentration must be finite"
        )
    scale = float(np.max(np.abs(conc))) if conc.size else 0.0
    floor = -max(1e-6 * scale, 1e-9)
    if np.any(conc < floor):
        i, j = np.argwhere(conc < floor)[0]
        raise PKInputError(
            f"pk.model {protocol.pk.model}: output {name} is {conc[i, j]:.3g} for a patient at "
            f"{times_h[j]:g} h; a concentration must be >= 0"
        )
    return np.maximum(conc, 0.0)


def _pk_parameter_names(protocol: TrialProtocol) -> tuple[str, ...]:
    from insilico_trials.sim.pk import MODELS

    if protocol.pk is None:
        return ()
    if protocol.pk.is_file:
        return protocol.pk_model().parameters  # type: ignore[union-attr]
    return tuple(MODELS[protocol.pk.model].parameters)


def _tumour_parameter_names(protocol: TrialProtocol) -> tuple[str, ...]:
    from insilico_trials.sim.tumour import TUMOUR_MODELS

    if protocol.disease.is_file:
        return ()  # the model file's inputs are the PK parameters
    model = TUMOUR_MODELS[protocol.disease.model]
    declared = protocol.population.parameters
    return tuple(model.required) + tuple(p for p in model.optional if p in declared)


def concat_chunks(chunks: list[ChunkResult]) -> dict[str, Any]:
    """Join chunk results in (arm order, patient order), whatever order they finished in."""
    chunks = sorted(chunks, key=lambda c: (c.arm, c.start))
    endpoints = pd.concat([c.endpoints for c in chunks], ignore_index=True)
    exposure = pd.concat([c.exposure for c in chunks], ignore_index=True)
    profiles = {}
    for arm in dict.fromkeys(c.arm for c in chunks):
        profiles[arm] = np.vstack([c.profiles for c in chunks if c.arm == arm])
    times = chunks[0].profile_times_h if chunks else np.zeros(0)
    return {
        "endpoints": endpoints,
        "exposure": exposure,
        "profiles": profiles,
        "profile_times_h": times,
    }


def summary_columns(protocol: TrialProtocol) -> list[str]:
    """The endpoint columns a run keeps in memory (the rest is streamed to Parquet).

    Enough for the outcome fit, the synthetic control's summary and the validation table.
    """
    cols = ["arm", "patient", *ENDPOINTS[protocol.analysis.endpoint].columns]
    if protocol.disease.model == "zhang2017":
        cols += ["ttp_days", "ttp_event", "drug_fraction"]
    if protocol.disease.is_glucose:
        cols += ["tir_pct", "tbr70_pct", "tbr54_pct", "tar180_pct", "mean_glucose_mg_dl"]
    return list(dict.fromkeys(cols))


def analysis_frame(protocol: TrialProtocol, endpoints: pd.DataFrame) -> pd.DataFrame:
    """The endpoint table in the shape the outcome model takes (``arm`` + model columns)."""
    cols = dict(ENDPOINTS[protocol.analysis.endpoint].columns)
    if OUTCOME_FAMILIES[protocol.analysis.model].kind != "continuous":
        cols = {k: v for k, v in cols.items() if v != "baseline"}
    frame = endpoints[["arm", *cols]].rename(columns=cols)
    return frame.reset_index(drop=True)
