"""The ``glucose`` section of a protocol and an arm's ``controller``: in-silico trials of insulin
dosing in type 1 diabetes (:mod:`insilico_trials.sim.glucose` simulates them).

Example (``protocols/t1d_decision_support.yaml``)::

    glucose:
      patients: {groups: [adolescent], spread: 0.5, settings_cv: 0.25}
      days: 28
      meals:
        - {name: breakfast, time_h: 7, time_sd_min: 30, carbs_g: 50, carbs_cv: 0.2}
        - {name: lunch, time_h: 12.5, time_sd_min: 30, carbs_g: 70, carbs_cv: 0.2}
      cgm: {sensor: Dexcom}
      pump: {name: Insulet}
    arms:
      - {name: standard, n: 54, control: true, regimen: null, controller: {kind: basal_bolus}}
      - {name: dss, n: 54, regimen: null, controller: {kind: decision_support}}
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["CGMSpec", "ControllerSpec", "GlucoseSection", "HypoTreatment", "Meal", "PatientSource"]

PositiveFloat = Annotated[float, Field(gt=0)]
GLUCOSE_MODEL = "uva_padova"
_NAMES = tuple(f"{g}#{i:03d}" for g in ("adolescent", "adult", "child") for i in range(1, 11))


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class Meal(_Spec):
    """One meal of every simulated day."""

    name: str = Field(min_length=1, max_length=40)
    time_h: float = Field(ge=0, lt=24, description="mean time of day, hours")
    time_sd_min: float = Field(default=0.0, ge=0, le=120, description="day-to-day SD, minutes")
    carbs_g: float = Field(gt=0, le=300, description="mean carbohydrate, g")
    carbs_cv: float = Field(default=0.0, ge=0, le=1, description="day-to-day CV of the amount")
    probability: float = Field(default=1.0, gt=0, le=1, description="chance it is eaten")
    bolus: bool = Field(default=True, description="announced to the controller (bolused)")


class PatientSource(_Spec):
    """Where the virtual patients come from: simglucose's 30 (``names`` or ``groups``), and how
    far the virtual population spreads around them (``spread``: a multiple of their group's
    between-patient SD; 0 uses them as they are). ``settings_cv``: the CV of the error of each
    patient's starting pump settings (basal, CR, CF) around the ones that fit it (a clinic's
    settings are not perfect)."""

    names: list[str] | None = Field(default=None, min_length=1, description="simglucose names")
    groups: list[Literal["adolescent", "adult", "child"]] = Field(
        default_factory=lambda: ["adolescent", "adult", "child"], min_length=1
    )
    spread: float = Field(default=0.5, ge=0, le=2)
    settings_cv: float = Field(default=0.0, ge=0, le=1)

    @field_validator("names")
    @classmethod
    def _known(cls, v: list[str] | None) -> list[str] | None:
        for name in v or []:
            if name not in _NAMES:
                raise ValueError(
                    f"unknown patient name {name!r}; simglucose's patients are adolescent#001 "
                    "to adolescent#010, adult#001 to adult#010, child#001 to child#010"
                )
        return v

    def source_names(self) -> list[str]:
        if self.names is not None:
            return list(self.names)
        return [n for n in _NAMES if n.split("#")[0] in self.groups]


class CGMSpec(_Spec):
    """The sensor (simglucose's sensor_params.csv); ``noise: false`` reads the true
    subcutaneous glucose at the sensor's sample times."""

    sensor: Literal["Dexcom", "GuardianRT", "Navigator"] = "Dexcom"
    noise: bool = True


class PumpSpec(_Spec):
    name: Literal["Insulet", "Cozmo"] = "Insulet"


class HypoTreatment(_Spec):
    """Rescue carbohydrate when the CGM reads below ``below_mg_dl``, at most every
    ``every_min`` minutes (the rule of 15)."""

    below_mg_dl: float = Field(default=70.0, gt=0, le=150)
    carbs_g: float = Field(default=15.0, gt=0, le=100)
    every_min: int = Field(default=15, ge=1, le=240)


def _default_meals() -> list[Meal]:
    return [
        Meal(name="breakfast", time_h=7.0, time_sd_min=30, carbs_g=50, carbs_cv=0.2),
        Meal(name="lunch", time_h=12.5, time_sd_min=30, carbs_g=70, carbs_cv=0.2),
        Meal(name="snack", time_h=16.0, time_sd_min=30, carbs_g=15, carbs_cv=0.3,
             probability=0.5, bolus=False),
        Meal(name="dinner", time_h=19.0, time_sd_min=30, carbs_g=80, carbs_cv=0.2),
    ]  # fmt: skip


class GlucoseSection(_Spec):
    """A type 1 diabetes trial: patients, days, meals, devices (``disease.model: uva_padova``).

    ``run_in_days`` are simulated on every arm's starting settings and left out of the
    endpoints (the decision-support arm makes no change during them)."""

    model: Literal["library/t1d_uva_padova.yaml"] = "library/t1d_uva_padova.yaml"
    patients: PatientSource = PatientSource()
    days: int = Field(default=28, ge=1, le=365, description="days on the arms' algorithms")
    run_in_days: int = Field(default=0, ge=0, le=90)
    meals: list[Meal] = Field(default_factory=_default_meals, min_length=1, max_length=12)
    carb_estimate_cv: float = Field(default=0.0, ge=0, le=1)
    cgm: CGMSpec = CGMSpec()
    pump: PumpSpec | None = PumpSpec()
    hypo_treatment: HypoTreatment | None = HypoTreatment()

    def meal_problems(self) -> list[tuple[tuple[str | int, ...], object, str]]:
        """Meals out of order of time or with a repeated name, as ``(field path, value,
        message)`` (the protocol reports them at the meal's own line)."""
        out: list[tuple[tuple[str | int, ...], object, str]] = []
        for i in range(1, len(self.meals)):
            this, before = self.meals[i], self.meals[i - 1]
            if this.time_h <= before.time_h:
                out.append(
                    (("glucose", "meals", i, "time_h"), this.time_h,
                     f"meals must be in order of time_h: {this.name} at {this.time_h:g} h "
                     f"comes after {before.name} at {before.time_h:g} h")
                )  # fmt: skip
        seen: set[str] = set()
        for i, m in enumerate(self.meals):
            if m.name in seen:
                out.append((("glucose", "meals", i, "name"), m.name, "meal names must be unique"))
            seen.add(m.name)
        return out


class ControllerSpec(_Spec):
    """An arm's dosing algorithm (:mod:`insilico_trials.sim.glucose`): ``basal_bolus``
    (standard care: fixed basal, carbohydrate ratio and correction factor) or
    ``decision_support`` (the same, with the settings revised from the CGM data every
    ``every_days``)."""

    kind: Literal["basal_bolus", "decision_support"]
    target_mg_dl: float = Field(default=140.0, ge=70, le=250)
    correct_above_mg_dl: float = Field(default=150.0, ge=70, le=300)
    every_days: int = Field(default=7, ge=1, le=90, description="decision_support only")
    step: float = Field(default=0.1, gt=0, le=0.5, description="decision_support only")
    max_factor: float = Field(default=2.0, ge=1, le=5, description="decision_support only")

    @model_validator(mode="after")
    def _fields(self) -> ControllerSpec:
        if self.kind == "basal_bolus":
            changed = [
                f for f in ("every_days", "step", "max_factor")
                if getattr(self, f) != type(self).model_fields[f].default
            ]  # fmt: skip
            if changed:
                raise ValueError(f"{', '.join(changed)} apply to decision_support only")
        if self.correct_above_mg_dl < self.target_mg_dl:
            raise ValueError(
                f"correct_above_mg_dl ({self.correct_above_mg_dl:g}) must not be below "
                f"target_mg_dl ({self.target_mg_dl:g})"
            )
        return self
