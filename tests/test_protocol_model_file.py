"""A protocol names a model file (pk.model: PATH): validation, identity, the run and its archive."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from insilico_trials.io.archive import verify_archive, write_manifest
from insilico_trials.io.outputs import write_run_outputs
from insilico_trials.run.trial import run_trial
from insilico_trials.spec.modelfile import UserModel, library_path
from insilico_trials.spec.protocol import ProtocolError, load_protocol
from insilico_trials.testing import mock_fit
from tests.conftest import tiny_protocol


def _with_model_file(tmp_path: Path, *, n: int = 6) -> tuple[Path, Path]:
    """The tiny ORR protocol twice: with the built-in pk1cmt and with the shipped model file."""
    builtin = tiny_protocol(tmp_path, n=n)
    folder = tmp_path / "study"
    (folder / "models").mkdir(parents=True)
    shutil.copyfile(library_path("pk1cmt"), folder / "models" / "pk1cmt.yaml")
    text = builtin.read_text()
    assert "model: pk1cmt\n" in text
    path = folder / "protocol.yaml"
    path.write_text(text.replace("model: pk1cmt\n", "model: models/pk1cmt.yaml\n"))
    return builtin, path


def _no_sobol(path: Path) -> Path:
    """The protocol without its Sobol stage (these tests are about the PK and tumour)."""
    import yaml

    data = yaml.safe_load(path.read_text())
    data["sensitivity"] = {"sobol": False}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_protocol_loads_its_model_file_and_hashes_its_content(tmp_path: Path) -> None:
    _, path = _with_model_file(tmp_path)
    protocol = load_protocol(path)
    assert isinstance(protocol.pk_model(), UserModel)
    assert protocol.pk_model().name == "pk1cmt"
    digest = protocol.sha256()
    again = pickle.loads(pickle.dumps(protocol))  # as Dask ships it to workers
    assert again.sha256() == digest and again.pk_model().parameters == ("CL", "V", "KA")
    # same path, other content: another protocol
    model = path.parent / "models" / "pk1cmt.yaml"
    model.write_text(
        model.read_text().replace("KA * DEPOT - CL / V * CENT", "KA * DEPOT - CL * CENT / V")
    )
    assert load_protocol(path).sha256() != digest


@pytest.mark.parametrize(
    ("model", "edit", "words"),
    [
        ("models/missing.yaml", None, "model file not found"),
        ("../pk1cmt.yaml", None, "relative to the protocol's folder"),
        ("/abs/pk1cmt.yaml", None, "relative to the protocol's folder"),
        ("protocol.yaml", None, "not protocol.yaml"),
        ("pk9cmt", None, "unknown PK model 'pk9cmt'"),
        ("models/pk1cmt.yaml", ("CL / V * CENT", "CL / VC * CENT"), "unknown name 'VC'"),
        ("models/pk1cmt.yaml", ("KA: {unit: 1/h", "KA: {unit: 1/min"), "takes KA in 1/min"),
        (
            "models/pk1cmt.yaml",
            ("  KA: {unit", "  KTR: {unit: 1/h}\n  KA: {unit"),
            "reads KTR (1/h); declare it",
        ),
    ],
)
def test_bad_model_references_are_protocol_errors_with_lines(tmp_path, model, edit, words) -> None:
    _, path = _with_model_file(tmp_path)
    text = path.read_text()
    path.write_text(text.replace("model: models/pk1cmt.yaml", f"model: {model}"))
    if edit is not None:
        file = path.parent / "models" / "pk1cmt.yaml"
        assert edit[0] in file.read_text()
        file.write_text(file.read_text().replace(*edit))
    lines = path.read_text().splitlines()
    start = lines.index("pk:")
    line = next(i for i in range(start, len(lines)) if "model:" in lines[i]) + 1
    with pytest.raises(ProtocolError) as info:
        load_protocol(path)
    message = str(info.value)
    assert words in message, message
    if "takes KA" in words:  # the unit is the population's, at its own line
        assert f"{path}:" in message and "population.parameters.KA.unit" in message, message
    else:
        assert f"{path}:{line}: pk.model" in message, message


@pytest.mark.slow
def test_run_with_a_model_file_matches_the_built_in_model_and_archives_the_file(
    tmp_path: Path,
) -> None:
    builtin_path, path = _with_model_file(tmp_path)
    protocol = load_protocol(_no_sobol(path))
    ours = run_trial(protocol, fit=mock_fit)
    ref = run_trial(load_protocol(_no_sobol(builtin_path)), fit=mock_fit)
    # the ODE solution (rtol 1e-8) against the exact one, through exposure to the tumour model
    for column in ("auc_first_mg_h_l", "cmax_first_mg_l", "auc_last_mg_h_l", "ctrough_last_mg_l"):
        a = np.concatenate([p[column].to_numpy() for p in ours.tables.parts("exposure")])
        b = np.concatenate([p[column].to_numpy() for p in ref.tables.parts("exposure")])
        assert b.max() > 0
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9 * b.max(), err_msg=column)
    for x, y in zip(ours.tables.parts("endpoints"), ref.tables.parts("endpoints"), strict=True):
        assert x["best_response"].tolist() == y["best_response"].tolist()
        np.testing.assert_allclose(x["best_pct_change"], y["best_pct_change"], rtol=1e-6)

    archive = tmp_path / "archive"
    archive.mkdir()
    groups = write_run_outputs(archive, path, ours)
    assert "models/pk1cmt.yaml" in groups["inputs"]
    write_manifest(archive, inputs=groups["inputs"], outputs=groups["outputs"], documents=[],
                   meta={})  # fmt: skip
    assert verify_archive(archive) == []
    # the archived protocol loads the archived model and is the same protocol
    assert load_protocol(archive / "protocol.yaml").sha256() == protocol.sha256()
    # a rewritten model file is caught
    model = archive / "models" / "pk1cmt.yaml"
    model.write_text(model.read_text() + "# edited\n")
    problems = [str(p) for p in verify_archive(archive)]
    assert any("models/pk1cmt.yaml" in p and "modified" in p for p in problems), problems


def _pkpd_protocol(tmp_path: Path, *, interval_h: float = 2.0, file: bool = True) -> Path:
    """The tiny ORR protocol with Claret driven by the concentration: the PK-PD model file as
    pk.model and disease.model, or the built-ins (pk1cmt, claret with exposure: concentration).
    KD per mg/L of concentration: the protocol's KD per mg*h/L of daily AUC times 24 h."""
    import yaml

    data = yaml.safe_load(tiny_protocol(tmp_path, n=6).read_text())
    kd = data["population"]["parameters"]["KD"]
    kd["typical"] = kd["typical"] * 24.0
    kd["unit"] = "1/week per mg/L"
    data["pk"]["output_interval_h"] = interval_h
    data["sensitivity"] = {"sobol": False}
    if file:
        data["pk"]["model"] = data["disease"]["model"] = "models/pk1cmt_claret.yaml"
    else:
        data["disease"]["exposure"] = "concentration"
    folder = tmp_path / ("file" if file else f"builtin-{interval_h}")
    (folder / "models").mkdir(parents=True)
    shutil.copyfile(library_path("pk1cmt_claret"), folder / "models" / "pk1cmt_claret.yaml")
    path = folder / "protocol.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _true_sld(result) -> pd.DataFrame:
    return pd.concat(list(result.tables.parts("tumour_sld")), ignore_index=True)


def test_disease_model_file_must_be_the_pk_file_and_have_sld(tmp_path: Path) -> None:
    path = _pkpd_protocol(tmp_path)
    assert load_protocol(path).disease.is_file
    text = path.read_text()
    path.write_text(text.replace("model: models/pk1cmt_claret.yaml", "model: pk1cmt", 1))
    with pytest.raises(ProtocolError, match=r"name the same file in pk\.model"):
        load_protocol(path)
    path.write_text(text)
    model = path.parent / "models" / "pk1cmt_claret.yaml"
    model.write_text(model.read_text().replace("  SLD: TUMOUR\n", "  SIZE: TUMOUR\n"))
    with pytest.raises(ProtocolError, match="has no output SLD"):
        load_protocol(path)


@pytest.mark.slow
def test_pkpd_model_file_drives_the_tumour_like_the_built_in_pipeline(tmp_path: Path) -> None:
    # The file solves PK and Claret together; the built-ins take the concentration on the PK
    # grid into Claret's closed form, with an error of second order in the grid step. Halving
    # the built-in's grid must bring it 4x closer to the file (measured: 1.8e-2, 4.8e-3, 1.2e-3,
    # 3.0e-4 relative at 1, 0.5, 0.25, 0.125 h): the file is the limit the built-in converges to.
    ours = _true_sld(run_trial(load_protocol(_pkpd_protocol(tmp_path)), fit=mock_fit))
    coarse = _true_sld(run_trial(load_protocol(_pkpd_protocol(tmp_path, interval_h=0.5,
                                                              file=False)), fit=mock_fit))  # fmt: skip
    fine = _true_sld(run_trial(load_protocol(_pkpd_protocol(tmp_path, interval_h=0.25,
                                                            file=False)), fit=mock_fit))  # fmt: skip
    assert ours[["arm", "patient", "visit_day"]].equals(fine[["arm", "patient", "visit_day"]])
    a, c, f = (t["sld_mm"].to_numpy() for t in (ours, coarse, fine))
    own_error = np.abs(c - f)
    assert own_error.max() > 0  # the built-in's grid error is there to be measured
    assert np.all(np.abs(a - f) <= 2 * own_error + 1e-7 * f), (
        np.max(np.abs(a - f) / f), np.max(own_error / f))  # fmt: skip
    assert 0.2 < np.max(np.abs(a - f)) / np.max(np.abs(a - c)) < 0.3  # second order, toward a
    # the drug is really linked: treated tumours end smaller relative to baseline
    growth = ours.pivot_table(index=["arm", "patient"], columns="visit_day", values="sld_mm")
    ratio = (growth.iloc[:, -1] / growth.iloc[:, 0]).groupby(level="arm").mean()
    assert ratio["tki200"] < ratio["control"] - 0.1, ratio


def test_routes_and_transforms(tmp_path: Path) -> None:
    from insilico_trials.testing import with_arm_sizes

    _, path = _with_model_file(tmp_path)
    protocol = load_protocol(path)
    # test transforms keep the file read for the protocol
    assert with_arm_sizes(protocol, 3).pk_model() is protocol.pk_model()
    # an iv arm needs an iv route in the file
    path.write_text(path.read_text().replace("route: oral", "route: iv_bolus"))
    with pytest.raises(ProtocolError, match=r"arms\[1\]\.regimen\.route.*no iv route"):
        load_protocol(path)


def test_sobol_stage_varies_the_files_uncertain_parameters(tmp_path: Path) -> None:
    from insilico_trials.infer.sensitivity import _uncertain_parameters

    protocol = load_protocol(_pkpd_protocol(tmp_path))
    # the file's inputs with a stated uncertainty_rse, then clearance
    assert _uncertain_parameters(protocol) == ["KL", "KD", "LAMBDA", "CL"]
