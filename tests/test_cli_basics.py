"""The command line's surface: help texts, and the exact error lines and exit codes the README promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from offline.cli import main

REPO = Path(__file__).resolve().parent.parent


def _all_command_paths() -> list[list[str]]:
    paths: list[list[str]] = [[]]

    def walk(cmd: click.Command, prefix: list[str]) -> None:
        if isinstance(cmd, click.Group):
            for name, sub in sorted(cmd.commands.items()):
                paths.append([*prefix, name])
                walk(sub, [*prefix, name])

    walk(main, [])
    return paths


def test_every_command_and_group_has_help():
    runner = CliRunner()
    paths = _all_command_paths()
    assert ["models", "verify"] in paths and ["init"] in paths
    for path in paths:
        r = runner.invoke(main, [*path, "--help"], catch_exceptions=False)
        assert r.exit_code == 0, (path, r.output)
        assert "Usage: " in r.stdout
        if path:
            cmd = main
            for name in path:
                cmd = cmd.commands[name]  # type: ignore[attr-defined]
            assert (cmd.help or "").strip(), f"`offline {' '.join(path)}` has no help text"


def test_help_lists_groups_and_version():
    runner = CliRunner()
    r = runner.invoke(main, ["--help"])
    assert r.exit_code == 0
    for name in ("init", "users", "collections", "models"):
        assert name in r.stdout
    r = runner.invoke(main, ["--version"])
    assert r.exit_code == 0 and r.stdout.startswith("offline, version ")


def test_help_starts_fast_without_heavy_imports():
    """`offline --help` must not import torch, transformers, llama_cpp, sentence_transformers or gguf."""
    code = (
        "import sys; from offline.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers', 'llama_cpp', 'gguf', 'peft')"
        " if m in sys.modules]\nprint('HEAVY=' + ','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "HEAVY="


def test_missing_vault(cli, vault_dir: Path):
    r = cli(["users", "list"])
    assert r.exit_code == 1
    assert r.stderr.strip() == f"Error: no vault at {vault_dir} (create one with `offline init`)"


def test_wrong_passphrase_and_unknown_user_read_the_same(cli, admin_session):
    r = cli(["users", "list"], env={"OFFLINE_PASSPHRASE": "not-the-passphrase"})
    assert r.exit_code == 3
    assert (
        r.stderr.strip() == "Error: authentication failed for user 'alice': unknown user or wrong passphrase"
    )
    r2 = cli(["users", "list"], user="mallory")  # an unknown user reads the same, but for the name tried
    assert (r2.exit_code, r2.stderr.replace("mallory", "alice")) == (r.exit_code, r.stderr)


def test_vault_path_that_is_a_file(cli, tmp_path: Path):
    f = tmp_path / "notavault"
    f.write_text("x")
    r = cli(["users", "list"], env={"OFFLINE_VAULT": str(f)})
    assert r.exit_code == 2
    assert r.stderr.strip() == f"Error: {f} is a file, not a vault folder"


def test_usage_errors_exit_2(cli, admin_session):
    r = cli(["models", "import"])
    assert r.exit_code == 2
    r = cli(["no-such-command"])
    assert r.exit_code == 2
    assert "No such command" in r.stderr


def test_no_passphrase_without_a_terminal(cli, admin_session):
    r = cli(["users", "list"], env={"OFFLINE_PASSPHRASE": ""})
    assert r.exit_code == 2
    assert r.stderr.strip() == (
        "Error: no passphrase: use --passphrase-file, OFFLINE_PASSPHRASE_FILE or OFFLINE_PASSPHRASE"
    )


def test_passphrase_file_option(cli, admin_session, tmp_path: Path):
    pf = tmp_path / "pass"
    pf.write_text("alice-passphrase-1\n")
    r = cli(["--passphrase-file", str(pf), "users", "list"], env={"OFFLINE_PASSPHRASE": ""})
    assert r.exit_code == 0, r.output
    assert "alice" in r.stdout


@pytest.mark.parametrize("args", [["models", "list"], ["models", "verify"]])
def test_models_commands_need_no_vault(cli, args):
    r = cli(args)
    assert r.exit_code == 0, r.output
