"""Design: decision tables, exact-vs-simulated OCs, drift, calibration, invariance, flow.

Tolerances: simulated OCs are compared with exact values within 4 MCSE (a false failure
rate of ~6e-5 per comparison); quadrature tables with 1e-7 absolute.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import integrate, stats

from insilico_trials.infer import borrowing, design
from insilico_trials.infer.conjugate import MixturePrior
from insilico_trials.infer.synthetic import VirtualArms
from insilico_trials.run.design import design_trial
from insilico_trials.spec.protocol import ProtocolError, load_protocol
from insilico_trials.testing import with_arm_sizes, with_fields, write_protocol


def simulate_design(plan, **kw):
    """The serial driver (run.design.design_trial with the default executor)."""
    return design_trial(plan, **kw).results


ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "protocols" / "design_binary_borrowing.yaml"


# The kernels are checked against exact answers with one known virtual arm, as if it were the
# simulation's: 40 responders of 200 pooled (power prior Beta(41, 161)), within the cap.
VIRTUAL_200 = VirtualArms("binary", ({"n": 200, "responders": 40},))
POOLED = {"synthetic_control.prior": "pooled", "synthetic_control.max_virtual_patients": 1000}


def pooled(protocol):
    """The protocol with the pooled virtual-arm prior and a cap above 200 patients."""
    return with_fields(protocol, POOLED)


def _protocol(tmp_path: Path, replace: dict[str, str] | None = None) -> Path:
    text = EXAMPLE.read_text()
    for a, b in (replace or {}).items():
        assert a in text, a
        text = text.replace(a, b)
    p = tmp_path / "design.yaml"
    p.write_text(text)
    return p


@pytest.fixture(scope="module")
def plan():
    return design.compile_design(pooled(load_protocol(EXAMPLE)), virtual=VIRTUAL_200)


@pytest.fixture(scope="module")
def results(plan):
    return simulate_design(plan, replicates=10_000)


def test_batched_conjugate_kernels_equal_one_by_one():
    """Design evaluates every replicate with the batched kernels; update and the analysis call
    the same kernels with scalars: both give the same bits."""
    from insilico_trials.infer import conjugate as cj

    rng = np.random.default_rng(3)
    w, a, b = (0.7, 0.3), (30.0, 1.0), (70.0, 1.0)
    n = rng.integers(1, 60, 50)
    x = rng.integers(0, n + 1)
    batched = cj.beta_mixture_posterior(w, a, b, x, n)
    for i in range(len(n)):
        one = cj.beta_mixture_posterior(w, a, b, int(x[i]), int(n[i]))
        for got, want in zip(batched, one, strict=True):
            np.testing.assert_array_equal(got[i], want)
    ybar = rng.normal(0.0, 5.0, 40)
    batched = cj.normal_mixture_posterior(w, (1.0, 0.0), (0.3, 10.0), ybar, 25, sigma=2.0)
    for i, y in enumerate(ybar):
        one = cj.normal_mixture_posterior(w, (1.0, 0.0), (0.3, 10.0), float(y), 25, sigma=2.0)
        for got, want in zip(batched, one, strict=True):
            np.testing.assert_array_equal(got[i], want)
    d, e = rng.integers(0, 30, 40), rng.uniform(1.0, 200.0, 40)
    batched = cj.gamma_mixture_posterior(w, (50.0, 0.1), (400.0, 0.01), d, e)
    for i in range(len(d)):
        one = cj.gamma_mixture_posterior(w, (50.0, 0.1), (400.0, 0.01), int(d[i]), float(e[i]))
        for got, want in zip(batched, one, strict=True):
            np.testing.assert_array_equal(got[i], want)


def test_example_loads_and_priors(plan):
    assert plan.methods == ("robust_mixture", "none", "full")
    robust = plan.priors["robust_mixture"]
    # 40 of 200 virtual responders, a0 = 1, vague Beta(1, 1) with weight 0.2
    assert robust.weights == pytest.approx((0.8, 0.2))
    assert robust.a == (41.0, 1.0) and robust.b == (161.0, 1.0)
    assert [lk.n_control for lk in plan.looks] == [13, 27, 40]


def test_bad_design_is_reported_at_its_field(tmp_path):
    # A hand-declared virtual arm is refused: design simulates the run's virtual arms.
    bad = _protocol(
        tmp_path,
        {"  endpoint: binary\n": "  endpoint: binary\n  virtual_control: {n: 200, rate: 0.2}\n"},
    )
    with pytest.raises(ProtocolError) as exc:
        load_protocol(bad)
    issue = exc.value.issues[0]
    assert issue.path == "design" and "virtual_control is no longer declared" in issue.message
    assert issue.line > 80
    bad = _protocol(tmp_path, {"efficacy_threshold: 0.995": "efficacy_threshold: 1.5"})
    with pytest.raises(ProtocolError) as exc:
        load_protocol(bad)
    assert exc.value.issues[0].path.startswith("design.efficacy_threshold")


def test_decision_table_matches_quadrature():
    prior = borrowing.robustify(MixturePrior.single("beta", 41, 161), weight=0.2)
    prob, mean = design.binary_decision_table(prior, 20, 25, delta=0.05, nodes=2000)
    for xc, xt in [(0, 0), (4, 9), (20, 25), (10, 3)]:
        w, a, b = borrowing.beta_mixture_posterior(prior.weights, prior.a, prior.b, xc, 20)
        ref = sum(
            wk
            * integrate.quad(
                lambda p, ak=ak, bk=bk, xt=xt: (
                    stats.beta.pdf(p, ak, bk)
                    * stats.beta.sf(min(p + 0.05, 1.0), 1 + xt, 1 + 25 - xt)
                ),
                0,
                1,
                epsabs=1e-12,
                limit=200,
            )[0]
            for wk, ak, bk in zip(w, a, b, strict=True)
        )
        assert prob[xc, xt] == pytest.approx(ref, abs=1e-7)
        assert mean[xc, xt] == pytest.approx((1 + xt) / 27 - float(w @ (a / (a + b))), abs=1e-12)


def test_no_borrowing_single_look_equals_binomial_sum(tmp_path):
    """Known answer: no borrowing, no interims: P(success) = sum of binomial pmf products."""
    proto = load_protocol(
        _protocol(
            tmp_path,
            {
                "  interim_fractions: [0.3333, 0.6667]\n": "",
                "  futility_threshold: 0.05\n": "",
                "method: robust_mixture": "method: none",
                "compare_borrowing: [none, full]": "compare_borrowing: []",
            },
        )
    )
    pl = design.compile_design(pooled(proto), virtual=VIRTUAL_200)
    assert len(pl.looks) == 1
    table = pl.tables[("none", 0)]
    res = simulate_design(pl, replicates=20_000, batch_size=20_000)
    for name, pc, pt in [("null_nodrift", 0.2, 0.2), ("alternative", 0.2, 0.45)]:
        k = np.arange(41)
        exact = float(stats.binom.pmf(k, 40, pc) @ (table > 0.975) @ stats.binom.pmf(k, 40, pt))
        sim = res[name].data["none"]["success"]
        se = math.sqrt(exact * (1 - exact) / sim.size)
        assert abs(sim.mean() - exact) < 4 * se, (name, sim.mean(), exact)


def test_sequential_oc_match_exact_enumeration(plan, results):
    for m in plan.methods:
        for s in plan.scenarios:
            ex = design.exact_binary_oc(plan, s.name, m)
            d = results[s.name].data[m]
            se = math.sqrt(ex["p_success"] * (1 - ex["p_success"]) / d["success"].size)
            assert abs(d["success"].mean() - ex["p_success"]) < 4 * max(se, 1e-4), (m, s.name)
            n = d["n"]
            assert abs(n.mean() - ex["expected_n"]) < 4 * n.std() / math.sqrt(n.size) + 1e-9


def test_drift_inflates_type1_and_robust_limits_it(plan, results):
    oc = design.operating_characteristics(plan, results).set_index(["method", "scenario"])
    full = oc.loc[("full", "drift_null")]
    robust = oc.loc[("robust_mixture", "drift_null")]
    none = oc.loc[("none", "drift_null")]
    # exact values (exact_binary_oc): full 0.428, robust 0.140, none 0.028
    assert full["p_success"] > 0.3
    assert robust["p_success"] < full["p_success"] - 10 * full["p_success_mcse"]
    assert none["p_success"] < 0.035
    for col in ("p_success", "expected_n", "bias", "rmse", "coverage95", "n_q50"):
        assert f"{col}_mcse" in oc.columns
    assert (oc["p_success_mcse"] > 0).all()


def test_batching_does_not_change_numbers(plan):
    a = simulate_design(plan, replicates=300, batch_size=300)
    b = simulate_design(plan, replicates=300, batch_size=7)
    for s in plan.scenarios:
        for m in plan.methods:
            for k, v in a[s.name].data[m].items():
                np.testing.assert_array_equal(v, b[s.name].data[m][k])


def test_calibration_hits_target(plan, results):
    cal = design.calibrate(plan, results, target=0.025, scenario="null_nodrift", bootstrap=50)
    r = results["null_nodrift"].data["robust_mixture"]["success"].size
    for _, row in cal.iterrows():
        assert row["type1"] <= 0.025 + 1e-12
        assert row["type1"] >= 0.025 - 0.003  # discrete posterior: a few ties per threshold
        assert 0 < row["threshold_se"] < 0.02
        assert row["power_se_total"] >= row["power_mcse"]
    assert len(cal) == len(plan.methods) * (len(plan.scenarios) - 1)
    assert r == 10_000


def _normal_protocol(tmp_path: Path) -> Path:
    """The example with a continuous endpoint and a known-sigma design."""
    p = with_fields(
        load_protocol(EXAMPLE),
        {
            "analysis.endpoint": "best_pct_change",
            "analysis.model": "continuous",
            "analysis.decision": {"quantity": "mean_difference", "delta": 0.0, "threshold": 0.975},
            "design": {
                "endpoint": "continuous",
                "success_threshold": 0.975,
                "compare_borrowing": ["none"],
                "scenarios": [
                    {"name": "null0", "control": 0.0, "treatment": 0.0},
                    {"name": "alt", "control": 0.0, "treatment": -20.0},
                    {"name": "alt_up", "control": 0.0, "treatment": 20.0},
                ],
            },
        },
    )
    return write_protocol(p, tmp_path / "normal.yaml")


def test_normal_no_borrowing_power_is_z_test(tmp_path):
    """Vague priors, known sigma: P(success) = Phi(effect / se - z_0.975), se = sigma sqrt(2/n)."""
    virtual = VirtualArms("continuous", ({"n": 100, "mean": 0.0, "sd": 30.0},))
    pl = design.compile_design(load_protocol(_normal_protocol(tmp_path)), virtual=virtual)
    res = simulate_design(pl, replicates=20_000)
    se = 30.0 * math.sqrt(2 / 40)
    for name, eff in [("null0", 0.0), ("alt_up", 20.0)]:
        exact = stats.norm.cdf(eff / se - stats.norm.ppf(0.975))
        d = res[name].data["none"]["success"]
        mcse = math.sqrt(exact * (1 - exact) / d.size)
        assert abs(d.mean() - exact) < 4 * mcse, (name, d.mean(), exact)
    oc = design.operating_characteristics(pl, res).set_index(["method", "scenario"])
    cov = oc.loc[("none", "alt_up")]
    assert abs(cov["coverage95"] - 0.95) < 4 * cov["coverage95_mcse"]


def test_tte_log_hr_posterior_matches_brute_force_integration():
    """The design's TTE posterior is the analysis's (tte_exponential: gamma-mixture prior on
    lambda_c, log HR ~ N(0, 2.5)) with lambda_c integrated out in closed form; checked against
    a 4,000,001-point trapezoid of the same density on [-20, 20] (error of the reference at
    the step of P(beta < c): about 1e-6)."""
    from scipy import special

    prior = MixturePrior("gamma", (0.8, 0.2), (30.0, 1.0), (300.0, 10.0))
    beta = np.linspace(-20, 20, 4_000_001)
    c = math.log(0.8)
    for dc, ec, dt, et in [(12, 80.0, 6, 90.0), (0, 5.0, 0, 4.0), (150, 900.0, 90, 1100.0),
                           (30, 100.0, 2, 150.0), (3, 400.0, 40, 30.0)]:  # fmt: skip
        post = design.TteLogHrPosterior(prior, [dc], [ec], [dt], [et])
        d = dc + dt
        terms = [
            math.log(w) + a * math.log(b) + special.gammaln(a + d) - special.gammaln(a)
            - (a + d) * np.log(b + ec + np.exp(beta) * et)
            for w, a, b in zip(prior.weights, prior.a, prior.b, strict=True)
        ]  # fmt: skip
        lf = -0.5 * (beta / 2.5) ** 2 + beta * dt + np.logaddexp(*terms)
        f = np.exp(lf - lf.max())
        z = np.trapezoid(f, beta)
        assert post.cdf(c)[0] == pytest.approx(np.trapezoid(f * (beta < c), beta) / z, abs=3e-6)
        assert post.mean()[0] == pytest.approx(np.trapezoid(f * beta, beta) / z, abs=1e-6)


def _tte_protocol(tmp_path: Path, n: int = 60) -> Path:
    """The example with a PFS endpoint (Weibull analysis) and a tte design."""
    p = with_fields(
        with_arm_sizes(load_protocol(EXAMPLE), n),
        {
            **POOLED,
            "analysis.endpoint": "pfs",
            "analysis.model": "tte_exponential",
            "analysis.decision": {"quantity": "hazard_ratio", "delta": 1.0, "threshold": 0.975},
            "design": {
                "endpoint": "tte",
                "interim_patients": [72],
                "efficacy_threshold": 0.999,
                "futility_threshold": 0.1,
                "compare_borrowing": ["none"],
                "scenarios": [
                    {"name": "null0", "control": 6.0, "treatment": 6.0},
                    {"name": "alt", "control": 6.0, "treatment": 10.0},
                    {"name": "drift_null", "control": 9.0, "treatment": 9.0},
                ],
                "calibration": {"target": 0.025, "scenario": "null0", "bootstrap": 50},
            },
        },
    )
    return write_protocol(p, tmp_path / "tte.yaml")


# 150 virtual patients followed to the event, median 6 months (exposure 150 x 6 / ln 2 months)
VIRTUAL_TTE = VirtualArms(
    "tte", ({"n": 150, "events": 150, "exposure_days": 150 * 6.0 / math.log(2) * 30.4375},)
)


@pytest.mark.slow
def test_tte_design_runs_and_is_sensible(tmp_path):
    pl = design.compile_design(load_protocol(_tte_protocol(tmp_path)), virtual=VIRTUAL_TTE)
    res = simulate_design(pl, replicates=2000)
    oc = design.operating_characteristics(pl, res).set_index(["method", "scenario"])
    none_null = oc.loc[("none", "null0")]
    # exponential data, exponential model, vague prior: type I error near 1 - 0.975 (+ interim)
    assert abs(none_null["p_success"] - 0.025) < 4 * none_null["p_success_mcse"] + 0.01
    assert oc.loc[("none", "alt"), "p_success"] > 0.3
    # drift: control better than the virtual arm predicts -> borrowing inflates type I error
    assert oc.loc[("robust_mixture", "drift_null"), "p_success"] > none_null["p_success"]
    a = simulate_design(pl, replicates=50, batch_size=50)
    b = simulate_design(pl, replicates=50, batch_size=3)
    np.testing.assert_array_equal(a["alt"].data["none"]["prob"], b["alt"].data["none"]["prob"])


def test_design_bad_input_writes_nothing_and_validate_agrees(tmp_path, capsys):
    from insilico_trials.app.cli import main

    bad = _protocol(tmp_path, {"method: robust_mixture": "method: commensurate\n  sd_scale: 1.0"})
    reports = tmp_path / "reports"
    args = ["design", str(bad), "--replicates", "10", "--workers", "1", "--reports", str(reports)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "synthetic_control.method" in err and "design.yaml:" in err
    assert not reports.exists()
    # validate applies the same cross-section rules: the same file fails it the same way
    assert main(["validate", str(bad)]) == 2
    assert capsys.readouterr().err == err


@pytest.mark.slow
def test_flow_identical_for_any_worker_count(prefect_api, plan):
    from insilico_trials.adapters.prefect_dask import PrefectDask

    one = design_trial(plan, replicates=400, batch_size=400, executor=PrefectDask(workers=1))
    two = design_trial(plan, replicates=400, batch_size=90, executor=PrefectDask(workers=2))
    assert one.run_id and two.run_id != one.run_id  # recorded as Prefect flow runs
    serial = simulate_design(plan, replicates=400)
    for s in plan.scenarios:
        for m in plan.methods:
            for k in ("success", "n", "estimate", "prob"):
                np.testing.assert_array_equal(
                    one.results[s.name].data[m][k], two.results[s.name].data[m][k]
                )
                np.testing.assert_array_equal(
                    one.results[s.name].data[m][k], serial[s.name].data[m][k]
                )


@pytest.mark.slow
def test_execute_design_end_to_end(prefect_api, tmp_path, monkeypatch, capsys):
    import json

    from insilico_trials.app.design_cmd import execute_design

    monkeypatch.chdir(tmp_path)
    reports = tmp_path / "reports"
    folder = execute_design(EXAMPLE, replicates=500, workers=2, dask_address=None, reports=reports)
    (out,) = list((reports / "design-binary-borrowing").iterdir())
    assert out == folder
    assert out.name.startswith("design-")
    doc = json.loads((out / "oc.json").read_text())
    assert len(doc["operating_characteristics"]) == 12
    assert (out / "oc.csv").read_text().startswith("method,scenario")
    text = capsys.readouterr().out
    assert "batches" in text and "timing summary" in text and "±" in text


@pytest.mark.slow
def test_fast_path_agrees_with_mcmc(tmp_path):
    """Design computes the analysis's own posterior: binary (exact tables) and TTE (exact
    quadrature of the constant-hazard model) against the analysis's MCMC, 3 replicates each."""
    proto = pooled(load_protocol(EXAMPLE))
    pl = design.compile_design(proto, virtual=VIRTUAL_200)
    binary = design.mcmc_agreement(
        pl, proto, scenario="alternative", replicates=[0, 1, 2], draws=1000
    )
    assert binary["converged"].all()
    assert (binary["difference"].abs() < 0.02).all(), binary
    proto = load_protocol(_tte_protocol(tmp_path))
    tp = design.compile_design(proto, virtual=VIRTUAL_TTE)
    tte = design.mcmc_agreement(
        tp,
        proto,
        scenario="drift_null",
        method="robust_mixture",
        replicates=[0, 1, 2],
        draws=2000,
    )
    assert tte["converged"].all()
    # the same posterior: the difference is MCMC error only (2 x 2000 draws: sd <= 0.008)
    assert (tte["difference"].abs() < 0.03).all(), tte


def test_mcse_of_a_proportion_never_zero():
    # None of 10,000 replicates succeeded: the estimate is 0, its MCSE is not (Agresti-Coull
    # centre (0 + 2) / (R + 4): about 1.4e-4); elsewhere it is the usual sqrt(p (1 - p) / R).
    p, se = design._prop(np.zeros(10_000, dtype=bool))
    assert p == 0.0 and se == pytest.approx(math.sqrt(2 / 10_004 * (1 - 2 / 10_004) / 10_004))
    p, se = design._prop(np.r_[np.ones(2_500), np.zeros(7_500)].astype(bool))
    assert se == pytest.approx(math.sqrt(0.25 * 0.75 / 10_000), rel=1e-3)


def test_tte_interim_after_enrolment_is_refused(tmp_path):
    # 120 patients at 8 per month: enrolment ends at month 15; 48 weeks follow-up -> final at
    # month 26.0; an interim at 0.6 of that (month 15.6) saves no patient.
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"after enrolment ends \(month 15\.0"):
        with_fields(
            load_protocol(_tte_protocol(tmp_path)),
            {"design.interim_patients": [], "design.interim_fractions": [0.6]},
        )
    ok = with_fields(
        load_protocol(_tte_protocol(tmp_path)),
        {"design.interim_patients": [], "design.interim_fractions": [0.5]},
    )
    assert ok.design.interim_fractions == [0.5]


@pytest.mark.slow
def test_predictive_futility_rule_is_the_engine_update_applies():
    """``design.futility_pos``: an interim stops for futility when the predictive probability
    of success at the final analysis is below it. Each replicate's verdict equals what
    ``update`` computes for the same counts: SequentialRule.verdict on the exact criterion
    probability and binary_predictive_success (one rule engine for design and update)."""
    from insilico_trials.infer.decision import binary_effect, binary_predictive_success

    protocol = with_fields(pooled(load_protocol(EXAMPLE)), {"design.futility_pos": 0.2})
    plan = design.compile_design(protocol, virtual=VIRTUAL_200, methods=["robust_mixture"])
    looks, rule = design.planned_looks(protocol)
    assert plan.rule == rule and rule.futility_pos == (0.2, 0.2)
    s = plan.scenario("null_nodrift")
    reps = np.arange(400)
    xc, xt = design._binary_counts(plan, s, reps)
    res = design.simulate_batch(plan, "null_nodrift", 0, 400).data["robust_mixture"]
    fut_by_pos = 0
    final = looks[-1]
    prior = plan.priors["robust_mixture"]
    for r in range(0, 400, 7):
        j = 0
        lk = looks[j]
        prob, _, _ = binary_effect(
            prior, int(xc[r, j]), lk.n_control, int(xt[r, j]), lk.n_treatment,
            delta=plan.delta, nodes=2000,
        )  # fmt: skip
        pos = binary_predictive_success(
            prior, lk.n_control, lk.n_treatment, final.n_control, final.n_treatment,
            delta=plan.delta, success_threshold=plan.success,
        )[xc[r, j], xt[r, j]]  # fmt: skip
        verdict = rule.verdict(j, len(looks), prob, pos)
        stopped_here = res["stop_look"][r] == 0 and res["reason"][r] != 0
        expect = {1: "stop for efficacy", 2: "stop for futility"}.get(int(res["reason"][r]))
        assert (verdict if verdict != "continue" else None) == (expect if stopped_here else None)
        fut_by_pos += verdict == "stop for futility" and prob >= rule.futility[0]
    assert fut_by_pos > 0  # the predictive rule, not the probability threshold, stopped some
    without = design.compile_design(pooled(load_protocol(EXAMPLE)), virtual=VIRTUAL_200,
                                    methods=["robust_mixture"])  # fmt: skip
    res0 = design.simulate_batch(without, "null_nodrift", 0, 400).data["robust_mixture"]

    def fut1(d):
        return np.mean((d["stop_look"] == 0) & (d["reason"] == 2))

    assert fut1(res) > fut1(res0)  # the rule adds futility stops under the null
