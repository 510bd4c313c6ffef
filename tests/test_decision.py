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
    # The option: the control patients to come from the virtual cohort's model (the prior).
    virt = binary_predictive_success(
        ROBUST, nc, nt, fc, ft, delta=0.05, success_threshold=0.9, control_source="virtual"
    )
    k = rng.choice(len(ROBUST.weights), p=np.asarray(ROBUST.weights), size=size)
    pv = rng.beta(np.asarray(ROBUST.a)[k], np.asarray(ROBUST.b)[k])
    yv = xc + rng.binomial(fc - nc, pv)
    p_v = (final_prob[yv, yt] > 0.9).mean()
    assert abs(virt[xc, xt] - p_v) < 5 * math.sqrt(p_v * (1 - p_v) / size) + 1e-9
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


def test_tte_posterior_draws_match_a_two_dimensional_grid():
    """(lambda_c, beta) draws against the joint posterior on a 600 x 600 grid of (log lambda_c,
    beta), computed from the likelihood and the priors directly."""
    from insilico_trials.infer.decision import tte_posterior_draws

    prior = MixturePrior("gamma", (0.8, 0.2), (30.0, 1.0), (300.0, 10.0))
    dc, ec, dt, et = 12, 80.0, 6, 90.0
    lam, beta = tte_posterior_draws(prior, dc, ec, dt, et, size=200_000,
                                    rng=np.random.default_rng(3))  # fmt: skip
    ll = np.linspace(np.log(0.01), np.log(1.0), 600)[:, None]
    bb = np.linspace(-3, 3, 600)[None, :]
    lc = np.exp(ll)
    log_prior = np.logaddexp(
        *[math.log(w) + stats.gamma.logpdf(lc, a, scale=1 / b)
          for w, a, b in zip(prior.weights, prior.a, prior.b, strict=True)]
    ) + ll  # log-scale Jacobian  # fmt: skip
    lt = lc * np.exp(bb)
    lp = (
        log_prior
        + stats.norm.logpdf(bb, 0, 2.5)
        + dc * np.log(lc)
        - lc * ec
        + dt * np.log(lt)
        - lt * et
    )
    p = np.exp(lp - lp.max())
    p /= p.sum()
    assert beta.mean() == pytest.approx(float((p * bb).sum()), abs=0.01)
    assert lam.mean() == pytest.approx(float((p * lc).sum()), rel=0.01)
    assert beta.std() == pytest.approx(
        math.sqrt(float((p * bb**2).sum()) - float((p * bb).sum()) ** 2), rel=0.02
    )


@pytest.mark.slow
def test_tte_predictive_success_equals_brute_force_simulation_of_the_remaining_trial():
    """The remaining trial simulated patient by patient on a calendar (the design's timeline:
    uniform entry at the accrual rate, final analysis at N / accrual + follow-up), from
    posterior draws taken on an independent 2-D grid; the final analysis is the protocol's
    exact constant-hazard analysis. Agreement within 5 Monte Carlo errors."""
    from insilico_trials.infer.decision import TteLogHrPosterior, tte_predictive_success

    prior = MixturePrior("gamma", (0.8, 0.2), (30.0, 1.0), (300.0, 10.0))
    rng = np.random.default_rng(11)
    # 20 + 20 real patients so far, followed 0-6 months, some events
    ctrl = pd.DataFrame(
        {"time": rng.uniform(0, 6, 20) * 30.4375, "event": rng.uniform(size=20) < 0.3}
    )
    trt = pd.DataFrame(
        {"time": rng.uniform(0, 6, 20) * 30.4375, "event": rng.uniform(size=20) < 0.15}
    )
    kw = dict(accrual_per_month=4.0, follow_up_months=12.0, dropout_per_month=0.01, delta=1.0,
              success_threshold=0.9)  # fmt: skip
    pos, mcse = tte_predictive_success(prior, ctrl, trt, 40, 40, draws=20_000, seed=5, **kw)

    # independent posterior draws on a grid
    dc, ec = float(ctrl["event"].sum()), float(ctrl["time"].sum() / 30.4375)
    dt, et = float(trt["event"].sum()), float(trt["time"].sum() / 30.4375)
    ll = np.linspace(np.log(0.003), np.log(1.5), 500)[:, None]
    bb = np.linspace(-4, 4, 500)[None, :]
    lc = np.exp(ll)
    log_prior = np.logaddexp(
        *[math.log(w) + stats.gamma.logpdf(lc, a, scale=1 / b)
          for w, a, b in zip(prior.weights, prior.a, prior.b, strict=True)]
    ) + ll  # fmt: skip
    lt = lc * np.exp(bb)
    lp = (
        log_prior
        + stats.norm.logpdf(bb, 0, 2.5)
        + dc * np.log(lc)
        - lc * ec
        + dt * np.log(lt)
        - lt * et
    )
    p = np.exp(lp - lp.max()).ravel()
    n = 20_000
    cell = rng.choice(p.size, p=p / p.sum(), size=n)
    i, j = np.unravel_index(cell, (500, 500))
    lam_c = np.exp(ll[i, 0] + rng.uniform(-0.5, 0.5, n) * (ll[1, 0] - ll[0, 0]))
    beta = bb[0, j] + rng.uniform(-0.5, 0.5, n) * (bb[0, 1] - bb[0, 0])
    # the remaining trial on a calendar, patient by patient
    t_cut, t_end = 40 / 4.0, 80 / 4.0 + 12.0
    finals = []
    for frame, lam in ((ctrl, lam_c), (trt, lam_c * np.exp(beta))):
        d = np.full(n, frame["event"].sum(), dtype=float)
        e = np.full(n, frame["time"].sum() / 30.4375)
        for _ in range(int((~frame["event"]).sum())):  # still at risk at the cut
            t, q = rng.exponential(1 / lam), rng.exponential(100.0, n)
            f = t_end - t_cut
            e += np.minimum(np.minimum(t, q), f)
            d += t <= np.minimum(q, f)
        for _ in range(20):  # patients still to come in this arm
            entry = rng.uniform(t_cut, 80 / 4.0, n)
            t, q = rng.exponential(1 / lam), rng.exponential(100.0, n)
            f = t_end - entry
            e += np.minimum(np.minimum(t, q), f)
            d += t <= np.minimum(q, f)
        finals.append((d, e))
    post = TteLogHrPosterior(prior, finals[0][0], finals[0][1], finals[1][0], finals[1][1])
    bf = float((post.cdf(math.log(1.0)) > 0.9).mean())
    se = math.sqrt(mcse**2 + bf * (1 - bf) / n)
    assert 0.02 < pos < 0.98  # a case where the answer is not trivial
    assert abs(pos - bf) < 5 * se


def test_look_status_reports_the_probability_of_success_for_a_constant_hazard_protocol():
    """update's look record for a tte_exponential protocol: before the planned final analysis
    the probability of success comes from the simulation of the remaining trial, with its
    Monte Carlo error; past the planned sizes the final analysis's verdict."""
    from insilico_trials.run.update import look_status
    from insilico_trials.spec.protocol import load_protocol
    from insilico_trials.testing import with_fields
    from tests.conftest import ROOT

    protocol = with_fields(
        load_protocol(ROOT / "protocols" / "onc_phase2_orr.yaml"),
        {"analysis.endpoint": "pfs", "analysis.model": "tte_exponential",
         "analysis.decision": {"quantity": "hazard_ratio", "delta": 1.0, "threshold": 0.9}},
    )  # fmt: skip
    prior = MixturePrior("gamma", (0.8, 0.2), (30.0, 1.0), (300.0, 10.0))
    rng = np.random.default_rng(2)
    frame = pd.DataFrame(
        {"arm": ["control"] * 10 + ["tki200"] * 10, "time": rng.uniform(10, 150, 20),
         "event": rng.uniform(size=20) < 0.3}
    )  # fmt: skip
    effect = hybrid_effect(protocol, frame, prior, treatment="tki200")
    assert effect.engine == "closed_form"
    status = look_status(protocol, frame, prior, effect)
    assert status["look"] == 0 and status["of"] == 1
    assert 0.0 <= status["pos"] <= 1.0 and 0.0 <= status["pos_mcse"] < 0.01
    assert status["pos_method"].startswith("simulation of the remaining trial")
    big = pd.concat([frame] * 20, ignore_index=True)  # more patients than planned
    status = look_status(
        protocol, big, prior, hybrid_effect(protocol, big, prior, treatment="tki200")
    )
    assert status["pos"] is None and status["verdict"].endswith("(final analysis)")


def test_indicator_mcse_by_batch_means():
    """Independent draws: the batch-means error equals the binomial one (within its own
    sampling error); strongly autocorrelated draws give a larger error than the binomial."""
    from insilico_trials.infer.decision import indicator_mcse

    rng = np.random.default_rng(4)
    iid = rng.uniform(size=(2, 20_000)) < 0.3
    binomial = math.sqrt(0.3 * 0.7 / iid.size)
    assert indicator_mcse(iid) == pytest.approx(binomial, rel=0.35)
    sticky = np.repeat(rng.uniform(size=(2, 400)) < 0.3, 50, axis=1)  # runs of 50 equal draws
    assert indicator_mcse(sticky) > 3 * binomial
    assert indicator_mcse(np.ones((2, 1000), dtype=bool)) == 1.0 / 2000
