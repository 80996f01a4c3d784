"""Authorization state authenticated by the signed audit chain, not by being in the database.

Every enrolled user holds the vault database key, so a row in ``users``, ``grants``, a key wrap or
a setting proves nothing by being there: a member with ``sqlcipher3`` can write any of them. What
the kit acts on is the *policy*: the image of the protected tables rebuilt from the audit chain.
Every change to those tables is made inside one transaction with the audit entry that carries it
(``payload["authz"]``: the rows set or deleted), and that entry only counts if its signer may make
that change (an admin, as the chain itself recorded; a member only for adapters they own).

So on every open the kit replays the chain into a :class:`Policy` and compares the live tables with
it: a row added, edited or deleted any other way is named (table and row) and the vault refused.
Decisions (roles, grants, settings, who gets a wrapped key at the next rotation) read the policy.
Large blobs (key wraps, loss curves) enter the image as their sha256, so the chain stays small.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from ..errors import AuditChainBroken, VaultCorrupted

# table -> (key columns, value columns). Order is the column order read from the database.
TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "users": (
        ("name",),
        ("role", "x25519_pub", "ed25519_pub", "created_at", "created_by", "removed_at", "keys_confirmed"),
    ),
    "collections": (
        ("id",),
        (
            "name",
            "file",
            "created_at",
            "created_by",
            "break_glass",
            "retention_days",
            "purpose",
            "legal_basis",
            "emergency",
        ),
    ),
    "collection_keys": (("collection_id", "user"), ("wrapped",)),
    "grants": (("collection_id", "user"), ("perm", "labels", "granted_by", "granted_at")),
    "vault_keys": (("purpose", "user"), ("wrapped",)),
    "settings": (("key",), ("value",)),
    "retention_labels": (("label",), ("days", "set_by", "set_at")),
    "gdpr_settings": (("key",), ("value",)),
    "adapters": (
        ("id",),
        (
            "name",
            "file",
            "base_model",
            "base_sha256",
            "base_arch",
            "dataset_sha256",
            "source_doc_ids",
            "hyperparameters",
            "loss_curve",
            "eval_loss_before",
            "eval_loss_after",
            "created_by",
            "created_at",
            "adapter_sha256",
            "size",
            "key_wrap",
            "meta",
            "tainted_at",
            "taint_reason",
            "override_reason",
        ),
    ),
    "adapter_keys": (("adapter_id", "user"), ("wrapped",)),
}
# Columns recorded as "sha256:<hex>" of their text: key wraps and bulky lineage.
DIGESTED = frozenset({"wrapped", "emergency", "loss_curve", "hyperparameters", "meta", "key_wrap"})
# Rows that are not authorization state: the doctor's canary is random per vault, set by migration.
UNPROTECTED = {("settings", '["canary"]')}
# Fields an eraser (any reader or writer, not only an admin) may set on someone else's adapter.
TAINT_FIELDS = frozenset({"tainted_at", "taint_reason", "override_reason"})

Image = dict[str, dict[str, dict[str, Any]]]


def cell(column: str, value: Any) -> Any:
    """How a stored cell enters the image: digested for bulky columns, bytes as hex."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).hex()
    if column in DIGESTED and value is not None:
        return "sha256:" + hashlib.sha256(str(value).encode()).hexdigest()
    return value


def row_key(values: list[Any] | tuple[Any, ...]) -> str:
    return json.dumps(list(values), separators=(",", ":"), ensure_ascii=False)


def read_image(conn: Any) -> Image:
    """The protected tables as they are stored now (digested blobs, canary left out)."""
    out: Image = {}
    for table, (keys, cols) in TABLES.items():
        rows: dict[str, dict[str, Any]] = {}
        for r in conn.execute(f"SELECT {', '.join(keys + cols)} FROM {table}"):  # noqa: S608 (fixed names)
            raw_key = r[: len(keys)]
            k = row_key([cell(c, v) for c, v in zip(keys, raw_key)])
            if not all(isinstance(v, str) for v in raw_key):
                # Every key column is TEXT. A BLOB (or number) twin of a real key would look the same
                # here yet escape the kit's own WHERE clauses: a revoke that deletes nothing.
                raise VaultCorrupted(
                    f"table {table}, row {k}: a key that is not text (added outside the kit)"
                )
            if k in rows:
                raise VaultCorrupted(f"table {table}, row {k}: stored twice (added outside the kit)")
            if (table, k) in UNPROTECTED:
                continue
            rows[k] = {c: cell(c, v) for c, v in zip(cols, r[len(keys) :])}
        out[table] = rows
    return out


def diff(before: Image, after: Image) -> list[dict[str, Any]]:
    """The rows set (``v``: the new row) or deleted (``v``: null) between two images."""
    changes = []
    for table in TABLES:
        b, a = before.get(table, {}), after.get(table, {})
        for k in sorted(set(b) | set(a)):
            if b.get(k) != a.get(k):
                changes.append({"t": table, "k": json.loads(k), "v": a.get(k)})
    return changes


# A column a later migration added holds its default in rows the chain signed before it existed.
ADDED_COLUMNS: dict[tuple[str, str], Any] = {
    ("collections", "emergency"): None,
    ("users", "keys_confirmed"): 1,
}


def _as_now(table: str, row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with every column of today's schema (added columns at their migration default)."""
    return {c: row.get(c, ADDED_COLUMNS.get((table, c))) for c in TABLES[table][1]}


def first_difference(expected: Image, actual: Image) -> str | None:
    """``"table T, row K: why"`` for the first place the stored tables leave the signed policy."""
    for table in TABLES:
        e, a = expected.get(table, {}), actual.get(table, {})
        for k in sorted(set(e) | set(a)):
            if k not in e:
                return f"table {table}, row {k}: added outside the signed audit log"
            if k not in a:
                return f"table {table}, row {k}: deleted outside the signed audit log"
            want, have = _as_now(table, e[k]), _as_now(table, a[k])
            if want != have:
                cols = [c for c in want if want.get(c) != have.get(c)]
                return f"table {table}, row {k}: {', '.join(cols)} changed outside the signed audit log"
    return None


class Policy:
    """The authorization state as the verified chain defines it (an image of the protected tables)."""

    def __init__(self, image: Image | None = None, *, started: bool = False):
        self.image: Image = image if image is not None else {t: {} for t in TABLES}
        self.started = started  # False until the first entry carrying authz (old vaults: adopt)

    # -- persistence (the client state file) ---------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"image": self.image, "started": self.started}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Policy:
        return cls({t: dict(doc["image"].get(t, {})) for t in TABLES}, started=bool(doc["started"]))

    def copy(self) -> Policy:
        return Policy(copy.deepcopy(self.image), started=self.started)

    # -- reading --------------------------------------------------------------------------
    def row(self, table: str, *key: Any) -> dict[str, Any] | None:
        return self.image[table].get(row_key(key))

    def user(self, name: str) -> dict[str, Any] | None:
        """The user's row while they are enrolled (None once removed)."""
        r = self.row("users", name)
        return r if r is not None and r.get("removed_at") is None else None

    def wrap_pub(self, name: str) -> bytes | None:
        """The X25519 key to wrap secrets to, or None while the user has not confirmed it (an
        upgraded vault's users, until their first open) or is not enrolled."""
        r = self.user(name)
        if r is None or r.get("keys_confirmed", 1) != 1:
            return None
        return bytes.fromhex(r["x25519_pub"])

    def role(self, name: str) -> str | None:
        r = self.user(name)
        return r["role"] if r else None

    def users(self, *roles: str) -> dict[str, dict[str, Any]]:
        out = {}
        for k, r in self.image["users"].items():
            if r.get("removed_at") is None and (not roles or r["role"] in roles):
                out[json.loads(k)[0]] = r
        return dict(sorted(out.items()))

    def collection(self, name: str) -> tuple[str, dict[str, Any]] | None:
        """(id, row) of the collection called ``name``."""
        for k, r in self.image["collections"].items():
            if r["name"] == name:
                return json.loads(k)[0], r
        return None

    def grant(self, collection_id: str, user: str) -> dict[str, Any] | None:
        if self.user(user) is None:
            return None
        return self.row("grants", collection_id, user)

    def grants_of(self, user: str) -> dict[str, dict[str, Any]]:
        """collection id -> grant row, for an enrolled user."""
        if self.user(user) is None:
            return {}
        out = {}
        for k, r in self.image["grants"].items():
            cid, u = json.loads(k)
            if u == user:
                out[cid] = r
        return out

    def key_holders(self, collection_id: str) -> list[str]:
        """Who may hold the collection key now: every admin (custodian) and every grantee."""
        holders = set(self.users("admin"))
        for k in self.image["grants"]:
            cid, u = json.loads(k)
            if cid == collection_id and self.user(u) is not None:
                holders.add(u)
        return sorted(holders)

    def may_read_sources(self, user: str, sources: list[dict[str, Any]]) -> bool:
        """Whether ``user`` may read every source an adapter was trained on: collection *and* labels.

        A source without recorded labels (an adapter from before labels were recorded) is readable
        only through a grant without label limits: fail closed.
        """
        if self.role(user) not in ("admin", "member"):
            return False
        for src in sources:
            g = self.grant(str(src.get("collection_id")), user)
            if g is None:
                return False
            if g["labels"] is not None:
                allowed = set(json.loads(g["labels"]))
                if "labels" not in src or not set(src["labels"]) <= allowed:
                    return False
        return True

    def setting(self, key: str) -> str | None:
        r = self.row("settings", key)
        return None if r is None else r["value"]

    def wrap_digest(self, table: str, *key: Any) -> str | None:
        r = self.row(table, *key)
        return None if r is None else r["wrapped"]

    # -- the fold -------------------------------------------------------------------------
    def apply(self, seq: int, signer: str, action: str, changes: Any, legacy_role: str | None) -> None:
        """Apply one verified entry's ``authz`` changes, refusing any its signer may not make."""
        if not isinstance(changes, list):
            raise AuditChainBroken(f"audit entry {seq}: malformed authorization changes", seq)
        if action == "vault.init":
            role = "admin"  # the founding admin; the chain's root is checked against the pinned key
        elif action == "authz.adopt":
            if self.started or legacy_role != "admin":
                raise AuditChainBroken(
                    f"audit entry {seq}: authz.adopt by {signer!r} is not allowed here", seq
                )
            role = "admin"
        else:
            role = self.role(signer)
        new = copy.deepcopy(self.image)
        for ch in changes:
            try:
                table, key, value = ch["t"], row_key(ch["k"]), ch["v"]
            except (KeyError, TypeError):
                raise AuditChainBroken(f"audit entry {seq}: malformed authorization change", seq) from None
            if table not in TABLES or (value is not None and not isinstance(value, dict)):
                raise AuditChainBroken(f"audit entry {seq}: change to unknown table {table!r}", seq)
            if (
                role != "admin"
                and not self._confirms_own_keys(signer, table, key, new, value)
                and not self._member_may(signer, role, table, key, new, value)
            ):
                raise AuditChainBroken(
                    f"audit entry {seq}: changes {table} {key} but {signer!r} is not an admin", seq
                )
            if value is None:
                new[table].pop(key, None)
            else:
                new[table][key] = value
        self.image = new
        self.started = True

    @staticmethod
    def _confirms_own_keys(
        signer: str, table: str, key: str, new: Image, value: dict[str, Any] | None
    ) -> bool:
        """Anyone may mark their *own* keys confirmed (0 -> 1), and change nothing else doing so."""
        old = new[table].get(key) if table == "users" else None
        if old is None or value is None or key != row_key([signer]):
            return False
        return (
            old.get("keys_confirmed") == 0
            and value.get("keys_confirmed") == 1
            and all(old.get(c) == value.get(c) for c in old if c != "keys_confirmed")
        )

    def _member_may(
        self, signer: str, role: str | None, table: str, key: str, new: Image, value: dict[str, Any] | None
    ) -> bool:
        """Members change only adapters they own (and their key wraps), or taint one they could erase from."""
        if role not in ("member",):
            return False
        if table == "adapters":
            aid = json.loads(key)[0]
            old = new["adapters"].get(key)
            if value is not None and value.get("file") != f"{aid}.bin":
                return False  # a row's file is never a path of the member's choosing
            if all(r is None or r.get("created_by") == signer for r in (old, value)):
                # Their own adapter, but a taint (an erasure's) is not theirs to lift: only an admin
                # records an override; deleting the adapter is always allowed.
                lifted = (
                    old is not None
                    and value is not None
                    and old.get("tainted_at") is not None
                    and (
                        value.get("tainted_at") is None
                        or value.get("override_reason") not in (None, old.get("override_reason"))
                    )
                )
                return not lifted
            # A taint (never an override) by someone who may write a collection it was trained on:
            # the eraser of a document in its lineage.
            if (
                old is not None
                and value is not None
                and value.get("override_reason") is None
                and value.get("tainted_at") is not None
                and all(old.get(c) == value.get(c) for c in old if c not in TAINT_FIELDS)
            ):
                sources = json.loads(old.get("source_doc_ids") or "[]")
                return any(
                    (self.grant(str(src.get("collection_id")), signer) or {}).get("perm") == "write"
                    for src in sources
                )
            return False
        if table == "adapter_keys":
            aid = row_key([json.loads(key)[0]])
            owner = new["adapters"].get(aid) or self.image["adapters"].get(aid)
            return owner is not None and owner.get("created_by") == signer
        return False
