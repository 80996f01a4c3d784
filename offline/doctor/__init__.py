"""``offline doctor``: the state a reviewer cares about, one PASS / FAIL / SKIP line per check.

:func:`run_doctor` returns a :class:`DoctorReport`; it never raises for a failed check (the report
says what failed). The CLI prints the report, then calls :meth:`DoctorReport.raise_for_failures`,
which raises :class:`DoctorFailed` (an ``IntegrityError``, exit 5) when anything failed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .report import Check, DoctorFailed, DoctorReport


def run_doctor(
    vault_dir: Path, session: Any | None = None, *, locked_reason: str | None = None, models: bool = True
) -> DoctorReport:
    """Run every check.

    ``session`` is an unlocked :class:`offline.vault.Session` for ``vault_dir`` or ``None``; without
    it the checks that need the key (plaintext canary, audit chain) are SKIP with ``locked_reason``,
    while those that read raw files (ciphertext header, permissions, KDF cost) still run.
    """
    from .env_checks import env_checks
    from .model_checks import model_checks
    from .vault_checks import vault_checks

    report = DoctorReport()
    if models:
        report.checks += model_checks()
    report.checks += vault_checks(Path(vault_dir), session, locked_reason)
    report.checks += env_checks()
    return report


def run_doctor_with(vault_dir: Path, opener: Callable[[], Any] | None) -> DoctorReport:
    """Like :func:`run_doctor`, unlocking the vault with ``opener()`` only when a vault exists.

    ``opener`` is ``None`` when no passphrase source is available (the vault checks that need the
    key are then SKIP); authentication errors from ``opener`` propagate (exit 3).
    """
    from ..vault import header as hdr

    vault_dir = Path(vault_dir)
    if not (vault_dir / hdr.HEADER).is_file():
        return run_doctor(vault_dir)
    if opener is None:
        return run_doctor(
            vault_dir,
            locked_reason="vault locked: no passphrase given (--passphrase-file or OFFLINE_PASSPHRASE)",
        )
    return run_doctor(vault_dir, opener())


__all__ = ["Check", "DoctorFailed", "DoctorReport", "run_doctor", "run_doctor_with"]
