"""The insider: an enrolled member with their own passphrase, stock ``sqlcipher3`` and the formats.

Every test here performs an attack from the review in issue 15 the way such a member would: they
unlock their own keyslot with the kit's documented format, open the vault database with raw
``sqlcipher3`` and their vault key, write whatever they like, edit files, or run a second process.
Then the kit (CLI or library, as another user would run it) must refuse or detect it, with exit 5
naming the table and row, and must never act on what the member planted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sqlcipher3
from conftest import PASSPHRASES
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from offline.audit import chain
from offline.errors import AccessDenied, AuthenticationFailed, DecryptionError, UsageError
from offline.vault import authz, crypto
from offline.vault import header as hdr
from offline.vault.core import open_slot, vault_key_context

PASSPHRASES = {**PASSPHRASES, "dave": "dave-passphrase-44", "erin": "erin-passphrase-55"}


class Raw:
    """A member's raw tools: their own keys from their keyslot, and a plain sqlcipher3 connection."""

    def __init__(self, vault: Path, user: str, passphrase: str | None = None):
        self.vault, self.user = vault, user
        h = hdr.load(vault)
        self.keys, _ = open_slot(h, user, passphrase or PASSPHRASES[user])
        self.vault_key = crypto.unwrap_with(
            self.keys.x25519, h.slots[user]["vault_key"], vault_key_context(h, user)
        )
        self.db_file = h.db_file
        self.conn = raw_connect(vault / h.db_file, self.vault_key)

    def sql(self, statement: str, params: tuple = ()) -> list[tuple]:
        return self.conn.execute(statement, params).fetchall()

    def unwrap_anything(self) -> list[bytes]:
        """Every wrapped key in every key table that this member's X25519 key opens, any context."""
        opened = []
        for table in ("collection_keys", "vault_keys", "adapter_keys"):
            for (blob,) in self.sql(f"SELECT wrapped FROM {table}"):
                for ctx in self._contexts():
                    try:
                        opened.append(crypto.unwrap_with(self.keys.x25519, blob, ctx))
                        break
                    except (DecryptionError, ValueError, KeyError):
                        continue
        return opened

    def _contexts(self) -> list[str]:
        # The member knows every context format (the source is public): try them all.
        vid = hdr.load(self.vault).vault_id
        out = [f"audit-key|{vid}|{self.user}", f"audit-seal-key|{vid}|{self.user}"]
        for cid, file in self.sql("SELECT id, file FROM collections"):
            out += [
                f"collection-key|{vid}|{cid}|{file}|{self.user}",
                f"break-glass-user|{vid}|{cid}|{self.user}",
                f"break-glass-code|{vid}|{cid}|{self.user}",
            ]
        for (aid,) in self.sql("SELECT id FROM adapters"):
            out.append(f"adapter-key|{vid}|{aid}|{self.user}")
        return out


def raw_connect(path: Path, key: bytes) -> sqlcipher3.Connection:
    conn = sqlcipher3.connect(str(path), isolation_level=None)
    conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    return conn


@pytest.fixture
def vault4(admin_session, cli):
    """alice admin, bob member, carol auditor, dave member; a collection 'secret' only alice may read."""
    from offline.vault import add_user
    from offline.vault.collections import create_collection

    add_user(admin_session, "dave", "member", PASSPHRASES["dave"])
    create_collection(admin_session, "secret")
    create_collection(admin_session, "shared")
    from offline.vault.collections import grant

    grant(admin_session, "shared", "bob", "read")
    return admin_session


def _fails_closed(result, *fragments: str) -> None:
    assert result.exit_code == 5, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    for f in fragments:
        assert f in result.output, result.output


# -- 1. the whole chain replaced ----------------------------------------------------------------


def _forge_chain(bob: Raw) -> None:
    """Rebuild the log from vault.init, signed by bob, introducing every real keyslot: consistent."""
    audit_key = Ed25519PrivateKey.generate()
    vid = hdr.load(bob.vault).vault_id
    bob.sql("DELETE FROM audit_log")
    image = authz.read_image(bob.conn)
    bob.conn.execute("BEGIN")
    chain.append_in_transaction(
        bob.conn,
        "bob",
        bob.keys.ed25519,
        "vault.init",
        {
            "vault_id": vid,
            "ed25519": bob.keys.ed25519_pub.hex(),
            "audit_public_key": audit_key.public_key().public_bytes_raw().hex(),
            "authz": authz.diff(authz.Policy().image, image),
        },
    )
    slots = hdr.load(bob.vault).slots
    for user in ("alice", "carol", "dave"):
        chain.append_in_transaction(
            bob.conn,
            "bob",
            bob.keys.ed25519,
            "user.add",
            {"name": user, "role": "admin", "ed25519": slots[user]["ed25519"]},
        )
    bob.conn.execute("COMMIT")
    chain.verify(bob.conn)  # internally consistent: the first build's checks all said OK here


def test_whole_chain_rewritten_from_init_is_caught(vault4, cli, vault_dir, offline_home):
    before = cli(["audit", "verify"])
    assert before.exit_code == 0 and "vault fingerprint" in before.output
    bob = Raw(vault_dir, "bob")
    _forge_chain(bob)
    # alice's client saw the real head: caught at once.
    _fails_closed(cli(["audit", "verify"]), "audit entry", "audit log")
    # Even a client that forgot everything it saw (state files deleted) has the root pinned in its keyslot.
    shutil.rmtree(vault_dir / "clients")
    shutil.rmtree(offline_home / "seen")  # and the copies outside the vault folder
    for user in ("alice", "carol", "dave"):
        _fails_closed(
            cli(["users", "list"], user=user, env={"OFFLINE_PASSPHRASE": PASSPHRASES[user]}),
            "pinned root",
            "replaced",
        )
    _fails_closed(cli(["audit", "verify"], user="carol"), "pinned root")


def test_fingerprint_is_the_same_everywhere(vault4, cli, vault_dir, tmp_path):
    fp = vault4.fingerprint
    assert len(fp.replace(" ", "")) == 32
    assert fp in cli(["audit", "verify"]).output
    r = cli(
        ["--json", "audit", "export", "--format", "jsonl", "--out", str(tmp_path / "a.jsonl")], user="carol"
    )
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "a.jsonl.manifest").read_text())
    import hashlib

    text = (
        f"offline-vault-fingerprint/v1|{manifest['vault_id']}|{manifest['founder_ed25519']}|"
        f"{manifest['audit_public_key']}"
    )
    assert manifest["vault_fingerprint"] == hashlib.sha256(text.encode()).hexdigest()
    assert manifest["vault_fingerprint"][:32] == fp.replace(" ", "")


# -- 2. planted key row, routine rotation -------------------------------------------------------


def test_planted_key_row_is_refused_and_never_wrapped(vault4, cli, vault_dir):
    from offline.vault.collections import _holder_pubs

    bob = Raw(vault_dir, "bob")
    cid = bob.sql("SELECT id FROM collections WHERE name = 'secret'")[0][0]
    bob.sql(
        "INSERT INTO collection_keys(collection_id, user, wrapped) VALUES (?, 'bob', ?)",
        (cid, crypto.wrap_to(bob.keys.x25519_pub, crypto.random_key(), "x")),
    )
    # The admin's routine rotation is refused before it wraps anything, naming what was planted.
    _fails_closed(
        cli(["collections", "revoke", "shared", "bob"]),
        "collection_keys",
        f'["{cid}","bob"]',
        "added outside the signed audit log",
    )
    _fails_closed(cli(["vault", "rekey"]), "collection_keys")
    # Even code that ignored the check asks the signed policy who holds keys: bob is not among them.
    vault4.sync()
    assert "bob" not in _holder_pubs(vault4, cid)
    bob.sql("DELETE FROM collection_keys WHERE collection_id = ? AND user = 'bob'", (cid,))
    assert cli(["vault", "rekey"]).exit_code == 0
    bob = Raw(vault_dir, "bob")
    assert bob.sql("SELECT user FROM collection_keys WHERE collection_id = ? AND user = 'bob'", (cid,)) == []
    r = cli(["--json", "collections", "holders", "secret"])
    assert r.exit_code == 0 and {h["user"] for h in json.loads(r.output)} == {"alice"}


def test_swapped_wrap_is_refused(vault4, cli, vault_dir):
    """A member replaces an honest user's wrap with a key of their own: detected, never unwrapped."""
    bob = Raw(vault_dir, "bob")
    cid, file = bob.sql("SELECT id, file FROM collections WHERE name = 'shared'")[0]
    alice_pub = bytes.fromhex(bob.sql("SELECT x25519_pub FROM users WHERE name = 'alice'")[0][0])
    bob.sql(
        "UPDATE collection_keys SET wrapped = ? WHERE collection_id = ? AND user = 'alice'",
        (crypto.wrap_to(alice_pub, crypto.random_key(), f"collection-key|x|{cid}|{file}|alice"), cid),
    )
    _fails_closed(cli(["search", "anything", "-c", "shared"]), "collection_keys", "changed outside")


# -- 3. UPDATE users SET role = 'admin' ---------------------------------------------------------


def test_self_promotion_is_detected_and_never_honoured(vault4, cli, vault_dir):
    from offline.vault.collections import grant, revoke

    bob = Raw(vault_dir, "bob")
    bob.sql("UPDATE users SET role = 'admin' WHERE name = 'bob'")
    for user in ("alice", "bob", "carol"):
        _fails_closed(cli(["users", "list"], user=user), 'table users, row ["bob"]: role changed')
    bob.sql("UPDATE users SET role = 'member' WHERE name = 'bob'")
    assert cli(["collections", "create", "later"]).exit_code == 0  # a collection made after the flip
    bob = Raw(vault_dir, "bob")
    assert (
        bob.sql(
            "SELECT 1 FROM collection_keys k JOIN collections c ON c.id = k.collection_id"
            " WHERE c.name = 'later' AND k.user = 'bob'"
        )
        == []
    )
    # Revoke decides custodianship from the signed policy, whatever bob's row says while it runs.
    vault4.sync()
    grant(vault4, "later", "bob", "read")
    bob.sql("UPDATE users SET role = 'admin' WHERE name = 'bob'")
    vault4.sync()
    with pytest.raises(Exception, match="users"):
        revoke(vault4, "later", "bob")  # refused on the tampered row, nothing changed
    bob.sql("UPDATE users SET role = 'member' WHERE name = 'bob'")
    revoke(vault4, "later", "bob")
    assert (
        Raw(vault_dir, "bob").sql(
            "SELECT 1 FROM collection_keys k JOIN collections c ON c.id = k.collection_id"
            " WHERE c.name = 'later' AND k.user = 'bob'"
        )
        == []
    )


# -- 4. removal is final ---------------------------------------------------------------------------


def test_removed_user_cannot_come_back(vault4, cli, vault_dir):
    old_header = (vault_dir / "header.json").read_text()
    bob = Raw(vault_dir, "bob")
    old_key = bob.vault_key
    r = cli(["users", "remove", "bob", "--yes"])
    assert r.exit_code == 0 and "rotated the vault key" in r.output, r.output
    current = hdr.load(vault_dir).db_file
    assert current != bob.db_file and not (vault_dir / bob.db_file).exists()
    with pytest.raises(sqlcipher3.DatabaseError):
        raw_connect(vault_dir / current, old_key)  # the copied key opens nothing written after
    # bob puts his old keyslot back: it unwraps the old vault key, which opens nothing now.
    doc = json.loads((vault_dir / "header.json").read_text())
    doc["slots"]["bob"] = json.loads(old_header)["slots"]["bob"]
    (vault_dir / "header.json").write_text(json.dumps(doc))
    r = cli(["users", "list"], user="bob")
    assert r.exit_code in (3, 5) and r.output.startswith("Error: ")
    assert cli(["collections", "create", "after"]).exit_code == 0


# -- 5. adapters ------------------------------------------------------------------------------------


def test_adapters_are_keyed_to_their_sources(vault4, cli, vault_dir):
    from offline.finetune import store
    from offline.vault import open_session
    from offline.vault.collections import grant

    cid = vault4.policy.collection("secret")[0]
    grant(vault4, "secret", "bob", "read", labels=["public"])  # bob may not read the phi documents
    info = store.save_adapter(
        vault4,
        "phi-adapter",
        b"GGUF" + b"memorised PHI " * 64,
        base_model="m",
        base_sha256="0" * 64,
        base_arch="llama",
        dataset_sha256="1" * 64,
        hyperparameters={},
        loss_curve=[],
        eval_loss_before=None,
        eval_loss_after=None,
        source_doc_ids=[{"collection": "secret", "collection_id": cid, "doc_ids": [1], "labels": ["phi"]}],
    )
    blob = (vault_dir / "adapters" / info["file"]).read_bytes()
    assert (
        Raw(vault_dir, "alice").sql("SELECT count(*) FROM adapter_keyring")[0][0] == 0
    )  # no shared root key
    for user in ("bob", "carol", "dave"):
        raw = Raw(vault_dir, user)
        for key in raw.unwrap_anything():  # every key this user can unwrap, raw
            with pytest.raises(DecryptionError):
                crypto.unseal(
                    key, blob, f"offline/v1/adapter|{vault4.vault_id}|{info['id']}|{info['file']}".encode()
                )
        s = open_session(vault_dir, user, PASSPHRASES[user])
        with pytest.raises(AccessDenied):
            store.read_adapter_bytes(s, "phi-adapter")  # label-limited bob included
        s.close()
    assert store.read_adapter_bytes(vault4, "phi-adapter")[0].startswith(b"GGUF")


# -- 6. break-glass ----------------------------------------------------------------------------------


def test_emergency_wrap_alone_opens_nothing(vault4, cli, vault_dir):
    from offline.gdpr.breakglass import set_break_glass

    code = set_break_glass(vault4, "secret", True)["emergency_code"]
    assert len(code) == 24
    bob = Raw(vault_dir, "bob")
    cid, file = bob.sql("SELECT id, file FROM collections WHERE name = 'secret'")[0]
    opened = bob.unwrap_anything()  # bob's break-glass wrap (K_bg) among them
    coll = vault_dir / "collections" / file
    for key in opened:
        with pytest.raises(sqlcipher3.DatabaseError):
            raw_connect(coll, key)
    # ...nor does any combination of what he can unwrap open the sealed collection key.
    blob = json.loads(bob.sql("SELECT emergency FROM collections WHERE id = ?", (cid,))[0][0])
    from offline.vault import emergency

    for k_bg in opened:
        for k_e in opened:
            kek = emergency._hkdf(
                k_bg + k_e,
                __import__("base64").b64decode(blob["salt"]),
                f"break-glass-key|{vault4.vault_id}|{cid}",
            )
            with pytest.raises(DecryptionError):
                crypto.unseal(
                    kek,
                    crypto.b64d(blob["key_box"]),
                    f"offline/v1/break-glass-key|{vault4.vault_id}|{cid}|{file}".encode(),
                )
    # With the envelope's code the kit reads, after committing the high-severity entry.
    env = {"OFFLINE_BREAK_GLASS_CODE": code}
    r = cli(["search", "x", "-c", "secret", "--break-glass", "--reason", "ER"], user="bob", env=env)
    assert r.exit_code == 0, r.output
    # A user enrolled while it is on gets a wrap, and says so.
    r = cli(["--json", "users", "add", "erin"], env={"OFFLINE_NEW_PASSPHRASE": PASSPHRASES["erin"]})
    assert json.loads(r.output)["break_glass_provisioned"] == ["secret"]
    # Vault-wide off removes every emergency wrap and rotates the key.
    r = cli(["vault", "set", "break_glass", "off"])
    assert r.exit_code == 0, r.output
    alice = Raw(vault_dir, "alice")
    assert alice.sql("SELECT count(*) FROM vault_keys WHERE purpose LIKE 'break-glass%'")[0][0] == 0
    assert alice.sql("SELECT emergency, break_glass, file FROM collections WHERE id = ?", (cid,))[0][:2] == (
        None,
        0,
    )
    assert alice.sql("SELECT file FROM collections WHERE id = ?", (cid,))[0][0] != file


# -- 7. grants and settings edited ----------------------------------------------------------------


def test_read_grant_turned_into_write_is_refused(vault4, cli, vault_dir, tmp_path):
    bob = Raw(vault_dir, "bob")
    bob.sql("UPDATE grants SET perm = 'write' WHERE user = 'bob'")
    (tmp_path / "n.txt").write_text("planted note")
    _fails_closed(
        cli(["ingest", str(tmp_path / "n.txt"), "-c", "shared"], user="bob"), "table grants", "perm changed"
    )
    _fails_closed(cli(["users", "list"]), "table grants")


def test_settings_change_only_through_signed_entries(vault4, cli, vault_dir):
    bob = Raw(vault_dir, "bob")
    bob.sql("UPDATE settings SET value = '315360000' WHERE key = 'idle_timeout_s'")
    _fails_closed(cli(["users", "list"]), "table settings", "idle_timeout_s")
    bob.sql("UPDATE settings SET value = '900' WHERE key = 'idle_timeout_s'")
    bob.sql("DELETE FROM settings WHERE key = 'audit_questions'")  # fall back to a default? no: deleted
    _fails_closed(cli(["users", "list"]), "table settings", "audit_questions", "deleted")
    bob.sql("INSERT INTO settings(key, value) VALUES ('audit_questions', 'sealed')")
    r = cli(["vault", "set", "idle_timeout_s", "10m"])
    assert r.exit_code == 0 and r.output == "idle_timeout_s = 600\n"
    for bad in ("banana", "0", "20d"):
        r = cli(["vault", "set", "idle_timeout_s", bad])
        assert r.exit_code == 2 and r.output.startswith("Error: ") and r.output.count("\n") == 1, r.output
    r = cli(["vault", "set", "audit_questions", "hash"])
    assert r.exit_code == 0 and r.output == "audit_questions = sealed\n"


# -- 8. audited data that a member could recover -----------------------------------------------


def test_questions_and_subject_ids_are_sealed(vault4, cli, vault_dir, tmp_path):
    from offline.vault.core import unseal_for_auditors

    q = "does John Doe have HIV"
    (tmp_path / "letter.txt").write_text("Referral letter for a patient.")
    assert (
        cli(["ingest", str(tmp_path / "letter.txt"), "-c", "secret", "--subject", "PT-12345"]).exit_code == 0
    )
    assert cli(["search", q, "-c", "shared"], user="bob").exit_code == 0
    bob = Raw(vault_dir, "bob")
    import hashlib

    rows = " ".join(p for (p,) in bob.sql("SELECT payload FROM audit_log"))
    for secret in (
        q,
        hashlib.sha256(q.encode()).hexdigest(),
        "PT-12345",
        hashlib.sha256(b"PT-12345").hexdigest(),
    ):
        assert secret not in rows
    sealed = [
        json.loads(p)["query_sealed"]
        for (p,) in bob.sql("SELECT payload FROM audit_log WHERE action = 'search'")
    ]
    from offline.vault import open_session

    s = open_session(vault_dir, "bob", PASSPHRASES["bob"])
    with pytest.raises(AccessDenied):
        unseal_for_auditors(s, sealed[-1])
    s.close()
    carol = open_session(vault_dir, "carol", PASSPHRASES["carol"])
    assert unseal_for_auditors(carol, sealed[-1]) == q
    carol.close()


# -- the chain itself: forged entries, truncation, client state ---------------------------------


def test_member_signed_authorization_entry_is_a_forgery(vault4, cli, vault_dir):
    bob = Raw(vault_dir, "bob")
    cid = bob.sql("SELECT id FROM collections WHERE name = 'secret'")[0][0]
    row = {"perm": "write", "labels": None, "granted_by": "alice", "granted_at": "2026-01-01T00:00:00+00:00"}
    bob.conn.execute("BEGIN")
    bob.sql(
        "INSERT INTO grants(collection_id, user, perm, labels, granted_by, granted_at)"
        " VALUES (?, 'bob', ?, ?, ?, ?)",
        (cid, row["perm"], None, row["granted_by"], row["granted_at"]),
    )
    chain.append_in_transaction(
        bob.conn,
        "bob",
        bob.keys.ed25519,
        "grant.add",
        {"authz": [{"t": "grants", "k": [cid, "bob"], "v": row}]},
    )
    bob.conn.execute("COMMIT")
    _fails_closed(cli(["users", "list"]), "is not an admin")
    _fails_closed(cli(["audit", "verify"], user="carol"), "is not an admin")


def test_truncation_is_caught_by_whoever_saw_the_tail(vault4, cli, vault_dir):
    assert cli(["users", "list"], user="carol").exit_code == 0  # carol's client sees the head
    bob = Raw(vault_dir, "bob")
    n = bob.sql("SELECT max(seq) FROM audit_log")[0][0]
    bob.sql("DELETE FROM audit_log WHERE seq > ?", (n - 3,))
    _fails_closed(cli(["users", "list"], user="carol"), f"audit entry {n - 2}: missing", "truncated")
    _fails_closed(cli(["users", "list"]), "truncated")


def test_another_users_client_state_cannot_be_forged(vault4, cli, vault_dir):
    state = vault_dir / "clients" / "alice.state"
    bob_state = vault_dir / "clients" / "bob.state"
    assert cli(["users", "list"], user="bob").exit_code == 0
    shutil.copy(bob_state, state)  # bob's own (valid for bob) state, under alice's name
    _fails_closed(cli(["users", "list"]), "alice's client state was altered")


def test_attack_from_a_second_process(vault4, cli, vault_dir):
    """The same raw edit from a separate Python process, as a member would run it."""
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from test_insider import Raw
from pathlib import Path
Raw(Path({str(vault_dir)!r}), "dave").sql("UPDATE users SET role = 'admin' WHERE name = 'dave'")
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    _fails_closed(cli(["users", "list"]), 'table users, row ["dave"]')


# -- 9. no answer without a committed entry --------------------------------------------------------


def test_bad_break_glass_code_is_a_usage_error(vault4, cli):
    from offline.gdpr.breakglass import set_break_glass

    set_break_glass(vault4, "secret", True)
    r = cli(
        ["search", "x", "-c", "secret", "--break-glass", "--reason", "ER"],
        user="bob",
        env={"OFFLINE_BREAK_GLASS_CODE": "nope"},
    )
    assert r.exit_code == 2 and r.output.startswith("Error: that is not a break-glass code")
    with pytest.raises(UsageError):
        from offline.vault.emergency import normalise_code

        normalise_code("1111-1111-1111-1111-1111")  # digits 0, 1, 8, 9 are not in the alphabet


def test_ask_commits_what_it_retrieved_before_the_first_token(vault4, tmp_path):
    from offline.audit.chain import iter_entries
    from offline.ingest import ingest_paths
    from offline.rag import answer

    (tmp_path / "policy.txt").write_text("Vaccine fridges must be kept between +2 °C and +8 °C at all times.")
    ingest_paths(vault4, [tmp_path / "policy.txt"], "shared")
    seen: list[bool] = []

    def on_token(_piece: str) -> None:
        if not seen:  # at the first token, in another connection's view: is the entry there?
            raw = Raw(vault4.vault_dir, "alice")
            seen.append(bool(raw.sql("SELECT 1 FROM audit_log WHERE action = 'ask.retrieve'")))

    ans = answer(
        vault4,
        "What temperature must vaccine fridges be kept at?",
        collections=["shared"],
        k=1,
        max_tokens=8,
        on_token=on_token,
    )
    assert ans.refusal_reason != "low_relevance" and seen == [True]
    retrieve = [e.payload for e in iter_entries(vault4.db, "action = 'ask.retrieve'")][-1]
    assert retrieve["used"] == [s["chunk_id"] for s in ans.sources]


def test_removal_interrupted_before_the_key_rotation_is_finished(vault4, vault_dir, monkeypatch):
    from offline.vault import maintenance, open_session, remove_user

    old_file = hdr.load(vault_dir).db_file

    def killed(*_a, **_k):
        raise KeyboardInterrupt  # the process dies after the removal entry, before the key rotation

    monkeypatch.setattr(maintenance, "rotate_vault_db_key", killed)
    with pytest.raises(KeyboardInterrupt):
        remove_user(vault4, "bob")
    monkeypatch.undo()
    assert "bob" in hdr.load(vault_dir).slots  # the slot is still there, the key not yet rotated
    with pytest.raises(AuthenticationFailed):
        open_session(vault_dir, "bob", PASSPHRASES["bob"]).close()  # already refused by the signed state
    open_session(vault_dir, "alice", PASSPHRASES["alice"]).close()  # the next admin open finishes it
    h = hdr.load(vault_dir)
    assert "bob" not in h.slots and h.db_file != old_file and not (vault_dir / old_file).exists()


# -- found by attacking the first version of this design --------------------------------------


def test_planted_trigger_never_fires_inside_an_admins_change(vault4, cli, vault_dir):
    bob = Raw(vault_dir, "bob")
    bob.sql(
        "CREATE TRIGGER zz AFTER INSERT ON grants BEGIN UPDATE users SET role = 'admin' WHERE name = 'bob';"
        " END"
    )
    _fails_closed(
        cli(["collections", "grant", "shared", "dave"]), "trigger 'zz' is not part of this kit's schema"
    )
    assert Raw(vault_dir, "alice").sql("SELECT role FROM users WHERE name = 'bob'") == [("member",)]
    bob.sql("DROP TRIGGER zz")
    bob.sql("CREATE VIEW v AS SELECT * FROM users")
    _fails_closed(cli(["users", "list"], user="carol"), "view 'v'")


def test_header_slot_pointing_at_another_key_is_refused(vault4, cli, vault_dir):
    doc = json.loads((vault_dir / "header.json").read_text())
    doc["slots"]["carol"]["x25519"] = doc["slots"]["bob"]["x25519"]  # next rotation would wrap to bob
    (vault_dir / "header.json").write_text(json.dumps(doc))
    _fails_closed(
        cli(["users", "remove", "dave", "--yes"]), "keyslot of 'carol' does not match the signed users table"
    )


def test_old_state_files_put_back_with_a_truncated_log(vault4, cli, vault_dir, offline_home):
    saved = {p.name: p.read_bytes() for p in (vault_dir / "clients").glob("*.state")}
    n = Raw(vault_dir, "bob").sql("SELECT max(seq) FROM audit_log")[0][0]
    for _ in range(3):
        assert cli(["search", "x", "-c", "shared"], user="bob").exit_code == 0
    assert cli(["users", "list"]).exit_code == 0  # alice sees the new head
    bob = Raw(vault_dir, "bob")
    bob.sql("DELETE FROM audit_log WHERE seq > ?", (n,))
    for name, blob in saved.items():  # every state file in the vault folder rolled back too
        (vault_dir / "clients" / name).write_bytes(blob)
    # alice's copy outside the vault folder still knows the newer head.
    _fails_closed(cli(["users", "list"]), "truncated", "accept-restore")
    r = cli(["vault", "accept-restore"])
    assert r.exit_code == 0 and "Accepted the restored vault" in r.output
    assert cli(["users", "list"]).exit_code == 0
    acts = [a for (a,) in Raw(vault_dir, "alice").sql("SELECT action FROM audit_log WHERE severity = 'high'")]
    assert "vault.restore_accepted" in acts


def test_member_adapter_row_cannot_name_another_path(vault4, vault_dir, tmp_path):
    from offline.finetune import store
    from offline.vault import open_session

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    bob = open_session(vault_dir, "bob", PASSPHRASES["bob"])
    with pytest.raises(AccessDenied, match="not an admin"):
        with bob.change("adapter.save", adapter="evil"):
            bob.db.execute(
                "INSERT INTO adapters(id, name, file, base_model, base_sha256, base_arch, dataset_sha256,"
                " hyperparameters, loss_curve, created_by, created_at, adapter_sha256, size, key_wrap)"
                " VALUES ('0123456789abcdef', 'evil', ?, 'm', 's', 'a', 'd', '{}', '[]', 'bob', 't', 'x',"
                " 1, '')",
                (str(victim),),
            )
    bob.close()
    with pytest.raises(Exception, match="not the kit's"):
        store.adapter_path(vault4, {"id": "0123456789abcdef", "file": "../../victim.txt", "name": "evil"})
    assert victim.read_text() == "keep me"


def test_narrowed_grant_loses_the_adapter_key_and_only_writers_taint(vault4, vault_dir):
    from offline.finetune import store
    from offline.vault import open_session
    from offline.vault.collections import grant

    cid = vault4.policy.collection("secret")[0]
    grant(vault4, "secret", "dave", "read")
    store.save_adapter(
        vault4,
        "conf",
        b"GGUF-conf",
        base_model="m",
        base_sha256="0" * 64,
        base_arch="llama",
        dataset_sha256="1" * 64,
        hyperparameters={},
        loss_curve=[],
        eval_loss_before=None,
        eval_loss_after=None,
        source_doc_ids=[
            {"collection": "secret", "collection_id": cid, "doc_ids": [1], "labels": ["confidential"]}
        ],
    )
    assert Raw(vault_dir, "dave").sql("SELECT count(*) FROM adapter_keys WHERE user = 'dave'")[0][0] == 1
    grant(vault4, "secret", "dave", "read", labels=["public"])  # narrowed: the wrap must go
    assert Raw(vault_dir, "dave").sql("SELECT count(*) FROM adapter_keys WHERE user = 'dave'")[0][0] == 0
    dave = open_session(vault_dir, "dave", PASSPHRASES["dave"])
    with pytest.raises(AccessDenied):
        store.mark_tainted(dave, "conf", "block every adapter")  # no write grant on its source
    dave.close()


def test_a_blob_key_is_named_not_a_crash(vault4, cli, vault_dir):
    Raw(vault_dir, "bob").sql(
        "INSERT INTO vault_keys(purpose, user, wrapped) VALUES (x'6175646974', 'bob', 'x')"
    )
    _fails_closed(cli(["users", "list"]), "table vault_keys", "added outside")


def test_tampered_legacy_vault_is_not_adopted(tmp_path, cli, vault_dir):
    """A vault made by the version before signed authorization, edited by a member before the upgrade."""
    repo = Path(__file__).resolve().parent.parent
    old = tmp_path / "old"
    made = subprocess.run(
        ["git", "-C", str(repo), "worktree", "add", "--detach", str(old), "d77a659"], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip("the pre-upgrade revision is not in this clone's history")
    try:
        script = (
            f"from pathlib import Path\nfrom offline.vault import create_vault, add_user\n"
            f"from offline.vault.collections import create_collection, grant\n"
            f"s = create_vault(Path({str(vault_dir)!r}), 'alice', {PASSPHRASES['alice']!r})\n"
            f"add_user(s, 'bob', 'member', {PASSPHRASES['bob']!r})\n"
            f"create_collection(s, 'shared'); grant(s, 'shared', 'bob', 'read'); s.close()\n"
        )
        import os

        subprocess.run(
            [sys.executable, "-c", script],
            check=True,
            cwd=tmp_path,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(old)},
        )
    finally:
        subprocess.run(
            ["git", "-C", str(repo), "worktree", "remove", "--force", str(old)], capture_output=True
        )
    Raw(vault_dir, "bob").sql("UPDATE users SET role = 'admin' WHERE name = 'bob'")
    _fails_closed(cli(["users", "list"]), "cannot adopt this older vault", 'table users, row ["bob"]')
    Raw(vault_dir, "bob").sql("UPDATE users SET role = 'member' WHERE name = 'bob'")
    bob = Raw(vault_dir, "bob")  # a seal key of bob's own, so that questions would be sealed to him
    bob.sql(
        "INSERT INTO settings(key, value) VALUES ('audit_seal_public_key', ?)", (bob.keys.x25519_pub.hex(),)
    )
    _fails_closed(cli(["users", "list"]), "table settings", "an audit seal key in a vault made before")
    bob.sql("DELETE FROM settings WHERE key = 'audit_seal_public_key'")
    r = cli(["users", "list"])  # the untouched tables are adopted and signed by alice
    assert r.exit_code == 0 and "bob" in r.output

    def confirmed():
        return Raw(vault_dir, "alice").sql("SELECT keys_confirmed FROM users WHERE name = 'bob'")[0][0]

    assert confirmed() == 0  # bob's X25519 key came from an editable table: unproven, nothing wrapped to it
    assert cli(["search", "x", "-c", "shared"], user="bob").exit_code == 0
    assert confirmed() == 1  # his own open proved it
    assert cli(["audit", "verify"]).exit_code == 0


# -- found by the second round of attacks ------------------------------------------------------


def test_blob_twin_of_a_grant_is_refused(vault4, cli, vault_dir):
    bob = Raw(vault_dir, "bob")
    cid = bob.sql("SELECT id FROM collections WHERE name = 'shared'")[0][0]
    # A write grant keyed by the BLOB spelling of the same id, first in table order.
    bob.sql(
        "INSERT INTO grants(rowid, collection_id, user, perm, labels, granted_by, granted_at)"
        " VALUES (-1, ?, 'bob', 'write', NULL, 'alice', 't')",
        (cid.encode(),),
    )
    _fails_closed(cli(["collections", "revoke", "shared", "bob"]), "table grants", "not text")


def test_trigger_in_a_collection_file_is_refused(vault4, cli, vault_dir, tmp_path):
    (tmp_path / "a.txt").write_text("Ward 7 visiting hours are 2 pm to 8 pm.")
    assert cli(["ingest", str(tmp_path / "a.txt"), "-c", "shared"]).exit_code == 0
    bob = Raw(vault_dir, "bob")
    cid, file = bob.sql("SELECT id, file FROM collections WHERE name = 'shared'")[0]
    from offline.vault import open_session
    from offline.vault.collections import unwrap_collection_key

    s = open_session(vault_dir, "bob", PASSPHRASES["bob"])
    key = unwrap_collection_key(s, cid, file)
    s.close()
    coll = raw_connect(vault_dir / "collections" / file, key)  # bob's read grant is the key itself
    coll.execute("CREATE TABLE stash(t TEXT)")
    coll.execute("CREATE TRIGGER keep BEFORE DELETE ON chunks BEGIN INSERT INTO stash VALUES (old.text); END")
    coll.close()
    _fails_closed(cli(["search", "visiting", "-c", "shared"]), file, "is not part of this kit's schema")
    _fails_closed(cli(["gdpr", "erase", "--subject", "x", "--yes"]), "is not part of this kit's schema")


def test_owner_cannot_lift_a_taint(vault4, vault_dir):
    from offline.finetune import store
    from offline.vault import open_session

    bob = open_session(vault_dir, "bob", PASSPHRASES["bob"])
    store.save_adapter(
        bob,
        "mine",
        b"GGUF-mine",
        base_model="m",
        base_sha256="0" * 64,
        base_arch="llama",
        dataset_sha256="1" * 64,
        hyperparameters={},
        loss_curve=[],
        eval_loss_before=None,
        eval_loss_after=None,
    )
    bob.close()
    store.mark_tainted(vault4, "mine", "document 4 erased")
    bob = open_session(vault_dir, "bob", PASSPHRASES["bob"])
    with pytest.raises(AccessDenied, match="not an admin"):
        with bob.change("adapter.untaint"):
            bob.db.execute("UPDATE adapters SET tainted_at = NULL, taint_reason = NULL WHERE name = 'mine'")
    with pytest.raises(store.AdapterTainted):
        store.read_adapter_bytes(bob, "mine")
    bob.close()


def test_write_on_a_file_retired_by_a_rotation_fails_loudly(vault4, vault_dir, tmp_path):
    from offline.vault import db, open_session
    from offline.vault.collections import open_collection, revoke

    alice2 = open_session(vault_dir, "alice", PASSPHRASES["alice"])
    handle = open_collection(alice2, "shared", "write")  # opened before the rotation
    revoke(vault4, "shared", "bob")  # copies, switches, retires the old file
    with pytest.raises(Exception, match="re-keyed while this command ran"):
        with db.transaction(handle.conn):
            handle.conn.execute("INSERT INTO meta(key, value) VALUES ('x', 'lost?')")
    alice2.close()


def test_symlinked_rollback_still_meets_the_clients_memory(vault4, cli, vault_dir, tmp_path):
    old = tmp_path / "older-copy"
    shutil.copytree(vault_dir, old)
    for _ in range(2):
        assert cli(["audit", "verify"]).exit_code == 0  # the log grows past the copy
    shutil.rmtree(vault_dir)
    vault_dir.symlink_to(old)  # the path alice opens now leads to the older copy
    _fails_closed(cli(["users", "list"]), "truncated")


def test_break_glass_to_named_users_only_and_reissue_rotates(vault4, cli, vault_dir):
    from offline.gdpr.breakglass import set_break_glass

    first = set_break_glass(vault4, "secret", True, ["dave"])
    assert first["provisioned"] == ["alice", "dave"] and first["key_rotated"] is False
    r = cli(["--json", "users", "add", "erin"], env={"OFFLINE_NEW_PASSPHRASE": PASSPHRASES["erin"]})
    assert json.loads(r.output)["break_glass_provisioned"] == []  # not one of the named users
    file_before = vault4.policy.collection("secret")[1]["file"]
    again = set_break_glass(vault4, "secret", True, ["dave"])
    assert again["key_rotated"] is True and again["emergency_code"] != first["emergency_code"]
    assert vault4.policy.collection("secret")[1]["file"] != file_before


def test_audit_tail_checks_the_entries_it_shows(vault4, cli, vault_dir):
    bob = Raw(vault_dir, "bob")
    seq, payload = bob.sql("SELECT seq, payload FROM audit_log WHERE action = 'grant.add'")[0]
    bob.sql("UPDATE audit_log SET payload = ? WHERE seq = ?", (payload.replace('"read"', '"write"'), seq))
    _fails_closed(cli(["audit", "tail", "-n", "100"], user="carol"), f"audit entry {seq}")


def test_a_column_added_by_a_later_migration_is_not_tampering():
    """Rows the chain signed before a column existed hold its migration default, and only that."""
    from offline.vault.authz import TABLES, first_difference

    old = {t: {} for t in TABLES}
    old["users"]['["bob"]'] = {
        "role": "member",
        "x25519_pub": "aa",
        "ed25519_pub": "bb",
        "created_at": "t",
        "created_by": "alice",
        "removed_at": None,
    }  # signed before keys_confirmed
    now = {t: {k: dict(v) for k, v in rows.items()} for t, rows in old.items()}
    now["users"]['["bob"]']["keys_confirmed"] = 1
    assert first_difference(old, now) is None
    now["users"]['["bob"]']["keys_confirmed"] = 0
    assert "keys_confirmed changed" in first_difference(old, now)


def test_swapped_audit_seal_key_is_refused(vault4, cli, vault_dir):
    """A member puts their own key in as the audit seal key, so every question would be sealed to them."""
    bob = Raw(vault_dir, "bob")
    bob.sql("UPDATE settings SET value = ? WHERE key = 'audit_seal_public_key'", (bob.keys.x25519_pub.hex(),))
    _fails_closed(
        cli(["search", "does John Doe have HIV", "-c", "shared"], user="bob"),
        'table settings, row ["audit_seal_public_key"]',
    )
