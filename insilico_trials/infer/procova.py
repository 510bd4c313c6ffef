"""PROCOVA: prognostic covariate adjustment of the randomised contrast (the EMA-qualified method).

What this is, and how it differs from ``borrowing.py``'s ``procova``
-------------------------------------------------------------------
PROCOVA (Schuler et al. 2021; EMA Qualification Opinion for PROCOVA, 2022) is a *frequentist*
analysis of a randomised trial with a continuous outcome, in two stages:

1. **Prognostic model, fixed before the trial.** A model of the outcome under control given
   baseline covariates is trained on historical patients; here the historical patients are the
   *virtual* (simulated) control patients. Its prediction for a trial patient, computed from that
   patient's baseline covariates only, is the patient's *prognostic score* ``s_i``
   (:func:`fit_prognostic_model`, :meth:`PrognosticModel.score`).
2. **ANCOVA of the randomised contrast.** The treatment effect is the coefficient ``tau`` of the
   treatment indicator ``W_i`` (1 treatment, 0 control) in the linear model, fitted by ordinary
   least squares on *both* randomised arms::

       Y_i = beta_0 + tau W_i + beta_s s_i + gamma' Z_i + eps_i

   with optional further baseline covariates ``Z_i`` (:func:`procova_ancova`).

Nothing of the virtual arm enters the likelihood: the virtual patients only shape the score.
Randomisation alone makes ``tau_hat`` consistent for the average treatment effect whatever the
prognostic model is (misspecified, biased, trained on a shifted population), so type I error is
controlled; a good score only shrinks the variance. The ``procova`` method of
:func:`insilico_trials.infer.borrowing.update_control` is a different thing: a Bayesian model of
the control arm alone with the score as a covariate; it estimates the control mean, not the
randomised contrast, and is not the qualified procedure.

Estimation (OLS, design matrix ``X = [1, W, s, Z]`` with ``p = 3 + k`` columns, ``n`` patients)
-----------------------------------------------------------------------------------------------
* ``theta_hat = (X'X)^-1 X'y`` (computed by a QR decomposition ``X = QR``,
  ``theta_hat = R^-1 Q'y``; batched over trials in :func:`ancova_arrays`);
* residuals ``e = y - X theta_hat``, ``sigma_hat^2 = e'e / (n - p)``, ``df = n - p``;
* model-based variance ``Var(tau_hat) = sigma_hat^2 [(X'X)^-1]_WW``;
* heteroscedasticity-consistent (sandwich) variance, ``robust=True``:
  ``Var_HC(tau_hat) = sum_i omega_i c_i^2`` with ``c = X (X'X)^-1 e_W`` and ``omega_i = e_i^2``
  (HC0), ``e_i^2 n / (n - p)`` (HC1), ``e_i^2 / (1 - h_ii)`` (HC2, the default: unbiased
  under homoscedasticity, Imbens & Kolesár 2016) or ``e_i^2 / (1 - h_ii)^2`` (HC3, more
  conservative); ``h_ii`` the leverages; MacKinnon & White (1985), Long & Ervin (2000);
* ``se = sqrt(Var)``, ``t = tau_hat / se``, two-sided ``p = 2 P(T_df >= |t|)``, one-sided
  ``p_> = P(T_df >= (tau_hat - delta) / se)`` for ``H0: tau <= delta`` against
  ``H1: tau > delta``, and the ``level`` CI ``tau_hat -+ t_{df, (1 + level)/2} se``.

With the score as the only covariate the estimate is the difference in means corrected by the
pooled within-arm slope (Frisch-Waugh-Lovell)::

    tau_hat = (ybar_1 - ybar_0) - beta_hat_s (sbar_1 - sbar_0),
    beta_hat_s = sum_a sum_{i in a} (s_i - sbar_a)(y_i - ybar_a) / sum_a sum_{i in a} (s_i - sbar_a)^2,
    Var(tau_hat) = sigma_hat^2 (1/n_0 + 1/n_1 + (sbar_1 - sbar_0)^2 / S_ss,within).

Which standard error
~~~~~~~~~~~~~~~~~~~~
PROCOVA as published (Schuler et al. 2021) uses the usual model-based OLS standard error. With 1:1
randomisation it is valid even when the linear model is wrong (Wang, Ogburn & Rosenblum 2019);
with unequal allocation and treatment-effect heterogeneity it can be inconsistent and the
sandwich (``robust=True``) standard error is the valid one (Bartlett 2020). The degrees of
freedom are ``n - p`` for both (as is customary for HC standard errors).

Prospective sample size (:func:`procova_sample_size`, :func:`procova_power`)
---------------------------------------------------------------------------
With allocation ``pi_1 = r / (1 + r)`` (``r = n_1 / n_0``), equal outcome sd ``sigma`` and equal
score-outcome correlation ``rho`` in both arms, the asymptotic variance of ``tau_hat`` is
``sigma^2 (1 - rho^2) / (n pi_0 pi_1)`` (Schuler et al. 2021): PROCOVA is worth
``n / (1 - rho^2)`` unadjusted patients, i.e. it needs the fraction ``1 - rho^2`` of the
unadjusted sample size (:func:`variance_reduction`). The total sample size for a two-sided
level-``alpha`` test with power ``1 - beta`` against the effect ``Delta`` (margin ``delta``) is
the normal-approximation formula with the Guenther (1981) / Schouten (1999) t-correction, as in
the ``postcard`` R package's ``samplesize_gs`` (Højbjerre-Frandsen et al. 2025)::

    n = (1 + r)^2 / r * (z_{1-alpha/2} + z_{1-beta})^2 sigma^2 (1 - rho^2) / (Delta - delta)^2
        + z_{1-alpha/2}^2 / 2.

Planning must not be optimistic: Schuler et al. (2021) plan with ``rho`` and ``sigma``
estimated on historical data *not used to train the model* (here
:meth:`PrognosticModel.evaluate` on a fresh virtual sample) and for conservative values, e.g. a
discounted correlation and an inflated variance (``rho_discount``, ``variance_inflation``;
``postcard::variance_ancova`` has the same ``inflation``/``deflation`` knobs). The general form
for unequal arm sds and correlations is :func:`asymptotic_variance`.

References
----------
* Schuler A, Walsh D, Hall D, Walsh J, Fisher C (2021). Increasing the efficiency of randomized
  trial estimates via linear adjustment for a prognostic score. Int J Biostat 18(2):329-356,
  doi:10.1515/ijb-2021-0072.
* European Medicines Agency (2022). Qualification opinion for Prognostic Covariate Adjustment
  (PROCOVA). EMA/CHMP/SAWP/684217/2022.
* Wang B, Ogburn EL, Rosenblum M (2019). Analysis of covariance in randomized trials: more
  precision and valid confidence intervals, without model assumptions. Biometrics 75:1391-1400.
* Bartlett JW (2020). Robustness of ANCOVA in randomized trials with unequal randomization.
  Biometrics 76:1036-1038.
* Yang L, Tsiatis AA (2001). Efficiency study of estimators for a treatment effect in a
  pretest-posttest trial. Am Stat 55:314-321.
* MacKinnon JG, White H (1985). Some heteroskedasticity-consistent covariance matrix estimators
  with improved finite sample properties. J Econometrics 29:305-325. Long JS, Ervin LH (2000).
  Using heteroscedasticity consistent standard errors in the linear regression model. Am Stat
  54:217-224. Imbens GW, Kolesár M (2016). Robust standard errors in small samples: some
  practical advice. Rev Econ Stat 98:701-712.
* Guenther WC (1981). Sample size formulas for normal theory t tests. Am Stat 35:243-244.
  Schouten HJA (1999). Sample size formula with a continuous outcome for unequal group sizes
  and unequal variances. Stat Med 18:87-91.
* Højbjerre-Frandsen E et al. (2025). Powering RCTs for marginal effects with GLMs using
  prognostic score adjustment. arXiv:2503.22284 (R package ``postcard``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

from insilico_trials.errors import InputError

__all__ = [
    "AncovaArrays",
    "ModelPerformance",
    "ProcovaError",
    "ProcovaResult",
    "ProcovaSampleSize",
    "PrognosticModel",
    "ancova_arrays",
    "asymptotic_variance",
    "fit_prognostic_model",
    "procova_ancova",
    "procova_power",
    "procova_sample_size",
    "variance_reduction",
]

HC = Literal["HC0", "HC1", "HC2", "HC3"]
_HC_TYPES = ("HC0", "HC1", "HC2", "HC3")
_RANK_TOL = 1e-10  # |R_kk| below this times max |R_jj|: column k is (numerically) collinear


class ProcovaError(InputError):
    """Bad PROCOVA input: names the column, the row (index label) and the value, and the rule."""


# --------------------------------------------------------------------------- input checks


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise ProcovaError(
            f"{what}: expected a pandas DataFrame, got {type(frame).__name__}",
            rule="DataFrame input",
            actual=type(frame).__name__,
            expected="pandas.DataFrame",
            where=what,
        )
    present = [str(c) for c in frame.columns]
    for col in columns:
        if col not in frame.columns:
            raise ProcovaError(
                f"{what}: column {col!r} is missing (columns present: {present})",
                rule="required column",
                actual=present,
                expected=f"a column named {col!r}",
                where=f"column {col!r}",
            )


def _names(value: Sequence[str] | str, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        raise ProcovaError(
            f"{what}: pass a list of column names, got the string {value!r}",
            rule="sequence of column names",
            actual=value,
            expected=f"[{value!r}]",
            where=what,
        )
    names = tuple(value)
    dupes = sorted({c for c in names if names.count(c) > 1})
    if dupes:
        raise ProcovaError(
            f"{what}: column names must be unique, repeated: {dupes}",
            rule="unique covariates",
            actual=list(names),
            expected="each column once",
            where=what,
        )
    return names


def _numeric(
    frame: pd.DataFrame, col: str, what: str, *, categorical_hint: bool = False
) -> np.ndarray:
    """Column ``col`` as finite float64, or a :class:`ProcovaError` naming the row and value.

    Boolean columns count as 0/1. Non-numeric columns: with ``categorical_hint`` (covariates)
    they are refused as categorical; otherwise values are parsed as numbers and the first one
    that is not a number is reported.
    """
    series = frame[col]
    if isinstance(series, pd.DataFrame):  # duplicated column label
        raise ProcovaError(
            f"{what}: column {col!r} appears {series.shape[1]} times",
            rule="unique column labels",
            actual=series.shape[1],
            expected="1",
            where=f"column {col!r}",
        )
    if pd.api.types.is_bool_dtype(series):
        series = series.astype(float)
    numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_complex_dtype(series)
    if not numeric and len(series):
        if categorical_hint or pd.api.types.is_complex_dtype(series):
            bad_pos = 0
        else:
            coerced = pd.to_numeric(series, errors="coerce")
            bad = coerced.isna().to_numpy() & series.notna().to_numpy()
            bad_pos = int(np.flatnonzero(bad)[0]) if bad.any() else -1
            series = coerced
        if bad_pos >= 0:
            raw = frame[col]
            label, value = raw.index[bad_pos], raw.iloc[bad_pos]
            if categorical_hint:
                msg = (
                    f"{what}: covariate {col!r} is categorical (dtype {raw.dtype}, e.g. "
                    f"{value!r} at row {label!r}); the prognostic model takes numeric covariates "
                    "only: one-hot encode it into 0/1 indicator columns (dropping one reference "
                    "level) and use the same columns for fitting and scoring"
                )
            else:
                msg = (
                    f"{what}: column {col!r} row {label!r}: value {value!r} is not a number "
                    f"(dtype {raw.dtype})"
                )
            raise ProcovaError(
                msg,
                rule="numeric column",
                actual=value,
                expected="a finite number",
                where=f"column {col!r}, row {label!r}",
            )
    values = np.asarray(series, dtype=float)
    finite = np.isfinite(values)
    if not finite.all():
        bad_pos = np.flatnonzero(~finite)
        label, value = frame.index[bad_pos[0]], frame[col].iloc[bad_pos[0]]
        more = f" ({bad_pos.size} such rows)" if bad_pos.size > 1 else ""
        raise ProcovaError(
            f"{what}: column {col!r} row {label!r}: value {value!r} is not a finite number{more}",
            rule="finite values",
            actual=value,
            expected="a finite number",
            where=f"column {col!r}, row {label!r}",
        )
    return values


def _first_collinear(x: np.ndarray) -> int | None:
    """Index of the first column of ``x`` that is (numerically) a combination of earlier ones."""
    if x.shape[0] < x.shape[1]:
        return x.shape[0]
    r = np.linalg.qr(x, mode="r")
    d = np.abs(np.diagonal(r))
    norm = np.linalg.norm(x, axis=0)
    small = np.flatnonzero((d <= _RANK_TOL * norm) | (norm == 0))
    return int(small[0]) if small.size else None


def _check_level(level: float) -> None:
    if not (isinstance(level, int | float) and 0.0 < level < 1.0):
        raise ProcovaError(
            f"level: must be strictly between 0 and 1, got {level!r}",
            rule="0 < level < 1",
            actual=level,
            expected="e.g. 0.95",
            where="level",
        )


def _check_hc(hc: str) -> None:
    if hc not in _HC_TYPES:
        raise ProcovaError(
            f"hc: must be one of {_HC_TYPES}, got {hc!r}",
            rule="HC type",
            actual=hc,
            expected=" / ".join(_HC_TYPES),
            where="hc",
        )


def _finite_scalar(value: Any, name: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = float("nan")
    if not math.isfinite(out):
        raise ProcovaError(
            f"{name}: must be a finite number, got {value!r}",
            rule="finite number",
            actual=value,
            expected="a finite number",
            where=name,
        )
    return out


# --------------------------------------------------------------------------- prognostic model


class ModelPerformance(NamedTuple):
    """Score-outcome agreement of a prognostic model on a data set (for planning).

    ``rho``: Pearson correlation of score and outcome; ``sigma``: sd of the outcome (ddof 1);
    ``rmse``: root mean squared prediction error; ``n``: patients.
    """

    rho: float
    sigma: float
    rmse: float
    n: int


@dataclass(frozen=True)
class PrognosticModel:
    """Linear prognostic model ``score(x) = intercept + sum_j coefficients_j x_j``.

    Trained once, on virtual control patients, before the trial (:func:`fit_prognostic_model`);
    frozen so that the score of a trial patient depends on nothing but the patient's baseline
    covariates.

    Attributes
    ----------
    covariates : tuple of str
        Baseline covariate columns, in the order of ``coefficients``.
    intercept : float
    coefficients : tuple of float
    outcome : str
        The outcome column it was trained on.
    n_train : int
        Virtual patients used.
    residual_sd : float
        ``sqrt(RSS / (n_train - k - 1))`` on the training data.
    r_squared : float
        In-sample ``R^2`` (optimistic; use :meth:`evaluate` on held-out patients for planning).
    """

    covariates: tuple[str, ...]
    intercept: float
    coefficients: tuple[float, ...]
    outcome: str = "value"
    n_train: int = 0
    residual_sd: float = float("nan")
    r_squared: float = float("nan")

    def _design(self, frame: pd.DataFrame, what: str) -> np.ndarray:
        _require_columns(frame, self.covariates, what)
        cols = [_numeric(frame, c, what, categorical_hint=True) for c in self.covariates]
        return np.column_stack(cols) if cols else np.empty((len(frame), 0))

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """Prognostic score of each row of ``frame`` from its baseline covariates.

        Parameters
        ----------
        frame : DataFrame
            One row per (real) patient, with every column of :attr:`covariates`.

        Returns
        -------
        ndarray, shape (len(frame),)
            ``intercept + X @ coefficients``.

        Raises
        ------
        ProcovaError
            A covariate column is missing, categorical, or has a NaN/infinite value (the
            message names the column, the row label and the value).
        """
        x = self._design(frame, "score")
        return self.intercept + x @ np.asarray(self.coefficients, dtype=float)

    def with_score(self, frame: pd.DataFrame, column: str = "prognostic_score") -> pd.DataFrame:
        """A copy of ``frame`` with the score added as ``column`` (ready for :func:`procova_ancova`)."""
        return frame.assign(**{column: self.score(frame)})

    def evaluate(self, frame: pd.DataFrame, *, outcome: str | None = None) -> ModelPerformance:
        """Correlation of score and outcome on ``frame`` (control patients not used in training).

        This is the planning ``rho`` of :func:`procova_sample_size` (Schuler et al. 2021 estimate
        it on held-out historical data; the in-sample ``sqrt(r_squared)`` is optimistic).
        """
        outcome = outcome or self.outcome
        _require_columns(frame, [outcome], "evaluate")
        s = self.score(frame)
        y = _numeric(frame, outcome, "evaluate")
        if y.size < 3 or np.ptp(s) == 0 or np.ptp(y) == 0:
            rho = float("nan")
        else:
            rho = float(np.corrcoef(s, y)[0, 1])
        sigma = float(np.std(y, ddof=1)) if y.size > 1 else float("nan")
        rmse = float(np.sqrt(np.mean((y - s) ** 2))) if y.size else float("nan")
        return ModelPerformance(rho, sigma, rmse, int(y.size))


def fit_prognostic_model(
    virtual: pd.DataFrame, *, covariates: Sequence[str], outcome: str = "value"
) -> PrognosticModel:
    """Train the linear prognostic model by OLS with intercept on virtual control patients.

    ``(intercept, coefficients) = argmin || y - b_0 - X b ||^2`` (``numpy.linalg.lstsq``).

    Parameters
    ----------
    virtual : DataFrame
        Virtual (simulated) **control** patients only, one row each, with the baseline
        covariates and the outcome. (Rows of other arms would teach the model the treatment
        effect; filter them out first.)
    covariates : sequence of str
        Baseline covariate columns. Numeric or boolean (as 0/1). Categorical (object, string,
        category dtype) columns are refused: one-hot encode them into 0/1 indicator columns
        (dropping one reference level) and pass those, for fitting and for scoring alike.
    outcome : str
        Outcome column.

    Returns
    -------
    PrognosticModel

    Raises
    ------
    ProcovaError
        Missing column; categorical covariate; NaN or infinite value (names column, row, value);
        fewer than ``k + 2`` patients; a covariate constant or collinear with the others.
    """
    names = _names(covariates, "covariates")
    _require_columns(virtual, [*names, outcome], "fit_prognostic_model")
    if outcome in names:
        raise ProcovaError(
            f"fit_prognostic_model: the outcome {outcome!r} cannot also be a covariate",
            rule="outcome not a covariate",
            actual=outcome,
            expected="baseline covariates only",
            where="covariates",
        )
    y = _numeric(virtual, outcome, "fit_prognostic_model")
    cols = [_numeric(virtual, c, "fit_prognostic_model", categorical_hint=True) for c in names]
    n, k = y.size, len(names)
    if n < k + 2:
        raise ProcovaError(
            f"fit_prognostic_model: {n} virtual patients for {k} covariates and an intercept; "
            f"need at least {k + 2}",
            rule="n >= k + 2",
            actual=n,
            expected=f">= {k + 2}",
            where="virtual",
        )
    x = np.column_stack([np.ones(n), *cols])
    bad = _first_collinear(x)
    if bad is not None:
        col = "intercept" if bad == 0 else names[bad - 1]
        raise ProcovaError(
            f"fit_prognostic_model: covariate {col!r} is constant or a linear combination of "
            "the other covariates on the virtual patients; drop it",
            rule="full-rank design",
            actual=col,
            expected="linearly independent covariates",
            where=f"column {col!r}",
        )
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ coef
    rss = float(resid @ resid)
    tss = float(((y - y.mean()) ** 2).sum())
    return PrognosticModel(
        covariates=names,
        intercept=float(coef[0]),
        coefficients=tuple(float(c) for c in coef[1:]),
        outcome=outcome,
        n_train=n,
        residual_sd=math.sqrt(rss / (n - k - 1)),
        r_squared=1.0 - rss / tss if tss > 0 else float("nan"),
    )


# --------------------------------------------------------------------------- ANCOVA core


@dataclass(frozen=True)
class AncovaArrays:
    """Treatment-coefficient inference for a batch of trials (arrays of the batch shape).

    Attributes: ``estimate``, ``se``, ``t``, ``df``, ``ci_low``, ``ci_high``, ``p_value``
    (two-sided, ``tau = 0``), ``p_one_sided`` (``tau > delta``), ``n_control``,
    ``n_treatment``, ``rho`` (score-outcome correlation in the control arm),
    ``unadjusted_estimate``, ``unadjusted_se`` (OLS on intercept + treatment only: difference
    in means with the pooled-variance, or the matching HC, se), ``slope`` (score coefficient),
    ``sigma`` (residual sd). A trial whose design is rank-deficient gets NaN.
    """

    estimate: np.ndarray
    se: np.ndarray
    t: np.ndarray
    df: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    p_value: np.ndarray
    p_one_sided: np.ndarray
    n_control: np.ndarray
    n_treatment: np.ndarray
    rho: np.ndarray
    unadjusted_estimate: np.ndarray
    unadjusted_se: np.ndarray
    slope: np.ndarray
    sigma: np.ndarray
    level: float
    delta: float
    robust: bool
    hc: str


def _ols_column(
    x: np.ndarray, y: np.ndarray, col: int, robust: bool, hc: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Batched OLS: (coefficients (B, p), se of coefficient ``col`` (B,), sigma (B,), df).

    ``x`` (B, n, p), ``y`` (B, n). Rank-deficient batches give NaN.
    """
    b, n, p = x.shape
    q, r = np.linalg.qr(x)
    d = np.abs(np.diagonal(r, axis1=-2, axis2=-1))
    norm = np.linalg.norm(x, axis=-2)
    deficient = ((d <= _RANK_TOL * norm) | (norm == 0)).any(axis=-1)
    if deficient.any():
        r = r.copy()
        r[deficient] = np.eye(p)
    rinv = np.linalg.solve(r, np.broadcast_to(np.eye(p), r.shape))
    qty = np.einsum("bnp,bn->bp", q, y)
    coef = np.einsum("bij,bj->bi", rinv, qty)
    resid = y - np.einsum("bnp,bp->bn", x, coef)
    df = n - p
    rss = np.einsum("bn,bn->b", resid, resid)
    sigma2 = rss / df if df > 0 else np.full(b, np.nan)
    # a = (X'X)^-1 e_col = R^-1 (R^-T e_col); R^-T e_col is row ``col`` of R^-1
    a = np.einsum("bij,bj->bi", rinv, rinv[:, col, :])
    if robust:
        c = np.einsum("bnp,bp->bn", x, a)
        if hc == "HC0":
            omega = resid**2
        elif hc == "HC1":
            omega = resid**2 * (n / df if df > 0 else np.nan)
        else:
            h = np.einsum("bnp,bnp->bn", q, q)
            with np.errstate(divide="ignore", invalid="ignore"):
                one_minus = np.where(h < 1.0 - 1e-10, 1.0 - h, np.nan)
                omega = resid**2 / (one_minus if hc == "HC2" else one_minus**2)
        var = np.einsum("bn,bn->b", c * c, omega)
    else:
        var = sigma2 * a[:, col]
    se = np.sqrt(var)
    coef = np.where(deficient[:, None], np.nan, coef)
    se = np.where(deficient, np.nan, se)
    return coef, se, np.sqrt(sigma2), np.asarray(df)


def ancova_arrays(
    y: ArrayLike,
    treated: ArrayLike,
    score: ArrayLike,
    covariates: ArrayLike | None = None,
    *,
    robust: bool = False,
    hc: HC = "HC2",
    level: float = 0.95,
    delta: float = 0.0,
) -> AncovaArrays:
    """Vectorised PROCOVA ANCOVA for one trial or a batch of trials of equal size.

    Fits ``y = beta_0 + tau W + beta_s s + gamma' Z + eps`` by OLS per trial (see the module
    docstring for the formulas) with batched QR decompositions; no Python loop over trials.

    Parameters
    ----------
    y, treated, score : array_like, shape (..., n)
        Outcome, treatment indicator (1/True treatment, 0/False control), prognostic score.
        Leading dimensions index trials.
    covariates : array_like, shape (..., n, k), optional
        Further baseline covariates.
    robust : bool
        Sandwich standard errors of type ``hc`` instead of the model-based one.
    hc : {"HC0", "HC1", "HC2", "HC3"}
    level : float
        Confidence level of the two-sided interval.
    delta : float
        Margin of the one-sided test ``H0: tau <= delta``.

    Returns
    -------
    AncovaArrays
        Fields of shape ``...`` (the leading dimensions).
    """
    _check_level(level)
    _check_hc(hc)
    delta = _finite_scalar(delta, "delta")
    y_, w_, s_ = np.broadcast_arrays(
        np.asarray(y, dtype=float), np.asarray(treated, dtype=float), np.asarray(score, dtype=float)
    )
    if y_.ndim == 0:
        raise ProcovaError(
            "ancova_arrays: y must have at least one dimension (patients)",
            rule="array of patients",
            actual=y_.shape,
            expected="(..., n)",
            where="y",
        )
    batch, n = y_.shape[:-1], y_.shape[-1]
    bsize = math.prod(batch)
    y2, w2, s2 = (a.reshape(bsize, n) for a in (y_, w_, s_))
    if not np.isin(w2, (0.0, 1.0)).all():
        raise ProcovaError(
            "ancova_arrays: treated must be 0/1 (or boolean)",
            rule="binary treatment indicator",
            actual=np.unique(w2)[:5].tolist(),
            expected="0 or 1",
            where="treated",
        )
    parts = [np.ones((bsize, n, 1)), w2[..., None], s2[..., None]]
    if covariates is not None:
        z = np.asarray(covariates, dtype=float)
        if z.ndim == y_.ndim:  # a single covariate given as (..., n)
            z = z[..., None]
        z = np.broadcast_to(z, (*batch, n, z.shape[-1])).reshape(bsize, n, -1)
        parts.append(z)
    x = np.concatenate(parts, axis=-1)
    for name, arr in (("y", y2), ("score", s2), ("design matrix", x)):
        if not np.isfinite(arr).all():
            raise ProcovaError(
                f"ancova_arrays: {name} has NaN or infinite values",
                rule="finite values",
                actual="nan/inf",
                expected="finite numbers",
                where=name,
            )
    coef, se, sigma, df = _ols_column(x, y2, 1, robust, hc)
    _, se_u = _ols_column(x[..., :2], y2, 1, robust, hc)[:2]
    n1 = w2.sum(axis=-1)
    n0 = n - n1
    with np.errstate(divide="ignore", invalid="ignore"):
        est_u = (w2 * y2).sum(-1) / n1 - ((1 - w2) * y2).sum(-1) / n0
        # correlation of score and outcome among control patients
        c = 1.0 - w2
        ms = (c * s2).sum(-1) / n0
        my = (c * y2).sum(-1) / n0
        cov = (c * (s2 - ms[:, None]) * (y2 - my[:, None])).sum(-1)
        vs = (c * (s2 - ms[:, None]) ** 2).sum(-1)
        vy = (c * (y2 - my[:, None]) ** 2).sum(-1)
        rho = np.where((vs > 0) & (vy > 0) & (n0 >= 2), cov / np.sqrt(vs * vy), np.nan)
        est = coef[:, 1]
        t = est / se
        q = stats.t.ppf(0.5 + level / 2.0, df) if df > 0 else np.nan
        p2 = 2.0 * stats.t.sf(np.abs(t), df) if df > 0 else np.full(bsize, np.nan)
        p1 = stats.t.sf((est - delta) / se, df) if df > 0 else np.full(bsize, np.nan)

    def shape(a: Any) -> np.ndarray:
        return np.broadcast_to(np.asarray(a, dtype=float), (bsize,)).reshape(batch)

    return AncovaArrays(
        estimate=shape(est),
        se=shape(se),
        t=shape(t),
        df=shape(df),
        ci_low=shape(est - q * se),
        ci_high=shape(est + q * se),
        p_value=shape(p2),
        p_one_sided=shape(p1),
        n_control=shape(n0),
        n_treatment=shape(n1),
        rho=shape(rho),
        unadjusted_estimate=shape(est_u),
        unadjusted_se=shape(se_u),
        slope=shape(coef[:, 2]),
        sigma=shape(sigma),
        level=float(level),
        delta=delta,
        robust=bool(robust),
        hc=hc,
    )


# --------------------------------------------------------------------------- one trial


@dataclass(frozen=True)
class ProcovaResult:
    """PROCOVA ANCOVA of one trial (see :func:`procova_ancova`).

    Attributes
    ----------
    estimate, se, t, df : float
        Treatment coefficient ``tau_hat``, its standard error, ``tau_hat / se``, ``n - p``.
    ci : tuple of float
        ``level`` two-sided t interval.
    p_value : float
        Two-sided p for ``H0: tau = 0``.
    p_one_sided : float
        One-sided p for ``H0: tau <= delta`` against ``H1: tau > delta``.
    n_control, n_treatment : int
    rho : float
        Pearson correlation of score and outcome in the control arm (NaN with < 2 control
        patients or a constant score or outcome).
    unadjusted_estimate, unadjusted_se : float
        Difference in means (treatment - control) and its se from the unadjusted OLS
        (pooled-variance t test; HC of the same type when ``robust``).
    coefficients : dict
        Every OLS coefficient by name (``intercept``, ``treatment``, the score column, covariates).
    sigma : float
        Residual sd ``sqrt(RSS / df)``.
    level, delta, robust, hc
        The settings used.
    """

    estimate: float
    se: float
    ci: tuple[float, float]
    t: float
    df: int
    p_value: float
    p_one_sided: float
    delta: float
    n_control: int
    n_treatment: int
    rho: float
    unadjusted_estimate: float
    unadjusted_se: float
    coefficients: dict[str, float] = field(default_factory=dict)
    sigma: float = float("nan")
    level: float = 0.95
    robust: bool = False
    hc: str = "HC2"

    @property
    def variance_ratio(self) -> float:
        """Observed ``se^2 / unadjusted_se^2`` (compare with ``1 - rho^2``)."""
        return (self.se / self.unadjusted_se) ** 2


def procova_ancova(
    data: pd.DataFrame,
    *,
    score: str = "prognostic_score",
    treatment_col: str = "arm",
    control: str,
    treatment: str,
    outcome: str = "value",
    covariates: Sequence[str] = (),
    robust: bool = False,
    hc: HC = "HC2",
    level: float = 0.95,
    delta: float = 0.0,
) -> ProcovaResult:
    """PROCOVA: ANCOVA of the randomised contrast adjusted for a prognostic score.

    OLS of ``outcome ~ 1 + W + score (+ covariates)`` on the patients of the two arms, with
    ``W = 1`` for ``treatment`` and ``0`` for ``control``; inference on the coefficient of ``W``
    (formulas in the module docstring)::

        tau_hat = [(X'X)^-1 X'y]_W,  se^2 = sigma_hat^2 [(X'X)^-1]_WW  (or HC),
        CI = tau_hat -+ t_{n-p, (1+level)/2} se.

    Parameters
    ----------
    data : DataFrame
        One row per randomised patient. Rows of arms other than ``control`` and ``treatment``
        are left out (pairwise comparison in a multi-arm trial).
    score : str
        Prognostic-score column, computed before unblinding from baseline covariates by a model
        fixed in advance (e.g. :meth:`PrognosticModel.with_score`).
    treatment_col : str
        Arm label column.
    control, treatment : str
        The two arm labels.
    outcome : str
        Continuous outcome column.
    covariates : sequence of str
        Further prespecified numeric baseline covariates.
    robust : bool
        HC (sandwich) standard error of type ``hc`` instead of the model-based OLS one;
        recommended with unequal allocation (Bartlett 2020).
    hc : {"HC0", "HC1", "HC2", "HC3"}
    level : float
        Confidence level, e.g. 0.95.
    delta : float
        Margin for the one-sided p-value ``p_one_sided`` (``H1: tau > delta``).

    Returns
    -------
    ProcovaResult

    Raises
    ------
    ProcovaError
        Missing column; NaN, infinite or non-numeric value in the outcome, score or a covariate
        (names the column, row label and value); a missing arm label; an arm with no patients;
        no residual degrees of freedom; a score or covariate that is constant or collinear.
    """
    covs = _names(covariates, "covariates")
    _check_level(level)
    _check_hc(hc)
    delta = _finite_scalar(delta, "delta")
    if control == treatment:
        raise ProcovaError(
            f"procova_ancova: control and treatment are the same arm {control!r}",
            rule="two different arms",
            actual=control,
            expected="two different labels",
            where="control/treatment",
        )
    _require_columns(data, [treatment_col, outcome, score, *covs], "procova_ancova")
    overlap = {outcome, score, treatment_col} & set(covs)
    if overlap or len({outcome, score, treatment_col}) < 3:
        raise ProcovaError(
            "procova_ancova: outcome, score, arm and covariates must be different columns "
            f"(outcome={outcome!r}, score={score!r}, treatment_col={treatment_col!r}, "
            f"covariates={list(covs)})",
            rule="distinct columns",
            actual=sorted(overlap) or [outcome, score, treatment_col],
            expected="distinct columns",
            where="columns",
        )
    arm = data[treatment_col]
    missing = arm.isna().to_numpy()
    if missing.any():
        pos = int(np.flatnonzero(missing)[0])
        label = data.index[pos]
        raise ProcovaError(
            f"procova_ancova: column {treatment_col!r} row {label!r}: value {arm.iloc[pos]!r} "
            "is a missing arm label",
            rule="arm label present",
            actual=arm.iloc[pos],
            expected=f"{control!r} or {treatment!r}",
            where=f"column {treatment_col!r}, row {label!r}",
        )
    is_c = (arm == control).to_numpy()
    is_t = (arm == treatment).to_numpy()
    found = sorted({str(v) for v in pd.unique(arm)})
    for label, mask in ((control, is_c), (treatment, is_t)):
        if not mask.any():
            raise ProcovaError(
                f"procova_ancova: arm {label!r} has no patients in column {treatment_col!r} "
                f"(labels found: {found})",
                rule="both arms non-empty",
                actual=found,
                expected=f"rows with {treatment_col} == {label!r}",
                where=f"column {treatment_col!r}",
            )
    rows = data.loc[is_c | is_t]
    y = _numeric(rows, outcome, "procova_ancova")
    s = _numeric(rows, score, "procova_ancova")
    z = [_numeric(rows, c, "procova_ancova") for c in covs]
    w = is_t[is_c | is_t].astype(float)
    n, p = y.size, 3 + len(covs)
    if n <= p:
        raise ProcovaError(
            f"procova_ancova: {n} patients for {p} coefficients (intercept, treatment, score"
            f"{', covariates' if covs else ''}); need at least {p + 1}",
            rule="n > p",
            actual=n,
            expected=f">= {p + 1}",
            where="data",
        )
    names = ["intercept", "treatment", score, *covs]
    x = np.column_stack([np.ones(n), w, s, *z])
    bad = _first_collinear(x)
    if bad is not None:
        col = names[bad]
        raise ProcovaError(
            f"procova_ancova: column {col!r} is constant or a linear combination of the arm "
            "indicator and the other columns in the analysed patients; the coefficients are "
            "not identifiable",
            rule="full-rank design",
            actual=col,
            expected="a non-constant score and independent covariates",
            where=f"column {col!r}",
        )
    res = ancova_arrays(
        y,
        w,
        s,
        np.column_stack(z) if z else None,
        robust=robust,
        hc=hc,
        level=level,
        delta=delta,
    )
    if not np.isfinite(res.se):
        raise ProcovaError(
            f"procova_ancova: the {hc} standard error is undefined: a patient has leverage 1 "
            "(e.g. the only patient of an arm); use more patients or another hc",
            rule="leverage < 1",
            actual=hc,
            expected="HC0/HC1 or more patients per arm",
            where="robust",
        )
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    return ProcovaResult(
        estimate=float(res.estimate),
        se=float(res.se),
        ci=(float(res.ci_low), float(res.ci_high)),
        t=float(res.t),
        df=int(res.df),
        p_value=float(res.p_value),
        p_one_sided=float(res.p_one_sided),
        delta=delta,
        n_control=int(res.n_control),
        n_treatment=int(res.n_treatment),
        rho=float(res.rho),
        unadjusted_estimate=float(res.unadjusted_estimate),
        unadjusted_se=float(res.unadjusted_se),
        coefficients={k: float(v) for k, v in zip(names, coef, strict=True)},
        sigma=float(res.sigma),
        level=float(level),
        robust=bool(robust),
        hc=hc,
    )


# --------------------------------------------------------------------------- planning


def _check_rho(rho: ArrayLike, name: str = "rho") -> np.ndarray:
    r = np.asarray(rho, dtype=float)
    if not (np.isfinite(r).all() and (np.abs(r) <= 1.0).all()):
        raise ProcovaError(
            f"{name}: a correlation must be a finite number in [-1, 1], got {rho!r}",
            rule="-1 <= rho <= 1",
            actual=rho,
            expected="[-1, 1]",
            where=name,
        )
    return r


def variance_reduction(rho: ArrayLike) -> float | np.ndarray:
    """Variance (and sample-size) factor of PROCOVA versus the unadjusted analysis: ``1 - rho^2``.

    ``Var(tau_hat_PROCOVA) / Var(tau_hat_unadjusted) -> 1 - rho^2`` when the score-outcome
    correlation ``rho`` and the outcome sd are the same in both arms (Schuler et al. 2021), so
    ``n`` PROCOVA patients are worth ``n / (1 - rho^2)`` unadjusted ones and the required
    sample size is multiplied by ``1 - rho^2``.

    Parameters
    ----------
    rho : float or array_like
        Correlation(s) in ``[-1, 1]``.

    Returns
    -------
    float or ndarray
    """
    r = _check_rho(rho)
    out = 1.0 - r**2
    return float(out) if out.ndim == 0 else out


def asymptotic_variance(
    sigma0: float,
    rho0: float,
    *,
    sigma1: float | None = None,
    rho1: float | None = None,
    p_treatment: float = 0.5,
) -> float:
    """``n Var(tau_hat)`` of the score-adjusted ANCOVA as ``n -> inf`` (common slope, no interaction).

    With ``pi_1 = p_treatment``, ``pi_0 = 1 - pi_1``, arm outcome sds ``sigma_a`` and
    score-outcome correlations ``rho_a``, and ``b = pi_0 rho_0 sigma_0 + pi_1 rho_1 sigma_1``
    (the pooled within-arm slope times the score sd)::

        v = sum_a (sigma_a^2 - 2 b rho_a sigma_a + b^2) / pi_a,

    i.e. ``sum_a Var(Y(a) - b s / sd_s) / pi_a``: the ANCOVA estimate is asymptotically
    ``(ybar_1 - beta sbar_1) - (ybar_0 - beta sbar_0)`` with ``beta`` the limit of the pooled
    within-arm slope (derivation as in Yang & Tsiatis 2001). With ``sigma_1 = sigma_0 = sigma``
    and ``rho_1 = rho_0 = rho`` (the defaults) ``v = sigma^2 (1 - rho^2) / (pi_0 pi_1)``
    (Schuler et al. 2021). With 1:1 allocation the common slope is the variance-minimising one
    and ``v`` equals the optimal-linear-adjustment form
    ``sigma_0^2/pi_0 + sigma_1^2/pi_1 - pi_0 pi_1 (rho_0 sigma_0/pi_0 + rho_1 sigma_1/pi_1)^2``;
    with unequal allocation and unequal arms it is larger. ``rho = 0`` gives the unadjusted
    ``sigma_0^2/pi_0 + sigma_1^2/pi_1``. The test suite checks ``v / n`` against the simulated
    variance of the estimate.
    """
    s0 = _finite_scalar(sigma0, "sigma0")
    s1 = s0 if sigma1 is None else _finite_scalar(sigma1, "sigma1")
    r0 = float(_check_rho(rho0, "rho0"))
    r1 = r0 if rho1 is None else float(_check_rho(rho1, "rho1"))
    pi1 = _finite_scalar(p_treatment, "p_treatment")
    if not (0.0 < pi1 < 1.0) or s0 <= 0 or s1 <= 0:
        raise ProcovaError(
            "asymptotic_variance: need 0 < p_treatment < 1 and positive sds, got "
            f"p_treatment={p_treatment!r}, sigma0={sigma0!r}, sigma1={sigma1!r}",
            rule="0 < p_treatment < 1, sigma > 0",
            actual=(p_treatment, sigma0, sigma1),
            expected="0 < p < 1, sigma > 0",
            where="asymptotic_variance",
        )
    pi0 = 1.0 - pi1
    b = pi0 * r0 * s0 + pi1 * r1 * s1
    return (s0**2 - 2 * b * r0 * s0 + b**2) / pi0 + (s1**2 - 2 * b * r1 * s1 + b**2) / pi1


@dataclass(frozen=True)
class ProcovaSampleSize:
    """Prospective sample size (:func:`procova_sample_size`).

    ``n_control``, ``n_treatment``, ``n_total``: PROCOVA; ``*_unadjusted``: the same design
    analysed without the score (``rho = 0``); ``n_exact``: the unrounded total of the formula;
    ``rho``, ``sigma``: the (conservative) planning values used; ``variance_reduction``:
    ``1 - rho^2``; ``power``: noncentral-t power of the rounded design
    (:func:`procova_power`).
    """

    n_control: int
    n_treatment: int
    n_total: int
    n_control_unadjusted: int
    n_treatment_unadjusted: int
    n_total_unadjusted: int
    n_exact: float
    rho: float
    sigma: float
    variance_reduction: float
    power: float


def _check_design(
    effect: float, delta: float, sigma: float, alpha: float, allocation: float
) -> None:
    if sigma <= 0:
        raise ProcovaError(
            f"sigma: must be > 0, got {sigma!r}",
            rule="sigma > 0",
            actual=sigma,
            expected="> 0",
            where="sigma",
        )
    if not 0.0 < alpha < 1.0:
        raise ProcovaError(
            f"alpha: must be in (0, 1), got {alpha!r}",
            rule="0 < alpha < 1",
            actual=alpha,
            expected="e.g. 0.05",
            where="alpha",
        )
    if allocation <= 0:
        raise ProcovaError(
            f"allocation: n_treatment / n_control must be > 0, got {allocation!r}",
            rule="allocation > 0",
            actual=allocation,
            expected="> 0 (1 for 1:1)",
            where="allocation",
        )
    if effect == delta:
        raise ProcovaError(
            f"effect: must differ from the margin delta={delta!r}, got {effect!r}",
            rule="effect != delta",
            actual=effect,
            expected=f"!= {delta!r}",
            where="effect",
        )


def _planning(
    rho: float, sigma: float, rho_discount: float, variance_inflation: float
) -> tuple[float, float]:
    if not 0.0 <= rho_discount <= 1.0 or variance_inflation < 1.0:
        raise ProcovaError(
            "rho_discount must be in [0, 1] and variance_inflation >= 1 (conservative planning), "
            f"got rho_discount={rho_discount!r}, variance_inflation={variance_inflation!r}",
            rule="0 <= rho_discount <= 1, variance_inflation >= 1",
            actual=(rho_discount, variance_inflation),
            expected="conservative factors",
            where="rho_discount/variance_inflation",
        )
    return float(_check_rho(rho)) * rho_discount, sigma * math.sqrt(variance_inflation)


def procova_power(
    n_total: float,
    effect: float,
    *,
    sigma: float,
    rho: float,
    alpha: float = 0.05,
    allocation: float = 1.0,
    delta: float = 0.0,
    n_covariates: int = 1,
    rho_discount: float = 1.0,
    variance_inflation: float = 1.0,
) -> float:
    """Power of the two-sided level-``alpha`` PROCOVA t test (noncentral t).

    ``n_0 = n / (1 + r)``, ``n_1 = r n / (1 + r)`` (``r = allocation``),
    ``ncp = (Delta - delta) / (sigma sqrt(1 - rho^2) sqrt(1/n_0 + 1/n_1))``,
    ``df = n - 2 - n_covariates`` and ``power = P(T_{df,ncp} > t_c) + P(T_{df,ncp} < -t_c)``,
    ``t_c = t_{df, 1 - alpha/2}`` (Kieser 2020, as ``postcard::power_nc``). ``n_covariates``
    counts the score (1) plus any further covariates; ``rho = 0, n_covariates = 0`` is the
    two-sample t test. ``rho`` and ``sigma`` are multiplied by ``rho_discount`` and
    ``sqrt(variance_inflation)`` first.
    """
    effect, delta = _finite_scalar(effect, "effect"), _finite_scalar(delta, "delta")
    sigma, alpha = _finite_scalar(sigma, "sigma"), _finite_scalar(alpha, "alpha")
    allocation = _finite_scalar(allocation, "allocation")
    _check_design(effect, delta, sigma, alpha, allocation)
    rho_p, sigma_p = _planning(rho, sigma, rho_discount, variance_inflation)
    n = _finite_scalar(n_total, "n_total")
    df = n - 2 - int(n_covariates)
    if df <= 0:
        raise ProcovaError(
            f"n_total: {n_total!r} patients leave no degrees of freedom for "
            f"{n_covariates} covariate(s)",
            rule="n > 2 + n_covariates",
            actual=n_total,
            expected=f"> {2 + int(n_covariates)}",
            where="n_total",
        )
    n0, n1 = n / (1.0 + allocation), n * allocation / (1.0 + allocation)
    ncp = (effect - delta) / (sigma_p * math.sqrt(1.0 - rho_p**2) * math.sqrt(1 / n0 + 1 / n1))
    tc = stats.t.ppf(1.0 - alpha / 2.0, df)
    return float(stats.nct.sf(tc, df, ncp) + stats.nct.cdf(-tc, df, ncp))


def procova_sample_size(
    effect: float,
    *,
    sigma: float,
    rho: float,
    alpha: float = 0.05,
    power: float = 0.8,
    allocation: float = 1.0,
    delta: float = 0.0,
    rho_discount: float = 1.0,
    variance_inflation: float = 1.0,
    t_correction: bool = True,
    n_covariates: int = 1,
) -> ProcovaSampleSize:
    """Prospective PROCOVA sample size with the variance reduction ``1 - rho^2``.

    ::

        rho_p = rho_discount * rho,   sigma_p^2 = variance_inflation * sigma^2,
        n = (1 + r)^2 / r * (z_{1-alpha/2} + z_{1-beta})^2 sigma_p^2 (1 - rho_p^2)
            / (Delta - delta)^2  [+ z_{1-alpha/2}^2 / 2 if t_correction],
        n_0 = ceil(n / (1 + r)),  n_1 = ceil(r n / (1 + r)).

    The asymptotic variance ``sigma^2 (1 - rho^2) / (n pi_0 pi_1)`` is Schuler et al. (2021);
    the ``z^2/2`` term is the Guenther (1981) / Schouten (1999) correction for estimating the
    variance (``postcard::samplesize_gs``). The unadjusted design is the same formula with
    ``rho = 0``.

    Parameters
    ----------
    effect : float
        Treatment effect ``Delta`` (treatment minus control) the trial must detect.
    sigma : float
        Outcome sd in the control population (from historical / virtual control patients).
    rho : float
        Correlation of prognostic score and outcome in the control population, estimated on
        patients not used to train the model (:meth:`PrognosticModel.evaluate`).
    alpha : float
        Two-sided significance level (0.05: one-sided 0.025).
    power : float
        Target power ``1 - beta``.
    allocation : float
        ``r = n_treatment / n_control`` (1 for 1:1, 2 for 2:1).
    delta : float
        Superiority margin (0: test of no difference).
    rho_discount : float
        Conservative planning: the correlation is multiplied by this (``<= 1``).
    variance_inflation : float
        Conservative planning: the variance ``sigma^2`` is multiplied by this (``>= 1``).
    t_correction : bool
        Add the Guenther-Schouten term ``z_{1-alpha/2}^2 / 2``.
    n_covariates : int
        Covariates in the analysis model, the score included (for the reported power only).

    Returns
    -------
    ProcovaSampleSize
    """
    effect, delta = _finite_scalar(effect, "effect"), _finite_scalar(delta, "delta")
    sigma, alpha = _finite_scalar(sigma, "sigma"), _finite_scalar(alpha, "alpha")
    power = _finite_scalar(power, "power")
    allocation = _finite_scalar(allocation, "allocation")
    _check_design(effect, delta, sigma, alpha, allocation)
    if not 0.0 < power < 1.0:
        raise ProcovaError(
            f"power: must be in (0, 1), got {power!r}",
            rule="0 < power < 1",
            actual=power,
            expected="e.g. 0.8 or 0.9",
            where="power",
        )
    rho_p, sigma_p = _planning(rho, sigma, rho_discount, variance_inflation)
    r = allocation
    za, zb = stats.norm.ppf(1.0 - alpha / 2.0), stats.norm.ppf(power)
    base = (1.0 + r) ** 2 / r * (za + zb) ** 2 * sigma_p**2 / (effect - delta) ** 2
    extra = za**2 / 2.0 if t_correction else 0.0

    def arms(n: float) -> tuple[int, int]:
        # tiny tolerance so that an exact integer (e.g. 64.0 from rounding noise) is not bumped
        return math.ceil(n / (1.0 + r) - 1e-9), math.ceil(n * r / (1.0 + r) - 1e-9)

    n_exact = base * (1.0 - rho_p**2) + extra
    n0, n1 = arms(n_exact)
    u0, u1 = arms(base + extra)
    achieved = procova_power(
        n0 + n1,
        effect,
        sigma=sigma_p,
        rho=rho_p,
        alpha=alpha,
        allocation=n1 / n0,
        delta=delta,
        n_covariates=n_covariates,
    )
    return ProcovaSampleSize(
        n_control=n0,
        n_treatment=n1,
        n_total=n0 + n1,
        n_control_unadjusted=u0,
        n_treatment_unadjusted=u1,
        n_total_unadjusted=u0 + u1,
        n_exact=float(n_exact),
        rho=rho_p,
        sigma=sigma_p,
        variance_reduction=1.0 - rho_p**2,
        power=achieved,
    )
