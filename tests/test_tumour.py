"""Tumour models: closed forms, dosing rules, and the Zhang et al. 2017 model.

Tier 1 (closed form): every growth model against its analytic solution, rtol stated per test.
Tier 2 (published reference): the Zhang 2017 untreated ESS table shipped with the published
model script. All tests are deterministic (no seeds needed) except the keyed cohort draws.
"""

from __future__ import annotations

import numpy as np
import pytest

from insilico_trials.sim.tumour import (
    TUMOUR_MODELS,
    AdaptiveRule,
    DoseHoldRule,
    claret_ttg_days,
    simulate_tumour,
    simulate_zhang,
    simulate_zhang_trial,
    zhang_equilibrium,
    zhang_ess,
)

T = np.array([0.0, 7.0, 30.0, 100.0, 365.0])
SLD0 = np.array([20.0, 50.0, 120.0])


def test_registry_lists_every_model() -> None:
    assert set(TUMOUR_MODELS) == {
        "exponential",
        "logistic",
        "gompertz",
        "claret",
        "stein",
        "zhang2017",
    }


def test_exponential_untreated_and_constant_kill_closed_form() -> None:
    kg = np.array([0.001, 0.005, 0.01])
    y = simulate_tumour("exponential", {"SLD0": SLD0, "KG": kg}, times_days=T)
    np.testing.assert_allclose(y, SLD0[:, None] * np.exp(kg[:, None] * T), rtol=1e-12)
    grid = np.array([0.0, 400.0])
    y = simulate_tumour(
        "exponential",
        {"SLD0": SLD0, "KG": kg, "KD": 0.004},
        exposure_times_days=grid,
        exposure=np.full(2, 2.0),
        times_days=T,
    )
    np.testing.assert_allclose(y, SLD0[:, None] * np.exp((kg[:, None] - 0.008) * T), rtol=1e-12)


def test_claret_constant_exposure_closed_form() -> None:
    # ln y = ln y0 + KL t - KD E (1 - exp(-lambda t)) / lambda, t in weeks (Claret 2009 eq. 1).
    kl, kd, lam, e = np.array([0.02, 0.01, 0.03]), np.array([0.05, 0.1, 0.02]), 0.06, 1.5
    grid = np.arange(0.0, 366.0, 1.0)
    y = simulate_tumour(
        "claret",
        {"SLD0": SLD0, "KL": kl, "KD": kd, "LAMBDA": lam},
        exposure_times_days=grid,
        exposure=np.full((3, grid.size), e),
        times_days=T,
    )
    tw = T / 7.0
    exact = SLD0[:, None] * np.exp(
        kl[:, None] * tw - kd[:, None] * e * (1 - np.exp(-lam * tw)) / lam
    )
    # exact for piecewise-linear exposure: only rounding error remains
    np.testing.assert_allclose(y, exact, rtol=1e-12)
    # also with only the two end points of the exposure grid, and lambda -> 0 (series branch)
    y2 = simulate_tumour(
        "claret",
        {"SLD0": SLD0, "KL": kl, "KD": kd, "LAMBDA": 1e-9},
        exposure_times_days=np.array([0.0, 400.0]),
        exposure=np.full(2, e),
        times_days=T,
    )
    # against the lambda = 0 limit: the 1e-9 / week decay itself moves ln y by ~1e-7
    np.testing.assert_allclose(y2, SLD0[:, None] * np.exp((kl - kd * e)[:, None] * tw), rtol=1e-6)


def test_claret_exposure_stops_at_end_of_grid_and_starts_at_its_first_point() -> None:
    # E = 2 on days [14, 100], 0 elsewhere; output times off the grid and beyond it.
    kl, kd, lam = 0.02, 0.05, 0.06
    te = np.array([14.0, 50.0, 100.0])
    t = np.array([0.0, 10.0, 33.3, 77.7, 100.0, 250.0])
    y = simulate_tumour(
        "claret",
        {"SLD0": 50.0, "KL": kl, "KD": kd, "LAMBDA": lam},
        exposure_times_days=te,
        exposure=np.full(3, 2.0),
        times_days=t,
    )
    a, b = 14 / 7, np.clip(t, 14, 100) / 7
    kill = np.where(t > 14, 2.0 * (np.exp(-lam * a) - np.exp(-lam * b)) / lam, 0.0)
    np.testing.assert_allclose(y[0], 50 * np.exp(kl * t / 7 - kd * kill), rtol=1e-12)


def test_claret_untreated_is_exponential_and_ttg_matches_nadir() -> None:
    p = {"SLD0": SLD0, "KL": 0.02, "KD": 0.05, "LAMBDA": 0.06}
    y = simulate_tumour("claret", p, times_days=T)
    np.testing.assert_allclose(y, SLD0[:, None] * np.exp(0.02 * T / 7), rtol=1e-12)
    grid = np.arange(0.0, 731.0)
    y = simulate_tumour(
        "claret", p, exposure_times_days=grid, exposure=np.ones(grid.size), times_days=grid
    )
    ttg = claret_ttg_days(0.02, 0.05, 0.06, 1.0)
    assert abs(grid[np.argmin(y[0])] - ttg) <= 1.0  # ln(2.5)/0.06 weeks = 106.9 days


def test_logistic_closed_form_with_and_without_kill() -> None:
    k, r = 200.0, 0.02
    y = simulate_tumour("logistic", {"SLD0": SLD0, "KG": r, "SLDMAX": k}, times_days=T)
    exact = k / (1 + (k / SLD0[:, None] - 1) * np.exp(-r * T))
    np.testing.assert_allclose(y, exact, rtol=1e-12)
    # constant kill: dy/dt = a y - (r/K) y^2 with a = r - KD E; logistic with K' = a K / r
    kd, e = 0.005, 2.0
    a = r - kd * e
    y = simulate_tumour(
        "logistic",
        {"SLD0": SLD0, "KG": r, "SLDMAX": k, "KD": kd},
        exposure_times_days=np.array([0.0, 400.0]),
        exposure=np.full(2, e),
        times_days=T,
    )
    kp = a * k / r
    exact = kp / (1 + (kp / SLD0[:, None] - 1) * np.exp(-a * T))
    np.testing.assert_allclose(y, exact, rtol=1e-10)


def test_gompertz_closed_form_with_and_without_kill() -> None:
    k, b = 250.0, 0.01
    y = simulate_tumour("gompertz", {"SLD0": SLD0, "KG": b, "SLDMAX": k}, times_days=T)
    exact = k * np.exp(np.log(SLD0[:, None] / k) * np.exp(-b * T))
    np.testing.assert_allclose(y, exact, rtol=1e-12)
    kd, e = 0.003, 1.0
    y = simulate_tumour(
        "gompertz",
        {"SLD0": SLD0, "KG": b, "SLDMAX": k, "KD": kd},
        exposure_times_days=np.array([0.0, 400.0]),
        exposure=np.full(2, e),
        times_days=T,
    )
    u = np.log(SLD0[:, None] / k) * np.exp(-b * T) - kd * e * (1 - np.exp(-b * T)) / b
    np.testing.assert_allclose(y, k * np.exp(u), rtol=1e-10)


def test_stein_closed_form() -> None:
    g, d = np.array([0.001, 0.003, 0.0]), np.array([0.01, 0.02, 0.005])
    y = simulate_tumour("stein", {"SLD0": SLD0, "G": g, "D": d}, times_days=T)
    f = np.exp(-d[:, None] * T) + np.exp(g[:, None] * T) - 1
    np.testing.assert_allclose(y, SLD0[:, None] * f, rtol=1e-12)


def test_exposure_interpolation_and_patient_independence() -> None:
    grid = np.linspace(0, 200, 41)
    rng = np.random.default_rng(0)
    expo = rng.uniform(0, 2, (3, grid.size))
    p = {"SLD0": SLD0, "KL": 0.02, "KD": 0.05, "LAMBDA": 0.01}
    full = simulate_tumour("claret", p, exposure_times_days=grid, exposure=expo, times_days=T)
    one = simulate_tumour(
        "claret",
        {k: np.atleast_1d(v)[-1:] if np.ndim(v) else v for k, v in p.items()},
        exposure_times_days=grid,
        exposure=expo[-1:],
        times_days=T,
    )
    np.testing.assert_allclose(full[-1:], one, rtol=1e-13)


@pytest.mark.parametrize(
    ("model", "params", "match"),
    [
        ("nope", {}, "unknown 'nope'"),
        ("claret", {"SLD0": 1.0, "KL": 0.1}, "missing parameters"),
        ("claret", {"SLD0": 1.0, "KL": 0.1, "KD": 1, "LAMBDA": 1, "X": 1}, "unknown parameters"),
        ("exponential", {"SLD0": -1.0, "KG": 0.1}, "SLD0: must be > 0"),
        ("exponential", {"SLD0": [1.0, 2.0], "KG": [0.1, 0.2, 0.3]}, "differ in length"),
    ],
)
def test_bad_input_names_the_problem(model: str, params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        simulate_tumour(model, params, times_days=T)


def test_adaptive_rule_truth_table() -> None:
    rule = AdaptiveRule("PSA", 0.5, 1.0, 28)
    on = np.array([True, True, False, False])
    psa = np.array([0.4, 0.6, 0.99, 1.0])
    np.testing.assert_array_equal(rule.apply(on, psa, np.ones(4)), [False, True, False, True])
    with pytest.raises(ValueError, match="stop_below_fraction"):
        AdaptiveRule("PSA", 0.8, 0.5)


def test_dose_hold_rule_holds_reduces_and_discontinues() -> None:
    rule = DoseHoldRule("ANC", hold_below=1.0, resume_at=1.5, reduce_factor=0.75, min_factor=0.5)
    level, held = np.ones(3), np.zeros(3, dtype=bool)
    level, held = rule.apply(level, held, np.array([0.8, 1.2, 2.0]))
    np.testing.assert_array_equal(held, [True, False, False])
    level, held = rule.apply(level, held, np.array([1.6, 1.2, 2.0]))
    np.testing.assert_allclose(level, [0.75, 1.0, 1.0])
    assert not held.any()
    # a second hold and a third take the first patient below min_factor: discontinued
    for anc in (0.5, 1.6, 0.5, 1.6):
        level, held = rule.apply(level, held, np.array([anc, 2.0, 2.0]))
    assert level[0] == 0.0


# The untreated ESS table (T+, TP, T-, PSA) shipped with the published Zhang 2017 script:
# Abiraterone_Main.m line 5 (github.com/cunninghamjj/Integrating-evolutionary-dynamics-into-
# treatment-of-mCRPC, commit c38b7e4), all 22 rows, copied here independently of the module.
ZHANG_ESS_PUBLISHED = [
    (3196.34703196346, 7077.62557077625, 2739.72602739727, 26027.3972602740),
    (5607.47663551401, 7476.63551401869, 467.289719626177, 27102.8037383178),
    (1.0e-09, 4545.45454545455, 6818.18181818182, 22727.2727272727),
    (2786.37770897833, 6501.54798761610, 3405.57275541796, 25386.9969040248),
    (6270.62706270627, 7260.72607260726, 330.033003300335, 27722.7722772277),
    (5140.18691588785, 7476.63551401869, 934.579439252341, 27102.8037383178),
    (6060.60606060606, 7575.75757575758, 1.0e-09, 27272.7272727273),
    (6617.64705882353, 7352.94117647059, 1.0e-09, 27941.1764705882),
    (6617.64705882353, 7352.94117647059, 1.0e-09, 27941.1764705882),
    (6617.64705882353, 7352.94117647059, 1.0e-09, 27941.1764705882),
    (1.0e-09, 4545.45454545455, 6818.18181818182, 22727.2727272727),
    (7141.90425687459, 7142.65465924746, 0.833764523678801, 28570.7853484204),
    (7142.85714285714, 7142.85714285714, 1.0e-09, 28571.4285714286),
    (7142.85714285714, 7142.85714285714, 1.0e-09, 28571.4285714286),
    (7142.85714285714, 7142.85714285714, 1.0e-09, 28571.4285714286),
    (7142.85714285714, 7142.85714285714, 1.0e-09, 28571.4285714286),
    (1.0e-09, 4545.45454545455, 6818.18181818182, 22727.2727272727),
    (4310.34482758620, 6034.48275862069, 2586.20689655173, 25862.0689655172),
    (7096.77419354839, 6451.61290322581, 1.0e-09, 27096.7741935484),
    (7096.77419354839, 6451.61290322581, 1.0e-09, 27096.7741935484),
    (7096.77419354839, 6451.61290322581, 1.0e-09, 27096.7741935484),
    (7096.77419354839, 6451.61290322581, 1.0e-09, 27096.7741935484),
]


def test_zhang_model_starts_from_the_published_table_in_all_22_rows() -> None:
    table = np.array(ZHANG_ESS_PUBLISHED)
    np.testing.assert_array_equal(zhang_ess(), table)
    # The simulation starts at 40% of the row, and treats from 80% of its PSA.
    res = simulate_zhang(np.arange(22), strategy="none", horizon_days=1)
    start = res["baseline_psa"]
    assert np.all(start >= 0.8 * table[:, 3])
    # Row 12: the published T- = 0.8338 (not the exact boundary state's 0) is used; with the
    # table, continuous dosing reaches 90% T- after 781 steps on drug, as in the script (its
    # drug flag from index 755 governs steps 754 on; 90% T- at index 1535, after step 1534);
    # from the exact boundary state it would take 3,773.
    cont = simulate_zhang(np.array([11]), strategy="continuous", horizon_days=2000)
    assert cont["resistance_days"][0] == 781
    assert cont["x"][0, 2, 0] > 0.3  # T- is not at the 1e-9 floor before treatment


def test_zhang_equilibrium_checks_the_table_and_names_row_12() -> None:
    table = np.array(ZHANG_ESS_PUBLISHED)
    eq = zhang_equilibrium()
    rel = np.max(np.abs(eq - table) / np.abs(table), axis=1)
    others = np.delete(np.arange(22), 11)
    assert np.all(rel[others] < 1e-12)
    # Row 12 (1-based): the table's T- = 0.8338 is an unconverged numerical value; the exact
    # boundary equilibrium has T- = 0 (floored at 1e-9), and T+ and TP at 7142.857 each.
    assert eq[11, 2] == 1e-9
    np.testing.assert_allclose(eq[11, :2], [7142.85714285714, 7142.85714285714], rtol=1e-12)


def test_zhang_untreated_stays_at_ess_and_continuous_selects_t_minus() -> None:
    res = simulate_zhang(np.array([0]), strategy="none", horizon_days=20000)
    ess = zhang_ess(index=np.array([0]))[0]
    np.testing.assert_allclose(res["x"][0, :, -1], ess[:3], rtol=0.05)
    cont = simulate_zhang(np.array([0]), strategy="continuous", horizon_days=1000)
    x = cont["x"][0, :, -1]
    assert x[2] / x.sum() > 0.99  # competitive release of T- under abiraterone
    assert cont["on"][0, :-1].all()


def test_zhang_adaptive_rule_stops_and_resumes_at_visits() -> None:
    res = simulate_zhang(np.array([6]), strategy="adaptive", horizon_days=3650)
    on, psa, base = res["on"][0], res["psa"][0], res["baseline_psa"][0]
    switches = np.nonzero(np.diff(on.astype(int)))[0] + 1
    assert switches.size >= 2
    # on[d] is the state from day d to d + 1: decided at the visit on day d, from its PSA
    assert np.all(switches % 28 == 0)
    assert psa[switches[0]] < 0.5 * base
    assert psa[switches[1]] >= base
    assert 0 < res["drug_days"][0] < 3650


def test_zhang_trial_is_paired_keyed_and_reports_exposure() -> None:
    a = simulate_zhang_trial(60, seed=5, strategy="continuous", horizon_days=1500)
    b = simulate_zhang_trial(60, seed=5, strategy="adaptive", horizon_days=1500)
    np.testing.assert_array_equal(a["matrix_row"], b["matrix_row"])
    assert (a["drug_fraction"] == 1.0).all()
    assert (b["drug_fraction"] <= 1.0).all() and b["drug_fraction"].mean() < 1.0
    c = simulate_zhang_trial(60, seed=6, strategy="continuous", horizon_days=1500)
    assert not np.array_equal(a["matrix_row"], c["matrix_row"])


def test_simulate_tumour_zhang_schedule_equals_continuous() -> None:
    days = np.arange(0.0, 301.0)
    psa = simulate_tumour(
        "zhang2017",
        {"MATRIX": [0, 6]},
        exposure_times_days=days,
        exposure=np.ones(days.size),
        times_days=np.array([0.0, 100.0, 300.0]),
    )
    ref = simulate_zhang(np.array([0, 6]), strategy="continuous", horizon_days=300)
    np.testing.assert_allclose(psa, ref["psa"][:, [0, 100, 300]], rtol=1e-12)


def test_apply_dose_rule_holds_and_resumes_inside_the_simulation() -> None:
    from insilico_trials.sim.tumour import apply_dose_rule

    # Toy marker with a known answer: ANC = 2 - 0.1 x (exposure summed over the last 7 days).
    def anc(t: np.ndarray, e: np.ndarray) -> np.ndarray:
        c = np.cumsum(e, axis=1)
        lagged = np.concatenate([np.zeros((e.shape[0], 7)), c[:, :-7]], axis=1)
        return 2.0 - 0.1 * (c - lagged)

    days = np.arange(0.0, 57.0)
    expo = np.vstack([np.full(days.size, 1.0), np.full(days.size, 2.0)])
    rule = DoseHoldRule("ANC", hold_below=1.0, resume_at=1.5, reduce_factor=0.5, min_factor=0.25)
    adj, factor = apply_dose_rule(rule, days, expo, marker=anc)
    # patient 0: weekly sum 7 -> ANC 1.3, never held
    assert (factor[0] == 1).all()
    # patient 1: ANC 0.6 at day 7 -> held; by day 14 ANC back to 2 -> resumes at half dose
    np.testing.assert_array_equal(factor[1, [6, 7, 13, 14]], [1.0, 0.0, 0.0, 0.5])
    np.testing.assert_allclose(adj, expo * factor)
