"""Clinical endpoints from simulated tumour dynamics: RECIST 1.1, ORR, PFS/TTP, OS, KM.

RECIST 1.1 (Eisenhauer et al., Eur J Cancer 2009;45:228-247) applied to the simulated sum of
longest diameters (SLD, mm) at the protocol's visits:

* measurement error: observed SLD = true SLD * exp(cv * z), z ~ N(0, 1) per visit;
* CR: observed SLD below ``cr_below_mm`` (a declared surrogate for "disappearance of all target
  lesions": a single SLD cannot represent each lesion; RECIST 1.1 itself assigns 5 mm to a lesion
  too small to measure, hence the default 5 mm);
* PR: >= 30% decrease from baseline;
* PD: >= 20% and >= 5 mm increase over the nadir (smallest SLD on study before the visit,
  baseline included), or a new lesion, appearing with a declared constant hazard and seen at
  the first visit after it appears;
* SD: otherwise.

Best overall response with confirmation (RECIST 1.1, section 4.6 and Table 3): CR and PR count
only when the next assessment at least ``confirm_min_days`` later still meets them (CR for CR;
CR or PR for PR) with no PD in between; SD needs one assessment at least ``sd_min_days`` after
start. Unconfirmed best response is returned too (randomised trials may not require it).

All randomness is keyed per patient (:func:`insilico_trials.sim.rng.patient_normals`), so the
table is the same in any chunking of patients.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Literal

import numpy as np
import pandas as pd

from insilico_trials.errors import InputError
from insilico_trials.sim.rng import patient_normals, patient_uniforms
from insilico_trials.units import DAYS_PER_MONTH, DAYS_PER_WEEK

__all__ = [
    "CR",
    "NE",
    "PD",
    "PR",
    "RESPONSE_CODES",
    "SD",
    "EndpointError",
    "FollowUp",
    "OSModel",
    "RecistRules",
    "best_overall_response",
    "derive_endpoints",
    "kaplan_meier",
    "km_median",
    "psa_progression",
    "recist_visit_responses",
    "response_rates",
]

NE, CR, PR, SD, PD = 0, 1, 2, 3, 4
RESPONSE_CODES = {NE: "NE", CR: "CR", PR: "PR", SD: "SD", PD: "PD"}
_DAYS = {"days": 1.0, "weeks": DAYS_PER_WEEK, "months": DAYS_PER_MONTH}


class EndpointError(InputError):
    """Endpoint derivation was given inputs it cannot use."""


# --------------------------------------------------------------------------------------------
# RECIST 1.1
# --------------------------------------------------------------------------------------------


def recist_visit_responses(
    sld_obs: np.ndarray,
    visit_days: np.ndarray,
    *,
    observed: np.ndarray | None = None,
    new_lesion_day: np.ndarray | None = None,
    cr_below_mm: float = 5.0,
    pr_fraction: float = 0.30,
    pd_fraction: float = 0.20,
    pd_min_mm: float = 5.0,
) -> np.ndarray:
    """Per-visit RECIST 1.1 response codes (0 NE, 1 CR, 2 PR, 3 SD, 4 PD), shape (n, K).

    Parameters
    ----------
    sld_obs
        Observed SLD in mm, shape ``(n, K)``; column 0 is baseline (day ``visit_days[0]``).
    visit_days
        Visit days from start, shape ``(K,)``, increasing.
    observed
        Bool ``(n, K)``: whether the visit happened (before death, dropout or data cut-off).
    new_lesion_day
        Day a new lesion appears, shape ``(n,)`` (``inf`` for never).
    cr_below_mm, pr_fraction, pd_fraction, pd_min_mm
        Thresholds: CR when SLD < ``cr_below_mm``; PR at a ``pr_fraction`` decrease from
        baseline; PD at a ``pd_fraction`` and ``pd_min_mm`` increase over the nadir.

    Visits after the first PD, and visits not observed, are NE. Column 0 (baseline) is NE.
    """
    y = np.asarray(sld_obs, dtype=np.float64)
    n, k = y.shape
    obs = np.ones((n, k), dtype=bool) if observed is None else np.asarray(observed, dtype=bool)
    nl = np.full(n, np.inf) if new_lesion_day is None else np.asarray(new_lesion_day, dtype=float)
    base = y[:, 0]
    out = np.zeros((n, k), dtype=np.int8)
    nadir = base.copy()
    progressed = np.zeros(n, dtype=bool)
    for j in range(1, k):
        yj = y[:, j]
        inc = yj - nadir
        pd_ = ((inc >= pd_fraction * nadir) & (inc >= pd_min_mm)) | (nl <= visit_days[j])
        resp = np.where(
            pd_,
            PD,
            np.where(yj < cr_below_mm, CR, np.where(yj <= (1.0 - pr_fraction) * base, PR, SD)),
        )
        live = obs[:, j] & ~progressed
        out[:, j] = np.where(live, resp, NE)
        progressed |= live & pd_
        nadir = np.where(live, np.minimum(nadir, yj), nadir)
    return out


def best_overall_response(
    responses: np.ndarray,
    visit_days: np.ndarray,
    *,
    confirm_min_days: float = 28.0,
    sd_min_days: float = 42.0,
    confirm: bool = True,
) -> np.ndarray:
    """Best overall response codes, shape (n,), from per-visit codes ``(n, K)``.

    With ``confirm`` (RECIST 1.1 section 4.6, non-randomised trials), a CR (PR) at visit ``i``
    counts when the first visit at least ``confirm_min_days`` after it is CR (CR or PR); the
    per-visit codes are NE after the first PD, so a PD in between breaks confirmation. An
    unconfirmed CR/PR counts as SD when it meets the SD duration. SD needs a non-PD
    assessment on or after ``sd_min_days``. PD when PD is assessed and SD is not met; NE
    otherwise (no adequate post-baseline assessment).
    """
    r = np.asarray(responses)
    t = np.asarray(visit_days, dtype=np.float64)
    n, k = r.shape
    conf_cr = np.zeros(n, dtype=bool)
    conf_pr = np.zeros(n, dtype=bool)
    for i in range(1, k):
        if confirm:
            later = np.nonzero(t >= t[i] + confirm_min_days)[0]
            if later.size == 0:
                continue
            rj = r[:, later[0]]
            conf_cr |= (r[:, i] == CR) & (rj == CR)
            conf_pr |= np.isin(r[:, i], (CR, PR)) & np.isin(rj, (CR, PR))
        else:
            conf_cr |= r[:, i] == CR
            conf_pr |= r[:, i] == PR
    late = t >= sd_min_days
    sd_met = (np.isin(r, (CR, PR, SD)) & late[None, :]).any(axis=1)
    any_pd = (r == PD).any(axis=1)
    return np.select([conf_cr, conf_pr, sd_met, any_pd], [CR, PR, SD, PD], default=NE).astype(
        np.int8
    )


# --------------------------------------------------------------------------------------------
# Overall survival link
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OSModel:
    """Parametric overall-survival model linked to tumour dynamics (accelerated failure time).

    ``log T = intercept + sum(coef[p] * predictor[p]) + scale * W``, with ``T`` in
    ``time_unit``; ``W`` standard normal (``lognormal``, ``scale`` = sigma) or standard
    minimum extreme value (``weibull``, ``scale`` = 1/shape; ``exponential`` is Weibull with
    scale 1).

    Predictors known to :func:`derive_endpoints`: ``week8_frac_change`` (true SLD change from
    baseline at day 56, a fraction, e.g. -0.3), ``ttg_weeks`` and ``log_ttg_weeks`` (time to
    tumour growth, the nadir time of the true SLD, weeks, floored at 1 day for the log),
    ``baseline_sld_mm`` and ``log_baseline_sld_mm``; any other name must be given in
    ``covariates=`` of :func:`derive_endpoints`.
    """

    distribution: Literal["lognormal", "weibull", "exponential"] = "lognormal"
    intercept: float = 0.0
    coefficients: Mapping[str, float] = field(default_factory=dict)
    scale: float = 1.0
    time_unit: Literal["days", "weeks", "months"] = "weeks"
    source: str = ""

    def __post_init__(self) -> None:
        if self.distribution not in ("lognormal", "weibull", "exponential"):
            raise EndpointError(
                f"OSModel.distribution: {self.distribution!r}; "
                "allowed lognormal, weibull, exponential"
            )
        if self.time_unit not in _DAYS:
            raise EndpointError(f"OSModel.time_unit: {self.time_unit!r}; allowed {list(_DAYS)}")
        if not self.scale > 0:
            raise EndpointError(f"OSModel.scale: must be > 0, got {self.scale}")

    def sample_days(self, predictors: Mapping[str, np.ndarray], u: np.ndarray) -> np.ndarray:
        """Survival times in days from uniforms ``u`` (shape (n,)) and predictor arrays."""
        lp = np.full(u.shape, float(self.intercept))
        for name, coef in self.coefficients.items():
            if name not in predictors:
                raise EndpointError(
                    f"OSModel.coefficients: predictor {name!r} not available; "
                    f"have {sorted(predictors)}"
                )
            lp = lp + coef * np.asarray(predictors[name], dtype=np.float64)
        if self.distribution == "lognormal":
            from scipy.special import ndtri

            w = ndtri(u)
            scale = self.scale
        else:
            w = np.log(-np.log(u))  # standard minimum extreme value
            scale = 1.0 if self.distribution == "exponential" else self.scale
        return np.exp(lp + scale * w) * _DAYS[self.time_unit]


def _as_os_model(os_model: OSModel | Mapping[str, object] | None) -> OSModel | None:
    if os_model is None or isinstance(os_model, OSModel):
        return os_model
    return OSModel(**os_model)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Endpoint table
# --------------------------------------------------------------------------------------------


def _interp_rows(y: np.ndarray, t: np.ndarray, at: float) -> np.ndarray:
    if at < t[0] or at > t[-1]:
        return np.full(y.shape[0], np.nan)
    j = int(np.clip(np.searchsorted(t, at, side="right") - 1, 0, t.size - 2))
    w = (at - t[j]) / (t[j + 1] - t[j])
    return y[:, j] * (1.0 - w) + y[:, j + 1] * w


@dataclass(frozen=True)
class RecistRules:
    """How tumour assessments are read (RECIST 1.1 surrogates), validated once.

    Attributes
    ----------
    measurement_cv
        SD of the log of the measurement error of the SLD (about its CV; 0 for none).
    new_lesion_hazard_per_day
        Constant hazard of a new lesion (PD at the next visit), per day.
    cr_below_mm, confirm_min_days, sd_min_days
        RECIST surrogates and windows, see :func:`recist_visit_responses` and
        :func:`best_overall_response`.
    """

    measurement_cv: float = 0.05
    new_lesion_hazard_per_day: float = 0.0
    cr_below_mm: float = 5.0
    confirm_min_days: float = 28.0
    sd_min_days: float = 42.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not (v >= 0 and math.isfinite(v)):
                raise EndpointError(f"{f.name}: must be >= 0 and finite, got {v}")


@dataclass(frozen=True)
class FollowUp:
    """How long patients are followed and how they enter, validated once.

    Attributes
    ----------
    dropout_per_day
        Constant hazard of loss to follow-up, per day (censors PFS and OS).
    admin_censor_days
        Data cut-off, days from the enrolment of the first patient (trial calendar).
    max_follow_up_days
        Per-patient follow-up limit, days from the patient's own enrolment (a protocol's
        "follow-up of N weeks"); censoring is at the earlier of this and the data cut-off.
    accrual_per_day
        Poisson accrual rate of this arm, patients per day; ``None`` enrols all on day 0.
        Enrolment times are the cumulative sum of keyed exponential gaps over patients
        ``0..max(patient)``, so they too are chunk-invariant.
    """

    dropout_per_day: float = 0.0
    admin_censor_days: float = math.inf
    max_follow_up_days: float = math.inf
    accrual_per_day: float | None = None

    def __post_init__(self) -> None:
        if not self.dropout_per_day >= 0:
            raise EndpointError(f"dropout_per_day: must be >= 0, got {self.dropout_per_day}")
        for name in ("admin_censor_days", "max_follow_up_days"):
            if not getattr(self, name) >= 0:
                raise EndpointError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.accrual_per_day is not None and not self.accrual_per_day > 0:
            raise EndpointError(f"accrual_per_day: must be > 0 or None, got {self.accrual_per_day}")


def derive_endpoints(
    sld: np.ndarray,
    visit_days: np.ndarray,
    *,
    seed: int,
    keys: tuple[str | int, ...] = (),
    patient: np.ndarray | None = None,
    recist: RecistRules = RecistRules(),
    follow_up: FollowUp = FollowUp(),
    os_model: OSModel | Mapping[str, object] | None = None,
    covariates: Mapping[str, np.ndarray] | None = None,
    ttg_days: np.ndarray | None = None,
) -> pd.DataFrame:
    """Derive per-patient endpoints from true SLD trajectories at the protocol's visits.

    Parameters
    ----------
    sld
        True (model) SLD in mm, shape ``(n, K)``, at ``visit_days``; column 0 is baseline.
    visit_days
        Visit days from the start of treatment, shape ``(K,)``, strictly increasing, first 0.
    seed, keys, patient
        Protocol seed, stream keys (e.g. ``(replicate, arm)``) and patient indices within the
        arm (default ``0..n-1``): every draw is keyed by them, never by chunk.
    recist
        How assessments are read: measurement error, new lesions, RECIST windows
        (:class:`RecistRules`).
    follow_up
        Dropout, data cut-off, per-patient follow-up, accrual (:class:`FollowUp`).
    os_model
        :class:`OSModel` or a dict of its fields; ``None`` means no deaths are simulated.
    covariates
        Extra per-patient predictors for the OS model, arrays of shape ``(n,)``.
    ttg_days
        Time to tumour growth per patient, days; default the first visit day at which the
        true SLD is smallest.
    Returns
    -------
    pandas.DataFrame
        One row per patient: ``patient``, ``enrol_day``, ``enrolled`` (0 when enrolment
        falls after the data cut-off: no follow-up, exclude from analyses),
        ``best_response`` (CR/PR/SD/PD/NE, confirmed), ``best_response_unconfirmed``,
        ``responder`` (0/1, confirmed CR/PR), ``disease_control`` (0/1),
        ``best_pct_change`` (observed, %), ``week8_pct_change`` (true, %), ``ttg_days``,
        ``n_assessments``, ``pfs_days``, ``pfs_event``, ``pfs_lower_days`` (last visit
        without PD: PD lies in (lower, pfs_days]), ``ttp_days``, ``ttp_event``, ``os_days``,
        ``os_event``, ``lost_to_follow_up``.
        Times in days from the patient's start of treatment.
    """
    y = np.asarray(sld, dtype=np.float64)
    t = np.asarray(visit_days, dtype=np.float64)
    if y.ndim != 2 or t.ndim != 1 or y.shape[1] != t.size or t.size < 2:
        raise EndpointError(
            f"sld: must have shape (n, {t.size}) matching visit_days with >= 2 visits, "
            f"got {y.shape}"
        )
    if t[0] != 0 or np.any(np.diff(t) <= 0):
        raise EndpointError(f"visit_days: must start at 0 (baseline) and increase, got {t[:4]}...")
    if not np.all(np.isfinite(y)) or np.any(y[:, 0] <= 0):
        raise EndpointError("sld: must be finite with baseline > 0 mm")
    measurement_cv = recist.measurement_cv
    new_lesion_hazard_per_day = recist.new_lesion_hazard_per_day
    cr_below_mm, confirm_min_days = recist.cr_below_mm, recist.confirm_min_days
    sd_min_days = recist.sd_min_days
    dropout_per_day, accrual_per_day = follow_up.dropout_per_day, follow_up.accrual_per_day
    admin_censor_days = follow_up.admin_censor_days
    max_follow_up_days = follow_up.max_follow_up_days
    n, k = y.shape
    pat = np.arange(n) if patient is None else np.asarray(patient, dtype=np.int64)
    if pat.shape != (n,):
        raise EndpointError(f"patient: must have shape ({n},), got {pat.shape}")
    keys = tuple(keys)

    # Enrolment (trial calendar, days from the first enrolment).
    if accrual_per_day is None:
        enrol = np.zeros(n)
    else:
        all_p = np.arange(int(pat.max()) + 1 if n else 0)
        gaps = -np.log(patient_uniforms(seed, (*keys, "accrual"), all_p, 1)[:, 0]) / accrual_per_day
        enrol_all = np.cumsum(gaps) - gaps[0]
        enrol = enrol_all[pat]
    # Patients enrolled after the data cut-off have no follow-up: times 0, flagged `enrolled`.
    enrolled = enrol <= admin_censor_days
    follow_cap = np.minimum(np.maximum(admin_censor_days - enrol, 0.0), max_follow_up_days)

    # Measurement error, new lesions, dropout: one keyed stream per purpose.
    z = patient_normals(seed, (*keys, "sld_error"), pat, k)
    y_obs = y * np.exp(measurement_cv * z) if measurement_cv > 0 else y
    u = patient_uniforms(seed, (*keys, "events"), pat, 3)
    new_lesion = (
        -np.log(u[:, 0]) / new_lesion_hazard_per_day
        if new_lesion_hazard_per_day > 0
        else np.full(n, np.inf)
    )
    dropout = -np.log(u[:, 1]) / dropout_per_day if dropout_per_day > 0 else np.full(n, np.inf)

    # Tumour-dynamics predictors from the true SLD.
    base = y[:, 0]
    week8 = _interp_rows(y, t, 56.0) / base - 1.0
    if ttg_days is None:
        ttg = t[np.argmin(y, axis=1)]
    else:
        ttg = np.broadcast_to(np.asarray(ttg_days, dtype=np.float64), (n,))
    model = _as_os_model(os_model)
    if model is None:
        death = np.full(n, np.inf)
    else:
        preds: dict[str, np.ndarray] = {
            "week8_frac_change": week8,
            "ttg_weeks": ttg / 7.0,
            "log_ttg_weeks": np.log(np.maximum(ttg, 1.0) / 7.0),
            "baseline_sld_mm": base,
            "log_baseline_sld_mm": np.log(base),
        }
        for name, v in (covariates or {}).items():
            preds[name] = np.broadcast_to(np.asarray(v, dtype=np.float64), (n,))
        death = model.sample_days(preds, u[:, 2])

    end = np.minimum(np.minimum(death, dropout), follow_cap)
    observed = t[None, :] <= end[:, None]
    observed[:, 0] = True
    resp = recist_visit_responses(
        y_obs, t, observed=observed, new_lesion_day=new_lesion, cr_below_mm=cr_below_mm
    )
    bor = best_overall_response(resp, t, confirm_min_days=confirm_min_days, sd_min_days=sd_min_days)
    bor_u = best_overall_response(resp, t, sd_min_days=sd_min_days, confirm=False)

    assessed = resp != NE
    n_assess = assessed.sum(axis=1)
    is_pd = resp == PD
    has_pd = is_pd.any(axis=1)
    pd_idx = np.argmax(is_pd, axis=1)
    last_idx = np.where(assessed.any(axis=1), k - 1 - np.argmax(assessed[:, ::-1], axis=1), 0)
    pd_day = np.where(has_pd, t[pd_idx], np.nan)
    last_day = t[last_idx]
    prev_day = np.where(has_pd, t[np.maximum(pd_idx - 1, 0)], last_day)
    # Last assessment before PD: visits between that are NE cannot occur before PD (only after).
    died_first = np.isfinite(death) & (death <= dropout) & (death <= follow_cap)
    pfs_event = has_pd | died_first
    pfs_days = np.where(has_pd, pd_day, np.where(died_first, death, last_day))
    pfs_lower = np.where(has_pd, prev_day, np.where(died_first, last_day, last_day))
    ttp_days = np.where(has_pd, pd_day, last_day)
    os_days = np.minimum(end, np.inf)
    os_event = died_first
    os_days = np.where(np.isfinite(os_days), os_days, np.nan)

    pct = (y_obs[:, 1:] / y_obs[:, :1] - 1.0) * 100.0
    pct = np.where(assessed[:, 1:], pct, np.nan)
    any_assessed = assessed[:, 1:].any(axis=1)
    best_pct = np.full(n, np.nan)
    if any_assessed.any():
        best_pct[any_assessed] = np.nanmin(pct[any_assessed], axis=1)

    codes = np.array(list(RESPONSE_CODES.values()))
    return pd.DataFrame(
        {
            "patient": pat,
            "enrol_day": enrol,
            "enrolled": enrolled.astype(np.int8),
            "best_response": codes[bor],
            "best_response_unconfirmed": codes[bor_u],
            "responder": np.isin(bor, (CR, PR)).astype(np.int8),
            "disease_control": np.isin(bor, (CR, PR, SD)).astype(np.int8),
            "best_pct_change": best_pct,
            "week8_pct_change": week8 * 100.0,
            "ttg_days": ttg,
            "n_assessments": n_assess,
            "pfs_days": pfs_days,
            "pfs_event": pfs_event.astype(np.int8),
            "pfs_lower_days": pfs_lower,
            "ttp_days": ttp_days,
            "ttp_event": has_pd.astype(np.int8),
            "os_days": os_days,
            "os_event": os_event.astype(np.int8),
            "lost_to_follow_up": ((dropout < death) & (dropout < follow_cap)).astype(np.int8),
        }
    )


def response_rates(endpoints: pd.DataFrame) -> dict[str, float]:
    """ORR (confirmed CR + PR) and disease control rate (CR + PR + SD) of an endpoint table."""
    n = len(endpoints)
    if n == 0:
        return {"n": 0, "orr": float("nan"), "dcr": float("nan")}
    return {
        "n": n,
        "orr": float(endpoints["responder"].mean()),
        "dcr": float(endpoints["disease_control"].mean()),
    }


# --------------------------------------------------------------------------------------------
# PSA progression (prostate)
# --------------------------------------------------------------------------------------------


def psa_progression(
    psa: np.ndarray,
    visit_days: np.ndarray,
    *,
    observed: np.ndarray | None = None,
    rise_fraction: float = 0.25,
    rise_abs: float = 2.0,
    confirm_min_days: float = 21.0,
    no_decline_min_days: float = 84.0,
) -> tuple[np.ndarray, np.ndarray]:
    """PSA progression (PCWG2; Scher et al., J Clin Oncol 2008;26:1148) at the visits.

    Progression at the first visit whose PSA is >= ``rise_fraction`` above the nadir (lowest
    PSA on study before it, baseline included) and >= ``rise_abs`` above it in absolute terms,
    confirmed by the first visit at least ``confirm_min_days`` later that meets the same
    criterion; the date is that of the first rise. With no decline below baseline, the rise is
    counted only from ``no_decline_min_days`` (12 weeks). ``rise_abs`` is in the PSA's units
    (2 ng/mL in PCWG2; set 0 for model units without an absolute scale).

    Returns
    -------
    (ttp_days, event)
        Day of progression, or of the last observed visit when censored; event 0/1 (int8).
    """
    y = np.asarray(psa, dtype=np.float64)
    t = np.asarray(visit_days, dtype=np.float64)
    n, k = y.shape
    obs = np.ones((n, k), dtype=bool) if observed is None else np.asarray(observed, dtype=bool)
    y = np.where(obs, y, np.nan)
    base = y[:, 0]
    # nadir before each visit (running minimum of earlier observed values)
    prev_min = np.fmin.accumulate(y, axis=1)
    nadir = np.concatenate([base[:, None], prev_min[:, :-1]], axis=1)
    declined = nadir < base[:, None]
    with np.errstate(invalid="ignore"):
        meets = (
            (y >= (1.0 + rise_fraction) * nadir)
            & (y - nadir >= rise_abs)
            & (declined | (t[None, :] >= no_decline_min_days))
        )
    meets[:, 0] = False
    ttp = np.full(n, np.nan)
    for j in range(1, k):
        later = np.nonzero(t >= t[j] + confirm_min_days)[0]
        if later.size == 0:
            break
        c = later[0]
        with np.errstate(invalid="ignore"):
            confirmed = (
                meets[:, j]
                & obs[:, c]
                & (y[:, c] >= (1.0 + rise_fraction) * nadir[:, j])
                & (y[:, c] - nadir[:, j] >= rise_abs)
            )
        ttp = np.where(np.isnan(ttp) & confirmed, t[j], ttp)
    event = ~np.isnan(ttp)
    last = t[k - 1 - np.argmax(obs[:, ::-1], axis=1)]
    return np.where(event, ttp, last), event.astype(np.int8)


# --------------------------------------------------------------------------------------------
# Kaplan-Meier
# --------------------------------------------------------------------------------------------


def _censored(time: np.ndarray, event: np.ndarray):
    from scipy.stats import CensoredData

    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event).astype(bool)
    if t.shape != e.shape or t.ndim != 1 or t.size == 0:
        raise EndpointError(
            f"time and event: must be equal-length 1-d arrays, got {t.shape}, {e.shape}"
        )
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise EndpointError("time: must be finite and >= 0")
    return CensoredData(uncensored=t[e], right=t[~e])


def kaplan_meier(
    time: np.ndarray, event: np.ndarray, *, confidence_level: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Kaplan-Meier survival estimate with pointwise Greenwood confidence limits.

    Wraps :func:`scipy.stats.ecdf` on right-censored data.

    Parameters
    ----------
    time
        Event or censoring times (any unit; days in this package), shape ``(n,)``.
    event
        1 (or True) for an event, 0 for right-censored, shape ``(n,)``.
    confidence_level
        Of the pointwise interval (Greenwood, clipped to [0, 1]).

    Returns
    -------
    (times, survival, lower, upper)
        The distinct observed times and the survival estimate just after each, with limits.
    """
    from scipy.stats import ecdf

    res = ecdf(_censored(time, event))
    sf = res.sf
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        # Greenwood's formula is undefined where survival reaches 0; scipy warns and returns
        # nan there, which we replace by the natural limits.
        warnings.filterwarnings("ignore", "The confidence interval is undefined", RuntimeWarning)
        ci = sf.confidence_interval(confidence_level)
    lower = np.nan_to_num(ci.low.probabilities, nan=0.0)
    upper = np.nan_to_num(ci.high.probabilities, nan=1.0)
    return sf.quantiles, sf.probabilities, lower, upper


def km_median(time: np.ndarray, event: np.ndarray) -> float:
    """Kaplan-Meier median (smallest time with survival <= 0.5); ``nan`` if not reached."""
    times, surv, _, _ = kaplan_meier(time, event)
    hit = np.nonzero(surv <= 0.5)[0]
    return float(times[hit[0]]) if hit.size else float("nan")
