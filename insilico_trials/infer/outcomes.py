"""Bayesian outcome models (PyMC), fitting, decision criteria and convergence gates.

Four outcome models, each with an arm effect and optional covariates, all written as PyMC
models whose data and control-arm prior hyper-parameters are ``pm.Data`` containers, so one
compiled model (nutpie, numba backend; the binary model on counts through
:mod:`insilico_trials.infer.nuts`) serves every refit with the same *structure* (model, number
of prior mixture components, number of covariates, number of pieces). Compiled models are cached in-process by that
structure key; a refit only swaps data with ``with_data``.

Models (``i`` indexes patients, ``trt_i`` is 1 for the treatment arm and 0 for control,
``z_i`` the standardised covariates: ``(x - mean) / sd`` over the fitted data, so the arm
parameters refer to a patient with average covariates):

``binary``
    ``y_i ~ Bernoulli(p_i)``, ``logit p_i = logit(p_arm[i]) + z_i' gamma``,
    ``p_c ~ prior`` (beta mixture, default Beta(1, 1)), ``p_t ~ Beta(1, 1)``,
    ``gamma_j ~ Normal(0, 2.5)``. Derived: ``rate_difference = p_t - p_c``,
    ``odds_ratio = [p_t / (1 - p_t)] / [p_c / (1 - p_c)]``, ``risk_ratio = p_t / p_c``.
    Without covariates the likelihood is taken in its sufficient form,
    ``x_arm ~ Binomial(n_arm, p_arm)`` (the same posterior, at a cost independent of n).
    Without covariates ``p_c`` and ``p_t`` are conjugate: the posteriors are
    ``Beta(a + x, b + n - x)`` (mixtures: see :func:`insilico_trials.infer.conjugate.beta_mixture_posterior`).
``continuous``
    ``y_i ~ Normal(mu_arm[i] + z_i' gamma, sigma)`` (e.g. % change in tumour size, with
    ``baseline`` as covariate), ``mu_c ~ prior`` (normal mixture, default
    Normal(0, 1000)), ``mu_t ~ Normal(0, 1000)``, ``gamma_j ~ Normal(0, 1000)`` (per unit of
    standardised covariate, in units of ``value``), ``sigma ~ HalfNormal(1000)`` or known
    (``sigma=``). Derived: ``mean_difference = mu_t - mu_c``.
``tte_weibull``
    Weibull proportional hazards, right-censored, time in months (``time`` in days / 30.4375):
    ``h_i(t) = lambda_c k t^(k - 1) exp(beta trt_i + z_i' gamma)``,
    ``H_i(t) = lambda_c t^k exp(beta trt_i + z_i' gamma)``,
    log-likelihood ``sum_i [event_i log h_i(t_i) - H_i(t_i)]``.
    ``lambda_c ~ prior`` (gamma mixture, per month^k; default Gamma(1, 0.01)),
    ``k ~ LogNormal(0, 1)``, ``beta ~ Normal(0, 2.5)``. Derived: ``hazard_ratio = exp(beta)``.
``tte_pwexp``
    piecewise-exponential proportional hazards with cut points ``cuts_months`` (default 0, 3,
    6, 12 months; the last piece is open): ``h_i(t) = lambda_j exp(beta trt_i + z_i' gamma)``
    for ``t`` in piece ``j``; log-likelihood ``sum_ij [d_ij log h_ij - E_ij h_ij]`` with
    ``d_ij`` the event indicator and ``E_ij`` the exposure (months) of patient ``i`` in piece
    ``j``. ``lambda_j ~ prior_j`` (gamma mixture per piece, default Gamma(1, 0.01)).

Decision criterion: ``P(quantity > delta) > threshold`` (``direction="greater"``, the default
for every quantity but hazard ratios) or ``P(quantity < delta) > threshold``
(``direction="less"``, the default for ``hazard_ratio`` and ``log_hazard_ratio``).

Convergence gates: rank-normalised split R-hat <= 1.01, bulk and tail ESS >= 400 for every
reported parameter, and no divergent transitions. A fit failing a gate keeps its
diagnostics, and its decision reads ``"not reported (convergence failed)"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from insilico_trials.errors import InputError
from insilico_trials.infer.conjugate import (
    VAGUE_BETA,
    VAGUE_GAMMA,
    VAGUE_NORMAL,
    MixturePrior,
    mixture_component_weights,
)
from insilico_trials.spec.catalog import OUTCOME_FAMILIES
from insilico_trials.units import DAYS_PER_MONTH

__all__ = [
    "DAYS_PER_MONTH",
    "GATES",
    "MODELS",
    "ConvergenceGates",
    "MixturePrior",
    "OutcomeDataError",
    "OutcomeFit",
    "fit_outcome",
    "mixture_component_weights",
]

MODELS = tuple(OUTCOME_FAMILIES)
ModelName = Literal[MODELS]  # type: ignore[valid-type]

DEFAULT_PWEXP_CUTS_MONTHS = (0.0, 3.0, 6.0, 12.0)

# (quantity -> (models it applies to, default direction)), from the family catalog
QUANTITIES: dict[str, tuple[tuple[str, ...], str]] = {
    q: (tuple(m for m, g in OUTCOME_FAMILIES.items() if q in g.quantities), f.side)
    for f in OUTCOME_FAMILIES.values()
    for q in f.quantities
}


class OutcomeDataError(InputError):
    """Bad input to an outcome fit: names the column, row, value and what is allowed."""


@dataclass(frozen=True)
class ConvergenceGates:
    """Thresholds a fit must pass for its decision to be reported."""

    max_rhat: float = 1.01
    min_ess_bulk: float = 400.0
    min_ess_tail: float = 400.0
    max_divergences: int = 0


# NUTS target acceptance per model (0.8, Stan's default, unless the family says otherwise: see
# the reasons in insilico_trials.spec.catalog.OUTCOME_FAMILIES).
TARGET_ACCEPT = {name: f.target_accept for name, f in OUTCOME_FAMILIES.items()}


GATES = ConvergenceGates()


# --------------------------------------------------------------------------- data checks


def _fail(column: str, row: Any, value: Any, rule: str) -> OutcomeDataError:
    if isinstance(value, np.generic):
        value = value.item()
    return OutcomeDataError(f"data[{column!r}] row {row}: {rule}, got {value!r}")


def _require(data: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in data.columns]
    if missing:
        raise OutcomeDataError(f"data: missing column(s) {missing}; present: {list(data.columns)}")


def _numeric(data: pd.DataFrame, column: str, *, allowed: str, check=None) -> np.ndarray:
    values = pd.to_numeric(data[column], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    if check is not None:
        bad |= ~check(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise _fail(column, data.index[i], data[column].iloc[i], f"must be {allowed}")
    return values


@dataclass(frozen=True)
class _Prepared:
    trt: np.ndarray
    values: dict[str, np.ndarray]
    z: np.ndarray
    covariate_names: tuple[str, ...]
    n_control: int
    n_treatment: int


def _prepare(
    data: pd.DataFrame,
    model: str,
    control: str,
    treatment: str,
    covariates: Sequence[str],
) -> _Prepared:
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"data: must be a pandas DataFrame, got {type(data).__name__}")
    needed = list(OUTCOME_FAMILIES[model].columns)
    _require(data, ["arm", *needed, *covariates])
    arm = data["arm"].astype(str)
    bad = ~arm.isin([control, treatment])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise _fail(
            "arm", data.index[i], data["arm"].iloc[i], f"must be {control!r} or {treatment!r}"
        )
    trt = (arm == treatment).to_numpy(dtype=np.int64)
    n_t = int(trt.sum())
    n_c = len(trt) - n_t
    if n_c == 0:
        raise OutcomeDataError(f"data['arm']: no rows for the control arm {control!r}")
    values: dict[str, np.ndarray] = {}
    if model == "binary":
        values["y"] = _numeric(
            data, "response", allowed="0 or 1", check=lambda v: np.isin(v, (0.0, 1.0))
        ).astype(np.int64)
    elif model == "continuous":
        values["y"] = _numeric(data, "value", allowed="a finite number")
    else:
        values["time"] = _numeric(data, "time", allowed="a time in days > 0", check=lambda v: v > 0)
        values["event"] = _numeric(
            data,
            "event",
            allowed="1 (event) or 0 (censored)",
            check=lambda v: np.isin(v, (0.0, 1.0)),
        )
    zs = []
    for c in covariates:
        x = _numeric(data, c, allowed="a finite number")
        sd = x.std()
        zs.append((x - x.mean()) / sd if sd > 0 else x - x.mean())
    z = np.column_stack(zs) if zs else np.zeros((len(data), 0))
    return _Prepared(trt, values, z, tuple(covariates), n_c, n_t)


# --------------------------------------------------------------------------- model building


def _prior_arrays(prior: MixturePrior | Sequence[MixturePrior] | None, model: str, n_pieces: int):
    family = OUTCOME_FAMILIES[model].conjugate
    default = {"beta": VAGUE_BETA, "normal": VAGUE_NORMAL, "gamma": VAGUE_GAMMA}[family]
    if model == "tte_pwexp":
        if prior is None:
            priors = [MixturePrior.single("gamma", *default)] * n_pieces
        elif isinstance(prior, MixturePrior):
            raise OutcomeDataError(
                f"prior: tte_pwexp needs one gamma MixturePrior per piece ({n_pieces}), got one"
            )
        else:
            priors = list(prior)
        if len(priors) != n_pieces or len({p.n_components for p in priors}) != 1:
            raise OutcomeDataError(
                f"prior: tte_pwexp needs {n_pieces} gamma priors with equal component counts"
            )
    else:
        if prior is None:
            prior = MixturePrior.single(family, *default)
        if not isinstance(prior, MixturePrior):
            raise OutcomeDataError(
                f"prior: {model} takes one MixturePrior, got {type(prior).__name__}"
            )
        priors = [prior]
    for p in priors:
        if p.family != family:
            raise OutcomeDataError(
                f"prior.family: model {model!r} needs a {family!r} prior on its control "
                f"parameter, got {p.family!r}"
            )
    w = np.array([p.weights for p in priors], dtype=float)
    a = np.array([p.a for p in priors], dtype=float)
    b = np.array([p.b for p in priors], dtype=float)
    if model != "tte_pwexp":
        w, a, b = w[0], a[0], b[0]
    return priors, w, a, b


def _control_prior_rv(pm, name: str, family: str, w, a, b, *, shape=None):
    if family == "beta":
        comp = pm.Beta.dist(alpha=a, beta=b)
    elif family == "normal":
        comp = pm.Normal.dist(mu=a, sigma=b)
    else:
        comp = pm.Gamma.dist(alpha=a, beta=b)
    return pm.Mixture(name, w=w, comp_dists=comp, shape=shape)


def _binary_likelihood(pm, pt, d, trt, lin, extra) -> None:
    p_c = _control_prior_rv(pm, "p_c", "beta", d["prior_w"], d["prior_a"], d["prior_b"])
    p_t = pm.Beta("p_t", *VAGUE_BETA)
    logit_p = pt.switch(pt.eq(trt, 1), pm.math.logit(p_t), pm.math.logit(p_c)) + lin
    if extra == "counts":
        pm.Binomial("y", n=d["n_data"], logit_p=logit_p, observed=d["y_data"], shape=2)
    else:
        pm.Bernoulli("y", logit_p=logit_p, observed=d["y_data"], shape=d["y_data"].shape)
    pm.Deterministic("rate_difference", p_t - p_c)
    log_or = pm.math.logit(p_t) - pm.math.logit(p_c)
    pm.Deterministic("log_odds_ratio", log_or)
    pm.Deterministic("odds_ratio", pt.exp(log_or))
    pm.Deterministic("risk_ratio", p_t / p_c)


def _continuous_likelihood(pm, pt, d, trt, lin, extra) -> None:
    mu_c = _control_prior_rv(pm, "mu_c", "normal", d["prior_w"], d["prior_a"], d["prior_b"])
    mu_t = pm.Normal("mu_t", *VAGUE_NORMAL)
    sigma = d["sigma_known"] if extra == "known_sigma" else pm.HalfNormal("sigma", 1000.0)
    mu = pt.switch(pt.eq(trt, 1), mu_t, mu_c) + lin
    pm.Normal("y", mu=mu, sigma=sigma, observed=d["y_data"], shape=d["y_data"].shape)
    pm.Deterministic("mean_difference", mu_t - mu_c)


def _weibull_likelihood(pm, pt, d, trt, lin, extra) -> None:
    lam_c = _control_prior_rv(pm, "lambda_c", "gamma", d["prior_w"], d["prior_a"], d["prior_b"])
    k = pm.LogNormal("k", 0.0, 1.0)
    beta = pm.Normal("log_hazard_ratio", 0.0, 2.5)
    t = d["time_months"]
    eta = beta * trt + lin
    log_h = pt.log(lam_c) + pt.log(k) + (k - 1.0) * pt.log(t) + eta
    cum_h = lam_c * t**k * pt.exp(eta)
    pm.Potential("loglik", pt.sum(d["event"] * log_h - cum_h))
    pm.Deterministic("hazard_ratio", pt.exp(beta))


def _pwexp_likelihood(pm, pt, d, trt, lin, extra) -> None:
    n_pieces = extra
    lam = _control_prior_rv(
        pm, "lambda_c", "gamma", d["prior_w"], d["prior_a"], d["prior_b"], shape=n_pieces
    )
    beta = pm.Normal("log_hazard_ratio", 0.0, 2.5)
    eta = beta * trt + lin
    log_h = pt.log(lam)[None, :] + eta[:, None]
    ll = pt.sum(d["d"] * log_h) - pt.sum(d["exposure"] * pt.exp(log_h))
    pm.Potential("loglik", ll)
    pm.Deterministic("hazard_ratio", pt.exp(beta))


# The likelihood of each outcome family (spec.catalog.OUTCOME_FAMILIES names them): the
# control parameter's mixture prior, the treatment effect, the data, the reported contrasts.
LIKELIHOODS = {
    "binary": _binary_likelihood,
    "continuous": _continuous_likelihood,
    "tte_weibull": _weibull_likelihood,
    "tte_pwexp": _pwexp_likelihood,
    "tte_exponential": _pwexp_likelihood,  # one piece (fit_outcome sets the cut points)
}


def _build(key: tuple, init: dict[str, np.ndarray]):
    """Build the PyMC model for a structure key, with ``init`` as initial data."""
    import pymc as pm
    import pytensor.tensor as pt

    model, _k, q, extra = key
    with pm.Model() as m:
        d = {name: pm.Data(name, value) for name, value in init.items()}
        trt = d["trt"]
        lin = 0.0
        if q:
            continuous = OUTCOME_FAMILIES[model].kind == "continuous"
            gamma_sd = VAGUE_NORMAL[1] if continuous else 2.5
            gamma = pm.Normal("gamma", 0.0, gamma_sd, shape=q)
            lin = pt.dot(d["z"], gamma)
        LIKELIHOODS[model](pm, pt, d, trt, lin, extra)
    return m


_CACHE: dict[tuple, Any] = {}
_CACHE_LOCK = threading.Lock()


def _compiled(key: tuple, init: dict[str, np.ndarray]):
    """Compile once per structure key per process; refits swap data with ``with_data``."""
    import nutpie

    from insilico_trials.infer.nuts import compile_model

    with _CACHE_LOCK:
        if key not in _CACHE:
            model = _build(key, init)
            # The binary model on counts: the same draws, bit for bit, in 1 s instead of 8
            # (insilico_trials.infer.nuts); the others keep nutpie's compiled callbacks.
            counts = key[0] == "binary" and key[3] == "counts"
            _CACHE[key] = compile_model(model) if counts else nutpie.compile_pymc_model(model)
        return _CACHE[key]


def _pieces(time_months: np.ndarray, event: np.ndarray, cuts: Sequence[float]):
    """Exposure (months) and event indicator of each patient in each piece: (n, J) arrays."""
    lo = np.asarray(cuts, dtype=float)
    hi = np.append(lo[1:], np.inf)
    t = time_months[:, None]
    exposure = np.clip(np.minimum(t, hi) - lo, 0.0, None)
    in_piece = (t > lo) & (t <= hi)
    return exposure, in_piece * event[:, None]


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class OutcomeFit:
    """The result of :func:`fit_outcome`.

    Attributes
    ----------
    summary : DataFrame
        One row per parameter: ``param, mean, sd, eti_2.5%, eti_97.5%, r_hat, ess_bulk,
        ess_tail, mcse_mean`` (95 % equal-tailed credible intervals, unrounded).
    probability : float
        Posterior probability of the decision criterion.
    decision : str
        ``"go"``, ``"no-go"`` or ``"not reported (convergence failed)"``.
    converged : bool
        All gates passed.
    diagnostics : dict
        ``max_rhat, min_ess_bulk, min_ess_tail, divergences`` and ``failed`` (gate names).
    idata : DataTree
        Posterior and sample statistics (ArviZ 1.x DataTree).
    """

    model: str
    summary: pd.DataFrame
    probability: float
    decision: str
    converged: bool
    diagnostics: dict[str, Any]
    idata: Any
    criterion: dict[str, Any]
    prior: Any
    component_weights: dict[str, float] | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def draws(self, name: str) -> np.ndarray:
        """All posterior draws of a scalar parameter, chains concatenated."""
        return np.asarray(self.idata["posterior"][name].values).reshape(
            -1, *self.idata["posterior"][name].shape[2:]
        )


def _summary(idata, var_names: list[str]) -> pd.DataFrame:
    from arviz_stats import summary  # what arviz.summary is, without arviz's plotting

    s = summary(
        idata, var_names=var_names, ci_prob=0.95, ci_kind="eti", round_to="none", kind="all"
    )
    s = pd.DataFrame(s).rename(columns={"eti95_lb": "eti_2.5%", "eti95_ub": "eti_97.5%"})
    s.index.name = "param"
    s = s.reset_index()
    cols = [
        "param",
        "mean",
        "sd",
        "eti_2.5%",
        "eti_97.5%",
        "r_hat",
        "ess_bulk",
        "ess_tail",
        "mcse_mean",
    ]
    return s[cols].astype({c: float for c in cols[1:]})


def _gates(summary: pd.DataFrame, divergences: int, gates: ConvergenceGates) -> dict[str, Any]:
    diag = {
        "max_rhat": float(summary["r_hat"].max(skipna=False)),
        "min_ess_bulk": float(summary["ess_bulk"].min(skipna=False)),
        "min_ess_tail": float(summary["ess_tail"].min(skipna=False)),
        "divergences": int(divergences),
    }
    failed = []
    if not diag["max_rhat"] <= gates.max_rhat:  # NaN fails
        failed.append(f"r_hat {diag['max_rhat']:.4f} > {gates.max_rhat}")
    if not diag["min_ess_bulk"] >= gates.min_ess_bulk:
        failed.append(f"ess_bulk {diag['min_ess_bulk']:.0f} < {gates.min_ess_bulk:.0f}")
    if not diag["min_ess_tail"] >= gates.min_ess_tail:
        failed.append(f"ess_tail {diag['min_ess_tail']:.0f} < {gates.min_ess_tail:.0f}")
    if divergences > gates.max_divergences:
        failed.append(f"divergences {divergences} > {gates.max_divergences}")
    diag["failed"] = failed
    return diag


def _criterion(model: str, decision: Mapping[str, Any] | None) -> dict[str, Any]:
    crit = {
        "quantity": OUTCOME_FAMILIES[model].quantity, "delta": None, "threshold": 0.9,
        **(decision or {}),
    }  # fmt: skip
    q = crit["quantity"]
    if q not in QUANTITIES or model not in QUANTITIES[q][0]:
        allowed = [k for k, (ms, _) in QUANTITIES.items() if model in ms]
        raise OutcomeDataError(
            f"decision.quantity: for model {model!r} must be one of {allowed}, got {q!r}"
        )
    if crit["delta"] is None:
        crit["delta"] = 1.0 if q in ("odds_ratio", "risk_ratio", "hazard_ratio") else 0.0
    crit.setdefault("direction", QUANTITIES[q][1])
    if crit["direction"] not in ("greater", "less"):
        raise OutcomeDataError(
            f"decision.direction: must be 'greater' or 'less', got {crit['direction']!r}"
        )
    if not 0.0 < float(crit["threshold"]) < 1.0:
        raise OutcomeDataError(f"decision.threshold: must be in (0, 1), got {crit['threshold']!r}")
    crit["delta"] = float(crit["delta"])
    crit["threshold"] = float(crit["threshold"])
    return crit


# --------------------------------------------------------------------------- public entry


def fit_outcome(
    data: pd.DataFrame,
    model: ModelName = "binary",
    *,
    control: str = "control",
    treatment: str = "treatment",
    decision: Mapping[str, Any] | None = None,
    prior: MixturePrior | Sequence[MixturePrior] | None = None,
    covariates: Sequence[str] = (),
    sigma: float | None = None,
    cuts_months: Sequence[float] = DEFAULT_PWEXP_CUTS_MONTHS,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 2,
    seed: int = 7,
    gates: ConvergenceGates = GATES,
) -> OutcomeFit:
    """Fit an outcome model with PyMC (nutpie NUTS) and apply the decision criterion.

    Parameters
    ----------
    data : DataFrame
        One row per patient. Column ``arm`` (str) plus, by model: ``response`` (0/1) for
        ``binary``; ``value`` (and optionally ``baseline``, used when listed in
        ``covariates``) for ``continuous``; ``time`` (days, > 0) and ``event`` (1 event,
        0 right-censored) for ``tte_weibull`` / ``tte_pwexp``.
    model : {"binary", "continuous", "tte_weibull", "tte_pwexp"}
        See the module docstring for each likelihood and its priors.
    control, treatment : str
        Labels of the two arms in ``data["arm"]``; a single-arm (control only) fit is allowed.
    decision : mapping
        ``quantity`` (e.g. ``rate_difference``, ``odds_ratio``, ``mean_difference``,
        ``hazard_ratio``), ``delta``, ``threshold``, optional ``direction``. The criterion is
        ``P(quantity > delta) > threshold``, or ``P(quantity < delta)`` for hazard ratios.
    prior : MixturePrior or sequence of MixturePrior, optional
        Prior on the control parameter (``p_c``, ``mu_c``, ``lambda_c``; one per piece for
        ``tte_pwexp``), typically from :mod:`insilico_trials.infer.borrowing`. None: vague.
    covariates : sequence of str
        Columns used as standardised covariates (e.g. ``baseline``, ``prognostic_score``).
    sigma : float, optional
        Known residual sd for ``continuous`` (units of ``value``); None: estimated.
    cuts_months : sequence of float
        Piece start times (months) for ``tte_pwexp``; must start at 0 and increase.
    draws, tune, chains : int
        NUTS settings per chain.
    seed : int
        Sampler seed; the same data, settings and seed give bit-identical draws.
    gates : ConvergenceGates
        Convergence thresholds.

    Returns
    -------
    OutcomeFit
    """
    import xarray as xr

    if model not in MODELS:
        raise OutcomeDataError(f"model: must be one of {MODELS}, got {model!r}")
    if model == "tte_exponential":  # the piecewise-exponential model with one piece
        model, cuts_months = "tte_pwexp", (0.0,)
        prior = [prior] if isinstance(prior, MixturePrior) else prior
    crit = _criterion(model, decision)
    prep = _prepare(data, model, control, treatment, covariates)
    if prep.n_treatment == 0:
        crit = {**crit, "quantity": None}
    n_pieces = 1
    if model == "tte_pwexp":
        cuts = np.asarray(cuts_months, dtype=float)
        if cuts.size == 0 or cuts[0] != 0.0 or (np.diff(cuts) <= 0).any():
            raise OutcomeDataError(
                f"cuts_months: must start at 0 and increase, got {list(cuts_months)}"
            )
        n_pieces = int(cuts.size)
    priors, w, a, b = _prior_arrays(prior, model, n_pieces)

    init: dict[str, np.ndarray] = {"trt": prep.trt, "prior_w": w, "prior_a": a, "prior_b": b}
    if prep.z.shape[1]:
        init["z"] = prep.z
    extra: Any = None
    if model == "binary" and not prep.z.shape[1]:
        # Without covariates the responder counts per arm are sufficient statistics: a
        # Binomial on two counts has exactly the posterior of the n Bernoulli terms, at a cost
        # that does not grow with the number of patients (a 1,000,000-patient trial fits in
        # seconds instead of many minutes).
        y = prep.values["y"]
        init["trt"] = np.array([0, 1], dtype=np.int64)
        init["y_data"] = np.array([y[prep.trt == 0].sum(), y[prep.trt == 1].sum()], dtype=np.int64)
        init["n_data"] = np.array([prep.n_control, prep.n_treatment], dtype=np.int64)
        extra = "counts"
    elif model in ("binary", "continuous"):
        init["y_data"] = prep.values["y"]
        if model == "continuous" and sigma is not None:
            if not sigma > 0:
                raise OutcomeDataError(f"sigma: must be > 0 (units of value), got {sigma!r}")
            init["sigma_known"] = np.asarray(float(sigma))
            extra = "known_sigma"
    elif model == "tte_weibull":
        init["time_months"] = prep.values["time"] / DAYS_PER_MONTH
        init["event"] = prep.values["event"]
    else:
        exposure, d = _pieces(prep.values["time"] / DAYS_PER_MONTH, prep.values["event"], cuts)
        init["exposure"], init["d"] = exposure, d
        extra = n_pieces
    key = (model, int(w.shape[-1]), int(prep.z.shape[1]), extra)

    import nutpie

    compiled = _compiled(key, init).with_data(**init)
    idata = nutpie.sample(
        compiled,
        draws=int(draws),
        tune=int(tune),
        chains=int(chains),
        cores=min(int(chains), os.cpu_count() or 1),
        seed=int(seed),
        progress_bar=False,
        target_accept=TARGET_ACCEPT[model],
        # Weibull log-scale and shape are strongly correlated; a low-rank mass matrix adapts
        # to that where a diagonal one mixes slowly.
        adaptation="low_rank" if model == "tte_weibull" else "diag",
    )
    ss = idata["sample_stats"].to_dataset()
    keep_ss = [v for v in ss.data_vars if ss[v].dtype != object]
    idata = xr.DataTree.from_dict(
        {"posterior": idata["posterior"].to_dataset(), "sample_stats": ss[keep_ss]}
    )
    control_name = OUTCOME_FAMILIES[model].control_parameter
    post_vars = list(idata["posterior"].data_vars)
    if prep.n_treatment == 0:
        # A control-only fit: arm-contrast quantities are prior draws, so leave them out.
        var_names = [control_name] + (["sigma"] if "sigma" in post_vars else [])
        var_names += [v for v in ("k", "gamma") if v in post_vars]
    else:
        var_names = post_vars
    summary = _summary(idata, var_names)
    divergences = int(np.asarray(idata["sample_stats"]["diverging"].values).sum())
    diagnostics = _gates(summary, divergences, gates)
    converged = not diagnostics["failed"]

    probability = float("nan")
    verdict = "not reported (no treatment arm)"
    if crit["quantity"] is not None:
        q = np.asarray(idata["posterior"][crit["quantity"]].values).ravel()
        hits = q > crit["delta"] if crit["direction"] == "greater" else q < crit["delta"]
        probability = float(hits.mean())
        if not converged:
            verdict = "not reported (convergence failed)"
        else:
            verdict = "go" if probability > crit["threshold"] else "no-go"

    component_weights = None
    if priors[0].n_components > 1 and len(priors) == 1:
        cw = mixture_component_weights(priors[0], idata["posterior"][control_name].values)
        labels = priors[0].labels or tuple(f"component_{i}" for i in range(len(cw)))
        component_weights = {lab: float(x) for lab, x in zip(labels, cw, strict=True)}

    settings = {
        "draws": draws,
        "tune": tune,
        "chains": chains,
        "seed": seed,
        "covariates": list(prep.covariate_names),
        "sigma": sigma,
        "cuts_months": list(map(float, cuts_months)) if model == "tte_pwexp" else None,
        "n_control": prep.n_control,
        "n_treatment": prep.n_treatment,
        "structure_key": repr(key),
    }
    idata["posterior"].attrs.update({"model": model, "seed": int(seed)})
    return OutcomeFit(
        model=model,
        summary=summary,
        probability=probability,
        decision=verdict,
        converged=converged,
        diagnostics=diagnostics,
        idata=idata,
        criterion=crit,
        prior=prior,
        component_weights=component_weights,
        settings=settings,
    )
