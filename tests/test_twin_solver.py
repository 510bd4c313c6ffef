"""The compiled twin solver (insilico_trials.infer.twin_solver) against the generic paths.

- the model's hand-written ``per_capita_jacobian`` against pytensor's symbolic derivatives
  of its ``per_capita`` (the rates every other solver uses);
- the compiled trajectories against the numpy RK4 of ``sim/twins.rk4_log_step`` (the same
  discretisation), and its sensitivities against central finite differences;
- the fit's log density and gradient with the compiled solver against the ``scan`` solver
  (reverse mode through pytensor), on the real patients' own dosing histories
  (examples/abiraterone, PSA series of Zhang et al., eLife 2022;11:e76284, CC0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from insilico_trials.app.twins_cmd import twin_inputs
from insilico_trials.infer import twins as twin_fit
from insilico_trials.infer.twin_solver import rk4_sensitivity_kernel
from insilico_trials.io.realdata import load_cut
from insilico_trials.models.twins import TWIN_MODELS
from insilico_trials.sim.twins import TwinDataError, rk4_log_step
from insilico_trials.spec.protocol import load_protocol

ROOT = Path(__file__).resolve().parents[1]
ZHANG = TWIN_MODELS["zhang2022"]


def _cut(name: str = "day0365"):
    protocol = load_protocol(ROOT / "protocols" / "abiraterone_twins.yaml")
    cut, _arms = twin_inputs(protocol, load_cut(ROOT / "examples/abiraterone/cuts" / name))
    return cut


def _data(cut, max_step_days: float = 4.0):
    pred = twin_fit._requested_days(cut, None)
    _grid, data = twin_fit._grid_data(cut, pred, max_step_days)
    y = np.concatenate([np.asarray(v, float) for v in cut.values])
    first = np.concatenate([np.full(len(v), float(v[0])) for v in cut.values])
    floors = np.maximum(0.05, 0.05 * first)
    data["log_y_obs"] = np.log(y + floors)
    data["floor"] = floors
    return data


def _constants(model):
    return np.array([c.value for c in model.constants.values()])


@pytest.mark.slow
@pytest.mark.parametrize("u", [0.0, 1.0])
def test_zhang_jacobian_equals_the_symbolic_derivatives_of_its_rates(u):
    import pytensor
    import pytensor.tensor as pt

    y = pt.dvector("y")
    p = pt.dvector("p")
    k = ZHANG.constant_values
    g = pt.stack(ZHANG.per_capita((y[0], y[1]), u, {"alpha": p[0], "beta": p[1]}, k))
    f = pytensor.function([y, p], [g, pt.jacobian(g, y), pt.jacobian(g, p)])
    rng = np.random.default_rng(3)
    for _ in range(20):
        yy = np.exp(rng.uniform(np.log(1.0), np.log(12000.0), 2))
        pp = np.exp(rng.normal([np.log(3.0), 0.0], 1.0))
        want = f(yy, pp)
        got = [np.empty(2), np.empty((2, 2)), np.empty((2, 2))]
        ZHANG.per_capita_jacobian(yy, u, pp, _constants(ZHANG), *got)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-16)


@pytest.mark.slow
def test_compiled_trajectories_and_sensitivities_on_real_dosing():
    data = _data(_cut("full"))
    h, u = data["h"], data["u"]
    n = h.shape[1]
    rng = np.random.default_rng(5)
    z0 = np.column_stack(
        [np.log(3000.0) + rng.normal(0, 0.5, n), np.log(30.0) + rng.normal(0, 1.5, n)]
    )
    log_p = np.log([3.0, 1.2])
    kernel = rk4_sensitivity_kernel(ZHANG)
    z, sz = kernel(z0, log_p, h, u, _constants(ZHANG))
    # the same RK4 in numpy, step by step
    zz = (z0[:, 0].copy(), z0[:, 1].copy())
    params = {"alpha": 3.0, "beta": 1.2}
    for t in range(h.shape[0]):
        zz = rk4_log_step(ZHANG, zz, h[t], u[t], params)
        np.testing.assert_allclose(z[t + 1, :, 0], zz[0], rtol=0, atol=1e-10)
        np.testing.assert_allclose(z[t + 1, :, 1], zz[1], rtol=0, atol=1e-10)
    # sensitivities: central differences (step 1e-5; error O(1e-10) relative)
    e = 1e-5
    for q in range(4):
        plus_z0, minus_z0, plus_p, minus_p = z0.copy(), z0.copy(), log_p.copy(), log_p.copy()
        if q < 2:
            plus_z0[:, q] += e
            minus_z0[:, q] -= e
        else:
            plus_p[q - 2] += e
            minus_p[q - 2] -= e
        zp, _ = kernel(plus_z0, plus_p, h, u, _constants(ZHANG))
        zm, _ = kernel(minus_z0, minus_p, h, u, _constants(ZHANG))
        fd = (zp - zm) / (2 * e)
        scale = np.abs(sz[..., q]).max()
        assert scale > 0.1
        np.testing.assert_allclose(sz[..., q], fd, rtol=0, atol=1e-6 * scale)


@pytest.mark.slow
def test_fit_density_and_gradient_equal_the_scan_solver():
    cut = _cut("day0365")
    data = _data(cut)
    values = {}
    for solver in ("scan", "compiled"):
        m = twin_fit._build(ZHANG, data, cut.n_patients, twin_fit.CENTRED, solver)
        f = m.logp_dlogp_function(mode="NUMBA", ravel_inputs=True)
        ip = m.initial_point()
        x0 = np.concatenate([np.ravel(ip[v.name]) for v in f._grad_vars])
        rng = np.random.default_rng(11)
        values[solver] = [f(x0 + rng.normal(0, 0.5, x0.size)) for _ in range(4)]
    for (lp_s, g_s), (lp_c, g_c) in zip(values["scan"], values["compiled"], strict=True):
        assert np.isfinite(lp_s)
        np.testing.assert_allclose(lp_c, lp_s, rtol=1e-12)
        np.testing.assert_allclose(g_c, g_s, rtol=1e-9, atol=1e-9 * np.abs(g_s).max())


def test_an_unknown_solver_is_refused_by_name():
    with pytest.raises(TwinDataError, match="solver: 'bogus' is not available for zhang2022"):
        twin_fit.fit_twins(_cut("day0180"), solver="bogus")  # type: ignore[arg-type]
