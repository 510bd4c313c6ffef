"""Type 1 diabetes in-silico trials: virtual patients, meals, sensor, pump and dosing algorithms
around the UVA/Padova model file, simulated for whole cohorts at once.

The model is the shipped model file ``t1d_uva_padova.yaml`` (the form simglucose implements:
Dalla Man et al. 2007, Kovatchev et al. 2009). Its patients are the 30 virtual patients that
simglucose ships (``insilico_trials/data/simglucose``, MIT licence), and a virtual population
sampled around them (:func:`virtual_patients`).

The simulation advances every patient one minute at a time, as simglucose does, with the inputs
held constant over the minute:

- **meals**: a meal of ``c`` g announced at minute ``t`` is eaten at 5 g/min (simglucose's
  ``EAT_RATE``): ``c / 5`` minutes of an input of 5,000 mg/min into the stomach (route
  ``meal``); the gastric emptying reads the signal ``DBAR``, the stomach content when the meal
  began plus what has been eaten of it since (simglucose's ``last_Qsto + last_foodtaken``);
- **insulin**: basal rate plus boluses, U/min, into the subcutaneous depot (route ``insulin``)
  as pmol/kg/min (times 6000 / BW); a bolus is delivered within its minute;
- **sensor**: every sample time (Dexcom 3 min, GuardianRT 5 min, Navigator 1 min), the CGM reads
  the subcutaneous glucose plus noise (:func:`cgm_noise`), clipped to the sensor's range;
- **controller**: at each sensor sample, for all patients at once, the arm's algorithm sets the
  basal rate and gives the bolus of each meal announced in the next interval from the latest
  reading (:class:`BasalBolus`; :class:`DecisionSupport` also revises the patient's settings
  from the CGM data every ``every_days``);
- **hypoglycaemia treatment** (optional): when the CGM reads below a threshold the patient eats
  rescue carbohydrate, at most once per waiting time (the rule of 15).

Everything random is keyed by (seed, purpose, arm, patient): each arm has its own patients (a
parallel-group trial), and a patient's numbers do not depend on the chunking.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from insilico_trials.errors import InputError
from insilico_trials.sim.rng import patient_normals, patient_uniforms
from insilico_trials.spec.glucose import ControllerSpec
from insilico_trials.spec.modelfile import UserModel, library_path, load_model_file
from insilico_trials.spec.protocol import TrialProtocol

__all__ = [
    "EAT_RATE_G_PER_MIN",
    "BasalBolus",
    "DecisionSupport",
    "GlucoseRun",
    "MealPlan",
    "Pump",
    "Sensor",
    "agp_percentiles",
    "cgm_metrics",
    "cgm_noise",
    "meal_plan",
    "simglucose_patients",
    "simulate",
    "t1d_model",
    "virtual_patients",
]

DATA = Path(__file__).resolve().parents[1] / "data" / "simglucose"
EAT_RATE_G_PER_MIN = 5.0  # simglucose T1DPatient.EAT_RATE
U_TO_PMOL = 6000.0  # 1 U of insulin = 6000 pmol (simglucose's conversion)
GROUPS = ("adolescent", "adult", "child")

# Parameters sampled around a source patient (log scale); the rest follow from the basal
# steady state (derive_steady_state), as in simglucose's table, where they hold to 1e-11.
FREE = (
    "BW", "EGPB", "GB", "IB", "KABS", "KMAX", "KMIN", "B", "D", "VG", "VI", "VMX", "KM0", "K2",
    "K1", "P2U", "M1", "M2", "M4", "HEB", "KI", "KP2", "KP3", "F", "KE1", "KE2", "FSNC", "KD",
    "KSC", "KA1", "KA2",
)  # fmt: skip
FRACTIONS = ("B", "D", "F", "HEB")  # in (0, 1): sampled on the logit scale
STEADY = (
    "GPB",
    "IPB",
    "M30",
    "ILB",
    "GTB",
    "VM0",
    "KP1",
    "U2SS",
    "ISC1SS",
    "ISC2SS",
    "BASAL",
)  # fmt: skip  (derive_steady_state)


@cache
def t1d_model() -> UserModel:
    """The shipped UVA/Padova model file."""
    path = library_path("t1d_uva_padova")
    assert path is not None
    return load_model_file(path)


@cache
def simglucose_patients() -> pd.DataFrame:
    """simglucose's 30 virtual patients: ``name``, ``group``, model parameters (upper case),
    and their pump settings from ``Quest.csv``: ``CR`` (g/U), ``CF`` (mg/dL per U), ``AGE``
    (years), ``TDI`` (U/day), and the basal rate ``BASAL`` (U/h) that holds them at steady
    state (u2ss * BW / 6000 per minute)."""
    params = pd.read_csv(DATA / "vpatient_params.csv")
    quest = pd.read_csv(DATA / "Quest.csv")
    table = params.rename(columns={c: c.upper() for c in params.columns if c != "Name"})
    table = table.rename(columns={"Name": "name"})
    table = table.merge(quest.rename(columns={"Name": "name", "Age": "AGE"}), on="name")
    table.insert(1, "group", table["name"].str.split("#").str[0])
    table["BASAL"] = table["U2SS"] * table["BW"] / U_TO_PMOL * 60.0
    return table.reset_index(drop=True)


def derive_steady_state(p: pd.DataFrame) -> pd.DataFrame:
    """The parameters that hold a patient at its basal steady state, from the free ones
    (Dalla Man et al. 2007; the identities simglucose's table satisfies): plasma and tissue
    glucose, insulin masses, the basal utilisation VM0, KP1, M30 and the basal insulin U2SS
    (pmol/kg/min) with its subcutaneous amounts."""
    p = p.copy()
    p["GPB"] = p["GB"] * p["VG"]
    p["IPB"] = p["IB"] * p["VI"]
    p["M30"] = p["HEB"] * p["M1"] / (1 - p["HEB"])
    p["ILB"] = p["M2"] * p["IPB"] / (p["M1"] + p["M30"])
    eb = np.where(p["GPB"] > p["KE2"], p["KE1"] * (p["GPB"] - p["KE2"]), 0.0)
    p["GTB"] = (p["FSNC"] + eb - p["EGPB"] + p["K1"] * p["GPB"]) / p["K2"]
    with np.errstate(divide="ignore", invalid="ignore"):
        p["VM0"] = (p["EGPB"] - p["FSNC"] - eb) * (p["KM0"] + p["GTB"]) / p["GTB"]
    p["KP1"] = p["EGPB"] + p["KP2"] * p["GPB"] + p["KP3"] * p["IB"]
    p["U2SS"] = (p["M2"] + p["M4"]) * p["IPB"] - p["M1"] * p["ILB"]
    p["ISC1SS"] = p["U2SS"] / (p["KA1"] + p["KD"])
    p["ISC2SS"] = p["KD"] * p["ISC1SS"] / p["KA2"]
    p["BASAL"] = p["U2SS"] * p["BW"] / U_TO_PMOL * 60.0
    return p


def _logit(x: np.ndarray) -> np.ndarray:
    return np.log(x / (1 - x))


def _free_matrix(table: pd.DataFrame) -> np.ndarray:
    cols = []
    for name in FREE:
        v = table[name].to_numpy(dtype=float)
        cols.append(_logit(v) if name in FRACTIONS else np.log(v))
    return np.stack(cols, axis=1)


def virtual_patients(
    patient: np.ndarray,
    *,
    seed: int,
    names: Sequence[str],
    spread: float,
    key: str = "t1d-population",
) -> pd.DataFrame:
    """Virtual patients around simglucose's: patient ``i`` draws a source patient from
    ``names`` (uniformly), then perturbs its free parameters on the log (fractions: logit)
    scale by ``spread`` times the between-patient spread of the source's age group, with that
    group's correlation (shrunk halfway to the identity so that 10 patients give a proper
    matrix); the steady-state parameters follow (:func:`derive_steady_state`). A draw with no
    steady state (tissue glucose or basal utilisation not positive), a basal rate outside
    0.25 to 4 times the source's, or a fraction outside (0, 1) is redrawn (up to 50 times, each
    from its own keyed stream). ``spread = 0`` gives the source patients themselves.

    The pump settings follow the insulin need: CR and CF divided, TDI multiplied, by the ratio
    of the new basal insulin (U/h) to the source's.
    """
    source = simglucose_patients()
    unknown = sorted(set(names) - set(source["name"]))
    if unknown:
        raise InputError(
            f"unknown simglucose patient {unknown[0]!r}; known: adolescent#001..010, "
            "adult#001..010, child#001..010"
        )
    pool = source.set_index("name").loc[list(names)].reset_index()
    patient = np.asarray(patient, dtype=np.int64)
    u = patient_uniforms(seed, (key, "source"), patient, 1)[:, 0]
    pick = np.minimum((u * len(pool)).astype(int), len(pool) - 1)
    base = pool.iloc[pick].reset_index(drop=True)
    out = base.copy()
    if spread > 0:
        free = _free_matrix(base)
        chol, sd = {}, {}
        for g in GROUPS:
            grp = _free_matrix(source[source["group"] == g])
            s = grp.std(axis=0, ddof=1)
            s = np.where(s > 0, s, 0.0)
            with np.errstate(divide="ignore", invalid="ignore"):  # constant in the group
                corr = np.corrcoef(grp, rowvar=False)
            corr = np.where(np.isfinite(corr), corr, 0.0)
            corr = 0.5 * corr + 0.5 * np.eye(len(FREE))
            chol[g], sd[g] = np.linalg.cholesky(corr), s
        todo = np.arange(len(base))
        accepted = np.zeros((len(base), len(FREE)))
        for attempt in range(50):
            z = patient_normals(seed, (key, "eta", attempt), patient[todo], len(FREE))
            groups = base["group"].to_numpy()[todo]
            eta = np.empty_like(z)
            for g in GROUPS:
                m = groups == g
                if m.any():
                    eta[m] = (z[m] @ chol[g].T) * sd[g] * spread
            trial = free[todo] + eta
            cand = base.iloc[todo].copy()
            for j, name in enumerate(FREE):
                v = trial[:, j]
                cand[name] = 1 / (1 + np.exp(-v)) if name in FRACTIONS else np.exp(v)
            cand = derive_steady_state(cand)
            ratio = cand["BASAL"].to_numpy() / base["BASAL"].to_numpy()[todo]
            ok = (
                (cand["GTB"] > 0).to_numpy()
                & (cand["VM0"] > 0).to_numpy()
                & (cand["KP1"] > 0).to_numpy()
                & (ratio > 0.25)
                & (ratio < 4)
            )
            accepted[todo[ok]] = trial[ok]
            todo = todo[~ok]
            if todo.size == 0:
                break
        if todo.size:
            accepted[todo] = free[todo]  # never reached in practice; keep the source patient
        for j, name in enumerate(FREE):
            v = accepted[:, j]
            out[name] = 1 / (1 + np.exp(-v)) if name in FRACTIONS else np.exp(v)
        out = derive_steady_state(out)
        r = out["BASAL"].to_numpy() / base["BASAL"].to_numpy()
        out["CR"] = base["CR"].to_numpy() / r
        out["CF"] = base["CF"].to_numpy() / r
        out["TDI"] = base["TDI"].to_numpy() * r
    out.insert(0, "source", base["name"].to_numpy())
    # the source's columns that the model does not read and a virtual patient does not
    # recompute (initial states, index, history, CL, M5, RDB, PCRB, DOSEKEMPT) would be stale
    keep = ["source", "group", *FREE, *STEADY, "AGE", "CR", "CF", "TDI"]
    out = out[keep]
    out.insert(0, "patient", patient)
    return out


# --------------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sensor:
    """A CGM as simglucose's ``sensor_params.csv`` describes it: sample time (min), range
    (mg/dL), and the Johnson SU noise model of Breton and Kovatchev (J Diabetes Sci Technol
    2008;2:853): an AR(1) series ``e`` on a 15-minute grid, ``e_k = PACF (e_{k-1} + z_k)``,
    transformed to ``xi + lambda sinh((e - gamma) / delta)`` mg/dL."""

    name: str
    sample_min: int
    low: float
    high: float
    pacf: float = 0.7
    gamma: float = -0.5444
    lam: float = 15.9574
    delta: float = 1.6898
    xi: float = -5.47
    noise: bool = True

    @classmethod
    def named(cls, name: str, *, noise: bool = True) -> Sensor:
        table = pd.read_csv(DATA / "sensor_params.csv").set_index("Name")
        if name not in table.index:
            raise InputError(f"unknown CGM {name!r}; known: {', '.join(table.index)}")
        r = table.loc[name]
        return cls(
            name, int(r["sample_time"]), float(r["min"]), float(r["max"]), float(r["PACF"]),
            float(r["gamma"]), float(r["lambda"]), float(r["delta"]), float(r["xi"]), noise,
        )  # fmt: skip


def cgm_noise(
    sensor: Sensor, patient: np.ndarray, n_samples: int, *, seed: int, key: str = "cgm"
) -> np.ndarray:
    """Sensor noise (mg/dL), shape (n, n_samples), at the sensor's sample times.

    The 15-minute AR(1) Johnson series of :class:`Sensor`, interpolated to the sample times by
    one cubic spline per patient over the whole series (simglucose splines blocks of 10
    points; the statistics are the same, the block joins are not copied)."""
    from scipy.interpolate import CubicSpline

    n = len(patient)
    if not sensor.noise:
        return np.zeros((n, n_samples))
    span = (n_samples - 1) * sensor.sample_min
    k = math.ceil(span / 15.0) + 2
    z = patient_normals(seed, (key,), np.asarray(patient, dtype=np.int64), k)
    e = np.empty_like(z)
    e[:, 0] = z[:, 0]
    for j in range(1, k):
        e[:, j] = sensor.pacf * (e[:, j - 1] + z[:, j])
    eps = sensor.xi + sensor.lam * np.sinh((e - sensor.gamma) / sensor.delta)
    t15 = np.arange(k) * 15.0
    t = np.arange(n_samples) * float(sensor.sample_min)
    return CubicSpline(t15, eps, axis=1)(t)


@dataclass(frozen=True)
class Pump:
    """An insulin pump (simglucose's ``pump_params.csv``): basal in steps of ``inc_basal`` U/h
    within [min_basal, max_basal], boluses in steps of ``inc_bolus`` U within [min_bolus,
    max_bolus]. (simglucose rounds in pmol; this rounds in U, as a pump does.)"""

    name: str
    inc_basal: float
    min_basal: float
    max_basal: float
    inc_bolus: float
    min_bolus: float
    max_bolus: float

    @classmethod
    def named(cls, name: str) -> Pump:
        table = pd.read_csv(DATA / "pump_params.csv").set_index("Name")
        if name not in table.index:
            raise InputError(f"unknown pump {name!r}; known: {', '.join(table.index)}")
        r = table.loc[name]
        return cls(
            name, float(r["inc_basal"]), float(r["min_basal"]), float(r["max_basal"]),
            float(r["inc_bolus"]), float(r["min_bolus"]), float(r["max_bolus"]),
        )  # fmt: skip

    def basal(self, u_per_h: np.ndarray) -> np.ndarray:
        r = np.round(u_per_h / self.inc_basal) * self.inc_basal
        return np.clip(r, self.min_basal, self.max_basal)

    def bolus(self, units: np.ndarray) -> np.ndarray:
        r = np.round(units / self.inc_bolus) * self.inc_bolus
        return np.clip(r, self.min_bolus, self.max_bolus)


# --------------------------------------------------------------------------------------------
# Meals
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MealPlan:
    """Every patient's meals: ``minute`` (n, M) sorted, ``carbs`` g, ``estimate`` g (what the
    patient counts for the bolus), ``bolus`` (bool, announced to the controller); padded with
    ``minute = -1``."""

    minute: np.ndarray
    carbs: np.ndarray
    estimate: np.ndarray
    bolus: np.ndarray

    @classmethod
    def fixed(
        cls, n: int, days: int, meals: Sequence[tuple[float, float]], *, bolus: bool = True
    ) -> MealPlan:
        """The same meals every day for every patient: ``(minute of day, carbs g)``."""
        minute = np.array([d * 1440 + int(m) for d in range(days) for m, _ in meals], dtype=int)
        carbs = np.array([c for _ in range(days) for _, c in meals], dtype=float)
        shape = (n, len(minute))
        return cls(
            np.broadcast_to(minute, shape).copy(), np.broadcast_to(carbs, shape).copy(),
            np.broadcast_to(carbs, shape).copy(), np.full(shape, bolus),
        )  # fmt: skip


def meal_plan(
    meals: Sequence[dict],
    days: int,
    patient: np.ndarray,
    *,
    seed: int,
    estimate_cv: float,
    keys: tuple[str | int, ...] = (),
) -> MealPlan:
    """Meals with day-to-day variability, keyed per patient (and ``keys``, e.g. the arm).

    Each meal spec (``time_h``, ``time_sd_min``, ``carbs_g``, ``carbs_cv``, ``probability``,
    ``bolus``) gives, per patient and day: whether it is eaten (probability), its time (a
    normal truncated at +-2 SD, drawn by the inverse CDF, rounded to the minute; it may cross
    midnight into the next or previous day, within the simulated days), its carbohydrate
    (lognormal with that mean and CV) and the patient's count of it (multiplied by a lognormal
    error of CV ``estimate_cv``)."""
    from scipy.special import ndtr, ndtri

    patient = np.asarray(patient, dtype=np.int64)
    n, m = len(patient), len(meals)
    k = days * m
    u = patient_uniforms(seed, (*keys, "meals", "eaten"), patient, k)
    lo, hi = ndtr(-2.0), ndtr(2.0)
    zt = ndtri(lo + (hi - lo) * patient_uniforms(seed, (*keys, "meals", "time"), patient, k))
    zc = patient_normals(seed, (*keys, "meals", "carbs"), patient, k)
    ze = patient_normals(seed, (*keys, "meals", "estimate"), patient, k)
    minute = np.full((n, k), -1, dtype=int)
    carbs = np.zeros((n, k))
    for d in range(days):
        for j, meal in enumerate(meals):
            c = d * m + j
            eaten = u[:, c] < meal.get("probability", 1.0)
            t = d * 1440 + meal["time_h"] * 60 + meal.get("time_sd_min", 0.0) * zt[:, c]
            t = np.clip(np.round(t), 0, days * 1440 - 1).astype(int)
            cv = meal.get("carbs_cv", 0.0)
            s = math.sqrt(math.log1p(cv**2))
            g = meal["carbs_g"] * np.exp(s * zc[:, c] - s * s / 2)
            minute[:, c] = np.where(eaten, t, -1)
            carbs[:, c] = np.where(eaten, g, 0.0)
    se = math.sqrt(math.log1p(estimate_cv**2))
    estimate = carbs * np.exp(se * ze - se * se / 2)
    bolus = np.tile(np.array([bool(x.get("bolus", True)) for x in meals]), days)
    order = np.argsort(np.where(minute < 0, np.iinfo(int).max, minute), axis=1, kind="stable")
    take = np.take_along_axis
    return MealPlan(
        take(minute, order, 1), take(carbs, order, 1), take(estimate, order, 1),
        np.broadcast_to(bolus, (n, k))[np.arange(n)[:, None], order],
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Dosing algorithms
# --------------------------------------------------------------------------------------------


@dataclass
class BasalBolus:
    """Standard care: a fixed basal rate (U/h), and at each announced meal a bolus of
    ``carbs / CR`` plus, when the CGM reads above ``correct_above``, ``(CGM - target) / CF``
    (simglucose's BBController: target 140, correction above 150 mg/dL)."""

    basal: np.ndarray  # U/h
    cr: np.ndarray  # g/U
    cf: np.ndarray  # mg/dL per U
    target: float = 140.0
    correct_above: float = 150.0

    def bolus(self, rows: np.ndarray, carbs: np.ndarray, cgm: np.ndarray) -> np.ndarray:
        """Units for the meals of patients ``rows`` (carbohydrate counted, latest reading)."""
        corr = np.where(cgm > self.correct_above, (cgm - self.target) / self.cf[rows], 0.0)
        return carbs / self.cr[rows] + corr

    def review(self, minute: int, readings: np.ndarray, sample_min: int, meals: MealPlan) -> None:
        """Standard care keeps its settings."""

    def settings(self) -> dict[str, np.ndarray]:
        return {
            "basal_u_h": self.basal.copy(),
            "cr_g_u": self.cr.copy(),
            "cf_mg_dl_u": self.cf.copy(),
        }


@dataclass
class DecisionSupport(BasalBolus):
    """Basal-bolus whose settings are revised from the CGM data every ``every_days`` (in the
    spirit of ADVICE4U's Advisor Pro; this rule is the product's, documented here):

    From the readings since the last review:

    1. **Hypoglycaemia first.** Time below 70 mg/dL over 4% (the consensus target): basal,
       CR and CF all move ``step`` towards less insulin (basal times 1 - step, CR and CF times
       1 + step).
    2. Otherwise **basal from the night** (00:00-06:00): mean above 150 mg/dL raises the basal
       by ``step``, below 100 lowers it.
    3. Otherwise-independent **meal insulin from the meals**: the mean rise from the reading at
       an announced meal to the mean of the readings 2 to 4 h after it; above 60 mg/dL
       lowers CR by ``step`` (more insulin per gram), below 0 raises it.
    4. **Correction factor**: time above 180 mg/dL over 25% lowers CF by ``step``.

    Every setting stays within [1/``max_factor``, ``max_factor``] times its starting value.
    """

    every_days: int = 7
    step: float = 0.1
    max_factor: float = 2.0
    start_minute: int = 0  # no review before this (the run-in) and the first covers from it
    _start: dict[str, np.ndarray] = field(default_factory=dict)
    _last: int = -1

    def review(self, minute: int, readings: np.ndarray, sample_min: int, meals: MealPlan) -> None:
        if self._last < 0:
            self._last = self.start_minute
        since = minute - self.start_minute
        if since <= 0 or since % (self.every_days * 1440) != 0:
            return
        if not self._start:
            self._start = self.settings()
        lo = self._last // sample_min
        hi = minute // sample_min
        self._last = minute
        window = readings[:, lo:hi]
        t = (np.arange(lo, hi) * sample_min) % 1440
        tbr = (window < 70).mean(axis=1)
        tar = (window > 180).mean(axis=1)
        night = window[:, t < 360].mean(axis=1)
        rise = np.full(len(window), np.nan)
        rises = [[] for _ in range(len(window))]
        for i in range(len(window)):
            for mm, b in zip(meals.minute[i], meals.bolus[i], strict=True):
                if mm < 0 or not b:
                    continue
                a0 = mm // sample_min
                a1, a2 = (mm + 120) // sample_min, (mm + 240) // sample_min
                if a0 >= lo and a2 <= hi:
                    rises[i].append(readings[i, a1:a2].mean() - readings[i, a0])
            if rises[i]:
                rise[i] = float(np.mean(rises[i]))
        s = self.step
        hypo = tbr > 0.04
        basal_f = np.where(
            hypo, 1 - s, np.where(night > 150, 1 + s, np.where(night < 100, 1 - s, 1.0))
        )
        cr_f = np.where(hypo, 1 + s, np.where(rise > 60, 1 - s, np.where(rise < 0, 1 + s, 1.0)))
        cf_f = np.where(hypo, 1 + s, np.where(tar > 0.25, 1 - s, 1.0))
        k = self.max_factor
        st = self._start
        self.basal = np.clip(self.basal * basal_f, st["basal_u_h"] / k, st["basal_u_h"] * k)
        self.cr = np.clip(self.cr * cr_f, st["cr_g_u"] / k, st["cr_g_u"] * k)
        self.cf = np.clip(self.cf * cf_f, st["cf_mg_dl_u"] / k, st["cf_mg_dl_u"] * k)


# --------------------------------------------------------------------------------------------
# The simulation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GlucoseRun:
    """What :func:`simulate` returns.

    ``cgm`` (n, S) the sensor's readings at its sample times (``sample_min``); ``bg`` (n, R)
    true subcutaneous glucose and ``bg_plasma`` (n, R) plasma glucose (mg/dL) every
    ``record_min``; per patient totals ``insulin_u`` (basal + bolus), ``bolus_u``, ``carbs_g``,
    ``rescue_g`` and ``rescues``; ``settings`` at the end."""

    cgm: np.ndarray
    bg: np.ndarray
    bg_plasma: np.ndarray
    sample_min: int
    record_min: int
    insulin_u: np.ndarray
    bolus_u: np.ndarray
    carbs_g: np.ndarray
    rescue_g: np.ndarray
    rescues: np.ndarray
    settings: dict[str, np.ndarray]


def patient_matrix(model: UserModel, table: pd.DataFrame) -> np.ndarray:
    """The model's individual vectors (n, k) from a patient table with its parameter columns."""
    missing = [p for p in model.parameters if p not in table]
    if missing:
        raise InputError(f"model {model.name} reads {', '.join(missing)}: not in the patients")
    return model.individual({p: table[p].to_numpy(dtype=float) for p in model.parameters})


def simulate(
    patients: pd.DataFrame,
    minutes: int,
    meals: MealPlan,
    *,
    controller: BasalBolus | None = None,
    basal_u_per_min: np.ndarray | None = None,
    boluses: tuple[np.ndarray, np.ndarray] | None = None,
    sensor: Sensor | None = None,
    noise: np.ndarray | None = None,
    pump: Pump | None = None,
    hypo: tuple[float, float, int] | None = None,
    record_min: int = 5,
    count_from: int = 0,
    model: UserModel | None = None,
) -> GlucoseRun:
    """Simulate every patient for ``minutes`` minutes, all at once.

    Closed loop: ``controller`` decides the basal and the meal boluses from the sensor
    (``sensor``, with ``noise`` (n, S) from :func:`cgm_noise`; without a sensor the controller
    reads the true subcutaneous glucose every 5 min). Open loop (``controller=None``): a basal
    of ``basal_u_per_min`` (n,) and ``boluses = (minute (n, B), units (n, B))`` delivered
    within their minute. ``hypo = (below mg/dL, carbs g, every min)`` treats low CGM readings.
    The totals (insulin, carbohydrate, rescues) count from minute ``count_from``.
    """
    from insilico_trials.sim.pk.modelkernel import kernel_for

    model = model or t1d_model()
    n = len(patients)
    p = patient_matrix(model, patients)
    stepper = kernel_for(model).stepper(p)
    meal_c = model.routes["meal"]
    ins_c = model.routes["insulin"]
    sig = model.n_cmt + model.signal_names.index("DBAR")
    gs = model.compartments.index("GS")
    gp = model.compartments.index("GP")
    vg = patients["VG"].to_numpy(dtype=float)
    to_pmol = U_TO_PMOL / patients["BW"].to_numpy(dtype=float)
    sample = sensor.sample_min if sensor is not None else 5
    n_samples = minutes // sample + 1
    if sensor is not None and noise is None:
        noise = np.zeros((n, n_samples))
    cgm = np.full((n, n_samples), np.nan)
    n_rec = minutes // record_min + 1
    bg = np.empty((n, n_rec))
    bgp = np.empty((n, n_rec))
    inputs = np.zeros((n, stepper.width))
    planned = np.zeros(n)
    last_eat = np.zeros(n)
    last_qsto = np.zeros(n)
    foodtaken = np.zeros(n)
    eating = np.zeros(n, dtype=bool)
    insulin_u = np.zeros(n)
    bolus_u = np.zeros(n)
    carbs_g = np.zeros(n)
    rescue_g = np.zeros(n)
    rescues = np.zeros(n, dtype=int)
    last_rescue = np.full(n, -(10**9))
    next_meal = np.zeros(n, dtype=int)  # index of the next meal per patient
    rows = np.arange(n)
    n_meals = meals.minute.shape[1]
    # the next meal's minute per patient (a large number when none is left)
    big = np.iinfo(np.int64).max // 2
    mm = np.where(meals.minute < 0, big, meals.minute)
    meal_min = np.concatenate([mm, np.full((n, 1), big)], axis=1)
    bolus_now = np.zeros(n)
    basal = np.zeros(n) if basal_u_per_min is None else np.asarray(basal_u_per_min, float)
    if boluses is not None:
        b_min, b_units = boluses
        b_idx = np.zeros(n, dtype=int)
        b_min = np.concatenate([b_min, np.full((n, 1), big)], axis=1)
    x = stepper.x
    for m in range(minutes + 1):
        if m % record_min == 0:
            r = m // record_min
            bg[:, r] = x[:, gs] / vg
            bgp[:, r] = x[:, gp] / vg
        if m == minutes:
            reading = x[:, gs] / vg
            if m % sample == 0:
                cgm[:, m // sample] = _read(sensor, reading, noise, m // sample)
            break
        bolus_now[:] = 0.0
        if m % sample == 0:
            reading = _read(sensor, x[:, gs] / vg, noise, m // sample)
            cgm[:, m // sample] = reading
            if controller is not None:
                controller.review(m, cgm, sample, meals)
                rate = controller.basal
                basal = (pump.basal(rate) if pump is not None else rate) / 60.0
            if hypo is not None:
                below, grams, every = hypo
                treat = (reading < below) & (m - last_rescue >= every)
                planned[treat] += grams
                last_rescue[treat] = m
                if m >= count_from:
                    rescue_g[treat] += grams
                    rescues[treat] += 1
        # meals announced at this minute (several may share it)
        due = meal_min[rows, next_meal] == m
        while due.any():
            i = rows[due]
            j = next_meal[i]
            planned[i] += meals.carbs[i, j]
            if m >= count_from:
                carbs_g[i] += meals.carbs[i, j]
            if controller is not None:
                give = due.copy()
                give[i] = meals.bolus[i, j]
                if give.any():
                    k = rows[give]
                    units = controller.bolus(
                        k, meals.estimate[k, next_meal[k]], cgm_last(cgm, k, m, sample)
                    )
                    units = pump.bolus(units) if pump is not None else np.maximum(units, 0.0)
                    bolus_now[k] += units
            next_meal[i] = np.minimum(j + 1, n_meals)
            due = meal_min[rows, next_meal] == m
        if boluses is not None:
            due = b_min[rows, b_idx] == m
            while due.any():
                i = rows[due]
                bolus_now[i] += b_units[i, b_idx[i]]
                b_idx[i] += 1
                due = b_min[rows, b_idx] == m
        # simglucose's eating: at most 5 g/min of what is planned
        to_eat = np.where(planned > 0, np.minimum(EAT_RATE_G_PER_MIN, planned), 0.0)
        planned = np.maximum(planned - to_eat, 0.0)
        start = (to_eat > 0) & (last_eat <= 0)
        last_qsto[start] = x[start, 0] + x[start, 1]
        foodtaken[start] = 0.0
        eating |= start
        foodtaken[eating] += to_eat[eating]
        eating &= ~((to_eat <= 0) & (last_eat > 0))
        last_eat = to_eat
        units_min = basal + bolus_now
        if m >= count_from:
            insulin_u += units_min
            bolus_u += bolus_now
        inputs[:, meal_c] = to_eat * 1000.0
        inputs[:, ins_c] = units_min * to_pmol
        inputs[:, sig] = last_qsto + foodtaken * 1000.0
        x = stepper.step(inputs, 1.0)
    settings = controller.settings() if controller is not None else {}
    return GlucoseRun(
        cgm, bg, bgp, sample, record_min, insulin_u, bolus_u, carbs_g, rescue_g, rescues, settings
    )


def cgm_last(cgm: np.ndarray, rows: np.ndarray, minute: int, sample: int) -> np.ndarray:
    """The latest reading at or before ``minute`` of patients ``rows``."""
    return cgm[rows, minute // sample]


def _read(
    sensor: Sensor | None, glucose: np.ndarray, noise: np.ndarray | None, k: int
) -> np.ndarray:
    if sensor is None:
        return glucose.copy()
    value = glucose + (noise[:, k] if noise is not None else 0.0)
    return np.clip(value, sensor.low, sensor.high)


# --------------------------------------------------------------------------------------------
# Endpoints: the international consensus on CGM metrics
# --------------------------------------------------------------------------------------------


def cgm_metrics(readings: np.ndarray) -> pd.DataFrame:
    """Per patient (rows of ``readings``, mg/dL): the consensus CGM metrics (Battelino T et
    al., Diabetes Care 2019;42:1593-1603): time in range 70-180 mg/dL, below 70 and below 54,
    above 180 and above 250 (percent of readings; 70 and 180 are in range), mean glucose,
    glucose management indicator ``GMI (%) = 3.31 + 0.02392 * mean`` (Bergenstal RM et al.,
    Diabetes Care 2018;41:2275-2280), coefficient of variation ``100 * SD / mean`` (SD with
    n - 1)."""
    g = np.asarray(readings, dtype=float)
    mean = g.mean(axis=1)
    sd = g.std(axis=1, ddof=1)
    return pd.DataFrame(
        {
            "tir_pct": 100.0 * ((g >= 70) & (g <= 180)).mean(axis=1),
            "tbr70_pct": 100.0 * (g < 70).mean(axis=1),
            "tbr54_pct": 100.0 * (g < 54).mean(axis=1),
            "tar180_pct": 100.0 * (g > 180).mean(axis=1),
            "tar250_pct": 100.0 * (g > 250).mean(axis=1),
            "mean_glucose_mg_dl": mean,
            "gmi_pct": 3.31 + 0.02392 * mean,
            "cv_pct": 100.0 * sd / mean,
        }
    )


# --------------------------------------------------------------------------------------------
# A protocol's arms
# --------------------------------------------------------------------------------------------


def glucose_cohort(protocol: TrialProtocol, arm: str, n: int) -> pd.DataFrame:
    """The virtual patients of one arm of a glucose trial, with their starting pump settings
    ``BASAL0`` (U/h), ``CR0`` (g/U) and ``CF0`` (mg/dL per U): the settings that fit each
    patient times a lognormal error of CV ``patients.settings_cv`` (one draw per setting and
    patient). Every draw is keyed by (arm, patient): the arms are independent groups of
    patients, as in a parallel-group trial, which is what the outcome model analyses."""
    g = protocol.glucose
    assert g is not None
    patient = np.arange(n, dtype=np.int64)
    src = g.patients
    table = virtual_patients(
        patient, seed=protocol.seed, names=src.source_names(), spread=src.spread,
        key=f"t1d-population/{arm}",
    )  # fmt: skip
    s = math.sqrt(math.log1p(src.settings_cv**2))
    z = patient_normals(protocol.seed, ("t1d-settings", arm), patient, 3)
    err = np.exp(s * z - s * s / 2)
    table["BASAL0"] = table["BASAL"].to_numpy() * err[:, 0]
    table["CR0"] = table["CR"].to_numpy() * err[:, 1]
    table["CF0"] = table["CF"].to_numpy() * err[:, 2]
    return table


def controller_for(spec: ControllerSpec, cohort: pd.DataFrame, start_minute: int) -> BasalBolus:
    """The arm's algorithm, on the cohort's starting settings."""
    common = dict(
        basal=cohort["BASAL0"].to_numpy(dtype=float).copy(),
        cr=cohort["CR0"].to_numpy(dtype=float).copy(),
        cf=cohort["CF0"].to_numpy(dtype=float).copy(),
        target=spec.target_mg_dl,
        correct_above=spec.correct_above_mg_dl,
    )
    if spec.kind == "basal_bolus":
        return BasalBolus(**common)
    return DecisionSupport(
        **common, every_days=spec.every_days, step=spec.step, max_factor=spec.max_factor,
        start_minute=start_minute,
    )  # fmt: skip


def simulate_arm(
    protocol: TrialProtocol, arm_name: str, cohort: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray, np.ndarray]:
    """One chunk of an arm: ``(endpoints, exposure, profile times h, profiles)``.

    Endpoints are the consensus CGM metrics over the days after the run-in; exposure holds the
    insulin and carbohydrate per day over the same days and the settings at the end. Profiles:
    each patient's CGM every 15 minutes over those days (the report's AGP)."""
    g = protocol.glucose
    assert g is not None
    arm = next(a for a in protocol.arms if a.name == arm_name)
    assert arm.controller is not None
    patient = cohort["patient"].to_numpy(dtype=np.int64)
    total_days = g.run_in_days + g.days
    minutes = total_days * 1440
    start = g.run_in_days * 1440
    meals = meal_plan(
        [m.model_dump() for m in g.meals], total_days, patient, seed=protocol.seed,
        estimate_cv=g.carb_estimate_cv, keys=(arm.name,),
    )  # fmt: skip
    sensor = Sensor.named(g.cgm.sensor, noise=g.cgm.noise)
    noise = cgm_noise(
        sensor, patient, minutes // sensor.sample_min + 1, seed=protocol.seed,
        key=f"cgm/{arm.name}",
    )  # fmt: skip
    pump = Pump.named(g.pump.name) if g.pump is not None else None
    hypo = g.hypo_treatment
    run = simulate(
        cohort,
        minutes,
        meals,
        controller=controller_for(arm.controller, cohort, start),
        sensor=sensor,
        noise=noise,
        pump=pump,
        hypo=(hypo.below_mg_dl, hypo.carbs_g, hypo.every_min) if hypo is not None else None,
        count_from=start,
        record_min=15,
    )
    k0 = start // sensor.sample_min
    window = run.cgm[:, k0 : minutes // sensor.sample_min]  # the window's readings, end excluded
    endpoints = cgm_metrics(window)
    # time in range during the run-in (on the starting settings): the baseline an analysis
    # may adjust for (analysis.covariates: [baseline]); not defined without a run-in
    run_in = run.cgm[:, :k0]
    endpoints["tir_run_in_pct"] = (
        100.0 * ((run_in >= 70) & (run_in <= 180)).mean(axis=1) if k0 else np.nan
    )
    endpoints.insert(0, "patient", patient)
    endpoints.insert(1, "arm", arm.name)
    endpoints["source_patient"] = cohort["source"].to_numpy()
    days = float(g.days)
    exposure = pd.DataFrame(
        {
            "patient": patient,
            "arm": arm.name,
            "insulin_u_per_day": run.insulin_u / days,
            "bolus_u_per_day": run.bolus_u / days,
            "basal_u_per_day": (run.insulin_u - run.bolus_u) / days,
            "carbs_g_per_day": run.carbs_g / days,
            "rescue_g_per_day": run.rescue_g / days,
            "rescues": run.rescues,
            "basal_u_h_start": cohort["BASAL0"].to_numpy(dtype=float),
            "basal_u_h_end": run.settings["basal_u_h"],
            "cr_g_u_start": cohort["CR0"].to_numpy(dtype=float),
            "cr_g_u_end": run.settings["cr_g_u"],
            "cf_mg_dl_u_start": cohort["CF0"].to_numpy(dtype=float),
            "cf_mg_dl_u_end": run.settings["cf_mg_dl_u"],
        }
    )
    every = max(1, 15 // sensor.sample_min)
    prof = window[:, ::every]
    times_h = (start + np.arange(prof.shape[1]) * every * sensor.sample_min) / 60.0
    return endpoints, exposure, times_h, prof


AGP_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def agp_percentiles(
    times_h: np.ndarray, profiles: dict[str, np.ndarray], *, bin_min: int = 15
) -> pd.DataFrame:
    """Per arm and time-of-day bin (``minute_of_day``, its start), the AGP percentiles of all
    readings of all patients and days in the bin: ``p05 p25 p50 p75 p95`` (mg/dL)."""
    tod = np.round(np.asarray(times_h) * 60.0).astype(int) % 1440 // bin_min * bin_min
    rows = []
    for arm, cgm in profiles.items():
        cgm = np.asarray(cgm, dtype=np.float64)
        for b in np.unique(tod):
            values = cgm[:, tod == b].ravel()
            q = np.quantile(values, AGP_QUANTILES) if values.size else [np.nan] * 5
            rows.append({"arm": arm, "minute_of_day": int(b),
                         **{f"p{round(100 * p):02d}": float(v) for p, v in zip(AGP_QUANTILES, q, strict=True)}})  # fmt: skip
    return pd.DataFrame(rows)
