"""Patient chunks streamed to Parquet: memory bounded by a chunk, not by the trial.

A simulation task writes its chunk's tables (endpoints, exposure, tumour SLD) as Parquet part
files under a spool folder and returns only a :class:`ChunkDigest`: the few endpoint columns the
analysis needs and the concentration profiles of the report's sampled patients. When every
chunk is done, :func:`merge_parts` joins the parts in (arm, patient) order into one file whose
row groups hold exactly :data:`ROWS_PER_GROUP` rows, so its bytes do not depend on how patients
were chunked or in which order chunks finished. Peak memory is one part plus one row group.

The spool folder must be reachable from the Dask workers (a shared file system on a cluster);
it lives beside the task cache, so a resumed run finds the parts of its cached chunks.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from insilico_trials.io.archive import atomic_write_bytes
from insilico_trials.run.sinks import ChunkDigest, chunk_frames, digest_of, join_digests

__all__ = [
    "ROWS_PER_GROUP",
    "ParquetSpool",
    "RowGroupWriter",
    "Spooled",
    "iter_parts",
    "merge_parts",
    "spool_chunk",
    "write_parts",
]

ROWS_PER_GROUP = 65_536  # rows per Parquet row group in archived tables


def _part_path(folder: Path, table: str, arm: str, start: int) -> Path:
    return folder / table / arm / f"{start:012d}.parquet"


def _to_arrow(frame: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)


def spool_chunk(folder: str | Path, chunk: Any, *, keep: list[str]) -> ChunkDigest:
    """Write ``chunk``'s tables as part files under ``folder``; return its digest.

    Each part is written through a temporary name and a rename, so a worker killed mid-write
    leaves no part that a merge could read (its retry writes the same bytes).
    """
    folder = Path(folder)
    for name, frame in chunk_frames(chunk).items():
        path = _part_path(folder, name, chunk.arm, chunk.start)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        pq.write_table(_to_arrow(frame), buf, compression="lz4")
        atomic_write_bytes(path, buf.getvalue())
    return digest_of(chunk, keep=keep)


@dataclass(frozen=True)
class ParquetSpool:
    """A chunk sink writing Parquet parts under ``folder`` (reachable from every worker)."""

    folder: Path
    keep: tuple[str, ...]

    def write(self, chunk: Any) -> ChunkDigest:
        return spool_chunk(self.folder, chunk, keep=list(self.keep))

    def collect(self, digests: list[ChunkDigest]) -> Spooled:
        return Spooled.collect(self.folder, digests)


@dataclass(frozen=True)
class Spooled:
    """Every chunk of a run: parts on disk, digests joined in (arm, patient) order."""

    folder: Path
    summary: pd.DataFrame
    profiles: dict[str, np.ndarray]
    profile_times_h: np.ndarray
    counts: dict[str, int]

    @classmethod
    def collect(cls, folder: str | Path, digests: list[ChunkDigest]) -> Spooled:
        _, summary, profiles, times, counts = join_digests(digests)
        return cls(Path(folder), summary, profiles, times, counts)

    def has(self, table: str) -> bool:
        return (self.folder / table).is_dir()

    def parts(self, table: str) -> Iterator[pa.Table]:
        return iter_parts(self.folder / table, self.counts)

    def merge(self, table: str, dest: Path, *, rows_per_group: int = ROWS_PER_GROUP) -> int:
        """Write the parts of ``table`` to ``dest``; returns the number of rows."""
        return merge_parts(self.folder / table, dest, self.counts, rows_per_group=rows_per_group)


class RowGroupWriter:
    """A Parquet file written table by table, in row groups of exactly ``rows_per_group`` rows.

    Row-group boundaries, and so the file's bytes, depend only on the rows written, not on how
    they were split into the tables passed to :meth:`write`. The file appears at ``dest`` (by
    rename) only when :meth:`close` succeeds.
    """

    def __init__(self, dest: str | Path, *, rows_per_group: int = ROWS_PER_GROUP) -> None:
        self.dest = Path(dest)
        self.rows_per_group = rows_per_group
        self.rows = 0
        self._schema: pa.Schema | None = None
        self._writer: pq.ParquetWriter | None = None
        self._pending: list[pa.Table] = []
        self._n_pending = 0
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.dest.name}.", suffix=".tmp", dir=self.dest.parent
        )
        os.close(fd)
        self._tmp = Path(tmp)

    def write(self, table: pa.Table | pd.DataFrame) -> None:
        if isinstance(table, pd.DataFrame):
            table = _to_arrow(table)
        if self._schema is None:
            self._schema = table.schema
            self._writer = pq.ParquetWriter(self._tmp, self._schema, compression="zstd")
        elif set(table.column_names) != set(self._schema.names):
            # Parts of one table must have the same columns: writing the first part's columns
            # only would silently drop the others (a column of one arm lost from the archive).
            lost = sorted(set(table.column_names) - set(self._schema.names))
            lacking = sorted(set(self._schema.names) - set(table.column_names))
            raise ValueError(
                f"{self.dest.name}: parts have different columns (a later part has "
                f"{lost or 'no other columns'} more and lacks {lacking or 'none'}); a table's "
                "parts must share their columns, so that none is lost"
            )
        elif not table.schema.equals(self._schema, check_metadata=False):
            # A column that is all-null in one chunk has Arrow type null there: take the
            # first part's types (a cast that loses information raises).
            table = table.select(self._schema.names).cast(self._schema)
        table = table.replace_schema_metadata(self._schema.metadata)
        self._pending.append(table)
        self._n_pending += table.num_rows
        while self._n_pending >= self.rows_per_group:
            self._flush(self.rows_per_group)

    def _flush(self, n: int) -> None:
        assert self._writer is not None
        joined = pa.concat_tables(self._pending)
        # One contiguous chunk per column: page boundaries must not follow the input's chunks.
        self._writer.write_table(joined.slice(0, n).combine_chunks(), row_group_size=n)
        rest = joined.slice(n)
        self._pending = [rest] if rest.num_rows else []
        self._n_pending = rest.num_rows
        self.rows += n

    def close(self) -> int:
        """Finish the file and move it to ``dest``; returns the number of rows written."""
        try:
            if self._writer is None:
                raise ValueError(f"{self.dest.name}: no table was written")
            if self._n_pending:
                self._flush(self._n_pending)
            self._writer.close()
            os.replace(self._tmp, self.dest)
        except BaseException:
            self.abort()
            raise
        return self.rows

    def abort(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()


def iter_parts(folder: Path, counts: dict[str, int]) -> Iterator[pa.Table]:
    """The parts ``folder/<arm>/<start>.parquet`` in (arm, start) order.

    ``counts`` gives the patients each arm's digests reported; a missing or extra part (a
    folder edited by hand, a cache from elsewhere) is an error, never a silent gap.
    """
    parts = sorted(
        ((arm.name, int(p.stem), p) for arm in folder.iterdir() if arm.is_dir()
         for p in arm.glob("*.parquet")),
        key=lambda t: (t[0], t[1]),
    )  # fmt: skip
    expected = sorted(counts)
    found = sorted({arm for arm, _, _ in parts})
    if found != expected:
        raise RuntimeError(
            f"{folder}: parts for arms {found}, expected {expected} (the spool folder is incomplete)"
        )
    next_start: dict[str, int] = {}
    for arm, start, path in parts:
        if start != next_start.get(arm, 0):
            raise RuntimeError(
                f"{path}: part starts at patient {start}, expected {next_start.get(arm, 0)} "
                "(a chunk's part is missing from the spool folder)"
            )
        table = pq.read_table(path)
        patients = table.column("patient").to_numpy() if "patient" in table.column_names else None
        next_start[arm] = (
            int(patients.max()) + 1 if patients is not None and len(patients) else start
        )
        yield table
    for arm, n in counts.items():
        if next_start.get(arm, 0) != n:
            raise RuntimeError(
                f"{folder / arm}: parts cover {next_start.get(arm, 0)} patients, expected {n}"
            )


def write_parts(
    parts: Iterable[pa.Table | pd.DataFrame], dest: Path, *, rows_per_group: int = ROWS_PER_GROUP
) -> int:
    """Write ``parts`` in order into ``dest`` (atomically: all or nothing); returns the rows."""
    writer = RowGroupWriter(dest, rows_per_group=rows_per_group)
    try:
        for part in parts:
            writer.write(part)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def merge_parts(
    folder: Path,
    dest: Path,
    counts: dict[str, int],
    *,
    rows_per_group: int = ROWS_PER_GROUP,
) -> int:
    """Join ``folder/<arm>/<start>.parquet`` in (arm, start) order into ``dest``
    (:func:`iter_parts`, :func:`write_parts`)."""
    return write_parts(iter_parts(folder, counts), dest, rows_per_group=rows_per_group)
