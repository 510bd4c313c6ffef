"""The ``population`` schema: the documented example validates; each bad input is an error at the
right field (``loc``) that names the rule and the value."""

import copy
import textwrap

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from insilico_trials.spec import population as population_module
from insilico_trials.spec.population import Expression, ExpressionError, Population


def doc_example() -> dict:
    doc = population_module.__doc__
    text = doc[doc.index("    population:") : doc.index("Semantics")]
    return yaml.safe_load(textwrap.dedent(text))["population"]


BASE = {
    "covariates": {
        "WT": {"distribution": "lognormal", "mean": 75, "sd": 15, "lower": 40, "upper": 160},
        "HT": {"distribution": "normal", "mean": 170, "sd": 10, "unit": "cm"},
        "AGE": {"distribution": "normal", "mean": 62, "sd": 10, "lower": 18, "upper": 90},
        "SEX": {"distribution": "categorical", "categories": {"F": 0.45, "M": 0.55}},
        "ECOG": {"distribution": "categorical", "categories": {0: 0.5, 1: 0.4, 2: 0.1}},
    },
    "derived": ["BMI"],
    "eligibility": {"inclusion": ["AGE >= 18"], "exclusion": []},
    "parameters": {"CL": {"typical": 1.1, "omega": 0.09}},
}


def errors_of(data: dict) -> list[dict]:
    with pytest.raises(ValidationError) as info:
        Population.model_validate(data)
    return info.value.errors()


def with_(path: tuple, value) -> dict:
    data = copy.deepcopy(BASE)
    node = data
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return data


def test_documented_example_validates_and_is_frozen():
    pop = Population.model_validate(doc_example())
    assert [d.name for d in pop.derived_specs] == ["BSA", "BMI", "CRCL", "LOGWT"]
    assert pop.iiv_names == ["CL", "V", "F", "KG"]
    assert pop.omega_matrix()[0, 1] == 0.03
    with pytest.raises(ValidationError):
        pop.omega_df = 3  # frozen


def test_negative_sd_is_reported_at_the_field():
    (err,) = errors_of(with_(("covariates", "WT", "sd"), -3))
    assert err["loc"] == ("covariates", "WT", "sd")
    assert "must be > 0 (got -3" in err["msg"]


def test_unknown_distribution_lists_the_allowed_ones():
    (err,) = errors_of(with_(("covariates", "WT", "distribution"), "gamma"))
    assert err["loc"] == ("covariates", "WT")
    assert "normal, lognormal, uniform, categorical" in err["msg"] and "gamma" in err["msg"]


def test_non_positive_definite_correlation():
    corr = {"names": ["WT", "HT", "AGE"], "matrix": [[1, 0.9, -0.9], [0.9, 1, 0.9], [-0.9, 0.9, 1]]}
    (err,) = errors_of(with_(("correlation",), corr))
    assert err["loc"] == ("correlation",)
    assert "positive definite" in err["msg"] and "smallest eigenvalue" in err["msg"]


def test_correlation_of_undeclared_covariate():
    corr = {"names": ["WT", "XX"], "matrix": [[1, 0.2], [0.2, 1]]}
    (err,) = errors_of(with_(("correlation",), corr))
    assert err["loc"] == ("correlation", "names", 1)


@pytest.mark.parametrize(
    ("expr", "needle"),
    [
        ("GLUC > 3", "unknown name 'GLUC'"),
        ("__import__('os')", "call not allowed"),
        ("AGE.real > 3", "syntax not allowed (Attribute)"),
        ("AGE[0] > 3", "syntax not allowed (Subscript)"),
        ("(lambda: 1)()", "call not allowed"),
        ("SEX == 'X'", "unknown category 'X'"),
        ("SEX > 'F'", "only be compared with == or !="),
        ("AGE >", "cannot parse"),
        ("exp(AGE, 2) > 1", "takes 1 argument"),
    ],
)
def test_bad_expressions_are_schema_errors(expr, needle):
    errs = errors_of(with_(("eligibility", "inclusion"), ["AGE >= 18", expr]))
    assert len(errs) == 1
    assert errs[0]["loc"] == ("eligibility", "inclusion", 1)
    assert needle in errs[0]["msg"]


def test_evaluator_never_runs_code():
    with pytest.raises(ExpressionError):
        Expression("().__class__.__bases__[0].__subclasses__()", {"AGE": None})
    e = Expression(
        "SEX in ('F',) and (AGE >= 18 or ECOG not in (2,)) and log(WT) < 5",
        {
            "SEX": ("F", "M"),
            "AGE": None,
            "ECOG": None,
            "WT": None,
        },
    )
    env = {
        "SEX": np.array([0, 1, 0]),
        "AGE": np.array([20.0, 30, 10]),
        "ECOG": np.array([0, 0, 2]),
        "WT": np.array([70.0, 70, 70]),
    }
    assert e(env).tolist() == [True, False, False]
    assert e.used == {"SEX", "AGE", "ECOG", "WT"}


def test_frequencies_must_sum_to_one():
    (err,) = errors_of(with_(("covariates", "SEX", "categories"), {"F": 0.45, "M": 0.5}))
    assert err["loc"] == ("covariates", "SEX", "categories")
    assert "must sum to 1 (got 0.95)" in err["msg"]


def test_conditional_frequencies_checked_per_group():
    data = with_(
        ("covariates", "CYP"),
        {
            "distribution": "categorical",
            "by": "SEX",
            "frequencies": {"F": {"PM": 0.1, "NM": 0.9}, "M": {"PM": 0.2, "NM": 0.7}},
        },
    )
    (err,) = errors_of(data)
    assert err["loc"] == ("covariates", "CYP", "frequencies", "M")
    data["covariates"]["CYP"]["frequencies"] = {"F": {"PM": 0.1, "NM": 0.9}}
    (err,) = errors_of(data)
    assert err["loc"] == ("covariates", "CYP", "frequencies")
    assert "every SEX category" in err["msg"]


def pilot_problems(data: dict) -> list[tuple]:
    from insilico_trials.sim.cohort import eligibility_problems

    return eligibility_problems(Population.model_validate(data))  # loads without sampling


def test_impossible_criterion_found_by_the_pilot():
    (err,) = pilot_problems(with_(("eligibility", "inclusion"), ["AGE >= 18", "AGE > 95"]))
    assert err[0] == ("eligibility", "inclusion", 1)
    assert "impossible" in err[2]
    # Jointly impossible, each possible alone.
    (err,) = pilot_problems(with_(("eligibility", "inclusion"), ["AGE > 60", "AGE < 40"]))
    assert err[0] == ("eligibility",)
    assert "jointly impossible" in err[2]
    (err,) = pilot_problems(with_(("eligibility", "exclusion"), ["WT > 0"]))
    assert err[0] == ("eligibility", "exclusion", 0)
    assert pilot_problems(with_(("eligibility", "exclusion"), ["WT > 500"])) == []


def test_derived_needs_its_inputs_and_units():
    (err,) = errors_of(with_(("derived",), ["BMI", "CRCL"]))
    assert err["loc"] == ("derived", 1) and "needs covariate" in err["msg"]
    data = with_(("covariates", "HT", "unit"), "m")
    (err,) = errors_of(data)
    assert err["loc"] == ("derived", 0) and "HT in cm" in err["msg"]
    (err,) = errors_of(with_(("derived",), [{"name": "X", "expression": "WT.x"}]))
    assert err["loc"] == ("derived", 0, "expression")


def test_parameter_errors():
    (err,) = errors_of(with_(("parameters", "CL", "typical"), -1))
    assert err["loc"] == ("parameters", "CL", "typical") and "> 0" in err["msg"]
    eff = [{"covariate": "SEX", "form": "power", "exponent": 1, "reference": 1}]
    (err,) = errors_of(with_(("parameters", "CL", "effects"), eff))
    assert err["loc"] == ("parameters", "CL", "effects", 0, "form")
    eff = [{"covariate": "WT", "form": "power", "reference": 70}]
    (err,) = errors_of(with_(("parameters", "CL", "effects"), eff))
    assert err["loc"] == ("parameters", "CL", "effects", 0, "exponent")
    eff = [{"covariate": "SEX", "form": "categorical", "factors": {"X": 2}}]
    (err,) = errors_of(with_(("parameters", "CL", "effects"), eff))
    assert err["loc"] == ("parameters", "CL", "effects", 0, "factors")


def test_omega_block_checks():
    data = with_(("parameters", "V"), {"typical": 20, "omega": 0.04})
    data["omega_block"] = {"names": ["CL", "V"], "matrix": [[0.09, 0.1], [0.1, 0.04]]}
    (err,) = errors_of(data)
    assert err["loc"] == ("omega_block",) and "positive definite" in err["msg"]
    data["omega_block"] = {"names": ["CL", "V"], "matrix": [[0.1, 0.01], [0.01, 0.04]]}
    (err,) = errors_of(data)
    assert err["loc"] == ("parameters", "CL", "omega")


def test_extra_keys_are_rejected():
    (err,) = errors_of(with_(("covariates", "WT", "men"), 3))
    assert err["loc"] == ("covariates", "WT", "men") and err["type"] == "extra_forbidden"


def test_json_round_trip_keeps_integer_labels():
    pop = Population.model_validate(doc_example())
    again = Population.model_validate_json(pop.model_dump_json())
    assert again == pop
    assert again.covariates["ECOG"].labels == (0, 1, 2)
    assert Population.model_json_schema()["title"] == "Population"
