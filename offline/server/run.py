"""Starting the team server: address checks, TLS, the network guard's one exception, uvicorn."""

from __future__ import annotations

import datetime as _dt
import hashlib
import ipaddress
import json
import os
import signal
from pathlib import Path
from typing import Any

from .. import config, netguard
from ..errors import ParameterError, UsageError

DEFAULT_LISTEN = "127.0.0.1:8765"


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 as ``[::1]:PORT``) -> (host, port); host must be an IP address."""
    host, sep, port = str(text).rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ParameterError(
            "invalid {listen} {text}: use HOST:PORT, for example 127.0.0.1:8765", "listen", text=repr(text)
        )
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ParameterError(
            "invalid {listen} {text}: the host must be an IP address (no name lookups)",
            "listen",
            text=repr(text),
        ) from None
    return host, int(port)


def is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


def generate_certificate(folder: Path, host: str) -> tuple[Path, Path, str]:
    """A self-signed certificate for ``host`` (ECDSA P-256, one year); returns cert, key and sha256
    fingerprint."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "offline team server")])
    now = _dt.datetime.now(_dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    config.ensure_private_dir(folder)
    cert_path, key_path = folder / "server-cert.pem", folder / "server-key.pem"
    config.write_private_file(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    config.write_private_file(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path, cert_fingerprint(cert_path)


def cert_fingerprint(cert_path: Path) -> str:
    """SHA-256 of the certificate (DER), as clients pin it: ``AB:CD:...``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def prepare(
    vault_dir: Path, listen: str, tls_cert: str | None, tls_key: str | None, generate_tls: bool
) -> dict[str, Any]:
    """Check everything before anything listens: address, TLS files, vault. Returns the plan."""
    from ..vault import header as hdr

    host, port = parse_listen(listen)
    hdr.check_vault_dir(Path(vault_dir))
    if bool(tls_cert) != bool(tls_key):
        raise ParameterError("{tls_cert} and {tls_key} go together", "tls_cert", "tls_key")
    if generate_tls and tls_cert:
        raise ParameterError(
            "use either {tls_cert}/{tls_key} or {generate_tls}", "tls_cert", "tls_key", "generate_tls"
        )
    fingerprint = None
    if generate_tls:
        tls_cert_p, tls_key_p, fingerprint = generate_certificate(config.home() / "server-tls", host)
        tls_cert, tls_key = str(tls_cert_p), str(tls_key_p)
    elif tls_cert:
        for p in (tls_cert, tls_key):
            if not Path(p).is_file():
                raise UsageError(f"no such file: {p}")
        fingerprint = cert_fingerprint(Path(tls_cert))
    if not is_loopback(host) and not tls_cert:
        raise ParameterError(
            "listening on {host} (not loopback) needs TLS: {tls_cert} F {tls_key} F or {generate_tls}",
            "tls_cert",
            "tls_key",
            "generate_tls",
            host=host,
        )
    scheme = "https" if tls_cert else "http"
    url = f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}"
    return {
        "host": host,
        "port": port,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "fingerprint": fingerprint,
        "url": url,
    }


def records_dir() -> Path:
    """Where each running server leaves a note for ``offline doctor`` (this user's home, 0700)."""
    return config.home() / "servers"


def _record(vault_dir: Path, plan: dict[str, Any], backend: str | None) -> Path:
    """Write ``servers/PORT.json``: what this server listens on and the one backend its guard allows.

    No secret goes in it; it lets ``doctor`` (a separate process) show the network exceptions of a
    server running as this user. Removed when the server stops; a leftover names a dead pid.
    """
    folder = records_dir()
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    path = folder / f"{int(plan['port'])}.json"
    doc = {
        "pid": os.getpid(),
        "vault": str(Path(vault_dir).resolve()),
        "listen": f"{plan['host']}:{plan['port']}",
        "tls": bool(plan.get("tls_cert")),
        "generate_backend": backend,
        "started_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, sort_keys=True)
    os.replace(tmp, path)
    return path


def running_servers() -> list[dict[str, Any]]:
    """The notes of servers started by this user, each with ``running`` (its pid is alive)."""
    out = []
    folder = records_dir()
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            pid = int(doc["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
        out.append({**doc, "running": alive, "file": str(path)})
    return out


def serve(
    vault_dir: Path,
    plan: dict[str, Any],
    *,
    idle_s: float = 300.0,
    queue_size: int = 64,
    per_user: int = 8,
    generate_backend: str | None = None,
    ready: Any = None,
) -> None:
    """Run the server until interrupted (uvicorn; HTTP parsing is h11's, never ours)."""
    import uvicorn

    from ..vault.db import enable_memory_security
    from .app import create_app
    from .guard import GuardedH11Protocol

    enable_memory_security()  # keys dropped after --idle leave no copy in SQLite's freed memory
    netguard.install()
    netguard.allow_listen(plan["host"], plan["port"])
    app = create_app(
        vault_dir, idle_s=idle_s, queue_size=queue_size, per_user=per_user, generate_backend=generate_backend
    )
    cfg = uvicorn.Config(
        app,
        host=plan["host"],
        port=plan["port"],
        log_level="warning",
        access_log=False,
        ssl_certfile=plan["tls_cert"],
        ssl_keyfile=plan["tls_key"],
        timeout_keep_alive=5,
        limit_concurrency=256,
        h11_max_incomplete_event_size=64 * 1024,
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=5,
        # The client address in the signed log is the socket's peer, never a header
        # any client can write (X-Forwarded-For, Forwarded, X-Real-IP).
        proxy_headers=False,
        forwarded_allow_ips=[],
        http=GuardedH11Protocol,
    )  # slow headers cut off, connections per address bounded
    server = uvicorn.Server(cfg)
    note = _record(vault_dir, plan, generate_backend)

    def stop(signum: int, frame: Any) -> None:
        # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to the handler
        # it found: this one, so the process ends through the finally below, not the default kill.
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    if ready is not None:
        ready(plan)
    try:
        server.run()
    finally:
        note.unlink(missing_ok=True)
        app.state.pool.close()
