"""Edge helpers of the CLI pipeline that need no Prefect."""

from pathlib import Path

import pytest

from insilico_trials.app.commands import attach_design
from insilico_trials.spec.protocol import load_protocol

ROOT = Path(__file__).resolve().parents[1]


def test_latest_matching_design_is_attached(tmp_path):
    protocol = load_protocol(ROOT / "protocols" / "design_binary_borrowing.yaml")
    sha8 = protocol.sha256()[:8]
    trial_dir = tmp_path / protocol.trial_id
    for name, text in (
        (f"design-20260101T000000Z-{sha8}", "old"),
        (f"design-20260102T000000Z-{sha8}", "new"),
        ("design-20260103T000000Z-deadbeef", "other protocol"),
    ):
        (trial_dir / name).mkdir(parents=True)
        (trial_dir / name / "oc.csv").write_text(f"scenario\n{text}\n")
    (trial_dir / f"design-20260102T000000Z-{sha8}" / "calibration.csv").write_text("x\n1\n")
    stage = tmp_path / "stage"
    stage.mkdir()
    assert attach_design(stage, protocol, trial_dir) == ["design/oc.csv", "design/calibration.csv"]
    assert (stage / "design" / "oc.csv").read_text() == "scenario\nnew\n"


def test_no_design_attaches_nothing(tmp_path):
    protocol = load_protocol(ROOT / "protocols" / "onc_phase2_orr.yaml")
    stage = tmp_path / "stage"
    stage.mkdir()
    assert attach_design(stage, protocol, tmp_path / "nothing") == []
    assert not (stage / "design").exists()


def test_unreachable_tracking_server_fails_before_any_work(tmp_path, monkeypatch, capsys):
    from insilico_trials.app.cli import main

    monkeypatch.chdir(tmp_path)
    # Nothing listens on port 9 of loopback; no retries so the test is quick.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    code = main(["run", str(ROOT / "protocols" / "onc_phase2_orr.yaml"), "--reports", "reports"])
    assert code == 1
    err = capsys.readouterr().err
    assert "MLflow tracking store http://127.0.0.1:9 cannot be reached" in err
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize("command", ["run", "design"])
def test_unreachable_prefect_server_fails_before_any_work(tmp_path, monkeypatch, capsys, command):
    from insilico_trials.app.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # nothing listens there
    name = "onc_phase2_orr.yaml" if command == "run" else "design_binary_borrowing.yaml"
    args = [command, str(ROOT / "protocols" / name), "--reports", "reports"]
    if command == "design":
        args += ["--replicates", "10"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "the Prefect API at PREFECT_API_URL=http://127.0.0.1:9/api cannot be reached" in err
    assert not (tmp_path / "reports").exists()
    assert not (tmp_path / ".insilico").exists()  # not even the tracking store was touched
