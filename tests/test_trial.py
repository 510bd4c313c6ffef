"""The trial pipeline as plain functions: chunk invariance, dose units, the Zhang path."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from insilico_trials.infer import analysis
from insilico_trials.sim import trial
from insilico_trials.spec.protocol import ProtocolError, load_protocol
from tests.conftest import tiny_protocol

ROOT = Path(__file__).resolve().parents[1]


def _simulate(protocol, chunk: int) -> dict:
    chunks = []
    for arm in protocol.arms:
        cohort = trial.arm_cohort(protocol, arm)
        for start, stop in trial.chunk_bounds(len(cohort), chunk):
            chunks.append(trial.simulate_chunk(protocol, arm.name, cohort.iloc[start:stop]))
    return trial.concat_chunks(chunks[::-1])  # finishing order must not matter


def test_chunking_does_not_change_any_number(tmp_path):
    protocol = load_protocol(tiny_protocol(tmp_path, n=9))
    one = _simulate(protocol, 9)
    for chunk in (1, 4):
        other = _simulate(protocol, chunk)
        pd.testing.assert_frame_equal(one["endpoints"], other["endpoints"], check_exact=True)
        pd.testing.assert_frame_equal(one["exposure"], other["exposure"], check_exact=True)
        for arm in one["profiles"]:
            assert np.array_equal(one["profiles"][arm], other["profiles"][arm])


def test_distinct_rows_map_back_in_order():
    cols = [np.array([2.0, 1.0, 2.0, 3.0, 1.0]), np.array([5.0, 5.0, 5.0, 5.0, 6.0])]
    first, back = trial._distinct_rows(cols)
    assert first.tolist() == [0, 1, 3, 4]  # the first of each distinct row, in row order
    for c in cols:
        assert np.array_equal(c[first][back], c)
    every = np.arange(3)
    for none in ([np.array([1.0, 2.0, 3.0])], [np.array([1.0, np.nan, 1.0])]):
        assert all(np.array_equal(x, every) for x in trial._distinct_rows(none))


def test_rows_with_the_same_pk_inputs_are_solved_once_with_the_same_bytes(tmp_path, monkeypatch):
    """The sensitivity stage repeats each patient with rescaled typical values; rows sharing
    their PK inputs are solved once. Every output equals the row-by-row solution exactly."""
    from insilico_trials.sim.pk import regimen

    protocol = load_protocol(tiny_protocol(tmp_path, n=6))
    arm = protocol.treatment_arms[0]
    cohort = trial.arm_cohort(protocol, arm)
    big = pd.concat([cohort] * 3, ignore_index=True)  # the same patients three times ...
    big.loc[6:, "KL"] = big.loc[6:, "KL"].to_numpy() * 1.5  # ... two with another tumour rate
    big.loc[12:, "CL"] = big.loc[12:, "CL"].to_numpy() * 0.8  # ... one with another clearance
    solved = []
    real = regimen.simulate_regimen

    def counting(model, params, **kw):
        solved.append(len(next(iter(params.values()))))
        return real(model, params, **kw)

    monkeypatch.setattr(regimen, "simulate_regimen", counting)
    monkeypatch.setattr("insilico_trials.sim.pk.simulate_regimen", counting)
    deduped = trial.simulate_chunk(protocol, arm.name, big)
    assert solved == [12]  # 18 rows, 12 distinct PK inputs
    monkeypatch.setattr(trial, "_distinct_rows", lambda cols: (np.arange(len(cols[0])),) * 2)
    each = trial.simulate_chunk(protocol, arm.name, big)
    assert solved == [12, 18]
    pd.testing.assert_frame_equal(deduped.endpoints, each.endpoints, check_exact=True)
    pd.testing.assert_frame_equal(deduped.exposure, each.exposure, check_exact=True)
    assert deduped.profiles.tobytes() == each.profiles.tobytes()
    assert deduped.sld.tobytes() == each.sld.tobytes()


def test_chunk_bounds_cover_every_patient_once():
    assert trial.chunk_bounds(7, 3) == [(0, 3), (3, 6), (6, 7)]
    assert trial.chunk_bounds(0, 3) == []


def test_untreated_arm_has_no_exposure_and_treated_arm_shrinks(tmp_path):
    protocol = load_protocol(tiny_protocol(tmp_path, n=20))
    out = _simulate(protocol, 20)
    ex = out["exposure"].groupby("arm")["auc_last_mg_h_l"].mean()
    assert ex["control"] == 0.0 and ex["tki200"] > 0
    # Steady-state AUC over one interval equals dose / CL for linear PK (mass balance):
    # mean over patients of 200 mg / CL_i, CL in L/h.
    cohort = trial.arm_cohort(protocol, protocol.arms[1])
    expected = np.mean(200.0 / cohort["CL"].to_numpy())
    # The table integrates the protocol's 2 h output grid by trapezoids, which misses part of
    # the absorption peak (KA ~ 1/h): measured 2.7% low on this cohort, so 5% bounds it. The
    # exact mass balance of the engine itself is tested in tests/pk.
    assert ex["tki200"] == pytest.approx(expected, rel=0.05)
    change = out["endpoints"].groupby("arm")["best_pct_change"].median()
    assert change["tki200"] < change["control"]


def test_weight_based_dose(tmp_path):
    protocol = load_protocol(ROOT / "protocols" / "onc_phase2_orr.yaml")
    arm = protocol.arms[1].model_copy(
        update={
            "regimen": protocol.arms[1].regimen.model_copy(update={"unit": "mg/kg", "dose": 2.0})
        }
    )
    cohort = pd.DataFrame({"WT": [50.0, 100.0]})
    assert trial.dose_amounts_mg(arm, cohort).tolist() == [100.0, 200.0]


def test_zhang_protocol_runs_paired_and_compares_with_the_script():
    protocol = load_protocol(ROOT / "protocols" / "zhang2017_adaptive.yaml")
    small = protocol.model_copy(
        update={"arms": [a.model_copy(update={"n": 30}) for a in protocol.arms]}
    )
    out = _simulate(small, 7)
    ep = out["endpoints"]
    cont = ep[ep["arm"] == "continuous"].reset_index(drop=True)
    adap = ep[ep["arm"] == "adaptive"].reset_index(drop=True)
    # Same virtual patients (competition matrices) in both strategies: a paired comparison.
    assert (cont["zhang_matrix_row"] == adap["zhang_matrix_row"]).all()
    assert (cont["drug_fraction"] == 1.0).all()
    assert (adap["drug_fraction"] <= 1.0).all() and adap["drug_fraction"].mean() < 1.0
    rows = analysis.validation_table(small, ep)
    kinds = {r["kind"] for r in rows}
    assert kinds == {"reproduction", "model", "product"}
    # Reproduction rows: the script's own outputs (shipped CSV, from Octave), distance 0.
    rep = [r for r in rows if r["kind"] == "reproduction"]
    same = [r for r in rep if not r["quantity"].startswith("all 22")]
    np.testing.assert_array_equal([r["simulated"] for r in same], [r["reference"] for r in same])
    assert all(r["simulated"] == 0.0 for r in rep if r["quantity"].startswith("all 22"))
    p1 = next(r for r in rep if "#1 (matrix 7), standard dosing" in r["quantity"])
    assert p1["reference"] == 4592  # Abiraterone_Main.m, matrix 7, SOC, timeTo90Percent
    # The product's model vs the script: continuous differs by the script's 2-step early start.
    model = [r for r in rows if r["kind"] == "model"]
    assert [r["simulated"] for r in model] == [2.0]
    # Product-defined quantities carry no published counterpart and no distance.
    prod = [r for r in rows if r["kind"] == "product"]
    assert prod and all(r["reference"] is None for r in prod)
    frac = next(r for r in prod if r["quantity"] == "days on drug / days followed, adaptive")
    assert frac["simulated"] == pytest.approx(adap["drug_fraction"].mean())
    assert not any("16.5" in str(r) or "27 months" in str(r) for r in rows)


def test_adaptive_dosing_needs_a_marker_model(tmp_path):
    text = (ROOT / "protocols" / "onc_phase2_orr.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        text.replace(
            "route: oral}", "route: oral, adaptive: {marker: PSA, stop_below_fraction: 0.5}}"
        )
    )
    with pytest.raises(
        ProtocolError,
        match=r"arms\[1\]\.regimen\.adaptive: adaptive dosing on PSA needs disease model zhang2017",
    ):
        load_protocol(bad)
