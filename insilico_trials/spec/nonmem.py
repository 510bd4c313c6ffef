"""Import a NONMEM control stream into a model file.

Supported: ``$SUBROUTINE ADVAN1 TRANS1/2``, ``ADVAN2 TRANS1/2``, ``ADVAN3 TRANS1/4``,
``ADVAN4 TRANS1/4`` (the closed-form compartment models, written as their ODEs) and
``ADVAN6``/``ADVAN13`` with ``$MODEL`` and ``$DES``; ``$PK`` code with assignments, one-line
``IF (...) X = ...`` and ``IF ... THEN / ELSE / ENDIF`` blocks, Fortran operators (``.GT.``,
``.AND.`` ...), ``THETA(n)``, ``ETA(n)``, ``A(n)``, ``EXP LOG LOG10 SQRT ABS``; dose
attributes ``Fn``, ``ALAGn``, ``Rn``, ``Dn`` and scale ``Sn``; ``$ERROR`` assignments that do
not involve ``EPS``, ``ERR`` or ``DV`` become outputs.

Translation rules (named in the generated file's header):

- ``THETA(n)`` become constants: the ``$THETA`` initial estimates, or the final estimates of a
  NONMEM ``.ext`` file. ``ETA(n)`` become parameters ``ETAn`` (a data column per record, as an
  individual's estimates are replayed) or, with ``etas="zero"``, the typical individual.
- A variable assigned twice is renamed per assignment (``TVV``, ``TVV_2``), and later uses read
  the latest one; ``IF (c) X = e`` becomes ``X_2 = (c) * (e) + (1 - (c)) * X`` (0 where X was
  not yet defined). Both branches are evaluated: a branch that is not finite where it is not
  taken (``LOG`` of a negative) poisons the result, which the model's outputs then show.
- Statements that read data items the model cannot see (``TIME``, ``AMT``, ``EVID``...) are
  dropped when nothing the ODEs, dose attributes or outputs use depends on them (``TAD`` for a
  table); otherwise the import is refused, naming the statement.
- The first output is ``F``: the amount in the observation compartment divided by its scale
  ``Sn`` (NONMEM's prediction).

Refused with the line and the reason: ``$PRED`` models, other ADVAN/TRANS pairs, ``$DES`` that
reads ``T``, ``MTIME``, ``EXIT``, ``CALL``, verbatim code, and any other syntax.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from insilico_trials.errors import InputError
from insilico_trials.spec.modelfile import parse_model_text

__all__ = ["NonmemImportError", "import_control_stream", "read_ext_estimates"]

_DATA_ITEMS = frozenset(
    {"TIME", "AMT", "EVID", "MDV", "CMT", "RATE", "SS", "II", "ADDL", "DV", "ID", "T"}
)
_FUNCS = {"EXP": "exp", "LOG": "log", "LOG10": "log10", "SQRT": "sqrt", "ABS": "abs"}
_OPS = [
    (r"\.GT\.", " > "), (r"\.GE\.", " >= "), (r"\.LT\.", " < "), (r"\.LE\.", " <= "),
    (r"\.EQ\.", " == "), (r"\.NE\.", " != "), (r"\.AND\.", " and "), (r"\.OR\.", " or "),
    (r"\.NOT\.", " not "), (r"/=", " != "),
]  # fmt: skip
# ADVAN/TRANS: compartments, observation compartment (1-based) and ODEs over the parameters
_ADVANS: dict[tuple[int, int], tuple[tuple[str, ...], int, dict[str, str]]] = {
    (1, 1): (("CENTRAL",), 1, {"CENTRAL": "-K * CENTRAL"}),
    (1, 2): (("CENTRAL",), 1, {"CENTRAL": "-CL / V * CENTRAL"}),
    (2, 1): (("DEPOT", "CENTRAL"), 2, {"DEPOT": "-KA * DEPOT", "CENTRAL": "KA * DEPOT - K * CENTRAL"}),
    (2, 2): (("DEPOT", "CENTRAL"), 2,
             {"DEPOT": "-KA * DEPOT", "CENTRAL": "KA * DEPOT - CL / V * CENTRAL"}),
    (3, 1): (("CENTRAL", "PERIPHERAL"), 1,
             {"CENTRAL": "-(K + K12) * CENTRAL + K21 * PERIPHERAL",
              "PERIPHERAL": "K12 * CENTRAL - K21 * PERIPHERAL"}),
    (3, 4): (("CENTRAL", "PERIPHERAL"), 1,
             {"CENTRAL": "-(CL + Q) / V1 * CENTRAL + Q / V2 * PERIPHERAL",
              "PERIPHERAL": "Q / V1 * CENTRAL - Q / V2 * PERIPHERAL"}),
    (4, 1): (("DEPOT", "CENTRAL", "PERIPHERAL"), 2,
             {"DEPOT": "-KA * DEPOT",
              "CENTRAL": "KA * DEPOT - (K + K23) * CENTRAL + K32 * PERIPHERAL",
              "PERIPHERAL": "K23 * CENTRAL - K32 * PERIPHERAL"}),
    (4, 4): (("DEPOT", "CENTRAL", "PERIPHERAL"), 2,
             {"DEPOT": "-KA * DEPOT",
              "CENTRAL": "KA * DEPOT - (CL + Q) / V2 * CENTRAL + Q / V3 * PERIPHERAL",
              "PERIPHERAL": "Q / V2 * CENTRAL - Q / V3 * PERIPHERAL"}),
}  # fmt: skip


class NonmemImportError(InputError):
    """The control stream uses something the importer cannot translate (file:line: why)."""


@dataclass
class _Statement:
    target: str
    expr: ast.expr
    line: int
    guard: ast.expr | None = None  # IF condition


@dataclass
class _Stream:
    source: str
    records: dict[str, list[tuple[int, str]]] = field(default_factory=dict)

    def fail(self, line: int, why: str) -> NonmemImportError:
        return NonmemImportError(f"{self.source}:{line}: {why}", where=f"{self.source}:{line}")


def read_ext_estimates(path: str | Path) -> dict[int, float]:
    """Final THETA estimates of a NONMEM ``.ext`` file (the ITERATION -1000000000 row)."""
    path = Path(path)
    names: list[str] = []
    final: dict[int, float] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise NonmemImportError(
            f"{path}: cannot read the .ext file ({exc.strerror or exc})", where=str(path)
        ) from None
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if parts[:1] == ["ITERATION"]:
            names = parts
        elif parts[:1] == ["-1000000000"] and names:
            try:
                final = {
                    int(n[5:]): float(v)
                    for n, v in zip(names, parts, strict=False)
                    if n.startswith("THETA")
                }
            except ValueError:
                raise NonmemImportError(
                    f"{path}:{number}: the final-estimate row is not numbers: {line.strip()!r}"
                ) from None
    if not final:
        raise NonmemImportError(f"{path}: no final estimates (ITERATION -1000000000) found")
    return final


def _split_records(text: str, source: str) -> _Stream:
    stream = _Stream(source)
    current = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(";", 1)[0].rstrip()
        stripped = line.strip()
        if stripped.startswith("$"):
            name, _, rest = stripped.partition(" ")
            current = name.upper()
            stream.records.setdefault(current, []).append((number, ""))
            line = rest
            if not line.strip():
                continue
        if current is not None and line.strip():
            stream.records[current].append((number, line.strip()))
    return stream


def _record(stream: _Stream, *prefixes: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for name, lines in stream.records.items():
        if any(name.startswith(p) for p in prefixes):
            out += [(n, t) for n, t in lines if t]
    return out


def _has(stream: _Stream, *prefixes: str) -> int | None:
    for name, lines in stream.records.items():
        if any(name.startswith(p) for p in prefixes):
            return lines[0][0]
    return None


def _thetas(stream: _Stream) -> dict[int, float]:
    text = " ".join(t for _, t in _record(stream, "$THE"))
    text = re.sub(r"\b(FIX(ED)?|UNINT)\b", " ", text.upper())
    items = re.findall(r"\([^)]*\)|[^\s(),]+", text)
    out = {}
    for i, item in enumerate(items, 1):
        values = [v for v in re.split(r"[,\s]+", item.strip("()")) if v]
        if not values:
            continue
        try:
            numbers = [
                float(v.replace("D", "E")) if v not in ("INF", "-INF") else None for v in values
            ]
        except ValueError:
            raise NonmemImportError(
                f"{stream.source}: $THETA {i}: {item!r} is not (low, init, high), (low, init), "
                "init or init FIX"
            ) from None
        init = numbers[1] if len(numbers) >= 2 else numbers[0]
        if init is None:
            raise NonmemImportError(f"{stream.source}: $THETA {i}: no initial estimate in {item}")
        out[i] = init
    return out


def _fortran(text: str) -> str:
    s = text.upper()
    for pattern, repl in _OPS:
        s = re.sub(pattern, repl, s)
    s = re.sub(r"(\d)D([+-]?\d)", r"\1E\2", s)
    s = re.sub(r"\bTHETA\((\d+)\)", r"THETA\1", s)
    s = re.sub(r"\bETA\((\d+)\)", r"ETA\1", s)
    s = re.sub(r"\bEPS\((\d+)\)", r"EPS\1", s)
    s = re.sub(r"\bERR\((\d+)\)", r"EPS\1", s)
    s = re.sub(r"\bDADT\((\d+)\)", r"DADT\1", s)
    s = re.sub(r"\bA_0\((\d+)\)", r"A_0__\1", s)
    s = re.sub(r"\bA\((\d+)\)", r"A__\1", s)
    for name, fn in _FUNCS.items():
        s = re.sub(rf"\b{name}\s*\(", f"{fn}(", s)
    return s


def _parse(stream: _Stream, line: int, text: str) -> ast.expr:
    try:
        return ast.parse(_fortran(text).strip(), mode="eval").body
    except SyntaxError:
        raise stream.fail(line, f"cannot translate the expression {text.strip()!r}") from None


def _statements(stream: _Stream, lines: list[tuple[int, str]]) -> list[_Statement]:
    out: list[_Statement] = []
    # one entry per open IF block: the conditions of its branches so far, and whether the
    # current branch is the ELSE (taken when none of them holds)
    blocks: list[tuple[list[ast.expr], bool]] = []

    def branch(conds: list[ast.expr], is_else: bool) -> ast.expr:
        earlier = conds if is_else else conds[:-1]
        parts: list[ast.expr] = [ast.UnaryOp(ast.Not(), c) for c in earlier]
        if not is_else:
            parts.append(conds[-1])
        return parts[0] if len(parts) == 1 else ast.BoolOp(ast.And(), parts)

    def guard() -> ast.expr | None:
        conds = [branch(c, e) for c, e in blocks]
        if not conds:
            return None
        return conds[0] if len(conds) == 1 else ast.BoolOp(ast.And(), conds)

    for number, text in lines:
        upper = text.upper().strip()
        m = re.match(r"^IF\s*\((.*)\)\s*THEN$", upper)
        if m:
            blocks.append(([_parse(stream, number, m.group(1))], False))
            continue
        m = re.match(r"^ELSE\s*IF\s*\((.*)\)\s*THEN$", upper)
        if m:
            if not blocks or blocks[-1][1]:
                raise stream.fail(number, "ELSE IF without IF (or after ELSE)")
            blocks[-1][0].append(_parse(stream, number, m.group(1)))
            continue
        if upper == "ELSE":
            if not blocks or blocks[-1][1]:
                raise stream.fail(number, "ELSE without IF (or a second ELSE)")
            blocks[-1] = (blocks[-1][0], True)
            continue
        if upper in ("ENDIF", "END IF"):
            if not blocks:
                raise stream.fail(number, "ENDIF without IF")
            blocks.pop()
            continue
        cond = None
        m = re.match(r"^IF\s*\((.*?)\)\s*([A-Z_][A-Z0-9_]*(\(\d+\))?\s*=[^=].*)$", upper)
        if m:
            cond = _parse(stream, number, m.group(1))
            upper = m.group(2)
        m = re.match(r"^([A-Z_][A-Z0-9_]*(\(\d+\))?)\s*=\s*(.+)$", upper)
        if not m or upper.startswith(("CALL", "EXIT", "MTIME", '"')):
            raise stream.fail(number, f"not an assignment the importer translates: {text!r}")
        target = _fortran(m.group(1)).strip()
        expr = _parse(stream, number, m.group(3))
        g = guard()
        if cond is not None:
            g = cond if g is None else ast.BoolOp(ast.And(), [g, cond])
        out.append(_Statement(target, expr, number, g))
    if blocks:
        raise stream.fail(lines[-1][0] if lines else 1, "IF ... THEN without ENDIF")
    return out


_FUNCTION_NAMES = frozenset({"exp", "log", "log10", "sqrt", "abs", "min", "max"})


def _names(node: ast.AST) -> set[str]:
    """Variable names a node reads (function names excluded)."""
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} - _FUNCTION_NAMES


class _Sub(ast.NodeTransformer):
    def __init__(self, table: dict[str, ast.expr]) -> None:
        self.table = table

    def visit_Name(self, node: ast.Name) -> ast.AST:
        return self.table.get(node.id, node)


def _substitute(node: ast.expr, table: dict[str, ast.expr]) -> ast.expr:
    import copy

    return _Sub(table).visit(copy.deepcopy(node))


def _number(value: float) -> ast.expr:
    """A constant that keeps its sign as a power's base: -2 is ``(-2.0)``, not ``-2.0``."""
    value = float(value)
    if value < 0 or (value == 0 and str(value).startswith("-")):
        return ast.UnaryOp(ast.USub(), ast.Constant(-value))
    return ast.Constant(value)


def _guarded(stmt: _Statement, previous: ast.expr) -> ast.expr:
    if stmt.guard is None:
        return stmt.expr
    c = stmt.guard
    return ast.BinOp(
        ast.BinOp(c, ast.Mult(), stmt.expr),
        ast.Add(),
        ast.BinOp(ast.BinOp(ast.Constant(1.0), ast.Sub(), c), ast.Mult(), previous),
    )


def import_control_stream(
    path: str | Path,
    *,
    ext: str | Path | None = None,
    etas: str = "inputs",
    name: str | None = None,
    thetas: dict[int, float] | None = None,
) -> str:
    """Translate a control stream into model-file text (validated before it is returned).

    Parameters
    ----------
    path
        The control stream (``.mod``, ``.ctl``).
    ext
        A NONMEM ``.ext`` file whose final THETA estimates replace ``$THETA``'s initial ones.
    etas
        ``"inputs"``: ``ETAn`` are parameters (data columns); ``"zero"``: the typical individual.
    name
        The model's name (default: the file's stem).
    thetas
        THETA values by number, replacing those of ``$THETA`` or ``ext`` where given.

    Raises
    ------
    NonmemImportError
        Naming the control stream's line and what cannot be translated.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise NonmemImportError(f"{path}: file not found", where=str(path)) from None
    except OSError as exc:
        raise NonmemImportError(
            f"{path}: cannot read the control stream ({exc.strerror or exc})", where=str(path)
        ) from None
    if etas not in ("inputs", "zero"):
        raise NonmemImportError(f"etas must be 'inputs' or 'zero', got {etas!r}")
    stream = _split_records(text, str(path))
    pred = _has(stream, "$PRED")
    if pred is not None:
        raise stream.fail(pred, "$PRED models have no compartments; only ADVAN models import")
    sub = " ".join(t for _, t in _record(stream, "$SUB")).upper()
    m = re.search(r"ADVAN(\d+)", sub)
    if not m:
        raise stream.fail(_has(stream, "$SUB") or 1, "no $SUBROUTINE ADVANn")
    advan = int(m.group(1))
    defdose = 1
    tm = re.search(r"TRANS(\d+)", sub)
    trans = int(tm.group(1)) if tm else 1
    thetas = {
        **(read_ext_estimates(ext) if ext is not None else _thetas(stream)),
        **(thetas or {}),
    }
    inputs = []
    for _, t in _record(stream, "$INP"):
        for item in t.upper().split():
            label, _, value = item.partition("=")
            if "DROP" in (label, value) or label == "SKIP":
                continue
            inputs.append(label)
    # --- compartments and ODEs
    if advan in (6, 13):
        cmts: list[str] = []
        defobs = None
        for _, t in _record(stream, "$MOD"):
            for m in re.finditer(r"COMP(?:ARTMENT)?\s*=\s*\(([^)]*)\)", t.upper()):
                words = m.group(1).split()
                cmts.append(words[0])
                if "DEFOBSERVATION" in words or "DEFOBS" in words:
                    defobs = len(cmts)
                if "DEFDOSE" in words:
                    defdose = len(cmts)
        if not cmts:
            raise stream.fail(_has(stream, "$MOD") or 1, "ADVAN6/13 needs $MODEL COMP=(...)")
        obs = defobs or 1
        des = _statements(stream, _record(stream, "$DES"))
        if not des:
            raise stream.fail(_has(stream, "$DES") or 1, "ADVAN6/13 needs $DES with DADT(n)")
        odes_src: dict[str, ast.expr] = {}
    elif (advan, trans) in _ADVANS:
        cmts_t, obs, odes_text = _ADVANS[(advan, trans)]
        cmts = list(cmts_t)
        des = []
        odes_src = {c: ast.parse(odes_text[c], mode="eval").body for c in cmts}
    else:
        raise stream.fail(
            _has(stream, "$SUB") or 1,
            f"ADVAN{advan} TRANS{trans} is not imported (ADVAN1-2 TRANS1/2, ADVAN3-4 TRANS1/4, "
            "ADVAN6/13 with $DES)",
        )
    cmts = [re.sub(r"[^A-Z0-9_]", "_", c.upper()) for c in cmts]
    state = {f"A__{i}": c for i, c in enumerate(cmts, 1)}

    # --- $PK: SSA renaming into derived parameters
    pk = _statements(stream, _record(stream, "$PK"))
    derived: list[tuple[str, ast.expr, int]] = []
    current: dict[str, str] = {}
    counts: dict[str, int] = {}
    tainted: dict[str, int] = {}  # names that read data items, with the line
    theta_table = {f"THETA{k}": _number(v) for k, v in thetas.items()}
    eta_table = {}
    if etas == "zero":
        eta_table = {
            n: ast.Constant(0.0)
            for s in pk
            for n in _names(s.expr) | _names(s.guard or ast.Constant(0))
            if re.fullmatch(r"ETA\d+", n)
        }
    for s in pk:
        expr, guard = s.expr, s.guard
        used = _names(expr) | (_names(guard) if guard is not None else set())
        missing = [n for n in used if re.fullmatch(r"THETA\d+", n) and n not in theta_table]
        if missing:
            raise stream.fail(s.line, f"{missing[0]} has no value in $THETA or the .ext file")
        bad = sorted((used & _DATA_ITEMS) | {n for n in used if n in tainted})
        table = {**theta_table, **eta_table}
        table.update({k: ast.Name(v, ast.Load()) for k, v in current.items()})
        expr = _substitute(expr, table)
        s2 = _Statement(s.target, expr, s.line, _substitute(guard, table) if guard else None)
        prev = ast.Name(current[s.target], ast.Load()) if s.target in current else ast.Constant(0.0)
        counts[s.target] = counts.get(s.target, 0) + 1
        new = s.target if counts[s.target] == 1 else f"{s.target}_{counts[s.target]}"
        if bad:
            tainted[new] = s.line
            tainted[s.target] = s.line
        current[s.target] = new
        derived.append((new, _guarded(s2, prev), s.line))
    final = {k: ast.Name(v, ast.Load()) for k, v in current.items()}

    # --- $DES: inline locals into the ODEs
    if des:
        local: dict[str, ast.expr] = {}
        for s in des:
            table = {**final, **theta_table, **eta_table, **local}
            table.update({k: ast.Name(v, ast.Load()) for k, v in state.items()})
            expr = _substitute(s.expr, table)
            if "T" in _names(expr):
                raise stream.fail(s.line, "$DES reads T (time); model files are autonomous")
            guard = _substitute(s.guard, table) if s.guard is not None else None
            s2 = _Statement(s.target, expr, s.line, guard)
            m = re.fullmatch(r"DADT(\d+)", s.target)
            if m:
                k = int(m.group(1))
                if not 1 <= k <= len(cmts):
                    raise stream.fail(s.line, f"DADT({k}) but $MODEL has {len(cmts)} compartments")
                odes_src[cmts[k - 1]] = _guarded(s2, odes_src.get(cmts[k - 1], ast.Constant(0.0)))
            else:
                local[s.target] = _guarded(s2, local.get(s.target, ast.Constant(0.0)))
        for c in cmts:
            if c not in odes_src:
                raise NonmemImportError(f"{path}: $DES has no DADT for compartment {c}")
    else:
        odes_src = {c: _substitute(e, final) for c, e in odes_src.items()}

    # --- dose attributes, scale, outputs
    dosing: dict[str, dict[str, ast.expr]] = {}
    for var, name_ in current.items():
        m = re.fullmatch(r"(F|ALAG|R|D)(\d+)", var)
        if m and 1 <= int(m.group(2)) <= len(cmts):
            dosing.setdefault(cmts[int(m.group(2)) - 1], {})[m.group(1)] = ast.Name(
                name_, ast.Load()
            )
    initial: dict[str, ast.expr] = {}
    for var, name_ in current.items():
        m = re.fullmatch(r"A_0__(\d+)", var)
        if m:
            k = int(m.group(1))
            if not 1 <= k <= len(cmts):
                raise NonmemImportError(
                    f"{path}: A_0({k}) but the model has {len(cmts)} compartments"
                )
            initial[cmts[k - 1]] = ast.Name(name_, ast.Load())
    obs_name = cmts[obs - 1]
    scale = current.get(f"S{obs}")
    f_expr: ast.expr = ast.Name(obs_name, ast.Load())
    if scale:
        f_expr = ast.BinOp(f_expr, ast.Div(), ast.Name(scale, ast.Load()))
    outputs: list[tuple[str, ast.expr]] = [("F", f_expr)]
    local = {"F": f_expr}
    dropped: set[str] = set()
    for s in _statements(stream, _record(stream, "$ERR")):
        table = {**final, **theta_table, **eta_table, **local}
        table.update({k: ast.Name(v, ast.Load()) for k, v in state.items()})
        expr = _substitute(s.expr, table)
        used = _names(expr)
        if (
            any(re.fullmatch(r"EPS\d+", n) for n in used)
            or used & (_DATA_ITEMS | dropped)
            or s.guard
            or any(n in tainted for n in used)
        ):
            dropped.add(s.target)  # residual error, data items, conditional: not an output
            continue
        local[s.target] = expr
        if s.target not in ("F", "Y") and re.fullmatch(r"[A-Z][A-Z0-9_]*", s.target):
            outputs = [(n, e) for n, e in outputs if n != s.target] + [(s.target, expr)]

    # --- keep what the ODEs, dosing and outputs need; refuse what needs data items
    needed: set[str] = set()
    roots: list[ast.expr] = [*odes_src.values(), *(e for _, e in outputs)]
    roots += [e for attrs in dosing.values() for e in attrs.values()]
    roots += list(initial.values())
    for e in roots:
        needed |= _names(e)
    by_name = {n: (e, line) for n, e, line in derived}
    stack = list(needed)
    while stack:
        n = stack.pop()
        if n in by_name:
            for m in _names(by_name[n][0]):
                if m not in needed:
                    needed.add(m)
                    stack.append(m)
    for n in needed:
        if n in tainted:
            raise stream.fail(
                tainted[n], f"{n} depends on data items ({', '.join(sorted(_DATA_ITEMS))}), "
                "which a model file does not read, and the model uses it"
            )  # fmt: skip
    derived = [(n, e, line) for n, e, line in derived if n in needed]
    states = set(cmts)
    derived_names = {n for n, _, _ in derived}
    covariates = sorted(
        n for n in needed - states - derived_names
        if not re.fullmatch(r"ETA\d+", n) and n in inputs
    )  # fmt: skip
    eta_names = sorted((n for n in needed if re.fullmatch(r"ETA\d+", n)), key=lambda n: int(n[3:]))
    unknown = sorted(needed - states - derived_names - set(covariates) - set(eta_names))
    if unknown:
        raise NonmemImportError(
            f"{path}: the model reads {', '.join(unknown)}, which is neither in $INPUT nor "
            "assigned in $PK"
        )
    return _write(
        name or re.sub(r"[^A-Za-z0-9_]", "_", path.stem),
        path,
        ext,
        advan,
        trans,
        eta_names,
        covariates,
        derived,
        cmts,
        odes_src,
        outputs,
        dosing,
        initial,
        cmts[defdose - 1],
    )


def _yaml_str(node: ast.expr) -> str:
    text = ast.unparse(node)
    return "'" + text.replace("'", "''") + "'"


def _write(
    name: str,
    path: Path,
    ext: str | Path | None,
    advan: int,
    trans: int,
    etas: Iterable[str],
    covariates: Iterable[str],
    derived: list[tuple[str, ast.expr, int]],
    cmts: list[str],
    odes: dict[str, ast.expr],
    outputs: list[tuple[str, ast.expr]],
    dosing: dict[str, dict[str, ast.expr]],
    initial: dict[str, ast.expr],
    oral: str,
) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", name)[:32]
    if not re.match(r"^[A-Za-z]", name):
        name = f"m_{name}"[:32]
    # file names go into comments and a quoted string only, reduced to safe characters
    src = re.sub(r"[^A-Za-z0-9_.\-]", "_", path.name)
    ext_name = re.sub(r"[^A-Za-z0-9_.\-]", "_", Path(ext).name) if ext else ""
    lines = [
        f"# Imported from the NONMEM control stream {src} (ADVAN{advan}"
        + (f" TRANS{trans}" if advan not in (6, 13) else "")
        + ") by insilico-trials pk import.",
        "# THETAs are constants ("
        + (f"final estimates of {ext_name}" if ext else "$THETA initial estimates")
        + "); ETAs are parameters; units are NONMEM's (none declared): check them.",
        f"model: {name}",
        f"description: 'imported from {src}'",
    ]
    params = list(etas)
    if params:
        lines.append("parameters:")
        lines += [
            f"  {p}: {{unit: '1', description: between-subject random effect}}" for p in params
        ]
    else:
        lines += ["parameters: {}"]
    if covariates:
        lines.append("covariates:")
        lines += [f"  {c}: {{unit: as in the data set}}" for c in covariates]
    if derived:
        lines.append("derived:")
        lines += [f"  {n}: {_yaml_str(e)}  # line {line}" for n, e, line in derived]
    lines.append(f"compartments: [{', '.join(cmts)}]")
    lines.append("odes:")
    lines += [f"  {c}: {_yaml_str(odes[c])}" for c in cmts]
    lines.append("outputs:")
    lines += [f"  {n}: {_yaml_str(e)}" for n, e in outputs]
    if initial:
        lines.append("initial:")
        lines += [f"  {c}: {_yaml_str(e)}" for c, e in initial.items()]
    if oral != cmts[0]:
        lines.append(f"routes: {{oral: {oral}}}")
    if dosing:
        lines.append("dosing:")
        for c, attrs in dosing.items():
            inner = ", ".join(f"{a}: {_yaml_str(e)}" for a, e in attrs.items())
            lines.append(f"  {c}: {{{inner}}}")
    text = "\n".join(lines) + "\n"
    parse_model_text(text, source=f"{name}.yaml (imported from {path.name})")
    return text
