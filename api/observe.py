"""Per-request observation: a request id, one JSON log line, and the request metrics."""

import itertools
import logging
import os
import re
import secrets
import time
import traceback

import falcon

from api.http import ApiError
from api.metrics import UNROUTED, Metrics
from core.failure_log import FailureLog

REQUEST_ID_HEADER = "X-Request-ID"
# An incoming id is kept only if it is short and plain, so it cannot forge or bloat a log line.
REQUEST_ID_LENGTH_MAX = 128
_REQUEST_ID_PATTERN = re.compile(rf"[A-Za-z0-9._:/+=@-]{{1,{REQUEST_ID_LENGTH_MAX}}}")

log = logging.getLogger("billing.request")
REQUEST_MESSAGE = "request"
# Loggers between a named logger and the root ("a.b.c" has three); a deeper chain logs the slow way.
LOGGER_DEPTH_MAX = 16

# Generated ids: a random prefix per process and a counter, unique across processes and
# restarts without a random draw per request (itertools.count is atomic under the GIL).
_GENERATED_PREFIX = secrets.token_hex(8)
_GENERATED_COUNT = itertools.count(1)


def request_id_for(incoming: str | None) -> str:
    """The caller's ``X-Request-ID`` when acceptable, else a fresh one."""
    if incoming is not None and _REQUEST_ID_PATTERN.fullmatch(incoming):
        return incoming
    return f"{_GENERATED_PREFIX}-{next(_GENERATED_COUNT):x}"


class RequestObserver:
    """Falcon middleware, first in the chain, so it times and logs every request, refused ones too.

    The log line names the route template (``/api/users/{user_id}/budget``), never the path,
    query, headers or body.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started_ns = time.perf_counter_ns()
        req.context.request_id = request_id_for(req.get_header(REQUEST_ID_HEADER))

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        elapsed_ns = time.perf_counter_ns() - req.context.started_ns
        request_id = req.context.request_id
        resp.set_header(REQUEST_ID_HEADER, request_id)
        route = req.uri_template or UNROUTED
        status = resp.status_code
        self._metrics.observe_request(req.method, route, status, elapsed_ns / 1e9)
        log_request(log, req.method, route, status, round(elapsed_ns / 1e6, 3), request_id)


class RequestLineHandler(logging.Handler):
    """A handler that can take a request's line from its five fields, with no ``LogRecord``:
    ``log_request`` hands it the fields when it is the one handler the line would reach."""

    def write_request(
        self,
        created: float,
        logger_name: str,
        pid: int,
        method: str,
        route: str,
        status: int,
        duration_ms: float,
        request_id: str,
    ) -> None:
        """Write the line ``emit`` would write for an INFO ``REQUEST_MESSAGE`` record with these
        fields."""
        raise NotImplementedError


def log_request(
    logger: logging.Logger,
    method: str,
    route: str,
    status: int,
    duration_ms: float,
    request_id: str,
) -> None:
    """One request's line at INFO: ``message`` "request" and these five fields.

    When a ``RequestLineHandler`` is the one handler the record would reach, it gets the fields
    straight away: no LogRecord, no handler chain, no dict to encode (together most of a
    check-budget's logging cost). Otherwise (a test's capturing handler, any handler added) the
    record goes through ``logging`` as usual, with the same fields.
    """
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = _only_request_line_handler(logger)
    if handler is None:
        fields = {
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": duration_ms,
            "request_id": request_id,
        }
        logger.info(REQUEST_MESSAGE, extra={"fields": fields})
        return
    handler.write_request(
        time.time(), logger.name, os.getpid(), method, route, status, duration_ms, request_id
    )


def _only_request_line_handler(logger: logging.Logger) -> RequestLineHandler | None:
    """The handler an INFO record of ``logger`` would reach when it is the only one and a
    ``RequestLineHandler``, else None."""
    current: logging.Logger | None = logger
    for _ in range(LOGGER_DEPTH_MAX):
        if current is None or current.filters:
            return None
        if current is logging.root:
            if len(current.handlers) != 1:
                return None
            handler = current.handlers[0]
            if (
                isinstance(handler, RequestLineHandler)
                and not handler.filters
                and logging.INFO >= handler.level
            ):
                return handler
            return None
        if current.handlers or not current.propagate:
            return None
        current = current.parent
    return None


class UnexpectedErrorHandler:
    """A bug: log it as one JSON record with its request id, answer ``500`` JSON.

    Replaces Falcon's default, which writes a plain-text traceback to the WSGI error stream. A
    bug a client can reach again and again would write a traceback per request: the records go
    through a ``FailureLog``, one per kind and place at most every few seconds, with the count.
    """

    def __init__(self) -> None:
        self._bugs = FailureLog(log, "unhandled error")

    def __call__(
        self, req: falcon.Request, resp: falcon.Response, error: Exception, _: dict
    ) -> None:
        where = traceback.extract_tb(error.__traceback__)[-1:]
        place = f" at {where[0].filename}:{where[0].lineno}" if where else ""
        request_id = getattr(req.context, "request_id", None)
        self._bugs.failed(
            f"{type(error).__name__}{place}", error=error, fields={"request_id": request_id}
        )
        raise ApiError(falcon.HTTP_500, "internal_error", "internal error") from None
