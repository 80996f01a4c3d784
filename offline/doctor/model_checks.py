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
            checks.append(
                failed(
                    name,
                    f"sha256 of {m.path} does not match the recorded {m.sha256[:16]}...",
                    path=str(m.path),
                    expected=m.sha256,
                )
            )
            continue
        except OfflineError as exc:
            checks.append(failed(name, str(exc)))
            continue
        checks.append(
            passed(
                name,
                f"sha256 {m.sha256[:16]}... matches ({m.role}, {m.origin})",
                path=str(m.path),
                sha256=m.sha256,
            )
        )
    if not checks:
        checks.append(failed("models", "no models are known (manifest empty?)"))
    from ..models.packaged import pinned_names

    checks += [packaged_check(n) for n in pinned_names()]
    checks.append(ocr_check())
    return checks


def packaged_check(model: str) -> Check:
    """A model used in place from its package (NER, OCR): its folder hashed against the manifest pin."""
    from ..errors import ModelIntegrityError, OfflineError
    from ..models.packaged import verify

    name = f"detector {model}"
    try:
        info = verify(model)
    except ModelIntegrityError as exc:
        return failed(name, str(exc))
    except OfflineError as exc:
        return failed(name, f"{exc} (identifier detection and OCR at ingest need it)")
    return passed(
        name,
        f"tree sha256 {info['tree_sha256'][:16]}... matches ({info['source']}, wheel sha256 "
        f"{info['wheel_sha256'][:16]}...)",
        path=info["path"],
        tree_sha256=info["tree_sha256"],
        wheel_sha256=info["wheel_sha256"],
        source=info["source"],
    )


def ocr_check() -> Check:
    """Tesseract and its pinned English model (a SKIP where it is not installed: scans are refused)."""
    from ..errors import InvalidInput, ModelIntegrityError, OfflineError
    from ..ingest.ocr import OCR_NAME, verify_engine

    name = f"ocr {OCR_NAME}"
    try:
        info = verify_engine()
    except ModelIntegrityError as exc:
        return failed(name, str(exc))
    except InvalidInput as exc:
        return skipped(name, f"{exc}; scanned pages are refused until then")
    except OfflineError as exc:
        return failed(name, str(exc))
    return passed(
        name,
        f"sha256 {info['sha256'][:16]}... matches ({info['traineddata']})",
        binary=info["binary"],
        traineddata=info["traineddata"],
        sha256=info["sha256"],
    )
