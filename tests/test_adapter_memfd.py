"""A decrypted adapter never has a name: nothing in /dev/shm or the vault, even after SIGKILL.

Real tiny GGUF LoRA on the real SmolLM2 base, real llama.cpp, a real child process killed with
SIGKILL while it holds the decrypted adapter (the moment the old code left a plaintext GGUF in
/dev/shm/offline-adapter-*/). The child also drops its dumpability, as the agent does.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PASSPHRASES

REPO = Path(__file__).resolve().parent.parent
SMOL_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SHM = Path("/dev/shm")

pytestmark = pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="memfd_create is Linux-only")


def _needle(data: bytes) -> bytes:
    """256 bytes of the adapter's random tensors: in no other file on this machine."""
    return data[len(data) // 2 : len(data) // 2 + 256]


def files_holding(data: bytes, *roots: Path) -> list[str]:
    """Every readable regular file under ``roots`` whose bytes contain the adapter's."""
    needle, hits = _needle(data), []
    for root in roots:
        for folder, _dirs, files in os.walk(root):
            for name in files:
                path = os.path.join(folder, name)
                try:
                    if os.path.islink(path) or os.path.getsize(path) > 256 << 20:
                        continue
                    with open(path, "rb") as fh:
                        if needle in fh.read():
                            hits.append(path)
                except OSError:
                    continue
    return hits


def leftovers(*roots: Path) -> list[str]:
    """Temp folders the fallback would have made (offline-adapter-*)."""
    return [str(p) for root in roots if root.is_dir() for p in root.rglob("offline-adapter-*")]


@pytest.fixture
def tiny(admin_session, tmp_path):
    from _loras import tiny_smollm2_lora

    from offline.finetune.store import save_adapter

    src = tmp_path / "lora.gguf"
    data = tiny_smollm2_lora(src)
    src.unlink()  # the only plaintext copy on disk is gone before the test looks
    save_adapter(
        admin_session,
        "tiny",
        data,
        base_model="smollm2-135m-instruct",
        base_sha256=SMOL_SHA,
        base_arch="llama",
        dataset_sha256="0" * 64,
        hyperparameters={"rank": 2},
        loss_curve=[],
        eval_loss_before=None,
        eval_loss_after=None,
    )
    assert files_holding(data, admin_session.vault_dir) == []  # the stored file is ciphertext
    return data


def test_loaded_adapter_exists_in_no_file(admin_session, tiny):
    from offline.finetune.store import open_adapter
    from offline.llm import engine as eng
    from offline.llm.resolve import resolve_generate_model
    from offline.rag import answer

    eng.clear_cache()
    base = resolve_generate_model(None).path
    with open_adapter(admin_session, "tiny") as (path, info):
        assert str(path).startswith("/proc/self/fd/")
        fd = int(path.name)
        assert os.readlink(path).startswith("/memfd:offline-adapter")
        assert os.get_inheritable(fd) is False  # MFD_CLOEXEC: no child process inherits it
        engine = eng.load(base, lora_path=str(path), adapter_sha256=info["sha256"])
        # Loaded, and still inside the block: the bytes exist in memory only.
        assert files_holding(tiny, SHM, admin_session.vault_dir) == []
        assert hashlib.sha256(path.read_bytes()).hexdigest() == info["sha256"]
    with pytest.raises(OSError):
        os.fstat(fd)  # closed once llama.cpp had loaded it
    # llama.cpp keeps serving it, and nothing was written anywhere meanwhile.
    a = answer(admin_session, "Say hello.", mode="finetune", adapter="tiny", max_tokens=4)
    assert a.adapter["sha256"] == info["sha256"] and engine.adapter_sha256 == info["sha256"]
    assert files_holding(tiny, SHM, admin_session.vault_dir) == []
    assert leftovers(SHM, admin_session.vault_dir) == []
    eng.clear_cache()


_CHILD = r"""
import sys, time
from offline.agent.server import harden_process
from offline.finetune.store import open_adapter
from offline.llm import engine as eng
from offline.llm.resolve import resolve_generate_model
from offline.rag import answer
from offline.vault import open_session

vault, passphrase, how = sys.argv[1], sys.argv[2], sys.argv[3]
harden_process()  # like the agent: not dumpable, so /proc/self/fd must still work for itself
session = open_session(vault, "alice", passphrase)
base = resolve_generate_model(None).path
if how == "hold":  # killed while the decrypted adapter is open: the worst moment
    with open_adapter(session, "tiny") as (path, info):
        eng.load(base, lora_path=str(path), adapter_sha256=info["sha256"])
        print("ready", flush=True)
        time.sleep(120)
else:  # killed at a random moment while serving questions, decrypting afresh each time
    print("ready", flush=True)
    while True:
        eng.clear_cache()
        answer(session, "Say hello.", mode="finetune", adapter="tiny", max_tokens=8)
"""


@pytest.mark.parametrize("how", ["hold", "serve"])
def test_sigkilled_child_leaves_no_plaintext_behind(admin_session, tiny, vault_dir, how):
    before = set(os.listdir(SHM)) if SHM.is_dir() else set()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(vault_dir), PASSPHRASES["alice"], how],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    try:
        line = child.stdout.readline()
        assert line.strip() == "ready", child.stderr.read()[-3000:]
        if how == "serve":
            time.sleep(1.0 + (os.getpid() % 7) / 7)  # somewhere inside a load or an answer
        # While it serves: no file anywhere holds the adapter.
        assert files_holding(tiny, SHM, vault_dir) == []
        assert child.poll() is None, child.stderr.read()[-3000:]
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    assert files_holding(tiny, SHM, vault_dir) == []
    assert leftovers(SHM, vault_dir) == []
    after = set(os.listdir(SHM)) if SHM.is_dir() else set()
    assert not {n for n in after - before if n.startswith("offline")}
