"""Tests for insilico_trials.realdata: ADaM cut ingestion, validation, hashing, append-only.

Cuts are written into tmp_path by the tests (CSV, Parquet, SAS transport), so every rule has
a small stated example.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from insilico_trials.io.realdata import (
    Cut,
    DataCutError,
    check_append_only,
    endpoint_frame,
    load_cut,
)


def tables(ids=("S1", "S2", "S3", "S4"), offset: int = 0):
    n = len(ids)
    adsl = pd.DataFrame(
        {
            "USUBJID": list(ids),
            "ARM": ["control", "treatment"] * (n // 2) + ["control"] * (n % 2),
            "AGE": [60 + i + offset for i in range(n)],
            "ECOG": [0, 1] * (n // 2) + [0] * (n % 2),
        }
    )
    adtte = pd.DataFrame(
        {
            "USUBJID": list(ids),
            "PARAMCD": "PFS",
            "AVAL": [100.0 + 10 * i for i in range(n)],
            "CNSR": [0, 1] * (n // 2) + [0] * (n % 2),
        }
    )
    adrs = pd.DataFrame(
        {"USUBJID": list(ids), "PARAMCD": "BOR", "AVALC": (["PR", "SD", "PD", "CR"] * n)[:n]}
    )
    return adsl, adtte, adrs


def write(cut_dir: Path, adsl, adtte, adrs=None, fmt: str = "csv") -> Path:
    cut_dir.mkdir(parents=True, exist_ok=True)
    for name, df in (("adsl", adsl), ("adtte", adtte), ("adrs", adrs)):
        if df is None:
            continue
        path = cut_dir / f"{name}.{fmt}"
        if fmt == "csv":
            df.to_csv(path, index=False)
        elif fmt == "parquet":
            df.to_parquet(path, index=False)
        else:
            import pyreadstat

            pyreadstat.write_xport(df, str(path), table_name=name.upper())
    return cut_dir


@pytest.mark.parametrize("fmt", ["csv", "parquet", "xpt"])
def test_load_cut_each_format_same_content_hash(tmp_path, fmt):
    ref = load_cut(write(tmp_path / "ref", *tables()))
    cut = load_cut(write(tmp_path / fmt, *tables(), fmt=fmt))
    assert isinstance(cut, Cut)
    assert cut.subjects == ["S1", "S2", "S3", "S4"]
    assert cut.adtte["CNSR"].tolist() == [0, 1, 0, 1]
    assert cut.content_hash == ref.content_hash  # format-independent
    assert len(cut.content_hash) == 64


def test_hash_ignores_row_order_and_sees_content(tmp_path):
    adsl, adtte, adrs = tables()
    a = load_cut(write(tmp_path / "a", adsl, adtte, adrs))
    b = load_cut(write(tmp_path / "b", adsl.iloc[::-1], adtte.iloc[::-1], adrs))
    assert a.content_hash == b.content_hash
    adtte2 = adtte.copy()
    adtte2.loc[0, "AVAL"] = 101.0
    c = load_cut(write(tmp_path / "c", adsl, adtte2, adrs))
    assert c.content_hash != a.content_hash


def test_adrs_optional(tmp_path):
    adsl, adtte, _ = tables()
    cut = load_cut(write(tmp_path / "c", adsl, adtte))
    assert cut.adrs is None


@pytest.mark.parametrize(
    ("column", "values", "rule"),
    [
        ("NAME", ["Ann Smith", "Bo Lee", "Cy Doe", "Di Roe"], "direct identifier column"),
        ("BRTHDTC", ["1960-01-02"] * 4, "direct identifier column"),
        ("ADDRESS", ["1 High St"] * 4, "direct identifier column"),
        ("CONTACT", ["x@example.org"] * 4, "e-mail"),
        ("NOTE2", ["patient reported feeling much better after the second cycle"] * 4, "free text"),
        ("VISITDT", ["12/03/1961"] * 4, "full calendar date"),
        # identifier words inside longer names (they passed a whole-name screen)
        ("PATIENT_NAME", ["Jane Doe", "Bo Lee", "Cy Doe", "Di Roe"], "direct identifier column"),
        ("SUBJECT_INITIALS", ["JD", "BL", "CD", "DR"], "direct identifier column"),
        ("BIRTHDATN", ["19610203"] * 4, "direct identifier column"),
    ],
)
def test_identifier_columns_refused(tmp_path, column, values, rule):
    adsl, adtte, adrs = tables()
    adsl[column] = values
    with pytest.raises(DataCutError, match=rule) as err:
        load_cut(write(tmp_path / "c", adsl, adtte, adrs))
    # the column's problem (a column not on the allow-list is refused for that too), at the
    # first data row (1-based), its value masked: never echoed whole
    p = next(p for p in err.value.problems if p.column == column and rule in p.rule)
    assert p.file.endswith("adsl.csv") and p.row == 1
    shown = values[0][:2] if len(values[0]) >= 6 else ""
    assert p.value == f"{shown}... ({len(values[0])} characters)"
    assert values[0] not in str(err.value)


def test_subject_missing_from_adsl_named(tmp_path):
    adsl, adtte, adrs = tables()
    adtte.loc[2, "USUBJID"] = "S9"
    with pytest.raises(
        DataCutError, match=r"adtte\.csv, row 3, column USUBJID: subject not in ADSL .*'S9'"
    ):
        load_cut(write(tmp_path / "c", adsl, adtte, adrs))


def test_negative_aval_named(tmp_path):
    adsl, adtte, adrs = tables()
    adtte.loc[3, "AVAL"] = -5.0
    with pytest.raises(
        DataCutError,
        match=r"row 4, column AVAL: AVAL must be a finite time in days >= 0; got '-5.0'",
    ):
        load_cut(write(tmp_path / "c", adsl, adtte, adrs))


def test_cnsr_outside_0_1_named(tmp_path):
    adsl, adtte, adrs = tables()
    adtte.loc[1, "CNSR"] = 2
    with pytest.raises(
        DataCutError,
        match=r"row 2, column CNSR: CNSR must be 0 \(event\) or 1 \(censored\); got '2'",
    ):
        load_cut(write(tmp_path / "c", adsl, adtte, adrs))


def test_duplicates_missing_columns_and_bad_response(tmp_path):
    adsl, adtte, adrs = tables()
    dup = pd.concat([adsl, adsl.iloc[[1]]], ignore_index=True)
    with pytest.raises(DataCutError, match=r"row 5, column USUBJID: duplicate subject in ADSL"):
        load_cut(write(tmp_path / "a", dup, adtte, adrs))
    with pytest.raises(DataCutError, match=r"ADTTE needs columns"):
        load_cut(write(tmp_path / "b", adsl, adtte.drop(columns="CNSR"), adrs))
    bad = adrs.copy()
    bad.loc[2, "AVALC"] = "GOOD"
    with pytest.raises(DataCutError, match=r"adrs\.csv, row 3, column AVALC"):
        load_cut(write(tmp_path / "c", adsl, adtte, bad))
    with pytest.raises(DataCutError, match="missing adtte dataset"):
        load_cut(write(tmp_path / "d", adsl, None))


def test_check_append_only(tmp_path):
    c1 = load_cut(write(tmp_path / "cut1", *tables(("S1", "S2"))))
    c2 = load_cut(write(tmp_path / "cut2", *tables(("S1", "S2", "S3", "S4"))))
    assert check_append_only([c1], c2) == []  # S1, S2 re-sent unchanged, S3, S4 appended
    same = load_cut(write(tmp_path / "again", *tables(("S1", "S2"))))
    assert check_append_only([c1, c2], same) == []
    adsl, adtte, adrs = tables(("S1", "S2", "S5"))
    adtte.loc[1, "AVAL"] = 999.0  # S2 re-sent with a different time
    c3 = load_cut(write(tmp_path / "cut3", adsl, adtte, adrs))
    issues = check_append_only([c1, c2], c3)
    assert [(i.usubjid, i.previous_cut, i.datasets) for i in issues] == [
        ("S2", "cut1", ("adtte",)),
        ("S2", "cut2", ("adtte",)),
    ]
    assert "append-only" in str(issues[0])


def test_endpoint_frame(tmp_path):
    cut = load_cut(write(tmp_path / "c", *tables()))
    tte = endpoint_frame(cut, endpoint="tte", paramcd="PFS", covariates=["AGE"])
    assert tte["event"].tolist() == [1, 0, 1, 0]
    assert tte["time"].tolist() == [100.0, 110.0, 120.0, 130.0]
    assert tte["AGE"].tolist() == [60, 61, 62, 63]
    resp = endpoint_frame(cut, endpoint="binary", control_arm="control")
    assert resp["usubjid"].tolist() == ["S1", "S3"] and resp["response"].tolist() == [1, 0]
    assert resp.attrs["cut_id"] == "c"
    with pytest.raises(DataCutError, match="no records with this PARAMCD"):
        endpoint_frame(cut, endpoint="tte", paramcd="OS")


@pytest.mark.slow
def test_update_control_from_cuts_tte_power_matches_gamma(tmp_path):
    # Control arm exponential times; two cuts (the second re-sends cut 1's subjects unchanged).
    from insilico_trials.infer.borrowing import update_control

    rng = np.random.default_rng(8)
    n = 60
    ids = [f"P{i:03d}" for i in range(n)]
    t = np.round(rng.exponential(300.0, n), 1) + 1.0
    c = rng.uniform(30, 600, n)
    adsl = pd.DataFrame({"USUBJID": ids, "ARM": "control"})
    adtte = pd.DataFrame(
        {"USUBJID": ids, "PARAMCD": "PFS", "AVAL": np.minimum(t, c), "CNSR": (t > c).astype(int)}
    )
    cut1 = load_cut(write(tmp_path / "cut1", adsl.iloc[:30], adtte.iloc[:30]))
    cut2 = load_cut(write(tmp_path / "cut2", adsl, adtte, fmt="parquet"))
    assert check_append_only([cut1], cut2) == []
    virtual = pd.DataFrame({"arm": "control", "time": rng.exponential(300.0, 200), "event": 1})
    frames = [endpoint_frame(c, endpoint="tte", paramcd="PFS", control_arm="control")
              for c in (cut1, cut2)]  # fmt: skip
    res = update_control(
        virtual, frames, method="power", params={"a0": 0.5}, endpoint="tte", seed=9,
        draws=1000, tune=500, engine="mcmc",
    )  # fmt: skip
    assert [s.n_real for s in res.states] == [30, 60]
    s = res.final
    # Gamma(1 + a0 d_v, 0.01 + a0 E_v) prior, + (d, E) of the real control data
    d = int((adtte["CNSR"] == 0).sum())
    e = adtte["AVAL"].sum() / 30.4375
    shape = 1 + 0.5 * 200 + d
    rate = 0.01 + 0.5 * virtual["time"].sum() / 30.4375 + e
    row = s.summary.set_index("param").loc["lambda_c[0]"]
    assert abs(row["mean"] - shape / rate) < 4 * row["mcse_mean"]
    assert s.closed_form.mean() == pytest.approx(shape / rate)
    # ELIR of Gamma(a, b) with an exponential likelihood is a - 1 events (RBesT)
    assert s.prior_ess == pytest.approx(0.5 * 200)  # events
    assert s.ess_unit == "events"


def test_a_linked_dataset_is_refused(tmp_path):
    """A cut carries its own files: a dataset that is a link (here to a file outside the cut)
    is refused, so nothing outside the cut can be read into an archive."""
    adsl, adtte, adrs = tables()
    elsewhere = write(tmp_path / "elsewhere", adsl, adtte, adrs)
    cut = tmp_path / "cut"
    cut.mkdir()
    for name in ("adsl", "adrs"):
        (cut / f"{name}.csv").write_bytes((elsewhere / f"{name}.csv").read_bytes())
    (cut / "adtte.csv").symlink_to(elsewhere / "adtte.csv")
    with pytest.raises(DataCutError, match="must be a regular file") as err:
        load_cut(cut)
    assert err.value.file.endswith("adtte.csv")
