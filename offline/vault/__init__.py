"""The encrypted vault: header keyslots, SQLCipher databases, collections and their keys."""

from __future__ import annotations

from .core import Session, add_user, change_passphrase, create_vault, list_users, open_session, remove_user

__all__ = ["Session", "add_user", "change_passphrase", "create_vault", "list_users", "open_session", "remove_user"]
