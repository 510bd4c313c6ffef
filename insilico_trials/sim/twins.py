"""Population solvers of twin models under each patient's own dosing history.

Each patient has a piecewise-constant treatment indicator ``u(t)`` (1 on, 0 off) and is
observed at his own days. Two solvers, both vectorised over the patients of a cut:

:func:`solve_population`
    the reference: the patients' states stacked into one system, integrated by an adaptive
    8th-order Runge-Kutta (DOP853) piece by piece between the union of all patients' switch
    days, so no step ever straddles a discontinuity of ``u``; states saved at the exact
    observation days. At ``rtol=1e-10`` it agrees with scipy's LSODA (one patient at a time,
    rtol 1e-10) to a relative 2e-9 on 2000-day histories with many switches
    (``tests/test_twins.py``).
:func:`solve_grid`
    fixed-step RK4 on the logarithms of the states over a per-patient :class:`StepGrid` (whose
    breakpoints include every switch and observation day): the numpy twin of the
    differentiable solver in :mod:`insilico_trials.infer.twins`, used for posterior
    predictions over many draws at once.

Days are study days (day 0 = a patient's first record, where his states are ``S0``, ``R0``).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.integrate import solve_ivp

from insilico_trials.errors import InputError, RunFailure
from insilico_trials.models.twins import TwinModel

__all__ = [
    "DosingHistory",
    "StepGrid",
    "TwinCut",
    "TwinDataError",
    "TwinSolution",
    "rk4_log_step",
    "solve_grid",
    "solve_population",
    "step_grid",
]


class TwinDataError(InputError):
    """Bad twin data: names the patient, the column or row, the value and what is allowed."""


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class DosingHistory:
    """A piecewise-constant treatment indicator: ``u(t) = on[k]`` for
    ``start_days[k] <= t < start_days[k + 1]`` (the last piece is open-ended).

    Attributes
    ----------
    start_days : ndarray
        Strictly increasing start day of each piece; the first is 0.
    on : ndarray
        1.0 (on treatment) or 0.0 (off) per piece; consecutive pieces differ.
    """

    start_days: np.ndarray
    on: np.ndarray

    def __post_init__(self) -> None:
        s = np.asarray(self.start_days, dtype=float)
        on = np.asarray(self.on, dtype=float)
        if (
            s.ndim != 1
            or s.shape != on.shape
            or s.size == 0
            or s[0] != 0.0
            or (np.diff(s) <= 0).any()
            or not np.isin(on, (0.0, 1.0)).all()
        ):
            raise TwinDataError(
                "DosingHistory: start_days must increase from 0, one 0/1 value of on per piece, "
                f"got start_days={s.tolist()}, on={on.tolist()}",
                rule="start_days[0] == 0, increasing; on in {0, 1}",
                actual=(s.tolist(), on.tolist()),
            )
        # collapse repeated statuses so that every start (but the first) is a switch
        keep = np.r_[True, on[1:] != on[:-1]]
        object.__setattr__(self, "start_days", s[keep])
        object.__setattr__(self, "on", on[keep])

    @classmethod
    def from_records(cls, days: Sequence[float], on: Sequence[float]) -> DosingHistory:
        """From the status recorded at each visit: the status of a visit holds until the next.

        This is the convention of the trial's analysis code (``createU.m`` of Zhang et al.
        2022: ``u`` on ``(t_{i-1}, t_i]`` is the status recorded at ``t_{i-1}``).

        Parameters
        ----------
        days : sequence of float
            Visit days (increasing; the first is day 0).
        on : sequence of {0, 1}
            Treatment status recorded at each visit.
        """
        d = np.asarray(days, dtype=float)
        if d.size == 0 or d[0] != 0.0 or (np.diff(d) <= 0).any():
            raise TwinDataError(
                f"dosing records: days must increase strictly from day 0, got {d[:6].tolist()}",
                rule="days increasing from 0",
                actual=d[:6].tolist(),
            )
        return cls(d, np.asarray(on, dtype=float))

    @property
    def switch_days(self) -> np.ndarray:
        """Days where ``u`` changes (days)."""
        return self.start_days[1:]

    def u_at(self, days: np.ndarray) -> np.ndarray:
        """``u`` at each day (right-continuous: the status of the piece starting there)."""
        k = np.searchsorted(self.start_days, np.asarray(days, dtype=float), side="right") - 1
        return self.on[np.clip(k, 0, None)]


@dataclass(frozen=True)
class TwinCut:
    """The patients of one data cut: dosing histories, observation days and values.

    Attributes
    ----------
    patients : tuple of str
    dosing : tuple of DosingHistory
    days : tuple of ndarray
        Observation days per patient (increasing, >= 0).
    values : tuple of ndarray or None
        Measured biomarker per observation (e.g. PSA, ng/mL), or None for a design.
    """

    patients: tuple[str, ...]
    dosing: tuple[DosingHistory, ...]
    days: tuple[np.ndarray, ...]
    values: tuple[np.ndarray, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.patients)
        if (
            len(self.dosing) != n
            or len(self.days) != n
            or (self.values is not None and len(self.values) != n)
        ):
            raise TwinDataError("TwinCut: one dosing history, day and value array per patient")
        for i, d in enumerate(self.days):
            d = np.asarray(d, dtype=float)
            if d.ndim != 1 or d.size == 0 or d[0] < 0 or (np.diff(d) <= 0).any():
                raise TwinDataError(
                    f"TwinCut: patient {self.patients[i]}: days must be >= 0 and strictly "
                    f"increasing, got {d[:6].tolist()}",
                    where=f"patient {self.patients[i]}",
                )
            if self.values is not None and np.asarray(self.values[i]).shape != d.shape:
                raise TwinDataError(f"TwinCut: patient {self.patients[i]}: one value per day")

    @property
    def n_patients(self) -> int:
        """Number of patients."""
        return len(self.patients)

    @classmethod
    def from_frame(
        cls,
        data: pd.DataFrame,
        *,
        patient: str = "patient",
        day: str = "day",
        on: str = "abiraterone",
        value: str | None = "psa_ng_ml",
    ) -> TwinCut:
        """A cut from long data: one row per visit (patient, day, on-treatment status, value).

        The status of a visit holds until the patient's next visit
        (:meth:`DosingHistory.from_records`). Patients keep their order of first appearance.
        """
        cols = [patient, day, on] + ([value] if value else [])
        missing = [c for c in cols if c not in data.columns]
        if missing:
            raise TwinDataError(f"data: missing column(s) {missing}; present: {list(data.columns)}")
        d = data[cols].copy()
        vals = d[cols[1:]].apply(pd.to_numeric, errors="coerce")
        bad = ~np.isfinite(vals.to_numpy(dtype=float)).all(axis=1)
        if value:
            bad |= ~(vals[value].to_numpy(dtype=float) >= 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise TwinDataError(
                f"data row {d.index[i]}: {cols[1:]} must be finite numbers (values >= 0), "
                f"got {d.iloc[i][cols[1:]].tolist()}",
                where=f"row {d.index[i]}",
            )
        d[cols[1:]] = vals
        ids, dosing, days, values = [], [], [], []
        for pid, g in d.groupby(patient, sort=False):
            g = g.sort_values(day)
            t = g[day].to_numpy(dtype=float) - float(g[day].iloc[0])
            ids.append(str(pid))
            dosing.append(DosingHistory.from_records(t, g[on].to_numpy(dtype=float)))
            days.append(t)
            if value:
                values.append(g[value].to_numpy(dtype=float))
        return cls(tuple(ids), tuple(dosing), tuple(days), tuple(values) if value else None)


def _patient_params(
    model: TwinModel, params: Mapping[str, np.ndarray | float], n: int
) -> dict[str, np.ndarray]:
    out = {}
    for name in (*model.patient_parameters, *model.shared_parameters):
        if name == model.observation.scale_name and name not in params:
            continue
        if name not in params:
            raise TwinDataError(
                f"params: {model.name} needs {name!r}; got {sorted(params)}",
                rule="every declared parameter",
                expected=str([*model.patient_parameters, *model.shared_parameters]),
            )
        out[name] = np.broadcast_to(np.asarray(params[name], dtype=float), (n,))
    return out


@dataclass(frozen=True)
class TwinSolution:
    """States and biomarker at each patient's observation days, padded with NaN.

    Attributes
    ----------
    days : ndarray, shape (n_patients, n_max)
        Observation days (NaN after a patient's last).
    states : ndarray, shape (n_patients, n_max, n_states)
        States (the model's state unit, e.g. cells).
    observed : ndarray, shape (n_patients, n_max)
        The biomarker (``observation.unit``); NaN when the scale is not given.
    mask : ndarray of bool, shape (n_patients, n_max)
        True where an observation exists.
    """

    days: np.ndarray
    states: np.ndarray
    observed: np.ndarray
    mask: np.ndarray


def _padded(days: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    m = max(len(d) for d in days)
    out = np.full((len(days), m), np.nan)
    mask = np.zeros((len(days), m), dtype=bool)
    for i, d in enumerate(days):
        out[i, : len(d)] = d
        mask[i, : len(d)] = True
    return out, mask


def _observed(model: TwinModel, p: Mapping[str, np.ndarray], states: np.ndarray) -> np.ndarray:
    ob = model.observation
    scale = ob.fixed_scale if ob.scale == "fixed" else p.get(ob.scale_name)
    if scale is None:
        return np.full(states.shape[:-1], np.nan)
    scale = np.asarray(scale, dtype=float)
    if scale.ndim:
        scale = scale[..., None]
    return model.observe(np.moveaxis(states, -1, 0), scale)


# --------------------------------------------------------------------------- reference


def solve_population(
    model: TwinModel,
    params: Mapping[str, np.ndarray | float],
    dosing: Sequence[DosingHistory],
    days: Sequence[np.ndarray],
    *,
    rtol: float = 1e-10,
    atol: float = 1e-12,
) -> TwinSolution:
    """Solve every patient of a cut at once (the reference solver).

    Parameters
    ----------
    model : TwinModel
    params : mapping
        Per-patient parameters (arrays of length ``n_patients``) and shared ones (scalars),
        in the units of the model's declaration (e.g. ``S0``, ``R0`` cells; ``c`` ng/mL per
        cell; the scale may be left out, then ``observed`` is NaN).
    dosing : sequence of DosingHistory
        One per patient.
    days : sequence of ndarray
        Observation days per patient (>= 0, increasing).
    rtol, atol : float
        DOP853 tolerances (relative; absolute in the state unit).

    Returns
    -------
    TwinSolution
    """
    n = len(dosing)
    if len(days) != n:
        raise TwinDataError(f"days: one array per patient ({n}), got {len(days)}")
    p = _patient_params(model, params, n)
    ns = len(model.states)
    y = np.stack([p[q] for q in model.initial])  # (n_states, n)
    obs_days, mask = _padded([np.asarray(d, dtype=float) for d in days])
    t_end = float(np.nanmax(obs_days))
    cuts = np.unique(np.concatenate([h.switch_days for h in dosing] + [[0.0, t_end]]))
    cuts = cuts[cuts <= t_end]
    out = np.full((n, obs_days.shape[1], ns), np.nan)
    at0 = mask & (obs_days == 0.0)
    out[at0] = y.T[np.nonzero(at0)[0]]

    def fun(_t, flat, u):
        return np.concatenate(model.rhs(flat.reshape(ns, n), u, p))

    # u of every patient on every piece, once per cut (pieces start at cuts[:-1])
    u_pieces = np.stack([h.u_at(cuts[:-1]) for h in dosing], axis=1)
    for (a, b), u in zip(itertools.pairwise(cuts), u_pieces, strict=True):
        sel = mask & (obs_days > a) & (obs_days <= b)
        t_eval = np.unique(obs_days[sel])
        if t_eval.size == 0 or t_eval[-1] != b:
            t_eval = np.append(t_eval, b)
        sol = solve_ivp(
            fun, (a, b), y.ravel(), method="DOP853", t_eval=t_eval, args=(u,), rtol=rtol, atol=atol
        )
        if not sol.success:
            raise RunFailure(f"solve_population: DOP853 failed on [{a}, {b}] days: {sol.message}")
        ys = sol.y.reshape(ns, n, -1)
        rows, cols = np.nonzero(sel)
        k = np.searchsorted(t_eval, obs_days[rows, cols])
        out[rows, cols] = ys[:, rows, k].T
        y = ys[:, :, -1]
    return TwinSolution(obs_days, out, _observed(model, p, out), mask)


# --------------------------------------------------------------------------- fixed-step grid


@dataclass(frozen=True)
class StepGrid:
    """Per-patient fixed steps covering every switch and observation day exactly.

    Patient ``i`` takes steps ``h[:, i]`` (days; zero-length steps pad the shorter
    histories) with treatment ``u[:, i]`` constant over each step; his state at his ``j``-th
    requested day is the state after ``index[i, j]`` steps.

    Attributes
    ----------
    h : ndarray, shape (n_steps, n_patients)
        Step lengths (days), each <= ``max_step_days``.
    u : ndarray, shape (n_steps, n_patients)
        Treatment indicator during each step.
    index : ndarray of int, shape (n_patients, n_max)
        Number of steps before each requested day (0 = day 0); -1 where padded.
    days : ndarray, shape (n_patients, n_max)
        The requested days (NaN where padded).
    """

    h: np.ndarray
    u: np.ndarray
    index: np.ndarray
    days: np.ndarray

    @property
    def n_steps(self) -> int:
        """Number of steps (the longest patient's)."""
        return int(self.h.shape[0])


def step_grid(
    dosing: Sequence[DosingHistory],
    days: Sequence[np.ndarray],
    *,
    max_step_days: float = 1.0,
) -> StepGrid:
    """The fixed-step grid of a cut (see :class:`StepGrid`).

    Parameters
    ----------
    dosing : sequence of DosingHistory
        One per patient.
    days : sequence of ndarray
        Days at which each patient's states are wanted (observations and predictions).
    max_step_days : float
        Largest step (days). Between two breakpoints (switches, requested days) the interval
        is cut into equal steps no longer than this.
    """
    if not max_step_days > 0:
        raise TwinDataError(f"max_step_days: must be > 0 days, got {max_step_days!r}")
    req, mask = _padded([np.asarray(d, dtype=float) for d in days])
    hs, us, idx = [], [], np.full(req.shape, -1, dtype=np.int64)
    for i, hist in enumerate(dosing):
        want = req[i, mask[i]]
        t_end = float(want.max())
        br = np.unique(np.concatenate([[0.0, t_end], hist.switch_days, want]))
        br = br[br <= t_end]
        lengths = np.diff(br)
        counts = np.maximum(np.ceil(lengths / max_step_days - 1e-9), 1).astype(np.int64)
        h = np.repeat(lengths / counts, counts)
        starts = np.concatenate([[0.0], np.cumsum(h)[:-1]])
        # u over a step is the status of the piece containing its midpoint (no step straddles)
        u = hist.u_at(starts + 0.5 * h)
        after = np.concatenate([[0], np.cumsum(counts)])  # steps done at each breakpoint
        idx[i, mask[i]] = after[np.searchsorted(br, want)]
        hs.append(h)
        us.append(u)
    n_steps = max(len(h) for h in hs)
    h_arr = np.zeros((n_steps, len(hs)))
    u_arr = np.zeros((n_steps, len(hs)))
    for i, (h, u) in enumerate(zip(hs, us, strict=True)):
        h_arr[: len(h), i] = h
        u_arr[: len(u), i] = u
    return StepGrid(h_arr, u_arr, idx, req)


def rk4_log_step(
    model: TwinModel, z: Sequence[Any], h: Any, u: Any, params: Mapping[str, Any]
) -> tuple[Any, ...]:
    """One classical RK4 step on the log-states ``z`` (``d z_i / dt = g_i(exp z, u)``).

    Arithmetic and ``exp`` only (``exp`` of the array library of ``z``), so numpy arrays and
    pytensor tensors share this code. ``z``: one array per state (log of the state unit);
    ``h``: step (days); ``u``: treatment indicator; ``params``: the model's parameters.
    """
    exp = _exp_of(z[0])

    def g(zz):
        return model.rates(tuple(exp(x) for x in zz), u, params)

    k1 = g(z)
    k2 = g(tuple(x + 0.5 * h * k for x, k in zip(z, k1, strict=True)))
    k3 = g(tuple(x + 0.5 * h * k for x, k in zip(z, k2, strict=True)))
    k4 = g(tuple(x + h * k for x, k in zip(z, k3, strict=True)))
    return tuple(
        x + h / 6.0 * (a + 2.0 * b + 2.0 * c + d)
        for x, a, b, c, d in zip(z, k1, k2, k3, k4, strict=True)
    )


def _exp_of(x):
    if isinstance(x, np.ndarray | float | np.floating):
        return np.exp
    import pytensor.tensor as pt

    return pt.exp


def solve_grid(
    model: TwinModel, params: Mapping[str, np.ndarray | float], grid: StepGrid
) -> TwinSolution:
    """Fixed-step RK4 (log-states) over a :class:`StepGrid`, vectorised over leading axes.

    Parameters
    ----------
    model : TwinModel
    params : mapping
        Arrays broadcastable to ``(..., n_patients)``: e.g. ``(n_draws, n_patients)`` per-patient
        draws and ``(n_draws, 1)`` shared draws, to solve many posterior draws at once.
    grid : StepGrid

    Returns
    -------
    TwinSolution
        ``states`` of shape ``(..., n_patients, n_max, n_states)``.
    """
    p = {k: np.asarray(v, dtype=float) for k, v in params.items()}
    z = tuple(np.log(np.asarray(p[q], dtype=float)) for q in model.initial)
    shape = np.broadcast_shapes(*(x.shape for x in z), *(v.shape for v in p.values()))
    z = tuple(np.broadcast_to(x, shape).copy() for x in z)
    n_max = grid.index.shape[1]
    out = np.full((*shape, n_max, len(z)), np.nan)
    valid = grid.index >= 0

    def save(k):
        hit = valid & (grid.index == k)
        if hit.any():
            pi, j = np.nonzero(hit)
            out[..., pi, j, :] = np.stack([x[..., pi] for x in z], axis=-1)

    save(0)
    for k in range(grid.n_steps):
        z = rk4_log_step(model, z, grid.h[k], grid.u[k], p)
        save(k + 1)
    states = np.exp(out)
    days = np.broadcast_to(grid.days, (*shape[:-1], *grid.days.shape))
    mask = np.broadcast_to(valid, days.shape)
    return TwinSolution(days, states, _observed(model, p, states), mask)
