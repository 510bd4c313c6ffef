"""NONMEM-style event records: validation and simulation, one subject at a time.

Semantics follow NONMEM's PREDPP (and match NONMEM 7 on the mrgsolve/nmtests dosing set):

- EVID 0 observation, 1 dose, 2 other (output only), 3 reset (all amounts to 0, running
  infusions stopped), 4 reset then dose. ADDL/II expand into additional plain (non-SS) doses;
  the ADDL doses of an EVID 4 record do not reset again.
- Doses at a time are applied before the output at that time (also ADDL and lagged doses).
- ALAGn delays doses into compartment n; Fn scales their amount; RATE > 0 is a fixed rate (so Fn
  changes the duration), RATE = -1 takes the rate from Rn, RATE = -2 the duration from Dn.
- SS = 1 resets, then sets the steady state of the dose repeated every II (bolus or infusion,
  infusions may be longer than II); SS = 2 adds that steady state to the current amounts.
  AMT = 0 with RATE > 0, II = 0 and SS = 1 sets the steady state of a constant-rate infusion;
  as in NONMEM (nmtests scenario 29) the infusion does not continue after the record.
- Time-varying parameters: a record's values apply over the interval that ends at that record
  (``"nocb"``, NONMEM's timing); ``"locf"`` uses the previous record's values instead. Dose
  attributes (F, ALAG, R, D) and the steady state come from the dose record itself.

A pending ADDL dose is kept through a reset (only running infusions stop); NONMEM's manual
forbids ADDL on reset records, which we reject.
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from insilico_trials.errors import PKInputError
from insilico_trials.models.pk import PKModel, resolve_model
from insilico_trials.sim.pk.linear import LinearSystem
from insilico_trials.sim.pk.modelkernel import kernel_for
from insilico_trials.sim.pk.ode import ode_advance
from insilico_trials.spec.modelfile import UserModel

__all__ = ["COVARIATE_TIMINGS", "Records", "prepare_records", "simulate_records"]

COVARIATE_TIMINGS = ("nocb", "locf")
_DOSING = ("AMT", "EVID", "CMT", "II", "ADDL", "RATE", "SS")
MAX_ADDL = 100_000  # additional doses one record may expand to (274 years of daily doses)


@dataclass(frozen=True)
class Records:
    """Validated event records of one data set (columns upper-case, numeric, in input order).

    Attributes
    ----------
    model
        The PK model the records are for.
    id, time, amt, evid, cmt, ii, addl, rate, ss
        Shape (r,) arrays; ``cmt`` is 1-based, 0 meaning the default compartment.
    params
        Shape (r, n_params): the model parameters per record, in ``model.parameters`` order.
    alag, f, r, d
        Shape (r, n_cmt): lag time (h), bioavailability, modelled rate (mg/h), modelled
        duration (h) per compartment (defaults 0, 1, NaN, NaN).
    """

    model: PKModel | UserModel
    id: np.ndarray
    time: np.ndarray
    amt: np.ndarray
    evid: np.ndarray
    cmt: np.ndarray
    ii: np.ndarray
    addl: np.ndarray
    rate: np.ndarray
    ss: np.ndarray
    params: np.ndarray
    alag: np.ndarray
    f: np.ndarray
    r: np.ndarray
    d: np.ndarray

    def __len__(self) -> int:
        return self.time.size


def _numeric(df: pd.DataFrame, col: str, where, *, default: float | None) -> np.ndarray:
    raw = df[col]
    if raw.dtype == object or pd.api.types.is_string_dtype(raw.dtype):
        text = raw.astype(str).str.strip()
        # NONMEM reads "." (and an empty field) as 0 (or the default). "nan" or "inf" is not a
        # number a data set can mean: refused, never read as 0.
        missing = text.isin([".", ""]).to_numpy()
        vals = pd.to_numeric(text.mask(missing, "0"), errors="coerce").to_numpy(dtype=float)
        if default is not None:
            vals[missing] = np.nan
        bad = np.flatnonzero(~np.isfinite(vals) & ~missing)
        if bad.size:
            i = int(bad[0])
            raise PKInputError(f"{where(i)}: {col} must be a finite number, got {raw.iloc[i]!r}")
    else:
        vals = raw.to_numpy(dtype=float)
    if default is not None:
        vals = np.where(np.isnan(vals), default, vals)
    return vals


def prepare_records(
    data: pd.DataFrame, *, model: str | PKModel | UserModel, source: str = "data"
) -> Records:
    """Validate NONMEM-style records and return them as arrays.

    Parameters
    ----------
    data
        One row per record; column names are case-insensitive. Required: ID, TIME and the model's
        parameter columns; optional (NONMEM defaults): AMT, EVID, CMT, II, ADDL, RATE, SS, and
        ALAGn, Fn, Rn, Dn for compartment n. C, DV and MDV are ignored, other columns too.
    model
        Model name, model file path (``.yaml``) or spec.
    source
        Name used in error messages (e.g. the file name).

    Raises
    ------
    PKInputError
        Naming the row (1-based data row), its ID and TIME, the value and what is allowed.
    """
    spec = resolve_model(model) if isinstance(model, str) else model
    df = data.copy()
    df.columns = [str(c).strip().upper() for c in df.columns]
    dup = df.columns[df.columns.duplicated()].tolist()
    if dup:
        raise PKInputError(f"{source}: duplicate columns (case-insensitive): {', '.join(dup)}")
    for col in ("ID", "TIME"):
        if col not in df.columns:
            raise PKInputError(f"{source}: missing required column {col}")
    missing = [p for p in spec.parameters if p not in df.columns]
    if missing:
        raise PKInputError(
            f"{source}: model {spec.name} needs parameter columns {', '.join(spec.parameters)}; "
            f"missing {', '.join(missing)}"
        )
    n = len(df)
    ids_raw = df["ID"].to_numpy()

    def where(i: int) -> str:
        t = df["TIME"].iloc[i]
        return f"{source} row {i + 1} (ID {ids_raw[i]}, TIME {t})"

    ident = _numeric(df, "ID", where, default=None)
    time = _numeric(df, "TIME", where, default=None)
    cols = {}
    for c in _DOSING:
        cols[c] = _numeric(df, c, where, default=None) if c in df.columns else np.zeros(n)
    if "EVID" not in df.columns and "AMT" in df.columns:
        cols["EVID"] = np.where(cols["AMT"] != 0, 1.0, 0.0)
    nc = spec.n_cmt

    def check(mask: np.ndarray, message) -> None:
        bad = np.flatnonzero(mask)
        if bad.size:
            i = int(bad[0])
            raise PKInputError(f"{where(i)}: {message(i)}")

    check(~np.isfinite(time) | (time < 0), lambda i: f"TIME must be >= 0, got {time[i]}")
    check(~np.isfinite(ident), lambda i: f"ID must be a number, got {ids_raw[i]!r}")
    evid, amt, cmt = cols["EVID"], cols["AMT"], cols["CMT"]
    ii, addl, rate, ss = cols["II"], cols["ADDL"], cols["RATE"], cols["SS"]
    check(
        ~np.isin(evid, [0, 1, 2, 3, 4]), lambda i: f"EVID must be one of 0,1,2,3,4, got {evid[i]:g}"
    )
    is_dose = np.isin(evid, [1, 4])
    check(
        (cmt != np.round(cmt)) | (cmt < 0) | (cmt > nc),
        lambda i: f"CMT must be an integer in 1..{nc} for model {spec.name}, got {cmt[i]:g}",
    )
    cmt = np.where(is_dose & (cmt == 0), 1.0, cmt)  # NONMEM's default dose compartment
    check(
        ~np.isfinite(amt) | (amt < 0) | (is_dose & (amt == 0) & ~((rate > 0) & (ss == 1))),
        lambda i: (
            f"AMT must be >= 0 (and > 0 on a dose record unless it is a steady-state "
            f"constant infusion), got {amt[i]:g}"
        ),
    )
    check(~np.isfinite(ii) | (ii < 0), lambda i: f"II must be >= 0, got {ii[i]:g}")
    check(
        ~np.isfinite(addl) | (addl < 0) | (addl != np.round(addl)),
        lambda i: f"ADDL must be a non-negative integer, got {addl[i]:g}",
    )
    check(
        addl > MAX_ADDL,
        lambda i: f"ADDL must be <= {MAX_ADDL:,} additional doses per record, got {addl[i]:g}",
    )
    check(~np.isin(ss, [0, 1, 2]), lambda i: f"SS must be one of 0,1,2, got {ss[i]:g}")
    check(
        ~np.isfinite(rate) | ((rate < 0) & ~np.isin(rate, [-1, -2])),
        lambda i: (
            f"RATE must be >= 0, -1 (modelled rate) or -2 (modelled duration), got {rate[i]:g}"
        ),
    )
    check(
        ~is_dose & ((amt != 0) | (addl != 0) | (ss != 0)),
        lambda i: f"AMT, ADDL and SS must be 0 on a non-dose record (EVID {evid[i]:g})",
    )
    check(
        is_dose & (addl > 0) & (ii <= 0), lambda i: f"ADDL {addl[i]:g} needs II > 0, got {ii[i]:g}"
    )
    const_inf = is_dose & (ss > 0) & (amt == 0) & (rate > 0)
    check(
        const_inf & (ii != 0),
        lambda i: f"a steady-state constant infusion (AMT 0, RATE > 0) needs II 0, got {ii[i]:g}",
    )
    check(
        is_dose & (ss > 0) & ~const_inf & (ii <= 0),
        lambda i: f"SS {ss[i]:g} needs II > 0, got {ii[i]:g}",
    )
    # contiguous blocks of records with the same ID are one subject (NONMEM's rule)
    new_subject = np.r_[True, ident[1:] != ident[:-1]]
    backwards = np.r_[False, (time[1:] < time[:-1])] & ~new_subject
    check(
        backwards,
        lambda i: f"TIME must not decrease within an ID, got {time[i]} after {time[i - 1]}",
    )
    params = np.column_stack(
        [np.zeros(n)] + [_numeric(df, p, where, default=None) for p in spec.parameters]
    )[:, 1:]
    user = isinstance(spec, UserModel)
    for j, p in enumerate(spec.parameters):
        v = params[:, j]
        if user:
            spec.inputs[j].check(v, lambda i, msg: check(np.arange(n) == i, lambda _: msg))
            continue
        positive = (p.startswith("V") and p != "VMAX") or p == "KM"
        if positive:
            check(~np.isfinite(v) | (v <= 0), lambda i, v=v, p=p: f"{p} must be > 0, got {v[i]:g}")
        else:
            check(~np.isfinite(v) | (v < 0), lambda i, v=v, p=p: f"{p} must be >= 0, got {v[i]:g}")

    def per_cmt(prefix: str, default: float) -> np.ndarray:
        out = np.full((n, nc), default)
        for k in range(1, nc + 1):
            name = f"{prefix}{k}"
            if name in df.columns:
                out[:, k - 1] = _numeric(df, name, where, default=None)
        return out

    alag, f, r, d = (
        per_cmt("ALAG", 0.0),
        per_cmt("F", 1.0),
        per_cmt("R", np.nan),
        per_cmt("D", np.nan),
    )
    if user and spec.dosing:
        # the model file's own dose attributes replace the data set's columns
        with np.errstate(divide="ignore", invalid="ignore"):
            own = spec.dose_attributes(
                spec.individual(dict(zip(spec.parameters, params.T, strict=False)))
            )
        for (k, attr), values in own.items():
            {"ALAG": alag, "F": f, "R": r, "D": d}[attr][:, k] = values
    for name, arr in (("ALAG", alag), ("F", f)):
        for k in range(nc):
            check(
                ~np.isfinite(arr[:, k]) | (arr[:, k] < 0),
                lambda i, a=arr[:, k], nm=f"{name}{k + 1}": f"{nm} must be >= 0, got {a[i]:g}",
            )
    ci = np.clip(cmt.astype(int) - 1, 0, nc - 1)
    rows = np.arange(n)
    check(
        is_dose & (rate == -1) & ~(r[rows, ci] > 0),
        lambda i: f"RATE -1 needs a modelled rate R{ci[i] + 1} > 0, got {r[i, ci[i]]:g}",
    )
    check(
        is_dose & (rate == -2) & ~(d[rows, ci] > 0),
        lambda i: f"RATE -2 needs a modelled duration D{ci[i] + 1} > 0, got {d[i, ci[i]]:g}",
    )
    return Records(
        model=spec,
        id=ident,
        time=time,
        amt=amt,
        evid=evid.astype(int),
        cmt=cmt.astype(int),
        ii=ii,
        addl=addl.astype(int),
        rate=rate,
        ss=ss.astype(int),
        params=params,
        alag=alag,
        f=f,
        r=r,
        d=d,
    )


class _Dynamics:
    """One subject's state propagation with piecewise-constant parameters and inputs."""

    def __init__(self, model: PKModel | UserModel, *, method: str = "exact") -> None:
        self.model = model
        # "ode" forces the ODE solver (steady state by Newton on the period map) to cross-check
        self.exact = model.linear and method == "exact"
        self._cache: dict[tuple, LinearSystem] = {}
        self.user = isinstance(model, UserModel)
        self.kernel = kernel_for(model) if self.user else None
        self._individual: dict[tuple, np.ndarray] = {}
        self.ss_tol = max(1e-9, 10 * model.rtol) if self.user else 1e-9
        self.ss_atol = 10 * model.atol if self.user else 0.0

    def individual(self, p: np.ndarray) -> np.ndarray:
        """A model file's individual vector (inputs, then derived) for one record's inputs."""
        key = tuple(p.tolist())
        ind = self._individual.get(key)
        if ind is None:
            model = self.model
            with np.errstate(divide="ignore", invalid="ignore"):
                ind = model.individual({k: p[j : j + 1] for j, k in enumerate(model.parameters)})[0]
            self._individual[key] = ind
        return ind

    def initial(self, p: np.ndarray) -> np.ndarray:
        """Amounts at the start and after a reset."""
        if not self.user:
            return np.zeros(self.model.n_cmt)
        return self.model.initial_amounts(self.individual(p)[None, :])[0]

    def _system(self, p: np.ndarray) -> LinearSystem:
        key = tuple(p.tolist())
        sys_ = self._cache.get(key)
        if sys_ is None:
            sys_ = LinearSystem(
                self.model, dict(zip(self.model.parameters, p[:, None], strict=True))
            )
            self._cache[key] = sys_
        return sys_

    def advance(self, p: np.ndarray, x: np.ndarray, dt: float, rate: np.ndarray) -> np.ndarray:
        if dt <= 0:
            return x
        if self.exact:
            return self._system(p).advance(x[None, :], np.array([[dt]]), rate[None, :])[0, 0]
        if self.user:
            return self.kernel.advance(self.individual(p), x, dt, rate)
        pars = dict(zip(self.model.parameters, p.tolist(), strict=True))
        return ode_advance(self.model, pars, x, np.array([dt]), rate)[0]

    def steady_infusion(self, p: np.ndarray, rate: np.ndarray) -> np.ndarray:
        if self.user:
            return _user_steady_infusion(self, p, rate)
        if self.model.linear:
            return self._system(p).steady_state_infusion(rate[None, :])[0]
        return _nonlinear_steady_infusion(self.model, p, rate)

    def transition(self, p: np.ndarray, dt: float) -> np.ndarray:
        """Matrix Phi(dt) of a linear model: x(dt) = Phi x(0) without inputs."""
        sys_ = self._system(p)
        eye = np.eye(sys_.n_cmt)
        return sys_.advance(eye, np.full((sys_.n_cmt, 1), dt))[:, 0, :].T


def _nonlinear_steady_infusion(model: PKModel, p: np.ndarray, rate: np.ndarray) -> np.ndarray:
    if model.name != "pk1cmt_mm":
        raise NotImplementedError(model.name)
    pars = dict(zip(model.parameters, p.tolist(), strict=True))
    ka, vmax, km, v = pars["KA"], pars["VMAX"], pars["KM"], pars["V"]
    total = rate[0] + rate[1]
    if total >= vmax:
        raise PKInputError(
            f"no steady state: constant input {total:g} mg/h is not below VMAX {vmax:g} mg/h"
        )
    depot = rate[0] / ka if rate[0] > 0 else 0.0
    c = total * km / (vmax - total)  # VMAX C / (KM + C) = input
    return np.array([depot, c * v])


def _user_steady_infusion(dyn: _Dynamics, p: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """Amounts where a model file's right-hand side plus the constant input is zero.

    Newton's method on a forward-difference Jacobian, from the amounts the model reaches after
    integrating a long time (a root of the right-hand side near the trajectory's end).
    """
    ind = dyn.individual(p)
    kernel = dyn.kernel
    n = dyn.model.n_cmt
    x = kernel.advance(ind, dyn.initial(p), 1e3, rate)
    for _ in range(60):
        f = kernel.rhs(ind, x, rate)
        if np.all(f == 0):
            return x
        scale = max(float(np.max(np.abs(x))), 1e-12)
        jac = np.empty((n, n))
        for k in range(n):
            h = 1e-7 * max(abs(x[k]), scale * 1e-3)
            e = x.copy()
            e[k] += h
            jac[:, k] = (kernel.rhs(ind, e, rate) - f) / h
        try:
            step = np.linalg.solve(jac, f)
        except np.linalg.LinAlgError:
            break
        x = x - step
        # converged when the Newton step is below the model's own tolerances (the residual,
        # in amount per hour, has no fixed scale when rate constants are large)
        if np.max(np.abs(step)) <= dyn.ss_tol * scale + dyn.ss_atol:
            return x
    raise PKInputError(
        f"no steady state found for model {dyn.model.name} under a constant input of "
        f"{rate.tolist()} mg/h"
    )


@dataclass
class _Dose:
    cmt: int  # 0-based
    amount: float  # after F (mg)
    rate: float  # mg/h, 0 for a bolus
    duration: float  # h, 0 for a bolus


class _Subject:
    """Event queue and state of one subject."""

    def __init__(self, dyn: _Dynamics, n_cmt: int) -> None:
        self.dyn = dyn
        self.x = np.zeros(n_cmt)
        self.t = -math.inf
        self.infusions: dict[int, tuple[int, float]] = {}  # id -> (cmt, rate)
        self.queue: list = []
        self.seq = 0
        self.n_cmt = n_cmt

    def _push(self, time: float, kind: int, payload) -> None:
        # kind 0 infusion end, 1 dose: at equal times an ending infusion stops first
        self.seq += 1
        heapq.heappush(self.queue, (time, kind, self.seq, payload))

    def rate(self) -> np.ndarray:
        r = np.zeros(self.n_cmt)
        for cmt, rate in self.infusions.values():
            r[cmt] += rate
        return r

    def _move(self, p: np.ndarray, t: float) -> None:
        if self.t == -math.inf:
            self.t = t
            return
        if t > self.t:
            self.x = self.dyn.advance(p, self.x, t - self.t, self.rate())
            self.t = t

    def advance_to(self, p: np.ndarray, t: float) -> None:
        while self.queue and self.queue[0][0] <= t:
            time, kind, _, payload = heapq.heappop(self.queue)
            self._move(p, time)
            if kind == 0:
                self.infusions.pop(payload, None)
            else:
                self.give(payload)
        self._move(p, t)

    def give(self, dose: _Dose) -> None:
        if dose.rate == 0:
            self.x = self.x.copy()
            self.x[dose.cmt] += dose.amount
        else:
            self.start_infusion(dose.cmt, dose.rate, self.t + dose.duration)

    def start_infusion(self, cmt: int, rate: float, end: float) -> None:
        self.seq += 1
        key = self.seq
        self.infusions[key] = (cmt, rate)
        if math.isfinite(end):
            self._push(end, 0, key)

    def schedule(self, time: float, dose: _Dose) -> None:
        if time <= self.t:
            self.give(dose)
        else:
            self._push(time, 1, dose)

    def reset(self) -> None:
        self.x = np.zeros(self.n_cmt)
        self.infusions.clear()


def _steady_state(
    dyn: _Dynamics, p: np.ndarray, dose: _Dose, ii: float, phase: float, n_cmt: int
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """State at ``phase`` h after a dose of the steady-state train repeated every ``ii`` h.

    Returns the amounts and the infusions of the train still running then, as
    (rate mg/h, remaining h). ``phase`` is in [0, ii]; the dose at phase 0 is included.
    """
    bolus = np.zeros(n_cmt)
    if dose.rate == 0:
        bolus[dose.cmt] = dose.amount
        cuts = [0.0, ii]
    else:
        # within a period, the number of running infusions changes at phases D - k*II
        k_max = math.ceil(dose.duration / ii)
        inner = [dose.duration - k * ii for k in range(k_max + 1)]
        cuts = sorted({0.0, ii, *[c for c in inner if 0 < c < ii]})

    def running(s: float) -> int:
        # doses started at phases s, s + II, s + 2 II, ... ago still infusing
        return (
            0 if dose.rate == 0 else math.ceil((dose.duration - s) / ii) if dose.duration > s else 0
        )

    def run(x: np.ndarray, until: float) -> np.ndarray:
        x = x + bolus
        for a, b in itertools.pairwise(cuts):
            if a >= until:
                break
            r = np.zeros(n_cmt)
            r[dose.cmt] = running(a) * dose.rate
            x = dyn.advance(p, x, min(b, until) - a, r)
        return x

    if dyn.exact:
        c0 = run(np.zeros(n_cmt), ii)
        phi = dyn.transition(p, ii)
        trough = np.linalg.solve(np.eye(n_cmt) - phi, c0)
    else:
        trough = _periodic_fixed_point(run, ii, n_cmt, dyn.ss_tol, dyn.ss_atol)
    state = trough if phase >= ii else run(trough, phase)
    tails = []
    if dose.rate > 0:
        j = 0
        while phase + j * ii < dose.duration:
            tails.append((dose.rate, dose.duration - (phase + j * ii)))
            j += 1
    return state, tails


def _periodic_fixed_point(
    run, ii: float, n_cmt: int, tol: float = 1e-9, atol: float = 0.0
) -> np.ndarray:
    """Pre-dose amounts x with run(x, ii) == x, by Newton steps on a finite-difference Jacobian.

    The built-in ODE solutions carry ~1e-10 relative error, so convergence is declared at 1e-9
    relative; a model file's at ten times its rtol (when that is larger) or ten times its atol.
    """
    x = np.zeros(n_cmt)
    for _ in range(60):
        y = run(x, ii)
        resid = y - x
        scale = max(float(np.max(np.abs(y))), 1e-300)
        if np.max(np.abs(resid)) <= tol * scale + atol:
            return y
        jac = np.empty((n_cmt, n_cmt))
        for k in range(n_cmt):
            h = max(1e-6, tol) * max(abs(x[k]), scale * 1e-3, 1e-12)
            e = x.copy()
            e[k] += h
            jac[:, k] = (run(e, ii) - y) / h
        step = np.linalg.solve(jac - np.eye(n_cmt), resid)
        x = np.maximum(x - step, 0.0)  # amounts cannot be negative
    raise PKInputError(
        f"the steady state of doses every {ii:g} h did not converge in 60 Newton steps (the "
        "trough amounts may be too small for the solver's tolerance, or no steady state exists)"
    )


def simulate_records(
    records: Records | pd.DataFrame,
    *,
    model: str | None = None,
    covariate_timing: str = "nocb",
    source: str = "data",
    method: str = "exact",
) -> pd.DataFrame:
    """Simulate NONMEM-style event records.

    Parameters
    ----------
    records
        Validated :class:`Records`, or a DataFrame to validate with :func:`prepare_records`
        (then ``model`` is required).
    model
        Model name when ``records`` is a DataFrame.
    covariate_timing
        ``"nocb"`` (NONMEM: a record's parameter values apply over the interval ending at it) or
        ``"locf"`` (they apply from the record on).
    source
        Name for error messages.
    method
        ``"exact"`` (closed-form state transition for linear models) or ``"ode"`` (stiff ODE
        solver, rtol 1e-10, atol 1e-12 mg, for every model; a cross-check).

    Returns
    -------
    pandas.DataFrame
        One row per input record, in input order: ID, TIME, EVID, CP (mg/L, central amount over
        central volume) and A1..An (mg), the state after the record's own events.
    """
    if covariate_timing not in COVARIATE_TIMINGS:
        raise PKInputError(
            f"covariate_timing must be one of {', '.join(COVARIATE_TIMINGS)}, "
            f"got {covariate_timing!r}"
        )
    if method not in ("exact", "ode"):
        raise PKInputError(f"method must be 'exact' or 'ode', got {method!r}")
    if isinstance(records, pd.DataFrame):
        if model is None:
            raise PKInputError("model is required when records is a DataFrame")
        records = prepare_records(records, model=model, source=source)
    rec = records
    spec = rec.model
    nc = spec.n_cmt
    amounts = np.zeros((len(rec), nc))
    dyn = _Dynamics(spec, method=method)
    starts = np.flatnonzero(np.r_[True, rec.id[1:] != rec.id[:-1]])
    ends = np.r_[starts[1:], len(rec)]
    nocb = covariate_timing == "nocb"
    for a, b in zip(starts, ends, strict=True):
        subj = _Subject(dyn, nc)
        subj.x = dyn.initial(rec.params[a])
        for i in range(a, b):
            t = float(rec.time[i])
            p_interval = rec.params[i] if nocb or i == a else rec.params[i - 1]
            subj.advance_to(p_interval, t)
            ev = rec.evid[i]
            if ev in (3, 4):
                subj.reset()
                subj.x = dyn.initial(rec.params[i])
            if ev in (1, 4):
                _dose_record(subj, dyn, rec, i, t)
            amounts[i] = subj.x
    out = pd.DataFrame({"ID": rec.id, "TIME": rec.time, "EVID": rec.evid})
    if dyn.user:
        individual = np.stack([dyn.individual(p) for p in rec.params])
        for name, values in spec.evaluate_outputs(amounts, individual).items():
            out[name] = values
    else:
        out["CP"] = amounts[:, spec.central] / rec.params[:, spec.parameters.index(spec.volume)]
    for k in range(nc):
        out[f"A{k + 1}"] = amounts[:, k]
    # integer IDs print as integers
    if np.all(rec.id == np.round(rec.id)):
        out["ID"] = rec.id.astype(np.int64)
    return out


def _dose_record(subj: _Subject, dyn: _Dynamics, rec: Records, i: int, t: float) -> None:
    p = rec.params[i]
    c = int(rec.cmt[i]) - 1
    f = float(rec.f[i, c])
    lag = float(rec.alag[i, c])
    amount = float(rec.amt[i]) * f
    rate_col = float(rec.rate[i])
    if rate_col == 0:
        dose = _Dose(c, amount, 0.0, 0.0)
    elif rate_col > 0:
        dose = _Dose(c, amount, rate_col, amount / rate_col)
    elif rate_col == -1:
        r = float(rec.r[i, c])
        dose = _Dose(c, amount, r, amount / r)
    else:
        dur = float(rec.d[i, c])
        dose = _Dose(c, amount, amount / dur, dur)
    ss, ii = int(rec.ss[i]), float(rec.ii[i])
    if ss:
        if ss == 2 and dyn.user and dyn.model.initial:
            # SS=2 adds the steady state to the current amounts (superposition); a model file
            # with initial amounts (a baseline response) would count its baseline twice
            raise PKInputError(
                f"record {i + 1} (ID {rec.id[i]:g}, TIME {t:g}): SS=2 adds a steady state to the "
                f"current amounts, which model {dyn.model.name} cannot do: it has initial "
                "amounts (a baseline), counted twice by the sum; use SS=1"
            )
        if ss == 1:
            subj.reset()
        if rec.amt[i] == 0:  # constant-rate infusion at steady state
            r = np.zeros(subj.n_cmt)
            r[c] = rate_col * f
            # NONMEM sets the steady state but does not keep the infusion running afterwards
            # (nmtests scenario 29: the amounts decline from the record on)
            subj.x = subj.x + dyn.steady_infusion(p, r)
            return
        # the train has doses at t + lag - k II (k >= 1) before this record's dose at t + lag
        k0 = max(1, math.ceil(lag / ii))
        phase = k0 * ii - lag
        state, tails = _steady_state(dyn, p, dose, ii, phase, subj.n_cmt)
        subj.x = subj.x + state
        for rate, remaining in tails:
            subj.start_infusion(c, rate, t + remaining)
        for k in range(1, k0):
            subj.schedule(t + lag - k * ii, dose)
    if dose.amount > 0:
        subj.schedule(t + lag, dose)
    for k in range(1, int(rec.addl[i]) + 1):
        subj.schedule(t + k * ii + lag, dose)
