"""Issue 19: API tokens are keyslots; expiry and revocation hold against a member with raw file access."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from conftest import PASSPHRASES

from offline.errors import AuthenticationFailed, NotFound, UsageError
from offline.vault import crypto
from offline.vault import header as hdr
from offline.vault import tokens as T


def _header_doc(vault_dir):
    return json.loads((vault_dir / "header.json").read_text())


def _write_header(vault_dir, doc):
    (vault_dir / "header.json").write_text(json.dumps(doc))


def test_token_slot_holds_wrapped_keys_only(admin_session, open_as, vault_dir):
    bob = open_as("bob")
    made = T.create_token(bob, "bob", T.parse_duration("90d"))
    assert made["token"].startswith("ofk_") and len(made["token"]) == 4 + 16 + 1 + 43
    raw = (vault_dir / "header.json").read_text()
    secret = made["token"].split("_", 2)[2]
    assert secret not in raw and made["token"] not in raw
    slot = _header_doc(vault_dir)["tokens"][made["token_id"]]
    assert set(slot) == {"user", "created_at", "expires_at", "kdf", "sealed_keys", "x25519", "ed25519"}
    assert slot["kdf"]["alg"] == "hkdf-sha256"
    assert crypto.private_bytes(bob.keys.x25519).hex() not in raw
    s, tid = T.open_token_session(vault_dir, made["token"])
    try:
        assert s.user == "bob" and s.role == "member" and tid == made["token_id"]
    finally:
        s.close()
    entries = [
        json.loads(p)
        for (p,) in admin_session.db.execute("SELECT payload FROM audit_log WHERE action = 'token.create'")
    ]
    assert entries == [{"token_id": made["token_id"], "user": "bob", "expires_at": made["expires_at"]}]


def test_only_the_owner_creates_and_durations_are_checked(admin_session):
    with pytest.raises(UsageError, match="bob's own keys"):
        T.create_token(admin_session, "bob", T.parse_duration("1d"))
    for bad in ("0d", "90", "1y", "-3d", "400d", "9999999d"):
        with pytest.raises(UsageError):
            T.parse_duration(bad)


def test_wrong_and_malformed_tokens_fail_alike_and_are_audited(admin_session, open_as, vault_dir):
    made = T.create_token(open_as("bob"), "bob", T.parse_duration("1d"))
    tid = made["token_id"]
    wrong = "ofk_" + tid + "_" + "A" * 43
    for bad in (wrong, "ofk_" + "0" * 16 + "_" + "A" * 43, "Bearer x", "", made["token"] + "x"):
        with pytest.raises(AuthenticationFailed, match="^invalid API token$"):
            T.open_token_session(vault_dir, bad, via="127.0.0.1:5555")
    parked = (vault_dir / "unlock-failures.jsonl").read_text().splitlines()
    assert len(parked) == 5 and json.loads(parked[0])["via"] == "127.0.0.1:5555"
    s = open_as("carol")  # the next open moves them into the signed log
    got = [
        json.loads(p) for (p,) in s.db.execute("SELECT payload FROM audit_log WHERE action = 'unlock.failed'")
    ]
    assert [g["attempted_user"] for g in got[:2]] == [f"token:{tid}", "token:" + "0" * 16]


def test_revoke_deletes_the_slot_and_lists(admin_session, open_as, vault_dir):
    bob = open_as("bob")
    a = T.create_token(bob, "bob", T.parse_duration("1d"))
    b = T.create_token(bob, "bob", T.parse_duration("2h"))
    assert [r["status"] for r in T.list_tokens(bob)] == ["active", "active"]
    T.revoke_token(admin_session, a["token_id"])
    assert a["token_id"] not in _header_doc(vault_dir)["tokens"]
    assert {r["token_id"]: r["status"] for r in T.list_tokens(bob)} == {
        a["token_id"]: "revoked",
        b["token_id"]: "active",
    }
    with pytest.raises(AuthenticationFailed):
        T.open_token_session(vault_dir, a["token"])
    with pytest.raises(NotFound):
        T.revoke_token(open_as("carol"), b["token_id"])  # an auditor revokes nobody's token


def test_attack_member_cannot_extend_expiry(admin_session, open_as, vault_dir):
    """Bob holds his token and his own keys, and may write every file: still no longer life."""
    bob = open_as("bob")
    made = T.create_token(bob, "bob", T.parse_duration("1h"))
    tid, secret = T.parse_token(made["token"])
    far = (dt.datetime.now(dt.UTC) + dt.timedelta(days=3650)).replace(microsecond=0).isoformat()
    # 1. Edit the expiry in header.json: the AEAD's associated data no longer matches.
    doc = _header_doc(vault_dir)
    doc["tokens"][tid]["expires_at"] = far
    _write_header(vault_dir, doc)
    with pytest.raises(AuthenticationFailed, match="invalid API token"):
        T.open_token_session(vault_dir, made["token"])
    # 2. Re-seal the slot properly with the far expiry (he knows the token and his keys).
    h = hdr.load(vault_dir)
    slot = h.tokens[tid]
    kek = T._kek(secret, crypto.b64d(slot["kdf"]["salt"]), h.vault_id, tid)
    inner = {
        "x25519": crypto.private_bytes(bob.keys.x25519).hex(),
        "ed25519": crypto.private_bytes(bob.keys.ed25519).hex(),
        "root": bob.root,
    }
    slot["sealed_keys"] = crypto.b64e(
        crypto.seal(kek, json.dumps(inner).encode(), T._aad(h.vault_id, tid, "bob", far))
    )
    h.save(vault_dir)
    with pytest.raises(AuthenticationFailed, match="invalid API token"):
        T.open_token_session(vault_dir, made["token"])  # the signed entry says one hour
    # 3. Sign a second token.create for the same id with the far expiry: a forgery the chain refuses.
    from offline.audit import chain
    from offline.errors import AuditChainBroken

    with bob.db:
        chain.append(
            bob.db,
            "bob",
            bob.keys.ed25519,
            "token.create",
            {"token_id": tid, "user": "bob", "expires_at": far},
        )
    with pytest.raises(AuditChainBroken, match="created a second time"):
        T.open_token_session(vault_dir, made["token"])


def test_attack_member_cannot_reactivate_revoked_token(admin_session, open_as, vault_dir):
    bob = open_as("bob")
    made = T.create_token(bob, "bob", T.parse_duration("1d"))
    s, _ = T.open_token_session(vault_dir, made["token"])  # the server has seen the chain up to here
    s.close()
    saved = _header_doc(vault_dir)["tokens"][made["token_id"]]
    T.revoke_token(bob, made["token_id"])
    T.note_head(open_as("alice"))  # a request of anyone's after the revoke: the server saw that head
    # Put the deleted slot back: the signed revocation still stands.
    doc = _header_doc(vault_dir)
    doc.setdefault("tokens", {})[made["token_id"]] = saved
    _write_header(vault_dir, doc)
    with pytest.raises(AuthenticationFailed, match="revoked"):
        T.open_token_session(vault_dir, made["token"])
    # Also delete the revoke entry and everything after it (a truncated chain) and forge Bob's
    # state file in the vault folder: the server resumes from its own memory and sees the cut.
    from offline.errors import AuditChainBroken

    seq = bob.db.execute("SELECT seq FROM audit_log WHERE action = 'token.revoke'").fetchone()[0]
    bob.db.execute("DELETE FROM audit_log WHERE seq >= ?", (seq,))
    (vault_dir / "clients" / "bob.state").unlink()
    with pytest.raises(AuditChainBroken, match="missing; the audit log was truncated"):
        T.open_token_session(vault_dir, made["token"])


def test_expired_token_refused(admin_session, open_as, vault_dir, monkeypatch):
    made = T.create_token(open_as("bob"), "bob", T.parse_duration("1m"))
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2)
    monkeypatch.setattr(T, "_expired", lambda e, now=None: later >= dt.datetime.fromisoformat(e))
    with pytest.raises(AuthenticationFailed, match="expired"):
        T.open_token_session(vault_dir, made["token"])


def test_removed_users_token_opens_nothing_and_its_slot_goes(admin_session, open_as, vault_dir):
    from offline.vault import remove_user

    made = T.create_token(open_as("bob"), "bob", T.parse_duration("1d"))
    remove_user(admin_session, "bob")
    assert made["token_id"] not in _header_doc(vault_dir).get("tokens", {})
    with pytest.raises(AuthenticationFailed):
        T.open_token_session(vault_dir, made["token"])
    assert PASSPHRASES  # the passphrases of the others still open the vault


def test_park_file_records_are_signed_as_claims_only(admin_session, open_as, vault_dir):
    """A member writes the park file: what it says is signed as a capped, validated report."""
    from offline.vault.users import PARK_MAX_RECORDS

    planted = [
        {"ts": "2020-01-01T00:00:00+00:00", "user": "alice", "via": "10.9.9.9:4444"},
        {"ts": "x" * 5000, "user": "token:" + "f" * 16, "via": "V" * 200_000},
        {"user": "a b\x1b[31m"},
        "not an object",
    ]
    planted += [{"user": "bob"}] * (PARK_MAX_RECORDS + 5)
    (vault_dir / "unlock-failures.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in planted) + "{broken\n"
    )
    s = open_as("carol")
    got = [
        json.loads(p)
        for (p,) in s.db.execute(
            "SELECT payload FROM audit_log WHERE action IN ('unlock.failed', 'unlock.failed.unreadable') "
            "ORDER BY seq"
        )
    ]
    failed = [g for g in got if "attempted_user" in g]
    assert len(failed) == PARK_MAX_RECORDS and all(g["reported_by"] == "park-file" for g in got)
    assert failed[0] == {
        "attempted_user": "alice",
        "reported_by": "park-file",
        "claimed_at": "2020-01-01T00:00:00+00:00",
        "claimed_via": "10.9.9.9:4444",
    }
    assert failed[1] == {
        "attempted_user": "token:" + "f" * 16,
        "reported_by": "park-file",
    }  # oversized claims dropped
    assert not any("via" in g or "at" in g for g in got)
    assert got[-1]["records"] == 1 + 1 + 7 + 1  # bad user, not an object, 7 over the cap, unparsable
    assert not (vault_dir / "unlock-failures.jsonl").exists()


def test_server_reports_are_aggregated_and_bounded(admin_session, open_as):
    from offline.server.reports import Reports

    r = Reports(max_keys=3, per_flush=2)
    for _ in range(1000):
        r.add("failed", "token:" + "0" * 16, "127.0.0.1:1000", "models")  # one connection's flood: one report
    r.add("busy", "tid-of-bob", "127.0.0.1:1001", "search")
    r.add("failed", "token:none", "127.0.0.1:1002", "models")
    r.add("failed", "token:none", "127.0.0.1:1003", "models")  # over max_keys: only counted
    bob = open_as("bob")
    start = bob.verifier.seq
    r.flush(bob, "tid-of-bob")
    r.flush(bob, "tid-of-bob")
    got = [
        (e.action, e.payload)
        for e in __import__("offline.audit.chain", fromlist=["x"]).iter_entries(bob.db, "seq > ?", (start,))
    ]
    assert [a for a, _ in got] == [
        "server.request",
        "unlock.failed",
        "server.reports_dropped",
        "unlock.failed",
    ]
    assert got[0][1]["status"] == 429 and got[0][1]["token_id"] == "tid-of-bob"  # this token's own 429 first
    assert got[1][1]["count"] == 1000 and got[1][1]["reported_by"] == "server"
    assert got[2][1]["counts"] == {"failed": 1}
    assert not r.pending()


def test_server_witness_keeps_a_deleted_slot_dead_and_refuses_a_rolled_back_header(
    admin_session, open_as, vault_dir
):
    from offline.errors import VaultCorrupted
    from offline.vault import witness

    made = T.create_token(open_as("bob"), "bob", T.parse_duration("1d"))
    witness.observe_header(vault_dir)  # the server saw the slot
    doc = _header_doc(vault_dir)
    slot = doc["tokens"].pop(made["token_id"])
    _write_header(vault_dir, doc)
    witness.observe_header(vault_dir)  # ... and saw it go (no signed revocation at all here)
    doc["tokens"][made["token_id"]] = slot
    _write_header(vault_dir, doc)
    with pytest.raises(AuthenticationFailed, match="revoked"):
        T.open_token_session(vault_dir, made["token"], witness_header=True, report=lambda who: None)
    old = doc["db_file"]
    doc["db_file"] = "vault-00000000.db"
    _write_header(vault_dir, doc)
    witness.observe_header(vault_dir)  # a rotation, as the server saw it
    doc["db_file"] = old
    _write_header(vault_dir, doc)
    with pytest.raises(VaultCorrupted, match="rolled back"):
        witness.observe_header(vault_dir)
