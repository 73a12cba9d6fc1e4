"""The one place waitress is configured, for the service and for the benchmark's reference app."""

import gc
import logging
import resource
import socket
from collections import OrderedDict
from functools import partial

import waitress
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser, ParsingError
from waitress.server import BaseWSGIServer
from waitress.task import ErrorTask

from api.http import HTTP_ERROR_CODES, JSON, dumps, too_large_message
from core.failure_log import FailureLog
from core.settings import Settings

# Its lines keep the logger name they have always carried, which log filters match.
log = logging.getLogger("api.server")

# With select() a descriptor past 1023 (FD_SETSIZE) killed the worker, ~1,000 idle connections
# in; with poll() (``asyncore_use_poll``) only this limit counts. A connection accepted at it
# closes the least recently used idle one (``ConnectionRoom``); only when none is idle does
# waitress stop accepting, and new connections wait in the listen backlog. Each idle connection
# costs every turn of waitress's loop ~5 µs: at 1,000 a check-budget took 1-2 ms longer, at 2,500
# ~11 ms longer.
WAITRESS_CONNECTION_LIMIT = 1000
# Connections a new one looks through, least recently used first, for an idle one to close.
IDLE_CONNECTION_SCAN_MAX = 128
WAITRESS_CHANNEL_TIMEOUT_SECONDS = 60
WAITRESS_BACKLOG = 1024
# Descriptors a worker may need: per connection its socket and, at most, a temporary file each
# for a large body and a large answer (waitress spills them to disk); per thread a SQLite
# connection's database, WAL and shared-memory files (a PostgreSQL connection is one socket);
# and the process's own (listener, waitress's trigger pipe, logs, metrics files, the write lock).
DESCRIPTORS_PER_CONNECTION = 3
DESCRIPTORS_PER_THREAD = 3
DESCRIPTORS_RESERVED = 256
# A connection's next pipelined request waits, with no thread, while more than this of its
# earlier answers is unsent (``BoundedOutputChannel``); a connection that does not pipeline
# never has more unsent than its one answer.
WAITRESS_OUTBUF_HIGH_WATERMARK_BYTES = 64 * 1024
# Requests one connection may have waiting for their answers. Waitress parses every request a
# read brings (8 KiB: ~200 short GETs, ~800 bytes each parsed) and answers them all: 800 clients
# that each pipelined 100 GETs of /openapi.json and never read grew a worker from 63 to 372 MB,
# 338 MB of it kept after they left; with this bound, 5 MB.
WAITRESS_PIPELINED_REQUESTS_MAX = 16
# Responses shorter than this are left for waitress's main loop to send, with the others that
# are ready, instead of being sent by the thread that made them (waitress's default, 1). On 2
# cores at 32 connections: 36-42% more requests per second and half the p99 latency, for the
# bare app and for every gateway call alike; at 1 connection each answer takes ~30 µs longer
# (one hand-off to the main loop). Waitress has deprecated the setting since 1.3 but still
# honours it in 3.x (a DeprecationWarning at start-up); pyproject keeps waitress below 4.
WAITRESS_SEND_BYTES = 18_000
# While a request waits, waitress's loop sends a connection's output only once it is at least
# ``send_bytes``: a parked connection (more than the watermark unsent) always qualifies.
assert WAITRESS_OUTBUF_HIGH_WATERMARK_BYTES >= WAITRESS_SEND_BYTES


class JsonErrorTask(ErrorTask):
    """Waitress's own refusals, made before the app sees a request (a body past its limit,
    headers too large, a malformed request, a Transfer-Encoding it cannot read), answered as the
    API's JSON errors ``{"error", "message"}`` instead of waitress's plain text."""

    def execute(self) -> None:
        error = self.request.error
        if error.code == 413:
            message = too_large_message(self.channel.server.adj.max_request_body_size)
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


class StrictTargetParser(HTTPRequestParser):
    """Waitress's parser, with a request target that ``urllib.parse.urlsplit`` rejects (an
    absolute form with an unclosed IPv6 host, ``http://[::1/``) refused as a 400 like any other
    malformed request line. Waitress turns only ``UnicodeError`` from it into a 400: the
    ``ValueError`` escaped its loop, which closed the connection without an answer and logged an
    error with a traceback for every such request."""

    def parse_header(self, header_plus: bytes) -> None:
        try:
            super().parse_header(header_plus)
        except ValueError:
            raise ParsingError("Bad URI") from None


class ConnectionRoom:
    """Room for a new connection at the connection limit: the least recently used idle one is
    closed to make it.

    Waitress stops accepting at its limit, so one client holding 1,000 idle connections (or
    trickling a request's headers a byte at a time) kept every new client waiting in the listen
    backlog until waitress's 60 s idle timeout closed them. Here connections are ordered by
    their last use (a whole request received, or some of an answer sent; never a mere byte),
    and a connection accepted past ``capacity`` closes the one used longest ago that has no
    request being answered. Its client, if it comes back, opens a new connection, as an HTTP
    client does when the server closes an idle keep-alive connection. Only the loop's thread
    touches the room (accepts, reads, writes and closes all happen there).
    """

    def __init__(self, capacity: int) -> None:
        assert capacity >= 1
        self.capacity = capacity
        self._by_use: OrderedDict[HTTPChannel, None] = OrderedDict()
        self._closed = FailureLog(log, "connection limit reached")

    def opened(self, channel: HTTPChannel) -> None:
        self._by_use[channel] = None
        if len(self._by_use) > self.capacity:
            self._close_least_used_idle(channel)

    def used(self, channel: HTTPChannel) -> None:
        if channel in self._by_use:
            self._by_use.move_to_end(channel)

    def closed(self, channel: HTTPChannel) -> None:
        self._by_use.pop(channel, None)

    def _close_least_used_idle(self, newcomer: HTTPChannel) -> None:
        idle = None
        for scanned, channel in enumerate(self._by_use):
            if scanned == IDLE_CONNECTION_SCAN_MAX:
                break
            if channel is not newcomer and not channel.requests:
                idle = channel
                break
        if idle is None:
            return  # every one scanned is being answered: waitress's own limit holds
        del self._by_use[idle]
        idle.will_close = True  # closed by waitress's loop on its next turn
        self._closed.failed("the least recently used idle connection was closed")


class BoundedOutputChannel(HTTPChannel):
    """A connection with at most ``WAITRESS_PIPELINED_REQUESTS_MAX`` requests waiting and at
    most ``outbuf_high_watermark`` bytes unsent (plus one answer), and no thread waiting on its
    client.

    Waitress serves a connection's pipelined requests one after another and, once more than the
    watermark is unsent, makes the serving thread wait until the client reads: a client that
    pipelines requests and never reads held a thread for as long as it stayed connected (with
    one thread, another client's request went unanswered). Here the next request waits instead,
    parked with no thread, and waitress's loop queues it again once the client has read enough.
    Waitress's wait inside a write goes too: every answer of the app is one body, already built.
    """

    error_task_class = JsonErrorTask
    parser_class = StrictTargetParser
    parked = False  # the next request waits for the client to read

    def __init__(self, *args: object, room: ConnectionRoom, **options: object) -> None:
        self.room = room
        super().__init__(*args, **options)
        room.opened(self)

    def del_channel(self, map: dict | None = None) -> None:
        self.room.closed(self)
        super().del_channel(map)

    def received(self, data: bytes) -> bool:
        """Parse ``data`` as waitress does, then keep at most ``WAITRESS_PIPELINED_REQUESTS_MAX``
        requests waiting: the last one kept is answered with ``Connection: close`` and the rest
        is dropped, for the client to send again on a new connection (as HTTP has a client do
        when a connection closes with requests unanswered)."""
        parsed = super().received(data)
        with self.requests_lock:
            if len(self.requests) > WAITRESS_PIPELINED_REQUESTS_MAX:
                for dropped in self.requests[WAITRESS_PIPELINED_REQUESTS_MAX:]:
                    dropped.close()
                del self.requests[WAITRESS_PIPELINED_REQUESTS_MAX:]
                last = self.requests[-1]
                last.headers["CONNECTION"] = "close"
                last.connection_close = True
                if self.request is not None:
                    self.request.close()
                    self.request = None
            if self.requests:
                self.room.used(self)
        return parsed

    def service(self) -> None:
        with self.outbuf_lock:
            if self.connected and self.total_outbufs_len > self.adj.outbuf_high_watermark:
                self.parked = True
                return
        super().service()

    def _flush_outbufs_below_high_watermark(self) -> None:
        return

    def handle_write(self) -> None:
        unsent_bytes = self.total_outbufs_len
        super().handle_write()
        if self.total_outbufs_len < unsent_bytes:
            self.room.used(self)
        if not self.parked:
            return
        # Under the lock ``service`` parks under, so a park and this check cannot miss each other.
        with self.outbuf_lock:
            if self.parked and self.total_outbufs_len <= self.adj.outbuf_high_watermark:
                self.parked = False
                if self.connected:
                    self.server.add_task(self)


def freeze_startup_heap() -> None:
    """Move every object alive now out of the cyclic collector's reach for good.

    What start-up built (modules, the app, the price table: ~60,000 objects) lives as long as
    the process, yet each full collection walked all of it. Under write load at 32 connections
    the requests in flight keep surviving young collections, so full ones come every few
    seconds: 28-35 ms each with the GIL held, a stall for every thread (measured on 2 cores);
    frozen, 0.6 ms. Collect first, so no start-up garbage is kept forever.
    """
    gc.collect()
    gc.freeze()


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
    connection_limit = fit_connection_limit(settings.threads)
    freeze_startup_heap()
    where: dict[str, object] = (
        {"host": settings.host, "port": settings.port}
        if listener is None
        else {"sockets": [listener]}
    )
    socket_map: dict[int, object] = {}  # waitress's: descriptor → its server or a connection
    server = waitress.create_server(
        app,
        socket_map,
        **where,
        threads=settings.threads,
        backlog=WAITRESS_BACKLOG,
        connection_limit=connection_limit,
        channel_timeout=WAITRESS_CHANNEL_TIMEOUT_SECONDS,
        # Waitress buffers a whole body before the app sees it, to a temporary file past 512 KiB:
        # with BODY_BYTES_MAX + 1 MiB here, 300 connections each sending 1 MB of a body they
        # never finished held 300 MB of temporary files. A body declared past the limit is
        # refused before it is read (``JsonErrorTask``: the app's JSON 413), and one that grows
        # past it (chunked) as soon as it does.
        max_request_body_size=settings.body_bytes_max,
        send_bytes=WAITRESS_SEND_BYTES,
        outbuf_high_watermark=WAITRESS_OUTBUF_HIGH_WATERMARK_BYTES,
        # select() fails past descriptor 1023 (FD_SETSIZE): ~1,000 idle connections killed a
        # worker (ValueError: filedescriptor out of range in select()).
        asyncore_use_poll=True,
        ident="cloudfreedom-billing",
    )
    # The map also holds the listeners and waitress's trigger, and waitress stops accepting once
    # it holds ``connection_limit``: a connection accepted one below closes an idle one.
    room = ConnectionRoom(max(1, connection_limit - len(socket_map) - 1))
    for dispatcher in socket_map.values():
        if isinstance(dispatcher, BaseWSGIServer):
            dispatcher.channel_class = partial(BoundedOutputChannel, room=room)
    server.print_listen("Serving on http://{}:{}")
    server.run()
