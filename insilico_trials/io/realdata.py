"""Ingestion and validation of real trial data cuts in CDISC ADaM shapes.

A cut is a folder holding ``adsl`` and ``adtte`` datasets and optionally ``adrs``, each as
CSV (``adsl.csv``), Parquet (``adsl.parquet``) or SAS transport (``adsl.xpt``); file names are
matched case-insensitively. Required columns:

* ADSL (one row per subject): ``USUBJID``, ``ARM``; any other column is a baseline covariate
  and must be numeric or a short categorical code (see the identifier rules below).
* ADTTE: ``USUBJID``, ``PARAMCD``, ``AVAL`` (days, >= 0), ``CNSR`` (0 event, 1 censored).
* ADRS: ``USUBJID``, ``PARAMCD`` and ``AVALC`` (e.g. CR, PR, SD, PD, NE) or ``AVAL``
  (1 responder, 0 not).

Rules enforced (each failure raises :class:`DataCutError` naming the file, the row (0-based
data row), the column, the value and the rule): required columns present; types; no duplicate
subjects in ADSL and no duplicate (USUBJID, PARAMCD) in ADTTE/ADRS; every ADTTE/ADRS subject in
ADSL; AVAL >= 0 and finite; CNSR in {0, 1}; no direct identifiers: columns named like names,
initials, dates of birth, addresses, phone, e-mail, social security/medical record numbers, or
free-text comments, and no column whose values look like full dates of birth, e-mail addresses
or phone numbers, or free text (a string column with values longer than 40 characters or of
more than 4 words).
"""

from __future__ import annotations

import hashlib
import re
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
    "load_cut",
]

DATASETS = ("adsl", "adtte", "adrs")
SUFFIXES = (".csv", ".parquet", ".xpt")
REQUIRED = {
    "adsl": ("USUBJID", "ARM"),
    "adtte": ("USUBJID", "PARAMCD", "AVAL", "CNSR"),
    "adrs": ("USUBJID", "PARAMCD"),
}
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
        self.file, self.row, self.column, self.value, self.rule = (
            str(file),
            row,
            column,
            value,
            rule,
        )
        where = (
            f"{file}"
            + (f", row {row}" if row is not None else "")
            + (f", column {column}" if column else "")
        )
        super().__init__(f"{where}: {rule}; got {value!r}")


@dataclass(frozen=True)
class Cut:
    """A validated data cut.

    ``adsl``, ``adtte``, ``adrs`` are DataFrames with upper-case ADaM column names
    (``adrs`` None when absent); ``files`` maps dataset name to its path; ``content_hash`` is
    the SHA-256 of the canonical content (tables sorted by key, values as text), independent of
    file format and row order; ``subject_hashes`` the same per subject.
    """

    cut_id: str
    path: Path
    adsl: pd.DataFrame
    adtte: pd.DataFrame
    adrs: pd.DataFrame | None
    files: dict[str, Path]
    content_hash: str
    subject_hashes: dict[str, str]

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
    out = df.copy()
    for c in out.columns:
        out[c] = out[c].map(_text)
    return out.sort_values(list(keys), kind="stable").reset_index(drop=True)[sorted(out.columns)]


def _hash_rows(df: pd.DataFrame) -> list[str]:
    return [
        "\x1f".join(f"{c}={v}" for c, v in zip(df.columns, row, strict=True))
        for row in df.itertuples(index=False)
    ]


def load_cut(cut_dir: Path | str, *, cut_id: str | None = None) -> Cut:
    """Read and validate one data cut folder (see the module docstring for the rules).

    Parameters
    ----------
    cut_dir : Path
        Folder with ``adsl.*``, ``adtte.*`` and optionally ``adrs.*`` (csv, parquet or xpt).
    cut_id : str, optional
        Name of the cut; default the folder name.

    Returns
    -------
    Cut

    Raises
    ------
    DataCutError
        On the first rule broken, naming file, row, column, value and rule.
    """
    cut_dir = Path(cut_dir)
    if not cut_dir.is_dir():
        raise DataCutError(
            cut_dir, None, None, str(cut_dir), "must be a folder holding adsl and adtte files"
        )
    files: dict[str, Path] = {}
    tables: dict[str, pd.DataFrame] = {}
    for name in DATASETS:
        path = _find(cut_dir, name)
        if path is None:
            if name == "adrs":
                continue
            raise DataCutError(
                cut_dir,
                None,
                None,
                sorted(p.name for p in cut_dir.iterdir()),
                f"missing {name} dataset ({name}.csv, {name}.parquet or {name}.xpt)",
            )
        df = _read(path)
        _require(df, name, path)
        if df.empty and name != "adrs":
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
        df, path = tables[name].copy(), files[name]
        df["USUBJID"] = _ids(df, path)
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

    canon = {
        "adsl": _canonical(adsl, ["USUBJID"]),
        "adtte": _canonical(adtte, ["USUBJID", "PARAMCD"]),
    }
    if adrs is not None:
        canon["adrs"] = _canonical(adrs, ["USUBJID", "PARAMCD"])
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
    )


@dataclass(frozen=True)
class AppendOnlyIssue:
    """A subject re-sent in ``new_cut`` with content different from ``previous_cut``."""

    usubjid: str
    previous_cut: str
    new_cut: str
    datasets: tuple[str, ...]

    def __str__(self) -> str:
        return (
            f"subject {self.usubjid}: content in cut {self.new_cut!r} differs from cut "
            f"{self.previous_cut!r} ({', '.join(self.datasets)}); cuts are append-only"
        )


def _subject_rows(cut: Cut, usubjid: str) -> dict[str, pd.DataFrame]:
    out = {}
    for name in DATASETS:
        df = getattr(cut, name)
        if df is not None:
            out[name] = _canonical(
                df[df["USUBJID"] == usubjid], ["USUBJID"] + (["PARAMCD"] if name != "adsl" else [])
            )
    return out


def check_append_only(previous_cuts: Sequence[Cut], new: Cut) -> list[AppendOnlyIssue]:
    """Flag subjects that ``new`` re-sends with content different from an earlier cut.

    Cuts are append-only: a subject sent once must come back byte-for-byte the same (in
    canonical form: row order and file format do not matter). Returns one
    :class:`AppendOnlyIssue` per (subject, earlier cut) that differs, naming the datasets
    that differ; an empty list means the new cut only appends. A cut with the same
    ``content_hash`` as an earlier one is an identical re-send and yields no issues.
    """
    issues: list[AppendOnlyIssue] = []
    for prev in previous_cuts:
        if prev.content_hash == new.content_hash:
            continue
        for sid in sorted(set(prev.subject_hashes) & set(new.subject_hashes)):
            if prev.subject_hashes[sid] == new.subject_hashes[sid]:
                continue
            a, b = _subject_rows(prev, sid), _subject_rows(new, sid)
            differ = tuple(
                n for n in DATASETS if (n in a) != (n in b) or (n in a and not a[n].equals(b[n]))
            )
            issues.append(AppendOnlyIssue(sid, prev.cut_id, new.cut_id, differ or ("adsl",)))
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
    keeps only that arm. ``attrs["cut_id"]`` names the cut.
    """
    adsl = cut.adsl[["USUBJID", "ARM", *covariates]].rename(
        columns={"USUBJID": "usubjid", "ARM": "arm"}
    )
    for c in covariates:
        adsl[c] = pd.to_numeric(adsl[c], errors="raise")
    if endpoint == "tte":
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
