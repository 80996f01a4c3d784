"""`offline doctor`: PASS on a healthy vault, FAIL (exit 5) for each kind of damage it looks for."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from conftest import PASSPHRASES

from offline import netguard
from offline.doctor import DoctorFailed, run_doctor, run_doctor_with
from offline.doctor.vault_checks import SQLITE_HEADER, read_canary
from offline.models.hashing import model_hash

VAULT_LINES = ["vault encryption", "plaintext canary", "file permissions", "KDF parameters", "audit chain"]
ENV_LINES = [
    "network guard",
    "hugging face offline",
    "telemetry off",
    "sqlcipher version",
    "sqlite-vec version",
    "llama.cpp version",
    "python packages",
]


@pytest.fixture(autouse=True)
def guard_on():
    """Doctor runs in the CLI process, where the guard is always installed."""
    netguard.install()
    yield
    netguard.install()


@pytest.fixture
def tiny_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private models folder + manifest with two tiny models, so nothing shared is touched."""
    d = tmp_path / "models"
    d.mkdir()
    (d / "tiny.gguf").write_bytes(b"GGUF" + os.urandom(4096))
    (d / "tiny-embed").mkdir()
    (d / "tiny-embed" / "weights.bin").write_bytes(os.urandom(2048))
    (d / "tiny-embed" / "config.json").write_text("{}")
    entries = []
    for name, role, kind, local in [
        ("tiny-gen", "generate", "gguf", "tiny.gguf"),
        ("tiny-embed", "embed", "st-folder", "tiny-embed"),
    ]:
        p = d / local
        size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
        entries.append(f'''[[model]]
name = "{name}"
role = "{role}"
default = true
kind = "{kind}"
local = "{local}"
sha256 = "{model_hash(p, fresh=True)}"
size = {size}
licence = "test"
source = {{ package = "none", version = "0", file = "{local}", method = "wheel-file" }}
''')
    manifest = tmp_path / "manifest.toml"
    manifest.write_text("schema = 1\n\n" + "\n".join(entries))
    monkeypatch.setenv("OFFLINE_MODELS_DIR", str(d))
    monkeypatch.setenv("OFFLINE_MODELS_MANIFEST", str(manifest))
    return d


def statuses(report) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


def test_healthy_vault_passes_every_line(admin_session, vault_dir, tiny_models):
    report = run_doctor(vault_dir, admin_session)
    st = statuses(report)
    assert report.ok, report.text()
    # OCR is a SKIP on machines without the Debian tesseract packages (scans are then refused);
    # "team server" is a SKIP when no `offline serve` runs as this user.
    assert st["team server"] == "SKIP"
    assert {v for k, v in st.items() if not k.startswith("ocr ") and k != "team server"} == {"PASS"}
    for name in VAULT_LINES + ENV_LINES + ["model tiny-gen", "model tiny-embed"]:
        assert st[name] == "PASS"
    assert "SQLCipher 4." in report.get("sqlcipher version").reason
    assert report.get("llama.cpp version").detail["version"]
    report.raise_for_failures()  # nothing to raise


def test_canary_migration_stores_random_secret(admin_session, open_as):
    canary = read_canary(admin_session)
    assert canary and len(canary) == 32 and int(canary, 16) >= 0
    assert read_canary(open_as("bob")) == canary  # one per vault, stable across sessions


def test_no_vault_skips_vault_lines(tmp_path, tiny_models):
    report = run_doctor_with(tmp_path / "nowhere", opener=None)
    for name in VAULT_LINES:
        assert report.get(name).status == "SKIP"
        assert "no vault at" in report.get(name).reason
    assert report.ok


def test_world_readable_vault_file_fails(admin_session, vault_dir, tiny_models):
    os.chmod(vault_dir / "header.json", 0o644)
    report = run_doctor(vault_dir, admin_session)
    check = report.get("file permissions")
    assert check.status == "FAIL" and "header.json (0644, want 0600)" in check.reason
    assert [c.name for c in report.failures] == ["file permissions"]
    with pytest.raises(DoctorFailed) as err:
        report.raise_for_failures()
    assert err.value.exit_code == 5


def test_group_accessible_vault_folder_fails(admin_session, vault_dir, tiny_models):
    os.chmod(vault_dir / "collections", 0o750)
    check = run_doctor(vault_dir, admin_session).get("file permissions")
    assert check.status == "FAIL" and "collections (0750, want 0700)" in check.reason


def test_flipped_model_hash_fails(tiny_models, tmp_path):
    f = tiny_models / "tiny.gguf"
    data = bytearray(f.read_bytes())
    data[100] ^= 0x01
    f.write_bytes(bytes(data))
    report = run_doctor(tmp_path / "no-vault")
    assert report.get("model tiny-gen").status == "FAIL"
    assert "does not match" in report.get("model tiny-gen").reason
    assert report.get("model tiny-embed").status == "PASS"
    assert not report.ok


def test_missing_default_model_fails(tiny_models, tmp_path):
    (tiny_models / "tiny.gguf").unlink()
    assert run_doctor(tmp_path / "no-vault").get("model tiny-gen").status == "FAIL"


def test_plain_sqlite_file_in_vault_fails(admin_session, vault_dir, tiny_models):
    plain = vault_dir / "collections" / "leak.db"
    con = sqlite3.connect(plain)
    con.execute("CREATE TABLE t(x)")
    con.commit()
    con.close()
    os.chmod(plain, 0o600)
    assert plain.read_bytes()[:16] == SQLITE_HEADER
    report = run_doctor(vault_dir, admin_session)
    check = report.get("vault encryption")
    assert check.status == "FAIL" and "collections/leak.db" in check.reason
    assert report.get("file permissions").status == "PASS"  # only the one cause


def test_plaintext_canary_in_vault_fails(admin_session, vault_dir, tiny_models):
    canary = read_canary(admin_session)
    stray = vault_dir / "adapters" / "tmp-export.txt"
    stray.write_bytes(os.urandom(2_000_000) + f"settings: canary={canary}\n".encode())  # past the first block
    os.chmod(stray, 0o600)
    check = run_doctor(vault_dir, admin_session).get("plaintext canary")
    assert check.status == "FAIL" and "adapters/tmp-export.txt" in check.reason


def test_weak_kdf_slot_fails(admin_session, vault_dir, tiny_models):
    path = vault_dir / "header.json"
    doc = json.loads(path.read_text())
    doc["slots"]["bob"]["kdf"]["memory_kib"] = 4096
    path.write_text(json.dumps(doc))
    check = run_doctor(vault_dir, admin_session).get("KDF parameters")
    assert check.status == "FAIL" and "bob (argon2id, 4096 KiB, 2 it)" in check.reason


def test_tampered_audit_entry_fails(admin_session, vault_dir, tiny_models):
    with admin_session.db:
        admin_session.db.execute("UPDATE audit_log SET user = 'mallory' WHERE seq = 2")
    check = run_doctor(vault_dir, admin_session).get("audit chain")
    assert check.status == "FAIL" and "audit entry 2" in check.reason


def test_guard_off_fails(tmp_path, tiny_models):
    netguard.uninstall()
    try:
        report = run_doctor(tmp_path / "no-vault")
    finally:
        netguard.install()
    check = report.get("network guard")
    assert check.status == "FAIL" and "not installed" in check.reason
    with pytest.raises(DoctorFailed):
        report.raise_for_failures()
    assert run_doctor(tmp_path / "no-vault").get("network guard").status == "PASS"


def test_env_variables(tmp_path, tiny_models, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("WANDB_MODE", "online")
    report = run_doctor(tmp_path / "no-vault")
    assert report.get("hugging face offline").status == "FAIL"
    assert "HF_HUB_OFFLINE='0'" in report.get("hugging face offline").reason
    assert report.get("telemetry off").status == "FAIL"
    assert "WANDB_MODE='online'" in report.get("telemetry off").reason


# -- CLI ------------------------------------------------------------------------------------------


def test_cli_healthy_real_models(cli, admin_session):
    result = cli(["--json", "doctor"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["ok"] is True and data["counts"]["FAIL"] == 0
    names = {c["name"]: c["status"] for c in data["checks"]}
    assert names["model smollm2-135m-instruct"] == "PASS" and names["model all-minilm-l6-v2"] == "PASS"
    assert names["audit chain"] == "PASS"


def test_cli_world_readable_exit_5(cli, admin_session, vault_dir, tiny_models):
    os.chmod(vault_dir / "header.json", 0o604)
    result = cli(["doctor"])
    assert result.exit_code == 5
    lines = result.output.splitlines()
    assert any(line.startswith("FAIL") and "file permissions" in line for line in lines)
    assert lines[-1] == "Error: doctor found 1 failed check(s): file permissions"


def test_cli_flipped_model_exit_5(cli, tiny_models):
    f = tiny_models / "tiny-embed" / "weights.bin"
    data = bytearray(f.read_bytes())
    data[0] ^= 0xFF
    f.write_bytes(bytes(data))
    result = cli(["doctor"])  # no vault yet: vault lines SKIP, the model line FAILs
    assert result.exit_code == 5
    assert result.output.splitlines()[-1] == "Error: doctor found 1 failed check(s): model tiny-embed"


def test_cli_locked_vault_skips_key_checks(cli, admin_session, tiny_models):
    result = cli(["doctor"], env={"OFFLINE_PASSPHRASE": None})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "SKIP  plaintext canary" in out and "SKIP  audit chain" in out
    assert "PASS  file permissions" in out and "PASS  vault encryption" in out


def test_cli_wrong_passphrase_exit_3(cli, admin_session, tiny_models):
    result = cli(["doctor"], env={"OFFLINE_PASSPHRASE": "not-" + PASSPHRASES["alice"]})
    assert result.exit_code == 3
