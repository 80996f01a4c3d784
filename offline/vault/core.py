"""The vault's old single-module surface, kept so existing imports go on working.

The code now lives in layers that import one way only:
:mod:`~offline.vault.keys` (names, keyslots, the vault lock) ->
:mod:`~offline.vault.session` (:class:`Session`, signed key wraps, sealing for auditors) ->
:mod:`~offline.vault.emergency` -> :mod:`~offline.vault.collections` ->
:mod:`~offline.vault.maintenance` -> :mod:`~offline.vault.users` (create, open, enrol, remove,
settings). Nothing inside the vault package imports this module; new code imports from the layer.
"""

from __future__ import annotations

from .keys import (
    KDF_TARGET_ENV,
    LOCK_FILE,
    NAME_RE,
    ROLES,
    SEAL_PURPOSE,
    UserKeys,
    audit_key_context,
    auth_failed,
    check_name,
    install_seal_key,
    kdf_params_for_new_slot,
    make_slot,
    new_id,
    open_slot,
    seal_context,
    utc_now,
    vault_key_context,
    vault_lock,
)
from .session import (
    DEFAULT_SETTINGS,
    Session,
    check_seen,
    check_slots,
    load_audit_key,
    load_seal_key,
    seal_for_auditors,
    share_seal_key,
    signed_wrap,
    unseal_for_auditors,
)
from .users import (
    FAILED_UNLOCKS,
    add_user,
    change_passphrase,
    create_vault,
    list_users,
    open_session,
    remove_user,
    set_setting,
)

__all__ = [
    "DEFAULT_SETTINGS",
    "FAILED_UNLOCKS",
    "KDF_TARGET_ENV",
    "LOCK_FILE",
    "NAME_RE",
    "ROLES",
    "SEAL_PURPOSE",
    "Session",
    "UserKeys",
    "add_user",
    "audit_key_context",
    "auth_failed",
    "change_passphrase",
    "check_name",
    "check_seen",
    "check_slots",
    "create_vault",
    "install_seal_key",
    "kdf_params_for_new_slot",
    "list_users",
    "load_audit_key",
    "load_seal_key",
    "make_slot",
    "new_id",
    "open_session",
    "open_slot",
    "remove_user",
    "seal_context",
    "seal_for_auditors",
    "set_setting",
    "share_seal_key",
    "signed_wrap",
    "unseal_for_auditors",
    "utc_now",
    "vault_key_context",
    "vault_lock",
]
