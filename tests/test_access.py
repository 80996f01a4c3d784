"""Issue 5: a grant is a key. Enforcement by cryptography as well as by queries."""

from __future__ import annotations

import pytest
from conftest import PASSPHRASES

from offline.errors import (
    AccessDenied,
    AlreadyExists,
    AuthenticationFailed,
    DecryptionError,
    NotFound,
    UsageError,
    VaultCorrupted,
)
from offline.vault import add_user, crypto, db, open_session, remove_user
from offline.vault import collections as C


@pytest.fixture
def two_collections(admin_session):
    C.create_collection(admin_session, "legal")
    C.create_collection(admin_session, "hr")
    C.grant(admin_session, "legal", "bob", "read")
    h = C.open_collection(admin_session, "hr", "write")
    with db.transaction(h.conn):
        h.conn.execute("INSERT INTO meta(key, value) VALUES ('secret', 'salary table')")
    return admin_session


def _hr_file(session) -> str:
    return session.db.execute("SELECT file FROM collections WHERE name = 'hr'").fetchone()[0]


def test_member_without_grant_cannot_decrypt_with_raw_tools(two_collections, open_as, vault_dir):
    bob = open_as("bob")
    cid, file = bob.db.execute("SELECT id, file FROM collections WHERE name = 'hr'").fetchone()
    # No wrap for bob, and none of the wraps that exist open with his private key.
    wraps = bob.db.execute(
        "SELECT user, wrapped FROM collection_keys WHERE collection_id = ?", (cid,)
    ).fetchall()
    assert "bob" not in {u for u, _ in wraps}
    for user, wrapped in wraps:
        for context_user in (user, "bob"):
            with pytest.raises(DecryptionError):
                crypto.unwrap_with(
                    bob.keys.x25519, wrapped, C.collection_key_context(bob.vault_id, cid, file, context_user)
                )
    # The vault key (which every member holds) does not open a collection file either.
    with pytest.raises(VaultCorrupted):
        db.connect(vault_dir / "collections" / file, bob.vault_key, "collection")


def test_denial_message_is_the_same_whether_or_not_it_exists(two_collections, open_as, cli):
    bob = open_as("bob")
    msgs = []
    for name in ("hr", "does-not-exist"):
        with pytest.raises(AccessDenied) as exc:
            C.open_collection(bob, name)
        msgs.append(str(exc.value).replace(name, "X"))
    assert msgs[0] == msgs[1] == "access denied: collection 'X'"
    denied = bob.db.execute(
        "SELECT payload FROM audit_log WHERE action = 'access.denied' AND user = 'bob'"
    ).fetchall()
    assert len(denied) == 2  # every deny is audited


def test_member_lists_only_granted(two_collections, open_as, cli):
    assert [c["name"] for c in C.list_collections(open_as("bob"))] == ["legal"]
    assert C.readable_collections(open_as("bob")) == ["legal"]
    r = cli(["collections", "list"], user="bob")
    assert r.exit_code == 0 and "hr" not in r.output and "legal" in r.output


def test_read_grant_cannot_write(two_collections, open_as):
    with pytest.raises(AccessDenied, match="access denied: collection 'legal'"):
        C.open_collection(open_as("bob"), "legal", "write")


def test_revocation_rotates_key_so_old_key_copy_fails(two_collections, open_as, vault_dir):
    bob = open_as("bob")
    cid, file = bob.db.execute("SELECT id, file FROM collections WHERE name = 'legal'").fetchone()
    wrapped = bob.db.execute(
        "SELECT wrapped FROM collection_keys WHERE collection_id = ? AND user = 'bob'", (cid,)
    ).fetchone()[0]
    stolen_key = crypto.unwrap_with(
        bob.keys.x25519, wrapped, C.collection_key_context(bob.vault_id, cid, file, "bob")
    )
    db.connect(vault_dir / "collections" / file, stolen_key, "collection").close()  # works today
    bob.close()
    C.revoke(two_collections, "legal", "bob")
    new_file = two_collections.db.execute("SELECT file FROM collections WHERE name = 'legal'").fetchone()[0]
    assert new_file != file and not (vault_dir / "collections" / file).exists()
    with pytest.raises(VaultCorrupted):
        db.connect(vault_dir / "collections" / new_file, stolen_key, "collection")
    with pytest.raises(AccessDenied):
        C.open_collection(open_as("bob"), "legal")
    # Admin still reads through their own grant after the rotation.
    C.open_collection(two_collections, "legal").conn.execute("SELECT count(*) FROM chunks").fetchone()


def test_auditor_reads_log_but_never_chunks(two_collections, open_as):
    carol = open_as("carol")
    with pytest.raises(AccessDenied):
        C.open_collection(carol, "hr")
    assert C.readable_collections(carol) == []
    with pytest.raises(UsageError, match="auditors read the audit log, never documents"):
        C.grant(two_collections, "hr", "carol", "read")
    from offline.audit.chain import verify

    assert verify(carol.db).entries > 0


def test_member_cannot_administer(two_collections, open_as):
    bob = open_as("bob")
    with pytest.raises(AccessDenied, match="access denied: granting access needs role admin"):
        C.grant(bob, "legal", "bob", "write")
    with pytest.raises(AccessDenied, match="needs role admin"):
        add_user(bob, "mallory", "admin", "mallory-pass-1")
    with pytest.raises(AccessDenied, match="needs role admin"):
        C.create_collection(bob, "mine")


def test_admin_reads_only_with_a_grant(two_collections, open_as):
    add_user(two_collections, "dave", "admin", "dave-passphrase-1")
    dave = open_session(two_collections.vault_dir, "dave", "dave-passphrase-1")
    try:
        # A custodian's key is there (so dave can grant), but reading needs a grant.
        with pytest.raises(AccessDenied):
            C.open_collection(dave, "hr")
        C.grant(dave, "hr", "dave", "read")
        assert (
            C.open_collection(dave, "hr")
            .conn.execute("SELECT value FROM meta WHERE key = 'secret'")
            .fetchone()[0]
            == "salary table"
        )
    finally:
        dave.close()


def test_bad_input_errors(two_collections, cli):
    with pytest.raises(NotFound, match="no such user: 'zed'"):
        C.grant(two_collections, "legal", "zed", "read")
    with pytest.raises(NotFound, match="no such collection: 'nope'"):
        C.grant(two_collections, "nope", "bob", "read")
    with pytest.raises(UsageError, match="cannot remove the last admin"):
        remove_user(two_collections, "alice")
    with pytest.raises(AlreadyExists):
        add_user(two_collections, "bob", "member", "whatever-123")
    r = cli(["collections", "grant", "legal", "zed"])
    assert r.exit_code == 1 and r.output == "Error: no such user: 'zed'\n"
    r = cli(["users", "remove", "alice", "--yes"])
    assert r.exit_code == 2 and r.output == "Error: cannot remove the last admin\n"
    r = cli(["collections", "grant", "legal", "bob", "--write"], user="bob")
    assert r.exit_code == 4 and r.output == "Error: access denied: granting access needs role admin\n"


def test_removed_user_old_passphrase_fails(two_collections, vault_dir, cli):
    remove_user(two_collections, "bob")
    with pytest.raises(AuthenticationFailed):
        open_session(vault_dir, "bob", PASSPHRASES["bob"])
    r = cli(["collections", "list"], user="bob")
    assert (
        r.exit_code == 3
        and r.output == "Error: authentication failed for user 'bob': unknown user or wrong passphrase\n"
    )


def test_label_limited_grant_is_recorded(two_collections, open_as):
    C.grant(two_collections, "hr", "bob", "read", ["public"])
    h = C.open_collection(open_as("bob"), "hr")
    assert h.labels == frozenset({"public"}) and h.label_allowed("public") and not h.label_allowed("phi")
