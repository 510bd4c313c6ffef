"""Wall time of simglucose's own per-minute ``T1DPatient.step`` loop (reference for benchmarks).

Run with the isolated simglucose python (see ``scripts/simglucose_env.py``)::

    "$(uv run python scripts/simglucose_env.py)" scripts/simglucose_timing.py --patients 1 --days 1

Same scenario as ``scripts/simglucose_reference.py`` (meals at 07:00 50 g, 12:00 70 g,
16:00 15 g, 18:00 80 g every day, basal u2ss*BW/6000 U/min, meal boluses CHO/CR over the meal's
minute) without the correction bolus, for the first N patients in the order adolescent#001..010,
adult#001..010, child#001..010, one after another, over D days. Gsub is recorded at t = 0 and
after every 5th step.

Prints one JSON line: simglucose_version, patients, days, seconds (wall time of the simulation
loop only: patient construction and stepping, no imports), bg_mean (mean of the recorded Gsub,
mg/dL).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from simglucose_reference import (
    PATIENTS,
    RECORD_EVERY,
    Action,
    T1DPatient,
    actions_at,
    patient_basal,
    quest_cr,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=1, help=f"1..{len(PATIENTS)}")
    ap.add_argument("--days", type=int, default=1)
    args = ap.parse_args(argv)
    if not 1 <= args.patients <= len(PATIENTS):
        ap.error(f"--patients must be in 1..{len(PATIENTS)}")
    if args.days < 1:
        ap.error("--days must be >= 1")

    crs = quest_cr()
    names = PATIENTS[: args.patients]
    minutes = args.days * 1440
    gsub: list[float] = []

    start = time.perf_counter()
    for name in names:
        patient = T1DPatient.withName(name)
        basal = patient_basal(patient)
        cr = crs[name]
        gsub.append(float(patient.observation.Gsub))
        for t in range(minutes):
            cho, insulin = actions_at(t, basal, cr, correction=False)
            patient.step(Action(insulin=insulin, CHO=cho))
            if (t + 1) % RECORD_EVERY == 0:
                gsub.append(float(patient.observation.Gsub))
    seconds = time.perf_counter() - start

    print(
        json.dumps(
            {
                "simglucose_version": metadata.version("simglucose"),
                "patients": args.patients,
                "days": args.days,
                "seconds": round(seconds, 3),
                "bg_mean": sum(gsub) / len(gsub),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
