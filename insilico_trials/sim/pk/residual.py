"""Residual (measurement) error on simulated concentrations."""

from __future__ import annotations

import numpy as np

__all__ = ["add_residual_error"]


def add_residual_error(
    conc: np.ndarray,
    *,
    additive_sd: float = 0.0,
    proportional_sd: float = 0.0,
    rng: np.random.Generator,
) -> np.ndarray:
    """Observed concentrations: ``C (1 + eps_p) + eps_a`` with independent normal errors.

    Parameters
    ----------
    conc
        Predicted concentrations (mg/L), any shape.
    additive_sd
        Standard deviation of the additive error (mg/L), >= 0.
    proportional_sd
        Standard deviation of the proportional error (fraction, e.g. 0.1 for 10 %), >= 0.
        Both > 0 is the combined error model (NONMEM's ``Y = F + F*EPS(1) + EPS(2)``).
    rng
        Generator the errors are drawn from; derive it from the patient's keyed stream
        (:mod:`insilico_trials.sim.rng`) so results do not depend on chunking. The proportional
        draws come first, then the additive ones, each of ``conc``'s shape; a zero SD draws
        nothing.

    Returns
    -------
    numpy.ndarray
        Same shape as ``conc`` (mg/L); can be negative with additive error, as real assay
        noise around zero is.
    """
    conc = np.asarray(conc, dtype=float)
    for name, sd in (("additive_sd", additive_sd), ("proportional_sd", proportional_sd)):
        if not np.isfinite(sd) or sd < 0:
            raise ValueError(f"{name} must be finite and >= 0, got {sd}")
    out = conc.copy()
    if proportional_sd > 0:
        out = out * (1.0 + proportional_sd * rng.standard_normal(conc.shape))
    if additive_sd > 0:
        out = out + additive_sd * rng.standard_normal(conc.shape)
    return out
