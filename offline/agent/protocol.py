"""Wire format between the CLI client and the agent, and the peer-credential check.

A frame is one type byte, a 4-byte big-endian length and the payload. The client sends one JSON
request; the agent answers with JSON frames (status, refusal, exit code) and, for commands, the
command's stdout and stderr bytes as they are produced. The passphrase never crosses this socket.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from typing import Any

JSON = b"J"
STDOUT = b"1"
STDERR = b"2"
MAX_FRAME = 8 << 20  # a request is argv + a few settings; anything bigger is a mistake or abuse
_HEAD = struct.Struct(">cI")
_UCRED = struct.Struct("3i")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }


class ProtocolError(Exception):
    """The other side sent something that is not a frame of this protocol."""


def send(sock: socket.socket, kind: bytes, payload: bytes) -> None:
    sock.sendall(_HEAD.pack(kind, len(payload)) + payload)


def send_json(sock: socket.socket, obj: dict[str, Any]) -> None:
    send(sock, JSON, json.dumps(obj, separators=(",", ":")).encode())


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            if buf:
                raise ProtocolError("connection closed inside a frame")
            return None
        buf += chunk
    return bytes(buf)


def recv(sock: socket.socket) -> tuple[bytes, bytes] | None:
    """The next (kind, payload), or None when the other side closed cleanly between frames."""
    head = _recv_exact(sock, _HEAD.size)
    if head is None:
        return None
    kind, size = _HEAD.unpack(head)
    if kind not in (JSON, STDOUT, STDERR) or size > MAX_FRAME:
        raise ProtocolError("bad frame header")
    payload = _recv_exact(sock, size) if size else b""
    if payload is None:
        raise ProtocolError("connection closed inside a frame")
    return kind, payload


def recv_json(sock: socket.socket) -> dict[str, Any] | None:
    frame = recv(sock)
    if frame is None:
        return None
    kind, payload = frame
    if kind != JSON:
        raise ProtocolError("expected a JSON frame")
    try:
        obj = json.loads(payload)
    except ValueError:
        raise ProtocolError("malformed JSON frame") from None
    if not isinstance(obj, dict):
        raise ProtocolError("a JSON frame must hold an object")
    return obj


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a connected Unix socket (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def peer_allowed(uid: int, own_uid: int | None = None) -> bool:
    """Only the agent's own OS user may talk to it (root included: no exception for anyone)."""
    return uid == (os.getuid() if own_uid is None else own_uid)


def check_peer(sock: socket.socket, own_uid: int | None = None) -> tuple[int, int, int] | None:
    """The peer's credentials if it is allowed, else None (the caller closes the connection)."""
    creds = peer_credentials(sock)
    return creds if peer_allowed(creds[1], own_uid) else None
