"""The decision engine's exact kernels (``infer/decision.py``) against independent answers.

References: adaptive quadrature (``scipy.integrate.quad``) of the same integral, direct Monte
Carlo from the conjugate posteriors (2,000,000 draws; tolerances of 5 Monte Carlo standard
errors), and the design's lattice table (the same model on every count).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from insilico_trials.infer import borrowing, design
from insilico_trials.infer.conjugate import MixturePrior
from insilico_trials.infer.decision import (
    binary_effect,
    exact_effect_refusal,
    hybrid_effect,
    tte_exponential_effect,
)

ROBUST = borrowing.robustify(MixturePrior.single("beta", 41, 161), weight=0.2)


def _mc_difference(prior, xc, nc, xt, nt, size=2_000_000, seed=1):
    rng = np.random.default_rng(seed)
    w, a, b = borrowing.beta_mixture_posterior(prior.weights, prior.a, prior.b, xc, nc)
    k = rng.choice(len(w), p=np.asarray(w) / np.sum(w), size=size)
    pc = rng.beta(np.asarray(a)[k], np.asarray(b)[k])
    pt = rng.beta(1 + xt, 1 + nt - xt, size=size)
    return pt - pc


@pytest.mark.parametrize(
    ("xc", "nc", "xt", "nt", "delta"),
    [(4, 20, 9, 25, 0.05), (0, 3, 2, 2, 0.0), (10, 40, 3, 40, -0.1), (20, 20, 25, 25, 0.05)],
)
def test_binary_effect_equals_quadrature_and_the_design_table(xc, nc, xt, nt, delta):
    prob, mean, _ = binary_effect(ROBUST, xc, nc, xt, nt, delta=delta)
    w, a, b = borrowing.beta_mixture_posterior(ROBUST.weights, ROBUST.a, ROBUST.b, xc, nc)
    ref = sum(
        wk * integrate.quad(
            lambda p, ak=ak, bk=bk: stats.beta.pdf(p, ak, bk)
            * stats.beta.sf(min(max(p + delta, 0.0), 1.0), 1 + xt, 1 + nt - xt),
            0, 1, epsabs=1e-13, limit=400,
        )[0]
        for wk, ak, bk in zip(w, a, b, strict=True)
    )  # fmt: skip
    assert prob == pytest.approx(ref, abs=1e-9)
    table, means = design.binary_decision_table(ROBUST, nc, nt, delta=delta, nodes=2000)
    assert prob == pytest.approx(table[xc, xt], abs=1e-8)
    assert mean == pytest.approx(means[xc, xt], abs=1e-12)


@pytest.mark.parametrize(
    ("xc", "nc", "xt", "nt"),
    # large arms (narrow posteriors), prior-data conflict (the vague component takes over),
    # and a small control arm against a large treatment arm (the narrower side switches)
    [(1200, 5000, 1500, 5000), (30, 40, 12, 40), (2, 6, 3000, 10000)],
)
def test_binary_effect_and_interval_equal_monte_carlo(xc, nc, xt, nt):
    d = _mc_difference(ROBUST, xc, nc, xt, nt)
    for delta in (0.0, 0.05):
        prob, mean, ci = binary_effect(ROBUST, xc, nc, xt, nt, delta=delta)
        p_mc = float((d > delta).mean())
        se = math.sqrt(max(p_mc * (1 - p_mc), 1e-12) / d.size)
        assert abs(prob - p_mc) < 5 * se + 1e-6
    assert mean == pytest.approx(d.mean(), abs=5 * d.std() / math.sqrt(d.size))
    q = np.quantile(d, [0.025, 0.975])
    # quantile MC error: about sd * 1.6 / sqrt(n) at these tails
    assert np.allclose(ci, q, atol=8 * d.std() / math.sqrt(d.size) + 1e-6)


def test_binary_direction_less_is_the_complement():
    p_gt, _, _ = binary_effect(ROBUST, 4, 20, 9, 25, delta=0.05)
    p_lt, _, _ = binary_effect(ROBUST, 4, 20, 9, 25, delta=0.05, direction="less")
    assert p_gt + p_lt == pytest.approx(1.0, abs=1e-12)


def test_tte_exponential_effect_equals_brute_force_integration():
    """Same density as tests/test_design.py's check of TteLogHrPosterior: a 4,000,001-point
    trapezoid on [-20, 20]; the hazard ratio's mean E[exp(beta)] and its 2.5/97.5 % points."""
    from scipy import special

    prior = MixturePrior("gamma", (0.8, 0.2), (30.0, 1.0), (300.0, 10.0))
    beta = np.linspace(-20, 20, 4_000_001)
    dc, ec, dt, et = 12, 80.0, 6, 90.0
    terms = [
        math.log(w) + a * math.log(b) + special.gammaln(a + dc + dt) - special.gammaln(a)
        - (a + dc + dt) * np.log(b + ec + np.exp(beta) * et)
        for w, a, b in zip(prior.weights, prior.a, prior.b, strict=True)
    ]  # fmt: skip
    lf = -0.5 * (beta / 2.5) ** 2 + beta * dt + np.logaddexp(*terms)
    f = np.exp(lf - lf.max())
    f /= np.trapezoid(f, beta)
    cdf = np.cumsum(f) * (beta[1] - beta[0])
    prob, mean, ci = tte_exponential_effect(prior, dc, ec, dt, et, delta=0.8)
    assert prob == pytest.approx(np.trapezoid(f * (beta < math.log(0.8)), beta), abs=3e-6)
    assert mean == pytest.approx(np.trapezoid(f * np.exp(beta), beta), rel=1e-6)
    lo, hi = beta[np.searchsorted(cdf, 0.025)], beta[np.searchsorted(cdf, 0.975)]
    assert ci == pytest.approx((math.exp(lo), math.exp(hi)), rel=1e-4)


def test_closed_form_is_refused_where_there_is_none():
    assert exact_effect_refusal("binary", ROBUST, ()) is None
    assert exact_effect_refusal("tte_exponential", ROBUST, ()) is None
    assert "MCMC" in exact_effect_refusal("tte_weibull", ROBUST, ())
    assert "covariates" in exact_effect_refusal("binary", ROBUST, ("AGE",))
    assert "commensurate" in exact_effect_refusal("binary", None, ())


@pytest.mark.slow
def test_hybrid_effect_closed_form_equals_the_runs_mcmc_analysis():
    """The update's exact effect equals the run's own PyMC analysis (analyse_frame, nutpie) of
    the same real patients with the same prior, within Monte Carlo error."""
    from insilico_trials.spec.protocol import load_protocol
    from tests.conftest import ROOT

    protocol = load_protocol(ROOT / "protocols" / "onc_phase2_orr.yaml")
    protocol = protocol.model_copy(
        update={"analysis": protocol.analysis.model_copy(
            update={"mcmc": protocol.analysis.mcmc.model_copy(update={"draws": 4000})}
        )}
    )  # fmt: skip
    control, treatment = protocol.control_arm.name, protocol.treatment_arms[0].name
    frame = pd.DataFrame(
        {"arm": [control] * 30 + [treatment] * 30,
         "response": [1] * 7 + [0] * 23 + [1] * 13 + [0] * 17}
    )  # fmt: skip
    exact = hybrid_effect(protocol, frame, ROBUST, treatment=treatment, engine="closed_form")
    mcmc = hybrid_effect(protocol, frame, ROBUST, treatment=treatment, engine="mcmc")
    assert exact.engine == "closed_form" and mcmc.engine == "mcmc" and mcmc.converged
    assert abs(exact.probability - mcmc.probability) < 5 * mcmc.probability_mcse + 1e-3
    assert exact.mean == pytest.approx(mcmc.mean, abs=0.01)
    assert exact.decision == mcmc.decision


@pytest.mark.parametrize(
    ("xc", "nc", "xt", "nt", "final"), [(3, 10, 5, 10, (30, 30)), (8, 20, 4, 15, (40, 40))]
)
def test_predictive_success_equals_brute_force_simulation_of_the_remaining_trial(
    xc, nc, xt, nt, final
):
    """Simulate the rest of the trial directly: draw p_c from its beta-mixture posterior and
    p_t from its beta posterior, the remaining patients' responders from binomials, and apply
    the final analysis (its exact probability, from the design table) to the final counts."""
    from insilico_trials.infer.decision import binary_predictive_success

    fc, ft = final
    table = binary_predictive_success(ROBUST, nc, nt, fc, ft, delta=0.05, success_threshold=0.9)
    final_prob, _ = design.binary_decision_table(ROBUST, fc, ft, delta=0.05, nodes=2000)
    rng = np.random.default_rng(7)
    size = 400_000
    w, a, b = borrowing.beta_mixture_posterior(ROBUST.weights, ROBUST.a, ROBUST.b, xc, nc)
    k = rng.choice(len(w), p=np.asarray(w) / np.sum(w), size=size)
    pc = rng.beta(np.asarray(a)[k], np.asarray(b)[k])
    pt = rng.beta(1 + xt, 1 + nt - xt, size=size)
    yc = xc + rng.binomial(fc - nc, pc)
    yt = xt + rng.binomial(ft - nt, pt)
    success = final_prob[yc, yt] > 0.9
    p_mc = success.mean()
    se = math.sqrt(p_mc * (1 - p_mc) / size)
    assert abs(table[xc, xt] - p_mc) < 5 * se
    # At the final sizes the predictive probability is the final verdict itself.
    at_final = binary_predictive_success(ROBUST, fc, ft, fc, ft, delta=0.05, success_threshold=0.9)
    np.testing.assert_allclose(at_final, (final_prob > 0.9).astype(float), atol=1e-12)


def test_sequential_rule_verdicts():
    from insilico_trials.infer.decision import SequentialRule

    rule = SequentialRule((0.99, 0.99), (0.05, 0.05), 0.9, (0.1, 0.0))
    assert rule.verdict(0, 3, 0.995) == "stop for efficacy"
    assert rule.verdict(0, 3, 0.02) == "stop for futility"
    assert rule.verdict(0, 3, 0.5, pos=0.05) == "stop for futility"  # by predictive probability
    assert rule.verdict(1, 3, 0.5, pos=0.05) == "continue"  # no PoS rule at the second look
    assert rule.verdict(2, 3, 0.95) == "success (final analysis)"
    assert rule.verdict(2, 3, 0.85) == "failure (final analysis)"
