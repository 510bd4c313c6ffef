"""Global sensitivity of the decision to the uncertain typical values (model credibility
evidence in the sense of ASME V&V 40 / FDA 2023 computational-model guidance).

:func:`sobol_plan` draws a Saltelli/Sobol sample (SALib) of the typical values,
:func:`sobol_evaluate` simulates a batch of evaluations for one arm on the fast path (no
MCMC), :func:`sobol_indices` turns them into first-order and total indices. ``run_trial`` runs
these as its declared ``sensitivity`` stage through its executor (``sensitivity.json`` in the
archive); :func:`sobol_sensitivity` is the same, serially.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "DEFAULT_RSE",
    "SobolPlan",
    "decision_quantity",
    "sobol_batches",
    "sobol_evaluate",
    "sobol_indices",
    "sobol_plan",
    "sobol_sensitivity",
]

#: Relative SE assumed for a typical value whose protocol states none (``uncertainty_rse: 0``).
DEFAULT_RSE = 0.3
# Lower and upper probability of the range sampled for each typical value: its central 95%.
_PROB_RANGE = (0.025, 0.975)
_BATCH_PATIENTS = 4000


def _uncertain_parameters(protocol: Any) -> list[str]:
    """Drug, disease and clearance parameters whose typical values drive the decision."""
    from insilico_trials.sim.trial import _pk_parameter_names, _tumour_parameter_names

    pk = _pk_parameter_names(protocol)
    pop = protocol.population.parameters
    if protocol.disease.is_file:
        # a PK-PD model file: its disease parameters are those with a stated uncertainty
        names = [p for p in pk if p != "SLD0" and p in pop and pop[p].uncertainty_rse > 0]
    else:
        names = [p for p in _tumour_parameter_names(protocol) if p != "SLD0"]
    if "CL" in pk and "CL" not in names and any(a.regimen is not None for a in protocol.arms):
        names.append("CL")
    return [n for n in names if n in protocol.population.parameters]


def decision_quantity(protocol: Any, endpoints: pd.DataFrame) -> dict[str, float]:
    """The decision-relevant contrast, treatment minus control, without MCMC.

    Binary endpoints: difference in response rate, and P(success) from independent
    Beta(1 + r, 1 + n - r) posteriors (normal approximation of the difference).
    Continuous: difference in means. Time to event: log ratio of event rates (exponential).
    """
    from insilico_trials.sim.trial import analysis_frame

    a = protocol.analysis
    treat = a.treatment or protocol.treatment_arms[0].name
    frame = analysis_frame(protocol, endpoints)
    c = frame[frame["arm"] == protocol.control_arm.name]
    t = frame[frame["arm"] == treat]
    if a.model == "binary":
        rc, nc = float(c["response"].sum()), len(c)
        rt, nt = float(t["response"].sum()), len(t)
        mc, vc = _beta_moments(1 + rc, 1 + nc - rc)
        mt, vt = _beta_moments(1 + rt, 1 + nt - rt)
        z = (mt - mc - a.decision.delta) / math.sqrt(vc + vt)
        p = 0.5 * math.erfc(-z / math.sqrt(2.0))
        if a.decision.side == "less":
            p = 1.0 - p
        return {"rate_difference": rt / nt - rc / nc, "p_success": p}
    if a.model == "continuous":
        return {"mean_difference": float(t["value"].mean() - c["value"].mean())}
    rate_t = (t["event"].sum() + 0.5) / t["time"].sum()
    rate_c = (c["event"].sum() + 0.5) / c["time"].sum()
    return {"log_hazard_ratio": float(np.log(rate_t / rate_c))}


def _beta_moments(a: float, b: float) -> tuple[float, float]:
    return a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))


@dataclass(frozen=True)
class SobolPlan:
    """The Saltelli design of :func:`sobol_sensitivity`: which typical values vary, over what
    range, and the factor each evaluation applies to each of them."""

    names: tuple[str, ...]
    parameters: tuple[dict[str, Any], ...]
    problem: dict[str, Any]
    factors: np.ndarray  # (evaluations, parameters)
    n_base: int
    max_patients: int
    seed: int


def sobol_plan(
    protocol: Any, *, n_base: int = 32, seed: int | None = None, max_patients: int = 500
) -> SobolPlan | None:
    """The Saltelli sample of the uncertain typical values; None when there is none to vary.

    Each uncertain typical value (tumour-model rates and CL) is varied over the central 95% of
    its replicate-level uncertainty (lognormal, relative SE from the protocol's
    ``uncertainty_rse``, or :data:`DEFAULT_RSE` where the protocol states none).

    Parameters
    ----------
    n_base
        Saltelli base sample size (a power of 2); ``n_base * (D + 2)`` model evaluations.
    seed
        Sampler and bootstrap seed; defaults to the protocol seed.
    max_patients
        Virtual patients per arm used (the first ones of each arm).
    """
    from SALib.sample import sobol as sobol_sample
    from scipy.stats import norm

    seed = protocol.seed if seed is None else seed
    names = _uncertain_parameters(protocol)
    if not names:  # e.g. zhang2017: no uncertain typical value drives the decision quantity
        return None
    pop = protocol.population.parameters
    params = []
    for n in names:
        rse = float(pop[n].uncertainty_rse)
        assumed = rse == 0
        rse = DEFAULT_RSE if assumed else rse
        s = math.sqrt(math.log1p(rse * rse))
        lo, hi = (pop[n].typical * math.exp(norm.ppf(q) * s) for q in _PROB_RANGE)
        params.append(
            {"name": n, "typical": pop[n].typical, "rse": rse, "rse_assumed": assumed,
             "low": lo, "high": hi, "log_sd": s}
        )  # fmt: skip
    problem = {"num_vars": len(names), "names": names, "bounds": [list(_PROB_RANGE)] * len(names)}
    u = sobol_sample.sample(problem, n_base, calc_second_order=False, seed=seed)
    factors = np.exp(norm.ppf(u) * np.array([p["log_sd"] for p in params]))
    return SobolPlan(tuple(names), tuple(params), problem, factors, n_base, max_patients, seed)


def sobol_batches(plan: SobolPlan, arm_patients: int) -> list[tuple[int, int]]:
    """Evaluation ranges ``[start, stop)`` simulated together for an arm of ``arm_patients``
    patients (about :data:`_BATCH_PATIENTS` patient-evaluations per batch)."""
    n_pat = min(arm_patients, plan.max_patients)
    per_batch = max(1, _BATCH_PATIENTS // max(n_pat, 1))
    n = len(plan.factors)
    return [(s, min(s + per_batch, n)) for s in range(0, n, per_batch)]


def sobol_evaluate(
    protocol: Any, plan: SobolPlan, arm_name: str, cohort: pd.DataFrame, start: int, stop: int
) -> pd.DataFrame:
    """Endpoints of evaluations ``start..stop-1`` for one arm (column ``sample``).

    The arm's virtual patients are held fixed (common random numbers): a typical value acts on
    every patient's individual value multiplicatively, so each evaluation rescales the
    cohort's columns. Only the first ``plan.max_patients`` patients are used (a random sample,
    as patient order is random), which keeps the cost to seconds for any trial size.
    """
    from insilico_trials.sim import trial

    base = cohort.iloc[: plan.max_patients]
    n_pat = len(base)
    block = plan.factors[start:stop]
    big = pd.concat([base] * len(block), ignore_index=True)
    for j, n in enumerate(plan.names):
        big[n] = big[n].to_numpy(dtype=float) * np.repeat(block[:, j], n_pat)
    ep = trial.simulate_chunk(protocol, arm_name, big).endpoints
    ep["sample"] = np.repeat(np.arange(start, stop), n_pat)
    return ep


def sobol_indices(protocol: Any, plan: SobolPlan, parts: list[pd.DataFrame]) -> dict[str, Any]:
    """First-order and total Sobol indices from the evaluated ``parts`` (every arm's batches,
    arm by arm in protocol order, batches in evaluation order)."""
    from SALib.analyze import sobol as sobol_analyze

    joined = pd.concat(parts, ignore_index=True)
    values: dict[str, list[float]] = {}
    for _, ep in joined.groupby("sample", sort=True):
        for k, v in decision_quantity(protocol, ep).items():
            values.setdefault(k, []).append(float(v))
    outputs = {}
    for k, ys in values.items():
        y = np.asarray(ys)
        if k == "p_success" or np.ptp(y) == 0:
            # P(success) saturates near 0 or 1, where variance-based indices are unstable
            # (total indices above 1); only its distribution is reported (uncertainty).
            si = {}
        else:
            res = sobol_analyze.analyze(
                plan.problem, y, calc_second_order=False, seed=plan.seed, print_to_console=False
            )
            si = {key: [float(x) for x in res[key]] for key in ("S1", "S1_conf", "ST", "ST_conf")}
        outputs[k] = {**si, "mean": float(y.mean()), "sd": float(y.std(ddof=1)),
                      "p05": float(np.quantile(y, 0.05)), "p95": float(np.quantile(y, 0.95))}  # fmt: skip
    params = [{k: v for k, v in p.items() if k != "log_sd"} for p in plan.parameters]
    return {
        "method": "Sobol indices (SALib Saltelli/Sobol sequence, first-order and total), "
        "fast simulation path without MCMC, virtual patients held fixed",
        "parameters": params,
        "outputs": outputs,
        "n_base": plan.n_base,
        "patients_per_arm": {a.name: min(a.n, plan.max_patients) for a in protocol.arms},
        "n_evaluations": len(plan.factors),
        "seed": plan.seed,
        "default_rse": DEFAULT_RSE,
    }


def sobol_sensitivity(
    protocol: Any,
    *,
    n_base: int = 32,
    seed: int | None = None,
    max_patients: int = 500,
    cohorts: dict[str, pd.DataFrame] | None = None,
) -> dict[str, Any] | None:
    """First-order and total Sobol indices of the decision quantity to the typical values,
    serially (``run_trial`` runs the same evaluations through its executor).

    ``cohorts`` are the arms' virtual patients (sampled again when not given). Returns None
    when the protocol has no uncertain typical value to vary, else ``parameters`` (name,
    typical, rse, rse_assumed, low, high), ``outputs`` ({quantity: {S1, S1_conf, ST, ST_conf,
    mean, sd, p05, p95}}; indices only for the contrast, not for ``p_success``), ``n_base``,
    ``n_evaluations``, ``method``.
    """
    from insilico_trials.sim import trial

    plan = sobol_plan(protocol, n_base=n_base, seed=seed, max_patients=max_patients)
    if plan is None:
        return None
    if cohorts is None:
        cohorts = {a.name: trial.arm_cohort(protocol, a) for a in protocol.arms}
    parts = [
        sobol_evaluate(protocol, plan, arm.name, cohorts[arm.name], a, b)
        for arm in protocol.arms
        for a, b in sobol_batches(plan, len(cohorts[arm.name]))
    ]
    return sobol_indices(protocol, plan, parts)
