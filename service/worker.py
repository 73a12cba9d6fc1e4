"""One worker process of ``billing serve``; started by ``service.supervisor``, not by hand.

``python -m service.worker <listening socket fd> <supervisor pid> <cpu or ->``: pins itself to
the CPU it is given (see ``service.cpus.pin_to_cpu``), reads the same settings and kept keys as
the supervisor, opens its own store, and serves the inherited socket with waitress until
``SIGTERM`` (requests in flight finish, then the store closes).
"""

import ctypes
import logging
import os
import signal
import socket
import sys
from types import FrameType

from adapters.pocketbase import open_identity_store
from api.app import create_app
from core.service import open_ledger
from core.settings import resolve_keys
from service.cli import load_settings
from service.cpus import NO_CPU, pin_to_cpu
from service.logs import configure_logging
from service.metrics import worker_metrics
from service.server import run_waitress

log = logging.getLogger("billing.worker")

PR_SET_PDEATHSIG = 1


def exit_with_supervisor(supervisor_pid: int) -> None:
    """Have the kernel stop this process when the supervisor dies, even by SIGKILL (Linux).

    Without it a killed supervisor would leave workers serving its port unsupervised.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != supervisor_pid:  # it died before the request above took effect
        raise SystemExit(1)


def _stop(number: int, frame: FrameType | None) -> None:
    # waitress's loop ends on SystemExit and lets its threads finish their current requests.
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if argv is None else argv
    assert len(arguments) == 3, (
        "usage: python -m service.worker <listening fd> <supervisor pid> <cpu>"
    )
    listener_fd, supervisor_pid = int(arguments[0]), int(arguments[1])
    signal.signal(signal.SIGTERM, _stop)
    exit_with_supervisor(supervisor_pid)
    configure_logging()
    if arguments[2] != NO_CPU:
        try:
            pin_to_cpu(int(arguments[2]))
        except OSError as error:  # the CPU left this process's set (a changed cpuset)
            log.warning("not pinned to CPU %s: %s; threads may run on any CPU", arguments[2], error)
    settings = load_settings()
    keys = resolve_keys(settings)
    identities = open_identity_store(settings)
    store, ledger = open_ledger(settings)
    try:
        listener = socket.socket(fileno=listener_fd)
        with worker_metrics() as metrics:
            app = create_app(settings, keys, ledger, identities, metrics)
            run_waitress(app, settings, listener)
    finally:
        store.close()
        if identities is not None:
            identities.close()


if __name__ == "__main__":
    main()
