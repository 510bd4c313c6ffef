"""`insilico-trials pk simulate`: NONMEM-style CSV in, CP and amounts out; bad rows exit 2."""

from pathlib import Path

import pandas as pd
import pytest

from insilico_trials.app.cli import main

GOOD = """ID,TIME,EVID,AMT,CMT,II,ADDL,RATE,SS,CL,V1,Q,V2,KA
1,0,1,100,1,24,2,0,0,1,20,2,10,1
1,1,0,0,2,0,0,0,0,1,20,2,10,1
1,12,0,0,2,0,0,0,0,1,20,2,10,1
"""


def test_simulate_writes_one_row_per_input_row(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text(GOOD)
    out = tmp_path / "o.csv"
    assert main(["pk", "simulate", str(data), "--model", "pk2cmt", "-o", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table.columns[:4]) == ["ID", "TIME", "EVID", "CP"]
    assert {"A1", "A2", "A3"} <= set(table.columns)
    assert len(table) == 3
    # Mass in the system after a 100 mg oral dose is at most 100 mg.
    assert (table[["A1", "A2", "A3"]].sum(axis=1) <= 100 + 1e-9).all()
    assert table["CP"].iloc[1] == pytest.approx(table["A2"].iloc[1] / 20)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("1,12,0,0,2", "1,12,7,0,2"), "row 3"),  # EVID out of range
        (lambda t: t.replace("1,12,0,0,2", "1,-12,0,0,2"), "row 3"),  # negative time
        (lambda t: t.replace("1,12,0,0,2", "1,0.5,0,0,2"), "row 3"),  # unsorted within ID
        (lambda t: t.replace(",KA\n", ",KX\n"), "KA"),  # missing parameter column
    ],
)
def test_bad_rows_exit_2_and_write_nothing(tmp_path, capsys, edit, message):
    data = tmp_path / "d.csv"
    data.write_text(edit(GOOD))
    out = tmp_path / "o.csv"
    assert main(["pk", "simulate", str(data), "--model", "pk2cmt", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and data.name in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv"]


def test_unknown_model(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text(GOOD)
    assert (
        main(["pk", "simulate", str(data), "--model", "pk9cmt", "-o", str(tmp_path / "o.csv")]) == 2
    )
    assert "pk9cmt" in capsys.readouterr().err
    assert not Path(tmp_path / "o.csv").exists()
