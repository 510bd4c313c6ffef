"""Model-file benchmark: the mrgsolve scenario through a user-written model file.

Scenario (as ``benchmarks/pk_population.py``): 2,000 subjects, 2-cmt oral (CL 1, V1 20, Q 2,
V2 10, KA 1, lognormal IIV omega^2 0.1 on CL, V1, KA), 56 doses of 100 mg every 24 h, output
every hour from 0 to 1,344 h (2,690,000 concentrations), single process, 2 cores.

Measured in the same run:

- the shipped model file ``insilico_trials/models/library/pk2cmt.yaml`` (Dormand-Prince 5(4),
  mrgsolve's default tolerances rtol 1e-8, atol 1e-8 mg), its maximum relative error against
  the exact solution, and the same file at rtol 1e-6;
- the built-in exact path (closed-form superposition);
- a per-patient ``scipy.integrate.solve_ivp`` loop (LSODA, rtol 1e-8, atol 1e-8), 20 patients,
  extrapolated to 2,000;
- the Michaelis-Menten file ``pk1cmt_mm.yaml`` (VMAX 50 mg/h, KM 2 mg/L with IIV) on the same
  schedule: the nonlinear model's time against the linear file's;
- compilation: a fresh process with an empty model cache (numba compiles) and one with the cache
  filled (numba loads machine code).

Goals (issue #20): model-file path under 0.7 s (10x mrgsolve's ODE path, 6.7 s on this
machine); the nonlinear model within 3x of the linear one; max relative error <= 1e-6.

Run: ``uv run python benchmarks/pk_model_file.py``
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pk_population import N_BASELINE, REGIMEN, TIMES, N, draw_params, run_solve_ivp_loop

from insilico_trials.models.pk import resolve_model
from insilico_trials.sim.pk import simulate_regimen
from insilico_trials.spec.modelfile import library_path

REPEATS = 5
COMPILE = """
import time, numpy as np
t0 = time.perf_counter()
from insilico_trials.models.pk import resolve_model
from insilico_trials.spec.modelfile import library_path
from insilico_trials.sim.pk.modelkernel import kernel_for
t1 = time.perf_counter()
kernel = kernel_for(resolve_model(str(library_path("pk2cmt"))))
t2 = time.perf_counter()
kernel.population(np.ones((1, 5)), np.array([0.0]), np.ones((1, 1, 3)), np.zeros((1, 1, 3)),
                  np.array([1.0]))
print(f"{t1 - t0:.2f} {time.perf_counter() - t1:.2f}")
"""


def best_of(fn, repeats: int = REPEATS) -> tuple[float, float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times)), out


def compile_times() -> tuple[str, str]:
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as cache:
        env["INSILICO_MODEL_CACHE"] = cache
        cold = subprocess.run([sys.executable, "-c", COMPILE], env=env, capture_output=True,
                              text=True, check=True).stdout.split()  # fmt: skip
        warm = subprocess.run([sys.executable, "-c", COMPILE], env=env, capture_output=True,
                              text=True, check=True).stdout.split()  # fmt: skip
    return cold[1], warm[1]


def main() -> None:
    params = draw_params(N)
    rng = np.random.default_rng(7)
    mm = {
        "VMAX": 50.0 * np.exp(rng.normal(0, np.sqrt(0.1), N)),
        "KM": np.full(N, 2.0),
        "V": params["V1"],
        "KA": params["KA"],
    }
    linear = resolve_model(str(library_path("pk2cmt")))
    loose = dataclasses.replace(linear, rtol=1e-6, _compiled={})
    nonlinear = resolve_model(str(library_path("pk1cmt_mm")))
    for model, p in ((linear, params), (loose, params), (nonlinear, mm)):  # load the kernels
        simulate_regimen(model, {k: v[:2] for k, v in p.items()}, times_h=TIMES, **REGIMEN)
    simulate_regimen("pk2cmt", {k: v[:2] for k, v in params.items()}, times_h=TIMES, **REGIMEN)

    def run(model, p):
        return lambda: simulate_regimen(model, p, times_h=TIMES, **REGIMEN)

    t_file, m_file, ours = best_of(run(linear, params))
    t_loose, _, ours_loose = best_of(run(loose, params))
    t_mm, m_mm, _ = best_of(run(nonlinear, mm))
    t_exact, _, exact = best_of(run("pk2cmt", params))
    sub = {k: v[:N_BASELINE] for k, v in params.items()}
    t0 = time.perf_counter()
    run_solve_ivp_loop(sub)
    t_loop = (time.perf_counter() - t0) * N / N_BASELINE

    pos = exact > 0
    err = np.max(np.abs(ours[pos] - exact[pos]) / exact[pos])
    err_loose = np.max(np.abs(ours_loose[pos] - exact[pos]) / exact[pos])
    zeros = bool(np.all(ours[~pos] == 0))
    print(f"scenario: {N} subjects x {TIMES.size} times = {N * TIMES.size:,} concentrations")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; best of {REPEATS}")
    print()
    print("| path | seconds | vs model file |")
    print("| --- | --- | --- |")
    print(f"| model file pk2cmt.yaml (rtol 1e-8, atol 1e-8) | {t_file:.3f} (median {m_file:.3f}) "
          "| 1.0 |")  # fmt: skip
    print(f"| model file, rtol 1e-6 | {t_loose:.3f} | {t_loose / t_file:.2f} |")
    print(f"| model file pk1cmt_mm.yaml (nonlinear) | {t_mm:.3f} (median {m_mm:.3f}) "
          f"| {t_mm / t_file:.2f} |")  # fmt: skip
    print(f"| built-in exact path | {t_exact:.3f} | {t_exact / t_file:.3f} |")
    print(f"| solve_ivp loop (LSODA 1e-8; {N_BASELINE} patients x {N // N_BASELINE}) "
          f"| {t_loop:.1f} | {t_loop / t_file:.0f} |")  # fmt: skip
    print("| mrgsolve 2.0.2 ODE path (given for this machine, not run here) | 6.7 | "
          f"{6.7 / t_file:.1f} |")  # fmt: skip
    print()
    print(f"max relative error vs exact: {err:.2e} (rtol 1e-8), {err_loose:.2e} (rtol 1e-6); "
          f"zeros before the first dose exact: {zeros}; criterion 1e-6 -> "
          f"{'OK' if err <= 1e-6 and zeros else 'FAIL'}")  # fmt: skip
    print(f"goal model file < 0.7 s: {'met' if t_file < 0.7 else 'NOT met'} ({t_file:.3f} s); "
          f"nonlinear within 3x: {'met' if t_mm < 3 * t_file else 'NOT met'} "
          f"({t_mm / t_file:.2f}x)")  # fmt: skip
    cold, warm = compile_times()
    print(f"compile pk2cmt.yaml in a fresh process: {cold} s with an empty cache (numba), "
          f"{warm} s from the cache")  # fmt: skip


if __name__ == "__main__":
    main()
