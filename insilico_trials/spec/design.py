"""The protocol's ``design:`` section: scenarios, looks, thresholds, calibration.

A frozen schema validated with the protocol (see :mod:`insilico_trials.infer.design` for what
is computed from it). The rules that involve other sections of the protocol (the design's
endpoint against ``analysis.model``, interim patient counts against the arms' sizes, a
borrowing method with a conjugate form) are in :func:`design_problems`, which
:class:`insilico_trials.spec.protocol.TrialProtocol` applies at load, so ``validate`` and
``design`` agree on every protocol.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from insilico_trials.errors import InputError
from insilico_trials.spec.catalog import OUTCOME_FAMILIES
from insilico_trials.units import DAYS_PER_MONTH, DAYS_PER_WEEK

__all__ = [
    "BORROW",
    "ENDPOINT_OF_MODEL",
    "Calibration",
    "DesignError",
    "DesignSpec",
    "Endpoint",
    "Method",
    "Scenario",
    "design_problems",
    "treatment_arm",
]

Endpoint = Literal["binary", "continuous", "tte"]
Method = Literal["none", "full", "power", "robust_mixture"]
Prob = Annotated[float, Field(gt=0, lt=1)]
BORROW = {"none": "none", "full": "full", "power": "power", "robust_mixture": "robust"}
ENDPOINT_OF_MODEL = {name: f.kind for name, f in OUTCOME_FAMILIES.items()}


class DesignError(InputError):
    """A design request that cannot be evaluated: names the field, the value and the fix."""


# --------------------------------------------------------------------------- schema


class _D(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class Scenario(_D):
    """True parameters of the real arms: rates (binary), means (continuous, units of the
    endpoint) or median times to event in months (tte)."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_\-]*$", max_length=40)
    control: float
    treatment: float
    description: str = ""


class Calibration(_D):
    """Find the final-look success threshold giving ``target`` type I error in ``scenario``."""

    target: Prob = 0.025
    scenario: str | None = Field(
        default=None, description="default: the first null scenario without drift"
    )
    bootstrap: int = Field(default=200, ge=20, le=10_000)


class DesignSpec(_D):
    """The ``design:`` section of a protocol (see :mod:`insilico_trials.infer.design`)."""

    endpoint: Endpoint
    virtual_control: Any = Field(
        default=None, description="no longer declared: the virtual arms are simulated"
    )
    scenarios: list[Scenario] = Field(min_length=1)
    interim_fractions: list[Prob] = Field(
        default_factory=list, description="interim looks as fractions of each arm's n"
    )
    interim_patients: list[int] = Field(
        default_factory=list, description="interim looks at total enrolled patients"
    )
    efficacy_threshold: Prob | list[Prob] = Field(
        default=0.99, description="stop for efficacy at an interim when P(criterion) > this"
    )
    futility_threshold: Prob | list[Prob] | None = Field(
        default=None, description="stop for futility at an interim when P(criterion) < this"
    )
    success_threshold: Prob | None = Field(
        default=None, description="final look; default analysis.decision.threshold"
    )
    futility_pos: Prob | list[Prob] | None = Field(
        default=None,
        description="stop for futility at an interim when the predictive probability of "
        "success at the final analysis is below this (binary endpoint; the same rule as update)",
    )
    compare_borrowing: list[Method] = Field(default_factory=list)
    calibration: Calibration | None = Calibration()
    replicates: int = Field(default=1000, ge=1, le=10_000_000)
    batch_size: int = Field(default=2500, ge=1, le=10_000_000)
    quadrature_nodes: int = Field(default=2000, ge=50, le=20_000)

    @model_validator(mode="after")
    def _consistent(self) -> DesignSpec:
        if self.virtual_control is not None:
            raise ValueError(
                "virtual_control is no longer declared by hand: design simulates the protocol's "
                "replicate virtual control arms (synthetic_control.virtual_replicates) exactly as "
                "run does, so the prior it evaluates is the one the analysis uses; remove it"
            )
        if self.interim_fractions and self.interim_patients:
            raise ValueError("give interim_fractions or interim_patients, not both")
        for name in ("interim_fractions", "interim_patients"):
            v = getattr(self, name)
            if any(b <= a for a, b in itertools.pairwise(v)):
                raise ValueError(f"{name} must be strictly increasing, got {v}")
        n_int = len(self.interim_fractions or self.interim_patients)
        if self.futility_pos is not None and self.endpoint != "binary":
            raise ValueError(
                "futility_pos: the predictive probability of success is computed for a binary "
                f"endpoint only, not {self.endpoint}"
            )
        for name in ("efficacy_threshold", "futility_threshold", "futility_pos"):
            v = getattr(self, name)
            if isinstance(v, list) and len(v) != n_int:
                raise ValueError(f"{name}: need one value per interim look ({n_int}), got {v}")
        names = [s.name for s in self.scenarios]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"scenario names must be unique, repeated: {', '.join(dupes)}")
        for s in self.scenarios:
            for arm in ("control", "treatment"):
                v = getattr(s, arm)
                if self.endpoint == "binary" and not 0.0 < v < 1.0:
                    raise ValueError(f"scenario {s.name}: {arm} rate must be in (0, 1), got {v}")
                if self.endpoint == "tte" and not v > 0.0:
                    raise ValueError(f"scenario {s.name}: {arm} median must be > 0, got {v}")
        cal = self.calibration
        if cal is not None and cal.scenario is not None and cal.scenario not in names:
            raise ValueError(
                f"calibration.scenario {cal.scenario!r} is not a scenario: {', '.join(names)}"
            )
        return self


def design_problems(protocol: Any) -> list[tuple[tuple[str | int, ...], Any, str]]:
    """Cross-section checks of a protocol's design: ``[(field path, value, message)]``.

    The design endpoint must match ``analysis.model``, ``synthetic_control.method`` must have a
    conjugate form, interim patient counts must be below the total sample size.
    """
    d = protocol.design
    out: list[tuple[tuple[str | int, ...], Any, str]] = []
    if d is None:
        return out
    want = ENDPOINT_OF_MODEL[protocol.analysis.model]
    if d.endpoint != want:
        out.append(
            (
                ("design", "endpoint"),
                d.endpoint,
                f"analysis.model {protocol.analysis.model} needs {want}",
            )
        )
    method = protocol.synthetic_control.method
    if method not in BORROW:
        out.append(
            (
                ("synthetic_control", "method"),
                method,
                "design has conjugate fast paths for none, full, power, robust_mixture only",
            )
        )
    total = protocol.control_arm.n + treatment_arm(protocol).n
    for i, k in enumerate(d.interim_patients):
        if not 0 < k < total:
            out.append(
                (("design", "interim_patients", i), k, f"must be in (0, {total}) total patients")
            )
    sc = protocol.synthetic_control
    if "power" in {method, *d.compare_borrowing} and sc.a0 is None:
        out.append(
            (
                ("synthetic_control", "a0"),
                None,
                "design compares the power prior: give a0 (without it, it would silently be "
                "full borrowing)",
            )
        )
    if "robust_mixture" in d.compare_borrowing and sc.vague_weight is None:
        out.append(
            (
                ("synthetic_control", "vague_weight"),
                None,
                "design compares robust_mixture: give its vague_weight",
            )
        )
    if protocol.analysis.covariates:
        out.append(
            (
                ("analysis", "covariates"),
                list(protocol.analysis.covariates),
                "design simulates the analysis without covariates; remove them or the design",
            )
        )
    if d.endpoint == "tte":
        if protocol.analysis.model != "tte_exponential":
            out.append(
                (
                    ("analysis", "model"),
                    protocol.analysis.model,
                    "a tte design evaluates the constant-hazard analysis exactly (quadrature); "
                    "use analysis.model: tte_exponential so that design and analysis agree",
                )
            )
        ep = protocol.endpoints
        accrual_end = total / ep.accrual_per_month
        t_end = accrual_end + ep.follow_up_weeks * DAYS_PER_WEEK / DAYS_PER_MONTH
        for i, f in enumerate(d.interim_fractions):
            if f * t_end >= accrual_end:
                out.append(
                    (
                        ("design", "interim_fractions", i),
                        f,
                        f"this look is at month {f * t_end:.1f}, after enrolment ends (month "
                        f"{accrual_end:.1f} at {ep.accrual_per_month:g} patients per month): "
                        "stopping there saves no patient; place it before "
                        f"{accrual_end / t_end:.3f} or use interim_patients",
                    )
                )
    return out


def treatment_arm(protocol: Any) -> Any:
    name = protocol.analysis.treatment
    arms = protocol.treatment_arms
    return next((a for a in arms if a.name == name), arms[0])
