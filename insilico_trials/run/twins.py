"""Patient digital twins on a real data cut: fit, forecast skill, counterfactual arms.

:func:`twin_cut` turns a cut's longitudinal records and exposure intervals (tidy frames of
:func:`insilico_trials.io.realdata.longitudinal_frame` and
:func:`~insilico_trials.io.realdata.exposure_intervals`) into a
:class:`~insilico_trials.sim.twins.TwinCut`; :func:`update_twins` fits the protocol's twin
model to every patient of the cut, scores the previous cut's twins on the records that
arrived since (forecast skill), and simulates every twin under every protocol arm's regimen
(counterfactual arms, and the patient-matched synthetic control against the real cohort).

Definitions (the product's, stated once here and in the report):

* **Model time to PSA progression** (TTP): the nadir rule of
  :func:`insilico_trials.sim.tumour.simulate_zhang`: at a visit (every
  ``check_every_days`` of the adaptive rule, 28 days) with the drug on since the previous
  visit, the model PSA is at least 1.25 x the nadir of the current on-drug period. Applied
  to the twins' simulated PSA (no measurement error) and, for the real cohort, to the
  measured PSA at its own visits (censored at the last record).
* **Time on drug**: days with the drug on, from day 0 to progression or the horizon.
* **Forecast skill** of cut ``k``'s twins on cut ``k + 1``: each newly arrived value's
  position in the twins' posterior predictive distribution (parameter draws, the residual
  error model of the fit, the dosing the patient really received): share inside the central
  50 % and 90 % intervals, and the CRPS (ng/mL for PSA; lower is better).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from insilico_trials.infer.forecast import crps_ensemble, interval_coverage
from insilico_trials.infer.twins import TwinFit, fit_twins
from insilico_trials.models.twins import TwinModel, get_twin_model
from insilico_trials.sim.tumour import AdaptiveRule
from insilico_trials.sim.twin_regimens import (
    compare_arms,
    counterfactual_table,
    km_curve,
    simulate_regimen,
)
from insilico_trials.sim.twins import DosingHistory, TwinCut, TwinDataError, solve_grid, step_grid
from insilico_trials.spec.protocol import TrialProtocol

__all__ = [
    "TwinUpdate",
    "observed_ttp",
    "posterior_draws",
    "predictive_draws",
    "twin_cut",
    "update_twins",
]


def twin_cut(
    records: pd.DataFrame,
    exposure: pd.DataFrame,
    *,
    arms: Mapping[str, str] | None = None,
) -> TwinCut:
    """A :class:`TwinCut` from a cut's records and exposure intervals.

    Parameters
    ----------
    records : DataFrame
        ``usubjid, arm, day, value``: one row per measurement (days increasing per subject;
        ``day`` 0 is the subject's day 0, where the twin's states start).
    exposure : DataFrame
        ``usubjid, start_day, end_day, on``: the subject's treatment intervals (touching,
        not overlapping). ``u(t)`` is the status of the interval holding ``t``; after the
        last interval the last status continues; a subject without an interval at day 0 is
        off treatment until his first one.
    arms : mapping, optional
        Keep only subjects whose ``arm`` is one of these values.

    Raises
    ------
    TwinDataError
        A subject with records but no exposure interval, or a record before day 0.
    """
    if arms is not None:
        records = records[records["arm"].isin(list(arms))]
    ids, dosing, days, values = [], [], [], []
    ex = {k: g for k, g in exposure.groupby("usubjid", sort=False)}
    for sid, g in records.groupby("usubjid", sort=False):
        d = g["day"].to_numpy(dtype=float)
        if (d < 0).any():
            raise TwinDataError(
                f"adlb: subject {sid}: ADY {d[d < 0][0]} before day 0 (twins start at day 0)",
                where=f"adlb USUBJID {sid}",
            )
        e = ex.get(sid)
        if e is None or e.empty:
            raise TwinDataError(
                f"adex: subject {sid} has records but no exposure interval: the twin needs "
                "his dosing history",
                where=f"adex USUBJID {sid}", rule="every subject with records has exposure",
            )  # fmt: skip
        e = e.sort_values("start_day")
        starts = e["start_day"].to_numpy(dtype=float)
        on = e["on"].to_numpy(dtype=bool).astype(float)
        if starts[0] > 0:
            starts, on = np.r_[0.0, starts], np.r_[0.0, on]
        # zero-length intervals (a status recorded at the last visit) and repeats collapse
        keep = np.r_[np.diff(starts) > 0, True]
        starts, on = starts[keep], on[keep]
        starts[0] = 0.0
        dosing.append(DosingHistory(starts, on))
        ids.append(str(sid))
        days.append(d)
        values.append(g["value"].to_numpy(dtype=float))
    return TwinCut(tuple(ids), tuple(dosing), tuple(days), tuple(values))


def posterior_draws(fit: TwinFit, patients: Sequence[str], n: int, seed: int) -> pd.DataFrame:
    """``n`` posterior draws (without replacement, by a seeded generator) as a long table
    ``draw, patient, <per-patient parameters>, <shared parameters>, sigma``: what the next cut
    forecasts with and the counterfactual arms simulate."""
    tm = get_twin_model(fit.model)
    post = fit.idata["posterior"]

    def flat(name: str) -> np.ndarray:
        v = np.asarray(post[name].values)
        return v.reshape(-1, *v.shape[2:])

    total = flat("sigma").shape[0]
    pick = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
    k, m = pick.size, len(patients)
    out: dict[str, Any] = {
        "draw": np.repeat(np.arange(k), m),
        "patient": np.tile(np.asarray(patients, dtype=object), k),
    }
    for q in tm.patient_parameters:
        out[q] = flat(q)[pick].reshape(-1)
    for q in (*tm.shared_parameters, "sigma"):
        out[q] = np.repeat(flat(q)[pick], m)
    return pd.DataFrame(out)


def _param_arrays(tm: TwinModel, draws: pd.DataFrame, patients: Sequence[str]) -> dict:
    k = int(draws["draw"].max()) + 1
    by = draws.set_index(["draw", "patient"])
    idx = pd.MultiIndex.from_product([range(k), list(patients)])
    missing = set(patients) - set(draws["patient"])
    if missing:
        raise TwinDataError(f"twin draws: no draws for subject(s) {sorted(missing)}")
    d = by.loc[idx]
    p = {q: d[q].to_numpy(dtype=float).reshape(k, len(patients)) for q in tm.patient_parameters}
    for q in (*tm.shared_parameters, "sigma"):
        p[q] = d[q].to_numpy(dtype=float).reshape(k, len(patients))[:, :1]
    return p


def predictive_draws(
    tm: TwinModel,
    draws: pd.DataFrame,
    cut: TwinCut,
    days: Sequence[np.ndarray],
    *,
    floors: Sequence[np.ndarray],
    seed: int,
    max_step_days: float = 1.0,
) -> list[np.ndarray]:
    """Posterior predictive draws of the biomarker at ``days`` (per patient of ``cut``), under
    the patient's dosing in ``cut``: the twin's curve for each parameter draw plus the fit's
    residual error, ``log(y + L) = log(f + L) + sigma e`` (``L`` the patient's floor),
    values below 0 set to 0. Returns one ``(n_draws, len(days[i]))`` array per patient."""
    p = _param_arrays(tm, draws, cut.patients)
    grid = step_grid(cut.dosing, [np.asarray(d, dtype=float) for d in days],
                     max_step_days=max_step_days)  # fmt: skip
    sol = solve_grid(tm, p, grid)
    rng = np.random.default_rng(seed)
    out = []
    for i, d in enumerate(days):
        f = sol.observed[:, i, : len(d)]
        floor = np.asarray(floors[i], dtype=float)
        e = rng.standard_normal(f.shape)
        y = (f + floor) * np.exp(p["sigma"] * e) - floor
        out.append(np.clip(y, 0.0, None))
    return out


def observed_ttp(
    cut: TwinCut, rule: AdaptiveRule, *, progression_rise: float = 0.25
) -> tuple[np.ndarray, np.ndarray]:
    """Time to PSA progression of real patients by the product's nadir rule, at their own
    visits: at a record with the drug on since the previous record, value >= (1 + rise) x
    the nadir of the current on-drug period (its records, the first included). Censored at
    the last record. Returns ``(days, event)``."""
    del rule  # the real cohort is checked at its own visits, not the rule's schedule
    t = np.empty(cut.n_patients)
    ev = np.zeros(cut.n_patients, dtype=bool)
    for i, (hist, d, v) in enumerate(zip(cut.dosing, cut.days, cut.values or (), strict=True)):
        on = hist.u_at(d) > 0
        t[i] = d[-1]
        nadir = np.inf
        for j in range(len(d)):
            was_on = j > 0 and bool(on[j - 1])
            if on[j] and not was_on:
                nadir = v[j]
                continue
            if was_on:
                if v[j] >= (1 + progression_rise) * nadir:
                    t[i], ev[i] = d[j], True
                    break
                nadir = min(nadir, v[j])
            if not on[j]:
                nadir = np.inf
    return t, ev


@dataclass(frozen=True)
class TwinUpdate:
    """What one cut's twin update produces (all of it archived by ``update``).

    Attributes
    ----------
    fit : TwinFit
    draws : DataFrame
        Posterior draws kept for the next cut's forecast (:func:`posterior_draws`).
    counterfactual : DataFrame
        Per patient and protocol arm: model TTP and time on drug with 90 % intervals
        (:func:`insilico_trials.sim.twin_regimens.counterfactual_table`), plus the patient's
        real arm.
    comparison : dict
        The patient-matched synthetic control (twins of the real patients of the arms that
        did not get the control regimen, simulated under it) against the real control cohort.
    km : DataFrame
        ``group, day, survival``: Kaplan-Meier curves of that comparison.
    skill : dict or None
        Forecast skill of the previous cut's twins on the newly arrived records.
    skill_rows : DataFrame or None
        Per new record: ``patient, day, value, median, q05, q25, q75, q95, in50, in90, crps``.
    """

    fit: TwinFit
    draws: pd.DataFrame
    counterfactual: pd.DataFrame
    comparison: dict[str, Any]
    km: pd.DataFrame
    skill: dict[str, Any] | None
    skill_rows: pd.DataFrame | None


def _rule_of(protocol: TrialProtocol, arm_name: str) -> AdaptiveRule | None:
    arm = next(a for a in protocol.arms if a.name == arm_name)
    ad = arm.regimen.adaptive if arm.regimen is not None else None
    if ad is None:
        return None
    return AdaptiveRule.from_spec(ad)


def _skill(
    tm: TwinModel,
    previous: pd.DataFrame,
    previous_days: Mapping[str, float],
    cut: TwinCut,
    floors: Sequence[np.ndarray],
    seed: int,
) -> tuple[dict[str, Any], pd.DataFrame]:
    keep = [i for i, p in enumerate(cut.patients) if p in previous_days]
    sub = TwinCut(
        tuple(cut.patients[i] for i in keep),
        tuple(cut.dosing[i] for i in keep),
        tuple(cut.days[i] for i in keep),
        tuple(cut.values[i] for i in keep) if cut.values else None,
    )
    new_days = [d[d > previous_days[p]] for p, d in zip(sub.patients, sub.days, strict=True)]
    new_vals = [
        v[d > previous_days[p]]
        for p, d, v in zip(sub.patients, sub.days, sub.values or (), strict=True)
    ]
    have = [i for i, d in enumerate(new_days) if d.size]
    rows = []
    if have:
        sub2 = TwinCut(
            tuple(sub.patients[i] for i in have),
            tuple(sub.dosing[i] for i in have),
            tuple(sub.days[i] for i in have),
        )
        fl = [floors[keep[i]] for i in have]
        pred = predictive_draws(
            tm, previous, sub2, [new_days[i] for i in have], floors=fl, seed=seed
        )
        for k, i in enumerate(have):
            y, dr = new_vals[i], pred[k]
            q = np.quantile(dr, [0.05, 0.25, 0.5, 0.75, 0.95], axis=0)
            cov = interval_coverage(dr, y, levels=(0.5, 0.9))
            crps = crps_ensemble(dr, y)
            for j in range(y.size):
                rows.append({
                    "patient": sub.patients[i], "day": float(new_days[i][j]),
                    "value": float(y[j]), "median": q[2, j], "q05": q[0, j], "q25": q[1, j],
                    "q75": q[3, j], "q95": q[4, j], "in50": bool(cov[0.5][j]),
                    "in90": bool(cov[0.9][j]), "crps": float(crps[j]),
                })  # fmt: skip
    table = pd.DataFrame(
        rows,
        columns=["patient", "day", "value", "median", "q05", "q25", "q75", "q95", "in50",
                 "in90", "crps"],
    )  # fmt: skip
    n = len(table)
    skill = {
        "n_new_records": n,
        "n_patients": int(table["patient"].nunique()) if n else 0,
        "coverage50": float(table["in50"].mean()) if n else float("nan"),
        "coverage90": float(table["in90"].mean()) if n else float("nan"),
        "crps_mean": float(table["crps"].mean()) if n else float("nan"),
        "crps_median": float(table["crps"].median()) if n else float("nan"),
    }
    return skill, table


def patient_floors(tm: TwinModel, cut: TwinCut) -> list[np.ndarray]:
    """The residual-error floor ``L`` of each patient (biomarker unit): the larger of the
    assay floor and ``relative_floor`` x his day-0 value (as in :func:`fit_twins`)."""
    ob = tm.observation
    return [
        np.asarray(max(ob.assay_floor, ob.relative_floor * float(v[0]))) for v in (cut.values or ())
    ]


def update_twins(
    protocol: TrialProtocol,
    cut: TwinCut,
    real_arm: Mapping[str, str],
    *,
    previous: pd.DataFrame | None = None,
    previous_days: Mapping[str, float] | None = None,
    progress: Any = None,
) -> TwinUpdate:
    """Fit, score and simulate the twins of one cut (see the module docstring).

    Parameters
    ----------
    protocol : TrialProtocol
        With a ``twins`` section.
    cut : TwinCut
        Every patient of the arms in ``twins.real_arms`` with all his records so far.
    real_arm : mapping
        Subject -> ADSL ``ARM``.
    previous, previous_days : optional
        The previous cut's posterior draws (:func:`posterior_draws`) and each patient's last
        record day in it: the records after it are the ones the previous twins forecast.
    progress : callable, optional
        Receives one line per step.
    """
    tw = protocol.twins
    if tw is None:
        raise TwinDataError("protocol has no twins section", where="twins")
    say = progress or (lambda _m: None)
    tm = get_twin_model(tw.model)
    floors = patient_floors(tm, cut)
    skill = skill_rows = None
    if previous is not None and previous_days is not None:
        skill, skill_rows = _skill(tm, previous, previous_days, cut, floors, protocol.seed + 1)
        say(
            f"twins: forecast of {skill['n_new_records']} new records by the previous twins: "
            f"{skill['coverage50']:.0%} inside 50% intervals, {skill['coverage90']:.0%} inside "
            f"90%, mean CRPS {skill['crps_mean']:.3g} {tm.observation.unit}"
        )
    f = tw.fit
    say(
        f"twins: fitting {tm.name} to {cut.n_patients} patients "
        f"({sum(len(d) for d in cut.days)} records; {f.chains} chains x {f.draws} draws)"
    )
    curve_days = {
        p: np.union1d(d, np.arange(0.0, float(d[-1]) + 1e-9, 7.0))
        for p, d in zip(cut.patients, cut.days, strict=True)
    }
    fit = fit_twins(
        cut, model=tm.name, predict_days=curve_days, max_step_days=f.max_step_days,
        draws=f.draws, tune=f.tune, chains=f.chains, seed=protocol.seed,
        target_accept=f.target_accept,
    )  # fmt: skip
    d = fit.diagnostics
    say(
        f"twins: fit {fit.settings['sample_s']:.0f} s; R-hat max {d['max_rhat']:.3f}, ESS min "
        f"{d['min_ess_bulk']:.0f}, divergences {d['divergences']}"
        + ("" if fit.converged else "; CONVERGENCE FAILED (not a result)")
    )
    draws = posterior_draws(fit, cut.patients, tw.counterfactual_draws, protocol.seed + 2)
    p = _param_arrays(tm, draws, cut.patients)
    sims = {}
    for arm in protocol.arms:
        rule = _rule_of(protocol, arm.name)
        sims[arm.name] = simulate_regimen(
            tm, p, regimen="adaptive" if rule else "continuous", rule=rule,
            horizon_days=float(tw.horizon_days),
        )  # fmt: skip
    table = counterfactual_table(sims, cut.patients)
    table.insert(1, "real_arm", table["patient"].map(dict(real_arm)))
    # patient-matched synthetic control: the twins of the patients who did not receive the
    # control regimen, under it, followed as long as they really were; against the real
    # control cohort's own PSA progression.
    control = protocol.control_arm.name
    control_real = tw.real_arms[control]
    others = [i for i, q in enumerate(cut.patients) if real_arm.get(q) != control_real]
    ctrl = [i for i, q in enumerate(cut.patients) if real_arm.get(q) == control_real]
    sim_c = sims[control]
    ttp_draws = np.where(sim_c["progressed"], sim_c["ttp_days"], np.inf)
    ttp_med = np.median(ttp_draws, axis=0)  # per patient, over draws
    follow = np.array([d[-1] for d in cut.days])
    syn_t = np.minimum(ttp_med[others], follow[others])
    syn_e = ttp_med[others] <= follow[others]
    rule = next((r for a in protocol.arms if (r := _rule_of(protocol, a.name))), AdaptiveRule())
    real_t, real_e = observed_ttp(
        TwinCut(
            tuple(cut.patients[i] for i in ctrl), tuple(cut.dosing[i] for i in ctrl),
            tuple(cut.days[i] for i in ctrl), tuple((cut.values or ())[i] for i in ctrl),
        ),
        rule,
    )  # fmt: skip
    comparison = compare_arms(syn_t, syn_e, real_t, real_e)
    comparison.update(
        synthetic=f"twins of {len(others)} patients not on the control regimen, simulated "
        f"under {control!r} (posterior-median model TTP, censored at their real follow-up)",
        real=f"{len(ctrl)} real patients of ADSL arm {control_real!r} (nadir rule on measured "
        "PSA, censored at the last record)",
    )
    km = pd.concat(
        [
            km_curve(syn_t, syn_e).assign(group="synthetic control (twins)"),
            km_curve(real_t, real_e).assign(group="real control"),
        ],
        ignore_index=True,
    )[["group", "day", "survival"]]

    def median(v: float) -> str:
        return "not reached" if np.isnan(v) else f"{v:.0f} d"

    say(
        f"twins: synthetic control median TTP {median(comparison['median_a_days'])} vs real "
        f"{median(comparison['median_b_days'])} (log-rank p {comparison['p_value']:.3g})"
    )
    return TwinUpdate(fit, draws, table, comparison, km, skill, skill_rows)
