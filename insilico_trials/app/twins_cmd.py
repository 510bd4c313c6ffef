"""The twin part of ``insilico-trials update``: read a cut's longitudinal data, refit the
twins (:func:`insilico_trials.run.twins.update_twins`), and name what the update archives.

Files of a twin update (``updates/NNN/twins/``), all hashed in the update's manifest:

``twins.parquet``
    ``patient, parameter, mean, median, q05, q95``: per-patient posterior summaries.
``population.csv``
    Shared parameters, population medians and spreads, residual sd.
``curves.parquet``
    ``patient, day, mean, median, q05, q95``: the fitted biomarker with its 90 % band
    (weekly and at every record), ``value`` where a record exists.
``idata.nc``
    The posterior (ArviZ InferenceData, NetCDF) without the curve draws.
``draws.parquet``
    The posterior draws kept for the next cut's forecast and the counterfactual arms.
``counterfactual.parquet``, ``km.parquet``
    Per patient and protocol arm: model TTP and time on drug; Kaplan-Meier curves of the
    patient-matched synthetic control and the real control cohort.
``forecast.parquet``
    Per record that arrived with this cut: the previous twins' predictive quantiles, whether
    it fell inside the 50 % and 90 % intervals, and its CRPS (absent at the first cut).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from insilico_trials.errors import InputError
from insilico_trials.io.realdata import Cut, exposure_intervals, longitudinal_frame
from insilico_trials.run.twins import TwinUpdate, twin_cut
from insilico_trials.sim.twins import TwinCut
from insilico_trials.spec.protocol import TrialProtocol

__all__ = ["previous_twins", "twin_files", "twin_inputs", "twin_record"]

TWIN_DIR = "twins"


def twin_inputs(protocol: TrialProtocol, cut: Cut) -> tuple[TwinCut, dict[str, str]]:
    """The twin data of a cut: every subject of the ADSL arms named in ``twins.real_arms``
    with his records of ``twins.paramcd`` and his ``twins.treatment`` exposure.

    Raises
    ------
    InputError
        The cut has no ADLB or ADEX, or no subject of those arms.
    """
    tw = protocol.twins
    assert tw is not None
    for name in ("adlb", "adex"):
        if getattr(cut, name) is None:
            raise InputError(
                f"{cut.path}: a twin update needs an {name} dataset (twins.model {tw.model} "
                f"reads {tw.paramcd} records and {tw.treatment} exposure); found "
                f"{sorted(cut.files)}",
                where=str(cut.path), rule=f"{name} present", actual=sorted(cut.files),
            )  # fmt: skip
    arms = sorted(set(tw.real_arms.values()))
    records = longitudinal_frame(cut, tw.paramcd)
    records = records[records["arm"].isin(arms)]
    if records.empty:
        raise InputError(
            f"{cut.path}: no {tw.paramcd} record of a subject in ADSL arm(s) {arms} "
            "(twins.real_arms)",
            where=str(cut.path), actual=sorted(set(longitudinal_frame(cut, tw.paramcd)["arm"])),
            expected=str(arms),
        )  # fmt: skip
    exposure = exposure_intervals(cut, tw.treatment)
    data = twin_cut(records, exposure)
    arm_of = dict(zip(records["usubjid"], records["arm"], strict=False))
    return data, {p: str(arm_of[p]) for p in data.patients}


def previous_twins(folders: Sequence[Path]) -> tuple[pd.DataFrame, dict[str, float]] | None:
    """The latest earlier twin update's draws and each patient's last record day in it."""
    for folder in reversed(list(folders)):
        d = folder / TWIN_DIR / "draws.parquet"
        if d.exists():
            last = json.loads((folder / "update.json").read_text(encoding="utf-8"))
            return pd.read_parquet(d), dict(last["twins"]["last_record_day"])
    return None


def twin_record(upd: TwinUpdate, data: TwinCut) -> dict[str, Any]:
    """The ``twins`` entry of ``update.json``."""
    fit = upd.fit
    pop = fit.population.set_index("parameter")
    comp = dict(upd.comparison)
    return _no_nan(
        {
            "model": fit.model,
            "n_patients": data.n_patients,
            "n_records": int(sum(len(d) for d in data.days)),
            "last_record_day": {
                p: float(d[-1]) for p, d in zip(data.patients, data.days, strict=True)
            },
            "converged": bool(fit.converged),
            "diagnostics": {k: v for k, v in fit.diagnostics.items()},
            "shared": {
                q: {c: float(pop.loc[q, c]) for c in ("median", "q05", "q95")} for q in pop.index
            },
            "settings": {k: v for k, v in fit.settings.items() if not k.endswith("_s")},
            "forecast": upd.skill,
            "synthetic_vs_real": comp,
        }
    )


def _no_nan(obj: Any) -> Any:
    """JSON-safe: NaN and infinities become None (JSON has neither), numpy scalars plain."""
    if isinstance(obj, dict):
        return {str(k): _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_no_nan(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def twin_files(upd: TwinUpdate, data: TwinCut) -> dict[str, Callable[[Path], None]]:
    """Writers of the twin update's files (see the module docstring)."""
    from insilico_trials.io.outputs import write_inference_data

    obs = pd.DataFrame(
        {
            "patient": np.repeat(
                np.array(data.patients, dtype=object), [len(d) for d in data.days]
            ),
            "day": np.concatenate(data.days),
            "value": np.concatenate(data.values or ()),
        }
    )
    curves = upd.fit.curves.merge(obs, on=["patient", "day"], how="left")

    def parquet(df: pd.DataFrame) -> Callable[[Path], None]:
        return lambda path: df.to_parquet(path, index=False)

    def idata(path: Path) -> None:
        import xarray as xr

        post = upd.fit.idata["posterior"].to_dataset()
        post = post.drop_vars([v for v in ("prediction",) if v in post])
        tree = xr.DataTree.from_dict(
            {"posterior": post, "sample_stats": upd.fit.idata["sample_stats"].to_dataset()}
        )
        write_inference_data(tree, path)

    files = {
        f"{TWIN_DIR}/twins.parquet": parquet(upd.fit.summary),
        f"{TWIN_DIR}/population.csv": lambda p: p.write_text(
            upd.fit.population.to_csv(index=False, float_format="%.12g")
        ),
        f"{TWIN_DIR}/curves.parquet": parquet(curves),
        f"{TWIN_DIR}/idata.nc": idata,
        f"{TWIN_DIR}/draws.parquet": parquet(upd.draws),
        f"{TWIN_DIR}/counterfactual.parquet": parquet(upd.counterfactual),
        f"{TWIN_DIR}/km.parquet": parquet(upd.km),
    }
    if upd.skill_rows is not None:
        files[f"{TWIN_DIR}/forecast.parquet"] = parquet(upd.skill_rows)
    return files


def replay_twin_updates(
    archive: Path, protocol: TrialProtocol, progress: Callable[[str], None] | None = None
) -> list[tuple[str, bool, str]]:
    """Re-execute every twin update of an archive from its archived cuts, in order, and
    compare each twin file and the ``twins`` entry of ``update.json`` with the archive.

    Returns ``(name, identical, detail)`` rows like
    :func:`insilico_trials.io.archive.compare_outputs`.
    """
    import tempfile

    from insilico_trials.io.archive import read_manifest, sha256_file, update_folders
    from insilico_trials.io.realdata import load_cut
    from insilico_trials.run.twins import update_twins

    rows: list[tuple[str, bool, str]] = []
    prev: tuple[pd.DataFrame, dict[str, float]] | None = None
    for folder in update_folders(archive):
        record = json.loads((folder / "update.json").read_text(encoding="utf-8"))
        if not record.get("twins"):
            continue
        cut = load_cut(folder / "cut", cut_id=folder.name, allow_list=False)
        data, real_arm = twin_inputs(protocol, cut)
        if progress is not None:
            progress(f"rerun: twin update {folder.name}")
        upd = update_twins(
            protocol, data, real_arm,
            previous=prev[0] if prev else None, previous_days=prev[1] if prev else None,
            progress=progress,
        )  # fmt: skip
        expected = read_manifest(folder)["outputs"]
        with tempfile.TemporaryDirectory(prefix="insilico-twin-rerun-") as tmp:
            for name, writer in twin_files(upd, data).items():
                path = Path(tmp) / name
                path.parent.mkdir(parents=True, exist_ok=True)
                writer(path)
                label = f"updates/{folder.name}/{name}"
                if name not in expected:
                    rows.append((label, False, "not in the archived update"))
                    continue
                got = sha256_file(path)
                rows.append((label, got == expected[name],
                             "" if got == expected[name] else f"sha256 {got[:12]} != "
                             f"{expected[name][:12]}"))  # fmt: skip
        again = json.loads(json.dumps(twin_record(upd, data), default=_plain))
        same = again == record["twins"]
        rows.append((f"updates/{folder.name}/update.json (twins)", same,
                     "" if same else "the twins entry differs"))  # fmt: skip
        prev = (upd.draws, dict(again["last_record_day"]))
    return rows


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
