"""The UVA/Padova simulation (slow tier: the model compiles once per machine, about 10 s).

- against simglucose itself, the 30 patients under one open-loop scenario (reference
  trajectories made by simglucose 0.2.11: ``reference/README.md``);
- the basal steady state of simglucose's patients and of virtual patients;
- the model-file features the model uses (auxiliary values, signals, ifelse, tanh) against a
  closed form;
- a closed-loop arm gives the same numbers whatever the chunking.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from insilico_trials.sim import glucose as G
from insilico_trials.sim import trial
from insilico_trials.sim.pk.modelkernel import kernel_for
from insilico_trials.spec.modelfile import parse_model_text
from insilico_trials.spec.protocol import load_protocol

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MEALS = [(420, 50.0), (720, 70.0), (960, 15.0), (1080, 80.0)]  # reference/README.md
DAYS = 3


def _open_loop(patients: pd.DataFrame, *, days: int = DAYS, correction: bool = True):
    """The reference scenario: simglucose's basal, meal boluses of carbs / CR within the meal's
    minute, and a 1 U correction bolus at minute 1620."""
    n = len(patients)
    plan = G.MealPlan.fixed(n, days, MEALS)
    basal = patients["U2SS"].to_numpy() * patients["BW"].to_numpy() / 6000.0
    cr = patients["CR"].to_numpy()
    minutes = [d * 1440 + m for d in range(days) for m, _ in MEALS]
    units = [[c / cr[i] for _ in range(days) for _, c in MEALS] for i in range(n)]
    if correction:
        minutes.append(1620)
        for u in units:
            u.append(1.0)
    order = np.argsort(minutes, kind="stable")
    b_min = np.broadcast_to(np.asarray(minutes)[order], (n, len(minutes))).copy()
    b_units = np.asarray(units)[:, order]
    return G.simulate(
        patients, days * 1440, plan, basal_u_per_min=basal, boluses=(b_min, b_units), record_min=5
    )


def test_thirty_patients_agree_with_simglucose() -> None:
    """Blood glucose of every patient, every 5 minutes over 3 days, within 1 mg/dL of
    simglucose's (plasma Gp/Vg and subcutaneous Gsub)."""
    ref = pd.read_csv(HERE / "reference" / "simglucose_open_loop.csv.gz")
    patients = G.simglucose_patients()
    run = _open_loop(patients)
    worst = {}
    for i, name in enumerate(patients["name"]):
        r = ref[ref["patient"] == name].sort_values("t_min")
        assert r["t_min"].tolist() == list(range(0, DAYS * 1440 + 1, 5))
        d_bg = np.abs(run.bg_plasma[i] - r["BG"].to_numpy()).max()
        d_gs = np.abs(run.bg[i] - r["Gsub"].to_numpy()).max()
        worst[name] = max(d_bg, d_gs)
    print({k: round(v, 4) for k, v in sorted(worst.items(), key=lambda kv: -kv[1])[:5]})
    assert max(worst.values()) < 1.0, worst


def test_basal_steady_state() -> None:
    """On their basal insulin and without meals, simglucose's patients and virtual patients
    stay at their basal glucose GB (the virtual ones' steady state is derived, not copied)."""
    names = [f"{g}#{i:03d}" for g in ("adolescent", "adult", "child") for i in range(1, 11)]
    virtual = G.virtual_patients(np.arange(60), seed=11, names=names, spread=1.0)
    for patients in (G.simglucose_patients(), virtual):
        plan = G.MealPlan.fixed(len(patients), 1, [])
        basal = patients["U2SS"].to_numpy() * patients["BW"].to_numpy() / 6000.0
        run = G.simulate(patients, 720, plan, basal_u_per_min=basal, record_min=60)
        np.testing.assert_allclose(
            run.bg, np.broadcast_to(patients["GB"].to_numpy()[:, None], run.bg.shape), rtol=1e-6
        )


TOY = """
model: toy
time_unit: min
parameters:
  K: {unit: 1/min, positive: true}
  CZ: {unit: mg, min: 0}
signals:
  S: {unit: mg/min}
compartments: [A]
auxiliary:
  GATE: ifelse(S > 0, S, 0)
  SQUASH: tanh(CZ / 100)
odes:
  A: -K * A + GATE * SQUASH
outputs:
  AOUT: A
initial:
  A: CZ
"""


def test_signals_and_auxiliary_values_against_closed_form() -> None:
    model = parse_model_text(TOY, source="toy.yaml")
    assert model.pk_problem() is not None  # signals and minutes: not for the PK engine
    k, c = np.array([0.1, 0.05]), np.array([50.0, 200.0])
    stepper = kernel_for(model).stepper(model.individual({"K": k, "CZ": c}))
    inputs = np.zeros((2, stepper.width))
    a = c.copy()
    for minute, s in enumerate([0.0, 3.0, 3.0, -1.0, 0.0, 5.0]):
        inputs[:, 1] = s  # the signal, after the one compartment's rate
        x = stepper.step(inputs, 1.0)[:, 0]
        src = max(s, 0.0) * np.tanh(c / 100)
        a = src / k + (a - src / k) * np.exp(-k)
        np.testing.assert_allclose(x, a, rtol=1e-7, err_msg=f"minute {minute}")


def test_closed_loop_arm_does_not_depend_on_chunking(tmp_path: Path) -> None:
    text = (ROOT / "protocols" / "t1d_decision_support.yaml").read_text()
    text = text.replace("days: 28", "days: 14").replace("n: 54", "n: 6")
    path = tmp_path / "p.yaml"
    path.write_text(text)
    protocol = load_protocol(path)
    for arm in protocol.arms:
        cohort = trial.arm_cohort(protocol, arm)
        whole = trial.simulate_chunk(protocol, arm.name, cohort)
        parts = [
            trial.simulate_chunk(protocol, arm.name, cohort.iloc[s:e]) for s, e in ((0, 2), (2, 6))
        ]
        joined = pd.concat([p.endpoints for p in parts], ignore_index=True)
        pd.testing.assert_frame_equal(whole.endpoints, joined)
        assert whole.endpoints["tir_pct"].between(0, 100).all()
    # decision support changed some settings after the run-in; standard care changed none
    ds = trial.simulate_chunk(
        protocol, "decision_support", trial.arm_cohort(protocol, protocol.arms[1])
    )
    assert (ds.exposure["basal_u_h_end"] != ds.exposure["basal_u_h_start"]).any()
    sc = trial.simulate_chunk(protocol, "standard", trial.arm_cohort(protocol, protocol.arms[0]))
    assert (sc.exposure["basal_u_h_end"] == sc.exposure["basal_u_h_start"]).all()


def test_hypoglycaemia_treatment_and_counting_window() -> None:
    """A 10 U bolus without a meal drives adult#001 low: with the rule of 15 the patient eats
    15 g at each reading below 70 (at most every 15 min), which raises the nadir; totals count
    only from ``count_from``, while the treatment itself happens all the time."""
    p = G.simglucose_patients()
    p = p[p["name"] == "adult#001"].reset_index(drop=True)
    basal = p["U2SS"].to_numpy() * p["BW"].to_numpy() / 6000.0
    plan = G.MealPlan.fixed(1, 1, [])
    kw = dict(basal_u_per_min=basal, boluses=(np.array([[60]]), np.array([[10.0]])), record_min=5)
    sensor = G.Sensor.named("GuardianRT", noise=False)
    none = G.simulate(p, 720, plan, sensor=sensor, **kw)
    treated = G.simulate(p, 720, plan, sensor=sensor, hypo=(70.0, 15.0, 15), **kw)
    late = G.simulate(p, 720, plan, sensor=sensor, hypo=(70.0, 15.0, 15), count_from=720, **kw)
    assert none.bg.min() < 70  # the scenario does go low
    assert treated.rescues[0] >= 1 and treated.rescue_g[0] == 15.0 * treated.rescues[0]
    assert treated.carbs_g[0] == 0.0  # rescue carbohydrate is counted apart from meals
    assert treated.bg.min() > none.bg.min()
    # readings below 70 that triggered a treatment are at least 15 minutes apart
    low = np.flatnonzero(treated.cgm[0] < 70) * sensor.sample_min
    assert len(low) >= treated.rescues[0]
    np.testing.assert_array_equal(late.bg, treated.bg)
    assert late.rescues[0] == 0 and late.insulin_u[0] == 0.0


def test_glucose_report_shows_advice4u_and_agp(tmp_path: Path) -> None:
    """A small glucose trial through the pipeline, real PyMC fit included: the archive's
    validation rows reach the report with their distances, and each arm has its AGP."""
    import json

    from insilico_trials.io.archive import verify_archive, write_manifest
    from insilico_trials.io.outputs import write_run_outputs
    from insilico_trials.report import render_report
    from insilico_trials.run.trial import run_trial

    text = (ROOT / "protocols" / "t1d_decision_support.yaml").read_text()
    text = text.replace("days: 28", "days: 14").replace("n: 54", "n: 8")
    text = text.replace("draws: 1000, tune: 1000", "draws: 300, tune: 300")
    path = tmp_path / "t1d.yaml"
    path.write_text(text)
    protocol = load_protocol(path)
    result = run_trial(protocol)
    archive = tmp_path / "archive"
    archive.mkdir()
    groups = write_run_outputs(archive, path, result)
    assert "glucose_agp.parquet" in groups["outputs"]
    write_manifest(
        archive, inputs=groups["inputs"], outputs=groups["outputs"], documents=[], meta={}
    )
    assert verify_archive(archive) == []
    rows = json.loads((archive / "validation.json").read_text())
    assert [r["reference"] for r in rows] == [51.6, 50.2, -1.4, 1.0, 1.3, 0.3]
    html = render_report(archive, {"trial_id": protocol.trial_id})
    assert 'id="validation-table"' in html and html.count("ADVICE4U") >= 6
    for r in rows:
        dist = r["simulated"] - r["reference"]
        assert f"{dist:.4g}" in html or f"{dist:.3g}" in html, (r["quantity"], dist)
    assert html.count("<figcaption>Ambulatory glucose profile, arm") == 2
    assert "Glucose endpoints" in html and "PK model" not in html
    cohort = pd.read_parquet(archive / "cohort.parquet")
    assert not any(c.startswith("X0_") for c in cohort.columns)
    # each arm its own patients (a parallel-group trial)
    a, b = (
        cohort[cohort["arm"] == arm]["KP1"].to_numpy() for arm in ("standard", "decision_support")
    )
    assert not np.array_equal(a, b)
