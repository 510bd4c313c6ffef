"""Model files: ODE models that users write, declared in YAML and checked before anything runs.

A model file names its parameters (with units), optional covariates, derived individual
parameters, compartments, one ODE per compartment, outputs, and per-compartment dose
attributes (bioavailability F, lag ALAG, modelled rate R and duration D), in the spirit of
mrgsolve's and rxode2's model texts. Every expression goes through the restricted evaluator of
eligibility criteria (:class:`insilico_trials.spec.population.Expression`): numbers, declared
names, ``+ - * / **``, comparisons (true is 1) and the functions ``exp log log10 sqrt tanh abs
min max``; no Python runs. An error names the file, the line and the rule.

Example (``insilico_trials/models/library/pk1cmt.yaml``)::

    model: pk1cmt
    parameters:
      CL: {unit: L/h, min: 0}
      V: {unit: L, positive: true}
      KA: {unit: 1/h, min: 0}
    compartments: [DEPOT, CENT]
    odes:
      DEPOT: -KA * DEPOT
      CENT: KA * DEPOT - CL / V * CENT
    outputs:
      CP: CENT / V

The sections:

``parameters`` and ``covariates``
    Columns of a data set (or a protocol's population parameters), each ``{unit: TEXT}`` with
    optional ``min`` (inclusive lower bound), ``positive: true`` (> 0) and ``description``.
``derived``
    Ordered ``NAME: expression`` over parameters, covariates and earlier derived names, the
    individual parameters of NONMEM's $PK, e.g. ``CLi: CL * (WT / 70) ** 0.75``.
``compartments``
    State names in NONMEM numbering order (the first is compartment 1).
``odes``
    ``STATE: expression`` for every compartment (amount per hour), over states, parameters,
    covariates and derived names. Doses and infusions are added by the engine.
``outputs``
    ``NAME: expression`` over the same names (``CP: CENT / V``). The first output is the one
    trial flows use as the concentration.
``initial``
    ``STATE: expression`` over parameters, covariates and derived names: the amount at the
    start and after a reset (NONMEM's A_0); 0 where not given.
``dosing``
    ``STATE: {F: expr, ALAG: expr, R: expr, D: expr}``; any attribute left out comes from the
    data set's ``Fn``, ``ALAGn``, ``Rn``, ``Dn`` columns as for the built-in models.
``routes``
    Where a regular regimen's doses go: ``{oral: DEPOT, iv: CENT}``; ``oral`` defaults to the
    first compartment, ``iv`` has no default. The glucose simulator doses ``meal`` (carbohydrate,
    mg) and ``insulin`` (subcutaneous insulin, pmol/kg) routes.
``time_unit``
    ``h`` (default) or ``min``: the unit of time of the ODEs. The PK engine (data sets and
    protocols' ``pk.model``) takes ``h`` only; the glucose simulator takes ``min``.
``auxiliary``
    Ordered ``NAME: expression`` over states, parameters, covariates, derived names, signals and
    earlier auxiliary names: intermediate values of the right-hand side (mrgsolve's locals in
    ``$ODE``), e.g. ``KGUT`` of the UVA/Padova gastric emptying. ODEs may read them; outputs may
    not.
``signals``
    Piecewise-constant inputs a simulator supplies between its steps, ``NAME: {unit: TEXT}``,
    read by ODEs only (not by outputs, derived names or initial amounts). The glucose simulator
    supplies ``DBAR`` (mg), the current meal's size as the UVA/Padova gastric emptying reads it
    (:mod:`insilico_trials.sim.glucose`). A file with signals cannot be used by the PK engine.
``solver``
    ``nonstiff`` (default, explicit Dormand-Prince 5(4)) or ``stiff`` (linearly implicit
    Rosenbrock, Shampine's ode23s); ``rtol`` and ``atol`` optional.
"""

from __future__ import annotations

import ast
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from insilico_trials.errors import InputError
from insilico_trials.spec.population import Expression, ExpressionError
from insilico_trials.spec.yamlmap import LineMap, YamlLoadError, load_yaml_with_lines

__all__ = [
    "DOSE_ATTRIBUTES",
    "ModelFileError",
    "ParameterSpec",
    "UserModel",
    "is_model_path",
    "library_path",
    "load_model_file",
    "parse_model_text",
]

DOSE_ATTRIBUTES = ("F", "ALAG", "R", "D")
SOLVERS = ("nonstiff", "stiff")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
# Names a model cannot declare: data-set columns the engine reads, time, and the functions.
_RESERVED = frozenset(
    {"ID", "TIME", "T", "AMT", "EVID", "CMT", "II", "ADDL", "RATE", "SS", "DV", "MDV", "C"}
    | {"exp", "log", "log10", "sqrt", "tanh", "abs", "min", "max", "ifelse", "and", "or", "not"}
    | {"in"}
)
_TOP = (
    "model",
    "description",
    "reference",
    "parameters",
    "covariates",
    "derived",
    "compartments",
    "odes",
    "outputs",
    "dosing",
    "initial",
    "routes",
    "solver",
    "rtol",
    "atol",
    "time_unit",
    "signals",
    "auxiliary",
)
ROUTES = ("oral", "iv", "meal", "insulin")
TIME_UNITS = ("h", "min")
LIBRARY = Path(__file__).resolve().parents[1] / "models" / "library"


class ModelFileError(InputError):
    """A model file breaks a rule; the message starts with ``file:line:``."""


@dataclass(frozen=True)
class ParameterSpec:
    """A parameter or covariate column: unit and bounds."""

    name: str
    unit: str
    min: float | None = None
    positive: bool = False
    description: str = ""

    def check(self, values: np.ndarray, where) -> None:
        """Raise through ``where(i, message)`` at the first value out of bounds."""
        bad = ~np.isfinite(values)
        rule = "a finite number"
        if self.positive:
            bad |= ~(values > 0)
            rule = "> 0"
        elif self.min is not None:
            bad |= ~(values >= self.min)
            rule = f">= {self.min:g}"
        idx = np.flatnonzero(bad)
        if idx.size:
            i = int(idx[0])
            where(i, f"{self.name} must be {rule} ({self.unit}), got {values[i]:g}")


@dataclass(frozen=True)
class UserModel:
    """A validated model file.

    Attributes
    ----------
    name
        The ``model`` field.
    source
        The file it came from (for messages).
    digest
        SHA-256 of the file's text: the model's identity in caches and archives.
    inputs
        Parameter then covariate specs, in file order: the columns the model reads.
    derived
        ``(name, source text)`` in evaluation order.
    compartments
        State names; compartment n (1-based) is ``compartments[n - 1]``.
    odes, outputs
        Source text per state and per output name.
    dosing
        ``{state index: {attribute: source}}``.
    solver, rtol, atol
        Integration method and tolerances.
    signals
        Piecewise-constant inputs a simulator supplies (read by ODEs only).
    auxiliary
        ``(name, source text)`` in order: intermediate values of the right-hand side.
    time_unit
        ``h`` or ``min``: the ODEs' unit of time.
    """

    name: str
    source: str
    digest: str
    text: str
    inputs: tuple[ParameterSpec, ...]
    derived: tuple[tuple[str, str], ...]
    compartments: tuple[str, ...]
    odes: tuple[str, ...]
    outputs: tuple[tuple[str, str], ...]
    dosing: Mapping[int, Mapping[str, str]]
    initial: Mapping[int, str] = field(default_factory=dict)
    routes: Mapping[str, int] = field(default_factory=dict)
    solver: str = "nonstiff"
    rtol: float = 1e-10
    atol: float = 1e-12
    signals: tuple[ParameterSpec, ...] = ()
    time_unit: str = "h"
    auxiliary: tuple[tuple[str, str], ...] = ()
    _compiled: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        # compiled kernels and expressions stay in their process (Dask pickles protocols)
        state = {f: getattr(self, f) for f in self.__dataclass_fields__ if f != "_compiled"}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)
        object.__setattr__(self, "_compiled", {})

    @property
    def parameters(self) -> tuple[str, ...]:
        """Names of the input columns (parameters and covariates)."""
        return tuple(p.name for p in self.inputs)

    @property
    def signal_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.signals)

    def pk_problem(self) -> str | None:
        """Why the PK engine (time in hours, doses from records) cannot run this file, or None."""
        if self.time_unit != "h":
            return (
                f"model {self.name} has time_unit {self.time_unit}; the PK engine takes h "
                "(this file is for the glucose simulator)"
            )
        if self.signals:
            return (
                f"model {self.name} reads signals ({', '.join(self.signal_names)}) that only a "
                "simulator supplies (the glucose simulator); the PK engine cannot run it"
            )
        return None

    @property
    def n_cmt(self) -> int:
        return len(self.compartments)

    @property
    def linear(self) -> bool:
        """Model files are always integrated numerically (no closed form is assumed)."""
        return False

    @property
    def individual_names(self) -> tuple[str, ...]:
        """The vector the ODE kernel reads: inputs, then derived names."""
        return self.parameters + tuple(n for n, _ in self.derived)

    def _expr(self, key: str, text: str, names: tuple[str, ...]) -> Expression:
        cache = self._compiled
        key = f"{key}\n{text}\n{','.join(names)}"  # a replaced field never reads a stale entry
        if key not in cache:
            cache[key] = Expression(text, dict.fromkeys(names))
        return cache[key]

    def individual(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """Individual parameter vectors, shape (n, len(individual_names)), from input columns."""
        env = {k: np.asarray(columns[k], dtype=float) for k in self.parameters}
        shape = np.broadcast_shapes(*(v.shape for v in env.values())) if env else (1,)
        names = list(self.parameters)
        for name, text in self.derived:
            env[name] = np.broadcast_to(
                np.asarray(self._expr(f"derived:{name}", text, tuple(names))(env), dtype=float),
                shape,
            )
            names.append(name)
        if not names:
            return np.zeros((*shape, 0))
        return np.stack([np.broadcast_to(env[k], shape) for k in names], axis=-1)

    def evaluate_outputs(
        self, amounts: np.ndarray, individual: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Outputs from amounts (..., n_cmt) and individual vectors broadcastable to (..., k)."""
        env = {c: amounts[..., i] for i, c in enumerate(self.compartments)}
        for j, name in enumerate(self.individual_names):
            env[name] = individual[..., j]
        names = self.individual_names + self.compartments
        out = {}
        shape = amounts.shape[:-1]
        with np.errstate(divide="ignore", invalid="ignore"):
            for name, text in self.outputs:
                value = self._expr(f"output:{name}", text, names)(env)
                out[name] = np.broadcast_to(np.asarray(value, dtype=float), shape)
        return out

    def initial_amounts(self, individual: np.ndarray) -> np.ndarray:
        """Amounts at the start and after a reset, shape (n, n_cmt), from (n, k) vectors."""
        individual = np.atleast_2d(individual)
        out = np.zeros((individual.shape[0], self.n_cmt))
        env = {name: individual[:, j] for j, name in enumerate(self.individual_names)}
        for k, text in self.initial.items():
            out[:, k] = self._expr(f"initial:{k}", text, self.individual_names)(env)
        return out

    def dose_attributes(self, individual: np.ndarray) -> dict[tuple[int, str], np.ndarray]:
        """The model's own F, ALAG, R, D per record: ``{(state index, attribute): (n,)}``."""
        env = {name: individual[:, j] for j, name in enumerate(self.individual_names)}
        out = {}
        for k, attrs in self.dosing.items():
            for attr, text in attrs.items():
                value = self._expr(f"dose:{k}:{attr}", text, self.individual_names)(env)
                out[(k, attr)] = np.broadcast_to(np.asarray(value, dtype=float), (len(individual),))
        return out


_SAFE_PATH = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_][A-Za-z0-9_.\-]*)*\.ya?ml$")


def is_model_path(name: str) -> bool:
    """True when ``name`` names a model file (``.yaml``/``.yml`` or a path), not a built-in."""
    text = str(name)
    return text.lower().endswith((".yaml", ".yml")) or "/" in text or "\\" in text


def protocol_model_path_problem(name: str) -> str | None:
    """Why ``name`` cannot be a protocol's model file path, or None.

    A protocol names its model file relative to its own folder, inside it, so that the run
    archive can carry the file at the same place (no absolute paths, no ``..``).
    """
    reserved = name == "protocol.yaml" or name.startswith(("updates/", "design/", "verification/"))
    if (
        reserved
        or not _SAFE_PATH.match(name)
        or any(part in ("", ".", "..") for part in name.split("/"))
    ):
        return (
            "a model file is named by a path relative to the protocol's folder, inside it "
            "(letters, digits, _ . - and /; ending .yaml; no '..' or absolute paths; not "
            "protocol.yaml, updates/, design/ or verification/, which the run archive uses), "
            "or a built-in model: pk1cmt, pk2cmt, pk3cmt, pk1cmt_mm"
        )
    return None


def library_path(name: str) -> Path | None:
    """The shipped model file for ``name`` (``pk2cmt`` -> ``models/library/pk2cmt.yaml``)."""
    path = LIBRARY / f"{name}.yaml"
    return path if _NAME.match(name) and path.is_file() else None


def load_model_file(path: str | Path) -> UserModel:
    """Read and validate a model file.

    Raises
    ------
    ModelFileError
        ``file:line: rule`` for the first broken rule; a missing file is named too.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelFileError(f"{path}: model file not found", where=str(path)) from None
    except IsADirectoryError:
        raise ModelFileError(f"{path}: a folder, not a model file", where=str(path)) from None
    except UnicodeDecodeError:
        raise ModelFileError(f"{path}: not UTF-8 text", where=str(path)) from None
    except OSError as exc:
        raise ModelFileError(
            f"{path}: cannot read the model file ({exc.strerror or exc})", where=str(path)
        ) from None
    return parse_model_text(text, source=str(path))


def parse_model_text(text: str, *, source: str = "model.yaml") -> UserModel:
    """Validate the text of a model file (see the module docstring for the format)."""
    try:
        data, lines = load_yaml_with_lines(source, text)
    except YamlLoadError as exc:
        raise ModelFileError(str(exc), where=f"{exc.file}:{exc.line}") from None
    return _Parser(source, lines).parse(data, text)


class _Parser:
    def __init__(self, source: str, lines: LineMap) -> None:
        self.source, self.lines = source, lines

    def fail(self, path: tuple, message: str, rule: str = "") -> ModelFileError:
        line = self.lines.line_of(path)
        where = f"{self.source}:{line}"
        field_ = ".".join(map(str, path))
        text = f"{where}: {field_}: {message}" if field_ else f"{where}: {message}"
        return ModelFileError(text, where=where, rule=rule or message)

    def mapping(self, data: Any, path: tuple, *, required: bool = True) -> dict:
        if data is None and not required:
            return {}
        if not isinstance(data, dict) or (required and not data):
            raise self.fail(path, "must be a mapping of NAME: value with at least one entry")
        return data

    def name(self, key: Any, path: tuple, taken: dict[str, str], what: str) -> str:
        if not isinstance(key, str) or not _NAME.match(key):
            raise self.fail(
                path, f"{key!r} is not a name (a letter, then letters, digits or _; at most 32)"
            )
        if key in _RESERVED:
            raise self.fail(path, f"{key!r} is reserved (data-set columns, time and functions)")
        if key in taken:
            raise self.fail(path, f"{key!r} is declared twice (first as a {taken[key]})")
        taken[key] = what
        return key

    def expression(self, text: Any, path: tuple, names: tuple[str, ...]) -> str:
        if isinstance(text, bool) or not isinstance(text, str | int | float):
            raise self.fail(path, "must be an expression (text or a number)")
        text = str(text)
        try:
            expr = Expression(text, dict.fromkeys(names))
        except ExpressionError as exc:
            raise self.fail(path, str(exc), rule="restricted expression") from None
        tree = ast.parse(text.strip(), mode="eval").body
        if _is_boolean(tree):
            raise self.fail(path, f"{text!r} is a condition; a value is needed here")
        zero = _constant_zero_divisor(tree)
        if zero is not None:
            raise self.fail(path, f"division by a constant zero in {text!r} (at {zero!r})")
        del expr
        return text

    def parse(self, data: Any, text: str) -> UserModel:
        if not isinstance(data, dict):
            raise self.fail((), "a model file is a mapping with model, parameters, compartments, "
                            "odes and outputs")  # fmt: skip
        for key in data:
            if key not in _TOP:
                raise self.fail((key,), f"unknown section {key!r}; allowed: {', '.join(_TOP)}")
        for key in ("model", "parameters", "compartments", "odes", "outputs"):
            if key not in data:
                raise self.fail((), f"missing section {key!r}")
        name = data["model"]
        if not isinstance(name, str) or not _NAME.match(name):
            raise self.fail(("model",), f"{name!r} is not a model name (letters, digits, _)")
        taken: dict[str, str] = {}
        inputs = []
        for section in ("parameters", "covariates"):
            block = self.mapping(data.get(section), (section,), required=False)
            for key, spec in block.items():
                inputs.append(self.parameter(section, key, spec, taken))
        names = tuple(p.name for p in inputs)
        derived = []
        for key, expr in self.mapping(data.get("derived"), ("derived",), required=False).items():
            text_ = self.expression(expr, ("derived", key), names)
            self.name(key, ("derived", key), taken, "derived parameter")
            derived.append((key, text_))
            names = (*names, key)
        cmts = data["compartments"]
        if not isinstance(cmts, list) or not cmts:
            raise self.fail(("compartments",), "must be a list of state names, e.g. [DEPOT, CENT]")
        for i, c in enumerate(cmts):
            self.name(c, ("compartments", i), taken, "compartment")
        states = tuple(cmts)
        odes_in = self.mapping(data["odes"], ("odes",))
        for key in odes_in:
            if key not in states:
                raise self.fail(
                    ("odes", key),
                    f"ODE for {key!r}, which is not a compartment (compartments: "
                    f"{', '.join(states)})",
                    rule="an ODE needs a declared compartment",
                )
        signals = []
        for key, spec in self.mapping(data.get("signals"), ("signals",), required=False).items():
            signals.append(self.parameter("signals", key, spec, taken))
        sig_names = tuple(sp.name for sp in signals)
        all_names = names + states
        aux: list[tuple[str, str]] = []
        aux_names: tuple[str, ...] = ()
        for key, expr in self.mapping(
            data.get("auxiliary"), ("auxiliary",), required=False
        ).items():
            text_ = self.expression(expr, ("auxiliary", key), all_names + sig_names + aux_names)
            self.name(key, ("auxiliary", key), taken, "auxiliary value")
            aux.append((key, text_))
            aux_names = (*aux_names, key)
        odes = []
        for i, c in enumerate(states):
            if c not in odes_in:
                raise self.fail(
                    ("compartments", i),
                    f"compartment {c!r} has no ODE in odes (write {c}: 0 for a constant amount)",
                    rule="every compartment is defined by an ODE",
                )
            odes.append(self.expression(odes_in[c], ("odes", c), all_names + sig_names + aux_names))
        outputs = []
        out_taken = dict(taken)
        for key, expr in self.mapping(data["outputs"], ("outputs",)).items():
            self.name(key, ("outputs", key), out_taken, "output")
            if re.fullmatch(r"A\d+", str(key)):
                raise self.fail(
                    ("outputs", key),
                    f"{key!r} is reserved for the compartment amounts (A1..An) in results",
                )
            outputs.append((key, self.expression(expr, ("outputs", key), all_names)))
        dosing: dict[int, dict[str, str]] = {}
        for key, attrs in self.mapping(data.get("dosing"), ("dosing",), required=False).items():
            if key not in states:
                raise self.fail(
                    ("dosing", key),
                    f"dose attributes for {key!r}, which is not a compartment "
                    f"(compartments: {', '.join(states)})",
                    rule="dosing names a declared compartment",
                )
            attrs = self.mapping(attrs, ("dosing", key))
            own = {}
            for attr, expr in attrs.items():
                if attr not in DOSE_ATTRIBUTES:
                    raise self.fail(
                        ("dosing", key, attr),
                        f"unknown dose attribute {attr!r}; allowed: {', '.join(DOSE_ATTRIBUTES)}",
                    )
                own[attr] = self.expression(expr, ("dosing", key, attr), names)
            dosing[states.index(key)] = own
        initial: dict[int, str] = {}
        for key, expr in self.mapping(data.get("initial"), ("initial",), required=False).items():
            if key not in states:
                raise self.fail(
                    ("initial", key),
                    f"initial amount for {key!r}, which is not a compartment "
                    f"(compartments: {', '.join(states)})",
                    rule="initial names a declared compartment",
                )
            initial[states.index(key)] = self.expression(expr, ("initial", key), names)
        routes = {"oral": 0}
        for key, cmt in self.mapping(data.get("routes"), ("routes",), required=False).items():
            if key not in ROUTES:
                raise self.fail(
                    ("routes", key), f"unknown route {key!r}; allowed: {', '.join(ROUTES)}"
                )
            if cmt not in states:
                raise self.fail(
                    ("routes", key),
                    f"{cmt!r} is not a compartment (compartments: {', '.join(states)})",
                    rule="a route names a declared compartment",
                )
            routes[key] = states.index(cmt)
        solver = data.get("solver", "nonstiff")
        if solver not in SOLVERS:
            raise self.fail(("solver",), f"must be one of {', '.join(SOLVERS)}, got {solver!r}")
        time_unit = data.get("time_unit", "h")
        if time_unit not in TIME_UNITS:
            raise self.fail(
                ("time_unit",), f"must be one of {', '.join(TIME_UNITS)}, got {time_unit!r}"
            )
        tol = {}
        for key, default, lo, hi in (("rtol", 1e-10, 1e-14, 1e-3), ("atol", 1e-12, 1e-20, 1e-3)):
            v = data.get(key, default)
            if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
                raise self.fail((key,), f"must be a number in [{lo:g}, {hi:g}], got {v!r}")
            tol[key] = float(v)
        return UserModel(
            name=name,
            source=self.source,
            digest=hashlib.sha256(text.encode("utf-8")).hexdigest(),
            text=text,
            inputs=tuple(inputs),
            derived=tuple(derived),
            compartments=states,
            odes=tuple(odes),
            outputs=tuple(outputs),
            dosing=dosing,
            initial=initial,
            routes=routes,
            solver=solver,
            rtol=tol["rtol"],
            atol=tol["atol"],
            signals=tuple(signals),
            time_unit=time_unit,
            auxiliary=tuple(aux),
        )

    def parameter(self, section: str, key: Any, spec: Any, taken: dict) -> ParameterSpec:
        path = (section, key)
        self.name(key, path, taken, section[:-1])
        if key != key.upper() and section == "signals":
            raise self.fail(path, f"{key!r}: signals are named in upper case; write {key.upper()}")
        if key != key.upper():
            raise self.fail(
                path,
                f"{key!r}: a {section[:-1]} is a data-set column, and columns are matched in "
                f"upper case; write {key.upper()}",
            )
        if isinstance(spec, str):
            spec = {"unit": spec}
        spec = self.mapping(spec, path)
        allowed = ("unit", "min", "positive", "description")
        for k in spec:
            if k not in allowed:
                raise self.fail((*path, k), f"unknown field {k!r}; allowed: {', '.join(allowed)}")
        unit = spec.get("unit")
        if not isinstance(unit, str) or not unit.strip():
            raise self.fail((*path, "unit"), "every parameter needs a unit, e.g. unit: L/h")
        lo = spec.get("min")
        if lo is not None and (
            isinstance(lo, bool) or not isinstance(lo, int | float) or not math.isfinite(lo)
        ):
            raise self.fail((*path, "min"), f"must be a finite number, got {lo!r}")
        pos = spec.get("positive", False)
        if not isinstance(pos, bool):
            raise self.fail((*path, "positive"), f"must be true or false, got {pos!r}")
        desc = spec.get("description", "")
        return ParameterSpec(
            key, unit.strip(), None if lo is None else float(lo), pos, str(desc or "")
        )


def _is_boolean(node: ast.AST) -> bool:
    if isinstance(node, ast.Compare | ast.BoolOp):
        return True
    return isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not)


def _fold(node: ast.AST) -> float | None:
    """The value of a subtree without names, or None."""
    try:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            v = _fold(node.operand)
            return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
        if isinstance(node, ast.BinOp):
            a, b = _fold(node.left), _fold(node.right)
            if a is None or b is None:
                return None
            if isinstance(node.op, ast.Add):
                return a + b
            if isinstance(node.op, ast.Sub):
                return a - b
            if isinstance(node.op, ast.Mult):
                return a * b
            if isinstance(node.op, ast.Div):
                return None if b == 0 else a / b
            if isinstance(node.op, ast.Pow):
                return float(a**b)
    except (OverflowError, ZeroDivisionError, TypeError, ValueError):
        return None
    return None


def _constant_zero_divisor(tree: ast.AST) -> str | None:
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            if _fold(node.right) == 0.0:
                return ast.unparse(node)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            base, power = _fold(node.left), _fold(node.right)
            if base == 0.0 and power is not None and power < 0:
                return ast.unparse(node)
    return None
