"""The Bayesian fit of a patient digital-twin model (PyMC, sampled with nutpie).

All patients of a cut are fitted together, under each one's own dosing history, with any
model of :data:`insilico_trials.models.twins.TWIN_MODELS`.

Model (``i`` patients, ``j`` observations; every quantity positive, modelled on the log
scale; priors declared by the twin model's ``priors``):

* per-patient quantities (:attr:`TwinModel.fit_quantities`: the burden ``total0`` = sum of
  the initial states, each later state's initial share ``ratio0_<state>`` over the first,
  and the biomarker at day 0, ``baseline``), ``log q_i ~ Normal(mu_q, tau_q)``,
  ``mu_q ~ Normal(log median_q, log_sd_q)``, ``tau_q ~ HalfNormal(1)``. They map one to one
  onto the model's per-patient parameters (``zhang2022``: ``S0``, ``R0`` cells, ``c`` ng/mL
  per cell), which are reported. ``baseline`` is centred (the first records pin it for
  every patient); the others non-centred (weakly informed for some patients: on the real
  data the centred form left their ESS at ~140 per 2000 draws);
* shared parameters (``alpha``, ``beta``): ``log q ~ Normal(log median_q, log_sd_q)``;
* residual error, proportional with a floor ``L_i``:
  ``log(y_ij + L_i) ~ Normal(log(f_ij + L_i), sigma)``, ``sigma ~ HalfNormal(0.5)``,
  ``f_ij`` the model biomarker. ``L_i`` is the larger of the assay floor
  (``observation.assay_floor``, 0.05 ng/mL for PSA) and ``observation.relative_floor``
  (0.05) times the patient's day-0 value. Above ``L_i`` a log-normal (constant-CV) error,
  which is how PSA assay and biological variation behave; below it an absolute error of
  about ``sigma L_i``. The relative part comes from the model: on treatment the sensitive
  cells' capacity is 5 % of ``K``, so the model cannot follow a fall much deeper than
  ~20-fold; a deeper measured fall (to the assay's limit) would otherwise dominate the fit
  through its logarithm.

Chains start from a pilot (:func:`_start_from_pilot`): short chains from nutpie's default
start, then the main chains at the best pilot chain's last draw.

The ODE is solved inside the model by classical RK4 on the log-states
(``d log y_i / dt = g_i``) over a per-patient step grid
(:func:`insilico_trials.sim.twins.step_grid`): every switch of ``u`` and every observation
day is a grid point, so no step straddles a discontinuity, and steps are at most
``max_step_days``. Two implementations of the same RK4: the compiled solver
(:mod:`insilico_trials.infer.twin_solver`, numba, with forward sensitivities; for models
that declare ``per_capita_jacobian``), and a pytensor ``scan`` of
:func:`insilico_trials.sim.twins.rk4_log_step` (any model). On the 32 real patients over
1700 days at 4-day steps a log density and gradient cost ~1.0 ms compiled and ~2.3 ms in
``scan`` (``benchmarks/twin_fit.py``); both give the same values to rounding
(``tests/test_twin_solver.py``). Either way the gradient is the exact gradient of the
discretised solution (sensitivities integrated by the same RK4 stages; reverse mode
through ``scan``). The discretisation error against the adaptive
reference (:func:`insilico_trials.sim.twins.solve_population`) is checked in
``tests/test_twins.py``: relative error of PSA at 2-day steps 7e-6 at the prior's
typical (alpha, beta) = (3, 1), 2.7e-4 at (6, 2), 3e-3 at beta = 5 (growth five times the
published rates); at 1-day steps 3e-7, 1.5e-5, 1.5e-4. The residual error of PSA is
about 10-30 %.

Compiled once per (model, data shapes) and process; a refit with data of the same shapes
only swaps data with ``CompiledModel.with_data`` (``benchmarks/twin_fit.py`` times both). Convergence gates as for the outcome fits
(:class:`insilico_trials.infer.outcomes.ConvergenceGates`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr

from insilico_trials.infer.outcomes import GATES, ConvergenceGates, _gates, _summary
from insilico_trials.models.twins import TwinModel, get_twin_model
from insilico_trials.sim.twins import StepGrid, TwinCut, TwinDataError, rk4_log_step, step_grid

__all__ = ["TwinFit", "fit_twins", "twin_graph"]

BETWEEN_PATIENT_SD = 1.0  # HalfNormal scale of tau_q (log scale)
RESIDUAL_SD = 0.5  # HalfNormal scale of sigma (log scale)
# Per-patient quantities sampled in the centred form (the data pin them for every patient);
# the others (burden, resistant share: weakly informed for some patients) non-centred.
CENTRED = frozenset({"baseline"})


@dataclass(frozen=True)
class TwinFit:
    """The result of :func:`fit_twins`.

    Attributes
    ----------
    model : str
    summary : DataFrame
        One row per patient and per-patient parameter: ``patient, parameter, mean, median,
        q05, q95`` (the model's units, e.g. cells, ng/mL per cell).
    population : DataFrame
        Shared parameters, population medians (``median_<q>``), between-patient sds
        (``tau_<q>``, log scale) and ``sigma``: ``parameter, mean, median, q05, q95``.
    curves : DataFrame
        ``patient, day, mean, median, q05, q95``: the fitted biomarker (e.g. PSA, ng/mL,
        without residual error) at the requested days with its 90 % credible band.
    converged : bool
        All gates passed.
    diagnostics : dict
        ``max_rhat, min_ess_bulk, min_ess_tail, divergences, failed``.
    idata : DataTree
        Posterior and sample statistics.
    settings : dict
        Sampler and solver settings, and the time spent (s).
    """

    model: str
    summary: pd.DataFrame
    population: pd.DataFrame
    curves: pd.DataFrame
    converged: bool
    diagnostics: dict[str, Any]
    idata: Any
    settings: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- the ODE graph


def twin_graph(model: TwinModel, params: Mapping[str, Any], h: Any, u: Any) -> tuple[Any, ...]:
    """Log-state trajectories of every patient as a pytensor graph (RK4 in ``scan``).

    Parameters
    ----------
    model : TwinModel
    params : mapping of tensors
        Per-patient parameters as vectors (length ``n_patients``), shared ones as scalars.
    h, u : tensors, shape (n_steps, n_patients)
        Step lengths (days) and treatment indicator of a :class:`StepGrid`.

    Returns
    -------
    tuple of tensors, each of shape (n_steps + 1, n_patients)
        ``log`` of each state after ``k`` steps (row 0: day 0).
    """
    import pytensor
    import pytensor.tensor as pt

    z0 = tuple(pt.log(params[q]) for q in model.initial)
    names = list(params)
    values = [params[k] for k in names]

    def step(h_k, u_k, *rest):
        z = rest[: len(z0)]
        p = dict(zip(names, rest[len(z0) :], strict=True))
        return list(rk4_log_step(model, z, h_k, u_k, p))

    traj = pytensor.scan(
        step,
        sequences=[h, u],
        outputs_info=list(z0),
        non_sequences=values,
        strict=True,
        return_list=True,
        return_updates=False,
    )
    return tuple(pt.concatenate([z[None, :], zt], axis=0) for z, zt in zip(z0, traj, strict=True))


def _build(
    model: TwinModel,
    init: Mapping[str, np.ndarray],
    n_patients: int,
    centred: frozenset[str],
    solver: str = "compiled",
):
    import pymc as pm
    import pytensor.tensor as pt

    ob = model.observation
    with pm.Model(coords={"patient": np.arange(n_patients)}) as m:
        d = {k: pm.Data(k, v) for k, v in init.items()}
        fq: dict[str, Any] = {}
        for q in model.fit_quantities:
            pr = model.priors[q]
            mu = pm.Normal(f"mu_log_{q}", np.log(pr.median), pr.log_sd)
            tau = pm.HalfNormal(f"tau_{q}", BETWEEN_PATIENT_SD)
            if q in centred:
                log_q = pm.Normal(f"log_{q}", mu, tau, dims="patient")
            else:
                z = pm.Normal(f"z_{q}", 0.0, 1.0, dims="patient")
                log_q = pm.Deterministic(f"log_{q}", mu + tau * z, dims="patient")
            fq[q] = pt.exp(log_q)
            pm.Deterministic(f"median_{q}", pt.exp(mu))
        params: dict[str, Any] = {}
        # the model's initial states and scale from the sampled quantities (one to one)
        ratios = [fq[f"ratio0_{s}"] for s in model.states[1:]]
        first = fq["total0"] / (1.0 + sum(ratios)) if ratios else fq["total0"]
        inits = [first, *(first * r for r in ratios)]
        for q, v in zip(model.initial, inits, strict=True):
            params[q] = pm.Deterministic(q, v, dims="patient")
        if ob.scale == "per_patient":
            weighted = sum(w * v for w, v in zip(ob.weights, inits, strict=True))
            params[ob.scale_name] = pm.Deterministic(
                ob.scale_name, fq["baseline"] / weighted, dims="patient"
            )
        for q in model.shared_parameters:
            pr = model.priors[q]
            log_q = pm.Normal(f"log_{q}", np.log(pr.median), pr.log_sd)
            params[q] = pm.Deterministic(q, pt.exp(log_q))
        sigma = pm.HalfNormal("sigma", RESIDUAL_SD)
        ode_params = {
            k: v for k, v in params.items() if k != ob.scale_name or ob.scale != "per_patient"
        }
        if solver == "compiled":
            from insilico_trials.infer.twin_solver import solve_log_states

            traj = solve_log_states(model, ode_params, d["h"], d["u"])
        else:
            traj = twin_graph(model, ode_params, d["h"], d["u"])
        scale = params[ob.scale_name] if ob.scale == "per_patient" else ob.fixed_scale

        def observed(step, patient):
            states = [z[step, patient] for z in traj]
            total = sum(w * pt.exp(s) for w, s in zip(ob.weights, states, strict=True))
            sc = scale[patient] if ob.scale == "per_patient" else scale
            return sc * total

        f = observed(d["obs_step"], d["obs_patient"])
        pm.Normal(
            "log_y",
            mu=pt.log(f + d["floor"]),
            sigma=sigma,
            observed=d["log_y_obs"],
            shape=d["log_y_obs"].shape,
        )
        pm.Deterministic("prediction", observed(d["pred_step"], d["pred_patient"]))
    return m


_CACHE: dict[tuple, Any] = {}
_CACHE_LOCK = threading.Lock()


def _compiled(
    model: TwinModel,
    init: Mapping[str, np.ndarray],
    n_patients: int,
    centred: frozenset[str],
    solver: str = "compiled",
):
    """One compilation per (model, data shapes, parametrisation, solver) per process; refits
    swap data."""
    import nutpie

    key = (
        model.name, n_patients, tuple(sorted(centred)), solver,
        *sorted((k, np.shape(v)) for k, v in init.items()),
    )  # fmt: skip
    with _CACHE_LOCK:
        if key not in _CACHE:
            pm_model = _build(model, init, n_patients, centred, solver)
            order = [
                (pm_model.rvs_to_values[v].name, tuple(int(n) for n in v.shape.eval()))
                for v in pm_model.free_RVs
            ]
            _CACHE[key] = (nutpie.compile_pymc_model(pm_model), order)
        return _CACHE[key], key


def _flat_point(
    post: Any, chain: int, draw: int, order: list[tuple[str, tuple[int, ...]]]
) -> np.ndarray:
    """One posterior draw as nutpie's flat vector of unconstrained values (the model's free
    variables in order; a ``<name>_log__`` value is the log of the positive ``<name>``)."""
    out = []
    for name, shape in order:
        if name.endswith("_log__"):
            v = np.log(np.asarray(post[name[: -len("_log__")]].values[chain, draw]))
        else:
            v = np.asarray(post[name].values[chain, draw])
        out.append(np.broadcast_to(v, shape).ravel())
    return np.concatenate(out).astype(float)


def _start_from_pilot(
    compiled: Any,
    order: list[tuple[str, tuple[int, ...]]],
    *,
    chains: int,
    tune: int,
    draws: int,
    seed: int,
    adaptation: str,
    target_accept: float,
) -> tuple[Any, dict[str, Any]]:
    """Short pilot chains from nutpie's default jittered start; the main chains then start
    (jittered by +-0.05 on the unconstrained scale) at the last draw of the pilot chain with
    the highest mean log density.

    A patient whose data the model fits poorly can have a second, minor posterior mode (on
    the real abiraterone data: one patient's resistant share at 1e-3 or 0.5); chains started
    at random settle in either and never cross, so R-hat flags a fit whose main mode is
    well sampled. The pilot finds the main mode; the pilot chains' mean log densities are
    returned, so a minor mode that was set aside is on the record.
    """
    import dataclasses

    import nutpie

    # Trees of at most 2^6 - 1 steps: a pilot chain far out in the tails (one in four started
    # at a log density ~500 below the others on the real data) would otherwise take the
    # longest trees and hold up the others.
    pilot = nutpie.sample(
        compiled, draws=draws, tune=tune, chains=chains, cores=min(chains, os.cpu_count() or 1),
        seed=seed, progress_bar=False, target_accept=target_accept, adaptation=adaptation,
        maxdepth=6,
    )  # fmt: skip
    lp = np.asarray(pilot["sample_stats"]["logp"].values).mean(axis=1)
    best = int(np.argmax(lp))
    start = _flat_point(pilot["posterior"], best, -1, order)

    def initial_point(seed: int) -> np.ndarray:
        return start + np.random.default_rng(seed).uniform(-0.05, 0.05, start.size)

    info = {"pilot_logp": [float(x) for x in lp], "pilot_best_chain": best}
    return dataclasses.replace(compiled, initial_point_func=initial_point), info


# --------------------------------------------------------------------------- data


def _requested_days(
    cut: TwinCut, predict_days: Sequence[float] | Mapping[str, Sequence[float]] | None
) -> list[np.ndarray]:
    if predict_days is None:
        return [np.asarray(d, dtype=float) for d in cut.days]
    if isinstance(predict_days, Mapping):
        unknown = set(predict_days) - set(cut.patients)
        if unknown:
            raise TwinDataError(f"predict_days: unknown patient(s) {sorted(unknown)}")
        out = [
            np.asarray(predict_days.get(p, d), dtype=float)
            for p, d in zip(cut.patients, cut.days, strict=True)
        ]
    else:
        out = [np.asarray(predict_days, dtype=float)] * cut.n_patients
    for p, d in zip(cut.patients, out, strict=True):
        if d.ndim != 1 or d.size == 0 or not (d >= 0).all() or not np.isfinite(d).all():
            raise TwinDataError(
                f"predict_days: patient {p}: days must be finite and >= 0, got {d[:6].tolist()}"
            )
    return [np.unique(d) for d in out]


def _grid_data(
    cut: TwinCut, pred: list[np.ndarray], max_step_days: float
) -> tuple[StepGrid, dict[str, np.ndarray]]:
    union = [np.union1d(d, p) for d, p in zip(cut.days, pred, strict=True)]
    grid = step_grid(cut.dosing, union, max_step_days=max_step_days)
    obs_step, obs_patient, pred_step, pred_patient = [], [], [], []
    for i, (u_days, d, p) in enumerate(zip(union, cut.days, pred, strict=True)):
        obs_step.append(grid.index[i, np.searchsorted(u_days, d)])
        obs_patient.append(np.full(len(d), i))
        pred_step.append(grid.index[i, np.searchsorted(u_days, p)])
        pred_patient.append(np.full(len(p), i))
    data = {
        "h": grid.h,
        "u": grid.u,
        "obs_step": np.concatenate(obs_step).astype(np.int64),
        "obs_patient": np.concatenate(obs_patient).astype(np.int64),
        "pred_step": np.concatenate(pred_step).astype(np.int64),
        "pred_patient": np.concatenate(pred_patient).astype(np.int64),
    }
    return grid, data


def _quantiles(draws: np.ndarray) -> dict[str, np.ndarray]:
    """Mean, median, 5 % and 95 % over the first axis."""
    q05, q50, q95 = np.quantile(draws, [0.05, 0.5, 0.95], axis=0)
    return {"mean": draws.mean(axis=0), "median": q50, "q05": q05, "q95": q95}


# --------------------------------------------------------------------------- public entry


def fit_twins(
    cut: TwinCut,
    *,
    model: str = "zhang2022",
    predict_days: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
    max_step_days: float = 2.0,
    assay_floor: float | None = None,
    relative_floor: float | None = None,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 2,
    seed: int = 7,
    target_accept: float = 0.9,
    adaptation: Literal["diag", "low_rank"] = "low_rank",
    gates: ConvergenceGates = GATES,
    pilot_chains: int = 4,
    pilot_tune: int = 200,
    pilot_draws: int = 50,
    centred: Sequence[str] | None = None,
    solver: Literal["compiled", "scan"] | None = None,
) -> TwinFit:
    """Fit a twin model to every patient of a cut (PyMC model, nutpie NUTS).

    Parameters
    ----------
    cut : TwinCut
        Patients, dosing histories, observation days and measured values (the model's
        biomarker, e.g. PSA in ng/mL, >= 0).
    model : str
        A key of :data:`insilico_trials.models.twins.TWIN_MODELS`.
    predict_days : sequence of float or mapping patient -> sequence, optional
        Days (study days, >= 0) of the fitted curves: one set for all patients, or per
        patient; None: each patient's observation days. Past a patient's last record his
        last treatment status is taken to continue.
    max_step_days : float
        Largest RK4 step of the in-model solver (days).
    assay_floor : float, optional
        ``L`` of the residual error (biomarker unit); None: the model's declared floor.
    draws, tune, chains : int
        NUTS settings per chain.
    seed : int
        Sampler seed; same data, settings and seed give the same draws.
    target_accept : float
        NUTS target acceptance (0.9: hierarchical ODE posteriors have curved funnels).
    adaptation : {"low_rank", "diag"}
        nutpie's mass-matrix adaptation.
    gates : ConvergenceGates
        Convergence thresholds, applied to every sampled parameter and the per-patient
        parameters.
    pilot_chains, pilot_tune, pilot_draws : int
        The pilot that sets the main chains' start (:func:`_start_from_pilot`); 0 chains:
        no pilot, nutpie's default start.
    centred : sequence of str, optional
        Fitted quantities sampled in the centred form (the others non-centred); None:
        :data:`CENTRED`. The posterior is the same either way; only the sampler's geometry
        differs (centred suits patients whose data pin the quantity, non-centred the weakly
        informed).
    solver : {"compiled", "scan"}, optional
        How the model is solved inside the fit: the compiled RK4 with exact sensitivities
        (:mod:`insilico_trials.infer.twin_solver`; needs the model's
        ``per_capita_jacobian``) or a pytensor ``scan`` of the same RK4 (any model). Same
        discretisation, same posterior; None: compiled when the model allows it.

    Returns
    -------
    TwinFit
    """
    import nutpie

    tm = get_twin_model(model)
    if cut.values is None:
        raise TwinDataError("cut.values: a fit needs the measured biomarker of every record")
    y = np.concatenate([np.asarray(v, dtype=float) for v in cut.values])
    if not (np.isfinite(y) & (y >= 0)).all():
        raise TwinDataError(f"cut.values: must be finite and >= 0 ({tm.observation.unit})")
    floor = tm.observation.assay_floor if assay_floor is None else float(assay_floor)
    if not floor > 0:
        raise TwinDataError(f"assay_floor: must be > 0 {tm.observation.unit}, got {floor!r}")
    pred = _requested_days(cut, predict_days)
    _grid, data = _grid_data(cut, pred, max_step_days)
    rel = tm.observation.relative_floor if relative_floor is None else float(relative_floor)
    first = np.concatenate(
        [np.full(len(v), float(np.asarray(v, dtype=float)[0])) for v in cut.values]
    )
    floors = np.maximum(floor, rel * first)
    data["log_y_obs"] = np.log(y + floors)
    data["floor"] = floors

    t0 = time.perf_counter()
    centred_q = CENTRED if centred is None else frozenset(centred)
    unknown = centred_q - set(tm.fit_quantities)
    if unknown:
        raise TwinDataError(
            f"centred: {sorted(unknown)} are not fitted quantities of {tm.name} "
            f"({list(tm.fit_quantities)})"
        )
    if solver is None:
        solver = "scan" if tm.per_capita_jacobian is None else "compiled"
    if solver not in ("compiled", "scan") or (
        solver == "compiled" and tm.per_capita_jacobian is None
    ):
        raise TwinDataError(
            f"solver: {solver!r} is not available for {tm.name} (allowed: "
            f"{'scan' if tm.per_capita_jacobian is None else 'compiled, scan'})"
        )
    (compiled, order), key = _compiled(tm, data, cut.n_patients, centred_q, solver)
    compiled = compiled.with_data(**data)
    t1 = time.perf_counter()
    pilot_info: dict[str, Any] = {}
    if pilot_chains:
        compiled, pilot_info = _start_from_pilot(
            compiled, order, chains=pilot_chains, tune=pilot_tune, draws=pilot_draws,
            seed=seed + 1, adaptation=adaptation, target_accept=target_accept,
        )  # fmt: skip
    t_pilot = time.perf_counter()
    idata = nutpie.sample(
        compiled,
        draws=int(draws),
        tune=int(tune),
        chains=int(chains),
        cores=min(int(chains), os.cpu_count() or 1),
        seed=int(seed),
        progress_bar=False,
        target_accept=float(target_accept),
        # alpha is identified only through the growth of R, so it is correlated with every
        # patient's R0: a low-rank mass matrix adapts to that direction, a diagonal one not.
        adaptation=adaptation,
    )
    t2 = time.perf_counter()
    ss = idata["sample_stats"].to_dataset()
    keep_ss = [v for v in ss.data_vars if ss[v].dtype != object]
    idata = xr.DataTree.from_dict(
        {"posterior": idata["posterior"].to_dataset(), "sample_stats": ss[keep_ss]}
    )
    post = idata["posterior"]

    gate_vars = [
        *(f"mu_log_{q}" for q in tm.fit_quantities),
        *(f"tau_{q}" for q in tm.fit_quantities),
        *(f"log_{q}" for q in tm.fit_quantities),
        *tm.patient_parameters,
        *tm.shared_parameters,
        "sigma",
    ]
    diag_summary = _summary(idata, gate_vars)
    divergences = int(np.asarray(idata["sample_stats"]["diverging"].values).sum())
    diagnostics = _gates(diag_summary, divergences, gates)

    def flat(name: str) -> np.ndarray:
        v = np.asarray(post[name].values)
        return v.reshape(-1, *v.shape[2:])

    rows = []
    for q in tm.patient_parameters:
        st = _quantiles(flat(q))
        for i, p in enumerate(cut.patients):
            rows.append({"patient": p, "parameter": q, **{k: float(v[i]) for k, v in st.items()}})
    summary = pd.DataFrame(rows, columns=["patient", "parameter", "mean", "median", "q05", "q95"])

    pop_rows = []
    pop_names = [
        *tm.shared_parameters,
        *(f"median_{q}" for q in tm.fit_quantities),
        *(f"tau_{q}" for q in tm.fit_quantities),
        "sigma",
    ]
    for name in pop_names:
        st = _quantiles(flat(name))
        pop_rows.append({"parameter": name, **{k: float(v) for k, v in st.items()}})
    population = pd.DataFrame(pop_rows)

    st = _quantiles(flat("prediction"))
    curves = pd.DataFrame(
        {
            "patient": np.repeat(np.array(cut.patients, dtype=object), [len(p) for p in pred]),
            "day": np.concatenate(pred),
            **st,
        }
    )
    idata["posterior"].attrs.update({"model": tm.name, "seed": int(seed)})
    settings = {
        "draws": draws,
        "tune": tune,
        "chains": chains,
        "seed": seed,
        "target_accept": target_accept,
        "max_step_days": max_step_days,
        "n_steps": int(data["h"].shape[0]),
        "assay_floor": floor,
        "structure_key": repr(key),
        "centred": sorted(centred_q),
        "solver": solver,
        "pilot_chains": pilot_chains,
        "pilot_tune": pilot_tune,
        "pilot_draws": pilot_draws,
        **pilot_info,
        "compile_s": t1 - t0,
        "pilot_s": t_pilot - t1,
        "sample_s": t2 - t_pilot,
    }
    return TwinFit(
        model=tm.name,
        summary=summary,
        population=population,
        curves=curves,
        converged=not diagnostics["failed"],
        diagnostics=diagnostics,
        idata=idata,
        settings=settings,
    )
