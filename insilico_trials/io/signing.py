"""Ed25519 signatures of archive manifests: a rewrite nobody can make without the key.

A manifest hashes every file, but someone who edits a file can recompute its hash in the
manifest too. A signature over ``manifest.json`` with a private key the sponsor holds closes
that: ``manifest.sig`` beside each manifest (the run's and each update's) holds the signature
and the signer's public key; verification against a public key the verifier trusts (given by
path, never taken from the archive) fails on any change of any manifest, and so of any file.

Keys are the ``cryptography`` library's Ed25519 keys in PEM: ``insilico-trials keygen PATH``
writes ``PATH`` (private, mode 0600) and ``PATH.pub``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from insilico_trials.errors import InputError
from insilico_trials.io.archive import MANIFEST, SIGNATURE

__all__ = ["SIGNATURE", "generate_key", "sign_manifest", "signature_problem"]


def _load_private(path: Path):  # -> Ed25519PrivateKey
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(
            f"{path}: cannot read an Ed25519 private key ({exc}); make one with "
            "`insilico-trials keygen PATH`",
            where=str(path),
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{path}: not an Ed25519 private key", where=str(path))
    return key


def _load_public(path: Path):  # -> Ed25519PublicKey
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(
            f"{path}: cannot read an Ed25519 public key ({exc})", where=str(path)
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"{path}: not an Ed25519 public key", where=str(path))
    return key


def _public_hex(public) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def generate_key(path: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair: ``path`` (private, 0600) and ``path.pub``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    pub = path.with_name(path.name + ".pub")
    for p in (path, pub):
        if p.exists():
            raise InputError(f"{p}: exists; keys are never overwritten", where=str(p))
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path, pub


def sign_manifest(folder: str | Path, key_path: str | Path) -> Path:
    """Sign ``folder/manifest.json``; writes ``folder/manifest.sig``."""
    folder = Path(folder)
    key = _load_private(Path(key_path))
    signature = key.sign((folder / MANIFEST).read_bytes())
    record = {
        "algorithm": "ed25519",
        "signed": MANIFEST,
        "public_key": _public_hex(key.public_key()),
        "signature": signature.hex(),
    }
    out = folder / SIGNATURE
    out.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def signature_problem(folder: str | Path, public_key_path: str | Path) -> str | None:
    """Why ``folder/manifest.json`` is not signed by the key at ``public_key_path`` (None when
    it is)."""
    from cryptography.exceptions import InvalidSignature

    folder = Path(folder)
    public = _load_public(Path(public_key_path))
    sig_path = folder / SIGNATURE
    if not sig_path.is_file() or sig_path.is_symlink():
        return f"{sig_path.name} is missing: the manifest is not signed"
    try:
        record = json.loads(sig_path.read_text(encoding="utf-8"))
        signature = bytes.fromhex(record["signature"])
    except (ValueError, KeyError, TypeError):
        return f"{sig_path.name} is not a signature record"
    if record.get("public_key") != _public_hex(public):
        return f"signed with another key ({str(record.get('public_key'))[:16]}...)"
    try:
        public.verify(signature, (folder / MANIFEST).read_bytes())
    except InvalidSignature:
        return "the signature does not match manifest.json (the manifest was changed after signing)"
    return None
