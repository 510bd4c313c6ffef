"""Keyed random streams.

Every random draw in a run comes from a stream derived from the protocol seed and a key that
names what the draw belongs to (replicate, arm, patient, purpose), never from a chunk or a
worker. The same key gives the same stream on any machine, in any chunking.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["key_int", "seed_sequence", "stream"]


def key_int(key: str | int) -> int:
    """Map a key part to a non-negative integer, stably across processes and platforms.

    Integers are used as they are (they must be >= 0); strings are hashed with SHA-256 and the
    first 8 bytes taken, so ``"control"`` maps to the same integer everywhere (Python's
    ``hash`` is salted per process and must not be used).
    """
    if isinstance(key, bool):
        raise TypeError("a stream key part cannot be a bool")
    if isinstance(key, int | np.integer):
        if key < 0:
            raise ValueError(f"a stream key part must be >= 0, got {key}")
        return int(key)
    digest = hashlib.sha256(str(key).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


def seed_sequence(seed: int, *keys: str | int) -> np.random.SeedSequence:
    """The SeedSequence for ``keys`` under the protocol ``seed``."""
    return np.random.SeedSequence(entropy=int(seed), spawn_key=tuple(key_int(k) for k in keys))


def stream(seed: int, *keys: str | int) -> np.random.Generator:
    """A PCG64 generator for ``keys`` under ``seed``.

    Examples
    --------
    >>> a = stream(7, "cohort", 0, "control").standard_normal(3)
    >>> b = stream(7, "cohort", 0, "control").standard_normal(3)
    >>> bool((a == b).all())
    True
    """
    return np.random.Generator(np.random.PCG64(seed_sequence(seed, *keys)))
