"""``billing alerts watch``: one long-running process that runs ``deliver-alerts`` only when the
outbox holds something to send.

A scheduled run every minute cost a fresh Prefect process each time (~2.25 CPU-seconds, about
4 % of a core, and 1,440 runs a day in the UI) even with nothing to send. Here the idle cost is
one indexed read of the outbox every ``poll_seconds``; the flow runs in this process (a real
Prefect flow run, in the UI, with its failure notices) when alerts or admin notices are
pending. An alert is sent at most ``poll_seconds`` plus one run after the usage that raised it.
After a failed run (a channel down) the next one waits ``FAILED_RUN_PAUSE_SECONDS``, so an
outage produces one failure notice per pause rather than one per poll.
"""

import logging
import signal
import threading
from types import FrameType

from core.ledger import Ledger
from core.service import open_ledger
from core.settings import Settings
from flows.alerts import deliver_alerts

FAILED_RUN_PAUSE_SECONDS = 300

log = logging.getLogger(__name__)


def has_pending(ledger: Ledger) -> bool:
    """Whether an alert or an admin notice waits to be sent (two indexed reads)."""
    return bool(ledger.pending_alerts(0, 1) or ledger.pending_admin_notices(1))


def watch(settings: Settings, poll_seconds: float, stop: threading.Event) -> None:
    """Until ``stop`` is set: every ``poll_seconds``, run deliver-alerts if anything waits."""
    assert poll_seconds > 0
    store, ledger = open_ledger(settings, one_job=True)
    log.info("watching the alert outbox every %s s", poll_seconds)
    try:
        wait = 0.0
        while not stop.wait(wait):
            wait = poll_seconds
            if not has_pending(ledger):
                continue
            try:
                deliver_alerts()
            except Exception as error:  # noqa: BLE001 - the run's hooks told the admin
                wait = FAILED_RUN_PAUSE_SECONDS
                log.error("deliver-alerts failed, next try in %d s: %s", wait, error)
    finally:
        store.close()
    log.info("stopped watching the alert outbox")


def watch_until_signalled(settings: Settings, poll_seconds: float) -> None:
    """``watch`` until SIGTERM or SIGINT (Ctrl-C); a run under way finishes first.

    The watch runs in a thread of its own: a flow run in the main thread installs Prefect's
    SIGTERM handler, which aborts the run mid-way (found by the watcher's test) instead of
    letting it finish; the main thread only waits and takes the signals.
    """
    stop = threading.Event()

    def request_stop(_signal: int, _frame: FrameType | None) -> None:
        stop.set()

    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, request_stop)
    watcher = threading.Thread(target=watch, args=(settings, poll_seconds, stop), name="watch")
    watcher.start()
    watcher.join()
