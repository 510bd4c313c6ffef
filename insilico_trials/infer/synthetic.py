"""The synthetic control's prior: from replicate virtual control arms to the prior of the real
control parameter, with its information bounded by the model's uncertainty. One definition,
used by ``run`` (its analysis), ``design`` (every replicate's analysis) and ``update`` (the
real data cuts), so the three evaluate the same prior.

The rule, in order (protocol section ``synthetic_control``):

1. **Replicate virtual arms.** The control arm is simulated ``R = virtual_replicates`` times,
   each with its own draw of the population-level parameters (typical values with their
   ``uncertainty_rse``), so replicate arms differ by the model's uncertainty plus sampling
   noise (:class:`VirtualArms`, built by :mod:`insilico_trials.run.virtual`).
2. **Informative prior.** ``prior: map``: the meta-analytic-predictive prior of a new arm
   given the R replicate arms (:func:`insilico_trials.infer.map_prior.map_prior`,
   between-replicate sd ``tau ~ HalfNormal(between_replicate_sd)`` on the link scale),
   approximated by a mixture. As the arms grow, each replicate's parameter is known exactly
   and the MAP tends to the predictive distribution of the parameter across replicates, whose
   spread is the model's uncertainty: its information stops growing. ``prior: pooled``: the
   power prior of all virtual patients pooled (grows with their number).
3. **Power weight.** ``power`` tempers the informative prior by ``a0``
   (:func:`temper`; ``robust_mixture`` by ``a0`` when given, else 1; ``full`` by 1).
4. **Cap.** If the informative prior's ESS (by ``ess_method``) exceeds ``max_virtual_patients``
   (default: the planned number of real control patients), it is tempered further until its
   ESS equals the cap (bisection on the tempering factor).
5. **Robustification** (``robust_mixture``): a unit-information vague component of weight
   ``vague_weight`` (:func:`insilico_trials.infer.borrowing.robustify`).

Tempering by ``c`` in (0, 1] is the power prior relative to the vague base prior ``pi_0``
(Beta(1, 1); Normal(0, 1000); Gamma(1, 0.01)) applied to each component:
``Beta(1 + c (a - 1), 1 + c (b - 1))``; normal precision ``1/1000^2 + c (1/s^2 - 1/1000^2)``;
``Gamma(1 + c (a - 1), 0.01 + c (b - 0.01))``. On a pooled power prior it is exactly the power
prior with ``a0 = c``; on a mixture it scales each component's information.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from insilico_trials.errors import InputError
from insilico_trials.infer.conjugate import (
    VAGUE_BETA,
    VAGUE_GAMMA,
    VAGUE_NORMAL,
    MixturePrior,
    sufficient_stats,
)
from insilico_trials.infer.ess import ESS_METHODS, ess
from insilico_trials.spec.catalog import CONJUGATE_OF_KIND

__all__ = [
    "BORROWING_OF_METHOD",
    "VirtualArms",
    "VirtualPrior",
    "cap_information",
    "pooled_statistics",
    "prior_ess",
    "prognostic_covariates",
    "protocol_prior",
    "temper",
    "virtual_cap",
    "virtual_prior",
]

# protocol synthetic_control.method -> borrowing.py method name
BORROWING_OF_METHOD = {
    "none": "none", "full": "full", "power": "power", "robust_mixture": "robust",
    "commensurate": "commensurate", "procova": "procova", "procova_bayes": "procova_bayes",
}  # fmt: skip


@dataclass(frozen=True)
class VirtualArms:
    """The replicate virtual control arms: per replicate, the arm's statistics as
    :func:`insilico_trials.infer.conjugate.arm_statistics` gives them (binary ``n``,
    ``responders``; continuous ``n``, ``mean``, ``sd``; tte ``n``, ``events``,
    ``exposure_days``). ``replicates[0]`` is replicate 1 (replicate 0 is the run's own trial)."""

    kind: str
    replicates: tuple[Mapping[str, float], ...]
    # PROCOVA only: the virtual patients' baseline covariates and outcome (not archived; the
    # prognostic model trained on them is)
    patients: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in CONJUGATE_OF_KIND:
            raise InputError(
                f"VirtualArms.kind: must be binary, continuous or tte, got {self.kind!r}",
                rule="kind", actual=self.kind, expected="binary | continuous | tte",
            )  # fmt: skip
        if len(self.replicates) < 1:
            raise InputError("VirtualArms: need at least one replicate arm", rule="replicates")

    def stats(self) -> list[dict[str, float]]:
        """Sufficient statistics per replicate (:func:`~.conjugate.sufficient_stats`)."""
        return [sufficient_stats(r, self.kind) for r in self.replicates]

    @property
    def n_patients(self) -> int:
        return int(sum(r["n"] for r in self.replicates))

    def sigma(self) -> float | None:
        """Continuous: the pooled within-replicate sd of the virtual patients (the known
        per-patient sd of the conjugate analysis); None otherwise."""
        if self.kind != "continuous":
            return None
        num = sum((r["n"] - 1) * r["sd"] ** 2 for r in self.replicates if r["n"] > 1)
        den = sum(r["n"] - 1 for r in self.replicates if r["n"] > 1)
        return math.sqrt(num / den) if den > 0 else None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "replicates": [dict(r) for r in self.replicates]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VirtualArms:
        return cls(str(data["kind"]), tuple(dict(r) for r in data["replicates"]))


def pooled_statistics(arms: VirtualArms) -> dict[str, float]:
    """All replicate arms pooled into one arm's sufficient statistics."""
    s = arms.stats()
    if arms.kind == "binary":
        return {"x": sum(r["x"] for r in s), "n": sum(r["n"] for r in s)}
    if arms.kind == "continuous":
        n = sum(r["n"] for r in s)
        ybar = sum(r["n"] * r["ybar"] for r in s) / n if n else 0.0
        return {"ybar": ybar, "n": n, "sd": arms.sigma() or math.nan}
    return {
        "d": sum(r["d"] for r in s),
        "exposure": sum(r["exposure"] for r in s),
        "n": sum(r["n"] for r in s),
    }


def _vague(family: str) -> MixturePrior:
    return MixturePrior.single(
        family,  # type: ignore[arg-type]
        *{"beta": VAGUE_BETA, "normal": VAGUE_NORMAL, "gamma": VAGUE_GAMMA}[family],
    )


def _power_prior(kind: str, s: Mapping[str, float], a0: float, sigma: float | None):
    if kind == "binary":
        return MixturePrior.single(
            "beta", VAGUE_BETA[0] + a0 * s["x"], VAGUE_BETA[1] + a0 * (s["n"] - s["x"])
        )
    if kind == "continuous":
        prec = 1.0 / VAGUE_NORMAL[1] ** 2 + a0 * s["n"] / sigma**2
        mean = (VAGUE_NORMAL[0] / VAGUE_NORMAL[1] ** 2 + a0 * s["n"] * s["ybar"] / sigma**2) / prec
        return MixturePrior.single("normal", mean, prec**-0.5)
    return MixturePrior.single(
        "gamma", VAGUE_GAMMA[0] + a0 * s["d"], VAGUE_GAMMA[1] + a0 * s["exposure"]
    )


def temper(prior: MixturePrior, c: float) -> MixturePrior:
    """Scale each component's information by ``c`` in (0, 1] relative to the vague base prior
    (see the module docstring); ``c = 1`` returns ``prior``."""
    if not 0.0 < c <= 1.0:
        raise InputError(f"temper: c must be in (0, 1], got {c!r}", rule="c", actual=c)
    if c == 1.0:
        return prior
    a, b = np.asarray(prior.a), np.asarray(prior.b)
    if prior.family == "beta":
        na = VAGUE_BETA[0] + c * (a - VAGUE_BETA[0])
        nb = VAGUE_BETA[1] + c * (b - VAGUE_BETA[1])
        # a component below the base (a < 1) keeps a positive parameter: 1 + c (a - 1) > 1 - c
    elif prior.family == "normal":
        p0 = 1.0 / VAGUE_NORMAL[1] ** 2
        na = a
        nb = (p0 + c * (1.0 / b**2 - p0)) ** -0.5
    else:
        na = VAGUE_GAMMA[0] + c * (a - VAGUE_GAMMA[0])
        nb = np.maximum(VAGUE_GAMMA[1] + c * (b - VAGUE_GAMMA[1]), 1e-12)
    return MixturePrior(
        prior.family, prior.weights, tuple(map(float, na)), tuple(map(float, nb)), prior.labels
    )


def cap_information(
    prior: MixturePrior, cap: float, *, method: str = "elir", sigma: float | None = None
) -> tuple[MixturePrior, float, float]:
    """Temper ``prior`` until its ESS (by ``method``) is at most ``cap``.

    Returns ``(capped prior, factor c, ESS before capping)``; ``c = 1`` when the prior is
    already within the cap. The factor is found by Brent's method (relative tolerance 1e-13 on
    ``c``); the ESS of the result equals the cap to about 1e-9 relative.
    """

    def size(p: MixturePrior) -> float:
        v = prior_ess(p, method, sigma)
        return v if v == v else prior_ess(p, "moment", sigma)  # moment where ELIR is undefined

    before = size(prior)
    if before <= cap:
        return prior, 1.0, before
    from scipy.optimize import brentq

    # The ESS of the tempered prior rises from the base's (about 0) at c -> 0 to ``before``
    # at c = 1: Brent's method finds the c where it crosses the cap (about 10 evaluations).
    c = brentq(lambda c: size(temper(prior, c)) - cap, 1e-12, 1.0, xtol=1e-15, rtol=1e-13)
    return temper(prior, c), c, before


@dataclass(frozen=True)
class VirtualPrior:
    """The prior of the real control parameter implied by the virtual arms, and how it was made.

    ``prior`` is the full prior (None for ``commensurate``, which is fitted jointly);
    ``informative`` its informative part after ``a0`` and the cap; ``pseudo`` the virtual
    information as pseudo-data (the informative part's mean and moment ESS) for the
    commensurate model; ``ess`` the ESS of ``prior`` by every method (``ess_method`` is the one
    reported as "prior ESS"); ``uncapped_ess`` and ``cap_factor`` say what the cap did.
    """

    method: str
    rule: str
    kind: str
    prior: MixturePrior | None
    informative: MixturePrior | None
    a0: float
    vague_weight: float | None
    cap: float
    cap_factor: float
    uncapped_ess: float
    ess: Mapping[str, float]
    ess_method: str
    sigma: float | None
    pseudo: Mapping[str, float] = field(default_factory=dict)
    map_quality: Mapping[str, Any] = field(default_factory=dict)
    n_virtual: int = 0
    n_replicates: int = 0
    between_replicate_sd: float | None = None

    @property
    def prior_ess(self) -> float:
        return float(self.ess.get(self.ess_method, math.nan))

    def to_json(self) -> dict[str, Any]:
        def mix(p: MixturePrior | None) -> dict[str, Any] | None:
            if p is None:
                return None
            return {"family": p.family, "weights": list(p.weights), "a": list(p.a),
                    "b": list(p.b), "labels": list(p.labels) if p.labels else None}  # fmt: skip

        return {
            "method": self.method, "rule": self.rule, "kind": self.kind,
            "prior": mix(self.prior), "informative": mix(self.informative), "a0": self.a0,
            "vague_weight": self.vague_weight, "cap": self.cap, "cap_factor": self.cap_factor,
            "uncapped_ess": self.uncapped_ess, "ess": dict(self.ess),
            "ess_method": self.ess_method, "prior_ess": self.prior_ess, "sigma": self.sigma,
            "pseudo": dict(self.pseudo), "map_quality": dict(self.map_quality),
            "n_virtual": self.n_virtual, "n_replicates": self.n_replicates,
            "between_replicate_sd": self.between_replicate_sd,
        }  # fmt: skip

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> VirtualPrior:
        def mix(m: Mapping[str, Any] | None) -> MixturePrior | None:
            if m is None:
                return None
            return MixturePrior(m["family"], tuple(m["weights"]), tuple(m["a"]), tuple(m["b"]),
                                tuple(m["labels"]) if m.get("labels") else None)  # fmt: skip

        return cls(
            method=d["method"], rule=d["rule"], kind=d["kind"], prior=mix(d["prior"]),
            informative=mix(d["informative"]), a0=float(d["a0"]),
            vague_weight=d.get("vague_weight"), cap=float(d["cap"]),
            cap_factor=float(d["cap_factor"]), uncapped_ess=float(d["uncapped_ess"]),
            ess=dict(d["ess"]), ess_method=d["ess_method"], sigma=d.get("sigma"),
            pseudo=dict(d.get("pseudo") or {}), map_quality=dict(d.get("map_quality") or {}),
            n_virtual=int(d.get("n_virtual", 0)), n_replicates=int(d.get("n_replicates", 0)),
            between_replicate_sd=d.get("between_replicate_sd"),
        )  # fmt: skip


def _pseudo(prior: MixturePrior, kind: str, sigma: float | None) -> dict[str, float]:
    """The informative prior as pseudo-data with its mean and moment ESS."""
    m, v = prior.mean(), prior.var()
    if kind == "binary":
        n = max(m * (1.0 - m) / v - 1.0, 0.0)
        return {"x": m * n, "n": n}
    if kind == "continuous":
        return {"ybar": m, "n": sigma**2 / v, "sd": sigma}
    d = m**2 / v
    return {"d": d, "exposure": d / m}


def virtual_prior(arms: VirtualArms, **kwargs: Any) -> VirtualPrior:
    """The synthetic control's prior from the replicate virtual arms (module docstring); see
    :func:`_virtual_prior` for the arguments.

    Computed with one BLAS thread: a matrix-vector product summed by 1 or 2 threads differs in
    the last bits (measured: the MAP mixture's weights differed at 1e-10 between a process
    with ``OMP_NUM_THREADS=1``, like a Dask worker, and one without), and the prior must be the
    same bits in run, design, update and rerun wherever they execute.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _virtual_prior(arms, **kwargs)


def _virtual_prior(
    arms: VirtualArms,
    *,
    method: str,
    rule: str = "map",
    a0: float | None = None,
    vague_weight: float | None = None,
    max_virtual_patients: float,
    between_replicate_sd: float | None = None,
    ess_method: str = "elir",
    sigma: float | None = None,
    seed: int = 0,
) -> VirtualPrior:
    """The synthetic control's prior from the replicate virtual arms (module docstring).

    Parameters
    ----------
    arms : VirtualArms
        The replicate virtual control arms.
    method : {"none", "full", "power", "robust_mixture", "commensurate", "procova",
              "procova_bayes"}
        The protocol's ``synthetic_control.method``.
    rule : {"map", "pooled"}
    a0 : float, optional
        Power weight (``power``: required; ``robust_mixture``: default 1).
    vague_weight : float, optional
        Weight of the robust component (``robust_mixture``: required).
    max_virtual_patients : float
        Cap on the informative prior's ESS, in patients (events for tte).
    between_replicate_sd : float, optional
        MAP: HalfNormal scale of the between-replicate sd on the link scale; default 1 (logit),
        0.5 (log hazard), ``sigma / 2`` (mean), as RBesT's documentation suggests.
    ess_method : {"elir", "moment", "morita"}
    sigma : float, optional
        Continuous: the known per-patient sd; default the virtual arms' pooled sd.
    seed : int
        Seed of the MAP fit (the quadrature engine is deterministic).
    """
    if method not in BORROWING_OF_METHOD:
        raise InputError(
            f"synthetic_control.method: must be one of {', '.join(BORROWING_OF_METHOD)}, "
            f"got {method!r}", rule="method", actual=method,
        )  # fmt: skip
    if rule not in ("map", "pooled"):
        raise InputError(f"synthetic_control.prior: must be map or pooled, got {rule!r}")
    if ess_method not in ESS_METHODS:
        raise InputError(f"synthetic_control.ess_method: must be one of {ESS_METHODS}")
    if method == "power" and a0 is None:
        raise InputError(
            "synthetic_control.a0: method power needs a0 (without it the power prior would "
            "silently be full borrowing)", rule="a0", actual=None, expected="0 <= a0 <= 1",
        )  # fmt: skip
    if method == "robust_mixture" and vague_weight is None:
        raise InputError("synthetic_control.vague_weight: method robust_mixture needs it")
    kind = arms.kind
    family = CONJUGATE_OF_KIND[kind]
    sigma = sigma if sigma is not None else arms.sigma()
    if kind == "continuous" and not (sigma and sigma > 0):
        raise InputError("virtual arms: the continuous endpoint needs a per-patient sd > 0")
    weight = 1.0 if method == "full" else (a0 if a0 is not None else 1.0)
    common = {"method": method, "rule": rule, "kind": kind, "a0": weight,
              "vague_weight": vague_weight, "cap": float(max_virtual_patients),
              "ess_method": ess_method, "sigma": sigma, "n_virtual": arms.n_patients,
              "n_replicates": len(arms.replicates)}  # fmt: skip
    if method in ("none", "procova", "procova_bayes"):
        vague = _vague(family)
        return VirtualPrior(
            prior=vague, informative=None, cap_factor=1.0, uncapped_ess=0.0,
            ess=_all_ess(vague, sigma), **common,
        )  # fmt: skip
    quality: dict[str, Any] = {}
    if rule == "pooled":
        informative = _power_prior(kind, pooled_statistics(arms), weight, sigma)
    else:
        from insilico_trials.infer.map_prior import map_prior

        if between_replicate_sd is None:
            between_replicate_sd = {"beta": 1.0, "gamma": 0.5}.get(family) or sigma / 2.0
        fit = map_prior(
            arms.stats(), family=family, tau_prior_sd=between_replicate_sd, sigma=sigma,
            engine="quadrature", seed=seed,
        )  # fmt: skip
        informative = temper(fit.prior, weight) if weight < 1.0 else fit.prior
        quality = dict(fit.fit_quality)
        common["between_replicate_sd"] = between_replicate_sd
    informative, factor, before = cap_information(
        informative, float(max_virtual_patients), method=ess_method, sigma=sigma
    )
    if method == "robust_mixture":
        from insilico_trials.infer.borrowing import robustify

        prior: MixturePrior | None = robustify(informative, weight=float(vague_weight), sigma=sigma)
    elif method == "commensurate":
        prior = None
    else:
        prior = informative
    return VirtualPrior(
        prior=prior, informative=informative, cap_factor=factor, uncapped_ess=before,
        ess=_all_ess(prior if prior is not None else informative, sigma),
        pseudo=_pseudo(informative, kind, sigma), map_quality=quality, **common,
    )  # fmt: skip


def prior_ess(prior: MixturePrior, method: str, sigma: float | None) -> float:
    """ESS of ``prior`` by ``method``; NaN where it is undefined (ELIR of a beta component
    with a parameter below 1 diverges). Morita's warning on multimodal priors (every robust
    prior has a second mode) is expected here and not repeated."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            return float(ess(prior, method=method, sigma=sigma))  # type: ignore[arg-type]
        except InputError:
            return math.nan


def _all_ess(prior: MixturePrior, sigma: float | None) -> dict[str, float]:
    return {m: prior_ess(prior, m, sigma) for m in ESS_METHODS}


def replicate_statistics(parts: Sequence[Mapping[str, float]], kind: str) -> dict[str, float]:
    """Merge a replicate's chunk partial sums into its arm statistics (binary ``n``,
    ``responders``; continuous ``n``, ``sum``, ``sumsq`` -> ``n``, ``mean``, ``sd``; tte ``n``,
    ``events``, ``exposure_days``)."""
    tot: dict[str, float] = {}
    for p in parts:
        for k, v in p.items():
            tot[k] = tot.get(k, 0.0) + float(v)
    n = tot.get("n", 0.0)
    if kind == "binary":
        return {"n": int(n), "responders": int(tot.get("responders", 0.0))}
    if kind == "continuous":
        mean = tot["sum"] / n if n else math.nan
        var = (tot["sumsq"] - n * mean**2) / (n - 1) if n > 1 else math.nan
        return {"n": int(n), "mean": mean, "sd": math.sqrt(max(var, 0.0))}
    return {"n": int(n), "events": int(tot.get("events", 0.0)),
            "exposure_days": tot.get("exposure_days", 0.0)}  # fmt: skip


def virtual_cap(protocol: Any) -> int:
    """The cap on the prior's ESS: ``max_virtual_patients``, default the planned number of
    real control patients (the prior may not be worth more patients than the trial enrols in
    its control arm unless the protocol says so)."""
    return protocol.synthetic_control.max_virtual_patients or protocol.control_arm.n


def protocol_prior(protocol: Any, arms: VirtualArms, *, method: str | None = None) -> VirtualPrior:
    """The protocol's synthetic-control prior from its virtual arms: :func:`virtual_prior`
    with the protocol's ``synthetic_control`` settings (``method`` overrides the protocol's,
    for design's comparison of borrowing methods). ``run``, ``design`` and ``update`` all
    take their prior from here."""
    sc = protocol.synthetic_control
    return virtual_prior(
        arms,
        method=method or sc.method,
        rule=sc.prior,
        a0=sc.a0,
        vague_weight=sc.vague_weight,
        max_virtual_patients=virtual_cap(protocol),
        between_replicate_sd=sc.between_replicate_sd,
        ess_method=sc.ess_method,
        seed=int(protocol.seed) % 2**32,
    )


def prognostic_covariates(protocol: Any) -> list[str]:
    """Baseline covariates of PROCOVA's prognostic model: the population's numeric covariates,
    its derived covariates and the endpoint's baseline value (categorical covariates are left
    out: the linear model takes numbers)."""
    pop = protocol.population
    names = [k for k, c in pop.covariates.items() if c.distribution != "categorical"]
    names += [d if isinstance(d, str) else d.name for d in (pop.derived or [])]
    return [*dict.fromkeys(names), "baseline"]
