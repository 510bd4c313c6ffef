"""Reference trajectories from the open-source simglucose (open loop, no sensor, no pump).

Run with the isolated simglucose python (see ``scripts/simglucose_env.py``)::

    "$(uv run python scripts/simglucose_env.py)" scripts/simglucose_reference.py

For each of the 30 virtual patients (adolescent#001..010, adult#001..010, child#001..010) it
drives ``T1DPatient.withName(name)`` directly, one minute per ``patient.step(Action(...))``,
for 3 days (4320 minutes) from the patient's initial state, with the scenario of
:func:`actions_at` (documented in ``tests/diabetes/reference/README.md``), and writes

* ``tests/diabetes/reference/simglucose_open_loop.csv.gz``: patient, t_min, BG (= Gp/Vg,
  mg/dL), Gsub (= observation.Gsub = Gs/Vg, mg/dL), Ip (= Ip/Vi, pmol/L) at t = 0, 5, ...,
  4320, values to 6 significant digits (gzip with mtime 0, so the bytes are reproducible);
* ``tests/diabetes/reference/simglucose_states_t1440.csv``: patient, x0..x12 at t = 1440 (full
  precision, ``repr`` of the float).

Prints one progress line per patient and the SHA-256 of both files.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path

# gym 0.9.4 (imported by simglucose/__init__.py) imports the deprecated pkg_resources.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
warnings.filterwarnings("ignore", category=SyntaxWarning)

import pandas as pd  # noqa: E402
from simglucose.patient.t1dpatient import Action, T1DPatient  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from simglucose_env import SIMGLUCOSE_VERSION  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "tests" / "diabetes" / "reference"

PATIENTS: tuple[str, ...] = tuple(
    f"{group}#{i:03d}" for group in ("adolescent", "adult", "child") for i in range(1, 11)
)
# (minute of the day, grams of carbohydrate), every day.
MEALS: tuple[tuple[int, float], ...] = ((420, 50.0), (720, 70.0), (960, 15.0), (1080, 80.0))
# Correction bolus without a meal: (absolute minute, units), delivered over one minute.
CORRECTION: tuple[int, float] = (1440 + 180, 1.0)
RECORD_EVERY = 5  # minutes
STATES_AT = 1440  # minutes


def quest_cr() -> dict[str, float]:
    """Carbohydrate ratio (g/U) per patient from simglucose's own Quest.csv."""
    from simglucose.controller.basal_bolus_ctrller import CONTROL_QUEST

    quest = pd.read_csv(CONTROL_QUEST)
    return {str(n): float(cr) for n, cr in zip(quest.Name, quest.CR, strict=True)}


def actions_at(t: int, basal: float, cr: float, *, correction: bool = True) -> tuple[float, float]:
    """(CHO in g, insulin in U/min) passed to ``patient.step`` at the step starting at minute t.

    CHO is the whole meal, only at the meal's minute (the patient itself eats it at 5 g/min);
    insulin is basal every minute, plus meal/CR units over the meal's minute, plus the
    correction bolus over its minute.
    """
    cho = 0.0
    insulin = basal
    minute_of_day = t % 1440
    for at, grams in MEALS:
        if minute_of_day == at:
            cho = grams
            insulin += grams / cr
    if correction and t == CORRECTION[0]:
        insulin += CORRECTION[1]
    return cho, insulin


def patient_basal(patient: T1DPatient) -> float:
    """Basal insulin rate (U/min) = u2ss (pmol/kg/min) * BW (kg) / 6000 (pmol/U)."""
    return float(patient._params.u2ss) * float(patient._params.BW) / 6000.0


def simulate(
    name: str,
    minutes: int,
    cr: float,
    *,
    correction: bool = True,
    states_at: int | None = None,
) -> tuple[list[tuple[int, float, float, float]], list[float] | None]:
    """Run one patient; rows (t, BG, Gsub, Ip) every RECORD_EVERY minutes, states at states_at."""
    patient = T1DPatient.withName(name)
    params = patient._params
    vg, vi = float(params.Vg), float(params.Vi)
    basal = patient_basal(patient)

    def row(t: int) -> tuple[int, float, float, float]:
        x = patient.state
        return (t, float(x[3]) / vg, float(patient.observation.Gsub), float(x[5]) / vi)

    rows = [row(0)]
    states = None
    for t in range(minutes):
        cho, insulin = actions_at(t, basal, cr, correction=correction)
        patient.step(Action(insulin=insulin, CHO=cho))
        done = t + 1
        if patient.t != done:
            raise RuntimeError(f"{name}: patient.t = {patient.t}, expected {done}")
        if done % RECORD_EVERY == 0:
            rows.append(row(done))
        if states_at is not None and done == states_at:
            states = [float(v) for v in patient.state]
    return rows, states


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", type=Path, default=OUT_DIR)
    ap.add_argument("--days", type=int, default=3)
    args = ap.parse_args(argv)

    installed = metadata.version("simglucose")
    if installed != SIMGLUCOSE_VERSION:
        raise SystemExit(f"simglucose {installed} installed, expected {SIMGLUCOSE_VERSION}")

    minutes = args.days * 1440
    crs = quest_cr()
    text = io.StringIO(newline="")
    traj = csv.writer(text, lineterminator="\n")
    traj.writerow(["patient", "t_min", "BG", "Gsub", "Ip"])
    state_rows: list[list[str]] = []
    start = time.perf_counter()
    for name in PATIENTS:
        t0 = time.perf_counter()
        rows, states = simulate(name, minutes, crs[name], states_at=STATES_AT)
        for t, bg, gsub, ip in rows:
            traj.writerow([name, t, f"{bg:.6g}", f"{gsub:.6g}", f"{ip:.6g}"])
        if states is None:
            raise RuntimeError(f"{name}: no states recorded at t = {STATES_AT}")
        state_rows.append([name, *(repr(v) for v in states)])
        bgs = [r[1] for r in rows]
        print(
            f"{name}: BG min {min(bgs):.1f} max {max(bgs):.1f} end {bgs[-1]:.1f} mg/dL "
            f"({time.perf_counter() - t0:.1f} s)",
            flush=True,
        )

    args.out_dir.mkdir(parents=True, exist_ok=True)
    traj_path = args.out_dir / "simglucose_open_loop.csv.gz"
    with (
        open(traj_path, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz,
    ):
        gz.write(text.getvalue().encode())
    states_path = args.out_dir / "simglucose_states_t1440.csv"
    with open(states_path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["patient", *(f"x{i}" for i in range(13))])
        w.writerows(state_rows)
    print(
        f"simglucose {installed}, {len(PATIENTS)} patients x {args.days} days in "
        f"{time.perf_counter() - start:.1f} s"
    )
    for path in (traj_path, states_path):
        print(f"{_sha256(path)}  {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
