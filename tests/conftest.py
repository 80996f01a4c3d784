"""Shared fixtures. Every test gets its own OFFLINE_HOME under tmp_path and runs offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
PASSPHRASES = {"alice": "alice-passphrase-1", "bob": "bob-passphrase-22", "carol": "carol-passphrase-3"}

# Before anything imports transformers or huggingface_hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The model store is shared by the whole session (module-scoped fixtures load models too).
os.environ.setdefault("OFFLINE_MODELS_DIR", str(REPO / "models"))


@pytest.fixture(autouse=True)
def offline_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the kit's home at tmp_path; keep the shared model store; use the floor KDF cost."""
    home = tmp_path / "home"
    monkeypatch.setenv("OFFLINE_HOME", str(home))
    monkeypatch.setenv("OFFLINE_MODELS_DIR", os.environ["OFFLINE_MODELS_DIR"])
    monkeypatch.setenv("OFFLINE_KDF_TARGET_S", "0")  # OWASP floor: tests stay fast, never below it
    for var in (
        "OFFLINE_VAULT",
        "OFFLINE_USER",
        "OFFLINE_PASSPHRASE",
        "OFFLINE_PASSPHRASE_FILE",
        "OFFLINE_NEW_PASSPHRASE",
        "OFFLINE_NEW_PASSPHRASE_FILE",
    ):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def vault_dir(tmp_path: Path) -> Path:
    return tmp_path / "vault"


@pytest.fixture
def admin_session(vault_dir: Path):
    """A fresh vault with admin alice, member bob, auditor carol; yields alice's session."""
    from offline.vault import add_user, create_vault

    s = create_vault(vault_dir, "alice", PASSPHRASES["alice"])
    add_user(s, "bob", "member", PASSPHRASES["bob"])
    add_user(s, "carol", "auditor", PASSPHRASES["carol"])
    yield s
    s.close()


@pytest.fixture
def open_as(vault_dir: Path):
    """open_as("bob") -> a session for that test user (closed at teardown)."""
    from offline.vault import open_session

    opened = []

    def _open(user: str):
        s = open_session(vault_dir, user, PASSPHRASES[user])
        opened.append(s)
        return s

    yield _open
    for s in opened:
        s.close()


@pytest.fixture
def cli(vault_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """run(args, user="alice") -> click Result, with the vault and passphrase set through env vars."""
    from click.testing import CliRunner

    from offline.cli import main

    runner = CliRunner()

    def run(args: list[str], user: str = "alice", input: str | None = None, env: dict | None = None):
        e = {
            "OFFLINE_VAULT": str(vault_dir),
            "OFFLINE_USER": user,
            "OFFLINE_PASSPHRASE": PASSPHRASES.get(user, "x"),
        }
        e.update(env or {})
        return runner.invoke(main, args, env=e, input=input, catch_exceptions=False)

    return run
