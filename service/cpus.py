"""Which CPU each worker runs on, and pinning a process with all its threads to it (Linux)."""

import os
import sys

# How the supervisor tells a worker to leave itself unpinned (its CPU argument).
NO_CPU = "-"


def worker_cpu(slot: int) -> int | None:
    """The CPU for worker ``slot``: the slot-th CPU this process may run on, wrapping around.

    None where a process cannot be pinned (not Linux).
    """
    if not sys.platform.startswith("linux"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[slot % len(cpus)]


def pin_to_cpu(cpu: int) -> None:
    """Run every thread of this process, and every thread it starts later, on ``cpu`` (Linux).

    A CPython process runs Python on one core at a time (the GIL), and each time a thread lets
    the GIL go (a socket call, every SQLite step) a waiting thread takes it. With the threads
    spread over cores every such hand-off wakes a thread on another core, an inter-processor
    interrupt (dear on a virtual machine); on one core it is an ordinary switch. Measured on 2
    cores: context switches per check-budget 42 → 5, requests per second 2–3× (bench/README.md).
    ``OSError`` when ``cpu`` is not one this process may use.
    """
    assert sys.platform.startswith("linux"), "pinning needs Linux"
    os.sched_setaffinity(0, {cpu})  # this thread first: an unusable CPU raises OSError here
    for name in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(name), {cpu})
        except ProcessLookupError:
            continue  # the thread ended meanwhile
