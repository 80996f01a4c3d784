"""Issue 19: API tokens are keyslots; expiry and revocation hold against a member with raw file access."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from offline.errors import AuthenticationFailed, NotFound, UsageError
from offline.vault import crypto, header as hdr
from offline.vault import tokens as T

from conftest import PASSPHRASES


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
    entries = [json.loads(p) for (p,) in admin_session.db.execute(
        "SELECT payload FROM audit_log WHERE action = 'token.create'")]
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
    got = [json.loads(p) for (p,) in s.db.execute("SELECT payload FROM audit_log WHERE action = 'unlock.failed'")]
    assert [g["attempted_user"] for g in got[:2]] == [f"token:{tid}", "token:" + "0" * 16]


def test_revoke_deletes_the_slot_and_lists(admin_session, open_as, vault_dir):
    bob = open_as("bob")
    a = T.create_token(bob, "bob", T.parse_duration("1d"))
    b = T.create_token(bob, "bob", T.parse_duration("2h"))
    assert [r["status"] for r in T.list_tokens(bob)] == ["active", "active"]
    T.revoke_token(admin_session, a["token_id"])
    assert a["token_id"] not in _header_doc(vault_dir)["tokens"]
    assert {r["token_id"]: r["status"] for r in T.list_tokens(bob)} == {a["token_id"]: "revoked",
                                                                         b["token_id"]: "active"}
    with pytest.raises(AuthenticationFailed):
        T.open_token_session(vault_dir, a["token"])
    with pytest.raises(NotFound):
        T.revoke_token(open_as("carol"), b["token_id"])  # an auditor revokes nobody's token


def test_attack_member_cannot_extend_expiry(admin_session, open_as, vault_dir):
    """Bob holds his token and his own keys, and may write every file: still no longer life."""
    bob = open_as("bob")
    made = T.create_token(bob, "bob", T.parse_duration("1h"))
    tid, secret = T.parse_token(made["token"])
    far = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=3650)).replace(microsecond=0).isoformat()
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
    inner = {"x25519": crypto.private_bytes(bob.keys.x25519).hex(),
             "ed25519": crypto.private_bytes(bob.keys.ed25519).hex(), "root": bob.root}
    slot["sealed_keys"] = crypto.b64e(crypto.seal(kek, json.dumps(inner).encode(), T._aad(h.vault_id, tid, "bob", far)))
    h.save(vault_dir)
    with pytest.raises(AuthenticationFailed, match="invalid API token"):
        T.open_token_session(vault_dir, made["token"])  # the signed entry says one hour
    # 3. Sign a second token.create for the same id with the far expiry: a forgery the chain refuses.
    from offline.audit import chain
    from offline.errors import AuditChainBroken

    with bob.db:
        chain.append(bob.db, "bob", bob.keys.ed25519, "token.create",
                     {"token_id": tid, "user": "bob", "expires_at": far})
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
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=2)
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
