"""The run layer: run_trial on the serial executor, sinks, the declared sensitivity stage,
pre-flight checks, and the serial run against the orchestrated (Prefect-on-Dask) one."""

from __future__ import annotations

import json

import pytest

from insilico_trials.app.cli import main
from insilico_trials.io.archive import compare_outputs, read_manifest, sha256_file
from insilico_trials.io.outputs import write_run_outputs
from insilico_trials.io.spool import ParquetSpool
from insilico_trials.run.executor import Serial
from insilico_trials.run.trial import run_trial
from insilico_trials.sim import trial
from insilico_trials.spec.protocol import load_protocol
from insilico_trials.testing import mock_fit, with_fields, write_protocol
from tests.conftest import tiny_protocol


def _archive(tmp_path, result, protocol_path, name):
    folder = tmp_path / name
    folder.mkdir()
    groups = write_run_outputs(folder, protocol_path, result)
    return folder, groups


@pytest.mark.slow
def test_memory_and_parquet_sinks_write_the_same_bytes(tmp_path):
    """The sink (memory or Parquet parts) and the chunk size change no byte of the archive."""
    path = tiny_protocol(tmp_path, n=9)
    protocol = load_protocol(path)
    keep = tuple(trial.summary_columns(protocol))
    memory = run_trial(protocol, chunk_size=9, fit=mock_fit)
    parts = run_trial(
        protocol, sink=ParquetSpool(tmp_path / "spool", keep=keep), chunk_size=2, fit=mock_fit
    )
    a, groups = _archive(tmp_path, memory, path, "memory")
    b, _ = _archive(tmp_path, parts, path, "parts")
    assert "sensitivity.json" in groups["outputs"]
    for name in groups["outputs"]:
        assert sha256_file(a / name) == sha256_file(b / name), name


@pytest.mark.slow
def test_sensitivity_stage_is_declared_and_can_be_switched_off(tmp_path):
    protocol = load_protocol(tiny_protocol(tmp_path, n=6))
    lines: list[str] = []
    on = run_trial(protocol, fit=mock_fit, progress=lines.append)
    assert on.sensitivity is not None and on.sensitivity["n_evaluations"] > 0
    # stages: cohort, simulate, synthetic control (the ORR example borrows), fit, sensitivity
    assert any(line.startswith("[5/5] sensitivity: Sobol indices of") for line in lines)
    assert any(line.startswith("[3/5] synthetic control: 4 replicate") for line in lines)
    assert "sensitivity" in on.timings
    off_protocol = with_fields(protocol, {"sensitivity.sobol": False})
    path = write_protocol(off_protocol, tmp_path / "off.yaml")
    lines.clear()
    off = run_trial(off_protocol, fit=mock_fit, progress=lines.append)
    assert off.sensitivity is None and "sensitivity" not in off.timings
    assert lines[0].startswith("[1/4] cohort") and not any("sensitivity" in x for x in lines)
    _, groups = _archive(tmp_path, off, path, "off")
    assert "sensitivity.json" not in groups["outputs"]


@pytest.mark.slow
def test_sensitivity_stage_equals_the_serial_function(tmp_path):
    """Run through the executor on the run's cohorts, the stage computes what
    ``sobol_sensitivity`` computes on its own."""
    from insilico_trials.infer.sensitivity import sobol_sensitivity

    protocol = load_protocol(tiny_protocol(tmp_path, n=6))
    result = run_trial(protocol, executor=Serial(), fit=mock_fit)
    alone = sobol_sensitivity(protocol)
    assert json.dumps(result.sensitivity, sort_keys=True) == json.dumps(alone, sort_keys=True)


def test_sobol_n_base_must_be_a_power_of_two(tmp_path):
    protocol = load_protocol(tiny_protocol(tmp_path))
    with pytest.raises(ValueError, match="must be a power of 2"):
        with_fields(protocol, {"sensitivity.n_base": 48})


def test_validate_reports_impossible_eligibility_with_its_line(tmp_path, capsys):
    """Loading never samples; the pre-flight of validate (and run) finds the criterion no
    patient can meet and names its line."""
    protocol = load_protocol(tiny_protocol(tmp_path))
    bad = with_fields(protocol, {"population.eligibility.inclusion": ["AGE >= 18", "AGE > 150"]})
    path = write_protocol(bad, tmp_path / "bad.yaml")
    load_protocol(path)  # valid schema
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    lines = path.read_text().splitlines()
    (issue,) = err
    file, line, rest = issue.split(":", 2)
    assert file == str(path) and "AGE > 150" in lines[int(line) - 1]
    assert "population.eligibility.inclusion[1]: no patient passes this criterion" in rest
    reports = tmp_path / "reports"
    assert main(["run", str(path), "--reports", str(reports)]) == 2
    assert capsys.readouterr().err.strip() == issue
    assert not reports.exists()


def test_report_on_an_update_folder_is_a_clear_error(tmp_path, capsys):
    from tests.test_report import build_archive

    archive, _ = build_archive(tmp_path)
    folder = archive / "updates" / "001"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(
        json.dumps({"inputs": {}, "outputs": {}, "documents": {}, "previous_sha256": "0" * 64})
    )
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "this is not a run archive" in err and "Traceback" not in err
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err


@pytest.mark.slow
def test_serial_run_equals_the_orchestrated_run(reference_runs, tmp_path):
    """run_trial on the default serial executor (no Prefect, no Dask, MCMC in this process)
    reproduces every numeric output of the reference archive run on Prefect-on-Dask."""
    archive = reference_runs["one"]
    protocol = load_protocol(archive / "protocol.yaml")
    result = run_trial(protocol)
    assert result.run_id == ""  # no orchestrator
    out = tmp_path / "serial"
    out.mkdir()
    write_run_outputs(out, archive / "protocol.yaml", result)
    rows = compare_outputs(read_manifest(archive)["outputs"], out)
    assert [name for name, same, _ in rows if not same] == []
    assert len(rows) >= 8


def test_posterior_archived_as_inference_data_that_arviz_opens(tmp_path):
    """posterior.nc is ArviZ InferenceData (NetCDF): arviz opens it, it holds the same draws as
    posterior.parquet, and the same draws give the same bytes."""
    import arviz as az
    import numpy as np
    import pandas as pd

    path = tiny_protocol(tmp_path, n=6)
    result = run_trial(load_protocol(path), fit=mock_fit)
    a, groups = _archive(tmp_path, result, path, "a")
    b, _ = _archive(tmp_path, result, path, "b")
    assert "posterior.nc" in groups["outputs"]
    assert sha256_file(a / "posterior.nc") == sha256_file(b / "posterior.nc")
    idata = az.from_netcdf(a / "posterior.nc")
    post = idata["posterior"].to_dataset()
    table = pd.read_parquet(a / "posterior.parquet")
    for name in ("p_c", "p_t", "rate_difference"):
        np.testing.assert_array_equal(post[name].values.ravel(), table[name].to_numpy())
    assert az.summary(idata, var_names=["rate_difference"]).shape[0] == 1
