"""A protocol names a model file (pk.model: PATH): validation, identity, the run and its archive."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
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
    protocol = load_protocol(path)
    ours = run_trial(protocol, fit=mock_fit)
    ref = run_trial(load_protocol(builtin_path), fit=mock_fit)
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
