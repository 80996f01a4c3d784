"""The session the agent lends to commands it runs in its own process (set only inside the agent)."""

from __future__ import annotations

from typing import Any

_hosted: tuple[str, str, Any] | None = None


def host(vault: str, user: str, session: Any) -> None:
    """Lend ``session`` (for resolved vault path ``vault`` and ``user``) to commands run in-process."""
    global _hosted
    _hosted = (vault, user, session)


def clear() -> None:
    global _hosted
    _hosted = None


def hosted() -> tuple[str, str, Any] | None:
    """(vault, user, session) while the agent runs a command, else None."""
    return _hosted
