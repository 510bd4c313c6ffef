"""Run archives: atomic writes, the manifest, tamper detection and output comparison.

An archive is the run's folder ``reports/<trial_id>/<run_id>/``. It is written in a hidden
staging folder beside its final place and renamed into place only when complete, so a failed
run leaves nothing that looks like an archive. ``manifest.json`` records the SHA-256 of every
file, split into inputs, numeric outputs (compared by ``rerun``) and documents (the report, which
carries a generation time).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "MANIFEST",
    "ArchiveProblem",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_writable",
    "compare_outputs",
    "read_manifest",
    "sha256_bytes",
    "sha256_file",
    "staged_directory",
    "verify_archive",
    "write_manifest",
]

MANIFEST = "manifest.json"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    A reader sees the old file or the new one, never half of either; on any error the
    temporary file is removed and the old file is untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def check_writable(folder: str | Path) -> str | None:
    """Why ``folder`` cannot take new files, or None when it can.

    A pre-flight check: a run or an update asks before any work, so a folder it may not write
    (permission denied, read-only file system) costs seconds, not a whole run. A missing folder
    is checked at its nearest existing ancestor (where it would be created); nothing is left.
    """
    folder = Path(folder).absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing}: not a folder"
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        where = exc.filename or folder
        return f"{where}: {exc.strerror or exc}"
    return None


@contextlib.contextmanager
def staged_directory(final: str | Path) -> Iterator[Path]:
    """Yield a staging folder that becomes ``final`` (by rename) only if the block succeeds.

    Raises
    ------
    FileExistsError
        If ``final`` already exists (archives are never overwritten).
    """
    final = Path(final)
    if final.exists():
        raise FileExistsError(
            f"{final}: an archive already exists here; archives are never overwritten"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        yield staging
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_manifest(
    archive: Path,
    *,
    inputs: list[str],
    outputs: list[str],
    documents: list[str],
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Hash the named files (paths relative to ``archive``) and write ``manifest.json``."""

    def hashes(names: list[str]) -> dict[str, str]:
        return {n: sha256_file(archive / n) for n in sorted(names)}

    manifest = {
        "format": "insilico-trials-archive/1",
        **meta,
        "inputs": hashes(inputs),
        "outputs": hashes(outputs),
        "documents": hashes(documents),
    }
    atomic_write_text(archive / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def read_manifest(archive: str | Path) -> dict[str, Any]:
    path = Path(archive) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no manifest; this folder is not a run archive") from None
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path}: manifest is not valid JSON ({exc}); the archive is damaged"
        ) from None
    for key in ("inputs", "outputs", "documents"):
        if not isinstance(manifest.get(key), dict):
            raise ValueError(f"{path}: manifest has no '{key}' table; the archive is damaged")
    return manifest


@dataclass(frozen=True)
class ArchiveProblem:
    file: str
    problem: str  # "missing" | "modified" | "unexpected"
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.file}: {self.problem}" + (f" ({self.detail})" if self.detail else "")


def _manifests(archive: Path) -> list[Path]:
    # The run's own manifest, then one per appended update (updates/NNN/manifest.json).
    found = [archive / MANIFEST]
    updates = archive / "updates"
    if updates.is_dir():
        found += sorted(p / MANIFEST for p in updates.iterdir() if p.is_dir())
    return found


def verify_archive(archive: str | Path) -> list[ArchiveProblem]:
    """Check every file listed in every manifest of the archive against its SHA-256.

    Returns the problems found (empty when the archive is intact): a listed file that is
    missing or whose content changed, and a file that no manifest lists.
    """
    archive = Path(archive)
    problems: list[ArchiveProblem] = []
    listed: set[str] = set()
    for mpath in _manifests(archive):
        base = mpath.parent
        rel_base = base.relative_to(archive)
        if not mpath.exists():
            problems.append(ArchiveProblem(str(mpath.relative_to(archive)), "missing"))
            continue
        listed.add(str(mpath.relative_to(archive)))
        manifest = read_manifest(base)
        for table in ("inputs", "outputs", "documents"):
            for name, digest in manifest[table].items():
                rel = str(rel_base / name) if str(rel_base) != "." else name
                listed.add(rel)
                path = base / name
                if not path.exists():
                    problems.append(ArchiveProblem(rel, "missing"))
                elif sha256_file(path) != digest:
                    problems.append(
                        ArchiveProblem(rel, "modified", "SHA-256 differs from manifest")
                    )
    for path in sorted(archive.rglob("*")):
        rel = str(path.relative_to(archive))
        if path.is_file() and rel not in listed and not path.name.startswith(".lock"):
            problems.append(ArchiveProblem(rel, "unexpected", "not listed in any manifest"))
    return problems


def compare_outputs(expected: dict[str, str], actual_dir: Path) -> list[tuple[str, bool, str]]:
    """Compare the numeric outputs of a re-execution with the archived hashes.

    Returns ``(name, identical, detail)`` per archived output.
    """
    rows = []
    for name, digest in sorted(expected.items()):
        path = actual_dir / name
        if not path.exists():
            rows.append((name, False, "not produced by the re-run"))
            continue
        got = sha256_file(path)
        rows.append(
            (name, got == digest, "" if got == digest else f"sha256 {got[:12]} != {digest[:12]}")
        )
    return rows
