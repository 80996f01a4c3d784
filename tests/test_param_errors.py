"""The library words argument errors with parameter names; the CLI shows the flags that set them.

``ParameterError("{rank} must be ...", "rank")`` reads ``rank must be ...`` to a library caller and
``--rank must be ...`` on the command line, for the command that ran (``-k`` where the option is
short). ``-k`` has one bound, :data:`offline.limits.MAX_K`, which the click type reuses.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from offline.errors import AlreadyExists, ParameterError, UsageError
from offline.limits import MAX_K, check_k

ROOT = Path(__file__).resolve().parent.parent / "offline"
FLAG = re.compile(r"(?<![\w`}-])--?[a-zA-Z][a-z-]*\b")


def test_library_messages_name_parameters():
    with pytest.raises(ParameterError) as info:
        check_k(MAX_K + 1)
    assert str(info.value) == f"k must be between 1 and {MAX_K}"
    assert info.value.render(lambda n: "-" + n) == f"-k must be between 1 and {MAX_K}"
    assert isinstance(info.value, UsageError) and info.value.exit_code == 2
    for bad in (0, -1, True, 2.0, "5", None):
        with pytest.raises(ParameterError):
            check_k(bad)  # type: ignore[arg-type]
    assert check_k(MAX_K) == MAX_K


def test_values_are_never_parsed_as_fields():
    exc = AlreadyExists.naming("{path} already exists (use {force} to replace it)", "force", path="/tmp/{x}")
    assert str(exc) == "/tmp/{x} already exists (use force to replace it)"
    assert exc.render(lambda n: "--" + n) == "/tmp/{x} already exists (use --force to replace it)"
    assert exc.exit_code == AlreadyExists.exit_code


def _text(node: ast.AST) -> str | None:
    """A string literal's text; an f-string's with each placeholder as X (so "{n}-token" is no flag)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "X" for v in node.values)
    return None


def _strings(node: ast.AST):
    """Every string literal under ``node``; an f-string whole, not its pieces."""
    text = _text(node)
    if text is not None:
        yield text
        return
    for child in ast.iter_child_nodes(node):
        yield from _strings(child)


def _raised_strings(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            for text in _strings(node.exc):
                # A whole command quoted as advice (`offline models fetch`) is not this call's flag.
                yield node.lineno, re.sub(r"`[^`]*`", "", text)


def test_no_library_error_spells_a_flag():
    """Outside the CLI and the agent client, no raised message types a command-line flag."""
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent)
        if rel.parts[1] in ("cli", "agent"):
            continue
        for line, text in _raised_strings(ast.parse(path.read_text(encoding="utf-8"))):
            if FLAG.search(text):
                bad.append(f"{rel}:{line}: {text!r}")
    assert not bad, "library errors worded as CLI flags:\n" + "\n".join(bad)


def test_cli_shows_the_flag_of_the_command_that_ran(admin_session, cli):
    from offline.gdpr.retention import set_retention

    with pytest.raises(ParameterError, match=r"^give exactly one of collection or label$"):
        set_retention(admin_session, collection="x", label="y", days=30)
    r = cli(["gdpr", "retention", "set", "--days", "30d", "-c", "x", "--label", "y"])
    assert r.exit_code == 2 and r.stderr.strip() == "Error: give exactly one of --collection or --label"


def test_k_has_one_bound_everywhere(admin_session, cli):
    from offline.retrieval.search import MAX_DEPTH, search

    for args in (["search", "q"], ["ask", "q"]):
        r = cli([*args, "-k", str(MAX_K + 1)])
        assert r.exit_code == 2 and r.stderr.strip() == f"Error: -k must be between 1 and {MAX_K}"
        assert cli([*args, "-k", "0"]).stderr.strip() == f"Error: -k must be between 1 and {MAX_K}"
    # The engine ranks deeper for evaluation; still a parameter, never a flag.
    with pytest.raises(ParameterError, match=rf"^k must be between 1 and {MAX_DEPTH}$"):
        search(admin_session, "q", k=MAX_DEPTH + 1)
