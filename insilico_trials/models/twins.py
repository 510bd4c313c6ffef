"""Patient digital-twin models: declared, reusable ODE families fitted to one biomarker.

A twin model is a frozen :class:`TwinModel`: its states, the per-patient and shared
parameters, its fixed constants (with units), its right-hand side in Lotka-Volterra
(per-capita) form ``dy_i/dt = y_i g_i(y, u)``, the observation that links the states to the
measured biomarker, and the default priors of its parameters. Solving lives in
:mod:`insilico_trials.sim.twins` (reference solver) and :mod:`insilico_trials.infer.twins`
(the differentiable solver inside the Bayesian fit); both read only this declaration, so a
second twin model is a new entry of :data:`TWIN_MODELS`, not a new pipeline.

The per-capita form is what the solvers rely on: states are positive population sizes, and
the differentiable solver integrates their logarithms (``d log y_i / dt = g_i``), which keeps
them positive and is far more accurate at a fixed step when a population decays fast.

``zhang2022``
    The two-population competition model of Zhang, Cunningham, Brown and Gatenby, eLife
    2022;11:e76284 (doi:10.7554/eLife.76284), as written in the authors' code
    (github.com/cunninghamjj/Evolution-based-mathematical-models-significantly-prolong-
    response-to-Abiraterone-in-mCRPC, ``code/solveSRODE.m``)::

        dS/dt = rS S (1 - (S + R) / (K (1 - 0.95 u(t))))
        dR/dt = rR R (1 - (alpha S + R) / K)
        rS = 0.0156 beta / day,  rR = 0.0091 beta / day,  K = 10000 cells

    ``u(t)`` is 1 on abiraterone and 0 off; ``S`` (abiraterone-sensitive) and ``R``
    (resistant) in cells; ``alpha`` (alpha_RS, the competitive effect of sensitive on
    resistant cells) and ``beta`` (a growth-rate scale) are shared by all patients; ``S0``,
    ``R0`` (cells at day 0) are per patient. In the authors' code the model PSA is
    ``S + R`` divided by its own maximum and compared with PSA divided by the patient's
    maximum (``code/R_Beta_GridSearch.m``): the ng/mL per cell is therefore free per patient.
    Here that is explicit: ``PSA = c (S + R)`` with ``c`` (ng/mL per cell) a per-patient
    parameter. PSA per tumour cell varies between men by orders of magnitude (PSA-low
    disease, tumour volume not measured), and the model's "cells" are nominal units of a
    carrying capacity of 10000, so one fixed ``c`` would tie every patient's burden to his
    PSA level. ``c`` is identified through the absolute thresholds of the model (the
    on-treatment capacity 500 cells and ``K``): the depth and speed of the PSA fall on
    abiraterone depend on ``S + R`` in cells, not only on PSA.

    Notes on the source: the authors' RK4 takes 6 steps of 1/6 time unit per data day
    (``nRKsteps = t_max * 6; h = t_max / nRKsteps``) but advances the data-day index once per
    step, so their fitted ``beta`` is, in the per-day convention used here, six times ours;
    their code also clips S and R to [0, 10000], which the exact solution never needs
    (positive states stay positive; neither population can exceed K once below it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from insilico_trials.errors import InputError

__all__ = [
    "TWIN_MODELS",
    "Constant",
    "LogNormalPrior",
    "Observation",
    "TwinModel",
    "TwinModelError",
    "get_twin_model",
]


class TwinModelError(InputError):
    """An unknown twin model, or parameters that do not match its declaration."""


@dataclass(frozen=True)
class Constant:
    """A fixed constant of a model: value, unit and where it comes from."""

    value: float
    unit: str
    source: str = ""


@dataclass(frozen=True)
class LogNormalPrior:
    """``log(x) ~ Normal(log(median), log_sd)`` for a positive parameter.

    For a per-patient parameter this is the prior of the population median; the
    between-patient spread has its own prior in the fit.
    """

    median: float
    log_sd: float
    unit: str
    why: str = ""

    def __post_init__(self) -> None:
        if not (self.median > 0 and self.log_sd > 0):
            raise TwinModelError(
                f"LogNormalPrior: median and log_sd must be > 0, got {self.median}, {self.log_sd}",
                rule="median > 0 and log_sd > 0",
                actual=(self.median, self.log_sd),
                expected="> 0",
            )


@dataclass(frozen=True)
class Observation:
    """What is measured: ``name = scale * sum_i weights[i] * y_i``.

    Attributes
    ----------
    name, unit
        The biomarker and its unit (``"psa"``, ``"ng/mL"``).
    weights
        One weight per state (dimensionless).
    scale
        ``"per_patient"``: the scale (e.g. ng/mL per cell) is a per-patient parameter named
        ``scale_name``; ``"fixed"``: it is the constant ``fixed_scale``.
    scale_name, scale_unit
        Name and unit of the scale parameter.
    fixed_scale
        The scale when ``scale == "fixed"``.
    assay_floor
        The biomarker's lower assay range (unit of the biomarker): below it the measurement
        error is absolute, not proportional (used by the residual error model of the fit).
    """

    name: str
    unit: str
    weights: tuple[float, ...]
    scale: Literal["per_patient", "fixed"]
    scale_name: str
    scale_unit: str
    fixed_scale: float | None = None
    assay_floor: float = 0.0
    relative_floor: float = 0.0


def _zhang_per_capita(y: Sequence[Any], u: Any, p: Mapping[str, Any], k: Mapping[str, float]):
    # Only arithmetic, so the same function runs on numpy arrays and pytensor tensors.
    s, r = y
    cap = k["K"]
    cap_s = cap * (1.0 - k["kill"] * u)
    g_s = k["rS"] * p["beta"] * (1.0 - (s + r) / cap_s)
    g_r = k["rR"] * p["beta"] * (1.0 - (p["alpha"] * s + r) / cap)
    return (g_s, g_r)


def _zhang_per_capita_jacobian(y, u, p, k, g, gy, gp):
    # Arrays in declared order: y (S, R), p (alpha, beta), k (K, kill, rS, rR). Writes the
    # per-capita rates g, d g / d y (gy) and d g / d p (gp) of _zhang_per_capita.
    s = y[0]
    r = y[1]
    alpha = p[0]
    beta = p[1]
    cap = k[0]
    cap_s = cap * (1.0 - k[1] * u)
    rs = k[2] * beta
    rr = k[3] * beta
    g[0] = rs * (1.0 - (s + r) / cap_s)
    g[1] = rr * (1.0 - (alpha * s + r) / cap)
    gy[0, 0] = -rs / cap_s
    gy[0, 1] = -rs / cap_s
    gy[1, 0] = -rr * alpha / cap
    gy[1, 1] = -rr / cap
    gp[0, 0] = 0.0
    gp[0, 1] = k[2] * (1.0 - (s + r) / cap_s)
    gp[1, 0] = -rr * s / cap
    gp[1, 1] = k[3] * (1.0 - (alpha * s + r) / cap)


@dataclass(frozen=True)
class TwinModel:
    """A twin-model family (see the module docstring).

    Attributes
    ----------
    name, citation
        Registry key and the source of the equations.
    states, state_unit
        State names in solver order, and their unit.
    initial
        For each state, the per-patient parameter that is its value at day 0.
    patient_parameters
        Per-patient parameters, including ``initial`` and a per-patient observation scale.
    shared_parameters
        Parameters shared by all patients of a cut.
    constants
        Fixed constants by name.
    per_capita
        ``per_capita(y, u, params, constants) -> g``: per-capita rates (1/day) of each
        state; ``dy_i/dt = y_i g_i``. ``u`` is the treatment indicator (1 on, 0 off).
    observation
        The measured biomarker.
    per_capita_jacobian
        Optional, for speed: ``f(y, u, p, k, g, gy, gp)`` writing the per-capita rates
        ``g`` (ns,), ``d g / d y`` into ``gy`` (ns, ns) and ``d g / d p`` into ``gp`` (ns,
        n_shared), with ``y``, ``p``, ``k`` arrays in ``states``, ``shared_parameters`` and
        ``constants`` order; arithmetic and indexing only, so numba compiles it. With it the
        fit solves the model in a compiled loop
        (:mod:`insilico_trials.infer.twin_solver`); without it, in a pytensor ``scan``.
        Checked against the derivatives of ``per_capita`` in ``tests/test_twin_solver.py``.
    priors
        A :class:`LogNormalPrior` for every shared parameter and every per-patient quantity
        the fit samples (:attr:`fit_quantities`; for these, the prior of the population
        median).
    time_unit
        ``"day"``.
    """

    name: str
    citation: str
    states: tuple[str, ...]
    state_unit: str
    initial: tuple[str, ...]
    patient_parameters: tuple[str, ...]
    shared_parameters: tuple[str, ...]
    constants: Mapping[str, Constant]
    per_capita: Callable[..., tuple[Any, ...]] = field(repr=False)
    observation: Observation
    priors: Mapping[str, LogNormalPrior]
    time_unit: str = "day"
    per_capita_jacobian: Callable[..., None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        needed = (*self.fit_quantities, *self.shared_parameters)
        missing = [q for q in needed if q not in self.priors]
        bad_init = [q for q in self.initial if q not in self.patient_parameters]
        if (
            missing
            or bad_init
            or len(self.initial) != len(self.states)
            or len(self.observation.weights) != len(self.states)
        ):
            raise TwinModelError(
                f"twin model {self.name!r}: inconsistent declaration (quantities without a "
                f"prior {missing}, initial states not per-patient parameters {bad_init})",
                rule="a prior for every fitted quantity; one initial parameter and weight per state",
                where=f"TWIN_MODELS[{self.name!r}]",
            )

    @property
    def fit_quantities(self) -> tuple[str, ...]:
        """The per-patient quantities the fit samples (each positive, log scale):

        ``total0``, the sum of the initial states; ``ratio0_<state>``, each later state's
        initial value over the first state's; ``baseline``, the biomarker at day 0 (when
        the observation scale is per patient; the scale is then ``baseline`` over the
        weighted initial states). The model's own per-patient parameters follow from these
        one to one. Sampling these rather than the initial states and the scale takes the
        posterior's ridges out: the day-0 biomarker is pinned by the first records whatever
        the burden, and the burden and the resistant share are what the dynamics inform.
        """
        out = ("total0", *(f"ratio0_{s}" for s in self.states[1:]))
        return (*out, "baseline") if self.observation.scale == "per_patient" else out

    @property
    def constant_values(self) -> dict[str, float]:
        """The constants as plain floats, by name."""
        return {k: c.value for k, c in self.constants.items()}

    def rates(self, y: Sequence[Any], u: Any, params: Mapping[str, Any]) -> tuple[Any, ...]:
        """Per-capita rates ``g_i`` (1/day) of every state."""
        return self.per_capita(y, u, params, self.constant_values)

    def rhs(self, y: Sequence[Any], u: Any, params: Mapping[str, Any]) -> tuple[Any, ...]:
        """``dy/dt`` (state unit per day): ``y_i g_i(y, u)``; arrays broadcast over patients."""
        return tuple(yi * gi for yi, gi in zip(y, self.rates(y, u, params), strict=True))

    def observe(self, y: Sequence[Any], scale: Any) -> Any:
        """The biomarker (``observation.unit``) from the states and the scale."""
        total = sum(w * yi for w, yi in zip(self.observation.weights, y, strict=True))
        return scale * total


TWIN_MODELS: Mapping[str, TwinModel] = MappingProxyType(
    {
        "zhang2022": TwinModel(
            name="zhang2022",
            citation=(
                "Zhang J, Cunningham J, Brown J, Gatenby R. eLife 2022;11:e76284, "
                "doi:10.7554/eLife.76284; equations as in the authors' code/solveSRODE.m"
            ),
            states=("S", "R"),
            state_unit="cells",
            initial=("S0", "R0"),
            patient_parameters=("S0", "R0", "c"),
            shared_parameters=("alpha", "beta"),
            constants=MappingProxyType(
                {
                    "K": Constant(10000.0, "cells", "carrying capacity, solveSRODE.m"),
                    "kill": Constant(
                        0.95, "1", "abiraterone cuts S's capacity to 5% (10000 - 9500 u)"
                    ),
                    "rS": Constant(0.0156, "1/day", "sensitive growth rate at beta = 1"),
                    "rR": Constant(0.0091, "1/day", "resistant growth rate at beta = 1"),
                }
            ),
            per_capita=_zhang_per_capita,
            per_capita_jacobian=_zhang_per_capita_jacobian,
            observation=Observation(
                name="psa",
                unit="ng/mL",
                weights=(1.0, 1.0),
                scale="per_patient",
                scale_name="c",
                scale_unit="ng/mL per cell",
                # Commercial PSA assays quantify down to 0.01-0.1 ng/mL; the lowest value of
                # the trial's series is 0.03 ng/mL.
                assay_floor=0.05,
                relative_floor=0.05,
            ),
            priors=MappingProxyType(
                {
                    "total0": LogNormalPrior(
                        3000.0, 1.5, "cells", "S0 + R0: a tumour below K = 10000 at day 0"
                    ),
                    "ratio0_R": LogNormalPrior(
                        0.03, 2.5, "1", "R0 / S0: resistant cells a minority, 1:5000 to 5:1"
                    ),
                    "baseline": LogNormalPrior(
                        10.0, 2.0, "ng/mL", "PSA at day 0 in mCRPC: ~0.2-500 ng/mL (2 sd)"
                    ),
                    "alpha": LogNormalPrior(
                        3.0, 1.0, "1", "eLife 2022: alpha_RS fitted at 6, 2-3x pre-trial values"
                    ),
                    "beta": LogNormalPrior(
                        1.0, 1.0, "1", "the published rates (0.0156, 0.0091 /day) at beta = 1"
                    ),
                }
            ),
        ),
    }
)


def get_twin_model(name: str) -> TwinModel:
    """The twin model registered under ``name``."""
    try:
        return TWIN_MODELS[name]
    except KeyError:
        raise TwinModelError(
            f"twin model: must be one of {sorted(TWIN_MODELS)}, got {name!r}",
            rule="a registered twin model",
            actual=name,
            expected=str(sorted(TWIN_MODELS)),
            where="model",
        ) from None
