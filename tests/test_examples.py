"""Every shipped protocol runs end to end (serial executor, the real outcome fit), and its
archive's exposure table has every column of every arm.

``dose_ranging_pkpd.yaml`` crashed after 73 s before (the spool kept the first arm's columns and
dropped Tmax); no test ran every example then.
"""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from insilico_trials.io.archive import read_manifest, verify_archive, write_manifest
from insilico_trials.io.outputs import write_run_outputs
from insilico_trials.run.preflight import checked_protocol
from insilico_trials.run.trial import run_trial
from insilico_trials.sim import trial

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "protocols").glob("*.yaml"))


def test_every_example_is_tested():
    assert [p.stem for p in EXAMPLES] == [
        "abiraterone_twins", "design_binary_borrowing", "dose_ranging_pkpd", "onc_phase2_orr",
        "onc_phase2_orr_model_file", "t1d_decision_support",
        "zhang2017_adaptive",
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_end_to_end(path, tmp_path):
    protocol = checked_protocol(path)
    lines: list[str] = []
    result = run_trial(protocol, progress=lines.append)
    archive = tmp_path / "archive"
    archive.mkdir()
    groups = write_run_outputs(archive, path, result)
    write_manifest(
        archive, inputs=groups["inputs"], outputs=groups["outputs"], documents=[], meta={}
    )
    assert verify_archive(archive) == []
    assert set(read_manifest(archive)["outputs"]) == set(groups["outputs"])
    # the decision is a number and a verdict, never NaN
    assert 0.0 <= result.fit.probability <= 1.0 and not math.isnan(result.fit.probability)
    assert result.fit.decision in ("go", "no-go") or result.fit.decision.startswith("not reported")
    # every arm's exposure rows have every column, as each arm's own chunk made them
    exposure = pq.read_table(archive / "exposure.parquet").to_pandas()
    assert set(exposure["arm"]) == {a.name for a in protocol.arms}
    for arm in protocol.arms:
        cohort = result.cohorts[arm.name].iloc[:2]
        own = trial.simulate_chunk(protocol, arm.name, cohort).exposure
        assert list(own.columns) == list(exposure.columns), arm.name
    if protocol.pk is not None:
        assert "tmax_first_h" in exposure.columns
        treated = exposure[exposure["arm"] != protocol.control_arm.name]
        assert treated["tmax_first_h"].notna().all()
    assert any(line.startswith("[3/") for line in lines)
