"""Scores of probabilistic forecasts given as ensembles (posterior predictive draws).

A forecast of an observation ``y`` is ``m`` draws ``x_1..x_m`` (axis 0 of ``draws``), read as
their empirical distribution. Scores, in the unit of the observation:

:func:`crps_ensemble`
    the continuous ranked probability score (Gneiting & Raftery, JASA 2007;102:359-378,
    section 4.2): ``CRPS(F, y) = E|X - y| - 0.5 E|X - X'|`` with ``X, X'`` independent draws of
    ``F``; for the empirical distribution exactly, both expectations over all ``m`` (``m^2``)
    values. Lower is better; for a point forecast it is the absolute error.
:func:`interval_coverage`
    whether ``y`` falls inside the central (equal-tailed) interval of each level.
:func:`forecast_scores`
    the mean CRPS and the coverage shares over many observations.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from insilico_trials.errors import InputError

__all__ = ["ForecastError", "crps_ensemble", "forecast_scores", "interval_coverage"]


class ForecastError(InputError):
    """Draws and observations that cannot be scored together."""


def _checked(draws: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(draws, dtype=float)
    obs = np.asarray(y, dtype=float)
    if x.ndim < 1 or x.shape[0] < 1:
        raise ForecastError(
            f"draws: need at least one draw along axis 0, got shape {x.shape}",
            rule="draws of shape (m, ...) with m >= 1",
            actual=x.shape,
            where="draws",
        )
    try:
        shape = np.broadcast_shapes(x.shape[1:], obs.shape)
    except ValueError:
        raise ForecastError(
            f"y: shape {obs.shape} does not broadcast with the draws' {x.shape[1:]}",
            rule="y broadcastable to draws.shape[1:]",
            actual=obs.shape,
            expected=str(x.shape[1:]),
            where="y",
        ) from None
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(obs))):
        raise ForecastError(
            "draws and y: must be finite",
            rule="finite draws and observations",
            where="draws, y",
        )
    return np.broadcast_to(x, (x.shape[0], *shape)), np.broadcast_to(obs, shape)


def crps_ensemble(draws: np.ndarray, y: np.ndarray) -> np.ndarray:
    """CRPS of the empirical distribution of ``draws`` at each observation ``y``.

    Parameters
    ----------
    draws : ndarray, shape (m, ...)
        Forecast draws along axis 0 (e.g. posterior predictive PSA, ng/mL).
    y : ndarray
        Observations, broadcastable to ``draws.shape[1:]`` (same unit).

    Returns
    -------
    ndarray, shape ``broadcast(draws.shape[1:], y.shape)``
        ``mean_i |x_i - y| - (1 / (2 m^2)) sum_{i,j} |x_i - x_j|``, in the unit of ``y``.

    Notes
    -----
    ``sum_{i,j} |x_i - x_j| = 2 sum_i (2 i - m - 1) x_(i)`` over the sorted draws
    ``x_(1) <= ... <= x_(m)``, so the cost is ``O(m log m)`` per observation, not ``O(m^2)``.
    The draws are centred before that weighted sum (the weights sum to 0) to limit
    cancellation. This is the CRPS of the ensemble as it is (the "NRG" form), not the
    "fair" estimator of the CRPS of the distribution the draws come from (which divides by
    ``m (m - 1)``); the two differ by ``O(1/m)``.
    """
    x, obs = _checked(draws, y)
    m = x.shape[0]
    abs_err = np.mean(np.abs(x - obs), axis=0)
    s = np.sort(x, axis=0)
    s = s - s.mean(axis=0)
    w = (2.0 * np.arange(1, m + 1) - m - 1.0).reshape((m,) + (1,) * (x.ndim - 1))
    spread = np.sum(w * s, axis=0) / (m * m)  # = 0.5 * E|X - X'|
    return abs_err - spread


def interval_coverage(
    draws: np.ndarray, y: np.ndarray, levels: Sequence[float] = (0.5, 0.9)
) -> dict[float, np.ndarray]:
    """Whether each observation lies in the central interval of the draws, per level.

    Parameters
    ----------
    draws : ndarray, shape (m, ...)
        Forecast draws along axis 0.
    y : ndarray
        Observations, broadcastable to ``draws.shape[1:]``.
    levels : sequence of float
        Interval levels in (0, 1): the interval of level ``L`` runs from the ``(1 - L) / 2``
        to the ``(1 + L) / 2`` quantile of the draws (linear interpolation), both ends
        included.

    Returns
    -------
    dict of float to ndarray of bool
        One boolean array (shape of the broadcast observations) per level.
    """
    x, obs = _checked(draws, y)
    out = {}
    for level in levels:
        lev = float(level)
        if not 0.0 < lev < 1.0:
            raise ForecastError(
                f"levels: each must be in (0, 1), got {level!r}",
                rule="0 < level < 1",
                actual=level,
                expected="(0, 1)",
                where="levels",
            )
        lo, hi = np.quantile(x, [(1.0 - lev) / 2.0, (1.0 + lev) / 2.0], axis=0)
        out[lev] = (obs >= lo) & (obs <= hi)
    return out


def forecast_scores(draws: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Summary scores of ensemble forecasts over all observations.

    Parameters
    ----------
    draws : ndarray, shape (m, ...)
        Forecast draws along axis 0.
    y : ndarray
        Observations, broadcastable to ``draws.shape[1:]``.

    Returns
    -------
    dict
        ``crps_mean`` (mean CRPS, unit of ``y``), ``coverage_50`` and ``coverage_90`` (shares
        of observations inside the central 50% and 90% intervals; nominal 0.5 and 0.9 for a
        calibrated forecast), ``n`` (number of observations).
    """
    crps = crps_ensemble(draws, y)
    cov = interval_coverage(draws, y, (0.5, 0.9))
    return {
        "crps_mean": float(np.mean(crps)),
        "coverage_50": float(np.mean(cov[0.5])),
        "coverage_90": float(np.mean(cov[0.9])),
        "n": int(crps.size),
    }
