"""Ingestion and validation of real trial data cuts in CDISC ADaM shapes.

A cut is a folder holding an ``adsl`` dataset, an outcome dataset (``adtte``, or ``adlb`` for
longitudinal data) and optionally ``adrs``, ``adlb`` and ``adex``, each as CSV
(``adsl.csv``), Parquet (``adsl.parquet``) or SAS transport (``adsl.xpt``); file names are
matched case-insensitively. ``adtte`` is required only when the cut has no ``adlb``. Required
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

Rules enforced (each failure raises :class:`DataCutError` naming the file, the row (0-based
data row), the column, the value and the rule): required columns present; types; no duplicate
subjects in ADSL and no duplicate (USUBJID, PARAMCD) in ADTTE/ADRS; every ADTTE/ADRS/ADLB/ADEX
subject in ADSL; AVAL >= 0 and finite; CNSR in {0, 1}; in ADLB, ADY must not decrease within a
subject and PARAMCD in file order (equal days are allowed: repeat measurements on one day), and
an identical record (same USUBJID, PARAMCD, ADY and AVAL) may not appear twice; in ADEX, the
intervals of one subject and EXTRT must not overlap (they may touch: one's AENDY may be the
next one's ASTDY); no direct identifiers: columns named like names,
initials, dates of birth, addresses, phone, e-mail, social security/medical record numbers, or
free-text comments, and no column whose values look like full dates of birth, e-mail addresses
or phone numbers, or free text (a string column with values longer than 40 characters or of
more than 4 words).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from insilico_trials.errors import InputError

__all__ = [
    "AppendOnlyIssue",
    "Cut",
    "DataCutError",
    "check_append_only",
    "endpoint_frame",
    "exposure_intervals",
    "load_cut",
    "longitudinal_frame",
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
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}")
_PHONE = re.compile(r"^\+?[\d\s().-]{9,}$")
_FULL_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}|^\d{1,2}[/.]\d{1,2}[/.]\d{4}$|^\d{2}[A-Z]{3}\d{4}$")
_MAX_CODE_LEN = 40
_MAX_CODE_WORDS = 4


class DataCutError(InputError):
    """A data cut breaks a rule. Carries ``file``, ``row``, ``column``, ``value`` and ``rule``."""

    def __init__(
        self, file: Path | str, row: int | None, column: str | None, value: object, rule: str
    ):
        where = (
            f"{file}"
            + (f", row {row}" if row is not None else "")
            + (f", column {column}" if column else "")
        )
        # the base sets rule, actual and where; set them through it (not before it)
        super().__init__(f"{where}: {rule}; got {value!r}", rule=rule, actual=value, where=where)
        self.file, self.row, self.column, self.value = str(file), row, column, value


@dataclass(frozen=True)
class Cut:
    """A validated data cut.

    ``adsl``, ``adtte``, ``adrs``, ``adlb``, ``adex`` are DataFrames with upper-case ADaM
    column names (None when absent; ``adtte`` is absent only in a cut with ``adlb``); numeric
    columns that were validated (AVAL, CNSR, ADY, ASTDY, AENDY, EXDOSE) hold numbers, ADLB
    and ADEX keep file order; ``files`` maps dataset name to its path; ``content_hash`` is the
    SHA-256 of the canonical content (tables sorted by key, values as text), independent of
    file format and row order (a cut without ADLB/ADEX hashes as before they existed);
    ``subject_hashes`` the same per subject.
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

    @property
    def subjects(self) -> list[str]:
        return list(self.adsl["USUBJID"])


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


def _find(cut_dir: Path, name: str) -> Path | None:
    hits = [p for p in cut_dir.iterdir() if p.stem.lower() == name and p.suffix.lower() in SUFFIXES]
    for p in hits:
        if p.is_symlink() or not p.is_file():
            raise DataCutError(
                p, None, None, p.name,
                "must be a regular file in the cut folder (links and other kinds are refused: "
                "a cut carries its own data only)",
            )  # fmt: skip
    if len(hits) > 1:
        raise DataCutError(
            cut_dir,
            None,
            None,
            sorted(p.name for p in hits),
            f"more than one {name} file; keep one",
        )
    return hits[0] if hits else None


def _text(v: object) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def _check_identifiers(df: pd.DataFrame, path: Path) -> None:
    for col in df.columns:
        if _IDENTIFIER_NAME.match(col) or _IDENTIFIER_WORD.search(col):
            first = _text(df[col].iloc[0]) if len(df) else None
            raise DataCutError(
                path,
                0 if len(df) else None,
                col,
                first,
                "direct identifier column not allowed (names, dates of birth, "
                "addresses, contact details, free text); remove it before sending",
            )
        if col in ("USUBJID", "SUBJID", "STUDYID", "PARAMCD", "PARAM", "ARM", "ARMCD", "AVALC"):
            continue
        if pd.api.types.is_numeric_dtype(df[col]):
            continue
        # CSV is read as text: plain numbers (times, ages) are data, not phone numbers
        numeric = pd.to_numeric(df[col], errors="coerce").notna().to_numpy()
        for i, raw in enumerate(df[col]):
            v = _text(raw)
            if not v or numeric[i]:
                continue
            if _EMAIL.search(v):
                rule = "looks like an e-mail address (direct identifier)"
            elif _PHONE.match(v) and sum(ch.isdigit() for ch in v) >= 9:
                rule = "looks like a phone number (direct identifier)"
            elif _FULL_DATE.match(v.upper()):
                rule = "full calendar date not allowed (possible date of birth); send study days instead"
            elif len(v) > _MAX_CODE_LEN or len(v.split()) > _MAX_CODE_WORDS:
                rule = (
                    f"free text not allowed (string values must be codes of <= {_MAX_CODE_LEN} "
                    f"characters and <= {_MAX_CODE_WORDS} words)"
                )
            else:
                continue
            raise DataCutError(path, i, col, v, rule)


def _require(df: pd.DataFrame, name: str, path: Path) -> None:
    missing = [c for c in REQUIRED[name] if c not in df.columns]
    if missing:
        raise DataCutError(
            path,
            None,
            missing[0],
            list(df.columns),
            f"{name.upper()} needs columns {list(REQUIRED[name])}",
        )
    if name == "adrs" and "AVALC" not in df.columns and "AVAL" not in df.columns:
        raise DataCutError(path, None, "AVALC", list(df.columns), "ADRS needs AVALC or AVAL")


def _ids(df: pd.DataFrame, path: Path) -> pd.Series:
    ids = df["USUBJID"].map(_text)
    empty = ids == ""
    if empty.any():
        i = int(np.flatnonzero(empty.to_numpy())[0])
        raise DataCutError(
            path, i, "USUBJID", df["USUBJID"].iloc[i], "must be a non-empty subject id"
        )
    return ids


def _numbers(df: pd.DataFrame, col: str, path: Path, rule: str, ok) -> np.ndarray:
    values = pd.to_numeric(
        df[col].map(lambda v: v if not isinstance(v, str) else (v.strip() or "nan")),
        errors="coerce",
    ).to_numpy(dtype=float)
    bad = ~np.isfinite(values) | ~ok(np.nan_to_num(values, nan=-1.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataCutError(path, i, col, df[col].iloc[i], rule)
    return values


def _canonical(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    # sorted by the keys, then by every other column (a total order for the many-record
    # datasets; the one-record-per-key datasets sort exactly as by their keys)
    out = df.copy()
    for c in out.columns:
        out[c] = out[c].map(_text)
    order = list(keys) + [c for c in sorted(out.columns) if c not in keys]
    return out.sort_values(order, kind="stable").reset_index(drop=True)[sorted(out.columns)]


CANONICAL_KEYS = {
    "adsl": ("USUBJID",),
    "adtte": ("USUBJID", "PARAMCD"),
    "adrs": ("USUBJID", "PARAMCD"),
    "adlb": ("USUBJID", "PARAMCD", "ADY"),
    "adex": ("USUBJID", "EXTRT", "ASTDY"),
}


def _hash_rows(df: pd.DataFrame) -> list[str]:
    return [
        "\x1f".join(f"{c}={v}" for c, v in zip(df.columns, row, strict=True))
        for row in df.itertuples(index=False)
    ]


def _first(mask: np.ndarray | pd.Series) -> int | None:
    hits = np.flatnonzero(np.asarray(mask, dtype=bool))
    return int(hits[0]) if hits.size else None


def _check_adlb(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Validate ADLB (subjects in ADSL already checked); numbers converted in place."""
    unknown = ~df["PARAMCD"].isin(LAB_UNITS)
    if (i := _first(unknown)) is not None:
        raise DataCutError(
            path, i, "PARAMCD", df["PARAMCD"].iloc[i],
            f"PARAMCD must be a parameter with a known unit, one of {sorted(LAB_UNITS)}",
        )  # fmt: skip
    df["AVAL"] = _numbers(df, "AVAL", path, "AVAL must be a finite value >= 0", lambda v: v >= 0)
    df["AVALU"] = df["AVALU"].map(_text)
    want = df["PARAMCD"].map(LAB_UNITS)
    wrong = df["AVALU"].str.lower() != want.str.lower()
    if (i := _first(wrong)) is not None:
        code = df["PARAMCD"].iloc[i]
        raise DataCutError(
            path, i, "AVALU", df["AVALU"].iloc[i],
            f"AVALU must be {LAB_UNITS[code]} for PARAMCD {code} (values are not converted)",
        )  # fmt: skip
    raw = df["ADY"].copy()  # errors show the value as the file has it
    df["ADY"] = _numbers(df, "ADY", path, "ADY must be a finite study day", lambda v: v == v)
    prev_day = df.groupby(["USUBJID", "PARAMCD"], sort=False)["ADY"].shift(1)
    back = (df["ADY"] < prev_day).to_numpy()
    if (i := _first(back)) is not None:
        sid, code = df["USUBJID"].iloc[i], df["PARAMCD"].iloc[i]
        same = (df["USUBJID"] == sid) & (df["PARAMCD"] == code)
        j = int(np.flatnonzero(same.to_numpy()[:i])[-1])
        raise DataCutError(
            path, i, "ADY", raw.iloc[i],
            f"ADY must not decrease within a subject and PARAMCD in file order (row {j} of "
            f"{sid} {code} has ADY {df['ADY'].iloc[j]:g}; equal days are allowed)",
        )  # fmt: skip
    dup = df.duplicated(["USUBJID", "PARAMCD", "ADY", "AVAL"])
    if (i := _first(dup)) is not None:
        raise DataCutError(
            path, i, "ADY", raw.iloc[i],
            "duplicate record (same USUBJID, PARAMCD, ADY and AVAL as an earlier row)",
        )  # fmt: skip
    return df


def _check_adex(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Validate ADEX (subjects in ADSL already checked); numbers converted in place."""
    df["EXTRT"] = df["EXTRT"].map(_text)
    if (i := _first(df["EXTRT"] == "")) is not None:
        raise DataCutError(path, i, "EXTRT", df["EXTRT"].iloc[i], "EXTRT must name the treatment")
    rule = "must be a finite study day"
    raw = df[["ASTDY", "AENDY"]].copy()  # errors show the values as the file has them
    df["ASTDY"] = _numbers(df, "ASTDY", path, f"ASTDY {rule}", lambda v: v == v)
    df["AENDY"] = _numbers(df, "AENDY", path, f"AENDY {rule}", lambda v: v == v)
    if (i := _first(df["AENDY"] < df["ASTDY"])) is not None:
        raise DataCutError(
            path, i, "AENDY", raw["AENDY"].iloc[i],
            f"AENDY must be >= ASTDY ({df['ASTDY'].iloc[i]:g}): an interval ends after it starts",
        )  # fmt: skip
    if "EXDOSE" in df.columns:
        df["EXDOSE"] = _numbers(
            df, "EXDOSE", path, "EXDOSE must be a finite dose >= 0 (0: off treatment)",
            lambda v: v >= 0,
        )  # fmt: skip
    # each subject's intervals of a treatment by start (then end, then row): one overlaps
    # when it starts before the latest end among those before it
    sid, trt = df["USUBJID"].tolist(), df["EXTRT"].tolist()
    start, end = df["ASTDY"].tolist(), df["AENDY"].tolist()
    latest: dict[tuple[str, str], tuple[float, int]] = {}
    hits: list[tuple[int, int]] = []
    for r in sorted(range(len(df)), key=lambda r: (sid[r], trt[r], start[r], end[r], r)):
        key = (sid[r], trt[r])
        if key in latest and start[r] < latest[key][0]:
            hits.append((r, latest[key][1]))
        if key not in latest or end[r] > latest[key][0]:
            latest[key] = (end[r], r)
    if hits:
        i, j = min(hits)
        raise DataCutError(
            path, i, "ASTDY", raw["ASTDY"].iloc[i],
            f"exposure intervals of a subject and EXTRT must not overlap (this interval starts "
            f"before the end, AENDY {end[j]:g}, of row {j} of {sid[i]} {trt[i]}; intervals "
            f"may touch)",
        )  # fmt: skip
    return df


def load_cut(cut_dir: Path | str, *, cut_id: str | None = None) -> Cut:
    """Read and validate one data cut folder (see the module docstring for the rules).

    Parameters
    ----------
    cut_dir : Path
        Folder with ``adsl.*``, ``adtte.*`` (or ``adlb.*``) and optionally ``adrs.*``,
        ``adlb.*``, ``adex.*`` (csv, parquet or xpt).
    cut_id : str, optional
        Name of the cut; default the folder name.

    Returns
    -------
    Cut

    Raises
    ------
    DataCutError
        On the first rule broken, naming file, row, column, value and rule. Nothing is
        written: a refused cut leaves no trace.
    """
    cut_dir = Path(cut_dir)
    if not cut_dir.is_dir():
        raise DataCutError(
            cut_dir, None, None, str(cut_dir), "must be a folder holding adsl and adtte files"
        )
    files: dict[str, Path] = {}
    tables: dict[str, pd.DataFrame] = {}
    found = {name: _find(cut_dir, name) for name in DATASETS}
    for name in DATASETS:
        path = found[name]
        if path is None:
            if name in OPTIONAL or (name == "adtte" and found["adlb"] is not None):
                continue
            raise DataCutError(
                cut_dir,
                None,
                None,
                sorted(p.name for p in cut_dir.iterdir()),
                f"missing {name} dataset ({name}.csv, {name}.parquet or {name}.xpt)"
                + (
                    "; a cut without adtte needs adlb (longitudinal data)"
                    if name == "adtte"
                    else ""
                ),
            )
        df = _read(path)
        _require(df, name, path)
        if df.empty and name not in ("adrs", "adex"):
            raise DataCutError(path, None, None, 0, f"{name} has no rows (no subjects or records)")
        _check_identifiers(df, path)
        files[name], tables[name] = path, df

    adsl = tables["adsl"].copy()
    p = files["adsl"]
    adsl["USUBJID"] = _ids(adsl, p)
    dup = adsl["USUBJID"].duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise DataCutError(
            p,
            i,
            "USUBJID",
            adsl["USUBJID"].iloc[i],
            "duplicate subject in ADSL (one row per subject)",
        )
    adsl["ARM"] = adsl["ARM"].map(_text)
    known = set(adsl["USUBJID"])

    def _children(name: str) -> pd.DataFrame | None:
        if name not in tables:
            return None
        df, path = tables[name].copy().reset_index(drop=True), files[name]
        df["USUBJID"] = _ids(df, path)
        if "PARAMCD" in REQUIRED[name]:
            df["PARAMCD"] = df["PARAMCD"].map(_text)
        missing = ~df["USUBJID"].isin(known)
        if missing.any():
            i = int(np.flatnonzero(missing.to_numpy())[0])
            raise DataCutError(
                path,
                i,
                "USUBJID",
                df["USUBJID"].iloc[i],
                f"subject not in ADSL ({files['adsl'].name})",
            )
        if name in LONGITUDINAL:
            return df
        dup = df.duplicated(["USUBJID", "PARAMCD"])
        if dup.any():
            i = int(np.flatnonzero(dup.to_numpy())[0])
            raise DataCutError(
                path,
                i,
                "USUBJID",
                df["USUBJID"].iloc[i],
                "duplicate (USUBJID, PARAMCD): one record per subject and parameter",
            )
        return df

    adtte = _children("adtte")
    if adtte is not None:
        pt = files["adtte"]
        adtte["AVAL"] = _numbers(
            adtte, "AVAL", pt, "AVAL must be a finite time in days >= 0", lambda v: v >= 0
        )
        adtte["CNSR"] = _numbers(
            adtte,
            "CNSR",
            pt,
            "CNSR must be 0 (event) or 1 (censored)",
            lambda v: np.isin(v, (0.0, 1.0)),
        ).astype(int)
    adrs = _children("adrs")
    if adrs is not None:
        pr = files["adrs"]
        if "AVALC" in adrs.columns:
            adrs["AVALC"] = adrs["AVALC"].map(lambda v: _text(v).upper())
            bad = ~adrs["AVALC"].isin(RESPONSE_CODES)
            if "AVAL" in adrs.columns:
                bad &= adrs["AVALC"] != ""
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                raise DataCutError(
                    pr,
                    i,
                    "AVALC",
                    adrs["AVALC"].iloc[i],
                    f"AVALC must be one of {sorted(RESPONSE_CODES)}",
                )
        else:
            adrs["AVAL"] = _numbers(
                adrs,
                "AVAL",
                pr,
                "AVAL must be 1 (responder) or 0",
                lambda v: np.isin(v, (0.0, 1.0)),
            )
    adlb = _children("adlb")
    if adlb is not None:
        adlb = _check_adlb(adlb, files["adlb"])
    adex = _children("adex")
    if adex is not None:
        adex = _check_adex(adex, files["adex"])

    datasets = {"adsl": adsl, "adtte": adtte, "adrs": adrs, "adlb": adlb, "adex": adex}
    canon = {
        name: _canonical(df, CANONICAL_KEYS[name])
        for name, df in datasets.items()
        if df is not None
    }
    h = hashlib.sha256()
    per_subject: dict[str, hashlib._Hash] = {s: hashlib.sha256() for s in sorted(known)}
    for name, df in canon.items():
        h.update(f"[{name}]{','.join(df.columns)}\n".encode())
        for sid, line in zip(df["USUBJID"], _hash_rows(df), strict=True):
            h.update(line.encode() + b"\n")
            per_subject[sid].update(f"[{name}]{line}\n".encode())
    return Cut(
        cut_id=cut_id or cut_dir.name,
        path=cut_dir,
        adsl=adsl,
        adtte=adtte,
        adrs=adrs,
        files=files,
        content_hash=h.hexdigest(),
        subject_hashes={s: d.hexdigest() for s, d in per_subject.items()},
        adlb=adlb,
        adex=adex,
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
