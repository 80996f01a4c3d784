"""Transparency-log style mutation tests of the audit chain.

One log of a few hundred entries (several users, varied payloads) is built once per module in a real
SQLCipher vault. Each mutation runs inside a transaction on that vault's connection and is rolled
back afterwards, so every case starts from the same pristine log. Every mutation must be detected and
the right entry named.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
from pathlib import Path

import pytest
from conftest import PASSPHRASES
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from offline.audit import chain
from offline.audit.checkpoint import create_checkpoint
from offline.audit.verify import verify_chain, verify_log
from offline.errors import AuditChainBroken, IntegrityError, UsageError

N_ENTRIES = 320
NASTY = [
    "pipe | and = equals",
    "back\\slash \\n not newline",
    "line1\nline2\r\nline3",
    'quote " and ] bracket',
    "unicode: café ☕ 日本語 🚀 \u2028 \u0085",
    "tab\tand\x00nul",
    "CEF:0|x|y|1|a|b|5|ext=1",
    "",
]


def _payload(i: int) -> dict:
    kinds = [
        lambda: {"n": i},
        lambda: {"q": NASTY[i % len(NASTY)], "k": i},
        lambda: {"chunks": [[i, 0.5 + i / 1000], [i + 1, 0.25]], "model": "sha256:" + "ab" * 32},
        lambda: {"nested": {"deep": {"list": [None, True, False, -1, 1.5e-7]}}, "i": i},
        lambda: {"big": 10**30 + i, "f": 1e20},
    ]
    return kinds[i % len(kinds)]()


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory):
    """(alice's session, {user: session}) over a vault whose log holds N_ENTRIES entries."""
    from offline.vault import add_user, create_vault, open_session

    root = tmp_path_factory.mktemp("auditlog")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OFFLINE_HOME", str(root / "home"))
        mp.setenv("OFFLINE_KDF_TARGET_S", "0")
        vault = root / "vault"
        alice = create_vault(vault, "alice", PASSPHRASES["alice"])
        add_user(alice, "bob", "member", PASSPHRASES["bob"])
        add_user(alice, "carol", "auditor", PASSPHRASES["carol"])
        sessions = {
            "alice": alice,
            "bob": open_session(vault, "bob", PASSPHRASES["bob"]),
            "carol": open_session(vault, "carol", PASSPHRASES["carol"]),
        }
        users = ["alice", "bob", "carol"]
        severities = list(chain.SEVERITIES)
        i = chain.head(alice.db)[0]
        while i < N_ENTRIES:
            s = sessions[users[i % 3]]
            s.audit(f"test.action{i % 7}", severity=severities[i % 4], **_payload(i))
            i += 1
        assert chain.head(alice.db)[0] == N_ENTRIES
        yield alice, sessions
        for s in sessions.values():
            s.close()


@contextlib.contextmanager
def mutated(conn):
    """Run the mutation in a transaction that is always rolled back."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    finally:
        conn.execute("ROLLBACK")


def expect_broken(conn, seq: int, fragment: str = "") -> AuditChainBroken:
    with pytest.raises(AuditChainBroken) as info:
        chain.verify(conn)
    exc = info.value
    assert exc.seq == seq, str(exc)
    assert str(exc).startswith(f"audit entry {seq}: "), str(exc)
    assert fragment in str(exc)
    return exc


def row(conn, seq: int) -> dict:
    cols = ("seq", "ts", "user", "action", "severity", "payload", "prev_hash", "hash", "sig")
    r = conn.execute(f"SELECT {', '.join(cols)} FROM audit_log WHERE seq = ?", (seq,)).fetchone()
    return dict(zip(cols, r))


def insert(conn, r: dict) -> None:
    conn.execute(
        "INSERT INTO audit_log(seq, ts, user, action, severity, payload, prev_hash, hash, sig)"
        " VALUES (:seq, :ts, :user, :action, :severity, :payload, :prev_hash, :hash, :sig)",
        r,
    )


def forge(
    conn, seq: int, user: str, action: str, payload: dict, key: Ed25519PrivateKey, prev: str | None = None
) -> dict:
    """A well-formed entry at ``seq`` that links to the entry before it, signed by ``key``."""
    prev = prev if prev is not None else (row(conn, seq - 1)["hash"] if seq > 1 else chain.GENESIS)
    e = chain.Entry(seq, chain._utc_now(), user, action, "info", payload, prev, "", "")
    e.hash = chain.entry_hash(prev, e.body())
    e.sig = chain.sign_hash(key, e.hash)
    return {**e.to_dict(), "payload": chain.canonical_json(payload).decode()}


def test_pristine_log_verifies(log):
    alice, _ = log
    report = verify_chain(alice)
    assert report.entries == N_ENTRIES
    assert set(report.users) == {"alice", "bob", "carol"}
    assert report.head_hash == chain.head(alice.db)[1]


# -- byte flips in stored cells ------------------------------------------------------------

FIELDS = ["ts", "user", "action", "severity", "payload", "prev_hash", "hash", "sig"]
SAMPLE = [1, 2, 3, 4, 7, 25, 58, 99, 150, 201, 257, 299, N_ENTRIES - 1, N_ENTRIES]


def _flip(value: str, pos_seed: int) -> str | bytes:
    raw = bytearray(value.encode())
    pos = random.Random(pos_seed).randrange(len(raw))
    raw[pos] ^= 0x01
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return bytes(raw)  # stored as a BLOB: verify must still name the entry


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("seq", SAMPLE)
def test_byte_flip_is_detected(log, seq: int, field: str):
    alice, _ = log
    conn = alice.db
    original = row(conn, seq)[field]
    if not original:
        pytest.skip("empty cell")
    for k in range(2):  # two different byte positions per cell
        with mutated(conn):
            conn.execute(
                f"UPDATE audit_log SET {field} = ? WHERE seq = ?", (_flip(original, seq * 97 + k), seq)
            )
            expect_broken(conn, seq)


@pytest.mark.parametrize("seq", [1, 2, 60, N_ENTRIES])
def test_changed_sequence_number_is_detected(log, seq: int):
    alice, _ = log
    with mutated(alice.db) as conn:
        conn.execute("UPDATE audit_log SET seq = ? WHERE seq = ?", (N_ENTRIES + 50, seq))
        expect_broken(conn, seq, "missing or out of order" if seq < N_ENTRIES else "")


def test_every_byte_of_one_entry_in_memory(log):
    """Exhaustive: flip every byte of every cell of one entry (through the same row decoder)."""
    alice, _ = log
    sql = chain._SELECT + " WHERE seq <= 12 ORDER BY seq"
    rows = [list(r) for r in alice.db.execute(sql)]
    target = 9  # an entry with a nasty payload (quotes, brackets)
    chain.verify_entries(chain.entry_from_row(tuple(r)) for r in rows)
    flips = 0
    for col in range(1, 9):
        cell = bytes(rows[target - 1][col])
        for pos in range(len(cell)):
            for bit in (0x01, 0x80):
                bad = bytearray(cell)
                bad[pos] ^= bit
                mutated_rows = [list(r) for r in rows]
                mutated_rows[target - 1][col] = bytes(bad)
                with pytest.raises(AuditChainBroken) as info:
                    chain.verify_entries(chain.entry_from_row(tuple(r)) for r in mutated_rows)
                assert info.value.seq == target, (col, pos, str(info.value))
                flips += 1
    assert flips > 500


def test_non_canonical_payload_with_same_value_is_detected(log):
    alice, _ = log
    conn = alice.db
    seq = next(
        r[0] for r in conn.execute("SELECT seq, payload FROM audit_log ORDER BY seq") if "1e+20" in r[1]
    )
    with mutated(conn):
        conn.execute(
            "UPDATE audit_log SET payload = replace(payload, '1e+20', '1E+20') WHERE seq = ?", (seq,)
        )
        expect_broken(conn, seq, "canonical")
    with mutated(conn):  # reordered keys parse to the same object
        data = json.loads(row(conn, seq)["payload"])
        reordered = "{" + ",".join(f'"{k}":{json.dumps(v)}' for k, v in reversed(list(data.items()))) + "}"
        conn.execute("UPDATE audit_log SET payload = ? WHERE seq = ?", (reordered, seq))
        expect_broken(conn, seq, "canonical")


def test_nan_payload_is_detected_not_a_crash(log):
    alice, _ = log
    with mutated(alice.db) as conn:
        conn.execute("UPDATE audit_log SET payload = '{\"n\":NaN}' WHERE seq = 40")
        expect_broken(conn, 40)


# -- structural changes ----------------------------------------------------------------------


@pytest.mark.parametrize("seq", [1, 2, 3, 100, N_ENTRIES - 1])
def test_deleted_entry_is_named(log, seq: int):
    alice, _ = log
    with mutated(alice.db) as conn:
        conn.execute("DELETE FROM audit_log WHERE seq = ?", (seq,))
        expect_broken(conn, seq, "missing or out of order")


@pytest.mark.parametrize("a,b", [(1, 2), (10, 11), (50, 200), (N_ENTRIES - 1, N_ENTRIES)])
def test_swapped_entries_are_detected(log, a: int, b: int):
    alice, _ = log
    conn = alice.db
    ra, rb = row(conn, a), row(conn, b)
    with mutated(conn):  # swap contents, keep positions
        conn.execute("DELETE FROM audit_log WHERE seq IN (?, ?)", (a, b))
        insert(conn, {**rb, "seq": a})
        insert(conn, {**ra, "seq": b})
        expect_broken(conn, a)
    with mutated(conn):  # swap positions (sequence numbers), keep contents
        conn.execute("UPDATE audit_log SET seq = -1 WHERE seq = ?", (a,))
        conn.execute("UPDATE audit_log SET seq = ? WHERE seq = ?", (a, b))
        conn.execute("UPDATE audit_log SET seq = ? WHERE seq = -1", (b,))
        expect_broken(conn, a)


def _shift_from(conn, seq: int) -> None:
    """Make room at ``seq`` by renumbering every later entry (as an inserter must)."""
    conn.execute("UPDATE audit_log SET seq = -seq - 1 WHERE seq >= ?", (seq,))
    conn.execute("UPDATE audit_log SET seq = -seq WHERE seq < 0")


@pytest.mark.parametrize("seq", [2, 77, N_ENTRIES])
def test_inserted_forgery_signed_by_unknown_key(log, seq: int):
    alice, _ = log
    with mutated(alice.db) as conn:
        forged = forge(conn, seq, "alice", "search", {"q": "nothing to see"}, Ed25519PrivateKey.generate())
        _shift_from(conn, seq)
        insert(conn, forged)
        expect_broken(conn, seq, "bad signature for 'alice'")


def test_appended_forgery_signed_by_unknown_key(log):
    alice, _ = log
    with mutated(alice.db) as conn:
        insert(conn, forge(conn, N_ENTRIES + 1, "alice", "x", {}, Ed25519PrivateKey.generate()))
        expect_broken(conn, N_ENTRIES + 1, "bad signature")


def test_member_forging_user_add_is_rejected(log):
    """bob (a member, holding the vault key) writes a user.add for his own sock puppet."""
    alice, sessions = log
    bob = sessions["bob"]
    puppet = Ed25519PrivateKey.generate()
    with mutated(alice.db) as conn:
        insert(
            conn,
            forge(
                conn,
                N_ENTRIES + 1,
                "bob",
                "user.add",
                {"name": "mallory", "role": "admin", "ed25519": puppet.public_key().public_bytes_raw().hex()},
                bob.keys.ed25519,
            ),
        )
        insert(conn, forge(conn, N_ENTRIES + 2, "mallory", "grant.add", {"user": "mallory"}, puppet))
        expect_broken(conn, N_ENTRIES + 1, "user.add signed by 'bob', who is not an admin")


def test_member_forging_user_remove_is_rejected(log):
    alice, sessions = log
    with mutated(alice.db) as conn:
        insert(
            conn,
            forge(conn, N_ENTRIES + 1, "bob", "user.remove", {"name": "carol"}, sessions["bob"].keys.ed25519),
        )
        expect_broken(conn, N_ENTRIES + 1, "not an admin")


def test_user_cannot_sign_as_another(log):
    alice, sessions = log
    with mutated(alice.db) as conn:
        insert(conn, forge(conn, N_ENTRIES + 1, "alice", "vault.rekey", {}, sessions["bob"].keys.ed25519))
        expect_broken(conn, N_ENTRIES + 1, "bad signature for 'alice'")


@pytest.mark.parametrize("seq", [1, 5, 150, N_ENTRIES])
def test_resigned_with_another_key(log, seq: int):
    alice, sessions = log
    conn = alice.db
    r = row(conn, seq)
    other = "carol" if r["user"] != "carol" else "bob"  # an enrolled user's key, not the signer's
    for key in (Ed25519PrivateKey.generate(), sessions[other].keys.ed25519):
        with mutated(conn):
            conn.execute("UPDATE audit_log SET sig = ? WHERE seq = ?", (chain.sign_hash(key, r["hash"]), seq))
            expect_broken(conn, seq, "bad signature")


def test_rewritten_entry_with_rehash_and_resign_by_attacker(log):
    """Content changed, hash recomputed, signed by a stranger: named at the entry itself."""
    alice, _ = log
    conn = alice.db
    r = row(conn, 120)
    with mutated(conn):
        forged = forge(
            conn,
            120,
            r["user"],
            r["action"],
            {"edited": True},
            Ed25519PrivateKey.generate(),
            prev=r["prev_hash"],
        )
        conn.execute("DELETE FROM audit_log WHERE seq = 120")
        insert(conn, forged)
        expect_broken(conn, 120, "bad signature")


def test_own_entry_rewritten_with_own_key_breaks_the_next_link(log):
    """bob can re-sign his own entry, but the next entry (someone else's) no longer links."""
    alice, sessions = log
    conn = alice.db
    seq = next(
        r[0] for r in conn.execute("SELECT seq FROM audit_log WHERE user = 'bob' AND seq > 100 ORDER BY seq")
    )
    r = row(conn, seq)
    with mutated(conn):
        forged = forge(
            conn,
            seq,
            "bob",
            r["action"],
            {"erased": "evidence"},
            sessions["bob"].keys.ed25519,
            prev=r["prev_hash"],
        )
        conn.execute("DELETE FROM audit_log WHERE seq = ?", (seq,))
        insert(conn, forged)
        expect_broken(conn, seq + 1, "does not link")


def test_second_vault_init_and_wrong_first_entry(log):
    alice, _ = log
    with mutated(alice.db) as conn:
        insert(
            conn,
            forge(conn, N_ENTRIES + 1, "alice", "vault.init", {"ed25519": "00" * 32}, alice.keys.ed25519),
        )
        expect_broken(conn, N_ENTRIES + 1, "second vault.init")
    with mutated(alice.db) as conn:
        conn.execute("DELETE FROM audit_log WHERE seq = 1")
        insert(conn, forge(conn, 1, "alice", "search", {}, alice.keys.ed25519))
        expect_broken(conn, 1, "does not start with vault.init")


def test_payload_that_is_not_an_object(log):
    alice, sessions = log
    with mutated(alice.db) as conn:
        e = forge(conn, N_ENTRIES + 1, "bob", "user.add", {}, sessions["bob"].keys.ed25519)
        body = {k: e[k] for k in ("seq", "ts", "user", "action", "severity")} | {"payload": [1, 2]}
        e["hash"] = chain.entry_hash(e["prev_hash"], body)
        e["sig"] = chain.sign_hash(sessions["bob"].keys.ed25519, e["hash"])
        e["payload"] = "[1,2]"
        insert(conn, e)
        expect_broken(conn, N_ENTRIES + 1, "not a JSON object")


# -- cross-checks against the vault (no checkpoint needed) -----------------------------------


def test_audit_key_setting_swapped(log):
    alice, _ = log
    with mutated(alice.db) as conn:
        conn.execute("UPDATE settings SET value = ? WHERE key = 'audit_public_key'", ("11" * 32,))
        with pytest.raises(AuditChainBroken) as info:
            verify_chain(alice)
        assert info.value.seq == 1


def test_whole_log_rebuilt_with_new_keys(log):
    """Someone with the vault key replaces the whole log with a self-consistent one of their own."""
    alice, _ = log
    fake = Ed25519PrivateKey.generate()
    with mutated(alice.db) as conn:
        real = json.loads(row(conn, 1)["payload"])
        conn.execute("DELETE FROM audit_log")
        insert(
            conn,
            forge(
                conn,
                1,
                "alice",
                "vault.init",
                {**real, "ed25519": fake.public_key().public_bytes_raw().hex()},
                fake,
                prev=chain.GENESIS,
            ),
        )
        chain.verify(conn)  # internally consistent...
        with pytest.raises(AuditChainBroken) as info:  # ...but not with alice's keyslot or users row
            verify_chain(alice)
        assert info.value.seq == 1 and "alice" in str(info.value)


def test_truncation_that_drops_an_enrolment_is_seen_without_checkpoint(log):
    alice, _ = log
    with mutated(alice.db) as conn:
        conn.execute("DELETE FROM audit_log WHERE seq >= 3")  # carol's user.add is entry 3
        with pytest.raises(AuditChainBroken) as info:
            verify_chain(alice)  # alice's client saw later entries: truncated
        assert info.value.seq == 3 and "truncated" in str(info.value)
        alice.verifier.seq, alice.verifier.prev = 0, chain.GENESIS  # a client that never saw the tail
        with pytest.raises(AuditChainBroken) as info:
            verify_chain(alice)
        assert info.value.seq == 3 and "carol" in str(info.value)


def test_removed_user_cannot_sign_afterwards(admin_session, open_as):
    from offline.vault import remove_user

    bob = open_as("bob")
    remove_user(admin_session, "bob")
    conn = admin_session.db
    n = chain.head(conn)[0]
    with mutated(conn):
        insert(conn, forge(conn, n + 1, "bob", "search", {}, bob.keys.ed25519))
        expect_broken(conn, n + 1, "never enrolled")


# -- checkpoints -----------------------------------------------------------------------------


@pytest.fixture
def checkpointed(admin_session, open_as, tmp_path: Path):
    bob = open_as("bob")
    for i in range(30):
        (admin_session if i % 2 else bob).audit("test.fill", i=i)
    cp = tmp_path / "cp.json"
    info = create_checkpoint(admin_session, cp)
    for i in range(5):
        bob.audit("test.after", i=i)
    return admin_session, bob, cp, info["entries"]


def test_checkpoint_extension_verifies(checkpointed):
    alice, _, cp, n = checkpointed
    result = verify_log(alice, cp)
    assert result["ok"] and result["checkpoint"]["entries"] == n
    assert chain.iter_entries(alice.db, "seq = ?", (n + 1,)).__next__().action == "audit.checkpoint"


@pytest.mark.parametrize("keep", [0, 5, -1, -3])
def test_truncation_after_checkpoint_is_named(checkpointed, keep: int):
    alice, _, cp, n = checkpointed
    last_kept = n + keep  # keep < 0 cuts into the checkpointed range
    conn = alice.db
    with mutated(conn):
        conn.execute("DELETE FROM audit_log WHERE seq > ?", (last_kept,))
        if keep >= 0:
            verify_chain(alice)  # a shorter chain is still a valid chain...
        from offline.audit.checkpoint import check_checkpoint, load_checkpoint

        if last_kept >= n:
            check_checkpoint(alice, chain.verify(conn), load_checkpoint(cp))  # still extends it
        else:
            with pytest.raises(AuditChainBroken) as info:  # ...the checkpoint sees what is missing
                check_checkpoint(alice, chain.verify(conn), load_checkpoint(cp))
            assert info.value.seq == last_kept + 1
            assert str(info.value).startswith(f"audit entry {last_kept + 1}: missing; the log was truncated")


def test_truncate_then_regrow_past_checkpoint(checkpointed):
    """Entries cut and replaced by new ones (signed by a real user): the checkpoint's entry differs."""
    alice, bob, cp, n = checkpointed
    conn = alice.db
    conn.execute("DELETE FROM audit_log WHERE seq > ?", (n - 4,))
    for i in range(10):  # raw appends by a real user (bob's own client would refuse: it saw more)
        chain.append(conn, "bob", bob.keys.ed25519, "test.regrow", {"i": i})
    alice.verifier.seq, alice.verifier.prev = 0, chain.GENESIS  # only the checkpoint remembers
    with pytest.raises(AuditChainBroken) as info:
        verify_log(alice, cp)
    assert info.value.seq == n
    assert (
        str(info.value)
        == f"audit entry {n}: does not match the checkpoint (the log was rewritten up to here)"
    )
    # the failed verification was itself recorded
    last = next(iter(chain.iter_entries(conn, descending=True, limit=1)))
    assert (
        last.action == "audit.verify" and last.payload["ok"] is False and last.payload["first_bad_seq"] == n
    )


def test_tampered_checkpoint_file_is_rejected(checkpointed, tmp_path: Path):
    alice, _, cp, n = checkpointed
    doc = json.loads(cp.read_text())
    doc["statement"]["entries"] = n - 10
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="signature does not verify"):
        verify_log(alice, bad)


def test_checkpoint_of_another_vault(checkpointed, tmp_path: Path):
    from offline.vault import create_vault

    _, _, cp, _ = checkpointed
    other = create_vault(tmp_path / "other", "zed", "zed-passphrase-1")
    try:
        with pytest.raises(UsageError, match="this checkpoint is for vault"):
            verify_log(other, cp)
    finally:
        other.close()


def test_checkpoint_needs_admin_or_auditor(checkpointed, open_as, tmp_path: Path):
    from offline.errors import AccessDenied

    _, bob, _, _ = checkpointed
    with pytest.raises(AccessDenied):
        create_checkpoint(bob, tmp_path / "b.json")
    assert not (tmp_path / "b.json").exists()
    carol = open_as("carol")
    assert create_checkpoint(carol, tmp_path / "c.json")["entries"] > 0


def test_copy_of_vault_detects_tamper(admin_session, tmp_path: Path):
    """Tampering a copy of the vault on disk (not just in a transaction) is caught on reopen."""
    from offline.vault import open_session

    admin_session.audit("test.one", x=1)
    admin_session.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    copy = tmp_path / "copy"
    shutil.copytree(admin_session.vault_dir, copy)
    with open_session(copy, "alice", PASSPHRASES["alice"]) as s:
        s.db.execute("UPDATE audit_log SET ts = '2000-01-01T00:00:00.000000+00:00' WHERE seq = 2")
    with (
        open_session(copy, "alice", PASSPHRASES["alice"]) as s,
        pytest.raises(AuditChainBroken, match="^audit entry 2: content does not match its hash$"),
    ):
        verify_log(s)
    verify_log(admin_session)  # the original is untouched
