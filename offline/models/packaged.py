"""Models used in place from an installed package (the NER model, OCR models), pinned and verified.

Unlike the GGUF and embedding models, these are not copied into the models folder: spaCy and the
OCR engine load them from their package. ``models/manifest.toml`` pins each in a ``[[detector]]``
table (wheel sha256, where it came from, and the tree hash of the folder inside the installed
package); :func:`verify` re-hashes that folder before anything loads it, so a swapped model stops
the kit (exit 5) instead of running.
"""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from typing import Any

from ..errors import ModelIntegrityError, OfflineError


def entry(name: str, table: str = "detector") -> dict[str, Any]:
    """The ``[[table]]`` entry called ``name``: from the active manifest, else the kit's own.

    A manifest made for other model files (``OFFLINE_MODELS_MANIFEST``) need not repeat these pins.
    """
    from .. import config
    from .manifest import manifest_path

    for path in dict.fromkeys(
        [
            manifest_path(),
            config.REPO_ROOT / "models" / "manifest.toml",
            config.models_dir() / "manifest.toml",
        ]
    ):
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            continue
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise OfflineError(f"cannot read the model manifest {path}: {exc}") from None
        for e in data.get(table, []):
            if e.get("name") == name:
                return e
    raise OfflineError(f"no model manifest pins {name!r}")


def folder(name: str) -> Path:
    """Where the pinned model folder lies inside its installed package (nothing is downloaded)."""
    e = entry(name)
    spec = importlib.util.find_spec(e["module"])
    if spec is None or spec.origin is None:
        raise OfflineError(
            f"{name} needs the package {e['package']}=={e['version']} (install it from the kit's "
            "wheel folder)"
        )
    return Path(spec.origin).parent / e["folder"]


def verify(name: str, path: Path | None = None) -> dict[str, Any]:
    """Hash the installed folder against the manifest; raise :class:`ModelIntegrityError` if it differs."""
    from .hashing import tree_hash

    e = entry(name)
    where = path or folder(name)
    if not where.is_dir():
        raise OfflineError(f"{name}: model folder missing: {where}")
    got = tree_hash(where)
    if got != e["tree_sha256"]:
        raise ModelIntegrityError(
            f"{name}: {where} hashes to {got[:16]}…, the manifest pins {e['tree_sha256'][:16]}…"
        )
    return {
        "name": name,
        "path": str(where),
        "tree_sha256": got,
        "wheel_sha256": e["wheel_sha256"],
        "source": f"{e['package']}=={e['version']}",
    }


def pinned_names() -> list[str]:
    """Names of every packaged model the kit's manifest pins."""
    from .. import config

    try:
        data = tomllib.loads((config.REPO_ROOT / "models" / "manifest.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return []
    return [e["name"] for e in data.get("detector", []) if "name" in e]
