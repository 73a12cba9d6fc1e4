"""``GET /``: liveness, database health and, when ``REDIS_URL`` is set, Redis health.

Redis down leaves the service up (``200``, ``"redis": "error"``) when its failure policy is
``open``: calls are still served. With ``closed`` every limited call is refused, so the service
reports itself down (``503``).
"""

import logging

import falcon

from api import __version__
from api.http import respond
from core.failure_log import FailureLog
from core.ledger import Ledger
from core.rate_limits import RateLimiter

log = logging.getLogger(__name__)


class HealthResource:
    def __init__(self, ledger: Ledger, limiter: RateLimiter) -> None:
        self._ledger = ledger
        self._limiter = limiter
        # A monitor may ask every second through an outage: a line per kind with a count.
        self._failures = FailureLog(log, "health check failed")

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        database_ok = self._database_ok()
        body: dict[str, object] = {
            "status": "ok",
            "version": __version__,
            "database": "ok" if database_ok else "error",
        }
        healthy = database_ok
        if self._limiter.uses_redis:
            redis_ok = self._limiter.redis_healthy()
            body["redis"] = "ok" if redis_ok else "error"
            healthy = healthy and (redis_ok or self._limiter.fails_open)
        if healthy:
            respond(resp, body)
            return
        failed = "database" if not database_ok else "redis"
        body.update(status="error", error="unavailable", message=f"{failed} check failed")
        respond(resp, body, falcon.HTTP_503)

    def _database_ok(self) -> bool:
        try:
            self._ledger.check_health()
        except Exception as error:  # any failure of the database is "not healthy", not a 500
            self._failures.failed(type(error).__name__, str(error))
            return False
        return True
