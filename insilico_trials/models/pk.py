"""PK model specifications: compartments, parameters and the right-hand sides.

A model is a frozen spec; solving lives in :mod:`insilico_trials.sim.pk.linear` (exact state
transition for linear models) and :mod:`insilico_trials.sim.pk.ode` (stiff ODE solver for the
nonlinear ones). Units everywhere: amounts in mg, volumes in L, time in h, clearances in L/h,
rate constants in 1/h, concentrations in mg/L.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from insilico_trials.errors import PKInputError
from insilico_trials.spec.catalog import PK_PARAMETERS
from insilico_trials.spec.modelfile import UserModel, is_model_path, load_model_file

__all__ = ["MODELS", "PKModel", "get_model", "is_model_path", "resolve_model"]


@dataclass(frozen=True)
class PKModel:
    """A compartmental PK model.

    Attributes
    ----------
    name
        Model name, e.g. ``"pk2cmt"``.
    compartments
        Compartment names in NONMEM numbering order (compartment 1 is ``compartments[0]``).
    parameters
        Required parameter names (CL, Q* in L/h; VMAX in mg/h; V* in L; KA in 1/h; KM in mg/L).
    central
        0-based index of the central compartment; CP = amount[central] / volume.
    volume
        Name of the parameter that is the central volume (L).
    linear
        True when the model is linear and time-invariant between events (exact solution used).
    n_peripheral
        Number of peripheral compartments (linear mammillary models).
    rhs
        For nonlinear models: ``rhs(t, x, params, rate) -> dx/dt`` on one patient; ``params`` maps
        names to floats, ``rate`` is the zero-order input per compartment (mg/h).
    jac
        For nonlinear models: the Jacobian of ``rhs`` with respect to ``x``.
    """

    name: str
    compartments: tuple[str, ...]
    parameters: tuple[str, ...]
    central: int
    volume: str
    linear: bool
    n_peripheral: int = 0
    rhs: Callable[..., np.ndarray] | None = field(default=None, repr=False)
    jac: Callable[..., np.ndarray] | None = field(default=None, repr=False)

    @property
    def n_cmt(self) -> int:
        """Number of compartments."""
        return len(self.compartments)

    def disposition(
        self, params: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mammillary disposition rates of a linear model, per patient.

        Returns
        -------
        volumes
            Shape (n, 1 + n_peripheral): central then peripheral volumes (L).
        clearances
            Shape (n, 1 + n_peripheral): elimination clearance (L/h) then the intercompartmental
            clearances Q to each peripheral compartment (L/h).
        ka
            Shape (n,): absorption rate constant (1/h).
        """
        if not self.linear:
            raise TypeError(f"model {self.name} is not linear")
        p = {k: np.asarray(params[k], dtype=float) for k in self.parameters}
        if self.name == "pk1cmt":
            vols, cls = [p["V"]], [p["CL"]]
        elif self.name == "pk2cmt":
            vols, cls = [p["V1"], p["V2"]], [p["CL"], p["Q"]]
        else:
            vols, cls = [p["V1"], p["V2"], p["V3"]], [p["CL"], p["Q2"], p["Q3"]]
        shape = np.broadcast_shapes(*(a.shape for a in p.values()))
        vols = np.stack([np.broadcast_to(v, shape) for v in vols], axis=-1)
        cls = np.stack([np.broadcast_to(c, shape) for c in cls], axis=-1)
        return vols, cls, np.broadcast_to(p["KA"], shape).astype(float)


def _mm_rhs(t: float, x: np.ndarray, params: Mapping[str, float], rate: np.ndarray) -> np.ndarray:
    ka, vmax, km, v = params["KA"], params["VMAX"], params["KM"], params["V"]
    c = x[1] / v
    absorbed = ka * x[0]
    return np.array([rate[0] - absorbed, rate[1] + absorbed - vmax * c / (km + c)])


def _mm_jac(t: float, x: np.ndarray, params: Mapping[str, float], rate: np.ndarray) -> np.ndarray:
    ka, vmax, km, v = params["KA"], params["VMAX"], params["KM"], params["V"]
    c = x[1] / v
    # d/dA2 of VMAX*C/(KM+C) with C = A2/V
    d_elim = vmax * km / (km + c) ** 2 / v
    return np.array([[-ka, 0.0], [ka, -d_elim]])


MODELS: dict[str, PKModel] = {
    "pk1cmt": PKModel(
        name="pk1cmt",
        compartments=("depot", "central"),
        parameters=PK_PARAMETERS["pk1cmt"],
        central=1,
        volume="V",
        linear=True,
        n_peripheral=0,
    ),
    "pk2cmt": PKModel(
        name="pk2cmt",
        compartments=("depot", "central", "peripheral"),
        parameters=PK_PARAMETERS["pk2cmt"],
        central=1,
        volume="V1",
        linear=True,
        n_peripheral=1,
    ),
    "pk3cmt": PKModel(
        name="pk3cmt",
        compartments=("depot", "central", "peripheral", "peripheral2"),
        parameters=PK_PARAMETERS["pk3cmt"],
        central=1,
        volume="V1",
        linear=True,
        n_peripheral=2,
    ),
    "pk1cmt_mm": PKModel(
        name="pk1cmt_mm",
        compartments=("depot", "central"),
        parameters=PK_PARAMETERS["pk1cmt_mm"],
        central=1,
        volume="V",
        linear=False,
        rhs=_mm_rhs,
        jac=_mm_jac,
    ),
}


def get_model(name: str) -> PKModel:
    """Look up a model by name, with an error that lists the known models."""

    try:
        return MODELS[name]
    except KeyError:
        raise PKInputError(
            f"unknown PK model {name!r}; must be one of {', '.join(MODELS)}"
        ) from None


def resolve_model(name: str | Path) -> PKModel | UserModel:
    """A built-in model by name, or a model file by path (``models/pk2cmt.yaml``)."""
    if isinstance(name, Path) or is_model_path(str(name)):
        model = load_model_file(name)
        problem = model.pk_problem()
        if problem:
            raise PKInputError(f"{name}: {problem}")
        return model
    return get_model(str(name))
