"""One-line status notes for slow steps the user would otherwise wait through in silence.

The library only announces ("loading embedding model"); whoever runs it decides whether and where
that is shown. The CLI installs a listener that writes to stderr (never stdout, so ``--json``
output stays clean); with no listener, as in the agent and in library use, nothing is printed.
Only steps that really happen are announced: a model already loaded in this process says nothing.
"""

from __future__ import annotations

from collections.abc import Callable

_listener: Callable[[str], None] | None = None


def set_listener(fn: Callable[[str], None] | None) -> None:
    """Send every status note to ``fn`` (None: drop them)."""
    global _listener
    _listener = fn


def loading(what: str) -> None:
    """Announce that ``what`` is being loaded now."""
    if _listener is not None:
        _listener(f"loading {what}...")
