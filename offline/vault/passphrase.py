"""How strong a new passphrase must be: long enough, and not guessable (zxcvbn's estimate).

zxcvbn (Dropbox's estimator, MIT; pure Python, its word lists ship in the wheel, nothing is
fetched) scores 0-4 from the guesses an attacker with common-password lists, dictionaries, keyboard
patterns and the user's own name would need. We ask for 3 ("safely unguessable: moderate protection
from an offline slow-hash scenario", about 10^8 guesses or more), on top of Argon2id.
"""

from __future__ import annotations

from ..errors import UsageError

MIN_LENGTH = 8
MIN_SCORE = 3


def check_new_passphrase(passphrase: str, *, user: str, allow_weak: bool = False) -> None:
    """Raise :class:`UsageError` with zxcvbn's advice unless ``passphrase`` is strong enough."""
    if len(passphrase) < MIN_LENGTH:
        raise UsageError(f"passphrase too short: use at least {MIN_LENGTH} characters")
    if allow_weak:
        return
    from zxcvbn import zxcvbn

    result = zxcvbn(passphrase[:100], user_inputs=[user, "offline", "vault"])
    if result["score"] < MIN_SCORE:
        fb = result.get("feedback") or {}
        hint = fb.get("warning") or (fb.get("suggestions") or ["add more words or characters"])[0]
        raise UsageError.naming(
            "passphrase too easy to guess ({hint}); try a few unrelated words (or {allow_weak} "
            "for a test vault)",
            "allow_weak",
            hint=hint.rstrip("."),
        )
