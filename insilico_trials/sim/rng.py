"""Keyed random streams.

Every random draw in a run comes from a stream derived from the protocol seed and a key that
names what the draw belongs to (replicate, arm, patient, purpose), never from a chunk or a
worker. The same key gives the same stream on any machine, in any chunking.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["key_int", "patient_normals", "patient_uniforms", "seed_sequence", "stream"]


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


# Per-patient draws, counter-based. Patient i's j-th draw under a key is a pure function of
# (seed, key, i, j): it does not depend on which other patients are computed with it, so any
# chunking gives the same numbers, and a million patients cost one vectorised pass instead of a
# million generator constructions. The mixer is SplitMix64 (Steele, Lea and Flood 2014), whose
# output over a counter is the SplitMix64 stream itself; it passes BigCrush.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_DRAW_BITS = 20  # up to 2**20 draws per patient and key; patients up to 2**44


def _mix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def patient_uniforms(
    seed: int, keys: tuple[str | int, ...], patient: np.ndarray, n_draws: int
) -> np.ndarray:
    """Uniform(0, 1) draws, shape ``(len(patient), n_draws)``, keyed per patient.

    Parameters
    ----------
    seed
        The protocol seed.
    keys
        What the draws belong to, e.g. ``("cohort", replicate, arm, "eta")``.
    patient
        Patient indices (>= 0) within the arm.
    n_draws
        Draws per patient. Draw ``j`` of patient ``i`` is the same whatever ``n_draws`` is.

    Examples
    --------
    >>> u = patient_uniforms(1, ("x",), np.arange(10), 3)
    >>> bool((u[4:6] == patient_uniforms(1, ("x",), np.array([4, 5]), 3)).all())
    True
    """
    patient = np.asarray(patient, dtype=np.int64)
    if patient.ndim != 1 or (patient.size and (patient.min() < 0 or patient.max() >= 2**44)):
        raise ValueError("patient indices must be a 1-d array of integers in [0, 2**44)")
    if not 0 <= n_draws <= 2**_DRAW_BITS:
        raise ValueError(f"n_draws must be in [0, {2**_DRAW_BITS}], got {n_draws}")
    base = seed_sequence(seed, *keys).generate_state(1, dtype=np.uint64)[0]
    counter = (patient.astype(np.uint64)[:, None] << np.uint64(_DRAW_BITS)) + np.arange(
        n_draws, dtype=np.uint64
    )
    z = _mix64(base + (counter + np.uint64(1)) * _GOLDEN)
    # 53 high bits -> (0, 1): the half-step keeps 0 and 1 out, so ndtri never returns inf.
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def patient_normals(
    seed: int, keys: tuple[str | int, ...], patient: np.ndarray, n_draws: int
) -> np.ndarray:
    """Standard normal draws keyed per patient (inverse CDF of :func:`patient_uniforms`)."""
    from scipy.special import ndtri

    return ndtri(patient_uniforms(seed, keys, patient, n_draws))
