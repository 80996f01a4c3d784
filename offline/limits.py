"""Bounds on numbers callers hand the library, each in one place (the CLI's option types reuse them)."""

from __future__ import annotations

from .errors import ParameterError

# Passages or chunks one request retrieves (ask, search, eval, compare): more never fit a prompt
# and are no use on a terminal. The retrieval engine itself goes deeper for evaluation
# (offline.retrieval.index.KNN_MAX), but no command exposes that.
MAX_K = 100

# The longest an API token may live (``offline users token create --expires``), enforced where the
# signed chain is folded (offline.audit.chain.fold_token), not only by the CLI; the slack covers
# the moment between computing the expiry and signing the entry.
MAX_TOKEN_DAYS = 366
TOKEN_CLOCK_SLACK_S = 300


def check_k(k: int | None, param: str = "k") -> int:
    """``k`` as an int in 1..:data:`MAX_K`, else :class:`ParameterError` naming ``param``."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise ParameterError(f"{{{param}}} must be between 1 and {MAX_K}", param)
    return k
