"""Longitudinal real data cuts: ADLB (PSA series) and ADEX (exposure intervals).

The committed example ``examples/abiraterone`` (Zhang et al., eLife 2022, CC0) is the data:
its cuts load, the converter reproduces them byte for byte, each bad input of issue #16 is
refused with the file, row (1-based data row), column, value and rule named, and successive cuts only append.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from insilico_trials.io.realdata import (
    DataCutError,
    check_append_only,
    endpoint_frame,
    exposure_intervals,
    load_cut,
    longitudinal_frame,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "abiraterone"
CUTS = EXAMPLE / "cuts"
SOURCE_SHA256 = "517674c071583f395efcf118e6ad65587e3b5bbd7ad7559f764c6ed4614f1765"
ADAPT, CONT = "adaptive abiraterone", "continuous abiraterone"
P1001, P1002 = "NCT02415621-ABI-P1001", "NCT02415621-ABI-P1002"

# (cut, subjects, adaptive subjects, ADLB records, ADEX intervals), as the README states
COUNTS = [
    ("day0180", 32, 17, 165, 65),
    ("day0365", 32, 17, 312, 90),
    ("day0730", 32, 17, 513, 122),
    ("full", 32, 17, 678, 166),
]


def _converter():
    spec = importlib.util.spec_from_file_location(
        "convert_abiraterone", ROOT / "scripts" / "convert_abiraterone.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _copy(tmp_path: Path, cut: str = "day0180", name: str | None = None) -> Path:
    dest = tmp_path / (name or cut)
    shutil.copytree(CUTS / cut, dest)
    return dest


def _read(folder: Path, dataset: str) -> pd.DataFrame:
    return pd.read_csv(folder / f"{dataset}.csv", dtype=str, keep_default_na=False)


def _write(folder: Path, dataset: str, df: pd.DataFrame) -> None:
    df.to_csv(folder / f"{dataset}.csv", index=False)


def _refused(folder: Path) -> DataCutError:
    """Load ``folder``, expect a refusal, and check that nothing was written."""
    before = _files(folder)
    with pytest.raises(DataCutError) as err:
        load_cut(folder)
    assert _files(folder) == before  # nothing written, nothing partial
    return err.value


# --- the committed data -----------------------------------------------------------------


def test_source_is_the_stated_file():
    data = (EXAMPLE / "source" / "psa.csv").read_bytes()
    assert hashlib.sha256(data).hexdigest() == SOURCE_SHA256
    readme = (EXAMPLE / "README.md").read_text()
    assert SOURCE_SHA256 in readme and "CC0 1.0" in readme and "e76284" in readme


@pytest.mark.parametrize(("cut", "subjects", "adaptive", "records", "intervals"), COUNTS)
def test_committed_cuts_load_with_stated_counts(cut, subjects, adaptive, records, intervals):
    c = load_cut(CUTS / cut)
    assert c.adtte is None and c.adrs is None
    assert len(c.adsl) == subjects
    assert (c.adsl["ARM"] == ADAPT).sum() == adaptive
    assert (c.adsl["ARM"] == CONT).sum() == subjects - adaptive
    assert len(c.adlb) == records and len(c.adex) == intervals
    assert set(c.adlb["USUBJID"]) == set(c.adsl["USUBJID"])
    day = {"day0180": 180, "day0365": 365, "day0730": 730, "full": np.inf}[cut]
    assert c.adlb["ADY"].max() <= day and c.adex["AENDY"].max() <= day
    assert (c.adlb["ABLFL"] == "Y").sum() == subjects  # one baseline record per subject


def test_adam_folder_is_the_full_cut():
    assert load_cut(EXAMPLE / "adam").content_hash == load_cut(CUTS / "full").content_hash


def test_converter_reproduces_committed_files(tmp_path, capsys):
    convert = _converter()
    assert (
        convert.main(["--source", str(EXAMPLE / "source" / "psa.csv"), "--out", str(tmp_path)]) == 0
    )
    assert (
        "cuts/day0180: 32 subjects, 165 PSA records, 65 exposure intervals"
        in capsys.readouterr().out
    )
    for folder in ("adam", "cuts"):
        fresh, committed = _files(tmp_path / folder), _files(EXAMPLE / folder)
        assert sorted(fresh) == sorted(committed)
        for name, data in committed.items():
            assert fresh[name] == data, f"{folder}/{name} differs from a fresh conversion"


def test_frames_for_the_twin_fit():
    cut = load_cut(CUTS / "day0180")
    psa = longitudinal_frame(cut, "PSA")
    assert list(psa.columns) == ["usubjid", "arm", "day", "value"]
    assert psa.attrs == {"cut_id": "day0180", "paramcd": "PSA", "unit": "ng/mL"}
    first = psa[psa["usubjid"] == P1001]
    assert first["day"].tolist() == [0.0, 27.0, 55.0, 82.0, 110.0, 137.0, 165.0]
    assert first["value"].tolist() == [6.06, 0.03, 0.1, 1.17, 3.16, 10.88, 0.09]
    cont = longitudinal_frame(cut, arm=CONT, covariates=["BASEPSA"])
    assert set(cont["arm"]) == {CONT} and cont["usubjid"].nunique() == 15
    c001 = cont[cont["usubjid"] == "NCT02415621-ABI-C001"]
    assert c001["day"].iloc[1] == pytest.approx(43.886525)  # fractional days kept
    assert (c001["BASEPSA"] == 3.5).all()

    ex = exposure_intervals(cut, "ABIRATERONE")
    assert list(ex.columns) == [
        "usubjid", "arm", "treatment", "start_day", "end_day", "dose", "dose_unit", "on",
    ]  # fmt: skip
    p = ex[ex["usubjid"] == P1001]
    assert list(zip(p["start_day"], p["end_day"], p["on"], strict=True)) == [
        (0.0, 27.0, True),
        (27.0, 137.0, False),
        (137.0, 165.0, True),
        (165.0, 180.0, False),
    ]  # fmt: skip; the last interval is truncated at the cut day
    assert p["dose"].tolist() == [1000.0, 0.0, 1000.0, 0.0]
    # the cut's intervals cover day 0 to the cut day (or the last record) without gaps
    for _, g in ex.groupby("usubjid"):
        assert g["start_day"].iloc[0] == 0.0
        assert (g["start_day"].to_numpy()[1:] == g["end_day"].to_numpy()[:-1]).all()
    with pytest.raises(DataCutError, match="tte endpoint needs an adtte dataset"):
        endpoint_frame(cut, endpoint="tte")
    with pytest.raises(DataCutError, match="no ADLB records with this PARAMCD"):
        longitudinal_frame(cut, "PSA", arm="placebo")


@pytest.mark.parametrize("fmt", ["parquet", "xpt"])
def test_other_formats_and_optional_adex(tmp_path, fmt):
    ref = load_cut(CUTS / "day0180")
    folder = tmp_path / fmt
    folder.mkdir()
    for name in ("adsl", "adlb", "adex"):
        df = _read(CUTS / "day0180", name)
        if fmt == "parquet":
            df.to_parquet(folder / f"{name}.parquet", index=False)
        else:
            import pyreadstat

            pyreadstat.write_xport(df, str(folder / f"{name}.xpt"), table_name=name.upper())
    cut = load_cut(folder)
    pd.testing.assert_frame_equal(longitudinal_frame(cut), longitudinal_frame(ref))
    pd.testing.assert_frame_equal(exposure_intervals(cut), exposure_intervals(ref))
    (folder / f"adex.{fmt}").unlink()  # adsl + adlb is a cut; no adtte, no adex needed
    cut = load_cut(folder)
    assert cut.adex is None and len(cut.adlb) == 165
    with pytest.raises(DataCutError, match="exposure intervals need an adex dataset"):
        exposure_intervals(cut)


# --- refusals: each names file, row, column, value and rule ---------------------------------


def test_negative_psa_refused(tmp_path):
    folder = _copy(tmp_path)
    adlb = _read(folder, "adlb")
    adlb.loc[5, "AVAL"] = "-1.5"
    _write(folder, "adlb", adlb)
    e = _refused(folder)
    assert (Path(e.file).name, e.row, e.column, e.value) == ("adlb.csv", 6, "AVAL", "-1.5")
    assert e.rule == "AVAL must be a finite value >= 0"
    assert str(e).endswith(
        "adlb.csv, row 6, column AVAL: AVAL must be a finite value >= 0; got '-1.5'"
    )


def test_ady_going_backwards_refused(tmp_path):
    folder = _copy(tmp_path)
    adlb = _read(folder, "adlb")
    assert adlb.loc[2, "ADY"] == "55.0" and adlb.loc[3, "USUBJID"] == P1001
    adlb.loc[3, "ADY"] = "20"  # P1001: 0, 27, 55, then 20
    _write(folder, "adlb", adlb)
    e = _refused(folder)
    assert (Path(e.file).name, e.row, e.column, e.value) == ("adlb.csv", 4, "ADY", "20")
    assert "ADY must not decrease within a subject and PARAMCD in file order" in e.rule
    assert "row 3 of NCT02415621-ABI-P1001 PSA has ADY 55" in e.rule


def test_equal_days_allowed_identical_record_refused(tmp_path):
    folder = _copy(tmp_path)
    adlb = _read(folder, "adlb")
    repeat = adlb.iloc[[2]].assign(AVAL="0.12")  # a second draw on day 55, another value
    _write(folder, "adlb", pd.concat([adlb.iloc[:3], repeat, adlb.iloc[3:]], ignore_index=True))
    assert len(load_cut(folder).adlb) == 166
    twice = pd.concat([adlb.iloc[:3], adlb.iloc[[2]], adlb.iloc[3:]], ignore_index=True)
    _write(folder, "adlb", twice)
    e = _refused(folder)
    assert (Path(e.file).name, e.row, e.column) == ("adlb.csv", 4, "ADY")
    assert "duplicate record" in e.rule


def test_overlapping_dosing_intervals_refused(tmp_path):
    folder = _copy(tmp_path)
    adex = _read(folder, "adex")
    assert adex.loc[1, ["ASTDY", "AENDY"]].tolist() == ["27.0", "137.0"]
    adex.loc[1, "AENDY"] = "150.0"  # now overlaps the next interval, 137 to 165
    _write(folder, "adex", adex)
    e = _refused(folder)
    assert (Path(e.file).name, e.row, e.column, e.value) == ("adex.csv", 3, "ASTDY", "137.0")
    assert "exposure intervals of a subject and EXTRT must not overlap" in e.rule
    assert "AENDY 150, of row 2" in e.rule


def test_interval_ending_before_it_starts_refused(tmp_path):
    folder = _copy(tmp_path)
    adex = _read(folder, "adex")
    adex.loc[0, "AENDY"] = "-3"
    _write(folder, "adex", adex)
    e = _refused(folder)
    assert (Path(e.file).name, e.row, e.column, e.value) == ("adex.csv", 1, "AENDY", "-3")
    assert e.rule.startswith("AENDY must be >= ASTDY (0)")


def test_subject_missing_from_adsl_refused(tmp_path):
    folder = _copy(tmp_path)
    adsl = _read(folder, "adsl")
    _write(folder, "adsl", adsl[adsl["USUBJID"] != P1002])
    first = int(np.flatnonzero(_read(folder, "adlb")["USUBJID"] == P1002)[0])
    assert first == 7  # P1001 has 7 records by day 180
    e = _refused(folder)
    assert (Path(e.file).name, e.row, e.column, e.value) == ("adlb.csv", 8, "USUBJID", P1002)
    assert e.rule == "subject not in ADSL (adsl.csv)"
    # the same rule for ADEX (with the ADLB rows of that subject gone)
    adlb = _read(folder, "adlb")
    _write(folder, "adlb", adlb[adlb["USUBJID"] != P1002])
    e = _refused(folder)
    assert (Path(e.file).name, e.row, e.column, e.value) == ("adex.csv", 5, "USUBJID", P1002)


@pytest.mark.parametrize("unit", ["ng/dL", "ug/L", ""])
def test_unit_not_ng_ml_refused(tmp_path, unit):
    folder = _copy(tmp_path)
    adlb = _read(folder, "adlb")
    adlb.loc[4, "AVALU"] = unit
    _write(folder, "adlb", adlb)
    e = _refused(folder)
    assert (Path(e.file).name, e.row, e.column, e.value) == ("adlb.csv", 5, "AVALU", unit)
    assert e.rule == "AVALU must be ng/mL for PARAMCD PSA (values are not converted)"


def test_unknown_paramcd_and_missing_columns_refused(tmp_path):
    folder = _copy(tmp_path)
    adlb = _read(folder, "adlb")
    bad = adlb.copy()
    bad.loc[6, "PARAMCD"] = "TESTO"
    _write(folder, "adlb", bad)
    e = _refused(folder)
    assert (e.row, e.column, e.value) == (7, "PARAMCD", "TESTO")
    assert "PARAMCD must be a parameter with a known unit" in e.rule
    _write(folder, "adlb", adlb.drop(columns="ADY"))
    e = _refused(folder)
    assert e.column == "ADY" and "ADLB needs columns" in e.rule
    _write(folder, "adlb", adlb.assign(PATIENT_NAME="Jane Doe"))
    e = _refused(folder)
    assert (e.row, e.column) == (1, "PATIENT_NAME") and "direct identifier" in e.rule


def test_a_cut_without_adtte_needs_adlb(tmp_path):
    folder = _copy(tmp_path)
    (folder / "adlb.csv").unlink()
    e = _refused(folder)
    assert "missing adtte dataset" in e.rule and "needs adlb" in e.rule


# --- append-only across cuts ---------------------------------------------------------------


def test_successive_cuts_only_append():
    cuts = [load_cut(CUTS / name) for name, *_ in COUNTS]
    for i in range(1, len(cuts)):
        assert check_append_only(cuts[:i], cuts[i]) == []
    # the ongoing interval of P1001 at day 180 (off since 165) grew by day 365: allowed
    ex = exposure_intervals(cuts[1])
    assert ((ex["usubjid"] == P1001) & (ex["start_day"] == 165.0)).sum() == 1
    assert ex[(ex["usubjid"] == P1001) & (ex["start_day"] == 165.0)]["end_day"].item() == 255.0
    # going back in time is not appending: day 180 drops later records of every subject but
    # C015, whose last record is on day 125.9
    issues = check_append_only([cuts[1]], cuts[0])
    assert len(issues) == 31 and "NCT02415621-ABI-C015" not in {i.usubjid for i in issues}
    assert issues[0].datasets == ("adlb", "adex")


def test_edited_psa_value_fails_append_only(tmp_path):
    first = load_cut(CUTS / "day0180")
    folder = _copy(tmp_path, "day0365", "edited")
    adlb = _read(folder, "adlb")
    assert adlb.loc[1, ["USUBJID", "ADY", "AVAL"]].tolist() == [P1001, "27.0", "0.03"]
    adlb.loc[1, "AVAL"] = "0.3"
    _write(folder, "adlb", adlb)
    edited = load_cut(folder)
    issues = check_append_only([first], edited)
    assert [(i.usubjid, i.previous_cut, i.new_cut, i.datasets) for i in issues] == [
        (P1001, "day0180", "edited", ("adlb",))
    ]
    assert "ADY=27, AVAL=0.03" in issues[0].detail and "append-only" in str(issues[0])


def test_dropped_record_and_changed_interval_fail_append_only(tmp_path):
    first = load_cut(CUTS / "day0180")
    folder = _copy(tmp_path, "day0365", "dropped")
    adlb = _read(folder, "adlb")
    _write(folder, "adlb", adlb.drop(index=2))
    issues = check_append_only([first], load_cut(folder))
    assert [(i.usubjid, i.datasets) for i in issues] == [(P1001, ("adlb",))]
    assert "ADY=55" in issues[0].detail

    folder = _copy(tmp_path, "day0365", "shortened")
    adex = _read(folder, "adex")
    assert adex.loc[1, ["USUBJID", "ASTDY", "AENDY"]].tolist() == [P1001, "27.0", "137.0"]
    adex.loc[1, "AENDY"] = "130.0"  # an interval that had ended at day 180 changes
    _write(folder, "adex", adex)
    issues = check_append_only([first], load_cut(folder))
    assert [(i.usubjid, i.datasets) for i in issues] == [(P1001, ("adex",))]

    folder = _copy(tmp_path, "day0365", "ongoing_shrunk")
    adex = _read(folder, "adex")
    row = adex.index[(adex["USUBJID"] == P1001) & (adex["ASTDY"] == "165.0")][0]
    adex.loc[row, "AENDY"] = "170.0"  # the ongoing interval may grow, not shrink
    _write(folder, "adex", adex)
    issues = check_append_only([first], load_cut(folder))
    assert [(i.usubjid, i.datasets) for i in issues] == [(P1001, ("adex",))]
