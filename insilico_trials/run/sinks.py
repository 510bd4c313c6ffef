"""Where a run's chunk tables go while it runs: a sink, chosen by the caller.

A simulation chunk produces per-patient tables (endpoints, exposure, true tumour size); the run
keeps in memory only a :class:`ChunkDigest` per chunk (the analysis columns and the report's
sampled concentration profiles). The tables themselves go to a *sink*:

- :class:`MemorySink` (the library default) keeps them in this process;
- :class:`insilico_trials.io.spool.ParquetSpool` writes them as Parquet parts on a folder the
  workers share, so memory stays bounded by a chunk whatever the trial size.

Either way the collected :class:`ChunkTables` yield each table's parts in (arm, patient) order,
and the archive writer turns them into files whose bytes do not depend on the sink or on how
patients were chunked.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from insilico_trials.sim.trial import ChunkResult

__all__ = [
    "ChunkDigest",
    "ChunkSink",
    "ChunkTables",
    "MemorySink",
    "MemoryTables",
    "chunk_frames",
    "digest_of",
    "join_digests",
]


@dataclass(frozen=True)
class ChunkDigest:
    """What a chunk hands back to the run: small whatever the chunk size (unless ``frames``)."""

    arm: str
    start: int
    n: int
    summary: pd.DataFrame  # the endpoint columns kept in memory (trial.summary_columns)
    profile_times_h: np.ndarray
    profiles: np.ndarray = field(repr=False)  # (m, T) float32, patients < PROFILE_PATIENTS
    frames: dict[str, pd.DataFrame] | None = field(default=None, repr=False)  # MemorySink only


def chunk_frames(chunk: ChunkResult) -> dict[str, pd.DataFrame]:
    """The per-patient tables of a chunk: ``endpoints``, ``exposure`` and, with a tumour model,
    ``tumour_sld`` (true SLD in mm per patient and visit, long: ``arm, patient, visit_day,
    sld_mm``)."""
    frames = {"endpoints": chunk.endpoints, "exposure": chunk.exposure}
    if chunk.sld is not None:
        n, k = chunk.sld.shape
        patient = chunk.endpoints["patient"].to_numpy(dtype=np.int64)
        frames["tumour_sld"] = pd.DataFrame(
            {"arm": chunk.arm, "patient": np.repeat(patient, k),
             "visit_day": np.tile(np.asarray(chunk.visit_days, dtype=float), n),
             "sld_mm": np.asarray(chunk.sld, dtype=float).reshape(-1)}
        )  # fmt: skip
    return frames


def digest_of(
    chunk: ChunkResult, *, keep: list[str], frames: dict[str, pd.DataFrame] | None = None
) -> ChunkDigest:
    """The digest of ``chunk``: its ``keep`` endpoint columns and sampled profiles."""
    return ChunkDigest(
        arm=chunk.arm,
        start=chunk.start,
        n=len(chunk.endpoints),
        summary=chunk.endpoints[[c for c in keep if c in chunk.endpoints]].reset_index(drop=True),
        profile_times_h=chunk.profile_times_h,
        profiles=chunk.profiles,
        frames=frames,
    )


def join_digests(
    digests: list[ChunkDigest],
) -> tuple[list[ChunkDigest], pd.DataFrame, dict[str, np.ndarray], np.ndarray, dict[str, int]]:
    """Digests in (arm, patient) order, with their joined summary, profiles per arm, profile
    times and patients per arm."""
    digests = sorted(digests, key=lambda d: (d.arm, d.start))
    summary = (
        pd.concat([d.summary for d in digests], ignore_index=True) if digests else pd.DataFrame()
    )
    profiles = {
        arm: np.vstack([d.profiles for d in digests if d.arm == arm])
        for arm in dict.fromkeys(d.arm for d in digests)
    }
    counts: dict[str, int] = {}
    for d in digests:
        counts[d.arm] = counts.get(d.arm, 0) + d.n
    times = digests[0].profile_times_h if digests else np.zeros(0)
    return digests, summary, profiles, times, counts


class ChunkTables(Protocol):
    """Every chunk of a run, joined: what the analysis and the archive writer read."""

    summary: pd.DataFrame
    profiles: dict[str, np.ndarray]
    profile_times_h: np.ndarray
    counts: dict[str, int]

    def has(self, table: str) -> bool: ...

    def parts(self, table: str) -> Iterator[Any]:
        """The table's parts (DataFrames or Arrow tables) in (arm, patient) order."""
        ...


class ChunkSink(Protocol):
    """Takes each chunk's tables (on a worker) and collects them (in the driver)."""

    def write(self, chunk: ChunkResult) -> ChunkDigest: ...

    def collect(self, digests: list[ChunkDigest]) -> ChunkTables: ...


@dataclass(frozen=True)
class MemoryTables:
    """Chunk tables kept in this process."""

    digests: list[ChunkDigest]
    summary: pd.DataFrame
    profiles: dict[str, np.ndarray]
    profile_times_h: np.ndarray
    counts: dict[str, int]

    def has(self, table: str) -> bool:
        return any(table in (d.frames or {}) for d in self.digests)

    def parts(self, table: str) -> Iterator[pd.DataFrame]:
        for d in self.digests:
            yield (d.frames or {})[table]

    def frame(self, table: str) -> pd.DataFrame:
        """The whole table as one DataFrame."""
        return pd.concat(list(self.parts(table)), ignore_index=True)


@dataclass(frozen=True)
class MemorySink:
    """Keeps every chunk's tables in memory (memory grows with the trial): for library calls,
    tests and small trials."""

    keep: tuple[str, ...]

    def write(self, chunk: ChunkResult) -> ChunkDigest:
        return digest_of(chunk, keep=list(self.keep), frames=chunk_frames(chunk))

    def collect(self, digests: list[ChunkDigest]) -> MemoryTables:
        return MemoryTables(*join_digests(digests))
