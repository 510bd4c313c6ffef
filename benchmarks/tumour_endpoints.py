"""Benchmark: 100,000 virtual patients through PK exposure, Claret TGI, RECIST 1.1 and OS.

Single process, vectorised across patients. Prints the time of each stage, the total, and the
ratio to a baseline measured in the same run (scipy ``solve_ivp`` on the Claret ODE, one
patient at a time, timed on 100 patients and scaled to the cohort).

Exposure is computed here in closed form (one-compartment IV bolus, exact daily AUC by the
recursion over days), as the PK engine's ``simulate_regimen`` is a general event engine; its
time on 10,000 patients is printed for reference. Regimen: fluorouracil 425 mg/m2 (765 mg at
1.8 m2) daily on days 1-5 every 4 weeks, 6 cycles, as in the FU arm behind Claret et al. 2009.

Claret parameters: KL 0.015 /week, KD 0.058 /(g/week)/week, lambda 0.042 /week, IIV variances
(0.556, 0.540, 0.450) as transcribed from Claret et al., J Clin Oncol 2009;27:4103 (FU phase III
fit) in a public Pumas teaching exercise; not checked against the paper's table, which could
not be reached. Exposure unit: dose-equivalent g/week = 7 x daily AUC x typical CL / 1000 (so a
typical patient gets the nominal dose). PK and OS parameters are ILLUSTRATIVE, not published:
CL 20 L/h (CV 30%), V 30 L; OS lognormal, log(weeks) = 4.0 - 1.5 x week-8 fractional change,
sigma 0.8.

Usage::

    uv run python benchmarks/tumour_endpoints.py            # 100,000 patients
    uv run python benchmarks/tumour_endpoints.py --n 20000
    uv run python benchmarks/tumour_endpoints.py --zhang    # Zhang 2017: this code vs the script
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from insilico_trials.sim.endpoints import (
    FollowUp,
    RecistRules,
    derive_endpoints,
    km_median,
    response_rates,
)
from insilico_trials.sim.rng import patient_normals
from insilico_trials.sim.tumour import CLARET2009_FU, simulate_tumour

CLARET_FU = {k: CLARET2009_FU[k] for k in ("KL", "KD", "LAMBDA")}  # per week
CLARET_FU_OMEGA2 = CLARET2009_FU["omega2"]
CL_TYP, V_TYP = 20.0, 30.0  # L/h, L: illustrative
DOSE_MG, CYCLE_DAYS, N_CYCLES = 765.0, 28, 6


def daily_auc_iv_bolus(cl: np.ndarray, v: np.ndarray, dose_by_day: np.ndarray) -> np.ndarray:
    """Exact daily AUC (mg*h/L), shape (n, D), one-compartment IV bolus at the start of days."""
    k24 = np.exp(-cl / v * 24.0)
    amount = np.zeros(cl.size)
    out = np.empty((cl.size, dose_by_day.size))
    for d, dose in enumerate(dose_by_day):
        amount = amount + dose
        out[:, d] = amount * (1.0 - k24) / cl
        amount = amount * k24
    return out


def run(n: int, seed: int = 2024) -> None:
    timings: dict[str, float] = {}
    pat = np.arange(n)
    t0 = time.perf_counter()
    z = patient_normals(seed, ("bench", "eta"), pat, 6)
    cl = CL_TYP * np.exp(0.3 * z[:, 0])
    v = V_TYP * np.exp(0.2 * z[:, 1])
    params = {
        "SLD0": 80.0 * np.exp(0.5 * z[:, 2]),
        "KL": CLARET_FU["KL"] * np.exp(np.sqrt(CLARET_FU_OMEGA2[0]) * z[:, 3]),
        "KD": CLARET_FU["KD"] * np.exp(np.sqrt(CLARET_FU_OMEGA2[1]) * z[:, 4]),
        "LAMBDA": CLARET_FU["LAMBDA"] * np.exp(np.sqrt(CLARET_FU_OMEGA2[2]) * z[:, 5]),
    }
    timings["cohort"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    n_days = CYCLE_DAYS * N_CYCLES
    dose_by_day = np.zeros(n_days)
    for c in range(N_CYCLES):
        dose_by_day[c * CYCLE_DAYS : c * CYCLE_DAYS + 5] = DOSE_MG
    auc = daily_auc_iv_bolus(cl, v, dose_by_day)
    expo = auc * (7.0 * CL_TYP / 1000.0)  # dose-equivalent g/week
    timings["PK exposure (closed form)"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    grid = np.arange(n_days, dtype=float)
    visits = np.arange(0.0, 7 * 48 + 1, 42.0)  # every 6 weeks to week 48
    sld = simulate_tumour(
        "claret", params, exposure_times_days=grid, exposure=expo, times_days=visits
    )
    timings["Claret TGI"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ep = derive_endpoints(
        sld,
        visits,
        seed=seed,
        keys=(0, "fu"),
        recist=RecistRules(measurement_cv=0.1, new_lesion_hazard_per_day=1 / 1500),
        os_model={
            "distribution": "lognormal",
            "intercept": 4.0,
            "coefficients": {"week8_frac_change": -1.5},
            "scale": 0.8,
            "time_unit": "weeks",
        },
        follow_up=FollowUp(
            dropout_per_day=1 / 3000,
            admin_censor_days=1200.0,
            accrual_per_day=200.0,  # 100,000 patients over ~500 days
        ),
    )
    timings["RECIST + PFS + OS"] = time.perf_counter() - t0
    total = sum(timings.values())

    # Baseline in the same run: solve_ivp, one patient at a time, on 100 patients.
    from scipy.integrate import solve_ivp

    m = min(100, n)
    t0 = time.perf_counter()
    for i in range(m):
        kl, kd, lam = params["KL"][i] / 7, params["KD"][i] / 7, params["LAMBDA"][i] / 7
        e_i = expo[i]

        def rhs(t, y, kl=kl, kd=kd, lam=lam, e_i=e_i):
            e = e_i[min(int(t), n_days - 1)] if t < n_days else 0.0
            return (kl - kd * np.exp(-lam * t) * e) * y

        solve_ivp(rhs, (0, visits[-1]), [params["SLD0"][i]], t_eval=visits, rtol=1e-6)
    baseline = (time.perf_counter() - t0) * n / m

    print(f"patients: {n:,}; visits: {visits.size}; exposure grid: {n_days} days")
    for k, v_ in timings.items():
        print(f"  {k:<28s} {v_:7.2f} s")
    print(f"  {'total':<28s} {total:7.2f} s  (goal < 10 s)")
    print(
        f"  baseline solve_ivp per patient, scaled from {m}: {baseline:7.1f} s "
        f"(x{baseline / total:,.0f} slower)"
    )
    ep = ep[ep.enrolled == 1]
    rr = response_rates(ep)
    print(
        f"ORR {rr['orr']:.3f}, DCR {rr['dcr']:.3f}; median PFS "
        f"{km_median(ep.pfs_days.to_numpy(), ep.pfs_event.to_numpy()):.0f} days; median OS "
        f"{km_median(ep.os_days.to_numpy(), ep.os_event.to_numpy()):.0f} days"
    )
    try:
        from insilico_trials.sim.pk import simulate_regimen
    except ImportError:
        return
    k = min(10_000, n)
    t0 = time.perf_counter()
    conc = np.zeros((k, n_days + 1))
    for day in range(5):
        conc += simulate_regimen(
            "pk1cmt",
            {"CL": cl[:k], "V": v[:k], "KA": np.ones(k)},
            dose_mg=DOSE_MG,
            interval_h=CYCLE_DAYS * 24.0,
            n_doses=N_CYCLES,
            route="iv_bolus",
            times_h=np.arange(n_days + 1) * 24.0,
            start_h=day * 24.0,
        )
    print(
        f"reference: PK engine simulate_regimen, {k:,} patients x 5 superposed schedules, "
        f"daily grid: {time.perf_counter() - t0:.2f} s"
    )


def zhang_reproduction() -> None:
    """All 22 matrices x 4 schedules of the published script: distances and time.

    Baseline in the same run: the same simulation one matrix at a time, as the script runs.
    """
    import pandas as pd

    from insilico_trials.sim.zhang2017_script import (
        SCRIPT_TREATMENTS,
        run_zhang_script,
        script_reproduction,
    )

    t0 = time.perf_counter()
    df = script_reproduction()
    t_vec = time.perf_counter() - t0
    cols = ["first_treatment_time", "time_to_5_percent", "time_to_90_percent"]
    with pd.option_context("display.width", 200):
        for name in SCRIPT_TREATMENTS.values():
            sub = df[df["treatment"] == name]
            show = sub[["matrix", *(f"ours_{c}" for c in cols), "ours_percentage_of_soc"]]
            print(f"schedule {name}: this code (script indices; NaN = never in 10,000 steps)")
            print(show.to_string(index=False, float_format=lambda x: f"{x:.6g}"))
    for c in [*cols, "percentage_of_soc"]:
        print(f"max |this code - script| {c}: {df[f'd_{c}'].abs().max():.3g} over {len(df)} runs")
    t0 = time.perf_counter()
    for key in SCRIPT_TREATMENTS:
        for m in range(1, 23):
            run_zhang_script([m], key)  # type: ignore[arg-type]
    t_one = time.perf_counter() - t0
    print(
        f"time, 88 runs of 10,000 steps: vectorised {t_vec:.2f} s (with the comparison); "
        f"one matrix at a time {t_one:.2f} s; ratio {t_one / t_vec:.1f}x"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument(
        "--zhang",
        action="store_true",
        help="Zhang 2017 reproduction mode against the authors' script outputs, then exit",
    )
    args = ap.parse_args()
    if args.zhang:
        zhang_reproduction()
        return
    run(args.n)


if __name__ == "__main__":
    main()
