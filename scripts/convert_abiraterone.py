"""Convert the adaptive-abiraterone PSA series to CDISC ADaM shapes and to data cuts.

Reads ``examples/abiraterone/source/psa.csv`` (one row per PSA measurement: arm, patient, day,
psa_ng_ml, abiraterone, rel_psa; Zhang et al., eLife 2022;11:e76284, CC0 1.0) and writes

* ``examples/abiraterone/adam/{adsl,adlb,adex}.csv``: the whole data set;
* ``examples/abiraterone/cuts/{day0180,day0365,day0730,full}/{adsl,adlb,adex}.csv``: what was
  known on study day 180, 365, 730 and at the end (every patient's day 0 treated as the same
  calendar day: the source has no enrolment dates).

The rules (documented in ``examples/abiraterone/README.md``):

* ADSL: one row per patient, in source order. ``STUDYID`` ``NCT02415621-ABI``, ``SUBJID`` the
  source's patient code, ``USUBJID`` ``STUDYID-SUBJID``; ``ARM``/``ACTARM`` "adaptive
  abiraterone" or "continuous abiraterone" (``ARMCD``/``ACTARMCD`` ``ADAPT``/``CONT``);
  ``BASEPSA`` the PSA (ng/mL) of the first record (day 0); ``ABIBL`` the abiraterone state
  (1 on, 0 off) recorded at that first record. Nothing that grows with follow-up goes into ADSL
  (so a later cut re-sends every patient's ADSL row unchanged).
* ADLB (BDS): one row per measurement, ``PARAMCD`` ``PSA``, ``AVAL`` and ``ADY`` exactly the
  source's text (fractional days kept), ``AVALU`` ``ng/mL``, ``ABLFL`` ``Y`` on the day-0 record,
  ``BASE`` the day-0 value, ``CHG = AVAL - BASE`` (rounded to 6 decimals) and
  ``PCHG = 100 * CHG / BASE`` (rounded to 4 decimals).
* ADEX: the on/off state recorded at a measurement holds until the next measurement; runs of
  equal state are merged into one interval ``[ASTDY, AENDY]`` (AENDY the day of the first record
  with the other state; the last interval ends at the last record, so it may have zero length).
  On intervals have ``EXDOSE`` 1000, ``EXDOSU`` mg, ``EXDOSFRQ`` QD (the protocol dose, not an
  observed one); off intervals ``EXDOSE`` 0 and no frequency. Consecutive intervals touch
  (one's AENDY is the next one's ASTDY) and never overlap.
* A cut at day C keeps the patients with a record on or before C, their records with
  ``ADY <= C``, and the exposure intervals (derived from all records) starting on or before C,
  with ``AENDY`` truncated to C: the state recorded at the last visit on or before C holds on
  day C, since states change only at visits. A patient whose last record is before C keeps
  the interval ending at that record.

Output is deterministic: re-running gives identical bytes (fixed row and column order, values
written as text, ``\\n`` line endings).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "abiraterone"

STUDYID = "NCT02415621-ABI"
ARMS = {
    "adaptive": ("adaptive abiraterone", "ADAPT"),
    "standard": ("continuous abiraterone", "CONT"),
}
PARAMCD, PARAM, UNIT = "PSA", "Prostate specific antigen (ng/mL)", "ng/mL"
EXTRT, DOSE_MG, DOSE_UNIT, DOSE_FREQ = "ABIRATERONE", "1000", "mg", "QD"
CUT_DAYS = {"day0180": 180, "day0365": 365, "day0730": 730, "full": None}
SOURCE_COLUMNS = ["arm", "patient", "day", "psa_ng_ml", "abiraterone", "rel_psa"]

ADSL_COLUMNS = [
    "STUDYID", "USUBJID", "SUBJID", "ARM", "ARMCD", "ACTARM", "ACTARMCD", "BASEPSA", "ABIBL",
]  # fmt: skip
ADLB_COLUMNS = [
    "STUDYID", "USUBJID", "PARAMCD", "PARAM", "AVAL", "AVALU", "ADY", "ABLFL", "BASE", "CHG",
    "PCHG",
]  # fmt: skip
ADEX_COLUMNS = [
    "STUDYID", "USUBJID", "EXTRT", "EXDOSE", "EXDOSU", "EXDOSFRQ", "ASTDY", "AENDY",
]  # fmt: skip


def _num(x: float) -> str:
    """Shortest round-trip text of a float, never ``-0.0``."""
    return repr(float(x) + 0.0)


def read_source(path: Path) -> dict[str, list[dict[str, str]]]:
    """The source's records per patient, in source order (values kept as their text).

    Parameters
    ----------
    path : Path
        ``psa.csv`` with the columns arm, patient, day, psa_ng_ml, abiraterone, rel_psa.

    Returns
    -------
    dict
        Patient code -> that patient's rows (dicts of text), in file order.

    Raises
    ------
    ValueError
        If the header differs, a patient changes arm, the days of a patient are not
        increasing, the first day is not 0, PSA is not a finite number >= 0, or the
        abiraterone flag is not 0 or 1.
    """
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != SOURCE_COLUMNS:
            raise ValueError(f"{path}: header must be {SOURCE_COLUMNS}, got {reader.fieldnames}")
        rows = list(reader)
    patients: dict[str, list[dict[str, str]]] = {}
    for i, r in enumerate(rows):
        where = f"{path}, row {i}"
        if r["arm"] not in ARMS:
            raise ValueError(f"{where}: arm must be one of {sorted(ARMS)}, got {r['arm']!r}")
        if r["abiraterone"] not in ("0", "1"):
            raise ValueError(f"{where}: abiraterone must be 0 or 1, got {r['abiraterone']!r}")
        psa = float(r["psa_ng_ml"])
        if not (psa >= 0 and psa < float("inf")):
            raise ValueError(f"{where}: psa_ng_ml must be finite and >= 0, got {psa}")
        prev = patients.setdefault(r["patient"], [])
        if prev and prev[-1]["arm"] != r["arm"]:
            raise ValueError(f"{where}: patient {r['patient']} changes arm")
        if prev and float(r["day"]) <= float(prev[-1]["day"]):
            raise ValueError(f"{where}: days of {r['patient']} must increase, got {r['day']}")
        if not prev and float(r["day"]) != 0.0:
            raise ValueError(f"{where}: first day of {r['patient']} must be 0, got {r['day']}")
        prev.append(r)
    return patients


def _usubjid(patient: str) -> str:
    return f"{STUDYID}-{patient}"


def adsl_rows(patients: dict[str, list[dict[str, str]]]) -> list[list[str]]:
    """One ADSL row per patient (columns :data:`ADSL_COLUMNS`), in source order."""
    out = []
    for patient, recs in patients.items():
        arm, armcd = ARMS[recs[0]["arm"]]
        first = recs[0]
        out.append(
            [
                STUDYID, _usubjid(patient), patient, arm, armcd, arm, armcd,
                first["psa_ng_ml"], first["abiraterone"],
            ]
        )  # fmt: skip
    return out


def adlb_rows(patients: dict[str, list[dict[str, str]]]) -> list[list[str]]:
    """One ADLB (BDS) row per PSA record (columns :data:`ADLB_COLUMNS`), in source order."""
    out = []
    for patient, recs in patients.items():
        base_text = recs[0]["psa_ng_ml"]
        base = float(base_text)
        for j, r in enumerate(recs):
            chg = round(float(r["psa_ng_ml"]) - base, 6)
            pchg = round(100.0 * chg / base, 4) if base > 0 else None
            out.append(
                [
                    STUDYID, _usubjid(patient), PARAMCD, PARAM, r["psa_ng_ml"], UNIT, r["day"],
                    "Y" if j == 0 else "", base_text, _num(chg),
                    "" if pchg is None else _num(pchg),
                ]
            )  # fmt: skip
    return out


def exposure_runs(recs: list[dict[str, str]]) -> list[tuple[str, str, str]]:
    """Intervals ``(state, ASTDY text, AENDY text)`` of one patient from its records.

    The state recorded at a record holds until the next record; runs of equal state are one
    interval, ending on the day of the first record with the other state; the last interval
    ends on the last record's day.
    """
    runs: list[tuple[str, str, str]] = []
    start = 0
    for j in range(1, len(recs) + 1):
        if j == len(recs) or recs[j]["abiraterone"] != recs[start]["abiraterone"]:
            end = recs[j]["day"] if j < len(recs) else recs[-1]["day"]
            runs.append((recs[start]["abiraterone"], recs[start]["day"], end))
            start = j
    return runs


def adex_rows(
    patients: dict[str, list[dict[str, str]]], cut_day: float | None = None
) -> list[list[str]]:
    """ADEX rows (columns :data:`ADEX_COLUMNS`), truncated at ``cut_day`` when given."""
    out = []
    for patient, recs in patients.items():
        for state, start, end in exposure_runs(recs):
            if cut_day is not None:
                if float(start) > cut_day:
                    break
                if float(end) > cut_day:
                    end = _num(cut_day)
            on = state == "1"
            out.append(
                [
                    STUDYID, _usubjid(patient), EXTRT, DOSE_MG if on else "0", DOSE_UNIT,
                    DOSE_FREQ if on else "", start, end,
                ]
            )  # fmt: skip
    return out


def restrict(
    patients: dict[str, list[dict[str, str]]], cut_day: float | None
) -> dict[str, list[dict[str, str]]]:
    """The records known on ``cut_day`` (``day <= cut_day``); patients with none are dropped."""
    if cut_day is None:
        return patients
    out = {}
    for patient, recs in patients.items():
        kept = [r for r in recs if float(r["day"]) <= cut_day]
        if kept:
            out[patient] = kept
    return out


def _write(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    tmp.replace(path)


def write_cut(
    folder: Path, patients: dict[str, list[dict[str, str]]], cut_day: float | None
) -> None:
    """Write ``adsl.csv``, ``adlb.csv`` and ``adex.csv`` of one cut into ``folder``."""
    known = restrict(patients, cut_day)
    _write(folder / "adsl.csv", ADSL_COLUMNS, adsl_rows(known))
    _write(folder / "adlb.csv", ADLB_COLUMNS, adlb_rows(known))
    # intervals from every record, then truncated: the state seen at the last visit before the
    # cut day still holds on the cut day (states change only at visits)
    full = {patient: patients[patient] for patient in known}
    _write(folder / "adex.csv", ADEX_COLUMNS, adex_rows(full, cut_day))


def convert(source: Path, out: Path) -> dict[str, dict[str, int]]:
    """Convert ``source`` into ``out/adam`` and ``out/cuts/<cut>``.

    Parameters
    ----------
    source : Path
        The source ``psa.csv``.
    out : Path
        The example folder (``examples/abiraterone``).

    Returns
    -------
    dict
        Per folder (``adam``, each cut): counts of subjects, ADLB records, ADEX intervals.
    """
    patients = read_source(source)
    folders: dict[str, float | None] = {"adam": None}
    folders.update({f"cuts/{k}": v for k, v in CUT_DAYS.items()})
    counts = {}
    for name, day in folders.items():
        write_cut(out / name, patients, day)
        known = restrict(patients, day)
        counts[name] = {
            "subjects": len(known),
            "records": sum(len(r) for r in known.values()),
            "intervals": len(adex_rows({p: patients[p] for p in known}, day)),
        }
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python scripts/convert_abiraterone.py [--source PATH] [--out DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=EXAMPLE / "source" / "psa.csv")
    parser.add_argument("--out", type=Path, default=EXAMPLE)
    args = parser.parse_args(argv)
    digest = hashlib.sha256(args.source.read_bytes()).hexdigest()
    counts = convert(args.source, args.out)
    print(f"source {args.source} sha256 {digest}")
    for name, c in counts.items():
        print(
            f"{name}: {c['subjects']} subjects, {c['records']} PSA records, "
            f"{c['intervals']} exposure intervals"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
