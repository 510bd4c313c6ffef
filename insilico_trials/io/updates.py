"""Appending real-data-cut updates of the synthetic control arm to a run archive.

Each ``insilico-trials update ARCHIVE --data CUT`` appends ``updates/NNN/`` holding a copy of
the cut's files as received (``cut/``), the update's numbers (``update.json``, ``states.csv``)
and its own ``manifest.json``, which records the SHA-256 of the run's manifest and of the
previous update's manifest (a hash chain). Earlier updates are never rewritten. The new folder
is staged under a hidden name and renamed into place, and an exclusive lock on the archive
keeps two updates from interleaving.

``update.json`` states the engine of the refit: ``"engine": "closed_form"`` (the exact
conjugate posterior; no MCMC draws exist, and the posterior mixture itself is recorded as
``posterior_mixture``) or ``"mcmc"`` (PyMC/nutpie; its convergence diagnostics). A record
without the entry was made before engines existed, by MCMC.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from insilico_trials.errors import RunFailure
from insilico_trials.io.archive import (
    MANIFEST,
    sha256_file,
    staged_directory,
    update_folders,
    write_manifest,
)
from insilico_trials.io.realdata import write_dataset

__all__ = [
    "ArchiveBusyError",
    "UpdatePlan",
    "archive_lock",
    "existing_updates",
    "state_record",
    "write_update",
]

LOCK_NAME = ".lock-update"


class ArchiveBusyError(RunFailure):
    """Another process holds the archive's update lock."""


@contextlib.contextmanager
def archive_lock(archive: Path) -> Iterator[None]:
    """Hold an exclusive, non-blocking lock on ``archive`` for the block.

    Raises
    ------
    ArchiveBusyError
        At once, if another update holds it (the caller retries later; nothing is written).
    """
    path = archive / LOCK_NAME
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise ArchiveBusyError(
                    f"{archive}: another update is running on this archive; nothing was written. "
                    "Run the command again when it has finished."
                ) from None
            raise
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def existing_updates(archive: Path) -> list[Path]:
    """The archive's update folders in order (``updates/001``, ``updates/002``, ...)."""
    return update_folders(archive)


@dataclass(frozen=True)
class UpdatePlan:
    """What one update appends: its number and the cut it ingests."""

    number: int
    cut_dir: Path
    cut_sha256: str
    flags: list[str]
    files: tuple[Path, ...] = ()  # the cut's dataset files that were read (only these are kept)
    # (file name, column) pairs left out of the archived files (update --drop-unknown-columns)
    dropped_columns: tuple[tuple[str, str], ...] = ()


def _state_record(state: Any, plan: UpdatePlan, method: str) -> dict[str, Any]:
    summary = state.summary
    row = summary.iloc[0]
    lo = next((row[c] for c in summary.columns if c.endswith("2.5%")), float("nan"))
    hi = next((row[c] for c in summary.columns if c.endswith("97.5%")), float("nan"))
    conflict = {k: float(v) for k, v in state.conflict.items()}
    engine = getattr(state, "engine", "mcmc")
    record: dict[str, Any] = {
        "cut": plan.number,
        "cut_id": state.cut_id,
        "cut_sha256": plan.cut_sha256,
        "method": method,
        "parameter": str(row.get("param", "")),
        "posterior_mean": float(state.posterior_mean),
        "posterior_sd": float(state.posterior_sd),
        "posterior_ci": [float(lo), float(hi)],
        "prior_ess": float(state.prior_ess),
        "posterior_ess": float(state.posterior_ess),
        "borrowed_virtual": float(state.borrowed_virtual),
        "ess_unit": state.ess_unit,
        "conflict": conflict,
        "vague_weight": conflict.get("vague_weight_posterior"),
        "n_real": int(state.n_real),
        "real_stats": {k: float(v) for k, v in state.real_stats.items()},
        "converged": bool(state.converged),
        "diagnostics": state.diagnostics,
        "engine": engine,
        "flags": plan.flags,
    }
    if engine == "closed_form" and state.closed_form is not None:
        # No MCMC draws to keep: the exact posterior itself is the record.
        mix = state.closed_form
        record["posterior_mixture"] = {
            "family": mix.family,
            "weights": [float(w) for w in mix.weights],
            "a": [float(a) for a in mix.a],
            "b": [float(b) for b in mix.b],
            "labels": list(mix.labels) if mix.labels else None,
        }
    return record


def state_record(state: Any, plan: UpdatePlan, method: str) -> dict[str, Any]:
    """The ``update.json`` entries of an update's final state, as read back from the file
    (through JSON: plain floats, NaN kept), for a replay to compare with the archive."""
    import json

    from insilico_trials.io.outputs import _json_default

    return json.loads(json.dumps(_state_record(state, plan, method), default=_json_default))


def write_update(
    archive: Path,
    plan: UpdatePlan,
    result: Any | None,
    *,
    meta: dict[str, Any],
    sign_key: Path | None = None,
    extra: dict[str, Any] | None = None,
    extra_files: dict[str, Callable[[Path], None]] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Append ``updates/NNN`` (atomically) for the final state of ``result``.

    Only the cut's dataset files that were read and validated are kept (``plan.files``): any
    other file of the cut folder stays out of the archive and the tracking store, and a file
    with ``plan.dropped_columns`` is written without those columns (listed in ``update.json``
    as ``dropped_columns``). With
    ``sign_key`` the update's manifest is signed before the folder appears.

    ``result`` is the synthetic control's refit, or None when the cut carries no endpoint
    data (a twin-only update). ``extra`` adds keys to ``update.json``; ``extra_files`` maps
    output names (relative paths) to writers ``f(path)``, hashed in the manifest as outputs.
    """
    from insilico_trials.io.outputs import write_json

    final = archive / "updates" / f"{plan.number:03d}"
    previous = existing_updates(archive)
    chain = {"run_manifest_sha256": sha256_file(archive / MANIFEST)}
    if previous:
        chain["previous_update_manifest_sha256"] = sha256_file(previous[-1] / MANIFEST)
    if result is not None:
        record = _state_record(result.final, plan, result.method)
    else:
        record = {"cut": plan.number, "cut_sha256": plan.cut_sha256, "method": None,
                  "flags": plan.flags}  # fmt: skip
    if plan.dropped_columns:
        record["dropped_columns"] = [{"file": f, "column": c} for f, c in plan.dropped_columns]
    record.update(extra or {})
    with staged_directory(final) as stage:
        (stage / "cut").mkdir()
        copied = []
        for src in sorted(plan.files):
            drop = [c for f, c in plan.dropped_columns if f == src.name]
            if drop:
                write_dataset(src, stage / "cut" / src.name, drop)
            else:
                shutil.copyfile(src, stage / "cut" / src.name, follow_symlinks=False)
            copied.append(f"cut/{src.name}")
        write_json(stage / "update.json", record)
        outputs = ["update.json"]
        if result is not None:
            table: pd.DataFrame = result.table()
            (stage / "states.csv").write_text(table.to_csv(index=False, float_format="%.12g"))
            outputs.append("states.csv")
        for name, writer in (extra_files or {}).items():
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            writer(stage / name)
            outputs.append(name)
        write_manifest(
            stage,
            inputs=copied,
            outputs=outputs,
            documents=[],
            meta={**meta, **chain, "update": plan.number},
        )
        if sign_key is not None:
            from insilico_trials.io.signing import sign_manifest

            sign_manifest(stage, sign_key)
    return final, record
