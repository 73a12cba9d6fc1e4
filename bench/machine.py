"""What the run ran on: the machine and its code, and the CPU its processes use while it runs."""

import os
import platform
import resource
import sqlite3
import subprocess
import time
from importlib.metadata import version
from pathlib import Path

import falcon

from bench import BENCH_DIR

PROCESSES_MAX = 1_000  # processes a CPU meter follows
BUSY_FRACTION_MAX = 0.05


def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "falcon": falcon.__version__,
        "waitress": version("waitress"),
        "wrk": (wrk_version.stdout + wrk_version.stderr).splitlines()[0].split(" Copyright")[0],
    }


def code_state() -> dict:
    """The commit measured, and the service files changed since it (a run of a work in progress)."""

    def git(*arguments: str) -> str:
        try:
            done = subprocess.run(
                ["git", *arguments],
                cwd=BENCH_DIR.parent,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.rstrip() if done.returncode == 0 else ""

    changed = git("status", "--porcelain", "--", "api", "core", "pyproject.toml")
    return {
        "commit": git("rev-parse", "--short", "HEAD") or "unknown",
        "uncommitted": [line[3:] for line in changed.splitlines()],
    }


class CpuMeter:
    """CPU used, during one wrk run, by processes other than the servers, wrk and us.

    A server is its process and every descendant (``billing serve`` supervises worker
    processes); with PostgreSQL under test its server processes count as ours too.
    """

    def __init__(self, pids: tuple[int, ...], postgres: bool = False) -> None:
        self._pids = with_descendants(pids)
        if postgres:
            self._pids += processes_named("postgres")
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._start = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        total, busy = sum(fields[:8]), sum(fields[:8]) - fields[3] - fields[4]
        ours = cpu_seconds(self._pids) * self._ticks
        for who in (resource.RUSAGE_CHILDREN, resource.RUSAGE_SELF):  # wrk (waited for), us
            usage = resource.getrusage(who)
            ours += (usage.ru_utime + usage.ru_stime) * self._ticks
        return total, busy, ours

    def foreign_share(self) -> float:
        total, busy, ours = (
            after - before for after, before in zip(self._sample(), self._start, strict=True)
        )
        return max(0.0, (busy - ours) / total) if total > 0 else 0.0


def cpu_seconds(pids: tuple[int, ...]) -> float:
    """CPU time (user + system, every thread) these processes have used so far."""
    ticks = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # a process that ended between two samples
            continue
        ticks += int(stat[11]) + int(stat[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def with_descendants(pids: tuple[int, ...]) -> tuple[int, ...]:
    found: list[int] = []
    pending = list(pids)
    while pending and len(found) < PROCESSES_MAX:
        pid = pending.pop()
        found.append(pid)
        for children in Path(f"/proc/{pid}/task").glob("*/children"):
            try:
                pending.extend(int(child) for child in children.read_text().split())
            except OSError:
                continue
    return tuple(found)


def processes_named(name: str) -> tuple[int, ...]:
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and len(found) < PROCESSES_MAX:
            try:
                if (entry / "comm").read_text().strip() == name:
                    found.append(int(entry.name))
            except OSError:
                continue
    return tuple(found)


def cpu_busy_fraction(seconds: float = 2.0) -> float:
    """How busy the machine's cores are (0–1) over ``seconds``, from /proc/stat."""

    def sample() -> tuple[int, int]:
        first_line = Path("/proc/stat").read_text().split("\n", 1)[0]
        fields = [int(value) for value in first_line.split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return idle, sum(fields[:8])

    idle_before, total_before = sample()
    time.sleep(seconds)
    idle_after, total_after = sample()
    total = max(total_after - total_before, 1)
    return 1 - (idle_after - idle_before) / total


def warn_if_busy() -> float:
    """The servers and wrk share the machine's cores: anything else running skews the figures."""
    busy = cpu_busy_fraction()
    if busy > BUSY_FRACTION_MAX:
        print(
            f"   WARNING: the CPUs were {busy:.0%} busy before the run (nothing of the bench"
            " running): other work on this machine will skew the figures",
            flush=True,
        )
    return busy
