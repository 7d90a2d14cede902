"""The allocator: large buffers stay in the heap while requests come, and go back to the OS
once the server is idle.

`tune_malloc` keeps freed large buffers in glibc's heap instead of returning them with munmap
at once: each large request would otherwise page-fault its buffers in again (measured here:
encoding an 800 KB tensor took 1.7 ms that way and 0.09 ms with these settings; an 800 KB
echo over gRPC went from 5.5 ms to 3.3 ms).

What that holds, measured on half_plus_two (RSS 597 MB at rest): four 128 MiB requests took
the server to 1181 MB. Part of it is free heap: buffers up to 32 MiB come from the worker
threads' arenas, each keeping up to 256 MiB free at its top, and free pages inside an arena
are never returned. `IdleTrim` calls `malloc_trim(0)` (every arena, inner pages included)
once the resident set has grown since the last trim, when no call has arrived for a second
(or 10 s after the growth under steady traffic): 140-230 MB went back in 6-20 ms. Most of
the rest (about 400 MB there) is oneDNN's CPU allocator: a BFC pool sized by the largest
tensors served, reused by later requests, never returned. `TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1`
gives it back (the same spike then left 130 MB), but runs the zoo's DIN 1.9x and its
user-heavy ranker 2.4x slower at N=1000, so the default keeps the pool.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def tune_malloc() -> None:
    """Keeps freed buffers up to 32 MiB in the heap (see the module docstring)."""
    libc = _libc()
    if libc is None:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's maximum
    libc.mallopt(m_trim_threshold, 256 << 20)


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


class IdleTrim:
    """Returns free heap memory to the OS after the resident set grew.

    Every `interval_s` it compares RSS with its value after the last trim; once it grew by
    `min_growth`, it trims when the server is idle (`activity()`, a number that changes
    whenever a call arrives, did not change for an interval) or, under steady traffic, after
    `busy_wait_s` of growth: `malloc_trim` holds each arena's lock for a few milliseconds, so
    it waits for a quiet moment first, but does not let steady traffic keep a spike resident.
    """

    def __init__(
        self,
        activity: Callable[[], int],
        interval_s: float = 1.0,
        min_growth: int = 64 << 20,
        busy_wait_s: float = 10.0,
    ) -> None:
        self._activity = activity
        self._interval = interval_s
        self._min_growth = min_growth
        self._busy_wait = busy_wait_s
        self._stop = threading.Event()
        self._libc = _libc()
        self._thread = threading.Thread(target=self._loop, name="tfrec-trim", daemon=True)

    def start(self) -> None:
        if self._libc is not None and hasattr(self._libc, "malloc_trim"):
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        assert self._libc is not None
        trimmed = 0  # RSS after the last trim: the first idle second trims once
        grown_since: float | None = None
        seen = self._activity()
        while not self._stop.wait(self._interval):
            now = self._activity()
            idle, seen = now == seen, now
            rss = resident_bytes()
            if rss < trimmed + self._min_growth:
                grown_since = None
                continue
            if grown_since is None:
                grown_since = time.monotonic()
            if not idle and time.monotonic() - grown_since < self._busy_wait:
                continue
            start = time.perf_counter()
            self._libc.malloc_trim(0)
            trimmed, grown_since = resident_bytes(), None
            log.debug(
                "Returned %.0f MB of free heap to the OS in %.1f ms (RSS %.0f MB, %s)",
                (rss - trimmed) / 2**20,
                (time.perf_counter() - start) * 1e3,
                trimmed / 2**20,
                "idle" if idle else "under traffic",
            )
