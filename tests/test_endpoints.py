"""Endpoints: RECIST 1.1 against hand-built cases, survival draws against known moments, KM.

Hand-built RECIST cases use no measurement error (``measurement_cv=0``), so they are exact.
Statistical checks state their seed, sample size and tolerance (>= 4 standard errors).
"""

from __future__ import annotations

import numpy as np
import pytest

from insilico_trials.sim.endpoints import (
    NE,
    PD,
    PR,
    SD,
    FollowUp,
    OSModel,
    RecistRules,
    best_overall_response,
    derive_endpoints,
    kaplan_meier,
    km_median,
    recist_visit_responses,
    response_rates,
)

VISITS = np.array([0.0, 42.0, 84.0, 126.0, 168.0])

# (name, SLD in mm at VISITS, confirmed best, unconfirmed best, PD visit day or nan)
CASES = [
    ("confirmed CR", [50, 4, 3, 3, 3], "CR", "CR", np.nan),
    ("confirmed PR", [50, 30, 30, 30, 30], "PR", "PR", np.nan),
    ("PR not confirmed", [50, 34, 40, 40, 40], "SD", "PR", np.nan),
    ("early PD", [50, 62, 70, 80, 90], "PD", "PD", 42.0),
    ("PD from nadir after PR", [50, 30, 30, 36, 40], "PR", "PR", 126.0),
    ("+20% but < 5 mm is not PD", [20, 20, 20, 24.5, 24.5], "SD", "SD", np.nan),
    ("SD", [50, 48, 52, 55, 55], "SD", "SD", np.nan),
    ("exactly -30% is PR", [50, 35, 35, 35, 35], "PR", "PR", np.nan),
    ("CR then PD: SD duration met", [50, 4, 60, 60, 60], "SD", "CR", 84.0),
    ("CR confirmed by PR only is PR", [50, 4, 8.9, 8.9, 8.9], "PR", "CR", np.nan),
]


@pytest.mark.parametrize(
    ("name", "sld", "best", "best_u", "pd_day"), CASES, ids=[c[0] for c in CASES]
)
def test_recist_hand_built_cases(name, sld, best, best_u, pd_day) -> None:
    ep = derive_endpoints(
        np.array([sld], dtype=float), VISITS, seed=0, recist=RecistRules(measurement_cv=0.0)
    )
    row = ep.iloc[0]
    assert row["best_response"] == best, name
    assert row["best_response_unconfirmed"] == best_u, name
    assert row["responder"] == int(best in ("CR", "PR"))
    assert row["disease_control"] == int(best in ("CR", "PR", "SD"))
    if np.isnan(pd_day):
        assert row["pfs_event"] == 0 and row["pfs_days"] == 168.0
    else:
        assert row["pfs_event"] == 1 and row["pfs_days"] == pd_day
        assert row["pfs_lower_days"] == VISITS[np.searchsorted(VISITS, pd_day) - 1]


def test_per_visit_codes_stop_after_pd_and_respect_observation() -> None:
    sld = np.array([[50, 62, 30, 30, 30], [50, 30, 30, 30, 30]], dtype=float)
    observed = np.array([[True] * 5, [True, True, False, False, False]])
    r = recist_visit_responses(sld, VISITS, observed=observed)
    np.testing.assert_array_equal(r, [[NE, PD, NE, NE, NE], [NE, PR, NE, NE, NE]])


def test_new_lesion_is_pd_at_the_next_visit() -> None:
    sld = np.array([[50, 30, 30, 30, 30]], dtype=float)
    r = recist_visit_responses(sld, VISITS, new_lesion_day=np.array([50.0]))
    np.testing.assert_array_equal(r, [[NE, PR, PD, NE, NE]])


def test_confirmation_needs_28_days_and_sd_needs_minimum_duration() -> None:
    days = np.array([0.0, 14.0, 28.0, 56.0])
    # PR at 14 and 28 (14 days apart) then PD at 56: never confirmed, and no non-PD visit
    # on or after day 42, so the best response is PD (RECIST 1.1 Table 3 footnote).
    r = np.array([[NE, PR, PR, PD], [NE, PR, PR, PR], [NE, SD, NE, NE]])
    np.testing.assert_array_equal(best_overall_response(r, days), [PD, PR, NE])
    np.testing.assert_array_equal(best_overall_response(r, days, confirm=False), [PR, PR, NE])


def test_no_post_baseline_assessment_is_ne() -> None:
    ep = derive_endpoints(
        np.full((1, 5), 50.0),
        VISITS,
        seed=0,
        recist=RecistRules(measurement_cv=0.0),
        follow_up=FollowUp(admin_censor_days=10.0),
    )
    assert ep["best_response"].iloc[0] == "NE"
    assert ep["n_assessments"].iloc[0] == 0
    assert ep["pfs_days"].iloc[0] == 0.0 and ep["pfs_event"].iloc[0] == 0


def test_measurement_error_has_the_declared_spread() -> None:
    # seed 11, n = 20000: log ratio of two visits has sd sqrt(2) * cv; se of sd ~ 0.5%
    n, cv = 20_000, 0.05
    ep = derive_endpoints(
        np.full((n, 2), 50.0), np.array([0.0, 42.0]), seed=11, recist=RecistRules(measurement_cv=cv)
    )
    sd = np.log1p(ep["best_pct_change"].to_numpy() / 100).std()
    assert sd == pytest.approx(np.sqrt(2) * cv, rel=0.03)


def test_chunk_invariance_with_accrual_and_os() -> None:
    rng = np.random.default_rng(3)
    sld = 50 * np.exp(rng.normal(0, 0.2, (40, 5)).cumsum(axis=1) * [0, 1, 1, 1, 1])
    kw = dict(
        seed=9,
        keys=(0, "arm-a"),
        recist=RecistRules(measurement_cv=0.1, new_lesion_hazard_per_day=0.002),
        os_model={"intercept": 3.5, "coefficients": {"week8_frac_change": -1.0}, "scale": 0.7},
        follow_up=FollowUp(dropout_per_day=0.001, admin_censor_days=400.0, accrual_per_day=0.5),
    )
    full = derive_endpoints(sld, VISITS, **kw)
    parts = [
        derive_endpoints(sld[idx], VISITS, patient=idx, **kw)
        for idx in (np.arange(0, 17), np.arange(17, 40))
    ]
    import pandas as pd

    pd.testing.assert_frame_equal(full, pd.concat(parts, ignore_index=True))


def test_lognormal_and_weibull_os_medians() -> None:
    # seed 21, n = 40000, no censoring: medians within 3% (se of log median ~ 0.6%)
    n = 40_000
    sld = np.full((n, 5), 50.0)
    ln = derive_endpoints(
        sld, VISITS, seed=21, os_model=OSModel("lognormal", 4.0, {}, 0.8, "weeks")
    )
    assert ln["os_event"].all()
    assert np.median(ln["os_days"]) == pytest.approx(np.exp(4.0) * 7, rel=0.03)
    wb = derive_endpoints(sld, VISITS, seed=21, os_model=OSModel("weibull", 3.0, {}, 0.5, "months"))
    expected = np.exp(3.0) * np.log(2) ** 0.5 * 365.25 / 12
    assert np.median(wb["os_days"]) == pytest.approx(expected, rel=0.03)


def test_os_link_to_week8_change_shifts_survival() -> None:
    n = 20_000
    shrink = np.tile([50.0, 40.0, 35.0, 35.0, 35.0], (n, 1))  # -25% at week 8 (day 56)
    model = {"intercept": 4.0, "coefficients": {"week8_frac_change": -2.0}, "scale": 0.5}
    ep = derive_endpoints(
        shrink, VISITS, seed=2, os_model=model, recist=RecistRules(measurement_cv=0.0)
    )
    w8 = ep["week8_pct_change"].iloc[0] / 100
    assert w8 == pytest.approx(40 / 50 + (35 - 40) / 50 * (14 / 42) - 1)
    assert np.median(ep["os_days"]) == pytest.approx(np.exp(4.0 - 2.0 * w8) * 7, rel=0.03)


def test_dropout_admin_censoring_and_accrual() -> None:
    n = 20_000
    sld = np.full((n, 5), 50.0)
    ep = derive_endpoints(
        sld,
        VISITS,
        seed=4,
        os_model=OSModel("exponential", np.log(1000.0), {}, 1.0, "days"),
        follow_up=FollowUp(dropout_per_day=1 / 1000, admin_censor_days=np.inf, accrual_per_day=2.0),
    )
    # competing exponentials: P(death observed) = 1/2, time ~ Exp(rate 2/1000), mean 500 days
    assert ep["os_event"].mean() == pytest.approx(0.5, abs=0.015)
    assert ep["os_days"].mean() == pytest.approx(500.0, rel=0.03)
    gaps = np.diff(ep["enrol_day"].to_numpy())
    assert gaps.mean() == pytest.approx(0.5, rel=0.03) and (gaps > 0).all()
    cut = derive_endpoints(
        sld[:2000], VISITS, seed=4, follow_up=FollowUp(admin_censor_days=300.0, accrual_per_day=5.0)
    )
    inside = cut["enrolled"] == 1
    np.testing.assert_array_equal(inside, cut["enrol_day"] <= 300.0)
    assert 0 < inside.sum() < len(cut)
    assert (cut["enrol_day"] + cut["os_days"] <= 300.0 + 1e-9)[inside].all()
    assert (cut.loc[~inside, "os_days"] == 0).all()
    per_patient = derive_endpoints(
        sld[:50],
        VISITS,
        seed=4,
        recist=RecistRules(measurement_cv=0.0),
        follow_up=FollowUp(max_follow_up_days=100.0),
    )
    assert (per_patient["os_days"] == 100.0).all() and (per_patient["pfs_days"] == 84.0).all()
    assert (cut["os_event"] == 0).all()


def test_kaplan_meier_hand_computed() -> None:
    t = np.array([1.0, 2.0, 2.0, 3.0, 4.0])
    e = np.array([1, 1, 0, 1, 0])
    times, s, lo, hi = kaplan_meier(t, e)
    np.testing.assert_allclose(times, [1, 2, 3, 4])
    np.testing.assert_allclose(s, [0.8, 0.6, 0.3, 0.3])
    assert np.all(lo <= s) and np.all(s <= hi)
    assert km_median(t, e) == 3.0
    assert np.isnan(km_median(t, np.zeros(5)))


def test_response_rates_and_bad_input() -> None:
    ep = derive_endpoints(
        np.array([c[1] for c in CASES], dtype=float),
        VISITS,
        seed=0,
        recist=RecistRules(measurement_cv=0.0),
    )
    rr = response_rates(ep)
    assert rr["n"] == len(CASES)
    assert rr["orr"] == pytest.approx(np.mean([c[2] in ("CR", "PR") for c in CASES]))
    with pytest.raises(ValueError, match="visit_days: must start at 0"):
        derive_endpoints(np.ones((1, 2)), np.array([1.0, 2.0]), seed=0)
    with pytest.raises(ValueError, match="dropout_per_day: must be >= 0"):
        derive_endpoints(
            np.ones((1, 2)), np.array([0.0, 2.0]), seed=0, follow_up=FollowUp(dropout_per_day=-1)
        )
    with pytest.raises(ValueError, match="predictor 'nope' not available"):
        derive_endpoints(
            np.ones((1, 2)), np.array([0.0, 2.0]), seed=0, os_model={"coefficients": {"nope": 1}}
        )


def test_report_plots_render_without_pyplot_state() -> None:
    import io

    import matplotlib.pyplot as plt

    from insilico_trials.report.plots_tumour import kaplan_meier_plot, spider_plot, waterfall_plot

    sld = np.array([c[1] for c in CASES], dtype=float)
    ep = derive_endpoints(sld, VISITS, seed=0, recist=RecistRules(measurement_cv=0.0))
    before = plt.get_fignums()
    figs = [
        spider_plot(sld, VISITS, best_response=ep["best_response"].to_numpy()),
        waterfall_plot(ep["best_pct_change"].to_numpy(), best_response=ep["best_response"]),
        kaplan_meier_plot(
            {"A": (ep["pfs_days"], ep["pfs_event"]), "B": (ep["pfs_days"] + 10, ep["pfs_event"])}
        ),
    ]
    assert len(figs[0].axes[0].get_lines()) >= len(CASES)
    assert len(figs[1].axes[0].patches) == len(CASES)
    for fig in figs:
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        assert buf.getvalue()[:4] == b"\x89PNG"
    assert plt.get_fignums() == before


def test_psa_progression_pcwg2_hand_built() -> None:
    from insilico_trials.sim.endpoints import psa_progression

    days = np.array([0.0, 28.0, 56.0, 84.0, 112.0])
    psa = np.array(
        [
            [20.0, 10.0, 13.0, 14.0, 15.0],  # nadir 10; +30% and +3 at day 56, confirmed at 84
            [20.0, 10.0, 13.0, 11.0, 15.0],  # rise at 56 not confirmed at 84; 112 is last
            [20.0, 22.0, 24.0, 26.0, 27.0],  # no decline: counted from day 84 (26 >= 25, +6)
            [4.0, 2.0, 3.0, 3.5, 3.5],  # +75% but < 2 ng/mL above nadir: no progression
        ]
    )
    ttp, event = psa_progression(psa, days)
    np.testing.assert_array_equal(event, [1, 0, 1, 0])
    np.testing.assert_array_equal(ttp, [56.0, 112.0, 84.0, 112.0])
    # no visit 60 days after any rise: nothing can be confirmed
    ttp, event = psa_progression(psa, days, confirm_min_days=60.0)
    np.testing.assert_array_equal(event, [0, 0, 0, 0])
