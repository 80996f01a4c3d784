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


CONFIG_FILE = "config.toml"


def user_config() -> dict[str, str]:
    """``OFFLINE_HOME/config.toml`` (written by ``scripts/setup``): ``models_dir``, ``vault``, ``user``,
    and optionally ``n_threads`` / ``n_threads_batch`` (llama.cpp's decode and prompt threads).

    Lets an installed kit find its models and vault with no environment variables. A file that
    does not parse is ignored with no guess at what it meant (environment and defaults still apply).
    """
    import tomllib

    try:
        with (home() / CONFIG_FILE).open("rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    text = {k: str(v) for k, v in doc.items() if k in ("models_dir", "vault", "user") and isinstance(v, str)}
    # Thread counts for llama.cpp (offline/llm/threads.py checks them): a number or a string.
    counts = {
        k: str(v)
        for k, v in doc.items()
        if k in ("n_threads", "n_threads_batch") and isinstance(v, (int, str)) and not isinstance(v, bool)
    }
    return {**text, **counts}


def default_vault_path() -> Path:
    """``OFFLINE_VAULT``, else ``vault`` in the user's config file, else ``OFFLINE_HOME/vault``."""
    env = os.environ.get(ENV_VAULT) or user_config().get("vault")
    return Path(env).expanduser() if env else home() / "vault"


def models_dir() -> Path:
    """Where model files live: ``OFFLINE_MODELS_DIR``, else ``models_dir`` in the user's config file,
    else ``OFFLINE_HOME/models`` once something was put there, else the install's own ``models/``."""
    env = os.environ.get(ENV_MODELS) or user_config().get("models_dir")
    if env:
        return Path(env).expanduser()
    own = home() / "models"
    if own.is_dir() and any(own.iterdir()):
        return own
    return REPO_ROOT / "models" if (REPO_ROOT / "models" / "manifest.toml").is_file() else own


def runtime_dir() -> Path:
    """Private folder for the agent's socket (0700)."""
    return home() / "run"


def default_user() -> str:
    """``OFFLINE_USER``, else ``user`` in the user's config file, else the login name."""
    env = os.environ.get(ENV_USER) or user_config().get("user")
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
