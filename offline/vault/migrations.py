"""Named, recorded schema migrations, applied in one transaction when a database opens.

Each database kind has an ordered list of ``(name, sql)``. Applied names are recorded in
``schema_migrations``; a database that records a name this kit does not know was written by a newer
version and is refused rather than guessed at. Append new migrations; never edit an applied one.
"""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING

from ..errors import VaultCorrupted

if TYPE_CHECKING:  # what db.Connection names; db imports this module, never the reverse
    from sqlcipher3.dbapi2 import Connection

VAULT_MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_core",
        """
        CREATE TABLE settings(key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE users(
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL CHECK (role IN ('admin', 'member', 'auditor')),
            x25519_pub TEXT NOT NULL,
            ed25519_pub TEXT NOT NULL,
            created_at TEXT NOT NULL,
            created_by TEXT,
            removed_at TEXT
        );
        CREATE TABLE collections(
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            file TEXT NOT NULL,
            created_at TEXT NOT NULL,
            created_by TEXT NOT NULL,
            break_glass INTEGER NOT NULL DEFAULT 0,
            retention_days INTEGER
        );
        CREATE TABLE collection_keys(
            collection_id TEXT NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
            user TEXT NOT NULL REFERENCES users(name),
            wrapped TEXT NOT NULL,
            PRIMARY KEY (collection_id, user)
        );
        CREATE TABLE grants(
            collection_id TEXT NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
            user TEXT NOT NULL REFERENCES users(name),
            perm TEXT NOT NULL CHECK (perm IN ('read', 'write')),
            labels TEXT,
            granted_by TEXT NOT NULL,
            granted_at TEXT NOT NULL,
            PRIMARY KEY (collection_id, user)
        );
        CREATE TABLE vault_keys(
            purpose TEXT NOT NULL,
            user TEXT NOT NULL REFERENCES users(name),
            wrapped TEXT NOT NULL,
            PRIMARY KEY (purpose, user)
        );
        """,
    ),
    (
        "0002_audit_log",
        """
        CREATE TABLE audit_log(
            seq INTEGER PRIMARY KEY,
            ts TEXT NOT NULL,
            user TEXT NOT NULL,
            action TEXT NOT NULL,
            severity TEXT NOT NULL,
            payload TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL,
            sig TEXT NOT NULL
        );
        CREATE INDEX audit_log_user ON audit_log(user);
        CREATE INDEX audit_log_action ON audit_log(action);
        """,
    ),
    (
        "0003_adapters",
        """
        CREATE TABLE adapters(
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            file TEXT NOT NULL,
            base_model TEXT NOT NULL,
            base_sha256 TEXT NOT NULL,
            base_arch TEXT NOT NULL,
            dataset_sha256 TEXT NOT NULL,
            source_doc_ids TEXT,
            hyperparameters TEXT NOT NULL,
            loss_curve TEXT NOT NULL,
            eval_loss_before REAL,
            eval_loss_after REAL,
            created_by TEXT NOT NULL,
            created_at TEXT NOT NULL,
            adapter_sha256 TEXT NOT NULL,
            size INTEGER NOT NULL,
            key_wrap TEXT NOT NULL,
            meta TEXT NOT NULL DEFAULT '{}',
            tainted_at TEXT,
            taint_reason TEXT,
            override_reason TEXT
        );
        CREATE TABLE adapter_keyring(
            id INTEGER PRIMARY KEY CHECK (id = 1),
            root_key TEXT NOT NULL
        );
        """,
    ),
    (
        # A random value stored only inside the encrypted vault: `offline doctor` scans every vault
        # file for it in clear, which would reveal a plaintext copy (temp file, export, broken build).
        "0004_canary",
        """
        INSERT OR IGNORE INTO settings(key, value) VALUES ('canary', lower(hex(randomblob(16))));
        """,
    ),
    (
        # GDPR/HIPAA duties (offline.gdpr): processing purpose per collection (Art. 30), retention
        # per label, the kit's GDPR policy (backup retention) and the index of erasure receipts.
        "0005_gdpr",
        """
        ALTER TABLE collections ADD COLUMN purpose TEXT;
        ALTER TABLE collections ADD COLUMN legal_basis TEXT;
        CREATE TABLE retention_labels(
            label TEXT PRIMARY KEY,
            days INTEGER NOT NULL CHECK (days > 0),
            set_by TEXT NOT NULL,
            set_at TEXT NOT NULL
        );
        CREATE TABLE gdpr_settings(key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE erasure_receipts(
            id TEXT PRIMARY KEY,
            created_at TEXT NOT NULL,
            created_by TEXT NOT NULL,
            kind TEXT NOT NULL,
            audit_seq INTEGER NOT NULL,
            receipt TEXT NOT NULL
        );
        """,
    ),
    (
        # Signed authorization (offline.vault.authz): adapters get a key per adapter wrapped to each
        # reader (the shared root key in adapter_keyring let every member decrypt every adapter), and
        # a collection's break-glass blob, which also needs the emergency code an admin keeps.
        "0006_signed_authz",
        """
        CREATE TABLE adapter_keys(
            adapter_id TEXT NOT NULL REFERENCES adapters(id) ON DELETE CASCADE,
            user TEXT NOT NULL REFERENCES users(name),
            wrapped TEXT NOT NULL,
            PRIMARY KEY (adapter_id, user)
        );
        ALTER TABLE collections ADD COLUMN emergency TEXT;
        """,
    ),
    (
        # Keys of users enrolled before signed authorization are taken from a table anyone could
        # edit: until such a user proves them by opening the vault once, nothing is wrapped to them.
        "0007_keys_confirmed",
        """
        ALTER TABLE users ADD COLUMN keys_confirmed INTEGER NOT NULL DEFAULT 1;
        """,
    ),
    (
        # Subjects found by what the text says (offline.gdpr.registry, .journal). None of this is
        # authorization state. The registry rows are sealed under a key wrapped to admins
        # (vault_keys purpose "subject-registry"); the journal holds keyed hashes only, under a
        # random key that lives only inside this encrypted database (like the canary), so a backup
        # made after this migration shares it and the journal can be replayed into it.
        # (Numbered 0008: main's 0007_keys_confirmed comes first once the branches meet.)
        "0008_subjects",
        """
        CREATE TABLE subject_registry(
            ref TEXT PRIMARY KEY,
            sealed TEXT NOT NULL,
            created_at TEXT NOT NULL,
            created_by TEXT NOT NULL
        );
        CREATE TABLE identifier_key(id INTEGER PRIMARY KEY CHECK (id = 1), key TEXT NOT NULL);
        INSERT OR IGNORE INTO identifier_key(id, key) VALUES (1, lower(hex(randomblob(32))));
        CREATE TABLE erasure_journal(
            receipt_id TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('term', 'document', 'chunk')),
            hash TEXT NOT NULL,
            erased_at TEXT NOT NULL,
            PRIMARY KEY (hash, kind, receipt_id)
        );
        CREATE INDEX erasure_journal_receipt ON erasure_journal(receipt_id);
        """,
    ),
]

COLLECTION_MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_documents",
        """
        CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE documents(
            id INTEGER PRIMARY KEY,
            source TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            size INTEGER NOT NULL,
            mtime REAL,
            label TEXT NOT NULL DEFAULT '',
            mime TEXT,
            ingested_at TEXT NOT NULL,
            ingested_by TEXT NOT NULL,
            meta TEXT NOT NULL DEFAULT '{}'
        );
        CREATE TABLE doc_subjects(
            doc_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
            subject TEXT NOT NULL,
            PRIMARY KEY (subject, doc_id)
        );
        CREATE INDEX doc_subjects_doc ON doc_subjects(doc_id);
        CREATE TABLE chunks(
            id INTEGER PRIMARY KEY,
            doc_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
            ord INTEGER NOT NULL,
            text TEXT NOT NULL,
            page INTEGER,
            section TEXT,
            token_count INTEGER NOT NULL,
            flags TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX chunks_doc ON chunks(doc_id, ord);
        CREATE VIRTUAL TABLE chunks_fts USING fts5(
            text, content='chunks', content_rowid='id', tokenize='porter unicode61'
        );
        CREATE TRIGGER chunks_ai AFTER INSERT ON chunks BEGIN
            INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text);
        END;
        CREATE TRIGGER chunks_ad AFTER DELETE ON chunks BEGIN
            INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
        END;
        """,
    ),
    (
        # Identifiers detected at ingest (offline.ingest.detect): kind, keyed hash of the normalised
        # value and where it sits in the chunk (offsets, so the value itself is never copied).
        "0002_identifiers",
        """
        CREATE TABLE identifiers(
            chunk_id INTEGER NOT NULL,
            doc_id INTEGER NOT NULL,
            kind TEXT NOT NULL,
            hash TEXT NOT NULL,
            start INTEGER NOT NULL,
            end INTEGER NOT NULL,
            score REAL NOT NULL
        );
        CREATE INDEX identifiers_hash ON identifiers(hash);
        CREATE INDEX identifiers_doc ON identifiers(doc_id);
        CREATE TRIGGER chunks_ad_identifiers AFTER DELETE ON chunks BEGIN
            DELETE FROM identifiers WHERE chunk_id = old.id;
        END;
        """,
    ),
    (
        # Redacting collections (offline.gdpr.redact): each pseudonym with the value it stands for,
        # sealed to the audit seal key (admins and auditors), per document so an erasure removes it.
        "0003_pseudonyms",
        """
        CREATE TABLE pseudonyms(
            doc_id INTEGER NOT NULL,
            token TEXT NOT NULL,
            kind TEXT NOT NULL,
            hash TEXT NOT NULL,
            sealed TEXT NOT NULL,
            PRIMARY KEY (doc_id, token)
        );
        CREATE INDEX pseudonyms_token ON pseudonyms(token);
        CREATE TRIGGER documents_ad_pseudonyms AFTER DELETE ON documents BEGIN
            DELETE FROM pseudonyms WHERE doc_id = old.id;
        END;
        """,
    ),
]

_LISTS = {"vault": VAULT_MIGRATIONS, "collection": COLLECTION_MIGRATIONS}


def _statements(sql: str) -> list[str]:
    """Split a script into statements without executescript (which would COMMIT mid-migration)."""
    import sqlcipher3

    out, buf = [], ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlcipher3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out


def apply_migrations(conn: Connection, kind: str) -> list[str]:
    """Apply every pending migration of ``kind`` in one transaction; return the names applied."""
    migrations = _LISTS[kind]
    known = {name for name, _ in migrations}
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations(name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
    )
    applied = {r[0] for r in conn.execute("SELECT name FROM schema_migrations")}
    unknown = sorted(applied - known)
    if unknown:
        raise VaultCorrupted(
            f"this {kind} database was written by a newer version of offline (migration {unknown[0]}); "
            "upgrade the kit"
        )
    pending = [(n, s) for n, s in migrations if n not in applied]
    if not pending:
        return []
    now = _dt.datetime.now(_dt.UTC).isoformat()
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have migrated while we waited for the lock.
        applied = {r[0] for r in conn.execute("SELECT name FROM schema_migrations")}
        done = []
        for name, sql in pending:
            if name in applied:
                continue
            for stmt in _statements(sql):
                conn.execute(stmt)
            conn.execute("INSERT INTO schema_migrations(name, applied_at) VALUES (?, ?)", (name, now))
            done.append(name)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return done


# The collection's vector table, created on first ingest (vec0 needs the dimension): part of the
# schema like the migrations, so the schema check knows it (offline.retrieval.index creates it).
VEC_TABLE = "vec_chunks"
VEC_DDL = (
    "CREATE VIRTUAL TABLE " + VEC_TABLE + " USING vec0("
    "embedding float[{dim}] distance_metric=cosine, label text, doc_id integer)"
)
