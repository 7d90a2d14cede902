"""Threads of this process: which ones a session created, and pinning them to CPUs.

TensorFlow names its inter-op pool threads (`tf_Compute<i>` for the i-th
`session_inter_op_thread_pool`) but not the Eigen intra-op threads, which inherit the
process name (`python`). A session creates both when it is constructed: its inter-op pools,
then one Eigen pool per device in device order (with `TF_OVERRIDE_GLOBAL_THREADPOOL=1`;
without it there is one process-global Eigen pool, created by the first device ever).
So the only reliable way to tell a session's threads is to list `/proc/self/task` before and
after creating it, with no other session being created meanwhile (`creating` serialises).

Linux only; elsewhere `supported()` is false and nothing is pinned.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

_TASKS = Path("/proc/self/task")
_CREATING = threading.Lock()
INTER_PREFIX = "tf_Compute"  # thread name of session_inter_op_thread_pool i: tf_Compute<i>


class CpusetError(ValueError):
    """A --session_group_cpusets value that cannot be used."""


def supported() -> bool:
    return _TASKS.is_dir() and hasattr(os, "sched_setaffinity")


def allowed_cpus() -> frozenset[int]:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return frozenset(os.sched_getaffinity(0))
    return frozenset(range(os.cpu_count() or 1))


def parse_cpusets(text: str, lanes: int) -> list[frozenset[int]]:
    """`"0-3;4-7"` -> one CPU set per lane; each set a comma list of CPUs and ranges.

    There must be exactly one set per lane, and every CPU must be one this process may use.
    """
    sets = []
    for part in text.split(";"):
        cpus: set[int] = set()
        for item in part.split(","):
            item = item.strip()
            if not item:
                continue
            first, dash, last = item.partition("-")
            try:
                low, high = int(first), int(last) if dash else int(first)
            except ValueError:
                raise CpusetError(f"'{item}' in '{text}' is not a CPU or a range") from None
            if low < 0 or high < low:
                raise CpusetError(f"'{item}' in '{text}' is not a valid CPU range")
            cpus.update(range(low, high + 1))
        if not cpus:
            raise CpusetError(f"'{text}' has an empty CPU set")
        sets.append(frozenset(cpus))
    if len(sets) != lanes:
        raise CpusetError(f"'{text}' has {len(sets)} CPU sets for {lanes} lanes: give one per lane")
    outside = set().union(*sets) - allowed_cpus()
    if outside:
        raise CpusetError(
            f"CPUs {sorted(outside)} in '{text}' are not available to this process "
            f"(allowed: {format_cpus(allowed_cpus())})"
        )
    return sets


def format_cpus(cpus: frozenset[int] | set[int]) -> str:
    """{0, 1, 2, 5} -> "0-2,5", the kernel's list format."""
    out, ordered = [], sorted(cpus)
    start = prev = None
    for cpu in [*ordered, None]:
        if cpu is not None and prev is not None and cpu == prev + 1:
            prev = cpu
            continue
        if start is not None:
            out.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = cpu
    return ",".join(out)


def threads() -> dict[int, str]:
    """tid -> thread name, for every thread of this process."""
    out: dict[int, str] = {}
    if not _TASKS.is_dir():
        return out
    for entry in _TASKS.iterdir():
        try:
            out[int(entry.name)] = (entry / "comm").read_text().strip()
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
    return out


def name_os_thread() -> None:
    """Gives the calling thread its Python name (first 15 characters) at the OS level too, so
    that `top -H`, /proc and the benchmarks' per-thread CPU figures can tell it apart: a pool's
    initializer. Best effort: does nothing where /proc is missing or read-only."""
    thread = threading.current_thread()
    with contextlib.suppress(OSError):
        (_TASKS / str(thread.native_id) / "comm").write_text(thread.name[:15])


@contextlib.contextmanager
def creating() -> Iterator[dict[int, str]]:
    """Serialises session creation; the yielded dict is filled with the threads it created."""
    created: dict[int, str] = {}
    with _CREATING:
        before = threads()
        yield created
        created.update({t: n for t, n in threads().items() if t not in before})


def pin(tids: list[int], cpus: frozenset[int]) -> None:
    """Restricts each thread to `cpus`; raises OSError if one cannot be pinned."""
    for tid in tids:
        os.sched_setaffinity(tid, cpus)


def affinity(tid: int) -> frozenset[int]:
    return frozenset(os.sched_getaffinity(tid))
