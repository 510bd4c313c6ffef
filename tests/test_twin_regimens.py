"""Counterfactual regimens on digital twins, two-arm comparison and forecast scores.

References are named next to each test: closed forms (Gneiting & Raftery 2007), a brute-force
computation, scipy's own log-rank test, a log-rank example computed by hand below, the
reference DOP853 solver of :mod:`insilico_trials.sim.twins`, and plain Python re-statements of
the adaptive rule and of the nadir progression rule of ``simulate_zhang``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from insilico_trials.infer.forecast import (
    crps_ensemble,
    forecast_scores,
    interval_coverage,
)
from insilico_trials.models.twins import TWIN_MODELS
from insilico_trials.sim.tumour import AdaptiveRule
from insilico_trials.sim.twin_regimens import (
    compare_arms,
    counterfactual_table,
    km_curve,
    simulate_regimen,
)
from insilico_trials.sim.twins import DosingHistory, TwinDataError, solve_population

MODEL = TWIN_MODELS["zhang2022"]
TYPICAL = {"S0": 3000.0, "R0": 100.0, "c": 2e-3, "alpha": 3.0, "beta": 1.0}

# Three patients: the typical values (progresses under both regimens), a resistant-poor
# tumour with a high PSA per cell, and a resistant-rich one.
PATIENTS = {
    "S0": np.array([3000.0, 5000.0, 1500.0]),
    "R0": np.array([100.0, 10.0, 500.0]),
    "c": np.array([2e-3, 1e-2, 5e-4]),
    "alpha": np.array([3.0]),
    "beta": np.array([1.0]),
}


def _one(params: dict, i: int) -> dict:
    return {k: v[i] if np.size(v) > 1 else np.ravel(v)[0] for k, v in params.items()}


# --------------------------------------------------------------------------- CRPS, coverage


def _crps_normal(mu: float, s: float, y: np.ndarray) -> np.ndarray:
    # Gneiting & Raftery, JASA 2007;102:359-378 (section 4.2), closed form for N(mu, s^2):
    # CRPS = s [z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi)], z = (y - mu) / s.
    z = (y - mu) / s
    return s * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / math.sqrt(math.pi))


def test_crps_matches_the_normal_closed_form_with_many_draws():
    rng = np.random.default_rng(20070301)
    mu, s = 1.5, 2.0
    y = np.array([-3.0, 0.0, 1.5, 4.0, 9.0])
    draws = rng.normal(mu, s, size=(200_000, 1))
    got = crps_ensemble(draws, y)
    # Monte Carlo error of the ensemble CRPS at m = 200k is ~ s / sqrt(m) ~ 0.005.
    np.testing.assert_allclose(got, _crps_normal(mu, s, y), atol=0.02)
    # a wrong spread term (e.g. forgetting the 1/2) is far outside that tolerance
    assert np.all(np.abs(_crps_normal(mu, s, y) - np.mean(np.abs(draws - y), axis=0)) > 0.5)


def test_crps_equals_the_brute_force_double_sum():
    # Reference: the definition on the empirical distribution, O(m^2):
    # mean_i |x_i - y| - 1/(2 m^2) sum_{i,j} |x_i - x_j|.
    rng = np.random.default_rng(7)
    draws = rng.lognormal(1.0, 0.8, size=(37, 6))
    y = rng.lognormal(1.0, 1.0, size=6)
    brute = np.array(
        [
            np.mean(np.abs(draws[:, k] - y[k]))
            - 0.5 * np.mean(np.abs(draws[:, k][:, None] - draws[:, k][None, :]))
            for k in range(6)
        ]
    )
    np.testing.assert_allclose(crps_ensemble(draws, y), brute, rtol=1e-12, atol=1e-12)
    # a point forecast scores its absolute error
    assert crps_ensemble(np.array([[2.0]]), np.array([5.0]))[0] == 3.0


def test_coverage_of_a_calibrated_forecast_is_nominal_and_of_a_narrow_one_is_not():
    rng = np.random.default_rng(11)
    n_obs = 2000
    y = rng.normal(size=n_obs)
    draws = rng.normal(size=(2000, n_obs))
    cov = interval_coverage(draws, y)
    # binomial error of a share over 2000 observations: sd sqrt(p(1-p)/n); 4 sd allowed
    for level in (0.5, 0.9):
        sd = math.sqrt(level * (1 - level) / n_obs)
        assert abs(cov[level].mean() - level) < 4 * sd, (level, cov[level].mean())
    narrow = interval_coverage(0.5 * draws, y)[0.9].mean()  # true coverage P(|Z| < 0.82) ~ 0.59
    assert narrow < 0.9 - 10 * math.sqrt(0.09 / n_obs)
    scores = forecast_scores(draws, y)
    assert scores["n"] == n_obs
    assert scores["crps_mean"] == pytest.approx(crps_ensemble(draws, y).mean(), rel=1e-12)
    assert scores["coverage_90"] == cov[0.9].mean()


# --------------------------------------------------------------------------- two arms

# Hand-computed log-rank example.
#   A: 3 (event), 5 (event), 7 (censored), 9 (event)
#   B: 1 (event), 3 (event), 4 (censored), 6 (event)
# event time  n_A n_B  n  d d_A   E_A = d n_A/n   V = d (n_A/n)(1-n_A/n)(n-d)/(n-1)
#     1        4   4   8  1  0    1/2             1/4
#     3        4   3   7  2  1    8/7             2 (4/7)(3/7)(5/6) = 20/49
#     5        3   1   4  1  1    3/4             3/16
#     6        2   1   3  1  0    2/3             2/9
#     9        1   0   1  1  1    1               0
# O_A = 3; E_A = 341/84; V = 7535/7056 (= 84^2 denominator);
# chi2 = (3 - 341/84)^2 / V = (89/84)^2 / (7535/7056) = 7921/7535 ~ 1.0512.
# KM: A 3/4 after day 3, 1/2 after day 5 -> median 5; B 3/4 after 1, 1/2 after 3 -> median 3.
HAND_A = (np.array([3.0, 5.0, 7.0, 9.0]), np.array([1, 1, 0, 1]))
HAND_B = (np.array([1.0, 3.0, 4.0, 6.0]), np.array([1, 1, 0, 1]))


def test_logrank_matches_the_hand_computed_example():
    res = compare_arms(*HAND_A, *HAND_B)
    assert res["logrank_chi2"] == pytest.approx(7921 / 7535, rel=1e-12)
    assert res["expected_a"] == pytest.approx(341 / 84, rel=1e-12)
    assert res["p_value"] == pytest.approx(stats.chi2.sf(7921 / 7535, 1), rel=1e-12)
    assert (res["observed_a"], res["events_a"], res["events_b"], res["n_a"], res["n_b"]) == (
        3,
        3,
        3,
        4,
        4,
    )
    assert (res["median_a_days"], res["median_b_days"]) == (5.0, 3.0)


def test_logrank_matches_scipy_with_ties_and_censoring():
    # Peer reference: scipy.stats.logrank (scipy >= 1.11), whose statistic is the signed
    # square root of the chi-square (hypergeometric variance, as here).
    rng = np.random.default_rng(3)
    ta = np.ceil(rng.exponential(300, 60) / 28) * 28  # visit days: many ties
    tb = np.ceil(rng.exponential(450, 45) / 28) * 28
    ea = rng.random(60) < 0.7
    eb = rng.random(45) < 0.6
    res = compare_arms(ta, ea, tb, eb)
    ref = stats.logrank(
        stats.CensoredData(uncensored=ta[ea], right=ta[~ea]),
        stats.CensoredData(uncensored=tb[eb], right=tb[~eb]),
    )
    assert res["logrank_chi2"] == pytest.approx(ref.statistic**2, rel=1e-10)
    assert res["p_value"] == pytest.approx(ref.pvalue, rel=1e-8)


def test_km_curve_is_the_step_function_of_the_example():
    curve = km_curve(*HAND_A)
    assert list(curve.columns) == ["day", "survival"]
    np.testing.assert_allclose(curve["day"], [0, 3, 5, 7, 9])
    np.testing.assert_allclose(curve["survival"], [1, 0.75, 0.5, 0.5, 0.0])


# --------------------------------------------------------------------------- regimens


def _nadir_ttp(days, psa, on, rise=0.25):
    """The nadir rule of simulate_zhang restated: at a visit with the drug on since the
    previous visit, PSA >= (1 + rise) x nadir of the current on-drug period (visit values,
    the period's first visit included)."""
    nadir = psa[0]
    for k in range(1, len(days)):
        if on[k - 1] and psa[k] >= (1 + rise) * nadir:
            return float(days[k])
        if on[k] and not on[k - 1]:
            nadir = psa[k]
        elif on[k]:
            nadir = min(nadir, psa[k])
    return math.nan


def _drug_days(days, on, stop):
    """Whole days 0 .. stop - 1 on drug, the status of a visit holding until the next."""
    total = 0
    for day in range(int(stop)):
        k = int(np.searchsorted(days, day, side="right")) - 1
        total += bool(on[k])
    return total


def test_continuous_never_switches_off():
    res = simulate_regimen(MODEL, PATIENTS, regimen="continuous", horizon_days=2000)
    assert res["on"].all()
    assert res["visit_days"][0] == 0 and np.all(np.diff(res["visit_days"]) == 28)
    np.testing.assert_allclose(res["psa"][:, 0], PATIENTS["c"] * (PATIENTS["S0"] + PATIENTS["R0"]))


def test_adaptive_follows_the_rule_and_the_reference_solver():
    res = simulate_regimen(MODEL, PATIENTS, regimen="adaptive", horizon_days=2000)
    days, psa, on, base = res["visit_days"], res["psa"], res["on"], res["baseline_psa"]
    for i in range(3):
        # the rule re-stated: stop when PSA < 0.5 baseline, resume when PSA >= baseline
        status = True
        for k in range(1, days.size):
            if status and psa[i, k] < 0.5 * base[i]:
                status = False
            elif not status and psa[i, k] >= base[i]:
                status = True
            assert on[i, k] == status, (i, k)
        # on until the first visit below half the baseline, off right after it
        below = np.nonzero(psa[i, 1:] < 0.5 * base[i])[0]
        first_off = np.nonzero(~on[i])[0]
        assert (below.size == 0 and first_off.size == 0) or first_off[0] == below[0] + 1
        # the PSA trajectory under that on/off history, by the DOP853 reference solver
        ref = solve_population(
            MODEL,
            _one(PATIENTS, i),
            [DosingHistory.from_records(days, on[i].astype(float))],
            [days],
            rtol=1e-8,
            atol=1e-10,
        )
        np.testing.assert_allclose(psa[i], ref.observed[0], rtol=1e-4)
    # the first two patients are held (several times), the third never falls below half
    assert (~on[:2]).any(axis=1).all() and on[2].all()


@pytest.mark.parametrize("regimen", ["continuous", "adaptive"])
def test_progression_day_and_drug_days_obey_the_nadir_rule(regimen):
    rng = np.random.default_rng(5)
    n = 12
    params = {
        "S0": 3000 * np.exp(rng.normal(0, 0.5, n)),
        "R0": 100 * np.exp(rng.normal(0, 1.5, n)),
        "c": 2e-3 * np.exp(rng.normal(0, 1.0, n)),
        "alpha": 3 * np.exp(rng.normal(0, 0.8, n)),
        "beta": np.exp(rng.normal(0, 0.3, n)),
    }
    # alpha S > K at the on-drug capacity of S (500 cells): R is suppressed, no progression
    params["alpha"][:3] = 30.0
    res = simulate_regimen(MODEL, params, regimen=regimen, horizon_days=1500)
    days = res["visit_days"]
    n_prog = 0
    for i in range(n):
        expect = _nadir_ttp(days, res["psa"][i], res["on"][i])
        got = res["ttp_days"][i]
        assert (math.isnan(expect) and math.isnan(got)) or expect == got, (i, expect, got)
        stop = 1500 if math.isnan(expect) else expect
        assert res["followed_days"][i] == stop
        assert res["drug_days"][i] == _drug_days(days, res["on"][i], stop)
        n_prog += not math.isnan(expect)
    assert np.array_equal(res["progressed"], ~np.isnan(res["ttp_days"]))
    assert 0 < n_prog < n  # both outcomes are exercised


def test_adaptive_uses_fewer_drug_days_than_continuous_for_typical_values():
    out = {
        r: simulate_regimen(MODEL, TYPICAL, regimen=r, horizon_days=2000)
        for r in ("continuous", "adaptive")
    }
    assert out["adaptive"]["drug_days"][0] < out["continuous"]["drug_days"][0]
    assert out["continuous"]["progressed"][0] and out["adaptive"]["progressed"][0]


def test_vectorised_draws_and_patients_equal_one_at_a_time_exactly():
    rng = np.random.default_rng(9)
    n_draws, n_pat = 3, 4
    params = {
        "S0": 3000 * np.exp(rng.normal(0, 0.5, (n_draws, n_pat))),
        "R0": 100 * np.exp(rng.normal(0, 1.0, (n_draws, n_pat))),
        "c": 2e-3 * np.exp(rng.normal(0, 0.5, (n_draws, n_pat))),
        "alpha": 3 * np.exp(rng.normal(0, 0.5, (n_draws, 1))),
        "beta": np.exp(rng.normal(0, 0.3, (n_draws, 1))),
    }
    res = simulate_regimen(MODEL, params, regimen="adaptive", horizon_days=1000)
    assert res["psa"].shape == (n_draws, n_pat, res["visit_days"].size)
    for d in range(n_draws):
        for i in range(n_pat):
            one = {k: np.array([v[d, min(i, v.shape[1] - 1)]]) for k, v in params.items()}
            single = simulate_regimen(MODEL, one, regimen="adaptive", horizon_days=1000)
            for key in ("psa", "on", "ttp_days", "drug_days", "followed_days", "baseline_psa"):
                assert np.array_equal(single[key][0], res[key][d, i], equal_nan=key != "on"), key


def test_bad_steps_and_regimens_are_rejected():
    with pytest.raises(TwinDataError, match="whole number of steps") as err:
        simulate_regimen(MODEL, TYPICAL, regimen="adaptive", horizon_days=200, step_days=0.3)
    assert isinstance(err.value, ValueError)
    with pytest.raises(TwinDataError, match="regimen"):
        simulate_regimen(MODEL, TYPICAL, regimen="intermittent", horizon_days=200)
    with pytest.raises(TwinDataError, match="needs"):
        simulate_regimen(MODEL, {"S0": 1.0}, regimen="adaptive", horizon_days=200)
    # a 7-day visit schedule on half-day steps is fine
    res = simulate_regimen(
        MODEL,
        TYPICAL,
        regimen="adaptive",
        horizon_days=70,
        step_days=0.5,
        rule=AdaptiveRule("PSA", 0.5, 1.0, 7.0),
    )
    assert res["visit_days"].tolist() == [0, 7, 14, 21, 28, 35, 42, 49, 56, 63, 70]


# --------------------------------------------------------------------------- table


def test_counterfactual_table_quantiles_treat_no_progression_as_beyond_the_horizon():
    nan = math.nan
    ttp = np.array(
        [
            [10.0, nan, 50.0],
            [20.0, nan, 10.0],
            [30.0, nan, 40.0],
            [nan, nan, 20.0],
            [nan, nan, 30.0],
        ]
    )
    drug = np.arange(15.0).reshape(5, 3)
    table = counterfactual_table(
        {"adaptive": {"ttp_days": ttp, "drug_days": drug}}, ["p1", "p2", "p3"]
    )
    assert table.shape == (3, 9)
    t = table.set_index("patient")
    # p1: sorted (10, 20, 30, inf, inf), type-7 positions 2 (median), 0.2 (q05), 3.8 (q95)
    assert t.loc["p1", "ttp_median_days"] == 30.0  # exactly on an order statistic
    assert t.loc["p1", "ttp_q05_days"] == pytest.approx(12.0)
    assert math.isnan(t.loc["p1", "ttp_q95_days"])  # beyond the horizon
    assert t.loc["p1", "p_progressed"] == 0.6
    assert t.loc["p2"][["ttp_median_days", "ttp_q05_days", "ttp_q95_days"]].isna().all()
    assert t.loc["p2", "p_progressed"] == 0.0
    # all draws progress: the ordinary quantiles
    np.testing.assert_allclose(
        t.loc["p3", ["ttp_q05_days", "ttp_median_days", "ttp_q95_days"]].to_numpy(float),
        np.quantile(ttp[:, 2], [0.05, 0.5, 0.95]),
    )
    np.testing.assert_allclose(
        t[["drug_days_q05", "drug_days_median", "drug_days_q95"]].to_numpy(float),
        np.quantile(drug, [0.05, 0.5, 0.95], axis=0).T,
    )


def test_counterfactual_table_from_simulated_draws():
    draws = {
        k: np.broadcast_to(v, (2, 3)) if v.size == 3 else np.full((2, 1), v[0])
        for k, v in PATIENTS.items()
    }
    results = {
        r: simulate_regimen(MODEL, draws, regimen=r, horizon_days=1000)
        for r in ("continuous", "adaptive")
    }
    table = counterfactual_table(results, ["a", "b", "c"])
    assert table[["patient", "regimen"]].values.tolist() == [
        [p, r] for p in "abc" for r in ("continuous", "adaptive")
    ]
    first = table.iloc[0]
    assert first["ttp_median_days"] == results["continuous"]["ttp_days"][0, 0]
