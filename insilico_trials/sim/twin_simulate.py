"""Simulated twin data: dosing histories shaped like the abiraterone trial's, and PSA series
simulated by a twin model with its residual error (for recovery and calibration studies of
the twin fit; see ``scripts/twin_recovery.py`` and ``tests/test_twins.py``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from insilico_trials.models.twins import get_twin_model
from insilico_trials.sim.twins import DosingHistory, TwinCut, solve_population

__all__ = ["simulate_twin_cut", "trial_like_histories"]


def trial_like_histories(
    n: int, *, seed: int, horizon_days: float = 2000.0
) -> tuple[list[DosingHistory], list[np.ndarray]]:
    """Dosing histories and visit days shaped like the trial's adaptive arm (Zhang et al.,
    eLife 2022;11:e76284).

    On-treatment spells of 60-250 days alternate with off spells of 30-200 days (the trial
    stopped abiraterone at a 50 % PSA fall and resumed at baseline); visits every 25-35 days
    at fractional days, day 0 included.
    """
    rng = np.random.default_rng(seed)
    dosing, days = [], []
    for _ in range(n):
        spells = np.where(
            np.arange(40) % 2 == 0, rng.uniform(60, 250, 40), rng.uniform(30, 200, 40)
        )
        starts = np.r_[0.0, np.cumsum(spells)]
        starts = starts[starts < horizon_days]
        dosing.append(DosingHistory(starts, (np.arange(starts.size) % 2 == 0).astype(float)))
        visits = np.cumsum(rng.uniform(25, 35, 100))
        days.append(np.r_[0.0, visits[visits < horizon_days]])
    return dosing, days


def simulate_twin_cut(
    n: int,
    *,
    seed: int,
    horizon_days: float,
    sigma: float = 0.15,
    model: str = "zhang2022",
) -> tuple[TwinCut, dict[str, Any]]:
    """A cut simulated by the twin model itself, and its true parameters.

    ``zhang2022``: per patient ``S0 ~ LogNormal(log 3000, 0.5)``, ``R0 ~ LogNormal(log 100,
    1)`` cells, ``c ~ LogNormal(log 2e-3, 0.7)`` ng/mL per cell; shared ``alpha = 3``,
    ``beta = 1``. PSA ``= (f + L) exp(sigma e) - L`` clipped at 0, ``L`` the assay floor,
    ``e`` standard normal: the fit's residual model with its floor at the assay's.
    """
    tm = get_twin_model(model)
    if tm.name != "zhang2022":
        raise ValueError(f"simulate_twin_cut: no simulation design for {tm.name!r}")
    rng = np.random.default_rng(seed)
    dosing, days = trial_like_histories(n, seed=seed, horizon_days=horizon_days)
    truth: dict[str, Any] = {
        "S0": np.exp(rng.normal(np.log(3000.0), 0.5, n)),
        "R0": np.exp(rng.normal(np.log(100.0), 1.0, n)),
        "c": np.exp(rng.normal(np.log(2e-3), 0.7, n)),
        "alpha": 3.0,
        "beta": 1.0,
    }
    sol = solve_population(tm, truth, dosing, days)
    floor = tm.observation.assay_floor
    values = []
    for i in range(n):
        f = sol.observed[i, : len(days[i])]
        y = (f + floor) * np.exp(sigma * rng.standard_normal(f.size)) - floor
        values.append(np.clip(y, 0.0, None))
    cut = TwinCut(tuple(f"P{i}" for i in range(n)), tuple(dosing), tuple(days), tuple(values))
    return cut, truth
