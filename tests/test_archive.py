"""Archive hashing, atomic writes, staged folders and tamper detection."""

import hashlib
import json

import pytest

from insilico_trials.io.archive import (
    atomic_write_text,
    compare_outputs,
    sha256_file,
    staged_directory,
    verify_archive,
    write_manifest,
)


def _archive(tmp_path):
    final = tmp_path / "run"
    with staged_directory(final) as stage:
        (stage / "protocol.yaml").write_text("trial_id: x\n")
        (stage / "a.parquet").write_bytes(b"\x00\x01numbers")
        (stage / "report.html").write_text("<html></html>")
        write_manifest(
            stage,
            inputs=["protocol.yaml"],
            outputs=["a.parquet"],
            documents=["report.html"],
            meta={"run_id": "run"},
        )
    return final


def test_manifest_hashes_are_sha256(tmp_path):
    final = _archive(tmp_path)
    manifest = json.loads((final / "manifest.json").read_text())
    assert manifest["outputs"]["a.parquet"] == hashlib.sha256(b"\x00\x01numbers").hexdigest()
    assert verify_archive(final) == []


@pytest.mark.parametrize("action", ["edit", "delete", "add"])
def test_tampering_is_named(tmp_path, action):
    final = _archive(tmp_path)
    if action == "edit":
        (final / "a.parquet").write_bytes(b"\x00\x02numbers")
        expected = ("a.parquet", "modified")
    elif action == "delete":
        (final / "protocol.yaml").unlink()
        expected = ("protocol.yaml", "missing")
    else:
        (final / "extra.csv").write_text("1")
        expected = ("extra.csv", "unexpected")
    problems = verify_archive(final)
    assert [(p.file, p.problem) for p in problems] == [expected]


def test_failed_staging_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), staged_directory(tmp_path / "run") as stage:
        (stage / "half.parquet").write_bytes(b"x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_never_overwrites_an_archive(tmp_path):
    _archive(tmp_path)
    with pytest.raises(FileExistsError), staged_directory(tmp_path / "run"):
        pass


def test_atomic_write_keeps_old_content_on_failure(tmp_path):
    path = tmp_path / "f.json"
    atomic_write_text(path, "old")

    class Boom(str):
        def encode(self, *a, **k):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, Boom("new"))
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_compare_outputs(tmp_path):
    (tmp_path / "a").write_text("1")
    (tmp_path / "b").write_text("2")
    expected = {"a": sha256_file(tmp_path / "a"), "b": "0" * 64, "c": "1" * 64}
    rows = {name: (same, detail) for name, same, detail in compare_outputs(expected, tmp_path)}
    assert rows["a"] == (True, "")
    assert rows["b"][0] is False and "sha256" in rows["b"][1]
    assert rows["c"] == (False, "not produced by the re-run")
