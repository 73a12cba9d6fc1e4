"""The one place waitress is configured, for the service and for the benchmark's reference app."""

import logging
import socket

import waitress

from core.settings import Settings

# Waitress buffers a whole body before the app sees it; past this margin over BODY_BYTES_MAX it
# refuses the request itself (plain-text 413), below it the app answers with a JSON 413.
WAITRESS_BODY_MARGIN_BYTES = 1024 * 1024
WAITRESS_CONNECTION_LIMIT = 1000
WAITRESS_CHANNEL_TIMEOUT_SECONDS = 60


WAITRESS_BACKLOG = 1024


def run_waitress(app: object, settings: Settings, listener: socket.socket | None = None) -> None:
    """Serve ``app`` until interrupted, with the service's limits.

    With ``listener`` (a socket bound by the supervisor and shared by every worker) waitress
    accepts on it; without, it binds ``HOST``:``PORT`` itself.
    """
    # Under saturation waitress warns once per queued request; that is load, not news.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
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
        connection_limit=WAITRESS_CONNECTION_LIMIT,
        channel_timeout=WAITRESS_CHANNEL_TIMEOUT_SECONDS,
        max_request_body_size=settings.body_bytes_max + WAITRESS_BODY_MARGIN_BYTES,
        ident="cloudfreedom-billing",
    )
