"""Archives a forger cannot fake: every way to rewrite an archive consistently that the issue
names, each refused by ``rerun``/``report``/``update`` with a message naming the file, and
caught even when the manifest is rewritten too, by the signature or the tracking store."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from insilico_trials.app.cli import main
from insilico_trials.io.archive import (
    MANIFEST,
    read_manifest,
    sha256_file,
    verify_archive,
    write_manifest,
)
from insilico_trials.io.signing import generate_key, sign_manifest, signature_problem
from insilico_trials.report import render_report
from insilico_trials.spec.protocol import load_protocol


def make_archive(root: Path) -> Path:
    """A complete, consistent run archive (no Prefect, no MCMC): what `run` writes."""
    from tests.test_report import build_archive

    root.mkdir(parents=True, exist_ok=True)
    archive, meta = build_archive(root)
    protocol = load_protocol(archive / "protocol.yaml")
    outputs = meta.pop("outputs")
    meta["run_id"] = f"20260101T000000Z-{protocol.sha256()[:8]}"
    meta["protocol_file_sha256"] = sha256_file(archive / "protocol.yaml")
    (archive / "report.html").write_text(render_report(archive, meta), encoding="utf-8")
    write_manifest(
        archive, inputs=["protocol.yaml"], outputs=outputs, documents=["report.html"], meta=meta
    )
    return archive


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return make_archive(tmp_path_factory.mktemp("integrity") / "made")


@pytest.fixture
def archive(made, tmp_path):
    """A fresh copy of the consistent archive for each test to tamper with."""
    copy = tmp_path / "archive"
    shutil.copytree(made, copy, symlinks=True)
    return copy


def _rewrite_manifest(archive: Path, **changes) -> None:
    """What a forger does after editing files: recompute every hash, change any field."""
    m = read_manifest(archive)
    for table in ("inputs", "outputs", "documents"):
        m[table] = {name: sha256_file(archive / name) for name in m[table]}
    m.update(changes)
    (archive / MANIFEST).write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")


def _report(archive: Path, capsys, *extra: str) -> tuple[int, str]:
    code = main(["report", str(archive), *extra])
    return code, capsys.readouterr().err


def test_a_consistent_archive_verifies_and_report_leaves_it_intact(archive, capsys):
    before = sha256_file(archive / MANIFEST)
    code, err = _report(archive, capsys)
    assert code == 0, err
    assert sha256_file(archive / MANIFEST) == before  # report never rewrites the manifest
    assert verify_archive(archive) == []
    assert (archive.parent / f"{archive.name}-report.html").is_file()


def test_edited_protocol_with_recomputed_hash_is_refused(archive, capsys):
    text = (archive / "protocol.yaml").read_text()
    (archive / "protocol.yaml").write_text(text.replace("seed: 20261124", "seed: 7"))
    _rewrite_manifest(archive)
    assert verify_archive(archive) == []  # the file hashes are consistent...
    code, err = _report(archive, capsys)
    assert code == 1  # ...but the protocol is not the one the run id and manifest name
    assert "protocol.yaml" in err and "protocol_sha256" in err and "Traceback" not in err
    assert main(["rerun", str(archive)]) == 1


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("../../etc/hostname", "outside the archive"),
        ("/etc/passwd", "outside the archive"),
        ("/dev/zero", "outside the archive"),
        ("cohort.parquet/../protocol.yaml", "outside the archive"),
    ],
)
def test_manifest_entries_outside_the_archive_are_refused(archive, capsys, entry, why):
    m = read_manifest(archive)
    m["outputs"][entry] = "0" * 64
    (archive / MANIFEST).write_text(json.dumps(m, indent=2, sort_keys=True))
    problems = [str(p) for p in verify_archive(archive)]
    assert any(entry in p and why in p for p in problems), problems
    code, err = _report(archive, capsys)
    assert code == 1 and entry in err


def test_links_are_refused(archive):
    (archive / "extra").symlink_to("/etc")
    target = archive / "cohort.parquet"
    moved = archive.parent / "cohort-elsewhere.parquet"
    shutil.move(target, moved)
    target.symlink_to(moved)
    problems = {(p.file, p.problem) for p in verify_archive(archive)}
    assert ("extra", "link") in problems
    assert ("cohort.parquet", "link") in problems  # and its content is not read through it
    assert ("cohort.parquet", "refused") in problems


def _append_update(archive: Path, number: int) -> Path:
    """An update folder with a correct chain (what `update` writes, without a fit)."""
    folder = archive / "updates" / f"{number:03d}"
    folder.mkdir(parents=True)
    (folder / "update.json").write_text("{}\n")
    chain = {"run_manifest_sha256": sha256_file(archive / MANIFEST), "update": number}
    if number > 1:
        prev = archive / "updates" / f"{number - 1:03d}" / MANIFEST
        chain["previous_update_manifest_sha256"] = sha256_file(prev)
    write_manifest(folder, inputs=[], outputs=["update.json"], documents=[], meta=chain)
    return folder


def test_update_chain_is_checked_end_to_end(archive):
    _append_update(archive, 1)
    _append_update(archive, 2)
    assert verify_archive(archive) == []
    shutil.rmtree(archive / "updates" / "001")  # a gap
    problems = [str(p) for p in verify_archive(archive)]
    assert any("updates/001" in p and "gap" in p for p in problems), problems
    # an update re-pointed at another run manifest
    shutil.rmtree(archive / "updates")
    _append_update(archive, 1)
    first = archive / "updates" / "001"
    meta = json.loads((first / MANIFEST).read_text())
    meta["run_manifest_sha256"] = "f" * 64
    (first / MANIFEST).write_text(json.dumps(meta))
    problems = [str(p) for p in verify_archive(archive)]
    assert any("updates/001/manifest.json" in p and "chain" in p for p in problems), problems


def test_signature_catches_a_consistent_rewrite(archive, tmp_path, capsys):
    key, pub = generate_key(tmp_path / "sponsor.key")
    assert oct(os.stat(key).st_mode & 0o777) == "0o600"
    sign_manifest(archive, key)
    assert signature_problem(archive, pub) is None
    code, err = _report(archive, capsys, "--verify-key", str(pub))
    assert code == 0, err
    # A consistent forgery: protocol edited, every hash, the protocol hash and the run id
    # rewritten. Only the signature (or the tracking store) can tell.
    text = (archive / "protocol.yaml").read_text().replace("seed: 20261124", "seed: 7")
    (archive / "protocol.yaml").write_text(text)
    forged = load_protocol(archive / "protocol.yaml").sha256()
    _rewrite_manifest(
        archive,
        protocol_sha256=forged,
        run_id=f"20260101T000000Z-{forged[:8]}",
        protocol_file_sha256=sha256_file(archive / "protocol.yaml"),
        seeds={"protocol": 7},
    )
    assert verify_archive(archive) == []
    assert main(["report", str(archive)]) == 0  # without a key nothing can tell
    capsys.readouterr()
    code, err = _report(archive, capsys, "--verify-key", str(pub))
    assert code == 1 and "signature does not match" in err
    other, _ = generate_key(tmp_path / "other.key")
    sign_manifest(archive, other)  # the forger signs with their own key
    code, err = _report(archive, capsys, "--verify-key", str(pub))
    assert code == 1 and "signed with another key" in err
