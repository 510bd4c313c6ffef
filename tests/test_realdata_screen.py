"""Screening a real data cut (issue #17): every problem at once, privacy by allow-list.

A bad cut gets every problem listed (file, 1-based data row, column, value, rule), an
identifier-looking value is never echoed whole, a column that is not an ADaM variable of the
allow-list (``insilico_trials/data/adam_variables.yaml``) or a protocol covariate is refused
or, on request, dropped before anything is written. The CLI prints every problem, exits 2 and
leaves the archive and the tracking store as they were. The vectorised value screen gives each
value the rule the per-value loop it replaced gave (that loop is kept here as the reference).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from insilico_trials.app.cli import main
from insilico_trials.io import realdata
from insilico_trials.io.archive import sha256_file
from insilico_trials.io.realdata import DataCutError, load_cut, write_dataset

ROOT = Path(__file__).resolve().parents[1]


def _cut(
    folder: Path,
    *,
    n: int = 4,
    adsl: dict | None = None,
    adtte: dict | None = None,
    adrs: dict | None = None,
    skip: tuple[str, ...] = (),
    fmt: str = "csv",
) -> Path:
    """A small valid cut (control and treatment, PFS and BOR) with extra or replaced columns."""
    folder.mkdir(parents=True)
    ids = [f"S{i}" for i in range(1, n + 1)]
    tables = {
        "adsl": {"STUDYID": "ST-1", "USUBJID": ids, "ARM": ["control", "treatment"] * (n // 2),
                 "AGE": [60 + i for i in range(n)], **(adsl or {})},
        "adtte": {"USUBJID": ids, "PARAMCD": "PFS", "AVAL": [100.0 + i for i in range(n)],
                  "CNSR": [0, 1] * (n // 2), **(adtte or {})},
        "adrs": {"USUBJID": ids, "PARAMCD": "BOR", "AVALC": ["PR", "SD"] * (n // 2),
                 **(adrs or {})},
    }  # fmt: skip
    for name, columns in tables.items():
        if name in skip:
            continue
        df = pd.DataFrame(columns)
        if fmt == "csv":
            df.to_csv(folder / f"{name}.csv", index=False)
        elif fmt == "parquet":
            df.to_parquet(folder / f"{name}.parquet", index=False)
        else:
            import pyreadstat

            pyreadstat.write_xport(df, str(folder / f"{name}.xpt"), table_name=name.upper())
    return folder


def _refused(folder: Path, **kwargs) -> DataCutError:
    with pytest.raises(DataCutError) as err:
        load_cut(folder, **kwargs)
    return err.value


def _listed(e: DataCutError) -> set[tuple[str, int | None, str | None]]:
    return {(Path(p.file).name, p.row, p.column) for p in e.problems}


# ------------------------------------------------------------------ identifiers, allow-list


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("PATIENT_NAME", "Jane Doe"),
        ("pt_name", "Jane Doe"),
        ("Name", "Jane Doe"),
        ("Patient Name", "Jane Doe"),
        ("MRN", "MRN00012345"),
        ("email", "jane.doe@example.org"),
        ("Phone", "+44 20 7946 0958"),
        ("home_address", "1 High Street, Leeds"),
        ("DOB", "1961-02-03"),
    ],
)
def test_identifier_columns_refused_under_any_name(tmp_path, column, value):
    e = _refused(_cut(tmp_path / "c", adsl={column: value}))
    (p,) = [p for p in e.problems if p.column == column.upper()]
    assert Path(p.file).name == "adsl.csv" and p.row == 1
    assert "direct identifier column" in p.rule
    # the value is masked: its first characters (from 6 on) and its length, never whole
    assert p.value == f"{value[:2]}... ({len(value)} characters)"
    assert value not in str(e) and value not in e.report()


def test_unknown_column_refused_unless_declared_or_dropped(tmp_path):
    folder = _cut(tmp_path / "c", adsl={"SMOKER": "Y"}, adtte={"SITE_NOTE": "ok"})
    e = _refused(folder)
    assert _listed(e) == {("adsl.csv", None, "SMOKER"), ("adtte.csv", None, "SITE_NOTE")}
    assert all("column not allowed in" in p.rule and "adam_variables.yaml" in p.rule
               for p in e.problems)  # fmt: skip
    assert "column not allowed in ADTTE" in str(e)
    # a covariate the protocol declares is allowed (in ADSL); the other still refused
    e = _refused(folder, extra_allowed=("smoker",))
    assert _listed(e) == {("adtte.csv", None, "SITE_NOTE")}
    # dropped on request: gone from the tables and the hash, listed
    cut = load_cut(folder, drop_unknown=True)
    assert cut.dropped == (("adsl.csv", "SMOKER"), ("adtte.csv", "SITE_NOTE"))
    assert "SMOKER" not in cut.adsl and "SITE_NOTE" not in cut.adtte
    clean = load_cut(_cut(tmp_path / "clean"))
    assert cut.content_hash == clean.content_hash and clean.dropped == ()
    # a dropped identifier column is dropped like any unknown column
    named = load_cut(_cut(tmp_path / "named", adsl={"PATIENT_NAME": "Jane Doe"}),
                     drop_unknown=True)  # fmt: skip
    assert named.dropped == (("adsl.csv", "PATIENT_NAME"),)
    assert named.content_hash == clean.content_hash


def test_declared_covariate_named_like_an_identifier_is_still_refused(tmp_path):
    e = _refused(_cut(tmp_path / "c", adsl={"NAME": "Jane Doe"}), extra_allowed=("NAME",))
    assert "direct identifier column" in e.rule


@pytest.mark.parametrize(
    ("column", "value", "rule"),
    [
        ("RACE", "jane.doe@example.org", "e-mail"),
        ("COUNTRY", "+44 20 7946 0958", "phone number"),
        ("AGEGR1", "03/02/1961", "full calendar date"),
        ("ETHNIC", "patient said she felt much better after the second cycle", "free text"),
    ],
)
def test_identifier_values_in_allowed_columns_refused(tmp_path, column, value, rule):
    values = ["A", value, "B", "C"]
    e = _refused(_cut(tmp_path / "c", adsl={column: values}))
    (p,) = e.problems
    assert (Path(p.file).name, p.row, p.column) == ("adsl.csv", 2, column) and rule in p.rule
    assert p.value == f"{value[:2]}... ({len(value)} characters)" and value not in str(e)


def test_labels_may_be_long_keys_are_not_screened(tmp_path):
    long_arm = "continuous abiraterone with the usual dose adjustments"  # > 4 words
    cut = load_cut(_cut(tmp_path / "c", adsl={"ARM": [long_arm, "control"] * 2,
                                              "SUBJID": ["001-0001-0042"] * 4}))  # fmt: skip
    assert set(cut.adsl["ARM"]) == {long_arm, "control"}  # a label: no free-text rule
    # a subject code that looks like a phone number is a key, not a phone number
    e = _refused(_cut(tmp_path / "d", adsl={"ARM": ["+44 20 7946 0958", "control"] * 2}))
    assert "phone number" in e.rule and e.column == "ARM"


def test_allow_list_admits_the_repository_cuts():
    """The committed example cuts and the columns the loader reads are on the allow-list."""
    for folder in sorted((ROOT / "examples").rglob("adsl.csv")):
        load_cut(folder.parent)  # allow-list on (the default)
    for name, columns in realdata.REQUIRED.items():
        assert set(columns) <= realdata.allowed_variables(name)
    for name in ("adsl", "adtte", "adrs", "adlb", "adex"):
        allowed = realdata.allowed_variables(name)
        assert {"STUDYID", "USUBJID", "ARM", "AGE"} <= allowed
        # dates are refused by value; the allow-list does not invite them
        assert not {c for c in allowed if c.endswith(("DT", "DTM", "DTC"))}
    assert {"EXDOSE", "EXDOSU", "ASTDY", "AENDY"} <= realdata.allowed_variables("adex")
    assert {"AVALC", "AVISIT", "ADY"} <= realdata.allowed_variables("adrs")


# ------------------------------------------------------------------ every problem at once


def test_every_problem_of_a_cut_is_listed(tmp_path):
    folder = _cut(
        tmp_path / "c",
        adsl={"USUBJID": ["S1", "S2", "S2", "S4"], "PATIENT_NAME": "Jane Doe", "SMOKER": "Y"},
        adtte={"AVAL": [100.0, -5.0, 110.0, 120.0], "CNSR": [0, 1, 2, 0],
               "USUBJID": ["S1", "S2", "S3", "S9"]},
        adrs={"AVALC": ["PR", "GOOD", "SD", "CR"]},
    )  # fmt: skip
    e = _refused(folder)
    assert _listed(e) == {
        ("adsl.csv", 1, "PATIENT_NAME"),  # identifier column
        ("adsl.csv", None, "SMOKER"),  # not on the allow-list
        ("adsl.csv", 3, "USUBJID"),  # duplicate subject
        ("adtte.csv", 3, "USUBJID"),  # S3 not in ADSL (S3 is not in the ADSL above)
        ("adtte.csv", 4, "USUBJID"),  # S9 not in ADSL
        ("adtte.csv", 2, "AVAL"),  # negative
        ("adtte.csv", 3, "CNSR"),  # 2
        ("adrs.csv", 2, "AVALC"),  # GOOD
        ("adrs.csv", 3, "USUBJID"),  # S3 not in ADSL
    }
    text = e.report()
    assert text.startswith("error: 9 problems in the data cut (every one is listed")
    assert (
        "adtte.csv, row 2, column AVAL: AVAL must be a finite time in days >= 0; got '-5.0'" in text
    )
    assert "Jane Doe" not in text


def test_missing_datasets_and_columns_listed_together(tmp_path):
    folder = _cut(tmp_path / "c", skip=("adrs", "adtte"))
    e = _refused(folder, require=("adrs",))
    rules = [p.rule for p in e.problems]
    assert any(r.startswith("missing adtte dataset") for r in rules)
    assert any(r.startswith("missing adrs dataset") and "update reads it" in r for r in rules)
    folder = _cut(tmp_path / "d")
    (folder / "adtte.csv").write_text("USUBJID,PARAMCD\nS1,PFS\n")
    (folder / "adsl.csv").write_text("USUBJID,AGE,SMOKER\nS1,60,Y\n")
    e = _refused(folder)
    assert _listed(e) == {
        ("adsl.csv", None, "ARM"), ("adsl.csv", None, "SMOKER"),
        ("adtte.csv", None, "AVAL"), ("adtte.csv", None, "CNSR"),
    }  # fmt: skip


def test_a_rule_broken_in_many_rows_lists_the_first_and_counts_the_rest(tmp_path):
    n = 100
    folder = _cut(tmp_path / "c", n=n, adtte={"AVAL": -1.0})
    e = _refused(folder)
    assert [p.row for p in e.problems] == [1, 2, 3, 4, 5]
    assert e.problems[-1].more == n - 5
    assert f"(and {n - 5:,} more rows with this problem)" in str(e.problems[-1])


@pytest.mark.parametrize("fmt", ["csv", "parquet", "xpt"])
def test_write_dataset_drops_columns_and_keeps_content(tmp_path, fmt):
    folder = _cut(tmp_path / "c", adsl={"SMOKER": "Y"}, fmt=fmt)
    cut = load_cut(folder, drop_unknown=True)
    out = tmp_path / "out"
    shutil.copytree(folder, out)
    write_dataset(cut.files["adsl"], out / cut.files["adsl"].name, ["smoker"])
    again = load_cut(out)  # allow-list on: the column is gone
    assert again.content_hash == cut.content_hash and again.dropped == ()


# ------------------------------------------------------------------ the vectorised screen


def _reference_rule(v: str) -> str | None:
    """The per-value loop load_cut used before issue #17 (one value's rule)."""
    email = re.compile(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}")
    phone = re.compile(r"^\+?[\d\s().-]{9,}$")
    date = re.compile(r"^\d{4}-\d{2}-\d{2}|^\d{1,2}[/.]\d{1,2}[/.]\d{4}$|^\d{2}[A-Z]{3}\d{4}$")
    if not v or pd.notna(pd.to_numeric(v, errors="coerce")):
        return None
    if email.search(v):
        return "e-mail"
    if phone.match(v) and sum(ch.isdigit() for ch in v) >= 9:
        return "phone"
    if date.match(v.upper()):
        return "date"
    if len(v) > 40 or len(v.split()) > 4:
        return "free text"
    return None


def test_vectorised_screen_gives_each_value_the_reference_rule(monkeypatch):
    rng = np.random.default_rng(17)
    pieces = ["a", "Jane", "@", "x.org", "+44", "20", "7946", "0958", "1961-02-03", "03/02/1961",
              "12JAN1961", " ", "-", "(0)", "12", "word", "ng/mL", "3.5", "", "e5"]  # fmt: skip
    values = ["".join(rng.choice(pieces, size=rng.integers(1, 8))) for _ in range(3000)]
    values += ["jane@example.org", "+44 20 7946 0958", "1961-02-03", "x " * 30, "12", "1e5"]
    monkeypatch.setattr(realdata, "_ROWS_LISTED", len(values))
    problems = realdata._Problems()
    realdata._screen_values(pd.Series(values, dtype=object), "X", Path("f.csv"), problems,
                            label=False)  # fmt: skip
    name = {"e-mail": "e-mail", "phone number": "phone", "calendar date": "date",
            "free text": "free text"}  # fmt: skip
    got = {p.row - 1: next(v for k, v in name.items() if k in p.rule) for p in problems.items}
    want = {i: r for i, v in enumerate(values) if (r := _reference_rule(v.strip()))}
    assert got == want
    assert len(want) > 250 and len(set(want.values())) == 4  # every rule exercised


# ------------------------------------------------------------------ the command line


@pytest.fixture(scope="module")
def archive_made(tmp_path_factory):
    from tests.test_integrity import make_archive

    return make_archive(tmp_path_factory.mktemp("screen") / "made")


def _tree(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".lock" not in p.name
    }


@pytest.mark.parametrize(
    ("case", "kwargs", "phrases"),
    [
        (
            "several problems",
            {"adsl": {"PATIENT_NAME": "Jane Doe", "SMOKER": "Y"},
             "adtte": {"AVAL": [1.0, -5.0, 3.0, 4.0]}, "adrs": {"AVALC": ["PR", "GOOD", "SD", "CR"]}},
            ["error: 4 problems in the data cut", "column PATIENT_NAME: direct identifier", "column SMOKER: column "
             "not allowed in ADSL", "row 2, column AVAL", "row 2, column AVALC",
             "--drop-unknown-columns"],
        ),
        ("no adrs for a response endpoint", {"skip": ("adrs",)}, ["missing adrs dataset"]),
        (
            "no adrs and an e-mail",
            {"skip": ("adrs",), "adsl": {"COUNTRY": "jane.doe@example.org"}},
            ["error: 5 problems in the data cut", "missing adrs dataset", "looks like an e-mail address",
             "(direct identifier); got 'ja... (20 characters)'"],
        ),
    ],
)  # fmt: skip
def test_cli_lists_every_problem_and_writes_nothing(
    archive_made, tmp_path, capsys, monkeypatch, case, kwargs, phrases
):
    work = tmp_path / "work"  # the embedded tracking store would land in work/.insilico
    work.mkdir()
    monkeypatch.chdir(work)
    archive = tmp_path / "archive"
    shutil.copytree(archive_made, archive)
    before, work_before = _tree(archive), _tree(work)
    cut = _cut(tmp_path / "cut", **kwargs)
    code = main(["update", str(archive), "--data", str(cut)])
    err = capsys.readouterr().err
    assert code == 2, (case, err)
    assert "Traceback" not in err and "Jane Doe" not in err and "jane.doe@" not in err
    for phrase in phrases:
        assert phrase in err, (case, phrase, err)
    assert _tree(archive) == before and not (archive / "updates").exists()
    assert _tree(work) == work_before and not (work / ".insilico").exists()


def test_cli_endpoint_without_an_adam_dataset_is_a_clear_error(
    archive_made, tmp_path, capsys, monkeypatch
):
    """A protocol whose analysis endpoint has no ADaM dataset (continuous) ended `update` in a
    ValueError traceback from endpoint_frame; now exit 2 before the cut is read."""
    from insilico_trials.app import commands
    from insilico_trials.spec.protocol import load_protocol

    continuous = load_protocol(ROOT / "protocols" / "dose_ranging_pkpd.yaml")
    monkeypatch.setattr(commands, "require_verified", lambda *a, **k: continuous)
    archive = tmp_path / "archive"
    shutil.copytree(archive_made, archive)
    before = _tree(archive)
    code = main(["update", str(archive), "--data", str(_cut(tmp_path / "cut"))])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert (
        "analysis.model 'continuous'" in err and "time-to-event (ADTTE) and response (ADRS)" in err
    )
    assert _tree(archive) == before


@pytest.mark.slow
def test_cli_drop_unknown_columns_archives_the_cut_without_them(
    archive_made, prefect_api, tmp_path, capsys, monkeypatch
):
    from insilico_trials.io.archive import verify_archive

    monkeypatch.chdir(tmp_path)
    archive = tmp_path / "archive"
    shutil.copytree(archive_made, archive)
    cut = _cut(tmp_path / "cut", adsl={"PATIENT_NAME": "Jane Doe", "SMOKER": "Y"},
               adrs={"FREETXT": "x"})  # fmt: skip
    assert main(["update", str(archive), "--data", str(cut)]) == 2
    assert "column SMOKER: column not allowed" in capsys.readouterr().err
    assert not (archive / "updates").exists()

    assert main(["update", str(archive), "--data", str(cut), "--drop-unknown-columns"]) == 0
    out = capsys.readouterr().out
    assert (
        "dropped before archiving (not ADaM variables of the allow-list, not protocol "
        "covariates): adsl.csv PATIENT_NAME, adsl.csv SMOKER, adrs.csv FREETXT"
    ) in out
    folder = archive / "updates" / "001"
    record = json.loads((folder / "update.json").read_text())
    assert record["dropped_columns"] == [
        {"file": "adsl.csv", "column": "PATIENT_NAME"},
        {"file": "adsl.csv", "column": "SMOKER"},
        {"file": "adrs.csv", "column": "FREETXT"},
    ]
    assert record["n_real"] == 2  # S1 and S3 are in the control arm
    adsl = pd.read_csv(folder / "cut" / "adsl.csv")
    assert list(adsl.columns) == ["STUDYID", "USUBJID", "ARM", "AGE"]
    assert "FREETXT" not in pd.read_csv(folder / "cut" / "adrs.csv").columns
    for path in archive.rglob("*"):  # the name is nowhere in the archive
        assert not path.is_file() or b"Jane Doe" not in path.read_bytes(), path
    assert verify_archive(archive) == []
    # the archived cut is the ingested one: the next update re-reads it to the same hash
    assert load_cut(folder / "cut").content_hash == record["cut_sha256"]
