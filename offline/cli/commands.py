"""Attach every command group to ``main``. One module per group; add new groups here."""

from __future__ import annotations

import importlib

from .root import main

# Module name -> attribute holding the click command or group.
_GROUPS = [
    ("vault", "commands"),
    ("audit", "commands"),
    ("models", "commands"),
    ("ask", "commands"),
    ("eval", "commands"),
    ("doctor", "commands"),
    ("agent", "commands"),
    ("ingest", "commands"),
    ("gdpr", "commands"),
    ("finetune", "commands"),
    ("compare", "commands"),
    ("serve", "commands"),
    # ... one line per group module
]

for _module, _attr in _GROUPS:
    _mod = importlib.import_module(f"{__package__}.{_module}")
    for _cmd in getattr(_mod, _attr):
        main.add_command(_cmd)
