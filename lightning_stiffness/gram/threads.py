"""CPU threads for the Gram under contention (docs/performance.md "Under CPU contention").

The hooks path issues hundreds of small operations. Each multi-threaded one ends in a barrier
where torch's intra-op workers wait for each other; when another process (a data-loader worker,
a second job) holds the cores, a worker that lost its core delays the barrier until the
scheduler gives it back, so every small op can cost a scheduler time slice instead of
microseconds. On a shared 2-core machine at a load average of 6-7 the MLP benchmark's Gram took
270-365 ms with 2 threads and 81-89 ms with 1.

:func:`gram_threads` picks the thread count for one Gram call from the machine's load::

    others  = load_1min - threads_now      (our own threads are part of the load average)
    free    = cores - others
    threads = clamp(floor(free), 1, threads_now)

so an idle machine keeps the user's setting and a machine whose cores other processes hold
drops to one thread. ``LIGHTNING_STIFFNESS_GRAM_THREADS=<k>`` overrides the choice (``0``: keep
the user's setting). :func:`limited_threads` applies a count inside a block and restores
``torch.get_num_threads()`` afterwards, also on error. The setting is per process, so each DDP
rank chooses for itself; nothing collective depends on it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__: list[str] = []  # internal to the package: no public names

#: Environment variable that fixes the thread count of the Gram's CPU work (0 = the user's setting).
THREADS_ENV = "LIGHTNING_STIFFNESS_GRAM_THREADS"


def threads_for_load(current: int, cores: int, load_1min: float) -> int:
    """Threads to use when ``load_1min`` runnable tasks (ours included, ``current`` of them)
    share ``cores`` cores: the cores the other tasks leave free, at least 1, at most ``current``."""
    others = max(0.0, load_1min - current)
    free = cores - others
    return max(1, min(current, math.floor(free)))


def gram_threads(device: torch.device) -> int:
    """The intra-op thread count for a Gram on ``device`` (see the module doc)."""
    current = torch.get_num_threads()
    override = os.environ.get(THREADS_ENV, "").strip()
    if override:
        try:
            value = int(override)
        except ValueError as err:
            raise ValueError(f"{THREADS_ENV} must be an integer (0 = keep torch's setting), got {override!r}") from err
        return current if value <= 0 else value
    if device.type != "cpu":
        return current  # the GPU does the work; host threads only launch kernels
    return threads_for_load(current, _cores(), _load_1min())


@contextmanager
def limited_threads(threads: int) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` inside the block; the previous count is restored on
    exit, also on error. Does nothing when the count is unchanged."""
    before = torch.get_num_threads()
    if threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _load_1min() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform: assume no other load
        return 0.0
