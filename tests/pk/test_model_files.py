"""Model files: the shipped files reproduce NONMEM and the built-in engine; bad files are refused.

References:

- NONMEM 7 outputs of the mrgsolve/nmtests dosing set (29 scenarios, 3,837 records) and its
  time-varying weight case, in ``tests/pk/reference/nmtests`` (source in its README); NONMEM
  prints 5 significant digits.
- The built-in engine's exact linear solution (itself checked against NONMEM in
  ``test_nonmem_parity.py``) and its LSODA path for Michaelis-Menten elimination.
- ``scipy.linalg.expm`` for a stiff linear system.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.linalg import expm

from insilico_trials.app.cli import main
from insilico_trials.errors import PKInputError
from insilico_trials.models.pk import resolve_model
from insilico_trials.sim.pk import simulate_records, simulate_regimen
from insilico_trials.sim.pk.pd import effect_compartment, emax, friberg, indirect_response
from insilico_trials.spec.modelfile import ModelFileError, library_path, parse_model_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_nonmem_parity import (
    REFERENCE,
    _dosing_input,
    _matches,
    _report,
    _time_varying,
)

LIBRARY = (
    "pk1cmt",
    "pk2cmt",
    "pk3cmt",
    "pk1cmt_mm",
    "pk1cmt_idr1",
    "pk1cmt_friberg",
    "pk1cmt_claret",
)


@pytest.mark.parametrize("name", LIBRARY)
def test_shipped_files_are_valid(name: str) -> None:
    path = library_path(name)
    assert path is not None
    model = resolve_model(str(path))
    assert model.name == name
    assert all(p.unit for p in model.inputs)


@pytest.mark.slow
def test_pk1cmt_file_reproduces_nonmem_through_pk_simulate(tmp_path: Path, capsys) -> None:
    data = _dosing_input()
    src = tmp_path / "data.csv"
    data.to_csv(src, index=False)
    out_path = tmp_path / "out.csv"
    code = main(["pk", "simulate", str(src), "--model", str(library_path("pk1cmt")), "-o",
                 str(out_path)])  # fmt: skip
    assert code == 0
    out = pd.read_csv(out_path)
    assert list(out.columns) == ["ID", "TIME", "EVID", "CP", "A1", "A2"]
    ref = pd.read_csv(REFERENCE / "dosing" / "1001-nonmem-CP.csv")["CP"].to_numpy()
    assert len(out) == len(ref) == 3837
    ours = out["CP"].to_numpy() * 1000.0  # reference CP = A2 / (V / 1000)
    ok = _matches(ours, ref)
    assert ok.all(), _report(data, ours, ref, ok)


TIME_VARYING = """
model: pk1cmt_wt
parameters:
  TVCL: {unit: L/h, min: 0}
  V: {unit: L, positive: true}
  KA: {unit: 1/h, min: 0}
  LAGT: {unit: h, min: 0}
  BIOAV: {unit: '1', min: 0}
covariates:
  WT: {unit: kg, positive: true}
derived:
  CL: TVCL * (WT / 70) ** 0.75
compartments: [DEPOT, CENT]
odes:
  DEPOT: -KA * DEPOT
  CENT: KA * DEPOT - CL / V * CENT
outputs:
  CP: CENT / (V / 1000)
dosing:
  CENT: {ALAG: LAGT, F: BIOAV}
"""


@pytest.mark.slow
def test_covariates_derived_parameters_and_dose_attributes_match_nonmem(tmp_path: Path) -> None:
    # NONMEM's time-varying weight case, with the covariate model, F and ALAG in the file.
    path = tmp_path / "pk1cmt_wt.yaml"
    path.write_text(TIME_VARYING)
    data, ref = _time_varying()
    data = data.rename(columns={"ALAG2": "LAGT", "F2": "BIOAV"}).drop(columns=["CL"])
    data["TVCL"] = 1.1
    out = simulate_records(data, model=str(path), covariate_timing="nocb")
    ours = out["CP"].to_numpy()
    ok = _matches(ours, ref)
    assert ok.all(), _report(data, ours, ref, ok)


def _with_parameters(name: str) -> pd.DataFrame:
    data = _dosing_input()
    rng = np.random.default_rng(7)
    ids = data["ID"].to_numpy()
    draw = {i: rng.lognormal(0, 0.2, 6) for i in np.unique(ids)}
    if name == "pk1cmt_mm":
        data = data.drop(columns=["CL"])
        data["VMAX"] = [150.0 * draw[i][0] for i in ids]  # above every input rate
        data["KM"] = [20.0 * draw[i][1] for i in ids]
    elif name == "pk2cmt":
        data = data.rename(columns={"V": "V1"})
        data["Q"], data["V2"] = [2.0 * draw[i][2] for i in ids], 30.0
    elif name == "pk3cmt":
        data = data.rename(columns={"V": "V1"})
        data["Q2"], data["V2"] = [2.0 * draw[i][2] for i in ids], 30.0
        data["Q3"], data["V3"] = [0.5 * draw[i][3] for i in ids], 80.0
    return data


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pk2cmt", "pk3cmt", "pk1cmt_mm"])
def test_files_match_the_built_in_engine_on_the_29_scenarios(name: str) -> None:
    # Bolus, infusions (fixed, modelled rate and duration), ADDL, SS 1 and 2, resets, lags.
    data = _with_parameters(name)
    built_in = simulate_records(data, model=name)["CP"].to_numpy()
    model = dataclasses.replace(resolve_model(str(library_path(name))), rtol=1e-10, atol=1e-12)
    ours = simulate_records(data, model=model)["CP"].to_numpy()
    scale = np.abs(built_in).max()
    # relative where the concentration matters, absolute (1e-9 of the peak) near zero
    err = np.abs(ours - built_in) / np.maximum(np.abs(built_in), 1e-3 * scale)
    assert err.max() <= 1e-6, f"{name}: max relative error {err.max():.3g}"


def _mrgsolve_scenario(n: int) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    # benchmarks/pk_population.py: 2-cmt oral, 56 daily 100 mg doses, hourly to 1,344 h
    rng = np.random.default_rng(20261124)
    sd = np.sqrt(0.1)
    params = {
        "CL": np.exp(rng.normal(0, sd, n)),
        "V1": 20.0 * np.exp(rng.normal(0, sd, n)),
        "Q": np.full(n, 2.0),
        "V2": np.full(n, 10.0),
        "KA": np.exp(rng.normal(0, sd, n)),
    }
    times = np.arange(0.0, 1344.5, 1.0)
    return params, times, {"dose_mg": 100.0, "interval_h": 24.0, "n_doses": 56}


@pytest.mark.slow
def test_mrgsolve_scenario_within_1e6_of_the_exact_solution() -> None:
    # The accuracy bar: 2,000 subjects, the shipped file at its own tolerances.
    params, times, regimen = _mrgsolve_scenario(2000)
    exact = simulate_regimen("pk2cmt", params, times_h=times, **regimen)
    ours = simulate_regimen(str(library_path("pk2cmt")), params, times_h=times, **regimen)
    pos = exact > 0
    assert np.all(ours[~pos] == 0.0)
    rel = np.abs(ours[pos] - exact[pos]) / exact[pos]
    assert rel.max() <= 1e-6, rel.max()


@pytest.mark.slow
def test_population_path_equals_the_event_path() -> None:
    # The shared-timeline kernel and the per-record engine run the same solver.
    params, times, regimen = _mrgsolve_scenario(3)
    model = resolve_model(str(library_path("pk1cmt_mm")))
    p = {"VMAX": np.array([5.0, 8.0, 12.0]), "KM": np.array([1.0, 2.0, 4.0]),
         "V": params["V1"], "KA": params["KA"]}  # fmt: skip
    pop = simulate_regimen(model, p, times_h=times[:200], **regimen)
    rows = []
    for j in range(3):
        for t in times[:200]:
            rows.append(
                {"ID": j + 1, "TIME": t, "EVID": 0, "AMT": 0.0, **{k: v[j] for k, v in p.items()}}
            )
            if t % 24 == 0:
                rows[-1].update(EVID=1, AMT=100.0, CMT=1)
    recs = simulate_records(pd.DataFrame(rows).fillna(0), model=model)
    np.testing.assert_allclose(recs["CP"].to_numpy().reshape(3, -1), pop, rtol=1e-7, atol=1e-12)


STIFF = """
model: binding
parameters:
  KA: {unit: 1/h, min: 0}
  KON: {unit: 1/h, min: 0}
  KOFF: {unit: 1/h, min: 0}
  KEL: {unit: 1/h, min: 0}
compartments: [DEPOT, FREE, BOUND]
odes:
  DEPOT: -KA * DEPOT
  FREE: KA * DEPOT - KON * FREE + KOFF * BOUND - KEL * FREE
  BOUND: KON * FREE - KOFF * BOUND
outputs:
  TOTAL: FREE + BOUND
solver: stiff
rtol: 1.0e-9
atol: 1.0e-12
"""


@pytest.mark.slow
def test_stiff_solver_on_fast_binding_matches_the_matrix_exponential(tmp_path: Path) -> None:
    # Binding 1e5 times faster than absorption: stiff; the exact answer is expm(K t) x0.
    model = parse_model_text(STIFF, source="binding.yaml")
    p = {"KA": 1.0, "KON": 1e5, "KOFF": 5e4, "KEL": 0.1}
    times = np.array([0.5, 1.0, 2.0, 6.0, 12.0, 24.0])
    ours = simulate_regimen(
        model, {k: np.array([v]) for k, v in p.items()}, dose_mg=100.0, interval_h=24.0,
        n_doses=1, times_h=times,
    )[0]  # fmt: skip
    k = np.array(
        [[-p["KA"], 0, 0], [p["KA"], -p["KON"] - p["KEL"], p["KOFF"]], [0, p["KON"], -p["KOFF"]]]
    )
    exact = np.array([(expm(k * t) @ np.array([100.0, 0, 0]))[1:].sum() for t in times])
    np.testing.assert_allclose(ours, exact, rtol=1e-5)


def _pd_reference(fn, times: np.ndarray, conc: np.ndarray, **kw) -> tuple[np.ndarray, np.ndarray]:
    """The built-in PD model on the grid and its own error, from the grid halved (Richardson).

    The built-in models read the concentration linearly interpolated between grid points; that
    interpolation error, not the ODE step, dominates right after a dose.
    """
    fine = np.linspace(times[0], times[-1], 2 * times.size - 1)
    conc_fine = simulate_regimen("pk1cmt", _PK, **_REGIMEN, times_h=fine)
    coarse = fn(times, conc, **kw)
    ref = fn(fine, conc_fine, **kw)[:, ::2]
    return ref, np.abs(coarse - ref)


_PK = {"CL": np.array([2.0, 4.0]), "V": np.array([30.0, 50.0]), "KA": np.array([1.2, 0.6])}
_REGIMEN = {"dose_mg": 200.0, "interval_h": 24.0, "n_doses": 3}


@pytest.mark.slow
@pytest.mark.parametrize("kind", [1, 2, 3, 4])
def test_indirect_response_files_match_the_built_in_pd_model(kind: int) -> None:
    times = np.arange(0.0, 72.0 + 1e-9, 0.1)
    conc = simulate_regimen("pk1cmt", _PK, **_REGIMEN, times_h=times)
    drug = "IMAX" if kind in (1, 2) else "EMAX"
    c50 = "IC50" if kind in (1, 2) else "EC50"
    idr = {"KIN": np.array([10.0, 5.0]), "KOUT": np.array([0.2, 0.1]),
           drug: np.array([0.9, 0.7]), c50: np.array([1.0, 2.0]), "HILL": np.array([1.0, 2.0])}  # fmt: skip
    model = dataclasses.replace(
        resolve_model(str(library_path(f"pk1cmt_idr{kind}"))), outputs=(("R", "RESP"),)
    )
    ours = simulate_regimen(model, {**_PK, **idr}, **_REGIMEN, times_h=times)
    ref, ref_err = _pd_reference(
        indirect_response, times, conc, kind=kind, kin=idr["KIN"], kout=idr["KOUT"],
        emax=idr[drug], ec50=idr[c50], hill=idr["HILL"],
    )  # fmt: skip
    # within the reference's own error (x2, the halved grid still carries a quarter of it)
    assert np.all(np.abs(ours - ref) <= 2 * ref_err + 1e-7 * np.abs(ref))
    assert np.max(np.abs(ours - ref) / np.abs(ref)) < 1e-4


@pytest.mark.slow
def test_friberg_file_matches_the_built_in_pd_model() -> None:
    times = np.arange(0.0, 72.0 + 1e-9, 0.1)
    conc = simulate_regimen("pk1cmt", _PK, **_REGIMEN, times_h=times)
    fr = {"CIRC0": np.array([5.0, 4.0]), "MTT": np.array([100.0, 120.0]),
          "GAMMA": np.array([0.16, 0.2]), "SLOPE": np.array([0.5, 0.3])}  # fmt: skip
    model = dataclasses.replace(
        resolve_model(str(library_path("pk1cmt_friberg"))), outputs=(("ANC", "CIRC"),)
    )
    ours = simulate_regimen(model, {**_PK, **fr}, **_REGIMEN, times_h=times)
    ref, ref_err = _pd_reference(
        friberg, times, conc, circ0=fr["CIRC0"], mtt_h=fr["MTT"], gamma=fr["GAMMA"],
        slope=fr["SLOPE"],
    )  # fmt: skip
    assert np.all(np.abs(ours - ref) <= 2 * ref_err + 1e-7 * np.abs(ref))
    assert np.max(np.abs(ours - ref) / np.abs(ref)) < 1e-4


@pytest.mark.slow
def test_effect_compartment_emax_file_matches_the_built_in_pd_functions() -> None:
    # effect_compartment is exact for the concentration linear between grid points; its own
    # error (of the interpolation) is estimated by halving the grid, as above.
    times = np.arange(0.0, 72.0 + 1e-9, 0.1)
    conc = simulate_regimen("pk1cmt", _PK, **_REGIMEN, times_h=times)
    pd_params = {"KE0": np.array([0.3, 1.5]), "E0": np.array([10.0, 5.0]),
                 "EMAX": np.array([-8.0, 20.0]), "EC50": np.array([1.0, 3.0]),
                 "HILL": np.array([1.0, 2.5])}  # fmt: skip
    model = resolve_model(str(library_path("pk1cmt_effect_emax")))
    ours = simulate_regimen(model, {**_PK, **pd_params}, **_REGIMEN, times_h=times)  # CP
    np.testing.assert_allclose(ours, conc, rtol=1e-6, atol=1e-9 * conc.max())
    ce = dataclasses.replace(model, outputs=(("CEFF", "CE"),), _compiled={})
    ce_ours = simulate_regimen(ce, {**_PK, **pd_params}, **_REGIMEN, times_h=times)
    ref, ref_err = _pd_reference(effect_compartment, times, conc, ke0=pd_params["KE0"])
    assert np.all(np.abs(ce_ours - ref) <= 2 * ref_err + 1e-7 * np.abs(ref).max())
    effect = dataclasses.replace(model, outputs=(("E", model.outputs[2][1]),), _compiled={})
    e_ours = simulate_regimen(effect, {**_PK, **pd_params}, **_REGIMEN, times_h=times)
    e_ref = emax(ce_ours, e0=pd_params["E0"][:, None], emax=pd_params["EMAX"][:, None],
                 ec50=pd_params["EC50"][:, None], hill=pd_params["HILL"][:, None])  # fmt: skip
    np.testing.assert_allclose(e_ours, e_ref, rtol=1e-12)


GOOD = """model: m
parameters:
  CL: {unit: L/h}
  V: {unit: L, positive: true}
compartments: [CENT]
odes:
  CENT: -CL / V * CENT
outputs:
  CP: CENT / V
"""


@pytest.mark.parametrize(
    ("old", "new", "line", "words"),
    [
        ("CENT: -CL / V * CENT", "CENT: -CL / VC * CENT", 7, "unknown name 'VC'"),
        ("CENT: -CL / V * CENT", "CENT: __import__('os').system('x')", 7, "call not allowed"),
        ("CENT: -CL / V * CENT", "CENT: np.exp(CENT)", 7, "not allowed"),
        ("CP: CENT / V", "CP: CENT / (2 - 2)", 9, "division by a constant zero"),
        ("compartments: [CENT]", "compartments: [CENT, PERI]", 5, "'PERI' has no ODE"),
        (
            "  CENT: -CL / V * CENT",
            "  CENT: -CL / V * CENT\n  PERI: CENT",
            8,
            "ODE for 'PERI', which is not a compartment",
        ),
        ("V: {unit: L, positive: true}", "V: {positive: true}", 4, "needs a unit"),
        ("CP: CENT / V", "CP: CENT > V", 9, "a condition"),
    ],
)
def test_bad_model_files_are_refused_with_file_line_and_rule(old, new, line, words) -> None:
    text = GOOD.replace(old, new)
    assert text != GOOD
    with pytest.raises(ModelFileError) as info:
        parse_model_text(text, source="bad.yaml")
    message = str(info.value)
    assert message.startswith(f"bad.yaml:{line}"), message
    assert words in message, message


def test_bad_model_file_through_the_cli_exits_2_and_writes_nothing(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("CENT: -CL / V * CENT", "CENT: -CL / VC * CENT"))
    data = tmp_path / "data.csv"
    data.write_text("ID,TIME,AMT,EVID,CL,V\n1,0,100,1,1,10\n1,1,0,0,1,10\n")
    out = tmp_path / "out.csv"
    code = main(["pk", "simulate", str(data), "--model", str(bad), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{bad}:7" in err and "unknown name 'VC'" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_generated_module_holds_no_path_text() -> None:
    # The path is not code: a newline in it must not reach the module that is imported, and
    # the same model in another folder is the same module.
    from insilico_trials.sim.pk.modelkernel import generate_source

    a = generate_source(parse_model_text(GOOD, source="/tmp/a\nimport os\n#b.yaml"))
    b = generate_source(parse_model_text(GOOD, source="elsewhere/m.yaml"))
    assert a == b
    assert "import os" not in a


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        ("CENT: -CL / V * CENT", "CENT: -CL / V * CENT * (CL in (1e999,))", "finite"),
        (
            "CENT: -CL / V * CENT",
            "CENT: -CL / V * CENT * (CL in (" + "9" * 400 + ",))",
            "too large",
        ),
        ("  CL: {unit: L/h}", "  Cl: {unit: L/h}", "write CL"),
        ("CP: CENT / V", "A1: CENT / V", "reserved for the compartment amounts"),
        ("model: m", "model: m\nmodel: n", "duplicate key"),
    ],
)
def test_more_bad_model_files(old, new, words) -> None:
    text = GOOD.replace(old, new)
    assert text != GOOD
    with pytest.raises(ModelFileError, match=words):
        parse_model_text(text, source="bad.yaml")


def test_ss2_refused_for_a_file_with_a_baseline() -> None:
    model = resolve_model(str(library_path("pk1cmt_idr1")))
    row = {"CL": 2.0, "V": 30.0, "KA": 1.0, "KIN": 10.0, "KOUT": 0.2, "IMAX": 0.5, "IC50": 1.0,
           "HILL": 1.0}  # fmt: skip
    data = pd.DataFrame([{"ID": 1, "TIME": 0.0, "AMT": 100.0, "EVID": 1, "SS": 2, "II": 24.0,
                          **row}])  # fmt: skip
    with pytest.raises(PKInputError, match="SS=2"):
        simulate_records(data, model=model)
