"""Tests for insilico_trials.outcomes.

Tiers: closed-form posteriors (conjugate beta-binomial, normal-normal with known sigma) that the
PyMC fit must match within Monte Carlo error (tolerance: 4 Monte Carlo standard errors, MCSE
from ArviZ for means, sqrt(p (1 - p) / ESS_bulk) for probabilities); reruns for bit-identity;
data validation without MCMC. MCMC tests are marked slow and share session fixtures so each
model structure is compiled once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import integrate, stats

from insilico_trials.infer.conjugate import MixturePrior, mixture_component_weights
from insilico_trials.infer.outcomes import ConvergenceGates, OutcomeDataError, fit_outcome
from insilico_trials.infer.outcomes import _gates as gates_of  # unit-tested without sampling

# 12/40 responders on control, 20/40 on treatment.
X_C, N_C, X_T, N_T = 12, 40, 20, 40


def binary_data() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "arm": ["control"] * N_C + ["treatment"] * N_T,
            "response": np.r_[
                np.ones(X_C), np.zeros(N_C - X_C), np.ones(X_T), np.zeros(N_T - X_T)
            ].astype(int),
        }
    )


@pytest.fixture(scope="session")
def binary_fit():
    return fit_outcome(
        binary_data(),
        "binary",
        decision={"quantity": "rate_difference", "delta": 0.0, "threshold": 0.9},
        draws=1000,
        tune=500,
        chains=2,
        seed=7,
    )


def _mc_tol(fit, param: str) -> float:
    row = fit.summary.set_index("param").loc[param]
    return 4.0 * float(row["mcse_mean"])


@pytest.mark.slow
def test_binary_matches_conjugate_beta_posteriors(binary_fit):
    # Vague Beta(1, 1) priors: p_c | data ~ Beta(1 + 12, 1 + 28), p_t | data ~ Beta(1 + 20, 1 + 20).
    post_c = stats.beta(1 + X_C, 1 + N_C - X_C)
    post_t = stats.beta(1 + X_T, 1 + N_T - X_T)
    s = binary_fit.summary.set_index("param")
    assert abs(s.loc["p_c", "mean"] - post_c.mean()) < _mc_tol(binary_fit, "p_c")
    assert abs(s.loc["p_t", "mean"] - post_t.mean()) < _mc_tol(binary_fit, "p_t")
    # P(p_t - p_c > 0) = integral f_c(x) (1 - F_t(x)) dx
    exact, _ = integrate.quad(lambda x: post_c.pdf(x) * post_t.sf(x), 0.0, 1.0)
    ess = s.loc["rate_difference", "ess_bulk"]
    assert abs(binary_fit.probability - exact) < 4.0 * np.sqrt(exact * (1 - exact) / ess)
    # 95 % equal-tailed interval of p_c within a loose MC band (quantiles are noisier than means)
    assert abs(s.loc["p_c", "eti_2.5%"] - post_c.ppf(0.025)) < 0.02
    assert abs(s.loc["p_c", "eti_97.5%"] - post_c.ppf(0.975)) < 0.02


@pytest.mark.slow
def test_binary_fit_gates_decision_and_summary_shape(binary_fit):
    fit = binary_fit
    assert list(fit.summary.columns) == [
        "param", "mean", "sd", "eti_2.5%", "eti_97.5%", "r_hat", "ess_bulk", "ess_tail", "mcse_mean",
    ]  # fmt: skip
    assert set(fit.summary["param"]) >= {"p_c", "p_t", "rate_difference", "odds_ratio"}
    assert fit.converged, fit.diagnostics
    assert fit.diagnostics["divergences"] == 0
    # exact P is about 0.96 > 0.9
    assert fit.decision == ("go" if fit.probability > 0.9 else "no-go")
    assert fit.decision == "go"


@pytest.mark.slow
def test_same_seed_is_bit_identical_and_other_seed_differs(binary_fit):
    again = fit_outcome(
        binary_data(),
        "binary",
        decision={"quantity": "rate_difference", "delta": 0.0, "threshold": 0.9},
        draws=1000,
        tune=500,
        chains=2,
        seed=7,
    )
    pd.testing.assert_frame_equal(binary_fit.summary, again.summary, check_exact=True)
    assert binary_fit.probability == again.probability
    other = fit_outcome(binary_data(), "binary", draws=1000, tune=500, chains=2, seed=8)
    assert not np.array_equal(other.draws("p_c"), binary_fit.draws("p_c"))


@pytest.mark.slow
def test_failed_gates_withhold_the_decision():
    # 2 chains x 50 draws cannot reach a bulk ESS of 400.
    fit = fit_outcome(binary_data(), "binary", draws=50, tune=200, chains=2, seed=3)
    assert not fit.converged
    assert any(f.startswith("ess_bulk") for f in fit.diagnostics["failed"])
    assert fit.decision == "not reported (convergence failed)"
    assert 0.0 <= fit.probability <= 1.0  # still computed, for the archive, but not a result


@pytest.mark.slow
def test_inference_data_round_trip(binary_fit, tmp_path):
    """The archive's posterior.nc writer keeps the draws and the sample statistics."""
    from insilico_trials.io.outputs import write_inference_data

    path = tmp_path / "fit.nc"
    write_inference_data(binary_fit.idata, path)
    with xr.open_datatree(path) as tree:
        np.testing.assert_array_equal(
            tree["posterior"]["p_c"].values, binary_fit.idata["posterior"]["p_c"].values
        )
        assert "sample_stats" in tree.children


@pytest.mark.slow
def test_continuous_known_sigma_matches_normal_normal():
    # y ~ Normal(mu_arm, sigma=10) with prior mu_c ~ Normal(0, 20): posterior precision
    # 1/20^2 + n/10^2, mean (0/20^2 + n ybar/10^2) / precision (standard normal-normal update).
    rng = np.random.default_rng(11)
    yc = rng.normal(-10.0, 10.0, 30)
    yt = rng.normal(-25.0, 10.0, 30)
    df = pd.DataFrame({"arm": ["control"] * 30 + ["treatment"] * 30, "value": np.r_[yc, yt]})
    prior = MixturePrior.single("normal", 0.0, 20.0)
    fit = fit_outcome(
        df, "continuous", prior=prior, sigma=10.0, draws=1000, tune=500, seed=5,
        decision={"quantity": "mean_difference", "delta": 0.0, "direction": "less"},
    )  # fmt: skip
    prec = 1 / 20.0**2 + 30 / 10.0**2
    mean_c = (30 * yc.mean() / 10.0**2) / prec
    s = fit.summary.set_index("param")
    assert abs(s.loc["mu_c", "mean"] - mean_c) < _mc_tol(fit, "mu_c")
    assert abs(s.loc["mu_c", "sd"] - prec**-0.5) < 0.1 * prec**-0.5
    # mu_t has the vague Normal(0, 1000) prior: effectively ybar_t
    prec_t = 1 / 1000.0**2 + 30 / 10.0**2
    assert abs(s.loc["mu_t", "mean"] - (30 * yt.mean() / 100) / prec_t) < _mc_tol(fit, "mu_t")
    assert fit.converged, fit.diagnostics
    assert fit.decision == "go"


@pytest.mark.slow
def test_continuous_baseline_covariate_recovers_effect():
    rng = np.random.default_rng(12)
    n = 60
    baseline = rng.normal(50.0, 15.0, 2 * n)
    arm = np.repeat(["control", "treatment"], n)
    value = (
        5.0
        + np.where(arm == "treatment", -20.0, 0.0)
        + 0.8 * (baseline - 50)
        + rng.normal(0, 5, 2 * n)
    )
    df = pd.DataFrame({"arm": arm, "value": value, "baseline": baseline})
    fit = fit_outcome(df, "continuous", covariates=["baseline"], draws=500, tune=500, seed=2)
    s = fit.summary.set_index("param")
    lo, hi = s.loc["mean_difference", ["eti_2.5%", "eti_97.5%"]]
    assert lo < -20.0 < hi
    assert fit.converged, fit.diagnostics


def _weibull_data(rng, n, lam, k, hr, censor_months):
    arm = np.repeat(["control", "treatment"], n)
    scale = lam * np.where(arm == "treatment", hr, 1.0)
    # S(t) = exp(-scale t^k)  =>  t = (-log U / scale)^(1/k)
    t = (-np.log(rng.uniform(size=2 * n)) / scale) ** (1 / k)
    c = rng.uniform(0, censor_months, 2 * n)
    time = np.minimum(t, c)
    return pd.DataFrame({"arm": arm, "time": time * 30.4375, "event": (t <= c).astype(int)})


@pytest.mark.slow
def test_weibull_recovers_hazard_ratio():
    rng = np.random.default_rng(21)
    df = _weibull_data(rng, 150, lam=0.05, k=1.3, hr=0.5, censor_months=24)
    fit = fit_outcome(df, "tte_weibull", draws=500, tune=500, seed=4)
    s = fit.summary.set_index("param")
    assert s.loc["hazard_ratio", "eti_2.5%"] < 0.5 < s.loc["hazard_ratio", "eti_97.5%"]
    assert s.loc["k", "eti_2.5%"] < 1.3 < s.loc["k", "eti_97.5%"]
    assert fit.converged, fit.diagnostics
    assert fit.decision == "go"


@pytest.mark.slow
def test_pwexp_exponential_control_matches_gamma_posterior():
    # Exponential data, control-only, one piece: lambda | d, E ~ Gamma(1 + d, 0.01 + E)
    # (prior Gamma(1, 0.01), conjugate to the exponential likelihood).
    rng = np.random.default_rng(31)
    t = rng.exponential(1 / 0.08, 80)
    c = rng.uniform(0, 18, 80)
    df = pd.DataFrame(
        {"arm": "control", "time": np.minimum(t, c) * 30.4375, "event": (t <= c).astype(int)}
    )
    fit = fit_outcome(df, "tte_pwexp", cuts_months=[0.0], draws=1000, tune=500, seed=6)
    d, e = df["event"].sum(), (df["time"] / 30.4375).sum()
    s = fit.summary.set_index("param")
    assert abs(s.loc["lambda_c[0]", "mean"] - (1 + d) / (0.01 + e)) < _mc_tol(fit, "lambda_c[0]")
    assert fit.decision == "not reported (no treatment arm)"


# ----------------------------------------------------------------- no MCMC below


def test_bad_response_names_row_column_value():
    df = binary_data()
    df.loc[5, "response"] = 2
    with pytest.raises(OutcomeDataError, match=r"data\['response'\] row 5: must be 0 or 1, got 2"):
        fit_outcome(df, "binary")


def test_bad_arm_and_missing_columns_and_quantity():
    df = binary_data()
    df.loc[3, "arm"] = "placebo"
    with pytest.raises(OutcomeDataError, match=r"data\['arm'\] row 3: .*'placebo'"):
        fit_outcome(df, "binary")
    with pytest.raises(OutcomeDataError, match="missing column"):
        fit_outcome(binary_data(), "tte_weibull")
    with pytest.raises(OutcomeDataError, match=r"decision\.quantity"):
        fit_outcome(binary_data(), "binary", decision={"quantity": "hazard_ratio"})
    with pytest.raises(OutcomeDataError, match=r"prior\.family"):
        fit_outcome(binary_data(), "binary", prior=MixturePrior.single("normal", 0, 1))


def test_negative_time_rejected():
    df = pd.DataFrame({"arm": ["control", "control"], "time": [10.0, -1.0], "event": [1, 0]})
    with pytest.raises(OutcomeDataError, match=r"data\['time'\] row 1: must be a time in days > 0"):
        fit_outcome(df, "tte_weibull")


def test_gates_flag_each_failure():
    s = pd.DataFrame(
        {"r_hat": [1.0, 1.02], "ess_bulk": [1000.0, 399.0], "ess_tail": [500.0, np.nan]}
    )
    diag = gates_of(s, 3, ConvergenceGates())
    assert [f.split()[0] for f in diag["failed"]] == [
        "r_hat",
        "ess_bulk",
        "ess_tail",
        "divergences",
    ]
    ok = gates_of(s.iloc[:1], 0, ConvergenceGates())
    assert ok["failed"] == []


def test_mixture_component_weights_reduces_to_bayes_rule():
    # Draws all at theta = 0.3: the weight of component k is w_k f_k(0.3) / sum_j w_j f_j(0.3).
    prior = MixturePrior("beta", (0.7, 0.3), (30.0, 1.0), (70.0, 1.0))
    f = np.array([stats.beta.pdf(0.3, 30, 70), 1.0]) * np.array([0.7, 0.3])
    np.testing.assert_allclose(mixture_component_weights(prior, np.full(10, 0.3)), f / f.sum())


def test_mixture_prior_validation():
    with pytest.raises(ValueError, match="sum to 1"):
        MixturePrior("beta", (0.5, 0.6), (1.0, 1.0), (1.0, 1.0))
    with pytest.raises(ValueError, match="must be > 0"):
        MixturePrior("gamma", (1.0,), (0.0,), (1.0,))


@pytest.mark.slow  # real NUTS sampling, four seeds per size
@pytest.mark.parametrize("n", [1000, 100_000])
def test_binary_fit_without_control_responders_does_not_diverge(n):
    """0 control responders (an untreated arm whose tumours grow): the log-odds posterior has a
    steep wall; at the default target acceptance of 0.8 seeds 0 and 9 (n=1,000) and 3, 5, 7, 8,
    9 (n=100,000) gave divergent transitions and failed the convergence gate."""
    from insilico_trials.infer.outcomes import fit_outcome

    treated = int(0.385 * n)
    data = pd.DataFrame(
        {"arm": ["control"] * n + ["treatment"] * n,
         "response": np.r_[np.zeros(n), np.zeros(n - treated), np.ones(treated)].astype(int)}
    )  # fmt: skip
    for seed in (0, 3, 5, 9):
        fit = fit_outcome(
            data, "binary", decision={"quantity": "rate_difference", "delta": 0.1, "threshold": 0.9},
            draws=1000, tune=1000, chains=2, seed=seed,
        )  # fmt: skip
        assert fit.diagnostics["divergences"] == 0, (seed, fit.diagnostics)
        assert fit.converged and fit.decision == "go"


def test_every_outcome_family_has_one_likelihood():
    """A family is a catalog row (spec) and its likelihood (infer): neither without the other."""
    from insilico_trials.infer.outcomes import LIKELIHOODS
    from insilico_trials.spec.catalog import OUTCOME_FAMILIES

    assert set(LIKELIHOODS) == set(OUTCOME_FAMILIES)
