"""The run report: every section and figure present, summary numbers equal the archive's.

The archive is built without Prefect or MCMC: the tiny protocol is run by ``run_trial`` on the
serial executor, with ``testing.mock_fit`` (exact conjugate Beta-Binomial draws, seed 7) as the
outcome fit, so the report's plumbing is tested in seconds.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from insilico_trials.io.outputs import write_run_outputs
from insilico_trials.io.spool import ParquetSpool
from insilico_trials.report import render_report
from insilico_trials.run.trial import run_trial
from insilico_trials.sim import trial
from insilico_trials.spec.protocol import load_protocol
from insilico_trials.testing import mock_fit, with_fields, write_protocol
from tests.conftest import tiny_protocol


def build_archive(root: Path, changes: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """A complete archive of the tiny ORR protocol (no Prefect, no MCMC) and its meta;
    ``changes`` are protocol fields set first (``testing.with_fields``)."""
    path = tiny_protocol(root, n=12)
    if changes:
        path = write_protocol(with_fields(load_protocol(path), changes), path)
    protocol = load_protocol(path)
    keep = tuple(trial.summary_columns(protocol))
    result = run_trial(
        protocol, sink=ParquetSpool(root / "spool", keep=keep), chunk_size=5, fit=mock_fit
    )
    archive = root / "archive"
    archive.mkdir()
    groups = write_run_outputs(archive, path, result)
    meta = {
        "run_id": "test-run", "trial_id": protocol.trial_id, "protocol_sha256": protocol.sha256(),
        "seeds": {"protocol": protocol.seed}, "prefect_flow_run_id": "flow-123",
        "mlflow_run_id": "mlflow-456", "started_utc": "2026-01-01T00:00:00+00:00",
        "ended_utc": "2026-01-01T00:01:00+00:00", "package_version": "0.1.0",
        "git_commit": "abc123", "uv_lock_sha256": "f" * 64, "python": "3.12.1",
        "libraries": {"numpy": "2"}, "machine": {"cpus": 2}, "outputs": groups["outputs"],
    }  # fmt: skip
    return archive, meta


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    archive, meta = build_archive(tmp_path_factory.mktemp("report"))
    return archive, meta, render_report(archive, meta)


def _section(html: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}"[^>]*>(.*?)</section>', html, re.S)
    assert m, f"section {sid} missing"
    return m.group(1)


def _figures(html: str) -> list[str]:
    return re.findall(
        r'<figure><img alt="[^"]*" src="data:image/png;base64,[^"]+"><figcaption>([^<]+)<', html
    )


SECTIONS = ("summary", "protocol", "cohort", "exposure", "endpoints", "outcome",
            "synthetic-control", "operating-characteristics", "credibility", "provenance")  # fmt: skip


def test_archive_has_report_inputs(report: tuple[Path, dict[str, Any], str]) -> None:
    archive, meta, _ = report
    assert {"tumour_sld.parquet", "sensitivity.json"} <= set(meta["outputs"])
    sld = pd.read_parquet(archive / "tumour_sld.parquet")
    assert list(sld.columns) == ["arm", "patient", "visit_day", "sld_mm"]
    sens = json.loads((archive / "sensitivity.json").read_text())
    names = [p["name"] for p in sens["parameters"]]
    assert names == ["KL", "KD", "LAMBDA", "CL"]
    assert len(sens["outputs"]["rate_difference"]["ST"]) == 4


def test_every_section_and_figure_present(report: tuple[Path, dict[str, Any], str]) -> None:
    _, _, html = report
    for sid in SECTIONS:
        _section(html, sid)
    caps = _figures(html)
    for word in ("concentration", "Spider plot", "Waterfall", "progression-free", "overall survival",
                 "Posterior densities", "Sobol"):  # fmt: skip
        assert any(word.lower() in c.lower() for c in caps), (word, caps)
    assert all(len(c) > 40 for c in caps)  # each caption says what the figure shows
    assert "baseline-table" in _section(html, "cohort") and "target: protocol population" in html
    cred = _section(html, "credibility")
    for head in ("Context of use", "Model risk", "Code verification", "Validation against the published",
                 "Global sensitivity", "Uncertainty quantification", "Limitations"):  # fmt: skip
        assert head.lower() in cred.lower(), head
    assert "No design was run" in _section(html, "operating-characteristics")
    assert "No real data cut" in _section(html, "synthetic-control")


def test_summary_numbers_equal_archive(report: tuple[Path, dict[str, Any], str]) -> None:
    archive, meta, html = report
    summary = json.loads((archive / "summary.json").read_text())
    head = _section(html, "summary")
    assert f"Decision: {summary['decision']}" in head
    assert f'<strong id="probability">{summary["probability"]:.3f}</strong>' in head
    assert summary["question"] in head
    assert '<span id="virtual-share">100%</span>' in head
    n_ctrl = json.loads((archive / "synthetic_control.json").read_text())["n"]
    assert f"all {n_ctrl} control patients" in head
    prov = _section(html, "provenance")
    for key in ("protocol_sha256", "git_commit", "uv_lock_sha256", "prefect_flow_run_id", "mlflow_run_id",
                "started_utc", "ended_utc"):  # fmt: skip
        assert str(meta[key]) in prov, key


def test_no_external_references(report: tuple[Path, dict[str, Any], str]) -> None:
    _, _, html = report
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"|url\(([^)]*)\)', html)
    for a, b in refs:
        ref = (a or b).strip("'\" ")
        assert ref.startswith(("data:", "#")), ref
    assert "<script" not in html


def test_updates_and_oc_rendered_when_present(
    report: tuple[Path, dict[str, Any], str], tmp_path: Path
) -> None:
    archive, meta, _ = report
    copy = tmp_path / "copy"
    shutil.copytree(archive, copy)
    for cut, (borrowed, n_real) in enumerate([(20.0, 6), (10.0, 12)], start=1):
        d = copy / "updates" / f"{cut:03d}"
        d.mkdir(parents=True)
        (d / "update.json").write_text(json.dumps({
            "cut": cut, "cut_sha256": f"{cut}" * 64, "method": "robust_mixture",
            "posterior_mean": 0.1 * cut, "posterior_ci": [0.05, 0.3], "prior_ess": 30.0,
            "borrowed_virtual": borrowed, "conflict": {"box_p": 0.4}, "vague_weight": 0.2,
            "n_real": n_real,
        }))  # fmt: skip
    (copy / "design").mkdir()
    pd.DataFrame({"scenario": ["null", "alt"], "p_go": [0.04, 0.83]}).to_csv(
        copy / "design" / "oc.csv", index=False
    )
    html = render_report(copy, meta)
    sc = _section(html, "synthetic-control")
    assert "update-history" in sc and "History of the synthetic control" in sc
    # latest cut: 10 virtual beside 12 real -> 45% virtual
    assert '<span id="virtual-share">45%</span>' in _section(html, "summary")
    assert "0.83" in _section(html, "operating-characteristics")
    assert "1" * 64 in _section(html, "provenance")


def test_headline_follows_the_latest_cut_decision(
    report: tuple[Path, dict[str, Any], str], tmp_path: Path
) -> None:
    """After real cuts with both arms, the first screen states the decision of the latest cut
    (real patients against the hybrid control), its probability, and the control arm's
    virtual share; the run's simulated prediction is kept, labelled as such; every cut is in
    the decision history."""
    archive, meta, _ = report
    copy = tmp_path / "copy"
    shutil.copytree(archive, copy)
    decisions = [("go", 0.95, 8), ("go", 0.95, 24)]
    for cut, (verdict, prob, n) in enumerate(decisions, start=1):
        d = copy / "updates" / f"{cut:03d}"
        d.mkdir(parents=True)
        effect = {
            "treatment": "tki200", "quantity": "rate_difference", "direction": "greater",
            "delta": 0.1, "threshold": 0.9, "probability": prob, "probability_mcse": 0.0,
            "decision": verdict, "mean": 0.2 * cut, "ci": [0.01, 0.5], "n_control": n,
            "n_treatment": n, "engine": "closed_form", "converged": True,
        }  # fmt: skip
        (d / "update.json").write_text(json.dumps({
            "cut": cut, "cut_sha256": f"{cut}" * 64, "method": "robust", "engine": "closed_form",
            "posterior_mean": 0.15, "posterior_ci": [0.05, 0.3], "prior_ess": 14.0,
            "borrowed_virtual": 8.0, "conflict": {}, "vague_weight": 0.2, "n_real": n,
            "effects": [effect],
            "look": {"treatment": "tki200", "planned": [[12, 12], [24, 24]], "look": cut,
                     "of": 2, "verdict": "continue" if cut == 1 else "success (final analysis)",
                     "thresholds": {"efficacy": 0.99, "futility": 0.05} if cut == 1
                     else {"success": 0.9},
                     "pos": 0.61 if cut == 1 else None, "pos_mcse": 0.0,
                     "pos_method": "exact (beta-binomial predictive)"},
        }))  # fmt: skip
    html = render_report(copy, meta)
    summary = _section(html, "summary")
    assert 'id="decision">Decision after real data cut 2: success (final analysis)</p>' in summary
    assert "look 2 of 2 of the plan (rule: success 0.9)" in summary
    assert '<strong id="probability">0.950</strong> (exact)' in summary
    assert "the analysis criterion (threshold 0.9) is met at this cut" in summary
    assert "tki200 (24)" in summary and "24 real control patients" in summary
    assert '<span id="virtual-share">25%</span>' in summary  # 8 virtual beside 24 real
    assert "Before real data, the in-silico run predicted" in summary
    # The plan decides, not the analysis threshold: at an interim look the criterion can be
    # met (0.95 > 0.9) while the rule says continue (efficacy needs 0.99).
    shutil.rmtree(copy / "updates" / "002")
    interim = render_report(copy, meta)
    first = _section(interim, "summary")
    assert 'id="decision">Decision after real data cut 1: continue</p>' in first
    assert "(rule: efficacy 0.99, futility 0.05)" in first
    hist = re.search(r'<table class="tbl" id="decision-history">(.*?)</table>', html, re.S)
    assert hist is not None and hist.group(1).count("<tr>") == 3
    assert hist.group(1).count("0.95") == 2


@pytest.mark.slow
def test_verification_counts_come_from_the_archive_only(
    report: tuple[Path, dict[str, Any], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report shows the test results archived with the run (verification/junit.xml), never
    whatever results the checkout holds when the report is rebuilt."""
    from insilico_trials.app.commands import attach_test_results

    archive, meta, _ = report
    copy = tmp_path / "archive"
    shutil.copytree(archive, copy)
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest" timestamp="2026-01-01T00:00:00">'
        '<testcase classname="tests.test_tumour" name="a"/>'
        '<testcase classname="tests.test_tumour" name="b"><failure message="x"/></testcase>'
        '<testcase classname="tests.pk.test_linear" name="c"><skipped/></testcase>'
        "</testsuite></testsuites>"
    )
    monkeypatch.setenv("INSILICO_TEST_RESULTS", str(junit))
    assert attach_test_results(copy) == ["verification/junit.xml"]
    cred = _section(render_report(copy, meta), "credibility")
    assert "<strong>1 passed</strong>, 1 failed, 1 skipped" in cred
    assert "test_linear" in cred
    # other results in the checkout at rebuild time change nothing
    junit.write_text('<testsuites><testsuite name="pytest"></testsuite></testsuites>')
    assert "<strong>1 passed</strong>, 1 failed, 1 skipped" in _section(
        render_report(copy, meta), "credibility"
    )
    # an archive without results says so, whatever the checkout has
    assert "No test results were archived" in _section(render_report(archive, meta), "credibility")


def test_figures_are_byte_deterministic(report: tuple[Path, dict[str, Any], str]) -> None:
    archive, meta, html = report
    again = render_report(archive, meta)
    strip = re.compile(r"generated \S+")
    assert strip.sub("", again) == strip.sub("", html)


def test_a_median_not_reached_reads_so():
    """A Kaplan-Meier median is NaN when fewer than half had the event: the report says
    'not reached', never 'nan days'."""
    from insilico_trials.report import _fmt_days

    assert _fmt_days(float("nan")) == "not reached"
    assert _fmt_days(None) == "not reached"
    assert _fmt_days(336.0) == "336 days"


def test_validation_table_sets_the_model_beside_the_script_not_clinical_figures(
    report: tuple[Path, dict[str, Any], str], tmp_path: Path
) -> None:
    """A zhang2017 run's validation rows (reproduction of the authors' script, the product's
    model against the script, product-defined quantities) render with their distances; the
    product's quantities have no reference and no distance. An archive made before shows its
    clinical figures as such, without a distance."""
    from insilico_trials.infer.analysis import validation_table
    from insilico_trials.sim.tumour import simulate_zhang_trial

    src, meta, _ = report
    archive = tmp_path / "archive"
    shutil.copytree(src, archive)
    protocol = load_protocol(Path(__file__).parents[1] / "protocols" / "zhang2017_adaptive.yaml")
    ep = pd.concat(
        [
            simulate_zhang_trial(20, seed=1, strategy=s, horizon_days=400).assign(arm=s)
            for s in ("continuous", "adaptive")
        ]
    )
    rows = validation_table(protocol, ep)
    (archive / "validation.json").write_text(json.dumps(rows), encoding="utf-8")
    html = render_report(archive, meta)
    table = re.search(r'<table class="tbl" id="validation-table">(.*?)</table>', html, re.S)
    assert table is not None
    body = table.group(1)
    assert body.count("<tr>") == len(rows) + 1
    assert "Abiraterone_Main.m" in body and "16.5" not in body
    for r in re.findall(r"<tr><td>product</td>(.*?)</tr>", body):
        cells = re.findall(r"<td>(.*?)</td>", r)
        assert cells[2:4] == ["n/a", "n/a"]  # reference, distance
    rep = re.findall(r"<tr><td>reproduction</td>(.*?)</tr>", body)
    assert len(rep) == 9 and all(re.findall(r"<td>(.*?)</td>", r)[3] == "0" for r in rep[:-3])
    # An earlier archive's clinical comparator: shown, labelled, never differenced.
    old = [{"quantity": "median TTP, continuous (months)", "simulated": 40.0, "published": 16.5,
            "source": "Zhang 2017 abstract"}]  # fmt: skip
    (archive / "validation.json").write_text(json.dumps(old), encoding="utf-8")
    html = render_report(archive, meta)
    row = re.search(r"<tr><td>clinical \(earlier archive\)</td>(.*?)</tr>", html)
    assert row is not None and re.findall(r"<td>(.*?)</td>", row.group(1))[3] == "n/a"
