"""``GET /``: liveness and database health."""

import logging

import falcon

from api import __version__
from api.http import respond
from core.store.base import LedgerStore

log = logging.getLogger(__name__)


class HealthResource:
    def __init__(self, store: LedgerStore) -> None:
        self._store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            self._store.check_health()
        except Exception as error:  # any failure of the database is "not healthy", not a 500
            log.warning("health check failed: %s", error)
            body = {
                "status": "error",
                "version": __version__,
                "database": "error",
                "error": "unavailable",
                "message": "database check failed",
            }
            respond(resp, body, falcon.HTTP_503)
            return
        respond(resp, {"status": "ok", "version": __version__, "database": "ok"})
