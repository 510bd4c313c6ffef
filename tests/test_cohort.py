"""Virtual cohorts: statistical checks (tier 3; every test states its seed and its bound, which is
a multiple of the standard error), chunk invariance, enrolment, parameters, output."""

import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from scipy import stats

from insilico_trials.sim.cohort import (
    CalibrationError,
    EnrolmentError,
    baseline_table,
    calibrate,
    calibrated_cohort,
    population_draw,
    read_cohort,
    sample_cohort,
    write_cohort,
)
from insilico_trials.spec.population import Population

Z = 4.5  # bounds are Z standard errors: a false alarm has probability < 1e-5 per check

R = [[1.0, 0.5, 0.1], [0.5, 1.0, -0.3], [0.1, -0.3, 1.0]]
SPEC = {
    "covariates": {
        "WT": {"distribution": "lognormal", "mean": 75, "sd": 15, "unit": "kg"},
        "HT": {"distribution": "normal", "mean": 170, "sd": 10, "unit": "cm"},
        "AGE": {"distribution": "normal", "mean": 62, "sd": 10, "lower": 40, "upper": 80},
        "SCR": {"distribution": "lognormal", "mean": 0.9, "sd": 0.25, "unit": "mg/dL"},
        "SEX": {"distribution": "categorical", "categories": {"F": 0.45, "M": 0.55}},
        "ECOG": {"distribution": "categorical", "categories": {0: 0.5, 1: 0.4, 2: 0.1}},
        "ANC": {
            "distribution": "categorical",
            "categories": {"EUR": 0.6, "AFR": 0.25, "EAS": 0.15},
        },
        "CYP": {
            "distribution": "categorical",
            "by": "ANC",
            "frequencies": {
                "EUR": {"PM": 0.07, "IM": 0.1, "NM": 0.8, "UM": 0.03},
                "AFR": {"PM": 0.02, "IM": 0.3, "NM": 0.63, "UM": 0.05},
                "EAS": {"PM": 0.01, "IM": 0.4, "NM": 0.58, "UM": 0.01},
            },
        },
    },
    "correlation": {"names": ["WT", "HT", "AGE"], "matrix": R},
    "derived": ["BSA", "BMI", "CRCL"],
    "parameters": {
        "CL": {
            "typical": 1.1,
            "omega": 0.09,
            "uncertainty_rse": 0.2,
            "effects": [
                {"covariate": "WT", "form": "power", "exponent": 0.75, "reference": 70},
                {"covariate": "CYP", "form": "categorical", "factors": {"PM": 0.5, "UM": 1.4}},
            ],
        },
        "V": {"typical": 20, "omega": 0.04},
        "KA": {"typical": 1.2},
        "EMAX": {"typical": 10, "distribution": "normal", "omega": 4},
    },
    "omega_block": {"names": ["CL", "V"], "matrix": [[0.09, 0.03], [0.03, 0.04]]},
}
POP = Population.model_validate(SPEC)
N = 100_000


@pytest.fixture(scope="module")
def big():
    # seed 2026; no eligibility criteria, so the table is the prior itself.
    return sample_cohort(POP, N, seed=2026, arm="control").table


def test_continuous_moments(big):
    ht = big["HT"].to_numpy()
    assert abs(ht.mean() - 170) < Z * 10 / math.sqrt(N)
    assert abs(ht.std() - 10) < Z * 10 / math.sqrt(2 * N)
    # lognormal: arithmetic mean, and normal moments of the logs
    wt = big["WT"].to_numpy()
    assert abs(wt.mean() - 75) < Z * 15 / math.sqrt(N)
    mu, s = POP.covariates["WT"].log_params
    assert abs(np.log(wt).mean() - mu) < Z * s / math.sqrt(N)
    assert abs(np.log(wt).std() - s) < Z * s / math.sqrt(2 * N)
    # truncated normal: moments of the truncated law
    age = big["AGE"].to_numpy()
    tn = stats.truncnorm((40 - 62) / 10, (80 - 62) / 10, loc=62, scale=10)
    assert age.min() >= 40 and age.max() <= 80
    assert abs(age.mean() - tn.mean()) < Z * tn.std() / math.sqrt(N)
    assert abs(age.std() - tn.std()) < Z * tn.std() / math.sqrt(2 * N)
    assert stats.kstest(age, tn.cdf).pvalue > 1e-5


def test_copula_correlations(big):
    # Pearson correlation of the normal scores (logs for WT; AGE is truncated, so compare the
    # normal scores recovered through its truncated CDF).
    tn = stats.truncnorm((40 - 62) / 10, (80 - 62) / 10, loc=62, scale=10)
    scores = np.column_stack([np.log(big["WT"]), big["HT"], stats.norm.ppf(tn.cdf(big["AGE"]))])
    r = np.corrcoef(scores, rowvar=False)
    for i in range(3):
        for j in range(i):
            se = (1 - R[i][j] ** 2) / math.sqrt(N)
            assert abs(r[i, j] - R[i][j]) < Z * se, (i, j, r[i, j])
    # uncorrelated covariates stay uncorrelated
    assert abs(np.corrcoef(big["SCR"], big["HT"])[0, 1]) < Z / math.sqrt(N)


def test_category_frequencies(big):
    def check(series, freqs):
        n = len(series)
        share = series.value_counts(normalize=True)
        for lab, p in freqs.items():
            assert abs(share.get(lab, 0.0) - p) < Z * math.sqrt(p * (1 - p) / n), (lab, p)

    check(big["SEX"], {"F": 0.45, "M": 0.55})
    check(big["ECOG"], {0: 0.5, 1: 0.4, 2: 0.1})
    check(big["ANC"], {"EUR": 0.6, "AFR": 0.25, "EAS": 0.15})
    for anc, freqs in SPEC["covariates"]["CYP"]["frequencies"].items():
        check(big.loc[big["ANC"] == anc, "CYP"], freqs)
    assert list(big["CYP"].cat.categories) == ["PM", "IM", "NM", "UM"]


def test_derived_formulas(big):
    row = big.iloc[7]
    assert row["BMI"] == pytest.approx(row["WT"] / (row["HT"] / 100) ** 2)
    assert row["BSA"] == pytest.approx(math.sqrt(row["WT"] * row["HT"] / 3600))
    crcl = (140 - row["AGE"]) * row["WT"] / (72 * row["SCR"]) * (0.85 if row["SEX"] == "F" else 1)
    assert row["CRCL"] == pytest.approx(crcl)


def test_individual_parameters(big):
    # ETA recovered from the values: mean 0, covariance the declared block.
    effect = (big["WT"] / 70) ** 0.75 * big["CYP"].map({"PM": 0.5, "IM": 1, "NM": 1, "UM": 1.4})
    eta_cl = np.log(big["CL"] / (1.1 * effect.astype(float)))
    eta_v = np.log(big["V"] / 20)
    cov = np.cov(eta_cl, eta_v)
    for (i, j), target in {(0, 0): 0.09, (1, 1): 0.04, (0, 1): 0.03}.items():
        vi, vj = [0.09, 0.04][i], [0.09, 0.04][j]
        se = math.sqrt((vi * vj + target**2) / N)  # SE of a sample covariance (normal data)
        assert abs(cov[i, j] - target) < Z * se
    assert abs(eta_cl.mean()) < Z * 0.3 / math.sqrt(N)
    assert (big["KA"] == 1.2).all()  # no omega: no IIV
    emax = big["EMAX"].to_numpy()  # normal distribution: additive ETA
    assert abs(emax.mean() - 10) < Z * 2 / math.sqrt(N)
    assert abs(emax.var() - 4) < Z * 4 * math.sqrt(2 / N)


@pytest.mark.parametrize("chunks", [4, 64])
def test_same_cohort_whatever_the_chunking(chunks):
    pop = Population.model_validate(
        {
            **SPEC,
            "eligibility": {"inclusion": ["CRCL > 60", "ECOG <= 1"], "exclusion": ["BMI > 32"]},
        }
    )
    one = sample_cohort(pop, 3000, seed=9, arm="treatment", replicate=2, uncertainty=True)
    other = sample_cohort(
        pop, 3000, seed=9, arm="treatment", replicate=2, uncertainty=True, chunks=chunks
    )
    pd.testing.assert_frame_equal(one.table, other.table, check_exact=True)
    for col in one.table.select_dtypes("number"):  # bit for bit, NaN-safe
        a, b = one.table[col].to_numpy(), other.table[col].to_numpy()
        assert a.tobytes() == b.tobytes(), col
    assert one.screened == other.screened and one.screen_failures == other.screen_failures


def test_enrolment_is_the_first_eligible_candidates():
    pop = Population.model_validate(
        {**SPEC, "eligibility": {"inclusion": ["AGE >= 65"], "exclusion": ["SEX == 'F'"]}}
    )
    small = sample_cohort(pop, 50, seed=3, arm="a")
    large = sample_cohort(pop, 400, seed=3, arm="a")
    pd.testing.assert_frame_equal(small.table, large.table.iloc[:50])
    t = large.table
    assert (t["AGE"] >= 65).all() and (t["SEX"] == "M").all()
    assert t["patient"].tolist() == list(range(400))
    assert large.screened == t["candidate"].iloc[-1] + 1
    # Screen-failure rate vs the exact eligible probability (seed 3, binomial SE bound).
    tn = stats.truncnorm((40 - 62) / 10, (80 - 62) / 10, loc=62, scale=10)
    p = tn.sf(65) * 0.55
    big = sample_cohort(pop, 20_000, seed=3, arm="a")
    assert abs((1 - big.screen_fail_rate) - p) < Z * math.sqrt(p * (1 - p) / big.screened)
    assert big.screen_failures["not (SEX == 'F')"] > 0
    # arms and replicates have their own streams
    other = sample_cohort(pop, 50, seed=3, arm="b")
    assert not np.array_equal(other.table["AGE"], small.table["AGE"])


def test_nearly_impossible_criteria_fail_fast():
    pop = Population.model_validate({**SPEC, "eligibility": {"inclusion": ["AGE > 79.5"]}})
    with pytest.raises(EnrolmentError, match=r"AGE > 79.5.*% of candidates pass"):
        sample_cohort(pop, 1000, seed=1, arm="a", max_screened=50_000)


def test_parameter_uncertainty_per_replicate():
    # One population draw per replicate, shared by the arms of that replicate.
    a = sample_cohort(POP, 10, seed=5, arm="control", replicate=1, uncertainty=True)
    b = sample_cohort(POP, 10, seed=5, arm="treatment", replicate=1, uncertainty=True)
    assert a.draw.typical == b.draw.typical
    fixed = sample_cohort(POP, 10, seed=5, arm="control", replicate=1)
    assert fixed.draw.typical["CL"] == 1.1
    # ETAs and covariates do not depend on the uncertainty draw: CL ratio is typical ratio.
    ratio = a.table["CL"] / fixed.table["CL"]
    assert np.allclose(ratio, a.draw.typical["CL"] / 1.1)
    # Spread of the typical CL over 2000 replicates (seed 5): log-scale SD sqrt(log(1+rse^2)).
    draws = np.log(
        [
            population_draw(POP, seed=5, replicate=r, uncertainty=True).typical["CL"]
            for r in range(2000)
        ]
    )
    s = math.sqrt(math.log1p(0.2**2))
    assert abs(draws.mean() - math.log(1.1)) < Z * s / math.sqrt(2000)
    assert abs(draws.std() - s) < Z * s / math.sqrt(2 * 2000)
    assert population_draw(POP, seed=5, replicate=0).typical["V"] == 20  # rse 0: fixed


def test_omega_uncertainty():
    pop = Population.model_validate({**SPEC, "omega_df": 50})
    d0 = population_draw(pop, seed=1, replicate=0, uncertainty=True)
    d1 = population_draw(pop, seed=1, replicate=1, uncertainty=True)
    assert d0.omega.shape == (3, 3) and not np.allclose(d0.omega, d1.omega)
    # Mean of the inverse-Wishart draws is OMEGA (seed 1, 400 replicates, loose 25% bound).
    mean = np.mean(
        [population_draw(pop, seed=1, replicate=r, uncertainty=True).omega for r in range(400)],
        axis=0,
    )
    assert np.allclose(mean, pop.omega_matrix(), rtol=0.25, atol=0.01)


TARGET = {
    "name": "registry",
    "n": 400,
    "covariates": {
        "WT": {"mean": 82, "sd": 17},
        "AGE": {"mean": 58, "sd": 9, "quantiles": {0.25: 52, 0.5: 58, 0.75: 64}},
        "BMI": {"quantiles": {0.25: 24, 0.5: 27, 0.75: 30}},
        "SEX": {"frequencies": {"F": 0.35, "M": 0.65}},
        "ANC": {"frequencies": {"EUR": 0.8, "AFR": 0.1, "EAS": 0.1}},
        "ECOG": {"frequencies": {0: 0.6, 1: 0.35, 2: 0.05}},
    },
    "correlation": {"names": ["WT", "AGE"], "matrix": [[1, 0.2], [0.2, 1]]},
}
CAL_POP = Population.model_validate({**SPEC, "target": TARGET})


def test_entropy_balancing_matches_the_target():
    table = sample_cohort(CAL_POP, 20_000, seed=11, arm="a").table  # seed 11
    cal = calibrate(table, CAL_POP)
    summary = cal.summary()
    assert (summary["smd_before"] > 0.1).sum() >= 4  # the prior really differs
    assert (summary["smd_after"] < 0.05).all(), summary
    assert (summary.loc[["AGE", "BMI", "SEX", "ANC", "ECOG"], "ks_after"] < 1e-6).all()
    corr = cal.fit.set_index("statistic").loc["correlation"]
    assert corr["after"] == pytest.approx(0.2, abs=1e-6)
    assert 0 < cal.ess < len(table) and cal.ess_lost == pytest.approx(1 - cal.ess / len(table))
    assert cal.weights.mean() == pytest.approx(1.0)


def test_raking_reaches_the_same_weights():
    target = {**TARGET, "covariates": {k: TARGET["covariates"][k] for k in ("WT", "SEX", "ANC")}}
    pop = Population.model_validate({**SPEC, "target": {**target, "correlation": None}})
    table = sample_cohort(pop, 5000, seed=12, arm="a").table
    ent = calibrate(table, pop, method="entropy")
    rak = calibrate(table, pop, method="raking")
    assert np.allclose(ent.weights, rak.weights, rtol=1e-5)


def test_unreachable_target_is_a_clear_error():
    target = {"covariates": {"AGE": {"mean": 85, "sd": 2}}}  # AGE is truncated at 80
    pop = Population.model_validate({**SPEC, "target": target})
    table = sample_cohort(pop, 2000, seed=13, arm="a").table
    with pytest.raises(CalibrationError, match=r"\['AGE'\] lie outside"):
        calibrate(table, pop)


def test_calibrated_cohort_resamples_towards_the_target():
    # seed 14; the resampled cohort carries sampling noise ~1/sqrt(n) on top of the weights.
    cohort, cal = calibrated_cohort(CAL_POP, 4000, seed=14, arm="a")
    assert cohort.n == 4000 and cohort.table["patient"].tolist() == list(range(4000))
    assert cohort.table["candidate"].is_monotonic_increasing
    fit = cal.fit_resampled.dropna(subset=["smd_after"])
    assert (fit["smd_after"].abs() < 0.1).all(), fit
    assert (fit["smd_after"].abs() < fit["smd_before"].abs()).all()
    again, _ = calibrated_cohort(CAL_POP, 4000, seed=14, arm="a", chunks=4)
    pd.testing.assert_frame_equal(cohort.table, again.table, check_exact=True)


def test_parquet_round_trip_is_atomic(tmp_path):
    cohort = sample_cohort(CAL_POP, 200, seed=15, arm="control", uncertainty=True)
    path = write_cohort(cohort, tmp_path / "out" / "control.parquet")
    back = read_cohort(path)
    pd.testing.assert_frame_equal(back.table, cohort.table, check_exact=True)
    assert back.draw.typical == cohort.draw.typical
    assert np.array_equal(back.draw.omega, cohort.draw.omega)
    assert (back.screened, back.covariates, back.units) == (
        cohort.screened,
        cohort.covariates,
        cohort.units,
    )
    assert [p.name for p in path.parent.iterdir()] == ["control.parquet"]  # no temp file left
    schema = pq.read_schema(path)
    assert str(schema.field("SEX").type) == "dictionary<values=string, indices=int8, ordered=0>"
    assert str(schema.field("ECOG").type) == "int64" and str(schema.field("CL").type) == "double"


def test_baseline_table():
    a = sample_cohort(CAL_POP, 300, seed=16, arm="control")
    b = sample_cohort(CAL_POP, 200, seed=16, arm="treatment")
    table = baseline_table([a, b], CAL_POP.target, subgroups=[("ANC", "SEX")])
    assert list(table.columns) == [
        "variable",
        "level",
        "statistic",
        "control",
        "treatment",
        "target",
        "under_represented",
    ]
    row = table.set_index(["variable", "level", "statistic"])
    assert row.loc[("N", "", "n"), "control"] == "300"
    assert row.loc[("N", "", "n"), "target"] == "400"
    wt = a.table["WT"]
    assert row.loc[("WT (kg)", "", "mean (SD)"), "control"] == (f"{wt.mean():.1f} ({wt.std():.1f})")
    assert row.loc[("WT (kg)", "", "mean (SD)"), "target"] == "82.0 (17.0)"
    assert row.loc[("AGE", "", "median [IQR]"), "target"] == "58.0 [52.0, 64.0]"
    k = int((a.table["SEX"] == "F").sum())
    assert row.loc[("SEX", "F", "n (%)"), "control"] == f"{k} ({100 * k / 300:.1f}%)"
    # CYP poor metabolisers are ~6%, ultrarapid ~3%: UM is flagged under-represented
    assert bool(row.loc[("CYP", "UM", "n (%)"), "under_represented"])
    assert not bool(row.loc[("CYP", "NM", "n (%)"), "under_represented"])
    assert len(table[table["variable"] == "ANC × SEX"]) == 6


def test_empty_arm():
    cohort = sample_cohort(POP, 0, seed=1, arm="a")
    assert cohort.n == 0 and cohort.screened == 0 and cohort.screen_fail_rate == 0.0
    assert list(cohort.table.columns) == list(sample_cohort(POP, 1, seed=1, arm="a").table.columns)
