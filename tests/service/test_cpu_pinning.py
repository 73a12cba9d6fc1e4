"""Which CPU a worker gets, and pinning a process with all its threads (Linux).

Pinning runs in a child interpreter: pinned here, pytest and every server the suite starts
after it would share one CPU.
"""

import os
import subprocess
import sys

from service.cpus import worker_cpu

CHILD_WAIT_SECONDS = 30

PIN_AND_REPORT = """
import os, sys, threading
from service.cpus import pin_to_cpu
started_before = threading.Thread(target=threading.Event().wait, args=(5,), daemon=True)
started_before.start()
pin_to_cpu(int(sys.argv[1]))
started_after = threading.Thread(target=lambda: print(sorted(os.sched_getaffinity(0))))
started_after.start()
started_after.join()
print(sorted(os.sched_getaffinity(started_before.native_id)))
print(sorted(os.sched_getaffinity(0)))
"""


def run_child(cpu: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PIN_AND_REPORT, str(cpu)],
        capture_output=True,
        text=True,
        timeout=CHILD_WAIT_SECONDS,
    )


def test_worker_slots_take_the_allowed_cpus_in_order_and_wrap_around() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    assert [worker_cpu(slot) for slot in range(2 * len(cpus))] == cpus + cpus


def test_pinning_moves_threads_started_before_and_after_onto_the_cpu() -> None:
    cpu = worker_cpu(1)
    child = run_child(cpu)
    assert child.returncode == 0, child.stderr
    assert child.stdout.splitlines() == [f"[{cpu}]"] * 3


def test_pinning_to_a_cpu_the_process_may_not_use_raises_oserror() -> None:
    child = run_child(max(os.sched_getaffinity(0)) + 4096)
    assert child.returncode == 1
    assert "OSError" in child.stderr
