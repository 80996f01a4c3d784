"""Everyday use (issue 18): flags where people type them, errors that say who, one rule for confirming."""

from __future__ import annotations

import json
from pathlib import Path


def test_json_after_the_command(cli, admin_session):
    before = cli(["--json", "users", "list"])
    after = cli(["users", "list", "--json"])
    assert after.exit_code == 0 and after.output == before.output
    assert json.loads(after.output)[0]["name"] == "alice"
    r = cli(["collections", "create", "kb"])
    assert r.exit_code == 0
    r = cli(["search", "-c", "kb", "--", "--json"])  # after `--` it is the query, not the flag
    assert r.exit_code == 0 and not r.output.lstrip().startswith("{")


def test_status_without_a_vault_says_so(cli, tmp_path: Path):
    r = cli(["--vault", str(tmp_path / "none"), "status"])
    assert (
        r.exit_code == 1
        and r.output == f"Error: no vault at {tmp_path / 'none'} (create one with `offline init`)\n"
    )


def test_grants_list_and_holders(cli, admin_session):
    assert cli(["collections", "create", "kb"]).exit_code == 0
    assert cli(["collections", "grant", "kb", "bob", "--read", "--label", "public"]).exit_code == 0
    r = cli(["--json", "grants", "list", "-c", "kb"])
    rows = json.loads(r.output)
    assert {(g["user"], g["perm"]) for g in rows} == {("alice", "write"), ("bob", "read")}
    assert [g["labels"] for g in rows if g["user"] == "bob"] == ["public"]
    mine = json.loads(cli(["--json", "grants", "list"], user="bob").output)
    assert [g["user"] for g in mine] == ["bob"]  # members see their own
    holders = json.loads(cli(["--json", "collections", "holders", "kb"]).output)
    assert {(h["user"], h["why"]) for h in holders} == {("alice", "grant"), ("bob", "grant")}


def test_destructive_commands_confirm(cli, admin_session):
    assert cli(["users", "remove", "carol"], input="n\n").exit_code == 1  # answered no: nothing removed
    assert "carol" in cli(["users", "list"]).output
    r = cli(["users", "remove", "carol"], input="y\n")
    assert r.exit_code == 0 and "rotated the vault key" in r.output


def test_config_file_finds_models_vault_and_user(offline_home: Path, monkeypatch, tmp_path: Path):
    from offline import config

    monkeypatch.delenv("OFFLINE_MODELS_DIR", raising=False)
    offline_home.mkdir(parents=True, exist_ok=True)
    (offline_home / "config.toml").write_text(
        f'models_dir = "{tmp_path / "m"}"\nvault = "{tmp_path / "v"}"\nuser = "nurse"\n'
    )
    assert config.models_dir() == tmp_path / "m"
    assert config.default_vault_path() == tmp_path / "v"
    assert config.default_user() == "nurse"
    monkeypatch.setenv("OFFLINE_USER", "alice")  # the environment still wins
    assert config.default_user() == "alice"
    (offline_home / "config.toml").write_text("models_dir = [broken")
    assert config.default_vault_path() == offline_home / "vault"  # ignored, not guessed at
    (offline_home / "config.toml").unlink()
    assert config.models_dir() == config.REPO_ROOT / "models"  # the install's own models


def test_weak_passphrases_are_refused_with_advice(cli, vault_dir: Path):
    for weak in ("password", "aaaaaaaaaa", "alice123"):
        r = cli(["init"], env={"OFFLINE_NEW_PASSPHRASE": weak})
        assert r.exit_code == 2 and r.output.startswith("Error: passphrase too easy to guess ("), r.output
        assert not vault_dir.exists()
    r = cli(["init", "--allow-weak"], env={"OFFLINE_NEW_PASSPHRASE": "aaaaaaaaaa"})
    assert r.exit_code == 0, r.output
    r = cli(
        ["users", "add", "dora"],
        user="alice",
        env={"OFFLINE_PASSPHRASE": "aaaaaaaaaa", "OFFLINE_NEW_PASSPHRASE": "dora2024"},
    )
    assert r.exit_code == 2 and "too easy to guess" in r.output
