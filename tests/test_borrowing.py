"""Tests for insilico_trials.borrowing.

Closed forms are checked against brute-force quadrature of prior x likelihood (independent of
the conjugate algebra); PyMC updates are checked against the closed forms within 4 Monte Carlo
standard errors (ArviZ mcse_mean). Data below are stated in each test.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from insilico_trials.infer.borrowing import (
    BorrowingError,
    beta_mixture_posterior,
    control_prior,
    ess_beta_mixture,
    ess_mixture,
    gamma_mixture_posterior,
    mixture_posterior,
    normal_mixture_posterior,
    prior_predictive_pvalue,
    robustify,
    update_control,
)
from insilico_trials.infer.conjugate import MixturePrior
from insilico_trials.infer.ess import ess


def binary_arm(x: int, n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {"arm": "control", "response": np.r_[np.ones(x), np.zeros(n - x)].astype(int)}
    )


# ----------------------------------------------------------------- closed forms vs quadrature


def _quad_moments(log_prior, log_lik, lo, hi, points=None):
    # ``points``: break points where the integrand is peaked (adaptive quad can miss a narrow peak)
    kw = {"limit": 500, "points": points}
    f = lambda t: np.exp(log_prior(t) + log_lik(t))  # noqa: E731
    z = integrate.quad(f, lo, hi, **kw)[0]
    m = integrate.quad(lambda t: t * f(t), lo, hi, **kw)[0] / z
    v = integrate.quad(lambda t: (t - m) ** 2 * f(t), lo, hi, **kw)[0] / z
    return m, v


def test_beta_mixture_posterior_matches_quadrature():
    prior = MixturePrior("beta", (0.8, 0.2), (30.0, 1.0), (70.0, 1.0))
    x, n = 18, 40
    w, a, b = beta_mixture_posterior(prior.weights, prior.a, prior.b, x, n)
    post = MixturePrior("beta", tuple(w), tuple(a), tuple(b))
    m, v = _quad_moments(
        lambda t: np.logaddexp(*prior.logpdf(np.array([t]))[0]),
        lambda t: stats.binom.logpmf(x, n, t),
        0.0,
        1.0,
    )
    assert post.mean() == pytest.approx(m, rel=1e-7)
    assert post.var() == pytest.approx(v, rel=1e-6)


def test_normal_mixture_posterior_matches_quadrature():
    prior = MixturePrior("normal", (0.7, 0.3), (-10.0, -10.0), (2.0, 15.0))
    ybar, n, sigma = -2.0, 25, 12.0
    w, mm, s = normal_mixture_posterior(prior.weights, prior.a, prior.b, ybar, n, sigma=sigma)
    post = MixturePrior("normal", tuple(w), tuple(mm), tuple(s))
    m, v = _quad_moments(
        lambda t: np.logaddexp(*prior.logpdf(np.array([t]))[0]),
        lambda t: stats.norm.logpdf(ybar, t, sigma / np.sqrt(n)),
        -100.0,
        100.0,
    )
    assert post.mean() == pytest.approx(m, rel=1e-7)
    assert post.var() == pytest.approx(v, rel=1e-6)


def test_gamma_mixture_posterior_matches_quadrature():
    prior = MixturePrior("gamma", (0.6, 0.4), (40.0, 0.05), (800.0, 1.0))
    d, e = 12, 150.0  # events, months of exposure
    w, a, b = gamma_mixture_posterior(prior.weights, prior.a, prior.b, d, e)
    post = MixturePrior("gamma", tuple(w), tuple(a), tuple(b))
    m, v = _quad_moments(
        lambda t: np.logaddexp(*prior.logpdf(np.array([t]))[0]),
        lambda t: d * np.log(t) - t * e,
        1e-9,
        1.0,
        points=[0.01, 0.05, 0.1, 0.2],
    )
    assert post.mean() == pytest.approx(m, rel=1e-6)
    assert post.var() == pytest.approx(v, rel=1e-5)


def test_sequential_conjugate_updates_equal_one_update():
    prior = robustify(MixturePrior.single("beta", 31.0, 71.0), weight=0.2)
    seq = prior
    for x, n in ((5, 20), (9, 20), (4, 20)):
        seq = mixture_posterior(seq, {"x": x, "n": n})
    once = mixture_posterior(prior, {"x": 18, "n": 60})
    np.testing.assert_allclose(seq.weights, once.weights, rtol=1e-12)
    np.testing.assert_allclose(seq.a, once.a)
    np.testing.assert_allclose(seq.b, once.b)


def test_robustify_matches_rbest_defaults():
    # RBesT robustify(betaMix, weight, mean = 1/2, n = 1) adds Beta(1, 1); normal adds
    # Normal(mean, sigma / sqrt(n)); for an exponential likelihood gamma adds Gamma(n, n / mean)
    # (RBesT mn2gamma(m, n, likelihood = "exp"): one event at the prior mean, unit-free).
    r = robustify(MixturePrior.single("beta", 30.0, 70.0), weight=0.2)
    assert r.weights == (0.8, 0.2) and r.a == (30.0, 1.0) and r.b == (70.0, 1.0)
    assert r.labels == ("informative", "vague")
    rn = robustify(MixturePrior.single("normal", -5.0, 2.0), weight=0.5, sigma=20.0)
    assert rn.a[1] == -5.0 and rn.b[1] == 20.0
    rg = robustify(MixturePrior.single("gamma", 20.0, 400.0), weight=0.1)
    assert rg.a[1] == 1.0 and rg.b[1] == pytest.approx(20.0)
    # Unit-free: the same prior with time in days instead of months (rate / 30.4375) gives
    # the same vague component in days, i.e. the same information (one event).
    rd = robustify(MixturePrior.single("gamma", 20.0, 400.0 * 30.4375), weight=0.1)
    assert rd.a[1] == 1.0 and rd.b[1] == pytest.approx(20.0 * 30.4375)
    with pytest.raises(BorrowingError, match="weight"):
        robustify(r, weight=1.5)


def test_moment_ess():
    # One Beta(a, b) component: ESS = a + b exactly; N(m, s): sigma^2 / s^2.
    assert ess_beta_mixture([1.0], [30.0], [70.0]) == pytest.approx(100.0)
    assert ess_mixture(MixturePrior.single("normal", 0.0, 2.0), sigma=20.0) == pytest.approx(100.0)
    assert ess_mixture(MixturePrior.single("gamma", 25.0, 500.0)) == pytest.approx(25.0)
    # The vague component lowers the ESS of a robust prior well below the informative 100.
    assert ess_beta_mixture([0.8, 0.2], [30.0, 1.0], [70.0, 1.0]) < 20.0


def test_power_prior_limits_and_methods():
    virtual = binary_arm(30, 100)
    none = control_prior(virtual, method="none", endpoint="binary")
    assert (none.a, none.b) == ((1.0,), (1.0,))
    p0 = control_prior(virtual, method="power", endpoint="binary", params={"a0": 0.0})
    assert (p0.a, p0.b) == ((1.0,), (1.0,))
    full = control_prior(virtual, method="full", endpoint="binary")
    assert (full.a, full.b) == ((31.0,), (71.0,))
    half = control_prior(virtual, method="power", endpoint="binary", params={"a0": 0.5})
    assert (half.a, half.b) == ((16.0,), (36.0,))
    with pytest.raises(BorrowingError, match=r"a0: must be in \[0, 1\], got 2"):
        control_prior(virtual, method="power", endpoint="binary", params={"a0": 2})
    with pytest.raises(BorrowingError, match="method"):
        update_control(virtual, [binary_arm(3, 10)], method="magic", endpoint="binary", seed=1)


def test_robust_vague_weight_falls_on_agreement_rises_on_conflict_closed_form():
    # Virtual arm: 30/100 responders -> informative Beta(31, 71), vague weight 0.2.
    prior = control_prior(
        binary_arm(30, 100), method="robust", endpoint="binary", params={"weight": 0.2}
    )
    agree = mixture_posterior(prior, {"x": 12, "n": 40})  # 30 %
    conflict = mixture_posterior(prior, {"x": 28, "n": 40})  # 70 %
    assert agree.weights[1] < 0.2
    assert conflict.weights[1] > 0.95
    # posterior follows the real data (28/40 = 0.70) under conflict
    assert abs(conflict.mean() - 0.70) < 0.03
    assert prior_predictive_pvalue(MixturePrior.single("beta", 31, 71), {"x": 28, "n": 40}) < 1e-4
    assert prior_predictive_pvalue(MixturePrior.single("beta", 31, 71), {"x": 12, "n": 40}) > 0.5


# ----------------------------------------------------------------- MCMC


def _cuts():
    # Three real-data cuts of control patients: 5/20, 7/20, 6/20 responders (18/60 = 30 %).
    cuts = []
    for i, (x, n) in enumerate(((5, 20), (7, 20), (6, 20))):
        df = binary_arm(x, n).assign(usubjid=[f"S{i}-{j}" for j in range(n)])
        df.attrs["cut_id"] = f"cut{i + 1}"
        cuts.append(df)
    return cuts


@pytest.fixture(scope="module")
def robust_sequence():
    return update_control(
        binary_arm(30, 100), _cuts(), method="robust", params={"weight": 0.2},
        endpoint="binary", seed=11, draws=1000, tune=500, engine="mcmc",
    )  # fmt: skip


@pytest.mark.slow
def test_robust_update_states_match_closed_form(robust_sequence):
    res = robust_sequence
    assert [s.cut_id for s in res.states] == ["cut1", "cut2", "cut3"]
    assert [s.n_real for s in res.states] == [20, 40, 60]
    for s in res.states:
        row = s.summary.set_index("param").loc["p_c"]
        assert abs(row["mean"] - s.closed_form.mean()) < 4 * row["mcse_mean"]
        # vague-component weight from draws vs exact: Rao-Blackwellised average, loose MC band
        assert (
            abs(s.conflict["vague_weight_posterior"] - s.conflict["vague_weight_posterior_exact"])
            < 0.02
        )
        assert s.converged, s.diagnostics
        assert s.conflict["vague_weight_posterior_exact"] < 0.2  # data agree with the virtual 30 %
        # the prior ESS is reported by ELIR (RBesT's default since 1.6)
        assert s.prior_ess == pytest.approx(ess(res.prior, method="elir"))
        assert s.borrowed_virtual > 0
    t = res.table()
    assert len(t) == 3 and {"borrowed_virtual", "conflict_prior_predictive_p"} <= set(t.columns)


@pytest.mark.slow
def test_three_cuts_equal_one_fit_on_all_data(robust_sequence):
    everything = pd.concat(_cuts(), ignore_index=True)
    one = update_control(
        binary_arm(30, 100), [everything], method="robust", params={"weight": 0.2},
        endpoint="binary", seed=12, draws=1000, tune=500, engine="mcmc",
    )  # fmt: skip
    a = robust_sequence.final.summary.set_index("param").loc["p_c"]
    b = one.final.summary.set_index("param").loc["p_c"]
    assert abs(a["mean"] - b["mean"]) < 4 * np.hypot(a["mcse_mean"], b["mcse_mean"])
    np.testing.assert_allclose(
        robust_sequence.final.closed_form.weights, one.final.closed_form.weights
    )


@pytest.mark.slow
def test_robust_conflict_mcmc_posterior_follows_real_data():
    # Real control 28/40 (70 %) against a virtual 30/100: the vague weight rises from 0.2.
    df = binary_arm(28, 40)
    res = update_control(
        binary_arm(30, 100), [df], method="robust", params={"weight": 0.2},
        endpoint="binary", seed=13, draws=1000, tune=500, engine="mcmc",
    )  # fmt: skip
    s = res.final
    assert s.conflict["vague_weight_posterior"] > 0.9
    assert abs(s.posterior_mean - 29 / 42) < 0.03  # vague-component posterior Beta(29, 13)
    assert s.conflict["prior_predictive_p"] < 1e-4
    assert s.borrowed_virtual < 5  # almost nothing borrowed under conflict


@pytest.mark.slow
def test_power_prior_continuous_known_sigma_matches_normal_normal():
    rng = np.random.default_rng(3)
    virtual = pd.DataFrame({"arm": "control", "value": rng.normal(-10, 12, 200)})
    real = pd.DataFrame({"arm": "control", "value": rng.normal(-8, 12, 40)})
    res = update_control(
        virtual, [real], method="power", params={"a0": 0.25}, endpoint="continuous",
        sigma=12.0, seed=4, draws=1000, tune=500, engine="mcmc",
    )  # fmt: skip
    s = res.final
    # prior N(m0, s0) from the power prior; posterior precision 1/s0^2 + n/sigma^2
    m0, s0 = res.prior.a[0], res.prior.b[0]
    prec = 1 / s0**2 + 40 / 144.0
    exact = (m0 / s0**2 + 40 * real["value"].mean() / 144.0) / prec
    row = s.summary.set_index("param").loc["mu_c"]
    assert abs(row["mean"] - exact) < 4 * row["mcse_mean"]
    assert s.closed_form.mean() == pytest.approx(exact)
    # prior ESS of the power prior: a0 n_v = 50 patients (plus the vague initial prior's ~0)
    assert s.prior_ess == pytest.approx(0.25 * 200, rel=1e-3)
    # borrowed: n (Var_vague / Var_borrow - 1) = a0 n_v = 50, from the exact posterior variance
    assert s.borrowed_virtual == pytest.approx(50, rel=1e-3)


@pytest.mark.slow
def test_commensurate_borrows_more_when_data_agree():
    virtual = binary_arm(30, 100)
    kw = {"method": "commensurate", "params": {"sd_scale": 0.5},
          "endpoint": "binary", "seed": 5, "draws": 1000, "tune": 1000}  # fmt: skip
    agree = update_control(virtual, [binary_arm(9, 30)], **kw).final
    conflict = update_control(virtual, [binary_arm(24, 30)], **kw).final
    assert agree.borrowed_virtual > conflict.borrowed_virtual
    # HalfNormal(sd_scale) on the sd, non-centred: both fits pass the convergence gates (the
    # precision parameterisation had 11-95 divergences under conflict)
    assert agree.converged and conflict.converged, (agree.diagnostics, conflict.diagnostics)
    assert agree.diagnostics["divergences"] == 0 and conflict.diagnostics["divergences"] == 0
    # follows the real data (25/32 = 0.78); sd ~ HalfNormal(0.5) still pulls it toward the
    # virtual 0.30 by about 0.058 (measured, seeds 5-7)
    assert abs(conflict.posterior_mean - 25 / 32) < 0.07
    assert agree.prior_ess > 0


@pytest.mark.slow
def test_procova_bayes_prognostic_score_reduces_posterior_sd():
    """The Bayesian variant (procova_bayes), not the EMA-qualified ANCOVA (infer/procova.py)."""
    # value = score + noise(sd 6), score ~ N(0, 8): rho^2 = 64 / 100, so adjusting for the score
    # leaves a residual sd of 6 and the posterior sd of mu_c is about 6 / sqrt(n) (vs 10 / sqrt(n)).
    rng = np.random.default_rng(17)
    n = 80
    score = rng.normal(0.0, 8.0, n)
    real = pd.DataFrame(
        {"arm": "control", "prognostic_score": score, "value": -10 + score + rng.normal(0, 6, n)}
    )
    virtual = pd.DataFrame({"arm": "control", "value": rng.normal(-10, 10, 300)})
    res = update_control(
        virtual,
        [real],
        method="procova_bayes",
        endpoint="continuous",
        seed=3,
        draws=1000,
        tune=500,
    )
    s = res.final
    assert s.posterior_sd == pytest.approx(6.0 / np.sqrt(n), rel=0.2)
    rho = np.corrcoef(score, real["value"])[0, 1]
    assert s.borrowed_virtual == pytest.approx(n * rho**2 / (1 - rho**2))
    assert s.borrowed_virtual > n  # rho^2 ~ 0.64: worth more than n extra patients
    assert abs(s.posterior_mean - (-10)) < 4 * 6.0 / np.sqrt(n)
    with pytest.raises(BorrowingError, match="procova"):
        update_control(virtual, [real], method="procova_bayes", endpoint="binary", seed=1)
