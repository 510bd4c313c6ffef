"""What a protocol can name, once: built-in models with their parameters and units (their
signatures), outcome families and endpoints.

A signature is what the protocol's rules need to know about a model (which parameters the
population must declare, in which units) without importing how the model is solved. The
dynamics are in :mod:`insilico_trials.models` (PK) and :mod:`insilico_trials.sim` (kernels).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "CONJUGATE_OF_KIND",
    "ENDPOINTS",
    "GLUCOSE_ENDPOINTS",
    "OUTCOME_FAMILIES",
    "PK_PARAMETERS",
    "PK_PLAUSIBLE",
    "PK_UNITS",
    "TUMOUR_MODELS",
    "TWIN_MODEL_NAMES",
    "UPDATE_MODEL_OF_KIND",
    "EndpointSpec",
    "OutcomeFamily",
    "TumourModel",
]

# Names of the twin models (:data:`insilico_trials.models.twins.TWIN_MODELS`, which declares
# them; a test keeps the two in step).
TWIN_MODEL_NAMES: tuple[str, ...] = ("zhang2022",)

# Parameters of the built-in PK models, in the order the solvers take them. Units: CL, Q* in
# L/h; V* in L; KA in 1/h; VMAX in mg/h; KM in mg/L.
PK_PARAMETERS: dict[str, tuple[str, ...]] = {
    "pk1cmt": ("CL", "V", "KA"),
    "pk2cmt": ("CL", "V1", "Q", "V2", "KA"),
    "pk3cmt": ("CL", "V1", "Q2", "V2", "Q3", "V3", "KA"),
    "pk1cmt_mm": ("VMAX", "KM", "V", "KA"),
}

# The unit every PK parameter is in (the solvers' units: amounts mg, volumes L, time h).
PK_UNITS: dict[str, str] = {
    "CL": "L/h", "Q": "L/h", "Q2": "L/h", "Q3": "L/h", "V": "L", "V1": "L", "V2": "L",
    "V3": "L", "KA": "1/h", "VMAX": "mg/h", "KM": "mg/L",
}  # fmt: skip

# Plausible typical values of PK parameters, in PK_UNITS: wide enough for any drug in humans
# (a clearance of 1e-4 to 1e4 L/h spans renal-sparing antibodies to hepatic blood flow many
# times over); outside them a value is almost surely a unit or typing error.
PK_PLAUSIBLE: dict[str, tuple[float, float]] = {
    "CL": (1e-4, 1e4), "Q": (1e-4, 1e4), "Q2": (1e-4, 1e4), "Q3": (1e-4, 1e4),
    "V": (1e-3, 1e5), "V1": (1e-3, 1e5), "V2": (1e-3, 1e5), "V3": (1e-3, 1e5),
    "KA": (1e-4, 1e3), "VMAX": (1e-4, 1e6), "KM": (1e-6, 1e4),
}  # fmt: skip


@dataclass(frozen=True)
class TumourModel:
    """What a tumour model is: its name, parameters (with units) and reference."""

    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    units: Mapping[str, str]
    reference: str
    observed: str = "SLD (mm)"
    uses_exposure: bool = True


TUMOUR_MODELS: dict[str, TumourModel] = {
    "exponential": TumourModel(
        "exponential",
        ("SLD0", "KG"),
        ("KD",),
        {"SLD0": "mm", "KG": "1/day", "KD": "1/day per exposure unit"},
        "y(t) = SLD0 * exp(KG t - KD * int E)",
    ),
    "logistic": TumourModel(
        "logistic",
        ("SLD0", "KG", "SLDMAX"),
        ("KD",),
        {"SLD0": "mm", "KG": "1/day", "SLDMAX": "mm", "KD": "1/day per exposure unit"},
        "dy/dt = KG y (1 - y/SLDMAX) - KD E y (Verhulst)",
    ),
    "gompertz": TumourModel(
        "gompertz",
        ("SLD0", "KG", "SLDMAX"),
        ("KD",),
        {"SLD0": "mm", "KG": "1/day", "SLDMAX": "mm", "KD": "1/day per exposure unit"},
        "dy/dt = KG y ln(SLDMAX/y) - KD E y (Gompertz 1825; Laird 1964)",
    ),
    "claret": TumourModel(
        "claret",
        ("SLD0", "KL", "KD", "LAMBDA"),
        (),
        {"SLD0": "mm", "KL": "1/week", "KD": "1/week per exposure unit", "LAMBDA": "1/week"},
        "Claret L et al. J Clin Oncol 2009;27(25):4103-4108, eq. 1: "
        "dy/dt = KL y - KD exp(-LAMBDA t) E(t) y",
    ),
    "stein": TumourModel(
        "stein",
        ("SLD0", "G", "D"),
        ("PHI",),
        {"SLD0": "mm", "G": "1/day", "D": "1/day", "PHI": "fraction"},
        "Stein WD et al. Oncologist 2008;13(10):1046-1054: f(t) = exp(-D t) + exp(G t) - 1; "
        "with PHI: PHI exp(G t) + (1 - PHI) exp(-D t)",
        uses_exposure=False,
    ),
    "zhang2017": TumourModel(
        "zhang2017",
        ("MATRIX",),
        (),
        {"MATRIX": "0-based row of the 22 published competition matrices"},
        "Zhang J, Cunningham JJ, Brown JS, Gatenby RA. Nat Commun 2017;8:1816",
        observed="PSA (model units)",
    ),
}


@dataclass(frozen=True)
class OutcomeFamily:
    """An outcome model a protocol can name in ``analysis.model``: what every layer needs to
    know about it, in one place (its likelihood is in :mod:`insilico_trials.infer.outcomes`).

    Attributes
    ----------
    name
        The protocol's name (``analysis.model``).
    kind
        The data it analyses: ``binary`` (responders), ``continuous`` (a value per patient) or
        ``tte`` (time to event, censored); also the ``design.endpoint`` it is designed with.
    endpoints
        The protocol endpoints it can analyse.
    quantity
        The decision quantity a protocol uses with it (treatment vs control).
    quantities
        Every contrast it reports (the first is ``quantity``).
    columns
        The analysis-frame columns it reads besides ``arm``.
    conjugate
        The family of the control parameter's prior (``beta``, ``normal``, ``gamma``).
    control_parameter
        The control parameter's name in the posterior.
    target_accept
        NUTS target acceptance (see :data:`insilico_trials.infer.outcomes.TARGET_ACCEPT`).
    """

    name: str
    kind: str
    endpoints: tuple[str, ...]
    quantity: str
    quantities: tuple[str, ...]
    columns: tuple[str, ...]
    conjugate: str
    control_parameter: str
    target_accept: float = 0.8

    @property
    def side(self) -> str:
        """Default direction of the decision: ``less`` for ratios of hazards, else ``greater``."""
        return "less" if self.kind == "tte" else "greater"


_TTE = dict(
    kind="tte", endpoints=("pfs", "os", "ttp"), quantity="hazard_ratio",
    quantities=("hazard_ratio", "log_hazard_ratio"), columns=("time", "event"),
    conjugate="gamma", control_parameter="lambda_c",
)  # fmt: skip

OUTCOME_FAMILIES: dict[str, OutcomeFamily] = {
    "binary": OutcomeFamily(
        "binary", kind="binary", endpoints=("orr",), quantity="rate_difference",
        quantities=("rate_difference", "odds_ratio", "log_odds_ratio", "risk_ratio"),
        columns=("response",), conjugate="beta", control_parameter="p_c",
        # At 0.8 a binary fit with no control responders (0/1,000 or 0/100,000) left one or two
        # divergent transitions in 2,000 draws in 7 of 20 seeds; at 0.9 none of the 20 did.
        target_accept=0.9,
    ),
    "continuous": OutcomeFamily(
        "continuous", kind="continuous", endpoints=("best_pct_change", "tir"),
        quantity="mean_difference", quantities=("mean_difference",), columns=("value",),
        conjugate="normal", control_parameter="mu_c",
    ),
    # 0.9 for the Weibull model lowered its mixing (R-hat 1.011 in tests/test_outcomes.py).
    "tte_weibull": OutcomeFamily("tte_weibull", **_TTE),
    "tte_pwexp": OutcomeFamily("tte_pwexp", **_TTE),
    # The piecewise-exponential model with one piece: a constant hazard, the model whose
    # control parameter the virtual arms' gamma prior describes exactly (and which design
    # evaluates by exact quadrature).
    "tte_exponential": OutcomeFamily("tte_exponential", **_TTE),
}  # fmt: skip

# The conjugate prior family of each kind of data, and the model an update of the synthetic
# control fits for it (the piecewise-exponential model for time to event).
CONJUGATE_OF_KIND = {f.kind: f.conjugate for f in OUTCOME_FAMILIES.values()}
UPDATE_MODEL_OF_KIND = {"binary": "binary", "continuous": "continuous", "tte": "tte_pwexp"}


@dataclass(frozen=True)
class EndpointSpec:
    """A protocol endpoint: the simulated columns it is read from (renamed to the analysis
    frame's) and its ADaM PARAMCD in a real data cut (None: not read from real data)."""

    columns: Mapping[str, str]
    paramcd: str | None


ENDPOINTS: dict[str, EndpointSpec] = {
    "orr": EndpointSpec({"responder": "response"}, "BOR"),
    "best_pct_change": EndpointSpec({"best_pct_change": "value", "SLD0": "baseline"}, None),
    "pfs": EndpointSpec({"pfs_days": "time", "pfs_event": "event"}, "PFS"),
    "os": EndpointSpec({"os_days": "time", "os_event": "event"}, "OS"),
    "ttp": EndpointSpec({"ttp_days": "time", "ttp_event": "event"}, "TTP"),
    # time in range 70-180 mg/dL (percent of CGM readings) of a glucose trial
    # (baseline: time in range during the run-in, on the starting settings)
    "tir": EndpointSpec({"tir_pct": "value", "tir_run_in_pct": "baseline"}, None),
}

# The endpoints of a glucose trial (disease.model uva_padova).
GLUCOSE_ENDPOINTS = ("tir",)
