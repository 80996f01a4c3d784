"""Model integrity: every byte of every model re-hashed against the manifest or import record."""

from __future__ import annotations

from .report import Check, failed, passed, skipped


def model_checks() -> list[Check]:
    """One line per known model. A missing default model fails; a missing optional one is skipped."""
    from ..errors import ModelIntegrityError, OfflineError
    from ..models import all_models, verify_models

    try:
        models = all_models()
    except OfflineError as exc:  # unreadable manifest or registry
        return [failed("models", str(exc))]
    checks = []
    for m in models:
        name = f"model {m.name}"
        if not m.path.exists():
            why = f"missing from {m.path.parent}"
            if m.default or m.origin == "imported":
                checks.append(failed(name, f"{why} (run `offline models fetch` or import it again)"))
            else:
                checks.append(skipped(name, f"optional model not installed ({why})"))
            continue
        try:
            verify_models([m.name])
        except ModelIntegrityError:
            checks.append(failed(name, f"sha256 of {m.path} does not match the recorded {m.sha256[:16]}...",
                                 path=str(m.path), expected=m.sha256))
            continue
        except OfflineError as exc:
            checks.append(failed(name, str(exc)))
            continue
        checks.append(passed(name, f"sha256 {m.sha256[:16]}... matches ({m.role}, {m.origin})",
                             path=str(m.path), sha256=m.sha256))
    if not checks:
        checks.append(failed("models", "no models are known (manifest empty?)"))
    return checks
