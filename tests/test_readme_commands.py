"""Every command and option in the README's command reference exists (docs tested against the CLI)."""

from __future__ import annotations

import re
from pathlib import Path

import click

README = Path(__file__).resolve().parent.parent / "README.md"


def _reference_snippets() -> list[str]:
    text = README.read_text(encoding="utf-8")
    table = text.split("| command | what it does |", 1)[1].split("\n\n", 1)[0]
    out = []
    for line in table.splitlines()[2:]:
        first_cell = line.split(" | ")[0]
        out += re.findall(r"`([^`]+)`", first_cell)
    return out


def _options(cmd: click.Command) -> set[str]:
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}


def _check(cmd: click.Command, tokens: list[str], where: str) -> None:
    for tok in tokens:
        for part in tok.strip("[]").split("\\|"):
            part = part.strip("[]")
            if part.startswith("-"):
                assert part in _options(cmd), f"{where}: no option {part} on `{cmd.name}`"


def test_every_command_and_option_in_the_readme_exists():
    from offline.cli import main

    snippets = _reference_snippets()
    assert len(snippets) >= 20
    for snippet in snippets:
        head, *rest = snippet.split()
        cmd = main.commands.get(head)
        assert cmd is not None, f"README names `{head}`, which is no command"
        if not isinstance(cmd, click.Group):
            _check(cmd, rest, snippet)
            continue
        current = None
        for piece in " ".join(rest).split("\\|"):
            words = piece.split()
            if words and words[0] in cmd.commands:
                current = cmd.commands[words[0]]
                words = words[1:]
            assert current is not None, f"README: `{snippet}` names no subcommand of `{head}` first"
            _check(current, words, snippet)
