"""Where things live, and who is asking.

One home directory (``OFFLINE_HOME``, else the platform's user data dir) holds the default vault,
the model store and the agent's runtime folder. Every path can be overridden by its own variable;
the CLI exposes the same variables through click's ``envvar=``.
"""

from __future__ import annotations

import getpass
import os
from pathlib import Path

from .errors import UsageError

ENV_HOME = "OFFLINE_HOME"
ENV_VAULT = "OFFLINE_VAULT"
ENV_USER = "OFFLINE_USER"
ENV_MODELS = "OFFLINE_MODELS_DIR"
ENV_PASSPHRASE_FILE = "OFFLINE_PASSPHRASE_FILE"
ENV_PASSPHRASE = "OFFLINE_PASSPHRASE"
ENV_NEW_PASSPHRASE_FILE = "OFFLINE_NEW_PASSPHRASE_FILE"
ENV_NEW_PASSPHRASE = "OFFLINE_NEW_PASSPHRASE"

REPO_ROOT = Path(__file__).resolve().parent.parent


def home() -> Path:
    """The kit's home directory (created 0700 on first use by whoever writes into it)."""
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("offline", appauthor=False))


def default_vault_path() -> Path:
    """``OFFLINE_VAULT``, else ``OFFLINE_HOME/vault``."""
    env = os.environ.get(ENV_VAULT)
    return Path(env).expanduser() if env else home() / "vault"


def models_dir() -> Path:
    """Where model files live: ``OFFLINE_MODELS_DIR``, else ``OFFLINE_HOME/models``."""
    env = os.environ.get(ENV_MODELS)
    return Path(env).expanduser() if env else home() / "models"


def runtime_dir() -> Path:
    """Private folder for the agent's socket (0700)."""
    return home() / "run"


def default_user() -> str:
    """``OFFLINE_USER``, else the login name."""
    env = os.environ.get(ENV_USER)
    if env:
        return env
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        return "user"


def read_secret_file(path: str | os.PathLike[str]) -> str:
    """Read a passphrase from a file: first line, trailing newline stripped."""
    p = Path(path)
    try:
        data = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read passphrase file {p}: {exc.__class__.__name__}") from None
    line = data.splitlines()[0] if data else ""
    if not line:
        raise UsageError(f"passphrase file {p} is empty")
    return line


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) with mode 0700 and return it."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def write_private_file(path: Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path`` with mode 0600 (temp file, fsync, rename, fsync dir)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
