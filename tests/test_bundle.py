"""The air-gap bundle: the install script refuses a tampered bundle before installing anything; the
slow test builds a real bundle and installs it into a new venv with every registry blocked."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

INSTALL = REPO / "scripts" / "bundle-install.sh"
SIGN = REPO / "scripts" / "bundle_sign.py"
QUESTION = (
    "How long does Harbourside Family Clinic keep adult patient records, and who owns the retention policy?"
)


def blocked_env(**extra: str) -> dict[str, str]:
    """A process environment in which pip can reach no registry and no find-links but the bundle's."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST")
    }
    env.update(
        PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_CONFIG_FILE="/dev/null", PIP_FIND_LINKS="", **extra
    )
    return env


def sign(bundle: Path, key: Path) -> str:
    out = subprocess.run(
        [sys.executable, str(SIGN), "sign", str(bundle), "--key", str(key)],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


@pytest.fixture
def fake_bundle(tmp_path: Path) -> tuple[Path, str]:
    """A tiny bundle with the real install script, fake wheel content, signed with a fresh key."""
    b = tmp_path / "bundle"
    (b / "wheelhouse").mkdir(parents=True)
    (b / "models").mkdir()
    shutil.copy(INSTALL, b / "install.sh")
    (b / "BUNDLE-INFO").write_text("PROJECT=offline-kit\nVERSION=0.0.0\nPYTHON_VERSION=3.11\n")
    (b / "constraints.txt").write_text("click==8.5.1\n")
    (b / "wheelhouse" / "offline_kit-0.0.0-py3-none-any.whl").write_bytes(os.urandom(4096))
    (b / "models" / "manifest.toml").write_text("schema = 1\n")
    (b / "models" / "tiny.gguf").write_bytes(b"GGUF" + os.urandom(1024))
    fingerprint = sign(b, tmp_path / "keys" / "sign.pem")
    return b, fingerprint


def run_install(bundle: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            "bash",
            str(bundle / "install.sh"),
            "--venv",
            str(tmp_path / "venv"),
            "--models-dir",
            str(tmp_path / "installed-models"),
            *args,
        ],
        capture_output=True,
        text=True,
        env=blocked_env(),
        timeout=120,
    )


def test_signing_key_is_private_pem_outside_bundle(fake_bundle, tmp_path):
    bundle, fingerprint = fake_bundle
    key = tmp_path / "keys" / "sign.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert (bundle / "pub.pem").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert len((bundle / "SHA256SUMS.sig").read_bytes()) == 64
    assert len(fingerprint) == 64
    # openssl alone verifies the signature (no Python packages needed on the air-gapped side)
    subprocess.run(
        [
            "openssl",
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            "pub.pem",
            "-rawin",
            "-in",
            "SHA256SUMS",
            "-sigfile",
            "SHA256SUMS.sig",
        ],
        cwd=bundle,
        check=True,
        capture_output=True,
    )
    listed = sorted(line.split("  ", 1)[1] for line in (bundle / "SHA256SUMS").read_text().splitlines())
    assert listed == [
        "./BUNDLE-INFO",
        "./constraints.txt",
        "./install.sh",
        "./models/manifest.toml",
        "./models/tiny.gguf",
        "./wheelhouse/offline_kit-0.0.0-py3-none-any.whl",
    ]
    with pytest.raises(subprocess.CalledProcessError):  # the key must stay out of the bundle
        sign(bundle, bundle / "key.pem")


def test_intact_bundle_verifies(fake_bundle, tmp_path):
    bundle, fingerprint = fake_bundle
    res = run_install(bundle, tmp_path, "--verify-only", "--expect-key-sha256", fingerprint)
    assert res.returncode == 0, res.stderr
    assert "signature OK (openssl)" in res.stderr and "all 6 files match SHA256SUMS" in res.stderr
    assert not (tmp_path / "venv").exists()


def _flip(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))


def _resum(bundle: Path) -> None:
    """An attacker recomputes SHA256SUMS after swapping a file, but cannot re-sign it."""
    sys.path.insert(0, str(SIGN.parent))
    try:
        import bundle_sign
    finally:
        sys.path.pop(0)
    bundle_sign.write_sums(bundle)


TAMPERS = {
    "flipped byte in a wheel": (
        lambda b: _flip(b / "wheelhouse" / "offline_kit-0.0.0-py3-none-any.whl"),
        "checksum mismatch",
    ),
    "flipped byte in a model": (lambda b: _flip(b / "models" / "tiny.gguf"), "checksum mismatch"),
    "file removed": (lambda b: (b / "models" / "tiny.gguf").unlink(), "checksum mismatch or missing"),
    "wheel added": (
        lambda b: (b / "wheelhouse" / "evil-9.9-py3-none-any.whl").write_bytes(b"x"),
        "not covered by SHA256SUMS: ./wheelhouse/evil-9.9-py3-none-any.whl",
    ),
    "sums recomputed": (
        lambda b: (_flip(b / "wheelhouse" / "offline_kit-0.0.0-py3-none-any.whl"), _resum(b)),
        "signature of SHA256SUMS does not verify",
    ),
    "signature flipped": (lambda b: _flip(b / "SHA256SUMS.sig"), "signature of SHA256SUMS does not verify"),
    "signature missing": (lambda b: (b / "SHA256SUMS.sig").unlink(), "SHA256SUMS.sig is missing"),
    "symlink added": (
        lambda b: (b / "models" / "link").symlink_to("/etc/passwd"),
        "symlinks or special files",
    ),
}


@pytest.mark.parametrize("tamper", sorted(TAMPERS))
def test_tampered_bundle_aborts_before_installing(fake_bundle, tmp_path, tamper):
    bundle, fingerprint = fake_bundle
    action, message = TAMPERS[tamper]
    action(bundle)
    res = run_install(bundle, tmp_path, "--expect-key-sha256", fingerprint)
    assert res.returncode == 5, res.stderr
    assert "BUNDLE REJECTED" in res.stderr and message in res.stderr
    assert "Nothing was installed" in res.stderr
    assert not (tmp_path / "venv").exists() and not (tmp_path / "installed-models").exists()


def test_bundle_signed_by_another_key_is_rejected(fake_bundle, tmp_path):
    bundle, fingerprint = fake_bundle
    other = sign(bundle, tmp_path / "keys" / "attacker.pem")  # a complete, valid re-signing
    assert other != fingerprint
    res = run_install(bundle, tmp_path, "--expect-key-sha256", fingerprint)
    assert res.returncode == 5 and f"not the expected {fingerprint}" in res.stderr
    assert not (tmp_path / "venv").exists()


def test_python_fallback_verifier(fake_bundle, tmp_path):
    """Without OpenSSL 3 on PATH the script verifies with python + cryptography, and still rejects."""
    bundle, fingerprint = fake_bundle
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in (
        "bash",
        "sha256sum",
        "cut",
        "grep",
        "sort",
        "find",
        "comm",
        "head",
        "tr",
        "wc",
        "dirname",
        "cat",
        "sed",
        "basename",
    ):
        found = shutil.which(tool)
        if found:
            (bindir / tool).symlink_to(found)
    (bindir / "python3").symlink_to(sys.executable)
    env = blocked_env(PATH=str(bindir))
    cmd = ["bash", str(bundle / "install.sh"), "--verify-only", "--expect-key-sha256", fingerprint]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0 and "signature OK (python cryptography)" in res.stderr, res.stderr
    _flip(bundle / "SHA256SUMS.sig")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 5 and "does not verify" in res.stderr


# -- the real thing ------------------------------------------------------------------------------


@pytest.mark.slow
def test_build_bundle_install_airgapped_and_ask(tmp_path_factory):
    """Build a real bundle, install it into a new venv with every registry blocked, ask the question."""
    work = Path(tmp_path_factory.mktemp("airgap", numbered=True))
    try:
        t0 = time.monotonic()
        bundle = work / "bundle"
        build = subprocess.run(
            [
                str(REPO / "scripts" / "make-bundle"),
                "--out",
                str(bundle),
                "--tar",
                "--signing-key",
                str(work / "keys" / "sign.pem"),
            ],
            capture_output=True,
            text=True,
            timeout=3600,
        )
        assert build.returncode == 0, build.stderr[-4000:]
        t_build = time.monotonic() - t0
        fingerprint = build.stderr.split("public key sha256 (tell the installer out of band): ")[1].split()[0]
        assert (work / "bundle.tar").stat().st_size > 300_000_000

        # The air-gapped side: a fresh folder from the tarball, a fresh home, no registry reachable.
        side = work / "airgap"
        side.mkdir()
        subprocess.run(["tar", "-C", str(side), "-xf", str(work / "bundle.tar")], check=True)
        home = side / "home"
        env = blocked_env(OFFLINE_HOME=str(home))
        for var in ("OFFLINE_MODELS_DIR", "OFFLINE_MODELS_MANIFEST", "OFFLINE_VAULT", "VIRTUAL_ENV"):
            env.pop(var, None)
        venv = side / "venv"
        t1 = time.monotonic()
        inst = subprocess.run(
            [
                "bash",
                str(side / "bundle" / "install.sh"),
                "--venv",
                str(venv),
                "--expect-key-sha256",
                fingerprint,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=3600,
            cwd=side,
        )
        assert inst.returncode == 0, inst.stderr[-4000:] + inst.stdout[-4000:]
        t_install = time.monotonic() - t1
        assert "signature OK (openssl)" in inst.stderr
        assert "doctor: all checks passed" in inst.stdout
        # The new venv is not the development one, and imports the kit from its own site-packages.
        probe = [str(venv / "bin" / "python"), "-c", "import offline; print(offline.__file__)"]
        where = subprocess.run(probe, capture_output=True, text=True, env=env, check=True, cwd=side).stdout
        assert where.startswith(str(venv))

        # The quickstart's steps with the installed CLI (models + manifest via the env file).
        for line in (venv / "offline.env").read_text().splitlines():
            for assignment in line.removeprefix("export ").split():
                key, _, value = assignment.partition("=")
                env[key] = value
        env.update(
            OFFLINE_VAULT=str(side / "vault"),
            OFFLINE_USER="demo",
            OFFLINE_PASSPHRASE="demo-passphrase-1",
            OFFLINE_NEW_PASSPHRASE="demo-passphrase-1",
        )
        offline = str(venv / "bin" / "offline")

        def run(*args: str) -> subprocess.CompletedProcess:
            res = subprocess.run(
                [offline, *args], capture_output=True, text=True, env=env, timeout=1800, cwd=side
            )
            assert res.returncode == 0, f"offline {' '.join(args)}: {res.stderr[-3000:]}"
            return res

        t2 = time.monotonic()
        run("init")
        run("collections", "create", "demo")
        run("ingest", str(REPO / "examples" / "sample-corpus"), "-c", "demo")
        answer = run("ask", QUESTION, "-c", "demo")
        t_ask = time.monotonic() - t2
        assert "data-retention-policy" in answer.stdout, answer.stdout
        doctor = run("doctor")
        assert "FAIL" not in doctor.stdout and "PASS  plaintext canary" in doctor.stdout
        print(
            f"\nbundle: build {t_build:.0f} s, install {t_install:.0f} s, quickstart {t_ask:.0f} s; "
            f"{(work / 'bundle.tar').stat().st_size / 1e6:.0f} MB tar\n{answer.stdout}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
