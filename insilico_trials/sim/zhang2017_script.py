"""Reproduction mode of Zhang et al. 2017: the authors' published simulation, step for step.

``Abiraterone_Main.m`` (github.com/cunninghamjj/Integrating-evolutionary-dynamics-into-
treatment-of-mCRPC, commit c38b7e4) simulates one of the 22 competition matrices for 10,000
steps under one of four schedules and reports, per matrix, the step at which resistant (T-)
cells first exceed 5% and 90% of all cells, and the drug given as a percentage of standard
dosing. :func:`run_zhang_script` does the same for any set of matrices at once, with the
script's conventions kept, quirks included:

* steps are counted as the script's 1-based indices: index 1 is the initial state (40% of
  the published equilibrium), index ``i`` the state after ``i - 1`` Euler steps;
* the treatment start ``firstTreatmentTime`` is the number of untreated steps, without the
  density floor, until PSA reaches 80% of its equilibrium value; the schedules are then laid
  on the flag vector from that index, and the flag at index ``i`` governs the step into
  index ``i``, so standard dosing starts two steps before PSA reaches the threshold;
* ``adaptive`` is the script's rule, decided before every step: on while PSA is above the
  start threshold, off once it is below 40% of it, else unchanged (off before the start);
* ``metronomic``: on for 801 steps from the start, then 201-step cycles every 1,000 steps
  from start + 2,000;
* the dose percentage is the number of "on" indices over the ``steps - start + 1`` indices of
  standard dosing.

The script's own values, computed by running it under GNU Octave, are shipped in
``insilico_trials/data/zhang2017_script_outputs.csv`` (see ``insilico_trials/data/zhang2017.md``
for how they were made) and compared with this function in ``tests/test_zhang2017_script.py``
and in the report's validation table.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from insilico_trials.sim.tumour import (
    ZHANG2017_PARAMS,
    ZHANG2017_SCRIPT_RULE,
    TumourModelError,
    ZhangParams,
    _zhang_step,
    zhang_ess,
)

__all__ = [
    "REPRESENTATIVE_PATIENTS",
    "SCRIPT_TREATMENTS",
    "ScriptRun",
    "run_zhang_script",
    "script_reference",
    "script_reproduction",
]

DATA = Path(__file__).resolve().parents[1] / "data"

Treatment = Literal["none", "soc", "metronomic", "adaptive"]
#: The script's four schedules (``treatmentType``), in its spelling.
SCRIPT_TREATMENTS: dict[str, str] = {
    "none": "None",
    "soc": "SOC",
    "metronomic": "Metronomic",
    "adaptive": "Adaptive",
}
#: 1-based matrices of the paper's representative patients (script comments, README).
REPRESENTATIVE_PATIENTS: dict[str, int] = {"#1": 7, "#2": 5}


@dataclass(frozen=True)
class ScriptRun:
    """Outputs of :func:`run_zhang_script`, one entry per matrix (script indices, 1-based).

    ``time_to_5_percent`` / ``time_to_90_percent``: first index where T- exceeds 5% / 90% of
    all cells (``nan`` if never within the run); ``percentage_of_soc``: drug given relative to
    standard dosing, percent; ``first_treatment_time``: the script's treatment start;
    ``on`` (n, steps) the flag vector; ``y`` (n, steps, 4) the states (T+, TP, T-, PSA).
    """

    matrix: np.ndarray
    first_treatment_time: np.ndarray
    time_to_5_percent: np.ndarray
    time_to_90_percent: np.ndarray
    percentage_of_soc: np.ndarray
    on: np.ndarray
    y: np.ndarray


def _first_index_above(freq: np.ndarray, level: float) -> np.ndarray:
    """MATLAB's ``find(freq > level, 1, 'first')`` per row, 1-based; nan when empty."""
    hit = freq > level
    out = np.argmax(hit, axis=1).astype(np.float64) + 1.0
    out[~hit.any(axis=1)] = np.nan
    return out


def run_zhang_script(
    matrix: np.ndarray | list[int],
    treatment: Treatment,
    *,
    steps: int = 10_000,
    params: ZhangParams = ZHANG2017_PARAMS,
) -> ScriptRun:
    """Run the published script's simulation for 1-based ``matrix`` rows under ``treatment``.

    Vectorised over matrices; each matrix's numbers are those of a separate run of the script
    with ``matrixIndex`` set to it (same operations in the same order, so the same rounding).
    """
    mat = np.atleast_1d(np.asarray(matrix, dtype=np.int64))
    n_rows = len(params.alphas)
    if mat.ndim != 1 or np.any(mat < 1) or np.any(mat > n_rows):
        raise TumourModelError(f"matrix: 1-based rows in [1, {n_rows}], got {mat.tolist()}")
    if treatment not in SCRIPT_TREATMENTS:
        raise TumourModelError(f"treatment: {treatment!r}; allowed {', '.join(SCRIPT_TREATMENTS)}")
    if steps < 2:
        raise TumourModelError(f"steps: must be >= 2, got {steps}")
    idx = mat - 1
    n = idx.size
    m = params.matrix(idx)
    r = np.asarray(params.r_per_day)
    ess = zhang_ess(params, idx)
    y0 = ess * params.x0_fraction_of_ess
    zenith = ess[:, 3] * params.start_at_fraction_of_ess_psa
    # firstTreatmentTime: untreated steps, no floor, while PSA < zenith.
    y = y0.copy()
    first = np.zeros(n, dtype=np.int64)
    off = np.zeros(n, dtype=bool)
    growing = y[:, 3] < zenith
    while growing.any():
        if first.max() > 100 * steps:  # pragma: no cover - every published matrix starts
            raise TumourModelError("run_zhang_script: PSA never reaches the start threshold")
        y_next = _zhang_step(y, off, r, m, params, floor=False)
        y = np.where(growing[:, None], y_next, y)
        first += growing
        growing = y[:, 3] < zenith
    # AbiOnOffFlag, 0-based position i = script index i + 1.
    flag = np.zeros((n, steps), dtype=bool)
    pos = np.arange(steps)[None, :]
    start = (first - 1)[:, None]  # script index firstTreatmentTime, 0-based
    if treatment == "soc":
        flag = pos >= start
    elif treatment == "metronomic":
        flag = (pos >= start) & (pos <= start + 800)
        for cycle in range(11):
            lo = start + 2000 + cycle * 1000
            flag |= (pos >= lo) & (pos <= lo + 200)
    flag = np.array(flag, dtype=bool)
    out = np.empty((n, steps, 4))
    y = y0.copy()
    out[:, 0] = y
    rule = ZHANG2017_SCRIPT_RULE
    for i in range(1, steps):
        if treatment == "adaptive":
            # on above the zenith, off below the nadir, else as before (index i - 1).
            flag[:, i] = rule.apply(flag[:, i - 1], y[:, 3], zenith)
        y = _zhang_step(y, flag[:, i], r, m, params, floor=True)
        out[:, i] = y
    cells = out[:, :, :3]
    freq = cells[:, :, 2] / cells.sum(axis=2) * 100
    soc_total = steps - first + 1
    return ScriptRun(
        matrix=mat,
        first_treatment_time=first,
        time_to_5_percent=_first_index_above(freq, 5),
        time_to_90_percent=_first_index_above(freq, 90),
        percentage_of_soc=flag.sum(axis=1) / soc_total * 100,
        on=flag,
        y=out,
    )


def script_reference() -> pd.DataFrame:
    """The script's own outputs per matrix and schedule (Octave run; see the data README).

    Columns: ``matrix`` (1-based), ``treatment`` (script spelling), ``first_treatment_time``,
    ``time_to_5_percent``, ``time_to_90_percent`` (nan: never within 10,000 steps),
    ``percentage_of_soc``, ``final_tplus``, ``final_tp``, ``final_tminus``, ``final_psa``.
    """
    return pd.read_csv(
        DATA / "zhang2017_script_outputs.csv", comment="#", keep_default_na=False, na_values=["NaN"]
    )


def script_reproduction(params: ZhangParams = ZHANG2017_PARAMS) -> pd.DataFrame:
    """See :func:`_script_reproduction`; computed once per process (deterministic)."""
    return _script_reproduction(params).copy()


@functools.lru_cache(maxsize=4)
def _script_reproduction(params: ZhangParams) -> pd.DataFrame:
    """This code's outputs beside the script's, per matrix and schedule, with distances.

    One row per (matrix, schedule): ``ours_*`` and ``script_*`` for the treatment start, the
    5% and 90% resistance indices and the dose percentage, and ``d_*`` their differences
    (steps; percentage points). Matching ``nan`` (never reached) counts as distance 0.
    """
    ref = script_reference()
    rows = []
    mats = np.arange(1, len(params.alphas) + 1)
    for key, name in SCRIPT_TREATMENTS.items():
        run = run_zhang_script(mats, key, params=params)  # type: ignore[arg-type]
        sub = ref[ref["treatment"] == name].set_index("matrix")
        for j, mtx in enumerate(mats):
            s = sub.loc[int(mtx)]
            row: dict[str, object] = {"matrix": int(mtx), "treatment": name}
            for col, ours in (
                ("first_treatment_time", float(run.first_treatment_time[j])),
                ("time_to_5_percent", float(run.time_to_5_percent[j])),
                ("time_to_90_percent", float(run.time_to_90_percent[j])),
                ("percentage_of_soc", float(run.percentage_of_soc[j])),
            ):
                theirs = float(s[col])
                both_nan = np.isnan(ours) and np.isnan(theirs)
                row[f"ours_{col}"] = ours
                row[f"script_{col}"] = theirs
                row[f"d_{col}"] = 0.0 if both_nan else ours - theirs
            rows.append(row)
    return pd.DataFrame(rows)
