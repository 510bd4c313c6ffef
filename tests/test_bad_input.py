"""Bad input of every kind a user (or an attacker) can give: refused with a clear message and the
documented exit code, nothing written, never a traceback.

Each case edits a copy of a shipped example (the protocol file's text, where the case is about
how the file is read), runs the command in this process and checks: the exit code, a phrase of
the message, no traceback, no archive or output written. A property-based test then feeds
random values into every protocol field and every dataset cell: each is accepted or refused
with the product's own error, never another exception.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from insilico_trials.app.cli import main
from insilico_trials.errors import InsilicoError
from insilico_trials.io.realdata import load_cut
from insilico_trials.spec.protocol import ProtocolError, TrialProtocol, load_protocol

ROOT = Path(__file__).resolve().parents[1]
ONC = ROOT / "protocols" / "onc_phase2_orr.yaml"
DESIGN = ROOT / "protocols" / "design_binary_borrowing.yaml"


def _edit(old: str, new: str, source: Path = ONC) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        text = source.read_text()
        assert old in text, old
        path = folder / "p.yaml"
        path.write_text(text.replace(old, new, 1))
        return path

    return make


def _text(body: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / "p.yaml"
        path.write_text(body)
        return path

    return make


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)

# (case, protocol maker, extra arguments, exit code, phrase of the message)
PROTOCOL_CASES = [
    ("nan delta", _edit("delta: 0.10", "delta: .nan"), [], 2, "finite number"),
    ("-inf delta", _edit("delta: 0.10", "delta: -.inf"), [], 2, "finite number"),
    ("nan covariate mean", _edit("mean: 72,", "mean: .nan,"), [], 2, "finite number"),
    (
        "inf typical value",
        _edit("typical: 10, unit: L/h", "typical: .inf, unit: L/h"),
        [],
        2,
        "finite number",
    ),
    ("boolean arm size", _edit("    n: 40\n", "    n: true\n"), [], 2, "valid integer"),
    ("fractional arm size", _edit("    n: 40\n", "    n: 40.5\n"), [], 2, "valid integer"),
    ("CL in mL/min", _edit("unit: L/h", "unit: mL/min"), [], 2, "takes CL in L/h"),
    (
        "CL in mL/h, unit kept",
        _edit("typical: 10, unit: L/h", "typical: 10000000, unit: L/h"),
        [],
        2,
        "outside the plausible range [0.0001, 10000] L/h",
    ),
    ("dose 1e300", _edit("dose: 200,", "dose: 1.0e+300,"), [], 2, "less than or equal to 1000000"),
    (
        "python tag",
        _text("trial_id: !!python/object/apply:os.system ['echo pwned']\n"),
        [],
        2,
        "not plain YAML data",
    ),
    ("unhashable key", _text("? [a, b]\n: 1\n"), [], 2, "a key must be a plain name"),
    ("alias bomb", _text(ALIAS_BOMB), [], 2, "anchors and aliases"),
    (
        "deep expression",
        _edit('"AGE >= 18"', '"' + "-" * 990 + 'AGE >= 18"'),
        [],
        2,
        "nested too deeply",
    ),
    (
        "huge literal",
        _edit('"AGE >= 18"', '"AGE >= 1' + "0" * 400 + '"'),
        [],
        2,
        "number too large",
    ),
    (
        "infinite follow-up",
        _edit("follow_up_weeks: 48", "follow_up_weeks: .inf"),
        [],
        2,
        "finite number",
    ),
    ("100 workers", _edit("seed:", "seed:"), ["--workers", "100"], 2, "at most"),
]


@pytest.mark.parametrize(
    ("case", "make", "extra", "code", "phrase"),
    [c for c in PROTOCOL_CASES if c[3] is not None],
    ids=[c[0] for c in PROTOCOL_CASES if c[3] is not None],
)
def test_bad_protocol_refused_before_any_work(tmp_path, capsys, case, make, extra, code, phrase):
    path = make(tmp_path)
    reports = tmp_path / "reports"
    for command in (["validate", str(path)], ["run", str(path), "--reports", str(reports)]):
        if command[0] == "validate" and extra:
            continue
        got = main([*command, *(extra if command[0] == "run" else [])])
        err = capsys.readouterr().err
        assert got == code, (case, command[0], err)
        assert phrase in err, (case, err)
        assert "Traceback" not in err
    assert not reports.exists()  # nothing written, not even the trial's folder
    assert not (tmp_path / ".insilico").exists()


@pytest.mark.parametrize(
    ("field", "value", "phrase"),
    [
        ("pk.output_interval_h", 1e-4, "concentration points per patient"),
        ("endpoints.visit_every_weeks", 1e-4, "visits per patient"),
        ("execution.chunk_size", 1_000_000, "lower chunk_size"),
    ],
)
def test_grids_beyond_memory_refused_with_the_estimate(tmp_path, field, value, phrase):
    from insilico_trials.testing import with_fields

    with pytest.raises(Exception, match=phrase):
        with_fields(load_protocol(ONC), {field: value})


def test_design_replicates_beyond_reason_refused(tmp_path, capsys):
    reports = tmp_path / "reports"
    assert (
        main(["design", str(DESIGN), "--replicates", "1000000000", "--reports", str(reports)]) == 2
    )
    err = capsys.readouterr().err
    assert "simulated trials; at most" in err and "Traceback" not in err
    assert not reports.exists()


# ---------------------------------------------------------------------------- pk simulate


def _nm(folder: Path, rows: str, header: str = "ID,TIME,AMT,EVID,CMT,CL,V,KA") -> Path:
    path = folder / "data.csv"
    path.write_text(header + "\n" + rows)
    return path


@pytest.mark.parametrize(
    ("case", "make", "phrase"),
    [
        ("nan AMT", lambda d: _nm(d, "1,0,nan,1,1,1,20,1\n1,1,0,0,2,1,20,1\n"), "finite number"),
        ("inf TIME", lambda d: _nm(d, "1,inf,100,1,1,1,20,1\n"), "finite number"),
        (
            "duplicate header",
            lambda d: _nm(d, "1,0,100,1,1,1,20,1,2\n", "ID,TIME,AMT,EVID,CMT,CL,V,KA,CL"),
            "duplicate column",
        ),
        (
            "huge ADDL",
            lambda d: _nm(
                d, "1,0,100,1,1,1,20,1,24,100000000\n", "ID,TIME,AMT,EVID,CMT,CL,V,KA,II,ADDL"
            ),
            "ADDL must be <=",
        ),
        ("a folder", lambda d: d, "a folder"),
    ],
)
def test_bad_pk_data_refused(tmp_path, capsys, case, make, phrase):
    data = make(tmp_path)
    out = tmp_path / "out.csv"
    assert main(["pk", "simulate", str(data), "--model", "pk1cmt", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert phrase in err and "Traceback" not in err, (case, err)
    assert not out.exists()


def test_pk_output_equal_to_input_refused(tmp_path, capsys):
    data = _nm(tmp_path, "1,0,100,1,1,1,20,1\n1,1,0,0,2,1,20,1\n")
    before = data.read_bytes()
    assert main(["pk", "simulate", str(data), "--model", "pk1cmt", "-o", str(data)]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert data.read_bytes() == before


# ---------------------------------------------------------------------------- real data cuts


@pytest.fixture(scope="module")
def archive_made(tmp_path_factory):
    from tests.test_integrity import make_archive

    return make_archive(tmp_path_factory.mktemp("bad-input") / "made")


def _cut(folder: Path, *, adrs: bool = True, bor: bool = True, rows: int = 2, **extra) -> Path:
    folder.mkdir(parents=True)
    ids = [f"U{i}" for i in range(rows)]
    adsl = pd.DataFrame(
        {"USUBJID": ids, "ARM": "control", **{k: [v] * rows for k, v in extra.items()}}
    )
    adsl.to_csv(folder / "adsl.csv", index=False)
    pd.DataFrame({"USUBJID": ids, "PARAMCD": "PFS", "AVAL": 90.0, "CNSR": 1}).to_csv(
        folder / "adtte.csv", index=False
    )
    if adrs:
        code = "BOR" if bor else "CBOR"
        pd.DataFrame({"USUBJID": ids, "PARAMCD": code, "AVALC": "SD"}).to_csv(
            folder / "adrs.csv", index=False
        )
    return folder


@pytest.mark.parametrize(
    ("case", "kwargs", "phrase"),
    [
        ("no adrs for a response endpoint", {"adrs": False}, "missing adrs dataset"),
        ("no BOR records", {"bor": False}, "no records with this PARAMCD"),
        ("no rows", {"rows": 0}, "adsl has no rows"),
        ("a patient's name", {"PATIENT_NAME": "Jane Doe"}, "direct identifier column"),
    ],
)
def test_bad_cut_refused_and_archive_unchanged(
    archive_made, tmp_path, capsys, case, kwargs, phrase
):
    from insilico_trials.io.archive import sha256_file

    archive = tmp_path / "archive"
    shutil.copytree(archive_made, archive)
    before = {p: sha256_file(p) for p in archive.rglob("*") if p.is_file()}
    cut = _cut(tmp_path / "cut", **kwargs)
    code = main(["update", str(archive), "--data", str(cut)])
    err = capsys.readouterr().err
    assert code == 2, (case, err)
    assert phrase in err and "Traceback" not in err, (case, err)
    after = {p: sha256_file(p) for p in archive.rglob("*") if p.is_file() and ".lock" not in p.name}
    assert after == {p: h for p, h in before.items() if ".lock" not in p.name}


def test_a_read_only_report_target_is_a_clear_error(archive_made, tmp_path, capsys):
    archive = tmp_path / "archive"
    shutil.copytree(archive_made, archive)
    target = tmp_path / "no-such-folder" / "deeper" / "r.html"
    code = main(["report", str(archive), "--output", str(target)])
    err = capsys.readouterr().err
    assert code == 1 and "cannot write" in err and "Traceback" not in err


# ---------------------------------------------------------------------------- fuzzing

FUZZ_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.lists(st.integers(min_value=-3, max_value=3), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def _leaf_paths(data, prefix=()):
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _leaf_paths(v, (*prefix, k))
    elif isinstance(data, list) and data:
        for i, v in enumerate(data):
            yield from _leaf_paths(v, (*prefix, i))
    else:
        yield prefix


BASE = load_protocol(ONC).model_dump(mode="json")
LEAVES = sorted(_leaf_paths(BASE), key=str)


@settings(
    max_examples=150, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)  # fmt: skip
@given(path=st.sampled_from(LEAVES), value=FUZZ_VALUES)
@pytest.mark.slow
def test_fuzz_protocol_fields(path, value):
    """Any value in any field: a valid protocol or a ProtocolError naming the field, nothing
    else; an accepted protocol holds no NaN or infinity."""
    import copy

    import yaml

    from insilico_trials.spec.yamlmap import YamlLoadError  # noqa: F401  (a ProtocolError too)

    data = copy.deepcopy(BASE)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    text = yaml.safe_dump(data, sort_keys=False)
    import tempfile

    from insilico_trials.spec.protocol import load_protocol as load

    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "p.yaml"
        file.write_text(text)
        try:
            protocol = load(file)
        except ProtocolError as exc:
            assert exc.issues and all(i.line >= 1 for i in exc.issues)
            return
    assert isinstance(protocol, TrialProtocol)
    for leaf in _leaf_paths(protocol.model_dump(mode="json")):
        v = protocol.model_dump(mode="json")
        for key in leaf:
            v = v[key]
        assert not (isinstance(v, float) and not math.isfinite(v)), (leaf, v)


CUT_COLUMNS = [("adsl", "USUBJID"), ("adsl", "ARM"), ("adtte", "AVAL"), ("adtte", "CNSR"),
               ("adtte", "PARAMCD"), ("adrs", "AVALC")]  # fmt: skip


@settings(
    max_examples=120, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)  # fmt: skip
@given(
    where=st.sampled_from(CUT_COLUMNS),
    row=st.integers(min_value=0, max_value=1),
    value=st.one_of(st.text(max_size=40), st.floats(allow_nan=True, allow_infinity=True),
                    st.integers(min_value=-(10**9), max_value=10**9)),
)  # fmt: skip
@pytest.mark.slow
def test_fuzz_dataset_cells(tmp_path_factory, where, row, value):
    """Any value in any cell of a cut: the cut loads or is refused with a DataCutError naming
    file, row and column; never another exception."""
    folder = tmp_path_factory.mktemp("cut")
    cut = _cut(folder / "c")
    name, column = where
    frame = pd.read_csv(cut / f"{name}.csv", dtype=str, keep_default_na=False)
    frame[column] = frame[column].astype(object)
    frame.loc[row, column] = value
    frame.to_csv(cut / f"{name}.csv", index=False)
    try:
        load_cut(cut)
    except InsilicoError as exc:
        assert str(exc) and "Traceback" not in str(exc)


@pytest.mark.parametrize(
    ("args", "env", "code", "phrase"),
    [
        (["--dask-address", "tcp://127.0.0.1:1"], {}, 1, "Dask scheduler at tcp://127.0.0.1:1"),
        (["--dask-address", "not-an-address"], {}, 2, "expected tcp://HOST:PORT"),
        ([], {"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"}, 1, "MLflow tracking store"),
    ],
)
def test_unreachable_services_refused_in_seconds(
    tmp_path, capsys, monkeypatch, args, env, code, phrase
):
    import time

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    reports = tmp_path / "reports"
    t = time.monotonic()
    assert main(["run", str(ONC), "--reports", str(reports), *args]) == code
    assert time.monotonic() - t < 60  # a bound against hanging, not a timing figure
    err = capsys.readouterr().err
    assert phrase in err and "nothing was run" in err and "Traceback" not in err
    assert not reports.exists()


def test_cuts_must_come_from_the_archives_trial(tmp_path):
    """With real_data.study_id every cut must carry that STUDYID; without it, the first
    cut's STUDYID binds the archive."""
    from types import SimpleNamespace

    from insilico_trials.app.commands import _require_one_study
    from insilico_trials.testing import with_fields

    def cut(study: str | None, name: str):
        adsl = pd.DataFrame({"USUBJID": ["A"], "ARM": ["control"]})
        if study is not None:
            adsl["STUDYID"] = study
        return SimpleNamespace(adsl=adsl, cut_id=name)

    free = load_protocol(ONC)
    _require_one_study(free, [cut("ABI-01", "001"), cut("ABI-01", "002")], tmp_path)
    with pytest.raises(InsilicoError, match=r"STUDYID \['ABI-01', 'ONC-7'\] differ"):
        _require_one_study(free, [cut("ABI-01", "001"), cut("ONC-7", "002")], tmp_path)
    bound = with_fields(free, {"real_data.study_id": "ABI-01"})
    assert bound.sha256() != free.sha256()
    _require_one_study(bound, [cut("ABI-01", "001")], tmp_path)
    for other in (cut("ONC-7", "001"), cut(None, "001")):
        with pytest.raises(InsilicoError, match="takes cuts of study 'ABI-01' only"):
            _require_one_study(bound, [other], tmp_path)
