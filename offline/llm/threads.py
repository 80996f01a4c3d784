"""How many CPU threads llama.cpp gets: one count to decode, one to process the prompt.

Why two counts (measured on the 2-core target, ``scripts/bench_ask.py --sweep``, README "Speed"):

- Decoding one token runs a few hundred small operations, each ending at a barrier of the OpenMP
  threads. The kit runs OpenMP with ``OMP_WAIT_POLICY=PASSIVE`` (offline/__init__.py: spinning
  threads made first tokens 5-30 s late when other work shared the cores), so every barrier is a
  futex sleep and wake: 2 threads decode a 135M model at 35-40 tok/s, 1 thread at 85-93 tok/s
  (one thread runs the graph with no OpenMP at all, so the wait policy cannot cost anything).
  Spinning 2-thread decode is faster only on an idle machine (96-126 tok/s) and collapses to
  5-15 tok/s as soon as anything else runs; one PASSIVE thread stays at 85-95 either way.
- Prompt processing is large matrix products: 2 threads are ~2x faster than 1, whatever the
  wait policy.

So small models (under :data:`SMALL_MODEL_PARAMS`) decode on one thread; larger ones, where each
operation is big enough to amortise a barrier, decode on every core (not measured here: set
``OFFLINE_N_THREADS`` if a sweep on your machine says otherwise). The prompt always uses every core.

Overrides, first found wins: ``OFFLINE_N_THREADS`` / ``OFFLINE_N_THREADS_BATCH`` in the
environment, then ``n_threads`` / ``n_threads_batch`` in ``OFFLINE_HOME/config.toml``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .. import config
from ..errors import UsageError

ENV_THREADS = "OFFLINE_N_THREADS"
ENV_THREADS_BATCH = "OFFLINE_N_THREADS_BATCH"
MAX_THREADS = 64
SMALL_MODEL_PARAMS = 1_000_000_000


@dataclass(frozen=True)
class Threads:
    """Thread counts for one engine: ``decode`` (one token at a time) and ``batch`` (the prompt)."""

    decode: int
    batch: int


def cores() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count), at most 8:
    past that llama.cpp on a laptop-class CPU gains nothing and shares worse."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def _parse(value: str, where: str) -> int:
    try:
        n = int(value.strip())
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_THREADS:
        raise UsageError(f"{where} must be a whole number from 1 to {MAX_THREADS}, not {value!r}")
    return n


def _configured(env: str, key: str) -> int | None:
    """The user's count for one setting (environment first, then config.toml), or None."""
    value = os.environ.get(env)
    if value is not None and value.strip():
        return _parse(value, env)
    value = config.user_config().get(key)
    if value is not None:
        return _parse(value, f"{key} in {config.home() / config.CONFIG_FILE}")
    return None


def check() -> None:
    """Raise :class:`UsageError` now if a configured count is bad (before any work is done)."""
    _configured(ENV_THREADS, "n_threads")
    _configured(ENV_THREADS_BATCH, "n_threads_batch")


def choose(n_params: int | None = None) -> Threads:
    """The counts for a model of ``n_params`` parameters (None: unknown, treated as small)."""
    n = cores()
    default_decode = n if n_params is not None and n_params >= SMALL_MODEL_PARAMS else 1
    decode = _configured(ENV_THREADS, "n_threads") or default_decode
    batch = _configured(ENV_THREADS_BATCH, "n_threads_batch") or n
    return Threads(decode=decode, batch=batch)
