"""The encrypted vault: header keyslots, SQLCipher databases, collections and their keys."""

from __future__ import annotations

from .session import Session
from .users import (
    add_user,
    change_passphrase,
    create_vault,
    list_users,
    open_session,
    remove_user,
    set_setting,
)

__all__ = [
    "Session",
    "add_user",
    "change_passphrase",
    "create_vault",
    "list_users",
    "open_session",
    "remove_user",
    "set_setting",
]
