"""Ingestion and validation of real trial data cuts in CDISC ADaM shapes.

A cut is a folder holding an ``adsl`` dataset, an outcome dataset (``adtte``, or ``adlb`` for
longitudinal data) and optionally ``adrs``, ``adlb`` and ``adex``, each as CSV
(``adsl.csv``), Parquet (``adsl.parquet``) or SAS transport (``adsl.xpt``); file names are
matched case-insensitively. ``adtte`` is required only when the cut has no ``adlb``; a caller
may require more (``load_cut(..., require=("adrs",))`` for a response endpoint). Required
columns:

* ADSL (one row per subject): ``USUBJID``, ``ARM``; any other column is a baseline covariate
  and must be numeric or a short categorical code (see the identifier rules below).
* ADTTE: ``USUBJID``, ``PARAMCD``, ``AVAL`` (days, >= 0), ``CNSR`` (0 event, 1 censored).
* ADRS: ``USUBJID``, ``PARAMCD`` and ``AVALC`` (e.g. CR, PR, SD, PD, NE) or ``AVAL``
  (1 responder, 0 not).
* ADLB (BDS, any number of records per subject): ``USUBJID``, ``PARAMCD`` (one of
  :data:`LAB_UNITS`), ``AVAL`` (finite, >= 0), ``AVALU`` (the unit :data:`LAB_UNITS` gives for
  the PARAMCD, compared case-insensitively: PSA in ng/mL), ``ADY`` (study day, finite,
  fractional days allowed).
* ADEX (exposure intervals): ``USUBJID``, ``EXTRT`` (non-empty), ``ASTDY``, ``AENDY`` (finite
  study days, ``ASTDY <= AENDY``); ``EXDOSE``, if present, finite and >= 0 (0 marks an interval
  off treatment).

Privacy by allow-list: a dataset may carry only the ADaM variables
``insilico_trials/data/adam_variables.yaml`` lists for it (CDISC ADaMIG v1.1, ADaM TTE and
OCCDS names, and a few sponsor-defined variables documented there) and the covariates the
caller allows (``extra_allowed``: the protocol's population covariates). Any other column is
refused naming the file and the column, or, with ``drop_unknown=True``, dropped (the Cut lists
it in ``dropped``; :func:`write_dataset` writes a dataset without it).

Rules enforced. :func:`load_cut` checks every rule over every dataset and raises one
:class:`DataCutError` listing every problem (each names the file, the row: 1-based data row,
the header not counted, the column, the value and the rule; a rule broken in many rows of a
column lists the first few and counts the rest): required datasets and columns present;
types; no duplicate subjects in ADSL and no duplicate (USUBJID, PARAMCD) in ADTTE/ADRS; every
ADTTE/ADRS/ADLB/ADEX subject in ADSL; AVAL >= 0 and finite; CNSR in {0, 1}; in ADLB, ADY must
not decrease within a subject and PARAMCD in file order (equal days are allowed: repeat
measurements on one day), and an identical record (same USUBJID, PARAMCD, ADY and AVAL) may
not appear twice; in ADEX, the intervals of one subject and EXTRT must not overlap (they may
touch: one's AENDY may be the next one's ASTDY); only allow-listed columns; no direct
identifiers: columns named like names, initials, dates of birth, addresses, phone, e-mail,
social security/medical record numbers, or free-text comments (also inside longer names:
PATIENT_NAME), and no value that looks like a full calendar date (possible date of birth), an
e-mail address or a phone number, or free text (a string value longer than 40 characters or
of more than 4 words; descriptive labels such as ARM and PARAM are exempt from this one). A
value that looks like an identifier is never echoed whole: messages show its first
characters and its length.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from insilico_trials.errors import InputError

__all__ = [
    "AppendOnlyIssue",
    "Cut",
    "CutProblem",
    "DataCutError",
    "allowed_variables",
    "check_append_only",
    "endpoint_frame",
    "exposure_intervals",
    "load_cut",
    "longitudinal_frame",
    "write_dataset",
]

DATASETS = ("adsl", "adtte", "adrs", "adlb", "adex")
LONGITUDINAL = ("adlb", "adex")  # many records per subject; later cuts may append records
OPTIONAL = ("adrs", "adlb", "adex")
SUFFIXES = (".csv", ".parquet", ".xpt")
REQUIRED = {
    "adsl": ("USUBJID", "ARM"),
    "adtte": ("USUBJID", "PARAMCD", "AVAL", "CNSR"),
    "adrs": ("USUBJID", "PARAMCD"),
    "adlb": ("USUBJID", "PARAMCD", "AVAL", "AVALU", "ADY"),
    "adex": ("USUBJID", "EXTRT", "ASTDY", "AENDY"),
}
# The parameters ADLB may carry and the unit each must be in (compared case-insensitively).
LAB_UNITS: dict[str, str] = {"PSA": "ng/mL"}
RESPONDER_CODES = frozenset({"CR", "PR"})
RESPONSE_CODES = frozenset({"CR", "PR", "SD", "PD", "NE", "NON-CR/NON-PD", "MISSING"})
ALLOW_LIST = Path(__file__).resolve().parents[1] / "data" / "adam_variables.yaml"

# Column names that carry direct identifiers: whole names, and names containing an identifier
# word anywhere (PATIENT_NAME, SUBJECT_INITIALS, BIRTHDATN, HOME_ADDRESS, ...).
_IDENTIFIER_WORD = re.compile(
    r"NAME|INITIAL|BIRTH|DOB|ADDRESS|STREET|POSTCODE|ZIPCODE|PHONE|MOBILE|EMAIL|E_MAIL|"
    r"PASSPORT|SSN|NHSNO|MEDREC|MRN"
)
_IDENTIFIER_NAME = re.compile(
    r"^(NAME|FNAME|LNAME|FIRSTNAME|LASTNAME|SURNAME|GIVENNAME|FULLNAME|PATNAME|SUBJNAME|"
    r"INITIALS?|SUBJINIT|BRTHDTC|BIRTHDT[CM]?|DOB|DATEOFBIRTH|BIRTHDATE|"
    r"ADDR(ESS)?\d*|STREET|CITY|ZIP|ZIPCODE|POSTCODE|POSTALCODE|PHONE|TELEPHONE|TEL|MOBILE|"
    r"E?MAIL|EMAILADDR|SSN|NHSNO|MRN|MEDRECNO|PASSPORT|COMMENT|COMMENTS|COVAL|NOTES?|"
    r"FREETEXT|TEXT|REMARKS?)$"
)
# Value patterns, run by pyarrow (RE2 syntax) over a column's distinct values at once.
_EMAIL = r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}"
_PHONE = r"^\+?[\d\s().-]{9,}$"  # and at least 9 digits
_FULL_DATE = r"^\d{4}-\d{2}-\d{2}|^\d{1,2}[/.]\d{1,2}[/.]\d{4}$|^\d{2}[A-Z]{3}\d{4}$"
_MAX_CODE_LEN = 40
_MAX_CODE_WORDS = 4
_ROWS_LISTED = 5  # rows listed per (file, column, rule); the rest are counted
_IDENTIFIER_RULE = (
    "direct identifier column not allowed (names, dates of birth, addresses, contact details, "
    "free text); remove it before sending"
)
_VALUE_RULES = {
    "email": "looks like an e-mail address (direct identifier)",
    "phone": "looks like a phone number (direct identifier)",
    "date": "full calendar date not allowed (possible date of birth); send study days instead",
    "text": (
        f"free text not allowed (string values must be codes of <= {_MAX_CODE_LEN} characters "
        f"and <= {_MAX_CODE_WORDS} words)"
    ),
}


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:76] + "...'"


def _mask(value: object) -> str:
    """An identifier-looking value as messages show it: its first characters and its length."""
    text = _text(value)
    return f"{text[:2] if len(text) >= 6 else ''}... ({len(text)} characters)"


@dataclass(frozen=True)
class CutProblem:
    """One broken rule of a data cut.

    ``row`` is the 1-based data row (the header not counted), None for a problem of a whole
    file or column; ``value`` is the value as the file has it, or masked (first characters and
    length) when it may be an identifier; ``more`` counts further rows of the same file and
    column that break the same rule and are not listed.
    """

    file: str
    row: int | None
    column: str | None
    value: object
    rule: str
    more: int = 0

    @property
    def where(self) -> str:
        return (
            self.file
            + (f", row {self.row}" if self.row is not None else "")
            + (f", column {self.column}" if self.column else "")
        )

    def __str__(self) -> str:
        more = f" (and {self.more:,} more rows with this problem)" if self.more else ""
        return f"{self.where}: {self.rule}; got {_show(self.value)}{more}"


class DataCutError(InputError):
    """A data cut breaks rules: ``problems`` lists every one (:class:`CutProblem`).

    ``file``, ``row`` (1-based data row), ``column``, ``value`` and ``rule`` are those of the
    first problem. Built from one problem (``DataCutError(file, row, column, value, rule)``) or
    from many (``DataCutError.of(problems)``).
    """

    def __init__(
        self,
        file: Path | str,
        row: int | None = None,
        column: str | None = None,
        value: object = None,
        rule: str = "",
        *,
        problems: Sequence[CutProblem] = (),
    ):
        self.problems = list(problems) or [CutProblem(str(file), row, column, value, rule)]
        first = self.problems[0]
        # the base sets rule, actual and where; set them through it (not before it)
        super().__init__(
            "\n".join(str(p) for p in self.problems),
            rule=first.rule, actual=first.value, where=first.where,
        )  # fmt: skip
        self.file, self.row, self.column, self.value = (
            first.file, first.row, first.column, first.value,
        )  # fmt: skip

    @classmethod
    def of(cls, problems: Sequence[CutProblem]) -> DataCutError:
        """One error carrying every problem found."""
        return cls(problems[0].file, problems=problems)

    def report(self) -> str:
        if len(self.problems) == 1:
            return f"error: {self}"
        return (
            f"error: {len(self.problems)} problems in the data cut (every one is listed; "
            "nothing was written):\n" + "\n".join(f"  {p}" for p in self.problems)
        )


class _Problems:
    """Collects the problems of one cut, listing at most a few rows per file, column and rule."""

    def __init__(self) -> None:
        self.items: list[CutProblem] = []

    def __bool__(self) -> bool:
        return bool(self.items)

    def add(
        self, path: Path | str, row: int | None, column: str | None, value: object, rule: str
    ) -> None:
        """A problem; ``row`` is the 0-based position in the table (None: no row)."""
        self.items.append(
            CutProblem(str(path), None if row is None else int(row) + 1, column, value, rule)
        )

    def rows(
        self,
        path: Path | str,
        mask: np.ndarray | pd.Series,
        column: str,
        values: pd.Series | np.ndarray,
        rule: str | Callable[[int], str],
        *,
        show: Callable[[object], object] | None = None,
    ) -> None:
        """A problem for every row where ``mask`` holds (the first few listed, the rest
        counted); ``rule`` may be a function of the 0-based row."""
        hits = np.flatnonzero(np.asarray(mask, dtype=bool))
        if not hits.size:
            return
        listed = hits[:_ROWS_LISTED]
        vals = values.iloc if isinstance(values, pd.Series) else values
        for k, i in enumerate(listed):
            v = vals[int(i)]
            self.items.append(
                CutProblem(
                    str(path), int(i) + 1, column, show(v) if show else v,
                    rule(int(i)) if callable(rule) else rule,
                    more=len(hits) - len(listed) if k == len(listed) - 1 else 0,
                )
            )  # fmt: skip


@dataclass(frozen=True)
class Cut:
    """A validated data cut.

    ``adsl``, ``adtte``, ``adrs``, ``adlb``, ``adex`` are DataFrames with upper-case ADaM
    column names (None when absent; ``adtte`` is absent only in a cut with ``adlb``); numeric
    columns that were validated (AVAL, CNSR, ADY, ASTDY, AENDY, EXDOSE) hold numbers, ADLB
    and ADEX keep file order; ``files`` maps dataset name to its path; ``content_hash`` is the
    SHA-256 of the canonical content (tables sorted by key, values as text), independent of
    file format and row order (a cut without ADLB/ADEX hashes as before they existed);
    ``subject_hashes`` the same per subject; ``dropped`` the (file name, column) pairs that
    ``load_cut(..., drop_unknown=True)`` left out (not in the tables, not in the hashes).
    """

    cut_id: str
    path: Path
    adsl: pd.DataFrame
    adtte: pd.DataFrame | None
    adrs: pd.DataFrame | None
    files: dict[str, Path]
    content_hash: str
    subject_hashes: dict[str, str]
    adlb: pd.DataFrame | None = None
    adex: pd.DataFrame | None = None
    dropped: tuple[tuple[str, str], ...] = field(default=())

    @property
    def subjects(self) -> list[str]:
        return list(self.adsl["USUBJID"])


@dataclass(frozen=True)
class _Allowed:
    keys: frozenset[str]  # not screened by value
    labels: frozenset[str]  # exempt from the free-text rule
    values: frozenset[str]

    @property
    def names(self) -> frozenset[str]:
        return self.keys | self.labels | self.values


@cache
def _allow_list() -> dict[str, _Allowed]:
    import yaml

    data = yaml.safe_load(ALLOW_LIST.read_text(encoding="utf-8"))

    def names(dataset: str, kind: str) -> frozenset[str]:
        entry = data[dataset].get(kind) or ()
        return frozenset(str(n).upper() for n in entry)

    adsl = {k: names("adsl", k) for k in ("keys", "labels", "values", "sponsor")}
    out = {}
    for d in DATASETS:
        # ADaMIG: any ADSL variable may be copied onto the other datasets
        out[d] = _Allowed(
            keys=names(d, "keys") | adsl["keys"],
            labels=names(d, "labels") | adsl["labels"],
            values=names(d, "values") | adsl["values"] | adsl["sponsor"],
        )
    return out


def allowed_variables(dataset: str) -> frozenset[str]:
    """The column names (upper case) a cut's ``dataset`` (``"adsl"``, ...) may carry besides
    the caller's ``extra_allowed``: ``insilico_trials/data/adam_variables.yaml``."""
    return _allow_list()[dataset].names


def _read(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        elif suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            import pyreadstat

            df, _meta = pyreadstat.read_xport(str(path))
    except Exception as exc:  # the reader's own message, with the file named
        raise DataCutError(
            path, None, None, type(exc).__name__, f"cannot be read as {suffix}: {exc}"
        ) from exc
    df.columns = [str(c).upper() for c in df.columns]
    return df


def _find(cut_dir: Path, name: str, listing: list[Path], problems: _Problems) -> Path | None:
    hits = [p for p in listing if p.stem.lower() == name and p.suffix.lower() in SUFFIXES]
    bad = [p for p in hits if p.is_symlink() or not p.is_file()]
    for p in bad:
        problems.add(
            p, None, None, p.name,
            "must be a regular file in the cut folder (links and other kinds are refused: "
            "a cut carries its own data only)",
        )  # fmt: skip
    if len(hits) > 1:
        problems.add(
            cut_dir,
            None,
            None,
            sorted(p.name for p in hits),
            f"more than one {name} file; keep one",
        )
    return hits[0] if len(hits) == 1 and not bad else None


def _text(v: object) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def _arrow_text(series: pd.Series) -> Any:
    """A column as a pyarrow string array, stripped, empty for missing (``_text`` of each)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = None
    if isinstance(series.dtype, pd.StringDtype):  # arrow-backed text: no trip through objects
        arr = pa.array(series.array)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
    else:
        values = series.to_numpy(dtype=object)
        try:
            arr = pa.array(values, type=pa.string(), from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types (numbers among strings)
            arr = pa.array([_text(v) for v in values], type=pa.string())
    return pc.utf8_trim_whitespace(pc.fill_null(arr, ""))


def _column_text(series: pd.Series) -> Any:
    """``_text`` of every value of a column, as a pyarrow string array (text columns through
    pyarrow; other columns over their distinct values)."""
    import pyarrow as pa

    if series.dtype == object or pd.api.types.is_string_dtype(series):
        return _arrow_text(series)
    codes, uniques = pd.factorize(series, use_na_sentinel=False)
    return pa.array([_text(u) for u in uniques] or [""], type=pa.string()).take(codes)


def _texts(series: pd.Series) -> pd.Series:
    """``_text`` of every value (a text Series, pyarrow-backed, same index)."""
    return pd.Series(pd.array(_column_text(series), dtype="str"), index=series.index)


def _screen_values(
    series: pd.Series, column: str, path: Path, problems: _Problems, *, label: bool
) -> None:
    """Refuse values that look like identifiers or free text, over the column's distinct
    values at once (pyarrow's RE2 kernels); numbers and empty values pass."""
    if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        return
    import pyarrow.compute as pc

    text = _arrow_text(series)
    encoded = text.dictionary_encode()
    uniq, position = encoded.dictionary, encoded.indices.to_numpy(zero_copy_only=False)
    u = uniq.to_numpy(zero_copy_only=False)
    # CSV is read as text: plain numbers (times, ages) are data, not phone numbers
    numeric = pd.to_numeric(pd.Series(u, dtype=object), errors="coerce").notna().to_numpy()
    skip = numeric | (u == "")

    def matches(pattern: str, arr: Any = uniq) -> np.ndarray:
        return pc.match_substring_regex(arr, pattern).to_numpy(zero_copy_only=False)

    kinds: dict[str, np.ndarray] = {
        "email": matches(_EMAIL),
        "phone": matches(_PHONE)
        & (pc.count_substring_regex(uniq, r"\d").to_numpy(zero_copy_only=False) >= 9),
        "date": matches(_FULL_DATE, pc.utf8_upper(uniq)),
    }
    if not label:
        words = pc.count_substring_regex(uniq, r"\S+").to_numpy(zero_copy_only=False)
        length = pc.utf8_length(uniq).to_numpy(zero_copy_only=False)
        kinds["text"] = (length > _MAX_CODE_LEN) | (words > _MAX_CODE_WORDS)
    taken = skip.copy()
    for kind, hit in kinds.items():  # one rule per value, in this order
        hit = hit & ~taken
        taken |= hit
        if hit.any():
            rows = hit[position]
            problems.rows(path, rows, column, series, _VALUE_RULES[kind], show=_mask)


def _screen_columns(
    df: pd.DataFrame,
    name: str,
    path: Path,
    problems: _Problems,
    *,
    extra_allowed: frozenset[str],
    allow_list: bool,
    drop_unknown: bool,
) -> tuple[pd.DataFrame, list[str]]:
    """Identifier names, the allow-list and the value screens; returns the table without the
    columns dropped (``drop_unknown``) and their names."""
    allowed = _allow_list()[name]
    known = allowed.names | extra_allowed | set(REQUIRED[name])
    dropped = []
    for col in df.columns:
        unknown = allow_list and col not in known
        if unknown and drop_unknown:
            dropped.append(col)
            continue
        if _IDENTIFIER_NAME.match(col) or _IDENTIFIER_WORD.search(col):
            problems.add(path, 0 if len(df) else None, col,
                         _mask(df[col].iloc[0]) if len(df) else None, _IDENTIFIER_RULE)  # fmt: skip
            continue
        if unknown:
            problems.add(
                path, None, col, col,
                f"column not allowed in {name.upper()}: only the ADaM variables listed in "
                "insilico_trials/data/adam_variables.yaml and the protocol's covariates "
                "(population.covariates) may be sent; remove it, or drop unknown columns with "
                "update --drop-unknown-columns",
            )  # fmt: skip
        if col in allowed.keys:
            continue
        _screen_values(df[col], col, path, problems, label=col in allowed.labels)
    return (df.drop(columns=dropped) if dropped else df), dropped


def _isin(values: pd.Series, pool: pd.Series) -> np.ndarray:
    """Which ``values`` are in ``pool`` (two text columns), by pyarrow's hash kernel."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def arrow(s: pd.Series) -> Any:
        return pa.array(s.array).cast(pa.large_string())

    return pc.is_in(arrow(values), value_set=arrow(pool)).to_numpy(zero_copy_only=False)


def _missing_columns(df: pd.DataFrame, name: str, path: Path, problems: _Problems) -> bool:
    """Record missing required columns; True when the table has them all."""
    missing = [c for c in REQUIRED[name] if c not in df.columns]
    for c in missing:
        problems.add(
            path, None, c, list(df.columns), f"{name.upper()} needs columns {list(REQUIRED[name])}"
        )
    if name == "adrs" and "AVALC" not in df.columns and "AVAL" not in df.columns:
        problems.add(path, None, "AVALC", list(df.columns), "ADRS needs AVALC or AVAL")
        return False
    return not missing


def _ids(df: pd.DataFrame, path: Path, problems: _Problems) -> pd.Series:
    ids = _texts(df["USUBJID"])
    problems.rows(path, ids == "", "USUBJID", df["USUBJID"], "must be a non-empty subject id")
    return ids


def _numbers(
    df: pd.DataFrame,
    col: str,
    path: Path,
    problems: _Problems,
    rule: str,
    ok: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """The column as floats (NaN where it breaks ``rule``: not a finite number, or not ``ok``)."""
    raw = df[col]
    if raw.dtype == object or pd.api.types.is_string_dtype(raw):
        raw = pd.Series(_texts(raw).replace("", "nan"), index=df.index)
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    if ok is not None:
        bad |= ~ok(np.nan_to_num(values, nan=-1.0))
    problems.rows(path, bad, col, df[col], rule)
    return np.where(bad, np.nan, values)


def _canonical(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    # sorted by the keys, then by every other column (a total order for the many-record
    # datasets; the one-record-per-key datasets sort exactly as by their keys)
    out = pd.DataFrame({c: _texts(df[c]) for c in df.columns}, index=df.index)
    order = list(keys) + [c for c in sorted(out.columns) if c not in keys]
    return out.sort_values(order, kind="stable").reset_index(drop=True)[sorted(out.columns)]


CANONICAL_KEYS = {
    "adsl": ("USUBJID",),
    "adtte": ("USUBJID", "PARAMCD"),
    "adrs": ("USUBJID", "PARAMCD"),
    "adlb": ("USUBJID", "PARAMCD", "ADY"),
    "adex": ("USUBJID", "EXTRT", "ASTDY"),
}


def _hash_rows(df: pd.DataFrame) -> Any:
    """``C1=v1<US>C2=v2...`` per row of a canonical table (a pyarrow string array)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    parts: list[Any] = []
    for k, c in enumerate(df.columns):
        col = pa.array(df[c].array).cast(pa.large_string())
        parts += [pa.scalar(f"{chr(0x1F) if k else ''}{c}=", pa.large_string()), col]
    return pc.binary_join_element_wise(*parts, pa.scalar("", pa.large_string()))


_HASH_BLOCK = 65536  # rows hashed per block (bounds the memory of the text)


def _content_hashes(
    canon: dict[str, pd.DataFrame], subjects: Collection[str]
) -> tuple[str, dict[str, str]]:
    """The SHA-256 of the canonical tables, and per subject of his rows: each table's header
    line ``[name]C1,C2,...`` then its rows, one per line (per subject: ``[name]`` and the row).
    SHA-256 is a stream: updating with a block of lines is updating with each line in turn."""
    h = hashlib.sha256()
    per_subject: dict[str, Any] = {s: hashlib.sha256() for s in sorted(subjects)}
    for name, df in canon.items():
        h.update(f"[{name}]{','.join(df.columns)}\n".encode())
        lines = _hash_rows(df)
        head, sep = f"[{name}]", f"\n[{name}]"
        for a in range(0, len(df), _HASH_BLOCK):
            block = lines.slice(a, _HASH_BLOCK).to_pylist()
            h.update(("\n".join(block) + "\n").encode())
            # canonical order is by USUBJID first: each subject's rows are contiguous
            sids = df["USUBJID"].iloc[a : a + _HASH_BLOCK].to_numpy(dtype=object)
            starts = np.flatnonzero(np.r_[True, sids[1:] != sids[:-1]])
            ends = np.r_[starts[1:], len(sids)]
            for i, j in zip(starts.tolist(), ends.tolist(), strict=True):
                per_subject[sids[i]].update((head + sep.join(block[i:j]) + "\n").encode())
    return h.hexdigest(), {s: d.hexdigest() for s, d in per_subject.items()}


def _check_adlb(df: pd.DataFrame, path: Path, problems: _Problems) -> pd.DataFrame:
    """Validate ADLB (subjects in ADSL already checked); numbers converted in place."""
    unknown = ~df["PARAMCD"].isin(LAB_UNITS)
    problems.rows(
        path, unknown, "PARAMCD", df["PARAMCD"],
        f"PARAMCD must be a parameter with a known unit, one of {sorted(LAB_UNITS)}",
    )  # fmt: skip
    df["AVAL"] = _numbers(df, "AVAL", path, problems, "AVAL must be a finite value >= 0",
                          lambda v: v >= 0)  # fmt: skip
    df["AVALU"] = _texts(df["AVALU"])
    want = df["PARAMCD"].map(LAB_UNITS)
    wrong = (df["AVALU"].str.lower() != want.str.lower()) & ~unknown
    codes = df["PARAMCD"].to_numpy()
    problems.rows(
        path, wrong, "AVALU", df["AVALU"],
        lambda i: f"AVALU must be {LAB_UNITS[codes[i]]} for PARAMCD {codes[i]} (values are not "
        "converted)",
    )  # fmt: skip
    raw = df["ADY"].copy()  # errors show the value as the file has it
    df["ADY"] = _numbers(df, "ADY", path, problems, "ADY must be a finite study day")
    group = df.groupby(["USUBJID", "PARAMCD"], sort=False)
    prev_day = group["ADY"].shift(1)
    back = (df["ADY"] < prev_day).to_numpy()
    prev_row = (
        pd.Series(np.arange(len(df)), index=df.index)
        .groupby([df["USUBJID"], df["PARAMCD"]], sort=False)
        .shift(1)
    )
    sid, day, prev = df["USUBJID"].to_numpy(), df["ADY"].to_numpy(), prev_row.to_numpy()
    problems.rows(
        path, back, "ADY", raw,
        lambda i: f"ADY must not decrease within a subject and PARAMCD in file order (row "
        f"{int(prev[i]) + 1} of {sid[i]} {codes[i]} has ADY {day[int(prev[i])]:g}; equal days "
        "are allowed)",
    )  # fmt: skip
    dup = df.duplicated(["USUBJID", "PARAMCD", "ADY", "AVAL"]) & df["ADY"].notna()
    problems.rows(
        path, dup, "ADY", raw,
        "duplicate record (same USUBJID, PARAMCD, ADY and AVAL as an earlier row)",
    )  # fmt: skip
    return df


def _check_adex(df: pd.DataFrame, path: Path, problems: _Problems) -> pd.DataFrame:
    """Validate ADEX (subjects in ADSL already checked); numbers converted in place."""
    df["EXTRT"] = _texts(df["EXTRT"])
    problems.rows(path, df["EXTRT"] == "", "EXTRT", df["EXTRT"], "EXTRT must name the treatment")
    rule = "must be a finite study day"
    raw = df[["ASTDY", "AENDY"]].copy()  # errors show the values as the file has them
    df["ASTDY"] = _numbers(df, "ASTDY", path, problems, f"ASTDY {rule}")
    df["AENDY"] = _numbers(df, "AENDY", path, problems, f"AENDY {rule}")
    start = df["ASTDY"].to_numpy()
    problems.rows(
        path, df["AENDY"] < df["ASTDY"], "AENDY", raw["AENDY"],
        lambda i: f"AENDY must be >= ASTDY ({start[i]:g}): an interval ends after it starts",
    )  # fmt: skip
    if "EXDOSE" in df.columns:
        df["EXDOSE"] = _numbers(
            df, "EXDOSE", path, problems, "EXDOSE must be a finite dose >= 0 (0: off treatment)",
            lambda v: v >= 0,
        )  # fmt: skip
    # each subject's intervals of a treatment by start (then end, then row): one overlaps
    # when it starts before the latest end among those before it (intervals with a bad day
    # are left out: they are refused already)
    ok = np.isfinite(start) & np.isfinite(df["AENDY"].to_numpy())
    order = df.assign(_row=np.arange(len(df)))[ok].sort_values(
        ["USUBJID", "EXTRT", "ASTDY", "AENDY", "_row"], kind="stable"
    )
    key = order["USUBJID"] + "\x1f" + order["EXTRT"]
    latest = order["AENDY"].groupby(key, sort=False).cummax().groupby(key, sort=False).shift(1)
    overlap = (order["ASTDY"] < latest).to_numpy()
    # the row holding the latest end before each interval (the first to reach it; for the
    # message)
    new_max = latest.isna() | (order["AENDY"] > latest)
    holder = order["_row"].where(new_max).groupby(key, sort=False).ffill()
    holder = holder.groupby(key, sort=False).shift(1)
    mask = np.zeros(len(df), dtype=bool)
    mask[order["_row"].to_numpy()[overlap]] = True
    end_of = dict(zip(order["_row"].to_numpy()[overlap], latest.to_numpy()[overlap], strict=True))
    row_of = dict(zip(order["_row"].to_numpy()[overlap], holder.to_numpy()[overlap], strict=True))
    sid, trt = df["USUBJID"].to_numpy(), df["EXTRT"].to_numpy()
    problems.rows(
        path, mask, "ASTDY", raw["ASTDY"],
        lambda i: f"exposure intervals of a subject and EXTRT must not overlap (this interval "
        f"starts before the end, AENDY {end_of[i]:g}, of row {int(row_of[i]) + 1} of {sid[i]} "
        f"{trt[i]}; intervals may touch)",
    )  # fmt: skip
    return df


def write_dataset(src: Path, dest: Path, drop: Collection[str]) -> None:
    """Write the dataset file ``src`` to ``dest`` in its own format without the columns
    ``drop`` (names compared case-insensitively); values are written as read, so the copy
    loads to the same content as ``src`` without those columns."""
    upper = {c.upper() for c in drop}
    suffix = src.suffix.lower()
    if suffix == ".csv":
        df = pd.read_csv(src, dtype=str, keep_default_na=False)
        df.drop(columns=[c for c in df.columns if str(c).upper() in upper]).to_csv(
            dest, index=False
        )
    elif suffix == ".parquet":
        df = pd.read_parquet(src)
        df.drop(columns=[c for c in df.columns if str(c).upper() in upper]).to_parquet(
            dest, index=False
        )
    else:
        import pyreadstat

        df, meta = pyreadstat.read_xport(str(src))
        df = df.drop(columns=[c for c in df.columns if str(c).upper() in upper])
        pyreadstat.write_xport(df, str(dest), table_name=meta.table_name or src.stem.upper())


def load_cut(
    cut_dir: Path | str,
    *,
    cut_id: str | None = None,
    require: Collection[str] = (),
    extra_allowed: Collection[str] = (),
    drop_unknown: bool = False,
    allow_list: bool = True,
) -> Cut:
    """Read and validate one data cut folder (see the module docstring for the rules).

    Parameters
    ----------
    cut_dir : Path
        Folder with ``adsl.*``, ``adtte.*`` (or ``adlb.*``) and optionally ``adrs.*``,
        ``adlb.*``, ``adex.*`` (csv, parquet or xpt).
    cut_id : str, optional
        Name of the cut; default the folder name.
    require : Collection[str]
        Datasets the caller needs besides ADSL and ADTTE-or-ADLB (``("adrs",)`` for a response
        endpoint, ``("adlb", "adex")`` for twins); a missing one is a problem like the others.
    extra_allowed : Collection[str]
        Column names allowed besides the ADaM allow-list (the protocol's covariates).
    drop_unknown : bool
        Drop columns the allow-list does not name instead of refusing them; the Cut lists them
        in ``dropped``.
    allow_list : bool
        Apply the allow-list (default). False for a cut already in an archive, accepted under
        the policy of its day; its identifier and value screens still run.

    Returns
    -------
    Cut

    Raises
    ------
    DataCutError
        Listing every rule broken, each naming file, row, column, value and rule. Nothing is
        written: a refused cut leaves no trace.
    """
    cut_dir = Path(cut_dir)
    if not cut_dir.is_dir():
        raise DataCutError(
            cut_dir, None, None, str(cut_dir), "must be a folder holding adsl and adtte files"
        )
    try:
        listing = sorted(cut_dir.iterdir())
    except OSError as exc:
        raise DataCutError(
            cut_dir, None, None, str(cut_dir), f"cannot be listed: {exc.strerror or exc}"
        ) from None
    problems = _Problems()
    extra = frozenset(str(c).upper() for c in extra_allowed)
    files: dict[str, Path] = {}
    tables: dict[str, pd.DataFrame] = {}
    complete: set[str] = set()  # datasets with every required column and at least the rows
    dropped: list[tuple[str, str]] = []
    found = {name: _find(cut_dir, name, listing, problems) for name in DATASETS}
    needed = set(require)
    for name in DATASETS:
        path = found[name]
        if path is None:
            if any(p.stem.lower() == name and p.suffix.lower() in SUFFIXES for p in listing):
                continue  # a link or several files: refused above
            if name in needed or not (
                name in OPTIONAL or (name == "adtte" and found["adlb"] is not None)
            ):
                why = (
                    "; a cut without adtte needs adlb (longitudinal data)"
                    if name == "adtte" else ""
                ) + ("; this protocol's update reads it" if name in needed else "")  # fmt: skip
                problems.add(
                    cut_dir, None, None, [p.name for p in listing],
                    f"missing {name} dataset ({name}.csv, {name}.parquet or {name}.xpt){why}",
                )  # fmt: skip
            continue
        try:
            df = _read(path)
        except DataCutError as exc:
            problems.items.extend(exc.problems)
            continue
        df, gone = _screen_columns(
            df, name, path, problems, extra_allowed=extra, allow_list=allow_list,
            drop_unknown=drop_unknown,
        )  # fmt: skip
        dropped += [(path.name, c) for c in gone]
        files[name], tables[name] = path, df
        if not _missing_columns(df, name, path, problems):
            continue
        if df.empty and name not in ("adrs", "adex"):
            problems.add(path, None, None, 0, f"{name} has no rows (no subjects or records)")
            continue
        complete.add(name)

    adsl = known = None
    if "adsl" in complete:
        p = files["adsl"]
        adsl = tables["adsl"].copy()
        adsl["USUBJID"] = _ids(adsl, p, problems)
        dup = adsl["USUBJID"].duplicated() & (adsl["USUBJID"] != "")
        problems.rows(p, dup, "USUBJID", adsl["USUBJID"],
                      "duplicate subject in ADSL (one row per subject)")  # fmt: skip
        adsl["ARM"] = _texts(adsl["ARM"])
        known = set(adsl["USUBJID"])

    def _children(name: str) -> pd.DataFrame | None:
        if name not in complete:
            return None
        df, path = tables[name].copy().reset_index(drop=True), files[name]
        df["USUBJID"] = _ids(df, path, problems)
        if "PARAMCD" in REQUIRED[name]:
            df["PARAMCD"] = _texts(df["PARAMCD"])
        if adsl is not None:
            missing = ~_isin(df["USUBJID"], adsl["USUBJID"]) & (df["USUBJID"] != "")
            problems.rows(path, missing, "USUBJID", df["USUBJID"],
                          f"subject not in ADSL ({files['adsl'].name})")  # fmt: skip
        if name in LONGITUDINAL:
            return df
        dup = df.duplicated(["USUBJID", "PARAMCD"])
        problems.rows(path, dup, "USUBJID", df["USUBJID"],
                      "duplicate (USUBJID, PARAMCD): one record per subject and parameter")  # fmt: skip
        return df

    adtte = _children("adtte")
    if adtte is not None:
        pt = files["adtte"]
        adtte["AVAL"] = _numbers(
            adtte, "AVAL", pt, problems, "AVAL must be a finite time in days >= 0",
            lambda v: v >= 0,
        )  # fmt: skip
        cnsr = _numbers(adtte, "CNSR", pt, problems, "CNSR must be 0 (event) or 1 (censored)",
                        lambda v: np.isin(v, (0.0, 1.0)))  # fmt: skip
        adtte["CNSR"] = np.nan_to_num(cnsr, nan=-1).astype(int)
    adrs = _children("adrs")
    if adrs is not None:
        pr = files["adrs"]
        if "AVALC" in adrs.columns:
            adrs["AVALC"] = _texts(adrs["AVALC"]).str.upper()
            bad = ~adrs["AVALC"].isin(RESPONSE_CODES)
            if "AVAL" in adrs.columns:
                bad &= adrs["AVALC"] != ""
            problems.rows(pr, bad, "AVALC", adrs["AVALC"],
                          f"AVALC must be one of {sorted(RESPONSE_CODES)}")  # fmt: skip
        else:
            adrs["AVAL"] = _numbers(adrs, "AVAL", pr, problems, "AVAL must be 1 (responder) or 0",
                                    lambda v: np.isin(v, (0.0, 1.0)))  # fmt: skip
    adlb = _children("adlb")
    if adlb is not None:
        adlb = _check_adlb(adlb, files["adlb"], problems)
    adex = _children("adex")
    if adex is not None:
        adex = _check_adex(adex, files["adex"], problems)
    if problems:
        raise DataCutError.of(problems.items)
    assert adsl is not None and known is not None

    datasets = {"adsl": adsl, "adtte": adtte, "adrs": adrs, "adlb": adlb, "adex": adex}
    canon = {
        name: _canonical(df, CANONICAL_KEYS[name])
        for name, df in datasets.items()
        if df is not None
    }
    content_hash, subject_hashes = _content_hashes(canon, known)
    return Cut(
        cut_id=cut_id or cut_dir.name,
        path=cut_dir,
        adsl=adsl,
        adtte=adtte,
        adrs=adrs,
        files=files,
        content_hash=content_hash,
        subject_hashes=subject_hashes,
        adlb=adlb,
        adex=adex,
        dropped=tuple(dropped),
    )


@dataclass(frozen=True)
class AppendOnlyIssue:
    """A subject re-sent in ``new_cut`` with content different from ``previous_cut``.

    ``detail`` names the first earlier ADLB/ADEX record that the new cut changed or dropped
    (empty for the one-record-per-subject datasets).
    """

    usubjid: str
    previous_cut: str
    new_cut: str
    datasets: tuple[str, ...]
    detail: str = ""

    def __str__(self) -> str:
        return (
            f"subject {self.usubjid}: content in cut {self.new_cut!r} differs from cut "
            f"{self.previous_cut!r} ({', '.join(self.datasets)}); cuts are append-only"
            + (f"; {self.detail}" if self.detail else "")
        )


_Rows = tuple[tuple[str, ...], list[tuple[str, ...]]]  # (columns, canonical rows as text)


def _subject_tables(cut: Cut) -> dict[str, dict[str, _Rows]]:
    """Per subject, per dataset of the cut: the subject's canonical rows (maybe none)."""
    out: dict[str, dict[str, _Rows]] = {s: {} for s in cut.subject_hashes}
    for name in DATASETS:
        df = getattr(cut, name)
        if df is None:
            continue
        canon = _canonical(df, CANONICAL_KEYS[name])
        columns = tuple(canon.columns)
        groups: dict[str, list[tuple[str, ...]]] = {}
        for row in zip(*(canon[c].tolist() for c in columns), strict=True):
            groups.setdefault(row[columns.index("USUBJID")], []).append(row)
        for sid, tables in out.items():
            tables[name] = (columns, groups.get(sid, []))
    return out


def _lost_records(name: str, prev: _Rows | None, new: _Rows | None) -> list[str]:
    """Earlier records (canonical text) of one subject that ``new`` changed or dropped.

    ADEX: the subject's last interval of a treatment in the earlier cut (the one ongoing at
    that cut) may come back with a later ``AENDY`` and nothing else changed.
    """
    if prev is None or not prev[1]:
        return []
    columns, rows = prev
    same_columns = new is not None and new[0] == columns
    new_rows = new[1] if same_columns else []
    have = Counter(new_rows)
    lost = []
    for row in rows:
        if have[row] > 0:
            have[row] -= 1
            continue
        if name == "adex" and same_columns:
            start, end = columns.index("ASTDY"), columns.index("AENDY")
            trt = columns.index("EXTRT")
            last = float(row[start]) == max(float(r[start]) for r in rows if r[trt] == row[trt])
            grown = any(
                r[:end] == row[:end]
                and r[end + 1 :] == row[end + 1 :]
                and float(r[end]) >= float(row[end])
                for r in new_rows
            )
            if last and grown:
                continue
        rec = dict(zip(columns, row, strict=True))
        lost.append(", ".join(f"{c}={v}" for c, v in rec.items() if c != "USUBJID"))
    return lost


def check_append_only(previous_cuts: Sequence[Cut], new: Cut) -> list[AppendOnlyIssue]:
    """Flag subjects that ``new`` re-sends with content different from an earlier cut.

    Cuts are append-only: a subject sent once must come back with the same ADSL, ADTTE and
    ADRS content (in canonical form: row order and file format do not matter), and with every
    earlier ADLB and ADEX record unchanged; a later cut may add records. The one change
    allowed is an ongoing exposure interval growing: a subject's last ADEX interval of a
    treatment in the earlier cut may come back with a later ``AENDY``.

    Parameters
    ----------
    previous_cuts : Sequence[Cut]
        The cuts received before.
    new : Cut
        The cut received now.

    Returns
    -------
    list[AppendOnlyIssue]
        One per (subject, earlier cut) that differs, naming the datasets that differ; an
        empty list means the new cut only appends. A cut with the same ``content_hash`` as an
        earlier one is an identical re-send and yields no issues.
    """
    issues: list[AppendOnlyIssue] = []
    new_tables: dict[str, dict[str, _Rows]] | None = None
    for prev in previous_cuts:
        if prev.content_hash == new.content_hash:
            continue
        prev_tables: dict[str, dict[str, _Rows]] | None = None
        for sid in sorted(set(prev.subject_hashes) & set(new.subject_hashes)):
            if prev.subject_hashes[sid] == new.subject_hashes[sid]:
                continue
            prev_tables = prev_tables or _subject_tables(prev)
            new_tables = new_tables or _subject_tables(new)
            a, b = prev_tables[sid], new_tables[sid]
            differ, detail = [], ""
            for n in DATASETS:
                if n in LONGITUDINAL:
                    lost = _lost_records(n, a.get(n), b.get(n))
                    if lost:
                        differ.append(n)
                        detail = detail or (
                            f"{n} record of the earlier cut changed or missing: {lost[0]}"
                        )
                elif (n in a) != (n in b) or (n in a and a[n] != b[n]):
                    differ.append(n)
            if differ:
                issues.append(AppendOnlyIssue(sid, prev.cut_id, new.cut_id, tuple(differ), detail))
    return issues


def endpoint_frame(
    cut: Cut,
    *,
    endpoint: str,
    paramcd: str | None = None,
    control_arm: str | None = None,
    covariates: Sequence[str] = (),
) -> pd.DataFrame:
    """One row per subject in :func:`~insilico_trials.infer.outcomes.fit_outcome` columns.

    ``tte``: ADTTE records with ``PARAMCD == paramcd`` (default ``PFS``): ``time = AVAL``
    (days), ``event = 1 - CNSR``. ``binary``: ADRS records with ``PARAMCD == paramcd`` (default
    ``BOR``): ``response = 1`` if AVALC is CR or PR (or AVAL == 1). Columns ``usubjid``, ``arm``
    (ADSL ARM) and the requested ADSL ``covariates`` (numeric) are added; ``control_arm``
    keeps only that arm. ``attrs["cut_id"]`` names the cut. Longitudinal data: see
    :func:`longitudinal_frame`.
    """
    adsl = _adsl_part(cut, covariates)
    if endpoint == "tte":
        if cut.adtte is None:
            raise DataCutError(
                cut.path, None, None, sorted(cut.files), "tte endpoint needs an adtte dataset"
            )
        code = paramcd or "PFS"
        rec = cut.adtte[cut.adtte["PARAMCD"] == code]
        out = pd.DataFrame(
            {
                "usubjid": rec["USUBJID"],
                "time": rec["AVAL"].astype(float),
                "event": 1 - rec["CNSR"].astype(int),
            }
        )
    elif endpoint == "binary":
        if cut.adrs is None:
            raise DataCutError(
                cut.path, None, None, sorted(cut.files), "binary endpoint needs an adrs dataset"
            )
        code = paramcd or "BOR"
        rec = cut.adrs[cut.adrs["PARAMCD"] == code]
        if "AVALC" in rec.columns:
            resp = rec["AVALC"].isin(RESPONDER_CODES).astype(int)
        else:
            resp = rec["AVAL"].astype(int)
        out = pd.DataFrame({"usubjid": rec["USUBJID"], "response": resp})
    else:
        raise ValueError(f"endpoint: must be tte or binary for ADaM cuts, got {endpoint!r}")
    if out.empty:
        raise DataCutError(cut.path, None, "PARAMCD", code, "no records with this PARAMCD")
    out = out.merge(adsl, on="usubjid", how="left")
    if control_arm is not None:
        out = out[out["arm"] == control_arm]
    out = out.reset_index(drop=True)
    out.attrs["cut_id"] = cut.cut_id
    return out


def _adsl_part(cut: Cut, covariates: Sequence[str]) -> pd.DataFrame:
    adsl = cut.adsl[["USUBJID", "ARM", *covariates]].rename(
        columns={"USUBJID": "usubjid", "ARM": "arm"}
    )
    for c in covariates:
        adsl[c] = pd.to_numeric(adsl[c], errors="raise")
    return adsl


def _subject_order(cut: Cut, df: pd.DataFrame, day: str) -> pd.DataFrame:
    rank = {s: i for i, s in enumerate(cut.adsl["USUBJID"])}
    out = df.assign(_rank=df["usubjid"].map(rank), _row=np.arange(len(df)))
    out = out.sort_values(["_rank", day, "_row"], kind="stable")
    return out.drop(columns=["_rank", "_row"]).reset_index(drop=True)


def longitudinal_frame(
    cut: Cut,
    paramcd: str = "PSA",
    *,
    arm: str | None = None,
    covariates: Sequence[str] = (),
) -> pd.DataFrame:
    """A cut's ADLB records of one parameter as a tidy frame, one row per record.

    Parameters
    ----------
    cut : Cut
        A cut with an ``adlb`` dataset.
    paramcd : str
        The ADLB ``PARAMCD`` (default ``PSA``).
    arm : str, optional
        Keep only subjects whose ADSL ``ARM`` is this.
    covariates : Sequence[str]
        ADSL columns to add (converted to numbers).

    Returns
    -------
    pandas.DataFrame
        Columns ``usubjid``, ``arm``, ``day`` (ADY, float), ``value`` (AVAL, float, in
        ``attrs["unit"]``) and the covariates; rows by ADSL subject order, then day (file
        order within a day). ``attrs``: ``cut_id``, ``paramcd``, ``unit``.

    Raises
    ------
    DataCutError
        If the cut has no ADLB or no record with this PARAMCD (in the arm).
    """
    if cut.adlb is None:
        raise DataCutError(
            cut.path, None, None, sorted(cut.files), "longitudinal data need an adlb dataset"
        )
    rec = cut.adlb[cut.adlb["PARAMCD"] == paramcd]
    out = pd.DataFrame(
        {
            "usubjid": rec["USUBJID"].to_numpy(),
            "day": rec["ADY"].to_numpy(dtype=float),
            "value": rec["AVAL"].to_numpy(dtype=float),
        }
    ).merge(_adsl_part(cut, covariates), on="usubjid", how="left")
    if arm is not None:
        out = out[out["arm"] == arm]
    if out.empty:
        raise DataCutError(
            cut.files["adlb"], None, "PARAMCD", paramcd,
            "no ADLB records with this PARAMCD" + (f" in arm {arm!r}" if arm else ""),
        )  # fmt: skip
    out = _subject_order(cut, out[["usubjid", "arm", "day", "value", *covariates]], "day")
    out.attrs.update(cut_id=cut.cut_id, paramcd=paramcd, unit=LAB_UNITS.get(paramcd, ""))
    return out


def exposure_intervals(
    cut: Cut, treatment: str | None = None, *, arm: str | None = None
) -> pd.DataFrame:
    """A cut's ADEX exposure intervals, one row per interval.

    Parameters
    ----------
    cut : Cut
        A cut with an ``adex`` dataset.
    treatment : str, optional
        Keep only this ``EXTRT`` (e.g. ``ABIRATERONE``).
    arm : str, optional
        Keep only subjects whose ADSL ``ARM`` is this.

    Returns
    -------
    pandas.DataFrame
        Columns ``usubjid``, ``arm``, ``treatment``, ``start_day`` (ASTDY), ``end_day``
        (AENDY), ``dose`` (EXDOSE, NaN when the cut has none), ``dose_unit`` (EXDOSU, "" when
        none) and ``on`` (True when the dose is > 0 or not given: an interval off treatment
        has EXDOSE 0); rows by ADSL subject order, then start day. Intervals of a subject and
        treatment do not overlap (:func:`load_cut` checked it). ``attrs["cut_id"]`` names the
        cut. May be empty (no exposure yet).

    Raises
    ------
    DataCutError
        If the cut has no ADEX.
    """
    if cut.adex is None:
        raise DataCutError(
            cut.path, None, None, sorted(cut.files), "exposure intervals need an adex dataset"
        )
    ex = cut.adex
    dose = (
        ex["EXDOSE"].to_numpy(dtype=float) if "EXDOSE" in ex.columns else np.full(len(ex), np.nan)
    )
    out = pd.DataFrame(
        {
            "usubjid": ex["USUBJID"].to_numpy(),
            "treatment": ex["EXTRT"].to_numpy(),
            "start_day": ex["ASTDY"].to_numpy(dtype=float),
            "end_day": ex["AENDY"].to_numpy(dtype=float),
            "dose": dose,
            "dose_unit": ex["EXDOSU"].map(_text).to_numpy()
            if "EXDOSU" in ex.columns
            else np.full(len(ex), ""),
            "on": ~(dose <= 0),
        }
    ).merge(_adsl_part(cut, ()), on="usubjid", how="left")
    if treatment is not None:
        out = out[out["treatment"] == treatment]
    if arm is not None:
        out = out[out["arm"] == arm]
    cols = ["usubjid", "arm", "treatment", "start_day", "end_day", "dose", "dose_unit", "on"]
    out = _subject_order(cut, out[cols], "start_day")
    out.attrs["cut_id"] = cut.cut_id
    return out
