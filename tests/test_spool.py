"""Chunks streamed to Parquet: same bytes for any chunking, fixed row groups, gaps refused."""

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from insilico_trials.io.archive import sha256_file
from insilico_trials.io.spool import RowGroupWriter, Spooled, merge_parts, spool_chunk
from insilico_trials.sim import trial
from insilico_trials.spec.protocol import load_protocol
from tests.conftest import tiny_protocol


def _spool(protocol, folder: Path, chunk: int, *, reverse: bool = False) -> Spooled:
    keep = trial.summary_columns(protocol)
    work = []
    for arm in protocol.arms:
        cohort = trial.arm_cohort(protocol, arm)
        work += [(arm.name, cohort.iloc[s:e]) for s, e in trial.chunk_bounds(len(cohort), chunk)]
    digests = [
        spool_chunk(folder, trial.simulate_chunk(protocol, name, rows), keep=keep)
        for name, rows in (work[::-1] if reverse else work)
    ]
    return Spooled.collect(folder, digests)


def test_merged_tables_have_the_same_bytes_for_any_chunking(tmp_path):
    protocol = load_protocol(tiny_protocol(tmp_path, n=9))
    hashes = []
    for chunk, reverse in ((9, False), (1, True), (4, True)):
        spooled = _spool(protocol, tmp_path / f"spool{chunk}", chunk, reverse=reverse)
        out = tmp_path / f"out{chunk}"
        out.mkdir()
        # 7 rows per group: groups straddle chunk boundaries whatever the chunk size.
        for table in ("endpoints", "exposure", "tumour_sld"):
            spooled.merge(table, out / f"{table}.parquet", rows_per_group=7)
        hashes.append({p.name: sha256_file(p) for p in sorted(out.iterdir())})
        if chunk == 9:
            whole = pq.read_table(out / "endpoints.parquet").to_pandas()
    assert hashes[0] == hashes[1] == hashes[2]
    # The merged table is the plain concatenation in (arm, patient) order.
    expected = _spool(protocol, tmp_path / "again", 9).summary
    pd.testing.assert_frame_equal(whole[expected.columns], expected, check_exact=True)
    assert list(whole.groupby("arm", sort=False).size().index) == sorted(whole["arm"].unique())


def test_row_groups_hold_exactly_the_configured_rows(tmp_path):
    dest = tmp_path / "t.parquet"
    writer = RowGroupWriter(dest, rows_per_group=4)
    for start, stop in ((0, 3), (3, 4), (4, 10), (10, 11)):
        writer.write(
            pd.DataFrame({"patient": np.arange(start, stop), "x": np.arange(start, stop) * 0.5})
        )
    assert writer.close() == 11
    meta = pq.ParquetFile(dest).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [4, 4, 3]
    assert pq.read_table(dest).column("patient").to_pylist() == list(range(11))
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file became dest


def test_a_missing_part_is_an_error_and_writes_nothing(tmp_path):
    protocol = load_protocol(tiny_protocol(tmp_path, n=9))
    spooled = _spool(protocol, tmp_path / "spool", 3)
    arm = protocol.arms[1].name
    (tmp_path / "spool" / "endpoints" / arm / f"{3:012d}.parquet").unlink()
    dest = tmp_path / "endpoints.parquet"
    with pytest.raises(RuntimeError, match=rf"{arm}.*starts at patient 6, expected 3"):
        merge_parts(tmp_path / "spool" / "endpoints", dest, spooled.counts)
    assert not dest.exists() and not list(tmp_path.glob(".endpoints.parquet.*"))


def test_digest_keeps_only_the_summary_columns(tmp_path):
    protocol = load_protocol(tiny_protocol(tmp_path, n=4))
    arm = protocol.arms[1]
    chunk = trial.simulate_chunk(protocol, arm.name, trial.arm_cohort(protocol, arm))
    digest = spool_chunk(tmp_path, chunk, keep=trial.summary_columns(protocol))
    assert list(digest.summary.columns) == ["arm", "patient", "responder"]
    assert digest.n == 4
    parts = sorted(p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*.parquet"))
    assert parts == ["endpoints", "exposure", "tumour_sld"]


def test_parts_with_different_columns_are_an_error_not_a_lost_column(tmp_path):
    dest = tmp_path / "t.parquet"
    writer = RowGroupWriter(dest, rows_per_group=4)
    writer.write(pd.DataFrame({"patient": [0, 1], "auc": [1.0, 2.0]}))
    with pytest.raises(ValueError, match=r"parts have different columns.*\['tmax'\] more"):
        writer.write(pd.DataFrame({"patient": [2], "auc": [3.0], "tmax": [1.0]}))
    writer.abort()
    assert not dest.exists()


def test_every_arm_has_every_exposure_column(tmp_path):
    """An untreated arm's exposure table has the treated arms' columns (Tmax as NaN)."""
    protocol = load_protocol(tiny_protocol(tmp_path, n=3))
    columns = {
        arm.name: list(
            trial.simulate_chunk(protocol, arm.name, trial.arm_cohort(protocol, arm)).exposure
        )
        for arm in protocol.arms
    }
    control, treated = protocol.control_arm.name, protocol.treatment_arms[0].name
    assert protocol.control_arm.regimen is None
    assert columns[control] == columns[treated]
    assert "tmax_first_h" in columns[control]
