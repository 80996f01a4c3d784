"""What ``offline compare`` measures besides answer quality: memory, latency spreads, disk."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from ..eval import metrics

RSS_INTERVAL_S = 0.05


class RSSSampler:
    """Peak resident set size of this process while the block runs, sampled every 50 ms with psutil.

    A sampling thread sees native memory (llama.cpp, torch) that ``tracemalloc`` cannot; the peak
    between two samples can be missed, so the figure is a lower bound within one interval.
    """

    def __init__(self, interval: float = RSS_INTERVAL_S):
        import psutil

        self._proc = psutil.Process(os.getpid())
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.start_bytes = 0
        self.peak_bytes = 0

    def _rss(self) -> int:
        return int(self._proc.memory_info().rss)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak_bytes = max(self.peak_bytes, self._rss())

    def __enter__(self) -> RSSSampler:
        self.start_bytes = self.peak_bytes = self._rss()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._rss())


def mb(n: int | None) -> float | None:
    return None if n is None else round(n / 2**20, 1)


def spread(values: Iterable[float]) -> dict[str, float | None]:
    """p50, p95 and mean, rounded; None each when there are no values."""
    xs = [float(v) for v in values]
    r = lambda v: None if v is None else round(v, 4)  # noqa: E731
    return {
        "p50": r(metrics.percentile(xs, 50)),
        "p95": r(metrics.percentile(xs, 95)),
        "mean": r(sum(xs) / len(xs)) if xs else None,
        "n": len(xs),
    }


def tree_bytes(path: Path) -> int:
    """Bytes of every regular file under ``path`` (or of ``path`` itself); links are not followed."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            fp = Path(root) / f
            try:
                if not fp.is_symlink():
                    total += fp.stat().st_size
            except OSError:  # a temp file vanished between listing and stat
                pass
    return total


def db_bytes(path: Path) -> int:
    """A SQLite database with its WAL and shared-memory files."""
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.is_file())
