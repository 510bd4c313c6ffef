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

__all__ = [
    "BORROW",
    "ENDPOINT_OF_MODEL",
    "Calibration",
    "DesignError",
    "DesignSpec",
    "Endpoint",
    "Method",
    "Scenario",
    "VirtualControl",
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


class VirtualControl(_D):
    """Summary of the virtual (simulated) control arm, the source of the borrowed prior.

    binary: ``n``, ``rate`` (responders ``round(n rate)``); continuous: ``n``, ``mean``, ``sd``
    (the per-patient sd, also used as the known sigma of the real arms); tte: ``n``,
    ``median_months`` (exponential, every virtual patient followed to the event: ``n`` events
    in ``n median / ln 2`` months of exposure).
    """

    n: int = Field(ge=1, le=1_000_000)
    rate: Prob | None = None
    mean: float | None = None
    sd: Annotated[float, Field(gt=0)] | None = None
    median_months: Annotated[float, Field(gt=0)] | None = None


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
    virtual_control: VirtualControl
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
    compare_borrowing: list[Method] = Field(default_factory=list)
    calibration: Calibration | None = Calibration()
    replicates: int = Field(default=1000, ge=1, le=10_000_000)
    batch_size: int = Field(default=2500, ge=1, le=10_000_000)
    quadrature_nodes: int = Field(default=2000, ge=50, le=20_000)

    @model_validator(mode="after")
    def _consistent(self) -> DesignSpec:
        vc = self.virtual_control
        need = {"binary": ("rate",), "continuous": ("mean", "sd"), "tte": ("median_months",)}
        missing = [k for k in need[self.endpoint] if getattr(vc, k) is None]
        if missing:
            raise ValueError(f"endpoint {self.endpoint} needs virtual_control.{', '.join(missing)}")
        if self.interim_fractions and self.interim_patients:
            raise ValueError("give interim_fractions or interim_patients, not both")
        for name in ("interim_fractions", "interim_patients"):
            v = getattr(self, name)
            if any(b <= a for a, b in itertools.pairwise(v)):
                raise ValueError(f"{name} must be strictly increasing, got {v}")
        n_int = len(self.interim_fractions or self.interim_patients)
        for name in ("efficacy_threshold", "futility_threshold"):
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
    return out


def treatment_arm(protocol: Any) -> Any:
    name = protocol.analysis.treatment
    arms = protocol.treatment_arms
    return next((a for a in arms if a.name == name), arms[0])
