"""The protocol's decision from posteriors that have a closed form: one engine for design,
run and update.

``design`` tabulates these kernels over every count of a look; ``update`` evaluates them once,
for the real patients of both arms of a cut against the hybrid control (the real control
patients with the synthetic control's prior). The kernels are exact up to quadrature error
(checked against brute force and MCMC in ``tests/test_decision.py``):

``binary`` (the analysis' ``binary`` model without covariates)
    ``p_c`` has the beta-mixture prior, ``p_t ~ Beta(1, 1)``; ``P(p_t - p_c > delta)`` is
    one integral over the narrower of the two posteriors, of its density times the other's
    distribution function.
``tte_exponential``
    control hazard with the gamma-mixture prior, ``lambda_t = lambda_c exp(beta)``,
    ``beta ~ Normal(0, 2.5)``; :class:`TteLogHrPosterior` integrates ``lambda_c`` out in
    closed form and ``beta`` by quadrature.

Models without a closed form (Weibull, piecewise exponential, covariates, a commensurate
prior) are fitted by MCMC with :func:`insilico_trials.infer.outcomes.fit_outcome`, the run's
own analysis (:func:`hybrid_effect` chooses).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

from insilico_trials.infer.conjugate import VAGUE_BETA, MixturePrior, beta_mixture_posterior
from insilico_trials.units import DAYS_PER_MONTH

__all__ = [
    "LOG_HR_PRIOR_SD",
    "TTE_NODES",
    "Effect",
    "SequentialRule",
    "TteLogHrPosterior",
    "binary_decision_table",
    "binary_effect",
    "binary_predictive_success",
    "exact_effect_refusal",
    "hybrid_effect",
    "tte_exponential_effect",
    "tte_posterior_draws",
    "tte_predictive_success",
]


@functools.cache
def _gauss_legendre01(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    # scipy's O(n) Golub-Welsch variant; numpy's leggauss is O(n^3) in the node count
    x, w = special.roots_legendre(nodes)
    return 0.5 * (x + 1.0), 0.5 * w


def binary_decision_table(
    prior: MixturePrior,
    n_control: int,
    n_treatment: int,
    *,
    delta: float,
    nodes: int = 2000,
) -> tuple[np.ndarray, np.ndarray]:
    """``P(p_t - p_c > delta | x_c, x_t)`` and ``E(p_t - p_c | x_c, x_t)`` on the count lattice.

    ``p_c`` has the beta-mixture posterior of ``prior`` after ``x_c`` of ``n_control``
    (:func:`insilico_trials.infer.conjugate.beta_mixture_posterior`), ``p_t ~ Beta(1 + x_t,
    1 + n_t - x_t)`` (the outcome model's ``Beta(1, 1)`` prior). With Gauss-Legendre nodes
    ``u_i``, weights ``v_i`` on [0, 1]:

    ``P[x_c, x_t] = sum_i v_i sum_k w_k' Beta(u_i; a_k', b_k') S_t(u_i + delta; x_t)
    + sum_k w_k' I_{-delta}(a_k', b_k')``

    where ``S_t`` is the Beta survival function, the nodes span the smooth part
    ``[max(0, -delta), min(1, 1 - delta)]`` and the last term (``delta < 0`` only) is the mass
    where ``S_t = 1``.

    Returns
    -------
    prob, mean : arrays of shape ``(n_control + 1, n_treatment + 1)``.
    """
    # The integrand has a kink where p + delta leaves [0, 1]; integrate only the smooth part
    # [lo, hi] and add the flat part (S_t = 1 for p < -delta) in closed form.
    u, v = _nodes(float(delta), nodes)
    lo = max(0.0, -delta)
    dens = np.empty((n_control + 1, nodes))
    flat = np.zeros(n_control + 1)
    mean_c = np.empty(n_control + 1)
    for x in range(n_control + 1):
        w, a, b = beta_mixture_posterior(prior.weights, prior.a, prior.b, x, n_control)
        dens[x] = (w[:, None] * stats.beta.pdf(u[None, :], a[:, None], b[:, None])).sum(0)
        if lo > 0.0:
            flat[x] = float(w @ special.betainc(a, b, lo))
        mean_c[x] = float(w @ (a / (a + b)))
    xt = np.arange(n_treatment + 1)
    at, bt = VAGUE_BETA[0] + xt, VAGUE_BETA[1] + n_treatment - xt
    surv = _treatment_survival(n_treatment, float(delta), nodes)
    prob = np.clip((dens * v) @ surv.T + flat[:, None], 0.0, 1.0)
    mean = (at / (at + bt))[None, :] - mean_c[:, None]
    return prob, mean


def _nodes(delta: float, nodes: int) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = max(0.0, -delta), min(1.0, 1.0 - delta)
    u, v = _gauss_legendre01(nodes)
    return lo + (hi - lo) * u, (hi - lo) * v


@functools.lru_cache(maxsize=256)
def _treatment_survival(n_treatment: int, delta: float, nodes: int) -> np.ndarray:
    """``S_t(u_i + delta; x_t)`` for every count ``x_t`` and node (shared by all methods)."""
    u, _ = _nodes(delta, nodes)
    xt = np.arange(n_treatment + 1)
    at, bt = VAGUE_BETA[0] + xt, VAGUE_BETA[1] + n_treatment - xt
    surv = special.betaincc(at[:, None], bt[:, None], np.clip(u[None, :] + delta, 0.0, 1.0))
    surv.setflags(write=False)
    return surv


def _beta_mixture_cdf(w: np.ndarray, a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    return (w[:, None] * special.betainc(a[:, None], b[:, None], np.clip(x, 0.0, 1.0))).sum(0)


def _beta_mixture_pdf(w: np.ndarray, a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    return (w[:, None] * stats.beta.pdf(x[None, :], a[:, None], b[:, None])).sum(0)


def _window(a: np.ndarray, b: np.ndarray, tail: float = 1e-15) -> tuple[float, float]:
    return float(special.betaincinv(a, b, tail).min()), float(
        special.betaincinv(a, b, 1.0 - tail).max()
    )


def _binary_prob_greater(
    post_c: tuple[np.ndarray, np.ndarray, np.ndarray],
    post_t: tuple[np.ndarray, np.ndarray, np.ndarray],
    d: float,
    nodes: int,
) -> float:
    """``P(p_t - p_c > d)`` for independent beta mixtures: integrate the narrower density
    against the other's distribution function, per component, on its own support window."""
    sd = [
        float(np.sqrt((w * (a * b / ((a + b) ** 2 * (a + b + 1)))).sum()))
        for w, a, b in (post_c, post_t)
    ]
    u, v = _gauss_legendre01(nodes)
    total = 0.0
    if sd[0] <= sd[1]:  # over p_c: P = E_c[ 1 - F_t(p_c + d) ]
        w, a, b = post_c
        for k in range(w.size):
            lo, hi = _window(a[k : k + 1], b[k : k + 1])
            x = lo + (hi - lo) * u
            f = stats.beta.pdf(x, a[k], b[k])
            total += (
                w[k] * float(((1.0 - _beta_mixture_cdf(*post_t, x + d)) * f * v).sum()) * (hi - lo)
            )
    else:  # over p_t: P = E_t[ F_c(p_t - d) ]
        w, a, b = post_t
        for k in range(w.size):
            lo, hi = _window(a[k : k + 1], b[k : k + 1])
            x = lo + (hi - lo) * u
            f = stats.beta.pdf(x, a[k], b[k])
            total += w[k] * float((_beta_mixture_cdf(*post_c, x - d) * f * v).sum()) * (hi - lo)
    return float(min(max(total, 0.0), 1.0))


# The analysis's prior on the log hazard ratio (outcomes._pwexp_likelihood): Normal(0, 2.5).
LOG_HR_PRIOR_SD = 2.5
TTE_NODES = 128


class TteLogHrPosterior:
    """The exact posterior of ``beta = log HR`` of the constant-hazard analysis, per replicate.

    The analysis (``tte_exponential``: :func:`insilico_trials.infer.outcomes.fit_outcome`) has
    control hazard ``lambda_c`` with the gamma-mixture ``prior``, treatment hazard
    ``lambda_c exp(beta)``, ``beta ~ Normal(0, 2.5)``. Integrating ``lambda_c`` out in closed
    form (``D = d_c + d_t``, exposures in months):

    ``p(beta | data) ∝ N(beta; 0, 2.5) exp(beta d_t)
    sum_k w_k b_k^a_k Γ(a_k + D) / (Γ(a_k) (b_k + E_c + exp(beta) E_t)^(a_k + D))``

    a one-dimensional density. Its integrals are Gauss-Legendre quadratures (``nodes`` points
    per interval) on a per-replicate window covering every component's mode by 10 posterior
    sds; probabilities ``P(beta < c)`` split the window at ``c`` so the step is never inside
    an interval (the quadrature error is that of a smooth integrand: below 1e-9 in the tests).
    """

    def __init__(self, prior: MixturePrior, dc, ec, dt_, et, *, nodes: int = TTE_NODES) -> None:
        w, a, b = (np.asarray(v, dtype=float) for v in (prior.weights, prior.a, prior.b))
        dc, ec, dt_, et = (np.asarray(v, dtype=float).reshape(-1, 1) for v in (dc, ec, dt_, et))
        self.ec, self.et, self.dt = np.maximum(ec, 1e-12), np.maximum(et, 1e-12), dt_
        self.a, self.b = a, b
        self.dsum = dc + dt_
        with np.errstate(divide="ignore"):
            self.log_k = (
                np.log(w) + a * np.log(b) + special.gammaln(a + self.dsum) - special.gammaln(a)
            )
        centre = np.log((dt_ + 0.5) / self.et) - np.log((a + dc) / (b + self.ec))
        sd = np.minimum(np.sqrt(1.0 / (dt_ + 1.0) + 1.0 / (a + dc)), LOG_HR_PRIOR_SD)
        self.lo = np.maximum((centre - 10.0 * sd).min(1), -10.0 * LOG_HR_PRIOR_SD)
        self.hi = np.minimum((centre + 10.0 * sd).max(1), 10.0 * LOG_HR_PRIOR_SD)
        self.nodes = nodes
        # the log of the density's scale: its value at the centre of the window (avoids overflow)
        self.shift = self.log_density(0.5 * (self.lo + self.hi)[:, None])[:, 0]
        self.total = self._integral(self.lo, self.hi)

    def log_density(self, beta: np.ndarray) -> np.ndarray:
        """Unnormalised log posterior at ``beta`` (R, m)."""
        denom = np.log(
            self.b + self.ec[:, :, None] * 1.0 + np.exp(beta)[:, :, None] * self.et[:, :, None]
        )
        log_mix = special.logsumexp(
            self.log_k[:, None, :] - (self.a + self.dsum)[:, None, :] * denom, axis=2
        )
        return -0.5 * (beta / LOG_HR_PRIOR_SD) ** 2 + beta * self.dt + log_mix

    def _integral(self, lo: np.ndarray, hi: np.ndarray, moment: bool = False) -> np.ndarray:
        u, v = _gauss_legendre01(self.nodes)
        width = np.maximum(hi - lo, 0.0)[:, None]
        beta = lo[:, None] + width * u[None, :]
        f = np.exp(self.log_density(beta) - self.shift[:, None])
        if moment:
            f = f * beta
        return (f * v[None, :] * width).sum(1)

    def expect(self, fn: Any) -> np.ndarray:
        """``E[fn(beta) | data]`` per replicate (same quadrature as the normalising constant)."""
        u, v = _gauss_legendre01(self.nodes)
        width = np.maximum(self.hi - self.lo, 0.0)[:, None]
        beta = self.lo[:, None] + width * u[None, :]
        f = np.exp(self.log_density(beta) - self.shift[:, None])
        return (f * fn(beta) * v[None, :] * width).sum(1) / self.total

    def cdf(self, c: float) -> np.ndarray:
        """``P(beta < c | data)`` per replicate."""
        cut = np.clip(c, self.lo, self.hi)
        below = self._integral(self.lo, cut)
        above = self._integral(cut, self.hi)
        return below / (below + above)

    def mean(self) -> np.ndarray:
        return self._integral(self.lo, self.hi, moment=True) / self.total


# --------------------------------------------------------------------------- predictive


def _beta_binomial_rows(w: np.ndarray, a: np.ndarray, b: np.ndarray, remaining: int) -> np.ndarray:
    """Predictive pmf of the successes among ``remaining`` future patients, for a beta mixture
    (rows: components summed with weights), shape (remaining + 1,)."""
    y = np.arange(remaining + 1)
    return (w[:, None] * stats.betabinom.pmf(y[None, :], remaining, a[:, None], b[:, None])).sum(0)


def binary_predictive_success(
    prior: MixturePrior,
    n_control: int,
    n_treatment: int,
    final_control: int,
    final_treatment: int,
    *,
    delta: float,
    success_threshold: float,
    direction: str = "greater",
    nodes: int = 2000,
    control_source: str = "posterior",
) -> np.ndarray:
    """Predictive probability of success at the final analysis, on the count lattice of a look.

    ``control_source="virtual"``: the control patients still to come are drawn from the
    virtual cohort's model (the synthetic control's prior, not updated by the real controls)
    instead of the posterior predictive; the final analysis is the same.

    ``PoS[x_c, x_t]``: with ``x_c`` of ``n_control`` and ``x_t`` of ``n_treatment`` responders
    now, the probability that the final analysis (``final_control``, ``final_treatment``
    patients) finds ``P(p_t - p_c > delta) > success_threshold`` (``<`` when ``direction`` is
    ``less``), the patients still to come drawn from the current posterior predictive: a
    beta-binomial mixture for the control arm (its beta-mixture posterior), a beta-binomial for
    the treatment arm. Exact: ``PoS = P_c S P_t^T`` with ``S`` the final look's success
    indicator on its lattice (:func:`binary_decision_table`) and ``P_c``, ``P_t`` the
    predictive transition matrices from now to the final counts. Shape
    ``(n_control + 1, n_treatment + 1)``.
    """
    if final_control < n_control or final_treatment < n_treatment:
        raise ValueError(
            f"final sizes ({final_control}, {final_treatment}) below the look's "
            f"({n_control}, {n_treatment})"
        )
    prob, _ = binary_decision_table(prior, final_control, final_treatment, delta=delta, nodes=nodes)
    if direction == "less":
        prob = 1.0 - prob
    success = (prob > success_threshold).astype(float)
    mc, mt = final_control - n_control, final_treatment - n_treatment
    pc = np.zeros((n_control + 1, final_control + 1))
    if control_source not in ("posterior", "virtual"):
        raise ValueError(f"control_source: posterior or virtual, got {control_source!r}")
    for x in range(n_control + 1):
        if control_source == "virtual":
            w, a, b = (np.asarray(v, dtype=float) for v in (prior.weights, prior.a, prior.b))
        else:
            w, a, b = (np.asarray(v, dtype=float) for v in beta_mixture_posterior(
                prior.weights, prior.a, prior.b, x, n_control
            ))  # fmt: skip
        pc[x, x : x + mc + 1] = _beta_binomial_rows(w, a, b, mc)
    ptr = np.zeros((n_treatment + 1, final_treatment + 1))
    for x in range(n_treatment + 1):
        ptr[x, x : x + mt + 1] = _beta_binomial_rows(
            np.array([1.0]),
            np.array([VAGUE_BETA[0] + x], dtype=float),
            np.array([VAGUE_BETA[1] + n_treatment - x], dtype=float),
            mt,
        )
    return np.clip(pc @ success @ ptr.T, 0.0, 1.0)


def tte_posterior_draws(
    prior: MixturePrior,
    dc: float,
    ec: float,
    dt: float,
    et: float,
    *,
    size: int,
    rng: np.random.Generator,
    grid: int = 20_001,
) -> tuple[np.ndarray, np.ndarray]:
    """Draws of ``(lambda_c, beta)`` from the constant-hazard analysis' posterior: ``beta`` by
    inverse transform of its marginal (:class:`TteLogHrPosterior` on a fine grid), then
    ``lambda_c | beta`` exactly, a gamma mixture with the marginal's own component weights."""
    post = TteLogHrPosterior(prior, [dc], [ec], [dt], [et])
    b = np.linspace(post.lo[0], post.hi[0], grid)
    lf = post.log_density(b[None, :])[0]
    f = np.exp(lf - lf.max())
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (f[1:] + f[:-1]) * np.diff(b))])
    cdf /= cdf[-1]
    beta = np.interp(rng.uniform(size=size), cdf, b)
    w, a, bb = (np.asarray(v, dtype=float) for v in (prior.weights, prior.a, prior.b))
    d = dc + dt
    rate = bb[None, :] + ec + np.exp(beta)[:, None] * et
    with np.errstate(divide="ignore"):
        logw = (
            np.log(w)[None, :] + (a * np.log(bb) + special.gammaln(a + d) - special.gammaln(a))
            - (a + d)[None, :] * np.log(rate)
        )  # fmt: skip
    p = np.exp(logw - logw.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    k = (rng.uniform(size=size)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    k = np.minimum(k, w.size - 1)
    lam = rng.gamma(a[k] + d, 1.0 / rate[np.arange(size), k])
    return lam, beta


def tte_predictive_success(
    prior: MixturePrior,
    control: pd.DataFrame,
    treatment: pd.DataFrame,
    final_control: int,
    final_treatment: int,
    *,
    accrual_per_month: float,
    follow_up_months: float,
    dropout_per_month: float,
    delta: float,
    success_threshold: float,
    direction: str = "less",
    draws: int = 4000,
    seed: int = 0,
    cut_month: float | None = None,
) -> tuple[float, float]:
    """Predictive probability of success of the constant-hazard analysis at the planned final
    analysis, by simulation of the remaining trial; returns ``(pos, monte_carlo_error)``.

    The timeline is the design's (``infer/design.tte_patients``): patients enter uniformly at
    ``accrual_per_month`` from month 0, and the final analysis is at month
    ``(N_c + N_t) / accrual + follow_up``. The cut is at ``cut_month`` (default: the month
    the real patients' enrolment takes, ``(n_c + n_t) / accrual``). Per
    draw of ``(lambda_c, beta)`` from the current posterior (:func:`tte_posterior_draws`):
    every real patient without an event is still at risk and followed to the final analysis
    (memoryless exponential times, dropout at ``dropout_per_month``); the patients still to
    come enter uniformly between the cut and the end of accrual. The final analysis
    (:class:`TteLogHrPosterior`, exact) is applied to each simulated trial; the share of
    successes is the probability, with its binomial Monte Carlo error.
    """
    rng = np.random.default_rng(seed)
    lam_c, beta = tte_posterior_draws(
        prior,
        float(control["event"].sum()), float(control["time"].sum() / DAYS_PER_MONTH),
        float(treatment["event"].sum()), float(treatment["time"].sum() / DAYS_PER_MONTH),
        size=draws, rng=rng,
    )  # fmt: skip
    n_now = len(control) + len(treatment)
    t_cut = n_now / accrual_per_month if cut_month is None else float(cut_month)
    t_end = (final_control + final_treatment) / accrual_per_month + follow_up_months
    totals = []
    for frame, final, lam in (
        (control, final_control, lam_c),
        (treatment, final_treatment, lam_c * np.exp(beta)),
    ):
        d0 = float(frame["event"].sum())
        e0 = float(frame["time"].sum() / DAYS_PER_MONTH)
        at_risk = int((frame["event"] == 0).sum())
        new = max(final - len(frame), 0)
        end_accrual = max((final_control + final_treatment) / accrual_per_month, t_cut)
        horizon = np.concatenate([
            np.full(at_risk, max(t_end - t_cut, 0.0)),
            t_end - rng.uniform(t_cut, end_accrual, size=(new,)) if new else np.zeros(0),
        ])  # fmt: skip
        m = horizon.size
        ev = rng.exponential(1.0, size=(draws, m)) / lam[:, None]
        drop = (
            rng.exponential(1.0, size=(draws, m)) / dropout_per_month
            if dropout_per_month > 0
            else np.full((draws, m), np.inf)
        )
        stop = np.minimum(np.minimum(ev, drop), horizon[None, :])
        events = (ev <= np.minimum(drop, horizon[None, :])).sum(axis=1)
        totals.append((d0 + events, e0 + stop.sum(axis=1)))
    (dc, ec), (dt, et) = totals
    final_post = TteLogHrPosterior(prior, dc, ec, dt, et)
    below = final_post.cdf(math.log(delta))
    prob = below if direction == "less" else 1.0 - below
    success = prob > success_threshold
    pos = float(success.mean())
    return pos, math.sqrt(max(pos * (1 - pos), 0.0) / draws)


@dataclass(frozen=True)
class SequentialRule:
    """The protocol's sequential decision rule, one engine for ``design`` and ``update``.

    At interim look ``j`` (0-based, before the last): stop for efficacy when the criterion's
    probability exceeds ``efficacy[j]``; stop for futility when it is below ``futility[j]``
    or the predictive probability of success is below ``futility_pos[j]`` (0: no such rule).
    At the final look: success when the probability exceeds ``success``.
    """

    efficacy: tuple[float, ...]
    futility: tuple[float, ...]
    success: float
    futility_pos: tuple[float, ...] = ()

    def interim(
        self, j: int, prob: np.ndarray, pos: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(efficacy stop, futility stop) at interim ``j``, elementwise."""
        eff = prob > self.efficacy[j]
        fut = ~eff & (prob < self.futility[j])
        if pos is not None and self.futility_pos and self.futility_pos[j] > 0:
            fut |= ~eff & (pos < self.futility_pos[j])
        return eff, fut

    def verdict(self, j: int, n_looks: int, prob: float, pos: float | None = None) -> str:
        """The rule's verdict at look ``j`` of ``n_looks`` for one trial."""
        if j == n_looks - 1:
            return "success (final analysis)" if prob > self.success else "failure (final analysis)"
        eff, fut = self.interim(j, np.array([prob]), None if pos is None else np.array([pos]))
        if eff[0]:
            return "stop for efficacy"
        if fut[0]:
            return "stop for futility"
        return "continue"


# --------------------------------------------------------------------------- one cut


@dataclass(frozen=True)
class Effect:
    """The treatment effect of one treatment arm against the (hybrid) control, and the decision.

    ``probability`` is ``P(quantity > delta)`` (``<`` when ``direction`` is ``less``), with
    ``probability_mcse`` its Monte Carlo standard error (0 when exact); ``mean`` and ``ci``
    (95 % equal-tailed) its posterior mean and interval.
    """

    treatment: str
    quantity: str
    direction: str
    delta: float
    threshold: float
    probability: float
    probability_mcse: float
    decision: str
    mean: float
    ci: tuple[float, float]
    n_control: int
    n_treatment: int
    engine: str
    converged: bool

    def record(self) -> dict[str, Any]:
        out = asdict(self)
        out["ci"] = [float(x) for x in self.ci]
        return out


def indicator_mcse(hits: np.ndarray, batches: int = 20) -> float:
    """Monte Carlo standard error of ``P = mean(hits)`` from MCMC draws (chains, draws) of the
    criterion's indicator, by batch means within each chain (autocorrelation of the indicator
    itself, not of the parameter); with no variation over the draws, the bound
    ``1 / (number of draws)``."""
    h = np.atleast_2d(np.asarray(hits, dtype=float))
    n = h.shape[1] // batches
    if n < 1:
        return float("nan")
    means = h[:, : n * batches].reshape(h.shape[0], batches, n).mean(axis=2).ravel()
    se = float(means.std(ddof=1) / math.sqrt(means.size))
    return se if se > 0 else 1.0 / h.size


def _verdict(probability: float, threshold: float, converged: bool) -> str:
    if not converged:
        return "not reported (convergence failed)"
    return "go" if probability > threshold else "no-go"


def _quantile(cdf: Any, q: float, lo: float, hi: float) -> float:
    return float(optimize.brentq(lambda x: cdf(x) - q, lo, hi, xtol=1e-10, rtol=1e-12))


def binary_effect(
    prior: MixturePrior,
    xc: int,
    nc: int,
    xt: int,
    nt: int,
    *,
    delta: float,
    direction: str = "greater",
    nodes: int = 4000,
) -> tuple[float, float, tuple[float, float]]:
    """Exact ``P(p_t - p_c > delta)`` (or ``<``), the mean difference and its 95 % interval.

    ``p_c``: the beta-mixture posterior of ``prior`` after ``xc`` of ``nc``; ``p_t``:
    ``Beta(1 + xt, 1 + nt - xt)`` (the analysis' vague prior).
    """
    post_c = tuple(np.asarray(v, dtype=float) for v in beta_mixture_posterior(
        prior.weights, prior.a, prior.b, xc, nc
    ))  # fmt: skip
    post_t = (
        np.array([1.0]),
        np.array([VAGUE_BETA[0] + xt], dtype=float),
        np.array([VAGUE_BETA[1] + nt - xt], dtype=float),
    )

    def greater(d: float) -> float:
        return _binary_prob_greater(post_c, post_t, d, nodes)  # type: ignore[arg-type]

    p = greater(delta)
    prob = p if direction == "greater" else 1.0 - p
    w, a, b = post_c
    mean = float(post_t[1][0] / (post_t[1][0] + post_t[2][0]) - (w * a / (a + b)).sum())
    lo = _quantile(lambda d: 1.0 - greater(d), 0.025, -1.0, 1.0)
    hi = _quantile(lambda d: 1.0 - greater(d), 0.975, -1.0, 1.0)
    return prob, mean, (lo, hi)


def tte_exponential_effect(
    prior: MixturePrior,
    dc: float,
    ec_months: float,
    dt: float,
    et_months: float,
    *,
    delta: float,
    direction: str = "less",
) -> tuple[float, float, tuple[float, float]]:
    """Exact ``P(HR < delta)`` (or ``>``) of the constant-hazard analysis, the hazard ratio's
    posterior mean and its 95 % interval (quadrature: :class:`TteLogHrPosterior`)."""
    post = TteLogHrPosterior(prior, [dc], [ec_months], [dt], [et_months])
    below = float(post.cdf(math.log(delta))[0])
    prob = below if direction == "less" else 1.0 - below
    lo_b, hi_b = float(post.lo[0]), float(post.hi[0])

    def cdf(x: float) -> float:
        return float(post.cdf(x)[0])

    ci = (
        math.exp(_quantile(cdf, 0.025, lo_b, hi_b)),
        math.exp(_quantile(cdf, 0.975, lo_b, hi_b)),
    )
    return prob, float(post.expect(np.exp)[0]), ci


def exact_effect_refusal(model: str, prior: MixturePrior | None, covariates: Any) -> str | None:
    """Why the effect of ``model`` has no closed form here, or None when it has one."""
    if prior is None:
        return "the control prior is fitted jointly (commensurate): no closed form"
    if covariates:
        return "covariates in the outcome model: no closed form"
    if model not in ("binary", "tte_exponential"):
        return f"model {model}: no closed form (MCMC)"
    return None


def hybrid_effect(
    protocol: Any,
    frame: pd.DataFrame,
    prior: MixturePrior | None,
    *,
    treatment: str,
    engine: str = "auto",
) -> Effect:
    """The protocol's analysis of real patients of ``treatment`` against the hybrid control.

    ``frame`` has the outcome model's columns (``response``, or ``time`` in days and
    ``event``) and ``arm`` with protocol arm names; ``prior`` is the synthetic control's prior
    (the one the run's analysis used; None: vague, or commensurate). ``engine``: ``auto``
    (exact where :func:`exact_effect_refusal` allows, else MCMC), ``closed_form`` or ``mcmc``
    (the protocol's analysis by :func:`insilico_trials.infer.analysis.analyse_frame`).
    """
    a = protocol.analysis
    dec = a.decision
    control = protocol.control_arm.name
    ctrl = frame[frame["arm"] == control]
    trt = frame[frame["arm"] == treatment]
    why = exact_effect_refusal(a.model, prior, a.covariates)
    if engine not in ("auto", "closed_form", "mcmc"):
        raise ValueError(f"engine: must be auto, closed_form or mcmc, got {engine!r}")
    if engine == "closed_form" and why is not None:
        raise ValueError(f"engine closed_form: {why}")
    use_exact = engine != "mcmc" and why is None
    common = {
        "treatment": treatment, "quantity": dec.quantity, "direction": dec.side,
        "delta": float(dec.delta), "threshold": float(dec.threshold),
        "n_control": len(ctrl), "n_treatment": len(trt),
    }  # fmt: skip
    if use_exact and len(trt):
        assert prior is not None
        if a.model == "binary":
            prob, mean, ci = binary_effect(
                prior,
                int(ctrl["response"].sum()), len(ctrl), int(trt["response"].sum()), len(trt),
                delta=float(dec.delta), direction=dec.side,
            )  # fmt: skip
        else:
            prob, mean, ci = tte_exponential_effect(
                prior,
                float(ctrl["event"].sum()), float(ctrl["time"].sum() / DAYS_PER_MONTH),
                float(trt["event"].sum()), float(trt["time"].sum() / DAYS_PER_MONTH),
                delta=float(dec.delta), direction=dec.side,
            )  # fmt: skip
        return Effect(
            **common, probability=prob, probability_mcse=0.0,
            decision=_verdict(prob, dec.threshold, True), mean=mean, ci=ci,
            engine="closed_form", converged=True,
        )  # fmt: skip
    if not len(trt):
        return Effect(
            **common, probability=float("nan"), probability_mcse=float("nan"),
            decision="not reported (no real patients of this arm yet)", mean=float("nan"),
            ci=(float("nan"), float("nan")), engine="none", converged=True,
        )  # fmt: skip
    from insilico_trials.infer.analysis import analyse_frame

    fit = analyse_frame(protocol, frame, prior, treatment=treatment)
    row = fit.summary[fit.summary["param"] == dec.quantity].iloc[0]
    draws = np.asarray(fit.idata["posterior"][dec.quantity].values, dtype=float)
    hits = draws > dec.delta if dec.side == "greater" else draws < dec.delta
    p = fit.probability
    mean = float(row["mean"])
    return Effect(
        **common, probability=p, probability_mcse=indicator_mcse(hits),
        decision=fit.decision, mean=mean, ci=(float(row["eti_2.5%"]), float(row["eti_97.5%"])),
        engine="mcmc", converged=bool(fit.converged),
    )  # fmt: skip


def effect_records(effects: Mapping[str, Effect]) -> list[dict[str, Any]]:
    """``update.json``'s ``effects``: one record per treatment arm, in protocol order."""
    return [e.record() for e in effects.values()]
