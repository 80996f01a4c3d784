"""The doctor's report: one line per check, PASS / FAIL / SKIP with a reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import IntegrityError

Status = Literal["PASS", "FAIL", "SKIP"]


class DoctorFailed(IntegrityError):
    """At least one doctor check failed (exit 5)."""


@dataclass
class Check:
    """The outcome of one check. ``detail`` carries machine-readable extras for ``--json``."""

    name: str
    status: Status
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            **({"detail": self.detail} if self.detail else {}),
        }


def passed(name: str, reason: str, **detail: Any) -> Check:
    return Check(name, "PASS", reason, detail)


def failed(name: str, reason: str, **detail: Any) -> Check:
    return Check(name, "FAIL", reason, detail)


def skipped(name: str, reason: str, **detail: Any) -> Check:
    return Check(name, "SKIP", reason, detail)


@dataclass
class DoctorReport:
    """Every check that ran, in a stable order."""

    checks: list[Check] = field(default_factory=list)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "FAIL"]

    @property
    def ok(self) -> bool:
        return not self.failures

    def get(self, name: str) -> Check:
        """The check called ``name`` (KeyError if it did not run)."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        counts = {s: sum(1 for c in self.checks if c.status == s) for s in ("PASS", "FAIL", "SKIP")}
        return {"ok": self.ok, "counts": counts, "checks": [c.to_dict() for c in self.checks]}

    def text(self) -> str:
        """The human report: ``STATUS  name: reason`` per line, then a summary line."""
        width = max((len(c.name) for c in self.checks), default=0)
        lines = [f"{c.status:<4}  {c.name.ljust(width)}  {c.reason}" for c in self.checks]
        d = self.to_dict()["counts"]
        verdict = "all checks passed" if self.ok else f"{d['FAIL']} check(s) FAILED"
        lines.append(f"doctor: {verdict} ({d['PASS']} pass, {d['FAIL']} fail, {d['SKIP']} skip)")
        return "\n".join(lines)

    def raise_for_failures(self) -> None:
        """Raise :class:`DoctorFailed` (exit 5) naming the failed checks, if any."""
        if self.failures:
            names = ", ".join(c.name for c in self.failures)
            raise DoctorFailed(f"doctor found {len(self.failures)} failed check(s): {names}")
