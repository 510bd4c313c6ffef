"""Effective sample size of mixture priors (insilico_trials.infer.ess) against RBesT.

Reference values and where they come from:

* RBesT reference manual, ``ess`` help page examples (Novartis/RBesT, ``reference/ess.md``,
  output printed by pkgdown; source ``inst/examples/ess.R``);
* RBesT vignettes "Getting started with RBesT (binary)" (``articles/introduction.md``) and
  "RBesT for a Normal Endpoint" (``articles/introduction_normal.md``): integer-rounded ESS of
  printed MAP mixtures;
* RBesT unit tests ``tests/testthat/test-utils.R``: the single-component identities (beta
  ``a + b``, normal ``sigma^2 / s^2``, gamma with exponential likelihood ``a - 1`` for ELIR and
  ``a`` for moment and rounded Morita);
* issue #15, computed with RBesT 1.6-6 by the issue author;
* exact identities: closed forms, and the predictive consistency of ELIR (Neuenschwander,
  Weber, Schmidli & O'Hagan 2020, Biometrics 76:578-587).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, special, stats

from insilico_trials.errors import InputError
from insilico_trials.infer.borrowing import ess_mixture
from insilico_trials.infer.conjugate import (
    MixturePrior,
    beta_mixture_posterior,
    gamma_mixture_posterior,
    normal_mixture_posterior,
)
from insilico_trials.infer.ess import ESS_METHODS, MORITA_S, ess, ess_morita


def mix(family, *components):
    """``mix("beta", (w, a, b), ...)``; weights renormalised (printed ones are rounded)."""
    w, a, b = (np.array(c, dtype=float) for c in zip(*components, strict=True))
    return MixturePrior(family, tuple(w / w.sum()), tuple(a), tuple(b))


# RBesT ess help-page examples (reference/ess.md)
BMIX = mix("beta", (0.2, 1, 1), (0.8, 10, 2))  # mixbeta(rob = c(0.2, 1, 1), inf = c(0.8, 10, 2))
NMIX = mix("normal", (0.5, 0, 2), (0.5, 3, 4))  # mixnorm(rob = c(0.5, 0, 2), inf = c(0.5, 3, 4))
GMIX = mix("gamma", (0.3, 20, 4), (0.7, 50, 10))  # mixgamma(rob = .., inf = ..), "exp"

# issue #15: 0.8 Beta(1 + 8, 1 + 32) + 0.2 Beta(1, 1) and 0.8 Beta(1 + 2000, 1 + 8000) + ...
ISSUE_40 = mix("beta", (0.8, 1 + 8, 1 + 32), (0.2, 1, 1))
ISSUE_10000 = mix("beta", (0.8, 1 + 2000, 1 + 8000), (0.2, 1, 1))

# "Getting started with RBesT (binary)": print(map), print(map_robust)
MAP_BINARY = [
    (0.4612914, 33.9513487, 103.0146367),
    (0.1917812, 19.4400089, 41.5205219),
    (0.1893896, 12.2692310, 55.9202833),
    (0.1575378, 2.2521243, 5.4812202),
]
MAP_BINARY_ROBUST = [
    (0.3690331, 33.9513487, 103.0146367),
    (0.1534249, 19.4400089, 41.5205219),
    (0.1515117, 12.2692310, 55.9202833),
    (0.1260303, 2.2521243, 5.4812202),
    (0.2000000, 1.0, 1.0),
]
# "RBesT for a Normal Endpoint": print(map), print(map_robust); reference scale 88
MAP_NORMAL = [
    (0.50104846, -51.42408665, 19.04525409),
    (0.41871594, -47.25917128, 7.85193726),
    (0.08023561, -55.07086416, 44.57325000),
]
MAP_NORMAL_ROBUST = [
    (0.40083877, -51.42408665, 19.04525409),
    (0.33497275, -47.25917128, 7.85193726),
    (0.06418848, -55.07086416, 44.57325000),
    (0.20000000, -50.0, 88.0),
]


# --------------------------------------------------------------------------- single components


@pytest.mark.parametrize(("a", "b"), [(5.0, 15.0), (9.0, 33.0), (1.5, 2.5), (2001.0, 8001.0)])
def test_beta_single_component_identities(a, b):
    """RBesT test-utils.R "conjugate beta case matches canonical formula": elir and moment
    a + b, round(morita) a + b; Morita exactly RBesT's closed form at the mode t = (a-1)/(a+b-2):
    (a + b) (1 - t (1 - t) / (s (a (1 - t)^2 + b t^2)))."""
    prior = MixturePrior.single("beta", a, b)
    assert ess(prior) == pytest.approx(a + b, rel=1e-12)
    assert ess(prior, method="moment") == pytest.approx(a + b, rel=1e-12)
    t = (a - 1) / (a + b - 2)
    morita = (a + b) * (1 - t * (1 - t) / (MORITA_S * (a * (1 - t) ** 2 + b * t**2)))
    assert ess(prior, method="morita") == pytest.approx(morita, rel=1e-9)
    assert round(ess(prior, method="morita")) == a + b
    assert ess_morita(prior, s=math.inf) == pytest.approx(a + b, rel=1e-9)


def test_beta_parameter_equal_to_one_contributes_no_elir():
    """ELIR integrand (a-1)(1-theta)/theta + (b-1) theta/(1-theta) (RBesT betaMixInfo times
    theta (1 - theta)): E over Beta(1, b) is (b - 1) E[theta / (1 - theta)] = 1; Beta(1, 1) is
    flat, 0. Just above 1 the exact value jumps to a + b (mass at theta < 1e-300)."""
    assert ess(MixturePrior.single("beta", 1, 1)) == pytest.approx(0.0, abs=1e-12)
    assert ess(MixturePrior.single("beta", 1, 3)) == pytest.approx(1.0, rel=1e-12)
    assert ess(MixturePrior.single("beta", 1.001, 3)) == pytest.approx(4.001, rel=1e-9)
    assert ess(MixturePrior.single("beta", 1 + 1e-6, 3)) == pytest.approx(4 + 1e-6, rel=1e-6)


@pytest.mark.parametrize(("mean", "sd", "sigma"), [(-1.0, 2.0, 4.0), (3.0, 0.5, 10.0)])
def test_normal_single_component_identities(mean, sd, sigma):
    """RBesT test-utils.R "conjugate normal case matches canonical formula": sigma^2 / s^2 for
    moment, elir and morita with s = Inf; with s = 100 Morita is (1 - 1/s) sigma^2 / s^2."""
    prior = MixturePrior.single("normal", mean, sd)
    natural = sigma**2 / sd**2
    assert ess(prior, sigma=sigma) == pytest.approx(natural, rel=1e-12)
    assert ess(prior, method="moment", sigma=sigma) == pytest.approx(natural, rel=1e-12)
    assert ess_morita(prior, sigma=sigma, s=math.inf) == pytest.approx(natural, rel=1e-9)
    got = ess(prior, method="morita", sigma=sigma)
    assert got == pytest.approx((1 - 1 / MORITA_S) * natural, rel=1e-9)


@pytest.mark.parametrize(("shape", "rate"), [(7.0, 3.0), (31.0, 120.5), (1.0, 4.0)])
def test_gamma_single_component_identities(shape, rate):
    """RBesT test-utils.R "gamma 1-component density gives canonical results", exponential
    likelihood: moment a; round(morita) a (exactly a - 1/s); "ELIR gives a-1 as ESS"."""
    prior = MixturePrior.single("gamma", shape, rate)
    assert ess(prior) == pytest.approx(shape - 1, abs=1e-10)
    assert ess(prior, method="moment") == pytest.approx(shape, rel=1e-12)
    assert ess(prior, method="morita") == pytest.approx(shape - 1 / MORITA_S, rel=1e-9)
    assert round(ess(prior, method="morita")) == shape
    assert ess_morita(prior, s=math.inf) == pytest.approx(shape, rel=1e-9)


# --------------------------------------------------------------------------- RBesT's values


def test_rbest_help_page_beta_examples():
    """RBesT reference manual, ess examples: ess(mixbeta(c(1, 5, 15))) 20;
    bmix elir 7.65152, moment 3.161034, morita 8.487603 (7 significant digits printed; RBesT
    locates the mode to 1e-4, hence Morita's looser tolerance)."""
    assert ess(MixturePrior.single("beta", 5, 15)) == pytest.approx(20, rel=1e-12)
    assert ess(BMIX, method="elir") == pytest.approx(7.65152, rel=1e-6)
    assert ess(BMIX, method="moment") == pytest.approx(3.161034, rel=1e-6)
    assert round(ess(BMIX, method="moment")) == 3
    assert ess(BMIX, method="morita") == pytest.approx(8.487603, rel=1e-5)


def test_rbest_help_page_normal_examples():
    """RBesT reference manual, ess examples: nmix with sigma 10: elir 10.82796, moment 8.163265;
    with sigma 20: elir 43.31185."""
    assert ess(NMIX, sigma=10) == pytest.approx(10.82796, rel=1e-6)
    assert ess(NMIX, method="moment", sigma=10) == pytest.approx(8.163265, rel=1e-6)
    assert ess(NMIX, sigma=20) == pytest.approx(43.31185, rel=1e-6)


def test_rbest_help_page_gamma_example_with_exponential_likelihood():
    """RBesT reference manual, ess examples: likelihood(gmix) <- "exp"; ess(gmix) 34.93388."""
    assert ess(GMIX) == pytest.approx(34.93388, rel=1e-6)


def test_rbest_vignette_binary_map_prior():
    """RBesT vignette "Getting started with RBesT (binary)": round(ess(map, method)) 38 (elir),
    24 (moment), 95 (morita); round(ess(map_robust)) 27."""
    prior = mix("beta", *MAP_BINARY)
    assert round(ess(prior, method="elir")) == 38
    assert round(ess(prior, method="moment")) == 24
    assert round(ess(prior, method="morita")) == 95
    assert round(ess(mix("beta", *MAP_BINARY_ROBUST))) == 27


def test_rbest_vignette_normal_map_prior():
    """RBesT vignette "RBesT for a Normal Endpoint" (sigma 88): round(ess(map)) 39 (elir),
    89 (morita), 21 (moment); round(ess(map_robust)) 28."""
    prior = mix("normal", *MAP_NORMAL)
    assert round(ess(prior, sigma=88)) == 39
    assert round(ess(prior, method="morita", sigma=88)) == 89
    assert round(ess(prior, method="moment", sigma=88)) == 21
    assert round(ess(mix("normal", *MAP_NORMAL_ROBUST), sigma=88)) == 28


def test_issue_15_robust_virtual_arm_priors():
    """issue #15, computed with RBesT 1.6-6: ELIR of 0.8 Beta(9, 33) + 0.2 Beta(1, 1) about 27,
    of 0.8 Beta(2001, 8001) + 0.2 Beta(1, 1) about 7,773; their moment ESS stays near 5.
    (This implementation: 27.4796 and 7772.70.)"""
    assert ess(ISSUE_40) == pytest.approx(27, abs=1)
    assert ess(ISSUE_10000) == pytest.approx(7773, rel=0.005)
    assert ess(ISSUE_40, method="moment") == pytest.approx(5, abs=0.5)
    assert ess(ISSUE_10000, method="moment") == pytest.approx(5, abs=0.5)


def test_rbest_problematic_beta_mixtures_give_finite_values():
    """RBesT test-utils.R: mixtures that broke RBesT's integration give a finite ESS >= 0."""
    constrained = mix("beta", (0.48, 1, 11), (0.34, 6.9, 173), (0.18, 1.0, 1.13))
    problematic = mix(
        "beta",
        (0.06429517, 437.32302999, 10.71709277),
        (0.03301215, 64.04211307, 2.14157953),
        (0.00269268, 5.92543558, 1.00000001),
        (0.9, 1, 1),
    )
    for prior in (constrained, problematic):
        value = ess(prior)
        assert math.isfinite(value) and value >= 0


# --------------------------------------------------------------------------- exact properties


def _elir_by_quad(prior: MixturePrior, bounds: tuple[float, float]) -> float:
    """ELIR by scipy quad on theta, i_pi by central differences of log pi (independent of the
    module's analytic derivatives)."""

    def log_pi(theta):
        return special.logsumexp(prior.logpdf(np.atleast_1d(theta)), axis=1)

    def integrand(theta):
        h = 1e-4 * min(theta, 1 - theta) if prior.family == "beta" else 1e-4 * theta
        lp = log_pi(np.array([theta - h, theta, theta + h]))
        info = -(lp[0] - 2 * lp[1] + lp[2]) / h**2
        ratio = theta * (1 - theta) if prior.family == "beta" else theta**2
        return math.exp(lp[1]) * info * ratio

    lo, hi = bounds
    a, b = np.asarray(prior.a), np.asarray(prior.b)
    dist = stats.beta(a, b) if prior.family == "beta" else stats.gamma(a, scale=1 / b)
    points = np.unique(dist.ppf(np.array([[1e-4], [0.1], [0.5], [0.9], [1 - 1e-4]])))
    points = points[(points > lo) & (points < hi)]
    value, _ = integrate.quad(integrand, lo, hi, points=points, limit=400, epsrel=1e-7, epsabs=1e-9)
    return value


@pytest.mark.parametrize(
    ("prior", "bounds"),
    [(BMIX, (0.0, 1.0)), (ISSUE_40, (0.0, 1.0)), (GMIX, (0.0, 40.0))],
    ids=["bmix", "issue-40", "gmix"],
)
def test_elir_matches_independent_quadrature(prior, bounds):
    assert ess(prior) == pytest.approx(_elir_by_quad(prior, bounds), rel=1e-6)


def test_elir_is_predictively_consistent_beta():
    """E over the prior predictive of the posterior ELIR after n Bernoulli observations is the
    prior's ELIR + n (Neuenschwander et al. 2020); exact sum over r = 0..n."""
    n = 10
    r = np.arange(n + 1)
    pmf = sum(
        w * stats.betabinom.pmf(r, n, a, b)
        for w, a, b in zip(BMIX.weights, BMIX.a, BMIX.b, strict=True)
    )
    wp, ap, bp = beta_mixture_posterior(BMIX.weights, BMIX.a, BMIX.b, r, n)
    post = [ess(MixturePrior("beta", tuple(wp[i]), tuple(ap[i]), tuple(bp[i]))) for i in r]
    assert pmf @ np.array(post) - n == pytest.approx(ess(BMIX), rel=1e-9)


def test_elir_is_predictively_consistent_normal():
    """As above, m observations with known sigma; ybar per component ~ N(m_k, s_k^2 +
    sigma^2 / m), expectation by Gauss-Hermite quadrature."""
    sigma, m = 10.0, 30
    x, h = special.roots_hermitenorm(60)
    h = h / h.sum()
    total = 0.0
    for w, mk, sk in zip(NMIX.weights, NMIX.a, NMIX.b, strict=True):
        ybar = mk + math.sqrt(sk**2 + sigma**2 / m) * x
        wp, mp, sp = normal_mixture_posterior(NMIX.weights, NMIX.a, NMIX.b, ybar, m, sigma=sigma)
        post = [
            ess(MixturePrior("normal", tuple(wp[i]), tuple(mp[i]), tuple(sp[i])), sigma=sigma)
            for i in range(len(x))
        ]
        total += w * (h @ np.array(post))
    assert total - m == pytest.approx(ess(NMIX, sigma=sigma), rel=1e-6)


def test_elir_is_predictively_consistent_gamma_exponential():
    """As above, m exponential event times (events m, exposure Y); per component
    Y / (b_k + Y) ~ Beta(m, a_k), expectation by Gauss-Jacobi quadrature."""
    m = 10
    total = 0.0
    for w, ak, bk in zip(GMIX.weights, GMIX.a, GMIX.b, strict=True):
        x, h = special.roots_jacobi(40, ak - 1, m - 1)  # (1-x)^(a-1) (1+x)^(m-1)
        v = (1 + x) / 2
        exposure = bk * v / (1 - v)
        events = np.full_like(exposure, m)
        wp, ap, bp = gamma_mixture_posterior(GMIX.weights, GMIX.a, GMIX.b, events, exposure)
        post = [
            ess(MixturePrior("gamma", tuple(wp[i]), tuple(ap[i]), tuple(bp[i])))
            for i in range(len(x))
        ]
        total += w * (h @ np.array(post)) / h.sum()
    assert total - m == pytest.approx(ess(GMIX), rel=1e-9)


@pytest.mark.parametrize(
    ("prior", "sigma"),
    [(BMIX, None), (ISSUE_40, None), (ISSUE_10000, None), (NMIX, 10.0), (GMIX, None)],
    ids=["bmix", "issue-40", "issue-10000", "nmix", "gmix"],
)
def test_moment_equals_borrowing_ess_mixture(prior, sigma):
    assert ess(prior, method="moment", sigma=sigma) == pytest.approx(
        ess_mixture(prior, sigma=sigma), rel=1e-12
    )


def test_zero_weight_components_change_nothing():
    padded = MixturePrior("beta", (0.2, 0.8, 0.0), (1.0, 10.0, 0.5), (1.0, 2.0, 0.5))
    for method in ESS_METHODS:
        assert ess(padded, method=method) == pytest.approx(ess(BMIX, method=method), rel=1e-12)


def test_morita_warns_on_a_bimodal_prior_and_uses_the_highest_mode():
    prior = mix("beta", (0.6, 10, 40), (0.4, 40, 10))
    with pytest.warns(UserWarning, match="several modes"):
        value = ess(prior, method="morita")
    assert math.isfinite(value)


def test_morita_does_not_warn_for_a_robust_prior_with_a_flat_component():
    """The Beta(1, 1) component's search interval is a plateau, not a second mode."""
    assert ess(ISSUE_10000, method="morita") > 7773  # liberal (warnings are errors here)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("sigma", [None, 0.0, -1.0, math.nan, math.inf, "ten"])
@pytest.mark.parametrize("method", ESS_METHODS)
def test_normal_prior_needs_sigma(method, sigma):
    with pytest.raises(InputError, match=r"sigma.*must be a finite number > 0, got") as info:
        ess(NMIX, method=method, sigma=sigma)
    assert info.value.where == "sigma"
    assert repr(sigma) in str(info.value)


def test_unknown_method_is_refused():
    with pytest.raises(InputError, match=r"method must be one of elir, moment, morita, got 'ehss'"):
        ess(BMIX, method="ehss")  # type: ignore[arg-type]


def test_beta_elir_refuses_parameters_below_one():
    """RBesT test-utils.R: mixbeta(c(0.95, 10, 5), c(0.05, 0.9, 2)) errors "At least one
    parameter of the beta mixtures is less than 1"; moment and Morita still work."""
    prior = mix("beta", (0.95, 10, 5), (0.05, 0.9, 2))
    with pytest.raises(InputError, match=r"a >= 1 and b >= 1.*\(0\.9, 2\.0\)"):
        ess(prior)
    assert ess(prior, method="moment") > 0
    assert ess(prior, method="morita") > 0
