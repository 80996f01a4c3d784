"""Nothing leaves the machine.

:func:`install` sets the Hugging Face / telemetry offline variables and patches the socket layer so
any attempt to reach a non-loopback address (connect, sendto, DNS lookup of a remote name) raises
:class:`NetworkBlocked` instead. It is installed before anything that could phone home is imported.
Unix sockets (the agent) and loopback stay allowed.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any

from .errors import NetworkBlocked

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "DO_NOT_TRACK": "1",
    "ANONYMIZED_TELEMETRY": "False",
    "TOKENIZERS_PARALLELISM": "false",
}
# Variables that, when set to these values, would turn telemetry or hub access back on.
TELEMETRY_ON = {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "0"}

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", ""}
_originals: dict[str, Any] = {}


def set_offline_env() -> None:
    """Force the offline variables (overriding any value that would re-enable the hub)."""
    for key, value in OFFLINE_ENV.items():
        os.environ[key] = value


def is_loopback(host: Any) -> bool:
    """True for loopback addresses and names; anything unparsable counts as remote."""
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if not isinstance(host, str):
        return False
    name = host.strip("[]").split("%")[0].lower()
    if name in _LOCAL_NAMES:
        return True
    try:
        addr = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.is_loopback or addr.is_unspecified


def _check(address: Any, family: int) -> None:
    if family == getattr(socket, "AF_UNIX", None):
        return
    host = address[0] if isinstance(address, tuple) and address else address
    if not is_loopback(host):
        raise NetworkBlocked(f"network access blocked: attempt to reach {host!r} (offline kit never uses the network)")


def _guarded_connect(self: socket.socket, address: Any) -> Any:
    _check(address, self.family)
    return _originals["connect"](self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> Any:
    _check(address, self.family)
    return _originals["connect_ex"](self, address)


def _guarded_sendto(self: socket.socket, data: Any, *args: Any) -> Any:
    _check(args[-1], self.family)
    return _originals["sendto"](self, data, *args)


def _guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if host is not None and not is_loopback(host):
        raise NetworkBlocked(f"network access blocked: lookup of {host!r} (offline kit never uses the network)")
    return _originals["getaddrinfo"](host, *args, **kwargs)


def install() -> None:
    """Turn the guard on for this process (idempotent)."""
    set_offline_env()
    if _originals:
        return
    _originals.update(
        connect=socket.socket.connect,
        connect_ex=socket.socket.connect_ex,
        sendto=socket.socket.sendto,
        getaddrinfo=socket.getaddrinfo,
    )
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
    socket.socket.sendto = _guarded_sendto  # type: ignore[method-assign]
    socket.getaddrinfo = _guarded_getaddrinfo  # type: ignore[assignment]


def uninstall() -> None:
    """Restore the original socket functions (tests only)."""
    if not _originals:
        return
    socket.socket.connect = _originals["connect"]  # type: ignore[method-assign]
    socket.socket.connect_ex = _originals["connect_ex"]  # type: ignore[method-assign]
    socket.socket.sendto = _originals["sendto"]  # type: ignore[method-assign]
    socket.getaddrinfo = _originals["getaddrinfo"]
    _originals.clear()


def active() -> bool:
    """Whether the guard is installed in this process."""
    return bool(_originals)


def self_test() -> tuple[bool, str]:
    """Try to reach a documentation-range address; the guard must refuse before any packet."""
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.settimeout(0.2)
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed, and never reached here
        finally:
            s.close()
    except NetworkBlocked:
        return True, "non-loopback connection refused by the guard"
    except OSError as exc:
        return False, f"connection attempt left the process ({exc.__class__.__name__})"
    return False, "connection to a non-loopback address succeeded"
