"""Writing a trial run's archive, and the provenance that goes with it.

Numeric outputs are written byte-deterministically (Parquet without timestamps, JSON with sorted
keys), so the same protocol gives the same SHA-256 on any number of workers or chunks, and
``rerun`` can compare hashes.
"""

from __future__ import annotations

import io
import json
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from insilico_trials.infer import analysis
from insilico_trials.io import spool
from insilico_trials.io.archive import atomic_write_bytes, atomic_write_text, sha256_file
from insilico_trials.io.codehash import code_sha256
from insilico_trials.run.trial import RunResult
from insilico_trials.spec.protocol import TrialProtocol

__all__ = [
    "KEY_LIBRARIES",
    "code_sha256",
    "environment_provenance",
    "parquet_bytes",
    "write_json",
    "write_run_outputs",
]

KEY_LIBRARIES = (
    "insilico-trials", "numpy", "scipy", "pandas", "pyarrow", "pymc", "pytensor", "nutpie",
    "arviz", "prefect", "prefect-dask", "dask", "distributed", "mlflow", "pydantic",
)  # fmt: skip


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    """Parquet bytes of ``frame``, identical for identical data (no index, no timestamps)."""
    table = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(
        path, json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n"
    )


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.bool_):
        return bool(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _profile_quantiles(times_h: np.ndarray, profiles: dict[str, np.ndarray]) -> pd.DataFrame:
    rows = []
    for arm, conc in profiles.items():
        q = np.quantile(conc.astype(np.float64), [0.05, 0.5, 0.95], axis=0)
        rows.append(
            pd.DataFrame({"arm": arm, "time_h": times_h, "p05": q[0], "p50": q[1], "p95": q[2]})
        )
    return pd.concat(rows, ignore_index=True)


def write_run_outputs(
    stage: Path, protocol_source: Path, result: RunResult
) -> dict[str, list[str]]:
    """Write the protocol and every numeric output of a run into ``stage``.

    ``result.tables`` yields each per-patient table's parts in (arm, patient) order (from
    memory or from Parquet parts on disk); they are written table by table into fixed-size row
    groups, so memory stays bounded by a row group whatever the trial size, and the bytes do not
    depend on chunking. Returns the file names grouped as ``inputs`` and ``outputs`` for the
    manifest.
    """
    protocol = result.protocol
    shutil.copyfile(protocol_source, stage / "protocol.yaml")
    inputs = ["protocol.yaml"]
    if protocol.pk is not None and protocol.pk.is_file:
        # the model file as it was read and run (its SHA-256 is in the protocol's hash), at
        # the path the protocol names, so that the archived protocol loads it again
        model = protocol.pk_model()
        target = stage / protocol.pk.model
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, model.text.encode("utf-8"))  # type: ignore[union-attr]
        inputs.append(protocol.pk.model)
    tables = result.tables
    spool.write_parts((result.cohorts[arm.name] for arm in protocol.arms), stage / "cohort.parquet")
    spool.write_parts(tables.parts("endpoints"), stage / "endpoints.parquet")
    spool.write_parts(tables.parts("exposure"), stage / "exposure.parquet")
    atomic_write_bytes(
        stage / "profiles.parquet",
        parquet_bytes(_profile_quantiles(tables.profile_times_h, tables.profiles)),
    )
    screening = {
        a.name: {"enrolled": len(result.cohorts[a.name]),
                 "screened": int(result.cohorts[a.name].attrs.get("screened", a.n))}
        for a in protocol.arms
    }  # fmt: skip
    fit = result.fit
    write_json(stage / "summary.json", fit_summary(protocol, fit, screening))
    write_json(stage / "synthetic_control.json", synthetic_control_record(result))
    atomic_write_bytes(stage / "posterior.parquet", parquet_bytes(posterior_draws(fit)))
    write_inference_data(fit.idata, stage / "posterior.nc")
    extra = []
    validation = analysis.validation_table(protocol, tables.summary)
    if validation:  # published values this run can be compared with (credibility section)
        write_json(stage / "validation.json", validation)
        extra.append("validation.json")
    if protocol.disease.is_glucose:  # CGM percentiles by time of day, for the report's AGP
        from insilico_trials.sim.glucose import agp_percentiles

        agp = agp_percentiles(tables.profile_times_h, tables.profiles)
        atomic_write_bytes(stage / "glucose_agp.parquet", parquet_bytes(agp))
        extra.append("glucose_agp.parquet")
    if tables.has("tumour_sld"):  # true SLD per visit, for the report's spider plot
        spool.write_parts(tables.parts("tumour_sld"), stage / "tumour_sld.parquet")
        extra.append("tumour_sld.parquet")
    if result.sensitivity is not None:
        write_json(stage / "sensitivity.json", result.sensitivity)
        extra.append("sensitivity.json")
    if result.procova is not None:
        write_json(stage / "procova.json", result.procova)
        extra.append("procova.json")
    return {
        "inputs": inputs,
        "outputs": [
            "cohort.parquet", "endpoints.parquet", "exposure.parquet", "profiles.parquet",
            "summary.json", "synthetic_control.json", "posterior.parquet", "posterior.nc",
            *extra,
        ],
    }  # fmt: skip


def synthetic_control_record(result: RunResult) -> dict[str, Any]:
    """``synthetic_control.json``: the run's own control arm's statistics (top level, as
    before), the replicate virtual arms and the prior the analysis used (``virtual_arms``,
    ``prior``: :class:`~insilico_trials.infer.synthetic.VirtualPrior`), read back by ``update``
    and ``design --from-archive`` so that they use the same prior."""
    protocol = result.protocol
    out = analysis.virtual_control_summary(protocol, result.tables.summary)
    out["method"] = protocol.synthetic_control.method
    out["virtual_arms"] = result.virtual_arms.to_json() if result.virtual_arms else None
    out["prior"] = result.virtual_prior.to_json() if result.virtual_prior else None
    return out


def fit_summary(protocol: TrialProtocol, fit: Any, screening: dict[str, Any]) -> dict[str, Any]:
    """The decision-relevant numbers of a fit, as plain JSON."""
    a = protocol.analysis
    return {
        "question": protocol.question,
        "endpoint": a.endpoint,
        "model": a.model,
        "criterion": a.decision.text,
        "quantity": a.decision.quantity,
        "delta": a.decision.delta,
        "probability": float(fit.probability),
        "decision": fit.decision,
        "converged": bool(fit.converged),
        "diagnostics": fit.diagnostics,
        "posterior": json.loads(fit.summary.to_json(orient="records", double_precision=15)),
        "arms": {arm.name: {"n": arm.n, "control": arm.control} for arm in protocol.arms},
        "screening": screening,
    }


# Attributes that name when or with what a posterior was made, not what it is: left out so that
# the same draws give the same bytes (the archive's manifest records the versions).
_VOLATILE_ATTRS = ("created_at", "arviz_version", "inference_library_version", "sampling_time")


def write_inference_data(idata: Any, path: Path) -> None:
    """The fit's posterior and sample statistics as ArviZ InferenceData in NetCDF (h5netcdf):
    ``arviz``/``xarray.open_datatree(path)`` opens it. Same draws, same bytes."""
    import xarray as xr

    groups = {}
    for name in ("posterior", "sample_stats"):
        try:
            ds = idata[name].to_dataset()
        except KeyError:
            continue
        ds = ds.copy()
        ds.attrs = {k: v for k, v in ds.attrs.items() if k not in _VOLATILE_ATTRS}
        for var in ds.data_vars:
            ds[var].attrs = {k: v for k, v in ds[var].attrs.items() if k not in _VOLATILE_ATTRS}
        groups[name] = ds
    xr.DataTree.from_dict(groups).to_netcdf(path, engine="h5netcdf")


def posterior_draws(fit: Any) -> pd.DataFrame:
    """Posterior draws as a long table ``chain, draw, <scalar parameters>``."""
    post = fit.idata["posterior"].to_dataset()
    scalars = [v for v in post.data_vars if post[v].dims == ("chain", "draw")]
    frame = post[scalars].to_dataframe().reset_index()
    return frame[["chain", "draw", *sorted(scalars)]]


def _git_commit(root: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        commit = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()  # fmt: skip
        return (commit + ("-dirty" if dirty else "")) if commit else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment_provenance() -> dict[str, Any]:
    """Versions, commit, lock-file hash and a machine summary."""
    root = Path(__file__).resolve().parents[2]
    lock = root / "uv.lock"
    versions = {}
    for name in KEY_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    import os

    return {
        "package_version": versions["insilico-trials"],
        "git_commit": _git_commit(root),
        "uv_lock_sha256": sha256_file(lock) if lock.exists() else "no uv.lock",
        "python": sys.version.split()[0],
        "libraries": versions,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.machine(),
            "cpus": os.cpu_count(),
        },
    }
