#!/usr/bin/env python3
"""Checksum and sign an air-gap bundle folder (used by scripts/make-bundle and the tests).

    bundle_sign.py sign BUNDLE_DIR --key KEY.pem

writes ``SHA256SUMS`` (``sha256sum`` format, every regular file in the folder, sorted, relative
``./`` paths), ``SHA256SUMS.sig`` (the raw 64-byte Ed25519 signature of ``SHA256SUMS``) and
``pub.pem`` (the public key, SubjectPublicKeyInfo PEM). If KEY.pem does not exist a new Ed25519 key
is generated there (PKCS#8 PEM, mode 0600); it must lie outside the bundle. The verifying side needs
only ``openssl pkeyutl -verify -pubin -inkey pub.pem -rawin -in SHA256SUMS -sigfile SHA256SUMS.sig``
and ``sha256sum -c SHA256SUMS``. Prints the public key's fingerprint (sha256 of its DER encoding).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SUMS, SIG, PUB = "SHA256SUMS", "SHA256SUMS.sig", "pub.pem"
_BLOCK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def load_or_create_key(key_path: Path, bundle: Path) -> Ed25519PrivateKey:
    """Load the builder's Ed25519 key, or create it (0600, PEM) when the file does not exist."""
    key_path = key_path.expanduser().resolve()
    if key_path.is_relative_to(bundle.resolve()):
        raise SystemExit(f"Error: the signing key must not be inside the bundle ({key_path})")
    if key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise SystemExit(f"Error: {key_path} is not an Ed25519 private key")
        if key_path.stat().st_mode & 0o077:
            print(f"warning: signing key {key_path} is readable by others; chmod 600 it", file=sys.stderr)
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    print(f"generated a new bundle signing key: {key_path} (keep it private; mode 0600)", file=sys.stderr)
    return key


def write_sums(bundle: Path) -> int:
    """``SHA256SUMS`` over every regular file except the signature files; refuses symlinks."""
    lines = []
    for dirpath, dirnames, filenames in os.walk(bundle, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            rel = p.relative_to(bundle).as_posix()
            if rel in (SUMS, SIG, PUB):
                continue
            if p.is_symlink() or not p.is_file():
                raise SystemExit(f"Error: {rel} is not a regular file; a bundle holds only regular files")
            if "\n" in rel or "\\" in rel:
                raise SystemExit(f"Error: unsupported file name {rel!r}")
            lines.append(f"{sha256_file(p)}  ./{rel}\n")
    lines.sort(key=lambda s: s[66:])
    (bundle / SUMS).write_text("".join(lines), encoding="utf-8")
    return len(lines)


def sign(bundle: Path, key_path: Path) -> str:
    """Write SHA256SUMS, its signature and the public key; return the key fingerprint."""
    key = load_or_create_key(key_path, bundle)
    n = write_sums(bundle)
    sums = (bundle / SUMS).read_bytes()
    (bundle / SIG).write_bytes(key.sign(sums))
    pub = key.public_key()
    (bundle / PUB).write_bytes(
        pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    fingerprint = hashlib.sha256(der).hexdigest()
    print(f"signed {n} files; public key sha256 {fingerprint}", file=sys.stderr)
    return fingerprint


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sign", help="write SHA256SUMS, SHA256SUMS.sig and pub.pem")
    s.add_argument("bundle", type=Path)
    s.add_argument("--key", type=Path, required=True, help="Ed25519 private key (PEM); created if missing")
    args = ap.parse_args(argv)
    if not args.bundle.is_dir():
        raise SystemExit(f"Error: {args.bundle} is not a folder")
    print(sign(args.bundle, args.key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
