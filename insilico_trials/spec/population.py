"""The protocol's ``population`` section: covariates, eligibility, individual parameters, target.

A frozen pydantic v2 model, validated once at protocol load. Every error is raised at the field it
concerns (its ``loc`` is the path in the YAML file) and says what is allowed and the value.
Eligibility and derived-covariate expressions are parsed here by a restricted evaluator (no Python
``eval``): only arithmetic, comparisons, ``and``/``or``/``not``, ``in`` with a literal list, a few
math functions and the declared covariate names are accepted, so a protocol file can never run code.

Full example (every key shown; most are optional)::

    population:
      covariates:
        WT:  {distribution: lognormal, mean: 75, sd: 15, lower: 40, upper: 160, unit: kg}
        HT:  {distribution: normal, mean: 170, sd: 10, lower: 140, upper: 210, unit: cm}
        AGE: {distribution: normal, mean: 62, sd: 10, lower: 18, upper: 90, unit: years}
        SCR: {distribution: lognormal, mean: 0.9, sd: 0.25, lower: 0.3, upper: 4, unit: mg/dL}
        SEX: {distribution: categorical, categories: {F: 0.45, M: 0.55}}
        ECOG: {distribution: categorical, categories: {0: 0.45, 1: 0.45, 2: 0.10}}
        ANCESTRY: {distribution: categorical,
                   categories: {EUR: 0.6, AFR: 0.15, EAS: 0.15, SAS: 0.1}}
        CYP2D6:
          distribution: categorical
          by: ANCESTRY                       # frequencies differ by ancestry group
          frequencies:
            EUR: {PM: 0.07, IM: 0.10, NM: 0.80, UM: 0.03}
            AFR: {PM: 0.02, IM: 0.30, NM: 0.63, UM: 0.05}
            EAS: {PM: 0.01, IM: 0.40, NM: 0.58, UM: 0.01}
            SAS: {PM: 0.03, IM: 0.15, NM: 0.80, UM: 0.02}
      correlation:                           # Gaussian copula on the normal scores
        names: [WT, HT, AGE]
        matrix: [[1, 0.5, 0.1], [0.5, 1, -0.1], [0.1, -0.1, 1]]
      derived:                               # built-ins, or {name, expression, unit}
        - BSA                                # Mosteller, m^2 (WT kg, HT cm)
        - BMI                                # kg/m^2
        - CRCL                               # Cockcroft-Gault, mL/min (AGE, WT, SCR mg/dL, SEX F/M)
        - {name: LOGWT, expression: "log(WT / 70)"}
      eligibility:
        inclusion: ["AGE >= 18", "CRCL > 30 and ECOG <= 1"]
        exclusion: ["BMI > 40", "CYP2D6 == 'PM'"]
      parameters:
        CL:
          typical: 1.1
          unit: L/h
          omega: 0.09                        # variance of ETA (log scale for lognormal)
          uncertainty_rse: 0.1               # relative SE of the typical value (replicate level)
          effects:
            - {covariate: WT, form: power, exponent: 0.75, reference: 70}
            - {covariate: CRCL, form: linear, slope: 0.005, reference: 90}
            - {covariate: CYP2D6, form: categorical, factors: {PM: 0.5, IM: 0.75, UM: 1.4}}
        V:  {typical: 20, unit: L, omega: 0.04,
             effects: [{covariate: WT, form: power, exponent: 1.0, reference: 70}]}
        KA: {typical: 1.2, unit: 1/h}        # no omega: no IIV
        F:  {typical: 0.8, distribution: logit, omega: 0.1}
        KG: {typical: 0.005, unit: 1/day, omega: 0.25,
             effects: [{covariate: ECOG, form: exponential, coefficient: 0.2, reference: 0}]}
      omega_block:                           # optional full block; diagonal must match omegas
        names: [CL, V]
        matrix: [[0.09, 0.03], [0.03, 0.04]]
      omega_df: 100                          # optional: inverse-Wishart uncertainty on OMEGA
      target:                                # optional: calibrate to a real population
        name: "Trial X baseline table"
        covariates:
          WT: {mean: 80, sd: 17}
          AGE: {mean: 60, sd: 9}
          SCR: {quantiles: {0.25: 0.72, 0.5: 0.86, 0.75: 1.02}}
          SEX: {frequencies: {F: 0.40, M: 0.60}}
        correlation: {names: [WT, AGE], matrix: [[1, 0.1], [0.1, 1]]}

Semantics
---------
* ``normal``: ``mean``/``sd`` of the untruncated normal; ``lognormal``: arithmetic ``mean``/``sd``
  of the untruncated log-normal (log-scale sigma^2 = log(1 + sd^2/mean^2)); ``uniform``: on
  ``[lower, upper]``. ``lower``/``upper`` truncate (inverse-CDF truncation, so the copula is kept).
* ``correlation`` is the correlation of the latent standard normal scores (Gaussian copula). For
  normal covariates it is the Pearson correlation, for log-normal ones that of the logs; for a
  categorical covariate the score is thresholded at the cumulative frequencies (ordinal, in the
  declared category order).
* Individual parameter: ``lognormal`` ``typical * prod(effects) * exp(ETA)``; ``normal``
  ``typical * prod(effects) + ETA``; ``logit`` ``expit(logit(typical) + log(prod(effects)) + ETA)``.
  ``ETA ~ N(0, OMEGA)``. Effects: ``power`` (x/ref)^exponent, ``exponential``
  exp(coefficient (x - ref)), ``linear`` 1 + slope (x - ref) (floored at 1e-6), ``categorical``
  factor per category (unlisted categories: 1). Categoricals with integer labels (ECOG) may also
  take the continuous forms, on the label value.
* Parameter uncertainty (``uncertainty=True`` in ``sample_cohort``): once per replicate, a
  lognormal typical value is drawn as typical exp(N(0, log(1 + rse^2))) (median = typical),
  normal as N(typical, (rse |typical|)^2), logit on the logit scale with SD rse / (1 - typical);
  with ``omega_df`` OMEGA is drawn from an inverse Wishart with that df and mean OMEGA.
"""

from __future__ import annotations

import ast
import functools
import itertools
import math
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

from insilico_trials.errors import InputError

__all__ = [
    "DERIVED_BUILTINS",
    "CategoricalCovariate",
    "ContinuousCovariate",
    "CorrelationSpec",
    "CovariateEffect",
    "DerivedCovariate",
    "Eligibility",
    "Expression",
    "ExpressionError",
    "OmegaBlock",
    "Parameter",
    "Population",
    "Target",
    "TargetCovariate",
]

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_COLUMNS = frozenset({"patient", "arm", "candidate", "replicate", "weight"})
_FREQ_TOL = 1e-6


def _frozen() -> ConfigDict:
    return ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def _check_name(name: str, what: str) -> str:
    if not _NAME_RE.match(name) or name in _FUNCTIONS or name in RESERVED_COLUMNS:
        raise ValueError(
            f"{what} name must be an identifier (letters, digits, _), not a function name or one "
            f"of {sorted(RESERVED_COLUMNS)} (got {name!r})"
        )
    return name


def _raise_at(errors: list[tuple[tuple[str | int, ...], Any, str]], title: str) -> None:
    """Raise one ValidationError whose entries sit at the given field paths."""
    if errors:
        raise ValidationError.from_exception_data(
            title,
            [
                InitErrorDetails(type="value_error", loc=loc, input=inp, ctx={"error": msg})
                for loc, inp, msg in errors
            ],
        )


# --------------------------------------------------------------------------------------------
# Restricted expression evaluator
# --------------------------------------------------------------------------------------------

_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "log": np.log,
    "log10": np.log10,
    "exp": np.exp,
    "sqrt": np.sqrt,
    "tanh": np.tanh,
    "abs": np.abs,
    "min": np.minimum,
    "max": np.maximum,
    "ifelse": np.where,  # compiled lazily in Expression._node
}
_BINOPS = {
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.Div: np.divide,
    ast.Pow: np.power,
}
_CMPOPS = {
    ast.Eq: np.equal,
    ast.NotEq: np.not_equal,
    ast.Lt: np.less,
    ast.LtE: np.less_equal,
    ast.Gt: np.greater,
    ast.GtE: np.greater_equal,
}


class ExpressionError(InputError):
    """An eligibility or derived expression uses a name or syntax that is not allowed."""


def _depth(node: ast.AST) -> int:
    """The nesting depth of a syntax tree, without recursion."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        n, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((c, d + 1) for c in ast.iter_child_nodes(n))
    return deepest


class Expression:
    """A compiled, restricted expression over covariate arrays.

    Parameters
    ----------
    source
        The text, e.g. ``"CRCL > 30 and ECOG <= 1"``.
    names
        Allowed names. The value is ``None`` for a numeric covariate, or the tuple of labels of
        a categorical covariate with string labels (it is evaluated on integer codes, and may
        only be compared with ``==``, ``!=``, ``in``, ``not in`` to one of its labels).

    The compiled form is a tree of closures over numpy ufuncs: no ``eval``, no attribute
    access, no subscripts, no lambdas, only the functions in ``log, log10, exp, sqrt, tanh, abs,
    min, max`` and ``ifelse(condition, then, else)``.
    """

    MAX_LENGTH = 1000  # characters; a criterion is a line, not a program
    MAX_DEPTH = 100  # nesting of the syntax tree (a model's longest expression has about 15)

    def __init__(self, source: str, names: Mapping[str, tuple[str, ...] | None]) -> None:
        self.source = source
        self._names = dict(names)
        if len(source) > self.MAX_LENGTH:
            raise ExpressionError(
                f"{len(source)} characters; an expression is at most {self.MAX_LENGTH}"
            )
        try:
            tree = ast.parse(source.strip(), mode="eval")
            if _depth(tree.body) > self.MAX_DEPTH:
                raise RecursionError  # the same refusal whatever the interpreter's limit
            self.used: set[str] = set()
            self._fn = self._compile(tree.body)
        except SyntaxError as exc:
            raise ExpressionError(f"cannot parse {source!r}: {exc.msg}") from None
        except (RecursionError, MemoryError):
            raise ExpressionError(f"nested too deeply: {source[:60]!r}...") from None

    def __call__(self, env: Mapping[str, Any]) -> Any:
        return self._fn(env)

    # Each _compile returns (closure, kind) where kind is "num", "bool" or a label tuple.
    def _fail(self, node: ast.AST, why: str) -> ExpressionError:
        seg = ast.get_source_segment(self.source.strip(), node) or type(node).__name__
        return ExpressionError(f"{why} in {self.source!r} (at {seg!r})")

    def _compile(self, node: ast.AST) -> Callable[[Mapping[str, Any]], Any]:
        fn, kind = self._node(node)
        if isinstance(kind, tuple):
            raise self._fail(node, "a categorical covariate must be compared with a label")
        return fn

    def _node(self, node: ast.AST) -> tuple[Callable[[Mapping[str, Any]], Any], Any]:
        if isinstance(node, ast.BoolOp):
            parts = [self._compile(v) for v in node.values]
            op = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            return (lambda env: functools.reduce(op, (p(env) for p in parts))), "bool"
        if isinstance(node, ast.UnaryOp):
            inner = self._compile(node.operand)
            if isinstance(node.op, ast.Not):
                return (lambda env: np.logical_not(inner(env))), "bool"
            if isinstance(node.op, ast.USub):
                return (lambda env: np.negative(inner(env))), "num"
            if isinstance(node.op, ast.UAdd):
                return inner, "num"
            raise self._fail(node, "operator not allowed")
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _BINOPS:
                raise self._fail(node, "operator not allowed (allowed: + - * / **)")
            op = _BINOPS[type(node.op)]
            left, right = self._compile(node.left), self._compile(node.right)
            return (lambda env: op(left(env), right(env))), "num"
        if isinstance(node, ast.Compare):
            return self._compare(node), "bool"
        if isinstance(node, ast.Name):
            if node.id not in self._names:
                allowed = ", ".join(sorted(self._names)) or "none"
                raise self._fail(node, f"unknown name {node.id!r} (declared: {allowed})")
            self.used.add(node.id)
            name = node.id
            return (lambda env: env[name]), (self._names[name] or "num")
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                raise self._fail(node, "only numbers are allowed here (labels only in comparisons)")
            try:
                value = float(node.value)
            except OverflowError:
                raise self._fail(node, "number too large") from None
            if not math.isfinite(value):
                raise self._fail(node, "numbers must be finite")
            return (lambda env: value), "num"
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
                raise self._fail(
                    node, f"call not allowed (allowed functions: {', '.join(sorted(_FUNCTIONS))})"
                )
            if node.keywords:
                raise self._fail(node, "keyword arguments not allowed")
            if node.func.id == "ifelse":
                if len(node.args) != 3:
                    raise self._fail(node, "ifelse() takes 3 arguments (condition, then, else)")
                cond, then, other = (self._compile(a) for a in node.args)

                def pick(env: Mapping[str, Any]) -> Any:
                    with np.errstate(all="ignore"):  # the branch not taken may divide by 0
                        return np.where(cond(env), then(env), other(env))

                return pick, "num"
            f = _FUNCTIONS[node.func.id]
            nargs = 2 if node.func.id in ("min", "max") else 1
            if len(node.args) != nargs:
                raise self._fail(node, f"{node.func.id}() takes {nargs} argument(s)")
            args = [self._compile(a) for a in node.args]
            return (lambda env: f(*(a(env) for a in args))), "num"
        raise self._fail(node, f"syntax not allowed ({type(node).__name__})")

    def _literal(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and not isinstance(node.value, bool | bytes | None):
            if isinstance(node.value, int | float):
                try:
                    if not math.isfinite(float(node.value)):
                        raise self._fail(node, "numbers must be finite")
                except OverflowError:
                    raise self._fail(node, "number too large") from None
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            v = self._literal(node.operand)
            if isinstance(v, int | float):
                return -v
        raise self._fail(node, "expected a literal number or label")

    def _compare(self, node: ast.Compare) -> Callable[[Mapping[str, Any]], Any]:
        pairs = []
        left = node.left
        for op, right in zip(node.ops, node.comparators, strict=True):
            pairs.append(self._pair(left, op, right))
            left = right
        return lambda env: functools.reduce(np.logical_and, (p(env) for p in pairs))

    def _pair(self, left: ast.AST, op: ast.cmpop, right: ast.AST) -> Callable:
        if isinstance(op, ast.In | ast.NotIn):
            if not isinstance(right, ast.List | ast.Tuple | ast.Set):
                raise self._fail(right, "'in' needs a literal list, e.g. ECOG in (0, 1)")
            lf, kind = self._node(left)
            values = [self._literal(e) for e in right.elts]
            if isinstance(kind, tuple):
                codes = [self._code(kind, v, right) for v in values]
            else:
                if not all(isinstance(v, int | float) for v in values):
                    raise self._fail(right, "a numeric covariate can only be in a list of numbers")
                codes = [float(v) for v in values]
            arr = np.asarray(codes)
            neg = isinstance(op, ast.NotIn)
            return lambda env: np.isin(lf(env), arr, invert=neg)
        if type(op) not in _CMPOPS:
            raise self._fail(left, "comparison not allowed (use == != < <= > >= in, not in)")
        cmp = _CMPOPS[type(op)]
        lf, lkind = self._node(left)
        rf, rkind = self._node(right) if not _is_str(right) else (None, "label")
        if _is_str(left):
            raise self._fail(left, "put the covariate on the left, e.g. SEX == 'F'")
        if isinstance(lkind, tuple) or rkind == "label":
            if not isinstance(lkind, tuple) or rkind != "label":
                raise self._fail(left, "a categorical covariate must be compared with a label")
            if not isinstance(op, ast.Eq | ast.NotEq):
                raise self._fail(left, "labels can only be compared with == or !=")
            code = self._code(lkind, right.value, right)  # type: ignore[attr-defined]
            return lambda env: cmp(lf(env), code)
        if isinstance(rkind, tuple):
            raise self._fail(right, "a categorical covariate must be compared with a label")
        return lambda env: cmp(lf(env), rf(env))  # type: ignore[misc]

    def _code(self, labels: tuple[str, ...], value: Any, node: ast.AST) -> int:
        if value not in labels:
            raise self._fail(node, f"unknown category {value!r} (categories: {', '.join(labels)})")
        return labels.index(value)


def _is_str(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


# --------------------------------------------------------------------------------------------
# Covariates
# --------------------------------------------------------------------------------------------

Label = str | int


def _int_keys(v: Any) -> Any:
    """Turn integer-like string keys into ints when all keys are such (JSON round trips)."""
    if (
        isinstance(v, Mapping)
        and v
        and all(isinstance(k, str) and re.fullmatch(r"-?\d+", k) for k in v)
    ):
        return {int(k): x for k, x in v.items()}
    return v


def _check_labels(labels: list[Any]) -> None:
    if any(isinstance(x, bool) for x in labels):
        raise ValueError(
            f"category labels must be strings or integers; YAML read yes/no/on/off as booleans, "
            f"quote them (got {labels})"
        )
    if len({type(x) for x in labels}) > 1:
        raise ValueError(f"category labels must be all strings or all integers (got {labels})")


def _check_freqs(freqs: Mapping[Any, float]) -> None:
    _check_labels(list(freqs))
    if not freqs:
        raise ValueError("at least one category is needed (got none)")
    bad = {k: v for k, v in freqs.items() if not 0 <= v <= 1}
    if bad:
        raise ValueError(f"frequencies must be in [0, 1] (got {bad})")
    total = sum(freqs.values())
    if abs(total - 1) > _FREQ_TOL:
        raise ValueError(f"frequencies must sum to 1 (got {total:.6g})")


class ContinuousCovariate(BaseModel):
    """A continuous covariate, optionally truncated to ``[lower, upper]``."""

    model_config = _frozen()
    distribution: Literal["normal", "lognormal", "uniform"]
    mean: float | None = None
    sd: float | None = None
    lower: float | None = None
    upper: float | None = None
    unit: str | None = None

    @field_validator("sd")
    @classmethod
    def _sd_positive(cls, v: float | None) -> float | None:
        if v is not None and not v > 0:
            raise ValueError(f"must be > 0 (got {v})")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ContinuousCovariate:
        errors: list[tuple[tuple[str | int, ...], Any, str]] = []
        if self.distribution == "uniform":
            if self.lower is None or self.upper is None:
                errors.append(((), None, "a uniform covariate needs lower and upper"))
            for f in ("mean", "sd"):
                if getattr(self, f) is not None:
                    errors.append(((f,), getattr(self, f), "not used by a uniform covariate"))
        else:
            for f in ("mean", "sd"):
                if getattr(self, f) is None:
                    errors.append(((f,), None, f"required for a {self.distribution} covariate"))
        if self.distribution == "lognormal":
            if self.mean is not None and not self.mean > 0:
                errors.append((("mean",), self.mean, f"must be > 0 (got {self.mean})"))
            if self.lower is not None and self.lower < 0:
                errors.append((("lower",), self.lower, f"must be >= 0 (got {self.lower})"))
        if self.lower is not None and self.upper is not None and not self.lower < self.upper:
            errors.append(
                (("upper",), self.upper, f"must be > lower={self.lower} (got {self.upper})")
            )
        _raise_at(errors, "ContinuousCovariate")
        if not errors and self.distribution != "uniform":
            a, b = self.cdf_bounds()
            if b - a < 1e-12:
                raise ValueError(
                    f"[lower, upper] = [{self.lower}, {self.upper}] has probability {b - a:.3g} "
                    f"under the declared distribution; widen the bounds"
                )
        return self

    @property
    def log_params(self) -> tuple[float, float]:
        """Location and scale of the underlying normal (log scale for lognormal)."""
        assert self.mean is not None and self.sd is not None
        if self.distribution == "lognormal":
            s2 = math.log1p((self.sd / self.mean) ** 2)
            return math.log(self.mean) - s2 / 2, math.sqrt(s2)
        return self.mean, self.sd

    def cdf_bounds(self, ndtr: Callable[[float], float] | None = None) -> tuple[float, float]:
        """CDF of the untruncated distribution at ``lower`` and ``upper``.

        ``ndtr`` is the standard normal CDF to use: the sampler passes SciPy's (its numbers are
        defined with it); the schema's check that the bounds hold some probability uses
        ``0.5 erfc(-x / sqrt 2)`` from the standard library, so loading a protocol does not
        import SciPy.
        """
        if ndtr is None:
            ndtr = _std_normal_cdf
        if self.distribution == "uniform":
            return 0.0, 1.0
        mu, s = self.log_params
        tr = math.log if self.distribution == "lognormal" else float

        def at(x: float | None, default: float) -> float:
            if x is None:
                return default
            if self.distribution == "lognormal" and x <= 0:
                return 0.0
            return float(ndtr((tr(x) - mu) / s))

        return at(self.lower, 0.0), at(self.upper, 1.0)


class CategoricalCovariate(BaseModel):
    """A categorical covariate: ``categories`` (label -> frequency), or ``by`` a parent
    categorical covariate with ``frequencies`` (parent label -> label -> frequency)."""

    model_config = _frozen()
    distribution: Literal["categorical"]
    categories: dict[Label, float] | None = None
    by: str | None = None
    frequencies: dict[Label, dict[Label, float]] | None = None
    unit: str | None = None

    @field_validator("categories", mode="before")
    @classmethod
    def _cat_keys(cls, v: Any) -> Any:
        return _int_keys(v)

    @field_validator("frequencies", mode="before")
    @classmethod
    def _freq_keys(cls, v: Any) -> Any:
        v = _int_keys(v)
        if isinstance(v, Mapping):
            return {k: _int_keys(x) for k, x in v.items()}
        return v

    @field_validator("categories")
    @classmethod
    def _cats(cls, v: dict[Label, float] | None) -> dict[Label, float] | None:
        if v is not None:
            _check_freqs(v)
        return v

    @field_validator("frequencies")
    @classmethod
    def _freqs(cls, v: dict[Label, dict[Label, float]] | None) -> Any:
        if v is None:
            return v
        errors = []
        first: list[Any] | None = None
        for parent, freqs in v.items():
            try:
                _check_freqs(freqs)
            except ValueError as exc:
                errors.append(((parent,), freqs, str(exc)))
                continue
            if first is None:
                first = list(freqs)
            elif set(freqs) != set(first):
                errors.append(
                    (
                        (parent,),
                        freqs,
                        f"must list the same categories as the first group {first} "
                        f"(got {list(freqs)})",
                    )
                )
        _raise_at(errors, "frequencies")
        return v

    @model_validator(mode="after")
    def _one_form(self) -> CategoricalCovariate:
        if (self.categories is None) == (self.by is None):
            raise ValueError(
                "give either categories: {label: frequency} or by: COVARIATE with frequencies: "
                "{parent_label: {label: frequency}}"
            )
        if self.by is not None and self.frequencies is None:
            raise ValueError(f"by: {self.by} needs frequencies: {{parent_label: {{...}}}}")
        if self.by is None and self.frequencies is not None:
            raise ValueError("frequencies: needs by: COVARIATE (or use categories:)")
        return self

    @property
    def labels(self) -> tuple[Label, ...]:
        if self.categories is not None:
            return tuple(self.categories)
        assert self.frequencies is not None
        return tuple(next(iter(self.frequencies.values())))

    @property
    def numeric(self) -> bool:
        return all(isinstance(x, int) for x in self.labels)


Covariate = ContinuousCovariate | CategoricalCovariate


def _distinct_names(v: list[str], what: str) -> list[str]:
    if len(set(v)) != len(v) or len(v) < 2:
        raise ValueError(f"must be at least 2 distinct {what} (got {v})")
    return v


def _square_symmetric(names: list[str], matrix: list[list[float]], *, atol: float) -> np.ndarray:
    """The matrix as an array, checked to be ``len(names)`` square and symmetric."""
    k = len(names)
    m = np.asarray(matrix, dtype=float) if matrix else np.zeros((0, 0))
    if m.shape != (k, k):
        raise ValueError(f"matrix must be {k}x{k} for names {names} (got {m.shape})")
    if not np.allclose(m, m.T, atol=atol, rtol=0):
        raise ValueError("matrix must be symmetric")
    return m


class CorrelationSpec(BaseModel):
    """Correlation matrix of the Gaussian copula over ``names``."""

    model_config = _frozen()
    names: list[str]
    matrix: list[list[float]]

    @field_validator("names")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        return _distinct_names(v, "names")

    @model_validator(mode="after")
    def _pd(self) -> CorrelationSpec:
        m = _square_symmetric(self.names, self.matrix, atol=1e-9)
        if not np.allclose(np.diag(m), 1.0, atol=1e-12, rtol=0):
            raise ValueError(f"matrix diagonal must be 1 (got {np.diag(m).tolist()})")
        if np.any(np.abs(m) > 1):
            raise ValueError("matrix entries must be in [-1, 1]")
        _check_pd(m, "correlation matrix")
        return self


def _check_pd(m: np.ndarray, what: str) -> None:
    try:
        np.linalg.cholesky(m)
    except np.linalg.LinAlgError:
        ev = float(np.linalg.eigvalsh(m).min())
        raise ValueError(
            f"{what} must be positive definite (smallest eigenvalue {ev:.4g}); the declared "
            f"correlations are mutually inconsistent"
        ) from None


DERIVED_BUILTINS: dict[str, dict[str, Any]] = {
    "BMI": {"needs": {"WT": "kg", "HT": "cm"}, "unit": "kg/m^2", "what": "body-mass index"},
    "BSA": {"needs": {"WT": "kg", "HT": "cm"}, "unit": "m^2", "what": "Mosteller BSA"},
    "CRCL": {
        "needs": {"AGE": "years", "WT": "kg", "SCR": "mg/dL", "SEX": None},
        "unit": "mL/min",
        "what": "Cockcroft-Gault creatinine clearance",
    },
}
_UNIT_ALIASES = {"years": {"years", "year", "y", "yr", "yrs"}, "mg/dL": {"mg/dl"}}


class DerivedCovariate(BaseModel):
    """A covariate computed from others by a restricted expression."""

    model_config = _frozen()
    name: str
    expression: str
    unit: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v, "derived covariate")


class Eligibility(BaseModel):
    """Inclusion criteria (all must hold) and exclusion criteria (none may hold)."""

    model_config = _frozen()
    inclusion: list[str] = Field(default_factory=list)
    exclusion: list[str] = Field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


class CovariateEffect(BaseModel):
    """A multiplicative covariate effect on a parameter's typical value."""

    model_config = _frozen()
    covariate: str
    form: Literal["power", "exponential", "linear", "categorical"]
    exponent: float | None = None
    coefficient: float | None = None
    slope: float | None = None
    reference: float | None = None
    factors: dict[Label, float] | None = None

    @field_validator("factors", mode="before")
    @classmethod
    def _factor_keys(cls, v: Any) -> Any:
        return _int_keys(v)

    @field_validator("factors")
    @classmethod
    def _factors(cls, v: dict[Label, float] | None) -> dict[Label, float] | None:
        if v is not None:
            _check_labels(list(v))
            bad = {k: f for k, f in v.items() if not f > 0}
            if bad:
                raise ValueError(f"factors must be > 0 (got {bad})")
        return v

    @model_validator(mode="after")
    def _fields(self) -> CovariateEffect:
        need = {
            "power": ("exponent", "reference"),
            "exponential": ("coefficient", "reference"),
            "linear": ("slope", "reference"),
            "categorical": ("factors",),
        }[self.form]
        allowed = {"covariate", "form", *need}
        errors = []
        for f in ("exponent", "coefficient", "slope", "reference", "factors"):
            if f in need and getattr(self, f) is None:
                errors.append(((f,), None, f"required for form {self.form} (needs {need})"))
            elif f not in allowed and getattr(self, f) is not None:
                errors.append(((f,), getattr(self, f), f"not used by form {self.form}"))
        if self.form == "power" and self.reference is not None and not self.reference > 0:
            errors.append((("reference",), self.reference, f"must be > 0 (got {self.reference})"))
        _raise_at(errors, "CovariateEffect")
        return self


class Parameter(BaseModel):
    """An individual PK/PD or disease parameter."""

    model_config = _frozen()
    typical: float
    unit: str | None = None
    distribution: Literal["lognormal", "normal", "logit"] = "lognormal"
    omega: float | None = None
    uncertainty_rse: float = 0.0
    effects: list[CovariateEffect] = Field(default_factory=list)

    @field_validator("omega", "uncertainty_rse")
    @classmethod
    def _nonneg(cls, v: float | None) -> float | None:
        if v is not None and not v >= 0:
            raise ValueError(f"must be >= 0 (got {v})")
        return v

    @model_validator(mode="after")
    def _typical(self) -> Parameter:
        t = self.typical
        if self.distribution == "lognormal" and not t > 0:
            _raise_at([(("typical",), t, f"must be > 0 for a lognormal parameter (got {t})")], "P")
        if self.distribution == "logit" and not 0 < t < 1:
            _raise_at(
                [(("typical",), t, f"must be in (0, 1) for a logit parameter (got {t})")], "P"
            )
        return self


class OmegaBlock(BaseModel):
    """A full covariance block of ETAs (variances on the ETA scale)."""

    model_config = _frozen()
    names: list[str]
    matrix: list[list[float]]

    @field_validator("names")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        return _distinct_names(v, "parameter names")

    @model_validator(mode="after")
    def _pd(self) -> OmegaBlock:
        m = _square_symmetric(self.names, self.matrix, atol=1e-12)
        _check_pd(m, "omega_block matrix")
        return self


# --------------------------------------------------------------------------------------------
# Calibration target
# --------------------------------------------------------------------------------------------


class TargetCovariate(BaseModel):
    """Target summaries of one covariate: mean/sd, quantiles, or category frequencies."""

    model_config = _frozen()
    mean: float | None = None
    sd: float | None = None
    quantiles: dict[float, float] | None = None
    frequencies: dict[Label, float] | None = None

    @field_validator("sd")
    @classmethod
    def _sd(cls, v: float | None) -> float | None:
        if v is not None and not v > 0:
            raise ValueError(f"must be > 0 (got {v})")
        return v

    @field_validator("quantiles")
    @classmethod
    def _q(cls, v: dict[float, float] | None) -> dict[float, float] | None:
        if v is None:
            return v
        ps = sorted(v)
        if not ps or any(not 0 < p < 1 for p in ps):
            raise ValueError(f"quantile levels must be in (0, 1) (got {list(v)})")
        vals = [v[p] for p in ps]
        if any(b <= a for a, b in itertools.pairwise(vals)):
            raise ValueError(f"quantile values must increase with the level (got {v})")
        return dict(zip(ps, vals, strict=True))

    @field_validator("frequencies", mode="before")
    @classmethod
    def _f_keys(cls, v: Any) -> Any:
        return _int_keys(v)

    @field_validator("frequencies")
    @classmethod
    def _f(cls, v: dict[Label, float] | None) -> dict[Label, float] | None:
        if v is not None:
            _check_freqs(v)
        return v

    @model_validator(mode="after")
    def _form(self) -> TargetCovariate:
        if (self.mean is None) != (self.sd is None) and self.mean is None:
            raise ValueError("sd needs mean")
        if self.mean is None and self.quantiles is None and self.frequencies is None:
            raise ValueError("give mean (and sd), quantiles, or frequencies")
        if self.frequencies is not None and (self.mean is not None or self.quantiles is not None):
            raise ValueError("frequencies (categorical) cannot be combined with mean/quantiles")
        return self


class Target(BaseModel):
    """Summaries of a real population to calibrate the virtual one to."""

    model_config = _frozen()
    name: str = "target"
    n: int | None = Field(default=None, gt=0)
    method: Literal["entropy", "raking"] = "entropy"
    covariates: dict[str, TargetCovariate]
    correlation: CorrelationSpec | None = None


# --------------------------------------------------------------------------------------------
# Population
# --------------------------------------------------------------------------------------------


def _dispatch_covariate(v: Any) -> Any:
    if isinstance(v, ContinuousCovariate | CategoricalCovariate) or not isinstance(v, Mapping):
        return v
    if v.get("distribution") == "categorical":
        return CategoricalCovariate.model_validate(v)
    if v.get("distribution") in ("normal", "lognormal", "uniform"):
        return ContinuousCovariate.model_validate(v)
    raise ValueError(
        f"distribution must be one of normal, lognormal, uniform, categorical "
        f"(got {v.get('distribution')!r})"
    )


class Population(BaseModel):
    """The protocol's ``population`` section (see the module docstring for the YAML shape)."""

    model_config = _frozen()
    covariates: dict[str, Covariate]
    correlation: CorrelationSpec | None = None
    derived: list[str | DerivedCovariate] = Field(default_factory=list)
    eligibility: Eligibility = Field(default_factory=Eligibility)
    parameters: dict[str, Parameter] = Field(default_factory=dict)
    omega_block: OmegaBlock | None = None
    omega_df: Annotated[float, Field(gt=0)] | None = None
    target: Target | None = None

    @field_validator("covariates", mode="before")
    @classmethod
    def _covariates(cls, v: Any) -> Any:
        if not isinstance(v, Mapping):
            return v
        out: dict[Any, Any] = {}
        errors: list[InitErrorDetails] = []
        for name, spec in v.items():
            try:
                _check_name(str(name), "covariate")
                out[name] = _dispatch_covariate(spec)
            except ValidationError as exc:
                for e in exc.errors():
                    errors.append(
                        InitErrorDetails(
                            type=e["type"],
                            loc=(name, *e["loc"]),
                            input=e["input"],
                            ctx=e.get("ctx", {}),
                        )
                    )
            except ValueError as exc:
                errors.append(
                    InitErrorDetails(
                        type="value_error", loc=(name,), input=spec, ctx={"error": str(exc)}
                    )
                )
        if errors:
            raise ValidationError.from_exception_data("covariates", errors)
        return out

    @field_validator("parameters")
    @classmethod
    def _param_names(cls, v: dict[str, Parameter]) -> dict[str, Parameter]:
        for name in v:
            _check_name(name, "parameter")
        return v

    # Cross-field checks, each reported at the field it concerns.
    @model_validator(mode="after")
    def _cross(self) -> Population:
        errors: list[tuple[tuple[str | int, ...], Any, str]] = []
        covs = self.covariates
        # conditional categoricals
        for i, (name, c) in enumerate(covs.items()):
            if isinstance(c, CategoricalCovariate) and c.by is not None:
                earlier = list(covs)[:i]
                parent = covs.get(c.by)
                cats = [m for m in earlier if isinstance(covs[m], CategoricalCovariate)]
                if c.by not in earlier or not isinstance(parent, CategoricalCovariate):
                    errors.append(
                        (
                            ("covariates", name, "by"),
                            c.by,
                            f"must name a categorical covariate declared above {name} "
                            f"(got {c.by!r}; candidates: {cats})",
                        )
                    )
                    continue
                assert c.frequencies is not None
                if set(c.frequencies) != set(parent.labels):
                    errors.append(
                        (
                            ("covariates", name, "frequencies"),
                            list(c.frequencies),
                            f"must give frequencies for every {c.by} category "
                            f"{list(parent.labels)} (got {list(c.frequencies)})",
                        )
                    )
        if self.correlation is not None:
            for j, n in enumerate(self.correlation.names):
                if n not in covs:
                    errors.append(
                        (
                            ("correlation", "names", j),
                            n,
                            f"must be a declared covariate {list(covs)} (got {n!r})",
                        )
                    )
        # derived
        names: dict[str, tuple[str, ...] | None] = {
            n: (None if isinstance(c, ContinuousCovariate) or c.numeric else tuple(c.labels))
            for n, c in covs.items()
        }
        for j, d in enumerate(self.derived):
            loc: tuple[str | int, ...] = ("derived", j)
            if isinstance(d, str):
                msg = _builtin_problem(d, covs)
                if msg:
                    errors.append((loc, d, msg))
                    continue
                dname = d
            else:
                dname = d.name
                try:
                    Expression(d.expression, names)
                except ExpressionError as exc:
                    errors.append(((*loc, "expression"), d.expression, str(exc)))
                    continue
            if dname in names:
                errors.append((loc, dname, f"{dname} is already declared"))
                continue
            names[dname] = None
        for kind in ("inclusion", "exclusion"):
            for j, src in enumerate(getattr(self.eligibility, kind)):
                try:
                    Expression(src, names)
                except ExpressionError as exc:
                    errors.append((("eligibility", kind, j), src, str(exc)))
        # parameters
        for pname, p in self.parameters.items():
            if pname in names:
                errors.append((("parameters", pname), pname, f"{pname} is also a covariate"))
            for j, e in enumerate(p.effects):
                loc = ("parameters", pname, "effects", j)
                if e.covariate not in names:
                    errors.append(
                        (
                            (*loc, "covariate"),
                            e.covariate,
                            f"must be a declared or derived covariate {list(names)} "
                            f"(got {e.covariate!r})",
                        )
                    )
                    continue
                cov = covs.get(e.covariate)
                is_cat = isinstance(cov, CategoricalCovariate)
                numeric = is_cat and cov.numeric  # type: ignore[union-attr]
                if (e.form == "categorical" and not is_cat) or (
                    e.form != "categorical" and is_cat and not numeric
                ):
                    errors.append(
                        (
                            (*loc, "form"),
                            e.form,
                            f"{e.covariate} is {'categorical' if is_cat else 'continuous'}; use "
                            f"{'categorical' if is_cat else 'power, exponential or linear'}",
                        )
                    )
                elif is_cat and e.factors is not None:
                    assert isinstance(cov, CategoricalCovariate)
                    unknown = [k for k in e.factors if k not in cov.labels]
                    if unknown:
                        errors.append(
                            (
                                (*loc, "factors"),
                                unknown,
                                f"unknown {e.covariate} categories {unknown} "
                                f"(categories: {list(cov.labels)})",
                            )
                        )
        if self.omega_block is not None:
            m = self.omega_block.matrix
            for j, n in enumerate(self.omega_block.names):
                p = self.parameters.get(n)
                if p is None:
                    errors.append(
                        (
                            ("omega_block", "names", j),
                            n,
                            f"must be a declared parameter {list(self.parameters)} (got {n!r})",
                        )
                    )
                elif p.omega is not None and abs(p.omega - m[j][j]) > 1e-12:
                    errors.append(
                        (
                            ("parameters", n, "omega"),
                            p.omega,
                            f"differs from omega_block diagonal {m[j][j]}; give one or make them "
                            "equal",
                        )
                    )
        if self.omega_df is not None:
            k = len(self.iiv_names)
            if not self.omega_df > k + 1:
                errors.append(
                    (
                        ("omega_df",),
                        self.omega_df,
                        f"must be > number of ETAs + 1 = {k + 1} for a finite mean "
                        f"(got {self.omega_df})",
                    )
                )
        if self.target is not None:
            for tname, t in self.target.covariates.items():
                loc = ("target", "covariates", tname)
                if tname not in names:
                    errors.append(
                        (loc, tname, f"must be a declared or derived covariate {list(names)}")
                    )
                    continue
                cov = covs.get(tname)
                is_cat = isinstance(cov, CategoricalCovariate)
                if is_cat != (t.frequencies is not None):
                    errors.append(
                        (
                            loc,
                            tname,
                            f"{tname} is "
                            + (
                                "categorical: give frequencies"
                                if is_cat
                                else "continuous: give mean/sd or quantiles"
                            ),
                        )
                    )
                elif is_cat and t.frequencies is not None:
                    assert isinstance(cov, CategoricalCovariate)
                    if set(t.frequencies) != set(cov.labels):
                        errors.append(
                            (
                                (*loc, "frequencies"),
                                list(t.frequencies),
                                f"must list the categories {list(cov.labels)}",
                            )
                        )
            if self.target.correlation is not None:
                for j, n in enumerate(self.target.correlation.names):
                    t = self.target.covariates.get(n)
                    if t is None or t.mean is None or t.sd is None:
                        errors.append(
                            (
                                ("target", "correlation", "names", j),
                                n,
                                "each name needs a target mean and sd in target.covariates",
                            )
                        )
        _raise_at(errors, "Population")
        # Whether the criteria can be met at all is checked by sampling, in the pre-flight
        # step of run and validate (insilico_trials.sim.cohort.eligibility_problems), not here:
        # loading a protocol never samples.
        return self

    # ---- derived views used by the sampler -------------------------------------------------

    @property
    def derived_specs(self) -> list[DerivedCovariate]:
        """Derived covariates as expressions, built-ins expanded."""
        out = []
        for d in self.derived:
            if isinstance(d, str):
                out.append(
                    DerivedCovariate(
                        name=d,
                        expression=_builtin_expr(d, self.covariates),
                        unit=DERIVED_BUILTINS[d]["unit"],
                    )
                )
            else:
                out.append(d)
        return out

    @property
    def expression_names(self) -> dict[str, tuple[str, ...] | None]:
        names: dict[str, tuple[str, ...] | None] = {
            n: (None if isinstance(c, ContinuousCovariate) or c.numeric else tuple(c.labels))
            for n, c in self.covariates.items()
        }
        names.update({d.name: None for d in self.derived_specs})
        return names

    @property
    def iiv_names(self) -> list[str]:
        """Parameters with between-subject variability, in declaration order."""
        block = set(self.omega_block.names) if self.omega_block else set()
        return [n for n, p in self.parameters.items() if n in block or (p.omega or 0) > 0]

    def omega_matrix(self) -> np.ndarray:
        """OMEGA over :attr:`iiv_names` (block entries where declared, diagonal elsewhere)."""
        names = self.iiv_names
        idx = {n: i for i, n in enumerate(names)}
        om = np.diag([self.parameters[n].omega or 0.0 for n in names])
        if self.omega_block is not None:
            ix = [idx[n] for n in self.omega_block.names]
            om[np.ix_(ix, ix)] = np.asarray(self.omega_block.matrix)
        return om


def _std_normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _unit_ok(declared: str | None, needed: str | None) -> bool:
    if declared is None or needed is None:
        return True
    d = declared.strip()
    return d == needed or d.lower() in _UNIT_ALIASES.get(needed, {needed.lower()})


def _builtin_problem(name: str, covs: Mapping[str, Covariate]) -> str | None:
    if name not in DERIVED_BUILTINS:
        return (
            f"unknown built-in derived covariate {name!r} (built-ins: "
            f"{', '.join(DERIVED_BUILTINS)}; or give {{name, expression}})"
        )
    for need, unit in DERIVED_BUILTINS[name]["needs"].items():
        c = covs.get(need)
        if c is None:
            return f"{name} ({DERIVED_BUILTINS[name]['what']}) needs covariate {need}"
        if need == "SEX":
            if not isinstance(c, CategoricalCovariate) or "F" not in c.labels:
                return f"{name} needs SEX categorical with a category 'F' (got {c.model_dump()})"
            continue
        if not isinstance(c, ContinuousCovariate):
            return f"{name} needs {need} continuous"
        if not _unit_ok(c.unit, unit):
            return f"{name} needs {need} in {unit} (declared unit {c.unit!r})"
    return None


def _builtin_expr(name: str, covs: Mapping[str, Covariate]) -> str:
    if name == "BMI":
        return "WT / (HT / 100) ** 2"
    if name == "BSA":
        return "sqrt(WT * HT / 3600)"
    # Cockcroft & Gault (1976), SCR in mg/dL, x 0.85 for women.
    return "(140 - AGE) * WT / (72 * SCR) * (1 - 0.15 * (SEX == 'F'))"
