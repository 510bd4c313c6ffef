"""Exposure metrics per patient from concentration-time profiles on a shared time grid.

All functions take ``times_h`` of shape (m,) (sorted, h) and ``conc`` of shape (n, m) (mg/L) and
return one value per patient, shape (n,). Integrals use the linear trapezoidal rule (or
linear-up/log-down); pass a fine grid when exactness matters.
"""

from __future__ import annotations

import numpy as np

__all__ = ["auc", "auc_inf", "cmax", "ctrough", "lambda_z", "time_above", "tmax"]


def _rowsum(x: np.ndarray) -> np.ndarray:
    """Row sums accumulated left to right.

    ``x.sum(axis=1)`` uses pairwise summation for a single row but another order for a
    batch, so a patient's AUC would change in its last bits with the chunk it is computed
    in; a cumulative sum adds each row in the same order whatever the batch.
    """
    if x.shape[1] == 0:
        return np.zeros(x.shape[0])
    return np.cumsum(x, axis=1)[:, -1]


def _check(times_h: np.ndarray, conc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(times_h, dtype=float)
    c = np.atleast_2d(np.asarray(conc, dtype=float))
    if t.ndim != 1 or c.shape[-1] != t.size:
        raise ValueError(f"conc must have shape (n, {t.size}) to match times_h, got {c.shape}")
    if np.any(np.diff(t) < 0):
        raise ValueError("times_h must be sorted ascending")
    return t, c


def _window(t: np.ndarray, start_h: float | None, end_h: float | None) -> np.ndarray:
    lo = t[0] if start_h is None else start_h
    hi = t[-1] if end_h is None else end_h
    sel = (t >= lo) & (t <= hi)
    if sel.sum() < 1:
        raise ValueError(f"no output time in [{lo}, {hi}] h")
    return sel


def auc(
    times_h: np.ndarray,
    conc: np.ndarray,
    *,
    start_h: float | None = None,
    end_h: float | None = None,
    method: str = "linear",
) -> np.ndarray:
    """Area under the curve (mg*h/L) over [start_h, end_h] (grid points inside the window).

    ``method`` is ``"linear"`` (trapezoids) or ``"linlog"`` (linear up, log down).
    """
    t, c = _check(times_h, conc)
    sel = _window(t, start_h, end_h)
    t, c = t[sel], c[:, sel]
    dt = np.diff(t)
    c0, c1 = c[:, :-1], c[:, 1:]
    area = dt * (c0 + c1) / 2.0
    if method == "linlog":
        down = (c1 < c0) & (c1 > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_area = dt * (c0 - c1) / np.log(c0 / c1)
        area = np.where(down, log_area, area)
    elif method != "linear":
        raise ValueError(f"method must be 'linear' or 'linlog', got {method!r}")
    return _rowsum(area)


def lambda_z(times_h: np.ndarray, conc: np.ndarray, *, n_points: int = 3) -> np.ndarray:
    """Terminal rate constant (1/h) by log-linear regression on the last ``n_points`` samples.

    NaN where a concentration there is <= 0 or the slope is not negative (undefined).
    """
    t, c = _check(times_h, conc)
    if n_points < 2 or n_points > t.size:
        raise ValueError(f"n_points must be in 2..{t.size}, got {n_points}")
    tt, cc = t[-n_points:], c[:, -n_points:]
    ok = np.all(cc > 0, axis=1)
    logc = np.log(np.where(cc > 0, cc, 1.0))
    tm = tt - tt.mean()
    slope = _rowsum(logc * tm) / (tm**2).sum()
    return np.where(ok & (slope < 0), -slope, np.nan)


def auc_inf(times_h: np.ndarray, conc: np.ndarray, *, n_points: int = 3) -> np.ndarray:
    """AUC from the first time to infinity (mg*h/L): AUC_0-tlast + C_last / lambda_z.

    NaN where lambda_z is undefined (see :func:`lambda_z`).
    """
    t, c = _check(times_h, conc)
    lz = lambda_z(t, c, n_points=n_points)
    return auc(t, c) + c[:, -1] / lz


def cmax(times_h: np.ndarray, conc: np.ndarray, *, start_h=None, end_h=None) -> np.ndarray:
    """Maximum concentration (mg/L) within the window."""
    t, c = _check(times_h, conc)
    return c[:, _window(t, start_h, end_h)].max(axis=1)


def tmax(times_h: np.ndarray, conc: np.ndarray, *, start_h=None, end_h=None) -> np.ndarray:
    """Time (h) of the first maximum within the window."""
    t, c = _check(times_h, conc)
    sel = _window(t, start_h, end_h)
    return t[sel][np.argmax(c[:, sel], axis=1)]


def ctrough(times_h: np.ndarray, conc: np.ndarray, *, at_h: float) -> np.ndarray:
    """Concentration (mg/L) at ``at_h``, usually just before a dose (the grid must contain it).

    On the regimen path a dose at t is applied before the output at t, so pass the time of
    the last output before the dose, or simulate with an output at ``dose_time - tiny``.
    """
    t, c = _check(times_h, conc)
    hit = np.flatnonzero(t == at_h)
    if hit.size == 0:
        raise ValueError(f"at_h {at_h} h is not an output time")
    return c[:, hit[0]]


def time_above(
    times_h: np.ndarray, conc: np.ndarray, threshold: float, *, start_h=None, end_h=None
) -> np.ndarray:
    """Time (h) above ``threshold`` (mg/L), with linear interpolation between samples."""
    t, c = _check(times_h, conc)
    sel = _window(t, start_h, end_h)
    t, c = t[sel], c[:, sel] - threshold
    dt = np.diff(t)
    a, b = c[:, :-1], c[:, 1:]
    both = (a > 0) & (b > 0)
    cross = (a > 0) != (b > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac_pos = np.where(a > 0, a / (a - b), b / (b - a))
    part = np.where(both, dt, np.where(cross, dt * frac_pos, 0.0))
    return _rowsum(part)
