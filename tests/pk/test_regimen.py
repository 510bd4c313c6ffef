"""Population regimen API: closed-form solutions, ODE cross-checks, chunking, input errors.

Tolerances: the exact path against textbook formulas at 1e-12 relative (rounding only); the
exact path against the ODE path (rtol 1e-10) at 1e-7 relative.
"""

from __future__ import annotations

import numpy as np
import pytest

from insilico_trials.sim.pk import MODELS, PKInputError, simulate_regimen

TIMES = np.arange(0.0, 97.0, 0.5)


def _params(n: int, seed: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "CL": 1.0 * np.exp(rng.normal(0, 0.3, n)),
        "V": 20.0 * np.exp(rng.normal(0, 0.3, n)),
        "KA": 1.0 * np.exp(rng.normal(0, 0.3, n)),
    }


def test_models_list_their_parameters() -> None:
    assert MODELS["pk1cmt"].parameters == ("CL", "V", "KA")
    assert MODELS["pk2cmt"].parameters == ("CL", "V1", "Q", "V2", "KA")
    assert MODELS["pk3cmt"].parameters == ("CL", "V1", "Q2", "V2", "Q3", "V3", "KA")
    assert MODELS["pk1cmt_mm"].parameters == ("VMAX", "KM", "V", "KA")


def test_one_cmt_iv_bolus_single_dose_matches_formula() -> None:
    p = _params(5)
    c = simulate_regimen(
        "pk1cmt", p, dose_mg=100.0, interval_h=24, n_doses=1, route="iv_bolus", times_h=TIMES
    )
    k = p["CL"] / p["V"]
    expected = 100.0 / p["V"][:, None] * np.exp(-k[:, None] * TIMES)
    np.testing.assert_allclose(c, expected, rtol=1e-12)


def test_one_cmt_oral_multiple_dose_is_superposition_of_bateman() -> None:
    p = _params(4)
    dose = np.array([50.0, 100.0, 150.0, 200.0])
    c = simulate_regimen("pk1cmt", p, dose_mg=dose, interval_h=12, n_doses=5, times_h=TIMES)
    k, ka, v = p["CL"][:, None] / p["V"][:, None], p["KA"][:, None], p["V"][:, None]
    expected = np.zeros_like(c)
    for j in range(5):
        s = TIMES - 12.0 * j
        on = s >= 0  # a dose at t is applied before the observation at t
        s = np.where(on, s, 0.0)
        bateman = dose[:, None] * ka / (v * (ka - k)) * (np.exp(-k * s) - np.exp(-ka * s))
        expected += np.where(on, bateman, 0.0)
    np.testing.assert_allclose(c, expected, rtol=1e-10, atol=1e-13)


def test_one_cmt_oral_ka_equal_to_k_uses_the_limit() -> None:
    # KA == CL/V makes the Bateman formula 0/0; the limit is D/V * k t e^{-kt}.
    p = {"CL": np.array([2.0]), "V": np.array([20.0]), "KA": np.array([0.1])}
    c = simulate_regimen("pk1cmt", p, dose_mg=100.0, interval_h=24, n_doses=1, times_h=TIMES)
    expected = 100.0 / 20.0 * 0.1 * TIMES * np.exp(-0.1 * TIMES)
    np.testing.assert_allclose(c[0], expected, rtol=1e-12, atol=1e-15)


def test_one_cmt_infusion_matches_formula() -> None:
    p = _params(3)
    c = simulate_regimen(
        "pk1cmt",
        p,
        dose_mg=120.0,
        interval_h=24,
        n_doses=1,
        route="iv_infusion",
        infusion_h=2.0,
        times_h=TIMES,
    )
    cl, k = p["CL"][:, None], (p["CL"] / p["V"])[:, None]
    rate = 60.0
    during = rate / cl * (1 - np.exp(-k * np.minimum(TIMES, 2.0)))
    after = during * np.exp(-k * np.maximum(TIMES - 2.0, 0.0))
    np.testing.assert_allclose(c, after, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    ("model", "params", "route", "infusion_h"),
    [
        ("pk2cmt", {"CL": 1.0, "V1": 20.0, "Q": 2.0, "V2": 10.0, "KA": 1.0}, "oral", None),
        ("pk2cmt", {"CL": 1.0, "V1": 20.0, "Q": 2.0, "V2": 10.0, "KA": 1.0}, "iv_infusion", 30.0),
        (
            "pk3cmt",
            {"CL": 3.0, "V1": 10.0, "Q2": 5.0, "V2": 30.0, "Q3": 0.5, "V3": 100.0, "KA": 0.7},
            "iv_bolus",
            None,
        ),
        (
            "pk3cmt",
            {"CL": 3.0, "V1": 10.0, "Q2": 5.0, "V2": 30.0, "Q3": 0.5, "V3": 100.0, "KA": 0.7},
            "oral",
            None,
        ),
    ],
)
def test_exact_path_agrees_with_ode(model, params, route, infusion_h) -> None:
    rng = np.random.default_rng(11)
    p = {k: v * np.exp(rng.normal(0, 0.2, 3)) for k, v in params.items()}
    kw = {
        "dose_mg": 100.0,
        "interval_h": 12.0,
        "n_doses": 6,
        "route": route,
        "infusion_h": infusion_h,
        "times_h": TIMES,
    }
    exact = simulate_regimen(model, p, **kw)
    ode = simulate_regimen(model, p, method="ode", **kw)
    np.testing.assert_allclose(exact, ode, rtol=1e-7, atol=1e-9 * exact.max())


def test_michaelis_menten_reduces_to_linear_when_km_is_large() -> None:
    # With KM >> C, VMAX*C/(KM+C) ~ (VMAX/KM) C: compare with CL = VMAX/KM (error ~ C/KM).
    p = {
        "VMAX": np.array([1e6]),
        "KM": np.array([1e6]),
        "V": np.array([20.0]),
        "KA": np.array([1.0]),
    }
    mm = simulate_regimen("pk1cmt_mm", p, dose_mg=100.0, interval_h=24, n_doses=2, times_h=TIMES)
    lin = simulate_regimen(
        "pk1cmt",
        {"CL": np.array([1.0]), "V": np.array([20.0]), "KA": np.array([1.0])},
        dose_mg=100.0,
        interval_h=24,
        n_doses=2,
        times_h=TIMES,
    )
    np.testing.assert_allclose(mm, lin, rtol=1e-5, atol=1e-9)


def test_identical_results_for_any_chunking() -> None:
    p = _params(50, seed=5)
    kw = {"dose_mg": 100.0, "interval_h": 24.0, "n_doses": 4, "times_h": TIMES}
    whole = simulate_regimen("pk1cmt", p, **kw)
    parts = [
        simulate_regimen("pk1cmt", {k: v[a:b] for k, v in p.items()}, **kw)
        for a, b in [(0, 1), (1, 17), (17, 50)]
    ]
    assert np.array_equal(whole, np.concatenate(parts))


def test_dose_at_observation_time_is_applied_first() -> None:
    p = {"CL": np.array([1.0]), "V": np.array([10.0]), "KA": np.array([1.0])}
    c = simulate_regimen(
        "pk1cmt",
        p,
        dose_mg=100.0,
        interval_h=24,
        n_doses=1,
        route="iv_bolus",
        times_h=np.array([0.0]),
    )
    assert c[0, 0] == pytest.approx(10.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"route": "im"}, "route must be one of"),
        ({"route": "iv_infusion"}, "infusion_h must be > 0"),
        ({"dose_mg": -1.0}, "dose_mg of patient 0"),
        ({"n_doses": 2.5}, "n_doses must be"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match) -> None:
    kw = {"dose_mg": 100.0, "interval_h": 24.0, "n_doses": 2, "times_h": TIMES} | kwargs
    with pytest.raises(PKInputError, match=match):
        simulate_regimen("pk1cmt", _params(2), **kw)


def test_unknown_model_and_missing_parameter() -> None:
    with pytest.raises(PKInputError, match="unknown PK model 'pk9'"):
        simulate_regimen("pk9", {}, dose_mg=1.0, interval_h=1.0, n_doses=1, times_h=TIMES)
    with pytest.raises(PKInputError, match="missing Q, V2"):
        simulate_regimen(
            "pk2cmt",
            {"CL": [1.0], "V1": [1.0], "KA": [1.0]},
            dose_mg=1.0,
            interval_h=1.0,
            n_doses=1,
            times_h=TIMES,
        )
