"""Digital-twin fit and update on the real abiraterone data (examples/abiraterone, CC0).

Prints, on this machine:

1. the cost of one log density and gradient of the full-data model (32 patients, 678 PSA
   records, 4-day RK4 steps) with the compiled solver and with the ``scan`` solver (the
   baseline: the same RK4 written in pytensor), and their ratio;
2. the full-data fit with the protocol's settings (protocols/abiraterone_twins.yaml) with
   each solver: wall time split into compilation, pilot and sampling, peak resident memory,
   convergence, and the ratio scan / compiled;
3. one cut's update (:func:`insilico_trials.run.twins.update_twins`: forecast skill of the
   day-365 twins on the day-730 records, refit, counterfactual arms), in a fresh state
   (compiled model not cached).

Goals (issue #16): the fit under 3 minutes, an update under 60 s on a 2-core machine.

Run: ``uv run python benchmarks/twin_fit.py`` (about 10 minutes).
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _inputs(protocol, name: str):
    from insilico_trials.app.twins_cmd import twin_inputs
    from insilico_trials.io.realdata import load_cut

    return twin_inputs(protocol, load_cut(ROOT / "examples/abiraterone/cuts" / name))


def _gradient_ms(data, solver: str) -> float:
    import numpy as np

    from insilico_trials.infer import twins as twin_fit
    from insilico_trials.models.twins import get_twin_model

    _grid, d = twin_fit._grid_data(data, twin_fit._requested_days(data, None), 4.0)
    y = np.concatenate([np.asarray(v, float) for v in data.values])
    first = np.concatenate([np.full(len(v), float(v[0])) for v in data.values])
    d["floor"] = np.maximum(0.05, 0.05 * first)
    d["log_y_obs"] = np.log(y + d["floor"])
    m = twin_fit._build(get_twin_model("zhang2022"), d, data.n_patients, twin_fit.CENTRED, solver)
    f = m.logp_dlogp_function(mode="NUMBA", ravel_inputs=True)
    ip = m.initial_point()
    x = np.concatenate([np.ravel(ip[v.name]) for v in f._grad_vars])
    f(x)
    n = 500
    t = time.perf_counter()
    for _ in range(n):
        f(x)
    return (time.perf_counter() - t) / n * 1e3


def _fit(data, protocol, solver: str, seed: int):
    from insilico_trials.infer import twins as twin_fit

    f = protocol.twins.fit
    t = time.perf_counter()
    fit = twin_fit.fit_twins(
        data, seed=seed, draws=f.draws, tune=f.tune, chains=f.chains,
        target_accept=f.target_accept, max_step_days=f.max_step_days, solver=solver,
    )  # fmt: skip
    wall = time.perf_counter() - t
    d, st = fit.diagnostics, fit.settings
    print(
        f"fit ({solver}): {wall:.1f} s (compile {st['compile_s']:.1f} s, pilot "
        f"{st['pilot_s']:.1f} s, sampling {st['sample_s']:.1f} s), peak RSS {_peak_mib():.0f} "
        f"MiB; R-hat max {d['max_rhat']:.3f}, ESS bulk min {d['min_ess_bulk']:.0f}, "
        f"divergences {d['divergences']}, converged {fit.converged}",
        flush=True,
    )
    return wall


def main() -> int:
    from insilico_trials.infer import twins as twin_fit
    from insilico_trials.run.twins import update_twins
    from insilico_trials.spec.protocol import load_protocol

    protocol = load_protocol(ROOT / "protocols/abiraterone_twins.yaml")
    data, _arms = _inputs(protocol, "full")
    print(f"full data: {data.n_patients} patients, {sum(len(d) for d in data.days)} records")
    g_c = _gradient_ms(data, "compiled")
    g_s = _gradient_ms(data, "scan")
    print(
        f"log density + gradient: compiled {g_c:.2f} ms, scan {g_s:.2f} ms "
        f"(ratio scan / compiled {g_s / g_c:.2f})",
        flush=True,
    )
    t_cold = _fit(data, protocol, "compiled", protocol.seed)
    t_scan = _fit(data, protocol, "scan", protocol.seed)
    print(f"ratio fit scan / compiled: {t_scan / t_cold:.2f}")

    twin_fit._CACHE.clear()
    prev_data, _ = _inputs(protocol, "day0365")
    prev = update_twins(protocol, prev_data, _arms)
    new_data, arms = _inputs(protocol, "day0730")
    twin_fit._CACHE.clear()
    t = time.perf_counter()
    upd = update_twins(
        protocol, new_data, arms, previous=prev.draws,
        previous_days={p: float(x[-1]) for p, x in zip(prev_data.patients, prev_data.days, strict=True)},
    )  # fmt: skip
    t_upd = time.perf_counter() - t
    s = upd.skill or {}
    print(
        f"update day0365 -> day0730: {t_upd:.1f} s (fit compile "
        f"{upd.fit.settings['compile_s']:.1f} s, sampling {upd.fit.settings['sample_s']:.1f} s); "
        f"forecast of {s.get('n_new_records')} records: {s.get('coverage50', float('nan')):.2f} "
        f"inside 50%, {s.get('coverage90', float('nan')):.2f} inside 90%, mean CRPS "
        f"{s.get('crps_mean', float('nan')):.3g} ng/mL; peak RSS {_peak_mib():.0f} MiB"
    )
    print(
        f"summary: fit {t_cold:.0f} s (goal 180 s), update {t_upd:.0f} s (goal 60 s), "
        f"peak RSS {_peak_mib():.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
