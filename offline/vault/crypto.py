"""Key derivation, sealing and key wrapping.

- A passphrase becomes a key-encryption key through Argon2id (parameters stored with the slot).
- ``seal``/``unseal`` are AES-256-GCM with a version byte and associated data that binds the blob to
  its purpose, so a blob moved from one place to another fails to open.
- ``wrap_to``/``unwrap_with`` seal a secret to an X25519 public key (ephemeral ECDH + HKDF-SHA256 +
  AES-GCM), so an admin can grant a collection key to a user without knowing their passphrase.

Every failure to open is the one opaque :class:`DecryptionError`.
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import asdict, dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import DecryptionError

SEAL_VERSION = b"\x01"
KEY_BYTES = 32
# OWASP's floor for Argon2id: 19 MiB, 2 iterations, 1 lane. Calibration only ever raises it.
MIN_MEMORY_KIB = 19 * 1024
MIN_ITERATIONS = 2
MAX_MEMORY_KIB = 1024 * 1024


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def random_key() -> bytes:
    """A fresh 256-bit key from the OS CSPRNG."""
    return os.urandom(KEY_BYTES)


@dataclass(frozen=True)
class KdfParams:
    """Argon2id parameters, stored in clear beside the slot they protect."""

    memory_kib: int
    iterations: int
    lanes: int
    salt: str  # base64, 16 bytes
    alg: str = "argon2id"

    @classmethod
    def fresh(cls, memory_kib: int, iterations: int, lanes: int = 1) -> KdfParams:
        return cls(
            max(memory_kib, MIN_MEMORY_KIB), max(iterations, MIN_ITERATIONS), lanes, b64e(os.urandom(16))
        )

    def with_new_salt(self) -> KdfParams:
        return KdfParams(self.memory_kib, self.iterations, self.lanes, b64e(os.urandom(16)))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> KdfParams:
        if d.get("alg") != "argon2id":
            raise DecryptionError()
        return cls(int(d["memory_kib"]), int(d["iterations"]), int(d["lanes"]), str(d["salt"]))


def derive_kek(passphrase: str, params: KdfParams) -> bytes:
    """Argon2id(passphrase) -> 32-byte key-encryption key."""
    kdf = Argon2id(
        salt=b64d(params.salt),
        length=KEY_BYTES,
        iterations=params.iterations,
        lanes=params.lanes,
        memory_cost=params.memory_kib,
    )
    return kdf.derive(passphrase.encode("utf-8"))


def calibrate_kdf(target_s: float = 0.5) -> KdfParams:
    """Pick Argon2id parameters that take about ``target_s`` here, never below OWASP's floor.

    Memory is raised first (it is what costs an attacker most), then iterations.
    """
    memory, iterations = MIN_MEMORY_KIB, MIN_ITERATIONS
    if target_s <= 0:
        return KdfParams.fresh(memory, iterations)
    derive_kek("warm-up", KdfParams.fresh(memory, iterations))  # first call pays page faults
    while True:
        t0 = time.perf_counter()
        derive_kek("calibration", KdfParams.fresh(memory, iterations))
        elapsed = time.perf_counter() - t0
        if elapsed >= target_s / 2 or memory >= MAX_MEMORY_KIB:
            break
        memory = min(memory * 2, MAX_MEMORY_KIB)
    # Cost is roughly linear in memory: settle on the size that lands near the target.
    memory = max(MIN_MEMORY_KIB, min(int(memory * target_s / max(elapsed, 1e-4)), MAX_MEMORY_KIB))
    return KdfParams.fresh(memory, iterations)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM: version || nonce || ciphertext+tag. ``aad`` names what the blob is for."""
    nonce = os.urandom(12)
    return SEAL_VERSION + nonce + AESGCM(key).encrypt(nonce, plaintext, SEAL_VERSION + aad)


def unseal(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """Inverse of :func:`seal`; any failure is the same opaque error."""
    if len(blob) < 1 + 12 + 16 or blob[:1] != SEAL_VERSION:
        raise DecryptionError()
    try:
        return AESGCM(key).decrypt(blob[1:13], blob[13:], SEAL_VERSION + aad)
    except (InvalidTag, ValueError):
        raise DecryptionError() from None


def _hkdf(shared: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def x25519_public_bytes(key: X25519PrivateKey | X25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def ed25519_public_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey | Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def wrap_to(public_key: bytes, secret: bytes, context: str) -> str:
    """Seal ``secret`` so only the holder of the X25519 private key for ``public_key`` opens it.

    ``context`` (for example ``collection-key|<vault>|<collection>|<user>``) is bound into both the
    HKDF info and the AEAD associated data, so a wrapped key cannot be replayed elsewhere.
    """
    eph = X25519PrivateKey.generate()
    shared = eph.exchange(X25519PublicKey.from_public_bytes(public_key))
    eph_pub = x25519_public_bytes(eph)
    info = b"offline/v1/wrap|" + context.encode() + b"|" + eph_pub + public_key
    blob = seal(_hkdf(shared, info), secret, info)
    return b64e(eph_pub + blob)


def unwrap_with(private_key: X25519PrivateKey, wrapped: str, context: str) -> bytes:
    """Open a :func:`wrap_to` blob; any failure is the same opaque error."""
    try:
        raw = b64d(wrapped)
    except ValueError:
        raise DecryptionError() from None
    eph_pub, blob = raw[:32], raw[32:]
    try:
        shared = private_key.exchange(X25519PublicKey.from_public_bytes(eph_pub))
    except ValueError:
        raise DecryptionError() from None
    info = b"offline/v1/wrap|" + context.encode() + b"|" + eph_pub + x25519_public_bytes(private_key)
    return unseal(_hkdf(shared, info), blob, info)
