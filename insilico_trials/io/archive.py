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
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = [
    "MANIFEST",
    "SIGNATURE",
    "ArchiveProblem",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_writable",
    "compare_outputs",
    "new_run_id",
    "read_manifest",
    "sha256_bytes",
    "sha256_file",
    "staged_directory",
    "update_folders",
    "verify_archive",
    "write_manifest",
]

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"  # beside a manifest: its Ed25519 signature (insilico_trials.io.signing)


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


def _member(archive: Path, base: Path, name: str) -> tuple[Path | None, str]:
    """The file a manifest entry names, or why the entry is refused: entries are relative
    POSIX paths inside the archive, without ``..``, naming regular files (no links)."""
    pure = PurePosixPath(name)
    if (
        not name
        or pure.is_absolute()
        or "\\" in name
        or any(part in ("..", ".", "") for part in name.split("/"))
    ):
        return None, "entry names a path outside the archive (absolute, '..' or empty)"
    path = base.joinpath(*pure.parts)
    # every component below the archive must be a real folder or file, never a link
    probe = archive
    for part in path.relative_to(archive).parts:
        probe = probe / part
        try:
            mode = os.lstat(probe).st_mode
        except FileNotFoundError:
            return None, "missing"
        if stat.S_ISLNK(mode):
            return None, "is a link (links are not allowed in an archive)"
    if not stat.S_ISREG(mode):
        return None, "is not a regular file"
    return path, ""


def update_folders(archive: Path) -> list[Path]:
    """``updates/NNN`` folders in order (numbered folders only)."""
    root = archive / "updates"
    if not root.is_dir() or root.is_symlink():
        return []
    return sorted(p for p in root.iterdir() if p.name.isdigit() and p.is_dir())


def verify_archive(archive: str | Path) -> list[ArchiveProblem]:
    """Check an archive against its manifests; return every problem (empty when intact).

    - every entry of every manifest (the run's and each update's) names a regular file inside
      the archive (no absolute path, no ``..``, no link), present, with its SHA-256;
    - no file or folder is a link, nothing is there that no manifest lists;
    - the updates form an unbroken chain: ``updates/001`` .. ``updates/NNN`` numbered without a
      gap, each recording the SHA-256 of the run's manifest and of the previous update's.
    """
    archive = Path(archive)
    problems: list[ArchiveProblem] = []
    listed: set[str] = {MANIFEST, SIGNATURE}
    for dirpath, dirnames, filenames in os.walk(archive, followlinks=False):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            rel = path.relative_to(archive).as_posix()
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                problems.append(ArchiveProblem(rel, "link", "links are not allowed in an archive"))
            elif not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                problems.append(ArchiveProblem(rel, "not a regular file"))
    manifests = [archive]
    updates = update_folders(archive)
    for k, folder in enumerate(updates, start=1):
        if folder.name != f"{k:03d}":
            problems.append(
                ArchiveProblem(
                    f"updates/{k:03d}", "missing",
                    f"the update chain has a gap: updates/{folder.name} follows updates/{k - 1:03d}",
                )
            )  # fmt: skip
            break
        manifests.append(folder)
    for base in manifests:
        rel_base = base.relative_to(archive).as_posix()
        prefix = "" if rel_base == "." else f"{rel_base}/"
        mpath = base / MANIFEST
        if not mpath.is_file() or mpath.is_symlink():
            problems.append(ArchiveProblem(f"{prefix}{MANIFEST}", "missing"))
            continue
        listed.add(f"{prefix}{MANIFEST}")
        listed.add(f"{prefix}{SIGNATURE}")
        try:
            manifest = read_manifest(base)
        except (FileNotFoundError, ValueError) as exc:
            problems.append(ArchiveProblem(f"{prefix}{MANIFEST}", "unreadable", str(exc)))
            continue
        for table in ("inputs", "outputs", "documents"):
            for name, digest in manifest[table].items():
                rel = f"{prefix}{name}"
                listed.add(rel)
                path, why = _member(archive, base, str(name))
                if path is None:
                    problems.append(
                        ArchiveProblem(
                            rel,
                            why if why == "missing" else "refused",
                            "" if why == "missing" else why,
                        )
                    )
                elif sha256_file(path) != digest:
                    problems.append(
                        ArchiveProblem(rel, "modified", "SHA-256 differs from manifest")
                    )
        if base != archive:
            problems += _chain_problems(archive, base, manifest, prefix)
    for dirpath, _dirnames, filenames in os.walk(archive, followlinks=False):
        for name in filenames:
            rel = (Path(dirpath) / name).relative_to(archive).as_posix()
            if rel not in listed and not name.startswith(".lock"):
                problems.append(ArchiveProblem(rel, "unexpected", "not listed in any manifest"))
    return problems


def _chain_problems(
    archive: Path, folder: Path, manifest: dict[str, Any], prefix: str
) -> list[ArchiveProblem]:
    number = int(folder.name)
    out = []
    where = f"{prefix}{MANIFEST}"
    if manifest.get("update") != number:
        out.append(
            ArchiveProblem(
                where,
                "chain broken",
                f"records update {manifest.get('update')!r}, is in updates/{folder.name}",
            )
        )
    if manifest.get("run_manifest_sha256") != sha256_file(archive / MANIFEST):
        out.append(
            ArchiveProblem(
                where,
                "chain broken",
                "the run's manifest.json is not the one this update was appended to",
            )
        )
    previous = manifest.get("previous_update_manifest_sha256")
    if number == 1:
        if previous is not None:
            out.append(ArchiveProblem(where, "chain broken", "update 001 names a previous update"))
    else:
        prev = archive / "updates" / f"{number - 1:03d}" / MANIFEST
        if not prev.is_file() or previous != sha256_file(prev):
            out.append(
                ArchiveProblem(
                    where,
                    "chain broken",
                    f"updates/{number - 1:03d}/manifest.json is not the one this update followed",
                )
            )
    return out


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


def new_run_id(protocol: Any, *, now: Any = None) -> str:
    """``YYYYmmddTHHMMSSZ-<8 hex of the protocol hash>``: sortable, and names what was run."""
    import datetime as dt

    now = now or dt.datetime.now(dt.UTC)
    return f"{now:%Y%m%dT%H%M%S}Z-{protocol.sha256()[:8]}"
