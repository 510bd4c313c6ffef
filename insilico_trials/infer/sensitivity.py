"""Model credibility evidence (ASME V&V 40 / FDA 2023 computational-model guidance).

Three pieces, each a plain function:

* :func:`sobol_sensitivity` - global sensitivity of the decision quantity to the uncertain
  population typical values, on the fast simulation path (no MCMC), with SALib's Saltelli/Sobol
  sampler; archived by ``runs.write_run_outputs`` as ``sensitivity.json``.
* :func:`read_test_results` - code-verification evidence: counts of passed/failed reference
  tests from a JUnit XML file recorded at build time (``pytest --junitxml=...``).
* :func:`model_risk` - the V&V 40 model-risk grid (model influence x decision consequence).
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "DEFAULT_RSE",
    "decision_quantity",
    "model_risk",
    "read_test_results",
    "recorded_test_results",
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

    names = [p for p in _tumour_parameter_names(protocol) if p != "SLD0"]
    pk = _pk_parameter_names(protocol)
    if "CL" in pk and any(a.regimen is not None for a in protocol.arms):
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


def sobol_sensitivity(
    protocol: Any, *, n_base: int = 32, seed: int | None = None, max_patients: int = 500
) -> dict[str, Any] | None:
    """First-order and total Sobol indices of the decision quantity to the typical values.

    Each uncertain typical value (tumour-model rates and CL) is varied over the central 95% of
    its replicate-level uncertainty (lognormal, relative SE from the protocol's
    ``uncertainty_rse``, or :data:`DEFAULT_RSE` where the protocol states none). The arms' virtual
    patients are held fixed (common random numbers): a typical value acts on every patient's
    individual value multiplicatively, so each Saltelli sample rescales the cohort's columns.

    Parameters
    ----------
    n_base
        Saltelli base sample size (a power of 2); ``n_base * (D + 2)`` model evaluations.
    seed
        Sampler and bootstrap seed; defaults to the protocol seed.
    max_patients
        Virtual patients per arm used (the first ones of each arm).

    Returns
    -------
    dict or None
        None when the protocol has no uncertain typical value to vary. Otherwise
        ``parameters`` (name, typical, rse, rse_assumed, low, high), ``outputs`` ({quantity:
        {S1, S1_conf, ST, ST_conf, mean, sd, p05, p95}}; indices only for the contrast, not
        for ``p_success``), ``n_base``, ``n_evaluations``, ``method``.
    """
    from SALib.analyze import sobol as sobol_analyze
    from SALib.sample import sobol as sobol_sample
    from scipy.stats import norm

    from insilico_trials.sim import trial

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
    cohorts = {a.name: trial.arm_cohort(protocol, a) for a in protocol.arms}
    per_arm: dict[str, list[pd.DataFrame]] = {}
    for arm in protocol.arms:
        # Cost grows with arm size x evaluations; the first patients (a random sample, as
        # patient order is random) keep it to seconds for any trial size.
        base = cohorts[arm.name].iloc[:max_patients]
        n_pat = len(base)
        per_batch = max(1, _BATCH_PATIENTS // max(n_pat, 1))
        parts = []
        for start in range(0, len(factors), per_batch):
            block = factors[start : start + per_batch]
            big = pd.concat([base] * len(block), ignore_index=True)
            for j, n in enumerate(names):
                big[n] = big[n].to_numpy(dtype=float) * np.repeat(block[:, j], n_pat)
            ep = trial.simulate_chunk(protocol, arm.name, big).endpoints
            ep["sample"] = np.repeat(np.arange(start, start + len(block)), n_pat)
            parts.append(ep)
        per_arm[arm.name] = parts
    joined = pd.concat([p for parts in per_arm.values() for p in parts], ignore_index=True)
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
                problem, y, calc_second_order=False, seed=seed, print_to_console=False
            )
            si = {key: [float(x) for x in res[key]] for key in ("S1", "S1_conf", "ST", "ST_conf")}
        outputs[k] = {**si, "mean": float(y.mean()), "sd": float(y.std(ddof=1)),
                      "p05": float(np.quantile(y, 0.05)), "p95": float(np.quantile(y, 0.95))}  # fmt: skip
    for p in params:
        p.pop("log_sd")
    return {
        "method": "Sobol indices (SALib Saltelli/Sobol sequence, first-order and total), "
        "fast simulation path without MCMC, virtual patients held fixed",
        "parameters": params,
        "outputs": outputs,
        "n_base": n_base,
        "patients_per_arm": {a.name: min(a.n, max_patients) for a in protocol.arms},
        "n_evaluations": len(factors),
        "seed": seed,
        "default_rse": DEFAULT_RSE,
    }


def recorded_test_results() -> Path | None:
    """Where build-time test results are: ``$INSILICO_TEST_RESULTS`` or ``build-artifacts/junit.xml``."""
    env = os.environ.get("INSILICO_TEST_RESULTS")
    if env:
        return Path(env)
    path = Path(__file__).resolve().parents[2] / "build-artifacts" / "junit.xml"
    return path if path.exists() else None


def read_test_results(path: Path | None) -> dict[str, Any] | None:
    """Counts of a JUnit XML file (pytest ``--junitxml``): per test module and in total.

    Returns ``None`` when there is no file. Reference-value tests are the modules whose tests
    compare to closed-form or published values (tier 1 and 2 of the test suite).
    """
    if path is None or not Path(path).exists():
        return None
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    modules: dict[str, dict[str, int]] = {}
    timestamp = ""
    for suite in suites:
        timestamp = timestamp or suite.get("timestamp", "")
        for case in suite.iter("testcase"):
            module = (case.get("classname") or "?").split(".")
            mod = next((m for m in module if m.startswith("test_")), module[-1])
            row = modules.setdefault(mod, {"passed": 0, "failed": 0, "skipped": 0})
            if case.find("failure") is not None or case.find("error") is not None:
                row["failed"] += 1
            elif case.find("skipped") is not None:
                row["skipped"] += 1
            else:
                row["passed"] += 1
    total = {k: sum(r[k] for r in modules.values()) for k in ("passed", "failed", "skipped")}
    return {"source": str(path), "timestamp": timestamp, "modules": modules, "total": total}


def model_risk(*, influence: str, consequence: str) -> dict[str, Any]:
    """V&V 40 model risk from model influence and decision consequence (low/medium/high)."""
    levels = ["low", "medium", "high"]
    score = levels.index(influence) + levels.index(consequence)
    risk = levels[min(2, (score + 1) // 2)] if score != 2 else "medium"
    return {"influence": influence, "consequence": consequence, "risk": risk}
