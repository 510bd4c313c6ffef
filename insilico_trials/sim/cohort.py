"""Population priors -> virtual cohort: covariates, eligibility, individual parameters.

Every per-patient draw is keyed by ``(seed, "cohort", replicate, arm, purpose)`` and the
patient's *candidate index* (its place in the draw order), through the counter-based
:func:`insilico_trials.sim.rng.patient_normals`. The enrolled patients are the first ``n`` eligible
candidates, so the cohort is the same however candidates are split into chunks or workers.
Population-level (parameter-uncertainty) values are drawn once per replicate from
``stream(seed, "population", replicate)``, shared by all arms of that replicate.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import expit, logit, ndtr, ndtri

if TYPE_CHECKING:
    import pandas as pd

from insilico_trials.errors import RunFailure
from insilico_trials.sim.rng import patient_normals, stream
from insilico_trials.spec.population import (
    CategoricalCovariate,
    ContinuousCovariate,
    Expression,
    Population,
)

__all__ = [
    "Calibration",
    "CalibrationError",
    "Candidates",
    "Cohort",
    "EnrolmentError",
    "PopulationDraw",
    "baseline_table",
    "calibrate",
    "calibrated_cohort",
    "individual_parameters",
    "population_draw",
    "read_cohort",
    "sample_candidates",
    "sample_cohort",
    "write_cohort",
]


class EnrolmentError(RunFailure):
    """The arm cannot be filled: the eligibility criteria (almost) never hold."""


# --------------------------------------------------------------------------------------------
# Population-level draw (parameter uncertainty)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PopulationDraw:
    """Population-level values used for one replicate.

    Attributes
    ----------
    typical
        Typical value per parameter (in the parameter's unit).
    iiv_names
        Parameters with between-subject variability, the order of ``omega``.
    omega
        Covariance of the ETAs, shape ``(len(iiv_names), len(iiv_names))``.
    """

    typical: dict[str, float]
    iiv_names: tuple[str, ...]
    omega: np.ndarray


def population_draw(
    pop: Population, *, seed: int, replicate: int = 0, uncertainty: bool = False
) -> PopulationDraw:
    """Typical values and OMEGA for a replicate: declared ones, or one uncertainty draw.

    With ``uncertainty=True`` the draw comes from ``stream(seed, "population", replicate)``,
    so every arm of a replicate shares it (see :mod:`insilico_trials.spec.population` for the laws).
    """
    names = tuple(pop.iiv_names)
    omega = pop.omega_matrix()
    typical = {n: p.typical for n, p in pop.parameters.items()}
    if not uncertainty:
        return PopulationDraw(typical, names, omega)
    rng = stream(seed, "population", replicate)
    z = rng.standard_normal(len(pop.parameters))
    for zi, (n, p) in zip(z, pop.parameters.items(), strict=True):
        r = p.uncertainty_rse
        if r == 0:
            continue
        if p.distribution == "lognormal":
            typical[n] = p.typical * math.exp(zi * math.sqrt(math.log1p(r * r)))
        elif p.distribution == "normal":
            typical[n] = p.typical + zi * r * abs(p.typical)
        else:
            typical[n] = float(expit(logit(p.typical) + zi * r / (1 - p.typical)))
    if pop.omega_df is not None and names:
        from scipy.stats import invwishart

        df, k = pop.omega_df, len(names)
        omega = np.atleast_2d(invwishart.rvs(df=df, scale=(df - k - 1) * omega, random_state=rng))
    return PopulationDraw(typical, names, omega)


# --------------------------------------------------------------------------------------------
# Candidates: covariates and eligibility for a set of candidate indices (the chunk kernel)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidates:
    """Covariates and eligibility of a set of candidates.

    ``values`` holds continuous, numeric-categorical and derived covariates; ``codes`` holds
    the category index of every categorical covariate (declared order of its labels);
    ``criteria`` holds one boolean array per inclusion then exclusion criterion (True = pass).
    """

    index: np.ndarray
    values: dict[str, np.ndarray]
    codes: dict[str, np.ndarray]
    criteria: list[np.ndarray]
    eligible: np.ndarray

    def take(self, mask_or_idx: np.ndarray) -> Candidates:
        return Candidates(
            self.index[mask_or_idx],
            {k: v[mask_or_idx] for k, v in self.values.items()},
            {k: v[mask_or_idx] for k, v in self.codes.items()},
            [c[mask_or_idx] for c in self.criteria],
            self.eligible[mask_or_idx],
        )

    @staticmethod
    def concat(parts: list[Candidates]) -> Candidates:
        first = parts[0]
        return Candidates(
            np.concatenate([p.index for p in parts]),
            {k: np.concatenate([p.values[k] for p in parts]) for k in first.values},
            {k: np.concatenate([p.codes[k] for p in parts]) for k in first.codes},
            [np.concatenate([p.criteria[j] for p in parts]) for j in range(len(first.criteria))],
            np.concatenate([p.eligible for p in parts]),
        )

    def env(self, pop: Population) -> dict[str, Any]:
        """Name -> array as seen by expressions (string categoricals as codes)."""
        env: dict[str, Any] = dict(self.values)
        for name, c in pop.covariates.items():
            if isinstance(c, CategoricalCovariate) and not c.numeric:
                env[name] = self.codes[name]
        return env


def _continuous(c: ContinuousCovariate, z: np.ndarray) -> np.ndarray:
    if c.distribution == "uniform":
        assert c.lower is not None and c.upper is not None
        return c.lower + ndtr(z) * (c.upper - c.lower)
    mu, s = c.log_params
    a, b = c.cdf_bounds(ndtr)
    # Inverse-CDF truncation keeps the rank of the normal score, hence the copula.
    score = z if (a, b) == (0.0, 1.0) else ndtri(a + ndtr(z) * (b - a))
    x = mu + s * score
    return np.exp(x) if c.distribution == "lognormal" else x


def _cumulative(freqs: Iterable[float]) -> np.ndarray:
    return np.cumsum(list(freqs))[:-1]


def sample_candidates(
    pop: Population,
    candidates: np.ndarray,
    *,
    seed: int,
    arm: str,
    replicate: int = 0,
) -> Candidates:
    """Covariates, derived covariates and eligibility of the given candidate indices.

    A pure function of ``(pop, seed, arm, replicate, candidate index)`` per candidate: the
    kernel that chunks and workers run.
    """
    idx = np.asarray(candidates, dtype=np.int64)
    covs = list(pop.covariates.items())
    # One row per covariate (contiguous), so the copula and the maps run on contiguous memory.
    z = np.ascontiguousarray(
        patient_normals(seed, ("cohort", replicate, arm, "covariates"), idx, len(covs)).T
    )
    pos = {n: j for j, (n, _) in enumerate(covs)}
    if pop.correlation is not None:
        cols = [pos[n] for n in pop.correlation.names]
        chol = np.linalg.cholesky(np.asarray(pop.correlation.matrix))
        z[cols] = chol @ z[cols]
    values: dict[str, np.ndarray] = {}
    codes: dict[str, np.ndarray] = {}
    for j, (name, c) in enumerate(covs):
        if isinstance(c, ContinuousCovariate):
            values[name] = _continuous(c, z[j])
            continue
        u = ndtr(z[j])
        if c.categories is not None:
            code = np.searchsorted(_cumulative(c.categories.values()), u, side="right")
        else:
            assert c.frequencies is not None and c.by is not None
            parent = pop.covariates[c.by]
            assert isinstance(parent, CategoricalCovariate)
            table = np.array(
                [_cumulative(c.frequencies[pl][lab] for lab in c.labels) for pl in parent.labels]
            ).reshape(len(parent.labels), len(c.labels) - 1)
            code = (u[:, None] >= table[codes[c.by]]).sum(axis=1)
        code = np.minimum(code, len(c.labels) - 1).astype(np.int16)
        codes[name] = code
        if c.numeric:
            values[name] = np.asarray(c.labels, dtype=np.int64)[code]
    names = pop.expression_names
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        env: dict[str, Any] = {**values}
        env.update(
            {
                n: codes[n]
                for n, c in pop.covariates.items()
                if isinstance(c, CategoricalCovariate) and not c.numeric
            }
        )
        for d in pop.derived_specs:
            r = np.broadcast_to(np.asarray(Expression(d.expression, names)(env), float), idx.shape)
            values[d.name] = env[d.name] = np.array(r)
        crit = [
            np.broadcast_to(np.asarray(Expression(s, names)(env), bool), idx.shape).copy()
            for s in pop.eligibility.inclusion
        ] + [
            ~np.broadcast_to(np.asarray(Expression(s, names)(env), bool), idx.shape)
            for s in pop.eligibility.exclusion
        ]
    eligible = np.ones(idx.shape, bool)
    for c in crit:
        eligible &= c
    return Candidates(idx, values, codes, crit, eligible)


def _screen_report(pop: Population, cand: Candidates) -> dict[tuple[str, int, str], float]:
    """Pass rate of each criterion alone among ``cand``."""
    keys = [("inclusion", j, s) for j, s in enumerate(pop.eligibility.inclusion)] + [
        ("exclusion", j, s) for j, s in enumerate(pop.eligibility.exclusion)
    ]
    n = max(len(cand.index), 1)
    return {k: float(c.sum()) / n for k, c in zip(keys, cand.criteria, strict=True)}


# --------------------------------------------------------------------------------------------
# Individual parameters
# --------------------------------------------------------------------------------------------


PILOT_CANDIDATES = 20_000


def eligibility_problems(pop: Population) -> list[tuple[tuple[str | int, ...], Any, str]]:
    """Criteria no patient can meet, found on a pilot sample: ``[(path in population, value,
    message)]``, empty when some pilot candidate is eligible (or there are no criteria).

    A criterion that no pilot candidate passes is named; when each passes alone but none
    jointly, the whole ``eligibility`` section is. The pilot is ``PILOT_CANDIDATES`` candidates
    drawn with seed 0, so the answer depends on the population only.
    """
    if not (pop.eligibility.inclusion or pop.eligibility.exclusion):
        return []
    cand = sample_candidates(pop, np.arange(PILOT_CANDIDATES), seed=0, arm="pilot", replicate=0)
    if cand.eligible.any():
        return []
    rates = _screen_report(pop, cand)
    worst = [
        (("eligibility", kind, j), src) for (kind, j, src), rate in rates.items() if rate == 0.0
    ]
    if worst:
        return [
            (
                loc,
                src,
                f"no patient passes this criterion among {PILOT_CANDIDATES} pilot candidates; "
                "it is impossible given the declared covariates",
            )
            for loc, src in worst
        ]
    summary = "; ".join(f"{k} {src!r}: {100 * r:.2f}% pass" for (k, _, src), r in rates.items())
    return [
        (
            ("eligibility",),
            None,
            f"no patient meets all criteria among {PILOT_CANDIDATES} pilot candidates (each "
            f"criterion alone: {summary}); the criteria are jointly impossible",
        )
    ]


def individual_parameters(
    pop: Population,
    cand: Candidates,
    *,
    seed: int,
    arm: str,
    replicate: int = 0,
    draw: PopulationDraw,
) -> dict[str, np.ndarray]:
    """Individual parameter values of ``cand`` given a population draw.

    ETAs are keyed per candidate index under ``("cohort", replicate, arm, "eta")``.
    """
    idx = cand.index
    k = len(draw.iiv_names)
    eta = np.zeros((k, len(idx)))
    if k:
        chol = np.linalg.cholesky(draw.omega)
        eta = chol @ patient_normals(seed, ("cohort", replicate, arm, "eta"), idx, k).T
    col = {n: j for j, n in enumerate(draw.iiv_names)}
    out: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for name, p in pop.parameters.items():
            logf = np.zeros(len(idx))
            for e in p.effects:
                cov = pop.covariates.get(e.covariate)
                if e.form == "categorical":
                    assert isinstance(cov, CategoricalCovariate) and e.factors is not None
                    f = np.array([e.factors.get(lab, 1.0) for lab in cov.labels])
                    logf += np.log(f)[cand.codes[e.covariate]]
                    continue
                x = cand.values[e.covariate]
                assert e.reference is not None
                if e.form == "power":
                    assert e.exponent is not None
                    logf += e.exponent * np.log(x / e.reference)
                elif e.form == "exponential":
                    assert e.coefficient is not None
                    logf += e.coefficient * (x - e.reference)
                else:
                    assert e.slope is not None
                    logf += np.log(np.maximum(1 + e.slope * (x - e.reference), 1e-6))
            t = draw.typical[name]
            et = eta[col[name]] if name in col else 0.0
            if p.distribution == "lognormal":
                out[name] = t * np.exp(logf + et)
            elif p.distribution == "normal":
                out[name] = t * np.exp(logf) + et
            else:
                out[name] = expit(logit(t) + logf + et)
    return out


# --------------------------------------------------------------------------------------------
# Cohort
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cohort:
    """A virtual cohort of one arm and replicate.

    Attributes
    ----------
    table
        One row per enrolled patient: ``patient`` (0..n-1), ``arm``, ``replicate``,
        ``candidate`` (draw-order index, the key of the patient's random streams), declared
        covariates (continuous: float64; categorical with string labels: pandas Categorical in
        declared order; with integer labels: int64), derived covariates (float64), individual
        parameters (float64), and ``weight`` (1.0, or calibration weights).
    screened
        Candidates drawn up to and including the last enrolled one.
    screen_failures
        Per criterion (text), how many screened candidates fail it (alone).
    """

    table: pd.DataFrame
    arm: str
    replicate: int
    seed: int
    screened: int
    draw: PopulationDraw
    uncertainty: bool
    screen_failures: dict[str, int] = field(default_factory=dict)
    covariates: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    units: dict[str, str] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.table)

    @property
    def screen_fail_rate(self) -> float:
        """Fraction of screened candidates not enrolled."""
        return 1.0 - self.n / self.screened if self.screened else 0.0


_MIN_PROBE = 20_000


def sample_cohort(
    pop: Population,
    n: int,
    *,
    seed: int,
    arm: str,
    replicate: int = 0,
    uncertainty: bool = False,
    chunks: int = 1,
    map: Callable[..., Iterable[Candidates]] = map,
    max_screened: int | None = None,
) -> Cohort:
    """Draw candidates until ``n`` are eligible; return the cohort of one arm.

    Parameters
    ----------
    pop
        The validated population section.
    n
        Patients to enrol in the arm (>= 0).
    seed
        The protocol seed.
    arm
        Arm name (part of every patient's stream key).
    replicate
        Trial replicate (part of every stream key).
    uncertainty
        Draw the population-level values (typical values, OMEGA) once for the replicate
        instead of using the declared ones.
    chunks
        Split each batch of candidates into this many pieces, each computed by
        :func:`sample_candidates` through ``map``; the result does not depend on it.
    map
        A ``map``-like callable (e.g. a Dask client's ``map`` + gather); serial by default.
    max_screened
        Give up (``EnrolmentError``) after this many candidates; default
        ``max(1_000_000, 1000 * n)``.
    """
    if n < 0 or chunks < 1:
        raise ValueError(f"n must be >= 0 and chunks >= 1 (got n={n}, chunks={chunks})")
    limit = max_screened if max_screened is not None else max(1_000_000, 1000 * n)
    kernel = partial(sample_candidates, pop, seed=seed, arm=arm, replicate=replicate)
    parts: list[Candidates] = []
    start, found = 0, 0
    while found < n:
        rate = found / start if start else 1.0
        if start >= _MIN_PROBE and found == 0:
            raise EnrolmentError(_impossible_message(pop, Candidates.concat(parts), arm))
        if start >= limit:
            raise EnrolmentError(
                f"arm {arm!r}: screened {start} candidates and enrolled {found} of {n} "
                f"(eligible fraction {rate:.2e}); the criteria are too strict\n"
                + _impossible_message(pop, Candidates.concat(parts), arm)
            )
        want = math.ceil((n - found) / max(rate, 1e-3) * 1.1) + 64
        size = min(max(want, 64), max(limit - start, 1), 4_000_000)
        pieces = np.array_split(np.arange(start, start + size, dtype=np.int64), chunks)
        batch = Candidates.concat(list(map(kernel, pieces)))
        parts.append(batch)
        found += int(batch.eligible.sum())
        start += size
    allc = Candidates.concat(parts) if parts else kernel(np.arange(0, dtype=np.int64))
    elig = np.flatnonzero(allc.eligible)[:n]
    screened = int(elig[-1]) + 1 if n else 0
    screened_c = allc.take(slice(0, screened))
    failures = {
        src: int(screened - c.sum())
        for src, c in zip(
            [*pop.eligibility.inclusion, *(f"not ({s})" for s in pop.eligibility.exclusion)],
            screened_c.criteria,
            strict=True,
        )
    }
    enrolled = allc.take(elig)
    draw = population_draw(pop, seed=seed, replicate=replicate, uncertainty=uncertainty)
    params = individual_parameters(
        pop, enrolled, seed=seed, arm=arm, replicate=replicate, draw=draw
    )
    table = _table(pop, enrolled, params, arm=arm, replicate=replicate)
    return Cohort(
        table, arm, replicate, seed, screened, draw, uncertainty, failures, **_labels(pop)
    )


def _labels(pop: Population) -> dict[str, Any]:
    """Which table columns are baseline covariates, which are categorical, and their units."""
    units = {n: c.unit for n, c in pop.covariates.items() if c.unit}
    units.update({d.name: d.unit for d in pop.derived_specs if d.unit})
    return {
        "covariates": (*pop.covariates, *(d.name for d in pop.derived_specs)),
        "categorical": tuple(
            n for n, c in pop.covariates.items() if isinstance(c, CategoricalCovariate)
        ),
        "units": units,
    }


def _table(
    pop: Population,
    cand: Candidates,
    params: Mapping[str, np.ndarray],
    *,
    arm: str,
    replicate: int,
) -> pd.DataFrame:
    import pandas as pd

    n = len(cand.index)
    cols: dict[str, Any] = {
        "patient": np.arange(n, dtype=np.int64),
        "arm": pd.Categorical.from_codes(np.zeros(n, dtype=np.int8), categories=[arm]),
        "replicate": np.full(n, replicate, dtype=np.int64),
        "candidate": np.asarray(cand.index, dtype=np.int64),
    }
    for name, c in pop.covariates.items():
        if isinstance(c, ContinuousCovariate):
            cols[name] = np.asarray(cand.values[name], dtype=np.float64)
        elif c.numeric:
            cols[name] = np.asarray(cand.values[name], dtype=np.int64)
        else:
            cols[name] = pd.Categorical.from_codes(cand.codes[name], categories=list(c.labels))
    for d in pop.derived_specs:
        cols[d.name] = np.asarray(cand.values[d.name], dtype=np.float64)
    for name in pop.parameters:
        cols[name] = np.asarray(params[name], dtype=np.float64)
    cols["weight"] = np.ones(n)
    df = pd.DataFrame(
        {k: (v.to_numpy() if isinstance(v, pd.Series) else v) for k, v in cols.items()}
    )
    return df


def _impossible_message(pop: Population, cand: Candidates, arm: str) -> str:
    from insilico_trials.sim.cohort import _screen_report

    rates = _screen_report(pop, cand)
    lines = [
        f"  {kind}[{j}] {src!r}: {100 * r:.3f}% of candidates pass"
        for (kind, j, src), r in rates.items()
    ]
    return (
        f"arm {arm!r}: no eligible patient among {len(cand.index)} candidates; pass rate of each "
        f"criterion alone:\n" + "\n".join(lines)
    )


# --------------------------------------------------------------------------------------------
# Calibration to a target population
# --------------------------------------------------------------------------------------------


class CalibrationError(RunFailure):
    """The target cannot be matched by reweighting (outside what the virtual population covers)."""


@dataclass(frozen=True)
class Calibration:
    """Weights that match a virtual population to a target, and the fit before and after.

    Attributes
    ----------
    weights
        One weight per table row, mean 1.
    fit
        One row per covariate and level (categoricals) or pair (correlations): ``covariate``,
        ``level``, ``statistic`` (mean, sd, share, quantile p, correlation), ``target``,
        ``before``, ``after``; then ``smd_before``/``smd_after`` (standardised mean
        difference: means over the pooled SD, shares over the pooled binomial SD, quantiles
        over the virtual SD; NaN for SDs and correlations) and
        ``ks_before``/``ks_after`` (Kolmogorov-Smirnov distance: at the target quantiles when
        given, else against normal(mean, sd); over the cumulative shares in declared order for
        a categorical), repeated on every row of the covariate.
    ess
        Kish effective sample size, (sum w)^2 / sum w^2.
    fit_resampled
        From :func:`calibrated_cohort`: the same fit table where ``after`` describes the
        resampled (unweighted) cohort.
    """

    weights: np.ndarray
    fit: pd.DataFrame
    ess: float
    iterations: int
    fit_resampled: pd.DataFrame | None = None

    @property
    def n(self) -> int:
        return len(self.weights)

    @property
    def ess_lost(self) -> float:
        """Fraction of the sample size lost to weighting, 1 - ESS / n."""
        return 1.0 - self.ess / self.n if self.n else 0.0

    def summary(self) -> pd.DataFrame:
        """Per covariate: largest |SMD| and the KS distance, before and after."""
        f = self.fit[self.fit["statistic"] != "correlation"].copy()
        f["abs_smd_before"] = f["smd_before"].abs()
        f["abs_smd_after"] = f["smd_after"].abs()
        return f.groupby("covariate", sort=False).agg(
            smd_before=("abs_smd_before", "max"),
            smd_after=("abs_smd_after", "max"),
            ks_before=("ks_before", "first"),
            ks_after=("ks_after", "first"),
        )


def _wstats(x: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    m = float(np.dot(w, x) / w.sum())
    return m, math.sqrt(max(float(np.dot(w, (x - m) ** 2) / w.sum()), 0.0))


def _constraints(
    table: pd.DataFrame, pop: Population, target: Any
) -> tuple[np.ndarray, list[tuple[str, list[int]]]]:
    """Constraint columns (value minus target: weighted means must be 0), grouped per covariate."""
    cols: list[np.ndarray] = []
    groups: list[tuple[str, list[int]]] = []
    for name, t in target.covariates.items():
        start = len(cols)
        x = table[name]
        if t.frequencies is not None:
            cov = pop.covariates[name]
            assert isinstance(cov, CategoricalCovariate)
            for lab in list(cov.labels)[:-1]:  # the last share follows from the others
                cols.append((x == lab).to_numpy(float) - t.frequencies[lab])
        else:
            xv = x.to_numpy(float)
            if t.mean is not None and t.sd is not None:
                zs = (xv - t.mean) / t.sd
                cols += [zs, zs * zs - 1.0]
            elif t.mean is not None:
                cols.append((xv - t.mean) / max(float(np.std(xv)), 1e-12))
            for p, q in (t.quantiles or {}).items():
                cols.append((xv <= q).astype(float) - p)
        groups.append((name, list(range(start, len(cols)))))
    if target.correlation is not None:
        start = len(cols)
        names = target.correlation.names
        for i in range(len(names)):
            for j in range(i):
                ti, tj = target.covariates[names[i]], target.covariates[names[j]]
                zi = (table[names[i]].to_numpy(float) - ti.mean) / ti.sd
                zj = (table[names[j]].to_numpy(float) - tj.mean) / tj.sd
                cols.append(zi * zj - target.correlation.matrix[i][j])
        groups.append(("correlation", list(range(start, len(cols)))))
    return np.column_stack(cols) if cols else np.zeros((len(table), 0)), groups


def _tilt(c: np.ndarray, lam: np.ndarray) -> np.ndarray:
    a = c @ lam
    w = np.exp(a - a.max())
    return w / w.sum()


def _newton(
    c: np.ndarray,
    lam: np.ndarray,
    *,
    offset: np.ndarray | float = 0.0,
    tol: float,
    max_iter: int,
) -> tuple[np.ndarray, int]:
    """Minimise the entropy-balancing dual log sum exp(offset + c @ lam) (Hainmueller 2012).

    Its gradient is the weighted mean of the constraint columns, so at the minimum the
    exponentially tilted weights meet every constraint.
    """

    def dual(lv: np.ndarray) -> float:
        a = offset + c @ lv
        amax = a.max()
        return float(amax + np.log(np.exp(a - amax).sum()))

    for it in range(max_iter):
        a = offset + c @ lam
        w = np.exp(a - a.max())
        w /= w.sum()
        g = w @ c
        if np.max(np.abs(g)) < tol:
            return lam, it
        h = (c * w[:, None]).T @ c - np.outer(g, g)
        step = np.linalg.lstsq(h + 1e-12 * np.eye(len(g)), g, rcond=None)[0]
        f0, s = dual(lam), 1.0
        while s > 1e-10 and dual(lam - s * step) > f0 - 1e-4 * s * float(g @ step):
            s /= 2
        lam = lam - s * step
    return lam, max_iter


def calibrate(
    table: pd.DataFrame,
    pop: Population,
    *,
    target: Any = None,
    method: str | None = None,
    tol: float = 1e-9,
    max_iter: int = 200,
) -> Calibration:
    """Weights that make ``table`` match the target's summaries (entropy balancing or raking).

    Parameters
    ----------
    table
        A cohort table (or several arms concatenated).
    pop
        The population spec (for category labels).
    target
        A :class:`insilico_trials.spec.population.Target`; default ``pop.target``.
    method
        ``"entropy"``: Newton on the entropy-balancing dual over all constraints at once
        (Hainmueller 2012). ``"raking"``: cyclic per-covariate fits (classic raking /
        iterative proportional fitting, generalised to means, SDs and quantiles); it converges
        to the same minimum-entropy weights. Default: ``target.method``.
    tol
        Largest allowed weighted constraint residual, in target SD units or shares.

    Raises
    ------
    CalibrationError
        When the target lies outside what reweighting the table can reach.
    """
    target = target if target is not None else pop.target
    if target is None:
        raise ValueError("no target: declare population.target or pass target=")
    method = method or target.method
    c, groups = _constraints(table, pop, target)
    lam = np.zeros(c.shape[1])
    iterations = 0
    if method == "entropy":
        lam, iterations = _newton(c, lam, tol=tol, max_iter=max_iter)
    elif method == "raking":
        for sweep in range(max_iter):
            for _, ix in groups:
                if not ix:
                    continue
                # fit this covariate's margins with the others' tilt held fixed
                other = c @ lam - c[:, ix] @ lam[ix]
                lam[ix], _ = _newton(c[:, ix], lam[ix], offset=other, tol=tol / 10, max_iter=50)
            iterations = sweep + 1
            if np.max(np.abs(_tilt(c, lam) @ c)) < tol:
                break
    else:
        raise ValueError(f"method must be 'entropy' or 'raking' (got {method!r})")
    w = _tilt(c, lam)
    resid = w @ c if c.shape[1] else np.zeros(0)
    if resid.size and np.max(np.abs(resid)) > max(tol * 100, 1e-6):
        worst = [name for name, ix in groups if ix and np.max(np.abs(resid[ix])) > 1e-6]
        raise CalibrationError(
            f"cannot reweight the virtual population to target {target.name!r}: the summaries of "
            f"{worst} lie outside what it covers (largest residual {np.max(np.abs(resid)):.3g}); "
            f"widen the priors (or their bounds) so the target is inside them"
        )
    weights = w * len(w)
    fit = _fit_table(table, pop, target, weights)
    ess = float(weights.sum() ** 2 / (weights**2).sum())
    return Calibration(weights, fit, ess, iterations)


def _fit_table(
    table: pd.DataFrame, pop: Population, target: Any, weights: np.ndarray
) -> pd.DataFrame:
    import pandas as pd
    from scipy.special import ndtr as _ndtr

    ones = np.ones(len(table))
    rows: list[dict[str, Any]] = []
    for name, t in target.covariates.items():
        x = table[name]
        if t.frequencies is not None:
            cov = pop.covariates[name]
            assert isinstance(cov, CategoricalCovariate)
            ks = {}
            for tag, w in (("before", ones), ("after", weights)):
                shares = np.array(
                    [float(w[(x == lab).to_numpy()].sum() / w.sum()) for lab in cov.labels]
                )
                tgt = np.array([t.frequencies[lab] for lab in cov.labels])
                ks[tag] = float(np.max(np.abs(np.cumsum(shares) - np.cumsum(tgt))))
            for lab in cov.labels:
                pt = t.frequencies[lab]
                row = {"covariate": name, "level": str(lab), "statistic": "share", "target": pt}
                for tag, w in (("before", ones), ("after", weights)):
                    p = float(w[(x == lab).to_numpy()].sum() / w.sum())
                    pooled = math.sqrt((p * (1 - p) + pt * (1 - pt)) / 2)
                    row[tag] = p
                    row[f"smd_{tag}"] = (p - pt) / pooled if pooled > 0 else 0.0
                    row[f"ks_{tag}"] = ks[tag]
                rows.append(row)
            continue
        xv = x.to_numpy(float)
        order = np.argsort(xv, kind="stable")
        xs = xv[order]
        ks = {}
        for tag, w in (("before", ones), ("after", weights)):
            cdf = np.cumsum(w[order]) / w.sum()
            if t.quantiles:
                at = np.searchsorted(xs, list(t.quantiles.values()), side="right")
                fq = np.where(at > 0, cdf[np.maximum(at - 1, 0)], 0.0)
                ks[tag] = float(np.max(np.abs(fq - np.array(list(t.quantiles.keys())))))
            else:
                ref = _ndtr((xs - t.mean) / t.sd)
                ks[tag] = float(
                    max(np.max(np.abs(cdf - ref)), np.max(np.abs(cdf - w[order] / w.sum() - ref)))
                )
        stats_rows: list[tuple[str, float | None]] = []
        if t.mean is not None:
            stats_rows.append(("mean", t.mean))
        if t.sd is not None:
            stats_rows.append(("sd", t.sd))
        for p, q in (t.quantiles or {}).items():
            stats_rows.append((f"quantile {p:g}", q))
        for stat, tv in stats_rows:
            row = {"covariate": name, "level": "", "statistic": stat, "target": tv}
            for tag, w in (("before", ones), ("after", weights)):
                m, s = _wstats(xv, w)
                if stat == "mean":
                    row[tag] = m
                    row[f"smd_{tag}"] = (
                        (m - t.mean) / math.sqrt((s * s + t.sd**2) / 2)
                        if t.sd
                        else (m - t.mean) / s
                        if s > 0
                        else 0.0
                    )
                elif stat == "sd":
                    row[tag] = s
                    row[f"smd_{tag}"] = float("nan")
                else:
                    cdf = np.cumsum(w[order]) / w.sum()
                    k = min(int(np.searchsorted(cdf, float(stat.split()[1]))), len(xs) - 1)
                    row[tag] = float(xs[k])
                    row[f"smd_{tag}"] = (float(xs[k]) - tv) / s if s > 0 else 0.0
                row[f"ks_{tag}"] = ks[tag]
            rows.append(row)
    if target.correlation is not None:
        names = target.correlation.names
        for i in range(len(names)):
            for j in range(i):
                row = {
                    "covariate": "correlation",
                    "level": f"{names[i]}:{names[j]}",
                    "statistic": "correlation",
                    "target": target.correlation.matrix[i][j],
                }
                for tag, w in (("before", ones), ("after", weights)):
                    a, b = table[names[i]].to_numpy(float), table[names[j]].to_numpy(float)
                    ma, sa = _wstats(a, w)
                    mb, sb = _wstats(b, w)
                    row[tag] = float(np.dot(w, (a - ma) * (b - mb)) / w.sum() / (sa * sb))
                    row[f"smd_{tag}"] = float("nan")
                    row[f"ks_{tag}"] = float("nan")
                rows.append(row)
    return pd.DataFrame(rows)


def calibrated_cohort(
    pop: Population,
    n: int,
    *,
    seed: int,
    arm: str,
    replicate: int = 0,
    uncertainty: bool = False,
    pool: int = 5,
    chunks: int = 1,
    map: Callable[..., Iterable[Candidates]] = map,
) -> tuple[Cohort, Calibration]:
    """A cohort of ``n`` resampled from ``pool * n`` eligible patients weighted to the target.

    The pool is :func:`sample_cohort` with ``pool * n`` patients; :func:`calibrate` gives the
    weights; ``n`` patients are then drawn without replacement by systematic sampling with
    inclusion probabilities proportional to the weights (capped at 1; one uniform from
    ``stream(seed, "calibrate", replicate, arm)``, applied in candidate order, so chunking
    still does not matter). Patients keep their candidate order and are renumbered
    ``0..n-1``. ``Calibration.fit_resampled`` shows the fit of the resampled cohort, which
    carries sampling noise of order 1/sqrt(n) on top of the weighted fit.
    """
    if pool < 1:
        raise ValueError(f"pool must be >= 1 (got {pool})")
    big = sample_cohort(
        pop,
        pool * n,
        seed=seed,
        arm=arm,
        replicate=replicate,
        uncertainty=uncertainty,
        chunks=chunks,
        map=map,
    )
    cal = calibrate(big.table, pop)
    chosen = _systematic_pps(cal.weights, n, stream(seed, "calibrate", replicate, arm).random())
    table = big.table.iloc[chosen].reset_index(drop=True)
    table["patient"] = np.arange(len(table), dtype=np.int64)
    assert pop.target is not None
    fit = _fit_table(table, pop, pop.target, np.ones(len(table)))
    resampled = cal.fit.copy()
    for col in ("after", "smd_after", "ks_after"):
        resampled[col] = fit[col].to_numpy()
    cohort = Cohort(
        table,
        arm,
        replicate,
        seed,
        big.screened,
        big.draw,
        uncertainty,
        big.screen_failures,
        big.covariates,
        big.categorical,
        big.units,
    )
    return cohort, Calibration(cal.weights, cal.fit, cal.ess, cal.iterations, resampled)


def _systematic_pps(weights: np.ndarray, n: int, u: float) -> np.ndarray:
    """Indices of a systematic sample of size n, inclusion probability proportional to weight."""
    m = len(weights)
    if n >= m:
        return np.arange(m)
    pi = n * weights / weights.sum()
    certain = np.zeros(m, bool)
    while True:  # cap at 1 and spread the excess over the others
        over = ~certain & (pi >= 1)
        if not over.any():
            break
        certain |= over
        pi[certain] = 1.0
        rest = ~certain
        pi[rest] *= (n - certain.sum()) / pi[rest].sum()
    cum = np.cumsum(pi)
    cum *= n / cum[-1]
    picks = np.searchsorted(cum, u + np.arange(n), side="right")
    return np.unique(np.minimum(picks, m - 1))


# --------------------------------------------------------------------------------------------
# Output: Parquet and the baseline table
# --------------------------------------------------------------------------------------------

COHORT_SCHEMA_VERSION = 1
_META_KEY = b"insilico_trials.cohort"


def write_cohort(cohort: Cohort, path: str | os.PathLike[str]) -> Path:
    """Write the cohort table as Parquet, atomically (temporary file, then rename).

    Schema (one row per enrolled patient, in enrolment order):

    ===========  ==========================  ==============================================
    column       type                        meaning
    ===========  ==========================  ==============================================
    patient      int64                       0..n-1 within the arm
    arm          dictionary<string>          arm name
    replicate    int64                       trial replicate
    candidate    int64                       draw-order index, the key of the patient's draws
    <covariate>  double                      continuous and derived covariates (declared unit)
    <covariate>  dictionary<string>          categorical covariates with string labels,
                                             categories in declared order
    <covariate>  int64                       categorical covariates with integer labels
    <parameter>  double                      individual parameters (declared unit)
    weight       double                      1.0 (or calibration weights)
    ===========  ==========================  ==============================================

    The file's key-value metadata ``insilico_trials.cohort`` holds JSON: ``schema_version``,
    ``arm``, ``replicate``, ``seed``, ``screened``, ``uncertainty``, ``screen_failures``,
    ``covariates``, ``categorical``, ``units``, and the population draw (``typical``,
    ``iiv_names``, ``omega``). :func:`read_cohort` reads it back.
    """
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    meta = {
        "schema_version": COHORT_SCHEMA_VERSION,
        "arm": cohort.arm,
        "replicate": cohort.replicate,
        "seed": cohort.seed,
        "screened": cohort.screened,
        "uncertainty": cohort.uncertainty,
        "screen_failures": cohort.screen_failures,
        "covariates": list(cohort.covariates),
        "categorical": list(cohort.categorical),
        "units": cohort.units,
        "typical": cohort.draw.typical,
        "iiv_names": list(cohort.draw.iiv_names),
        "omega": np.asarray(cohort.draw.omega).tolist(),
    }
    table = pa.Table.from_pandas(cohort.table, preserve_index=False)
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), _META_KEY: json.dumps(meta).encode()}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            pq.write_table(table, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_cohort(path: str | os.PathLike[str]) -> Cohort:
    """Read a cohort written by :func:`write_cohort`."""
    import json

    import pyarrow.parquet as pq

    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(_META_KEY)
    if raw is None:
        raise ValueError(f"{path}: not a cohort file (no {_META_KEY.decode()} metadata)")
    meta = json.loads(raw)
    if meta.get("schema_version") != COHORT_SCHEMA_VERSION:
        raise ValueError(
            f"{path}: cohort schema_version {meta.get('schema_version')} is not supported "
            f"(supported: {COHORT_SCHEMA_VERSION})"
        )
    draw = PopulationDraw(
        dict(meta["typical"]),
        tuple(meta["iiv_names"]),
        np.asarray(meta["omega"], dtype=float).reshape(len(meta["iiv_names"]), -1),
    )
    return Cohort(
        table.to_pandas(),
        meta["arm"],
        meta["replicate"],
        meta["seed"],
        meta["screened"],
        draw,
        meta["uncertainty"],
        meta["screen_failures"],
        tuple(meta["covariates"]),
        tuple(meta["categorical"]),
        meta["units"],
    )


def _fmt(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}f}"


def baseline_table(
    cohorts: Iterable[Cohort],
    target: Any = None,
    *,
    subgroups: Iterable[tuple[str, ...]] = (),
    min_share: float = 0.05,
    digits: int = 1,
) -> pd.DataFrame:
    """Baseline characteristics ("Table 1") per arm, with the target population beside them.

    Parameters
    ----------
    cohorts
        Cohorts to tabulate; cohorts with the same arm name (e.g. replicates) are pooled.
    target
        Optional :class:`insilico_trials.spec.population.Target`, shown in a ``target`` column
        (mean (SD), median [IQR] from its 0.25/0.5/0.75 quantiles, shares).
    subgroups
        Crossings of categorical covariates to tabulate, e.g. ``[("ANCESTRY", "SEX")]``.
    min_share
        A category or subgroup whose share in any arm is below this, or below half its target
        share, is flagged ``under_represented``.
    digits
        Decimals of continuous summaries.

    Returns
    -------
    DataFrame
        Columns ``variable``, ``level``, ``statistic``, one column per arm (display strings),
        ``target`` when given, and ``under_represented`` (bool). Rows: ``N``; per continuous
        covariate ``mean (SD)`` and ``median [IQR]``; per category and subgroup ``n (%)``.
    """
    import pandas as pd

    cohorts = list(cohorts)
    if not cohorts:
        raise ValueError("baseline_table needs at least one cohort")
    arms: dict[str, pd.DataFrame] = {}
    for c in cohorts:
        arms[c.arm] = pd.concat([arms[c.arm], c.table]) if c.arm in arms else c.table
    first = cohorts[0]
    tcov = target.covariates if target is not None else {}
    rows: list[dict[str, Any]] = []

    def add(
        variable: str,
        level: str,
        stat: str,
        cells: dict[str, str],
        tgt: str = "",
        flag: bool = False,
    ) -> None:
        row = {"variable": variable, "level": level, "statistic": stat, **cells}
        if target is not None:
            row["target"] = tgt
        row["under_represented"] = flag
        rows.append(row)

    add(
        "N",
        "",
        "n",
        {a: str(len(t)) for a, t in arms.items()},
        str(target.n) if target is not None and target.n else "",
    )
    for name in first.covariates:
        label = f"{name} ({first.units[name]})" if name in first.units else name
        tc = tcov.get(name)
        if name not in first.categorical:
            cells, med = {}, {}
            for a, t in arms.items():
                x = t[name].to_numpy(float)
                cells[a] = f"{_fmt(x.mean(), digits)} ({_fmt(x.std(ddof=1), digits)})"
                q = np.quantile(x, [0.25, 0.5, 0.75])
                med[a] = f"{_fmt(q[1], digits)} [{_fmt(q[0], digits)}, {_fmt(q[2], digits)}]"
            tm = ts = ""
            if tc is not None and tc.mean is not None and tc.sd is not None:
                tm = f"{_fmt(tc.mean, digits)} ({_fmt(tc.sd, digits)})"
            if tc is not None and tc.quantiles and {0.25, 0.5, 0.75} <= set(tc.quantiles):
                q = tc.quantiles
                ts = f"{_fmt(q[0.5], digits)} [{_fmt(q[0.25], digits)}, {_fmt(q[0.75], digits)}]"
            add(label, "", "mean (SD)", cells, tm)
            add(label, "", "median [IQR]", med, ts)
            continue
        levels = _levels(arms, name)
        for lab in levels:
            tshare = tc.frequencies.get(lab) if tc is not None and tc.frequencies else None
            cells, flag = {}, False
            for a, t in arms.items():
                k = int((t[name] == lab).sum())
                share = k / len(t) if len(t) else 0.0
                cells[a] = f"{k} ({100 * share:.{digits}f}%)"
                flag |= share < min_share or (tshare is not None and share < tshare / 2)
            tgt = f"({100 * tshare:.{digits}f}%)" if tshare is not None else ""
            add(label, str(lab), "n (%)", cells, tgt, flag)
    for group in subgroups:
        group = tuple(group)
        missing = [g for g in group if g not in first.categorical]
        if missing:
            raise ValueError(
                f"subgroups must cross categorical covariates {list(first.categorical)} "
                f"(got {missing})"
            )
        combos = pd.MultiIndex.from_product([_levels(arms, g) for g in group])
        for combo in combos:
            cells, flag = {}, False
            for a, t in arms.items():
                mask = np.ones(len(t), bool)
                for g, lab in zip(group, combo, strict=True):
                    mask &= (t[g] == lab).to_numpy()
                share = mask.sum() / len(t) if len(t) else 0.0
                cells[a] = f"{int(mask.sum())} ({100 * share:.{digits}f}%)"
                flag |= share < min_share
            add(" × ".join(group), " / ".join(map(str, combo)), "n (%)", cells, "", flag)
    return pd.DataFrame(rows)


def _levels(arms: Mapping[str, pd.DataFrame], name: str) -> list[Any]:
    import pandas as pd

    t = next(iter(arms.values()))
    col = t[name]
    if isinstance(col.dtype, pd.CategoricalDtype):
        return list(col.cat.categories)
    return sorted(set().union(*(set(tt[name].unique().tolist()) for tt in arms.values())))
