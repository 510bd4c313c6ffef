"""Synthetic control arm: priors from the simulated (virtual) control arm and their updates.

The virtual control arm is summarised by its sufficient statistics for the control parameter
``theta``: binary ``(x_v successes of n_v)`` for a response rate; continuous ``(ybar_v, n_v)``
with residual sd ``sigma`` for a mean; time to event ``(d_v events, E_v months of exposure)``
for a constant (exponential) hazard rate. The borrowing methods (``method=``):

``none``
    vague prior, no borrowing: Beta(1, 1); Normal(0, 1000); Gamma(1, 0.01).
``full``
    full pooling: the power prior with ``a0 = 1`` (virtual patients count as real ones).
``power``
    fixed power prior ``pi(theta | D_v, a0) ∝ L(theta | D_v)^a0 pi_0(theta)``, ``0 <= a0 <= 1``
    (Ibrahim & Chen 2000), conjugate: Beta(1 + a0 x_v, 1 + a0 (n_v - x_v));
    Normal with precision ``1/1000^2 + a0 n_v / sigma^2`` and mean
    ``(a0 n_v ybar_v / sigma^2) / precision``; Gamma(1 + a0 d_v, 0.01 + a0 E_v).
``robust``
    robust mixture prior (Schmidli et al. 2014; RBesT ``robustify``):
    ``(1 - w) pi_power(theta) + w pi_vague(theta)`` with the vague component a unit-information
    prior: Beta(m (n + 1), (1 - m)(n + 1)) (n = 1, m = 1/2 gives Beta(1, 1), as RBesT);
    Normal(m, sigma / sqrt(n)); Gamma(n, n / m) (n events at rate m, unit-free). The posterior is again a mixture with
    weights ``∝ w_k m_k(data)`` (the prior predictive of each component), so the posterior
    weight of the vague component measures prior-data conflict.
``commensurate``
    commensurate prior (Hobbs et al. 2011): on the link scale ``phi = logit p``, ``mu`` or
    ``log lambda``, ``phi_c ~ Normal(phi_v, s)`` with ``phi_v`` informed by the virtual data
    and the commensurability sd ``s ~ HalfNormal(sd_scale)`` (default 0.5: logits a priori
    within about +-1 of the virtual one; a small scale borrows strongly, a large one weakly).
    Non-centred (``phi_c = phi_v + s z``, ``z ~ N(0, 1)``) and fitted jointly by MCMC on
    virtual and real sufficient statistics. (Earlier versions put a Gamma(1, 0.01) prior on
    the precision and called its mean ``tau_scale``: that is a median sd of 0.12 on the logit
    scale, i.e. strong borrowing, the opposite of what the name suggested.)
``procova``
    the EMA-qualified PROCOVA is an ANCOVA of the randomised contrast with a prognostic score
    (:mod:`insilico_trials.infer.procova`); it needs both arms, so the control-arm update
    treats the control parameter as ``none`` (vague) and the ANCOVA is computed where both arms
    are analysed (``run``'s ``procova.json``).
``procova_bayes``
    a Bayesian variant (not the qualified method; named as such): a prognostic score
    per real patient (column ``prognostic_score``, predicted by the digital-twin model trained
    on the virtual arm) enters the outcome model as a covariate; the control parameter keeps a
    vague prior. Continuous endpoint only. The virtual arm contributes through variance
    reduction ``1 - rho^2`` (rho: correlation of score and outcome), i.e. an ANCOVA with the
    score is worth ``n / (1 - rho^2)`` unadjusted patients.

Engines (``engine=`` of :func:`update_control`): the closed form wherever one exists
(``closed_form``: methods none, full, power, robust and procova on a binary or TTE endpoint, or a
continuous one with ``sigma`` known), i.e. the exact conjugate mixture update
(:func:`mixture_posterior`; Schmidli et al. 2014, RBesT ``postmix``) with its exact mean, sd,
2.5 % and 97.5 % quantiles and component weights; MCMC (``mcmc``: PyMC/nutpie NUTS) for the
rest (commensurate, procova_bayes, continuous with sigma estimated). ``auto`` (the default)
takes the closed form when there is one.

Reported per update:

* ``prior_ess``: effective sample size of the prior, by moment matching (RBesT ``method =
  "moment"``): the mixture's mean ``m`` and variance ``v`` are matched to one conjugate
  component, whose size is the ESS: beta ``a + b = m (1 - m) / v - 1`` patients; normal
  ``sigma^2 / v`` patients; gamma ``a = m^2 / v`` events.
* ``borrowed_virtual``: effective number of virtual patients (events for TTE) borrowed, as the
  effective historical sample size of Hobbs et al. (2013):
  ``n_real (Var_vague / Var_borrow - 1)``, the posterior variance of theta with a vague
  prior over that with borrowing, times the real sample size (for PROCOVA
  ``n_real rho^2 / (1 - rho^2)``).
* ``conflict``: posterior weight of the vague component (robust prior) and the two-sided prior
  predictive p-value of the real data under the informative prior
  (``2 min(P(T <= t_obs), P(T >= t_obs))`` with T the successes, the mean, or the events given
  the exposure).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import special, stats

from insilico_trials.errors import InputError
from insilico_trials.infer.conjugate import (
    VAGUE_BETA,
    VAGUE_GAMMA,
    VAGUE_NORMAL,
    MixturePrior,
    beta_mixture_posterior,
    gamma_mixture_posterior,
    normal_mixture_posterior,
    sufficient_stats,
)
from insilico_trials.infer.outcomes import ConvergenceGates, OutcomeFit, fit_outcome
from insilico_trials.infer.synthetic import VirtualPrior, prior_ess
from insilico_trials.spec.catalog import CONJUGATE_OF_KIND, UPDATE_MODEL_OF_KIND

__all__ = [
    "ENGINES",
    "METHODS",
    "BorrowingError",
    "UpdateResult",
    "UpdateState",
    "beta_mixture_posterior",
    "closed_form_refusal",
    "control_prior",
    "ess_beta_mixture",
    "ess_mixture",
    "gamma_mixture_posterior",
    "mixture_posterior",
    "mixture_quantile",
    "mixture_summary",
    "normal_mixture_posterior",
    "prior_predictive_pvalue",
    "resolve_engine",
    "robustify",
    "sufficient_stats",
    "update_control",
]

METHODS = ("none", "full", "power", "robust", "commensurate", "procova", "procova_bayes")
ENGINES = ("auto", "closed_form", "mcmc")
Endpoint = Literal["binary", "continuous", "tte"]
FAMILY = CONJUGATE_OF_KIND  # kind of data -> conjugate family of the control parameter


class BorrowingError(InputError):
    """Bad borrowing request: names the argument, the value and what is allowed."""


# --------------------------------------------------------------------------- closed forms


def mixture_posterior(
    prior: MixturePrior, stats_: Mapping[str, float], *, sigma: float | None = None
) -> MixturePrior:
    """Conjugate update of a :class:`MixturePrior` with sufficient statistics.

    ``stats_``: ``{"x", "n"}`` (beta), ``{"ybar", "n"}`` (normal, needs ``sigma``),
    ``{"d", "exposure"}`` (gamma; exposure in months). Labels are kept.
    """
    if prior.family == "beta":
        w, a, b = beta_mixture_posterior(prior.weights, prior.a, prior.b, stats_["x"], stats_["n"])
    elif prior.family == "normal":
        if sigma is None:
            raise BorrowingError("sigma: the normal conjugate update needs a known sigma")
        if stats_["n"] == 0:
            return prior
        w, a, b = normal_mixture_posterior(
            prior.weights, prior.a, prior.b, stats_["ybar"], stats_["n"], sigma=sigma
        )
    else:
        w, a, b = gamma_mixture_posterior(
            prior.weights, prior.a, prior.b, stats_["d"], stats_["exposure"]
        )
    w = w / w.sum()
    return MixturePrior(prior.family, tuple(w), tuple(a), tuple(b), prior.labels)


def robustify(
    prior: MixturePrior,
    *,
    weight: float,
    mean: float | None = None,
    n: float = 1.0,
    sigma: float | None = None,
) -> MixturePrior:
    """Add a vague unit-information component of weight ``weight`` (as RBesT's ``robustify``).

    The existing weights are scaled by ``1 - weight``. The vague component, labelled
    ``"vague"``, represents ``n`` observations at ``mean``:

    * beta: Beta(mean (n + 1), (1 - mean)(n + 1)); default mean 1/2, so Beta(1, 1);
    * normal: Normal(mean, sigma / sqrt(n)); needs ``sigma``; default mean the prior's mean;
    * gamma (hazard rate, exponential likelihood): Gamma(n, n / mean), i.e. ``n`` events
      (default one) at the prior's mean rate, as RBesT's ``robustify`` for an exponential
      likelihood (``mn2gamma(m, n, likelihood = "exp")``). Unit-free: expressing time in other
      units rescales the rate and leaves the component's information (one event) unchanged.
    """
    if not 0.0 < weight < 1.0:
        raise BorrowingError(f"robust weight: must be in (0, 1), got {weight!r}")
    if prior.family == "beta":
        m = 0.5 if mean is None else float(mean)
        if not 0.0 < m < 1.0:
            raise BorrowingError(f"robust mean (beta): must be in (0, 1), got {m!r}")
        comp = (m * (n + 1.0), (1.0 - m) * (n + 1.0))
    elif prior.family == "normal":
        if sigma is None or not sigma > 0:
            raise BorrowingError(f"robustify (normal): sigma must be > 0, got {sigma!r}")
        m = prior.mean() if mean is None else float(mean)
        comp = (m, sigma / math.sqrt(n))
    else:
        m = prior.mean() if mean is None else float(mean)
        if not m > 0:
            raise BorrowingError(f"robust mean (gamma): must be > 0, got {m!r}")
        comp = (float(n), float(n) / m)
    labels = prior.labels or (
        ("informative",)
        if prior.n_components == 1
        else tuple(f"informative_{i}" for i in range(prior.n_components))
    )
    return MixturePrior(
        prior.family,
        (*(float(x) * (1.0 - weight) for x in prior.weights), float(weight)),
        (*prior.a, comp[0]),
        (*prior.b, comp[1]),
        (*labels, "vague"),
    )


def ess_mixture(prior: MixturePrior, *, sigma: float | None = None) -> float:
    """Moment-matching effective sample size of a mixture prior (RBesT ``ess(method="moment")``):
    :func:`insilico_trials.infer.ess.ess_moment` (beta ``m (1 - m) / v - 1`` patients; normal
    ``sigma^2 / v`` patients; gamma ``m^2 / v`` events)."""
    from insilico_trials.infer.ess import ess_moment

    if prior.family == "normal" and sigma is None:
        raise BorrowingError("ess (normal): needs the per-patient sd sigma")
    return ess_moment(prior, sigma=sigma)


def ess_beta_mixture(weights: Sequence[float], a: Sequence[float], b: Sequence[float]) -> float:
    """Moment-matching ESS of a beta mixture (patients): see :func:`ess_mixture`."""
    return ess_mixture(MixturePrior("beta", tuple(weights), tuple(a), tuple(b)))


def prior_predictive_pvalue(
    prior: MixturePrior, stats_: Mapping[str, float], *, sigma: float | None = None
) -> float:
    """Two-sided prior predictive p-value of the real data, ``2 min(P(T <= t), P(T >= t))``.

    T: successes in n (beta-binomial mixture), the sample mean (normal mixture with variance
    ``s_k^2 + sigma^2 / n``), or the events given the exposure (gamma-Poisson, i.e. negative
    binomial mixture). Small values flag prior-data conflict (Box 1980).
    """
    w = np.asarray(prior.weights)
    a, b = np.asarray(prior.a), np.asarray(prior.b)
    if prior.family == "beta":
        x, n = int(stats_["x"]), int(stats_["n"])
        lo = w @ stats.betabinom.cdf(x, n, a, b)
        hi = w @ stats.betabinom.sf(x - 1, n, a, b)
    elif prior.family == "normal":
        if sigma is None:
            raise BorrowingError("prior predictive (normal): needs sigma")
        sd = np.sqrt(b**2 + sigma**2 / stats_["n"])
        lo = w @ stats.norm.cdf(stats_["ybar"], a, sd)
        hi = 1.0 - lo
    else:
        d, e = int(stats_["d"]), float(stats_["exposure"])
        p = b / (b + e)  # negative binomial: Poisson(lambda E), lambda ~ Gamma(a, b)
        lo = w @ stats.nbinom.cdf(d, a, p)
        hi = w @ stats.nbinom.sf(d - 1, a, p)
    return float(min(1.0, 2.0 * min(lo, hi)))


# --------------------------------------------------------------------------- engines


def closed_form_refusal(method: str, endpoint: str, sigma: float | None) -> str | None:
    """Why the control-arm update has no closed form, or None when it has one.

    The conjugate update exists for the methods with a :class:`MixturePrior` prior (none, full,
    power, robust, procova) on a binary or TTE endpoint, and on a continuous one when the
    per-patient sd ``sigma`` is known (with sigma estimated the posterior is not a mixture of
    normals).
    """
    if method == "commensurate":
        return (
            "method commensurate: the commensurability sd is estimated jointly with the control "
            "parameter (no conjugate form)"
        )
    if method == "procova_bayes":
        return (
            "method procova_bayes: the prognostic score enters as a covariate (no conjugate form)"
        )
    if endpoint == "continuous" and sigma is None:
        return (
            "continuous endpoint with sigma unknown: the per-patient sd is estimated "
            "(the normal mixture update needs a known sigma)"
        )
    return None


def resolve_engine(engine: str, method: str, endpoint: str, sigma: float | None) -> str:
    """The engine an update uses: ``"closed_form"`` or ``"mcmc"``.

    ``auto``: the closed form whenever one exists (:func:`closed_form_refusal`), else MCMC;
    ``closed_form``: the closed form, refused with the reason when none exists; ``mcmc``: MCMC.

    Raises
    ------
    BorrowingError
        Unknown engine, or ``closed_form`` where there is none.
    """
    if engine not in ENGINES:
        raise BorrowingError(f"engine: must be one of {ENGINES}, got {engine!r}")
    why = closed_form_refusal(method, endpoint, sigma)
    if engine == "closed_form" and why is not None:
        raise BorrowingError(
            f"engine closed_form: no closed form for this update ({why}); "
            "use engine 'mcmc' or 'auto'"
        )
    if engine == "mcmc" or why is not None:
        return "mcmc"
    return "closed_form"


def _component_cdf_ppf(mix: MixturePrior) -> tuple[Any, Any]:
    """Vectorised CDF and quantile functions of the mixture's components (arrays of K)."""
    a, b = np.asarray(mix.a, dtype=float), np.asarray(mix.b, dtype=float)
    if mix.family == "beta":
        return (lambda t: stats.beta.cdf(t, a, b)), (lambda q: stats.beta.ppf(q, a, b))
    if mix.family == "normal":
        return (lambda t: stats.norm.cdf(t, a, b)), (lambda q: stats.norm.ppf(q, a, b))
    return (
        (lambda t: stats.gamma.cdf(t, a, scale=1.0 / b)),
        (lambda q: stats.gamma.ppf(q, a, scale=1.0 / b)),
    )


def mixture_quantile(mix: MixturePrior, q: float) -> float:
    """The ``q`` quantile of a mixture, exact to root-finding tolerance (1e-12 relative).

    The mixture's quantile lies between its components' quantiles, which bracket the root of
    ``sum_k w_k F_k(theta) = q``.
    """
    from scipy.optimize import brentq

    cdf, ppf = _component_cdf_ppf(mix)
    ends = np.atleast_1d(ppf(q))
    if mix.n_components == 1:
        return float(ends[0])
    lo, hi = float(ends.min()), float(ends.max())
    if lo == hi:
        return lo
    w = np.asarray(mix.weights, dtype=float)
    return float(brentq(lambda t: float(w @ cdf(t)) - q, lo, hi, xtol=1e-15, rtol=1e-12))


def mixture_summary(mix: MixturePrior, param: str) -> pd.DataFrame:
    """An exact posterior's summary in the columns of the MCMC summary
    (:func:`insilico_trials.infer.outcomes.fit_outcome`): one row, ``param``, ``mean``, ``sd``,
    ``eti_2.5%``, ``eti_97.5%`` exact; ``r_hat``, ``ess_bulk``, ``ess_tail`` NaN (no draws) and
    ``mcse_mean`` 0."""
    return pd.DataFrame(
        [
            {
                "param": param,
                "mean": mix.mean(),
                "sd": math.sqrt(mix.var()),
                "eti_2.5%": mixture_quantile(mix, 0.025),
                "eti_97.5%": mixture_quantile(mix, 0.975),
                "r_hat": float("nan"),
                "ess_bulk": float("nan"),
                "ess_tail": float("nan"),
                "mcse_mean": 0.0,
            }
        ]
    )


# --------------------------------------------------------------------------- priors from the virtual arm


def _vague(endpoint: Endpoint) -> MixturePrior:
    fam = FAMILY[endpoint]
    return MixturePrior.single(
        fam, *{"beta": VAGUE_BETA, "normal": VAGUE_NORMAL, "gamma": VAGUE_GAMMA}[fam]
    )


def _power(
    endpoint: Endpoint, s: Mapping[str, float], a0: float, sigma: float | None
) -> MixturePrior:
    if endpoint == "binary":
        return MixturePrior.single(
            "beta", VAGUE_BETA[0] + a0 * s["x"], VAGUE_BETA[1] + a0 * (s["n"] - s["x"])
        )
    if endpoint == "continuous":
        prec = 1.0 / VAGUE_NORMAL[1] ** 2 + a0 * s["n"] / sigma**2
        mean = (VAGUE_NORMAL[0] / VAGUE_NORMAL[1] ** 2 + a0 * s["n"] * s["ybar"] / sigma**2) / prec
        return MixturePrior.single("normal", mean, prec**-0.5)
    return MixturePrior.single(
        "gamma", VAGUE_GAMMA[0] + a0 * s["d"], VAGUE_GAMMA[1] + a0 * s["exposure"]
    )


def control_prior(
    virtual_control: pd.DataFrame | Mapping[str, Any],
    *,
    method: str,
    endpoint: Endpoint,
    params: Mapping[str, Any] | None = None,
    sigma: float | None = None,
) -> MixturePrior:
    """The conjugate prior on the control parameter implied by the virtual control arm.

    Parameters
    ----------
    virtual_control : DataFrame or mapping
        Simulated control patients (columns as for
        :func:`insilico_trials.infer.outcomes.fit_outcome`), or their
        :func:`~insilico_trials.infer.conjugate.arm_statistics` as archived.
    method : {"none", "full", "power", "robust", "procova", "procova_bayes"}
        See the module docstring ("commensurate" has no conjugate form: see :func:`update_control`).
    endpoint : {"binary", "continuous", "tte"}
    params : mapping
        ``a0`` (power; robust, default 1), ``weight`` (robust vague weight, default 0.2),
        ``robust_mean``, ``robust_n`` (default 1).
    sigma : float, optional
        Per-patient sd for the continuous endpoint (units of ``value``); default the virtual
        arm's sample sd.
    """
    params = dict(params or {})
    if method not in METHODS or method == "commensurate":
        raise BorrowingError(
            f"method: conjugate priors exist for none, full, power, robust, procova; got {method!r}"
        )
    s = sufficient_stats(virtual_control, endpoint)
    if endpoint == "continuous" and sigma is None:
        sigma = s["sd"]
    if method in ("none", "procova", "procova_bayes"):
        return _vague(endpoint)
    if method == "full":
        return _power(endpoint, s, 1.0, sigma)
    a0 = float(params.get("a0", 1.0))
    if not 0.0 <= a0 <= 1.0:
        raise BorrowingError(f"params.a0: must be in [0, 1], got {a0!r}")
    informative = _power(endpoint, s, a0, sigma)
    if method == "power":
        return informative
    return robustify(
        informative,
        weight=float(params.get("weight", 0.2)),
        mean=params.get("robust_mean"),
        n=float(params.get("robust_n", 1.0)),
        sigma=sigma,
    )


# --------------------------------------------------------------------------- updates


@dataclass(frozen=True)
class UpdateState:
    """The control-arm posterior after one real data cut (cumulative over cuts so far).

    ``engine`` is ``"closed_form"`` (every number exact, from the conjugate posterior; no
    MCMC: ``fit`` is None) or ``"mcmc"`` (PyMC/nutpie; ``fit`` the MCMC fit). ``summary`` holds
    the posterior summary of the control parameter (MCMC, or :func:`mixture_summary` of the
    exact posterior: same columns); ``closed_form`` the conjugate posterior (MixturePrior) when
    one exists; ``conflict`` holds ``vague_weight_prior``, ``vague_weight_posterior`` (robust
    only; from MCMC draws, or exact), ``vague_weight_posterior_exact`` (conjugate) and
    ``prior_predictive_p``.
    """

    cut_id: str
    n_real: int
    real_stats: dict[str, float]
    summary: pd.DataFrame
    posterior_mean: float
    posterior_sd: float
    prior_ess: float
    posterior_ess: float
    borrowed_virtual: float
    ess_unit: str
    conflict: dict[str, float]
    converged: bool
    diagnostics: dict[str, Any]
    closed_form: MixturePrior | None
    engine: str = "mcmc"
    fit: OutcomeFit | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class UpdateResult:
    """All states of a synthetic-control update, in cut order (``states[-1]`` is current)."""

    method: str
    endpoint: str
    params: dict[str, Any]
    prior: MixturePrior | None
    virtual_stats: dict[str, float]
    states: tuple[UpdateState, ...]

    @property
    def final(self) -> UpdateState:
        return self.states[-1]

    @property
    def engine(self) -> str:
        """``"closed_form"`` or ``"mcmc"``: the engine of the states (one for all)."""
        return self.states[-1].engine

    def table(self) -> pd.DataFrame:
        """One row per state: cut, n, posterior mean/sd, ESS, borrowed, conflict, converged."""
        return pd.DataFrame(
            [
                {
                    "cut_id": s.cut_id,
                    "n_real": s.n_real,
                    "posterior_mean": s.posterior_mean,
                    "posterior_sd": s.posterior_sd,
                    "prior_ess": s.prior_ess,
                    "posterior_ess": s.posterior_ess,
                    "borrowed_virtual": s.borrowed_virtual,
                    **{f"conflict_{k}": v for k, v in s.conflict.items()},
                    "converged": s.converged,
                }
                for s in self.states
            ]
        )


def _as_frame(cut: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    if not isinstance(cut, pd.DataFrame):
        raise BorrowingError(
            f"cuts: each cut must be a DataFrame of real control patients, got "
            f"{type(cut).__name__} (convert ADaM cuts with io.realdata.endpoint_frame)"
        )
    return str(cut.attrs.get("cut_id", "")), cut


def _cumulative(frames: list[pd.DataFrame]) -> pd.DataFrame:
    # A subject re-sent in a later cut (more follow-up) replaces its earlier record.
    df = pd.concat(frames, ignore_index=True)
    if "usubjid" in df.columns:
        df = df.drop_duplicates("usubjid", keep="last").reset_index(drop=True)
    return df


def update_control(
    virtual_control: pd.DataFrame | Mapping[str, Any],
    cuts: Sequence[Any],
    *,
    method: str,
    params: Mapping[str, Any] | None = None,
    endpoint: Endpoint,
    seed: int,
    sigma: float | None = None,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 2,
    gates: ConvergenceGates | None = None,
    engine: str = "auto",
) -> UpdateResult:
    """Update the synthetic control arm with a sequence of real data cuts.

    State ``i`` is the posterior of the control parameter (``p_c``, ``mu_c`` or the
    exponential hazard ``lambda_c`` per month) given the virtual-arm prior and the real control
    patients of cuts ``0..i`` (a subject re-sent in a later cut replaces its earlier record), so
    the last state equals one fit on all the data. Where the prior is conjugate (none, full,
    power, robust, procova; continuous only with ``sigma`` known) the posterior is a mixture
    computed exactly (``engine`` ``auto`` or ``closed_form``: no MCMC, every number of the state
    exact); otherwise, or with ``engine="mcmc"``, each state is fitted with PyMC/nutpie and the
    closed form, where there is one, is returned alongside for checking.

    Parameters
    ----------
    virtual_control : DataFrame or mapping
        Simulated control patients in :func:`~insilico_trials.infer.outcomes.fit_outcome`
        columns, or their :func:`~insilico_trials.infer.conjugate.arm_statistics` (as the run
        archives them in ``synthetic_control.json``).
    cuts : sequence of DataFrame
        Real data cuts in arrival order: the control patients of each cut, in fit_outcome
        columns (optional ``usubjid``; ``attrs["cut_id"]`` names the cut). ADaM cuts are
        converted with :func:`insilico_trials.io.realdata.endpoint_frame`.
    method : {"none", "full", "power", "robust", "commensurate", "procova", "procova_bayes"}
    params : mapping
        ``a0``; ``weight``, ``robust_mean``, ``robust_n`` (robust); ``sd_scale``
        (commensurate); see the module docstring.
    endpoint : {"binary", "continuous", "tte"}
    seed : int
        Sampler seed, the same for every state (a state is reproducible on its own).
    sigma : float, optional
        Known per-patient sd for the continuous endpoint: enables the closed form and the
        normal ESS. None: estimated by MCMC; the virtual arm's sd is used for the prior and ESS.
    draws, tune, chains : int
        NUTS settings per state (unused by the closed form).
    engine : {"auto", "closed_form", "mcmc"}
        ``auto`` (default): the closed form whenever one exists, else MCMC; ``closed_form``:
        refused (:class:`BorrowingError`, naming why) where none exists; ``mcmc``: MCMC always
        (the behaviour of archives made before engines existed). See :func:`resolve_engine`.

    Returns
    -------
    UpdateResult
    """
    params = dict(params or {})
    if method not in METHODS:
        raise BorrowingError(f"method: must be one of {METHODS}, got {method!r}")
    if endpoint not in FAMILY:
        raise BorrowingError(f"endpoint: must be binary, continuous or tte, got {endpoint!r}")
    if method in ("procova", "procova_bayes") and endpoint != "continuous":
        raise BorrowingError(f"method {method}: continuous endpoint only, got {endpoint!r}")
    if not cuts:
        raise BorrowingError("cuts: need at least one real data cut")
    used = resolve_engine(engine, method, endpoint, sigma)
    ess_method = "elir"
    if isinstance(virtual_control, VirtualPrior):
        # The prior the run (and design) used: replicate virtual arms, MAP or pooled, a0, cap.
        vp = virtual_control
        if vp.kind != endpoint:
            raise BorrowingError(
                f"virtual prior: made for a {vp.kind} endpoint, the update is {endpoint}"
            )
        prior = vp.prior if method != "commensurate" else None
        vstats = dict(vp.pseudo)
        ess_sigma = sigma if sigma is not None else vp.sigma
        ess_method = vp.ess_method
    else:
        vstats = sufficient_stats(virtual_control, endpoint)
        ess_sigma = sigma if sigma is not None else vstats.get("sd")
        prior = (
            None
            if method == "commensurate"
            else control_prior(
                virtual_control, method=method, endpoint=endpoint, params=params, sigma=ess_sigma
            )
        )
    vague = _vague(endpoint)
    model = UPDATE_MODEL_OF_KIND[endpoint]
    param_name = {"binary": "p_c", "continuous": "mu_c", "tte": "lambda_c[0]"}[endpoint]
    ess_unit = "events" if endpoint == "tte" else "patients"
    fit_kwargs: dict[str, Any] = {"draws": draws, "tune": tune, "chains": chains, "seed": seed}
    if gates is not None:
        fit_kwargs["gates"] = gates

    prior_ess = _prior_ess(prior, vstats, method, endpoint, params, ess_sigma, ess_method)
    frames: list[pd.DataFrame] = []
    states: list[UpdateState] = []
    for i, cut in enumerate(cuts):
        cut_id, frame = _as_frame(cut)
        frames.append(frame)
        real = _cumulative(frames)
        real = real.assign(arm="control")
        rstats = sufficient_stats(real, endpoint)
        n_size = rstats["d"] if endpoint == "tte" else rstats["n"]
        closed = None
        fit: OutcomeFit | None = None
        if used == "closed_form":
            closed = mixture_posterior(prior, rstats, sigma=sigma)
            summary = mixture_summary(closed, param_name)
            post_mean, post_var = closed.mean(), closed.var()
            converged = True
            diagnostics: dict[str, Any] = {
                "engine": "closed_form",
                "posterior": f"exact conjugate {closed.family} mixture update (no MCMC)",
                "failed": [],
            }
        elif method == "commensurate":
            fit, draws_c = _fit_commensurate(vstats, rstats, endpoint, params, sigma, fit_kwargs)
        else:
            covariates = ["prognostic_score"] if method == "procova_bayes" else []
            fit = fit_outcome(
                real,
                model,
                prior=[prior] if model == "tte_pwexp" else prior,
                covariates=covariates,
                sigma=sigma,
                cuts_months=[0.0],
                **fit_kwargs,
            )
            draws_c = fit.draws(param_name.split("[")[0]).ravel()
            if method != "procova_bayes" and (endpoint != "continuous" or sigma is not None):
                closed = mixture_posterior(prior, rstats, sigma=sigma)
        if fit is not None:
            post_mean, post_var = float(draws_c.mean()), float(draws_c.var())
            summary, converged = fit.summary, fit.converged
            diagnostics = {**fit.diagnostics, "engine": "mcmc"}
        # The exact posterior variance where a closed form exists (MCMC noise in a tiny
        # variance would otherwise inflate the borrowed figure without bound).
        exact_var = closed.var() if closed is not None else post_var
        # Reference: the same real data under the vague prior (conjugate, closed form; the
        # continuous case with sigma unknown uses the sample variance of the real values).
        ref_sigma = sigma if sigma is not None else rstats.get("sd")
        ref = mixture_posterior(vague, rstats, sigma=ref_sigma) if n_size > 0 else vague
        if method == "procova_bayes":
            rho = float(np.corrcoef(real["prognostic_score"], real["value"])[0, 1])
            borrowed = rstats["n"] * rho**2 / (1.0 - rho**2)
        else:
            borrowed = max(0.0, n_size * (ref.var() / exact_var - 1.0))
        post_ess = _ess_from_moments(FAMILY[endpoint], post_mean, post_var, ess_sigma)
        conflict: dict[str, float] = {}
        if prior is not None and method not in ("none", "procova", "procova_bayes"):
            informative = prior
            if prior.labels and "vague" in prior.labels:
                k = prior.labels.index("vague")
                conflict["vague_weight_prior"] = prior.weights[k]
                conflict["vague_weight_posterior"] = (
                    closed.weights[k]
                    if fit is None
                    else (fit.component_weights or {}).get("vague", float("nan"))
                )
                if closed is not None:
                    conflict["vague_weight_posterior_exact"] = closed.weights[k]
                keep = [j for j in range(prior.n_components) if j != k]
                wsum = sum(prior.weights[j] for j in keep)
                informative = MixturePrior(
                    prior.family,
                    tuple(prior.weights[j] / wsum for j in keep),
                    tuple(prior.a[j] for j in keep),
                    tuple(prior.b[j] for j in keep),
                )
            if endpoint != "continuous" or ref_sigma is not None:
                conflict["prior_predictive_p"] = prior_predictive_pvalue(
                    informative, rstats, sigma=ref_sigma
                )
        states.append(
            UpdateState(
                cut_id=cut_id or f"cut{i + 1}",
                n_real=int(rstats["n"]),
                real_stats=rstats,
                summary=summary,
                posterior_mean=post_mean,
                posterior_sd=math.sqrt(post_var),
                prior_ess=prior_ess,
                posterior_ess=post_ess,
                # Never more than the prior is worth: the effective historical sample size
                # is bounded by the prior's ESS (both in the ESS unit).
                borrowed_virtual=float(min(borrowed, prior_ess))
                if method != "procova_bayes"
                else float(borrowed),
                ess_unit=ess_unit,
                conflict=conflict,
                converged=converged,
                diagnostics=diagnostics,
                closed_form=closed,
                engine=used,
                fit=fit,
            )
        )
    return UpdateResult(method, endpoint, params, prior, vstats, tuple(states))


def _ess_from_moments(family: str, m: float, v: float, sigma: float | None) -> float:
    if family == "beta":
        return m * (1 - m) / v - 1
    if family == "normal":
        return (sigma**2 / v) if sigma else float("nan")
    return m**2 / v


def _prior_ess(prior, vstats, method, endpoint, params, sigma, ess_method="elir") -> float:
    if prior is not None:
        if endpoint == "continuous" and sigma is None:
            return float("nan")
        return prior_ess(prior, ess_method, sigma)
    # commensurate: moment-matched ESS of the implied prior on theta_c, by simulation
    # (phi_v from its virtual-data posterior, the sd from its HalfNormal prior; fixed seed,
    # 20 000 draws).
    rng = np.random.default_rng(20_000)
    phi_v, scale = _virtual_link_posterior(vstats, endpoint, sigma, rng, 20_000)
    sd = np.abs(rng.standard_normal(20_000)) * float(params.get("sd_scale", 0.5))
    phi_c = phi_v + rng.standard_normal(20_000) * sd
    theta = scale(phi_c)
    return _ess_from_moments(FAMILY[endpoint], float(theta.mean()), float(theta.var()), sigma)


def _virtual_link_posterior(vstats, endpoint, sigma, rng, size):
    if endpoint == "binary":
        p = rng.beta(1 + vstats["x"], 1 + vstats["n"] - vstats["x"], size)
        return special.logit(p), special.expit
    if endpoint == "continuous":
        return rng.normal(vstats["ybar"], sigma / math.sqrt(vstats["n"]), size), lambda x: x
    lam = rng.gamma(1 + vstats["d"], 1 / (0.01 + vstats["exposure"]), size)
    return np.log(lam), np.exp


_COMM_CACHE: dict[tuple, Any] = {}
# The sd between the virtual and the real parameter has its posterior near 0 when they agree:
# a funnel the non-centred form eases but does not remove; at nutpie's default 0.8, 1 of
# 2,000 draws diverged in tests/test_borrowing.py (seed 5).
COMMENSURATE_TARGET_ACCEPT = 0.95


def _fit_commensurate(vstats, rstats, endpoint, params, sigma, fit_kwargs):
    """Joint MCMC of virtual and real control parameters linked by a commensurate prior."""
    import nutpie
    import pymc as pm

    from insilico_trials.infer import outcomes as oc

    key = (endpoint, sigma is None)
    data = {
        "sd_scale": np.asarray(float(params.get("sd_scale", 0.5))),
    }
    if endpoint == "binary":
        data |= {
            k: np.asarray(v)
            for k, v in (
                ("xv", vstats["x"]),
                ("nv", vstats["n"]),
                ("xr", rstats["x"]),
                ("nr", rstats["n"]),
            )
        }
    elif endpoint == "continuous":
        if sigma is None:
            raise BorrowingError("commensurate (continuous): needs a known sigma")
        data |= {
            "ybar_v": np.asarray(vstats["ybar"]),
            "se_v": np.asarray(sigma / math.sqrt(vstats["n"])),
            "ybar_r": np.asarray(rstats["ybar"]),
            "se_r": np.asarray(sigma / math.sqrt(rstats["n"])),
        }
    else:
        data |= {
            k: np.asarray(v)
            for k, v in (
                ("dv", vstats["d"]),
                ("ev", vstats["exposure"]),
                ("dr", rstats["d"]),
                ("er", rstats["exposure"]),
            )
        }
    if key not in _COMM_CACHE:
        with pm.Model() as m:
            d = {k: pm.Data(k, v) for k, v in data.items()}
            s_c = pm.HalfNormal("sd_commensurate", sigma=d["sd_scale"])
            if endpoint == "binary":
                phi_v = pm.Normal("phi_v", 0.0, 2.5)
                z = pm.Normal("z", 0.0, 1.0)  # non-centred: phi_c = phi_v + s z
                phi_c = phi_v + s_c * z
                # the virtual information may be pseudo-data with non-integer counts (the
                # capped prior's mean and ESS): its binomial kernel, not a Binomial variable
                pm.Potential(
                    "xv_obs",
                    d["xv"] * phi_v - d["nv"] * pm.math.log1pexp(phi_v),
                )
                pm.Binomial("xr_obs", n=d["nr"], logit_p=phi_c, observed=d["xr"])
                pm.Deterministic("p_c", pm.math.invlogit(phi_c))
            elif endpoint == "continuous":
                phi_v = pm.Normal("phi_v", VAGUE_NORMAL[0], VAGUE_NORMAL[1])
                z = pm.Normal("z", 0.0, 1.0)
                phi_c = phi_v + s_c * z
                pm.Normal("yv_obs", phi_v, d["se_v"], observed=d["ybar_v"])
                pm.Normal("yr_obs", phi_c, d["se_r"], observed=d["ybar_r"])
                pm.Deterministic("mu_c", phi_c)
            else:
                phi_v = pm.Normal("phi_v", -3.0, 3.0)  # log hazard per month
                z = pm.Normal("z", 0.0, 1.0)
                phi_c = phi_v + s_c * z
                pm.Potential("dv_obs", d["dv"] * phi_v - d["ev"] * pm.math.exp(phi_v))
                pm.Poisson("dr_obs", d["er"] * pm.math.exp(phi_c), observed=d["dr"])
                pm.Deterministic("lambda_c", pm.math.exp(phi_c))
        _COMM_CACHE[key] = nutpie.compile_pymc_model(m)
    idata = nutpie.sample(
        _COMM_CACHE[key].with_data(**data),
        draws=fit_kwargs["draws"],
        tune=fit_kwargs["tune"],
        chains=fit_kwargs["chains"],
        cores=min(fit_kwargs["chains"], 2),
        seed=fit_kwargs["seed"],
        target_accept=COMMENSURATE_TARGET_ACCEPT,
        progress_bar=False,
    )
    name = {"binary": "p_c", "continuous": "mu_c", "tte": "lambda_c"}[endpoint]
    summary = oc._summary(idata, [name, "sd_commensurate"])
    div = int(np.asarray(idata["sample_stats"]["diverging"].values).sum())
    diag = oc._gates(summary, div, fit_kwargs.get("gates", oc.GATES))
    ss = idata["sample_stats"].to_dataset()
    import xarray as xr

    tree = xr.DataTree.from_dict(
        {
            "posterior": idata["posterior"].to_dataset(),
            "sample_stats": ss[[v for v in ss.data_vars if ss[v].dtype != object]],
        }
    )
    fit = OutcomeFit(
        model=f"commensurate_{endpoint}",
        summary=summary,
        probability=float("nan"),
        decision="not reported (no treatment arm)",
        converged=not diag["failed"],
        diagnostics=diag,
        idata=tree,
        criterion={},
        prior=None,
    )
    return fit, np.asarray(idata["posterior"][name].values).ravel()
