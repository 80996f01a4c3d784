"""Nothing leaves the machine: two layers, the second where the OS allows it.

1. **Python socket guard** (:func:`install`, always on in the CLI). Every way Python code reaches
   the network is patched to raise :class:`NetworkBlocked` before anything is sent:
   ``connect``/``connect_ex``/``bind``/``sendto``/``sendmsg`` of :class:`socket.socket` *and* of
   the C-level ``_socket.socket`` (replaced by a guarded subclass, so ``import _socket`` is no way
   round), and the name-service functions of both modules (``getaddrinfo``, ``gethostbyname``,
   ``gethostbyname_ex``, ``gethostbyaddr``, ``getnameinfo``). A DNS query is a UDP packet: a
   lookup of any name but a loopback one is refused, not sent. Unix, netlink and AF_ALG sockets
   are local to the kernel and stay allowed, as does loopback.
2. **Private network namespace** (:func:`enter_network_namespace`, called first thing by the
   console entry point and the agent, before any thread exists). ``unshare(CLONE_NEWNET)`` (or,
   unprivileged, ``CLONE_NEWUSER | CLONE_NEWNET`` with the caller's own uid/gid mapped) leaves the
   process with nothing but a loopback interface, which is brought up. That also stops native
   code (llama.cpp, a library's C extension, a subprocess) that never goes through Python's
   socket module. Where it is not permitted (containers, hardened kernels, a threaded process)
   it silently does nothing: layer 1 still holds. Path-based Unix sockets (the agent) work
   across namespaces.

``offline doctor`` reports both layers (:func:`layers`).
"""

from __future__ import annotations

import _socket
import ipaddress
import os
import socket
import sys
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

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", ""}
# Address families that never leave the kernel.
_LOCAL_FAMILIES = {getattr(socket, n) for n in ("AF_UNIX", "AF_NETLINK", "AF_ALG") if hasattr(socket, n)}
_IP_FAMILIES = {socket.AF_INET, getattr(socket, "AF_INET6", socket.AF_INET)}
_METHODS = ("connect", "connect_ex", "bind", "sendto", "sendmsg")
_LOOKUPS = ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo")

_originals: dict[str, Any] = {}
# The team server's exceptions (offline.server): the one address it listens on, and the one
# generation backend the admin named. Nothing else, and only when the server asked for them.
_allowed_binds: set[tuple[str, int]] = set()
_allowed_peers: set[tuple[str, int]] = set()
_namespace: dict[str, Any] = {"active": False, "reason": "not attempted in this process"}


def set_offline_env() -> None:
    """Force the offline variables (overriding any value that would re-enable the hub)."""
    for key, value in OFFLINE_ENV.items():
        os.environ[key] = value


def _address(host: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if not isinstance(host, str):
        return None
    try:
        addr = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr


def is_loopback(host: Any) -> bool:
    """True for loopback addresses and names (and the unspecified address, which a *connection*
    reaches on this host); anything unparsable counts as remote."""
    if isinstance(host, (str, bytes)):
        name = (host.decode(errors="replace") if isinstance(host, bytes) else host).strip("[]").lower()
        if name.split("%")[0] in _LOCAL_NAMES:
            return True
    addr = _address(host)
    return addr is not None and (addr.is_loopback or addr.is_unspecified)


def _is_loopback_bind(host: Any) -> bool:
    """Binding is stricter: ``0.0.0.0`` or ``""`` would listen on every interface."""
    if isinstance(host, str) and host.lower() in ("localhost", "ip6-localhost"):
        return True
    addr = _address(host)
    return addr is not None and addr.is_loopback


def _refuse(what: str, target: Any) -> None:
    raise NetworkBlocked(f"network access blocked: {what} {target!r} (offline kit never uses the network)")


def allow_listen(host: str, port: int) -> None:
    """Let this process bind ``host:port`` (the team server's listening socket)."""
    _allowed_binds.add((_norm(host), int(port)))


def allow_peer(host: str, port: int) -> None:
    """Let this process connect to ``host:port`` and only that (``serve --generate-backend``)."""
    _allowed_peers.add((_norm(host), int(port)))


def clear_allowed() -> None:
    """Withdraw every exception (tests)."""
    _allowed_binds.clear()
    _allowed_peers.clear()


def allowed() -> dict[str, list[str]]:
    """The exceptions in force, for ``offline doctor``."""
    return {
        "listen": sorted(f"{h}:{p}" for h, p in _allowed_binds),
        "peers": sorted(f"{h}:{p}" for h, p in _allowed_peers),
    }


def _norm(host: Any) -> str:
    addr = _address(host)
    return str(addr) if addr is not None else str(host).lower()


def _check(address: Any, family: int, *, bind: bool = False) -> None:
    if family in _LOCAL_FAMILIES:
        return
    host = address[0] if isinstance(address, tuple) and address else address
    if isinstance(address, tuple) and len(address) >= 2 and family in _IP_FAMILIES:
        if (_norm(host), address[1]) in (_allowed_binds if bind else _allowed_peers):
            return
    if family not in _IP_FAMILIES:  # packet, vsock, bluetooth, can ...: nothing the kit needs
        _refuse("attempt to reach", host)
    if not (_is_loopback_bind(host) if bind else is_loopback(host)):
        _refuse("attempt to bind" if bind else "attempt to reach", host)


def _sendto_address(args: tuple[Any, ...]) -> Any:
    return args[-1] if args else None  # sendto(data, address) or sendto(data, flags, address)


def _sendmsg_address(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if "address" in kwargs:
        return kwargs["address"]
    return args[3] if len(args) > 3 else None  # sendmsg(buffers, ancdata, flags, address)


# -- layer 1: the Python socket guard ----------------------------------------------------------


def _guard_methods(orig: dict[str, Any]) -> dict[str, Any]:
    """Guarded versions of the socket methods, calling the ``orig`` implementations."""

    def connect(self: Any, address: Any) -> Any:
        _check(address, self.family)
        return orig["connect"](self, address)

    def connect_ex(self: Any, address: Any) -> Any:
        _check(address, self.family)
        return orig["connect_ex"](self, address)

    def bind(self: Any, address: Any) -> Any:
        _check(address, self.family, bind=True)
        return orig["bind"](self, address)

    def sendto(self: Any, data: Any, *args: Any) -> Any:
        _check(_sendto_address(args), self.family)
        return orig["sendto"](self, data, *args)

    def sendmsg(self: Any, *args: Any, **kwargs: Any) -> Any:
        address = _sendmsg_address(args, kwargs)
        if address is not None:  # None: a connected socket, whose peer connect() already checked
            _check(address, self.family)
        return orig["sendmsg"](self, *args, **kwargs)

    return {"connect": connect, "connect_ex": connect_ex, "bind": bind, "sendto": sendto, "sendmsg": sendmsg}


def _guard_lookup(name: str, orig: Any) -> Any:
    def lookup(*args: Any, **kwargs: Any) -> Any:
        target = args[0] if args else kwargs.get("host", kwargs.get("sockaddr"))
        host = target[0] if name == "getnameinfo" and isinstance(target, tuple) and target else target
        if name == "getaddrinfo" and host is None:  # a passive (bind) lookup: nothing is resolved
            return orig(*args, **kwargs)
        if not is_loopback(host):
            _refuse("lookup of", host)
        return orig(*args, **kwargs)

    lookup.__name__ = lookup.__qualname__ = name
    lookup.__doc__ = f"{name}, refusing any name or address but a loopback one (offline.netguard)."
    return lookup


def install() -> None:
    """Turn the guard on for this process (idempotent)."""
    set_offline_env()
    if _originals:
        return
    base = _socket.socket
    py_orig = {m: getattr(socket.socket, m) for m in _METHODS if hasattr(socket.socket, m)}
    c_orig = {m: getattr(base, m) for m in _METHODS if hasattr(base, m)}
    _originals.update(
        {
            "socket": py_orig,
            "_socket.socket": base,
            "_socket.SocketType": _socket.SocketType,
            "socket.SocketType": socket.SocketType,
        }
    )
    for m, fn in _guard_methods(py_orig).items():
        if m in py_orig:
            setattr(socket.socket, m, fn)
    # The C type cannot be patched; code that builds sockets from ``_socket`` gets this subclass.
    guarded = type(
        "socket",
        (base,),
        {
            "__module__": "_socket",
            "__slots__": (),
            "__doc__": "_socket.socket with the offline network guard.",
            **{m: fn for m, fn in _guard_methods(c_orig).items() if m in c_orig},
        },
    )
    _socket.socket = _socket.SocketType = guarded  # type: ignore[misc]
    for module in (socket, _socket):
        for name in _LOOKUPS:
            if hasattr(module, name):
                _originals[f"{module.__name__}.{name}"] = getattr(module, name)
                setattr(module, name, _guard_lookup(name, getattr(module, name)))


def uninstall() -> None:
    """Restore the original socket functions (tests only)."""
    if not _originals:
        return
    for m, fn in _originals["socket"].items():
        setattr(socket.socket, m, fn)
    _socket.socket = _originals["_socket.socket"]  # type: ignore[misc]
    _socket.SocketType = _originals["_socket.SocketType"]  # type: ignore[misc]
    for module in (socket, _socket):
        for name in _LOOKUPS:
            key = f"{module.__name__}.{name}"
            if key in _originals:
                setattr(module, name, _originals[key])
    _originals.clear()


def active() -> bool:
    """Whether the guard is installed in this process."""
    return bool(_originals)


def self_test() -> tuple[bool, str]:
    """Try a TCP connection, a UDP datagram and a DNS lookup; the guard must refuse each first."""
    probes = []
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.settimeout(0.2)
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed, and never reached here
        finally:
            s.close()
        probes.append("tcp connect")
    except NetworkBlocked:
        pass
    except OSError as exc:
        return False, f"connection attempt left the process ({exc.__class__.__name__})"
    try:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.sendto(b"", ("192.0.2.1", 9))
        finally:
            u.close()
        probes.append("udp sendto")
    except NetworkBlocked:
        pass
    except OSError:
        probes.append("udp sendto")
    try:
        socket.gethostbyname("guard-probe.invalid")  # .invalid: nothing to learn even if it leaked
        probes.append("dns lookup")
    except NetworkBlocked:
        pass
    except OSError:
        probes.append("dns lookup")
    if probes:
        return False, f"not refused by the guard: {', '.join(probes)}"
    return True, "non-loopback connection, datagram and lookup refused by the guard"


# -- layer 2: a private network namespace ----------------------------------------------------

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_GET_DUMPABLE = 3


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _loopback_up() -> None:
    """Bring ``lo`` up in a fresh namespace (it starts down): SIOCGIFFLAGS, then SIOCSIFFLAGS | IFF_UP."""
    import fcntl
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    layout = "16sH22x"  # struct ifreq: name, then the flags member of the 24-byte union
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack(layout, fcntl.ioctl(s.fileno(), siocgifflags, struct.pack(layout, b"lo", 0)))[1]
        fcntl.ioctl(s.fileno(), siocsifflags, struct.pack(layout, b"lo", flags | iff_up))


def enter_network_namespace() -> bool:
    """Move this process into a new network namespace holding only loopback; True if it did.

    Call it before any thread starts (a threaded process cannot enter a new user namespace).
    Never raises: when the kernel, a container or a seccomp profile says no, the reason is
    recorded for :func:`layers` and the Python guard remains the layer that holds.
    """
    if _namespace["active"]:
        return True
    if not sys.platform.startswith("linux"):
        _namespace["reason"] = "not available on this OS"
        return False
    if os.environ.get("OFFLINE_NETNS", "").lower() in ("0", "off", "no"):
        _namespace["reason"] = "disabled by OFFLINE_NETNS=0"
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        how = "CLONE_NEWNET"
        if libc.unshare(CLONE_NEWNET) != 0:  # privileged: no uid remapping needed
            uid, gid = os.getuid(), os.getgid()
            # Once in a new user namespace our ids must be mapped or no file can be created
            # (EOVERFLOW), and only a dumpable process may write its own /proc/self/uid_map:
            # never start what could not be finished.
            if libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 1:
                _namespace["reason"] = "not permitted here (process is not dumpable)"
                return False
            if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                _namespace["reason"] = f"not permitted here ({os.strerror(err)})"
                return False
            # Map our own ids only, so files, permissions and SO_PEERCRED look as before.
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"{uid} {uid} 1")
            _write("/proc/self/gid_map", f"{gid} {gid} 1")
            how = "CLONE_NEWUSER|CLONE_NEWNET"
        _loopback_up()
    except Exception as exc:  # noqa: BLE001 - a second layer must never stop the kit
        _namespace["reason"] = f"could not be completed ({exc.__class__.__name__}: {exc})"
        return False
    _namespace.update(
        active=True, reason=f"entered with unshare({how}); interfaces: {', '.join(interfaces())}", how=how
    )
    return True


def interfaces() -> list[str]:
    """Network interfaces this process can see."""
    try:
        return [name for _, name in socket.if_nameindex()]
    except OSError:
        return []


def layers() -> dict[str, Any]:
    """Which layers hold in this process, for ``offline doctor``."""
    guard_ok, guard_why = self_test() if active() else (False, "not installed")
    return {
        "python_guard": {"active": active() and guard_ok, "reason": guard_why},
        "network_namespace": {
            "active": bool(_namespace["active"]),
            "reason": _namespace["reason"],
            "interfaces": interfaces(),
        },
    }
