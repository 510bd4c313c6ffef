"""The program's own hash, cheap to compute (standard library only): the warm services compare
it before a command uses them."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["code_sha256", "environment_sha256"]


def code_sha256() -> str:
    """SHA-256 of the program itself: every source and template file of the package and flows.

    Part of the task-cache key, so a resumed run never reuses a result computed by other code
    (a git commit would miss uncommitted edits); recorded by the warm services, so a command
    never runs on services that imported other code.
    """
    root = Path(__file__).resolve().parents[2]
    h = hashlib.sha256()
    for folder in (root / "insilico_trials",):
        for path in sorted(folder.rglob("*")):
            if path.suffix in (".py", ".j2") and "__pycache__" not in path.parts:
                h.update(str(path.relative_to(root)).encode())
                h.update(path.read_bytes())
    return h.hexdigest()


def environment_sha256() -> str:
    """SHA-256 of what the program runs on: the lock file of its libraries (``uv.lock``) and
    the interpreter's version (a ``uv sync`` to other versions changes it)."""
    import sys

    root = Path(__file__).resolve().parents[2]
    h = hashlib.sha256(sys.version.encode())
    lock = root / "uv.lock"
    h.update(lock.read_bytes() if lock.exists() else b"no uv.lock")
    return h.hexdigest()
