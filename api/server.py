"""The one place waitress is configured, for the service and for the benchmark's reference app."""

import gc
import logging
import os
import resource
import socket
import sys

import waitress
from waitress.channel import HTTPChannel
from waitress.task import ErrorTask

from api.http import HTTP_ERROR_CODES, JSON, dumps, too_large_message
from core.settings import Settings

log = logging.getLogger(__name__)

# Waitress buffers a whole body before the app sees it; past this margin over BODY_BYTES_MAX it
# refuses the request itself (``JsonErrorTask``: 413 as soon as Content-Length says so), below it
# the app answers with its own JSON 413.
WAITRESS_BODY_MARGIN_BYTES = 1024 * 1024
# With select() a descriptor past 1023 (FD_SETSIZE) killed the worker, ~1,000 idle connections
# in; with poll() (``asyncore_use_poll``) only this limit counts. Past it waitress stops accepting
# and new connections wait in the listen backlog. Each idle connection costs every turn of
# waitress's loop ~5 µs: at 1,000 a check-budget took 1-2 ms longer, at 2,500 ~11 ms longer.
WAITRESS_CONNECTION_LIMIT = 1000
WAITRESS_CHANNEL_TIMEOUT_SECONDS = 60
WAITRESS_BACKLOG = 1024
# Descriptors a worker may need: per connection its socket and, at most, a temporary file each
# for a large body and a large answer (waitress spills them to disk); per thread a SQLite
# connection's database, WAL and shared-memory files (a PostgreSQL connection is one socket);
# and the process's own (listener, waitress's trigger pipe, logs, metrics files, the write lock).
DESCRIPTORS_PER_CONNECTION = 3
DESCRIPTORS_PER_THREAD = 3
DESCRIPTORS_RESERVED = 256
# Responses shorter than this are left for waitress's main loop to send, with the others that
# are ready, instead of being sent by the thread that made them (waitress's default, 1). On 2
# cores at 32 connections: 36-42% more requests per second and half the p99 latency, for the
# bare app and for every gateway call alike; at 1 connection each answer takes ~30 µs longer
# (one hand-off to the main loop). Waitress has deprecated the setting since 1.3 but still
# honours it in 3.x (a DeprecationWarning at start-up); pyproject keeps waitress below 4.
WAITRESS_SEND_BYTES = 18_000


class JsonErrorTask(ErrorTask):
    """Waitress's own refusals, made before the app sees a request (a body past its limit,
    headers too large, a malformed request, a Transfer-Encoding it cannot read), answered as the
    API's JSON errors ``{"error", "message"}`` instead of waitress's plain text."""

    def execute(self) -> None:
        error = self.request.error
        if error.code == 413:
            waitress_body_bytes_max = self.channel.server.adj.max_request_body_size
            message = too_large_message(waitress_body_bytes_max - WAITRESS_BODY_MARGIN_BYTES)
        else:
            # Never the request's own text: waitress quotes a malformed header line, which can
            # be a key's.
            detail = error.body.split(' "', 1)[0]
            message = f"{error.reason}: {detail}"
        body = dumps({"error": HTTP_ERROR_CODES.get(error.code, "http_error"), "message": message})
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", JSON))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


def freeze_startup_heap() -> None:
    """Move every object alive now out of the cyclic collector's reach for good.

    What start-up built (modules, the app, the price table: ~60,000 objects) lives as long as
    the process, yet each full collection walked all of it. Under write load at 32 connections
    the requests in flight keep surviving young collections, so full ones come every few
    seconds: 28-35 ms each with the GIL held, a stall for every thread (measured on 2 cores,
    session 9); frozen, 0.6 ms. Collect first, so no start-up garbage is kept forever.
    """
    gc.collect()
    gc.freeze()


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
    cores: context switches per check-budget 42 → 5, requests per second 2–3× (bench/README.md,
    session 4). ``OSError`` when ``cpu`` is not one this process may use.
    """
    assert sys.platform.startswith("linux"), "pinning needs Linux"
    os.sched_setaffinity(0, {cpu})  # this thread first: an unusable CPU raises OSError here
    for name in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(name), {cpu})
        except ProcessLookupError:
            continue  # the thread ended meanwhile


def descriptors_needed(connection_limit: int, threads: int) -> int:
    return (
        connection_limit * DESCRIPTORS_PER_CONNECTION
        + threads * DESCRIPTORS_PER_THREAD
        + DESCRIPTORS_RESERVED
    )


def fit_connection_limit(threads: int) -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to what ``WAITRESS_CONNECTION_LIMIT`` needs;
    the connection limit that fits the descriptors allowed (lower, and logged, when the hard
    limit is too low).

    A process out of descriptors fails every accept and every database open, so connections are
    refused (left in the listen backlog) before that can happen.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = descriptors_needed(WAITRESS_CONNECTION_LIMIT, threads)
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return WAITRESS_CONNECTION_LIMIT
    fitting = max(1, (soft - descriptors_needed(0, threads)) // DESCRIPTORS_PER_CONNECTION)
    log.warning(
        "open files limit (RLIMIT_NOFILE) is %d, %d needed for %d connections: accepting at"
        " most %d connections at a time",
        soft,
        needed,
        WAITRESS_CONNECTION_LIMIT,
        fitting,
    )
    return fitting


def run_waitress(app: object, settings: Settings, listener: socket.socket | None = None) -> None:
    """Serve ``app`` until interrupted, with the service's limits.

    With ``listener`` (a socket bound by the supervisor and shared by every worker) waitress
    accepts on it; without, it binds ``HOST``:``PORT`` itself.
    """
    # Under saturation waitress warns once per queued request; that is load, not news.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    # Waitress takes no error renderer; every channel makes its error answers with this class.
    HTTPChannel.error_task_class = JsonErrorTask
    connection_limit = fit_connection_limit(settings.threads)
    freeze_startup_heap()
    where: dict[str, object] = (
        {"host": settings.host, "port": settings.port}
        if listener is None
        else {"sockets": [listener]}
    )
    waitress.serve(
        app,
        **where,
        threads=settings.threads,
        backlog=WAITRESS_BACKLOG,
        connection_limit=connection_limit,
        channel_timeout=WAITRESS_CHANNEL_TIMEOUT_SECONDS,
        max_request_body_size=settings.body_bytes_max + WAITRESS_BODY_MARGIN_BYTES,
        send_bytes=WAITRESS_SEND_BYTES,
        # select() fails past descriptor 1023 (FD_SETSIZE): ~1,000 idle connections killed a
        # worker (ValueError: filedescriptor out of range in select()).
        asyncore_use_poll=True,
        ident="cloudfreedom-billing",
    )
