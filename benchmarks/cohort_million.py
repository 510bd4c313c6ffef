"""Benchmark: 1,000,000 virtual patients, 10 correlated covariates, eligibility criteria.

Run: ``uv run python benchmarks/cohort_million.py``. Prints wall time, peak RSS and, as the
baseline measured in the same run, the time of drawing the raw per-patient normals alone (the
floor any cohort generator pays). Goal: under 5 s and 2 GB on one core.
"""

from __future__ import annotations

import resource
import sys
import time

import numpy as np

from insilico_trials.sim.cohort import sample_cohort
from insilico_trials.sim.rng import patient_normals
from insilico_trials.spec.population import Population

N = 1_000_000
NAMES = ["WT", "HT", "AGE", "SCR", "ALB", "LDH", "NLR", "SLD", "HB", "PLT"]


def spec() -> dict:
    rng = np.random.default_rng(0)
    a = rng.uniform(-0.5, 0.5, (10, 10))
    cov = a @ a.T + np.eye(10)
    d = np.sqrt(np.diag(cov))
    corr = np.round(cov / np.outer(d, d), 6)
    np.fill_diagonal(corr, 1.0)
    ln = {"distribution": "lognormal"}
    return {
        "covariates": {
            "WT": {**ln, "mean": 75, "sd": 15, "lower": 40, "upper": 160, "unit": "kg"},
            "HT": {"distribution": "normal", "mean": 170, "sd": 10, "unit": "cm"},
            "AGE": {"distribution": "normal", "mean": 62, "sd": 10, "lower": 18, "upper": 90},
            "SCR": {**ln, "mean": 0.9, "sd": 0.25, "unit": "mg/dL"},
            "ALB": {"distribution": "normal", "mean": 40, "sd": 5},
            "LDH": {**ln, "mean": 250, "sd": 100},
            "NLR": {**ln, "mean": 4, "sd": 3},
            "SLD": {**ln, "mean": 80, "sd": 40, "lower": 10, "upper": 300},
            "HB": {"distribution": "normal", "mean": 13, "sd": 1.6},
            "PLT": {**ln, "mean": 250, "sd": 70},
            "SEX": {"distribution": "categorical", "categories": {"F": 0.45, "M": 0.55}},
            "ECOG": {"distribution": "categorical", "categories": {0: 0.45, 1: 0.45, 2: 0.1}},
        },
        "correlation": {"names": NAMES, "matrix": corr.tolist()},
        "derived": ["BSA", "BMI", "CRCL"],
        "eligibility": {
            "inclusion": ["AGE >= 18", "CRCL > 30 and ECOG <= 1", "HB >= 9", "SLD >= 10"],
            "exclusion": ["BMI > 40", "LDH > 2.5 * 250"],
        },
        "parameters": {
            "CL": {
                "typical": 1.1,
                "omega": 0.09,
                "effects": [
                    {"covariate": "WT", "form": "power", "exponent": 0.75, "reference": 70}
                ],
            },
            "V": {"typical": 20, "omega": 0.04},
            "KG": {"typical": 0.005, "omega": 0.25},
            "KD": {"typical": 0.01, "omega": 0.25},
        },
    }


def main() -> None:
    pop = Population.model_validate(spec())
    t0 = time.perf_counter()
    patient_normals(1, ("bench",), np.arange(N), 10)
    floor = time.perf_counter() - t0
    t0 = time.perf_counter()
    cohort = sample_cohort(pop, N, seed=1, arm="control")
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mb = rss / 2**20 if sys.platform == "darwin" else rss / 1024
    print(f"patients enrolled     {cohort.n:,} ({cohort.table.shape[1]} columns)")
    print(
        f"candidates screened   {cohort.screened:,} "
        f"(screen-fail rate {cohort.screen_fail_rate:.3f})"
    )
    print(f"wall time             {wall:.2f} s  (goal < 5 s)")
    print(f"baseline: raw normals {floor:.2f} s for {N:,} x 10  (ratio {wall / floor:.1f}x)")
    print(f"peak RSS              {peak_mb:.0f} MB  (goal < 2048 MB)")


if __name__ == "__main__":
    main()
