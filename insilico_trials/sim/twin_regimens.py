"""Counterfactual regimens on patient digital twins: continuous vs adaptive abiraterone.

Each patient's twin (a :class:`~insilico_trials.models.twins.TwinModel` with his fitted
parameters, or one posterior draw of them) is restarted from its day-0 state and run under a
regimen it did not receive:

``continuous``
    abiraterone every day from day 0;
``adaptive``
    on at day 0, then the :class:`~insilico_trials.sim.tumour.AdaptiveRule` (by default the
    trial's rule of Zhang et al. 2017: hold below 50% of baseline PSA, resume at baseline)
    evaluated at visits every ``rule.check_every_days`` on the model PSA, without
    measurement noise.

Progression is the product's PSA rule, with the semantics of
:func:`insilico_trials.sim.tumour.simulate_zhang` (``progression="nadir"``): at a visit with
the drug on since the previous visit, PSA >= (1 + ``progression_rise``) x the nadir of the
current on-drug period (visit values; the period's first visit, day 0 for the first period,
included), no 2 ng/mL term, no confirmation.

:func:`counterfactual_table` summarises the draws per patient and regimen;
:func:`compare_arms` and :func:`km_curve` compare right-censored times of two arms
(Kaplan-Meier medians and the log-rank test).

Units: days for every time, ng/mL for PSA (the model's observation unit).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from scipy.stats import chi2

from insilico_trials.models.twins import TwinModel
from insilico_trials.sim.endpoints import EndpointError, kaplan_meier, km_median
from insilico_trials.sim.tumour import AdaptiveRule
from insilico_trials.sim.twins import TwinDataError, rk4_log_step

__all__ = ["compare_arms", "counterfactual_table", "km_curve", "simulate_regimen"]

_REGIMENS = ("continuous", "adaptive")


# --------------------------------------------------------------------------- simulation


def _finite_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    v = float(value)
    ok = math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise TwinDataError(
            f"{name}: must be a finite number {bound}, got {value!r}",
            rule=f"{name} finite and {bound}",
            actual=value,
            expected=bound,
            where=name,
        )
    return v


def _model_params(model: TwinModel, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = (*model.patient_parameters, *model.shared_parameters)
    missing = [q for q in names if q not in params]
    if missing:
        raise TwinDataError(
            f"params: {model.name} needs {missing}; got {sorted(params)}",
            rule="every declared parameter of the model",
            actual=sorted(params),
            expected=str(list(names)),
            where="params",
        )
    out = {}
    for q in names:
        v = np.asarray(params[q], dtype=float)
        if not np.all(np.isfinite(v)) or (q in model.initial and np.any(v <= 0)):
            bad = v[~np.isfinite(v) | ((v <= 0) if q in model.initial else False)]
            raise TwinDataError(
                f"params[{q!r}]: must be finite (initial states > 0), got e.g. {bad[:3].tolist()}",
                rule="finite parameters; positive initial states",
                actual=bad[:3].tolist(),
                where=f"params[{q!r}]",
            )
        out[q] = v
    return out


def _scale(model: TwinModel, p: Mapping[str, np.ndarray]) -> np.ndarray | float:
    ob = model.observation
    return float(ob.fixed_scale) if ob.scale == "fixed" else p[ob.scale_name]


def simulate_regimen(
    model: TwinModel,
    params: Mapping[str, np.ndarray],
    *,
    regimen: Literal["continuous", "adaptive"],
    horizon_days: float,
    rule: AdaptiveRule | None = None,
    step_days: float = 1.0,
    progression_rise: float = 0.25,
) -> dict[str, np.ndarray]:
    """Run every twin (and every draw) from its day-0 state under one regimen.

    The log-states are integrated with :func:`insilico_trials.sim.twins.rk4_log_step` at fixed
    steps of ``step_days``; the treatment is constant between visits, so no step straddles a
    switch. Visits are at day 0 and every ``rule.check_every_days`` up to ``horizon_days``;
    the adaptive rule and the progression check are applied at the visits after day 0, on the
    model PSA (no measurement noise). The simulation goes on after progression (the returned
    PSA and status cover the whole horizon); ``ttp_days``, ``drug_days`` and
    ``followed_days`` stop at the first progression.

    Parameters
    ----------
    model : TwinModel
        The twin model (e.g. ``TWIN_MODELS["zhang2022"]``).
    params : mapping of str to ndarray
        Every per-patient and shared parameter of ``model`` (other keys are ignored), in the
        units of its declaration (``S0``, ``R0`` cells; ``c`` ng/mL per cell; ``alpha``,
        ``beta`` dimensionless), as arrays broadcastable to one shape ``(..., n)``: e.g.
        per-patient ``(n_draws, n_patients)`` and shared ``(n_draws, 1)`` for posterior
        draws. Initial states must be > 0. All-scalar parameters give ``n = 1``.
    regimen : {"continuous", "adaptive"}
        Abiraterone every day, or the adaptive ``rule`` starting on at day 0.
    horizon_days : float
        End of follow-up (days, > 0). The last visit is the last multiple of
        ``rule.check_every_days`` not after it; patients without progression are censored
        at ``horizon_days``.
    rule : AdaptiveRule, optional
        Default ``AdaptiveRule("PSA", 0.5, 1.0, 28.0)`` (Zhang et al. 2017). Its
        ``check_every_days`` also sets the visits of the continuous regimen (progression is
        checked at visits in both regimens). Fractions are of the baseline PSA, the twin's
        PSA at day 0.
    step_days : float
        RK4 step (days). ``rule.check_every_days / step_days`` must be an integer.
    progression_rise : float
        Progression when PSA >= (1 + ``progression_rise``) x nadir (0.25: the PCWG2 25%).

    Returns
    -------
    dict of str to ndarray
        ``visit_days`` (V,)
            Visit days (days), starting at day 0.
        ``psa`` (..., n, V)
            Model PSA at the visits (ng/mL); column 0 is the baseline.
        ``on`` (..., n, V) bool
            Treatment status after each visit's decision (it holds until the next visit);
            column 0 is True (both regimens start on).
        ``baseline_psa`` (..., n)
            PSA at day 0 (ng/mL): ``observe(S0, R0)``, e.g. ``c (S0 + R0)``.
        ``ttp_days`` (..., n)
            Day of the first visit meeting the progression rule (days); NaN if none within
            the horizon.
        ``progressed`` (..., n) bool
            ``~isnan(ttp_days)``.
        ``drug_days`` (..., n)
            Days on abiraterone from day 0 up to progression, or up to the horizon.
        ``followed_days`` (..., n)
            ``ttp_days`` if progressed, else ``horizon_days`` (days).

    Raises
    ------
    TwinDataError
        Unknown regimen, missing or non-finite parameters, a non-positive horizon or step, or
        a visit interval that is not a whole number of steps.
    """
    if regimen not in _REGIMENS:
        raise TwinDataError(
            f"regimen: must be one of {list(_REGIMENS)}, got {regimen!r}",
            rule="a known regimen",
            actual=regimen,
            expected=str(list(_REGIMENS)),
            where="regimen",
        )
    rule = rule or AdaptiveRule("PSA", 0.5, 1.0, 28.0)
    horizon = _finite_positive("horizon_days", horizon_days)
    h = _finite_positive("step_days", step_days)
    rise = _finite_positive("progression_rise", progression_rise, allow_zero=True)
    check = float(rule.check_every_days)
    ratio = check / h
    steps_per_visit = round(ratio)
    if steps_per_visit < 1 or abs(ratio - steps_per_visit) > 1e-9 * max(1.0, ratio):
        raise TwinDataError(
            f"step_days: rule.check_every_days / step_days must be a whole number of steps so "
            f"that visits fall on step boundaries, got {check} / {h} = {ratio:g}",
            rule="check_every_days / step_days integer",
            actual=(check, h),
            expected=f"a divisor of {check} days",
            where="step_days",
        )
    n_after = math.floor(horizon / check * (1.0 + 1e-12))
    visit_days = check * np.arange(n_after + 1, dtype=float)

    p = _model_params(model, params)
    shape = np.broadcast_shapes(*(v.shape for v in p.values())) or (1,)
    p = {q: np.broadcast_to(v, shape) for q, v in p.items()}
    scale = _scale(model, p)
    y0 = tuple(p[q] for q in model.initial)
    baseline = np.asarray(model.observe(y0, scale), dtype=float)
    z = tuple(np.log(y) for y in y0)

    n_v = visit_days.size
    psa = np.empty((*shape, n_v))
    on_hist = np.empty((*shape, n_v), dtype=bool)
    psa[..., 0] = baseline
    on = np.ones(shape, dtype=bool)
    on_hist[..., 0] = on
    nadir = baseline.copy()
    ttp = np.full(shape, np.nan)
    adaptive = regimen == "adaptive"
    for k in range(1, n_v):
        u = on.astype(float)
        for _ in range(steps_per_visit):
            z = rk4_log_step(model, z, h, u, p)
        value = np.asarray(model.observe(tuple(np.exp(x) for x in z), scale), dtype=float)
        psa[..., k] = value
        # ``on`` is the status since the previous visit (constant between visits).
        prog = np.isnan(ttp) & on & (value >= (1.0 + rise) * nadir)
        ttp[prog] = visit_days[k]
        was_on = on
        if adaptive:
            on = rule.apply(on, value, baseline)
        # A new on-drug period starts its nadir afresh at this visit (as simulate_zhang).
        nadir = np.where(on & ~was_on, value, np.where(on, np.minimum(nadir, value), nadir))
        on_hist[..., k] = on

    progressed = ~np.isnan(ttp)
    stop = np.where(progressed, ttp, horizon)
    ends = np.append(visit_days[1:], horizon)
    overlap = np.clip(np.minimum(ends, stop[..., None]) - visit_days, 0.0, None)
    drug_days = (on_hist * overlap).sum(axis=-1)
    return {
        "visit_days": visit_days,
        "psa": psa,
        "on": on_hist,
        "baseline_psa": baseline,
        "ttp_days": ttp,
        "progressed": progressed,
        "drug_days": drug_days,
        "followed_days": stop,
    }


# --------------------------------------------------------------------------- summaries


def _quantile_with_inf(x: np.ndarray, q: float) -> np.ndarray:
    """Type-7 (linear) quantile along axis 0 of data that may hold ``+inf``.

    ``numpy.quantile`` turns ``finite + 0 * inf`` into NaN; here a quantile is ``inf`` exactly
    when its interpolation involves an infinite order statistic with non-zero weight.
    """
    s = np.sort(x, axis=0)
    m = s.shape[0]
    pos = (m - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, m - 1)
    g = pos - lo
    a, b = s[lo], s[hi]
    if g == 0.0:
        return a.copy()
    with np.errstate(invalid="ignore"):
        out = a + g * (b - a)
    return np.where(np.isinf(a) | np.isinf(b), np.inf, out)


def counterfactual_table(
    results: Mapping[str, Mapping[str, np.ndarray]], patients: Sequence[str]
) -> pd.DataFrame:
    """Per patient and regimen: time to progression and drug days over the posterior draws.

    Parameters
    ----------
    results : mapping
        ``{regimen name: simulate_regimen(...) output}``, each with arrays of shape
        ``(n_draws, n_patients)`` (the number of draws may differ between regimens).
    patients : sequence of str
        Patient ids, in the order of the patient axis.

    Returns
    -------
    pandas.DataFrame
        One row per patient and regimen (patients in the given order, regimens in the order
        of ``results``): ``patient``, ``regimen``; ``ttp_median_days``, ``ttp_q05_days``,
        ``ttp_q95_days`` (days); ``p_progressed`` (share of draws progressing within the
        horizon); ``drug_days_median``, ``drug_days_q05``, ``drug_days_q95`` (days).

    Notes
    -----
    TTP quantiles count draws without progression as later than the horizon: they are
    computed (linear interpolation, numpy's default type 7) with those draws at ``+inf``,
    and a quantile that is then beyond the horizon is reported as **NaN**, meaning "not
    reached within the horizon" (never "missing"). So ``ttp_median_days`` is NaN exactly
    when no more than about half of the draws progress; ``ttp_q95_days`` is NaN as soon as
    a few percent of the draws do not progress. Drug days are always finite (they stop at
    progression or the horizon), with plain linear quantiles.
    """
    ids = [str(x) for x in patients]
    rows = []
    per_regimen = {}
    for name, res in results.items():
        ttp = np.asarray(res["ttp_days"], dtype=float)
        drug = np.asarray(res["drug_days"], dtype=float)
        if ttp.ndim != 2 or ttp.shape[1] != len(ids) or drug.shape != ttp.shape:
            raise TwinDataError(
                f"results[{name!r}]: ttp_days and drug_days must have shape (n_draws, "
                f"{len(ids)}), got {ttp.shape} and {drug.shape}",
                rule="(n_draws, n_patients) arrays, one column per patient",
                actual=(ttp.shape, drug.shape),
                where=f"results[{name!r}]",
            )
        t_inf = np.where(np.isnan(ttp), np.inf, ttp)
        qs = {}
        for label, q in (("median", 0.5), ("q05", 0.05), ("q95", 0.95)):
            v = _quantile_with_inf(t_inf, q)
            qs[f"ttp_{label}_days"] = np.where(np.isfinite(v), v, np.nan)
        qs["p_progressed"] = (~np.isnan(ttp)).mean(axis=0)
        qs["drug_days_median"] = np.quantile(drug, 0.5, axis=0)
        qs["drug_days_q05"] = np.quantile(drug, 0.05, axis=0)
        qs["drug_days_q95"] = np.quantile(drug, 0.95, axis=0)
        per_regimen[name] = qs
    for i, pid in enumerate(ids):
        for name, qs in per_regimen.items():
            rows.append({"patient": pid, "regimen": name} | {k: float(v[i]) for k, v in qs.items()})
    columns = [
        "patient",
        "regimen",
        "ttp_median_days",
        "ttp_q05_days",
        "ttp_q95_days",
        "p_progressed",
        "drug_days_median",
        "drug_days_q05",
        "drug_days_q95",
    ]
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------- two arms


def _arm(name: str, time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(time, dtype=float)
    e = np.asarray(event)
    if t.ndim != 1 or t.size == 0 or e.shape != t.shape:
        raise EndpointError(
            f"{name}: time and event must be equal-length non-empty 1-d arrays, got "
            f"{t.shape} and {e.shape}",
            rule="equal-length 1-d arrays",
            actual=(t.shape, e.shape),
            where=name,
        )
    if not np.all(np.isfinite(t)) or np.any(t < 0) or not np.isin(e, (0, 1)).all():
        raise EndpointError(
            f"{name}: times must be finite and >= 0 (days), events 0/1 (or bool)",
            rule="time finite >= 0; event in {0, 1}",
            where=name,
        )
    return t, e.astype(bool)


def compare_arms(
    time_a: np.ndarray, event_a: np.ndarray, time_b: np.ndarray, event_b: np.ndarray
) -> dict[str, float]:
    """Kaplan-Meier medians and the log-rank test of two right-censored samples.

    Parameters
    ----------
    time_a, time_b : ndarray, shape (n_a,), (n_b,)
        Event or censoring times (days, >= 0).
    event_a, event_b : ndarray of {0, 1} or bool
        1 for an event (e.g. progression), 0 for right-censored.

    Returns
    -------
    dict
        ``median_a_days``, ``median_b_days`` (:func:`~insilico_trials.sim.endpoints.km_median`,
        NaN when not reached); ``n_a``, ``n_b``, ``events_a``, ``events_b``;
        ``observed_a``, ``expected_a`` (events of sample A and their expectation under the
        null); ``logrank_chi2`` and ``p_value`` (1 df).

    Notes
    -----
    The log-rank statistic (Mantel 1966; Peto & Peto 1972), at each distinct event time
    ``t_j`` of the pooled sample with ``n_j`` at risk (times >= ``t_j``; censored at ``t_j``
    still at risk), ``n_aj`` of them in A, ``d_j`` events (``d_aj`` in A)::

        E_a = sum_j d_j n_aj / n_j
        V   = sum_j d_j (n_aj / n_j) (1 - n_aj / n_j) (n_j - d_j) / (n_j - 1)
        chi2 = (O_a - E_a)^2 / V

    ``V`` is the hypergeometric variance, which handles tied event times. ``chi2`` and the
    p-value are NaN when ``V`` = 0 (no event time where both samples are at risk).
    """
    ta, ea = _arm("sample a", time_a, event_a)
    tb, eb = _arm("sample b", time_b, event_b)
    times = np.unique(np.concatenate([ta[ea], tb[eb]]))
    sa, sb = np.sort(ta), np.sort(tb)
    da_sorted, db_sorted = np.sort(ta[ea]), np.sort(tb[eb])
    n_a = ta.size - np.searchsorted(sa, times, side="left")
    n_b = tb.size - np.searchsorted(sb, times, side="left")
    d_a = np.searchsorted(da_sorted, times, side="right") - np.searchsorted(
        da_sorted, times, side="left"
    )
    d_b = np.searchsorted(db_sorted, times, side="right") - np.searchsorted(
        db_sorted, times, side="left"
    )
    n = (n_a + n_b).astype(float)
    d = (d_a + d_b).astype(float)
    frac = n_a / n
    expected = float(np.sum(d * frac))
    with np.errstate(invalid="ignore", divide="ignore"):
        v_j = np.where(n > 1, d * frac * (1.0 - frac) * (n - d) / (n - 1.0), 0.0)
    var = float(v_j.sum())
    observed = float(ea.sum())
    if var > 0:
        stat = (observed - expected) ** 2 / var
        p = float(chi2.sf(stat, 1))
    else:
        stat, p = float("nan"), float("nan")
    return {
        "median_a_days": km_median(ta, ea),
        "median_b_days": km_median(tb, eb),
        "n_a": int(ta.size),
        "n_b": int(tb.size),
        "events_a": int(ea.sum()),
        "events_b": int(eb.sum()),
        "observed_a": observed,
        "expected_a": expected,
        "logrank_chi2": float(stat),
        "p_value": p,
    }


def km_curve(time: np.ndarray, event: np.ndarray) -> pd.DataFrame:
    """The Kaplan-Meier curve as step-function points, for plotting or tables.

    Parameters
    ----------
    time : ndarray
        Event or censoring times (days, >= 0).
    event : ndarray of {0, 1} or bool
        1 for an event, 0 for right-censored.

    Returns
    -------
    pandas.DataFrame
        Columns ``day`` and ``survival``: a first row (day 0, survival 1), then each distinct
        observed time (events and censorings) with the survival just after it (a right-
        continuous step function: the value holds until the next row's day).
    """
    t, e = _arm("km_curve", time, event)
    days, surv, _, _ = kaplan_meier(t, e)
    return pd.DataFrame(
        {
            "day": np.concatenate([[0.0], np.asarray(days, dtype=float)]),
            "survival": np.concatenate([[1.0], np.asarray(surv, dtype=float)]),
        }
    )
