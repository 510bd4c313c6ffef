"""Trial design: replicate trials, interim decisions, operating characteristics, calibration.

A design is evaluated by simulating ``R`` complete trials per *scenario* (true parameters of the
real control and treatment arms) and applying the protocol's Bayesian decision rule at each
look. Everything here is a pure function of the protocol and the replicate indices: replicate
``r`` of scenario ``s`` draws only from keys ``("design", s, ...)`` at index ``r``
(:func:`insilico_trials.sim.rng.patient_uniforms`), so batches can run in any order, on any number
of workers, and give identical numbers.

Why no MCMC and no patient-level PK/PD here
-------------------------------------------
An operating-characteristic loop needs 10^4 trials per scenario and design. The decision only
depends on each arm's sufficient statistics, whose sampling distribution is known exactly given
the scenario's true parameters:

``binary``
    responders among the incremental patients of each arm between looks are
    ``Binomial(n_inc, p_arm)`` (statistically exact for the endpoint). The posterior
    probability of the decision, ``P(p_t - p_c > delta | x_c, x_t)``, only depends on the
    integer counts, so it is tabulated once per look on the lattice
    ``x_c = 0..n_c, x_t = 0..n_t`` (Gauss-Legendre quadrature of
    ``sum_k w_k' int Beta(p; a_k', b_k') S_t(p + delta) dp``, ``S_t`` the Beta survival function
    of ``p_t``) and every replicate is a table look-up: exact up to quadrature error (< 1e-8).
``continuous``
    the arm means between looks are ``Normal(mu_arm, sigma^2 / n_inc)`` with the declared
    per-patient ``sigma`` treated as known; posterior of ``mu_t`` normal (vague prior), of
    ``mu_c`` a normal mixture, and
    ``P(mu_t - mu_c > delta) = sum_k w_k' Phi((m_t - m_k' - delta) / sqrt(s_t^2 + s_k'^2))``.
``tte``
    fast approximation: exponential (constant hazard) model on each arm's events ``d`` and
    exposure ``E`` (months). ``lambda_c`` has the gamma-mixture prior from the virtual arm,
    ``lambda_t ~ Gamma(1, 0.01)``; with ``X ~ F(2 a_t, 2 a_k)``,
    ``P(lambda_t / lambda_c < h) = sum_k w_k' F_cdf(h b_t a_k / (a_t b_k); 2 a_t, 2 a_k)``.
    Patients enter uniformly at the protocol's accrual rate, event times are exponential with
    the scenario's median, dropout exponential at ``endpoints.dropout_per_year``, and look ``j``
    is at calendar time ``f_j (T_accrual + follow_up)``. The protocol's own model
    (``tte_weibull`` / ``tte_pwexp``) is fitted by MCMC in :func:`mcmc_agreement` on a few
    replicates to check the approximation.

Why a declared virtual-arm summary
----------------------------------
The prior of the real control arm is built (by :func:`insilico_trials.infer.borrowing.control_prior`)
from the virtual control arm. Simulating the virtual arm through PK/PD for every replicate would
cost minutes each and add nothing to the design question, which is how the decision rule
behaves when the real control arm agrees with, or drifts from, what the virtual arm predicts.
So the design takes the virtual arm as a fixed summary (``design.virtual_control``: the size
and the rate, mean or median that the ``run`` flow's simulated control arm produced), and drift
scenarios set the real control arm's true parameter away from it.

Borrowing methods (``synthetic_control.method``, plus ``design.compare_borrowing``, all run on
the *same* simulated data): ``none`` (vague), ``full``, ``power`` (``a0``) and
``robust_mixture`` (borrowing.py's ``robust``; weight ``vague_weight``).

Operating characteristics per (method, scenario), each with its Monte Carlo standard error
(MCSE): probability of success (type I error when the true effect does not satisfy the
criterion, power otherwise), expected sample size and its 5/50/95 % quantiles, probability of
stopping for efficacy and for futility at each look, and bias, RMSE and 95 % credible-interval
coverage of the effect estimate (the posterior mean at the look where the trial stopped, so
early-stopping selection bias is included; binary: rate difference; continuous: mean
difference; tte: log hazard ratio).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import special, stats

from insilico_trials.infer.conjugate import MixturePrior, normal_mixture_posterior
from insilico_trials.infer.decision import (
    SequentialRule,
    TteLogHrPosterior,
    binary_decision_table,
    binary_predictive_success,
)
from insilico_trials.infer.synthetic import VirtualArms, pooled_statistics, protocol_prior
from insilico_trials.sim.rng import patient_uniforms, stream
from insilico_trials.spec.design import (
    ENDPOINT_OF_MODEL,
    Calibration,
    DesignError,
    DesignSpec,
    Endpoint,
    Scenario,
    design_problems,
    treatment_arm,
)
from insilico_trials.units import DAYS_PER_MONTH

__all__ = [
    "BatchResult",
    "Calibration",
    "DesignError",
    "DesignPlan",
    "DesignSpec",
    "Scenario",
    "binary_decision_table",
    "calibrate",
    "compile_design",
    "design_problems",
    "exact_binary_oc",
    "mcmc_agreement",
    "merge_batches",
    "operating_characteristics",
    "planned_looks",
    "replicate_batches",
    "simulate_batch",
]

# --------------------------------------------------------------------------- compiled plan


@dataclass(frozen=True)
class Look:
    """One analysis: cumulative patients per arm (and calendar month for tte)."""

    n_control: int
    n_treatment: int
    fraction: float
    month: float = float("nan")


@dataclass(frozen=True)
class DesignPlan:
    """Everything a batch needs: looks, rules, priors per method and (binary) decision tables.

    ``efficacy[j]`` / ``futility[j]`` are the interim thresholds (``futility`` ``0`` means
    none); the last look uses ``success``. ``side`` is ``"greater"`` (difference > delta) or
    ``"less"`` (hazard ratio < delta).
    """

    endpoint: Endpoint
    seed: int
    scenarios: tuple[Scenario, ...]
    looks: tuple[Look, ...]
    efficacy: tuple[float, ...]
    futility: tuple[float, ...]
    success: float
    delta: float
    side: str
    methods: tuple[str, ...]
    priors: Mapping[str, MixturePrior]
    sigma: float = float("nan")
    accrual_per_month: float = float("nan")
    follow_up_months: float = float("nan")
    dropout_per_month: float = 0.0
    virtual_parameter: float = float("nan")
    virtual_priors: Mapping[str, Any] = field(default_factory=dict, repr=False)
    tables: Mapping[tuple[str, int], np.ndarray] = field(default_factory=dict, repr=False)
    true_tables: Mapping[tuple[str, str, int], np.ndarray] = field(default_factory=dict, repr=False)
    mean_tables: Mapping[tuple[str, int], np.ndarray] = field(default_factory=dict, repr=False)
    # predictive probability of success per (method, interim look), binary with futility_pos
    futility_pos: tuple[float, ...] = ()
    pos_tables: Mapping[tuple[str, int], np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def rule(self) -> SequentialRule:
        """The sequential rule (the engine ``update`` applies to real cuts too)."""
        return SequentialRule(self.efficacy, self.futility, self.success, self.futility_pos)

    def true_effect(self, scenario: Scenario) -> float:
        """Difference (binary, continuous) or log hazard ratio (tte: log(median_c / median_t))."""
        if self.endpoint == "tte":
            return math.log(scenario.control / scenario.treatment)
        return scenario.treatment - scenario.control

    def is_null(self, scenario: Scenario) -> bool:
        """The true effect does not satisfy the criterion: success there is a type I error."""
        if self.endpoint == "tte":
            return not scenario.control / scenario.treatment < self.delta
        return not self.true_effect(scenario) > self.delta

    def scenario(self, name: str) -> Scenario:
        return next(s for s in self.scenarios if s.name == name)


def _looks(protocol: Any, d: DesignSpec) -> tuple[Look, ...]:
    n_c, n_t = protocol.control_arm.n, treatment_arm(protocol).n
    fr = list(d.interim_fractions) or [k / (n_c + n_t) for k in d.interim_patients]
    fr.append(1.0)
    looks = []
    for f in fr:
        looks.append(Look(max(1, round(f * n_c)), max(1, round(f * n_t)), float(f)))
    return tuple(looks)


def planned_looks(protocol: Any) -> tuple[tuple[Look, ...], SequentialRule]:
    """The trial's planned looks (real patients per arm; for a time-to-event endpoint also the
    calendar month of each look) and its sequential rule, as ``design`` evaluates them and
    ``update`` applies them to real cuts: the design section's interims and thresholds, or,
    without one, a single final analysis of the arms' planned sizes at the analysis' threshold.

    Time-to-event looks are at calendar months from the first entry (uniform accrual at
    ``endpoints.accrual_per_month``): the final one at ``N / accrual + follow_up``, interims at
    ``interim_patients / accrual`` or at ``interim_fractions`` of the final month.
    """
    d: DesignSpec | None = protocol.design
    dec = protocol.analysis.decision
    if d is None:
        n_c, n_t = protocol.control_arm.n, treatment_arm(protocol).n
        looks: tuple[Look, ...] = (Look(n_c, n_t, 1.0),)
        rule = SequentialRule((), (), float(dec.threshold))
    else:
        looks = _looks(protocol, d)
        n_int = len(looks) - 1
        eff, fut, fpos = d.efficacy_threshold, d.futility_threshold, d.futility_pos
        eff_t = tuple(eff) if isinstance(eff, list) else (float(eff),) * n_int
        fut_t = tuple(fut) if isinstance(fut, list) else (float(fut or 0.0),) * n_int
        fpos_t = tuple(fpos) if isinstance(fpos, list) else ((float(fpos),) * n_int if fpos else ())
        success = d.success_threshold or dec.threshold
        rule = SequentialRule(eff_t, fut_t, float(success), fpos_t)
    if ENDPOINT_OF_MODEL.get(protocol.analysis.model) == "tte":
        ep = protocol.endpoints
        accrual = float(ep.accrual_per_month)
        total = looks[-1].n_control + looks[-1].n_treatment
        t_end = total / accrual + ep.follow_up_weeks * 7.0 / DAYS_PER_MONTH
        if d is not None and d.interim_patients:
            months = [k / accrual for k in d.interim_patients] + [t_end]
        else:
            months = [lk.fraction * t_end for lk in looks]
        looks = tuple(
            Look(lk.n_control, lk.n_treatment, lk.fraction, float(m))
            for lk, m in zip(looks, months, strict=True)
        )
    return looks, rule


def compile_design(
    protocol: Any,
    *,
    virtual: VirtualArms,
    replicates: int | None = None,
    methods: Sequence[str] | None = None,
    success_threshold: float | None = None,
) -> DesignPlan:
    """Turn a validated protocol with a ``design`` section into a :class:`DesignPlan`.

    ``virtual`` are the protocol's replicate virtual control arms
    (:func:`insilico_trials.run.virtual.simulate_virtual_arms`, or as a run archived them):
    every method's prior is :func:`insilico_trials.infer.synthetic.protocol_prior` of them,
    the prior the run's analysis and ``update`` use.

    Raises
    ------
    DesignError
        When :func:`design_problems` finds a problem.
    """
    if protocol.design is None:
        raise DesignError("design: the protocol has no design section", where="design")
    problems = design_problems(protocol)
    if problems:  # a protocol validated at load has none; a hand-built one may
        raise DesignError(
            "; ".join(f"{'.'.join(map(str, p))}: {m} (got {v!r})" for p, v, m in problems)
        )
    d: DesignSpec = protocol.design
    sc = protocol.synthetic_control
    if methods is None:
        methods = [sc.method] + [m for m in d.compare_borrowing if m != sc.method]
    if virtual.kind != d.endpoint:
        raise DesignError(
            f"virtual arms: simulated for a {virtual.kind} endpoint, the design is {d.endpoint}"
        )
    virtual_priors = {m: protocol_prior(protocol, virtual, method=m) for m in methods}
    priors = {m: vp.prior for m, vp in virtual_priors.items()}
    pooled = pooled_statistics(virtual)
    looks, rule = planned_looks(protocol)
    eff_t, fut_t, fpos_t = rule.efficacy, rule.futility, rule.futility_pos
    dec = protocol.analysis.decision
    success = success_threshold or rule.success
    ep = protocol.endpoints
    extra: dict[str, Any] = {"virtual_priors": virtual_priors}
    if d.endpoint == "continuous":
        extra["sigma"] = float(virtual.sigma())
        extra["virtual_parameter"] = float(pooled["ybar"])
    elif d.endpoint == "binary":
        extra["virtual_parameter"] = float(pooled["x"] / pooled["n"])
    else:
        # the pooled virtual median (months) under a constant hazard
        extra["virtual_parameter"] = math.log(2.0) * pooled["exposure"] / max(pooled["d"], 1.0)
        extra["accrual_per_month"] = float(ep.accrual_per_month)
        extra["follow_up_months"] = ep.follow_up_weeks * 7.0 / DAYS_PER_MONTH
        extra["dropout_per_month"] = ep.dropout_per_year / 12.0
        # the looks' calendar months come from planned_looks (the same months update uses)
    plan = DesignPlan(
        endpoint=d.endpoint,
        seed=protocol.seed,
        scenarios=tuple(d.scenarios),
        looks=looks,
        efficacy=eff_t,
        futility=fut_t,
        futility_pos=fpos_t,
        success=float(success),
        delta=float(dec.delta),
        side=dec.side,
        methods=tuple(methods),
        priors=priors,
        **extra,
    )
    if d.endpoint == "binary":
        from threadpoolctl import threadpool_limits

        # one BLAS thread: the tables' products must be the same bits in every process
        with threadpool_limits(limits=1, user_api="blas"):
            plan = _with_binary_tables(plan, nodes=d.quadrature_nodes)
    return plan


# --------------------------------------------------------------------------- binary kernel


def _with_binary_tables(plan: DesignPlan, *, nodes: int) -> DesignPlan:
    tables, true_tables, mean_tables = {}, {}, {}
    for m in plan.methods:
        for j, lk in enumerate(plan.looks):
            p, mean = binary_decision_table(
                plan.priors[m], lk.n_control, lk.n_treatment, delta=plan.delta, nodes=nodes
            )
            tables[(m, j)], mean_tables[(m, j)] = p, mean
            for s in plan.scenarios:
                key = (m, s.name, j)
                true_tables[key] = binary_decision_table(
                    plan.priors[m],
                    lk.n_control,
                    lk.n_treatment,
                    delta=plan.true_effect(s),
                    nodes=nodes,
                )[0]
    pos_tables = {}
    if any(f > 0 for f in plan.futility_pos):
        final = plan.looks[-1]
        for m in plan.methods:
            for j, lk in enumerate(plan.looks[:-1]):
                pos_tables[(m, j)] = binary_predictive_success(
                    plan.priors[m], lk.n_control, lk.n_treatment, final.n_control,
                    final.n_treatment, delta=plan.delta, success_threshold=plan.success,
                    direction=plan.side, nodes=nodes,
                )  # fmt: skip
    return dataclasses.replace(
        plan, tables=tables, true_tables=true_tables, mean_tables=mean_tables,
        pos_tables=pos_tables,
    )  # fmt: skip


def _binom_inverse(u: np.ndarray, n: int, p: float) -> np.ndarray:
    """Exact inverse-CDF Binomial(n, p) draws: the smallest k with F(k) >= u."""
    cdf = stats.binom.cdf(np.arange(n + 1), n, p)
    cdf[-1] = 1.0
    return np.searchsorted(cdf, u, side="left")


def _binary_counts(
    plan: DesignPlan, scenario: Scenario, reps: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative responders per look, shape (R, L), control and treatment."""
    n_l = len(plan.looks)
    u = patient_uniforms(plan.seed, ("design", scenario.name), reps, 2 * n_l)
    xc = np.zeros((reps.size, n_l), dtype=np.int64)
    xt = np.zeros((reps.size, n_l), dtype=np.int64)
    prev_c = prev_t = 0
    for j, lk in enumerate(plan.looks):
        inc_c = _binom_inverse(u[:, 2 * j], lk.n_control - prev_c, scenario.control)
        inc_t = _binom_inverse(u[:, 2 * j + 1], lk.n_treatment - prev_t, scenario.treatment)
        xc[:, j] = (xc[:, j - 1] if j else 0) + inc_c
        xt[:, j] = (xt[:, j - 1] if j else 0) + inc_t
        prev_c, prev_t = lk.n_control, lk.n_treatment
    return xc, xt


# --------------------------------------------------------------------------- normal kernel


def _normal_means(
    plan: DesignPlan, scenario: Scenario, reps: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    from scipy.special import ndtri

    n_l = len(plan.looks)
    z = ndtri(patient_uniforms(plan.seed, ("design", scenario.name), reps, 2 * n_l))
    sums = []
    for arm, mu, k in (("c", scenario.control, 0), ("t", scenario.treatment, 1)):
        tot = np.zeros(reps.size)
        prev = 0
        out = np.empty((reps.size, n_l))
        for j, lk in enumerate(plan.looks):
            n = lk.n_control if arm == "c" else lk.n_treatment
            inc = n - prev
            tot = tot + inc * mu + math.sqrt(inc) * plan.sigma * z[:, 2 * j + k]
            out[:, j] = tot / n
            prev = n
        sums.append(out)
    return sums[0], sums[1]


def _normal_look(
    plan: DesignPlan, prior: MixturePrior, yc: np.ndarray, yt: np.ndarray, lk: Look, truth: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    w, m, s = normal_mixture_posterior(
        prior.weights, prior.a, prior.b, yc, lk.n_control, sigma=plan.sigma
    )
    # treatment: Normal(0, 1000) prior, known sigma
    pt = 1.0 / 1000.0**2 + lk.n_treatment / plan.sigma**2
    mt, st = (lk.n_treatment * yt / plan.sigma**2) / pt, pt**-0.5
    sd = np.sqrt(st**2 + s**2)
    prob = (w * special.ndtr((mt[:, None] - m - plan.delta) / sd)).sum(1)
    above_truth = (w * special.ndtr((mt[:, None] - m - truth) / sd)).sum(1)
    return prob, mt - (w * m).sum(1), above_truth


# --------------------------------------------------------------------------- tte kernel


def tte_patients(
    plan: DesignPlan, scenario: Scenario, reps: np.ndarray, arm: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entry month, event month (from entry) and dropout month per patient, shape (R, n).

    Entry is uniform over the accrual period ``(n_c + n_t) / accrual_per_month``; event times
    exponential with median ``scenario.<arm>``; dropout exponential at ``dropout_per_month``.
    """
    n = plan.looks[-1].n_control if arm == "control" else plan.looks[-1].n_treatment
    total = plan.looks[-1].n_control + plan.looks[-1].n_treatment
    u = patient_uniforms(plan.seed, ("design", scenario.name, arm), reps, 3 * n)
    entry = u[:, :n] * (total / plan.accrual_per_month)
    median = scenario.control if arm == "control" else scenario.treatment
    event = -np.log(u[:, n : 2 * n]) * median / math.log(2.0)
    drop = (
        -np.log(u[:, 2 * n :]) / plan.dropout_per_month
        if plan.dropout_per_month > 0
        else np.full((reps.size, n), np.inf)
    )
    return entry, event, drop


def _tte_at(
    entry: np.ndarray, event: np.ndarray, drop: np.ndarray, month: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Enrolled count, events and exposure (months) per replicate at calendar ``month``."""
    on = entry <= month
    follow = np.where(on, month - entry, 0.0)
    t = np.minimum(np.minimum(event, drop), follow)
    d = on & (event <= np.minimum(drop, follow))
    return on.sum(1), d.sum(1), t.sum(1)


def _tte_look(
    plan: DesignPlan,
    prior: MixturePrior,
    dc: np.ndarray,
    ec: np.ndarray,
    dt_: np.ndarray,
    et: np.ndarray,
    truth_log_hr: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    post = TteLogHrPosterior(prior, dc, ec, dt_, et)
    prob = post.cdf(math.log(plan.delta))
    return prob, post.mean(), 1.0 - post.cdf(truth_log_hr)


# --------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class BatchResult:
    """Per-replicate outcomes of one scenario for replicates ``start..stop - 1``.

    ``data[method]`` maps names to arrays of length ``stop - start``: ``stop_look`` (index of
    the look where the trial ended), ``reason`` (0 final, 1 efficacy, 2 futility),
    ``success``, ``n`` (patients enrolled at the stop), ``estimate``, ``covered``,
    ``p_final`` (posterior probability at the final look, computed for every replicate),
    ``prob`` (2-D: posterior probability at every look).
    """

    scenario: str
    start: int
    stop: int
    data: Mapping[str, Mapping[str, np.ndarray]]


def replicate_batches(replicates: int, batch_size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``0..replicates - 1`` (does not change any number)."""
    return [(s, min(s + batch_size, replicates)) for s in range(0, replicates, batch_size)]


def _decide(
    plan: DesignPlan,
    prob: np.ndarray,
    est: np.ndarray,
    above: np.ndarray,
    n_look: np.ndarray,
    pos: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Apply the sequential rule (:attr:`DesignPlan.rule`) to per-look probabilities, shape
    (R, L); ``pos`` the predictive probabilities of success at the interims (R, L - 1)."""
    r, n_l = prob.shape
    rule = plan.rule
    active = np.ones(r, dtype=bool)
    stop_look = np.full(r, n_l - 1, dtype=np.int16)
    reason = np.zeros(r, dtype=np.int8)
    for j in range(n_l - 1):
        e, f = rule.interim(j, prob[:, j], None if pos is None else pos[:, j])
        eff, fut = active & e, active & f
        stop_look[eff | fut] = j
        reason[eff], reason[fut] = 1, 2
        active &= ~(eff | fut)
    idx = np.arange(r)
    success = (reason == 1) | ((reason == 0) & (prob[:, -1] > rule.success))
    a = above[idx, stop_look]
    return {
        "stop_look": stop_look,
        "reason": reason,
        "success": success,
        "n": n_look[idx, stop_look],
        "estimate": est[idx, stop_look],
        "covered": (a >= 0.025) & (a <= 0.975),
        "p_final": prob[:, -1],
        "prob": prob,
    }


def simulate_batch(plan: DesignPlan, scenario: str, start: int, stop: int) -> BatchResult:
    """Simulate replicates ``start..stop - 1`` of ``scenario`` under every borrowing method.

    The data of replicate ``r`` come from keyed draws at index ``r`` only, and every method
    sees the same data (common random numbers across methods).
    """
    s = plan.scenario(scenario)
    reps = np.arange(start, stop, dtype=np.int64)
    n_l = len(plan.looks)
    truth = plan.true_effect(s)
    n_look = np.tile([lk.n_control + lk.n_treatment for lk in plan.looks], (reps.size, 1))
    out: dict[str, dict[str, np.ndarray]] = {}
    if plan.endpoint == "binary":
        xc, xt = _binary_counts(plan, s, reps)
        for m in plan.methods:
            prob = np.stack([plan.tables[(m, j)][xc[:, j], xt[:, j]] for j in range(n_l)], 1)
            est = np.stack([plan.mean_tables[(m, j)][xc[:, j], xt[:, j]] for j in range(n_l)], 1)
            above = np.stack(
                [plan.true_tables[(m, s.name, j)][xc[:, j], xt[:, j]] for j in range(n_l)], 1
            )
            pos = None
            if plan.pos_tables:
                pos = np.stack(
                    [plan.pos_tables[(m, j)][xc[:, j], xt[:, j]] for j in range(n_l - 1)], 1
                ).reshape(reps.size, n_l - 1)
            out[m] = _decide(plan, prob, est, above, n_look, pos)
    elif plan.endpoint == "continuous":
        yc, yt = _normal_means(plan, s, reps)
        for m in plan.methods:
            cols = [
                _normal_look(plan, plan.priors[m], yc[:, j], yt[:, j], lk, truth)
                for j, lk in enumerate(plan.looks)
            ]
            prob, est, above = (np.stack([c[i] for c in cols], 1) for i in range(3))
            out[m] = _decide(plan, prob, est, above, n_look)
    else:
        pc = tte_patients(plan, s, reps, "control")
        pt = tte_patients(plan, s, reps, "treatment")
        stats_c = [_tte_at(*pc, lk.month) for lk in plan.looks]
        stats_t = [_tte_at(*pt, lk.month) for lk in plan.looks]
        n_look = np.stack([a[0] + b[0] for a, b in zip(stats_c, stats_t, strict=True)], 1)
        for m in plan.methods:
            cols = [
                _tte_look(plan, plan.priors[m], c[1], c[2], t[1], t[2], truth)
                for c, t in zip(stats_c, stats_t, strict=True)
            ]
            prob, est, above = (np.stack([c[i] for c in cols], 1) for i in range(3))
            out[m] = _decide(plan, prob, est, above, n_look)
    return BatchResult(scenario, start, stop, out)


def merge_batches(batches: Sequence[BatchResult]) -> dict[str, BatchResult]:
    """Concatenate batches per scenario in replicate order (whatever order they finished in)."""
    by: dict[str, list[BatchResult]] = {}
    for b in batches:
        by.setdefault(b.scenario, []).append(b)
    merged = {}
    for name, bs in by.items():
        bs = sorted(bs, key=lambda b: b.start)
        if any(x.stop != y.start for x, y in itertools.pairwise(bs)) or bs[0].start != 0:
            raise DesignError(f"scenario {name}: batches do not tile 0..R-1")
        data = {
            m: {k: np.concatenate([b.data[m][k] for b in bs]) for k in bs[0].data[m]}
            for m in bs[0].data
        }
        merged[name] = BatchResult(name, 0, bs[-1].stop, data)
    return merged


# --------------------------------------------------------------------------- summaries


def _quantile_with_mcse(x: np.ndarray, q: float) -> tuple[float, float]:
    """Sample quantile and its MCSE: half-width of the order-statistic +-1 sd band
    (ranks ``R q +- sqrt(R q (1 - q))``), valid for discrete sample sizes."""
    xs = np.sort(x)
    r = xs.size
    half = math.sqrt(r * q * (1 - q))
    lo = xs[max(0, math.floor(r * q - half))]
    hi = xs[min(r - 1, math.ceil(r * q + half))]
    return float(np.quantile(xs, q, method="inverted_cdf")), float(hi - lo) / 2.0


def _prop(x: np.ndarray) -> tuple[float, float]:
    """A proportion and its MCSE. ``sqrt(p (1 - p) / R)`` is 0 when no (or every) replicate
    succeeded, which claims certainty that R replicates cannot give; the MCSE uses the Wilson
    centre ``(x + 2) / (R + 4)`` (Agresti & Coull 1998) instead, so it is never 0 and equals the
    usual formula to within O(1/R) elsewhere."""
    r = x.size
    p = float(np.mean(x))
    pt = (float(np.sum(x)) + 2.0) / (r + 4.0)
    return p, math.sqrt(pt * (1 - pt) / (r + 4.0))


def operating_characteristics(plan: DesignPlan, results: Mapping[str, BatchResult]) -> pd.DataFrame:
    """One row per (method, scenario) with every OC and its MCSE (column ``<name>_mcse``).

    MCSEs: proportions ``sqrt(p (1 - p) / R)``; means ``sd / sqrt(R)``; RMSE by the delta
    method ``sd(e^2) / (2 RMSE sqrt(R))``; quantiles as in :func:`_quantile_with_mcse`.
    """
    rows = []
    n_l = len(plan.looks)
    for m in plan.methods:
        for s in plan.scenarios:
            d = results[s.name].data[m]
            r = d["success"].size
            truth = plan.true_effect(s)
            err = d["estimate"] - truth
            row: dict[str, Any] = {
                "method": m,
                "scenario": s.name,
                "null": plan.is_null(s),
                "drift": s.control - plan.virtual_parameter,
                "control": s.control,
                "treatment": s.treatment,
                "true_effect": truth,
                "replicates": r,
            }
            row["p_success"], row["p_success_mcse"] = _prop(d["success"])
            n = d["n"].astype(float)
            row["expected_n"], row["expected_n_mcse"] = n.mean(), n.std(ddof=1) / math.sqrt(r)
            for q in (0.05, 0.5, 0.95):
                key = f"n_q{round(q * 100):02d}"
                row[key], row[f"{key}_mcse"] = _quantile_with_mcse(n, q)
            for j in range(n_l):
                at = d["stop_look"] == j
                row[f"p_stop_eff_look{j + 1}"], row[f"p_stop_eff_look{j + 1}_mcse"] = _prop(
                    at & (d["reason"] == 1)
                )
                row[f"p_stop_fut_look{j + 1}"], row[f"p_stop_fut_look{j + 1}_mcse"] = _prop(
                    at & (d["reason"] == 2)
                )
            row["p_reach_final"], row["p_reach_final_mcse"] = _prop(d["reason"] == 0)
            row["bias"], row["bias_mcse"] = err.mean(), err.std(ddof=1) / math.sqrt(r)
            rmse = math.sqrt(float(np.mean(err**2)))
            row["rmse"] = rmse
            row["rmse_mcse"] = float(np.std(err**2, ddof=1)) / (
                2 * max(rmse, 1e-300) * math.sqrt(r)
            )
            row["coverage95"], row["coverage95_mcse"] = _prop(d["covered"])
            rows.append(row)
    return pd.DataFrame(rows)


def _success_at(d: Mapping[str, np.ndarray], c: float) -> np.ndarray:
    return (d["reason"] == 1) | ((d["reason"] == 0) & (d["p_final"] > c))


def _threshold_for(d: Mapping[str, np.ndarray], target: float) -> float:
    """Smallest final threshold ``c`` (among observed values) with ``mean(success(c)) <= target``.

    ``success(c) = efficacy-stop or (reached final and p_final > c)``: a step function of c,
    so the search is exact on the sample.
    """
    r = d["reason"].size
    allowed = math.floor(target * r + 1e-9) - int((d["reason"] == 1).sum())
    if allowed < 0:
        return 1.0
    v = np.sort(d["p_final"][d["reason"] == 0])[::-1]
    if allowed >= v.size:
        return 0.0
    return float(v[allowed])


def calibrate(
    plan: DesignPlan,
    results: Mapping[str, BatchResult],
    *,
    target: float = 0.025,
    scenario: str | None = None,
    bootstrap: int = 200,
) -> pd.DataFrame:
    """Final-look success threshold giving type I error ``target`` in ``scenario``, per method.

    The interim rules are kept; ``c`` is chosen exactly on the replicates of ``scenario`` (see
    :func:`_threshold_for`). Its own error: ``threshold_se`` is the bootstrap sd of ``c``
    (``bootstrap`` resamples of the calibration replicates, keyed stream
    ``("design", "calibration", method)``); the type I error at ``c`` has MCSE
    ``sqrt(a (1 - a) / R)`` (optimistic: ``c`` was fitted on those replicates); power in every
    other scenario is evaluated on its own independent replicates (MCSE ``power_mcse``) and
    ``power_se_threshold`` is the sd of power over the bootstrap thresholds (the search's
    contribution); ``power_se_total`` combines both in quadrature.

    Returns
    -------
    DataFrame: method, calibration_scenario, target, threshold, threshold_se, type1,
    type1_mcse, feasible, then per other scenario: scenario, power, power_mcse,
    power_se_threshold, power_se_total (one row per method and scenario).
    """
    if scenario is None:
        nulls = [s for s in plan.scenarios if plan.is_null(s)]
        if not nulls:
            raise DesignError("calibration: no null scenario (true effect not above delta)")
        no_drift = [s for s in nulls if abs(s.control - plan.virtual_parameter) < 1e-12]
        scenario = (no_drift or nulls)[0].name
    rows = []
    for m in plan.methods:
        d0 = results[scenario].data[m]
        c = _threshold_for(d0, target)
        rng = stream(plan.seed, "design", "calibration", m)
        r = d0["reason"].size
        boots = []
        for _ in range(bootstrap):
            i = rng.integers(0, r, r)
            boots.append(_threshold_for({k: d0[k][i] for k in ("reason", "p_final")}, target))
        boots_a = np.asarray(boots)
        t1, t1_se = _prop(_success_at(d0, c))
        for s in plan.scenarios:
            if s.name == scenario:
                continue
            d = results[s.name].data[m]
            pw, pw_se = _prop(_success_at(d, c))
            pw_b = np.array([np.mean(_success_at(d, cb)) for cb in boots_a])
            se_th = float(pw_b.std(ddof=1))
            rows.append(
                {
                    "method": m,
                    "calibration_scenario": scenario,
                    "target": target,
                    "threshold": c,
                    "threshold_se": float(boots_a.std(ddof=1)),
                    "type1": t1,
                    "type1_mcse": t1_se,
                    "feasible": c < 1.0,
                    "scenario": s.name,
                    "null": plan.is_null(s),
                    "power": pw,
                    "power_mcse": pw_se,
                    "power_se_threshold": se_th,
                    "power_se_total": math.hypot(pw_se, se_th),
                }
            )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- exact reference


def exact_binary_oc(plan: DesignPlan, scenario: str, method: str) -> dict[str, float]:
    """Exact probability of success and expected N of a binary design, by full enumeration.

    Sums over every path of incremental counts: the distribution of ``(x_c, x_t)`` among
    trials still running at look ``j`` is propagated by convolving with the binomial
    increments, and the mass with ``P > threshold`` (efficacy) or ``P < futility`` removed.
    This is the "exact binomial computation" the simulation is checked against.
    """
    s = plan.scenario(scenario)
    mass = np.ones((1, 1))
    prev_c = prev_t = 0
    p_success = 0.0
    e_n = 0.0
    n_l = len(plan.looks)
    for j, lk in enumerate(plan.looks):
        inc_c = stats.binom.pmf(
            np.arange(lk.n_control - prev_c + 1), lk.n_control - prev_c, s.control
        )
        inc_t = stats.binom.pmf(
            np.arange(lk.n_treatment - prev_t + 1), lk.n_treatment - prev_t, s.treatment
        )
        new = np.zeros((lk.n_control + 1, lk.n_treatment + 1))
        for i in range(mass.shape[0]):
            for k in np.nonzero(mass[i])[0]:
                new[i : i + inc_c.size, k : k + inc_t.size] += mass[i, k] * np.outer(inc_c, inc_t)
        mass = new
        p = plan.tables[(method, j)]
        n_here = lk.n_control + lk.n_treatment
        if j < n_l - 1:
            eff = p > plan.efficacy[j]
            fut = ~eff & (p < plan.futility[j])
            p_success += float(mass[eff].sum())
            e_n += n_here * float(mass[eff | fut].sum())
            mass = np.where(eff | fut, 0.0, mass)
        else:
            p_success += float(mass[p > plan.success].sum())
            e_n += n_here * float(mass.sum())
        prev_c, prev_t = lk.n_control, lk.n_treatment
    return {"p_success": p_success, "expected_n": e_n}


# --------------------------------------------------------------------------- MCMC check


def mcmc_agreement(
    plan: DesignPlan,
    protocol: Any,
    *,
    scenario: str,
    replicates: Sequence[int],
    method: str | None = None,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 2,
    seed: int = 11,
) -> pd.DataFrame:
    """Compare the fast path's final-look posterior probability with full MCMC.

    For each replicate the patient-level data at the final look are rebuilt from the same
    keyed draws (binary: the simulated counts as 0/1 rows; tte: the simulated patients with
    their censoring at the final look) and fitted with :func:`insilico_trials.infer.outcomes.fit_outcome`
    using the protocol's ``analysis.model`` and the same control prior. Continuous is exact
    conjugate with known sigma and is not checked here.

    Returns
    -------
    DataFrame: replicate, fast, mcmc, difference, mcmc_mcse (binomial MCSE of the MCMC
    probability using its bulk ESS is not available per quantity, so ``sqrt(p (1 - p) /
    (chains draws))`` is reported as a lower bound), converged.
    """
    from insilico_trials.infer.outcomes import fit_outcome

    method = method or plan.methods[0]
    s = plan.scenario(scenario)
    reps = np.asarray(replicates, dtype=np.int64)
    fast = simulate_batch(plan, scenario, 0, int(reps.max()) + 1).data[method]["p_final"][reps]
    lk = plan.looks[-1]
    rows = []
    dec = protocol.analysis.decision
    for k, r in enumerate(reps):
        one = np.array([r])
        if plan.endpoint == "binary":
            xc, xt = _binary_counts(plan, s, one)
            xc, xt = int(xc[0, -1]), int(xt[0, -1])
            data = pd.DataFrame(
                {
                    "arm": ["control"] * lk.n_control + ["treatment"] * lk.n_treatment,
                    "response": np.r_[
                        np.ones(xc),
                        np.zeros(lk.n_control - xc),
                        np.ones(xt),
                        np.zeros(lk.n_treatment - xt),
                    ].astype(int),
                }
            )
        elif plan.endpoint == "tte":
            frames = []
            for arm in ("control", "treatment"):
                entry, event, drop = (a[0] for a in tte_patients(plan, s, one, arm))
                on = entry <= lk.month
                follow = lk.month - entry[on]
                t = np.minimum(np.minimum(event[on], drop[on]), follow)
                ev = (event[on] <= np.minimum(drop[on], follow)).astype(int)
                frames.append(
                    pd.DataFrame(
                        {"arm": arm, "time": np.maximum(t, 1e-3) * DAYS_PER_MONTH, "event": ev}
                    )
                )
            data = pd.concat(frames, ignore_index=True)
        else:
            raise DesignError("mcmc_agreement: continuous is exact conjugate; nothing to check")
        fit = fit_outcome(
            data,
            protocol.analysis.model,
            decision={"quantity": dec.quantity, "delta": dec.delta, "threshold": dec.threshold},
            prior=plan.priors[method],
            draws=draws,
            tune=tune,
            chains=chains,
            seed=seed + int(r),
        )
        p = float(fit.probability)
        rows.append(
            {
                "replicate": int(r),
                "fast": float(fast[k]),
                "mcmc": p,
                "difference": p - float(fast[k]),
                "mcmc_mcse_lower_bound": math.sqrt(max(p * (1 - p), 1e-12) / (chains * draws)),
                "converged": bool(fit.converged),
            }
        )
    return pd.DataFrame(rows)
