"""PD models, exposure metrics and residual error.

Closed forms: Emax formula exactly; effect compartment and indirect response against their
analytic solutions (effect compartment: exact for piecewise-linear C, 1e-12; indirect response:
RK4 with 8 sub-steps of a 1 h grid, kout up to 0.9/h, global error (0.11)^4 ~ 2e-7 relative,
tested at 1e-6). Exposure metrics against analytic AUC/Cmax of a 1-cmt profile on a fine grid.
Residual error: moments of 200,000 draws (seed 20261124) within 4 standard errors.
"""

from __future__ import annotations

import numpy as np
import pytest

from insilico_trials.sim.pk import add_residual_error, simulate_regimen
from insilico_trials.sim.pk import exposure as ex
from insilico_trials.sim.pk import pd as pkpd

T = np.arange(0.0, 97.0, 1.0)


def test_emax_formula() -> None:
    c = np.array([[0.0, 1.0, 2.0, 4.0]])
    e = pkpd.emax(c, e0=10.0, emax=50.0, ec50=2.0, hill=2.0)
    np.testing.assert_allclose(e, 10 + 50 * c**2 / (4 + c**2), rtol=1e-15)


def test_effect_compartment_follows_exponential_concentration() -> None:
    # C = e^{-k t}: Ce = ke0 / (ke0 - k) (e^{-k t} - e^{-ke0 t}); C linear on a 1 h grid is an
    # approximation, so compare on a fine grid.
    t = np.arange(0.0, 24.0, 0.05)
    k, ke0 = 0.2, 0.7
    c = np.exp(-k * t)[None, :]
    ce = pkpd.effect_compartment(t, c, ke0=ke0)
    expected = ke0 / (ke0 - k) * (np.exp(-k * t) - np.exp(-ke0 * t))
    np.testing.assert_allclose(ce[0], expected, rtol=2e-4, atol=1e-6)


def test_effect_compartment_step_input_is_exact() -> None:
    c = np.ones((2, T.size))
    ce = pkpd.effect_compartment(T, c, ke0=np.array([0.3, 1.5]))
    expected = 1 - np.exp(-np.array([[0.3], [1.5]]) * T)
    np.testing.assert_allclose(ce, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kind", [1, 2, 3, 4])
def test_indirect_response_reaches_the_analytic_steady_state(kind: int) -> None:
    kin, kout, emax, ec50, c0 = 10.0, 0.5, 0.8, 2.0, 3.0
    c = np.full((1, T.size), c0)
    r = pkpd.indirect_response(T, c, kind=kind, kin=kin, kout=kout, emax=emax, ec50=ec50)
    s = emax * c0 / (ec50 + c0)
    prod = kin * (1 - s) if kind == 1 else kin * (1 + s) if kind == 3 else kin
    loss = kout * (1 - s) if kind == 2 else kout * (1 + s) if kind == 4 else kout
    r0 = kin / kout
    expected = prod / loss + (r0 - prod / loss) * np.exp(-loss * T)
    np.testing.assert_allclose(r[0], expected, rtol=1e-6)


def test_friberg_stays_at_baseline_without_drug_and_has_a_nadir_with_it() -> None:
    t = np.arange(0.0, 24 * 28 + 1, 2.0)
    c = simulate_regimen(
        "pk1cmt",
        {"CL": np.array([5.0, 5.0]), "V": np.array([50.0, 50.0]), "KA": np.array([1.0, 1.0])},
        dose_mg=np.array([0.0, 500.0]),
        interval_h=24 * 21,
        n_doses=1,
        times_h=t,
    )
    anc = pkpd.friberg(t, c, circ0=5.0, mtt_h=120.0, gamma=0.17, slope=0.1)
    np.testing.assert_allclose(anc[0], 5.0, rtol=1e-12)
    nadir = anc[1].argmin()
    assert anc[1, nadir] < 4.0
    assert 48 < t[nadir] < 24 * 21
    assert anc[1, -1] > anc[1, nadir]


def test_exposure_metrics_of_a_one_compartment_bolus() -> None:
    t = np.arange(0.0, 240.0 + 1e-9, 0.01)
    cl, v = np.array([1.0, 2.0]), np.array([10.0, 10.0])
    c = simulate_regimen(
        "pk1cmt",
        {"CL": cl, "V": v, "KA": np.ones(2)},
        dose_mg=100.0,
        interval_h=24,
        n_doses=1,
        route="iv_bolus",
        times_h=t,
    )
    k = cl / v
    np.testing.assert_allclose(
        ex.auc(t, c, method="linlog"), 100 / cl * (1 - np.exp(-k * 240)), rtol=1e-10
    )
    np.testing.assert_allclose(ex.auc_inf(t, c), 100 / cl, rtol=1e-6)
    np.testing.assert_allclose(ex.lambda_z(t, c), k, rtol=1e-10)
    np.testing.assert_allclose(ex.cmax(t, c), 10.0)
    np.testing.assert_allclose(ex.tmax(t, c), 0.0)
    np.testing.assert_allclose(ex.ctrough(t, c, at_h=24.0), 10 * np.exp(-k * 24), rtol=1e-12)
    # C > 5 mg/L until ln 2 / k; linear interpolation of an exponential on a 0.01 h grid
    # places the crossing within dt^2 k / 8 ~ 3e-6 h
    np.testing.assert_allclose(ex.time_above(t, c, 5.0), np.log(2) / k, atol=5e-6)


def test_auc_inf_is_nan_when_lambda_z_is_undefined() -> None:
    c = np.array([[0.0, 1.0, 2.0, 3.0]])
    assert np.isnan(ex.auc_inf(np.arange(4.0), c))[0]


def test_residual_error_moments() -> None:
    rng = np.random.default_rng(20261124)
    conc = np.full(200_000, 10.0)
    y = add_residual_error(conc, additive_sd=0.5, proportional_sd=0.1, rng=rng)
    sd = np.sqrt(0.5**2 + (0.1 * 10.0) ** 2)
    assert abs(y.mean() - 10.0) < 4 * sd / np.sqrt(conc.size)
    assert abs(y.std() / sd - 1) < 4 / np.sqrt(2 * conc.size)
    unchanged = add_residual_error(conc, rng=rng)
    assert np.array_equal(unchanged, conc)
    with pytest.raises(ValueError, match="additive_sd must be finite and >= 0, got -1"):
        add_residual_error(conc, additive_sd=-1, rng=rng)
