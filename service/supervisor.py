"""``billing serve`` with ``WORKERS`` processes: one listening socket, supervised workers.

The supervisor binds ``HOST``:``PORT`` once and hands the socket to each worker (a fresh
``python -m service.worker``), which serves it with waitress. One shared socket rather than
``SO_REUSEPORT`` sockets per worker: a worker that dies loses only its own connections (with
``SO_REUSEPORT`` the connections the kernel already queued on its socket are reset), a worker
started later accepts from the same queue, a port already taken fails once at start, and no other
process can bind the port beside us. Workers are fresh interpreters, not forks: each opens its own
store, and prometheus-client picks its multiprocess mode at import, after the supervisor has set
``PROMETHEUS_MULTIPROC_DIR`` (a private directory it creates and removes).

A worker that exits is reported, marked dead for the metrics, and replaced, at most
``WORKER_RESTARTS_MAX`` times within ``WORKER_RESTART_WINDOW_SECONDS``; past that budget something
is wrong that a restart will not fix, and the whole server stops with status 1 so the process
manager (docker, systemd) sees it. ``SIGTERM``/``SIGINT`` stop every worker with ``SIGTERM`` (each
finishes its requests in flight), and ``SIGKILL`` the ones still running after
``WORKER_STOP_WAIT_SECONDS``. A worker dies with the supervisor even when it is killed (Linux
``PR_SET_PDEATHSIG``, see ``service.worker``).
"""

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from prometheus_client.multiprocess import mark_process_dead

from core.errors import ConfigurationError
from core.settings import Settings
from service.cpus import NO_CPU, worker_cpu
from service.metrics import MULTIPROC_DIR_VARIABLE
from service.server import WAITRESS_BACKLOG

log = logging.getLogger("billing.supervisor")

WORKER_RESTARTS_MAX = 5
WORKER_RESTART_WINDOW_SECONDS = 60.0
WORKER_STOP_WAIT_SECONDS = 8.0
SUPERVISOR_POLL_SECONDS = 0.2
# Each worker runs this with three more arguments: the listening socket's fd, the supervisor's
# pid, and the CPU to pin itself to (``NO_CPU`` for none).
WORKER_COMMAND = (sys.executable, "-m", "service.worker")


def supervise(settings: Settings) -> int:
    """Serve with ``settings.workers`` worker processes until a signal; the exit status."""
    listener = bind_listener(settings.host, settings.port)
    metrics_dir = Path(tempfile.mkdtemp(prefix="billing-metrics-"))
    try:
        log.info(
            "CloudFreedom Billing listening on %s:%d with %d workers",
            settings.host,
            settings.port,
            settings.workers,
        )
        supervisor = Supervisor(
            listener, metrics_dir, settings.workers, pin_to_cpus=settings.pin_workers_to_cpus
        )
        return supervisor.run()
    finally:
        listener.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def bind_listener(host: str, port: int) -> socket.socket:
    """The listening socket; a port taken or an address not of this host stops start-up with
    one line naming them, not a traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=WAITRESS_BACKLOG)
    except OSError as error:
        raise ConfigurationError(
            f"HOST/PORT: cannot listen on {host}:{port}: {error.strerror or error}"
        ) from None


class Supervisor:
    """Starts, watches, replaces and stops the worker processes."""

    def __init__(
        self,
        listener: socket.socket,
        metrics_dir: Path,
        workers: int,
        worker_command: Sequence[str] = WORKER_COMMAND,
        *,
        pin_to_cpus: bool = False,
    ) -> None:
        assert workers >= 1
        self._listener = listener
        self._worker_command = tuple(worker_command)
        self._metrics_dir = metrics_dir
        self._worker_count = workers
        self._pin_to_cpus = pin_to_cpus
        self._workers: dict[int, subprocess.Popen[bytes]] = {}
        self._slots: dict[int, int] = {}  # worker pid → its slot; a replacement keeps the slot
        self._restarts_at: deque[float] = deque()
        self._stop_signal: int | None = None

    def run(self) -> int:
        handled = (signal.SIGTERM, signal.SIGINT)
        previous = {number: signal.signal(number, self._on_signal) for number in handled}
        try:
            for slot in range(self._worker_count):
                self._spawn(slot)
            while self._stop_signal is None:
                if not self._replace_exited():
                    return 1
                time.sleep(SUPERVISOR_POLL_SECONDS)
            log.info(
                "%s: stopping %d workers", signal.strsignal(self._stop_signal), len(self._workers)
            )
            return 0
        finally:
            self._stop_all()
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _on_signal(self, number: int, frame: FrameType | None) -> None:
        self._stop_signal = number

    def _spawn(self, slot: int) -> None:
        fd = self._listener.fileno()
        cpu = worker_cpu(slot) if self._pin_to_cpus else None
        process = subprocess.Popen(
            [*self._worker_command, str(fd), str(os.getpid()), NO_CPU if cpu is None else str(cpu)],
            pass_fds=(fd,),
            env={**os.environ, MULTIPROC_DIR_VARIABLE: str(self._metrics_dir)},
            stdin=subprocess.DEVNULL,
        )
        self._workers[process.pid] = process
        self._slots[process.pid] = slot
        if cpu is None:
            log.info("started worker %d", process.pid)
        else:
            log.info("started worker %d on CPU %d", process.pid, cpu)

    def _replace_exited(self) -> bool:
        """Replace each worker that exited; False once the restart budget is spent."""
        for pid, process in list(self._workers.items()):
            status = process.poll()
            if status is None:
                continue
            slot = self._slots[pid]
            self._forget(pid)
            if self._stop_signal is not None:
                continue
            now = time.monotonic()
            while self._restarts_at and now - self._restarts_at[0] > WORKER_RESTART_WINDOW_SECONDS:
                self._restarts_at.popleft()
            if len(self._restarts_at) >= WORKER_RESTARTS_MAX:
                log.error(
                    "worker %d exited with status %d; %d restarts within %d s already, stopping",
                    pid,
                    status,
                    WORKER_RESTARTS_MAX,
                    WORKER_RESTART_WINDOW_SECONDS,
                )
                return False
            self._restarts_at.append(now)
            log.warning("worker %d exited with status %d; starting another", pid, status)
            self._spawn(slot)
        return True

    def _forget(self, pid: int) -> None:
        del self._workers[pid]
        del self._slots[pid]
        mark_process_dead(pid, str(self._metrics_dir))

    def _stop_all(self) -> None:
        for process in self._workers.values():
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + WORKER_STOP_WAIT_SECONDS
        for pid, process in list(self._workers.items()):
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning(
                    "worker %d did not stop within %d s; killing it", pid, WORKER_STOP_WAIT_SECONDS
                )
                process.kill()
                process.wait()
            self._forget(pid)
