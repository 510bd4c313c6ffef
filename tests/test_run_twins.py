"""Twins on real data cuts: the cut -> twin data conversion, the real cohort's PSA progression,
the protocol's twins section, and (slow) one cut's update end to end.

Data: examples/abiraterone (the PSA series of Zhang et al., eLife 2022;11:e76284, CC0),
committed in the repository.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from insilico_trials.app.twins_cmd import twin_inputs
from insilico_trials.io.realdata import load_cut
from insilico_trials.models.twins import TWIN_MODELS
from insilico_trials.run.twins import observed_ttp
from insilico_trials.sim.tumour import AdaptiveRule
from insilico_trials.sim.twins import DosingHistory, TwinCut
from insilico_trials.spec.catalog import TWIN_MODEL_NAMES
from insilico_trials.spec.protocol import ProtocolError, load_protocol

ZHANG = TWIN_MODELS["zhang2022"]
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "abiraterone"
PROTOCOL = ROOT / "protocols" / "abiraterone_twins.yaml"


def test_catalog_names_every_twin_model():
    assert set(TWIN_MODEL_NAMES) == set(TWIN_MODELS)


@pytest.mark.parametrize("cut_name, horizon", [("day0180", 180.0), ("full", np.inf)])
def test_twin_data_of_a_cut_equal_the_source_records(cut_name, horizon):
    """The cut's ADLB/ADEX, converted back to twin data, hold the source's records and the
    on/off state recorded at each (source/psa.csv: the state holds until the next record)."""
    protocol = load_protocol(PROTOCOL)
    data, arms = twin_inputs(protocol, load_cut(EXAMPLE / "cuts" / cut_name))
    src = pd.read_csv(EXAMPLE / "source" / "psa.csv")
    src = src[src["day"] <= horizon]
    ref = TwinCut.from_frame(src)
    assert data.n_patients == ref.n_patients == 32
    short = [p.rsplit("-", 1)[-1] for p in data.patients]
    assert short == list(ref.patients)
    for i in range(data.n_patients):
        np.testing.assert_array_equal(data.days[i], ref.days[i])
        np.testing.assert_array_equal(data.values[i], ref.values[i])
        np.testing.assert_array_equal(
            data.dosing[i].u_at(data.days[i]), ref.dosing[i].u_at(ref.days[i])
        )
    assert set(arms.values()) == {"adaptive abiraterone", "continuous abiraterone"}


def test_observed_ttp_applies_the_nadir_rule_at_the_records():
    # on from day 0: nadir 10 -> 6 -> 5; 6.3 at day 120 is +26 % over 5 (>= 1.25 x 5 = 6.25)
    days = np.array([0.0, 30.0, 60.0, 90.0, 120.0])
    vals = np.array([10.0, 6.0, 5.0, 6.0, 6.3])
    # patient 2: off from day 60 (a rise off drug is not progression), on again at day 120
    vals2 = np.array([10.0, 6.0, 5.0, 9.0, 9.5])
    h1 = DosingHistory(np.array([0.0]), np.array([1.0]))
    h2 = DosingHistory(np.array([0.0, 60.0, 120.0]), np.array([1.0, 0.0, 1.0]))
    cut = TwinCut(("a", "b"), (h1, h2), (days, days), (vals, vals2))
    t, ev = observed_ttp(cut, AdaptiveRule())
    assert t.tolist() == [120.0, 120.0]
    assert ev.tolist() == [True, False]


def test_twins_section_is_validated(tmp_path):
    text = PROTOCOL.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("real_arms: {continuous:", "real_arms: {placebo:"))
    with pytest.raises(ProtocolError) as err:
        load_protocol(bad)
    msg = str(err.value)
    assert "twins.real_arms" in msg and "placebo" in msg and "control arm" in msg
    bad.write_text(text.replace("model: zhang2022", "model: zhang2099"))
    with pytest.raises(ProtocolError, match="zhang2022"):
        load_protocol(bad)


def test_a_twin_update_needs_longitudinal_data(tmp_path):
    from insilico_trials.errors import InputError

    cut_dir = tmp_path / "cut"
    cut_dir.mkdir()
    for name in ("adsl.csv", "adlb.csv"):
        (cut_dir / name).write_bytes((EXAMPLE / "cuts" / "day0180" / name).read_bytes())
    with pytest.raises(InputError, match="adex"):
        twin_inputs(load_protocol(PROTOCOL), load_cut(cut_dir))


@pytest.mark.parametrize("alpha, beta", [(0.4, 0.75), (3.0, 1.0)])
def test_solvers_on_the_trials_own_dosing_histories(alpha, beta):
    """The reference solver against LSODA (rtol 1e-10), and the fit's RK4 grid (4-day steps)
    against the reference, on the 32 real patients' dosing histories and record days (full
    cut). (alpha, beta): near the real-data posterior medians, and the prior's medians."""
    from insilico_trials.sim.twins import solve_grid, solve_population, step_grid
    from tests.test_twins import lsoda_one, rel_err

    data, _ = twin_inputs(load_protocol(PROTOCOL), load_cut(EXAMPLE / "cuts" / "full"))
    n = data.n_patients
    rng = np.random.default_rng(16)
    params = {
        "S0": np.exp(rng.normal(np.log(1500.0), 0.8, n)),
        "R0": np.exp(rng.normal(np.log(60.0), 1.5, n)),
        "c": np.full(n, 4e-3),
        "alpha": alpha,
        "beta": beta,
    }
    ref = solve_population(ZHANG, params, data.dosing, data.days)
    for i in range(0, n, 4):  # every fourth patient: LSODA one at a time is slow
        p_i = {k: (v[i] if np.ndim(v) else v) for k, v in params.items()}
        want = lsoda_one(ZHANG, p_i, data.dosing[i], data.days[i])
        assert rel_err(ref.states[i, : len(data.days[i])], want) < 1e-7
    grid = solve_grid(ZHANG, params, step_grid(data.dosing, data.days, max_step_days=4.0))
    # PSA relative error of the 4-day grid against the reference; the fit's residual sd is
    # ~0.57 on the log scale, so 1e-3 is three orders below the noise
    err = np.nanmax(np.abs(grid.observed - ref.observed) / np.abs(ref.observed))
    assert err < 1e-3, err
