"""The vault audit key as a reviewer sees it: PEM, fingerprint, and signing of statements.

Checkpoints and export manifests are signed with the vault's audit key (Ed25519, held wrapped by
admins and auditors) over their exact bytes, with no prefix, so stock ``openssl pkeyutl -verify
-rawin`` checks them. They cannot be confused with chain entries, which are signed by users' own
keys over a domain-separated message, and each statement names its own ``type``.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import AuditChainBroken, IntegrityError

if TYPE_CHECKING:
    from ..vault.core import Session
    from .chain import VerifyReport


def public_key(hex_key: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(hex_key))
    except (TypeError, ValueError):
        raise IntegrityError("audit public key is malformed") from None


def public_pem(hex_key: str) -> bytes:
    """SubjectPublicKeyInfo PEM, what ``openssl pkeyutl -pubin -inkey`` reads."""
    return public_key(hex_key).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def fingerprint(hex_key: str) -> str:
    """``sha256:`` of the DER SubjectPublicKeyInfo; equals
    ``openssl pkey -pubin -in KEY.pem -outform DER | sha256sum``."""
    der = public_key(hex_key).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


def verify_statement(hex_key: str, data: bytes, signature: bytes) -> bool:
    try:
        public_key(hex_key).verify(signature, data)
    except InvalidSignature:
        return False
    return True


def audit_signer(session: Session, report: VerifyReport) -> tuple[Ed25519PrivateKey, str]:
    """The caller's copy of the audit key, checked against the key the chain was created with."""
    from ..vault.core import load_audit_key

    key = load_audit_key(session)
    pub = key.public_key().public_bytes_raw().hex()
    if pub != report.audit_public_key:
        raise AuditChainBroken(
            "audit entry 1: the vault's audit key is not the one the chain was created with", 1
        )
    return key, pub
