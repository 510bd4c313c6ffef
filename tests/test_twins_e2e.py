"""The twin protocol end to end through the CLI, on the committed real data cuts
(examples/abiraterone, CC0; Zhang et al., eLife 2022;11:e76284): ``run``, ``update`` with the
day-180 and day-365 cuts, the report's twin section, and ``rerun`` reproducing the run and
both twin updates bit for bit. Slow: two twin fits of 32 patients and their replay.

Short chains (200 + 200 draws) keep it under a few minutes; they do not pass the ESS gate,
and the update says so ("CONVERGENCE FAILED"): what is tested here is the pipeline and its
reproducibility, not the fit (tests/test_twins.py checks recovery; benchmarks/twin_fit.py
the real-data fit at the protocol's settings).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from insilico_trials.app.cli import main
from tests.conftest import run_in_process

ROOT = Path(__file__).resolve().parents[1]
CUTS = ROOT / "examples" / "abiraterone" / "cuts"


def _small_protocol(folder: Path) -> Path:
    text = (ROOT / "protocols" / "abiraterone_twins.yaml").read_text()
    text = text.replace("n: 100", "n: 20").replace(
        "mcmc: {draws: 1000, tune: 1000, chains: 2}", "mcmc: {draws: 300, tune: 300, chains: 2}"
    )
    text, n_fit = re.subn(r"fit: \{draws: \d+, tune: \d+,", "fit: {draws: 200, tune: 200,", text)
    assert n_fit == 1, "the twin protocol's fit settings line changed: update this test"
    text = text.replace("counterfactual_draws: 200", "counterfactual_draws: 50")
    path = folder / "twins.yaml"
    path.write_text(text)
    return path


@pytest.mark.slow
def test_twin_protocol_runs_updates_and_reruns(tmp_path, capsys, monkeypatch, prefect_api):
    monkeypatch.chdir(tmp_path)
    archive = run_in_process(tmp_path, _small_protocol(tmp_path), "--workers", "1")
    for cut in ("day0180", "day0365"):
        assert main(["update", str(archive), "--data", str(CUTS / cut)]) == 0
    out = capsys.readouterr().out
    assert "no endpoint data: synthetic control not refitted" in out
    assert "twins: forecast of" in out

    first, second = (
        json.loads((archive / "updates" / k / "update.json").read_text()) for k in ("001", "002")
    )
    assert first["twins"]["forecast"] is None  # nothing to forecast at the first cut
    skill = second["twins"]["forecast"]
    assert skill["n_new_records"] == 312 - 165  # ADLB records of day0365 minus day0180
    assert 0.0 <= skill["coverage50"] <= skill["coverage90"] <= 1.0
    assert skill["crps_mean"] > 0
    twins = archive / "updates" / "002" / "twins"
    summary = pd.read_parquet(twins / "twins.parquet")
    assert list(summary.columns) == ["patient", "parameter", "mean", "median", "q05", "q95"]
    assert summary["patient"].nunique() == 32
    assert set(summary["parameter"]) == {"S0", "R0", "c"}
    cf = pd.read_parquet(twins / "counterfactual.parquet")
    assert set(cf["regimen"]) == {"continuous", "adaptive"} and len(cf) == 64
    forecast = pd.read_parquet(twins / "forecast.parquet")
    assert len(forecast) == skill["n_new_records"]
    comp = second["twins"]["synthetic_vs_real"]
    assert comp["n_a"] == 17 and comp["n_b"] == 15

    out_html = tmp_path / "report.html"
    assert main(["report", str(archive), "--output", str(out_html)]) == 0
    page = out_html.read_text()
    assert 'id="twins"' in page and 'id="twin-skill"' in page and "twin-validation" in page
    assert "Digital twins after data cut 2" in page

    capsys.readouterr()
    assert main(["rerun", str(archive), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"updates/002/twins/draws\.parquet +identical", out)
    assert re.search(r"updates/001/update\.json \(twins\) +identical", out)
    assert "DIFFERENT" not in out
