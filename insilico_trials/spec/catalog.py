"""The built-in models a protocol can name, with their parameters and units: their signatures.

A signature is what the protocol's rules need to know about a model (which parameters the
population must declare, in which units) without importing how the model is solved. The
dynamics are in :mod:`insilico_trials.models` (PK) and :mod:`insilico_trials.sim` (kernels).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["PK_PARAMETERS", "TUMOUR_MODELS", "TumourModel"]

# Parameters of the built-in PK models, in the order the solvers take them. Units: CL, Q* in
# L/h; V* in L; KA in 1/h; VMAX in mg/h; KM in mg/L.
PK_PARAMETERS: dict[str, tuple[str, ...]] = {
    "pk1cmt": ("CL", "V", "KA"),
    "pk2cmt": ("CL", "V1", "Q", "V2", "KA"),
    "pk3cmt": ("CL", "V1", "Q2", "V2", "Q3", "V3", "KA"),
    "pk1cmt_mm": ("VMAX", "KM", "V", "KA"),
}


@dataclass(frozen=True)
class TumourModel:
    """What a tumour model is: its name, parameters (with units) and reference."""

    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    units: Mapping[str, str]
    reference: str
    observed: str = "SLD (mm)"
    uses_exposure: bool = True


TUMOUR_MODELS: dict[str, TumourModel] = {
    "exponential": TumourModel(
        "exponential",
        ("SLD0", "KG"),
        ("KD",),
        {"SLD0": "mm", "KG": "1/day", "KD": "1/day per exposure unit"},
        "y(t) = SLD0 * exp(KG t - KD * int E)",
    ),
    "logistic": TumourModel(
        "logistic",
        ("SLD0", "KG", "SLDMAX"),
        ("KD",),
        {"SLD0": "mm", "KG": "1/day", "SLDMAX": "mm", "KD": "1/day per exposure unit"},
        "dy/dt = KG y (1 - y/SLDMAX) - KD E y (Verhulst)",
    ),
    "gompertz": TumourModel(
        "gompertz",
        ("SLD0", "KG", "SLDMAX"),
        ("KD",),
        {"SLD0": "mm", "KG": "1/day", "SLDMAX": "mm", "KD": "1/day per exposure unit"},
        "dy/dt = KG y ln(SLDMAX/y) - KD E y (Gompertz 1825; Laird 1964)",
    ),
    "claret": TumourModel(
        "claret",
        ("SLD0", "KL", "KD", "LAMBDA"),
        (),
        {"SLD0": "mm", "KL": "1/week", "KD": "1/week per exposure unit", "LAMBDA": "1/week"},
        "Claret L et al. J Clin Oncol 2009;27(25):4103-4108, eq. 1: "
        "dy/dt = KL y - KD exp(-LAMBDA t) E(t) y",
    ),
    "stein": TumourModel(
        "stein",
        ("SLD0", "G", "D"),
        ("PHI",),
        {"SLD0": "mm", "G": "1/day", "D": "1/day", "PHI": "fraction"},
        "Stein WD et al. Oncologist 2008;13(10):1046-1054: f(t) = exp(-D t) + exp(G t) - 1; "
        "with PHI: PHI exp(G t) + (1 - PHI) exp(-D t)",
        uses_exposure=False,
    ),
    "zhang2017": TumourModel(
        "zhang2017",
        ("MATRIX",),
        (),
        {"MATRIX": "0-based row of the 22 published competition matrices"},
        "Zhang J, Cunningham JJ, Brown JS, Gatenby RA. Nat Commun 2017;8:1816",
        observed="PSA (model units)",
    ),
}
