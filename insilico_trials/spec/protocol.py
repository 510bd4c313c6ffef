"""Trial protocol: the pydantic schema of ``protocols/*.yaml`` and its loader.

A protocol is validated once, at load, into a frozen :class:`TrialProtocol`; every other module
trusts it. Every error names ``file:line: field.path: message (got VALUE)``, unknown keys are
errors, and all errors of a file are reported together.

Sections (see ``protocols/`` for complete, runnable examples):

``trial_id``, ``title``, ``question``, ``seed``
    Identity, the question of interest (the context of use of the model), the one seed.
``population``
    Covariates, correlations, eligibility, individual parameters with between-subject
    variability (:mod:`insilico_trials.spec.population`).
``pk``
    Structural PK model (``pk1cmt``, ``pk2cmt``, ``pk3cmt``, ``pk1cmt_mm``), output grid, residual error.
``arms``
    Two or more arms, exactly one with ``control: true``; each has ``n`` and a ``regimen``
    (``null`` for an untreated or placebo control).
``disease``
    Tumour model and what drives it (:mod:`insilico_trials.sim.tumour`).
``endpoints``
    Visit schedule, RECIST measurement error, new-lesion hazard, survival link, dropout, accrual.
``analysis``
    The primary endpoint, its outcome model and the decision rule
    ``P(quantity > delta) > threshold`` (``P(HR < delta)`` for hazard ratios).
``synthetic_control``
    How the simulated control arm becomes the prior of the real control arm.
``execution``
    Patient chunk size for distributed simulation (does not change any number).
``sensitivity``
    The Sobol sensitivity stage of ``run`` (on by default; ``sobol: false`` skips it).
``real_data``
    ``study_id``: the ADSL STUDYID every real data cut of this trial must carry.
``glucose``
    A type 1 diabetes trial (``disease.model: uva_padova``): patients, days, meals, CGM, pump,
    hypoglycaemia treatment (:mod:`insilico_trials.spec.glucose`); each arm then names its
    insulin dosing algorithm in ``controller`` and has ``regimen: null``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from insilico_trials.errors import InputError
from insilico_trials.spec.catalog import (
    ENDPOINTS,
    GLUCOSE_ENDPOINTS,
    OUTCOME_FAMILIES,
    PK_PARAMETERS,
    PK_PLAUSIBLE,
    PK_UNITS,
    TUMOUR_MODELS,
    TWIN_MODEL_NAMES,
)
from insilico_trials.spec.design import DesignSpec, design_problems
from insilico_trials.spec.glucose import GLUCOSE_MODEL, ControllerSpec, GlucoseSection
from insilico_trials.spec.modelfile import (
    ModelFileError,
    UserModel,
    is_model_path,
    library_path,
    load_model_file,
    protocol_model_path_problem,
)
from insilico_trials.spec.population import Population
from insilico_trials.spec.yamlmap import YamlLoadError, load_yaml_with_lines

__all__ = [
    "Analysis",
    "Arm",
    "Decision",
    "Disease",
    "Endpoints",
    "Execution",
    "PKSection",
    "ProtocolError",
    "ProtocolIssue",
    "RealData",
    "Regimen",
    "Sensitivity",
    "SyntheticControl",
    "TrialProtocol",
    "TwinFitSettings",
    "Twins",
    "issues_at",
    "load_protocol",
]

PositiveFloat = Annotated[float, Field(gt=0)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class AdaptiveDosing(_Spec):
    """State-reactive dosing: hold when a marker falls below a fraction of a reference,
    resume when it returns to another fraction (Zhang et al. 2017).

    ``rule`` names which of the paper's two rules: ``trial`` (default; the clinical trial's:
    hold below ``stop_below_fraction`` of the pre-treatment PSA, resume at
    ``resume_at_fraction`` of it, checked every ``check_every_days``) or ``script`` (the
    paper's simulations: on while PSA is above the treatment-start threshold, 80% of the
    untreated equilibrium PSA, off below 40% of it, decided every day; its thresholds are
    fixed, so the three numbers may not be set to other values with it)."""

    rule: Literal["trial", "script"] = "trial"
    marker: Literal["PSA"] = "PSA"
    stop_below_fraction: float = Field(default=0.5, gt=0, le=1)
    resume_at_fraction: float = Field(default=1.0, gt=0, le=2)
    check_every_days: PositiveFloat = 28.0

    @model_validator(mode="after")
    def _order(self) -> AdaptiveDosing:
        fixed = ("stop_below_fraction", "resume_at_fraction", "check_every_days")
        changed = [f for f in fixed if getattr(self, f) != type(self).model_fields[f].default]
        if self.rule == "script" and changed:
            raise ValueError(
                "rule 'script' fixes its thresholds (on above 80% of the equilibrium PSA, off "
                "below 40% of that, every day); remove " + ", ".join(changed)
            )
        if self.stop_below_fraction > self.resume_at_fraction:
            raise ValueError(
                f"stop_below_fraction ({self.stop_below_fraction}) must not exceed "
                f"resume_at_fraction ({self.resume_at_fraction})"
            )
        return self


class Regimen(_Spec):
    """A repeated dosing regimen: ``n_doses`` doses of ``dose`` every ``interval_h`` hours."""

    drug: str = Field(min_length=1)
    dose: PositiveFloat = Field(le=1e6, description="amount per dose, in `unit` (<= 1e6)")
    unit: Literal["mg", "mg/kg", "mg/m2"] = "mg"
    interval_h: PositiveFloat = Field(description="dosing interval, hours")
    n_doses: int = Field(ge=1, le=100_000)
    route: Literal["oral", "iv_bolus", "iv_infusion"] = "oral"
    infusion_h: PositiveFloat | None = Field(default=None, description="infusion duration, hours")
    adaptive: AdaptiveDosing | None = Field(default=None, description="state-reactive dosing rule")

    @model_validator(mode="after")
    def _infusion_needs_duration(self) -> Regimen:
        if self.route == "iv_infusion" and self.infusion_h is None:
            raise ValueError("route iv_infusion needs infusion_h (hours)")
        if self.route != "iv_infusion" and self.infusion_h is not None:
            raise ValueError(f"infusion_h applies to route iv_infusion only, not {self.route}")
        return self


class Arm(_Spec):
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_\-]*$", max_length=40)
    n: int = Field(ge=1, le=10_000_000, description="virtual patients in the arm")
    control: bool = False
    regimen: Regimen | None = Field(description="null for an untreated or placebo arm")
    controller: ControllerSpec | None = Field(
        default=None, description="the insulin dosing algorithm of a glucose trial's arm"
    )


class PKSection(_Spec):
    model: str = Field(
        description="a built-in model (pk1cmt, pk2cmt, pk3cmt, pk1cmt_mm), a model file's "
        "path relative to the protocol's folder (insilico_trials.spec.modelfile), or "
        "library/NAME.yaml for a shipped model file",
        max_length=200,
    )
    output_interval_h: PositiveFloat = Field(default=1.0, description="concentration grid, hours")
    proportional_error: float = Field(default=0.0, ge=0, le=2)
    additive_error_mg_l: float = Field(default=0.0, ge=0)

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if v in PK_PARAMETERS:
            return v
        if not is_model_path(v):
            raise ValueError(
                f"unknown PK model {v!r}; use one of {', '.join(PK_PARAMETERS)} or the path of "
                "a model file (.yaml)"
            )
        problem = protocol_model_path_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @property
    def is_file(self) -> bool:
        """True when the model is a model file rather than a built-in."""
        return self.model not in PK_PARAMETERS


class Disease(_Spec):
    """Tumour or marker model; ``zhang2017`` is the prostate-cancer evolutionary model (PSA).

    ``model`` may also be a model file (the same file as ``pk.model``): its ODEs hold the drug's
    PK and the tumour together (the PK-PD link is inside the file) and its output ``SLD`` is the
    tumour size in mm at the visits; ``exposure`` is then not used.
    """

    model: str = Field(
        description="exponential, logistic, gompertz, claret, stein, zhang2017, or the path of "
        "the model file pk.model names",
        max_length=200,
    )
    exposure: Literal["concentration", "daily_auc", "none"] = Field(
        default="daily_auc", description="what drives the drug effect"
    )
    horizon_days: int = Field(default=3650, ge=30, le=36500, description="zhang2017 only")
    progression: Literal["nadir", "baseline"] = Field(
        default="nadir", description="zhang2017 PSA progression rule (see tumour.simulate_zhang)"
    )

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if v in TUMOUR_MODELS or v == GLUCOSE_MODEL:
            return v
        if not is_model_path(v):
            raise ValueError(
                f"unknown disease model {v!r}; use one of {', '.join(TUMOUR_MODELS)}, "
                f"{GLUCOSE_MODEL} (type 1 diabetes, with a glucose section) or the path of a "
                "model file (.yaml) with an SLD output"
            )
        problem = protocol_model_path_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @property
    def is_file(self) -> bool:
        """True when the disease model is a model file."""
        return self.model not in TUMOUR_MODELS and self.model != GLUCOSE_MODEL

    @property
    def is_glucose(self) -> bool:
        """True for a type 1 diabetes trial (the UVA/Padova model; a glucose section)."""
        return self.model == GLUCOSE_MODEL


class SurvivalLink(_Spec):
    """Parametric OS linked to tumour dynamics (accelerated failure time).

    ``log T = intercept + sum(coefficients[p] * predictor[p]) + scale * W`` with ``W`` standard
    normal (lognormal) or minimum extreme value (weibull); predictors such as
    ``week8_frac_change`` and ``log_ttg_weeks`` (Claret et al. 2009, 2013); see
    :class:`insilico_trials.sim.endpoints.OSModel`.
    """

    distribution: Literal["lognormal", "weibull", "exponential"] = "lognormal"
    intercept: float
    coefficients: dict[str, float] = Field(default_factory=dict)
    scale: PositiveFloat = 1.0
    time_unit: Literal["days", "weeks", "months"] = "weeks"
    source: str = Field(default="", description="where the values come from")


class Endpoints(_Spec):
    visit_every_weeks: PositiveFloat = 6.0
    follow_up_weeks: PositiveFloat = Field(default=48.0, le=5200, description="<= 100 years")
    measurement_cv: float = Field(default=0.05, ge=0, le=1)
    new_lesion_hazard_per_day: float = Field(default=0.0, ge=0)
    os: SurvivalLink | None = None
    dropout_per_year: float = Field(default=0.0, ge=0)
    accrual_per_month: PositiveFloat = 10.0


class Decision(_Spec):
    """Go when ``P(quantity > delta) > threshold`` (``<`` with ``direction: less``).

    Differences are treatment minus control; ratios are treatment over control.
    """

    quantity: Literal["rate_difference", "mean_difference", "hazard_ratio"]
    delta: float = 0.0
    threshold: float = Field(gt=0, lt=1)
    direction: Literal["greater", "less"] | None = Field(
        default=None, description="default: less for hazard_ratio, greater otherwise"
    )

    @property
    def side(self) -> str:
        return self.direction or ("less" if self.quantity == "hazard_ratio" else "greater")

    @property
    def text(self) -> str:
        return f"P({self.quantity} {'<' if self.side == 'less' else '>'} {self.delta}) > {self.threshold}"


class MCMC(_Spec):
    draws: int = Field(default=1000, ge=100, le=100_000)
    tune: int = Field(default=1000, ge=100, le=100_000)
    chains: int = Field(default=2, ge=1, le=16)


class Analysis(_Spec):
    endpoint: Literal[tuple(ENDPOINTS)]  # type: ignore[valid-type]
    model: Literal[tuple(OUTCOME_FAMILIES)]  # type: ignore[valid-type]
    treatment: str | None = Field(
        default=None, description="arm compared with control (default: first treatment arm)"
    )
    covariates: list[Literal["baseline"]] = Field(
        default_factory=list, description="model covariates"
    )
    decision: Decision
    mcmc: MCMC = MCMC()

    @model_validator(mode="after")
    def _consistent(self) -> Analysis:
        allowed = [f.name for f in OUTCOME_FAMILIES.values() if self.endpoint in f.endpoints]
        if self.model not in allowed:
            raise ValueError(
                f"model {self.model!r} does not fit endpoint {self.endpoint!r}; allowed: "
                + ", ".join(allowed)
            )
        wanted = OUTCOME_FAMILIES[self.model].quantity
        if self.decision.quantity != wanted:
            raise ValueError(
                f"decision.quantity {self.decision.quantity!r} does not fit model "
                f"{self.model!r}; use {wanted!r}"
            )
        return self


class SyntheticControl(_Spec):
    """How the simulated control arm informs the real control arm
    (:mod:`insilico_trials.infer.synthetic`, :mod:`insilico_trials.infer.borrowing`).

    The virtual control arm is simulated ``virtual_replicates`` times (``virtual_patients``
    each, default ``max(500, control n)``), each replicate with its own draw of the
    population-level parameters (their ``uncertainty_rse``), so the spread between replicate
    arms is the model's uncertainty about the control parameter. Replicate arms must be large:
    with few patients each, sampling noise hides the spread between them and the MAP prior
    borrows as if the model were certain (40 patients per arm: ESS 240 where 10,000 per arm
    give 44, tests/test_synthetic.py). ``prior``
    says how the replicate arms become the prior of the real control parameter:

    ``map`` (default)
        a meta-analytic-predictive prior over the replicate arms (hierarchical model, between-
        replicate sd ``tau ~ HalfNormal(between_replicate_sd)`` on the link scale), approximated
        by a mixture: its information is bounded by the spread between replicates, not by how
        many patients each replicate has;
    ``pooled``
        the replicate arms pooled as if they were historical patients (information grows with
        the number simulated; bounded only by ``max_virtual_patients``).

    Whatever the rule, the informative part of the prior is worth at most
    ``max_virtual_patients`` real patients (by ``ess_method``; default the planned size of the
    real control arm): above it, its information is scaled down to the cap.
    """

    method: Literal[
        "none", "full", "power", "commensurate", "robust_mixture", "procova", "procova_bayes"
    ] = "none"
    a0: float | None = Field(
        default=None, ge=0, le=1, description="power prior weight (power; robust_mixture: 1)"
    )
    vague_weight: float | None = Field(default=None, gt=0, lt=1, description="robust mixture w")
    sd_scale: PositiveFloat | None = Field(
        default=None,
        description="commensurate: HalfNormal scale of the sd between the virtual and the real "
        "control parameter on the link scale (small: strong borrowing)",
    )
    tau_scale: PositiveFloat | None = Field(default=None, description="replaced by sd_scale")
    prior: Literal["map", "pooled"] = "map"
    virtual_replicates: int = Field(default=20, ge=2, le=1000)
    virtual_patients: int | None = Field(
        default=None,
        ge=10,
        le=1_000_000,
        description="patients per replicate virtual arm (default max(500, control n)): enough "
        "that sampling noise does not hide the spread between replicates",
    )
    between_replicate_sd: PositiveFloat | None = Field(
        default=None,
        description="MAP: HalfNormal scale of the between-replicate sd on the link scale "
        "(default: 1 on the logit scale, 0.5 on the log hazard, sigma / 2 for a mean)",
    )
    max_virtual_patients: int | None = Field(
        default=None, ge=1, le=10_000_000, description="cap on the prior's ESS"
    )
    ess_method: Literal["elir", "moment", "morita"] = "elir"

    @model_validator(mode="after")
    def _method_params(self) -> SyntheticControl:
        if self.tau_scale is not None:
            raise ValueError(
                "tau_scale is replaced by sd_scale: the HalfNormal scale of the sd between the "
                "virtual and the real control parameter on the link scale (tau_scale was the "
                "mean of a precision; an sd scale of 0.5 lets logits differ by about 0.5)"
            )
        needs = {"power": "a0", "robust_mixture": "vague_weight", "commensurate": "sd_scale"}
        need = needs.get(self.method)
        if need and getattr(self, need) is None:
            raise ValueError(f"method {self.method} needs {need}")
        return self

    @property
    def borrows(self) -> bool:
        """The virtual arms inform the real control arm's prior (not none, not PROCOVA)."""
        return self.method not in ("none", "procova", "procova_bayes")

    @property
    def uses_virtual_arms(self) -> bool:
        """``run`` simulates replicate virtual control arms (borrowing, or PROCOVA's
        prognostic model trained on virtual patients)."""
        return self.method not in ("none", "procova_bayes")


class Sensitivity(_Spec):
    """The declared sensitivity stage of ``run``: Sobol indices of the decision quantity to the
    uncertain typical values (:mod:`insilico_trials.infer.sensitivity`), run through the same
    executor as the simulation, on the cohorts already sampled. ``sobol: false`` skips it."""

    sobol: bool = True
    n_base: int = Field(default=32, ge=4, le=4096, description="Saltelli base sample, a power of 2")
    max_patients: int = Field(default=500, ge=1, le=100_000, description="patients per arm used")

    @field_validator("n_base")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"must be a power of 2 (Sobol sequence), got {v}")
        return v


class RealData(_Spec):
    """What the real data cuts of this trial are: ``study_id`` is the ADSL ``STUDYID`` every cut
    must carry (without it, the first cut's STUDYID binds the archive and later cuts must
    match it). Real patient records go to the archive only; the tracking store receives each
    update's record and manifest (summaries and content hashes), and the cut's files as well
    only when ``track_cut_files`` is true (the sponsor's explicit choice)."""

    study_id: str | None = Field(default=None, min_length=1, max_length=80)
    track_cut_files: bool = Field(
        default=False, description="also copy each cut's (screened) files to the tracking store"
    )


class TwinFitSettings(_Spec):
    """Sampler and solver settings of the twin fit (:func:`insilico_trials.infer.twins.fit_twins`)."""

    draws: int = Field(default=1000, ge=100, le=100_000)
    tune: int = Field(default=1000, ge=100, le=100_000)
    chains: int = Field(default=2, ge=1, le=16)
    target_accept: float = Field(default=0.9, gt=0.5, lt=1)
    max_step_days: PositiveFloat = Field(default=4.0, le=14, description="RK4 step, days")


class Twins(_Spec):
    """Patient digital twins fitted to the real data cuts (``update``).

    ``model`` is a twin model of :data:`insilico_trials.models.twins.TWIN_MODELS`; its biomarker
    is read from ADLB records with ``PARAMCD == paramcd`` and its treatment indicator from
    ADEX intervals of ``EXTRT == treatment``. ``real_arms`` maps each protocol arm to the
    ADSL ``ARM`` of the real patients who received its regimen; every twin is simulated under
    every protocol arm's regimen (the counterfactual arms), from day 0 to ``horizon_days``.
    """

    model: Literal[tuple(TWIN_MODEL_NAMES)]  # type: ignore[valid-type]
    paramcd: str = Field(default="PSA", min_length=1, max_length=8)
    treatment: str = Field(min_length=1, max_length=80, description="ADEX EXTRT of u(t)")
    real_arms: dict[str, str] = Field(min_length=1, description="protocol arm -> ADSL ARM")
    horizon_days: int = Field(default=2000, ge=28, le=36500)
    counterfactual_draws: int = Field(default=200, ge=20, le=10_000)
    fit: TwinFitSettings = TwinFitSettings()


class Execution(_Spec):
    chunk_size: int = Field(default=50, ge=1, le=1_000_000, description="patients per Dask task")


# Bounds that keep a protocol within a machine's memory (see TrialProtocol._size_problems).
MAX_GRID_POINTS = 2_000_000  # concentration points per patient
MAX_CHUNK_BYTES = 4 * 2**30
MAX_VISITS = 10_000

# Sections added after the first archives (see TrialProtocol.canonical_json).
_LATER_SECTIONS = ("sensitivity", "real_data", "twins", "glucose")
# Fields added to a section after the first archives: dropped from the canonical JSON at their
# default when they change nothing (synthetic_control: a method that does not borrow).
_LATER_FIELDS = {
    "synthetic_control": (
        "sd_scale", "prior", "virtual_replicates", "virtual_patients", "between_replicate_sd",
        "ess_method",
    ),
}  # fmt: skip


class TrialProtocol(_Spec):
    """A validated, frozen trial protocol."""

    trial_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=80)
    title: str = ""
    question: str = Field(default="", description="the question of interest (context of use)")
    seed: int = Field(ge=0, lt=2**63)
    population: Population
    pk: PKSection | None = Field(default=None, description="omit for a marker model without PK")
    arms: list[Arm] = Field(min_length=2)
    disease: Disease
    endpoints: Endpoints = Endpoints()
    analysis: Analysis
    synthetic_control: SyntheticControl = SyntheticControl()
    execution: Execution = Execution()
    sensitivity: Sensitivity = Sensitivity()
    real_data: RealData = RealData()
    design: DesignSpec | None = None
    twins: Twins | None = None
    glucose: GlucoseSection | None = Field(
        default=None, description="a type 1 diabetes trial (disease.model: uva_padova)"
    )
    # The model file pk.model names, read by load_protocol from the protocol's folder.
    _pk_file: UserModel | None = PrivateAttr(default=None)

    def pk_model(self) -> str | UserModel:
        """The PK model to simulate: a built-in name, or the loaded model file."""
        if self.pk is None:
            raise ValueError("the protocol has no pk section")
        if not self.pk.is_file:
            return self.pk.model
        if self._pk_file is None:
            raise InputError(
                f"pk.model {self.pk.model}: the model file was not read; load the protocol with "
                "load_protocol(path) so that paths resolve against its folder"
            )
        return self._pk_file

    def attach_model_file(self, folder: Path) -> list[tuple[tuple[str | int, ...], Any, str]]:
        """Read the model file pk.model names (relative to ``folder``) and check it against the
        population; return the problems as ``(field path, value, message)``."""
        if self.pk is None or not self.pk.is_file:
            return []
        path = folder / self.pk.model
        shipped = library_path(self.pk.model.removeprefix("library/")[: -len(".yaml")])
        if not path.exists() and self.pk.model.startswith("library/") and shipped is not None:
            path = shipped  # a shipped model file; the archive keeps it beside the protocol
        try:
            model = load_model_file(path)
        except ModelFileError as exc:
            return [(("pk", "model"), self.pk.model, f"model file refused: {exc}")]
        if problem := model.pk_problem():
            return [(("pk", "model"), self.pk.model, problem)]
        self.__pydantic_private__["_pk_file"] = model
        problems: list[tuple[tuple[str | int, ...], Any, str]] = []
        for i, arm in enumerate(self.arms):
            reg = arm.regimen
            if reg is None:
                continue
            route = "oral" if reg.route == "oral" else "iv"
            if route not in model.routes:
                problems.append(
                    (("arms", i, "regimen", "route"), reg.route,
                     f"model {model.name} has no {route} route; add routes: {{{route}: "
                     "COMPARTMENT}} to the model file")
                )  # fmt: skip
                continue
            dosed = model.routes[route]
            lagged = sorted(set(model.dosing.get(dosed, {})) & {"ALAG", "R", "D"})
            if lagged:
                problems.append(
                    (("pk", "model"), self.pk.model,
                     f"model {model.name} sets {', '.join(lagged)} on the dosed compartment "
                     f"{model.compartments[dosed]}; a protocol's regular regimen takes F only "
                     "(event records with pk simulate take all four)")
                )  # fmt: skip
        if self.disease.is_file and self.disease.model == self.pk.model:
            names = [name for name, _ in model.outputs]
            if "SLD" not in names:
                problems.append(
                    (("disease", "model"), self.disease.model,
                     f"model {model.name} has no output SLD (the tumour size in mm at the "
                     f"visits); its outputs: {', '.join(names)}")
                )  # fmt: skip
        pop = self.population
        derived = {d if isinstance(d, str) else d.name for d in (pop.derived or [])}
        for spec in model.inputs:
            declared = pop.parameters.get(spec.name) or pop.covariates.get(spec.name)
            if declared is None and spec.name not in derived:
                problems.append(
                    (("pk", "model"), self.pk.model,
                     f"model {model.name} reads {spec.name} ({spec.unit}); declare it in "
                     "population.parameters or population.covariates")
                )  # fmt: skip
                continue
            unit = getattr(declared, "unit", None)
            if unit is not None and unit.replace(" ", "") != spec.unit.replace(" ", ""):
                where = "parameters" if spec.name in pop.parameters else "covariates"
                problems.append(
                    (("population", where, spec.name, "unit"), unit,
                     f"model {model.name} takes {spec.name} in {spec.unit}; convert the values "
                     f"to {spec.unit}, or declare that unit")
                )  # fmt: skip
        return problems

    @field_validator("arms")
    @classmethod
    def _arms(cls, arms: list[Arm]) -> list[Arm]:
        names = [a.name for a in arms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"arm names must be unique, repeated: {', '.join(dupes)}")
        controls = [a.name for a in arms if a.control]
        if len(controls) != 1:
            raise ValueError(
                f"exactly one arm must have control: true, found {len(controls)}"
                + (f" ({', '.join(controls)})" if controls else "")
            )
        return arms

    @model_validator(mode="after")
    def _cross_sections(self) -> TrialProtocol:
        from pydantic_core import InitErrorDetails

        errors: list[tuple[tuple[str | int, ...], Any, str]] = []
        declared = set(self.population.parameters)
        covariates = set(self.population.covariates) | {
            d if isinstance(d, str) else d.name for d in (self.population.derived or [])
        }

        zhang = self.disease.model == "zhang2017"
        if self.disease.is_glucose or self.glucose is not None:
            errors += self._glucose_problems()
            zhang = True  # (skips the tumour and regimen rules below, as for zhang2017)
        else:
            if self.analysis.endpoint in GLUCOSE_ENDPOINTS:
                errors.append(
                    (("analysis", "endpoint"), self.analysis.endpoint,
                     "time in range is the endpoint of a glucose trial (disease.model: "
                     "uva_padova with a glucose section)")
                )  # fmt: skip
            for i, arm in enumerate(self.arms):
                if arm.controller is not None:
                    errors.append(
                        (("arms", i, "controller"), arm.controller.kind,
                         "an insulin dosing algorithm belongs to a glucose trial (disease.model: "
                         "uva_padova); this arm doses by its regimen")
                    )  # fmt: skip
        if self.pk is None and not zhang and self.disease.exposure != "none":
            errors.append(
                (
                    ("disease", "exposure"),
                    self.disease.exposure,
                    "needs a pk section (or exposure: none)",
                )
            )
        for name in PK_PARAMETERS[self.pk.model] if self.pk and not self.pk.is_file else ():
            unit = self.population.parameters[name].unit if name in declared else None
            if unit is not None and unit.replace(" ", "") != PK_UNITS[name]:
                errors.append(
                    (
                        ("population", "parameters", name, "unit"),
                        unit,
                        f"model {self.pk.model} takes {name} in {PK_UNITS[name]}; convert the "
                        f"typical value (and effects) to {PK_UNITS[name]}, or declare that unit",
                    )
                )
            if name in declared:
                low, high = PK_PLAUSIBLE[name]
                typical = self.population.parameters[name].typical
                if not low <= typical <= high:
                    errors.append(
                        (
                            ("population", "parameters", name, "typical"),
                            typical,
                            f"{name} {typical:g} {PK_UNITS[name]} is outside the plausible "
                            f"range [{low:g}, {high:g}] {PK_UNITS[name]}; check its unit",
                        )
                    )
            if name not in declared:
                errors.append(
                    (
                        ("pk", "model"),
                        self.pk.model,
                        f"model {self.pk.model} needs parameter {name} in population.parameters",
                    )
                )
        if self.disease.is_file and (self.pk is None or self.pk.model != self.disease.model):
            errors.append(
                (
                    ("disease", "model"),
                    self.disease.model,
                    "a disease model file holds the drug's PK too (the PK-PD link is inside "
                    "the file): name the same file in pk.model",
                )
            )
        # zhang2017 draws each patient's competition matrix itself (simulate_zhang_trial).
        skip = zhang or self.disease.is_file
        for name in () if skip else TUMOUR_MODELS[self.disease.model].required:
            if name not in declared:
                errors.append(
                    (
                        ("disease", "model"),
                        self.disease.model,
                        f"model {self.disease.model} needs parameter {name} in population.parameters",
                    )
                )
        for i, arm in enumerate(self.arms):
            if arm.regimen is None:
                if zhang and not self.disease.is_glucose:
                    errors.append(
                        (
                            ("arms", i, "regimen"),
                            None,
                            "model zhang2017 needs a regimen in every arm (continuous or adaptive)",
                        )
                    )
                continue
            if arm.regimen.adaptive is not None and not zhang:
                errors.append(
                    (
                        ("arms", i, "regimen", "adaptive"),
                        arm.regimen.adaptive.marker,
                        "adaptive dosing on PSA needs disease model zhang2017",
                    )
                )
            need = {"mg/kg": "WT", "mg/m2": "BSA"}.get(arm.regimen.unit)
            if need and need not in covariates:
                errors.append(
                    (
                        ("arms", i, "regimen", "unit"),
                        arm.regimen.unit,
                        f"dosing in {arm.regimen.unit} needs covariate {need} in the population",
                    )
                )
        errors += self._size_problems()
        treat = self.analysis.treatment
        names = [a.name for a in self.treatment_arms]
        if treat is not None and treat not in names:
            errors.append(
                (("analysis", "treatment"), treat, f"must name a treatment arm: {', '.join(names)}")
            )
        errors += self._borrowing_problems()
        errors += design_problems(self)
        errors += self._twin_problems()
        if errors:
            raise ValidationError.from_exception_data(
                "TrialProtocol",
                [
                    InitErrorDetails(type="value_error", loc=loc, input=v, ctx={"error": m})
                    for loc, v, m in errors
                ],
            )
        return self

    def _borrowing_problems(self) -> list[tuple[tuple[str | int, ...], Any, str]]:
        sc = self.synthetic_control
        kind = OUTCOME_FAMILIES[self.analysis.model].kind
        if sc.method in ("procova", "procova_bayes") and kind != "continuous":
            return [
                (
                    ("synthetic_control", "method"),
                    sc.method,
                    f"PROCOVA adjusts a continuous outcome; analysis.model {self.analysis.model} "
                    "is not continuous",
                )
            ]
        compared = set(self.design.compare_borrowing) if self.design is not None else set()
        borrowing = sc.borrows or bool(compared - {"none"})
        if not (borrowing and sc.prior == "map"):
            return []
        if self.disease.model == "zhang2017":
            return []  # zhang2017 draws each patient's competition matrix (its own uncertainty)
        if any(p.uncertainty_rse > 0 for p in self.population.parameters.values()):
            return []
        return [
            (
                ("synthetic_control", "prior"),
                sc.prior,
                "a MAP prior over replicate virtual arms needs model uncertainty: declare "
                "uncertainty_rse on the population parameters that drive the endpoint (without "
                "it every replicate has the same model and the prior would borrow as if the "
                "model were certain), or use prior: pooled with max_virtual_patients",
            )
        ]

    def _size_problems(self) -> list[tuple[tuple[str | int, ...], Any, str]]:
        """Grids and chunks that would need more memory than a machine has, refused with the
        estimate, before anything runs."""
        out: list[tuple[tuple[str | int, ...], Any, str]] = []
        follow_h = self.endpoints.follow_up_weeks * 7 * 24
        if self.pk is not None:
            points = follow_h / self.pk.output_interval_h
            if points > MAX_GRID_POINTS:
                out.append(
                    (("pk", "output_interval_h"), self.pk.output_interval_h,
                     f"{points:,.0f} concentration points per patient over "
                     f"{self.endpoints.follow_up_weeks:g} weeks; at most {MAX_GRID_POINTS:,}: "
                     "raise output_interval_h or shorten follow_up_weeks")
                )  # fmt: skip
            else:
                chunk_bytes = points * self.execution.chunk_size * 8 * 4  # a few float arrays
                if chunk_bytes > MAX_CHUNK_BYTES:
                    out.append(
                        (("execution", "chunk_size"), self.execution.chunk_size,
                         f"a chunk of {self.execution.chunk_size} patients x {points:,.0f} "
                         f"points needs about {chunk_bytes / 2**30:.1f} GiB; at most "
                         f"{MAX_CHUNK_BYTES / 2**30:.0f} GiB: lower chunk_size")
                    )  # fmt: skip
        visits = self.endpoints.follow_up_weeks / self.endpoints.visit_every_weeks
        if visits > MAX_VISITS:
            out.append(
                (("endpoints", "visit_every_weeks"), self.endpoints.visit_every_weeks,
                 f"{visits:,.0f} visits per patient; at most {MAX_VISITS:,}: visit less often")
            )  # fmt: skip
        return out

    def _glucose_problems(self) -> list[tuple[tuple[str | int, ...], Any, str]]:
        out: list[tuple[tuple[str | int, ...], Any, str]] = []
        if self.glucose is None:
            return [(("disease", "model"), self.disease.model,
                     "a uva_padova trial needs a glucose section (patients, days, meals, devices)")]  # fmt: skip
        if not self.disease.is_glucose:
            return [(("glucose",), "glucose", "a glucose section needs disease.model: uva_padova")]
        out += self.glucose.meal_problems()
        if self.pk is not None:
            out.append((("pk",), "pk", "a glucose trial doses insulin through its arms' "
                        "controllers; remove the pk section"))  # fmt: skip
        if self.disease.exposure != "none":
            out.append((("disease", "exposure"), self.disease.exposure, "must be none"))
        for i, arm in enumerate(self.arms):
            if arm.controller is None:
                out.append((("arms", i, "controller"), None,
                            "every arm of a glucose trial needs a controller: {kind: "
                            "basal_bolus} or {kind: decision_support}"))  # fmt: skip
            if arm.regimen is not None:
                out.append((("arms", i, "regimen"), arm.regimen.drug,
                            "a glucose trial's arm has regimen: null (its controller doses)"))  # fmt: skip
        if self.analysis.endpoint not in GLUCOSE_ENDPOINTS:
            out.append((("analysis", "endpoint"), self.analysis.endpoint,
                        f"a glucose trial's endpoint is one of {', '.join(GLUCOSE_ENDPOINTS)}"))  # fmt: skip
        if self.synthetic_control.method != "none":
            out.append((("synthetic_control", "method"), self.synthetic_control.method,
                        "a glucose trial has no synthetic control: use none"))  # fmt: skip
        if self.sensitivity.sobol:
            out.append((("sensitivity", "sobol"), True,
                        "not available for glucose trials: set sobol: false"))  # fmt: skip
        for name in ("design", "twins"):
            if getattr(self, name) is not None:
                out.append(((name,), name, "not available for glucose trials"))
        pop = self.population
        for name in ("covariates", "parameters", "derived"):
            if getattr(pop, name):
                out.append((("population", name), sorted(getattr(pop, name)) if name != "derived" else len(pop.derived),
                            "a glucose trial's patients come from glucose.patients; declare none "
                            "(write population: {covariates: {}})"))  # fmt: skip
        for name in ("correlation", "omega_block", "target"):
            if getattr(pop, name) is not None:
                out.append((("population", name), name, "not used by a glucose trial: remove it"))
        if pop.eligibility.inclusion or pop.eligibility.exclusion:
            out.append((("population", "eligibility"), "eligibility",
                        "a glucose trial's patients come from glucose.patients, whose own "
                        "eligibility is their steady state; remove it"))  # fmt: skip
        g = self.glucose
        for i, arm in enumerate(self.arms):
            c = arm.controller
            if c is not None and c.kind == "decision_support" and c.every_days >= g.days:
                out.append(
                    (("arms", i, "controller", "every_days"), c.every_days,
                     f"the first review would come after the trial's {g.days} days: the arm "
                     "would be standard care; use fewer days between reviews or more days")
                )  # fmt: skip
        if "baseline" in self.analysis.covariates and g.run_in_days == 0:
            out.append(
                (("analysis", "covariates"), ["baseline"],
                 "the baseline of time in range is the run-in's: set glucose.run_in_days")
            )  # fmt: skip
        # memory of one chunk: sensor readings and noise, records, meals (float64)
        sensor_min = {"Dexcom": 3, "GuardianRT": 5, "Navigator": 1}[g.cgm.sensor]
        minutes = (g.run_in_days + g.days) * 1440
        per_patient = 8 * (
            3 * minutes / sensor_min + 2 * minutes / 15 + 6 * len(g.meals) * minutes / 1440
        )
        size = min(self.execution.chunk_size, max(a.n for a in self.arms))
        if size * per_patient > MAX_CHUNK_BYTES:
            out.append(
                (("execution", "chunk_size"), self.execution.chunk_size,
                 f"a chunk of {size:,} patients over {minutes // 1440} days holds about "
                 f"{size * per_patient / 2**30:.1f} GiB of sensor readings; at most "
                 f"{MAX_CHUNK_BYTES / 2**30:.0f} GiB: lower chunk_size")
            )  # fmt: skip
        return out

    def _twin_problems(self) -> list[tuple[tuple[str | int, ...], Any, str]]:
        tw = self.twins
        if tw is None:
            return []
        names = [a.name for a in self.arms]
        out: list[tuple[tuple[str | int, ...], Any, str]] = [
            (("twins", "real_arms", k), k, f"must name an arm of the protocol: {', '.join(names)}")
            for k in tw.real_arms
            if k not in names
        ]
        if self.control_arm.name not in tw.real_arms:
            out.append(
                (("twins", "real_arms"), sorted(tw.real_arms),
                 f"must map the control arm {self.control_arm.name!r} to its real ADSL ARM "
                 "(the real cohort the twins' synthetic control is compared with)")
            )  # fmt: skip
        if len(set(tw.real_arms.values())) != len(tw.real_arms):
            out.append((("twins", "real_arms"), dict(tw.real_arms), "two arms map to one ADSL ARM"))
        for a in self.arms:
            if a.name in tw.real_arms and a.regimen is None:
                out.append(
                    (("arms",), a.name, "a twin arm needs a regimen (continuous or adaptive)")
                )
            ad = a.regimen.adaptive if a.regimen is not None else None
            if a.name in tw.real_arms and ad is not None and ad.rule != "trial":
                out.append(
                    (("arms",), a.name,
                     f"twins follow real patients' PSA: adaptive rule {ad.rule!r} reads the "
                     "model's equilibrium PSA, which a patient has not; use rule 'trial'")
                )  # fmt: skip
        return out

    @property
    def control_arm(self) -> Arm:
        return next(a for a in self.arms if a.control)

    @property
    def treatment_arms(self) -> list[Arm]:
        return [a for a in self.arms if not a.control]

    def canonical_json(self) -> str:
        """The protocol as canonical JSON: sorted keys, defaults filled in.

        A section added to the schema after archives were made (:data:`_LATER_SECTIONS`) is
        included only when it differs from its default, so that a protocol's hash (and with it
        its run ids, task cache and archived provenance) does not change when the schema grows.
        The same holds for fields added to a section (:data:`_LATER_FIELDS`) where they have no
        effect; where they do (a borrowing synthetic control), they are hashed, since the
        analysis they define is not the one older archives ran.
        """
        data = self.model_dump(mode="json")
        if self.pk is not None and self.pk.is_file:
            # the model file's content is part of what was run, not only its path
            data["pk"]["model_sha256"] = self.pk_model().digest  # type: ignore[union-attr]
        for name in _LATER_SECTIONS:
            if getattr(self, name) == type(self).model_fields[name].default:
                data.pop(name)
        if "real_data" in data and not data["real_data"].get("track_cut_files"):
            data["real_data"].pop("track_cut_files", None)  # added later; False is the old rule
        if data.get("design") is not None and data["design"].get("futility_pos") is None:
            data["design"].pop("futility_pos", None)  # added later; None changes nothing
        for arm in data["arms"]:
            if arm.get("controller") is None:
                arm.pop("controller", None)  # added later; absent in oncology protocols
            adaptive = (arm.get("regimen") or {}).get("adaptive")
            # Added after the first archives; "trial" is what older protocols ran.
            if adaptive is not None and adaptive.get("rule") == "trial":
                adaptive.pop("rule")
        sc = self.synthetic_control
        if not sc.borrows:
            for name in _LATER_FIELDS["synthetic_control"]:
                if getattr(sc, name) == type(sc).model_fields[name].default:
                    data["synthetic_control"].pop(name)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def sha256(self) -> str:
        """Hash of the canonical protocol (file formatting and comments do not change it)."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


@dataclass(frozen=True)
class ProtocolIssue:
    file: str
    line: int
    path: str
    message: str
    value: Any = None
    has_value: bool = True

    def __str__(self) -> str:
        got = f" (got {_show(self.value)})" if self.has_value else ""
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}: {where}{self.message}{got}"


class ProtocolError(InputError):
    """A protocol file failed validation; ``issues`` lists every problem."""

    def __init__(self, issues: list[ProtocolIssue]) -> None:
        self.issues = issues
        first = issues[0] if issues else None
        super().__init__(
            "\n".join(str(i) for i in issues),
            rule=first.message if first else "",
            actual=first.value if first else None,
            where=f"{first.file}:{first.line}: {first.path}" if first else "",
        )

    def report(self) -> str:
        return str(self)  # already one ``file:line: field: message (got VALUE)`` per issue


def _show(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _clean_message(err: dict[str, Any]) -> str:
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if err["type"] == "extra_forbidden":
        msg = "unknown key (not part of the protocol schema; check the spelling)"
    elif err["type"] == "missing":
        msg = "required key is missing"
    return msg


def _issues_from_validation(file: str, exc: ValidationError, lines: Any) -> list[ProtocolIssue]:
    issues = []
    for err in exc.errors(include_url=False):
        # Drop pydantic's union/tag markers so the path is the one the user wrote.
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        path = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
        missing = err["type"] == "missing"
        issues.append(
            ProtocolIssue(
                file=file,
                line=lines.line_of(loc),
                path=path,
                message=_clean_message(err),
                value=err.get("input"),
                has_value=not missing,
            )
        )
    return sorted(issues, key=lambda i: (i.line, i.path))


def load_protocol(path: str | Path) -> TrialProtocol:
    """Read and validate a protocol file.

    Raises
    ------
    ProtocolError
        Listing every problem as ``file:line: field.path: message (got VALUE)``.
    """
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProtocolError(
            [ProtocolIssue(file, 0, "", "file not found", has_value=False)]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProtocolError(
            [ProtocolIssue(file, 0, "", f"cannot read: {exc}", has_value=False)]
        ) from None
    try:
        data, lines = load_yaml_with_lines(file, text)
    except YamlLoadError as exc:
        raise ProtocolError(
            [ProtocolIssue(file, exc.line, "", exc.message, has_value=False)]
        ) from None
    if not isinstance(data, dict):
        raise ProtocolError(
            [ProtocolIssue(file, 1, "", "a protocol must be a YAML mapping of sections", data)]
        )
    try:
        protocol = TrialProtocol.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError(_issues_from_validation(file, exc, lines)) from None
    problems = protocol.attach_model_file(Path(path).parent)
    if problems:
        raise ProtocolError(
            [
                ProtocolIssue(
                    file,
                    lines.line_of(loc),
                    ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(
                        ".[", "["
                    ),
                    message,
                    value,
                )
                for loc, value, message in problems
            ]
        )
    return protocol


def issues_at(
    path: str | Path, problems: list[tuple[tuple[str | int, ...], Any, str]]
) -> list[ProtocolIssue]:
    """``[(field path, value, message)]`` found after load, as issues with the file's lines."""
    file = str(path)
    _, lines = load_yaml_with_lines(file, Path(path).read_text(encoding="utf-8"))
    return [
        ProtocolIssue(
            file,
            lines.line_of(loc),
            ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "["),
            message,
            value,
            value is not None,
        )
        for loc, value, message in problems
    ]
