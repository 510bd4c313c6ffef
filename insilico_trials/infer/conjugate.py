"""The conjugate layer: mixture priors and their exact posteriors, batched, written once.

Used by the run's analysis (the virtual arm's statistics), by ``update`` (the synthetic control's
prior and its closed-form posterior) and by ``design`` (every replicate's posterior at every
look), so that design computes exactly what the analysis does.

The kernels take sufficient statistics of any shape ``S`` and return the posterior mixture as
arrays of shape ``S + (K,)`` (``K`` components); scalars give ``(K,)``.

* beta (a response rate): ``a_k' = a_k + x``, ``b_k' = b_k + n - x``,
  ``w_k' ∝ w_k B(a_k + x, b_k + n - x) / B(a_k, b_k)`` (the beta-binomial marginal of component
  k; the binomial coefficient cancels);
* normal (a mean, known per-patient sd ``sigma``): with ``se^2 = sigma^2 / n``,
  ``s_k'^2 = 1 / (1 / s_k^2 + 1 / se^2)``, ``m_k' = s_k'^2 (m_k / s_k^2 + ybar / se^2)``,
  ``w_k' ∝ w_k N(ybar; m_k, s_k^2 + se^2)``;
* gamma (a hazard rate per month, exponential likelihood ``lambda^d exp(-lambda E)``, E in
  months): ``a_k' = a_k + d``, ``b_k' = b_k + E``,
  ``w_k' ∝ w_k b_k^a_k Γ(a_k + d) / (Γ(a_k) (b_k + E)^(a_k + d))``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import special, stats

from insilico_trials.units import DAYS_PER_MONTH

__all__ = [
    "VAGUE_BETA",
    "VAGUE_GAMMA",
    "VAGUE_NORMAL",
    "MixturePrior",
    "arm_statistics",
    "beta_mixture_posterior",
    "gamma_mixture_posterior",
    "mixture_component_weights",
    "normal_mixture_posterior",
    "sufficient_stats",
]

# Vague defaults, stated once.
VAGUE_BETA = (1.0, 1.0)
VAGUE_NORMAL = (0.0, 1000.0)  # mean, sd (units of the endpoint's value)
VAGUE_GAMMA = (1.0, 0.01)  # shape (events), rate (months of exposure): ~1 event, 0.01 month


@dataclass(frozen=True)
class MixturePrior:
    """A prior on one control-arm parameter: a finite mixture of conjugate components.

    ``pi(theta) = sum_k weights[k] f(theta | a[k], b[k])`` with ``f`` by ``family``:

    * ``"beta"``: Beta(a, b) on a response rate (binary endpoint);
    * ``"normal"``: Normal(mean=a, sd=b) on a mean (continuous endpoint, units of ``value``);
    * ``"gamma"``: Gamma(shape=a, rate=b) on a hazard rate (per month; TTE endpoints).

    ``labels`` names the components (e.g. ``("informative", "vague")`` for a robust prior).
    """

    family: Literal["beta", "normal", "gamma"]
    weights: tuple[float, ...]
    a: tuple[float, ...]
    b: tuple[float, ...]
    labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.family not in ("beta", "normal", "gamma"):
            raise ValueError(
                f"MixturePrior.family: must be beta, normal or gamma, got {self.family!r}"
            )
        k = len(self.weights)
        if k == 0 or len(self.a) != k or len(self.b) != k:
            raise ValueError(
                f"MixturePrior: weights, a, b must have the same length >= 1, got "
                f"{len(self.weights)}, {len(self.a)}, {len(self.b)}"
            )
        w = np.asarray(self.weights, dtype=float)
        if (w < 0).any() or not math.isclose(float(w.sum()), 1.0, abs_tol=1e-9):
            raise ValueError(f"MixturePrior.weights: must be >= 0 and sum to 1, got {self.weights}")
        if self.family == "normal":
            if any(s <= 0 for s in self.b):
                raise ValueError(f"MixturePrior.b (normal sd): must be > 0, got {self.b}")
        elif any(x <= 0 for x in (*self.a, *self.b)):
            raise ValueError(
                f"MixturePrior.a, b ({self.family}): must be > 0, got {self.a}, {self.b}"
            )
        if self.labels is not None and len(self.labels) != k:
            raise ValueError(f"MixturePrior.labels: need {k} labels, got {self.labels}")

    @property
    def n_components(self) -> int:
        return len(self.weights)

    @classmethod
    def single(cls, family: Literal["beta", "normal", "gamma"], a: float, b: float) -> MixturePrior:
        """A one-component prior."""
        return cls(family, (1.0,), (float(a),), (float(b),))

    def logpdf(self, theta: np.ndarray) -> np.ndarray:
        """Log density of each component at ``theta``: array (len(theta), K), weights included."""
        theta = np.asarray(theta, dtype=float)[..., None]
        a, b = np.asarray(self.a), np.asarray(self.b)
        if self.family == "beta":
            lp = stats.beta.logpdf(theta, a, b)
        elif self.family == "normal":
            lp = stats.norm.logpdf(theta, a, b)
        else:
            lp = stats.gamma.logpdf(theta, a, scale=1.0 / b)
        with np.errstate(divide="ignore"):
            return lp + np.log(np.asarray(self.weights))

    def mean(self) -> float:
        a, b, w = np.asarray(self.a), np.asarray(self.b), np.asarray(self.weights)
        m = a / (a + b) if self.family == "beta" else (a if self.family == "normal" else a / b)
        return float(w @ m)

    def var(self) -> float:
        """Variance of the mixture (law of total variance)."""
        a, b, w = np.asarray(self.a), np.asarray(self.b), np.asarray(self.weights)
        if self.family == "beta":
            m = a / (a + b)
            v = a * b / ((a + b) ** 2 * (a + b + 1))
        elif self.family == "normal":
            m, v = a, b**2
        else:
            m, v = a / b, a / b**2
        mu = float(w @ m)
        return float(w @ (v + m**2) - mu**2)


def mixture_component_weights(prior: MixturePrior, draws: np.ndarray) -> np.ndarray:
    """Posterior weight of each prior component, estimated from posterior draws of theta.

    ``P(component k | data) = E_post[ w_k f_k(theta) / sum_j w_j f_j(theta) ]``: given theta
    the component label is independent of the data, so averaging the conditional component
    probabilities over posterior draws (Rao-Blackwellisation) is unbiased.
    """
    lp = prior.logpdf(np.ravel(draws))
    return np.exp(lp - special.logsumexp(lp, axis=1, keepdims=True)).mean(axis=0)


# --------------------------------------------------------------------------- batched kernels


def _normalised(logm: np.ndarray) -> np.ndarray:
    return np.exp(logm - special.logsumexp(logm, axis=-1, keepdims=True))


def beta_mixture_posterior(
    weights: Any, a: Any, b: Any, successes: Any, n: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Posterior of a beta-mixture prior after ``successes`` of ``n`` Bernoulli trials.

    ``successes`` and ``n`` broadcast together (shape ``S``); returns ``(weights, a, b)`` of
    shape ``S + (K,)``.
    """
    w, a, b = (np.asarray(v, dtype=float) for v in (weights, a, b))
    x = np.asarray(successes, dtype=float)[..., None]
    n = np.asarray(n, dtype=float)[..., None]
    with np.errstate(divide="ignore"):
        logm = np.log(w) + special.betaln(a + x, b + n - x) - special.betaln(a, b)
    return _normalised(logm), a + x, b + n - x


def normal_mixture_posterior(
    weights: Any, means: Any, sds: Any, ybar: Any, n: Any, *, sigma: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Posterior of a normal-mixture prior on a mean after ``n`` observations with mean
    ``ybar`` (known per-patient ``sigma``); shapes as :func:`beta_mixture_posterior`."""
    w, m, s = (np.asarray(v, dtype=float) for v in (weights, means, sds))
    ybar = np.asarray(ybar, dtype=float)[..., None]
    se2 = sigma**2 / np.asarray(n, dtype=float)[..., None]
    v_post = 1.0 / (1.0 / s**2 + 1.0 / se2)
    m_post = v_post * (m / s**2 + ybar / se2)
    with np.errstate(divide="ignore"):
        logm = np.log(w) + stats.norm.logpdf(ybar, m, np.sqrt(s**2 + se2))
    wp = _normalised(logm)
    return wp, m_post, np.broadcast_to(np.sqrt(v_post), m_post.shape)


def gamma_mixture_posterior(
    weights: Any, shape: Any, rate: Any, events: Any, exposure: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Posterior of a gamma-mixture prior on a hazard rate after ``events`` in ``exposure``
    months; shapes as :func:`beta_mixture_posterior`."""
    w, a, b = (np.asarray(v, dtype=float) for v in (weights, shape, rate))
    d = np.asarray(events, dtype=float)[..., None]
    e = np.asarray(exposure, dtype=float)[..., None]
    with np.errstate(divide="ignore"):
        logm = (
            np.log(w)
            + a * np.log(b)
            + special.gammaln(a + d)
            - special.gammaln(a)
            - (a + d) * np.log(b + e)
        )
    return _normalised(logm), a + d, b + e


# --------------------------------------------------------------------------- arm statistics


def arm_statistics(data: pd.DataFrame, kind: str) -> dict[str, Any]:
    """What an arm's patients tell about its parameter: the one definition of an arm's
    sufficient statistics, archived as ``synthetic_control.json`` for the virtual control.

    binary: ``n``, ``responders`` (of column ``response``); continuous: ``n``, ``mean``, ``sd``
    (of ``value``; NaN when undefined); tte: ``n``, ``events`` (of ``event``),
    ``exposure_days`` (sum of ``time`` in days).
    """
    out: dict[str, Any] = {"n": len(data)}
    if kind == "binary":
        out["responders"] = int(data["response"].sum())
    elif kind == "continuous":
        out["mean"] = float(data["value"].mean())
        out["sd"] = float(data["value"].std(ddof=1))
    elif kind == "tte":
        out["events"] = int(data["event"].sum())
        out["exposure_days"] = float(data["time"].sum())
    else:
        raise ValueError(f"kind: must be binary, continuous or tte, got {kind!r}")
    return out


def sufficient_stats(data: pd.DataFrame | Mapping[str, Any], kind: str) -> dict[str, float]:
    """The conjugate updates' statistics of an arm, from its patients or from its
    :func:`arm_statistics` (as archived).

    binary: ``x`` (responders), ``n``; continuous: ``ybar``, ``n``, ``sd``; tte: ``d``
    (events), ``exposure`` (months: days / 30.4375), ``n``.
    """
    s = arm_statistics(data, kind) if isinstance(data, pd.DataFrame) else dict(data)
    n = float(s["n"])
    if kind == "binary":
        return {"x": float(s["responders"]), "n": n}
    if kind == "continuous":
        mean = float(s["mean"])
        return {"ybar": mean if n else 0.0, "n": n, "sd": float(s["sd"]) if n > 1 else math.nan}
    if kind == "tte":
        return {"d": float(s["events"]), "exposure": float(s["exposure_days"]) / DAYS_PER_MONTH,
                "n": n}  # fmt: skip
    raise ValueError(f"kind: must be binary, continuous or tte, got {kind!r}")
