"""Tumour growth, drug kill and treatment resistance.

Plain-array kernels, vectorised across patients. Exposure comes in as arrays on a time grid
(concentration in mg/L, daily AUC in mg*h/L, or dose in mg, whatever the model's ``KD`` was
estimated against), so this module never imports the PK engine.

Models (``TUMOUR_MODELS``) and the units of their parameters:

=============  ==========================================================================
exponential    ``SLD0`` mm, ``KG`` 1/day, optional ``KD`` 1/day per exposure unit
logistic       ``SLD0`` mm, ``KG`` 1/day, ``SLDMAX`` mm, optional ``KD``
gompertz       ``SLD0`` mm, ``KG`` 1/day (decay of the growth rate), ``SLDMAX`` mm, optional ``KD``
claret         ``SLD0`` mm, ``KL`` 1/week, ``KD`` 1/week per exposure unit, ``LAMBDA`` 1/week
               (Claret et al., J Clin Oncol 2009;27:4103, eq. 1; rates per week as published)
stein          ``SLD0`` mm, ``G`` 1/day (regrowth), ``D`` 1/day (decay), optional ``PHI``
               (Stein et al., Oncologist 2008;13:1046; the paper's eq. with ``PHI`` absent)
zhang2017      PSA-producing three-population Lotka-Volterra model of Zhang et al., Nat Commun
               2017;8:1816, see :func:`simulate_zhang`; exposure > 0 means abiraterone on
=============  ==========================================================================

Every model with drug kill uses the log-kill convention ``d y/dt = growth(y) - KD * E(t) * y``.
The solutions are exact (closed form, or exact per step for exposure held at its interval
mean), so there is no ODE solver tolerance to tune.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from insilico_trials.errors import InputError
from insilico_trials.spec.catalog import TUMOUR_MODELS, TumourModel
from insilico_trials.units import DAYS_PER_WEEK

__all__ = [
    "ADAPTIVE_RULES",
    "CLARET2009_FU",
    "TUMOUR_MODELS",
    "ZHANG2017_PARAMS",
    "ZHANG2017_SCRIPT_RULE",
    "ZHANG2017_TRIAL_RULE",
    "AdaptiveRule",
    "DoseHoldRule",
    "TumourModel",
    "TumourModelError",
    "ZhangParams",
    "apply_dose_rule",
    "claret_ttg_days",
    "simulate_tumour",
    "simulate_zhang",
    "simulate_zhang_trial",
    "zhang_equilibrium",
    "zhang_ess",
]


class TumourModelError(InputError):
    """A tumour model was called with parameters or arrays it cannot use."""


# Claret et al. 2009 fluorouracil (phase III) tumour-growth-inhibition estimates: typical values
# (rates per week; KD per g/week of FU dose) and IIV variances (log scale). Transcribed from a
# public Pumas teaching exercise that reproduces the paper's FU phase III model; the paper's own
# table could not be reached from this environment, so these are NOT verified against it.
CLARET2009_FU = {
    "KL": 0.015,  # 1/week
    "KD": 0.058,  # 1/week per (g/week)
    "LAMBDA": 0.042,  # 1/week
    "omega2": (0.556, 0.540, 0.450),  # IIV variances of log KL, log KD, log LAMBDA
    "sigma_add_mm": 14.9,
    "exposure": "FU dose in g per week",
    "source": "Claret L et al. J Clin Oncol 2009;27:4103 (FU phase III), via a Pumas exercise; "
    "unverified transcription",
}


# --------------------------------------------------------------------------------------------
# Argument checks, in one place
# --------------------------------------------------------------------------------------------


def _as_param(params: Mapping[str, object], name: str, n: int | None) -> np.ndarray:
    value = np.asarray(params[name], dtype=np.float64)
    if value.ndim > 1:
        raise TumourModelError(
            f"parameter {name}: must be a scalar or shape (n,), got {value.shape}"
        )
    if not np.all(np.isfinite(value)):
        raise TumourModelError(
            f"parameter {name}: must be finite, got {value[~np.isfinite(value)][:3]}"
        )
    if n is not None and value.ndim == 1 and value.shape[0] != n:
        raise TumourModelError(f"parameter {name}: has {value.shape[0]} values, expected {n}")
    return value


def _check_params(model: TumourModel, params: Mapping[str, object]) -> tuple[dict, int]:
    missing = [k for k in model.required if k not in params]
    if missing:
        raise TumourModelError(
            f"model {model.name!r}: missing parameters {missing}; needs {list(model.required)}"
            f" (optional {list(model.optional)})"
        )
    unknown = sorted(set(params) - set(model.required) - set(model.optional))
    if unknown:
        raise TumourModelError(
            f"model {model.name!r}: unknown parameters {unknown}; allowed "
            f"{list(model.required + model.optional)}"
        )
    sizes = {np.asarray(v).shape[0] for v in params.values() if np.ndim(v) == 1}
    if len(sizes) > 1:
        raise TumourModelError(f"model {model.name!r}: parameter arrays differ in length: {sizes}")
    n = sizes.pop() if sizes else 1
    out = {k: np.broadcast_to(_as_param(params, k, n), (n,)) for k in params}
    if "SLD0" in out and np.any(out["SLD0"] <= 0):
        raise TumourModelError(f"parameter SLD0: must be > 0 mm, got min {out['SLD0'].min()}")
    for k in ("SLDMAX",):
        if k in out and np.any(out[k] <= 0):
            raise TumourModelError(f"parameter {k}: must be > 0 mm, got min {out[k].min()}")
    return out, n


def _check_times(times_days: np.ndarray) -> np.ndarray:
    t = np.asarray(times_days, dtype=np.float64)
    if t.ndim != 1 or t.size == 0:
        raise TumourModelError(f"times_days: must be a non-empty 1-d array, got shape {t.shape}")
    if np.any(t < 0) or np.any(np.diff(t) < 0):
        raise TumourModelError("times_days: must be >= 0 and non-decreasing (days from start)")
    return t


def _check_exposure(
    exposure_times_days: np.ndarray | None, exposure: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    if exposure_times_days is None:
        raise TumourModelError("exposure_times_days: required when exposure is given")
    te = np.asarray(exposure_times_days, dtype=np.float64)
    e = np.asarray(exposure, dtype=np.float64)
    if te.ndim != 1 or te.size < 2 or np.any(np.diff(te) <= 0):
        raise TumourModelError(
            "exposure_times_days: must be a strictly increasing 1-d array of >= 2 days, "
            f"got {te[:4]}"
        )
    if e.ndim == 1:
        e = e[None, :]
    if e.ndim != 2 or e.shape[1] != te.size or e.shape[0] not in (1, n):
        raise TumourModelError(
            f"exposure: must have shape ({n}, {te.size}) or ({te.size},), got {np.shape(exposure)}"
        )
    if np.any(e < 0) or not np.all(np.isfinite(e)):
        raise TumourModelError("exposure: must be finite and >= 0")
    return te, e


def _exposure_on_grid(
    exposure_times_days: np.ndarray | None,
    exposure: np.ndarray | None,
    times_days: np.ndarray,
    n: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Merge the exposure grid and the output times; return (grid (G,), exposure (n, G)).

    Exposure is linear between its grid points and zero outside the grid (no drug before the
    first or after the last exposure time).
    """
    if exposure is None:
        grid = np.unique(np.concatenate([[0.0], times_days]))
        return grid, np.zeros((1, grid.size))
    te, e = _check_exposure(exposure_times_days, exposure, n)
    grid = np.unique(np.concatenate([[0.0], te, times_days]))
    if grid.size == te.size and np.array_equal(grid, te):
        return grid, e
    # Linear interpolation of every row onto the merged grid, vectorised across patients.
    idx = np.clip(np.searchsorted(te, grid, side="right") - 1, 0, te.size - 1)
    nxt = np.minimum(idx + 1, te.size - 1)
    span = te[nxt] - te[idx]
    w = np.where(span > 0, (grid - te[idx]) / np.where(span > 0, span, 1.0), 0.0)
    eg = e[:, idx] * (1.0 - w) + e[:, nxt] * w
    outside = (grid < te[0]) | (grid > te[-1])
    eg[:, outside] = 0.0
    return grid, eg


# --------------------------------------------------------------------------------------------
# Model kernels: (params, grid days, exposure on grid) -> SLD on grid
# --------------------------------------------------------------------------------------------


def _decay_integral(
    te: np.ndarray, e: np.ndarray, lam: np.ndarray, times: np.ndarray
) -> np.ndarray:
    """``int_0^t exp(-lam s) E(s) ds`` at ``times``, shape (n, K); exact for E linear between
    the grid points ``te`` and zero outside them (same time unit for all arguments).

    Per interval [a, a + h] with slope m the integral is ``e^{-lam a} (E_a A + m B)`` with
    ``A = (1 - e^{-x}) / lam``, ``B = (1 - e^{-x}(1 + x)) / lam^2``, ``x = lam h``, on series
    for small ``x`` where the closed forms cancel. Only the exposure grid is touched for all
    patients; output times add one partial interval each.
    """
    lam = lam[:, None]

    def ab(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = lam * h
        small = x < 1e-3
        xs = np.where(small, 1.0, x)
        ls = np.where(small, 1.0, lam)
        em = -np.expm1(-xs)
        a_term = np.where(small, h * (1 - x / 2 + x * x / 6), em / ls)
        b_term = np.where(
            small, h * h * (0.5 - x / 3 + x * x / 8), (em - xs * (1 - em)) / (ls * ls)
        )
        return a_term, b_term

    h = np.diff(te)
    uniform = h.size > 0 and np.allclose(h, h[0], rtol=1e-12, atol=0)
    a_term, b_term = ab(np.array([[h[0]]]) if uniform else h[None, :])
    decay = np.exp(-lam * te[None, :])  # (n, T)
    slope_b = b_term / (h[0] if uniform else h[None, :])
    e0 = e[:, :-1]
    piece = e0 * (a_term - slope_b)
    piece += e[:, 1:] * slope_b
    piece *= decay[:, :-1]
    cum = np.zeros((max(piece.shape[0], decay.shape[0]), te.size))
    np.cumsum(piece, axis=1, out=cum[:, 1:])
    # Output times: full intervals from the cumulative sum, then the partial one.
    tc = np.clip(times, te[0], te[-1])
    j = np.clip(np.searchsorted(te, tc, side="right") - 1, 0, te.size - 2)
    dt = (tc - te[j])[None, :]
    a_p, b_p = ab(dt)
    hj = h[j][None, :]
    m = (e[:, j + 1] - e[:, j]) / hj
    out = cum[:, j] + decay[:, j] * (e[:, j] * a_p + m * b_p)
    out[:, times < te[0]] = 0.0
    return out


def _log_linear(
    p: dict, exposure_times_days, exposure, times: np.ndarray, n: int, model: str
) -> np.ndarray:
    """Exponential and Claret models: ln y = ln y0 + growth t - KD int exp(-lambda s) E(s) ds."""
    if model == "claret":
        # Claret 2009 eq. 1, time in weeks because the published rates are per week.
        scale, growth, lam = DAYS_PER_WEEK, p["KL"], p["LAMBDA"]
    else:
        scale, growth, lam = 1.0, p["KG"], np.zeros(n)
    kd = p.get("KD", np.zeros(n))
    log_y = np.log(p["SLD0"])[:, None] + growth[:, None] * (times / scale)[None, :]
    if exposure is not None:
        te, e = _check_exposure(exposure_times_days, exposure, n)
        kill = _decay_integral(te / scale, np.broadcast_to(e, (n, te.size)), lam, times / scale)
        log_y = log_y - kd[:, None] * kill
    return np.exp(log_y)


def _interval_means(eg: np.ndarray) -> np.ndarray:
    return 0.5 * (eg[:, 1:] + eg[:, :-1])


def _logistic(p: dict, grid: np.ndarray, eg: np.ndarray) -> np.ndarray:
    # Per interval with exposure at its mean: dy/dt = a y - c y^2, a = KG - KD E, c = KG/K,
    # a Bernoulli equation with exact solution y1 = y0 e^{ah} / (1 + c y0 (e^{ah} - 1)/a).
    n = p["SLD0"].shape[0]
    kd = p.get("KD", np.zeros(n))
    c = p["KG"] / p["SLDMAX"]
    em = _interval_means(np.broadcast_to(eg, (n, grid.size)))
    h = np.diff(grid)
    y = np.empty((n, grid.size))
    y[:, 0] = p["SLD0"]
    for j in range(h.size):
        a = p["KG"] - kd * em[:, j]
        ah = a * h[j]
        small = np.abs(ah) < 1e-12
        ratio = np.where(small, h[j], np.expm1(ah) / np.where(small, 1.0, a))
        y[:, j + 1] = y[:, j] * np.exp(ah) / (1.0 + c * y[:, j] * ratio)
    return y


def _gompertz(p: dict, grid: np.ndarray, eg: np.ndarray) -> np.ndarray:
    # u = ln(y/K): du/dt = -KG u - KD E, linear, exact per interval at the interval-mean exposure.
    n = p["SLD0"].shape[0]
    kd = p.get("KD", np.zeros(n))
    b = p["KG"]
    em = _interval_means(np.broadcast_to(eg, (n, grid.size)))
    h = np.diff(grid)
    u = np.empty((n, grid.size))
    u[:, 0] = np.log(p["SLD0"] / p["SLDMAX"])
    for j in range(h.size):
        decay = np.exp(-b * h[j])
        # (1 - e^{-bh})/b, -> h as b -> 0
        gain = np.where(b * h[j] < 1e-12, h[j], -np.expm1(-b * h[j]) / np.where(b > 0, b, 1.0))
        u[:, j + 1] = u[:, j] * decay - kd * em[:, j] * gain
    return p["SLDMAX"][:, None] * np.exp(u)


def _stein(p: dict, grid: np.ndarray, eg: np.ndarray) -> np.ndarray:
    g, d = p["G"][:, None], p["D"][:, None]
    if "PHI" in p:
        phi = p["PHI"][:, None]
        f = phi * np.exp(g * grid) + (1.0 - phi) * np.exp(-d * grid)
    else:
        f = np.exp(-d * grid) + np.exp(g * grid) - 1.0
    return p["SLD0"][:, None] * f


_KERNELS = {
    "logistic": _logistic,
    "gompertz": _gompertz,
    "stein": _stein,
}


def simulate_tumour(
    model: str,
    params: Mapping[str, object],
    *,
    exposure_times_days: np.ndarray | None = None,
    exposure: np.ndarray | None = None,
    times_days: np.ndarray,
) -> np.ndarray:
    """Simulate the observed tumour marker of ``n`` patients at ``times_days``.

    Parameters
    ----------
    model
        One of :data:`TUMOUR_MODELS`: ``exponential``, ``logistic``, ``gompertz``, ``claret``,
        ``stein`` or ``zhang2017``.
    params
        Per-patient parameters, each a scalar or an array of shape ``(n,)``, in the units of
        ``TUMOUR_MODELS[model].units`` (``SLD0`` in mm; Claret rates per week, the other rates
        per day).
    exposure_times_days
        Days from the start of treatment of the exposure grid, shape ``(T,)``, strictly
        increasing. Exposure is linear between grid points and zero outside the grid.
    exposure
        Exposure on that grid, shape ``(n, T)`` or ``(T,)``, in the unit ``KD`` was estimated
        against (mg/L, daily AUC in mg*h/L, or daily dose in mg). ``None`` means untreated.
        For ``zhang2017`` (parameter ``MATRIX``: 0-based row of the published competition
        matrices), abiraterone is on during day ``d`` where exposure at day ``d`` is > 0, and
        ``times_days`` count from the start of abiraterone (after the published untreated
        phase); see :func:`simulate_zhang` for rules and progression.
    times_days
        Output times, days from the start of treatment, shape ``(K,)``, non-decreasing.

    Returns
    -------
    numpy.ndarray
        Shape ``(n, K)``: sum of longest diameters in mm (PSA in model units for
        ``zhang2017``).

    Examples
    --------
    >>> y = simulate_tumour("exponential", {"SLD0": [50.0], "KG": [0.01]}, times_days=[0, 100])
    >>> [round(float(v), 3) for v in y[0]]
    [50.0, 135.914]
    """
    if model not in TUMOUR_MODELS:
        raise TumourModelError(f"model: unknown {model!r}; allowed {sorted(TUMOUR_MODELS)}")
    spec = TUMOUR_MODELS[model]
    times = _check_times(times_days)
    if model == "zhang2017":
        return _simulate_tumour_zhang(spec, params, exposure_times_days, exposure, times)
    p, n = _check_params(spec, params)
    if model in ("exponential", "claret"):
        return _log_linear(p, exposure_times_days, exposure, times, n, model)
    grid, eg = _exposure_on_grid(exposure_times_days, exposure, times, n)
    y = _KERNELS[model](p, grid, eg)
    return np.broadcast_to(y, (n, grid.size))[:, np.searchsorted(grid, times)]


def claret_ttg_days(
    kl_per_week: np.ndarray, kd_per_week: np.ndarray, lambda_per_week: np.ndarray, exposure: float
) -> np.ndarray:
    """Time to tumour growth (nadir time) of the Claret model under constant exposure, days.

    ``d ln y/dt = KL - KD E exp(-lambda t)`` is zero at ``t = ln(KD E / KL) / lambda``; 0 when
    the tumour grows from the start (``KD E <= KL``).
    """
    kl = np.asarray(kl_per_week, dtype=np.float64)
    kde = np.asarray(kd_per_week, dtype=np.float64) * exposure
    lam = np.asarray(lambda_per_week, dtype=np.float64)
    with np.errstate(divide="ignore"):
        t = np.where(kde > kl, np.log(np.maximum(kde, 1e-300) / kl) / lam, 0.0)
    return t * DAYS_PER_WEEK


# --------------------------------------------------------------------------------------------
# State-reactive dosing rules
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdaptiveRule:
    """Stop treatment when a marker falls below a fraction of a reference, resume at another.

    Two named rules of Zhang et al. 2017 (Nat Commun 8:1816), which differ:

    * ``ZHANG2017_TRIAL_RULE`` (``"trial"``), the clinical trial's (Methods, "Clinical
      trial"): hold when PSA < 50% of its pre-treatment value, resume when it is back at that
      value, checked at visits every 28 days: ``AdaptiveRule("PSA", 0.5, 1.0, 28)``;
    * ``ZHANG2017_SCRIPT_RULE`` (``"script"``), the one the paper's simulations use
      (``Abiraterone_Main.m``): on while PSA is above the treatment-start threshold (80% of
      the untreated equilibrium PSA), off once it falls below 40% of that threshold, decided
      at every step from the state before it.

    Attributes
    ----------
    marker
        Name of the simulated marker the rule reads (``"PSA"``).
    stop_below_fraction
        Hold when marker < this fraction of the reference (while on treatment).
    resume_at_fraction
        Resume when marker >= (or >, with ``resume_strictly_above``) this fraction of the
        reference (while off treatment).
    check_every_days
        The rule is evaluated at visits every this many days.
    reference
        ``"baseline"``: the marker's pre-treatment value (the trial); ``"start_threshold"``:
        the model's treatment-start threshold (the script: 80% of the equilibrium PSA).
    resume_strictly_above
        Resume only when the marker exceeds the resume level (the script's ``>``).
    """

    marker: str = "PSA"
    stop_below_fraction: float = 0.5
    resume_at_fraction: float = 1.0
    check_every_days: float = 28.0
    reference: Literal["baseline", "start_threshold"] = "baseline"
    resume_strictly_above: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.stop_below_fraction <= self.resume_at_fraction:
            raise ValueError(
                "AdaptiveRule: need 0 < stop_below_fraction <= resume_at_fraction, got "
                f"{self.stop_below_fraction} and {self.resume_at_fraction}"
            )
        if self.check_every_days <= 0:
            raise ValueError(
                f"AdaptiveRule.check_every_days: must be > 0, got {self.check_every_days}"
            )
        if self.reference not in ("baseline", "start_threshold"):
            raise ValueError(
                f"AdaptiveRule.reference: {self.reference!r}; allowed baseline, start_threshold"
            )

    @classmethod
    def from_spec(cls, spec: object) -> AdaptiveRule:
        """The rule of a protocol's ``regimen.adaptive`` section (named ``trial`` or ``script``)."""
        name = getattr(spec, "rule", "trial")
        if name == "script":
            return ZHANG2017_SCRIPT_RULE
        if name != "trial":
            raise ValueError(f"adaptive rule: {name!r}; allowed {', '.join(ADAPTIVE_RULES)}")
        return cls(
            spec.marker,  # type: ignore[attr-defined]
            spec.stop_below_fraction,  # type: ignore[attr-defined]
            spec.resume_at_fraction,  # type: ignore[attr-defined]
            spec.check_every_days,  # type: ignore[attr-defined]
        )

    def apply(self, on: np.ndarray, marker: np.ndarray, baseline: np.ndarray) -> np.ndarray:
        """New on/off state (bool, shape (n,)) given the marker value at a check visit.

        ``baseline`` is the reference level of each patient (see ``reference``).
        """
        stop = on & (marker < self.stop_below_fraction * baseline)
        level = self.resume_at_fraction * baseline
        back = marker > level if self.resume_strictly_above else marker >= level
        resume = ~on & back
        return (on & ~stop) | resume


ZHANG2017_TRIAL_RULE = AdaptiveRule("PSA", 0.5, 1.0, 28.0)
ZHANG2017_SCRIPT_RULE = AdaptiveRule(
    "PSA", 0.4, 1.0, 1.0, reference="start_threshold", resume_strictly_above=True
)
#: The named adaptive rules a protocol can choose (``regimen.adaptive.rule``).
ADAPTIVE_RULES: dict[str, AdaptiveRule] = {
    "trial": ZHANG2017_TRIAL_RULE,
    "script": ZHANG2017_SCRIPT_RULE,
}


@dataclass(frozen=True)
class DoseHoldRule:
    """Hold, reduce and resume dosing on a toxicity marker (e.g. absolute neutrophil count).

    At each check visit, a patient whose marker is below ``hold_below`` is held (dose factor
    0); a held patient resumes when the marker is back at or above ``resume_at``, at the
    previous dose level times ``reduce_factor`` (one dose level down per hold), never below
    ``min_factor`` (below it, treatment is discontinued for good).

    Typical neutrophil rule: hold below 1.0e9/L, resume at >= 1.5e9/L with one 25% reduction
    (``DoseHoldRule("ANC", 1.0, 1.5, 0.75)``), as in many cytotoxic labels.
    """

    marker: str = "ANC"
    hold_below: float = 1.0
    resume_at: float = 1.5
    reduce_factor: float = 0.75
    min_factor: float = 0.5
    check_every_days: float = 7.0

    def __post_init__(self) -> None:
        if not self.hold_below <= self.resume_at:
            raise ValueError(
                "DoseHoldRule: need hold_below <= resume_at, got "
                f"{self.hold_below} > {self.resume_at}"
            )
        if not 0 < self.reduce_factor <= 1 or not 0 <= self.min_factor <= 1:
            raise ValueError(
                "DoseHoldRule: reduce_factor must be in (0, 1] and min_factor in [0, 1], got "
                f"{self.reduce_factor}, {self.min_factor}"
            )

    def apply(
        self, level: np.ndarray, held: np.ndarray, marker: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (dose level factor, held) after a check visit; dose given = level * ~held."""
        hold = ~held & (marker < self.hold_below)
        resume = held & (marker >= self.resume_at)
        new_level = np.where(resume, level * self.reduce_factor, level)
        new_level = np.where(new_level < self.min_factor - 1e-12, 0.0, new_level)
        new_held = (held | hold) & ~resume
        return new_level, new_held


# --------------------------------------------------------------------------------------------
# Zhang et al. 2017: evolution-based model of metastatic castrate-resistant prostate cancer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZhangParams:
    """Parameters of the Zhang et al. 2017 Lotka-Volterra model of mCRPC under abiraterone.

    Populations are ordered (T+, TP, T-): testosterone-dependent, testosterone-producing
    (CYP17A+) and testosterone-independent cells. Time step one day (see the module note in
    ``insilico_trials/data/zhang2017.md``); cell densities and PSA in model units.

    ``dx_i/dt = r_i x_i (1 - sum_j alpha_ij x_j / K_i)``, ``dPSA/dt = sum_i x_i - sigma PSA``,
    with ``K = (1.5 x_TP, 10000, 10000)`` off abiraterone and ``(0.5 x_TP, 100, 10000)`` on it.
    Integrated, as published, by forward Euler with a step of one day and a floor of 1e-9
    on every density.
    """

    # As the script computes them: r = (0.27726, 0.34657, 0.66542) .* 0.01 (the product, not
    # the decimal literals 2.7726e-3..., which differ in the last bit for one of them).
    r_per_day: tuple[float, float, float] = (0.27726 * 0.01, 0.34657 * 0.01, 0.66542 * 0.01)
    k_off: tuple[float, float, float] = (1.5, 10_000.0, 10_000.0)  # K_T+ is k[0] * x_TP
    k_on: tuple[float, float, float] = (0.5, 100.0, 10_000.0)
    psa_decay_per_day: float = 0.5
    x0_fraction_of_ess: float = 0.4
    start_at_fraction_of_ess_psa: float = 0.8
    floor: float = 1e-9
    # The 22 competition-coefficient sets (a12, a13, a21, a23, a31, a32) of the published
    # virtual patients; row 7 (1-based) is "representative patient #1", row 5 "#2".
    alphas: tuple[tuple[float, ...], ...] = (
        (0.7, 0.9, 0.4, 0.6, 0.5, 0.8),
        (0.7, 0.8, 0.4, 0.6, 0.5, 0.9),
        (0.6, 0.9, 0.4, 0.8, 0.5, 0.7),
        (0.6, 0.9, 0.4, 0.7, 0.5, 0.8),
        (0.6, 0.8, 0.4, 0.7, 0.5, 0.9),
        (0.7, 0.9, 0.4, 0.5, 0.6, 0.8),
        (0.7, 0.8, 0.4, 0.5, 0.6, 0.9),
        (0.6, 0.9, 0.4, 0.5, 0.7, 0.8),
        (0.6, 0.8, 0.4, 0.5, 0.7, 0.9),
        (0.6, 0.7, 0.4, 0.5, 0.8, 0.9),
        (0.5, 0.9, 0.4, 0.8, 0.6, 0.7),
        (0.5, 0.9, 0.4, 0.7, 0.6, 0.8),
        (0.5, 0.8, 0.4, 0.7, 0.6, 0.9),
        (0.5, 0.9, 0.4, 0.6, 0.7, 0.8),
        (0.5, 0.8, 0.4, 0.6, 0.7, 0.9),
        (0.5, 0.7, 0.4, 0.6, 0.8, 0.9),
        (0.4, 0.9, 0.5, 0.8, 0.6, 0.7),
        (0.4, 0.9, 0.5, 0.7, 0.6, 0.8),
        (0.4, 0.8, 0.5, 0.7, 0.6, 0.9),
        (0.4, 0.9, 0.5, 0.6, 0.7, 0.8),
        (0.4, 0.8, 0.5, 0.6, 0.7, 0.9),
        (0.4, 0.7, 0.5, 0.6, 0.8, 0.9),
    )
    # The untreated evolutionarily stable state (T+, TP, T-, PSA) per matrix, as published with
    # the script (Abiraterone_Main.m, line 5, the output of its ESSAnalysis.m): the model's
    # initial state is 40% of a row and treatment starts at 80% of its PSA. Row 12 (1-based) has
    # T- = 0.8338, where the exact boundary equilibrium has T- = 0 (``zhang_equilibrium``):
    # the published value is the one the paper's simulations start from, so it is used here.
    ess: tuple[tuple[float, float, float, float], ...] = (
        (3196.34703196346, 7077.62557077625, 2739.72602739727, 26027.3972602740),
        (5607.47663551401, 7476.63551401869, 467.289719626177, 27102.8037383178),
        (1.0e-09, 4545.45454545455, 6818.18181818182, 22727.2727272727),
        (2786.37770897833, 6501.54798761610, 3405.57275541796, 25386.9969040248),
        (6270.62706270627, 7260.72607260726, 330.033003300335, 27722.7722772277),
        (5140.18691588785, 7476.63551401869, 934.579439252341, 27102.8037383178),
        (6060.60606060606, 7575.75757575758, 1.0e-09, 27272.7272727273),
        (6617.64705882353, 7352.94117647059, 1.0e-09, 27941.1764705882),
        (6617.64705882353, 7352.94117647059, 1.0e-09, 27941.1764705882),
        (6617.64705882353, 7352.94117647059, 1.0e-09, 27941.1764705882),
        (1.0e-09, 4545.45454545455, 6818.18181818182, 22727.2727272727),
        (7141.90425687459, 7142.65465924746, 0.833764523678801, 28570.7853484204),
        (7142.85714285714, 7142.85714285714, 1.0e-09, 28571.4285714286),
        (7142.85714285714, 7142.85714285714, 1.0e-09, 28571.4285714286),
        (7142.85714285714, 7142.85714285714, 1.0e-09, 28571.4285714286),
        (7142.85714285714, 7142.85714285714, 1.0e-09, 28571.4285714286),
        (1.0e-09, 4545.45454545455, 6818.18181818182, 22727.2727272727),
        (4310.34482758620, 6034.48275862069, 2586.20689655173, 25862.0689655172),
        (7096.77419354839, 6451.61290322581, 1.0e-09, 27096.7741935484),
        (7096.77419354839, 6451.61290322581, 1.0e-09, 27096.7741935484),
        (7096.77419354839, 6451.61290322581, 1.0e-09, 27096.7741935484),
        (7096.77419354839, 6451.61290322581, 1.0e-09, 27096.7741935484),
    )
    source: str = (
        "Zhang J, Cunningham JJ, Brown JS, Gatenby RA. Nat Commun 2017;8:1816, Methods and "
        "the MATLAB model script distributed with it (growth rates r = (0.27726, 0.34657, "
        "0.66542) x 0.01, sigma_PSA = 0.5, K off (1.5 x_TP, 10000, 10000), K on (0.5 x_TP, 100, "
        "10000), initial densities 40% of the published evolutionarily stable state table, "
        "abiraterone started once PSA reaches 80% of its ESS value, 22 competition matrices; "
        "github.com/cunninghamjj/Integrating-evolutionary-dynamics-into-treatment-of-mCRPC, "
        "Abiraterone_Main.m at commit c38b7e4)"
    )

    def matrix(self, index: np.ndarray) -> np.ndarray:
        """Full 3x3 competition matrices, shape (n, 3, 3), for 0-based row indices."""
        a = np.asarray(self.alphas, dtype=np.float64)[np.asarray(index, dtype=np.int64)]
        m = np.ones((a.shape[0], 3, 3))
        m[:, 0, 1], m[:, 0, 2], m[:, 1, 0] = a[:, 0], a[:, 1], a[:, 2]
        m[:, 1, 2], m[:, 2, 0], m[:, 2, 1] = a[:, 3], a[:, 4], a[:, 5]
        return m


ZHANG2017_PARAMS = ZhangParams()


def zhang_ess(
    params: ZhangParams = ZHANG2017_PARAMS, index: np.ndarray | None = None
) -> np.ndarray:
    """Untreated evolutionarily stable state (T+, TP, T-, PSA) the model starts from, (n, 4).

    The published table (``params.ess``), row by 0-based ``index``: the paper's simulations
    start at 40% of it and begin treatment at 80% of its PSA. :func:`zhang_equilibrium`
    computes the exact equilibria; they agree with the table to 1e-9 except row 12.
    """
    table = np.asarray(params.ess, dtype=np.float64)
    idx = np.arange(table.shape[0]) if index is None else np.asarray(index, dtype=np.int64)
    return table[idx]


def zhang_equilibrium(
    params: ZhangParams = ZHANG2017_PARAMS, index: np.ndarray | None = None
) -> np.ndarray:
    """Exact untreated stable equilibrium (T+, TP, T-, PSA), shape (n, 4): a check on the table.

    The stable interior or boundary equilibrium of the untreated system: the linear system of
    the coexisting populations, with T- (or T+) set to 0 where its equilibrium density would
    be negative, and absent types unable to invade. Equals the published table
    (:func:`zhang_ess`) to 1e-9 relative in 21 of 22 rows; in row 12 (1-based) the table has
    T- = 0.8338 (the script's numerical run had not converged to the boundary state, T- = 0).
    """
    idx = np.arange(len(params.alphas)) if index is None else np.asarray(index)
    m = params.matrix(idx)
    out = np.zeros((idx.size, 4))
    c, k2, k3 = params.k_off
    for i in range(idx.size):
        a = m[i].copy()
        # T+ row: x1 + a12 x2 + a13 x3 = c x2  ->  x1 + (a12 - c) x2 + a13 x3 = 0
        a[0, 1] -= c
        rhs = np.array([0.0, k2, k3])
        best = None
        for alive in ((0, 1, 2), (0, 1), (1, 2), (1,)):
            sub = np.ix_(alive, alive)
            try:
                x = np.linalg.solve(a[sub], rhs[list(alive)])
            except np.linalg.LinAlgError:
                continue
            if np.all(x >= 0):
                full = np.zeros(3)
                full[list(alive)] = x
                # Invasion check: absent types must not grow at this state.
                ok = True
                for j in set(range(3)) - set(alive):
                    kj = c * full[1] if j == 0 else (k2, k3)[j - 1]
                    if kj > 0 and m[i, j] @ full < kj:
                        ok = False
                if ok:
                    best = full
                    break
        if best is None:  # pragma: no cover - every published matrix has a stable state
            raise TumourModelError(f"zhang_equilibrium: no stable state for matrix row {idx[i]}")
        out[i, :3] = np.maximum(best, params.floor)
        out[i, 3] = best.sum() / params.psa_decay_per_day
    return out


def _zhang_step(
    y: np.ndarray,
    on: np.ndarray,
    r: np.ndarray,
    m: np.ndarray,
    p: ZhangParams,
    *,
    floor: bool = True,
) -> np.ndarray:
    """One forward-Euler step of the published scheme; y has shape (n, 4).

    Written term by term in the script's order of operations (``Abiraterone_Main.m``:
    ``dydt(1) = y(1) * r(1) * (1 - ((y(1) + a12 * y(2) + a13 * y(3)) / k(1)))``, ...,
    ``dydt(4) = sum(y(1:3)) - sigmaPSA * y(4)``, ``y = y + dydt``, then the floor), so that
    every step rounds as the script's does and threshold times match it to the step.
    ``floor=False`` is the script's search for the treatment start, which has no floor.
    """
    y1, y2, y3, y4 = y[:, 0], y[:, 1], y[:, 2], y[:, 3]
    k_fac = np.where(on[:, None], np.asarray(p.k_on), np.asarray(p.k_off))
    k1, k2, k3 = y2 * k_fac[:, 0], k_fac[:, 1], k_fac[:, 2]
    a12, a13, a21 = m[:, 0, 1], m[:, 0, 2], m[:, 1, 0]
    a23, a31, a32 = m[:, 1, 2], m[:, 2, 0], m[:, 2, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        d1 = y1 * r[0] * (1 - ((y1 + a12 * y2 + a13 * y3) / k1))
        d2 = y2 * r[1] * (1 - ((a21 * y1 + y2 + a23 * y3) / k2))
        d3 = y3 * r[2] * (1 - ((a31 * y1 + a32 * y2 + y3) / k3))
    d4 = y1 + y2 + y3 - p.psa_decay_per_day * y4
    y_new = np.stack([y1 + d1, y2 + d2, y3 + d3, y4 + d4], axis=1)
    if floor:
        y_new[:, :3] = np.maximum(y_new[:, :3], p.floor)
    return y_new


def simulate_zhang(
    matrix_index: np.ndarray,
    *,
    strategy: Literal["continuous", "adaptive", "none", "schedule"] = "continuous",
    rule: AdaptiveRule | None = None,
    horizon_days: int = 3650,
    schedule: np.ndarray | None = None,
    progression: Literal["nadir", "baseline"] = "nadir",
    progression_rise: float = 0.25,
    resistance_fraction: float = 0.9,
    visit_every_days: int = 28,
    params: ZhangParams = ZHANG2017_PARAMS,
) -> dict[str, np.ndarray]:
    """Simulate the Zhang et al. 2017 model for patients given by competition-matrix rows.

    Each patient starts at 40% of the untreated ESS and grows untreated until PSA reaches 80%
    of its ESS value (the published pre-treatment phase); that day is treatment day 0 and the
    PSA then is the patient's baseline. From day 0:

    * ``continuous``: abiraterone every day;
    * ``adaptive``: ``rule`` (default :data:`ZHANG2017_TRIAL_RULE`, the trial's rule;
      :data:`ZHANG2017_SCRIPT_RULE` is the paper's simulation rule) evaluated every
      ``rule.check_every_days`` days, starting on;
    * ``none``: no abiraterone;
    * ``schedule``: on/off per day from ``schedule`` (bool, shape (n, horizon_days)).

    Progression is the product's own definition, not the paper's (the script has none): it
    is PSA-based and checked at visits every ``visit_every_days``, only at visits with
    abiraterone on since the previous visit (a rise off drug is the adaptive design, not
    failure). Declared here before any comparison, not tuned:

    * ``"nadir"`` (default): PSA >= (1 + ``progression_rise``) x the nadir of the current
      on-drug period (visit values, the period's first visit included): the PCWG2 25% rise
      (Scher et al., J Clin Oncol 2008;26:1148) without its 2 ng/mL term, which has no
      counterpart in model units, and without confirmation;
    * ``"baseline"``: PSA > (1 + ``progression_rise``) x the pre-treatment baseline.

    ``resistance_days`` is also returned: the first day the T- fraction of all cells
    reaches ``resistance_fraction`` (the published script's "time to 90% T-" feature).

    Parameters
    ----------
    matrix_index
        0-based rows of ``params.alphas``, shape (n,).

    Returns
    -------
    dict
        ``day`` (T,), ``psa`` (n, T), ``x`` (n, 3, T) densities, ``on`` (n, T) bool,
        ``baseline_psa`` (n,), ``pretreatment_days`` (n,), ``ttp_days`` (n, nan if none within
        the horizon), ``progressed`` (n,), ``drug_days`` (n, days on abiraterone up to
        progression or the horizon), ``followed_days`` (n,), ``resistance_days`` (n, nan if
        never).
    """
    idx = np.asarray(matrix_index, dtype=np.int64)
    if idx.ndim != 1 or np.any(idx < 0) or np.any(idx >= len(params.alphas)):
        raise TumourModelError(
            f"matrix_index: must be 1-d in [0, {len(params.alphas)}), got {idx[:5]}"
        )
    if strategy not in ("continuous", "adaptive", "none", "schedule"):
        raise TumourModelError(
            f"strategy: {strategy!r}; allowed continuous, adaptive, none, schedule"
        )
    rule = rule or ZHANG2017_TRIAL_RULE
    check = max(1, round(rule.check_every_days))
    visit = int(visit_every_days)
    if visit < 1:
        raise TumourModelError(f"visit_every_days: must be >= 1, got {visit_every_days}")
    n = idx.size
    m = params.matrix(idx)
    r = np.asarray(params.r_per_day)
    uniq, inv = np.unique(idx, return_inverse=True)
    ess = zhang_ess(params, uniq)[inv]
    y = ess * params.x0_fraction_of_ess
    target = ess[:, 3] * params.start_at_fraction_of_ess_psa
    # Pre-treatment phase, untreated, until PSA >= 80% of ESS PSA (published script).
    pre = np.zeros(n, dtype=np.int64)
    growing = y[:, 3] < target
    off = np.zeros(n, dtype=bool)
    for _ in range(100_000):
        if not growing.any():
            break
        y_next = _zhang_step(y, off, r, m, params)
        y = np.where(growing[:, None], y_next, y)
        pre += growing
        growing = y[:, 3] < target
    baseline = y[:, 3].copy()
    rule_ref = baseline if rule.reference == "baseline" else target
    day = np.arange(horizon_days + 1)
    psa = np.empty((n, day.size))
    xs = np.empty((n, 3, day.size))
    on_hist = np.zeros((n, day.size), dtype=bool)
    on = np.full(n, strategy in ("continuous", "adaptive"))
    if strategy == "schedule":
        sched = np.asarray(schedule, dtype=bool)
        if sched.shape != (n, horizon_days):
            raise TumourModelError(
                f"schedule: must have shape ({n}, {horizon_days}), got {sched.shape}"
            )
        on = sched[:, 0].copy()
    if progression not in ("nadir", "baseline"):
        raise TumourModelError(f"progression: {progression!r}; allowed nadir, baseline")
    on_since_visit = on.copy()
    nadir = baseline.copy()
    ttp = np.full(n, np.nan)
    resist = np.full(n, np.nan)
    psa[:, 0], xs[:, :, 0] = y[:, 3], y[:, :3]
    for d in range(1, day.size):
        on_hist[:, d - 1] = on
        on_since_visit &= on
        y = _zhang_step(y, on, r, m, params)
        psa[:, d], xs[:, :, d] = y[:, 3], y[:, :3]
        frac = y[:, 2] / y[:, :3].sum(axis=1)
        resist[np.isnan(resist) & (frac >= resistance_fraction)] = d
        is_visit = d % visit == 0
        if is_visit:
            ref = nadir if progression == "nadir" else baseline
            rising = y[:, 3] >= (1.0 + progression_rise) * ref
            prog = np.isnan(ttp) & on_since_visit & rising
            ttp[prog] = d
        if strategy == "adaptive" and d % check == 0:
            on = rule.apply(on, y[:, 3], rule_ref)
        if is_visit:
            # A new on-drug period (drug off at some point since the last visit, on now)
            # starts its nadir afresh at this visit.
            nadir = np.where(
                on & ~on_since_visit, y[:, 3], np.where(on, np.minimum(nadir, y[:, 3]), nadir)
            )
            on_since_visit = on.copy()
        if strategy == "schedule" and d < horizon_days:
            on = sched[:, d].copy()
    on_hist[:, -1] = on
    stop = np.where(np.isnan(ttp), horizon_days, ttp).astype(np.int64)
    drug_days = np.array([on_hist[i, : stop[i]].sum() for i in range(n)])
    return {
        "day": day,
        "psa": psa,
        "x": xs,
        "on": on_hist,
        "baseline_psa": baseline,
        "pretreatment_days": pre,
        "ttp_days": ttp,
        "progressed": ~np.isnan(ttp),
        "drug_days": drug_days,
        "followed_days": stop,
        "resistance_days": resist,
    }


def _simulate_tumour_zhang(spec, params, exposure_times_days, exposure, times) -> np.ndarray:
    if "MATRIX" not in params:
        raise TumourModelError("model 'zhang2017': missing parameter MATRIX (0-based matrix row)")
    rows = np.atleast_1d(np.asarray(params["MATRIX"], dtype=np.int64))
    n = rows.size
    horizon = int(np.ceil(times[-1])) + 1
    if exposure is None:
        res = simulate_zhang(rows, strategy="none", horizon_days=horizon)
    else:
        grid, eg = _exposure_on_grid(
            exposure_times_days, exposure, np.arange(horizon, dtype=float), n
        )
        days = np.searchsorted(grid, np.arange(horizon, dtype=float))
        sched = np.broadcast_to(eg[:, days] > 0, (n, horizon))
        res = simulate_zhang(rows, strategy="schedule", schedule=sched, horizon_days=horizon)
    d = res["day"].astype(float)
    j = np.clip(np.searchsorted(d, times, side="right") - 1, 0, d.size - 2)
    w = times - d[j]
    return res["psa"][:, j] * (1.0 - w) + res["psa"][:, j + 1] * w


def simulate_zhang_trial(
    n_patients: int,
    *,
    seed: int,
    strategy: Literal["continuous", "adaptive"],
    keys: tuple[str | int, ...] = (),
    rule: AdaptiveRule | None = None,
    horizon_days: int = 3650,
    progression: Literal["nadir", "baseline"] = "nadir",
    params: ZhangParams = ZHANG2017_PARAMS,
    patient: np.ndarray | None = None,
    visit_every_days: int = 28,
):
    """Virtual cohort of the Zhang et al. 2017 model under continuous or adaptive abiraterone.

    ``patient`` (default ``0..n_patients-1``) gives the patients' indices within the arm, so a
    chunk of an arm draws the same matrices as the whole arm. ``visit_every_days``: the
    visits at which progression is assessed (the protocol's, the same in every arm).

    Each virtual patient is one of the 22 published competition matrices, drawn uniformly with
    a keyed per-patient uniform (``keys + ("zhang_matrix",)``), so the same patient gets the
    same matrix under both strategies (a paired comparison) and in any chunking. The model is
    deterministic given the matrix, so each distinct matrix is simulated once.

    Returns
    -------
    pandas.DataFrame
        One row per patient: ``patient``, ``matrix_row`` (0-based), ``ttp_days``,
        ``ttp_event`` (0 = no progression by ``horizon_days``, censored there),
        ``drug_days`` (days on abiraterone up to progression or censoring),
        ``followed_days``, ``drug_fraction`` (= drug_days / followed_days: cumulative dose
        relative to continuous dosing over the same time), ``resistance_days``.
    """
    import pandas as pd

    from insilico_trials.sim.rng import patient_uniforms

    if strategy not in ("continuous", "adaptive"):
        raise TumourModelError(f"strategy: {strategy!r}; allowed continuous, adaptive")
    if n_patients < 1:
        raise TumourModelError(f"n_patients: must be >= 1, got {n_patients}")
    pat = np.arange(n_patients) if patient is None else np.asarray(patient, dtype=np.int64)
    if pat.shape != (n_patients,):
        raise TumourModelError(f"patient: need {n_patients} indices, got shape {pat.shape}")
    u = patient_uniforms(seed, (*keys, "zhang_matrix"), pat, 1)[:, 0]
    rows = np.minimum((u * len(params.alphas)).astype(np.int64), len(params.alphas) - 1)
    uniq, inv = np.unique(rows, return_inverse=True)
    res = simulate_zhang(
        uniq,
        strategy=strategy,
        rule=rule,
        horizon_days=horizon_days,
        progression=progression,
        visit_every_days=visit_every_days,
        params=params,
    )
    ttp = res["ttp_days"][inv]
    event = ~np.isnan(ttp)
    followed = res["followed_days"][inv]
    drug = res["drug_days"][inv]
    return pd.DataFrame(
        {
            "patient": pat,
            "matrix_row": rows,
            "ttp_days": np.where(event, ttp, followed).astype(float),
            "ttp_event": event.astype(np.int8),
            "drug_days": drug,
            "followed_days": followed,
            "drug_fraction": drug / np.maximum(followed, 1),
            "resistance_days": res["resistance_days"][inv],
        }
    )


def apply_dose_rule(
    rule: DoseHoldRule,
    exposure_times_days: np.ndarray,
    exposure: np.ndarray,
    *,
    marker: Callable[[np.ndarray, np.ndarray], np.ndarray],
    first_check_day: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply a hold/reduce/resume rule inside the simulation, visit by visit.

    At each check day (every ``rule.check_every_days`` from ``first_check_day``, default one
    interval after day 0), the marker is simulated from the exposure as adjusted so far, the
    rule is applied to its value on that day, and the exposure from that day on is scaled by
    the new dose factor (0 while held). Scaling the exposure from the check day on is exact for
    dose-proportional exposure that washes out within a grid step (e.g. daily AUC of a drug
    with a half-life of hours); for long half-lives, simulate the PK per interval instead.

    Parameters
    ----------
    rule
        The :class:`DoseHoldRule` (e.g. neutrophil count holds).
    exposure_times_days, exposure
        Exposure grid (T,) and exposure at full dose (n, T).
    marker
        ``marker(times_days, exposure) -> (n, T)``: the simulated marker on the grid for a
        given exposure, e.g. a Friberg neutrophil model (``insilico_trials.sim.pk.pd.friberg``,
        times converted to hours) wrapped by the caller.

    Returns
    -------
    (exposure, dose_factor)
        Adjusted exposure and the dose factor applied at each grid point, both (n, T).
    """
    te, e = _check_exposure(exposure_times_days, exposure, np.shape(exposure)[0])
    n = e.shape[0]
    factor = np.ones((n, te.size))
    level = np.ones(n)
    held = np.zeros(n, dtype=bool)
    start = rule.check_every_days if first_check_day is None else first_check_day
    for day in np.arange(start, te[-1], rule.check_every_days):
        m = np.asarray(marker(te, e * factor), dtype=np.float64)
        j = min(int(np.searchsorted(te, day, side="left")), te.size - 1)
        level, held = rule.apply(level, held, m[:, j])
        factor[:, j:] = (level * ~held)[:, None]
    return e * factor, factor
