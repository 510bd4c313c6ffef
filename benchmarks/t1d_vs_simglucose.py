"""Type 1 diabetes benchmark: simglucose's 30 patients for 30 days, this product against
simglucose itself, in the same run.

Scenario (both sides): each day, meals of 50, 70, 15 and 80 g at 07:00, 12:00, 16:00 and 18:00
(eaten at 5 g/min), the patient's basal insulin (u2ss) all the time and a bolus of carbs / CR
at each meal, no sensor (the true glucose), one minute per model step.

- this product: ``insilico_trials.sim.glucose.simulate`` on the shipped model file, all 30
  patients at once, in this process; the first call (which loads the compiled model) and a
  second call are timed separately;
- simglucose 0.2.11, in its own environment (``scripts/simglucose_env.py``; its pins are old),
  ``scripts/simglucose_timing.py``: its own per-minute ``T1DPatient.step`` loop, one patient
  after another. By default it runs ``--simglucose-days 1`` and its time is multiplied by 30
  (its cost per simulated day is constant: one ODE solve per minute); ``--simglucose-days 30``
  runs it in full (about half an hour here).

Goal (issue #21): at least 50 times faster than simglucose.

Run: ``uv run python benchmarks/t1d_vs_simglucose.py``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MEALS = [(420, 50.0), (720, 70.0), (960, 15.0), (1080, 80.0)]


def ours(days: int, check_days: int) -> tuple[float, float, float]:
    from insilico_trials.sim import glucose as G

    patients = G.simglucose_patients()
    n = len(patients)

    def once() -> tuple[float, float]:
        t0 = time.perf_counter()
        plan = G.MealPlan.fixed(n, days, MEALS)
        basal = patients["U2SS"].to_numpy() * patients["BW"].to_numpy() / 6000.0
        cr = patients["CR"].to_numpy()
        minutes = np.array([d * 1440 + m for d in range(days) for m, _ in MEALS])
        units = np.array([[c / cr[i] for _ in range(days) for _, c in MEALS] for i in range(n)])
        run = G.simulate(
            patients, days * 1440, plan, basal_u_per_min=basal,
            boluses=(np.broadcast_to(minutes, units.shape).copy(), units), record_min=5,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        # the mean over simglucose's days, recorded as it records (t = 0, 5, ... min)
        return seconds, float(run.bg[:, : check_days * 288 + 1].mean())

    first, mean_bg = once()
    second, _ = once()
    return first, second, mean_bg


def simglucose(days: int) -> dict:
    sys.path.insert(0, str(ROOT / "scripts"))
    from simglucose_env import ensure_simglucose_python

    python = ensure_simglucose_python()
    out = subprocess.run(
        [str(python), str(ROOT / "scripts" / "simglucose_timing.py"), "--patients", "30",
         "--days", str(days)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--simglucose-days", type=int, default=1)
    args = ap.parse_args()
    print(f"30 patients x {args.days} days, one-minute steps ({30 * args.days * 1440:,} "
          "patient-minutes)")  # fmt: skip
    first, second, bg = ours(args.days, args.simglucose_days)
    print(f"this product, first call (loads the compiled model): {first:8.2f} s")
    print(
        f"this product, second call:                           {second:8.2f} s  "
        f"(mean glucose {bg:.3f} mg/dL over the first {args.simglucose_days} day(s))"
    )
    print(f"simglucose: running 30 patients x {args.simglucose_days} day(s) ...", flush=True)
    ref = simglucose(args.simglucose_days)
    scale = args.days / args.simglucose_days
    sg = ref["seconds"] * scale
    how = "measured" if scale == 1 else f"measured over {args.simglucose_days} day(s) x {scale:g}"
    print(
        f"simglucose {ref['simglucose_version']}:                               {sg:8.2f} s  "
        f"({how}; mean glucose {ref['bg_mean']:.3f} mg/dL over its days)"
    )
    print(
        f"ratio simglucose / this product: {sg / first:.0f}x (first call), "
        f"{sg / second:.0f}x (second call); goal >= 50x"
    )


if __name__ == "__main__":
    main()
