"""CPU threads for the Gram under contention (docs/performance.md "Under CPU contention").

The hooks path issues hundreds of small operations. Each multi-threaded one ends in a barrier
where torch's intra-op workers wait for each other; when another process (a data-loader worker,
a second job) holds the cores, a worker that lost its core delays the barrier until the
scheduler gives it back, so every small op can cost a scheduler time slice instead of
microseconds. On a shared 2-core machine at a load average of 6-7 the MLP benchmark's Gram took
270-365 ms with 2 threads and 81-89 ms with 1.

:func:`gram_threads` picks the thread count for one Gram call from the machine's load::

    others  = runnable_now - our_running      (median of a few samples, see below)
              or, where /proc cannot tell, load_1min - threads_now
    free    = cores - others
    threads = clamp(floor(free), 1, threads_now)

so an idle machine keeps the user's setting and a machine whose cores other processes hold
drops to one thread. ``runnable_now`` is the instantaneous count of runnable tasks
(``/proc/loadavg``'s fourth field) and ``our_running`` this process's threads in state R
(``/proc/self/task/*/stat``), the median of :data:`RUNNABLE_SAMPLES` samples 0.2 ms apart.
The 1-minute load average, used alone before, lags a minute behind: right after another job
ended it still counted that job (the MLP benchmark ran on one thread, at 16x instead of 113x
the recipe, just after the test suite), and a job that has just started is not in it yet.

``LIGHTNING_STIFFNESS_GRAM_THREADS=<k>`` overrides the choice (``0``: keep the user's setting).
:func:`limited_threads` applies a count inside a block and restores ``torch.get_num_threads()``
afterwards, also on error. The setting is per process, so each DDP
rank chooses for itself; nothing collective depends on it.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__: list[str] = []  # internal to the package: no public names

#: Environment variable that fixes the thread count of the Gram's CPU work (0 = the user's setting).
THREADS_ENV = "LIGHTNING_STIFFNESS_GRAM_THREADS"


#: Samples of the runnable-task count behind one thread decision (0.2 ms apart).
RUNNABLE_SAMPLES = 3


def threads_for_load(current: int, cores: int, load_1min: float, others_now: float | None = None) -> int:
    """Threads to use when ``load_1min`` runnable tasks (ours included, ``current`` of them)
    share ``cores`` cores, or, when known, ``others_now`` tasks of other processes are runnable at
    this moment: the cores the other tasks leave free, at least 1, at most ``current``."""
    others = max(0.0, load_1min - current) if others_now is None else max(0.0, others_now)
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
    if device.type != "cpu" or current <= 1:
        return current  # the GPU does the work (host threads only launch kernels), or nothing to drop
    return threads_for_load(current, _cores(), _load_1min(), others_running())


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


def others_running(samples: int = RUNNABLE_SAMPLES, interval: float = 0.0002) -> float | None:
    """Runnable tasks of other processes right now: the median over ``samples`` readings of the
    system's runnable count less this process's running threads. None where ``/proc`` cannot
    tell (not Linux)."""
    readings = []
    for i in range(samples):
        if i:
            time.sleep(interval)
        # our threads counted before and after the system's count: one of ours that stops or
        # starts running in between is not taken for another process
        before, total, after = _own_running(), _runnable_total(), _own_running()
        if total is None or before is None or after is None:
            return None
        readings.append(max(0, total - max(before, after)))
    return float(statistics.median(readings))


def _runnable_total() -> int | None:
    """Runnable scheduling entities in the system (``/proc/loadavg``: ``"0.5 0.4 0.3 3/81 1234"``)."""
    try:
        with open("/proc/loadavg") as f:
            return parse_runnable(f.read())
    except (OSError, ValueError, IndexError):
        return None


def parse_runnable(loadavg: str) -> int:
    """The runnable count of a ``/proc/loadavg`` line (its fourth field, before the slash)."""
    return int(loadavg.split()[3].split("/")[0])


def _own_running() -> int | None:
    """Threads of this process in state R (running or runnable), the reading thread included."""
    running = 0
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:  # the thread ended meanwhile
            continue
        # "pid (comm) S ...": comm may hold spaces and parentheses; the state follows the last ")"
        if stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] == "R":
            running += 1
    return running
