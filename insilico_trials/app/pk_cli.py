"""CSV interface for pharmacometricians: NONMEM-style records in, one output row per record out.

The lead wires :func:`simulate_csv` into ``insilico-trials pk simulate DATA.csv --model M -o OUT``;
a :class:`~insilico_trials.errors.PKInputError` there means exit code 2 and no output file.
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

import pandas as pd

from insilico_trials.errors import PKInputError
from insilico_trials.models.pk import resolve_model
from insilico_trials.sim.pk.events import COVARIATE_TIMINGS, prepare_records, simulate_records

__all__ = ["simulate_csv"]


def simulate_csv(
    data_path: Path, *, model: str, out_path: Path, covariate_timing: str = "nocb"
) -> int:
    """Simulate a NONMEM-style CSV and write ID, TIME, EVID, outputs, A1..An per input row.

    Parameters
    ----------
    data_path
        Input CSV: ID, TIME, optional AMT, EVID, CMT, II, ADDL, RATE, SS, the model's parameter
        columns and optional ALAGn, Fn, Rn, Dn (names case-insensitive; C and DV ignored).
    model
        Model name (``pk1cmt``, ``pk2cmt``, ``pk3cmt``, ``pk1cmt_mm``) or the path of a model
        file (``.yaml``, :mod:`insilico_trials.spec.modelfile`), whose outputs replace CP.
    out_path
        Output CSV, written atomically (a temporary file in the same folder, then ``os.replace``).
    covariate_timing
        ``"nocb"`` (NONMEM) or ``"locf"``.

    Returns
    -------
    int
        Number of rows written.

    Raises
    ------
    PKInputError
        Before anything is written, naming the file, the row (1-based data row), the value and
        what is allowed.
    """
    data_path, out_path = Path(data_path), Path(out_path)
    name = data_path.name
    spec = resolve_model(model)
    if data_path.is_dir():
        raise PKInputError(f"{data_path}: a folder; give a CSV file of NONMEM-style records")
    if out_path.resolve() == data_path.resolve():
        raise PKInputError(
            f"-o {out_path}: the output would overwrite the input data set; choose another file"
        )
    if covariate_timing not in COVARIATE_TIMINGS:
        raise PKInputError(
            f"covariate_timing must be one of {', '.join(COVARIATE_TIMINGS)}, "
            f"got {covariate_timing!r}"
        )
    try:
        # strings first: NONMEM's "." and the C column must not break type inference
        data = pd.read_csv(data_path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise PKInputError(f"{data_path}: file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise PKInputError(f"{name}: not a readable CSV ({exc})") from None
    if data.empty:
        raise PKInputError(f"{name}: no records")
    with open(data_path, newline="", encoding="utf-8", errors="replace") as fh:
        header = next(csv.reader(fh), [])
    seen: set[str] = set()
    for column in header:
        key = column.strip().upper()
        if key in seen:  # pandas would rename the second one and drop it silently
            raise PKInputError(f"{name}: duplicate column {column!r} in the header")
        seen.add(key)
    records = prepare_records(data, model=spec, source=name)
    out = simulate_records(records, covariate_timing=covariate_timing)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            out.to_csv(fh, index=False, float_format="%.17g")
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(out)
