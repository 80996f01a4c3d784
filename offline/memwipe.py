"""Overwrite key material in place before CPython frees it (best effort, CPython only).

A key unwrapped by ``cryptography`` arrives as an immutable ``bytes``; the text handed to SQLCipher's
``PRAGMA key`` is a ``str``. Freed, their memory keeps the key until reused: a process that dropped
a session's keys would still hold them for anyone who can read its memory. :func:`wipe`
overwrites such an object's own buffer once its last use is over. Only for objects this kit made
and holds the only reference to (a key, its hex text): never for anything shared or interned.
"""

from __future__ import annotations

import ctypes
import sys

_BYTES_OFFSET = sys.getsizeof(b"") - 1  # PyBytesObject header: ob_sval follows it
_STR_OFFSET = sys.getsizeof("") - 1  # a compact ASCII str: its characters follow the header


def wipe(value: object) -> None:
    """Zero a ``bytearray``, or overwrite the buffer of a ``bytes`` / ASCII ``str`` key in place."""
    if isinstance(value, bytearray):
        for i in range(len(value)):
            value[i] = 0
    elif isinstance(value, bytes) and len(value) > 1 and sys.implementation.name == "cpython":
        ctypes.memset(id(value) + _BYTES_OFFSET, 0, len(value))
    elif (
        isinstance(value, str) and len(value) > 1 and value.isascii() and sys.implementation.name == "cpython"
    ):
        ctypes.memset(id(value) + _STR_OFFSET, 0x30, len(value))  # '0': still valid ASCII
