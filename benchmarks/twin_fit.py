"""Digital-twin fit and update on the real abiraterone data (examples/abiraterone, CC0).

Prints, on this machine:

1. the full-data fit of all 32 patients (678 PSA records) with the protocol's settings
   (protocols/abiraterone_twins.yaml): wall time split into compilation and sampling, peak
   resident memory, convergence;
2. a refit of the same data in the same process (the compiled model reused, another seed):
   the baseline a cold fit is compared with (ratio cold / warm);
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


def main() -> int:
    from insilico_trials.infer import twins as twin_fit
    from insilico_trials.run.twins import update_twins
    from insilico_trials.spec.protocol import load_protocol

    protocol = load_protocol(ROOT / "protocols/abiraterone_twins.yaml")
    f = protocol.twins.fit
    data, _arms = _inputs(protocol, "full")
    print(f"full data: {data.n_patients} patients, {sum(len(d) for d in data.days)} records")
    settings = dict(
        draws=f.draws, tune=f.tune, chains=f.chains, target_accept=f.target_accept,
        max_step_days=f.max_step_days,
    )  # fmt: skip
    t = time.perf_counter()
    cold = twin_fit.fit_twins(data, seed=protocol.seed, **settings)
    t_cold = time.perf_counter() - t
    d = cold.diagnostics
    print(
        f"cold fit: {t_cold:.1f} s (compile {cold.settings['compile_s']:.1f} s, sampling "
        f"{cold.settings['sample_s']:.1f} s), peak RSS {_peak_mib():.0f} MiB; R-hat max "
        f"{d['max_rhat']:.3f}, ESS bulk min {d['min_ess_bulk']:.0f}, divergences "
        f"{d['divergences']}, converged {cold.converged}"
    )
    t = time.perf_counter()
    warm = twin_fit.fit_twins(data, seed=protocol.seed + 100, **settings)
    t_warm = time.perf_counter() - t
    print(
        f"warm refit (compiled model reused): {t_warm:.1f} s (compile "
        f"{warm.settings['compile_s']:.2f} s); converged {warm.converged}"
    )
    print(f"ratio cold / warm: {t_cold / t_warm:.2f}")

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
