"""PROCOVA with the product's own prognostic model: trained on virtual control patients of a
protocol, used to score the patients of simulated randomised trials, analysed by ANCOVA.

Coverage of the 95% interval and agreement of the reported se with the spread of the
estimates are checked by simulation (R = 150 trials of 30 + 30 patients, the dose-ranging
example with tumour growth KL depending on AGE and CRCL so that baseline covariates are
prognostic). The true average effect (d150 - placebo) is the difference of arm means over
8,000 patients per arm from independent streams (its Monte Carlo sd, about 0.3, is under 10%
of a trial's se). Bounds: coverage 0.95 +- 3 sqrt(0.95 0.05 / 150) = +-0.053.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from insilico_trials.infer.procova import fit_prognostic_model, procova_ancova
from insilico_trials.infer.synthetic import prognostic_covariates
from insilico_trials.run.trial import run_trial
from insilico_trials.run.virtual import baseline_frame
from insilico_trials.sim import trial
from insilico_trials.spec.protocol import load_protocol
from insilico_trials.testing import with_fields

ROOT = Path(__file__).resolve().parents[1]
DOSE = ROOT / "protocols" / "dose_ranging_pkpd.yaml"


def _protocol():
    p = load_protocol(DOSE)
    kl = p.population.parameters["KL"].model_dump(mode="json")
    kl["omega"] = 0.02
    kl["effects"] = [
        {"covariate": "AGE", "form": "exponential", "coefficient": 0.08, "reference": 60},
        {"covariate": "CRCL", "form": "exponential", "coefficient": -0.01, "reference": 90},
    ]
    return with_fields(
        p,
        {
            "population.parameters.KL": kl,
            "synthetic_control.method": "procova",
            "synthetic_control.virtual_replicates": 2,
            "synthetic_control.virtual_patients": 1000,
            "sensitivity.sobol": False,
        },
    )


def _arm_frame(protocol, arm_name: str, *, replicate: int, n: int):
    arm = next(a for a in protocol.arms if a.name == arm_name)
    cohort = trial.arm_cohort(protocol, arm, replicate=replicate, n=n)
    res = trial.simulate_chunk(protocol, arm_name, cohort, replicate=replicate)
    return baseline_frame(protocol, cohort, res.endpoints)


@pytest.mark.slow
def test_twin_prognostic_score_ancova_covers_the_true_effect():
    import pandas as pd

    protocol = _protocol()
    control, treat = "placebo", "d150"
    # the prognostic model: trained on virtual control patients (as run does)
    virtual = pd.concat(
        [_arm_frame(protocol, control, replicate=r, n=1000) for r in (1, 2)], ignore_index=True
    )
    model = fit_prognostic_model(virtual, covariates=prognostic_covariates(protocol))
    assert model.r_squared > 0.3, model  # the covariates are prognostic in this variant
    truth = float(
        _arm_frame(protocol, treat, replicate=900, n=8000)["value"].mean()
        - _arm_frame(protocol, control, replicate=901, n=8000)["value"].mean()
    )
    est, se, se_unadj, covered = [], [], [], []
    for r in range(150):
        frame = pd.concat(
            [_arm_frame(protocol, a, replicate=1000 + r, n=30) for a in (control, treat)],
            ignore_index=True,
        )
        res = procova_ancova(model.with_score(frame), control=control, treatment=treat)
        est.append(res.estimate)
        se.append(res.se)
        se_unadj.append(res.unadjusted_se)
        covered.append(res.ci[0] <= truth <= res.ci[1])
    est, se = np.asarray(est), np.asarray(se)
    coverage = float(np.mean(covered))
    assert abs(coverage - 0.95) <= 3 * math.sqrt(0.95 * 0.05 / 150), coverage
    # the reported se matches the spread of the estimates (sd of an sd estimate from 150
    # trials: about 6%; 20% allowed) and adjusting for the score shrinks it
    assert np.sqrt(np.mean(se**2)) == pytest.approx(est.std(ddof=1), rel=0.2)
    # measured: coverage 0.933, mean se 8.32 (unadjusted 10.49), sd of estimates 8.51, R^2 0.44
    assert np.mean(se) < 0.9 * np.mean(se_unadj)


@pytest.mark.slow
def test_run_archives_the_procova_analysis():
    protocol = with_fields(_protocol(), {"synthetic_control.virtual_patients": 200})
    result = run_trial(protocol, fit=lambda p, s, prior: None)
    pc = result.procova
    assert pc is not None and pc["model"]["n_train"] == 400
    assert pc["n_control"] == 30 and pc["n_treatment"] == 30
    assert pc["ci95"][0] < pc["estimate"] < pc["ci95"][1]
    assert pc["se"] < pc["unadjusted_se"]
    assert result.virtual_prior is None  # PROCOVA does not borrow the control parameter
