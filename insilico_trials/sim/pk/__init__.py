"""Population PK/PD engine: NONMEM event records, exact linear models, ODE models, PD, exposure.

Public entry points:

- :func:`simulate_regimen`: population simulation of a regular regimen (the trial flows' path).
- :func:`simulate_records` / :func:`prepare_records`: NONMEM-style event records (ID, TIME,
  AMT, EVID, CMT, II, ADDL, RATE, SS) with per-row parameters;
  :func:`insilico_trials.app.pk_cli.simulate_csv` for CSV files.
- :data:`MODELS`: the model specs (``MODELS["pk2cmt"].parameters``).
- :func:`add_residual_error`; exposure metrics in :mod:`insilico_trials.sim.pk.exposure`; PD models
  in :mod:`insilico_trials.sim.pk.pd`.
"""

from insilico_trials.errors import PKInputError
from insilico_trials.models.pk import MODELS, PKModel, get_model
from insilico_trials.sim.pk.events import prepare_records, simulate_records
from insilico_trials.sim.pk.regimen import simulate_regimen
from insilico_trials.sim.pk.residual import add_residual_error

__all__ = [
    "MODELS",
    "PKInputError",
    "PKModel",
    "add_residual_error",
    "get_model",
    "prepare_records",
    "simulate_records",
    "simulate_regimen",
]
