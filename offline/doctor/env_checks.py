"""Checks on the running process: network guard, offline/telemetry variables, component versions."""

from __future__ import annotations

import os
from importlib import metadata

from .. import netguard
from .report import Check, failed, passed, skipped

# Must be set, to these values, for the hub libraries to stay offline.
HF_OFFLINE_VARS = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
# Must be set, to these values, so telemetry is off.
TELEMETRY_OFF_VARS = {"HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"}
# Set to any of these values, a variable turns a tracker or uploader on.
TELEMETRY_ON_VARS = {
    "WANDB_MODE": {"online", "run"},
    "ANONYMIZED_TELEMETRY": {"1", "true", "True"},
    "GRADIO_ANALYTICS_ENABLED": {"1", "true", "True"},
}
# Set at all, these hand a tracker its credentials.
TELEMETRY_KEYS = ("WANDB_API_KEY", "COMET_API_KEY", "NEPTUNE_API_TOKEN", "MLFLOW_TRACKING_URI")
PACKAGES = (
    "offline-kit",
    "sqlcipher3",
    "sqlite-vec",
    "llama-cpp-python",
    "cryptography",
    "torch",
    "transformers",
    "sentence-transformers",
    "peft",
    "numpy",
    "click",
)


def check_network_guard() -> Check:
    """The Python guard is installed and refuses a connection, a datagram and a lookup; the line
    also says whether the second layer (a private network namespace) holds in this process."""
    name = "network guard"
    layers = netguard.layers()
    ns = layers["network_namespace"]
    ns_text = (
        f"network namespace: active ({ns['reason']})"
        if ns["active"]
        else f"network namespace: not active ({ns['reason']})"
    )
    if not netguard.active():
        return failed(name, f"the network guard is not installed in this process; {ns_text}", layers=layers)
    ok, why = netguard.self_test()
    if not ok:
        return failed(name, f"installed but ineffective: {why}; {ns_text}", layers=layers)
    return passed(name, f"active: python socket guard: {why}; {ns_text}", layers=layers)


def check_team_servers() -> Check:
    """Team servers this user runs (``offline serve``) and the network exceptions each one's guard
    makes: its listening socket and, with ``--generate-backend``, that one address."""
    from ..server.run import running_servers

    name = "team server"
    found = running_servers()
    live = [s for s in found if s["running"]]
    if not live:
        stale = f" ({len(found)} stale note(s) of stopped servers)" if found else ""
        return skipped(name, f"none running as this user{stale}", servers=found)
    parts = [
        f"{s['listen']} ({'TLS' if s['tls'] else 'loopback, no TLS'}; pid {s['pid']}; vault {s['vault']}); "
        + (
            f"generation backend {s['generate_backend']}: the only other address its guard allows"
            if s.get("generate_backend")
            else "no generation backend: its guard allows no other address"
        )
        for s in live
    ]
    return passed(name, "; ".join(parts), servers=found)


def check_hf_offline() -> Check:
    """Hugging Face libraries are told to stay offline."""
    wrong = [f"{k}={os.environ.get(k)!r}" for k, v in HF_OFFLINE_VARS.items() if os.environ.get(k) != v]
    if wrong:
        return failed("hugging face offline", f"not set to 1: {', '.join(wrong)}")
    return passed("hugging face offline", ", ".join(f"{k}=1" for k in HF_OFFLINE_VARS))


def check_telemetry() -> Check:
    """No variable turns telemetry on; the opt-outs are set."""
    bad = [
        f"{k}={os.environ.get(k)!r} (want {v})"
        for k, v in TELEMETRY_OFF_VARS.items()
        if os.environ.get(k) != v
    ]
    bad += [f"{k}={os.environ[k]!r}" for k, on in TELEMETRY_ON_VARS.items() if os.environ.get(k) in on]
    bad += [f"{k} is set" for k in TELEMETRY_KEYS if os.environ.get(k)]
    if bad:
        return failed("telemetry off", "; ".join(bad))
    opt_outs = ", ".join(f"{k}={v}" for k, v in TELEMETRY_OFF_VARS.items())
    return passed("telemetry off", f"opt-outs set ({opt_outs}), no tracker variables on")


def _memory_conn():
    import sqlcipher3

    return sqlcipher3.connect(":memory:")


def check_sqlcipher() -> Check:
    """``PRAGMA cipher_version`` answers: the SQLite in use really is SQLCipher."""
    name = "sqlcipher version"
    try:
        conn = _memory_conn()
        try:
            row = conn.execute("PRAGMA cipher_version").fetchone()
        finally:
            conn.close()
    except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
        return failed(name, f"SQLCipher cannot be loaded: {exc.__class__.__name__}: {exc}")
    if not row or not row[0]:
        return failed(name, "PRAGMA cipher_version is empty: this SQLite is not SQLCipher (no encryption)")
    return passed(name, f"SQLCipher {row[0]}", version=row[0])


def check_sqlite_vec() -> Check:
    """sqlite-vec loads into SQLCipher and reports its version."""
    name = "sqlite-vec version"
    try:
        import sqlite_vec

        conn = _memory_conn()
        try:
            conn.enable_load_extension(True)
            sqlite_vec.load(conn)
            conn.enable_load_extension(False)
            version = conn.execute("SELECT vec_version()").fetchone()[0]
        finally:
            conn.close()
    except Exception as exc:  # noqa: BLE001
        return failed(name, f"sqlite-vec cannot be loaded: {exc.__class__.__name__}: {exc}")
    return passed(name, f"sqlite-vec {version}", version=version)


def check_llama_cpp() -> Check:
    """llama-cpp-python imports (its shared library loads) and reports its version."""
    name = "llama.cpp version"
    try:
        import llama_cpp
    except Exception as exc:  # noqa: BLE001
        return failed(name, f"llama-cpp-python cannot be loaded: {exc.__class__.__name__}: {exc}")
    version = getattr(llama_cpp, "__version__", "unknown")
    return passed(name, f"llama-cpp-python {version}", version=version)


def check_packages() -> Check:
    """Installed versions of the kit's main Python packages (FAIL if one is missing)."""
    found, missing = {}, []
    for pkg in PACKAGES:
        try:
            found[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            missing.append(pkg)
    listing = ", ".join(f"{k} {v}" for k, v in found.items())
    if missing:
        return failed(
            "python packages",
            f"missing: {', '.join(missing)}; found: {listing}",
            versions=found,
            missing=missing,
        )
    return passed("python packages", listing, versions=found)


def env_checks() -> list[Check]:
    """Process-level lines, in report order."""
    return [
        check_network_guard(),
        check_team_servers(),
        check_hf_offline(),
        check_telemetry(),
        check_sqlcipher(),
        check_sqlite_vec(),
        check_llama_cpp(),
        check_packages(),
    ]
